/* check_decode.cu - the decode path of issue 11: 16-bit activations between ops, the fused
 * add_rmsnorm, cuBLAS GEMMs with 16-bit outputs, the split-KV kernel on 16-bit q/out, and CUDA
 * graphs of whole decode steps (a replayed step against the same step run eagerly).
 *
 * Part A, ops on a backend with 16-bit activations (act_write/read, rmsnorm, gather_rmsnorm,
 * add_rmsnorm, swiglu, add, matmul with 16-bit and fp32 outputs, rope + kv_store + split-KV, the
 * fused rope_kv_store against the unfused ops bit for bit) (the production setting; every other checker
 * runs the CUDA backend with ROPESERVE_CUDA_ACT=f32): each op against the CPU backend given the
 * same inputs already rounded to 16 bits, so what remains is one rounding of the output (half an
 * ulp: 2^-9 relative for bf16, 2^-12 for f16) plus the fp32 arithmetic's own order effects.
 * Tolerances: rtol 2^-7 (bf16) / 2^-10 (f16) for single-rounding ops; GEMMs and attention add
 * an atol for the fp32 summation order (stated at each call). add_rmsnorm must equal add() then
 * rmsnorm() on the GPU bit for bit, and its fp32 residual must equal the CPU's add exactly.
 *
 * Part B, graphs (models/demo-pose, the trained demo checkpoint, 4 layers, GQA 2, head_dim 64):
 * four models over the same token stream: G (CUDA, graphs on), P (CUDA, graphs off, fed the
 * padded batch the model builds for G: same shapes, same splits -> must match G to 1e-3 and is
 * expected bit for bit), E (CUDA, graphs off, unpadded) and C (CPU, fp32). A prefill of three
 * prompts, then decode steps whose batch changes size (bucket 4 -> 2 -> 4: a replay with new
 * metadata) and whose block tables widen past a power of two (a new graph key); every step's
 * logits of G against P (1e-3), E and C (bf16 class: |d| <= 0.05 max|logit| + 0.1).
 *
 * Usage: check_decode [model_dir] (default models/demo-pose). Exit status 0 when all passed. */
#include "batch.h"
#include "check.h"

extern "C" {
#include "../../models/model.h"
}

/* a setup step that cannot go on: count the failure, print the summary, exit */
#define FATAL(...)                                                                              \
    do {                                                                                        \
        TEST_CONDF(0, __VA_ARGS__);                                                             \
        exit(test_report("check_decode"));                                                      \
    } while (0)

static float rtol16(enum bk_dtype dt) { return dt == BK_BF16 ? 1.0f / 128 : 1.0f / 1024; }

static std::vector<float> rounded(const std::vector<float> &x, enum bk_dtype dt)
{
    std::vector<float> r(x.size());
    ck_round_all(r.data(), x.data(), x.size(), dt);
    return r;
}

static bk_buf *act_f32(struct backend *b, size_t n)
{
    char err[ERR_LEN];
    bk_buf *x = b->ops->act_new_f32 ? b->ops->act_new_f32(b->ctx, n, err) : b->ops->act_new(b->ctx, n, err);
    if (!x) {
        fprintf(stderr, "act_new_f32(%zu): %s\n", n, err);
        abort();
    }
    return x;
}

static void check(const char *what, const std::vector<float> &got, const std::vector<float> &ref, float atol, float rtol)
{
    struct ck_result r = check_compare(what, got.data(), ref.data(), ref.size(), atol, rtol);
    TEST_CONDF(r.mismatches == 0 && r.nonfinite_ref == 0, "%s", what);
}

// ------------------------------------------------------------------------------------------------
// Part A: ops with 16-bit activations

