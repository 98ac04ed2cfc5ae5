/* backend_cuda.cu - the CUDA backend's vtable (kernels/backend.h): device memory, the paged KV
 * cache, batch metadata upload, cuBLAS GEMMs and the dispatch of every op to its kernel
 * (elementwise.cu, attention_decode.cu, attention_prefill.cu). Storage choices are in
 * common.cuh: bf16/f16 weights and KV cache, 16-bit activations between ops (the residual
 * stream and the logits fp32, act_new_f32).
 *
 * Fused ops (backend.h's optional ops): add_rmsnorm, gather_rmsnorm (the final norm over the
 * logits rows) and rope_kv_store (q/k/v biases + RoPE + the KV-cache write), each bit-identical
 * to the plain ops it replaces. SiLU x mul was one kernel (swiglu) already. Sampling stays on
 * the host: the sampler (engine/sampler.c) applies logit_bias, penalties and min_tokens to the
 * whole row before greedy/top-k, so an on-device argmax would have to move that policy here.
 *
 * GEMMs: cublasGemmEx with the activations as they are (bf16/f16 in, FP32 compute, bf16/f16 or
 * fp32 out as the output buffer's dtype): no cast kernel and no TF32 (CUBLAS_COMPUTE_32F on
 * 16-bit inputs, the default math mode). Only an fp32 input (ROPESERVE_CUDA_ACT=f32) is cast.
 *
 * CUDA graphs (graph_run, backend.h): a decode step's ops are captured once per key (the model's
 * batch-size bucket and block-table width) and replayed; what the capture baked in (the batch's
 * shape, the metadata buffer's address, every allocation: graph_gen) is its signature, and any
 * change recaptures. An all-decode batch's attention sizes its splits for the block table's
 * capacity (stride x block_size) rather than the current lengths, so a captured grid serves any
 * length that fits the table: splits past a row's keys exit at once. --no-cuda-graphs or
 * ROPESERVE_CUDA_GRAPHS=0 turns graphs off (graph_enabled says 0: the model runs eagerly).
 *
 * One stream. Every op is enqueued on ctx->stream and nothing synchronizes except act_read
 * (which must return data), buffer frees and the rare growth of a staging buffer. batch_begin
 * packs the batch metadata (and what it derives: the sequence of each row, the split-KV row
 * list) into one pinned staging buffer and uploads it with a single cudaMemcpyAsync; before it
 * rewrites that staging buffer it waits for the event recorded after the previous upload, so a
 * batch never overwrites metadata still in flight.
 *
 * Attention dispatch. Rows of sequences with one new token (decode) go to the split-KV kernel;
 * rows of sequences with several (prefill chunks) go to the tensor-core kernel, both in the same
 * attention() call on disjoint output rows. The tensor-core kernel is the sm_90a one
 * (attention_prefill_sm90.cu) on compute capability 9.0 where it supports the batch (head_dim
 * 64/128, rotated keys), else the sm_80 one. Head dims without a tensor-core instantiation, and
 * ROPESERVE_CUDA_ATTN=simt (read at init; =sm80 and =sm90 force those prefill kernels: the
 * checkers use it to test each path), send every row to the split-KV kernel, which is correct
 * for any row, only slower for long prefills.
 * An fp8 KV cache (--kv-cache-dtype fp8) runs the split-KV kernel's and the sm_80 prefill
 * kernel's fp8 instantiations (head_dim 64/128; other head dims send every row to split-KV),
 * never the sm_90a kernel; kv_init copies the per-(layer, head) scales to the device.
 * 64/128, rotated keys), else the 128-row sm_80 one (attention_prefill_fa2.cu) where it does
 * (head_dim 64/128, rotated keys, its shared memory fits), else the 64-row sm_80 one
 * (attention_prefill.cu: pre-RoPE keys, other head dims). Head dims without a tensor-core
 * instantiation, and ROPESERVE_CUDA_ATTN=simt (read at init; =sm80, =sm80v1 (the 64-row kernel)
 * and =sm90 force those prefill kernels: the checkers use it to test each path), send every row
 * to the split-KV kernel, which is correct for any row, only slower for long prefills.
 *
 * Timing hook (backend.h prof_*, for kernels/profile.h): one timing event per mark, recorded on
 * the stream; nothing synchronizes until prof_elapsed_ms.
 * A batch with a STRING sequence (string_shift[s] > 0) launches both kernels' STRING
 * instantiations (they treat S = 0 rows as plain); a batch without one never reads q_shift,
 * and its string arrays are not even uploaded. Where the STRING prefill kernel's second Q tile
 * does not fit the device's shared memory, that batch's rows all go to split-KV.
 *
 * Memory. cuBLAS gets a fixed 32 MiB workspace and the split-KV partials a fixed 32 MiB, both
 * allocated at init, and the matmul cast scratch (fp32 activations only) and the sm_80 prefill
 * staging (16-bit activations: 3 x the largest activation in fp32, until that kernel reads 16-bit
 * q/out itself as the sm_90a one does) grow in act_new (never inside an op), so after
 * the engine has loaded weights and made its activations, mem_free() is exact up to the margin
 * it subtracts (512 MiB: metadata staging, cuBLAS handles, fragmentation). kv_init allocates
 * exactly what it is asked for and reports out-of-memory as an error.
 *
 * Rejected: cudaMallocAsync pools (the memory plan would become a guess); fp32 x fp32 -> TF32
 * GEMMs on bf16-widened weights (2x the weight bytes, and decode is weight-bandwidth bound). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.cuh"

#define CUBLAS_WS_BYTES ((size_t)32 << 20)
#define PART_CAP_FLOATS ((size_t)8 << 20) /* 32 MiB of split-KV partial outputs */
#define MEM_MARGIN_BYTES ((size_t)512 << 20)
#define CONVERT_CHUNK ((size_t)1 << 22)   /* elements converted per host pass in weight_new */

// ------------------------------------------------------------------------------------------------
// small helpers

static int dev_alloc(void **p, size_t bytes, char *err, const char *what)
{
    *p = NULL;
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 16);
    if (e != cudaSuccess) {
        *p = NULL;
        cudaGetLastError(); /* clear it: out-of-memory is not sticky */
        return set_err(err, -1, "cuda: cannot allocate %.1f MiB for %s: %s",
                       (double)bytes / 1048576.0, what, cudaGetErrorString(e));
    }
    return 0;
}

static void set_device(const struct cuda_ctx *c)
{
    /* the current device is per host thread; the engine thread may not be the one that ran init */
    CUDA_CHECK(cudaSetDevice(c->device));
}

static size_t align16(size_t n) { return (n + 15) & ~(size_t)15; }

static int ceil_div(long long a, long long b) { return (int)((a + b - 1) / b); }

// ------------------------------------------------------------------------------------------------
// lifecycle, description, memory

static void kv_release(struct cuda_ctx *c)
{
    for (int l = 0; l < c->kv.n_layers; l++) {
        if (c->k_layers && c->k_layers[l]) cudaFree(c->k_layers[l]);
        if (c->v_layers && c->v_layers[l]) cudaFree(c->v_layers[l]);
    }
    free(c->k_layers);
    free(c->v_layers);
    c->k_layers = c->v_layers = NULL;
    if (c->kv_scales) cudaFree(c->kv_scales);
    c->kv_scales = NULL;
    c->kv_ready = 0;
    memset(&c->kv, 0, sizeof c->kv);
    free(c->sliding_window);
    c->sliding_window = NULL;
}

static void cu_free(void *vctx)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    if (!c) return;
    cudaSetDevice(c->device);
    if (c->stream) cudaStreamSynchronize(c->stream);
    kv_release(c);
    if (c->part) cudaFree(c->part);
    if (c->cast_buf) cudaFree(c->cast_buf);
    if (c->stage) cudaFree(c->stage);
    for (int i = 0; i < c->n_graphs; i++) cudaGraphExecDestroy(c->graphs[i].exec);
    free(c->graphs);
    if (c->cublas_ws) cudaFree(c->cublas_ws);
    if (c->d_meta) cudaFree(c->d_meta);
    if (c->h_meta) cudaFreeHost(c->h_meta);
    if (c->d_tiles) cudaFree(c->d_tiles);
    if (c->h_tiles) cudaFreeHost(c->h_tiles);
    if (c->meta_ev) cudaEventDestroy(c->meta_ev);
    if (c->tiles_ev) cudaEventDestroy(c->tiles_ev);
    for (int i = 0; i < c->prof_n; i++) cudaEventDestroy(c->prof_ev[i]);
    free(c->prof_ev);
    if (c->cublas) cublasDestroy(c->cublas);
    if (c->stream) cudaStreamDestroy(c->stream);
    cudaGetLastError();
    free(c);
}

