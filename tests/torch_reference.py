#!/usr/bin/python3
# PyTorch reference of moetrain's transformer, dense or MoE (the way llm.c checks itself): reads
# the HDF5 file written by torch_reference_test.cpp, rebuilds the model in torch float32 with the
# same weights, and compares logits, losses, every parameter gradient and three AdamW steps.
# MoE blocks (config attribute moe = 1) are re-implemented here from layers/moe/: fp32 router,
# softmax | sigmoid scores, top-k (ties to the lower index), renormalized and scaled gates,
# capacity with drop by score or position, SwiGLU experts, shared experts, and the aux_loss
# (micro_batch) and z-loss terms; the routing of every forward is compared to moetrain's.
# Usage: /usr/bin/python3 tests/torch_reference.py <file.h5> [tolerance]. Exit 0: all match;
# 1: mismatch; 2: torch/h5py missing (run scripts/setup.sh) or a bad file. The tolerance is the
# one the test wrote into the file (config attribute `tolerance`; 1e-4 for fp32 on the CPU,
# larger for a model run on the device with bf16 in its products; 1e-4 if the file has none);
# a tolerance argument overrides it. The last lines: the worst relative error and the verdict.
import math
import sys

try:
    import h5py
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:  # the C++ test turns this into a failure that says what to do
    print(f"torch_reference.py: {e}; install with scripts/setup.sh (python3-torch, python3-h5py)")
    sys.exit(2)

