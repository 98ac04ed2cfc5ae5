#!/usr/bin/env python3
"""Per-request RoPE end to end: length-aware YaRN (--rope-scaling-mode per-request), STRING from the
command line and per request (string_config), their interaction with the prefix cache, and the
errors around them. Uses the tiny RoPE fixture models of tests/fixtures/rope/models (yarn: original
context 64, factor 16, max_position_embeddings 1024).

  - per-request mode picks the smallest power of two >= (prompt + max_tokens) / 64, capped at 16,
    and a request then computes exactly what a static run with that factor computes;
  - over HTTP, two requests with the same prompt and different factors both match their static runs
    (the prefix cache must not hand factor-2 keys to a factor-16 request);
  - string_config in a request == --string-shift/--string-local on the command line, and a plain
    request after a STRING one (same prompt, shared prefix blocks) == a plain run;
  - bad values fail with a message (CLI) or a 400 naming the parameter (HTTP), never a crash.

ROPESERVE_BIN overrides build/ropeserve. Ends with "test_rope_modes: N passed, N failed".
"""
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("ROPESERVE_BIN", os.path.join(ROOT, "build", "ropeserve"))
MODELS = os.path.join(ROOT, "tests", "fixtures", "rope", "models")
YARN = os.path.join(MODELS, "yarn")
LINEAR = os.path.join(MODELS, "linear")
TOL = 1e-4

passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL %s %s" % (name, detail))


