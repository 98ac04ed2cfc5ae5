/* engine.h - the inference engine: one thread that owns the scheduler, the paged KV cache and
 * the model. Other threads (HTTP handlers, the `generate` command) talk to it only through
 * engine_submit() (a request goes into the queue, a stream handle comes back), engine_stream_next()
 * (events come out of the per-request ring) and engine_cancel().
 *
 *   caller thread                          engine thread
 *   engine_submit(req) --queue--------->   admit -> schedule -> runner -> model_forward
 *   engine_stream_next() <--ring+cond---   sampler -> event (token | done | error)
 *   engine_cancel() --flag------------->   frees the sequence's blocks at the next step
 *
 * Thread-safety: every function here may be called from any thread, except engine_free(),
 * which must not race with the others. A stream is read by one thread at a time. */
#ifndef ROPESERVE_ENGINE_H
#define ROPESERVE_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "../models/model.h"

#define ENGINE_MAX_LOGPROBS 20
#define ENGINE_MAX_LOGIT_BIAS 300

/* Return codes beyond 0 / <0 (STYLE rule 15): positive = backpressure, try later. */
enum {
    ENGINE_OK = 0,
    ENGINE_E_QUEUE_FULL = 1, /* waiting queue at --max-queue: answer 429 */
    ENGINE_E_DRAINING = 2,   /* engine_drain() was called: answer 503 */
    ENGINE_E_INVALID = -1,   /* bad request (message says which field): 400 */
    ENGINE_E_TOO_LONG = -2,  /* prompt + max_tokens > max_model_len or the whole cache: 400 */
    ENGINE_E_INTERNAL = -3,
};

struct sampling_params {
    float temperature;        /* 0 = greedy (argmax; ties -> lowest id) */
    int top_k;                /* <= 0: off */
    float top_p;              /* 1: off */
    float min_p;              /* 0: off */
    uint64_t seed;            /* per-request RNG seed */
    int has_seed;             /* 0: a seed is drawn from the engine's RNG */
    int max_tokens;           /* tokens to generate; 0 = score the prompt only */
    int n_logprobs;           /* top-K logprobs returned with each token, 0..ENGINE_MAX_LOGPROBS */
    int prompt_logprobs;      /* 1: also emit the logprob (+top n_prompt_logprobs) of every prompt token */
    int n_prompt_logprobs;    /* top-K with each prompt token, 0..ENGINE_MAX_LOGPROBS */
    int min_tokens;           /* EOS and stop_ids are masked until this many tokens are generated (vLLM) */
    int ignore_eos;
    float presence_penalty;   /* OpenAI semantics, over generated tokens */
    float frequency_penalty;
    float repetition_penalty; /* 1: off; HF semantics over prompt + generated tokens */
    int n_logit_bias;
    int32_t logit_bias_ids[ENGINE_MAX_LOGIT_BIAS];
    float logit_bias_vals[ENGINE_MAX_LOGIT_BIAS];
    int32_t *stop_ids;        /* extra token ids that end the request (owned by the request) */
    int n_stop_ids;
};

struct sampling_params sampling_default_params(void);

struct engine_request {
    const int32_t *prompt;    /* copied by engine_submit */
    int n_prompt;
    struct sampling_params sp;/* stop_ids copied too */
    char id[64];              /* request id for logs ("cmpl-..."), may be empty */
    /* Per-request STRING (REFERENCES-rope.md §8): string_set = 1 overrides the model's
     * default with string_shift (0 = off) and string_local (0 <= local < shift; -1 = the
     * model's, else 128). Part of the prefix-cache key too: STRING changes every layer's
     * output, so the keys and values of the layers above the first. */
    int string_set;
    int string_shift, string_local;
    /* ENGINE_SCHED_PRIORITY: lower first, ties by arrival (vLLM); must be 0 under FCFS */
    int64_t priority;
    uint64_t cache_salt;      /* mixed into the prefix-cache key (0: none) */
    int report_progress;      /* 1: ENGINE_EV_PROGRESS after every prefill chunk of the prompt */
};

enum finish_reason {
    FINISH_NONE = 0,
    FINISH_STOP,       /* EOS or a stop token id */
    FINISH_LENGTH,     /* max_tokens or max_model_len */
    FINISH_CANCELLED,  /* engine_cancel or engine shutdown */
    FINISH_ERROR,
};
const char *finish_reason_name(enum finish_reason r); /* "stop", "length", "cancelled", "error" */

enum engine_event_type {
    ENGINE_EV_PROMPT_TOKEN = 0, /* logprob of prompt token (prompt_logprobs; the first one has none) */
    ENGINE_EV_TOKEN,            /* a generated token */
    ENGINE_EV_DONE,             /* finished; reason set; the last event of a stream */
    ENGINE_EV_PROGRESS,         /* a prefill chunk of the prompt was computed (report_progress) */
};

