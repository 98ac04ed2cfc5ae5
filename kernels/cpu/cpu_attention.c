/* cpu_attention.c - paged, causal, GQA attention for the CPU backend (flash-attention style:
 * online softmax over key tiles, never an n x n matrix).
 *
 * Work item = (sequence, kv head, tile of consecutive rows of that sequence). The M = rows x G
 * query vectors of an item (every query head of the GQA group for every row of the tile,
 * G = n_heads / n_kv_heads, M <= QUERY_TILE_MAX) share each key tile, so a key is fetched once
 * per item, not once per query head or row. Items are handed to the worker pool most expensive
 * first (cost = rows x keys) so the long causal tiles do not finish last. Fewer rows per tile
 * when a batch would otherwise have too few items for the threads.
 *
 * Per item (scores are kept unscaled; exp(scale * x) is computed as exp2(x * scale * log2(e))):
 *
 *     qt (head_dim, Mp)      the item's queries, transposed, zero-padded to Mp columns
 *                            (a decode row: (M, head_dim), see qk_dot)
 *     for each key tile j0 = 0, KEY_TILE, ... up to the largest position in the item:
 *         ks, vs (KEY_TILE, head_dim)   the tile's keys and values gathered through the block
 *                                       table into contiguous scratch (keys rotated here in
 *                                       BK_K_PRE_ROPE mode)
 *         st (KEY_TILE, Mp) = ks . qt
 *         st[k][m] = -inf where j0 + k > position of m   (only in tiles that cross it)
 *         m_new = max(m, max_k st);  alpha = exp(scale (m - m_new));  p = exp(scale (st - m_new))
 *         l = l * alpha + sum_k p;  acc = acc * alpha + p^T . vs
 *     out = acc / l
 *
 * The scores are kept transposed (keys x queries) so that the max, the exp2 and the sums run
 * along contiguous memory over the query index and vectorize without reassociating a
 * reduction (which -O3 without -ffast-math refuses to do). The two products are register-
 * blocked micro-kernels (6 rows x 2 vectors) over a small vector abstraction: AVX-512, AVX2 +
 * FMA, or 4-lane GCC vector extensions on other targets. Written as plain loops, GCC 12
 * vectorized the key loop of p^T . V with gathers and spilled the accumulators (5x slower).
 *
 * Measured on the 2-core Ice Lake dev VM (8192-token prompt in 4 chunks of 2048, 8 heads,
 * head_dim 64, test_cpu_ops's timing): 0.67 s on 2 threads, ~50 GFLOP/s per core; the
 * micro-kernels alone reach ~110 GFLOP/s on data in L1. The rest is fetching K/V from L3/DRAM
 * (why a tile is gathered into contiguous scratch, and why an item holds up to 128 query
 * vectors: each K/V byte fetched serves them all) and the softmax bookkeeping.
 *
 * Reads: keys 0 (lo with a sliding window, below)..(largest position in the item) and nothing
 * else; the padding key rows of the last tile are zeros in scratch, so NaN in unused cache
 * slots never reaches the output (tests/test_cpu_ops.c proves it).
 *
 * Sliding window W (bk_kv_params.sliding_window[layer] > 0): the query at position p sees keys
 * p - W < j <= p. An item's key range starts at lo = (smallest position) - W + 1 instead of 0,
 * on the same KEY_TILE grid (the first tile starts at lo rounded down, so a row's result does
 * not depend on how rows were tiled); keys of that tile below lo are never read (the engine may
 * have freed their blocks: null block, garbage) but zeroed in scratch, and keys below a row's
 * own window are masked like the causal edge. A row whose keys are all masked so far keeps its
 * running max at -inf; the exponentials then subtract 0 instead (exp(-inf) = 0, not NaN). Causal
 * attention never meets that case (key 0 is in every row's first tile), so its results are
 * unchanged bit for bit.
 *
 * KV dtype (--kv-cache-dtype): the gather decodes bf16/f16/fp8 cache rows into the fp32 tile
 * scratch (fp8: code value x the head's k_scale / v_scale), so everything after it is the fp32
 * path unchanged; pre-RoPE keys are rotated after decoding (the cache holds them unrotated).
 *
 * BK_K_PRE_ROPE (CLEX): each key row is rotated at its position j with the sequence's cos/sin,
 * taken from a per-batch table (positions x rotary_dim) built by the first attention call after
 * batch_begin and reused by every layer; rotation uses rope_rotate_cpu, so a key rotated here is
 * bit-identical to one the rope op rotated before kv_store.
 *
 * STRING (REFERENCES-rope.md §8): a sequence with string_shift S > 0 also brings its shifted
 * queries (q_shift, laid out like q). Key j is scored with the shifted query of row m when
 * pos_m - j >= S. Per key tile: if no (row, key) pair of the item is that far apart, the tile
 * uses q alone; if every pair is, q_shift alone; otherwise both score tiles are computed and
 * merged per element before the mask and the softmax, which are unchanged.
 *
 * Rejected: cblas_sgemm per tile (packing overhead dominates 128 x 48 x 64 products, and
 * OpenBLAS's own threads would fight the pool); one item per (row, head) (no key reuse);
 * scores over the whole sequence (n x n memory at 128k); split-KV for decode (a decode step is
 * bound by reading the weights on the CPU; items = sequences x kv heads keep the cores busy
 * once a few sequences run). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"

#define KEY_TILE 48        /* keys per tile, a multiple of the 6-row micro-kernel */
#define QUERY_TILE_MAX 128 /* query vectors (rows x G) per item */
#define QUERY_TILE_MIN 16  /* do not shrink tiles below this for parallelism */

