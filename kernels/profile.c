/* profile.c - the timing wrapper of profile.h. The wrapper is a backend whose ctx is a struct
 * prof holding the wrapped backend; each timed op takes two marks (slots 2i, 2i + 1 of the step's
 * i-th op) around the forwarded call and remembers which class it belongs to. At the end of the
 * step (the act_read of the logits, or the next batch_begin) every pair is turned into
 * milliseconds and added to its (kind, class) row; the host clock gives the step's wall time. */
#include "profile.h"

#include <stdlib.h>
#include <string.h>

#include "../common/common.h"

enum { KIND_PREFILL, KIND_DECODE, KIND_MIXED, N_KINDS };
static const char *const kind_name[N_KINDS] = {"prefill", "decode", "mixed"};

/* fixed classes first; GEMM shapes are appended as they appear */
enum {
    C_BATCH, C_EMBED, C_NORM, C_ROPE, C_KV, C_ATTN, C_SWIGLU, C_ADD, C_BIAS, C_GATHER, C_LOGITS,
    C_WRITE, C_COPY, N_FIXED
};
static const char *const fixed_name[N_FIXED] = {
    "batch upload (batch_begin)", "embedding", "rmsnorm", "rope", "kv write (kv_store)", "attention",
    "swiglu", "residual add", "bias add", "gather rows", "logits copy (act_read)", "act_write",
    "kv_copy_blocks"};

#define MAX_CLASSES 48

struct gemm_shape {
    int n_in, n_out;
    char name[64];
};

struct prof_row {
    double ms;
    long calls;
};

struct prof {
    struct backend inner;
    struct backend_ops ops;  /* the wrapper's table */
    int n_classes;
    struct gemm_shape gemm[MAX_CLASSES]; /* class N_FIXED + i */
    /* the step in flight */
    int in_step, kind, n_pend, cap_pend, slots;
    int *pend;               /* (2 cap_pend) class and step kind of pending op i, marks 2i, 2i + 1;
                                kept across steps without logits until an act_read */
    double t_step, t_end;    /* host clock at batch_begin, at the end of the last step */
    /* accumulated */
    struct prof_row rows[N_KINDS][MAX_CLASSES];
    double wall[N_KINDS], between[N_KINDS];
    long steps[N_KINDS], tokens[N_KINDS];
};

#define P(v) ((struct prof *)(v))
#define IN(pr) ((pr)->inner.ops)
#define ICTX(pr) ((pr)->inner.ctx)

static int is_wrapped(const struct backend *b);

/* ------------------------------------------------------------------------------------------- */

static void begin_op(struct prof *pr, int cls)
{
    if (!pr->in_step) return; /* outside a step (weight upload, kv_init): not profiled */
    if (pr->n_pend == pr->cap_pend) {
        pr->cap_pend = pr->cap_pend ? 2 * pr->cap_pend : 256;
        pr->pend = xrealloc(pr->pend, 2 * sizeof(int) * pr->cap_pend);
    }
    if (2 * pr->cap_pend > pr->slots) {
        char err[ERR_LEN];
        CHECK(IN(pr)->prof_reserve(ICTX(pr), 2 * pr->cap_pend, err) == 0, "profile: %s", err);
        pr->slots = 2 * pr->cap_pend;
    }
    pr->pend[2 * pr->n_pend] = cls;
    pr->pend[2 * pr->n_pend + 1] = pr->kind;
    IN(pr)->prof_mark(ICTX(pr), 2 * pr->n_pend);
}

static void end_op(struct prof *pr)
{
    if (!pr->in_step) return;
    IN(pr)->prof_mark(ICTX(pr), 2 * pr->n_pend + 1);
    pr->n_pend++;
}

/* close the step in flight (host clock only: no synchronization) */
static void end_step(struct prof *pr)
{
    if (!pr->in_step) return;
    pr->t_end = now_s();
    pr->wall[pr->kind] += (pr->t_end - pr->t_step) * 1e3;
    pr->in_step = 0;
}

/* turn the pending marks into milliseconds. Called after an act_read (the device has finished
 * every op before it, so nothing waits) and by reset/report; a step without logits (a prompt
 * chunk before the last) stays pending until then, so profiling never makes the host wait for
 * the device between two chunks. */