static void ops16(enum bk_dtype dt, int n_rows, int dim, int n_out)
{
    printf("config A: %s activations, rows %d, dim %d, matmul out %d\n", ck_dtype_name(dt), n_rows, dim, n_out);
    struct backend cpu = ck_cpu_backend(), gpu = ck_cuda_backend_act(dt, 1);
    const size_t n = (size_t)n_rows * dim;
    const float rt = rtol16(dt);
    char what[160];
    ck_batch bt;
    bt.add_seq(0, n_rows, std::vector<int32_t>(1, 1));
    for (auto &t : bt.tokens) t = ck_int(64);
    bt.finish(16, 0);
    bt.out_rows.clear(); /* every third row and the last: gather_rmsnorm's rows */
    for (int r = 0; r < n_rows; r++)
        if (r % 3 == 1 || r == n_rows - 1) bt.out_rows.push_back(r);
    bt.b.n_out = (int)bt.out_rows.size();
    bt.b.out_rows = bt.out_rows.data();
    ck_begin(&cpu, &bt.b);
    ck_begin(&gpu, &bt.b);

    std::vector<float> x(n), y(n), w(dim);
    ck_fill(x.data(), n, -2.f, 2.f);
    ck_fill(y.data(), n, -1.f, 1.f);
    ck_fill(w.data(), dim, 0.5f, 1.5f);
    const std::vector<float> xr = rounded(x, dt), yr = rounded(y, dt);
    std::vector<uint16_t> wb = ck_bits(w.data(), w.size(), dt);
    bk_buf *wc = ck_weight(&cpu, wb.data(), dt, dim), *wg = ck_weight(&gpu, wb.data(), dt, dim);

    /* act_write/act_read round trip of a 16-bit activation: exactly the rounded values */
    {
        bk_buf *g = ck_act_from(&gpu, x.data(), n);
        snprintf(what, sizeof what, "act_write/act_read %s %zu", ck_dtype_name(dt), n);
        check(what, ck_read(&gpu, g, n), xr, 0.f, 0.f);
        gpu.ops->buf_free(gpu.ctx, g);
    }

    /* rmsnorm: fp32 residual in, 16-bit out; 16-bit in place */
    for (int inplace = 0; inplace < 2; inplace++) {
        const std::vector<float> &src = inplace ? xr : x;
        bk_buf *xc = ck_act_from(&cpu, src.data(), n);
        bk_buf *xg = inplace ? ck_act_from(&gpu, x.data(), n) : act_f32(&gpu, n);
        if (!inplace) gpu.ops->act_write(gpu.ctx, xg, 0, x.data(), n);
        bk_buf *oc = inplace ? xc : ck_act(&cpu, n), *og = inplace ? xg : ck_act(&gpu, n);
        cpu.ops->rmsnorm(cpu.ctx, oc, xc, wc, n_rows, dim, 1e-5f);
        gpu.ops->rmsnorm(gpu.ctx, og, xg, wg, n_rows, dim, 1e-5f);
        snprintf(what, sizeof what, "rmsnorm %s %dx%d%s", ck_dtype_name(dt), n_rows, dim,
                 inplace ? " 16-bit in place" : " fp32 -> 16-bit");
        check(what, ck_read(&gpu, og, n), ck_read(&cpu, oc, n), 1e-6f, rt);
        cpu.ops->buf_free(cpu.ctx, xc);
        gpu.ops->buf_free(gpu.ctx, xg);
        if (!inplace) {
            cpu.ops->buf_free(cpu.ctx, oc);
            gpu.ops->buf_free(gpu.ctx, og);
        }
    }

    /* gather_rmsnorm: the out_rows of the fp32 residual, normed, 16-bit (the final norm) */
    {
        TEST_CONDF(gpu.ops->gather_rmsnorm != NULL, "the CUDA backend has gather_rmsnorm");
        if (gpu.ops->gather_rmsnorm) {
            const int no = bt.b.n_out;
            const size_t m = (size_t)no * dim;
            bk_buf *xc = ck_act_from(&cpu, x.data(), n), *gc = ck_act(&cpu, m);
            bk_buf *xg = act_f32(&gpu, n), *og = ck_act(&gpu, m);
            gpu.ops->act_write(gpu.ctx, xg, 0, x.data(), n);
            cpu.ops->gather_rows(cpu.ctx, gc, xc, dim);
            cpu.ops->rmsnorm(cpu.ctx, gc, gc, wc, no, dim, 1e-5f);
            gpu.ops->gather_rmsnorm(gpu.ctx, og, xg, wg, dim, 1e-5f);
            snprintf(what, sizeof what, "gather_rmsnorm %s %d of %d rows x %d", ck_dtype_name(dt), no, n_rows, dim);
            check(what, ck_read(&gpu, og, m), ck_read(&cpu, gc, m), 1e-6f, rt);
            cpu.ops->buf_free(cpu.ctx, xc);
            cpu.ops->buf_free(cpu.ctx, gc);
            gpu.ops->buf_free(gpu.ctx, xg);
            gpu.ops->buf_free(gpu.ctx, og);
        }
    }

    /* add_rmsnorm: fp32 x += 16-bit y, out 16-bit; against the CPU and against add + rmsnorm on the GPU */
    {
        TEST_CONDF(gpu.ops->add_rmsnorm != NULL, "the CUDA backend has add_rmsnorm");
        if (gpu.ops->add_rmsnorm) {
            bk_buf *xc = ck_act_from(&cpu, x.data(), n), *yc = ck_act_from(&cpu, yr.data(), n), *oc = ck_act(&cpu, n);
            bk_buf *xg = act_f32(&gpu, n), *xg2 = act_f32(&gpu, n);
            gpu.ops->act_write(gpu.ctx, xg, 0, x.data(), n);
            gpu.ops->act_write(gpu.ctx, xg2, 0, x.data(), n);
            bk_buf *yg = ck_act_from(&gpu, y.data(), n), *og = ck_act(&gpu, n), *og2 = ck_act(&gpu, n);
            cpu.ops->add(cpu.ctx, xc, yc, n);
            cpu.ops->rmsnorm(cpu.ctx, oc, xc, wc, n_rows, dim, 1e-5f);
            gpu.ops->add_rmsnorm(gpu.ctx, og, xg, yg, wg, n_rows, dim, 1e-5f);
            gpu.ops->add(gpu.ctx, xg2, yg, n);
            gpu.ops->rmsnorm(gpu.ctx, og2, xg2, wg, n_rows, dim, 1e-5f);
            const std::vector<float> gx = ck_read(&gpu, xg, n), go = ck_read(&gpu, og, n);
            snprintf(what, sizeof what, "add_rmsnorm %s residual (fp32) vs cpu add", ck_dtype_name(dt));
            check(what, gx, ck_read(&cpu, xc, n), 0.f, 0.f);
            snprintf(what, sizeof what, "add_rmsnorm %s out vs cpu add+rmsnorm", ck_dtype_name(dt));
            check(what, go, ck_read(&cpu, oc, n), 1e-6f, rt);
            snprintf(what, sizeof what, "add_rmsnorm %s vs gpu add+rmsnorm (bit for bit)", ck_dtype_name(dt));
            check(what, go, ck_read(&gpu, og2, n), 0.f, 0.f);
            const float ms = bench_ms([&] { gpu.ops->add_rmsnorm(gpu.ctx, og, xg, yg, wg, n_rows, dim, 1e-5f); });
            printf("    bench add_rmsnorm %dx%d: %.4f ms, %.1f GB/s\n", n_rows, dim, ms, n * (8.0 + 2 + 2) / (ms * 1e6));
            void *bufs_c[] = {xc, yc, oc}, *bufs_g[] = {xg, xg2, yg, og, og2};
            for (void *b : bufs_c) cpu.ops->buf_free(cpu.ctx, (bk_buf *)b);
            for (void *b : bufs_g) gpu.ops->buf_free(gpu.ctx, (bk_buf *)b);
        }
    }

    /* swiglu (out aliasing gate, as the model calls it) and add, all 16-bit */
    {
        std::vector<float> g(n);
        ck_fill(g.data(), n, -8.f, 8.f);
        const std::vector<float> gr = rounded(g, dt);
        bk_buf *gc = ck_act_from(&cpu, gr.data(), n), *uc = ck_act_from(&cpu, yr.data(), n);
        bk_buf *gg = ck_act_from(&gpu, g.data(), n), *ug = ck_act_from(&gpu, y.data(), n);
        cpu.ops->swiglu(cpu.ctx, gc, gc, uc, n_rows, dim);
        gpu.ops->swiglu(gpu.ctx, gg, gg, ug, n_rows, dim);
        snprintf(what, sizeof what, "swiglu %s %zu (in place)", ck_dtype_name(dt), n);
        check(what, ck_read(&gpu, gg, n), ck_read(&cpu, gc, n), 1e-6f, rt);
        /* add: the CPU sum of the two 16-bit values, rounded once */
        std::vector<float> a = ck_read(&gpu, gg, n);
        std::vector<float> ref(n);
        for (size_t i = 0; i < n; i++) ref[i] = ck_round(a[i] + yr[i], dt);
        gpu.ops->add(gpu.ctx, gg, ug, n);
        snprintf(what, sizeof what, "add %s %zu", ck_dtype_name(dt), n);
        check(what, ck_read(&gpu, gg, n), ref, 0.f, 0.f);
        cpu.ops->buf_free(cpu.ctx, gc);
        cpu.ops->buf_free(cpu.ctx, uc);
        gpu.ops->buf_free(gpu.ctx, gg);
        gpu.ops->buf_free(gpu.ctx, ug);
    }

    /* matmul: 16-bit x, 16-bit and fp32 out (no cast kernel) */
    {
        std::vector<float> wm((size_t)n_out * dim);
        ck_fill(wm.data(), wm.size(), -1.f, 1.f);
        std::vector<uint16_t> wmb = ck_bits(wm.data(), wm.size(), dt);
        bk_buf *mc = ck_weight(&cpu, wmb.data(), dt, wm.size()), *mg = ck_weight(&gpu, wmb.data(), dt, wm.size());
        bk_buf *xc = ck_act_from(&cpu, xr.data(), n), *xg = ck_act_from(&gpu, x.data(), n);
        const size_t no = (size_t)n_rows * n_out;
        bk_buf *oc = ck_act(&cpu, no), *og16 = ck_act(&gpu, no), *og32 = act_f32(&gpu, no);
        cpu.ops->matmul(cpu.ctx, oc, xc, mc, n_rows, dim, n_out);
        gpu.ops->matmul(gpu.ctx, og16, xg, mg, n_rows, dim, n_out);
        gpu.ops->matmul(gpu.ctx, og32, xg, mg, n_rows, dim, n_out);
        const std::vector<float> ref = ck_read(&cpu, oc, no);
        /* fp32 accumulation in another order: |err| <~ dim * 2^-24 * sum|x w| ~ dim * 2^-24 * 2 dim / 2 */
        const float atol = (float)dim * (float)dim * 6e-8f + 1e-4f;
        snprintf(what, sizeof what, "matmul %s %dx%d.(%dx%d)^T -> 16-bit", ck_dtype_name(dt), n_rows, dim, n_out, dim);
        check(what, ck_read(&gpu, og16, no), ref, atol, rt);
        snprintf(what, sizeof what, "matmul %s %dx%d.(%dx%d)^T -> fp32", ck_dtype_name(dt), n_rows, dim, n_out, dim);
        check(what, ck_read(&gpu, og32, no), ref, atol, 1e-5f);
        const float ms = bench_ms([&] { gpu.ops->matmul(gpu.ctx, og16, xg, mg, n_rows, dim, n_out); });
        printf("    bench matmul 16-bit %dx%dx%d: %.4f ms, %.1f TFLOP/s\n", n_rows, dim, n_out, ms,
               2.0 * n_rows * dim * n_out / (ms * 1e9));
        cpu.ops->buf_free(cpu.ctx, mc);
        gpu.ops->buf_free(gpu.ctx, mg);
        cpu.ops->buf_free(cpu.ctx, xc);
        gpu.ops->buf_free(gpu.ctx, xg);
        cpu.ops->buf_free(cpu.ctx, oc);
        gpu.ops->buf_free(gpu.ctx, og16);
        gpu.ops->buf_free(gpu.ctx, og32);
    }
    cpu.ops->buf_free(cpu.ctx, wc);
    gpu.ops->buf_free(gpu.ctx, wg);
    backend_free(&cpu);
    backend_free(&gpu);
}

