/* check_attention.cu - kv_store + paged attention (+ kv_copy_blocks) of the CUDA backend against
 * the CPU backend, over the launch configurations that matter (STYLE rule 27, after vLLM's
 * paged-attention test), then timing.
 *
 * Every configuration: a pool of blocks handed out in a random order (non-contiguous block
 * tables), NaN written into every cache slot no sequence uses (and into all of layer 0 when the
 * test runs on layer 1), the sequences' earlier keys/values written through kv_store in
 * chunks, then one batch exactly as the engine runs it: kv_store of the new rows, attention.
 * Decode rows (one new token) and prefill rows (several, on top of cached context or not) are
 * mixed in one batch; GQA groups 1, 2, 4, 6, 8, 16; head_dim 16 (the test fixtures), 32, 64,
 * 80, 96, 128, 256; block sizes 16, 32, 64; bf16 and f16; an fp8 (e4m3) cache with per-head
 * scales (below); pre-RoPE keys (CLEX); the split-KV fallback for every row
 * (ROPESERVE_CUDA_ATTN=simt); decode at 131072 tokens, prefill chunks over a 131072-token paged
 * prefix (GQA, MHA, STRING, pre-RoPE keys); STRING (below).
 *
 * Reference and tolerance. Three runs: the GPU with fp32 inputs (it rounds q, k, v to the
 * cache dtype itself), the CPU on inputs rounded to that dtype (the naive bf16 run: same
 * inputs as the GPU's math, fp32 arithmetic) and the CPU on the unrounded inputs. The
 * comparator runs against the naive run. What the GPU adds: the prefill kernel rounds the
 * softmax weights P to the dtype for the P.V mma (relative 2^-9 in bf16, 2^-12 in f16) and
 * normalizes by the sum of the rounded weights, so each output moves by at most
 * 2^-9 * max_j |v_j - o| <= 4e-3 for |v| <= 1 (bf16; 5e-4 in f16), typically 100x less: atol
 * 5e-3, rtol 1e-2 (bf16) and atol 1e-3, rtol 5e-3 (f16). With pre-RoPE keys the prefill kernel
 * also rounds each rotated key to the dtype for the mma (the fp32 reference rotates the stored
 * key and keeps it fp32): scores move by ~2e-3 (one sigma, q amplitude 6), so those
 * configurations get twice the tolerance. A wrong block, slot, head, position, frequency, mask
 * or a NaN read errs by 0.1 .. inf. The errors of the GPU and of the naive run against the fp32 run are
 * printed for information (the GPU's should be within ~2x the naive run's).
 *
 * STRING (backend.h, REFERENCES-rope.md §8): configurations with str_S > 0 give that shift S to
 * every str_every-th sequence (the others plain, in the same batch) and pass a q_shift filled
 * with its own random values, so a key scored with the wrong query set errs by O(1); q_shift
 * rows of sequences without STRING hold NaN (they must never be read). Shapes: decode with
 * many splits on either side of the boundary, a prefill long enough that most key tiles are
 * entirely shifted, chunked prefill, S 1 (every key but the diagonal shifted), S a multiple of
 * the key tile, GQA 1..16, pre-RoPE keys, the split-KV fallback for every row, head_dim 256
 * (the second Q tile's shared memory). Besides the CPU comparison, two properties on the GPU
 * alone, against the same batch without STRING (string_shift NULL): with q_shift = q the output
 * is the plain one up to summation order (same tolerance: the shifted/local split changes the
 * online softmax's chunking), and with S >= every sequence's length and q_shift all NaN it is
 * the plain one (tolerance 1e-6, and it says whether it is bit for bit); the latter on the CPU
 * backend too. On a mismatch, the rows that fail are listed with their sequence, position,
 * whether the sequence is STRING and how many of their keys are shifted.
 *
 * fp8 KV cache (configurations "fp8 KV: ..."): the GPU and the CPU reference both store the
 * fp32 k, v as e4m3(x / scale) with the same per-head scales (one of them small enough that
 * values saturate at 448), so both read the same codes; the tolerance is the bf16/f16 one, since
 * what the GPU adds is the same: the prefill kernel rounds the dequantised K/V tile (code x
 * scale) and P to the compute dtype, the split-KV kernel is fp32. The line "vs fp32 inputs" then
 * shows what the fp8 cache itself costs (that run keeps an fp32 cache). On compute capability
 * 9.0 fp8 runs the sm_80 kernel (the sm_90a one has no fp8 path).
 *
 * Kernel paths (INTERFACES §4). Each configuration runs once per GPU path that applies, every one
 * against the same CPU reference: on compute capability 9.0, configurations with multi-token rows
 * at head_dim 64/128 and rotated keys run with ROPESERVE_CUDA_ATTN=sm80 and =sm90 (the sm_90a
 * wgmma kernel; "auto" is sm90 there), elsewhere once ("auto": sm_80 and split-KV; "simt" for the
 * split-KV-only configurations). The bench lines name the path.
 *
 * Sliding window (backend.h sliding_window, INTERFACES §2; configurations with window > 0): only
 * the sm_90a kernel implements it so far, so they run on compute capability 9.0 only (else SKIP),
 * with prefill rows only, against a float64 host reference over the same rounded inputs (the CPU
 * backend does not window yet). The blocks wholly below each sequence's window are replaced in
 * its block table by the null block 0, and the slots below the window hold NaN: a read of a key
 * below p - W + 1 shows as NaN.
 *
 * Bench mode (--bench): the shapes of issue 10 (32 heads x 128, bf16, block 16, MHA): 2048 new
 * tokens over 0, 32768 and 131072 cached tokens, and whole causal prefills of 8192, 32768 and
 * 131072 tokens, on every tensor-core path of the device; prints one line per (case, path)
 *   BENCH attention case=<name> path=<sm90|sm80|auto> ms=<median> tflops=<causal TFLOP/s>
 * (FLOP = 4 * head_dim * heads * the number of (query, visible key) pairs), then one JSON line
 *   ATTENTION_TFLOPS_JSON {"<path>": {"<case>": tflops, ..}, ..}
 * and, as a full-scale check, compares every path's output with the first one's (no CPU
 * reference at that size: the configurations above carry the correctness).
 *
 * The 128-row sm_80 kernel (attention_prefill_fa2.cu) takes the configurations with multi-token
 * rows at head_dim 64/128 and rotated keys on every device ("auto"/"sm80"), sliding windows
 * included; those that are not big also run with ROPESERVE_CUDA_ATTN=sm80v1, the 64-row kernel
 * (which keeps pre-RoPE keys and the other head dims).
 *
 * Usage: check_attention [--quick] [--only SUBSTRING] | --bench [--reps N] [--only SUBSTRING] [--paths a,b]
 *   --paths  bench only: the ROPESERVE_CUDA_ATTN paths to time (default sm90,sm80 on compute
 *            capability 9.0, else sm80)
 *   --quick  skips the 128k and bench-size configurations
 *   --only   runs the configurations (or bench cases) whose name contains SUBSTRING */
#include <string>
#include <unordered_map>

#include "batch.h"
#include "check.h"

struct attn_seq {
    int ctx_before, n_new;
};

struct attn_config {
    std::string name;
    enum bk_dtype dt;
    int block_size, n_kv_heads, group, head_dim;
    int pre_rope, rotary_dim; /* rotary_dim 0 = head_dim */
    int simt;
    int n_layers;             /* 2: layer 0 all NaN, the test runs on layer 1 */
    float q_amp;
    int big;                  /* skipped by --quick; no fp32 reference (host memory, time) */
    int bench;
    int copy_blocks;          /* also check kv_copy_blocks */
    std::vector<attn_seq> seqs;
    int str_S = 0;            /* STRING shift S (0 = no STRING in the batch), W = S / 4 */
    int str_every = 1;        /* STRING on the sequences s % str_every == 0, the others plain */
    int window = 0;           /* sliding window W of every layer (0 = full causal) */
    int kv_fp8 = 0;           /* the cache stores fp8 e4m3 with per-head scales (dt = the compute dtype) */
};

/* fp8 configurations: scales per (layer, kv head), k then v. Head 0 of k gets 1/512, so values
 * near |1| saturate at 448 (the CPU and GPU conversions must agree there too); the others spread
 * over the e4m3 exponent range. */
