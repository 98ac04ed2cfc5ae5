#!/usr/bin/env python3
"""Hugging Face transformers reference outputs for the tiny RoPE checkpoints (a second, independent
reference next to the NumPy one in make_rope_fixtures.py).

    python3 tests/rope_ref/make_hf_fixtures.py OUTDIR          (from the repository root)
    python3 tests/rope_ref/make_hf_fixtures.py --selftest      (no torch needed: checks the inputs)

Needs torch, transformers (4.4x, 4.5x or v5) and safetensors; no network, numpy not required. For
each method transformers implements (default, linear, dynamic, yarn, llama3, longrope) it builds
LlamaForCausalLM from tests/fixtures/rope/models/<m>/config.json, loads
tests/fixtures/rope/models/shared/model.safetensors (strict), fp32, eager attention, CPU, and replays
every case of tests/fixtures/rope/<m>.json (same prompt_ids): the prompt in one forward, then greedy
decoding one token per forward through the model's KV cache, with a fresh model per case (the
rotary modules of dynamic/longrope keep state between forwards). It writes

  OUTDIR/<m>.json     the fixture format of make_rope_fixtures.py (greedy_ids; per step token_id,
                      token_logprob, top-20 ids and log-probs from log_softmax in float64 of the fp32
                      logits); model_dir "../models/<m>" = relative to tests/fixtures/rope/hf/, where
                      the files are meant to be copied (tests/test_rope_e2e.py replays them there)
  OUTDIR/inv_freq.json  per method and case, the rotary module's inv_freq / attention_scaling (and
                      whatever state it exposes) after the prompt forward and after the last forward
  OUTDIR/log.txt      versions, progress, and for each case the largest |delta logprob| against the
                      NumPy fixture (which transformers generation agrees with which method)

  OUTDIR/clex_theta.json  for the CLEX fixtures (clex, clex-log): the frequency table θ(t), t = 1..max_factor,
                      integrated with torchdiffeq's own odeint (method "rk4", step_size time_dt), the solver
                      the CLEX authors pinned, with the ODE right-hand side written from REFERENCES-rope.md
                      §6.2; tests/test_rope_e2e.py compares the engine's table (`ropeserve rope --json`) to it

Each method runs under try/except: one failure is logged and the others still run.
"""
import json
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIX = os.path.join(ROOT, "tests", "fixtures", "rope")
METHODS = ["default", "linear", "dynamic", "yarn", "llama3", "longrope"]
TOPK = 20
EOS = 2

LOG = []


