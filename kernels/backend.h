/* backend.h - the compute backend interface: a table of function pointers plus a context
 * pointer (struct backend), filled by the CPU backend (kernels/cpu/, fp32 reference, OpenBLAS)
 * and the CUDA backend (kernels/cuda/, cuBLAS + own kernels).
 *
 * Memory: everything an op reads or writes lives in backend memory behind an opaque bk_buf
 * (host memory on the CPU, device memory on CUDA). models/ holds bk_buf handles, never raw
 * device pointers. Weights are uploaded once with weight_new(), which picks the storage dtype
 * (fp32 on the CPU; bf16/f16 on CUDA). Activations are allocated with act_new() and hold fp32
 * on the CPU (a backend may choose another activation dtype: CUDA keeps them in its 16-bit weight
 * dtype; act_read/act_write convert; act_new_f32, where provided, always gives fp32).
 *
 * One batch format for prefill and decode (struct bk_batch): a flat list of n_tokens new
 * tokens from n_seqs sequences, sequence s owning rows [query_start[s], query_start[s+1]).
 * batch_begin() hands the metadata to the backend; the ops after it (until the next
 * batch_begin) run over that batch. Worked example, block_size 4:
 *
 *     seq 0: decode, 6 tokens cached in blocks [7, 2], its new token is at position 6
 *     seq 1: prefill chunk, positions 0..2 of a new prompt, blocks [5]
 *     n_tokens = 4, n_seqs = 2
 *     tokens       = [t6, u0, u1, u2]
 *     positions    = [6,  0,  1,  2]
 *     query_start  = [0, 1, 4]
 *     seq_lens     = [7, 3]              (context length including this step's tokens)
 *     block_tables = [[7, 2], [5, 0]]    (block_table_stride 2; unused entries are ignored)
 *     slot_mapping = [2*4+2, 5*4+0, 5*4+1, 5*4+2] = [10, 20, 21, 22]
 *     out_rows     = [0, 3]              (the last token of each sequence -> 2 logits rows)
 *
 * Attention for the token at row r of sequence s reads keys 0..positions[r] of s through its
 * block table (causal); keys are addressed by position: key j of s lives in block
 * block_tables[s][j / block_size], offset j % block_size. New keys must be written by kv_store
 * (slot_mapping) before attention reads them. In a layer with a sliding window W
 * (bk_kv_params.sliding_window) it reads only keys positions[r] - W + 1 .. positions[r]: the
 * engine may have freed the blocks below (their block-table entries are then 0, the null block,
 * whose contents are garbage).
 *
 * KV layout per layer (both backends): k[n_blocks][block_size][n_kv_heads][head_dim], same
 * for v, so one block of one head is block_size rows of head_dim contiguous-per-token values.
 *
 * Threading: a backend is used by one thread at a time (the engine thread). Ops are ordered:
 * an op sees the results of every earlier op. act_read() waits for completion.
 *
 * Errors: functions that can fail for a reason outside the program (memory, device) return int
 * (0 ok, <0 error, message in err). Ops given valid arguments cannot fail; a device error
 * inside an op aborts with file:line (CUDA_CHECK). */
#ifndef ROPESERVE_BACKEND_H
#define ROPESERVE_BACKEND_H

#include <stddef.h>
#include <stdint.h>

/* BK_FP8_E4M3 is a KV cache dtype only (never a weight or activation): OCP FP8 E4M3 ("e4m3fn":
 * 1 sign, 4 exponent bits of bias 7, 3 mantissa bits; no infinities, S.1111.111 is NaN; largest
 * finite 448, smallest subnormal 2^-9). */
enum bk_dtype { BK_F32 = 0, BK_F16 = 1, BK_BF16 = 2, BK_FP8_E4M3 = 3 };

/* "f32", "f16", "bf16", "fp8_e4m3" */
const char *bk_dtype_name(enum bk_dtype t);
/* bytes of one stored element: 4, 2, 2, 1 */
size_t bk_dtype_bytes(enum bk_dtype t);

