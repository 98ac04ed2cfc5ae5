#!/usr/bin/env python3
"""soak.py - mixed hostile traffic against `ropeserve serve` on loopback, bounded in count and time.

    tools/soak.py [--seconds S] [--requests N] [--workers W] [--slow N] [--model DIR | --url URL --pid PID]
                  [--min-per-kind K]

Starts build/ropeserve on a free loopback port (or attaches to --url, whose process --pid names,
for RSS), then runs W workers for S seconds or N requests, whichever ends first. Each request is
one of: completion, stream, chat, cancelled stream (reads a chunk, hangs up), hang-up (sends a
completion, closes before the answer), bad input (malformed JSON, wrong types, trailing garbage,
NUL in a string, duplicate Content-Length), tokenize, health. --slow N first opens N connections
from 127.0.0.1 that trickle a header line every 2 s and keep doing so, and measures /health and a
completion from another client address (127.0.0.2) while they are open.

Prints requests by kind, errors by kind (an "error" is any outcome that kind must not have: a 5xx, a
reset on a request the server should have answered, a wrong status), RSS at start and end, and KV
usage / running / waiting at the end (after the server settles). Exit status 0 when no error and the
server ended idle (0 running, 0 waiting, 0 KV blocks used); 1 otherwise. --min-per-kind K also fails
when a kind ran fewer than K times (make test's short run). Loopback only: --url must be 127.x.
"""
import argparse
import http.client
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ["completion", "stream", "chat", "cancelled_stream", "hangup", "bad_input", "tokenize", "health"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


class Soak:
    def __init__(self, host, port, deadline, max_requests, source=None):
        self.host, self.port, self.source = host, port, source
        self.deadline, self.max_requests = deadline, max_requests
        self.mu = threading.Lock()
        self.count = {k: 0 for k in KINDS}
        self.errors = {}
        self.started = 0

    def take(self):
        with self.mu:
            if time.time() >= self.deadline or self.started >= self.max_requests:
                return False
            self.started += 1
            return True

    def note(self, kind, err=None):
        with self.mu:
            self.count[kind] += 1
            if err:
                key = "%s: %s" % (kind, err)
                self.errors[key] = self.errors.get(key, 0) + 1

    def conn(self, timeout=60, source=None):
        source = source or self.source
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout,
                                          source_address=(source, 0) if source else None)

    def sock(self, timeout):
        return socket.create_connection((self.host, self.port), timeout=timeout,
                                        source_address=(self.source, 0) if self.source else None)

    def post(self, path, body, timeout=60):
        c = self.conn(timeout)
        try:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            c.request("POST", path, data, {"Content-Type": "application/json"})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def raw(self, data, timeout=30):
        s = self.sock(timeout)
        try:
            s.sendall(data)
            out = b""
            while b"\r\n\r\n" not in out:
                b = s.recv(4096)
                if not b:
                    break
                out += b
            m = re.match(rb"HTTP/1\.[01] (\d+)", out)
            return int(m.group(1)) if m else 0
        finally:
            s.close()

    def one(self, rng):
        kind = rng.choice(KINDS)
        try:
            err = getattr(self, "do_" + kind)(rng)
        except (OSError, http.client.HTTPException) as e:
            err = type(e).__name__
        self.note(kind, err)

    def do_completion(self, rng):
        st, body = self.post("/v1/completions", {"prompt": "hello " * rng.randint(1, 200),
                                                 "max_tokens": rng.randint(1, 24), "temperature": rng.choice([0, 0.8])})
        if st == 429:
            return None
        if st != 200:
            return "status %d" % st
        j = json.loads(body)
        return None if j["choices"][0]["finish_reason"] in ("stop", "length") else "finish %s" % j["choices"][0]["finish_reason"]

    def do_chat(self, rng):
        st, body = self.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi " * rng.randint(1, 50)}],
                                                      "max_tokens": rng.randint(1, 16)})
        return None if st in (200, 429) else "status %d" % st

    def stream(self, rng, cancel):
        c = self.conn(60)
        try:
            c.request("POST", "/v1/completions", json.dumps({"prompt": "a b c " * rng.randint(1, 100), "stream": True,
                                                             "max_tokens": rng.randint(8, 48)}),
                      {"Content-Type": "application/json"})
            r = c.getresponse()
            if r.status == 429:
                return None
            if r.status != 200:
                return "status %d" % r.status
            if cancel:
                r.fp.readline()
                c.sock.shutdown(socket.SHUT_RDWR)
                return None
            text = r.read()
            if not text.rstrip().endswith(b"data: [DONE]"):
                return "no [DONE]"
            return None
        finally:
            c.close()

    def do_stream(self, rng):
        return self.stream(rng, False)

    def do_cancelled_stream(self, rng):
        return self.stream(rng, True)

    def do_hangup(self, rng):
        body = json.dumps({"prompt": "x " * 50, "max_tokens": 32}).encode()
        s = self.sock(10)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                  % len(body) + body)
        time.sleep(rng.random() * 0.05)
        s.close()
        return None

    def do_bad_input(self, rng):
        bad = [(b'{"prompt": "x", "max_tokens": 4} trailing', 400), (b'{"prompt": "a\x00b"}', 400),
               (b'{"prompt": 5}', 400), (b'{"prompt": "x", "max_tokens": "many"}', 400), (b'{', 400),
               (b'{"prompt": "x", "seed": 18446744073709551616}', 400), (b'{"prompt": "x", "logit_bias": {" 5": 1}}', 400),
               (b'[]', 400), (b'{"messages": "hi"}', 400)]
        body, want = rng.choice(bad)
        if rng.random() < 0.2:  # duplicate Content-Length: refused, connection closed
            st = self.raw(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}")
            return None if st == 400 else "duplicate Content-Length: status %d" % st
        path = "/v1/chat/completions" if b"messages" in body else "/v1/completions"
        st, _ = self.post(path, body)
        return None if st == want else "status %d for %r" % (st, body[:40])

    def do_tokenize(self, rng):
        st, body = self.post("/tokenize", {"prompt": "<s>" * rng.randint(0, 2000) + "hello"})
        return None if st == 200 else "status %d" % st

    def do_health(self, rng):
        c = self.conn(30)
        try:
            c.request("GET", "/health")
            r = c.getresponse()
            r.read()
            return None if r.status == 200 else "status %d" % r.status
        finally:
            c.close()

    def metrics(self):
        c = self.conn(30)
        try:
            c.request("GET", "/metrics")
            r = c.getresponse()
            text = r.read().decode()
        finally:
            c.close()
        out = {}
        for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
            m = re.search(r"^ropeserve:%s\{[^}]*\} (\S+)" % name, text, re.M)
            out[name] = float(m.group(1)) if m else float("nan")
        return out


