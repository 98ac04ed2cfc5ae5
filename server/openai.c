/* openai.c - the OpenAI JSON edge: request bodies (cJSON) are parsed and validated into struct
 * oai_request (plain C, engine types), responses are rendered back to JSON. Nothing here blocks
 * or touches the engine, so tests/test_openai.c exercises all of it without a model.
 *
 * Validation policy: nobody gets a silently different answer. Every top-level field of a body
 * is in the table `fields` below, as one of
 *   implemented  parsed and checked (type, range) by the code of this file;
 *   no-op        accepted because it changes nothing in the answer (`user`, `metadata`, ...);
 *                only its type is checked;
 *   neutral      a feature we do not have (beam search, grammars, llama.cpp's DRY, ...):
 *                accepted only with the value that turns it off, refused otherwise;
 * and a field that is not in the table is refused (a typo such as `temperatur` must not fall
 * back to a default). vLLM ignores unknown fields with a warning in its log; OpenAI refuses
 * them ("Unrecognized request argument supplied"); we refuse, and say the nearest known name.
 * A refusal is a 400 invalid_request_error whose `param` names the field and whose message says
 * what was expected and what came. README.md's field table lists the same dispositions (a
 * test checks that every name of the table is there).
 *
 * The body itself must be exactly one JSON object: bytes after it, raw control characters
 * inside strings (JSON forbids them; cJSON takes them) and U+0000 (cJSON would cut the string
 * there) are refused; a key may appear once. Integers that may exceed 2^53 (`seed`, `priority`)
 * are read from the JSON text, not through a double.
 *
 * Rejected alternative: validating with a schema table. The fields' rules differ just enough
 * (aliases, chat vs completions defaults, logit_bias' two shapes) that plain code reads better;
 * the table only says which fields exist and what becomes of them. */
#include "server_internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------
 * string buffer */

void sb_append(struct strbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

void sb_puts(struct strbuf *b, const char *s) { sb_append(b, s, strlen(s)); }

void sb_printf(struct strbuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        sb_append(b, tmp, (size_t)n);
        return;
    }
    char *big = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb_append(b, big, (size_t)n);
    free(big);
}

void sb_free(struct strbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

int utf8_cp_count(const char *s, size_t n)
{
    int c = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) c++;
    return c;
}

/* ---------------------------------------------------------------------------------------------
 * errors */

