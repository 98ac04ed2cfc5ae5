#!/usr/bin/env python3
"""test_docker.py - the Docker deployment, built and run for real: docker/Dockerfile (CPU),
docker/Dockerfile.nginx and docker/compose.yaml with 3 replicas behind nginx, driven through the
load balancer on loopback.

No Docker engine runs on the test machines, but podman + runc build the same Dockerfiles and run
the containers, and docker-compose v1 runs the compose file against `podman system service`
(shared/containers/README.md); a machine with Docker runs the same files. The base image
debian:bookworm-slim is made locally from the Debian mirror when no registry has it
(docker/make-base-image.sh) and, like the build's layers, stays cached between runs.

Checks, through nginx:
  - the official `openai` client's cases (tests/e2e/openai_client.mjs) against the replicas;
  - streaming passes through unbuffered: the first event arrives while the request still runs;
  - requests spread over all replicas (least_conn); with LB_MODE=affinity one session (the
    X-Session-Id header, or the body's "user") stays on one replica, whose /metrics prefix-cache
    hits grow while the others' do not, and different sessions use more than one replica;
  - one replica killed (SIGKILL of its process, a crash) under a bounded load: 0 failed;
  - a rolling restart (SIGTERM to one replica at a time, waiting until it is healthy and back in
    the balancer) under load of requests and streams: 0 failed, every stream ends with [DONE];
  - the image's size (with and without the model) and the time each phase took, printed.
Every wait is a bounded poll for a state (a hang guard, never a verdict): a loaded machine makes
the test slower, not red. Prints "test_docker: N passed, N failed"; skips (0 passed, 0 failed)
with the reason when containers cannot run here."""
import fcntl
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(ROOT)
KEY = "docker-test-key"
NAME = "demo-lb"
PROJECT = "rstest%d" % os.getpid()
passed = failed = 0
T0 = time.time()


def check(name, cond, detail=None):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL %s%s" % (name, "" if detail is None else ": " + str(detail)[:600]), flush=True)


def finish(code=None):
    print("test_docker: %d passed, %d failed" % (passed, failed), flush=True)
    sys.exit(code if code is not None else (1 if failed else 0))


def skip(why):
    print("SKIP: %s" % why, flush=True)
    finish(0)


def phase(name, t):
    print("  %-44s %6.1f s" % (name, time.time() - t), flush=True)


def run(cmd, timeout=600, check_rc=True, env=None, quiet=False):
    p = subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, timeout=timeout,
                       env=env)
    if check_rc and p.returncode != 0:
        raise RuntimeError("%s: exit %d\n%s%s" % (cmd, p.returncode, p.stdout[-3000:], p.stderr[-3000:]))
    return p


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------------------------------------
# HTTP through the balancer

def request(port, method, path, body=None, headers=None, timeout=300, host="127.0.0.1"):
    """-> (status, headers dict (lower-case), body bytes); raises on connection errors."""
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    h = {"Authorization": "Bearer " + KEY}
    if body is not None:
        h["Content-Type"] = "application/json"
        body = json.dumps(body)
    h.update(headers or {})
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    hd = {k.lower(): v for k, v in r.getheaders()}
    c.close()
    return r.status, hd, data


