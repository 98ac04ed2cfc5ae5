#!/usr/bin/env python3
"""Tiny random LLaMA checkpoints, one per RoPE scaling method, plus float64 NumPy reference outputs.

    /usr/bin/python3 tests/rope_ref/make_rope_fixtures.py [--out DIR] [method ...]

numpy only. Writes, under tests/fixtures/rope/ (or DIR):
  models/shared/model.safetensors   F32 weights shared by every method (hidden 64, 2 layers, 4 heads,
                                    2 KV heads, head_dim 16, ffn 172, vocab 512; q/k sigma 0.2)
  models/<method>/                  config.json (the method's rope_scaling), tokenizer files, and
                                    model.safetensors -> ../shared/model.safetensors (a symlink, so
                                    the fixture set stays small). CLEX dirs are sharded instead:
                                    model.safetensors.index.json, model-00001-of-00002.safetensors ->
                                    ../shared/model.safetensors, and model-00002-of-00002.safetensors
                                    holding model.clex_layer.{proj_func.ode_up_proj,
                                    proj_func.ode_down_proj, inv_freq} (F32, seeded random ODE weights)
  <method>.json                     greedy ids + top-20 log-probs per step for each prompt

The RoPE math is written from /work/shared/REFERENCES-rope.md (HF transformers semantics, and the
original repositories for dynamic-yarn, CLEX, GeNE and STRING), not from the engine's code. The
forward is HF LLaMA in float64. Each forward (the whole prompt, then one token per decode step)
computes its own frequency table from L = max position in the forward + 1 = the total length after
the forward, so length-dependent methods behave as in their references:
  - dynamic, dynamic-yarn, longrope, gene: keys are cached *rotated*; keys already in the cache keep
    the rotation they were written with;
  - clex (§6): keys are cached *un-rotated* and every forward re-rotates all of them with the
    current t = clamp(ceil(L / max_pos), 1, max_factor); theta(t) comes from the neural ODE,
    integrated in float32 exactly as torchdiffeq 0.2.3 "rk4" does (3/8 rule, fp32 grid, linear
    interpolation at the integer times);
  - clex log_scale (§6.5): q *= ln(L)/ln(max_pos) after rotation (one factor per forward, no clamp);
  - gene log_scale (§7.4): q at position p *= max(1, ln(p+1)/ln(training_seq_len));
  - STRING (§8, top-level "string_config": {"shifted_offset": S, "local_value": W}): the two-pass
    flash formulation: q1 = RoPE(q, p), q2 = RoPE(q, p - S + W), keys rotated at their true
    positions, cos/sin of all three multiplied by af = 0.1 ln 2 + 1 (times the method's own
    attention factor); pass 1 over keys with p - j < S with q1, pass 2 over p - j >= S with q2, each
    its own softmax + log-sum-exp, merged with w = 1/(1 + exp(lse1 - lse2)). The split is the
    reference's DECODE rule, used for the prefill too (distance exactly S is in the shifted pass
    only; the reference's flash prefill counts it in both).
Angles are float32(p) * float32(inv_freq) multiplied in fp32; cos/sin are then taken in float64 and
multiplied by the attention factor.

The Model class also serves tests/rope_ref/make_arch_fixtures.py (Mistral, Qwen2, LLaMA with
biases): shapes come from the config, a projection's bias is added when the weights have one
(`<proj>.bias`), and a layer with a sliding window W (layer_windows(): transformers' config
semantics) masks keys j <= p - W.

Prompts: lengths 20, 58, 128, 500, 512 are drawn in that order from default_rng(PROMPT_SEED) (the
original fixture set); any other length n from default_rng([PROMPT_SEED, n]), so adding a length
never changes an existing prompt. tests/rope_ref/check_rope_ref.py runs the self-consistency checks.
"""
import json
import math
import os
import shutil
import struct
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "rope")
TOKDIR = os.path.join(ROOT, "tests", "fixtures", "models", "llama-gqa-none")

H, NL, NH, NKV, HD, FFN, VOCAB = 64, 2, 4, 2, 16, 172, 512
EPS = 1e-5
THETA = 10000.0
SEED = 880001
PROMPT_SEED = 4321
LEGACY_LENS = [20, 58, 128, 500, 512]
N_NEW = 12
TOPK = 20
L0 = 64  # original context of every model
STRING_AF = 0.1 * math.log(2) + 1.0  # 1.0693147180559945
CLEX_B = 10000.0  # the base hard-coded in CLEX's get_time_embedding (§6.2), whatever rope_theta is

