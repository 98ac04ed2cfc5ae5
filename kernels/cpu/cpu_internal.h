/* cpu_internal.h - what the files of the CPU backend share: the buffer and context structs, the
 * worker pool, the RoPE math helpers and the op entry points the vtable (cpu_backend.c) points
 * at. Never included from outside kernels/cpu/ (STYLE rule 2).
 *
 * Files:
 *   cpu_backend.c    context, memory, KV pool, batch metadata, matmul (OpenBLAS), the vtable
 *   cpu_pool.c       the persistent worker pool (generation counter + condition variables)
 *   cpu_ops.c        embed, rmsnorm, swiglu, add, add_bias, gather_rows, kv_store
 *   cpu_rope.c       rope and the helpers attention uses to rotate pre-RoPE keys
 *   cpu_attention.c  paged causal GQA attention, online softmax over key tiles */
#ifndef ROPESERVE_CPU_INTERNAL_H
#define ROPESERVE_CPU_INTERNAL_H

#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "../../common/common.h"
#include "../backend.h"

/* fmaf compiles to one instruction only where the target has FMA; elsewhere it is a libm call. */
#ifdef __FMA__
#define CPU_FMA(a, b, c) fmaf((a), (b), (c))
#else
#define CPU_FMA(a, b, c) ((a) * (b) + (c))
#endif

/* Backend memory on the CPU: fp32 values in 64-byte aligned host memory. */
struct bk_buf {
    float *data; /* (n) */
    size_t n;
};

/* ---------------------------------------------------------------------------------------------
 * Worker pool: n_threads - 1 persistent threads plus the calling thread. cpu_pool_run() runs
 * fn(arg, ith, nth) on every thread (ith 0 is the caller) and returns when all have finished. */

typedef void (*cpu_task_fn)(void *arg, int ith, int nth);

struct cpu_pool {
    int n_threads;            /* including the caller */
    pthread_t *threads;       /* (n_threads - 1) */
    struct cpu_worker *workers; /* (n_threads - 1) */
    pthread_mutex_t mu;
    pthread_cond_t start_cv;  /* workers wait here for a new generation */
    pthread_cond_t done_cv;   /* the caller waits here for n_pending == 0 */
    unsigned long generation; /* bumped by each cpu_pool_run */
    int n_pending;            /* workers still running the current task */
    int stop;
    cpu_task_fn fn;
    void *arg;
};

/* Returns NULL and fills err when a thread cannot be created. */
struct cpu_pool *cpu_pool_new(int n_threads, char *err);
void cpu_pool_free(struct cpu_pool *p); /* NULL is a no-op */
void cpu_pool_run(struct cpu_pool *p, cpu_task_fn fn, void *arg);

/* Items 0..n_items-1 handed out one at a time (an atomic counter) to whichever thread is free:
 * fn(arg, item, ith). Runs on the caller alone when n_items <= 1 or the pool has one thread.
 * The order items start in is 0, 1, 2, ...: put the most expensive first. */
typedef void (*cpu_item_fn)(void *arg, int item, int ith);
void cpu_parallel_for(struct cpu_pool *p, int n_items, cpu_item_fn fn, void *arg);

/* ---------------------------------------------------------------------------------------------
 * The context */

struct cpu_ctx {
    int n_threads;
    struct cpu_pool *pool;

    /* KV cache, valid after kv_init */
    int kv_ready;
    struct bk_kv_params kv;       /* kv.sliding_window points at window (or is NULL) */
    int32_t *window;              /* (n_layers) sliding window per layer, 0 = full; owned */
    /* elements of kv.dtype: fp32 as is, bf16/f16 as their 16-bit codes, fp8 as e4m3 codes of
     * x / scale (backend.h); kv_store encodes, attention decodes while it gathers a key tile */
    void **k_cache;           /* (n_layers) -> (n_blocks, block_size, n_kv_heads, head_dim) */
    void **v_cache;           /* (n_layers) -> (n_blocks, block_size, n_kv_heads, head_dim) */
    size_t kv_elem;           /* bytes per element: bk_dtype_bytes(kv.dtype) */
    float *k_scale, *v_scale; /* (n_layers, n_kv_heads) fp8 scales (1.0 unless given); owned */
    float fp8_lut[256];       /* bk_fp8_e4m3_to_f32 of every code */

