/* engine_internal.h - the pieces of the engine, shared by the files of engine/ only:
 *   sequence.c      request state (struct sequence) and the per-request event stream
 *   block_manager.c KV blocks: free list, reference counts, prefix hashes, LRU eviction
 *   scheduler.c     waiting/running queues -> a plan {seq: n_tokens}; commit of sampled tokens
 *   runner.c        a plan -> one struct bk_batch -> model_forward (no policy)
 *   sampler.c       logits -> next token, logprobs
 *   engine.c        the thread, the request queue, the public API
 * Tests (tests/test_engine.c) include this header to unit-test the pieces. */
#ifndef ROPESERVE_ENGINE_INTERNAL_H
#define ROPESERVE_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "engine.h"

/* ---------------------------------------------------------------------------------------------
 * Per-request event stream (ring + mutex + condvar + eventfd), shared by the engine thread (the
 * producer) and the caller (the consumer). Reference counted: freed when both let go. */
struct engine_stream {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int efd;                    /* eventfd, readable while events are pending */
    struct engine_event *ev;    /* ring buffer */
    int cap, head, count;
    int done;                   /* DONE was pushed */
    struct engine_event last;   /* the DONE event, repeated after it is read */
    atomic_int cancelled;       /* set by the consumer, read by the engine thread */
    atomic_int refs;            /* 2 while both sides hold it */
};

struct engine_stream *stream_new(void);
void stream_push(struct engine_stream *s, const struct engine_event *ev);
void stream_release(struct engine_stream *s);

/* ---------------------------------------------------------------------------------------------
 * Sequence: one request inside the engine.
 *
 *   WAITING --admit--> RUNNING --finish--> FINISHED
 *      ^                  |
 *      +----preempt-------+        (blocks freed, n_computed reset, recomputed later)
 *   cancel: WAITING/RUNNING -> FINISHED at the start of the next step.
 */
enum seq_state {
    SEQ_STATE_WAITING = 0, /* queued; holds no blocks */
    SEQ_STATE_RUNNING,     /* admitted; holds blocks for its computed (and scheduled) tokens */
    SEQ_STATE_FINISHED,    /* done; blocks released; about to be freed */
};

struct sequence {
    uint64_t id;
    char req_id[64];
    enum seq_state state;
    int32_t *tokens;           /* (cap) prompt followed by generated tokens */
    int n_tokens, cap;
    int n_prompt;
    int n_computed;            /* tokens whose k/v are in the cache */
    int *block_table;          /* (cap_blocks) append-only while running; entries below n_freed
                                  are 0 (the null block) */
    int n_blocks, cap_blocks;
    int n_freed;               /* sliding window: blocks [0, n_freed) were released (below every
                                  layer's window) or never needed (a prefix-cache hit) */
    int n_hashed;              /* full blocks whose hash is registered */
    uint64_t *block_hash;      /* (cap_blocks) chain hash of each full block */
    int n_generated;
    int prompt_lp_next;        /* next prompt index whose logprob event is due */
    struct sampling_params sp;
    uint64_t rng[4];
    double rope_factor;        /* per-request YaRN factor (0: the model's rope); set at submit */
    int string_shift, string_local; /* STRING S and W (S = 0: off); set at submit */
    int64_t priority;          /* ENGINE_SCHED_PRIORITY: lower first; ties by id (arrival) */
    uint64_t cache_salt;       /* mixed into every block hash (salt_of) */
    int report_progress;       /* ENGINE_EV_PROGRESS after each prompt chunk */
    int n_cached;              /* prompt tokens taken from the prefix cache at (re)admission */
    const int *eos_ids;        /* (n_eos) the engine's EOS ids (it outlives every sequence); masked
                                  with stop_ids while n_generated < sp.min_tokens */
    int n_eos;
    struct engine_stream *stream;
    double t_arrival, t_first;
    double t_admitted;         /* first admission (0: never), for progress events */
    uint64_t admit_order;      /* FCFS preemption picks the highest */
    int n_preempted;
    struct sequence *next;     /* intrusive list (waiting or running) */
};

struct sequence *seq_new(const struct engine_request *req, uint64_t id, int max_len);
void seq_free(struct sequence *s);
void seq_append(struct sequence *s, int32_t tok);

/* ---------------------------------------------------------------------------------------------
 * Block manager. Block 0 is the reserved null block (never handed out; pads block tables).
 * A block is free (ref 0, no hash), cached (ref 0, hashed: evictable in LRU order, reusable by
 * a prompt with the same prefix) or used (ref > 0). */
struct block_manager {
    int n_blocks, block_size;
    int *ref;                /* (n_blocks) */
    uint64_t *hash;          /* (n_blocks) chain hash, 0 = none */
    int32_t *tokens;         /* (n_blocks, block_size) the tokens of a hashed block, to verify hits */
    uint64_t *parent;        /* (n_blocks) hash of the previous block, to verify hits */
    int *free_stack, n_free; /* never-hashed free blocks */
    int *lru_prev, *lru_next, lru_head, lru_tail, n_cached; /* cached blocks, oldest at head */
    int *bucket, n_buckets, *chain; /* hash table: bucket -> block, chain -> next block */
    uint64_t hits, queries;
};

