/* eval.c - `ropeserve eval passkey` and `ropeserve eval perplexity`: long-context quality
 * measured the way PoSE measured it, in process or against any OpenAI-compatible server.
 *
 * Both tasks talk to a target through three operations:
 *   count     text -> token ids, as the target tokenizes a completion prompt (BOS included when
 *             the target adds one);
 *   complete  greedy continuation of a text prompt (in process: of its ids), up to N tokens;
 *   score     log p(ids[i] | ids[<i]) for i >= 1 of a prompt given as token ids.
 * In process (--model) they run on the engine, through the same scheduler and RoPE as `serve`,
 * so every RoPE override flag applies. Over HTTP (--url) they are POST /tokenize (vLLM /
 * ropeserve: {"prompt"}; llama.cpp: {"content"}), else usage.prompt_tokens of a one-token
 * completion; /v1/completions with temperature 0; /v1/completions with echo, logprobs and
 * max_tokens 0 (1 where a server refuses 0), taking the first n prompt logprobs (a null first
 * one is the norm and is skipped).
 *
 * passkey (PoSE src/eval_passkey.py, prompt from landmark-attention; REFERENCES-rope.md §5.5):
 *   task line \n garbage x n_pre \n "The pass key is N. Remember it. N is the pass key."
 *   \n garbage x n_suf \n "What is the pass key? The pass key is"
 * N uniform in 1..50000 (splitmix64 from --seed), depth of trial t of T = (t + 0.5) / T of the
 * garbage, the garbage count the largest whose tokenized prompt fits the length (and leaves
 * room for the 10 answer tokens within max_model_len); greedy, 10 new tokens, the first integer
 * of the answer compared with N.
 * perplexity (PoSE src/eval_ppl.py §5.6): BOS + text tokens [begin, begin + W - 1), begin
 * stepping by the stride; only tokens not scored by an earlier window count; the mean NLL is
 * accumulated in double, ppl = exp(sum / n).
 *
 * Rejected alternatives: Python tools (the comparison must run where only the binary is, and
 * in process through our own engine); estimating prompt length from characters (the usage
 * field gives the server's own count at the cost of one token); teacher forcing the answer
 * (greedy decoding is the protocol everyone reports). */
#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "../common/common.h"
#include "../engine/engine.h"
#include "../tokenizer/tokenizer.h"
#include "server.h"

#define PK_MAX_NEW 10

static const char *const pk_task =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
    "them. I will quiz you about the important information there.";
static const char *const pk_garbage =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
static const char *const pk_question = "What is the pass key? The pass key is";

struct eval_params eval_default_params(void)
{
    struct eval_params p;
    memset(&p, 0, sizeof p);
    p.trials = 10;
    p.seed = 1;
    return p;
}

/* ---------------------------------------------------------------------------------------------
 * targets */

struct target {
    /* in process */
    engine_t *engine;
    const tokenizer_t *tok;
    /* HTTP */
    const struct eval_params *p;
    CURL *curl;
    char model[256];
    int tokenize_dialect;  /* 0 unknown, 1 {"prompt"}, 2 {"content"}, 3 none: usage */
    int score_max_tokens;  /* 0, or 1 once a server refused 0 */
    int bos_id;            /* -1: the target adds none */
    int max_model_len;     /* 0: unknown */
    const char *desc;
};

struct buf {
    char *p;
    size_t n;
};

static size_t buf_write(char *data, size_t size, size_t nmemb, void *ud)
{
    struct buf *b = ud;
    size_t n = size * nmemb;
    b->p = xrealloc(b->p, b->n + n + 1);
    memcpy(b->p + b->n, data, n);
    b->n += n;
    b->p[b->n] = 0;
    return n;
}

/* One request; body NULL = GET. On success *out is the parsed JSON and *status the HTTP code
 * (any code: the caller decides). Returns 0, or <0 with err on transport/JSON failure. */
