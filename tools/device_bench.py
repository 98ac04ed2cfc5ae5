#!/usr/bin/env python3
"""device_bench.py - the Python parts of tools/device-check.sh (issue 10 item 7): the peer
measurements and the one JSON summary of a GPU run. Each part writes its own JSON file under
--out, so a part that fails or runs out of time loses only its own figures; `summary` merges
whatever exists into summary.json (the device script calls it after every step).

Parts (python3 tools/device_bench.py PART --out DIR [...]):
  tokenizer --model-dir D   write a byte-level BPE tokenizer.json for make_model's 32000-token
                            models (ids 3..258 the bytes, 259.. "w<id>"), so `serve` can run them;
                            token strings map back to ids (parity compares top-5 by id)
  sdpa                      torch SDPA TFLOP/s, cuDNN and FlashAttention-2 backends, on the
                            kernel bench's shapes (32 heads x 128, bf16): 2048 queries over 0,
                            32k and 128k of prefix (causal, lower-right), whole causal 8k/32k/128k
                            -> sdpa.json
  serve --url U             ropeserve over HTTP: for each length a streamed greedy completion of
                            --gen tokens with top-5 logprobs: TTFT (first token) and the tokens
                            -> serve.json
  hf --model-dir D          transformers on the same prompts: bf16 prefill time (one forward,
                            logits_to_keep=1, use_cache=False) and top-5 at the prompt end; fp32
                            (TF32 off) top-5 at the prompt end, greedy continuation where the cache
                            fits (--fp32-gen-lens); the nudge test at full shape (fp32, layer 0
                            x (1 + 1e-6 N(0,1)), < 1e-3 expected on --init stable) -> hf.json
  summary                   merge into summary.json: gpu, commit, attention_tflops {case: value},
                            sdpa_cudnn_tflops, sdpa_flash_tflops, ttft_s {"32k","130k"}, hf_ttft_s,
                            floors, ratios, parity, nudge, profile, steps
--dry-run: no torch, no server: every part runs its plumbing on placeholder numbers (prompts,
tokenizer, JSON files, the summary's schema), so tests/test_device_scripts.sh checks it here.
--deadline EPOCH: parts skip what cannot finish before it (and say so in their JSON).
"""
import argparse
import http.client
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.parse

VOCAB = 32000
N_BYTES = 256
FIRST_WORD = 3 + N_BYTES  # ids 3..258: bytes 0..255; 259..: "w<id>"
LENGTHS = {"8k": 8192, "32k": 32768, "130k": 130000}  # 130000 + gen < 131072 (max_pos)
TTFT_KEYS = ("32k", "130k")
PEAK_BF16 = (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12))
SDPA_CASES = (("prefill2048_ctx0", 0, 2048), ("prefill2048_ctx32k", 32768, 2048), ("prefill2048_ctx128k", 131072, 2048),
              ("causal8k", 0, 8192), ("causal32k", 0, 32768), ("causal128k", 0, 131072))
# 7b-shape (make_model --preset 7b-shape): hidden, layers, ffn, vocab, heads, head_dim
SHAPE_7B = dict(hidden=4096, layers=32, ffn=11008, vocab=32000, heads=32, head_dim=128)


def length_of(key):
    """"8k", "32k", "130k", or a number of tokens (the CPU test uses short ones)"""
    return LENGTHS[key] if key in LENGTHS else int(key)


def log(*a):
    print("[device_bench %s]" % time.strftime("%H:%M:%S"), *a, flush=True)


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def time_left(args):
    return float("inf") if not args.deadline else args.deadline - time.time()


# ------------------------------------------------------------------------------------------------
# prompts and the tokenizer


def prompt_ids(n, salt, vocab=VOCAB):
    """BOS then n - 1 "w" tokens from a xorshift stream: the same list for ropeserve and HF."""
    x = (0x9E3779B97F4A7C15 ^ (n * 0x100000001B3) ^ salt) & 0xFFFFFFFFFFFFFFFF
    out = [1]
    span = vocab - FIRST_WORD
    for _ in range(n - 1):
        x ^= (x << 13) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 7
        x ^= (x << 17) & 0xFFFFFFFFFFFFFFFF
        out.append(FIRST_WORD + x % span)
    return out


