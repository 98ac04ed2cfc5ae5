/* engine.c - the engine thread and the public API (engine.h).
 *
 * The step loop, a few lines as in nano-vllm:
 *     take new requests from the queue; finish cancelled ones (their blocks are freed now)
 *     plan = schedule()                 (scheduler.c)
 *     logits = run(plan)                (runner.c -> model_forward)
 *     commit(plan); for each sequence that reached its end: sample, emit, maybe finish
 * Only this thread touches the scheduler, the block manager and the model. Callers interact
 * through the mutex-protected inbox (submit) and the streams (events out, cancel flag in).
 *
 * Limits are enforced at the door (engine_submit): a request longer than max_model_len or than
 * the whole KV pool is refused with ENGINE_E_TOO_LONG, never accepted and dropped later. */
#include <math.h>
#include <string.h>
#include <time.h>

#include <stdio.h>
#include <stdlib.h>

#include "../common/common.h"
#include "engine_internal.h"

struct engine {
    struct engine_params p;
    model_t *model;
    int vocab, max_model_len, n_blocks;
    int eos_ids[MODEL_MAX_EOS], n_eos; /* every id that ends a request (config, generation_config, tokenizer) */
    int eos_primary;                   /* the one of them that ends with no stop token (vLLM's primary EOS) */
    struct scheduler sched;
    struct runner runner;
    struct sched_plan plan;
    float *scratch;
    int *iscratch;

    pthread_t thread;
    pthread_mutex_t mu;            /* guards the inbox, stop, draining and stats snapshot */
    pthread_cond_t cv;
    struct sequence *inbox;        /* submitted, not yet seen by the engine thread */
    int n_inbox;
    int stop, draining;
    uint64_t next_id, rng_state;
    struct engine_stats stats;     /* snapshot published after every step (under mu) */
    uint64_t n_steps, n_step_tokens, n_gen_tokens; /* engine-thread counters */
};

struct engine_params engine_default_params(void)
{
    struct engine_params p = {
        .block_size = 16,
        .kv_cache_gb = 0,
        .max_model_len = 0,
        .max_batched_tokens = 2048,
        .max_num_seqs = 64,
        .max_queue = 1024,
        .enable_prefix_cache = 1,
        .seed = 0x5eed,
    };
    return p;
}

const char *finish_reason_name(enum finish_reason r)
{
    switch (r) {
    case FINISH_STOP: return "stop";
    case FINISH_LENGTH: return "length";
    case FINISH_CANCELLED: return "cancelled";
    case FINISH_ERROR: return "error";
    default: return "none";
    }
}

int engine_max_model_len(const engine_t *e) { return e->max_model_len; }

enum engine_rope_mode engine_get_rope_mode(const engine_t *e) { return e->p.rope_mode; }

enum engine_sched_policy engine_get_sched_policy(const engine_t *e) { return e->p.sched_policy; }

double engine_rope_factor_for(const engine_t *e, long long total_len)
{
    const struct rope *r = model_get_rope(e->model);
    if (e->p.rope_mode != ENGINE_ROPE_PER_REQUEST) return r->factor;
    double f = 1.0;
    while (f * r->original_max_pos < (double)total_len && f < r->factor) f *= 2.0;
    return f < r->factor ? f : r->factor;
}
const model_t *engine_model(const engine_t *e) { return e->model; }

/* ---------------------------------------------------------------------------------------------
 * The engine thread */

static void publish_stats(engine_t *e)
{
    pthread_mutex_lock(&e->mu);
    struct engine_stats *st = &e->stats;
    st->num_running = e->sched.n_running;
    st->num_waiting = e->sched.n_waiting;
    st->kv_blocks_total = e->n_blocks - 1;
    st->kv_blocks_used = bm_used(&e->sched.bm);
    st->kv_blocks_cached = e->sched.bm.n_cached;
    st->prefix_queries = e->sched.bm.queries;
    st->prefix_hits = e->sched.bm.hits;
    st->preemptions = e->sched.preemptions;
    st->kv_blocks_window_freed = e->sched.window_frees;
    st->steps = e->n_steps;
    st->step_tokens = e->n_step_tokens;
    st->generation_tokens = e->n_gen_tokens;
    pthread_mutex_unlock(&e->mu);
}