static void resolve(struct prof *pr)
{
    for (int i = 0; i < pr->n_pend; i++) {
        struct prof_row *r = &pr->rows[pr->pend[2 * i + 1]][pr->pend[2 * i]];
        r->ms += IN(pr)->prof_elapsed_ms(ICTX(pr), 2 * i, 2 * i + 1);
        r->calls++;
    }
    pr->n_pend = 0;
}

static int gemm_class(struct prof *pr, int n_in, int n_out)
{
    for (int c = N_FIXED; c < pr->n_classes; c++)
        if (pr->gemm[c].n_in == n_in && pr->gemm[c].n_out == n_out) return c;
    CHECK(pr->n_classes < MAX_CLASSES, "profile: more than %d GEMM shapes", MAX_CLASSES - N_FIXED);
    const int c = pr->n_classes++;
    pr->gemm[c].n_in = n_in;
    pr->gemm[c].n_out = n_out;
    pr->gemm[c].name[0] = 0;
    return c;
}

/* ------------------------------------------------------------------------------------------- */
/* the wrapped ops */

static void w_free(void *v)
{
    struct prof *pr = P(v);
    backend_free(&pr->inner);
    free(pr->pend);
    free(pr);
}
static void w_describe(void *v, char *buf, size_t len) { IN(P(v))->describe(ICTX(P(v)), buf, len); }
static size_t w_mem_free(void *v) { return IN(P(v))->mem_free(ICTX(P(v))); }
static bk_buf *w_weight_new(void *v, const void *src, enum bk_dtype dt, size_t n, char *err)
{
    return IN(P(v))->weight_new(ICTX(P(v)), src, dt, n, err);
}
static bk_buf *w_act_new(void *v, size_t n, char *err) { return IN(P(v))->act_new(ICTX(P(v)), n, err); }
static void w_buf_free(void *v, bk_buf *b) { IN(P(v))->buf_free(ICTX(P(v)), b); }
static void w_act_write(void *v, bk_buf *dst, size_t off, const float *src, size_t n)
{
    begin_op(P(v), C_WRITE);
    IN(P(v))->act_write(ICTX(P(v)), dst, off, src, n);
    end_op(P(v));
}
static void w_act_read(void *v, float *dst, const bk_buf *src, size_t off, size_t n)
{
    struct prof *pr = P(v);
    begin_op(pr, C_LOGITS);
    IN(pr)->act_read(ICTX(pr), dst, src, off, n);
    end_op(pr);
    end_step(pr); /* the logits are the end of a step (model_forward reads nothing else) */
    resolve(pr);
}
static int w_kv_init(void *v, const struct bk_kv_params *p, char *err) { return IN(P(v))->kv_init(ICTX(P(v)), p, err); }
static void w_kv_copy_blocks(void *v, const int32_t *src, const int32_t *dst, int n)
{
    begin_op(P(v), C_COPY);
    IN(P(v))->kv_copy_blocks(ICTX(P(v)), src, dst, n);
    end_op(P(v));
}
static int w_batch_begin(void *v, const struct bk_batch *b, char *err)
{
    struct prof *pr = P(v);
    end_step(pr); /* a step without logits (n_out 0) ends here */
    const double t = now_s();
    int multi = 0, single = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        if (b->query_start[s + 1] - b->query_start[s] > 1) multi++;
        else single++;
    }
    /* the host time since the last step ended belongs to that step (its sampling) */
    if (pr->t_end > 0) pr->between[pr->kind] += (t - pr->t_end) * 1e3;
    pr->kind = multi && single ? KIND_MIXED : multi ? KIND_PREFILL : KIND_DECODE;
    pr->t_step = t;
    pr->in_step = 1;
    pr->steps[pr->kind]++;
    pr->tokens[pr->kind] += b->n_tokens;
    begin_op(pr, C_BATCH);
    const int rc = IN(pr)->batch_begin(ICTX(pr), b, err);
    end_op(pr);
    return rc;
}
static void w_embed(void *v, bk_buf *x, const bk_buf *t, int dim)
{
    begin_op(P(v), C_EMBED);
    IN(P(v))->embed(ICTX(P(v)), x, t, dim);
    end_op(P(v));
}
static void w_rmsnorm(void *v, bk_buf *o, const bk_buf *x, const bk_buf *w, int n, int dim, float eps)
{
    begin_op(P(v), C_NORM);
    IN(P(v))->rmsnorm(ICTX(P(v)), o, x, w, n, dim, eps);
    end_op(P(v));
}
static void w_matmul(void *v, bk_buf *o, const bk_buf *x, const bk_buf *w, int n, int n_in, int n_out)
{
    begin_op(P(v), gemm_class(P(v), n_in, n_out));
    IN(P(v))->matmul(ICTX(P(v)), o, x, w, n, n_in, n_out);
    end_op(P(v));
}
static void w_rope(void *v, bk_buf *q, bk_buf *k, bk_buf *qs, int nh, int nkv, int hd)
{
    begin_op(P(v), C_ROPE);
    IN(P(v))->rope(ICTX(P(v)), q, k, qs, nh, nkv, hd);
    end_op(P(v));
}
/* the optional ops other helpers' backends have (fp8 KV dtype, fp32 buffers, fused ops): each
 * forwarded to the inner backend; a fused op is timed under the class of its main part */
