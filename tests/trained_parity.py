#!/usr/bin/env python3
"""trained_parity.py - GPU fidelity at depth on the trained demo model (models/demo-pose): the
CUDA backend against the CPU fp32 backend, and against Hugging Face transformers where it is
installed, at every length from 512 up to the model's max_model_len. Run by
tools/device-check.sh on a GPU machine; not part of `make test` (it needs a GPU).

For each length L in 512, 1k, 2k, ... max_model_len - 32 it builds one passkey prompt of L tokens
(key 71432 at depth 1/3) and
  - runs `ropeserve generate --prompt-ids ... --max-tokens 32 --top-logprobs 20 --json` with
    --device cuda (for each --dtypes; plus --kv-cache-dtype fp8 when the binary has that flag,
    compared with the CPU backend storing the same fp8 cache, so that the two fp8 paths must
    agree within the bf16 tolerance) and with --device cpu; tokens must agree up to a near tie
    (the CPU's logprob of its own token
    exceeds its logprob of the CUDA token by <= 2 x tolerance), >= 99% of compared tokens over
    all lengths, and every top-20 logprob present in both lists within the dtype's tolerance;
  - with transformers: LlamaForCausalLM.from_pretrained(DIR) in float32 with the rotary
    embedding's inv_freq replaced by PoSE's revised YaRN (transformers computes standard YaRN;
    the config's yarn_variant is ropeserve's key) and attention_scaling = 0.1 ln s + 1, then
    the CPU backend's tokens are teacher-forced through it and each step's top-20 logprobs must
    agree within 2e-3 (fp32 vs fp32);
  - `ropeserve eval passkey` on cuda and cpu at the same lengths (10 trials): accuracy must be
    equal within one trial.
Tolerances (logprob): f16 6e-2, bf16 5e-1, fp8 KV 5e-1 against the CPU's fp8 cache (as tests/cuda_parity.py; the trained
model is far less chaotic than the random fixtures, so real mismatches show as failures).

Usage: tests/trained_parity.py [--model models/demo-pose] [--dtypes bf16,f16] [--max-len N]
Prints "trained_parity: N passed, N failed" last; without a GPU prints SKIP, 0 passed, 0 failed.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("ROPESERVE_BIN", os.path.join(ROOT, "build", "ropeserve"))
TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
        "memorize them. I will quiz you about the important information there.")
GARBAGE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"
TOL = {"bf16": 0.5, "f16": 0.06, "fp8": 0.5}

passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL:", what, flush=True)


def gen(model, ids, device, extra=()):
    out = subprocess.run([BIN, "generate", "--model", model, "--prompt-ids", ",".join(map(str, ids)),
                          "--max-tokens", "32", "--top-logprobs", "20", "--json", "--ignore-eos",
                          "--device", device, "--log-level", "warn", *extra],
                         capture_output=True, text=True, timeout=1800)
    if out.returncode:
        raise RuntimeError(f"generate --device {device} {' '.join(extra)}: {out.stderr.strip()}")
    return json.loads(out.stdout)


def prompt_ids(model, L):
    """A passkey prompt of about L tokens (the CPU tokenizer via generate --max-tokens 0)."""
    n = max(0, (L - 70) // 24)
    while True:
        text = "\n".join([TASK, GARBAGE * (n // 3), "The pass key is 71432. Remember it. 71432 is the pass key.",
                          GARBAGE * (n - n // 3), QUESTION])
        out = subprocess.run([BIN, "generate", "--model", model, "--prompt", text, "--max-tokens", "0",
                              "--json", "--device", "cpu", "--log-level", "warn"],
                             capture_output=True, text=True, timeout=600)
        ids = json.loads(out.stdout)["prompt_ids"]
        if len(ids) <= L or n == 0:
            return ids
        n -= 1


def compare(ref, got, tol, what):
    agree = total = 0
    worst = 0.0
    for i, (a, b) in enumerate(zip(ref["ids"], got["ids"])):
        ra = {e["id"]: e["logprob"] for e in ref["top_logprobs"][i]}
        rb = {e["id"]: e["logprob"] for e in got["top_logprobs"][i]}
        for k in set(ra) & set(rb):
            worst = max(worst, abs(ra[k] - rb[k]))
        total += 1
        if a == b:
            agree += 1
            continue
        near_tie = b in ra and ra[a] - ra[b] <= 2 * tol
        check(near_tie, f"{what}: step {i}: cpu {a} vs {b}, not a near tie")
        break
    check(worst <= tol, f"{what}: max |d logprob| {worst:.3g} > {tol}")
    print(f"{what}: {agree}/{total} tokens agree, max |d logprob| {worst:.3g}", flush=True)
    return agree, total


def hf_check(model, ids, ref, what):
    try:
        import torch
        from transformers import LlamaForCausalLM
    except ImportError:
        return None
    cfg = json.load(open(os.path.join(model, "config.json")))
    m = LlamaForCausalLM.from_pretrained(model, torch_dtype=torch.float32)
    m.eval()
    rs = cfg.get("rope_scaling")
    if rs:
        d, base, s, L0 = cfg["head_dim"], cfg["rope_theta"], rs["factor"], rs["original_max_position_embeddings"]
        pos_freqs = base ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d)

        def corr(r):
            return (d * math.log(L0 / (r * 2 * math.pi))) / (2 * math.log(base))
        low, high = max(math.floor(corr(32)), 0), min(math.ceil(corr(1)), d - 1)
        ramp = ((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        e = 1 - ramp
        inv = (1.0 / pos_freqs) / ((1 - e) * s + e)
        rot = m.model.rotary_emb
        rot.inv_freq.copy_(inv)
        if hasattr(rot, "original_inv_freq"):
            rot.original_inv_freq = inv.clone()
        rot.attention_scaling = 0.1 * math.log(s) + 1.0
    full = ids + ref["ids"]
    with torch.no_grad():
        lp = m(torch.tensor([full])).logits[0].float().log_softmax(-1)
    worst = 0.0
    for i, step in enumerate(ref["top_logprobs"]):
        row = lp[len(ids) - 1 + i]
        for e in step:
            worst = max(worst, abs(float(row[e["id"]]) - e["logprob"]))
    check(worst <= 2e-3, f"{what}: transformers vs cpu max |d logprob| {worst:.3g}")
    print(f"{what}: transformers (revised YaRN inv_freq) vs cpu: max |d logprob| {worst:.3g}", flush=True)
    return worst


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=os.path.join(ROOT, "models", "demo-pose"))
    p.add_argument("--dtypes", default="bf16,f16")
    p.add_argument("--max-len", type=int, default=0)
    a = p.parse_args()
    if not shutil.which("nvidia-smi") or subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode:
        print("SKIP: no GPU")
        print("trained_parity: 0 passed, 0 failed")
        return 0
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    top = a.max_len or cfg["max_position_embeddings"]
    lengths, L = [], 512
    while L < top:
        lengths.append(L)
        L *= 2
    lengths.append(top - 32)
    helptext = subprocess.run([BIN, "--help"], capture_output=True, text=True).stdout
    variants = [(dt, ["--dtype", dt]) for dt in a.dtypes.split(",")]
    if "--kv-cache-dtype" in helptext:
        variants.append(("fp8", ["--dtype", "bf16", "--kv-cache-dtype", "fp8"]))
    sums = {v[0]: [0, 0] for v in variants}
    for L in lengths:
        ids = prompt_ids(a.model, L)
        ref = gen(a.model, ids, "cpu")
        hf_check(a.model, ids, ref, f"L={len(ids)}")
        for name, extra in variants:
            try:
                got = gen(a.model, ids, "cuda", extra)
                # the fp8 cache against the CPU's fp8 cache (the same e4m3 codes)
                r = gen(a.model, ids, "cpu", ["--kv-cache-dtype", "fp8"]) if name == "fp8" else ref
            except RuntimeError as e:
                check(False, str(e))
                continue
            ag, tot = compare(r, got, TOL[name], f"L={len(ids)} cuda {name}")
            sums[name][0] += ag
            sums[name][1] += tot
    for name, (ag, tot) in sums.items():
        check(tot and ag >= 0.99 * tot, f"cuda {name}: greedy agreement {ag}/{tot} < 99%")
    acc = {}
    for dev in ("cpu", "cuda"):
        out = subprocess.run([BIN, "eval", "passkey", "--model", a.model, "--device", dev, "--trials", "10",
                              "--lengths", ",".join(map(str, lengths)), "--json", "--log-level", "warn"],
                             capture_output=True, text=True, timeout=3600)
        print(out.stdout, flush=True)
        check(out.returncode == 0, f"eval passkey --device {dev}: {out.stderr.strip()}")
        if out.returncode == 0:
            acc[dev] = [r["correct"] for r in json.loads(out.stdout.strip().splitlines()[-1])["lengths"]]
    if len(acc) == 2:
        check(all(abs(x - y) <= 1 for x, y in zip(acc["cpu"], acc["cuda"])),
              f"passkey correct per length: cpu {acc['cpu']} vs cuda {acc['cuda']}")
    print(f"trained_parity: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
