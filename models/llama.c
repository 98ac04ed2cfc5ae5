/* llama.c - the LLaMA architecture over backend ops: loading a checkpoint's tensors into the
 * backend and the forward pass of one batch. Mistral and Qwen2 are the same graph (model.h's
 * enum model_arch): they differ in the biases the projections carry and in the layers whose
 * attention slides (bk_kv_params.sliding_window, handed to the backend at kv_init).
 *
 *   embed -> for each layer:
 *       h = rmsnorm(x) ; q,k,v = h.Wq+bq, h.Wk+bk, h.Wv+bv ; rope(q, k) ; kv_store(k, v)
 *       x += attention(q).Wo + bo                 (causal, or a sliding window of W keys)
 *       h = rmsnorm(x) ; x += (silu(h.Wg+bg) * (h.Wu+bu)).Wd + bd
 *   -> gather the out_rows -> rmsnorm -> lm_head -> logits (host)
 * Biases exist as the config says (qkv_bias: Qwen2, LLaMA attention_bias; o_bias: LLaMA
 * attention_bias; mlp_bias: LLaMA mlp_bias) and are added after their projection.
 *
 * Invariants: every tensor the architecture needs is checked for presence and exact shape
 * before anything is uploaded, so a bad checkpoint fails with one message and no partial
 * load. Activation buffers are sized once for max_batch_tokens / max_out_rows; a batch that
 * exceeds them is a caller bug (CHECK). For methods that store pre-RoPE keys (CLEX) only q is
 * rotated here and attention rotates keys as it reads them.
 *
 * Fused ops (backend.h's optional ops, used where the backend has them): the residual add and
 * the next RMSNorm run as one add_rmsnorm (after attention, and after each MLP but the last);
 * the final norm reads the wanted rows of the residual directly (gather_rmsnorm); the q/k/v
 * biases, RoPE and the KV-cache write are one rope_kv_store;
 * the residual stream and the logits are act_new_f32 buffers (fp32 on a backend whose other
 * activations are 16-bit).
 *
 * Graphs: a step whose rows are all decode rows (one token per sequence, each wanting logits)
 * runs through the backend's graph_run when it has graphs on: the batch is padded to a bucket of
 * 1, 2, 4, then a multiple of 8 sequences (at most params.graph_max_seqs rounded up to 8, and
 * what the activations hold) and its block table to a power-of-two width, so a few captured
 * graphs serve every decode step. Padding rows decode token 0 at position 0 through the null
 * block with slot -1 (kv_store skips them); every op is row-wise, so they cannot touch the real
 * rows, and only the real rows' logits are read back.
 *
 * Rejected alternative: fused QKV / gate-up weights. Separate projections keep the loader a
 * 1:1 map of the checkpoint and cost little; a backend may fuse internally. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <stdio.h>
#include <stdlib.h>

#include "../common/common.h"
#include "model.h"
#include "model_internal.h"

struct layer_weights {
    bk_buf *attn_norm; /* (hidden) */
    bk_buf *wq;        /* (n_heads * head_dim, hidden) */
    bk_buf *wk;        /* (n_kv_heads * head_dim, hidden) */
    bk_buf *wv;        /* (n_kv_heads * head_dim, hidden) */
    bk_buf *wo;        /* (hidden, n_heads * head_dim) */
    bk_buf *ffn_norm;  /* (hidden) */
    bk_buf *w_gate;    /* (ffn, hidden) */
    bk_buf *w_up;      /* (ffn, hidden) */
    bk_buf *w_down;    /* (hidden, ffn) */
    bk_buf *bq, *bk, *bv; /* (n_heads * head_dim), (n_kv_heads * head_dim) x 2, or NULL */
    bk_buf *bo;           /* (hidden) or NULL */
    bk_buf *b_gate, *b_up, *b_down; /* (ffn), (ffn), (hidden) or NULL */
};

struct model {
    struct model_config cfg;
    struct rope rope;
    struct backend *be;
    struct model_params params;
    size_t weight_bytes;

    bk_buf *tok_emb;  /* (vocab, hidden) */
    bk_buf *out_norm; /* (hidden) */
    bk_buf *lm_head;  /* (vocab, hidden); == tok_emb when tied */
    struct layer_weights *layers;

