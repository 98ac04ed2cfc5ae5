/* attention_decode.cu - split-KV paged attention (flash-decoding) for rows that bring one new
 * token, and the general fallback for any row (head_dim without a tensor-core instantiation, or
 * ROPESERVE_CUDA_ATTN=simt).
 *
 * Work decomposition. grid = (items, n_kv_heads * n_hchunks, n_splits), 128 threads. One CTA
 * takes one query row, one KV head and up to GC (<= 8) query heads of its GQA group, so each
 * K/V row it reads serves all GC heads; larger groups take ceil(group / 8) head chunks. The
 * row's keys 0..positions[r] are cut into n_splits ranges of whole blocks (the same count for
 * every row of the launch, so mixed lengths share one launch: a short row's late splits are
 * empty and say so with lse = -inf). Each split writes its normalized partial output and its
 * base-2 log-sum-exp; attn_merge_kernel1 combines them. With one split the kernel writes the
 * output directly. The host picks n_splits so the grid fills one whole wave of resident CTAs
 * (SM count x this kernel's occupancy from the occupancy API: backend_cuda.cu,
 * attn_pick_splits): one 128k sequence alone keeps every SM's loads in flight. The grid depends
 * on the launch's sizes only, never on the rows' lengths (an all-decode batch sizes its splits
 * by its block table's width), so the kernel lives inside a CUDA graph: splits past a row's
 * keys write lse = -inf and exit at once.
 *
 * q and out are fp32 or the cache's 16-bit type (p.q_dtype: the backend's activations); the
 * partials and every sum are fp32.
 *
 * Inside a CTA. Keys are processed in chunks of DEC_CHUNK (256). At the start of a chunk its
 * block ids are copied from the block table into shared memory (bt_s), so no key load waits on
 * a dependent global load of its block id. (1) scores: a group of
 * lanes_per_key lanes (a power of two >= head_dim / 8) holds one key row, 8 values per lane from
 * one 16-byte load, dots it with the GC query vectors kept in registers (rounded to the cache
 * dtype, pre-multiplied by scale*log2 e) and reduces over the group with xor shuffles; scores go
 * to shared memory. Each lane issues the loads of U keys before using any, kept as raw 16-byte
 * words until used (U = 8, 4 at GC 4 and 8; pre-RoPE keys, rotated on arrival in fp32, 4 / 2): the
 * kernel is bound by load latency, so bytes in flight are what matters. (2) per
 * head, the chunk max, the running max/sum update and p = exp2(s - m) in place (fp32). (3) O +=
 * p V with the same lane-group mapping and U-deep loads, every thread accumulating fp32 partial
 * outputs for its keys; the groups and warps are summed at the end (fixed order: deterministic).
 * Keys past positions[r] are never touched, so garbage or NaN in unused cache slots cannot leak
 * in. Limits: head_dim a multiple of 8, at most 256 (kv_init refuses others).
 *
 * Registers (ptxas -v, CUDA 13, sm_80 / sm_90), plain: 90-94 / 90, 96 / 96, 116-118 / 121,
 * 191 / 201 at GC 1/2/4/8, no spills; STRING (sm_80) 92-94 / 111 / 118 / 194-196, no spills. The
 * pre-RoPE instantiations (inlined sincosf) reach 195; spills only around sincosf's large-argument
 * path: <f16, GC 1, pre-RoPE> 4 bytes (sm_90), and with STRING at GC 1 4-20 bytes (the rare
 * CLEX + STRING + MHA combination).
 *
 * STRING (REFERENCES-rope.md §8; a template flag, so the plain instantiations are unchanged):
 * the row's keys j <= positions[r] - S are scored with q_shift, the others with q. A split's
 * range [k0, k1) is cut at kb = clamp(L - S, k0, k1): chunks never straddle kb, qr holds
 * q_shift until kb and q from there (q waits in the red buffer, unused until the end: reloading
 * it from global memory inside the loop kept its addresses live and spilled), and one online
 * softmax runs over both parts, since only the scores depend on the query. Splits, the merge and
 * the empty-split rule are unchanged. Rejected: separate splits for the two parts merged by the
 * (m, l) rescaling (more CTAs and partials for the same keys, and the split count would depend
 * on S).
 *
 * fp8 KV cache (T = kv_fp8, --kv-cache-dtype fp8): each lane loads its 8 codes with one 8-byte
 * load and converts them exactly (e4m3 -> f16 -> f32); the per-head scales cost nothing in the
 * loop: k_scale is folded into the query registers and v_scale multiplies the finished output.
 * Scores, softmax and O stay fp32. (The 8-byte loads halve the bytes each lane has in flight;
 * deeper U for fp8 is left to the split-KV rework.)
 * Not done yet (issue 11 item 4): a cp.async ring staging K/V tiles through shared memory, which
 * would put more bytes in flight per SM than the U-deep register loads; measure first (the
 * device script's check_decode/check_attention benches print GB/s of K/V at 5k-20k keys).
 *
 * Rejected: one warp per key with a 5-level reduction (3x the shuffles at hd 128); tensor cores
 * for decode (the kernel is bound by HBM bytes, and the GQA group of <= 8 rows would waste most
 * of an m16 tile); a fixed split size in tokens (a lone long sequence would not fill the GPU at
 * small GQA head counts, while many short ones would launch empty CTAs). */