    /* the current batch (arrays owned by the caller, valid until the next batch_begin) */
    int have_batch;
    struct bk_batch batch;
    int32_t *row_seq;         /* (n_tokens) sequence of each row */
    int32_t *seq_max_pos;     /* (n_seqs) largest position among the sequence's rows, -1 if none */
    int row_cap, seq_cap;

    /* attention scratch, one slab per thread, grown on demand */
    float **attn_scratch;     /* (n_threads) -> attn_scratch_n floats */
    size_t attn_scratch_n;

    /* BK_K_PRE_ROPE: cos/sin of every key position of every sequence of the batch, built by
     * the first attention call after batch_begin (the same for every layer) */
    int rope_table_valid;
    float *rope_table;        /* per sequence s at rope_table_off[s]: (seq_max_pos[s] + 1, rotary_dim) */
    size_t rope_table_cap;
    size_t *rope_table_off;   /* (n_seqs) */
    int rope_table_off_cap;

    /* timing hook (backend.h prof_*): the host clock at each mark, seconds */
    double *prof_t;
    int prof_n;
};

/* ---------------------------------------------------------------------------------------------
 * RoPE helpers (cpu_rope.c), shared by the rope op and by attention in BK_K_PRE_ROPE mode so
 * that both rotate with bit-identical values. */

/* cs[i] = cosf(ang_i) * af, cs[half + i] = sinf(ang_i) * af, ang_i = (float)pos * inv_freq[i]
 * in one fp32 multiply; i < half. cs (2 * half). */
void rope_angles_cpu(float *cs, int32_t pos, const float *inv_freq, float af, int half);
/* y (head_dim) = x rotated with cs (2 * half), HF rotate-half; dims >= 2 * half copied. y may
 * equal x. */
void rope_rotate_cpu(float *y, const float *x, const float *cs, int half, int head_dim);

/* ---------------------------------------------------------------------------------------------
 * Ops (the vtable's slots) */

void cpu_embed(void *ctx, bk_buf *x, const bk_buf *table, int dim);
void cpu_rmsnorm(void *ctx, bk_buf *out, const bk_buf *x, const bk_buf *w, int n_rows, int dim, float eps);
void cpu_rope(void *ctx, bk_buf *q, bk_buf *k, bk_buf *q_shift, int n_heads, int n_kv_heads, int head_dim);
void cpu_kv_store(void *ctx, int layer, const bk_buf *k, const bk_buf *v);
void cpu_attention(void *ctx, bk_buf *out, const bk_buf *q, const bk_buf *q_shift, int layer, int n_heads,
                   float scale);
void cpu_swiglu(void *ctx, bk_buf *out, const bk_buf *gate, const bk_buf *up, int n_rows, int n);
void cpu_add(void *ctx, bk_buf *x, const bk_buf *y, size_t n);
void cpu_gather_rows(void *ctx, bk_buf *dst, const bk_buf *src, int dim);
void cpu_add_bias(void *ctx, bk_buf *x, const bk_buf *b, int n_rows, int n);

/* KV storage (cpu_ops.c): dst (n) = the stored form of src (n) in c->kv.dtype, fp8 after dividing
 * by scale; and back, fp8 times scale. Slot-aligned: dst/src point at element 0 of a row. */
void cpu_kv_encode(const struct cpu_ctx *c, void *dst, const float *src, int n, float scale);
void cpu_kv_decode(const struct cpu_ctx *c, float *dst, const void *src, int n, float scale);

#endif
