/* openai.c - the OpenAI JSON edge: request bodies (cJSON) are parsed and validated into struct
 * oai_request (plain C, engine types), responses are rendered back to JSON. Nothing here blocks
 * or touches the engine, so tests/test_openai.c exercises all of it without a model.
 *
 * Validation policy: every field the OpenAI API or vLLM documents is checked for its type and
 * range; a failure is a 400 invalid_request_error whose `param` names the field and whose message
 * says what was expected and what came. Unknown fields are ignored (clients send extras), except
 * the ones we know we cannot honour (`suffix`, `best_of` > 1, `tools`, non-text content parts),
 * which are refused so that nobody gets a silently different answer.
 *
 * Rejected alternative: validating with a schema table. The fields' rules differ just enough
 * (aliases, chat vs completions defaults, logit_bias' two shapes) that plain code reads better. */
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
        const cJSON *tc = field(it, "tool_calls");
        if (tc && (r->msgs[i].role != CHAT_ASSISTANT || check_tool_calls(tc, i, e))) {
            if (r->msgs[i].role != CHAT_ASSISTANT)
                oai_err(e, 400, "messages", NULL, "messages[%d]: only assistant messages carry tool_calls", i);
            return -1;
        }
        static const char *const str_fields[] = {"tool_call_id", "name", "reasoning"};
        for (int k = 0; k < 3; k++) {
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
            char *end;
            const char *k = it->string;
            long long v = strtoll(k, &end, 10);
            if (!*k || *end || v < 0 || v >= vocab_size)
                return oai_err(e, 400, "logit_bias", NULL,
                               "'logit_bias' key '%.40s' is not a token id in [0, %d)", k, vocab_size);
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

static int parse_sampling(const cJSON *root, enum oai_kind kind, int vocab_size,
                          struct oai_request *r, struct oai_error *e)
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
    const cJSON *seed = field(root, "seed");
    if (seed) { /* int64 or uint64: any integer a client may hold */
        double d = seed->valuedouble;
        if (!is_integral(seed) || d < -9223372036854775808.0 || d >= 18446744073709551616.0)
            return oai_err(e, 400, "seed", NULL, "'seed' must be a 64-bit integer, got %s",
                           cJSON_IsNumber(seed) ? "a number out of range" : json_type_name(seed));
        sp->seed = d < 0 ? (uint64_t)(long long)d
                         : (d >= 9223372036854775808.0 ? (uint64_t)(d - 9223372036854775808.0) +
                                                             (1ull << 63)
                                                       : (uint64_t)d);
        sp->has_seed = 1;
    }
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
    return 0;
}

static int parse_common(const cJSON *root, enum oai_kind kind, int vocab_size, int max_n,
                        struct oai_request *r, struct oai_error *e)
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
    const cJSON *so = field(root, "stream_options");
    if (so) {
        if (!cJSON_IsObject(so))
            return oai_err(e, 400, "stream_options", NULL, "'stream_options' must be an object");
        if (!r->stream)
            return oai_err(e, 400, "stream_options", NULL,
                           "'stream_options' is only allowed when 'stream' is true");
        if (get_bool(so, "include_usage", &r->include_usage, e) ||
            get_bool(so, "continuous_usage_stats", &r->continuous_usage, e)) {
            snprintf(e->param, sizeof e->param, "stream_options");
            return -1;
        }
    }
    if (parse_sampling(root, kind, vocab_size, r, e)) return -1;
    if (field(root, "user") && !cJSON_IsString(field(root, "user")))
        return oai_err(e, 400, "user", NULL, "'user' must be a string");
    return 0;
}

/* The chat-template fields (vLLM's): add_generation_prompt, continue_final_message, tools and
 * tool_choice, chat_template_kwargs, documents, chat_template (a template name). The template
 * reads tools, kwargs and documents from the body itself; here they are only type-checked. */
static int parse_template_fields(const cJSON *root, struct oai_request *r, struct oai_error *e)
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
    /* vLLM's rule: tools without tool_choice mean "auto", and "auto" (or "required", or a named
     * function) needs a tool-call parser turning the model's text into tool_calls. ropeserve has
     * none, so only "none" is honoured: the tools are rendered into the prompt and the answer
     * comes back as text. */
    const cJSON *tc = field(root, "tool_choice");
    if (tc && !(cJSON_IsString(tc) && !strcmp(tc->valuestring, "none"))) {
        if (!cJSON_IsString(tc) && !cJSON_IsObject(tc))
            return oai_err(e, 400, "tool_choice", NULL, "'tool_choice' must be a string or an object, got %s",
                           json_type_name(tc));
        return oai_err(e, 400, "tool_choice", "unsupported_parameter", "'tool_choice' %s%s%s needs a tool-call parser, "
                       "which ropeserve does not have; send \"tool_choice\": \"none\" to render the tools into the "
                       "prompt and get the model's text back", cJSON_IsString(tc) ? "\"" : "",
                       cJSON_IsString(tc) ? tc->valuestring : "(a named function)", cJSON_IsString(tc) ? "\"" : "");
    }
    if (r->has_tools && !tc)
        return oai_err(e, 400, "tool_choice", "unsupported_parameter", "'tools' without 'tool_choice' means "
                       "\"auto\", which needs a tool-call parser ropeserve does not have; send \"tool_choice\": "
                       "\"none\" to render the tools into the prompt and get the model's text back");
    return 0;
}

