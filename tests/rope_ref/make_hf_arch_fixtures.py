#!/usr/bin/env python3
"""Hugging Face transformers reference outputs for the Qwen2, Mistral and biased-LLaMA checkpoints
of tests/fixtures/arch/ (a second, independent reference next to make_arch_fixtures.py's NumPy one).

    python3 tests/rope_ref/make_hf_arch_fixtures.py OUTDIR     (from the repository root)
    python3 tests/rope_ref/make_hf_arch_fixtures.py --selftest (no torch needed: checks the inputs)

Needs torch and transformers (v5 or a 4.5x with masking_utils: older Qwen2 eager attention ignored
the sliding window), no network, numpy not required. For each tests/fixtures/arch/<name>.json it
loads models/<name> with AutoModelForCausalLM (the architecture config.json names: Qwen2ForCausalLM,
MistralForCausalLM, LlamaForCausalLM), fp32 (BF16 weights widened exactly), eager attention, CPU,
and replays every case (same prompt_ids): the prompt in one forward, then greedy decoding one token
per forward through the model's KV cache. It writes

  OUTDIR/<name>.json  the fixture format (greedy_ids; per step token_id, token_logprob, top-20 ids and
                      log-probs from log_softmax in float64 of the fp32 logits), model_dir
                      "../models/<name>": copy the files to tests/fixtures/arch/hf/, where
                      tests/test_arch.c replays them with the same rules as the NumPy ones
  OUTDIR/log.txt      versions, the layer types transformers chose, and for each case the largest
                      |delta logprob| against the NumPy fixture

Each model runs under try/except: one failure is logged and the others still run.
"""
import json
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIX = os.path.join(ROOT, "tests", "fixtures", "arch")
sys.path.insert(0, HERE)
import make_hf_fixtures as hf  # noqa: E402  (torch setup, forward, step records, comparison, log)


def fixtures():
    return sorted(fn[:-5] for fn in os.listdir(FIX) if fn.endswith(".json"))


def selftest():
    ok = True
    for name in fixtures():
        fx = hf.load_json(os.path.join(FIX, name + ".json"))
        mdir = os.path.join(FIX, fx["model_dir"])
        for fn in ("config.json", "model.safetensors"):
            if not os.path.exists(os.path.join(mdir, fn)):
                print("missing", os.path.join(mdir, fn))
                ok = False
        c = fx["cases"][0]
        w, ov, fd = hf.compare_steps(c["steps"], c["greedy_ids"], c["steps"], c["greedy_ids"])
        print("%-13s %s, %d cases, prompt lengths %s, windows %s, self-compare %.1e/%d/%s" % (
            name, fx["config"]["architectures"][0], len(fx["cases"]), [len(c["prompt_ids"]) for c in fx["cases"]],
            fx.get("layer_windows"), w, ov, fd))
    return 0 if ok else 1


def load_model(torch, mdir):
    from transformers import AutoModelForCausalLM
    kw = {"attn_implementation": "eager"}
    try:
        model = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32, **kw)
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(mdir, torch_dtype=torch.float32, **kw)
    model = model.to("cpu").eval()
    try:
        model.config._attn_implementation = "eager"
    except Exception:
        pass
    return model


def run_case(torch, mdir, prompt, n_new):
    model = load_model(torch, mdir)
    lp, past = hf.forward(torch, model, prompt, None, 0)
    n = len(prompt)
    ids, steps = [], []
    for k in range(n_new):
        rec = hf.step_record(torch, lp)
        steps.append(rec)
        ids.append(rec["token_id"])
        if rec["token_id"] == hf.EOS or k == n_new - 1:
            break
        lp, past = hf.forward(torch, model, [rec["token_id"]], past, n)
        n += 1
    return ids, steps


def run_fixture(torch, name, outdir, versions):
    ref = hf.load_json(os.path.join(FIX, name + ".json"))
    mdir = os.path.join(FIX, ref["model_dir"])
    model = load_model(torch, mdir)
    cfg = model.config
    hf.log("  %s: %s, layer_types %s, sliding_window %s, NumPy windows %s" % (
        name, type(model).__name__, getattr(cfg, "layer_types", None), getattr(cfg, "sliding_window", None),
        ref.get("layer_windows")))
    del model
    cases = []
    for c in ref["cases"]:
        t0 = time.time()
        ids, steps = run_case(torch, mdir, c["prompt_ids"], ref.get("new_tokens", 12))
        cases.append({"name": c["name"], "prompt_ids": c["prompt_ids"], "greedy_ids": ids, "steps": steps})
        worst, ov, fd = hf.compare_steps(c["steps"], c["greedy_ids"], steps, ids)
        hf.log("  %-13s %-9s %5.2fs greedy %s | vs NumPy: max|dlogprob| %.2e, min overlap %d, first token diff %s" % (
            name, c["name"], time.time() - t0, ids, worst, ov, fd))
    fx = {"format_version": 1, "method": name, "model_dir": "../" + ref["model_dir"],
          "reference": "transformers %s, torch %s, fp32 eager CPU (tests/rope_ref/make_hf_arch_fixtures.py)" % (
              versions["transformers"], versions["torch"]),
          "layer_windows": ref.get("layer_windows"), "config": ref["config"],
          "new_tokens": ref.get("new_tokens", 12), "prompt_seed": ref.get("prompt_seed"), "cases": cases}
    with open(os.path.join(outdir, name + ".json"), "w") as f:
        json.dump(fx, f, separators=(",", ":"))
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
    try:
        torch = hf.setup_torch()
        import transformers
        versions = {"transformers": transformers.__version__, "torch": torch.__version__,
                    "python": sys.version.split()[0]}
        hf.log("versions:", json.dumps(versions), "threads", torch.get_num_threads())
        for name in fixtures():
            t0 = time.time()
            try:
                run_fixture(torch, name, outdir, versions)
                hf.log("%s done in %.1fs" % (name, time.time() - t0))
            except Exception:
                rc = 1
                hf.log("%s FAILED:\n%s" % (name, traceback.format_exc()))
    except Exception:
        rc = 1
        hf.log("setup FAILED:\n%s" % traceback.format_exc())
    finally:
        hf.log("total %.1fs" % (time.time() - t_start))
        with open(os.path.join(outdir, "log.txt"), "w") as f:
            f.write("\n".join(hf.LOG) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
