/* rope.c - the RoPE scaling method of a config turned into per-pair inverse frequencies and an
 * attention factor (REFERENCES-rope.md §0-§2, §4-§7, §9-§12).
 *
 * rope_init() reads the raw rope_scaling keys (config.c parses, this file decides what they
 * mean), checks the keys each method needs, and precomputes everything that does not depend on
 * the sequence: the static inv_freq (or LongRoPE's short and long sets, the CLEX table for every
 * integer t). rope_freqs() then gives the frequencies for one sequence of a given total length;
 * it is pure, so the engine calls it per sequence per step from any thread.
 *
 * Invariants:
 *  - Every frequency is computed in fp32 with Hugging Face's (or the method's reference code's)
 *    operation order: `powf((float)base, (float)(2i) / (float)d)`, then `1.0f / x`, each torch
 *    op one rounded fp32 op. The file is compiled with -ffp-contract=off so no FMA fuses two of
 *    them (§10.5). Only the scalars the references compute in Python (correction range, mscale,
 *    NTK bases) are doubles, and they are rounded to float where torch would round them.
 *  - Length-dependent methods (dynamic NTK, dynamic-yarn, LongRoPE, CLEX, GeNE past factor·Lmax)
 *    use each sequence's own length (§10.8), never a batch-wide maximum, and keep no state
 *    between calls: the references' module caches that leak from one request to the next
 *    (§10.10) are not reproduced.
 *  - CLEX is the one method whose keys must be stored un-rotated (k_storage = BK_K_PRE_ROPE):
 *    its reference re-rotates every cached key with the current t (§6.4).
 *
 * Rejected alternatives: computing angles or frequencies in fp64 (not what the checkpoints were
 * trained or evaluated with); llama.cpp's `theta *= theta_scale` recurrence (not HF-exact);
 * recomputing the CLEX ODE per request (it does not depend on the input: once at load is
 * enough, §6.3); picking LongRoPE's set per position like TGI (HF switches per forward). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "model.h"
#include "model_internal.h"

#define ROPE_PI 3.141592653589793 /* math.pi */

static const char *const supported_types =
    "default, linear, dynamic, ntk, vanilla_ntk, yarn, dynamic-yarn, llama3, longrope, su, "
    "clex, gene";

/* Method state that does not fit the public struct; owned by struct rope (priv). */
struct rope_priv {
    float attn_long;     /* longrope: attention factor while the long set is in use */
    int dyn_yarn_finetuned;
    double llama3_low, llama3_high; /* llama3: low_freq_factor, high_freq_factor */
    int gene_random;     /* gene: r grows past factor when gene_random_scale is set */
    int gene_beta;       /* gene: first pair with fewer than num_rotations turns over Lmax */
    double gene_r;       /* gene: static r (= factor, computed as the reference does) */
    int clex_max_factor; /* clex: rows in clex_freqs */
    int clex_param_factor;
    int clex_tanh;
    double clex_time_dt;
    float *clex_freqs;   /* clex: (max_factor, d/2); row t-1 = exp(y(t)); row 0 unused: t=1
                            uses the plain inv_freq, as the reference does */
};

/* ---------------------------------------------------------------------------------------------
 * Shared pieces, each with the reference's operation order */

/* HF `base ** (torch.arange(0, dim, 2).float() / dim)` for pair i: fp32 base, fp32 exponent. */
static float pos_freq(double base, int i, int d)
{
    return powf((float)base, (float)(2 * i) / (float)d);
}

/* _compute_default_rope_parameters: inv_freq = 1.0 / pos_freq. */
static void default_inv_freq(float *out, double base, int d)
{
    for (int i = 0; i < d / 2; i++) out[i] = 1.0f / pos_freq(base, i, d);
}

static int len_times(int len, double f)
{
    double v = floor((double)len * f);
    if (!(v < (double)INT_MAX)) return INT_MAX;
    return v < 1 ? 1 : (int)v;
}

/* find_correction_dim: the (fractional) pair index whose wavelength fits n_rot times into L0. */
static double yarn_correction_dim(double n_rot, int d, double base, int L0)
{
    return ((double)d * log((double)L0 / (n_rot * 2 * ROPE_PI))) / (2 * log(base));
}

/* find_correction_range: floor/ceil when truncate, clamped to [0, d-1] (d, not d/2: as HF). */
static void yarn_correction_range(double beta_fast, double beta_slow, int d, double base, int L0,
                                  int truncate, double *low, double *high)
{
    double lo = yarn_correction_dim(beta_fast, d, base, L0);
    double hi = yarn_correction_dim(beta_slow, d, base, L0);
    if (truncate) {
        lo = floor(lo);
        hi = ceil(hi);
    }
    *low = lo > 0 ? lo : 0;
    *high = hi < d - 1 ? hi : d - 1;
}

/* get_mscale(s, m) = 1 if s <= 1 else 0.1*m*ln(s) + 1. */
static double yarn_get_mscale(double s, double m)
{
    if (s <= 1) return 1.0;
    return 0.1 * m * log(s) + 1.0;
}

/* YaRN frequencies for scale s with the correction range [low, high] (pair indices).
 * standard (HF _compute_yarn_parameters, jquesnelle yarn()): arithmetic blend in frequency,
 *   inv = inv_int*(1-e) + inv_ext*e with e = 1 - ramp;
 * revised (PoSE, jquesnelle issue #24): inv = inv_ext / ((1-e)*s + e), a harmonic blend. */