/* ---------------------------------------------------------------------------------------------
 * Vectors: VL floats */

#if defined(__AVX512F__)
#include <immintrin.h>
#define VL 16
typedef __m512 vec_t;
static inline vec_t vec_zero(void) { return _mm512_setzero_ps(); }
static inline vec_t vec_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void vec_store(float *p, vec_t v) { _mm512_storeu_ps(p, v); }
static inline vec_t vec_set1(float x) { return _mm512_set1_ps(x); }
static inline vec_t vec_fma(vec_t a, vec_t b, vec_t c) { return _mm512_fmadd_ps(a, b, c); }
static inline float vec_sum(vec_t v) { return _mm512_reduce_add_ps(v); }
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define VL 8
typedef __m256 vec_t;
static inline vec_t vec_zero(void) { return _mm256_setzero_ps(); }
static inline vec_t vec_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void vec_store(float *p, vec_t v) { _mm256_storeu_ps(p, v); }
static inline vec_t vec_set1(float x) { return _mm256_set1_ps(x); }
static inline vec_t vec_fma(vec_t a, vec_t b, vec_t c) { return _mm256_fmadd_ps(a, b, c); }
static inline float vec_sum(vec_t v)
{
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}
#else /* any other target: GCC vector extensions, 4 lanes (SSE2, NEON) */
#define VL 4
typedef float vec_t __attribute__((vector_size(16)));
static inline vec_t vec_zero(void) { return (vec_t){0.0f, 0.0f, 0.0f, 0.0f}; }
static inline vec_t vec_load(const float *p) { vec_t v; memcpy(&v, p, sizeof v); return v; }
static inline void vec_store(float *p, vec_t v) { memcpy(p, &v, sizeof v); }
static inline vec_t vec_set1(float x) { return (vec_t){x, x, x, x}; }
static inline vec_t vec_fma(vec_t a, vec_t b, vec_t c) { return a * b + c; }
static inline float vec_sum(vec_t v) { return (v[0] + v[1]) + (v[2] + v[3]); }
#endif

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* 2^x for x <= 0 (the only range softmax needs), 0 below -126 (and for -inf); NaN propagates.
 * Round-to-nearest split x = n + r, |r| <= 1/2, then a degree-7 Taylor polynomial of 2^r
 * (truncation error 5e-9) and 2^n put straight into the exponent bits; within 1.2 ulp of exp2
 * over [-126, 0]. Below -126 the bits are garbage (unsigned arithmetic: no overflow) and are
 * masked to +0 at the end with an integer AND: written as `x < -126 ? 0 : p * scale`, GCC sinks
 * the multiply into the branch, and without masked vectors (AVX2) it will not if-convert a
 * conditional multiply (it could trap), so the loops calling this stayed scalar. */
static inline float exp2_cpu(float x)
{
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float t = x + magic;
    float n = t - magic;
    float r = x - n;
    uint32_t ti, mi;
    memcpy(&ti, &t, sizeof ti);
    memcpy(&mi, &magic, sizeof mi);
    uint32_t bits = (ti - mi + 127u) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float p = 1.5252734e-5f;
    p = CPU_FMA(p, r, 1.5403530e-4f);
    p = CPU_FMA(p, r, 1.3333558e-3f);
    p = CPU_FMA(p, r, 9.6181291e-3f);
    p = CPU_FMA(p, r, 5.5504109e-2f);
    p = CPU_FMA(p, r, 2.4022651e-1f);
    p = CPU_FMA(p, r, 6.9314718e-1f);
    p = CPU_FMA(p, r, 1.0f);
    float y = p * scale;
    uint32_t yb;
    memcpy(&yb, &y, sizeof yb);
    yb &= x < -126.0f ? 0u : ~0u;
    memcpy(&y, &yb, sizeof y);
    return y;
}

