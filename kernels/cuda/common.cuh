/* common.cuh - what the CUDA backend's .cu files share: the error-check macros, the device
 * buffer and context structs, the attention kernels' params struct, and the launchers each
 * file exports to backend_cuda.cu. Nothing outside kernels/cuda/ includes this file.
 *
 * Storage (the choices every kernel here relies on):
 *   weights      bf16 or f16 (ctx->dtype, from backend_params.dtype); F32 checkpoint tensors are
 *                rounded to it on upload. Norm and embedding weights too: weight_new cannot tell
 *                a norm vector from a matrix, and HF bf16 checkpoints store them in bf16 anyway.
 *   activations  16-bit between ops, the weights' dtype (act_new): q/k/v, attention output,
 *                projections, gate/up, the normed GEMM inputs. GEMMs take them as they are and
 *                write 16-bit outputs (cuBLAS, FP32 accumulation, no cast kernel, no TF32). fp32
 *                only inside kernels (norm sums, softmax, accumulators) and in the buffers the
 *                model asks fp32 for (act_new_f32: the residual stream, which is added to once
 *                per sub-layer and would drift if rounded each time, and the logits).
 *                act_read/act_write convert. ROPESERVE_CUDA_ACT=f32 (read at init) makes
 *                act_new fp32 again, with a cast to 16 bits before each GEMM: the kernel
 *                checkers use it to compare each op with fp32 tolerances.
 *                An fp8 KV cache runs with fp32 activations (the fp8 kernels take fp32 q).
 *   KV cache     bf16 or f16 (ctx->dtype), or fp8 e4m3 (--kv-cache-dtype fp8: __nv_fp8_e4m3
 *                codes of x / scale, one scale per (layer, KV head) for k and one for v), per
 *                layer k[n_blocks][block_size][n_kv_heads][head_dim] and the same for v
 *                (backend.h's layout): one block of one head is block_size rows of head_dim
 *                contiguous values. The attention kernels take the cache's element type as a
 *                template parameter and read 8 elements at a time (load8/raw8: 16 bytes of
 *                bf16/f16, 8 bytes of fp8); fp8 is dequantised in the kernels (code x scale,
 *                fp32), accumulation stays fp32.
 *
 * Streams: every op runs on ctx->stream, a blocking stream (created without
 * cudaStreamNonBlocking), so work on the legacy default stream (the checkers' timing events)
 * is ordered with it. act_read synchronizes the stream. */
#ifndef ROPESERVE_CUDA_COMMON_CUH
#define ROPESERVE_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "../../common/common.h"
#include "../backend.h"
}

// ------------------------------------------------------------------------------------------------
// error checks (STYLE rule 17): a device error inside an op is a broken invariant -> abort with
// file:line. Functions that can fail for an outside reason (memory) check by hand and return.

#define CUDA_CHECK(call)                                                                    \
    do {                                                                                    \
        cudaError_t e_ = (call);                                                            \
        if (e_ != cudaSuccess)                                                              \
            check_failed(__FILE__, __LINE__, #call, "CUDA error %d: %s", (int)e_,          \
                         cudaGetErrorString(e_));                                           \
    } while (0)

#define CUBLAS_CHECK(call)                                                                  \
    do {                                                                                    \
        cublasStatus_t s_ = (call);                                                         \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                    \
            check_failed(__FILE__, __LINE__, #call, "cuBLAS error %d: %s", (int)s_,        \
                         cublasGetStatusString(s_));                                        \
    } while (0)

/* After every kernel launch: launch-configuration errors surface here, at the launch site. */
#define CUDA_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

// ------------------------------------------------------------------------------------------------
// buffers and context

struct bk_buf {
    void *d;              /* device memory */
    size_t n;             /* elements */
    enum bk_dtype dtype;  /* weights: ctx->dtype; activations: ctx->act_dtype or BK_F32 */
    int is_weight;
    uint64_t version;     /* bumped by every op that writes the buffer (matmul cast cache) */
};

