#!/bin/sh
# test_server.sh - end to end: `ropeserve serve` on the tiny fixture model, driven with curl.
# Every endpoint, every error status of issue 3, streaming == non-streaming at temperature 0,
# 16 concurrent clients, clients disconnecting mid-stream (the engine must free the request:
# /metrics back to 0 running and 0 KV usage), auth/CORS/body/queue limits, SSE keep-alive while
# queued, SIGTERM drain (503 while draining, in-flight work finishes, exit 0).
# Ends with "test_server: N passed, N failed". ROPESERVE_BIN overrides build/ropeserve.
cd "$(dirname "$0")/.." || exit 1
BIN=${ROPESERVE_BIN:-build/ropeserve}
MODEL=tests/fixtures/models/llama-gqa-none
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
# nothing may hang the suite: every curl has a time limit (a later --max-time wins)
curl() { command curl --max-time 120 "$@"; }
pass=0
fail=0
T=$(mktemp -d)
PIDS=""
cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT INT TERM

ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
check() { # check NAME COMMAND...
    name=$1
    shift
    if "$@"; then ok; else bad "$name"; fi
}

if [ ! -x "$BIN" ]; then
    echo "FAIL: $BIN not built"
    echo "test_server: 0 passed, 1 failed"
    exit 1
fi

if ! command -v jq >/dev/null 2>&1; then
    echo "FAIL: jq is not installed (apt-get install jq; tools/install-deps.sh lists it)"
    echo "test_server: 0 passed, 1 failed"
    exit 1
fi

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_server NAME ARGS... -> sets URL_<NAME>, PID_<NAME>; waits for /health 200
start_server() {
    sname=$1
    shift
    port=$(free_port)
    "$BIN" serve --model "$MODEL" --port "$port" "$@" >"$T/log.$sname" 2>&1 &
    spid=$!
    PIDS="$PIDS $spid"
    eval "URL_$sname=http://127.0.0.1:$port; PID_$sname=$spid"
    i=0
    while [ $i -lt 300 ]; do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")
        [ "$code" = 200 ] && return 0
        kill -0 $spid 2>/dev/null || break
        sleep 0.1
        i=$((i + 1))
    done
    echo "server $sname did not start:"
    cat "$T/log.$sname"
    return 1
}

# req METHOD URL [BODY|""] [curl args...]: body -> $T/body, headers -> $T/hdr, prints the status
req() {
    m=$1
    u=$2
    shift 2
    d=${1:-}
    [ $# -gt 0 ] && shift
    if [ -n "$d" ]; then
        curl -s -o "$T/body" -D "$T/hdr" -w '%{http_code}' -X "$m" -H 'Content-Type: application/json' \
            --data-binary "$d" "$@" "$u"
    else
        curl -s -o "$T/body" -D "$T/hdr" -w '%{http_code}' -X "$m" "$@" "$u"
    fi
}
jqb() { jq -e "$@" "$T/body" >/dev/null 2>&1; }
# expect STATUS TYPE PARAM NAME: the last response is an OpenAI error with that status/param
expect_err() {
    st=$1 ty=$2 pa=$3 nm=$4
    if [ "$code" = "$st" ] && jqb --arg t "$ty" --arg p "$pa" \
        '(.error.message|type=="string") and .error.type==$t and
         (if $p=="" then .error.param==null else .error.param==$p end) and (.error|has("code"))'; then
        ok
    else
        bad "$nm: want $st $ty param '$pa', got $code $(head -c 300 "$T/body")"
    fi
}
metric() { # metric URL NAME -> value of the first sample of NAME
    curl -s "$1/metrics" | grep "^ropeserve:$2[{ ]" | head -n 1 | awk '{print $NF}'
}

# SSE file -> JSON summary {"texts":{index:text},"finish":{index:reason},"done":bool,"valid":bool,...}
SSE_PY='
import json, sys
texts, finish, usage, valid, done, n, keep, roles = {}, {}, None, True, False, 0, 0, 0
for line in open(sys.argv[1], "rb").read().decode("utf-8").split("\n"):
    if line.startswith(": keep-alive"): keep += 1
    if not line.startswith("data: "): continue
    d = line[6:]
    if d == "[DONE]": done = True; continue
    try: o = json.loads(d)
    except Exception: valid = False; continue
    n += 1
    if o.get("usage"): usage = o["usage"]
    for c in o.get("choices", []):
        i = str(c["index"])
        if "delta" in c:
            texts[i] = texts.get(i, "") + (c["delta"].get("content") or "")
            if c["delta"].get("role") == "assistant": roles += 1
        else:
            texts[i] = texts.get(i, "") + c["text"]
        if c.get("finish_reason"): finish[i] = c["finish_reason"]
print(json.dumps({"texts": texts, "finish": finish, "usage": usage, "valid": valid,
                  "done": done, "chunks": n, "keepalive": keep, "roles": roles}))
'
sse() { $PY -c "$SSE_PY" "$1"; }

# Load-proof waiting: no fixed sleeps. HTTP_PY defines send(url, body) -> a socket with the request
# written, metric(url, name) and until(cond, secs) (polls every 50 ms; generous limits, never a
# timing assertion).
HTTP_PY='
import json, socket, sys, time, urllib.request, urllib.error
def send(url, body, path="/v1/completions"):
    host, port = url[7:].split(":")
    b = json.dumps(body).encode()
    s = socket.create_connection((host, int(port)), timeout=600)
    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (path.encode(), len(b)) + b)
    return s
