/* attention_prefill_fa2.cu - the sm_80 prefill attention path at FlashAttention-2 quality (issue
 * 10 item 3): paged causal attention for the rows of multi-token sequences, on mma.sync tensor
 * cores (m16n8k16, bf16 or f16 in, fp32 accumulate). It runs on every sm_80+ device (A100 is the
 * GPU the users name; H100/H200 as a proxy, where the sm_90a kernel is the default).
 *
 * What changes against attention_prefill.cu's kernel (kept as the slower path: pre-RoPE keys,
 * head dims other than 64/128, and devices whose shared memory is too small for this one):
 *   - 128-row query tiles, 8 warps of 16 rows: each K/V tile brought to shared memory feeds twice
 *     as many rows (half the L2->SMEM traffic per FLOP of the 64-row kernel);
 *   - shared memory rows are unpadded and XOR-swizzled: 16-byte chunk c of row r lives at chunk
 *     c ^ (r & 7), so the 8 row addresses of each ldmatrix phase (and each cp.async quarter-warp)
 *     fall in 8 distinct bank groups;
 *   - a ring of ST stages (3 at BN 64, 4 at BN 32) of cp.async K/V loads: the load of key tile
 *     kt + ST - 1 is in flight while tile kt is computed, and each thread reads the block-table
 *     entries of tile kt + ST one iteration early (its page addresses are ready, not a dependent
 *     global load, when the cp.async is issued). One __syncthreads per key tile.
 * Kept: Q K^T with ldmatrix fragments, P V with ldmatrix.trans fragments of V and P taken straight
 * from the S accumulators (never through shared memory), the online softmax in base 2 with
 * scale * log2(e) folded into one multiply, masking only on the diagonal tiles (and the window's
 * lower edge), P rounded to the cache dtype for the mma and the row sum over the rounded values
 * (each output is an exact convex combination of V rows under the rounded weights).
 *
 * Also: STRING (the same per-warp vote as the 64-row kernel: local, shifted or mixed key tiles,
 * a second Q tile after the ring), sliding windows (backend.h: the query at p sees p - W < j <= p;
 * key tiles wholly below the tile's lowest window are not visited and keys below it are zero-
 * filled, never read), and q_dtype (q, q_shift and out as fp32 or as the cache's T).
 *
 * Shared memory (T = 2 bytes): (BM [+ BM for STRING] + 2 ST BN) x HD x 2 bytes:
 *   hd 128, BN 64, 3 stages: 128 KiB (STRING 160 KiB)  -- the default
 *   hd 128, BN 32, 4 stages:  96 KiB (STRING 128 KiB)  -- where BN 64 does not fit (sm_86/89),
 *                                                          or ROPESERVE_CUDA_FA2_BN=32
 *   hd 64,  BN 64, 3 stages:  64 KiB (STRING  80 KiB)
 * Registers/spills: tests/test_cuda_build.sh reads build/kernels/cuda/fa2/ptxas.log (no spills). */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "common.cuh"

#define FA2_THREADS 256
#define FA2_BM ATTN_PREFILL_FA2_BLOCK_M