/* The device copy of one batch's metadata (struct bk_batch + what batch_begin derives). */
struct cuda_batch {
    int n_tokens, n_seqs, n_out, block_table_stride, rotary_dim;
    const int32_t *tokens;       /* (n_tokens) */
    const int32_t *positions;    /* (n_tokens) */
    const int64_t *slot_mapping; /* (n_tokens) */
    const int32_t *query_start;  /* (n_seqs + 1) */
    const int32_t *seq_lens;     /* (n_seqs) */
    const int32_t *block_tables; /* (n_seqs, block_table_stride) */
    const int32_t *out_rows;     /* (n_out) */
    const float *inv_freq;       /* (n_seqs, rotary_dim / 2) */
    const float *attn_factor;    /* (n_seqs) */
    const float *q_scale;        /* (n_tokens) or NULL: rope multiplies q (and q_shift) rows by it */
    /* STRING (backend.h, REFERENCES-rope.md §8): both NULL when no sequence of the batch has
     * string_shift > 0 (has_string 0), so every kernel keeps its plain path */
    const int32_t *string_shift; /* (n_seqs) S, 0 = off */
    const int32_t *string_local; /* (n_seqs) W */
    int has_string;
    const int32_t *row_seq;      /* (n_tokens) the sequence of each row (derived) */
    const int32_t *items;        /* (n_tokens) rows for the split-KV kernel: the n_dec rows of
                                    single-token sequences first, then every row of the others */
    int n_dec;                   /* rows of sequences with one new token */
    int max_ctx_dec;             /* largest positions[r] + 1 over the first n_dec items */
    int max_ctx_all;             /* the same over all items */
};

struct cuda_ctx {
    int device;
    char name[256];
    int n_sm, cc_major, cc_minor;
    size_t total_mem;
    enum bk_dtype dtype;         /* weights and KV cache: BK_BF16 or BK_F16 */
    double gpu_memory_utilization;
    int attn_simt_only;          /* ROPESERVE_CUDA_ATTN=simt: every row through the split-KV kernel */
    int attn_fa2;                /* not ROPESERVE_CUDA_ATTN=sm80v1|simt: the 128-row sm_80 kernel
                                    (attention_prefill_fa2.cu) takes the batches it supports that
                                    the sm_90a kernel does not */
    int attn_sm90;               /* compute capability 9.0 and not ROPESERVE_CUDA_ATTN=sm80|simt: the
                                    sm_90a prefill kernel takes the batches it supports */
    size_t smem_optin;           /* max dynamic shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin) */

    cudaStream_t stream;
    cublasHandle_t cublas;
    void *cublas_ws;             /* cuBLAS workspace (fixed size, so the memory plan is exact) */
    size_t cublas_ws_bytes;

    /* matmul input cast: x (fp32) -> cast_buf (dtype), reused while x is unchanged */
    void *cast_buf;
    size_t cast_cap;             /* bytes */
    const struct bk_buf *cast_src;
    uint64_t cast_version;
    size_t cast_n;

    /* KV cache */
    struct bk_kv_params kv;      /* kv.sliding_window points at sliding_window below (or NULL) */
    int kv_ready;
    int32_t *sliding_window;     /* (n_layers) the copy kv_init makes; NULL = none */
    void **k_layers, **v_layers; /* (n_layers) device pointers, each (n_blocks, block_size, n_kv_heads, head_dim) */
    float *kv_scales;            /* fp8 cache: device (2, n_layers, n_kv_heads), k scales then v; else NULL */
    size_t kv_layer_bytes;

    /* batch metadata: pinned staging -> one cudaMemcpyAsync -> d_meta */
    struct bk_batch host;        /* the caller's batch (its arrays stay valid until the next batch_begin) */
    struct cuda_batch b;         /* device pointers into d_meta */
    unsigned char *h_meta, *d_meta;
    size_t h_meta_cap, d_meta_cap;
    cudaEvent_t meta_ev;         /* recorded after the copy out of h_meta */
    int have_batch;

    /* prefill tile list, built at the first attention() of a batch for its GQA group size */
    int32_t *h_tiles, *d_tiles;  /* (n_tiles, 2): sequence, first packed row */
    size_t tiles_cap;            /* entries (pairs) */
    int tiles_group;             /* group size the list was built for; 0 = none yet */
    int tiles_bm;                /* packed rows per tile it was built for (the kernel's BLOCK_M) */
    int n_tiles;
    cudaEvent_t tiles_ev;

