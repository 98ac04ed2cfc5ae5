/* attention_prefill.cu - paged causal attention for rows of sequences that bring several new
 * tokens (prefill chunks, also on top of cached prefixes), FlashAttention-2 style on tensor
 * cores (mma.sync m16n8k16, bf16 or f16 inputs, fp32 accumulators).
 *
 * Work decomposition. grid = (tiles, n_kv_heads), 128 threads = 4 warps. A tile is 64 "packed
 * rows" of one sequence: packed row pr = token t * group + g stands for query head
 * kv_head * group + g of the sequence's new token t (GQA packing), so the query heads of a group
 * share every K/V tile the CTA loads, and a decode-sized group still fills the m16 tiles. The
 * host lists the tiles (backend_cuda.cu, longest-context tiles first); each warp owns 16 packed
 * rows.
 *
 * Per tile: Q (fp32 activations, already rotated) is rounded to the cache dtype into shared
 * memory. Key tiles of BN keys are gathered through the block table with cp.async into a
 * double buffer (the load of tile n+1 overlaps the math of tile n); rows past the tile's last
 * position are zero-filled, never read, so NaN in unused cache slots cannot reach P.V. S = Q K^T
 * and O += P V run on mma.sync with ldmatrix(.trans) fragments; the online softmax runs in
 * registers in base 2 (scale * log2 e folded into S) with each row's max and sum shared across
 * the 4 lanes of a quad. Causality: row r sees keys 0..positions[r]; only key tiles that reach
 * past the smallest position of the tile are masked (the diagonal), tiles past the largest are
 * not visited. P is rounded to the cache dtype for the P.V mma and the row sum adds the rounded
 * values, so each output is an exact convex combination of V rows under the rounded weights.
 *
 * Shared memory rows are padded by 16 bytes (row stride head_dim + 8 elements): the 8 row
 * addresses of every ldmatrix phase then fall in distinct bank groups without a swizzle.
 *
 * Registers (ptxas -v, sm_80/sm_90, no spills): 66-71 (hd 16), 77-80 (32), 95-96 (64), 121-125
 * (80), 127-128 (96/128), 229-232 (256, BN 32); dynamic shared memory (64 + 4 BN) rows x
 * (hd + 8) x 2 bytes: 85 KiB at hd 128 (2 CTAs per H100 SM), 99 KiB at hd 256. STRING
 * instantiations, no spills: 72 (hd 16), 94-96 (32), 124-126 (64/80), 130-154 (96), 127 on
 * sm_80 / 166 on sm_90 (128), 227-231 (256).
 *
 * BK_K_PRE_ROPE: the K tile is loaded synchronously and rotated on the way (load_key8, fp32),
 * then rounded to the cache dtype for the mma (a second rounding the fp32 reference does not
 * make); V still comes by cp.async.
 *
 * STRING (REFERENCES-rope.md §8; a template flag, so the plain instantiations are unchanged):
 * row r scores key j with q_shift iff j <= positions[r] - S. A second Q tile (q_shift, rounded
 * like q) sits after the K/V buffers. Per key tile each warp decides with two votes over its 16
 * rows: every key local -> the usual Q K^T on q; every key shifted -> the same on q_shift; mixed
 * (only the tiles along the band's edge) -> Q K^T on q, then q_shift's scores one 8-key n-tile
 * at a time, kept per element where j <= the row's threshold. The online softmax, the mask and
 * P V are untouched: only the scores depend on which query. Rejected: two passes merged by their
 * log-sum-exps (the HF/vLLM reference; twice the K/V reads), and a second full score
 * accumulator for mixed tiles (32 more registers at BN 64: spills). The second Q tile costs
 * 64 (hd + 8) x 2 bytes (17 KiB at hd 128: 102 KiB, still 2 CTAs per H100 SM; 132 KiB at
 * hd 256); a device whose opt-in limit is smaller (sm_86/89: 99 KiB, so hd >= 128) sends the
 * STRING batches' rows to the split-KV kernel instead (cuda_attn_prefill_string_supported).
 *
 * fp8 KV cache (the FP8 template flag, head_dim 64 and 128): the K/V tiles are dequantised into
 * the bf16/f16 shared-memory tiles by pf_load_tile_fp8; the rest of the kernel is unchanged.
 *
 * Rejected for now: a warp-specialized Hopper kernel (wgmma + TMA, FlashAttention-3), about 1.7x
 * faster at hd 128 but a much larger, sm_90-only kernel; this one is the baseline it must match. */
