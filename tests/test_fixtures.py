#!/usr/bin/env python3
"""Replays every llama.cpp fixture case (tests/fixtures/llamacpp/*.json, see tests/fixtures/README.md)
through `build/ropeserve generate --json` on the CPU and compares:

  - greedy tokens identical, except from a step where the reference's top-2 gap is < 1e-3: there
    only the distribution is compared, and the run continues teacher-forced on the reference's
    tokens (a fresh request with prompt + reference tokens so far);
  - for the ids in both top-20 lists, |delta logprob| <= 5e-3, and at least 18 ids in common;
  - the text case: the server's own tokenization of the string equals llama.cpp's ids.

Prints one line per case and "test_fixtures: N passed, N failed" last.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("ROPESERVE_BIN", os.path.join(ROOT, "build", "ropeserve"))
FIX = os.path.join(ROOT, "tests", "fixtures")
TOL = 5e-3
GAP = 1e-3

passed = failed = 0


def generate(model, ids=None, text=None, n=16, extra=()):
    cmd = [BIN, "generate", "--model", model, "--max-tokens", str(n), "--top-logprobs", "20",
           "--json", "--threads", "2", "--log-level", "warn"] + list(extra)
    cmd += ["--prompt-ids", ",".join(map(str, ids))] if ids is not None else ["--prompt", text]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError("generate failed (%d): %s" % (out.returncode, out.stderr.strip()[-500:]))
    return json.loads(out.stdout)


def compare_step(ref, ours):
    """ref: fixture step; ours: list of {id, logprob}. Returns (max |delta|, overlap, message)."""
    r = dict(zip(ref["top_ids"], ref["top_logprobs"]))
    o = {e["id"]: e["logprob"] for e in ours}
    common = set(r) & set(o)
    worst = max((abs(r[i] - o[i]) for i in common), default=float("inf"))
    return worst, len(common)


def check_case(model, name, prompt_ids, ref_greedy, ref_steps, text=None, extra=()):
    """Returns a list of problems (empty = pass) and the max |delta logprob|. `extra`: more
    `generate` flags (tests/test_rope_e2e.py passes --max-model-len)."""
    problems, worst_all = [], 0.0
    got = generate(model, ids=prompt_ids if text is None else None, text=text, n=len(ref_greedy), extra=extra)
    if text is not None and got["prompt_ids"] != prompt_ids:
        problems.append("tokenization differs: %s vs %s" % (got["prompt_ids"][:12], prompt_ids[:12]))
        return problems, worst_all
    ours_ids, ours_top, base = got["ids"], got["top_logprobs"], 0
    k = 0
    while k < len(ref_greedy):
        j = k - base
        if j >= len(ours_ids):
            problems.append("stopped after %d tokens, reference has %d" % (k, len(ref_greedy)))
            break
        step = ref_steps[k]
        worst, overlap = compare_step(step, ours_top[j])
        worst_all = max(worst_all, worst)
        if worst > TOL:
            problems.append("step %d: max |dlogprob| %.2e > %.0e" % (k, worst, TOL))
        if overlap < 18:
            problems.append("step %d: top-20 overlap %d < 18" % (k, overlap))
        if ours_ids[j] != ref_greedy[k]:
            gap = step["top_logprobs"][0] - step["top_logprobs"][1]
            if gap >= GAP:
                problems.append("step %d: token %d, reference %d (top-2 gap %.2e)" % (k, ours_ids[j], ref_greedy[k], gap))
                break
            # a near-tie: continue teacher-forced on the reference's path
            forced = prompt_ids + ref_greedy[:k + 1]
            if k + 1 < len(ref_greedy):
                got = generate(model, ids=forced, n=len(ref_greedy) - k - 1, extra=extra)
                ours_ids, ours_top, base = got["ids"], got["top_logprobs"], k + 1
        k += 1
    if not problems and len(ours_ids) + base > len(ref_greedy):
        problems.append("generated past the reference's EOS")
    return problems, worst_all


def main():
    global passed, failed
    if not os.path.exists(BIN):
        print("FAIL: %s not built" % BIN)
        print("test_fixtures: 0 passed, 1 failed")
        return 1
    for fn in sorted(os.listdir(os.path.join(FIX, "llamacpp"))):
        if not fn.endswith(".json"):
            continue
        fx = json.load(open(os.path.join(FIX, "llamacpp", fn)))
        model = os.path.join(FIX, fx["model_hf_dir"])
        cases = [(c["name"], c["prompt_ids"], c["greedy_ids"], c["steps"], None) for c in fx["cases"]]
        tc = fx["text_case"]
        cases.append(("text", tc["prompt_ids_llamacpp"], tc["greedy_ids"], tc["steps"], tc["text"]))
        for name, ids, greedy, steps, text in cases:
            try:
                problems, worst = check_case(model, name, ids, greedy, steps, text)
            except Exception as e:  # a crash is a failure of this case, not of the suite
                problems, worst = ["error: %s" % e], float("nan")
            tag = "%s/%s (%d tokens)" % (fx["variant"], name, len(ids))
            if problems:
                failed += 1
                print("FAIL %s: %s" % (tag, "; ".join(problems[:5])))
            else:
                passed += 1
                print("ok   %s: %d greedy tokens, max |dlogprob| %.2e" % (tag, len(greedy), worst))
    print("test_fixtures: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