static int http_json(struct target *t, const char *path, const cJSON *body, long *status,
                     cJSON **out, char *err)
{
    char url[2048];
    size_t ul = strlen(t->p->url);
    while (ul > 0 && t->p->url[ul - 1] == '/') ul--;
    snprintf(url, sizeof url, "%.*s%s", (int)ul, t->p->url, path);
    struct buf b = {0};
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    char auth[1024];
    if (t->p->api_key) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", t->p->api_key);
        h = curl_slist_append(h, auth);
    }
    char *js = body ? cJSON_PrintUnformatted(body) : NULL;
    curl_easy_reset(t->curl);
    curl_easy_setopt(t->curl, CURLOPT_URL, url);
    curl_easy_setopt(t->curl, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(t->curl, CURLOPT_WRITEFUNCTION, buf_write);
    curl_easy_setopt(t->curl, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(t->curl, CURLOPT_CONNECTTIMEOUT, 30L);
    curl_easy_setopt(t->curl, CURLOPT_TIMEOUT, 7200L); /* a hang guard: 128k prefills are slow */
    curl_easy_setopt(t->curl, CURLOPT_NOSIGNAL, 1L);
    if (js) curl_easy_setopt(t->curl, CURLOPT_POSTFIELDS, js);
    CURLcode rc = curl_easy_perform(t->curl);
    curl_slist_free_all(h);
    free(js);
    if (rc != CURLE_OK) {
        free(b.p);
        return set_err(err, -1, "%s: %s", url, curl_easy_strerror(rc));
    }
    curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, status);
    *out = b.p ? cJSON_Parse(b.p) : NULL;
    if (!*out) {
        int r = set_err(err, -1, "%s: HTTP %ld, the response is not JSON: %.200s", url, *status,
                        b.p ? b.p : "(empty)");
        free(b.p);
        return r;
    }
    free(b.p);
    return 0;
}

/* The error message of an OpenAI-shaped (or any) error body. */
static const char *error_text(const cJSON *r)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(r, "error");
    const cJSON *m = cJSON_IsObject(e) ? cJSON_GetObjectItemCaseSensitive(e, "message") : NULL;
    if (cJSON_IsString(m)) return m->valuestring;
    if (cJSON_IsString(e)) return e->valuestring;
    m = cJSON_GetObjectItemCaseSensitive(r, "message");
    if (!m) m = cJSON_GetObjectItemCaseSensitive(r, "detail");
    return cJSON_IsString(m) ? m->valuestring : "(no message)";
}

static int ids_from_json(const cJSON *a, int32_t **ids, char *err)
{
    int n = cJSON_GetArraySize(a);
    *ids = xmalloc(sizeof(int32_t) * (n ? n : 1));
    int i = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, a)
    {
        if (!cJSON_IsNumber(x)) {
            free(*ids);
            *ids = NULL;
            return set_err(err, -1, "token list item %d is not a number", i);
        }
        (*ids)[i++] = (int32_t)x->valuedouble;
    }
    return n;
}

static cJSON *completion_body(struct target *t, int max_tokens)
{
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "model", t->model);
    cJSON_AddNumberToObject(b, "max_tokens", max_tokens);
    cJSON_AddNumberToObject(b, "temperature", 0);
    return b;
}

/* POST /v1/completions; returns choices[0] (owned by *resp) or NULL with err. */
static const cJSON *completion(struct target *t, cJSON *body, long *status, cJSON **resp, char *err)
{
    *resp = NULL;
    if (http_json(t, "/v1/completions", body, status, resp, err) < 0) return NULL;
    if (*status != 200) {
        set_err(err, -1, "/v1/completions: HTTP %ld: %s", *status, error_text(*resp));
        return NULL;
    }
    const cJSON *ch = cJSON_GetObjectItemCaseSensitive(*resp, "choices");
    const cJSON *c0 = cJSON_IsArray(ch) ? cJSON_GetArrayItem(ch, 0) : NULL;
    if (!cJSON_IsObject(c0)) set_err(err, -1, "/v1/completions: no choices[0] in the response");
    return c0;
}

/* Text -> ids as the target tokenizes a prompt. Returns the count (ids may be NULL when only
 * the count is known: the usage fallback), or <0 with err. */
