/* scheduler.c - iteration-level scheduling over the paged KV cache (the vLLM contract: plan a
 * step as {sequence: n_tokens}, run it, commit it).
 *
 * Each step:
 *   1. every running sequence in decode (one uncomputed token) gets 1 token; when its next
 *      slot starts a new block and none is left, the newest running sequence is preempted
 *      (blocks released, back to the front of the waiting queue, recomputed later);
 *   2. running sequences still prefilling get a chunk of the remaining token budget;
 *   3. waiting sequences are admitted in queue order while the budget, --max-num-seqs and the
 *      KV pool allow: a sequence is admitted only when blocks for ALL its tokens are available
 *      (after prefix-cache hits), and those blocks are allocated at admission, so a prefill
 *      never stalls half-way for lack of blocks; the head of the queue blocks the rest.
 * Queue order: arrival (FCFS), or with the priority policy (priority, arrival), lower first,
 * as vLLM. Priority decides admission order and the preemption victim only: a running
 * sequence is never preempted to make room for a waiting one (that would recompute whole 128k
 * prompts at arrivals), so whatever runs finishes; a waiting request of a worse priority waits
 * while better ones keep arriving, which is what strict priority means.
 * Decodes always come first, so a 128k prompt being prefilled in chunks never freezes the
 * other streams: it only gets what the budget leaves, and at most a quarter of it while
 * other sequences run or wait.
 *
 * Prefix caching: full blocks are registered by chain hash as their k/v get computed; at
 * admission the longest cached prefix of whole blocks is reused (at most n_tokens - 1 tokens,
 * since the last token must be computed to get logits). Requests that want prompt logprobs
 * skip the lookup: they need the logits of every prompt token.
 *
 * Sliding window (s->window = W > 0: every layer's queries see at most the last W keys). The
 * query at position p needs keys p - W + 1 .. p only, so after each commit the blocks wholly
 * below n_computed - W + 1 (the next token's window) are released: their table entries become
 * 0, the null block (the table stays append-only), and a hashed block goes to the prefix cache
 * like any released one. Blocks are allocated per chunk (grow), so a sequence holds at most
 * sched_window_blocks whatever its length; admission asks for that many to be available (or
 * the whole sequence, when shorter), and a chunk that cannot get its blocks preempts as a
 * decode does. With one full-attention layer (W = 0 here) nothing is released early.
 * What a cached block means there: the k/v of its tokens depend, through the stacked windows
 * of the layers, on earlier tokens, and the chain hash covers the whole prefix, so a hit still
 * means "the same prefix". A prefix of n blocks is reusable when the blocks the query at n *
 * block_size can see are cached, [first_live(n), n); the blocks below may be long evicted.
 *
 * No device memory and no model here: the runner turns a plan into a batch. */
#include <string.h>

#include <stdio.h>
#include <stdlib.h>

#include "../common/common.h"
#include "engine_internal.h"

int sched_init(struct scheduler *s, int n_blocks, int block_size, int max_batched_tokens,
               int max_num_seqs, int max_logits, int max_model_len, int prefix_cache)
{
    memset(s, 0, sizeof *s);
    if (bm_init(&s->bm, n_blocks, block_size) < 0) return -1;
    s->max_batched_tokens = max_batched_tokens;
    s->max_num_seqs = max_num_seqs;
    s->max_logits = max_logits;
    s->max_model_len = max_model_len;
    s->prefix_cache = prefix_cache;
    return 0;
}

void sched_free(struct scheduler *s)
{
    bm_free(&s->bm);
}

static void list_append(struct sequence **head, struct sequence *seq)
{
    seq->next = NULL;
    while (*head) head = &(*head)->next;
    *head = seq;
}

static int list_remove(struct sequence **head, struct sequence *seq)
{
    for (; *head; head = &(*head)->next) {
        if (*head == seq) {
            *head = seq->next;
            seq->next = NULL;
            return 1;
        }
    }
    return 0;
}

/* Priority policy: a before b when (priority, id) is lower; id = submission order. */
static int goes_before(const struct sequence *a, const struct sequence *b)
{
    return a->priority != b->priority ? a->priority < b->priority : a->id < b->id;
}

/* Into the waiting queue at its place: after everyone it does not go before. */
static void enqueue_waiting(struct scheduler *s, struct sequence *seq)
{
    struct sequence **at = &s->waiting;
    while (*at && !goes_before(seq, *at)) at = &(*at)->next;
    seq->next = *at;
    *at = seq;
}

void sched_add(struct scheduler *s, struct sequence *seq)
{
    seq->state = SEQ_STATE_WAITING;
    if (s->priority_policy) enqueue_waiting(s, seq);
    else list_append(&s->waiting, seq);
    s->n_waiting++;
}