static void cu_describe(void *vctx, char *buf, size_t len)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    size_t fr = 0, tot = 0;
    set_device(c);
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) cudaGetLastError();
    snprintf(buf, len, "cuda: %s (sm_%d%d), %d SMs, %.1f GiB (%.1f GiB free), %s weights and KV, "
             "%s activations (fp32 residual), CUDA graphs %s, attention %s",
             c->name, c->cc_major, c->cc_minor, c->n_sm, (double)c->total_mem / 1073741824.0,
             (double)fr / 1073741824.0, c->dtype == BK_F16 ? "f16" : "bf16",
             c->act_dtype == BK_F32 ? "fp32" : c->act_dtype == BK_F16 ? "f16" : "bf16",
             c->graphs_on ? "on" : "off",
             c->attn_simt_only ? "split-KV only (ROPESERVE_CUDA_ATTN=simt)"
             : c->attn_sm90   ? "wgmma (sm_90a) / mma.sync prefill + split-KV decode"
                              : "mma.sync prefill + split-KV decode");
}

static size_t cu_mem_free(void *vctx)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    size_t fr = 0, tot = 0;
    set_device(c);
    CUDA_CHECK(cudaMemGetInfo(&fr, &tot));
    size_t avail = fr > MEM_MARGIN_BYTES ? fr - MEM_MARGIN_BYTES : 0;
    /* gpu_memory_utilization caps what the whole device may hold while we run (others included) */
    const double u = c->gpu_memory_utilization;
    if (u > 0.0 && u < 1.0) {
        const double allowed = u * (double)tot, used = (double)(tot - fr);
        const size_t cap = allowed > used ? (size_t)(allowed - used) : 0;
        if (cap < avail) avail = cap;
    }
    return avail ? avail : 1; /* 0 would mean "no device limit" */
}

/* Grow the matmul input scratch to `bytes` (called from act_new, so an op never allocates). */
static int cast_reserve(struct cuda_ctx *c, size_t bytes, char *err)
{
    if (bytes <= c->cast_cap) return 0;
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    if (c->cast_buf) CUDA_CHECK(cudaFree(c->cast_buf));
    c->cast_buf = NULL;
    c->cast_cap = 0;
    c->cast_src = NULL;
    if (dev_alloc(&c->cast_buf, bytes, err, "the matmul input scratch")) return -1;
    c->cast_cap = bytes;
    return 0;
}

/* Grow the sm_80 prefill staging to 3 x `floats` (q, q_shift, out); from act_new only. */
static int stage_reserve(struct cuda_ctx *c, size_t floats, char *err)
{
    if (floats <= c->stage_cap) return 0;
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    if (c->stage) CUDA_CHECK(cudaFree(c->stage));
    c->stage = NULL;
    c->stage_cap = 0;
    c->graph_gen++;
    if (dev_alloc((void **)&c->stage, 3 * floats * sizeof(float), err, "the sm_80 prefill staging")) return -1;
    c->stage_cap = floats;
    return 0;
}

static uint16_t convert_elem(const unsigned char *src, enum bk_dtype sdt, size_t i, enum bk_dtype ddt)
{
    float f;
    if (sdt == BK_F32) {
        memcpy(&f, src + 4 * i, 4); /* safetensors data need not be aligned */
    } else {
        uint16_t h;
        memcpy(&h, src + 2 * i, 2);
        f = sdt == BK_F16 ? f16_to_f32(h) : bf16_to_f32(h);
    }
    return ddt == BK_BF16 ? f32_to_bf16(f) : f32_to_f16(f);
}

static bk_buf *cu_weight_new(void *vctx, const void *src, enum bk_dtype src_dtype, size_t n, char *err)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    CHECK(src_dtype == BK_F32 || src_dtype == BK_F16 || src_dtype == BK_BF16, "dtype %d", (int)src_dtype);
    set_device(c);
    bk_buf *b = (bk_buf *)xcalloc(1, sizeof *b);
    if (dev_alloc(&b->d, n * 2, err, "a weight")) {
        free(b);
        return NULL;
    }
    b->n = n;
    b->dtype = c->dtype;
    b->is_weight = 1;
    if (src_dtype == c->dtype) {
        CUDA_CHECK(cudaMemcpy(b->d, src, n * 2, cudaMemcpyHostToDevice));
    } else {
        const size_t chunk = n < CONVERT_CHUNK ? n : CONVERT_CHUNK;
        uint16_t *tmp = (uint16_t *)xmalloc((chunk ? chunk : 1) * 2);
        for (size_t off = 0; off < n; off += chunk) {
            const size_t m = n - off < chunk ? n - off : chunk;
            for (size_t i = 0; i < m; i++)
                tmp[i] = convert_elem((const unsigned char *)src, src_dtype, off + i, c->dtype);
            CUDA_CHECK(cudaMemcpy((uint16_t *)b->d + off, tmp, m * 2, cudaMemcpyHostToDevice));
        }
        free(tmp);
    }
    return b;
}

static bk_buf *act_alloc(struct cuda_ctx *c, size_t n, enum bk_dtype dt, char *err)
{
    set_device(c);
    bk_buf *b = (bk_buf *)xcalloc(1, sizeof *b);
    if (dev_alloc(&b->d, n * dtype_size(dt), err, "an activation buffer")) {
        free(b);
        return NULL;
    }
    b->n = n;
    b->dtype = dt;
    c->graph_gen++;
    /* an fp32 activation may be a matmul input: keep the cast scratch as large as the largest;
     * a 16-bit one may be attention's q or out: keep the sm_80 prefill staging as large */
    if ((dt == BK_F32 ? cast_reserve(c, n * dtype_size(c->dtype), err) : stage_reserve(c, n, err))) {
        cudaFree(b->d);
        free(b);
        return NULL;
    }
    return b;
}

static bk_buf *cu_act_new(void *vctx, size_t n, char *err)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    return act_alloc(c, n, c->act_dtype, err);
}

static bk_buf *cu_act_new_f32(void *vctx, size_t n, char *err)
{
    return act_alloc((struct cuda_ctx *)vctx, n, BK_F32, err);
}

static void cu_buf_free(void *vctx, bk_buf *b)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    if (!b) return;
    set_device(c);
    if (c->cast_src == b) c->cast_src = NULL;
    c->graph_gen++; /* a new buffer may get this address: no graph may replay onto it */
    CUDA_CHECK(cudaStreamSynchronize(c->stream)); /* an op in flight may still read it */
    CUDA_CHECK(cudaFree(b->d));
    free(b);
}

static void cu_act_write(void *vctx, bk_buf *dst, size_t offset, const float *src, size_t n)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    CHECK(!dst->is_weight && offset + n <= dst->n, "act_write: %zu + %zu > %zu", offset, n, dst->n);
    if (n == 0) return;
    set_device(c);
    if (dst->dtype == BK_F32) {
        /* from pageable memory: returns once src has been staged, so the caller may reuse it */
        CUDA_CHECK(cudaMemcpyAsync((float *)dst->d + offset, src, n * 4, cudaMemcpyHostToDevice, c->stream));
    } else { /* round on the host (the same rounding as the kernels' stores), then a plain copy */
        uint16_t *tmp = (uint16_t *)xmalloc(n * 2);
        for (size_t i = 0; i < n; i++) tmp[i] = dst->dtype == BK_BF16 ? f32_to_bf16(src[i]) : f32_to_f16(src[i]);
        CUDA_CHECK(cudaMemcpyAsync((uint16_t *)dst->d + offset, tmp, n * 2, cudaMemcpyHostToDevice, c->stream));
        CUDA_CHECK(cudaStreamSynchronize(c->stream)); /* tmp is freed now */
        free(tmp);
    }
    dst->version++;
}

static void cu_act_read(void *vctx, float *dst, const bk_buf *src, size_t offset, size_t n)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    CHECK(!src->is_weight && offset + n <= src->n, "act_read: %zu + %zu > %zu", offset, n, src->n);
    if (n == 0) return;
    set_device(c);
    if (src->dtype == BK_F32) {
        CUDA_CHECK(cudaMemcpyAsync(dst, (const float *)src->d + offset, n * 4, cudaMemcpyDeviceToHost, c->stream));
        CUDA_CHECK(cudaStreamSynchronize(c->stream));
    } else {
        uint16_t *tmp = (uint16_t *)xmalloc(n * 2);
        CUDA_CHECK(cudaMemcpyAsync(tmp, (const uint16_t *)src->d + offset, n * 2, cudaMemcpyDeviceToHost, c->stream));
        CUDA_CHECK(cudaStreamSynchronize(c->stream));
        for (size_t i = 0; i < n; i++) dst[i] = src->dtype == BK_BF16 ? bf16_to_f32(tmp[i]) : f16_to_f32(tmp[i]);
        free(tmp);
    }
}

// ------------------------------------------------------------------------------------------------
// KV cache

