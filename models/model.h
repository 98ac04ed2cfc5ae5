/* model.h - a Hugging Face LLaMA-family checkpoint: config.json, safetensors weights (mmap,
 * single or sharded, F32/F16/BF16), the RoPE scaling method and the forward pass over backend
 * ops. models/ describes the math; it holds opaque bk_buf handles and never touches device
 * memory itself.
 *
 * Lifecycle: model_config_load() (config.json only, cheap: the `rope` subcommand and the
 * server's validation use it) -> model_load() (weights into the backend) -> model_kv_init()
 * (the paged pool) -> model_forward() per step -> model_free().
 *
 * Thread-safety: a model is used by one thread at a time (the engine thread). The config and
 * rope structs are read-only after load and may be read from any thread. */
#ifndef ROPESERVE_MODEL_H
#define ROPESERVE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "../kernels/backend.h"

/* ---------------------------------------------------------------------------------------------
 * config.json */

#define MODEL_MAX_EOS 16  /* end-of-sequence ids a model may have (config + generation_config + tokenizer) */

/* rope_scaling exactly as the config (or --rope-scaling-json, or CLI flags) gives it: raw keys,
 * no derived values. has_* flags say whether a key was present. REFERENCES-rope.md §9. */
struct rope_scaling {
    int present;                 /* rope_scaling was a non-null object */
    char type[32];               /* rope_type, falling back to type; "default" when absent */
    double factor;               int has_factor;
    int original_max_pos;        /* rope_scaling.original_max_position_embeddings, 0 = absent */
    double attention_factor;     int has_attention_factor;
    double beta_fast;            int has_beta_fast;
    double beta_slow;            int has_beta_slow;
    double mscale;               int has_mscale;
    double mscale_all_dim;       int has_mscale_all_dim;
    int truncate;                /* yarn: default 1 */
    int finetuned;               /* legacy yarn key, default 0 */
    char yarn_variant[16];       /* "standard" (default) | "revised" (PoSE) */
    double low_freq_factor;      int has_low_freq_factor;   /* llama3 */
    double high_freq_factor;     int has_high_freq_factor;
    float *short_factor;         int n_short_factor;        /* longrope, owned */
    float *long_factor;          int n_long_factor;
    double short_mscale;         int has_short_mscale;
    double long_mscale;          int has_long_mscale;
    int max_factor;              /* clex */
    int param_factor;            /* clex */
    char act[16];                /* clex: "silu" (default) | "tanh" */
    double time_dt;              /* clex: default 0.01 */
    double gene_random_scale;    int has_gene_random_scale;  /* gene */
    int num_rotations;           /* gene: default 3 */
    int training_seq_len;        /* gene: default 16384 */
};

/* The architectures config.json may name (model_type, else architectures). They share the
 * LLaMA layer graph and differ in biases and sliding-window attention. */
enum model_arch {
    MODEL_ARCH_LLAMA = 0,  /* LlamaForCausalLM: attention_bias (q, k, v, o), mlp_bias */
    MODEL_ARCH_MISTRAL,    /* MistralForCausalLM: sliding_window in every layer */
    MODEL_ARCH_QWEN2,      /* Qwen2ForCausalLM: q, k, v biases; sliding window in layers >=
                              max_window_layers when use_sliding_window (or per layer_types) */
};
const char *model_arch_name(enum model_arch a); /* "llama", "mistral", "qwen2" */