    /* activations, sized for params.max_batch_tokens rows (T) or max_out_rows (O) */
    bk_buf *x;      /* (T, hidden) residual stream */
    bk_buf *h;      /* (T, hidden) normed */
    bk_buf *q;      /* (T, n_heads * head_dim) */
    bk_buf *k;      /* (T, n_kv_heads * head_dim) */
    bk_buf *v;      /* (T, n_kv_heads * head_dim) */
    bk_buf *att;    /* (T, n_heads * head_dim) */
    bk_buf *proj;   /* (T, hidden) */
    bk_buf *gate;   /* (T, max(ffn, n_heads * head_dim)); during attention STRING's q_shift */
    bk_buf *up;     /* (T, ffn) */
    bk_buf *xo;     /* (O, hidden) rows whose logits are wanted */
    bk_buf *logits; /* (O, vocab) */
    int kv_ready;

    /* KV cache storage: the resolved --kv-cache-dtype, and the fp8 scales per (layer, kv head)
     * (1.0 unless the checkpoint has kv_scale / k_scale / v_scale tensors) */
    enum bk_dtype kv_dtype;
    float *k_scale, *v_scale; /* (n_layers, n_kv_heads) */
    int has_kv_scales;
    /* the padded decode batch of a graph step (grown on demand) */
    struct {
        int cap_rows, cap_bt, cap_freq;
        int32_t *tokens, *positions, *query_start, *seq_lens, *out_rows, *string_shift, *string_local, *block_tables;
        int64_t *slots;
        float *inv_freq, *attn_factor, *q_scale;
    } pad;
};

struct model_params model_default_params(void)
{
    struct model_params p = {.max_batch_tokens = 2048, .max_out_rows = 256, .kv_cache_dtype = MODEL_KV_DTYPE_AUTO,
                             .graph_max_seqs = 64};
    return p;
}

int model_kv_dtype_parse(const char *s, int *out)
{
    static const struct { const char *name; int dt; } names[] = {
        {"auto", MODEL_KV_DTYPE_AUTO}, {"f32", BK_F32}, {"fp32", BK_F32}, {"float32", BK_F32},
        {"bf16", BK_BF16}, {"bfloat16", BK_BF16}, {"f16", BK_F16}, {"fp16", BK_F16},
        {"half", BK_F16}, {"float16", BK_F16}, {"fp8", BK_FP8_E4M3}, {"fp8_e4m3", BK_FP8_E4M3},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(s, names[i].name)) {
            *out = names[i].dt;
            return 0;
        }
    return -1;
}

size_t model_config_kv_bytes_per_token(const struct model_config *c, enum bk_dtype dt)
{
    return 2 * (size_t)c->n_layers * c->n_kv_heads * c->head_dim * bk_dtype_bytes(dt);
}

enum bk_dtype model_kv_dtype(const model_t *m) { return m->kv_dtype; }

int model_kv_scales(const model_t *m, const float **k_scale, const float **v_scale)
{
    if (k_scale) *k_scale = m->k_scale;
    if (v_scale) *v_scale = m->v_scale;
    return m->has_kv_scales;
}

/* One scale tensor: a scalar ([] or [1]) for every KV head, or one per KV head ([n_kv_heads]),
 * F32/F16/BF16, every value finite and > 0. dst (n_kv). */
static int read_kv_scale(const struct st_tensor *t, int n_kv, float *dst, char *err)
{
    int64_t n = 1;
    for (int i = 0; i < t->n_dims; i++) n *= t->shape[i];
    if (!(t->n_dims == 0 || (t->n_dims == 1 && (t->shape[0] == 1 || t->shape[0] == n_kv))))
        return set_err(err, -1, "%s: tensor '%s': a KV cache scale must be a scalar ([] or [1]) or one "
                       "per KV head ([%d]); found %d dims of %lld values", t->file, t->name, n_kv, t->n_dims,
                       (long long)n);
    for (int h = 0; h < n_kv; h++) {
        const int64_t i = n == 1 ? 0 : h;
        float x;
        if (t->dtype == BK_F32) memcpy(&x, (const char *)t->data + 4 * i, 4);
        else {
            uint16_t u;
            memcpy(&u, (const char *)t->data + 2 * i, 2);
            x = t->dtype == BK_F16 ? f16_to_f32(u) : bf16_to_f32(u);
        }
        if (!(isfinite(x) && x > 0.0f))
            return set_err(err, -1, "%s: tensor '%s': KV cache scale %lld is %g; it must be finite and > 0",
                           t->file, t->name, (long long)i, (double)x);
        dst[h] = x;
    }
    return 0;
}

/* The checkpoint's fp8 KV scales (vLLM / llm-compressor / ModelOpt names): per layer
 * self_attn.k_scale and self_attn.v_scale (also under k_proj./v_proj. or attn.), or one
 * self_attn.kv_scale for both (older FP8 checkpoints). Missing layers keep 1.0. */