static int cu_kv_init(void *vctx, const struct bk_kv_params *p, char *err)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    set_device(c);
    if (p->n_layers <= 0 || p->n_blocks <= 0 || p->n_kv_heads <= 0 || p->block_size <= 0 ||
        (p->block_size & (p->block_size - 1)))
        return set_err(err, -1, "cuda: bad KV parameters (layers %d, blocks %d, block_size %d, kv heads %d)",
                       p->n_layers, p->n_blocks, p->block_size, p->n_kv_heads);
    if (!cuda_attn_decode_supported(p->head_dim))
        return set_err(err, -1, "cuda: head_dim %d is not supported (a multiple of 8, at most 256)",
                       p->head_dim);
    for (int l = 0; p->sliding_window && l < p->n_layers; l++)
        if (p->sliding_window[l] > 0)
            return set_err(err, -1, "cuda: sliding-window attention: not supported by the CUDA kernels in this "
                           "build (config.json field 'sliding_window' = %d in layer %d); use --device cpu",
                           p->sliding_window[l], l);
    if (c->kv_ready) {
        CUDA_CHECK(cudaStreamSynchronize(c->stream));
        kv_release(c);
    }
    /* BK_F32 (a zeroed field) = the backend's own: the weights' dtype (backend.h) */
    const enum bk_dtype kv_dt = p->dtype == BK_F32 ? c->dtype : p->dtype;
    if (kv_dt != c->dtype && kv_dt != BK_FP8_E4M3)
        return set_err(err, -1, "cuda: KV cache dtype %s (the weights are %s; the cache is that or fp8)",
                       bk_dtype_name(kv_dt), bk_dtype_name(c->dtype));
    const size_t layer_bytes = (size_t)p->n_blocks * p->block_size * p->n_kv_heads * p->head_dim *
                               bk_dtype_bytes(kv_dt);
    for (int l = 0; p->sliding_window && l < p->n_layers; l++)
        if (p->sliding_window[l] < 0)
            return set_err(err, -1, "cuda: sliding_window[%d] = %d (0 = none, else > 0)", l, p->sliding_window[l]);
    c->kv = *p;
    c->kv.dtype = kv_dt;
    if (p->sliding_window) {
        c->sliding_window = (int32_t *)xmalloc((size_t)p->n_layers * sizeof(int32_t));
        memcpy(c->sliding_window, p->sliding_window, (size_t)p->n_layers * sizeof(int32_t));
    }
    c->kv.sliding_window = c->sliding_window;
    c->k_layers = (void **)xcalloc((size_t)p->n_layers, sizeof(void *));
    c->v_layers = (void **)xcalloc((size_t)p->n_layers, sizeof(void *));
    for (int l = 0; l < p->n_layers; l++) {
        char what[96];
        snprintf(what, sizeof what, "the KV cache (layer %d of %d, %.2f GiB each for k and v)", l,
                 p->n_layers, (double)layer_bytes / 1073741824.0);
        if (dev_alloc(&c->k_layers[l], layer_bytes, err, what) ||
            dev_alloc(&c->v_layers[l], layer_bytes, err, what)) {
            kv_release(c);
            return -1;
        }
        /* zeros, not garbage: unused slots are never read, but a bug then reads finite values */
        CUDA_CHECK(cudaMemsetAsync(c->k_layers[l], 0, layer_bytes, c->stream));
        CUDA_CHECK(cudaMemsetAsync(c->v_layers[l], 0, layer_bytes, c->stream));
    }
    if (kv_dt == BK_FP8_E4M3) { /* the scales (1.0 unless given), k then v, on the device */
        const size_t n = (size_t)p->n_layers * p->n_kv_heads;
        float *h = (float *)xmalloc(2 * n * sizeof(float));
        for (size_t i = 0; i < n; i++) {
            h[i] = p->k_scale ? p->k_scale[i] : 1.0f;
            h[n + i] = p->v_scale ? p->v_scale[i] : 1.0f;
        }
        if (dev_alloc((void **)&c->kv_scales, 2 * n * sizeof(float), err, "the fp8 KV scales")) {
            free(h);
            kv_release(c);
            return -1;
        }
        CUDA_CHECK(cudaMemcpy(c->kv_scales, h, 2 * n * sizeof(float), cudaMemcpyHostToDevice));
        free(h);
    }
    c->kv.k_scale = c->kv.v_scale = NULL; /* the caller's arrays may go; kv_scales holds them */
    c->kv_layer_bytes = layer_bytes;
    c->kv_ready = 1;
    c->graph_gen++;
    for (int i = 0; i < 4; i++) c->dec_ctas_per_sm[i] = cuda_attn_decode_ctas_per_sm(1 << i, c->dtype);
    LOG_I("cuda: KV cache %d layers x %d blocks x %d tokens x %d kv heads x %d dims, %s, %s keys: "
          "%.2f GiB",
          p->n_layers, p->n_blocks, p->block_size, p->n_kv_heads, p->head_dim,
          bk_dtype_name(kv_dt), p->k_storage == BK_K_PRE_ROPE ? "pre-RoPE" : "rotated",
          2.0 * (double)layer_bytes * p->n_layers / 1073741824.0);
    return 0;
}

static void cu_kv_copy_blocks(void *vctx, const int32_t *src, const int32_t *dst, int n)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    CHECK(c->kv_ready, "kv_copy_blocks before kv_init");
    set_device(c);
    const size_t block_bytes = (size_t)c->kv.block_size * c->kv.n_kv_heads * c->kv.head_dim * bk_dtype_bytes(c->kv.dtype);
    for (int i = 0; i < n; i++) {
        CHECK(src[i] >= 0 && src[i] < c->kv.n_blocks && dst[i] >= 0 && dst[i] < c->kv.n_blocks,
              "kv_copy_blocks: %d -> %d of %d blocks", src[i], dst[i], c->kv.n_blocks);
        for (int l = 0; l < c->kv.n_layers; l++) {
            CUDA_CHECK(cudaMemcpyAsync((char *)c->k_layers[l] + (size_t)dst[i] * block_bytes,
                                       (const char *)c->k_layers[l] + (size_t)src[i] * block_bytes,
                                       block_bytes, cudaMemcpyDeviceToDevice, c->stream));
            CUDA_CHECK(cudaMemcpyAsync((char *)c->v_layers[l] + (size_t)dst[i] * block_bytes,
                                       (const char *)c->v_layers[l] + (size_t)src[i] * block_bytes,
                                       block_bytes, cudaMemcpyDeviceToDevice, c->stream));
        }
    }
}

// ------------------------------------------------------------------------------------------------
// batch metadata

/* Broken invariants of the batch are bugs of the caller: abort before a kernel reads out of
 * bounds. O(n_tokens + blocks in use). */
static void batch_validate(const struct cuda_ctx *c, const struct bk_batch *bt)
{
    const int nt = bt->n_tokens, ns = bt->n_seqs;
    CHECK(nt >= 0 && ns >= 0 && bt->n_out >= 0 && bt->n_out <= nt, "n_tokens %d, n_seqs %d, n_out %d",
          nt, ns, bt->n_out);
    if (ns == 0) {
        CHECK(nt == 0, "%d tokens in no sequence", nt);
        return;
    }
    CHECK(bt->query_start[0] == 0 && bt->query_start[ns] == nt, "query_start [0]=%d [%d]=%d, n_tokens %d",
          bt->query_start[0], ns, bt->query_start[ns], nt);
    for (int s = 0; s < ns; s++) {
        const int a = bt->query_start[s], e = bt->query_start[s + 1];
        CHECK(a <= e, "query_start not ascending at %d", s);
        if (bt->string_shift)
            CHECK(bt->string_shift[s] >= 0 &&
                      (bt->string_shift[s] == 0 ||
                       (bt->string_local && bt->string_local[s] >= 0 && bt->string_local[s] < bt->string_shift[s])),
                  "sequence %d: STRING shift %d, local %d (need 0 <= local < shift)", s, bt->string_shift[s],
                  bt->string_local ? bt->string_local[s] : -1);
        const int len = bt->seq_lens[s];
        for (int r = a; r < e; r++)
            CHECK(bt->positions[r] >= 0 && bt->positions[r] < len, "row %d: position %d, seq_len %d", r,
                  bt->positions[r], len);
        if (c->kv_ready && e > a) { /* the blocks attention may read must exist */
            const int nb = (len + c->kv.block_size - 1) / c->kv.block_size;
            CHECK(nb <= bt->block_table_stride, "seq %d: %d blocks > table stride %d", s, nb,
                  bt->block_table_stride);
            for (int i = 0; i < nb; i++) {
                const int blk = bt->block_tables[(size_t)s * bt->block_table_stride + i];
                CHECK(blk >= 0 && blk < c->kv.n_blocks, "seq %d: block %d of %d", s, blk, c->kv.n_blocks);
            }
        }
    }
    if (c->kv_ready)
        for (int r = 0; r < nt; r++)
            CHECK(bt->slot_mapping[r] < (int64_t)c->kv.n_blocks * c->kv.block_size, "row %d: slot %lld", r,
                  (long long)bt->slot_mapping[r]);
    for (int i = 0; i < bt->n_out; i++)
        CHECK(bt->out_rows[i] >= 0 && bt->out_rows[i] < nt, "out_rows[%d] = %d", i, bt->out_rows[i]);
}