static std::vector<float> fp8_scales(const attn_config &cf)
{
    const size_t n = (size_t)cf.n_layers * cf.n_kv_heads;
    std::vector<float> sc(2 * n);
    for (size_t i = 0; i < 2 * n; i++) {
        const int h = (int)(i % cf.n_kv_heads), kv = i >= n;
        sc[i] = (!kv && h == 0) ? 1.0f / 512 : (kv ? 0.75f : 0.03f) * (1.0f + 0.5f * h);
    }
    return sc;
}

static int ck_hopper = 0; /* the device is compute capability 9.0: the sm_90a kernel exists */

/* The GPU paths a configuration runs on (see the top of the file); empty = skip. */
static std::vector<std::string> gpu_paths(const attn_config &cf)
{
    if (cf.simt) return {"simt"};
    int multi = 0;
    for (auto &s : cf.seqs) multi |= s.n_new > 1;
    /* the 128-row sm_80 kernel (attention_prefill_fa2.cu) and the sm_90a one take the same batches
     * (16-bit caches: an fp8 cache runs the 64-row kernel's fp8 path and split-KV, "auto") */
    const int fa2 = multi && !cf.pre_rope && !cf.kv_fp8 && (cf.head_dim == 64 || cf.head_dim == 128);
    const int sm90 = ck_hopper && fa2;
    if (cf.window > 0) {
        std::vector<std::string> v;
        if (fa2) v.push_back("sm80");
        if (sm90) v.push_back("sm90");
        return v;
    }
    std::vector<std::string> v = {sm90 ? "sm80" : "auto"};
    if (sm90) v.push_back("sm90");
    if (fa2 && !cf.big) v.push_back("sm80v1"); /* the 64-row kernel stays tested (pre-RoPE keys use it) */
    return v;
}

/* The stored (rounded) K and V rows of the slots a window reference reads: slot -> row. */
struct kv_mirror {
    int row = 0;
    std::unordered_map<int64_t, size_t> index;
    std::vector<float> k, v;
    void put(int64_t slot, const float *kr, const float *vr)
    {
        auto it = index.find(slot);
        size_t o;
        if (it == index.end()) {
            o = k.size();
            index[slot] = o;
            k.resize(o + row);
            v.resize(o + row);
        } else {
            o = it->second;
        }
        memcpy(&k[o], kr, row * sizeof(float));
        memcpy(&v[o], vr, row * sizeof(float));
    }
};

#define FILL_CHUNK 8192

/* Write rows of k, v into `layer` at `slots` on every backend, in chunks: NaN when nan_fill,
 * else random values, rounded to dt for the backends with round[i] set. */
static void store_rows(struct backend **be, const int *round, int nbe, enum bk_dtype dt, const attn_config &cf,
                       int layer, const std::vector<int64_t> &slots, int nan_fill, kv_mirror *mirror = NULL)
{
    const int row = cf.n_kv_heads * cf.head_dim;
    for (size_t c0 = 0; c0 < slots.size(); c0 += FILL_CHUNK) {
        const int n = (int)std::min((size_t)FILL_CHUNK, slots.size() - c0);
        ck_batch bt;
        bt.add_rows_at_slots(&slots[c0], n, 1);
        bt.finish(cf.block_size, cf.rotary_dim ? cf.rotary_dim : cf.head_dim, {}, {}, {}, 1);
        const size_t m = (size_t)n * row;
        std::vector<float> k(m), v(m), kr(m), vr(m);
        if (nan_fill) {
            std::fill(k.begin(), k.end(), NAN);
            std::fill(v.begin(), v.end(), NAN);
        } else {
            ck_fill(k.data(), m, -1.f, 1.f);
            ck_fill(v.data(), m, -1.f, 1.f);
        }
        ck_round_all(kr.data(), k.data(), m, dt);
        ck_round_all(vr.data(), v.data(), m, dt);
        if (mirror)
            for (int i = 0; i < n; i++) mirror->put(slots[c0 + i], &kr[(size_t)i * row], &vr[(size_t)i * row]);
        for (int i = 0; i < nbe; i++) {
            ck_begin(be[i], &bt.b);
            bk_buf *kb = ck_act_from(be[i], round[i] ? kr.data() : k.data(), m);
            bk_buf *vb = ck_act_from(be[i], round[i] ? vr.data() : v.data(), m);
            be[i]->ops->kv_store(be[i]->ctx, layer, kb, vb);
            be[i]->ops->buf_free(be[i]->ctx, kb);
            be[i]->ops->buf_free(be[i]->ctx, vb);
        }
    }
}

/* On a mismatch: the rows (all heads) that fail, with what decides their path. */
static void report_rows(const ck_batch &bt, const std::vector<int32_t> &S_s, const float *got, const float *ref,
                        int n_heads, int hd, float atol, float rtol)
{
    const size_t row_n = (size_t)n_heads * hd;
    int shown = 0, bad_rows = 0;
    for (int r = 0; r < bt.b.n_tokens; r++) {
        int bad = 0, first_h = -1;
        double mx = 0.0;
        for (size_t i = r * row_n; i < (r + 1) * row_n; i++) {
            if (!isfinite(ref[i])) continue;
            const double err = fabs((double)got[i] - (double)ref[i]);
            if (!(err <= (double)atol + (double)rtol * fabs((double)ref[i]))) {
                if (first_h < 0) first_h = (int)((i - r * row_n) / hd);
                bad++;
                if (err != err)
                    mx = INFINITY;
                else if (err > mx)
                    mx = err;
            }
        }
        if (!bad) continue;
        bad_rows++;
        if (shown++ >= 12) continue;
        const int s = bt.seq_of(r), p = bt.positions[r];
        const int S = S_s.empty() ? 0 : S_s[s];
        const int nq = bt.query_start[s + 1] - bt.query_start[s];
        printf("    BAD ROW %d: seq %d (%s, %d new), position %d, %s, %d of %zu values off (first head %d), max |err| "
               "%.3g\n",
               r, s, nq == 1 ? "decode" : "prefill", nq, p,
               S > 0 ? (p - S + 1 > 0 ? "STRING" : "STRING (no key shifted yet)") : "plain", bad, row_n, first_h, mx);
        if (S > 0 && p - S >= 0) printf("        S %d: keys 0..%d shifted, %d..%d local\n", S, p - S, p - S + 1, p);
    }
    if (bad_rows) printf("    %d rows with mismatches\n", bad_rows);
}

/* see the top of the file; pre-RoPE keys get 2x for the second rounding of rotated keys */
static float tol_atol(const attn_config &cf) { return (cf.dt == BK_F16 ? 1e-3f : 5e-3f) * (cf.pre_rope ? 2.f : 1.f); }
static float tol_rtol(const attn_config &cf) { return (cf.dt == BK_F16 ? 5e-3f : 1e-2f) * (cf.pre_rope ? 2.f : 1.f); }

/* The STRING properties (see the top of the file), against each backend's output for the same
 * batch with string_shift NULL. Leaves every backend on the batch bt as given. */
