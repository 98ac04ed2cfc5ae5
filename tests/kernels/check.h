/* check.h - what every tests/kernels/check_*.cu shares (llm.c dev/cuda style, STYLE rules 25-27):
 *
 *   seed -> random inputs (never zeros) -> the op through the CPU backend's vtable (the fp32
 *   reference) and through the CUDA backend's vtable (the shipped kernels, never a copy) ->
 *   check_compare(), the one comparator -> bench_ms() timing of the CUDA op.
 *
 * The comparator: |gpu - ref| <= atol + rtol * |ref| element by element; non-finite references
 * are skipped (and counted: the callers whose inputs are finite treat any as a failure); the
 * first 5 pairs and the first 10 mismatches are printed.
 *
 * bf16/f16 tolerances: the reference is the CPU backend run on inputs already rounded to the
 * GPU's storage dtype (the "naive bf16 run"), so what remains is the kernel's own arithmetic
 * (summation order, P rounded for the P.V mma); each checker states its atol/rtol and why, and
 * prints the error of both the GPU and the naive run against the unrounded fp32 reference.
 *
 * Timing: warm-up, then each repetition flushes L2 (a memset of 2x its size on the legacy
 * default stream), records CUDA events around the op on the legacy default stream and takes
 * the median. This works because the backend's stream is a blocking stream (common.cuh), so
 * the legacy stream's events wait for the op's work.
 *
 * Harness self-test: built with -DCHECK_CPU_AS_GPU, the "CUDA" side is a second CPU backend, no
 * device is needed and nothing is timed; the checkers then compare the CPU on fp32 inputs with
 * the CPU on rounded inputs, which exercises every batch, fill and comparison path on a machine
 * without a GPU (the differences are the naive bf16 error, inside the tolerances). */
#ifndef ROPESERVE_CHECK_H
#define ROPESERVE_CHECK_H

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <vector>

extern "C" {
#include "../../common/common.h"
#include "../../kernels/backend.h"
}
#include "../test.h"

#define CK_CUDA(call)                                                                           \
    do {                                                                                        \
        cudaError_t e_ = (call);                                                                \
        if (e_ != cudaSuccess) {                                                                \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            abort();                                                                            \
        }                                                                                       \
    } while (0)

#ifdef CHECK_CPU_AS_GPU
static const int ck_selftest = 1; /* the "GPU" gets inputs already rounded: it must match exactly */
#else
static const int ck_selftest = 0;
#endif

// ------------------------------------------------------------------------------------------------
// skip without a device

/* Prints the SKIP lines and returns 1 when there is no CUDA device. */
static inline int check_skip_without_device(const char *name)
{
#ifdef CHECK_CPU_AS_GPU
    printf("%s: harness self-test, the CUDA side is a CPU backend\n", name);
    return 0;
#endif
    if (backend_cuda_device_count() > 0) return 0;
    printf("%s: SKIP (no CUDA device)\n", name);
    printf("%s: 0 passed, 0 failed\n", name);
    return 1;
}

// ------------------------------------------------------------------------------------------------
// random numbers: splitmix64, uniform in [lo, hi), never exactly zero

static uint64_t ck_rng_state = 0x5eed0123456789abull;

static inline void ck_seed(uint64_t s) { ck_rng_state = s ? s : 1; }

