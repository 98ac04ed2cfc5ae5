/* cpu_backend.c - the CPU backend: fp32 everywhere, OpenBLAS for the matrix products, a small
 * persistent worker pool (cpu_pool.c) for the ops that are not BLAS. It computes the same
 * function as the CUDA backend and is the reference the CUDA checkers compare against.
 *
 * This file holds the context, memory (weights converted to fp32 at upload), the paged KV pool,
 * the batch metadata, matmul and the vtable; the other ops live in cpu_ops.c, cpu_rope.c and
 * cpu_attention.c.
 *
 * Invariants:
 * - every bk_buf holds fp32 in 64-byte aligned memory;
 * - the KV pool is zero-filled at kv_init (calloc: untouched pages cost no memory) and uses the
 *   layout of backend.h, k[n_blocks][block_size][n_kv_heads][head_dim] per layer, same for v,
 *   in the --kv-cache-dtype the engine chose (fp32 by default; bf16/f16/fp8 codes, converted by
 *   kv_store and by attention's tile gather, so the CPU computes what a GPU storing that dtype
 *   computes: the CI test of the fp8 KV cache);
 * - batch_begin keeps the caller's pointers (they stay valid until the next batch_begin) and
 *   derives row -> sequence once per batch.
 *
 * Threads: OpenBLAS runs its own pool (openblas_set_num_threads(n_threads), process-wide) and
 * ours (cpu_pool.c) sleeps while it runs; every op returns only when its work is done, so the
 * two never compute at the same time. (OpenBLAS's idle workers poll with sched_yield for a
 * short while after a call, which hands the cores to ours.) */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu_internal.h"

/* ---------------------------------------------------------------------------------------------
 * Memory */

static bk_buf *buf_alloc(size_t n_elems, char *err)
{
    size_t bytes = (n_elems * sizeof(float) + 63) / 64 * 64;
    if (bytes == 0) bytes = 64;
    bk_buf *b = malloc(sizeof *b);
    float *data = aligned_alloc(64, bytes);
    if (!b || !data) {
        free(b);
        free(data);
        set_err(err, -1, "cpu backend: out of memory allocating %zu bytes", bytes);
        return NULL;
    }
    b->data = data;
    b->n = n_elems;
    return b;
}

static bk_buf *cpu_weight_new(void *ctx, const void *src, enum bk_dtype src_dtype, size_t n_elems, char *err)
{
    bk_buf *b = buf_alloc(n_elems, err);
    if (!b) return NULL;
    const uint16_t *h = src;
    switch (src_dtype) {
    case BK_F32:
        memcpy(b->data, src, n_elems * sizeof(float));
        break;
    case BK_F16:
        for (size_t i = 0; i < n_elems; i++) b->data[i] = f16_to_f32(h[i]);
        break;
    case BK_BF16:
        for (size_t i = 0; i < n_elems; i++) b->data[i] = bf16_to_f32(h[i]);
        break;
    default:
        CHECK(0, "unknown dtype %d", (int)src_dtype);
    }
    return b;
}

static bk_buf *cpu_act_new(void *ctx, size_t n_elems, char *err)
{
    return buf_alloc(n_elems, err);
}

static void cpu_buf_free(void *ctx, bk_buf *b)
{
    if (!b) return;
    free(b->data);
    free(b);
}

static void cpu_act_write(void *ctx, bk_buf *dst, size_t offset, const float *src, size_t n_elems)
{
    CHECK(offset <= dst->n && n_elems <= dst->n - offset, "act_write [%zu, +%zu) of %zu", offset, n_elems, dst->n);
    memcpy(dst->data + offset, src, n_elems * sizeof(float));
}

static void cpu_act_read(void *ctx, float *dst, const bk_buf *src, size_t offset, size_t n_elems)
{
    CHECK(offset <= src->n && n_elems <= src->n - offset, "act_read [%zu, +%zu) of %zu", offset, n_elems, src->n);
    memcpy(dst, src->data + offset, n_elems * sizeof(float));
}

