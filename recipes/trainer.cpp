// The training loop. One optimizer step = grad_accum micro-batches (forward, backward), global
// norm clipping, AdamW, then each MoE layer's balancer update from the step's loads. Every
// piece of state that changes the future of the run goes into the checkpoint (DESIGN.md).
// Data and expert parallelism (docs/parallel.md): each rank runs this same loop on its slice of
// every global batch; gradients, losses, loads and routing sums are all-reduced, so all ranks
// keep identical replicated parameters and balancer states. Under expert parallelism each rank
// holds E / ep experts (the MoE layers exchange token rows within the EP group); checkpoints
// gather them to rank 0, which alone writes the run directory.
#include "recipes/trainer.h"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>

#include "checkpoints/checkpoint.h"
#include "checkpoints/routing_log.h"
#include "core/device.h"
#include "core/dispatch.h"
#include "core/ops.h"
#include "data/dataset.h"
#include "data/sampler.h"
#include "layers/moe/moe_layer.h"
#include "layers/transformer.h"
#include "optim/adamw.h"
#include "optim/clip.h"
#include "optim/schedule.h"
#include "parallel/communicator.h"
#include "parallel/process_groups.h"
#include "recipes/console.h"
#include "recipes/metrics_log.h"
#include "recipes/parallel_grads.h"
#include "recipes/stop_signal.h"

namespace fs = std::filesystem;

namespace moe {

std::string resolve_run_dir(const Recipe& recipe, const TrainOptions& options) {
  if (!options.run_dir.empty()) return options.run_dir;
  std::string name = recipe.train.name;
  if (name.empty()) name = recipe.path.empty() ? "run" : fs::path(recipe.path).stem().string();
  return (fs::path("runs") / name).string();
}

namespace {

using Clock = std::chrono::steady_clock;

// Where the console output of ranks other than 0 goes.
std::ostream& null_stream() {
  static std::ostream s(nullptr);
  return s;
}

uint64_t fnv1a(const std::string& text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

struct MoeRef {
  int layer;
  MoeLayer* moe;
};

void check_run_dir_writable(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir.string() + ": cannot create the run directory (" + ec.message() + "); pass a writable --run-dir");
  fs::path probe = dir / ".write_probe";
  std::ofstream f(probe);
  if (!f) throw Error(dir.string() + ": the run directory is not writable; pass a writable --run-dir");
  f.close();
  fs::remove(probe, ec);
}

LrScheduleConfig schedule_of(const Recipe& r) {
  LrScheduleConfig s;
  s.kind = parse_schedule_kind(r.schedule.kind);
  s.max_lr = r.optim.lr;
  s.min_lr = r.optim.min_lr;
  s.warmup_steps = r.schedule.warmup_steps;
  s.total_steps = r.train.steps;
  s.decay_steps = int64_t(std::llround(r.schedule.decay_fraction * double(r.train.steps)));
  s.decay_shape = DecayShape::linear;
  validate_schedule(s);
  return s;
}

class Trainer {
 public:
  Trainer(const Recipe& recipe, const TrainOptions& opt)
      : r_(recipe),
        opt_(opt),
        comm_(opt.comm ? opt.comm : world_communicator()),
        root_(comm_->rank() == 0),
        out_(root_ ? (opt.out ? *opt.out : std::cout) : null_stream()),
        run_dir_(resolve_run_dir(recipe, opt)) {
    check_same_recipe();
    if (r_.train.device == "cuda") {
      CudaBackend& be = require_cuda_device("train.device = \"cuda\"");
      be.set_activation_dtype(r_.train.cuda_activations == "fp32" ? DType::f32 : DType::bf16);
      device_ = Device::cuda;
      device_text_ = be.describe() + ", " + r_.train.cuda_activations + " activations, fp32 master weights";
      // Data parallelism on the device: grads are summed by NCCL where the program links it,
      // else through host copies over the MPI world.
      device_comm_ = make_device_communicator(comm_);
      if (comm_->size() > 1) device_text_ += ", grads all-reduced over " + device_comm_->backend();
    }
    groups_ = make_process_groups(comm_, r_.parallel.ep, r_.model.moe.num_experts, r_.model.use_moe);
    layout_ = groups_.layout;
    // Expert parallelism on the device: the MoE layers' row exchange and the expert grads'
    // all-reduce take the device communicator's groups (NCCL's own split; under host staging
    // the host groups themselves).
    if (device_comm_ && layout_.ep > 1)
      device_groups_ = device_comm_ == comm_ ? groups_
                                             : make_process_groups(device_comm_, r_.parallel.ep,
                                                                   r_.model.moe.num_experts, r_.model.use_moe);
    if (r_.parallel.llep && layout_.ep == 1)
      throw Error("parallel.llep = true needs expert parallelism (parallel.ep > 1, with at least that many ranks): "
                  "LLEP moves expert work between the ranks of an expert-parallel group; set parallel.llep = false");
    MOE_CHECK(r_.train.batch_size % (r_.train.grad_accum * comm_->size()) == 0, "train.batch_size",
              r_.train.batch_size, " (the global batch) must split into grad_accum ", r_.train.grad_accum, " x ",
              comm_->size(), " data-parallel ranks");
    if (root_) check_run_dir_writable(run_dir_);

    train_data_ = TokenDataset::open_prepared(r_.data.dir, Split::train);
    val_data_ = TokenDataset::open_prepared(r_.data.dir, Split::val);
    if (train_data_->vocab_size() > r_.model.vocab_size)
      throw Error("model.vocab_size = " + std::to_string(r_.model.vocab_size) + " is smaller than the data's vocabulary (" +
                  std::to_string(train_data_->vocab_size()) + " in " + r_.data.dir + ")");

    build_model();
    model_->to(device_);  // before the optimizer: its moments follow the parameters' device
    AdamWConfig ac;
    ac.beta1 = r_.optim.beta1;
    ac.beta2 = r_.optim.beta2;
    ac.eps = r_.optim.eps;
    ac.weight_decay = r_.optim.weight_decay;
    optim_ = std::make_unique<AdamW>(model_->named_parameters(), ac);
    schedule_ = schedule_of(r_);

    micro_batch_ = r_.train.batch_size / r_.train.grad_accum;
    SamplerConfig sc;
    sc.seq_len = r_.train.seq_len;
    sc.global_batch = r_.train.batch_size;
    sc.grad_accum = r_.train.grad_accum;
    sc.seed = uint64_t(r_.train.seed);
    sc.rank = comm_->rank();
    sc.world = comm_->size();
    sampler_ = std::make_unique<Sampler>(train_data_, sc);

    if (!opt.resume.empty()) resume_from(opt.resume);

    std::optional<int64_t> resume_step;
    if (resumed_) resume_step = step_;
    std::vector<int> layers;
    for (auto& m : moe_) layers.push_back(m.layer);
    if (!layers.empty() && root_) {
      RoutingLogOptions lo;
      lo.flush_every = r_.log.flush_every;
      lo.log = &out_;
      routing_log_.open(fs::path(run_dir_) / "routing.h5", layers, r_.model.moe.num_experts, resume_step, lo);
    }
    if (root_) {
      metrics_ = std::make_unique<MetricsLog>((fs::path(run_dir_) / "metrics.jsonl").string(), resumed_ ? step_ : -1);
      std::ofstream(fs::path(run_dir_) / "recipe.toml") << resolved_toml(r_);
    }
    comm_->barrier();  // a failure above on rank 0 ends the job before any rank starts training
  }

