/* config.c - config.json -> struct model_config, and rope_scaling objects -> struct rope_scaling.
 *
 * One pass over the parsed JSON fills the plain struct of model.h; cJSON never leaves this file.
 * Every value is type-checked where it is read, and every message has the same shape:
 *
 *     "<dir>/config.json: field 'num_attention_heads': expected a positive integer, got "x""
 *
 * so the user sees the file, the key and the offending value. rope_scaling (and the v5
 * `rope_parameters`) is parsed by one function shared with model_config_set_rope_json(); it
 * stores the raw keys only (has_* flags, the defaults of REFERENCES-rope.md §9) and checks types,
 * never the method's own requirements: rope.c owns those, so that a config and a
 * --rope-scaling-json override are judged by the same code.
 *
 * The architecture (llama, mistral, qwen2: model_type, else architectures) decides which
 * biases the projections have and which layers attend to a sliding window, with the defaults
 * transformers' config classes use. Everything else that would change the function and is not
 * implemented is refused by name: other model_types, quantization_config, mixture-of-experts,
 * soft-capping, q/k norms, chunked or interleaved attention (refused_fields), a hidden_act other
 * than silu, biases or windows an architecture does not have, unknown rope types (rope.c).
 *
 * Invariants: after a failed call nothing stays allocated and the output struct is zeroed
 * (model_config_load) or unchanged (model_config_set_rope_json). Other unknown keys are ignored,
 * as transformers does.
 *
 * Rejected: a generic "schema table" walker. The fields have too many small rules (null means
 * default, eos may be a list, rope_type falls back to type) for a table to stay readable. */
#include "model.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../common/common.h"

#define CONFIG_MAX_BYTES (64u << 20) /* a config.json is kilobytes; this only stops accidents */

/* Where a value came from, for messages: "<src>: field '<prefix><key>': ...". */
struct jctx {
    const char *src;    /* "DIR/config.json" or "rope_scaling JSON" */
    const char *prefix; /* "" or "rope_scaling." */
    char *err;
};

// ---------------------------------------------------------------------------------------------
// Typed access to JSON values

/* The value of key in obj, or NULL when absent or JSON null (null always means "default"). */
static const cJSON *item(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

/* A short rendering of v for messages: "\"x\"", "[1, 2]", "3.5"; cut at 48 characters. */
static void json_brief(const cJSON *v, char *buf, size_t n)
{
    char *s = cJSON_PrintUnformatted(v);
    if (!s) {
        snprintf(buf, n, "(unprintable)");
        return;
    }
    if (strlen(s) > 48) snprintf(buf, n, "%.45s...", s);
    else snprintf(buf, n, "%s", s);
    cJSON_free(s);
}

static int field_err(const struct jctx *x, const char *key, const char *expected, const cJSON *v)
{
    char got[64];
    json_brief(v, got, sizeof got);
    return set_err(x->err, -1, "%s: field '%s%s': expected %s, got %s", x->src, x->prefix, key,
                   expected, got);
}

static int is_integral(const cJSON *v)
{
    return cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble == floor(v->valuedouble);
}

/* An integer >= min (and <= INT_MAX). */
static int as_int(const struct jctx *x, const char *key, const cJSON *v, int min, int *out)
{
    if (!is_integral(v) || v->valuedouble < min || v->valuedouble > INT_MAX) {
        const char *what = min == 1 ? "a positive integer"
                         : min == 0 ? "a non-negative integer" : "an integer";
        return field_err(x, key, what, v);
    }
    *out = (int)v->valuedouble;
    return 0;
}

/* A finite number; positive != 0 also requires > 0. */
static int as_num(const struct jctx *x, const char *key, const cJSON *v, int positive, double *out)
{
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || (positive && v->valuedouble <= 0))
        return field_err(x, key, positive ? "a positive number" : "a number", v);
    *out = v->valuedouble;
    return 0;
}

/* true/false, or the numbers 0/1 that some hand-written configs use. */
static int as_bool(const struct jctx *x, const char *key, const cJSON *v, int *out)
{
    if (cJSON_IsBool(v)) {
        *out = cJSON_IsTrue(v);
        return 0;
    }
    if (is_integral(v) && (v->valuedouble == 0 || v->valuedouble == 1)) {
        *out = (int)v->valuedouble;
        return 0;
    }
    return field_err(x, key, "true or false", v);
}

/* A string that fits buf (n bytes including the terminator). */
static int as_str(const struct jctx *x, const char *key, const cJSON *v, char *buf, size_t n)
{
    if (!cJSON_IsString(v)) return field_err(x, key, "a string", v);
    if (strlen(v->valuestring) >= n) {
        char what[64];
        snprintf(what, sizeof what, "a string of at most %zu characters", n - 1);
        return field_err(x, key, what, v);
    }
    snprintf(buf, n, "%s", v->valuestring);
    return 0;
}

