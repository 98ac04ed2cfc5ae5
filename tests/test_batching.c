/* test_batching.c - the engine end to end on a real model (default build/demo-model):
 *   batch invariance  16 concurrent greedy requests (prompts 8..2500 tokens) give the tokens
 *                     they give alone, logprobs within 5e-4 (batched and alone, a row is
 *                     computed in different chunks and tile shapes, so sums run in another
 *                     order: measured 6e-5 on an AVX2 machine, 2e-4 with AVX-512, where the
 *                     attention tiles are 16 wide; the llama.cpp fixtures allow 5e-3)
 *   prefix caching    the second of two requests sharing a 1000-token prefix computes only its
 *                     suffix and gives the same output as without the cache
 *   request extras    prefill progress events (one per chunk, growing, the last = the prompt;
 *                     prefix-cache hits counted), min_tokens (EOS and stop ids masked until
 *                     then), the stop id reported, a nonzero priority refused under FCFS
 *   stress            N requests (default 1000; --short: 150) with random lengths, max_tokens,
 *                     sampling, stop ids and cancellations at every stage, from 8 client
 *                     threads through a small queue: every request ends (DONE or a refusal),
 *                     and afterwards no KV block is referenced
 * usage: test_batching [--model DIR] [--short] */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "../engine/engine.h"
#include "test.h"

struct rig {
    struct model_config cfg;
    struct backend be;
    model_t *m;
    engine_t *e;
};

static int rig_open(struct rig *r, const char *dir, struct engine_params ep, int pool_tokens)
{
    char err[ERR_LEN];
    memset(r, 0, sizeof *r);
    struct backend_params bp = backend_default_params();
    bp.device = BK_DEVICE_CPU;
    bp.n_threads = 2;
    struct model_params mp = model_default_params();
    mp.max_batch_tokens = ep.max_batched_tokens;
    if (model_config_load(&r->cfg, dir, err) < 0 || backend_init(&r->be, &bp, err) < 0 ||
        model_load(&r->m, dir, &r->cfg, &r->be, &mp, err) < 0 ||
        (pool_tokens > 0 && (ep.kv_cache_gb = (double)pool_tokens * model_kv_bytes_per_token(r->m) / 1073741824.0) <= 0) ||
        engine_init(&r->e, &ep, r->m, err) < 0) {
        printf("FAIL: cannot open %s: %s\n", dir, err);
        return -1;
    }
    return 0;
}

static void rig_close(struct rig *r)
{
    engine_free(r->e);
    model_free(r->m);
    backend_free(&r->be);
    model_config_free(&r->cfg);
}

static uint64_t rs = 0x1234567ull;
static uint32_t rnd(void)
{
    rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
    return (uint32_t)(rs >> 11);
}

struct result {
    int n;
    int32_t ids[64];
    float lp[64];
    enum finish_reason why;
};

/* A greedy request that ignores EOS. */
static struct engine_request greedy_request(const int32_t *p, int n, int max_tokens)
{
    struct engine_request req;
    memset(&req, 0, sizeof req);
    req.prompt = p;
    req.n_prompt = n;
    req.sp = sampling_default_params();
    req.sp.temperature = 0;
    req.sp.max_tokens = max_tokens;
    req.sp.ignore_eos = 1;
    return req;
}

static engine_stream_t *submit_greedy(engine_t *e, const int32_t *p, int n, int max_tokens)
{
    char err[ERR_LEN];
    struct engine_request req = greedy_request(p, n, max_tokens);
    req.sp.n_logprobs = 1;
    engine_stream_t *s = NULL;
    if (engine_submit(e, &req, &s, err) != ENGINE_OK) printf("submit failed: %s\n", err);
    return s;
}

static void collect(engine_stream_t *s, struct result *r)
{
    struct engine_event ev;
    memset(r, 0, sizeof *r);
    while (engine_stream_next(s, &ev, -1) == 1) {
        if (ev.type == ENGINE_EV_DONE) { r->why = ev.reason; break; }
        if (ev.type == ENGINE_EV_TOKEN && r->n < 64) { r->ids[r->n] = ev.token; r->lp[r->n++] = ev.logprob; }
    }
    engine_stream_free(s);
}