  int run() {
    install_stop_handlers();
    print_header();
    Clock::time_point interval_start = Clock::now(), run_start = interval_start;
    int64_t interval_tokens = 0, steps_this_run = 0, interval_steps = 0;
    MoePhaseTimes interval_phases;
    StepTimes interval_times;
    MoeLayer::LlepStats interval_llep;
    const int64_t tokens_per_step = r_.train.batch_size * r_.train.seq_len;
    bool checkpointed_now = false;

    while (step_ < r_.train.steps) {
      double lr = lr_at(schedule_, step_);
      StepResult sr = train_step(lr);
      if (!sr.finite) return diverged(sr);
      ++step_;
      ++steps_this_run;
      interval_phases += sr.phases;
      interval_times += sr.times;
      // MOE_KERNEL_PROFILE=1: the first step's kernels (warm-up: allocations, cuBLAS's first
      // calls) stay out of the table printed at the end.
      if (steps_this_run == 1 && device_ == Device::cuda) cuda_backend("Trainer").take_kernel_profile();
      interval_llep += sr.ep;
      ++interval_steps;
      tokens_seen_ += tokens_per_step;
      interval_tokens += tokens_per_step;
      checkpointed_now = false;

      if (step_ % r_.log.every == 0 || step_ == 1 || step_ == r_.train.steps) {
        double secs = std::chrono::duration<double>(Clock::now() - interval_start).count();
        double tps = secs > 0 ? double(interval_tokens) / secs : 0;
        double elapsed = std::chrono::duration<double>(Clock::now() - run_start).count();
        double eta = double(r_.train.steps - step_) * elapsed / double(steps_this_run);
        log_step(sr, lr, tps, eta, interval_phases, interval_times, interval_llep, interval_steps);
        interval_start = Clock::now();
        interval_tokens = 0;
        interval_phases = MoePhaseTimes{};
        interval_times = StepTimes{};
        interval_llep = MoeLayer::LlepStats{};
        interval_steps = 0;
      }
      bool last = step_ == r_.train.steps;
      if ((r_.eval.every > 0 && step_ % r_.eval.every == 0) || last) evaluate();
      if ((r_.checkpoint.every > 0 && step_ % r_.checkpoint.every == 0) || (last && r_.checkpoint.at_end)) {
        save_checkpoint();
        checkpointed_now = true;
      }
      if (opt_.stop_after_step > 0 && step_ == opt_.stop_after_step && !last) {
        if (!checkpointed_now) save_checkpoint();
        out_ << "stopping after step " << step_ << " as asked; continue with --resume latest\n";
        return kTrainOk;
      }
      if (stop_agreed()) {
        if (!checkpointed_now) save_checkpoint();
        out_ << "received " << (stop_signal_number() == SIGINT ? "SIGINT" : "SIGTERM") << ": checkpoint written at step "
             << step_ << " in " << run_dir_ << "; continue with --resume latest\n";
        return kTrainOk;
      }
    }
    if (steps_this_run == 0) out_ << "nothing to do: the run is already at step " << step_ << " of " << r_.train.steps << "\n";
    if (device_ == Device::cuda) report_kernel_profile(steps_this_run);
    out_ << "done: " << step_ << " steps, " << tokens_seen_ << " tokens; run directory " << run_dir_ << "\n";
    return kTrainOk;
  }