/* An array of numbers -> a malloc'd float array (NULL for an empty array). */
static int as_float_array(const struct jctx *x, const char *key, const cJSON *v, float **out,
                          int *n_out)
{
    if (!cJSON_IsArray(v)) return field_err(x, key, "an array of numbers", v);
    int n = cJSON_GetArraySize(v);
    float *a = n ? xmalloc((size_t)n * sizeof *a) : NULL;
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        if (!cJSON_IsNumber(e) || !isfinite(e->valuedouble)) {
            free(a);
            char what[64];
            snprintf(what, sizeof what, "an array of numbers (element %d is not)", i);
            return field_err(x, key, what, v);
        }
        a[i++] = (float)e->valuedouble;
    }
    *out = a;
    *n_out = n;
    return 0;
}

/* Optional number: sets *has when present. */
static int opt_num(const struct jctx *x, const cJSON *obj, const char *key, int positive,
                   double *out, int *has)
{
    const cJSON *v = item(obj, key);
    if (!v) return 0;
    if (as_num(x, key, v, positive, out)) return -1;
    if (has) *has = 1;
    return 0;
}

static int opt_int(const struct jctx *x, const cJSON *obj, const char *key, int min, int *out)
{
    const cJSON *v = item(obj, key);
    return v ? as_int(x, key, v, min, out) : 0;
}

static int opt_bool(const struct jctx *x, const cJSON *obj, const char *key, int *out)
{
    const cJSON *v = item(obj, key);
    return v ? as_bool(x, key, v, out) : 0;
}

/* A token id: an integer, or a list whose first element is taken; null/absent -> -1.
 * Negative ids mean "none", as some configs write -1. */
static int token_id(const struct jctx *x, const cJSON *obj, const char *key, int *out)
{
    *out = -1;
    const cJSON *v = item(obj, key);
    if (!v) return 0;
    if (cJSON_IsArray(v)) {
        const cJSON *first = cJSON_GetArrayItem(v, 0);
        if (!first) return 0;
        if (!is_integral(first) || first->valuedouble > INT_MAX)
            return field_err(x, key, "an integer or a list of integers", v);
        v = first;
    }
    if (!is_integral(v) || v->valuedouble > INT_MAX || v->valuedouble < INT_MIN)
        return field_err(x, key, "an integer, a list of integers or null", v);
    *out = v->valuedouble < 0 ? -1 : (int)v->valuedouble;
    return 0;
}

/* eos_token_id: an integer or a list of them (every one ends generation); null/absent -> none.
 * Negative ids ("none") are skipped. */