static inline uint64_t ck_next(void)
{
    uint64_t z = (ck_rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline float ck_uniform(float lo, float hi)
{
    for (;;) {
        const float u = (float)(ck_next() >> 40) * (1.0f / 16777216.0f);
        const float v = lo + (hi - lo) * u;
        if (v != 0.0f) return v;
    }
}

static inline int ck_int(int n) { return (int)(ck_next() % (uint64_t)n); }

static inline void ck_fill(float *x, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++) x[i] = ck_uniform(lo, hi);
}

// ------------------------------------------------------------------------------------------------
// storage rounding (what a bf16/f16 tensor holds)

static inline float ck_round(float x, enum bk_dtype dt)
{
    if (dt == BK_BF16) return bf16_to_f32(f32_to_bf16(x));
    if (dt == BK_F16) return f16_to_f32(f32_to_f16(x));
    return x;
}

static inline void ck_round_all(float *dst, const float *src, size_t n, enum bk_dtype dt)
{
    for (size_t i = 0; i < n; i++) dst[i] = ck_round(src[i], dt);
}

/* the 16-bit storage bits of x (for weight_new with a bf16/f16 source) */
static inline std::vector<uint16_t> ck_bits(const float *x, size_t n, enum bk_dtype dt)
{
    std::vector<uint16_t> h(n);
    for (size_t i = 0; i < n; i++) h[i] = dt == BK_BF16 ? f32_to_bf16(x[i]) : f32_to_f16(x[i]);
    return h;
}

static inline const char *ck_dtype_name(enum bk_dtype dt) { return dt == BK_BF16 ? "bf16" : dt == BK_F16 ? "f16" : "f32"; }

// ------------------------------------------------------------------------------------------------
// the comparator

struct ck_result {
    int mismatches;
    size_t nonfinite_ref;
    double max_abs;  /* over finite references */
    double max_rel;  /* |err| / max(|ref|, 1e-6) */
};

static inline struct ck_result check_compare(const char *what, const float *got, const float *ref, size_t n, float atol,
                                      float rtol)
{
    struct ck_result r = {0, 0, 0.0, 0.0};
    for (size_t i = 0; i < n && i < 5; i++) printf("    %s[%zu]: gpu %.8g ref %.8g\n", what, i, got[i], ref[i]);
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(ref[i])) {
            r.nonfinite_ref++;
            continue;
        }
        const double err = fabs((double)got[i] - (double)ref[i]);
        if (err > r.max_abs || err != err) r.max_abs = err != err ? INFINITY : err;
        const double rel = err / fmax(fabs((double)ref[i]), 1e-6);
        if (rel > r.max_rel || rel != rel) r.max_rel = rel != rel ? INFINITY : rel;
        if (!(err <= (double)atol + (double)rtol * fabs((double)ref[i]))) {
            if (r.mismatches < 10) printf("    MISMATCH %s[%zu]: gpu %.8g ref %.8g\n", what, i, got[i], ref[i]);
            r.mismatches++;
        }
    }
    printf("    %s: %zu values, max |err| %.3g, max rel %.3g, %d mismatches (atol %g rtol %g)%s\n", what, n,
           r.max_abs, r.max_rel, r.mismatches, atol, rtol, r.nonfinite_ref ? ", NON-FINITE REFERENCE VALUES" : "");
    if (r.nonfinite_ref) printf("    %s: %zu non-finite reference values skipped\n", what, r.nonfinite_ref);
    return r;
}

/* max |a - b| over the elements where b is finite (for the informational error lines) */
static inline double ck_max_err(const float *a, const float *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(b[i])) {
            const double e = fabs((double)a[i] - (double)b[i]);
            if (e > m || e != e) m = e != e ? INFINITY : e;
        }
    return m;
}

// ------------------------------------------------------------------------------------------------
// backends

static inline struct backend ck_cpu_backend(void)
{
    struct backend b;
    struct backend_params p = backend_default_params();
    char err[ERR_LEN];
    p.device = BK_DEVICE_CPU;
    if (backend_cpu_init(&b, &p, err)) {
        fprintf(stderr, "cpu backend: %s\n", err);
        abort();
    }
    return b;
}

static int ck_act16 = 0; /* ck_cuda_backend_act's switch, read by ck_cuda_backend_mode */

/* mode: the attention path, ROPESERVE_CUDA_ATTN = "auto", "simt" (every row through the split-KV
 * kernel), "sm80" or "sm90" (that prefill kernel for the multi-token rows) */
static inline struct backend ck_cuda_backend_mode(enum bk_dtype dt, const char *mode)
{
#ifdef CHECK_CPU_AS_GPU
    (void)dt;
    (void)mode;
    return ck_cpu_backend();
#endif
    struct backend b;
    struct backend_params p = backend_default_params();
    char err[ERR_LEN];
    p.device = BK_DEVICE_CUDA;
    p.dtype = dt;
    setenv("ROPESERVE_CUDA_ATTN", mode, 1);
    /* fp32 activations, so each op is compared with fp32 tolerances; check_decode tests the
     * production 16-bit activations (ck_cuda_backend_act) */
    setenv("ROPESERVE_CUDA_ACT", ck_act16 ? "auto" : "f32", 1);
    if (backend_cuda_init(&b, &p, err)) {
        fprintf(stderr, "cuda backend: %s\n", err);
        abort();
    }
    unsetenv("ROPESERVE_CUDA_ATTN");
    unsetenv("ROPESERVE_CUDA_ACT");
    return b;
}

