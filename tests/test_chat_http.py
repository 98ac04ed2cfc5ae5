#!/usr/bin/env python3
"""test_chat_http.py - chat templates, generation_config.json and EOS lists end to end, through
`ropeserve generate` and `ropeserve serve` on copies of the tiny fixture checkpoint whose
tokenizer_config.json / generation_config.json / config.json each case rewrites.

  EOS lists     every id of generation_config.json's and config.json's eos_token_id (an int or a
                list) ends generation; ignore_eos overrides; over HTTP too.
  defaults      generation_config.json's temperature/top_p/top_k/min_p/repetition_penalty/
                max_new_tokens apply when a request leaves them unset, requests override them,
                values equal to transformers' defaults count as absent (vLLM's to_diff_dict),
                --generation-config vllm turns them off, --generation-config DIR caps max_tokens,
                /v1/models shows them, a bad value fails the start naming file and field.
  templates     the checkpoint's Jinja template renders the prompt (ids checked against jinja2's
                rendering, tokenized by the server itself), named templates and "tool_use" for
                tools, tools/tool_choice, chat_template_kwargs, raise_exception -> 400 with its
                message, continue_final_message, --chat-template NAME|FILE|built-in, built-ins
                refusing what they cannot render, an unsupported construct failing the start
                with its name before the weights load.
Ends with "test_chat_http: N passed, N failed". ROPESERVE_BIN overrides build/ropeserve.
"""
import json
import os
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
FIX = "tests/fixtures/models/llama-gqa-none"
PROMPT = [1, 5, 6, 7]
passed = failed = 0
procs = []


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL: %s %s" % (name, detail))


def make_model(tmp, name, tokenizer_config=None, generation_config=None, config_patch=None, special_tokens_map=None,
               drop=()):
    """A copy of the fixture checkpoint (weights and tokenizer linked) with its configs replaced."""
    d = os.path.join(tmp, name)
    os.makedirs(d)
    for f in os.listdir(FIX):
        if f in ("config.json", "generation_config.json", "tokenizer_config.json") or \
                (f == "special_tokens_map.json" and special_tokens_map is not None):
            continue
        os.symlink(os.path.abspath(os.path.join(FIX, f)), os.path.join(d, f))
    if special_tokens_map is not None:
        json.dump(special_tokens_map, open(os.path.join(d, "special_tokens_map.json"), "w"))
    cfg = json.load(open(os.path.join(FIX, "config.json")))
    cfg.update(config_patch or {})
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    tc = json.load(open(os.path.join(FIX, "tokenizer_config.json")))
    tc.update(tokenizer_config or {})
    for k in drop:
        tc.pop(k, None)
    json.dump(tc, open(os.path.join(d, "tokenizer_config.json"), "w"))
    if generation_config is not None:
        json.dump(generation_config, open(os.path.join(d, "generation_config.json"), "w"))
    return d