int sched_window_blocks(int window, int max_batched_tokens, int block_size)
{
    return (window - 1 + max_batched_tokens + block_size - 1) / block_size + 1;
}

/* The first block holding a key that the query at position pos (or any later one) can see. */
static int first_live(const struct scheduler *s, int pos)
{
    int j = pos - s->window + 1;
    return j > 0 ? j / s->bm.block_size : 0;
}

static void release_blocks(struct scheduler *s, struct sequence *seq)
{
    for (int i = 0; i < seq->n_blocks; i++)
        if (seq->block_table[i] > 0) bm_decref(&s->bm, seq->block_table[i]);
    seq->n_blocks = 0;
    seq->n_freed = 0;
    seq->n_hashed = 0;
    seq->n_computed = 0;
}

void sched_finish(struct scheduler *s, struct sequence *seq)
{
    if (seq->state == SEQ_STATE_RUNNING) {
        CHECK(list_remove(&s->running, seq), "running sequence not in the running list");
        s->n_running--;
    } else if (seq->state == SEQ_STATE_WAITING) {
        CHECK(list_remove(&s->waiting, seq), "waiting sequence not in the waiting list");
        s->n_waiting--;
    }
    release_blocks(s, seq);
    seq->state = SEQ_STATE_FINISHED;
}

/* Room for n blocks in seq's table and hash array. */
static void reserve_blocks(struct sequence *seq, int n)
{
    if (n <= seq->cap_blocks) return;
    seq->cap_blocks = seq->cap_blocks * 2 + 8 > n ? seq->cap_blocks * 2 + 8 : n;
    seq->block_table = xrealloc(seq->block_table, sizeof(int) * seq->cap_blocks);
    seq->block_hash = xrealloc(seq->block_hash, sizeof(uint64_t) * seq->cap_blocks);
}

static void push_block(struct sequence *seq, int b)
{
    reserve_blocks(seq, seq->n_blocks + 1);
    seq->block_table[seq->n_blocks++] = b;
}

static void preempt(struct scheduler *s, struct sequence *seq)
{
    CHECK(list_remove(&s->running, seq), "preempting a sequence that is not running");
    s->n_running--;
    release_blocks(s, seq);
    seq->state = SEQ_STATE_WAITING;
    if (s->priority_policy) {
        enqueue_waiting(s, seq); /* its place by (priority, arrival) */
    } else {
        seq->next = s->waiting; /* front of the queue: it was admitted before everyone waiting */
        s->waiting = seq;
    }
    s->n_waiting++;
    seq->n_preempted++;
    s->preemptions++;
    LOG_D("%s: preempted (%d tokens will be recomputed)", seq->req_id, seq->n_tokens - 1);
}

static int in_plan(const struct sched_plan *p, const struct sequence *seq)
{
    for (int i = 0; i < p->n; i++)
        if (p->e[i].seq == seq) return 1;
    return 0;
}

/* The preemption victim among the running sequences not already in plan p: the newest
 * admitted (FCFS), or the one with the highest (priority, arrival) (priority policy, vLLM's
 * choice). The sequence asking for a block is running and not yet in p, so there is one. */
static struct sequence *preemption_victim(struct scheduler *s, const struct sched_plan *p)
{
    struct sequence *best = NULL;
    for (struct sequence *q = s->running; q; q = q->next) {
        if (in_plan(p, q)) continue;
        if (!best) best = q;
        else if (s->priority_policy ? goes_before(best, q) : q->admit_order > best->admit_order) best = q;
    }
    return best;
}

/* The prefix-cache salt: everything per request that changes what a layer's k/v hold, and the
 * request's own cache_salt (vLLM: tenants that must not probe each other's prompts). The
 * YaRN factor rotates the keys; STRING changes every layer's attention output and so the
 * keys and values of the layers above it. 0 for a plain request. */
static uint64_t salt_of(const struct sequence *seq)
{
    uint64_t bits;
    double f = seq->rope_factor;
    memcpy(&bits, &f, sizeof bits);
    if (seq->string_shift > 0)
        bits ^= 0x9e3779b97f4a7c15ull * (((uint64_t)(uint32_t)seq->string_shift << 32) |
                                        (uint32_t)seq->string_local | 1);
    if (seq->cache_salt) bits ^= seq->cache_salt * 0xbf58476d1ce4e5b9ull + 0x94d049bb133111ebull;
    return bits;
}

static void plan_push(struct sched_plan *p, struct sequence *seq, int n, int sample, int n_logits)
{
    if (p->n == p->cap) {
        p->cap = p->cap * 2 + 16;
        p->e = xrealloc(p->e, sizeof *p->e * p->cap);
    }
    p->e[p->n++] = (struct sched_entry){.seq = seq, .n_tokens = n, .sample = sample, .n_logits = n_logits};
    p->n_tokens += n;
    p->n_logits += n_logits;
}

