/* elementwise.cu - the CUDA backend's memory-bound kernels: matmul input cast, dtype conversion,
 * embedding gather, RMSNorm, the fused residual add + RMSNorm, the final norm over gathered rows, RoPE,
 * the fused bias + RoPE + KV-cache write, kv_store, SwiGLU (SiLU x mul
 * in one pass), residual add, bias add, gather_rows. Each mirrors the fp32 loop of the CPU
 * reference (kernels/cpu/) with fp32 math; weights may be bf16/f16 (converted on read).
 *
 * Activation dtypes (common.cuh): every activation argument is a void * with its element type,
 * BK_F32 or the backend's 16-bit type. Kernels load through ld_act, compute in fp32 (norm sums,
 * the rotation, silu) and round once on the store (st_act), so a bf16 activation is exactly the
 * fp32 computation rounded to bf16. The dtype is uniform over a launch (a non-divergent switch);
 * rejected: one template instantiation per dtype combination (3^3 copies of each kernel for a
 * few instructions per element of a bandwidth-bound loop).
 *
 * Graph safety: every launcher's grid depends only on its size arguments (n_tokens, n_rows, dim),
 * never on batch contents, so a captured decode step replays correctly with new metadata.
 *
 * RoPE precision (REFERENCES-rope.md §1, §10): the angle is ONE fp32 multiply (__fmul_rn, so no
 * FMA can fold it into anything), then full-range sincosf (this file must never be built with
 * --use_fast_math: __sinf is wrong beyond a few radians and angles reach 1.3e5), then cos and
 * sin are multiplied by the sequence's attention factor, and the rotation itself uses explicit
 * _rn ops so the result does not depend on FMA contraction. One thread per (row, pair) computes
 * its sincosf once and rotates that pair in every q and k head. Rejected: host-computed cos/sin
 * tables (64 MiB per frequency set at 128k, and per-sequence frequencies make them per batch).
 * q_scale multiplies q after the rotation (one fp32 multiply, as the CPU); STRING rows also get
 * q rotated at max(0, p - S + W) (a second sincosf) into q_shift, times q_scale. */
#include "common.cuh"

static inline unsigned int blocks_for(size_t n, int threads)
{
    size_t b = (n + (size_t)threads - 1) / (size_t)threads;
    if (b > 65535u * 32u) b = 65535u * 32u; /* grid-stride loops cover the rest */
    return (unsigned int)(b ? b : 1);
}

// ------------------------------------------------------------------------------------------------
// cast: y (n) = round(x (n)) to bf16/f16

template <typename T>
__global__ void cast_kernel1(T *y, const float *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = from_f32<T>(x[i]);
}

void cuda_cast_f32(void *dst, enum bk_dtype dt, const float *src, size_t n, cudaStream_t stream)
{
    if (n == 0) return;
    if (dt == BK_BF16)
        cast_kernel1<<<blocks_for(n, 256), 256, 0, stream>>>((__nv_bfloat16 *)dst, src, n);
    else
        cast_kernel1<<<blocks_for(n, 256), 256, 0, stream>>>((__half *)dst, src, n);
    CUDA_LAUNCH_CHECK();
}

// ------------------------------------------------------------------------------------------------
// convert: dst (n) = src (n) between f32/bf16/f16 (staging for kernels that take fp32 q/out)

__global__ void convert_kernel1(void *dst, int ddt, const void *src, int sdt, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        st_act(dst, ddt, i, ld_act(src, sdt, i));
}

void cuda_convert(void *dst, enum bk_dtype ddt, const void *src, enum bk_dtype sdt, size_t n, cudaStream_t stream)
{
    if (n == 0) return;
    convert_kernel1<<<blocks_for(n, 256), 256, 0, stream>>>(dst, ddt, src, sdt, n);
    CUDA_LAUNCH_CHECK();
}

// ------------------------------------------------------------------------------------------------
// embed: x (n_tokens, dim) = table[tokens[r]] ; table (vocab, dim)

__global__ void embed_kernel1(void *x, int xdt, const void *table, int tdt, const int32_t *tokens, int dim)
{
    const int r = blockIdx.x;
    const size_t src = (size_t)tokens[r] * dim, dst = (size_t)r * dim;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) st_act(x, xdt, dst + d, ld_act(table, tdt, src + d));
}

