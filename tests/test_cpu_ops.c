/* test_cpu_ops.c - checks every op of the CPU backend against a plain reference written here
 * (dense, naive loops in double), llm.c checker style: fixed seed -> random inputs -> reference
 * -> the shipped op through the backend vtable -> one comparator (test_compare: |got - ref| <=
 * atol + rtol * |ref|).
 *
 * Paged attention gets the vLLM treatment (STYLE rule 27): shuffled, non-contiguous block
 * tables; decodes with long contexts mixed with prefill chunks whose earlier tokens are already
 * cached; GQA ratios 1, 2, 4, 8; head_dim 16/64/80/128; block sizes 16, 32, 64; one sequence past
 * 4000 tokens; NaN in every cache slot that no sequence owns (and in the other layer), so a
 * single read past a sequence turns the output into NaN. BK_K_PRE_ROPE is checked against a
 * reference that rotates keys first, and against the backend's own rope + BK_K_POST_ROPE.
 * Every case runs with 1 and 3 worker threads, which must agree bit for bit. Five cases run
 * again over an fp8 (e4m3, per-head scales) cache, two over bf16 and one over f16, against the
 * reference on the values such a cache holds (test_attention_kv_dtype). Attention's
 * tolerance is atol = max(1e-5, 2 x the error of a naive fp32 program against the double
 * reference), rtol 1e-4 (STYLE rule 26): with scores of magnitude ~30 fp32 itself is ~1e-4 off.
 *
 * `test_cpu_ops --small` skips the long sequence and the timing (for valgrind). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/common.h"
#include "../kernels/backend.h"
#include "test.h"

static int small_mode;

/* ---------------------------------------------------------------------------------------------
 * Helpers */

static uint64_t rng_state = 0x2545F4914F6CDD1DULL;

static uint32_t rng_u32(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1DULL) >> 32);
}

static float rng_uniform(void) /* [-1, 1) */
{
    return (float)((rng_u32() >> 8) * (1.0 / 8388608.0) * 2.0 - 1.0);
}

static void fill_random(float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++) x[i] = rng_uniform() * scale;
}

static struct backend make_backend(int n_threads)
{
    struct backend be;
    struct backend_params p;
    memset(&p, 0, sizeof p);
    p.device = BK_DEVICE_CPU;
    p.n_threads = n_threads;
    char err[ERR_LEN];
    int rc = backend_cpu_init(&be, &p, err);
    CHECK(rc == 0, "backend_cpu_init: %s", err);
    return be;
}

static void free_backend(struct backend *be)
{
    be->ops->free(be->ctx);
    memset(be, 0, sizeof *be);
}

static bk_buf *upload(struct backend *be, const float *x, size_t n)
{
    char err[ERR_LEN];
    bk_buf *b = be->ops->act_new(be->ctx, n, err);
    CHECK(b, "act_new: %s", err);
    if (x) be->ops->act_write(be->ctx, b, 0, x, n);
    return b;
}

static float *download(struct backend *be, const bk_buf *b, size_t n)
{
    float *x = xmalloc(n * sizeof(float));
    be->ops->act_read(be->ctx, x, b, 0, n);
    return x;
}

static double cpu_time_s(void) /* CPU time of the whole process, all threads */
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int bitwise_equal(const float *a, const float *b, size_t n)
{
    return memcmp(a, b, n * sizeof(float)) == 0;
}

/* A batch of the usual shape, its arrays owned here. */
struct test_batch {
    struct bk_batch b;
    int32_t *tokens, *positions, *query_start, *seq_lens, *block_tables, *out_rows;
    int64_t *slot_mapping;
    float *inv_freq, *attn_factor;
};

static void test_batch_alloc(struct test_batch *t, int n_tokens, int n_seqs, int stride, int rotary_dim)
{
    memset(t, 0, sizeof *t);
    t->tokens = xcalloc((size_t)n_tokens + 1, sizeof(int32_t));
    t->positions = xcalloc((size_t)n_tokens + 1, sizeof(int32_t));
    t->slot_mapping = xcalloc((size_t)n_tokens + 1, sizeof(int64_t));
    t->query_start = xcalloc((size_t)n_seqs + 1, sizeof(int32_t));
    t->seq_lens = xcalloc((size_t)n_seqs + 1, sizeof(int32_t));
    t->block_tables = xcalloc((size_t)n_seqs * stride + 1, sizeof(int32_t));
    t->out_rows = xcalloc((size_t)n_seqs + 1, sizeof(int32_t));
    t->inv_freq = xcalloc((size_t)n_seqs * (rotary_dim / 2) + 1, sizeof(float));
    t->attn_factor = xcalloc((size_t)n_seqs + 1, sizeof(float));
    t->b = (struct bk_batch){.n_tokens = n_tokens, .tokens = t->tokens, .positions = t->positions,
                             .slot_mapping = t->slot_mapping, .n_seqs = n_seqs, .query_start = t->query_start,
                             .seq_lens = t->seq_lens, .block_tables = t->block_tables, .block_table_stride = stride,
                             .n_out = 0, .out_rows = t->out_rows, .rotary_dim = rotary_dim,
                             .inv_freq = t->inv_freq, .attn_factor = t->attn_factor};
}

static void test_batch_free(struct test_batch *t)
{
    free(t->tokens);
    free(t->positions);
    free(t->slot_mapping);
    free(t->query_start);
    free(t->seq_lens);
    free(t->block_tables);
    free(t->out_rows);
    free(t->inv_freq);
    free(t->attn_factor);
}

static void batch_begin(struct backend *be, struct test_batch *t)
{
    char err[ERR_LEN];
    int rc = be->ops->batch_begin(be->ctx, &t->b, err);
    CHECK(rc == 0, "batch_begin: %s", err);
}

/* HF default inverse frequencies theta^(-2i/rotary_dim), times a per-sequence factor. */
static void make_inv_freq(float *inv_freq, int rotary_dim, double theta, double divide)
{
    for (int i = 0; i < rotary_dim / 2; i++)
        inv_freq[i] = (float)(1.0 / pow(theta, (double)(2 * i) / rotary_dim) / divide);
}

/* Reference rotation in double, of an fp32 angle (the contract: one fp32 multiply). */
static void ref_rope(double *y, const float *x, int pos, const float *inv_freq, float af, int rotary_dim, int head_dim)
{
    int half = rotary_dim / 2;
    for (int d = 0; d < head_dim; d++) y[d] = x[d];
    for (int i = 0; i < half; i++) {
        float ang = (float)pos * inv_freq[i];
        double c = cos((double)ang) * af, s = sin((double)ang) * af;
        y[i] = x[i] * c - x[i + half] * s;
        y[i + half] = x[i + half] * c + x[i] * s;
    }
}

/* ---------------------------------------------------------------------------------------------
 * Memory, matmul and the small ops */

static void test_weights_and_matmul(struct backend *be)
{
    static const int shapes[][3] = {{1, 37, 53}, {7, 64, 96}, {33, 128, 100}, {64, 300, 257}};
    char err[ERR_LEN];
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int n_rows = shapes[si][0], n_in = shapes[si][1], n_out = shapes[si][2];
        for (int dt = 0; dt < 3; dt++) {
            size_t nw = (size_t)n_out * n_in;
            float *w = xmalloc(nw * sizeof(float)), *x = xmalloc((size_t)n_rows * n_in * sizeof(float));
            uint16_t *w16 = xmalloc(nw * sizeof(uint16_t));
            fill_random(w, nw, 1.0f);
            fill_random(x, (size_t)n_rows * n_in, 1.0f);
            bk_buf *wb;
            if (dt == BK_F32) {
                wb = be->ops->weight_new(be->ctx, w, BK_F32, nw, err);
            } else {
                for (size_t i = 0; i < nw; i++) {
                    w16[i] = dt == BK_F16 ? f32_to_f16(w[i]) : f32_to_bf16(w[i]);
                    w[i] = dt == BK_F16 ? f16_to_f32(w16[i]) : bf16_to_f32(w16[i]);
                }
                wb = be->ops->weight_new(be->ctx, w16, (enum bk_dtype)dt, nw, err);
            }
            CHECK(wb, "weight_new: %s", err);
            float *wback = download(be, wb, nw); /* act_read works on any buffer on the CPU */
            TEST_CONDF(bitwise_equal(wback, w, nw), "weight_new dtype %d converts exactly", dt);
            free(wback);

            bk_buf *xb = upload(be, x, (size_t)n_rows * n_in), *ob = upload(be, NULL, (size_t)n_rows * n_out);
            be->ops->matmul(be->ctx, ob, xb, wb, n_rows, n_in, n_out);
            float *got = download(be, ob, (size_t)n_rows * n_out);
            float *ref = xmalloc((size_t)n_rows * n_out * sizeof(float));
            for (int r = 0; r < n_rows; r++)
                for (int o = 0; o < n_out; o++) {
                    double s = 0.0;
                    for (int i = 0; i < n_in; i++) s += (double)x[(size_t)r * n_in + i] * w[(size_t)o * n_in + i];
                    ref[(size_t)r * n_out + o] = (float)s;
                }
            TEST_CONDF(test_compare("matmul", got, ref, (size_t)n_rows * n_out, 1e-4f, 1e-4f) == 0,
                       "matmul %d x %d x %d, weights dtype %d", n_rows, n_in, n_out, dt);
            free(got);
            free(ref);
            free(w);
            free(w16);
            free(x);
            be->ops->buf_free(be->ctx, wb);
            be->ops->buf_free(be->ctx, xb);
            be->ops->buf_free(be->ctx, ob);
        }
    }
    char desc[128];
    be->ops->describe(be->ctx, desc, sizeof desc);
    TEST_CONDF(strstr(desc, "OpenBLAS") != NULL && strncmp(desc, "cpu: ", 5) == 0, "describe: %s", desc);
    TEST_COND("mem_free is 0 on the CPU", be->ops->mem_free(be->ctx) == 0);
    TEST_COND("name is cpu", strcmp(be->ops->name, "cpu") == 0);
    be->ops->buf_free(be->ctx, NULL);
}

