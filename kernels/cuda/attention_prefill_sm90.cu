/* attention_prefill_sm90.cu - paged causal attention for multi-token rows (prefill chunks, also
 * over a long cached prefix) on Hopper (sm_90a: H100/H200), FlashAttention-3 style: warpgroup
 * MMA (wgmma.mma_async), a warp-specialised producer, an mbarrier pipeline, softmax overlapped
 * with the P.V MMA. Same contract as attention_prefill.cu (the sm_80 kernel); backend_cuda.cu
 * picks this one on compute capability 9.0 when cuda_attn_prefill_sm90_supported() says so.
 *
 * Work decomposition. grid = (tiles, n_kv_heads), 384 threads = 3 warpgroups, one CTA per SM
 * (shared memory: 113 KiB at hd 64, 161 KiB at hd 128, + 16 / 32 KiB for STRING's second Q). A tile is 128 "packed rows" of one sequence, packed row
 * pr = token t * group + g standing for query head kv_head * group + g (GQA packing, as in the
 * sm_80 kernel): the query heads of a group share every K/V tile. The host lists the tiles of
 * each sequence longest-context first (ATTN_PREFILL_SM90_BLOCK_M rows each), and blockIdx.x
 * runs fastest, so the CTAs resident at one time are the query tiles of one kv head: over a long
 * cached prefix they stream the same K/V blocks at the same pace and share them in L2.
 *   warpgroup 0 (producer): gathers K and V tiles of BN = 128 keys through the block table with
 *     cp.async (16 bytes per thread per copy, zero-fill outside the tile's key range), written in
 *     the 128-byte-swizzled layout wgmma reads; it keeps 40 registers (setmaxnreg.dec).
 *   warpgroups 1 and 2 (consumers): 64 packed rows each (wgmma's M), 232 registers
 *     (setmaxnreg.inc; 128 x 40 + 256 x 232 = 64512, the 384 x 168 the CTA starts with). S = Q K^T with A and B in shared
 *     memory (m64n128k16, K-major both), O += P V with P from registers (m64n{HD}k16, V N-major).
 *
 * Shared memory (every operand 1024-byte aligned, 128B swizzle): a "column block" is 64
 * elements (128 bytes) of head_dim for a run of rows, row r at r * 128 bytes, the 16-byte chunk c
 * of a row stored at chunk c ^ (r % 8) (the hardware's 128B swizzle: address bits 4-6 ^= 7-9).
 *   Q    (2 warpgroups, HD/64 column blocks, 64 rows)  rounded to T by the consumers
 *   Qs   the same for q_shift (STRING instantiations only)
 *   K, V (STAGES, HD/64 column blocks, BN rows)         written by cp.async
 *   mbarriers: full/empty for K and for V per stage (separate, so K is released right after
 *   S = Q K^T and the next K load starts while P.V still reads V, as FA3 does).
 * Descriptors: K-major (Q, K) start + (kk / 4) * block + (kk % 4) * 32 bytes for k-step kk,
 * SBO 1024 (8 rows x 128 B), LBO unused; N-major (V) start + 16 keys x 128 B per k-step,
 * LBO = BN x 128 B (the next 64 head_dim columns), SBO 1024 (the next 8 keys). Swizzle mode 1
 * (128B), base offset 0 (every atom 1024-aligned).
 *
 * Pipeline (STAGES = 2 at hd 128, 3 at hd 64). Key tiles are visited from the last (the
 * diagonal) down to the first, as FA3 does: the masked tiles come first. The producer issues
 * K(0), then K(i), V(i - 1) for i = 1.., then V(last); each into stage i % STAGES after waiting
 * for that stage's empty barrier (parity ((i / STAGES) & 1) ^ 1: the first round passes), and
 * completes the stage's full barrier with cp.async.mbarrier.arrive.noinc (count: 128 producer
 * threads). Consumers wait full (parity (i / STAGES) & 1), fence.proxy.async (cp.async writes
 * are generic-proxy writes, wgmma reads through the async proxy), and release a stage with one
 * arrive per warp after the wgmma that read it has completed (count: 8 consumer warps).
 *
 * Consumer loop, intra-warpgroup overlap (FA3's): iteration i issues S(i) = Q K(i)^T and
 * O += P(i-1) V(i-1) as two wgmma groups, waits for S only (wait_group 1), releases K(i), runs
 * the masking and the online softmax of S(i) while P.V runs, then waits for P.V
 * (wait_group 0), releases V(i-1), converts S(i) to the P fragment (the accumulator layout of
 * two n8 column blocks is the A-fragment layout of one k16 step) and rescales O. Ping-pong
 * between the two consumer warpgroups: a pair of named barriers (ids 3, 4) lets one warpgroup
 * issue its two GEMMs while the other is in its softmax; warpgroup 2 gives the first turn, the
 * arrivals balance (each warpgroup syncs and is arrived at L times for L loop iterations).
 * The online softmax keeps the row max in raw score units and folds the scale into one FFMA:
 * p = exp2(s * scale_log2 - m * scale_log2); a row with nothing visible yet keeps m = -inf and
 * uses 0 as its base (no inf - inf). Masking only on the diagonal tiles (a key past the smallest
 * position of the CTA's rows) and on the sliding window's lower-edge tiles; keys outside the
 * CTA's range [min_pos - W + 1, max_pos] are never read (zero-filled), so NaN in unused slots or
 * freed blocks below the window cannot reach P.V (0 * NaN). P is rounded to T for the MMA and
 * the row sums add the rounded values (each output is a convex combination of V rows under the
 * weights actually used, as in the sm_80 kernel).
 *
 * STRING (template flag; REFERENCES-rope.md §8): a second Q tile Qs (q_shift). Per key tile each
 * consumer warpgroup decides from its rows' thresholds th = pos - S (warpgroup-uniform, as
 * wgmma needs): every key local -> A = Q; every key shifted -> A = Qs (the same wgmma, another
 * descriptor); mixed (only the tiles on the band's edge) -> that iteration gives up the overlap:
 * it waits for both groups, then S2 = Qs K^T into a second accumulator whose values replace those
 * of keys j <= th. With P.V complete pf is dead, so S, S2 and O (192 registers) fit; the two
 * paths stay separate until nothing is in flight (ptxas's wgmma register analysis does not
 * follow correlated branches and would serialize every wgmma of the kernel, C7512).
 *
 * Registers (ptxas -v, nvcc 13.0, sm_90a, all 16 instantiations): 168 at entry (the cap of
 * __launch_bounds__(384, 1)), then 40 producer / 232 consumer by setmaxnreg; 0 bytes stack,
 * 0 spills; no C75xx "wgmma serialized" message. Machine code per kernel: 32 HGMMA at hd 128
 * (8 Q K^T k-steps twice, 8 P V k-steps twice; 48 with STRING), 24 at hd 64, and no ptxas-
 * inserted warpgroup arrive/wait beyond the ones written here. tests/test_cuda_build.sh checks
 * all of it on every build. To keep it so: fence the operands (fence_regs) before every
 * wgmma_fence and after every wait, broadcast the values branches depend on with __shfl_sync,
 * and define nothing a wgmma reads while an earlier wgmma is in flight.
 *
 * Rejected: TMA for K/V. The cache is (n_blocks, block_size, n_kv_heads, head_dim) with 16-token
 * blocks by default, so a 128-key tile is 8 boxes of 16 rows per 64-column block (16 TMA issues
 * for K and 16 for V per tile, feasible), but the sequence's last block holds rows past its
 * length that may be NaN (or a freed block's garbage) and TMA cannot zero them: P = 0 times
 * NaN is NaN, so the consumers would have to zero smem rows after the load, per tile, racing
 * with the other warpgroup; the box also cannot be narrowed to the window's first key. cp.async
 * zero-fills per 16 bytes, costs 128 producer threads (which setmaxnreg leaves at 40
 * registers) and is what FA3 uses for paged KV whose page is smaller than its key tile.
 * Also rejected: three consumer warpgroups (BM 192) at hd 64 (FA3's choice; one code shape for
 * both head dims here), Q by TMA (q is fp32 activations today: it is converted on the way),
 * and an epilogue through shared memory (each CTA writes its O once; direct stores suffice).
 *
 * Not supported here (the caller uses the sm_80 kernel): pre-RoPE keys (CLEX: keys rotated as
 * they are read), fp8 KV caches, head_dim other than 64 and 128. */
