#!/bin/sh
# make bench: the foundation benchmark against llama.cpp's reference figures on the same model
# shape (hidden 512, 8 layers, 8 heads, head_dim 64, FFN 1376, vocab 512, F32 weights), plus
# concurrent decode and time-to-first-token under a long prefill. Figures are medians.
# Not a test: nothing here asserts a timing.
set -e
cd "$(dirname "$0")/.."
B=${B:-build}
M=$B/bench-model
[ -f $M/config.json ] || $B/tools/make_model --preset bench --out $M
THREADS=${THREADS:-$(nproc)}
echo "== prefill and decode, $THREADS threads (llama.cpp on the first 2-core dev VM, see README: pp512 ~1600, pp2048 ~1130, pp8192 ~520, tg ~195 t/s)"
$B/tools/bench --model $M --threads "$THREADS" --pp 512,2048,8192 --tg 128 --reps ${REPS:-3}
echo "== continuous batching: aggregate decode with 1, 4 and 16 streams; a short request during a 16k prefill"
$B/tools/bench --model $M --threads "$THREADS" --pp "" --tg 64 --streams 1,4,16 --long-prefill 16000 --reps ${REPS:-3}
echo "== tokenizer.json encode throughput, ours and Hugging Face tokenizers (tools/bench_tokenizer.sh)"
tools/bench_tokenizer.sh