struct model_config {
    enum model_arch arch;
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int n_layers;                /* num_hidden_layers */
    int n_heads;                 /* num_attention_heads */
    int n_kv_heads;              /* num_key_value_heads, default n_heads */
    int head_dim;                /* head_dim, default hidden_size / n_heads */
    int max_pos;                 /* max_position_embeddings */
    int original_max_pos;        /* top-level original_max_position_embeddings (Phi-3 style), 0 = absent */
    float rms_norm_eps;
    double rope_theta;           /* default 10000 */
    double partial_rotary_factor;/* default 1 */
    int tie_word_embeddings;     /* default 0 */
    int qkv_bias;                /* q/k/v projections have biases (qwen2; llama attention_bias) */
    int o_bias;                  /* o_proj has a bias (llama attention_bias) */
    int mlp_bias;                /* gate/up/down projections have biases (llama mlp_bias) */
    int *layer_window;           /* (n_layers) sliding window W of each layer, 0 = full causal
                                    attention: the query at position p sees the keys j with
                                    p - W < j <= p (HF Mistral/Qwen2). Owned. */
    int bos_id, eos_id, pad_id;  /* -1 when absent; eos_id is eos_ids[0] */
    int eos_ids[MODEL_MAX_EOS];  /* eos_token_id: an int or a list; every one ends generation */
    int n_eos;
    int eos_primary;             /* the EOS that ends with stop_reason null (vLLM: the tokenizer's
                                    eos_token_id; the loader sets eos_id, the caller may replace it);
                                    every other id of eos_ids ends as a stop token id does, with
                                    stop_reason = the id; -1: none */
    int log_scale;               /* top-level log_scale (CLEX/GeNE), default 0 */
    int string_shift, string_local; /* string_config {shifted_offset, local_value}; 0 = off */
    enum bk_dtype torch_dtype;   /* as stated by the config (informational) */
    struct rope_scaling rope;
};

/* Parse DIR/config.json. Errors name the file and the field, e.g.
 * "DIR/config.json: field 'num_attention_heads': expected a positive integer". */
int model_config_load(struct model_config *c, const char *dir, char *err);
/* Replace c->rope with the rope_scaling object in json ("{...}" or "null"). */
int model_config_set_rope_json(struct model_config *c, const char *json, char *err);
void model_config_free(struct model_config *c); /* frees owned arrays; NULL-safe */
/* The window of `layer` for sequences of at most max_len tokens: layer_window[layer], or 0 when
 * that is >= max_len (such a window never slides: every query sees every key). */
int model_config_layer_window(const struct model_config *c, int layer, int max_len);
/* W when every layer slides with the same effective window W (model_config_layer_window > 0),
 * the largest of them when they differ, 0 when some layer attends to everything: the keys
 * below p - W + 1 are then needed by no layer, and the engine frees their blocks. */
int model_config_window_all(const struct model_config *c, int max_len);

/* Add id to c's EOS list (ignored when negative or already there). Returns -1 when the list is
 * full. Keeps eos_id = eos_ids[0]. */
int model_config_add_eos(struct model_config *c, int id);

/* ---------------------------------------------------------------------------------------------
 * generation_config.json: the EOS ids and the sampling defaults a checkpoint recommends.
 *
 * What vLLM takes (ModelConfig.try_get_generation_config + get_diff_sampling_param):
 * GenerationConfig.from_pretrained(dir) - or, without generation_config.json, the generation
 * keys of config.json (GenerationConfig.from_model_config) - then to_diff_dict(): a value equal
 * to transformers' default (temperature 1.0, top_k 50, top_p 1.0, repetition_penalty 1.0) or
 * null counts as absent. Of the sampling keys only temperature, top_p, top_k, min_p,
 * repetition_penalty and max_new_tokens are used. */
struct generation_config {
    int present;                   /* generation_config.json was found */
    int eos_ids[MODEL_MAX_EOS];    /* eos_token_id: an int or a list */
    int n_eos;
    int has_temperature, has_top_p, has_top_k, has_min_p, has_repetition_penalty, has_max_new_tokens;
    double temperature, top_p, min_p, repetition_penalty;
    int top_k, max_new_tokens;
};

/* Read DIR/generation_config.json (or, when it is absent, the same keys from DIR/config.json).
 * Neither file: zeroed, 0. Errors name the file and the field (a value of the wrong type or out
 * of range: temperature >= 0, 0 < top_p <= 1, top_k >= -1, 0 <= min_p <= 1,
 * repetition_penalty > 0, max_new_tokens >= 1). */
