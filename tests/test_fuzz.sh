#!/bin/sh
# test_fuzz.sh - the libFuzzer targets of tests/fuzz/ (build/fuzz/fuzz_*, made by `make test` and
# `make fuzz` when clang is installed), each on its committed seed corpus (tests/fuzz/corpus/NAME)
# plus what earlier runs found (build/fuzz/corpus/NAME):
#   tests/test_fuzz.sh                  a fixed number of executions per target (FUZZ_RUNS, else each
#                                       target's own count below): the same work on any machine, so a
#                                       loaded one only takes longer
#   tests/test_fuzz.sh --seconds N      N seconds per target (make fuzz FUZZ_SECONDS=N)
#   [--jobs J]                          J parallel fuzzing processes per target (--seconds only)
# A crash, a sanitizer report or a broken invariant fails the target; libFuzzer leaves the input
# in build/fuzz/findings/. Prints the executions per target and in all.
# Ends with "test_fuzz: N passed, N failed".
cd "$(dirname "$0")/.." || exit 1
SECONDS_EACH=""
JOBS=1
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECONDS_EACH=$2; shift 2 ;;
        --jobs) JOBS=$2; shift 2 ;;
        *) echo "test_fuzz.sh: unknown argument $1"; exit 2 ;;
    esac
done
pass=0
fail=0
total=0
if ! ls build/fuzz/fuzz_* >/dev/null 2>&1; then
    if command -v clang >/dev/null 2>&1; then
        echo "FAIL: build/fuzz/fuzz_* not built (make test builds them)"
        echo "test_fuzz: 0 passed, 1 failed"
        exit 1
    fi
    echo "SKIP: clang is not installed (tools/install-deps.sh installs it): no fuzzing"
    echo "test_fuzz: 0 passed, 0 failed"
    exit 0
fi
mkdir -p build/fuzz/findings build/fuzz/logs
export ROPESERVE_ROOT=$PWD
for bin in build/fuzz/fuzz_*; do
    name=${bin#build/fuzz/fuzz_}
    case "$name" in *.*) continue ;; esac
    seeds=tests/fuzz/corpus/$name
    found=build/fuzz/corpus/$name
    mkdir -p "$found"
    # fixed counts: a few seconds each on an idle 2-core machine
    case "$name" in
        request|jinja) runs=20000 ;;
        tokenizer) runs=15000 ;;
        *) runs=10000 ;;
    esac
    [ -n "${FUZZ_RUNS:-}" ] && runs=$FUZZ_RUNS
    log=build/fuzz/logs/$name.log
    if [ -n "$SECONDS_EACH" ]; then
        if [ "$JOBS" -gt 1 ]; then
            "$bin" "$found" "$seeds" -max_total_time="$SECONDS_EACH" -max_len=8192 -timeout=30 -rss_limit_mb=2048 \
                -artifact_prefix=build/fuzz/findings/"$name"- -jobs="$JOBS" -workers="$JOBS" -print_final_stats=1 >"$log" 2>&1
            cat fuzz-*.log >>"$log" 2>/dev/null
            rm -f fuzz-*.log
        else
            "$bin" "$found" "$seeds" -max_total_time="$SECONDS_EACH" -max_len=8192 -timeout=30 -rss_limit_mb=2048 \
                -artifact_prefix=build/fuzz/findings/"$name"- -print_final_stats=1 >"$log" 2>&1
        fi
    else
        "$bin" "$found" "$seeds" -runs="$runs" -max_len=8192 -timeout=60 -rss_limit_mb=2048 -seed=1 \
            -artifact_prefix=build/fuzz/findings/"$name"- -print_final_stats=1 >"$log" 2>&1
    fi
    rc=$?
    execs=$(grep -E '^stat::number_of_executed_units:' "$log" | awk '{s += $2} END {print s + 0}')
    total=$((total + execs))
    if [ $rc -eq 0 ] && ! grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|fuzz invariant failed' "$log"; then
        pass=$((pass + 1))
        echo "ok   fuzz_$name: $execs executions, corpus $(ls "$found" | wc -l) found + $(ls "$seeds" | wc -l) seeds"
    else
        fail=$((fail + 1))
        echo "FAIL fuzz_$name (exit $rc, $execs executions): $(grep -m1 -E 'ERROR|runtime error|invariant' "$log")"
        grep -E 'SUMMARY|Test unit written' "$log" | head -n 5
    fi
done
rm -rf /dev/shm/ropeserve-fuzz-* /tmp/ropeserve-fuzz-* 2>/dev/null
echo "fuzzing: $total executions in all"
echo "test_fuzz: $pass passed, $fail failed"
[ $fail = 0 ]
