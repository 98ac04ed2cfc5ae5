/* test_engine.c - unit tests of the block manager and the scheduler, on a fake runner (no
 * model): a "step" commits the plan and appends a token to every sequence that sampled. */
#include <string.h>

#include "../common/common.h"
#include "../engine/engine_internal.h"
#include "test.h"

/* --------------------------------------------------------------------------------------------- */

static void test_block_manager(void)
{
    struct block_manager bm;
    TEST_COND("bm_init", bm_init(&bm, 9, 4) == 0); /* 8 usable + null block */
    TEST_COND("available at start", bm_available(&bm) == 8);
    int got[8], zero_seen = 0;
    for (int i = 0; i < 8; i++) {
        got[i] = bm_alloc(&bm);
        if (got[i] == 0) zero_seen = 1;
    }
    TEST_COND("null block never handed out", !zero_seen);
    TEST_COND("exhaustion returns -1", bm_alloc(&bm) == -1);
    TEST_COND("used = 8", bm_used(&bm) == 8);
    /* refcounts: a shared block stays used until both let go */
    bm_incref(&bm, got[0]);
    bm_decref(&bm, got[0]);
    TEST_COND("shared block still used", bm_used(&bm) == 8);
    bm_decref(&bm, got[0]);
    TEST_COND("freed after last ref", bm_used(&bm) == 7 && bm_available(&bm) == 1);
    /* hashing: register two full blocks, release them: they become cached, not free */
    int32_t ta[4] = {1, 2, 3, 4}, tb[4] = {5, 6, 7, 8}, tc[4] = {1, 2, 3, 5};
    uint64_t ha = bm_hash_block(0, ta, 4, 0), hb = bm_hash_block(ha, tb, 4, 0);
    TEST_COND("hash depends on tokens", ha != bm_hash_block(0, tc, 4, 0));
    TEST_COND("hash depends on parent", hb != bm_hash_block(0, tb, 4, 0));
    TEST_COND("hash depends on salt", ha != bm_hash_block(0, ta, 4, 7));
    bm_register(&bm, got[1], ha, 0, ta);
    bm_register(&bm, got[2], hb, ha, tb);
    bm_decref(&bm, got[1]);
    bm_decref(&bm, got[2]);
    TEST_COND("cached blocks count as available", bm_available(&bm) == 3 && bm.n_cached == 2);
    TEST_COND("lookup hit", bm_lookup(&bm, ha, 0, ta) == got[1]);
    TEST_COND("lookup verifies tokens", bm_lookup(&bm, ha, 0, tc) == -1);
    TEST_COND("lookup verifies parent", bm_lookup(&bm, hb, 0, tb) == -1);
    /* reuse a cached block: it leaves the LRU */
    bm_incref(&bm, got[2]);
    TEST_COND("incref of cached block", bm.n_cached == 1 && bm_used(&bm) == 6);
    /* allocation takes free blocks first, then evicts the LRU cached block */
    int f = bm_alloc(&bm);
    TEST_COND("free block first", f == got[0]);
    int ev = bm_alloc(&bm);
    TEST_COND("then evicts the oldest cached", ev == got[1] && bm_lookup(&bm, ha, 0, ta) == -1);
    TEST_COND("nothing left", bm_alloc(&bm) == -1);
    bm_free(&bm);
}

/* --------------------------------------------------------------------------------------------- */

static struct sequence *mkseq(int id, int n_prompt, int max_tokens, int first_tok)
{
    int32_t *p = xmalloc(sizeof(int32_t) * n_prompt);
    for (int i = 0; i < n_prompt; i++) p[i] = first_tok + i;
    struct engine_request req;
    memset(&req, 0, sizeof req);
    req.prompt = p;
    req.n_prompt = n_prompt;
    req.sp = sampling_default_params();
    req.sp.max_tokens = max_tokens;
    struct sequence *s = seq_new(&req, id, 1 << 20);
    snprintf(s->req_id, sizeof s->req_id, "seq%d", id);
    free(p);
    return s;
}

/* One fake step: plan, commit, append token 7 to every sequence that sampled. */
static void step(struct scheduler *s, struct sched_plan *p)
{
    sched_plan(s, p);
    sched_commit(s, p);
    for (int i = 0; i < p->n; i++)
        if (p->e[i].sample) seq_append(p->e[i].seq, 7);
}