/* rmsnorm, swiglu, add on both backends (the pool splits rows only above 64k elements). */
static void test_elementwise(struct backend *be1, struct backend *be3)
{
    struct backend *bes[2] = {be1, be3};
    const int n_rows = 70, dim = 1030;
    size_t n = (size_t)n_rows * dim;
    float *x = xmalloc(n * sizeof(float)), *y = xmalloc(n * sizeof(float)), *w = xmalloc(dim * sizeof(float));
    float *ref = xmalloc(n * sizeof(float));
    float *got[2];
    fill_random(x, n, 3.0f);
    fill_random(y, n, 8.0f);
    fill_random(w, dim, 1.0f);

    /* rmsnorm, out of place and in place */
    const float eps = 1e-5f;
    for (int r = 0; r < n_rows; r++) {
        double ss = 0.0;
        for (int i = 0; i < dim; i++) ss += (double)x[(size_t)r * dim + i] * x[(size_t)r * dim + i];
        double inv = 1.0 / sqrt(ss / dim + eps);
        for (int i = 0; i < dim; i++) ref[(size_t)r * dim + i] = (float)(w[i] * (x[(size_t)r * dim + i] * inv));
    }
    for (int bi = 0; bi < 2; bi++) {
        struct backend *be = bes[bi];
        bk_buf *xb = upload(be, x, n), *wb = upload(be, w, dim), *ob = upload(be, NULL, n);
        be->ops->rmsnorm(be->ctx, ob, xb, wb, n_rows, dim, eps);
        got[bi] = download(be, ob, n);
        TEST_CONDF(test_compare("rmsnorm", got[bi], ref, n, 1e-5f, 1e-5f) == 0, "rmsnorm (backend %d)", bi);
        be->ops->rmsnorm(be->ctx, xb, xb, wb, n_rows, dim, eps);
        float *inplace = download(be, xb, n);
        TEST_CONDF(bitwise_equal(inplace, got[bi], n), "rmsnorm in place == out of place (backend %d)", bi);
        free(inplace);
        be->ops->buf_free(be->ctx, xb);
        be->ops->buf_free(be->ctx, wb);
        be->ops->buf_free(be->ctx, ob);
    }
    TEST_COND("rmsnorm: 1 and 3 threads agree bitwise", bitwise_equal(got[0], got[1], n));
    free(got[0]);
    free(got[1]);

    /* swiglu: gate = y (range +-8 reaches both tails of the sigmoid), up = x */
    for (size_t i = 0; i < n; i++) ref[i] = (float)((double)y[i] / (1.0 + exp(-(double)y[i])) * x[i]);
    for (int bi = 0; bi < 2; bi++) {
        struct backend *be = bes[bi];
        bk_buf *gb = upload(be, y, n), *ub = upload(be, x, n), *ob = upload(be, NULL, n);
        be->ops->swiglu(be->ctx, ob, gb, ub, n_rows, dim);
        got[bi] = download(be, ob, n);
        TEST_CONDF(test_compare("swiglu", got[bi], ref, n, 1e-6f, 1e-5f) == 0, "swiglu (backend %d)", bi);
        be->ops->swiglu(be->ctx, gb, gb, ub, n_rows, dim);
        float *inplace = download(be, gb, n);
        TEST_CONDF(bitwise_equal(inplace, got[bi], n), "swiglu in place (backend %d)", bi);
        free(inplace);
        be->ops->buf_free(be->ctx, gb);
        be->ops->buf_free(be->ctx, ub);
        be->ops->buf_free(be->ctx, ob);
    }
    TEST_COND("swiglu: 1 and 3 threads agree bitwise", bitwise_equal(got[0], got[1], n));
    free(got[0]);
    free(got[1]);

    /* add */
    {
        bk_buf *xb = upload(be1, x, n), *yb = upload(be1, y, n);
        be1->ops->add(be1->ctx, xb, yb, n - 3);
        float *g = download(be1, xb, n);
        int ok = 1;
        for (size_t i = 0; i < n; i++) ok &= g[i] == (i < n - 3 ? x[i] + y[i] : x[i]);
        TEST_COND("add (and nothing past n)", ok);
        free(g);
        be1->ops->buf_free(be1->ctx, xb);
        be1->ops->buf_free(be1->ctx, yb);
    }
    free(x);
    free(y);
    free(w);
    free(ref);
}

/* embed and gather_rows: exact copies driven by the batch. */
static void test_embed_gather(struct backend *be)
{
    char err[ERR_LEN];
    const int vocab = 50, dim = 24, n_tok = 9;
    float *table = xmalloc((size_t)vocab * dim * sizeof(float));
    uint16_t *t16 = xmalloc((size_t)vocab * dim * sizeof(uint16_t));
    fill_random(table, (size_t)vocab * dim, 1.0f);
    for (int i = 0; i < vocab * dim; i++) {
        t16[i] = f32_to_bf16(table[i]);
        table[i] = bf16_to_f32(t16[i]);
    }
    bk_buf *tb = be->ops->weight_new(be->ctx, t16, BK_BF16, (size_t)vocab * dim, err);
    CHECK(tb, "weight_new: %s", err);

    struct test_batch t;
    test_batch_alloc(&t, n_tok, 2, 1, 0);
    for (int r = 0; r < n_tok; r++) {
        t.tokens[r] = (int32_t)(rng_u32() % vocab);
        t.positions[r] = r < 4 ? r : r - 4;
        t.slot_mapping[r] = -1;
    }
    t.tokens[0] = vocab - 1;
    t.query_start[1] = 4;
    t.query_start[2] = n_tok;
    t.seq_lens[0] = 4;
    t.seq_lens[1] = n_tok - 4;
    t.b.n_out = 2;
    t.out_rows[0] = 3;
    t.out_rows[1] = n_tok - 1;
    batch_begin(be, &t);

    bk_buf *xb = upload(be, NULL, (size_t)n_tok * dim), *gb = upload(be, NULL, 2 * (size_t)dim);
    be->ops->embed(be->ctx, xb, tb, dim);
    be->ops->gather_rows(be->ctx, gb, xb, dim);
    float *x = download(be, xb, (size_t)n_tok * dim), *g = download(be, gb, 2 * (size_t)dim);
    int ok = 1;
    for (int r = 0; r < n_tok; r++) ok &= bitwise_equal(x + (size_t)r * dim, table + (size_t)t.tokens[r] * dim, dim);
    TEST_COND("embed copies table rows (bf16 table)", ok);
    TEST_COND("gather_rows picks out_rows",
              bitwise_equal(g, x + 3 * dim, dim) && bitwise_equal(g + dim, x + (size_t)(n_tok - 1) * dim, dim));
    free(x);
    free(g);
    free(table);
    free(t16);
    test_batch_free(&t);
    be->ops->buf_free(be->ctx, tb);
    be->ops->buf_free(be->ctx, xb);
    be->ops->buf_free(be->ctx, gb);
}

/* ---------------------------------------------------------------------------------------------
 * rope */