static void string_properties(const attn_config &cf, ck_batch &bt, struct backend **be, int layer, int n_heads,
                              float scale, bk_buf **qb, bk_buf **ob, int max_len, size_t nq, float atol, float rtol)
{
    const int32_t *ss = bt.b.string_shift, *sl = bt.b.string_local;
    std::vector<float> plain[2], got[2];
    char what[256];

    bt.b.string_shift = bt.b.string_local = NULL;
    for (int i = 0; i < 2; i++) {
        ck_begin(be[i], &bt.b);
        be[i]->ops->attention(be[i]->ctx, ob[i], qb[i], NULL, layer, n_heads, scale);
        plain[i] = ck_read(be[i], ob[i], nq);
    }

    /* q_shift = q: the plain output, up to the online softmax's chunking */
    bt.b.string_shift = ss;
    bt.b.string_local = sl;
    ck_begin(be[0], &bt.b);
    be[0]->ops->attention(be[0]->ctx, ob[0], qb[0], qb[0], layer, n_heads, scale);
    got[0] = ck_read(be[0], ob[0], nq);
    snprintf(what, sizeof what, "%s: gpu STRING with q_shift = q vs gpu plain", cf.name.c_str());
    struct ck_result r = check_compare("string(q_shift=q) vs plain", got[0].data(), plain[0].data(), nq, atol, rtol);
    TEST_CONDF(r.mismatches == 0 && r.nonfinite_ref == 0, "%s", what);

    /* S >= every sequence's length (W 0), q_shift all NaN: exactly the plain output */
    const int ns = bt.b.n_seqs;
    std::vector<int32_t> s_big(ns), w_big(ns, 0);
    for (int s = 0; s < ns; s++) s_big[s] = ss[s] > 0 ? max_len : 0;
    bt.b.string_shift = s_big.data();
    bt.b.string_local = w_big.data();
    std::vector<float> nan_q(nq, NAN);
    for (int i = 0; i < 2; i++) {
        ck_begin(be[i], &bt.b);
        bk_buf *nb = ck_act_from(be[i], nan_q.data(), nq);
        be[i]->ops->attention(be[i]->ctx, ob[i], qb[i], nb, layer, n_heads, scale);
        got[i] = ck_read(be[i], ob[i], nq);
        be[i]->ops->buf_free(be[i]->ctx, nb);
        const char *who = i == 0 ? "gpu" : "cpu";
        snprintf(what, sizeof what, "%s: %s STRING with S = %d >= every length (q_shift NaN) equals %s plain",
                 cf.name.c_str(), who, max_len, who);
        r = check_compare(i == 0 ? "gpu string(S>=len) vs plain" : "cpu string(S>=len) vs plain", got[i].data(),
                          plain[i].data(), nq, 1e-5f, 1e-5f);
        printf("    %s: %s\n", who,
               memcmp(got[i].data(), plain[i].data(), nq * sizeof(float)) == 0 ? "bit for bit" : "NOT bit for bit");
        TEST_CONDF(r.mismatches == 0 && r.nonfinite_ref == 0, "%s", what);
    }

    bt.b.string_shift = ss;
    bt.b.string_local = sl;
    for (int i = 0; i < 2; i++) ck_begin(be[i], &bt.b);
}

/* float64 attention over the mirrored rounded K/V: causal, sliding window cf.window, STRING
 * (row at p scores key j with q_shift when j <= p - S); qr / q2r are the rounded queries */
static std::vector<float> window_reference(const attn_config &cf, const ck_batch &bt,
                                           const std::vector<std::vector<int32_t>> &tables, const kv_mirror &m,
                                           const std::vector<float> &qr, const std::vector<float> &q2r,
                                           const std::vector<int32_t> &S_s, float scale)
{
    const int hd = cf.head_dim, n_heads = cf.n_kv_heads * cf.group, bs = cf.block_size, W = cf.window;
    std::vector<float> out((size_t)bt.b.n_tokens * n_heads * hd, NAN);
    std::vector<double> sc, acc(hd);
    for (int r = 0; r < bt.b.n_tokens; r++) {
        const int s = bt.seq_of(r), p = bt.positions[r];
        const int S = S_s.empty() ? 0 : S_s[s];
        const int lo = W > 0 ? std::max(0, p - W + 1) : 0;
        for (int h = 0; h < n_heads; h++) {
            const int kvh = h / cf.group;
            sc.assign(p - lo + 1, 0.0);
            double mx = -INFINITY;
            for (int j = lo; j <= p; j++) {
                const int64_t slot = (int64_t)tables[s][j / bs] * bs + j % bs;
                const float *k = &m.k[m.index.at(slot) + (size_t)kvh * hd];
                const float *q = &((S > 0 && j <= p - S) ? q2r : qr)[((size_t)r * n_heads + h) * hd];
                double d = 0.0;
                for (int e = 0; e < hd; e++) d += (double)q[e] * (double)k[e];
                sc[j - lo] = d * scale;
                mx = std::max(mx, sc[j - lo]);
            }
            double sum = 0.0;
            std::fill(acc.begin(), acc.end(), 0.0);
            for (int j = lo; j <= p; j++) {
                const double w = exp(sc[j - lo] - mx);
                const int64_t slot = (int64_t)tables[s][j / bs] * bs + j % bs;
                const float *v = &m.v[m.index.at(slot) + (size_t)kvh * hd];
                sum += w;
                for (int e = 0; e < hd; e++) acc[e] += w * (double)v[e];
            }
            for (int e = 0; e < hd; e++) out[((size_t)r * n_heads + h) * hd + e] = (float)(acc[e] / sum);
        }
    }
    return out;
}

