#!/usr/bin/env python3
"""`ropeserve eval --url` against mock OpenAI-compatible servers that behave like the servers
users compare us with, none of them ropeserve:

  - "llamacpp": /tokenize takes {"content"} (a {"prompt"} body gets 400), /v1/models has no
    max_model_len, completions refuse max_tokens 0 and return a null first prompt logprob;
  - "bare": no /tokenize at all (404): passkey prompts are sized by usage.prompt_tokens, and
    perplexity must fail with a clear message (it needs the token ids).

The mock's tokenizer is one token per whitespace-separated word (+ BOS 1), and its log p of a
token depends only on the token id, so the exact perplexity of the text is known whatever the
windows are: every text token scored exactly once gives exp(-mean f(id)). Its passkey answer is
the key it finds in the prompt ("good") or a wrong number ("bad"), so accuracy must be 100% / 0%.
Also: bad flags fail with a message, never a crash. Ends with "test_eval_url: N passed, N failed".
"""
import http.server
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("ROPESERVE_BIN", os.path.join(ROOT, "build", "ropeserve"))

passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL:", what)


def tok_id(word):
    return 3 + zlib.crc32(word.encode()) % 997


def f_lp(i):
    return -0.25 * (1 + i % 7)


class Mock(http.server.BaseHTTPRequestHandler):
    mode = "llamacpp"
    answer = "good"
    seen = []

    def log_message(self, *a):
        pass

    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/v1/models":
            return self.reply(200, {"object": "list", "data": [{"id": "mock-model", "object": "model"}]})
        self.reply(404, {"error": {"message": "not found"}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Mock.seen.append((self.path, body))
        if self.path == "/tokenize":
            if Mock.mode == "bare":
                return self.reply(404, {"error": {"message": "not found"}})
            if "content" not in body:
                return self.reply(400, {"error": {"message": "'content' is required"}})
            ids = ([1] if body.get("add_special") else []) + [tok_id(w) for w in body["content"].split()]
            return self.reply(200, {"tokens": ids})
        if self.path != "/v1/completions":
            return self.reply(404, {"error": {"message": "not found"}})
        if body.get("model") != "mock-model":
            return self.reply(404, {"error": {"message": "model not found"}})
        if body.get("max_tokens", 16) < 1:
            return self.reply(400, {"error": {"message": "max_tokens must be at least 1", "param": "max_tokens"}})
        p = body["prompt"]
        if isinstance(p, list):
            if not (body.get("echo") and body.get("logprobs") is not None):
                return self.reply(400, {"error": {"message": "token prompts only with echo"}})
            lps = [None] + [f_lp(i) for i in p[1:]] + [-0.1] * body["max_tokens"]
            return self.reply(200, {"choices": [{"text": " x", "index": 0, "finish_reason": "length",
                                                 "logprobs": {"token_logprobs": lps}}],
                                    "usage": {"prompt_tokens": len(p)}})
        m = re.search(r"The pass key is (\d+)\.", p)
        text = f" {m.group(1)}. Remember" if (m and Mock.answer == "good") else " 4242."
        return self.reply(200, {"choices": [{"text": text, "index": 0, "finish_reason": "length",
                                             "logprobs": None}],
                                "usage": {"prompt_tokens": 1 + len(p.split()), "completion_tokens": 3}})


def run(*args):
    r = subprocess.run([BIN, "eval", *args], capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr


def main():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mock)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"

    for mode in ("llamacpp", "bare"):
        Mock.mode = mode
        for answer, want in (("good", 100.0), ("bad", 0.0)):
            Mock.answer = answer
            Mock.seen.clear()
            rc, out, err = run("passkey", "--url", url, "--lengths", "300,1k", "--trials", "4", "--json")
            check(rc == 0, f"{mode}/{answer}: exit {rc}: {err}")
            if rc:
                continue
            res = json.loads(out.strip().splitlines()[-1])
            rows = res["lengths"]
            check([r["length"] for r in rows] == [300, 1024], f"{mode}: lengths {rows}")
            check(all(r["accuracy"] * 100 == want and r["trials"] == 4 for r in rows),
                  f"{mode}/{answer}: accuracy {rows}")
            # prompts fit the length tightly (one garbage repetition is ~20 words)
            check(all(r["length"] - 25 <= r["prompt_tokens"] <= r["length"] for r in rows),
                  f"{mode}: prompt sizes {rows}")
            comps = [b for p, b in Mock.seen if p == "/v1/completions" and b.get("max_tokens") == 10]
            check(len(comps) == 8 and all(b["temperature"] == 0 for b in comps),
                  f"{mode}: greedy 10-token completions: {len(comps)}")
            keys = [int(re.search(r"The pass key is (\d+)\.", b["prompt"]).group(1)) for b in comps]
            check(all(1 <= k <= 50000 for k in keys) and len(set(keys)) > 1, f"keys {keys}")
            depths = [b["prompt"].index("The pass key is") / len(b["prompt"]) for b in comps[:4]]
            check(depths == sorted(depths) and depths[0] < 0.3 and depths[-1] > 0.7,
                  f"{mode}: depths spread {depths}")

    # perplexity: exact value whatever the window and stride
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        words = [f"w{(i * 7919) % 1013}" for i in range(2500)]
        fh.write(" ".join(words) + "\n")
        path = fh.name
    try:
        ids = [tok_id(w) for w in words]
        Mock.mode = "llamacpp"
        for n_text in (2500, 1000):
            want = __import__("math").exp(-sum(f_lp(i) for i in ids[:n_text]) / n_text)
            rc, out, err = run("perplexity", "--url", url, "--text", path, "--windows", "256,1000",
                               "--stride", "100", "--max-text-tokens", str(n_text), "--json")
            check(rc == 0, f"perplexity: exit {rc}: {err}")
            if rc == 0:
                res = json.loads(out.strip().splitlines()[-1])
                for r in res["windows"]:
                    check(r["scored_tokens"] == n_text, f"every token scored once: {r}")
                    check(abs(r["perplexity"] - want) < 1e-3 * want, f"ppl {r['perplexity']} vs {want}")
        Mock.mode = "bare"
        rc, out, err = run("perplexity", "--url", url, "--text", path, "--windows", "256")
        check(rc == 1 and "token ids" in err, f"perplexity without /tokenize: {rc} {err}")
    finally:
        os.unlink(path)

    # bad flags: a message, exit 1, no crash
    for args, pat in ((["passkey", "--url", url, "--lengths", "5x"], "--lengths"),
                      (["passkey", "--url", url, "--model", "x"], "not both"),
                      (["passkey"], "--model DIR or --url URL"),
                      (["perplexity", "--url", url], "--text FILE is required"),
                      (["passkey", "--url", url, "--text", "/etc/hostname"], "--text applies"),
                      (["passkey", "--url", url, "--trials", "0"], "--trials"),
                      (["passkey", "--url", url, "--remote-model", "nope", "--lengths", "300"], "model not found"),
                      (["passkey", "--url", "http://127.0.0.1:1", "--lengths", "300"], "127.0.0.1:1"),
                      (["nonsense"], "expected a task")):
        rc, out, err = run(*args)
        check(rc == 1 and pat in err, f"{args}: exit {rc}, stderr {err!r}")
    srv.shutdown()
    print(f"test_eval_url: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