static int cu_batch_begin(void *vctx, const struct bk_batch *bt, char *err)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    set_device(c);
    batch_validate(c, bt);
    const int nt = bt->n_tokens, ns = bt->n_seqs, half = bt->rotary_dim / 2;
    const int has_rope = bt->inv_freq && bt->attn_factor && half > 0;
    int has_string = 0; /* some sequence uses STRING: else its arrays are not even uploaded */
    for (int s = 0; bt->string_shift && s < ns; s++) has_string |= bt->string_shift[s] > 0;

    /* layout of the staging buffer (and of d_meta) */
    enum { S_TOK, S_POS, S_SLOT, S_QS, S_LEN, S_BT, S_OUT, S_FREQ, S_AF, S_QSCALE, S_SSHIFT, S_SLOCAL, S_ROWSEQ,
           S_ITEMS, S_N };
    size_t sz[S_N], off[S_N], total = 0;
    sz[S_TOK] = (size_t)nt * 4;
    sz[S_POS] = (size_t)nt * 4;
    sz[S_SLOT] = (size_t)nt * 8;
    sz[S_QS] = (size_t)(ns + 1) * 4;
    sz[S_LEN] = (size_t)ns * 4;
    sz[S_BT] = (size_t)ns * bt->block_table_stride * 4;
    sz[S_OUT] = (size_t)bt->n_out * 4;
    sz[S_FREQ] = has_rope ? (size_t)ns * half * 4 : 0;
    sz[S_AF] = has_rope ? (size_t)ns * 4 : 0;
    sz[S_QSCALE] = bt->q_scale ? (size_t)nt * 4 : 0;
    sz[S_SSHIFT] = has_string ? (size_t)ns * 4 : 0;
    sz[S_SLOCAL] = has_string ? (size_t)ns * 4 : 0;
    sz[S_ROWSEQ] = (size_t)nt * 4;
    sz[S_ITEMS] = (size_t)nt * 4;
    for (int i = 0; i < S_N; i++) {
        off[i] = total;
        total += align16(sz[i]);
    }

    /* the previous upload must be done reading the staging buffer before it is rewritten */
    if (c->have_batch) CUDA_CHECK(cudaEventSynchronize(c->meta_ev));
    if (total > c->h_meta_cap) {
        size_t cap = c->h_meta_cap * 2 > total ? c->h_meta_cap * 2 : total;
        if (cap < ((size_t)64 << 10)) cap = (size_t)64 << 10;
        if (c->h_meta) CUDA_CHECK(cudaFreeHost(c->h_meta));
        c->h_meta = NULL;
        c->h_meta_cap = 0;
        cudaError_t e = cudaMallocHost((void **)&c->h_meta, cap);
        if (e != cudaSuccess) {
            c->h_meta = NULL;
            cudaGetLastError();
            return set_err(err, -1, "cuda: cannot allocate %zu bytes of pinned batch staging: %s", cap,
                           cudaGetErrorString(e));
        }
        c->h_meta_cap = cap;
    }
    if (total > c->d_meta_cap) {
        size_t cap = c->d_meta_cap * 2 > total ? c->d_meta_cap * 2 : total;
        c->graph_gen++; /* graphs captured with the old address are stale */
        CUDA_CHECK(cudaStreamSynchronize(c->stream)); /* earlier kernels may still read it */
        if (c->d_meta) CUDA_CHECK(cudaFree(c->d_meta));
        c->d_meta = NULL;
        c->d_meta_cap = 0;
        if (dev_alloc((void **)&c->d_meta, cap, err, "batch metadata")) return -1;
        c->d_meta_cap = cap;
    }

    unsigned char *h = c->h_meta;
    if (nt) {
        memcpy(h + off[S_TOK], bt->tokens, sz[S_TOK]);
        memcpy(h + off[S_POS], bt->positions, sz[S_POS]);
        memcpy(h + off[S_SLOT], bt->slot_mapping, sz[S_SLOT]);
    }
    if (ns) {
        memcpy(h + off[S_QS], bt->query_start, sz[S_QS]);
        memcpy(h + off[S_LEN], bt->seq_lens, sz[S_LEN]);
        if (sz[S_BT]) memcpy(h + off[S_BT], bt->block_tables, sz[S_BT]);
    }
    if (sz[S_OUT]) memcpy(h + off[S_OUT], bt->out_rows, sz[S_OUT]);
    if (has_rope) {
        memcpy(h + off[S_FREQ], bt->inv_freq, sz[S_FREQ]);
        memcpy(h + off[S_AF], bt->attn_factor, sz[S_AF]);
    }
    if (sz[S_QSCALE]) memcpy(h + off[S_QSCALE], bt->q_scale, sz[S_QSCALE]);
    if (has_string) {
        memcpy(h + off[S_SSHIFT], bt->string_shift, sz[S_SSHIFT]);
        memcpy(h + off[S_SLOCAL], bt->string_local, sz[S_SLOCAL]);
    }
    /* derived: row -> sequence; split-KV rows (single-token sequences first, then the rest) */
    int32_t *row_seq = (int32_t *)(h + off[S_ROWSEQ]);
    int32_t *items = (int32_t *)(h + off[S_ITEMS]);
    int n_dec = 0, max_dec = 0, max_all = 0;
    for (int s = 0; s < ns; s++) {
        const int a = bt->query_start[s], e = bt->query_start[s + 1];
        for (int r = a; r < e; r++) {
            row_seq[r] = s;
            if (bt->positions[r] + 1 > max_all) max_all = bt->positions[r] + 1;
        }
        if (e - a == 1) {
            items[n_dec++] = a;
            if (bt->positions[a] + 1 > max_dec) max_dec = bt->positions[a] + 1;
        }
    }
    int k = n_dec;
    for (int s = 0; s < ns; s++) {
        const int a = bt->query_start[s], e = bt->query_start[s + 1];
        if (e - a > 1)
            for (int r = a; r < e; r++) items[k++] = r;
    }
    CHECK(k == nt, "split-KV rows %d != n_tokens %d", k, nt);

    if (total) CUDA_CHECK(cudaMemcpyAsync(c->d_meta, h, total, cudaMemcpyHostToDevice, c->stream));
    CUDA_CHECK(cudaEventRecord(c->meta_ev, c->stream));

    unsigned char *d = c->d_meta;
    struct cuda_batch *b = &c->b;
    memset(b, 0, sizeof *b);
    b->n_tokens = nt;
    b->n_seqs = ns;
    b->n_out = bt->n_out;
    b->block_table_stride = bt->block_table_stride;
    b->rotary_dim = has_rope ? bt->rotary_dim : 0;
    b->tokens = (const int32_t *)(d + off[S_TOK]);
    b->positions = (const int32_t *)(d + off[S_POS]);
    b->slot_mapping = (const int64_t *)(d + off[S_SLOT]);
    b->query_start = (const int32_t *)(d + off[S_QS]);
    b->seq_lens = (const int32_t *)(d + off[S_LEN]);
    b->block_tables = (const int32_t *)(d + off[S_BT]);
    b->out_rows = (const int32_t *)(d + off[S_OUT]);
    b->inv_freq = has_rope ? (const float *)(d + off[S_FREQ]) : NULL;
    b->attn_factor = has_rope ? (const float *)(d + off[S_AF]) : NULL;
    b->q_scale = bt->q_scale ? (const float *)(d + off[S_QSCALE]) : NULL;
    b->string_shift = has_string ? (const int32_t *)(d + off[S_SSHIFT]) : NULL;
    b->string_local = has_string ? (const int32_t *)(d + off[S_SLOCAL]) : NULL;
    b->has_string = has_string;
    b->row_seq = (const int32_t *)(d + off[S_ROWSEQ]);
    b->items = (const int32_t *)(d + off[S_ITEMS]);
    b->n_dec = n_dec;
    b->max_ctx_dec = max_dec;
    b->max_ctx_all = max_all;
    c->host = *bt;
    c->have_batch = 1;
    c->tiles_group = 0;
    return 0;
}

// ------------------------------------------------------------------------------------------------
// ops

#define CHECK_BATCH(c) CHECK((c)->have_batch, "op before the first batch_begin")
#define CHECK_ACT(b) CHECK(!(b)->is_weight, "%s: an activation buffer was expected", __func__)

static void cu_embed(void *vctx, bk_buf *x, const bk_buf *table, int dim)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    CHECK_BATCH(c);
    CHECK(x->n >= (size_t)c->b.n_tokens * dim, "embed: x holds %zu < %d x %d", x->n, c->b.n_tokens, dim);
    CHECK_ACT(x);
    set_device(c);
    cuda_embed(x->d, x->dtype, table->d, table->dtype, c->b.tokens, c->b.n_tokens, dim, c->stream);
    x->version++;
}

static void cu_rmsnorm(void *vctx, bk_buf *out, const bk_buf *x, const bk_buf *w, int n_rows, int dim, float eps)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    CHECK(x->n >= (size_t)n_rows * dim && out->n >= (size_t)n_rows * dim && w->n >= (size_t)dim,
          "rmsnorm: %d x %d", n_rows, dim);
    CHECK_ACT(x);
    CHECK_ACT(out);
    set_device(c);
    cuda_rmsnorm(out->d, out->dtype, x->d, x->dtype, w->d, w->dtype, n_rows, dim, eps, c->stream);
    out->version++;
}

static void cu_add_rmsnorm(void *vctx, bk_buf *out, bk_buf *x, const bk_buf *y, const bk_buf *w, int n_rows, int dim,
                           float eps)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    const size_t m = (size_t)n_rows * dim;
    CHECK(x->n >= m && y->n >= m && out->n >= m && w->n >= (size_t)dim, "add_rmsnorm: %d x %d", n_rows, dim);
    CHECK(out->d != x->d && out->d != y->d, "add_rmsnorm: out must alias neither x nor y");
    CHECK_ACT(x);
    CHECK_ACT(y);
    CHECK_ACT(out);
    set_device(c);
    cuda_add_rmsnorm(out->d, out->dtype, x->d, x->dtype, y->d, y->dtype, w->d, w->dtype, n_rows, dim, eps,
                     c->stream);
    x->version++;
    out->version++;
}

