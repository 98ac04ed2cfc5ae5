/* test_arch.c - the Qwen2, Mistral and biased-LLaMA checkpoints of tests/fixtures/arch/ through
 * the engine on the CPU, against the float64 NumPy reference of
 * tests/rope_ref/make_arch_fixtures.py (and against transformers, tests/fixtures/arch/hf/, when
 * a GPU session made those with tests/rope_ref/make_hf_arch_fixtures.py).
 *
 * Every case must give the reference's greedy tokens exactly and, for the ids in both top-20
 * lists (at least 18 of them), log-probabilities within 1e-4. Each fixture runs under several
 * engine configurations, because sliding windows interact with how the engine cuts the work:
 *   one-chunk      the whole prompt in one forward, 16-token blocks
 *   chunked        chunks of 24 tokens and 8-token blocks: chunks cross the window's edge and
 *                  block boundaries at every offset, decoding goes on past the window
 *   batched        every case of the fixture submitted at once: prefill and decode rows of
 *                  sequences at different positions in one forward
 *   prefix-cache   each case run twice in one engine: the second reuses cached blocks (hits
 *                  counted) and must give the same answer
 *   tight-pool     (every layer sliding) a KV pool smaller than the longest sequence but larger
 *                  than one window: it only runs because blocks below the window are released
 *                  (engine stats: kv_blocks_window_freed > 0), all cases at once (preemption)
 * Also: a checkpoint whose config promises biases the weights lack fails naming the tensor.
 * Run from the repository root. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/common.h"
#include "../engine/engine.h"
#include "test.h"

#define FIX "tests/fixtures/arch"
#define TOL 1e-4
#define TOPK 20
#define MAX_CASES 16
#define MAX_STEPS 16

struct step {
    int32_t token;
    int32_t top_ids[TOPK];
    double top_lp[TOPK];
};

struct fcase {
    char name[32];
    int32_t *prompt;
    int n_prompt;
    int n_steps;
    struct step steps[MAX_STEPS];
};

struct fixture {
    char name[64], model_dir[512];
    int all_slide;          /* every layer has a window: blocks can be released */
    int n_cases;
    struct fcase cases[MAX_CASES];
};

static double worst_all; /* max |delta logprob| over everything compared */

// ---------------------------------------------------------------------------------------------
// Fixture files

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = xmalloc((size_t)n + 1);
    size_t got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    buf[got] = 0;
    return buf;
}

static int int_at(const cJSON *a, int i) { return (int)cJSON_GetArrayItem(a, i)->valuedouble; }

/* Load DIR/NAME (a make_rope_fixtures-format file); model_dir is relative to DIR. */
static int fixture_load(struct fixture *fx, const char *dir, const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *text = read_all(path);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    free(text);
    memset(fx, 0, sizeof *fx);
    if (!root) {
        printf("FAIL %s: cannot read or parse\n", path);
        return -1;
    }
    snprintf(fx->name, sizeof fx->name, "%s", cJSON_GetObjectItem(root, "method")->valuestring);
    snprintf(fx->model_dir, sizeof fx->model_dir, "%s/%s", dir,
             cJSON_GetObjectItem(root, "model_dir")->valuestring);
    const cJSON *win = cJSON_GetObjectItem(root, "layer_windows"), *e;
    fx->all_slide = win && cJSON_GetArraySize(win) > 0;
    cJSON_ArrayForEach(e, win) if (e->valuedouble <= 0) fx->all_slide = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        CHECK(fx->n_cases < MAX_CASES, "too many cases in %s", path);
        struct fcase *fc = &fx->cases[fx->n_cases++];
        snprintf(fc->name, sizeof fc->name, "%s", cJSON_GetObjectItem(c, "name")->valuestring);
        const cJSON *p = cJSON_GetObjectItem(c, "prompt_ids");
        fc->n_prompt = cJSON_GetArraySize(p);
        fc->prompt = xmalloc(sizeof(int32_t) * (size_t)fc->n_prompt);
        for (int i = 0; i < fc->n_prompt; i++) fc->prompt[i] = int_at(p, i);
        const cJSON *s;
        cJSON_ArrayForEach(s, cJSON_GetObjectItem(c, "steps")) {
            CHECK(fc->n_steps < MAX_STEPS, "too many steps in %s", path);
            struct step *st = &fc->steps[fc->n_steps++];
            st->token = (int32_t)cJSON_GetObjectItem(s, "token_id")->valuedouble;
            const cJSON *ids = cJSON_GetObjectItem(s, "top_ids"), *lps = cJSON_GetObjectItem(s, "top_logprobs");
            for (int k = 0; k < TOPK; k++) {
                st->top_ids[k] = int_at(ids, k);
                st->top_lp[k] = cJSON_GetArrayItem(lps, k)->valuedouble;
            }
        }
    }
    cJSON_Delete(root);
    return 0;
}