int oai_err(struct oai_error *e, int status, const char *param, const char *code, const char *fmt,
            ...)
{
    if (!e) return -1;
    memset(e, 0, sizeof *e);
    e->status = status;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

const char *oai_error_type(int status)
{
    switch (status) {
    case 400: case 405: case 413: return "invalid_request_error";
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

char *oai_error_json(const struct oai_error *e)
{
    cJSON *root = cJSON_CreateObject(), *o = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(o, "message", e->message);
    cJSON_AddStringToObject(o, "type", oai_error_type(e->status));
    if (e->param[0]) cJSON_AddStringToObject(o, "param", e->param);
    else cJSON_AddNullToObject(o, "param");
    if (e->code) cJSON_AddStringToObject(o, "code", e->code);
    else cJSON_AddNumberToObject(o, "code", e->status); /* vLLM puts the status here */
    if (e->max_model_len) {
        cJSON_AddNumberToObject(o, "n_prompt_tokens", e->n_prompt_tokens);
        cJSON_AddNumberToObject(o, "max_model_len", e->max_model_len);
    }
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

/* ---------------------------------------------------------------------------------------------
 * field readers: absent or null leaves *out alone; a present value of the wrong type or out of
 * range is a 400 naming the field. */

static const char *json_type_name(const cJSON *v)
{
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "null";
}

static cJSON *field(const cJSON *root, const char *name)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

static int get_bool(const cJSON *root, const char *name, int *out, struct oai_error *e)
{
    cJSON *v = field(root, name);
    if (!v) return 0;
    if (!cJSON_IsBool(v))
        return oai_err(e, 400, name, NULL, "'%s' must be a boolean, got %s", name, json_type_name(v));
    *out = cJSON_IsTrue(v);
    return 0;
}

static int get_num(const cJSON *root, const char *name, double lo, double hi, float *out,
                   struct oai_error *e)
{
    cJSON *v = field(root, name);
    if (!v) return 0;
    if (!cJSON_IsNumber(v))
        return oai_err(e, 400, name, NULL, "'%s' must be a number, got %s", name, json_type_name(v));
    double d = v->valuedouble;
    if (!(d >= lo && d <= hi))
        return oai_err(e, 400, name, NULL, "'%s' must be between %g and %g, got %g", name, lo, hi, d);
    *out = (float)d;
    return 0;
}

static int is_integral(const cJSON *v)
{
    return cJSON_IsNumber(v) && isfinite(v->valuedouble) && floor(v->valuedouble) == v->valuedouble;
}

static int get_int(const cJSON *root, const char *name, double lo, double hi, long long *out,
                   struct oai_error *e)
{
    cJSON *v = field(root, name);
    if (!v) return 0;
    if (!is_integral(v))
        return oai_err(e, 400, name, NULL, "'%s' must be an integer, got %s", name,
                       cJSON_IsNumber(v) ? "a fractional number" : json_type_name(v));
    double d = v->valuedouble;
    if (d < lo || d > hi)
        return oai_err(e, 400, name, NULL, "'%s' must be between %.0f and %.0f, got %.0f", name, lo,
                       hi, d);
    *out = (long long)d;
    return 0;
}

/* "string_config": {"shifted_offset": S, "local_value": W} (REFERENCES-rope.md §8), the key
 * config.json uses; null or absent = the model's default; shifted_offset 0 turns STRING off. */
static int parse_string_config(const cJSON *root, struct oai_request *r, struct oai_error *e)
{
    const cJSON *v = field(root, "string_config");
    if (!v) return 0;
    if (!cJSON_IsObject(v))
        return oai_err(e, 400, "string_config", NULL, "'string_config' must be an object "
                       "{\"shifted_offset\": S, \"local_value\": W}, got %s", json_type_name(v));
    for (const cJSON *k = v->child; k; k = k->next)
        if (strcmp(k->string, "shifted_offset") && strcmp(k->string, "local_value"))
            return oai_err(e, 400, "string_config", NULL, "'string_config' has an unknown key '%s' (expected "
                           "shifted_offset, local_value)", k->string);
    long long s = -1, w = -1;
    struct oai_error sub;
    if (get_int(v, "shifted_offset", 0, 1 << 30, &s, &sub) || get_int(v, "local_value", 0, 1 << 30, &w, &sub))
        return oai_err(e, 400, "string_config", NULL, "string_config.%s", sub.message);
    if (s < 0)
        return oai_err(e, 400, "string_config", NULL, "'string_config' needs 'shifted_offset' (0 turns STRING off)");
    if (s > 0 && w >= s)
        return oai_err(e, 400, "string_config", NULL, "string_config.local_value (%lld) must be below "
                       "shifted_offset (%lld)", w, s);
    r->string_set = 1;
    r->string_shift = (int)s;
    r->string_local = s == 0 ? 0 : (int)w;
    return 0;
}

/* A string that must be valid UTF-8 (cJSON does not check raw bytes). */
static int check_utf8(const char *s, const char *param, struct oai_error *e)
{
    if (!utf8_valid(s, strlen(s)))
        return oai_err(e, 400, param, NULL, "'%s' is not valid UTF-8", param);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * the body: one JSON object, strictly */

/* A top-level member as it stands in the body: its key (decoded) and its value's text. */
struct raw_member {
    char *key;
    const char *val;
    size_t n;
};

struct body_scan {
    struct raw_member *m;
    int n, cap;
};

static void scan_free(struct body_scan *b)
{
    for (int i = 0; i < b->n; i++) free(b->m[i].key);
    free(b->m);
    memset(b, 0, sizeof *b);
}

static int is_json_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static void skip_ws(const char *s, size_t len, size_t *i)
{
    while (*i < len && is_json_ws(s[*i])) (*i)++;
}

/* s[*i] is the opening quote: move past the closing one. Raw control bytes (JSON forbids
 * them, cJSON takes them) and \u0000 (cJSON cuts the string there, so a prompt would lose its
 * tail without a word) are refused, naming the top-level field they are in. */
static int scan_string(const char *s, size_t len, size_t *i, const char *param, struct oai_error *e)
{
    size_t j = *i + 1;
    char where[96] = "";
    if (param && *param) snprintf(where, sizeof where, "'%.60s' holds ", param);
    while (j < len && s[j] != '"') {
        unsigned char c = (unsigned char)s[j];
        if (c < 0x20)
            return oai_err(e, 400, param, NULL, "%sa raw control character (byte 0x%02x at offset %zu) "
                           "inside a JSON string; JSON requires it escaped (\\n, \\t, \\u00XX)", where, c, j);
        if (c == '\\') {
            if (j + 5 < len && s[j + 1] == 'u' && !memcmp(s + j + 2, "0000", 4))
                return oai_err(e, 400, param, NULL, "%sU+0000 (\\u0000 at offset %zu): NUL characters "
                               "are not accepted in text", where, j);
            j += 2;
            continue;
        }
        j++;
    }
    if (j >= len) return oai_err(e, 400, NULL, NULL, "the request body is not valid JSON (unterminated string)");
    *i = j + 1;
    return 0;
}

static int scan_value(const char *s, size_t len, size_t *i, const char *param, struct oai_error *e)
{
    skip_ws(s, len, i);
    if (*i >= len) return oai_err(e, 400, NULL, NULL, "the request body is not valid JSON (truncated)");
    if (s[*i] == '"') return scan_string(s, len, i, param, e);
    if (s[*i] == '{' || s[*i] == '[') {
        int depth = 0;
        while (*i < len) {
            char c = s[*i];
            if (c == '"') {
                if (scan_string(s, len, i, param, e)) return -1;
                continue;
            }
            if (c == '{' || c == '[') depth++;
            else if (c == '}' || c == ']') depth--;
            else if ((unsigned char)c < 0x20 && !is_json_ws(c))
                return oai_err(e, 400, NULL, NULL, "the request body is not valid JSON (byte 0x%02x at "
                               "offset %zu)", (unsigned char)c, *i);
            (*i)++;
            if (depth == 0) return 0;
        }
        return oai_err(e, 400, NULL, NULL, "the request body is not valid JSON (truncated)");
    }
    size_t j = *i; /* number, true, false, null */
    while (*i < len && !is_json_ws(s[*i]) && s[*i] != ',' && s[*i] != '}' && s[*i] != ']') (*i)++;
    if (*i == j) return oai_err(e, 400, NULL, NULL, "the request body is not valid JSON (offset %zu)", j);
    return 0;
}

/* Walk the body (already parsed by cJSON, so well formed as far as cJSON goes) and record each
 * top-level member; refuse what cJSON lets through: control bytes between tokens, raw control
 * characters and NUL in strings, anything after the object. */
static int scan_body(const char *s, size_t len, struct body_scan *b, struct oai_error *e)
{
    size_t i = 0;
    memset(b, 0, sizeof *b);
    skip_ws(s, len, &i);
    if (i >= len || s[i] != '{') return oai_err(e, 400, NULL, NULL, "the request body must be a JSON object");
    i++;
    skip_ws(s, len, &i);
    if (i < len && s[i] == '}') {
        i++;
    } else {
        for (;;) {
            skip_ws(s, len, &i);
            if (i >= len || s[i] != '"') goto bad;
            size_t k0 = i;
            if (scan_string(s, len, &i, NULL, e)) return -1;
            char *key;
            if (memchr(s + k0, '\\', i - k0)) { /* an escaped key: let cJSON decode it */
                cJSON *k = cJSON_ParseWithLength(s + k0, i - k0);
                key = xstrdup(cJSON_IsString(k) ? k->valuestring : "");
                cJSON_Delete(k);
            } else {
                key = xmalloc(i - k0 - 1);
                memcpy(key, s + k0 + 1, i - k0 - 2);
                key[i - k0 - 2] = 0;
            }
            if (b->n == b->cap) {
                b->cap = b->cap ? 2 * b->cap : 16;
                b->m = xrealloc(b->m, sizeof *b->m * (size_t)b->cap);
            }
            b->m[b->n].key = key;
            b->m[b->n].val = NULL;
            b->m[b->n++].n = 0;
            skip_ws(s, len, &i);
            if (i >= len || s[i] != ':') goto bad;
            i++;
            skip_ws(s, len, &i);
            size_t v0 = i;
            if (scan_value(s, len, &i, key, e)) return -1;
            b->m[b->n - 1].val = s + v0;
            b->m[b->n - 1].n = i - v0;
            skip_ws(s, len, &i);
            if (i < len && s[i] == ',') {
                i++;
                continue;
            }
            if (i < len && s[i] == '}') {
                i++;
                break;
            }
            goto bad;
        }
    }
    skip_ws(s, len, &i);
    if (i < len)
        return oai_err(e, 400, NULL, NULL, "the request body holds %zu more bytes after the JSON object "
                       "(offset %zu); send exactly one object", len - i, i);
    return 0;
bad:
    return oai_err(e, 400, NULL, NULL, "the request body is not valid JSON (offset %zu)", i);
}

static const struct raw_member *raw_member(const struct body_scan *b, const char *key)
{
    for (int i = 0; i < b->n; i++)
        if (!strcmp(b->m[i].key, key)) return &b->m[i];
    return NULL;
}

/* An integer literal of the JSON text, exactly: [-]digits, no leading zero, in [lo, hi] as
 * int64 (hi may be UINT64_MAX through is_u64). Returns 0, 1 when the text is not a plain
 * integer literal (a fraction or exponent: the caller falls back to the double), -1 when it is
 * out of range. */
static int exact_integer(const char *v, size_t n, int is_u64, uint64_t *u, int64_t *sv)
{
    int neg = n > 0 && v[0] == '-';
    size_t k = (size_t)neg;
    if (k >= n || (n - k > 1 && v[k] == '0')) return 1;
    for (size_t i = k; i < n; i++)
        if (v[i] < '0' || v[i] > '9') return 1;
    uint64_t x = 0;
    for (size_t i = k; i < n; i++) {
        unsigned d = (unsigned)(v[i] - '0');
        if (x > (UINT64_MAX - d) / 10) return -1;
        x = x * 10 + d;
    }
    if (is_u64) {
        if (neg && x) return -1;
        *u = x;
        return 0;
    }
    if (neg ? x > (uint64_t)INT64_MAX + 1 : x > (uint64_t)INT64_MAX) return -1;
    *sv = neg ? (int64_t)(0 - x) : (int64_t)x;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * strict fields: what becomes of every top-level field (see the file's comment) */

enum { K_CMPL = 1, K_CHAT = 2, K_TOK = 4, K_DETOK = 8, K_GEN = K_CMPL | K_CHAT };

enum field_use {
    F_IMPL = 0, /* parsed below */
    F_NOOP,     /* accepted: changes nothing; type checked (want) */
    F_NEUTRAL,  /* refused unless its value is the one that turns it off (want) */
};

enum field_want { W_ANY = 0, W_STR, W_BOOL, W_INT, W_NUM, W_OBJ, W_LIST,
                  W_NULL, W_FALSE, W_TRUE, W_ZERO, W_ONE, W_MINUS1, W_EMPTY };

struct field_rule {
    const char *name;
    int kinds;          /* K_* where the field exists */
    enum field_use use;
    enum field_want want;
    const char *why;    /* neutral: what we lack, said in the refusal */
};

static const struct field_rule fields[] = {
    /* implemented (OpenAI, vLLM and llama.cpp names; parsed below) */
    {"model", K_GEN | K_TOK | K_DETOK, F_IMPL, W_ANY, NULL},
    {"prompt", K_CMPL | K_TOK, F_IMPL, W_ANY, NULL},
    {"messages", K_CHAT | K_TOK, F_IMPL, W_ANY, NULL},
    {"tokens", K_DETOK, F_IMPL, W_ANY, NULL},
    {"add_special_tokens", K_GEN | K_TOK, F_IMPL, W_ANY, NULL},
    {"return_token_strs", K_TOK, F_IMPL, W_ANY, NULL},
    {"n", K_GEN, F_IMPL, W_ANY, NULL},
    {"best_of", K_CMPL, F_IMPL, W_ANY, NULL},
    {"stream", K_GEN, F_IMPL, W_ANY, NULL},
    {"stream_options", K_GEN, F_IMPL, W_ANY, NULL},
    {"return_progress", K_GEN, F_IMPL, W_ANY, NULL},
    {"max_tokens", K_GEN, F_IMPL, W_ANY, NULL},
    {"max_completion_tokens", K_CHAT, F_IMPL, W_ANY, NULL},
    {"min_tokens", K_GEN, F_IMPL, W_ANY, NULL},
    {"temperature", K_GEN, F_IMPL, W_ANY, NULL},
    {"top_p", K_GEN, F_IMPL, W_ANY, NULL},
    {"top_k", K_GEN, F_IMPL, W_ANY, NULL},
    {"min_p", K_GEN, F_IMPL, W_ANY, NULL},
    {"presence_penalty", K_GEN, F_IMPL, W_ANY, NULL},
    {"frequency_penalty", K_GEN, F_IMPL, W_ANY, NULL},
    {"repetition_penalty", K_GEN, F_IMPL, W_ANY, NULL},
    {"seed", K_GEN, F_IMPL, W_ANY, NULL},
    {"ignore_eos", K_GEN, F_IMPL, W_ANY, NULL},
    {"logit_bias", K_GEN, F_IMPL, W_ANY, NULL},
    {"stop", K_GEN, F_IMPL, W_ANY, NULL},
    {"stop_token_ids", K_GEN, F_IMPL, W_ANY, NULL},
    {"include_stop_str_in_output", K_GEN, F_IMPL, W_ANY, NULL},
    {"echo", K_CMPL, F_IMPL, W_ANY, NULL},
    {"logprobs", K_GEN, F_IMPL, W_ANY, NULL},
    {"top_logprobs", K_CHAT, F_IMPL, W_ANY, NULL},
    {"prompt_logprobs", K_GEN, F_IMPL, W_ANY, NULL},
    {"truncate_prompt_tokens", K_GEN, F_IMPL, W_ANY, NULL},
    {"truncation_side", K_CMPL, F_IMPL, W_ANY, NULL},
    {"priority", K_GEN, F_IMPL, W_ANY, NULL},
    {"cache_salt", K_GEN, F_IMPL, W_ANY, NULL},
    {"request_id", K_GEN, F_IMPL, W_ANY, NULL},
    {"string_config", K_GEN, F_IMPL, W_ANY, NULL},
    {"suffix", K_CMPL, F_IMPL, W_ANY, NULL},
    {"response_format", K_GEN, F_IMPL, W_ANY, NULL},
    {"tools", K_CHAT | K_TOK, F_IMPL, W_ANY, NULL},
    {"tool_choice", K_CHAT | K_TOK, F_IMPL, W_ANY, NULL},
    {"chat_template", K_CHAT | K_TOK, F_IMPL, W_ANY, NULL},
    {"chat_template_kwargs", K_CHAT | K_TOK, F_IMPL, W_ANY, NULL},
    {"add_generation_prompt", K_CHAT | K_TOK, F_IMPL, W_ANY, NULL},
    {"continue_final_message", K_CHAT | K_TOK, F_IMPL, W_ANY, NULL},
    {"documents", K_CHAT | K_TOK, F_IMPL, W_ANY, NULL},
    {"function_call", K_CHAT, F_IMPL, W_ANY, NULL},
    {"modalities", K_CHAT, F_IMPL, W_ANY, NULL},
    {"service_tier", K_GEN, F_IMPL, W_ANY, NULL},
    /* accepted: they change nothing in the answer */
    {"user", K_GEN, F_NOOP, W_STR, NULL},
    {"metadata", K_GEN, F_NOOP, W_OBJ, NULL},
    {"session_id", K_GEN, F_NOOP, W_STR, NULL},
    {"prompt_cache_key", K_GEN, F_NOOP, W_STR, NULL},
    {"safety_identifier", K_GEN, F_NOOP, W_STR, NULL},
    {"stream_interval", K_GEN, F_NOOP, W_INT, NULL},       /* chunking only: tokens go out as they come */
    {"sse_ping_interval", K_GEN, F_NOOP, W_NUM, NULL},     /* ": keep-alive" every 5 s regardless */
    {"prediction", K_CHAT, F_NOOP, W_OBJ, NULL},           /* a latency hint */
    {"parallel_tool_calls", K_CHAT, F_IMPL, W_BOOL, NULL},
    {"return_token_offsets", K_GEN, F_NOOP, W_BOOL, NULL}, /* vLLM: render endpoints only */
    {"return_mm_kwargs", K_GEN, F_NOOP, W_BOOL, NULL},     /* vLLM: render endpoints only */
    {"id_slot", K_GEN, F_NOOP, W_INT, NULL},               /* llama.cpp's slot: ours are all alike */
    {"repeat_last_n", K_GEN, F_NOOP, W_INT, NULL},         /* acts only with repeat_penalty != 1 */
    {"dry_base", K_GEN, F_NOOP, W_NUM, NULL},              /* these act only with dry_multiplier != 0 */
    {"dry_allowed_length", K_GEN, F_NOOP, W_INT, NULL},
    {"dry_penalty_last_n", K_GEN, F_NOOP, W_INT, NULL},
    {"dry_sequence_breakers", K_GEN, F_NOOP, W_LIST, NULL},
    {"xtc_threshold", K_GEN, F_NOOP, W_NUM, NULL},         /* acts only with xtc_probability != 0 */
    {"mirostat_tau", K_GEN, F_NOOP, W_NUM, NULL},          /* these act only with mirostat != 0 */
    {"mirostat_eta", K_GEN, F_NOOP, W_NUM, NULL},
    {"dynatemp_exponent", K_GEN, F_NOOP, W_NUM, NULL},     /* acts only with dynatemp_range != 0 */
    /* features we do not have: accepted only switched off */
    {"use_beam_search", K_GEN, F_NEUTRAL, W_FALSE, "beam search"},
    {"length_penalty", K_GEN, F_NEUTRAL, W_ONE, "beam search"},
    {"skip_special_tokens", K_GEN, F_NEUTRAL, W_TRUE, "special tokens are always left out of the text"},
    {"spaces_between_special_tokens", K_GEN, F_NEUTRAL, W_TRUE, "special tokens are always left out of the text"},
    {"allowed_token_ids", K_GEN, F_NEUTRAL, W_EMPTY, "use logit_bias"},
    {"bad_words", K_GEN, F_NEUTRAL, W_EMPTY, "use logit_bias"},
    {"logprob_token_ids", K_GEN, F_NEUTRAL, W_NULL, "use logprobs"},
    {"return_tokens_as_token_ids", K_GEN, F_NEUTRAL, W_FALSE, NULL},
    {"return_token_ids", K_GEN, F_NEUTRAL, W_FALSE, "use /tokenize"},
    {"prompt_embeds", K_CMPL, F_NEUTRAL, W_NULL, "text and token-id prompts only"},
    {"structured_outputs", K_GEN, F_NEUTRAL, W_NULL, "no constrained decoding"},
    {"guided_json", K_GEN, F_NEUTRAL, W_NULL, "no constrained decoding"},
    {"guided_regex", K_GEN, F_NEUTRAL, W_NULL, "no constrained decoding"},
    {"guided_choice", K_GEN, F_NEUTRAL, W_NULL, "no constrained decoding"},
    {"guided_grammar", K_GEN, F_NEUTRAL, W_NULL, "no constrained decoding"},
    {"guided_json_object", K_GEN, F_NEUTRAL, W_FALSE, "no constrained decoding"},
    {"guided_decoding_backend", K_GEN, F_NEUTRAL, W_NULL, "no constrained decoding"},
    {"guided_whitespace_pattern", K_GEN, F_NEUTRAL, W_NULL, "no constrained decoding"},
    {"grammar", K_GEN, F_NEUTRAL, W_EMPTY, "no constrained decoding"},
    {"json_schema", K_GEN, F_NEUTRAL, W_NULL, "no constrained decoding"},
    {"logits_processors", K_GEN, F_NEUTRAL, W_EMPTY, NULL},
    {"kv_transfer_params", K_GEN, F_NEUTRAL, W_NULL, "no disaggregated serving"},
    {"ec_transfer_params", K_GEN, F_NEUTRAL, W_NULL, "no disaggregated serving"},
    {"vllm_xargs", K_GEN, F_NEUTRAL, W_EMPTY, "no extensions"},
    {"routed_experts_prompt_start", K_GEN, F_NEUTRAL, W_ZERO, "dense models only"},
    {"repetition_detection", K_GEN, F_NEUTRAL, W_NULL, NULL},
    {"max_repetition_pattern_size", K_GEN, F_NEUTRAL, W_ZERO, NULL},
    {"min_repetition_pattern_size", K_GEN, F_NEUTRAL, W_ZERO, NULL},
    {"repetition_min_count", K_GEN, F_NEUTRAL, W_ZERO, NULL},
    {"thinking_token_budget", K_GEN, F_NEUTRAL, W_MINUS1, "no reasoning parser"},
    {"include_reasoning", K_CHAT, F_NEUTRAL, W_TRUE, "no reasoning parser"},
    {"reasoning_effort", K_CHAT, F_NEUTRAL, W_NULL, "send it to the template in chat_template_kwargs"},
    {"watermarking", K_GEN, F_NEUTRAL, W_FALSE, NULL},
    {"mm_processor_kwargs", K_CHAT | K_TOK, F_NEUTRAL, W_EMPTY, "text only"},
    {"audio", K_CHAT, F_NEUTRAL, W_NULL, "text only"},
    {"store", K_CHAT, F_NEUTRAL, W_FALSE, "completions are not stored"},
    {"verbosity", K_CHAT, F_NEUTRAL, W_NULL, NULL},
    {"web_search_options", K_CHAT, F_NEUTRAL, W_NULL, "no web search"},
    {"functions", K_CHAT, F_NEUTRAL, W_EMPTY, "no function calling"},
    {"echo", K_CHAT, F_NEUTRAL, W_FALSE, "chat echo"},
    /* llama.cpp's samplers and options */
    {"n_predict", K_GEN, F_NEUTRAL, W_NULL, "use max_tokens"},
    {"n_probs", K_GEN, F_NEUTRAL, W_ZERO, "use logprobs"},
    {"n_cmpl", K_GEN, F_NEUTRAL, W_ONE, "use n"},
    {"n_keep", K_GEN, F_NEUTRAL, W_ZERO, "a prompt that does not fit is refused (or truncate_prompt_tokens)"},
    {"n_indent", K_GEN, F_NEUTRAL, W_ZERO, NULL},
    {"repeat_penalty", K_GEN, F_NEUTRAL, W_ONE, "repetition_penalty acts over the whole sequence (HF)"},
    {"penalize_nl", K_GEN, F_NEUTRAL, W_FALSE, NULL},
    {"typical_p", K_GEN, F_NEUTRAL, W_ONE, "no typical sampling"},
    {"tfs_z", K_GEN, F_NEUTRAL, W_ONE, "no tail-free sampling"},
    {"top_n_sigma", K_GEN, F_NEUTRAL, W_MINUS1, NULL},
    {"min_keep", K_GEN, F_NEUTRAL, W_ZERO, NULL},
    {"dry_multiplier", K_GEN, F_NEUTRAL, W_ZERO, "no DRY sampler"},
    {"xtc_probability", K_GEN, F_NEUTRAL, W_ZERO, "no XTC sampler"},
    {"mirostat", K_GEN, F_NEUTRAL, W_ZERO, "no mirostat"},
    {"dynatemp_range", K_GEN, F_NEUTRAL, W_ZERO, "no dynamic temperature"},
    {"samplers", K_GEN, F_NEUTRAL, W_NULL, "the sampler order is fixed (README)"},
    {"cache_prompt", K_GEN, F_NEUTRAL, W_TRUE, "the prefix cache is server-wide (--no-prefix-cache)"},
    {"t_max_predict_ms", K_GEN, F_NEUTRAL, W_ZERO, "see --request-timeout"},
    {"return_tokens", K_GEN, F_NEUTRAL, W_FALSE, "use /tokenize"},
    {"timings_per_token", K_GEN, F_NEUTRAL, W_FALSE, NULL},
    {"post_sampling_probs", K_GEN, F_NEUTRAL, W_FALSE, "logprobs are those of the raw logits"},
    {"response_fields", K_GEN, F_NEUTRAL, W_EMPTY, NULL},
    {"lora", K_GEN, F_NEUTRAL, W_EMPTY, "no LoRA adapters"},
};
#define N_FIELDS (int)(sizeof fields / sizeof fields[0])

static const struct field_rule *find_field(const char *name, int kind)
{
    for (int i = 0; i < N_FIELDS; i++)
        if ((fields[i].kinds & kind) && !strcmp(fields[i].name, name)) return &fields[i];
    return NULL;
}

static int want_ok(const cJSON *v, enum field_want w)
{
    switch (w) {
    case W_ANY: return 1;
    case W_STR: return cJSON_IsString(v);
    case W_BOOL: return cJSON_IsBool(v);
    case W_INT: return cJSON_IsNumber(v) && floor(v->valuedouble) == v->valuedouble;
    case W_NUM: return cJSON_IsNumber(v);
    case W_OBJ: return cJSON_IsObject(v);
    case W_LIST: return cJSON_IsArray(v);
    case W_NULL: return 0; /* null is taken before */
    case W_FALSE: return cJSON_IsFalse(v);
    case W_TRUE: return cJSON_IsTrue(v);
    case W_ZERO: return cJSON_IsNumber(v) && v->valuedouble == 0;
    case W_ONE: return cJSON_IsNumber(v) && v->valuedouble == 1;
    case W_MINUS1: return cJSON_IsNumber(v) && v->valuedouble == -1;
    case W_EMPTY:
        return ((cJSON_IsArray(v) || cJSON_IsObject(v)) && !v->child) ||
               (cJSON_IsString(v) && !v->valuestring[0]);
    }
    return 0;
}

static const char *want_name(enum field_want w)
{
    static const char *names[] = {"anything", "a string", "a boolean", "an integer", "a number",
                                  "an object", "a list", "null", "false", "true", "0", "1", "-1",
                                  "null or empty"};
    return names[w];
}

/* Edit distance, for "did you mean" (short names only). */
static int edit_distance(const char *a, const char *b)
{
    int la = (int)strlen(a), lb = (int)strlen(b);
    if (la > 40 || lb > 40) return 99;
    int d[41][41];
    for (int i = 0; i <= la; i++) d[i][0] = i;
    for (int j = 0; j <= lb; j++) d[0][j] = j;
    for (int i = 1; i <= la; i++)
        for (int j = 1; j <= lb; j++) {
            int c = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < c) c = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < c) c = d[i][j - 1] + 1;
            d[i][j] = c;
        }
    return d[la][lb];
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Every top-level field: known for this endpoint, given once, and (no-op and neutral ones)
 * of the right type or value. Implemented fields are checked by their parsers. */
static int check_fields(const cJSON *root, int kind, struct oai_error *e)
{
    int n = cJSON_GetArraySize(root);
    if (n > N_FIELDS) /* so the checks below stay cheap on a body of a million keys */
        return oai_err(e, 400, NULL, NULL, "the request body has %d fields; there are %d known ones", n, N_FIELDS);
    const cJSON *it;
    cJSON_ArrayForEach(it, root) {
        const struct field_rule *f = find_field(it->string, kind);
        if (!f) {
            if (!strcmp(it->string, "extra_body"))
                return oai_err(e, 400, "extra_body", "unknown_parameter", "'extra_body' is a client-side "
                               "option of the openai SDKs: put its fields at the top level of the body");
            const char *best = NULL;
            int bd = 3;
            for (int i = 0; i < N_FIELDS; i++) {
                if (!(fields[i].kinds & kind)) continue;
                int d = edit_distance(it->string, fields[i].name);
                if (d < bd) { bd = d; best = fields[i].name; }
            }
            return oai_err(e, 400, it->string, "unknown_parameter", "unknown field '%.60s'%s%s%s (this server "
                           "refuses fields it does not know rather than ignore them)", it->string,
                           best ? ": did you mean '" : "", best ? best : "", best ? "'?" : "");
        }
        if (cJSON_IsNull(it) || f->use == F_IMPL) continue;
        if (want_ok(it, f->want)) continue;
        if (f->use == F_NOOP)
            return oai_err(e, 400, f->name, NULL, "'%s' must be %s, got %s", f->name, want_name(f->want),
                           json_type_name(it));
        return oai_err(e, 400, f->name, "unsupported_parameter", "'%s' is not supported by this server%s%s%s; "
                       "only %s is accepted", f->name, f->why ? " (" : "", f->why ? f->why : "",
                       f->why ? ")" : "", want_name(f->want));
    }
    /* a key given twice: cJSON keeps both, Python (vLLM) takes the last; refuse */
    const char **names = xmalloc(sizeof *names * (size_t)(n ? n : 1));
    int k = 0;
    cJSON_ArrayForEach(it, root) names[k++] = it->string;
    qsort(names, (size_t)k, sizeof *names, cmp_str);
    for (int i = 1; i < k; i++) {
        if (!strcmp(names[i - 1], names[i])) {
            oai_err(e, 400, names[i], NULL, "'%.60s' is given more than once", names[i]);
            free(names);
            return -1;
        }
    }
    free(names);
    return 0;
}

int oai_field_count(void) { return N_FIELDS; }

const char *oai_field_name(int i, int *disposition)
{
    if (i < 0 || i >= N_FIELDS) return NULL;
    if (disposition) *disposition = (int)fields[i].use;
    return fields[i].name;
}

/* ---------------------------------------------------------------------------------------------
 * prompts and messages */

static int parse_ids(const cJSON *arr, int vocab_size, const char *param, int32_t **ids, int *n,
                     struct oai_error *e)
{
    int cnt = cJSON_GetArraySize(arr);
    if (cnt == 0) return oai_err(e, 400, param, NULL, "'%s' must not be an empty list", param);
    int32_t *v = xmalloc(sizeof(int32_t) * (size_t)cnt);
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        if (!is_integral(it)) {
            free(v);
            return oai_err(e, 400, param, NULL, "'%s' must hold integer token ids, item %d is %s",
                           param, i, json_type_name(it));
        }
        double d = it->valuedouble;
        if (d < 0 || d >= vocab_size) {
            free(v);
            return oai_err(e, 400, param, NULL,
                           "'%s': token id %.0f at position %d is out of range [0, %d)", param, d, i,
                           vocab_size);
        }
        v[i++] = (int32_t)d;
    }
    *ids = v;
    *n = cnt;
    return 0;
}

static int parse_prompt(const cJSON *root, int vocab_size, struct oai_request *r,
                        struct oai_error *e)
{
    const cJSON *p = field(root, "prompt");
    if (!p) return oai_err(e, 400, "prompt", NULL, "'prompt' is required");
    if (cJSON_IsString(p)) {
        if (check_utf8(p->valuestring, "prompt", e)) return -1;
        r->prompts = xcalloc(1, sizeof *r->prompts);
        r->n_prompts = 1;
        r->prompts[0].text = xstrdup(p->valuestring);
        return 0;
    }
    if (!cJSON_IsArray(p))
        return oai_err(e, 400, "prompt", NULL,
                       "'prompt' must be a string, a list of token ids, or a list of either; got %s",
                       json_type_name(p));
    int cnt = cJSON_GetArraySize(p);
    if (cnt == 0) return oai_err(e, 400, "prompt", NULL, "'prompt' must not be an empty list");
    if (cJSON_IsNumber(p->child)) { /* one prompt as token ids */
        r->prompts = xcalloc(1, sizeof *r->prompts);
        r->n_prompts = 1;
        return parse_ids(p, vocab_size, "prompt", &r->prompts[0].ids, &r->prompts[0].n_ids, e);
    }
    r->prompts = xcalloc((size_t)cnt, sizeof *r->prompts);
    r->n_prompts = cnt;
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, p) {
        if (cJSON_IsString(it)) {
            if (check_utf8(it->valuestring, "prompt", e)) return -1;
            r->prompts[i].text = xstrdup(it->valuestring);
        } else if (cJSON_IsArray(it)) {
            if (parse_ids(it, vocab_size, "prompt", &r->prompts[i].ids, &r->prompts[i].n_ids, e))
                return -1;
        } else {
            return oai_err(e, 400, "prompt", NULL,
                           "'prompt' item %d must be a string or a list of token ids, got %s", i,
                           json_type_name(it));
        }
        i++;
    }
    return 0;
}

/* content: a string, or a list of {"type":"text","text":...} parts (joined with "\n", as vLLM's
 * parse_chat_messages joins them). */
static int parse_content(const cJSON *c, int i, char **out, struct oai_error *e)
{
    if (!c) {
        *out = xstrdup("");
        return 0;
    }
    if (cJSON_IsString(c)) {
        if (check_utf8(c->valuestring, "messages", e)) return -1;
        *out = xstrdup(c->valuestring);
        return 0;
    }
    if (!cJSON_IsArray(c))
        return oai_err(e, 400, "messages", NULL,
                       "messages[%d].content must be a string or a list of text parts, got %s", i,
                       json_type_name(c));
    struct strbuf b = {0};
    sb_append(&b, "", 0);
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0 || !cJSON_IsString(text)) {
            sb_free(&b);
            return oai_err(e, 400, "messages", "unsupported_content",
                           "messages[%d].content: only {\"type\":\"text\",\"text\":...} parts are "
                           "supported (this model reads text only)", i);
        }
        if (check_utf8(text->valuestring, "messages", e)) {
            sb_free(&b);
            return -1;
        }
        if (part != c->child) sb_puts(&b, "\n");
        sb_puts(&b, text->valuestring);
    }
    *out = b.p;
    return 0;
}

/* A message's own fields. role and content are read; name, tool_calls (assistant), tool_call_id
 * (tool), reasoning (assistant), task and tools (developer) reach a Jinja chat template as vLLM
 * gives them (jinja.c chat_messages); parse_messages checks their types and records the first
 * one that is set (a built-in template cannot show it: chat_apply refuses it there). Fields no
 * template is given (function_call, refusal, reasoning_content, audio, or a field of another
 * role) are refused unless empty: the model would not see them. */
static int check_message_keys(const cJSON *msg, int i, enum chat_role role, int developer,
                              struct oai_request *r, struct oai_error *e)
{
    static const char *const unshown[] = {"function_call", "refusal", "reasoning_content", "audio"};
    const cJSON *k;
    cJSON_ArrayForEach(k, msg) {
        const char *ks = k->string;
        if (!strcmp(ks, "role") || !strcmp(ks, "content")) continue;
        int shown = !strcmp(ks, "name") || !strcmp(ks, "task") ||
                    (!strcmp(ks, "tool_calls") && role == CHAT_ASSISTANT) ||
                    (!strcmp(ks, "reasoning") && role == CHAT_ASSISTANT) ||
                    (!strcmp(ks, "tool_call_id") && role == CHAT_TOOL) ||
                    (!strcmp(ks, "tools") && developer);
        int known = shown || !strcmp(ks, "tool_calls") || !strcmp(ks, "reasoning") ||
                    !strcmp(ks, "tool_call_id") || !strcmp(ks, "tools");
        for (size_t u = 0; u < sizeof unshown / sizeof *unshown; u++) known |= !strcmp(ks, unshown[u]);
        if (!known)
            return oai_err(e, 400, "messages", "unknown_parameter", "messages[%d] has an unknown field "
                           "'%.60s' (role, content, name, tool_calls, tool_call_id, reasoning)", i, ks);
        if (cJSON_IsNull(k) || want_ok(k, W_EMPTY)) continue;
        if (!shown)
            return oai_err(e, 400, "messages", "unsupported_parameter", "messages[%d].%s is not supported %s(the "
                           "chat template would not see it)", i, ks,
                           !strcmp(ks, "tool_calls") || !strcmp(ks, "reasoning") ? "on a non-assistant message "
                           : !strcmp(ks, "tool_call_id") ? "on a non-tool message "
                           : !strcmp(ks, "tools") ? "on a non-developer message " : "");
        if (!r->template_only_field[0]) {
            r->template_only_msg = i;
            snprintf(r->template_only_field, sizeof r->template_only_field, "%s", ks);
        }
    }
    return 0;
}

/* An assistant message's tool_calls: [{"id"?, "type"?, "function": {"name": str, "arguments": str |
 * object}}] (what a chat template reads; the body itself goes to the template). */
static int check_tool_calls(const cJSON *tc, int i, struct oai_error *e)
{
    if (!cJSON_IsArray(tc))
        return oai_err(e, 400, "messages", NULL, "messages[%d].tool_calls must be a list, got %s", i, json_type_name(tc));
    int k = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, tc) {
        const cJSON *fn = cJSON_IsObject(it) ? cJSON_GetObjectItemCaseSensitive(it, "function") : NULL;
        const cJSON *name = cJSON_IsObject(fn) ? cJSON_GetObjectItemCaseSensitive(fn, "name") : NULL;
        const cJSON *args = cJSON_IsObject(fn) ? field(fn, "arguments") : NULL;
        if (!cJSON_IsString(name))
            return oai_err(e, 400, "messages", NULL, "messages[%d].tool_calls[%d] needs \"function\": {\"name\": "
                           "string, \"arguments\": string}", i, k);
        if (args && !cJSON_IsString(args) && !cJSON_IsObject(args))
            return oai_err(e, 400, "messages", NULL, "messages[%d].tool_calls[%d].function.arguments must be a "
                           "JSON string (or an object), got %s", i, k, json_type_name(args));
        k++;
    }
    return 0;
}

static int parse_messages(const cJSON *root, struct oai_request *r, struct oai_error *e)
{
    const cJSON *m = field(root, "messages");
    if (!m) return oai_err(e, 400, "messages", NULL, "'messages' is required");
    if (!cJSON_IsArray(m))
        return oai_err(e, 400, "messages", NULL, "'messages' must be a list, got %s",
                       json_type_name(m));
    int cnt = cJSON_GetArraySize(m);
    if (cnt == 0) return oai_err(e, 400, "messages", NULL, "'messages' must not be empty");
    if (cnt > OAI_MAX_MESSAGES)
        return oai_err(e, 400, "messages", NULL, "'messages' holds %d messages; at most %d", cnt,
                       OAI_MAX_MESSAGES);
    r->msgs = xcalloc((size_t)cnt, sizeof *r->msgs);
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, m) {
        if (!cJSON_IsObject(it))
            return oai_err(e, 400, "messages", NULL, "messages[%d] must be an object, got %s", i,
                           json_type_name(it));
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(it, "role");
        if (!cJSON_IsString(role))
            return oai_err(e, 400, "messages", NULL, "messages[%d].role must be a string", i);
        const char *rs = role->valuestring;
        if (!strcmp(rs, "system") || !strcmp(rs, "developer")) r->msgs[i].role = CHAT_SYSTEM;
        else if (!strcmp(rs, "user")) r->msgs[i].role = CHAT_USER;
        else if (!strcmp(rs, "assistant")) r->msgs[i].role = CHAT_ASSISTANT;
        else if (!strcmp(rs, "tool")) r->msgs[i].role = CHAT_TOOL;
        else
            return oai_err(e, 400, "messages", NULL,
                           "messages[%d].role '%.32s' is not supported (system, developer, user, "
                           "assistant, tool)", i, rs);
        r->n_msgs = i + 1; /* so that oai_request_free frees what is filled */
        if (check_message_keys(it, i, r->msgs[i].role, !strcmp(rs, "developer"), r, e)) return -1;
        const cJSON *tc = field(it, "tool_calls");
        if (tc && r->msgs[i].role == CHAT_ASSISTANT && check_tool_calls(tc, i, e)) return -1;
        static const char *const str_fields[] = {"tool_call_id", "name", "reasoning", "task"};
        for (int k = 0; k < 4; k++) {
            const cJSON *v = field(it, str_fields[k]);
            if (v && !cJSON_IsString(v))
                return oai_err(e, 400, "messages", NULL, "messages[%d].%s must be a string, got %s", i,
                               str_fields[k], json_type_name(v));
        }
        if (parse_content(field(it, "content"), i, &r->msgs[i].content, e)) return -1;
        i++;
    }
    return 0;
}

