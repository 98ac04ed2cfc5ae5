#!/bin/sh
# The command line end to end: --version, generate on a fixture (text and ids, --json shape),
# rope --json, and every kind of bad model directory: each must exit non-zero with one message
# naming the file and the field, and never crash (exit codes >= 128 are signals).
cd "$(dirname "$0")/.." || exit 1
BIN=${ROPESERVE_BIN:-build/ropeserve}
FIX=tests/fixtures/models
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }

# expect_fail NAME DIR PATTERN...: generate on DIR fails cleanly with a message matching every PATTERN
expect_fail() {
    name=$1; dir=$2; shift 2
    out=$($BIN generate --model "$dir" --prompt-ids 1,2,3 --max-tokens 2 2>&1); rc=$?
    if [ $rc -eq 0 ]; then bad "$name: exit 0"; return; fi
    if [ $rc -ge 128 ]; then bad "$name: crashed (exit $rc): $out"; return; fi
    for p in "$@"; do
        echo "$out" | grep -q -- "$p" || { bad "$name: message lacks '$p': $out"; return; }
    done
    ok
}

v=$($BIN --version)
echo "$v" | grep -Eq '^ropeserve [0-9]+\.[0-9]+\.[0-9]+ \(backends: cpu' && ok || bad "--version: $v"

# generate: ids as given, text with BOS, JSON shape
out=$($BIN generate --model $FIX/llama-gqa-none --prompt-ids 1,5,6,7 --max-tokens 3 --top-logprobs 2 --json 2>/dev/null)
/usr/bin/python3 - "$out" <<'EOF' && ok || bad "generate --json shape: $out"
import json, sys
d = json.loads(sys.argv[1])
assert d["prompt_ids"] == [1, 5, 6, 7]
assert len(d["ids"]) == 3 and len(d["top_logprobs"]) == 3
assert all(len(s) == 2 and set(s[0]) == {"id", "logprob"} for s in d["top_logprobs"])
assert d["top_logprobs"][0][0]["id"] == d["ids"][0]
assert isinstance(d["text"], str)
EOF
out=$($BIN generate --model $FIX/llama-gqa-none --prompt "Hello world" --max-tokens 2 --json 2>/dev/null)
echo "$out" | grep -q '"prompt_ids":\[1,' && ok || bad "text prompt gets BOS: $out"
out=$($BIN generate --model $FIX/llama-gqa-none --prompt "Hello" --max-tokens 4 2>/dev/null) && ok || bad "plain generate"
$BIN generate --model $FIX/llama-gqa-none --prompt-ids 1,9999 2>&1 | grep -q 'outside the vocabulary' && ok || bad "token id out of range"
$BIN generate --model $FIX/llama-gqa-none --prompt-ids 1,2 --max-tokens 5000 2>&1 | grep -q 'maximum context length is 2048' && ok || bad "context length"
$BIN generate --model $FIX/llama-gqa-none --bogus 2>&1 | grep -q "unknown flag '--bogus'" && ok || bad "unknown flag"
$BIN generate --model $FIX/llama-gqa-none --max-tokens abc 2>&1 | grep -q "max-tokens: expected an integer" && ok || bad "bad flag value"

# rope --json
out=$($BIN rope --model $FIX/llama-yarn-bf16 --json 2>/dev/null)
/usr/bin/python3 - "$out" <<'EOF' && ok || bad "rope --json: $out"
import json, sys
d = json.loads(sys.argv[1])
assert d["rope_type"] == "yarn" and d["rotary_dim"] == 16 and d["factor"] == 8
assert d["original_max_position_embeddings"] == 256
assert abs(d["attention_factor"] - (0.1 * __import__("math").log(8) + 1)) < 1e-6
assert len(d["inv_freq"]) == 8
# the README's per-pair divisors: 1, 1.28, 1.778, 2.909, 8, 8, 8, 8
base = [10000 ** (-2 * i / 16) for i in range(8)]
div = [b / f for b, f in zip(base, d["inv_freq"])]
want = [1, 1.28, 1.778, 2.909, 8, 8, 8, 8]
assert all(abs(a - b) / b < 2e-3 for a, b in zip(div, want)), div
EOF