/* The request body as a JSON object, or NULL with a 400 in e (invalid UTF-8, not JSON, not an
 * object). The caller frees it with cJSON_Delete. */
static cJSON *parse_body(const char *body, size_t len, struct oai_error *e)
{
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
    return root;
}

int oai_parse_request(enum oai_kind kind, const char *body, size_t len, int vocab_size, int max_n,
                      struct oai_request *r, struct oai_error *e)
{
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->logprobs = -1;
    r->add_special_tokens = 1;
    r->sp = sampling_default_params();
    r->sp.stop_ids = NULL;
    r->sp.n_stop_ids = 0;
    r->sp.n_logit_bias = 0;
    cJSON *root = parse_body(body, len, e);
    if (!root) return -1;
    int rc = -1;
    if (parse_common(root, kind, vocab_size, max_n, r, e)) goto done;
    if (kind == OAI_COMPLETION) {
        if (field(root, "suffix")) {
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
        if (parse_template_fields(root, r, e)) goto done;
        r->add_special_tokens = 0; /* vLLM's chat default: the template writes BOS itself */
        if (field(root, "add_special_tokens")) r->given |= OAI_GIVEN_ADD_SPECIAL_TOKENS;
        if (get_bool(root, "add_special_tokens", &r->add_special_tokens, e)) goto done;
        const cJSON *rf = field(root, "response_format");
        if (rf) {
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(rf, "type");
            if (!cJSON_IsString(t) || strcmp(t->valuestring, "text") != 0) {
                oai_err(e, 400, "response_format", "unsupported_parameter",
                        "only 'response_format': {\"type\": \"text\"} is supported (no constrained "
                        "decoding)");
                goto done;
            }
        }
    }
    r->sp.n_logprobs = r->logprobs > 0 ? r->logprobs : 0;
    r->sp.prompt_logprobs = (kind == OAI_COMPLETION && r->echo && r->logprobs >= 0);
    rc = 0;
done:
    cJSON_Delete(root);
    if (rc) oai_request_free(r);
    return rc;
}

int oai_parse_tokenize(const char *body, size_t len, struct oai_request *r, struct oai_error *e)
{
    memset(r, 0, sizeof *r);
    r->add_special_tokens = 1;
    r->logprobs = -1;
    cJSON *root = parse_body(body, len, e);
    if (!root) return -1;
    int rc = -1;
    if (field(root, "add_special_tokens")) r->given |= OAI_GIVEN_ADD_SPECIAL_TOKENS;
    if (get_bool(root, "add_special_tokens", &r->add_special_tokens, e)) goto done;
    if (field(root, "messages")) {
        r->kind = OAI_CHAT;
        if (parse_messages(root, r, e) || parse_template_fields(root, r, e)) goto done;
    } else {
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
    if (rc) oai_request_free(r);
    return rc;
}

int oai_parse_detokenize(const char *body, size_t len, int vocab_size, struct oai_request *r,
                         struct oai_error *e)
{
    memset(r, 0, sizeof *r);
    r->logprobs = -1;
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) return oai_err(e, 400, NULL, NULL, "the request body is not valid JSON");
    int rc = -1;
    const cJSON *t = cJSON_IsObject(root) ? field(root, "tokens") : NULL;
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
                "prompt.", max_model_len, n_prompt);
        e->n_prompt_tokens = n_prompt;
        e->max_model_len = max_model_len;
        return -1;
    }
    if (!r->max_tokens_set && r->kind == OAI_CHAT) {
        r->sp.max_tokens = max_model_len - n_prompt;
        return 0;
    }
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
    return 0;
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
        if (!chunk || p->len || p->role) cJSON_AddItemToObject(m, "content", string_n(p->text, p->len));
        if (rc->logprobs && (!chunk || p->n_lp))
            cJSON_AddItemToObject(c, "logprobs", render_chat_logprobs(rc, p->lp, p->n_lp));
        else cJSON_AddNullToObject(c, "logprobs");
    }
    add_str_or_null(c, "finish_reason", p->finish_reason);
    if (!chunk || p->finish_reason) add_str_or_null(c, "stop_reason", p->stop_reason);
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