void plan_free(struct sched_plan *p)
{
    free(p->e);
    memset(p, 0, sizeof *p);
}

static int wants_prompt_logprobs(const struct sequence *seq)
{
    return seq->sp.prompt_logprobs && seq->prompt_lp_next < seq->n_prompt;
}

/* Sliding window: give seq the blocks of positions [0, upto) (entries below n_freed stay 0),
 * preempting when the pool is empty and may_preempt (as a decode does). Returns 0, or -1 when
 * no block was left (may_preempt 0) or seq itself was preempted. */
static int grow(struct scheduler *s, struct sched_plan *p, struct sequence *seq, int upto, int may_preempt)
{
    const int bs = s->bm.block_size;
    while (seq->n_blocks * bs < upto) {
        int b = bm_alloc(&s->bm);
        if (b > 0) {
            push_block(seq, b);
            continue;
        }
        if (!may_preempt) return -1;
        struct sequence *victim = preemption_victim(s, p);
        CHECK(victim, "no preemption victim");
        preempt(s, victim);
        if (victim == seq) return -1;
    }
    return 0;
}

/* Add a prefill chunk of seq to the plan within the budgets; returns tokens planned. While
 * other sequences run or wait, a chunk is capped at a quarter of the budget (vLLM's
 * long_prefill_token_threshold): steps stay short, so the other streams' inter-token time and
 * a newcomer's time to first token stay bounded during a 128k prefill. Alone, a prefill gets
 * the whole budget (throughput). */
static int plan_chunk(struct scheduler *s, struct sched_plan *p, struct sequence *seq, int may_preempt)
{
    int crowded = s->n_running > 1 || s->waiting;
    int cap = crowded ? (s->max_batched_tokens + 3) / 4 : s->max_batched_tokens;
    int remaining = seq->n_tokens - seq->n_computed;
    int n = remaining < cap ? remaining : cap;
    int budget = s->max_batched_tokens - p->n_tokens;
    if (n > budget) n = budget;
    int lp = wants_prompt_logprobs(seq);
    int logit_budget = s->max_logits - p->n_logits;
    if (lp && n > logit_budget) n = logit_budget;
    if (n <= 0) return 0;
    int sample = seq->n_computed + n == seq->n_tokens;
    if (sample && !lp && logit_budget < 1) {
        if (--n <= 0) return 0; /* keep the last token for a step with room for its logits */
        sample = 0;
    }
    if (s->window > 0 && grow(s, p, seq, seq->n_computed + n, may_preempt) < 0) return 0;
    plan_push(p, seq, n, sample, lp ? n : sample);
    return n;
}

/* Sliding window: the longest prefix of n <= (n_tokens - 1) / block_size blocks whose blocks
 * [first_live(n * block_size), n) are all cached (the ones below are never read). Takes them
 * (entries below are 0, n_freed = first_live) and returns n. */
static int lookup_window(struct scheduler *s, struct sequence *seq)
{
    const int bs = s->bm.block_size;
    const int max_hit = (seq->n_tokens - 1) / bs;
    if (max_hit <= 0) return 0;
    reserve_blocks(seq, max_hit);
    int *found = xmalloc(sizeof(int) * (size_t)max_hit);
    uint64_t parent = 0, salt = salt_of(seq);
    for (int i = 0; i < max_hit; i++) {
        const int32_t *t = seq->tokens + (size_t)i * bs;
        seq->block_hash[i] = bm_hash_block(parent, t, bs, salt);
        found[i] = bm_find(&s->bm, seq->block_hash[i], parent, t);
        parent = seq->block_hash[i];
    }
    int best = 0, last_miss = -1;
    for (int n = 1; n <= max_hit; n++) {
        if (found[n - 1] < 0) last_miss = n - 1;
        if (last_miss < first_live(s, n * bs)) best = n;
    }
    const int first = first_live(s, best * bs);
    for (int i = 0; i < best; i++) {
        seq->block_table[i] = i < first ? 0 : found[i];
        if (i >= first) bm_incref(&s->bm, found[i]);
    }
    seq->n_blocks = best;
    seq->n_freed = best ? first : 0;
    s->bm.queries += (uint64_t)max_hit;
    s->bm.hits += (uint64_t)(best - (best ? first : 0));
    free(found);
    return best;
}

