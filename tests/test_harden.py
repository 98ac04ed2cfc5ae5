#!/usr/bin/env python3
"""test_harden.py - the defects of issue 16, each against a real `ropeserve serve` (build/demo-model):

  slow clients      hundreds of connections from one address trickling header lines: the server
                    holds at most --max-connections-per-ip of them, /health and a completion from
                    another address are answered, and the held ones get a 408 at
                    --request-read-timeout although they keep sending bytes
  request lines     a line that is not HTTP (no space, NUL, leading space, TLS bytes, a 40-byte
                    method) gets a JSON 400 from the door; a bad version libmicrohttpd's 400; blank
                    lines and a method trickled in pieces pass; a connection that sends nothing or
                    a method only is closed at --idle-timeout
  framing           two Content-Length headers, or Content-Length with Transfer-Encoding: 400 and
                    the connection closed
  prompt cost       1 million "<s>" markers (completion, chat, /tokenize) and an 8 MB prompt are
                    refused before tokenizing (context_length_exceeded), the server's CPU time for
                    all of them stays small
  auth              /health and /v1/health open, /metrics and /version behind --api-key,
                    --metrics-public opens /metrics
  log               a client that hangs up leaves no libmicrohttpd error line at info level
  drain expiry      --drain-timeout 0 with requests running and queued: each non-streaming client
                    gets a 503 JSON error, each stream an "abort" finish chunk and [DONE]; exit 0, bye
  second SIGTERM    during a drain: the drain ends, the stream gets its end, exit 0, bye
  SIGTERM loading   while the weights load (a FIFO that never delivers them): exit 0, bye

No assertion depends on wall-clock speed: waits poll for the state they need, with generous limits.
Ends with "test_harden: N passed, N failed".
"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("ROPESERVE_BIN", os.path.join(ROOT, "build/ropeserve"))
MODEL = os.path.join(ROOT, "build/demo-model")
passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print("ok   %s" % name)
    else:
        failed += 1
        print("FAIL %s %s" % (name, str(detail)[:600]))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def until(cond, secs=120):
    t = time.time() + secs
    while time.time() < t:
        if cond():
            return True
        time.sleep(0.05)
    return False


class Server:
    def __init__(self, tmp, name, *args, model=MODEL, wait=True):
        self.port = free_port()
        self.logpath = os.path.join(tmp, "log." + name)
        self.logf = open(self.logpath, "w")
        self.proc = subprocess.Popen([BIN, "serve", "--model", model, "--port", str(self.port)] + list(args),
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        if wait and not until(lambda: self.ready(), 300):
            raise RuntimeError("server %s did not start: %s" % (name, self.log()))

    def ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError("server exited: " + self.log())
        try:
            return self.get("/health")[0] == 200
        except OSError:
            return False

    def log(self):
        with open(self.logpath) as f:
            return f.read()

    def conn(self, source=None, timeout=120):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout,
                                          source_address=(source, 0) if source else None)

    def get(self, path, headers=None, source=None):
        c = self.conn(source)
        try:
            c.request("GET", path, headers=headers or {})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def post(self, path, body, headers=None, source=None):
        c = self.conn(source)
        try:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            c.request("POST", path, data, dict({"Content-Type": "application/json"}, **(headers or {})))
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def raw(self, data, timeout=60):
        """Send bytes; return (everything the server sent until it closed, closed?)."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.sendall(data)
        out, closed = b"", False
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    closed = True
                    break
                out += b
        except socket.timeout:
            pass
        except ConnectionResetError:
            closed = True
        s.close()
        return out, closed

    def send(self, body, path="/v1/completions"):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=600)
        b = json.dumps(body).encode()
        s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                  % (path.encode(), len(b)) + b)
        return s

    def metric(self, name):
        st, body = self.get("/metrics")
        m = re.search(r"^ropeserve:%s(\{[^}]*\})? (\S+)" % name, body.decode(), re.M)
        return float(m.group(2)) if m else -1

    def cpu_s(self):
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()


def read_all(s):
    out = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    return out


def status_of(raw):
    m = re.match(rb"HTTP/1\.[01] (\d+)", raw)
    return int(m.group(1)) if m else 0


def dechunk(raw):
    body, out = raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in raw else b"", b""
    while body:
        size, _, body = body.partition(b"\r\n")
        try:
            n = int(size.split(b";")[0] or b"0", 16)
        except ValueError:
            break
        if n == 0:
            break
        out += body[:n]
        body = body[n + 2:]
    return out


def stream_end(raw):
    """(last finish_reason, [DONE] seen) of an SSE response."""
    finish, done = None, False
    for line in dechunk(raw).decode("utf-8", "replace").split("\n"):
        if line == "data: [DONE]":
            done = True
        elif line.startswith("data: "):
            try:
                o = json.loads(line[6:])
            except ValueError:
                continue
            for c in o.get("choices", []):
                if c.get("finish_reason"):
                    finish = c["finish_reason"]
    return finish, done