/* rope + kv_store + split-KV attention on 16-bit q/k/v/out: several decode rows of different
 * lengths (one long enough for many splits), shuffled block tables */
static void attn16(enum bk_dtype dt, int head_dim, int n_heads, int n_kv_heads, int block_size,
                   const std::vector<int> &lens)
{
    printf("config A-attn: %s, head_dim %d, heads %d/%d, block_size %d, %zu decode rows (longest %d)\n",
           ck_dtype_name(dt), head_dim, n_heads, n_kv_heads, block_size, lens.size(),
           *std::max_element(lens.begin(), lens.end()));
    struct backend cpu = ck_cpu_backend(), gpu = ck_cuda_backend_act(dt, 1);
    char what[200], err[ERR_LEN];
    int total_blocks = 1;
    for (int L : lens) total_blocks += (L + block_size - 1) / block_size;
    std::vector<int32_t> pool;
    for (int i = 1; i < total_blocks; i++) pool.push_back(i);
    for (size_t i = pool.size(); i > 1; i--) std::swap(pool[i - 1], pool[(size_t)ck_int((int)i)]);
    struct bk_kv_params kp;
    memset(&kp, 0, sizeof kp);
    kp.n_layers = 1;
    kp.n_blocks = total_blocks;
    kp.block_size = block_size;
    kp.n_kv_heads = n_kv_heads;
    kp.head_dim = head_dim;
    TEST_CONDF(cpu.ops->kv_init(cpu.ctx, &kp, err) == 0 && gpu.ops->kv_init(gpu.ctx, &kp, err) == 0, "kv_init: %s", err);

    /* fill: every sequence's keys 0..L-1 in one batch (rotated by the rope op, as the model does) */
    ck_batch fill, dec;
    size_t next = 0;
    std::vector<std::vector<int32_t>> tables;
    for (int L : lens) {
        std::vector<int32_t> t;
        for (int b = 0; b < (L + block_size - 1) / block_size; b++) t.push_back(pool[next++]);
        tables.push_back(t);
        fill.add_seq(0, L, t);
        dec.add_seq(L - 1, 1, t);
    }
    fill.finish(block_size, head_dim);
    dec.finish(block_size, head_dim);
    const int nf = fill.b.n_tokens, kd = n_kv_heads * head_dim, qd = n_heads * head_dim;
    std::vector<float> k((size_t)nf * kd), v((size_t)nf * kd), q((size_t)nf * qd);
    ck_fill(k.data(), k.size(), -1.f, 1.f);
    ck_fill(v.data(), v.size(), -1.f, 1.f);
    ck_fill(q.data(), q.size(), -1.f, 1.f);
    const std::vector<float> kr = rounded(k, dt), vr = rounded(v, dt);
    ck_begin(&cpu, &fill.b);
    ck_begin(&gpu, &fill.b);
    bk_buf *kc = ck_act_from(&cpu, kr.data(), k.size()), *vc = ck_act_from(&cpu, vr.data(), v.size());
    bk_buf *kg = ck_act_from(&gpu, k.data(), k.size()), *vg = ck_act_from(&gpu, v.data(), v.size());
    bk_buf *qc = ck_act(&cpu, q.size()), *qg = ck_act(&gpu, q.size());
    /* rope on the GPU's 16-bit k; the CPU reference rotates the GPU's result's inputs in fp32:
     * compare the rotated k first (single rounding), then store the GPU's rotated k on both sides */
    cpu.ops->rope(cpu.ctx, qc, kc, NULL, n_heads, n_kv_heads, head_dim);
    gpu.ops->rope(gpu.ctx, qg, kg, NULL, n_heads, n_kv_heads, head_dim);
    const std::vector<float> kgr = ck_read(&gpu, kg, k.size());
    snprintf(what, sizeof what, "rope k %s (%d rows)", ck_dtype_name(dt), nf);
    check(what, kgr, ck_read(&cpu, kc, k.size()), 1e-6f, rtol16(dt));
    cpu.ops->act_write(cpu.ctx, kc, 0, kgr.data(), kgr.size());
    cpu.ops->kv_store(cpu.ctx, 0, kc, vc);
    gpu.ops->kv_store(gpu.ctx, 0, kg, vg);

    /* decode: one row per sequence at position L-1 */
    const int nd = dec.b.n_tokens;
    std::vector<float> qd_((size_t)nd * qd);
    ck_fill(qd_.data(), qd_.size(), -1.f, 1.f);
    const std::vector<float> qdr = rounded(qd_, dt);
    ck_begin(&cpu, &dec.b);
    ck_begin(&gpu, &dec.b);
    bk_buf *q2c = ck_act_from(&cpu, qdr.data(), qdr.size()), *q2g = ck_act_from(&gpu, qd_.data(), qd_.size());
    bk_buf *oc = ck_act(&cpu, qdr.size()), *og = ck_act(&gpu, qdr.size());
    const float scale = 1.0f / sqrtf((float)head_dim);
    cpu.ops->attention(cpu.ctx, oc, q2c, NULL, 0, n_heads, scale);
    gpu.ops->attention(gpu.ctx, og, q2g, NULL, 0, n_heads, scale);
    snprintf(what, sizeof what, "split-KV attention %s q/out, hd %d, %d/%d heads, bs %d", ck_dtype_name(dt), head_dim,
             n_heads, n_kv_heads, block_size);
    /* outputs are convex combinations of v in [-1, 1]: fp32 softmax/accumulation order differences
     * (P is fp32 in this kernel) are ~1e-6; the output rounding is rtol */
    check(what, ck_read(&gpu, og, qdr.size()), ck_read(&cpu, oc, qdr.size()), 2e-5f, rtol16(dt));
    {
        const float ms = bench_ms([&] { gpu.ops->attention(gpu.ctx, og, q2g, NULL, 0, n_heads, scale); });
        double bytes = 0;
        for (int L : lens) bytes += 2.0 * L * kd * 2;
        printf("    bench split-KV %s: %.4f ms, %.1f GB/s of K/V\n", what, ms, bytes / (ms * 1e6));
    }
    void *bc[] = {kc, vc, qc, q2c, oc}, *bg[] = {kg, vg, qg, q2g, og};
    for (void *b : bc) cpu.ops->buf_free(cpu.ctx, (bk_buf *)b);
    for (void *b : bg) gpu.ops->buf_free(gpu.ctx, (bk_buf *)b);
    backend_free(&cpu);
    backend_free(&gpu);
}