 private:
  // Wall seconds of a step's parts, the device drained at each boundary (on the device a part's
  // kernels would otherwise run into the next part's clock): forward = the micro-batches'
  // forwards and loss reads, backward = their backward passes, optimizer = gradient averaging,
  // clipping, AdamW and zeroing; the rest of step_time_s is the balancers and the routing log.
  struct StepTimes {
    double forward = 0, backward = 0, optimizer = 0;
    StepTimes& operator+=(const StepTimes& o) {
      forward += o.forward, backward += o.backward, optimizer += o.optimizer;
      return *this;
    }
  };
  double seconds_since(Clock::time_point& t) {
    if (device_ == Device::cuda) cuda_backend("Trainer.step_times").synchronize();
    const Clock::time_point now = Clock::now();
    const double s = std::chrono::duration<double>(now - t).count();
    t = now;
    return s;
  }

  struct StepResult {
    double loss = 0;  // mean LM loss over the micro-batches
    double grad_norm = 0;
    bool finite = true;
    std::string what;  // which value was not finite
    std::map<std::string, double> extra;  // "layer_<l>.<name>" (scaled) and "..._unscaled"
    MoePhaseTimes phases;                 // this rank's MoE phases, summed over layers
    MoeLayer::LlepStats ep;               // EP work balance, summed over layers and micro-batches
    StepTimes times;                      // where the step's wall time went
  };

  void build_model() {
    const ModelConfig& cfg = r_.model;
    auto moe_init = std::make_shared<Philox>(uint64_t(r_.train.seed), stream_id(RngStream::init, 0, 1));
    FfnFactory factory = [this, &cfg, moe_init](int layer) -> std::shared_ptr<FeedForward> {
      if (!cfg.use_moe || !is_moe_layer(cfg.moe, layer)) return nullptr;
      const std::shared_ptr<Communicator>& ep = device_ == Device::cuda ? device_groups_.ep : groups_.ep;
      auto m = std::make_shared<MoeLayer>(cfg, layer, *moe_init, DType::f32, layout_.ep > 1 ? ep : nullptr);
      m->set_llep(LlepConfig{r_.parallel.llep, r_.parallel.llep_threshold});
      moe_.push_back({layer, m.get()});
      return m;
    };
    model_ = std::make_unique<TransformerLM>(cfg, uint64_t(r_.train.seed), factory);
    model_->train();
    // Expert-parallel parameters (this rank's slices of the routed experts) apart from the
    // replicated ones: their grads, norms and checkpoint entries are handled per EP group.
    std::set<const TensorImpl*> sharded;
    for (auto& m : moe_)
      if (m.moe->expert_parallel())
        for (const Tensor* t : {&m.moe->experts().w1(), &m.moe->experts().w3(), &m.moe->experts().w2()})
          sharded.insert(t->impl());
    for (auto& [name, p] : model_->named_parameters()) {
      if (sharded.count(p.impl())) {
        expert_params_.push_back(p);
        expert_names_.insert(name);
      } else {
        dense_params_.push_back(p);
      }
    }
    // The data-parallel group of every balancer: with balance.scope = "global" the coupled strategies
    // route over every rank's micro-batch (collectives in select()); aux_loss "global" sums its
    // accumulated loads over it.
    for (auto& m : moe_) m.moe->balancer().set_communicator(comm_);
  }

  // Refuses ranks whose resolved recipes differ (a collective: every rank throws the same error).
  void check_same_recipe() {
    if (comm_->size() == 1) return;
    uint64_t h = fnv1a(resolved_toml(r_));
    std::vector<uint64_t> all = comm_->all_gather(&h, 1);
    for (size_t q = 1; q < all.size(); ++q)
      if (all[q] != all[0])
        throw Error("rank " + std::to_string(q) + " runs a different recipe than rank 0 (hash of the resolved recipe " +
                    std::to_string(all[q]) + " vs " + std::to_string(all[0]) +
                    "); every rank must get the same recipe file and --set overrides");
  }

  // A stop (SIGINT / SIGTERM, delivered to each rank at its own moment) counts once any rank saw
  // it, so that all ranks checkpoint and leave at the same step.
  bool stop_agreed() {
    double f = stop_requested() ? 1.0 : 0.0;
    if (comm_->size() > 1) comm_->all_reduce_max(&f, 1);
    return f > 0;
  }