def log(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    LOG.append(s)


# ----------------------------------------------------------------------------- pure-python helpers

def load_json(path):
    with open(path) as f:
        return json.load(f)


def compare_steps(ref_steps, ref_ids, steps, ids):
    """max |delta logprob| over ids in both top-20 lists, min overlap, first differing greedy step."""
    worst, min_overlap, first_diff = 0.0, TOPK, None
    for k, (a, b) in enumerate(zip(ref_steps, steps)):
        ra = dict(zip(a["top_ids"], a["top_logprobs"]))
        rb = dict(zip(b["top_ids"], b["top_logprobs"]))
        common = set(ra) & set(rb)
        min_overlap = min(min_overlap, len(common))
        if common:
            worst = max(worst, max(abs(ra[i] - rb[i]) for i in common))
        if first_diff is None and a["token_id"] != b["token_id"]:
            first_diff = k
            break  # after a different token the two runs see different inputs
    if first_diff is None and len(ref_ids) != len(ids):
        first_diff = min(len(ref_ids), len(ids))
    return worst, min_overlap, first_diff


def selftest():
    ok = True
    for m in METHODS:
        cfgp = os.path.join(FIX, "models", m, "config.json")
        fxp = os.path.join(FIX, m + ".json")
        for p in (cfgp, fxp):
            if not os.path.exists(p):
                print("missing", p)
                ok = False
        if not ok:
            continue
        fx = load_json(fxp)
        c = fx["cases"][0]
        w, ov, fd = compare_steps(c["steps"], c["greedy_ids"], c["steps"], c["greedy_ids"])
        print("%-9s %d cases, prompt lengths %s, self-compare %.1e/%d/%s, rope_scaling %s" % (
            m, len(fx["cases"]), [len(c["prompt_ids"]) for c in fx["cases"]], w, ov, fd,
            json.dumps(load_json(cfgp).get("rope_scaling"))[:80]))
    st = os.path.join(FIX, "models", "shared", "model.safetensors")
    print("weights", st, "exists" if os.path.exists(st) else "MISSING")
    return 0 if ok and os.path.exists(st) else 1


# ----------------------------------------------------------------------------- torch part

def setup_torch():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local directories only; never the network
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    torch.set_num_threads(16)
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
    except TypeError:
        torch.use_deterministic_algorithms(True)
    try:
        torch.set_float32_matmul_precision("highest")
    except Exception:
        pass
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    except Exception:
        pass
    return torch


def make_config(model_dir):
    from transformers import LlamaConfig
    try:
        config = LlamaConfig.from_pretrained(model_dir, attn_implementation="eager")
    except TypeError:
        config = LlamaConfig.from_pretrained(model_dir)
    try:
        config._attn_implementation = "eager"
    except Exception:
        pass
    return config


def make_model(torch, config, state_dict):
    from transformers import LlamaForCausalLM
    torch.manual_seed(0)
    model = None
    try:
        model = LlamaForCausalLM._from_config(config, attn_implementation="eager")
    except Exception:
        model = LlamaForCausalLM(config)
    model = model.to(torch.float32).to("cpu")
    try:
        model.config._attn_implementation = "eager"  # read at run time by 4.48+ / v5
    except Exception:
        pass
    res = model.load_state_dict(state_dict, strict=True)
    missing = getattr(res, "missing_keys", [])
    unexpected = getattr(res, "unexpected_keys", [])
    if missing or unexpected:
        raise RuntimeError("state dict mismatch: missing %s unexpected %s" % (missing, unexpected))
    model.eval()
    return model


def rotary_modules(model):
    base = getattr(model, "model", model)
    mods = []
    r = getattr(base, "rotary_emb", None)
    if r is not None:
        mods.append(("model.rotary_emb", r))
    layers = getattr(base, "layers", [])
    if len(layers) and hasattr(layers[0], "self_attn") and hasattr(layers[0].self_attn, "rotary_emb"):
        mods.append(("model.layers.0.self_attn.rotary_emb", layers[0].self_attn.rotary_emb))
    return mods


def rotary_state(model):
    out = {}
    for name, r in rotary_modules(model):
        st = {}
        inv = getattr(r, "inv_freq", None)
        if inv is not None:
            st["inv_freq"] = [float(x) for x in inv.detach().to("cpu").double().reshape(-1).tolist()]
            st["inv_freq_dtype"] = str(inv.dtype)
        for k in ("attention_scaling", "scaling_factor", "mscale", "max_seq_len_cached",
                  "original_max_seq_len", "rope_type", "base", "dim"):
            v = getattr(r, k, None)
            if v is None:
                continue
            if hasattr(v, "item") and getattr(v, "numel", lambda: 2)() == 1:
                v = v.item()
            if isinstance(v, (int, float, str, bool)):
                st[k] = v
        out[name] = st
    return out


def forward(torch, model, ids, past, pos0):
    x = torch.tensor([ids], dtype=torch.long)
    pos = torch.arange(pos0, pos0 + len(ids), dtype=torch.long)[None, :]
    try:
        out = model(input_ids=x, position_ids=pos, past_key_values=past, use_cache=True)
    except TypeError:
        out = model(input_ids=x, past_key_values=past, use_cache=True)
    logits = out.logits[0, -1].to(torch.float32)
    lp = torch.log_softmax(logits.double(), dim=-1)
    return lp, out.past_key_values


def step_record(torch, lp):
    try:
        order = torch.sort(-lp, stable=True).indices[:TOPK]
    except TypeError:
        order = torch.argsort(-lp)[:TOPK]
    ids = [int(i) for i in order.tolist()]
    lps = [float(lp[i]) for i in ids]
    return {"token_id": ids[0], "token_logprob": round(lps[0], 7), "top_ids": ids,
            "top_logprobs": [round(v, 7) for v in lps]}


def run_case(torch, config, sd, prompt, n_new):
    model = make_model(torch, config, sd)
    lp, past = forward(torch, model, prompt, None, 0)
    n = len(prompt)
    state = {"after_prefill": rotary_state(model)}
    ids, steps = [], []
    for k in range(n_new):
        rec = step_record(torch, lp)
        steps.append(rec)
        ids.append(rec["token_id"])
        if rec["token_id"] == EOS or k == n_new - 1:
            break
        lp, past = forward(torch, model, [rec["token_id"]], past, n)
        n += 1
    state["after_last"] = rotary_state(model)
    state["last_length"] = n
    return ids, steps, state


def numpy_reference():
    """make_rope_fixtures (the NumPy reference) if numpy is importable, else None."""
    try:
        sys.path.insert(0, HERE)
        import make_rope_fixtures
        return make_rope_fixtures
    except Exception as e:
        log("(NumPy reference not importable, inv_freq not compared: %s)" % e)
        return None


NP = None


def compare_inv_freq(m, name, cfg_json, prompt_len, state):
    """Logs HF's inv_freq / attention_scaling against the NumPy reference's for the same length."""
    if NP is None:
        return
    for when, L in (("after_prefill", prompt_len), ("after_last", state["last_length"])):
        try:
            inv_np, att_np = NP.rope_params(cfg_json, L)
            st = next((v for v in state[when].values() if "inv_freq" in v), None)
            if st is None:
                log("    %s %s: no inv_freq on the rotary module" % (name, when))
                continue
            hf = st["inv_freq"]
            rel = max(abs(a / float(b) - 1) for a, b in zip(hf, inv_np))
            att_hf = st.get("attention_scaling", 1.0)
            log("    %-9s %-13s L=%-4d inv_freq max rel diff %.2e, attention_scaling HF %.7f NumPy %.7f%s" % (
                name, when, L, rel, att_hf, att_np,
                "" if rel < 1e-6 and abs(att_hf - att_np) < 1e-6 else "   <-- differs"))
        except Exception as e:
            log("    %s %s: inv_freq comparison failed: %s" % (name, when, e))


def run_method(torch, m, sd, outdir, versions, inv_all):
    mdir = os.path.join(FIX, "models", m)
    ref = load_json(os.path.join(FIX, m + ".json"))
    cfg_json = load_json(os.path.join(mdir, "config.json"))
    config = make_config(mdir)
    rp = getattr(config, "rope_parameters", None)
    log("  %s: rope_scaling %s | rope_parameters %s | attn %s" % (
        m, json.dumps(getattr(config, "rope_scaling", None), default=str)[:160],
        json.dumps(rp, default=str)[:200], getattr(config, "_attn_implementation", "?")))
    cases, inv = [], {}
    for c in ref["cases"]:
        t0 = time.time()
        ids, steps, state = run_case(torch, config, sd, c["prompt_ids"], ref.get("new_tokens", 12))
        cases.append({"name": c["name"], "prompt_ids": c["prompt_ids"], "greedy_ids": ids, "steps": steps})
        inv[c["name"]] = state
        worst, ov, fd = compare_steps(c["steps"], c["greedy_ids"], steps, ids)
        log("  %-9s %-9s %5.2fs greedy %s | vs NumPy: max|dlogprob| %.2e, min overlap %d, first token diff %s" % (
            m, c["name"], time.time() - t0, ids, worst, ov, fd))
        compare_inv_freq(m, c["name"], cfg_json, len(c["prompt_ids"]), state)
    fx = {"format_version": 1, "method": m, "model_dir": "../models/" + m,
          "reference": "transformers %s, torch %s, fp32 eager CPU (tests/rope_ref/make_hf_fixtures.py)" % (
              versions["transformers"], versions["torch"]),
          "config": cfg_json, "new_tokens": ref.get("new_tokens", 12),
          "prompt_seed": ref.get("prompt_seed"), "cases": cases}
    with open(os.path.join(outdir, m + ".json"), "w") as f:
        json.dump(fx, f, separators=(",", ":"))
        f.write("\n")
    inv_all[m] = inv


def clex_tables(torch, outdir):
    """θ(t) for the CLEX fixtures with torchdiffeq.odeint (§6.2, §6.3), fp32 throughout."""
    import torchdiffeq
    from safetensors.torch import load_file
    out = {"_versions": {"torchdiffeq": getattr(torchdiffeq, "__version__", "?")}}
    for m in ("clex", "clex-log"):
        try:
            mdir = os.path.join(FIX, "models", m)
            cfg = load_json(os.path.join(mdir, "config.json"))
            rs = cfg["rope_scaling"]
            d = int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
            w = {}
            for fn in sorted(os.listdir(mdir)):
                if fn.endswith(".safetensors") and not os.path.islink(os.path.join(mdir, fn)):
                    w.update(load_file(os.path.join(mdir, fn)))
            up = w["model.clex_layer.proj_func.ode_up_proj"].to(torch.float32)
            down = w["model.clex_layer.proj_func.ode_down_proj"].to(torch.float32)
            act = torch.tanh if rs.get("act") == "tanh" else torch.nn.functional.silu
            f32 = torch.float32

            def rhs(t, x):
                # get_time_embedding with the hard-coded base 10000, then ODELinear.forward
                alpha = torch.ones((), dtype=f32) if t < 1 else 2 * t - 1
                ntk_base = 10000 * alpha ** (d / (d - 2))
                ntk_inv = 1.0 / (ntk_base ** (torch.arange(0, d, 2, dtype=f32) / d))
                index = torch.arange(0, d, 2, dtype=f32)
                delta = -2 * index / (d - 2) * 1 / (10000 ** (index / d) * (alpha ** (index / (d - 2) + 1)))
                x = x + torch.log(ntk_inv)
                return act(x @ up) @ down + delta / ntk_inv

            base = float(cfg.get("rope_theta", 10000.0))
            inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.int64).to(f32) / d))
            max_t = int(rs["max_factor"])
            grid = torch.arange(1.0, max_t + 1.0, dtype=f32)
            sol = torchdiffeq.odeint(rhs, torch.log(inv), grid, method="rk4",
                                     options={"step_size": float(rs.get("time_dt", 0.01))})
            table = torch.exp(sol)
            table[0] = inv  # t = 1 uses the plain inv_freq (§6.4)
            out[m] = [[float(v) for v in row] for row in table.tolist()]
            ref = load_json(os.path.join(FIX, m + ".json")).get("clex_theta")
            if ref:
                rel = max(abs(a / b - 1) for ra, rb in zip(out[m], ref) for a, b in zip(ra, rb))
                log("  %s: torchdiffeq θ(t) vs the NumPy reference: max rel diff %.2e" % (m, rel))
            else:
                log("  %s: torchdiffeq θ(t) computed (%d x %d)" % (m, len(out[m]), len(out[m][0])))
        except Exception:
            log("clex %s FAILED:\n%s" % (m, traceback.format_exc()))
    with open(os.path.join(outdir, "clex_theta.json"), "w") as f:
        json.dump(out, f)
        f.write("\n")