static void cu_gather_rmsnorm(void *vctx, bk_buf *dst, const bk_buf *src, const bk_buf *w, int dim, float eps)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    CHECK_BATCH(c);
    CHECK(dst->n >= (size_t)c->b.n_out * dim && src->n >= (size_t)c->b.n_tokens * dim && w->n >= (size_t)dim,
          "gather_rmsnorm: sizes");
    CHECK(dst->d != src->d, "gather_rmsnorm: dst must not alias src");
    CHECK_ACT(dst);
    CHECK_ACT(src);
    set_device(c);
    cuda_gather_rmsnorm(dst->d, dst->dtype, src->d, src->dtype, c->b.out_rows, w->d, w->dtype, c->b.n_out, dim, eps,
                        c->stream);
    dst->version++;
}

static void cu_matmul(void *vctx, bk_buf *out, const bk_buf *x, const bk_buf *w, int n_rows, int n_in, int n_out)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    CHECK(w->dtype == c->dtype, "matmul: weight dtype %d, backend dtype %d", (int)w->dtype, (int)c->dtype);
    CHECK_ACT(x);
    CHECK_ACT(out);
    CHECK((x->dtype == BK_F32 || x->dtype == c->dtype) && (out->dtype == BK_F32 || out->dtype == c->dtype),
          "matmul: activation dtypes %d -> %d with %d weights", (int)x->dtype, (int)out->dtype, (int)c->dtype);
    CHECK(x->n >= (size_t)n_rows * n_in && w->n >= (size_t)n_in * n_out && out->n >= (size_t)n_rows * n_out,
          "matmul: %d x %d . (%d x %d)^T", n_rows, n_in, n_out, n_in);
    if (n_rows == 0 || n_out == 0) return;
    set_device(c);
    /* an fp32 x -> dtype, skipped when the same unchanged x was just cast (q/k/v, gate/up share
     * it); a 16-bit x goes to cuBLAS as it is */
    const size_t n = (size_t)n_rows * n_in;
    const void *xin = x->d;
    if (x->dtype == BK_F32 && !(c->cast_src == x && c->cast_version == x->version && c->cast_n == n)) {
        CHECK(n * dtype_size(c->dtype) <= c->cast_cap, "matmul: cast scratch %zu bytes < %zu", c->cast_cap,
              n * dtype_size(c->dtype));
        cuda_cast_f32(c->cast_buf, c->dtype, (const float *)x->d, n, c->stream);
        c->cast_src = x;
        c->cast_version = x->version;
        c->cast_n = n;
    }
    if (x->dtype == BK_F32) xin = c->cast_buf;
    /* row-major out (n_rows, n_out) = x . w^T is column-major out^T (n_out, n_rows) =
     * w^T(op T of the column-major (n_in, n_out) view of w) . x (column-major (n_in, n_rows)) */
    const cudaDataType_t t = c->dtype == BK_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    const cudaDataType_t to = out->dtype == BK_F32 ? CUDA_R_32F : t;
    const float alpha = 1.f, beta = 0.f;
    CUBLAS_CHECK(cublasGemmEx(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, n_out, n_rows, n_in, &alpha, w->d, t, n_in,
                              xin, t, n_in, &beta, out->d, to, n_out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    out->version++;
}

static void cu_rope(void *vctx, bk_buf *q, bk_buf *k, bk_buf *q_shift, int n_heads, int n_kv_heads, int head_dim)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    CHECK_BATCH(c);
    const size_t nt = (size_t)c->b.n_tokens;
    CHECK(q->n >= nt * n_heads * head_dim && (!k || k->n >= nt * n_kv_heads * head_dim), "rope: sizes");
    CHECK(!q_shift || (q_shift->n >= nt * n_heads * head_dim && q_shift->d != q->d && (!k || q_shift->d != k->d)),
          "rope: q_shift sizes / aliasing");
    CHECK_ACT(q);
    if (k) CHECK_ACT(k);
    if (q_shift) CHECK_ACT(q_shift);
    set_device(c);
    CHECK((!k || k->dtype == q->dtype) && (!q_shift || q_shift->dtype == q->dtype), "rope: q/k/q_shift dtypes differ");
    cuda_rope(q->d, k ? k->d : NULL, q_shift ? q_shift->d : NULL, q->dtype, &c->b, n_heads, n_kv_heads, head_dim,
              c->stream);
    q->version++;
    if (k) k->version++;
    if (q_shift && c->b.has_string) q_shift->version++;
}

static void cu_kv_store(void *vctx, int layer, const bk_buf *k, const bk_buf *v)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    CHECK_BATCH(c);
    CHECK(c->kv_ready && layer >= 0 && layer < c->kv.n_layers, "kv_store: layer %d", layer);
    const int row = c->kv.n_kv_heads * c->kv.head_dim;
    CHECK(k->n >= (size_t)c->b.n_tokens * row && v->n >= (size_t)c->b.n_tokens * row, "kv_store: sizes");
    CHECK_ACT(k);
    CHECK_ACT(v);
    set_device(c);
    CHECK(k->dtype == v->dtype, "kv_store: k and v dtypes differ");
    if (c->kv.dtype == BK_FP8_E4M3) {
        const size_t o = (size_t)layer * c->kv.n_kv_heads, n = (size_t)c->kv.n_layers * c->kv.n_kv_heads;
        cuda_kv_store_fp8(c->k_layers[layer], c->v_layers[layer], k->d, v->d, k->dtype, c->kv_scales + o,
                          c->kv_scales + n + o, c->b.slot_mapping, c->b.n_tokens, c->kv.n_kv_heads, c->kv.head_dim,
                          c->stream);
        return;
    }
    cuda_kv_store(c->k_layers[layer], c->v_layers[layer], c->dtype, k->d, v->d, k->dtype, c->b.slot_mapping,
                  c->b.n_tokens, row, c->stream);
}

static void cu_rope_kv_store(void *vctx, int layer, bk_buf *q, const bk_buf *k, const bk_buf *v, bk_buf *q_shift,
                             const bk_buf *bq, const bk_buf *bk, const bk_buf *bv, int n_heads, int n_kv_heads,
                             int head_dim)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    CHECK_BATCH(c);
    CHECK(c->kv_ready && layer >= 0 && layer < c->kv.n_layers, "rope_kv_store: layer %d", layer);
    CHECK(n_kv_heads == c->kv.n_kv_heads && head_dim == c->kv.head_dim, "rope_kv_store: %d x %d, cache %d x %d",
          n_kv_heads, head_dim, c->kv.n_kv_heads, c->kv.head_dim);
    const size_t nt = (size_t)c->b.n_tokens, qd = (size_t)n_heads * head_dim, kd = (size_t)n_kv_heads * head_dim;
    CHECK(q->n >= nt * qd && k->n >= nt * kd && v->n >= nt * kd, "rope_kv_store: sizes");
    CHECK(!q_shift || (q_shift->n >= nt * qd && q_shift->d != q->d), "rope_kv_store: q_shift sizes / aliasing");
    CHECK((!bq && !bk && !bv) || (bq && bk && bv), "rope_kv_store: biases all or none");
    if (bq)
        CHECK(bq->is_weight && bk->is_weight && bv->is_weight && bq->dtype == c->dtype && bk->dtype == c->dtype &&
                  bv->dtype == c->dtype && bq->n >= qd && bk->n >= kd && bv->n >= kd,
              "rope_kv_store: the biases must be weights of %zu / %zu values", qd, kd);
    CHECK_ACT(q);
    CHECK_ACT(k);
    CHECK_ACT(v);
    if (q_shift) CHECK_ACT(q_shift);
    CHECK(k->dtype == q->dtype && v->dtype == q->dtype && (!q_shift || q_shift->dtype == q->dtype),
          "rope_kv_store: q/k/v/q_shift dtypes differ");
    set_device(c);
    cuda_rope_kv(q->d, k->d, v->d, q_shift ? q_shift->d : NULL, q->dtype, bq ? bq->d : NULL, bk ? bk->d : NULL,
                 bv ? bv->d : NULL, c->dtype, c->k_layers[layer], c->v_layers[layer], c->kv.dtype,
                 c->kv.k_storage == BK_K_POST_ROPE, &c->b, n_heads, n_kv_heads, head_dim, c->stream);
    q->version++;
    if (q_shift && c->b.has_string) q_shift->version++;
}

/* How many KV ranges each split-KV row is cut into: enough CTAs for one full wave of resident
 * CTAs (the SM count times the kernel's occupancy, from the occupancy API at kv_init: every SM
 * holds as many CTAs, so as many loads in flight, as it can), at least 256 keys and one block
 * per split of the longest row, and within the partial-output buffer. */
