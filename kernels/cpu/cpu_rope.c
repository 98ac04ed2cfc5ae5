/* cpu_rope.c - rotary position embedding, Hugging Face rotate-half layout.
 *
 * For a row at position p of sequence s, with half = rotary_dim / 2 and i < half:
 *     ang = (float)p * inv_freq[s][i]                  one fp32 multiply, as HF's fp32 matmul
 *     c = cosf(ang) * af, sn = sinf(ang) * af          af = attn_factor[s]
 *     y[i]        = x[i] * c - x[i + half] * sn
 *     y[i + half] = x[i + half] * c + x[i] * sn
 * and dims >= rotary_dim pass through. At position 131071 an angle computed in double would
 * differ from HF's fp32 angle by up to 4e-3 rad, so the multiply stays in fp32, and cosf/sinf
 * are glibc's full-range ones (never a fast approximation).
 *
 * Contraction: the repository compiles with -std=c11, under which GCC does not fuse a*b - c*d
 * into an FMA (-ffp-contract=off is the ISO C default), so the rotation rounds exactly like
 * PyTorch's separate multiply and add.
 *
 * Then q row r is multiplied by q_scale[r] (log_scale, STRING's factor). For a STRING sequence
 * (REFERENCES-rope.md §8) the unrotated q is first rotated at p - S + W into q_shift, the query
 * attention uses for keys at distance >= S.
 *
 * rope_angles_cpu/rope_rotate_cpu are also used by attention to rotate keys stored pre-RoPE
 * (BK_K_PRE_ROPE), so a key rotated there is bit-identical to one rotated by this op. */
#include <math.h>

#include "cpu_internal.h"

#define ROPE_HALF_MAX 512

void rope_angles_cpu(float *cs, int32_t pos, const float *inv_freq, float af, int half)
{
    for (int i = 0; i < half; i++) {
        float ang = (float)pos * inv_freq[i];
        cs[i] = cosf(ang) * af;
        cs[half + i] = sinf(ang) * af;
    }
}

void rope_rotate_cpu(float *y, const float *x, const float *cs, int half, int head_dim)
{
    for (int i = 0; i < half; i++) {
        float c = cs[i], sn = cs[half + i];
        float x0 = x[i], x1 = x[i + half];
        y[i] = x0 * c - x1 * sn;
        y[i + half] = x1 * c + x0 * sn;
    }
    if (y != x)
        for (int d = 2 * half; d < head_dim; d++) y[d] = x[d];
}

/* --------------------------------------------------------------------------------------------- */

struct rope_args {
    const struct cpu_ctx *c;
    float *q;       /* (n_tokens, n_heads, head_dim) */
    float *k;       /* (n_tokens, n_kv_heads, head_dim) or NULL */
    float *q_shift; /* (n_tokens, n_heads, head_dim) or NULL */
    int n_heads, n_kv_heads, head_dim, rows_per_item;
};

static void scale_rows(float *x, int n, float s)
{
    if (s != 1.0f)
        for (int i = 0; i < n; i++) x[i] *= s;
}

static void rope_item(void *arg, int item, int ith)
{
    const struct rope_args *a = arg;
    const struct bk_batch *b = &a->c->batch;
    const int half = b->rotary_dim / 2, hd = a->head_dim;
    float cs[2 * ROPE_HALF_MAX];
    int r0 = item * a->rows_per_item;
    int r1 = r0 + a->rows_per_item < b->n_tokens ? r0 + a->rows_per_item : b->n_tokens;
    for (int r = r0; r < r1; r++) {
        const int s = a->c->row_seq[r];
        const float qs = b->q_scale ? b->q_scale[r] : 1.0f;
        const float *inv = half ? b->inv_freq + (size_t)s * half : NULL;
        float *q = a->q + (size_t)r * a->n_heads * hd;
        if (a->q_shift && b->string_shift && b->string_shift[s] > 0) {
            /* STRING's shifted query, from the unrotated q: position p - S + W (>= 0 for every
             * row that uses it, p >= S; clamped for the rows that never do) */
            int p2 = b->positions[r] - b->string_shift[s] + b->string_local[s];
            if (p2 < 0) p2 = 0;
            float *q2 = a->q_shift + (size_t)r * a->n_heads * hd;
            if (half) rope_angles_cpu(cs, p2, inv, b->attn_factor[s], half);
            for (int h = 0; h < a->n_heads; h++) {
                if (half) rope_rotate_cpu(q2 + h * hd, q + h * hd, cs, half, hd);
                else for (int d = 0; d < hd; d++) q2[h * hd + d] = q[h * hd + d];
            }
            scale_rows(q2, a->n_heads * hd, qs);
        }
        if (half) {
            rope_angles_cpu(cs, b->positions[r], inv, b->attn_factor[s], half);
            for (int h = 0; h < a->n_heads; h++) rope_rotate_cpu(q + h * hd, q + h * hd, cs, half, hd);
        }
        scale_rows(q, a->n_heads * hd, qs);
        if (!a->k || !half) continue;
        float *k = a->k + (size_t)r * a->n_kv_heads * hd;
        for (int h = 0; h < a->n_kv_heads; h++) rope_rotate_cpu(k + h * hd, k + h * hd, cs, half, hd);
    }
}

/* Rotate q (n_tokens, n_heads, head_dim) and k (n_tokens, n_kv_heads, head_dim) in place; STRING's
 * shifted queries into q_shift; q_scale on both query sets. */
void cpu_rope(void *ctx, bk_buf *q, bk_buf *k, bk_buf *q_shift, int n_heads, int n_kv_heads, int head_dim)
{
    struct cpu_ctx *c = ctx;
    CHECK(c->have_batch, "rope before batch_begin");
    const struct bk_batch *b = &c->batch;
    CHECK(b->rotary_dim <= head_dim && b->rotary_dim / 2 <= ROPE_HALF_MAX, "rotary_dim %d, head_dim %d", b->rotary_dim,
          head_dim);
    CHECK(q->n >= (size_t)b->n_tokens * n_heads * head_dim, "rope q: %d x %d x %d in %zu", b->n_tokens, n_heads,
          head_dim, q->n);
    CHECK(!k || k->n >= (size_t)b->n_tokens * n_kv_heads * head_dim, "rope k: %d x %d x %d in %zu", b->n_tokens,
          n_kv_heads, head_dim, k->n);
    CHECK(!q_shift || (q_shift->n >= (size_t)b->n_tokens * n_heads * head_dim && q_shift != q),
          "rope q_shift: %d x %d x %d", b->n_tokens, n_heads, head_dim);
    if (b->n_tokens == 0) return;
    if (b->rotary_dim == 0 && !b->q_scale && !(q_shift && b->string_shift)) return;
    /* about 64 rows per item: each row costs rotary_dim sin/cos plus the rotations */
    int per = b->n_tokens >= 128 && c->n_threads > 1 ? 64 : b->n_tokens;
    struct rope_args a = {c, q->data, k ? k->data : NULL, q_shift ? q_shift->data : NULL, n_heads, n_kv_heads,
                          head_dim, per};
    cpu_parallel_for(c->pool, (b->n_tokens + per - 1) / per, rope_item, &a);
}