struct engine_event {
    enum engine_event_type type;
    int32_t token;
    float logprob;            /* log-softmax of the raw logits (NaN for the first prompt token) */
    int n_top;
    int32_t top_ids[ENGINE_MAX_LOGPROBS];
    float top_logprobs[ENGINE_MAX_LOGPROBS]; /* best first */
    int rank;                 /* TOKEN, PROMPT_TOKEN: 1 + tokens with a higher logprob (vLLM's rank) */
    int stop;                 /* TOKEN: this token ends the request (EOS or one of stop_ids) */
    int32_t stop_token;       /* DONE(stop) by one of stop_ids: that id; else -1 (EOS, other) */
    int n_processed, n_total, n_cached; /* PROGRESS: prompt tokens in the cache now (prefix
                                           hits included), in the prompt, taken from the prefix
                                           cache at admission */
    float elapsed_s;          /* PROGRESS: seconds since the request was first admitted */
    enum finish_reason reason;/* DONE only */
    char err[128];            /* DONE with FINISH_ERROR */
};

typedef struct engine engine_t;
typedef struct engine_stream engine_stream_t;

/* How each request's RoPE factor is chosen. */
enum engine_rope_mode {
    ENGINE_ROPE_STATIC = 0,      /* the configured method for every request */
    ENGINE_ROPE_PER_REQUEST = 1, /* YaRN only: at admission, the smallest power of two >= (prompt
                                    + max_tokens) / original context, capped at the configured
                                    factor, fixed for the request's life */
};

/* Order of admission from the waiting queue (--scheduling-policy). */
enum engine_sched_policy {
    ENGINE_SCHED_FCFS = 0,     /* arrival order; a request's priority must be 0 */
    ENGINE_SCHED_PRIORITY = 1, /* lower priority value first, ties by arrival (vLLM); the victim
                                  of a preemption is the running sequence with the highest
                                  (priority, arrival) */
};

struct engine_params {
    enum engine_rope_mode rope_mode;
    enum engine_sched_policy sched_policy;
    int block_size;           /* tokens per KV block (power of two), default 16 */
    double kv_cache_gb;       /* KV pool size; 0 = enough for max_num_seqs x max_model_len, capped */
    int max_model_len;        /* 0 = the RoPE method's default context */
    int max_batched_tokens;   /* token budget per step (chunked prefill), default 2048 */
    int max_num_seqs;         /* running sequences, default 64 */
    int max_queue;            /* waiting requests (beyond the free --max-num-seqs slots) before
                                 ENGINE_E_QUEUE_FULL, default 1024 */
    int enable_prefix_cache;  /* default 1 */
    uint64_t seed;            /* engine RNG seed for requests without one */
};

struct engine_params engine_default_params(void);

/* Create the engine over a loaded model (borrowed; must outlive the engine), size and allocate
 * the KV pool, start the thread. Logs the memory plan. */
int engine_init(engine_t **out, const struct engine_params *p, model_t *m, char *err);
/* Stop the thread (cancelling what runs), free everything. NULL-safe. */
void engine_free(engine_t *e);

/* Queue a request. On success *out is the stream to read; the caller frees it with
 * engine_stream_free() after the DONE event or at any time (which cancels). Errors:
 * ENGINE_E_INVALID / ENGINE_E_TOO_LONG (err says why, naming numbers), ENGINE_E_QUEUE_FULL,
 * ENGINE_E_DRAINING. */
int engine_submit(engine_t *e, const struct engine_request *req, engine_stream_t **out, char *err);

/* Wait up to timeout_ms (<0: forever) for the next event. Returns 1 with *ev filled, 0 on
 * timeout. After a DONE event, further calls return the same DONE again. */
int engine_stream_next(engine_stream_t *s, struct engine_event *ev, int timeout_ms);
/* Ask the engine to stop the request; a DONE(cancelled) event follows. Idempotent. */
void engine_cancel(engine_stream_t *s);
/* Release the handle (cancels if not finished). */
void engine_stream_free(engine_stream_t *s);
/* An fd that becomes readable when the stream has events (eventfd), for poll()-based readers. */
int engine_stream_fd(engine_stream_t *s);

/* Refuse new requests from now on (ENGINE_E_DRAINING); running ones go on. */
void engine_drain(engine_t *e);

struct engine_stats {
    int num_running, num_waiting;
    int kv_blocks_total, kv_blocks_used;  /* used = referenced by a sequence */
    int kv_blocks_cached;                 /* unreferenced, kept for prefix reuse */
    uint64_t prefix_queries, prefix_hits; /* tokens looked up / found in the prefix cache */
    uint64_t preemptions;
    uint64_t kv_blocks_window_freed;      /* blocks released because they fell below every
                                             layer's sliding window (0 without one) */
    uint64_t steps, step_tokens;          /* forward passes and tokens they carried */
    uint64_t prompt_tokens, generation_tokens;
    int max_model_len, block_size;
};
void engine_get_stats(engine_t *e, struct engine_stats *st);
int engine_max_model_len(const engine_t *e);
/* The YaRN factor ENGINE_ROPE_PER_REQUEST picks for a request of total_len tokens (prompt +
 * max_tokens); the configured factor in static mode. */
double engine_rope_factor_for(const engine_t *e, long long total_len);
enum engine_rope_mode engine_get_rope_mode(const engine_t *e);
enum engine_sched_policy engine_get_sched_policy(const engine_t *e);
const model_t *engine_model(const engine_t *e);

#endif
