/* tools.c - tool-call parsers: a chat answer's text -> OpenAI tool_calls, as vLLM's
 * `--enable-auto-tool-choice --tool-call-parser NAME` does for two formats:
 *
 *   hermes       Hermes 2 Pro, Qwen2.5, Qwen3: <tool_call>{"name": ..., "arguments": {...}}</tool_call>
 *                one block per call (the last may be unclosed); content = the text before the
 *                first <tool_call> (null when empty); "arguments" given as a JSON string is
 *                parsed first. vllm/tool_parsers/hermes_tool_parser.py, extract_tool_calls.
 *   llama3_json  Llama 3.1/3.2/3.3 with JSON tool calling: every '{' outside an object already
 *                read starts a JSON object {"name": ..., "arguments" | "parameters": ...};
 *                content = null when a call was found. vllm/tool_parsers/llama_tool_parser.py.
 *
 * vLLM's rule for a text it cannot parse is kept: any call that is not valid JSON, lacks "name"
 * (a string) or its arguments, makes the whole answer plain content with no tool_calls.
 * "arguments" are what Python's json.dumps(value, ensure_ascii=False) writes of the parsed value
 * (", " and ": " separators, non-ASCII as is, floats as Python's repr: 1.50 -> 1.5, 1e5 ->
 * 100000.0), because clients compare them with what vLLM returns; so this file holds a JSON
 * reader with Python's json.loads semantics (big integers exact, NaN/Infinity accepted, a
 * repeated key keeps its first place and its last value, control characters in strings
 * refused) and that writer. A lone UTF-16 surrogate (\ud800), which Python would keep and then
 * fail to encode, makes the call unparseable here.
 *
 * Streaming (tool_stream_safe): text before a possible call streams as content; from the first
 * <tool_call> (hermes) or from a '{' that opens the answer (llama3_json: vLLM's streaming
 * parser looks only there) the text is held, and the calls are parsed from the whole text when
 * the choice ends - so the deltas of a stream add up to the non-streamed message exactly.
 *
 * Rejected alternative: streaming argument fragments token by token as vLLM does with partial
 * JSON parsing. Its fragments are re-serialisations of incomplete JSON that may later turn out
 * not to parse; holding a call until it is complete costs latency only inside the call and
 * never sends a delta that the final message contradicts. */
#include "server_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define PJ_MAX_DEPTH 500      /* Python's default recursion limit is 1000 frames */
#define PJ_MAX_INT_DIGITS 4300 /* Python's int_max_str_digits: a longer integer is a ValueError */

// ---------------------------------------------------------------------------------------------
// a JSON value, as Python's json.loads builds it

enum pj_type { PJ_NULL, PJ_TRUE, PJ_FALSE, PJ_INT, PJ_FLOAT, PJ_STR, PJ_ARR, PJ_OBJ };

struct pj {
    enum pj_type t;
    char *s;            /* PJ_STR: UTF-8 bytes; PJ_INT: the digits with an optional '-' */
    size_t n;
    double d;           /* PJ_FLOAT */
    struct pj **items;  /* PJ_ARR, PJ_OBJ: values */
    char **keys;        /* PJ_OBJ */
    size_t *key_len;
    int count, cap;
};

static void pj_free(struct pj *v)
{
    if (!v) return;
    for (int i = 0; i < v->count; i++) {
        pj_free(v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->key_len);
    free(v->s);
    free(v);
}

struct pj_reader {
    const char *p, *end;
    int depth;
};

static void skip_ws(struct pj_reader *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r')) r->p++;
}

static int hex4(const char *p, const char *end, unsigned *out)
{
    if (end - p < 4) return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

static void put_utf8(struct strbuf *b, unsigned cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) { u[0] = (char)cp; n = 1; }
    else if (cp < 0x800) { u[0] = (char)(0xC0 | (cp >> 6)); u[1] = (char)(0x80 | (cp & 63)); n = 2; }
    else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12)); u[1] = (char)(0x80 | ((cp >> 6) & 63)); u[2] = (char)(0x80 | (cp & 63));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18)); u[1] = (char)(0x80 | ((cp >> 12) & 63));
        u[2] = (char)(0x80 | ((cp >> 6) & 63)); u[3] = (char)(0x80 | (cp & 63));
        n = 4;
    }
    sb_append(b, u, n);
}