    /* split-KV partial results */
    float *part;                 /* (n_items, n_heads, n_splits, head_dim) then (n_items, n_heads, n_splits) lse */
    size_t part_cap;             /* floats */
    int dec_ctas_per_sm[4];      /* occupancy of the split-KV kernel at GC 1, 2, 4, 8 (kv_init) */

    /* activations: act_new gives act_dtype (the 16-bit dtype, or BK_F32 with ROPESERVE_CUDA_ACT=f32),
     * act_new_f32 always fp32 (the residual stream, logits) */
    enum bk_dtype act_dtype;
    /* fp32 staging for the sm_80 prefill kernel, which reads fp32 q and writes fp32 out: q,
     * q_shift, out, each stage_cap floats (reserved by act_new, never inside an op) */
    float *stage;
    size_t stage_cap;

    /* CUDA graphs of decode steps (graph_run): a small table keyed by the caller's key, each
     * entry valid only for the batch signature it was captured with */
    int graphs_on;               /* backend_params.cuda_graphs and not ROPESERVE_CUDA_GRAPHS=0 */
    uint64_t graph_gen;          /* bumped by every allocation change that graphs may have baked in */
    struct cuda_graph_entry *graphs;
    int n_graphs;

    /* timing hook (backend.h prof_*, kernels/profile.h): one timing event per mark slot */
    cudaEvent_t *prof_ev;
    int prof_n;
};

/* What a captured graph baked in: any difference means recapture. */
struct cuda_graph_sig {
    int n_tokens, n_seqs, n_out, block_table_stride, rotary_dim, has_string, has_q_scale, n_dec;
    const void *d_meta;
    uint64_t gen;
};
struct cuda_graph_entry {
    int key;
    struct cuda_graph_sig sig;
    cudaGraphExec_t exec;
};
#define CUDA_MAX_GRAPHS 128

static inline size_t dtype_size(enum bk_dtype t) { return t == BK_F32 ? 4 : 2; }

// ------------------------------------------------------------------------------------------------
// attention params (STYLE rule 7): one struct, explicit strides, shared by both kernel families.

struct attn_params {
    float *out;                  /* (n_tokens, n_heads, head_dim) */
    const float *q;              /* (n_tokens, n_heads, head_dim), already rotated */
    const void *k_cache;         /* (n_blocks, block_size, n_kv_heads, head_dim), dtype T */
    const void *v_cache;         /* same */
    long long q_row_stride;      /* n_heads * head_dim */
    long long kv_token_stride;   /* n_kv_heads * head_dim */
    int head_dim, n_heads, n_kv_heads, group; /* group = n_heads / n_kv_heads */
    int block_size, log2_block_size;
    const int32_t *block_tables; /* (n_seqs, block_table_stride) */
    int block_table_stride;
    const int32_t *positions;    /* (n_tokens) */
    const int32_t *row_seq;      /* (n_tokens) */
    const int32_t *query_start;  /* (n_seqs + 1) */
    float scale_log2;            /* softmax scale * log2(e): scores are kept in base 2 */
    /* BK_K_PRE_ROPE: key j is rotated at position j as it is read */
    int pre_rope, rotary_dim;
    const float *inv_freq;       /* (n_seqs, rotary_dim / 2) */
    const float *attn_factor;    /* (n_seqs) */
    /* split-KV kernel */
    const int32_t *items;        /* (n_items) rows */
    int n_items, n_splits, n_hchunks, lanes_per_key;
    float *part_o;               /* (n_items, n_heads, n_splits, head_dim) */
    float *part_lse;             /* (n_items, n_heads, n_splits), base 2 */
    /* prefill kernel */
    const int32_t *tiles;        /* (n_tiles, 2) */
    /* STRING: string_shift NULL = no STRING sequence in the launch (the plain instantiations).
     * Otherwise, for a sequence with S = string_shift[s] > 0, the query at position p scores key j
     * with q_shift (same layout and strides as q) when p - j >= S, i.e. j <= p - S, and with q
     * otherwise. q_shift rows of other sequences are never read. */
    const float *q_shift;        /* (n_tokens, n_heads, head_dim) or NULL */
    const int32_t *string_shift; /* (n_seqs) or NULL */
    /* INTERFACES §3: element type of q, q_shift and out: BK_F32, or the cache's T (the backend's
     * 16-bit activations). The split-KV and sm_90a kernels read it; the sm_80 prefill kernel
     * takes fp32 only, and backend_cuda.cu hands it fp32 staging copies of 16-bit q/out. */
    enum bk_dtype q_dtype;
    /* backend.h sliding_window of this layer: 0 = full causal; W > 0: the query at position p
     * sees keys p - W < j <= p, and keys below p - W + 1 are never read */
    int sliding_window;
    /* fp8 KV cache: this layer's scales, device memory; NULL for a bf16/f16 cache. The stored
     * code of kv head h dequantises to e4m3(code) * k_scale[h] (v_scale[h] for values). */
    const float *k_scale;        /* (n_kv_heads) */
    const float *v_scale;        /* (n_kv_heads) */
};

