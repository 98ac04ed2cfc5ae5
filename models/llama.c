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
};

struct model_params model_default_params(void)
{
    struct model_params p = {.max_batch_tokens = 2048, .max_out_rows = 256, .kv_cache_dtype = MODEL_KV_DTYPE_AUTO};
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
        *acts[i].b = ops->act_new(bx, acts[i].n, err);
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

int model_forward(model_t *m, const struct bk_batch *b, float *logits, char *err)
{
    const struct backend_ops *ops = m->be->ops;
    void *bx = m->be->ctx;
    const struct model_config *c = &m->cfg;
    const int T = b->n_tokens, H = c->hidden_size, F = c->intermediate_size;
    const int QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim;
    CHECK(m->kv_ready, "model_forward before model_kv_init");
    CHECK(T > 0 && T <= m->params.max_batch_tokens, "batch of %d tokens (max %d)", T, m->params.max_batch_tokens);
    CHECK(b->n_out >= 0 && b->n_out <= m->params.max_out_rows, "%d logits rows (max %d)", b->n_out, m->params.max_out_rows);

    if (ops->batch_begin(bx, b, err) < 0) return -1;
    const float scale = 1.0f / sqrtf((float)c->head_dim);
    const int post_rope = m->rope.k_storage == BK_K_POST_ROPE;
    /* STRING's shifted queries live in the gate buffer, which is free until the MLP */
    bk_buf *q_shift = b->string_shift ? m->gate : NULL;

    ops->embed(bx, m->x, m->tok_emb, H);
    for (int l = 0; l < c->n_layers; l++) {
        const struct layer_weights *w = &m->layers[l];
        ops->rmsnorm(bx, m->h, m->x, w->attn_norm, T, H, c->rms_norm_eps);
        ops->matmul(bx, m->q, m->h, w->wq, T, H, QD);
        ops->matmul(bx, m->k, m->h, w->wk, T, H, KD);
        ops->matmul(bx, m->v, m->h, w->wv, T, H, KD);
        if (w->bq) {
            ops->add_bias(bx, m->q, w->bq, T, QD);
            ops->add_bias(bx, m->k, w->bk, T, KD);
            ops->add_bias(bx, m->v, w->bv, T, KD);
        }
        ops->rope(bx, m->q, post_rope ? m->k : NULL, q_shift, c->n_heads, c->n_kv_heads, c->head_dim);
        ops->kv_store(bx, l, m->k, m->v);
        ops->attention(bx, m->att, m->q, q_shift, l, c->n_heads, scale);
        ops->matmul(bx, m->proj, m->att, w->wo, T, QD, H);
        if (w->bo) ops->add_bias(bx, m->proj, w->bo, T, H);
        ops->add(bx, m->x, m->proj, (size_t)T * H);
        ops->rmsnorm(bx, m->h, m->x, w->ffn_norm, T, H, c->rms_norm_eps);
        ops->matmul(bx, m->gate, m->h, w->w_gate, T, H, F);
        ops->matmul(bx, m->up, m->h, w->w_up, T, H, F);
        if (w->b_gate) {
            ops->add_bias(bx, m->gate, w->b_gate, T, F);
            ops->add_bias(bx, m->up, w->b_up, T, F);
        }
        ops->swiglu(bx, m->gate, m->gate, m->up, T, F);
        ops->matmul(bx, m->proj, m->gate, w->w_down, T, F, H);
        if (w->b_down) ops->add_bias(bx, m->proj, w->b_down, T, H);
        ops->add(bx, m->x, m->proj, (size_t)T * H);
    }
    if (b->n_out == 0) return 0;
    ops->gather_rows(bx, m->xo, m->x, H);
    ops->rmsnorm(bx, m->xo, m->xo, m->out_norm, b->n_out, H, c->rms_norm_eps);
    ops->matmul(bx, m->logits, m->xo, m->lm_head, b->n_out, H, c->vocab_size);
    ops->act_read(bx, logits, m->logits, 0, (size_t)b->n_out * c->vocab_size);
    return 0;
}