/* A string at r->p (on the opening quote) -> b (decoded UTF-8). */
static int read_string(struct pj_reader *r, struct strbuf *b)
{
    r->p++;
    sb_append(b, "", 0);
    while (r->p < r->end) {
        unsigned char c = (unsigned char)*r->p;
        if (c == '"') {
            r->p++;
            return 0;
        }
        if (c < 0x20) return -1; /* json.loads(strict=True): "Invalid control character" */
        if (c != '\\') {
            const char *q = r->p;
            while (q < r->end && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20) q++;
            sb_append(b, r->p, (size_t)(q - r->p));
            r->p = q;
            continue;
        }
        if (r->end - r->p < 2) return -1;
        char e = r->p[1];
        r->p += 2;
        switch (e) {
        case '"': sb_append(b, "\"", 1); break;
        case '\\': sb_append(b, "\\", 1); break;
        case '/': sb_append(b, "/", 1); break;
        case 'b': sb_append(b, "\b", 1); break;
        case 'f': sb_append(b, "\f", 1); break;
        case 'n': sb_append(b, "\n", 1); break;
        case 'r': sb_append(b, "\r", 1); break;
        case 't': sb_append(b, "\t", 1); break;
        case 'u': {
            unsigned cp, lo;
            if (hex4(r->p, r->end, &cp)) return -1;
            r->p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (r->end - r->p < 6 || r->p[0] != '\\' || r->p[1] != 'u' || hex4(r->p + 2, r->end, &lo) ||
                    lo < 0xDC00 || lo > 0xDFFF)
                    return -1; /* a lone high surrogate */
                r->p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return -1; /* a lone low surrogate */
            }
            put_utf8(b, cp);
            break;
        }
        default: return -1;
        }
    }
    return -1;
}

static int lit(struct pj_reader *r, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, w, n)) return 0;
    r->p += n;
    return 1;
}

static struct pj *pj_new(enum pj_type t)
{
    struct pj *v = xcalloc(1, sizeof *v);
    v->t = t;
    return v;
}

static struct pj *read_value(struct pj_reader *r);

/* Python's NUMBER_RE: -?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)? */
static struct pj *read_number(struct pj_reader *r)
{
    const char *s = r->p, *q = r->p;
    if (q < r->end && *q == '-') q++;
    if (q < r->end && r->end - q >= 8 && !memcmp(q, "Infinity", 8) && q > s) {
        r->p = q + 8;
        struct pj *v = pj_new(PJ_FLOAT);
        v->d = -INFINITY;
        return v;
    }
    if (q >= r->end || *q < '0' || *q > '9') return NULL;
    if (*q == '0') q++;
    else while (q < r->end && *q >= '0' && *q <= '9') q++;
    const char *int_end = q;
    int is_float = 0;
    if (q + 1 < r->end && *q == '.' && q[1] >= '0' && q[1] <= '9') {
        q++;
        while (q < r->end && *q >= '0' && *q <= '9') q++;
        is_float = 1;
    }
    if (q < r->end && (*q == 'e' || *q == 'E')) {
        const char *e = q + 1;
        if (e < r->end && (*e == '+' || *e == '-')) e++;
        if (e < r->end && *e >= '0' && *e <= '9') {
            while (e < r->end && *e >= '0' && *e <= '9') e++;
            q = e;
            is_float = 1;
        }
    }
    r->p = q;
    if (!is_float) {
        const char *d = s + (*s == '-');
        if (int_end - d > PJ_MAX_INT_DIGITS) return NULL;
        struct pj *v = pj_new(PJ_INT);
        int neg = *s == '-' && !(int_end - d == 1 && *d == '0'); /* int("-0") is 0 */
        v->n = (size_t)(int_end - d) + (size_t)neg;
        v->s = xmalloc(v->n + 1);
        if (neg) v->s[0] = '-';
        memcpy(v->s + neg, d, (size_t)(int_end - d));
        v->s[v->n] = 0;
        return v;
    }
    char tmp[512];
    size_t n = (size_t)(q - s);
    char *buf = n < sizeof tmp ? tmp : xmalloc(n + 1);
    memcpy(buf, s, n);
    buf[n] = 0;
    struct pj *v = pj_new(PJ_FLOAT);
    v->d = strtod(buf, NULL); /* correctly rounded, as Python's float() */
    if (buf != tmp) free(buf);
    return v;
}