#include <math.h>

#include "common.cuh"

#define DEC_THREADS 128
#define DEC_WARPS (DEC_THREADS / 32)
#define DEC_CHUNK 256
#define DEC_HD_MAX 256
#define DEC_MAX_SPLITS 256

// ------------------------------------------------------------------------------------------------
// split-KV kernel

/* this lane's 8 query values per head from qsrc (q or q_shift), rounded like the cache and
 * pre-multiplied by scale*log2 e (fp8 cache: also by the head's k_scale, so the keys are read as
 * bare e4m3 values); zeros for heads past the chunk and lanes past the row */
template <typename T, int GC>
__device__ __forceinline__ void load_q8(float (&qr)[GC][8], const float *qsrc, const struct attn_params &p,
                                        int row, int kvh, int g0, int ng, int lig, bool lane_on)
{
    const int G = p.group, HD = p.head_dim;
    const float qs = is_fp8<T>::value ? p.scale_log2 * p.k_scale[kvh] : p.scale_log2;
#pragma unroll
    for (int g = 0; g < GC; g++) {
        if (g < ng && lane_on) {
            const size_t off = (size_t)row * p.q_row_stride + (size_t)(kvh * G + g0 + g) * HD + lig * 8;
            float v[8];
            if (p.q_dtype == BK_F32) { /* fp32 activations */
                const float *qp = qsrc + off;
                const float4 a = *reinterpret_cast<const float4 *>(qp);
                const float4 b = *reinterpret_cast<const float4 *>(qp + 4);
                v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
                v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
            } else { /* 16-bit activations are the cache's T: one 16-byte load */
                unpack8<T>(*reinterpret_cast<const uint4 *>(reinterpret_cast<const T *>(qsrc) + off), v);
            }
#pragma unroll
            for (int e = 0; e < 8; e++) qr[g][e] = round_to<T>(v[e]) * qs;
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++) qr[g][e] = 0.f;
        }
    }
}

