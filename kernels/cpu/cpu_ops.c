/* cpu_ops.c - the small ops of the CPU backend: embed, rmsnorm, swiglu, add, add_bias, gather_rows and
 * kv_store. Plain fp32 loops, written the way Hugging Face computes them (the order of the
 * multiplies matters for agreement at the last bit, e.g. rmsnorm is w * (x * r), not
 * (w * x) * r). rmsnorm and swiglu split rows over the worker pool when a batch is large
 * (prefill); the rest is memory-bound and runs on the calling thread. */
#include <math.h>
#include <string.h>

#include "cpu_internal.h"

/* Work below this many elements is not worth waking the pool for. */
#define PARALLEL_MIN_ELEMS (1 << 16)

/* Rows per pool item: aim for about 4 items per thread so uneven cores still balance. */
static int rows_per_item(const struct cpu_ctx *c, int n_rows, size_t row_elems)
{
    if ((size_t)n_rows * row_elems < PARALLEL_MIN_ELEMS || c->n_threads == 1) return n_rows > 0 ? n_rows : 1;
    int per = (n_rows + 4 * c->n_threads - 1) / (4 * c->n_threads);
    return per > 0 ? per : 1;
}

/* x (n_tokens, dim) = table[tokens[r]] ; table (vocab, dim) */
void cpu_embed(void *ctx, bk_buf *x, const bk_buf *table, int dim)
{
    struct cpu_ctx *c = ctx;
    CHECK(c->have_batch, "embed before batch_begin");
    const struct bk_batch *b = &c->batch;
    CHECK(dim > 0 && x->n >= (size_t)b->n_tokens * dim, "embed: %d rows of %d into %zu", b->n_tokens, dim, x->n);
    size_t vocab = table->n / (size_t)dim;
    for (int r = 0; r < b->n_tokens; r++) {
        int32_t t = b->tokens[r];
        CHECK(t >= 0 && (size_t)t < vocab, "embed: token %d at row %d, vocab %zu", t, r, vocab);
        memcpy(x->data + (size_t)r * dim, table->data + (size_t)t * dim, (size_t)dim * sizeof(float));
    }
}

/* --------------------------------------------------------------------------------------------- */

struct rmsnorm_args {
    float *out;      /* (n_rows, dim) */
    const float *x;  /* (n_rows, dim) */
    const float *w;  /* (dim) */
    int n_rows, dim, rows_per_item;
    float eps;
};

static void rmsnorm_item(void *arg, int item, int ith)
{
    const struct rmsnorm_args *a = arg;
    int r0 = item * a->rows_per_item;
    int r1 = r0 + a->rows_per_item < a->n_rows ? r0 + a->rows_per_item : a->n_rows;
    for (int r = r0; r < r1; r++) {
        const float *x = a->x + (size_t)r * a->dim;
        float *y = a->out + (size_t)r * a->dim;
        double ss = 0.0;
        for (int i = 0; i < a->dim; i++) ss += (double)x[i] * x[i];
        float var = (float)(ss / a->dim);
        float inv = 1.0f / sqrtf(var + a->eps);
        for (int i = 0; i < a->dim; i++) y[i] = a->w[i] * (x[i] * inv);
    }
}

/* out (n_rows, dim) = x / rms(x) * w ; w (dim); out may equal x */
void cpu_rmsnorm(void *ctx, bk_buf *out, const bk_buf *x, const bk_buf *w, int n_rows, int dim, float eps)
{
    struct cpu_ctx *c = ctx;
    CHECK(n_rows >= 0 && dim > 0 && x->n >= (size_t)n_rows * dim && out->n >= (size_t)n_rows * dim &&
              w->n >= (size_t)dim,
          "rmsnorm %d x %d: buffers %zu %zu %zu", n_rows, dim, out->n, x->n, w->n);
    struct rmsnorm_args a = {out->data, x->data, w->data, n_rows, dim, rows_per_item(c, n_rows, (size_t)dim), eps};
    cpu_parallel_for(c->pool, (n_rows + a.rows_per_item - 1) / a.rows_per_item, rmsnorm_item, &a);
}

/* --------------------------------------------------------------------------------------------- */

struct swiglu_args {
    float *out;        /* (n_rows, n) */
    const float *gate; /* (n_rows, n) */
    const float *up;   /* (n_rows, n) */
    int n_rows, n, rows_per_item;
};

static void swiglu_item(void *arg, int item, int ith)
{
    const struct swiglu_args *a = arg;
    int r0 = item * a->rows_per_item;
    int r1 = r0 + a->rows_per_item < a->n_rows ? r0 + a->rows_per_item : a->n_rows;
    size_t i0 = (size_t)r0 * a->n, i1 = (size_t)r1 * a->n;
    for (size_t i = i0; i < i1; i++) {
        float g = a->gate[i];
        a->out[i] = g / (1.0f + expf(-g)) * a->up[i];
    }
}

/* out (n_rows, n) = silu(gate) * up ; out may equal gate or up */
void cpu_swiglu(void *ctx, bk_buf *out, const bk_buf *gate, const bk_buf *up, int n_rows, int n)
{
    struct cpu_ctx *c = ctx;
    size_t total = (size_t)n_rows * n;
    CHECK(n_rows >= 0 && n > 0 && out->n >= total && gate->n >= total && up->n >= total,
          "swiglu %d x %d: buffers %zu %zu %zu", n_rows, n, out->n, gate->n, up->n);
    struct swiglu_args a = {out->data, gate->data, up->data, n_rows, n, rows_per_item(c, n_rows, (size_t)n)};
    cpu_parallel_for(c->pool, (n_rows + a.rows_per_item - 1) / a.rows_per_item, swiglu_item, &a);
}

