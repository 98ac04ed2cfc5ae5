/* sampler.c - from logits to the next token.
 *
 * Order (as vLLM): logit_bias -> repetition penalty (HF: over prompt + generated) ->
 * presence/frequency penalties (OpenAI: over generated tokens) -> min_tokens (EOS and the stop
 * token ids at -inf until min_tokens are out, vLLM's MinTokensLogitsProcessor) -> greedy
 * argmax when temperature is 0, else temperature -> top-k -> top-p -> min-p -> draw with the
 * request's own RNG (xoshiro256**, seeded per request, so a seed reproduces a completion).
 * The logprobs reported are the log-softmax of the RAW logits (before any of the above), as
 * llama.cpp's n_probs and vLLM's default "raw_logprobs" do. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "engine_internal.h"

struct sampling_params sampling_default_params(void)
{
    struct sampling_params sp;
    memset(&sp, 0, sizeof sp);
    sp.temperature = 1.0f;
    sp.top_p = 1.0f;
    sp.max_tokens = 16;
    sp.repetition_penalty = 1.0f;
    return sp;
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void sampler_seed(uint64_t rng[4], uint64_t seed)
{
    for (int i = 0; i < 4; i++) rng[i] = splitmix(&seed);
}

static double uniform(uint64_t s[4]) /* [0, 1) */
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45);
    return (double)(r >> 11) * (1.0 / 9007199254740992.0);
}

/* Indices of the n largest values, best first (ties: lower id first). O(vocab * n). */
static int top_n(const float *x, int vocab, int n, int32_t *ids)
{
    if (n > vocab) n = vocab;
    int k = 0;
    for (int i = 0; i < vocab; i++) {
        float v = x[i];
        if (k == n && !(v > x[ids[k - 1]])) continue;
        int j = k < n ? k++ : k - 1;
        while (j > 0 && v > x[ids[j - 1]]) { ids[j] = ids[j - 1]; j--; }
        ids[j] = i;
    }
    return k;
}

void sampler_logprobs(const float *logits, int vocab, int32_t token, int n, struct engine_event *ev)
{
    float mx = -INFINITY;
    for (int i = 0; i < vocab; i++) if (logits[i] > mx) mx = logits[i];
    double sum = 0;
    for (int i = 0; i < vocab; i++) sum += exp((double)logits[i] - mx);
    float lse = mx + (float)log(sum);
    ev->token = token;
    ev->logprob = token >= 0 ? logits[token] - lse : NAN;
    ev->rank = 0;
    if (token >= 0) { /* vLLM's rank: 1 + the tokens strictly more likely */
        int above = 0;
        for (int i = 0; i < vocab; i++) above += logits[i] > logits[token];
        ev->rank = above + 1;
    }
    if (n > ENGINE_MAX_LOGPROBS) n = ENGINE_MAX_LOGPROBS;
    ev->n_top = n > 0 ? top_n(logits, vocab, n, ev->top_ids) : 0;
    for (int i = 0; i < ev->n_top; i++) ev->top_logprobs[i] = logits[ev->top_ids[i]] - lse;
}

static int cmp_desc(const void *a, const void *b, void *ctx)
{
    const float *v = ctx;
    float x = v[*(const int *)a], y = v[*(const int *)b];
    if (x > y) return -1;
    if (x < y) return 1;
    return *(const int *)a - *(const int *)b;
}

int32_t sampler_sample(struct sequence *seq, const float *logits, int vocab, struct engine_event *ev,
                       float *scratch, int *iscratch)
{
    const struct sampling_params *sp = &seq->sp;
    float *x = scratch; /* working logits */
    memcpy(x, logits, sizeof(float) * vocab);

    for (int i = 0; i < sp->n_logit_bias; i++) {
        int32_t id = sp->logit_bias_ids[i];
        if (id >= 0 && id < vocab) x[id] += sp->logit_bias_vals[i];
    }
    if (sp->repetition_penalty > 0 && sp->repetition_penalty != 1.0f) {
        /* each distinct token once: mark with iscratch */
        memset(iscratch, 0, sizeof(int) * vocab);
        for (int i = 0; i < seq->n_tokens; i++) {
            int32_t t = seq->tokens[i];
            if (iscratch[t]) continue;
            iscratch[t] = 1;
            x[t] = x[t] > 0 ? x[t] / sp->repetition_penalty : x[t] * sp->repetition_penalty;
        }
    }
    if (sp->presence_penalty != 0 || sp->frequency_penalty != 0) {
        memset(iscratch, 0, sizeof(int) * vocab);
        for (int i = seq->n_prompt; i < seq->n_tokens; i++) iscratch[seq->tokens[i]]++;
        for (int t = 0; t < vocab; t++) {
            if (!iscratch[t]) continue;
            x[t] -= sp->frequency_penalty * iscratch[t] + sp->presence_penalty;
        }
    }

    if (seq->n_generated < sp->min_tokens) {
        for (int i = 0; i < seq->n_eos; i++)
            if (seq->eos_ids[i] >= 0 && seq->eos_ids[i] < vocab) x[seq->eos_ids[i]] = -INFINITY;
        for (int i = 0; i < sp->n_stop_ids; i++)
            if (sp->stop_ids[i] >= 0 && sp->stop_ids[i] < vocab) x[sp->stop_ids[i]] = -INFINITY;
    }

    int32_t tok;
    if (sp->temperature <= 0) {
        tok = 0;
        for (int i = 1; i < vocab; i++) if (x[i] > x[tok]) tok = i;
    } else {
        for (int i = 0; i < vocab; i++) x[i] /= sp->temperature;
        /* candidates sorted by logit, best first; top-k trims the list */
        int n = vocab;
        int *idx = iscratch;
        if (sp->top_k > 0 && sp->top_k < vocab) {
            n = top_n(x, vocab, sp->top_k, idx);
        } else {
            for (int i = 0; i < vocab; i++) idx[i] = i;
            qsort_r(idx, vocab, sizeof(int), cmp_desc, x);
        }
        float mx = x[idx[0]];
        float *p = scratch + vocab;
        double sum = 0;
        for (int i = 0; i < n; i++) { p[i] = expf(x[idx[i]] - mx); sum += p[i]; }
        if (sp->top_p > 0 && sp->top_p < 1) {
            double acc = 0;
            int keep = n;
            for (int i = 0; i < n; i++) {
                acc += p[i] / sum;
                if (acc >= sp->top_p) { keep = i + 1; break; }
            }
            n = keep;
        }
        if (sp->min_p > 0) {
            float floor_p = sp->min_p * p[0]; /* relative to the most likely token */
            int keep = 1;
            while (keep < n && p[keep] >= floor_p) keep++;
            n = keep;
        }
        sum = 0;
        for (int i = 0; i < n; i++) sum += p[i];
        double u = uniform(seq->rng) * sum, acc = 0;
        tok = idx[n - 1];
        for (int i = 0; i < n; i++) {
            acc += p[i];
            if (u < acc) { tok = idx[i]; break; }
        }
    }
    sampler_logprobs(logits, vocab, tok, sp->n_logprobs, ev);
    return tok;
}
