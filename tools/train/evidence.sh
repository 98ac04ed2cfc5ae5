#!/bin/sh
# evidence.sh - the README's demo-model tables, measured with `ropeserve eval`:
#   passkey accuracy per length for the trained model as configured (revised YaRN), the same
#   weights with scaling stripped (--rope-scaling none), as linear and as standard (HF) YaRN at
#   the same factor, and the stage-1 control; then held-out perplexity per window length.
#
#   tools/train/evidence.sh [OUTDIR]        (default build/evidence; logs + tables there)
#
# Environment: MODEL (models/demo-pose), CONTROL (models/demo-control), TEXT (held-out text;
# default build/train/heldout.txt, written by tools/train/train.py --prepare-only), LENGTHS,
# TRIALS (per length, default 50), LONG_TRIALS (for lengths >= 8k, default TRIALS), WINDOWS,
# PPL_TOKENS (held-out tokens scored, default 16384), METHODS (subset of: configured none
# linear standard control), BIN (build/ropeserve). Runs on the CPU; `nice` it on a shared box.
cd "$(dirname "$0")/../.." || exit 1
OUT=${1:-build/evidence}
BIN=${BIN:-build/ropeserve}
MODEL=${MODEL:-models/demo-pose}
CONTROL=${CONTROL:-models/demo-control}
TEXT=${TEXT:-build/train/heldout.txt}
LENGTHS=${LENGTHS:-256,512,1k,2k,4k,8k,16k}
TRIALS=${TRIALS:-50}
LONG_TRIALS=${LONG_TRIALS:-$TRIALS}
WINDOWS=${WINDOWS:-256,512,1k,2k,4k,8k,16k}
PPL_TOKENS=${PPL_TOKENS:-16384}
METHODS=${METHODS:-configured none linear standard control}
mkdir -p "$OUT"

args_for() {
    case $1 in
        configured) echo "--model $MODEL" ;;
        none) echo "--model $MODEL --rope-scaling none --max-model-len 16384" ;;
        linear) echo "--model $MODEL --rope-scaling linear" ;;
        standard) echo "--model $MODEL --yarn-variant standard" ;;
        control) echo "--model $CONTROL --max-model-len 16384" ;;
    esac
}

short=""; long=""
for L in $(echo "$LENGTHS" | tr ',' ' '); do
    n=$(echo "$L" | sed 's/[kK]$/*1024/' | bc)
    if [ "$n" -ge 8192 ]; then long="$long${long:+,}$L"; else short="$short${short:+,}$L"; fi
done

for m in $METHODS; do
    : >"$OUT/passkey-$m.txt"
    for part in short long; do
        eval "ls=\$$part"
        [ -n "$ls" ] || continue
        t=$TRIALS; [ $part = long ] && t=$LONG_TRIALS
        # shellcheck disable=SC2046
        $BIN eval passkey $(args_for $m) --lengths "$ls" --trials "$t" --json --log-level warn \
            >>"$OUT/passkey-$m.txt" 2>>"$OUT/passkey-$m.log" || echo "passkey $m: failed (see $OUT/passkey-$m.log)"
    done
    echo "== passkey, $m"; grep -v '^{' "$OUT/passkey-$m.txt"
done

if [ -f "$TEXT" ]; then
    for m in configured none control; do
        case " $METHODS " in *" $m "*) ;; *) continue ;; esac
        # shellcheck disable=SC2046
        $BIN eval perplexity $(args_for $m) --text "$TEXT" --windows "$WINDOWS" --max-text-tokens "$PPL_TOKENS" \
            --json --log-level warn >"$OUT/perplexity-$m.txt" 2>"$OUT/perplexity-$m.log" ||
            echo "perplexity $m: failed (see $OUT/perplexity-$m.log)"
        echo "== perplexity, $m"; grep -v '^{' "$OUT/perplexity-$m.txt"
    done
else
    echo "no held-out text at $TEXT: run tools/train/train.py --prepare-only (perplexity skipped)"
fi