/* rope_kv_store (biases + RoPE + KV write in one kernel) against add_bias + rope + kv_store on the
 * same GPU, layer 0 unfused and layer 1 fused: q and the attention outputs over each layer's
 * cache must agree bit for bit; the fused path against the CPU reference loosely (the GPU rounds
 * the biased/rotated keys to 16 bits, the CPU keeps fp32 keys: scores move by ~2^-8). */
static void rope_kv16(enum bk_dtype dt, int head_dim, int rotary_dim, int n_heads, int n_kv_heads, int bias,
                      enum bk_k_storage ks)
{
    printf("config A-rope_kv: %s, head_dim %d, rotary_dim %d, heads %d/%d, %s, %s keys\n", ck_dtype_name(dt), head_dim,
           rotary_dim, n_heads, n_kv_heads, bias ? "q/k/v biases" : "no biases", ks == BK_K_PRE_ROPE ? "pre-RoPE" : "rotated");
    struct backend cpu = ck_cpu_backend(), gpu = ck_cuda_backend_act(dt, 1);
    char what[200], err[ERR_LEN];
    const int bs = 16;
    struct bk_kv_params kp;
    memset(&kp, 0, sizeof kp);
    kp.n_layers = 2;
    kp.n_blocks = 8;
    kp.block_size = bs;
    kp.n_kv_heads = n_kv_heads;
    kp.head_dim = head_dim;
    kp.k_storage = ks;
    TEST_CONDF(cpu.ops->kv_init(cpu.ctx, &kp, err) == 0 && gpu.ops->kv_init(gpu.ctx, &kp, err) == 0, "kv_init: %s", err);
    TEST_CONDF(gpu.ops->rope_kv_store != NULL, "the CUDA backend has rope_kv_store");
    if (!gpu.ops->rope_kv_store) return;
    /* two prompts, every key written in this batch: 40 tokens at scattered blocks, and 5 tokens */
    ck_batch bt;
    bt.add_seq(0, 40, {5, 2, 7});
    bt.add_seq(0, 5, {3});
    bt.finish(bs, rotary_dim, {10000.0, 500000.0}, {1.f, 4.f}, {1.f, 1.1f});
    std::vector<float> qs(bt.b.n_tokens);
    for (auto &x : qs) x = ck_uniform(0.8f, 1.2f);
    bt.set_q_scale(qs);
    ck_begin(&cpu, &bt.b);
    ck_begin(&gpu, &bt.b);
    const int nt = bt.b.n_tokens, qd = n_heads * head_dim, kd = n_kv_heads * head_dim;
    std::vector<float> q((size_t)nt * qd), k((size_t)nt * kd), v((size_t)nt * kd), b3(qd + 2 * kd);
    ck_fill(q.data(), q.size(), -1.f, 1.f);
    ck_fill(k.data(), k.size(), -1.f, 1.f);
    ck_fill(v.data(), v.size(), -1.f, 1.f);
    ck_fill(b3.data(), b3.size(), -0.5f, 0.5f);
    std::vector<uint16_t> bb = ck_bits(b3.data(), b3.size(), dt);
    bk_buf *bqg = NULL, *bkg = NULL, *bvg = NULL, *bqc = NULL, *bkc = NULL, *bvc = NULL;
    if (bias) {
        bqg = ck_weight(&gpu, bb.data(), dt, qd);
        bkg = ck_weight(&gpu, bb.data() + qd, dt, kd);
        bvg = ck_weight(&gpu, bb.data() + qd + kd, dt, kd);
        bqc = ck_weight(&cpu, bb.data(), dt, qd);
        bkc = ck_weight(&cpu, bb.data() + qd, dt, kd);
        bvc = ck_weight(&cpu, bb.data() + qd + kd, dt, kd);
    }
    const int post = ks == BK_K_POST_ROPE;
    /* GPU layer 0: the unfused ops */
    bk_buf *q0 = ck_act_from(&gpu, q.data(), q.size()), *k0 = ck_act_from(&gpu, k.data(), k.size());
    bk_buf *v0 = ck_act_from(&gpu, v.data(), v.size());
    if (bias) {
        gpu.ops->add_bias(gpu.ctx, q0, bqg, nt, qd);
        gpu.ops->add_bias(gpu.ctx, k0, bkg, nt, kd);
        gpu.ops->add_bias(gpu.ctx, v0, bvg, nt, kd);
    }
    gpu.ops->rope(gpu.ctx, q0, post ? k0 : NULL, NULL, n_heads, n_kv_heads, head_dim);
    gpu.ops->kv_store(gpu.ctx, 0, k0, v0);
    /* GPU layer 1: fused */
    bk_buf *q1 = ck_act_from(&gpu, q.data(), q.size()), *k1 = ck_act_from(&gpu, k.data(), k.size());
    bk_buf *v1 = ck_act_from(&gpu, v.data(), v.size());
    gpu.ops->rope_kv_store(gpu.ctx, 1, q1, k1, v1, NULL, bqg, bkg, bvg, n_heads, n_kv_heads, head_dim);
    snprintf(what, sizeof what, "rope_kv_store q vs add_bias+rope (bit for bit)");
    check(what, ck_read(&gpu, q1, q.size()), ck_read(&gpu, q0, q.size()), 0.f, 0.f);
    snprintf(what, sizeof what, "rope_kv_store leaves k unchanged");
    check(what, ck_read(&gpu, k1, k.size()), rounded(k, dt), 0.f, 0.f);
    const float scale = 1.0f / sqrtf((float)head_dim);
    bk_buf *o0 = ck_act(&gpu, q.size()), *o1 = ck_act(&gpu, q.size());
    gpu.ops->attention(gpu.ctx, o0, q0, NULL, 0, n_heads, scale);
    gpu.ops->attention(gpu.ctx, o1, q1, NULL, 1, n_heads, scale);
    const std::vector<float> r1 = ck_read(&gpu, o1, q.size());
    snprintf(what, sizeof what, "attention over the fused cache vs the unfused one (bit for bit)");
    check(what, r1, ck_read(&gpu, o0, q.size()), 0.f, 0.f);
    /* CPU: the unfused ops in fp32 on the rounded inputs */
    const std::vector<float> qr = rounded(q, dt), kr = rounded(k, dt), vr = rounded(v, dt);
    bk_buf *qc = ck_act_from(&cpu, qr.data(), qr.size()), *kc = ck_act_from(&cpu, kr.data(), kr.size());
    bk_buf *vc = ck_act_from(&cpu, vr.data(), vr.size()), *oc = ck_act(&cpu, q.size());
    if (bias) {
        cpu.ops->add_bias(cpu.ctx, qc, bqc, nt, qd);
        cpu.ops->add_bias(cpu.ctx, kc, bkc, nt, kd);
        cpu.ops->add_bias(cpu.ctx, vc, bvc, nt, kd);
    }
    cpu.ops->rope(cpu.ctx, qc, post ? kc : NULL, NULL, n_heads, n_kv_heads, head_dim);
    cpu.ops->kv_store(cpu.ctx, 1, kc, vc);
    cpu.ops->attention(cpu.ctx, oc, qc, NULL, 1, n_heads, scale);
    snprintf(what, sizeof what, "rope_kv_store + attention %s vs cpu (16-bit keys vs fp32 keys)", ck_dtype_name(dt));
    check(what, r1, ck_read(&cpu, oc, q.size()), dt == BK_BF16 ? 3e-2f : 5e-3f, 2 * rtol16(dt));
    void *bg[] = {q0, k0, v0, q1, k1, v1, o0, o1, bqg, bkg, bvg}, *bc[] = {qc, kc, vc, oc, bqc, bkc, bvc};
    for (void *b : bg) gpu.ops->buf_free(gpu.ctx, (bk_buf *)b);
    for (void *b : bc) cpu.ops->buf_free(cpu.ctx, (bk_buf *)b);
    backend_free(&cpu);
    backend_free(&gpu);
}