void cuda_embed(void *x, enum bk_dtype xdt, const void *table, enum bk_dtype tdt, const int32_t *tokens,
                int n_tokens, int dim, cudaStream_t stream)
{
    if (n_tokens == 0) return;
    embed_kernel1<<<n_tokens, 256, 0, stream>>>(x, xdt, table, tdt, tokens, dim);
    CUDA_LAUNCH_CHECK();
}

// ------------------------------------------------------------------------------------------------
// rmsnorm: out (n_rows, dim) = x / sqrt(mean(x^2) + eps) * w ; one CTA per row, fp32 sums.
// out may equal x: every thread reads its own elements for the sum before the barrier and
// writes only the elements it read.

__device__ __forceinline__ float block_sum(float v, float *red /* (32) */)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = (blockDim.x + 31) >> 5;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    if (warp == 0) { /* only warp 0 touches red now: no other warp reads red[0] while it is rewritten */
        v = lane < nw ? red[lane] : 0.f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) red[0] = v;
    }
    __syncthreads();
    return red[0];
}

/* rows (NULL: row i of x for output row i): output row i normalizes x row rows[i] (the final
 * norm reading the wanted rows of the fp32 residual directly: gather_rows + rmsnorm in one) */
__global__ void __launch_bounds__(256) rmsnorm_kernel1(void *out, int odt, const void *x, int xdt, const void *w,
                                                       int wdt, int dim, float eps, const int32_t *rows)
{
    __shared__ float red[32];
    const size_t base = (size_t)(rows ? rows[blockIdx.x] : (int)blockIdx.x) * dim;
    const size_t obase = (size_t)blockIdx.x * dim;
    float ss = 0.f;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) {
        const float v = ld_act(x, xdt, base + d);
        ss += v * v;
    }
    ss = block_sum(ss, red);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int d = threadIdx.x; d < dim; d += blockDim.x)
        st_act(out, odt, obase + d, (ld_act(x, xdt, base + d) * inv) * ld_act(w, wdt, d));
}

static int norm_threads(int dim) { return dim >= 256 ? 256 : ((dim + 31) / 32) * 32; }

void cuda_rmsnorm(void *out, enum bk_dtype odt, const void *x, enum bk_dtype xdt, const void *w,
                  enum bk_dtype wdt, int n_rows, int dim, float eps, cudaStream_t stream)
{
    if (n_rows == 0) return;
    rmsnorm_kernel1<<<n_rows, norm_threads(dim), 0, stream>>>(out, odt, x, xdt, w, wdt, dim, eps, nullptr);
    CUDA_LAUNCH_CHECK();
}

void cuda_gather_rmsnorm(void *out, enum bk_dtype odt, const void *x, enum bk_dtype xdt, const int32_t *rows,
                         const void *w, enum bk_dtype wdt, int n_rows, int dim, float eps, cudaStream_t stream)
{
    if (n_rows == 0) return;
    rmsnorm_kernel1<<<n_rows, norm_threads(dim), 0, stream>>>(out, odt, x, xdt, w, wdt, dim, eps, rows);
    CUDA_LAUNCH_CHECK();
}

/* add_rmsnorm: x += y (stored rounded to x's dtype), then out = rmsnorm(x as stored) * w. The
 * same thread stores x[d] and later reads it back, so no barrier is needed between the two
 * passes beyond block_sum's; the sum of squares is over the stored (rounded) values, so the
 * result equals add() then rmsnorm() bit for bit. */
__global__ void __launch_bounds__(256) add_rmsnorm_kernel1(void *out, int odt, void *x, int xdt, const void *y,
                                                           int ydt, const void *w, int wdt, int dim, float eps)
{
    __shared__ float red[32];
    const size_t base = (size_t)blockIdx.x * dim;
    float ss = 0.f;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) {
        st_act(x, xdt, base + d, ld_act(x, xdt, base + d) + ld_act(y, ydt, base + d));
        const float v = ld_act(x, xdt, base + d); /* as stored */
        ss += v * v;
    }
    ss = block_sum(ss, red);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int d = threadIdx.x; d < dim; d += blockDim.x)
        st_act(out, odt, base + d, (ld_act(x, xdt, base + d) * inv) * ld_act(w, wdt, d));
}