def slow_clients(host, port, n, stop):
    """n connections from 127.0.0.1 trickling a header line every 2 s. Returns (opened, refused)."""
    socks, refused = [], 0
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect_ex((host, port))
        except OSError:
            refused += 1
            s.close()
            continue
        socks.append(s)
    time.sleep(0.5)
    alive = []
    for s in socks:
        try:
            s.send(b"GET /health HTTP/1.1\r\n")
            alive.append(s)
        except OSError:
            refused += 1
            s.close()
    time.sleep(1.0)
    # the server closes what is over --max-connections-per-ip at accept: EOF or a reset here
    still = []
    for s in alive:
        try:
            if s.recv(1) == b"":
                raise ConnectionResetError
            still.append(s)  # data: not expected, count it as held
        except BlockingIOError:
            still.append(s)
        except OSError:
            refused += 1
            s.close()
    alive = still
    state = {"opened": len(alive), "refused": refused}

    def trickle():
        i = 0
        while not stop.is_set():
            for s in list(alive):
                try:
                    s.send(b"X-Slow-%d: 1\r\n" % i)
                except OSError:
                    alive.remove(s)
                    s.close()
            i += 1
            stop.wait(2)
        for s in alive:
            s.close()

    th = threading.Thread(target=trickle, daemon=True)
    th.start()
    return state, th