def generate(model, *args):
    r = subprocess.run([BIN, "generate", "--model", model, "--prompt-ids", ",".join(map(str, PROMPT)),
                        "--max-tokens", "8", "--json"] + list(args), capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        return None, r.stderr
    return json.loads(r.stdout), r.stderr


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(model, *args):
    """(url, proc) once /health answers 200; (None, log) when the server exits."""
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")
    p = subprocess.Popen([BIN, "serve", "--model", model, "--port", str(port), "--max-model-len", "256"] + list(args),
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


def call(url, path, body=None):
    req = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def stream_last_choice(url, path, body):
    """The choice of the streamed chunk that carries finish_reason (None when none does)."""
    req = urllib.request.Request(url + path, data=json.dumps(dict(body, stream=True)).encode(),
                                 headers={"Content-Type": "application/json"})
    last = None
    with urllib.request.urlopen(req, timeout=120) as r:
        for line in r.read().decode().splitlines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for c in json.loads(line[6:]).get("choices", []):
                if c.get("finish_reason"):
                    last = c
    return last


def marker_ids(url, text):
    """The ids chat_encode gives text: "<s>" / "</s>" as BOS / EOS, the pieces between them
    encoded one by one without BOS (as the server's own /tokenize encodes them)."""
    ids, rest = [], text
    while rest:
        cuts = [(rest.find(m), m, i) for m, i in (("<s>", 1), ("</s>", 2)) if rest.find(m) >= 0]
        at, mk, mid = min(cuts) if cuts else (len(rest), "", None)
        if at:
            st, r = call(url, "/tokenize", {"prompt": rest[:at], "add_special_tokens": False})
            ids += r["tokens"]
        if mid is None:
            break
        ids.append(mid)
        rest = rest[at + len(mk):]
    return ids


def test_eos(tmp):
    base, _ = generate(FIX)
    ids = base["ids"]
    check("eos: the fixture's greedy run has no EOS in 8 tokens", base["finish_reason"] == "length" and 2 not in ids, base)
    m = make_model(tmp, "eos-gen", generation_config={"eos_token_id": [2, ids[2]], "do_sample": False})
    out, _ = generate(m)
    check("eos: generation_config.json list stops at its 2nd id", out and out["ids"] == ids[:3] and out["finish_reason"] == "stop", out)
    check("eos: generate --json: an extra EOS id is the stop_reason (vLLM: a stop token id)",
          out and out.get("stop_reason") == ids[2], out)
    m = make_model(tmp, "eos-gen-int", generation_config={"eos_token_id": ids[0]})
    out, _ = generate(m)
    check("eos: generation_config.json int", out and out["ids"] == ids[:1] and out["finish_reason"] == "stop", out)
    m = make_model(tmp, "eos-cfg", config_patch={"eos_token_id": [2, ids[1]]})
    out, _ = generate(m)
    check("eos: config.json list", out and out["ids"] == ids[:2] and out["finish_reason"] == "stop", out)
    out, _ = generate(m, "--ignore-eos")
    check("eos: --ignore-eos ignores every EOS id", out and out["ids"] == ids, out)
    out, _ = generate(m, "--generation-config", "vllm")
    check("eos: read with --generation-config vllm too", out and out["ids"] == ids[:2], out)
    m = make_model(tmp, "eos-bad", generation_config={"eos_token_id": ["x"]})
    out, err = generate(m)
    check("eos: a bad eos_token_id names file and field", out is None and "generation_config.json" in err and
          "eos_token_id" in err, err)
    m = make_model(tmp, "eos-http", generation_config={"eos_token_id": [2, ids[2]]})
    url, p = start(m)
    check("eos: server starts", url is not None, p)
    if url:
        st, r = call(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 8, "temperature": 0})
        check("eos: HTTP stops at the generation_config id", st == 200 and r["usage"]["completion_tokens"] == 3 and
              r["choices"][0]["finish_reason"] == "stop", r)
        # vLLM: the tokenizer's EOS (2 here) is the primary one, stop_reason null; every other EOS
        # id of generation_config / config.json was added to stop_token_ids: stop_reason = the id
        check("eos: an extra EOS id's stop_reason is the id (completions)",
              st == 200 and r["choices"][0]["stop_reason"] == ids[2], r)
        st, r = call(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 8, "temperature": 0,
                                              "logit_bias": {"2": 100}})
        check("eos: the primary EOS (the tokenizer's) has stop_reason null",
              st == 200 and r["choices"][0]["finish_reason"] == "stop" and r["choices"][0]["stop_reason"] is None and
              r["usage"]["completion_tokens"] == 1, r)
        st, r = call(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 8, "temperature": 0,
                                              "logit_bias": {str(ids[2]): 100}, "stop_token_ids": [2]})
        check("eos: extra EOS first token, stop_reason the id",
              st == 200 and r["choices"][0]["stop_reason"] == ids[2] and r["usage"]["completion_tokens"] == 1, r)
        chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0,
                "logit_bias": {str(ids[2]): 100}}
        st, r = call(url, "/v1/chat/completions", chat)
        check("eos: chat: an extra EOS id's stop_reason is the id",
              st == 200 and r["choices"][0]["finish_reason"] == "stop" and r["choices"][0]["stop_reason"] == ids[2], r)
        for path, body in (("/v1/completions", {"prompt": PROMPT, "max_tokens": 8, "temperature": 0}),
                           ("/v1/chat/completions", chat)):
            last = stream_last_choice(url, path, body)
            check("eos: %s stream: the finish chunk's stop_reason is the extra EOS id" % path,
                  last is not None and last["finish_reason"] == "stop" and last["stop_reason"] == ids[2], last)
        st, r = call(url, "/v1/chat/completions", dict(chat, logit_bias={"2": 100}))
        check("eos: chat: the primary EOS has stop_reason null",
              st == 200 and r["choices"][0]["finish_reason"] == "stop" and r["choices"][0]["stop_reason"] is None, r)
        st, r = call(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "ignore_eos": True})
        check("eos: HTTP ignore_eos", st == 200 and r["usage"]["completion_tokens"] == 8, r)
        st, r = call(url, "/v1/models")
        eos = r["data"][0]["generation_config"]["eos_token_ids"] if st == 200 else None
        check("eos: /v1/models lists the EOS ids", eos is not None and sorted(eos) == sorted({2, ids[2]}), r)
        stop(p)
    return ids