void cuda_add_rmsnorm(void *out, enum bk_dtype odt, void *x, enum bk_dtype xdt, const void *y, enum bk_dtype ydt,
                      const void *w, enum bk_dtype wdt, int n_rows, int dim, float eps, cudaStream_t stream)
{
    if (n_rows == 0) return;
    add_rmsnorm_kernel1<<<n_rows, norm_threads(dim), 0, stream>>>(out, odt, x, xdt, y, ydt, w, wdt, dim, eps);
    CUDA_LAUNCH_CHECK();
}

// ------------------------------------------------------------------------------------------------
// rope: rotate q (n_tokens, n_heads, head_dim) and k (n_tokens, n_kv_heads, head_dim) in place,
// HF rotate-half pairs (x[i], x[i + rotary_dim/2]); grid = n_tokens, threads over pairs.
// Then q row r times q_scale[r] (k never). STRING rows (q_shift given, S = string_shift[s] > 0)
// first get the unrotated q rotated at max(0, p - S + W), times q_scale[r], in q_shift: the same
// thread reads a pair once and writes both results, so no other thread sees a rotated value.
// Dims >= rotary_dim: q_shift = q * qs, q *= qs (only when there is something to write).
// q, k and q_shift share the element type adt.

__global__ void rope_kernel1(void *q, void *k, void *q_shift, int adt, const int32_t *positions,
                             const int32_t *row_seq, const float *inv_freq /* (n_seqs, half) */,
                             const float *attn_factor /* (n_seqs) */,
                             const float *q_scale /* (n_tokens) or NULL */,
                             const int32_t *string_shift /* (n_seqs) or NULL */,
                             const int32_t *string_local /* (n_seqs) or NULL */, int n_heads,
                             int n_kv_heads, int head_dim, int half)
{
    const int r = blockIdx.x;
    const int s = row_seq[r];
    const float qs = q_scale ? q_scale[r] : 1.f;
    const int S = q_shift && string_shift ? string_shift[s] : 0;
    const size_t qr = (size_t)r * n_heads * head_dim; /* element offset of row r in q / q_shift */
    const bool qsr = S > 0;
    if (half > 0) {
        const float pos = (float)positions[r];
        const float pos_sh = S > 0 ? (float)max(0, positions[r] - S + string_local[s]) : 0.f;
        const float af = attn_factor[s];
        for (int i = threadIdx.x; i < half; i += blockDim.x) {
            const float fr = inv_freq[(size_t)s * half + i];
            const float ang = __fmul_rn(pos, fr);
            float sn, cs;
            sincosf(ang, &sn, &cs);
            cs = __fmul_rn(cs, af);
            sn = __fmul_rn(sn, af);
            float sn2 = 0.f, cs2 = 0.f;
            if (qsr) {
                sincosf(__fmul_rn(pos_sh, fr), &sn2, &cs2);
                cs2 = __fmul_rn(cs2, af);
                sn2 = __fmul_rn(sn2, af);
            }
            for (int h = 0; h < n_heads; h++) {
                const size_t v = qr + (size_t)h * head_dim;
                const float x1 = ld_act(q, adt, v + i), x2 = ld_act(q, adt, v + i + half);
                if (qsr) {
                    st_act(q_shift, adt, v + i, __fmul_rn(__fsub_rn(__fmul_rn(x1, cs2), __fmul_rn(x2, sn2)), qs));
                    st_act(q_shift, adt, v + i + half,
                           __fmul_rn(__fadd_rn(__fmul_rn(x2, cs2), __fmul_rn(x1, sn2)), qs));
                }
                st_act(q, adt, v + i, __fmul_rn(__fsub_rn(__fmul_rn(x1, cs), __fmul_rn(x2, sn)), qs));
                st_act(q, adt, v + i + half, __fmul_rn(__fadd_rn(__fmul_rn(x2, cs), __fmul_rn(x1, sn)), qs));
            }
            if (k) {
                const size_t kr = (size_t)r * n_kv_heads * head_dim;
                for (int h = 0; h < n_kv_heads; h++) {
                    const size_t v = kr + (size_t)h * head_dim;
                    const float x1 = ld_act(k, adt, v + i), x2 = ld_act(k, adt, v + i + half);
                    st_act(k, adt, v + i, __fsub_rn(__fmul_rn(x1, cs), __fmul_rn(x2, sn)));
                    st_act(k, adt, v + i + half, __fadd_rn(__fmul_rn(x2, cs), __fmul_rn(x1, sn)));
                }
            }
        }
    }
    if (q_scale || qsr)
        for (int d = 2 * half + threadIdx.x; d < head_dim; d += blockDim.x)
            for (int h = 0; h < n_heads; h++) {
                const size_t e = qr + (size_t)h * head_dim + d;
                const float x = ld_act(q, adt, e);
                if (qsr) st_act(q_shift, adt, e, __fmul_rn(x, qs));
                st_act(q, adt, e, __fmul_rn(x, qs));
            }
}