/* stop: a string or a list of strings. */
static int parse_stop(const cJSON *root, struct oai_request *r, struct oai_error *e)
{
    const cJSON *s = field(root, "stop");
    if (!s) return 0;
    const cJSON *one = NULL;
    if (cJSON_IsString(s)) one = s;
    else if (!cJSON_IsArray(s))
        return oai_err(e, 400, "stop", NULL, "'stop' must be a string or a list of strings, got %s",
                       json_type_name(s));
    int cnt = one ? 1 : cJSON_GetArraySize(s);
    if (cnt > OAI_MAX_STOP)
        return oai_err(e, 400, "stop", NULL, "'stop' holds %d strings; at most %d", cnt, OAI_MAX_STOP);
    const cJSON *it = one ? one : s->child;
    for (int i = 0; i < cnt; i++, it = it->next) {
        if (!cJSON_IsString(it))
            return oai_err(e, 400, "stop", NULL, "'stop' item %d must be a string, got %s", i,
                           json_type_name(it));
        size_t n = strlen(it->valuestring);
        if (n == 0) return oai_err(e, 400, "stop", NULL, "'stop' item %d is empty", i);
        if (n > OAI_MAX_STOP_LEN)
            return oai_err(e, 400, "stop", NULL, "'stop' item %d is %zu bytes; at most %d", i, n,
                           OAI_MAX_STOP_LEN);
        if (check_utf8(it->valuestring, "stop", e)) return -1;
        r->stop[r->n_stop++] = xstrdup(it->valuestring);
    }
    return 0;
}