#include <limits.h>

#include "common.cuh"

#define SM90_THREADS 384
#define SM90_BM ATTN_PREFILL_SM90_BLOCK_M /* packed rows per CTA: 2 consumer warpgroups x 64 */
#define SM90_BN 128                       /* keys per tile */

/* The device code exists only in the sm_90a image; other targets compile the kernels to a trap
 * (backend_cuda.cu launches them only on compute capability 9.0). */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SM90_DEVICE 1
#else
#define SM90_DEVICE 0
#endif

template <int HD> struct sm90_cfg {
    static constexpr int STAGES = HD == 64 ? 3 : 2;
    static constexpr int CB = HD / 64;                     /* 64-column blocks per row */
    static constexpr int Q_BYTES = SM90_BM * HD * 2;       /* both warpgroups' Q */
    static constexpr int WGQ_BYTES = 64 * HD * 2;          /* one warpgroup's Q */
    static constexpr int KV_BYTES = SM90_BN * HD * 2;      /* one K or V stage */
    static constexpr int CB_BYTES = SM90_BN * 128;         /* one column block of a K/V stage */
};

/* dynamic shared memory: [Q][Qs (STRING)][K stages][V stages][barriers + scalars], plus 1 KiB so
 * the base can be rounded up to 1024 */
template <int HD, bool STR> static constexpr size_t sm90_smem_bytes()
{
    return 1024 + (size_t)(STR ? 2 : 1) * sm90_cfg<HD>::Q_BYTES + 2 * (size_t)sm90_cfg<HD>::STAGES * sm90_cfg<HD>::KV_BYTES +
           256;
}

// ------------------------------------------------------------------------------------------------
// PTX wrappers (sm_90a)

template <typename T> struct wg_type;
template <> struct wg_type<__nv_bfloat16> { static constexpr char name[] = "bf16"; };
template <> struct wg_type<__half> { static constexpr char name[] = "f16"; };