// ------------------------------------------------------------------------------------------------
// device helpers shared by the kernels: element conversion, 8-wide unpacking, the rotated key

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }

/* x rounded to T and back: the value a T-typed tensor would hold */
template <typename T> __device__ __forceinline__ float round_to(float x) { return to_f32(from_f32<T>(x)); }

/* One activation element of runtime dtype dt (BK_F32, BK_BF16, BK_F16) as fp32, and the store
 * that rounds it once. dt is uniform over a launch, so the switch costs no divergence. */
__device__ __forceinline__ float ld_act(const void *p, int dt, size_t i)
{
    if (dt == BK_BF16) return __bfloat162float(static_cast<const __nv_bfloat16 *>(p)[i]);
    if (dt == BK_F16) return __half2float(static_cast<const __half *>(p)[i]);
    return static_cast<const float *>(p)[i];
}
__device__ __forceinline__ void st_act(void *p, int dt, size_t i, float v)
{
    if (dt == BK_BF16) static_cast<__nv_bfloat16 *>(p)[i] = __float2bfloat16_rn(v);
    else if (dt == BK_F16) static_cast<__half *>(p)[i] = __float2half_rn(v);
    else static_cast<float *>(p)[i] = v;
}

/* Two floats -> one 32-bit register of two T (lo in the low half, as mma/ldmatrix expect). */
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi)
{
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
}
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi)
{
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
}

/* 8 values of T in a uint4 (16 bytes) -> f[0..8) */
template <typename T> __device__ __forceinline__ void unpack8(const uint4 u, float *f);
template <> __device__ __forceinline__ void unpack8<__nv_bfloat16>(const uint4 u, float *f)
{
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}
template <> __device__ __forceinline__ void unpack8<__half>(const uint4 u, float *f)
{
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        __half2 h = *reinterpret_cast<const __half2 *>(&w[i]);
        const float2 v = __half22float2(h);
        f[2 * i] = v.x;
        f[2 * i + 1] = v.y;
    }
}

// ---- fp8 (e4m3) KV cache: dequantisation helpers ----
/* the fp8 cache's element type; is_fp8<T> picks the kernels' fp8 paths at compile time */
typedef __nv_fp8_e4m3 kv_fp8;
template <typename T> struct is_fp8 { static constexpr bool value = false; };
template <> struct is_fp8<kv_fp8> { static constexpr bool value = true; };

/* one e4m3 code -> its value (exact in fp32) */
__device__ __forceinline__ float to_f32(kv_fp8 x) { return __half2float(__half(__nv_cvt_fp8_to_halfraw(x.__x, __NV_E4M3))); }
/* the split-KV kernel keeps q in fp32 against an fp8 cache (its math is fp32 SIMT) */
template <> __device__ __forceinline__ float round_to<kv_fp8>(float x) { return x; }

/* 8 consecutive cache elements at p -> f[0..8): one 16-byte load of bf16/f16, one 8-byte load of
 * fp8 codes (e4m3 -> f16 pairwise by cvt, exact, then f32); the fp8 scale is the caller's */