/* logit_bias: OpenAI's {"token_id": bias} map or llama.cpp's [[id, bias], ...]. */
static int parse_logit_bias(const cJSON *root, int vocab_size, struct sampling_params *sp,
                            struct oai_error *e)
{
    const cJSON *lb = field(root, "logit_bias");
    if (!lb) return 0;
    if (!cJSON_IsObject(lb) && !cJSON_IsArray(lb))
        return oai_err(e, 400, "logit_bias", NULL,
                       "'logit_bias' must be an object mapping token ids to biases, got %s",
                       json_type_name(lb));
    int cnt = cJSON_GetArraySize(lb);
    if (cnt > ENGINE_MAX_LOGIT_BIAS)
        return oai_err(e, 400, "logit_bias", NULL, "'logit_bias' holds %d entries; at most %d", cnt,
                       ENGINE_MAX_LOGIT_BIAS);
    const cJSON *it;
    cJSON_ArrayForEach(it, lb) {
        double id, bias;
        const cJSON *bv;
        if (cJSON_IsObject(lb)) {
            /* a key is a token id written canonically: "5", never " 5", "05", "+5" or "5.0" */
            const char *k = it->string;
            size_t kl = strlen(k), d = strspn(k, "0123456789");
            long long v = d == kl && kl > 0 && kl <= 10 && (kl == 1 || k[0] != '0') ? atoll(k) : -1;
            if (v < 0 || v >= vocab_size)
                return oai_err(e, 400, "logit_bias", NULL, "'logit_bias' key \"%.40s\" is not a token id "
                               "in [0, %d) written as a plain integer", k, vocab_size);
            id = (double)v;
            bv = it;
        } else {
            if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) != 2 || !is_integral(it->child))
                return oai_err(e, 400, "logit_bias", NULL,
                               "'logit_bias' list items must be [token_id, bias] pairs");
            id = it->child->valuedouble;
            if (id < 0 || id >= vocab_size)
                return oai_err(e, 400, "logit_bias", NULL,
                               "'logit_bias' token id %.0f is not in [0, %d)", id, vocab_size);
            bv = it->child->next;
        }
        if (!cJSON_IsNumber(bv))
            return oai_err(e, 400, "logit_bias", NULL, "'logit_bias' bias for token %.0f must be a "
                           "number, got %s", id, json_type_name(bv));
        bias = bv->valuedouble;
        if (!(bias >= -100 && bias <= 100))
            return oai_err(e, 400, "logit_bias", NULL,
                           "'logit_bias' bias for token %.0f must be between -100 and 100, got %g",
                           id, bias);
        sp->logit_bias_ids[sp->n_logit_bias] = (int32_t)id;
        sp->logit_bias_vals[sp->n_logit_bias] = (float)bias;
        sp->n_logit_bias++;
    }
    return 0;
}

