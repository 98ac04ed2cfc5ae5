#!/bin/sh
# Runs every test program (build/tests/test_*) and script (tests/test_*.sh, tests/test_*.py),
# each of which ends with a line "<suite>: N passed, N failed". A program that exits non-zero
# without such a line counts as one failure. Prints the totals last: "N passed, N failed".
cd "$(dirname "$0")/.." || exit 1
passed=0; failed=0; bad=""
log=build/test-logs; mkdir -p "$log"
for t in build/tests/test_* tests/test_*.sh tests/test_*.py; do
    [ -e "$t" ] || continue
    case "$t" in *.d|*.o) continue ;; esac
    name=$(basename "$t")
    start=$(date +%s)
    case "$t" in
        *.py) /usr/bin/python3 "$t" >"$log/$name.log" 2>&1 ;;
        *.sh) sh "$t" >"$log/$name.log" 2>&1 ;;
        *) "$t" >"$log/$name.log" 2>&1 ;;
    esac
    rc=$?
    secs=$(( $(date +%s) - start ))
    line=$(grep -E '[0-9]+ passed, [0-9]+ failed' "$log/$name.log" | tail -n 1)
    counts=$(echo "$line" | grep -oE '[0-9]+ passed, [0-9]+ failed' | tail -n 1)
    p=$(echo "$counts" | awk '{print $1}')
    f=$(echo "$counts" | awk '{print $3}')
    [ -z "$p" ] && p=0
    [ -z "$f" ] && f=0
    if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    passed=$((passed + p)); failed=$((failed + f))
    if [ "$f" -ne 0 ]; then
        bad="$bad $name"
        echo "== $name: FAILED (exit $rc, ${secs}s); its log:"
        grep -E 'FAIL|rror|Assert|CHECK' "$log/$name.log" | head -n 40
    else
        echo "== $name: $p passed (${secs}s)"
    fi
done
[ -n "$bad" ] && echo "failed suites:$bad (logs in $log/)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