static enum bk_dtype w_kv_dtype_auto(void *v) { return IN(P(v))->kv_dtype_auto(ICTX(P(v))); }
static int w_kv_dtype_check(void *v, enum bk_dtype dt, char *err) { return IN(P(v))->kv_dtype_check(ICTX(P(v)), dt, err); }
static bk_buf *w_act_new_f32(void *v, size_t n, char *err) { return IN(P(v))->act_new_f32(ICTX(P(v)), n, err); }
static void w_add_rmsnorm(void *v, bk_buf *o, bk_buf *x, const bk_buf *y, const bk_buf *w, int n, int dim, float eps)
{
    begin_op(P(v), C_NORM);
    IN(P(v))->add_rmsnorm(ICTX(P(v)), o, x, y, w, n, dim, eps);
    end_op(P(v));
}
static void w_rope_kv_store(void *v, int layer, bk_buf *q, const bk_buf *k, const bk_buf *vv, bk_buf *qs,
                            const bk_buf *bq, const bk_buf *bk, const bk_buf *bv, int nh, int nkv, int hd)
{
    begin_op(P(v), C_KV);
    IN(P(v))->rope_kv_store(ICTX(P(v)), layer, q, k, vv, qs, bq, bk, bv, nh, nkv, hd);
    end_op(P(v));
}
static void w_gather_rmsnorm(void *v, bk_buf *dst, const bk_buf *src, const bk_buf *w, int dim, float eps)
{
    begin_op(P(v), C_NORM);
    IN(P(v))->gather_rmsnorm(ICTX(P(v)), dst, src, w, dim, eps);
    end_op(P(v));
}
static void w_kv_store(void *v, int layer, const bk_buf *k, const bk_buf *vv)
{
    begin_op(P(v), C_KV);
    IN(P(v))->kv_store(ICTX(P(v)), layer, k, vv);
    end_op(P(v));
}
static void w_attention(void *v, bk_buf *o, const bk_buf *q, const bk_buf *qs, int layer, int nh, float scale)
{
    begin_op(P(v), C_ATTN);
    IN(P(v))->attention(ICTX(P(v)), o, q, qs, layer, nh, scale);
    end_op(P(v));
}
static void w_swiglu(void *v, bk_buf *o, const bk_buf *g, const bk_buf *u, int n, int m)
{
    begin_op(P(v), C_SWIGLU);
    IN(P(v))->swiglu(ICTX(P(v)), o, g, u, n, m);
    end_op(P(v));
}
static void w_add(void *v, bk_buf *x, const bk_buf *y, size_t n)
{
    begin_op(P(v), C_ADD);
    IN(P(v))->add(ICTX(P(v)), x, y, n);
    end_op(P(v));
}
static void w_gather_rows(void *v, bk_buf *d, const bk_buf *s, int dim)
{
    begin_op(P(v), C_GATHER);
    IN(P(v))->gather_rows(ICTX(P(v)), d, s, dim);
    end_op(P(v));
}
static void w_add_bias(void *v, bk_buf *x, const bk_buf *b, int n, int m)
{
    begin_op(P(v), C_BIAS);
    IN(P(v))->add_bias(ICTX(P(v)), x, b, n, m);
    end_op(P(v));
}