def completion(port, prompt, max_tokens=8, headers=None, extra=None):
    body = {"model": NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    body.update(extra or {})
    return request(port, "POST", "/v1/completions", body, headers)


def stream(port, prompt, max_tokens, on_first=None, timeout=300):
    """Streams a completion; -> (status, events, saw_done, finish_reason, usage). on_first() runs as soon
    as the first data event has arrived, before the rest is read."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    body = json.dumps({"model": NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}})
    c.request("POST", "/v1/completions", body=body,
              headers={"Authorization": "Bearer " + KEY, "Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        data = r.read()
        c.close()
        return r.status, [], False, data[:200], None
    events, done, reason, usage = [], False, None, None
    while True:
        line = r.readline()
        if not line:
            break
        line = line.decode().rstrip("\r\n")
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            done = True
            break
        ev = json.loads(line[6:])
        events.append(ev)
        if ev.get("choices") and ev["choices"][0].get("finish_reason"):
            reason = ev["choices"][0]["finish_reason"]
        if ev.get("usage"):
            usage = ev["usage"]
        if len(events) == 1 and on_first:
            on_first()
    c.close()
    return 200, events, done, reason, usage


# ---------------------------------------------------------------------------------------------
# containers

class Deployment:
    def __init__(self, env, sock):
        self.env = env
        self.sock = sock

    def compose(self, args, extra_env=None, timeout=300):
        env = dict(self.env)
        env.update(extra_env or {})
        return run(["docker-compose", "--compatibility", "-p", PROJECT, "--project-directory", "docker",
                    "-f", "docker/compose.yaml"] + args, timeout=timeout, env=env)

    def replicas(self):
        out = run(["podman", "ps", "-a", "--filter", "label=com.docker.compose.project=" + PROJECT,
                   "--filter", "label=com.docker.compose.service=ropeserve", "--format", "{{.Names}}"],
                  env=self.env).stdout.split()
        return sorted(out)

    def lb(self):
        out = run(["podman", "ps", "-a", "--filter", "label=com.docker.compose.project=" + PROJECT,
                   "--filter", "label=com.docker.compose.service=lb", "--format", "{{.Names}}"],
                  env=self.env).stdout.split()
        return out[0] if out else None

    def inspect(self, name, fmt):
        return run(["podman", "inspect", "--format", fmt, name], env=self.env, check_rc=False).stdout.strip()

    def ip(self, name):
        return self.inspect(name, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")

    def upstream(self):
        """The replica IPs nginx balances over now."""
        lb = self.lb()
        p = run(["podman", "exec", lb, "cat", "/etc/nginx/ropeserve-upstream.conf"], env=self.env, check_rc=False)
        return sorted(set(re.findall(r"^server (\d+\.\d+\.\d+\.\d+):", p.stdout, re.M)))

    def metrics(self, name, ip=None):
        """A replica's /metrics as {metric name: summed value}, read from its container IP."""
        st, _, data = request(8080, "GET", "/metrics", host=ip or self.ip(name), timeout=10)
        out = {}
        for line in data.decode().splitlines():
            m = re.match(r"^ropeserve:([a-z_]+)(?:\{[^}]*\})? ([0-9.eE+-]+)$", line)
            if m:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
        return out

    def wait(self, what, pred, limit=300, step=0.5):
        """Polls pred() until it holds (a hang guard of `limit` s, not a verdict)."""
        end = time.time() + limit
        while time.time() < end:
            try:
                if pred():
                    return True
            except Exception:
                pass
            time.sleep(step)
        print("  (gave up waiting for %s after %d s)" % (what, limit), flush=True)
        return False

    def healthy(self, name):
        """Runs the image's HEALTHCHECK (nothing runs it by itself without systemd)."""
        return run(["podman", "healthcheck", "run", name], env=self.env, check_rc=False).returncode == 0

    def ready(self, port, n):
        """All n replicas healthy and in the balancer, the balancer answering."""
        reps = self.replicas()
        if len(reps) != n or not all(self.healthy(r) for r in reps):
            return False
        ips = sorted(self.ip(r) for r in reps)
        return self.upstream() == ips and request(port, "GET", "/health", timeout=10)[0] == 200


class Load:
    """A bounded load through the balancer from `threads` threads: non-streaming completions and,
    when streams is set, streams; counts failures by kind. Runs until stop() or `total` requests."""

    def __init__(self, port, threads=6, total=None, streams=False):
        self.port, self.total, self.streams = port, total, streams
        self.lock = threading.Lock()
        self.done = self.fail = self.n_streams = 0
        self.errors = []
        self.running = True
        self.threads = [threading.Thread(target=self.loop, args=(i,)) for i in range(threads)]
        for t in self.threads:
            t.start()

    def take(self):
        with self.lock:
            if not self.running or (self.total is not None and self.done >= self.total):
                return False
            self.done += 1
            return True

    def loop(self, i):
        rnd = random.Random(i)
        while self.take():
            try:
                if self.streams and i % 3 == 0:
                    st, events, done, reason, usage = stream(self.port, "Stream %d" % rnd.randrange(10**6), 48)
                    ok = st == 200 and done and reason == "length" and usage and usage["completion_tokens"] == 48
                    with self.lock:
                        self.n_streams += 1
                    why = (st, len(events), done, reason, usage)
                else:
                    st, _, data = completion(self.port, "Load %d says" % rnd.randrange(10**6),
                                             max_tokens=rnd.randrange(4, 24))
                    ok = st == 200 and json.loads(data)["choices"][0]["finish_reason"] in ("length", "stop")
                    why = (st, data[:200])
            except Exception as e:
                ok, why = False, repr(e)
            if not ok:
                with self.lock:
                    self.fail += 1
                    self.errors.append(why)

    def wait_count(self, n, limit=300):
        end = time.time() + limit
        while time.time() < end and self.done < n and any(t.is_alive() for t in self.threads):
            time.sleep(0.1)

    def join(self):
        """Waits for a bounded load (`total`) to run out."""
        for t in self.threads:
            t.join(timeout=900)

    def stop(self):
        with self.lock:
            self.running = False
        for t in self.threads:
            t.join(timeout=600)


# ---------------------------------------------------------------------------------------------

def main():
    for tool in ("podman", "docker-compose"):
        if not shutil.which(tool):
            skip("%s is not installed (tools/install-deps.sh installs it as root)" % tool)
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = os.path.join(ROOT, "docker/podman/containers.conf")
    if os.geteuid() != 0:
        skip("containers need root here (rootless podman needs subuid ranges this machine lacks)")

    t = time.time()
    p = run(["docker/make-base-image.sh", "podman"], timeout=900, check_rc=False, env=env)
    if p.returncode != 0:
        skip("cannot make the debian:bookworm-slim base image: %s" % (p.stdout + p.stderr)[-500:])
    probe = run(["podman", "run", "--rm", "docker.io/library/debian:bookworm-slim", "true"], check_rc=False, env=env)
    if probe.returncode != 0:
        skip("containers cannot run on this machine: %s" % probe.stderr[-500:])
    phase("base image", t)

    # one run at a time on a machine: the image tags are shared
    lock = open(os.path.join(tempfile.gettempdir(), "ropeserve-test-docker.lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    t = time.time()
    # the build stage is tagged too, so its package layer stays cached while each run's compile
    # layers are replaced (image prune at the end drops the previous run's, not the cache)
    builds = (("docker/Dockerfile", "localhost/ropeserve-build:cache", ["--target", "build"]),
              ("docker/Dockerfile", "localhost/ropeserve:cpu", []),
              ("docker/Dockerfile.nginx", "localhost/ropeserve-lb:latest", []))
    for df, tag, extra in builds:
        p = run(["podman", "build", "--format", "docker", "-f", df, "-t", tag] + extra + ["."], timeout=1800,
                check_rc=False, env=env)
        check("build %s %s" % (df, " ".join(extra)), p.returncode == 0, (p.stdout + p.stderr)[-2000:])
        if p.returncode != 0:
            finish()
    run(["podman", "image", "prune", "-f"], env=env, check_rc=False)
    phase("images built (cached layers reused)", t)
    size = int(run(["podman", "image", "inspect", "--format", "{{.Size}}", "localhost/ropeserve:cpu"], env=env).stdout)
    model = int(run(["podman", "run", "--rm", "--entrypoint", "du", "localhost/ropeserve:cpu", "-sb", "/opt/ropeserve/demo"],
                    env=env).stdout.split()[0])
    print("  image localhost/ropeserve:cpu: %.1f MB, %.1f MB without the model" % (size / 1e6, (size - model) / 1e6),
          flush=True)
    check("runtime image under 300 MB without the model", size - model < 300e6, size - model)
    img = json.loads(run(["podman", "image", "inspect", "localhost/ropeserve:cpu"], env=env).stdout)[0]
    cfg = img["Config"]
    check("image runs as a non-root user", cfg.get("User") not in (None, "", "root", "0"), cfg.get("User"))
    check("image has a HEALTHCHECK", "--healthcheck" in json.dumps(img.get("HealthCheck") or img.get("Healthcheck")
                                                                   or cfg.get("Healthcheck")), img.keys())
    check("image exposes 8080", "8080/tcp" in (cfg.get("ExposedPorts") or {}), cfg.get("ExposedPorts"))

    # one container: a model mounted under /models, settings from the environment, a flag after
    # the image name; docker run's SIGTERM drains and exits 0
    t = time.time()
    port1 = free_port()
    name1 = "rs-single-%d" % os.getpid()
    fixture = os.path.join(ROOT, "tests/fixtures/models/llama-gqa-none")
    p = run(["podman", "run", "-d", "--name", name1, "-p", "127.0.0.1:%d:8080" % port1, "-v", fixture + ":/models/tiny:ro",
             "-e", "ROPESERVE_MODEL=/models/tiny", "-e", "ROPESERVE_API_KEY=" + KEY, "-e", "ROPESERVE_SERVED_MODEL_NAME=tiny",
             "localhost/ropeserve:cpu", "--max-model-len", "512"], env=env, check_rc=False)
    check("docker run with a mounted model", p.returncode == 0, p.stderr[-500:])
    models = {}

    def listed():
        st, _, data = request(port1, "GET", "/v1/models", timeout=10)
        models.update(json.loads(data) if st == 200 else {})
        return st == 200

    Deployment(env, None).wait("the single container", listed, 120)
    m = (models.get("data") or [{}])[0]
    check("mounted model served under ROPESERVE_SERVED_MODEL_NAME, flag --max-model-len applied",
          m.get("id") == "tiny" and m.get("max_model_len") == 512, models)
    st = request(port1, "GET", "/v1/models", headers={"Authorization": "Bearer wrong"}, timeout=10)[0]
    check("ROPESERVE_API_KEY enforced", st == 401, st)
    run(["podman", "stop", "-t", "30", name1], env=env, check_rc=False)
    code = run(["podman", "inspect", "--format", "{{.State.ExitCode}}", name1], env=env, check_rc=False).stdout.strip()
    logs = run(["podman", "logs", name1], env=env, check_rc=False)
    check("docker stop: drained, exit 0, bye", code == "0" and "bye" in logs.stdout + logs.stderr, (code, logs.stderr[-300:]))
    run(["podman", "rm", "-f", name1], env=env, check_rc=False)
    phase("single container", t)

    tmp = tempfile.mkdtemp(prefix="rs-docker-")
    sock = os.path.join(tmp, "podman.sock")
    svc = subprocess.Popen(["podman", "system", "service", "--time=0", "unix://" + sock],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    env["DOCKER_HOST"] = "unix://" + sock
    port = free_port()
    env.update({"ROPESERVE_LB_PORT": str(port), "ROPESERVE_API_KEY": KEY, "ROPESERVE_SERVED_MODEL_NAME": NAME,
                "ROPESERVE_ARGS": "--drain-timeout 60 --max-model-len 4096", "COMPOSE_PROFILES": "cpu",
                "LB_MODE": "least_conn"})
    d = Deployment(env, sock)
    try:
        d.wait("the podman API socket", lambda: os.path.exists(sock), 60, 0.2)
        t = time.time()
        d.compose(["up", "-d", "--no-build"])
        ok = d.wait("3 replicas healthy behind nginx", lambda: d.ready(port, 3))
        check("3 replicas up, healthy and in the balancer", ok, (d.replicas(), d.upstream()))
        if not ok:
            return
        phase("compose up: 3 replicas + nginx ready", t)
        body(d, port, env)
    finally:
        t = time.time()
        try:
            d.compose(["down", "-v", "-t", "10", "--remove-orphans"], timeout=300)
        except Exception as e:
            print("  compose down: %s" % e)
        try:
            os.killpg(svc.pid, signal.SIGTERM)
            svc.wait(timeout=30)
        except Exception:
            pass
        shutil.rmtree(tmp, ignore_errors=True)
        phase("compose down", t)
        print("  total %.1f s" % (time.time() - T0), flush=True)


def body(d, port, env):
    # --- the official openai client through the balancer ------------------------------------
    t = time.time()
    mjs = "tests/e2e/openai_client.mjs"
    if shutil.which("node") and os.path.exists("tests/e2e/node_modules/openai/package.json"):
        p = run(["node", mjs, "http://127.0.0.1:%d/v1" % port, KEY, NAME], timeout=600, check_rc=False)
        m = re.search(r"openai_client: (\d+) passed, (\d+) failed", p.stdout)
        check("openai client through nginx", p.returncode == 0 and m and m.group(2) == "0", p.stdout[-3000:])
        print("  openai client through nginx: %s" % (m.group(0) if m else "no summary"), flush=True)
    else:
        print("  SKIP openai client (node or tests/e2e/node_modules missing: test_openai_client.sh installs it)")
    phase("openai client", t)

    # --- streaming is not buffered: the first event arrives while the request still runs -----
    t = time.time()
    reps = d.replicas()
    ips = [d.ip(r) for r in reps]  # resolved before: a podman call takes longer than the stream
    running_at_first = []

    def on_first():
        running_at_first.append(sum(d.metrics(None, ip).get("num_requests_running", 0) for ip in ips))

    st, events, done, reason, _ = stream(port, "A long story", 2000, on_first)
    check("stream through nginx ends with [DONE]", st == 200 and done and reason == "length", (st, len(events), done, reason))
    check("first stream event arrived while the request still ran (nothing buffers the stream)",
          running_at_first and running_at_first[0] >= 1, running_at_first)
    phase("streaming", t)

    # --- spread over all replicas ------------------------------------------------------------
    t = time.time()
    before = {r: d.metrics(r).get("request_success_total", 0) for r in reps}
    seen = set()
    lock = threading.Lock()

    def one(i):
        st, hd, _ = completion(port, "Spread %d" % i, 4)
        with lock:
            seen.add((st, hd.get("x-ropeserve-replica")))

    # rounds of 30 concurrent requests until every replica has served some (a bounded loop: on a
    # loaded machine nginx may skip a slow replica for a while, which is its job)
    for rnd in range(10):
        ths = [threading.Thread(target=one, args=(30 * rnd + i,)) for i in range(30)]
        [x.start() for x in ths]
        [x.join() for x in ths]
        after = {r: d.metrics(r).get("request_success_total", 0) for r in reps}
        if all(after[r] > before[r] for r in reps):
            break
    check("all spread requests answered 200", all(s == 200 for s, _ in seen), seen)
    check("requests spread over all 3 replicas (their /metrics)", all(after[r] > before[r] for r in reps),
          (before, after))
    print("  %d rounds of 30 requests reached all 3 replicas" % (rnd + 1), flush=True)
    phase("spread over replicas", t)

    # --- prefix affinity -----------------------------------------------------------------------
    t = time.time()
    d.compose(["up", "-d", "--no-build", "lb"], {"LB_MODE": "affinity"})
    ok = d.wait("nginx back in affinity mode", lambda: d.ready(port, 3) and "affinity" in run(
        ["podman", "logs", d.lb()], env=env, check_rc=False).stdout)
    check("balancer restarted with LB_MODE=affinity", ok)
    prefix = "Once upon a time there was a long shared prefix. " * 30  # ~ a few hundred tokens

    def session(kind, key):
        hits0 = {r: d.metrics(r).get("prefix_cache_hits_total", 0) for r in reps}
        used = set()
        for i in range(6):
            if kind == "header":
                st, hd, _ = completion(port, prefix + "Question %d?" % i, 4, headers={"X-Session-Id": key})
            else:
                st, hd, _ = completion(port, prefix + "Question %d?" % i, 4, extra={"user": key})
            used.add((st, hd.get("x-ropeserve-replica")))
        hits1 = {r: d.metrics(r).get("prefix_cache_hits_total", 0) for r in reps}
        grew = [r for r in reps if hits1[r] > hits0[r]]
        check("affinity (%s): every request of one session to one replica" % kind,
              len(used) == 1 and list(used)[0][0] == 200, used)
        check("affinity (%s): only that replica's prefix-cache hits grew" % kind, len(grew) == 1, (hits0, hits1))

    session("header", "session-a")
    session("user field", "alice")
    spread = set(completion(port, "Hi", 2, headers={"X-Session-Id": "s%d" % i})[1].get("x-ropeserve-replica")
                 for i in range(16))
    check("affinity: different sessions use more than one replica", len(spread) >= 2, spread)
    d.compose(["up", "-d", "--no-build", "lb"], {"LB_MODE": "least_conn"})
    d.wait("nginx back in least_conn mode", lambda: d.ready(port, 3) and "least_conn" in run(
        ["podman", "logs", d.lb()], env=env, check_rc=False).stdout)
    phase("prefix affinity", t)

    # --- one replica killed under load ----------------------------------------------------------
    t = time.time()
    victim = d.replicas()[0]
    load = Load(port, threads=6, total=300)
    load.wait_count(60)
    pid = int(d.inspect(victim, "{{.State.Pid}}") or 0)
    check("victim replica has a process", pid > 0, pid)
    if pid > 0:
        os.kill(pid, signal.SIGKILL)
    load.join()
    check("the bounded load ran out", load.done == 300, load.done)
    check("replica killed (SIGKILL) under load: %d of %d requests failed" % (load.fail, load.done), load.fail == 0, load.errors[:5])
    print("  kill -9 of %s during %d requests: %d failed" % (victim, load.done, load.fail), flush=True)
    ok = d.wait("the killed replica restarted and healthy", lambda: d.ready(port, 3))
    check("killed replica restarted by its restart policy and back in the balancer", ok,
          d.inspect(victim, "{{.State.Status}} restarts={{.RestartCount}}"))
    phase("replica kill under load", t)

    # --- rolling restart under load --------------------------------------------------------------
    t = time.time()
    load = Load(port, threads=6, streams=True)
    for r in d.replicas():
        load.wait_count(load.done + 20)
        p = run(["podman", "stop", "-t", "60", r], env=env, check_rc=False)  # SIGTERM: drain, then exit
        code = d.inspect(r, "{{.State.ExitCode}}")
        check("%s drained and exited 0 on SIGTERM" % r, p.returncode == 0 and code == "0", (p.stderr[-300:], code))
        logs = run(["podman", "logs", "--tail", "5", r], env=env, check_rc=False)
        check("%s said bye" % r, "bye" in logs.stdout + logs.stderr, (logs.stdout + logs.stderr)[-500:])
        run(["podman", "start", r], env=env, check_rc=False)
        ok = d.wait("%s healthy and back in the balancer" % r, lambda: d.ready(port, 3))
        check("%s back after its restart" % r, ok)
    load.wait_count(load.done + 20)
    load.stop()
    check("rolling restart under load: %d of %d requests failed (%d streams, each must end with [DONE])"
          % (load.fail, load.done, load.n_streams), load.fail == 0, load.errors[:5])
    check("rolling restart: streams ran during it", load.n_streams > 0, load.n_streams)
    print("  rolling restart of 3 replicas during %d requests (%d streams): %d failed"
          % (load.done, load.n_streams, load.fail), flush=True)
    phase("rolling restart under load", t)


if __name__ == "__main__":
    try:
        main()
    except subprocess.TimeoutExpired as e:
        check("no step hung", False, e)
    except RuntimeError as e:
        check("container commands", False, e)
    finish()