namespace fa2 {

// ------------------------------------------------------------------------------------------------
// PTX wrappers

template <typename T> struct mma16816;
template <> struct mma16816<__nv_bfloat16> {
    static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
    {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};
template <> struct mma16816<__half> {
    static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
    {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}
__device__ __forceinline__ void ldsm_x2(uint32_t (&r)[2], uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(addr)
                 : "memory");
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}
/* 16 bytes global -> shared, asynchronously; src_bytes 0 writes zeros and reads nothing */
__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* 2^x on the SFU (ex2.approx.ftz: 2 ulp, far below the rounding of P to bf16/f16; -inf -> 0) */
__device__ __forceinline__ float fast_exp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/* byte offset of 16-byte chunk c of row r in a swizzled tile of HD-element rows */
template <int HD> __device__ __forceinline__ uint32_t swz(int r, int c)
{
    return (uint32_t)(r * (HD * 2) + ((c ^ (r & 7)) << 4));
}

template <int HD, int BN_> struct cfg {
    static constexpr int BN = BN_;
    static constexpr int ST = BN_ >= 64 ? 3 : 4; /* ring stages */
    static constexpr int NCH = HD / 8;           /* 16-byte chunks per row */
    static constexpr int RSTEP = FA2_THREADS / NCH; /* rows between one thread's loads */
    static constexpr int NLD = BN / RSTEP;        /* K (and V) chunks one thread loads per tile */
    static_assert(NCH >= 8, "the swizzle needs rows of at least 8 chunks");
    static_assert(BN % RSTEP == 0, "whole rows per load pass");
};

template <int HD, int BN, bool STRING> constexpr size_t smem_bytes()
{
    return (size_t)((STRING ? 2 : 1) * FA2_BM + 2 * cfg<HD, BN>::ST * BN) * HD * 2;
}

// ------------------------------------------------------------------------------------------------
// the kernel

template <typename T, typename QT, int HD, int BN, bool STRING>
__global__ void __launch_bounds__(FA2_THREADS, 1) attn_prefill_fa2_kernel(const struct attn_params p)
{
    using C = cfg<HD, BN>;
    constexpr int ST = C::ST, NCH = C::NCH, RSTEP = C::RSTEP, NLD = C::NLD;
    constexpr uint32_t TILE_BYTES = BN * HD * 2;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    const uint32_t s_base = smem_u32(smem_raw);
    const uint32_t sq = s_base;                          /* (BM, HD) */
    const uint32_t sk = sq + FA2_BM * HD * 2;            /* (ST, BN, HD) */
    const uint32_t sv = sk + ST * TILE_BYTES;            /* (ST, BN, HD) */
    const uint32_t sqs = sv + ST * TILE_BYTES;           /* (BM, HD) q_shift, STRING only */
    __shared__ int s_pos[2];

    const int tile = blockIdx.x, kvh = blockIdx.y;
    const int s = p.tiles[2 * tile], pr0 = p.tiles[2 * tile + 1];
    const int G = p.group;
    const int qs = p.query_start[s];
    const int n_pr = (p.query_start[s + 1] - qs) * G;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    if (warp == 0) {
        const int t0 = pr0 / G, t1 = (min(pr0 + FA2_BM, n_pr) - 1) / G;
        int mn = INT_MAX, mx = -1;
        for (int t = t0 + lane; t <= t1; t += 32) {
            const int ps = p.positions[qs + t];
            mn = min(mn, ps);
            mx = max(mx, ps);
        }
        for (int off = 16; off > 0; off >>= 1) {
            mn = min(mn, __shfl_xor_sync(0xffffffffu, mn, off));
            mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        }
        if (lane == 0) {
            s_pos[0] = mn;
            s_pos[1] = mx;
        }
    }

    /* Q tile -> T, swizzled; packed rows past the sequence are zero. 4 elements per step. */
    auto load_q = [&](uint32_t dst, const QT *src) {
        for (int idx = tid; idx < FA2_BM * (HD / 4); idx += FA2_THREADS) {
            const int r = idx / (HD / 4), c4 = idx - r * (HD / 4);
            const int pr = pr0 + r;
            uint2 u = make_uint2(0u, 0u);
            if (pr < n_pr) {
                const int t = pr / G, gi = pr - t * G;
                const QT *q = src + (size_t)(qs + t) * p.q_row_stride + (size_t)(kvh * G + gi) * HD + c4 * 4;
                if constexpr (sizeof(QT) == 4) {
                    const float4 v = *reinterpret_cast<const float4 *>(q);
                    u.x = pack2<T>(v.x, v.y);
                    u.y = pack2<T>(v.z, v.w);
                } else {
                    u = *reinterpret_cast<const uint2 *>(q);
                }
            }
            const uint32_t a = dst + swz<HD>(r, c4 >> 1) + (c4 & 1) * 8;
            asm volatile("st.shared.v2.u32 [%0], {%1, %2};\n" ::"r"(a), "r"(u.x), "r"(u.y) : "memory");
        }
    };
    load_q(sq, (const QT *)p.q);
    const int str_S = STRING ? p.string_shift[s] : 0;
    if (STRING && str_S > 0) load_q(sqs, (const QT *)p.q_shift);
    __syncthreads();
    const int min_pos = s_pos[0], max_pos = s_pos[1], kv_len = max_pos + 1;
    const int W = p.sliding_window;
    /* the lowest key any row of the tile sees; tiles wholly below it are skipped, keys below it
     * zero-filled (with a window the engine may have freed their blocks) */
    const int lo_key = W > 0 ? max(0, min_pos - W + 1) : 0;
    const int kt_lo = lo_key / BN, n_kt = (kv_len + BN - 1) / BN;
    /* keys >= lo_full are above every row's window edge (W > 0) */
    const int lo_full = W > 0 ? max_pos - W + 1 : 0;

    const int ra = warp * 16 + (lane >> 2);
    const int pr_a = pr0 + ra, pr_b = pr_a + 8;
    const int pos_a = pr_a < n_pr ? p.positions[qs + pr_a / G] : INT_MAX;
    const int pos_b = pr_b < n_pr ? p.positions[qs + pr_b / G] : INT_MAX;
    /* window lower bounds (padding rows: none, so they are never all-masked) */
    const int wlo_a = (W > 0 && pr_a < n_pr) ? pos_a - W + 1 : INT_MIN;
    const int wlo_b = (W > 0 && pr_b < n_pr) ? pos_b - W + 1 : INT_MIN;

    int th_a = -1, th_b = -1;
    if (STRING && str_S > 0) {
        const int pos_last = p.positions[p.query_start[s + 1] - 1];
        th_a = (pr_a < n_pr ? pos_a : pos_last) - str_S;
        th_b = (pr_b < n_pr ? pos_b : pos_last) - str_S;
    }

    const int32_t *bt = p.block_tables + (size_t)s * p.block_table_stride;
    const T *kc = (const T *)p.k_cache + (size_t)kvh * HD;
    const T *vc = (const T *)p.v_cache + (size_t)kvh * HD;
    const int bs = p.block_size, lbs = p.log2_block_size;
    const long long kvs = p.kv_token_stride;

    /* this thread loads chunk ld_c of rows ld_r + i RSTEP (i < NLD) of every K and V tile */
    const int ld_c = tid % NCH, ld_r = tid / NCH;
    int blk[NLD]; /* block ids of the next tile to issue, read one iteration ahead */
    auto fetch_ids = [&](int kt) {
#pragma unroll
        for (int i = 0; i < NLD; i++) {
            const int j = kt * BN + ld_r + i * RSTEP;
            blk[i] = (kt < n_kt && j >= lo_key && j < kv_len) ? __ldg(bt + (j >> lbs)) : -1;
        }
    };
    auto issue = [&](int kt) {
        const int stg = kt % ST;
#pragma unroll
        for (int i = 0; i < NLD; i++) {
            const int r = ld_r + i * RSTEP, j = kt * BN + r;
            const bool ok = blk[i] >= 0;
            const size_t off = ok ? ((size_t)blk[i] * bs + (j & (bs - 1))) * kvs + ld_c * 8 : 0;
            const uint32_t d = swz<HD>(r, ld_c) + stg * TILE_BYTES;
            cp_async16(sk + d, kc + off, ok ? 16 : 0);
            cp_async16(sv + d, vc + off, ok ? 16 : 0);
        }
    };

    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;

    /* prologue: tiles kt_lo .. kt_lo + ST - 2 in flight, the ids of the next one read */
#pragma unroll
    for (int i = 0; i < ST - 1; i++) {
        fetch_ids(kt_lo + i);
        if (kt_lo + i < n_kt) issue(kt_lo + i);
        cp_async_commit();
    }
    fetch_ids(kt_lo + ST - 1);

    /* ldmatrix addresses. Every row a lane addresses is = lane (mod 8), and chunk 2 kd + h
     * (h = 0/1) of row r sits at byte ((2 kd + h) ^ (r & 7)) << 4 = (kd << 5) ^ ((h ^ (lane & 7)) << 4)
     * of the row: a per-lane row offset, a per-lane column, and kd XORed in as a constant. */
    constexpr uint32_t RB = HD * 2; /* bytes per row */
    const uint32_t q_lane = (warp * 16 + (lane & 15)) * RB, q_col = ((lane >> 4) ^ (lane & 7)) << 4;
    const uint32_t k_lane = (((lane >> 4) << 3) + (lane & 7)) * RB, k_col = (((lane >> 3) & 1) ^ (lane & 7)) << 4;
    const uint32_t k2_lane = (lane & 7) * RB; /* ldsm_x2 over 8 keys: lanes 0-15 give the rows */
    const uint32_t v_lane = ((((lane >> 3) & 1) << 3) + (lane & 7)) * RB, v_col = ((lane >> 4) ^ (lane & 7)) << 4;

    for (int kt = kt_lo; kt < n_kt; kt++) {
        cp_async_wait<ST - 2>(); /* this thread's part of tile kt has landed */
        __syncthreads();         /* everyone's has; and the stage of tile kt - 1 is free */
        if (kt + ST - 1 < n_kt) issue(kt + ST - 1);
        cp_async_commit();       /* (empty groups keep the count uniform) */
        fetch_ids(kt + ST);
        const uint32_t kb = sk + (kt % ST) * TILE_BYTES, vb = sv + (kt % ST) * TILE_BYTES;

        uint32_t qt = sq;
        bool mixed = false;
        if (STRING && !__all_sync(0xffffffffu, kt * BN > max(th_a, th_b))) {
            if (__all_sync(0xffffffffu, kt * BN + BN - 1 <= min(th_a, th_b)))
                qt = sqs;
            else
                mixed = true;
        }

        /* S (16 x BN per warp) = Q K^T */
        float sacc[BN / 8][4];
#pragma unroll
        for (int i = 0; i < BN / 8; i++) sacc[i][0] = sacc[i][1] = sacc[i][2] = sacc[i][3] = 0.f;
#pragma unroll
        for (int kd = 0; kd < HD / 16; kd++) {
            uint32_t a[4];
            ldsm_x4(a, qt + q_lane + (q_col ^ (kd << 5)));
#pragma unroll
            for (int nn = 0; nn < BN / 16; nn++) {
                uint32_t b[4];
                ldsm_x4(b, kb + nn * 16 * RB + k_lane + (k_col ^ (kd << 5)));
                mma16816<T>::run(sacc[2 * nn], a, b[0], b[1]);
                mma16816<T>::run(sacc[2 * nn + 1], a, b[2], b[3]);
            }
        }
        if (STRING && mixed) {
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++) {
                float t[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
                for (int kd = 0; kd < HD / 16; kd++) {
                    uint32_t a[4], b[2];
                    ldsm_x4(a, sqs + q_lane + (q_col ^ (kd << 5)));
                    ldsm_x2(b, kb + nt * 8 * RB + k2_lane + (k_col ^ (kd << 5)));
                    mma16816<T>::run(t, a, b[0], b[1]);
                }
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int j = kt * BN + nt * 8 + 2 * (lane & 3) + (e & 1);
                    if (j <= (e < 2 ? th_a : th_b)) sacc[nt][e] = t[e];
                }
            }
        }

        /* base 2; mask only the diagonal tiles (and those on the window's lower edge) */
        const bool need_mask = kt * BN + BN - 1 > min_pos || kt * BN < lo_full;
        float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float x = sacc[nt][e] * p.scale_log2;
                if (need_mask) {
                    const int j = kt * BN + nt * 8 + 2 * (lane & 3) + (e & 1);
                    if (j > (e < 2 ? pos_a : pos_b) || j < (e < 2 ? wlo_a : wlo_b)) x = -INFINITY;
                }
                sacc[nt][e] = x;
            }
            mx_a = fmaxf(mx_a, fmaxf(sacc[nt][0], sacc[nt][1]));
            mx_b = fmaxf(mx_b, fmaxf(sacc[nt][2], sacc[nt][3]));
        }
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
        const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
        const float ms_a = mn_a == -INFINITY ? 0.f : mn_a;
        const float ms_b = mn_b == -INFINITY ? 0.f : mn_b;
        const float al_a = fast_exp2(m_a - ms_a), al_b = fast_exp2(m_b - ms_b);
        m_a = mn_a;
        m_b = mn_b;

