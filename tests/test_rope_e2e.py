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
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("ROPESERVE_BIN", os.path.join(ROOT, "build", "ropeserve"))
FIX = os.path.join(ROOT, "tests", "fixtures", "rope")
MAX_MODEL_LEN = "1024"  # prompts go up to 8x the original context (64)

# method -> details (ropeserve believed wrong; see the report that added this test)
KNOWN_MISMATCH = {}

passed = failed = 0

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_fixtures import check_case  # noqa: E402  (the same comparison rules)


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
                problems, worst = check_case(model, c["name"], c["prompt_ids"], c["greedy_ids"], c["steps"],
                                             extra=("--max-model-len", MAX_MODEL_LEN))
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