SHORT = [1.0, 1.05, 1.1, 1.2, 1.3, 1.5, 1.8, 2.0]
LONG = [1.0, 1.25, 1.5, 2.5, 4.0, 8.0, 12.0, 16.0]

GENE = {"type": "gene", "factor": 4.0, "num_rotations": 3.0, "training_seq_len": 256,
        "gene_random_scale": True, "log_scale": False}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": L0}

# method -> (config overrides, prompt lengths). 58 + 12 crosses L0 = 64 during decoding.
METHODS = {
    "default": (dict(), [20, 58, 128, 512]),
    "linear": (dict(max_position_embeddings=256,
                    rope_scaling={"type": "linear", "factor": 4.0}), [20, 58, 128, 512]),
    "dynamic": (dict(max_position_embeddings=L0,
                     rope_scaling={"type": "dynamic", "factor": 2.0}), [20, 58, 128, 512]),
    "ntk": (dict(max_position_embeddings=256,
                 rope_scaling={"type": "ntk", "factor": 4.0}), [20, 58, 128, 512]),
    "yarn": (dict(max_position_embeddings=1024,
                  rope_scaling={"rope_type": "yarn", "factor": 16.0,
                                "original_max_position_embeddings": L0}), [20, 58, 128, 512]),
    "yarn-revised": (dict(max_position_embeddings=1024,
                          rope_scaling={"rope_type": "yarn", "factor": 16.0,
                                        "original_max_position_embeddings": L0,
                                        "yarn_variant": "revised"}), [20, 58, 128, 512]),
    "llama3": (dict(max_position_embeddings=512, rope_scaling=dict(LLAMA3)), [20, 58, 128, 512]),
    "longrope": (dict(max_position_embeddings=1024,
                      rope_scaling={"rope_type": "longrope", "factor": 16.0,
                                    "original_max_position_embeddings": L0,
                                    "short_factor": SHORT, "long_factor": LONG}), [20, 58, 128, 512]),
    # gene: r = max(factor, ceil(L/Lmax)); 500 + 12 keeps ceil(L/64) = 8 through the decode steps
    "gene": (dict(max_position_embeddings=L0, rope_scaling=dict(GENE)), [20, 58, 128, 500]),
    # dynamic-yarn (§4.2, jquesnelle's Llama class, finetuned absent = false): plain RoPE (mscale 1)
    # while L <= max_position_embeddings, then yarn(s = L / original) with mscale 0.1 ln s + 1,
    # recomputed every forward (58 + 12 crosses 64 while decoding).
    "dynamic-yarn": (dict(max_position_embeddings=L0,
                          rope_scaling={"type": "dynamic-yarn", "factor": 4.0,
                                        "original_max_position_embeddings": L0}), [20, 58, 128, 500]),
    # finetuned: yarn(max_pos / original = 4) up to max_pos = 256, then yarn(L / 64)
    # (250 + 12 crosses 256 while decoding)
    "dynamic-yarn-ft": (dict(max_position_embeddings=256,
                             rope_scaling={"type": "dynamic-yarn", "factor": 4.0,
                                           "original_max_position_embeddings": L0,
                                           "finetuned": True}), [20, 128, 250, 500]),
    # clex: t = clamp(ceil(L/64), 1, 8): 58+12 crosses t 1->2, 120+12 crosses 2->3,
    # 250+12 crosses 4->5 while decoding; 520 > 64*8 (t clamped to 8)
    "clex": (dict(max_position_embeddings=L0, log_scale=False, use_flashattn=True,
                  rope_scaling={"type": "clex", "max_factor": 8, "param_factor": 1, "act": "tanh",
                                "factor": 1, "time_dt": 0.01}), [20, 58, 120, 250, 520]),
    # clex-log: act absent (SiLU), time_dt absent (0.01), param_factor 2, max_factor 4, log_scale
    # (q *= ln L / ln 64, < 1 below 64): 60+12 crosses 64, 190+12 crosses 192, 300 > 256 (clamped)
    "clex-log": (dict(max_position_embeddings=L0, log_scale=True, use_flashattn=True,
                      rope_scaling={"type": "clex", "max_factor": 4, "param_factor": 2}),
                 [20, 60, 190, 300]),
    # gene-log: q_p *= max(1, ln(p+1)/ln 256): 250+12 crosses p = 255 while decoding
    "gene-log": (dict(max_position_embeddings=L0, rope_scaling=dict(GENE, log_scale=True)),
                 [20, 128, 250, 500]),
    # string: S = 40, W = 6 on plain RoPE: 20 < S (plain attention x af^2), 35+12 crosses S while
    # decoding, 58+12 crosses L0, then well past both
    "string": (dict(max_position_embeddings=L0,
                    string_config={"shifted_offset": 40, "local_value": 6}), [20, 35, 58, 128, 500]),
    # string-llama3: S = 48, W = 8 on the llama3 frequencies (44+12 crosses S while decoding)
    "string-llama3": (dict(max_position_embeddings=512, rope_scaling=dict(LLAMA3),
                           string_config={"shifted_offset": 48, "local_value": 8}),
                      [20, 44, 58, 125, 500]),
}

