/* runner.c - turns a scheduler plan into the one batch format (struct bk_batch) and runs the
 * model. No policy lives here: what to run was decided by the scheduler.
 *
 * For each planned sequence: rows for tokens [n_computed, n_computed + n), their positions,
 * slot = block_table[pos / block_size] * block_size + pos % block_size, its block table, and the
 * RoPE frequencies for its length. Length-dependent methods (dynamic NTK, LongRoPE, CLEX) use
 * the length a batch-size-1 reference would see: the whole prompt while prefilling (Hugging
 * Face runs the prompt in one forward), the current length while decoding.
 *
 * Per-request RoPE: a sequence with a rope_factor uses the rope variant built for that factor
 * (ENGINE_ROPE_PER_REQUEST); one with STRING gets its S and W; every row gets rope_q_scale
 * (log_scale, STRING's factor). The STRING arrays and q_scale are passed only when some
 * sequence / row of the batch needs them. */
#include <string.h>

#include <stdio.h>
#include <stdlib.h>

#include "../common/common.h"
#include "engine_internal.h"

int runner_init(struct runner *r, model_t *m, int max_tokens, int max_seqs, int max_out)
{
    memset(r, 0, sizeof *r);
    r->model = m;
    const struct model_config *c = model_get_config(m);
    r->rotary_pairs = model_get_rope(m)->rotary_dim / 2;
    r->vocab = c->vocab_size;
    r->cap_tokens = max_tokens;
    r->cap_seqs = max_seqs;
    r->cap_out = max_out;
    r->tokens = xmalloc(sizeof(int32_t) * max_tokens);
    r->positions = xmalloc(sizeof(int32_t) * max_tokens);
    r->slots = xmalloc(sizeof(int64_t) * max_tokens);
    r->query_start = xmalloc(sizeof(int32_t) * (max_seqs + 1));
    r->seq_lens = xmalloc(sizeof(int32_t) * max_seqs);
    r->out_rows = xmalloc(sizeof(int32_t) * max_out);
    r->inv_freq = xmalloc(sizeof(float) * (size_t)max_seqs * (r->rotary_pairs ? r->rotary_pairs : 1));
    r->attn_factor = xmalloc(sizeof(float) * max_seqs);
    r->q_scale = xmalloc(sizeof(float) * max_tokens);
    r->string_shift = xmalloc(sizeof(int32_t) * max_seqs);
    r->string_local = xmalloc(sizeof(int32_t) * max_seqs);
    r->logits = xmalloc(sizeof(float) * (size_t)max_out * r->vocab);
    return 0;
}

void runner_free(struct runner *r)
{
    free(r->tokens);
    free(r->positions);
    free(r->slots);
    free(r->query_start);
    free(r->seq_lens);
    free(r->block_tables);
    free(r->out_rows);
    free(r->inv_freq);
    free(r->attn_factor);
    free(r->q_scale);
    free(r->string_shift);
    free(r->string_local);
    free(r->logits);
    for (int i = 0; i < r->n_variants; i++) rope_free(&r->variants[i]);
    free(r->variants);
    memset(r, 0, sizeof *r);
}

int runner_add_factors(struct runner *r, const double *factors, int n, char *err)
{
    const struct rope *base = model_get_rope(r->model);
    r->variants = xrealloc(r->variants, sizeof *r->variants * (size_t)(r->n_variants + n));
    for (int i = 0; i < n; i++) {
        if (rope_init_factor(&r->variants[r->n_variants], base, factors[i], err) < 0) return -1;
        r->n_variants++;
    }
    return 0;
}

/* The rope of a sequence: its per-request factor's variant, else the model's. */
static const struct rope *seq_rope(const struct runner *r, const struct sequence *seq)
{
    if (seq->rope_factor > 0)
        for (int i = 0; i < r->n_variants; i++)
            if (r->variants[i].factor == seq->rope_factor) return &r->variants[i];
    CHECK(seq->rope_factor == 0, "no rope built for factor %g", seq->rope_factor);
    return model_get_rope(r->model);
}

int runner_run(struct runner *r, const struct sched_plan *p, int block_size, char *err)
{
    CHECK(p->n_tokens <= r->cap_tokens && p->n <= r->cap_seqs && p->n_logits <= r->cap_out,
          "plan exceeds the runner (%d tokens, %d seqs, %d logits)", p->n_tokens, p->n, p->n_logits);
    int stride = 1;
    for (int i = 0; i < p->n; i++) {
        const struct sequence *seq = p->e[i].seq;
        int need = (seq->n_computed + p->e[i].n_tokens + block_size - 1) / block_size;
        if (need > stride) stride = need;
    }
    if (stride * p->n > r->cap_bt) {
        r->cap_bt = stride * p->n * 2;
        r->block_tables = xrealloc(r->block_tables, sizeof(int32_t) * r->cap_bt);
    }
    const struct rope *rope = model_get_rope(r->model);
    int row = 0, n_out = 0, any_string = 0, any_q_scale = 0;
    for (int i = 0; i < p->n; i++) {
        const struct sched_entry *e = &p->e[i];
        const struct sequence *seq = e->seq;
        const struct rope *sr = seq_rope(r, seq);
        const int len = seq->n_computed + e->n_tokens;
        const int rope_len = len < seq->n_prompt ? seq->n_prompt : len;
        r->query_start[i] = row;
        r->string_shift[i] = seq->string_shift;
        r->string_local[i] = seq->string_local;
        any_string |= seq->string_shift > 0;
        for (int j = 0; j < e->n_tokens; j++, row++) {
            int pos = seq->n_computed + j;
            const float qs = rope_q_scale(sr, pos, rope_len, seq->string_shift > 0);
            r->q_scale[row] = qs;
            any_q_scale |= qs != 1.0f;
            r->tokens[row] = seq->tokens[pos];
            r->positions[row] = pos;
            r->slots[row] = (int64_t)seq->block_table[pos / block_size] * block_size + pos % block_size;
        }
        r->seq_lens[i] = len;
        int32_t *bt = r->block_tables + (size_t)i * stride;
        int nb = (len + block_size - 1) / block_size;
        for (int b = 0; b < stride; b++) bt[b] = b < nb ? seq->block_table[b] : 0;
        /* logits rows: all rows of the chunk (prompt logprobs) or only the last one */
        if (e->n_logits == e->n_tokens) {
            for (int j = 0; j < e->n_tokens; j++) r->out_rows[n_out++] = r->query_start[i] + j;
        } else if (e->n_logits == 1) {
            r->out_rows[n_out++] = row - 1;
        }
        rope_freqs(sr, rope_len, r->inv_freq + (size_t)i * r->rotary_pairs, &r->attn_factor[i]);
    }
    r->query_start[p->n] = row;
    struct bk_batch b = {
        .n_tokens = row,
        .tokens = r->tokens,
        .positions = r->positions,
        .slot_mapping = r->slots,
        .n_seqs = p->n,
        .query_start = r->query_start,
        .seq_lens = r->seq_lens,
        .block_tables = r->block_tables,
        .block_table_stride = stride,
        .n_out = n_out,
        .out_rows = r->out_rows,
        .rotary_dim = rope->rotary_dim,
        .inv_freq = r->inv_freq,
        .attn_factor = r->attn_factor,
        .q_scale = any_q_scale ? r->q_scale : NULL,
        .string_shift = any_string ? r->string_shift : NULL,
        .string_local = any_string ? r->string_local : NULL,
    };
    return model_forward(r->model, &b, r->logits, err);
}