/* ---------------------------------------------------------------------------------------------
 * Micro-kernels: R rows x NV vectors of accumulators in registers (R <= 6, NV <= 2, both
 * constants after inlining) */

/* st[i][u] = sum_d ks[i][d] * qt[d][u]     i < R keys, u < NV * VL query columns */
static ALWAYS_INLINE void qk_block(float *st, int ld_st, const float *ks, int hd, const float *qt, int ld_qt,
                                   const int R, const int NV)
{
    vec_t c[6][2];
    for (int i = 0; i < R; i++)
        for (int v = 0; v < NV; v++) c[i][v] = vec_zero();
    for (int d = 0; d < hd; d++) {
        vec_t q[2];
        for (int v = 0; v < NV; v++) q[v] = vec_load(qt + (size_t)d * ld_qt + v * VL);
        for (int i = 0; i < R; i++) {
            vec_t a = vec_set1(ks[(size_t)i * hd + d]);
            for (int v = 0; v < NV; v++) c[i][v] = vec_fma(a, q[v], c[i][v]);
        }
    }
    for (int i = 0; i < R; i++)
        for (int v = 0; v < NV; v++) vec_store(st + (size_t)i * ld_st + v * VL, c[i][v]);
}

/* acc[i][u] += sum_k p[k][i] * vs[k][u]    i < R query rows, u < NV * VL dims, k < nk */
static ALWAYS_INLINE void pv_block(float *acc, int ld_acc, const float *p, int ld_p, const float *vs, int ld_v, int nk,
                                   const int R, const int NV)
{
    vec_t c[6][2];
    for (int i = 0; i < R; i++)
        for (int v = 0; v < NV; v++) c[i][v] = vec_load(acc + (size_t)i * ld_acc + v * VL);
    for (int k = 0; k < nk; k++) {
        vec_t x[2];
        for (int v = 0; v < NV; v++) x[v] = vec_load(vs + (size_t)k * ld_v + v * VL);
        for (int i = 0; i < R; i++) {
            vec_t a = vec_set1(p[(size_t)k * ld_p + i]);
            for (int v = 0; v < NV; v++) c[i][v] = vec_fma(a, x[v], c[i][v]);
        }
    }
    for (int i = 0; i < R; i++)
        for (int v = 0; v < NV; v++) vec_store(acc + (size_t)i * ld_acc + v * VL, c[i][v]);
}

/* st (nk6, Mp) = ks (nk6, hd) . qt (hd, Mp); nk6 a multiple of 6, Mp of VL */
static void qk_tile(float *st, const float *ks, int nk6, const float *qt, int Mp, int hd)
{
    int m0 = 0;
    for (; m0 + 2 * VL <= Mp; m0 += 2 * VL)
        for (int k = 0; k < nk6; k += 6)
            qk_block(st + (size_t)k * Mp + m0, Mp, ks + (size_t)k * hd, hd, qt + m0, Mp, 6, 2);
    for (; m0 < Mp; m0 += VL)
        for (int k = 0; k < nk6; k += 6)
            qk_block(st + (size_t)k * Mp + m0, Mp, ks + (size_t)k * hd, hd, qt + m0, Mp, 6, 1);
}

/* st[k][m] = sum_d ks[k][d] * q[m][d] for a few query vectors q (M, hd) (a decode row): dot
 * products along head_dim, instead of qk_tile's VL-wide columns of which M would use few */
static void qk_dot(float *st, int ld_st, const float *ks, int nk, const float *q, int M, int hd)
{
    for (int k = 0; k < nk; k++)
        for (int m = 0; m < M; m++) {
            const float *kr = ks + (size_t)k * hd, *qr = q + (size_t)m * hd;
            vec_t c0 = vec_zero(), c1 = vec_zero();
            int d = 0;
            for (; d + 2 * VL <= hd; d += 2 * VL) {
                c0 = vec_fma(vec_load(kr + d), vec_load(qr + d), c0);
                c1 = vec_fma(vec_load(kr + d + VL), vec_load(qr + d + VL), c1);
            }
            for (; d + VL <= hd; d += VL) c0 = vec_fma(vec_load(kr + d), vec_load(qr + d), c0);
            float sum = vec_sum(c0) + vec_sum(c1);
            for (; d < hd; d++) sum = CPU_FMA(kr[d], qr[d], sum);
            st[(size_t)k * ld_st + m] = sum;
        }
}