void cuda_rope(void *q, void *k, void *q_shift, enum bk_dtype adt, const struct cuda_batch *b, int n_heads,
               int n_kv_heads, int head_dim, cudaStream_t stream)
{
    const int half = b->rotary_dim / 2;
    CHECK(b->rotary_dim <= head_dim && b->rotary_dim % 2 == 0, "rotary_dim %d, head_dim %d",
          b->rotary_dim, head_dim);
    if (!b->has_string) q_shift = NULL; /* nothing to write */
    if (b->n_tokens == 0 || (half == 0 && !b->q_scale && !q_shift)) return;
    CHECK(half == 0 || (b->inv_freq && b->attn_factor), "rope: the batch carries no inv_freq/attn_factor");
    const int pass = head_dim - 2 * half; /* dims >= rotary_dim */
    const int work = half > pass ? half : pass;
    const int threads = work >= 128 ? 128 : ((work + 31) / 32) * 32;
    rope_kernel1<<<b->n_tokens, threads, 0, stream>>>(q, k, q_shift, adt, b->positions, b->row_seq,
                                                      b->inv_freq, b->attn_factor, b->q_scale,
                                                      b->string_shift, b->string_local, n_heads,
                                                      n_kv_heads, head_dim, half);
    CUDA_LAUNCH_CHECK();
}

// ------------------------------------------------------------------------------------------------
// rope_kv: add_bias(q, k, v) + rope(q, k, q_shift) + kv_store(k, v) in one pass (backend.h
// rope_kv_store). Every value is rounded exactly where the three ops would round it (the biased
// q/k/v to the activation dtype, the rotated k to it, then to the cache's T), so the cache and q
// hold the same bits as the unfused ops; the k and v activations are only read.

/* v rounded to the activation dtype dt (what an st_act/ld_act round trip leaves) */
__device__ __forceinline__ float round_act(float v, int dt)
{
    if (dt == BK_BF16) return __bfloat162float(__float2bfloat16_rn(v));
    if (dt == BK_F16) return __half2float(__float2half_rn(v));
    return v;
}

/* x[i] (+ b[bi], rounded as add_bias stores it) */
__device__ __forceinline__ float ld_biased(const void *x, int adt, size_t i, const void *b, int wdt, size_t bi)
{
    const float v = ld_act(x, adt, i);
    return b ? round_act(v + ld_act(b, wdt, bi), adt) : v;
}