static int attn_pick_splits(const struct cuda_ctx *c, int n_items, int n_heads, int group, int max_ctx)
{
    const int gc = cuda_attn_decode_heads_per_cta(group);
    const int gi = gc == 1 ? 0 : gc == 2 ? 1 : gc == 4 ? 2 : 3;
    const int occ = c->dec_ctas_per_sm[gi] > 0 ? c->dec_ctas_per_sm[gi] : 4;
    const long long base = (long long)n_items * c->kv.n_kv_heads * ((group + gc - 1) / gc);
    const long long target = (long long)occ * c->n_sm;
    long long ns = base >= target ? 1 : (target + base - 1) / base;
    const long long max_nb = ceil_div(max_ctx, c->kv.block_size);
    if (ns > max_nb) ns = max_nb;
    if (ns > ceil_div(max_ctx, 256)) ns = ceil_div(max_ctx, 256);
    if (ns > cuda_attn_decode_max_splits()) ns = cuda_attn_decode_max_splits();
    const long long cap = (long long)(PART_CAP_FLOATS / ((size_t)n_items * n_heads * (c->kv.head_dim + 1)));
    if (ns > cap) ns = cap;
    return ns < 1 ? 1 : (int)ns;
}

/* The prefill tile list for GQA group size `group`: (sequence, first packed row) for every bm
 * packed rows of every multi-token sequence (bm: the kernel's BLOCK_M), latest (longest-context)
 * tiles first. The kernels run blockIdx.x fastest over this list, so a sequence's tiles of one
 * kv head are resident together and share its K/V blocks in L2. */
static void build_tiles(struct cuda_ctx *c, int group, int bm)
{
    const struct bk_batch *bt = &c->host;
    size_t n = 0;
    for (int s = 0; s < bt->n_seqs; s++) {
        const int nq = bt->query_start[s + 1] - bt->query_start[s];
        if (nq > 1) n += (size_t)ceil_div((long long)nq * group, bm);
    }
    if (c->h_tiles) CUDA_CHECK(cudaEventSynchronize(c->tiles_ev)); /* last upload done reading */
    if (n > c->tiles_cap) {
        size_t cap = n > 2 * c->tiles_cap ? n : 2 * c->tiles_cap;
        if (cap < 1024) cap = 1024;
        CUDA_CHECK(cudaStreamSynchronize(c->stream));
        if (c->h_tiles) CUDA_CHECK(cudaFreeHost(c->h_tiles));
        if (c->d_tiles) CUDA_CHECK(cudaFree(c->d_tiles));
        /* small (8 bytes per 64 rows): failing here is a broken machine, not a memory plan */
        CUDA_CHECK(cudaMallocHost((void **)&c->h_tiles, cap * 2 * sizeof(int32_t)));
        CUDA_CHECK(cudaMalloc((void **)&c->d_tiles, cap * 2 * sizeof(int32_t)));
        c->tiles_cap = cap;
    }
    size_t i = 0;
    for (int s = 0; s < bt->n_seqs; s++) {
        const int nq = bt->query_start[s + 1] - bt->query_start[s];
        if (nq <= 1) continue;
        for (int t = ceil_div((long long)nq * group, bm) - 1; t >= 0; t--) {
            c->h_tiles[2 * i] = s;
            c->h_tiles[2 * i + 1] = t * bm;
            i++;
        }
    }
    if (n) CUDA_CHECK(cudaMemcpyAsync(c->d_tiles, c->h_tiles, n * 2 * sizeof(int32_t), cudaMemcpyHostToDevice, c->stream));
    CUDA_CHECK(cudaEventRecord(c->tiles_ev, c->stream));
    c->n_tiles = (int)n;
    c->tiles_group = group;
    c->tiles_bm = bm;
}

static void cu_attention(void *vctx, bk_buf *out, const bk_buf *q, const bk_buf *q_shift, int layer, int n_heads,
                         float scale)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    CHECK_BATCH(c);
    CHECK(c->kv_ready && layer >= 0 && layer < c->kv.n_layers, "attention: layer %d", layer);
    CHECK(n_heads > 0 && n_heads % c->kv.n_kv_heads == 0, "attention: %d heads, %d kv heads", n_heads,
          c->kv.n_kv_heads);
    const struct cuda_batch *b = &c->b;
    const int hd = c->kv.head_dim, group = n_heads / c->kv.n_kv_heads;
    CHECK(q->n >= (size_t)b->n_tokens * n_heads * hd && out->n >= (size_t)b->n_tokens * n_heads * hd,
          "attention: sizes");
    CHECK(out->d != q->d, "attention: out must not alias q");
    CHECK_ACT(q);
    CHECK_ACT(out);
    if (b->has_string) {
        CHECK(q_shift, "attention: a batch with STRING sequences needs q_shift");
        CHECK(q_shift->n >= (size_t)b->n_tokens * n_heads * hd && q_shift->d != out->d,
              "attention: q_shift sizes / aliasing");
        CHECK_ACT(q_shift);
    }
    if (b->n_tokens == 0) return;
    set_device(c);

    struct attn_params p;
    memset(&p, 0, sizeof p);
    CHECK(q->dtype == out->dtype && (!b->has_string || q_shift->dtype == q->dtype),
          "attention: q, q_shift and out must share a dtype");
    p.out = (float *)out->d; /* of dtype p.q_dtype: the kernels cast */
    p.q = (const float *)q->d;
    p.k_cache = c->k_layers[layer];
    p.v_cache = c->v_layers[layer];
    p.q_row_stride = (long long)n_heads * hd;
    p.kv_token_stride = (long long)c->kv.n_kv_heads * hd;
    p.head_dim = hd;
    p.n_heads = n_heads;
    p.n_kv_heads = c->kv.n_kv_heads;
    p.group = group;
    p.block_size = c->kv.block_size;
    p.log2_block_size = __builtin_ctz((unsigned)c->kv.block_size);
    p.block_tables = b->block_tables;
    p.block_table_stride = b->block_table_stride;
    p.positions = b->positions;
    p.row_seq = b->row_seq;
    p.query_start = b->query_start;
    p.scale_log2 = scale * 1.4426950408889634f;
    p.pre_rope = c->kv.k_storage == BK_K_PRE_ROPE;
    if (p.pre_rope) {
        CHECK(b->inv_freq && b->attn_factor && b->rotary_dim <= hd,
              "attention: pre-RoPE keys need the batch's inv_freq/attn_factor (rotary_dim %d)", b->rotary_dim);
        p.rotary_dim = b->rotary_dim;
        p.inv_freq = b->inv_freq;
        p.attn_factor = b->attn_factor;
    }
    if (b->has_string) { /* else the plain kernels, whatever q_shift is */
        p.q_shift = (const float *)q_shift->d;
        p.string_shift = b->string_shift;
    }
    p.q_dtype = q->dtype;
    p.sliding_window = c->sliding_window ? c->sliding_window[layer] : 0;
    const int kv8 = c->kv.dtype == BK_FP8_E4M3; /* fp8 cache: its scales; the sm_80 kernels (sm_90a has no fp8 path) */
    if (kv8) {
        const size_t o = (size_t)layer * c->kv.n_kv_heads, n = (size_t)c->kv.n_layers * c->kv.n_kv_heads;
        p.k_scale = c->kv_scales + o;
        p.v_scale = c->kv_scales + n + o;
    }

    /* tensor cores for the multi-token rows, unless simt, or STRING's second Q tile does not fit:
     * the sm_90a kernel on compute capability 9.0 where it supports the batch, else the sm_80 one */
    const int sm90 = c->attn_sm90 && cuda_attn_prefill_sm90_supported(hd, c->kv.dtype, p.pre_rope, b->has_string,
                                                                      c->smem_optin);
    /* the 128-row sm_80 kernel: 16-bit caches (an fp8 one takes the 64-row kernel's fp8 path) */
    const int fa2 = !sm90 && !kv8 && c->attn_fa2 &&
                    cuda_attn_prefill_fa2_supported(hd, c->kv.dtype, p.pre_rope, b->has_string, c->smem_optin);
    const int tc = sm90 || fa2 ||
                   (!c->attn_simt_only &&
                    (kv8 ? cuda_attn_prefill_fp8_supported(hd) : cuda_attn_prefill_supported(hd)) &&
                    (!b->has_string || cuda_attn_prefill_string_supported(hd, c->smem_optin)));
    /* only the sm_90a and the 128-row sm_80 prefill kernels implement sliding windows so far */
    CHECK(p.sliding_window == 0 || ((sm90 || fa2) && b->n_dec == 0),
          "attention: layer %d has a sliding window (%d), which only the sm_90a and 128-row sm_80 prefill kernels "
          "implement so far, and this batch has %s", layer, p.sliding_window,
          sm90 || fa2 ? "decode rows" : "rows for another kernel");
    /* prefill rows first: with 16-bit activations the 64-row sm_80 kernel runs on fp32 staging
     * copies and its output is converted back over all rows, which the split-KV kernel's rows
     * then overwrite */
    if (tc && b->n_tokens > b->n_dec) {
        const int bm = sm90 ? ATTN_PREFILL_SM90_BLOCK_M : fa2 ? ATTN_PREFILL_FA2_BLOCK_M : ATTN_PREFILL_BLOCK_M;
        if (c->tiles_group != group || c->tiles_bm != bm) build_tiles(c, group, bm);
        p.tiles = c->d_tiles;
        if (sm90) {
            cuda_attn_prefill_sm90(&p, c->n_tiles, c->dtype, c->stream);
        } else if (fa2) { /* reads q/q_shift and writes out in their own dtypes */
            cuda_attn_prefill_fa2(&p, c->n_tiles, c->dtype, c->stream);
        } else if (kv8) { /* the fp8 kernels take fp32 q: an fp8 cache keeps fp32 activations */
            CHECK(q->dtype == BK_F32, "attention: an fp8 cache with q dtype %d", (int)q->dtype);
            cuda_attn_prefill_fp8(&p, c->n_tiles, c->dtype, c->stream);
        } else if (q->dtype == BK_F32) {
            cuda_attn_prefill(&p, c->n_tiles, c->dtype, c->stream);
        } else {
            const size_t nq = (size_t)b->n_tokens * n_heads * hd;
            CHECK(nq <= c->stage_cap, "attention: sm_80 staging %zu < %zu floats", c->stage_cap, nq);
            float *q32 = c->stage, *qs32 = c->stage + c->stage_cap, *o32 = c->stage + 2 * c->stage_cap;
            struct attn_params ps = p;
            cuda_convert(q32, BK_F32, q->d, q->dtype, nq, c->stream);
            ps.q = q32;
            if (b->has_string) {
                cuda_convert(qs32, BK_F32, q_shift->d, q_shift->dtype, nq, c->stream);
                ps.q_shift = qs32;
            }
            ps.out = o32;
            ps.q_dtype = BK_F32;
            cuda_attn_prefill(&ps, c->n_tiles, c->dtype, c->stream);
            cuda_convert(out->d, out->dtype, o32, BK_F32, nq, c->stream);
        }
    }
    const int n_items = tc ? b->n_dec : b->n_tokens;
    if (n_items > 0) {
        p.items = b->items;
        p.n_items = n_items;
        /* an all-decode batch sizes its splits for the block table's capacity (stride x
         * block_size): a captured graph's grid then covers any length the table can hold, and
         * an eager step with the same table width picks the same splits (the graph checker
         * compares the two bit for bit); the engine's tables are as wide as the longest row */
        const int max_ctx = b->n_dec == b->n_tokens ? b->block_table_stride * c->kv.block_size
                            : tc ? b->max_ctx_dec : b->max_ctx_all;
        p.n_splits = attn_pick_splits(c, n_items, n_heads, group, max_ctx);
        p.part_o = c->part;
        p.part_lse = c->part + (size_t)n_items * n_heads * p.n_splits * hd;
        cuda_attn_decode(&p, c->kv.dtype, c->stream);
    }
    out->version++;
}