#include <limits.h>

#include "common.cuh"

#define PF_THREADS 128
#define PF_BM ATTN_PREFILL_BLOCK_M

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

/* four 8x8 b16 matrices; lane i gives the address of row (i % 8) of matrix (i / 8) */
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p))
                 : "memory");
}
/* two 8x8 b16 matrices; lanes 0-15 give the row addresses (lane i: row i % 8 of matrix i / 8) */
__device__ __forceinline__ void ldsm_x2(uint32_t (&r)[2], const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(p))
                 : "memory");
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p))
                 : "memory");
}

/* 16 bytes global -> shared, asynchronously; src_bytes 0 writes zeros and reads nothing */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ------------------------------------------------------------------------------------------------
// the kernel

template <int HD> struct pf_cfg {
    static constexpr int BN = HD > 128 ? 32 : 64; /* keys per tile: registers and smem at hd 256 */
    static constexpr int LD = HD + 8;             /* padded smem row (elements) */
};

/* STRING instantiations hold a second Q tile (q_shift) after the plain layout */
template <typename T, int HD, bool STRING>
static constexpr size_t pf_smem_bytes()
{
    return (size_t)((STRING ? 2 : 1) * PF_BM + 4 * pf_cfg<HD>::BN) * pf_cfg<HD>::LD * sizeof(T);
}

/* fp8 KV cache: gather key tile kt like load_tile below, but the codes are read with synchronous
 * 8-byte loads, dequantised (x the head's k_scale / v_scale, fp32; pre-RoPE keys rotated first)
 * and rounded to T into the same shared-memory tiles, so everything after the load is the
 * bf16/f16 kernel unchanged. Keys >= kv_len are zero-filled. The load is not asynchronous (the
 * conversion needs registers), so it overlaps the math only across warps. */
template <typename T, int HD, int BN, int LD>
__device__ __forceinline__ void pf_load_tile_fp8(T *dk, T *dv, const struct attn_params &p, int kvh, const int32_t *bt,
                                                 int kt, int kv_len, const float *inv_freq_s, float af)
{
    constexpr int NCH = HD / 8;
    const kv_fp8 *kc = (const kv_fp8 *)p.k_cache + (size_t)kvh * HD;
    const kv_fp8 *vc = (const kv_fp8 *)p.v_cache + (size_t)kvh * HD;
    const float ks = p.k_scale[kvh], vs = p.v_scale[kvh];
    const int bs = p.block_size, lbs = p.log2_block_size;
    for (int idx = threadIdx.x; idx < BN * NCH; idx += PF_THREADS) {
        const int r = idx / NCH, c = idx - r * NCH;
        const int j = kt * BN + r;
        float f[8], g[8];
        if (j < kv_len) {
            const size_t off = ((size_t)bt[j >> lbs] * bs + (j & (bs - 1))) * p.kv_token_stride;
            load_key8<kv_fp8>(f, kc + off, c, j, p.pre_rope, p.rotary_dim, inv_freq_s, af);
            load8<kv_fp8>(vc + off + c * 8, g);
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++) f[e] = g[e] = 0.f;
        }
        uint4 uk, uv;
        uk.x = pack2<T>(f[0] * ks, f[1] * ks);
        uk.y = pack2<T>(f[2] * ks, f[3] * ks);
        uk.z = pack2<T>(f[4] * ks, f[5] * ks);
        uk.w = pack2<T>(f[6] * ks, f[7] * ks);
        uv.x = pack2<T>(g[0] * vs, g[1] * vs);
        uv.y = pack2<T>(g[2] * vs, g[3] * vs);
        uv.z = pack2<T>(g[4] * vs, g[5] * vs);
        uv.w = pack2<T>(g[6] * vs, g[7] * vs);
        *reinterpret_cast<uint4 *>(dk + r * LD + c * 8) = uk;
        *reinterpret_cast<uint4 *>(dv + r * LD + c * 8) = uv;
    }
}