// ------------------------------------------------------------------------------------------------
// Part B: a graph-replayed decode step against the eager step

struct gseq {
    std::vector<int32_t> toks; /* every token so far (prompt + decoded) */
    std::vector<int32_t> blocks;
};

struct host_batch {
    std::vector<int32_t> tokens, positions, query_start, seq_lens, block_tables, out_rows, string_shift, string_local;
    std::vector<int64_t> slots;
    std::vector<float> inv_freq, attn_factor, q_scale;
    struct bk_batch b;
};

/* rows: for each listed sequence, its last n_new tokens (a prefill chunk or one decode token).
 * pad_to > 0: pad as models/llama.c does for a graph step (B rows, table width the next power of
 * two, padding rows token 0 / position 0 / slot -1 / seq_len 1 / null block). */
static void make_batch(host_batch &h, std::vector<gseq> &seqs, const std::vector<int> &which, int n_new,
                       const struct rope *rp, int block_size, int pad_to)
{
    const int half = rp->rotary_dim / 2;
    h = host_batch();
    int stride = 1;
    for (int s : which) stride = std::max(stride, (int)((seqs[s].toks.size() + block_size - 1) / block_size));
    if (pad_to > 0) {
        int sb = 1;
        while (sb < stride) sb <<= 1;
        stride = sb;
    }
    const int ns = pad_to > 0 ? pad_to : (int)which.size();
    h.block_tables.assign((size_t)ns * stride, 0);
    h.inv_freq.assign((size_t)ns * std::max(half, 1), 0.f);
    h.attn_factor.assign(ns, 1.f);
    int any_qs = 0;
    for (int i = 0; i < ns; i++) {
        h.query_start.push_back((int32_t)h.tokens.size());
        if (i >= (int)which.size()) { /* padding */
            h.tokens.push_back(0);
            h.positions.push_back(0);
            h.slots.push_back(-1);
            h.q_scale.push_back(1.f);
            h.seq_lens.push_back(1);
            h.out_rows.push_back(i);
            for (int j = 0; j < half; j++) h.inv_freq[(size_t)i * half + j] = h.inv_freq[j];
            h.attn_factor[i] = h.attn_factor[0];
            continue;
        }
        gseq &q = seqs[which[i]];
        const int len = (int)q.toks.size();
        if ((int)q.blocks.size() * block_size < len) FATAL("sequence %d has no block for its tokens", which[i]);
        for (int p = len - n_new; p < len; p++) {
            h.tokens.push_back(q.toks[p]);
            h.positions.push_back(p);
            h.slots.push_back((int64_t)q.blocks[p / block_size] * block_size + p % block_size);
            const float qs = rope_q_scale(rp, p, len, 0);
            any_qs |= qs != 1.0f;
            h.q_scale.push_back(qs);
        }
        h.seq_lens.push_back(len);
        h.out_rows.push_back((int32_t)h.tokens.size() - 1);
        for (int b = 0; b < (len + block_size - 1) / block_size; b++) h.block_tables[(size_t)i * stride + b] = q.blocks[b];
        if (half > 0) rope_freqs(rp, len, h.inv_freq.data() + (size_t)i * half, &h.attn_factor[i]);
    }
    h.query_start.push_back((int32_t)h.tokens.size());
    memset(&h.b, 0, sizeof h.b);
    h.b.n_tokens = (int)h.tokens.size();
    h.b.tokens = h.tokens.data();
    h.b.positions = h.positions.data();
    h.b.slot_mapping = h.slots.data();
    h.b.n_seqs = ns;
    h.b.query_start = h.query_start.data();
    h.b.seq_lens = h.seq_lens.data();
    h.b.block_tables = h.block_tables.data();
    h.b.block_table_stride = stride;
    h.b.n_out = (int)h.out_rows.size();
    h.b.out_rows = h.out_rows.data();
    h.b.rotary_dim = rp->rotary_dim;
    h.b.inv_freq = h.inv_freq.data();
    h.b.attn_factor = h.attn_factor.data();
    h.b.q_scale = any_qs ? h.q_scale.data() : NULL;
}