static void test_rope_case(struct backend *be1, struct backend *be3, int head_dim, int rotary_dim)
{
    struct backend *bes[2] = {be1, be3};
    const int n_heads = 4, n_kv_heads = 2, n_seqs = 3;
    /* seq 0: the last 150 positions below 131072; seq 1: 0..4; seq 2: one row at 77777 */
    const int n0 = 150, n1 = 5, n_tok = n0 + n1 + 1;
    struct test_batch t;
    test_batch_alloc(&t, n_tok, n_seqs, 1, rotary_dim);
    int r = 0;
    for (int i = 0; i < n0; i++) t.positions[r++] = 131072 - n0 + i;
    for (int i = 0; i < n1; i++) t.positions[r++] = i;
    t.positions[r++] = 77777;
    for (int i = 0; i < n_tok; i++) t.slot_mapping[i] = -1;
    t.query_start[1] = n0;
    t.query_start[2] = n0 + n1;
    t.query_start[3] = n_tok;
    t.seq_lens[0] = 131072;
    t.seq_lens[1] = n1;
    t.seq_lens[2] = 77778;
    int half = rotary_dim / 2;
    make_inv_freq(t.inv_freq, rotary_dim, 500000.0, 1.0);
    make_inv_freq(t.inv_freq + half, rotary_dim, 10000.0, 4.0);
    make_inv_freq(t.inv_freq + 2 * half, rotary_dim, 1000000.0, 1.7);
    t.attn_factor[0] = 1.0f;
    t.attn_factor[1] = 1.2079442f;
    t.attn_factor[2] = 0.8f;

    size_t nq = (size_t)n_tok * n_heads * head_dim, nk = (size_t)n_tok * n_kv_heads * head_dim;
    float *q = xmalloc(nq * sizeof(float)), *k = xmalloc(nk * sizeof(float));
    fill_random(q, nq, 2.0f);
    fill_random(k, nk, 2.0f);
    float *qref = xmalloc(nq * sizeof(float)), *kref = xmalloc(nk * sizeof(float));
    double y[512];
    for (int s = 0; s < n_seqs; s++)
        for (int row = t.query_start[s]; row < t.query_start[s + 1]; row++) {
            for (int h = 0; h < n_heads + n_kv_heads; h++) {
                const float *x = h < n_heads ? q + ((size_t)row * n_heads + h) * head_dim
                                             : k + ((size_t)row * n_kv_heads + h - n_heads) * head_dim;
                float *o = h < n_heads ? qref + ((size_t)row * n_heads + h) * head_dim
                                       : kref + ((size_t)row * n_kv_heads + h - n_heads) * head_dim;
                ref_rope(y, x, t.positions[row], t.inv_freq + (size_t)s * half, t.attn_factor[s], rotary_dim, head_dim);
                for (int d = 0; d < head_dim; d++) o[d] = (float)y[d];
            }
        }

    float *got_q[2], *got_k[2];
    for (int bi = 0; bi < 2; bi++) {
        struct backend *be = bes[bi];
        batch_begin(be, &t);
        bk_buf *qb = upload(be, q, nq), *kb = upload(be, k, nk);
        be->ops->rope(be->ctx, qb, kb, NULL, n_heads, n_kv_heads, head_dim);
        got_q[bi] = download(be, qb, nq);
        got_k[bi] = download(be, kb, nk);
        TEST_CONDF(test_compare("rope q", got_q[bi], qref, nq, 2e-6f, 1e-5f) == 0,
                   "rope q, head_dim %d rotary_dim %d, positions to 131071 (backend %d)", head_dim, rotary_dim, bi);
        TEST_CONDF(test_compare("rope k", got_k[bi], kref, nk, 2e-6f, 1e-5f) == 0,
                   "rope k, head_dim %d rotary_dim %d (backend %d)", head_dim, rotary_dim, bi);
        int pass = 1;
        for (size_t i = 0; i < nq; i++)
            if ((int)(i % head_dim) >= rotary_dim) pass &= got_q[bi][i] == q[i];
        TEST_CONDF(pass, "rope leaves dims >= rotary_dim untouched (head_dim %d rotary_dim %d)", head_dim, rotary_dim);
        /* q only */
        be->ops->act_write(be->ctx, qb, 0, q, nq);
        be->ops->rope(be->ctx, qb, NULL, NULL, n_heads, n_kv_heads, head_dim);
        float *qonly = download(be, qb, nq);
        TEST_CONDF(bitwise_equal(qonly, got_q[bi], nq), "rope with k = NULL (backend %d)", bi);
        free(qonly);
        /* q_scale and STRING's shifted queries: seq 0 plain, seq 1 S=3 W=1 (p - S + W clamped at
         * 0 for p < 2), seq 2 S=70000 W=128 */
        {
            float *qs = xmalloc((size_t)n_tok * sizeof(float));
            for (int i = 0; i < n_tok; i++) qs[i] = 1.0f + 0.01f * (float)(i % 7);
            int32_t sshift[3] = {0, 3, 70000}, slocal[3] = {0, 1, 128};
            t.b.q_scale = qs;
            t.b.string_shift = sshift;
            t.b.string_local = slocal;
            batch_begin(be, &t);
            float *sentinel = xmalloc(nq * sizeof(float));
            for (size_t i = 0; i < nq; i++) sentinel[i] = 7.0f;
            bk_buf *q2b = upload(be, sentinel, nq);
            be->ops->act_write(be->ctx, qb, 0, q, nq);
            be->ops->act_write(be->ctx, kb, 0, k, nk);
            be->ops->rope(be->ctx, qb, kb, q2b, n_heads, n_kv_heads, head_dim);
            float *gq = download(be, qb, nq), *gk = download(be, kb, nk), *g2 = download(be, q2b, nq);
            float *want_q = xmalloc(nq * sizeof(float)), *want_2 = xmalloc(nq * sizeof(float));
            for (int sq = 0; sq < n_seqs; sq++)
                for (int row = t.query_start[sq]; row < t.query_start[sq + 1]; row++)
                    for (int h = 0; h < n_heads; h++) {
                        size_t off = ((size_t)row * n_heads + h) * head_dim;
                        int p2 = t.positions[row] - sshift[sq] + slocal[sq];
                        if (p2 < 0) p2 = 0;
                        ref_rope(y, q + off, p2, t.inv_freq + (size_t)sq * half, t.attn_factor[sq], rotary_dim,
                                 head_dim);
                        for (int d = 0; d < head_dim; d++) {
                            want_q[off + d] = qref[off + d] * qs[row];
                            want_2[off + d] = sshift[sq] > 0 ? (float)y[d] * qs[row] : 7.0f;
                        }
                    }
            TEST_CONDF(test_compare("rope q_scale", gq, want_q, nq, 4e-6f, 2e-5f) == 0, "rope q x q_scale (backend %d)",
                       bi);
            TEST_CONDF(bitwise_equal(gk, got_k[bi], nk), "rope: q_scale and STRING leave k alone (backend %d)", bi);
            TEST_CONDF(test_compare("rope q_shift", g2, want_2, nq, 4e-6f, 2e-5f) == 0,
                       "rope q_shift at p - S + W (clamped at 0) x q_scale; plain rows untouched (backend %d)", bi);
            t.b.q_scale = NULL;
            t.b.string_shift = t.b.string_local = NULL;
            be->ops->buf_free(be->ctx, q2b);
            free(qs);
            free(sentinel);
            free(gq);
            free(gk);
            free(g2);
            free(want_q);
            free(want_2);
        }
        be->ops->buf_free(be->ctx, qb);
        be->ops->buf_free(be->ctx, kb);
    }
    TEST_CONDF(bitwise_equal(got_q[0], got_q[1], nq) && bitwise_equal(got_k[0], got_k[1], nk),
               "rope: 1 and 3 threads agree bitwise (head_dim %d)", head_dim);
    for (int bi = 0; bi < 2; bi++) {
        free(got_q[bi]);
        free(got_k[bi]);
    }
    free(q);
    free(k);
    free(qref);
    free(kref);
    test_batch_free(&t);
}

/* ---------------------------------------------------------------------------------------------
 * Paged attention */

#define MAX_SEQS 8

struct attn_case {
    const char *name;
    int n_heads, n_kv_heads, head_dim, block_size;
    int n_seqs;
    int ctx[MAX_SEQS];   /* tokens cached before this step */
    int n_new[MAX_SEQS]; /* tokens of this step (1 = decode) */
    float q_scale;       /* larger = sharper softmax */
    int pre_rope;        /* BK_K_PRE_ROPE with rotary_dim below */
    int rotary_dim;
    int string_shift[MAX_SEQS]; /* STRING S per sequence (0 = off) */
    int string_local[MAX_SEQS]; /* STRING W */
    int window;                 /* sliding window of the layer (0 = full causal) */
};