/* FP8: the cache holds e4m3 codes (pf_load_tile_fp8); T stays the mma's bf16/f16 */
template <typename T, int HD, bool STRING, bool FP8 = false>
__global__ void __launch_bounds__(PF_THREADS) attn_prefill_kernel1(const struct attn_params p)
{
    constexpr int BN = pf_cfg<HD>::BN, LD = pf_cfg<HD>::LD, NCH = HD / 8;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    T *sq = reinterpret_cast<T *>(smem_raw); /* (BM, LD) */
    T *sk = sq + PF_BM * LD;                 /* (2, BN, LD) */
    T *sv = sk + 2 * BN * LD;                /* (2, BN, LD) */
    T *sqs = sv + 2 * BN * LD;               /* (BM, LD) q_shift, STRING only */
    __shared__ int s_pos[2];

    const int tile = blockIdx.x, kvh = blockIdx.y;
    const int s = p.tiles[2 * tile], pr0 = p.tiles[2 * tile + 1];
    const int G = p.group;
    const int qs = p.query_start[s];
    const int n_pr = (p.query_start[s + 1] - qs) * G;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    /* smallest and largest position among the tile's tokens */
    if (warp == 0) {
        const int t0 = pr0 / G, t1 = (min(pr0 + PF_BM, n_pr) - 1) / G;
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

    /* Q tile: fp32 -> T; packed rows past the sequence are zero */
    auto load_q = [&](T *dst, const float *src) {
        for (int idx = tid; idx < PF_BM * (HD / 4); idx += PF_THREADS) {
            const int r = idx / (HD / 4), c = idx - r * (HD / 4);
            const int pr = pr0 + r;
            float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
            if (pr < n_pr) {
                const int t = pr / G, gi = pr - t * G;
                v = *reinterpret_cast<const float4 *>(src + (size_t)(qs + t) * p.q_row_stride +
                                                      (size_t)(kvh * G + gi) * HD + c * 4);
            }
            uint2 u;
            u.x = pack2<T>(v.x, v.y);
            u.y = pack2<T>(v.z, v.w);
            *reinterpret_cast<uint2 *>(dst + r * LD + c * 4) = u;
        }
    };
    load_q(sq, p.q);
    /* STRING: S of this sequence, 0 = off (then sqs is neither loaded nor read) */
    const int str_S = STRING ? p.string_shift[s] : 0;
    if (STRING && str_S > 0) load_q(sqs, p.q_shift);
    __syncthreads();
    const int min_pos = s_pos[0], kv_len = s_pos[1] + 1;
    const int n_kt = (kv_len + BN - 1) / BN;

    /* this thread's two rows of the warp's 16: ra = lane/4 and ra + 8 (mma C layout) */
    const int ra = warp * 16 + (lane >> 2);
    const int pr_a = pr0 + ra, pr_b = pr_a + 8;
    /* padding rows see every loaded key (never masked, never written): no all-masked rows */
    const int pos_a = pr_a < n_pr ? p.positions[qs + pr_a / G] : INT_MAX;
    const int pos_b = pr_b < n_pr ? p.positions[qs + pr_b / G] : INT_MAX;

    /* STRING: row a scores key j with q_shift iff j <= th_a = pos_a - S (likewise b); -1 (no
     * key) for sequences without STRING. Padding rows take the threshold of the sequence's last
     * token, so they never make a tile look mixed (their scores are never written anyway). */
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
    const float *inv_freq_s = p.pre_rope ? p.inv_freq + (size_t)s * (p.rotary_dim >> 1) : nullptr;
    const float af = p.pre_rope ? p.attn_factor[s] : 1.f;

    /* gather key tile kt (keys kt*BN ..) into buffer buf; keys >= kv_len are zero-filled */
    auto load_tile_16 = [&](int kt, int buf) {
        T *dk = sk + buf * BN * LD, *dv = sv + buf * BN * LD;
        for (int idx = tid; idx < BN * NCH; idx += PF_THREADS) {
            const int r = idx / NCH, c = idx - r * NCH;
            const int j = kt * BN + r;
            const bool ok = j < kv_len;
            size_t off = 0;
            if (ok) off = ((size_t)bt[j >> lbs] * bs + (j & (bs - 1))) * p.kv_token_stride;
            if (!p.pre_rope) {
                cp_async16(dk + r * LD + c * 8, kc + off + c * 8, ok ? 16 : 0);
            } else {
                float f[8];
                if (ok) {
                    load_key8<T>(f, kc + off, c, j, 1, p.rotary_dim, inv_freq_s, af);
                } else {
#pragma unroll
                    for (int e = 0; e < 8; e++) f[e] = 0.f;
                }
                uint4 u;
                u.x = pack2<T>(f[0], f[1]);
                u.y = pack2<T>(f[2], f[3]);
                u.z = pack2<T>(f[4], f[5]);
                u.w = pack2<T>(f[6], f[7]);
                *reinterpret_cast<uint4 *>(dk + r * LD + c * 8) = u;
            }
            cp_async16(dv + r * LD + c * 8, vc + off + c * 8, ok ? 16 : 0);
        }
    };

    /* the same for an fp8 cache: dequantised into the tiles (pf_load_tile_fp8) */
    auto load_tile = [&](int kt, int buf) {
        if constexpr (FP8)
            pf_load_tile_fp8<T, HD, BN, LD>(sk + buf * BN * LD, sv + buf * BN * LD, p, kvh, bt, kt, kv_len, inv_freq_s, af);
        else
            load_tile_16(kt, buf);
    };

    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;

    load_tile(0, 0);
    cp_async_commit();
    for (int kt = 0; kt < n_kt; kt++) {
        if (kt + 1 < n_kt) {
            load_tile(kt + 1, (kt + 1) & 1); /* that buffer was released by the last barrier */
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const T *kb = sk + (kt & 1) * BN * LD;
        const T *vb = sv + (kt & 1) * BN * LD;

        /* STRING: which Q this warp scores the key tile [kt BN, kt BN + BN) with, decided over
         * its 16 rows (warp-uniform: the mma runs on whole warps): q when every key is local for
         * every row, q_shift when every key is shifted, else both (q first, then the shifted
         * scores replace those of the keys j <= th) */
        const T *qt = sq;
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
            /* matrices: rows 0-7/8-15 x d 0-7, then d 8-15 -> a0..a3 */
            ldsm_x4(a, qt + (warp * 16 + (lane & 15)) * LD + kd * 16 + (lane >> 4) * 8);
#pragma unroll
            for (int nn = 0; nn < BN / 16; nn++) {
                uint32_t b[4];
                /* matrices: keys 0-7 x d 0-7, keys 0-7 x d 8-15, keys 8-15 x d 0-7, keys 8-15 x d 8-15 */
                ldsm_x4(b, kb + (nn * 16 + ((lane >> 4) << 3) + (lane & 7)) * LD + kd * 16 + ((lane >> 3) & 1) * 8);
                mma16816<T>::run(sacc[2 * nn], a, b[0], b[1]);
                mma16816<T>::run(sacc[2 * nn + 1], a, b[2], b[3]);
            }
        }
        if (STRING && mixed) {
            /* the q_shift scores of one n-tile (8 keys) at a time, kept where key j <= the row's
             * threshold: few extra registers (only the tiles on the band's edge come here) */
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++) {
                float t[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
                for (int kd = 0; kd < HD / 16; kd++) {
                    uint32_t a[4], b[2];
                    ldsm_x4(a, sqs + (warp * 16 + (lane & 15)) * LD + kd * 16 + (lane >> 4) * 8);
                    /* matrices: keys 0-7 x d 0-7, keys 0-7 x d 8-15 (lanes 0-15 give the rows) */
                    ldsm_x2(b, kb + (nt * 8 + (lane & 7)) * LD + kd * 16 + ((lane >> 3) & 1) * 8);
                    mma16816<T>::run(t, a, b[0], b[1]);
                }
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int j = kt * BN + nt * 8 + 2 * (lane & 3) + (e & 1); /* as in the mask below */
                    if (j <= (e < 2 ? th_a : th_b)) sacc[nt][e] = t[e];
                }
            }
        }

        /* scale to base 2, mask the diagonal tiles, row max over the quad */
        const bool need_mask = kt * BN + BN - 1 > min_pos;
        float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float x = sacc[nt][e] * p.scale_log2;
                if (need_mask) {
                    const int j = kt * BN + nt * 8 + 2 * (lane & 3) + (e & 1);
                    if (j > (e < 2 ? pos_a : pos_b)) x = -INFINITY;
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
        /* a row with nothing visible yet keeps -inf: use 0 as its base so no inf - inf */
        const float ms_a = mn_a == -INFINITY ? 0.f : mn_a;
        const float ms_b = mn_b == -INFINITY ? 0.f : mn_b;
        const float al_a = exp2f(m_a - ms_a), al_b = exp2f(m_b - ms_b);
        m_a = mn_a;
        m_b = mn_b;

        float rs_a = 0.f, rs_b = 0.f;
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) {
            sacc[nt][0] = round_to<T>(exp2f(sacc[nt][0] - ms_a));
            sacc[nt][1] = round_to<T>(exp2f(sacc[nt][1] - ms_a));
            sacc[nt][2] = round_to<T>(exp2f(sacc[nt][2] - ms_b));
            sacc[nt][3] = round_to<T>(exp2f(sacc[nt][3] - ms_b));
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

        /* O (16 x HD per warp) += P V: the S accumulators of key tiles 2kk, 2kk+1 are exactly
         * the A fragment of keys 16kk..16kk+15 */
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
                /* matrices: keys 0-7 x d 0-7, keys 8-15 x d 0-7, keys 0-7 x d 8-15, keys 8-15 x d 8-15 */
                ldsm_x4_trans(b, vb + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD + dn * 16 + (lane >> 4) * 8);
                mma16816<T>::run(o[2 * dn], a, b[0], b[1]);
                mma16816<T>::run(o[2 * dn + 1], a, b[2], b[3]);
            }
        }
        __syncthreads(); /* every warp is done with this buffer before it is refilled */
    }

    l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
    l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
    const float ia = l_a > 0.f ? 1.f / l_a : 0.f, ib = l_b > 0.f ? 1.f / l_b : 0.f;
    if (pr_a < n_pr) {
        const int t = pr_a / G, gi = pr_a - t * G;
        float *dst = p.out + (size_t)(qs + t) * p.q_row_stride + (size_t)(kvh * G + gi) * HD + 2 * (lane & 3);
#pragma unroll
        for (int i = 0; i < HD / 8; i++)
            *reinterpret_cast<float2 *>(dst + i * 8) = make_float2(o[i][0] * ia, o[i][1] * ia);
    }
    if (pr_b < n_pr) {
        const int t = pr_b / G, gi = pr_b - t * G;
        float *dst = p.out + (size_t)(qs + t) * p.q_row_stride + (size_t)(kvh * G + gi) * HD + 2 * (lane & 3);
#pragma unroll
        for (int i = 0; i < HD / 8; i++)
            *reinterpret_cast<float2 *>(dst + i * 8) = make_float2(o[i][2] * ib, o[i][3] * ib);
    }
}