static int plan_has(const struct sched_plan *p, const struct sequence *seq, int *n)
{
    for (int i = 0; i < p->n; i++)
        if (p->e[i].seq == seq) { if (n) *n = p->e[i].n_tokens; return 1; }
    return 0;
}

static void test_budget_and_chunking(void)
{
    struct scheduler s;
    struct sched_plan p = {0};
    sched_init(&s, 1024, 16, 2048, 64, 256, 1 << 20, 1);
    struct sequence *a = mkseq(1, 3000, 4, 10), *b = mkseq(2, 100, 4, 20), *c = mkseq(3, 50, 4, 30);
    sched_add(&s, a);
    sched_add(&s, b);
    sched_add(&s, c);
    sched_plan(&s, &p);
    int n = 0;
    TEST_COND("first step: a quarter-budget chunk of the long prompt, the short ones whole",
              p.n == 3 && plan_has(&p, a, &n) && n == 512 && plan_has(&p, b, NULL) && plan_has(&p, c, NULL));
    TEST_COND("budget respected", p.n_tokens <= 2048);
    sched_commit(&s, &p);
    for (int i = 0; i < p.n; i++) if (p.e[i].sample) seq_append(p.e[i].seq, 7);
    sched_plan(&s, &p);
    TEST_COND("second step: a's next chunk beside the decodes of b and c", plan_has(&p, a, &n) && n == 512 && plan_has(&p, b, &n) && n == 1 && plan_has(&p, c, NULL));
    sched_commit(&s, &p);
    for (int i = 0; i < p.n; i++) if (p.e[i].sample) seq_append(p.e[i].seq, 7);
    while (a->n_tokens == 3000) step(&s, &p);
    TEST_COND("a samples when its prompt is done", a->n_tokens == 3001);
    /* a long prompt arrives: decodes of a, b, c must go on every step while it is chunked */
    struct sequence *d = mkseq(4, 9000, 4, 40);
    sched_add(&s, d);
    int starved = 0, chunks = 0;
    for (int k = 0; k < 3; k++) {
        sched_plan(&s, &p);
        if (!plan_has(&p, a, &n) || n != 1 || !plan_has(&p, b, NULL) || !plan_has(&p, c, NULL)) starved = 1;
        if (plan_has(&p, d, &n) && n <= 512) chunks++;
        if (p.n_tokens > 2048) starved = 1;
        sched_commit(&s, &p);
        for (int i = 0; i < p.n; i++) if (p.e[i].sample) seq_append(p.e[i].seq, 7);
    }
    TEST_COND("decodes never starved by a long prefill", !starved && chunks == 3);
    TEST_COND("long prefill chunked", d->n_computed == 3 * 512);
    /* a short request arriving during the long prefill is admitted at the next step */
    struct sequence *e = mkseq(5, 20, 4, 50);
    sched_add(&s, e);
    sched_plan(&s, &p);
    int nd = 0;
    TEST_COND("waiting request admitted beside a long prefill", plan_has(&p, e, &n) && n == 20);
    TEST_COND("the long prefill yields most of the budget", plan_has(&p, d, &nd) && nd <= 512);
    sched_commit(&s, &p);
    sched_finish(&s, e);
    seq_free(e);
    sched_finish(&s, a);
    sched_finish(&s, b);
    sched_finish(&s, c);
    sched_finish(&s, d);
    TEST_COND("all blocks released", bm_used(&s.bm) == 0);
    seq_free(a); seq_free(b); seq_free(c); seq_free(d);
    plan_free(&p);
    sched_free(&s);
}