def timed(fn):
    t = time.time()
    try:
        ok = fn()
    except (OSError, http.client.HTTPException) as e:
        ok = type(e).__name__
    return ok, time.time() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--requests", type=int, default=100000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--slow", type=int, default=0)
    ap.add_argument("--model", default=os.path.join(ROOT, "build/demo-model"))
    ap.add_argument("--url")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--min-per-kind", type=int, default=0)
    ap.add_argument("--server-args", default="")
    a = ap.parse_args()

    # each slow connection is a descriptor here: raise the soft limit to the hard one, and open
    # no more than it allows
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        if a.slow > soft - 200:
            print("soak: --slow %d is over this process's descriptor limit; opening %d" % (a.slow, soft - 200))
            a.slow = max(0, soft - 200)
    except (ImportError, ValueError, OSError):
        pass
    proc = None
    if a.url:
        m = re.match(r"http://(127\.\d+\.\d+\.\d+):(\d+)/?$", a.url)
        if not m:
            sys.exit("soak: --url must be http://127.x.x.x:PORT (loopback only)")
        host, port, pid = m.group(1), int(m.group(2)), a.pid or -1
    else:
        host, port = "127.0.0.1", free_port()
        log = open(os.environ.get("SOAK_LOG", "/tmp/soak-server.%d.log" % os.getpid()), "w")
        cmd = [os.path.join(ROOT, "build/ropeserve"), "serve", "--model", a.model, "--port", str(port),
               "--max-num-seqs", "16", "--max-queue", "64"] + a.server_args.split()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        pid = proc.pid
    soak = Soak(host, port, time.time() + 600, 1)
    for _ in range(600):
        try:
            if soak.do_health(None) is None:
                break
        except OSError:
            pass
        if proc and proc.poll() is not None:
            sys.exit("soak: the server exited during start-up")
        time.sleep(0.1)
    rss0 = rss_kb(pid)
    failed = False
    stop = threading.Event()
    try:
        if a.slow:
            state, th = slow_clients(host, port, a.slow, stop)
            other = Soak(host, port, 0, 0)

            def health():
                c = other.conn(30, source="127.0.0.2")
                c.request("GET", "/health")
                r = c.getresponse()
                r.read()
                c.close()
                return r.status == 200

            def completion():
                c = other.conn(60, source="127.0.0.2")
                c.request("POST", "/v1/completions", json.dumps({"prompt": "hello", "max_tokens": 4}),
                          {"Content-Type": "application/json"})
                r = c.getresponse()
                r.read()
                c.close()
                return r.status == 200

            worst_h = worst_c = 0.0
            bad = []
            for _ in range(3):
                h_ok, h_t = timed(health)
                c_ok, c_t = timed(completion)
                worst_h, worst_c = max(worst_h, h_t), max(worst_c, c_t)
                if h_ok is not True:
                    bad.append("/health: %s" % h_ok)
                if c_ok is not True:
                    bad.append("completion: %s" % c_ok)
                time.sleep(1)
            print("slow connections: %d opened from 127.0.0.1 (each trickling a header line every 2 s): %d held by "
                  "the server, %d closed by it at accept; from 127.0.0.2, 3 rounds: /health slowest %.3f s, "
                  "completion slowest %.3f s, %s"
                  % (a.slow, state["opened"], state["refused"], worst_h, worst_c,
                     "all answered" if not bad else "FAILED: " + "; ".join(bad)))
            if bad:
                failed = True
            stop.set()
            th.join()
            stop = threading.Event()

        # the slow connections' address may still be at its limit while the server closes them:
        # the mixed traffic comes from a third address (on loopback when the server is)
        soak = Soak(host, port, time.time() + a.seconds, a.requests, "127.0.0.3" if a.slow and host.startswith("127.") else None)
        mid = {}

        def sample_rss():
            time.sleep(a.seconds / 2)
            mid["rss"] = rss_kb(pid)
        threading.Thread(target=sample_rss, daemon=True).start()
        rng0 = random.Random(a.seed)

        def worker(seed):
            rng = random.Random(seed)
            while soak.take():
                soak.one(rng)

        ths = [threading.Thread(target=worker, args=(rng0.random(),)) for _ in range(a.workers)]
        t0 = time.time()
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        dt = time.time() - t0
        stop.set()
        # the server finishes cancelled and abandoned work at its next steps
        m = soak.metrics()
        for _ in range(300):
            if m["num_requests_running"] == 0 and m["num_requests_waiting"] == 0 and m["kv_cache_usage_perc"] == 0:
                break
            time.sleep(0.1)
            m = soak.metrics()
        rss1 = rss_kb(pid)
        total = sum(soak.count.values())
        print("soak: %d requests in %.1f s with %d workers" % (total, dt, a.workers))
        print("requests by kind: " + ", ".join("%s %d" % (k, soak.count[k]) for k in KINDS))
        nerr = sum(soak.errors.values())
        print("errors by kind: %s" % (", ".join("%s x%d" % (k, v) for k, v in sorted(soak.errors.items())) or "none"))
        print("RSS: %.1f MB at start, %.1f MB half-way, %.1f MB at end (the KV pool's pages count once touched)"
              % (rss0 / 1024.0, mid.get("rss", -1) / 1024.0, rss1 / 1024.0))
        print("at the end: KV usage %.4f, running %g, waiting %g"
              % (m["kv_cache_usage_perc"], m["num_requests_running"], m["num_requests_waiting"]))
        if nerr or m["num_requests_running"] != 0 or m["num_requests_waiting"] != 0 or m["kv_cache_usage_perc"] != 0:
            failed = True
        few = [k for k in KINDS if soak.count[k] < a.min_per_kind]
        if few:
            print("soak: kinds that ran fewer than %d times: %s" % (a.min_per_kind, ", ".join(few)))
            failed = True
        if proc and proc.poll() is not None:
            print("soak: the server died (exit %s)" % proc.returncode)
            failed = True
    finally:
        stop.set()
        if proc:
            proc.terminate()
            try:
                rc = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = "killed"
            if rc != 0:
                print("soak: the server exited %s after SIGTERM" % rc)
                failed = True
    print("soak: %s" % ("FAILED" if failed else "ok"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