struct gmodel {
    struct backend be;
    model_t *m;
    const char *name;
};

static gmodel load(const char *dir, const struct model_config *cfg, enum bk_device dev, int graphs, int n_blocks,
                   int block_size, const char *name)
{
    gmodel g;
    char err[ERR_LEN];
    struct backend_params bp = backend_default_params();
    bp.device = dev;
    bp.cuda_graphs = graphs;
    g.name = name;
    if (dev == BK_DEVICE_CUDA) {
        setenv("ROPESERVE_CUDA_ACT", "auto", 1);
        unsetenv("ROPESERVE_CUDA_GRAPHS");
    }
    if (backend_init(&g.be, &bp, err) < 0) FATAL("%s: backend: %s", name, err);
    struct model_params mp = model_default_params();
    mp.max_batch_tokens = 256;
    mp.max_out_rows = 64;
    mp.graph_max_seqs = 16;
    if (model_load(&g.m, dir, cfg, &g.be, &mp, err) < 0) FATAL("%s: model_load: %s", name, err);
    if (model_kv_init(g.m, n_blocks, block_size, 4096, err) < 0) FATAL("%s: kv_init: %s", name, err);
    return g;
}

static void compare_logits(const char *what, const std::vector<float> &got, const std::vector<float> &ref, int exact_tier)
{
    double mx = 0, mref = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        mx = std::max(mx, fabs((double)got[i] - ref[i]));
        if (!(got[i] == got[i])) mx = INFINITY;
        mref = std::max(mref, fabs((double)ref[i]));
    }
    const double lim = exact_tier ? 1e-3 : 0.05 * mref + 0.1;
    printf("    %s: max |d logit| %.3g (limit %.3g, max |logit| %.3g)%s\n", what, mx, lim, mref,
           exact_tier ? (mx == 0 ? ", bit for bit" : ", NOT bit for bit") : "");
    TEST_CONDF(mx <= lim, "%s: max |d logit| %.3g > %.3g", what, mx, lim);
}

