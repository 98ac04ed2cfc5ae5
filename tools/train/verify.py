#!/usr/bin/python3
"""verify.py - check that ropeserve computes what train.py trained: the model directory's
weights through train.py's own PyTorch forward (with the RoPE of its config) against
`build/ropeserve generate --json --top-logprobs 5`, greedy tokens and top-5 logprobs.

    tools/train/verify.py DIR [--lengths 64,2048] [--bin build/ropeserve]

Prompts are passkey prompts of about each length; prints the largest |d logprob| and exits 1
on a greedy mismatch or a difference above 1e-3. CPU, python3-torch (Debian) is enough.
"""
import argparse
import json
import os
import struct
import subprocess
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train  # noqa: E402


def load(d):
    cfg = json.load(open(os.path.join(d, "config.json")))
    raw = open(os.path.join(d, "model.safetensors"), "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr, base = json.loads(raw[8:8 + n]), 8 + n
    keys = ["hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "num_hidden_layers", "head_dim", "rms_norm_eps", "vocab_size"]
    m = train.LlamaForCausalLM({k: cfg[k] for k in keys})
    sd = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        if v["dtype"] == "BF16":
            x = (np.frombuffer(raw[base + a:base + b], dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif v["dtype"] == "F32":
            x = np.frombuffer(raw[base + a:base + b], dtype=np.float32)
        else:
            sys.exit(f"{d}: tensor {k} has dtype {v['dtype']} (BF16 or F32 expected)")
        sd[k] = torch.from_numpy(x.reshape(v["shape"]).copy())
    m.load_state_dict(sd)
    m.eval()
    rs = cfg.get("rope_scaling")
    inv, af = train.rope_params(cfg["head_dim"], cfg["rope_theta"], rs["factor"] if rs else None,
                                rs["original_max_position_embeddings"] if rs else 0)
    return m, inv, af


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("--lengths", default="64,2048")
    p.add_argument("--bin", default="build/ropeserve")
    a = p.parse_args()
    m, inv, af = load(a.model)
    worst, bad = 0.0, 0
    for L in [int(x) for x in a.lengths.split(",")]:
        n = max(0, (L - 70) // 24)
        prompt = "\n".join([train.TASK, train.GARBAGE * (n // 3), train.info_line(31337),
                            train.GARBAGE * (n - n // 3), train.QUESTION])
        out = json.loads(subprocess.check_output(
            [a.bin, "generate", "--model", a.model, "--prompt", prompt, "--max-tokens", "8",
             "--top-logprobs", "5", "--json", "--log-level", "warn"]))
        ids = out["prompt_ids"] + out["ids"]
        with torch.no_grad():
            lg = m(torch.tensor([ids]), torch.arange(len(ids))[None], inv, af)[0].log_softmax(-1)
        P, d = len(out["prompt_ids"]), 0.0
        for i, step in enumerate(out["top_logprobs"]):
            t = lg[P - 1 + i]
            if int(t.argmax()) != out["ids"][i]:
                bad += 1
                print(f"length {L}: step {i}: torch argmax {int(t.argmax())}, ropeserve {out['ids'][i]}")
            for e in step:
                d = max(d, abs(float(t[e["id"]]) - e["logprob"]))
        worst = max(worst, d)
        print(f"{a.model}: prompt {P} tokens: greedy {out['text']!r}, max |d logprob| {d:.2e}")
    ok = bad == 0 and worst <= 1e-3
    print("verify:", "ok" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