template <typename T> __device__ __forceinline__ void load8(const T *p, float *f)
{
    unpack8<T>(*reinterpret_cast<const uint4 *>(p), f);
}
/* 8 consecutive cache elements at p as raw bits, converted later by unpack8<T> (the split-KV
 * kernel keeps several loads in flight before it converts any): 16 bytes of bf16/f16, or the
 * 8 bytes of fp8 codes in .x/.y */
template <typename T> __device__ __forceinline__ uint4 raw8(const T *p) { return *reinterpret_cast<const uint4 *>(p); }
template <> __device__ __forceinline__ uint4 raw8<kv_fp8>(const kv_fp8 *p)
{
    const uint2 u = *reinterpret_cast<const uint2 *>(p);
    return make_uint4(u.x, u.y, 0u, 0u);
}
template <> __device__ __forceinline__ void unpack8<kv_fp8>(const uint4 u, float *f)
{
    const uint32_t w[2] = {u.x, u.y};
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const __half2 v2 = __half2(__nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w[i] >> (16 * h)), __NV_E4M3));
            const float2 v = __half22float2(v2);
            f[4 * i + 2 * h] = v.x;
            f[4 * i + 2 * h + 1] = v.y;
        }
}
template <> __device__ __forceinline__ void load8<kv_fp8>(const kv_fp8 *p, float *f)
{
    unpack8<kv_fp8>(raw8<kv_fp8>(p), f);
}

/* Elements [8c, 8c+8) of a cached key row (head_dim values of T, 16-byte aligned). With
 * BK_K_PRE_ROPE the row is rotated at position j with the sequence's frequencies exactly as the
 * rope op would have (fp32 angle, sincosf, cos/sin x attn_factor, HF rotate-half), in fp32: the
 * split-KV kernel uses it as is, the tensor-core kernel rounds it to T for the mma. Slow path:
 * one sincosf per element and a scalar load of each partner element. */
template <typename T>
__device__ __forceinline__ void load_key8(float *f, const T *row, int c, int j, int pre_rope,
                                          int rotary_dim, const float *inv_freq_s, float af)
{
    load8<T>(row + c * 8, f);
    if (!pre_rope) return;
    const int half = rotary_dim >> 1;
#pragma unroll
    for (int e = 0; e < 8; e++) {
        const int d = c * 8 + e;
        if (d >= rotary_dim) continue;
        const bool lo = d < half;
        const int i = lo ? d : d - half;
        const float x2 = to_f32(row[lo ? d + half : d - half]);
        const float ang = __fmul_rn((float)j, inv_freq_s[i]);
        float sn, cs;
        sincosf(ang, &sn, &cs);
        cs = __fmul_rn(cs, af);
        sn = __fmul_rn(sn, af);
        f[e] = lo ? __fsub_rn(__fmul_rn(f[e], cs), __fmul_rn(x2, sn))
                  : __fadd_rn(__fmul_rn(f[e], cs), __fmul_rn(x2, sn));
    }
}

// ------------------------------------------------------------------------------------------------
// launchers (all enqueue on `stream`, none synchronizes)

/* elementwise.cu. Activations are void * with their element type (BK_F32, or the 16-bit
 * BK_BF16/BK_F16 of ctx->act_dtype): every kernel loads through ld_act and stores through
 * st_act (a warp-uniform switch), computes in fp32 and rounds once on the store. */
void cuda_cast_f32(void *dst, enum bk_dtype dt, const float *src, size_t n, cudaStream_t stream);
/* dst (n) = src (n) converted between any two of f32/bf16/f16 (dst != src) */
void cuda_convert(void *dst, enum bk_dtype ddt, const void *src, enum bk_dtype sdt, size_t n, cudaStream_t stream);
void cuda_embed(void *x, enum bk_dtype xdt, const void *table, enum bk_dtype tdt, const int32_t *tokens,
                int n_tokens, int dim, cudaStream_t stream);
void cuda_rmsnorm(void *out, enum bk_dtype odt, const void *x, enum bk_dtype xdt, const void *w,
                  enum bk_dtype wdt, int n_rows, int dim, float eps, cudaStream_t stream);