/* The first key the query at pos sees. */
static int case_first_key(const struct attn_case *ac, int pos)
{
    return ac->window > 0 && pos - ac->window + 1 > 0 ? pos - ac->window + 1 : 0;
}

static int case_has_string(const struct attn_case *ac)
{
    for (int s = 0; s < ac->n_seqs; s++)
        if (ac->string_shift[s] > 0) return 1;
    return 0;
}

/* Everything a case needs, built once on the host and replayed into each backend. */
struct attn_data {
    const struct attn_case *ac;
    int n_blocks, stride, n_tok;
    int *seq_blocks;           /* (n_seqs, stride) shuffled block ids */
    float **kh, **vh;          /* per seq: (ctx + n_new, n_kv_heads, head_dim) */
    float *q;                  /* (n_tok, n_heads, head_dim) */
    float *q2;                 /* STRING's shifted queries, same shape (NULL without STRING) */
    float *inv_freq, *attn_factor;    enum bk_dtype kv_dtype;    /* the cache's storage (BK_F32 unless a KV dtype test sets it) */
    float *kv_scales;          /* fp8: k scales (2 layers, n_kv_heads) then v scales, or NULL */
};

static void attn_data_build(struct attn_data *dd, const struct attn_case *ac)
{
    memset(dd, 0, sizeof *dd);
    dd->ac = ac;
    int bs = ac->block_size, total = 0, max_nb = 0;
    for (int s = 0; s < ac->n_seqs; s++) {
        int nb = (ac->ctx[s] + ac->n_new[s] + bs - 1) / bs;
        total += nb;
        max_nb = nb > max_nb ? nb : max_nb;
        dd->n_tok += ac->n_new[s];
    }
    dd->n_blocks = 1 + total + 5; /* null block 0, the sequences', 5 nobody owns */
    dd->stride = max_nb + 3;
    int *ids = xmalloc((size_t)dd->n_blocks * sizeof(int));
    for (int i = 0; i < dd->n_blocks - 1; i++) ids[i] = i + 1;
    for (int i = dd->n_blocks - 2; i > 0; i--) {
        int j = (int)(rng_u32() % (uint32_t)(i + 1));
        int tmp = ids[i];
        ids[i] = ids[j];
        ids[j] = tmp;
    }
    dd->seq_blocks = xmalloc((size_t)ac->n_seqs * dd->stride * sizeof(int));
    int next = 0;
    for (int s = 0; s < ac->n_seqs; s++) {
        int nb = (ac->ctx[s] + ac->n_new[s] + bs - 1) / bs;
        for (int i = 0; i < dd->stride; i++) dd->seq_blocks[s * dd->stride + i] = i < nb ? ids[next++] : -7;
    }
    free(ids);
    size_t row = (size_t)ac->n_kv_heads * ac->head_dim;
    dd->kh = xmalloc((size_t)ac->n_seqs * sizeof(float *));
    dd->vh = xmalloc((size_t)ac->n_seqs * sizeof(float *));
    for (int s = 0; s < ac->n_seqs; s++) {
        size_t n = (size_t)(ac->ctx[s] + ac->n_new[s]) * row;
        dd->kh[s] = xmalloc(n * sizeof(float) + 1);
        dd->vh[s] = xmalloc(n * sizeof(float) + 1);
        fill_random(dd->kh[s], n, 1.0f);
        fill_random(dd->vh[s], n, 1.0f);
    }
    size_t nq = (size_t)dd->n_tok * ac->n_heads * ac->head_dim;
    dd->q = xmalloc(nq * sizeof(float));
    fill_random(dd->q, nq, ac->q_scale);
    if (case_has_string(ac)) {
        dd->q2 = xmalloc(nq * sizeof(float));
        fill_random(dd->q2, nq, ac->q_scale);
    }
    int half = ac->rotary_dim / 2;
    dd->inv_freq = xmalloc(((size_t)ac->n_seqs * half + 1) * sizeof(float));
    dd->attn_factor = xmalloc((size_t)ac->n_seqs * sizeof(float));
    for (int s = 0; s < ac->n_seqs; s++) {
        make_inv_freq(dd->inv_freq + (size_t)s * half, ac->rotary_dim, 10000.0, 1.0 + s);
        dd->attn_factor[s] = 1.0f + 0.1f * s;
    }
}

static void attn_data_free(struct attn_data *dd)
{
    for (int s = 0; s < dd->ac->n_seqs; s++) {
        free(dd->kh[s]);
        free(dd->vh[s]);
    }
    free(dd->kh);
    free(dd->vh);
    free(dd->seq_blocks);
    free(dd->q);
    free(dd->q2);
    free(dd->inv_freq);
    free(dd->attn_factor);
}

/* One softmax pass of the STRING reference over keys j0..j1 (double): out (hd) and the
 * log-sum-exp of the scaled scores. Returns the number of keys. */
static int ref_softmax_pass(double *out, double *lse, const float *q, const double *kd, const float *vh, int j0, int j1,
                            int n_kv, int g, int hd, double scale)
{
    if (j1 < j0) return 0;
    double mx = -INFINITY, sum = 0.0;
    double *sc = xmalloc((size_t)(j1 - j0 + 1) * sizeof(double));
    for (int j = j0; j <= j1; j++) {
        const double *k = kd + ((size_t)j * n_kv + g) * hd;
        double dot = 0.0;
        for (int d = 0; d < hd; d++) dot += q[d] * k[d];
        sc[j - j0] = dot * scale;
        if (sc[j - j0] > mx) mx = sc[j - j0];
    }
    for (int j = j0; j <= j1; j++) sum += (sc[j - j0] = exp(sc[j - j0] - mx));
    for (int d = 0; d < hd; d++) {
        double acc = 0.0;
        for (int j = j0; j <= j1; j++) acc += sc[j - j0] * vh[((size_t)j * n_kv + g) * hd + d];
        out[d] = acc / sum;
    }
    *lse = mx + log(sum);
    free(sc);
    return j1 - j0 + 1;
}

/* Host reference: softmax(scale q.k) v over keys 0..pos, in double. keys_rotated: rotate each
 * key with its sequence's RoPE first (what BK_K_PRE_ROPE must do at read time). */
static float *attn_reference(const struct attn_data *dd, int keys_rotated)
{
    const struct attn_case *ac = dd->ac;
    int hd = ac->head_dim, n_kv = ac->n_kv_heads, G = ac->n_heads / ac->n_kv_heads, half = ac->rotary_dim / 2;
    double scale = 1.0 / sqrt((double)hd);
    float *out = xmalloc((size_t)dd->n_tok * ac->n_heads * hd * sizeof(float));
    int r = 0;
    for (int s = 0; s < ac->n_seqs; s++) {
        int len = ac->ctx[s] + ac->n_new[s];
        /* the sequence's keys as attention must see them: (len, n_kv, hd) in double */
        double *kd = xmalloc((size_t)len * n_kv * hd * sizeof(double));
        for (int j = 0; j < len; j++)
            for (int g = 0; g < n_kv; g++) {
                const float *x = dd->kh[s] + ((size_t)j * n_kv + g) * hd;
                double *y = kd + ((size_t)j * n_kv + g) * hd;
                if (keys_rotated)
                    ref_rope(y, x, j, dd->inv_freq + (size_t)s * half, dd->attn_factor[s], ac->rotary_dim, hd);
                else
                    for (int d = 0; d < hd; d++) y[d] = x[d];
            }
        double *sc = xmalloc((size_t)len * sizeof(double));
        const int S = ac->string_shift[s];
        for (int i = 0; i < ac->n_new[s]; i++, r++) {
            int pos = ac->ctx[s] + i, j_lo = case_first_key(ac, pos);
            for (int h = 0; h < ac->n_heads; h++) {
                int g = h / G;
                const float *q = dd->q + ((size_t)r * ac->n_heads + h) * hd;
                if (S > 0) { /* STRING: the two-pass reference of REFERENCES-rope.md §8.2 */
                    const float *q2 = dd->q2 + ((size_t)r * ac->n_heads + h) * hd;
                    double o1[512], o2[512], lse1 = 0.0, lse2 = 0.0;
                    int n1 = ref_softmax_pass(o1, &lse1, q, kd, dd->vh[s], pos - S + 1 > j_lo ? pos - S + 1 : j_lo,
                                              pos, n_kv, g, hd, scale);
                    int n2 = ref_softmax_pass(o2, &lse2, q2, kd, dd->vh[s], j_lo, pos - S, n_kv, g, hd, scale);
                    const double w = n2 ? 1.0 / (1.0 + exp(lse1 - lse2)) : 0.0; /* weight of the shifted part */
                    float *o = out + ((size_t)r * ac->n_heads + h) * hd;
                    for (int d = 0; d < hd; d++) o[d] = (float)(n1 ? o1[d] * (1.0 - w) + (n2 ? o2[d] * w : 0.0) : o2[d]);
                    continue;
                }
                double mx = -INFINITY, sum = 0.0;
                for (int j = j_lo; j <= pos; j++) {
                    const double *k = kd + ((size_t)j * n_kv + g) * hd;
                    double dot = 0.0;
                    for (int d = 0; d < hd; d++) dot += q[d] * k[d];
                    sc[j] = dot * scale;
                    if (sc[j] > mx) mx = sc[j];
                }
                for (int j = j_lo; j <= pos; j++) {
                    sc[j] = exp(sc[j] - mx);
                    sum += sc[j];
                }
                float *o = out + ((size_t)r * ac->n_heads + h) * hd;
                for (int d = 0; d < hd; d++) {
                    double acc = 0.0;
                    for (int j = j_lo; j <= pos; j++) acc += sc[j] * dd->vh[s][((size_t)j * n_kv + g) * hd + d];
                    o[d] = (float)(acc / sum);
                }
            }
        }
        free(kd);
        free(sc);
    }
    return out;
}

