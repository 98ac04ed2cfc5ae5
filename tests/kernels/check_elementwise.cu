/* check_elementwise.cu - embed, rmsnorm (out of place and in place), swiglu, add, add_bias and
 * gather_rows of the CUDA backend against the CPU backend, then their bandwidth.
 *
 * Tolerances: embed, add, add_bias and gather_rows move or add fp32 values (a bias: the same
 * bf16/f16 bits widened on both sides) and must match exactly; the
 * weights are given to both backends as the same bf16/f16 bits, so the embedding table is the
 * same on both sides. rmsnorm sums squares in fp32 on the GPU (double on the CPU): relative
 * error a few fp32 ulps -> atol 1e-5, rtol 1e-5. swiglu uses expf on both sides (CUDA's is
 * within 2 ulp) -> atol 1e-6, rtol 1e-5.
 *
 * Usage: check_elementwise (no arguments). Exit status 0 when everything passed. */
#include "batch.h"
#include "check.h"

struct ew_config {
    int n_rows, dim, vocab;
    enum bk_dtype dt;
    int bench;
};

static void run_config(const struct ew_config *cf)
{
    printf("config: rows %d, dim %d, vocab %d, weights %s\n", cf->n_rows, cf->dim, cf->vocab, ck_dtype_name(cf->dt));
    struct backend cpu = ck_cpu_backend(), gpu = ck_cuda_backend(cf->dt, 0);
    const size_t n = (size_t)cf->n_rows * cf->dim;
    char what[128];

    ck_batch bt;
    bt.add_seq(0, cf->n_rows, std::vector<int32_t>(1, 1));
    for (auto &t : bt.tokens) t = ck_int(cf->vocab);
    bt.finish(16, 0);
    /* a few out rows, ascending: the last row of the sequence plus some others */
    bt.out_rows.clear();
    for (int r = 0; r < cf->n_rows; r++)
        if (r == cf->n_rows - 1 || ck_int(5) == 0) bt.out_rows.push_back(r);
    bt.b.n_out = (int)bt.out_rows.size();
    bt.b.out_rows = bt.out_rows.data();
    ck_begin(&cpu, &bt.b);
    ck_begin(&gpu, &bt.b);

    /* embed */
    {
        std::vector<float> tab((size_t)cf->vocab * cf->dim);
        ck_fill(tab.data(), tab.size(), -1.f, 1.f);
        std::vector<uint16_t> bits = ck_bits(tab.data(), tab.size(), cf->dt);
        bk_buf *tc = ck_weight(&cpu, bits.data(), cf->dt, tab.size()), *tg = ck_weight(&gpu, bits.data(), cf->dt, tab.size());
        bk_buf *xc = ck_act(&cpu, n), *xg = ck_act(&gpu, n);
        cpu.ops->embed(cpu.ctx, xc, tc, cf->dim);
        gpu.ops->embed(gpu.ctx, xg, tg, cf->dim);
        std::vector<float> rc = ck_read(&cpu, xc, n), rg = ck_read(&gpu, xg, n);
        snprintf(what, sizeof what, "embed %dx%d", cf->n_rows, cf->dim);
        struct ck_result r = check_compare(what, rg.data(), rc.data(), n, 0.f, 0.f);
        TEST_CONDF(r.mismatches == 0 && r.nonfinite_ref == 0, "%s", what);
        if (cf->bench) {
            const float ms = bench_ms([&] { gpu.ops->embed(gpu.ctx, xg, tg, cf->dim); });
            printf("    bench embed %dx%d: %.4f ms, %.1f GB/s\n", cf->n_rows, cf->dim, ms, n * 6.0 / (ms * 1e6));
        }
        cpu.ops->buf_free(cpu.ctx, tc);
        gpu.ops->buf_free(gpu.ctx, tg);
        cpu.ops->buf_free(cpu.ctx, xc);
        gpu.ops->buf_free(gpu.ctx, xg);
    }

    /* rmsnorm, out of place and in place */
    for (int inplace = 0; inplace < 2; inplace++) {
        std::vector<float> x(n), w(cf->dim);
        ck_fill(x.data(), n, -2.f, 2.f);
        ck_fill(w.data(), w.size(), 0.5f, 1.5f);
        std::vector<uint16_t> wb = ck_bits(w.data(), w.size(), cf->dt);
        bk_buf *wc = ck_weight(&cpu, wb.data(), cf->dt, w.size()), *wg = ck_weight(&gpu, wb.data(), cf->dt, w.size());
        bk_buf *xc = ck_act_from(&cpu, x.data(), n), *xg = ck_act_from(&gpu, x.data(), n);
        bk_buf *oc = inplace ? xc : ck_act(&cpu, n), *og = inplace ? xg : ck_act(&gpu, n);
        cpu.ops->rmsnorm(cpu.ctx, oc, xc, wc, cf->n_rows, cf->dim, 1e-5f);
        gpu.ops->rmsnorm(gpu.ctx, og, xg, wg, cf->n_rows, cf->dim, 1e-5f);
        std::vector<float> rc = ck_read(&cpu, oc, n), rg = ck_read(&gpu, og, n);
        snprintf(what, sizeof what, "rmsnorm %dx%d%s", cf->n_rows, cf->dim, inplace ? " in place" : "");
        struct ck_result r = check_compare(what, rg.data(), rc.data(), n, 1e-5f, 1e-5f);
        TEST_CONDF(r.mismatches == 0 && r.nonfinite_ref == 0, "%s", what);
        if (cf->bench && !inplace) {
            const float ms = bench_ms([&] { gpu.ops->rmsnorm(gpu.ctx, og, xg, wg, cf->n_rows, cf->dim, 1e-5f); });
            printf("    bench rmsnorm %dx%d: %.4f ms, %.1f GB/s\n", cf->n_rows, cf->dim, ms, n * 8.0 / (ms * 1e6));
        }
        cpu.ops->buf_free(cpu.ctx, wc);
        gpu.ops->buf_free(gpu.ctx, wg);
        cpu.ops->buf_free(cpu.ctx, xc);
        gpu.ops->buf_free(gpu.ctx, xg);
        if (!inplace) {
            cpu.ops->buf_free(cpu.ctx, oc);
            gpu.ops->buf_free(gpu.ctx, og);
        }
    }

    /* swiglu and add */
    {
        std::vector<float> g(n), u(n);
        ck_fill(g.data(), n, -8.f, 8.f);
        ck_fill(u.data(), n, -2.f, 2.f);
        bk_buf *gc = ck_act_from(&cpu, g.data(), n), *gg = ck_act_from(&gpu, g.data(), n);
        bk_buf *uc = ck_act_from(&cpu, u.data(), n), *ug = ck_act_from(&gpu, u.data(), n);
        bk_buf *oc = ck_act(&cpu, n), *og = ck_act(&gpu, n);
        cpu.ops->swiglu(cpu.ctx, oc, gc, uc, cf->n_rows, cf->dim);
        gpu.ops->swiglu(gpu.ctx, og, gg, ug, cf->n_rows, cf->dim);
        std::vector<float> rc = ck_read(&cpu, oc, n), rg = ck_read(&gpu, og, n);
        snprintf(what, sizeof what, "swiglu %dx%d", cf->n_rows, cf->dim);
        struct ck_result r = check_compare(what, rg.data(), rc.data(), n, 1e-6f, 1e-5f);
        TEST_CONDF(r.mismatches == 0 && r.nonfinite_ref == 0, "%s", what);
        if (cf->bench) {
            const float ms = bench_ms([&] { gpu.ops->swiglu(gpu.ctx, og, gg, ug, cf->n_rows, cf->dim); });
            printf("    bench swiglu %dx%d: %.4f ms, %.1f GB/s\n", cf->n_rows, cf->dim, ms, n * 12.0 / (ms * 1e6));
        }

        cpu.ops->add(cpu.ctx, gc, uc, n);
        gpu.ops->add(gpu.ctx, gg, ug, n);
        rc = ck_read(&cpu, gc, n);
        rg = ck_read(&gpu, gg, n);
        snprintf(what, sizeof what, "add %zu", n);
        r = check_compare(what, rg.data(), rc.data(), n, 0.f, 0.f);
        TEST_CONDF(r.mismatches == 0 && r.nonfinite_ref == 0, "%s", what);
        if (cf->bench) {
            const float ms = bench_ms([&] { gpu.ops->add(gpu.ctx, og, ug, n); });
            printf("    bench add %zu: %.4f ms, %.1f GB/s\n", n, ms, n * 12.0 / (ms * 1e6));
        }

        /* add_bias: the bias is a weight (bf16/f16 bits, the same on both sides) */
        {
            std::vector<float> bias(cf->dim);
            ck_fill(bias.data(), bias.size(), -1.f, 1.f);
            std::vector<uint16_t> bb = ck_bits(bias.data(), bias.size(), cf->dt);
            bk_buf *bc = ck_weight(&cpu, bb.data(), cf->dt, bias.size()), *bg = ck_weight(&gpu, bb.data(), cf->dt, bias.size());
            cpu.ops->add_bias(cpu.ctx, gc, bc, cf->n_rows, cf->dim);
            gpu.ops->add_bias(gpu.ctx, gg, bg, cf->n_rows, cf->dim);
            rc = ck_read(&cpu, gc, n);
            rg = ck_read(&gpu, gg, n);
            snprintf(what, sizeof what, "add_bias %dx%d", cf->n_rows, cf->dim);
            r = check_compare(what, rg.data(), rc.data(), n, 0.f, 0.f);
            TEST_CONDF(r.mismatches == 0 && r.nonfinite_ref == 0, "%s", what);
            cpu.ops->buf_free(cpu.ctx, bc);
            gpu.ops->buf_free(gpu.ctx, bg);
        }

        /* gather_rows of the swiglu output */
        const size_t no = (size_t)bt.b.n_out * cf->dim;
        bk_buf *dc = ck_act(&cpu, no), *dg = ck_act(&gpu, no);
        cpu.ops->gather_rows(cpu.ctx, dc, oc, cf->dim);
        gpu.ops->gather_rows(gpu.ctx, dg, og, cf->dim);
        /* a copy: the GPU rows must be exactly the GPU's own swiglu rows (the CPU's swiglu
         * differs from the GPU's within the swiglu tolerance, and the add bench above
         * overwrites og on bench configurations, so the CPU is not the reference here) */
        std::vector<float> src = ck_read(&gpu, og, n);
        rg = ck_read(&gpu, dg, no);
        rc.assign(no, 0.f);
        for (int i = 0; i < bt.b.n_out; i++)
            std::copy(src.begin() + (size_t)bt.b.out_rows[i] * cf->dim,
                      src.begin() + (size_t)(bt.b.out_rows[i] + 1) * cf->dim, rc.begin() + (size_t)i * cf->dim);
        snprintf(what, sizeof what, "gather_rows %d of %d x %d", bt.b.n_out, cf->n_rows, cf->dim);
        r = check_compare(what, rg.data(), rc.data(), no, 0.f, 0.f);
        TEST_CONDF(r.mismatches == 0 && r.nonfinite_ref == 0, "%s", what);

        for (bk_buf *b : {gc, uc, oc, dc}) cpu.ops->buf_free(cpu.ctx, b);
        for (bk_buf *b : {gg, ug, og, dg}) gpu.ops->buf_free(gpu.ctx, b);
    }
    backend_free(&cpu);
    backend_free(&gpu);
}

int main(void)
{
    if (check_skip_without_device("check_elementwise")) return 0;
    ck_seed(1234);
    const struct ew_config configs[] = {
        {1, 64, 512, BK_BF16, 0},      /* the fixtures' shapes */
        {7, 96, 512, BK_F16, 0},
        {33, 172, 512, BK_BF16, 0},    /* odd width (intermediate 172) */
        {64, 4096, 32000, BK_BF16, 0},
        {333, 5120, 1000, BK_F16, 0},
        {2048, 4096, 32000, BK_BF16, 1}, /* a prefill chunk of the 7B shape: bandwidth */
    };
    for (const auto &cf : configs) run_config(&cf);
    return test_report("check_elementwise");
}
