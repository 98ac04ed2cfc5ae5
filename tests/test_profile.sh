#!/bin/sh
# bench --profile (kernels/profile.h, issue 10 item 1) on the CPU backend and a tiny fixture model:
# the table has both step kinds (prefill chunks, decodes), every op class of the forward pass
# (each GEMM named after its weights, attention, norms, RoPE, KV write, SwiGLU, residual adds,
# embedding, batch upload, logits copy, host overhead, sampling), call counts that match the
# model (per step: n_layers attention calls, 2 n_layers + 1 norms, ...), no negative time, and
# shares that sum to 100% per kind (the rows partition the kind's wall time). Times are never
# asserted: a loaded machine stretches them.
cd "$(dirname "$0")/.." || exit 1
name=test_profile
bench=build/tools/bench
[ -x build/cpu/tools/bench ] && [ ! -x "$bench" ] && bench=build/cpu/tools/bench
[ -x "$bench" ] || { echo "$name: FAIL: $bench not built"; echo "$name: 0 passed, 1 failed"; exit 1; }
model=tests/fixtures/models/llama-gqa-none
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$bench" --model "$model" --device cpu --threads 2 --pp 64,200 --tg 9 --reps 2 --max-batched-tokens 128 --profile >"$out" 2>&1
rc=$?
py=/usr/bin/python3; [ -x "$py" ] || py=$(command -v python3)
"$py" - "$out" "$rc" "$model/config.json" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
rc = int(sys.argv[2])
cfg = json.load(open(sys.argv[3]))
passed = failed = 0
def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL:", what)
check(rc == 0, "bench --profile exits 0 (exit %d)" % rc)
lines = [l for l in text.splitlines() if l.startswith("PROFILE_JSON ")]
check(len(lines) == 1, "one PROFILE_JSON line")
prof = json.loads(lines[0][len("PROFILE_JSON "):]) if lines else {}
L = cfg["num_hidden_layers"]
need = ["embedding", "rmsnorm", "rope", "kv write", "attention", "swiglu", "residual add", "batch upload",
        "logits copy", "gather rows", "gemm wq", "wk", "wv", "wo", "gemm gate/up", "gemm down", "gemm lm_head",
        "host overhead", "sampling"]
for kind in ("prefill", "decode"):
    k = prof.get(kind)
    check(k is not None, "step kind %s profiled" % kind)
    if not k:
        continue
    ops, steps = k["ops"], k["steps"]
    names = list(ops)
    for n in need:
        check(any(n in x for x in names), "%s: op class '%s' listed" % (kind, n))
        check(("  " + n) in text or any(n in l for l in text.splitlines()), "%s: '%s' in the printed table" % (kind, n))
    total = sum(v["share"] for v in ops.values())
    check(abs(total - 100.0) < 0.5, "%s: shares sum to 100%% (%.3f)" % (kind, total))
    check(all(v["ms"] >= -1e-6 for v in ops.values()), "%s: no negative time" % kind)
    ms = sum(v["ms"] for v in ops.values())
    check(abs(ms - k["wall_ms"]) <= 1e-3 * max(1.0, k["wall_ms"]) + 0.01, "%s: rows add up to the wall time (%.4f vs %.4f ms)" % (kind, ms, k["wall_ms"]))
    get = lambda sub: next((v for x, v in ops.items() if x.startswith(sub)), {"calls": -1})
    check(get("attention")["calls"] == L * steps, "%s: %d attention calls per step (%d over %d steps)" % (kind, L, get("attention")["calls"], steps))
    # a step whose rows need no logits (a prompt chunk before the last) has no lm_head
    n_out = get("gemm lm_head")["calls"]
    check(n_out == get("gather rows")["calls"] == get("logits copy")["calls"], "%s: lm_head, gather and logits copy per step with logits" % kind)
    check(n_out == (steps if kind == "decode" else 4), "%s: steps with logits (%d)" % (kind, n_out))
    check(get("rmsnorm")["calls"] == 2 * L * steps + n_out, "%s: 2 L norms per step + the final norm" % kind)
    check(get("gemm gate/up")["calls"] == 2 * L * steps, "%s: gate and up GEMMs per layer" % kind)
pre = prof.get("prefill", {})
# prompts 64 and 200 with 128-token chunks, 2 reps + the warm-up (not counted): 64 -> 1 step, 200 -> 2 steps
check(pre.get("steps") == 2 * (1 + 2), "prefill: 6 chunked steps after the warm-up (got %s)" % pre.get("steps"))
check(pre.get("tokens") == 2 * (64 + 200), "prefill: 528 prompt tokens (got %s)" % pre.get("tokens"))
check("step kind prefill" in text and "step kind decode" in text, "both kinds in the printed table")
if failed:
    print(text[-4000:])
print("test_profile: %d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
PY