/* The same attention as a naive fp32 program would compute it (float dot products, expf,
 * float sums): its distance from the double reference sets the tolerance (STYLE rule 26). */
static float *attn_naive_f32(const struct attn_data *dd, int keys_rotated)
{
    const struct attn_case *ac = dd->ac;
    int hd = ac->head_dim, n_kv = ac->n_kv_heads, G = ac->n_heads / ac->n_kv_heads, half = ac->rotary_dim / 2;
    float scale = 1.0f / sqrtf((float)hd);
    float *out = xmalloc((size_t)dd->n_tok * ac->n_heads * hd * sizeof(float));
    double y[512];
    int r = 0;
    for (int s = 0; s < ac->n_seqs; s++) {
        int len = ac->ctx[s] + ac->n_new[s];
        float *kf = xmalloc((size_t)len * n_kv * hd * sizeof(float));
        for (int j = 0; j < len; j++)
            for (int g = 0; g < n_kv; g++) {
                const float *x = dd->kh[s] + ((size_t)j * n_kv + g) * hd;
                float *o = kf + ((size_t)j * n_kv + g) * hd;
                if (keys_rotated) {
                    ref_rope(y, x, j, dd->inv_freq + (size_t)s * half, dd->attn_factor[s], ac->rotary_dim, hd);
                    for (int d = 0; d < hd; d++) o[d] = (float)y[d];
                } else {
                    memcpy(o, x, (size_t)hd * sizeof(float));
                }
            }
        float *sc = xmalloc((size_t)len * sizeof(float));
        for (int i = 0; i < ac->n_new[s]; i++, r++) {
            int pos = ac->ctx[s] + i, j_lo = case_first_key(ac, pos);
            for (int h = 0; h < ac->n_heads; h++) {
                const float *q1 = dd->q + ((size_t)r * ac->n_heads + h) * hd;
                const float *q2 = dd->q2 ? dd->q2 + ((size_t)r * ac->n_heads + h) * hd : NULL;
                float mx = -INFINITY, sum = 0.0f;
                for (int j = j_lo; j <= pos; j++) {
                    const float *q = ac->string_shift[s] > 0 && pos - j >= ac->string_shift[s] ? q2 : q1;
                    const float *k = kf + ((size_t)j * n_kv + h / G) * hd;
                    float dot = 0.0f;
                    for (int d = 0; d < hd; d++) dot += q[d] * k[d];
                    sc[j] = dot * scale;
                    mx = sc[j] > mx ? sc[j] : mx;
                }
                for (int j = j_lo; j <= pos; j++) {
                    sc[j] = expf(sc[j] - mx);
                    sum += sc[j];
                }
                float *o = out + ((size_t)r * ac->n_heads + h) * hd;
                for (int d = 0; d < hd; d++) {
                    float acc = 0.0f;
                    for (int j = j_lo; j <= pos; j++) acc += sc[j] * dd->vh[s][((size_t)j * n_kv + h / G) * hd + d];
                    o[d] = acc / sum;
                }
            }
        }
        free(kf);
        free(sc);
    }
    return out;
}

static float max_abs_diff(const float *a, const float *b, size_t n)
{
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN sticks */
    }
    return m;
}

/* Replay a case into a fresh KV pool of be: NaN everywhere, the cached history (with two
 * padding rows of slot -1 holding NaN), then this step's rows and attention on layer 1.
 * rope_keys: rotate keys with the backend's rope op before storing (POST_ROPE twin of a
 * PRE_ROPE case). With a sliding window (layer 1's; layer 0 is full), history keys below every
 * new row's window are stored as NaN, and blocks wholly below it are 0 (the null block, NaN) in
 * this step's block tables, as the engine leaves freed blocks: a read of any of them shows.
 * Returns the attention output (n_tok, n_heads, head_dim). */