template <typename T, int GC, bool PRE_ROPE, bool STRING>
__global__ void __launch_bounds__(DEC_THREADS) attn_decode_kernel1(const struct attn_params p)
{
    __shared__ float sc[DEC_CHUNK * GC];   /* (chunk keys, GC) scores, then probabilities */
    __shared__ float red[GC * DEC_HD_MAX]; /* (GC, head_dim) cross-warp sum of O */
    __shared__ float m_run[GC], l_run[GC], alpha_s[GC];
    __shared__ int32_t bt_s[DEC_CHUNK]; /* the block ids of the current chunk's keys */

    const int item = blockIdx.x;
    const int kvh = blockIdx.y / p.n_hchunks, hc = blockIdx.y - kvh * p.n_hchunks;
    const int split = blockIdx.z;
    const int row = p.items[item];
    const int s = p.row_seq[row];
    const int L = p.positions[row] + 1; /* keys 0..positions[row] */
    const int bs = p.block_size;
    const int nb = (L + bs - 1) >> p.log2_block_size;
    const int bps = (nb + p.n_splits - 1) / p.n_splits; /* blocks per split */
    const int k0 = min(split * bps, nb) * bs;
    const int k1 = min(L, min(nb, (split + 1) * bps) * bs);
    const int G = p.group;
    const int g0 = hc * GC;
    const int ng = min(GC, G - g0); /* heads of this chunk that exist */
    const int HD = p.head_dim, NV = HD >> 3;
    const int TG = p.lanes_per_key, log2_tg = __ffs(TG) - 1;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int lig = lane & (TG - 1), grp = lane >> log2_tg;
    const int KPW = 32 >> log2_tg;      /* keys per warp per step */
    const int step = DEC_WARPS * KPW;   /* keys per CTA per step */
    /* steps whose loads are issued together: rotated keys and V stay as raw 16-byte words
     * (4 registers each) until used, so 8 (4 at GC 4 and 8, where registers run out) loads per lane are in flight; pre-RoPE
     * keys are rotated as they arrive (8 fp32 each) and keep the older depth */
    constexpr int U = PRE_ROPE ? (GC >= 8 ? 2 : 4) : (GC >= 4 ? 4 : 8);
    const bool lane_on = lig < NV;      /* lanes past the row's 16-byte chunks hold zeros */
    const int32_t *bt = p.block_tables + (size_t)s * p.block_table_stride;
    const T *kc = (const T *)p.k_cache + (size_t)kvh * HD;
    const T *vc = (const T *)p.v_cache + (size_t)kvh * HD;
    const float *inv_freq_s = PRE_ROPE ? p.inv_freq + (size_t)s * (p.rotary_dim >> 1) : nullptr;
    const float af = PRE_ROPE ? p.attn_factor[s] : 1.f;

    if (k0 >= k1) { /* an empty split of a short row (only when n_splits > 1) */
        for (int idx = threadIdx.x; idx < ng * HD; idx += DEC_THREADS) {
            const int g = idx / HD, d = idx - g * HD;
            const size_t ph = ((size_t)item * p.n_heads + kvh * G + g0 + g) * p.n_splits + split;
            p.part_o[ph * HD + d] = 0.f;
            if (d == 0) p.part_lse[ph] = -INFINITY;
        }
        return;
    }

    /* STRING: this split's keys [k0, kb) lie at distance >= S from the query (j <= L - 1 - S)
     * and are scored with q_shift, keys [kb, k1) with q; kb = k0 when the sequence has no STRING */
    int kb = k0;
    if (STRING) {
        const int S = p.string_shift[s];
        if (S > 0) kb = min(max(L - S, k0), k1);
    }

    float qr[GC][8]; /* this lane's 8 query values per head, rounded like the cache, x scale*log2 e */
    load_q8<T, GC>(qr, p.q, p, row, kvh, g0, ng, lig, lane_on);
    if (STRING && k0 < kb) {
        /* q waits in red (unused until the end) for the chunk at kb; q_shift first. Reloading it
         * from global memory inside the loop instead kept its addresses live and spilled. */
        if (warp == 0 && grp == 0 && lane_on)
#pragma unroll
            for (int g = 0; g < GC; g++)
#pragma unroll
                for (int e = 0; e < 8; e++) red[g * HD + lig * 8 + e] = qr[g][e];
        load_q8<T, GC>(qr, p.q_shift, p, row, kvh, g0, ng, lig, lane_on);
    }
    float o[GC][8];
#pragma unroll
    for (int g = 0; g < GC; g++)
#pragma unroll
        for (int e = 0; e < 8; e++) o[g][e] = 0.f;
    if (threadIdx.x < GC) {
        m_run[threadIdx.x] = -INFINITY;
        l_run[threadIdx.x] = 0.f;
    }
    __syncthreads();

    /* STRING: no chunk straddles kb (the shifted keys, then the local ones, one online softmax
     * over both: only the scores depend on the query), and q replaces q_shift in qr at kb */
    for (int c0 = k0; c0 < k1;) {
        const int n = min(DEC_CHUNK, (STRING && c0 < kb ? kb : k1) - c0);
        /* the chunk's block ids, prefetched into shared memory once (<= DEC_CHUNK of them: n
         * keys span at most n blocks), so no key load waits on a dependent block-table load;
         * the previous chunk's last barrier guarantees nobody still reads bt_s */
        const int b_first = c0 >> p.log2_block_size;
        {
            const int nblk = ((c0 + n - 1) >> p.log2_block_size) - b_first + 1;
            for (int i = threadIdx.x; i < nblk; i += DEC_THREADS) bt_s[i] = bt[b_first + i];
        }
        __syncthreads();
        if (STRING && c0 == kb && k0 < kb && lane_on) /* after a barrier: red holds q */
#pragma unroll
            for (int g = 0; g < GC; g++)
#pragma unroll
                for (int e = 0; e < 8; e++) qr[g][e] = red[g * HD + lig * 8 + e];

        /* (1) scores. U keys per lane group are loaded before any is used (memory-level
         * parallelism: a decode CTA is bound by load latency, not math). The loop bound is
         * uniform over the warp so every lane reaches the shuffles; lanes whose key is past the
         * chunk carry zeros and store nothing. */
        for (int jb = warp * KPW; jb < n; jb += U * step) {
            uint4 kraw[PRE_ROPE ? 1 : U];
            float kf[PRE_ROPE ? U : 1][8];
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int jj = jb + u * step + grp;
                if (jj < n && lane_on) {
                    const int j = c0 + jj;
                    const T *krow = kc + ((size_t)bt_s[(j >> p.log2_block_size) - b_first] * bs + (j & (bs - 1))) *
                                             p.kv_token_stride;
                    if constexpr (PRE_ROPE)
                        load_key8<T>(kf[u], krow, lig, j, true, p.rotary_dim, inv_freq_s, af);
                    else
                        kraw[u] = raw8<T>(krow + lig * 8);
                } else {
                    if constexpr (PRE_ROPE) {
#pragma unroll
                        for (int e = 0; e < 8; e++) kf[u][e] = 0.f;
                    } else {
                        kraw[u] = make_uint4(0u, 0u, 0u, 0u); /* +0.0 in bf16 and f16 */
                    }
                }
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int jj = jb + u * step + grp;
                float kv[8];
                if constexpr (PRE_ROPE) {
#pragma unroll
                    for (int e = 0; e < 8; e++) kv[e] = kf[u][e];
                } else {
                    unpack8<T>(kraw[u], kv);
                }
                float sd[GC];
#pragma unroll
                for (int g = 0; g < GC; g++) {
                    float a = 0.f;
#pragma unroll
                    for (int e = 0; e < 8; e++) a += qr[g][e] * kv[e];
                    sd[g] = a;
                }
                for (int off = TG >> 1; off > 0; off >>= 1)
#pragma unroll
                    for (int g = 0; g < GC; g++) sd[g] += __shfl_xor_sync(0xffffffffu, sd[g], off);
                if (jj < n && lig == 0)
#pragma unroll
                    for (int g = 0; g < GC; g++) sc[jj * GC + g] = sd[g];
            }
        }
        __syncthreads();

        /* (2) per head: chunk max, running max/sum, probabilities in place */
        for (int g = warp; g < GC; g += DEC_WARPS) {
            float mx = -INFINITY;
            for (int j = lane; j < n; j += 32) mx = fmaxf(mx, sc[j * GC + g]);
            for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
            const float m_old = m_run[g];
            const float m_new = fmaxf(m_old, mx); /* finite: the chunk has >= 1 score */
            float sum = 0.f;
            for (int j = lane; j < n; j += 32) {
                const float e = exp2f(sc[j * GC + g] - m_new);
                sc[j * GC + g] = e;
                sum += e;
            }
            for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
            __syncwarp(); /* every lane has read m_run[g] before lane 0 rewrites it */
            if (lane == 0) {
                const float a = exp2f(m_old - m_new); /* m_old = -inf -> 0 */
                alpha_s[g] = a;
                l_run[g] = l_run[g] * a + sum;
                m_run[g] = m_new;
            }
        }
        __syncthreads();

        /* (3) O = O * alpha + p V */
#pragma unroll
        for (int g = 0; g < GC; g++) {
            const float a = alpha_s[g];
#pragma unroll
            for (int e = 0; e < 8; e++) o[g][e] *= a;
        }
        for (int jb = warp * KPW; jb < n; jb += U * step) {
            uint4 vraw[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int jj = jb + u * step + grp;
                if (jj < n && lane_on) {
                    const int j = c0 + jj;
                    const T *vrow = vc + ((size_t)bt_s[(j >> p.log2_block_size) - b_first] * bs + (j & (bs - 1))) *
                                             p.kv_token_stride;
                    vraw[u] = raw8<T>(vrow + lig * 8);
                } else {
                    vraw[u] = make_uint4(0u, 0u, 0u, 0u);
                }
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int jj = jb + u * step + grp;
                if (jj < n) {
                    float vf[8];
                    unpack8<T>(vraw[u], vf);
#pragma unroll
                    for (int g = 0; g < GC; g++) {
                        const float pj = sc[jj * GC + g];
#pragma unroll
                        for (int e = 0; e < 8; e++) o[g][e] += pj * vf[e];
                    }
                }
            }
        }
        __syncthreads(); /* sc and alpha_s are rewritten by the next chunk */
        c0 += STRING ? n : DEC_CHUNK;
    }

    /* sum the lane groups of each warp (lanes with the same lig), then the warps in order */
    for (int off = TG; off < 32; off <<= 1)