/* --------------------------------------------------------------------------------------------- */

/* x (n) += y (n) */
void cpu_add(void *ctx, bk_buf *x, const bk_buf *y, size_t n)
{
    CHECK(x->n >= n && y->n >= n, "add %zu: buffers %zu %zu", n, x->n, y->n);
    float *xd = x->data;
    const float *yd = y->data;
    for (size_t i = 0; i < n; i++) xd[i] += yd[i];
}

/* x (n_rows, n) += b (n) on every row */
void cpu_add_bias(void *ctx, bk_buf *x, const bk_buf *b, int n_rows, int n)
{
    CHECK(n_rows >= 0 && n > 0 && x->n >= (size_t)n_rows * n && b->n >= (size_t)n,
          "add_bias %d x %d: buffers %zu %zu", n_rows, n, x->n, b->n);
    const float *bd = b->data;
    for (int r = 0; r < n_rows; r++) {
        float *xr = x->data + (size_t)r * n;
        for (int i = 0; i < n; i++) xr[i] += bd[i];
    }
}

/* dst (n_out, dim) = src[out_rows[i]] */
void cpu_gather_rows(void *ctx, bk_buf *dst, const bk_buf *src, int dim)
{
    struct cpu_ctx *c = ctx;
    CHECK(c->have_batch, "gather_rows before batch_begin");
    const struct bk_batch *b = &c->batch;
    CHECK(dst != src, "gather_rows in place");
    CHECK(dim > 0 && dst->n >= (size_t)b->n_out * dim && src->n >= (size_t)b->n_tokens * dim,
          "gather_rows %d of %d rows x %d: buffers %zu %zu", b->n_out, b->n_tokens, dim, dst->n, src->n);
    for (int i = 0; i < b->n_out; i++)
        memcpy(dst->data + (size_t)i * dim, src->data + (size_t)b->out_rows[i] * dim, (size_t)dim * sizeof(float));
}

void cpu_kv_encode(const struct cpu_ctx *c, void *dst, const float *src, int n, float scale)
{
    switch (c->kv.dtype) {
    case BK_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case BK_BF16:
        for (int i = 0; i < n; i++) ((uint16_t *)dst)[i] = f32_to_bf16(src[i]);
        break;
    case BK_F16:
        for (int i = 0; i < n; i++) ((uint16_t *)dst)[i] = f32_to_f16(src[i]);
        break;
    case BK_FP8_E4M3: {
        /* x / scale in fp32, one IEEE division as the CUDA kernel does (__fdiv_rn) */
        for (int i = 0; i < n; i++) ((uint8_t *)dst)[i] = bk_fp8_e4m3_from_f32(src[i] / scale);
        break;
    }
    }
}

void cpu_kv_decode(const struct cpu_ctx *c, float *dst, const void *src, int n, float scale)
{
    switch (c->kv.dtype) {
    case BK_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case BK_BF16:
        for (int i = 0; i < n; i++) dst[i] = bf16_to_f32(((const uint16_t *)src)[i]);
        break;
    case BK_F16:
        for (int i = 0; i < n; i++) dst[i] = f16_to_f32(((const uint16_t *)src)[i]);
        break;
    case BK_FP8_E4M3:
        for (int i = 0; i < n; i++) dst[i] = c->fp8_lut[((const uint8_t *)src)[i]] * scale;
        break;
    }
}

/* Write k, v (n_tokens, n_kv_heads, head_dim) into layer's cache at slot_mapping; a negative
 * slot is a padding row and is skipped. The cache stores kv.dtype (cpu_kv_encode). */
void cpu_kv_store(void *ctx, int layer, const bk_buf *k, const bk_buf *v)
{
    struct cpu_ctx *c = ctx;
    CHECK(c->kv_ready && c->have_batch, "kv_store before kv_init / batch_begin");
    CHECK(layer >= 0 && layer < c->kv.n_layers, "layer %d of %d", layer, c->kv.n_layers);
    const struct bk_batch *b = &c->batch;
    const int n_kv = c->kv.n_kv_heads, hd = c->kv.head_dim;
    size_t row = (size_t)n_kv * hd;
    CHECK(k->n >= (size_t)b->n_tokens * row && v->n >= (size_t)b->n_tokens * row, "kv_store %d rows of %zu: %zu %zu",
          b->n_tokens, row, k->n, v->n);
    int64_t n_slots = (int64_t)c->kv.n_blocks * c->kv.block_size;
    char *kc = c->k_cache[layer], *vc = c->v_cache[layer];
    const float *ks = c->k_scale + (size_t)layer * n_kv, *vs = c->v_scale + (size_t)layer * n_kv;
    const size_t es = c->kv_elem;
    for (int r = 0; r < b->n_tokens; r++) {
        int64_t slot = b->slot_mapping[r];
        if (slot < 0) continue;
        CHECK(slot < n_slots, "row %d: slot %lld of %lld", r, (long long)slot, (long long)n_slots);
        for (int h = 0; h < n_kv; h++) {
            const size_t e = (size_t)slot * row + (size_t)h * hd;
            cpu_kv_encode(c, kc + e * es, k->data + (size_t)r * row + (size_t)h * hd, hd, ks[h]);
            cpu_kv_encode(c, vc + e * es, v->data + (size_t)r * row + (size_t)h * hd, hd, vs[h]);
        }
    }
}