static float *attn_run(struct backend *be, const struct attn_data *dd, enum bk_k_storage storage, int rope_keys)
{
    const struct attn_case *ac = dd->ac;
    const int bs = ac->block_size, hd = ac->head_dim, n_kv = ac->n_kv_heads, n_layers = 2, layer = 1;
    const size_t row = (size_t)n_kv * hd;
    const int rotary_dim = ac->rotary_dim, half = rotary_dim / 2;
    char err[ERR_LEN];
    const int32_t windows[2] = {0, ac->window};
    struct bk_kv_params kp = {n_layers, dd->n_blocks, bs, n_kv, hd, storage, ac->window > 0 ? windows : NULL,
                              dd->kv_dtype, dd->kv_scales, dd->kv_scales ? dd->kv_scales + n_layers * n_kv : NULL};
    int rc = be->ops->kv_init(be->ctx, &kp, err);
    CHECK(rc == 0, "kv_init: %s", err);

    /* 1. NaN in every slot of every layer: one pseudo-sequence owning every block */
    {
        int n = dd->n_blocks * bs;
        struct test_batch t;
        test_batch_alloc(&t, n, 1, dd->n_blocks, 0);
        for (int i = 0; i < n; i++) {
            t.positions[i] = i;
            t.slot_mapping[i] = i;
        }
        t.query_start[1] = n;
        t.seq_lens[0] = n;
        for (int i = 0; i < dd->n_blocks; i++) t.block_tables[i] = i;
        batch_begin(be, &t);
        float *nan_rows = xmalloc((size_t)n * row * sizeof(float));
        for (size_t i = 0; i < (size_t)n * row; i++) nan_rows[i] = NAN;
        bk_buf *kb = upload(be, nan_rows, (size_t)n * row);
        for (int l = 0; l < n_layers; l++) be->ops->kv_store(be->ctx, l, kb, kb);
        be->ops->buf_free(be->ctx, kb);
        free(nan_rows);
        test_batch_free(&t);
    }

    /* 2. history (positions 0..ctx-1) plus a padding pseudo-sequence of two rows, slot -1 */
    {
        int n = 2;
        for (int s = 0; s < ac->n_seqs; s++) n += ac->ctx[s];
        struct test_batch t;
        test_batch_alloc(&t, n, ac->n_seqs + 1, dd->stride, rotary_dim);
        float *k = xmalloc((size_t)n * row * sizeof(float)), *v = xmalloc((size_t)n * row * sizeof(float));
        int r = 0;
        for (int s = 0; s < ac->n_seqs; s++) {
            t.query_start[s] = r;
            t.seq_lens[s] = ac->ctx[s];
            memcpy(t.block_tables + (size_t)s * dd->stride, dd->seq_blocks + (size_t)s * dd->stride,
                   (size_t)dd->stride * sizeof(int32_t));
            memcpy(t.inv_freq + (size_t)s * half, dd->inv_freq + (size_t)s * half, (size_t)half * sizeof(float));
            t.attn_factor[s] = dd->attn_factor[s];
            for (int j = 0; j < ac->ctx[s]; j++, r++) {
                t.positions[r] = j;
                t.slot_mapping[r] = (int64_t)dd->seq_blocks[s * dd->stride + j / bs] * bs + j % bs;
                memcpy(k + (size_t)r * row, dd->kh[s] + (size_t)j * row, row * sizeof(float));
                memcpy(v + (size_t)r * row, dd->vh[s] + (size_t)j * row, row * sizeof(float));
                if (j < case_first_key(ac, ac->ctx[s])) /* below every new row's window */
                    for (size_t i = 0; i < row; i++) k[(size_t)r * row + i] = v[(size_t)r * row + i] = NAN;
            }
        }
        t.query_start[ac->n_seqs] = r;
        t.seq_lens[ac->n_seqs] = 1;
        t.attn_factor[ac->n_seqs] = 1.0f;
        for (; r < n; r++) {
            t.positions[r] = 0;
            t.slot_mapping[r] = -1;
            for (size_t i = 0; i < row; i++) k[(size_t)r * row + i] = v[(size_t)r * row + i] = NAN;
        }
        t.query_start[ac->n_seqs + 1] = n;
        batch_begin(be, &t);
        bk_buf *kb = upload(be, k, (size_t)n * row), *vb = upload(be, v, (size_t)n * row);
        if (rope_keys) be->ops->rope(be->ctx, kb, NULL, NULL, n_kv, n_kv, hd);
        be->ops->kv_store(be->ctx, layer, kb, vb);
        be->ops->buf_free(be->ctx, kb);
        be->ops->buf_free(be->ctx, vb);
        free(k);
        free(v);
        test_batch_free(&t);
    }

    /* 3. this step: new rows, kv_store, attention */
    struct test_batch t;
    test_batch_alloc(&t, dd->n_tok, ac->n_seqs, dd->stride, rotary_dim);
    float *k = xmalloc((size_t)dd->n_tok * row * sizeof(float)), *v = xmalloc((size_t)dd->n_tok * row * sizeof(float));
    int r = 0;
    for (int s = 0; s < ac->n_seqs; s++) {
        t.query_start[s] = r;
        t.seq_lens[s] = ac->ctx[s] + ac->n_new[s];
        memcpy(t.block_tables + (size_t)s * dd->stride, dd->seq_blocks + (size_t)s * dd->stride,
               (size_t)dd->stride * sizeof(int32_t));
        for (int b = 0; (b + 1) * bs <= case_first_key(ac, ac->ctx[s]); b++) /* freed: the null block */
            t.block_tables[(size_t)s * dd->stride + b] = 0;
        memcpy(t.inv_freq + (size_t)s * half, dd->inv_freq + (size_t)s * half, (size_t)half * sizeof(float));
        t.attn_factor[s] = dd->attn_factor[s];
        for (int i = 0; i < ac->n_new[s]; i++, r++) {
            int j = ac->ctx[s] + i;
            t.positions[r] = j;
            t.slot_mapping[r] = (int64_t)dd->seq_blocks[s * dd->stride + j / bs] * bs + j % bs;
            memcpy(k + (size_t)r * row, dd->kh[s] + (size_t)j * row, row * sizeof(float));
            memcpy(v + (size_t)r * row, dd->vh[s] + (size_t)j * row, row * sizeof(float));
        }
        t.out_rows[s] = r - 1;
    }
    t.query_start[ac->n_seqs] = r;
    t.b.n_out = ac->n_seqs;
    int32_t sshift[MAX_SEQS], slocal[MAX_SEQS];
    const int string = dd->q2 != NULL;
    if (string) {
        for (int s = 0; s < ac->n_seqs; s++) {
            sshift[s] = ac->string_shift[s];
            slocal[s] = ac->string_local[s];
        }
        t.b.string_shift = sshift;
        t.b.string_local = slocal;
    }
    batch_begin(be, &t);
    size_t nq = (size_t)dd->n_tok * ac->n_heads * hd;
    bk_buf *kb = upload(be, k, (size_t)dd->n_tok * row), *vb = upload(be, v, (size_t)dd->n_tok * row);
    bk_buf *qb = upload(be, dd->q, nq), *ob = upload(be, NULL, nq);
    bk_buf *q2b = string ? upload(be, dd->q2, nq) : NULL;
    if (rope_keys) be->ops->rope(be->ctx, kb, NULL, NULL, n_kv, n_kv, hd);
    be->ops->kv_store(be->ctx, layer, kb, vb);
    be->ops->attention(be->ctx, ob, qb, q2b, layer, ac->n_heads, 1.0f / sqrtf((float)hd));
    be->ops->buf_free(be->ctx, q2b);
    float *out = download(be, ob, nq);
    be->ops->buf_free(be->ctx, kb);
    be->ops->buf_free(be->ctx, vb);
    be->ops->buf_free(be->ctx, qb);
    be->ops->buf_free(be->ctx, ob);
    free(k);
    free(v);
    test_batch_free(&t);
    return out;
}

static void test_attention_case(const struct attn_case *ac)
{
    struct attn_data dd;
    attn_data_build(&dd, ac);
    size_t nq = (size_t)dd.n_tok * ac->n_heads * ac->head_dim;
    float *ref = attn_reference(&dd, ac->pre_rope);
    /* tolerance: atol 1e-5, rtol 1e-4, or twice the error of naive fp32 where fp32 itself
     * cannot do better (large scores: one ulp of a score of 30 is 2e-6) */
    float *naive = attn_naive_f32(&dd, ac->pre_rope);
    float naive_err = max_abs_diff(naive, ref, nq);
    float atol = 2.0f * naive_err > 1e-5f ? 2.0f * naive_err : 1e-5f;
    free(naive);
    enum bk_k_storage storage = ac->pre_rope ? BK_K_PRE_ROPE : BK_K_POST_ROPE;
    float *got[2];
    const int threads[2] = {1, 3};
    for (int ti = 0; ti < 2; ti++) {
        struct backend be = make_backend(threads[ti]);
        got[ti] = attn_run(&be, &dd, storage, 0);
        printf("attention %-32s %d thread(s): max |err| %.2e (naive fp32 %.2e, atol %.2e)\n", ac->name, threads[ti],
               max_abs_diff(got[ti], ref, nq), naive_err, atol);
        TEST_CONDF(test_compare(ac->name, got[ti], ref, nq, atol, 1e-4f) == 0, "attention %s, %d thread(s)", ac->name,
                   threads[ti]);
        free_backend(&be);
    }
    TEST_CONDF(bitwise_equal(got[0], got[1], nq), "attention %s: 1 and 3 threads agree bitwise", ac->name);
    if (ac->pre_rope) {
        /* the same keys rotated by the rope op and stored post-RoPE must give the same output */
        struct backend be = make_backend(2);
        float *post = attn_run(&be, &dd, BK_K_POST_ROPE, 1);
        TEST_CONDF(test_compare(ac->name, got[0], post, nq, 1e-6f, 1e-6f) == 0,
                   "attention %s: PRE_ROPE == rope op + POST_ROPE", ac->name);
        free(post);
        free_backend(&be);
    }
    if (case_has_string(ac)) {
        /* S >= every sequence's length: no key is shifted, so the output is plain attention's
         * (the shifted queries, still passed, must be ignored) */
        struct attn_case far = *ac, off = *ac;
        for (int s = 0; s < ac->n_seqs; s++) {
            far.string_shift[s] = ac->ctx[s] + ac->n_new[s] + s;
            far.string_local[s] = s;
            off.string_shift[s] = off.string_local[s] = 0;
        }
        struct backend be1 = make_backend(2), be2 = make_backend(2);
        dd.ac = &far;
        float *a = attn_run(&be1, &dd, storage, 0);
        float *q2 = dd.q2;
        dd.q2 = NULL;
        dd.ac = &off;
        float *b = attn_run(&be2, &dd, storage, 0);
        dd.q2 = q2;
        dd.ac = ac;
        TEST_CONDF(bitwise_equal(a, b, nq), "attention %s: STRING with S >= length == plain attention", ac->name);
        free(a);
        free(b);
        free_backend(&be1);
        free_backend(&be2);
    }
    free(got[0]);
    free(got[1]);
    free(ref);
    attn_data_free(&dd);
}

/* The cache stored as bf16, f16 or fp8 (per-head scales): the history keys and values are
 * rounded the way the cache stores them (bf16/f16 RNE; fp8: e4m3(x / scale) x scale, with the
 * conversion that test_fp8_e4m3 checks against its own reference), and the fp64 reference over
 * those rounded values must match the backend at the fp32 tolerance: storage changes the inputs,
 * never the arithmetic. NaN in unused slots stays NaN in every dtype (fp8: code 0x7f), so the
 * never-read-past-a-sequence check holds too. */
