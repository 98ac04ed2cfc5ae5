/* bench.c - throughput of the engine, measured the way llama-bench does:
 *   ppN: a prompt of N random tokens, time until its first generated token -> N / t tokens/s
 *   tgN: decode N tokens after a 1-token prompt -> (N - 1) / t tokens/s after the first
 *   concurrent decode: S streams at once, aggregate generated tokens/s
 *   ttft under load: a short request submitted while a long prefill runs
 *   decode at context L (--decode-ctx): a prompt of L tokens, then --tg tokens; milliseconds per
 *   decode step after the first token (the decode_ms; with --kv-cache-dtype fp8 too)
 * Each figure is the median of --reps runs. Never part of `make test` (but tests/test_profile.sh
 * runs --profile on a tiny model to check the table's shape, never its times).
 *
 * --profile: the backend is wrapped by kernels/profile.h, and after the runs the time of every
 * op class per step kind (prefill chunks, decodes) is printed, with the GEMMs named after the
 * model's weights (CUDA events on the GPU, the host clock on the CPU), then PROFILE_JSON.
 *
 *   bench --model DIR [--threads N] [--pp 512,2048,8192] [--tg 128] [--streams 1,4,16]
 *         [--reps 3] [--device cpu|cuda] [--no-cuda-graphs] [--long-prefill N] [--max-batched-tokens N]
 *         [--kv-cache-dtype auto|bf16|f16|fp8] [--decode-ctx L1,L2] [--profile]
 *   --decode-ctx prints one line per L: "decode_ms ctx=L kv=DTYPE ms=X" (median of --reps) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "../engine/engine.h"
#include "../kernels/backend.h"
#include "../kernels/profile.h"
#include "../models/model.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int parse_list(const char *s, int *out, int max)
{
    int n = 0;
    while (*s && n < max) {
        if (atoi(s) <= 0) return n;
        out[n++] = atoi(s);
        const char *c = strchr(s, ',');
        if (!c) break;
        s = c + 1;
    }
    return n;
}

static uint64_t rng = 88172645463325252ull;
static int32_t rand_tok(int vocab)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return 3 + (int32_t)(rng % (uint64_t)(vocab - 3));
}

/* Submit a request of n_prompt random tokens generating max_tokens; returns the stream. */
static engine_stream_t *submit(engine_t *e, int vocab, int n_prompt, int max_tokens)
{
    char err[ERR_LEN];
    int32_t *p = xmalloc(sizeof(int32_t) * n_prompt);
    p[0] = 1;
    for (int i = 1; i < n_prompt; i++) p[i] = rand_tok(vocab);
    struct engine_request req;
    memset(&req, 0, sizeof req);
    req.prompt = p;
    req.n_prompt = n_prompt;
    req.sp = sampling_default_params();
    req.sp.temperature = 0;
    req.sp.max_tokens = max_tokens;
    req.sp.ignore_eos = 1;
    engine_stream_t *s;
    if (engine_submit(e, &req, &s, err) != ENGINE_OK) {
        fprintf(stderr, "bench: %s\n", err);
        exit(1);
    }
    free(p);
    return s;
}

/* Read a stream to the end; returns the time of its first token and the number of tokens. */
static int drain(engine_stream_t *s, double *t_first, double *t_last)
{
    struct engine_event ev;
    int n = 0;
    *t_first = 0;
    while (engine_stream_next(s, &ev, -1) == 1 && ev.type != ENGINE_EV_DONE) {
        if (ev.type != ENGINE_EV_TOKEN) continue;
        *t_last = now_s();
        if (!n++) *t_first = *t_last;
    }
    engine_stream_free(s);
    return n;
}

