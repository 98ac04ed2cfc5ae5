#!/bin/bash
# device-check.sh - the one script a GPU session runs (see shared/device/README.md): it checks and
# measures the prebuilt CUDA backend and leaves every log and figure under $OUT.
#
#   0. Hugging Face transformers references for the RoPE methods it implements
#      (tests/rope_ref/make_hf_fixtures.py -> $OUT/hf; commit them as tests/fixtures/rope/hf/)
#      and for the Qwen2/Mistral/biased-LLaMA checkpoints (tests/rope_ref/make_hf_arch_fixtures.py
#      -> $OUT/hf-arch; commit them as tests/fixtures/arch/hf/)
#   1. nvidia-smi: device, driver, memory, clocks (read only: never change clocks or modes)
#   2. tests/run-cuda.sh: every kernel checker + the end-to-end parity (make test-cuda without make)
#   2b. tests/trained_parity.py: the trained demo model, cuda vs cpu vs transformers, up to 16k
#   3. compute-sanitizer memcheck and racecheck over the small attention configurations
#   4. the attention kernels at issue 10's shapes (check_attention --bench: TFLOP/s per path, the
#      line ATTENTION_TFLOPS_JSON also in summary.txt), then the engine bench on the GPU
#      (build/tools/bench --device cuda), when it is built
#   4c. fp8 KV cache: decode ms/token at 16 and 130k tokens of context, bf16 vs fp8 KV (bench
#      --decode-ctx; DECODE_MS_JSON in summary.txt; FP8=0 skips it)
#   5. the sm_90a kernel's machine code (tests/test_cuda_build.sh, with cuobjdump -sass there)
#
# Build here first (the GPU machine has no Debian libraries), then carry build/ and .devlibs:
#   make all build/tests/kernels/check_{attention,rope,matmul,elementwise,decode}
#   ../shared/device/bundle-libs.sh build/ropeserve .devlibs
#   run: tools/device-check.sh      with carry ["build", ".devlibs"]
# A device call lasts at most 10 minutes: run QUICK=1 first (small attention configurations, no
# engine bench: a few minutes), then the full run if time is left.
#
# Output (at most 8 files, as the device tool brings back): summary.txt, nvidia-smi.txt,
# test-cuda.log, checkers.log (every checker's full output), sanitizer.log, bench.txt.
# Environment: OUT (default build/device-check), QUICK=1 (check_attention --quick, no benches),
# STEP_TIMEOUT (seconds per step, default 900), HF=0 (skip step 0), SANITIZE=0 (skip step 3),
# TRAINED=0 (skip step 2b; its log is trained-parity.log),
# PACK=1 (also pack $OUT into $OUT/device-check.tgz: the device tool brings back 8 files).
#
# Carrying the build (64 MiB limit; OpenBLAS alone is 37 MB): pack it compressed, ~12 MB,
#   ../shared/device/bundle-libs.sh build/ropeserve .devlibs
#   mkdir -p .devpack && tar cJf .devpack/devlibs.tar.xz .devlibs &&
#     tar cJf .devpack/build.tar.xz build/ropeserve build/tests/kernels build/tools/bench build/tools/make_model \
#       build/kernels/cuda/attention_prefill_sm90.o build/kernels/cuda/sm90a/ptxas.log build/kernels/cuda/sm90a/*90a.cubin
#   run: tar xJf .devpack/devlibs.tar.xz && tar xJf .devpack/build.tar.xz && PACK=1 QUICK=1 tools/device-check.sh
#   with carry [".devpack"] and OUT=$OUT (.devpack is in .gitignore).
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-build/device-check}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$PWD/.devlibs:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$PATH:/usr/local/cuda/bin"
T=${STEP_TIMEOUT:-900}
S="$OUT/summary.txt"
: >"$S"
say() { echo "$*" | tee -a "$S"; }
t0=$(date +%s)

# 0. transformers references (CPU fp32 on that machine; it has torch and transformers)
if [ "${HF:-1}" = 1 ]; then
    PYTHONUNBUFFERED=1 timeout "$T" python3 tests/rope_ref/make_hf_fixtures.py "$OUT/hf" >"$OUT/hf-run.log" 2>&1
    say "transformers references (exit $?): $(ls "$OUT/hf" 2>/dev/null | tr '\n' ' ')"
    PYTHONUNBUFFERED=1 timeout "$T" python3 tests/rope_ref/make_hf_arch_fixtures.py "$OUT/hf-arch" >"$OUT/hf-arch-run.log" 2>&1
    say "transformers architecture references (exit $?): $(ls "$OUT/hf-arch" 2>/dev/null | tr '\n' ' ')"