# --- bad model directories ---
mk() { rm -rf "$T/$1"; cp -r $FIX/llama-linear-f16 "$T/$1"; }
ST=model.safetensors

mk trunc; head -c 100000 $FIX/llama-linear-f16/$ST > "$T/trunc/$ST"
expect_fail "truncated safetensors" "$T/trunc" "$T/trunc/$ST"

mk hdr; printf '\377\377\377\377\0\0\0\0{}' > "$T/hdr/$ST"
expect_fail "header length past the end" "$T/hdr" "$T/hdr/$ST" "header"

mk notjson; printf '\010\0\0\0\0\0\0\0{{{{{{{{' > "$T/notjson/$ST"
expect_fail "header not JSON" "$T/notjson" "$T/notjson/$ST"

# out-of-range offsets / wrong shape / missing tensor / unknown dtype: rewrite the real header
mk offsets; mk shape; mk missing; mk dtype
/usr/bin/python3 - "$FIX/llama-linear-f16/$ST" "$T" <<'EOF'
import json, struct, sys, os, copy
src, T = sys.argv[1], sys.argv[2]
raw = open(src, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n]); data = raw[8 + n:]
def write(name, h):
    js = json.dumps(h).encode(); js += b" " * (-len(js) % 8)
    open(os.path.join(T, name, "model.safetensors"), "wb").write(struct.pack("<Q", len(js)) + js + data)
h = copy.deepcopy(hdr); h["model.norm.weight"]["data_offsets"][1] += 10**9; write("offsets", h)
h = copy.deepcopy(hdr); h["model.norm.weight"]["shape"] = [32]; h["model.norm.weight"]["data_offsets"][1] -= 64; write("shape", h)
h = copy.deepcopy(hdr); del h["model.layers.1.mlp.up_proj.weight"]; write("missing", h)
h = copy.deepcopy(hdr); h["model.norm.weight"]["dtype"] = "I8"; write("dtype", h)
EOF
expect_fail "offsets out of range" "$T/offsets" "$T/offsets/$ST" "model.norm.weight"
expect_fail "wrong shape" "$T/shape" "model.norm.weight" "expected shape \[64\]"
expect_fail "missing tensor" "$T/missing" "model.layers.1.mlp.up_proj.weight"
expect_fail "unknown dtype" "$T/dtype" "model.norm.weight" "I8"

mk cfgjson; printf '{"hidden_size": 64,' > "$T/cfgjson/config.json"
expect_fail "malformed config.json" "$T/cfgjson" "$T/cfgjson/config.json"

mk cfgtype; sed 's/"num_attention_heads": 4/"num_attention_heads": "four"/' $FIX/llama-linear-f16/config.json > "$T/cfgtype/config.json"
expect_fail "config field of the wrong type" "$T/cfgtype" "config.json" "num_attention_heads"

mk cfgkv; sed 's/"num_key_value_heads": 2/"num_key_value_heads": 3/' $FIX/llama-linear-f16/config.json > "$T/cfgkv/config.json"
expect_fail "inconsistent config (kv heads)" "$T/cfgkv" "config.json" "num_key_value_heads"

mk cfgshape; sed 's/"intermediate_size": 172/"intermediate_size": 100/' $FIX/llama-linear-f16/config.json > "$T/cfgshape/config.json"
expect_fail "config disagrees with the weights" "$T/cfgshape" "mlp" "expected shape"

mk rope; sed 's/"factor": 4.0/"factor": -1/' $FIX/llama-linear-f16/config.json > "$T/rope/config.json"
expect_fail "bad rope_scaling.factor" "$T/rope" "factor"

mk notok; rm "$T/notok/tokenizer.model"
expect_fail "missing tokenizer" "$T/notok" "$T/notok" "no tokenizer.model or tokenizer.json"

mk noweights; rm "$T/noweights/$ST"
expect_fail "no weights" "$T/noweights" "$T/noweights"

expect_fail "no such directory" "$T/nothing-here" "$T/nothing-here/config.json"

echo "test_cli: $pass passed, $fail failed"
[ $fail -eq 0 ]
