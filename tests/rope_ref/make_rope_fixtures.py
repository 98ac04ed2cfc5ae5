#!/usr/bin/env python3
"""Tiny random LLaMA checkpoints, one per RoPE scaling method, plus float64 NumPy reference outputs.

    /usr/bin/python3 tests/rope_ref/make_rope_fixtures.py [method ...]

numpy only. Writes, under tests/fixtures/rope/:
  models/shared/model.safetensors   F32 weights shared by every method (hidden 64, 2 layers, 4 heads,
                                    2 KV heads, head_dim 16, ffn 172, vocab 512; q/k sigma 0.2)
  models/<method>/                  config.json (the method's rope_scaling), tokenizer files, and
                                    model.safetensors -> ../shared/model.safetensors (a symlink, so
                                    the fixture set stays small)
  <method>.json                     greedy ids + top-20 log-probs per step for each prompt

The RoPE math is written from /work/shared/REFERENCES-rope.md (HF transformers semantics), not from
the engine's code. The forward is HF LLaMA in float64 with a per-layer cache of *rotated* keys; each
forward (the whole prompt, then one token per decode step) computes its own frequency table from
L = max position in the forward + 1, so length-dependent methods (dynamic, longrope, gene) behave as
in HF: keys already in the cache keep the rotation they were written with. Angles are
float32(p) * float32(inv_freq) multiplied in fp32; cos/sin are then taken in float64 and multiplied
by the attention factor.
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
N_NEW = 12
TOPK = 20
L0 = 64  # original context of every model

SHORT = [1.0, 1.05, 1.1, 1.2, 1.3, 1.5, 1.8, 2.0]
LONG = [1.0, 1.25, 1.5, 2.5, 4.0, 8.0, 12.0, 16.0]

# method -> (config overrides, prompt lengths). 58 + 12 crosses L0 = 64 during decoding.
METHODS = {
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
    "llama3": (dict(max_position_embeddings=512,
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": L0}), [20, 58, 128, 512]),
    "longrope": (dict(max_position_embeddings=1024,
                      rope_scaling={"rope_type": "longrope", "factor": 16.0,
                                    "original_max_position_embeddings": L0,
                                    "short_factor": SHORT, "long_factor": LONG}), [20, 58, 128, 512]),
    # gene: r = max(factor, ceil(L/Lmax)); 500 + 12 keeps ceil(L/64) = 8 through the decode steps
    "gene": (dict(max_position_embeddings=L0,
                  rope_scaling={"type": "gene", "factor": 4.0, "num_rotations": 3.0,
                                "training_seq_len": 256, "gene_random_scale": True,
                                "log_scale": False}), [20, 58, 128, 500]),
}


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


def rope_params(cfg, L):
    """(inv_freq fp32 [d/2], attention factor) for a forward whose max position + 1 is L."""
    rs = cfg.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
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
        pos_freqs = (np.float32(b) ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d))).astype(np.float32)
        gamma = (1 - yarn_ramp(rs.get("beta_fast") or 32, rs.get("beta_slow") or 1, d, b, l0)).astype(np.float32)
        if rs.get("yarn_variant") == "revised":
            inv = (np.float32(1.0) / pos_freqs) / ((1 - gamma) * np.float32(s) + gamma)
        else:
            inv_ext = np.float32(1.0) / pos_freqs
            inv_int = np.float32(1.0) / (np.float32(s) * pos_freqs)
            inv = inv_int * (1 - gamma) + inv_ext * gamma
        att = rs.get("attention_factor")
        if att is None:
            att = 1.0 if s <= 1 else 0.1 * math.log(s) + 1.0
        return inv.astype(np.float32), float(att)
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
    raise ValueError("unknown rope type " + kind)


def rotate(x, positions, inv, att):
    """x [T, heads, d] float64, HF rotate-half."""
    ang = (f32(positions)[:, None] * inv[None, :]).astype(np.float32)  # fp32 multiply
    c = np.cos(ang.astype(np.float64)) * att
    s = np.sin(ang.astype(np.float64)) * att
    h = HD // 2
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


class Model:
    def __init__(self, w, cfg):
        self.w = {k: v.astype(np.float64) for k, v in w.items()}
        self.cfg = cfg
        self.eps = cfg["rms_norm_eps"]

    def rms(self, x, g):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * g

    def reset(self):
        self.kc = [np.zeros((0, NKV, HD)) for _ in range(NL)]
        self.vc = [np.zeros((0, NKV, HD)) for _ in range(NL)]
        self.n = 0

    def forward(self, ids):
        """Appends ids at positions n..n+T-1; returns the log-softmax of the last position."""
        w = self.w
        T = len(ids)
        pos = np.arange(self.n, self.n + T)
        inv, att = rope_params(self.cfg, int(pos[-1]) + 1)
        x = w["model.embed_tokens.weight"][np.asarray(ids)]
        grp = NH // NKV
        for l in range(NL):
            p = "model.layers.%d." % l
            h = self.rms(x, w[p + "input_layernorm.weight"])
            q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(T, NH, HD)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(T, NKV, HD)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(T, NKV, HD)
            q = rotate(q, pos, inv, att)
            k = rotate(k, pos, inv, att)
            self.kc[l] = np.concatenate([self.kc[l], k])
            self.vc[l] = np.concatenate([self.vc[l], v])
            K, V = self.kc[l], self.vc[l]
            S = K.shape[0]
            mask = np.arange(S)[None, :] > pos[:, None]
            out = np.empty((T, NH, HD))
            for hh in range(NH):
                kv = hh // grp
                sc = (q[:, hh, :] @ K[:, kv, :].T) / math.sqrt(HD)
                sc[mask] = -np.inf
                sc -= sc.max(axis=1, keepdims=True)
                pr = np.exp(sc)
                pr /= pr.sum(axis=1, keepdims=True)
                out[:, hh, :] = pr @ V[:, kv, :]
            x = x + out.reshape(T, NH * HD) @ w[p + "self_attn.o_proj.weight"].T
            h = self.rms(x, w[p + "post_attention_layernorm.weight"])
            g = h @ w[p + "mlp.gate_proj.weight"].T
            u = h @ w[p + "mlp.up_proj.weight"].T
            x = x + ((g / (1 + np.exp(-g))) * u) @ w[p + "mlp.down_proj.weight"].T
        self.n += T
        last = self.rms(x[-1], w["model.norm.weight"])
        logits = w["lm_head.weight"] @ last
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


def main():
    methods = sys.argv[1:] or list(METHODS)
    os.makedirs(os.path.join(OUT, "models", "shared"), exist_ok=True)
    w = make_weights()
    write_safetensors(os.path.join(OUT, "models", "shared", "model.safetensors"), w)
    rng = np.random.default_rng(PROMPT_SEED)
    all_lens = sorted({n for _, lens in METHODS.values() for n in lens})
    prompts = {n: [1] + [int(i) for i in rng.integers(3, VOCAB, size=n - 1)] for n in all_lens}
    for m in methods:
        over, lens = METHODS[m]
        cfg = config_for(over)
        d = os.path.join(OUT, "models", m)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
        for fn in ("generation_config.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json"):
            shutil.copyfile(os.path.join(TOKDIR, fn), os.path.join(d, fn))
        link = os.path.join(d, "model.safetensors")
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(os.path.join("..", "shared", "model.safetensors"), link)
        model = Model(w, cfg)
        cases = []
        for n in lens:
            ids, steps = model.greedy(prompts[n], N_NEW)
            cases.append({"name": "rand_%d" % n, "prompt_ids": prompts[n], "greedy_ids": ids,
                          "steps": steps})
            print("%-13s rand_%-4d greedy %s" % (m, n, ids))
        fx = {"format_version": 1, "method": m, "model_dir": "models/" + m,
              "reference": "float64 numpy HF-LLaMA forward, tests/rope_ref/make_rope_fixtures.py",
              "config": cfg, "new_tokens": N_NEW, "prompt_seed": PROMPT_SEED, "cases": cases}
        with open(os.path.join(OUT, m + ".json"), "w") as f:
            json.dump(fx, f, separators=(",", ":"))
            f.write("\n")


if __name__ == "__main__":
    main()