TOL = None  # relative error max|a - b| / max|b| for tensors, |a - b| / |b| for losses; None: the file's


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, theta):
    # x [B, S, H, Dh]; rotate-half (GPT-NeoX / Llama): pair (i, i + Dh/2) turns by pos * theta^(-2i/Dh).
    _, s, _, dh = x.shape
    half = dh // 2
    inv_freq = theta ** (-torch.arange(half, dtype=torch.float64) * 2.0 / dh)
    ang = torch.arange(s, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [S, half]
    cos = ang.cos().to(x.dtype)[None, :, None, :]
    sin = ang.sin().to(x.dtype)[None, :, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def capacity(tokens, k, e, factor):
    # layers/moe/capacity.cpp expert_capacity: the product snapped to an integer within 1e-9
    # relative before the ceiling.
    c = k * tokens / e * factor
    r = round(c)
    if abs(c - r) <= 1e-9 * max(1.0, abs(c)):
        c = r
    return int(math.ceil(c))


def swiglu_ffn(x, w1, w3, w2):
    return (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T


def moe_ffn(m, p, pre, cfg, rec):
    """One MoE layer on m [B, S, D]; returns the output and [(name, scaled, unscaled)] losses and
    appends (experts [T k], dropped) to rec."""
    b, s, d = m.shape
    t = b * s
    e, k = cfg["num_experts"], cfg["top_k"]
    x = m.reshape(t, d)
    logits = x @ p[pre + "router.weight"].T
    scores = torch.sigmoid(logits) if cfg["sigmoid"] else logits.softmax(-1)
    # Top-k, ties to the lower index: a stable descending sort keeps equal scores in index order.
    choice = torch.sort(scores.detach(), dim=-1, descending=True, stable=True).indices[:, :k]  # [T, k]
    gate = scores.gather(1, choice)
    if cfg["renormalize_gates"] and k > 1:
        gate = gate / gate.sum(1, keepdim=True)
    gate = (gate * cfg["gate_scale"]).reshape(-1)  # [A], token-major as moetrain lists them
    token = torch.arange(t).repeat_interleave(k)
    expert = choice.reshape(-1)
    score = scores.detach().gather(1, choice).reshape(-1)

    loads = torch.bincount(expert, minlength=e).to(torch.float32)
    probs = scores / scores.sum(1, keepdim=True) if cfg["sigmoid"] else scores
    aux = e * (probs.mean(0) * (loads / loads.sum())).sum()  # f = load / (k T) is a constant
    losses = [("aux", cfg["aux_alpha"] * aux, aux.item())]
    if cfg["z_loss_coef"] > 0:
        z = torch.logsumexp(logits, -1).pow(2).mean()
        losses.append(("z", cfg["z_loss_coef"] * z, z.item()))

    keep = torch.ones(expert.numel(), dtype=torch.bool)
    if cfg["capacity_factor"] > 0:
        cap = capacity(t, k, e, cfg["capacity_factor"])
        for j in range(e):
            idx = (expert == j).nonzero()[:, 0].tolist()
            if len(idx) <= cap:
                continue
            if cfg["drop_by_position"]:
                idx.sort(key=lambda a: (token[a].item(), a))
            else:
                idx.sort(key=lambda a: (-score[a].item(), a))
            keep[idx[cap:]] = False
    rec.append((expert.clone(), keep.clone()))

    out = torch.zeros(t, d)
    for j in range(e):
        idx = (keep & (expert == j)).nonzero()[:, 0]
        y = swiglu_ffn(x[token[idx]], p[pre + "experts.w1"][j], p[pre + "experts.w3"][j], p[pre + "experts.w2"][j])
        out = out.index_add(0, token[idx], y * gate[idx, None])
    if cfg["num_shared_experts"] > 0:
        out = out + swiglu_ffn(x, p[pre + "shared_experts.w1"][0], p[pre + "shared_experts.w3"][0],
                               p[pre + "shared_experts.w2"][0])
    return out.reshape(b, s, d), losses, scores.detach()


def is_moe_layer(cfg, l):
    return cfg["moe"] and l % cfg["moe_every"] == cfg["moe_every"] - 1


def forward(p, cfg, ids, extra=None, rec=None, margins=None):
    b, s = ids.shape
    d, h = cfg["d_model"], cfg["n_heads"]
    dh = d // h
    x = F.embedding(ids, p["tok_emb.weight"])
    mask = torch.ones(s, s, dtype=torch.bool).triu(1)
    for l in range(cfg["n_layers"]):
        pre = f"blocks.{l}."
        a = rms_norm(x, p[pre + "norm1.weight"], cfg["norm_eps"])
        q = rope((a @ p[pre + "attn.wq.weight"].T).view(b, s, h, dh), cfg["rope_theta"]).transpose(1, 2)
        k = rope((a @ p[pre + "attn.wk.weight"].T).view(b, s, h, dh), cfg["rope_theta"]).transpose(1, 2)
        v = (a @ p[pre + "attn.wv.weight"].T).view(b, s, h, dh).transpose(1, 2)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        o = (att @ v).transpose(1, 2).reshape(b, s, d)
        x = x + o @ p[pre + "attn.wo.weight"].T
        m = rms_norm(x, p[pre + "norm2.weight"], cfg["norm_eps"])
        if is_moe_layer(cfg, l):
            y, losses, scores = moe_ffn(m, p, pre + "ffn.", cfg, rec if rec is not None else [])
            x = x + y
            for name, scaled, unscaled in losses:
                if extra is not None:
                    extra.append((f"layer{l}.{name}", scaled, unscaled))
            if margins is not None:  # k-th minus (k+1)-th score: how far routing is from a tie
                top = scores.sort(-1, descending=True).values
                kk = cfg["top_k"]
                if kk < top.shape[1]:
                    margins.append((top[:, kk - 1] - top[:, kk]).min().item())
        else:
            ff = F.silu(m @ p[pre + "ffn.w1.weight"].T) * (m @ p[pre + "ffn.w3.weight"].T)
            x = x + ff @ p[pre + "ffn.w2.weight"].T
    x = rms_norm(x, p["norm_f.weight"], cfg["norm_eps"])
    head = p["tok_emb.weight"] if cfg["tied"] else p["lm_head.weight"]
    return x @ head.T


def loss_of(p, cfg, ids, targets, rec=None, margins=None):
    """Returns logits, the total loss (LM + every scaled extra term in layer order), the LM loss
    and the extra terms [(key, scaled, unscaled)]."""
    extra = []
    logits = forward(p, cfg, ids, extra, rec, margins)
    lm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    total = lm
    for _, scaled, _ in extra:
        total = total + scaled
    return logits, total, lm, extra


def rel_err(a, b):
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    denom = b.abs().max().item()
    return (a - b).abs().max().item() / (denom if denom > 0 else 1.0), denom


MOE_INT = ("num_experts", "top_k", "moe_every", "num_shared_experts")
MOE_BOOL = ("sigmoid", "renormalize_gates", "drop_by_position")


def main(path):
    torch.manual_seed(0)
    with h5py.File(path, "r") as f:
        cfg = {k: (v.item() if hasattr(v, "item") else v) for k, v in f["config"].attrs.items()}
        tol_all = TOL if TOL is not None else float(cfg.get("tolerance", 1e-4))
        for k in ("vocab_size", "d_model", "n_layers", "n_heads", "adamw_steps"):
            cfg[k] = int(cfg[k])
        cfg["tied"] = bool(cfg["tied"])
        cfg["moe"] = bool(cfg.get("moe", 0))
        if cfg["moe"]:
            for k in MOE_INT:
                cfg[k] = int(cfg[k])
            for k in MOE_BOOL:
                cfg[k] = bool(cfg[k])
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["param_names"][()]]
        params = {n: torch.tensor(f["weights"][n][()], dtype=torch.float32, requires_grad=True) for n in names}
        decays = {n: bool(f["decays"][n][()]) for n in names}
        grads = {n: f["grads"][n][()] for n in names}
        finals = {n: f["final"][n][()] for n in names}
        ids = torch.tensor(f["ids"][()], dtype=torch.int64)
        targets = torch.tensor(f["targets"][()], dtype=torch.int64)
        ref_logits = f["logits"][()]
        ref_loss = float(f["loss"][()])
        ref_lm = float(f["lm_loss"][()])
        ref_step_losses = f["adamw_losses"][()]
        extra_names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["extra_names"][()]] \
            if "extra_names" in f else []
        ref_extra = {n: (float(f["extra"][n][()]), float(f["extra_unscaled"][n][()])) for n in extra_names}
        ref_routing = {n: f["routing"][n][()] for n in f["routing"].keys()} if "routing" in f else {}

    moe_desc = ""
    if cfg["moe"]:
        moe_desc = (f" MoE every {cfg['moe_every']}: E={cfg['num_experts']} k={cfg['top_k']} "
                    f"{'sigmoid' if cfg['sigmoid'] else 'softmax'} renorm={cfg['renormalize_gates']} "
                    f"scale={cfg['gate_scale']:g} shared={cfg['num_shared_experts']} "
                    f"capacity={cfg['capacity_factor']:g}{' by position' if cfg['drop_by_position'] else ''} "
                    f"aux_alpha={cfg['aux_alpha']:g} z={cfg['z_loss_coef']:g}")
    print(f"torch_reference: V={cfg['vocab_size']} D={cfg['d_model']} L={cfg['n_layers']} H={cfg['n_heads']} "
          f"tied={cfg['tied']} batch={tuple(ids.shape)}{moe_desc}, tolerance {tol_all:g} "
          f"(max|moetrain - torch| / max|torch|)")
    failures = []
    worst = [0.0, "-"]  # the largest relative error of any check, and its label

    def check(label, ours, theirs, tol=tol_all, shape=""):
        err, scale = rel_err(ours, theirs)
        ok = err < tol
        if not err <= worst[0] and not math.isnan(worst[0]):  # a NaN stays the worst
            worst[0], worst[1] = err, label
        print(f"  {'ok ' if ok else 'BAD'} {label:<44} {shape:<14} max|torch| {scale:10.3e}  rel err {err:9.2e}")
        if not ok:
            failures.append(label)

    moe_layers = [l for l in range(cfg["n_layers"]) if is_moe_layer(cfg, l)]

    def check_routing(pass_no, rec):
        # Routing is discrete: any difference (a near-tie rounded differently) would show up as
        # a mismatch of everything downstream, so it is named here first.
        for l, (expert, keep) in zip(moe_layers, rec):
            key = f"pass{pass_no}.layer{l}"
            dropped = int((~keep).sum())

            def same(name, ours):
                theirs = torch.as_tensor(ref_routing[key + name]).to(ours.dtype)
                return theirs.shape == ours.shape and bool((theirs == ours).all())
            experts_ok, kept_ok = same(".expert", expert), same(".kept", keep)
            drops_ok = int(ref_routing[key + ".dropped"]) == dropped
            if not (experts_ok and kept_ok and drops_ok):
                print(f"  BAD routing {key}: experts {'match' if experts_ok else 'differ'}, kept sets "
                      f"{'match' if kept_ok else 'differ'}, dropped moetrain {int(ref_routing[key + '.dropped'])} "
                      f"vs torch {dropped}")
                failures.append("routing " + key)
            elif pass_no == 0:
                loads = torch.bincount(expert, minlength=cfg["num_experts"]).tolist()
                print(f"  ok  routing {key}: {expert.numel()} assignments and kept set identical, loads {loads}, "
                      f"dropped {dropped}")
        if len(rec) != len(moe_layers):
            failures.append(f"routing pass{pass_no}: {len(rec)} MoE layers in torch, expected {len(moe_layers)}")

    rec, margins = [], []
    logits, loss, lm, extra = loss_of(params, cfg, ids, targets, rec, margins)
    if cfg["moe"]:
        check_routing(0, rec)
        print(f"  info: smallest top-k margin (k-th minus (k+1)-th score) {min(margins):.2e}")
        if cfg["capacity_factor"] > 0 and sum(int((~kp).sum()) for _, kp in rec) == 0:
            print("  BAD capacity case dropped nothing: it would not test the drop path")
            failures.append("no drops")
    check("logits", ref_logits, logits.detach(), shape=str(tuple(logits.shape)))
    check("loss (total)", ref_loss, loss.item())
    check("loss lm", ref_lm, lm.item())
    if sorted(k for k, _, _ in extra) != sorted(extra_names):
        print(f"  BAD extra losses: moetrain has {extra_names}, torch {[k for k, _, _ in extra]}")
        failures.append("extra loss names")
    for key, scaled, unscaled in extra:
        if key in ref_extra:
            check(f"extra {key} (scaled)", ref_extra[key][0], scaled.item())
            check(f"extra {key} (unscaled)", ref_extra[key][1], unscaled)
    loss.backward()
    for n in names:
        g = params[n].grad if params[n].grad is not None else torch.zeros_like(params[n])
        check("grad " + n, grads[n], g, shape=str(tuple(params[n].shape)))

    # Decay groups: the same rule as moetrain's default (dim >= 2), checked against its choice.
    for n in names:
        if decays[n] != (params[n].dim() >= 2):
            print(f"  BAD decay group of {n}: moetrain says {decays[n]}, rule (dim >= 2) says {params[n].dim() >= 2}")
            failures.append("decay " + n)
    decay = [params[n] for n in names if params[n].dim() >= 2]
    no_decay = [params[n] for n in names if params[n].dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"])
    for step in range(cfg["adamw_steps"]):
        opt.step()
        opt.zero_grad()
        rec = []
        _, loss, _, _ = loss_of(params, cfg, ids, targets, rec)
        if cfg["moe"]:
            check_routing(step + 1, rec)
        check(f"loss after AdamW step {step + 1}", ref_step_losses[step], loss.item())
        loss.backward()
    # Weights after the steps: printed, not asserted. Adam moves a weight by about
    # lr * g / (|g| + eps), so where |g| is within float32 noise of 0 (absolute grad errors are
    # ~1e-7 of the largest grad) the direction is noise and the weight may differ by up to lr.
    # The losses above are the asserted check (a wrong decay group shows there at ~5e-4).
    worst_w = max((rel_err(finals[n], params[n].detach())[0], n) for n in names)
    print(f"  info: worst weight rel err after {cfg['adamw_steps']} steps {worst_w[0]:.2e} ({worst_w[1]})")

    print(f"torch_reference: worst rel err {worst[0]:.2e} ({worst[1]}), tolerance {tol_all:g}")
    if failures:
        print(f"torch_reference: {len(failures)} mismatches: {', '.join(failures)}")
        return 1
    print("torch_reference: all match")
    return 0


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        print("usage: /usr/bin/python3 tests/torch_reference.py <file.h5> [tolerance]")
        sys.exit(2)
    if len(sys.argv) == 3:
        TOL = float(sys.argv[2])
    try:
        sys.exit(main(sys.argv[1]))
    except (OSError, KeyError) as e:
        print(f"torch_reference.py: cannot read {sys.argv[1]}: {e}")
        sys.exit(2)