static void fixture_free(struct fixture *fx)
{
    for (int i = 0; i < fx->n_cases; i++) free(fx->cases[i].prompt);
}

// ---------------------------------------------------------------------------------------------
// The engine

struct rig {
    struct model_config cfg;
    struct backend be;
    model_t *m;
    engine_t *e;
};

static int rig_open(struct rig *r, const char *dir, const struct engine_params *ep, char *err)
{
    memset(r, 0, sizeof *r);
    struct backend_params bp = backend_default_params();
    bp.device = BK_DEVICE_CPU;
    bp.n_threads = 2;
    struct model_params mp = model_default_params();
    mp.max_batch_tokens = ep->max_batched_tokens;
    mp.max_out_rows = 64;
    if (model_config_load(&r->cfg, dir, err) < 0) return -1;
    if (backend_init(&r->be, &bp, err) < 0 || model_load(&r->m, dir, &r->cfg, &r->be, &mp, err) < 0 ||
        engine_init(&r->e, ep, r->m, err) < 0) {
        model_free(r->m);
        backend_free(&r->be);
        model_config_free(&r->cfg);
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

static engine_stream_t *submit(engine_t *e, const struct fcase *fc)
{
    char err[ERR_LEN];
    struct engine_request req;
    memset(&req, 0, sizeof req);
    req.prompt = fc->prompt;
    req.n_prompt = fc->n_prompt;
    req.sp = sampling_default_params();
    req.sp.temperature = 0;
    req.sp.max_tokens = fc->n_steps;
    req.sp.n_logprobs = TOPK;
    engine_stream_t *s = NULL;
    if (engine_submit(e, &req, &s, err) != ENGINE_OK) printf("  submit %s: %s\n", fc->name, err);
    return s;
}

/* Read s to its end and compare with the reference; prints what differs. Returns 1 when equal. */
static int collect_check(engine_stream_t *s, const struct fcase *fc, const char *tag)
{
    struct engine_event ev;
    int k = 0, ok = 1;
    double worst = 0;
    if (!s) return 0;
    /* a hang guard only: a loaded machine may be slow, never wrong */
    while (engine_stream_next(s, &ev, 600000) == 1 && ev.type != ENGINE_EV_DONE) {
        if (ev.type != ENGINE_EV_TOKEN) continue;
        if (k >= fc->n_steps) {
            printf("  %s: more tokens than the reference (%d)\n", tag, fc->n_steps);
            ok = 0;
            break;
        }
        const struct step *st = &fc->steps[k];
        int common = 0;
        for (int i = 0; i < ev.n_top; i++)
            for (int j = 0; j < TOPK; j++)
                if (ev.top_ids[i] == st->top_ids[j]) {
                    double d = fabs(ev.top_logprobs[i] - st->top_lp[j]);
                    worst = d > worst ? d : worst;
                    common++;
                }
        if (common < 18) {
            printf("  %s step %d: top-20 overlap %d\n", tag, k, common);
            ok = 0;
        }
        if (ev.token != st->token) {
            printf("  %s step %d: token %d, reference %d (top-2 gap %.2e)\n", tag, k, ev.token, st->token,
                   st->top_lp[0] - st->top_lp[1]);
            ok = 0;
            break;
        }
        k++;
    }
    if (ev.type != ENGINE_EV_DONE) {
        printf("  %s: no DONE (hang guard)\n", tag);
        ok = 0;
    } else if (ok && k != fc->n_steps) {
        printf("  %s: %d tokens, reference %d (%s)\n", tag, k, fc->n_steps, finish_reason_name(ev.reason));
        ok = 0;
    }
    engine_stream_free(s);
    if (worst > TOL) {
        printf("  %s: max |dlogprob| %.2e > %.0e\n", tag, worst, TOL);
        ok = 0;
    }
    worst_all = worst > worst_all ? worst : worst_all;
    return ok;
}

/* Run every case of fx under ep: one after another (twice with `twice`: the second from the
 * prefix cache), or all at once. Fills st with the engine's stats at the end. */
static void run_config(const struct fixture *fx, const char *config, struct engine_params ep, int together,
                       int twice, struct engine_stats *st)
{
    char err[ERR_LEN], tag[160];
    struct rig r;
    memset(st, 0, sizeof *st);
    if (rig_open(&r, fx->model_dir, &ep, err) < 0) {
        TEST_CONDF(0, "%s/%s: cannot open: %s", fx->name, config, err);
        return;
    }
    engine_stream_t *s[MAX_CASES];
    if (together) {
        for (int i = 0; i < fx->n_cases; i++) s[i] = submit(r.e, &fx->cases[i]);
        for (int i = 0; i < fx->n_cases; i++) {
            snprintf(tag, sizeof tag, "%s/%s/%s", fx->name, config, fx->cases[i].name);
            TEST_CONDF(collect_check(s[i], &fx->cases[i], tag), "%s", tag);
        }
    } else {
        for (int i = 0; i < fx->n_cases; i++)
            for (int rep = 0; rep <= twice; rep++) {
                struct engine_stats before;
                engine_get_stats(r.e, &before);
                snprintf(tag, sizeof tag, "%s/%s/%s%s", fx->name, config, fx->cases[i].name, rep ? " (cached)" : "");
                TEST_CONDF(collect_check(submit(r.e, &fx->cases[i]), &fx->cases[i], tag), "%s", tag);
                if (rep) {
                    struct engine_stats after;
                    engine_get_stats(r.e, &after);
                    int whole = (fx->cases[i].n_prompt - 1) / ep.block_size;
                    TEST_CONDF(whole == 0 || after.prefix_hits > before.prefix_hits,
                               "%s: prefix-cache hits (%llu -> %llu)", tag, (unsigned long long)before.prefix_hits,
                               (unsigned long long)after.prefix_hits);
                }
            }
    }
    engine_get_stats(r.e, st);
    TEST_CONDF(st->kv_blocks_used == 0, "%s/%s: no block referenced at the end (%d)", fx->name, config,
               st->kv_blocks_used);
    rig_close(&r);
}

static void test_fixture(const struct fixture *fx)
{
    struct engine_stats st;
    struct engine_params ep = engine_default_params();
    ep.max_num_seqs = 16;
    ep.max_batched_tokens = 512;
    ep.block_size = 16;
    ep.enable_prefix_cache = 0;
    run_config(fx, "one-chunk", ep, 0, 0, &st);
    TEST_CONDF(fx->all_slide || st.kv_blocks_window_freed == 0, "%s: nothing released without a window in every "
               "layer (%llu)", fx->name, (unsigned long long)st.kv_blocks_window_freed);

    ep.max_batched_tokens = 24;
    ep.block_size = 8;
    run_config(fx, "chunked", ep, 0, 0, &st);
    if (fx->all_slide)
        TEST_CONDF(st.kv_blocks_window_freed > 0, "%s/chunked: blocks below the window released (%llu)", fx->name,
                   (unsigned long long)st.kv_blocks_window_freed);
    run_config(fx, "batched", ep, 1, 0, &st);
    ep.enable_prefix_cache = 1;
    run_config(fx, "prefix-cache", ep, 0, 1, &st);

    if (fx->all_slide) {
        /* a pool of 24 blocks of 8 tokens (192 tokens): less than the longest case (300 + 12),
         * more than what a sequence holds at once (window 64 + a 24-token chunk: 13 blocks) */
        char err[ERR_LEN];
        ep.enable_prefix_cache = 1;
        ep.max_num_seqs = 8;
        struct model_config c;
        if (model_config_load(&c, fx->model_dir, err) == 0) {
            size_t per_token = 2 * (size_t)c.n_layers * c.n_kv_heads * c.head_dim * sizeof(float);
            ep.kv_cache_gb = 24.5 * 8 * (double)per_token / 1073741824.0;
            model_config_free(&c);
        }
        int longest = 0;
        for (int i = 0; i < fx->n_cases; i++)
            longest = fx->cases[i].n_prompt + fx->cases[i].n_steps > longest ? fx->cases[i].n_prompt + fx->cases[i].n_steps
                                                                            : longest;
        TEST_CONDF(longest > 24 * 8, "%s: the longest case (%d tokens) does not fit the tight pool", fx->name, longest);
        run_config(fx, "tight-pool", ep, 1, 0, &st);
        TEST_CONDF(st.kv_blocks_total == 24 && st.kv_blocks_window_freed > 0,
                   "%s/tight-pool: %d blocks, %llu released below the window, %llu preemptions", fx->name,
                   st.kv_blocks_total, (unsigned long long)st.kv_blocks_window_freed,
                   (unsigned long long)st.preemptions);
        printf("%s/tight-pool: %d blocks for sequences of up to %d tokens: %llu blocks released below the window, "
               "%llu preemptions\n", fx->name, st.kv_blocks_total, longest,
               (unsigned long long)st.kv_blocks_window_freed, (unsigned long long)st.preemptions);
    }
}

// ---------------------------------------------------------------------------------------------
// A config that promises biases the weights do not have

static void test_missing_bias(void)
{
    char dir[] = "/tmp/ropeserve-arch-XXXXXX", err[ERR_LEN] = "", path[1024];
    CHECK(mkdtemp(dir), "mkdtemp");
    const char *src = FIX "/models/mistral";
    static const char *files[] = {"model.safetensors", "tokenizer.model"};
    for (int i = 0; i < 2; i++) {
        char from[1024];
        snprintf(from, sizeof from, "%s/%s", src, files[i]);
        char *abs = realpath(from, NULL);
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        CHECK(abs && symlink(abs, path) == 0, "symlink %s", from);
        free(abs);
    }
    /* the Mistral weights, declared as a Qwen2 (q/k/v biases) */
    char *cfg = read_all(FIX "/models/mistral/config.json");
    CHECK(cfg, "read the mistral config");
    cJSON *root = cJSON_Parse(cfg);
    free(cfg);
    cJSON_ReplaceItemInObject(root, "model_type", cJSON_CreateString("qwen2"));
    cJSON_ReplaceItemInObject(root, "architectures", cJSON_Parse("[\"Qwen2ForCausalLM\"]"));
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    CHECK(f, "write %s", path);
    fputs(text, f);
    fclose(f);
    free(text);

    struct engine_params ep = engine_default_params();
    struct rig r;
    int rc = rig_open(&r, dir, &ep, err);
    TEST_CONDF(rc < 0 && strstr(err, "model.layers.0.self_attn.q_proj.bias") && strstr(err, "not found"),
               "qwen2 config over weights without biases: refused naming the tensor: %s", err);
    if (rc == 0) rig_close(&r);
    static const char *names[] = {"config.json", "model.safetensors", "tokenizer.model"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

// ---------------------------------------------------------------------------------------------

static int name_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Every *.json fixture of dir, in name order. */
static void run_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    char *names[64];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 64) {
        size_t len = strlen(e->d_name);
        if (len > 5 && !strcmp(e->d_name + len - 5, ".json")) names[n++] = xstrdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, name_cmp);
    for (int i = 0; i < n; i++) {
        struct fixture *fx = xcalloc(1, sizeof *fx);
        if (fixture_load(fx, dir, names[i]) == 0) {
            double t0 = now_s();
            test_fixture(fx);
            printf("%s (%s): %d cases, %.1f s\n", fx->name, dir, fx->n_cases, now_s() - t0);
        } else {
            TEST_CONDF(0, "fixture %s/%s", dir, names[i]);
        }
        fixture_free(fx);
        free(fx);
        free(names[i]);
    }
}

int main(void)
{
    log_min_level = LOG_ERROR;
    run_dir(FIX);
    run_dir(FIX "/hf"); /* transformers' outputs, when a GPU session has made them */
    test_missing_bias();
    printf("max |dlogprob| over all cases and configurations: %.2e\n", worst_all);
    return test_report("test_arch");
}