/* The fp8 KV storage both backends implement (the CUDA kernels use the hardware conversion,
 * cvt.rn.satfinite.e4m3x2.f32, which these match bit for bit): x is rounded to the nearest e4m3
 * value, ties to the even code, and saturated to +-448 (so +-inf too); NaN -> 0x7f with its sign.
 * A value is stored as bk_fp8_e4m3_from_f32(x / scale) and read as bk_fp8_e4m3_to_f32(code) *
 * scale (vLLM's k_scale / v_scale convention). Pure; thread-safe. */
uint8_t bk_fp8_e4m3_from_f32(float x);
float bk_fp8_e4m3_to_f32(uint8_t code);

enum bk_device { BK_DEVICE_AUTO = 0, BK_DEVICE_CPU = 1, BK_DEVICE_CUDA = 2 };

typedef struct bk_buf bk_buf; /* opaque backend memory */

/* How keys are stored in the cache (REFERENCES-rope.md §10.9). */
enum bk_k_storage {
    BK_K_POST_ROPE = 0, /* rotated before kv_store; attention reads keys as stored */
    BK_K_PRE_ROPE = 1,  /* stored unrotated; attention rotates key j at position j with the
                           sequence's current inv_freq/attn_factor as it reads it (CLEX) */
};

struct bk_kv_params {
    int n_layers;
    int n_blocks;   /* blocks in the pool, including the reserved null block 0 */
    int block_size; /* tokens per block, a power of two */
    int n_kv_heads;
    int head_dim;
    enum bk_k_storage k_storage;
    const int32_t *sliding_window; /* (n_layers) or NULL. 0 = full causal attention in that
                                      layer; W > 0: the query at position p sees only keys j with
                                      p - W < j <= p (HF Mistral/Qwen2 semantics: W keys including
                                      its own). The backend copies the array at kv_init. */
    /* Storage dtype of the cache (one the backend's kv_dtype_check accepts). BK_F32, the value
     * of a zeroed struct, means the backend's own (kv_dtype_auto: fp32 on the CPU, the weights'
     * bf16/f16 on CUDA), so callers that predate the field keep their cache. For BK_FP8_E4M3,
     * k_scale / v_scale (n_layers, n_kv_heads) or NULL (= 1.0 everywhere): kv_store writes
     * e4m3(k / k_scale[layer][kv head]) and attention reads e4m3 * k_scale, likewise v. The
     * backend copies both arrays at kv_init; other dtypes ignore them. */
    enum bk_dtype dtype;
    const float *k_scale;
    const float *v_scale;
};

/* The one batch format. All arrays are host memory owned by the caller and must stay valid
 * until the next batch_begin. */
struct bk_batch {
    int n_tokens;
    const int32_t *tokens;       /* (n_tokens) */
    const int32_t *positions;    /* (n_tokens) position of each token in its sequence */
    const int64_t *slot_mapping; /* (n_tokens) block_id * block_size + offset of its new k/v */
    int n_seqs;
    const int32_t *query_start;  /* (n_seqs + 1) rows of sequence s: [query_start[s], query_start[s+1]) */
    const int32_t *seq_lens;     /* (n_seqs) context length after this step */
    const int32_t *block_tables; /* (n_seqs, block_table_stride) */
    int block_table_stride;
    int n_out;
    const int32_t *out_rows;     /* (n_out) rows whose final hidden state is wanted, ascending */
    /* RoPE, per sequence, so that length-dependent methods (dynamic NTK, LongRoPE, CLEX) use
     * each sequence's own frequencies (REFERENCES-rope.md §10.8). */
    int rotary_dim;              /* <= head_dim; dims >= rotary_dim pass through */
    const float *inv_freq;       /* (n_seqs, rotary_dim / 2) */
    const float *attn_factor;    /* (n_seqs) multiplies cos and sin */
    /* Query scaling, per token (NULL: none). The rope op multiplies row r of q (and of q_shift)
     * by q_scale[r] after rotating it. The engine puts log_scale there (CLEX and GeNE,
     * REFERENCES-rope.md §6.5, §7.4) and STRING's attention factor squared (§8.1: the reference
     * multiplies cos and sin of both q and k by it; the logits are the same up to rounding, and
     * the keys a layer stores stay what plain RoPE makes of its input). */
    const float *q_scale;        /* (n_tokens) */
    /* STRING (§8), per sequence; NULL when no sequence of the batch uses it, 0 = off for s. A
     * query at position p scores key j with q rotated at p when p - j < S (the local band) and
     * with q rotated at p - S + W when p - j >= S (the shifted part): the decode rule of §8.2,
     * used for prefill rows too, so the result does not depend on chunking. 0 <= W < S. */
    const int32_t *string_shift; /* (n_seqs) S = shifted_offset */
    const int32_t *string_local; /* (n_seqs) W = local_value */
};