static int same(const struct result *a, const struct result *b, float tol, float *worst)
{
    *worst = 0;
    if (a->n != b->n) return 0;
    for (int i = 0; i < a->n; i++) {
        if (a->ids[i] != b->ids[i]) return 0;
        float d = fabsf(a->lp[i] - b->lp[i]);
        if (d > *worst) *worst = d;
    }
    return *worst <= tol;
}

static void test_batch_invariance(const char *dir)
{
    enum { N = 16, GEN = 12 };
    struct engine_params ep = engine_default_params();
    ep.max_num_seqs = 16;
    ep.enable_prefix_cache = 0;
    ep.kv_cache_gb = 0.5;
    struct rig r;
    if (rig_open(&r, dir, ep, 0) < 0) { TEST_COND("open model", 0); return; }
    static int32_t prompts[N][2500];
    int lens[N], longest = engine_max_model_len(r.e) - GEN;
    if (longest > 2500) longest = 2500;
    for (int i = 0; i < N; i++) {
        lens[i] = i == 0 ? 8 : i == N - 1 ? longest : 8 + (int)(rnd() % (unsigned)(longest - 8));
        prompts[i][0] = 1;
        for (int k = 1; k < lens[i]; k++) prompts[i][k] = 3 + (int)(rnd() % (unsigned)(r.cfg.vocab_size - 3));
    }
    struct result alone[N], together[N];
    for (int i = 0; i < N; i++) collect(submit_greedy(r.e, prompts[i], lens[i], GEN), &alone[i]);
    struct engine_stats before;
    engine_get_stats(r.e, &before);
    engine_stream_t *s[N];
    for (int i = 0; i < N; i++) s[i] = submit_greedy(r.e, prompts[i], lens[i], GEN);
    for (int i = 0; i < N; i++) collect(s[i], &together[i]);
    float worst_all = 0;
    int ok = 1;
    for (int i = 0; i < N; i++) {
        float w;
        int eq = same(&alone[i], &together[i], 5e-4f, &w);
        if (w > worst_all) worst_all = w;
        if (!eq) { ok = 0; printf("  request %d (%d tokens) differs when batched (max dlogprob %.2e)\n", i, lens[i], w); }
    }
    printf("batch invariance: 16 requests (8..%d tokens), max |dlogprob| %.2e\n", longest, worst_all);
    TEST_COND("16 concurrent requests give their solo tokens, logprobs within 5e-4", ok);
    struct engine_stats st;
    engine_get_stats(r.e, &st);
    /* one at a time, the decodes alone would need N * (GEN - 1) steps */
    TEST_CONDF(st.steps - before.steps < (uint64_t)N * (GEN - 1),
               "batches really mixed several sequences (%llu steps)", (unsigned long long)(st.steps - before.steps));
    TEST_CONDF(st.kv_blocks_used == 0, "no block referenced afterwards (%d)", st.kv_blocks_used);
    rig_close(&r);
}

static void test_prefix_cache(const char *dir)
{
    static int32_t a[1100], b[1100];
    a[0] = b[0] = 1;
    for (int i = 1; i < 1000; i++) a[i] = b[i] = 3 + (int)(rnd() % 500);
    for (int i = 1000; i < 1050; i++) { a[i] = 3 + (int)(rnd() % 500); b[i] = 3 + (int)(rnd() % 500); }
    struct engine_params ep = engine_default_params();
    ep.enable_prefix_cache = 0;
    ep.kv_cache_gb = 0.25;
    struct rig r;
    struct result ref, first, second;
    if (rig_open(&r, dir, ep, 0) < 0) { TEST_COND("open model", 0); return; }
    collect(submit_greedy(r.e, b, 1050, 8), &ref);
    rig_close(&r);
    ep.enable_prefix_cache = 1;
    if (rig_open(&r, dir, ep, 0) < 0) { TEST_COND("open model", 0); return; }
    collect(submit_greedy(r.e, a, 1050, 8), &first);
    struct engine_stats s0, s1;
    engine_get_stats(r.e, &s0);
    collect(submit_greedy(r.e, b, 1050, 8), &second);
    engine_get_stats(r.e, &s1);
    uint64_t computed = s1.step_tokens - s0.step_tokens;
    printf("prefix cache: second request computed %llu tokens (suffix 50 + 7 decodes; prefix 1000), %llu blocks hit\n",
           (unsigned long long)computed, (unsigned long long)(s1.prefix_hits - s0.prefix_hits));
    TEST_CONDF(computed == 1050 - 992 + 7, "only the suffix is computed (%llu tokens)", (unsigned long long)computed);
    TEST_COND("62 blocks reused", s1.prefix_hits - s0.prefix_hits == 62);
    float w;
    TEST_CONDF(same(&ref, &second, 1e-4f, &w), "same output as without the cache (max dlogprob %.2e)", w);
    TEST_COND("cached blocks are unreferenced when idle", s1.kv_blocks_used == 0 && s1.kv_blocks_cached > 0);
    rig_close(&r);
}

