#!/usr/bin/env python3
"""emulate_rounding.py - how far bf16/f16 storage alone moves the test models' logprobs.

An fp64 NumPy forward of the Hugging Face LLaMA graph (rotate-half RoPE; default, linear and YaRN
scaling computed as transformers does) over tests/fixtures/models/*, run three ways: exact, and
with the CUDA backend's storage rounding (weights, every matmul input, rotated q/k and v rounded to
bf16 or f16; norms, softmax and sums exact). For each fixture prompt of up to 1000 tokens it prints
the largest |logprob difference| over the exact run's top-20 ids at the prompt end, and the exact
run's distance to the llama.cpp fixture (a check of the emulation itself).

These figures set the tolerances of tests/cuda_parity.py (2x the largest). Measured when written:
f16 0.004 .. 0.031, bf16 0.04 .. 0.24; exact vs llama.cpp <= 1.5e-4.

--act16 emulates the CUDA backend's 16-bit activations as well (issue 11): every GEMM output but
the logits, the rotated q/k and the attention output rounded to the dtype, the residual stream
fp32 (the residual adds are exact), norms/softmax/silu in full precision before their rounding.
Measured: f16 up to 0.040, bf16 up to 0.236 (the same 24 prompts).

Usage: /usr/bin/python3 tools/emulate_rounding.py [--act16] [MODEL ...]   (default: all; needs numpy)"""
import glob
import json
import math
import os
import struct
import sys

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures")


def load(d):
    w = {}
    for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        b = open(f, "rb").read()
        n = struct.unpack("<Q", b[:8])[0]
        header, base = json.loads(b[8:8 + n]), 8 + n
        for k, v in header.items():
            if k == "__metadata__":
                continue
            s, e = v["data_offsets"]
            raw = b[base + s:base + e]
            if v["dtype"] == "F32":
                a = np.frombuffer(raw, np.float32)
            elif v["dtype"] == "F16":
                a = np.frombuffer(raw, np.float16).astype(np.float32)
            else:
                a = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            w[k] = a.reshape(v["shape"]).copy()
    return w


def round_bf16(a):
    u = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