static void run_config(const attn_config &cf)
{
    const int hd = cf.head_dim, n_heads = cf.n_kv_heads * cf.group, bs = cf.block_size;
    const int rd = cf.rotary_dim ? cf.rotary_dim : hd;
    const int layer = cf.n_layers - 1;
    const int win = cf.window > 0;
    const int ref32 = !cf.big && !win;
    int n_dec = 0, n_pre = 0, max_len = 0;
    for (auto &s : cf.seqs) {
        (s.n_new == 1 ? n_dec : n_pre)++;
        max_len = std::max(max_len, s.ctx_before + s.n_new);
    }
    const int str = cf.str_S > 0;
    std::vector<int32_t> S_s, W_s; /* per sequence; empty without STRING */
    if (str)
        for (size_t s = 0; s < cf.seqs.size(); s++) {
            const int on = (int)s % cf.str_every == 0;
            S_s.push_back(on ? cf.str_S : 0);
            W_s.push_back(on ? cf.str_S / 4 : 0);
        }
    const std::vector<std::string> paths = gpu_paths(cf);
    printf("config: %s\n    %s%s, block_size %d, kv heads %d x group %d, head_dim %d, %s keys%s, %d decode + %d prefill "
           "sequences, longest %d",
           cf.name.c_str(), ck_dtype_name(cf.dt), cf.kv_fp8 ? " with an fp8 KV cache" : "", bs, cf.n_kv_heads, cf.group, hd,
           cf.pre_rope ? "pre-RoPE" : "rotated", cf.pre_rope && rd != hd ? " (partial rotary)" : "", n_dec, n_pre,
           max_len);
    if (str) printf(", STRING S %d on %s sequences", cf.str_S, cf.str_every == 1 ? "all" : "every other");
    if (win) printf(", sliding window %d", cf.window);
    printf("\n    GPU paths (ROPESERVE_CUDA_ATTN):");
    for (auto &pa : paths) printf(" %s", pa.c_str());
    printf("\n");
    if (paths.empty()) {
        printf("    SKIP: sliding windows need the sm_90a or the 128-row sm_80 kernel (head_dim 64/128, rotated keys)\n");
        return;
    }

    /* be = the GPU backends (one per path), then the CPU on rounded inputs, then on fp32 inputs;
     * window configurations have no CPU backend (their reference is window_reference) */
    const int ng = (int)paths.size();
    std::vector<struct backend> gpus(ng);
    for (int g = 0; g < ng; g++) gpus[g] = ck_cuda_backend_mode(cf.dt, paths[g].c_str());
    struct backend cbf = ck_cpu_backend(), c32 = ck_cpu_backend();
    std::vector<struct backend *> be;
    std::vector<int> round;
    for (int g = 0; g < ng; g++) {
        be.push_back(&gpus[g]);
        round.push_back(ck_selftest); /* the GPU rounds its inputs itself */
    }
    if (!win) {
        be.push_back(&cbf);
        round.push_back(1);
    }
    if (ref32) {
        be.push_back(&c32);
        round.push_back(0);
    }
    const int nbe = (int)be.size(), icpu = ng, i32 = ng + 1;

    /* the pool: block 0 reserved, every sequence's blocks drawn from a random permutation */
    int need = 0;
    for (auto &s : cf.seqs) need += (s.ctx_before + s.n_new + bs - 1) / bs;
    const int copy_need = cf.copy_blocks ? (cf.seqs[0].ctx_before + cf.seqs[0].n_new + bs - 1) / bs : 0;
    const int n_blocks = 1 + need + copy_need + need / 10 + 4;
    std::vector<int32_t> perm(n_blocks - 1);
    for (int i = 0; i < n_blocks - 1; i++) perm[i] = i + 1;
    for (int i = n_blocks - 2; i > 0; i--) std::swap(perm[i], perm[ck_int(i + 1)]);
    std::vector<std::vector<int32_t>> tables;
    size_t next = 0;
    for (auto &s : cf.seqs) {
        const int nb = (s.ctx_before + s.n_new + bs - 1) / bs;
        tables.emplace_back(perm.begin() + next, perm.begin() + next + nb);
        next += nb;
    }
    std::vector<int32_t> spare(perm.begin() + next, perm.end());
    /* sliding window: keys below lo_s (the window of the sequence's first new row) are never
     * visible; their whole blocks become the null block 0 (as if the engine had freed them) */
    std::vector<int> lo_s(cf.seqs.size(), 0);
    if (win)
        for (size_t s = 0; s < cf.seqs.size(); s++) {
            lo_s[s] = std::max(0, cf.seqs[s].ctx_before - cf.window + 1);
            for (int b = 0; (b + 1) * bs <= lo_s[s]; b++) tables[s][b] = 0;
        }

    struct bk_kv_params kvp;
    memset(&kvp, 0, sizeof kvp);
    kvp.n_layers = cf.n_layers;
    kvp.n_blocks = n_blocks;
    kvp.block_size = bs;
    kvp.n_kv_heads = cf.n_kv_heads;
    kvp.head_dim = hd;
    kvp.k_storage = cf.pre_rope ? BK_K_PRE_ROPE : BK_K_POST_ROPE;
    std::vector<int32_t> windows(cf.n_layers, cf.window);
    if (win) kvp.sliding_window = windows.data();
    /* fp8: the GPU and the CPU reference both store e4m3 with the same scales (the CPU's storage is
     * the reference of the GPU's: same codes, dequantised in fp32); the fp32-input run keeps an
     * fp32 cache, so its line shows what fp8 storage costs */
    const std::vector<float> sc8 = cf.kv_fp8 ? fp8_scales(cf) : std::vector<float>();
    if (cf.kv_fp8) {
        kvp.dtype = BK_FP8_E4M3;
        kvp.k_scale = sc8.data();
        kvp.v_scale = sc8.data() + (size_t)cf.n_layers * cf.n_kv_heads;
    }
    char err[ERR_LEN];
    for (int i = 0; i < nbe; i++) {
        struct bk_kv_params kvi = kvp;
        if (ref32 && i == i32) kvi.dtype = BK_F32;
        if (be[i]->ops->kv_init(be[i]->ctx, &kvi, err)) {
            fprintf(stderr, "kv_init: %s\n", err);
            abort();
        }
    }

    /* NaN into every slot no sequence uses (and all of layer 0, and the slots below a window),
     * then the cached context */
    std::vector<char> used((size_t)n_blocks * bs, 0);
    std::vector<int64_t> history;
    for (size_t s = 0; s < cf.seqs.size(); s++)
        for (int p = lo_s[s]; p < cf.seqs[s].ctx_before + cf.seqs[s].n_new; p++) {
            const int64_t slot = (int64_t)tables[s][p / bs] * bs + p % bs;
            used[slot] = 1;
            if (p < cf.seqs[s].ctx_before) history.push_back(slot);
        }
    std::vector<int64_t> unused, all;
    for (size_t i = 0; i < used.size(); i++) {
        if (!used[i]) unused.push_back((int64_t)i);
        if (cf.n_layers > 1) all.push_back((int64_t)i);
    }
    kv_mirror mirror;
    mirror.row = cf.n_kv_heads * hd;
    const enum bk_dtype kvdt = cf.kv_fp8 ? BK_F32 : cf.dt; /* fp8: k, v go in unrounded (both quantise them) */
    store_rows(be.data(), round.data(), nbe, kvdt, cf, layer, unused, 1);
    if (cf.n_layers > 1) store_rows(be.data(), round.data(), nbe, kvdt, cf, 0, all, 1);
    store_rows(be.data(), round.data(), nbe, kvdt, cf, layer, history, 0, win ? &mirror : NULL);

    /* the step: kv_store of the new rows, then attention */
    ck_batch bt;
    std::vector<double> bases;
    std::vector<float> scales, afs;
    for (size_t s = 0; s < cf.seqs.size(); s++) {
        bt.add_seq(cf.seqs[s].ctx_before, cf.seqs[s].n_new, tables[s]);
        bases.push_back(s % 2 ? 500000.0 : 10000.0);
        scales.push_back(s % 3 == 2 ? 8.f : 1.f);
        afs.push_back(s % 2 ? 1.2079442f : 1.f);
    }
    bt.finish(bs, rd, bases, scales, afs);
    if (str) bt.set_string(S_s, W_s);
    const size_t nt = (size_t)bt.b.n_tokens, nq = nt * n_heads * hd, nkv = nt * cf.n_kv_heads * hd;
    std::vector<float> q(nq), k(nkv), v(nkv), qr(nq), kr(nkv), vr(nkv);
    ck_fill(q.data(), nq, -cf.q_amp, cf.q_amp);
    ck_fill(k.data(), nkv, -1.f, 1.f);
    ck_fill(v.data(), nkv, -1.f, 1.f);
    ck_round_all(qr.data(), q.data(), nq, cf.dt);
    ck_round_all(kr.data(), k.data(), nkv, kvdt);
    ck_round_all(vr.data(), v.data(), nkv, kvdt);
    /* fp8: the split-KV kernel keeps q in fp32 (it rounds q to the cache dtype only for bf16/f16
     * caches), the tensor-core kernel rounds it to dt: the reference's q follows the row's path
     * (sequences of several new tokens go to the tensor-core kernel unless simt, or head_dim has
     * no fp8 instantiation: backend_cuda.cu) */
    const int fp8_tc = cf.kv_fp8 && !cf.simt && (hd == 64 || hd == 128);
    if (cf.kv_fp8)
        for (size_t row = 0; row < nt; row++)
            if (!(fp8_tc && cf.seqs[bt.seq_of((int)row)].n_new > 1))
                memcpy(&qr[row * n_heads * hd], &q[row * n_heads * hd], (size_t)n_heads * hd * sizeof(float));
    if (win)
        for (size_t r = 0; r < nt; r++)
            mirror.put(bt.slot_mapping[r], &kr[r * mirror.row], &vr[r * mirror.row]);
    /* STRING's shifted queries: their own random values; NaN in the rows of plain sequences */
    std::vector<float> q2, q2r;
    if (str) {
        q2.resize(nq);
        q2r.resize(nq);
        ck_fill(q2.data(), nq, -cf.q_amp, cf.q_amp);
        for (size_t row = 0; row < nt; row++)
            if (S_s[bt.seq_of((int)row)] == 0)
                std::fill(q2.begin() + row * n_heads * hd, q2.begin() + (row + 1) * n_heads * hd, NAN);
        ck_round_all(q2r.data(), q2.data(), nq, cf.dt);
        if (cf.kv_fp8) /* as q above */
            for (size_t row = 0; row < nt; row++)
                if (!(fp8_tc && cf.seqs[bt.seq_of((int)row)].n_new > 1))
                    memcpy(&q2r[row * n_heads * hd], &q2[row * n_heads * hd], (size_t)n_heads * hd * sizeof(float));
    }
    const float scale = 1.0f / sqrtf((float)hd);
    std::vector<bk_buf *> qb(nbe), ob(nbe), q2b(nbe, NULL);
    std::vector<std::vector<float>> out(nbe);
    for (int i = 0; i < nbe; i++) {
        ck_begin(be[i], &bt.b);
        bk_buf *kb = ck_act_from(be[i], round[i] ? kr.data() : k.data(), nkv);
        bk_buf *vb = ck_act_from(be[i], round[i] ? vr.data() : v.data(), nkv);
        be[i]->ops->kv_store(be[i]->ctx, layer, kb, vb);
        be[i]->ops->buf_free(be[i]->ctx, kb);
        be[i]->ops->buf_free(be[i]->ctx, vb);
        qb[i] = ck_act_from(be[i], round[i] ? qr.data() : q.data(), nq);
        if (str) q2b[i] = ck_act_from(be[i], round[i] ? q2r.data() : q2.data(), nq);
        ob[i] = ck_act(be[i], nq);
        be[i]->ops->attention(be[i]->ctx, ob[i], qb[i], q2b[i], layer, n_heads, scale);
        out[i] = ck_read(be[i], ob[i], nq);
    }
    const std::vector<float> ref = win ? window_reference(cf, bt, tables, mirror, qr, q2r, S_s, scale) : out[icpu];

    const float atol = tol_atol(cf), rtol = tol_rtol(cf);
    for (int g = 0; g < ng; g++) {
        const char *pa = paths[g].c_str();
        struct ck_result r = check_compare("attention", out[g].data(), ref.data(), nq, atol, rtol);
        TEST_CONDF(r.mismatches == 0, "%s [%s]: attention within atol %g rtol %g", cf.name.c_str(), pa, atol, rtol);
        TEST_CONDF(r.nonfinite_ref == 0, "%s [%s]: the reference is finite (it read no NaN slot)", cf.name.c_str(), pa);
        if (r.mismatches) report_rows(bt, S_s, out[g].data(), ref.data(), n_heads, hd, atol, rtol);
        if (max_len == 1 && !cf.kv_fp8) /* every sequence has one key: the output is that key's value, exactly */
            TEST_CONDF(r.max_abs == 0.0, "%s [%s]: single-key outputs equal the stored values exactly", cf.name.c_str(), pa);
        if (win && cf.window == 1) /* each row sees its own key only */
            TEST_CONDF(r.max_abs == 0.0, "%s [%s]: window 1 outputs equal the row's own value exactly", cf.name.c_str(), pa);
    }
    if (str) {
        /* how the STRING rows split: keys shifted / total, over the batch */
        long long n_sh = 0, n_all = 0;
        for (size_t row = 0; row < nt; row++) {
            const int S = S_s[bt.seq_of((int)row)], p = bt.positions[row];
            n_all += p + 1;
            if (S > 0) n_sh += std::max(0, p - S + 1);
        }
        printf("    STRING: %lld of %lld (row, key) pairs scored with q_shift\n", n_sh, n_all);
        if (!win)
            for (int g = 0; g < ng; g++) {
                printf("    STRING properties, path %s:\n", paths[g].c_str());
                struct backend *pair[2] = {be[g], be[icpu]};
                bk_buf *pq[2] = {qb[g], qb[icpu]}, *po[2] = {ob[g], ob[icpu]};
                string_properties(cf, bt, pair, layer, n_heads, scale, pq, po, max_len, nq, atol, rtol);
            }
    }
    if (ref32) {
        const double en = ck_max_err(out[icpu].data(), out[i32].data(), nq);
        for (int g = 0; g < ng; g++) {
            const double eg = ck_max_err(out[g].data(), out[i32].data(), nq);
            printf("    vs fp32 inputs [%s]: gpu max |err| %.3g, naive %s run %.3g (ratio %.2f)\n", paths[g].c_str(), eg,
                   ck_dtype_name(cf.dt), en, en > 0 ? eg / en : 0.0);
        }
    }

    if (cf.copy_blocks && !win) {
        /* copy the first sequence's blocks into spare ones, point its table there, attend again */
        std::vector<int32_t> src = tables[0], dst(spare.begin(), spare.begin() + src.size());
        for (int i = 0; i < nbe; i++) be[i]->ops->kv_copy_blocks(be[i]->ctx, src.data(), dst.data(), (int)src.size());
        /* clobber the originals with NaN so a read of the old blocks shows */
        std::vector<int64_t> old_slots;
        for (int32_t blk : src)
            for (int o = 0; o < bs; o++) old_slots.push_back((int64_t)blk * bs + o);
        store_rows(be.data(), round.data(), nbe, kvdt, cf, layer, old_slots, 1);
        ck_batch b2;
        for (size_t s = 0; s < cf.seqs.size(); s++) b2.add_seq(cf.seqs[s].ctx_before, cf.seqs[s].n_new, s == 0 ? dst : tables[s]);
        b2.finish(bs, rd, bases, scales, afs);
        if (str) b2.set_string(S_s, W_s);
        std::vector<std::vector<float>> out2(ng + 1);
        for (int i = 0; i <= ng; i++) {
            ck_begin(be[i], &b2.b);
            be[i]->ops->attention(be[i]->ctx, ob[i], qb[i], q2b[i], layer, n_heads, scale);
            out2[i] = ck_read(be[i], ob[i], nq);
        }
        for (int g = 0; g < ng; g++) {
            struct ck_result r = check_compare("attention after kv_copy_blocks", out2[g].data(), out2[icpu].data(), nq, atol, rtol);
            TEST_CONDF(r.mismatches == 0 && r.nonfinite_ref == 0, "%s [%s]: attention after kv_copy_blocks", cf.name.c_str(),
                       paths[g].c_str());
            TEST_CONDF(memcmp(out2[g].data(), out[g].data(), nq * sizeof(float)) == 0,
                       "%s [%s]: GPU output unchanged (bit for bit) after kv_copy_blocks", cf.name.c_str(), paths[g].c_str());
            ck_begin(be[g], &bt.b); /* back to the original batch for the bench */
        }
    }

    if (cf.bench) {
        double kv_bytes = 0.0, flop = 0.0;
        for (auto &s : cf.seqs) {
            const double len = s.ctx_before + s.n_new;
            kv_bytes += len * cf.n_kv_heads * hd * 2.0 * (cf.kv_fp8 ? 1.0 : 2.0);
            for (int i = 0; i < s.n_new; i++) flop += 4.0 * n_heads * hd * (s.ctx_before + i + 1);
        }
        for (int g = 0; g < ng; g++) {
            struct backend *gpu = be[g];
            const char *pa = paths[g].c_str();
            const float ms = bench_ms([&] { gpu->ops->attention(gpu->ctx, ob[g], qb[g], q2b[g], layer, n_heads, scale); });
            printf("    bench %s [%s]: %.4f ms, KV %.1f GB/s (each sequence's K and V read once), %.1f TFLOP/s (causal)\n",
                   cf.name.c_str(), pa, ms, kv_bytes / (ms * 1e6), flop / (ms * 1e9));
            if (str) { /* the same batch without STRING, for the cost of the second query set */
                bt.b.string_shift = bt.b.string_local = NULL;
                ck_begin(gpu, &bt.b);
                const float ms0 = bench_ms([&] { gpu->ops->attention(gpu->ctx, ob[g], qb[g], NULL, layer, n_heads, scale); });
                printf("    bench %s [%s] without STRING: %.4f ms (STRING costs %+.1f%%)\n", cf.name.c_str(), pa, ms0,
                       100.0 * (ms / ms0 - 1.0));
                bt.set_string(S_s, W_s);
                ck_begin(gpu, &bt.b);
            }
        }
    }
    for (int i = 0; i < nbe; i++) {
        be[i]->ops->buf_free(be[i]->ctx, qb[i]);
        be[i]->ops->buf_free(be[i]->ctx, q2b[i]);
        be[i]->ops->buf_free(be[i]->ctx, ob[i]);
    }
    for (int g = 0; g < ng; g++) backend_free(&gpus[g]);
    backend_free(&cbf);
    backend_free(&c32);
}

