/* check_attention_sm90.cu - the sm_90a prefill kernel's 16-bit q/out instantiations (INTERFACES
 * §3: q, q_shift and out in the cache's dtype T once activations are 16-bit), which the backend
 * cannot reach yet (its activations are fp32, so check_attention tests the float ones).
 *
 * The same launch twice through the shipped launcher (cuda_attn_prefill_sm90): q, q_shift given
 * as fp32 values that T represents exactly, then as T. Both instantiations round q to T and run
 * the same arithmetic, so the T run's output must equal the fp32 run's output rounded to T, bit
 * for bit. check_attention carries the comparison with the CPU reference for the fp32 path.
 * Configurations: bf16 and f16, head_dim 64 and 128, GQA 4, chunked prefill over a cached prefix
 * beside a fresh prompt, a random non-contiguous block table, STRING on and off.
 *
 * Skips without a device and on devices other than compute capability 9.0. */
#include "../../kernels/cuda/common.cuh"
#include "check.h"

struct dev_buf {
    void *p = NULL;
    explicit dev_buf(size_t bytes) { CK_CUDA(cudaMalloc(&p, bytes ? bytes : 16)); }
    ~dev_buf() { cudaFree(p); }
    template <typename X> void put(const std::vector<X> &h) { CK_CUDA(cudaMemcpy(p, h.data(), h.size() * sizeof(X), cudaMemcpyHostToDevice)); }
};

