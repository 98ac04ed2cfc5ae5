#!/usr/bin/env python3
"""kv_accuracy.py - what a KV cache dtype costs a model, measured through two OpenAI-compatible
servers that differ only in --kv-cache-dtype (e.g. bf16 and fp8), beside `ropeserve eval`:

  - the passkey answer's logprob: `ropeserve eval passkey`'s prompt (same template) at each
    length and depth with the answer " 71432"-style key appended, scored with echo + logprobs
    (max_tokens 0); per length, the mean logprob of the key's tokens on each server and the mean
    |difference|. A model that retrieves gives ~0 here; one that does not (the demo model today)
    still shows whether the cache moves the evidence the answer rests on;
  - every prompt token's logprob: max and mean |difference| over all of them.

usage: kv_accuracy.py --a URL --b URL [--lengths 256,1024,4096,16384] [--trials 3]
The prompt length is approximate (the filler is sized at ~24 tokens per line of the demo
model's tokenizer); the printed token counts are exact."""
import argparse
import json
import random
import urllib.request

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there.")
FILL = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"


def prompt(key, n_pre, n_suf):
    return (f"{TASK}\n{FILL * n_pre}\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
            f"{FILL * n_suf}\n{QUESTION}")


def score(url, text):
    body = json.dumps({"prompt": text, "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0}).encode()
    req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=3600) as r:
        lp = json.load(r)["choices"][0]["logprobs"]
    return lp["tokens"], lp["token_logprobs"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--lengths", default="256,1024,4096,16384")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    print(f"a = {args.a}, b = {args.b}")
    print("length  tokens  key logprob a  key logprob b  mean |d| key   max |d| all  mean |d| all")
    for length in map(int, args.lengths.split(",")):
        n_lines = max(0, int((length - 80) / 24.2))
        ka, kb, dk, dmax, dsum, dn, ntok = [], [], [], 0.0, 0.0, 0, 0
        for t in range(args.trials):
            key = rng.randint(10000, 99999)
            pre = round(n_lines * (t + 0.5) / args.trials)
            text = prompt(key, pre, n_lines - pre) + f" {key}"
            toks_a, lp_a = score(args.a, text)
            toks_b, lp_b = score(args.b, text)
            assert toks_a == toks_b, "the servers tokenize differently"
            ntok = len(toks_a)
            # the key's tokens: the digits after the question's last "is"
            tail = 0
            while tail < len(toks_a) and toks_a[-1 - tail].strip().isdigit():
                tail += 1
            sa, sb = sum(lp_a[-tail:]) / tail, sum(lp_b[-tail:]) / tail
            ka.append(sa)
            kb.append(sb)
            dk.append(abs(sa - sb))
            for x, y in zip(lp_a[1:], lp_b[1:]):
                dmax = max(dmax, abs(x - y))
                dsum += abs(x - y)
                dn += 1
        print(f"{length:6d}  {ntok:6d}  {sum(ka) / len(ka):13.4f}  {sum(kb) / len(kb):13.4f}  {sum(dk) / len(dk):12.5f}"
              f"  {dmax:11.4f}  {dsum / dn:12.5f}")


if __name__ == "__main__":
    main()