        float rs_a = 0.f, rs_b = 0.f;
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) {
            sacc[nt][0] = round_to<T>(fast_exp2(sacc[nt][0] - ms_a));
            sacc[nt][1] = round_to<T>(fast_exp2(sacc[nt][1] - ms_a));
            sacc[nt][2] = round_to<T>(fast_exp2(sacc[nt][2] - ms_b));
            sacc[nt][3] = round_to<T>(fast_exp2(sacc[nt][3] - ms_b));
            rs_a += sacc[nt][0] + sacc[nt][1];
            rs_b += sacc[nt][2] + sacc[nt][3];
        }
        l_a = l_a * al_a + rs_a;
        l_b = l_b * al_b + rs_b;
#pragma unroll
        for (int i = 0; i < HD / 8; i++) {
            o[i][0] *= al_a;
            o[i][1] *= al_a;
            o[i][2] *= al_b;
            o[i][3] *= al_b;
        }

        /* O (16 x HD per warp) += P V, P straight from the S accumulators */
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            uint32_t a[4];
            a[0] = pack2<T>(sacc[2 * kk][0], sacc[2 * kk][1]);
            a[1] = pack2<T>(sacc[2 * kk][2], sacc[2 * kk][3]);
            a[2] = pack2<T>(sacc[2 * kk + 1][0], sacc[2 * kk + 1][1]);
            a[3] = pack2<T>(sacc[2 * kk + 1][2], sacc[2 * kk + 1][3]);
