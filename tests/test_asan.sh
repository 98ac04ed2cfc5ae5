#!/bin/sh
# The engine tests again under AddressSanitizer + UBSan (+ LeakSanitizer), on the tiny fixture
# model and a short stress run, the tokenizer.json tests, the architecture fixtures (sliding
# windows: blocks released and reused, preemption in a tight pool) and the chat-template
# interpreter's tests (its mutation fuzz over the real templates included), and the listening
# door's (real sockets): any leak, invalid access or undefined behaviour fails.
cd "$(dirname "$0")/.." || exit 1
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
pass=0; fail=0
for t in "build/asan/test_engine" "build/asan/test_batching --model tests/fixtures/models/llama-gqa-none --short" \
         "build/asan/test_tokenizer_bpe" "build/asan/test_arch" "build/asan/test_jinja" "build/asan/test_door"; do
    if $t > build/asan.log 2>&1; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1)); echo "FAIL: $t"; tail -n 40 build/asan.log
    fi
done
echo "test_asan: $pass passed, $fail failed"
[ $fail -eq 0 ]