// ------------------------------------------------------------------------------------------------
// host side: one instantiation per (dtype, head_dim)

#define PF_FOR_EACH_HD(X) X(16) X(32) X(64) X(80) X(96) X(128) X(256)

int cuda_attn_prefill_supported(int head_dim)
{
    switch (head_dim) {
#define X(hd) case hd:
        PF_FOR_EACH_HD(X)
#undef X
        return 1;
    default:
        return 0;
    }
}

/* bf16 and f16 instantiations take the same bytes */
static size_t prefill_string_smem(int head_dim)
{
    switch (head_dim) {
#define X(hd) \
    case hd: return pf_smem_bytes<__half, hd, true>();
        PF_FOR_EACH_HD(X)
#undef X
    default:
        return 0;
    }
}

int cuda_attn_prefill_string_supported(int head_dim, size_t smem_optin)
{
    return cuda_attn_prefill_supported(head_dim) && prefill_string_smem(head_dim) <= smem_optin;
}

template <typename T, int HD, bool STR>
static cudaError_t prefill_set_smem(void)
{
    return cudaFuncSetAttribute(attn_prefill_kernel1<T, HD, STR>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)pf_smem_bytes<T, HD, STR>());
}

static cudaError_t prefill_fp8_init(size_t smem_optin); /* the fp8-cache instantiations, below */

