#!/usr/bin/env python3
"""test_strict.py - issue 15 end to end: `ropeserve serve` on the tiny fixture model, over HTTP.

  strict bodies    unknown fields, typos, trailing bytes, raw NUL and control characters, a
                   wrong `tools` type, uint64 seeds: each a 400 naming the field (or none)
  prompt_logprobs  vLLM's shape, equal to echo + logprobs on the same prompt, and to the
                   distributions `ropeserve generate --json` prints for the same tokens
  min_tokens       stop strings and stop ids wait for it; stop_reason is the string or the id
  truncation       truncate_prompt_tokens keeps the last N tokens; without it, a 400 naming both
                   numbers
  progress         opt-in prompt_progress chunks during a chunked prefill (stream_options and
                   llama.cpp's return_progress), none unless asked
  priority         refused under --scheduling-policy fcfs, taken under priority
  cache_salt       requests with different salts share no prefix-cache blocks
  logs, CLI        a 400 is logged at info with its message; --version says what auto picks;
                   generate's text ends its line
Ends with "test_strict: N passed, N failed". ROPESERVE_BIN overrides build/ropeserve.
No verdict depends on timing: timeouts are hang guards only."""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(ROOT)
BIN = os.environ.get("ROPESERVE_BIN", "build/ropeserve")
MODEL = "tests/fixtures/models/llama-gqa-none"
passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL: %s %s" % (name, str(detail)[:600]))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    def __init__(self, *args):
        self.port = free_port()
        self.logf = tempfile.NamedTemporaryFile(prefix="strict-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([BIN, "serve", "--model", MODEL, "--port", str(self.port)] + list(args),
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        for _ in range(600):  # hang guard: 60 s
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError("server did not start: " + self.log())

    def request(self, method, path, body=None, raw=False):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        c.request(method, path, body=data, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        text = r.read()
        c.close()
        if raw:
            return r.status, text
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text

    def post(self, path, body):
        return self.request("POST", path, body)

    def stream(self, body):
        """SSE events (JSON objects), then whether [DONE] came."""
        st, text = self.request("POST", "/v1/completions", body, raw=True)
        events, done = [], False
        for line in text.decode().split("\n"):
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                events.append(json.loads(line[6:]))
        return st, events, done

    def log(self):
        with open(self.logf.name, "r", errors="replace") as f:
            return f.read()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.unlink(self.logf.name)


def is_err(st, body, param):
    return (st == 400 and isinstance(body, dict) and "error" in body and
            body["error"].get("param") == param and body["error"].get("type") == "invalid_request_error")


def tokenize(s, text):
    st, b = s.post("/tokenize", {"prompt": text})
    return b["tokens"]


def test_bodies(s):
    st, b = s.post("/v1/completions", {"prompt": "x", "temperatur": 0})
    check("typo refused, naming it", is_err(st, b, "temperatur") and "temperature" in b["error"]["message"], b)
    st, b = s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "u"}], "chat_template_kwargs":
                                            {"enable_thinking": False}})
    check("chat_template_kwargs refused until templates take it", is_err(st, b, "chat_template_kwargs"), b)
    st, b = s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "u"}], "tools": "abc"})
    check("tools of the wrong type", is_err(st, b, "tools"), b)
    st, b = s.post("/v1/completions", b'{"prompt":"ab\x00cd","max_tokens":1}')
    check("raw NUL in the prompt", is_err(st, b, "prompt"), b)
    st, b = s.post("/v1/completions", b'{"prompt":"a\\u0000b","max_tokens":1}')
    check("escaped NUL in the prompt", is_err(st, b, "prompt"), b)
    st, b = s.post("/v1/completions", b'{"prompt":"a\x07b","max_tokens":1}')
    check("raw control character in the prompt", is_err(st, b, "prompt"), b)
    st, b = s.post("/v1/completions", b'{"prompt":"ab","max_tokens":1} {"x":1}')
    check("bytes after the object", is_err(st, b, None) and "after the JSON object" in b["error"]["message"], b)
    st, b = s.post("/v1/completions", b'{"prompt":"ab","max_tokens":1,"seed":18446744073709551615}')
    check("seed 2^64-1", st == 200, b)
    st, b = s.post("/v1/completions", b'{"prompt":"ab","max_tokens":1,"seed":-1}')
    check("negative seed", is_err(st, b, "seed"), b)
    st, b = s.post("/v1/completions", {"prompt": "ab", "max_tokens": 1, "logit_bias": {" 5": 1}})
    check("logit_bias key ' 5'", is_err(st, b, "logit_bias") and '" 5"' in b["error"]["message"], b)
    st, b = s.post("/tokenize", {"prompt": "ab", "model": "nope"})
    check("/tokenize checks the model", st == 404, b)
    st, b = s.post("/tokenize", {"prompt": "ab", "return_token_strs": False})
    check("/tokenize return_token_strs false", st == 200 and b["token_strs"] is None and b["count"] > 0, b)
    st, b = s.post("/detokenize", {"tokens": [5, 6], "detokenize_all": True})
    check("/detokenize unknown field", is_err(st, b, "detokenize_all"), b)
    st, b = s.post("/v1/completions", {"prompt": "ab", "max_tokens": 1, "request_id": "mine-1"})
    check("request_id names the response", st == 200 and b["id"] == "cmpl-mine-1", b)