static void pj_push(struct pj *v, struct pj *item, char *key, size_t key_len)
{
    if (key) /* a repeated key: Python's dict keeps the first place, takes the last value */
        for (int i = 0; i < v->count; i++)
            if (v->key_len[i] == key_len && !memcmp(v->keys[i], key, key_len)) {
                pj_free(v->items[i]);
                v->items[i] = item;
                free(key);
                return;
            }
    if (v->count == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 4;
        v->items = xrealloc(v->items, sizeof *v->items * (size_t)v->cap);
        if (v->t == PJ_OBJ) {
            v->keys = xrealloc(v->keys, sizeof *v->keys * (size_t)v->cap);
            v->key_len = xrealloc(v->key_len, sizeof *v->key_len * (size_t)v->cap);
        }
    }
    v->items[v->count] = item;
    if (v->t == PJ_OBJ) {
        v->keys[v->count] = key;
        v->key_len[v->count] = key_len;
    }
    v->count++;
}

static struct pj *read_container(struct pj_reader *r, enum pj_type t)
{
    if (++r->depth > PJ_MAX_DEPTH) return NULL;
    struct pj *v = pj_new(t);
    char close = t == PJ_OBJ ? '}' : ']';
    r->p++;
    skip_ws(r);
    if (r->p < r->end && *r->p == close) {
        r->p++;
        r->depth--;
        return v;
    }
    for (;;) {
        char *key = NULL;
        size_t key_len = 0;
        if (t == PJ_OBJ) {
            skip_ws(r);
            struct strbuf kb = {0};
            if (r->p >= r->end || *r->p != '"' || read_string(r, &kb)) {
                sb_free(&kb);
                goto fail;
            }
            key = kb.p;
            key_len = kb.len;
            skip_ws(r);
            if (r->p >= r->end || *r->p != ':') {
                free(key);
                goto fail;
            }
            r->p++;
        }
        skip_ws(r);
        struct pj *item = read_value(r);
        if (!item) {
            free(key);
            goto fail;
        }
        pj_push(v, item, key, key_len);
        skip_ws(r);
        if (r->p < r->end && *r->p == ',') {
            r->p++;
            continue;
        }
        if (r->p < r->end && *r->p == close) {
            r->p++;
            r->depth--;
            return v;
        }
        goto fail;
    }
fail:
    pj_free(v);
    return NULL;
}

/* One value at r->p (no leading whitespace skipped: Python's scan_once). NULL: not JSON. */
static struct pj *read_value(struct pj_reader *r)
{
    if (r->p >= r->end) return NULL;
    switch (*r->p) {
    case '{': return read_container(r, PJ_OBJ);
    case '[': return read_container(r, PJ_ARR);
    case '"': {
        struct strbuf b = {0};
        if (read_string(r, &b)) {
            sb_free(&b);
            return NULL;
        }
        struct pj *v = pj_new(PJ_STR);
        v->s = b.p;
        v->n = b.len;
        return v;
    }
    default: break;
    }
    if (lit(r, "null")) return pj_new(PJ_NULL);
    if (lit(r, "true")) return pj_new(PJ_TRUE);
    if (lit(r, "false")) return pj_new(PJ_FALSE);
    if (lit(r, "NaN")) {
        struct pj *v = pj_new(PJ_FLOAT);
        v->d = NAN;
        return v;
    }
    if (lit(r, "Infinity")) {
        struct pj *v = pj_new(PJ_FLOAT);
        v->d = INFINITY;
        return v;
    }
    return read_number(r);
}