static int load_kv_scales(model_t *m, const safetensors_t *st, char *err)
{
    const int L = m->cfg.n_layers, n_kv = m->cfg.n_kv_heads;
    m->k_scale = xmalloc(sizeof(float) * (size_t)L * n_kv);
    m->v_scale = xmalloc(sizeof(float) * (size_t)L * n_kv);
    for (size_t i = 0; i < (size_t)L * n_kv; i++) m->k_scale[i] = m->v_scale[i] = 1.0f;
    static const char *k_names[] = {"model.layers.%d.self_attn.k_scale", "model.layers.%d.self_attn.k_proj.k_scale",
                                    "model.layers.%d.self_attn.attn.k_scale"};
    static const char *v_names[] = {"model.layers.%d.self_attn.v_scale", "model.layers.%d.self_attn.v_proj.v_scale",
                                    "model.layers.%d.self_attn.attn.v_scale"};
    int n_found = 0, n_missing = 0;
    for (int l = 0; l < L; l++) {
        char name[128];
        snprintf(name, sizeof name, "model.layers.%d.self_attn.kv_scale", l);
        const struct st_tensor *kv = st_find(st, name), *k = NULL, *v = NULL;
        for (int which = 0; which < 2; which++) {
            const char **names = which ? v_names : k_names;
            const struct st_tensor **dst = which ? &v : &k;
            for (int i = 0; i < 3; i++) {
                snprintf(name, sizeof name, names[i], l);
                const struct st_tensor *t = st_find(st, name);
                if (!t) continue;
                if (*dst)
                    return set_err(err, -1, "%s: tensors '%s' and '%s' both give layer %d's %s scale", t->file,
                                   (*dst)->name, t->name, l, which ? "v" : "k");
                *dst = t;
            }
        }
        if (kv && (k || v))
            return set_err(err, -1, "%s: tensor '%s': layer %d has both kv_scale and %s", kv->file, kv->name, l,
                           k ? k->name : v->name);
        const struct st_tensor *tk = kv ? kv : k, *tv = kv ? kv : v;
        if (tk && read_kv_scale(tk, n_kv, m->k_scale + (size_t)l * n_kv, err) < 0) return -1;
        if (tv && read_kv_scale(tv, n_kv, m->v_scale + (size_t)l * n_kv, err) < 0) return -1;
        n_found += (tk != NULL) + (tv != NULL);
        n_missing += (tk == NULL) + (tv == NULL);
    }
    m->has_kv_scales = n_found > 0;
    if (n_found && n_missing)
        LOG_W("KV cache scales: %d of %d layers' k/v scales are in the checkpoint; the others are 1.0", n_found,
              n_found + n_missing);
    return 0;
}

const struct model_config *model_get_config(const model_t *m) { return &m->cfg; }
const struct rope *model_get_rope(const model_t *m) { return &m->rope; }
const struct model_params *model_get_params(const model_t *m) { return &m->params; }
size_t model_weight_bytes(const model_t *m) { return m->weight_bytes; }

size_t model_mem_free(const model_t *m)
{
    return m->be->ops->mem_free ? m->be->ops->mem_free(m->be->ctx) : 0;
}

size_t model_kv_bytes_per_token(const model_t *m) { return model_config_kv_bytes_per_token(&m->cfg, m->kv_dtype); }

static void free_buf(model_t *m, bk_buf **b)
{
    if (*b) m->be->ops->buf_free(m->be->ctx, *b);
    *b = NULL;
}

void model_free(model_t *m)
{
    if (!m) return;
    if (m->layers) {
        for (int l = 0; l < m->cfg.n_layers; l++) {
            struct layer_weights *w = &m->layers[l];
            bk_buf **all[] = {&w->attn_norm, &w->wq, &w->wk, &w->wv, &w->wo, &w->ffn_norm,
                              &w->w_gate, &w->w_up, &w->w_down, &w->bq, &w->bk, &w->bv,
                              &w->bo, &w->b_gate, &w->b_up, &w->b_down};
            for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free_buf(m, all[i]);
        }
        free(m->layers);
    }
    if (m->lm_head == m->tok_emb) m->lm_head = NULL;
    bk_buf **top[] = {&m->tok_emb, &m->out_norm, &m->lm_head, &m->x, &m->h, &m->q, &m->k,
                      &m->v, &m->att, &m->proj, &m->gate, &m->up, &m->xo, &m->logits};
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++) free_buf(m, top[i]);
    void *pads[] = {m->pad.tokens, m->pad.positions, m->pad.query_start, m->pad.seq_lens, m->pad.out_rows,
                    m->pad.string_shift, m->pad.string_local, m->pad.block_tables, m->pad.slots,
                    m->pad.inv_freq, m->pad.attn_factor, m->pad.q_scale};
    for (size_t i = 0; i < sizeof pads / sizeof pads[0]; i++) free(pads[i]);
    rope_free(&m->rope);
    model_config_free(&m->cfg);
    free(m->k_scale);
    free(m->v_scale);
    free(m);
}