int model_generation_config_load(struct generation_config *g, const char *dir, char *err);

/* ---------------------------------------------------------------------------------------------
 * RoPE (rope.c): the scaling method turned into per-pair inverse frequencies and an attention
 * factor, in fp32 with Hugging Face's operation order (REFERENCES-rope.md §1, §2, §10). */

enum rope_type {
    ROPE_TYPE_DEFAULT = 0,
    ROPE_TYPE_LINEAR,
    ROPE_TYPE_DYNAMIC,       /* HF dynamic NTK, per sequence length */
    ROPE_TYPE_NTK,           /* static NTK-aware: "ntk" / "vanilla_ntk" */
    ROPE_TYPE_YARN,          /* static YaRN, standard or revised variant */
    ROPE_TYPE_DYNAMIC_YARN,  /* legacy jquesnelle dynamic-yarn */
    ROPE_TYPE_LLAMA3,
    ROPE_TYPE_LONGROPE,
    ROPE_TYPE_CLEX,
    ROPE_TYPE_GENE,
};

#define ROPE_MAX_PAIRS 512

struct rope {
    enum rope_type type;
    char name[32];             /* canonical name for logs and /v1/models */
    int rotary_dim;            /* d = head_dim * partial_rotary_factor (even) */
    double base;               /* rope_theta */
    double factor;             /* configured scale factor s (1 when none) */
    int original_max_pos;      /* L0 after the precedence rules of §2.5 */
    int max_pos;               /* config max_position_embeddings */
    int yarn_revised;          /* yarn: PoSE's harmonic blend (§5.3) */
    double beta_fast, beta_slow;
    double ramp_low, ramp_high;/* yarn: correction range in pair indices; -1 when no ramp */
    float attn_factor;         /* static attention factor (cos and sin are multiplied by it) */
    float inv_freq[ROPE_MAX_PAIRS];      /* static frequencies (or the short set, LongRoPE) */
    float inv_freq_long[ROPE_MAX_PAIRS]; /* longrope: long set */
    int length_dependent;      /* 1 when rope_freqs() depends on seq_len */
    enum bk_k_storage k_storage;
    int max_model_len;         /* the context this method supports by default */
    /* Query scaling after rotation (rope_q_scale): none, CLEX's ln(L)/ln(max_pos) (§6.5) or
     * GeNE's max(1, ln(p+1)/ln(training_seq_len)) (§7.4), from config log_scale. */
    enum { ROPE_LOG_SCALE_NONE = 0, ROPE_LOG_SCALE_CLEX, ROPE_LOG_SCALE_GENE } log_scale;
    int training_seq_len;      /* gene: the log_scale denominator */
    /* STRING (§8), the model's default: string_config or --string-shift/--string-local;
     * string_shift 0 = off. A request may override both. */
    int string_shift, string_local;
    const struct model_config *cfg; /* borrowed: the config it was built from */
    void *priv;                /* method state (e.g. CLEX frequency table), owned */
};

/* Build the RoPE of a config (and, for methods with weights such as CLEX, the model directory;
 * dir may be NULL otherwise). Errors name the rope_scaling field. */
int rope_init(struct rope *r, const struct model_config *c, const char *dir, char *err);
void rope_free(struct rope *r);
/* Frequencies for a sequence whose total length (tokens in its context, incl. this step) is
 * seq_len: inv_freq (rotary_dim/2 floats) and the attention factor. Pure; thread-safe. */
void rope_freqs(const struct rope *r, int seq_len, float *inv_freq, float *attn_factor);
/* The query scale of the row at position pos of a sequence of length seq_len (as for
 * rope_freqs): the method's log_scale (1 when it has none), times STRING's factor squared
 * when string is set. Pure; thread-safe. */