#pragma unroll
            for (int dn = 0; dn < HD / 16; dn++) {
                uint32_t b[4];
                ldsm_x4_trans(b, vb + kk * 16 * RB + v_lane + (v_col ^ (dn << 5)));
                mma16816<T>::run(o[2 * dn], a, b[0], b[1]);
                mma16816<T>::run(o[2 * dn + 1], a, b[2], b[3]);
            }
        }
    }
    cp_async_wait<0>(); /* no copy may still target shared memory when the CTA exits */

    l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
    l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
    const float ia = l_a > 0.f ? 1.f / l_a : 0.f, ib = l_b > 0.f ? 1.f / l_b : 0.f;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int pr = h ? pr_b : pr_a;
        if (pr >= n_pr) continue;
        const float inv = h ? ib : ia;
        const int t = pr / G, gi = pr - t * G;
        QT *dst = (QT *)p.out + (size_t)(qs + t) * p.q_row_stride + (size_t)(kvh * G + gi) * HD + 2 * (lane & 3);
#pragma unroll
        for (int i = 0; i < HD / 8; i++) {
            const float x = o[i][2 * h] * inv, y = o[i][2 * h + 1] * inv;
            if constexpr (sizeof(QT) == 4)
                *reinterpret_cast<float2 *>(dst + i * 8) = make_float2(x, y);
            else
                *reinterpret_cast<uint32_t *>(dst + i * 8) = pack2<T>(x, y);
        }
    }
}

} // namespace fa2