/* One tensor name + expected shape; filled into `dst` by the upload loop. */
struct want {
    char name[96];
    int n_dims;
    int64_t shape[2];
    bk_buf **dst;
};

static void want_add(struct want *w, int *n, bk_buf **dst, int64_t d0, int64_t d1, const char *fmt, int layer)
{
    struct want *x = &w[(*n)++];
    snprintf(x->name, sizeof x->name, fmt, layer);
    x->n_dims = d1 ? 2 : 1;
    x->shape[0] = d0;
    x->shape[1] = d1;
    x->dst = dst;
}

/* A deep copy of the config so the model owns its arrays (longrope factors). */
static void config_copy(struct model_config *dst, const struct model_config *src)
{
    *dst = *src;
    struct rope_scaling *r = &dst->rope;
    if (r->short_factor) {
        r->short_factor = xmalloc(sizeof(float) * r->n_short_factor);
        memcpy(r->short_factor, src->rope.short_factor, sizeof(float) * r->n_short_factor);
    }
    if (r->long_factor) {
        r->long_factor = xmalloc(sizeof(float) * r->n_long_factor);
        memcpy(r->long_factor, src->rope.long_factor, sizeof(float) * r->n_long_factor);
    }
    dst->layer_window = xcalloc((size_t)src->n_layers, sizeof *dst->layer_window);
    if (src->layer_window)
        memcpy(dst->layer_window, src->layer_window, sizeof *dst->layer_window * (size_t)src->n_layers);
}

