/* test_graph_pad.c - the model's side of CUDA graphs (models/llama.c), on the CPU: a CPU backend
 * that claims graphs (graph_enabled 1, graph_run calls fn at once and records its key) makes
 * model_forward pad every all-decode step to its bucket (1, 2, 4, then multiples of 8) and its
 * block table to a power-of-two width. The logits of the real rows must equal those of the same
 * steps on a plain CPU backend (the padding rows are row-wise isolated; only the GEMM row count
 * differs, so agreement is to fp32 summation order, 1e-4), and the batch the backend saw must
 * have the bucket's shape. A prefill step and a step whose rows are not all decode rows must not
 * use graph_run. models/demo-pose (the trained demo checkpoint) is the model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "../kernels/backend.h"
#include "../models/model.h"
#include "test.h"

static struct backend_ops fake_ops;
static const struct backend_ops *real_ops;
static int last_key = -1, n_graph_calls;
static struct bk_batch last_batch;

static int fake_enabled(void *ctx) { (void)ctx; return 1; }

static int fake_run(void *ctx, int key, void (*fn)(void *arg), void *arg, char *err)
{
    (void)ctx;
    (void)err;
    last_key = key;
    n_graph_calls++;
    fn(arg);
    return 0;
}

static int fake_begin(void *ctx, const struct bk_batch *b, char *err)
{
    last_batch = *b;
    return real_ops->batch_begin(ctx, b, err);
}

enum { BS = 16, NSEQ = 5, MAXB = 12 };

struct seq {
    int32_t toks[256];
    int n;
    int32_t blocks[MAXB];
};

static uint64_t rng = 0x1234567;
static int rnd(int n)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (int)((rng >> 33) % (uint64_t)n);
}

/* one batch: the last n_new tokens of each listed sequence */
struct hb {
    int32_t tokens[512], positions[512], qstart[NSEQ + 1], lens[NSEQ], bt[NSEQ * MAXB], out[512];
    int64_t slots[512];
    float inv_freq[NSEQ * 256], af[NSEQ], qs[512];
    struct bk_batch b;
};

static void make_batch(struct hb *h, struct seq *seqs, const int *which, int ns, int n_new, const struct rope *rp)
{
    memset(h, 0, sizeof *h);
    const int half = rp->rotary_dim / 2;
    int stride = 1, row = 0, any_qs = 0;
    for (int i = 0; i < ns; i++) {
        const int nb = (seqs[which[i]].n + BS - 1) / BS;
        if (nb > stride) stride = nb;
    }
    for (int i = 0; i < ns; i++) {
        struct seq *q = &seqs[which[i]];
        h->qstart[i] = row;
        for (int p = q->n - n_new; p < q->n; p++, row++) {
            h->tokens[row] = q->toks[p];
            h->positions[row] = p;
            h->slots[row] = (int64_t)q->blocks[p / BS] * BS + p % BS;
            h->qs[row] = rope_q_scale(rp, p, q->n, 0);
            any_qs |= h->qs[row] != 1.0f;
        }
        h->out[i] = row - 1;
        h->lens[i] = q->n;
        for (int b = 0; b < (q->n + BS - 1) / BS; b++) h->bt[i * stride + b] = q->blocks[b];
        rope_freqs(rp, q->n, h->inv_freq + (size_t)i * half, &h->af[i]);
    }
    h->qstart[ns] = row;
    h->b = (struct bk_batch){
        .n_tokens = row, .tokens = h->tokens, .positions = h->positions, .slot_mapping = h->slots,
        .n_seqs = ns, .query_start = h->qstart, .seq_lens = h->lens, .block_tables = h->bt,
        .block_table_stride = stride, .n_out = ns, .out_rows = h->out, .rotary_dim = rp->rotary_dim,
        .inv_freq = h->inv_freq, .attn_factor = h->af, .q_scale = any_qs ? h->qs : NULL,
    };
}

