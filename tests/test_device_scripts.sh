#!/bin/sh
# The GPU session's scripts, checked here without a GPU (issue 10 item 7): tools/device-check.sh,
# tools/device-pack.sh and tools/device_bench.py parse; a DRY_RUN of device-check.sh runs every
# step's plumbing and writes a summary.json with the issue's fields; `device_bench.py summary` on
# synthetic inputs computes the ratios, floors, parity and profile fields right; and the HTTP part
# (`device_bench.py serve`, the one the GPU run measures TTFT and parity with) runs for real
# against `ropeserve serve --device cpu` on a tiny 32000-token model with device_bench's
# tokenizer.json: its greedy tokens and top-5 logprobs, read back from token strings, equal
# `ropeserve generate --prompt-ids --top-logprobs 5` on the same ids.
cd "$(dirname "$0")/.." || exit 1
name=test_device_scripts
py=/usr/bin/python3; [ -x "$py" ] || py=$(command -v python3)
bin=build/ropeserve; mm=build/tools/make_model
[ -x "$bin" ] || { bin=build/cpu/ropeserve; mm=build/cpu/tools/make_model; }
tmp=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$tmp"' EXIT
pass=0; fail=0
ok() { if [ "$1" = 0 ]; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $2"; fi; }

bash -n tools/device-check.sh; ok $? "device-check.sh parses"
bash -n tools/device-pack.sh; ok $? "device-pack.sh parses"
"$py" -c "import ast,sys; ast.parse(open('tools/device_bench.py').read())"; ok $? "device_bench.py parses"

OUT=$tmp/dry DRY_RUN=1 BUDGET=300 PACK=0 bash tools/device-check.sh >"$tmp/dry.log" 2>&1
ok $? "DRY_RUN=1 device-check.sh exits 0"
"$py" - "$tmp/dry/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
bad = [k for k in ("gpu", "commit", "attention_tflops", "sdpa_cudnn_tflops", "sdpa_flash_tflops", "ttft_s", "hf_ttft_s",
                   "floors", "parity", "steps") if k not in s]
bad += ["ttft_s." + k for k in ("32k", "130k") if k not in s.get("ttft_s", {})]
bad += ["hf_ttft_s." + k for k in ("32k", "130k") if k not in s.get("hf_ttft_s", {})]
steps = [x["step"] for x in s.get("steps", [])]
for st in ("gpu", "checkers", "attention", "sdpa", "model", "profile", "serve", "hf", "sanitize", "sass"):
    if st not in steps:
        bad.append("step " + st)
if bad:
    print("missing:", bad)
sys.exit(1 if bad else 0)
PY
ok $? "the dry run's summary.json has every field and step"

# summary on synthetic inputs
d=$tmp/syn; mkdir -p "$d"
echo "NVIDIA H200, 143771 MiB, 580.00, 9.0" >"$d/gpu.txt"
echo 'ATTENTION_TFLOPS_JSON {"sm90": {"causal32k": 500.0, "causal8k": 450.0}, "sm80": {"causal32k": 300.0}}' >"$d/attention-bench.log"
echo '{"cudnn": {"causal32k": 600.0, "causal8k": 500.0}, "flash": {"causal32k": 330.0}, "errors": {}}' >"$d/sdpa.json"
cat >"$d/serve.json" <<'J'
{"ttft_s": {"32k": 1.0, "130k": 8.0}, "parity": {"8k": {"ids": [5, 7], "top5": [[[5, -1.0], [6, -2.0]], [[7, -0.5], [9, -3.0]]]},
 "32k": {"ids": [11], "top5": [[[11, -1.0], [12, -1.01]]]}}, "errors": {}}
J
cat >"$d/hf.json" <<'J'
{"ttft_s": {"32k": 1.5, "130k": 12.0}, "fp32": {"8k": {"ids": [5, 7], "top5": [[[5, -1.01], [6, -2.0]], [[7, -0.52], [9, -3.0]]]},
 "32k": {"ids": [12], "top5": [[[12, -1.0], [11, -1.005]]]}},
 "bf16": {"8k": {"ids": [5], "top5": [[[5, -1.03], [6, -1.98]]]}}, "nudge": {"rel": 1e-6, "max_abs_dlogprob_all": 2e-6, "pass": true}, "errors": {}}
J
printf '# bench\nPROFILE_JSON {"prefill": {"steps": 1, "tokens": 8192, "wall_ms": 10.0, "ops": {"attention": {"ms": 5.0, "calls": 32, "share": 50.0}}}}\n' >"$d/profile.txt"
printf 'gpu\t0\t1\n' >"$d/steps.tsv"
"$py" tools/device_bench.py summary --out "$d" --commit abc >"$tmp/syn.log" 2>&1
ok $? "device_bench.py summary on synthetic inputs"
"$py" - "$d/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
checks = [
    (s["gpu"].startswith("NVIDIA H200"), "gpu"),
    (s["commit"] == "abc", "commit"),
    (s["attention_path"] == "sm90" and s["attention_tflops"] == {"causal32k": 500.0, "causal8k": 450.0}, "attention_tflops: the sm90 path"),
    (s["attention_vs_cudnn"] == {"causal32k": 0.833, "causal8k": 0.9}, "attention / cuDNN ratios"),
    (s["sdpa_flash_tflops"] == {"causal32k": 330.0}, "sdpa_flash_tflops"),
    (s["ttft_s"] == {"32k": 1.0, "130k": 8.0} and s["hf_ttft_s"] == {"32k": 1.5, "130k": 12.0}, "ttft fields"),
    (s["ttft_vs_hf"] == {"32k": 0.667, "130k": 0.667}, "ttft ratios"),
    (abs(s["floors"]["ttft_floor_s"]["130k"] - 6.182) < 0.01 and s["floors"]["peak_bf16_tflops"] == 989.0, "floors at 989 TFLOP/s"),
    (s["parity"]["8k"]["ropeserve_vs_hf_fp32"]["max_abs_dlogprob_top5"] == 0.02, "parity: largest top-5 difference"),
    (s["parity"]["8k"]["ropeserve_vs_hf_fp32"]["tokens_equal"] == 2, "parity: equal tokens"),
    (s["parity"]["8k"]["hf_bf16_vs_hf_fp32"]["max_abs_dlogprob_top5"] == 0.02, "parity: the bf16 class"),
    (s["parity"]["32k"]["ropeserve_vs_hf_fp32"]["first_mismatch"]["ref_top2_gap"] == 0.005, "parity: a near-tie mismatch is reported with its gap"),
    (s["nudge"]["pass"] is True, "nudge"),
    (s["profile"]["prefill"]["ops"]["attention"]["share"] == 50.0, "profile"),
    (s["steps"] == [{"step": "gpu", "rc": "0", "seconds": "1"}], "steps"),
]
bad = [w for c, w in checks if not c]
for w in bad:
    print("summary field wrong:", w)
if bad:
    print(json.dumps(s, indent=1)[:3000])
sys.exit(1 if bad else 0)
PY
ok $? "the summary's ratios, floors, parity and profile fields"

# the HTTP part against a real server (CPU)
if [ -x "$bin" ] && [ -x "$mm" ]; then
    m=$tmp/m
    "$mm" --out "$m" --preset 7b-shape --hidden 64 --heads 2 --kv-heads 2 --ffn 128 --layers 2 --init stable \
        --max-pos 4096 --threads 2 >/dev/null 2>&1
    ok $? "make_model: a 32000-token model"
    "$py" tools/device_bench.py tokenizer --model-dir "$m" --out "$tmp/o" >/dev/null 2>&1
    ok $? "device_bench.py tokenizer"
    port=$(( 20000 + $$ % 20000 ))
    "$bin" serve --model "$m" --device cpu --threads 2 --port $port --no-prefix-cache >"$tmp/serve.log" 2>&1 &
    pid=$!
    i=0
    while [ $i -lt 60 ]; do
        "$py" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=2)" 2>/dev/null && break
        i=$((i + 1)); sleep 0.5
    done
    "$py" tools/device_bench.py serve --url "http://127.0.0.1:$port" --lengths 300,513 --gen 3 --out "$tmp/o" >"$tmp/o.log" 2>&1
    ok $? "device_bench.py serve against ropeserve serve --device cpu"
    kill $pid 2>/dev/null; wait $pid 2>/dev/null; pid=""
    "$py" -c "