static void test_attention_kv_dtype(const struct attn_case *ac, enum bk_dtype dt)
{
    struct attn_data dd;
    attn_data_build(&dd, ac);
    const int n_kv = ac->n_kv_heads, hd = ac->head_dim;
    dd.kv_dtype = dt;
    if (dt == BK_FP8_E4M3) { /* scales in [1/64, 1/2]: values of |x| < 1 use most of e4m3's range */
        dd.kv_scales = xmalloc(sizeof(float) * 4 * n_kv);
        for (int i = 0; i < 4 * n_kv; i++) dd.kv_scales[i] = ldexpf(1.0f + 0.37f * (float)(i % 3), -(2 + i % 5));
    }
    float err_plain = 0.0f;
    {   /* how far the rounded cache moves the output (printed, for scale) */
        float *plain = attn_reference(&dd, ac->pre_rope);
        for (int which = 0; which < 2; which++)
            for (int s = 0; s < ac->n_seqs; s++) {
                float *x = which ? dd.vh[s] : dd.kh[s];
                const float *sc = dd.kv_scales ? dd.kv_scales + (which ? 2 * n_kv : 0) + n_kv /* layer 1 */ : NULL;
                size_t n = (size_t)(ac->ctx[s] + ac->n_new[s]) * n_kv * hd;
                for (size_t i = 0; i < n; i++) {
                    const int h = (int)(i / hd % n_kv);
                    if (dt == BK_BF16) x[i] = bf16_to_f32(f32_to_bf16(x[i]));
                    else if (dt == BK_F16) x[i] = f16_to_f32(f32_to_f16(x[i]));
                    else x[i] = bk_fp8_e4m3_to_f32(bk_fp8_e4m3_from_f32(x[i] / sc[h])) * sc[h];
                }
            }
        float *rounded = attn_reference(&dd, ac->pre_rope);
        size_t nq = (size_t)dd.n_tok * ac->n_heads * hd;
        err_plain = max_abs_diff(plain, rounded, nq);
        free(plain);
        free(rounded);
    }
    size_t nq = (size_t)dd.n_tok * ac->n_heads * hd;
    float *ref = attn_reference(&dd, ac->pre_rope);
    float *naive = attn_naive_f32(&dd, ac->pre_rope);
    float naive_err = max_abs_diff(naive, ref, nq);
    float atol = 2.0f * naive_err > 1e-5f ? 2.0f * naive_err : 1e-5f;
    free(naive);
    struct backend be = make_backend(3);
    float *got = attn_run(&be, &dd, ac->pre_rope ? BK_K_PRE_ROPE : BK_K_POST_ROPE, 0);
    char name[96];
    snprintf(name, sizeof name, "%s-kv-%s", ac->name, bk_dtype_name(dt));
    printf("attention %-40s max |err| %.2e vs its rounded inputs (atol %.2e); rounding moved the output by %.2e\n",
           name, max_abs_diff(got, ref, nq), atol, err_plain);
    TEST_CONDF(test_compare(name, got, ref, nq, atol, 1e-4f) == 0, "attention %s", name);
    TEST_CONDF(err_plain > 0.0f, "attention %s: the %s cache rounds the inputs", name, bk_dtype_name(dt));
    free_backend(&be);
    free(got);
    free(ref);
    free(dd.kv_scales);
    attn_data_free(&dd);
}

static void test_attention(void)
{
    static const struct attn_case cases[] = {
        {"gqa1-hd64-bs16", 4, 4, 64, 16, 6, {100, 37, 0, 0, 64, 5}, {1, 20, 45, 1, 64, 130}, 4.0f, 0, 64, {0}, {0}, 0},
        {"gqa4-hd128-bs32-long", 8, 2, 128, 32, 5, {4100, 300, 31, 0, 3000}, {1, 70, 1, 33, 100}, 4.0f, 0, 128, {0}, {0}, 0},
        {"gqa8-hd16-bs16", 8, 1, 16, 16, 3, {999, 17, 0}, {1, 40, 9}, 4.0f, 0, 16, {0}, {0}, 0},
        {"gqa8-hd64-bs32-sharp", 16, 2, 64, 32, 3, {2000, 100, 0}, {1, 17, 70}, 20.0f, 0, 64, {0}, {0}, 0},
        {"gqa4-hd64-bs16-prerope-partial", 8, 2, 64, 16, 3, {500, 40, 0}, {1, 30, 20}, 4.0f, 1, 48, {0}, {0}, 0},
        {"gqa1-hd80-bs16", 2, 2, 80, 16, 2, {200, 10}, {1, 25}, 4.0f, 0, 80, {0}, {0}, 0},
        {"gqa2-hd128-bs16-prerope", 4, 2, 128, 16, 2, {70, 0}, {3, 50}, 4.0f, 1, 128, {0}, {0}, 0},
        {"gqa4-hd64-bs64", 8, 2, 64, 64, 2, {130, 0}, {1, 70}, 4.0f, 0, 64, {0}, {0}, 0},
        /* STRING: a decode and prefill rows with shifted, mixed and local tiles; a plain sequence
         * in the same batch; S beyond the length (local only) */
        {"string-gqa4-hd64-bs16", 8, 2, 64, 16, 4, {300, 0, 50, 120}, {1, 200, 30, 1}, 4.0f, 0, 64,
         .string_shift = {100, 64, 0, 200}, .string_local = {8, 4, 0, 0}},
        {"string-gqa1-hd128-bs32-decode", 4, 4, 128, 32, 3, {500, 10, 47}, {1, 1, 1}, 4.0f, 0, 128,
         .string_shift = {77, 5, 48}, .string_local = {3, 0, 47}},
        {"string-gqa4-hd64-bs16-prerope", 8, 2, 64, 16, 2, {150, 0}, {1, 90}, 4.0f, 1, 48,
         .string_shift = {60, 33}, .string_local = {5, 1}},
        {"string-gqa8-hd64-bs32-sharp", 16, 2, 64, 32, 2, {2000, 100}, {1, 97}, 20.0f, 0, 64,
         .string_shift = {1365, 50}, .string_local = {128, 10}},
        /* sliding windows: decodes far past, at and inside the window; prefill chunks that cross
         * its edge (rows whose windows start in different tiles); windows not aligned to blocks
         * or key tiles; W = 1 (only the own key); with STRING and with pre-RoPE keys */
        {"window64-gqa4-hd64-bs16", 8, 2, 64, 16, 6, {300, 64, 50, 0, 10, 63}, {1, 1, 100, 130, 1, 2}, 4.0f, 0, 64,
         .window = 64},
        {"window33-gqa8-hd128-bs32-sharp", 16, 2, 128, 32, 3, {1000, 40, 0}, {1, 90, 200}, 20.0f, 0, 128,
         .window = 33},
        {"window1-gqa1-hd16-bs8", 4, 4, 16, 8, 2, {30, 0}, {1, 20}, 4.0f, 0, 16, .window = 1},
        {"window50-string-gqa4-hd64-bs16", 8, 2, 64, 16, 3, {300, 0, 80}, {1, 150, 40}, 4.0f, 0, 64,
         .string_shift = {30, 20, 60}, .string_local = {4, 2, 8}, .window = 50},
        {"window40-gqa2-hd64-bs16-prerope", 4, 2, 64, 16, 2, {200, 30}, {1, 70}, 4.0f, 1, 48, .window = 40},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (small_mode && strstr(cases[i].name, "long")) continue;
        test_attention_case(&cases[i]);
    }
    /* KV cache dtypes: decode + prefill rows, GQA, pre-RoPE keys, a sliding window, STRING */
    static const int kv_cases[] = {0, 2, 4, 8, 12};
    for (size_t i = 0; i < sizeof kv_cases / sizeof kv_cases[0]; i++) {
        test_attention_kv_dtype(&cases[kv_cases[i]], BK_FP8_E4M3);
        if (i < 2) test_attention_kv_dtype(&cases[kv_cases[i]], BK_BF16);
        if (i < 1) test_attention_kv_dtype(&cases[kv_cases[i]], BK_F16);
    }
}