def metric(url, name):
    with urllib.request.urlopen(url + "/metrics", timeout=60) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("ropeserve:" + name):
                return float(line.split()[-1])
    return 0.0
def until(cond, secs=120):
    t = time.time() + secs
    while time.time() < t:
        if cond():
            return True
        time.sleep(0.05)
    return False
def read_until(s, marker, out=None):
    buf = b""
    while marker not in buf:
        d = s.recv(65536)
        if not d:
            break
        buf += d
    if out is not None:
        out.write(buf)
    return buf
def dechunk(raw):
    body, rest = raw.split(b"\r\n\r\n", 1)[1], b""
    while body:
        size, _, body = body.partition(b"\r\n")
        n = int(size.split(b";")[0] or b"0", 16)
        if n == 0:
            break
        rest += body[:n]
        body = body[n + 2:]
    return rest
'

start_server A || { echo "test_server: 0 passed, 1 failed"; exit 1; }
A=$URL_A

# --------------------------------------------------------------------------------------------
# endpoints

code=$(req GET "$A/health")
check "/health 200 ok" [ "$code" = 200 ]
check "/health body" jqb '.status=="ok"'

code=$(req GET "$A/v1/models")
check "/v1/models 200" [ "$code" = 200 ]
check "/v1/models shape" jqb '.object=="list" and .data[0].id=="llama-gqa-none" and .data[0].object=="model"
    and .data[0].max_model_len==2048 and .data[0].rope.type=="default" and .data[0].rope.factor==1
    and (.data[0].rope|has("original_max_position_embeddings") and has("attention_factor"))'

code=$(req POST "$A/v1/completions" '{"prompt":"Hello world","max_tokens":8,"temperature":0,"ignore_eos":true}')
check "completions 200" [ "$code" = 200 ]
check "completions shape" jqb '.object=="text_completion" and (.id|startswith("cmpl-")) and (.created|type=="number")
    and .model=="llama-gqa-none" and (.choices|length)==1 and .choices[0].index==0
    and (.choices[0].text|type=="string") and .choices[0].finish_reason=="length"
    and .choices[0].logprobs==null and .usage.completion_tokens==8
    and .usage.total_tokens==(.usage.prompt_tokens+8)'
cp "$T/body" "$T/greedy8"

code=$(req POST "$A/v1/completions" '{"prompt":"Hello world","max_tokens":8,"temperature":0,"ignore_eos":true,"model":"llama-gqa-none"}')
check "deterministic at temperature 0" sh -c "[ '$code' = 200 ] && [ \"\$(jq -c .choices[0].text '$T/body')\" = \"\$(jq -c .choices[0].text '$T/greedy8')\" ]"

code=$(req POST "$A/v1/completions" '{"prompt":[1,15,300,301],"max_tokens":3,"temperature":0}')
check "token-id prompt" sh -c "[ '$code' = 200 ] && jq -e '.usage.prompt_tokens==4' '$T/body' >/dev/null"

code=$(req POST "$A/v1/completions" '{"prompt":["a b","c d",[1,20,30]],"max_tokens":2,"temperature":0}')
check "batch prompts: one choice each, in order" sh -c "[ '$code' = 200 ] && jq -e '[.choices[].index]==[0,1,2]' '$T/body' >/dev/null"