static void yarn_inv_freq(float *out, int d, double base, double s, double low, double high,
                          int revised)
{
    double hi = high;
    if (low == hi) hi += 0.001; /* linear_ramp_factor: prevent singularity */
    const float flo = (float)low, den = (float)(hi - low), fs = (float)s;
    for (int i = 0; i < d / 2; i++) {
        float ramp = ((float)i - flo) / den;
        ramp = ramp < 0.0f ? 0.0f : ramp > 1.0f ? 1.0f : ramp;
        const float e = 1.0f - ramp; /* inv_freq_extrapolation_factor */
        const float pf = pos_freq(base, i, d);
        if (revised) {
            const float inv = 1.0f / pf;
            out[i] = inv / ((1.0f - e) * fs + e);
        } else {
            const float ext = 1.0f / pf;
            const float inter = 1.0f / (fs * pf);
            out[i] = inter * (1.0f - e) + ext * e;
        }
    }
}

/* HF dynamic NTK for a sequence of length L > Lmax. In transformers >= 4.45 seq_len reaches
 * _compute_dynamic_ntk_parameters as a 0-dim int64 tensor (max(position_ids) + 1), which makes
 * the whole base expression fp32: base * ((factor*L/Lmax) - (factor-1)) ** (d/(d-2)). */
static float dynamic_base(double base, double factor, int L, int Lmax, int d)
{
    float x = (float)factor * (float)L;
    x = x / (float)Lmax;
    x = x - (float)(factor - 1);
    return (float)base * powf(x, (float)((double)d / (d - 2)));
}

static void dynamic_inv_freq(float *out, float base, int d)
{
    for (int i = 0; i < d / 2; i++) out[i] = 1.0f / powf(base, (float)(2 * i) / (float)d);
}

/* GeNE (gene_rope.py InverseAngularVelocity): inv = 1 / (r ** w_i * base ** (2i/d)),
 * w_i = clip((i - 0) / (beta - 0), 0, 1), r a float32 tensor. */
static void gene_inv_freq(float *out, int d, double base, double r, int beta)
{
    const float fr = (float)r;
    for (int i = 0; i < d / 2; i++) {
        float w = ((float)i - 0.0f) / (float)beta;
        w = w < 0.0f ? 0.0f : w > 1.0f ? 1.0f : w;
        out[i] = 1.0f / (powf(fr, w) * pos_freq(base, i, d));
    }
}

/* ---------------------------------------------------------------------------------------------
 * CLEX: the neural ODE of clex_layer.py integrated as torchdiffeq 0.2.3 does (§6.2, §6.3) */

struct clex_ode {
    int d, h, hidden;    /* rotary dim, d/2, param_factor*d */
    const float *w_up;   /* (h, hidden) */
    const float *w_down; /* (hidden, h) */
    int act_tanh;
    float *x, *te, *hid; /* scratch: (h), (h), (hidden) */
};

/* f(t, y) = act((y + log θ^NTK(t)) · W_up) · W_down + d/dt log θ^NTK(t) in fp32, with
 * get_time_embedding's operation order and its hard-coded base 10000. */
static void clex_rhs(struct clex_ode *o, float t, const float *y, float *out)
{
    const int d = o->d, h = o->h, H = o->hidden;
    const float alpha = t < 1.0f ? 1.0f : 2.0f * t - 1.0f;
    const float ntk_base = 10000.0f * powf(alpha, (float)((double)d / (d - 2)));
    for (int i = 0; i < h; i++) {
        const float k = (float)(2 * i); /* torch.arange(0, dim, 2) */
        const float ntk_inv = 1.0f / powf(ntk_base, k / (float)d);
        const float num = (-2.0f * k) / (float)(d - 2) * 1.0f;
        const float delta = num / (powf(10000.0f, k / (float)d) *
                                   powf(alpha, k / (float)(d - 2) + 1.0f));
        o->x[i] = y[i] + logf(ntk_inv);
        o->te[i] = delta / ntk_inv;
    }
    for (int j = 0; j < H; j++) o->hid[j] = 0.0f;
    for (int i = 0; i < h; i++) {
        const float xi = o->x[i];
        const float *row = o->w_up + (size_t)i * H;
        for (int j = 0; j < H; j++) o->hid[j] += xi * row[j];
    }
    for (int j = 0; j < H; j++) {
        const float v = o->hid[j];
        o->hid[j] = o->act_tanh ? tanhf(v) : v / (1.0f + expf(-v)); /* nn.Tanh / nn.SiLU */
    }
    for (int i = 0; i < h; i++) out[i] = 0.0f;
    for (int j = 0; j < H; j++) {
        const float hj = o->hid[j];
        const float *row = o->w_down + (size_t)j * h;
        for (int i = 0; i < h; i++) out[i] += hj * row[i];
    }
    for (int i = 0; i < h; i++) out[i] = out[i] + o->te[i];
}