static void finish_with(engine_t *e, struct sequence *seq, enum finish_reason why, const char *msg,
                        int32_t stop_token)
{
    sched_finish(&e->sched, seq);
    publish_stats(e); /* a client that sees DONE must see its blocks released in the stats */
    struct engine_event ev = {.type = ENGINE_EV_DONE, .reason = why, .stop_token = stop_token};
    if (msg) snprintf(ev.err, sizeof ev.err, "%s", msg);
    stream_push(seq->stream, &ev);
    double t = now_s();
    LOG_D("%s: done (%s), prompt %d, generated %d, ttft %.3fs, total %.3fs", seq->req_id,
          finish_reason_name(why), seq->n_prompt, seq->n_generated,
          seq->t_first > 0 ? seq->t_first - seq->t_arrival : -1.0, t - seq->t_arrival);
    stream_release(seq->stream);
    seq_free(seq);
}

static void finish(engine_t *e, struct sequence *seq, enum finish_reason why, const char *msg)
{
    finish_with(e, seq, why, msg, -1);
}

static void finish_stop(engine_t *e, struct sequence *seq, int32_t stop_token)
{
    finish_with(e, seq, FINISH_STOP, NULL, stop_token);
}

static void finish_cancelled(engine_t *e, struct sequence **list)
{
    for (struct sequence *s = *list, *next; s; s = next) {
        next = s->next;
        if (atomic_load(&s->stream->cancelled)) finish(e, s, FINISH_CANCELLED, NULL);
    }
}

/* EOS (unless ignore_eos) or one of stop_ids ends a request, once min_tokens are out (the
 * sampler masks them before that; this keeps the rule when a logit_bias fights the mask). */
static int is_stop_token(const engine_t *e, const struct sequence *seq, int32_t tok)
{
    if (seq->n_generated < seq->sp.min_tokens) return 0;
    for (int i = 0; i < e->n_eos && !seq->sp.ignore_eos; i++)
        if (tok == e->eos_ids[i]) return 1;
    for (int i = 0; i < seq->sp.n_stop_ids; i++)
        if (seq->sp.stop_ids[i] == tok) return 1;
    return 0;
}

/* The stop id that ended seq (vLLM's stop_reason), -1 for the primary EOS. vLLM's check_stop
 * tests request.eos_token_id (the tokenizer's EOS) first and reports no stop_reason; the other
 * EOS ids of generation_config / config.json were added to stop_token_ids
 * (SamplingParams.update_from_generation_config, not under ignore_eos), so they end the request
 * with stop_reason = the id, as a stop_token_ids id does. */
static int32_t stop_token_of(const engine_t *e, const struct sequence *seq, int32_t tok)
{
    if (tok == e->eos_primary && !seq->sp.ignore_eos) return -1;
    return tok;
}

/* After a chunk of the prompt: tokens of the prompt in the cache now, of how many. */
static void emit_progress(struct sequence *seq)
{
    struct engine_event ev = {.type = ENGINE_EV_PROGRESS};
    ev.n_processed = seq->n_computed < seq->n_prompt ? seq->n_computed : seq->n_prompt;
    ev.n_total = seq->n_prompt;
    ev.n_cached = seq->n_cached;
    ev.elapsed_s = (float)(now_s() - seq->t_admitted);
    stream_push(seq->stream, &ev);
}