static int token_ids(const struct jctx *x, const cJSON *obj, const char *key, int *ids, int *n)
{
    *n = 0;
    const cJSON *v = item(obj, key);
    if (!v) return 0;
    const cJSON *e, *one = cJSON_IsArray(v) ? NULL : v;
    if (!one && cJSON_GetArraySize(v) > MODEL_MAX_EOS)
        return field_err(x, key, "an integer or a list of at most 16 integers", v);
    for (e = one ? one : v->child; e; e = one ? NULL : e->next) {
        if (!is_integral(e) || e->valuedouble > INT_MAX || e->valuedouble < INT_MIN)
            return field_err(x, key, "an integer, a list of integers or null", v);
        int id = (int)e->valuedouble, dup = 0;
        for (int i = 0; i < *n; i++) dup |= ids[i] == id;
        if (id >= 0 && !dup) ids[(*n)++] = id;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// JSON text

/* Parse text[0..len) as one JSON value followed by nothing but whitespace. On failure the
 * message gives the line and column where the parser stopped. */
static cJSON *parse_json(const char *src, const char *text, size_t len, char *err)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    int trailing = 0;
    if (root) {
        while (end < text + len && *end && strchr(" \t\r\n", *end)) end++;
        if (end == text + len) return root;
        cJSON_Delete(root);
        trailing = 1;
    }
    if (!end || end < text || end > text + len) end = text + len;
    int line = 1, col = 1;
    for (const char *p = text; p < end; p++) {
        if (*p == '\n') { line++; col = 1; } else { col++; }
    }
    if (end >= text + len)
        set_err(err, -1, "%s: malformed JSON: unexpected end of input (line %d, column %d)", src,
                line, col);
    else if (trailing)
        set_err(err, -1, "%s: malformed JSON: trailing characters at line %d, column %d", src,
                line, col);
    else
        set_err(err, -1, "%s: malformed JSON at line %d, column %d (byte %td)", src, line, col,
                end - text);
    return NULL;
}

/* Read a whole file (NUL-terminated copy). */
static int read_text(const char *path, char **out, size_t *len, char *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) return set_err(err, -1, "%s: cannot open: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 16384;
            buf = xrealloc(buf, cap);
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (n > CONFIG_MAX_BYTES) {
            fclose(f);
            free(buf);
            return set_err(err, -1, "%s: larger than %u bytes, not a config", path,
                           CONFIG_MAX_BYTES);
        }
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return set_err(err, -1, "%s: read error", path);
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// rope_scaling

static void rope_scaling_defaults(struct rope_scaling *r)
{
    memset(r, 0, sizeof *r);
    snprintf(r->type, sizeof r->type, "default");
    r->truncate = 1;
    snprintf(r->yarn_variant, sizeof r->yarn_variant, "standard");
    snprintf(r->act, sizeof r->act, "silu");
    r->time_dt = 0.01;
    r->num_rotations = 3;
    r->training_seq_len = 16384;
}

static void rope_scaling_free(struct rope_scaling *r)
{
    free(r->short_factor);
    free(r->long_factor);
    r->short_factor = r->long_factor = NULL;
    r->n_short_factor = r->n_long_factor = 0;
}

/* Fill r from obj (NULL or JSON null -> not present). *log_scale is written only when obj
 * carries a log_scale key (GeNE keeps it inside rope_scaling). On error r holds nothing. */
static int parse_rope(const struct jctx *x, const cJSON *obj, struct rope_scaling *r,
                      int *log_scale)
{
    rope_scaling_defaults(r);
    if (!obj || cJSON_IsNull(obj)) return 0;
    if (!cJSON_IsObject(obj)) {
        char got[64];
        json_brief(obj, got, sizeof got);
        /* the field is the prefix itself, without its dot ("rope_scaling.") */
        size_t n = strlen(x->prefix);
        if (!n) return set_err(x->err, -1, "%s: expected an object or null, got %s", x->src, got);
        return set_err(x->err, -1, "%s: field '%.*s': expected an object or null, got %s", x->src,
                       (int)(n - 1), x->prefix, got);
    }
    r->present = 1;

    const cJSON *t = item(obj, "rope_type");
    const char *tkey = "rope_type";
    if (!t) { t = item(obj, "type"); tkey = "type"; }
    if (t && as_str(x, tkey, t, r->type, sizeof r->type)) goto fail;

    if (opt_num(x, obj, "factor", 1, &r->factor, &r->has_factor)) goto fail;
    if (opt_int(x, obj, "original_max_position_embeddings", 1, &r->original_max_pos)) goto fail;
    if (opt_num(x, obj, "attention_factor", 0, &r->attention_factor, &r->has_attention_factor) ||
        opt_num(x, obj, "beta_fast", 0, &r->beta_fast, &r->has_beta_fast) ||
        opt_num(x, obj, "beta_slow", 0, &r->beta_slow, &r->has_beta_slow) ||
        opt_num(x, obj, "mscale", 0, &r->mscale, &r->has_mscale) ||
        opt_num(x, obj, "mscale_all_dim", 0, &r->mscale_all_dim, &r->has_mscale_all_dim))
        goto fail;
    if (opt_bool(x, obj, "truncate", &r->truncate) || opt_bool(x, obj, "finetuned", &r->finetuned))
        goto fail;

    const cJSON *v = item(obj, "yarn_variant");
    if (v) {
        if (!cJSON_IsString(v) ||
            (strcmp(v->valuestring, "standard") && strcmp(v->valuestring, "revised"))) {
            field_err(x, "yarn_variant", "\"standard\" or \"revised\"", v);
            goto fail;
        }
        snprintf(r->yarn_variant, sizeof r->yarn_variant, "%s", v->valuestring);
    }

    if (opt_num(x, obj, "low_freq_factor", 0, &r->low_freq_factor, &r->has_low_freq_factor) ||
        opt_num(x, obj, "high_freq_factor", 0, &r->high_freq_factor, &r->has_high_freq_factor))
        goto fail;

    if ((v = item(obj, "short_factor")) &&
        as_float_array(x, "short_factor", v, &r->short_factor, &r->n_short_factor))
        goto fail;
    if ((v = item(obj, "long_factor")) &&
        as_float_array(x, "long_factor", v, &r->long_factor, &r->n_long_factor))
        goto fail;
    if (opt_num(x, obj, "short_mscale", 0, &r->short_mscale, &r->has_short_mscale) ||
        opt_num(x, obj, "long_mscale", 0, &r->long_mscale, &r->has_long_mscale))
        goto fail;

    if (opt_int(x, obj, "max_factor", 0, &r->max_factor) ||
        opt_int(x, obj, "param_factor", 0, &r->param_factor))
        goto fail;
    if ((v = item(obj, "act")) && as_str(x, "act", v, r->act, sizeof r->act)) goto fail;
    if (opt_num(x, obj, "time_dt", 0, &r->time_dt, NULL)) goto fail;

    /* gene: a boolean in the released YAML; a number is taken as the scale itself. */
    if ((v = item(obj, "gene_random_scale"))) {
        if (cJSON_IsBool(v)) {
            r->gene_random_scale = cJSON_IsTrue(v);
        } else if (cJSON_IsNumber(v) && isfinite(v->valuedouble)) {
            r->gene_random_scale = v->valuedouble;
        } else {
            field_err(x, "gene_random_scale", "true, false or a number", v);
            goto fail;
        }
        r->has_gene_random_scale = 1;
    }
    if (opt_int(x, obj, "num_rotations", 0, &r->num_rotations) ||
        opt_int(x, obj, "training_seq_len", 1, &r->training_seq_len))
        goto fail;
    if ((v = item(obj, "log_scale"))) {
        int ls = 0;
        if (as_bool(x, "log_scale", v, &ls)) goto fail;
        if (log_scale) *log_scale = ls;
    }
    return 0;

fail:
    rope_scaling_free(r);
    rope_scaling_defaults(r);
    return -1;
}

// ---------------------------------------------------------------------------------------------
// config.json

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

// ---------------------------------------------------------------------------------------------
// Architecture: model_type, biases, sliding windows, and the fields nothing here implements

static const struct {
    const char *model_type, *arch_class;
    enum model_arch arch;
} known_archs[] = {
    {"llama", "LlamaForCausalLM", MODEL_ARCH_LLAMA},
    {"mistral", "MistralForCausalLM", MODEL_ARCH_MISTRAL},
    {"qwen2", "Qwen2ForCausalLM", MODEL_ARCH_QWEN2},
};
#define N_KNOWN_ARCHS ((int)(sizeof known_archs / sizeof known_archs[0]))

const char *model_arch_name(enum model_arch a)
{
    for (int k = 0; k < N_KNOWN_ARCHS; k++)
        if (known_archs[k].arch == a) return known_archs[k].model_type;
    return "?";
}

/* model_type decides, as transformers' AutoConfig does; architectures must then name a causal
 * LM and must not name another of the known classes. Without model_type, architectures decides
 * (LLaMAForCausalLM, the spelling of early conversions, is LLaMA). Neither key: LLaMA (hand-
 * written configs). Every other model_type (gemma, phi3, qwen2_moe, mixtral, deepseek_v3 ...) is
 * refused: loaded as LLaMA it would compute something else. */
static int parse_arch_name(const struct jctx *x, const cJSON *root, struct model_config *c)
{
    const cJSON *types = item(root, "model_type"), *archs = item(root, "architectures"), *e;
    int from_class = -1;
    if (archs) {
        int causal = 0;
        if (!cJSON_IsArray(archs)) return field_err(x, "architectures", "a list of strings", archs);
        cJSON_ArrayForEach(e, archs) {
            if (!cJSON_IsString(e)) return field_err(x, "architectures", "a list of strings", archs);
            if (ends_with(e->valuestring, "ForCausalLM")) causal = 1;
            for (int k = 0; k < N_KNOWN_ARCHS; k++)
                if (!strcasecmp(e->valuestring, known_archs[k].arch_class)) from_class = k;
        }
        if (!causal) return field_err(x, "architectures", "a *ForCausalLM architecture", archs);
    }
    if (types) {
        if (!cJSON_IsString(types)) return field_err(x, "model_type", "a string", types);
        int k = 0;
        while (k < N_KNOWN_ARCHS && strcmp(types->valuestring, known_archs[k].model_type)) k++;
        if (k == N_KNOWN_ARCHS)
            return set_err(x->err, -1, "%s: field 'model_type': \"%.64s\" is not supported (supported: "
                           "llama, mistral, qwen2)", x->src, types->valuestring);
        if (from_class >= 0 && from_class != k)
            return set_err(x->err, -1, "%s: field 'architectures': %s contradicts model_type \"%s\"",
                           x->src, known_archs[from_class].arch_class, types->valuestring);
        c->arch = known_archs[k].arch;
    } else if (archs) {
        if (from_class < 0) {
            char got[64];
            json_brief(archs, got, sizeof got);
            return set_err(x->err, -1, "%s: field 'architectures': %s is not supported (supported: "
                           "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)", x->src, got);
        }
        c->arch = known_archs[from_class].arch;
    } else {
        c->arch = MODEL_ARCH_LLAMA;
    }
    return 0;
}

/* Fields that change what a model computes and that no architecture here implements. Set to
 * anything but null, false or 0, the checkpoint is refused, naming the field, rather than loaded
 * as a model that computes something else. (Other unknown keys are ignored, as transformers
 * does: its configs accept any extra key and its models never read them.)
 * Accepted and ignored on purpose: pretraining_tp (transformers' LLaMA <= 4.44 split the
 * projections into that many slices and concatenated the results: the same function up to
 * rounding; later versions and vLLM ignore it), attention_dropout (training only). */
static const struct {
    const char *key, *why;
} refused_fields[] = {
    {"quantization_config", "quantized checkpoints are not supported (use F32, F16 or BF16 safetensors)"},
    {"num_experts", "mixture-of-experts layers are not supported"},
    {"num_local_experts", "mixture-of-experts layers are not supported"},
    {"n_routed_experts", "mixture-of-experts layers are not supported"},
    {"attn_logit_softcapping", "attention logit soft-capping is not supported"},
    {"final_logit_softcapping", "final logit soft-capping is not supported"},
    {"qk_norm", "q/k normalization is not supported"},
    {"use_qk_norm", "q/k normalization is not supported"},
    {"attention_chunk_size", "chunked local attention is not supported"},
    {"sliding_window_pattern", "interleaved sliding-window layers are not supported"},
    {"interleaved_sliding_window", "interleaved sliding-window layers are not supported"},
    {"use_bidirectional_attention", "bidirectional attention is not supported"},
};

static int refuse_fields(const struct jctx *x, const cJSON *root)
{
    for (size_t i = 0; i < sizeof refused_fields / sizeof refused_fields[0]; i++) {
        const cJSON *v = item(root, refused_fields[i].key);
        if (!v || cJSON_IsFalse(v) || (cJSON_IsNumber(v) && v->valuedouble == 0)) continue;
        char got[64];
        json_brief(v, got, sizeof got);
        return set_err(x->err, -1, "%s: field '%s': %s (got %s)", x->src, refused_fields[i].key,
                       refused_fields[i].why, got);
    }
    const cJSON *v = item(root, "pretraining_tp");
    int tp;
    return v ? as_int(x, "pretraining_tp", v, 1, &tp) : 0;
}

/* attention_bias / mlp_bias: transformers' LLaMA reads both (attention_bias puts a bias on q, k,
 * v and o); its Qwen2 always has q/k/v biases and no other, its Mistral none, whatever the config
 * says, so a config that claims otherwise for those two is refused. */
static int parse_biases(const struct jctx *x, const cJSON *root, struct model_config *c)
{
    int ab = 0, mb = 0;
    if (opt_bool(x, root, "attention_bias", &ab) || opt_bool(x, root, "mlp_bias", &mb)) return -1;
    const char *name = c->arch == MODEL_ARCH_QWEN2 ? "Qwen2" : "Mistral";
    switch (c->arch) {
    case MODEL_ARCH_LLAMA:
        c->qkv_bias = c->o_bias = ab;
        c->mlp_bias = mb;
        return 0;
    case MODEL_ARCH_QWEN2:
        c->qkv_bias = 1;
        /* fall through */
    case MODEL_ARCH_MISTRAL:
        if (ab)
            return set_err(x->err, -1, "%s: field 'attention_bias': true, but transformers' %s ignores "
                           "it (%s); set it to false", x->src, name,
                           c->arch == MODEL_ARCH_QWEN2 ? "q, k, v have biases, o_proj none" : "no biases");
        if (mb)
            return set_err(x->err, -1, "%s: field 'mlp_bias': true, but transformers' %s has no MLP "
                           "biases; set it to false", x->src, name);
        return 0;
    }
    return 0;
}

/* sliding_window as W: dflt when the key is absent, 0 (full attention) when it is null. */
static int window_value(const struct jctx *x, const cJSON *root, int dflt, int *w)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
    *w = !v ? dflt : 0;
    return v && !cJSON_IsNull(v) ? as_int(x, "sliding_window", v, 1, w) : 0;
}

/* Which layers slide, as transformers decides (REFERENCES: configuration_mistral.py,
 * configuration_qwen2.py):
 *   mistral  every layer, W = sliding_window; the key absent means MistralConfig's default 4096
 *            (Mistral-7B-v0.1), null means full attention (v0.2 and later);
 *   qwen2    W = sliding_window (default 4096) only when use_sliding_window, else none; then the
 *            layers layer_types calls "sliding_attention", or without layer_types those with
 *            index >= max_window_layers (default 28);
 *   llama    none: a sliding_window here is refused (transformers' LLaMA ignores it, a checkpoint
 *            that carries one was probably trained with it).
 * Refused too: a Mistral config with use_sliding_window false and a window (transformers slides,
 * vLLM does not), and layer_types that the architecture would not follow. */
static int parse_windows(const struct jctx *x, const cJSON *root, struct model_config *c)
{
    const int n = c->n_layers;
    int W = 0, use = -1, mwl = 28;
    const cJSON *v, *types = item(root, "layer_types"), *e;
    if ((v = item(root, "use_sliding_window")) && as_bool(x, "use_sliding_window", v, &use)) return -1;
    if (opt_int(x, root, "max_window_layers", 0, &mwl)) return -1;
    if (types) {
        if (!cJSON_IsArray(types) || cJSON_GetArraySize(types) != n) {
            char what[96];
            snprintf(what, sizeof what, "a list of %d \"full_attention\" / \"sliding_attention\"", n);
            return field_err(x, "layer_types", what, types);
        }
        cJSON_ArrayForEach(e, types) {
            if (!cJSON_IsString(e) || (strcmp(e->valuestring, "full_attention") &&
                                       strcmp(e->valuestring, "sliding_attention")))
                return field_err(x, "layer_types", "only \"full_attention\" and \"sliding_attention\"", e);
        }
    }
    c->layer_window = xcalloc((size_t)n, sizeof *c->layer_window);
    switch (c->arch) {
    case MODEL_ARCH_MISTRAL:
        if (window_value(x, root, 4096, &W)) return -1;
        if (W && use == 0)
            return set_err(x->err, -1, "%s: field 'use_sliding_window': false, with sliding_window %d: "
                           "transformers' Mistral slides the window anyway, vLLM does not; set "
                           "sliding_window to null for full attention, or drop use_sliding_window", x->src, W);
        break;
    case MODEL_ARCH_QWEN2:
        if (window_value(x, root, 4096, &W)) return -1;
        if (use != 1) W = 0;
        break;
    case MODEL_ARCH_LLAMA:
        if (window_value(x, root, 0, &W)) return -1;
        if (W)
            return set_err(x->err, -1, "%s: field 'sliding_window': %d, but LlamaForCausalLM has no "
                           "sliding-window attention (transformers ignores the field); use model_type "
                           "\"mistral\" for a sliding window, or set it to null", x->src, W);
        if (use == 1)
            return set_err(x->err, -1, "%s: field 'use_sliding_window': true, but LlamaForCausalLM has "
                           "no sliding-window attention", x->src);
        break;
    }
    for (int l = 0; l < n; l++) {
        int slides = W > 0;
        if (c->arch == MODEL_ARCH_QWEN2)
            slides = W > 0 && (types ? !strcmp(cJSON_GetArrayItem(types, l)->valuestring, "sliding_attention")
                                     : l >= mwl);
        else if (types && slides != !strcmp(cJSON_GetArrayItem(types, l)->valuestring, "sliding_attention"))
            return set_err(x->err, -1, "%s: field 'layer_types': layer %d is \"%s\", but transformers' %s "
                           "ignores layer_types (%s); per-layer attention types are not supported for "
                           "this model_type", x->src, l, cJSON_GetArrayItem(types, l)->valuestring,
                           c->arch == MODEL_ARCH_MISTRAL ? "Mistral" : "LLaMA",
                           W ? "every layer slides" : "every layer attends to every key");
        c->layer_window[l] = slides ? W : 0;
    }
    return 0;
}

int model_config_layer_window(const struct model_config *c, int layer, int max_len)
{
    int w = c->layer_window && layer >= 0 && layer < c->n_layers ? c->layer_window[layer] : 0;
    return w > 0 && w < max_len ? w : 0;
}

int model_config_window_all(const struct model_config *c, int max_len)
{
    int all = 0;
    for (int l = 0; l < c->n_layers; l++) {
        int w = model_config_layer_window(c, l, max_len);
        if (!w) return 0;
        if (w > all) all = w;
    }
    return all;
}

static int required_int(const struct jctx *x, const cJSON *root, const char *key, int *out)
{
    const cJSON *v = item(root, key);
    if (!v) return set_err(x->err, -1, "%s: field '%s': required field missing", x->src, key);
    return as_int(x, key, v, 1, out);
}

static int parse_config(struct model_config *c, const cJSON *root, const char *src, char *err)
{
    struct jctx x = {src, "", err};
    const cJSON *v;

    if (parse_arch_name(&x, root, c)) return -1;
    if ((v = item(root, "hidden_act"))) {
        if (!cJSON_IsString(v)) return field_err(&x, "hidden_act", "a string", v);
        if (strcmp(v->valuestring, "silu") && strcmp(v->valuestring, "swish")) /* one function in HF */
            return set_err(err, -1, "%s: field 'hidden_act': unsupported activation \"%s\" "
                           "(only \"silu\", alias \"swish\")", src, v->valuestring);
    }

    if (required_int(&x, root, "vocab_size", &c->vocab_size) ||
        required_int(&x, root, "hidden_size", &c->hidden_size) ||
        required_int(&x, root, "intermediate_size", &c->intermediate_size) ||
        required_int(&x, root, "num_hidden_layers", &c->n_layers) ||
        required_int(&x, root, "num_attention_heads", &c->n_heads) ||
        required_int(&x, root, "max_position_embeddings", &c->max_pos))
        return -1;

    if (refuse_fields(&x, root) || parse_biases(&x, root, c) || parse_windows(&x, root, c))
        return -1;

    c->n_kv_heads = c->n_heads;
    if (opt_int(&x, root, "num_key_value_heads", 1, &c->n_kv_heads)) return -1;
    if (c->n_heads % c->n_kv_heads)
        return set_err(err, -1, "%s: field 'num_key_value_heads': %d does not divide "
                       "num_attention_heads %d", src, c->n_kv_heads, c->n_heads);

    if ((v = item(root, "head_dim"))) {
        if (as_int(&x, "head_dim", v, 1, &c->head_dim)) return -1;
    } else {
        if (c->hidden_size % c->n_heads)
            return set_err(err, -1, "%s: field 'hidden_size': %d is not divisible by "
                           "num_attention_heads %d (and no head_dim is given)", src,
                           c->hidden_size, c->n_heads);
        c->head_dim = c->hidden_size / c->n_heads;
    }
    if (opt_int(&x, root, "original_max_position_embeddings", 1, &c->original_max_pos)) return -1;

    double eps = 1e-6;
    if (opt_num(&x, root, "rms_norm_eps", 1, &eps, NULL)) return -1;
    c->rms_norm_eps = (float)eps;

    /* transformers v5 moves rope_theta (and partial_rotary_factor) into rope_parameters; a
     * top-level key still wins, as in v5's standardize_rope_params(). */
    const cJSON *params = item(root, "rope_parameters");
    if (params && !cJSON_IsObject(params))
        return field_err(&x, "rope_parameters", "an object or null", params);
    struct jctx xp = {src, "rope_parameters.", err};
    c->rope_theta = 10000.0;
    if (item(root, "rope_theta")) {
        if (opt_num(&x, root, "rope_theta", 1, &c->rope_theta, NULL)) return -1;
    } else if (params && opt_num(&xp, params, "rope_theta", 1, &c->rope_theta, NULL)) {
        return -1;
    }
    c->partial_rotary_factor = 1.0;
    const struct jctx *xprf = &x;
    if (!(v = item(root, "partial_rotary_factor")) && params) {
        v = item(params, "partial_rotary_factor");
        xprf = &xp;
    }
    if (v && (!cJSON_IsNumber(v) || !(v->valuedouble > 0 && v->valuedouble <= 1)))
        return field_err(xprf, "partial_rotary_factor", "a number in (0, 1]", v);
    if (v) c->partial_rotary_factor = v->valuedouble;

    if (opt_bool(&x, root, "tie_word_embeddings", &c->tie_word_embeddings)) return -1;
    if (token_id(&x, root, "bos_token_id", &c->bos_id) ||
        token_ids(&x, root, "eos_token_id", c->eos_ids, &c->n_eos) ||
        token_id(&x, root, "pad_token_id", &c->pad_id))
        return -1;
    c->eos_id = c->n_eos ? c->eos_ids[0] : -1;
    c->eos_primary = c->eos_id;
    if (opt_bool(&x, root, "log_scale", &c->log_scale)) return -1;

    if ((v = item(root, "string_config"))) {
        if (!cJSON_IsObject(v)) return field_err(&x, "string_config", "an object or null", v);
        struct jctx xs = {src, "string_config.", err};
        c->string_local = ROPE_STRING_LOCAL_DEFAULT; /* when local_value is absent */
        if (opt_int(&xs, v, "shifted_offset", 0, &c->string_shift) ||
            opt_int(&xs, v, "local_value", 0, &c->string_local))
            return -1;
        if (c->string_shift == 0) c->string_local = 0;
    }

    /* torch_dtype (v5: dtype) is informational: the weights carry their own dtypes. */
    c->torch_dtype = BK_F32;
    const char *dkey = item(root, "torch_dtype") ? "torch_dtype" : "dtype";
    if ((v = item(root, dkey))) {
        if (!cJSON_IsString(v)) return field_err(&x, dkey, "a string", v);
        if (!strcmp(v->valuestring, "float32")) c->torch_dtype = BK_F32;
        else if (!strcmp(v->valuestring, "float16")) c->torch_dtype = BK_F16;
        else if (!strcmp(v->valuestring, "bfloat16")) c->torch_dtype = BK_BF16;
        else LOG_W("%s: field '%s': unknown dtype \"%s\", taken as float32", src, dkey,
                   v->valuestring);
    }

    /* rope_scaling wins over v5's rope_parameters; a rope_parameters of type "default" is what
     * v5 writes for an unscaled model, so it counts as absent. */
    if ((v = item(root, "rope_scaling"))) {
        struct jctx xr = {src, "rope_scaling.", err};
        if (parse_rope(&xr, v, &c->rope, &c->log_scale)) return -1;
    } else if (params) {
        if (parse_rope(&xp, params, &c->rope, &c->log_scale)) return -1;
        if (!strcmp(c->rope.type, "default")) {
            rope_scaling_free(&c->rope);
            rope_scaling_defaults(&c->rope);
        }
    } else {
        rope_scaling_defaults(&c->rope);
    }
    return 0;
}

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir);
    int slash = n > 0 && dir[n - 1] == '/';
    char *p = xmalloc(n + strlen(name) + 2);
    sprintf(p, "%s%s%s", dir, slash ? "" : "/", name);
    return p;
}