def test_prompt_logprobs(s):
    prompt = "The quick brown fox jumps over the lazy dog. Once upon a time"
    ids = tokenize(s, prompt)
    st, a = s.post("/v1/completions", {"prompt": prompt, "max_tokens": 0, "prompt_logprobs": 3})
    st2, b = s.post("/v1/completions", {"prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 3})
    check("prompt_logprobs 200", st == 200 and st2 == 200, (a, b))
    pl = a["choices"][0]["prompt_logprobs"]
    lp = b["choices"][0]["logprobs"]
    check("one entry per prompt token, the first null", len(pl) == len(ids) and pl[0] is None, len(pl))
    same, worst = True, 0.0
    for i in range(1, len(ids)):
        d = pl[i]
        mine = d.get(str(ids[i]))
        if mine is None or list(d.keys())[0] != str(ids[i]):
            same = False
            break
        if mine["logprob"] != lp["token_logprobs"][i]:
            same = False
        tops = sorted((v["logprob"] for k, v in d.items() if v["rank"] <= 3), reverse=True)
        echo_tops = sorted(lp["top_logprobs"][i].values(), reverse=True)[:3]
        if tops != echo_tops[:len(tops)] or len(tops) != 3:
            same = False
        ranks = sorted(v["rank"] for k, v in d.items() if k != str(ids[i]) or v["rank"] <= 3)
        if ranks[:3] != [1, 2, 3]:
            same = False
    check("prompt_logprobs == echo + logprobs, value for value", same)
    check("rank of a prompt token = 1 + the more likely tokens",
          all(pl[i][str(ids[i])]["rank"] == 1 + sum(1 for v in pl[i].values() if v["logprob"] > pl[i][str(ids[i])]["logprob"])
              for i in range(1, len(ids)) if pl[i][str(ids[i])]["rank"] <= 3))

    # against generate --json: the distribution that produced each generated token is the
    # prompt_logprobs entry of that token once it is part of the prompt
    n = 12
    g = subprocess.run([BIN, "generate", "--model", MODEL, "--prompt-ids", ",".join(map(str, ids)), "--max-tokens",
                        str(n), "--top-logprobs", "3", "--ignore-eos", "--json", "--log-level", "error"],
                       capture_output=True, text=True, timeout=300)
    gen = json.loads(g.stdout)
    full = ids + gen["ids"]
    st, c = s.post("/v1/completions", {"prompt": full, "max_tokens": 0, "prompt_logprobs": 3})
    pl = c["choices"][0]["prompt_logprobs"]
    worst, ok = 0.0, len(pl) == len(full)
    for k in range(n):
        d = pl[len(ids) + k]
        want = gen["top_logprobs"][k]
        got = sorted(((v["rank"], int(key), v["logprob"]) for key, v in d.items() if v["rank"] <= 3))
        if [t[1] for t in got] != [w["id"] for w in want]:
            ok = False
        for t, w in zip(got, want):
            worst = max(worst, abs(t[2] - w["logprob"]))
        if d[str(gen["ids"][k])]["logprob"] != got[0][2]:  # greedy: the token is the top one
            ok = False
    print("prompt_logprobs vs generate --json: %d positions, max |dlogprob| %.2e" % (n, worst))
    check("prompt_logprobs == generate --json's distributions (same ids, |dlogprob| <= 1e-4)", ok and worst <= 1e-4,
          worst)
    st, b = s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
                                            "prompt_logprobs": 0})
    check("chat: prompt_logprobs at the top level", st == 200 and b["prompt_logprobs"][0] is None and
          all(len(d) == 1 for d in b["prompt_logprobs"][1:]), b)
    st, b = s.post("/v1/completions", {"prompt": "x", "stream": True, "prompt_logprobs": 1})
    check("prompt_logprobs with stream refused (vLLM)", is_err(st, b, "prompt_logprobs"), b)


