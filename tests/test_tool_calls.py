#!/usr/bin/env python3
"""test_tool_calls.py - tool calling (--enable-auto-tool-choice --tool-call-parser hermes|llama3_json).

  parsers     server/tools.c (through build/tests/test_tools) against Python itself on a corpus of
              fixed model outputs: json.dumps(json.loads(x), ensure_ascii=False) byte for byte, and
              vLLM's extract_tool_calls for both formats, restated below from vLLM's source
              (vllm/tool_parsers/hermes_tool_parser.py, llama_tool_parser.py); the streaming
              hold-back never releases text that the final parse turns into a tool call.
  end to end  a tiny random Qwen2 checkpoint whose tokenizer has extra added tokens whose text is a
              whole model answer (a hermes tool call, content + tool call, a Llama JSON call), so
              that a logit_bias on one token makes the random model "answer" it: the response
              shapes (tool_calls with ids, content null, finish_reason "tool_calls", stop_reason),
              parallel_tool_calls, streaming deltas (name first, then arguments, then the finish),
              tool_choice none/auto/required/named and the 400s, the start-up flags; and the same
              through the official openai npm client (its stream accumulator) when it is installed.
Ends with "test_tool_calls: N passed, N failed". ROPESERVE_BIN overrides build/ropeserve.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(ROOT)
BIN = os.environ.get("ROPESERVE_BIN", "build/ropeserve")
TOOLS_BIN = "build/tests/test_tools"
MAKE_MODEL = "build/tools/make_model"
E2E = "tests/e2e"
passed = failed = 0
procs = []


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL: %s %s" % (name, str(detail)[:1500]))


# ---------------------------------------------------------------------------------------------
# references: Python's json, and vLLM's two extract_tool_calls restated

def py_json(text):
    try:
        v = json.loads(text)
        out = json.dumps(v, ensure_ascii=False)
        out.encode("utf-8")  # a lone surrogate cannot go out in a response
        return out
    except Exception:
        return None


def ref_hermes(text):
    """Hermes2ProToolParser.extract_tool_calls: (called, content, [(name, arguments)])."""
    if "<tool_call>" not in text:
        return False, text, []
    try:
        calls = []
        for m in re.findall(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", text, re.DOTALL):
            fc = json.loads(m[0] if m[0] else m[1])
            if isinstance(fc["arguments"], str):
                fc["arguments"] = json.loads(fc["arguments"])
            if not isinstance(fc["name"], str):
                raise ValueError("name")  # pydantic's FunctionCall.name: str
            fc["name"].encode("utf-8")  # a lone surrogate: vLLM could not send the response either
            args = json.dumps(fc["arguments"], ensure_ascii=False)
            args.encode("utf-8")
            calls.append((fc["name"], args))
        content = text[:text.find("<tool_call>")]
        return True, content if content else None, calls
    except Exception:
        return False, text, []


def ref_llama3(text):
    """Llama3JsonToolParser.extract_tool_calls."""
    if not ("<|python_tag|>" in text or "{" in text):
        return False, text, []
    dec = json.JSONDecoder()
    end_index = -1
    calls = []
    try:
        for m in re.finditer(r"\{", text):
            start = m.start()
            if start <= end_index:
                continue
            obj, end = dec.raw_decode(text[start:])
            end_index = start + end
            name = obj["name"]
            args = obj["arguments"] if "arguments" in obj else obj["parameters"]
            if not isinstance(name, str):
                raise ValueError("name")
            name.encode("utf-8")
            a = json.dumps(args, ensure_ascii=False)
            a.encode("utf-8")
            calls.append((name, a))
    except Exception:
        return False, text, []
    if calls:
        return True, None, calls
    return False, text, []


JSON_CORPUS = [
    '{"a":1}', '[1, 2.0, 3.50, -0, -0.0, 1e3, 1E-7, 12345678901234567890123]', '"\\u00e9\\ud83d\\ude00"',
    '"\\ud800"', '"\\udfff"', '{"k": "v", "k": "w", "j": [], "k": null}', '  {"x" : {"y" : [true , false ,null]}}  ',
    'NaN', '[Infinity, -Infinity, 1e999, -1e999, 5e-324, 2.2250738585072014e-308]', '"tab\there"', '"\\t\\n\\r\\b\\f\\/"',
    '"\\u0000\\u001f\\u007f\\u0080"', '01', '-', '1.', '.5', '+1', '[1,]', '{"a" 1}', '{"a":1,}', "{'a': 1}", '',
    'true false', '"Z\u00fcrich \u4e2d\u6587 \U0001f600"', '[0.1, 0.2, 0.30000000000000004, 1/3]', '1e16', '1e15',
    '123456789.123456789', '0.000123', '0.0000123', '9007199254740993', '[1e22, 1e21, 1e-4, 1e-5, 100.0]',
    '{"nested": {"deep": [[[[{"x": 1.25e+2}]]]]}}', '"\\uD83D\\uDE00"', '"\\ud83d\\u0041"', '[-1.5e-10, 4.0e0]',
    '{"": ""}', '"\u2028\u2029"', '{"a": [1, "two", {"3": 4.5}]}', '[' * 50 + ']' * 50, 'nul', 'tru', '[nan]',
]

TOOLCALL_TEXTS = [
    "plain text", "", "<tool_call>", "</tool_call>", "<tool_call></tool_call>",
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
    'Let me check.\n<tool_call>\n{"name": "f", "arguments": {"x": 1.50, "y": [1e3, "\\u00e9"]}}\n</tool_call>',
    '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n<tool_call>{"name": "b", "arguments": {"k": null}}</tool_call>',
    '<tool_call>{"name": "a", "arguments": {}}</tool_call> trailing text after',
    '<tool_call>{"name": "a", "arguments": {"unclosed": true}}',
    '<tool_call>{"name": "a", "arguments": "{\\"s\\": 2.0}"}</tool_call>',
    '<tool_call>{"name": "a", "arguments": "not json"}</tool_call>',
    '<tool_call>{"arguments": {}, "name": "late_name"}</tool_call>',
    '<tool_call>{"name": "a"}</tool_call>', '<tool_call>{"name": 1, "arguments": {}}</tool_call>',
    '<tool_call>[1, 2]</tool_call>', '<tool_call>"str"</tool_call>', '<tool_call>{"name": "a", "arguments": {}}{}</tool_call>',
    'text <tool_ca', 'a < b and c > d', '<tool_call>{"name": "x", "arguments": {"a": 1, "a": 2}}</tool_call>',
    '<tool_call>{"name": "\\ud800", "arguments": {}}</tool_call>', '<tool_call>{"name": "n", "arguments": [NaN, Infinity]}</tool_call>',
    '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    '{"name": "get_weather", "arguments": {"city": "Z\u00fcrich", "days": 2.50}}',
    '{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"q": [1, 2]}}',
    'Here you go: {"name": "a", "parameters": {"x": 1}} hope it helps',
    '{"name": "a", "parameters": {}}{"name": "b", "parameters": {}}', 'json {not json}', '{"city": "Paris"}',
    '{"name": "a"}', '{"name": "a", "arguments": null, "parameters": {"p": 1}}', '{"name": "a", "parameters": 12345678901234567890}',
    '<|python_tag|>{"name": "a", "parameters": {}}', '{', '{"name": "a", "parameters": {"deep": {"er": {"est": []}}}} {"x": 1}',
    '  {"name": "lead", "parameters": {}}', 'emoji \U0001f600 {"name": "e", "parameters": {"s": "\U0001f600"}}',
]


def run_c(args, items):
    r = subprocess.run([TOOLS_BIN] + args, input=json.dumps(items), capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise RuntimeError(r.stderr)
    return json.loads(r.stdout)


def test_parsers():
    got = run_c(["--pyjson"], JSON_CORPUS)
    for text, g in zip(JSON_CORPUS, got):
        check("json %r: as Python's json.dumps(json.loads(x), ensure_ascii=False)" % text[:60], g == py_json(text),
              (g, py_json(text)))
    for parser, ref in (("hermes", ref_hermes), ("llama3_json", ref_llama3)):
        got = run_c(["--extract", parser], TOOLCALL_TEXTS)
        for text, g in zip(TOOLCALL_TEXTS, got):
            called, content, calls = ref(text)
            mine = (g["called"], g["content"], [tuple(c) for c in g["calls"]])
            check("%s %r: as vLLM's extract_tool_calls" % (parser, text[:70]), mine == (called, content, calls),
                  {"ours": mine, "vllm": (called, content, calls)})
            # streaming: the bytes released before the end never include what becomes a call
            safe = g["safe"]
            raw = text.encode("utf-8")
            if called and content is not None:
                limit = len(content.encode("utf-8"))
                check("%s %r: the stream holds the call back" % (parser, text[:50]), max(safe) <= limit, (safe, limit))
            if called and content is None and (parser == "hermes" or raw.startswith(b"{")):
                check("%s %r: the stream holds the whole answer" % (parser, text[:50]), max(safe) == 0, safe)


# ---------------------------------------------------------------------------------------------
# end to end

CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Z\u00fcrich", "days": 2.50}}\n</tool_call>'
MIXED_TEXT = 'Let me look that up. <tool_call>{"name": "get_time", "arguments": {"tz": "UTC"}}</tool_call>'
LLAMA_TEXT = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
MSGS = [{"role": "user", "content": "What is the weather in Zurich?"}]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_checkpoint(tmp):
    d = os.path.join(tmp, "qwen-tools")
    r = subprocess.run([MAKE_MODEL, "--out", d, "--preset", "qwen2-tiny", "--tokenizer", "none", "--seed", "7"],
                       capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise RuntimeError("make_model: " + r.stderr[-2000:])
    tok = json.load(open("tests/fixtures/tokenizers/qwen-nfc.json"))
    ids = {}
    nxt = max(t["id"] for t in tok["added_tokens"]) + 1
    for key, text, special in (("call", CALL_TEXT, False), ("mixed", MIXED_TEXT, False), ("llama", LLAMA_TEXT, False),
                               ("open_tag", "<tool_call>", True)):
        tok["added_tokens"].append({"id": nxt, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
                                    "normalized": False, "special": special})
        ids[key] = nxt
        nxt += 1
    json.dump(tok, open(os.path.join(d, "tokenizer.json"), "w"))
    json.dump({"chat_template": TEMPLATE, "eos_token": "<|im_end|>", "bos_token": None, "add_bos_token": False},
              open(os.path.join(d, "tokenizer_config.json"), "w"))
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg.update({"eos_token_id": 492, "bos_token_id": 490})
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    return d, ids


def start(model, *args):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    log = tempfile.TemporaryFile(mode="w+")
    p = subprocess.Popen([BIN, "serve", "--model", model, "--port", str(port), "--served-model-name", "m"] + list(args),
                         stdout=log, stderr=subprocess.STDOUT)
    procs.append(p)
    url = "http://127.0.0.1:%d" % port
    for _ in range(600):
        if p.poll() is not None:
            log.seek(0)
            return None, log.read()
        try:
            if urllib.request.urlopen(url + "/health", timeout=5).status == 200:
                return url, p
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.1)
    p.kill()
    return None, "did not start"


def stop(p):
    p.terminate()
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()


def call(url, body):
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def stream(url, body):
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(dict(body, stream=True)).encode(),
                                 headers={"Content-Type": "application/json"})
    chunks = []
    with urllib.request.urlopen(req, timeout=120) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    return chunks


def accumulate(chunks):
    """A streamed choice 0 as a client accumulates it: content, tool calls by index, finish."""
    content, calls, finish, stop_reason = None, {}, None, None
    for ch in chunks:
        for c in ch["choices"]:
            d = c.get("delta", {})
            if d.get("content"):
                content = (content or "") + d["content"]
            for t in d.get("tool_calls") or []:
                e = calls.setdefault(t["index"], {"id": None, "type": None, "name": "", "arguments": ""})
                e["id"] = t.get("id", e["id"])
                e["type"] = t.get("type", e["type"])
                f = t.get("function", {})
                e["name"] += f.get("name", "")
                e["arguments"] += f.get("arguments", "")
            if c.get("finish_reason"):
                finish, stop_reason = c["finish_reason"], c.get("stop_reason")
    return content, [calls[k] for k in sorted(calls)], finish, stop_reason


def msg_calls(m):
    return [(t["function"]["name"], t["function"]["arguments"]) for t in m.get("tool_calls") or []]


ID_RE = re.compile(r"^chatcmpl-tool-[0-9a-f]{32}$")


def test_hermes(url, ids):
    base = {"model": "m", "messages": MSGS, "tools": TOOLS, "temperature": 0}
    want_args = '{"city": "Z\u00fcrich", "days": 2.5}'
    st, r = call(url, dict(base, max_tokens=1, logit_bias={str(ids["call"]): 100}))
    c = r["choices"][0] if st == 200 else {}
    m = c.get("message", {})
    check("hermes: a tool call answer -> tool_calls, content null, finish_reason tool_calls",
          st == 200 and m.get("content") is None and msg_calls(m) == [("get_weather", want_args)] and
          c.get("finish_reason") == "tool_calls" and "stop_reason" in c, r)
    tc = (m.get("tool_calls") or [{}])[0]
    check("hermes: the call has an id and type function", ID_RE.match(tc.get("id", "")) and tc.get("type") == "function", tc)
    st, r = call(url, dict(base, max_tokens=2, logit_bias={str(ids["call"]): 100}))
    m = r["choices"][0]["message"] if st == 200 else {}
    tcs = m.get("tool_calls") or []
    check("hermes: two calls, two ids", st == 200 and len(tcs) == 2 and tcs[0]["id"] != tcs[1]["id"] and
          msg_calls(m) == [("get_weather", want_args)] * 2, r)
    st, r = call(url, dict(base, max_tokens=2, logit_bias={str(ids["call"]): 100}, parallel_tool_calls=False))
    check("hermes: parallel_tool_calls false keeps the first", st == 200 and
          len(r["choices"][0]["message"]["tool_calls"]) == 1, r)
    st, r = call(url, dict(base, max_tokens=1, logit_bias={str(ids["mixed"]): 100}))
    m = r["choices"][0]["message"] if st == 200 else {}
    check("hermes: content before the call", st == 200 and m.get("content") == "Let me look that up. " and
          msg_calls(m) == [("get_time", '{"tz": "UTC"}')], r)
    st, r = call(url, dict(base, max_tokens=3, logit_bias={str(ids["call"]): 100}, tool_choice="none"))
    m = r["choices"][0]["message"] if st == 200 else {}
    check("hermes: tool_choice none -> the text as content, no tool_calls",
          st == 200 and m.get("content") == CALL_TEXT * 3 and not m.get("tool_calls") and
          r["choices"][0]["finish_reason"] == "length", r)
    st, r = call(url, dict(base, max_tokens=4))
    m = r["choices"][0]["message"] if st == 200 else {}
    check("hermes: an answer without a call stays content", st == 200 and isinstance(m.get("content"), str) and
          not m.get("tool_calls") and r["choices"][0]["finish_reason"] in ("length", "stop"), r)
    # Hermes 2 Pro marks <tool_call> special: vLLM's parser decodes without skipping it
    st, r = call(url, dict(base, max_tokens=1, logit_bias={str(ids["open_tag"]): 100}))
    check("hermes: a special <tool_call> token reaches the parser (an empty call: content)",
          st == 200 and r["choices"][0]["message"]["content"] == "<tool_call>", r)
    st, r = call(url, dict(base, max_tokens=1, logit_bias={str(ids["open_tag"]): 100}, tool_choice="none"))
    check("hermes: ... and is left out as every special token without the parser",
          st == 200 and r["choices"][0]["message"]["content"] == "", r)
    # streaming: the deltas add up to the non-streamed message
    for label, bias, n in (("call", "call", 1), ("two calls", "call", 2), ("content + call", "mixed", 1)):
        body = dict(base, max_tokens=n, logit_bias={str(ids[bias]): 100})
        st, r = call(url, body)
        chunks = stream(url, body)
        content, calls, finish, _ = accumulate(chunks)
        m = r["choices"][0]["message"]
        check("hermes stream %s: deltas add up to the message" % label,
              content == m["content"] and [(t["name"], t["arguments"]) for t in calls] == msg_calls(m) and
              finish == "tool_calls" and all(ID_RE.match(t["id"] or "") and t["type"] == "function" for t in calls),
              {"stream": (content, calls, finish), "message": m})
        deltas = [d for ch in chunks for c in ch["choices"] for d in [c.get("delta", {})] if d.get("tool_calls")]
        shapes = [sorted(d["tool_calls"][0].keys()) + sorted(d["tool_calls"][0]["function"].keys()) for d in deltas]
        check("hermes stream %s: vLLM's delta shapes (id/type/index/name, then index/arguments)" % label,
              shapes == [["function", "id", "index", "type", "name"], ["function", "index", "arguments"]] * n, shapes)
        fin = [c for ch in chunks for c in ch["choices"] if c.get("finish_reason")]
        check("hermes stream %s: one finish chunk, after the calls, with stop_reason" % label,
              len(fin) == 1 and chunks[-1]["choices"] and chunks[-1]["choices"][0].get("finish_reason") == "tool_calls" and
              "stop_reason" in fin[0], fin)
    # tool_choice forms
    for label, extra, code in (
            ("required", {"tool_choice": "required"}, "unsupported_parameter"),
            ("named function", {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "unsupported_parameter"),
            ("named function not in tools", {"tool_choice": {"type": "function", "function": {"name": "nope"}}}, None),
            ("named without name", {"tool_choice": {"type": "function", "function": {}}}, None),
            ("unknown string", {"tool_choice": "sometimes"}, None),
            ("a number", {"tool_choice": 3}, None)):
        st, r = call(url, dict(base, max_tokens=1, **extra))
        err = r.get("error", {})
        check("tool_choice %s -> 400 naming tool_choice" % label, st == 400 and err.get("param") == "tool_choice" and
              (code is None or err.get("code") == code), r)
    st, r = call(url, {"messages": MSGS, "tool_choice": "auto", "max_tokens": 1})
    check("tool_choice without tools -> 400", st == 400 and r["error"]["param"] == "tool_choice" and
          "tools" in r["error"]["message"], r)
    st, r = call(url, dict(base, tools=[], tool_choice="required", max_tokens=1))
    check("tool_choice required with an empty tools list acts as none (vLLM)", st == 200 and
          not r["choices"][0]["message"].get("tool_calls"), r)
    st, r = call(url, dict(base, tool_choice="auto", max_tokens=1, logit_bias={str(ids["call"]): 100}))
    check("tool_choice auto given explicitly", st == 200 and r["choices"][0]["finish_reason"] == "tool_calls", r)
    st, r = call(url, dict(base, max_tokens=1, parallel_tool_calls="no"))
    check("parallel_tool_calls must be a boolean", st == 400 and r["error"]["param"] == "parallel_tool_calls", r)


def test_llama3(url, ids):
    base = {"model": "m", "messages": MSGS, "tools": TOOLS, "temperature": 0, "max_tokens": 1}
    st, r = call(url, dict(base, logit_bias={str(ids["llama"]): 100}))
    m = r["choices"][0]["message"] if st == 200 else {}
    check("llama3_json: a JSON call with parameters", st == 200 and m.get("content") is None and
          msg_calls(m) == [("get_weather", '{"city": "Paris"}')] and r["choices"][0]["finish_reason"] == "tool_calls", r)
    content, calls, finish, _ = accumulate(stream(url, dict(base, logit_bias={str(ids["llama"]): 100})))
    check("llama3_json stream: deltas add up", content is None and
          [(t["name"], t["arguments"]) for t in calls] == msg_calls(m) and finish == "tool_calls", (content, calls, finish))
    # vLLM's non-streaming llama3_json parser reads a call at any '{' and drops the text around it;
    # its streaming parser looks only at answers that open with '{': the same answer streams as text
    st, r = call(url, dict(base, logit_bias={str(ids["mixed"]): 100}))
    m = r["choices"][0]["message"] if st == 200 else {}
    check("llama3_json: a call inside text is found, the text dropped (vLLM's extract_tool_calls)",
          st == 200 and m.get("content") is None and msg_calls(m) == [("get_time", '{"tz": "UTC"}')], r)
    content, calls, finish, _ = accumulate(stream(url, dict(base, logit_bias={str(ids["mixed"]): 100})))
    check("llama3_json stream: an answer not opening with '{' streams as content (vLLM's streaming parser)",
          content == MIXED_TEXT and not calls and finish == "length", (content, calls, finish))


def test_client(url, ids):
    if not shutil.which("node") or subprocess.run(["sh", "tools/install-deps.sh", "--npm", E2E]).returncode != 0:
        print("SKIP: the openai npm client is not installed; tool calls went through urllib only")
        return
    base = {"model": "m", "messages": MSGS, "tools": TOOLS, "temperature": 0}
    bodies = [dict(base, max_tokens=2, logit_bias={str(ids["call"]): 100}),
              dict(base, max_tokens=2, logit_bias={str(ids["call"]): 100}, stream=True),
              dict(base, max_tokens=1, logit_bias={str(ids["mixed"]): 100}, stream=True),
              dict(base, max_tokens=1, tool_choice="required")]
    r = subprocess.run(["node", os.path.join(E2E, "tool_calls.mjs"), url + "/v1"], input=json.dumps(bodies),
                       capture_output=True, text=True, timeout=600)
    got = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else []
    check("openai client: answered every request", len(got) == len(bodies), r.stderr[-2000:])
    if len(got) != len(bodies):
        return
    want_args = '{"city": "Z\u00fcrich", "days": 2.5}'
    m = got[0]["choices"][0]["message"]
    check("openai client: create() returns the tool calls", msg_calls(m) == [("get_weather", want_args)] * 2 and
          got[0]["choices"][0]["finish_reason"] == "tool_calls", got[0])
    f = got[1].get("final", {}).get("choices", [{}])[0]
    check("openai client: the SDK's stream accumulator rebuilds both calls",
          msg_calls(f.get("message", {})) == [("get_weather", want_args)] * 2 and f.get("finish_reason") == "tool_calls" and
          all(ID_RE.match(t["id"]) for t in f["message"]["tool_calls"]), got[1].get("final", got[1]))
    f = got[2].get("final", {}).get("choices", [{}])[0]
    check("openai client: stream with content then a call", f.get("message", {}).get("content") == "Let me look that up. " and
          msg_calls(f.get("message", {})) == [("get_time", '{"tz": "UTC"}')], got[2].get("final", got[2]))
    check("openai client: tool_choice required is a 400 naming it",
          got[3].get("error", {}).get("status") == 400 and got[3]["error"].get("param") == "tool_choice", got[3])


def test_e2e(tmp):
    d, ids = make_checkpoint(tmp)
    url, p = start(d)
    check("plain server starts", url is not None, p)
    if url:
        st, r = call(url, {"messages": MSGS, "tools": TOOLS, "max_tokens": 1})
        check("without --enable-auto-tool-choice, tools (auto) -> 400 naming the flags",
              st == 400 and r["error"]["param"] == "tool_choice" and "--enable-auto-tool-choice" in r["error"]["message"], r)
        st, r = call(url, {"messages": MSGS, "tools": TOOLS, "tool_choice": "none", "max_tokens": 1,
                           "logit_bias": {str(ids["call"]): 100}})
        check("without a parser, tool_choice none returns the text", st == 200 and
              r["choices"][0]["message"]["content"] == CALL_TEXT and not r["choices"][0]["message"].get("tool_calls"), r)
        stop(p)
    url, log = start(d, "--enable-auto-tool-choice")
    check("--enable-auto-tool-choice alone fails naming --tool-call-parser", url is None and "--tool-call-parser" in log, log)
    url, log = start(d, "--enable-auto-tool-choice", "--tool-call-parser", "mistral")
    check("an unknown parser fails naming the choices", url is None and "hermes or llama3_json" in log, log)
    url, p = start(d, "--tool-call-parser", "hermes")
    if url:
        st, r = call(url, {"messages": MSGS, "tools": TOOLS, "max_tokens": 1})
        check("--tool-call-parser without --enable-auto-tool-choice: auto refused (vLLM)", st == 400, r)
        stop(p)
    url, p = start(d, "--enable-auto-tool-choice", "--tool-call-parser", "hermes")
    check("hermes server starts", url is not None, p)
    if url:
        test_hermes(url, ids)
        test_client(url, ids)
        stop(p)
    url, p = start(d, "--enable-auto-tool-choice", "--tool-call-parser", "llama3_json")
    check("llama3_json server starts", url is not None, p)
    if url:
        test_llama3(url, ids)
        stop(p)


def main():
    for b in (BIN, TOOLS_BIN, MAKE_MODEL):
        if not os.access(b, os.X_OK):
            print("FAIL: %s not built" % b)
            print("test_tool_calls: 0 passed, 1 failed")
            return 1
    tmp = tempfile.mkdtemp(prefix="ropeserve-tools-")
    try:
        test_parsers()
        test_e2e(tmp)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    print("test_tool_calls: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