// ------------------------------------------------------------------------------------------------
// host side

/* The key tile at head_dim 128: ROPESERVE_CUDA_FA2_BN (read at init) forces 64 (3 stages) or 32
 * (4 stages); by default 64 where it fits the device's shared memory, else 32 (sm_86/89: 99 KiB). */
static int fa2_bn_forced = 0;
static size_t fa2_optin = 0;

static size_t fa2_smem_bn(int head_dim, int bn, int string)
{
    if (head_dim == 64) return string ? fa2::smem_bytes<64, 64, true>() : fa2::smem_bytes<64, 64, false>();
    if (head_dim == 128 && bn == 64)
        return string ? fa2::smem_bytes<128, 64, true>() : fa2::smem_bytes<128, 64, false>();
    if (head_dim == 128) return string ? fa2::smem_bytes<128, 32, true>() : fa2::smem_bytes<128, 32, false>();
    return 0;
}

static int fa2_pick_bn(int head_dim, int string, size_t smem_optin)
{
    if (head_dim != 128) return 64;
    if (fa2_bn_forced) return fa2_bn_forced;
    return fa2_smem_bn(128, 64, string) <= smem_optin ? 64 : 32;
}

static size_t fa2_smem(int head_dim, int string, size_t smem_optin)
{
    return fa2_smem_bn(head_dim, fa2_pick_bn(head_dim, string, smem_optin), string);
}

int cuda_attn_prefill_fa2_supported(int head_dim, enum bk_dtype kv_dtype, int pre_rope, int string, size_t smem_optin)
{
    if (head_dim != 64 && head_dim != 128) return 0;
    if (kv_dtype != BK_BF16 && kv_dtype != BK_F16) return 0;
    if (pre_rope) return 0; /* attention_prefill.cu rotates keys on the way */
    const size_t need = fa2_smem(head_dim, string, smem_optin);
    return need > 0 && need <= smem_optin;
}

template <typename T, typename QT, int HD, int BN, bool STR>
static cudaError_t fa2_set_smem(size_t smem_optin)
{
    if (fa2::smem_bytes<HD, BN, STR>() > smem_optin) return cudaSuccess; /* never launched */
    return cudaFuncSetAttribute(fa2::attn_prefill_fa2_kernel<T, QT, HD, BN, STR>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize, (int)fa2::smem_bytes<HD, BN, STR>());
}