#pragma unroll
        for (int g = 0; g < GC; g++)
#pragma unroll
            for (int e = 0; e < 8; e++) o[g][e] += __shfl_xor_sync(0xffffffffu, o[g][e], off);
    for (int w = 0; w < DEC_WARPS; w++) {
        if (warp == w && grp == 0 && lane_on) {
#pragma unroll
            for (int g = 0; g < GC; g++)
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    const int idx = g * HD + lig * 8 + e;
                    red[idx] = (w == 0 ? 0.f : red[idx]) + o[g][e];
                }
        }
        __syncthreads();
    }

    for (int idx = threadIdx.x; idx < ng * HD; idx += DEC_THREADS) {
        const int g = idx / HD, d = idx - g * HD;
        const int h = kvh * G + g0 + g;
        const float l = l_run[g];
        float val = red[idx] / l;
        if (is_fp8<T>::value) val *= p.v_scale[kvh]; /* O = v_scale * sum p e4m3(v) / l */
        if (p.n_splits == 1) {
            st_act(p.out, p.q_dtype, (size_t)row * p.q_row_stride + (size_t)h * HD + d, val);
        } else {
            const size_t ph = ((size_t)item * p.n_heads + h) * p.n_splits + split;
            p.part_o[ph * HD + d] = val;
            if (d == 0) p.part_lse[ph] = m_run[g] + log2f(l);
        }
    }
}