/* acc (R, hd) += p^T . vs for R <= 6 rows whose probabilities are p[k][0..R) */
static ALWAYS_INLINE void pv_rows(float *acc, const float *p, int ld_p, const float *vs, int nk, int hd, const int R)
{
    int d0 = 0;
    for (; d0 + 2 * VL <= hd; d0 += 2 * VL) pv_block(acc + d0, hd, p, ld_p, vs + d0, hd, nk, R, 2);
    for (; d0 + VL <= hd; d0 += VL) pv_block(acc + d0, hd, p, ld_p, vs + d0, hd, nk, R, 1);
    for (; d0 < hd; d0++) /* head_dim not a multiple of VL */
        for (int i = 0; i < R; i++) {
            float c = acc[(size_t)i * hd + d0];
            for (int k = 0; k < nk; k++) c = CPU_FMA(p[(size_t)k * ld_p + i], vs[(size_t)k * hd + d0], c);
            acc[(size_t)i * hd + d0] = c;
        }
}

/* acc (M, hd) += st^T . vs, st (nk, Mp) */
static void pv_tile(float *acc, const float *st, int Mp, int M, const float *vs, int nk, int hd)
{
    int m = 0;
    for (; m + 6 <= M; m += 6) pv_rows(acc + (size_t)m * hd, st + m, Mp, vs, nk, hd, 6);
    switch (M - m) {
    case 5: pv_rows(acc + (size_t)m * hd, st + m, Mp, vs, nk, hd, 5); break;
    case 4: pv_rows(acc + (size_t)m * hd, st + m, Mp, vs, nk, hd, 4); break;
    case 3: pv_rows(acc + (size_t)m * hd, st + m, Mp, vs, nk, hd, 3); break;
    case 2: pv_rows(acc + (size_t)m * hd, st + m, Mp, vs, nk, hd, 2); break;
    case 1: pv_rows(acc + (size_t)m * hd, st + m, Mp, vs, nk, hd, 1); break;
    default: break;
    }
}

/* ---------------------------------------------------------------------------------------------
 * One work item */

struct attn_item {
    int seq, row0, n_rows, kv_head;
    int64_t cost; /* rows x keys: the order items are handed out in */
};

struct attn_args {
    struct cpu_ctx *c;
    float *out;       /* (n_tokens, n_heads, head_dim) */
    const float *q;   /* (n_tokens, n_heads, head_dim) */
    const float *q2;  /* STRING's shifted queries, same shape, or NULL */
    const void *kc;   /* (n_blocks, block_size, n_kv_heads, head_dim) this layer's keys, kv.dtype */
    const void *vc;   /* (n_blocks, block_size, n_kv_heads, head_dim) this layer's values */
    const struct attn_item *items;
    int n_heads, group;
    int window;       /* this layer's sliding window W, 0 = full causal */
    float exp_scale;  /* scale * log2(e) */
    const float *k_scale, *v_scale; /* (n_kv_heads) this layer's fp8 scales */
};

/* Scratch of one thread (floats), for head_dim hd: */
#define SCR_QT(hd) 0                                                 /* qt (hd, QUERY_TILE_MAX) */
#define SCR_ST(hd) (SCR_QT(hd) + (size_t)(hd) * QUERY_TILE_MAX)      /* st (KEY_TILE, QUERY_TILE_MAX) */
#define SCR_ACC(hd) (SCR_ST(hd) + (size_t)KEY_TILE * QUERY_TILE_MAX) /* acc (QUERY_TILE_MAX, hd) */
#define SCR_ML(hd) (SCR_ACC(hd) + (size_t)QUERY_TILE_MAX * (hd))     /* m, l, m_new, alpha (QUERY_TILE_MAX) */
#define SCR_KS(hd) (SCR_ML(hd) + 4 * QUERY_TILE_MAX)                 /* ks (KEY_TILE, hd) */
#define SCR_VS(hd) (SCR_KS(hd) + (size_t)KEY_TILE * (hd))            /* vs (KEY_TILE, hd) */
#define SCR_QT2(hd) (SCR_VS(hd) + (size_t)KEY_TILE * (hd))          /* STRING: qt of q_shift */
#define SCR_ST2(hd) (SCR_QT2(hd) + (size_t)(hd) * QUERY_TILE_MAX)    /* STRING: st of q_shift */
#define SCR_SIZE(hd) (SCR_ST2(hd) + (size_t)KEY_TILE * QUERY_TILE_MAX)