  // Router jitter draws T x D uniforms per forward from the layer's stream. For data
  // parallelism to reproduce one process, rank r takes the r-th block of the draws the single
  // process would make for the micro-batch, and every rank moves past all of them.
  int64_t jitter_draws_per_rank() const {
    if (comm_->size() == 1 || r_.model.moe.jitter <= 0) return 0;
    Philox probe(0, 0, 0);
    probe.uniform();
    return int64_t(probe.offset()) * sampler_->local_batch() * r_.train.seq_len * r_.model.d_model;
  }
  void jitter_before(std::vector<uint64_t>& base) {
    const int64_t L = jitter_draws_per_rank();
    base.clear();
    for (auto& m : moe_) base.push_back(m.moe->jitter_rng().offset());
    if (L == 0) return;
    for (size_t i = 0; i < moe_.size(); ++i) moe_[i].moe->jitter_rng().set_offset(base[i] + uint64_t(comm_->rank() * L));
  }
  void jitter_after(const std::vector<uint64_t>& base) {
    const int64_t L = jitter_draws_per_rank();
    if (L == 0) return;
    for (size_t i = 0; i < moe_.size(); ++i) {
      Philox& g = moe_[i].moe->jitter_rng();
      MOE_CHECK(g.offset() == base[i] + uint64_t((comm_->rank() + 1) * L), "router.jitter",
                "layer ", moe_[i].layer, " drew ", g.offset() - base[i] - uint64_t(comm_->rank() * L),
                " random numbers in a forward, the data-parallel trainer expected ", L);
      g.set_offset(base[i] + uint64_t(comm_->size() * L));
    }
  }

  // The gradient of the single-process loss (the mean over ranks of each rank's mean loss):
  // replicated parameters average their grads over the world. An expert slice's grad already
  // sums the contributions of the EP group's tokens (their rows came to this rank), so it is
  // summed over the DP group (the ranks holding the same experts) and divided by the world size.
  void average_gradients() {
    if (comm_->size() == 1) return;
    const bool device = device_ == Device::cuda;
    all_reduce_grads(dense_params_, device ? *device_comm_ : *comm_, 1.0 / double(comm_->size()));
    if (!expert_params_.empty())
      all_reduce_grads(expert_params_, device ? *device_groups_.dp : *groups_.dp, 1.0 / double(comm_->size()));
  }

  StepResult train_step(double lr) {
    step_start_ = Clock::now();
    StepResult sr;
    const double inv = 1.0 / double(r_.train.grad_accum);
    std::vector<uint64_t> jitter_base;
    Clock::time_point part_start = step_start_;
    for (int64_t micro = 0; micro < r_.train.grad_accum; ++micro) {
      Batch b = sampler_->next();
      jitter_before(jitter_base);
      LossOutput lo = model_->loss(b.inputs.to(device_), b.targets.to(device_));
      jitter_after(jitter_base);
      // Reported values are means over ranks (each rank's loss is a mean over the same number
      // of local tokens, so this is the mean over the global micro-batch).
      std::vector<double> vals = {lo.lm.item_double(), lo.total.item_double()};
      for (auto& [layer, term] : lo.extra) {
        vals.push_back(term.scaled.item_double());
        vals.push_back(term.unscaled);
      }
      if (comm_->size() > 1) comm_->all_reduce_avg(vals);
      double lm = vals[0], total = vals[1];
      if (!std::isfinite(lm) || !std::isfinite(total)) {
        clear_tape();
        sr.finite = false;
        sr.what = "loss";
        sr.loss = lm;
        return sr;
      }
      sr.loss += lm * inv;
      size_t v = 2;
      for (auto& [layer, term] : lo.extra) {
        std::string key = "layer_" + std::to_string(layer) + "." + term.name;
        sr.extra[key] += vals[v++] * inv;
        sr.extra[key + "_unscaled"] += vals[v++] * inv;
      }
      sr.times.forward += seconds_since(part_start);
      mul_scalar(lo.total, inv).backward();
      sr.times.backward += seconds_since(part_start);
    }
    average_gradients();  // every rank now holds the same global-batch gradient
    // Clipping: AdamW multiplies each grad by the clip scale as it reads it (the same products
    // as scaling the grads first, without a pass of their own).
    sr.grad_norm = layout_.ep > 1 ? expert_parallel_grad_norm(dense_params_, expert_params_, *groups_.ep)
                                  : global_grad_norm(model_->parameters());
    if (!std::isfinite(sr.grad_norm)) {
      sr.finite = false;
      sr.what = "gradient norm";
      return sr;
    }
    {
      NoGradGuard ng;
      optim_->step(lr, clip_scale(sr.grad_norm, r_.optim.grad_clip));
    }
    optim_->zero_grad();
    sr.times.optimizer = seconds_since(part_start);
    update_balancers();
    for (auto& m : moe_) {
      sr.phases += m.moe->take_phase_times();
      sr.ep += m.moe->take_llep_stats();
    }
    return sr;
  }