/* json.loads: whitespace around one value, nothing else. */
static struct pj *pj_loads(const char *s, size_t n)
{
    struct pj_reader r = {s, s + n, 0};
    skip_ws(&r);
    struct pj *v = read_value(&r);
    if (!v) return NULL;
    skip_ws(&r);
    if (r.p != r.end) {
        pj_free(v);
        return NULL;
    }
    return v;
}

/* JSONDecoder.raw_decode at s: one value, *used = the bytes it took. */
static struct pj *pj_raw_decode(const char *s, size_t n, size_t *used)
{
    struct pj_reader r = {s, s + n, 0};
    struct pj *v = read_value(&r);
    if (v) *used = (size_t)(r.p - s);
    return v;
}

static const struct pj *pj_get(const struct pj *o, const char *key)
{
    if (!o || o->t != PJ_OBJ) return NULL;
    size_t n = strlen(key);
    for (int i = 0; i < o->count; i++)
        if (o->key_len[i] == n && !memcmp(o->keys[i], key, n)) return o->items[i];
    return NULL;
}

// ---------------------------------------------------------------------------------------------
// json.dumps(value, ensure_ascii=False)

/* Python's repr(float): the shortest digits that read back to d, positional notation for
 * 1e-4 <= |d| < 1e16 (with ".0" when integral), else d.ddde+XX. */
static void py_float(struct strbuf *b, double d)
{
    if (isnan(d)) { sb_puts(b, "NaN"); return; }
    if (isinf(d)) { sb_puts(b, d < 0 ? "-Infinity" : "Infinity"); return; }
    if (d == 0) { sb_puts(b, signbit(d) ? "-0.0" : "0.0"); return; }
    char buf[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*e", p - 1, d);
        if (strtod(buf, NULL) == d) break;
    }
    char digits[24];
    int nd = 0, neg = 0;
    const char *q = buf;
    if (*q == '-') { neg = 1; q++; }
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9') digits[nd++] = *q;
    int exp10 = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    int decpt = exp10 + 1; /* digits d1 d2 ... with the point after decpt of them */
    if (neg) sb_puts(b, "-");
    if (decpt <= -4 || decpt > 16) {
        sb_append(b, digits, 1);
        if (nd > 1) {
            sb_puts(b, ".");
            sb_append(b, digits + 1, (size_t)nd - 1);
        }
        sb_printf(b, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    } else if (decpt <= 0) {
        sb_puts(b, "0.");
        for (int i = 0; i < -decpt; i++) sb_puts(b, "0");
        sb_append(b, digits, (size_t)nd);
    } else if (decpt >= nd) {
        sb_append(b, digits, (size_t)nd);
        for (int i = nd; i < decpt; i++) sb_puts(b, "0");
        sb_puts(b, ".0");
    } else {
        sb_append(b, digits, (size_t)decpt);
        sb_puts(b, ".");
        sb_append(b, digits + decpt, (size_t)(nd - decpt));
    }
}

static void py_str(struct strbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    sb_append(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        sb_append(b, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"': sb_puts(b, "\\\""); break;
        case '\\': sb_puts(b, "\\\\"); break;
        case '\n': sb_puts(b, "\\n"); break;
        case '\r': sb_puts(b, "\\r"); break;
        case '\t': sb_puts(b, "\\t"); break;
        case '\b': sb_puts(b, "\\b"); break;
        case '\f': sb_puts(b, "\\f"); break;
        default: {
            char u[7] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15], 0};
            sb_puts(b, u);
        }
        }
    }
    sb_append(b, s + run, n - run);
    sb_append(b, "\"", 1);
}

