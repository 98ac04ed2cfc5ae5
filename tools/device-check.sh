#!/bin/bash
# device-check.sh - the one script a GPU session runs (issue 10 item 7; shared/device/README.md):
# it builds nothing, checks and measures the carried build, measures the peers in the same run,
# and leaves every log and figure under $OUT, with $OUT/summary.json rewritten after every step
# (so a step that fails or a run cut short still leaves a summary of what was measured).
#
# Steps, in order of value, each skipped when too little of the time budget is left for it:
#   gpu        nvidia-smi (read only: never change clocks or modes) -> nvidia-smi.txt, gpu.txt
#   checkers   tests/run-cuda.sh with RUN_CUDA_QUICK=1: every kernel checker (the 128-row sm_80
#              kernel, the sm_90a one, the 64-row one, split-KV) + the end-to-end parity
#              -> test-cuda.log, checkers.log
#   attention  check_attention --bench: the kernels' TFLOP/s at issue 10's shapes (2048 queries
#              over 0/32k/128k of paged prefix, whole causal 8k/32k/128k) -> attention-bench.log;
#              then the sm_80 kernel at 4 stages of 32 keys (ROPESERVE_CUDA_FA2_BN=32) on causal32k
#   sdpa       torch SDPA (cuDNN, FlashAttention-2) on the same shapes (tools/device_bench.py sdpa)
#   model      make_model --preset 7b-shape --init stable, YaRN x32 to 131072 (13.5 GB, ~12 s) +
#              a tokenizer.json for serving it
#   profile    build/tools/bench --device cuda --profile (kernels/profile.h): per step kind
#              (prefill chunk, decode) the time of every op class -> profile.txt
#   serve      ropeserve serve --device cuda; HTTP TTFT at 32k and 130k and greedy tokens + top-5
#              logprobs at 8k/32k/130k (device_bench.py serve) -> serve.json, serve.log
#   hf         transformers: bf16 prefill of the same prompts (TTFT peer), bf16 and fp32 top-5
#              (parity), the nudge test at full shape (fp32) -> hf.json
#   decode     bench --decode-ctx 16,130000 with bf16 and fp8 KV, and without CUDA graphs -> decode.txt
#   sanitize   compute-sanitizer memcheck + racecheck on small check_attention configurations, check_decode
#   sass       tests/test_cuda_build.sh (cuobjdump -sass there: HGMMA in the sm_90a kernel)
#   summary    summary.json: gpu, commit, attention_tflops {case: value}, sdpa_cudnn_tflops,
#              sdpa_flash_tflops, ttft_s {"32k","130k"}, hf_ttft_s, floors, ratios, parity,
#              nudge, profile, steps (commit it as bench/results/GPU-YYYY-MM-DD.json)
#
# Carry the build (64 MiB limit): tools/device-pack.sh here, then one run call with
#   carry [".devpack"], command: tools/device-check.sh      (it unpacks .devpack itself)
# Environment: OUT (default build/device-check; the device tool's $OUT when set), BUDGET (seconds
# for the whole run, default 540: a call is at most 600), SKIP (space-separated step names),
# MODEL (an existing model directory: skips `model`), EXTRA="rope_refs trained" (the transformers
# RoPE references of tests/rope_ref/ and tests/trained_parity.py, after the rest), DRY_RUN=1 (runs the Python parts with
# --dry-run and only prints the other commands: tests/test_device_scripts.sh), PACK=0 (no
# device-check.tgz of $OUT).
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-build/device-check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BUDGET=${BUDGET:-540}
DRY=${DRY_RUN:-0}
SKIP=" ${SKIP:-} "
t0=$(date +%s)
DEADLINE=$((t0 + BUDGET))
py=python3
[ -x /usr/bin/python3 ] && [ "$DRY" = 1 ] && py=/usr/bin/python3
DRYFLAG=""
[ "$DRY" = 1 ] && DRYFLAG="--dry-run"
M=${MODEL:-/tmp/ropeserve-7b-stable}
[ "$DRY" = 1 ] && M="$OUT/dry-model"
PORT=${PORT:-8093}