int main(void)
{
    const char *dir = "models/demo-pose";
    char err[ERR_LEN];
    struct model_config cfg;
    if (model_config_load(&cfg, dir, err) < 0) {
        printf("%s\n", err);
        TEST_COND("load config", 0);
        return test_report("test_graph_pad");
    }
    struct backend_params bp = backend_default_params();
    bp.device = BK_DEVICE_CPU;
    bp.n_threads = 2;
    struct backend g, e;
    TEST_COND("cpu backends", backend_init(&g, &bp, err) == 0 && backend_init(&e, &bp, err) == 0);
    real_ops = g.ops;
    fake_ops = *g.ops;
    fake_ops.graph_enabled = fake_enabled;
    fake_ops.graph_run = fake_run;
    fake_ops.batch_begin = fake_begin;
    g.ops = &fake_ops;
    struct model_params mp = model_default_params();
    mp.max_batch_tokens = 256;
    mp.max_out_rows = 64;
    mp.graph_max_seqs = 8;
    model_t *mg = NULL, *me = NULL;
    const int n_blocks = 1 + NSEQ * MAXB;
    TEST_COND("models", model_load(&mg, dir, &cfg, &g, &mp, err) == 0 && model_load(&me, dir, &cfg, &e, &mp, err) == 0 &&
                            model_kv_init(mg, n_blocks, BS, 4096, err) == 0 && model_kv_init(me, n_blocks, BS, 4096, err) == 0);
    if (!mg || !me) return test_report("test_graph_pad");
    const struct rope *rp = model_get_rope(mg);
    const int V = cfg.vocab_size;
    float *lg = xmalloc(sizeof(float) * (size_t)8 * V), *le = xmalloc(sizeof(float) * (size_t)8 * V);

    struct seq seqs[NSEQ];
    memset(seqs, 0, sizeof seqs);
    const int plen[NSEQ] = {13, 30, 47, 5, 16};
    for (int s = 0; s < NSEQ; s++) {
        seqs[s].n = plen[s];
        for (int i = 0; i < plen[s]; i++) seqs[s].toks[i] = 3 + rnd(V - 3);
        for (int b = 0; b < MAXB; b++) seqs[s].blocks[b] = 1 + s * MAXB + (b * 5 + s) % MAXB;
    }
    struct hb *h = xcalloc(1, sizeof *h);
    /* prefills: never graphs */
    for (int s = 0; s < NSEQ; s++) {
        int one = s;
        make_batch(h, seqs, &one, 1, plen[s], rp);
        n_graph_calls = 0;
        TEST_COND("prefill", model_forward(mg, &h->b, lg, err) == 0 && model_forward(me, &h->b, le, err) == 0);
        TEST_CONDF(n_graph_calls == 0, "prefill of %d tokens did not use graph_run", plen[s]);
    }
    /* decode steps of 3, 2, 1, 5 sequences: buckets 4, 2, 1, 8 */
    const int sizes[] = {3, 3, 2, 1, 5, 5, 3};
    const int want_bucket[] = {4, 4, 2, 1, 8, 8, 4};
    for (int st = 0; st < (int)(sizeof sizes / sizeof sizes[0]); st++) {
        int which[NSEQ];
        const int n = sizes[st];
        for (int i = 0; i < n; i++) which[i] = (i * 2 + st) % NSEQ; /* rotating subsets */
        /* ascending order is not required; distinct is */
        for (int i = 0; i < n; i++)
            for (int j = 0; j < i; j++)
                if (which[j] == which[i]) which[i] = (which[i] + 1) % NSEQ, j = -1;
        for (int i = 0; i < n; i++) {
            struct seq *q = &seqs[which[i]];
            q->toks[q->n++] = 3 + rnd(V - 3);
        }
        make_batch(h, seqs, which, n, 1, rp);
        n_graph_calls = 0;
        TEST_COND("decode step", model_forward(mg, &h->b, lg, err) == 0 && model_forward(me, &h->b, le, err) == 0);
        int sb = 1, lg2 = 0;
        while (sb < h->b.block_table_stride) sb <<= 1, lg2++;
        TEST_CONDF(n_graph_calls == 1 && last_key == want_bucket[st] * 64 + lg2,
                   "step %d: graph_run once with key %d (got %d calls, key %d)", st, want_bucket[st] * 64 + lg2,
                   n_graph_calls, last_key);
        TEST_CONDF(last_batch.n_tokens == want_bucket[st] && last_batch.n_seqs == want_bucket[st] &&
                       last_batch.n_out == want_bucket[st] && last_batch.block_table_stride == sb,
                   "step %d: padded batch %d rows / %d seqs / %d out / width %d, want %d / width %d", st,
                   last_batch.n_tokens, last_batch.n_seqs, last_batch.n_out, last_batch.block_table_stride,
                   want_bucket[st], sb);
        for (int r = n; r < want_bucket[st] && r < last_batch.n_tokens; r++)
            TEST_CONDF(last_batch.slot_mapping[r] == -1 && last_batch.seq_lens[r] == 1 && last_batch.positions[r] == 0,
                       "step %d: padding row %d writes nothing and reads one key", st, r);
        double mx = 0;
        for (size_t i = 0; i < (size_t)n * V; i++) {
            const double d = fabs((double)lg[i] - le[i]);
            if (d > mx || d != d) mx = d != d ? INFINITY : d;
        }
        TEST_CONDF(mx <= 1e-4, "step %d (%d seqs): padded logits within 1e-4 of unpadded (max |d| %.3g)", st, n, mx);
    }
    /* a batch that is not all decode rows: eager */
    {
        int two[2] = {0, 1};
        for (int i = 0; i < 2; i++) {
            struct seq *q = &seqs[two[i]];
            q->toks[q->n++] = 3 + rnd(V - 3);
            q->toks[q->n++] = 3 + rnd(V - 3);
        }
        make_batch(h, seqs, two, 2, 2, rp);
        n_graph_calls = 0;
        TEST_COND("chunk step", model_forward(mg, &h->b, lg, err) == 0);
        TEST_CONDF(n_graph_calls == 0, "a step with 2-token rows did not use graph_run");
    }
    free(h);
    free(lg);
    free(le);
    model_free(mg);
    model_free(me);
    g.ops = real_ops;
    backend_free(&g);
    backend_free(&e);
    model_config_free(&cfg);
    return test_report("test_graph_pad");
}