/* Try to admit the head of the waiting queue. Returns 1 when admitted. */
static int admit(struct scheduler *s, struct sequence *seq)
{
    const int bs = s->bm.block_size;
    int n_hit = 0;
    /* prefix cache: reuse the longest run of cached full blocks, leaving >= 1 token to compute */
    if (s->prefix_cache && !seq->sp.prompt_logprobs && s->window > 0) {
        n_hit = lookup_window(s, seq);
    } else if (s->prefix_cache && !seq->sp.prompt_logprobs) {
        uint64_t parent = 0, salt = salt_of(seq);
        int max_hit = (seq->n_tokens - 1) / bs;
        for (int i = 0; i < max_hit; i++) {
            const int32_t *t = seq->tokens + (size_t)i * bs;
            uint64_t h = bm_hash_block(parent, t, bs, salt);
            int b = bm_lookup(&s->bm, h, parent, t);
            if (b < 0) break;
            bm_incref(&s->bm, b);
            push_block(seq, b);
            seq->block_hash[i] = h;
            parent = h;
            n_hit++;
        }
    }
    int need = (seq->n_tokens + bs - 1) / bs - n_hit;
    if (s->window > 0) { /* what it will hold at most; allocated per chunk (plan_chunk) */
        int most = sched_window_blocks(s->window, s->max_batched_tokens, bs);
        if (need > most) need = most;
    }
    if (bm_available(&s->bm) < need) {
        release_blocks(s, seq); /* give the hits back (they return to the cache) */
        return 0;
    }
    for (int i = 0; i < need && s->window == 0; i++) {
        int b = bm_alloc(&s->bm);
        CHECK(b > 0, "block allocation failed after the availability check");
        push_block(seq, b);
    }
    seq->n_hashed = n_hit;
    seq->n_computed = n_hit * bs;
    seq->n_cached = n_hit * bs;
    if (seq->t_admitted == 0) seq->t_admitted = now_s();
    CHECK(list_remove(&s->waiting, seq), "admitted sequence not waiting");
    s->n_waiting--;
    seq->state = SEQ_STATE_RUNNING;
    seq->admit_order = ++s->admit_counter;
    list_append(&s->running, seq);
    s->n_running++;
    return 1;
}

void sched_plan(struct scheduler *s, struct sched_plan *p)
{
    const int bs = s->bm.block_size;
    p->n = p->n_tokens = p->n_logits = 0;

    /* 1. decodes */
    for (struct sequence *seq = s->running, *next; seq; seq = next) {
        next = seq->next;
        if (seq->n_tokens - seq->n_computed != 1) continue;
        if (p->n_tokens >= s->max_batched_tokens || p->n_logits >= s->max_logits) break;
        int preempted_self = 0;
        while (seq->n_computed / bs >= seq->n_blocks) { /* its next slot starts a new block */
            int b = bm_alloc(&s->bm);
            if (b > 0) {
                push_block(seq, b);
                break;
            }
            struct sequence *victim = preemption_victim(s, p);
            if (victim == next) next = victim->next;
            preempt(s, victim);
            if (victim == seq) {
                preempted_self = 1;
                break;
            }
        }
        if (!preempted_self) plan_push(p, seq, 1, 1, 1);
    }

    /* 2. running sequences still prefilling (admitted earlier, chunked) */
    for (struct sequence *seq = s->running; seq; seq = seq->next) {
        if (seq->n_tokens - seq->n_computed <= 1) continue;
        if (p->n >= s->max_num_seqs) break;
        if (plan_chunk(s, p, seq, 1) == 0) break;
    }

    /* 3. FCFS admission */
    while (s->waiting && p->n < s->max_num_seqs && s->n_running < s->max_num_seqs &&
           p->n_tokens < s->max_batched_tokens && p->n_logits < s->max_logits) {
        struct sequence *seq = s->waiting;
        if (!admit(s, seq)) break;
        if (plan_chunk(s, p, seq, 0) == 0) break;
    }
}

void sched_commit(struct scheduler *s, const struct sched_plan *p)
{
    const int bs = s->bm.block_size;
    for (int i = 0; i < p->n; i++) {
        struct sequence *seq = p->e[i].seq;
        seq->n_computed += p->e[i].n_tokens;
        CHECK(seq->n_computed <= seq->n_tokens, "computed past the end of the sequence");
        while (s->prefix_cache && (seq->n_hashed + 1) * bs <= seq->n_computed) {
            int k = seq->n_hashed;
            uint64_t parent = k ? seq->block_hash[k - 1] : 0;
            const int32_t *t = seq->tokens + (size_t)k * bs;
            uint64_t h = bm_hash_block(parent, t, bs, salt_of(seq));
            seq->block_hash[k] = h;
            bm_register(&s->bm, seq->block_table[k], h, parent, t);
            seq->n_hashed++;
        }
        /* sliding window: release what the next token's window no longer covers (registered
         * above first, so a hashed block stays reusable from the prefix cache) */
        for (int first = s->window > 0 ? first_live(s, seq->n_computed) : 0;
             seq->n_freed < first && seq->n_freed < seq->n_blocks; seq->n_freed++) {
            int b = seq->block_table[seq->n_freed];
            if (b > 0) {
                bm_decref(&s->bm, b);
                seq->block_table[seq->n_freed] = 0;
                s->window_frees++;
            }
        }
    }
}