static void test_fcfs_and_admission(void)
{
    struct scheduler s;
    struct sched_plan p = {0};
    sched_init(&s, 11, 16, 4096, 64, 256, 1 << 20, 0); /* 10 usable blocks = 160 tokens */
    struct sequence *a = mkseq(1, 100, 4, 10), *b = mkseq(2, 100, 4, 20), *c = mkseq(3, 10, 4, 30);
    sched_add(&s, a);
    sched_add(&s, b);
    sched_add(&s, c);
    sched_plan(&s, &p);
    TEST_COND("a admitted (7 blocks)", plan_has(&p, a, NULL) && a->state == SEQ_STATE_RUNNING);
    TEST_COND("b does not fit: waits", !plan_has(&p, b, NULL) && b->state == SEQ_STATE_WAITING);
    TEST_COND("FCFS: c waits behind b though it would fit", !plan_has(&p, c, NULL));
    sched_commit(&s, &p);
    sched_finish(&s, a);
    sched_plan(&s, &p);
    TEST_COND("after a finishes b is admitted", plan_has(&p, b, NULL));
    sched_commit(&s, &p);
    sched_finish(&s, b);
    sched_finish(&s, c);
    TEST_COND("cancel of a waiting sequence", c->state == SEQ_STATE_FINISHED && bm_used(&s.bm) == 0);
    seq_free(a); seq_free(b); seq_free(c);
    plan_free(&p);
    sched_free(&s);
}

static void test_preemption(void)
{
    struct scheduler s;
    struct sched_plan p = {0};
    sched_init(&s, 9, 4, 4096, 64, 256, 1 << 20, 1); /* 8 blocks of 4 tokens */
    struct sequence *a = mkseq(1, 8, 100, 10), *b = mkseq(2, 8, 100, 50), *c = mkseq(3, 4, 100, 90);
    sched_add(&s, a);
    sched_add(&s, b);
    sched_add(&s, c);
    step(&s, &p); /* all admitted: 2 + 2 + 1 blocks */
    TEST_COND("three running", s.n_running == 3 && bm_used(&s.bm) == 5);
    int k = 0;
    while (s.preemptions == 0 && k++ < 50) step(&s, &p);
    TEST_COND("a preemption happened", s.preemptions >= 1);
    TEST_COND("the newest (c) was preempted and waits at the front", c->state == SEQ_STATE_WAITING && s.waiting == c);
    TEST_COND("preempted sequence holds no blocks", c->n_blocks == 0 && c->n_computed == 0);
    TEST_COND("older ones still run", a->state == SEQ_STATE_RUNNING && b->state == SEQ_STATE_RUNNING);
    int c_tokens = c->n_tokens;
    sched_finish(&s, b);
    step(&s, &p);
    TEST_COND("c readmitted and recomputed in one chunk", c->state == SEQ_STATE_RUNNING && c->n_computed == c_tokens);
    TEST_COND("recompute samples a new token", c->n_tokens == c_tokens + 1);
    sched_finish(&s, a);
    sched_finish(&s, c);
    TEST_COND("everything released (cached blocks unreferenced)", bm_used(&s.bm) == 0);
    seq_free(a); seq_free(b); seq_free(c);
    plan_free(&p);
    sched_free(&s);
}

static void test_prefix_cache(void)
{
    struct scheduler s;
    struct sched_plan p = {0};
    sched_init(&s, 512, 16, 4096, 64, 256, 1 << 20, 1);
    struct sequence *a = mkseq(1, 1000, 4, 10);
    sched_add(&s, a);
    step(&s, &p);
    TEST_COND("first request computes everything", p.n_tokens == 1000);
    sched_finish(&s, a);
    struct sequence *b = mkseq(2, 1010, 4, 10); /* same first 1000 tokens */
    sched_add(&s, b);
    sched_plan(&s, &p);
    int n = 0;
    TEST_COND("second request reuses 62 cached blocks", plan_has(&p, b, &n) && n == 1010 - 992);
    TEST_COND("hits counted", s.bm.hits == 62);
    sched_commit(&s, &p);
    sched_finish(&s, b);
    /* an identical prompt keeps its last token to compute */
    struct sequence *c = mkseq(3, 992, 4, 10);
    sched_add(&s, c);
    sched_plan(&s, &p);
    TEST_COND("whole-prompt hit leaves the last block to compute", plan_has(&p, c, &n) && n == 16);
    sched_commit(&s, &p);
    sched_finish(&s, c);
    /* prompt logprobs skip the cache */
    struct sequence *d = mkseq(4, 100, 0, 10);
    d->sp.prompt_logprobs = 1;
    sched_add(&s, d);
    sched_plan(&s, &p);
    TEST_COND("prompt logprobs: no reuse, logits for every row", plan_has(&p, d, &n) && n == 100 && p.n_logits == 100);
    sched_commit(&s, &p);
    sched_finish(&s, d);
    TEST_COND("no block referenced at the end", bm_used(&s.bm) == 0);
    seq_free(a); seq_free(b); seq_free(c); seq_free(d);
    plan_free(&p);
    sched_free(&s);
}