import sys; sys.path.insert(0, 'tools'); import device_bench as d
print(','.join(map(str, d.prompt_ids(300, 1))))" >"$tmp/ids300"
    "$bin" generate --model "$m" --device cpu --threads 2 --prompt-ids "$(cat "$tmp/ids300")" --max-tokens 3 \
        --top-logprobs 5 --json --ignore-eos >"$tmp/gen.json" 2>/dev/null
    ok $? "ropeserve generate on the same ids"
    "$py" - "$tmp/o/serve.json" "$tmp/gen.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
g = json.load(open(sys.argv[2]))
p = s["parity"].get("300")
bad = []
if not p or s["ttft_s"].get("300") is None or s["ttft_s"].get("513") is None:
    bad.append("TTFT and parity recorded: %s" % s)
else:
    if p["ids"] != g["ids"]:
        bad.append("greedy ids over HTTP %s, generate %s" % (p["ids"], g["ids"]))
    for k, (a, b) in enumerate(zip(p["top5"], g["top_logprobs"])):
        ref = [[x["id"], x["logprob"]] for x in b]
        if [x[0] for x in a] != [x[0] for x in ref] or max(abs(x[1] - y[1]) for x, y in zip(a, ref)) > 1e-5:
            bad.append("step %d top-5 %s vs %s" % (k, a, ref))
for b in bad:
    print("FAIL:", b)
sys.exit(1 if bad else 0)
PY
    ok $? "tokens and top-5 over HTTP (read back from token strings) equal generate's"
else
    echo "SKIP the HTTP part: $bin or $mm not built"
fi
echo "$name: $pass passed, $fail failed"
[ $fail -eq 0 ]