static void attn_item_run(void *arg, int item_idx, int ith)
{
    const struct attn_args *a = arg;
    struct cpu_ctx *c = a->c;
    const struct bk_batch *b = &c->batch;
    const struct attn_item *it = &a->items[item_idx];
    const int hd = c->kv.head_dim, n_kv = c->kv.n_kv_heads, bs = c->kv.block_size;
    const int G = a->group, kvh = it->kv_head;
    const int M = it->n_rows * G;
    /* a decode row with few query heads per kv head takes dot products (q kept row-major);
     * decided per sequence, so the result never depends on how rows were tiled */
    const int dot = b->query_start[it->seq + 1] - b->query_start[it->seq] == 1 && 4 * G <= VL;
    const int Mp = dot ? M : (M + VL - 1) / VL * VL; /* columns of st (and of qt unless dot) */
    const int pre_rope = c->kv.k_storage == BK_K_PRE_ROPE;
    const int half = b->rotary_dim / 2;
    const int32_t *bt = b->block_tables + (size_t)it->seq * b->block_table_stride;
    const float *rope_tab = pre_rope ? c->rope_table + c->rope_table_off[it->seq] : NULL;

    float *scr = c->attn_scratch[ith];
    float *restrict qt = scr + SCR_QT(hd);
    float *restrict st = scr + SCR_ST(hd);
    float *restrict acc = scr + SCR_ACC(hd);
    float *restrict m_run = scr + SCR_ML(hd);
    float *restrict l_run = m_run + QUERY_TILE_MAX;
    float *restrict m_new = l_run + QUERY_TILE_MAX;
    float *restrict alpha = m_new + QUERY_TILE_MAX;
    float *restrict ks = scr + SCR_KS(hd);
    float *restrict vs = scr + SCR_VS(hd);
    float *restrict qt2 = scr + SCR_QT2(hd);
    float *restrict st2 = scr + SCR_ST2(hd);
    int pos_m[QUERY_TILE_MAX];
    /* STRING: key j is scored with the shifted query of m when pos_m[m] - j >= S */
    const int S = a->q2 && b->string_shift ? b->string_shift[it->seq] : 0;
    /* sliding window: key j is masked for m when j <= win_m[m] (-1: no key is) */
    const int W = a->window;
    int win_m[QUERY_TILE_MAX];

    /* queries: qt[d][m], m = row * G + g, query head kvh * G + g */
    int max_pos = -1, min_pos = 1 << 30;
    for (int m = 0; m < Mp; m++) {
        if (m < M) {
            int r = it->row0 + m / G;
            const size_t qoff = ((size_t)r * a->n_heads + (size_t)kvh * G + m % G) * hd;
            const float *q = a->q + qoff;
            if (dot)
                memcpy(qt + (size_t)m * hd, q, (size_t)hd * sizeof(float));
            else
                for (int d = 0; d < hd; d++) qt[(size_t)d * Mp + m] = q[d];
            if (S > 0) {
                const float *q2 = a->q2 + qoff;
                if (dot)
                    memcpy(qt2 + (size_t)m * hd, q2, (size_t)hd * sizeof(float));
                else
                    for (int d = 0; d < hd; d++) qt2[(size_t)d * Mp + m] = q2[d];
            }
            pos_m[m] = b->positions[r];
            win_m[m] = W > 0 ? pos_m[m] - W : -1;
            if (pos_m[m] > max_pos) max_pos = pos_m[m];
            if (pos_m[m] < min_pos) min_pos = pos_m[m];
        } else {
            for (int d = 0; d < hd; d++) qt[(size_t)d * Mp + m] = 0.0f;
            if (S > 0)
                for (int d = 0; d < hd; d++) qt2[(size_t)d * Mp + m] = 0.0f;
            pos_m[m] = 1 << 30; /* padding column: never masked, never written out */
            win_m[m] = -1;
        }
        m_run[m] = -INFINITY;
        l_run[m] = 0.0f;
    }
    memset(acc, 0, (size_t)M * hd * sizeof(float));

    /* the first key any row of the item sees (0 without a window) */
    const int lo = W > 0 && min_pos - W + 1 > 0 ? min_pos - W + 1 : 0;
    for (int j0 = lo / KEY_TILE * KEY_TILE; j0 <= max_pos; j0 += KEY_TILE) {
        const int nk = max_pos + 1 - j0 < KEY_TILE ? max_pos + 1 - j0 : KEY_TILE;
        const int nk6 = (nk + 5) / 6 * 6;

        /* gather the tile: key j lives in block bt[j / bs] at offset j % bs */
        for (int k = 0; k < nk; k++) {
            const int j = j0 + k;
            if (j < lo) { /* below every row's window: maybe a freed block, never read */
                memset(ks + (size_t)k * hd, 0, (size_t)hd * sizeof(float));
                memset(vs + (size_t)k * hd, 0, (size_t)hd * sizeof(float));
                continue;
            }
            const size_t slot = (size_t)bt[j / bs] * bs + (size_t)(j % bs);
            float *restrict kd = ks + (size_t)k * hd;
            float *restrict vd = vs + (size_t)k * hd;
            if (c->kv.dtype == BK_F32) {
                const float *kr = (const float *)a->kc + (slot * n_kv + kvh) * hd;
                const float *vr = (const float *)a->vc + (slot * n_kv + kvh) * hd;
                if (pre_rope)
                    rope_rotate_cpu(kd, kr, rope_tab + (size_t)j * b->rotary_dim, half, hd);
                else
                    for (int d = 0; d < hd; d++) kd[d] = kr[d];
                for (int d = 0; d < hd; d++) vd[d] = vr[d];
            } else { /* bf16/f16/fp8 storage: decode (fp8: times the head's scale), then rotate */
                const size_t e = (slot * n_kv + kvh) * hd * c->kv_elem;
                cpu_kv_decode(c, kd, (const char *)a->kc + e, hd, a->k_scale[kvh]);
                cpu_kv_decode(c, vd, (const char *)a->vc + e, hd, a->v_scale[kvh]);
                if (pre_rope) rope_rotate_cpu(kd, kd, rope_tab + (size_t)j * b->rotary_dim, half, hd);
            }
        }
        memset(ks + (size_t)nk * hd, 0, (size_t)(nk6 - nk) * hd * sizeof(float));

        /* STRING: the tile's keys are all local (j > p - S for every row), all shifted, or mixed */
        const int any_shifted = S > 0 && j0 <= max_pos - S;
        const int all_shifted = any_shifted && j0 + nk - 1 <= min_pos - S;
        if (!all_shifted) {
            if (dot)
                qk_dot(st, Mp, ks, nk, qt, M, hd);
            else
                qk_tile(st, ks, nk6, qt, Mp, hd);
        }
        if (any_shifted) {
            float *dst = all_shifted ? st : st2;
            if (dot)
                qk_dot(dst, Mp, ks, nk, qt2, M, hd);
            else
                qk_tile(dst, ks, nk6, qt2, Mp, hd);
            if (!all_shifted)
                for (int k = 0; k < nk; k++) {
                    float *restrict s1 = st + (size_t)k * Mp;
                    const float *restrict s2 = st2 + (size_t)k * Mp;
                    const int lim = j0 + k + S; /* shifted for m when pos_m[m] >= lim */
                    for (int m = 0; m < M; m++) s1[m] = pos_m[m] >= lim ? s2[m] : s1[m];
                }
        }

        /* causal mask (only in tiles that reach past the smallest position) and the window's
         * (only in tiles that start at or below the largest position's window), running max */
        const int need_mask = j0 + nk - 1 > min_pos;
        const int need_win = W > 0 && j0 <= max_pos - W;
        for (int m = 0; m < Mp; m++) m_new[m] = m_run[m];
        for (int k = 0; k < nk; k++) {
            float *restrict s = st + (size_t)k * Mp;
            const int j = j0 + k;
            if (need_mask && need_win)
                for (int m = 0; m < Mp; m++) s[m] = j > pos_m[m] || j <= win_m[m] ? -INFINITY : s[m];
            else if (need_mask)
                for (int m = 0; m < Mp; m++) s[m] = j > pos_m[m] ? -INFINITY : s[m];
            else if (need_win)
                for (int m = 0; m < Mp; m++) s[m] = j <= win_m[m] ? -INFINITY : s[m];
            for (int m = 0; m < Mp; m++) m_new[m] = s[m] > m_new[m] ? s[m] : m_new[m];
        }
        int rescale = 0;
        for (int m = 0; m < Mp; m++) {
            /* all keys so far masked (below the window): subtract 0, exp(-inf - 0) = 0 */
            const float mref = m_new[m] == -INFINITY ? 0.0f : m_new[m];
            alpha[m] = exp2_cpu((m_run[m] - mref) * a->exp_scale);
            rescale |= alpha[m] != 1.0f;
            l_run[m] *= alpha[m];
            m_run[m] = m_new[m];
            m_new[m] = mref;
        }

        /* p = exp(scale (st - m_new)) in place, l += sum_k p */
        for (int k = 0; k < nk; k++) {
            float *restrict s = st + (size_t)k * Mp;
            for (int m = 0; m < Mp; m++) {
                s[m] = exp2_cpu((s[m] - m_new[m]) * a->exp_scale);
                l_run[m] += s[m];
            }
        }

        /* acc = acc * alpha + p^T . vs (alpha is exactly 1 everywhere once the maxima settle) */
        if (rescale)
            for (int m = 0; m < M; m++) {
                float *restrict am = acc + (size_t)m * hd;
                for (int d = 0; d < hd; d++) am[d] *= alpha[m];
            }
        pv_tile(acc, st, Mp, M, vs, nk, hd);
    }

    for (int m = 0; m < M; m++) {
        int r = it->row0 + m / G;
        float *o = a->out + ((size_t)r * a->n_heads + (size_t)kvh * G + m % G) * hd;
        const float *am = acc + (size_t)m * hd;
        for (int d = 0; d < hd; d++) o[d] = am[d] / l_run[m];
    }
}

