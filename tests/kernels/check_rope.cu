/* check_rope.cu - the rope op (q and k in place, HF rotate-half, per-sequence inv_freq and
 * attention factor, q_scale per row, STRING's q_shift) of the CUDA backend against the CPU
 * backend at positions up to 131071, then its bandwidth.
 *
 * What it guards (REFERENCES-rope.md §10): the angle must be the single fp32 product
 * (float)p * inv_freq (an fp64 angle is off by up to 4e-3 rad at p = 131071), cos/sin must be
 * full-range (a fast __sinf is wrong by far more at 1e5 rad), both scaled by attn_factor, and
 * dims >= rotary_dim untouched by the rotation. Both sides evaluate the same fp32 angle; CUDA's
 * sincosf is within 2 ulp and glibc's within 1, so outputs of size ~1 agree to ~5e-7: atol 1e-5,
 * rtol 1e-5 (q_scale <= 2 doubles the values, not the relative error).
 *
 * q_scale and STRING (backend.h, rope): q row r is multiplied by q_scale[r] after rotation (k
 * never; with rotary_dim 0 too). For STRING sequences (S > 0, every other sequence here) q_shift
 * gets the unrotated q rotated at max(0, p - S + W), times q_scale[r]; q_shift rows of the other
 * sequences must keep what was there (both backends start from the same sentinel values). Three
 * checks of q_shift: against the CPU; bit for bit against the GPU's own rope of the same q at
 * the shifted positions (a second batch with those positions and no STRING: the same kernel
 * arithmetic, so any difference is a wrong position, sequence or row); and the sentinel rows
 * bit for bit. Positions below S - W exercise the clamp to 0.
 *
 * Usage: check_rope (no arguments). */
#include "batch.h"
#include "check.h"

struct rope_config {
    int n_heads, n_kv_heads, head_dim, rotary_dim;
    int n_seqs, rows_per_seq, max_pos;
    int with_k, bench;
    int q_scale;            /* 1: q_scale per row, uniform in [0.5, 2) */
    int string_S, string_W; /* STRING on even sequences; S 0 = no STRING (q_shift NULL) */
};