float rope_q_scale(const struct rope *r, int pos, int seq_len, int string);
/* STRING's attention factor 0.1 ln 2 + 1 (§8.1); logits are multiplied by its square. */
#define ROPE_STRING_FACTOR 1.0693147180559945
/* STRING's local window W when only the shifted offset S is given (the paper's usual 128). */
#define ROPE_STRING_LOCAL_DEFAULT 128
/* A copy of r's method with the scale factor replaced (static YaRN only: the per-request
 * factor of --rope-scaling-mode per-request). Free with rope_free. */
int rope_init_factor(struct rope *dst, const struct rope *src, double factor, char *err);
/* One line for the start-up log: method, parameters, attention factor, ramp. */
void rope_describe(const struct rope *r, char *buf, size_t len);

/* ---------------------------------------------------------------------------------------------
 * The model */

typedef struct model model_t;

struct model_params {
    int max_batch_tokens;   /* most tokens in one forward (activation buffers are this big) */
    int max_out_rows;       /* most logits rows in one forward */
    int kv_cache_dtype;     /* --kv-cache-dtype: MODEL_KV_DTYPE_AUTO (the backend's weight
                               dtype: fp32 on the CPU, bf16/f16 on CUDA) or an enum bk_dtype */
    int graph_max_seqs;     /* decode steps of up to this many sequences (rounded up to 8) may run
                               as backend graphs (CUDA graphs; backend.h graph_run); 0: never.
                               Default 64; `serve` sets --max-num-seqs */
};
#define MODEL_KV_DTYPE_AUTO (-1)

/* --kv-cache-dtype TEXT: auto, f32 (fp32, float32), bf16 (bfloat16), f16 (fp16, half,
 * float16), fp8 (fp8_e4m3, as vLLM; e4m3 with per-KV-head scales). Returns 0 with *out set
 * (MODEL_KV_DTYPE_AUTO or an enum bk_dtype), or -1 for any other text. */
int model_kv_dtype_parse(const char *s, int *out);

struct model_params model_default_params(void);

/* Load DIR (config.json + safetensors) into backend b, which the model borrows. On failure
 * nothing stays allocated and err names the file and field. */
int model_load(model_t **out, const char *dir, const struct model_config *cfg, struct backend *b,
               const struct model_params *p, char *err);
void model_free(model_t *m);

const struct model_config *model_get_config(const model_t *m);
const struct rope *model_get_rope(const model_t *m);
const struct model_params *model_get_params(const model_t *m); /* the limits it was loaded with */
size_t model_weight_bytes(const model_t *m);        /* as stored in the backend */
size_t model_kv_bytes_per_token(const model_t *m);  /* k + v, all layers, its KV cache dtype */
/* k + v of one token over all layers when the cache stores dt: 2 x n_layers x n_kv_heads x
 * head_dim x bytes(dt). The memory plan's unit (LLaMA-2-7B: 512 KiB in bf16, 256 KiB in fp8).
 * Pure. */
size_t model_config_kv_bytes_per_token(const struct model_config *c, enum bk_dtype dt);
/* The dtype the KV cache stores (--kv-cache-dtype resolved at load). */
enum bk_dtype model_kv_dtype(const model_t *m);
/* 1 when the checkpoint brought k/v scales (kv_scale, k_scale, v_scale tensors); they are used
 * only when the cache stores fp8. The scale of (layer, kv head) is k_scale[l * n_kv_heads + h]. */
int model_kv_scales(const model_t *m, const float **k_scale, const float **v_scale);
/* Backend memory left for the KV pool (0: no device limit, the caller budgets). */
size_t model_mem_free(const model_t *m);

/* Allocate the paged KV pool (n_blocks incl. the null block 0) for sequences of at most
 * max_len tokens (which decides which sliding windows can slide at all). Errors: the backend's
 * (e.g. a sliding window on a backend without it). */
int model_kv_init(model_t *m, int n_blocks, int block_size, int max_len, char *err);

/* Run one batch (struct bk_batch, filled by the engine's runner, RoPE fields included) and
 * write the logits of its out_rows to logits (n_out, vocab) host fp32. */
int model_forward(model_t *m, const struct bk_batch *b, float *logits, char *err);

#endif