/* --------------------------------------------------------------------------------------------- */

struct trace {
    int n_prog, prog[64], total, cached_first, prog_before_token;
    int n_gen;
    int32_t ids[64];
    int stop_flag_at; /* index of the TOKEN event with stop set (-1) */
    enum finish_reason why;
    int32_t stop_token;
};

static void trace_run(engine_t *e, struct engine_request *req, struct trace *t)
{
    char err[ERR_LEN];
    engine_stream_t *s = NULL;
    memset(t, 0, sizeof *t);
    t->stop_flag_at = -1;
    t->prog_before_token = 1;
    if (engine_submit(e, req, &s, err) != ENGINE_OK) {
        printf("submit failed: %s\n", err);
        t->why = FINISH_ERROR;
        return;
    }
    struct engine_event ev;
    while (engine_stream_next(s, &ev, -1) == 1) {
        if (ev.type == ENGINE_EV_DONE) { t->why = ev.reason; t->stop_token = ev.stop_token; break; }
        if (ev.type == ENGINE_EV_PROGRESS && t->n_prog < 64) {
            if (t->n_prog == 0) t->cached_first = ev.n_cached;
            t->prog[t->n_prog++] = ev.n_processed;
            t->total = ev.n_total;
            if (t->n_gen) t->prog_before_token = 0;
        }
        if (ev.type == ENGINE_EV_TOKEN && t->n_gen < 64) {
            if (ev.stop) t->stop_flag_at = t->n_gen;
            t->ids[t->n_gen++] = ev.token;
        }
    }
    engine_stream_free(s);
}