static void pj_dumps(struct strbuf *b, const struct pj *v)
{
    switch (v->t) {
    case PJ_NULL: sb_puts(b, "null"); break;
    case PJ_TRUE: sb_puts(b, "true"); break;
    case PJ_FALSE: sb_puts(b, "false"); break;
    case PJ_INT: sb_append(b, v->s, v->n); break;
    case PJ_FLOAT: py_float(b, v->d); break;
    case PJ_STR: py_str(b, v->s, v->n); break;
    case PJ_ARR:
        sb_puts(b, "[");
        for (int i = 0; i < v->count; i++) {
            if (i) sb_puts(b, ", ");
            pj_dumps(b, v->items[i]);
        }
        sb_puts(b, "]");
        break;
    case PJ_OBJ:
        sb_puts(b, "{");
        for (int i = 0; i < v->count; i++) {
            if (i) sb_puts(b, ", ");
            py_str(b, v->keys[i], v->key_len[i]);
            sb_puts(b, ": ");
            pj_dumps(b, v->items[i]);
        }
        sb_puts(b, "}");
        break;
    }
}

int tool_json_python(const char *s, size_t n, char **out)
{
    struct pj *v = pj_loads(s, n);
    if (!v) return -1;
    struct strbuf b = {0};
    sb_append(&b, "", 0);
    pj_dumps(&b, v);
    pj_free(v);
    *out = b.p;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// parsers

static const char HERMES_OPEN[] = "<tool_call>", HERMES_CLOSE[] = "</tool_call>";
static const char LLAMA_BOT[] = "<|python_tag|>";

int tool_parser_from_name(const char *name)
{
    if (!name) return -1;
    if (!strcmp(name, "hermes")) return TOOL_PARSER_HERMES;
    if (!strcmp(name, "llama3_json")) return TOOL_PARSER_LLAMA3_JSON;
    return -1;
}

const char *tool_parser_name(int p)
{
    return p == TOOL_PARSER_HERMES ? "hermes" : p == TOOL_PARSER_LLAMA3_JSON ? "llama3_json" : "none";
}

void tool_call_id(char out[TOOL_CALL_ID_LEN])
{
    /* vLLM's make_tool_call_id(): "chatcmpl-tool-" + uuid4().hex */
    unsigned char r[16];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
        static unsigned long long ctr;
        unsigned long long x = (unsigned long long)now_s() * 1000003ull ^ __atomic_add_fetch(&ctr, 1, __ATOMIC_RELAXED);
        for (int i = 0; i < 16; i++) r[i] = (unsigned char)((x >> ((i % 8) * 8)) ^ (unsigned)(i * 131));
    }
    static const char hex[] = "0123456789abcdef";
    char *p = out + snprintf(out, TOOL_CALL_ID_LEN, "chatcmpl-tool-");
    for (int i = 0; i < 16; i++) {
        *p++ = hex[r[i] >> 4];
        *p++ = hex[r[i] & 15];
    }
    *p = 0;
}

static void add_call(struct tool_result *res, const struct pj *name, const struct pj *args)
{
    res->calls = xrealloc(res->calls, sizeof *res->calls * (size_t)(res->n_calls + 1));
    struct tool_call *c = &res->calls[res->n_calls++];
    c->name = xmalloc(name->n + 1);
    memcpy(c->name, name->s, name->n);
    c->name[name->n] = 0;
    struct strbuf b = {0};
    sb_append(&b, "", 0);
    pj_dumps(&b, args);
    c->arguments = b.p;
    tool_call_id(c->id);
}

void tool_result_free(struct tool_result *r)
{
    if (!r) return;
    for (int i = 0; i < r->n_calls; i++) {
        free(r->calls[i].name);
        free(r->calls[i].arguments);
    }
    free(r->calls);
    memset(r, 0, sizeof *r);
}

static void not_called(struct tool_result *res, size_t len)
{
    tool_result_free(res);
    res->called = 0;
    res->content_len = len;
    res->content_null = 0;
}