int bm_init(struct block_manager *bm, int n_blocks, int block_size);
void bm_free(struct block_manager *bm);
int bm_available(const struct block_manager *bm);  /* free + cached */
int bm_used(const struct block_manager *bm);       /* blocks with ref > 0 */
/* A new block (ref 1), evicting the least recently used cached block if needed; -1 if none. */
int bm_alloc(struct block_manager *bm);
void bm_incref(struct block_manager *bm, int b);
void bm_decref(struct block_manager *bm, int b);
uint64_t bm_hash_block(uint64_t parent, const int32_t *tokens, int n, uint64_t salt);
/* Register block b (full, ref > 0) under hash h; a no-op if another block has that hash. */
void bm_register(struct block_manager *bm, int b, uint64_t h, uint64_t parent, const int32_t *tokens);
/* The block cached under h whose tokens and parent match, or -1. Counts hits/queries. */
int bm_lookup(struct block_manager *bm, uint64_t h, uint64_t parent, const int32_t *tokens);
/* The same without counting (the caller counts what it reuses). */
int bm_find(const struct block_manager *bm, uint64_t h, uint64_t parent, const int32_t *tokens);

/* ---------------------------------------------------------------------------------------------
 * Scheduler: plan one step, then commit it. */
struct sched_entry {
    struct sequence *seq;
    int n_tokens;     /* tokens computed this step: [seq->n_computed, + n_tokens) */
    int sample;       /* 1 when the step reaches the end of the sequence: sample the next token */
    int n_logits;     /* logits rows this sequence needs (prompt logprobs: every row) */
};

struct sched_plan {
    struct sched_entry *e;
    int n, cap;
    int n_tokens, n_logits;
};

struct scheduler {
    struct block_manager bm;
    struct sequence *waiting, *running; /* FCFS lists */
    int n_waiting, n_running;
    int max_batched_tokens, max_num_seqs, max_logits, max_model_len;
    int prefix_cache;
    int priority_policy;      /* ENGINE_SCHED_PRIORITY: waiting queue ordered by (priority, id) */
    /* Sliding window (set after sched_init): W > 0 when every layer attends to the last W keys
     * at most (model_config_window_all). The blocks below the window of a sequence's next token
     * are released at commit, and blocks are then allocated per chunk (a sequence holds at most
     * sched_window_blocks), not all at admission. 0: full attention, nothing is released early. */
    int window;
    uint64_t admit_counter, preemptions;
    uint64_t window_frees;    /* blocks released because they fell below the window */
};

int sched_init(struct scheduler *s, int n_blocks, int block_size, int max_batched_tokens,
               int max_num_seqs, int max_logits, int max_model_len, int prefix_cache);
void sched_free(struct scheduler *s);
/* The most blocks one sequence holds at once when every layer slides with window W and chunks
 * have at most max_batched_tokens tokens: its next chunk and the W - 1 keys before it, which may
 * start mid-block. */
int sched_window_blocks(int window, int max_batched_tokens, int block_size);
/* To the waiting queue: its tail (FCFS), or after every sequence with a lower or equal
 * (priority, id) (priority policy). */
void sched_add(struct scheduler *s, struct sequence *seq);
/* Remove seq from its queue, release its blocks (hashes kept for reuse), mark FINISHED. */
void sched_finish(struct scheduler *s, struct sequence *seq);
/* Plan a step: all running decodes first, then prefill chunks (partial ones, then admission
 * of waiting sequences in queue order while the head fits), under the token budget. Preempts
 * the newest running sequence (priority policy: the one with the highest (priority, id)) when
 * a decode cannot get a block. Empty plan: nothing to do. */
void sched_plan(struct scheduler *s, struct sched_plan *p);
/* After the forward: advance n_computed, register full blocks for prefix reuse. */
void sched_commit(struct scheduler *s, const struct sched_plan *p);
void plan_free(struct sched_plan *p);

/* ---------------------------------------------------------------------------------------------
 * Runner: plan -> batch -> forward. Owns the host arrays of the batch. */
struct runner {
    model_t *model;
    int rotary_pairs;
    int32_t *tokens, *positions, *query_start, *seq_lens, *block_tables, *out_rows;
    int32_t *string_shift, *string_local;
    int64_t *slots;
    float *inv_freq, *attn_factor, *q_scale, *logits;
    struct rope *variants;     /* per-request factors (ENGINE_ROPE_PER_REQUEST), owned */
    int n_variants;
    int cap_tokens, cap_seqs, cap_bt, cap_out;
    int vocab;
};

int runner_init(struct runner *r, model_t *m, int max_tokens, int max_seqs, int max_out);
void runner_free(struct runner *r);
/* Build the rope of each factor a request may be given (ENGINE_ROPE_PER_REQUEST). */
int runner_add_factors(struct runner *r, const double *factors, int n, char *err);
/* Run the plan; logits for each entry's rows land in r->logits in plan order. */
int runner_run(struct runner *r, const struct sched_plan *p, int block_size, char *err);

/* ---------------------------------------------------------------------------------------------
 * Sampler. */
void sampler_seed(uint64_t rng[4], uint64_t seed);
/* Pick the next token of seq from logits (vocab). Fills ev (token, logprob, top K) with
 * log-softmax values of the raw logits. scratch: 2 * vocab floats; iscratch: vocab ints. */
int32_t sampler_sample(struct sequence *seq, const float *logits, int vocab, struct engine_event *ev,
                       float *scratch, int *iscratch);
/* log-softmax of the raw logits: the logprob of `token` and the top n (best first). */
void sampler_logprobs(const float *logits, int vocab, int32_t token, int n, struct engine_event *ev);

#endif