# CLEX ODE weights: seed and standard deviations of ode_up_proj / ode_down_proj
CLEX_ODE = {"clex": (990004, 0.1, 0.02), "clex-log": (990003, 0.05, 0.02)}


# ----------------------------------------------------------------------------- RoPE (from the spec)

def f32(x):
    return np.asarray(x, dtype=np.float32)


def base_inv_freq(base, d=HD):
    # 1 / base ** (arange(0, d, 2) / d), in fp32
    return (np.float32(1.0) / (np.float32(base) ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d)))).astype(np.float32)


def yarn_ramp(beta_fast, beta_slow, d, base, l0):
    def corr_dim(r):
        return (d * math.log(l0 / (r * 2 * math.pi))) / (2 * math.log(base))
    low = max(math.floor(corr_dim(beta_fast)), 0)
    high = min(math.ceil(corr_dim(beta_slow)), d - 1)
    if low == high:
        high += 0.001
    ramp = (np.arange(d // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(ramp, 0, 1).astype(np.float32)


def yarn_inv_freq(b, s, l0, beta_fast, beta_slow, revised=False, d=HD):
    """§2.5 / §5.3 in fp32: standard (arithmetic blend) or PoSE's revised (harmonic blend)."""
    pos_freqs = (np.float32(b) ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d))).astype(np.float32)
    gamma = (1 - yarn_ramp(beta_fast, beta_slow, d, b, l0)).astype(np.float32)
    if revised:
        inv = (np.float32(1.0) / pos_freqs) / ((1 - gamma) * np.float32(s) + gamma)
    else:
        inv_ext = np.float32(1.0) / pos_freqs
        inv_int = np.float32(1.0) / (np.float32(s) * pos_freqs)
        inv = inv_int * (1 - gamma) + inv_ext * gamma
    return inv.astype(np.float32)


def yarn_mscale(s):
    return 1.0 if s <= 1 else 0.1 * math.log(s) + 1.0


def rope_kind(cfg):
    rs = cfg.get("rope_scaling") or {}
    return rs.get("rope_type", rs.get("type", "default"))