int model_load(model_t **out, const char *dir, const struct model_config *cfg, struct backend *be,
               const struct model_params *p, char *err)
{
    *out = NULL;
    model_t *m = xcalloc(1, sizeof *m);
    safetensors_t *st = NULL;
    struct want *want = NULL;
    const struct backend_ops *ops = be->ops;
    void *bx = be->ctx;
    config_copy(&m->cfg, cfg);
    m->be = be;
    m->params = *p;
    const struct model_config *c = &m->cfg;

    if (rope_init(&m->rope, c, dir, err) < 0) goto fail;
    m->rope.cfg = &m->cfg;
    if (st_open_dir(&st, dir, err) < 0) goto fail;

    /* 0. The KV cache dtype and the checkpoint's fp8 scales. */
    if (p->kv_cache_dtype == MODEL_KV_DTYPE_AUTO) {
        m->kv_dtype = ops->kv_dtype_auto(bx);
    } else {
        m->kv_dtype = (enum bk_dtype)p->kv_cache_dtype;
        char why[ERR_LEN];
        if (ops->kv_dtype_check(bx, m->kv_dtype, why) < 0) {
            set_err(err, -1, "--kv-cache-dtype %s: %s", bk_dtype_name(m->kv_dtype), why);
            goto fail;
        }
    }
    if (load_kv_scales(m, st, err) < 0) goto fail;
    if (m->has_kv_scales && m->kv_dtype == BK_FP8_E4M3) LOG_I("%s: fp8 KV cache with the checkpoint's k/v scales", dir);
    else if (m->has_kv_scales) LOG_I("%s: the checkpoint's KV cache scales are used with --kv-cache-dtype fp8 only", dir);

    /* 1. Check every tensor before uploading anything. */
    const int64_t H = c->hidden_size, F = c->intermediate_size, V = c->vocab_size;
    const int64_t QD = (int64_t)c->n_heads * c->head_dim, KD = (int64_t)c->n_kv_heads * c->head_dim;
    m->layers = xcalloc(c->n_layers, sizeof *m->layers);
    want = xcalloc(16 * (size_t)c->n_layers + 3, sizeof *want);
    int nw = 0;
    want_add(want, &nw, &m->tok_emb, V, H, "model.embed_tokens.weight", 0);
    want_add(want, &nw, &m->out_norm, H, 0, "model.norm.weight", 0);
    int tied = c->tie_word_embeddings;
    if (!tied && !st_find(st, "lm_head.weight")) {
        /* HF falls back the same way for checkpoints saved without the duplicate tensor */
        LOG_W("%s: no lm_head.weight and tie_word_embeddings is false: using model.embed_tokens.weight", dir);
        tied = 1;
    }
    if (!tied) want_add(want, &nw, &m->lm_head, V, H, "lm_head.weight", 0);
    for (int l = 0; l < c->n_layers; l++) {
        struct layer_weights *w = &m->layers[l];
        want_add(want, &nw, &w->attn_norm, H, 0, "model.layers.%d.input_layernorm.weight", l);
        want_add(want, &nw, &w->wq, QD, H, "model.layers.%d.self_attn.q_proj.weight", l);
        want_add(want, &nw, &w->wk, KD, H, "model.layers.%d.self_attn.k_proj.weight", l);
        want_add(want, &nw, &w->wv, KD, H, "model.layers.%d.self_attn.v_proj.weight", l);
        want_add(want, &nw, &w->wo, H, QD, "model.layers.%d.self_attn.o_proj.weight", l);
        want_add(want, &nw, &w->ffn_norm, H, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        want_add(want, &nw, &w->w_gate, F, H, "model.layers.%d.mlp.gate_proj.weight", l);
        want_add(want, &nw, &w->w_up, F, H, "model.layers.%d.mlp.up_proj.weight", l);
        want_add(want, &nw, &w->w_down, H, F, "model.layers.%d.mlp.down_proj.weight", l);
        if (c->qkv_bias) {
            want_add(want, &nw, &w->bq, QD, 0, "model.layers.%d.self_attn.q_proj.bias", l);
            want_add(want, &nw, &w->bk, KD, 0, "model.layers.%d.self_attn.k_proj.bias", l);
            want_add(want, &nw, &w->bv, KD, 0, "model.layers.%d.self_attn.v_proj.bias", l);
        }
        if (c->o_bias) want_add(want, &nw, &w->bo, H, 0, "model.layers.%d.self_attn.o_proj.bias", l);
        if (c->mlp_bias) {
            want_add(want, &nw, &w->b_gate, F, 0, "model.layers.%d.mlp.gate_proj.bias", l);
            want_add(want, &nw, &w->b_up, F, 0, "model.layers.%d.mlp.up_proj.bias", l);
            want_add(want, &nw, &w->b_down, H, 0, "model.layers.%d.mlp.down_proj.bias", l);
        }
    }
    const struct st_tensor **found = xcalloc(nw, sizeof *found);
    for (int i = 0; i < nw; i++) {
        if (st_get(st, want[i].name, want[i].n_dims, want[i].shape, &found[i], err) < 0) {
            free(found);
            goto fail;
        }
    }

    /* 2. Upload. */
    for (int i = 0; i < nw; i++) {
        const struct st_tensor *t = found[i];
        size_t n = t->nbytes / bk_dtype_size(t->dtype);
        *want[i].dst = ops->weight_new(bx, t->data, t->dtype, n, err);
        if (!*want[i].dst) {
            free(found);
            goto fail;
        }
        m->weight_bytes += n * (size_t)ops->elem_size;
    }
    free(found);
    if (tied) m->lm_head = m->tok_emb;
    int n_slide = 0, first_slide = -1, w_slide = 0;
    for (int l = 0; l < c->n_layers; l++)
        if (c->layer_window[l] > 0) {
            if (first_slide < 0) first_slide = l;
            n_slide++;
            w_slide = c->layer_window[l];
        }
    char attn[96] = "full causal attention";
    if (n_slide == c->n_layers) snprintf(attn, sizeof attn, "a sliding window of %d keys in every layer", w_slide);
    else if (n_slide) snprintf(attn, sizeof attn, "a sliding window of %d keys in %d of %d layers (from layer %d)",
                               w_slide, n_slide, c->n_layers, first_slide);
    LOG_I("%s: %s, %s%s%s%s", dir, model_arch_name(c->arch), attn, c->qkv_bias ? ", q/k/v biases" : "",
          c->o_bias ? ", o_proj bias" : "", c->mlp_bias ? ", MLP biases" : "");
    st_close(st);
    st = NULL;

    /* 3. Activations. */
    const size_t T = (size_t)p->max_batch_tokens, O = (size_t)p->max_out_rows;
    struct { bk_buf **b; size_t n; } acts[] = {
        {&m->x, T * H}, {&m->h, T * H}, {&m->q, T * QD}, {&m->k, T * KD}, {&m->v, T * KD},
        {&m->att, T * QD}, {&m->proj, T * H}, {&m->gate, T * (size_t)(F > QD ? F : QD)}, {&m->up, T * F},
        {&m->xo, O * H}, {&m->logits, O * V},
    };
    for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++) {
        /* the residual stream and the logits stay fp32 where the backend can say so; with an fp8
         * KV cache every activation does (the fp8 attention kernels take fp32 q and out) */
        const int f32 = ops->act_new_f32 &&
                        (m->kv_dtype == BK_FP8_E4M3 || acts[i].b == &m->x || acts[i].b == &m->logits);
        *acts[i].b = f32 ? ops->act_new_f32(bx, acts[i].n, err) : ops->act_new(bx, acts[i].n, err);
        if (!*acts[i].b) goto fail;
    }
    free(want);
    *out = m;
    return 0;

fail:
    free(want);
    st_close(st);
    model_free(m);
    return -1;
}