code=$(req POST "$A/v1/completions" '{"prompt":"x","max_tokens":4,"n":3,"temperature":1,"seed":7}')
check "n=3" sh -c "[ '$code' = 200 ] && jq -e '(.choices|length)==3 and .usage.completion_tokens<=12' '$T/body' >/dev/null"

code=$(req POST "$A/v1/completions" '{"prompt":"Hello world","max_tokens":6,"temperature":0,"logprobs":3}')
check "logprobs" sh -c "[ '$code' = 200 ] && jq -e '.choices[0].logprobs as \$l | (\$l.tokens|length)==.usage.completion_tokens
    and (\$l.token_logprobs|all(. <= 0)) and (\$l.top_logprobs|all(length>=3 and length<=4))
    and (\$l.text_offset|length)==(\$l.tokens|length)' '$T/body' >/dev/null"

code=$(req POST "$A/v1/completions" '{"prompt":"Hello world","max_tokens":0,"echo":true,"logprobs":1}')
check "echo + logprobs + max_tokens 0 scores the prompt" sh -c "[ '$code' = 200 ] && jq -e '.choices[0].text==\"Hello world\"
    and .usage.completion_tokens==0 and (.choices[0].logprobs.tokens|length)==.usage.prompt_tokens
    and .choices[0].logprobs.token_logprobs[0]==null and .choices[0].logprobs.top_logprobs[0]==null
    and (.choices[0].logprobs.token_logprobs[1:]|all(type==\"number\" and . <= 0))' '$T/body' >/dev/null"

code=$(req POST "$A/v1/completions" '{"prompt":"Hello world","max_tokens":3,"echo":true,"temperature":0,"ignore_eos":true}')
check "echo prepends the prompt" sh -c "[ '$code' = 200 ] && jq -e '.choices[0].text|startswith(\"Hello world\")' '$T/body' >/dev/null"

# stop string: cut the greedy text at a substring of its own
code=$(req POST "$A/v1/completions" '{"prompt":"Once upon a time","max_tokens":40,"temperature":0,"ignore_eos":true}')
cp "$T/body" "$T/long40"
STOP=$($PY -c '
import json,sys
t=json.load(open(sys.argv[1]))["choices"][0]["text"]
for i in range(4, len(t)-2):
    s=t[i:i+2]
    if s.strip() and "\ufffd" not in s and "\\" not in s and "\"" not in s: print(json.dumps(s)); break
' "$T/long40")
if [ -n "$STOP" ]; then
    code=$(req POST "$A/v1/completions" "{\"prompt\":\"Once upon a time\",\"max_tokens\":40,\"temperature\":0,\"ignore_eos\":true,\"stop\":[\"zzzz\",$STOP]}")
    cp "$T/body" "$T/stopped"
    check "stop string truncates, finish stop, stop_reason" $PY -c '
import json,sys
full=json.load(open(sys.argv[1]))["choices"][0]["text"]
c=json.load(open(sys.argv[2]))["choices"][0]
stop=json.loads(sys.argv[3])
sys.exit(0 if c["text"]==full[:full.index(stop)] and c["finish_reason"]=="stop" and c["stop_reason"]==stop else 1)
' "$T/long40" "$T/stopped" "$STOP"
    curl -sN "$A/v1/completions" -d "{\"prompt\":\"Once upon a time\",\"max_tokens\":40,\"temperature\":0,\"ignore_eos\":true,\"stop\":$STOP,\"stream\":true}" >"$T/stopstream"
    check "stop string streaming == non-streaming" $PY -c '
import json,sys
a=json.loads(sys.argv[1]); b=json.load(open(sys.argv[2]))["choices"][0]
sys.exit(0 if a["texts"]["0"]==b["text"] and a["finish"]["0"]=="stop" else 1)
' "$(sse "$T/stopstream")" "$T/stopped"
else
    bad "no stop string candidate in $(cat "$T/long40")"
fi

# logit_bias forces a token: every generated token is id 300
code=$(req POST "$A/v1/completions" '{"prompt":"Hi","max_tokens":4,"temperature":0,"logit_bias":{"300":100},"ignore_eos":true}')
TXT=$(jq -r .choices[0].text "$T/body")
code2=$(curl -s "$A/detokenize" -d '{"tokens":[300,300,300,300]}' | jq -r .prompt)
check "logit_bias forces the token" [ "$code" = 200 -a "$TXT" = "$code2" ]

code=$(req POST "$A/v1/chat/completions" '{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi there"}],"max_tokens":6,"temperature":0}')
check "chat 200" [ "$code" = 200 ]
check "chat shape" jqb '.object=="chat.completion" and (.id|startswith("chatcmpl-")) and .choices[0].message.role=="assistant"
    and (.choices[0].message.content|type=="string") and (.choices[0].finish_reason|IN("stop","length"))
    and .usage.prompt_tokens>5'
cp "$T/body" "$T/chat6"

code=$(req POST "$A/v1/chat/completions" '{"messages":[{"role":"user","content":"Hi there"}],"max_completion_tokens":5,"temperature":0,"logprobs":true,"top_logprobs":2,"ignore_eos":true}')
check "chat logprobs" sh -c "[ '$code' = 200 ] && jq -e '(.choices[0].logprobs.content|length)==5 and
    (.choices[0].logprobs.content|all((.top_logprobs|length)==2 and (.bytes|type==\"array\") and .logprob<=0))' '$T/body' >/dev/null"

# --------------------------------------------------------------------------------------------
# streaming == non-streaming at temperature 0

curl -sN "$A/v1/completions" -d '{"prompt":"Once upon a time","max_tokens":40,"temperature":0,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}' >"$T/s1"
S1=$(sse "$T/s1")
check "stream: valid JSON chunks and [DONE]" $PY -c 'import json,sys; a=json.loads(sys.argv[1]); sys.exit(0 if a["valid"] and a["done"] and a["chunks"]>=2 else 1)' "$S1"
check "stream text == non-stream text" $PY -c '
import json,sys
a=json.loads(sys.argv[1]); b=json.load(open(sys.argv[2]))
sys.exit(0 if a["texts"]["0"]==b["choices"][0]["text"] and a["finish"]["0"]==b["choices"][0]["finish_reason"] else 1)
' "$S1" "$T/long40"
check "stream include_usage" $PY -c 'import json,sys; a=json.loads(sys.argv[1]); sys.exit(0 if a["usage"] and a["usage"]["completion_tokens"]==40 else 1)' "$S1"
check "stream content-type" sh -c "curl -sN -D - -o /dev/null '$A/v1/completions' -d '{\"prompt\":\"a\",\"max_tokens\":1,\"stream\":true}' | grep -qi '^content-type: text/event-stream'"

curl -sN "$A/v1/chat/completions" -d '{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi there"}],"max_tokens":6,"temperature":0,"stream":true}' >"$T/s2"
S2=$(sse "$T/s2")
check "chat stream == non-stream, role first" $PY -c '
import json,sys
a=json.loads(sys.argv[1]); b=json.load(open(sys.argv[2]))
sys.exit(0 if a["valid"] and a["done"] and a["roles"]==1 and a["texts"]["0"]==b["choices"][0]["message"]["content"] else 1)
' "$S2" "$T/chat6"

curl -sN "$A/v1/completions" -d '{"prompt":"x","max_tokens":5,"n":2,"temperature":0,"ignore_eos":true,"stream":true,"logprobs":2}' >"$T/s3"
check "stream n=2 with logprobs" $PY -c 'import json,sys; a=json.loads(sys.argv[1]); sys.exit(0 if a["valid"] and a["done"] and sorted(a["finish"])==["0","1"] and a["texts"]["0"]==a["texts"]["1"] else 1)' "$(sse "$T/s3")"

# short generations finish before the first SSE write: nothing may be lost
for mt in 1 2 3; do
    curl -s "$A/v1/chat/completions" -d "{\"messages\":[{\"role\":\"user\",\"content\":\"Hey\"}],\"max_tokens\":$mt,\"temperature\":0,\"ignore_eos\":true}" >"$T/cs"
    curl -sN "$A/v1/chat/completions" -d "{\"messages\":[{\"role\":\"user\",\"content\":\"Hey\"}],\"max_tokens\":$mt,\"temperature\":0,\"ignore_eos\":true,\"stream\":true}" >"$T/css"
    check "chat stream == non-stream, max_tokens $mt" $PY -c '
import json,sys
a=json.loads(sys.argv[1]); b=json.load(open(sys.argv[2]))
sys.exit(0 if a["done"] and a["roles"]==1 and a["texts"]["0"]==b["choices"][0]["message"]["content"] and a["finish"]["0"]=="length" else 1)
' "$(sse "$T/css")" "$T/cs"
    curl -s "$A/v1/completions" -d "{\"prompt\":\"Hey\",\"max_tokens\":$mt,\"temperature\":0,\"ignore_eos\":true,\"echo\":true}" >"$T/cs"
    curl -sN "$A/v1/completions" -d "{\"prompt\":\"Hey\",\"max_tokens\":$mt,\"temperature\":0,\"ignore_eos\":true,\"echo\":true,\"stream\":true}" >"$T/css"
    check "echo stream == non-stream, max_tokens $mt" $PY -c '
import json,sys
a=json.loads(sys.argv[1]); b=json.load(open(sys.argv[2]))
sys.exit(0 if a["done"] and a["texts"]["0"]==b["choices"][0]["text"] else 1)
' "$(sse "$T/css")" "$T/cs"
done

# --------------------------------------------------------------------------------------------
# tokenize / detokenize / metrics

code=$(req POST "$A/tokenize" '{"prompt":"Hello world","add_special_tokens":false}')
check "tokenize" sh -c "[ '$code' = 200 ] && jq -e '.count==(.tokens|length) and .max_model_len==2048 and .count>0' '$T/body' >/dev/null"
TOKS=$(jq -c .tokens "$T/body")
code=$(req POST "$A/detokenize" "{\"tokens\":$TOKS}")
check "detokenize round trip" sh -c "[ '$code' = 200 ] && jq -e '.prompt==\"Hello world\"' '$T/body' >/dev/null"
code=$(req POST "$A/tokenize" '{"messages":[{"role":"user","content":"Hi"}]}')
check "tokenize messages" sh -c "[ '$code' = 200 ] && jq -e '.count>2' '$T/body' >/dev/null"

curl -s "$A/metrics" >"$T/metrics"
for m in num_requests_running num_requests_waiting kv_cache_usage_perc prompt_tokens_total \
    generation_tokens_total 'request_success_total{.*finished_reason="length"' \
    time_to_first_token_seconds_bucket time_per_output_token_seconds_bucket \
    e2e_request_latency_seconds_bucket; do
    check "/metrics has $m" grep -q "^ropeserve:$m" "$T/metrics"
done
check "/metrics generation tokens counted" [ "$(metric "$A" generation_tokens_total | cut -d. -f1)" -gt 50 ]

# --------------------------------------------------------------------------------------------
# errors

code=$(req POST "$A/v1/completions" '{"prompt": "x",')
expect_err 400 invalid_request_error "" "malformed JSON"
code=$(req POST "$A/v1/completions" '{"prompt":"x","temperature":"hot"}')
expect_err 400 invalid_request_error temperature "wrong type"
code=$(req POST "$A/v1/completions" '{"prompt":"x","max_tokens":-1}')
expect_err 400 invalid_request_error max_tokens "out of range"
code=$(req POST "$A/v1/completions" '{"prompt":"x","logprobs":21}')
expect_err 400 invalid_request_error logprobs "logprobs > 20"
code=$(req POST "$A/v1/completions" '{"prompt":[1,2,99999]}')
expect_err 400 invalid_request_error prompt "unknown token id"
code=$(req POST "$A/v1/completions" "$(printf '{"prompt":"\377\376"}')")
expect_err 400 invalid_request_error "" "invalid UTF-8"
code=$(req POST "$A/v1/completions" '{"prompt":"x","suffix":"y"}')
expect_err 400 invalid_request_error suffix "suffix unsupported"
code=$(req POST "$A/v1/chat/completions" '{"messages":[{"role":"robot","content":"x"}]}')
expect_err 400 invalid_request_error messages "bad chat role"
code=$(req POST "$A/v1/completions" '{"prompt":"Hello","max_tokens":5000}')
expect_err 400 invalid_request_error max_tokens "context_length_exceeded (max_tokens)"
check "context message names both numbers" jqb '.error.code=="context_length_exceeded" and (.error.message|test("2048")) and (.error.message|test("5000"))'
LONG=$($PY -c 'print(list(range(5,505))*5)')
code=$(req POST "$A/v1/completions" "{\"prompt\":$LONG,\"max_tokens\":1}")
expect_err 400 invalid_request_error prompt "context_length_exceeded (prompt)"
check "long prompt code" jqb '.error.code=="context_length_exceeded" and (.error.message|test("2500"))'
code=$(req POST "$A/v1/completions" '{"prompt":"x","model":"gpt-4"}')
expect_err 404 not_found_error model "unknown model"
code=$(req GET "$A/v1/nothing")
expect_err 404 not_found_error "" "unknown route"
code=$(req GET "$A/v1/completions")
expect_err 405 invalid_request_error "" "wrong method"
check "405 has Allow" grep -qi '^allow: POST' "$T/hdr"
code=$(req POST "$A/health" '{}')
check "POST /health 405" [ "$code" = 405 ]
code=$(req POST "$A/v1/completions" "" )
expect_err 400 invalid_request_error "" "empty body"
code=$(req POST "$A/v1/completions" 'null')
expect_err 400 invalid_request_error "" "JSON null body"
DEEP=$($PY -c 'print("{\"prompt\":" + "["*5000 + "]"*5000 + "}")')
code=$(req POST "$A/v1/completions" "$DEEP")
expect_err 400 invalid_request_error "" "5000-deep JSON"
code=$(req POST "$A/v1/completions" '{"prompt":"a\u0000b","max_tokens":1}')
check "escaped NUL in prompt: no crash ($code)" [ "$code" = 200 -o "$code" = 400 ]
check "server alive after errors" [ "$(curl -s -o /dev/null -w '%{http_code}' "$A/health")" = 200 ]

# --------------------------------------------------------------------------------------------
# 16 concurrent clients: every answer identical to the serial greedy one

i=0
CP=""
while [ $i -lt 16 ]; do
    curl -s --max-time 60 "$A/v1/completions" -d '{"prompt":"Once upon a time","max_tokens":40,"temperature":0,"ignore_eos":true}' >"$T/c$i" &
    CP="$CP $!"
    i=$((i + 1))
done
for p in $CP; do wait $p; done
same=0
i=0
WANT=$(jq -c .choices[0].text "$T/long40")
while [ $i -lt 16 ]; do
    [ "$(jq -c .choices[0].text "$T/c$i" 2>/dev/null)" = "$WANT" ] && same=$((same + 1))
    i=$((i + 1))
done
check "16 concurrent clients, same greedy text ($same/16)" [ $same = 16 ]

# --------------------------------------------------------------------------------------------
# client disconnects: the engine frees the request

ABORT0=$(curl -s "$A/metrics" | grep 'finished_reason="abort"' | awk '{print $NF}')
# a stream that hangs up after its first chunk; then a non-streaming request that hangs up once
# the server runs it (no fixed delays: a loaded machine only makes it slower)
$PY -c "$HTTP_PY
url = sys.argv[1]
s = send(url, {'prompt': 'x', 'max_tokens': 2040, 'ignore_eos': True, 'stream': True})
read_until(s, b'data: ')
s.close()
until(lambda: metric(url, 'num_requests_running') == 0)
s = send(url, {'prompt': 'x', 'max_tokens': 2040, 'ignore_eos': True})
until(lambda: metric(url, 'num_requests_running') >= 1)
s.close()
" "$A"
i=0
while [ $i -lt 1200 ]; do
    r=$(metric "$A" num_requests_running)
    k=$(metric "$A" kv_cache_usage_perc)
    [ "$r" = 0 ] && [ "$k" = 0 ] && break
    sleep 0.1
    i=$((i + 1))
done
check "after disconnects: num_requests_running 0" [ "$(metric "$A" num_requests_running)" = 0 ]
check "after disconnects: kv_cache_usage_perc 0" [ "$(metric "$A" kv_cache_usage_perc)" = 0 ]
ABORT1=$(curl -s "$A/metrics" | grep 'finished_reason="abort"' | awk '{print $NF}')
check "disconnected requests counted as abort ($ABORT0 -> $ABORT1)" [ "$ABORT1" -ge $((ABORT0 + 2)) ]
check "server alive after disconnects" [ "$(curl -s -o /dev/null -w '%{http_code}' "$A/health")" = 200 ]

# --------------------------------------------------------------------------------------------
# server B: key file, CORS, body limit, queue limit, served name, keep-alive

echo "s3cret-key" >"$T/key"
start_server B --api-key-file "$T/key" --cors-origin http://example.com --max-body-mb 0.01 \
    --max-queue 1 --max-num-seqs 1 --served-model-name tiny || bad "server B start"
B=$URL_B
code=$(req GET "$B/health")
check "B: /health open without key" [ "$code" = 200 ]
code=$(req GET "$B/v1/models")
expect_err 401 authentication_error "" "B: no key"
code=$(req GET "$B/v1/models" "" -H 'Authorization: Bearer wrong')
expect_err 401 authentication_error "" "B: wrong key"
code=$(req GET "$B/v1/models" "" -H 'Authorization: Bearer s3cret-key')
check "B: right key, served name" sh -c "[ '$code' = 200 ] && jq -e '.data[0].id==\"tiny\"' '$T/body' >/dev/null"
code=$(req POST "$B/v1/completions" '{"prompt":"x","max_tokens":1,"model":"tiny"}' -H 'Authorization: Bearer s3cret-key' -H 'Origin: http://example.com')
check "B: completion with key + served name" [ "$code" = 200 ]
check "B: CORS header" grep -qi '^access-control-allow-origin: http://example.com' "$T/hdr"
code=$(curl -s -o /dev/null -D "$T/hdr" -w '%{http_code}' -X OPTIONS -H 'Origin: http://example.com' \
    -H 'Access-Control-Request-Method: POST' "$B/v1/completions")
check "B: CORS preflight 204" sh -c "[ '$code' = 204 ] && grep -qi '^access-control-allow-methods:' '$T/hdr'"
BIG=$($PY -c 'print("{\"prompt\":\"" + "a"*20000 + "\"}")')
code=$(req POST "$B/v1/completions" "$BIG" -H 'Authorization: Bearer s3cret-key')
expect_err 413 invalid_request_error "" "B: body over --max-body-mb"
code=$(req POST "$B/v1/completions" "$BIG" -H 'Authorization: Bearer s3cret-key' -H 'Transfer-Encoding: chunked')
expect_err 413 invalid_request_error "" "B: chunked body over --max-body-mb"

# queue full: one running + one waiting, the rest 429 with Retry-After
i=0
CP=""
while [ $i -lt 6 ]; do
    curl -s --max-time 60 -D "$T/q$i.h" -o "$T/q$i" -w '%{http_code}' -H 'Authorization: Bearer s3cret-key' \
        "$B/v1/completions" -d '{"prompt":"x","max_tokens":1500,"ignore_eos":true}' >"$T/q$i.code" &
    CP="$CP $!"
    i=$((i + 1))
done
for p in $CP; do wait $p; done
n429=0
ra=0
i=0
while [ $i -lt 6 ]; do
    if [ "$(cat "$T/q$i.code")" = 429 ]; then
        n429=$((n429 + 1))
        grep -qi '^retry-after: [0-9]' "$T/q$i.h" && jq -e '.error.type=="rate_limit_error"' "$T/q$i" >/dev/null && ra=$((ra + 1))
    fi
    i=$((i + 1))
done
check "B: queue full -> 429 ($n429 of 6)" [ $n429 -ge 1 ]
check "B: 429 carries Retry-After and a JSON error" [ $ra = $n429 ]

kill -TERM "$PID_B" 2>/dev/null
wait "$PID_B" 2>/dev/null

# --------------------------------------------------------------------------------------------
# server C (one sequence at a time): a stream queued behind long requests gets ": keep-alive"

start_server C --max-num-seqs 1 || bad "server C start"
C=$URL_C
# 40 long requests queue up; a stream queued behind them must get ": keep-alive" (sent after 5 s
# of silence); then the long ones hang up (the server cancels them) and the stream completes.
# Nothing depends on how fast the machine is: the queue is cut only after the comment arrived.
$PY -c "$HTTP_PY
url, out = sys.argv[1], open(sys.argv[2], 'wb')
longs = [send(url, {'prompt': 'x', 'max_tokens': 1900, 'ignore_eos': True}) for _ in range(40)]
until(lambda: metric(url, 'num_requests_waiting') >= 20, 300)
s = send(url, {'prompt': 'x', 'max_tokens': 2, 'stream': True})
head = read_until(s, b': keep-alive', out)
for l in longs:
    l.close()
read_until(s, b'data: [DONE]', out)
" "$C" "$T/ka.raw"
$PY -c "$HTTP_PY
open(sys.argv[2], 'wb').write(dechunk(open(sys.argv[1], 'rb').read()))
" "$T/ka.raw" "$T/ka"
KA=$(sse "$T/ka")
check "C: keep-alive comment while queued behind 40 long requests ($KA)" \
    $PY -c 'import json,sys; a=json.loads(sys.argv[1]); sys.exit(0 if a["keepalive"]>=1 and a["done"] else 1)' "$KA"
kill -TERM "$PID_C" 2>/dev/null
wait "$PID_C" 2>/dev/null

# --------------------------------------------------------------------------------------------
# server D: --request-timeout cancels a request that runs too long (200, finish_reason "abort")

start_server D --request-timeout 1 --max-num-seqs 1 || bad "server D start"
D=$URL_D
i=0
CP=""
while [ $i -lt 8 ]; do
    curl -s -o "$T/d$i" -w '%{http_code}' "$D/v1/completions" -d '{"prompt":"x","max_tokens":1900,"ignore_eos":true}' >"$T/d$i.code" &
    CP="$CP $!"
    i=$((i + 1))
done
for p in $CP; do wait $p; done
n200=0
nab=0
i=0
while [ $i -lt 8 ]; do
    [ "$(cat "$T/d$i.code")" = 200 ] && n200=$((n200 + 1))
    jq -e '.choices[0].finish_reason=="abort"' "$T/d$i" >/dev/null 2>&1 && nab=$((nab + 1))
    i=$((i + 1))
done
check "D: --request-timeout: all 200 ($n200/8), some cut with finish_reason abort ($nab)" [ $n200 = 8 -a $nab -ge 1 ]
check "D: timeout logged" grep -q 'request-timeout 1 s passed' "$T/log.D"
kill -TERM "$PID_D" 2>/dev/null
wait "$PID_D" 2>/dev/null

# --------------------------------------------------------------------------------------------
# SIGTERM: 503 while draining, the in-flight work finishes, exit 0. A request whose body is still
# arriving holds the drain open (its "100 Continue" says the server counts it), so the checks while
# draining do not race the stream's speed; then its body completes (503: draining) and the stream
# runs to its end.
$PY -c "$HTTP_PY
import json, os, signal
url, pid, out = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], 'wb')
host, port = url[7:].split(':')
s = send(url, {'prompt': 'x', 'max_tokens': 1800, 'ignore_eos': True, 'stream': True})
head = read_until(s, b'data: ')
slow = socket.create_connection((host, int(port)), timeout=600)
body = json.dumps({'prompt': 'x', 'max_tokens': 1}).encode()
slow.sendall(b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n'
             b'Content-Length: %d\r\n\r\n' % len(body) + body[:1])
cont = read_until(slow, b'\r\n\r\n')
os.kill(pid, signal.SIGTERM)
def health():
    try:
        return urllib.request.urlopen(url + '/health', timeout=60).status
    except urllib.error.HTTPError as e:
        return e.code
draining = until(lambda: health() == 503, 600)
r = {'continue': cont.startswith(b'HTTP/1.1 100'), 'health503': draining}
try:
    urllib.request.urlopen(urllib.request.Request(url + '/v1/completions', data=body, headers={'Content-Type': 'application/json'}), timeout=60)
    r['new'] = 200
except urllib.error.HTTPError as e:
    r['new'], r['new_body'] = e.code, json.loads(e.read())
slow.sendall(body[1:])
r['slow'] = int(read_until(slow, b'\r\n\r\n').split(b' ')[1])
out.write(head + read_until(s, b'data: [DONE]'))
print(json.dumps(r))
" "$A" "$PID_A" "$T/drain.raw" >"$T/drain.json"
$PY -c "$HTTP_PY
open(sys.argv[2], 'wb').write(dechunk(open(sys.argv[1], 'rb').read()))
" "$T/drain.raw" "$T/drain"
DJ=$(cat "$T/drain.json")
check "draining: a slow upload held the drain open (100 Continue): $DJ" $PY -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1])["continue"] else 1)' "$DJ"
check "draining: /health 503" $PY -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1])["health503"] else 1)' "$DJ"
check "draining: new request 503 service_unavailable_error" $PY -c 'import json,sys; a=json.loads(sys.argv[1]); sys.exit(0 if a["new"]==503 and a["new_body"]["error"]["type"]=="service_unavailable_error" and a["slow"]==503 else 1)' "$DJ"
DR=$(sse "$T/drain")
check "draining: in-flight stream finished ($DR)" $PY -c 'import json,sys; a=json.loads(sys.argv[1]); sys.exit(0 if a["done"] and a["finish"].get("0")=="length" else 1)' "$DR"
wait "$PID_A"
rc=$?
check "SIGTERM exit status 0 (got $rc)" [ $rc = 0 ]
check "one log line per request" grep -q 'cmpl-.*prompt [0-9]* tok, generated [0-9]* tok, ttft' "$T/log.A"

echo "test_server: $pass passed, $fail failed"
[ $fail = 0 ]
