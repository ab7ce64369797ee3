// The table of every recipe key. Adding a setting = one line here + its field in recipe.h or
// layers/model_config.h; recipes/README.md documents each key (a test keeps them in sync).
#include "recipes/recipe_schema.h"

#include <cmath>
#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace moe {
namespace {

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string render_double(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  std::string s = buf;
  // Shortest form that reads back exactly.
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) {
      s = buf;
      break;
    }
  }
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // TOML needs a float to look like one
  return s;
}

using Check = std::function<std::string(double)>;

// A Check returns "" when the value is allowed, else the allowed range (">= 1").
std::string bound(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}
Check at_least(double lo) {
  return [lo](double v) { return v >= lo ? "" : ">= " + bound(lo); };
}
Check above(double lo) {
  return [lo](double v) { return v > lo ? "" : "> " + bound(lo); };
}
Check between(double lo, double hi) {
  return [lo, hi](double v) { return v >= lo && v <= hi ? "" : "in [" + bound(lo) + ", " + bound(hi) + "]"; };
}

// Integer settings, stored as int64_t (sizes, steps) or int (iteration counts).
template <class Int>
RecipeKey integer_key(std::string sec, std::string name, std::string doc, std::function<Int&(Recipe&)> ref,
                      Check check) {
  RecipeKey k{sec, name, "integer", doc, nullptr, nullptr};
  k.set = [ref, check](Recipe& r, const toml::node& n) -> std::string {
    if (!n.is_integer()) return "an integer";
    int64_t v = n.as_integer()->get();
    std::string err = check(double(v));
    if (!err.empty()) return "an integer " + err;
    ref(r) = Int(v);
    return "";
  };
  k.get = [ref](const Recipe& r) { return std::to_string(ref(const_cast<Recipe&>(r))); };
  return k;
}

RecipeKey int_key(std::string sec, std::string name, std::string doc, std::function<int64_t&(Recipe&)> ref,
                  Check check) {
  return integer_key<int64_t>(std::move(sec), std::move(name), std::move(doc), std::move(ref), std::move(check));
}

RecipeKey int32_key(std::string sec, std::string name, std::string doc, std::function<int&(Recipe&)> ref, Check check) {
  return integer_key<int>(std::move(sec), std::move(name), std::move(doc), std::move(ref), std::move(check));
}

// A finite TOML number (an integer is accepted) allowed by check into v; else what was expected.
std::string read_number(const toml::node& n, const Check& check, double& v) {
  if (n.is_floating_point()) v = n.as_floating_point()->get();
  else if (n.is_integer()) v = double(n.as_integer()->get());
  else return "a number";
  if (!std::isfinite(v)) return "a finite number";
  std::string err = check(v);
  return err.empty() ? "" : "a number " + err;
}

RecipeKey float_key(std::string sec, std::string name, std::string doc, std::function<double&(Recipe&)> ref,
                    Check check) {
  RecipeKey k{sec, name, "float", doc, nullptr, nullptr};
  k.set = [ref, check](Recipe& r, const toml::node& n) -> std::string {
    double v;
    std::string expected = read_number(n, check, v);
    if (expected.empty()) ref(r) = v;
    return expected;
  };
  k.get = [ref](const Recipe& r) { return render_double(ref(const_cast<Recipe&>(r))); };
  return k;
}

RecipeKey optional_float_key(std::string sec, std::string name, std::string doc,
                             std::function<std::optional<double>&(Recipe&)> ref, Check check) {
  RecipeKey k{sec, name, "float (optional)", doc, nullptr, nullptr};
  k.set = [ref, check](Recipe& r, const toml::node& n) -> std::string {
    double v;
    std::string expected = read_number(n, check, v);
    if (expected.empty()) ref(r) = v;
    return expected;
  };
  k.get = [ref](const Recipe& r) {
    auto& v = ref(const_cast<Recipe&>(r));
    return v ? render_double(*v) : std::string();
  };
  return k;
}