static void test_request_extras(const char *dir)
{
    struct engine_params ep = engine_default_params();
    ep.max_batched_tokens = 512;
    ep.kv_cache_gb = 0.25;
    struct rig r;
    if (rig_open(&r, dir, ep, 0) < 0) { TEST_COND("open model", 0); return; }
    static int32_t p[2000];
    p[0] = 1;
    for (int i = 1; i < 2000; i++) p[i] = 3 + (int)(rnd() % 500);
    struct engine_request req = greedy_request(p, 2000, 2);
    req.report_progress = 1;
    struct trace t;
    trace_run(r.e, &req, &t);
    int grows = t.n_prog > 0;
    for (int i = 1; i < t.n_prog; i++) grows &= t.prog[i] > t.prog[i - 1];
    TEST_CONDF(t.n_prog == 4 && grows && t.prog[0] == 512 && t.prog[t.n_prog - 1] == 2000 && t.total == 2000,
               "progress: one event per 512-token chunk, growing to the prompt (%d events, last %d of %d)",
               t.n_prog, t.n_prog ? t.prog[t.n_prog - 1] : -1, t.total);
    TEST_COND("progress: all before the first token, nothing cached", t.prog_before_token && t.cached_first == 0);
    trace_run(r.e, &req, &t); /* the same prompt again: 1984 tokens come from the prefix cache */
    TEST_CONDF(t.n_prog == 1 && t.cached_first == 1984 && t.prog[0] == 2000,
               "progress after a prefix-cache hit: cache %d, %d event(s)", t.cached_first, t.n_prog);
    req.report_progress = 0;
    trace_run(r.e, &req, &t);
    TEST_COND("no progress events unless asked", t.n_prog == 0 && t.n_gen == 2);

    /* min_tokens and stop ids: g = the greedy continuation */
    req.prompt = p;
    req.n_prompt = 300;
    req.sp.max_tokens = 6;
    struct trace g;
    trace_run(r.e, &req, &g);
    int32_t stop1 = g.ids[0];
    req.sp.stop_ids = &stop1;
    req.sp.n_stop_ids = 1;
    trace_run(r.e, &req, &t);
    TEST_CONDF(t.why == FINISH_STOP && t.n_gen == 1 && t.stop_token == stop1 && t.stop_flag_at == 0,
               "a stop id ends the request at once, reported as the stop token (%d tokens, stop %d)", t.n_gen,
               t.stop_token);
    req.sp.min_tokens = 3;
    trace_run(r.e, &req, &t);
    int masked = t.n_gen >= 3;
    for (int i = 0; i < 3 && i < t.n_gen; i++) masked &= t.ids[i] != stop1;
    TEST_CONDF(masked && (t.why == FINISH_LENGTH || (t.why == FINISH_STOP && t.ids[t.n_gen - 1] == stop1)),
               "min_tokens 3: the stop id never among the first 3 (%d tokens, finish %s)", t.n_gen,
               finish_reason_name(t.why));
    req.sp.stop_ids = NULL;
    req.sp.n_stop_ids = 0;
    /* EOS pushed to the top by logit_bias: masked for min_tokens, then it ends the request */
    req.sp.ignore_eos = 0;
    req.sp.min_tokens = 4;
    req.sp.logit_bias_ids[0] = r.cfg.eos_id;
    req.sp.logit_bias_vals[0] = 100;
    req.sp.n_logit_bias = 1;
    trace_run(r.e, &req, &t);
    int no_eos = 1;
    for (int i = 0; i < 4 && i < t.n_gen; i++) no_eos &= t.ids[i] != r.cfg.eos_id;
    TEST_CONDF(t.why == FINISH_STOP && t.n_gen == 5 && no_eos && t.ids[4] == r.cfg.eos_id && t.stop_token == -1,
               "min_tokens 4 with EOS at +100: 4 other tokens, then EOS (%d tokens, stop_token %d)", t.n_gen,
               t.stop_token);
    req.sp.min_tokens = 7;
    char err[ERR_LEN];
    engine_stream_t *s = NULL;
    TEST_COND("min_tokens above max_tokens refused", engine_submit(r.e, &req, &s, err) == ENGINE_E_INVALID);
    req.sp.min_tokens = 0;
    req.priority = 3;
    TEST_COND("priority refused under FCFS", engine_submit(r.e, &req, &s, err) == ENGINE_E_INVALID &&
                                                 strstr(err, "--scheduling-policy"));
    rig_close(&r);

    /* the priority policy end to end: three requests queued behind one that holds the only slot
     * start best first. No timing: every request runs until max_model_len unless cancelled, so
     * only the admitted one produces tokens; it is cancelled as soon as it shows, and the next
     * one shows. A round is done again if a stalled machine let one run to its end. */
    ep = engine_default_params();
    ep.max_num_seqs = 1;
    ep.sched_policy = ENGINE_SCHED_PRIORITY;
    ep.kv_cache_gb = 0.25;
    if (rig_open(&r, dir, ep, 0) < 0) { TEST_COND("open model", 0); return; }
    int64_t prio[3] = {5, -2, 0};
    int order[3] = {0, 0, 0}, rounds = 0, clean = 0;
    while (!clean && rounds++ < 5) {
        req = greedy_request(p, 50, engine_max_model_len(r.e) - 50);
        req.priority = -100; /* first in the queue whenever it arrives */
        engine_stream_t *s4[4]; /* the holder, then the three */
        engine_submit(r.e, &req, &s4[0], err);
        for (int i = 0; i < 3; i++) {
            req.priority = prio[i];
            engine_submit(r.e, &req, &s4[i + 1], err);
        }
        clean = 1;
        for (int k = 0; k < 4; k++) { /* k = 0: the holder */
            struct engine_event ev;
            int shown = -1;
            while (shown < 0) {
                for (int i = 0; i < 4 && shown < 0; i++)
                    if (s4[i] && engine_stream_next(s4[i], &ev, 0) == 1) shown = i;
                if (shown < 0) { struct timespec ts = {0, 1000000}; nanosleep(&ts, NULL); }
            }
            if (ev.type == ENGINE_EV_DONE) clean = 0; /* ran to its end: not a clean round */
            if (k > 0) order[k - 1] = shown - 1;
            engine_cancel(s4[shown]);
            while (ev.type != ENGINE_EV_DONE) engine_stream_next(s4[shown], &ev, -1);
            engine_stream_free(s4[shown]);
            s4[shown] = NULL;
        }
    }
    TEST_CONDF(clean && order[0] == 1 && order[1] == 2 && order[2] == 0,
               "priority: -2, then 0, then 5 (got %lld %lld %lld; %d round(s))", (long long)prio[order[0]],
               (long long)prio[order[1]], (long long)prio[order[2]], rounds);
    rig_close(&r);
}