/* ---------------------------------------------------------------------------------------------
 * BK_K_PRE_ROPE: cos/sin of every key position of every sequence, once per batch */

struct rope_table_args {
    struct cpu_ctx *c;
    int chunk; /* positions per item */
    int *item_seq, *item_pos0;
};

static void rope_table_item(void *arg, int item, int ith)
{
    const struct rope_table_args *a = arg;
    const struct bk_batch *b = &a->c->batch;
    int s = a->item_seq[item], p0 = a->item_pos0[item];
    int p1 = p0 + a->chunk < a->c->seq_max_pos[s] + 1 ? p0 + a->chunk : a->c->seq_max_pos[s] + 1;
    int half = b->rotary_dim / 2;
    float *tab = a->c->rope_table + a->c->rope_table_off[s];
    for (int p = p0; p < p1; p++)
        rope_angles_cpu(tab + (size_t)p * b->rotary_dim, p, b->inv_freq + (size_t)s * half, b->attn_factor[s], half);
}

static void rope_table_build(struct cpu_ctx *c)
{
    const struct bk_batch *b = &c->batch;
    if (b->n_seqs > c->rope_table_off_cap) {
        c->rope_table_off_cap = b->n_seqs;
        c->rope_table_off = xrealloc(c->rope_table_off, (size_t)b->n_seqs * sizeof *c->rope_table_off);
    }
    const int chunk = 256;
    size_t total = 0;
    int n_items = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        c->rope_table_off[s] = total;
        total += (size_t)(c->seq_max_pos[s] + 1) * b->rotary_dim;
        n_items += (c->seq_max_pos[s] + chunk) / chunk;
    }
    if (!c->rope_table || total > c->rope_table_cap) { /* never NULL: offsets are added to it */
        c->rope_table_cap = total;
        free(c->rope_table);
        c->rope_table = xmalloc(total * sizeof(float));
    }
    struct rope_table_args a = {c, chunk, xmalloc((size_t)n_items * sizeof(int) + 1),
                                xmalloc((size_t)n_items * sizeof(int) + 1)};
    int i = 0;
    for (int s = 0; s < b->n_seqs; s++)
        for (int p0 = 0; p0 <= c->seq_max_pos[s]; p0 += chunk) {
            a.item_seq[i] = s;
            a.item_pos0[i] = p0;
            i++;
        }
    if (b->rotary_dim > 0) cpu_parallel_for(c->pool, n_items, rope_table_item, &a);
    free(a.item_seq);
    free(a.item_pos0);
    c->rope_table_valid = 1;
}