struct backend_ops {
    const char *name; /* "cpu", "cuda" */
    int elem_size;    /* bytes of one stored weight: 4 (fp32) or 2 (bf16/f16); the KV cache's
                         element is bk_dtype_bytes(bk_kv_params.dtype) */
    void (*free)(void *ctx);
    /* One line describing the device for the start-up log (e.g. "cpu: 2 threads, OpenBLAS"). */
    void (*describe)(void *ctx, char *buf, size_t len);
    /* Bytes of backend memory free for the KV pool after weights and activations (CUDA);
     * 0 = no device limit (CPU: the caller budgets host memory itself). */
    size_t (*mem_free)(void *ctx);

    /* --- memory --- */
    /* Upload a weight of n_elems elements stored as src_dtype on the host. The backend converts
     * to its storage dtype (CPU: fp32). Returns NULL and fills err when out of memory. */
    bk_buf *(*weight_new)(void *ctx, const void *src, enum bk_dtype src_dtype, size_t n_elems, char *err);
    /* An activation buffer of n_elems values (contents undefined). NULL + err when out of memory. */
    bk_buf *(*act_new)(void *ctx, size_t n_elems, char *err);
    void (*buf_free)(void *ctx, bk_buf *b); /* NULL is a no-op */
    /* Copy activations between host fp32 and backend memory, starting at element offset. */
    void (*act_write)(void *ctx, bk_buf *dst, size_t offset, const float *src, size_t n_elems);
    void (*act_read)(void *ctx, float *dst, const bk_buf *src, size_t offset, size_t n_elems);

    /* --- KV cache --- */
    /* Allocate the paged pool; called once, before the first batch. */
    int (*kv_init)(void *ctx, const struct bk_kv_params *p, char *err);
    /* Copy whole blocks src[i] -> dst[i] in every layer (copy-on-write for a shared partial
     * block). (optional: NULL when the engine never needs it) */
    void (*kv_copy_blocks)(void *ctx, const int32_t *src, const int32_t *dst, int n);

    /* --- one step --- */
    int (*batch_begin)(void *ctx, const struct bk_batch *b, char *err);