static void graphs(const char *dir)
{
    printf("config B: graphs on %s\n", dir);
    char err[ERR_LEN];
    struct model_config cfg;
    if (model_config_load(&cfg, dir, err) < 0) FATAL("%s", err);
    const int bs = 16, n_blocks = 64;
    gmodel G = load(dir, &cfg, BK_DEVICE_CUDA, 1, n_blocks, bs, "G (graphs)");
    gmodel P = load(dir, &cfg, BK_DEVICE_CUDA, 0, n_blocks, bs, "P (eager, padded)");
    gmodel E = load(dir, &cfg, BK_DEVICE_CUDA, 0, n_blocks, bs, "E (eager)");
    gmodel C = load(dir, &cfg, BK_DEVICE_CPU, 0, n_blocks, bs, "C (cpu)");
    TEST_CONDF(G.be.ops->graph_enabled && G.be.ops->graph_enabled(G.be.ctx), "graphs are on in G");
    TEST_CONDF(P.be.ops->graph_enabled && !P.be.ops->graph_enabled(P.be.ctx), "graphs are off in P");
    const struct rope *rp = model_get_rope(G.m);
    const int V = cfg.vocab_size;

    std::vector<gseq> seqs(3);
    const int plen[3] = {13, 30, 47};
    int next_block = 1;
    for (int s = 0; s < 3; s++) {
        for (int i = 0; i < plen[s]; i++) seqs[s].toks.push_back(3 + ck_int(V - 3));
        for (int b = 0; b < 12; b++) seqs[s].blocks.push_back(next_block + ((b * 5 + s) % 12)); /* scattered */
        next_block += 12;
    }
    /* prefill, eager everywhere */
    {
        host_batch hp;
        std::vector<float> lg[4];
        /* make_batch takes one n_new for all its sequences: one prompt per batch */
        for (int s = 0; s < 3; s++) {
            std::vector<int> one = {s};
            make_batch(hp, seqs, one, plen[s], rp, bs, 0);
            gmodel *all4[4] = {&G, &P, &E, &C};
            for (int k = 0; k < 4; k++) {
                lg[k].assign((size_t)V, 0.f);
                if (model_forward(all4[k]->m, &hp.b, lg[k].data(), err) < 0) FATAL("%s: prefill: %s", all4[k]->name, err);
            }
            char what[96];
            snprintf(what, sizeof what, "prefill seq %d: cuda vs cpu", s);
            compare_logits(what, lg[0], lg[3], 0);
        }
    }
    /* decode steps: 3 sequences (bucket 4), then 2 (bucket 2), then 3 again (a replay of the
     * bucket-4 graph with new metadata); the longest grows past 64 tokens (table width 4 -> 8) */
    int replays = 0;
    for (int step = 0; step < 24; step++) {
        std::vector<int> which = step >= 8 && step < 12 ? std::vector<int>{0, 2} : std::vector<int>{0, 1, 2};
        for (int s : which) seqs[s].toks.push_back(3 + ck_int(V - 3));
        const int n = (int)which.size();
        const int B = n <= 1 ? 1 : n <= 2 ? 2 : n <= 4 ? 4 : (n + 7) / 8 * 8;
        host_batch h, hpad;
        make_batch(h, seqs, which, 1, rp, bs, 0);
        make_batch(hpad, seqs, which, 1, rp, bs, B);
        std::vector<float> lg((size_t)n * V), lp((size_t)B * V), le((size_t)n * V), lc((size_t)n * V);
        if (model_forward(G.m, &h.b, lg.data(), err) < 0) FATAL("G step %d: %s", step, err);
        if (model_forward(P.m, &hpad.b, lp.data(), err) < 0) FATAL("P step %d: %s", step, err);
        if (model_forward(E.m, &h.b, le.data(), err) < 0) FATAL("E step %d: %s", step, err);
        if (model_forward(C.m, &h.b, lc.data(), err) < 0) FATAL("C step %d: %s", step, err);
        lp.resize((size_t)n * V); /* the real rows come first */
        char what[128];
        snprintf(what, sizeof what, "decode step %d (%d seqs, bucket %d, table width %d): graph vs eager padded", step, n,
                 B, hpad.b.block_table_stride);
        compare_logits(what, lg, lp, 1);
        snprintf(what, sizeof what, "decode step %d: graph vs eager", step);
        compare_logits(what, lg, le, 0);
        snprintf(what, sizeof what, "decode step %d: graph vs cpu", step);
        compare_logits(what, lg, lc, 0);
        replays++;
    }
    printf("    %d graph steps\n", replays);
    /* timing of one decode step with and without graphs (informational) */
    {
        std::vector<int> which = {0, 1, 2};
        host_batch h;
        make_batch(h, seqs, which, 1, rp, bs, 0); /* re-decodes the last token: idempotent on the KV cache */
        std::vector<float> lg((size_t)3 * V);
        const float mg = bench_ms([&] { model_forward(G.m, &h.b, lg.data(), err); });
        const float me = bench_ms([&] { model_forward(E.m, &h.b, lg.data(), err); });
        printf("    bench decode step (3 seqs, demo model): graph %.4f ms, eager %.4f ms\n", mg, me);
    }
    gmodel *all4[4] = {&G, &P, &E, &C};
    for (gmodel *g : all4) {
        model_free(g->m);
        backend_free(&g->be);
    }
    model_config_free(&cfg);
}

