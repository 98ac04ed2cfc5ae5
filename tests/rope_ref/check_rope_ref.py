#!/usr/bin/env python3
"""Self-consistency checks of the NumPy RoPE reference (make_rope_fixtures.py), no engine needed.

    /usr/bin/python3 tests/rope_ref/check_rope_ref.py [FIXTURE_DIR]

Each check prints its number and its bound; the last line is "check_rope_ref: N passed, N failed".
FIXTURE_DIR (default tests/fixtures/rope) is only read, for the checks that compare fixtures of two
methods that must agree (e.g. clex at t = 1 vs default).
"""
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_rope_fixtures as M  # noqa: E402

FIX = sys.argv[1] if len(sys.argv) > 1 else M.OUT
passed = failed = 0


def check(name, value, bound, fmt="%.2e"):
    global passed, failed
    ok = value <= bound
    passed += ok
    failed += not ok
    print("%s %-74s " % ("ok  " if ok else "FAIL", name) + fmt % value + " (bound " + fmt % bound + ")")


def info(name, value, fmt="%.3e"):
    print("info %-74s " % name + fmt % value)


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b) / np.abs(b)))


# ----------------------------------------------------------------------------- CLEX ODE

def closed_form(inv, t, d):
    # §6.2 with W_down = 0: exp(y_i(t)) = inv_freq_i * (2t - 1)^(-2i / (d - 2))
    return inv.astype(np.float64) * (2.0 * t - 1.0) ** (-2.0 * np.arange(d // 2) / (d - 2))


def clex_solve(d, max_t, up, down, act="tanh", dt=0.01, base=10000.0, F=np.float32):
    cfg = {"rope_theta": base, "rope_scaling": {"max_factor": max_t, "act": act, "time_dt": dt}}
    return M.clex_freqs(cfg, up, down, d, F)


def rhs64(t, y, up, down, act, d, B=M.CLEX_B):
    """The same right-hand side in float64 (the exact derivative of log theta^NTK)."""
    i = np.arange(0, d, 2, dtype=np.float64)
    alpha = 1.0 if t < 1 else 2 * t - 1
    log_ntk = -(i / d) * math.log(B) - (i / (d - 2)) * math.log(alpha)
    h = (y + log_ntk) @ up
    h = np.tanh(h) if act == "tanh" else h / (1 + np.exp(-h))
    return h @ down - 2 * i / ((d - 2) * alpha)


def fine_solution(y0, max_t, up, down, act, d, n_per_unit):
    """float64 classic RK4 with a fine step, at t = 1 .. max_t."""
    up, down = up.astype(np.float64), down.astype(np.float64)
    f = lambda t, y: rhs64(t, y, up, down, act, d)  # noqa: E731
    h = 1.0 / n_per_unit
    y = y0.astype(np.float64)
    out = [y]
    for k in range((max_t - 1) * n_per_unit):
        t = 1.0 + k * h
        k1 = f(t, y)
        k2 = f(t + h / 2, y + h / 2 * k1)
        k3 = f(t + h / 2, y + h / 2 * k2)
        k4 = f(t + h, y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        if (k + 1) % n_per_unit == 0:
            out.append(y)
    return np.exp(np.stack(out))


def checks_clex_ode():
    rng = np.random.default_rng(5)
    # golden values of §6.2 (d = 128, b = 1e4, W_down = 0, t = 1..16)
    d = 128
    up = (rng.standard_normal((d // 2, d)) * 0.1).astype(np.float32)
    fr = clex_solve(d, 16, up, np.zeros((d, d // 2), np.float32))
    gold = {(2, 32): 5.723381508e-03, (2, 63): 3.849273282e-05, (16, 32): 1.747764642e-03,
            (16, 63): 3.725103176e-06}
    fr64 = clex_solve(d, 16, up, np.zeros((d, d // 2), np.float32), F=np.float64)
    inv = M.base_inv_freq(1e4, d)
    # the same integrator in float64 checks the algorithm; in fp32 (as CLEX runs it) the rounding of
    # 1500 accumulated steps adds ~1e-5 relative
    for tag, sol, bound in (("float64", fr64, 1e-9), ("fp32", fr, 5e-5)):
        check("clex ODE (%s), W_down=0, d=128: §6.2 golden values (rel)" % tag,
              max(abs(sol[t - 1][i] / v - 1) for (t, i), v in gold.items()), max(bound, 2e-7))
        check("clex ODE (%s), W_down=0, d=128, t=1..16: vs closed form (rel)" % tag,
              max(rel(sol[t - 1], closed_form(inv, t, d)) for t in range(1, 17)), bound)
    # the tiny models' d = 16, both activations
    d = M.HD
    inv = M.base_inv_freq(1e4, d)
    for act in ("tanh", "silu"):
        up = (rng.standard_normal((d // 2, 2 * d)) * 0.3).astype(np.float32)
        for F, bound in ((np.float64, 1e-9), (np.float32, 5e-5)):
            fr = clex_solve(d, 8, up, np.zeros((2 * d, d // 2), np.float32), act, F=F)
            check("clex ODE (%s), W_down=0, d=16, %s, t=1..8: vs closed form (rel)" % (F.__name__, act),
                  max(rel(fr[t - 1], closed_form(inv, t, d)) for t in range(1, 9)), bound)
    # the fixtures' ODE weights: fp32 3/8-rule at dt = 0.01 vs a float64 classic RK4 at dt = 1e-4
    for m in ("clex", "clex-log"):
        cfg = M.config_for(M.METHODS[m][0])
        rs = cfg["rope_scaling"]
        ex = M.clex_weights(m, cfg)
        up, down = ex["model.clex_layer.proj_func.ode_up_proj"], ex["model.clex_layer.proj_func.ode_down_proj"]
        act = rs.get("act", "silu")
        max_t = int(rs["max_factor"])
        fr = M.clex_freqs(cfg, up, down)
        fine = fine_solution(np.log(inv.astype(np.float64)), max_t, up, down, act, d, 10000)
        check("%s ODE: fp32 3/8 RK4 dt=0.01 vs float64 RK4 dt=1e-4 (rel, all t)" % m, rel(fr, fine), 5e-5)
        fr64 = M.clex_freqs(cfg, up, down, F=np.float64)
        check("%s ODE: the same 3/8 integrator in float64 vs float64 RK4 dt=1e-4 (rel)" % m, rel(fr64, fine), 1e-9)
        coarse = fine_solution(np.log(inv.astype(np.float64)), max_t, up, down, act, d, 100)
        info("%s ODE: float64 RK4 dt=0.01 vs dt=1e-4 (truncation alone, rel)" % m, rel(coarse, fine))
        dev = max(float(np.max(np.abs(np.log(fr[t - 1] / closed_form(inv, t, d))))) for t in range(2, max_t + 1))
        check("%s ODE: max |ln(theta / closed form)| is visible (>= 0.2)" % m, -dev, -0.2, "%.3f")
        check("%s ODE: ... and well behaved (<= 1)" % m, dev, 1.0, "%.3f")


# ----------------------------------------------------------------------------- model-level

class Patched:
    """Temporarily replaces a module attribute."""

    def __init__(self, obj, name, value):
        self.obj, self.name, self.value = obj, name, value

    def __enter__(self):
        self.old = getattr(self.obj, self.name)
        setattr(self.obj, self.name, self.value)

    def __exit__(self, *a):
        setattr(self.obj, self.name, self.old)


def run(model, prompt, n=M.N_NEW):
    """All log-prob vectors of a greedy run (prefill + n - 1 decode steps)."""
    model.reset()
    lps = [model.forward(prompt)]
    for _ in range(n - 1):
        lps.append(model.forward([int(np.argmax(lps[-1]))]))
    return np.stack(lps)


def chunked(model, prompt, split):
    """Prefill prompt[:split] in one forward, then the rest one token per forward; last log-probs."""
    model.reset()
    lp = model.forward(prompt[:split])
    for tok in prompt[split:]:
        lp = model.forward([tok])
    return lp


def one_shot(model, prompt):
    model.reset()
    return model.forward(prompt)


def checks_models(w, prompts):
    # CLEX: within one t, re-rotating every key makes the result independent of the chunking
    cfg, clex, _ = M.build_model("clex", w)
    p70 = prompts[128][:70]  # t = 2 for L = 66..70
    check("clex: prompt 70 in one forward vs 66 + 4 single steps (t = 2 throughout)",
          float(np.max(np.abs(one_shot(clex, p70) - chunked(clex, p70, 66)))), 1e-10)
    # ... and storing pre-RoPE keys matters: rotated-at-write keys give other numbers after a t change
    alt = M.Model(w, cfg, clex.freqs)
    alt.pre_rope_k = False
    info("clex rand_58: max |dlogprob| pre-RoPE cache vs rotated-at-write (t 1->2 while decoding)",
         float(np.max(np.abs(run(clex, prompts[58]) - run(alt, prompts[58])))))
    # CLEX with the fixture's ODE vs the closed form (zero down-projection): visibly different
    cf = np.stack([closed_form(M.base_inv_freq(1e4), t, M.HD) for t in range(1, 9)]).astype(np.float32)
    cl_closed = M.Model(w, cfg, cf)
    for n in (120, 250, 520):
        info("clex rand_%d: max |dlogprob| ODE vs closed-form theta (prefill)" % n,
             float(np.max(np.abs(one_shot(clex, prompts[n]) - one_shot(cl_closed, prompts[n])))))
    ex = M.clex_weights("clex", cfg)
    zero = M.clex_freqs(cfg, ex["model.clex_layer.proj_func.ode_up_proj"],
                        np.zeros_like(ex["model.clex_layer.proj_func.ode_down_proj"]))
    cl_zero = M.Model(w, cfg, zero)
    check("clex rand_520: fp32 ODE with W_down=0 vs closed-form theta, greedy run (max |dlogprob|)",
          float(np.max(np.abs(run(cl_zero, prompts[520]) - run(cl_closed, prompts[520])))), 1e-3)
    # the fp32 ODE's own rounding, in log-prob terms: fp32 vs float64 solution of the fixture's ODE
    cl64 = M.Model(w, cfg, M.clex_freqs(cfg, ex["model.clex_layer.proj_func.ode_up_proj"],
                                        ex["model.clex_layer.proj_func.ode_down_proj"], F=np.float64))
    for n in (250, 520):
        info("clex rand_%d: greedy run, |dlogprob| fp32 vs float64 ODE integration" % n,
             float(np.max(np.abs(run(clex, prompts[n]) - run(cl64, prompts[n])))))

    # STRING
    _, string, _ = M.build_model("string", w)
    cfg_d = M.config_for(M.METHODS["default"][0])
    plain_af = M.Model(w, cfg_d)
    with Patched(M, "rope_params", lambda cfg, L, fr=None: (M.base_inv_freq(cfg["rope_theta"]), M.STRING_AF)):
        ref_af = {n: run(plain_af, prompts[n]) for n in (20, 128, 500)}
    big = M.Model(w, M.config_for(dict(M.METHODS["string"][0], string_config={"shifted_offset": 100000,
                                                                              "local_value": 6})))
    for n in (128, 500):
        check("string, S >= length, rand_%d: vs plain attention with logits x af^2" % n,
              float(np.max(np.abs(run(big, prompts[n]) - ref_af[n]))), 1e-10)
    check("string rand_20 (< S): vs plain attention with logits x af^2",
          float(np.max(np.abs(run(string, prompts[20]) - ref_af[20]))), 1e-10)
    for n in (128, 500):
        info("string rand_%d: max |dlogprob| vs plain attention x af^2 (prefill)" % n,
             float(np.max(np.abs(one_shot(string, prompts[n]) - ref_af[n][0]))))
    check("string: prompt 128 in one forward vs 100 + 28 single steps (decode rule in both)",
          float(np.max(np.abs(one_shot(string, prompts[128]) - chunked(string, prompts[128], 100)))), 1e-10)

    # two passes + LSE merge vs one softmax over all keys, q2 for the far ones
    def attend_union(self, q, K, V, pos, q2=None, window=0):
        S_ = K.shape[0]
        grp = M.NH // M.NKV
        dist = pos[:, None] - np.arange(S_)[None, :]
        far = dist >= self.string["shifted_offset"]
        out = np.empty((q.shape[0], M.NH, M.HD))
        for hh in range(M.NH):
            kv = hh // grp
            sc = np.where(far, q2[:, hh, :] @ K[:, kv, :].T, q[:, hh, :] @ K[:, kv, :].T) / math.sqrt(M.HD)
            pr, _ = M.masked_softmax(sc, dist >= 0)
            out[:, hh, :] = pr @ V[:, kv, :]
        return out
    lp2 = {n: run(string, prompts[n]) for n in (58, 500)}
    with Patched(M.Model, "attend", attend_union):
        for n in (58, 500):
            check("string rand_%d: two-pass LSE merge vs one softmax over the union" % n,
                  float(np.max(np.abs(run(string, prompts[n]) - lp2[n]))), 1e-10)

    # the STRING reference's own prefill boundary (distance S counted in both passes): size only
    orig_attend = M.Model.attend

    def attend_ref_prefill(self, q, K, V, pos, q2=None, window=0):
        if q2 is None or q.shape[0] == 1:
            return orig_attend(self, q, K, V, pos, q2, window)
        S_ = K.shape[0]
        grp = M.NH // M.NKV
        dist = pos[:, None] - np.arange(S_)[None, :]
        sh = self.string["shifted_offset"]
        out = np.empty((q.shape[0], M.NH, M.HD))
        for hh in range(M.NH):
            kv = hh // grp
            p1, l1 = M.masked_softmax((q[:, hh, :] @ K[:, kv, :].T) / math.sqrt(M.HD), (dist >= 0) & (dist <= sh))
            p2, l2 = M.masked_softmax((q2[:, hh, :] @ K[:, kv, :].T) / math.sqrt(M.HD), dist >= sh)
            with np.errstate(over="ignore"):
                wg = 1.0 / (1.0 + np.exp(l1 - l2))
            out[:, hh, :] = (p1 @ V[:, kv, :]) * (1 - wg)[:, None] + (p2 @ V[:, kv, :]) * wg[:, None]
        return out
    ours = {n: one_shot(string, prompts[n]) for n in (58, 128, 500)}
    with Patched(M.Model, "attend", attend_ref_prefill):
        for n in (58, 128, 500):
            info("string rand_%d: prefill |dlogprob|, distance S in both passes vs decode rule" % n,
                 float(np.max(np.abs(one_shot(string, prompts[n]) - ours[n]))))


def checks_fixtures():
    def load(m):
        p = os.path.join(FIX, m + ".json")
        return {c["name"]: c for c in json.load(open(p))["cases"]} if os.path.exists(p) else None

    def same(a, b, name):
        worst = 0.0
        for sa, sb in zip(a["steps"], b["steps"]):
            ra = dict(zip(sa["top_ids"], sa["top_logprobs"]))
            rb = dict(zip(sb["top_ids"], sb["top_logprobs"]))
            worst = max([worst] + [abs(ra[i] - rb[i]) for i in set(ra) & set(rb)])
        if a["greedy_ids"] != b["greedy_ids"]:
            worst = float("inf")
        check(name, worst, 1e-6)

    def differ(a, b, name):
        d = max(abs(x - y) for sa, sb in zip(a["steps"], b["steps"])
                for x, y in zip(sa["top_logprobs"], sb["top_logprobs"]))
        check(name + " (must differ)", -d, -1e-3, "%.3e")

    f = {m: load(m) for m in ("default", "clex", "clex-log", "gene", "gene-log", "dynamic-yarn",
                              "dynamic-yarn-ft", "string")}
    if any(v is None for v in f.values()):
        print("info fixtures missing under %s: fixture-level checks skipped" % FIX)
        return
    same(f["clex"]["rand_20"], f["default"]["rand_20"], "fixtures: clex rand_20 (t = 1) == default")
    differ(f["clex-log"]["rand_20"], f["default"]["rand_20"], "fixtures: clex-log rand_20 (q x ln L/ln 64) vs default")
    same(f["dynamic-yarn"]["rand_20"], f["default"]["rand_20"], "fixtures: dynamic-yarn rand_20 (L <= 64) == default")
    same(f["dynamic-yarn-ft"]["rand_500"], f["dynamic-yarn"]["rand_500"],
         "fixtures: dynamic-yarn-ft rand_500 == dynamic-yarn rand_500 (both yarn(L/64))")
    for n in ("rand_20", "rand_128"):
        same(f["gene-log"][n], f["gene"][n], "fixtures: gene-log %s (p < 256) == gene" % n)
    differ(f["string"]["rand_58"], f["default"]["rand_58"], "fixtures: string rand_58 vs default")


def checks_yarn_golden():
    # §11: YaRN Llama-2 (d=128, b=1e4, s=32, L0=4096): theta_i; standard vs revised (s=8, L0=2048)
    inv = M.yarn_inv_freq(1e4, 32.0, 4096, 32, 1, d=128)
    gold = {0: 1.0, 1: 8.659643234e-01, 10: 2.371373706e-01, 20: 5.623413252e-02, 21: 4.688233025e-02,
            30: 8.366564755e-03, 40: 8.057726730e-04, 45: 1.054997740e-04, 46: 4.167254476e-05,
            63: 3.608693702e-06}
    check("yarn_inv_freq (used by dynamic-yarn) vs §11 golden values (rel)",
          max(abs(inv[i] / v - 1) for i, v in gold.items()), 1e-6)
    st = M.yarn_inv_freq(1e4, 8.0, 2048, 32, 1, d=128)
    rv = M.yarn_inv_freq(1e4, 8.0, 2048, 32, 1, revised=True, d=128)
    gold2 = {20: (4.836135397e-02, 2.652553421e-02), 28: (1.031402058e-02, 4.078622500e-03),
             35: (2.175428466e-03, 1.027502582e-03)}
    check("yarn standard / revised vs §11 golden values (rel)",
          max(max(abs(st[i] / a - 1), abs(rv[i] / b - 1)) for i, (a, b) in gold2.items()), 1e-6)
    check("yarn mscale(32) vs §11 1.3465735903", abs(M.yarn_mscale(32.0) - 1.3465735903), 1e-9)
    check("STRING af^2 vs §11 1.1434339663", abs(M.STRING_AF ** 2 - 1.1434339663), 1e-9)


# ----------------------------------------------------------------------------- biases, sliding windows

def checks_arch(w, prompts):
    """The extensions make_arch_fixtures.py relies on: transformers' window semantics per config,
    the window mask against a per-row loop, chunking independence, biases."""
    base = {"num_hidden_layers": 4}
    cases = [
        ("mistral, sliding_window 4096", dict(model_type="mistral", sliding_window=4096), [4096] * 4),
        ("mistral, key absent: MistralConfig's default 4096", dict(model_type="mistral"), [4096] * 4),
        ("mistral, null", dict(model_type="mistral", sliding_window=None), [0] * 4),
        ("qwen2, use_sliding_window false", dict(model_type="qwen2", sliding_window=64, max_window_layers=1), [0] * 4),
        ("qwen2, max_window_layers 1", dict(model_type="qwen2", use_sliding_window=True, sliding_window=64,
                                            max_window_layers=1), [0, 64, 64, 64]),
        ("qwen2, max_window_layers default 28", dict(model_type="qwen2", use_sliding_window=True,
                                                     sliding_window=64), [0] * 4),
        ("qwen2, layer_types", dict(model_type="qwen2", use_sliding_window=True, sliding_window=64,
                                    layer_types=["sliding_attention", "full_attention"] * 2), [64, 0, 64, 0]),
        ("llama: none", dict(model_type="llama", sliding_window=64), [0] * 4),
    ]
    bad = [name for name, over, want in cases if M.layer_windows(dict(base, **over)) != want]
    check("layer_windows: transformers' config semantics (%d cases; wrong: %s)" % (len(cases), bad or "none"),
          len(bad), 0, "%d")

    # the window mask of Model.attend vs a per-row softmax over keys p - W + 1 .. p
    rng = np.random.default_rng(5)
    cfg = M.config_for(dict(model_type="mistral", sliding_window=7))
    m = M.Model(w, cfg)
    T, S, W = 9, 30, 7
    q = rng.standard_normal((T, M.NH, M.HD))
    K, V = rng.standard_normal((S, M.NKV, M.HD)), rng.standard_normal((S, M.NKV, M.HD))
    pos = np.arange(S - T, S)
    got = m.attend(q, K, V, pos, None, W)
    want = np.empty_like(got)
    for t in range(T):
        js = np.arange(max(0, pos[t] - W + 1), pos[t] + 1)
        for hh in range(M.NH):
            kv = hh // (M.NH // M.NKV)
            sc = K[js, kv, :] @ q[t, hh] / math.sqrt(M.HD)
            pr = np.exp(sc - sc.max())
            want[t, hh] = (pr / pr.sum()) @ V[js, kv, :]
    check("window mask: Model.attend vs a per-row softmax over the last W keys", float(np.max(np.abs(got - want))),
          1e-12)

    # a window no shorter than the sequence is full attention; a window is chunking-independent
    mw = M.Model(w, M.config_for(dict(model_type="mistral", sliding_window=40)))
    mbig = M.Model(w, M.config_for(dict(model_type="mistral", sliding_window=100000)))
    mfull = M.Model(w, M.config_for(dict(model_type="mistral", sliding_window=None)))
    check("mistral, window >= length, rand_128: == full attention",
          float(np.max(np.abs(run(mbig, prompts[128]) - run(mfull, prompts[128])))), 1e-12)
    check("mistral window 40: prompt 128 in one forward vs 100 + 28 single steps",
          float(np.max(np.abs(one_shot(mw, prompts[128]) - chunked(mw, prompts[128], 100)))), 1e-10)
    info("mistral window 40 vs full attention, rand_128: max |dlogprob|",
         float(np.max(np.abs(run(mw, prompts[128]) - run(mfull, prompts[128])))))

    # biases: zero biases change nothing, random ones change the output
    wb = dict(w)
    for l in range(M.NL):
        for proj, n in (("q", M.NH * M.HD), ("k", M.NKV * M.HD), ("v", M.NKV * M.HD)):
            wb["model.layers.%d.self_attn.%s_proj.bias" % (l, proj)] = np.zeros(n, np.float32)
    cfg_d = M.config_for({})
    check("zero q/k/v biases == no biases, rand_58",
          float(np.max(np.abs(run(M.Model(wb, cfg_d), prompts[58]) - run(M.Model(w, cfg_d), prompts[58])))), 0.0)
    for k in list(wb):
        if k.endswith(".bias"):
            wb[k] = (rng.standard_normal(wb[k].shape) * 0.5).astype(np.float32)
    differ = float(np.max(np.abs(run(M.Model(wb, cfg_d), prompts[58]) - run(M.Model(w, cfg_d), prompts[58]))))
    check("random q/k/v biases change the output, rand_58 (must differ)", -differ, -1e-3, "%.3e")


def main():
    w = M.make_weights()
    prompts = M.make_prompts({n for _, lens in M.METHODS.values() for n in lens})
    checks_yarn_golden()
    checks_clex_ode()
    checks_models(w, prompts)
    checks_arch(w, prompts)
    checks_fixtures()
    print("check_rope_ref: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