int model_kv_init(model_t *m, int n_blocks, int block_size, int max_len, char *err)
{
    int32_t *window = xcalloc((size_t)m->cfg.n_layers, sizeof *window);
    int any_window = 0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        window[l] = model_config_layer_window(&m->cfg, l, max_len);
        any_window |= window[l] > 0;
    }
    struct bk_kv_params kp = {
        .n_layers = m->cfg.n_layers,
        .n_blocks = n_blocks,
        .block_size = block_size,
        .n_kv_heads = m->cfg.n_kv_heads,
        .head_dim = m->cfg.head_dim,
        .k_storage = m->rope.k_storage,
        .sliding_window = any_window ? window : NULL,
        .dtype = m->kv_dtype,
        .k_scale = m->k_scale,
        .v_scale = m->v_scale,
    };
    int rc = m->be->ops->kv_init(m->be->ctx, &kp, err);
    free(window);
    if (rc < 0) return -1;
    m->kv_ready = 1;
    return 0;
}

/* The ops of one forward over the batch batch_begin was given, T rows, n_out logits rows. */
struct fwd_args {
    model_t *m;
    int T, n_out;
    bk_buf *q_shift;
};

/* x += y, then out = rmsnorm(x) * w: one op where the backend fuses them */
static void add_norm(const struct backend_ops *ops, void *bx, bk_buf *out, bk_buf *x, const bk_buf *y,
                     const bk_buf *w, int T, int H, float eps)
{
    if (ops->add_rmsnorm) {
        ops->add_rmsnorm(bx, out, x, y, w, T, H, eps);
    } else {
        ops->add(bx, x, y, (size_t)T * H);
        ops->rmsnorm(bx, out, x, w, T, H, eps);
    }
}

static void forward_ops(void *arg)
{
    const struct fwd_args *a = arg;
    model_t *m = a->m;
    const struct backend_ops *ops = m->be->ops;
    void *bx = m->be->ctx;
    const struct model_config *c = &m->cfg;
    const int T = a->T, H = c->hidden_size, F = c->intermediate_size;
    const int QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim;
    const float scale = 1.0f / sqrtf((float)c->head_dim);
    const float eps = c->rms_norm_eps;
    const int post_rope = m->rope.k_storage == BK_K_POST_ROPE;
    bk_buf *q_shift = a->q_shift;

    ops->embed(bx, m->x, m->tok_emb, H);
    ops->rmsnorm(bx, m->h, m->x, m->layers[0].attn_norm, T, H, eps);
    for (int l = 0; l < c->n_layers; l++) {
        const struct layer_weights *w = &m->layers[l];
        /* m->h = rmsnorm(x) with this layer's attn_norm (before the loop, or fused below) */
        ops->matmul(bx, m->q, m->h, w->wq, T, H, QD);
        ops->matmul(bx, m->k, m->h, w->wk, T, H, KD);
        ops->matmul(bx, m->v, m->h, w->wv, T, H, KD);
        if (ops->rope_kv_store && m->kv_dtype != BK_FP8_E4M3) { /* the fused op stores 16-bit caches */
            ops->rope_kv_store(bx, l, m->q, m->k, m->v, q_shift, w->bq, w->bk, w->bv, c->n_heads, c->n_kv_heads,
                               c->head_dim);
        } else {
            if (w->bq) {
                ops->add_bias(bx, m->q, w->bq, T, QD);
                ops->add_bias(bx, m->k, w->bk, T, KD);
                ops->add_bias(bx, m->v, w->bv, T, KD);
            }
            ops->rope(bx, m->q, post_rope ? m->k : NULL, q_shift, c->n_heads, c->n_kv_heads, c->head_dim);
            ops->kv_store(bx, l, m->k, m->v);
        }
        ops->attention(bx, m->att, m->q, q_shift, l, c->n_heads, scale);
        ops->matmul(bx, m->proj, m->att, w->wo, T, QD, H);
        if (w->bo) ops->add_bias(bx, m->proj, w->bo, T, H);
        add_norm(ops, bx, m->h, m->x, m->proj, w->ffn_norm, T, H, eps);
        ops->matmul(bx, m->gate, m->h, w->w_gate, T, H, F);
        ops->matmul(bx, m->up, m->h, w->w_up, T, H, F);
        if (w->b_gate) {
            ops->add_bias(bx, m->gate, w->b_gate, T, F);
            ops->add_bias(bx, m->up, w->b_up, T, F);
        }
        ops->swiglu(bx, m->gate, m->gate, m->up, T, F);
        ops->matmul(bx, m->proj, m->gate, w->w_down, T, F, H);
        if (w->b_down) ops->add_bias(bx, m->proj, w->b_down, T, H);
        if (l + 1 < c->n_layers)
            add_norm(ops, bx, m->h, m->x, m->proj, m->layers[l + 1].attn_norm, T, H, eps);
        else
            ops->add(bx, m->x, m->proj, (size_t)T * H);
    }
    if (a->n_out == 0) return;
    if (ops->gather_rmsnorm) {
        ops->gather_rmsnorm(bx, m->xo, m->x, m->out_norm, H, eps);
    } else {
        ops->gather_rows(bx, m->xo, m->x, H);
        ops->rmsnorm(bx, m->xo, m->xo, m->out_norm, a->n_out, H, eps);
    }
    ops->matmul(bx, m->logits, m->xo, m->lm_head, a->n_out, H, c->vocab_size);
}

