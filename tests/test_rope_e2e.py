#!/usr/bin/env python3
"""End-to-end RoPE scaling test: replays tests/fixtures/rope/<method>.json (float64 NumPy HF-LLaMA
reference written by tests/rope_ref/make_rope_fixtures.py) through `build/ropeserve generate --json`
on the CPU and compares, as tests/test_fixtures.py does:

  - greedy tokens identical, except from a step where the reference's top-2 gap is < 1e-3: there
    only the distribution is compared, and the run continues teacher-forced on the reference's
    tokens (a fresh request with prompt + reference tokens so far);
  - for the ids in both top-20 lists, |delta logprob| <= 5e-3, and at least 18 ids in common.

Methods listed in KNOWN_MISMATCH are not run; a "KNOWN MISMATCH <method>: <details>" line is printed
and they count neither as passed nor failed.

ROPESERVE_BIN overrides the binary. Prints one line per case and "test_rope_e2e: N passed, N failed" last.
"""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("ROPESERVE_BIN", os.path.join(ROOT, "build", "ropeserve"))
FIX = os.path.join(ROOT, "tests", "fixtures", "rope")
TOL = 5e-3
GAP = 1e-3
MAX_MODEL_LEN = "1024"  # prompts go up to 8x the original context (64)

# method -> details (ropeserve believed wrong; see the report that added this test)
KNOWN_MISMATCH = {}

passed = failed = 0


def generate(model, ids, n):
    cmd = [BIN, "generate", "--model", model, "--max-tokens", str(n), "--top-logprobs", "20",
           "--json", "--threads", "2", "--log-level", "warn", "--max-model-len", MAX_MODEL_LEN,
           "--prompt-ids", ",".join(map(str, ids))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError("generate failed (%d): %s" % (out.returncode, out.stderr.strip()[-500:]))
    return json.loads(out.stdout)


def compare_step(ref, ours):
    r = dict(zip(ref["top_ids"], ref["top_logprobs"]))
    o = {e["id"]: e["logprob"] for e in ours}
    common = set(r) & set(o)
    worst = max((abs(r[i] - o[i]) for i in common), default=float("inf"))
    return worst, len(common)


def check_case(model, prompt_ids, ref_greedy, ref_steps):
    problems, worst_all = [], 0.0
    got = generate(model, prompt_ids, len(ref_greedy))
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
                problems.append("step %d: token %d, reference %d (top-2 gap %.2e)"
                                % (k, ours_ids[j], ref_greedy[k], gap))
                break
            forced = prompt_ids + ref_greedy[:k + 1]
            if k + 1 < len(ref_greedy):
                got = generate(model, forced, len(ref_greedy) - k - 1)
                ours_ids, ours_top, base = got["ids"], got["top_logprobs"], k + 1
        k += 1
    if not problems and len(ours_ids) + base > len(ref_greedy):
        problems.append("generated past the reference's EOS")
    return problems, worst_all


def main():
    global passed, failed
    t0 = time.time()
    if not os.path.exists(BIN):
        print("FAIL: %s not built" % BIN)
        print("test_rope_e2e: 0 passed, 1 failed")
        return 1
    only = set(sys.argv[1:])
    for fn in sorted(os.listdir(FIX)):
        if not fn.endswith(".json"):
            continue
        fx = json.load(open(os.path.join(FIX, fn)))
        method = fx["method"]
        if only and method not in only:
            continue
        if method in KNOWN_MISMATCH:
            print("KNOWN MISMATCH %s: %s" % (method, KNOWN_MISMATCH[method]))
            continue
        model = os.path.join(FIX, fx["model_dir"])
        mworst = 0.0
        for c in fx["cases"]:
            try:
                problems, worst = check_case(model, c["prompt_ids"], c["greedy_ids"], c["steps"])
            except Exception as e:  # a crash fails this case, not the suite
                problems, worst = ["error: %s" % e], float("nan")
            tag = "%s/%s (%d tokens)" % (method, c["name"], len(c["prompt_ids"]))
            if problems:
                failed += 1
                print("FAIL %s: %s" % (tag, "; ".join(problems[:5])))
            else:
                passed += 1
                mworst = max(mworst, worst)
                print("ok   %s: %d greedy tokens, max |dlogprob| %.2e" % (tag, len(c["greedy_ids"]), worst))
    print("(%.1f s)" % (time.time() - t0))
    print("test_rope_e2e: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