def main(argv):
    if argv[:1] == ["--selftest"]:
        return selftest()
    if len(argv) != 1:
        print(__doc__)
        return 2
    outdir = argv[0]
    os.makedirs(outdir, exist_ok=True)
    t_start = time.time()
    rc = 0
    inv_all = {}
    try:
        torch = setup_torch()
        import transformers
        from safetensors.torch import load_file
        versions = {"transformers": transformers.__version__, "torch": torch.__version__,
                    "python": sys.version.split()[0]}
        log("versions:", json.dumps(versions), "threads", torch.get_num_threads())
        sd = load_file(os.path.join(FIX, "models", "shared", "model.safetensors"))
        sd = {k: v.to(torch.float32) for k, v in sd.items()}
        inv_all["_versions"] = versions
        global NP
        NP = numpy_reference()
        try:
            clex_tables(torch, outdir)
        except Exception:
            rc = 1
            log("clex tables FAILED:\n%s" % traceback.format_exc())
        for m in METHODS:
            t0 = time.time()
            log("method %s" % m)
            try:
                run_method(torch, m, sd, outdir, versions, inv_all)
                log("method %s done in %.1fs" % (m, time.time() - t0))
            except Exception:
                rc = 1
                log("method %s FAILED:\n%s" % (m, traceback.format_exc()))
                inv_all[m] = {"error": traceback.format_exc().strip().splitlines()[-1]}
    except Exception:
        rc = 1
        log("setup FAILED:\n%s" % traceback.format_exc())
    finally:
        with open(os.path.join(outdir, "inv_freq.json"), "w") as f:
            json.dump(inv_all, f, indent=1)
            f.write("\n")
        log("total %.1fs" % (time.time() - t_start))
        with open(os.path.join(outdir, "log.txt"), "w") as f:
            f.write("\n".join(LOG) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
