#!/usr/bin/env python3
"""Tiny random Qwen2, Mistral and biased-LLaMA checkpoints (written by build/tools/make_model) and
float64 NumPy reference outputs for them, at lengths past their sliding windows.

    /usr/bin/python3 tests/rope_ref/make_arch_fixtures.py [--out DIR] [name ...]

numpy and a built build/tools/make_model (`make build/tools/make_model`). Writes, under
tests/fixtures/arch/ (or DIR):
  models/<name>/   what `make_model <args> --out models/<name>` writes: config.json as transformers'
                   config class for the architecture spells it, BF16 model.safetensors with random
                   non-zero biases, the 512-piece test tokenizer
  <name>.json      greedy ids + top-20 log-probs per step for each prompt (the format of
                   make_rope_fixtures.py), the make_model arguments and the sha256 of the weights
                   the outputs were computed from

The forward is make_rope_fixtures.Model (HF LLaMA in float64), which adds a projection's bias when
the checkpoint has one (Qwen2: q, k, v; LLaMA attention_bias: q, k, v, o; mlp_bias: gate, up,
down) and masks, in a layer with a sliding window W, the keys j <= p - W, the layers and W chosen
by layer_windows() from transformers' configuration_mistral.py / configuration_qwen2.py (Mistral:
every layer; Qwen2: use_sliding_window, layers >= max_window_layers). None of it comes from the
engine's code. The weights are read from the safetensors file make_model wrote (BF16 widened to
float32 exactly, then float64); the prompts are make_rope_fixtures.make_prompts'.
tests/test_arch.c replays the fixtures through the engine.
"""
import hashlib
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import make_rope_fixtures as ref  # noqa: E402  (the float64 forward and the prompts)
from emulate_rounding import load as read_weights  # noqa: E402  (safetensors F32/F16/BF16 -> float32)

OUT = os.path.join(ROOT, "tests", "fixtures", "arch")
MAKE_MODEL = os.path.join(ROOT, "build", "tools", "make_model")
TOKENIZER = os.path.join(ROOT, "models", "demo", "tokenizer.model")
N_NEW = 12

# name -> (make_model arguments, prompt lengths)
MODELS = {
    # Qwen2.5-7B-Instruct in small: q/k/v biases, theta 1e6, eps 1e-6, YaRN x4 over 64 written as
    # Qwen does (max_position_embeddings left at 64): max_model_len 256; 58 + 12 crosses 64
    "qwen2-yarn": (["--preset", "qwen2-tiny"], [20, 58, 128, 240]),
    # Qwen2.5-0.5B..3B: tied embeddings (no lm_head.weight)
    "qwen2-tied": (["--preset", "qwen2-tiny", "--tie", "--seed", "4"], [20, 100]),
    # Qwen2 with use_sliding_window: a window of 48 in layer 1 only (max_window_layers 1):
    # per-layer windows, nothing the engine can release
    "qwen2-window": (["--preset", "qwen2-tiny", "--sliding-window", "48", "--max-window-layers", "1",
                      "--rope-scaling-json", "null", "--max-pos", "1024", "--seed", "2"], [20, 40, 150, 300]),
    # Mistral-7B-v0.1 in small: a window of 64 in every layer, GQA 4:1; 58 + 12 crosses the window
    # while decoding, 64 and 65 sit on its edge, 300 is far past it
    "mistral": (["--preset", "mistral-tiny"], [20, 58, 64, 65, 130, 300]),
    # LLaMA with attention_bias (q, k, v, o) and mlp_bias (gate, up, down)
    "llama-bias": (["--preset", "tiny", "--attention-bias", "--mlp-bias", "--dtype", "bf16", "--seed", "3"],
                   [20, 128]),
}


def main(argv):
    out = OUT
    if argv[:1] == ["--out"]:
        out, argv = argv[1], argv[2:]
    names = argv or list(MODELS)
    for n in names:
        if n not in MODELS:
            sys.exit("unknown model %s (known: %s)" % (n, " ".join(MODELS)))
    if not os.access(MAKE_MODEL, os.X_OK):
        sys.exit("%s not built (make build/tools/make_model)" % MAKE_MODEL)
    prompts = ref.make_prompts({n for _, lens in MODELS.values() for n in lens})
    for name in names:
        args, lens = MODELS[name]
        d = os.path.join(out, "models", name)
        subprocess.run([MAKE_MODEL] + args + ["--out", d, "--tokenizer", TOKENIZER, "--threads", "1"],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        cfg = json.load(open(os.path.join(d, "config.json")))
        st = os.path.join(d, "model.safetensors")
        w = read_weights(d)
        model = ref.Model(w, cfg)
        print("%-13s windows %s, %d tensors" % (name, model.windows, len(w)), flush=True)
        cases = []
        for n in lens:
            ids, steps = model.greedy(prompts[n], N_NEW)
            cases.append({"name": "rand_%d" % n, "prompt_ids": prompts[n], "greedy_ids": ids, "steps": steps})
            print("%-13s rand_%-4d greedy %s" % (name, n, ids), flush=True)
        fx = {"format_version": 1, "method": name, "model_dir": "models/" + name,
              "reference": "float64 numpy HF forward with biases and sliding windows, "
                           "tests/rope_ref/make_arch_fixtures.py",
              "make_model_args": args, "weights_sha256": hashlib.sha256(open(st, "rb").read()).hexdigest(),
              "layer_windows": model.windows, "config": cfg, "new_tokens": N_NEW,
              "prompt_seed": ref.PROMPT_SEED, "cases": cases}
        with open(os.path.join(out, name + ".json"), "w") as f:
            json.dump(fx, f, separators=(",", ":"))
            f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
