/* blas_small_m - why kernels/cpu's matmul sends a few rows through one gemv each: times OpenBLAS's
 * sgemm (x . W^T, as cpu_matmul calls it) against M separate sgemv calls for M = 1..64 rows.
 *
 *   build/tools/blas_small_m [n_in n_out threads reps]     (default 512 1376 2 2000)
 *
 * Prints the median of 5 runs of `reps` calls each, in microseconds per call. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec * 1e-3;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* median over 5 runs of reps calls: mode 0 = sgemm, 1 = one sgemv per row */
static double time_us(int mode, int M, int K, int N, const float *w, const float *x, float *o, int reps)
{
    double t[5];
    for (int k = 0; k < 5; k++) {
        double t0 = now_us();
        for (int r = 0; r < reps; r++) {
            if (mode == 0)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, w, K, 0.0f, o, N);
            else
                for (int m = 0; m < M; m++)
                    cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.0f, w, K, x + (size_t)m * K, 1, 0.0f,
                                o + (size_t)m * N, 1);
        }
        t[k] = (now_us() - t0) / reps;
    }
    qsort(t, 5, sizeof t[0], cmp);
    return t[2];
}

int main(int argc, char **argv)
{
    const int K = argc > 1 ? atoi(argv[1]) : 512, N = argc > 2 ? atoi(argv[2]) : 1376;
    const int threads = argc > 3 ? atoi(argv[3]) : 2, reps = argc > 4 ? atoi(argv[4]) : 2000;
    if (K < 1 || N < 1 || threads < 1 || reps < 1) {
        fprintf(stderr, "usage: blas_small_m [n_in n_out threads reps]\n");
        return 2;
    }
    openblas_set_num_threads(threads);
    float *w = malloc(sizeof(float) * (size_t)N * K), *x = malloc(sizeof(float) * 64 * (size_t)K);
    float *o = malloc(sizeof(float) * 64 * (size_t)N);
    if (!w || !x || !o) return 1;
    srand(1);
    for (size_t i = 0; i < (size_t)N * K; i++) w[i] = rand() / (float)RAND_MAX - 0.5f;
    for (size_t i = 0; i < 64 * (size_t)K; i++) x[i] = rand() / (float)RAND_MAX - 0.5f;
    printf("(M x %d) . (%d x %d)^T, %d threads, median of 5 x %d calls\n", K, N, K, threads, reps);
    const int Ms[] = {1, 2, 4, 6, 8, 16, 32, 64};
    for (size_t i = 0; i < sizeof Ms / sizeof Ms[0]; i++)
        printf("M = %2d   sgemm %9.1f us   %2d x sgemv %9.1f us\n", Ms[i],
               time_us(0, Ms[i], K, N, w, x, o, reps), Ms[i], time_us(1, Ms[i], K, N, w, x, o, reps));
    free(w);
    free(x);
    free(o);
    return 0;
}