def rope_params(cfg, L, clex_freqs=None):
    """(inv_freq fp32 [d/2], attention factor) for a forward whose max position + 1 is L.
    clex_freqs: [max_t, d/2] fp32, row t-1 = theta(t) (clex only)."""
    rs = cfg.get("rope_scaling") or {}
    kind = rope_kind(cfg)
    b = cfg["rope_theta"]
    d = HD
    if kind == "default":
        return base_inv_freq(b), 1.0
    s = float(rs.get("factor", 1.0))
    if kind == "linear":
        return (base_inv_freq(b) / np.float32(s)).astype(np.float32), 1.0
    if kind == "dynamic":
        lmax = cfg["max_position_embeddings"]
        if L > lmax:
            b = b * ((s * L / lmax) - (s - 1)) ** (d / (d - 2))
        return base_inv_freq(b), 1.0
    if kind == "ntk":
        return base_inv_freq(b * s ** (d / (d - 2))), 1.0
    if kind == "yarn":
        l0 = rs.get("original_max_position_embeddings") or cfg["max_position_embeddings"]
        inv = yarn_inv_freq(b, s, l0, rs.get("beta_fast") or 32, rs.get("beta_slow") or 1,
                            revised=rs.get("yarn_variant") == "revised")
        att = rs.get("attention_factor")
        if att is None:
            att = yarn_mscale(s)
        return inv, float(att)
    if kind == "dynamic-yarn":
        # jquesnelle LlamaDynamicYaRNScaledRotaryEmbedding: betas are the class defaults 32/1 (never
        # read from the config); the cache starts at max_position_embeddings and is rebuilt with
        # yarn(seq_len / original) when seq_len exceeds it (per request: no state between requests)
        lmax = cfg["max_position_embeddings"]
        l0 = rs["original_max_position_embeddings"]
        if L > lmax:
            sc = L / l0
        elif rs.get("finetuned", False):
            sc = lmax / l0
        else:
            return base_inv_freq(b), 1.0
        return yarn_inv_freq(b, sc, l0, 32, 1), yarn_mscale(sc)
    if kind == "llama3":
        l0 = rs["original_max_position_embeddings"]
        lo, hi = rs["low_freq_factor"], rs["high_freq_factor"]
        inv = base_inv_freq(b).astype(np.float64)
        wavelen = 2 * math.pi / inv
        low_wl, high_wl = l0 / lo, l0 / hi
        out = np.where(wavelen > low_wl, inv / s, inv)
        smooth = (l0 / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * out / s + smooth * out
        medium = (wavelen >= high_wl) & (wavelen <= low_wl)
        out = np.where(medium, smoothed, out)
        return out.astype(np.float32), 1.0
    if kind == "longrope":
        l0 = rs.get("original_max_position_embeddings") or cfg.get("original_max_position_embeddings")
        att = rs.get("attention_factor")
        if att is None:
            att = 1.0 if s <= 1 else math.sqrt(1 + math.log(s) / math.log(l0))
        ext = f32(rs["long_factor"] if L > l0 else rs["short_factor"])
        pos = (np.float32(b) ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d))).astype(np.float32)
        return (np.float32(1.0) / (ext * pos)).astype(np.float32), float(att)
    if kind == "gene":
        lmax = cfg["max_position_embeddings"]
        inv0 = base_inv_freq(b)
        rot = inv0 * np.float32(lmax)
        beta = int(np.nonzero(rot < np.float32(rs.get("num_rotations", 3.0) * 2 * math.pi))[0][0])
        w = np.clip(np.arange(d // 2, dtype=np.float32) / np.float32(beta), 0, 1).astype(np.float32)
        r = max(s, math.ceil(L / lmax)) if rs["gene_random_scale"] else s
        angvel = (np.float32(b) ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d))).astype(np.float32)
        return (np.float32(1.0) / (np.float32(r) ** w * angvel)).astype(np.float32), 1.0
    if kind == "clex":
        t = clex_t(cfg, L)
        if t == 1:
            return base_inv_freq(b), 1.0  # plain RoPE, no exp(log())
        return clex_freqs[t - 1], 1.0
    raise ValueError("unknown rope type " + kind)


def clex_t(cfg, L):
    """§6.4: t = clamp(ceil(L / max_pos), 1, max_factor), L = the total length after the forward."""
    lmax = cfg["max_position_embeddings"]
    t = L // lmax if L % lmax == 0 else L // lmax + 1
    return max(1, min(t, int(cfg["rope_scaling"]["max_factor"])))


def q_scale(cfg, pos, L):
    """Per-query multiplier (applied after rotation) or None: CLEX log_scale (§6.5), GeNE log_scale (§7.4)."""
    rs = cfg.get("rope_scaling") or {}
    kind = rope_kind(cfg)
    if kind == "clex" and cfg.get("log_scale"):
        # log(tensor(kv_seq_len * 1.0)) / log(tensor(naive_len)), fp32, one value for the forward
        v = np.float32(np.log(np.float32(L))) / np.float32(np.log(np.float32(cfg["max_position_embeddings"])))
        return np.full(len(pos), float(v))
    if kind in ("gene", "gene-param") and rs.get("log_scale"):
        # arange(1, 1 + kv_seq_len).log() / log(training_seq_len), clip(min=1), model dtype (fp32)
        logn = np.log(np.asarray(pos, dtype=np.float32) + np.float32(1))
        v = logn / np.float32(math.log(rs.get("training_seq_len", 16384)))
        return np.maximum(v, np.float32(1.0)).astype(np.float32).astype(np.float64)
    return None


# ----------------------------------------------------------------------------- CLEX ODE (§6.2, §6.3)

def clex_rhs(t, y, w_up, w_down, act, d, B=CLEX_B, F=np.float32):
    """ODELinear.forward(t, x), all in F (fp32 as in CLEX), torch's op order."""
    t = F(t)
    alpha = F(1) if t < 1 else F(2) * t - F(1)
    index = np.arange(0, d, 2, dtype=F)
    ntk_base = F(B) * alpha ** F(d / (d - 2))
    time = F(1) / (ntk_base ** (index / F(d)))
    delta = F(-2) * index / F(d - 2) * F(1) / (F(B) ** (index / F(d)) * (alpha ** (index / F(d - 2) + F(1))))
    x = (y + np.log(time)).astype(F)
    time_embed = delta / time
    hdn = (x @ w_up.astype(F)).astype(F)
    if act == "tanh":
        hdn = np.tanh(hdn)
    else:  # silu
        hdn = hdn / (F(1) + np.exp(-hdn))
    return ((hdn.astype(F) @ w_down.astype(F)) + time_embed).astype(F)