int main(int argc, char **argv)
{
    if (check_skip_without_device("check_decode")) return 0;
#ifdef CHECK_CPU_AS_GPU
    printf("check_decode: the CPU self-test has no 16-bit activations or graphs: nothing to do\n");
    return 0;
#endif
    const char *dir = argc > 1 ? argv[1] : "models/demo-pose";
    ck_seed(11);
    for (enum bk_dtype dt : {BK_BF16, BK_F16}) {
        ops16(dt, 37, 4096, 1000);
        ops16(dt, 1, 256, 4096);
    }
    /* GQA groups 1, 4, 8, 16 (GC 1, 4, 8 and two head chunks); block sizes 1, 16, 64; one row
     * long enough for many splits, one a single key */
    attn16(BK_BF16, 128, 8, 8, 16, {1, 17, 300, 5000});
    attn16(BK_BF16, 64, 16, 4, 1, {2, 255, 257, 1500});
    attn16(BK_F16, 128, 32, 4, 64, {64, 65, 4097});
    attn16(BK_BF16, 128, 32, 2, 16, {3, 20000});
    rope_kv16(BK_BF16, 128, 128, 8, 2, 1, BK_K_POST_ROPE);
    rope_kv16(BK_F16, 64, 32, 4, 4, 0, BK_K_POST_ROPE); /* partial rotary */
    rope_kv16(BK_BF16, 64, 64, 4, 2, 1, BK_K_PRE_ROPE);  /* CLEX-style keys: stored unrotated */
    graphs(dir);
    return test_report("check_decode");
}