static int parse_stop_ids(const cJSON *root, int vocab_size, struct sampling_params *sp,
                          struct oai_error *e)
{
    const cJSON *s = field(root, "stop_token_ids");
    if (!s) return 0;
    if (!cJSON_IsArray(s))
        return oai_err(e, 400, "stop_token_ids", NULL, "'stop_token_ids' must be a list of token ids");
    if (cJSON_GetArraySize(s) == 0) return 0;
    if (cJSON_GetArraySize(s) > OAI_MAX_STOP_IDS)
        return oai_err(e, 400, "stop_token_ids", NULL, "'stop_token_ids' holds more than %d ids",
                       OAI_MAX_STOP_IDS);
    return parse_ids(s, vocab_size, "stop_token_ids", &sp->stop_ids, &sp->n_stop_ids, e);
}

/* ---------------------------------------------------------------------------------------------
 * the request */

/* seed: any integer in [0, 2^64 - 1], read exactly from the JSON text (a double holds 53
 * bits). vLLM takes int64 and OpenAI any integer; a negative seed has no agreed meaning (llama.cpp
 * reads -1 as "draw one"), so it is refused rather than guessed. */
static int parse_seed(const cJSON *root, const struct body_scan *bs, struct sampling_params *sp,
                      struct oai_error *e)
{
    const cJSON *seed = field(root, "seed");
    if (!seed) return 0;
    const struct raw_member *m = raw_member(bs, "seed");
    uint64_t u = 0;
    int rc = cJSON_IsNumber(seed) && m ? exact_integer(m->val, m->n, 1, &u, NULL) : 2;
    if (rc == 1) { /* 5.0, 1e3: integral values a double holds exactly */
        double d = seed->valuedouble;
        rc = is_integral(seed) && d >= 0 && d <= 9007199254740992.0 ? 0 : -1;
        u = rc == 0 ? (uint64_t)d : 0;
    }
    if (rc != 0)
        return oai_err(e, 400, "seed", NULL, "'seed' must be an integer in [0, 18446744073709551615] "
                       "(write it as a plain integer; omit it for a random one), got %s",
                       !cJSON_IsNumber(seed) ? json_type_name(seed) : rc == 2 ? "a number" : "a number out of range "
                       "or with a fraction");
    sp->seed = u;
    sp->has_seed = 1;
    return 0;
}

static int parse_sampling(const cJSON *root, const struct body_scan *bs, enum oai_kind kind,
                          int vocab_size, struct oai_request *r, struct oai_error *e)
{
    struct sampling_params *sp = &r->sp;
    long long v;
    static const struct { const char *name; unsigned bit; } given[] = {
        {"temperature", OAI_GIVEN_TEMPERATURE}, {"top_p", OAI_GIVEN_TOP_P}, {"top_k", OAI_GIVEN_TOP_K},
        {"min_p", OAI_GIVEN_MIN_P}, {"repetition_penalty", OAI_GIVEN_REPETITION_PENALTY}};
    for (size_t i = 0; i < sizeof given / sizeof *given; i++)
        if (field(root, given[i].name)) r->given |= given[i].bit;
    if (get_num(root, "temperature", 0, 2, &sp->temperature, e)) return -1;
    if (get_num(root, "top_p", 0, 1, &sp->top_p, e)) return -1;
    if (field(root, "top_p") && sp->top_p <= 0)
        return oai_err(e, 400, "top_p", NULL, "'top_p' must be in (0, 1], got 0");
    v = -1;
    if (get_int(root, "top_k", -1, 1e9, &v, e)) return -1;
    sp->top_k = v <= 0 ? 0 : (int)v;
    if (get_num(root, "min_p", 0, 1, &sp->min_p, e)) return -1;
    if (get_num(root, "presence_penalty", -2, 2, &sp->presence_penalty, e)) return -1;
    if (get_num(root, "frequency_penalty", -2, 2, &sp->frequency_penalty, e)) return -1;
    if (get_num(root, "repetition_penalty", 0, 10, &sp->repetition_penalty, e)) return -1;
    if (field(root, "repetition_penalty") && sp->repetition_penalty <= 0)
        return oai_err(e, 400, "repetition_penalty", NULL, "'repetition_penalty' must be > 0, got 0");
    if (parse_seed(root, bs, sp, e)) return -1;
    if (get_bool(root, "ignore_eos", &sp->ignore_eos, e)) return -1;
    if (parse_string_config(root, r, e)) return -1;
    if (parse_logit_bias(root, vocab_size, sp, e)) return -1;
    if (parse_stop_ids(root, vocab_size, sp, e)) return -1;
    if (parse_stop(root, r, e)) return -1;
    if (get_bool(root, "include_stop_str_in_output", &r->include_stop_str, e)) return -1;

    /* max_tokens (chat: max_completion_tokens is the newer name; either works) */
    v = -1;
    if (kind == OAI_CHAT && get_int(root, "max_completion_tokens", 0, 1e9, &v, e)) return -1;
    if (v < 0 && get_int(root, "max_tokens", 0, 1e9, &v, e)) return -1;
    if (v >= 0) {
        sp->max_tokens = (int)v;
        r->max_tokens_set = 1;
    } else {
        sp->max_tokens = 16; /* completions default; chat: the rest of the context (check_length) */
    }
    /* min_tokens (vLLM): EOS and stop_token_ids masked, stop strings not matched, until then */
    v = 0;
    if (get_int(root, "min_tokens", 0, 1e9, &v, e)) return -1;
    sp->min_tokens = (int)v;
    if ((r->max_tokens_set || kind == OAI_COMPLETION) && sp->min_tokens > sp->max_tokens)
        return oai_err(e, 400, "min_tokens", NULL, "'min_tokens' (%d) must not exceed max_tokens (%d)",
                       sp->min_tokens, sp->max_tokens);
    return 0;
}

/* stream_options: vLLM's include_usage and continuous_usage_stats, and include_progress (the
 * same prefill progress events as llama.cpp's top-level return_progress). */
static int parse_stream_options(const cJSON *root, struct oai_request *r, struct oai_error *e)
{
    const cJSON *so = field(root, "stream_options");
    if (!so) return 0;
    if (!cJSON_IsObject(so))
        return oai_err(e, 400, "stream_options", NULL, "'stream_options' must be an object");
    if (!r->stream)
        return oai_err(e, 400, "stream_options", NULL, "'stream_options' is only allowed when 'stream' is true");
    const cJSON *k;
    cJSON_ArrayForEach(k, so) {
        if (strcmp(k->string, "include_usage") && strcmp(k->string, "continuous_usage_stats") &&
            strcmp(k->string, "include_progress"))
            return oai_err(e, 400, "stream_options", "unknown_parameter", "unknown field "
                           "'stream_options.%.60s' (include_usage, continuous_usage_stats, include_progress)",
                           k->string);
    }
    if (get_bool(so, "include_usage", &r->include_usage, e) ||
        get_bool(so, "continuous_usage_stats", &r->continuous_usage, e) ||
        get_bool(so, "include_progress", &r->include_progress, e)) {
        snprintf(e->param, sizeof e->param, "stream_options");
        return -1;
    }
    return 0;
}

/* priority: an int64, exact (vLLM's range); lower is served first. */
static int parse_priority(const cJSON *root, const struct body_scan *bs, struct oai_request *r,
                          struct oai_error *e)
{
    const cJSON *p = field(root, "priority");
    if (!p) return 0;
    const struct raw_member *m = raw_member(bs, "priority");
    int64_t v = 0;
    int rc = cJSON_IsNumber(p) && m ? exact_integer(m->val, m->n, 0, NULL, &v) : 2;
    if (rc == 1) {
        double d = p->valuedouble;
        rc = is_integral(p) && fabs(d) <= 9007199254740992.0 ? 0 : -1;
        v = rc == 0 ? (int64_t)d : 0;
    }
    if (rc != 0)
        return oai_err(e, 400, "priority", NULL, "'priority' must be an integer in [-2^63, 2^63 - 1], got %s",
                       json_type_name(p));
    r->priority = v;
    return 0;
}

/* The vLLM extras that shape the prompt: truncate_prompt_tokens (-1: to max_model_len; N: keep
 * N), truncation_side (left, the default, keeps the last N; right keeps the first N), and
 * prompt_logprobs (top-K with every prompt token, 0..20; refused when streaming, as vLLM). */
static int parse_prompt_extras(const cJSON *root, struct oai_request *r, struct oai_error *e)
{
    long long v = 0;
    const cJSON *t = field(root, "truncate_prompt_tokens");
    if (t) {
        if (get_int(root, "truncate_prompt_tokens", -1, 1e9, &v, e)) return -1;
        if (v == 0)
            return oai_err(e, 400, "truncate_prompt_tokens", NULL, "'truncate_prompt_tokens' must be -1 "
                           "(max_model_len) or a positive number of tokens, got 0");
        r->truncate = (int)v;
    }
    const cJSON *side = field(root, "truncation_side");
    if (side) {
        if (!cJSON_IsString(side) || (strcmp(side->valuestring, "left") && strcmp(side->valuestring, "right")))
            return oai_err(e, 400, "truncation_side", NULL, "'truncation_side' must be \"left\" (keep the "
                           "last tokens) or \"right\" (keep the first ones)");
        r->truncate_right = !strcmp(side->valuestring, "right");
    }
    const cJSON *pl = field(root, "prompt_logprobs");
    if (pl) {
        if (cJSON_IsNumber(pl) && pl->valuedouble == -1)
            return oai_err(e, 400, "prompt_logprobs", NULL, "'prompt_logprobs' -1 (the whole vocabulary) is "
                           "not supported; at most %d", ENGINE_MAX_LOGPROBS);
        if (get_int(root, "prompt_logprobs", 0, ENGINE_MAX_LOGPROBS, &v, e)) return -1;
        if (r->stream)
            return oai_err(e, 400, "prompt_logprobs", NULL, "'prompt_logprobs' are not available when "
                           "'stream' is true (as in vLLM); use echo + logprobs to stream them");
        r->prompt_logprobs = (int)v;
    }
    return 0;
}

/* cache_salt (vLLM: 1..1024 characters) -> a 64-bit salt of the prefix-cache key. */
static int parse_cache_salt(const cJSON *root, struct oai_request *r, struct oai_error *e)
{
    const cJSON *c = field(root, "cache_salt");
    if (!c) return 0;
    size_t n = cJSON_IsString(c) ? strlen(c->valuestring) : 0;
    if (n < 1 || n > 1024)
        return oai_err(e, 400, "cache_salt", NULL, "'cache_salt' must be a string of 1 to 1024 characters");
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)c->valuestring[i]) * 0x100000001b3ull;
    r->cache_salt = h ? h : 1;
    return 0;
}