if [ "$DRY" != 1 ] && [ ! -x build/ropeserve ] && [ -d .devpack ]; then
    for f in .devpack/*.tar.xz; do [ -f "$f" ] && tar xJf "$f"; done
fi
export LD_LIBRARY_PATH="$PWD/.devlibs:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$PATH:/usr/local/cuda/bin"

S="$OUT/summary.txt"
: >"$S"
: >"$OUT/steps.tsv"
say() { echo "$*" | tee -a "$S"; }
left() { echo $((DEADLINE - $(date +%s))); }
summary() { "$py" tools/device_bench.py summary --out "$OUT" $DRYFLAG >>"$OUT/device_bench.log" 2>&1; }

# step NAME MIN CAP FUNCTION: runs FUNCTION when at least MIN seconds are left, under a timeout
# of min(CAP, what is left - 10); records its exit status and time, then rewrites the summary.
# Each FUNCTION runs its commands through `x` (real) or `p` (device_bench.py: real or dry-run).
x() { if [ "$DRY" = 1 ]; then echo "DRY: $*"; else timeout -k 5 "$T" "$@"; fi; }
p() { timeout -k 5 "$T" "$py" tools/device_bench.py "$@" --out "$OUT" --deadline $((DEADLINE - 10)) $DRYFLAG; }
step() {
    local name=$1 min=$2 cap=$3 fn=$4 l s0 rc
    case "$SKIP" in *" $name "*) say "SKIP $name (SKIP)"; printf '%s\tskipped\t0\n' "$name" >>"$OUT/steps.tsv"; return 0 ;; esac
    l=$(left)
    if [ "$l" -lt "$min" ]; then
        say "SKIP $name: ${l}s left, it needs ${min}s"
        printf '%s\tskipped\t0\n' "$name" >>"$OUT/steps.tsv"
        return 0
    fi
    T=$cap
    [ $((l - 10)) -lt "$T" ] && T=$((l - 10))
    s0=$(date +%s)
    "$fn"
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - s0))" >>"$OUT/steps.tsv"
    say "$name: exit $rc in $(($(date +%s) - s0))s ($(left)s left)"
    summary
    return 0
}

s_gpu() {
    if [ "$DRY" = 1 ]; then echo "DRY GPU" >"$OUT/gpu.txt"; return 0; fi
    {
        nvidia-smi
        nvidia-smi --query-gpu=name,memory.total,memory.free,clocks.max.sm,clocks.max.mem,clocks.sm,power.limit,driver_version,compute_cap --format=csv
    } >"$OUT/nvidia-smi.txt" 2>&1
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader >"$OUT/gpu.txt" 2>&1
    say "device: $(head -n 1 "$OUT/gpu.txt")"
    for b in build/ropeserve build/tools/bench build/tests/kernels/check_*; do
        [ -x "$b" ] || continue
        miss=$(ldd "$b" 2>&1 | grep 'not found')
        [ -n "$miss" ] && say "WARNING: $b misses libraries: $miss"
    done
    return 0
}

s_checkers() {
    RUN_CUDA_QUICK=1 RUN_CUDA_TIMEOUT=$T x tests/run-cuda.sh >"$OUT/test-cuda.log" 2>&1
    local rc=$?
    say "tests/run-cuda.sh: $(tail -n 1 "$OUT/test-cuda.log")"
    grep -E '^== ' "$OUT/test-cuda.log" >>"$S"
    for f in build/test-logs/cuda/*.log; do
        [ -f "$f" ] || continue
        echo "=================== $f"
        cat "$f"
    done >"$OUT/checkers.log" 2>&1
    return $rc
}

s_attention() {
    x build/tests/kernels/check_attention --bench >"$OUT/attention-bench.log" 2>&1
    local rc=$?
    grep -E '^(BENCH|ATTENTION_TFLOPS_JSON|FAIL)|passed, ' "$OUT/attention-bench.log" | tee -a "$S" >/dev/null
    if [ "$(left)" -gt 60 ]; then
        echo "# ROPESERVE_CUDA_FA2_BN=32 (4 stages of 32 keys)" >>"$OUT/attention-bench.log"
        ROPESERVE_CUDA_FA2_BN=32 x build/tests/kernels/check_attention --bench --paths sm80 --only causal32k \
            2>&1 | grep -E '^BENCH' | sed 's/path=sm80/path=sm80_bn32/' | tee -a "$S" >>"$OUT/attention-bench.log"
    fi
    return $rc
}

s_sdpa() { p sdpa >>"$OUT/device_bench.log" 2>&1; }

s_model() {
    x build/tools/make_model --out "$M" --preset 7b-shape --init stable --max-pos 131072 \
        --rope-scaling-json '{"rope_type":"yarn","factor":32.0,"original_max_position_embeddings":4096}' \
        >"$OUT/make_model.log" 2>&1 || return 1
    p tokenizer --model-dir "$M" >>"$OUT/device_bench.log" 2>&1
}

s_profile() {
    echo "# build/tools/bench --model $M --device cuda --pp 8192 --tg 32 --reps 1 --profile" >"$OUT/profile.txt"
    x build/tools/bench --model "$M" --device cuda --pp 8192 --tg 32 --reps 1 --profile >>"$OUT/profile.txt" 2>&1
}

s_serve() {
    local pid="" rc i
    if [ "$DRY" = 1 ]; then
        echo "DRY: build/ropeserve serve --model $M --device cuda --port $PORT --no-prefix-cache"
    else
        build/ropeserve serve --model "$M" --device cuda --port "$PORT" --no-prefix-cache --max-model-len 131072 \
            --log-level info >"$OUT/serve.log" 2>&1 &
        pid=$!
        for i in $(seq 1 $((T / 2))); do
            "$py" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" \
                >/dev/null 2>&1 && break
            kill -0 "$pid" 2>/dev/null || break
            sleep 2
        done
    fi
    p serve --url "http://127.0.0.1:$PORT" --lengths 8k,32k,130k >>"$OUT/device_bench.log" 2>&1
    rc=$?
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    fi
    return $rc
}

s_hf() { p hf --model-dir "$M" --lengths 8k,32k,130k --fp32-gen-lens 8k >>"$OUT/device_bench.log" 2>&1; }

s_sanitize() {
    local rc=0 tool
    command -v compute-sanitizer >/dev/null || [ "$DRY" = 1 ] || { say "compute-sanitizer missing"; return 0; }
    : >"$OUT/sanitizer.log"
    for tool in memcheck racecheck; do
        echo "=================== compute-sanitizer --tool $tool check_attention --only 'prefill gqa4 hd128 bs16'" >>"$OUT/sanitizer.log"
        x compute-sanitizer --tool "$tool" --error-exitcode 99 build/tests/kernels/check_attention --quick \
            --only "prefill gqa4 hd128 bs16" >>"$OUT/sanitizer.log" 2>&1
        r=$?
        say "compute-sanitizer $tool (prefill gqa4 hd128 bs16: the 128-row sm_80, 64-row and sm_90a kernels): exit $r"
        [ $r -ne 0 ] && rc=$r
    done
    if [ -x build/tests/kernels/check_decode ]; then # 16-bit activations, fused ops, split-KV, CUDA graphs
        echo "=================== compute-sanitizer --tool memcheck check_decode" >>"$OUT/sanitizer.log"
        x compute-sanitizer --tool memcheck --error-exitcode 99 build/tests/kernels/check_decode >>"$OUT/sanitizer.log" 2>&1
        r=$?
        say "compute-sanitizer memcheck check_decode: exit $r"
        [ $r -ne 0 ] && rc=$r
    fi
    return $rc
}

# decode (issue 11 items 3, 5, 7): ms per decode step at a short and a 130k context with a bf16
# and an fp8 KV cache (bench --decode-ctx; one line DECODE_MS_JSON in summary.txt), and the same
# short decode without CUDA graphs, on the 7b-shape model
s_decode() {
    local kv
    : >"$OUT/decode.txt"
    for kv in bf16 fp8; do
        echo "# build/tools/bench --model $M --device cuda --kv-cache-dtype $kv --pp 0 --tg 32 --decode-ctx 16,130000 --reps 1" >>"$OUT/decode.txt"
        x build/tools/bench --model "$M" --device cuda --kv-cache-dtype $kv --pp 0 --tg 32 --decode-ctx 16,130000 \
            --reps 1 >>"$OUT/decode.txt" 2>&1
    done
    echo "# the same short decode without CUDA graphs (--no-cuda-graphs)" >>"$OUT/decode.txt"
    x build/tools/bench --model "$M" --device cuda --no-cuda-graphs --pp 0 --tg 32 --decode-ctx 16 --reps 1 \
        >>"$OUT/decode.txt" 2>&1
    say "DECODE_MS_JSON $(awk '/^decode_ms ctx=/ { split($2, c, "="); split($3, k, "="); split($4, m, "=");
        kv = (k[2] == "fp8_e4m3") ? "fp8" : k[2]; key = (c[2] == 16) ? "short" : "130k";
        v[kv] = v[kv] (v[kv] == "" ? "" : ", ") "\"" key "\": " m[2] }
        END { printf "{"; n = 0; for (kv in v) { printf "%s\"%s\": {%s}", (n++ ? ", " : ""), kv, v[kv] }; print "}" }' "$OUT/decode.txt")"
}

# optional (EXTRA="rope_refs trained"): the transformers RoPE/architecture references
# (tests/rope_ref/, commit them as test fixtures) and the trained demo model's parity
s_rope_refs() {
    p_=tests/rope_ref
    x "$py" $p_/make_hf_fixtures.py "$OUT/hf" >"$OUT/hf-run.log" 2>&1
    x "$py" $p_/make_hf_arch_fixtures.py "$OUT/hf-arch" >"$OUT/hf-arch-run.log" 2>&1
}
s_trained() { x "$py" tests/trained_parity.py >"$OUT/trained-parity.log" 2>&1; }

s_sass() {
    echo "=================== tests/test_cuda_build.sh" >>"$OUT/checkers.log"
    x sh tests/test_cuda_build.sh >>"$OUT/checkers.log" 2>&1
    local rc=$?
    say "machine code (tests/test_cuda_build.sh): $(tail -n 1 "$OUT/checkers.log")"
    return $rc
}

say "device-check: budget ${BUDGET}s, out $OUT$( [ "$DRY" = 1 ] && echo ', DRY RUN')"
step gpu 5 30 s_gpu
step checkers 60 120 s_checkers
step attention 40 100 s_attention
step sdpa 30 70 s_sdpa
[ -f "$M/config.json" ] && [ -f "$M/tokenizer.json" ] && SKIP="$SKIP model "
step model 30 60 s_model
step profile 40 60 s_profile
step serve 60 150 s_serve
step hf 60 200 s_hf
step decode 60 120 s_decode
step sanitize 40 90 s_sanitize
step sass 10 30 s_sass
case " ${EXTRA:-} " in *" rope_refs "*) step rope_refs 60 200 s_rope_refs ;; esac
case " ${EXTRA:-} " in *" trained "*) step trained 60 200 s_trained ;; esac
summary
say "device-check done in $(($(date +%s) - t0))s; summary: $OUT/summary.json"
if [ "${PACK:-1}" = 1 ]; then
    tar czf /tmp/device-check.tgz -C "$OUT" --exclude device-check.tgz . 2>/dev/null && mv /tmp/device-check.tgz "$OUT/device-check.tgz"
fi
exit 0