// ------------------------------------------------------------------------------------------------
// merge: out[row][h] = sum_s w_s O_s / sum_s w_s, w_s = 2^(lse_s - max lse); grid (items, n_heads)

__global__ void __launch_bounds__(128) attn_merge_kernel1(const struct attn_params p)
{
    __shared__ float w[DEC_MAX_SPLITS];
    __shared__ float inv_sum;
    const int item = blockIdx.x, h = blockIdx.y;
    const int ns = p.n_splits, HD = p.head_dim;
    const size_t base = ((size_t)item * p.n_heads + h) * ns;
    if (threadIdx.x < 32) {
        const int lane = threadIdx.x;
        float mx = -INFINITY;
        for (int i = lane; i < ns; i += 32) mx = fmaxf(mx, p.part_lse[base + i]);
        for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        float sum = 0.f;
        for (int i = lane; i < ns; i += 32) {
            const float wi = exp2f(p.part_lse[base + i] - mx); /* empty split: 2^-inf = 0 */
            w[i] = wi;
            sum += wi;
        }
        for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
        if (lane == 0) inv_sum = 1.f / sum;
    }
    __syncthreads();
    const int row = p.items[item];
    for (int d = threadIdx.x; d < HD; d += blockDim.x) {
        float acc = 0.f;
        for (int i = 0; i < ns; i++) acc += w[i] * p.part_o[(base + i) * HD + d];
        st_act(p.out, p.q_dtype, (size_t)row * p.q_row_stride + (size_t)h * HD + d, acc * inv_sum);
    }
}

// ------------------------------------------------------------------------------------------------
// host side

int cuda_attn_decode_supported(int head_dim) { return head_dim > 0 && head_dim % 8 == 0 && head_dim <= DEC_HD_MAX; }

int cuda_attn_decode_heads_per_cta(int group)
{
    int gc = 1;
    while (gc < group && gc < 8) gc <<= 1;
    return gc;
}

int cuda_attn_decode_max_splits(void) { return DEC_MAX_SPLITS; }