def rk38_step(f, t0, dt, t1, y0, F=np.float32):
    """torchdiffeq 0.2.3 rk4_alt_step_func (3/8 rule), in F."""
    third, two_thirds = F(1 / 3), F(2 / 3)
    k1 = f(t0, y0)
    k2 = f(t0 + dt * third, y0 + dt * k1 * third)
    k3 = f(t0 + dt * two_thirds, y0 + dt * (k2 - k1 * third))
    k4 = f(t1, y0 + dt * (k1 - k2 + k3))
    return ((k1 + F(3) * (k2 + k3) + k4) * dt * F(0.125)).astype(F)


def odeint_fixed(f, y0, times, step_size, F=np.float32):
    """torchdiffeq 0.2.3 FixedGridODESolver.integrate with options step_size, in F: grid
    arange(ceil((t_end - t_start)/step + 1)) * step + t_start (last point clamped to t_end), one
    3/8-rule step per grid interval, linear interpolation at each requested time."""
    times = np.asarray(times, dtype=F)
    start, end = times[0], times[-1]
    niters = int(math.ceil(float(F((end - start) / F(step_size)) + F(1))))
    grid = (np.arange(0, niters, dtype=F) * F(step_size) + start).astype(F)
    if grid[-1] > end:
        grid[-1] = end
    assert grid[0] == start and grid[-1] == end
    sol = [y0]
    j = 1
    y = y0
    for t0, t1 in zip(grid[:-1], grid[1:]):
        dt = F(t1 - t0)
        y1 = (y + rk38_step(f, t0, dt, t1, y, F)).astype(F)
        while j < len(times) and t1 >= times[j]:
            tj = times[j]
            if tj == t0:
                sol.append(y)
            elif tj == t1:
                sol.append(y1)
            else:
                slope = F((tj - t0) / (t1 - t0))
                sol.append((y + slope * (y1 - y)).astype(F))
            j += 1
        y = y1
    return np.stack(sol).astype(F)


def clex_freqs(cfg, w_up, w_down, d=HD, F=np.float32):
    """freq_cached = exp(odeint(proj_func, log(inv_freq), arange(1, max_t + 1))): [max_t, d/2] (fp32
    as in CLEX; F = float64 only for the self-checks)."""
    rs = cfg["rope_scaling"]
    max_t = int(rs["max_factor"])
    act = rs.get("act", "silu")
    dt = float(rs.get("time_dt", 0.01))
    inv = base_inv_freq(cfg["rope_theta"], d)
    times = np.arange(1.0, max_t + 1.0, dtype=F)
    f = lambda t, y: clex_rhs(t, y, w_up, w_down, act, d, F=F)  # noqa: E731
    sol = odeint_fixed(f, np.log(inv.astype(F)).astype(F), times, dt, F)
    return np.exp(sol).astype(F)