static int is_wrapped(const struct backend *b) { return b && b->ops && b->ops->free == w_free; }

/* ------------------------------------------------------------------------------------------- */

int bk_profile_attach(struct backend *b, char *err)
{
    if (!b || !b->ops) return set_err(err, -1, "profile: no backend");
    if (is_wrapped(b)) return 0;
    const struct backend_ops *in = b->ops;
    if (!in->prof_reserve || !in->prof_mark || !in->prof_elapsed_ms)
        return set_err(err, -1, "profile: the %s backend has no timing hook", in->name);
    struct prof *pr = xcalloc(1, sizeof *pr);
    pr->inner = *b;
    pr->n_classes = N_FIXED;
    struct backend_ops *o = &pr->ops;
    *o = *in; /* name, elem_size, the timing hook itself */
    o->free = w_free;
    o->describe = w_describe;
    o->mem_free = w_mem_free;
    o->weight_new = w_weight_new;
    o->act_new = w_act_new;
    o->buf_free = w_buf_free;
    o->act_write = w_act_write;
    o->act_read = w_act_read;
    o->kv_init = w_kv_init;
    o->kv_copy_blocks = in->kv_copy_blocks ? w_kv_copy_blocks : NULL;
    o->batch_begin = w_batch_begin;
    o->embed = w_embed;
    o->rmsnorm = w_rmsnorm;
    o->matmul = w_matmul;
    o->rope = w_rope;
    o->kv_store = w_kv_store;
    o->attention = w_attention;
    o->swiglu = w_swiglu;
    o->add = w_add;
    o->gather_rows = w_gather_rows;
    o->add_bias = w_add_bias;
    o->kv_dtype_auto = in->kv_dtype_auto ? w_kv_dtype_auto : NULL;
    o->kv_dtype_check = in->kv_dtype_check ? w_kv_dtype_check : NULL;
    o->act_new_f32 = in->act_new_f32 ? w_act_new_f32 : NULL;
    o->add_rmsnorm = in->add_rmsnorm ? w_add_rmsnorm : NULL;
    o->rope_kv_store = in->rope_kv_store ? w_rope_kv_store : NULL;
    o->gather_rmsnorm = in->gather_rmsnorm ? w_gather_rmsnorm : NULL;
    o->graph_enabled = NULL; /* a profiled decode runs eagerly: a replayed graph has no per-op marks */
    o->graph_run = NULL;
    o->prof_reserve = NULL; /* the wrapper owns the slots */
    o->prof_mark = NULL;
    o->prof_elapsed_ms = NULL;
    b->ops = o;
    b->ctx = pr;
    return 0;
}

void bk_profile_name_gemm(struct backend *b, int n_in, int n_out, const char *name)
{
    if (!is_wrapped(b)) return;
    struct prof *pr = P(b->ctx);
    struct gemm_shape *g = &pr->gemm[gemm_class(pr, n_in, n_out)];
    const size_t l = strlen(g->name);
    if (l) snprintf(g->name + l, sizeof g->name - l, "/%s", name);
    else snprintf(g->name, sizeof g->name, "%s", name);
}

void bk_profile_reset(struct backend *b)
{
    if (!is_wrapped(b)) return;
    struct prof *pr = P(b->ctx);
    end_step(pr);
    resolve(pr);
    memset(pr->rows, 0, sizeof pr->rows);
    memset(pr->wall, 0, sizeof pr->wall);
    memset(pr->between, 0, sizeof pr->between);
    memset(pr->steps, 0, sizeof pr->steps);
    memset(pr->tokens, 0, sizeof pr->tokens);
    pr->t_end = 0;
}