template <typename T>
__global__ void rope_kv_kernel1(void *q, const void *k, const void *v, void *q_shift, int adt, const void *bq,
                                const void *bk, const void *bv, int wdt, T *kc, T *vc, const int64_t *slot_mapping,
                                int rotate_k, const int32_t *positions, const int32_t *row_seq, const float *inv_freq,
                                const float *attn_factor, const float *q_scale, const int32_t *string_shift,
                                const int32_t *string_local, int n_heads, int n_kv_heads, int head_dim, int half)
{
    const int r = blockIdx.x;
    const int s = row_seq[r];
    const float qs = q_scale ? q_scale[r] : 1.f;
    const int S = q_shift && string_shift ? string_shift[s] : 0;
    const size_t qr = (size_t)r * n_heads * head_dim;
    const int kvd = n_kv_heads * head_dim;
    const size_t kr = (size_t)r * kvd;
    const bool qsr = S > 0;
    const int64_t slot = slot_mapping[r];
    T *kd = slot >= 0 ? kc + (size_t)slot * kvd : nullptr; /* slot < 0: a padding row, nothing stored */
    T *vd = slot >= 0 ? vc + (size_t)slot * kvd : nullptr;
    if (half > 0) {
        const float pos = (float)positions[r];
        const float pos_sh = S > 0 ? (float)max(0, positions[r] - S + string_local[s]) : 0.f;
        const float af = attn_factor[s];
        for (int i = threadIdx.x; i < half; i += blockDim.x) {
            const float fr = inv_freq[(size_t)s * half + i];
            const float ang = __fmul_rn(pos, fr);
            float sn, cs;
            sincosf(ang, &sn, &cs);
            cs = __fmul_rn(cs, af);
            sn = __fmul_rn(sn, af);
            float sn2 = 0.f, cs2 = 0.f;
            if (qsr) {
                sincosf(__fmul_rn(pos_sh, fr), &sn2, &cs2);
                cs2 = __fmul_rn(cs2, af);
                sn2 = __fmul_rn(sn2, af);
            }
            for (int h = 0; h < n_heads; h++) {
                const size_t e = qr + (size_t)h * head_dim;
                const size_t be = (size_t)h * head_dim;
                const float x1 = ld_biased(q, adt, e + i, bq, wdt, be + i);
                const float x2 = ld_biased(q, adt, e + i + half, bq, wdt, be + i + half);
                if (qsr) {
                    st_act(q_shift, adt, e + i, __fmul_rn(__fsub_rn(__fmul_rn(x1, cs2), __fmul_rn(x2, sn2)), qs));
                    st_act(q_shift, adt, e + i + half,
                           __fmul_rn(__fadd_rn(__fmul_rn(x2, cs2), __fmul_rn(x1, sn2)), qs));
                }
                st_act(q, adt, e + i, __fmul_rn(__fsub_rn(__fmul_rn(x1, cs), __fmul_rn(x2, sn)), qs));
                st_act(q, adt, e + i + half, __fmul_rn(__fadd_rn(__fmul_rn(x2, cs), __fmul_rn(x1, sn)), qs));
            }
            if (rotate_k && kd)
                for (int h = 0; h < n_kv_heads; h++) {
                    const size_t be = (size_t)h * head_dim;
                    const float x1 = ld_biased(k, adt, kr + be + i, bk, wdt, be + i);
                    const float x2 = ld_biased(k, adt, kr + be + i + half, bk, wdt, be + i + half);
                    kd[be + i] = from_f32<T>(round_act(__fsub_rn(__fmul_rn(x1, cs), __fmul_rn(x2, sn)), adt));
                    kd[be + i + half] = from_f32<T>(round_act(__fadd_rn(__fmul_rn(x2, cs), __fmul_rn(x1, sn)), adt));
                }
        }
    }
    /* q dims >= rotary_dim: bias, q_scale, STRING's copy */
    if (q_scale || qsr || bq)
        for (int d = 2 * half + threadIdx.x; d < head_dim; d += blockDim.x)
            for (int h = 0; h < n_heads; h++) {
                const size_t e = qr + (size_t)h * head_dim + d;
                const float x = ld_biased(q, adt, e, bq, wdt, (size_t)h * head_dim + d);
                if (qsr) st_act(q_shift, adt, e, __fmul_rn(x, qs));
                st_act(q, adt, e, __fmul_rn(x, qs));
            }
    if (!kd) return;
    /* k dims that are not rotated (all of them for pre-RoPE keys), and v */
    const int k0 = rotate_k ? 2 * half : 0;
    for (int d = k0 + threadIdx.x; d < head_dim; d += blockDim.x)
        for (int h = 0; h < n_kv_heads; h++) {
            const size_t be = (size_t)h * head_dim + d;
            kd[be] = from_f32<T>(ld_biased(k, adt, kr + be, bk, wdt, be));
        }
    for (int e = threadIdx.x; e < kvd; e += blockDim.x) vd[e] = from_f32<T>(ld_biased(v, adt, kr + e, bv, wdt, e));
}

void cuda_rope_kv(void *q, const void *k, const void *v, void *q_shift, enum bk_dtype adt, const void *bq,
                  const void *bk, const void *bv, enum bk_dtype wdt, void *k_cache, void *v_cache, enum bk_dtype cdt,
                  int rotate_k, const struct cuda_batch *b, int n_heads, int n_kv_heads, int head_dim,
                  cudaStream_t stream)
{
    const int half = b->rotary_dim / 2;
    CHECK(b->rotary_dim <= head_dim && b->rotary_dim % 2 == 0, "rotary_dim %d, head_dim %d",
          b->rotary_dim, head_dim);
    if (!b->has_string) q_shift = NULL;
    if (b->n_tokens == 0) return;
    CHECK(half == 0 || (b->inv_freq && b->attn_factor), "rope_kv: the batch carries no inv_freq/attn_factor");
    CHECK(cdt == BK_BF16 || cdt == BK_F16, "rope_kv: cache dtype %d has no store here", (int)cdt);
#define ROPE_KV_ARGS                                                                                      \
    q, k, v, q_shift, adt, bq, bk, bv, wdt, (T *)k_cache, (T *)v_cache, b->slot_mapping, rotate_k, b->positions, \
        b->row_seq, b->inv_freq, b->attn_factor, b->q_scale, b->string_shift, b->string_local, n_heads,      \
        n_kv_heads, head_dim, half
    if (cdt == BK_BF16) {
        typedef __nv_bfloat16 T;
        rope_kv_kernel1<T><<<b->n_tokens, 128, 0, stream>>>(ROPE_KV_ARGS);
    } else {
        typedef __half T;
        rope_kv_kernel1<T><<<b->n_tokens, 128, 0, stream>>>(ROPE_KV_ARGS);
    }
#undef ROPE_KV_ARGS
    CUDA_LAUNCH_CHECK();
}