def round_f16(a):
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def inv_freq_of(cfg, hd):
    theta = cfg.get("rope_theta", 10000.0)
    inv = (1.0 / (np.float32(theta) ** (np.arange(0, hd, 2, dtype=np.int64).astype(np.float32) / hd))).astype(np.float32)
    af = np.float32(1.0)
    sc = cfg.get("rope_scaling") or {}
    kind = sc.get("rope_type") or sc.get("type")
    if kind == "linear":
        inv = (inv / np.float32(sc["factor"])).astype(np.float32)
    elif kind == "yarn":
        f = sc["factor"]
        l0 = sc.get("original_max_position_embeddings") or cfg["max_position_embeddings"]
        af = np.float32(0.1 * math.log(f) + 1.0)
        cdim = lambda r: (hd * math.log(l0 / (r * 2 * math.pi))) / (2 * math.log(theta))
        lo, hi = max(math.floor(cdim(32)), 0), min(math.ceil(cdim(1)), hd - 1)
        if lo == hi:
            hi += 0.001
        ramp = np.clip((np.arange(hd // 2, dtype=np.float32) - lo) / (hi - lo), 0, 1).astype(np.float32)
        pf = (np.float32(theta) ** (np.arange(0, hd, 2, dtype=np.int64).astype(np.float32) / hd)).astype(np.float32)
        extra, inter, e = (1 / pf).astype(np.float32), (1 / (np.float32(f) * pf)).astype(np.float32), (1 - ramp)
        inv = (inter * (1 - e) + extra * e).astype(np.float32)
    return inv, af


def logprobs(w, cfg, ids, rnd, act16=False):
    """log-softmax at the last prompt position; rnd: None, round_bf16 or round_f16; act16: GEMM
    outputs and the attention output rounded too (16-bit activations between ops)"""
    r = rnd or (lambda x: x)
    ra = r if act16 else (lambda x: x)
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    hd = cfg.get("head_dim", cfg["hidden_size"] // nh)
    eps = cfg["rms_norm_eps"]
    inv, af = inv_freq_of(cfg, hd)
    t = len(ids)
    ang = (np.arange(t, dtype=np.float32)[:, None] * inv[None, :]).astype(np.float32)
    cos, sin = np.cos(ang) * af, np.sin(ang) * af

    def rope(x):
        h = hd // 2
        x1, x2 = x[..., :h], x[..., h:]
        return np.concatenate([x1 * cos[:, None] - x2 * sin[:, None], x2 * cos[:, None] + x1 * sin[:, None]], -1)

    def mm(x, m, out16=True):
        y = (r(x).astype(np.float64) @ m.T.astype(np.float64)).astype(np.float32)
        return ra(y) if out16 else y

    def norm(x, g):
        return g * (x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps)).astype(np.float32)

    wr = {k: r(v) for k, v in w.items()}
    x = wr["model.embed_tokens.weight"][ids]
    causal = np.triu(np.full((t, t), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        h = norm(x, wr[p + "input_layernorm.weight"])
        q = r(rope(mm(h, wr[p + "self_attn.q_proj.weight"]).reshape(t, nh, hd)))
        k = r(rope(mm(h, wr[p + "self_attn.k_proj.weight"]).reshape(t, nkv, hd)))
        v = r(mm(h, wr[p + "self_attn.v_proj.weight"]).reshape(t, nkv, hd))
        o = np.zeros((t, nh, hd), np.float32)
        for i in range(nh):
            kv = i // (nh // nkv)
            s = q[:, i].astype(np.float64) @ k[:, kv].T.astype(np.float64) / math.sqrt(hd) + causal
            pr = np.exp(s - s.max(-1, keepdims=True))
            o[:, i] = (pr / pr.sum(-1, keepdims=True)) @ v[:, kv]
        o = ra(o)
        x = x + mm(o.reshape(t, -1), wr[p + "self_attn.o_proj.weight"])
        h = norm(x, wr[p + "post_attention_layernorm.weight"])
        g, u = mm(h, wr[p + "mlp.gate_proj.weight"]), mm(h, wr[p + "mlp.up_proj.weight"])
        x = x + mm(g / (1 + np.exp(-g)) * u, wr[p + "mlp.down_proj.weight"])
    x = norm(x[-1:], wr["model.norm.weight"])
    lg = mm(x, wr.get("lm_head.weight", wr["model.embed_tokens.weight"]), False)[0].astype(np.float64)
    return lg - lg.max() - np.log(np.exp(lg - lg.max()).sum())


def main():
    act16 = "--act16" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--act16"]
    models = args or sorted(os.path.basename(d) for d in glob.glob(os.path.join(ROOT, "models", "*")))
    for m in models:
        cfg = json.load(open(os.path.join(ROOT, "models", m, "config.json")))
        w = load(os.path.join(ROOT, "models", m))
        fx = json.load(open(os.path.join(ROOT, "llamacpp", m + ".json")))
        for c in fx["cases"]:
            ids = c["prompt_ids"]
            if len(ids) > 1000:
                continue
            exact = logprobs(w, cfg, ids, None)
            top = np.argsort(-exact)[:20]
            dbf = np.abs(exact[top] - logprobs(w, cfg, ids, round_bf16, act16)[top]).max()
            df16 = np.abs(exact[top] - logprobs(w, cfg, ids, round_f16, act16)[top]).max()
            dref = max(abs(exact[i] - lp) for i, lp in zip(c["top_ids"], c["top_logprobs"]))
            print("%s %s: max |dlogprob| top-20: bf16 %.4f, f16 %.4f; exact vs llama.cpp %.1e"
                  % (m, c["name"], dbf, df16, dref))


if __name__ == "__main__":
    main()
