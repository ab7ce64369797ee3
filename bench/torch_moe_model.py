# PyTorch (eager, float32, CPU) twin of moetrain's MoE language model, for the throughput benchmark:
# reads a moetrain recipe and times training steps on random byte batches. Run by /usr/bin/python3.
"""Same model and step as moetrain's trainer on the recipe's shapes.

Architecture (layers/transformer.cpp, block.cpp, attention_layer.cpp, layers/moe/*.cpp):
byte embedding -> n_layers x [x + attn(rmsnorm(x)); x + ffn(rmsnorm(x))] -> rmsnorm -> untied lm_head.
Attention: bias-free q/k/v/o projections, RoPE (rotate-half) on q and k, causal softmax attention
written with matmul + mask + softmax (torch 1.13 has no scaled_dot_product_attention).
FFN: MoE in every block with moe.moe_every = 1 (dense SwiGLU otherwise): softmax router, top-k,
gates renormalized to sum 1, SwiGLU experts computed the usual eager way (tokens sorted by expert,
one index_select + three matmuls + index_add_ per expert, as HF Mixtral / Megatron's sequential MLP),
Switch aux loss alpha * E * sum_i f_i P_i and router z-loss c_z * mean(logsumexp^2).
Step: cross-entropy + extra losses, backward, global grad-norm clipping, AdamW (foreach).
Prints one JSON line: median tokens/s over the timed steps (after warmup), the per-step wall times and
the mean process CPU seconds per step (all threads; robust to other load on a shared machine).
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
import tomllib

import torch
import torch.nn as nn
import torch.nn.functional as F


def deep_merge(base, over):
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_recipe(path):
    """A moetrain recipe with its `extends` chain resolved (paths relative to the including file)."""
    with open(path, "rb") as f:
        r = tomllib.load(f)
    parent = r.pop("extends", None)
    if parent:
        r = deep_merge(load_recipe(os.path.join(os.path.dirname(path), parent)), r)
    return r


def resolved_expert_hidden(model, moe):
    if moe.get("expert_hidden", 0) > 0:
        return moe["expert_hidden"]
    if model.get("d_ff", 0) > 0:
        return model["d_ff"]
    h = (8 * model["d_model"] + 2) // 3
    return (h + 7) // 8 * 8


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(seq_len, head_dim, theta):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ang = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv)  # [S, Dh/2]
    cos = torch.cat([ang.cos(), ang.cos()], -1).float()
    sin = torch.cat([ang.sin(), ang.sin()], -1).float()
    return cos[:, None, :], sin[:, None, :]  # broadcast over [B, S, H, Dh]


def apply_rope(x, cos, sin):
    h = x.shape[-1] // 2
    rot = torch.cat([-x[..., h:], x[..., :h]], -1)
    return x * cos + rot * sin


class Attention(nn.Module):
    def __init__(self, d, heads, theta, std, out_std):
        super().__init__()
        self.d, self.h, self.dh, self.theta = d, heads, d // heads, theta
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(d, d, bias=False) for _ in range(4))
        for w in (self.wq, self.wk, self.wv):
            nn.init.normal_(w.weight, std=std)
        nn.init.normal_(self.wo.weight, std=out_std)
        self._rope = None

    def forward(self, x):
        B, S, _ = x.shape
        if self._rope is None or self._rope[0].shape[0] != S:
            self._rope = rope_tables(S, self.dh, self.theta)
        cos, sin = self._rope
        q = apply_rope(self.wq(x).view(B, S, self.h, self.dh), cos, sin).transpose(1, 2)
        k = apply_rope(self.wk(x).view(B, S, self.h, self.dh), cos, sin).transpose(1, 2)
        v = self.wv(x).view(B, S, self.h, self.dh).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.dh))
        mask = torch.ones(S, S, dtype=torch.bool).triu(1)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        o = (att @ v).transpose(1, 2).reshape(B, S, self.d)
        return self.wo(o)


class MLP(nn.Module):
    def __init__(self, d, hidden, std, out_std):
        super().__init__()
        self.w1 = nn.Linear(d, hidden, bias=False)
        self.w3 = nn.Linear(d, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d, bias=False)
        nn.init.normal_(self.w1.weight, std=std)
        nn.init.normal_(self.w3.weight, std=std)
        nn.init.normal_(self.w2.weight, std=out_std)
        self.extra = []

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MoE(nn.Module):
    def __init__(self, d, num_experts, hidden, top_k, aux_alpha, z_coef, std, out_std):
        super().__init__()
        self.E, self.k, self.aux_alpha, self.z_coef = num_experts, top_k, aux_alpha, z_coef
        self.router = nn.Parameter(torch.randn(num_experts, d) * std)
        self.w1 = nn.Parameter(torch.randn(num_experts, hidden, d) * std)
        self.w3 = nn.Parameter(torch.randn(num_experts, hidden, d) * std)
        self.w2 = nn.Parameter(torch.randn(num_experts, d, hidden) * out_std)
        self.extra = []

    def forward(self, x):
        B, S, D = x.shape
        x2 = x.reshape(-1, D)
        T = x2.shape[0]
        logits = x2 @ self.router.t()                        # [T, E]
        probs = logits.softmax(-1)
        gate, expert = probs.topk(self.k, dim=-1)            # [T, k]
        gate = gate / gate.sum(-1, keepdim=True)
        flat_e = expert.reshape(-1)
        order = flat_e.argsort()
        token = (order // self.k)                            # token of each sorted assignment
        sorted_gate = gate.reshape(-1)[order]
        counts = torch.bincount(flat_e, minlength=self.E)
        out = torch.zeros_like(x2)
        xs = x2.index_select(0, token)
        start = 0
        for e, n in enumerate(counts.tolist()):
            if n == 0:
                continue
            xe = xs[start:start + n]
            h = F.silu(xe @ self.w1[e].t()) * (xe @ self.w3[e].t())
            ye = (h @ self.w2[e].t()) * sorted_gate[start:start + n, None]
            out.index_add_(0, token[start:start + n], ye)
            start += n
        self.extra = []
        if self.aux_alpha > 0:
            f = counts.float() / float(T * self.k)
            P = probs.mean(0)
            self.extra.append(self.aux_alpha * self.E * (f * P).sum())
        if self.z_coef > 0:
            self.extra.append(self.z_coef * torch.logsumexp(logits, -1).pow(2).mean())
        return out.view(B, S, D)


class Block(nn.Module):
    def __init__(self, cfg, ffn):
        super().__init__()
        self.norm1 = RMSNorm(cfg["d"], cfg["eps"])
        self.attn = Attention(cfg["d"], cfg["heads"], cfg["theta"], cfg["std"], cfg["out_std"])
        self.norm2 = RMSNorm(cfg["d"], cfg["eps"])
        self.ffn = ffn

    def forward(self, x):
        h = x + self.attn(self.norm1(x))
        return h + self.ffn(self.norm2(h))


class TransformerLM(nn.Module):
    def __init__(self, recipe):
        super().__init__()
        m, moe, router = recipe.get("model", {}), recipe.get("moe", {}), recipe.get("router", {})
        bal = recipe.get("balance", {})
        d, L = m.get("d_model", 128), m.get("n_layers", 4)
        std = m.get("init_std", 0.02)
        cfg = dict(d=d, heads=m.get("n_heads", 4), theta=m.get("rope_theta", 10000.0), eps=m.get("norm_eps", 1e-5),
                   std=std, out_std=std / math.sqrt(2 * L))
        self.V = m.get("vocab_size", 256)
        self.tok_emb = nn.Embedding(self.V, d)
        nn.init.normal_(self.tok_emb.weight, std=std)
        strategy = router.get("balance", "aux_loss")
        if strategy not in ("aux_loss", "none"):
            raise SystemExit(f"torch_moe_model.py: router.balance = '{strategy}' is not modelled (aux_loss, none)")
        if router.get("score", "softmax") != "softmax":
            raise SystemExit("torch_moe_model.py: only router.score = 'softmax' is modelled")
        aux_alpha = bal.get("aux_alpha", 1e-2) if strategy == "aux_loss" else 0.0
        every = moe.get("moe_every", 1)
        blocks = []
        for l in range(L):
            if moe.get("enabled", False) and l % every == every - 1:
                ffn = MoE(d, moe.get("num_experts", 8), resolved_expert_hidden(m, moe), router.get("top_k", 2),
                          aux_alpha, router.get("z_loss", 0.0), std, cfg["out_std"])
            else:
                hidden = m.get("d_ff", 0) or ((8 * d + 2) // 3 + 7) // 8 * 8
                ffn = MLP(d, hidden, std, cfg["out_std"])
            blocks.append(Block(cfg, ffn))
        self.blocks = nn.ModuleList(blocks)
        self.norm_f = RMSNorm(d, cfg["eps"])
        self.lm_head = nn.Linear(d, self.V, bias=False)
        nn.init.normal_(self.lm_head.weight, std=std)

    def loss(self, ids, targets):
        h = self.tok_emb(ids)
        for b in self.blocks:
            h = b(h)
        logits = self.lm_head(self.norm_f(h))
        total = F.cross_entropy(logits.view(-1, self.V), targets.reshape(-1))
        for b in self.blocks:
            for e in b.ffn.extra:
                total = total + e
        return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--steps", type=int, default=30, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    r = load_recipe(a.recipe)
    tr, opt_cfg = r.get("train", {}), r.get("optim", {})
    B, S = tr.get("batch_size", 16), tr.get("seq_len", 128)
    model = TransformerLM(r)
    opt = torch.optim.AdamW(model.parameters(), lr=opt_cfg.get("lr", 3e-3),
                            betas=(opt_cfg.get("beta1", 0.9), opt_cfg.get("beta2", 0.95)),
                            eps=opt_cfg.get("eps", 1e-8), weight_decay=opt_cfg.get("weight_decay", 0.1),
                            foreach=True)
    clip = opt_cfg.get("grad_clip", 1.0)
    times, cpu, losses = [], [], []
    for step in range(a.warmup + a.steps):
        seq = torch.randint(0, model.V, (B, S + 1))
        ids, targets = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        loss = model.loss(ids, targets)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(loss.item())
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if step >= a.warmup:
            times.append(dt)
            cpu.append(dc)
    med = statistics.median(times)
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "recipe": a.recipe, "batch_size": B, "seq_len": S,
                      "params": sum(p.numel() for p in model.parameters()),
                      "steps": a.steps, "median_step_s": med, "tokens_per_s": B * S / med,
                      "cpu_s_per_step": sum(cpu) / len(cpu), "step_s": [round(t, 4) for t in times],
                      "first_loss": losses[0], "last_loss": losses[-1]}))


if __name__ == "__main__":
    sys.exit(main())