def bytes_to_unicode():
    """GPT-2's byte -> printable character table (ByteLevel pre-tokenizer/decoder)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def token_string(i):
    """The text ropeserve shows for id i with part_tokenizer's vocabulary (None: not unique)."""
    if i >= FIRST_WORD:
        return "w%d" % i
    if 3 <= i < FIRST_WORD and 0x21 <= i - 3 <= 0x7E:
        return chr(i - 3)
    return None


def string_id(s):
    m = re.fullmatch(r"w(\d+)", s)
    if m:
        return int(m.group(1))
    if len(s) == 1 and 0x21 <= ord(s) <= 0x7E:
        return ord(s) + 3
    return None


def part_tokenizer(args):
    d = args.model_dir
    b2u = bytes_to_unicode()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[b2u[b]] = 3 + b
    for i in range(FIRST_WORD, args.vocab):
        vocab["w%d" % i] = i
    special = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
                "special": True} for c, i in (("<unk>", 0), ("<s>", 1), ("</s>", 2))]
    tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": special, "normalizer": None,
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
           "post_processor": None,
           "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "vocab": vocab,
                     "merges": []}}
    os.makedirs(d, exist_ok=True)
    write_json(os.path.join(d, "tokenizer.json"), tok)
    write_json(os.path.join(d, "tokenizer_config.json"),
               {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
                "add_eos_token": False, "model_max_length": 1000000, "tokenizer_class": "PreTrainedTokenizerFast"})
    log("wrote %s/tokenizer.json (%d tokens)" % (d, args.vocab))
    return 0


# ------------------------------------------------------------------------------------------------
# FLOPs and floors


def attn_flops(n_new, ctx, heads=32, hd=128):
    """4 hd heads x (query, visible key) pairs, as check_attention --bench counts them."""
    pairs = n_new * ctx + n_new * (n_new + 1) / 2
    return 4.0 * hd * heads * pairs


def prefill_flops(n, s=SHAPE_7B):
    h, L, f, v = s["hidden"], s["layers"], s["ffn"], s["vocab"]
    linear = 2.0 * n * L * (4 * h * h + 3 * h * f) + 2.0 * h * v  # logits of the last token only
    attn = L * attn_flops(n, 0, s["heads"], s["head_dim"])
    return linear + attn


def peak_for(gpu):
    for name, peak in PEAK_BF16:
        if name in (gpu or ""):
            return peak
    return None


# ------------------------------------------------------------------------------------------------
# sdpa