static int target_count(struct target *t, const char *text, int32_t **ids, char *err)
{
    *ids = NULL;
    if (t->engine) return tokenizer_encode(t->tok, text, strlen(text), 1, ids, err);
    char e2[ERR_LEN];
    for (int d = t->tokenize_dialect ? t->tokenize_dialect : 1; d <= 3; d++) {
        cJSON *resp = NULL;
        long st = 0;
        int n = -1;
        if (d < 3) {
            cJSON *b = cJSON_CreateObject();
            if (d == 1) {
                cJSON_AddStringToObject(b, "model", t->model);
                cJSON_AddStringToObject(b, "prompt", text);
            } else {
                cJSON_AddStringToObject(b, "content", text);
                cJSON_AddBoolToObject(b, "add_special", 1);
            }
            int rc = http_json(t, "/tokenize", b, &st, &resp, e2);
            cJSON_Delete(b);
            const cJSON *a = rc == 0 && st == 200 ? cJSON_GetObjectItemCaseSensitive(resp, "tokens") : NULL;
            if (cJSON_IsArray(a)) n = ids_from_json(a, ids, err);
        } else { /* the server's own count, at the cost of one generated token */
            cJSON *b = completion_body(t, 1);
            cJSON_AddStringToObject(b, "prompt", text);
            const cJSON *c0 = completion(t, b, &st, &resp, err);
            cJSON_Delete(b);
            const cJSON *u = c0 ? cJSON_GetObjectItemCaseSensitive(resp, "usage") : NULL;
            const cJSON *pt = cJSON_IsObject(u) ? cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens") : NULL;
            if (!c0) {
                cJSON_Delete(resp);
                return -1;
            }
            if (!cJSON_IsNumber(pt)) {
                cJSON_Delete(resp);
                return set_err(err, -1, "%s has no /tokenize and its completions carry no "
                               "usage.prompt_tokens: cannot size prompts", t->p->url);
            }
            n = (int)pt->valuedouble;
        }
        cJSON_Delete(resp);
        if (n >= 0) {
            if (t->tokenize_dialect != d) {
                static const char *how[] = {"", "POST /tokenize {prompt}", "POST /tokenize {content}",
                                            "usage.prompt_tokens of a 1-token completion"};
                LOG_I("eval: prompts are sized by %s", how[d]);
            }
            t->tokenize_dialect = d;
            return n;
        }
        if (t->tokenize_dialect) return n < 0 ? set_err(err, -1, "/tokenize stopped working") : n;
    }
    return -1;
}

/* A greedy request on the engine: max_new tokens (0: score only), with prompt logprobs. */
static int submit_local(struct target *t, const int32_t *ids, int n, int max_new, int prompt_lp,
                        engine_stream_t **s, char *err)
{
    struct engine_request req;
    memset(&req, 0, sizeof req);
    req.prompt = ids;
    req.n_prompt = n;
    req.sp = sampling_default_params();
    req.sp.temperature = 0;
    req.sp.max_tokens = max_new;
    req.sp.prompt_logprobs = prompt_lp;
    snprintf(req.id, sizeof req.id, "eval");
    return engine_submit(t->engine, &req, s, err) == ENGINE_OK ? 0 : -1;
}

static void append(char **txt, size_t *len, const char *piece, int n)
{
    if (n <= 0) return;
    *txt = xrealloc(*txt, *len + n + 1);
    memcpy(*txt + *len, piece, n);
    *len += n;
    (*txt)[*len] = 0;
}