/* n sequences of one new token at random context lengths in [1, max_ctx] */
static std::vector<attn_seq> decodes(int n, int max_ctx)
{
    std::vector<attn_seq> v;
    for (int i = 0; i < n; i++) v.push_back({ck_int(max_ctx), 1});
    return v;
}

static std::vector<attn_seq> cat(std::vector<attn_seq> a, const std::vector<attn_seq> &b)
{
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

// ------------------------------------------------------------------------------------------------
// bench mode (see the top of the file)

struct bench_case {
    const char *name;
    int ctx_before, n_new;
};

static int bench_main(const char *only, int reps_arg, const char *paths_arg)
{
    const bench_case cases[] = {
        {"prefill2048_ctx0", 0, 2048},        {"prefill2048_ctx32k", 32768, 2048},
        {"prefill2048_ctx128k", 131072, 2048}, {"causal8k", 0, 8192},
        {"causal32k", 0, 32768},              {"causal128k", 0, 131072},
    };
    const int n_kv_heads = 32, group = 1, hd = 128, bs = 16, row = n_kv_heads * hd, n_heads = n_kv_heads * group;
    const enum bk_dtype dt = BK_BF16;
    std::vector<std::string> paths = ck_hopper ? std::vector<std::string>{"sm90", "sm80"}
                                               : std::vector<std::string>{"sm80"};
    if (paths_arg) { /* --paths a,b,.. */
        paths.clear();
        for (const char *c = paths_arg; *c;) {
            const char *e = strchr(c, ',');
            paths.push_back(e ? std::string(c, e - c) : std::string(c));
            if (!e) break;
            c = e + 1;
        }
    }
    std::string json = "{";
    std::vector<std::string> per_path(paths.size());
    ck_seed(7);
    /* one chunk of random rows, reused for every chunk of K, V and q (timing does not care) */
    std::vector<float> kc((size_t)FILL_CHUNK * row), vc((size_t)FILL_CHUNK * row), qc((size_t)FILL_CHUNK * row);
    ck_fill(kc.data(), kc.size(), -1.f, 1.f);
    ck_fill(vc.data(), vc.size(), -1.f, 1.f);
    ck_fill(qc.data(), qc.size(), -6.f, 6.f);
    for (const auto &bc : cases) {
        if (only && !strstr(bc.name, only)) continue;
        const int len = bc.ctx_before + bc.n_new, nb = (len + bs - 1) / bs, n_blocks = nb + 2;
        printf("bench case %s: %d new tokens over %d cached, %d heads x %d (MHA), bf16, block_size %d\n", bc.name,
               bc.n_new, bc.ctx_before, n_heads, hd, bs);
        std::vector<int32_t> perm(n_blocks - 1);
        for (int i = 0; i < n_blocks - 1; i++) perm[i] = i + 1;
        for (int i = n_blocks - 2; i > 0; i--) std::swap(perm[i], perm[ck_int(i + 1)]);
        const std::vector<int32_t> table(perm.begin(), perm.begin() + nb);
        struct bk_kv_params kvp;
        memset(&kvp, 0, sizeof kvp);
        kvp.n_layers = 1;
        kvp.n_blocks = n_blocks;
        kvp.block_size = bs;
        kvp.n_kv_heads = n_kv_heads;
        kvp.head_dim = hd;
        const size_t nq = (size_t)bc.n_new * n_heads * hd;
        std::vector<struct backend> be(paths.size());
        std::vector<bk_buf *> qb(paths.size()), ob(paths.size());
        char err[ERR_LEN];
        for (size_t g = 0; g < paths.size(); g++) {
            be[g] = ck_cuda_backend_mode(dt, paths[g].c_str());
            if (be[g].ops->kv_init(be[g].ctx, &kvp, err)) {
                fprintf(stderr, "kv_init: %s\n", err);
                abort();
            }
            /* K and V of every position, through kv_store */
            for (int p0 = 0; p0 < len; p0 += FILL_CHUNK) {
                const int n = std::min(FILL_CHUNK, len - p0);
                std::vector<int64_t> slots(n);
                for (int i = 0; i < n; i++) slots[i] = (int64_t)table[(p0 + i) / bs] * bs + (p0 + i) % bs;
                ck_batch fb;
                fb.add_rows_at_slots(slots.data(), n, 1);
                fb.finish(bs, hd, {}, {}, {}, 1);
                ck_begin(&be[g], &fb.b);
                bk_buf *kb = ck_act_from(&be[g], kc.data(), (size_t)n * row);
                bk_buf *vb = ck_act_from(&be[g], vc.data(), (size_t)n * row);
                be[g].ops->kv_store(be[g].ctx, 0, kb, vb);
                be[g].ops->buf_free(be[g].ctx, kb);
                be[g].ops->buf_free(be[g].ctx, vb);
            }
            qb[g] = ck_act(&be[g], nq);
            for (size_t o = 0; o < nq; o += qc.size())
                be[g].ops->act_write(be[g].ctx, qb[g], o, qc.data(), std::min(qc.size(), nq - o));
            ob[g] = ck_act(&be[g], nq);
        }
        ck_batch bt;
        bt.add_seq(bc.ctx_before, bc.n_new, table);
        bt.finish(bs, hd);
        double flop = 0.0;
        for (int i = 0; i < bc.n_new; i++) flop += 4.0 * n_heads * hd * (bc.ctx_before + i + 1);
        const int reps = reps_arg > 0 ? reps_arg : flop > 5e13 ? 3 : 10;
        const float scale = 1.0f / sqrtf((float)hd);
        /* the rows compared across paths: the first and the last 4096 tokens */
        const int cmp_rows = std::min(bc.n_new, 4096);
        std::vector<std::vector<float>> first(paths.size()), last(paths.size());
        for (size_t g = 0; g < paths.size(); g++) {
            struct backend *gpu = &be[g];
            ck_begin(gpu, &bt.b);
            gpu->ops->attention(gpu->ctx, ob[g], qb[g], NULL, 0, n_heads, scale);
            const size_t rn = (size_t)cmp_rows * n_heads * hd;
            first[g].resize(rn);
            last[g].resize(rn);
            gpu->ops->act_read(gpu->ctx, first[g].data(), ob[g], 0, rn);
            gpu->ops->act_read(gpu->ctx, last[g].data(), ob[g], nq - rn, rn);
            const float ms = bench_ms([&] { gpu->ops->attention(gpu->ctx, ob[g], qb[g], NULL, 0, n_heads, scale); }, reps);
            const double tf = flop / (ms * 1e9);
            printf("BENCH attention case=%s path=%s ms=%.4f tflops=%.1f\n", bc.name, paths[g].c_str(), ms, tf);
            char item[128];
            snprintf(item, sizeof item, "%s\"%s\": %.1f", per_path[g].empty() ? "" : ", ", bc.name, tf);
            per_path[g] += item;
            if (g > 0) {
                char what[160];
                snprintf(what, sizeof what, "%s first rows [%s vs %s]", bc.name, paths[g].c_str(), paths[0].c_str());
                /* two bf16 kernels, each within the checkers' tolerance of the reference */
                struct ck_result r = check_compare(what, first[g].data(), first[0].data(), rn, 1e-2f, 2e-2f);
                TEST_CONDF(r.mismatches == 0 && r.nonfinite_ref == 0, "%s", what);
                snprintf(what, sizeof what, "%s last rows [%s vs %s]", bc.name, paths[g].c_str(), paths[0].c_str());
                r = check_compare(what, last[g].data(), last[0].data(), rn, 1e-2f, 2e-2f);
                TEST_CONDF(r.mismatches == 0 && r.nonfinite_ref == 0, "%s", what);
            }
        }
        for (size_t g = 0; g < paths.size(); g++) {
            be[g].ops->buf_free(be[g].ctx, qb[g]);
            be[g].ops->buf_free(be[g].ctx, ob[g]);
            backend_free(&be[g]);
        }
    }
    for (size_t g = 0; g < paths.size(); g++)
        json += std::string(g ? ", " : "") + "\"" + paths[g] + "\": {" + per_path[g] + "}";
    json += "}";
    printf("ATTENTION_TFLOPS_JSON %s\n", json.c_str());
    return test_report("check_attention --bench");
}

int main(int argc, char **argv)
{
    if (check_skip_without_device("check_attention")) return 0;
    int quick = 0, bench = 0, reps = 0;
    const char *only = NULL, *paths_arg = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--paths") == 0 && i + 1 < argc) {
            paths_arg = argv[++i];
        } else if (strcmp(argv[i], "--quick") == 0) {
            quick = 1;
        } else if (strcmp(argv[i], "--bench") == 0) {
            bench = 1;
        } else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
            only = argv[++i];
        } else {
            fprintf(stderr, "usage: check_attention [--quick] [--only SUBSTRING] | --bench [--reps N] [--only SUBSTRING] [--paths a,b]\n");
            return 2;
        }
    }