int cuda_attn_prefill_init(size_t smem_optin, char *err)
{
    cudaError_t e = cudaSuccess;
    /* the STRING instantiation of a head_dim whose two Q tiles do not fit is never launched
     * (cuda_attn_prefill_string_supported): backend_cuda.cu sends those rows to split-KV */
#define X(hd)                                                                                  \
    if (e == cudaSuccess) e = prefill_set_smem<__nv_bfloat16, hd, false>();                    \
    if (e == cudaSuccess) e = prefill_set_smem<__half, hd, false>();                           \
    if (e == cudaSuccess && cuda_attn_prefill_string_supported(hd, smem_optin))                \
        e = prefill_set_smem<__nv_bfloat16, hd, true>();                                       \
    if (e == cudaSuccess && cuda_attn_prefill_string_supported(hd, smem_optin))                \
        e = prefill_set_smem<__half, hd, true>();
    PF_FOR_EACH_HD(X)
#undef X
    if (e == cudaSuccess) e = prefill_fp8_init(smem_optin);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return set_err(err, -1, "cuda: prefill attention shared memory setup failed: %s",
                       cudaGetErrorString(e));
    }
    return 0;
}

template <typename T, bool STR>
static void launch_prefill(const struct attn_params *p, int n_tiles, cudaStream_t stream)
{
    const dim3 grid((unsigned)n_tiles, (unsigned)p->n_kv_heads);
    switch (p->head_dim) {
#define X(hd)                                                                                           \
    case hd:                                                                                            \
        attn_prefill_kernel1<T, hd, STR><<<grid, PF_THREADS, pf_smem_bytes<T, hd, STR>(), stream>>>(*p); \
        break;
        PF_FOR_EACH_HD(X)
#undef X
    default:
        CHECK(0, "prefill attention: head_dim %d has no instantiation", p->head_dim);
    }
    CUDA_LAUNCH_CHECK();
}