static void cu_swiglu(void *vctx, bk_buf *out, const bk_buf *gate, const bk_buf *up, int n_rows, int n)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    const size_t m = (size_t)n_rows * n;
    CHECK(out->n >= m && gate->n >= m && up->n >= m, "swiglu: sizes");
    CHECK_ACT(out);
    CHECK_ACT(gate);
    CHECK_ACT(up);
    set_device(c);
    cuda_swiglu(out->d, out->dtype, gate->d, gate->dtype, up->d, up->dtype, m, c->stream);
    out->version++;
}

static void cu_add(void *vctx, bk_buf *x, const bk_buf *y, size_t n)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    CHECK(x->n >= n && y->n >= n, "add: sizes");
    CHECK_ACT(x);
    CHECK_ACT(y);
    set_device(c);
    cuda_add(x->d, x->dtype, y->d, y->dtype, n, c->stream);
    x->version++;
}

static void cu_add_bias(void *vctx, bk_buf *x, const bk_buf *b, int n_rows, int n)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    CHECK(x->n >= (size_t)n_rows * n && b->n >= (size_t)n, "add_bias: sizes");
    CHECK(b->is_weight && b->dtype == c->dtype, "add_bias: the bias must be a weight");
    CHECK_ACT(x);
    set_device(c);
    cuda_add_bias(x->d, x->dtype, b->d, b->dtype, n_rows, n, c->stream);
    x->version++;
}

static void cu_gather_rows(void *vctx, bk_buf *dst, const bk_buf *src, int dim)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    CHECK_BATCH(c);
    CHECK(dst->n >= (size_t)c->b.n_out * dim && src->n >= (size_t)c->b.n_tokens * dim, "gather_rows: sizes");
    CHECK(dst->d != src->d, "gather_rows: dst must not alias src");
    CHECK_ACT(dst);
    CHECK_ACT(src);
    set_device(c);
    cuda_gather_rows(dst->d, dst->dtype, src->d, src->dtype, c->b.out_rows, c->b.n_out, dim, c->stream);
    dst->version++;
}

// ------------------------------------------------------------------------------------------------
// KV cache dtype (--kv-cache-dtype)

static enum bk_dtype cu_kv_dtype_auto(void *vctx) { return ((struct cuda_ctx *)vctx)->dtype; }

/* the weights' dtype (the attention kernels compute in it) or fp8 */
static int cu_kv_dtype_check(void *vctx, enum bk_dtype dt, char *err)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    if (dt == c->dtype || dt == BK_FP8_E4M3) return 0;
    return set_err(err, -1, "the CUDA backend stores the KV cache as the weights' dtype (%s, --dtype) or fp8, "
                   "not %s", bk_dtype_name(c->dtype), bk_dtype_name(dt));
}

// ------------------------------------------------------------------------------------------------
// CUDA graphs of decode steps

static int cu_graph_enabled(void *vctx) { return ((struct cuda_ctx *)vctx)->graphs_on; }

static struct cuda_graph_sig graph_sig(const struct cuda_ctx *c)
{
    struct cuda_graph_sig g;
    memset(&g, 0, sizeof g); /* compared with memcmp: no uninitialised padding */
    g.n_tokens = c->b.n_tokens;
    g.n_seqs = c->b.n_seqs;
    g.n_out = c->b.n_out;
    g.block_table_stride = c->b.block_table_stride;
    g.rotary_dim = c->b.rotary_dim;
    g.has_string = c->b.has_string;
    g.has_q_scale = c->b.q_scale != NULL;
    g.n_dec = c->b.n_dec;
    g.d_meta = c->d_meta;
    g.gen = c->graph_gen;
    return g;
}

static int cu_graph_run(void *vctx, int key, void (*fn)(void *arg), void *arg, char *err)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    CHECK_BATCH(c);
    CHECK(c->b.n_dec == c->b.n_tokens, "graph_run: %d of %d rows are not decode rows", c->b.n_tokens - c->b.n_dec,
          c->b.n_tokens);
    set_device(c);
    c->cast_src = NULL; /* replayed ops write buffers without bumping their versions */
    if (!c->graphs_on) {
        fn(arg);
        return 0;
    }
    const struct cuda_graph_sig sig = graph_sig(c);
    struct cuda_graph_entry *g = NULL;
    for (int i = 0; i < c->n_graphs; i++)
        if (c->graphs[i].key == key) g = &c->graphs[i];
    if (g && memcmp(&g->sig, &sig, sizeof sig) == 0) {
        CUDA_CHECK(cudaGraphLaunch(g->exec, c->stream));
        return 0;
    }
    if (!g && c->n_graphs == CUDA_MAX_GRAPHS) { /* full (many block-table widths): run eagerly */
        fn(arg);
        return 0;
    }
    if (g) { /* stale: recapture in place */
        CUDA_CHECK(cudaGraphExecDestroy(g->exec));
        g->exec = NULL;
    }
    cudaGraph_t graph = NULL;
    CUDA_CHECK(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    fn(arg);
    const cudaError_t ce = cudaStreamEndCapture(c->stream, &graph);
    c->cast_src = NULL;
    cudaGraphExec_t exec = NULL;
    cudaError_t e = ce;
    if (e == cudaSuccess) e = cudaGraphInstantiate(&exec, graph, 0);
    if (graph) cudaGraphDestroy(graph);
    if (e != cudaSuccess) {
        cudaGetLastError();
        if (g) *g = c->graphs[--c->n_graphs]; /* drop the stale entry */
        return set_err(err, -1, "cuda: capturing the decode step as a graph (key %d) failed: %s; "
                       "--no-cuda-graphs runs without graphs", key, cudaGetErrorString(e));
    }
    if (!g) {
        if (!c->graphs) c->graphs = (struct cuda_graph_entry *)xcalloc(CUDA_MAX_GRAPHS, sizeof *c->graphs);
        g = &c->graphs[c->n_graphs++];
    }
    g->key = key;
    g->sig = sig;
    g->exec = exec;
    CUDA_CHECK(cudaGraphLaunch(g->exec, c->stream));
    return 0;
}

// the timing hook (backend.h prof_*): events recorded on the op stream, read when complete

static int cu_prof_reserve(void *vctx, int n, char *err)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    if (n <= c->prof_n) return 0;
    set_device(c);
    c->prof_ev = (cudaEvent_t *)xrealloc(c->prof_ev, sizeof(cudaEvent_t) * n);
    for (; c->prof_n < n; c->prof_n++) {
        const cudaError_t e = cudaEventCreate(&c->prof_ev[c->prof_n]);
        if (e != cudaSuccess) {
            cudaGetLastError();
            return set_err(err, -1, "cuda: timing events: %s", cudaGetErrorString(e));
        }
    }
    return 0;
}