    /* x (n_tokens, dim) = table[tokens[r]] ; table (vocab, dim) */
    void (*embed)(void *ctx, bk_buf *x, const bk_buf *table, int dim);
    /* out (n_rows, dim) = x / rms(x) * w ; w (dim); out may equal x */
    void (*rmsnorm)(void *ctx, bk_buf *out, const bk_buf *x, const bk_buf *w, int n_rows, int dim, float eps);
    /* out (n_rows, n_out) = x (n_rows, n_in) . w^T ; w (n_out, n_in) as in a HF checkpoint */
    void (*matmul)(void *ctx, bk_buf *out, const bk_buf *x, const bk_buf *w, int n_rows, int n_in, int n_out);
    /* Rotate q (n_tokens, n_heads, head_dim) and k (n_tokens, n_kv_heads, head_dim) in place,
     * HF rotate-half layout: pair (x[i], x[i + rotary_dim/2]), angle = (float)positions[r] *
     * inv_freq[s][i] in fp32, cos and sin multiplied by attn_factor[s]; then q row r times
     * q_scale[r] (k is never scaled). k may be NULL (q only).
     * q_shift (n_tokens, n_heads, head_dim) may be NULL; when given, rows of STRING sequences
     * (string_shift[s] > 0) first get the unrotated q rotated at max(0, positions[r] - S + W)
     * (times q_scale[r]) written there; rows of other sequences are left untouched. */
    void (*rope)(void *ctx, bk_buf *q, bk_buf *k, bk_buf *q_shift, int n_heads, int n_kv_heads, int head_dim);
    /* Write k, v (n_tokens, n_kv_heads, head_dim) into layer's cache at slot_mapping. */
    void (*kv_store)(void *ctx, int layer, const bk_buf *k, const bk_buf *v);
    /* out (n_tokens, n_heads, head_dim) = softmax(scale * q k^T, causal) v over each sequence's
     * cached keys, GQA: query head h reads kv head h / (n_heads / n_kv_heads). Never an n x n
     * matrix: online softmax over key blocks.
     * q_shift: NULL, or the buffer rope() filled; for a STRING sequence (string_shift[s] = S > 0)
     * the query at position p scores key j with q_shift when p - j >= S and with q otherwise,
     * all keys of the sequence in one softmax. A batch with STRING sequences must pass it. */
    void (*attention)(void *ctx, bk_buf *out, const bk_buf *q, const bk_buf *q_shift, int layer, int n_heads,
                      float scale);
    /* out (n_rows, n) = silu(gate) * up */
    void (*swiglu)(void *ctx, bk_buf *out, const bk_buf *gate, const bk_buf *up, int n_rows, int n);
    /* x (n) += y (n) */
    void (*add)(void *ctx, bk_buf *x, const bk_buf *y, size_t n);
    /* dst (n_out, dim) = src[out_rows[i]] */
    void (*gather_rows)(void *ctx, bk_buf *dst, const bk_buf *src, int dim);
    /* x (n_rows, n) += b (n) on every row; b is a weight (weight_new): the bias of a projection */
    void (*add_bias)(void *ctx, bk_buf *x, const bk_buf *b, int n_rows, int n);