static void run_case(enum bk_dtype dt, int hd, int string)
{
    const int n_kv_heads = 2, group = 4, n_heads = n_kv_heads * group, bs = 16;
    const int ctx[2] = {300, 0}, n_new[2] = {200, 77};
    printf("case: %s, head_dim %d, kv heads %d x group %d, %s\n", ck_dtype_name(dt), hd, n_kv_heads, group,
           string ? "STRING S 50 on the first sequence" : "no STRING");
    /* block tables from a shuffled pool; block 0 reserved */
    std::vector<int> nb(2);
    int total = 1;
    for (int s = 0; s < 2; s++) total += nb[s] = (ctx[s] + n_new[s] + bs - 1) / bs;
    std::vector<int32_t> perm(total - 1);
    for (int i = 0; i < total - 1; i++) perm[i] = i + 1;
    for (int i = total - 2; i > 0; i--) std::swap(perm[i], perm[ck_int(i + 1)]);
    const int stride = std::max(nb[0], nb[1]);
    std::vector<int32_t> tables((size_t)2 * stride, 0), positions, query_start = {0}, row_seq, tiles;
    for (int s = 0, next = 0; s < 2; s++)
        for (int b = 0; b < nb[s]; b++) tables[(size_t)s * stride + b] = perm[next++];
    for (int s = 0; s < 2; s++) {
        for (int i = 0; i < n_new[s]; i++) {
            positions.push_back(ctx[s] + i);
            row_seq.push_back(s);
        }
        query_start.push_back((int32_t)positions.size());
        for (int t = 0; t * ATTN_PREFILL_SM90_BLOCK_M < n_new[s] * group; t++) {
            tiles.push_back(s);
            tiles.push_back(t * ATTN_PREFILL_SM90_BLOCK_M);
        }
    }
    const int n_tok = (int)positions.size(), n_tiles = (int)tiles.size() / 2;
    const size_t cache_n = (size_t)total * bs * n_kv_heads * hd, qn = (size_t)n_tok * n_heads * hd;
    /* the cache: random T everywhere (slots past a sequence are never read: the kernel zero-fills) */
    std::vector<float> kf(cache_n), vf(cache_n), q(qn), q2(qn);
    ck_fill(kf.data(), cache_n, -1.f, 1.f);
    ck_fill(vf.data(), cache_n, -1.f, 1.f);
    ck_fill(q.data(), qn, -6.f, 6.f);
    ck_fill(q2.data(), qn, -6.f, 6.f);
    ck_round_all(q.data(), q.data(), qn, dt);
    ck_round_all(q2.data(), q2.data(), qn, dt);
    const std::vector<uint16_t> kh = ck_bits(kf.data(), cache_n, dt), vh = ck_bits(vf.data(), cache_n, dt);
    const std::vector<uint16_t> qh = ck_bits(q.data(), qn, dt), q2h = ck_bits(q2.data(), qn, dt);
    const std::vector<int32_t> string_shift = {50, 0};

    dev_buf dk(cache_n * 2), dv(cache_n * 2), dq(qn * 4), dq2(qn * 4), dqh(qn * 2), dq2h(qn * 2), dout(qn * 4),
        douth(qn * 2), dtab(tables.size() * 4), dpos(positions.size() * 4), dqs(query_start.size() * 4),
        drs(row_seq.size() * 4), dtiles(tiles.size() * 4), dss(8);
    dk.put(kh);
    dv.put(vh);
    dq.put(q);
    dq2.put(q2);
    dqh.put(qh);
    dq2h.put(q2h);
    dtab.put(tables);
    dpos.put(positions);
    dqs.put(query_start);
    drs.put(row_seq);
    dtiles.put(tiles);
    dss.put(string_shift);

    struct attn_params p;
    memset(&p, 0, sizeof p);
    p.k_cache = dk.p;
    p.v_cache = dv.p;
    p.q_row_stride = (long long)n_heads * hd;
    p.kv_token_stride = (long long)n_kv_heads * hd;
    p.head_dim = hd;
    p.n_heads = n_heads;
    p.n_kv_heads = n_kv_heads;
    p.group = group;
    p.block_size = bs;
    p.log2_block_size = __builtin_ctz((unsigned)bs);
    p.block_tables = (const int32_t *)dtab.p;
    p.block_table_stride = stride;
    p.positions = (const int32_t *)dpos.p;
    p.row_seq = (const int32_t *)drs.p;
    p.query_start = (const int32_t *)dqs.p;
    p.scale_log2 = 1.4426950408889634f / sqrtf((float)hd);
    p.tiles = (const int32_t *)dtiles.p;
    p.string_shift = string ? (const int32_t *)dss.p : NULL;

    /* fp32 q/out */
    p.q_dtype = BK_F32;
    p.q = (const float *)dq.p;
    p.q_shift = string ? (const float *)dq2.p : NULL;
    p.out = (float *)dout.p;
    cuda_attn_prefill_sm90(&p, n_tiles, dt, 0);
    /* T q/out (the pointers keep their declared types until attn_params carries void *) */
    p.q_dtype = dt;
    p.q = (const float *)dqh.p;
    p.q_shift = string ? (const float *)dq2h.p : NULL;
    p.out = (float *)douth.p;
    cuda_attn_prefill_sm90(&p, n_tiles, dt, 0);
    CK_CUDA(cudaDeviceSynchronize());

    std::vector<float> out(qn);
    std::vector<uint16_t> outh(qn);
    CK_CUDA(cudaMemcpy(out.data(), dout.p, qn * 4, cudaMemcpyDeviceToHost));
    CK_CUDA(cudaMemcpy(outh.data(), douth.p, qn * 2, cudaMemcpyDeviceToHost));
    const std::vector<uint16_t> want = ck_bits(out.data(), qn, dt);
    size_t diff = 0, nonfinite = 0;
    for (size_t i = 0; i < qn; i++) {
        diff += outh[i] != want[i];
        nonfinite += !isfinite(out[i]);
    }
    printf("    %zu outputs, %zu differ from the fp32 run rounded to %s, %zu non-finite\n", qn, diff, ck_dtype_name(dt),
           nonfinite);
    TEST_CONDF(diff == 0 && nonfinite == 0, "%s hd%d%s: the %s q/out instantiation equals the fp32 one rounded",
               ck_dtype_name(dt), hd, string ? " STRING" : "", ck_dtype_name(dt));
}

int main(void)
{
    if (check_skip_without_device("check_attention_sm90")) return 0;
    cudaDeviceProp prop;
    CK_CUDA(cudaGetDeviceProperties(&prop, 0));
    if (prop.major != 9 || prop.minor != 0) {
        printf("check_attention_sm90: SKIP (%s is compute capability %d.%d; the sm_90a kernel needs 9.0)\n", prop.name,
               prop.major, prop.minor);
        printf("check_attention_sm90: 0 passed, 0 failed\n");
        return 0;
    }
    char err[ERR_LEN];
    if (cuda_attn_prefill_sm90_init(prop.sharedMemPerBlockOptin, err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    ck_seed(90);
    for (enum bk_dtype dt : {BK_BF16, BK_F16})
        for (int hd : {64, 128})
            for (int string : {0, 1}) run_case(dt, hd, string);
    return test_report("check_attention_sm90");
}