/* hermes: every <tool_call>BODY</tool_call> (or <tool_call>BODY to the end) is json.loads'd. */
static void extract_hermes(const char *text, size_t len, struct tool_result *res)
{
    const char *first = memmem(text, len, HERMES_OPEN, sizeof HERMES_OPEN - 1);
    if (!first) return not_called(res, len);
    const char *p = first, *end = text + len;
    while (p && p < end) {
        const char *body = p + sizeof HERMES_OPEN - 1;
        const char *close = memmem(body, (size_t)(end - body), HERMES_CLOSE, sizeof HERMES_CLOSE - 1);
        const char *body_end = close ? close : end;
        struct pj *v = pj_loads(body, (size_t)(body_end - body));
        const struct pj *name = pj_get(v, "name"), *args = pj_get(v, "arguments");
        struct pj *parsed = NULL;
        if (args && args->t == PJ_STR) { /* "arguments": "{...}" is json.loads'd (vLLM) */
            parsed = pj_loads(args->s, args->n);
            args = parsed;
        }
        int ok = name && name->t == PJ_STR && args;
        if (ok) add_call(res, name, args);
        pj_free(parsed);
        pj_free(v);
        if (!ok) return not_called(res, len);
        if (!close) break;
        p = memmem(close, (size_t)(end - close), HERMES_OPEN, sizeof HERMES_OPEN - 1);
    }
    res->called = 1;
    res->content_len = (size_t)(first - text);
    res->content_null = res->content_len == 0;
}

/* llama3_json: raw_decode at every '{' that is not inside an object read before. vLLM skips a
 * '{' at exactly the end of the previous object too (start <= end_index); so does this. */
static void extract_llama3(const char *text, size_t len, struct tool_result *res)
{
    if (!memmem(text, len, LLAMA_BOT, sizeof LLAMA_BOT - 1) && !memchr(text, '{', len))
        return not_called(res, len);
    long long end_index = -1;
    for (size_t i = 0; i < len; i++) {
        if (text[i] != '{' || (long long)i <= end_index) continue;
        size_t used = 0;
        struct pj *v = pj_raw_decode(text + i, len - i, &used);
        if (!v) return not_called(res, len);
        end_index = (long long)(i + used);
        const struct pj *name = pj_get(v, "name");
        const struct pj *args = pj_get(v, "arguments");
        if (!args) args = pj_get(v, "parameters");
        int ok = name && name->t == PJ_STR && args;
        if (ok) add_call(res, name, args);
        pj_free(v);
        if (!ok) return not_called(res, len);
    }
    if (!res->n_calls) return not_called(res, len);
    res->called = 1;
    res->content_len = 0;
    res->content_null = 1;
}

void tool_extract(int parser, const char *text, size_t len, struct tool_result *res)
{
    memset(res, 0, sizeof *res);
    if (parser == TOOL_PARSER_HERMES) extract_hermes(text, len, res);
    else if (parser == TOOL_PARSER_LLAMA3_JSON) extract_llama3(text, len, res);
    else not_called(res, len);
}

/* The longest k < strlen(w) such that text ends with the first k bytes of w. */
static size_t partial_suffix(const char *text, size_t len, const char *w)
{
    size_t wl = strlen(w);
    for (size_t k = wl - 1; k > 0; k--)
        if (k <= len && !memcmp(text + len - k, w, k)) return k;
    return 0;
}

size_t tool_stream_safe(int parser, const char *text, size_t len)
{
    if (parser == TOOL_PARSER_HERMES) {
        const char *open = memmem(text, len, HERMES_OPEN, sizeof HERMES_OPEN - 1);
        if (open) return (size_t)(open - text);
        return len - partial_suffix(text, len, HERMES_OPEN);
    }
    if (parser == TOOL_PARSER_LLAMA3_JSON) {
        /* vLLM streams a Llama answer as tool calls only when it opens with '{' or the tag */
        size_t bl = sizeof LLAMA_BOT - 1;
        if (len == 0 || text[0] == '{') return 0;
        if (!memcmp(text, LLAMA_BOT, len < bl ? len : bl)) return 0;
        return len;
    }
    return len;
}