/* act16 1: the production activations (16-bit, the weights' dtype) instead of fp32 */
static inline struct backend ck_cuda_backend_act(enum bk_dtype dt, int act16)
{
    ck_act16 = act16;
    struct backend b = ck_cuda_backend_mode(dt, "auto");
    ck_act16 = 0;
    return b;
}

/* simt: 1 sends every attention row through the split-KV kernel (ROPESERVE_CUDA_ATTN=simt) */
static inline struct backend ck_cuda_backend(enum bk_dtype dt, int simt)
{
    return ck_cuda_backend_mode(dt, simt ? "simt" : "auto");
}

static inline bk_buf *ck_act(struct backend *b, size_t n)
{
    char err[ERR_LEN];
    bk_buf *x = b->ops->act_new(b->ctx, n ? n : 1, err);
    if (!x) {
        fprintf(stderr, "act_new(%zu): %s\n", n, err);
        abort();
    }
    return x;
}

static inline bk_buf *ck_act_from(struct backend *b, const float *src, size_t n)
{
    bk_buf *x = ck_act(b, n);
    if (n) b->ops->act_write(b->ctx, x, 0, src, n);
    return x;
}

static inline bk_buf *ck_weight(struct backend *b, const void *src, enum bk_dtype dt, size_t n)
{
    char err[ERR_LEN];
    bk_buf *w = b->ops->weight_new(b->ctx, src, dt, n, err);
    if (!w) {
        fprintf(stderr, "weight_new(%zu): %s\n", n, err);
        abort();
    }
    return w;
}

static inline std::vector<float> ck_read(struct backend *b, const bk_buf *x, size_t n)
{
    std::vector<float> h(n ? n : 1);
    if (n) b->ops->act_read(b->ctx, h.data(), x, 0, n);
    return h;
}

static inline void ck_begin(struct backend *b, const struct bk_batch *bt)
{
    char err[ERR_LEN];
    if (b->ops->batch_begin(b->ctx, bt, err)) {
        fprintf(stderr, "batch_begin: %s\n", err);
        abort();
    }
}

// ------------------------------------------------------------------------------------------------
// timing

/* Median milliseconds of f() over reps, after warm-up, L2 flushed before each repetition. */
template <typename F> static float bench_ms(F f, int reps = 20)
{
#ifdef CHECK_CPU_AS_GPU
    (void)f;
    (void)reps;
    return 1.0f;
#endif
    static void *flush = NULL;
    static size_t flush_bytes = 0;
    if (!flush) {
        int dev = 0, l2 = 0;
        CK_CUDA(cudaGetDevice(&dev));
        CK_CUDA(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
        flush_bytes = (size_t)(l2 > 0 ? l2 : (32 << 20)) * 2;
        CK_CUDA(cudaMalloc(&flush, flush_bytes));
    }
    cudaEvent_t a, b;
    CK_CUDA(cudaEventCreate(&a));
    CK_CUDA(cudaEventCreate(&b));
    for (int i = 0; i < 3; i++) f();
    CK_CUDA(cudaDeviceSynchronize());
    std::vector<float> t;
    for (int r = 0; r < reps; r++) {
        CK_CUDA(cudaMemsetAsync(flush, r & 0xff, flush_bytes, 0));
        CK_CUDA(cudaEventRecord(a, 0));
        f();
        CK_CUDA(cudaEventRecord(b, 0));
        CK_CUDA(cudaEventSynchronize(b));
        float ms = 0.f;
        CK_CUDA(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms);
    }
    CK_CUDA(cudaEventDestroy(a));
    CK_CUDA(cudaEventDestroy(b));
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

#endif