static size_t cpu_mem_free(void *ctx)
{
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * KV cache */

static void kv_free(struct cpu_ctx *c)
{
    for (int l = 0; c->k_cache && l < c->kv.n_layers; l++) free(c->k_cache[l]);
    for (int l = 0; c->v_cache && l < c->kv.n_layers; l++) free(c->v_cache[l]);
    free(c->k_cache);
    free(c->v_cache);
    free(c->k_scale);
    free(c->v_scale);
    c->k_scale = c->v_scale = NULL;
    free(c->window);
    c->k_cache = c->v_cache = NULL;
    c->window = NULL;
    c->kv.sliding_window = NULL;
    c->kv_ready = 0;
}

/* every storage dtype: fp32, bf16 and f16 codes, fp8 e4m3 codes */
static int cpu_kv_dtype_check(void *ctx, enum bk_dtype dt, char *err)
{
    if (dt == BK_F32 || dt == BK_BF16 || dt == BK_F16 || dt == BK_FP8_E4M3) return 0;
    return set_err(err, -1, "cpu backend: no KV cache dtype %d", (int)dt);
}

static int cpu_kv_init(void *ctx, const struct bk_kv_params *p, char *err)
{
    struct cpu_ctx *c = ctx;
    CHECK(!c->kv_ready, "kv_init called twice");
    CHECK(p->n_layers > 0 && p->n_blocks > 0 && p->n_kv_heads > 0 && p->head_dim > 0,
          "kv params: n_layers %d n_blocks %d n_kv_heads %d head_dim %d", p->n_layers, p->n_blocks,
          p->n_kv_heads, p->head_dim);
    CHECK(p->block_size > 0 && (p->block_size & (p->block_size - 1)) == 0, "block_size %d", p->block_size);
    CHECK(p->k_storage == BK_K_POST_ROPE || p->k_storage == BK_K_PRE_ROPE, "k_storage %d", (int)p->k_storage);
    if (cpu_kv_dtype_check(c, p->dtype, err) < 0) return -1;
    c->kv = *p;
    if (p->sliding_window) { /* the caller's array may go: keep a copy */
        c->window = xmalloc(sizeof *c->window * (size_t)p->n_layers);
        for (int l = 0; l < p->n_layers; l++) {
            CHECK(p->sliding_window[l] >= 0, "layer %d: sliding window %d", l, p->sliding_window[l]);
            c->window[l] = p->sliding_window[l];
        }
        c->kv.sliding_window = c->window;
    }
    c->kv_elem = bk_dtype_bytes(p->dtype);
    const size_t n_scales = (size_t)p->n_layers * p->n_kv_heads;
    c->k_scale = xmalloc(n_scales * sizeof(float));
    c->v_scale = xmalloc(n_scales * sizeof(float));
    for (size_t i = 0; i < n_scales; i++) {
        c->k_scale[i] = p->dtype == BK_FP8_E4M3 && p->k_scale ? p->k_scale[i] : 1.0f;
        c->v_scale[i] = p->dtype == BK_FP8_E4M3 && p->v_scale ? p->v_scale[i] : 1.0f;
        CHECK(isfinite(c->k_scale[i]) && c->k_scale[i] > 0 && isfinite(c->v_scale[i]) && c->v_scale[i] > 0,
              "kv scale %zu: %g %g", i, c->k_scale[i], c->v_scale[i]);
    }
    c->kv.k_scale = c->k_scale;
    c->kv.v_scale = c->v_scale;
    for (int i = 0; i < 256; i++) c->fp8_lut[i] = bk_fp8_e4m3_to_f32((uint8_t)i);
    size_t per_layer = (size_t)p->n_blocks * p->block_size * p->n_kv_heads * p->head_dim;
    c->k_cache = calloc((size_t)p->n_layers, sizeof *c->k_cache);
    c->v_cache = calloc((size_t)p->n_layers, sizeof *c->v_cache);
    if (!c->k_cache || !c->v_cache) goto fail;
    for (int l = 0; l < p->n_layers; l++) {
        c->k_cache[l] = calloc(per_layer, c->kv_elem);
        c->v_cache[l] = calloc(per_layer, c->kv_elem);
        if (!c->k_cache[l] || !c->v_cache[l]) goto fail;
    }
    c->kv_ready = 1;
    return 0;
fail:
    kv_free(c);
    return set_err(err, -1, "cpu backend: out of memory allocating the KV cache (%d layers x 2 x %.2f GiB)",
                   p->n_layers, (double)per_layer * bk_dtype_bytes(p->dtype) / (1u << 30));
}

static void cpu_kv_copy_blocks(void *ctx, const int32_t *src, const int32_t *dst, int n)
{
    struct cpu_ctx *c = ctx;
    CHECK(c->kv_ready, "kv_copy_blocks before kv_init");
    size_t block = (size_t)c->kv.block_size * c->kv.n_kv_heads * c->kv.head_dim;
    for (int i = 0; i < n; i++) {
        CHECK(src[i] >= 0 && src[i] < c->kv.n_blocks && dst[i] >= 0 && dst[i] < c->kv.n_blocks,
              "copy block %d -> %d of %d", src[i], dst[i], c->kv.n_blocks);
        if (src[i] == dst[i]) continue;
        for (int l = 0; l < c->kv.n_layers; l++) {
            const size_t bb = block * c->kv_elem;
            memcpy((char *)c->k_cache[l] + dst[i] * bb, (char *)c->k_cache[l] + src[i] * bb, bb);
            memcpy((char *)c->v_cache[l] + dst[i] * bb, (char *)c->v_cache[l] + src[i] * bb, bb);
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Batch */

static int cpu_batch_begin(void *ctx, const struct bk_batch *b, char *err)
{
    struct cpu_ctx *c = ctx;
    CHECK(b->n_tokens >= 0 && b->n_seqs >= 0, "n_tokens %d n_seqs %d", b->n_tokens, b->n_seqs);
    CHECK(b->n_out >= 0 && b->n_out <= b->n_tokens, "n_out %d of %d rows", b->n_out, b->n_tokens);
    CHECK(b->rotary_dim >= 0 && b->rotary_dim % 2 == 0, "rotary_dim %d", b->rotary_dim);
    CHECK(!c->kv_ready || b->rotary_dim <= c->kv.head_dim, "rotary_dim %d > head_dim %d", b->rotary_dim,
          c->kv.head_dim);
    if (b->n_seqs > 0) CHECK(b->query_start[0] == 0 && b->query_start[b->n_seqs] == b->n_tokens,
                             "query_start [0]=%d [n_seqs]=%d, n_tokens %d", b->query_start[0],
                             b->query_start[b->n_seqs], b->n_tokens);
    else CHECK(b->n_tokens == 0, "%d rows and no sequence", b->n_tokens);

    if (b->n_tokens > c->row_cap) {
        c->row_cap = b->n_tokens;
        c->row_seq = xrealloc(c->row_seq, (size_t)c->row_cap * sizeof *c->row_seq);
    }
    if (b->n_seqs > c->seq_cap) {
        c->seq_cap = b->n_seqs;
        c->seq_max_pos = xrealloc(c->seq_max_pos, (size_t)c->seq_cap * sizeof *c->seq_max_pos);
    }
    for (int s = 0; s < b->n_seqs; s++) {
        int r0 = b->query_start[s], r1 = b->query_start[s + 1];
        CHECK(r0 <= r1, "query_start not ascending at sequence %d", s);
        int max_pos = -1;
        for (int r = r0; r < r1; r++) {
            CHECK(b->positions[r] >= 0 && b->positions[r] < b->seq_lens[s], "row %d: position %d, seq_len %d",
                  r, b->positions[r], b->seq_lens[s]);
            c->row_seq[r] = s;
            if (b->positions[r] > max_pos) max_pos = b->positions[r];
        }
        c->seq_max_pos[s] = max_pos;
        if (b->string_shift && b->string_shift[s] > 0)
            CHECK(b->string_local && b->string_local[s] >= 0 && b->string_local[s] < b->string_shift[s],
                  "sequence %d: STRING shift %d, local %d (need 0 <= local < shift)", s, b->string_shift[s],
                  b->string_local ? b->string_local[s] : -1);
        if (c->kv_ready && r1 > r0) {
            /* the blocks attention will read must exist */
            int n_blocks = (b->seq_lens[s] + c->kv.block_size - 1) / c->kv.block_size;
            CHECK(n_blocks <= b->block_table_stride, "sequence %d: seq_len %d needs %d blocks, stride %d", s,
                  b->seq_lens[s], n_blocks, b->block_table_stride);
            const int32_t *bt = b->block_tables + (size_t)s * b->block_table_stride;
            for (int i = 0; i < n_blocks; i++)
                CHECK(bt[i] >= 0 && bt[i] < c->kv.n_blocks, "sequence %d: block_tables[%d] = %d of %d", s, i,
                      bt[i], c->kv.n_blocks);
        }
    }
    for (int i = 0; i < b->n_out; i++)
        CHECK(b->out_rows[i] >= 0 && b->out_rows[i] < b->n_tokens && (i == 0 || b->out_rows[i] > b->out_rows[i - 1]),
              "out_rows[%d] = %d", i, b->out_rows[i]);
    c->batch = *b;
    c->have_batch = 1;
    c->rope_table_valid = 0;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * matmul: out (n_rows, n_out) = x (n_rows, n_in) . w^T, w (n_out, n_in) */

static void cpu_matmul(void *ctx, bk_buf *out, const bk_buf *x, const bk_buf *w, int n_rows, int n_in, int n_out)
{
    struct cpu_ctx *c = ctx;
    CHECK(x->n >= (size_t)n_rows * n_in && w->n >= (size_t)n_out * n_in && out->n >= (size_t)n_rows * n_out,
          "matmul (%d x %d) . (%d x %d)^T: buffers %zu %zu %zu", n_rows, n_in, n_out, n_in, x->n, w->n, out->n);
    CHECK(out != x, "matmul in place");
    if (n_rows == 0 || n_out == 0) return;
    /* openblas_set_num_threads is process-wide; another backend may have changed it */
    if (openblas_get_num_threads() != c->n_threads) openblas_set_num_threads(c->n_threads);
    /* A few rows (batched decode) go through one gemv each: OpenBLAS's sgemm costs more than
     * M gemvs up to M = 4 and less from M = 6 (build/tools/blas_small_m, 2 threads on the
     * 2-core VM: M = 4, 512 x 1376: sgemm 201 us, 4 gemvs 67 us; 4096 x 4096: 5.9 ms vs
     * 4.6 ms), and each row then computes exactly what it computes alone. */
    if (n_rows <= 4)
        for (int r = 0; r < n_rows; r++)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, n_out, n_in, 1.0f, w->data, n_in, x->data + (size_t)r * n_in, 1,
                        0.0f, out->data + (size_t)r * n_out, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n_rows, n_out, n_in, 1.0f, x->data, n_in, w->data,
                    n_in, 0.0f, out->data, n_out);
}

/* ---------------------------------------------------------------------------------------------
 * Lifecycle and the vtable */

static void cpu_free(void *ctx)
{
    struct cpu_ctx *c = ctx;
    if (!c) return;
    cpu_pool_free(c->pool);
    kv_free(c);
    for (int i = 0; c->attn_scratch && i < c->n_threads; i++) free(c->attn_scratch[i]);
    free(c->attn_scratch);
    free(c->row_seq);
    free(c->seq_max_pos);
    free(c->rope_table);
    free(c->rope_table_off);
    free(c->prof_t);
    free(c);
}

/* the timing hook: every op returns when its work is done, so the host clock at a mark is the
 * mark's time */
static int cpu_prof_reserve(void *ctx, int n, char *err)
{
    struct cpu_ctx *c = ctx;
    (void)err;
    if (n > c->prof_n) {
        c->prof_t = xrealloc(c->prof_t, sizeof(double) * n);
        for (int i = c->prof_n; i < n; i++) c->prof_t[i] = 0;
        c->prof_n = n;
    }
    return 0;
}

static void cpu_prof_mark(void *ctx, int slot)
{
    struct cpu_ctx *c = ctx;
    CHECK(slot >= 0 && slot < c->prof_n, "prof_mark: slot %d of %d", slot, c->prof_n);
    c->prof_t[slot] = now_s();
}

static double cpu_prof_elapsed_ms(void *ctx, int a, int b)
{
    struct cpu_ctx *c = ctx;
    CHECK(a >= 0 && b >= 0 && a < c->prof_n && b < c->prof_n, "prof_elapsed_ms: slots %d, %d", a, b);
    return (c->prof_t[b] - c->prof_t[a]) * 1e3;
}

static void cpu_describe(void *ctx, char *buf, size_t len)
{
    struct cpu_ctx *c = ctx;
    snprintf(buf, len, "cpu: %d thread%s, OpenBLAS", c->n_threads, c->n_threads == 1 ? "" : "s");
}

/* --kv-cache-dtype auto on the CPU: fp32, the reference */
static enum bk_dtype cpu_kv_dtype_auto(void *ctx) { return BK_F32; }

static const struct backend_ops cpu_ops = {
    .name = "cpu",
    .elem_size = 4,
    .free = cpu_free,
    .describe = cpu_describe,
    .mem_free = cpu_mem_free,
    .weight_new = cpu_weight_new,
    .act_new = cpu_act_new,
    .buf_free = cpu_buf_free,
    .act_write = cpu_act_write,
    .act_read = cpu_act_read,
    .kv_init = cpu_kv_init,
    .kv_copy_blocks = cpu_kv_copy_blocks,
    .batch_begin = cpu_batch_begin,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .matmul = cpu_matmul,
    .rope = cpu_rope,
    .kv_store = cpu_kv_store,
    .attention = cpu_attention,
    .swiglu = cpu_swiglu,
    .add = cpu_add,
    .gather_rows = cpu_gather_rows,
    .add_bias = cpu_add_bias,
    .kv_dtype_auto = cpu_kv_dtype_auto,
    .kv_dtype_check = cpu_kv_dtype_check,
    .prof_reserve = cpu_prof_reserve,
    .prof_mark = cpu_prof_mark,
    .prof_elapsed_ms = cpu_prof_elapsed_ms,
};

int backend_cpu_init(struct backend *b, const struct backend_params *p, char *err)
{
    memset(b, 0, sizeof *b);
    int n = p->n_threads;
    if (n <= 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        n = cores > 0 ? (int)cores : 1;
    }
    struct cpu_ctx *c = xcalloc(1, sizeof *c);
    c->n_threads = n;
    c->attn_scratch = xcalloc((size_t)n, sizeof *c->attn_scratch);
    c->pool = cpu_pool_new(n, err);
    if (!c->pool) {
        cpu_free(c);
        return -1;
    }
    openblas_set_num_threads(n);
    b->ops = &cpu_ops;
    b->ctx = c;
    return 0;
}