/* out (n_rows, dim) = rmsnorm(x[rows[i]]) * w: gather_rows + rmsnorm in one pass (out != x) */
void cuda_gather_rmsnorm(void *out, enum bk_dtype odt, const void *x, enum bk_dtype xdt, const int32_t *rows,
                         const void *w, enum bk_dtype wdt, int n_rows, int dim, float eps, cudaStream_t stream);
/* x (n_rows, dim) += y, rounded to x's dtype; out = rmsnorm(x as stored) * w: exactly add then
 * rmsnorm, one pass. out must alias neither x nor y. */
void cuda_add_rmsnorm(void *out, enum bk_dtype odt, void *x, enum bk_dtype xdt, const void *y, enum bk_dtype ydt,
                      const void *w, enum bk_dtype wdt, int n_rows, int dim, float eps, cudaStream_t stream);
/* q, k rotated in place, q rows times b->q_scale; q_shift (may be NULL) filled for the rows of
 * STRING sequences only (backend.h, rope); all three of dtype adt */
void cuda_rope(void *q, void *k, void *q_shift, enum bk_dtype adt, const struct cuda_batch *b, int n_heads,
               int n_kv_heads, int head_dim, cudaStream_t stream);
/* add_bias (bq/bk/bv, NULL: none) + rope (k rotated when rotate_k) + kv_store in one pass; the
 * k and v activations are only read (backend.h rope_kv_store) */
void cuda_rope_kv(void *q, const void *k, const void *v, void *q_shift, enum bk_dtype adt, const void *bq,
                  const void *bk, const void *bv, enum bk_dtype wdt, void *k_cache, void *v_cache, enum bk_dtype cdt,
                  int rotate_k, const struct cuda_batch *b, int n_heads, int n_kv_heads, int head_dim,
                  cudaStream_t stream);
void cuda_kv_store(void *k_cache, void *v_cache, enum bk_dtype dt, const void *k, const void *v, enum bk_dtype adt,
                   const int64_t *slot_mapping, int n_tokens, int row_elems, cudaStream_t stream);
/* the fp8 cache: code = e4m3(x / scale[kv head]) (IEEE division, round to nearest even,
 * saturating to +-448: bk_fp8_e4m3_from_f32 bit for bit); k, v activations of dtype adt;
 * k_scale, v_scale (n_kv_heads) of the layer, device memory */
void cuda_kv_store_fp8(void *k_cache, void *v_cache, const void *k, const void *v, enum bk_dtype adt,
                       const float *k_scale, const float *v_scale, const int64_t *slot_mapping, int n_tokens,
                       int n_kv_heads, int head_dim, cudaStream_t stream);
void cuda_swiglu(void *out, enum bk_dtype odt, const void *gate, enum bk_dtype gdt, const void *up,
                 enum bk_dtype udt, size_t n, cudaStream_t stream);
void cuda_add(void *x, enum bk_dtype xdt, const void *y, enum bk_dtype ydt, size_t n, cudaStream_t stream);
/* x (n_rows, n) += b (n), b stored as bdt (BK_BF16 or BK_F16, the weights' dtype) */
void cuda_add_bias(void *x, enum bk_dtype xdt, const void *b, enum bk_dtype bdt, int n_rows, int n,
                   cudaStream_t stream);
void cuda_gather_rows(void *dst, enum bk_dtype ddt, const void *src, enum bk_dtype sdt, const int32_t *rows,
                      int n_out, int dim, cudaStream_t stream);

/* attention_decode.cu: split-KV kernel over p->n_items rows, then the merge when n_splits > 1.
 * STRING (p->string_shift set) takes its own instantiations; the plain ones are unchanged.
 * dt is the cache's dtype: bf16, f16, or fp8 (p->k_scale / v_scale set). */