#define FA2_FOR_EACH(X)                                                                            \
    X(__nv_bfloat16, float, 64, 64) X(__nv_bfloat16, float, 128, 64) X(__nv_bfloat16, float, 128, 32) \
    X(__half, float, 64, 64) X(__half, float, 128, 64) X(__half, float, 128, 32)                    \
    X(__nv_bfloat16, __nv_bfloat16, 64, 64) X(__nv_bfloat16, __nv_bfloat16, 128, 64)                \
    X(__nv_bfloat16, __nv_bfloat16, 128, 32) X(__half, __half, 64, 64) X(__half, __half, 128, 64)   \
    X(__half, __half, 128, 32)

int cuda_attn_prefill_fa2_init(size_t smem_optin, char *err)
{
    const char *bn = getenv("ROPESERVE_CUDA_FA2_BN");
    if (bn && *bn) {
        if (strcmp(bn, "64") && strcmp(bn, "32"))
            return set_err(err, -1, "cuda: ROPESERVE_CUDA_FA2_BN=%s: expected 64 or 32", bn);
        fa2_bn_forced = atoi(bn);
    }
    fa2_optin = smem_optin;
    cudaError_t e = cudaSuccess;
#define X(T, QT, HD, BN)                                                          \
    if (e == cudaSuccess) e = fa2_set_smem<T, QT, HD, BN, false>(smem_optin);     \
    if (e == cudaSuccess) e = fa2_set_smem<T, QT, HD, BN, true>(smem_optin);
    FA2_FOR_EACH(X)
#undef X
    if (e != cudaSuccess) {
        cudaGetLastError();
        return set_err(err, -1, "cuda: sm_80 (FA2) prefill attention shared memory setup failed: %s",
                       cudaGetErrorString(e));
    }
    return 0;
}

template <typename T, typename QT, int HD, int BN>
static void fa2_launch(const struct attn_params *p, int n_tiles, cudaStream_t stream)
{
    const dim3 grid((unsigned)n_tiles, (unsigned)p->n_kv_heads);
    if (p->string_shift)
        fa2::attn_prefill_fa2_kernel<T, QT, HD, BN, true>
            <<<grid, FA2_THREADS, fa2::smem_bytes<HD, BN, true>(), stream>>>(*p);
    else
        fa2::attn_prefill_fa2_kernel<T, QT, HD, BN, false>
            <<<grid, FA2_THREADS, fa2::smem_bytes<HD, BN, false>(), stream>>>(*p);
    CUDA_LAUNCH_CHECK();
}

template <typename T, typename QT>
static void fa2_launch_hd(const struct attn_params *p, int n_tiles, cudaStream_t stream)
{
    if (p->head_dim == 64)
        fa2_launch<T, QT, 64, 64>(p, n_tiles, stream);
    else if (p->head_dim == 128 && fa2_pick_bn(128, p->string_shift != NULL, fa2_optin) == 64)
        fa2_launch<T, QT, 128, 64>(p, n_tiles, stream);
    else if (p->head_dim == 128)
        fa2_launch<T, QT, 128, 32>(p, n_tiles, stream);
    else
        CHECK(0, "sm_80 (FA2) prefill attention: head_dim %d has no instantiation", p->head_dim);
}

void cuda_attn_prefill_fa2(const struct attn_params *p, int n_tiles, enum bk_dtype dt, cudaStream_t stream)
{
    if (n_tiles == 0) return;
    CHECK(!p->string_shift || p->q_shift, "STRING attention without q_shift");
    CHECK(!p->pre_rope, "sm_80 (FA2) prefill attention: pre-RoPE keys take attention_prefill.cu");
    CHECK(p->q_dtype == BK_F32 || p->q_dtype == dt, "sm_80 (FA2) prefill attention: q dtype %d with a dtype %d cache",
          (int)p->q_dtype, (int)dt);
    const bool qf = p->q_dtype == BK_F32;
    if (dt == BK_BF16) {
        if (qf) fa2_launch_hd<__nv_bfloat16, float>(p, n_tiles, stream);
        else fa2_launch_hd<__nv_bfloat16, __nv_bfloat16>(p, n_tiles, stream);
    } else {
        if (qf) fa2_launch_hd<__half, float>(p, n_tiles, stream);
        else fa2_launch_hd<__half, __half>(p, n_tiles, stream);
    }
}