/* --------------------------------------------------------------------------------------------- */

struct stress {
    engine_t *e;
    int vocab, eos, per_thread, seed;
    int finished, refused, lost, bad;
    pthread_mutex_t mu;
};

static void *stress_client(void *arg)
{
    struct stress *st = arg;
    uint64_t x = 0x9e3779b97f4a7c15ull * (uint64_t)(st->seed + 1);
    int32_t prompt[700];
    for (int i = 0; i < st->per_thread; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        int n = 1 + (int)(x % 600);
        prompt[0] = 1;
        for (int k = 1; k < n; k++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; prompt[k] = 3 + (int)(x % (uint64_t)(st->vocab - 3)); }
        struct engine_request req;
        memset(&req, 0, sizeof req);
        req.prompt = prompt;
        req.n_prompt = n;
        req.sp = sampling_default_params();
        req.sp.max_tokens = (int)((x >> 8) % 41);
        req.sp.temperature = (x >> 20) % 3 ? 0.8f : 0.0f;
        req.sp.top_k = (int)((x >> 24) % 50);
        req.sp.top_p = (x >> 30) % 2 ? 0.9f : 1.0f;
        req.sp.n_logprobs = (int)((x >> 32) % 4);
        req.sp.prompt_logprobs = (x >> 36) % 10 == 0;
        int32_t stops[2] = {3 + (int)((x >> 40) % 100), 3 + (int)((x >> 48) % 100)};
        req.sp.stop_ids = stops;
        req.sp.n_stop_ids = (x >> 56) % 2 ? 2 : 0;
        int cancel_after = (x >> 58) % 4 == 0 ? (int)((x >> 44) % 6) : -1; /* -1: never */
        char err[ERR_LEN];
        engine_stream_t *s;
        int rc = engine_submit(st->e, &req, &s, err);
        if (rc != ENGINE_OK) {
            pthread_mutex_lock(&st->mu);
            st->refused++;
            pthread_mutex_unlock(&st->mu);
            continue;
        }
        if (cancel_after == 0) engine_cancel(s);
        struct engine_event ev;
        int n_events = 0, n_gen = 0, got_done = 0, ok = 1;
        int32_t last = -1;
        while (engine_stream_next(s, &ev, 60000) == 1) {
            if (ev.type == ENGINE_EV_DONE) {
                got_done = 1;
                if (ev.reason == FINISH_LENGTH && n_gen != req.sp.max_tokens) ok = 0;
                if (ev.reason == FINISH_STOP && !(last == st->eos || (req.sp.n_stop_ids && (last == stops[0] || last == stops[1])))) ok = 0;
                if (ev.reason == FINISH_CANCELLED && cancel_after < 0) ok = 0;
                if (ev.reason == FINISH_ERROR) ok = 0;
                break;
            }
            if (ev.type == ENGINE_EV_TOKEN) { n_gen++; last = ev.token; }
            if (++n_events == cancel_after) engine_cancel(s);
            if (cancel_after > 0 && (x >> 62) == 3 && n_events == cancel_after) break; /* free early */
        }
        int early_free = !got_done && cancel_after > 0;
        engine_stream_free(s);
        pthread_mutex_lock(&st->mu);
        if (got_done || early_free) st->finished++;
        else st->lost++;
        if (!ok) st->bad++;
        pthread_mutex_unlock(&st->mu);
    }
    return NULL;
}