RecipeKey bool_key(std::string sec, std::string name, std::string doc, std::function<bool&(Recipe&)> ref) {
  RecipeKey k{sec, name, "bool", doc, nullptr, nullptr};
  k.set = [ref](Recipe& r, const toml::node& n) -> std::string {
    if (!n.is_boolean()) return "true or false";
    ref(r) = n.as_boolean()->get();
    return "";
  };
  k.get = [ref](const Recipe& r) { return std::string(ref(const_cast<Recipe&>(r)) ? "true" : "false"); };
  return k;
}

RecipeKey string_key(std::string sec, std::string name, std::string doc, std::function<std::string&(Recipe&)> ref,
                     std::vector<std::string> choices = {}) {
  RecipeKey k{sec, name, "string", doc, nullptr, nullptr};
  if (!choices.empty()) {
    k.type = "one of";
    for (size_t i = 0; i < choices.size(); ++i) k.type += (i ? " | " : " ") + choices[i];
  }
  k.set = [ref, choices](Recipe& r, const toml::node& n) -> std::string {
    std::string expect = "a string";
    if (!choices.empty()) {
      expect = "one of";
      for (size_t i = 0; i < choices.size(); ++i) expect += (i ? ", " : " ") + quote(choices[i]);
    }
    if (!n.is_string()) return expect;
    std::string v = n.as_string()->get();
    if (!choices.empty() && std::find(choices.begin(), choices.end(), v) == choices.end())
      return expect + " (got " + quote(v) + ")";
    ref(r) = v;
    return "";
  };
  k.get = [ref](const Recipe& r) { return quote(ref(const_cast<Recipe&>(r))); };
  return k;
}