static void test_sampler(void)
{
    struct sequence *s = mkseq(1, 3, 4, 1);
    float logits[8] = {0.5f, 2.0f, 2.0f, -1.0f, 0.0f, 1.0f, -3.0f, 0.25f};
    float scratch[16];
    int iscratch[8];
    struct engine_event ev;
    s->sp.temperature = 0;
    s->sp.n_logprobs = 3;
    int32_t t = sampler_sample(s, logits, 8, &ev, scratch, iscratch);
    TEST_COND("greedy takes the lowest id on a tie", t == 1);
    TEST_COND("top logprobs best first", ev.n_top == 3 && ev.top_ids[0] == 1 && ev.top_ids[1] == 2 && ev.top_ids[2] == 5);
    double z = 0;
    for (int i = 0; i < 8; i++) z += exp(logits[i]);
    TEST_COND("logprob is the raw log-softmax", fabs(ev.logprob - (2.0 - log(z))) < 1e-5);
    s->sp.logit_bias_ids[0] = 6;
    s->sp.logit_bias_vals[0] = 100;
    s->sp.n_logit_bias = 1;
    TEST_COND("logit_bias", sampler_sample(s, logits, 8, &ev, scratch, iscratch) == 6);
    s->sp.n_logit_bias = 0;
    s->sp.temperature = 1.0f;
    s->sp.top_k = 1;
    int ok = 1;
    for (int i = 0; i < 20; i++) ok &= sampler_sample(s, logits, 8, &ev, scratch, iscratch) == 1;
    TEST_COND("top_k 1 is greedy", ok);
    s->sp.top_k = 0;
    s->sp.top_p = 0.5f;
    ok = 1;
    for (int i = 0; i < 50; i++) { int32_t x = sampler_sample(s, logits, 8, &ev, scratch, iscratch); ok &= x == 1 || x == 2; }
    TEST_COND("top_p keeps the nucleus", ok);
    s->sp.top_p = 1;
    s->sp.min_p = 0.5f;
    ok = 1;
    for (int i = 0; i < 50; i++) { int32_t x = sampler_sample(s, logits, 8, &ev, scratch, iscratch); ok &= x == 1 || x == 2 || x == 5; }
    TEST_COND("min_p", ok);
    /* seeds reproduce */
    s->sp.min_p = 0;
    int32_t r1[16], r2[16];
    sampler_seed(s->rng, 42);
    for (int i = 0; i < 16; i++) r1[i] = sampler_sample(s, logits, 8, &ev, scratch, iscratch);
    sampler_seed(s->rng, 42);
    for (int i = 0; i < 16; i++) r2[i] = sampler_sample(s, logits, 8, &ev, scratch, iscratch);
    TEST_COND("same seed, same tokens", memcmp(r1, r2, sizeof r1) == 0);
    /* min_tokens: EOS and the stop ids are masked (never drawn) until min_tokens are out; the
     * reported logprobs stay those of the raw logits */
    s->sp.temperature = 0;
    int eos1 = 1;
    s->eos_ids = &eos1;
    s->n_eos = 1;
    int32_t stop2 = 2;
    s->sp.stop_ids = &stop2;
    s->sp.n_stop_ids = 1;
    s->sp.min_tokens = 2;
    s->n_generated = 1;
    t = sampler_sample(s, logits, 8, &ev, scratch, iscratch);
    TEST_COND("min_tokens masks EOS and the stop ids (greedy takes the next best)", t == 5);
    TEST_COND("masked: the logprob reported is the raw one", fabs(ev.logprob - (1.0 - log(z))) < 1e-5);
    TEST_COND("rank of the chosen token: two are more likely", ev.rank == 3);
    s->sp.temperature = 1.0f;
    ok = 1;
    for (int i = 0; i < 200; i++) { int32_t x = sampler_sample(s, logits, 8, &ev, scratch, iscratch); ok &= x != 1 && x != 2; }
    TEST_COND("min_tokens masks them when sampling too", ok);
    s->sp.temperature = 0;
    s->n_generated = 2;
    TEST_COND("after min_tokens EOS is allowed again", sampler_sample(s, logits, 8, &ev, scratch, iscratch) == 1);
    s->sp.stop_ids = NULL;
    s->sp.n_stop_ids = 0;
    seq_free(s);
}