fi

# 1. the device
{
    nvidia-smi
    nvidia-smi --query-gpu=name,memory.total,memory.free,clocks.max.sm,clocks.max.mem,clocks.sm,power.limit,driver_version,compute_cap --format=csv
} >"$OUT/nvidia-smi.txt" 2>&1
say "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 1)"
for b in build/ropeserve build/tests/kernels/check_*; do
    [ -x "$b" ] || continue
    miss=$(ldd "$b" 2>&1 | grep 'not found')
    [ -n "$miss" ] && say "WARNING: $b misses libraries: $miss"
done

# 2. checkers + parity
[ "${QUICK:-0}" = 1 ] && export RUN_CUDA_QUICK=1
RUN_CUDA_TIMEOUT=$T tests/run-cuda.sh >"$OUT/test-cuda.log" 2>&1
rc_tests=$?
say "tests/run-cuda.sh (exit $rc_tests): $(tail -n 1 "$OUT/test-cuda.log")"
grep -E '^== ' "$OUT/test-cuda.log" | tee -a "$S" >/dev/null
for f in build/test-logs/cuda/*.log; do
    [ -f "$f" ] || continue
    echo "=================== $f"
    cat "$f"
done >"$OUT/checkers.log" 2>&1

# 2b. the trained demo model (models/demo-pose): cuda vs cpu (and transformers when installed)
# at every length up to its max_model_len, greedy + logprobs + passkey accuracy
if [ "${TRAINED:-1}" = 1 ] && [ -f models/demo-pose/config.json ]; then
    PYTHONUNBUFFERED=1 timeout "$T" python3 tests/trained_parity.py >"$OUT/trained-parity.log" 2>&1
    say "tests/trained_parity.py (exit $?): $(tail -n 1 "$OUT/trained-parity.log")"
fi

# 3. sanitizers: out-of-bounds / uninitialized reads, shared-memory races in the attention kernels
: >"$OUT/sanitizer.log"
if [ "${SANITIZE:-1}" != 1 ]; then
    say "sanitizers skipped (SANITIZE=0)"
elif command -v compute-sanitizer >/dev/null && [ -x build/tests/kernels/check_attention ]; then
    for tool in memcheck racecheck; do
        echo "=================== compute-sanitizer --tool $tool check_attention --quick" >>"$OUT/sanitizer.log"
        timeout "$T" compute-sanitizer --tool "$tool" --error-exitcode 99 build/tests/kernels/check_attention --quick \
            >>"$OUT/sanitizer.log" 2>&1
        rc=$?
        say "compute-sanitizer $tool check_attention --quick: exit $rc$( [ $rc -eq 0 ] && echo ' (clean)')"
    done
    if [ -x build/tests/kernels/check_decode ]; then # 16-bit activations, split-KV, CUDA graphs
        echo "=================== compute-sanitizer --tool memcheck check_decode" >>"$OUT/sanitizer.log"
        timeout "$T" compute-sanitizer --tool memcheck --error-exitcode 99 build/tests/kernels/check_decode >>"$OUT/sanitizer.log" 2>&1
        say "compute-sanitizer memcheck check_decode: exit $?"
    fi
    if [ -x build/tests/kernels/check_rope ]; then
        echo "=================== compute-sanitizer --tool memcheck check_rope" >>"$OUT/sanitizer.log"
        timeout "$T" compute-sanitizer --tool memcheck --error-exitcode 99 build/tests/kernels/check_rope >>"$OUT/sanitizer.log" 2>&1
        say "compute-sanitizer memcheck check_rope: exit $?"
    fi
else
    say "compute-sanitizer or check_attention missing: sanitizers skipped"
fi

# 4. figures: the checkers' kernel timings, then the engine bench
{
    echo "# kernel figures (median of 20, L2 flushed), from the checkers"
    grep -h -E '^(config:|    bench)' build/test-logs/cuda/check_*.log 2>/dev/null
} >"$OUT/bench.txt"
if [ "${QUICK:-0}" != 1 ] && [ -x build/tests/kernels/check_attention ]; then
    echo "# build/tests/kernels/check_attention --bench (32 heads x 128, bf16, block 16; median, L2 flushed)" >>"$OUT/bench.txt"
    timeout "$T" build/tests/kernels/check_attention --bench >"$OUT/attention-bench.log" 2>&1
    rc=$?
    grep -E '^(BENCH|ATTENTION_TFLOPS_JSON|bench case|FAIL)|passed, ' "$OUT/attention-bench.log" >>"$OUT/bench.txt"
    say "attention bench (exit $rc): $(grep -m1 '^ATTENTION_TFLOPS_JSON' "$OUT/attention-bench.log")"
    cat "$OUT/attention-bench.log" >>"$OUT/checkers.log"
    rm -f "$OUT/attention-bench.log"
fi
if [ "${QUICK:-0}" != 1 ] && [ -x build/tools/bench ] && [ -x build/tools/make_model ]; then
    M=/tmp/ropeserve-bench-model
    [ -f $M/config.json ] || build/tools/make_model --preset bench --out $M >>"$OUT/bench.txt" 2>&1
    echo "# build/tools/bench --model $M --device cuda --pp 512,2048,8192 --tg 128 --streams 1,4,16 --reps 3" >>"$OUT/bench.txt"
    timeout "$T" build/tools/bench --model $M --device cuda --pp 512,2048,8192 --tg 128 --streams 1,4,16 --reps 3 \
        >>"$OUT/bench.txt" 2>&1
    say "engine bench: exit $?"
    echo "# the same decode streams without CUDA graphs (--no-cuda-graphs)" >>"$OUT/bench.txt"
    timeout "$T" build/tools/bench --model $M --device cuda --no-cuda-graphs --pp 512 --tg 128 --streams 1,4,16 --reps 3 \
        >>"$OUT/bench.txt" 2>&1
    say "engine bench without graphs: exit $?"
fi
# 4c. fp8 KV cache (issue 11, items 5 and 7): decode ms per token at a short and a 130k context
# with a bf16 and an fp8 KV cache, on the bench shape (bf16, stretched to 131072 positions by
# YaRN x8); the kernel-level fp8 figures are check_attention's "fp8 KV: decode 131072" bench
# lines above. One line in summary.txt: DECODE_MS_JSON {"bf16": {"short": ms, "130k": ms}, "fp8": ..}
if [ "${QUICK:-0}" != 1 ] && [ "${FP8:-1}" = 1 ] && [ -x build/tools/bench ] && [ -x build/tools/make_model ]; then
    M8=/tmp/ropeserve-bench-128k
    [ -f $M8/config.json ] || build/tools/make_model --preset bench --dtype bf16 --max-pos 131072 --out $M8 \
        --rope-scaling-json '{"rope_type":"yarn","factor":8.0,"original_max_position_embeddings":16384}' >>"$OUT/bench.txt" 2>&1
    for kv in bf16 fp8; do
        echo "# build/tools/bench --model $M8 --device cuda --kv-cache-dtype $kv --pp 0 --tg 64 --decode-ctx 16,130000 --reps 2" >>"$OUT/bench.txt"
        timeout "$T" build/tools/bench --model $M8 --device cuda --kv-cache-dtype $kv --pp 0 --tg 64 \
            --decode-ctx 16,130000 --reps 2 >>"$OUT/bench.txt" 2>&1
    done
    say "DECODE_MS_JSON $(awk '/^decode_ms ctx=/ { split($2, c, "="); split($3, k, "="); split($4, m, "=");
        kv = (k[2] == "fp8_e4m3") ? "fp8" : k[2]; key = (c[2] == 16) ? "short" : "130k";
        v[kv] = v[kv] (v[kv] == "" ? "" : ", ") "\"" key "\": " m[2] }
        END { printf "{"; n = 0; for (kv in v) { printf "%s\"%s\": {%s}", (n++ ? ", " : ""), kv, v[kv] }; print "}" }' "$OUT/bench.txt")"
fi
# 5. the sm_90a kernel's machine code, disassembled where the machine has cuobjdump
echo "=================== tests/test_cuda_build.sh" >>"$OUT/checkers.log"
sh tests/test_cuda_build.sh >>"$OUT/checkers.log" 2>&1
say "sm_90a machine code (tests/test_cuda_build.sh, exit $?): $(tail -n 1 "$OUT/checkers.log")"
say "device-check done in $(( $(date +%s) - t0 ))s; logs in $OUT"
if [ "${PACK:-0}" = 1 ]; then
    tar czf /tmp/device-check.tgz -C "$OUT" . && mv /tmp/device-check.tgz "$OUT/device-check.tgz"
fi
exit $rc_tests
