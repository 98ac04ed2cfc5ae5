#!/bin/sh
# Runs the CUDA tests (`make test-cuda`): every kernel checker build/tests/kernels/check_* and the
# end-to-end parity of `build/ropeserve generate --device cuda` against `--device cpu`
# (tests/cuda_parity.py). Each program ends with "<suite>: N passed, N failed"; the totals come
# last as "N passed, N failed". Without a GPU every checker prints SKIP and so does the parity
# run, so the totals are "0 passed, 0 failed" and the exit status 0.
#
# Environment: RUN_CUDA_QUICK=1 passes --quick to check_attention (no 128k / bench-size configs);
# RUN_CUDA_TIMEOUT (seconds per program, default 1200).
cd "$(dirname "$0")/.." || exit 1
passed=0; failed=0; bad=""
log=build/test-logs/cuda; mkdir -p "$log"
tmo=${RUN_CUDA_TIMEOUT:-1200}
py=/usr/bin/python3; [ -x "$py" ] || py=$(command -v python3)

count() { # name logfile rc
    counts=$(grep -oE '[0-9]+ passed, [0-9]+ failed' "$2" | tail -n 1)
    p=$(echo "$counts" | awk '{print $1}')
    f=$(echo "$counts" | awk '{print $3}')
    [ -z "$p" ] && p=0
    [ -z "$f" ] && f=0
    if [ "$3" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    passed=$((passed + p)); failed=$((failed + f))
    if [ "$f" -ne 0 ]; then
        bad="$bad $1"
        echo "== $1: FAILED (exit $3); its log:"
        grep -E 'FAIL|MISMATCH|rror|CHECK|NON-FINITE' "$2" | head -n 40
    elif grep -q 'SKIP' "$2"; then
        echo "== $1: skipped ($(grep -m1 SKIP "$2"))"
    else
        echo "== $1: $p passed"
    fi
}

found=0
for t in build/tests/kernels/check_*; do
    [ -x "$t" ] || continue
    case "$t" in *.d|*.o) continue ;; esac
    found=1
    name=$(basename "$t")
    args=""
    [ "$name" = check_attention ] && [ "${RUN_CUDA_QUICK:-0}" = 1 ] && args="--quick"
    start=$(date +%s)
    timeout "$tmo" "$t" $args >"$log/$name.log" 2>&1
    rc=$?
    echo "   ($name: $(( $(date +%s) - start ))s)"
    count "$name" "$log/$name.log" $rc
done
[ $found -eq 1 ] || echo "== no build/tests/kernels/check_* (built only when nvcc is found)"

timeout "$tmo" "$py" tests/cuda_parity.py >"$log/cuda_parity.log" 2>&1
count cuda_parity "$log/cuda_parity.log" $?

[ -n "$bad" ] && echo "failed suites:$bad (logs in $log/)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