/* The graph bucket of an n-sequence decode step: 1, 2, 4, then multiples of 8, at most
 * graph_max_seqs rounded up to 8 and what the activation buffers hold; 0 = none fits. */
static int graph_bucket(const model_t *m, int n)
{
    const int lim8 = (m->params.graph_max_seqs + 7) / 8 * 8;
    int cap = m->params.max_batch_tokens < m->params.max_out_rows ? m->params.max_batch_tokens : m->params.max_out_rows;
    if (lim8 < cap) cap = lim8;
    const int bucket = n <= 1 ? 1 : n <= 2 ? 2 : n <= 4 ? 4 : (n + 7) / 8 * 8;
    return m->params.graph_max_seqs > 0 && bucket <= cap ? bucket : 0;
}

static void *grow(void *p, int *cap, int want, size_t elem)
{
    if (want <= *cap) return p;
    *cap = want;
    return xrealloc(p, (size_t)want * elem);
}

/* Fill m->pad with b padded to B sequences and a block table of width sb; *pb points into it. */
static void pad_batch(model_t *m, const struct bk_batch *b, int B, int sb, struct bk_batch *pb)
{
    const int n = b->n_seqs, half = b->rotary_dim / 2;
    if (B > m->pad.cap_rows) {
        int cap = B;
        m->pad.tokens = xrealloc(m->pad.tokens, (size_t)cap * sizeof(int32_t));
        m->pad.positions = xrealloc(m->pad.positions, (size_t)cap * sizeof(int32_t));
        m->pad.query_start = xrealloc(m->pad.query_start, (size_t)(cap + 1) * sizeof(int32_t));
        m->pad.seq_lens = xrealloc(m->pad.seq_lens, (size_t)cap * sizeof(int32_t));
        m->pad.out_rows = xrealloc(m->pad.out_rows, (size_t)cap * sizeof(int32_t));
        m->pad.string_shift = xrealloc(m->pad.string_shift, (size_t)cap * sizeof(int32_t));
        m->pad.string_local = xrealloc(m->pad.string_local, (size_t)cap * sizeof(int32_t));
        m->pad.slots = xrealloc(m->pad.slots, (size_t)cap * sizeof(int64_t));
        m->pad.attn_factor = xrealloc(m->pad.attn_factor, (size_t)cap * sizeof(float));
        m->pad.q_scale = xrealloc(m->pad.q_scale, (size_t)cap * sizeof(float));
        m->pad.cap_rows = cap;
    }
    m->pad.block_tables = grow(m->pad.block_tables, &m->pad.cap_bt, B * sb, sizeof(int32_t));
    if (half > 0) m->pad.inv_freq = grow(m->pad.inv_freq, &m->pad.cap_freq, B * half, sizeof(float));
    memset(m->pad.block_tables, 0, (size_t)B * sb * sizeof(int32_t));
    for (int s = 0; s < B; s++) {
        const int real = s < n;
        m->pad.tokens[s] = real ? b->tokens[s] : 0;
        m->pad.positions[s] = real ? b->positions[s] : 0;
        m->pad.slots[s] = real ? b->slot_mapping[s] : -1;
        m->pad.query_start[s] = s;
        m->pad.seq_lens[s] = real ? b->seq_lens[s] : 1;
        m->pad.out_rows[s] = s;
        if (real)
            memcpy(m->pad.block_tables + (size_t)s * sb, b->block_tables + (size_t)s * b->block_table_stride,
                   (size_t)b->block_table_stride * sizeof(int32_t));
        if (b->inv_freq && half > 0)
            memcpy(m->pad.inv_freq + (size_t)s * half, b->inv_freq + (size_t)(real ? s : 0) * half,
                   (size_t)half * sizeof(float));
        if (b->attn_factor) m->pad.attn_factor[s] = b->attn_factor[real ? s : 0];
        if (b->q_scale) m->pad.q_scale[s] = real ? b->q_scale[s] : 1.0f;
        if (b->string_shift) {
            m->pad.string_shift[s] = real ? b->string_shift[s] : 0;
            m->pad.string_local[s] = real && b->string_local ? b->string_local[s] : 0;
        }
    }
    m->pad.query_start[B] = B;
    *pb = *b;
    pb->n_tokens = B;
    pb->tokens = m->pad.tokens;
    pb->positions = m->pad.positions;
    pb->slot_mapping = m->pad.slots;
    pb->n_seqs = B;
    pb->query_start = m->pad.query_start;
    pb->seq_lens = m->pad.seq_lens;
    pb->block_tables = m->pad.block_tables;
    pb->block_table_stride = sb;
    pb->n_out = B;
    pb->out_rows = m->pad.out_rows;
    pb->inv_freq = b->inv_freq && half > 0 ? m->pad.inv_freq : b->inv_freq;
    pb->attn_factor = b->attn_factor ? m->pad.attn_factor : NULL;
    pb->q_scale = b->q_scale ? m->pad.q_scale : NULL;
    pb->string_shift = b->string_shift ? m->pad.string_shift : NULL;
    pb->string_local = b->string_shift ? m->pad.string_local : NULL;
}