static void cu_prof_mark(void *vctx, int slot)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    CHECK(slot >= 0 && slot < c->prof_n, "prof_mark: slot %d of %d", slot, c->prof_n);
    CUDA_CHECK(cudaEventRecord(c->prof_ev[slot], c->stream));
}

static double cu_prof_elapsed_ms(void *vctx, int a, int b)
{
    struct cuda_ctx *c = (struct cuda_ctx *)vctx;
    CHECK(a >= 0 && b >= 0 && a < c->prof_n && b < c->prof_n, "prof_elapsed_ms: slots %d, %d", a, b);
    CUDA_CHECK(cudaEventSynchronize(c->prof_ev[b]));
    float ms = 0.f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, c->prof_ev[a], c->prof_ev[b]));
    return ms;
}

// ------------------------------------------------------------------------------------------------
// the table and init

static const struct backend_ops cuda_ops = {
    /* .name = */ "cuda",
    /* .elem_size = */ 2,
    /* .free = */ cu_free,
    /* .describe = */ cu_describe,
    /* .mem_free = */ cu_mem_free,
    /* .weight_new = */ cu_weight_new,
    /* .act_new = */ cu_act_new,
    /* .buf_free = */ cu_buf_free,
    /* .act_write = */ cu_act_write,
    /* .act_read = */ cu_act_read,
    /* .kv_init = */ cu_kv_init,
    /* .kv_copy_blocks = */ cu_kv_copy_blocks,
    /* .batch_begin = */ cu_batch_begin,
    /* .embed = */ cu_embed,
    /* .rmsnorm = */ cu_rmsnorm,
    /* .matmul = */ cu_matmul,
    /* .rope = */ cu_rope,
    /* .kv_store = */ cu_kv_store,
    /* .attention = */ cu_attention,
    /* .swiglu = */ cu_swiglu,
    /* .add = */ cu_add,
    /* .gather_rows = */ cu_gather_rows,
    /* .add_bias = */ cu_add_bias,
    /* .kv_dtype_auto = */ cu_kv_dtype_auto,
    /* .kv_dtype_check = */ cu_kv_dtype_check,
    /* .act_new_f32 = */ cu_act_new_f32,
    /* .add_rmsnorm = */ cu_add_rmsnorm,
    /* .rope_kv_store = */ cu_rope_kv_store,
    /* .gather_rmsnorm = */ cu_gather_rmsnorm,
    /* .graph_enabled = */ cu_graph_enabled,
    /* .graph_run = */ cu_graph_run,
    /* .prof_reserve = */ cu_prof_reserve,
    /* .prof_mark = */ cu_prof_mark,
    /* .prof_elapsed_ms = */ cu_prof_elapsed_ms,
};

extern "C" int backend_cuda_device_count(void)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* no driver / no device: not an error for the caller */
        return 0;
    }
    return n;
}

extern "C" int backend_cuda_init(struct backend *b, const struct backend_params *p, char *err)
{
    memset(b, 0, sizeof *b);
    const int n_dev = backend_cuda_device_count();
    if (n_dev <= 0) return set_err(err, -1, "cuda: no CUDA device found");
    if (p->cuda_device < 0 || p->cuda_device >= n_dev)
        return set_err(err, -1, "cuda: device %d does not exist (%d found)", p->cuda_device, n_dev);

    struct cuda_ctx *c = (struct cuda_ctx *)xcalloc(1, sizeof *c);
    cudaError_t e;
    cublasStatus_t st;
    const char *mode;
    c->device = p->cuda_device;
    c->gpu_memory_utilization = p->gpu_memory_utilization;
    if ((e = cudaSetDevice(c->device)) != cudaSuccess) goto fail_cuda;
    cudaDeviceProp prop;
    if ((e = cudaGetDeviceProperties(&prop, c->device)) != cudaSuccess) goto fail_cuda;
    snprintf(c->name, sizeof c->name, "%s", prop.name);
    c->n_sm = prop.multiProcessorCount;
    c->cc_major = prop.major;
    c->cc_minor = prop.minor;
    c->total_mem = prop.totalGlobalMem;
    if (c->cc_major < 8) {
        set_err(err, -1, "cuda: %s is sm_%d%d; the CUDA backend needs sm_80 or newer (bf16 tensor cores)",
                c->name, c->cc_major, c->cc_minor);
        goto fail;
    }
    if (p->dtype == BK_F16) {
        c->dtype = BK_F16;
    } else {
        if (p->dtype != BK_BF16) LOG_I("cuda: weights and KV cache stored as bf16 (fp32 is not a GPU storage dtype)");
        c->dtype = BK_BF16;
    }
    /* ROPESERVE_CUDA_ATTN=simt|sm80|sm80v1|sm90|auto (INTERFACES §4): forces an attention path
     * (sm80: the 128-row kernel where it applies, else the 64-row one; sm80v1: the 64-row one) */
    mode = getenv("ROPESERVE_CUDA_ATTN");
    if (mode && *mode && strcmp(mode, "auto") && strcmp(mode, "simt") && strcmp(mode, "sm80") &&
        strcmp(mode, "sm80v1") && strcmp(mode, "sm90")) {
        set_err(err, -1, "cuda: ROPESERVE_CUDA_ATTN=%s: expected simt, sm80, sm80v1, sm90 or auto", mode);
        goto fail;
    }
    c->attn_simt_only = mode && strcmp(mode, "simt") == 0;
    c->attn_sm90 = c->cc_major == 9 && c->cc_minor == 0 && !c->attn_simt_only &&
                   !(mode && (strcmp(mode, "sm80") == 0 || strcmp(mode, "sm80v1") == 0));
    c->attn_fa2 = !c->attn_simt_only && !(mode && strcmp(mode, "sm80v1") == 0);
    if (mode && strcmp(mode, "sm90") == 0 && !c->attn_sm90) {
        set_err(err, -1, "cuda: ROPESERVE_CUDA_ATTN=sm90 needs compute capability 9.0 (H100/H200); %s is sm_%d%d",
                c->name, c->cc_major, c->cc_minor);
        goto fail;
    }

    /* ROPESERVE_CUDA_ACT=f32|auto: fp32 activations between ops (the kernel checkers' fp32 mode) */
    mode = getenv("ROPESERVE_CUDA_ACT");
    if (mode && *mode && strcmp(mode, "auto") && strcmp(mode, "f32")) {
        set_err(err, -1, "cuda: ROPESERVE_CUDA_ACT=%s: expected f32 or auto", mode);
        goto fail;
    }
    c->act_dtype = mode && strcmp(mode, "f32") == 0 ? BK_F32 : c->dtype;
    /* ROPESERVE_CUDA_GRAPHS=0|1 overrides --no-cuda-graphs either way */
    mode = getenv("ROPESERVE_CUDA_GRAPHS");
    if (mode && *mode && strcmp(mode, "0") && strcmp(mode, "1")) {
        set_err(err, -1, "cuda: ROPESERVE_CUDA_GRAPHS=%s: expected 0 or 1", mode);
        goto fail;
    }
    c->graphs_on = mode && *mode ? mode[0] == '1' : p->cuda_graphs != 0;

    if ((e = cudaStreamCreate(&c->stream)) != cudaSuccess) goto fail_cuda; /* blocking: see common.cuh */
    if ((e = cudaEventCreateWithFlags(&c->meta_ev, cudaEventDisableTiming)) != cudaSuccess) goto fail_cuda;
    if ((e = cudaEventCreateWithFlags(&c->tiles_ev, cudaEventDisableTiming)) != cudaSuccess) goto fail_cuda;
    if ((st = cublasCreate(&c->cublas)) != CUBLAS_STATUS_SUCCESS) {
        c->cublas = NULL;
        set_err(err, -1, "cuda: cublasCreate failed: %s", cublasGetStatusString(st));
        goto fail;
    }
    CUBLAS_CHECK(cublasSetStream(c->cublas, c->stream));
    if (dev_alloc(&c->cublas_ws, CUBLAS_WS_BYTES, err, "the cuBLAS workspace")) goto fail;
    c->cublas_ws_bytes = CUBLAS_WS_BYTES;
    CUBLAS_CHECK(cublasSetWorkspace(c->cublas, c->cublas_ws, c->cublas_ws_bytes));
    if (dev_alloc((void **)&c->part, PART_CAP_FLOATS * sizeof(float), err, "split-KV partials")) goto fail;
    c->part_cap = PART_CAP_FLOATS;
    c->smem_optin = prop.sharedMemPerBlockOptin;
    if (cuda_attn_prefill_init(c->smem_optin, err)) goto fail;
    if (cuda_attn_prefill_fa2_init(c->smem_optin, err)) goto fail;
    if (c->attn_sm90 && cuda_attn_prefill_sm90_init(c->smem_optin, err)) goto fail;

    b->ops = &cuda_ops;
    b->ctx = c;
    return 0;

fail_cuda:
    cudaGetLastError();
    set_err(err, -1, "cuda: device %d: %s", c->device, cudaGetErrorString(e));
fail:
    cu_free(c);
    return -1;
}
