#!/bin/sh
# test_tokenizer_spm.sh - our tokenizer against Debian's sentencepiece command-line tools
# (spm_encode / spm_decode, package "sentencepiece"), which run the same model through the
# library's own front end. Texts with digits, tabs, leading/trailing/repeated spaces, accents,
# CJK, emoji, plus hand-written id lists with broken byte-fallback UTF-8. Text with "<s>", "</s>"
# and "<unk>" in it: those are parsed as the special tokens (as Hugging Face and vLLM do), and
# the text between them is encoded as spm_encode encodes each piece on its own.
#
# Runs from the repository root; needs build/tests/test_tokenizer (its --encode-file and
# --decode-ids modes print what spm_encode --output_format=id and spm_decode print).
# Ends with "test_tokenizer_spm: N passed, N failed"; exits non-zero on any failure.
cd "$(dirname "$0")/.." || exit 1
bin=${TEST_TOKENIZER_BIN:-build/tests/test_tokenizer} # override to test another build
model=models/demo/tokenizer.model
passed=0
failed=0

fail() {
    failed=$((failed + 1))
    echo "FAIL $1"
}

if [ ! -x "$bin" ] || ! command -v spm_encode >/dev/null || ! command -v spm_decode >/dev/null; then
    fail "needs $bin and spm_encode/spm_decode (Debian package sentencepiece)"
    echo "test_tokenizer_spm: $passed passed, $failed failed"
    exit 1
fi

tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT

# One text per line.
printf '%s\n' \
    'Hello world' \
    'Digits 0123456789, 3.14159 and 2024-06-01T12:34:56Z; 1e-5 + 42 = 1000042' \
    '	tab first	then	tabs		twice' \
    ' one leading space' \
    '   three leading spaces' \
    'trailing spaces   ' \
    'inner    runs     of      spaces' \
    'Größe Grüße aus München: Äpfel, Öfen und Füße – schön, übel, äußerst!' \
    'café naïve résumé façade coöperate Ångström' \
    '吾輩は猫である。名前はまだ無い。カタカナとひらがな、東京タワー。' \
    '한국어 텍스트와 中文字符 mixed with English' \
    'Family 👨‍👩‍👧‍👦, flag 🏳️‍🌈, coder 🧑🏽‍💻, thumbs 👍.' \
    '😀😃😄😁 emoji run, then ✓ ✗ ★ ♥ symbols' \
    '' \
    'def mean(xs):	return sum(xs) / len(xs)  # -> 2.0' \
    'The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.' \
    >"$tmp/texts.txt"
n_lines=$(wc -l <"$tmp/texts.txt")

if ! spm_encode --model="$model" --output_format=id <"$tmp/texts.txt" >"$tmp/spm_ids.txt" 2>"$tmp/spm.err"; then
    cat "$tmp/spm.err"
    fail "spm_encode failed"
fi
if ! "$bin" --model "$model" --encode-file "$tmp/texts.txt" >"$tmp/our_ids.txt"; then
    fail "test_tokenizer --encode-file failed"
fi

i=1
while [ "$i" -le "$n_lines" ]; do
    text=$(sed -n "${i}p" "$tmp/texts.txt")
    spm=$(sed -n "${i}p" "$tmp/spm_ids.txt")
    ours=$(sed -n "${i}p" "$tmp/our_ids.txt")
    if [ "$spm" = "$ours" ]; then
        passed=$((passed + 1))
    else
        fail "encode line $i: $text"
        echo "  spm:  $spm"
        echo "  ours: $ours"
    fi
    # decode the ids both ways; both must also give the text back
    spm_text=$(printf '%s\n' "$spm" | spm_decode --model="$model" --input_format=id)
    our_text=$("$bin" --model "$model" --decode-ids "$spm")
    if [ "$spm_text" = "$our_text" ] && [ "$our_text" = "$text" ]; then
        passed=$((passed + 1))
    else
        fail "decode line $i: $text"
        echo "  spm:  $spm_text"
        echo "  ours: $our_text"
    fi
    i=$((i + 1))
done

# Special-token text: ours == spm_encode of the pieces between the tokens, with the tokens' ids.
printf '%s\n' 'literal ' ' and ' ' and ' ' and <0x41> stays text' '<s>' >"$tmp/seg.txt"
spm_encode --model="$model" --output_format=id <"$tmp/seg.txt" >"$tmp/seg_ids.txt"
seg() { sed -n "${1}p" "$tmp/seg_ids.txt"; }
want="$(seg 1) 1 $(seg 2) 2 $(seg 3) 0 $(seg 4)"
printf '%s\n' 'literal <s> and </s> and <unk> and <0x41> stays text' '<s>' >"$tmp/special.txt"
"$bin" --model "$model" --encode-file "$tmp/special.txt" >"$tmp/special_ids.txt"
got=$(sed -n 1p "$tmp/special_ids.txt")
if [ "$got" = "$want" ] && [ "$(sed -n 2p "$tmp/special_ids.txt")" = "1" ] && [ -z "$(seg 5 | grep -v '^$' | grep -x 1)" ]; then
    passed=$((passed + 1))
else
    fail "special-token text: ours '$got', want '$want' (and '<s>' alone -> 1)"
fi

# Id lists an LLM could generate: BOS/EOS/UNK inside, byte pieces that form whole, split and
# broken UTF-8 (E6 97 8F = 族; F0 9F 98 80 = 😀; lone E6; EF BF BD = U+FFFD; overlong C0 80;
# surrogate ED A0 80), a control token inside a byte run, "▁" pieces at the start.
for ids in \
    '1 267 267' \
    '418 418 267' \
    '1 418 2 267' \
    '0 267 0' \
    '233 154 146 267 243 162 155 131' \
    '267 233 154' \
    '233 2 154 146' \
    '242 194 192 36' \
    '195 131 36 240 163 131' \
    '1 4 13 68 247 162' \
    '2 1 0 418'; do
    spm_text=$(printf '%s\n' "$ids" | spm_decode --model="$model" --input_format=id)
    our_text=$("$bin" --model "$model" --decode-ids "$ids")
    if [ "$spm_text" = "$our_text" ]; then
        passed=$((passed + 1))
    else
        fail "decode ids $ids"
        echo "  spm:  $spm_text"
        echo "  ours: $our_text"
    fi
done

# Invalid UTF-8: spm_encode falls back to bytes; we refuse it.
printf 'bad \377 byte\n' >"$tmp/bad.txt"
if [ "$("$bin" --model "$model" --encode-file "$tmp/bad.txt" 2>/dev/null)" = "ERROR" ]; then
    passed=$((passed + 1))
else
    fail "encode of invalid UTF-8 must fail"
fi

echo "test_tokenizer_spm: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