def test_min_tokens_stop(s):
    base = {"prompt": "Once upon a time", "temperature": 0, "ignore_eos": True}
    st, full = s.post("/v1/completions", dict(base, max_tokens=20, logprobs=0))
    text = full["choices"][0]["text"]
    check("stop_reason null at length", full["choices"][0]["stop_reason"] is None)
    # a stop string inside the first tokens' text is not matched before min_tokens
    stop = next((text[i:i + 2] for i in range(0, 6) if text[i:i + 2].strip() and "\ufffd" not in text[i:i + 2]), None)
    st, cut = s.post("/v1/completions", dict(base, max_tokens=20, stop=[stop]))
    check("the stop string cuts without min_tokens", cut["choices"][0]["finish_reason"] == "stop" and
          cut["choices"][0]["stop_reason"] == stop and len(cut["choices"][0]["text"]) < len(text), cut)
    st, kept = s.post("/v1/completions", dict(base, max_tokens=20, stop=[stop], min_tokens=20))
    st, ref = s.post("/v1/completions", dict(base, max_tokens=20, min_tokens=20, logprobs=0))
    kt, rt = kept["choices"][0]["text"], ref["choices"][0]["text"]
    check("min_tokens = max_tokens: the stop string does not match (it is in the text)",
          kt == rt and stop in kt and kept["choices"][0]["finish_reason"] == "length", kept)
    # vLLM: once min_tokens are out, a stop string is looked for in the new text only (with
    # len - 1 bytes before it): one that ended within the first 3 tokens never matches
    b3 = ref["choices"][0]["logprobs"]["text_offset"][3]
    early = [ch for ch in rt[:b3] if ch not in rt[b3:] and ch.strip() and ch != "\ufffd"]
    check("a character that only the first 3 tokens' text holds", early, rt)
    if early:
        st, a = s.post("/v1/completions", dict(base, max_tokens=20, stop=[early[-1]], min_tokens=3))
        check("a stop string that ended within min_tokens does not match later",
              a["choices"][0]["text"] == rt and a["choices"][0]["finish_reason"] == "length", (early, a))
    # a stop id: ends at once, reported as the id, its text left out (vLLM)
    g = subprocess.run([BIN, "generate", "--model", MODEL, "--prompt-ids", "1,20,30,40", "--max-tokens", "4",
                        "--ignore-eos", "--json", "--log-level", "error"], capture_output=True, text=True, timeout=300)
    gen = json.loads(g.stdout)
    gid = gen["ids"][0]
    st, t = s.post("/v1/completions", dict(base, prompt=[1, 20, 30, 40], max_tokens=1))
    st, a = s.post("/v1/completions", dict(base, prompt=[1, 20, 30, 40], max_tokens=20, stop_token_ids=[gid]))
    c = a["choices"][0]
    check("stop id: finish stop, stop_reason the id (a number), no text, 1 token",
          c["finish_reason"] == "stop" and c["stop_reason"] == gid and c["text"] == "" and
          a["usage"]["completion_tokens"] == 1, a)
    st, a = s.post("/v1/completions", dict(base, prompt=[1, 20, 30, 40], max_tokens=20, stop_token_ids=[gid],
                                           include_stop_str_in_output=True))
    check("include_stop_str_in_output keeps the stop token's text", a["choices"][0]["text"] == t["choices"][0]["text"], a)
    st, a = s.post("/v1/completions", dict(base, prompt=[1, 20, 30, 40], max_tokens=20, stop_token_ids=[gid],
                                           min_tokens=3, logprobs=0))
    c = a["choices"][0]
    check("min_tokens 3: the stop id is not among the first 3 tokens",
          c["finish_reason"] == "length" or (c["stop_reason"] == gid and a["usage"]["completion_tokens"] > 3), a)
    st, a = s.post("/v1/completions", dict(base, prompt=[1, 20, 30, 40], max_tokens=2, min_tokens=3))
    check("min_tokens > max_tokens", is_err(st, a, "min_tokens"), a)


