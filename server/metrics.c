/* metrics.c - Prometheus text exposition (version 0.0.4) under the prefix `ropeserve:` with vLLM's
 * metric names and suffixes, so dashboards, autoscalers and inference-gateway endpoint pickers
 * written for `vllm:*` work after a prefix swap.
 *
 * Gauges (running, waiting, KV usage) are read live from engine_get_stats() at scrape time, so
 * they can never drift from the engine; counters of tokens come from the engine too. Per-request
 * outcomes and latency histograms are recorded here by the HTTP side when a choice finishes.
 * KV usage counts referenced blocks only (blocks kept for prefix reuse are free to take), so it
 * returns to 0 when the server is idle. One mutex guards the registry; a scrape copies it. */
#include "server_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* vLLM's buckets (vllm/v1/metrics/loggers.py); TTFT reaches 2560 s for 128k prefills. */
static const double ttft_buckets[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                      0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0,
                                      640.0, 2560.0};
static const double tpot_buckets[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                                      0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
static const double e2e_buckets[] = {0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
                                     30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0,
                                     7680.0};
static const double tok_buckets[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000,
                                     20000, 50000, 100000, 131072, 200000};

#define NB_MAX 32

struct histo {
    const double *le;
    int n;
    uint64_t counts[NB_MAX]; /* per bucket (not cumulative); [n] = +Inf */
    double sum;
    uint64_t count;
};

static const char *const reasons[] = {"stop", "length", "abort", "error"};
#define N_REASONS 4

struct metrics {
    pthread_mutex_t mu;
    uint64_t success[N_REASONS];
    struct histo ttft, tpot, e2e, req_prompt, req_gen;
    uint64_t http[6]; /* 1xx..5xx by first digit; [0] other */
};

static void histo_init(struct histo *h, const double *le, int n)
{
    memset(h, 0, sizeof *h);
    h->le = le;
    h->n = n;
}

static void histo_add(struct histo *h, double v)
{
    int i = 0;
    while (i < h->n && v > h->le[i]) i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

#define NB(a) ((int)(sizeof(a) / sizeof(a)[0]))

struct metrics *metrics_new(void)
{
    struct metrics *m = xcalloc(1, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    histo_init(&m->ttft, ttft_buckets, NB(ttft_buckets));
    histo_init(&m->tpot, tpot_buckets, NB(tpot_buckets));
    histo_init(&m->e2e, e2e_buckets, NB(e2e_buckets));
    histo_init(&m->req_prompt, tok_buckets, NB(tok_buckets));
    histo_init(&m->req_gen, tok_buckets, NB(tok_buckets));
    return m;
}

void metrics_free(struct metrics *m)
{
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void metrics_observe(struct metrics *m, const char *finish, int n_prompt, int n_gen, double ttft_s,
                     double e2e_s)
{
    pthread_mutex_lock(&m->mu);
    for (int i = 0; i < N_REASONS; i++)
        if (finish && !strcmp(finish, reasons[i])) m->success[i]++;
    if (ttft_s >= 0) histo_add(&m->ttft, ttft_s);
    if (n_gen > 1 && ttft_s >= 0) histo_add(&m->tpot, (e2e_s - ttft_s) / (n_gen - 1));
    histo_add(&m->e2e, e2e_s);
    histo_add(&m->req_prompt, n_prompt);
    histo_add(&m->req_gen, n_gen);
    pthread_mutex_unlock(&m->mu);
}

void metrics_count_http(struct metrics *m, int status)
{
    int k = status / 100;
    pthread_mutex_lock(&m->mu);
    m->http[(k >= 1 && k <= 5) ? k : 0]++;
    pthread_mutex_unlock(&m->mu);
}

static void put_histo(struct strbuf *b, const char *name, const char *help, const struct histo *h,
                      const char *label)
{
    sb_printf(b, "# HELP ropeserve:%s %s\n# TYPE ropeserve:%s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < h->n; i++) {
        cum += h->counts[i];
        sb_printf(b, "ropeserve:%s_bucket{%s,le=\"%g\"} %llu\n", name, label, h->le[i],
                  (unsigned long long)cum);
    }
    cum += h->counts[h->n];
    sb_printf(b, "ropeserve:%s_bucket{%s,le=\"+Inf\"} %llu\n", name, label, (unsigned long long)cum);
    sb_printf(b, "ropeserve:%s_sum{%s} %.9g\n", name, label, h->sum);
    sb_printf(b, "ropeserve:%s_count{%s} %llu\n", name, label, (unsigned long long)h->count);
}

static void put_one(struct strbuf *b, const char *name, const char *type, const char *help,
                    const char *label, double v)
{
    sb_printf(b, "# HELP ropeserve:%s %s\n# TYPE ropeserve:%s %s\nropeserve:%s{%s} %.9g\n", name,
              help, name, type, name, label, v);
}

char *metrics_render(struct metrics *m, engine_t *e, const char *model_name)
{
    struct metrics snap;
    pthread_mutex_lock(&m->mu);
    snap = *m;
    pthread_mutex_unlock(&m->mu);

    struct engine_stats st;
    memset(&st, 0, sizeof st);
    if (e) engine_get_stats(e, &st);

    /* model names come from the CLI; keep the label value free of quotes and backslashes */
    char name[128];
    size_t k = 0;
    for (const char *p = model_name ? model_name : ""; *p && k + 1 < sizeof name; p++)
        name[k++] = (*p == '"' || *p == '\\' || *p == '\n') ? '_' : *p;
    name[k] = 0;
    char label[160];
    snprintf(label, sizeof label, "model_name=\"%s\"", name);

    struct strbuf b = {0};
    sb_append(&b, "", 0);
    put_one(&b, "num_requests_running", "gauge", "Number of requests in model execution batches.",
            label, st.num_running);
    put_one(&b, "num_requests_waiting", "gauge", "Number of requests waiting to be processed.",
            label, st.num_waiting);
    put_one(&b, "kv_cache_usage_perc", "gauge",
            "KV-cache usage. 1 means 100 percent usage (blocks referenced by a sequence).", label,
            st.kv_blocks_total > 0 ? (double)st.kv_blocks_used / st.kv_blocks_total : 0.0);
    put_one(&b, "kv_cache_blocks_total", "gauge", "KV-cache blocks in the pool.", label,
            st.kv_blocks_total);
    put_one(&b, "kv_cache_blocks_cached", "gauge",
            "Unreferenced KV-cache blocks kept for prefix reuse.", label, st.kv_blocks_cached);
    put_one(&b, "prefix_cache_queries_total", "counter",
            "Prefix cache queries, in terms of number of queried tokens.", label,
            (double)st.prefix_queries);
    put_one(&b, "prefix_cache_hits_total", "counter",
            "Prefix cache hits, in terms of number of cached tokens.", label, (double)st.prefix_hits);
    put_one(&b, "num_preemptions_total", "counter", "Cumulative number of preemptions.", label,
            (double)st.preemptions);
    put_one(&b, "kv_cache_blocks_window_freed_total", "counter",
            "KV-cache blocks released because they fell below every layer's sliding window.", label,
            (double)st.kv_blocks_window_freed);
    put_one(&b, "prompt_tokens_total", "counter", "Number of prefill tokens processed.", label,
            (double)st.prompt_tokens);
    put_one(&b, "generation_tokens_total", "counter", "Number of generation tokens processed.",
            label, (double)st.generation_tokens);
    put_one(&b, "iteration_steps_total", "counter", "Forward passes run by the engine.", label,
            (double)st.steps);

    sb_printf(&b, "# HELP ropeserve:request_success_total Count of successfully processed "
                  "requests.\n# TYPE ropeserve:request_success_total counter\n");
    for (int i = 0; i < N_REASONS; i++)
        sb_printf(&b, "ropeserve:request_success_total{%s,finished_reason=\"%s\"} %llu\n", label,
                  reasons[i], (unsigned long long)snap.success[i]);
    sb_printf(&b, "# HELP ropeserve:http_responses_total HTTP responses by status class.\n"
                  "# TYPE ropeserve:http_responses_total counter\n");
    for (int i = 1; i <= 5; i++)
        sb_printf(&b, "ropeserve:http_responses_total{%s,status=\"%dxx\"} %llu\n", label, i,
                  (unsigned long long)snap.http[i]);

    put_histo(&b, "time_to_first_token_seconds", "Histogram of time to first token in seconds.",
              &snap.ttft, label);
    put_histo(&b, "time_per_output_token_seconds",
              "Histogram of time per output token in seconds.", &snap.tpot, label);
    put_histo(&b, "e2e_request_latency_seconds",
              "Histogram of end to end request latency in seconds.", &snap.e2e, label);
    put_histo(&b, "request_prompt_tokens", "Number of prefill tokens processed.", &snap.req_prompt,
              label);
    put_histo(&b, "request_generation_tokens", "Number of generation tokens processed.",
              &snap.req_gen, label);
    return b.p;
}