/* Emit prompt-logprob events and sample where the plan reached the end of a sequence. */
static void process_outputs(engine_t *e)
{
    const float *logits = e->runner.logits;
    int row = 0;
    for (int i = 0; i < e->plan.n; i++) {
        struct sched_entry *en = &e->plan.e[i];
        struct sequence *seq = en->seq;
        int first_pos = seq->n_computed - en->n_tokens; /* already committed */
        /* progress: prompt chunks only (a recompute after preemption is not the prompt's) */
        if (seq->report_progress && seq->n_generated == 0 && first_pos < seq->n_prompt) emit_progress(seq);
        if (en->n_logits == en->n_tokens && seq->sp.prompt_logprobs) {
            if (seq->prompt_lp_next == 0 && seq->n_prompt > 0) { /* first prompt token: no logprob */
                struct engine_event ev = {.type = ENGINE_EV_PROMPT_TOKEN, .token = seq->tokens[0], .logprob = NAN};
                stream_push(seq->stream, &ev);
                seq->prompt_lp_next = 1;
            }
            for (int j = 0; j < en->n_tokens; j++) {
                int target = first_pos + j + 1;
                if (target < seq->prompt_lp_next || target >= seq->n_prompt) continue;
                struct engine_event ev = {.type = ENGINE_EV_PROMPT_TOKEN};
                sampler_logprobs(logits + (size_t)(row + j) * e->vocab, e->vocab, seq->tokens[target],
                                 seq->sp.n_prompt_logprobs, &ev);
                stream_push(seq->stream, &ev);
                seq->prompt_lp_next = target + 1;
            }
        }
        const float *last = logits + (size_t)(row + en->n_logits - 1) * e->vocab;
        row += en->n_logits;
        if (!en->sample) continue;
        if (seq->sp.max_tokens == 0) { /* scoring only */
            finish(e, seq, FINISH_LENGTH, NULL);
            continue;
        }
        struct engine_event ev = {.type = ENGINE_EV_TOKEN};
        int32_t tok = sampler_sample(seq, last, e->vocab, &ev, e->scratch, e->iscratch);
        ev.stop = is_stop_token(e, seq, tok);
        seq_append(seq, tok);
        seq->n_generated++;
        if (seq->t_first == 0) seq->t_first = now_s();
        e->n_gen_tokens++;
        stream_push(seq->stream, &ev);
        if (ev.stop) finish_stop(e, seq, stop_token_of(e, seq, tok));
        else if (seq->n_generated >= seq->sp.max_tokens || seq->n_tokens >= e->max_model_len)
            finish(e, seq, FINISH_LENGTH, NULL);
    }
}