static void test_stress(const char *dir, int n_total)
{
    struct engine_params ep = engine_default_params();
    ep.max_num_seqs = 32;
    ep.max_batched_tokens = 512;
    ep.max_queue = 12;
    /* a small pool (1300 tokens, prompts up to 640): admission control and preemption both happen */
    ep.block_size = 16;
    struct rig r;
    if (rig_open(&r, dir, ep, 1300) < 0) { TEST_COND("open model", 0); return; }
    enum { T = 8 };
    struct stress st[T];
    pthread_t th[T];
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    double t0 = now_s();
    for (int i = 0; i < T; i++) {
        memset(&st[i], 0, sizeof st[i]);
        st[i].e = r.e;
        st[i].vocab = r.cfg.vocab_size;
        st[i].eos = r.cfg.eos_id;
        st[i].per_thread = n_total / T;
        st[i].seed = i;
        st[i].mu = mu;
        pthread_create(&th[i], NULL, stress_client, &st[i]);
    }
    int fin = 0, ref = 0, lost = 0, bad = 0;
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        fin += st[i].finished; ref += st[i].refused; lost += st[i].lost; bad += st[i].bad;
    }
    /* the engine finishes abandoned streams at its next step: wait for it to go idle */
    struct engine_stats s;
    for (int k = 0; k < 500; k++) {
        engine_get_stats(r.e, &s);
        if (s.num_running == 0 && s.num_waiting == 0) break;
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    printf("stress: %d requests in %.1fs: %d finished, %d refused (queue full), %d lost, %d inconsistent; "
           "%llu preemptions, %llu steps\n", T * (n_total / T), now_s() - t0, fin, ref, lost, bad,
           (unsigned long long)s.preemptions, (unsigned long long)s.steps);
    TEST_COND("every request finished or was refused", fin + ref == T * (n_total / T) && lost == 0);
    TEST_COND("finish reasons consistent with the events", bad == 0);
    TEST_CONDF(s.kv_blocks_used == 0, "every block released (%d referenced)", s.kv_blocks_used);
    TEST_COND("nothing running or waiting", s.num_running == 0 && s.num_waiting == 0);
    TEST_COND("preemption exercised", s.preemptions > 0);
    rig_close(&r);
}

/* Issue 16: --max-queue counts only the requests that must wait. A burst of 120 into 64 free
 * slots with --max-queue 8 admits at least 64 + 8 (the engine may start some in between, which
 * only frees more room); the rest get ENGINE_E_QUEUE_FULL. */
static void test_queue_counts_free_slots(const char *dir)
{
    struct engine_params ep = engine_default_params();
    ep.max_num_seqs = 64;
    ep.max_batched_tokens = 512;
    ep.max_queue = 8;
    struct rig r;
    if (rig_open(&r, dir, ep, 4096) < 0) { TEST_COND("open model", 0); return; }
    enum { N = 120 };
    engine_stream_t *st[N];
    int ok = 0, full = 0, other = 0;
    int32_t prompt[4] = {1, 5, 6, 7};
    for (int i = 0; i < N; i++) {
        struct engine_request req;
        memset(&req, 0, sizeof req);
        req.prompt = prompt;
        req.n_prompt = 4;
        req.sp = sampling_default_params();
        req.sp.max_tokens = 8;
        char err[ERR_LEN];
        st[i] = NULL;
        int rc = engine_submit(r.e, &req, &st[i], err);
        if (rc == ENGINE_OK) ok++;
        else if (rc == ENGINE_E_QUEUE_FULL) full++;
        else other++;
    }
    TEST_CONDF(ok >= 64 + 8, "a burst of %d into 64 free slots, --max-queue 8: %d admitted (>= 72), %d x 429", N, ok, full);
    TEST_COND("the others refused as queue full", other == 0 && ok + full == N);
    for (int i = 0; i < N; i++) {
        if (!st[i]) continue;
        struct engine_event ev;
        while (engine_stream_next(st[i], &ev, -1) == 1 && ev.type != ENGINE_EV_DONE) {}
        engine_stream_free(st[i]);
    }
    rig_close(&r);
}

int main(int argc, char **argv)
{
    const char *dir = "build/demo-model";
    int n = 1000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--short")) n = 160;
    }
    log_min_level = LOG_WARN;
    test_batch_invariance(dir);
    test_prefix_cache(dir);
    test_request_extras(dir);
    test_queue_counts_free_slots(dir);
    test_stress(dir, n);
    return test_report("test_batching");
}