/* --------------------------------------------------------------------------------------------- */

static struct sequence *mkprio(int id, int n_prompt, int64_t prio)
{
    struct sequence *q = mkseq(id, n_prompt, 100, 10 * id);
    q->priority = prio;
    return q;
}

static void test_priority(void)
{
    struct scheduler s;
    struct sched_plan p = {0};
    /* 4 usable blocks of 16: one 40-token prompt (3 blocks) at a time */
    sched_init(&s, 5, 16, 4096, 64, 256, 1 << 20, 0);
    s.priority_policy = 1;
    struct sequence *q[5] = {mkprio(1, 40, 5), mkprio(2, 40, 1), mkprio(3, 40, 1), mkprio(4, 40, -3),
                             mkprio(5, 40, 1)};
    for (int i = 0; i < 5; i++) sched_add(&s, q[i]);
    int order[5], k = 0;
    for (int round = 0; round < 5; round++) {
        sched_plan(&s, &p);
        for (int i = 0; i < p.n; i++) if (k < 5) order[k++] = (int)p.e[i].seq->id;
        sched_commit(&s, &p);
        for (int i = 0; i < p.n; i++) sched_finish(&s, p.e[i].seq);
    }
    TEST_CONDF(k == 5 && order[0] == 4 && order[1] == 2 && order[2] == 3 && order[3] == 5 && order[4] == 1,
               "admission by (priority, arrival): 4 2 3 5 1 (got %d %d %d %d %d)", order[0], order[1],
               order[2], order[3], order[4]);
    for (int i = 0; i < 5; i++) seq_free(q[i]);
    sched_free(&s);

    /* preemption: the victim is the running sequence with the highest (priority, arrival), and
     * it goes back to its place in the queue, not the front */
    sched_init(&s, 9, 4, 4096, 64, 256, 1 << 20, 0); /* 8 blocks of 4 tokens */
    s.priority_policy = 1;
    struct sequence *a = mkprio(1, 8, 9), *b = mkprio(2, 8, 0), *c = mkprio(3, 4, 0);
    sched_add(&s, a);
    sched_add(&s, b);
    sched_add(&s, c);
    step(&s, &p);
    TEST_COND("priority: all three admitted (they fit)", s.n_running == 3);
    struct sequence *w = mkprio(4, 200, 5); /* waits: it can never fit beside them */
    sched_add(&s, w);
    k = 0;
    while (s.preemptions == 0 && k++ < 50) step(&s, &p);
    TEST_COND("priority: the worst priority (a, the oldest) is preempted, not the newest",
              a->state == SEQ_STATE_WAITING && b->state == SEQ_STATE_RUNNING && c->state == SEQ_STATE_RUNNING);
    TEST_COND("priority: the victim waits at its place (behind the better request 4)",
              s.waiting == w && w->next == a);
    sched_finish(&s, a);
    sched_finish(&s, b);
    sched_finish(&s, c);
    sched_finish(&s, w);
    TEST_COND("priority: everything released", bm_used(&s.bm) == 0);
    seq_free(a); seq_free(b); seq_free(c); seq_free(w);
    sched_free(&s);

    /* FCFS ignores the field (the engine refuses a nonzero priority under FCFS) */
    sched_init(&s, 5, 16, 4096, 64, 256, 1 << 20, 0);
    struct sequence *f1 = mkprio(1, 40, 5), *f2 = mkprio(2, 40, -5);
    sched_add(&s, f1);
    sched_add(&s, f2);
    sched_plan(&s, &p);
    TEST_COND("FCFS: arrival order", plan_has(&p, f1, NULL) && !plan_has(&p, f2, NULL));
    sched_commit(&s, &p);
    sched_finish(&s, f1);
    sched_finish(&s, f2);
    seq_free(f1); seq_free(f2);
    plan_free(&p);
    sched_free(&s);
}