  // Each MoE layer's loads of this step feed its balancer (after the optimizer step, in
  // training only) and the routing log.
  void update_balancers() {
    if (moe_.empty()) return;
    std::vector<RoutingRecord> records;
    for (size_t i = 0; i < moe_.size(); ++i) {
      MoeLayer& m = *moe_[i].moe;
      std::vector<double> loads = m.take_pending_loads();
      RoutingStats s;
      if (comm_->size() == 1) {
        s = m.take_step_stats();  // over all micro-batches of the step
      } else {
        // Loads and routing sums of the global batch: identical balancer updates on every rank.
        comm_->all_reduce_sum(loads);
        RoutingAccumulator acc = m.routing_accumulator();
        if (acc.load.empty()) {
          acc.load.assign(size_t(r_.model.moe.num_experts), 0.0);
          acc.logit_sum.assign(size_t(r_.model.moe.num_experts), 0.0);
        }
        std::vector<double> flat = acc.pack();
        comm_->all_reduce_sum(flat);
        m.take_step_stats();  // resets the layer's sums
        s = RoutingAccumulator::unpack(flat, r_.model.moe.num_experts).finish(m.balancer().state_vector());
      }
      RoutingRecord rec;
      rec.load = loads;
      rec.dropped = double(s.dropped);
      rec.maxvio = s.max_vio;
      rec.router_entropy = s.router_entropy;
      rec.state = s.balancer_state;  // the state this step was routed with
      rec.scalars = {{"load_cv", s.load_cv},           {"load_entropy", s.load_entropy},
                     {"dead_experts", double(s.dead_experts)}, {"t_eff", s.t_eff},
                     {"gamma_proxy", s.gamma_proxy},   {"temperature_fit_r2", s.fit_r2}};
      last_maxvio_[moe_[i].layer] = s.max_vio;
      Clock::time_point update_start = Clock::now();
      m.balancer().update(loads);
      // This rank's routing time (ranks route their own slices in parallel, so rank 0's time is
      // the step's); compare divides the sums by the sum of step_time_s (docs/results.md).
      rec.scalars["routing_time_s"] =
          m.take_routing_seconds() + std::chrono::duration<double>(Clock::now() - update_start).count();
      records.push_back(std::move(rec));
    }
    // The step's wall time so far (everything but the routing log append), repeated per layer so
    // each layer group is self-contained.
    const double step_time = std::chrono::duration<double>(Clock::now() - step_start_).count();
    for (RoutingRecord& rec : records) rec.scalars["step_time_s"] = step_time;
    if (root_) routing_log_.append(step_ + 1, records);
  }

  int diverged(const StepResult& sr) {
    auto latest = find_latest_checkpoint(run_dir_);
    out_ << "step " << step_ + 1 << ": the " << sr.what << " is not finite (" << (sr.what == "loss" ? sr.loss : sr.grad_norm)
         << "); stopping without writing a checkpoint. "
         << (latest ? "The last good checkpoint is " + latest->string() + "; lower optim.lr and continue with --resume latest."
                    : std::string("No checkpoint was written yet; lower optim.lr and start again."))
         << "\n";
    if (root_) routing_log_.flush();
    return kTrainDiverged;
  }

  // phases, times, llep: rank 0's MoE phase seconds, step part seconds and LLEP's moves over the
  // `steps` steps since the last logged row; the row holds their means per step.
  void log_step(const StepResult& sr, double lr, double tps, double eta, const MoePhaseTimes& phases,
                const StepTimes& times, const MoeLayer::LlepStats& llep, int64_t steps) {
    MetricsRow row;
    row.add("kind", std::string("train"))
        .add("step", step_)
        .add("loss", sr.loss)
        .add("lr", lr)
        .add("grad_norm", sr.grad_norm)
        .add("tokens_per_s", tps)
        .add("tokens_seen", tokens_seen_);
    for (auto& [k, v] : sr.extra) row.add(k, v);
    if (steps > 0)
      row.add("forward_s", times.forward / double(steps))
          .add("backward_s", times.backward / double(steps))
          .add("optimizer_s", times.optimizer / double(steps));
    if (!moe_.empty() && steps > 0) {
      row.add("ep_dispatch_s", phases.dispatch / double(steps))
          .add("ep_expert_s", phases.expert / double(steps))
          .add("ep_combine_s", phases.combine / double(steps));
      if (llep.forwards > 0) {  // expert parallelism: max / mean rank load, means over layer forwards
        row.add("ep_load_imbalance", llep.owner_imbalance / double(llep.forwards));
        if (r_.parallel.llep)
          row.add("ep_compute_imbalance", llep.compute_imbalance / double(llep.forwards))
              .add("llep_rebalanced", double(llep.rebalanced) / double(steps))
              .add("llep_moved_rows", double(llep.moved_rows) / double(steps));
      }
    }
    double worst = 0;
    for (auto& [layer, v] : last_maxvio_) {
      row.add("layer_" + std::to_string(layer) + ".maxvio", v);
      worst = std::max(worst, v);
    }
    if (root_) metrics_->write(row);
    out_ << format_progress(step_, r_.train.steps, sr.loss, lr, sr.grad_norm, tps, eta,
                            moe_.empty() ? -1.0 : worst)
         << std::endl;
  }