__device__ __forceinline__ uint32_t sm90_smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(uint32_t bar, int count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
/* spins until the phase of parity `parity` has completed */
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity)
{
    uint32_t done;
    do {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
    } while (!done);
}
/* the barrier completes this thread's arrival once all its earlier cp.async have landed */
__device__ __forceinline__ void cp_async_arrive_noinc(uint32_t bar)
{
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
/* 16 bytes global -> shared; src_bytes 0 writes zeros and reads nothing */
__device__ __forceinline__ void cp_async16_zfill(uint32_t dst, const void *src, int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void named_sync(int id, int n) { asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory"); }
__device__ __forceinline__ void named_arrive(int id, int n) { asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory"); }

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait()
{
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/* Keeps the compiler from moving accesses to wgmma operands across the asm statements around
 * them (an accumulator read before its wait_group, an A fragment reused while still in flight). */
template <int N> __device__ __forceinline__ void fence_regs(float (&r)[N])
{
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N> __device__ __forceinline__ void fence_regs(uint32_t (&r)[N][4])
{
#pragma unroll
    for (int i = 0; i < N; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) asm volatile("" : "+r"(r[i][j])::"memory");
}

/* Shared memory matrix descriptor, 128B swizzle: bits 0-13 start address >> 4, 16-29 leading
 * byte offset >> 4, 32-45 stride byte offset >> 4, 49-51 base offset (0: 1024-aligned atoms),
 * 62-63 swizzle mode (1 = 128B). Shared addresses are < 2^18, so the fields need no masking and
 * the low word is (addr >> 4) | (lbo >> 4) << 16: a descriptor walks a tile by adding to it. */
__device__ __forceinline__ uint32_t desc_lo(uint32_t addr, uint32_t lbo) { return (addr >> 4) | ((lbo >> 4) << 16); }
#define SM90_DESC_HI(sbo) (((uint32_t)(sbo) >> 4) | (1u << 30))
__device__ __forceinline__ uint64_t desc_make(uint32_t lo, uint32_t hi)
{
    uint64_t d;
    asm("mov.b64 %0, {%1, %2};\n" : "=l"(d) : "r"(lo), "r"(hi));
    return d;
}

/* asm operand lists of f32 accumulators d[0..] */
#define SM90_ACC8(d, i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
                        "+f"(d[i + 6]), "+f"(d[i + 7])
#define SM90_ACC32(d) SM90_ACC8(d, 0), SM90_ACC8(d, 8), SM90_ACC8(d, 16), SM90_ACC8(d, 24)
#define SM90_ACC64(d) SM90_ACC32(d), SM90_ACC8(d, 32), SM90_ACC8(d, 40), SM90_ACC8(d, 48), SM90_ACC8(d, 56)
/* ... and their place in the instruction: operands %0 .. %31 / %63 */
#define SM90_REGS32                                                                              \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
    "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define SM90_REGS64                                                                                          \
    SM90_REGS32 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, " \
                "%49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"

/* D (m64 x N, f32) (+)= A (m64 x k16, shared, K-major) B (k16 x N, shared, K-major); scale_d 0
 * overwrites D */
template <typename T, int N> struct wgmma_ss;
/* D (m64 x N, f32) += A (m64 x k16, registers) B (k16 x N, shared, N-major) */
template <typename T, int N> struct wgmma_rs;

template <typename T> struct wgmma_ss<T, 128> {
    static __device__ __forceinline__ void run(float (&d)[64], uint64_t da, uint64_t db, int scale_d)
    {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.%67.%67 "
                     SM90_REGS64 "}, "
                     "%64, %65, p, 1, 1, 0, 0;\n}\n"
                     : SM90_ACC64(d)
                     : "l"(da), "l"(db), "r"(scale_d), "C"(wg_type<T>::name));
    }
};
template <typename T> struct wgmma_rs<T, 64> {
    static __device__ __forceinline__ void run(float (&d)[32], const uint32_t (&a)[4], uint64_t db)
    {
        asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.%37.%37 "
                     SM90_REGS32 "}, "
                     "{%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"
                     : SM90_ACC32(d)
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "C"(wg_type<T>::name));
    }
};
template <typename T> struct wgmma_rs<T, 128> {
    static __device__ __forceinline__ void run(float (&d)[64], const uint32_t (&a)[4], uint64_t db)
    {
        asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.%69.%69 "
                     SM90_REGS64 "}, "
                     "{%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"
                     : SM90_ACC64(d)
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "C"(wg_type<T>::name));
    }
};

/* two T in one register -> two floats (the values pack2 rounded them to) */
template <typename T> __device__ __forceinline__ float2 unpack2(uint32_t u);
template <> __device__ __forceinline__ float2 unpack2<__nv_bfloat16>(uint32_t u)
{
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}
template <> __device__ __forceinline__ float2 unpack2<__half>(uint32_t u)
{
    return __half22float2(*reinterpret_cast<const __half2 *>(&u));
}

/* 8 consecutive q values -> 8 T in a uint4 */
template <typename T> __device__ __forceinline__ uint4 load_q8(const float *src)
{
    const float4 a = *reinterpret_cast<const float4 *>(src), b = *reinterpret_cast<const float4 *>(src + 4);
    return make_uint4(pack2<T>(a.x, a.y), pack2<T>(a.z, a.w), pack2<T>(b.x, b.y), pack2<T>(b.z, b.w));
}
template <typename T> __device__ __forceinline__ uint4 load_q8(const T *src) { return *reinterpret_cast<const uint4 *>(src); }

/* two outputs of one row (adjacent columns) */
__device__ __forceinline__ void store_o2(float *dst, float a, float b) { *reinterpret_cast<float2 *>(dst) = make_float2(a, b); }
template <typename T> __device__ __forceinline__ void store_o2(T *dst, float a, float b)
{
    *reinterpret_cast<uint32_t *>(dst) = pack2<T>(a, b);
}

// ------------------------------------------------------------------------------------------------
// the kernel

/* shared-memory layout offsets (bytes from the 1024-aligned base) */
template <int HD, bool STR> struct sm90_layout {
    using C = sm90_cfg<HD>;
    static constexpr int Q = 0;
    static constexpr int QS = C::Q_BYTES;
    static constexpr int K = (STR ? 2 : 1) * C::Q_BYTES;
    static constexpr int V = K + C::STAGES * C::KV_BYTES;
    static constexpr int BAR = V + C::STAGES * C::KV_BYTES; /* full_k, empty_k, full_v, empty_v: STAGES each */
    static constexpr int POS = BAR + 4 * C::STAGES * 8;     /* int min_pos, max_pos */
    static constexpr int TH = POS + 8;                      /* int [2 warpgroups][4 warps][2]: STRING thresholds */
    static_assert(TH + 64 <= (int)sm90_smem_bytes<HD, STR>() - 1024, "smem layout");
};

template <typename T, typename TQ, int HD, bool STR>
__global__ void __launch_bounds__(SM90_THREADS, 1) attn_prefill_sm90_kernel1(const struct attn_params p)
{
#if SM90_DEVICE
    using C = sm90_cfg<HD>;
    using L = sm90_layout<HD, STR>;
    constexpr int BN = SM90_BN, ST = C::STAGES, NT = BN / 8;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const uint32_t sbase = (sm90_smem_u32(smem_raw) + 1023u) & ~1023u;
    unsigned char *sgen = smem_raw + (sbase - sm90_smem_u32(smem_raw));
    auto full_k = [&](int s) { return sbase + L::BAR + 8 * s; };
    auto empty_k = [&](int s) { return sbase + L::BAR + 8 * (ST + s); };
    auto full_v = [&](int s) { return sbase + L::BAR + 8 * (2 * ST + s); };
    auto empty_v = [&](int s) { return sbase + L::BAR + 8 * (3 * ST + s); };
    int *s_pos = reinterpret_cast<int *>(sgen + L::POS);

    const int tile = blockIdx.x, kvh = blockIdx.y;
    const int s = p.tiles[2 * tile], pr0 = p.tiles[2 * tile + 1];
    const int G = p.group;
    const int qs = p.query_start[s];
    const int n_pr = (p.query_start[s + 1] - qs) * G;
    /* warp-uniform values are broadcast with __shfl_sync(.., 0): ptxas then knows the branches
     * around the wgmma are not divergent (else it serializes the wgmma pipeline, C7520) */
    const int tid = threadIdx.x, lane = tid & 31, warp = __shfl_sync(0xffffffffu, tid >> 5, 0);
    const int W = p.sliding_window;

    /* barriers, and the smallest / largest position among the tile's tokens */
    if (tid == 0) {
        for (int i = 0; i < ST; i++) {
            mbar_init(full_k(i), 128);
            mbar_init(full_v(i), 128);
            mbar_init(empty_k(i), 8);
            mbar_init(empty_v(i), 8);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    if (warp == 1) {
        const int t0 = pr0 / G, t1 = (min(pr0 + SM90_BM, n_pr) - 1) / G;
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
    __syncthreads();
    const int min_pos = __shfl_sync(0xffffffffu, s_pos[0], 0), max_pos = __shfl_sync(0xffffffffu, s_pos[1], 0);
    const int kv_len = max_pos + 1;                         /* keys >= kv_len: no row of the CTA sees them */
    const int j_lo = W > 0 ? max(0, min_pos - W + 1) : 0;   /* keys < j_lo: below every row's window */
    const int n_hi = max_pos / BN, n_lo = j_lo / BN;
    const int n_tiles = n_hi - n_lo + 1;                    /* visited n_hi, n_hi - 1, .., n_lo */

    if (warp < 4) {
        // ---------------------------------------------------------------------------------------
        // producer warpgroup: K/V tiles through the block table
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        constexpr int CPR = HD / 8;       /* 16-byte chunks per key row */
        constexpr int RPI = 32 / CPR;     /* rows one warp copies per instruction */
        constexpr int ITERS = 32 / RPI;   /* instructions per warp per 32 rows */
        const int32_t *bt = p.block_tables + (size_t)s * p.block_table_stride;
        const T *kc = (const T *)p.k_cache + (size_t)kvh * HD;
        const T *vc = (const T *)p.v_cache + (size_t)kvh * HD;
        const int bs = p.block_size, lbs = p.log2_block_size;
        const long long kv_stride = p.kv_token_stride;
        /* this lane's key row of tile n (row warp * 32 + lane) as a cache slot (block * bs +
         * offset: < 2^31 for any pool that fits a device); -1: outside [j_lo, kv_len), not read */
        auto row_slot = [&](int n) -> int {
            const int j = n * BN + warp * 32 + lane;
            if (j < j_lo || j >= kv_len) return -1;
            return bt[j >> lbs] * bs + (j & (bs - 1));
        };
        /* lane l copies chunk l % CPR of rows l / CPR, + RPI, ..: a row is CPR consecutive lanes */
        auto copy_tile = [&](const T *base, uint32_t dst_stage, int slot_mine) {
            const int c = lane % CPR;
            const uint32_t dst_c = dst_stage + (c >> 3) * C::CB_BYTES;
            const T *src_c = base + c * 8;
#pragma unroll 4
            for (int it = 0; it < ITERS; it++) {
                const int rl = it * RPI + lane / CPR, r = warp * 32 + rl;
                const int slot = __shfl_sync(0xffffffffu, slot_mine, rl);
                const uint32_t dst = dst_c + r * 128 + (((c & 7) ^ (r & 7)) << 4);
                cp_async16_zfill(dst, slot >= 0 ? (const void *)(src_c + (long long)slot * kv_stride) : (const void *)base,
                                 slot >= 0 ? 16 : 0);
            }
        };
        int slot_prev = 0;
        for (int i = 0; i < n_tiles; i++) {
            const int n = n_hi - i;
            const int slot = row_slot(n);
            const int sk = i % ST;
            mbar_wait(empty_k(sk), ((i / ST) & 1) ^ 1);
            copy_tile(kc, sbase + L::K + sk * C::KV_BYTES, slot);
            cp_async_arrive_noinc(full_k(sk));
            if (i > 0) {
                const int sv = (i - 1) % ST;
                mbar_wait(empty_v(sv), (((i - 1) / ST) & 1) ^ 1);
                copy_tile(vc, sbase + L::V + sv * C::KV_BYTES, slot_prev);
                cp_async_arrive_noinc(full_v(sv));
            }
            slot_prev = slot;
        }
        {
            const int sv = (n_tiles - 1) % ST;
            mbar_wait(empty_v(sv), (((n_tiles - 1) / ST) & 1) ^ 1);
            copy_tile(vc, sbase + L::V + sv * C::KV_BYTES, slot_prev);
            cp_async_arrive_noinc(full_v(sv));
        }
        asm volatile("cp.async.wait_all;\n" ::: "memory"); /* exit with no copy in flight */
    } else {
        // ---------------------------------------------------------------------------------------
        // consumer warpgroups
        asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
        const int wg = warp / 4 - 1;              /* 0 or 1 */
        const int wtid = tid - 128 * (wg + 1);    /* 0..127 */
        const int wwarp = wtid >> 5;              /* warp within the warpgroup */
        const int wpr0 = pr0 + 64 * wg;           /* this warpgroup's first packed row */

        /* Q tile (and q_shift's) -> T, swizzled: row q, chunk c at cb(c) block, q*128 + (c^q%8)*16 */
        const int str_S = STR ? __shfl_sync(0xffffffffu, p.string_shift[s], 0) : 0;
        auto load_q = [&](const TQ *src, int region) {
            constexpr int CPR = HD / 8;
            unsigned char *dstw = sgen + region + wg * C::WGQ_BYTES;
#pragma unroll
            for (int k = 0; k < 64 * CPR / 128; k++) {
                const int idx = wtid + 128 * k, q = idx / CPR, c = idx % CPR;
                const int pr = wpr0 + q;
                uint4 u = make_uint4(0u, 0u, 0u, 0u);
                if (pr < n_pr) {
                    const int t = pr / G, gi = pr - t * G;
                    u = load_q8<T>(src + (size_t)(qs + t) * p.q_row_stride + (size_t)(kvh * G + gi) * HD + c * 8);
                }
                *reinterpret_cast<uint4 *>(dstw + (c >> 3) * (64 * 128) + q * 128 + (((c & 7) ^ (q & 7)) << 4)) = u;
            }
        };
        load_q(reinterpret_cast<const TQ *>(p.q), L::Q);
        if (STR && str_S > 0) load_q(reinterpret_cast<const TQ *>(p.q_shift), L::QS);

        /* this thread's two rows (wgmma D layout): ra = 16 * warp + lane / 4 and ra + 8 */
        const int ra = wwarp * 16 + (lane >> 2);
        const int pr_a = wpr0 + ra, pr_b = pr_a + 8;
        /* padding rows (past the sequence) act as its last token: never all-masked, never written */
        const int pos_last = p.positions[p.query_start[s + 1] - 1];
        const int pos_a = pr_a < n_pr ? p.positions[qs + pr_a / G] : pos_last;
        const int pos_b = pr_b < n_pr ? p.positions[qs + pr_b / G] : pos_last;

        /* STRING: row scores key j with q_shift iff j <= th = pos - S; the warpgroup's range of th */
        int th_a = -1, th_b = -1, wg_th_min = -1, wg_th_max = -1;
        int *s_th = reinterpret_cast<int *>(sgen + L::TH) + wg * 8;
        if (STR && str_S > 0) {
            th_a = pos_a - str_S;
            th_b = pos_b - str_S;
            int mn = min(th_a, th_b), mx = max(th_a, th_b);
            for (int off = 16; off > 0; off >>= 1) {
                mn = min(mn, __shfl_xor_sync(0xffffffffu, mn, off));
                mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, off));
            }
            if (lane == 0) {
                s_th[2 * wwarp] = mn;
                s_th[2 * wwarp + 1] = mx;
            }
        }
        fence_proxy_async();          /* the generic-proxy Q stores, before wgmma reads them */
        named_sync(1 + wg, 128);      /* this warpgroup's Q (and thresholds) are complete */
        if (STR && str_S > 0) {
            wg_th_min = __shfl_sync(0xffffffffu, min(min(s_th[0], s_th[2]), min(s_th[4], s_th[6])), 0);
            wg_th_max = __shfl_sync(0xffffffffu, max(max(s_th[1], s_th[3]), max(s_th[5], s_th[7])), 0);
        }

        const uint32_t q_addr = sbase + L::Q + wg * C::WGQ_BYTES;
        const uint32_t qs_addr = sbase + L::QS + wg * C::WGQ_BYTES;
        const float sl2 = p.scale_log2;

        float sacc[BN / 2];       /* S: m64 x n128 accumulators, sacc[4 nt + e] */
        float o[HD / 2];          /* O: m64 x nHD */
        uint32_t pf[BN / 16][4];  /* P as the A fragment of k-step kk */
        float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
#pragma unroll
        for (int i = 0; i < HD / 2; i++) o[i] = 0.f;

        /* S = Q K^T for the K tile in stage sk (A = Q or Qs): k-step kk is 16 columns, at column
         * block kk / 4, byte (kk % 4) * 32 of each 128-byte row; SBO 1024 = the next 8 rows */
        auto issue_qk_into = [&](float(&acc)[BN / 2], int sk, uint32_t a_addr) {
            const uint32_t a_lo = desc_lo(a_addr, 16), b_lo = desc_lo(sbase + L::K + sk * C::KV_BYTES, 16);
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                const uint64_t da = desc_make(a_lo + (((kk >> 2) * (64 * 128) + (kk & 3) * 32) >> 4), SM90_DESC_HI(1024));
                const uint64_t db = desc_make(b_lo + (((kk >> 2) * C::CB_BYTES + (kk & 3) * 32) >> 4), SM90_DESC_HI(1024));
                wgmma_ss<T, BN>::run(acc, da, db, kk > 0);
            }
        };
        auto issue_qk = [&](int sk, uint32_t a_addr) { issue_qk_into(sacc, sk, a_addr); };
        /* O += P V for the V tile in stage sv: k-step kk is keys 16 kk.. (16 rows of 128 bytes);
         * N-major: LBO = the next 64 head_dim columns (a column block), SBO 1024 = the next 8 keys */
        auto issue_pv = [&](int sv) {
            const uint32_t v_lo = desc_lo(sbase + L::V + sv * C::KV_BYTES, C::CB_BYTES);
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++)
                wgmma_rs<T, HD>::run(o, pf[kk], desc_make(v_lo + ((kk * 16 * 128) >> 4), SM90_DESC_HI(1024)));
        };
        /* which Q scores key tile n: 0 = q, 1 = q_shift, 2 = mixed (q, then q_shift per chunk) */
        auto string_mode = [&](int n) -> int {
            if (!STR || str_S <= 0 || n * BN > wg_th_max) return 0;
            return n * BN + BN - 1 <= wg_th_min ? 1 : 2;
        };
        /* mixed tile: q_shift's scores replace those of keys j <= th. Runs with no wgmma in
         * flight and pf dead, so a second full S accumulator fits (sacc + o + s2 = 192) */
        auto string_fixup = [&](int sk, int n) {
            float s2[BN / 2];
            fence_regs(s2);
            wgmma_fence();
            issue_qk_into(s2, sk, qs_addr);
            wgmma_commit();
            wgmma_wait<0>();
            fence_regs(s2);
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int j = n * BN + nt * 8 + 2 * (lane & 3) + (e & 1);
                    if (j <= (e < 2 ? th_a : th_b)) sacc[4 * nt + e] = s2[4 * nt + e];
                }
        };
        /* mask (diagonal / window edge only), online softmax of S -> P values in sacc; returns
         * the rescale factors of O in ca, cb */
        auto softmax = [&](int n, float &ca, float &cb) {
            const int k0 = n * BN;
            const bool need_mask = k0 + BN - 1 > min_pos || (W > 0 && k0 <= max_pos - W);
            if (need_mask) {
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int j = k0 + nt * 8 + 2 * (lane & 3) + (e & 1);
                        const int ps = e < 2 ? pos_a : pos_b;
                        if (j > ps || (W > 0 && j <= ps - W)) sacc[4 * nt + e] = -INFINITY;
                    }
            }
            float mx_a = m_a, mx_b = m_b;
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                mx_a = fmaxf(mx_a, fmaxf(sacc[4 * nt], sacc[4 * nt + 1]));
                mx_b = fmaxf(mx_b, fmaxf(sacc[4 * nt + 2], sacc[4 * nt + 3]));
            }
            mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
            mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
            mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
            mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
            /* base in scaled units; a row with nothing visible yet keeps -inf and uses base 0 */
            const float ba = mx_a == -INFINITY ? 0.f : mx_a * sl2;
            const float bb = mx_b == -INFINITY ? 0.f : mx_b * sl2;
            ca = exp2f(m_a * sl2 - ba);
            cb = exp2f(m_b * sl2 - bb);
            m_a = mx_a;
            m_b = mx_b;
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++)
                    sacc[4 * nt + e] = exp2f(fmaf(sacc[4 * nt + e], sl2, -(e < 2 ? ba : bb)));
            }
        };
        /* S (as P values) -> the P fragments (n8 blocks 2kk, 2kk+1 are the A fragment of k-step
         * kk), and the row sums, which add the values P holds (rounded to T). Runs after the
         * previous P.V has completed: defining pf while that wgmma still reads it would make
         * ptxas serialize the pipeline (C7513). */
        auto make_p = [&](float ca, float cb) {
            float rs_a = 0.f, rs_b = 0.f;
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
#pragma unroll
                for (int h = 0; h < 4; h++) {
                    pf[kk][h] = pack2<T>(sacc[8 * kk + 2 * h], sacc[8 * kk + 2 * h + 1]);
                    const float2 v = unpack2<T>(pf[kk][h]);
                    if (h & 1) rs_b += v.x + v.y;
                    else rs_a += v.x + v.y;
                }
            }
            l_a = l_a * ca + rs_a;
            l_b = l_b * cb + rs_b;
        };
        auto release = [&](uint32_t bar) {
            __syncwarp();
            if (lane == 0) mbar_arrive(bar);
        };

        /* ping-pong turns: named barrier 3 + wg is this warpgroup's turn to issue its GEMMs; the
         * second warpgroup hands the first turn to the first (see the top of the file) */
        const int n_loop = n_tiles - 1;
        if (wg == 1 && n_loop > 0) named_arrive(3, 256);

        /* tile n_hi: S only */
        {
            const int mode = string_mode(n_hi);
            mbar_wait(full_k(0), 0);
            fence_proxy_async();
            fence_regs(sacc);
            wgmma_fence();
            issue_qk(0, mode == 1 ? qs_addr : q_addr);
            wgmma_commit();
            wgmma_wait<0>();
            fence_regs(sacc);
            if (STR && mode == 2) string_fixup(0, n_hi);
            release(empty_k(0));
            float ca, cb;
            softmax(n_hi, ca, cb); /* O is 0: no rescale */
            make_p(ca, cb);
        }
        for (int i = 1; i < n_tiles; i++) {
            const int n = n_hi - i, sk = i % ST, sv = (i - 1) % ST;
            const int mode = string_mode(n);
            mbar_wait(full_k(sk), (i / ST) & 1);
            fence_proxy_async();
            named_sync(3 + wg, 256);
            fence_regs(sacc);
            wgmma_fence();
            issue_qk(sk, mode == 1 ? qs_addr : q_addr);
            wgmma_commit();
            mbar_wait(full_v(sv), ((i - 1) / ST) & 1);
            fence_proxy_async();
            fence_regs(o);
            fence_regs(pf);
            wgmma_fence();
            issue_pv(sv);
            wgmma_commit();
            if (wg == 0 || i < n_loop) named_arrive(3 + (1 - wg), 256);
            /* Two complete paths to the point where nothing is in flight: ptxas's wgmma register
             * analysis does not follow correlated branches, and a merged path would reserve
             * P.V's registers during the STRING fixup (C7512, serialized pipeline). */
            float ca, cb;
            if (STR && mode == 2) {
                /* the band's edge: q_shift's scores once both groups are done (pf is dead) */
                wgmma_wait<0>();
                fence_regs(sacc);
                fence_regs(o);
                string_fixup(sk, n);
                release(empty_k(sk));
                softmax(n, ca, cb);
                release(empty_v(sv));
            } else {
                wgmma_wait<1>(); /* S done, P.V may still run */
                fence_regs(sacc);
                release(empty_k(sk));
                softmax(n, ca, cb);
                /* P.V done: o may be read and pf redefined. The fences keep both the O rescale
                 * and the P packing (which reads sacc) below the wait. */
                wgmma_wait<0>();
                fence_regs(o);
                fence_regs(sacc);
                release(empty_v(sv));
            }
            make_p(ca, cb);
#pragma unroll
            for (int nt = 0; nt < HD / 8; nt++) {
                o[4 * nt] *= ca;
                o[4 * nt + 1] *= ca;
                o[4 * nt + 2] *= cb;
                o[4 * nt + 3] *= cb;
            }
        }
        /* the last tile's P.V */
        {
            const int sv = (n_tiles - 1) % ST;
            mbar_wait(full_v(sv), ((n_tiles - 1) / ST) & 1);
            fence_proxy_async();
            fence_regs(o);
            fence_regs(pf);
            wgmma_fence();
            issue_pv(sv);
            wgmma_commit();
            wgmma_wait<0>();
            fence_regs(o);
            release(empty_v(sv));
        }

        l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
        l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
        l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
        l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
        const float ia = l_a > 0.f ? 1.f / l_a : 0.f, ib = l_b > 0.f ? 1.f / l_b : 0.f;
        TQ *out = reinterpret_cast<TQ *>(p.out);
        if (pr_a < n_pr) {
            const int t = pr_a / G, gi = pr_a - t * G;
            TQ *dst = out + (size_t)(qs + t) * p.q_row_stride + (size_t)(kvh * G + gi) * HD + 2 * (lane & 3);
#pragma unroll
            for (int nt = 0; nt < HD / 8; nt++) store_o2(dst + nt * 8, o[4 * nt] * ia, o[4 * nt + 1] * ia);
        }
        if (pr_b < n_pr) {
            const int t = pr_b / G, gi = pr_b - t * G;
            TQ *dst = out + (size_t)(qs + t) * p.q_row_stride + (size_t)(kvh * G + gi) * HD + 2 * (lane & 3);
#pragma unroll
            for (int nt = 0; nt < HD / 8; nt++) store_o2(dst + nt * 8, o[4 * nt + 2] * ib, o[4 * nt + 3] * ib);
        }
    }