/* --------------------------------------------------------------------------------------------- */
/* Sliding window (s->window): blocks below the next token's window are released, tables stay
 * append-only with 0 in released entries, a sequence holds a bounded number of blocks. */

/* The invariants of one running sequence after a commit; prev: its table before the step. */
static int window_ok(const struct scheduler *s, const struct sequence *seq, const int *prev, int prev_n, char *why)
{
    const int bs = s->bm.block_size, W = s->window;
    int first = seq->n_computed - W + 1 > 0 ? (seq->n_computed - W + 1) / bs : 0, live = 0;
    for (int i = 0; i < prev_n && i < seq->n_blocks; i++)
        if (seq->block_table[i] != prev[i] && seq->block_table[i] != 0)
            return snprintf(why, 128, "entry %d changed %d -> %d", i, prev[i], seq->block_table[i]), 0;
    for (int i = 0; i < seq->n_blocks; i++) {
        if (i < first && seq->block_table[i] != 0)
            return snprintf(why, 128, "block %d below the window (first live %d) still held", i, first), 0;
        if (i >= first && (i + 1) * bs <= seq->n_computed + 1 && seq->block_table[i] <= 0)
            return snprintf(why, 128, "block %d inside the window is 0", i), 0;
        live += seq->block_table[i] > 0;
    }
    if (live > sched_window_blocks(W, s->max_batched_tokens, bs))
        return snprintf(why, 128, "%d blocks held, more than %d", live,
                        sched_window_blocks(W, s->max_batched_tokens, bs)), 0;
    return 1;
}