/* Greedy continuation of up to max_new tokens; *out is malloc'd text. */
static int target_complete(struct target *t, const char *text, const int32_t *ids, int n,
                           int max_new, char **out, char *err)
{
    *out = NULL;
    if (t->engine) {
        engine_stream_t *s;
        if (submit_local(t, ids, n, max_new, 0, &s, err) < 0) return -1;
        tok_stream_t *ts = tok_stream_new(t->tok, ids, n);
        size_t len = 0;
        char *txt = xcalloc(1, 1);
        struct engine_event ev;
        int rc = 0;
        while (engine_stream_next(s, &ev, -1) == 1) {
            if (ev.type == ENGINE_EV_DONE) {
                if (ev.reason == FINISH_ERROR) rc = set_err(err, -1, "%s", ev.err);
                break;
            }
            if (ev.type != ENGINE_EV_TOKEN) continue;
            const char *piece;
            int pl = tok_stream_push(ts, ev.token, &piece);
            append(&txt, &len, piece, pl);
        }
        const char *piece;
        int pl = tok_stream_finish(ts, &piece);
        append(&txt, &len, piece, pl);
        tok_stream_free(ts);
        engine_stream_free(s);
        if (rc < 0) {
            free(txt);
            return rc;
        }
        *out = txt;
        return 0;
    }
    cJSON *b = completion_body(t, max_new), *resp;
    cJSON_AddStringToObject(b, "prompt", text);
    long st;
    const cJSON *c0 = completion(t, b, &st, &resp, err);
    cJSON_Delete(b);
    const cJSON *tx = c0 ? cJSON_GetObjectItemCaseSensitive(c0, "text") : NULL;
    if (c0 && !cJSON_IsString(tx)) set_err(err, -1, "/v1/completions: choices[0].text is not a string");
    if (cJSON_IsString(tx)) *out = xstrdup(tx->valuestring);
    cJSON_Delete(resp);
    return *out ? 0 : -1;
}

/* lp[i] = log p(ids[i] | ids[<i]) for 1 <= i < n (lp[0] = NAN). */
static int target_score(struct target *t, const int32_t *ids, int n, double *lp, char *err)
{
    for (int i = 0; i < n; i++) lp[i] = NAN;
    if (t->engine) {
        engine_stream_t *s;
        if (submit_local(t, ids, n, 0, 1, &s, err) < 0) return -1;
        struct engine_event ev;
        int k = 0, rc = 0;
        while (engine_stream_next(s, &ev, -1) == 1) {
            if (ev.type == ENGINE_EV_DONE) {
                if (ev.reason == FINISH_ERROR) rc = set_err(err, -1, "%s", ev.err);
                break;
            }
            if (ev.type == ENGINE_EV_PROMPT_TOKEN && k < n) lp[k++] = ev.logprob;
        }
        engine_stream_free(s);
        if (rc == 0 && k != n) rc = set_err(err, -1, "the engine returned %d prompt logprobs for %d tokens", k, n);
        lp[0] = NAN;
        return rc;
    }
    for (;;) {
        cJSON *b = completion_body(t, t->score_max_tokens), *resp;
        cJSON *arr = cJSON_AddArrayToObject(b, "prompt");
        for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids[i]));
        cJSON_AddBoolToObject(b, "echo", 1);
        cJSON_AddNumberToObject(b, "logprobs", 1);
        long st = 0;
        const cJSON *c0 = completion(t, b, &st, &resp, err);
        cJSON_Delete(b);
        if (!c0 && st == 400 && t->score_max_tokens == 0) { /* a server that wants >= 1 */
            cJSON_Delete(resp);
            t->score_max_tokens = 1;
            LOG_I("eval: the server refused max_tokens 0 (%s); scoring with max_tokens 1", err);
            continue;
        }
        if (!c0) {
            cJSON_Delete(resp);
            return -1;
        }
        const cJSON *lpo = cJSON_GetObjectItemCaseSensitive(c0, "logprobs");
        const cJSON *tl = cJSON_IsObject(lpo) ? cJSON_GetObjectItemCaseSensitive(lpo, "token_logprobs") : NULL;
        int m = cJSON_IsArray(tl) ? cJSON_GetArraySize(tl) : 0;
        if (m < n) {
            cJSON_Delete(resp);
            return set_err(err, -1, "/v1/completions with echo + logprobs returned %d token "
                           "logprobs for a %d-token prompt (does the server support echo?)", m, n);
        }
        for (int i = 1; i < n; i++) {
            const cJSON *x = cJSON_GetArrayItem(tl, i);
            if (!cJSON_IsNumber(x)) {
                cJSON_Delete(resp);
                return set_err(err, -1, "prompt token %d has no logprob in the response", i);
            }
            lp[i] = x->valuedouble;
        }
        cJSON_Delete(resp);
        return 0;
    }
}

