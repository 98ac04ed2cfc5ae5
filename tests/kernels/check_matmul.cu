/* check_matmul.cu - out (n_rows, n_out) = x (n_rows, n_in) . w^T through cuBLAS (bf16/f16
 * weights, x rounded to the weight dtype, FP32 accumulation and output) against the CPU
 * backend (OpenBLAS sgemm), then TFLOP/s and weight GB/s.
 *
 * Reference and tolerance: both backends get the same bf16/f16 weight bits, and the CPU
 * reference also gets x rounded to that dtype (the naive bf16 run), so only the accumulation
 * order differs: |err| <= n_in * 2^-24 * sum|x w| in the worst case, ~1e-4 for n_in 11008 at
 * outputs of size ~0.3 -> atol 5e-4, rtol 1e-3. A transposed or mis-strided operand, or an
 * unrounded/misrounded x, errs by 1e-3 .. 1. The error of both runs against the unrounded
 * fp32 x is printed for information.
 *
 * Usage: check_matmul (no arguments). */
#include "batch.h"
#include "check.h"

struct mm_config {
    int n_rows, n_in, n_out;
    enum bk_dtype dt;
    int bench;
};

static void run_config(const struct mm_config *cf)
{
    printf("config: (%d x %d) . (%d x %d)^T, %s weights\n", cf->n_rows, cf->n_in, cf->n_out, cf->n_in, ck_dtype_name(cf->dt));
    struct backend cpu = ck_cpu_backend(), gpu = ck_cuda_backend(cf->dt, 0);
    const size_t nx = (size_t)cf->n_rows * cf->n_in, nw = (size_t)cf->n_out * cf->n_in, no = (size_t)cf->n_rows * cf->n_out;
    std::vector<float> x(nx), xr(nx), w(nw);
    ck_fill(x.data(), nx, -1.f, 1.f);
    ck_round_all(xr.data(), x.data(), nx, cf->dt);
    const float ws = 1.f / sqrtf((float)cf->n_in);
    ck_fill(w.data(), nw, -ws, ws);
    std::vector<uint16_t> wb = ck_bits(w.data(), nw, cf->dt);

    bk_buf *wc = ck_weight(&cpu, wb.data(), cf->dt, nw), *wg = ck_weight(&gpu, wb.data(), cf->dt, nw);
    bk_buf *xc = ck_act_from(&cpu, xr.data(), nx), *xc32 = ck_act_from(&cpu, x.data(), nx);
    bk_buf *xg = ck_act_from(&gpu, ck_selftest ? xr.data() : x.data(), nx); /* the GPU rounds x itself */
    bk_buf *oc = ck_act(&cpu, no), *oc32 = ck_act(&cpu, no), *og = ck_act(&gpu, no);
    cpu.ops->matmul(cpu.ctx, oc, xc, wc, cf->n_rows, cf->n_in, cf->n_out);
    cpu.ops->matmul(cpu.ctx, oc32, xc32, wc, cf->n_rows, cf->n_in, cf->n_out);
    gpu.ops->matmul(gpu.ctx, og, xg, wg, cf->n_rows, cf->n_in, cf->n_out);
    std::vector<float> rc = ck_read(&cpu, oc, no), r32 = ck_read(&cpu, oc32, no), rg = ck_read(&gpu, og, no);

    char what[128];
    snprintf(what, sizeof what, "matmul %dx%dx%d %s", cf->n_rows, cf->n_in, cf->n_out, ck_dtype_name(cf->dt));
    struct ck_result r = check_compare(what, rg.data(), rc.data(), no, 5e-4f, 1e-3f);
    TEST_CONDF(r.mismatches == 0 && r.nonfinite_ref == 0, "%s", what);
    printf("    vs fp32 x: gpu max |err| %.3g, naive %s run %.3g\n", ck_max_err(rg.data(), r32.data(), no),
           ck_dtype_name(cf->dt), ck_max_err(rc.data(), r32.data(), no));

    /* the cast cache: a second product with the same x reuses the cast; after act_write, not */
    {
        std::vector<float> x2(nx), x2r(nx);
        ck_fill(x2.data(), nx, -1.f, 1.f);
        ck_round_all(x2r.data(), x2.data(), nx, cf->dt);
        gpu.ops->act_write(gpu.ctx, xg, 0, ck_selftest ? x2r.data() : x2.data(), nx);
        cpu.ops->act_write(cpu.ctx, xc, 0, x2r.data(), nx);
        cpu.ops->matmul(cpu.ctx, oc, xc, wc, cf->n_rows, cf->n_in, cf->n_out);
        gpu.ops->matmul(gpu.ctx, og, xg, wg, cf->n_rows, cf->n_in, cf->n_out);
        rc = ck_read(&cpu, oc, no);
        rg = ck_read(&gpu, og, no);
        snprintf(what, sizeof what, "matmul %dx%dx%d after act_write", cf->n_rows, cf->n_in, cf->n_out);
        r = check_compare(what, rg.data(), rc.data(), no, 5e-4f, 1e-3f);
        TEST_CONDF(r.mismatches == 0 && r.nonfinite_ref == 0, "%s", what);
    }

    if (cf->bench) {
        snprintf(what, sizeof what, "matmul %dx%dx%d %s", cf->n_rows, cf->n_in, cf->n_out, ck_dtype_name(cf->dt));
        const double flop = 2.0 * cf->n_rows * cf->n_in * cf->n_out;
        float ms = bench_ms([&] { gpu.ops->matmul(gpu.ctx, og, xg, wg, cf->n_rows, cf->n_in, cf->n_out); });
        printf("    bench %s (x cast cached): %.4f ms, %.1f TFLOP/s, weights %.1f GB/s\n", what, ms, flop / (ms * 1e9),
               (double)nw * 2.0 / (ms * 1e6));
        /* a 1-element act_write changes x, so the cast runs again (+ a 4-byte copy) */
        ms = bench_ms([&] {
            gpu.ops->act_write(gpu.ctx, xg, 0, x.data(), 1);
            gpu.ops->matmul(gpu.ctx, og, xg, wg, cf->n_rows, cf->n_in, cf->n_out);
        });
        printf("    bench %s (with the x cast): %.4f ms, %.1f TFLOP/s\n", what, ms, flop / (ms * 1e9));
    }
    for (bk_buf *b : {wc, xc, xc32, oc, oc32}) cpu.ops->buf_free(cpu.ctx, b);
    for (bk_buf *b : {wg, xg, og}) gpu.ops->buf_free(gpu.ctx, b);
    backend_free(&cpu);
    backend_free(&gpu);
}

int main(void)
{
    if (check_skip_without_device("check_matmul")) return 0;
    ck_seed(42);
    const struct mm_config configs[] = {
        {1, 64, 172, BK_BF16, 0}, /* the fixtures' shapes */
        {7, 64, 512, BK_F16, 0},
        {33, 172, 64, BK_BF16, 0},
        {100, 96, 288, BK_F16, 0},
        {1, 4096, 4096, BK_BF16, 1},   /* decode: weight-bandwidth bound */
        {1, 4096, 32000, BK_BF16, 1},  /* LM head */
        {16, 4096, 11008, BK_BF16, 1},
        {512, 4096, 11008, BK_BF16, 1},
        {2048, 4096, 4096, BK_BF16, 1}, /* prefill chunk: tensor-core bound */
        {2048, 11008, 4096, BK_F16, 1},
    };
    for (const auto &cf : configs) run_config(&cf);
    return test_report("check_matmul");
}