int rope_clex_integrate(int d, int hidden, const float *w_up, const float *w_down,
                        const float *inv_freq, int max_t, float time_dt, int act_tanh,
                        float *out, char *err)
{
    if (d < 4 || d % 2) return set_err(err, -1, "clex: rotary dim %d must be even and >= 4", d);
    if (hidden < 1) return set_err(err, -1, "clex: ODE hidden size %d must be positive", hidden);
    if (max_t < 1) return set_err(err, -1, "clex: max_factor %d must be >= 1", max_t);
    if (!(time_dt > 0.0f) || !isfinite(time_dt))
        return set_err(err, -1, "clex: time_dt %g must be positive", (double)time_dt);

    const int h = d / 2;
    struct clex_ode o = {d, h, hidden, w_up, w_down, act_tanh, NULL, NULL, NULL};
    float *buf = xmalloc(sizeof(float) * ((size_t)h * 9 + (size_t)hidden));
    float *y0 = buf, *y1 = y0 + h, *k1 = y1 + h, *k2 = k1 + h, *k3 = k2 + h, *k4 = k3 + h;
    float *ytmp = k4 + h;
    o.x = ytmp + h;
    o.te = o.x + h;
    o.hid = o.te + h;

    /* y(1) = log(inv_freq); solution[0] = y0 */
    for (int i = 0; i < h; i++) y0[i] = logf(inv_freq[i]);
    for (int i = 0; i < h; i++) out[i] = expf(y0[i]);
    if (max_t == 1) {
        free(buf);
        return 0;
    }

    /* _grid_constructor_from_step_size, fp32: niters = ceil((t_end - t_start)/step + 1),
     * t_k = k*step + t_start, the last point replaced by t_end. */
    const float t_start = 1.0f, t_end = (float)max_t;
    const float q = (t_end - t_start) / time_dt;
    const double niters_f = ceil((double)(q + 1.0f));
    if (niters_f > 1e8) {
        free(buf);
        return set_err(err, -1, "clex: time_dt %g gives too many steps", (double)time_dt);
    }
    const long niters = (long)niters_f;
    const float third = (float)(1.0 / 3.0), two_thirds = (float)(2.0 / 3.0);

    int j = 1; /* next output row: time t[j] = j + 1 */
    for (long s = 0; s + 1 < niters && j < max_t; s++) {
        const float t0 = (float)s * time_dt + t_start;
        const float t1 = s + 2 == niters ? t_end : (float)(s + 1) * time_dt + t_start;
        const float dt = t1 - t0;

        /* rk4_alt_step_func: the 3/8 rule, each tensor op one fp32 rounding */
        clex_rhs(&o, t0, y0, k1);
        for (int i = 0; i < h; i++) ytmp[i] = y0[i] + dt * k1[i] * third;
        clex_rhs(&o, t0 + dt * third, ytmp, k2);
        for (int i = 0; i < h; i++) ytmp[i] = y0[i] + dt * (k2[i] - k1[i] * third);
        clex_rhs(&o, t0 + dt * two_thirds, ytmp, k3);
        for (int i = 0; i < h; i++) ytmp[i] = y0[i] + dt * (k1[i] - k2[i] + k3[i]);
        clex_rhs(&o, t1, ytmp, k4);
        for (int i = 0; i < h; i++) {
            const float dy = (k1[i] + 3.0f * (k2[i] + k3[i]) + k4[i]) * dt * 0.125f;
            y1[i] = y0[i] + dy;
        }

        /* FixedGridODESolver.integrate: every requested time in (t0, t1] gets _linear_interp */
        while (j < max_t && t1 >= (float)(j + 1)) {
            const float t = (float)(j + 1);
            float *row = out + (size_t)j * h;
            if (t == t0) {
                for (int i = 0; i < h; i++) row[i] = expf(y0[i]);
            } else if (t == t1) {
                for (int i = 0; i < h; i++) row[i] = expf(y1[i]);
            } else {
                const float slope = (t - t0) / (t1 - t0);
                for (int i = 0; i < h; i++) row[i] = expf(y0[i] + slope * (y1[i] - y0[i]));
            }
            j++;
        }
        float *tmp = y0;
        y0 = y1;
        y1 = tmp;
    }
    free(buf);
    if (j < max_t) return set_err(err, -1, "clex: ODE grid ended before t=%d", j + 1);
    return 0;
}

static const char *const clex_up_name = "model.clex_layer.proj_func.ode_up_proj";
static const char *const clex_down_name = "model.clex_layer.proj_func.ode_down_proj";