static void *engine_main(void *arg)
{
    engine_t *e = arg;
    char err[ERR_LEN];
    for (;;) {
        pthread_mutex_lock(&e->mu);
        while (!e->stop && !e->inbox && e->sched.n_running == 0 && e->sched.n_waiting == 0)
            pthread_cond_wait(&e->cv, &e->mu);
        int stop = e->stop;
        struct sequence *in = e->inbox;
        e->inbox = NULL;
        e->n_inbox = 0;
        pthread_mutex_unlock(&e->mu);
        while (in) {
            struct sequence *next = in->next;
            sched_add(&e->sched, in);
            in = next;
        }
        if (stop) break;

        finish_cancelled(e, &e->sched.running);
        finish_cancelled(e, &e->sched.waiting);
        sched_plan(&e->sched, &e->plan);
        if (e->plan.n == 0) {
            if (e->sched.n_running == 0 && e->sched.n_waiting > 0) {
                /* cannot happen: requests larger than the pool are refused at the door */
                finish(e, e->sched.waiting, FINISH_ERROR, "request does not fit in the KV cache");
            }
            publish_stats(e);
            continue;
        }
        if (runner_run(&e->runner, &e->plan, e->p.block_size, err) < 0) {
            LOG_E("forward failed: %s", err);
            for (int i = 0; i < e->plan.n; i++) finish(e, e->plan.e[i].seq, FINISH_ERROR, err);
            publish_stats(e);
            continue;
        }
        sched_commit(&e->sched, &e->plan);
        e->n_steps++;
        e->n_step_tokens += e->plan.n_tokens;
        process_outputs(e);
        publish_stats(e);
    }
    /* shutdown: cancel everything */
    while (e->sched.running) finish(e, e->sched.running, FINISH_CANCELLED, NULL);
    while (e->sched.waiting) finish(e, e->sched.waiting, FINISH_CANCELLED, NULL);
    publish_stats(e);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Public API */

int engine_init(engine_t **out, const struct engine_params *p, model_t *m, char *err)
{
    *out = NULL;
    const struct model_config *c = model_get_config(m);
    const struct rope *rope = model_get_rope(m);
    int bs = p->block_size;
    if (bs < 1 || (bs & (bs - 1)) || bs > 1024)
        return set_err(err, -1, "--block-size %d: must be a power of two between 1 and 1024", bs);
    if (p->max_batched_tokens < 1 || p->max_num_seqs < 1 || p->max_num_seqs > p->max_batched_tokens)
        return set_err(err, -1, "--max-batched-tokens (%d) must be >= --max-num-seqs (%d) >= 1",
                       p->max_batched_tokens, p->max_num_seqs);
    int max_len = p->max_model_len > 0 ? p->max_model_len : rope->max_model_len;
    if (max_len <= 0) max_len = c->max_pos;
    if (p->rope_mode == ENGINE_ROPE_PER_REQUEST && rope->type != ROPE_TYPE_YARN)
        return set_err(err, -1, "--rope-scaling-mode per-request needs a static yarn model (this model's rope "
                       "type is %s)", rope->name);
    /* every layer sliding: a sequence holds at most `live` blocks, whatever its length */
    const int window = model_config_window_all(c, max_len);
    const long long live = window > 0 ? sched_window_blocks(window, p->max_batched_tokens, bs) : 0;
    const long long seq_tokens = window > 0 && live * bs < max_len ? live * bs : max_len;

    /* KV pool: --kv-cache-gb, else enough for min(max_num_seqs, 4) full-length sequences,
     * capped at 4 GiB of host memory (CPU) or what the device has free (CUDA). */
    size_t per_token = model_kv_bytes_per_token(m);
    size_t budget, dev_free = model_mem_free(m);
    if (p->kv_cache_gb > 0) {
        budget = (size_t)(p->kv_cache_gb * 1073741824.0);
    } else {
        int seqs = p->max_num_seqs < 4 ? p->max_num_seqs : 4;
        budget = per_token * (size_t)seq_tokens * seqs;
        size_t cap = (size_t)4 << 30;
        if (dev_free > 0) budget = dev_free; /* a GPU: everything the memory plan left */
        else if (budget > cap) budget = cap;
        size_t one = per_token * (size_t)(seq_tokens + bs);
        if (budget < one) budget = one;
    }
    long long n_blocks = (long long)(budget / (per_token * bs)) + 1; /* + the null block */
    if (n_blocks < 2) return set_err(err, -1, "--kv-cache-gb %.3f holds no block of %d tokens", p->kv_cache_gb, bs);
    if (n_blocks > 0x7fffffffLL / bs) n_blocks = 0x7fffffffLL / bs;
    long long pool_tokens = (n_blocks - 1) * bs;
    if (window > 0 && n_blocks - 1 < live && pool_tokens < max_len)
        return set_err(err, -1, "the KV pool holds %lld blocks of %d tokens, less than one sequence of this "
                       "sliding-window model can hold at once (%lld: its window of %d and a chunk of "
                       "--max-batched-tokens %d); raise --kv-cache-gb", n_blocks - 1, bs, live, window,
                       p->max_batched_tokens);
    if (window == 0 && pool_tokens < max_len) {
        LOG_W("KV pool holds %lld tokens, less than max_model_len %d: max_model_len lowered to %lld",
              pool_tokens, max_len, pool_tokens);
        max_len = (int)pool_tokens;
    }

    /* the model's activation buffers bound a step: the caller sized them when loading it */
    const struct model_params *mp = model_get_params(m);
    int max_logits = mp->max_out_rows < p->max_batched_tokens ? mp->max_out_rows : p->max_batched_tokens;
    if (p->max_batched_tokens > mp->max_batch_tokens || max_logits < p->max_num_seqs) {
        return set_err(err, -1, "--max-batched-tokens %d / --max-num-seqs %d exceed what the model was loaded for "
                       "(%d tokens, %d logits rows per step)", p->max_batched_tokens, p->max_num_seqs,
                       mp->max_batch_tokens, mp->max_out_rows);
    }

    engine_t *e = xcalloc(1, sizeof *e);
    e->p = *p;
    e->model = m;
    e->vocab = c->vocab_size;
    e->n_eos = c->n_eos;
    memcpy(e->eos_ids, c->eos_ids, sizeof e->eos_ids);
    e->eos_primary = c->eos_primary;
    e->max_model_len = max_len;
    e->n_blocks = (int)n_blocks;
    e->rng_state = p->seed;
    if (model_kv_init(m, e->n_blocks, bs, max_len, err) < 0) goto fail;
    if (sched_init(&e->sched, e->n_blocks, bs, p->max_batched_tokens, p->max_num_seqs, max_logits,
                   max_len, p->enable_prefix_cache) < 0) {
        set_err(err, -1, "scheduler init failed");
        goto fail;
    }
    e->sched.priority_policy = p->sched_policy == ENGINE_SCHED_PRIORITY;
    e->sched.window = window;
    if (window > 0)
        LOG_I("KV cache: every layer attends to the last %d keys: a sequence holds at most %lld blocks "
              "(%lld tokens) at once; blocks below the window are released as it advances (hashed ones "
              "stay in the prefix cache)", window, (seq_tokens + bs - 1) / bs, seq_tokens);
    runner_init(&e->runner, m, p->max_batched_tokens, p->max_num_seqs + 1, max_logits);
    if (p->rope_mode == ENGINE_ROPE_PER_REQUEST) {
        /* every factor a request can get below the configured one (that one is the model's) */
        double f[64];
        int n = 0;
        for (double x = 1.0; x < rope->factor && n < 64; x *= 2.0) f[n++] = x;
        if (runner_add_factors(&e->runner, f, n, err) < 0) goto fail;
        LOG_I("rope: per-request YaRN factor, the smallest power of two >= (prompt + max_tokens) / %d, "
              "capped at %g (%d variants besides it)", rope->original_max_pos, rope->factor, n);
    }
    e->scratch = xmalloc(sizeof(float) * 2 * (size_t)e->vocab);
    e->iscratch = xmalloc(sizeof(int) * (size_t)e->vocab);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    e->stats.max_model_len = max_len;
    e->stats.block_size = bs;
    e->stats.kv_blocks_total = e->n_blocks - 1;
    LOG_I("KV cache (%s): %d blocks x %d tokens = %lld tokens (%.2f GiB, %zu bytes/token); "
          "max_model_len %d (%.2f GiB of KV per sequence) -> holds %lld sequences of max_model_len",
          bk_dtype_name(model_kv_dtype(m)), e->n_blocks - 1, bs, pool_tokens, (double)budget / 1073741824.0,
          per_token, max_len, (double)per_token * (double)(window > 0 ? seq_tokens : max_len) / 1073741824.0,
          pool_tokens / (window > 0 ? seq_tokens : max_len));
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        set_err(err, -1, "cannot start the engine thread");
        goto fail;
    }
    *out = e;
    return 0;
fail:
    runner_free(&e->runner);
    if (e->sched.bm.ref) sched_free(&e->sched);
    free(e->scratch);
    free(e->iscratch);
    free(e);
    return -1;
}