// ------------------------------------------------------------------------------------------------
// kv_store: cache[slot_mapping[r]] (n_kv_heads * head_dim values) = round(k[r]), same for v.
// With the layout (n_blocks, block_size, n_kv_heads, head_dim), slot = block * block_size +
// offset addresses one token row directly. Negative slots (padding rows of a CUDA-graph
// bucket) are skipped.

template <typename T>
__global__ void kv_store_kernel1(T *kc, T *vc, const void *k, const void *v, int adt,
                                 const int64_t *slot_mapping, int row_elems)
{
    const int r = blockIdx.x;
    const int64_t slot = slot_mapping[r];
    if (slot < 0) return;
    const size_t src = (size_t)r * row_elems;
    T *kd = kc + (size_t)slot * row_elems, *vd = vc + (size_t)slot * row_elems;
    for (int i = threadIdx.x; i < row_elems; i += blockDim.x) {
        kd[i] = from_f32<T>(ld_act(k, adt, src + i));
        vd[i] = from_f32<T>(ld_act(v, adt, src + i));
    }
}

/* fp8 cache: one thread per element pair, code = e4m3(x / scale of its kv head) with IEEE
 * division and the hardware's round-to-nearest-even, saturating conversion (the CPU backend's
 * bk_fp8_e4m3_from_f32, bit for bit). */
__global__ void kv_store_fp8_kernel1(kv_fp8 *kc, kv_fp8 *vc, const void *k, const void *v, int adt,
                                     const float *k_scale, const float *v_scale, const int64_t *slot_mapping,
                                     int head_dim, int row_elems)
{
    const int r = blockIdx.x;
    const int64_t slot = slot_mapping[r];
    if (slot < 0) return;
    const size_t r0 = (size_t)r * row_elems;
    __nv_fp8x2_storage_t *kd = reinterpret_cast<__nv_fp8x2_storage_t *>(kc + (size_t)slot * row_elems);
    __nv_fp8x2_storage_t *vd = reinterpret_cast<__nv_fp8x2_storage_t *>(vc + (size_t)slot * row_elems);
    for (int i = threadIdx.x; 2 * i < row_elems; i += blockDim.x) {
        const int h = 2 * i / head_dim; /* head_dim is even: a pair never straddles two heads */
        const float ks = k_scale[h], vs = v_scale[h];
        const float2 kx = make_float2(__fdiv_rn(ld_act(k, adt, r0 + 2 * i), ks), __fdiv_rn(ld_act(k, adt, r0 + 2 * i + 1), ks));
        const float2 vx = make_float2(__fdiv_rn(ld_act(v, adt, r0 + 2 * i), vs), __fdiv_rn(ld_act(v, adt, r0 + 2 * i + 1), vs));
        kd[i] = __nv_cvt_float2_to_fp8x2(kx, __NV_SATFINITE, __NV_E4M3);
        vd[i] = __nv_cvt_float2_to_fp8x2(vx, __NV_SATFINITE, __NV_E4M3);
    }
}

void cuda_kv_store_fp8(void *k_cache, void *v_cache, const void *k, const void *v, enum bk_dtype adt,
                       const float *k_scale, const float *v_scale, const int64_t *slot_mapping, int n_tokens,
                       int n_kv_heads, int head_dim, cudaStream_t stream)
{
    if (n_tokens == 0) return;
    const int row_elems = n_kv_heads * head_dim, pairs = row_elems / 2;
    const int threads = pairs >= 256 ? 256 : ((pairs + 31) / 32) * 32;
    kv_store_fp8_kernel1<<<n_tokens, threads, 0, stream>>>((kv_fp8 *)k_cache, (kv_fp8 *)v_cache, k, v, (int)adt,
                                                           k_scale, v_scale, slot_mapping, head_dim, row_elems);
    CUDA_LAUNCH_CHECK();
}