/* request_id (vLLM): the response's id becomes "cmpl-<request_id>". */
static int parse_request_id(const cJSON *root, struct oai_request *r, struct oai_error *e)
{
    const cJSON *q = field(root, "request_id");
    if (!q) return 0;
    size_t n = cJSON_IsString(q) ? strlen(q->valuestring) : 0;
    if (n < 1 || n >= sizeof r->request_id || strspn(q->valuestring, "abcdefghijklmnopqrstuvwxyz"
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:") != n)
        return oai_err(e, 400, "request_id", NULL, "'request_id' must be 1 to %zu characters of "
                       "A-Z a-z 0-9 - _ . :", sizeof r->request_id - 1);
    memcpy(r->request_id, q->valuestring, n + 1);
    return 0;
}

static int parse_common(const cJSON *root, const struct body_scan *bs, enum oai_kind kind,
                        int vocab_size, int max_n, struct oai_request *r, struct oai_error *e)
{
    const cJSON *model = field(root, "model");
    if (model) {
        if (!cJSON_IsString(model))
            return oai_err(e, 400, "model", NULL, "'model' must be a string, got %s",
                           json_type_name(model));
        r->model = xstrdup(model->valuestring);
    }
    long long v = 1;
    if (get_int(root, "n", 1, max_n, &v, e)) return -1;
    r->n = (int)v;
    if (field(root, "best_of")) {
        if (get_int(root, "best_of", 1, max_n, &v, e)) return -1;
        if (v != 1 && v != r->n)
            return oai_err(e, 400, "best_of", "unsupported_parameter",
                           "'best_of' other than 1 (or n) is not supported, as in vLLM V1");
    }
    if (get_bool(root, "stream", &r->stream, e)) return -1;
    if (parse_stream_options(root, r, e)) return -1;
    int progress = 0; /* llama.cpp's spelling; it acts only when streaming, as there */
    if (get_bool(root, "return_progress", &progress, e)) return -1;
    if (progress && r->stream) r->include_progress = 1;
    if (parse_sampling(root, bs, kind, vocab_size, r, e)) return -1;
    if (parse_prompt_extras(root, r, e) || parse_priority(root, bs, r, e) ||
        parse_cache_salt(root, r, e) || parse_request_id(root, r, e))
        return -1;
    const cJSON *rf = field(root, "response_format");
    if (rf) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(rf, "type");
        if (!cJSON_IsObject(rf) || !cJSON_IsString(t) || strcmp(t->valuestring, "text") != 0 ||
            cJSON_GetArraySize(rf) != 1)
            return oai_err(e, 400, "response_format", "unsupported_parameter", "only 'response_format': "
                           "{\"type\": \"text\"} is supported (no constrained decoding)");
    }
    const cJSON *tier = field(root, "service_tier");
    if (tier && !(cJSON_IsString(tier) && (!strcmp(tier->valuestring, "auto") || !strcmp(tier->valuestring, "default"))))
        return oai_err(e, 400, "service_tier", "unsupported_parameter", "'service_tier' must be \"auto\" or "
                       "\"default\" (one tier here)");
    return 0;
}

/* The chat-template fields (vLLM's): add_generation_prompt, continue_final_message, tools and
 * tool_choice, chat_template_kwargs, documents, chat_template (a template name). The template
 * reads tools, kwargs and documents from the body itself; here they are only type-checked.
 * /tokenize (tokenize = 1) renders tools without a tool_choice: it generates nothing. */
static int parse_template_fields(const cJSON *root, struct oai_request *r, int tokenize, struct oai_error *e)
{
    r->add_generation_prompt = 1;
    if (get_bool(root, "add_generation_prompt", &r->add_generation_prompt, e) ||
        get_bool(root, "continue_final_message", &r->continue_final_message, e))
        return -1;
    if (r->add_generation_prompt && r->continue_final_message)
        return oai_err(e, 400, "continue_final_message", NULL,
                       "Cannot set both `continue_final_message` and `add_generation_prompt` to True.");
    const cJSON *ct = field(root, "chat_template");
    if (ct) {
        if (!cJSON_IsString(ct))
            return oai_err(e, 400, "chat_template", NULL, "'chat_template' must be a string, got %s", json_type_name(ct));
        r->chat_template = xstrdup(ct->valuestring);
    }
    const cJSON *kw = field(root, "chat_template_kwargs");
    if (kw && !cJSON_IsObject(kw))
        return oai_err(e, 400, "chat_template_kwargs", NULL, "'chat_template_kwargs' must be an object, got %s",
                       json_type_name(kw));
    const cJSON *docs = field(root, "documents"), *it;
    if (docs) {
        if (!cJSON_IsArray(docs))
            return oai_err(e, 400, "documents", NULL, "'documents' must be a list of objects, got %s", json_type_name(docs));
        cJSON_ArrayForEach(it, docs)
            if (!cJSON_IsObject(it)) return oai_err(e, 400, "documents", NULL, "'documents' must be a list of objects");
    }
    r->has_template_kwargs = (kw && cJSON_GetArraySize(kw) > 0) || docs;
    const cJSON *tools = field(root, "tools");
    if (tools) {
        if (!cJSON_IsArray(tools))
            return oai_err(e, 400, "tools", NULL, "'tools' must be a list, got %s", json_type_name(tools));
        int k = 0;
        cJSON_ArrayForEach(it, tools) {
            const cJSON *type = cJSON_IsObject(it) ? cJSON_GetObjectItemCaseSensitive(it, "type") : NULL;
            const cJSON *fn = cJSON_IsObject(it) ? cJSON_GetObjectItemCaseSensitive(it, "function") : NULL;
            const cJSON *name = cJSON_IsObject(fn) ? cJSON_GetObjectItemCaseSensitive(fn, "name") : NULL;
            if ((type && (!cJSON_IsString(type) || strcmp(type->valuestring, "function"))) || !cJSON_IsString(name))
                return oai_err(e, 400, "tools", NULL, "tools[%d] must be {\"type\": \"function\", \"function\": "
                               "{\"name\": string, ...}}", k);
            k++;
        }
        r->has_tools = k > 0;
    }
    /* vLLM's rules (ChatCompletionRequest.check_tool_usage): tools without tool_choice mean
     * "auto"; a tool_choice other than "none" needs "tools"; "required" with an empty list is
     * "none"; a named function must be one of the tools. "auto" then needs the server's tool-call
     * parser (http.c); "required" and a named function are refused: vLLM forces them with
     * structured outputs (a JSON schema), which ropeserve does not have. */
    const cJSON *tc = field(root, "tool_choice");
    r->tool_choice = r->has_tools && !tc ? OAI_TOOL_CHOICE_AUTO : OAI_TOOL_CHOICE_NONE;
    if (tc && cJSON_IsString(tc) && !strcmp(tc->valuestring, "none")) {
        r->tool_choice = OAI_TOOL_CHOICE_NONE;
    } else if (tc) {
        if (!cJSON_IsString(tc) && !cJSON_IsObject(tc))
            return oai_err(e, 400, "tool_choice", NULL, "'tool_choice' must be a string or an object, got %s",
                           json_type_name(tc));
        if (!tools)
            return oai_err(e, 400, "tool_choice", NULL, "When using `tool_choice`, `tools` must be set.");
        if (cJSON_IsString(tc)) {
            if (!strcmp(tc->valuestring, "auto")) r->tool_choice = r->has_tools ? OAI_TOOL_CHOICE_AUTO : OAI_TOOL_CHOICE_NONE;
            else if (!strcmp(tc->valuestring, "required")) r->tool_choice = r->has_tools ? OAI_TOOL_CHOICE_REQUIRED : OAI_TOOL_CHOICE_NONE;
            else
                return oai_err(e, 400, "tool_choice", NULL, "Invalid value for `tool_choice`: %.60s! Only named tools, "
                               "\"none\", \"auto\" or \"required\" are supported.", tc->valuestring);
        } else {
            const cJSON *type = cJSON_GetObjectItemCaseSensitive(tc, "type");
            const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
            const cJSON *name = cJSON_IsObject(fn) ? cJSON_GetObjectItemCaseSensitive(fn, "name") : NULL;
            if ((type && (!cJSON_IsString(type) || strcmp(type->valuestring, "function"))) ||
                !cJSON_IsString(name) || !*name->valuestring)
                return oai_err(e, 400, "tool_choice", NULL, "'tool_choice' must be \"none\", \"auto\", \"required\" or "
                               "{\"type\": \"function\", \"function\": {\"name\": \"my_function\"}}");
            int found = 0;
            cJSON_ArrayForEach(it, tools) {
                const cJSON *f = cJSON_GetObjectItemCaseSensitive(it, "function");
                const cJSON *n = cJSON_GetObjectItemCaseSensitive(f, "name");
                if (cJSON_IsString(n) && !strcmp(n->valuestring, name->valuestring)) found = 1;
            }
            if (!found)
                return oai_err(e, 400, "tool_choice", NULL, "The tool specified in `tool_choice` (%.60s) does not match "
                               "any of the specified `tools`", name->valuestring);
            r->tool_choice = OAI_TOOL_CHOICE_NAMED;
        }
        if (r->tool_choice == OAI_TOOL_CHOICE_REQUIRED || r->tool_choice == OAI_TOOL_CHOICE_NAMED)
            return oai_err(e, 400, "tool_choice", "unsupported_parameter", "'tool_choice' %s forces a tool call, which "
                           "vLLM does with structured outputs (the tools' JSON schema); ropeserve has no constrained "
                           "decoding: use \"auto\" (with --enable-auto-tool-choice) or \"none\"",
                           r->tool_choice == OAI_TOOL_CHOICE_REQUIRED ? "\"required\"" : "naming a function");
    }
    (void)tokenize;
    return 0;
}

/* Chat fields about function calling and output modalities: accepted only when they change
 * nothing (tools and tool_choice are parse_template_fields'). */
static int parse_chat_extras(const cJSON *root, struct oai_error *e)
{
    const cJSON *fc = field(root, "function_call");
    if (fc && !(cJSON_IsString(fc) && !strcmp(fc->valuestring, "none")))
        return oai_err(e, 400, "function_call", "unsupported_parameter", "'function_call' other than \"none\" "
                       "is not supported (no function calling)");
    const cJSON *mod = field(root, "modalities");
    if (mod && !(cJSON_IsArray(mod) && cJSON_GetArraySize(mod) == 1 && cJSON_IsString(mod->child) &&
                 !strcmp(mod->child->valuestring, "text")))
        return oai_err(e, 400, "modalities", "unsupported_parameter", "'modalities' must be [\"text\"] (this "
                       "model reads and writes text only)");
    return 0;
}

/* The request body as a JSON object, or NULL with a 400 in e (invalid UTF-8, not JSON, not one
 * object, control characters or NUL in strings). bs gets the top-level members' text. The
 * caller frees both (cJSON_Delete, scan_free). */
static cJSON *parse_body(const char *body, size_t len, struct body_scan *bs, struct oai_error *e)
{
    memset(bs, 0, sizeof *bs);
    if (!utf8_valid(body, len)) {
        oai_err(e, 400, NULL, NULL, "the request body is not valid UTF-8");
        return NULL;
    }
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) {
        oai_err(e, 400, NULL, NULL, "the request body is not valid JSON");
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        oai_err(e, 400, NULL, NULL, "the request body must be a JSON object");
        cJSON_Delete(root);
        return NULL;
    }
    if (scan_body(body, len, bs, e)) {
        scan_free(bs);
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

static void request_defaults(struct oai_request *r, enum oai_kind kind)
{
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->logprobs = -1;
    r->prompt_logprobs = -1;
    r->return_token_strs = -1;
    r->add_special_tokens = 1;
    r->sp = sampling_default_params();
    r->sp.stop_ids = NULL;
    r->sp.n_stop_ids = 0;
    r->sp.n_logit_bias = 0;
}

int oai_parse_request(enum oai_kind kind, const char *body, size_t len, int vocab_size, int max_n,
                      struct oai_request *r, struct oai_error *e)
{
    request_defaults(r, kind);
    struct body_scan bs;
    cJSON *root = parse_body(body, len, &bs, e);
    if (!root) return -1;
    int rc = -1;
    if (check_fields(root, kind == OAI_CHAT ? K_CHAT : K_CMPL, e)) goto done;
    if (parse_common(root, &bs, kind, vocab_size, max_n, r, e)) goto done;
    if (kind == OAI_COMPLETION) {
        const cJSON *suffix = field(root, "suffix");
        if (suffix && !(cJSON_IsString(suffix) && !suffix->valuestring[0])) {
            oai_err(e, 400, "suffix", "unsupported_parameter",
                    "'suffix' is not supported (no fill-in-the-middle model); put the text in the "
                    "prompt instead");
            goto done;
        }
        if (parse_prompt(root, vocab_size, r, e)) goto done;
        if (get_bool(root, "echo", &r->echo, e)) goto done;
        const cJSON *lp = field(root, "logprobs");
        if (lp) {
            if (cJSON_IsBool(lp)) { /* some clients send chat's boolean here */
                r->logprobs = cJSON_IsTrue(lp) ? 0 : -1;
            } else {
                long long k = 0;
                if (get_int(root, "logprobs", 0, ENGINE_MAX_LOGPROBS, &k, e)) goto done;
                r->logprobs = (int)k;
            }
        }
        if (get_bool(root, "add_special_tokens", &r->add_special_tokens, e)) goto done;
        if ((long long)r->n * r->n_prompts > max_n) {
            oai_err(e, 400, "n", NULL, "n x prompts = %d x %d choices; at most %d", r->n,
                    r->n_prompts, max_n);
            goto done;
        }
    } else {
        if (parse_messages(root, r, e)) goto done;
        int want = 0;
        if (get_bool(root, "logprobs", &want, e)) goto done;
        long long k = 0;
        if (get_int(root, "top_logprobs", 0, ENGINE_MAX_LOGPROBS, &k, e)) goto done;
        if (field(root, "top_logprobs") && !want) {
            oai_err(e, 400, "top_logprobs", NULL, "'top_logprobs' needs 'logprobs': true");
            goto done;
        }
        r->logprobs = want ? (int)k : -1;
        if (parse_chat_extras(root, e) || parse_template_fields(root, r, 0, e)) goto done;
        r->parallel_tool_calls = 1;
        if (get_bool(root, "parallel_tool_calls", &r->parallel_tool_calls, e)) goto done;
        r->add_special_tokens = 0; /* vLLM's chat default: the template writes BOS itself */
        if (field(root, "add_special_tokens")) r->given |= OAI_GIVEN_ADD_SPECIAL_TOKENS;
        if (get_bool(root, "add_special_tokens", &r->add_special_tokens, e)) goto done;
    }
    r->sp.n_logprobs = r->logprobs > 0 ? r->logprobs : 0;
    /* one path for prompt-token logprobs: echo + logprobs (completions) and prompt_logprobs;
     * prompt_logprobs sets the top-K when both are given (vLLM) */
    int echo_lp = kind == OAI_COMPLETION && r->echo && r->logprobs >= 0;
    r->sp.prompt_logprobs = echo_lp || r->prompt_logprobs >= 0;
    r->sp.n_prompt_logprobs = r->prompt_logprobs >= 0 ? r->prompt_logprobs : echo_lp ? r->sp.n_logprobs : 0;
    rc = 0;
done:
    cJSON_Delete(root);
    scan_free(&bs);
    if (rc) oai_request_free(r);
    return rc;
}

int oai_parse_tokenize(const char *body, size_t len, struct oai_request *r, struct oai_error *e)
{
    request_defaults(r, OAI_COMPLETION);
    struct body_scan bs;
    cJSON *root = parse_body(body, len, &bs, e);
    if (!root) return -1;
    int rc = -1;
    if (check_fields(root, K_TOK, e)) goto done;
    const cJSON *model = field(root, "model");
    if (model && !cJSON_IsString(model)) {
        oai_err(e, 400, "model", NULL, "'model' must be a string, got %s", json_type_name(model));
        goto done;
    }
    if (model) r->model = xstrdup(model->valuestring);
    if (field(root, "add_special_tokens")) r->given |= OAI_GIVEN_ADD_SPECIAL_TOKENS;
    if (get_bool(root, "add_special_tokens", &r->add_special_tokens, e)) goto done;
    if (field(root, "return_token_strs")) {
        int v = 0;
        if (get_bool(root, "return_token_strs", &v, e)) goto done;
        r->return_token_strs = v;
    }
    if (field(root, "messages")) {
        if (field(root, "prompt")) {
            oai_err(e, 400, "prompt", NULL, "send either 'prompt' or 'messages', not both");
            goto done;
        }
        r->kind = OAI_CHAT;
        if (parse_messages(root, r, e) || parse_template_fields(root, r, 1, e)) goto done;
    } else {
        static const char *const chat_only[] = {"add_generation_prompt", "continue_final_message", "chat_template",
                                                "chat_template_kwargs", "documents", "tools", "tool_choice"};
        for (size_t k = 0; k < sizeof chat_only / sizeof *chat_only; k++)
            if (field(root, chat_only[k])) {
                oai_err(e, 400, chat_only[k], NULL, "'%s' applies to 'messages' (a chat template), not to "
                        "'prompt'", chat_only[k]);
                goto done;
            }
        const cJSON *p = field(root, "prompt");
        if (!cJSON_IsString(p)) {
            oai_err(e, 400, "prompt", NULL, "'prompt' must be a string (or send 'messages')");
            goto done;
        }
        r->prompts = xcalloc(1, sizeof *r->prompts);
        r->n_prompts = 1;
        r->prompts[0].text = xstrdup(p->valuestring);
    }
    rc = 0;
done:
    cJSON_Delete(root);
    scan_free(&bs);
    if (rc) oai_request_free(r);
    return rc;
}

int oai_parse_detokenize(const char *body, size_t len, int vocab_size, struct oai_request *r,
                         struct oai_error *e)
{
    request_defaults(r, OAI_COMPLETION);
    struct body_scan bs;
    cJSON *root = parse_body(body, len, &bs, e);
    if (!root) return -1;
    int rc = -1;
    if (check_fields(root, K_DETOK, e)) goto done;
    const cJSON *model = field(root, "model");
    if (model && !cJSON_IsString(model)) {
        oai_err(e, 400, "model", NULL, "'model' must be a string, got %s", json_type_name(model));
        goto done;
    }
    if (model) r->model = xstrdup(model->valuestring);
    const cJSON *t = field(root, "tokens");
    if (!cJSON_IsArray(t)) {
        oai_err(e, 400, "tokens", NULL, "'tokens' must be a list of token ids");
        goto done;
    }
    r->prompts = xcalloc(1, sizeof *r->prompts);
    r->n_prompts = 1;
    if (cJSON_GetArraySize(t) > 0 &&
        parse_ids(t, vocab_size, "tokens", &r->prompts[0].ids, &r->prompts[0].n_ids, e))
        goto done;
    rc = 0;
done:
    cJSON_Delete(root);
    scan_free(&bs);
    if (rc) oai_request_free(r);
    return rc;
}

void oai_request_free(struct oai_request *r)
{
    if (!r) return;
    free(r->model);
    for (int i = 0; i < r->n_prompts; i++) {
        free(r->prompts[i].text);
        free(r->prompts[i].ids);
    }
    free(r->prompts);
    for (int i = 0; i < r->n_msgs; i++) free(r->msgs[i].content);
    free(r->msgs);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->sp.stop_ids);
    free(r->chat_template);
    r->chat_template = NULL;
    r->model = NULL;
    r->prompts = NULL;
    r->msgs = NULL;
    r->sp.stop_ids = NULL;
    r->n_prompts = r->n_msgs = r->n_stop = r->sp.n_stop_ids = 0;
}

int oai_check_length(struct oai_request *r, int n_prompt, int max_model_len, struct oai_error *e)
{
    if (n_prompt >= max_model_len && !(n_prompt == max_model_len && r->sp.max_tokens == 0 &&
                                       r->max_tokens_set)) {
        oai_err(e, 400, r->kind == OAI_CHAT ? "messages" : "prompt", "context_length_exceeded",
                "This model's maximum context length is %d tokens. However, your prompt has %d "
                "tokens, which leaves no room for the completion. Please reduce the length of the "
                "prompt (or set truncate_prompt_tokens to keep its last tokens).", max_model_len,
                n_prompt);
        e->n_prompt_tokens = n_prompt;
        e->max_model_len = max_model_len;
        return -1;
    }
    if (!r->max_tokens_set && r->kind == OAI_CHAT) {
        r->sp.max_tokens = max_model_len - n_prompt;
    } else {
        long long total = (long long)n_prompt + r->sp.max_tokens;
        if (total > max_model_len) {
            oai_err(e, 400, "max_tokens", "context_length_exceeded",
                    "This model's maximum context length is %d tokens. However, you requested %lld "
                    "tokens (%d in the prompt, %d in the completion). Please reduce the length of the "
                    "prompt or completion.", max_model_len, total, n_prompt, r->sp.max_tokens);
            e->n_prompt_tokens = n_prompt;
            e->max_model_len = max_model_len;
            return -1;
        }
    }
    if (r->sp.min_tokens > r->sp.max_tokens)
        return oai_err(e, 400, "min_tokens", NULL, "'min_tokens' (%d) exceeds the %d tokens the completion "
                       "may have", r->sp.min_tokens, r->sp.max_tokens);
    return 0;
}

int oai_fit_prompt(struct oai_request *r, struct oai_prompt *p, int max_model_len, struct oai_error *e)
{
    if (r->truncate) {
        /* vLLM: the prompt may keep max_model_len - max_tokens tokens (-1 means that many); a
         * chat request without max_tokens keeps room for one token */
        int out = r->max_tokens_set || r->kind == OAI_COMPLETION ? r->sp.max_tokens : 1;
        int max_in = max_model_len - out;
        int keep = r->truncate < 0 ? max_in : r->truncate;
        if (keep > max_in || keep < 1)
            return oai_err(e, 400, "truncate_prompt_tokens", NULL, "truncate_prompt_tokens=%d cannot be greater "
                           "than max_model_len - max_tokens = %d - %d = %d; request a smaller truncation size",
                           keep, max_model_len, out, max_in);
        if (p->n_ids > keep) {
            if (!r->truncate_right) memmove(p->ids, p->ids + (p->n_ids - keep), sizeof *p->ids * (size_t)keep);
            p->n_ids = keep;
            free(p->text); /* echo shows what the model read: the kept tokens */
            p->text = NULL;
        }
    }
    return oai_check_length(r, p->n_ids, max_model_len, e);
}

/* ---------------------------------------------------------------------------------------------
 * rendering */

static int bytes_valid_utf8(const char *s, int n) { return utf8_valid(s, (size_t)n); }

const char *oai_token_str(const struct oai_render *rc, int32_t id, char *buf, size_t cap)
{
    char raw[256];
    int n = rc->token_text ? rc->token_text(rc->token_ctx, id, raw, (int)sizeof raw) : 0;
    if (n <= 0) {
        buf[0] = 0;
        return buf;
    }
    if (bytes_valid_utf8(raw, n) && !memchr(raw, 0, (size_t)n)) {
        if ((size_t)n >= cap) n = (int)cap - 1;
        memcpy(buf, raw, (size_t)n);
        buf[n] = 0;
        return buf;
    }
    /* part of a character: OpenAI's "bytes:\xe2\x80" spelling keeps the JSON valid */
    size_t o = (size_t)snprintf(buf, cap, "bytes:");
    for (int i = 0; i < n && o + 5 < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", (unsigned char)raw[i]);
    return buf;
}

static cJSON *lp_number(float v)
{
    return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull();
}

/* completions: {"tokens","token_logprobs","top_logprobs","text_offset"} */
static cJSON *render_completion_logprobs(const struct oai_render *rc, const struct oai_lp *lp, int n)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *toks = cJSON_AddArrayToObject(o, "tokens");
    cJSON *tlp = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *top = cJSON_AddArrayToObject(o, "top_logprobs");
    cJSON *off = cJSON_AddArrayToObject(o, "text_offset");
    char buf[512];
    for (int i = 0; i < n; i++) {
        const struct oai_lp *l = &lp[i];
        cJSON_AddItemToArray(toks, cJSON_CreateString(oai_token_str(rc, l->token, buf, sizeof buf)));
        cJSON_AddItemToArray(tlp, lp_number(l->logprob));
        if (!isfinite(l->logprob) && l->n_top == 0) {
            cJSON_AddItemToArray(top, cJSON_CreateNull());
        } else {
            cJSON *d = cJSON_CreateObject();
            int have_self = 0;
            for (int k = 0; k < l->n_top && k < rc->top_n; k++) {
                const char *s = oai_token_str(rc, l->top_ids[k], buf, sizeof buf);
                if (l->top_ids[k] == l->token) have_self = 1;
                if (!cJSON_GetObjectItemCaseSensitive(d, s))
                    cJSON_AddItemToObject(d, s, lp_number(l->top_lp[k]));
            }
            if (!have_self) { /* vLLM and OpenAI include the chosen token */
                const char *s = oai_token_str(rc, l->token, buf, sizeof buf);
                if (!cJSON_GetObjectItemCaseSensitive(d, s))
                    cJSON_AddItemToObject(d, s, lp_number(l->logprob));
            }
            cJSON_AddItemToArray(top, d);
        }
        cJSON_AddItemToArray(off, cJSON_CreateNumber(l->text_offset));
    }
    return o;
}

static cJSON *chat_lp_item(const struct oai_render *rc, int32_t id, float lp)
{
    char buf[512], raw[256];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "token", oai_token_str(rc, id, buf, sizeof buf));
    cJSON_AddItemToObject(o, "logprob", isfinite(lp) ? cJSON_CreateNumber(lp)
                                                     : cJSON_CreateNumber(-9999.0));
    int n = rc->token_text ? rc->token_text(rc->token_ctx, id, raw, (int)sizeof raw) : 0;
    cJSON *b = cJSON_AddArrayToObject(o, "bytes");
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(b, cJSON_CreateNumber((unsigned char)raw[i]));
    return o;
}