static int target_open_http(struct target *t, char *err)
{
    static int curl_ready;
    if (!curl_ready) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        curl_ready = 1;
    }
    t->curl = curl_easy_init();
    CHECK(t->curl, "curl_easy_init");
    if (t->p->remote_model) {
        snprintf(t->model, sizeof t->model, "%s", t->p->remote_model);
    } else {
        cJSON *resp;
        long st;
        if (http_json(t, "/v1/models", NULL, &st, &resp, err) < 0) return -1;
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(resp, "data");
        const cJSON *m0 = cJSON_IsArray(d) ? cJSON_GetArrayItem(d, 0) : NULL;
        const cJSON *id = m0 ? cJSON_GetObjectItemCaseSensitive(m0, "id") : NULL;
        if (st != 200 || !cJSON_IsString(id)) {
            int rc = set_err(err, -1, "%s/v1/models: HTTP %ld, no model id (%s); pass --remote-model",
                             t->p->url, st, st == 200 ? "empty list" : error_text(resp));
            cJSON_Delete(resp);
            return rc;
        }
        snprintf(t->model, sizeof t->model, "%s", id->valuestring);
        const cJSON *ml = cJSON_GetObjectItemCaseSensitive(m0, "max_model_len");
        if (cJSON_IsNumber(ml)) t->max_model_len = (int)ml->valuedouble;
        cJSON_Delete(resp);
    }
    /* BOS: what the target puts before an empty prompt */
    int32_t *ids;
    int n = target_count(t, "", &ids, err);
    if (n < 0) return -1;
    t->bos_id = n >= 1 && ids ? ids[0] : -1;
    free(ids);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * passkey */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static char *pk_prompt(int key, int n_pre, int n_suf)
{
    size_t gl = strlen(pk_garbage);
    size_t cap = strlen(pk_task) + (size_t)(n_pre + n_suf) * gl + strlen(pk_question) + 128;
    char *s = xmalloc(cap), *p = s;
    p += sprintf(p, "%s\n", pk_task);
    for (int i = 0; i < n_pre; i++, p += gl) memcpy(p, pk_garbage, gl);
    p += sprintf(p, "\nThe pass key is %d. Remember it. %d is the pass key.\n", key, key);
    for (int i = 0; i < n_suf; i++, p += gl) memcpy(p, pk_garbage, gl);
    sprintf(p, "\n%s", pk_question);
    return s;
}

/* The largest garbage count whose prompt (key, depth) is at most `limit` tokens, starting from
 * the estimate `guess`; the prompt and its ids are returned. */
static int pk_fit(struct target *t, int key, double depth, int limit, int guess, char **text,
                  int32_t **ids, int *n_ids, int *n_garbage, char *err)
{
    int g = guess < 0 ? 0 : guess, best = -1, hi = -1;
    *text = NULL;
    *ids = NULL;
    for (int iter = 0; iter < 64; iter++) {
        int pre = (int)lround(depth * g);
        char *s = pk_prompt(key, pre, g - pre);
        int32_t *v;
        int n = target_count(t, s, &v, err);
        if (n < 0) {
            free(s);
            return -1;
        }
        if (n <= limit) {
            if (g > best) {
                free(*text);
                free(*ids);
                *text = s;
                *ids = v;
                *n_ids = n;
                best = g;
            } else {
                free(s);
                free(v);
            }
            if (hi >= 0 && g + 1 >= hi) break;
            g++;
        } else {
            free(s);
            free(v);
            hi = g;
            if (g == 0) break;
            if (best >= 0 && best + 1 >= hi) break;
            g--;
        }
    }
    if (best < 0) {
        free(*text);
        free(*ids);
        *text = NULL;
        *ids = NULL;
        return set_err(err, -1, "a passkey prompt does not fit in %d tokens", limit);
    }
    *n_garbage = best;
    return 0;
}