def clex_weights(method, cfg, d=HD):
    seed, s_up, s_down = CLEX_ODE[method]
    pf = int(cfg["rope_scaling"]["param_factor"])
    rng = np.random.default_rng(seed)
    up = (rng.standard_normal((d // 2, pf * d)) * s_up).astype(np.float32)
    down = (rng.standard_normal((pf * d, d // 2)) * s_down).astype(np.float32)
    return {"model.clex_layer.proj_func.ode_up_proj": up,
            "model.clex_layer.proj_func.ode_down_proj": down,
            "model.clex_layer.inv_freq": base_inv_freq(cfg["rope_theta"], d)}


def rotate(x, positions, inv, att):
    """x [T, heads, d] float64, HF rotate-half."""
    ang = (f32(positions)[:, None] * inv[None, :]).astype(np.float32)  # fp32 multiply
    c = np.cos(ang.astype(np.float64)) * att
    s = np.sin(ang.astype(np.float64)) * att
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    c, s = c[:, None, :], s[:, None, :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


# ----------------------------------------------------------------------------- model

def make_weights():
    rng = np.random.default_rng(SEED)

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    t = {"model.embed_tokens.weight": normal((VOCAB, H), 1.0)}
    for l in range(NL):
        p = "model.layers.%d." % l
        t[p + "self_attn.q_proj.weight"] = normal((NH * HD, H), 0.2)
        t[p + "self_attn.k_proj.weight"] = normal((NKV * HD, H), 0.2)
        t[p + "self_attn.v_proj.weight"] = normal((NKV * HD, H), 1.0 / np.sqrt(H))
        t[p + "self_attn.o_proj.weight"] = normal((H, NH * HD), 1.0 / np.sqrt(NH * HD))
        t[p + "mlp.gate_proj.weight"] = normal((FFN, H), 1.0 / np.sqrt(H))
        t[p + "mlp.up_proj.weight"] = normal((FFN, H), 1.0 / np.sqrt(H))
        t[p + "mlp.down_proj.weight"] = normal((H, FFN), 1.0 / np.sqrt(FFN))
        t[p + "input_layernorm.weight"] = (1.0 + normal((H,), 0.1)).astype(np.float32)
        t[p + "post_attention_layernorm.weight"] = (1.0 + normal((H,), 0.1)).astype(np.float32)
    t["model.norm.weight"] = (1.0 + normal((H,), 0.1)).astype(np.float32)
    t["lm_head.weight"] = normal((VOCAB, H), 3.0 / np.sqrt(H))
    return t


def write_safetensors(path, tensors):
    header, off, blobs = {}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
        blobs.append(a.tobytes())
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def config_for(over):
    c = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": H, "intermediate_size": FFN, "num_hidden_layers": NL,
        "num_attention_heads": NH, "num_key_value_heads": NKV, "head_dim": HD,
        "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": EPS,
        "rope_theta": THETA, "rope_scaling": None, "attention_bias": False, "mlp_bias": False,
        "attention_dropout": 0.0, "tie_word_embeddings": False, "vocab_size": VOCAB,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None, "initializer_range": 0.02,
        "pretraining_tp": 1, "use_cache": True, "torch_dtype": "float32",
        "transformers_version": "4.44.2",
    }
    c.update(over)
    return c


def make_prompts(lens):
    rng = np.random.default_rng(PROMPT_SEED)
    prompts = {n: [1] + [int(i) for i in rng.integers(3, VOCAB, size=n - 1)] for n in LEGACY_LENS}
    for n in sorted(set(lens) - set(LEGACY_LENS)):
        r = np.random.default_rng([PROMPT_SEED, n])
        prompts[n] = [1] + [int(i) for i in r.integers(3, VOCAB, size=n - 1)]
    return prompts


def masked_softmax(sc, keep):
    """Row-wise softmax over the kept entries: (probabilities, log-sum-exp); an empty row gives
    zeros and -inf."""
    sc = np.where(keep, sc, -np.inf)
    m = sc.max(axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(sc - m)
    z = e.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        pr = np.where(z > 0, e / np.where(z > 0, z, 1.0), 0.0)
        lse = np.where(z[:, 0] > 0, m[:, 0] + np.log(np.where(z[:, 0] > 0, z[:, 0], 1.0)), -np.inf)
    return pr, lse


def layer_windows(cfg):
    """Sliding window of each layer (0 = full attention), as transformers' config classes decide:
    MistralConfig: every layer, sliding_window (4096 when the key is absent, none when null);
    Qwen2Config: sliding_window (default 4096) only when use_sliding_window, in the layers that
    layer_types calls "sliding_attention", or without layer_types those with index >=
    max_window_layers (default 28); LLaMA: none."""
    n = cfg["num_hidden_layers"]
    mt = cfg.get("model_type", "llama")
    w = cfg["sliding_window"] if "sliding_window" in cfg else 4096  # absent: the classes' default
    if mt == "mistral":
        return [w or 0] * n
    if mt == "qwen2":
        if not cfg.get("use_sliding_window", False) or not w:
            return [0] * n
        types = cfg.get("layer_types") or ["sliding_attention" if i >= cfg.get("max_window_layers", 28)
                                           else "full_attention" for i in range(n)]
        return [w if t == "sliding_attention" else 0 for t in types]
    return [0] * n


class Model:
    def __init__(self, w, cfg, freqs=None):
        self.w = {k: v.astype(np.float64) for k, v in w.items()}
        self.cfg = cfg
        self.eps = cfg["rms_norm_eps"]
        self.freqs = freqs  # clex: [max_t, d/2]
        self.pre_rope_k = rope_kind(cfg) == "clex"
        self.string = cfg.get("string_config")
        self.nl, self.nh = cfg["num_hidden_layers"], cfg["num_attention_heads"]
        self.nkv = cfg.get("num_key_value_heads") or self.nh
        self.hd = cfg.get("head_dim") or cfg["hidden_size"] // self.nh
        assert self.hd == HD, "rope_params computes head_dim %d frequencies" % HD
        self.windows = layer_windows(cfg)

    def bias(self, name):
        return self.w.get(name, 0.0)

    def rms(self, x, g):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * g

    def reset(self):
        self.kc = [np.zeros((0, self.nkv, self.hd)) for _ in range(self.nl)]
        self.vc = [np.zeros((0, self.nkv, self.hd)) for _ in range(self.nl)]
        self.n = 0

    def attend(self, q, K, V, pos, q2=None, window=0):
        """q [T, NH, HD] (rotated), K/V [S, NKV, HD]; q2: STRING's shifted query (then two passes);
        window W > 0: the query at p sees keys p - W < j <= p only."""
        NH, HD = self.nh, self.hd
        T = q.shape[0]
        S = K.shape[0]
        grp = NH // self.nkv
        out = np.empty((T, NH, HD))
        outside = np.zeros((T, S), dtype=bool)
        if window:
            outside = np.arange(S)[None, :] <= pos[:, None] - window
        if q2 is None:
            mask = (np.arange(S)[None, :] > pos[:, None]) | outside
            for hh in range(NH):
                kv = hh // grp
                sc = (q[:, hh, :] @ K[:, kv, :].T) / math.sqrt(HD)
                sc[mask] = -np.inf
                sc -= sc.max(axis=1, keepdims=True)
                pr = np.exp(sc)
                pr /= pr.sum(axis=1, keepdims=True)
                out[:, hh, :] = pr @ V[:, kv, :]
            return out
        dist = pos[:, None] - np.arange(S)[None, :]
        shift = self.string["shifted_offset"]
        local = (dist >= 0) & (dist < shift) & ~outside  # pass 1 (q1): 0 <= p - j < S
        far = (dist >= shift) & ~outside  # pass 2 (q2): p - j >= S
        for hh in range(NH):
            kv = hh // grp
            p1, lse1 = masked_softmax((q[:, hh, :] @ K[:, kv, :].T) / math.sqrt(HD), local)
            p2, lse2 = masked_softmax((q2[:, hh, :] @ K[:, kv, :].T) / math.sqrt(HD), far)
            with np.errstate(over="ignore"):
                wgt = 1.0 / (1.0 + np.exp(lse1 - lse2))  # weight of the shifted part; 0 if empty
            out[:, hh, :] = (p1 @ V[:, kv, :]) * (1 - wgt)[:, None] + (p2 @ V[:, kv, :]) * wgt[:, None]
        return out

    def forward(self, ids):
        """Appends ids at positions n..n+T-1; returns the log-softmax of the last position."""
        w = self.w
        T = len(ids)
        pos = np.arange(self.n, self.n + T)
        L = int(pos[-1]) + 1
        inv, att = rope_params(self.cfg, L, self.freqs)
        qs = q_scale(self.cfg, pos, L)
        NH, NKV, HD, b = self.nh, self.nkv, self.hd, self.bias
        x = w["model.embed_tokens.weight"][np.asarray(ids)]
        for l in range(self.nl):
            p = "model.layers.%d." % l
            h = self.rms(x, w[p + "input_layernorm.weight"])
            q = (h @ w[p + "self_attn.q_proj.weight"].T + b(p + "self_attn.q_proj.bias")).reshape(T, NH, HD)
            k = (h @ w[p + "self_attn.k_proj.weight"].T + b(p + "self_attn.k_proj.bias")).reshape(T, NKV, HD)
            v = (h @ w[p + "self_attn.v_proj.weight"].T + b(p + "self_attn.v_proj.bias")).reshape(T, NKV, HD)
            af = att * STRING_AF if self.string else att  # STRING's factor on cos and sin of q and k
            q2 = None
            if self.string:
                q2 = rotate(q, pos - self.string["shifted_offset"] + self.string["local_value"], inv, af)
            q = rotate(q, pos, inv, af)
            if not self.pre_rope_k:  # CLEX keeps k un-rotated in the cache
                k = rotate(k, pos, inv, af)
            if qs is not None:
                q = q * qs[:, None, None]
            self.kc[l] = np.concatenate([self.kc[l], k])
            self.vc[l] = np.concatenate([self.vc[l], v])
            K, V = self.kc[l], self.vc[l]
            if self.pre_rope_k:  # CLEX: every cached key re-rotated with this forward's theta(t)
                K = rotate(K, np.arange(K.shape[0]), inv, att)
            out = self.attend(q, K, V, pos, q2, self.windows[l])
            x = x + out.reshape(T, NH * HD) @ w[p + "self_attn.o_proj.weight"].T + b(p + "self_attn.o_proj.bias")
            h = self.rms(x, w[p + "post_attention_layernorm.weight"])
            g = h @ w[p + "mlp.gate_proj.weight"].T + b(p + "mlp.gate_proj.bias")
            u = h @ w[p + "mlp.up_proj.weight"].T + b(p + "mlp.up_proj.bias")
            x = x + ((g / (1 + np.exp(-g))) * u) @ w[p + "mlp.down_proj.weight"].T + b(p + "mlp.down_proj.bias")
        self.n += T
        last = self.rms(x[-1], w["model.norm.weight"])
        head = w["lm_head.weight"] if "lm_head.weight" in w else w["model.embed_tokens.weight"]  # tied
        logits = head @ last
        m = logits.max()
        return logits - m - math.log(np.exp(logits - m).sum())

    def greedy(self, prompt, n):
        self.reset()
        lp = self.forward(prompt)
        ids, steps = [], []
        for k in range(n):
            order = np.argsort(-lp, kind="stable")[:TOPK]
            tok = int(order[0])
            steps.append({"token_id": tok, "token_logprob": round(float(lp[tok]), 7),
                          "top_ids": [int(i) for i in order],
                          "top_logprobs": [round(float(lp[i]), 7) for i in order]})
            ids.append(tok)
            if tok == 2 or k == n - 1:
                break
            lp = self.forward([tok])
        return ids, steps


def build_model(method, w):
    """(config, Model, extra tensors for the checkpoint) for a METHODS entry."""
    over, _ = METHODS[method]
    cfg = config_for(over)
    extra, freqs = {}, None
    if rope_kind(cfg) == "clex":
        extra = clex_weights(method, cfg)
        freqs = clex_freqs(cfg, extra["model.clex_layer.proj_func.ode_up_proj"],
                           extra["model.clex_layer.proj_func.ode_down_proj"])
    return cfg, Model(w, cfg, freqs), extra


def link(target, path):
    if os.path.lexists(path):
        os.remove(path)
    os.symlink(target, path)


def write_model_dir(out, method, cfg, w, extra):
    d = os.path.join(out, "models", method)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    for fn in ("generation_config.json", "tokenizer.model", "tokenizer_config.json",
               "special_tokens_map.json"):
        shutil.copyfile(os.path.join(TOKDIR, fn), os.path.join(d, fn))
    shared = os.path.join("..", "shared", "model.safetensors")
    if not extra:
        link(shared, os.path.join(d, "model.safetensors"))
        return
    # sharded: shard 1 = the shared weights (symlink), shard 2 = the extra tensors
    if os.path.lexists(os.path.join(d, "model.safetensors")):
        os.remove(os.path.join(d, "model.safetensors"))
    s1, s2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    link(shared, os.path.join(d, s1))
    write_safetensors(os.path.join(d, s2), extra)
    wm = {k: s1 for k in w}
    wm.update({k: s2 for k in extra})
    size = sum(a.nbytes for a in w.values()) + sum(a.nbytes for a in extra.values())
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": size}, "weight_map": dict(sorted(wm.items()))}, f, indent=2)
        f.write("\n")


def main(argv):
    out = OUT
    if argv[:1] == ["--out"]:
        out, argv = argv[1], argv[2:]
    methods = argv or list(METHODS)
    for m in methods:
        if m not in METHODS:
            sys.exit("unknown method %s (known: %s)" % (m, " ".join(METHODS)))
    os.makedirs(os.path.join(out, "models", "shared"), exist_ok=True)
    w = make_weights()
    write_safetensors(os.path.join(out, "models", "shared", "model.safetensors"), w)
    prompts = make_prompts({n for _, lens in METHODS.values() for n in lens})
    for m in methods:
        _, lens = METHODS[m]
        cfg, model, extra = build_model(m, w)
        write_model_dir(out, m, cfg, w, extra)
        cases = []
        for n in lens:
            ids, steps = model.greedy(prompts[n], N_NEW)
            cases.append({"name": "rand_%d" % n, "prompt_ids": prompts[n], "greedy_ids": ids,
                          "steps": steps})
            print("%-15s rand_%-4d greedy %s" % (m, n, ids), flush=True)
        fx = {"format_version": 1, "method": m, "model_dir": "models/" + m,
              "reference": "float64 numpy HF-LLaMA forward, tests/rope_ref/make_rope_fixtures.py",
              "config": cfg, "new_tokens": N_NEW, "prompt_seed": PROMPT_SEED, "cases": cases}
        if model.freqs is not None:  # CLEX: theta(t) for t = 1..max_factor (fp32), for direct checks
            fx["clex_theta"] = [[float(v) for v in row] for row in model.freqs]
        with open(os.path.join(out, m + ".json"), "w") as f:
            json.dump(fx, f, separators=(",", ":"))
            f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