  void evaluate() {
    model_->eval();
    NoGradGuard ng;
    EvalConfig ec;
    ec.seq_len = r_.train.seq_len;
    ec.global_batch = micro_batch_;
    ec.rank = comm_->rank();
    ec.world = comm_->size();
    ec.max_windows = uint64_t(r_.eval.batches * micro_batch_);
    EvalIterator it(val_data_, ec);
    const size_t G = val_data_->genre_names().size();
    const int64_t E = r_.model.moe.num_experts;
    std::vector<std::vector<double>> loads(moe_.size(), std::vector<double>(size_t(E), 0.0));
    std::vector<std::vector<double>> genre_loads(moe_.size(), std::vector<double>(G * size_t(E), 0.0));
    double loss_sum = 0;
    int64_t count = 0;
    EvalBatch b;
    while (it.next(b)) {
      LossOutput lo = model_->loss(b.inputs.to(device_), b.targets.to(device_));
      int64_t n = b.targets.numel();
      loss_sum += lo.lm.item_double() * double(n);
      count += n;
      const int64_t S = b.inputs.size(1);
      for (size_t i = 0; i < moe_.size(); ++i) {
        const Routing& rt = moe_[i].moe->last_routing();
        auto tok = rt.token.to(DType::i64).to_vector<int64_t>();
        auto exp = rt.expert.to(DType::i64).to_vector<int64_t>();
        for (size_t a = 0; a < exp.size(); ++a) {
          loads[i][size_t(exp[a])] += 1;
          size_t g = size_t(b.genres[size_t(tok[a] / S)]);
          genre_loads[i][g * size_t(E) + size_t(exp[a])] += 1;
        }
      }
    }
    clear_tape();
    model_->train();
    if (comm_->size() > 1) {  // one buffer: [loss_sum, count, loads..., genre_loads...]
      std::vector<double> flat = {loss_sum, double(count)};
      for (auto& l : loads) flat.insert(flat.end(), l.begin(), l.end());
      for (auto& l : genre_loads) flat.insert(flat.end(), l.begin(), l.end());
      comm_->all_reduce_sum(flat);
      loss_sum = flat[0];
      count = int64_t(std::llround(flat[1]));
      size_t o = 2;
      for (auto& l : loads)
        for (auto& x : l) x = flat[o++];
      for (auto& l : genre_loads)
        for (auto& x : l) x = flat[o++];
    }
    if (count == 0) return;
    double val_loss = loss_sum / double(count);
    MetricsRow row;
    row.add("kind", std::string("eval")).add("step", step_).add("val_loss", val_loss).add("val_ppl", std::exp(val_loss));
    std::ostringstream console;
    console << "eval step " << step_ << ": val loss " << format_fixed(val_loss, 4) << ", ppl " << format_fixed(std::exp(val_loss), 2);
    if (!moe_.empty() && root_) {
      routing_log_.append_eval(step_, "val_loss", val_loss);
      double worst = 0;
      for (size_t i = 0; i < moe_.size(); ++i) {
        RoutingStats s;
        s.load = loads[i];
        fill_load_stats(s);
        std::string l = "layer_" + std::to_string(moe_[i].layer);
        routing_log_.append_eval(step_, l + "/maxvio_global", s.max_vio);
        routing_log_.append_eval(step_, l + "/load", loads[i]);
        routing_log_.append_eval(step_, l + "/genre_load", genre_loads[i]);
        row.add(l + ".maxvio_global", s.max_vio);
        worst = std::max(worst, s.max_vio);
      }
      row.add("maxvio_global", worst);
      console << ", MaxVio_global " << format_fixed(worst, 3);
    }
    if (root_) metrics_->write(row);
    out_ << console.str() << std::endl;
  }

  // ---------------------------------------------------------------- checkpoints

  // The whole run's checkpoint from rank 0's state; `experts` (gather_experts) replaces its
  // expert slices by the full tensors under their global expert index.
  Checkpoint make_checkpoint(const std::map<std::string, Tensor>& experts) const {
    Checkpoint c;
    c.meta.step = step_;
    c.meta.tokens_seen = tokens_seen_;
    c.meta.recipe = resolved_toml(r_);
    // Where it was written (the file is the same either way: fp32 masters, resumable on both).
    c.meta.strings["backend"] = device_ == Device::cuda ? "cuda, " + r_.train.cuda_activations + " activations" : "cpu";
    c.meta.world_size = comm_->size();
    c.meta.dp_size = layout_.dp;
    c.meta.ep_size = layout_.ep;
    for (auto& [name, p] : model_->named_parameters()) c.tensors["model/" + name] = p.clone();
    for (auto& [name, t] : optim_->exp_avg()) c.tensors["optim/exp_avg/" + name] = t;
    for (auto& [name, t] : optim_->exp_avg_sq()) c.tensors["optim/exp_avg_sq/" + name] = t;
    for (auto& [name, t] : optim_->steps()) c.tensors["optim/step/" + name] = t;
    for (auto& [key, t] : experts) c.tensors.at(key) = t;
    std::vector<int64_t> rng;
    for (auto& m : moe_) {
      std::string g = "balance/layer_" + std::to_string(m.layer) + "/";
      for (auto& [k, v] : m.moe->balancer().state()) c.doubles[g + k] = v;
      rng.push_back(int64_t(m.moe->jitter_rng().offset()));
      rng.push_back(int64_t(m.moe->select_rng().offset()));
    }
    c.ints["rng/rank_0/moe_offsets"] = rng;
    c.ints["data/rank_0/cursor"] = cursor_to_vector(sampler_->cursor());
    return c;
  }