/* chat: {"content":[{token, logprob, bytes, top_logprobs:[...]}]} */
static cJSON *render_chat_logprobs(const struct oai_render *rc, const struct oai_lp *lp, int n)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *c = cJSON_AddArrayToObject(o, "content");
    for (int i = 0; i < n; i++) {
        cJSON *it = chat_lp_item(rc, lp[i].token, lp[i].logprob);
        cJSON *top = cJSON_AddArrayToObject(it, "top_logprobs");
        for (int k = 0; k < lp[i].n_top && k < rc->top_n; k++)
            cJSON_AddItemToArray(top, chat_lp_item(rc, lp[i].top_ids[k], lp[i].top_lp[k]));
        cJSON_AddItemToArray(c, it);
    }
    return o;
}

static void add_str_or_null(cJSON *o, const char *k, const char *v)
{
    if (v) cJSON_AddStringToObject(o, k, v);
    else cJSON_AddNullToObject(o, k);
}

/* A JSON string from n bytes of UTF-8 that may hold NUL (a <0x00> byte token): cJSON strings
 * stop at NUL, so the literal is escaped here and added raw. */
cJSON *json_string_n(const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    struct strbuf b = {0};
    sb_append(&b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        sb_append(&b, s + run, i - run);
        run = i + 1;
        char esc[7] = {'\\', 0, 0, 0, 0, 0, 0};
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        default:
            esc[1] = 'u'; esc[2] = '0'; esc[3] = '0';
            esc[4] = hex[c >> 4]; esc[5] = hex[c & 15];
        }
        sb_puts(&b, esc);
    }
    sb_append(&b, s + run, n - run);
    sb_append(&b, "\"", 1);
    cJSON *v = cJSON_CreateRaw(b.p);
    sb_free(&b);
    return v;
}

