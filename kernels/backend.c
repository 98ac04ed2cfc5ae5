/* backend.c - picks a backend: --device cpu|cuda|auto. AUTO takes CUDA when it is compiled in
 * and a device answers, else the CPU; an explicit --device cuda never falls back silently. */
#include "backend.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../common/common.h"

const char *bk_dtype_name(enum bk_dtype t)
{
    switch (t) {
    case BK_F32: return "f32";
    case BK_F16: return "f16";
    case BK_BF16: return "bf16";
    case BK_FP8_E4M3: return "fp8_e4m3";
    }
    return "?";
}

size_t bk_dtype_bytes(enum bk_dtype t)
{
    switch (t) {
    case BK_F32: return 4;
    case BK_F16:
    case BK_BF16: return 2;
    case BK_FP8_E4M3: return 1;
    }
    CHECK(0, "unknown bk_dtype %d", (int)t);
}

/* e4m3 from fp32 bits. Normal results (|x| >= 2^-6): keep the top 3 mantissa bits and round
 * the 20 dropped ones to nearest even; a carry out of the mantissa bumps the exponent, which is
 * the next code, so the rounding is one integer add. Subnormal results (|x| < 2^-6, a quantum of
 * 2^-9): rintf(|x| * 512) in the default rounding mode (to nearest even) is the code itself, and
 * 8 lands on the smallest normal (code 0x08) as it should. */
uint8_t bk_fp8_e4m3_from_f32(float x)
{
    uint32_t bits;
    memcpy(&bits, &x, 4);
    const uint8_t sign = (uint8_t)((bits >> 24) & 0x80);
    if (isnan(x)) return sign | 0x7f;
    const float a = fabsf(x);
    if (a >= 448.0f) return sign | 0x7e; /* saturate: 448 is the largest finite value */
    if (a < 0.015625f) return sign | (uint8_t)rintf(a * 512.0f);
    const uint32_t ab = bits & 0x7fffffffu;
    uint32_t code = (((ab >> 23) - 127 + 7) << 3) | ((ab >> 20) & 7);
    const uint32_t rest = ab & 0xfffffu;
    if (rest > 0x80000u || (rest == 0x80000u && (code & 1))) code++;
    if (code > 0x7e) code = 0x7e; /* rounded up past 448 (from [448, 464) only: not reached) */
    return sign | (uint8_t)code;
}

float bk_fp8_e4m3_to_f32(uint8_t code)
{
    const int e = (code >> 3) & 15, m = code & 7;
    float v;
    if (e == 15 && m == 7) v = NAN;
    else if (e == 0) v = ldexpf((float)m, -9);
    else v = ldexpf((float)(8 + m), e - 10);
    return (code & 0x80) ? -v : v;
}

struct backend_params backend_default_params(void)
{
    struct backend_params p;
    memset(&p, 0, sizeof p);
    p.device = BK_DEVICE_AUTO;
    p.n_threads = 0;
    p.cuda_device = 0;
    p.dtype = BK_BF16;
    p.gpu_memory_utilization = 0.95;
    p.cuda_graphs = 1;
    return p;
}

const char *backend_list(void)
{
#ifdef ROPESERVE_CUDA
    return "cpu,cuda";
#else
    return "cpu";
#endif
}

void backend_auto_describe(char *buf, size_t cap)
{
#ifdef ROPESERVE_CUDA
    int n = backend_cuda_device_count();
    if (n > 0) snprintf(buf, cap, "cuda (%d device%s)", n, n == 1 ? "" : "s");
    else snprintf(buf, cap, "cpu (no CUDA device found)");
#else
    snprintf(buf, cap, "cpu (built without CUDA: make CUDA=1)");
#endif
}

int backend_init(struct backend *b, const struct backend_params *p, char *err)
{
    memset(b, 0, sizeof *b);
    switch (p->device) {
    case BK_DEVICE_CPU:
        return backend_cpu_init(b, p, err);
    case BK_DEVICE_CUDA:
#ifdef ROPESERVE_CUDA
        if (backend_cuda_device_count() <= 0)
            return set_err(err, -1, "--device cuda: no CUDA device found");
        return backend_cuda_init(b, p, err);
#else
        return set_err(err, -1, "--device cuda: this build has no CUDA backend (built without nvcc)");
#endif
    case BK_DEVICE_AUTO:
    default:
#ifdef ROPESERVE_CUDA
        if (backend_cuda_device_count() > 0) return backend_cuda_init(b, p, err);
#endif
        return backend_cpu_init(b, p, err);
    }
}

void backend_free(struct backend *b)
{
    if (b && b->ops) b->ops->free(b->ctx);
    if (b) memset(b, 0, sizeof *b);
}