int cuda_attn_decode_ctas_per_sm(int group, enum bk_dtype dt)
{
    const int gc = cuda_attn_decode_heads_per_cta(group);
    int n = 0;
    cudaError_t e = cudaSuccess;
#define OCC(T, G) e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, attn_decode_kernel1<T, G, false, false>, DEC_THREADS, 0)
    if (dt == BK_BF16) {
        switch (gc) {
        case 1: OCC(__nv_bfloat16, 1); break;
        case 2: OCC(__nv_bfloat16, 2); break;
        case 4: OCC(__nv_bfloat16, 4); break;
        default: OCC(__nv_bfloat16, 8); break;
        }
    } else {
        switch (gc) {
        case 1: OCC(__half, 1); break;
        case 2: OCC(__half, 2); break;
        case 4: OCC(__half, 4); break;
        default: OCC(__half, 8); break;
        }
    }
#undef OCC
    if (e != cudaSuccess) {
        cudaGetLastError();
        return 4;
    }
    return n > 0 ? n : 1;
}

/* PRE_ROPE is a template flag: the inlined sincosf path would otherwise double the registers
 * of the common path (48 -> 96 at GC 1) and spill. STRING is one too, so that the plain
 * instantiations compile exactly as they did before STRING existed. */
template <typename T, bool PRE, bool STR>
static void launch_decode(const struct attn_params *p, int gc, dim3 grid, cudaStream_t stream)
{
    switch (gc) {
    case 1: attn_decode_kernel1<T, 1, PRE, STR><<<grid, DEC_THREADS, 0, stream>>>(*p); break;
    case 2: attn_decode_kernel1<T, 2, PRE, STR><<<grid, DEC_THREADS, 0, stream>>>(*p); break;
    case 4: attn_decode_kernel1<T, 4, PRE, STR><<<grid, DEC_THREADS, 0, stream>>>(*p); break;
    default: attn_decode_kernel1<T, 8, PRE, STR><<<grid, DEC_THREADS, 0, stream>>>(*p); break;
    }
    CUDA_LAUNCH_CHECK();
}

template <typename T>
static void launch_decode_dt(const struct attn_params *p, int gc, dim3 grid, cudaStream_t stream)
{
    const bool str = p->string_shift != NULL;
    if (p->pre_rope) {
        if (str) launch_decode<T, true, true>(p, gc, grid, stream);
        else launch_decode<T, true, false>(p, gc, grid, stream);
    } else {
        if (str) launch_decode<T, false, true>(p, gc, grid, stream);
        else launch_decode<T, false, false>(p, gc, grid, stream);
    }
}

void cuda_attn_decode(const struct attn_params *pin, enum bk_dtype dt, cudaStream_t stream)
{
    if (pin->n_items == 0) return;
    struct attn_params p = *pin;
    CHECK(cuda_attn_decode_supported(p.head_dim), "head_dim %d", p.head_dim);
    CHECK(p.n_splits >= 1 && p.n_splits <= DEC_MAX_SPLITS, "n_splits %d", p.n_splits);
    const int gc = cuda_attn_decode_heads_per_cta(p.group);
    p.n_hchunks = (p.group + gc - 1) / gc;
    int tg = 1;
    while (tg < p.head_dim / 8) tg <<= 1;
    p.lanes_per_key = tg; /* <= 32 because head_dim <= 256 */
    const dim3 grid((unsigned)p.n_items, (unsigned)(p.n_kv_heads * p.n_hchunks), (unsigned)p.n_splits);
    CHECK(!p.string_shift || p.q_shift, "STRING attention without q_shift");
    CHECK(p.q_dtype == BK_F32 || (p.q_dtype == dt && dt != BK_FP8_E4M3),
          "split-KV attention: q dtype %d with a dtype %d cache", (int)p.q_dtype, (int)dt);
    if (dt == BK_FP8_E4M3) {
        CHECK(p.k_scale && p.v_scale, "fp8 KV cache without scales");
        launch_decode_dt<kv_fp8>(&p, gc, grid, stream);
    } else if (dt == BK_BF16)
        launch_decode_dt<__nv_bfloat16>(&p, gc, grid, stream);
    else
        launch_decode_dt<__half>(&p, gc, grid, stream);
    if (p.n_splits > 1) {
        attn_merge_kernel1<<<dim3((unsigned)p.n_items, (unsigned)p.n_heads), 128, 0, stream>>>(p);
        CUDA_LAUNCH_CHECK();
    }
}