int model_config_load(struct model_config *c, const char *dir, char *err)
{
    memset(c, 0, sizeof *c);
    rope_scaling_defaults(&c->rope);
    char *path = path_join(dir, "config.json");
    char *text = NULL;
    size_t len = 0;
    cJSON *root = NULL;
    int rc = -1;

    if (read_text(path, &text, &len, err)) goto fail;
    if (!(root = parse_json(path, text, len, err))) goto fail;
    if (!cJSON_IsObject(root)) {
        set_err(err, -1, "%s: expected a JSON object at the top level", path);
        goto fail;
    }
    if (parse_config(c, root, path, err)) goto fail;
    rc = 0;

fail:
    if (rc) {
        model_config_free(c);
        memset(c, 0, sizeof *c);
    }
    cJSON_Delete(root);
    free(text);
    free(path);
    return rc;
}

int model_config_set_rope_json(struct model_config *c, const char *json, char *err)
{
    static const char src[] = "rope_scaling JSON";
    if (!json) return set_err(err, -1, "%s: empty", src);
    cJSON *root = parse_json(src, json, strlen(json), err);
    if (!root) return -1;
    struct jctx x = {src, "", err};
    struct rope_scaling r;
    int log_scale = c->log_scale;
    int rc = parse_rope(&x, root, &r, &log_scale);
    cJSON_Delete(root);
    if (rc) return rc;
    rope_scaling_free(&c->rope);
    c->rope = r;
    c->log_scale = log_scale;
    return 0;
}