void engine_free(engine_t *e)
{
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    e->stop = 1;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->thread, NULL);
    for (struct sequence *s = e->inbox, *n; s; s = n) { /* submitted after the thread stopped */
        n = s->next;
        struct engine_event ev = {.type = ENGINE_EV_DONE, .reason = FINISH_CANCELLED};
        stream_push(s->stream, &ev);
        stream_release(s->stream);
        seq_free(s);
    }
    runner_free(&e->runner);
    sched_free(&e->sched);
    plan_free(&e->plan);
    free(e->scratch);
    free(e->iscratch);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e);
}

int engine_submit(engine_t *e, const struct engine_request *req, engine_stream_t **out, char *err)
{
    *out = NULL;
    const struct sampling_params *sp = &req->sp;
    if (req->n_prompt < 1) return set_err(err, ENGINE_E_INVALID, "the prompt is empty");
    for (int i = 0; i < req->n_prompt; i++)
        if (req->prompt[i] < 0 || req->prompt[i] >= e->vocab)
            return set_err(err, ENGINE_E_INVALID, "prompt token %d at index %d is outside the vocabulary (0..%d)",
                           req->prompt[i], i, e->vocab - 1);
    if (sp->max_tokens < 0) return set_err(err, ENGINE_E_INVALID, "max_tokens must be >= 0");
    if (sp->n_logprobs < 0 || sp->n_logprobs > ENGINE_MAX_LOGPROBS)
        return set_err(err, ENGINE_E_INVALID, "logprobs must be between 0 and %d", ENGINE_MAX_LOGPROBS);
    if (sp->n_prompt_logprobs < 0 || sp->n_prompt_logprobs > ENGINE_MAX_LOGPROBS)
        return set_err(err, ENGINE_E_INVALID, "prompt_logprobs must be between 0 and %d", ENGINE_MAX_LOGPROBS);
    if (sp->min_tokens < 0 || sp->min_tokens > sp->max_tokens)
        return set_err(err, ENGINE_E_INVALID, "min_tokens (%d) must be between 0 and max_tokens (%d)",
                       sp->min_tokens, sp->max_tokens);
    if (req->priority != 0 && e->p.sched_policy != ENGINE_SCHED_PRIORITY)
        return set_err(err, ENGINE_E_INVALID, "priority %lld: this server schedules first come, first served "
                       "(start it with --scheduling-policy priority)", (long long)req->priority);
    if (sp->temperature < 0 || !isfinite(sp->temperature))
        return set_err(err, ENGINE_E_INVALID, "temperature must be >= 0");
    if (sp->top_p <= 0 || sp->top_p > 1) return set_err(err, ENGINE_E_INVALID, "top_p must be in (0, 1]");
    if (sp->min_p < 0 || sp->min_p > 1) return set_err(err, ENGINE_E_INVALID, "min_p must be in [0, 1]");
    if (sp->n_logit_bias < 0 || sp->n_logit_bias > ENGINE_MAX_LOGIT_BIAS)
        return set_err(err, ENGINE_E_INVALID, "at most %d logit_bias entries", ENGINE_MAX_LOGIT_BIAS);
    long long total = (long long)req->n_prompt + sp->max_tokens;
    if (total > e->max_model_len)
        return set_err(err, ENGINE_E_TOO_LONG,
                       "This model's maximum context length is %d tokens. However, you requested %lld tokens "
                       "(%d in the prompt, %d for the completion). Please reduce the prompt or max_tokens.",
                       e->max_model_len, total, req->n_prompt, sp->max_tokens);

    /* RoPE of this request: its YaRN factor (fixed for its life; 0 = the model's own) and
     * STRING. Both are part of the prefix-cache key (scheduler.c). */
    const struct rope *rope = model_get_rope(e->model);
    double factor = engine_rope_factor_for(e, total);
    if (factor == rope->factor) factor = 0;
    int s_shift = req->string_set ? req->string_shift : rope->string_shift;
    int s_local = req->string_set ? req->string_local : rope->string_local;
    if (req->string_set && s_local < 0) /* W not given: the model's, else STRING's usual 128 */
        s_local = rope->string_shift > 0 ? rope->string_local : ROPE_STRING_LOCAL_DEFAULT;
    if (s_shift < 0 || (s_shift > 0 && (s_local < 0 || s_local >= s_shift)))
        return set_err(err, ENGINE_E_INVALID, "STRING shifted_offset %d and local_value %d: need shifted_offset >= 0 "
                       "and 0 <= local_value < shifted_offset", s_shift, s_local);
    if (s_shift == 0) s_local = 0;

    struct sequence *seq = seq_new(req, 0, e->max_model_len);
    seq->eos_ids = e->eos_ids;
    seq->n_eos = e->n_eos;
    seq->rope_factor = factor;
    seq->string_shift = s_shift;
    seq->string_local = s_local;
    pthread_mutex_lock(&e->mu);
    if (e->draining || e->stop) {
        pthread_mutex_unlock(&e->mu);
        seq_free(seq);
        return set_err(err, ENGINE_E_DRAINING, "the server is shutting down");
    }
    /* --max-queue counts the requests that must wait: those the next step admits into a free
     * slot (--max-num-seqs minus the running ones) are not queued */
    int free_slots = e->p.max_num_seqs - e->stats.num_running;
    if (free_slots < 0) free_slots = 0;
    if (e->stats.num_waiting + e->n_inbox - free_slots >= e->p.max_queue) {
        pthread_mutex_unlock(&e->mu);
        seq_free(seq);
        return set_err(err, ENGINE_E_QUEUE_FULL, "too many requests waiting (%d); retry later", e->p.max_queue);
    }
    seq->id = ++e->next_id;
    uint64_t seed = sp->has_seed ? sp->seed : (e->rng_state += 0x9e3779b97f4a7c15ull);
    sampler_seed(seq->rng, seed);
    seq->stream = stream_new();
    seq->next = NULL;
    struct sequence **tail = &e->inbox;
    while (*tail) tail = &(*tail)->next;
    *tail = seq;
    e->n_inbox++;
    e->stats.prompt_tokens += req->n_prompt;
    *out = seq->stream;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return ENGINE_OK;
}

void engine_drain(engine_t *e)
{
    pthread_mutex_lock(&e->mu);
    e->draining = 1;
    pthread_mutex_unlock(&e->mu);
}

void engine_get_stats(engine_t *e, struct engine_stats *st)
{
    pthread_mutex_lock(&e->mu);
    *st = e->stats;
    st->num_waiting = e->stats.num_waiting + e->n_inbox;
    pthread_mutex_unlock(&e->mu);
}