std::vector<RecipeKey> build_schema() {
  std::vector<RecipeKey> s;
  // ---- model
  s.push_back(int_key("model", "vocab_size", "Vocabulary size (256 for byte-level data).",
                      [](Recipe& r) -> int64_t& { return r.model.vocab_size; }, at_least(2)));
  s.push_back(int_key("model", "d_model", "Residual stream width D.", [](Recipe& r) -> int64_t& { return r.model.d_model; },
                      at_least(1)));
  s.push_back(int_key("model", "n_layers", "Number of transformer blocks.",
                      [](Recipe& r) -> int64_t& { return r.model.n_layers; }, at_least(1)));
  s.push_back(int_key("model", "n_heads", "Attention heads (d_model / n_heads must be even).",
                      [](Recipe& r) -> int64_t& { return r.model.n_heads; }, at_least(1)));
  s.push_back(int_key("model", "d_ff", "Dense SwiGLU hidden size; 0 = 8/3 d_model rounded up to a multiple of 8.",
                      [](Recipe& r) -> int64_t& { return r.model.d_ff; }, at_least(0)));
  s.push_back(float_key("model", "rope_theta", "RoPE base.", [](Recipe& r) -> double& { return r.model.rope_theta; },
                        above(0)));
  s.push_back(float_key("model", "norm_eps", "RMSNorm epsilon.", [](Recipe& r) -> double& { return r.model.norm_eps; },
                        above(0)));
  s.push_back(bool_key("model", "tied_embeddings", "Share the token embedding with the LM head.",
                       [](Recipe& r) -> bool& { return r.model.tied_embeddings; }));
  s.push_back(float_key("model", "init_std", "Std of the normal weight initialization.",
                        [](Recipe& r) -> double& { return r.model.init_std; }, above(0)));
  // ---- moe
  s.push_back(bool_key("moe", "enabled", "Use MoE layers (false: a dense model).",
                       [](Recipe& r) -> bool& { return r.model.use_moe; }));
  s.push_back(int_key("moe", "num_experts", "Routed experts E per MoE layer.",
                      [](Recipe& r) -> int64_t& { return r.model.moe.num_experts; }, at_least(1)));
  s.push_back(int_key("moe", "expert_hidden", "Hidden size of each expert's SwiGLU; 0 = the dense d_ff.",
                      [](Recipe& r) -> int64_t& { return r.model.moe.expert_hidden; }, at_least(0)));
  s.push_back(int_key("moe", "num_shared_experts", "Always-on shared experts (DeepSeekMoE style).",
                      [](Recipe& r) -> int64_t& { return r.model.moe.num_shared_experts; }, at_least(0)));
  s.push_back(int_key("moe", "moe_every", "MoE in every n-th block (the last of each group of n); dense FFN elsewhere.",
                      [](Recipe& r) -> int64_t& { return r.model.moe.moe_every; }, at_least(1)));
  s.push_back(optional_float_key("moe", "capacity_factor", "Expert capacity factor; unset = dropless.",
                                 [](Recipe& r) -> std::optional<double>& { return r.model.moe.capacity_factor; },
                                 above(0)));
  s.push_back(string_key("moe", "drop_policy", "Which over-capacity assignments are dropped.",
                         [](Recipe& r) -> std::string& { return r.model.moe.drop_policy; }, {"probs", "position"}));
  // ---- router
  s.push_back(int_key("router", "top_k", "Experts per token k.", [](Recipe& r) -> int64_t& { return r.model.moe.top_k; },
                      at_least(1)));
  s.push_back(string_key("router", "score", "Score function of the router logits.",
                         [](Recipe& r) -> std::string& { return r.model.moe.score_function; }, {"softmax", "sigmoid"}));
  s.push_back(bool_key("router", "renormalize", "Renormalize the top-k gates to sum 1 (k > 1).",
                       [](Recipe& r) -> bool& { return r.model.moe.renormalize_gates; }));
  s.push_back(float_key("router", "scale", "Factor applied to the gates.",
                        [](Recipe& r) -> double& { return r.model.moe.gate_scale; }, above(0)));
  s.push_back(float_key("router", "jitter", "Multiplicative input jitter epsilon in training (0 = off).",
                        [](Recipe& r) -> double& { return r.model.moe.jitter; }, between(0, 1)));
  s.push_back(float_key("router", "z_loss", "Router z-loss coefficient c_z (0 = off; ST-MoE uses 1e-3).",
                        [](Recipe& r) -> double& { return r.model.moe.z_loss_coef; }, at_least(0)));
  s.push_back(string_key("router", "balance", "Balancing strategy (see BALANCING.md / docs).",
                         [](Recipe& r) -> std::string& { return r.model.moe.balance.strategy; },
                         balance_strategy_names()));
  // ---- balance (strategy parameters)
  auto& B = s;
  B.push_back(float_key("balance", "aux_alpha", "aux_loss / top_p: coefficient alpha of the Switch aux loss.",
                        [](Recipe& r) -> double& { return r.model.moe.balance.aux_alpha; }, at_least(0)));
  B.push_back(string_key("balance", "aux_variant", "aux_loss: where f_i and P_i are computed.",
                         [](Recipe& r) -> std::string& { return r.model.moe.balance.aux_variant; },
                         {"micro_batch", "per_sequence", "global"}));
  B.push_back(float_key("balance", "bias_update_rate", "loss_free: bias update rate u.",
                        [](Recipe& r) -> double& { return r.model.moe.balance.bias_update_rate; }, at_least(0)));
  B.push_back(string_key("balance", "bias_update", "loss_free: sign or proportional bias update.",
                         [](Recipe& r) -> std::string& { return r.model.moe.balance.bias_update; },
                         {"sign", "proportional"}));
  B.push_back(float_key("balance", "sinkhorn_temperature", "sinkhorn / ssr: temperature xi of K = exp(x / xi).",
                        [](Recipe& r) -> double& { return r.model.moe.balance.sinkhorn_temperature; }, above(0)));
  B.push_back(int32_key("balance", "sinkhorn_max_iters", "sinkhorn / ssr: iteration cap.",
                        [](Recipe& r) -> int& { return r.model.moe.balance.sinkhorn_max_iters; }, at_least(1)));
  B.push_back(float_key("balance", "sinkhorn_tol", "sinkhorn / ssr: stop when the mean change of d1 is below this.",
                        [](Recipe& r) -> double& { return r.model.moe.balance.sinkhorn_tol; }, above(0)));
  B.push_back(float_key("balance", "ssr_probability", "ssr: probability p of routing a step by the Sinkhorn plan.",
                        [](Recipe& r) -> double& { return r.model.moe.balance.ssr_probability; }, between(0, 1)));
  B.push_back(int32_key("balance", "bip_iters", "bip: dual iterations T_bip per batch.",
                        [](Recipe& r) -> int& { return r.model.moe.balance.bip_iters; }, at_least(1)));
  B.push_back(string_key("balance", "bip_order", "bip: paper (update q on the batch, then select) or causal.",
                         [](Recipe& r) -> std::string& { return r.model.moe.balance.bip_order; }, {"paper", "causal"}));
  B.push_back(float_key("balance", "quantile_rate", "quantile: step size of the beta update.",
                        [](Recipe& r) -> double& { return r.model.moe.balance.quantile_rate; }, at_least(0)));
  B.push_back(string_key("balance", "scope",
                         "Under data parallelism, what bip / quantile / sinkhorn / ssr / expert_choice and the "
                         "micro-batch aux losses balance: the global batch (exact) or each rank's local batch.",
                         [](Recipe& r) -> std::string& { return r.model.moe.balance.scope; }, {"global", "local"}));
  B.push_back(float_key("balance", "expert_choice_capacity", "expert_choice: c in C = T c / E.",
                        [](Recipe& r) -> double& { return r.model.moe.balance.expert_choice_capacity; }, above(0)));
  B.push_back(int32_key("balance", "num_null_experts", "null_experts: number of null (zero-output) experts.",
                        [](Recipe& r) -> int& { return r.model.moe.balance.num_null_experts; }, at_least(0)));
  B.push_back(float_key("balance", "null_aux_alpha", "null_experts: aux-loss coefficient over E + n_null experts.",
                        [](Recipe& r) -> double& { return r.model.moe.balance.null_aux_alpha; }, at_least(0)));
  B.push_back(float_key("balance", "top_p_threshold", "top_p: cumulative score p each token's experts reach.",
                        [](Recipe& r) -> double& { return r.model.moe.balance.top_p_threshold; }, between(0, 1)));
  B.push_back(float_key("balance", "top_p_entropy_beta", "top_p: coefficient beta of the router-entropy term.",
                        [](Recipe& r) -> double& { return r.model.moe.balance.top_p_entropy_beta; }, at_least(0)));
  // ---- data
  s.push_back(string_key("data", "dir", "Prepared data directory (`moetrain prepare brown --out DIR`).",
                         [](Recipe& r) -> std::string& { return r.data.dir; }));
  // ---- optim
  s.push_back(float_key("optim", "lr", "Peak learning rate.", [](Recipe& r) -> double& { return r.optim.lr; }, above(0)));
  s.push_back(float_key("optim", "min_lr", "Final learning rate of the decay.",
                        [](Recipe& r) -> double& { return r.optim.min_lr; }, at_least(0)));
  s.push_back(float_key("optim", "beta1", "AdamW beta1.", [](Recipe& r) -> double& { return r.optim.beta1; }, between(0, 0.999999)));
  s.push_back(float_key("optim", "beta2", "AdamW beta2.", [](Recipe& r) -> double& { return r.optim.beta2; }, between(0, 0.999999)));
  s.push_back(float_key("optim", "eps", "AdamW epsilon.", [](Recipe& r) -> double& { return r.optim.eps; }, above(0)));
  s.push_back(float_key("optim", "weight_decay", "Decoupled weight decay (not on norms and biases).",
                        [](Recipe& r) -> double& { return r.optim.weight_decay; }, at_least(0)));
  s.push_back(float_key("optim", "grad_clip", "Max global gradient norm (0 = no clipping).",
                        [](Recipe& r) -> double& { return r.optim.grad_clip; }, at_least(0)));
  // ---- schedule
  s.push_back(string_key("schedule", "kind", "Learning-rate schedule.",
                         [](Recipe& r) -> std::string& { return r.schedule.kind; }, {"cosine", "wsd", "constant"}));
  s.push_back(int_key("schedule", "warmup_steps", "Linear warmup steps.",
                      [](Recipe& r) -> int64_t& { return r.schedule.warmup_steps; }, at_least(0)));
  s.push_back(float_key("schedule", "decay_fraction", "wsd: share of the steps spent in the final decay.",
                        [](Recipe& r) -> double& { return r.schedule.decay_fraction; }, between(0, 1)));
  // ---- train
  s.push_back(int_key("train", "steps", "Optimizer steps.", [](Recipe& r) -> int64_t& { return r.train.steps; }, at_least(1)));
  s.push_back(int_key("train", "batch_size", "Sequences per optimizer step over all ranks (the global batch).",
                      [](Recipe& r) -> int64_t& { return r.train.batch_size; }, at_least(1)));
  s.push_back(int_key("train", "seq_len", "Tokens per sequence.", [](Recipe& r) -> int64_t& { return r.train.seq_len; },
                      at_least(1)));
  s.push_back(int_key("train", "grad_accum", "Micro-batches per optimizer step.",
                      [](Recipe& r) -> int64_t& { return r.train.grad_accum; }, at_least(1)));
  s.push_back(int_key("train", "seed", "Seed of every random stream of the run.",
                      [](Recipe& r) -> int64_t& { return r.train.seed; }, at_least(0)));
  s.push_back(string_key("train", "device", "Where to train.", [](Recipe& r) -> std::string& { return r.train.device; },
                         {"cpu", "cuda"}));
  s.push_back(string_key("train", "cuda_activations",
                         "Activation dtype with device = \"cuda\" (master weights, grads and AdamW moments stay fp32; "
                         "router and balancing math in fp32).",
                         [](Recipe& r) -> std::string& { return r.train.cuda_activations; }, {"bf16", "fp32"}));
  s.push_back(string_key("train", "name", "Run name: the run directory is runs/<name> unless --run-dir is given.",
                         [](Recipe& r) -> std::string& { return r.train.name; }));
  // ---- eval / log / checkpoint / parallel
  s.push_back(int_key("eval", "every", "Evaluate every N steps (0 = only at the end).",
                      [](Recipe& r) -> int64_t& { return r.eval.every; }, at_least(0)));
  s.push_back(int_key("eval", "batches", "Validation batches per evaluation (0 = the whole split).",
                      [](Recipe& r) -> int64_t& { return r.eval.batches; }, at_least(0)));
  s.push_back(int_key("log", "every", "Console line and metrics.jsonl row every N steps.",
                      [](Recipe& r) -> int64_t& { return r.log.every; }, at_least(1)));
  s.push_back(int_key("log", "flush_every", "Flush routing.h5 every N steps.",
                      [](Recipe& r) -> int64_t& { return r.log.flush_every; }, at_least(1)));
  s.push_back(int_key("checkpoint", "every", "Checkpoint every N steps (0 = only at the end and on SIGINT/SIGTERM).",
                      [](Recipe& r) -> int64_t& { return r.checkpoint.every; }, at_least(0)));
  s.push_back(int_key("checkpoint", "keep", "Complete checkpoints kept (older ones are deleted).",
                      [](Recipe& r) -> int64_t& { return r.checkpoint.keep; }, at_least(1)));
  s.push_back(bool_key("checkpoint", "at_end",
                       "Checkpoint at the last step (false: none then, e.g. for throughput sweeps; SIGINT/SIGTERM still write one).",
                       [](Recipe& r) -> bool& { return r.checkpoint.at_end; }));
  s.push_back(int_key("parallel", "ep", "Expert-parallel group size (world = dp x ep).",
                      [](Recipe& r) -> int64_t& { return r.parallel.ep; }, at_least(1)));
  s.push_back(bool_key("parallel", "llep", "Least-Loaded Expert Parallelism.", [](Recipe& r) -> bool& { return r.parallel.llep; }));
  s.push_back(float_key("parallel", "llep_threshold", "LLEP: rebalance when max/mean rank load exceeds this.",
                        [](Recipe& r) -> double& { return r.parallel.llep_threshold; }, at_least(1)));
  return s;
}

}  // namespace

const std::vector<std::string>& balance_strategy_names() {
  static const std::vector<std::string> names = {"none",     "aux_loss", "loss_free",     "sinkhorn",     "ssr",
                                                 "bip",      "quantile", "expert_choice", "null_experts", "top_p"};
  return names;
}

const std::vector<RecipeKey>& recipe_schema() {
  static const std::vector<RecipeKey> schema = build_schema();
  return schema;
}

}  // namespace moe