  // Strategies that change their state inside select() from the local batch (BIP in paper
  // order, ...) drift apart across ranks; the console says so once per layer (a collective).
  void note_rank_local_balancers() {
    if (comm_->size() == 1) return;
    for (auto& m : moe_) {
      std::string bytes;
      for (auto& [k, v] : m.moe->balancer().state()) {
        bytes += k;
        bytes.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(double));
      }
      uint64_t h = fnv1a(bytes);
      std::vector<uint64_t> all = comm_->all_gather(&h, 1);
      bool same = std::all_of(all.begin(), all.end(), [&](uint64_t x) { return x == all[0]; });
      if (!same && noted_local_.insert(m.layer).second)
        out_ << "note: layer " << m.layer << ": the " << r_.model.moe.balance.strategy
             << " balancer state differs across data-parallel ranks (it is computed from each rank's local batch, "
                "see docs/parallel.md); checkpoints keep rank 0's"
             << std::endl;
    }
  }

  // Rank 0 of the first EP group receives the expert slices (parameters and AdamW moments) of
  // its group, in rank order = expert order: {checkpoint key: full [E, ...] tensor}. A
  // collective of that group (the other groups hold the same experts); empty on other ranks.
  std::map<std::string, Tensor> gather_experts() const {
    std::map<std::string, Tensor> out;
    if (expert_names_.empty() || layout_.dp_rank != 0) return out;
    const auto m = optim_->exp_avg(), v = optim_->exp_avg_sq();
    for (auto& [name, p] : model_->named_parameters()) {
      if (!expert_names_.count(name)) continue;
      for (auto& [key, t] : {std::pair{"model/" + name, p}, std::pair{"optim/exp_avg/" + name, m.at(name)},
                             std::pair{"optim/exp_avg_sq/" + name, v.at(name)}}) {
        Tensor tc = t.to(Device::cpu).contiguous();  // device slices come down first
        Shape shape = tc.shape();
        shape[0] *= layout_.ep;
        dispatch_float(tc.dtype(), "checkpoint expert gather", [&](auto tag) {
          using T = decltype(tag);
          std::vector<T> all = groups_.ep->gather(tc.data<T>(), size_t(tc.numel()), 0);
          if (!all.empty()) out[key] = Tensor::from_vector<T>(all, shape);
          return 0;
        });
      }
    }
    return out;
  }

  // Rank 0 writes; the other ranks' replicated state (parameters, optimizer, balancers, RNG
  // offsets, the global data cursor) is identical to rank 0's, and the experts held elsewhere
  // reach rank 0 first (gather_experts), so its file is the whole run's. The barrier keeps
  // every rank from going on (or exiting) before the checkpoint, DONE marker included, is
  // complete.
  void save_checkpoint() {
    note_rank_local_balancers();
    const std::map<std::string, Tensor> experts = gather_experts();
    if (root_) {
      routing_log_.flush();
      fs::path dir = write_checkpoint(run_dir_, step_, make_checkpoint(experts), int(r_.checkpoint.keep));
      out_ << "checkpoint: " << dir.string() << std::endl;
    }
    comm_->barrier();
  }

  void resume_from(const std::string& what) {
    std::optional<Checkpoint> ck;
    if (what == "latest") {
      ck = resume_latest(run_dir_, out_);
      if (!ck) throw Error(run_dir_ + "/checkpoints: no complete checkpoint to resume from (start without --resume)");
    } else {
      ck = read_checkpoint(what);
    }
    const Checkpoint& c = *ck;
    NoGradGuard ng;
    // Experts are stored under their global index whatever the layout that wrote them: an
    // expert-parallel rank takes its slice of rows [first, first + E/ep) along dim 0.
    auto slice_of = [&](const std::string& name, const Tensor& t, const Tensor& p) {
      if (!expert_names_.count(name)) return t;
      const int64_t El = p.size(0), first = El * layout_.ep_rank;
      MOE_CHECK(t.dim() == p.dim() && t.size(0) == El * layout_.ep, c.source.string().c_str(), "expert tensor '", name,
                "' has shape ", t.shape_str(), " in the checkpoint, expected ", El * layout_.ep, " experts");
      return t.slice(0, first, first + El).contiguous();
    };
    std::map<std::string, Tensor> m, v, s;
    for (auto& [name, p] : model_->named_parameters()) {
      const Tensor t = slice_of(name, c.tensor("model/" + name), p);
      MOE_CHECK(t.shape() == p.shape(), c.source.string().c_str(), "parameter '", name, "' has shape ", t.shape_str(),
                " in the checkpoint but ", p.shape_str(), " in the recipe's model");
      p.copy_(t);
      m[name] = slice_of(name, c.tensor("optim/exp_avg/" + name), p);
      v[name] = slice_of(name, c.tensor("optim/exp_avg_sq/" + name), p);
      s[name] = c.tensor("optim/step/" + name);
    }
    optim_->load_state(m, v, s);
    const auto& rng = c.ints_at("rng/rank_0/moe_offsets");
    MOE_CHECK(rng.size() == 2 * moe_.size(), c.source.string().c_str(), "holds RNG state of ", rng.size() / 2,
              " MoE layers, the recipe's model has ", moe_.size());
    for (size_t i = 0; i < moe_.size(); ++i) {
      std::string g = "balance/layer_" + std::to_string(moe_[i].layer) + "/";
      std::map<std::string, std::vector<double>> st;
      for (auto& [k, vec] : c.doubles)
        if (k.rfind(g, 0) == 0) st[k.substr(g.size())] = vec;
      moe_[i].moe->balancer().load_state(st);
      moe_[i].moe->jitter_rng().set_offset(uint64_t(rng[2 * i]));
      moe_[i].moe->select_rng().set_offset(uint64_t(rng[2 * i + 1]));
    }
    sampler_->restore(cursor_from_vector(c.ints_at("data/rank_0/cursor"), c.source.string() + " /data/rank_0/cursor"));
    step_ = c.meta.step;
    tokens_seen_ = c.meta.tokens_seen;
    resumed_ = true;
    out_ << "resuming from " << c.source.string() << " at step " << step_ << std::endl;
  }