def part_sdpa(args):
    out = {"cudnn": {}, "flash": {}, "errors": {}, "method": "torch.nn.functional.scaled_dot_product_attention, "
           "(1, 32, N, 128) bf16, CUDA events, median of reps after a warm-up; prefix cases use "
           "torch.nn.attention.bias.causal_lower_right (the paged kernels' causal alignment)"}
    path = os.path.join(args.out, "sdpa.json")
    if args.dry_run:
        for be in ("cudnn", "flash"):
            for name, ctx, n in SDPA_CASES:
                out[be][name] = None
        out["dry_run"] = True
        write_json(path, out)
        return 0
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    try:
        from torch.nn.attention.bias import causal_lower_right
    except ImportError:
        causal_lower_right = None
    dev = "cuda"
    heads, hd = 32, 128
    backends = (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION))
    for name, ctx, n in SDPA_CASES:
        if time_left(args) < 20:
            out["errors"][name] = "skipped: deadline"
            continue
        kv = ctx + n
        g = torch.Generator(device=dev).manual_seed(7)
        q = torch.randn(1, heads, n, hd, device=dev, dtype=torch.bfloat16, generator=g)
        k = torch.randn(1, heads, kv, hd, device=dev, dtype=torch.bfloat16, generator=g)
        v = torch.randn(1, heads, kv, hd, device=dev, dtype=torch.bfloat16, generator=g)
        flop = attn_flops(n, ctx, heads, hd)
        reps = 3 if flop > 5e13 else 10
        for bname, be in backends:
            try:
                if ctx == 0:
                    fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
                else:
                    if causal_lower_right is None:
                        raise RuntimeError("no torch.nn.attention.bias.causal_lower_right")
                    bias = causal_lower_right(n, kv)
                    fn = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
                with sdpa_kernel([be]):
                    fn()
                    torch.cuda.synchronize()
                    ts = []
                    for _ in range(reps):
                        a = torch.cuda.Event(enable_timing=True)
                        b = torch.cuda.Event(enable_timing=True)
                        a.record()
                        fn()
                        b.record()
                        b.synchronize()
                        ts.append(a.elapsed_time(b))
                ms = sorted(ts)[len(ts) // 2]
                out[bname][name] = round(flop / (ms * 1e9), 1)
                log("sdpa %s %s: %.3f ms, %.1f TFLOP/s" % (bname, name, ms, out[bname][name]))
            except Exception as e:  # a backend that cannot run a shape: recorded, not fatal
                out[bname][name] = None
                out["errors"]["%s/%s" % (bname, name)] = str(e)[:300]
                log("sdpa %s %s: %s" % (bname, name, str(e)[:200]))
            write_json(path, out)
        del q, k, v
        torch.cuda.empty_cache()
    write_json(path, out)
    return 0


# ------------------------------------------------------------------------------------------------
# ropeserve over HTTP


def http_stream(url, body, timeout):
    """POST a streamed completion; returns (seconds to the first token, tokens, top-5 per step)."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    data = json.dumps(body)
    t0 = time.time()
    conn.request("POST", "/v1/completions", body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError("HTTP %d: %s" % (resp.status, resp.read()[:500]))
    t_first = None
    tokens, tops = [], []
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            break
        ev = json.loads(payload)
        for ch in ev.get("choices", []):
            lp = ch.get("logprobs") or {}
            toks = lp.get("tokens") or []
            if toks and t_first is None:
                t_first = time.time() - t0
            tokens += toks
            tops += lp.get("top_logprobs") or []
    conn.close()
    return t_first, tokens, tops


def part_serve(args):
    path = os.path.join(args.out, "serve.json")
    out = {"ttft_s": {}, "parity": {}, "errors": {}, "url": args.url, "gen": args.gen,
           "method": "POST /v1/completions, prompt = token ids, stream, temperature 0, ignore_eos, logprobs 5; "
           "TTFT = request sent -> first streamed token"}
    lengths = [x for x in args.lengths.split(",") if x]
    if args.dry_run:
        for key in lengths:
            out["ttft_s"][key] = None
            out["parity"][key] = {"ids": [], "top5": []}
        out["dry_run"] = True
        write_json(path, out)
        return 0
    # warm-up: a short prompt (first-use costs out of the figures)
    try:
        http_stream(args.url, {"prompt": prompt_ids(64, 99), "max_tokens": 2, "temperature": 0, "stream": True,
                               "logprobs": 5, "ignore_eos": True}, 120)
    except Exception as e:
        out["errors"]["warmup"] = str(e)[:300]
    for key in lengths:
        n = length_of(key)
        if time_left(args) < 10:
            out["errors"][key] = "skipped: deadline"
            continue
        body = {"prompt": prompt_ids(n, 1), "max_tokens": args.gen, "temperature": 0, "stream": True, "logprobs": 5,
                "ignore_eos": True}
        try:
            tf, toks, tops = http_stream(args.url, body, max(30, min(3600, time_left(args))))
            out["ttft_s"][key] = round(tf, 4) if tf is not None else None
            out["parity"][key] = {
                "ids": [string_id(t) for t in toks],
                "top5": [sorted(([string_id(s), lp] for s, lp in d.items()), key=lambda x: -x[1]) for d in tops]}
            log("ropeserve %s (%d tokens): TTFT %.3f s, tokens %s" % (key, n, tf or -1, toks[:4]))
        except Exception as e:
            out["errors"][key] = str(e)[:300]
            log("ropeserve %s: %s" % (key, str(e)[:200]))
        write_json(path, out)
    write_json(path, out)
    return 0


# ------------------------------------------------------------------------------------------------
# transformers


def part_hf(args):
    path = os.path.join(args.out, "hf.json")
    out = {"ttft_s": {}, "bf16": {}, "fp32": {}, "nudge": {}, "errors": {}, "model": args.model_dir,
           "method": "transformers AutoModelForCausalLM, attn_implementation sdpa; bf16: one forward "
           "(logits_to_keep=1, use_cache=False) timed with cuda synchronize after a warm-up; fp32: TF32 off, "
           "top-5 at the prompt end, greedy continuation with the cache at --fp32-gen-lens"}
    lengths = [x for x in args.lengths.split(",") if x]
    gen_lens = [x for x in args.fp32_gen_lens.split(",") if x]
    if args.dry_run:
        for key in lengths:
            out["ttft_s"][key] = None
            out["bf16"][key] = {"ids": [], "top5": []}
            out["fp32"][key] = {"ids": [], "top5": []}
        out["nudge"] = {"rel": 1e-6, "max_abs_dlogprob_last": None, "max_abs_dlogprob_all": None}
        out["dry_run"] = True
        write_json(path, out)
        return 0
    import torch
    from transformers import AutoModelForCausalLM
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    def top5(logits):
        lp = torch.log_softmax(logits.float(), dim=-1)
        v, i = torch.topk(lp, 5)
        return [[int(a), float(b)] for a, b in zip(i.tolist(), v.tolist())]

    def first(model, ids, keep_cache):
        x = torch.tensor([ids], device="cuda")
        with torch.no_grad():
            o = model(input_ids=x, logits_to_keep=1, use_cache=keep_cache)
        return o

    # --- bf16: prefill time and the bf16 class
    try:
        t = time.time()
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.bfloat16, device_map="cuda",
                                                     attn_implementation="sdpa")
        model.eval()
        out["bf16_load_s"] = round(time.time() - t, 2)
        first(model, prompt_ids(1024, 99), False)
        torch.cuda.synchronize()
        for key in lengths:
            n = length_of(key)
            est = prefill_flops(n) / 300e12 + 5
            if time_left(args) < est:
                out["errors"]["bf16/" + key] = "skipped: deadline"
                continue
            try:
                torch.cuda.synchronize()
                t = time.time()
                o = first(model, prompt_ids(n, 1), False)
                torch.cuda.synchronize()
                dt = time.time() - t
                out["ttft_s"][key] = round(dt, 4)
                tp = top5(o.logits[0, -1])
                out["bf16"][key] = {"ids": [tp[0][0]], "top5": [tp]}
                log("transformers bf16 %s: %.3f s, top-1 %s" % (key, dt, tp[0]))
                del o
            except Exception as e:
                out["errors"]["bf16/" + key] = str(e)[:300]
                log("transformers bf16 %s: %s" % (key, str(e)[:200]))
            torch.cuda.empty_cache()
            write_json(path, out)
        del model
        torch.cuda.empty_cache()
    except Exception as e:
        out["errors"]["bf16"] = str(e)[:300]
        log("transformers bf16: %s" % str(e)[:300])
    write_json(path, out)

    # --- fp32: the reference, then the nudge test on the same weights
    if time_left(args) < 60:
        out["errors"]["fp32"] = "skipped: deadline"
        write_json(path, out)
        return 0
    try:
        t = time.time()
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, device_map="cuda",
                                                     attn_implementation="sdpa")
        model.eval()
        out["fp32_load_s"] = round(time.time() - t, 2)
        for key in lengths:
            n = length_of(key)
            est = prefill_flops(n) / 40e12 + 10  # fp32 without TF32
            if time_left(args) < est + 40:
                out["errors"]["fp32/" + key] = "skipped: deadline (estimated %.0f s)" % est
                continue
            try:
                ids = prompt_ids(n, 1)
                gen = args.gen if key in gen_lens else 1
                o = first(model, ids, gen > 1)
                rec = {"ids": [], "top5": []}
                past = o.past_key_values if gen > 1 else None
                logits = o.logits[0, -1]
                for step in range(gen):
                    tp = top5(logits)
                    rec["top5"].append(tp)
                    rec["ids"].append(tp[0][0])
                    if step + 1 < gen:
                        with torch.no_grad():
                            o = model(input_ids=torch.tensor([[tp[0][0]]], device="cuda"), past_key_values=past,
                                      use_cache=True)
                        past = o.past_key_values
                        logits = o.logits[0, -1]
                out["fp32"][key] = rec
                log("transformers fp32 %s: tokens %s" % (key, rec["ids"]))
                del o, past
            except Exception as e:
                out["errors"]["fp32/" + key] = str(e)[:300]
                log("transformers fp32 %s: %s" % (key, str(e)[:200]))
            torch.cuda.empty_cache()
            write_json(path, out)
        # the nudge test at full shape: layer 0's parameters x (1 + rel N(0,1))
        if time_left(args) > 30:
            rel = 1e-6
            ids = torch.tensor([prompt_ids(512, 5)], device="cuda")
            with torch.no_grad():
                a = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0].float(), -1)
                layer0 = model.model.layers[0]
                saved = [p.detach().clone() for p in layer0.parameters()]
                g = torch.Generator(device="cuda").manual_seed(11)
                for p in layer0.parameters():
                    p.mul_(1 + rel * torch.randn(p.shape, device="cuda", generator=g, dtype=p.dtype))
                b = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0].float(), -1)
                for p, s in zip(layer0.parameters(), saved):
                    p.copy_(s)
            top = torch.topk(a[-1], 20).indices
            out["nudge"] = {"rel": rel, "layers": model.config.num_hidden_layers, "tokens": 512,
                            "max_abs_dlogprob_last_top20": float((a[-1, top] - b[-1, top]).abs().max()),
                            "max_abs_dlogprob_last": float((a[-1] - b[-1]).abs().max()),
                            "max_abs_dlogprob_all": float((a - b).abs().max()),
                            "pass": bool(float((a - b).abs().max()) < 1e-3)}
            log("nudge at full shape: %s" % out["nudge"])
        else:
            out["errors"]["nudge"] = "skipped: deadline"
        del model
        torch.cuda.empty_cache()
    except Exception as e:
        out["errors"]["fp32"] = str(e)[:300]
        log("transformers fp32: %s" % str(e)[:300])
    write_json(path, out)
    return 0


# ------------------------------------------------------------------------------------------------
# summary


def compare(rec, ref):
    """max |top-5 logprob difference| over ids both list, per step; tokens equal?"""
    if not rec or not ref or not rec.get("top5") or not ref.get("top5"):
        return None
    worst, n_steps = 0.0, min(len(rec["top5"]), len(ref["top5"]))
    for a, b in zip(rec["top5"][:n_steps], ref["top5"][:n_steps]):
        da = {i: lp for i, lp in a if i is not None}
        for i, lp in b:
            if i in da:
                worst = max(worst, abs(da[i] - lp))
    toks = list(zip(rec.get("ids", [])[:n_steps], ref.get("ids", [])[:n_steps]))
    gap = [round(b[0][1] - b[1][1], 5) if len(b) > 1 else None for b in ref["top5"][:n_steps]]
    return {"steps": n_steps, "max_abs_dlogprob_top5": round(worst, 5),
            "tokens_equal": sum(1 for a, b in toks if a == b), "tokens_compared": len(toks),
            "first_mismatch": next(({"step": k, "got": a, "ref": b, "ref_top2_gap": gap[k]}
                                    for k, (a, b) in enumerate(toks) if a != b), None)}


def parse_attention_bench(path):
    try:
        text = open(path, errors="replace").read()
    except OSError:
        return None
    m = re.findall(r"^ATTENTION_TFLOPS_JSON (.*)$", text, re.M)
    if not m:
        return None
    try:
        return json.loads(m[-1])
    except ValueError:
        return None


def parse_profile(path):
    try:
        text = open(path, errors="replace").read()
    except OSError:
        return None
    m = re.findall(r"^PROFILE_JSON (.*)$", text, re.M)
    try:
        return json.loads(m[-1]) if m else None
    except ValueError:
        return None


def part_summary(args):
    o = args.out
    sm = {"gpu": None, "commit": args.commit, "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
          "attention_tflops": {}, "attention_tflops_by_path": {}, "sdpa_cudnn_tflops": {}, "sdpa_flash_tflops": {},
          "ttft_s": {k: None for k in TTFT_KEYS}, "hf_ttft_s": {k: None for k in TTFT_KEYS}}
    try:
        sm["gpu"] = open(os.path.join(o, "gpu.txt")).read().strip().splitlines()[0]
    except (OSError, IndexError):
        pass
    att = parse_attention_bench(os.path.join(o, "attention-bench.log"))
    if att:
        sm["attention_tflops_by_path"] = att
        default = "sm90" if "sm90" in att else ("sm80" if "sm80" in att else next(iter(att), None))
        sm["attention_tflops"] = att.get(default, {})
        sm["attention_path"] = default
    sd = read_json(os.path.join(o, "sdpa.json"), {})
    sm["sdpa_cudnn_tflops"] = sd.get("cudnn", {})
    sm["sdpa_flash_tflops"] = sd.get("flash", {})
    if sd.get("errors"):
        sm["sdpa_errors"] = sd["errors"]
    ratio = {}
    for case, v in sm["attention_tflops"].items():
        c = sm["sdpa_cudnn_tflops"].get(case)
        if v and c:
            ratio[case] = round(v / c, 3)
    sm["attention_vs_cudnn"] = ratio
    rs = read_json(os.path.join(o, "serve.json"), {})
    hf = read_json(os.path.join(o, "hf.json"), {})
    for k in TTFT_KEYS:
        sm["ttft_s"][k] = (rs.get("ttft_s") or {}).get(k)
        sm["hf_ttft_s"][k] = (hf.get("ttft_s") or {}).get(k)
    peak = peak_for(sm["gpu"])
    sm["floors"] = {"peak_bf16_tflops": peak / 1e12 if peak else None,
                    "prefill_pflop": {k: round(prefill_flops(LENGTHS[k]) / 1e15, 3) for k in TTFT_KEYS},
                    "ttft_floor_s": {k: (round(prefill_flops(LENGTHS[k]) / peak, 3) if peak else None) for k in TTFT_KEYS},
                    "note": "7b-shape prefill FLOPs (linear layers + causal attention) at the dense bf16 peak"}
    sm["ttft_vs_hf"] = {k: (round(sm["ttft_s"][k] / sm["hf_ttft_s"][k], 3)
                            if sm["ttft_s"][k] and sm["hf_ttft_s"][k] else None) for k in TTFT_KEYS}
    parity = {}
    keys = list(LENGTHS) + [k for k in (rs.get("parity") or {}) if k not in LENGTHS]
    for key in keys:
        ref = (hf.get("fp32") or {}).get(key)
        entry = {"ropeserve_vs_hf_fp32": compare((rs.get("parity") or {}).get(key), ref),
                 "hf_bf16_vs_hf_fp32": compare((hf.get("bf16") or {}).get(key), ref)}
        if any(entry.values()):
            parity[key] = entry
    sm["parity"] = parity
    if hf.get("nudge"):
        sm["nudge"] = hf["nudge"]
    prof = parse_profile(os.path.join(o, "profile.txt"))
    if prof:
        sm["profile"] = prof
    errs = {}
    for name, d in (("serve", rs), ("hf", hf)):
        if d.get("errors"):
            errs[name] = d["errors"]
    if errs:
        sm["errors"] = errs
    steps = []
    try:
        for line in open(os.path.join(o, "steps.tsv")):
            f = line.rstrip("\n").split("\t")
            if len(f) >= 3:
                steps.append({"step": f[0], "rc": f[1], "seconds": f[2]})
    except OSError:
        pass
    sm["steps"] = steps
    if args.dry_run:
        sm["dry_run"] = True
    write_json(os.path.join(o, "summary.json"), sm)
    log("summary.json: %d attention cases, ttft %s, hf %s" % (len(sm["attention_tflops"]), sm["ttft_s"], sm["hf_ttft_s"]))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=["tokenizer", "sdpa", "serve", "hf", "summary"])
    ap.add_argument("--out", default="build/device-check")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--deadline", type=float, default=0)
    ap.add_argument("--model-dir")
    ap.add_argument("--vocab", type=int, default=VOCAB)
    ap.add_argument("--url", default="http://127.0.0.1:8093")
    ap.add_argument("--lengths", default="8k,32k,130k")
    ap.add_argument("--fp32-gen-lens", default="8k")
    ap.add_argument("--gen", type=int, default=8)
    ap.add_argument("--commit", default=None)
    args = ap.parse_args()
    for key in [x for x in args.lengths.split(",") if x]:
        if key not in LENGTHS and not key.isdigit():
            ap.error("--lengths: %s is neither a number nor one of %s" % (key, ",".join(LENGTHS)))
    if args.part in ("tokenizer", "hf") and not args.model_dir:
        ap.error("%s needs --model-dir" % args.part)
    os.makedirs(args.out, exist_ok=True)
    if args.commit is None:
        try:
            args.commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                         cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
        except OSError:
            args.commit = None
    return {"tokenizer": part_tokenizer, "sdpa": part_sdpa, "serve": part_serve, "hf": part_hf,
            "summary": part_summary}[args.part](args)


if __name__ == "__main__":
    sys.exit(main())