#ifndef CHECK_CPU_AS_GPU
    {
        cudaDeviceProp prop;
        CK_CUDA(cudaGetDeviceProperties(&prop, 0));
        ck_hopper = prop.major == 9 && prop.minor == 0;
        printf("device: %s, compute capability %d.%d%s\n", prop.name, prop.major, prop.minor,
               ck_hopper ? " (the sm_90a kernel is tested beside the sm_80 one)" : "");
    }
#endif
    if (bench) return bench_main(only, reps, paths_arg);
    ck_seed(2024);
    const enum bk_dtype B = BK_BF16, F = BK_F16;
    const std::vector<attn_seq> mix = {{0, 37}, {100, 1}, {250, 1}, {0, 1}, {31, 64}, {600, 7}, {1000, 1}, {15, 2}};
    std::vector<attn_config> configs = {
        /* name, dtype, bs, kv heads, group, hd, pre-rope, rotary, simt, layers, q amp, big, bench, copy, seqs */
        {"kv_store: one key per sequence", B, 16, 2, 2, 64, 0, 0, 0, 2, 6.f, 0, 0, 0, {{0, 1}, {0, 1}, {0, 1}, {0, 1}, {0, 1}}},
        {"fixtures shape: hd16 gqa2, mixed", B, 16, 2, 2, 16, 0, 0, 0, 2, 6.f, 0, 0, 0, mix},
        {"fixtures shape: hd16 mha6 f16", F, 16, 6, 1, 16, 0, 0, 0, 1, 6.f, 0, 0, 0, {{0, 255}, {1000, 1}, {255, 2}, {1999, 1}}},
        {"decode gqa1 hd128 bs16", B, 16, 4, 1, 128, 0, 0, 0, 1, 6.f, 0, 0, 0, decodes(8, 3000)},
        {"decode gqa4 hd128 bs32", B, 32, 2, 4, 128, 0, 0, 0, 2, 6.f, 0, 0, 0, decodes(8, 3000)},
        {"decode gqa8 hd64 bs64", B, 64, 2, 8, 64, 0, 0, 0, 1, 6.f, 0, 0, 0, decodes(8, 3000)},
        {"decode gqa6 hd64 (padded head chunk)", B, 16, 2, 6, 64, 0, 0, 0, 1, 6.f, 0, 0, 0, decodes(5, 2000)},
        {"decode+prefill gqa16 hd64 (two head chunks)", B, 16, 1, 16, 64, 0, 0, 0, 1, 6.f, 0, 0, 0, cat(decodes(3, 2000), {{0, 20}, {77, 9}})},
        {"prefill gqa4 hd128 bs16", B, 16, 2, 4, 128, 0, 0, 0, 1, 6.f, 0, 0, 0, {{0, 37}, {0, 64}, {0, 130}}},
        {"chunked prefill gqa8 hd128 bs32", B, 32, 2, 8, 128, 0, 0, 0, 2, 6.f, 0, 0, 0, {{100, 200}, {1000, 65}, {4095, 2}}},
        {"mixed gqa4 hd64 bs64 f16", F, 64, 2, 4, 64, 0, 0, 0, 1, 6.f, 0, 0, 0, mix},
        {"mixed gqa1 hd32", B, 16, 3, 1, 32, 0, 0, 0, 1, 6.f, 0, 0, 0, mix},
        {"mixed gqa1 hd80", B, 32, 2, 1, 80, 0, 0, 0, 1, 6.f, 0, 0, 0, mix},
        {"mixed gqa2 hd96 f16", F, 16, 2, 2, 96, 0, 0, 0, 1, 6.f, 0, 0, 0, mix},
        {"mixed gqa1 hd256", B, 16, 2, 1, 256, 0, 0, 0, 1, 6.f, 0, 0, 0, mix},
        {"mixed gqa4 hd128, small scores", B, 16, 2, 4, 128, 0, 0, 0, 1, 1.f, 0, 0, 0, mix},
        {"pre-RoPE keys gqa4 hd128, mixed", B, 16, 2, 4, 128, 1, 0, 0, 2, 6.f, 0, 0, 0, mix},
        {"pre-RoPE keys partial rotary 64 of hd128 f16", F, 32, 2, 2, 128, 1, 64, 0, 1, 6.f, 0, 0, 0, mix},
        {"pre-RoPE keys hd16 gqa2", B, 16, 2, 2, 16, 1, 0, 0, 1, 6.f, 0, 0, 0, mix},
        {"split-KV for every row (simt) gqa4 hd128", B, 16, 2, 4, 128, 0, 0, 1, 2, 6.f, 0, 0, 0, mix},
        {"split-KV for every row (simt) hd16 pre-RoPE", B, 16, 2, 2, 16, 1, 0, 1, 1, 6.f, 0, 0, 0, mix},
        {"kv_copy_blocks gqa4 hd64", B, 16, 2, 4, 64, 0, 0, 0, 1, 6.f, 0, 0, 1, {{300, 1}, {40, 30}, {17, 1}}},
        {"kv_copy_blocks prefill first hd128", B, 32, 2, 2, 128, 0, 0, 0, 1, 6.f, 0, 0, 1, {{70, 50}, {500, 1}}},
        /* STRING (str_S, str_every at the end) */
        {"STRING decode gqa4 hd128 bs16, S 700", B, 16, 2, 4, 128, 0, 0, 0, 2, 6.f, 0, 0, 0, decodes(8, 3000), 700, 1},
        {"STRING decode gqa1 hd64 f16, S 200", F, 32, 3, 1, 64, 0, 0, 0, 1, 6.f, 0, 0, 0, decodes(6, 1500), 200, 1},
        {"STRING prefill 1024 gqa4 hd128, S 300 (most key tiles shifted)", B, 16, 2, 4, 128, 0, 0, 0, 1, 6.f, 0, 0, 0, {{0, 1024}}, 300, 1},
        {"STRING chunked prefill gqa8 hd128 bs32, S 512", B, 32, 2, 8, 128, 0, 0, 0, 2, 6.f, 0, 0, 0, {{100, 200}, {1000, 300}, {4095, 2}}, 512, 1},
        {"STRING mixed gqa2 hd64, S 64 (a key tile)", B, 16, 2, 2, 64, 0, 0, 0, 1, 6.f, 0, 0, 0, mix, 64, 1},
        {"STRING and plain sequences in one batch, gqa4 hd128, S 40", B, 16, 2, 4, 128, 0, 0, 0, 1, 6.f, 0, 0, 0, mix, 40, 2},
        {"STRING fixtures shape hd16 gqa2, S 1 (all but the diagonal shifted)", B, 16, 2, 2, 16, 0, 0, 0, 2, 6.f, 0, 0, 0, mix, 1, 1},
        {"STRING pre-RoPE keys gqa4 hd128, S 100", B, 16, 2, 4, 128, 1, 0, 0, 2, 6.f, 0, 0, 0, mix, 100, 1},
        {"STRING pre-RoPE keys partial rotary 64 of hd128 f16, plain beside, S 33", F, 32, 2, 2, 128, 1, 64, 0, 1, 6.f, 0, 0, 0, mix, 33, 2},
        {"STRING split-KV for every row (simt) gqa4 hd128, S 100", B, 16, 2, 4, 128, 0, 0, 1, 1, 6.f, 0, 0, 0, mix, 100, 1},
        {"STRING split-KV for every row (simt) pre-RoPE hd16, plain beside, S 9", B, 16, 2, 2, 16, 1, 0, 1, 1, 6.f, 0, 0, 0, mix, 9, 2},
        {"STRING gqa16 hd64 (two head chunks), S 30", B, 16, 1, 16, 64, 0, 0, 0, 1, 6.f, 0, 0, 0, cat(decodes(3, 2000), {{0, 20}, {77, 9}}), 30, 1},
        {"STRING gqa1 hd256 (second Q tile: 132 KiB smem), S 100", B, 16, 2, 1, 256, 0, 0, 0, 1, 6.f, 0, 0, 0, mix, 100, 1},
        {"STRING gqa1 hd80 f16, S 37", F, 32, 2, 1, 80, 0, 0, 0, 1, 6.f, 0, 0, 0, mix, 37, 1},
        {"STRING gqa6 hd96 (padded head chunk), S 250", B, 16, 2, 6, 96, 0, 0, 0, 1, 6.f, 0, 0, 0, cat(decodes(4, 2000), {{500, 40}}), 250, 1},
        {"STRING kv_copy_blocks gqa4 hd64, S 20", B, 16, 2, 4, 64, 0, 0, 0, 1, 6.f, 0, 0, 1, {{300, 1}, {40, 30}, {17, 1}}, 20, 1},
        /* 128k decode: one sequence at the maximum length beside a short one; block sizes 16/32/64 */
        {"decode 131072 + 5000, gqa4 hd128 bs16", B, 16, 8, 4, 128, 0, 0, 0, 1, 6.f, 1, 1, 0, {{131071, 1}, {4999, 1}}},
        {"decode 131072, gqa4 hd128 bs32", B, 32, 8, 4, 128, 0, 0, 0, 1, 6.f, 1, 1, 0, {{131071, 1}}},
        {"decode 131072, gqa4 hd128 bs64", B, 64, 8, 4, 128, 0, 0, 0, 1, 6.f, 1, 1, 0, {{131071, 1}}},
        {"decode 131072 MHA (7B shape) hd128 bs16", B, 16, 32, 1, 128, 0, 0, 0, 1, 6.f, 1, 1, 0, {{131071, 1}}},
        {"decode 131072 pre-RoPE gqa4 hd128 bs16", B, 16, 8, 4, 128, 1, 0, 0, 1, 6.f, 1, 1, 0, {{131071, 1}}},
        /* prefill over a 128k paged prefix (the 128-row sm_80 and the sm_90a kernels; pre-RoPE keys: the 64-row one) */
        {"chunked prefill 128 over 131072 cached, gqa4 hd128 bs16", B, 16, 8, 4, 128, 0, 0, 0, 1, 6.f, 1, 1, 0, {{131072, 128}, {5000, 70}}},
        {"chunked prefill 64 over 131008 cached, MHA hd128 bs32 f16", F, 32, 32, 1, 128, 0, 0, 0, 1, 6.f, 1, 1, 0, {{131008, 64}}},
        {"STRING chunked prefill 128 over 131072 cached, gqa4 hd128, S 43253", B, 16, 8, 4, 128, 0, 0, 0, 1, 6.f, 1, 1, 0, {{131072, 128}}, 43253, 1},
        {"pre-RoPE keys: chunked prefill 64 over 131072 cached, gqa4 hd128", B, 16, 8, 4, 128, 1, 0, 0, 1, 6.f, 1, 1, 0, {{131072, 64}}},
        /* throughput shapes */
        {"batch decode 64 x 4096, gqa4 hd128 bs16", B, 16, 8, 4, 128, 0, 0, 0, 1, 6.f, 1, 1, 0, decodes(64, 4096)},
        {"prefill 1024 at 0, 32 heads gqa4 hd128", B, 16, 8, 4, 128, 0, 0, 0, 1, 6.f, 1, 1, 0, {{0, 1024}}},
        {"chunked prefill 1024 at 7168, 32 heads gqa4 hd128", B, 16, 8, 4, 128, 0, 0, 0, 1, 6.f, 1, 1, 0, {{7168, 1024}}},
        {"chunked prefill 1024 at 7168 (simt)", B, 16, 8, 4, 128, 0, 0, 1, 1, 6.f, 1, 1, 0, {{7168, 1024}}},
        {"prefill 2048 at 0, MHA 32 heads hd128", B, 16, 32, 1, 128, 0, 0, 0, 1, 6.f, 1, 1, 0, {{0, 2048}}},
        /* STRING at the paper's S = 0.33 L: cost against the same batch without STRING */
        {"STRING decode 131072 + 5000, gqa4 hd128 bs16, S 43253", B, 16, 8, 4, 128, 0, 0, 0, 1, 6.f, 1, 1, 0, {{131071, 1}, {4999, 1}}, 43253, 1},
        {"STRING batch decode 64 x 4096, gqa4 hd128 bs16, S 1365", B, 16, 8, 4, 128, 0, 0, 0, 1, 6.f, 1, 1, 0, decodes(64, 4096), 1365, 1},
        {"STRING chunked prefill 1024 at 7168, gqa4 hd128, S 2730", B, 16, 8, 4, 128, 0, 0, 0, 1, 6.f, 1, 1, 0, {{7168, 1024}}, 2730, 1},
        {"STRING prefill 2048 at 0, MHA 32 heads hd128, S 683", B, 16, 32, 1, 128, 0, 0, 0, 1, 6.f, 1, 1, 0, {{0, 2048}}, 683, 1},
        /* sliding window (str_S, str_every, window at the end): sm_90a only so far, prefill rows */
        {"window 256: prefill 1000 gqa4 hd128 bs16", B, 16, 2, 4, 128, 0, 0, 0, 2, 6.f, 0, 0, 0, {{0, 1000}}, 0, 1, 256},
        {"window 100: chunked prefill over 3000 and 5000 cached, gqa8 hd128 bs32", B, 32, 2, 8, 128, 0, 0, 0, 1, 6.f, 0, 0, 0, {{3000, 300}, {5000, 2}, {77, 40}}, 0, 1, 100},
        {"window 128 (one key tile): mha hd64 f16 bs64", F, 64, 3, 1, 64, 0, 0, 0, 1, 6.f, 0, 0, 0, {{500, 200}, {37, 90}}, 0, 1, 128},
        {"window 4096 (wider than the context: plain causal) gqa4 hd128", B, 16, 2, 4, 128, 0, 0, 0, 1, 6.f, 0, 0, 0, {{100, 300}, {0, 45}}, 0, 1, 4096},
        {"window 1 (each row sees its own key) gqa2 hd64 bs16", B, 16, 2, 2, 64, 0, 0, 0, 1, 6.f, 0, 0, 0, {{10, 50}, {300, 129}}, 0, 1, 1},
        {"window 300 with STRING S 100, gqa4 hd128", B, 16, 2, 4, 128, 0, 0, 0, 1, 6.f, 0, 0, 0, {{0, 700}, {900, 64}}, 100, 1, 300},
        {"window 4096 over 131072 cached, 256 new, gqa4 hd128 bs16", B, 16, 8, 4, 128, 0, 0, 0, 1, 6.f, 1, 1, 0, {{131072, 256}}, 0, 1, 4096},
        /* fp8 KV cache (str_S, str_every, window, kv_fp8 at the end): decode and prefill rows, f16
         * compute, pre-RoPE keys, STRING, the split-KV fallback for every row and for a head_dim
         * without an fp8 prefill instantiation (80), kv_copy_blocks, and 128k decode (bench) */
        {"fp8 KV: decode gqa4 hd128 bs16", B, 16, 2, 4, 128, 0, 0, 0, 2, 6.f, 0, 0, 0, decodes(8, 3000), 0, 1, 0, 1},
        {"fp8 KV: mixed gqa2 hd64", B, 16, 2, 2, 64, 0, 0, 0, 2, 6.f, 0, 0, 0, mix, 0, 1, 0, 1},
        {"fp8 KV: chunked prefill gqa8 hd128 bs32", B, 32, 2, 8, 128, 0, 0, 0, 1, 6.f, 0, 0, 0, {{100, 200}, {1000, 65}, {4095, 2}}, 0, 1, 0, 1},
        {"fp8 KV: mixed gqa4 hd64 bs64 f16", F, 64, 2, 4, 64, 0, 0, 0, 1, 6.f, 0, 0, 0, mix, 0, 1, 0, 1},
        {"fp8 KV: pre-RoPE keys gqa4 hd128, mixed", B, 16, 2, 4, 128, 1, 0, 0, 2, 6.f, 0, 0, 0, mix, 0, 1, 0, 1},
        {"fp8 KV: mixed gqa1 hd80 (prefill rows through split-KV)", B, 32, 2, 1, 80, 0, 0, 0, 1, 6.f, 0, 0, 0, mix, 0, 1, 0, 1},
        {"fp8 KV: split-KV for every row (simt) gqa4 hd128", B, 16, 2, 4, 128, 0, 0, 1, 1, 6.f, 0, 0, 0, mix, 0, 1, 0, 1},
        {"fp8 KV: STRING mixed gqa4 hd128, S 100", B, 16, 2, 4, 128, 0, 0, 0, 1, 6.f, 0, 0, 0, mix, 100, 1, 0, 1},
        {"fp8 KV: kv_copy_blocks gqa4 hd64", B, 16, 2, 4, 64, 0, 0, 0, 1, 6.f, 0, 0, 1, {{300, 1}, {40, 30}, {17, 1}}, 0, 1, 0, 1},
        {"fp8 KV: decode 131072 + 5000, gqa4 hd128 bs16", B, 16, 8, 4, 128, 0, 0, 0, 1, 6.f, 1, 1, 0, {{131071, 1}, {4999, 1}}, 0, 1, 0, 1},
        {"fp8 KV: decode 131072 MHA (7B shape) hd128 bs16", B, 16, 32, 1, 128, 0, 0, 0, 1, 6.f, 1, 1, 0, {{131071, 1}}, 0, 1, 0, 1},
    };
    for (const auto &cf : configs) {
        if ((quick && cf.big) || (only && !strstr(cf.name.c_str(), only))) continue;
        run_config(cf);
    }
    return test_report("check_attention");
}
