/* backend.c - picks a backend: --device cpu|cuda|auto. AUTO takes CUDA when it is compiled in
 * and a device answers, else the CPU; an explicit --device cuda never falls back silently. */
#include "backend.h"

#include <stdio.h>
#include <string.h>

#include "../common/common.h"

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