static void run_config(const struct rope_config *cf)
{
    const int str = cf->string_S > 0;
    printf("config: heads %d/%d, head_dim %d, rotary_dim %d, %d seqs x %d rows, positions < %d%s%s", cf->n_heads,
           cf->n_kv_heads, cf->head_dim, cf->rotary_dim, cf->n_seqs, cf->rows_per_seq, cf->max_pos,
           cf->with_k ? "" : ", q only", cf->q_scale ? ", q_scale" : "");
    if (str) printf(", STRING S %d W %d on even sequences", cf->string_S, cf->string_W);
    printf("\n");
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
    const size_t nt = (size_t)bt.b.n_tokens;
    std::vector<int32_t> S_s, W_s;
    if (str) {
        for (int s = 0; s < cf->n_seqs; s++) {
            S_s.push_back(s % 2 == 0 ? cf->string_S : 0);
            W_s.push_back(s % 2 == 0 ? cf->string_W : 0);
        }
        bt.set_string(S_s, W_s);
    }
    std::vector<float> qsc;
    if (cf->q_scale) {
        for (size_t r = 0; r < nt; r++) qsc.push_back(ck_uniform(0.5f, 2.f));
        bt.set_q_scale(qsc);
    }
    ck_begin(&cpu, &bt.b);
    ck_begin(&gpu, &bt.b);

    const size_t row_q = (size_t)cf->n_heads * cf->head_dim;
    const size_t nq = nt * row_q, nk = nt * cf->n_kv_heads * cf->head_dim;
    std::vector<float> q(nq), k(nk), sentinel(nq);
    ck_fill(q.data(), nq, -1.f, 1.f);
    ck_fill(k.data(), nk, -1.f, 1.f);
    ck_fill(sentinel.data(), nq, 5.f, 6.f); /* far from any rotated value */
    bk_buf *qc = ck_act_from(&cpu, q.data(), nq), *qg = ck_act_from(&gpu, q.data(), nq);
    bk_buf *kc = ck_act_from(&cpu, k.data(), nk), *kg = ck_act_from(&gpu, k.data(), nk);
    bk_buf *sc = str ? ck_act_from(&cpu, sentinel.data(), nq) : NULL;
    bk_buf *sg = str ? ck_act_from(&gpu, sentinel.data(), nq) : NULL;
    cpu.ops->rope(cpu.ctx, qc, cf->with_k ? kc : NULL, sc, cf->n_heads, cf->n_kv_heads, cf->head_dim);
    gpu.ops->rope(gpu.ctx, qg, cf->with_k ? kg : NULL, sg, cf->n_heads, cf->n_kv_heads, cf->head_dim);
    std::vector<float> rqc = ck_read(&cpu, qc, nq), rqg = ck_read(&gpu, qg, nq);
    std::vector<float> rkc = ck_read(&cpu, kc, nk), rkg = ck_read(&gpu, kg, nk);

    char what[160];
    snprintf(what, sizeof what, "rope q hd%d rd%d%s", cf->head_dim, cf->rotary_dim, cf->q_scale ? " q_scale" : "");
    struct ck_result r = check_compare(what, rqg.data(), rqc.data(), nq, 1e-5f, 1e-5f);
    TEST_CONDF(r.mismatches == 0 && r.nonfinite_ref == 0, "%s", what);
    snprintf(what, sizeof what, "rope k hd%d rd%d%s", cf->head_dim, cf->rotary_dim, cf->with_k ? "" : " (untouched)");
    r = check_compare(what, rkg.data(), rkc.data(), nk, 1e-5f, 1e-5f);
    TEST_CONDF(r.mismatches == 0 && r.nonfinite_ref == 0, "%s", what);
    if (!cf->with_k) TEST_CONDF(memcmp(rkg.data(), k.data(), nk * sizeof(float)) == 0, "rope with k = NULL left k alone");
    if (cf->with_k && cf->rotary_dim == 0)
        TEST_CONDF(memcmp(rkg.data(), k.data(), nk * sizeof(float)) == 0, "rope with rotary_dim 0 left k alone (never scaled)");
    /* the pass-through dims are the input times q_scale, bit for bit (one fp32 multiply) */
    int passthru_ok = 1;
    for (size_t i = 0; i < nq; i++) {
        const float qs = cf->q_scale ? qsc[i / row_q] : 1.f;
        if ((int)(i % cf->head_dim) >= cf->rotary_dim && rqg[i] != q[i] * qs) passthru_ok = 0;
    }
    TEST_CONDF(passthru_ok, "rope hd%d rd%d: dims >= rotary_dim are q * q_scale exactly", cf->head_dim, cf->rotary_dim);

    if (str) {
        std::vector<float> rsc = ck_read(&cpu, sc, nq), rsg = ck_read(&gpu, sg, nq);
        snprintf(what, sizeof what, "rope q_shift hd%d rd%d S%d W%d", cf->head_dim, cf->rotary_dim, cf->string_S,
                 cf->string_W);
        r = check_compare(what, rsg.data(), rsc.data(), nq, 1e-5f, 1e-5f);
        TEST_CONDF(r.mismatches == 0 && r.nonfinite_ref == 0, "%s", what);

        /* rows of sequences without STRING keep the sentinel; STRING rows all changed */
        int kept = 1, written = 1, n_clamped = 0;
        for (size_t row = 0; row < nt; row++) {
            const int s = bt.seq_of((int)row);
            const int is_str = S_s[s] > 0;
            if (is_str && bt.positions[row] - S_s[s] + W_s[s] < 0) n_clamped++;
            for (size_t i = row * row_q; i < (row + 1) * row_q; i++) {
                if (!is_str && rsg[i] != sentinel[i]) kept = 0;
                if (is_str && rsg[i] == sentinel[i]) written = 0;
            }
        }
        TEST_CONDF(kept, "%s: q_shift rows of sequences without STRING left untouched", what);
        TEST_CONDF(written, "%s: q_shift rows of STRING sequences all written", what);
        printf("    %d STRING rows at p < S - W (shifted position clamped to 0)\n", n_clamped);

        /* the GPU's plain rope of the same q at p' = max(0, p - S + W) (same q_scale, k NULL) */
        ck_batch b2;
        for (int s = 0; s < cf->n_seqs; s++)
            b2.add_seq(bt.seq_lens[s] - cf->rows_per_seq, cf->rows_per_seq, bt.tables[s]);
        b2.finish(bs, cf->rotary_dim, bases, scales, afs);
        for (size_t row = 0; row < nt; row++) {
            const int s = bt.seq_of((int)row);
            if (S_s[s] > 0) b2.positions[row] = std::max(0, bt.positions[row] - S_s[s] + W_s[s]);
        }
        if (cf->q_scale) b2.set_q_scale(qsc);
        ck_begin(&gpu, &b2.b);
        bk_buf *q2 = ck_act_from(&gpu, q.data(), nq);
        gpu.ops->rope(gpu.ctx, q2, NULL, NULL, cf->n_heads, cf->n_kv_heads, cf->head_dim);
        std::vector<float> rq2 = ck_read(&gpu, q2, nq);
        gpu.ops->buf_free(gpu.ctx, q2);
        int same = 1, shown = 0;
        for (size_t row = 0; row < nt; row++) {
            if (S_s[bt.seq_of((int)row)] == 0) continue;
            for (size_t i = row * row_q; i < (row + 1) * row_q; i++)
                if (rsg[i] != rq2[i]) {
                    if (shown++ < 5)
                        printf("    MISMATCH q_shift vs rope at p': row %zu (p %d, p' %d) [%zu]: %.8g vs %.8g\n", row,
                               bt.positions[row], b2.positions[row], i - row * row_q, rsg[i], rq2[i]);
                    same = 0;
                }
        }
        TEST_CONDF(same, "%s: q_shift rows equal the GPU's rope at p - S + W, bit for bit", what);
        ck_begin(&gpu, &bt.b);
    }

    if (cf->bench) {
        const float ms = bench_ms([&] { gpu.ops->rope(gpu.ctx, qg, kg, sg, cf->n_heads, cf->n_kv_heads, cf->head_dim); });
        const double bytes = (double)(nq + nk) * 8.0 + (str ? (double)nq * 4.0 * 0.5 : 0.0);
        printf("    bench rope%s %zu rows x (%d + %d) heads x %d: %.4f ms, %.1f GB/s\n", str ? " (STRING half the rows)" : "",
               nt, cf->n_heads, cf->n_kv_heads, cf->head_dim, ms, bytes / (ms * 1e6));
    }
    for (bk_buf *b : {qc, kc, sc}) cpu.ops->buf_free(cpu.ctx, b);
    for (bk_buf *b : {qg, kg, sg}) gpu.ops->buf_free(gpu.ctx, b);
    backend_free(&cpu);
    backend_free(&gpu);
}