void model_config_free(struct model_config *c)
{
    if (!c) return;
    rope_scaling_free(&c->rope);
    free(c->layer_window);
    c->layer_window = NULL;
}

int model_config_add_eos(struct model_config *c, int id)
{
    if (id < 0) return 0;
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_ids[i] == id) return 0;
    if (c->n_eos == MODEL_MAX_EOS) return -1;
    c->eos_ids[c->n_eos++] = id;
    c->eos_id = c->eos_ids[0];
    return 0;
}

// ---------------------------------------------------------------------------------------------
// generation_config.json

/* One sampling default: present, not null and not transformers' default value (to_diff_dict). */
static int gen_num(const struct jctx *x, const cJSON *root, const char *key, double lo, double hi,
                   int lo_open, int has_dflt, double dflt, int *has, double *out)
{
    const cJSON *v = item(root, key);
    *has = 0;
    if (!v) return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < lo || v->valuedouble > hi ||
        (lo_open && v->valuedouble == lo)) {
        char want[96];
        snprintf(want, sizeof want, "a number in %s%g, %g]", lo_open ? "(" : "[", lo, hi);
        return field_err(x, key, want, v);
    }
    if (has_dflt && v->valuedouble == dflt) return 0;
    *has = 1;
    *out = v->valuedouble;
    return 0;
}