static int first_int(const char *s, long *v)
{
    while (*s && !isdigit((unsigned char)*s)) s++;
    if (!*s) return 0;
    *v = 0;
    for (; isdigit((unsigned char)*s) && *v < 100000000; s++) *v = *v * 10 + (*s - '0');
    return 1;
}

static int run_passkey(struct target *t, const struct eval_params *p, cJSON *res, char *err)
{
    uint64_t rng = p->seed;
    /* tokens per garbage repetition: from prompts with 0 and 20 repetitions */
    int32_t *v;
    char *s0 = pk_prompt(1, 0, 0), *s1 = pk_prompt(1, 0, 20);
    int n0 = target_count(t, s0, &v, err);
    free(v);
    int n1 = n0 < 0 ? -1 : target_count(t, s1, &v, err);
    free(v);
    free(s0);
    free(s1);
    if (n1 < 0) return -1;
    double per = (n1 - n0) / 20.0;
    printf("passkey retrieval: %s; %d trials per length, depths (t+0.5)/%d, greedy, %d new tokens\n",
           t->desc, p->trials, p->trials, PK_MAX_NEW);
    printf("%8s %14s %10s %9s\n", "length", "prompt tokens", "correct", "accuracy");
    fflush(stdout);
    cJSON *rows = cJSON_AddArrayToObject(res, "lengths");
    for (int li = 0; li < p->n_lengths; li++) {
        int len = p->lengths[li], limit = len;
        if (t->max_model_len > 0 && limit > t->max_model_len - PK_MAX_NEW)
            limit = t->max_model_len - PK_MAX_NEW;
        if (limit < n0) return set_err(err, -1, "length %d: the bare passkey prompt needs %d tokens", len, n0);
        int correct = 0;
        long tok_sum = 0;
        double t0 = now_s();
        for (int tr = 0; tr < p->trials; tr++) {
            int key = (int)(splitmix64(&rng) % 50000) + 1;
            double depth = (tr + 0.5) / p->trials;
            char *text, *ans;
            int32_t *ids;
            int n = 0, ng = 0;
            if (pk_fit(t, key, depth, limit, (int)((limit - n0) / per), &text, &ids, &n, &ng, err) < 0) return -1;
            int rc = target_complete(t, text, ids, n, PK_MAX_NEW, &ans, err);
            free(text);
            free(ids);
            if (rc < 0) return -1;
            long got = -1;
            int ok = first_int(ans, &got) && got == key;
            correct += ok;
            tok_sum += n;
            LOG_D("passkey length %d trial %d: depth %.2f, %d tokens, key %d, answer '%s' -> %s", len, tr,
                  depth, n, key, ans, ok ? "ok" : "wrong");
            free(ans);
        }
        double acc = p->trials ? (double)correct / p->trials : 0;
        printf("%8d %14.0f %7d/%-2d %8.1f%%\n", len, (double)tok_sum / p->trials, correct, p->trials, 100 * acc);
        fflush(stdout);
        LOG_I("passkey length %d: %d/%d in %.1fs", len, correct, p->trials, now_s() - t0);
        cJSON *r = cJSON_CreateObject();
        cJSON_AddNumberToObject(r, "length", len);
        cJSON_AddNumberToObject(r, "prompt_tokens", (double)tok_sum / p->trials);
        cJSON_AddNumberToObject(r, "trials", p->trials);
        cJSON_AddNumberToObject(r, "correct", correct);
        cJSON_AddNumberToObject(r, "accuracy", acc);
        cJSON_AddItemToArray(rows, r);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * perplexity */

static int read_file(const char *path, char **out, size_t *len, char *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) return set_err(err, -1, "--text %s: cannot open", path);
    char *s = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 65536 + 1 > cap) s = xrealloc(s, cap = (n + 65536 + 1) * 2);
        size_t r = fread(s + n, 1, 65536, f);
        n += r;
        if (r < 65536) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(s);
        return set_err(err, -1, "--text %s: read error", path);
    }
    s[n] = 0;
    if (!utf8_valid(s, n)) {
        free(s);
        return set_err(err, -1, "--text %s: not UTF-8 text", path);
    }
    *out = s;
    *len = n;
    return 0;
}