def test_slow_and_malformed(tmp):
    per_ip = 32
    s = Server(tmp, "slow", "--max-connections-per-ip", str(per_ip), "--request-read-timeout", "2", "--idle-timeout", "3")
    try:
        # 400 connections from 127.0.0.1, each starting a request head and trickling header lines
        socks = []
        for _ in range(400):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", s.port))
            socks.append(c)
        time.sleep(0.2)  # not a timing assertion: only lets the connects complete before the sends
        for c in socks:
            try:
                c.send(b"GET /health HTTP/1.1\r\n")
            except OSError:
                pass

        def status():
            held, closed = [], 0
            for c in socks:
                try:
                    if c.recv(1, socket.MSG_PEEK) == b"":
                        closed += 1
                    else:
                        held.append(c)
                except BlockingIOError:
                    held.append(c)
                except OSError:
                    closed += 1
            return held, closed
        # the server closes what is over the limit at accept
        until(lambda: status()[1] >= 400 - per_ip, 60)
        held, closed = status()
        check("slow clients: at most --max-connections-per-ip %d held (%d held, %d closed)" % (per_ip, len(held), closed),
              len(held) <= per_ip and closed >= 400 - per_ip)
        st, _ = s.get("/health", source="127.0.0.2")
        check("slow clients: /health from another address answered", st == 200, st)
        st, body = s.post("/v1/completions", {"prompt": "hello", "max_tokens": 4}, source="127.0.0.2")
        check("slow clients: a completion from another address answered", st == 200, body[:200])

        # the held ones keep sending bytes; the read deadline (2 s) still closes them with a 408
        got = {}

        def reaped():
            for c in held:
                if c in got:
                    continue
                try:
                    c.send(b"X-Slow: 1\r\n")
                except OSError:
                    pass
                try:
                    d = c.recv(4096)
                    got[c] = d
                except BlockingIOError:
                    pass
                except OSError:
                    got[c] = b""
            return len(got) == len(held)
        until(reaped, 120)
        n408 = sum(1 for d in got.values() if d.startswith(b"HTTP/1.1 408"))
        check("read deadline: every held slow connection got a 408 though it kept sending (%d of %d)" % (n408, len(held)),
              n408 == len(held) and len(held) > 0)
        for c in socks:
            c.close()

        # request lines that are not HTTP: a 400 (JSON, from the door: libmicrohttpd 0.9.75 would
        # close the first, second, fourth and fifth without a word), then closed; never held
        def bad_line(out, closed):
            return (status_of(out) == 400 and closed and b"application/json" in out
                    and b"malformed request line" in out)
        for what, data in (("no space", b"GARBAGE\r\n\r\n"), ("NUL-led", b"\x00\x01\x02\r\n\r\n"),
                           ("bare LF, no space", b"GARBAGE\n\n"), ("leading space", b" GET /health HTTP/1.1\r\n\r\n"),
                           ("a TLS hello on the plain port", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
                           ("a 40-byte method", b"A" * 40 + b" / HTTP/1.1\r\n\r\n")):
            out, closed = s.raw(data)
            check("garbage request line (%s): 400 JSON and closed" % what, bad_line(out, closed), out[:200])
        out, closed = s.raw(b"hello world foo bar baz\r\n\r\n")
        check("garbage request line (bad version): 400 and closed", status_of(out) == 400 and closed, out[:200])
        # what the door holds back must still reach libmicrohttpd: blank lines first (a method
        # trickled a byte at a time: test_auth, whose server has the default --idle-timeout)
        out, closed = s.raw(b"\r\n\n\r\nGET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        check("blank lines before the request line: skipped, 200", status_of(out) == 200 and b'"ok"' in out, out[:200])
        # a method that never ends: 400 once the client shuts its side, closed at --idle-timeout
        # (no reset: what it sent was read) when it does not
        c = socket.create_connection(("127.0.0.1", s.port), timeout=60)
        c.sendall(b"GET")
        c.shutdown(socket.SHUT_WR)
        out = read_all(c)
        check("a method, then the client's FIN: 400 JSON", bad_line(out, True), out[:200])
        out, closed = s.raw(b"GET")
        check("a method and nothing more: closed at --idle-timeout without a word", out == b"" and closed, out[:200])
        out, closed = s.raw(b"")
        check("a connection that sends nothing: closed at --idle-timeout", out == b"" and closed, out[:200])
        # the door sees a connection's first request only: on a keep-alive connection a second
        # line with no space is closed without a word by libmicrohttpd 0.9.75 (README), not held
        out, closed = s.raw(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n")
        check("keep-alive, then a line with no space: the first answered, then closed", status_of(out) == 200 and closed,
              out[:200])
        def n4xx():
            body = s.get("/metrics")[1].decode()
            m = re.search(r'^ropeserve:http_responses_total\{[^}]*status="4xx"\} (\S+)', body, re.M)
            return float(m.group(1)) if m else -1
        before = n4xx()
        s.raw(b"GARBAGE\r\n\r\n")
        after = n4xx()
        check("/metrics counts the door's 400 (4xx %g -> %g)" % (before, after), before >= 0 and after == before + 1)
        # an idle keep-alive connection is closed without a word; a request line trickled byte by
        # byte too (bytes do not extend --idle-timeout)
        c = socket.create_connection(("127.0.0.1", s.port), timeout=120)
        c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = c.recv(65536)
        c.settimeout(0.5)
        rest, t_end = b"", time.time() + 120
        trickle = b"GET /heal"
        while time.time() < t_end:
            if trickle:
                try:
                    c.send(trickle[:1])
                except OSError:
                    break
                trickle = trickle[1:]
            try:
                d = c.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not d:
                break
            rest += d
        c.close()
        check("keep-alive: answered, then closed without a word at --idle-timeout though bytes trickled",
              status_of(first) == 200 and rest == b"" and time.time() < t_end, (first[:100], rest[:200]))

        # framing: refused, connection closed (a proxy could read it differently)
        out, closed = s.raw(b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nabcde12")
        check("two Content-Length headers: 400 and closed", status_of(out) == 400 and closed and b"Content-Length" in out,
              out[:300])
        out, closed = s.raw(b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\nContent-Length: 17\r\n\r\n"
                            b"{\"prompt\": \"hi\"}\n")
        check("two equal Content-Length headers: 400 and closed", status_of(out) == 400 and closed, out[:300])
        out, closed = s.raw(b"POST /tokenize HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
                            b"0\r\n\r\n")
        check("Transfer-Encoding with Content-Length: 400 and closed", status_of(out) == 400 and closed, out[:300])

        # prompts that cannot fit: refused before tokenizing, little CPU
        cpu0 = s.cpu_s()
        marks = "<s>" * 1000000
        st, body = s.post("/v1/completions", {"prompt": marks, "max_tokens": 1})
        check("1M <s> in a prompt: 400 context_length_exceeded before tokenizing",
              st == 400 and b"context_length_exceeded" in body and b"before tokenizing" in body, body[:300])
        st, body = s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": marks}], "max_tokens": 1})
        check("1M <s> in a chat message: 400 before tokenizing", st == 400 and b"before tokenizing" in body, body[:300])
        st, body = s.post("/tokenize", {"prompt": marks})
        check("1M <s> to /tokenize: 400 before tokenizing", st == 400 and b"before tokenizing" in body, body[:300])
        big = "hello world " * 660000
        st, body = s.post("/v1/completions", {"prompt": big[:8 * 1024 * 1024 - 64], "max_tokens": 1})
        check("an 8 MB prompt: 400 before tokenizing", st == 400 and b"before tokenizing" in body, body[:300])
        cpu = s.cpu_s() - cpu0
        check("the four refusals cost the server little CPU (%.2f s of CPU; the target is 2 s each)" % cpu, cpu < 8, cpu)
        st, body = s.post("/v1/completions", {"prompt": "<s>" * 50 + "hello", "max_tokens": 2})
        check("a short prompt of markers still served", st == 200, body[:300])

        # a client that hangs up: our debug line, not libmicrohttpd's error at info level
        c = s.send({"prompt": "x", "max_tokens": 4000, "ignore_eos": True})
        until(lambda: s.metric("num_requests_running") >= 1, 120)
        c.close()
        until(lambda: s.metric("num_requests_running") == 0, 120)
        log = s.log()
        check("a hang-up leaves no libmicrohttpd error line at info level",
              "internal error" not in log and "Application reported" not in log, log[-1500:])
    finally:
        s.stop()


def test_auth(tmp):
    s = Server(tmp, "auth", "--api-key", "k3y")
    try:
        key = {"Authorization": "Bearer k3y"}
        check("--api-key: /health open", s.get("/health")[0] == 200)
        check("--api-key: /v1/health open", s.get("/v1/health")[0] == 200)
        check("--api-key: /metrics needs the key", s.get("/metrics")[0] == 401 and s.get("/metrics", key)[0] == 200)
        check("--api-key: /version needs the key", s.get("/version")[0] == 401 and s.get("/version", key)[0] == 200)
        # the door: a line split after its CR and a method trickled in pieces still reach
        # libmicrohttpd (here --idle-timeout is 75 s, so a stalled test process cannot time it out)
        c = socket.create_connection(("127.0.0.1", s.port), timeout=60)
        for piece in (b"\r", b"\nG", b"E", b"T", b" /hea", b"lth HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"):
            c.sendall(piece)
            time.sleep(0.05)  # not a timing assertion: sends the pieces as separate segments
        out = read_all(c)
        check("a request line trickled in pieces through the door: 200", status_of(out) == 200 and b'"ok"' in out, out[:200])
    finally:
        s.stop()
    s = Server(tmp, "authm", "--api-key", "k3y", "--metrics-public")
    try:
        check("--metrics-public: /metrics open, /version still keyed",
              s.get("/metrics")[0] == 200 and s.get("/version")[0] == 401)
    finally:
        s.stop()


def test_drain_expiry(tmp):
    s = Server(tmp, "drain", "--max-num-seqs", "1", "--drain-timeout", "0")
    long_req = {"prompt": "x", "max_tokens": 8000, "ignore_eos": True}
    plain = [s.send(long_req) for _ in range(2)]
    streams = [s.send(dict(long_req, stream=True)) for _ in range(2)]
    ok = until(lambda: s.metric("num_requests_running") + s.metric("num_requests_waiting") >= 4, 300)
    check("drain expiry: 4 requests running or queued", ok)
    s.proc.send_signal(signal.SIGTERM)
    outs = [read_all(c) for c in plain]
    souts = [read_all(c) for c in streams]
    try:
        rc = s.proc.wait(120)
    except subprocess.TimeoutExpired:
        rc = "hung"
    n503 = sum(1 for o in outs if status_of(o) == 503 and b"server_shutdown" in o)
    check("drain expiry: each non-streaming client got a 503 JSON error (%d of 2)" % n503, n503 == 2,
          [o[:300] for o in outs])
    ends = [stream_end(o) for o in souts]
    check("drain expiry: each stream got an abort finish chunk and [DONE] (%s)" % ends,
          all(e == ("abort", True) for e in ends), [o[-300:] for o in souts])
    check("drain expiry: exit 0 and bye (exit %s)" % rc, rc == 0 and "bye" in s.log(), s.log()[-800:])
    check("drain expiry: no 'client disconnected' for the cancelled ones", "client disconnected" not in s.log())
    s.stop()


def test_second_sigterm(tmp):
    s = Server(tmp, "sig2", "--max-num-seqs", "1", "--drain-timeout", "600")
    c = s.send({"prompt": "x", "max_tokens": 8000, "ignore_eos": True, "stream": True})
    head = b""
    while b"data: " not in head:
        d = c.recv(65536)
        if not d:
            break
        head += d
    s.proc.send_signal(signal.SIGTERM)

    def draining():
        try:
            return s.get("/health")[0] == 503
        except OSError:
            return True  # already gone: nothing left to drain
    until(draining, 120)
    if s.proc.poll() is None:
        s.proc.send_signal(signal.SIGTERM)
    out = head + read_all(c)
    try:
        rc = s.proc.wait(120)
    except subprocess.TimeoutExpired:
        rc = "hung"
    fin, done = stream_end(out)
    check("second SIGTERM during the drain: exit 0 and bye (exit %s)" % rc, rc == 0 and "bye" in s.log(), s.log()[-800:])
    check("second SIGTERM: the stream got its end (%s, [DONE] %s)" % (fin, done), fin in ("abort", "length") and done)
    s.stop()


def test_sigterm_loading(tmp):
    d = os.path.join(tmp, "fifo-model")
    os.mkdir(d)
    for f in os.listdir(MODEL):
        if f != "model.safetensors":
            os.symlink(os.path.join(MODEL, f), os.path.join(d, f))
    os.mkfifo(os.path.join(d, "model.safetensors"))  # opening it blocks: loading never ends
    s = Server(tmp, "loading", model=d, wait=False)

    def loading():
        try:
            st, body = s.get("/health")
            return st == 503 and b"loading" in body
        except OSError:
            return False
    check("SIGTERM while loading: /health says loading", until(loading, 120))
    s.proc.send_signal(signal.SIGTERM)
    try:
        rc = s.proc.wait(120)
    except subprocess.TimeoutExpired:
        rc = "hung"
    check("SIGTERM while loading: exit 0 and bye (exit %s)" % rc, rc == 0 and "bye" in s.log(), s.log()[-800:])
    s.stop()


def main():
    if not os.path.exists(BIN) or not os.path.exists(os.path.join(MODEL, "config.json")):
        print("FAIL: %s or %s missing (make)" % (BIN, MODEL))
        print("test_harden: 0 passed, 1 failed")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        for t in (test_slow_and_malformed, test_auth, test_drain_expiry, test_second_sigterm, test_sigterm_loading):
            t0 = time.time()
            try:
                t(tmp)
            except Exception as e:  # noqa: BLE001 - a crash of one part is a failure, the rest still run
                check(t.__name__ + " ran", False, repr(e))
            print("  (%s: %.1f s)" % (t.__name__, time.time() - t0))
    print("test_harden: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