#else
    __trap(); /* not the sm_90a image: never launched (backend_cuda.cu checks the device) */
#endif
}

// ------------------------------------------------------------------------------------------------
// host side: one instantiation per (cache dtype T, q/out dtype TQ, head_dim, STRING)

#define SM90_FOR_EACH_HD(X) X(64) X(128)

int cuda_attn_prefill_sm90_supported(int head_dim, enum bk_dtype kv_dtype, int pre_rope, int string, size_t smem_optin)
{
    if (pre_rope || (kv_dtype != BK_BF16 && kv_dtype != BK_F16)) return 0;
    switch (head_dim) {
#define X(hd) \
    case hd: return (string ? sm90_smem_bytes<hd, true>() : sm90_smem_bytes<hd, false>()) <= smem_optin;
        SM90_FOR_EACH_HD(X)
#undef X
    default:
        return 0;
    }
}

template <typename T, typename TQ, int HD, bool STR>
static cudaError_t sm90_set_smem(size_t smem_optin)
{
    if (sm90_smem_bytes<HD, STR>() > smem_optin) return cudaSuccess; /* never launched (supported() says no) */
    return cudaFuncSetAttribute(attn_prefill_sm90_kernel1<T, TQ, HD, STR>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)sm90_smem_bytes<HD, STR>());
}