  // The GPU time per kernel of this run's steps after the first (and the evaluations among
  // them): on the console and in <run>/kernel_profile.txt (rank 0). Only with MOE_KERNEL_PROFILE=1.
  void report_kernel_profile(int64_t steps_this_run) {
    const std::string table = cuda_backend("Trainer").take_kernel_profile();
    if (table.empty() || !root_) return;
    const std::string what = steps_this_run >= 2 ? "steps " + std::to_string(step_ - steps_this_run + 2) + "-" +
                                                       std::to_string(step_) + " and their evaluations"
                                                 : std::string("the evaluation after the only step");
    const std::string title = "kernel profile (MOE_KERNEL_PROFILE=1): GPU time per kernel over " + what + "\n";
    out_ << title << table;
    std::ofstream(fs::path(run_dir_) / "kernel_profile.txt") << title << table;
  }

  void print_header() {
    int64_t total = model_->num_parameters();
    for (const Tensor& p : expert_params_) total += p.numel() * (layout_.ep - 1);  // the other ranks' experts
    out_ << "moetrain: run " << run_dir_ << " | " << total << " parameters";
    if (!moe_.empty()) {
      out_ << " | " << moe_.size() << " MoE layers, E = " << r_.model.moe.num_experts << ", k = " << r_.model.moe.top_k
           << ", balance = " << r_.model.moe.balance.strategy;
    }
    out_ << " | data " << train_data_->description() << " (" << train_data_->size() << " tokens)"
         << " | " << r_.train.steps << " steps of " << r_.train.batch_size << " x " << r_.train.seq_len << " tokens";
    if (comm_->size() > 1 && layout_.ep == 1)
      out_ << " | data parallel over " << comm_->size() << " ranks (" << comm_->backend() << ")";
    else if (comm_->size() > 1)
      out_ << " | " << comm_->size() << " ranks: data parallel " << layout_.dp << " x expert parallel " << layout_.ep
           << ", " << layout_.experts_per_rank << " experts per rank (" << comm_->backend() << ")";
    if (device_ == Device::cuda) out_ << " | on " << device_text_;
    out_ << std::endl;
  }

  Recipe r_;
  TrainOptions opt_;
  std::shared_ptr<Communicator> comm_;
  std::shared_ptr<Communicator> device_comm_;  // the grads' all-reduce on the device (make_device_communicator)
  bool root_ = true;
  std::ostream& out_;
  std::string run_dir_;
  std::shared_ptr<const TokenDataset> train_data_, val_data_;
  Device device_ = Device::cpu;  // where the model, its grads, the optimizer state and the batches live
  std::string device_text_;
  std::unique_ptr<TransformerLM> model_;
  std::vector<MoeRef> moe_;
  std::unique_ptr<AdamW> optim_;
  LrScheduleConfig schedule_;
  std::unique_ptr<Sampler> sampler_;
  int64_t micro_batch_ = 0;
  ProcessGroups groups_;
  ProcessGroups device_groups_;  // on the device: groups_ of device_comm_ (the same as groups_ under MPI)
  ParallelLayout layout_;
  std::vector<Tensor> dense_params_, expert_params_;  // model order; expert_params_: this rank's slices
  std::set<std::string> expert_names_;
  RoutingLog routing_log_;
  std::unique_ptr<MetricsLog> metrics_;
  std::map<int, double> last_maxvio_;
  Clock::time_point step_start_{};  // start of the current train_step (step_time_s)
  std::set<int> noted_local_;
  int64_t step_ = 0, tokens_seen_ = 0;
  bool resumed_ = false;
};

}  // namespace

int run_training(const Recipe& recipe, const TrainOptions& options) {
  Trainer t(recipe, options);
  return t.run();
}

}  // namespace moe