static void class_name(const struct prof *pr, int c, char *buf, size_t len)
{
    if (c < N_FIXED) snprintf(buf, len, "%s", fixed_name[c]);
    else if (pr->gemm[c].name[0]) snprintf(buf, len, "gemm %s (%d->%d)", pr->gemm[c].name, pr->gemm[c].n_in, pr->gemm[c].n_out);
    else snprintf(buf, len, "gemm %d->%d", pr->gemm[c].n_in, pr->gemm[c].n_out);
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

void bk_profile_report(struct backend *b, FILE *f)
{
    if (!is_wrapped(b)) return;
    struct prof *pr = P(b->ctx);
    end_step(pr);
    resolve(pr);
    char desc[256], name[128];
    IN(pr)->describe(ICTX(pr), desc, sizeof desc);
    fprintf(f, "profile: time per op class and step kind (%s; %s)\n", desc,
            strcmp(IN(pr)->name, "cuda") == 0 ? "device time from CUDA events" : "host clock around each op");
    /* JSON: {"prefill": {"steps": n, "tokens": n, "wall_ms": x, "ops": {"class": {"ms": x, "calls": n, "share": x}}}} */
    char *json = NULL;
    size_t json_len = 0;
    FILE *j = open_memstream(&json, &json_len);
    fputc('{', j);
    int first_kind = 1;
    for (int k = 0; k < N_KINDS; k++) {
        if (!pr->steps[k]) continue;
        const double total = pr->wall[k] + pr->between[k];
        double ops = 0;
        for (int c = 0; c < pr->n_classes; c++) ops += pr->rows[k][c].ms;
        fprintf(f, "\nstep kind %s: %ld steps, %ld tokens, %.3f s (steps %.3f s + between steps %.3f s)\n",
                kind_name[k], pr->steps[k], pr->tokens[k], total / 1e3, pr->wall[k] / 1e3, pr->between[k] / 1e3);
        fprintf(f, "  %-52s %8s %12s %10s %7s\n", "op class", "calls", "total ms", "ms/step", "share");
        fprintf(j, "%s\"%s\": {\"steps\": %ld, \"tokens\": %ld, \"wall_ms\": %.3f, \"ops\": {", first_kind ? "" : ", ",
                kind_name[k], pr->steps[k], pr->tokens[k], total);
        first_kind = 0;
        /* biggest first */
        int order[MAX_CLASSES], n = 0;
        for (int c = 0; c < pr->n_classes; c++)
            if (pr->rows[k][c].calls) order[n++] = c;
        for (int a = 1; a < n; a++)
            for (int i = a; i > 0 && pr->rows[k][order[i]].ms > pr->rows[k][order[i - 1]].ms; i--) {
                const int t = order[i];
                order[i] = order[i - 1];
                order[i - 1] = t;
            }
        double sum_share = 0;
        for (int i = 0; i < n + 2; i++) {
            double ms;
            long calls;
            if (i < n) {
                class_name(pr, order[i], name, sizeof name);
                ms = pr->rows[k][order[i]].ms;
                calls = pr->rows[k][order[i]].calls;
            } else if (i == n) {
                snprintf(name, sizeof name, "host overhead (step wall - ops)");
                ms = pr->wall[k] - ops;
                calls = pr->steps[k];
            } else {
                snprintf(name, sizeof name, "sampling + scheduling + idle (host, after the step)");
                ms = pr->between[k];
                calls = pr->steps[k];
            }
            const double share = total > 0 ? 100.0 * ms / total : 0.0;
            sum_share += share;
            fprintf(f, "  %-52s %8ld %12.3f %10.4f %6.2f%%\n", name, calls, ms, ms / pr->steps[k], share);
            fprintf(j, "%s", i ? ", " : "");
            json_str(j, name);
            fprintf(j, ": {\"ms\": %.4f, \"calls\": %ld, \"share\": %.3f}", ms, calls, share);
        }
        fprintf(f, "  %-52s %8s %12.3f %10.4f %6.2f%%\n", "total", "", total, total / pr->steps[k], sum_share);
        fputs("}}", j);
    }
    fputc('}', j);
    fclose(j);
    fprintf(f, "PROFILE_JSON %s\n", json);
    free(json);
}