def test_truncation(s):
    ids = [1] + [5 + (i * 7) % 500 for i in range(2499)]
    st, b = s.post("/v1/completions", {"prompt": ids, "max_tokens": 4})
    check("too long: 400 naming both numbers and the way out", is_err(st, b, "prompt") and "2048" in b["error"]["message"]
          and "2500" in b["error"]["message"] and "truncate_prompt_tokens" in b["error"]["message"], b)
    st, a = s.post("/v1/completions", {"prompt": ids, "max_tokens": 4, "truncate_prompt_tokens": 100,
                                       "temperature": 0, "ignore_eos": True})
    st2, b = s.post("/v1/completions", {"prompt": ids[-100:], "max_tokens": 4, "temperature": 0, "ignore_eos": True})
    check("truncate_prompt_tokens 100 = the last 100 tokens", st == 200 and a["usage"]["prompt_tokens"] == 100 and
          a["choices"][0]["text"] == b["choices"][0]["text"], a)
    st, a = s.post("/v1/completions", {"prompt": ids, "max_tokens": 8, "truncate_prompt_tokens": -1,
                                       "temperature": 0, "ignore_eos": True})
    check("truncate_prompt_tokens -1: what fits beside max_tokens", st == 200 and a["usage"]["prompt_tokens"] == 2040, a)
    st, a = s.post("/v1/completions", {"prompt": ids, "max_tokens": 8, "truncate_prompt_tokens": 2045})
    check("truncate_prompt_tokens too large: 400 with the numbers", is_err(st, a, "truncate_prompt_tokens") and
          "2040" in a["error"]["message"], a)
    st, a = s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hello " * 1500}],
                                            "max_tokens": 2, "truncate_prompt_tokens": 50})
    check("chat: truncated after templating", st == 200 and a["usage"]["prompt_tokens"] == 50, a)