void cuda_attn_decode(const struct attn_params *p, enum bk_dtype dt, cudaStream_t stream);
/* Query heads one split-KV CTA serves (GC <= 8); a group of G heads takes ceil(G / GC) CTAs. */
int cuda_attn_decode_heads_per_cta(int group);
int cuda_attn_decode_supported(int head_dim); /* head_dim % 8 == 0 && head_dim <= 256 */
int cuda_attn_decode_max_splits(void);
/* resident CTAs per SM of the plain split-KV instantiation for this GQA group (occupancy API) */
int cuda_attn_decode_ctas_per_sm(int group, enum bk_dtype dt);

/* attention_prefill.cu: tensor-core kernel over p->tiles (n_tiles of them). STRING launches
 * (p->string_shift set) take their own instantiations, which hold a second Q tile in shared
 * memory: supported where that fits the device's opt-in limit (smem_optin), else the caller
 * sends those rows to the split-KV kernel. */
int cuda_attn_prefill_supported(int head_dim);
int cuda_attn_prefill_string_supported(int head_dim, size_t smem_optin);
/* raises the dynamic shared memory limits (the STRING ones only where they fit); once */
int cuda_attn_prefill_init(size_t smem_optin, char *err);
void cuda_attn_prefill(const struct attn_params *p, int n_tiles, enum bk_dtype dt,
                       cudaStream_t stream);
/* The same kernel over an fp8 cache (p->k_scale, p->v_scale set): K/V tiles are dequantised
 * (code x scale) into shared memory in dt (the weights' bf16/f16, the mma's inputs). Instantiated
 * for head_dim 64 and 128; other head dims send their rows to the split-KV kernel. */
int cuda_attn_prefill_fp8_supported(int head_dim);
void cuda_attn_prefill_fp8(const struct attn_params *p, int n_tiles, enum bk_dtype dt, cudaStream_t stream);
#define ATTN_PREFILL_BLOCK_M 64 /* packed (token, head) rows per CTA */

/* attention_prefill_sm90.cu: the Hopper kernel (wgmma, warp-specialised, sm_90a image only) over
 * p->tiles of ATTN_PREFILL_SM90_BLOCK_M packed rows. Launch only on compute capability 9.0, for
 * batches that cuda_attn_prefill_sm90_supported() accepts: head_dim 64 or 128, a bf16/f16 cache
 * (not fp8), rotated keys (not pre-RoPE); with STRING (string 1) where its second Q tile fits
 * smem_optin. It also implements p->sliding_window and p->q_dtype (float or the cache's T). */
int cuda_attn_prefill_sm90_supported(int head_dim, enum bk_dtype kv_dtype, int pre_rope, int string,
                                     size_t smem_optin);
/* raises the kernels' dynamic shared memory limits; call once, on a compute capability 9.0 device */
int cuda_attn_prefill_sm90_init(size_t smem_optin, char *err);
void cuda_attn_prefill_sm90(const struct attn_params *p, int n_tiles, enum bk_dtype dt, cudaStream_t stream);
#define ATTN_PREFILL_SM90_BLOCK_M 128 /* packed rows per CTA (two consumer warpgroups of 64) */

/* attention_prefill_fa2.cu: the sm_80 prefill kernel at FlashAttention-2 quality (128-row tiles,
 * swizzled shared memory, a 3-4 stage cp.async ring) over p->tiles of ATTN_PREFILL_FA2_BLOCK_M
 * packed rows, on any sm_80+ device, for batches cuda_attn_prefill_fa2_supported() accepts:
 * head_dim 64 or 128, a bf16/f16 cache, rotated keys (pre-RoPE keys take attention_prefill.cu),
 * STRING where its second Q tile fits smem_optin. Implements p->sliding_window and p->q_dtype.
 * ROPESERVE_CUDA_FA2_BN=32|64 (read at init) forces the key tile at head_dim 128. */
int cuda_attn_prefill_fa2_supported(int head_dim, enum bk_dtype kv_dtype, int pre_rope, int string,
                                    size_t smem_optin);
int cuda_attn_prefill_fa2_init(size_t smem_optin, char *err); /* once; raises smem limits */
void cuda_attn_prefill_fa2(const struct attn_params *p, int n_tiles, enum bk_dtype dt, cudaStream_t stream);
#define ATTN_PREFILL_FA2_BLOCK_M 128 /* packed rows per CTA (8 warps of 16) */

#endif