int model_generation_config_load(struct generation_config *g, const char *dir, char *err)
{
    memset(g, 0, sizeof *g);
    char *path = path_join(dir, "generation_config.json");
    FILE *probe = fopen(path, "rb");
    if (probe) {
        fclose(probe);
        g->present = 1;
    } else {
        free(path);
        path = path_join(dir, "config.json"); /* GenerationConfig.from_model_config */
        if (!(probe = fopen(path, "rb"))) {
            free(path);
            return 0;
        }
        fclose(probe);
    }
    char *text = NULL;
    size_t len = 0;
    cJSON *root = NULL;
    int rc = -1;
    double d;
    if (read_text(path, &text, &len, err) || !(root = parse_json(path, text, len, err))) goto done;
    if (!cJSON_IsObject(root)) {
        set_err(err, -1, "%s: expected a JSON object at the top level", path);
        goto done;
    }
    struct jctx x = {path, "", err};
    if (token_ids(&x, root, "eos_token_id", g->eos_ids, &g->n_eos) ||
        gen_num(&x, root, "temperature", 0, 1e6, 0, 1, 1.0, &g->has_temperature, &g->temperature) ||
        gen_num(&x, root, "top_p", 0, 1, 1, 1, 1.0, &g->has_top_p, &g->top_p) ||
        gen_num(&x, root, "min_p", 0, 1, 0, 0, 0, &g->has_min_p, &g->min_p) ||
        gen_num(&x, root, "repetition_penalty", 0, 1e6, 1, 1, 1.0, &g->has_repetition_penalty, &g->repetition_penalty))
        goto done;
    if (gen_num(&x, root, "top_k", -1, INT_MAX, 0, 1, 50, &g->has_top_k, &d)) goto done;
    if (g->has_top_k) {
        if (d != floor(d)) {
            field_err(&x, "top_k", "an integer >= -1", item(root, "top_k"));
            goto done;
        }
        g->top_k = (int)d;
    }
    if (gen_num(&x, root, "max_new_tokens", 1, INT_MAX, 0, 0, 0, &g->has_max_new_tokens, &d)) goto done;
    if (g->has_max_new_tokens) {
        if (d != floor(d)) {
            field_err(&x, "max_new_tokens", "an integer >= 1", item(root, "max_new_tokens"));
            goto done;
        }
        g->max_new_tokens = (int)d;
    }
    rc = 0;
done:
    if (rc) memset(g, 0, sizeof *g);
    cJSON_Delete(root);
    free(text);
    free(path);
    return rc;
}