def test_defaults(tmp, greedy):
    gc = {"eos_token_id": 2, "temperature": 0.7, "top_k": 1, "top_p": 1.0, "repetition_penalty": 1.0,
          "max_new_tokens": 4, "do_sample": True}
    m = make_model(tmp, "gen", generation_config=gc)
    url, p = start(m)
    check("defaults: server starts", url is not None, p)
    if not url:
        return
    st, r = call(url, "/v1/models")
    d = r["data"][0]["generation_config"]["defaults"] if st == 200 else None
    check("defaults: /v1/models (top_p 1.0 and repetition_penalty 1.0 are transformers' defaults: absent)",
          d == {"temperature": 0.7, "top_k": 1, "max_tokens": 4}, r)
    msgs = [{"role": "user", "content": "Hi"}]
    st, r = call(url, "/v1/chat/completions", {"messages": msgs, "ignore_eos": True})
    check("defaults: chat without max_tokens takes max_new_tokens", st == 200 and r["usage"]["completion_tokens"] == 4, r)
    st, r = call(url, "/v1/chat/completions", {"messages": msgs, "ignore_eos": True, "max_tokens": 6})
    check("defaults: the request's max_tokens overrides", st == 200 and r["usage"]["completion_tokens"] == 6, r)
    st, r = call(url, "/v1/completions", {"prompt": PROMPT, "ignore_eos": True})
    check("defaults: completions still default to 16", st == 200 and r["usage"]["completion_tokens"] == 16, r)
    body = {"prompt": PROMPT, "max_tokens": 8, "ignore_eos": True, "seed": 3, "logprobs": 0}
    st, g = call(url, "/v1/completions", dict(body, temperature=0))
    st2, s = call(url, "/v1/completions", body)
    check("defaults: top_k 1 from generation_config makes sampling (temperature 0.7) greedy",
          st == 200 and st2 == 200 and s["choices"][0]["logprobs"]["tokens"] == g["choices"][0]["logprobs"]["tokens"], (g, s))
    st3, o = call(url, "/v1/completions", dict(body, top_k=0, temperature=2.0))
    check("defaults: a request's top_k/temperature override them",
          st3 == 200 and o["choices"][0]["logprobs"]["tokens"] != g["choices"][0]["logprobs"]["tokens"], o)
    stop(p)
    url, p = start(m, "--generation-config", "vllm")
    if url:
        st, r = call(url, "/v1/models")
        check("defaults: --generation-config vllm shows none", st == 200 and r["data"][0]["generation_config"]["defaults"] == {}, r)
        st, r = call(url, "/v1/chat/completions", {"messages": msgs, "ignore_eos": True})
        check("defaults: --generation-config vllm: chat runs to the end of the context",
              st == 200 and r["usage"]["completion_tokens"] == 256 - r["usage"]["prompt_tokens"], r)
        stop(p)
    else:
        check("defaults: --generation-config vllm starts", False, p)
    cap = os.path.join(tmp, "gencap")
    os.makedirs(cap)
    json.dump({"max_new_tokens": 5}, open(os.path.join(cap, "generation_config.json"), "w"))
    url, p = start(m, "--generation-config", cap)
    if url:
        st, r = call(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 9, "ignore_eos": True})
        check("defaults: --generation-config DIR caps max_tokens", st == 200 and r["usage"]["completion_tokens"] == 5, r)
        st, r = call(url, "/v1/models")
        check("defaults: --generation-config DIR's values only", st == 200 and r["data"][0]["generation_config"]["defaults"] == {"max_tokens": 5}, r)
        stop(p)
    else:
        check("defaults: --generation-config DIR starts", False, p)
    # `generate` takes the same defaults through the same function (gen_defaults_apply)
    out, log = generate(m, "--ignore-eos")
    check("defaults: generate takes generation_config's temperature and top_k and says so",
          out is not None and "temperature 0.7 (generation_config)" in log and "top_k 1 (generation_config)" in log and
          "top_p 1 (default)" in log and out["ids"] == greedy, log)
    out, log = generate(m, "--ignore-eos", "--temperature", "0")
    check("defaults: a generate flag overrides and is named", out is not None and "temperature 0 (flag)" in log, log)
    rp = make_model(tmp, "gen-rp", generation_config={"temperature": 0.0, "repetition_penalty": 3.0})
    out, log = generate(rp, "--ignore-eos")
    plain, _ = generate(rp, "--ignore-eos", "--generation-config", "vllm")
    flag1, _ = generate(rp, "--ignore-eos", "--repetition-penalty", "1")
    check("defaults: generate: repetition_penalty 3 from generation_config changes the greedy output",
          out is not None and plain is not None and out["ids"] != plain["ids"] and plain["ids"] == greedy and
          "repetition_penalty 3 (generation_config)" in log, (out, plain, log))
    check("defaults: generate --repetition-penalty 1 overrides it", flag1 is not None and flag1["ids"] == greedy, flag1)
    url, p = start(rp)
    if url:
        st, r = call(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 8, "ignore_eos": True})
        check("defaults: serve and generate give the same text with the same generation_config",
              st == 200 and out is not None and r["choices"][0]["text"] == out["text"], (r, out))
        stop(p)
    else:
        check("defaults: gen-rp starts", False, p)
    out, log = generate(m, "--generation-config", cap, "--max-tokens", "9", "--ignore-eos")
    check("defaults: generate: --generation-config DIR caps --max-tokens",
          out is not None and len(out["ids"]) == 5 and "max_tokens 5 (generation_config cap)" in log, log)
    bad = make_model(tmp, "gen-bad", generation_config={"temperature": "hot"})
    url, log = start(bad)
    check("defaults: a bad temperature fails the start naming file and field",
          url is None and "generation_config.json" in log and "temperature" in log, log)
    bad = make_model(tmp, "gen-bad2", generation_config={"top_p": 0})
    url, log = start(bad)
    check("defaults: top_p 0 is out of range", url is None and "top_p" in log, log)