/* A graph step when the backend has graphs on and b is all decode rows, each wanting logits. */
static int graph_step(const model_t *m, const struct bk_batch *b)
{
    const struct backend_ops *ops = m->be->ops;
    if (!ops->graph_run || !ops->graph_enabled || !ops->graph_enabled(m->be->ctx)) return 0;
    if (b->n_seqs <= 0 || b->n_tokens != b->n_seqs || b->n_out != b->n_seqs) return 0;
    for (int s = 0; s < b->n_seqs; s++)
        if (b->query_start[s] != s || b->out_rows[s] != s) return 0;
    if (b->string_shift && !b->string_local) return 0;
    return graph_bucket(m, b->n_seqs) > 0;
}

int model_forward(model_t *m, const struct bk_batch *b, float *logits, char *err)
{
    const struct backend_ops *ops = m->be->ops;
    void *bx = m->be->ctx;
    const struct model_config *c = &m->cfg;
    const int T = b->n_tokens;
    CHECK(m->kv_ready, "model_forward before model_kv_init");
    CHECK(T > 0 && T <= m->params.max_batch_tokens, "batch of %d tokens (max %d)", T, m->params.max_batch_tokens);
    CHECK(b->n_out >= 0 && b->n_out <= m->params.max_out_rows, "%d logits rows (max %d)", b->n_out, m->params.max_out_rows);

    /* STRING's shifted queries live in the gate buffer, which is free until the MLP */
    struct fwd_args a = {.m = m, .T = T, .n_out = b->n_out, .q_shift = b->string_shift ? m->gate : NULL};
    if (graph_step(m, b)) {
        const int B = graph_bucket(m, b->n_seqs);
        int sb = 1, lg = 0;
        while (sb < b->block_table_stride) {
            sb <<= 1;
            lg++;
        }
        struct bk_batch pb;
        pad_batch(m, b, B, sb, &pb);
        if (ops->batch_begin(bx, &pb, err) < 0) return -1;
        a.T = B;
        a.n_out = B;
        if (ops->graph_run(bx, B * 64 + lg, forward_ops, &a, err) < 0) return -1;
    } else {
        if (ops->batch_begin(bx, b, err) < 0) return -1;
        forward_ops(&a);
    }
    if (b->n_out == 0) return 0;
    ops->act_read(bx, logits, m->logits, 0, (size_t)b->n_out * c->vocab_size);
    return 0;
}
