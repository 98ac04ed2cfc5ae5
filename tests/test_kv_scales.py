#!/usr/bin/env python3
"""fp8 KV cache scales read from a checkpoint (vLLM / llm-compressor / ModelOpt names), through
`build/ropeserve generate --json` on the CPU. The trained demo model (models/demo-pose) is copied
with extra tensors appended to its model.safetensors:

  - k_scale / v_scale of 1.0 in every layer give exactly the output of no scales (the default);
  - per-KV-head scales of 0.375 change the logprobs; a scalar kv_scale of 0.375 (the older single
    tensor) gives exactly what k_scale + v_scale of 0.375 give, under either name
    (self_attn.k_scale, self_attn.k_proj.k_scale), in F32 or BF16;
  - without --kv-cache-dtype fp8 the scales change nothing;
  - malformed scales are refused with the file and tensor named: a wrong shape, a negative, zero
    or NaN value, kv_scale beside k_scale, two names for one scale.

Prints "test_kv_scales: N passed, N failed" last.
"""
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("ROPESERVE_BIN", os.path.join(ROOT, "build", "ropeserve"))
SRC = os.path.join(ROOT, "models", "demo-pose")
N_LAYERS, N_KV = 4, 2

passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL:", what)


def f32(vals):
    return "F32", b"".join(struct.pack("<f", v) for v in vals)


def bf16(vals):
    return "BF16", b"".join(struct.pack("<f", v)[2:] for v in vals)  # exact for these values


def make_model(tmp, name, extra):
    """models/demo-pose with `extra` {tensor: (dtype, bytes, shape)} appended to its safetensors."""
    d = os.path.join(tmp, name)
    os.makedirs(d)
    for f in os.listdir(SRC):
        if f != "model.safetensors":
            shutil.copy(os.path.join(SRC, f), d)
    with open(os.path.join(SRC, "model.safetensors"), "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    for k, (dt, raw, shape) in extra.items():
        header[k] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)
    return d


def run(model, kv="fp8"):
    cmd = [BIN, "generate", "--model", model, "--prompt", "Four score and seven years ago our fathers brought forth",
           "--max-tokens", "8", "--top-logprobs", "1", "--json", "--threads", "2", "--log-level", "warn",
           "--kv-cache-dtype", kv]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return None, p.stderr.strip()
    d = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][0])
    return (d["ids"], [t[0]["logprob"] for t in d["top_logprobs"]]), ""


def scales(kind, value, dtype=f32, shape=(), per_head=False):
    """kind: 'kv' (self_attn.kv_scale), 'kv_sep' (self_attn.k_scale + v_scale), 'proj'
    (self_attn.k_proj.k_scale + v_proj.v_scale); one tensor per layer"""
    out = {}
    shape = [N_KV] if per_head else list(shape)
    vals = [value] * math.prod(shape)
    for l in range(N_LAYERS):
        p = f"model.layers.{l}.self_attn."
        names = {"kv": [p + "kv_scale"], "kv_sep": [p + "k_scale", p + "v_scale"],
                 "proj": [p + "k_proj.k_scale", p + "v_proj.v_scale"]}[kind]
        for nm in names:
            dt, raw = dtype(vals)
            out[nm] = (dt, raw, shape)
    return out


def main():
    tmp = tempfile.mkdtemp()
    try:
        base, err = run(SRC)
        check(base is not None, f"fp8 run without scales: {err}")
        ones, err = run(make_model(tmp, "ones", scales("kv_sep", 1.0)))
        check(ones == base, f"k_scale = v_scale = 1.0 give the unscaled output ({err})")

        sep, err = run(make_model(tmp, "sep", scales("kv_sep", 0.375, per_head=True)))
        check(sep is not None and sep[1] != base[1], f"per-head scales of 0.375 change the logprobs ({err})")
        if sep and base:
            d = max(abs(a - b) for a, b in zip(sep[1], base[1]))
            print(f"scales 0.375 vs 1.0: tokens {'equal' if sep[0] == base[0] else 'differ'}, max |dlogprob| {d:.4f}")
            check(d < 0.5, f"scales 0.375 stay close to 1.0 ({d})")
        kv, err = run(make_model(tmp, "kv", scales("kv", 0.375, dtype=bf16)))
        check(kv == sep, f"kv_scale (BF16, scalar []) == k_scale + v_scale per head ({err})")
        proj, err = run(make_model(tmp, "proj", scales("proj", 0.375, shape=[1])))
        check(proj == sep, f"k_proj.k_scale / v_proj.v_scale ([1]) == self_attn.k_scale ({err})")

        bf, err = run(SRC, kv="bf16")
        bf_sc, err2 = run(make_model(tmp, "bfsc", scales("kv_sep", 0.375)), kv="bf16")
        check(bf is not None and bf == bf_sc, f"bf16 KV ignores the scales ({err} {err2})")
        check(bf is not None and bf[1] != base[1], "fp8 and bf16 KV differ (the dtype is in effect)")

        bad_cases = [
            ("shape", scales("kv_sep", 1.0, shape=[3]), "model.layers.0.self_attn.k_scale", "one per KV head"),
            ("negative", scales("kv_sep", -1.0), "model.layers.0.self_attn.k_scale", "finite and > 0"),
            ("zero", scales("kv", 0.0), "model.layers.0.self_attn.kv_scale", "finite and > 0"),
            ("nan", scales("kv_sep", math.nan, per_head=True), "model.layers.0.self_attn.k_scale", "finite and > 0"),
            ("both", {**scales("kv", 1.0), **scales("kv_sep", 1.0)}, "model.layers.0.self_attn.kv_scale",
             "both kv_scale and"),
            ("twice", {**scales("kv_sep", 1.0), **scales("proj", 1.0)}, "model.layers.0.self_attn.k_proj.k_scale",
             "both give layer 0's k scale"),
        ]
        for name, extra, tensor, why in bad_cases:
            d = make_model(tmp, "bad-" + name, extra)
            res, err = run(d)
            ok = res is None and os.path.join(d, "model.safetensors") in err and tensor in err and why in err
            print(f"malformed ({name}): {err}")
            check(ok, f"malformed scales ({name}) refused naming the file and '{tensor}': {err!r}")
    finally:
        shutil.rmtree(tmp)
    print(f"test_kv_scales: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