static void test_sliding_window(void)
{
    struct scheduler s;
    struct sched_plan p = {0};
    char why[128] = "";
    /* 12 blocks of 4 tokens; window 10, chunks of at most 16: a sequence holds <= 8 blocks */
    sched_init(&s, 13, 4, 16, 8, 64, 1 << 20, 1);
    s.window = 10;
    TEST_COND("window blocks: (10 - 1 + 16) / 4 rounded up, + 1", sched_window_blocks(10, 16, 4) == 8);
    struct sequence *a = mkseq(1, 100, 20, 10); /* 100 + 20 tokens = 30 blocks > the pool */
    sched_add(&s, a);
    int prev[64], prev_n = 0, ok = 1, steps = 0;
    while (a->state == SEQ_STATE_RUNNING || a->state == SEQ_STATE_WAITING) {
        if (a->n_generated >= 20 || steps++ > 200) break;
        prev_n = a->n_blocks;
        if (prev_n) memcpy(prev, a->block_table, sizeof(int) * (size_t)prev_n);
        step(&s, &p);
        if (p.n) a->n_generated += p.e[0].sample;
        if (ok && !window_ok(&s, a, prev, prev_n, why)) {
            ok = 0;
            printf("  step %d, n_computed %d: %s\n", steps, a->n_computed, why);
        }
        if (bm_used(&s.bm) > 8) ok = 0;
    }
    TEST_CONDF(ok, "window: tables append-only, released entries 0, window held, <= 8 blocks: %s", why);
    TEST_COND("a 120-token sequence ran in 12 blocks", a->n_generated == 20 && a->n_tokens == 120);
    TEST_COND("blocks were released below the window", s.window_frees >= 20);
    TEST_COND("prefill went in chunks of 16", a->n_computed == 119 && s.preemptions == 0);
    sched_finish(&s, a);
    TEST_COND("all released at the end", bm_used(&s.bm) == 0);

    /* prefix cache: only the blocks inside the window of the first computed token are needed */
    sched_free(&s);
    sched_init(&s, 65, 4, 16, 8, 64, 1 << 20, 1);
    s.window = 10;
    struct sequence *b = mkseq(2, 60, 1, 10);
    sched_add(&s, b);
    while (b->n_computed < 60) step(&s, &p);
    sched_finish(&s, b);
    TEST_COND("b's blocks cached (released below the window, then at the end)", bm_used(&s.bm) == 0 && s.bm.n_cached >= 15);
    struct sequence *c = mkseq(3, 65, 1, 10); /* b's 60 tokens + 5 */
    sched_add(&s, c);
    uint64_t hits0 = s.bm.hits;
    sched_plan(&s, &p);
    int n = 0;
    /* 15 blocks hit: the query at 60 sees keys 51..60, blocks 12.. : 12, 13, 14 taken */
    TEST_COND("window hit: 60 tokens cached, 5 to compute", plan_has(&p, c, &n) && n == 5 && c->n_cached == 60);
    TEST_COND("only the window's 3 blocks taken", s.bm.hits - hits0 == 3 && c->n_freed == 12 &&
              c->block_table[0] == 0 && c->block_table[11] == 0 && c->block_table[12] > 0);
    sched_commit(&s, &p);
    sched_finish(&s, c);
    /* evict the 12 oldest cached blocks (b's first ones): a window hit still works */
    int grab[64], ng = 0, n_evict = s.bm.n_free + 12;
    for (int i = 0; i < n_evict; i++) grab[ng++] = bm_alloc(&s.bm);
    for (int i = 0; i < ng; i++) bm_decref(&s.bm, grab[i]);
    struct sequence *d = mkseq(4, 65, 1, 10);
    sched_add(&s, d);
    sched_plan(&s, &p);
    /* c registered its block 15 too: the query at 64 sees keys 55..64, blocks 13..15 */
    TEST_COND("blocks 0..11 evicted, 12..15 cached: still a 64-token hit", plan_has(&p, d, &n) && n == 1 &&
              d->n_cached == 64 && d->n_freed == 13);
    sched_commit(&s, &p);
    sched_finish(&s, d);
    s.window = 0; /* the same eviction without a window: the chain from block 0 is broken */
    struct sequence *e = mkseq(5, 65, 1, 10);
    sched_add(&s, e);
    sched_plan(&s, &p);
    TEST_COND("full attention: no hit without block 0", plan_has(&p, e, &n) && e->n_cached == 0 && n == 16);
    sched_commit(&s, &p);
    sched_finish(&s, e);
    sched_free(&s);

    /* two long sequences in a pool that holds one window each at most: they preempt and finish */
    sched_init(&s, 11, 4, 16, 8, 64, 1 << 20, 0);
    s.window = 10;
    struct sequence *f = mkseq(6, 80, 30, 10), *g = mkseq(7, 80, 30, 200);
    sched_add(&s, f);
    sched_add(&s, g);
    int k = 0;
    ok = 1;
    while ((f->n_generated < 30 || g->n_generated < 30) && k++ < 2000) {
        int pf = f->n_blocks, pg = g->n_blocks;
        int tf[64], tg[64];
        if (pf) memcpy(tf, f->block_table, sizeof(int) * (size_t)pf);
        if (pg) memcpy(tg, g->block_table, sizeof(int) * (size_t)pg);
        step(&s, &p);
        for (int i = 0; i < p.n; i++) {
            struct sequence *q = p.e[i].seq;
            if (p.e[i].sample) q->n_generated++;
            if (q->n_generated >= 30 && q->state == SEQ_STATE_RUNNING) sched_finish(&s, q);
        }
        if (f->state == SEQ_STATE_RUNNING && !window_ok(&s, f, tf, f->n_blocks < pf ? 0 : pf, why)) ok = 0;
        if (g->state == SEQ_STATE_RUNNING && !window_ok(&s, g, tg, g->n_blocks < pg ? 0 : pg, why)) ok = 0;
    }
    TEST_CONDF(ok && f->n_generated == 30 && g->n_generated == 30,
               "two windows in a small pool: both finish (%d, %d; %llu preemptions) %s", f->n_generated,
               g->n_generated, (unsigned long long)s.preemptions, why);
    TEST_COND("everything released", bm_used(&s.bm) == 0);
    seq_free(a); seq_free(b); seq_free(c); seq_free(d); seq_free(e); seq_free(f); seq_free(g);
    plan_free(&p);
    sched_free(&s);
}

int main(void)
{
    test_block_manager();
    test_budget_and_chunking();
    test_fcfs_and_admission();
    test_preemption();
    test_prefix_cache();
    test_sampler();
    test_priority();
    test_sliding_window();
    return test_report("test_engine");
}