T_DEFAULT = ("{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content | trim }}\n{% endfor %}"
             "{% if greeting is defined %}greeting: {{ greeting }}\n{% endif %}"
             "{% if messages[0].role == 'tool' %}{{ raise_exception('A tool message cannot come first') }}{% endif %}"
             "{% if add_generation_prompt %}[assistant]{% endif %}")
T_TOOLS = ("{{ bos_token }}tools: {% for t in tools or [] %}{{ t.function.name }} {{ t.function.parameters | tojson }}"
           "{% endfor %}\n{% for m in messages %}[{{ m.role }}] {{ m.content }}"
           "{% if m.tool_calls %} calls {{ m.tool_calls[0].function.arguments | tojson }}{% endif %}\n{% endfor %}"
           "{% if add_generation_prompt %}[assistant]{% endif %}")


def test_templates(tmp):
    sys.path.insert(0, "tests")
    import test_chat_template as ref  # the jinja2 reference environment (transformers' settings)
    os.chdir(ROOT)
    m = make_model(tmp, "tmpl", tokenizer_config={
        "chat_template": [{"name": "default", "template": T_DEFAULT}, {"name": "tool_use", "template": T_TOOLS}],
        "bos_token": "<s>", "eos_token": "</s>"})
    url, p = start(m)
    check("templates: server starts", url is not None, p)
    if not url:
        return
    special = {"bos_token": "<s>", "eos_token": "</s>"}

    def expect(template, body, agp=True, cont=False):
        st, text = ref.ref_chat(template, body, special, agp, cont)
        assert st == "ok", text
        assert text.startswith("<s>")
        s2, r = call(url, "/tokenize", {"prompt": text[3:], "add_special_tokens": False})
        return [1] + r["tokens"]

    def tokenize(body):
        return call(url, "/tokenize", body)

    msgs = [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "Hi \u00e9"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    st, r = tokenize({"messages": msgs})
    check("templates: /tokenize renders the checkpoint's template", st == 200 and r["tokens"] == expect(T_DEFAULT, {"messages": msgs}), r)
    st, c = call(url, "/v1/chat/completions", {"messages": msgs, "max_tokens": 2, "temperature": 0})
    check("templates: chat completion prompt_tokens match", st == 200 and c["usage"]["prompt_tokens"] == len(r["tokens"]), c)
    st, r = tokenize({"messages": msgs, "add_generation_prompt": False})
    check("templates: add_generation_prompt false", st == 200 and
          r["tokens"] == expect(T_DEFAULT, {"messages": msgs}, agp=False), r)
    body = {"messages": msgs, "chat_template_kwargs": {"greeting": "hello there"}}
    st, r = tokenize(body)
    check("templates: chat_template_kwargs reach the template", st == 200 and r["tokens"] == expect(T_DEFAULT, body), r)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "x": 1.0}}}]
    body = {"messages": msgs[:2] + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}], "tools": tools, "tool_choice": "none"}
    st, r = tokenize(body)
    check("templates: tools pick the tool_use template", st == 200 and r["tokens"] == expect(T_TOOLS, body), r)
    st, c = call(url, "/v1/chat/completions", dict(body, max_tokens=2))
    check("templates: chat completion with tools and tool_choice none", st == 200, c)
    st, c = call(url, "/v1/chat/completions", {"messages": msgs, "tools": tools, "max_tokens": 2})
    check("templates: tools without tool_choice are refused (auto needs a tool parser)",
          st == 400 and c["error"]["param"] == "tool_choice", c)
    st, r = tokenize({"messages": msgs, "chat_template": "tool_use"})
    check("templates: the request names a template", st == 200 and
          r["tokens"] == expect(T_TOOLS, {"messages": msgs}), r)
    st, r = tokenize({"messages": msgs, "chat_template": "nope"})
    check("templates: an unknown template name is a 400 listing the names", st == 400 and
          r["error"]["param"] == "chat_template" and "tool_use" in r["error"]["message"], r)
    st, r = call(url, "/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}], "max_tokens": 1})
    check("templates: raise_exception is a 400 with its message", st == 400 and
          "A tool message cannot come first" in r["error"]["message"], r)
    body = {"messages": msgs + [{"role": "assistant", "content": "The answer is "}], "add_generation_prompt": False,
            "continue_final_message": True}
    st, r = tokenize(body)
    check("templates: continue_final_message", st == 200 and r["tokens"] == expect(T_DEFAULT, body, agp=False, cont=True), r)
    st, r = call(url, "/v1/models")
    check("templates: /v1/models names the template", st == 200 and "default" in r["data"][0]["chat_template"] and
          r["data"][0]["chat_templates"] == ["default", "tool_use"], r)
    stop(p)

    url, p = start(m, "--chat-template", "tool_use")
    if url:
        st, r = tokenize({"messages": msgs})
        check("templates: --chat-template NAME from the checkpoint's list", st == 200 and
              r["tokens"] == expect(T_TOOLS, {"messages": msgs}), r)
        stop(p)
    f = os.path.join(tmp, "t.jinja")
    open(f, "w").write("{{ bos_token }}FILE{% for m in messages %}|{{ m.content }}{% endfor %}\n")
    url, p = start(m, "--chat-template", f)
    if url:
        st, r = tokenize({"messages": msgs})
        check("templates: --chat-template FILE", st == 200 and r["tokens"] == expect(open(f).read(), {"messages": msgs}), r)
        stop(p)
    url, p = start(m, "--chat-template", "chatml")
    if url:
        st, r = call(url, "/v1/chat/completions", dict(body, max_tokens=1))
        check("templates: a built-in refuses continue_final_message", st == 400 and
              r["error"]["param"] == "add_generation_prompt", r)
        st, r = call(url, "/v1/chat/completions", {"messages": msgs, "tools": tools, "tool_choice": "none", "max_tokens": 1})
        check("templates: a built-in refuses tools", st == 400 and r["error"]["param"] == "tools", r)
        st, r = call(url, "/v1/chat/completions", {"messages": msgs, "max_tokens": 1})
        check("templates: a built-in still renders plain turns", st == 200, r)
        stop(p)
    cj = make_model(tmp, "chat-template-jinja", tokenizer_config={"chat_template": T_DEFAULT})
    open(os.path.join(cj, "chat_template.jinja"), "w").write(T_TOOLS)
    url, p = start(cj)
    if url:
        st, r = call(url, "/tokenize", {"messages": msgs})
        st2, mr = call(url, "/v1/models")
        check("templates: chat_template.jinja beside the config wins", st == 200 and
              r["tokens"] == expect(T_TOOLS, {"messages": msgs}) and "chat_template.jinja" in mr["data"][0]["chat_template"], (r, mr))
        stop(p)
    else:
        check("templates: chat_template.jinja starts", False, p)
    broken = make_model(tmp, "broken", tokenizer_config={
        "chat_template": "{% for m in messages %}{{ m.content | groupby('x') }}{% endfor %}"})
    t0 = time.time()
    url, log = start(broken)
    check("templates: an unsupported construct fails the start, named, before the weights load",
          url is None and "groupby" in log and "tokenizer_config.json" in log and "--chat-template" in log, log)
    url, p = start(broken, "--chat-template", "llama-2")
    check("templates: --chat-template llama-2 serves such a checkpoint", url is not None, p)
    if url:
        stop(p)
    # special tokens: special_tokens_map.json wins; a token no config names is the tokenizer's; null is none
    tb = "[{{ bos_token }}|{{ eos_token }}|{{ bos_token is defined }}]{{ messages[0].content }}"
    cases = [("map wins", {"chat_template": tb, "bos_token": "<unk>"}, {"bos_token": "<s>", "eos_token": "</s>"}, (), "[<s>|</s>|True]x"),
             ("tokenizer's when unnamed", {"chat_template": tb}, {}, ("bos_token", "eos_token"), "[<s>|</s>|True]x"),
             ("null is none", {"chat_template": tb, "bos_token": None}, {"eos_token": "</s>"}, (), "[|</s>|False]x")]
    for name, tcfg, smap, drop, want in cases:
        mm = make_model(tmp, "tok-" + name.replace(" ", "-").replace("'", ""), tokenizer_config=tcfg,
                        special_tokens_map=smap, drop=drop)
        url, p = start(mm)
        if not url:
            check("special tokens: %s: starts" % name, False, p)
            continue
        st, r = call(url, "/tokenize", {"messages": [{"role": "user", "content": "x"}]})
        check("special tokens: %s" % name, st == 200 and r["tokens"] == marker_ids(url, want), (r, want))
        stop(p)
    url, log = start(m, "--chat-template", "no-such-template")
    check("templates: an unknown --chat-template names the choices", url is None and "default, tool_use" in log, log)


def test_add_eos(tmp):
    """tokenizer_config.json add_eos_token: true (transformers' LlamaTokenizer) appends EOS to every
    text encoded with special tokens, as vLLM's completion prompts are encoded."""
    plain = make_model(tmp, "eos-plain")
    m = make_model(tmp, "add-eos", tokenizer_config={"add_eos_token": True})
    url0, p0 = start(plain)
    url, p = start(m)
    check("add_eos_token: servers start", url0 is not None and url is not None, (p0, p))
    if url0 and url:
        st0, a = call(url0, "/tokenize", {"prompt": "Hello world"})
        st1, b = call(url, "/tokenize", {"prompt": "Hello world"})
        check("add_eos_token: /tokenize appends EOS (2)", st0 == st1 == 200 and b["tokens"] == a["tokens"] + [2], (a, b))
        st, c = call(url, "/tokenize", {"prompt": "Hello world", "add_special_tokens": False})
        check("add_eos_token: not without special tokens", st == 200 and 2 not in c["tokens"] and 1 not in c["tokens"], c)
        st, r = call(url, "/v1/completions", {"prompt": "Hello world", "max_tokens": 1})
        check("add_eos_token: completions count it", st == 200 and r["usage"]["prompt_tokens"] == len(a["tokens"]) + 1, r)
        st, r = call(url, "/tokenize", {"messages": [{"role": "user", "content": "Hi"}]})
        st2, r2 = call(url0, "/tokenize", {"messages": [{"role": "user", "content": "Hi"}]})
        check("add_eos_token: chat (special tokens off by default) unchanged", st == st2 == 200 and r["tokens"] == r2["tokens"],
              (r, r2))
    for p_ in (p0, p):
        if not isinstance(p_, str):
            stop(p_)


def main():
    if not os.path.exists(BIN):
        print("FAIL: %s not built" % BIN)
        print("test_chat_http: 0 passed, 1 failed")
        return 1
    tmp = tempfile.mkdtemp()
    try:
        greedy = test_eos(tmp)
        test_defaults(tmp, greedy)
        test_add_eos(tmp)
        test_templates(tmp)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    print("test_chat_http: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