/* The tensor `name` of exactly (rows, cols), widened to a new fp32 array. */
static int clex_read_weight(const safetensors_t *st, const char *dir, const char *name,
                            int64_t rows, int64_t cols, float **out, char *err)
{
    if (!st_find(st, name))
        return set_err(err, -1, "%s: rope_scaling type 'clex' needs tensor '%s' (the CLEX ODE "
                       "weights), not found", dir, name);
    const int64_t shape[2] = {rows, cols};
    const struct st_tensor *t;
    if (st_get(st, name, 2, shape, &t, err) < 0) return -1;
    const size_t n = (size_t)(rows * cols);
    float *w = xmalloc(sizeof(float) * n);
    const unsigned char *src = t->data;
    for (size_t i = 0; i < n; i++) {
        if (t->dtype == BK_F32) {
            memcpy(&w[i], src + 4 * i, 4);
        } else {
            uint16_t v;
            memcpy(&v, src + 2 * i, 2);
            w[i] = t->dtype == BK_F16 ? f16_to_f32(v) : bf16_to_f32(v);
        }
    }
    *out = w;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * rope_init */

static int need(char *err, int have, const char *key, const char *type)
{
    if (have) return 0;
    return set_err(err, -1, "rope_scaling: '%s' is required for type '%s'", key, type);
}

int rope_init(struct rope *r, const struct model_config *c, const char *dir, char *err)
{
    const struct rope_scaling *rs = &c->rope;
    struct rope_priv *p = NULL;
    safetensors_t *st = NULL;
    float *w_up = NULL, *w_down = NULL;
    const char *type = rs->type[0] ? rs->type : "default";

    memset(r, 0, sizeof *r);

    /* --- shape and the keys every method shares --- */
    if (c->head_dim <= 0) {
        set_err(err, -1, "head_dim %d must be positive", c->head_dim);
        goto fail;
    }
    if (!(c->partial_rotary_factor > 0 && c->partial_rotary_factor <= 1)) {
        set_err(err, -1, "partial_rotary_factor %g must be in (0, 1]", c->partial_rotary_factor);
        goto fail;
    }
    if (!(c->rope_theta > 0) || !isfinite(c->rope_theta)) {
        set_err(err, -1, "rope_theta %g must be positive", c->rope_theta);
        goto fail;
    }
    if (c->max_pos <= 0) {
        set_err(err, -1, "max_position_embeddings %d must be positive", c->max_pos);
        goto fail;
    }
    const int d = (int)(c->head_dim * c->partial_rotary_factor); /* int(head_dim * prf) */
    if (d < 2 || d % 2 || d > 2 * ROPE_MAX_PAIRS) {
        set_err(err, -1, "rotary dim %d (head_dim %d x partial_rotary_factor %g) must be even "
                "and in [2, %d]", d, c->head_dim, c->partial_rotary_factor, 2 * ROPE_MAX_PAIRS);
        goto fail;
    }
    const int h = d / 2;
    if (rs->has_factor && !(rs->factor > 0 && isfinite(rs->factor))) {
        set_err(err, -1, "rope_scaling: 'factor' %g must be positive", rs->factor);
        goto fail;
    }
    /* the NTK-style exponent d/(d-2) (dynamic, ntk, CLEX's time embedding) needs d > 2 */
    if (d == 2 && (!strcmp(type, "dynamic") || !strcmp(type, "ntk") ||
                   !strcmp(type, "vanilla_ntk") || !strcmp(type, "clex"))) {
        set_err(err, -1, "rope_scaling type '%s' needs a rotary dim > 2", type);
        goto fail;
    }
    const int revised = !strcmp(rs->yarn_variant, "revised");
    if (rs->yarn_variant[0] && !revised && strcmp(rs->yarn_variant, "standard")) {
        set_err(err, -1, "rope_scaling.yarn_variant '%s' is not supported (supported: "
                "standard, revised)", rs->yarn_variant);
        goto fail;
    }

    r->cfg = c;
    r->rotary_dim = d;
    r->base = c->rope_theta;
    r->factor = 1.0;
    r->max_pos = c->max_pos;
    /* L0 (§2.5 engine rule): rope_scaling's, else the top-level (Phi-3 style), else max_pos. */
    const int orig_given = rs->original_max_pos > 0 || c->original_max_pos > 0;
    r->original_max_pos = rs->original_max_pos > 0 ? rs->original_max_pos
                        : c->original_max_pos > 0  ? c->original_max_pos
                                                   : c->max_pos;
    const int L0 = r->original_max_pos;
    r->attn_factor = 1.0f;
    r->ramp_low = r->ramp_high = -1;
    r->k_storage = BK_K_POST_ROPE;
    r->max_model_len = c->max_pos;
    default_inv_freq(r->inv_freq, r->base, d);

    p = xcalloc(1, sizeof *p);
    r->priv = p;

    if (!strcmp(type, "default")) {
        r->type = ROPE_TYPE_DEFAULT;
        snprintf(r->name, sizeof r->name, "default");

    } else if (!strcmp(type, "linear")) {
        /* PI: inv_freq /= factor (HF >= 4.45). Supports L0 x factor when the original length
         * is stated, else max_position_embeddings (PI configs store the extended length). */
        if (need(err, rs->has_factor, "factor", type)) goto fail;
        r->type = ROPE_TYPE_LINEAR;
        snprintf(r->name, sizeof r->name, "linear");
        r->factor = rs->factor;
        for (int i = 0; i < h; i++) r->inv_freq[i] = r->inv_freq[i] / (float)r->factor;
        if (orig_given) r->max_model_len = len_times(L0, r->factor);

    } else if (!strcmp(type, "dynamic")) {
        /* HF dynamic NTK (§2.3): threshold max_position_embeddings, base recomputed from each
         * sequence's own length. Supports max_pos x factor (vLLM's fixed-base length). */
        if (need(err, rs->has_factor, "factor", type)) goto fail;
        r->type = ROPE_TYPE_DYNAMIC;
        snprintf(r->name, sizeof r->name, "dynamic");
        r->factor = rs->factor;
        r->length_dependent = 1;
        r->max_model_len = len_times(c->max_pos, r->factor);

    } else if (!strcmp(type, "ntk") || !strcmp(type, "vanilla_ntk")) {
        /* Static NTK-aware (§2.4): base * factor ** (d/(d-2)) in Python doubles. Supports
         * L0 x factor when the original length is stated, else max_pos (PoSE stores the
         * scaled length). */
        if (need(err, rs->has_factor, "factor", type)) goto fail;
        r->type = ROPE_TYPE_NTK;
        snprintf(r->name, sizeof r->name, "ntk");
        r->factor = rs->factor;
        const double b = r->base * pow(r->factor, (double)d / (d - 2));
        default_inv_freq(r->inv_freq, b, d);
        if (orig_given) r->max_model_len = len_times(L0, r->factor);

    } else if (!strcmp(type, "yarn")) {
        /* Static YaRN (§2.5; `finetuned` ignored, §4.3). s = factor, else max_pos / L0. */
        double s;
        if (rs->has_factor) {
            s = rs->factor;
        } else if (L0 < c->max_pos) {
            s = (double)c->max_pos / L0;
        } else {
            need(err, 0, "factor", type);
            goto fail;
        }
        r->type = ROPE_TYPE_YARN;
        snprintf(r->name, sizeof r->name, "yarn");
        r->factor = s;
        r->yarn_revised = revised;
        /* `rope_scaling.get("beta_fast") or 32`: absent or 0 -> default */
        r->beta_fast = rs->has_beta_fast && rs->beta_fast != 0 ? rs->beta_fast : 32;
        r->beta_slow = rs->has_beta_slow && rs->beta_slow != 0 ? rs->beta_slow : 1;
        yarn_correction_range(r->beta_fast, r->beta_slow, d, r->base, L0, rs->truncate,
                              &r->ramp_low, &r->ramp_high);
        yarn_inv_freq(r->inv_freq, d, r->base, s, r->ramp_low, r->ramp_high, revised);
        double af;
        if (rs->has_attention_factor) {
            af = rs->attention_factor;
        } else if (rs->has_mscale && rs->mscale != 0 && rs->has_mscale_all_dim &&
                   rs->mscale_all_dim != 0) { /* `if mscale and mscale_all_dim` */
            af = yarn_get_mscale(s, rs->mscale) / yarn_get_mscale(s, rs->mscale_all_dim);
        } else {
            af = yarn_get_mscale(s, 1);
        }
        r->attn_factor = (float)af;
        if (orig_given) r->max_model_len = len_times(L0, s);

    } else if (!strcmp(type, "dynamic-yarn")) {
        /* jquesnelle LlamaDynamicYaRNScaledRotaryEmbedding (§4.2), per sequence of length L:
         *   L <= max_pos: finetuned -> yarn(max_pos / L0) with its mscale; else plain RoPE with
         *                 attention factor 1;
         *   L >  max_pos: yarn(L / L0), mscale = get_mscale(L / L0).
         * The class never reads `factor` (it is required by the repo's config validation and
         * used here only for max_model_len = max(max_pos, L0 x factor)); beta is 32/1 unless
         * the config gives beta_fast/beta_slow; the range is always floor/ceil (the repo has
         * no truncate option). With finetune.py's max_pos = factor x L0 this is
         * s = max(s_init, L/L0). */
        if (need(err, rs->has_factor, "factor", type) ||
            need(err, orig_given, "original_max_position_embeddings", type))
            goto fail;
        r->type = ROPE_TYPE_DYNAMIC_YARN;
        snprintf(r->name, sizeof r->name, "dynamic-yarn");
        r->factor = rs->factor;
        r->length_dependent = 1;
        r->beta_fast = rs->has_beta_fast && rs->beta_fast != 0 ? rs->beta_fast : 32;
        r->beta_slow = rs->has_beta_slow && rs->beta_slow != 0 ? rs->beta_slow : 1;
        yarn_correction_range(r->beta_fast, r->beta_slow, d, r->base, L0, 1, &r->ramp_low,
                              &r->ramp_high);
        p->dyn_yarn_finetuned = rs->finetuned != 0;
        if (p->dyn_yarn_finetuned) {
            const double s0 = (double)c->max_pos / L0;
            yarn_inv_freq(r->inv_freq, d, r->base, s0, r->ramp_low, r->ramp_high, 0);
            r->attn_factor = (float)yarn_get_mscale(s0, 1);
        }
        const int ext = len_times(L0, r->factor);
        r->max_model_len = ext > c->max_pos ? ext : c->max_pos;

    } else if (!strcmp(type, "llama3")) {
        /* §2.7; supports max_position_embeddings (the configs state the extended length). */
        if (need(err, rs->has_factor, "factor", type) ||
            need(err, rs->has_low_freq_factor, "low_freq_factor", type) ||
            need(err, rs->has_high_freq_factor, "high_freq_factor", type) ||
            need(err, orig_given, "original_max_position_embeddings", type))
            goto fail;
        if (!(rs->low_freq_factor > 0) || !(rs->high_freq_factor > rs->low_freq_factor)) {
            set_err(err, -1, "rope_scaling: llama3 needs 0 < low_freq_factor (%g) < "
                    "high_freq_factor (%g)", rs->low_freq_factor, rs->high_freq_factor);
            goto fail;
        }
        r->type = ROPE_TYPE_LLAMA3;
        snprintf(r->name, sizeof r->name, "llama3");
        r->factor = rs->factor;
        const double lf = rs->low_freq_factor, hf = rs->high_freq_factor;
        p->llama3_low = lf;
        p->llama3_high = hf;
        const float low_wl = (float)(L0 / lf), high_wl = (float)(L0 / hf);
        const float ff = (float)r->factor;
        for (int i = 0; i < h; i++) {
            const float inv = r->inv_freq[i];
            const float wl = (float)(2 * ROPE_PI) / inv;
            const float il = wl > low_wl ? inv / ff : inv;
            const float sf = ((float)L0 / wl - (float)lf) / (float)(hf - lf);
            const float smooth = (1.0f - sf) * il / ff + sf * il;
            const int medium = !(wl < high_wl) && !(wl > low_wl);
            r->inv_freq[i] = medium ? smooth : il;
        }

    } else if (!strcmp(type, "longrope") || !strcmp(type, "su")) {
        /* §2.6: short set while seq_len <= L0, long set after (per sequence). factor =
         * max_pos / top-level original when the config has one (Phi-3), else the key, else
         * max_pos / L0. Attention factor: the key, else sqrt(1 + ln s / ln L0) (1 if s <= 1);
         * short_mscale / long_mscale (TGI) override it for their own set. Supports max_pos. */
        if (need(err, rs->n_short_factor > 0 && rs->short_factor, "short_factor", type) ||
            need(err, rs->n_long_factor > 0 && rs->long_factor, "long_factor", type))
            goto fail;
        if (rs->n_short_factor != h || rs->n_long_factor != h) {
            const int bad_short = rs->n_short_factor != h;
            set_err(err, -1, "rope_scaling: '%s' has %d entries, expected %d (rotary_dim/2)",
                    bad_short ? "short_factor" : "long_factor",
                    bad_short ? rs->n_short_factor : rs->n_long_factor, h);
            goto fail;
        }
        r->type = ROPE_TYPE_LONGROPE;
        snprintf(r->name, sizeof r->name, "longrope");
        r->length_dependent = 1;
        double s;
        if (c->original_max_pos > 0) s = (double)c->max_pos / c->original_max_pos;
        else if (rs->has_factor) s = rs->factor;
        else s = (double)c->max_pos / L0;
        r->factor = s;
        double af;
        if (rs->has_attention_factor) af = rs->attention_factor;
        else if (s <= 1.0) af = 1.0;
        else af = sqrt(1 + log(s) / log((double)L0));
        r->attn_factor = (float)(rs->has_short_mscale ? rs->short_mscale : af);
        p->attn_long = (float)(rs->has_long_mscale ? rs->long_mscale : af);
        for (int i = 0; i < h; i++) {
            const float pf = pos_freq(r->base, i, d);
            r->inv_freq[i] = 1.0f / (rs->short_factor[i] * pf);
            r->inv_freq_long[i] = 1.0f / (rs->long_factor[i] * pf);
        }

    } else if (!strcmp(type, "gene")) {
        /* §7: θ_i / r^(w_i), w_i = clip(i/β, 0, 1); at inference r = max(factor,
         * ceil(L/max_pos)) with gene_random_scale, r = factor without. Supports
         * max_pos x factor (r is static up to there). */
        if (need(err, rs->has_factor, "factor", type) ||
            need(err, rs->has_gene_random_scale, "gene_random_scale", type))
            goto fail;
        const int nrot = rs->num_rotations > 0 ? rs->num_rotations : 3;
        const int tsl = rs->training_seq_len > 0 ? rs->training_seq_len : 16384;
        /* GeneRotaryEmbedding: scale_const = tsl / max_pos, scale_factor = factor / scale_const
         * (asserted >= 1), r = scale_const * scale_factor. */
        const double sc = (double)tsl / c->max_pos, sfac = rs->factor / sc;
        if (!(sfac >= 1.0)) {
            set_err(err, -1, "rope_scaling: gene needs factor (%g) >= training_seq_len / "
                    "max_position_embeddings (%d / %d)", rs->factor, tsl, c->max_pos);
            goto fail;
        }
        /* _get_critical_dim: β = first pair with inv_freq * Lmax < num_rotations * 2π (fp32) */
        const float thr = (float)(nrot * 2 * ROPE_PI);
        int beta = -1;
        for (int i = 0; i < h; i++) {
            if (r->inv_freq[i] * (float)c->max_pos < thr) {
                beta = i;
                break;
            }
        }
        if (beta <= 0) {
            set_err(err, -1, "rope_scaling: gene: %s pair turns fewer than num_rotations=%d "
                    "times over max_position_embeddings=%d", beta < 0 ? "no" : "the first",
                    nrot, c->max_pos);
            goto fail;
        }
        r->type = ROPE_TYPE_GENE;
        snprintf(r->name, sizeof r->name, "gene");
        r->factor = rs->factor;
        p->gene_beta = beta;
        p->gene_r = sc * sfac;
        p->gene_random = rs->gene_random_scale != 0;
        r->length_dependent = p->gene_random;
        gene_inv_freq(r->inv_freq, d, r->base, p->gene_r, beta);
        r->max_model_len = len_times(c->max_pos, r->factor);

    } else if (!strcmp(type, "clex")) {
        /* §6: θ(t) from the ODE for t = 1..max_factor, solved once here; per sequence
         * t = clamp(ceil(L / max_pos), 1, max_factor); keys stored pre-RoPE. Supports
         * max_pos x max_factor. */
        if (need(err, rs->max_factor > 0, "max_factor", type) ||
            need(err, rs->param_factor > 0, "param_factor", type))
            goto fail;
        int act_tanh;
        if (!rs->act[0] || !strcmp(rs->act, "silu")) act_tanh = 0;
        else if (!strcmp(rs->act, "tanh")) act_tanh = 1;
        else {
            set_err(err, -1, "rope_scaling.act '%s' is not supported (supported: silu, tanh)",
                    rs->act);
            goto fail;
        }
        const double dt = rs->time_dt > 0 ? rs->time_dt : 0.01;
        if (!dir) {
            set_err(err, -1, "rope_scaling type 'clex' needs the model directory (ODE weights)");
            goto fail;
        }
        const int H = rs->param_factor * d;
        if (st_open_dir(&st, dir, err) < 0) goto fail;
        if (clex_read_weight(st, dir, clex_up_name, h, H, &w_up, err) < 0 ||
            clex_read_weight(st, dir, clex_down_name, H, h, &w_down, err) < 0)
            goto fail;
        st_close(st);
        st = NULL;
        p->clex_freqs = xmalloc(sizeof(float) * (size_t)rs->max_factor * h);
        if (rope_clex_integrate(d, H, w_up, w_down, r->inv_freq, rs->max_factor, (float)dt,
                                act_tanh, p->clex_freqs, err) < 0)
            goto fail;
        free(w_up);
        free(w_down);
        w_up = w_down = NULL;
        r->type = ROPE_TYPE_CLEX;
        snprintf(r->name, sizeof r->name, "clex");
        r->factor = rs->has_factor ? rs->factor : 1.0; /* `factor` (= 1) is unused by CLEX */
        p->clex_max_factor = rs->max_factor;
        p->clex_param_factor = rs->param_factor;
        p->clex_tanh = act_tanh;
        p->clex_time_dt = dt;
        r->length_dependent = 1;
        r->k_storage = BK_K_PRE_ROPE;
        r->max_model_len = len_times(c->max_pos, rs->max_factor);

    } else if (!strcmp(type, "gene-param")) {
        /* §7.2: per-(layer, head) learned frequency tables; our kernels take one frequency
         * vector per sequence, so this is refused rather than approximated. */
        set_err(err, -1, "rope_scaling.rope_type 'gene-param' is not supported: its per-layer, "
                "per-head learned tensors (model.layers.N.self_attn.rotary_emb."
                "inv_angular_velocity.base_coef/specific_coef) need per-head frequencies, which "
                "ropeserve does not implement (type 'gene' is supported)");
        goto fail;

    } else {
        set_err(err, -1, "rope_scaling.rope_type '%s' is not supported (supported: %s)", type,
                supported_types);
        goto fail;
    }

    if (revised && r->type != ROPE_TYPE_YARN)
        LOG_W("rope_scaling.yarn_variant 'revised' ignored for type '%s'", type);

    /* log_scale: CLEX's form (§6.5) or GeNE's (§7.4); other methods have none */
    if (c->log_scale) {
        if (r->type == ROPE_TYPE_CLEX) {
            r->log_scale = ROPE_LOG_SCALE_CLEX;
        } else if (r->type == ROPE_TYPE_GENE) {
            r->log_scale = ROPE_LOG_SCALE_GENE;
            r->training_seq_len = rs->training_seq_len > 0 ? rs->training_seq_len : 16384;
        } else {
            LOG_W("log_scale ignored for rope type '%s' (only clex and gene define it)", type);
        }
    }
    /* STRING (§8) */
    if (c->string_shift < 0 || c->string_local < 0 ||
        (c->string_shift > 0 && c->string_local >= c->string_shift)) {
        set_err(err, -1, "string_config: shifted_offset %d and local_value %d need 0 <= "
                "local_value < shifted_offset", c->string_shift, c->string_local);
        goto fail;
    }
    r->string_shift = c->string_shift;
    r->string_local = c->string_shift > 0 ? c->string_local : 0;
    return 0;

fail:
    free(w_up);
    free(w_down);
    st_close(st);
    rope_free(r);
    memset(r, 0, sizeof *r);
    return -1;
}

void rope_free(struct rope *r)
{
    if (!r || !r->priv) return;
    struct rope_priv *p = r->priv;
    free(p->clex_freqs);
    free(p);
    r->priv = NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Per sequence */

void rope_freqs(const struct rope *r, int seq_len, float *inv_freq, float *attn_factor)
{
    const struct rope_priv *p = r->priv;
    const int d = r->rotary_dim, h = d / 2;
    const float *src = r->inv_freq;
    float af = r->attn_factor;
    if (seq_len < 1) seq_len = 1;

    switch (r->type) {
    case ROPE_TYPE_DYNAMIC:
        if (seq_len > r->max_pos) {
            dynamic_inv_freq(inv_freq, dynamic_base(r->base, r->factor, seq_len, r->max_pos, d), d);
            *attn_factor = 1.0f;
            return;
        }
        break;
    case ROPE_TYPE_DYNAMIC_YARN:
        if (seq_len > r->max_pos) {
            const double s = (double)seq_len / r->original_max_pos;
            if (s > 1) {
                yarn_inv_freq(inv_freq, d, r->base, s, r->ramp_low, r->ramp_high, 0);
                *attn_factor = (float)yarn_get_mscale(s, 1);
                return;
            }
        }
        break;
    case ROPE_TYPE_LONGROPE:
        if (seq_len > r->original_max_pos) {
            src = r->inv_freq_long;
            af = p->attn_long;
        }
        break;
    case ROPE_TYPE_GENE:
        if (p->gene_random) {
            const int c = (int)(((long long)seq_len + r->max_pos - 1) / r->max_pos);
            if ((double)c > p->gene_r) {
                gene_inv_freq(inv_freq, d, r->base, (double)c, p->gene_beta);
                *attn_factor = af;
                return;
            }
        }
        break;
    case ROPE_TYPE_CLEX: {
        int t = (int)(((long long)seq_len + r->max_pos - 1) / r->max_pos);
        if (t > p->clex_max_factor) t = p->clex_max_factor;
        if (t > 1) src = p->clex_freqs + (size_t)(t - 1) * h; /* t == 1: plain inv_freq */
        break;
    }
    default:
        break;
    }
    memcpy(inv_freq, src, sizeof(float) * h);
    *attn_factor = af;
}

float rope_q_scale(const struct rope *r, int pos, int seq_len, int string)
{
    float v = 1.0f;
    switch (r->log_scale) {
    case ROPE_LOG_SCALE_CLEX: /* ln(kv_seq_len) / ln(max_position_embeddings), fp32, no clamp */
        v = logf((float)(seq_len < 1 ? 1 : seq_len)) / logf((float)r->max_pos);
        break;
    case ROPE_LOG_SCALE_GENE: /* max(1, ln(p + 1) / ln(training_seq_len)) in fp32 */
        v = logf((float)(pos + 1)) / (float)log((double)r->training_seq_len);
        if (v < 1.0f) v = 1.0f;
        break;
    default:
        break;
    }
    /* STRING: the reference's factor on the cos and sin of q and k, as the logits' square */
    return string ? v * (float)(ROPE_STRING_FACTOR * ROPE_STRING_FACTOR) : v;
}

int rope_init_factor(struct rope *dst, const struct rope *src, double factor, char *err)
{
    if (src->type != ROPE_TYPE_YARN)
        return set_err(err, -1, "a per-request RoPE factor needs rope type yarn (this model: %s)",
                       src->name);
    if (!(factor > 0) || !isfinite(factor))
        return set_err(err, -1, "RoPE factor %g must be positive", factor);
    struct model_config c = *src->cfg; /* shallow: rope_init only reads it */
    c.rope.factor = factor;
    c.rope.has_factor = 1;
    if (rope_init(dst, &c, NULL, err) < 0) return -1;
    dst->cfg = src->cfg;
    return 0;
}

void rope_describe(const struct rope *r, char *buf, size_t len)
{
    const struct rope_priv *p = r->priv;
    char m[256] = "";
    switch (r->type) {
    case ROPE_TYPE_DEFAULT:
        break;
    case ROPE_TYPE_LINEAR:
    case ROPE_TYPE_NTK:
        snprintf(m, sizeof m, " factor=%g", r->factor);
        break;
    case ROPE_TYPE_DYNAMIC:
        snprintf(m, sizeof m, " factor=%g, base grows per sequence past %d", r->factor, r->max_pos);
        break;
    case ROPE_TYPE_YARN:
    case ROPE_TYPE_DYNAMIC_YARN:
        snprintf(m, sizeof m, "%s factor=%g original=%d beta=%g/%g ramp=[%g,%g]%s",
                 r->yarn_revised ? " (revised, PoSE)" : "", r->factor, r->original_max_pos,
                 r->beta_fast, r->beta_slow, r->ramp_low, r->ramp_high,
                 r->type == ROPE_TYPE_DYNAMIC_YARN
                     ? (p->dyn_yarn_finetuned ? ", finetuned, s = L/original past max_pos"
                                              : ", plain up to max_pos, s = L/original past it")
                     : "");
        break;
    case ROPE_TYPE_LLAMA3:
        snprintf(m, sizeof m, " factor=%g low_freq_factor=%g high_freq_factor=%g original=%d",
                 r->factor, p->llama3_low, p->llama3_high,
                 r->original_max_pos);
        break;
    case ROPE_TYPE_LONGROPE:
        snprintf(m, sizeof m, " factor=%g short set up to %d, long set past it (attn_factor %.6g)",
                 r->factor, r->original_max_pos, (double)p->attn_long);
        break;
    case ROPE_TYPE_GENE:
        snprintf(m, sizeof m, " factor=%g beta=%d r=%s", r->factor, p->gene_beta,
                 p->gene_random ? "max(factor, ceil(L/max_pos))" : "factor");
        break;
    case ROPE_TYPE_CLEX:
        snprintf(m, sizeof m, " max_factor=%d param_factor=%d act=%s time_dt=%g "
                 "t=clamp(ceil(L/%d),1,%d)", p->clex_max_factor, p->clex_param_factor,
                 p->clex_tanh ? "tanh" : "silu", p->clex_time_dt, r->max_pos,
                 p->clex_max_factor);
        break;
    }
    char x[128] = "";
    if (r->log_scale == ROPE_LOG_SCALE_CLEX)
        snprintf(x, sizeof x, " log_scale=ln(L)/ln(%d)", r->max_pos);
    else if (r->log_scale == ROPE_LOG_SCALE_GENE)
        snprintf(x, sizeof x, " log_scale=max(1,ln(p+1)/ln(%d))", r->training_seq_len);
    if (r->string_shift > 0)
        snprintf(x + strlen(x), sizeof x - strlen(x), " string(shift=%d local=%d factor=%.7f)",
                 r->string_shift, r->string_local, ROPE_STRING_FACTOR);
    snprintf(buf, len, "rope %s:%s rotary_dim=%d theta=%g attn_factor=%.6g max_model_len=%d "
             "keys=%s%s%s", r->name, m, r->rotary_dim, r->base, (double)r->attn_factor,
             r->max_model_len, r->k_storage == BK_K_PRE_ROPE ? "pre-rope" : "post-rope",
             r->length_dependent ? " length-dependent" : "", x);
}