int main(void)
{
    if (check_skip_without_device("check_rope")) return 0;
    ck_seed(7);
    const struct rope_config configs[] = {
        /* heads, kv, hd, rotary, seqs, rows, max_pos, with_k, bench, q_scale, S, W */
        {4, 2, 16, 16, 3, 40, 2048, 1, 0, 0, 0, 0},        /* the fixtures' shapes */
        {6, 6, 16, 16, 2, 9, 2048, 1, 0, 0, 0, 0},
        {32, 8, 128, 128, 4, 64, 131072, 1, 0, 0, 0, 0},   /* up to position 131071 */
        {32, 32, 128, 64, 3, 17, 131072, 1, 0, 0, 0, 0},   /* partial rotary: dims 64..127 pass through */
        {8, 8, 64, 64, 2, 33, 65536, 0, 0, 0, 0, 0},       /* q only */
        {32, 8, 128, 128, 1, 2048, 131072, 1, 1, 0, 0, 0}, /* a prefill chunk at the end of 128k: bandwidth */
        /* q_scale (log_scale) */
        {4, 2, 16, 16, 3, 40, 2048, 1, 0, 1, 0, 0},
        {32, 32, 128, 64, 3, 17, 131072, 1, 0, 1, 0, 0},   /* partial rotary: pass-through dims scaled too */
        {8, 2, 64, 0, 3, 20, 4096, 1, 0, 1, 0, 0},         /* rotary_dim 0: q scaled, k untouched */
        /* STRING (every other sequence), with and without q_scale */
        {4, 2, 16, 16, 5, 40, 100, 1, 0, 1, 64, 8},        /* positions < 100: many clamped to 0 */
        {6, 6, 16, 16, 4, 9, 2048, 1, 0, 0, 300, 128},
        {32, 8, 128, 128, 4, 64, 131072, 1, 0, 1, 43253, 128},
        {32, 32, 128, 64, 3, 17, 131072, 1, 0, 1, 43253, 512}, /* partial rotary: q_shift pass-through */
        {8, 8, 64, 64, 3, 33, 65536, 0, 0, 1, 1, 0},      /* q only, S 1 W 0 */
        {8, 2, 64, 0, 3, 20, 4096, 1, 0, 1, 1000, 100},    /* rotary_dim 0: q_shift = q * q_scale */
        {32, 8, 128, 128, 2, 2048, 131072, 1, 1, 1, 43253, 128}, /* bandwidth with STRING */
    };
    for (const auto &cf : configs) run_config(&cf);
    return test_report("check_rope");
}