void cuda_kv_store(void *k_cache, void *v_cache, enum bk_dtype dt, const void *k, const void *v, enum bk_dtype adt,
                   const int64_t *slot_mapping, int n_tokens, int row_elems, cudaStream_t stream)
{
    if (n_tokens == 0) return;
    const int threads = row_elems >= 256 ? 256 : ((row_elems + 31) / 32) * 32;
    if (dt == BK_BF16)
        kv_store_kernel1<<<n_tokens, threads, 0, stream>>>(
            (__nv_bfloat16 *)k_cache, (__nv_bfloat16 *)v_cache, k, v, adt, slot_mapping, row_elems);
    else
        kv_store_kernel1<<<n_tokens, threads, 0, stream>>>((__half *)k_cache, (__half *)v_cache, k,
                                                           v, adt, slot_mapping, row_elems);
    CUDA_LAUNCH_CHECK();
}

// ------------------------------------------------------------------------------------------------
// swiglu: out (n) = silu(gate) * up, silu(g) = g / (1 + exp(-g)) with the full-precision expf;
// out may equal gate or up (each element is read before it is written, by the same thread)

__global__ void swiglu_kernel1(void *out, int odt, const void *gate, int gdt, const void *up, int udt, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float g = ld_act(gate, gdt, i);
        st_act(out, odt, i, g / (1.0f + expf(-g)) * ld_act(up, udt, i));
    }
}

void cuda_swiglu(void *out, enum bk_dtype odt, const void *gate, enum bk_dtype gdt, const void *up,
                 enum bk_dtype udt, size_t n, cudaStream_t stream)
{
    if (n == 0) return;
    swiglu_kernel1<<<blocks_for(n, 256), 256, 0, stream>>>(out, odt, gate, gdt, up, udt, n);
    CUDA_LAUNCH_CHECK();
}

// ------------------------------------------------------------------------------------------------
// add: x (n) += y (n)

__global__ void add_kernel1(void *x, int xdt, const void *y, int ydt, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        st_act(x, xdt, i, ld_act(x, xdt, i) + ld_act(y, ydt, i));
}

void cuda_add(void *x, enum bk_dtype xdt, const void *y, enum bk_dtype ydt, size_t n, cudaStream_t stream)
{
    if (n == 0) return;
    add_kernel1<<<blocks_for(n, 256), 256, 0, stream>>>(x, xdt, y, ydt, n);
    CUDA_LAUNCH_CHECK();
}

// ------------------------------------------------------------------------------------------------
// add_bias: x (n_rows, n) += b (n) on every row, b in the weight dtype (a projection's bias)

__global__ void add_bias_kernel1(void *x, int xdt, const void *b, int bdt, size_t total, int n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        st_act(x, xdt, i, ld_act(x, xdt, i) + ld_act(b, bdt, i % (size_t)n));
}

void cuda_add_bias(void *x, enum bk_dtype xdt, const void *b, enum bk_dtype bdt, int n_rows, int n,
                   cudaStream_t stream)
{
    const size_t total = (size_t)n_rows * n;
    if (total == 0) return;
    add_bias_kernel1<<<blocks_for(total, 256), 256, 0, stream>>>(x, xdt, b, bdt, total, n);
    CUDA_LAUNCH_CHECK();
}

// ------------------------------------------------------------------------------------------------
// gather_rows: dst (n_out, dim) = src[rows[i]]

__global__ void gather_rows_kernel1(void *dst, int ddt, const void *src, int sdt, const int32_t *rows, int dim)
{
    const int i = blockIdx.x;
    const size_t s = (size_t)rows[i] * dim, d = (size_t)i * dim;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) st_act(dst, ddt, d + c, ld_act(src, sdt, s + c));
}

void cuda_gather_rows(void *dst, enum bk_dtype ddt, const void *src, enum bk_dtype sdt, const int32_t *rows,
                      int n_out, int dim, cudaStream_t stream)
{
    if (n_out == 0) return;
    gather_rows_kernel1<<<n_out, 256, 0, stream>>>(dst, ddt, src, sdt, rows, dim);
    CUDA_LAUNCH_CHECK();
}