/* kv_copy_blocks: a sequence read through copies of its blocks gives the same attention. */
static void test_kv_copy_blocks(void)
{
    const int n_layers = 2, n_blocks = 6, bs = 16, n_kv = 2, hd = 16, n_heads = 4, n_tok = 20;
    struct backend be = make_backend(3);
    char err[ERR_LEN];
    struct bk_kv_params kp = {n_layers, n_blocks, bs, n_kv, hd, BK_K_POST_ROPE, NULL, BK_F32, NULL, NULL};
    int rc = be.ops->kv_init(be.ctx, &kp, err);
    CHECK(rc == 0, "kv_init: %s", err);
    size_t row = (size_t)n_kv * hd, nq = (size_t)n_tok * n_heads * hd;
    float *kv = xmalloc((size_t)n_tok * row * sizeof(float)), *q = xmalloc(nq * sizeof(float));
    fill_random(kv, (size_t)n_tok * row, 1.0f);
    fill_random(q, nq, 4.0f);
    struct test_batch t;
    test_batch_alloc(&t, n_tok, 1, 2, 0);
    for (int i = 0; i < n_tok; i++) {
        t.positions[i] = i;
        t.slot_mapping[i] = (i < bs ? 1 : 2) * bs + i % bs;
    }
    t.query_start[1] = n_tok;
    t.seq_lens[0] = n_tok;
    t.block_tables[0] = 1;
    t.block_tables[1] = 2;
    batch_begin(&be, &t);
    bk_buf *kb = upload(&be, kv, (size_t)n_tok * row), *qb = upload(&be, q, nq), *ob = upload(&be, NULL, nq);
    for (int l = 0; l < n_layers; l++) be.ops->kv_store(be.ctx, l, kb, kb);
    be.ops->attention(be.ctx, ob, qb, NULL, 1, n_heads, 0.25f);
    float *before = download(&be, ob, nq);
    const int32_t src[2] = {1, 2}, dst[2] = {4, 5};
    be.ops->kv_copy_blocks(be.ctx, src, dst, 2);
    for (int i = 0; i < n_tok; i++) t.slot_mapping[i] = -1;
    t.block_tables[0] = 4;
    t.block_tables[1] = 5;
    batch_begin(&be, &t);
    be.ops->attention(be.ctx, ob, qb, NULL, 1, n_heads, 0.25f);
    float *after = download(&be, ob, nq);
    TEST_COND("kv_copy_blocks: attention through the copies is unchanged", bitwise_equal(before, after, nq));
    free(before);
    free(after);
    free(kv);
    free(q);
    be.ops->buf_free(be.ctx, kb);
    be.ops->buf_free(be.ctx, qb);
    be.ops->buf_free(be.ctx, ob);
    test_batch_free(&t);
    free_backend(&be);
}

/* The pool under many back-to-back tasks: 300 parallel rmsnorms on 3 threads, each compared
 * with the single-thread result (a lost wake-up hangs here, a race shows as a mismatch). */
static void test_pool_stress(struct backend *be1, struct backend *be3)
{
    const int n_rows = 64, dim = 2048;
    size_t n = (size_t)n_rows * dim;
    float *x = xmalloc(n * sizeof(float)), *w = xmalloc(dim * sizeof(float));
    fill_random(x, n, 1.0f);
    fill_random(w, dim, 1.0f);
    bk_buf *xb1 = upload(be1, x, n), *wb1 = upload(be1, w, dim), *ob1 = upload(be1, NULL, n);
    bk_buf *xb3 = upload(be3, x, n), *wb3 = upload(be3, w, dim), *ob3 = upload(be3, NULL, n);
    be1->ops->rmsnorm(be1->ctx, ob1, xb1, wb1, n_rows, dim, 1e-6f);
    float *ref = download(be1, ob1, n), *got = xmalloc(n * sizeof(float));
    int ok = 1;
    for (int it = 0; it < 300 && ok; it++) {
        be3->ops->rmsnorm(be3->ctx, ob3, xb3, wb3, n_rows, dim, 1e-6f);
        be3->ops->act_read(be3->ctx, got, ob3, 0, n);
        ok = bitwise_equal(got, ref, n);
    }
    TEST_COND("pool: 300 back-to-back tasks on 3 threads match 1 thread", ok);
    free(x);
    free(w);
    free(ref);
    free(got);
    bk_buf *bufs[6] = {xb1, wb1, ob1, xb3, wb3, ob3};
    for (int i = 0; i < 6; i++) (i < 3 ? be1 : be3)->ops->buf_free((i < 3 ? be1 : be3)->ctx, bufs[i]);
}

/* ---------------------------------------------------------------------------------------------
 * Timing (printed, not asserted): an 8192-token prompt prefilled as 4 chunks of 2048, then one
 * decode step at 8192, 8 heads, 8 kv heads, head_dim 64. */

static void time_attention(void)
{
    const int n_heads = 8, n_kv = 8, hd = 64, bs = 16, chunk = 2048, n_chunks = 4, len = chunk * n_chunks;
    struct backend be = make_backend(0);
    char err[ERR_LEN], desc[128];
    be.ops->describe(be.ctx, desc, sizeof desc);
    int n_blocks = len / bs + 2;
    struct bk_kv_params kp = {1, n_blocks, bs, n_kv, hd, BK_K_POST_ROPE, NULL, BK_F32, NULL, NULL};
    int rc = be.ops->kv_init(be.ctx, &kp, err);
    CHECK(rc == 0, "kv_init: %s", err);
    size_t row = (size_t)n_kv * hd, nq = (size_t)chunk * n_heads * hd;
    float *q = xmalloc(nq * sizeof(float)), *k = xmalloc((size_t)chunk * row * sizeof(float));
    fill_random(q, nq, 4.0f);
    fill_random(k, (size_t)chunk * row, 1.0f);
    bk_buf *qb = upload(&be, q, nq), *ob = upload(&be, NULL, nq), *kb = upload(&be, k, (size_t)chunk * row);
    struct test_batch t;
    test_batch_alloc(&t, chunk, 1, n_blocks, 0);
    for (int i = 0; i < n_blocks - 1; i++) t.block_tables[i] = i + 1;
    double total_ms = 0.0, total_flop = 0.0, total_cpu_s = 0.0;
    printf("attention timing (%s): %d-token prompt in %d chunks, %d heads, %d kv heads, head_dim %d\n", desc, len,
           n_chunks, n_heads, n_kv, hd);
    for (int c = 0; c < n_chunks; c++) {
        for (int i = 0; i < chunk; i++) {
            int j = c * chunk + i;
            t.positions[i] = j;
            t.slot_mapping[i] = (int64_t)t.block_tables[j / bs] * bs + j % bs;
            total_flop += 4.0 * (j + 1) * n_heads * hd;
        }
        t.query_start[1] = chunk;
        t.seq_lens[0] = (c + 1) * chunk;
        batch_begin(&be, &t);
        be.ops->kv_store(be.ctx, 0, kb, kb);
        double t0 = now_s(), c0 = cpu_time_s();
        be.ops->attention(be.ctx, ob, qb, NULL, 0, n_heads, 1.0f / sqrtf((float)hd));
        double ms = (now_s() - t0) * 1e3;
        total_cpu_s += cpu_time_s() - c0;
        total_ms += ms;
        printf("  chunk %d (positions %d..%d): %.1f ms\n", c, c * chunk, (c + 1) * chunk - 1, ms);
    }
    printf("  prefill total: %.1f ms, %.1f GFLOP/s; cpu time %.1f ms (%.1f GFLOP per cpu-second: wall time well\n"
           "  above cpu time / threads means other processes had the cores)\n",
           total_ms, total_flop / (total_ms * 1e6), total_cpu_s * 1e3, total_flop / (total_cpu_s * 1e9));
    /* one decode row at position len - 1, repeated */
    t.b.n_tokens = 1;
    t.query_start[1] = 1;
    t.positions[0] = len - 1;
    t.slot_mapping[0] = -1;
    t.seq_lens[0] = len;
    batch_begin(&be, &t);
    const int reps = 20;
    double t0 = now_s();
    for (int i = 0; i < reps; i++) be.ops->attention(be.ctx, ob, qb, NULL, 0, n_heads, 1.0f / sqrtf((float)hd));
    printf("  decode at %d: %.3f ms per call\n", len, (now_s() - t0) * 1e3 / reps);
    be.ops->buf_free(be.ctx, qb);
    be.ops->buf_free(be.ctx, ob);
    be.ops->buf_free(be.ctx, kb);
    free(q);
    free(k);
    test_batch_free(&t);
    free_backend(&be);
}

/* --------------------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    small_mode = argc > 1 && strcmp(argv[1], "--small") == 0;
    struct backend be1 = make_backend(1), be3 = make_backend(3);

    test_weights_and_matmul(&be1);
    test_weights_and_matmul(&be3);
    test_elementwise(&be1, &be3);
    test_embed_gather(&be1);
    test_rope_case(&be1, &be3, 64, 64);
    test_rope_case(&be1, &be3, 128, 96);
    test_rope_case(&be1, &be3, 80, 32);
    test_attention();
    test_kv_copy_blocks();
    test_pool_stress(&be1, &be3);

    free_backend(&be1);
    free_backend(&be3);
    if (!small_mode) time_attention();
    return test_report("test_cpu_ops");
}
