#!/bin/sh
# test_soak.sh - the short soak of make test: tools/soak.py for 30 s with 4 workers (completions,
# streams, chat, cancelled streams, hang-ups, bad input, tokenize, health) after 2,000 slow
# connections from one address; fails on any error of a kind, a kind that ran fewer than 3 times,
# /health or a completion from another address not answered while the slow ones are open, or a
# server that does not end idle (0 running, 0 waiting, KV 0) or exit 0 on SIGTERM. Its figures are
# printed; none is a timing assertion. `make soak` runs the long version.
# Ends with "test_soak: N passed, N failed".
cd "$(dirname "$0")/.." || exit 1
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
if [ ! -x build/ropeserve ] || [ ! -f build/demo-model/config.json ]; then
    echo "FAIL: build/ropeserve or build/demo-model missing (make)"
    echo "test_soak: 0 passed, 1 failed"
    exit 1
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
SOAK_LOG=$log $PY tools/soak.py --seconds 30 --workers 4 --slow 2000 --min-per-kind 3
rc=$?
if [ $rc = 0 ]; then
    echo "test_soak: 1 passed, 0 failed"
else
    echo "the server's log (last lines):"
    tail -n 20 "$log"
    echo "test_soak: 0 passed, 1 failed"
fi
exit $rc