def test_progress():
    s = Server("--max-batched-tokens", "256")
    try:
        ids = [1] + [5 + (i * 11) % 500 for i in range(1499)]
        for k, how in enumerate(({"stream_options": {"include_progress": True}}, {"return_progress": True})):
            p = [1] + [5 + (i * 11 + k) % 500 for i in range(1499)]  # no prefix shared with the others
            st, ev, done = s.stream(dict({"prompt": p, "max_tokens": 2, "stream": True}, **how))
            prog = [e["prompt_progress"] for e in ev if "prompt_progress" in e]
            first_text = next(i for i, e in enumerate(ev) if e["choices"])
            last_prog = max(i for i, e in enumerate(ev) if "prompt_progress" in e) if prog else -1
            steps = [p["processed"] for p in prog]
            check("progress (%s): chunks growing to the prompt, before the text" % list(how)[0],
                  st == 200 and done and len(prog) >= 5 and steps == sorted(set(steps)) and steps[-1] == 1500 and
                  all(p["total"] == 1500 and p["cache"] == 0 and p["time_ms"] >= 0 for p in prog) and
                  last_prog < first_text, prog)
        st, ev, done = s.stream({"prompt": ids, "max_tokens": 2, "stream": True})
        check("no progress unless asked", done and not any("prompt_progress" in e for e in ev))
        st, ev, done = s.stream({"prompt": ids, "max_tokens": 2, "stream": True, "return_progress": True})
        prog = [e["prompt_progress"] for e in ev if "prompt_progress" in e]
        check("a prefix-cache hit shows as cache", prog and prog[-1]["cache"] == 1488 and prog[-1]["processed"] == 1500,
              prog)
    finally:
        s.stop()


def test_priority_salt(s):
    st, b = s.post("/v1/completions", {"prompt": "x", "max_tokens": 1, "priority": 1})
    check("priority refused under fcfs", is_err(st, b, "priority") and "--scheduling-policy" in b["error"]["message"], b)
    st, b = s.post("/v1/completions", {"prompt": "x", "max_tokens": 1, "priority": 0})
    check("priority 0 under fcfs", st == 200, b)
    p = Server("--scheduling-policy", "priority")
    try:
        st, b = p.post("/v1/completions", {"prompt": "x", "max_tokens": 1, "priority": -7})
        check("priority taken under --scheduling-policy priority", st == 200, b)
    finally:
        p.stop()

    def hits():
        st, text = s.request("GET", "/metrics", raw=True)
        for line in text.decode().split("\n"):
            if line.startswith("ropeserve:prefix_cache_hits_total"):
                return float(line.split()[-1])
        return -1

    ids = [1] + [7 + (i * 13) % 500 for i in range(399)]
    body = {"prompt": ids, "max_tokens": 1}
    s.post("/v1/completions", dict(body, cache_salt="tenant-a"))
    h0 = hits()
    s.post("/v1/completions", dict(body, cache_salt="tenant-b"))
    h1 = hits()
    s.post("/v1/completions", dict(body, cache_salt="tenant-a"))
    h2 = hits()
    s.post("/v1/completions", body)
    h3 = hits()
    check("cache_salt: another salt shares nothing, the same salt shares the prefix, no salt is another tenant",
          h1 == h0 and h2 > h1 and h3 == h2, (h0, h1, h2, h3))


def test_logs_cli(s):
    log = s.log()
    check("a 400 is logged at info with its message", " info  HTTP 400 (param 'temperatur'): unknown field" in log, log[-2000:])
    check("a completion is logged at info: status, tokens, ttft, total",
          any(" info  cmpl-" in l and ": 200, prompt " in l and "ttft" in l and "total" in l for l in log.split("\n")))
    v = subprocess.run([BIN, "--version"], capture_output=True, text=True, timeout=60).stdout
    check("--version: backends and what auto picks", v.startswith("ropeserve ") and "(backends: cpu" in v and
          "--device auto picks " in v, v)
    g = subprocess.run([BIN, "generate", "--model", MODEL, "--prompt", "Hello", "--max-tokens", "4"],
                       capture_output=True, text=True, timeout=300)
    check("generate: the text ends with a newline", g.stdout.endswith("\n") and g.returncode == 0, repr(g.stdout))


def main():
    if not os.access(BIN, os.X_OK):
        print("FAIL: %s not built" % BIN)
        print("test_strict: 0 passed, 1 failed")
        return 1
    s = Server()
    try:
        test_bodies(s)
        test_prompt_logprobs(s)
        test_min_tokens_stop(s)
        test_truncation(s)
        test_priority_salt(s)
        test_logs_cli(s)
    finally:
        s.stop()
    test_progress()
    print("test_strict: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