static int run_perplexity(struct target *t, const struct eval_params *p, cJSON *res, char *err)
{
    char *text = NULL;
    size_t tl = 0;
    if (read_file(p->text, &text, &tl, err) < 0) return -1;
    if (p->max_text_tokens > 0 && tl > (size_t)p->max_text_tokens * 16) { /* fewer bytes to tokenize */
        tl = (size_t)p->max_text_tokens * 16;
        while (tl > 0 && ((unsigned char)text[tl] & 0xC0) == 0x80) tl--;
        text[tl] = 0;
    }
    int32_t *all;
    int n = target_count(t, text, &all, err);
    free(text);
    if (n < 0) return -1;
    if (!all) return set_err(err, -1, "perplexity needs the token ids of the text: %s has no /tokenize", p->url);
    /* the text's own tokens: without the BOS the tokenizer put first */
    int bos = t->engine ? tokenizer_bos_id(t->tok) : t->bos_id;
    int off = n > 0 && bos >= 0 && all[0] == bos;
    int N = n - off;
    if (p->max_text_tokens > 0 && N > p->max_text_tokens) N = p->max_text_tokens;
    const int32_t *doc = all + off;
    printf("perplexity: %s; %s, %d tokens; BOS + windows of W - 1 text tokens, stride %s\n", t->desc,
           p->text, N, p->stride > 0 ? "as given" : "W/2");
    printf("%8s %8s %8s %10s %12s\n", "window", "stride", "windows", "scored", "perplexity");
    fflush(stdout);
    for (int wi = 0; wi < p->n_windows; wi++) {
        int W = p->windows[wi];
        if (t->max_model_len > 0 && W > t->max_model_len) {
            free(all);
            return set_err(err, -1, "--windows %d exceeds the target's max_model_len %d", W, t->max_model_len);
        }
        if (W < 2) {
            free(all);
            return set_err(err, -1, "--windows %d: a window needs at least 2 tokens", W);
        }
    }
    cJSON *rows = cJSON_AddArrayToObject(res, "windows");
    int32_t *win = xmalloc(sizeof(int32_t) * (N + 1));
    double *lp = xmalloc(sizeof(double) * (N + 1));
    for (int wi = 0; wi < p->n_windows; wi++) {
        int W = p->windows[wi];
        int stride = p->stride > 0 ? p->stride : W / 2;
        if (stride < 1) stride = 1;
        double nll = 0, t0 = now_s();
        long scored = 0;
        int n_win = 0, prev_end = 0;
        for (int begin = 0; begin < N; begin += stride) {
            int end = begin + (bos >= 0 ? W - 1 : W);
            if (end > N) end = N;
            int m = 0;
            if (bos >= 0) win[m++] = bos;
            for (int i = begin; i < end; i++) win[m++] = doc[i];
            if (target_score(t, win, m, lp, err) < 0) {
                free(win);
                free(lp);
                free(all);
                return -1;
            }
            /* window slot j holds doc[begin + j - (bos >= 0)]: score doc tokens >= prev_end */
            for (int j = 1; j < m; j++) {
                int di = begin + j - (bos >= 0);
                if (di < prev_end) continue;
                nll -= lp[j];
                scored++;
            }
            n_win++;
            prev_end = end;
            if (end == N) break;
        }
        double ppl = scored ? exp(nll / scored) : NAN;
        printf("%8d %8d %8d %10ld %12.3f\n", W, stride, n_win, scored, ppl);
        fflush(stdout);
        LOG_I("perplexity window %d: %d windows in %.1fs", W, n_win, now_s() - t0);
        cJSON *r = cJSON_CreateObject();
        cJSON_AddNumberToObject(r, "window", W);
        cJSON_AddNumberToObject(r, "stride", stride);
        cJSON_AddNumberToObject(r, "windows", n_win);
        cJSON_AddNumberToObject(r, "scored_tokens", (double)scored);
        cJSON_AddNumberToObject(r, "perplexity", ppl);
        cJSON_AddItemToArray(rows, r);
    }
    free(win);
    free(lp);
    free(all);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * entry */

int eval_run(const struct eval_params *p, engine_t *engine, const tokenizer_t *tok,
             const char *desc, char *err)
{
    int is_pk = !strcmp(p->task, "passkey"), is_ppl = !strcmp(p->task, "perplexity");
    if (!is_pk && !is_ppl) return set_err(err, -1, "eval: unknown task '%s' (passkey, perplexity)", p->task);
    if (is_pk && p->trials < 1) return set_err(err, -1, "--trials must be at least 1");
    if (is_ppl && !p->text) return set_err(err, -1, "eval perplexity: --text FILE is required");
    if (is_pk && p->text) return set_err(err, -1, "--text applies to eval perplexity only");
    if (is_ppl && p->n_lengths) return set_err(err, -1, "--lengths applies to eval passkey (perplexity takes --windows)");
    if (is_pk && (p->n_windows || p->stride || p->max_text_tokens))
        return set_err(err, -1, "--windows, --stride and --max-text-tokens apply to eval perplexity only");
    struct target t;
    memset(&t, 0, sizeof t);
    t.p = p;
    t.engine = engine;
    t.tok = tok;
    t.bos_id = -1;
    char d[512];
    if (engine) {
        t.max_model_len = engine_max_model_len(engine);
        snprintf(d, sizeof d, "%s", desc);
    } else if (target_open_http(&t, err) < 0) {
        if (t.curl) curl_easy_cleanup(t.curl);
        return -1;
    } else {
        snprintf(d, sizeof d, "%s (model '%s'%s)", p->url, t.model, t.max_model_len ? "" : ", max_model_len unknown");
    }
    t.desc = d;
    /* default lengths / windows: 512, 1k, 2k, ... up to max_model_len */
    struct eval_params q = *p;
    int defaults[32], nd = 0;
    int top = t.max_model_len > 0 ? t.max_model_len : 4096;
    for (int L = 512; L <= top && nd < 31; L *= 2) defaults[nd++] = L;
    if (nd == 0) defaults[nd++] = top;
    if (is_pk && !q.n_lengths) { q.lengths = defaults; q.n_lengths = nd; }
    if (is_ppl && !q.n_windows) { q.windows = defaults; q.n_windows = nd; }
    cJSON *res = cJSON_CreateObject();
    cJSON_AddStringToObject(res, "task", p->task);
    cJSON_AddStringToObject(res, "target", d);
    int rc = is_pk ? run_passkey(&t, &q, res, err) : run_perplexity(&t, &q, res, err);
    if (rc == 0 && p->json) {
        char *js = cJSON_PrintUnformatted(res);
        printf("%s\n", js);
        free(js);
    }
    cJSON_Delete(res);
    if (t.curl) curl_easy_cleanup(t.curl);
    return rc;
}

/* "512,1k,16384" -> ints (k = 1024). Returns the count or <0 with err. */
int eval_parse_list(const char *s, int *out, int cap, char *err)
{
    int n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p) return set_err(err, -1, "expected comma-separated lengths (e.g. 512,1k,4096), got '%s'", s);
        if (*end == 'k' || *end == 'K') {
            v *= 1024;
            end++;
        }
        if (v < 1 || v > (1L << 30)) return set_err(err, -1, "length %ld out of range in '%s'", v, s);
        if (n == cap) return set_err(err, -1, "at most %d lengths", cap);
        out[n++] = (int)v;
        p = end;
        if (*p == ',') p++;
        else if (*p) return set_err(err, -1, "expected comma-separated lengths (e.g. 512,1k,4096), got '%s'", s);
    }
    if (!n) return set_err(err, -1, "empty list");
    return n;
}