/* ---------------------------------------------------------------------------------------------
 * The op */

static int item_cmp(const void *x, const void *y)
{
    const struct attn_item *a = x, *b = y;
    if (a->cost != b->cost) return a->cost > b->cost ? -1 : 1;
    /* ties: keep a fixed order so the hand-out order does not depend on qsort */
    if (a->seq != b->seq) return a->seq - b->seq;
    if (a->row0 != b->row0) return a->row0 - b->row0;
    return a->kv_head - b->kv_head;
}

/* out (n_tokens, n_heads, head_dim) = softmax(scale * q k^T, causal) v, GQA. */
void cpu_attention(void *ctx, bk_buf *out, const bk_buf *q, const bk_buf *q_shift, int layer, int n_heads,
                   float scale)
{
    struct cpu_ctx *c = ctx;
    CHECK(c->kv_ready && c->have_batch, "attention before kv_init / batch_begin");
    CHECK(layer >= 0 && layer < c->kv.n_layers, "layer %d of %d", layer, c->kv.n_layers);
    const struct bk_batch *b = &c->batch;
    const int hd = c->kv.head_dim, n_kv = c->kv.n_kv_heads;
    CHECK(n_heads > 0 && n_heads % n_kv == 0, "n_heads %d, n_kv_heads %d", n_heads, n_kv);
    const int G = n_heads / n_kv;
    CHECK(G <= QUERY_TILE_MAX, "GQA group %d > %d", G, QUERY_TILE_MAX);
    size_t n = (size_t)b->n_tokens * n_heads * hd;
    CHECK(q->n >= n && out->n >= n, "attention %d x %d x %d: buffers %zu %zu", b->n_tokens, n_heads, hd, q->n, out->n);
    CHECK(out != q && out != q_shift, "attention in place");
    CHECK(!q_shift || q_shift->n >= n, "attention q_shift: %zu of %zu", q_shift->n, n);
    CHECK(scale > 0.0f, "scale %g: the running max is taken over unscaled scores", scale);
    if (b->n_tokens == 0) return;

    if (c->attn_scratch_n < SCR_SIZE(hd)) {
        c->attn_scratch_n = SCR_SIZE(hd);
        for (int i = 0; i < c->n_threads; i++) {
            free(c->attn_scratch[i]);
            c->attn_scratch[i] = aligned_alloc(64, (c->attn_scratch_n * sizeof(float) + 63) / 64 * 64);
            CHECK(c->attn_scratch[i], "out of memory");
        }
    }
    if (c->kv.k_storage == BK_K_PRE_ROPE && !c->rope_table_valid) rope_table_build(c);

    /* work items: each sequence's rows in tiles, times the kv heads; tiles of QUERY_TILE_MAX
     * query vectors, halved while that leaves fewer than 4 items per thread */
    const int W = c->kv.sliding_window ? c->kv.sliding_window[layer] : 0;
    int rows_per_tile = QUERY_TILE_MAX / G, n_items;
    for (;;) {
        n_items = 0;
        for (int s = 0; s < b->n_seqs; s++) {
            int nr = b->query_start[s + 1] - b->query_start[s];
            n_items += (nr + rows_per_tile - 1) / rows_per_tile * n_kv;
        }
        if (n_items >= 4 * c->n_threads || rows_per_tile * G / 2 < QUERY_TILE_MIN || rows_per_tile == 1) break;
        rows_per_tile /= 2;
    }
    struct attn_item *items = xmalloc((size_t)n_items * sizeof *items + 1);
    int i = 0;
    for (int s = 0; s < b->n_seqs; s++)
        for (int r0 = b->query_start[s]; r0 < b->query_start[s + 1]; r0 += rows_per_tile) {
            int nr = b->query_start[s + 1] - r0 < rows_per_tile ? b->query_start[s + 1] - r0 : rows_per_tile;
            int max_pos = 0, min_pos = 1 << 30;
            for (int r = r0; r < r0 + nr; r++) {
                max_pos = b->positions[r] > max_pos ? b->positions[r] : max_pos;
                min_pos = b->positions[r] < min_pos ? b->positions[r] : min_pos;
            }
            int lo = W > 0 && min_pos - W + 1 > 0 ? min_pos - W + 1 : 0;
            for (int h = 0; h < n_kv; h++) items[i++] = (struct attn_item){s, r0, nr, h, (int64_t)nr * (max_pos + 1 - lo)};
        }
    qsort(items, (size_t)n_items, sizeof *items, item_cmp);

    struct attn_args a = {c, out->data, q->data, q_shift ? q_shift->data : NULL, c->k_cache[layer],
                          c->v_cache[layer], items, n_heads, G, W, scale * 1.44269504f,
                          c->k_scale + (size_t)layer * n_kv, c->v_scale + (size_t)layer * n_kv};
    cpu_parallel_for(c->pool, n_items, attn_item_run, &a);
    free(items);
}