static cJSON *string_n(const char *s, size_t n) { return json_string_n(s, n); }

static cJSON *render_usage(const struct oai_usage *u)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "prompt_tokens", u->prompt_tokens);
    cJSON_AddNumberToObject(o, "total_tokens", u->prompt_tokens + u->completion_tokens);
    cJSON_AddNumberToObject(o, "completion_tokens", u->completion_tokens);
    return o;
}

static cJSON *render_head(const struct oai_render *rc, int chunk)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", rc->id);
    cJSON_AddStringToObject(o, "object", rc->kind == OAI_CHAT
                                             ? (chunk ? "chat.completion.chunk" : "chat.completion")
                                             : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)rc->created);
    cJSON_AddStringToObject(o, "model", rc->model);
    return o;
}

/* vLLM's prompt_logprobs: one entry per prompt token, null for the first (nothing predicts
 * it), else {"<id>": {"logprob", "rank", "decoded_token"}} for the prompt's token first, then the
 * top K (rank = place). */
static cJSON *render_prompt_logprobs(const struct oai_render *rc, const struct oai_lp *lp, int n)
{
    cJSON *arr = cJSON_CreateArray();
    char key[16], buf[512];
    for (int i = 0; i < n; i++) {
        const struct oai_lp *l = &lp[i];
        if (i == 0 || !isfinite(l->logprob)) {
            cJSON_AddItemToArray(arr, cJSON_CreateNull());
            continue;
        }
        cJSON *d = cJSON_CreateObject();
        int rank = l->rank;
        for (int k = 0; k < l->n_top && k < rc->prompt_top_n; k++)
            if (l->top_ids[k] == l->token) rank = k + 1; /* vLLM's dict takes the top-K place */
        snprintf(key, sizeof key, "%d", l->token);
        cJSON *o = cJSON_AddObjectToObject(d, key);
        cJSON_AddItemToObject(o, "logprob", lp_number(l->logprob));
        cJSON_AddNumberToObject(o, "rank", rank);
        cJSON_AddStringToObject(o, "decoded_token", oai_token_str(rc, l->token, buf, sizeof buf));
        for (int k = 0; k < l->n_top && k < rc->prompt_top_n; k++) {
            if (l->top_ids[k] == l->token) continue;
            snprintf(key, sizeof key, "%d", l->top_ids[k]);
            o = cJSON_AddObjectToObject(d, key);
            cJSON_AddItemToObject(o, "logprob", lp_number(l->top_lp[k]));
            cJSON_AddNumberToObject(o, "rank", k + 1);
            cJSON_AddStringToObject(o, "decoded_token", oai_token_str(rc, l->top_ids[k], buf, sizeof buf));
        }
        cJSON_AddItemToArray(arr, d);
    }
    return arr;
}

static void add_stop_reason(cJSON *c, const struct oai_piece *p)
{
    if (p->stop_reason) cJSON_AddStringToObject(c, "stop_reason", p->stop_reason);
    else if (p->stop_token) cJSON_AddNumberToObject(c, "stop_reason", *p->stop_token);
    else cJSON_AddNullToObject(c, "stop_reason");
}

/* OpenAI's tool_calls: [{"id", "type": "function", "function": {"name", "arguments"}}]. A stream
 * sends each call as vLLM does: {"index", "id", "type", "function": {"name"}} first, then
 * {"index", "function": {"arguments"}}. */
static void render_tool_calls(cJSON *m, const struct oai_piece *p, int chunk)
{
    cJSON *arr = cJSON_AddArrayToObject(m, "tool_calls");
    for (int i = 0; i < p->n_tool_calls; i++) {
        const struct tool_call *t = &p->tool_calls[i];
        cJSON *o = cJSON_CreateObject();
        if (chunk) cJSON_AddNumberToObject(o, "index", p->tool_index + i);
        if (!chunk || p->tool_part == 1) {
            cJSON_AddStringToObject(o, "id", t->id);
            cJSON_AddStringToObject(o, "type", "function");
        }
        cJSON *f = cJSON_AddObjectToObject(o, "function");
        if (!chunk || p->tool_part == 1) cJSON_AddItemToObject(f, "name", string_n(t->name, strlen(t->name)));
        if (!chunk || p->tool_part == 2)
            cJSON_AddItemToObject(f, "arguments", string_n(t->arguments, strlen(t->arguments)));
        cJSON_AddItemToArray(arr, o);
    }
}

static cJSON *render_choice(const struct oai_render *rc, const struct oai_piece *p, int chunk)
{
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", p->index);
    if (rc->kind == OAI_COMPLETION) {
        cJSON_AddItemToObject(c, "text", string_n(p->text, p->len));
        if (rc->logprobs && (!chunk || p->n_lp))
            cJSON_AddItemToObject(c, "logprobs", render_completion_logprobs(rc, p->lp, p->n_lp));
        else cJSON_AddNullToObject(c, "logprobs");
    } else {
        cJSON *m = cJSON_AddObjectToObject(c, chunk ? "delta" : "message");
        if (!chunk || p->role) cJSON_AddStringToObject(m, "role", "assistant");
        if (!chunk && p->content_null) cJSON_AddNullToObject(m, "content");
        else if (!chunk || p->len || p->role) cJSON_AddItemToObject(m, "content", string_n(p->text, p->len));
        if (p->n_tool_calls) render_tool_calls(m, p, chunk);
        if (rc->logprobs && (!chunk || p->n_lp))
            cJSON_AddItemToObject(c, "logprobs", render_chat_logprobs(rc, p->lp, p->n_lp));
        else cJSON_AddNullToObject(c, "logprobs");
    }
    add_str_or_null(c, "finish_reason", p->finish_reason);
    if (!chunk || p->finish_reason) add_stop_reason(c, p);
    if (!chunk && rc->kind == OAI_COMPLETION && rc->prompt_top_n >= 0)
        cJSON_AddItemToObject(c, "prompt_logprobs", render_prompt_logprobs(rc, p->plp, p->n_plp));
    return c;
}

static char *print_and_free(cJSON *o)
{
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    CHECK(s, "cJSON_PrintUnformatted failed");
    return s;
}

char *oai_render_response(const struct oai_render *rc, const struct oai_piece *choices, int n,
                          const struct oai_usage *u)
{
    cJSON *o = render_head(rc, 0);
    cJSON *arr = cJSON_AddArrayToObject(o, "choices");
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, render_choice(rc, &choices[i], 0));
    cJSON_AddItemToObject(o, "usage", render_usage(u));
    if (rc->kind == OAI_CHAT && rc->prompt_top_n >= 0) /* chat: one list, top level (vLLM) */
        cJSON_AddItemToObject(o, "prompt_logprobs", render_prompt_logprobs(rc, n ? choices[0].plp : NULL,
                                                                           n ? choices[0].n_plp : 0));
    return print_and_free(o);
}

char *oai_render_chunk(const struct oai_render *rc, const struct oai_piece *p,
                       const struct oai_usage *u, int usage_null)
{
    cJSON *o = render_head(rc, 1);
    cJSON *arr = cJSON_AddArrayToObject(o, "choices");
    cJSON_AddItemToArray(arr, render_choice(rc, p, 1));
    if (u) cJSON_AddItemToObject(o, "usage", render_usage(u));
    else if (usage_null) cJSON_AddNullToObject(o, "usage");
    return print_and_free(o);
}

char *oai_render_usage_chunk(const struct oai_render *rc, const struct oai_usage *u)
{
    cJSON *o = render_head(rc, 1);
    cJSON_AddArrayToObject(o, "choices");
    cJSON_AddItemToObject(o, "usage", render_usage(u));
    return print_and_free(o);
}

char *oai_render_progress_chunk(const struct oai_render *rc, int index, int processed, int total,
                                int cached, double time_ms)
{
    cJSON *o = render_head(rc, 1);
    cJSON_AddArrayToObject(o, "choices");
    cJSON *pp = cJSON_AddObjectToObject(o, "prompt_progress");
    cJSON_AddNumberToObject(pp, "total", total);
    cJSON_AddNumberToObject(pp, "cache", cached);
    cJSON_AddNumberToObject(pp, "processed", processed);
    cJSON_AddNumberToObject(pp, "time_ms", floor(time_ms * 1000.0 + 0.5) / 1000.0);
    cJSON_AddNumberToObject(pp, "index", index);
    return print_and_free(o);
}