    /* --- KV cache dtype (--kv-cache-dtype) --- */
    /* The dtype `auto` stores: the weights' (CPU: BK_F32). */
    enum bk_dtype (*kv_dtype_auto)(void *ctx);
    /* 0 when the cache can be stored as dt, else <0 with the reason in err. */
    int (*kv_dtype_check)(void *ctx, enum bk_dtype dt, char *err);
    /* --- optional (NULL: the caller uses the plain ops above) --- */
    /* An activation buffer that holds fp32 whatever the backend's activation dtype: the
     * residual stream and the logits. */
    bk_buf *(*act_new_f32)(void *ctx, size_t n_elems, char *err);
    /* x (n_rows, dim) += y; out = x / rms(x) * w: exactly add() then rmsnorm(), in one pass.
     * out must alias neither x nor y. */
    void (*add_rmsnorm)(void *ctx, bk_buf *out, bk_buf *x, const bk_buf *y, const bk_buf *w, int n_rows, int dim,
                        float eps);
    /* add_bias(q, bq), add_bias(k, bk), add_bias(v, bv) (bq, bk, bv all NULL: no biases), then
     * rope(q, k when the cache stores rotated keys else NULL, q_shift), then kv_store(layer, k, v):
     * the same values in one pass. q (and q_shift) end as rope leaves them; k and v are only
     * read, their biased/rotated values go to the cache alone. */
    void (*rope_kv_store)(void *ctx, int layer, bk_buf *q, const bk_buf *k, const bk_buf *v, bk_buf *q_shift,
                          const bk_buf *bq, const bk_buf *bk, const bk_buf *bv, int n_heads, int n_kv_heads,
                          int head_dim);
    /* dst (n_out, dim) = rmsnorm(src[out_rows[i]]) * w: gather_rows() then rmsnorm(), in one
     * pass (the final norm, reading the residual stream's wanted rows); dst must not alias src. */
    void (*gather_rmsnorm)(void *ctx, bk_buf *dst, const bk_buf *src, const bk_buf *w, int dim, float eps);
    /* Graphs (CUDA graphs of decode steps). graph_enabled: 1 when graph_run may capture. graph_run
     * enqueues what fn(arg) would: the first time for a key (or when the batch's shape, its
     * metadata buffer or any allocation changed since) it runs fn under capture, then replays the
     * captured work, so later calls with that key do not call fn at all. fn must enqueue only ops
     * (no act_read/act_write/batch_begin/allocation) whose sizes depend on the key and the
     * batch's shape alone (n_tokens, n_seqs, n_out, block_table_stride, rotary_dim, whether
     * q_scale/STRING are present), never on its values: the ops read the values from the
     * metadata batch_begin uploaded. Every row must be a single-token (decode) row. Returns 0,
     * or <0 with err (graph instantiation failed; nothing was enqueued). */
    int (*graph_enabled)(void *ctx);
    int (*graph_run)(void *ctx, int key, void (*fn)(void *arg), void *arg, char *err);
    /* --- timing hook (optional: all three NULL when the backend cannot time its ops) ---
     * Used by kernels/profile.h (bench --profile), never by the engine. Marks are timestamps in
     * the op order: prof_mark(slot) stands after every op enqueued before it and before every op
     * enqueued after it. prof_reserve makes slots 0 .. n_slots - 1 usable (it only grows, and
     * keeps the marks already taken); prof_elapsed_ms returns the milliseconds from mark a to mark b,
     * waiting for b to complete. CPU: clock_gettime (its ops are synchronous); CUDA: events
     * recorded on the op stream, so a mark costs no synchronization. */
    int (*prof_reserve)(void *ctx, int n_slots, char *err);
    void (*prof_mark)(void *ctx, int slot);
    double (*prof_elapsed_ms)(void *ctx, int a, int b);
};

struct backend {
    const struct backend_ops *ops;
    void *ctx;
};

struct backend_params {
    enum bk_device device; /* AUTO: CUDA when compiled in and a device exists, else CPU */
    int n_threads;         /* CPU worker threads; <= 0: number of cores */
    int cuda_device;       /* device ordinal */
    enum bk_dtype dtype;   /* CUDA weight/KV dtype: BK_BF16 or BK_F16 (F32 weights converted) */
    double gpu_memory_utilization; /* fraction of total device memory ropeserve may use */
    int cuda_graphs;       /* 1 (default): decode steps run as CUDA graphs (--no-cuda-graphs: 0;
                              the environment ROPESERVE_CUDA_GRAPHS=0 turns them off too) */
};

struct backend_params backend_default_params(void);

/* Create a backend. Returns 0, or <0 with a message (e.g. "--device cuda: not compiled in"). */
int backend_init(struct backend *b, const struct backend_params *p, char *err);
void backend_free(struct backend *b); /* zeroed struct is a no-op */

/* Comma-separated list of backends compiled in: "cpu" or "cpu,cuda". */
const char *backend_list(void);
/* What --device auto would pick on this machine now, and why, e.g. "cpu (built without CUDA)",
 * "cpu (no CUDA device found)", "cuda (2 devices)". Asks the CUDA runtime (may take a moment). */
void backend_auto_describe(char *buf, size_t cap);

/* The concrete backends (backend_init dispatches to these). */
int backend_cpu_init(struct backend *b, const struct backend_params *p, char *err);
#ifdef ROPESERVE_CUDA
int backend_cuda_init(struct backend *b, const struct backend_params *p, char *err);
int backend_cuda_device_count(void); /* 0 when no device or no driver */
#endif

#endif