def run(args, timeout=300):
    p = subprocess.run([BIN] + args, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def generate(model, ids, max_tokens, *extra):
    rc, out, err = run(["generate", "--model", model, "--prompt-ids", ",".join(map(str, ids)), "--max-tokens",
                        str(max_tokens), "--top-logprobs", "5", "--json", "--ignore-eos"] + list(extra))
    if rc != 0:
        raise RuntimeError("generate %s failed (%d): %s" % (" ".join(extra), rc, err.strip()[-300:]))
    return json.loads(out)


def same(a, b):
    """Same greedy tokens and top-5 log-probs within TOL. Returns (ok, detail)."""
    if a["ids"] != b["ids"]:
        return False, "ids %s vs %s" % (a["ids"], b["ids"])
    worst = 0.0
    for sa, sb in zip(a["top_logprobs"], b["top_logprobs"]):
        if [e["id"] for e in sa] != [e["id"] for e in sb]:
            return False, "top ids differ"
        worst = max(worst, max(abs(x["logprob"] - y["logprob"]) for x, y in zip(sa, sb)))
    return worst <= TOL, "max |dlogprob| %.2e" % worst


def prompt(n, seed):
    r = random.Random(seed)
    return [1] + [r.randrange(3, 512) for _ in range(n - 1)]


def test_cli():
    # length-aware YaRN: (prompt + max_tokens) -> factor, then equal to the static run
    for n, mt, want in [(20, 12, 1), (58, 12, 2), (60, 4, 1), (20, 100, 2), (128, 12, 4), (300, 12, 8),
                        (512, 12, 16), (900, 12, 16)]:
        ids = prompt(n, n)
        try:
            a = generate(YARN, ids, mt, "--rope-scaling-mode", "per-request", "--max-model-len", "1024")
            b = generate(YARN, ids, mt, "--rope-scale", str(want), "--max-model-len", "1024")
        except Exception as e:  # noqa: BLE001
            check("per-request %d+%d" % (n, mt), False, str(e))
            continue
        check("per-request %d+%d picks factor %d" % (n, mt, want), a["rope_factor"] == want, "got %s" % a["rope_factor"])
        ok, detail = same(a, b)
        check("per-request %d+%d == static --rope-scale %d" % (n, mt, want), ok, detail)
        if want < 16 and n + mt > 64:
            c = generate(YARN, ids, mt, "--max-model-len", "1024")
            check("per-request %d+%d differs from static factor 16" % (n, mt), not same(a, c)[0])

    # errors: the mode needs a static yarn model; STRING values
    rc, out, err = run(["generate", "--model", LINEAR, "--prompt-ids", "1,2,3", "--rope-scaling-mode", "per-request"])
    check("per-request on linear fails cleanly", 0 < rc < 128 and "needs a static yarn model" in err, err.strip())
    rc, out, err = run(["generate", "--model", YARN, "--prompt-ids", "1,2,3", "--rope-scaling-mode", "sometimes"])
    check("bad --rope-scaling-mode", 0 < rc < 128 and "expected static or per-request" in err, err.strip())
    rc, out, err = run(["generate", "--model", YARN, "--prompt-ids", "1,2,3", "--string-shift", "40",
                        "--string-local", "40"])
    check("--string-local >= --string-shift", 0 < rc < 128 and "must be below" in err, err.strip())
    rc, out, err = run(["generate", "--model", YARN, "--prompt-ids", "1,2,3", "--string-local", "4"])
    check("--string-local alone", 0 < rc < 128 and "needs --string-shift" in err, err.strip())
    rc, out, err = run(["generate", "--model", YARN, "--prompt-ids", "1,2,3", "--string-shift", "100"])
    check("--string-shift below the default local window", 0 < rc < 128 and "must be below" in err, err.strip())

    # rope --json shows STRING; --string-shift 0 turns the config's off
    rc, out, err = run(["rope", "--model", YARN, "--json", "--string-shift", "40", "--string-local", "6"])
    d = json.loads(out) if rc == 0 else {}
    check("rope --json string", d.get("string", {}).get("shifted_offset") == 40 and
          d["string"].get("local_value") == 6 and abs(d["string"]["attention_factor"] - 1.0693147181) < 1e-9, out)
    rc, out, err = run(["rope", "--model", YARN, "--json"])
    check("rope --json without STRING", rc == 0 and "string" not in json.loads(out), out)

    # STRING: S beyond the sequence uses the local band only; S inside it changes the result
    ids = prompt(100, 7)
    a = generate(YARN, ids, 6, "--string-shift", "4000", "--string-local", "3", "--max-model-len", "1024")
    b = generate(YARN, ids, 6, "--string-shift", "5000", "--string-local", "0", "--max-model-len", "1024")
    c = generate(YARN, ids, 6, "--string-shift", "40", "--string-local", "6", "--max-model-len", "1024")
    p = generate(YARN, ids, 6, "--max-model-len", "1024")
    check("STRING with S >= length does not depend on S or W", same(a, b)[0], same(a, b)[1])
    check("STRING with S >= length is not plain (the 1.0693 factor)", not same(a, p)[0])
    check("STRING with S = 40 differs from S >= length", not same(a, c)[0])


# ------------------------------------------------------------------------------------------- HTTP

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def completion_logprob(url, ids, max_tokens, **extra):
    body = {"prompt": ids, "max_tokens": max_tokens, "temperature": 0, "logprobs": 1, "ignore_eos": True}
    body.update(extra)
    st, d = post(url + "/v1/completions", body)
    if st != 200:
        raise RuntimeError("HTTP %d: %s" % (st, d))
    return d["choices"][0]["logprobs"]["token_logprobs"], d["choices"][0]["text"]


def test_http():
    port = free_port()
    url = "http://127.0.0.1:%d" % port
    log = open(os.path.join(ROOT, "build", "test-logs", "test_rope_modes.server.log"), "w") \
        if os.path.isdir(os.path.join(ROOT, "build", "test-logs")) else subprocess.DEVNULL
    srv = subprocess.Popen([BIN, "serve", "--model", YARN, "--port", str(port), "--rope-scaling-mode", "per-request",
                            "--max-model-len", "1024"], stdout=log, stderr=log)
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:  # noqa: BLE001
                pass
            if srv.poll() is not None:
                break
            time.sleep(0.1)
        with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
            m = json.loads(r.read())["data"][0]["rope"]
        check("/v1/models rope_scaling_mode", m.get("rope_scaling_mode") == "per-request", str(m))

        ids = prompt(100, 11)
        # factor 2 first (100 + 4 <= 128), then factor 16 with the same prompt (prefix blocks cached)
        for mt, f in [(4, 2), (600, 16), (4, 2)]:
            lp, _ = completion_logprob(url, ids, mt)
            ref = generate(YARN, ids, 1, "--rope-scale", str(f), "--max-model-len", "1024")
            d = abs(lp[0] - ref["top_logprobs"][0][0]["logprob"])
            check("HTTP per-request max_tokens %d == static factor %d (prefix cache keyed by factor)" % (mt, f),
                  d <= TOL, "|dlogprob| %.2e" % d)

        # STRING per request, then plain with the same prompt: each must miss the other's cached
        # blocks (STRING changes the layers' outputs, hence the keys and values above layer 0)
        sc = {"shifted_offset": 40, "local_value": 6}
        for extra, cli in [({"string_config": sc}, ["--string-shift", "40", "--string-local", "6"]), ({}, []),
                           ({"string_config": {"shifted_offset": 0}}, [])]:
            lp, _ = completion_logprob(url, ids, 4, **extra)
            ref = generate(YARN, ids, 4, "--rope-scaling-mode", "per-request", "--max-model-len", "1024", *cli)
            d = max(abs(x - y[0]["logprob"]) for x, y in zip(lp, ref["top_logprobs"]))
            check("HTTP %s == CLI %s" % (json.dumps(extra), " ".join(cli) or "plain"), d <= TOL, "%.2e" % d)

        for bad, frag in [("abc", "must be an object"), ({"local_value": 3}, "needs 'shifted_offset'"),
                          ({"shifted_offset": 10, "local_value": 10}, "must be below"),
                          ({"shifted_offset": -1}, "between"), ({"shifted_offset": 10, "local": 1}, "unknown key"),
                          ({"shifted_offset": 1.5}, "integer")]:
            st, d = post(url + "/v1/completions", {"prompt": "hi", "max_tokens": 1, "string_config": bad})
            e = d.get("error", {})
            check("string_config %s -> 400" % json.dumps(bad), st == 400 and e.get("param") == "string_config" and
                  frag in e.get("message", ""), "%d %s" % (st, d))
        st, d = post(url + "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                                   "string_config": {"shifted_offset": 30, "local_value": 2}})
        check("chat accepts string_config", st == 200, "%d %s" % (st, d))
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            met = r.read().decode()
        used = [l for l in met.splitlines() if l.startswith("ropeserve:kv_cache_usage_perc")]
        check("no KV block held after the requests", used and all(float(l.split()[-1]) == 0.0 for l in used),
              str(used))
    finally:
        srv.terminate()
        try:
            srv.wait(timeout=30)
        except subprocess.TimeoutExpired:
            srv.kill()
    check("server exits cleanly", srv.returncode == 0, "exit %s" % srv.returncode)


def main():
    t0 = time.time()
    if not os.path.exists(BIN):
        print("FAIL: %s not built" % BIN)
        print("test_rope_modes: 0 passed, 1 failed")
        return 1
    for t in (test_cli, test_http):
        try:
            t()
        except Exception as e:  # noqa: BLE001  (a crash fails the suite, not the runner)
            check(t.__name__, False, "raised %r" % e)
    print("(%.1f s)" % (time.time() - t0))
    print("test_rope_modes: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