int cuda_attn_prefill_sm90_init(size_t smem_optin, char *err)
{
    cudaError_t e = cudaSuccess;
#define X1(T, TQ, hd)                                                      \
    if (e == cudaSuccess) e = sm90_set_smem<T, TQ, hd, false>(smem_optin); \
    if (e == cudaSuccess) e = sm90_set_smem<T, TQ, hd, true>(smem_optin);
#define X(hd)                          \
    X1(__nv_bfloat16, float, hd)       \
    X1(__nv_bfloat16, __nv_bfloat16, hd) \
    X1(__half, float, hd)              \
    X1(__half, __half, hd)
    SM90_FOR_EACH_HD(X)
#undef X
#undef X1
    if (e != cudaSuccess) {
        cudaGetLastError();
        return set_err(err, -1, "cuda: sm_90a prefill attention setup failed: %s", cudaGetErrorString(e));
    }
    return 0;
}

template <typename T, typename TQ, bool STR>
static void launch_sm90(const struct attn_params *p, int n_tiles, cudaStream_t stream)
{
    const dim3 grid((unsigned)n_tiles, (unsigned)p->n_kv_heads);
    switch (p->head_dim) {
#define X(hd)                                                                                                \
    case hd:                                                                                                 \
        attn_prefill_sm90_kernel1<T, TQ, hd, STR><<<grid, SM90_THREADS, sm90_smem_bytes<hd, STR>(), stream>>>(*p); \
        break;
        SM90_FOR_EACH_HD(X)
#undef X
    default:
        CHECK(0, "sm_90a prefill attention: head_dim %d has no instantiation", p->head_dim);
    }
    CUDA_LAUNCH_CHECK();
}