int main(int argc, char **argv)
{
    const char *model = NULL;
    int pp[8] = {512, 2048, 8192}, n_pp = 3, tg = 128, streams[8] = {1, 4, 16}, n_streams = 0, reps = 3;
    int long_prefill = 0, profile = 0;
    int kv_dtype = MODEL_KV_DTYPE_AUTO;
    int decode_ctx[8], n_decode_ctx = 0;
    struct backend_params bp = backend_default_params();
    bp.device = BK_DEVICE_CPU;
    struct engine_params ep = engine_default_params();
    ep.enable_prefix_cache = 0; /* random prompts; keep runs independent */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "--model")) model = v, i++;
        else if (!strcmp(a, "--threads")) bp.n_threads = atoi(v), i++;
        else if (!strcmp(a, "--pp")) n_pp = parse_list(v, pp, 8), i++;
        else if (!strcmp(a, "--tg")) tg = atoi(v), i++;
        else if (!strcmp(a, "--streams")) n_streams = parse_list(v, streams, 8), i++;
        else if (!strcmp(a, "--reps")) reps = atoi(v), i++;
        else if (!strcmp(a, "--long-prefill")) long_prefill = atoi(v), i++;
        else if (!strcmp(a, "--max-batched-tokens")) ep.max_batched_tokens = atoi(v), i++;
        else if (!strcmp(a, "--decode-ctx")) n_decode_ctx = parse_list(v, decode_ctx, 8), i++;
        else if (!strcmp(a, "--kv-cache-dtype")) {
            if (model_kv_dtype_parse(v, &kv_dtype) < 0) { fprintf(stderr, "bench: --kv-cache-dtype %s: expected auto, bf16, f16, fp8 or f32\n", v); return 1; }
            i++;
        }
        else if (!strcmp(a, "--device")) bp.device = !strcmp(v, "cuda") ? BK_DEVICE_CUDA : BK_DEVICE_CPU, i++;
        else if (!strcmp(a, "--no-cuda-graphs")) bp.cuda_graphs = 0;
        else if (!strcmp(a, "--profile")) profile = 1;
        else { fprintf(stderr, "bench: unknown flag %s\n", a); return 1; }
    }
    if (!model || reps < 1 || reps > 50) { fprintf(stderr, "usage: bench --model DIR [flags]\n"); return 1; }
    log_min_level = LOG_WARN;
    char err[ERR_LEN];
    struct model_config cfg;
    struct backend be;
    model_t *m;
    engine_t *e;
    if (model_config_load(&cfg, model, err) < 0 || backend_init(&be, &bp, err) < 0 ||
        (profile && bk_profile_attach(&be, err) < 0)) { fprintf(stderr, "bench: %s\n", err); return 1; }
    if (profile) { /* name the GEMMs after the weights of one layer (shapes may coincide) */
        const int H = cfg.hidden_size, QD = cfg.n_heads * cfg.head_dim, KD = cfg.n_kv_heads * cfg.head_dim;
        bk_profile_name_gemm(&be, H, QD, "wq");
        bk_profile_name_gemm(&be, H, KD, "wk");
        bk_profile_name_gemm(&be, H, KD, "wv");
        bk_profile_name_gemm(&be, QD, H, "wo");
        bk_profile_name_gemm(&be, H, cfg.intermediate_size, "gate");
        bk_profile_name_gemm(&be, H, cfg.intermediate_size, "up");
        bk_profile_name_gemm(&be, cfg.intermediate_size, H, "down");
        bk_profile_name_gemm(&be, H, cfg.vocab_size, "lm_head");
    }
    struct model_params mp = model_default_params();
    mp.max_batch_tokens = ep.max_batched_tokens;
    mp.kv_cache_dtype = kv_dtype;
    mp.graph_max_seqs = ep.max_num_seqs;
    if (model_load(&m, model, &cfg, &be, &mp, err) < 0 || engine_init(&e, &ep, m, err) < 0) { fprintf(stderr, "bench: %s\n", err); return 1; }
    const int vocab = cfg.vocab_size;
    char desc[256];
    be.ops->describe(be.ctx, desc, sizeof desc);
    printf("model %s (%d layers, hidden %d, %d heads, %d kv heads, head_dim %d, ffn %d, vocab %d)\nbackend %s; KV cache %s; median of %d runs\n",
           model, cfg.n_layers, cfg.hidden_size, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.intermediate_size, vocab, desc, bk_dtype_name(model_kv_dtype(m)), reps);
    double v[64], tf, tl;

    /* warm-up: one small request */
    drain(submit(e, vocab, 64, 2), &tf, &tl);
    bk_profile_reset(&be);
    for (int i = 0; i < n_pp; i++) {
        if (pp[i] + 1 > engine_max_model_len(e)) { printf("pp%-6d skipped (max_model_len %d)\n", pp[i], engine_max_model_len(e)); continue; }
        for (int r = 0; r < reps; r++) {
            double t0 = now_s();
            drain(submit(e, vocab, pp[i], 1), &tf, &tl);
            v[r] = pp[i] / (tf - t0);
        }
        printf("pp%-6d %9.1f tokens/s   (prefill, time to first token)\n", pp[i], median(v, reps));
    }
    if (tg > 1) {
        for (int r = 0; r < reps; r++) {
            int n = drain(submit(e, vocab, 1, tg), &tf, &tl);
            v[r] = (n - 1) / (tl - tf);
        }
        printf("tg%-6d %9.1f tokens/s   (decode, batch 1)\n", tg, median(v, reps));
    }
    for (int i = 0; i < n_streams; i++) {
        int S = streams[i];
        for (int r = 0; r < reps; r++) {
            engine_stream_t *ss[256];
            double t0 = now_s(), tend = t0;
            for (int k = 0; k < S && k < 256; k++) ss[k] = submit(e, vocab, 16, tg);
            int total = 0;
            for (int k = 0; k < S && k < 256; k++) {
                total += drain(ss[k], &tf, &tl);
                if (tl > tend) tend = tl;
            }
            v[r] = total / (tend - t0);
        }
        printf("decode x%-3d %7.1f tokens/s aggregate (%d streams x %d tokens)\n", S, median(v, reps), S, tg);
    }
    for (int i = 0; i < n_decode_ctx; i++) {
        const int L = decode_ctx[i], n_gen = tg > 2 ? tg : 32;
        if (L + n_gen > engine_max_model_len(e)) {
            printf("decode_ms ctx=%d skipped (max_model_len %d)\n", L, engine_max_model_len(e));
            continue;
        }
        for (int r = 0; r < reps; r++) {
            int n = drain(submit(e, vocab, L, n_gen), &tf, &tl);
            v[r] = n > 1 ? 1000.0 * (tl - tf) / (n - 1) : 0.0;
        }
        printf("decode_ms ctx=%d kv=%s ms=%.3f   (batch 1, %d tokens after a %d-token prompt)\n", L,
               bk_dtype_name(model_kv_dtype(m)), median(v, reps), n_gen, L);
    }
    if (long_prefill > 0 && long_prefill + 16 <= engine_max_model_len(e)) {
        for (int r = 0; r < reps; r++) {
            engine_stream_t *big = submit(e, vocab, long_prefill, 1);
            /* let the long prefill start, then submit a short request */
            struct engine_stats st;
            do { engine_get_stats(e, &st); } while (st.num_running == 0);
            double t0 = now_s();
            drain(submit(e, vocab, 32, 2), &tf, &tl);
            v[r] = tf - t0;
            drain(big, &tf, &tl);
        }
        printf("ttft of a 32-token request during a %d-token prefill: %.3f s\n", long_prefill, median(v, reps));
    }
    engine_free(e);
    if (profile) bk_profile_report(&be, stdout);
    model_free(m);
    backend_free(&be);
    model_config_free(&cfg);
    return 0;
}
