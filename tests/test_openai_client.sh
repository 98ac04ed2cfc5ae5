#!/bin/sh
# test_openai_client.sh - the official `openai` npm client (version pinned in
# tests/e2e/package.json + package-lock.json, one that runs on Node 20) against `ropeserve serve`
# on the tiny fixture model. The client is installed into tests/e2e/node_modules (git-ignored) on
# first use by tools/install-deps.sh --npm; when npm cannot reach the registry the suite prints a
# SKIP line and counts nothing.
# Ends with "test_openai_client: N passed, N failed". ROPESERVE_BIN overrides build/ropeserve.
cd "$(dirname "$0")/.." || exit 1
BIN=${ROPESERVE_BIN:-build/ropeserve}
MODEL=tests/fixtures/models/llama-gqa-none
E2E=tests/e2e
KEY=e2e-test-key

if [ ! -x "$BIN" ]; then
    echo "FAIL: $BIN not built"
    echo "test_openai_client: 0 passed, 1 failed"
    exit 1
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "SKIP: node/npm not installed; the official openai client was not exercised"
    echo "test_openai_client: 0 passed, 0 failed"
    exit 0
fi
if ! sh tools/install-deps.sh --npm "$E2E"; then
    echo "SKIP: the openai client is not installed; it was not exercised"
    echo "test_openai_client: 0 passed, 0 failed"
    exit 0
fi

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
LOG=$(mktemp)
"$BIN" serve --model "$MODEL" --port "$PORT" --api-key "$KEY" --served-model-name tiny-llama >"$LOG" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; rm -f "$LOG"' EXIT INT TERM
i=0
until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health")" = 200 ]; do
    i=$((i + 1))
    if [ $i -gt 300 ] || ! kill -0 $PID 2>/dev/null; then
        echo "FAIL: server did not start"
        cat "$LOG"
        echo "test_openai_client: 0 passed, 1 failed"
        exit 1
    fi
    sleep 0.1
done

timeout 300 node "$E2E/openai_client.mjs" "http://127.0.0.1:$PORT/v1" "$KEY" tiny-llama >"$LOG.out" 2>&1
rc=$?
cat "$LOG.out"
line=$(grep -E '^openai_client: [0-9]+ passed, [0-9]+ failed' "$LOG.out" | tail -n 1)
p=$(echo "$line" | sed -nE 's/.* ([0-9]+) passed, ([0-9]+) failed/\1/p')
f=$(echo "$line" | sed -nE 's/.* ([0-9]+) passed, ([0-9]+) failed/\2/p')
[ -z "$p" ] && p=0
[ -z "$f" ] && f=0
[ $rc -ne 0 ] && [ "$f" = 0 ] && f=1
rm -f "$LOG.out"
kill -TERM $PID 2>/dev/null
wait $PID
src=$?
if [ $src -ne 0 ]; then
    echo "FAIL: server exit status $src after SIGTERM"
    f=$((f + 1))
fi
echo "test_openai_client: $p passed, $f failed"
[ "$f" = 0 ]
