/* check_rope.cu - the rope op (q and k in place, HF rotate-half, per-sequence inv_freq and
 * attention factor) of the CUDA backend against the CPU backend at positions up to 131071,
 * then its bandwidth.
 *
 * What it guards (REFERENCES-rope.md §10): the angle must be the single fp32 product
 * (float)p * inv_freq (an fp64 angle is off by up to 4e-3 rad at p = 131071), cos/sin must be
 * full-range (a fast __sinf is wrong by far more at 1e5 rad), both scaled by attn_factor, and
 * dims >= rotary_dim untouched. Both sides evaluate the same fp32 angle; CUDA's sincosf is
 * within 2 ulp and glibc's within 1, so outputs of size ~1 agree to ~5e-7: atol 1e-5,
 * rtol 1e-5.
 *
 * Usage: check_rope (no arguments). */
#include "batch.h"
#include "check.h"

struct rope_config {
    int n_heads, n_kv_heads, head_dim, rotary_dim;
    int n_seqs, rows_per_seq, max_pos;
    int with_k, bench;
};

static void run_config(const struct rope_config *cf)
{
    printf("config: heads %d/%d, head_dim %d, rotary_dim %d, %d seqs x %d rows, positions < %d%s\n", cf->n_heads,
           cf->n_kv_heads, cf->head_dim, cf->rotary_dim, cf->n_seqs, cf->rows_per_seq, cf->max_pos,
           cf->with_k ? "" : ", q only");
    struct backend cpu = ck_cpu_backend(), gpu = ck_cuda_backend(BK_BF16, 0);
    const int bs = 16;
    ck_batch bt;
    std::vector<double> bases;
    std::vector<float> scales, afs;
    for (int s = 0; s < cf->n_seqs; s++) {
        /* the first sequence ends exactly at max_pos - 1, the others anywhere below */
        const int start = s == 0 ? cf->max_pos - cf->rows_per_seq : ck_int(cf->max_pos - cf->rows_per_seq + 1);
        const int len = start + cf->rows_per_seq;
        bt.add_seq(start, cf->rows_per_seq, std::vector<int32_t>((size_t)(len + bs - 1) / bs, 1));
        bases.push_back(s % 2 ? 500000.0 : 10000.0);
        scales.push_back(s % 3 == 2 ? 4.f : 1.f);
        afs.push_back(s % 2 ? 1.2079442f : 1.f);
    }
    bt.finish(bs, cf->rotary_dim, bases, scales, afs);
    ck_begin(&cpu, &bt.b);
    ck_begin(&gpu, &bt.b);

    const size_t nt = (size_t)bt.b.n_tokens;
    const size_t nq = nt * cf->n_heads * cf->head_dim, nk = nt * cf->n_kv_heads * cf->head_dim;
    std::vector<float> q(nq), k(nk);
    ck_fill(q.data(), nq, -1.f, 1.f);
    ck_fill(k.data(), nk, -1.f, 1.f);
    bk_buf *qc = ck_act_from(&cpu, q.data(), nq), *qg = ck_act_from(&gpu, q.data(), nq);
    bk_buf *kc = ck_act_from(&cpu, k.data(), nk), *kg = ck_act_from(&gpu, k.data(), nk);
    cpu.ops->rope(cpu.ctx, qc, cf->with_k ? kc : NULL, cf->n_heads, cf->n_kv_heads, cf->head_dim);
    gpu.ops->rope(gpu.ctx, qg, cf->with_k ? kg : NULL, cf->n_heads, cf->n_kv_heads, cf->head_dim);
    std::vector<float> rqc = ck_read(&cpu, qc, nq), rqg = ck_read(&gpu, qg, nq);
    std::vector<float> rkc = ck_read(&cpu, kc, nk), rkg = ck_read(&gpu, kg, nk);

    char what[128];
    snprintf(what, sizeof what, "rope q hd%d rd%d", cf->head_dim, cf->rotary_dim);
    struct ck_result r = check_compare(what, rqg.data(), rqc.data(), nq, 1e-5f, 1e-5f);
    TEST_CONDF(r.mismatches == 0 && r.nonfinite_ref == 0, "%s", what);
    snprintf(what, sizeof what, "rope k hd%d rd%d%s", cf->head_dim, cf->rotary_dim, cf->with_k ? "" : " (untouched)");
    r = check_compare(what, rkg.data(), rkc.data(), nk, 1e-5f, 1e-5f);
    TEST_CONDF(r.mismatches == 0 && r.nonfinite_ref == 0, "%s", what);
    if (!cf->with_k) TEST_CONDF(memcmp(rkg.data(), k.data(), nk * sizeof(float)) == 0, "rope with k = NULL left k alone");
    /* the pass-through dims are bit-identical */
    int passthru_ok = 1;
    for (size_t i = 0; i < nq; i++)
        if ((int)(i % cf->head_dim) >= cf->rotary_dim && rqg[i] != q[i]) passthru_ok = 0;
    TEST_CONDF(passthru_ok, "rope hd%d rd%d: dims >= rotary_dim untouched", cf->head_dim, cf->rotary_dim);

    if (cf->bench) {
        const float ms = bench_ms([&] { gpu.ops->rope(gpu.ctx, qg, kg, cf->n_heads, cf->n_kv_heads, cf->head_dim); });
        printf("    bench rope %zu rows x (%d + %d) heads x %d: %.4f ms, %.1f GB/s\n", nt, cf->n_heads, cf->n_kv_heads,
               cf->head_dim, ms, (double)(nq + nk) * 8.0 / (ms * 1e6));
    }
    for (bk_buf *b : {qc, kc}) cpu.ops->buf_free(cpu.ctx, b);
    for (bk_buf *b : {qg, kg}) gpu.ops->buf_free(gpu.ctx, b);
    backend_free(&cpu);
    backend_free(&gpu);
}

int main(void)
{
    if (check_skip_without_device("check_rope")) return 0;
    ck_seed(7);
    const struct rope_config configs[] = {
        {4, 2, 16, 16, 3, 40, 2048, 1, 0},        /* the fixtures' shapes */
        {6, 6, 16, 16, 2, 9, 2048, 1, 0},
        {32, 8, 128, 128, 4, 64, 131072, 1, 0},   /* up to position 131071 */
        {32, 32, 128, 64, 3, 17, 131072, 1, 0},   /* partial rotary: dims 64..127 pass through */
        {8, 8, 64, 64, 2, 33, 65536, 0, 0},       /* q only */
        {32, 8, 128, 128, 1, 2048, 131072, 1, 1}, /* a prefill chunk at the end of 128k: bandwidth */
    };
    for (const auto &cf : configs) run_config(&cf);
    return test_report("check_rope");
}