template <typename T>
static void launch_sm90_q(const struct attn_params *p, int n_tiles, enum bk_dtype dt, cudaStream_t stream)
{
    const bool str = p->string_shift != NULL;
    CHECK(p->q_dtype == BK_F32 || p->q_dtype == dt, "sm_90a prefill attention: q dtype %d with a dtype %d cache",
          (int)p->q_dtype, (int)dt);
    if (p->q_dtype == BK_F32) {
        if (str) launch_sm90<T, float, true>(p, n_tiles, stream);
        else launch_sm90<T, float, false>(p, n_tiles, stream);
    } else {
        if (str) launch_sm90<T, T, true>(p, n_tiles, stream);
        else launch_sm90<T, T, false>(p, n_tiles, stream);
    }
}

void cuda_attn_prefill_sm90(const struct attn_params *p, int n_tiles, enum bk_dtype dt, cudaStream_t stream)
{
    if (n_tiles == 0) return;
    CHECK(!p->pre_rope, "sm_90a prefill attention: pre-RoPE keys are the sm_80 kernel's");
    CHECK(p->string_shift == NULL || p->q_shift, "STRING attention without q_shift");
    CHECK(dt == BK_BF16 || dt == BK_F16, "sm_90a prefill attention: cache dtype %d", (int)dt);
    if (dt == BK_BF16) launch_sm90_q<__nv_bfloat16>(p, n_tiles, dt, stream);
    else launch_sm90_q<__half>(p, n_tiles, dt, stream);
}