// ---- fp8 KV cache: head_dim 64 and 128 (the others' rows go to the split-KV kernel) ----

#define PF_FP8_FOR_EACH_HD(X) X(64) X(128)

int cuda_attn_prefill_fp8_supported(int head_dim) { return head_dim == 64 || head_dim == 128; }

template <typename T, int HD, bool STR>
static cudaError_t prefill_fp8_set_smem(void)
{
    return cudaFuncSetAttribute(attn_prefill_kernel1<T, HD, STR, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)pf_smem_bytes<T, HD, STR>());
}

static cudaError_t prefill_fp8_init(size_t smem_optin)
{
    cudaError_t e = cudaSuccess;
#define X(hd)                                                                                  \
    if (e == cudaSuccess) e = prefill_fp8_set_smem<__nv_bfloat16, hd, false>();                \
    if (e == cudaSuccess) e = prefill_fp8_set_smem<__half, hd, false>();                       \
    if (e == cudaSuccess && cuda_attn_prefill_string_supported(hd, smem_optin))                \
        e = prefill_fp8_set_smem<__nv_bfloat16, hd, true>();                                   \
    if (e == cudaSuccess && cuda_attn_prefill_string_supported(hd, smem_optin))                \
        e = prefill_fp8_set_smem<__half, hd, true>();
    PF_FP8_FOR_EACH_HD(X)
#undef X
    return e;
}

template <typename T, bool STR>
static void launch_prefill_fp8(const struct attn_params *p, int n_tiles, cudaStream_t stream)
{
    const dim3 grid((unsigned)n_tiles, (unsigned)p->n_kv_heads);
    switch (p->head_dim) {
#define X(hd)                                                                                                 \
    case hd:                                                                                                  \
        attn_prefill_kernel1<T, hd, STR, true><<<grid, PF_THREADS, pf_smem_bytes<T, hd, STR>(), stream>>>(*p); \
        break;
        PF_FP8_FOR_EACH_HD(X)
#undef X
    default:
        CHECK(0, "prefill attention over an fp8 cache: head_dim %d has no instantiation", p->head_dim);
    }
    CUDA_LAUNCH_CHECK();
}

void cuda_attn_prefill_fp8(const struct attn_params *p, int n_tiles, enum bk_dtype dt, cudaStream_t stream)
{
    if (n_tiles == 0) return;
    const bool str = p->string_shift != NULL;
    CHECK(!str || p->q_shift, "STRING attention without q_shift");
    CHECK(p->k_scale && p->v_scale, "fp8 KV cache without scales");
    if (dt == BK_BF16) {
        if (str) launch_prefill_fp8<__nv_bfloat16, true>(p, n_tiles, stream);
        else launch_prefill_fp8<__nv_bfloat16, false>(p, n_tiles, stream);
    } else {
        if (str) launch_prefill_fp8<__half, true>(p, n_tiles, stream);
        else launch_prefill_fp8<__half, false>(p, n_tiles, stream);
    }
}

void cuda_attn_prefill(const struct attn_params *p, int n_tiles, enum bk_dtype dt, cudaStream_t stream)
{
    if (n_tiles == 0) return;
    const bool str = p->string_shift != NULL;
    CHECK(!str || p->q_shift, "STRING attention without q_shift");
    if (dt == BK_BF16) {
        if (str) launch_prefill<__nv_bfloat16, true>(p, n_tiles, stream);
        else launch_prefill<__nv_bfloat16, false>(p, n_tiles, stream);
    } else {
        if (str) launch_prefill<__half, true>(p, n_tiles, stream);
        else launch_prefill<__half, false>(p, n_tiles, stream);
    }
}
