/* jinja.c - the Jinja2 subset that Hugging Face chat templates are written in: a lexer, a
 * parser to an AST, and an evaluator over a small Python-like value type, so that
 * tokenizer_config.json's `chat_template` renders byte for byte as transformers renders it.
 *
 * What "as transformers renders it" means (transformers' chat_template_utils.py):
 *   ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
 *                                 extensions=[AssistantTracker, loopcontrols])
 *   filters["tojson"] = json.dumps(x, ensure_ascii=False, indent, separators, sort_keys)
 *   globals raise_exception(msg), strftime_now(fmt)
 * and jinja2's defaults besides: keep_trailing_newline=False (one trailing newline of the source
 * is dropped), autoescape off, Undefined (printing an undefined name gives "", touching its
 * attributes raises). The value semantics are Python's: str() of a float is its shortest repr
 * ("1e-05"), lists print as their repr ("['a', 1]"), True == 1, 7 // -2 == -4, slicing with
 * negative steps, str methods (.strip() strips Unicode whitespace), dict lookups that fall back
 * to methods (`d.items`), scopes that reset at every loop iteration.
 *
 * Pipeline: jinja_compile() lexes the source (newlines normalised, the whitespace control of
 * `{%-`, `-%}`, trim_blocks and lstrip_blocks applied while lexing, exactly where jinja2's lexer
 * applies them) and parses it into an AST in the template's own arena; names of filters and
 * tests are resolved here, so an unsupported one is a load-time error naming it. A compiled
 * template is read-only: any number of threads render it at once. jinja_render() evaluates the
 * AST over the context variables in a per-render arena that is freed in one go.
 *
 * Errors: the parser and the evaluator report failures by longjmp() to the entry point, which
 * frees the arena and returns -1 with the message (naming the construct and, at load time, the
 * line). Nothing but arena memory is allocated between setjmp and longjmp, so the jump never
 * leaks. Rejected alternative: an error code checked after every evaluation call - it doubles
 * the evaluator's size and one forgotten check is a wrong render.
 *
 * Limits (hostile templates or inputs): source size, parser nesting, evaluation depth (macro
 * recursion included), loop iterations and evaluation steps, output size and arena bytes are
 * all capped (struct jinja_limits); every cap is an error, never a truncated render. The
 * renderer takes arbitrary bytes (template and JSON context) and never crashes: tests/fuzzers
 * drive jinja_compile() + jinja_render_json() directly.
 *
 * Known differences from CPython + jinja2, each an error rather than a different output:
 * integers are 64-bit (overflow is an error, Python would use a bignum); `%` string formatting,
 * `{% include/extends/import %}`, recursive loops and a few rarely used filters are refused.
 * Case mapping (upper/lower/title) uses the C library's Unicode tables (simple mappings: "ß"
 * stays "ß" where Python gives "SS"). */
#include "server_internal.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <wctype.h>

#define JINJA_MAX_SOURCE (4u << 20)    /* template bytes */
#define JINJA_MAX_NEST 200             /* parser nesting (expressions and blocks) */
#define JINJA_MAX_JSON_DEPTH 200       /* JSON context nesting */

struct jinja_limits jinja_default_limits(void)
{
    struct jinja_limits l;
    l.max_output = 32u << 20;
    l.max_memory = 256u << 20;
    l.max_steps = 20000000;
    l.max_iterations = 1000000;
    l.max_depth = 200;
    return l;
}

// ---------------------------------------------------------------------------------------------
// Errors and the arena

struct jerr {
    jmp_buf jb;
    char msg[ERR_LEN];
    int raised; /* raise_exception() (the template's own message), not an engine error */
};

static void jfail(struct jerr *e, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
static void jfail(struct jerr *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    longjmp(e->jb, 1);
}

struct ablock {
    struct ablock *next;
    size_t used, cap;
    _Alignas(16) char data[];
};

struct arena {
    struct ablock *head;
    size_t total, limit; /* limit 0: none */
    struct jerr *je;
};

static void *aalloc(struct arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    struct ablock *b = a->head;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        if (a->limit && a->total + cap > a->limit)
            jfail(a->je, "the template used more than %zu MiB of memory", a->limit >> 20);
        b = xmalloc(sizeof *b + cap);
        b->cap = cap;
        b->used = 0;
        b->next = a->head;
        a->head = b;
        a->total += cap;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

static void afree(struct arena *a)
{
    for (struct ablock *b = a->head, *n; b; b = n) {
        n = b->next;
        free(b);
    }
    a->head = NULL;
    a->total = 0;
}

static char *astrndup(struct arena *a, const char *s, size_t n)
{
    char *p = aalloc(a, n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

/* A growable byte buffer in the arena (outgrown chunks are abandoned: at most 2x). */
struct abuf {
    char *p;
    size_t len, cap;
};

static void ab_put(struct arena *a, struct abuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = aalloc(a, cap);
        if (b->len) memcpy(p, b->p, b->len);
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void ab_puts(struct arena *a, struct abuf *b, const char *s) { ab_put(a, b, s, strlen(s)); }

static void ab_printf(struct arena *a, struct abuf *b, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void ab_printf(struct arena *a, struct abuf *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) ab_put(a, b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

// ---------------------------------------------------------------------------------------------
// UTF-8 and the bits of Unicode Python's str methods need

/* Decode one code point at s[0..n) (n >= 1); invalid bytes decode as themselves (the inputs are
 * validated UTF-8; this only keeps arbitrary bytes from crashing). Returns the byte length. */
static int u8_dec(const char *s, size_t n, uint32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    if (u[0] < 0x80) { *cp = u[0]; return 1; }
    int len = u[0] >= 0xF0 ? 4 : u[0] >= 0xE0 ? 3 : u[0] >= 0xC0 ? 2 : 1;
    if (len == 1 || (size_t)len > n) { *cp = u[0]; return 1; }
    uint32_t c = u[0] & (0x7F >> len);
    for (int i = 1; i < len; i++) {
        if ((u[i] & 0xC0) != 0x80) { *cp = u[0]; return 1; }
        c = (c << 6) | (u[i] & 0x3F);
    }
    *cp = c;
    return len;
}

static int u8_enc(uint32_t c, char *o)
{
    if (c < 0x80) { o[0] = (char)c; return 1; }
    if (c < 0x800) { o[0] = (char)(0xC0 | (c >> 6)); o[1] = (char)(0x80 | (c & 63)); return 2; }
    if (c < 0x10000) {
        o[0] = (char)(0xE0 | (c >> 12)); o[1] = (char)(0x80 | ((c >> 6) & 63));
        o[2] = (char)(0x80 | (c & 63));
        return 3;
    }
    o[0] = (char)(0xF0 | (c >> 18)); o[1] = (char)(0x80 | ((c >> 12) & 63));
    o[2] = (char)(0x80 | ((c >> 6) & 63)); o[3] = (char)(0x80 | (c & 63));
    return 4;
}

static size_t u8_count(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) c++;
    return c;
}

/* Byte offset of code point k (k <= count). */
static size_t u8_offset(const char *s, size_t n, size_t k)
{
    size_t i = 0;
    uint32_t cp;
    while (k > 0 && i < n) {
        i += (size_t)u8_dec(s + i, n - i, &cp);
        k--;
    }
    return i;
}

/* str.isspace() (and the regex \s of a str pattern). */
static int py_isspace(uint32_t c)
{
    return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

/* str.splitlines() boundaries. */
static int py_islinebreak(uint32_t c)
{
    return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || (c >= 0x1C && c <= 0x1E) ||
           c == 0x85 || c == 0x2028 || c == 0x2029;
}

static locale_t utf8_loc;
static pthread_once_t utf8_once = PTHREAD_ONCE_INIT;
static void utf8_loc_init(void)
{
    utf8_loc = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
    if (!utf8_loc) utf8_loc = newlocale(LC_CTYPE_MASK, "C.utf8", (locale_t)0);
}

static uint32_t cp_upper(uint32_t c)
{
    if (c < 0x80) return (c >= 'a' && c <= 'z') ? c - 32 : c;
    pthread_once(&utf8_once, utf8_loc_init);
    return utf8_loc ? (uint32_t)towupper_l((wint_t)c, utf8_loc) : c;
}

static uint32_t cp_lower(uint32_t c)
{
    if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
    pthread_once(&utf8_once, utf8_loc_init);
    return utf8_loc ? (uint32_t)towlower_l((wint_t)c, utf8_loc) : c;
}

static int cp_isupper(uint32_t c) { return cp_lower(c) != c || (c < 0x80 && c >= 'A' && c <= 'Z'); }
static int cp_islower(uint32_t c) { return cp_upper(c) != c; }
static int cp_iscased(uint32_t c) { return cp_isupper(c) || cp_islower(c); }

static int cp_isalpha(uint32_t c)
{
    if (c < 0x80) return (c | 32) >= 'a' && (c | 32) <= 'z';
    pthread_once(&utf8_once, utf8_loc_init);
    return utf8_loc ? iswalpha_l((wint_t)c, utf8_loc) != 0 : 0;
}

static int cp_isdigit(uint32_t c)
{
    if (c < 0x80) return c >= '0' && c <= '9';
    pthread_once(&utf8_once, utf8_loc_init);
    return utf8_loc ? iswdigit_l((wint_t)c, utf8_loc) != 0 : 0;
}

/* repr() escapes these (str.isprintable() is false): C0/C1 controls, the separators (Zs but
 * space, Zl, Zp), the common format characters (Cf), surrogates, private use, noncharacters. */
static int cp_unprintable(uint32_t c)
{
    if (c < 0x20 || (c >= 0x7F && c <= 0xA0) || c == 0xAD) return 1;
    if (c == 0x1680 || (c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202F)) return 1;
    if ((c >= 0x205F && c <= 0x206F) || c == 0x3000 || c == 0xFEFF || c == 0x061C) return 1;
    if (c >= 0x180E && c <= 0x180E) return 1;
    if ((c >= 0xD800 && c <= 0xF8FF) || (c >= 0xFFF0 && c <= 0xFFFB) || (c & 0xFFFE) == 0xFFFE) return 1;
    if (c >= 0xF0000 || (c >= 0xE0000 && c <= 0xE0FFF)) return 1;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Values

/* Nesting guard for everything that recurses over the AST or over values (a template can
 * build a list nested 10^5 deep, or a namespace that holds itself): the render that runs on
 * this thread fails instead of overflowing the stack. */
#define JINJA_MAX_FRAMES 3000
struct rs;
static void rfail(struct rs *r, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
static _Thread_local int frames;
static _Thread_local struct rs *frames_rs;

static void frame_in(void)
{
    if (++frames > JINJA_MAX_FRAMES && frames_rs)
        rfail(frames_rs, "the template nests evaluation deeper than %d levels", JINJA_MAX_FRAMES);
}
#define FRAME_OUT() (frames--)

enum jt {
    JT_UNDEF = 0, JT_NONE, JT_BOOL, JT_INT, JT_FLOAT, JT_STR, JT_LIST, JT_TUPLE, JT_DICT,
    JT_NS,     /* namespace(): the one mutable object */
    JT_RANGE,  /* range(): lazy */
    JT_LOOP,   /* the `loop` variable of a for loop */
    JT_MACRO,
    JT_FUNC,   /* a global function (range, namespace, raise_exception, ...) */
    JT_METHOD, /* a bound method: x.strip */
};

#define JF_MARKUP 1 /* a str that |safe or |escape made (Markup) */

struct jstr {
    size_t len;
    char p[]; /* NUL-terminated */
};

struct jv;
struct jlist {
    size_t n;
    struct jv *v;
};

struct jkv;
struct jdict {
    size_t n, cap;
    struct jkv *kv;
};

struct jrange {
    int64_t start, stop, step;
};

struct node;
struct scope;
struct jloop;
struct jmacro;
struct jbound;

struct jv {
    uint8_t t;     /* enum jt */
    uint8_t flags; /* JF_* */
    uint16_t fn;   /* JT_FUNC / JT_METHOD: which one */
    union {
        int64_t i;          /* bool, int */
        double f;
        struct jstr *s;
        struct jlist *l;    /* list, tuple */
        struct jdict *d;    /* dict, namespace */
        struct jrange *rg;
        struct jloop *lp;
        struct jmacro *m;
        struct jbound *b;
        const char *hint;   /* undefined: why ("'x' is undefined") */
    } u;
};

struct jkv {
    struct jv k, v;
};

struct jloop {
    int64_t index0, length;
    struct jv prev, next;
    int has_prev, has_next;
    struct jv last_changed;
    int changed_set;
};

struct jbound {
    struct jv self;
    const char *name;
};

static const struct jv JV_UNDEF_V = {.t = JT_UNDEF};
static const struct jv JV_NONE_V = {.t = JT_NONE};

static struct jv jv_bool(int b) { struct jv v = {.t = JT_BOOL}; v.u.i = b != 0; return v; }
static struct jv jv_int(int64_t i) { struct jv v = {.t = JT_INT}; v.u.i = i; return v; }
static struct jv jv_float(double f) { struct jv v = {.t = JT_FLOAT}; v.u.f = f; return v; }

static struct jv jv_undef(const char *hint)
{
    struct jv v = {.t = JT_UNDEF};
    v.u.hint = hint;
    return v;
}

static struct jv jv_strn(struct arena *a, const char *s, size_t n)
{
    struct jstr *js = aalloc(a, sizeof *js + n + 1);
    js->len = n;
    if (n) memcpy(js->p, s, n);
    js->p[n] = 0;
    struct jv v = {.t = JT_STR};
    v.u.s = js;
    return v;
}

static struct jv jv_str(struct arena *a, const char *s) { return jv_strn(a, s, strlen(s)); }

static struct jv jv_list_n(struct arena *a, size_t n, int tuple)
{
    struct jlist *l = aalloc(a, sizeof *l);
    l->n = n;
    l->v = n ? aalloc(a, sizeof(struct jv) * n) : NULL;
    struct jv v = {.t = (uint8_t)(tuple ? JT_TUPLE : JT_LIST)};
    v.u.l = l;
    return v;
}

static struct jv jv_dict(struct arena *a, int ns)
{
    struct jdict *d = aalloc(a, sizeof *d);
    memset(d, 0, sizeof *d);
    struct jv v = {.t = (uint8_t)(ns ? JT_NS : JT_DICT)};
    v.u.d = d;
    return v;
}

static int is_num(const struct jv *v) { return v->t == JT_INT || v->t == JT_FLOAT || v->t == JT_BOOL; }
static int is_seq(const struct jv *v) { return v->t == JT_LIST || v->t == JT_TUPLE; }
static double num_f(const struct jv *v) { return v->t == JT_FLOAT ? v->u.f : (double)v->u.i; }

/* Python's type names, for messages. */
static const char *jv_type_name(const struct jv *v)
{
    switch (v->t) {
    case JT_UNDEF: return "Undefined";
    case JT_NONE: return "NoneType";
    case JT_BOOL: return "bool";
    case JT_INT: return "int";
    case JT_FLOAT: return "float";
    case JT_STR: return v->flags & JF_MARKUP ? "Markup" : "str";
    case JT_LIST: return "list";
    case JT_TUPLE: return "tuple";
    case JT_DICT: return "dict";
    case JT_NS: return "Namespace";
    case JT_RANGE: return "range";
    case JT_LOOP: return "LoopContext";
    case JT_MACRO: return "Macro";
    case JT_FUNC: return "function";
    default: return "builtin_function_or_method";
    }
}

static int64_t range_len(const struct jrange *r)
{
    if (r->step > 0) return r->start < r->stop ? (r->stop - r->start - 1) / r->step + 1 : 0;
    return r->start > r->stop ? (r->start - r->stop - 1) / (-r->step) + 1 : 0;
}

static void dict_set(struct arena *a, struct jdict *d, struct jv k, struct jv v);
static struct jv *dict_find(struct jdict *d, const struct jv *k);

static int jv_truthy(const struct jv *v)
{
    switch (v->t) {
    case JT_UNDEF: case JT_NONE: return 0;
    case JT_BOOL: case JT_INT: return v->u.i != 0;
    case JT_FLOAT: return v->u.f != 0.0;
    case JT_STR: return v->u.s->len != 0;
    case JT_LIST: case JT_TUPLE: return v->u.l->n != 0;
    case JT_DICT: return v->u.d->n != 0;
    case JT_RANGE: return range_len(v->u.rg) != 0;
    default: return 1;
    }
}

/* Python ==. */
static int jv_eq(const struct jv *a, const struct jv *b)
{
    if (is_num(a) && is_num(b)) {
        if (a->t == JT_FLOAT || b->t == JT_FLOAT) return num_f(a) == num_f(b);
        return a->u.i == b->u.i;
    }
    if (a->t != b->t) return 0;
    switch (a->t) {
    case JT_UNDEF: case JT_NONE: return 1;
    case JT_STR: return a->u.s->len == b->u.s->len && !memcmp(a->u.s->p, b->u.s->p, a->u.s->len);
    case JT_LIST: case JT_TUPLE: {
        if (a->u.l == b->u.l) return 1; /* Python compares items by identity first */
        if (a->u.l->n != b->u.l->n) return 0;
        int eq = 1;
        frame_in();
        for (size_t i = 0; i < a->u.l->n && eq; i++)
            if (!jv_eq(&a->u.l->v[i], &b->u.l->v[i])) eq = 0;
        FRAME_OUT();
        return eq;
    }
    case JT_DICT: {
        if (a->u.d == b->u.d) return 1;
        if (a->u.d->n != b->u.d->n) return 0;
        int eq = 1;
        frame_in();
        for (size_t i = 0; i < a->u.d->n && eq; i++) {
            struct jv *o = dict_find(b->u.d, &a->u.d->kv[i].k);
            if (!o || !jv_eq(&a->u.d->kv[i].v, o)) eq = 0;
        }
        FRAME_OUT();
        return eq;
    }
    case JT_RANGE:
        return range_len(a->u.rg) == range_len(b->u.rg) &&
               (range_len(a->u.rg) == 0 || (a->u.rg->start == b->u.rg->start &&
                                           (range_len(a->u.rg) == 1 || a->u.rg->step == b->u.rg->step)));
    case JT_FUNC: case JT_METHOD: return a->fn == b->fn && a->u.b == b->u.b;
    default: return a->u.d == b->u.d; /* identity */
    }
}

/* Python's hashable key types (what a dict key may be). */
static int jv_hashable(const struct jv *v)
{
    if (v->t == JT_TUPLE) {
        int ok = 1;
        frame_in();
        for (size_t i = 0; i < v->u.l->n && ok; i++) ok = jv_hashable(&v->u.l->v[i]);
        FRAME_OUT();
        return ok;
    }
    return v->t == JT_NONE || v->t == JT_BOOL || v->t == JT_INT || v->t == JT_FLOAT ||
           v->t == JT_STR || v->t == JT_UNDEF;
}

static struct jv *dict_find(struct jdict *d, const struct jv *k)
{
    for (size_t i = 0; i < d->n; i++)
        if (jv_eq(&d->kv[i].k, k)) return &d->kv[i].v;
    return NULL;
}

static struct jv *dict_find_str(struct jdict *d, const char *k)
{
    size_t n = strlen(k);
    for (size_t i = 0; i < d->n; i++) {
        const struct jv *kk = &d->kv[i].k;
        if (kk->t == JT_STR && kk->u.s->len == n && !memcmp(kk->u.s->p, k, n)) return &d->kv[i].v;
    }
    return NULL;
}

/* Insert or replace (an existing key keeps its position, as in a Python dict). */
static void dict_set(struct arena *a, struct jdict *d, struct jv k, struct jv v)
{
    struct jv *o = dict_find(d, &k);
    if (o) {
        *o = v;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        struct jkv *kv = aalloc(a, sizeof *kv * cap);
        if (d->n) memcpy(kv, d->kv, sizeof *kv * d->n);
        d->kv = kv;
        d->cap = cap;
    }
    d->kv[d->n].k = k;
    d->kv[d->n].v = v;
    d->n++;
}

// ---------------------------------------------------------------------------------------------
// Python's text forms: repr(float), repr(str), str(x), json.dumps(x)

/* repr(float): the shortest digits that round-trip, laid out as Python's float_repr_style
 * 'short' does: positional when -4 < exponent < 16 (with ".0" when integral), else
 * scientific with a signed exponent of at least two digits ("1e-05", "1.5e+16"). */
static void fmt_float(double x, char *out, size_t cap)
{
    if (isnan(x)) { snprintf(out, cap, "nan"); return; }
    if (isinf(x)) { snprintf(out, cap, x < 0 ? "-inf" : "inf"); return; }
    if (x == 0) { snprintf(out, cap, signbit(x) ? "-0.0" : "0.0"); return; }
    char buf[64];
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*e", p - 1, x);
        if (strtod(buf, NULL) == x) break;
    }
    /* buf: [-]d[.ddd]e[+-]XX */
    char digits[32];
    int nd = 0, neg = buf[0] == '-';
    const char *q = buf + neg;
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9') digits[nd++] = *q;
    int e10 = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    int decpt = e10 + 1; /* value = 0.digits x 10^decpt */
    char *o = out;
    size_t left = cap;
#define PUT(c) do { if (left > 1) { *o++ = (c); left--; } } while (0)
    if (neg) PUT('-');
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            PUT('0');
            PUT('.');
            for (int i = 0; i < -decpt; i++) PUT('0');
            for (int i = 0; i < nd; i++) PUT(digits[i]);
        } else {
            for (int i = 0; i < decpt; i++) PUT(i < nd ? digits[i] : '0');
            PUT('.');
            if (nd > decpt) for (int i = decpt; i < nd; i++) PUT(digits[i]);
            else PUT('0');
        }
    } else {
        PUT(digits[0]);
        if (nd > 1) {
            PUT('.');
            for (int i = 1; i < nd; i++) PUT(digits[i]);
        }
        char ex[16];
        snprintf(ex, sizeof ex, "e%c%02d", decpt - 1 < 0 ? '-' : '+', abs(decpt - 1));
        for (char *c = ex; *c; c++) PUT(*c);
    }
#undef PUT
    *o = 0;
}

/* repr(str). */
static void repr_str(struct arena *a, struct abuf *b, const char *s, size_t n)
{
    int sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
    char quote = (sq && !dq) ? '"' : '\'';
    ab_put(a, b, &quote, 1);
    for (size_t i = 0; i < n;) {
        uint32_t c;
        int k = u8_dec(s + i, n - i, &c);
        char esc[16];
        if (c == (uint32_t)quote || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            ab_put(a, b, esc, 2);
        } else if (c == '\n') ab_puts(a, b, "\\n");
        else if (c == '\r') ab_puts(a, b, "\\r");
        else if (c == '\t') ab_puts(a, b, "\\t");
        else if (cp_unprintable(c)) {
            if (c < 0x100) snprintf(esc, sizeof esc, "\\x%02x", c);
            else if (c < 0x10000) snprintf(esc, sizeof esc, "\\u%04x", c);
            else snprintf(esc, sizeof esc, "\\U%08x", c);
            ab_puts(a, b, esc);
        } else {
            ab_put(a, b, s + i, (size_t)k);
        }
        i += (size_t)k;
    }
    ab_put(a, b, &quote, 1);
}

/* str(x) (repr when inside a container). */
static void jv_write(struct rs *r, struct arena *a, struct abuf *b, const struct jv *v, int repr)
{
    char num[64];
    switch (v->t) {
    case JT_UNDEF: if (repr) ab_puts(a, b, "Undefined"); return;
    case JT_NONE: ab_puts(a, b, "None"); return;
    case JT_BOOL: ab_puts(a, b, v->u.i ? "True" : "False"); return;
    case JT_INT: snprintf(num, sizeof num, "%lld", (long long)v->u.i); ab_puts(a, b, num); return;
    case JT_FLOAT: fmt_float(v->u.f, num, sizeof num); ab_puts(a, b, num); return;
    case JT_STR:
        if (!repr) ab_put(a, b, v->u.s->p, v->u.s->len);
        else {
            if (v->flags & JF_MARKUP) ab_puts(a, b, "Markup(");
            repr_str(a, b, v->u.s->p, v->u.s->len);
            if (v->flags & JF_MARKUP) ab_puts(a, b, ")");
        }
        return;
    case JT_LIST: case JT_TUPLE: {
        frame_in();
        ab_puts(a, b, v->t == JT_LIST ? "[" : "(");
        for (size_t i = 0; i < v->u.l->n; i++) {
            if (i) ab_puts(a, b, ", ");
            jv_write(r, a, b, &v->u.l->v[i], 1);
        }
        if (v->t == JT_TUPLE && v->u.l->n == 1) ab_puts(a, b, ",");
        ab_puts(a, b, v->t == JT_LIST ? "]" : ")");
        FRAME_OUT();
        return;
    }
    case JT_DICT: case JT_NS: {
        frame_in();
        ab_puts(a, b, v->t == JT_NS ? "<Namespace {" : "{");
        for (size_t i = 0; i < v->u.d->n; i++) {
            if (i) ab_puts(a, b, ", ");
            jv_write(r, a, b, &v->u.d->kv[i].k, 1);
            ab_puts(a, b, ": ");
            jv_write(r, a, b, &v->u.d->kv[i].v, 1);
        }
        ab_puts(a, b, v->t == JT_NS ? "}>" : "}");
        FRAME_OUT();
        return;
    }
    case JT_RANGE:
        if (v->u.rg->step == 1) ab_printf(a, b, "range(%lld, %lld)", (long long)v->u.rg->start, (long long)v->u.rg->stop);
        else ab_printf(a, b, "range(%lld, %lld, %lld)", (long long)v->u.rg->start, (long long)v->u.rg->stop,
                       (long long)v->u.rg->step);
        return;
    case JT_LOOP:
        ab_printf(a, b, "<LoopContext %lld/%lld>", (long long)v->u.lp->index0 + 1, (long long)v->u.lp->length);
        return;
    default:
        /* Python prints a memory address here: no two runs agree, so no template relies on it */
        rfail(r, "cannot print a %s (a function or macro object, not its result)", jv_type_name(v));
    }
}

/* json.dumps with transformers' defaults (ensure_ascii=False unless asked). */
struct json_opts {
    int ensure_ascii, sort_keys;
    const char *indent;   /* NULL: no indent */
    const char *item_sep, *key_sep;
};

static void json_str(struct arena *a, struct abuf *b, const char *s, size_t n, int ascii)
{
    ab_put(a, b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        int plain = c >= 0x20 && c != '"' && c != '\\' && (!ascii || c < 0x7F);
        if (plain) { i++; continue; }
        ab_put(a, b, s + run, i - run);
        char esc[16];
        uint32_t cp = c;
        int k = 1;
        if (c >= 0x80) k = u8_dec(s + i, n - i, &cp);
        switch (cp) {
        case '"': ab_puts(a, b, "\\\""); break;
        case '\\': ab_puts(a, b, "\\\\"); break;
        case '\n': ab_puts(a, b, "\\n"); break;
        case '\r': ab_puts(a, b, "\\r"); break;
        case '\t': ab_puts(a, b, "\\t"); break;
        case '\b': ab_puts(a, b, "\\b"); break;
        case '\f': ab_puts(a, b, "\\f"); break;
        default:
            if (cp >= 0x10000) {
                uint32_t v = cp - 0x10000;
                snprintf(esc, sizeof esc, "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
            } else {
                snprintf(esc, sizeof esc, "\\u%04x", cp);
            }
            ab_puts(a, b, esc);
        }
        i += (size_t)k;
        run = i;
    }
    ab_put(a, b, s + run, n - run);
    ab_put(a, b, "\"", 1);
}

static int jv_cmp(struct rs *r, const struct jv *x, const struct jv *y);

static void json_indent(struct arena *a, struct abuf *b, const struct json_opts *o, int level)
{
    ab_put(a, b, "\n", 1);
    for (int i = 0; i < level; i++) ab_puts(a, b, o->indent);
}

static void json_dump(struct rs *r, struct arena *a, struct abuf *b, const struct jv *v,
                      const struct json_opts *o, int level)
{
    char num[64];
    if (level > JINJA_MAX_JSON_DEPTH) rfail(r, "tojson: nesting deeper than %d", JINJA_MAX_JSON_DEPTH);
    switch (v->t) {
    case JT_NONE: ab_puts(a, b, "null"); return;
    case JT_BOOL: ab_puts(a, b, v->u.i ? "true" : "false"); return;
    case JT_INT: snprintf(num, sizeof num, "%lld", (long long)v->u.i); ab_puts(a, b, num); return;
    case JT_FLOAT:
        if (isnan(v->u.f)) ab_puts(a, b, "NaN");
        else if (isinf(v->u.f)) ab_puts(a, b, v->u.f < 0 ? "-Infinity" : "Infinity");
        else { fmt_float(v->u.f, num, sizeof num); ab_puts(a, b, num); }
        return;
    case JT_STR: json_str(a, b, v->u.s->p, v->u.s->len, o->ensure_ascii); return;
    case JT_LIST: case JT_TUPLE: {
        if (v->u.l->n == 0) { ab_puts(a, b, "[]"); return; }
        ab_puts(a, b, "[");
        for (size_t i = 0; i < v->u.l->n; i++) {
            if (i) ab_puts(a, b, o->item_sep);
            if (o->indent) json_indent(a, b, o, level + 1);
            json_dump(r, a, b, &v->u.l->v[i], o, level + 1);
        }
        if (o->indent) json_indent(a, b, o, level);
        ab_puts(a, b, "]");
        return;
    }
    case JT_DICT: {
        size_t n = v->u.d->n;
        if (n == 0) { ab_puts(a, b, "{}"); return; }
        const struct jkv **kv = aalloc(a, sizeof *kv * n);
        for (size_t i = 0; i < n; i++) kv[i] = &v->u.d->kv[i];
        if (o->sort_keys) /* insertion sort: stable, and Python's comparison rules */
            for (size_t i = 1; i < n; i++)
                for (size_t j = i; j > 0 && jv_cmp(r, &kv[j - 1]->k, &kv[j]->k) > 0; j--) {
                    const struct jkv *t = kv[j - 1];
                    kv[j - 1] = kv[j];
                    kv[j] = t;
                }
        ab_puts(a, b, "{");
        for (size_t i = 0; i < n; i++) {
            if (i) ab_puts(a, b, o->item_sep);
            if (o->indent) json_indent(a, b, o, level + 1);
            const struct jv *k = &kv[i]->k;
            switch (k->t) {
            case JT_STR: json_str(a, b, k->u.s->p, k->u.s->len, o->ensure_ascii); break;
            case JT_NONE: ab_puts(a, b, "\"null\""); break;
            case JT_BOOL: ab_puts(a, b, k->u.i ? "\"true\"" : "\"false\""); break;
            case JT_INT: snprintf(num, sizeof num, "\"%lld\"", (long long)k->u.i); ab_puts(a, b, num); break;
            case JT_FLOAT: {
                struct abuf t = {0};
                json_dump(r, a, &t, k, o, level + 1);
                ab_puts(a, b, "\"");
                ab_put(a, b, t.p, t.len);
                ab_puts(a, b, "\"");
                break;
            }
            default: rfail(r, "tojson: keys must be str, int, float, bool or None, not %s", jv_type_name(k));
            }
            ab_puts(a, b, o->key_sep);
            json_dump(r, a, b, &kv[i]->v, o, level + 1);
        }
        if (o->indent) json_indent(a, b, o, level);
        ab_puts(a, b, "}");
        return;
    }
    default:
        rfail(r, "tojson: Object of type %s is not JSON serializable", jv_type_name(v));
    }
}

// ---------------------------------------------------------------------------------------------
// JSON text -> values (Python's json.loads: "1" is an int, "1.0" a float, object keys keep
// their first position and their last value)

struct jparse {
    const char *s, *e;
    struct arena *a;
    struct jerr *je;
    int depth;
};

static void jp_ws(struct jparse *p)
{
    while (p->s < p->e && (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r')) p->s++;
}

static void jp_fail(struct jparse *p, const char *what) __attribute__((noreturn));
static void jp_fail(struct jparse *p, const char *what) { jfail(p->je, "invalid JSON: %s", what); }

static unsigned jp_hex4(struct jparse *p)
{
    if (p->e - p->s < 4) jp_fail(p, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if ((c | 32) >= 'a' && (c | 32) <= 'f') v |= (unsigned)((c | 32) - 'a' + 10);
        else jp_fail(p, "bad \\u escape");
    }
    p->s += 4;
    return v;
}

static struct jv jp_string(struct jparse *p)
{
    p->s++; /* opening quote */
    const char *q = p->s;
    while (q < p->e && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20) q++;
    if (q < p->e && *q == '"') { /* no escapes: one copy (the text was checked as UTF-8 already) */
        struct jv v = jv_strn(p->a, p->s, (size_t)(q - p->s));
        p->s = q + 1;
        return v;
    }
    struct abuf b = {0};
    ab_put(p->a, &b, "", 0);
    const char *run = p->s;
    for (;;) {
        if (p->s >= p->e) jp_fail(p, "unterminated string");
        unsigned char c = (unsigned char)*p->s;
        if (c == '"') break;
        if (c < 0x20) jp_fail(p, "control character in a string");
        if (c != '\\') { p->s++; continue; }
        ab_put(p->a, &b, run, (size_t)(p->s - run));
        p->s++;
        if (p->s >= p->e) jp_fail(p, "unterminated string");
        char e = *p->s++;
        char o[4];
        switch (e) {
        case '"': ab_put(p->a, &b, "\"", 1); break;
        case '\\': ab_put(p->a, &b, "\\", 1); break;
        case '/': ab_put(p->a, &b, "/", 1); break;
        case 'b': ab_put(p->a, &b, "\b", 1); break;
        case 'f': ab_put(p->a, &b, "\f", 1); break;
        case 'n': ab_put(p->a, &b, "\n", 1); break;
        case 'r': ab_put(p->a, &b, "\r", 1); break;
        case 't': ab_put(p->a, &b, "\t", 1); break;
        case 'u': {
            unsigned cp = jp_hex4(p);
            if (cp >= 0xD800 && cp < 0xDC00) {
                if (p->e - p->s < 6 || p->s[0] != '\\' || p->s[1] != 'u')
                    jp_fail(p, "lone surrogate in a \\u escape");
                p->s += 2;
                unsigned lo = jp_hex4(p);
                if (lo < 0xDC00 || lo > 0xDFFF) jp_fail(p, "lone surrogate in a \\u escape");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                jp_fail(p, "lone surrogate in a \\u escape");
            }
            ab_put(p->a, &b, o, (size_t)u8_enc(cp, o));
            break;
        }
        default: jp_fail(p, "bad escape");
        }
        run = p->s;
    }
    ab_put(p->a, &b, run, (size_t)(p->s - run));
    p->s++;
    struct jv v = {.t = JT_STR};
    struct jstr *js = aalloc(p->a, sizeof *js + b.len + 1);
    js->len = b.len;
    memcpy(js->p, b.p, b.len + 1);
    v.u.s = js;
    return v;
}

static struct jv jp_value(struct jparse *p);

static struct jv jp_number(struct jparse *p)
{
    const char *st = p->s;
    int is_float = 0;
    if (p->s < p->e && *p->s == '-') p->s++;
    if (p->s >= p->e || !isdigit((unsigned char)*p->s)) jp_fail(p, "bad number");
    if (*p->s == '0') p->s++;
    else while (p->s < p->e && isdigit((unsigned char)*p->s)) p->s++;
    if (p->s < p->e && *p->s == '.') {
        is_float = 1;
        p->s++;
        if (p->s >= p->e || !isdigit((unsigned char)*p->s)) jp_fail(p, "bad number");
        while (p->s < p->e && isdigit((unsigned char)*p->s)) p->s++;
    }
    if (p->s < p->e && (*p->s == 'e' || *p->s == 'E')) {
        is_float = 1;
        p->s++;
        if (p->s < p->e && (*p->s == '+' || *p->s == '-')) p->s++;
        if (p->s >= p->e || !isdigit((unsigned char)*p->s)) jp_fail(p, "bad number");
        while (p->s < p->e && isdigit((unsigned char)*p->s)) p->s++;
    }
    char buf[400];
    size_t n = (size_t)(p->s - st);
    if (n >= sizeof buf) jp_fail(p, "number too long");
    memcpy(buf, st, n);
    buf[n] = 0;
    if (is_float) return jv_float(strtod(buf, NULL));
    errno = 0;
    long long v = strtoll(buf, NULL, 10);
    if (errno == ERANGE) jp_fail(p, "integer out of the 64-bit range");
    return jv_int(v);
}

static int jp_lit(struct jparse *p, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(p->e - p->s) >= n && !memcmp(p->s, w, n)) {
        p->s += n;
        return 1;
    }
    return 0;
}

static struct jv jp_value(struct jparse *p)
{
    jp_ws(p);
    if (p->s >= p->e) jp_fail(p, "unexpected end");
    if (++p->depth > JINJA_MAX_JSON_DEPTH) jp_fail(p, "nested too deeply");
    struct jv v;
    char c = *p->s;
    if (c == '"') v = jp_string(p);
    else if (c == '{') {
        p->s++;
        v = jv_dict(p->a, 0);
        jp_ws(p);
        if (p->s < p->e && *p->s == '}') p->s++;
        else for (;;) {
            jp_ws(p);
            if (p->s >= p->e || *p->s != '"') jp_fail(p, "expected an object key");
            struct jv k = jp_string(p);
            jp_ws(p);
            if (p->s >= p->e || *p->s != ':') jp_fail(p, "expected ':'");
            p->s++;
            struct jv x = jp_value(p);
            dict_set(p->a, v.u.d, k, x);
            jp_ws(p);
            if (p->s < p->e && *p->s == ',') { p->s++; continue; }
            if (p->s < p->e && *p->s == '}') { p->s++; break; }
            jp_fail(p, "expected ',' or '}'");
        }
    } else if (c == '[') {
        p->s++;
        struct jv *items = NULL;
        size_t n = 0, cap = 0;
        jp_ws(p);
        if (p->s < p->e && *p->s == ']') p->s++;
        else for (;;) {
            struct jv x = jp_value(p);
            if (n == cap) {
                cap = cap ? cap * 2 : 8;
                struct jv *ni = aalloc(p->a, sizeof *ni * cap);
                if (n) memcpy(ni, items, sizeof *ni * n);
                items = ni;
            }
            items[n++] = x;
            jp_ws(p);
            if (p->s < p->e && *p->s == ',') { p->s++; continue; }
            if (p->s < p->e && *p->s == ']') { p->s++; break; }
            jp_fail(p, "expected ',' or ']'");
        }
        v = jv_list_n(p->a, 0, 0);
        v.u.l->n = n;
        v.u.l->v = items;
    } else if (jp_lit(p, "true")) v = jv_bool(1);
    else if (jp_lit(p, "false")) v = jv_bool(0);
    else if (jp_lit(p, "null")) v = JV_NONE_V;
    else if (jp_lit(p, "NaN")) v = jv_float(NAN);
    else if (jp_lit(p, "Infinity")) v = jv_float(INFINITY);
    else if (jp_lit(p, "-Infinity")) v = jv_float(-INFINITY);
    else v = jp_number(p);
    p->depth--;
    return v;
}

/* Parse JSON text (exactly one value) into a value in arena a; errors jump to je. */
static struct jv json_parse(struct arena *a, struct jerr *je, const char *s, size_t n)
{
    /* valid UTF-8 in, valid UTF-8 out: \u escapes only make whole characters (no lone surrogates) */
    if (!utf8_valid(s, n)) jfail(je, "invalid JSON: not valid UTF-8");
    struct jparse p = {s, s + n, a, je, 0};
    struct jv v = jp_value(&p);
    jp_ws(&p);
    if (p.s != p.e) jp_fail(&p, "extra data after the value");
    return v;
}

// ---------------------------------------------------------------------------------------------
// Lexer: source -> tokens, with jinja2's whitespace control applied to the data tokens
//
// jinja2 (lexer.py) with trim_blocks and lstrip_blocks:
//   - newlines are normalised to \n and one trailing newline is dropped (keep_trailing_newline
//     is off);
//   - `{%-` / `{{-` / `{#-` strip all whitespace (str.rstrip) from the data before the tag;
//   - otherwise, for `{%` and `{#` (not `{{`) without `+`: when only whitespace lies between
//     the start of the line and the tag, that whitespace goes (lstrip_blocks);
//   - `-%}` / `-}}` / `-#}` strip all whitespace after the tag; `%}` and `#}` swallow one "\n"
//     (trim_blocks); `+%}` swallows nothing.

enum tok_type { T_EOF = 0, T_DATA, T_VAR_BEGIN, T_VAR_END, T_BLOCK_BEGIN, T_BLOCK_END, T_NAME,
                T_STRING, T_INT, T_FLOAT, T_OP };

enum op {
    OP_NONE = 0, OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW, OP_TILDE,
    OP_LBRACKET, OP_RBRACKET, OP_LPAREN, OP_RPAREN, OP_LBRACE, OP_RBRACE, OP_EQ, OP_NE, OP_GT,
    OP_GE, OP_LT, OP_LE, OP_ASSIGN, OP_DOT, OP_COLON, OP_PIPE, OP_COMMA, OP_SEMICOLON,
};

static const struct { const char *s; enum op op; } op_table[] = { /* longest first */
    {"//", OP_FLOORDIV}, {"**", OP_POW}, {"==", OP_EQ}, {"!=", OP_NE}, {">=", OP_GE},
    {"<=", OP_LE}, {"+", OP_ADD}, {"-", OP_SUB}, {"/", OP_DIV}, {"*", OP_MUL}, {"%", OP_MOD},
    {"~", OP_TILDE}, {"[", OP_LBRACKET}, {"]", OP_RBRACKET}, {"(", OP_LPAREN}, {")", OP_RPAREN},
    {"{", OP_LBRACE}, {"}", OP_RBRACE}, {">", OP_GT}, {"<", OP_LT}, {"=", OP_ASSIGN},
    {".", OP_DOT}, {":", OP_COLON}, {"|", OP_PIPE}, {",", OP_COMMA}, {";", OP_SEMICOLON},
};

static const char *op_str(enum op o)
{
    for (size_t i = 0; i < sizeof op_table / sizeof *op_table; i++)
        if (op_table[i].op == o) return op_table[i].s;
    return "?";
}

struct token {
    enum tok_type type;
    enum op op;
    const char *s; /* name, string value (arena, NUL-terminated), data */
    size_t n;
    int64_t i;
    double f;
    int line;
};

struct lexer {
    const char *src;
    size_t len, pos;
    int line;
    struct arena *a;
    struct jerr *je;
    struct token *toks;
    size_t n, cap;
    int line_starting;
};

static void lex_push(struct lexer *L, struct token t)
{
    if (L->n == L->cap) {
        size_t cap = L->cap ? L->cap * 2 : 256;
        struct token *nt = aalloc(L->a, sizeof *nt * cap);
        if (L->n) memcpy(nt, L->toks, sizeof *nt * L->n);
        L->toks = nt;
        L->cap = cap;
    }
    L->toks[L->n++] = t;
}

static void lfail(struct lexer *L, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
static void lfail(struct lexer *L, const char *fmt, ...)
{
    char m[ERR_LEN - 32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    jfail(L->je, "line %d: %s", L->line, m);
}

/* Length of the Unicode whitespace run at s[0..n). */
static size_t ws_run(const char *s, size_t n)
{
    size_t i = 0;
    uint32_t c;
    while (i < n) {
        int k = u8_dec(s + i, n - i, &c);
        if (!py_isspace(c)) break;
        i += (size_t)k;
    }
    return i;
}

/* str.rstrip(): the length without the trailing whitespace. */
static size_t rstrip_len(const char *s, size_t n)
{
    size_t end = n;
    while (end > 0) {
        size_t st = end - 1;
        while (st > 0 && ((unsigned char)s[st] & 0xC0) == 0x80) st--;
        uint32_t c;
        u8_dec(s + st, end - st, &c);
        if (!py_isspace(c)) break;
        end = st;
    }
    return end;
}

static int count_nl(const char *s, size_t n)
{
    int c = 0;
    for (size_t i = 0; i < n; i++) c += s[i] == '\n';
    return c;
}

/* Emit the data before a tag with its sign ('-', '+' or 0) and lstrip rule applied. */
static void lex_data(struct lexer *L, const char *text, size_t n, char sign, int lstrip_applies)
{
    if (sign == '-') {
        n = rstrip_len(text, n);
    } else if (sign != '+' && lstrip_applies) {
        size_t l_pos = 0;
        for (size_t i = n; i > 0; i--)
            if (text[i - 1] == '\n') { l_pos = i; break; }
        if ((l_pos > 0 || L->line_starting) && l_pos < n && ws_run(text + l_pos, n - l_pos) == n - l_pos)
            n = l_pos;
    }
    if (n) {
        struct token t = {.type = T_DATA, .s = text, .n = n, .line = L->line};
        lex_push(L, t);
    }
}

/* Python's unicode-escape decoding of a string literal's body (after jinja2's
 * encode("ascii", "backslashreplace"): a backslash before a non-ASCII character keeps the
 * backslash and spells the character as \xNN / \uNNNN / \UNNNNNNNN). */
static char *lex_unescape(struct lexer *L, const char *s, size_t n, size_t *out_n)
{
    struct abuf b = {0};
    ab_put(L->a, &b, "", 0);
    for (size_t i = 0; i < n;) {
        if (s[i] != '\\' || i + 1 >= n) {
            ab_put(L->a, &b, s + i, 1);
            i++;
            continue;
        }
        char c = s[i + 1];
        char o[8];
        uint32_t cp;
        i += 2;
        switch (c) {
        case '\n': break;
        case '\\': ab_put(L->a, &b, "\\", 1); break;
        case '\'': ab_put(L->a, &b, "'", 1); break;
        case '"': ab_put(L->a, &b, "\"", 1); break;
        case 'a': ab_put(L->a, &b, "\a", 1); break;
        case 'b': ab_put(L->a, &b, "\b", 1); break;
        case 'f': ab_put(L->a, &b, "\f", 1); break;
        case 'n': ab_put(L->a, &b, "\n", 1); break;
        case 'r': ab_put(L->a, &b, "\r", 1); break;
        case 't': ab_put(L->a, &b, "\t", 1); break;
        case 'v': ab_put(L->a, &b, "\v", 1); break;
        case 'x': case 'u': case 'U': {
            int want = c == 'x' ? 2 : c == 'u' ? 4 : 8;
            cp = 0;
            for (int k = 0; k < want; k++, i++) {
                if (i >= n || !isxdigit((unsigned char)s[i]))
                    lfail(L, "string literal: truncated \\%c escape", c);
                cp = cp * 16 + (uint32_t)(isdigit((unsigned char)s[i]) ? s[i] - '0' : (s[i] | 32) - 'a' + 10);
            }
            if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                lfail(L, "string literal: \\%c escape is not a valid character", c);
            ab_put(L->a, &b, o, (size_t)u8_enc(cp, o));
            break;
        }
        case 'N': lfail(L, "string literal: \\N{...} escapes are not supported");
        default:
            if (c >= '0' && c <= '7') {
                cp = (uint32_t)(c - '0');
                for (int k = 0; k < 2 && i < n && s[i] >= '0' && s[i] <= '7'; k++, i++) cp = cp * 8 + (uint32_t)(s[i] - '0');
                ab_put(L->a, &b, o, (size_t)u8_enc(cp, o));
            } else if ((unsigned char)c >= 0x80) {
                u8_dec(s + i - 1, n - (i - 1), &cp);
                i = i - 1 + (size_t)u8_dec(s + i - 1, n - (i - 1), &cp);
                char esc[16];
                if (cp < 0x100) snprintf(esc, sizeof esc, "\\x%02x", cp);
                else if (cp < 0x10000) snprintf(esc, sizeof esc, "\\u%04x", cp);
                else snprintf(esc, sizeof esc, "\\U%08x", cp);
                ab_puts(L->a, &b, esc);
            } else {
                o[0] = '\\';
                o[1] = c;
                ab_put(L->a, &b, o, 2);
            }
        }
    }
    *out_n = b.len;
    return b.p;
}

/* Digits with single underscores between them ([0-9](_?[0-9])*); returns the length. */
static size_t digits_run(const char *s, size_t n, int (*isd)(int))
{
    size_t i = 0;
    if (i >= n || !isd((unsigned char)s[i])) return 0;
    i++;
    for (;;) {
        if (i < n && isd((unsigned char)s[i])) { i++; continue; }
        if (i + 1 < n && s[i] == '_' && isd((unsigned char)s[i + 1])) { i += 2; continue; }
        return i;
    }
}

static int is_dec(int c) { return c >= '0' && c <= '9'; }

/* Tokens inside {{ }} / {% %} until the end delimiter. */
static void lex_tag(struct lexer *L, int is_block)
{
    const char *s = L->src;
    size_t n = L->len;
    int depth = 0; /* open ( [ { : the end delimiter only counts at depth 0 */
    enum op stack[JINJA_MAX_NEST];
    for (;;) {
        size_t p = L->pos;
        if (p >= n) lfail(L, "unexpected end of template: missing '%s'", is_block ? "%}" : "}}");
        if (depth == 0) {
            if (is_block) {
                if (n - p >= 3 && !memcmp(s + p, "+%}", 3)) { L->pos = p + 3; goto end; }
                if (n - p >= 3 && !memcmp(s + p, "-%}", 3)) {
                    L->pos = p + 3;
                    size_t w = ws_run(s + L->pos, n - L->pos);
                    L->line += count_nl(s + L->pos, w);
                    L->pos += w;
                    goto end;
                }
                if (n - p >= 2 && !memcmp(s + p, "%}", 2)) {
                    L->pos = p + 2;
                    if (L->pos < n && s[L->pos] == '\n') { L->pos++; L->line++; }
                    goto end;
                }
            } else {
                if (n - p >= 3 && !memcmp(s + p, "-}}", 3)) {
                    L->pos = p + 3;
                    size_t w = ws_run(s + L->pos, n - L->pos);
                    L->line += count_nl(s + L->pos, w);
                    L->pos += w;
                    goto end;
                }
                if (n - p >= 2 && !memcmp(s + p, "}}", 2)) { L->pos = p + 2; goto end; }
            }
        }
        size_t w = ws_run(s + p, n - p);
        if (w) {
            L->line += count_nl(s + p, w);
            L->pos += w;
            continue;
        }
        struct token t = {.line = L->line};
        unsigned char c = (unsigned char)s[p];
        if (isdigit(c)) {
            /* float: digits then (fraction? exponent | fraction), not right after a '.' */
            size_t d = digits_run(s + p, n - p, is_dec), q = p + d, fe = 0;
            int prev_dot = p > 0 && s[p - 1] == '.';
            if (!prev_dot) {
                size_t fr = 0;
                if (q < n && s[q] == '.') fr = digits_run(s + q + 1, n - q - 1, is_dec);
                size_t qq = fr ? q + 1 + fr : q;
                size_t ex = 0;
                if (qq < n && (s[qq] | 32) == 'e') {
                    size_t r = qq + 1;
                    if (r < n && (s[r] == '+' || s[r] == '-')) r++;
                    size_t ed = digits_run(s + r, n - r, is_dec);
                    if (ed) ex = r + ed - qq;
                }
                if (ex) fe = qq + ex;
                else if (fr) fe = qq;
            }
            char buf[128];
            size_t k = 0;
            if (fe) {
                for (size_t i = p; i < fe && k + 1 < sizeof buf; i++) if (s[i] != '_') buf[k++] = s[i];
                buf[k] = 0;
                t.type = T_FLOAT;
                t.f = strtod(buf, NULL);
                L->pos = fe;
            } else {
                int base = 10;
                size_t st = p, e;
                if (c == '0' && p + 1 < n && strchr("bBoOxX", s[p + 1]) && s[p + 1]) {
                    char b = (char)(s[p + 1] | 32);
                    base = b == 'b' ? 2 : b == 'o' ? 8 : 16;
                    e = p + 2;
                    while (e < n && (isxdigit((unsigned char)s[e]) || s[e] == '_')) e++;
                    st = p + 2;
                } else if (c == '0') {
                    e = p + 1;
                    while (e + 1 < n + 1 && e < n && (s[e] == '0' || (s[e] == '_' && e + 1 < n && s[e + 1] == '0'))) e++;
                } else {
                    e = p + d;
                }
                for (size_t i = st; i < e && k + 1 < sizeof buf; i++) if (s[i] != '_') buf[k++] = s[i];
                buf[k] = 0;
                errno = 0;
                char *end;
                long long v = strtoll(buf, &end, base);
                if (errno == ERANGE) lfail(L, "integer literal %s does not fit in 64 bits", buf);
                if (*end || !k) lfail(L, "bad integer literal");
                t.type = T_INT;
                t.i = v;
                L->pos = e;
            }
            lex_push(L, t);
            continue;
        }
        if (isalpha(c) || c == '_') {
            size_t e = p + 1;
            while (e < n && (isalnum((unsigned char)s[e]) || s[e] == '_')) e++;
            if (e < n && (unsigned char)s[e] >= 0x80) lfail(L, "non-ASCII identifiers are not supported");
            t.type = T_NAME;
            t.s = astrndup(L->a, s + p, e - p);
            t.n = e - p;
            L->pos = e;
            lex_push(L, t);
            continue;
        }
        if (c == '\'' || c == '"') {
            size_t e = p + 1;
            while (e < n && s[e] != (char)c) {
                if (s[e] == '\\' && e + 1 < n) e++;
                e++;
            }
            if (e >= n) lfail(L, "unterminated string literal");
            t.type = T_STRING;
            t.s = lex_unescape(L, s + p + 1, e - p - 1, &t.n);
            L->line += count_nl(s + p, e - p);
            L->pos = e + 1;
            lex_push(L, t);
            continue;
        }
        size_t k;
        for (k = 0; k < sizeof op_table / sizeof *op_table; k++) {
            size_t ol = strlen(op_table[k].s);
            if (n - p >= ol && !memcmp(s + p, op_table[k].s, ol)) break;
        }
        if (k == sizeof op_table / sizeof *op_table) {
            if (c == '!' ) lfail(L, "unexpected '!'");
            lfail(L, "unexpected character '%c' (0x%02x)", c >= 0x20 && c < 0x7F ? c : '?', c);
        }
        t.type = T_OP;
        t.op = op_table[k].op;
        L->pos = p + strlen(op_table[k].s);
        if (t.op == OP_LPAREN || t.op == OP_LBRACKET || t.op == OP_LBRACE) {
            if (depth >= JINJA_MAX_NEST) lfail(L, "brackets nested deeper than %d", JINJA_MAX_NEST);
            stack[depth++] = t.op == OP_LPAREN ? OP_RPAREN : t.op == OP_LBRACKET ? OP_RBRACKET : OP_RBRACE;
        } else if (t.op == OP_RPAREN || t.op == OP_RBRACKET || t.op == OP_RBRACE) {
            if (depth == 0) lfail(L, "unexpected '%s'", op_str(t.op));
            if (stack[--depth] != t.op) lfail(L, "unexpected '%s', expected '%s'", op_str(t.op), op_str(stack[depth]));
        }
        lex_push(L, t);
    }
end:
    L->line_starting = L->src[L->pos - 1] == '\n';
    {
        struct token t = {.type = is_block ? T_BLOCK_END : T_VAR_END, .line = L->line};
        lex_push(L, t);
    }
}

/* `{%[-+]? raw [-]?%}` at p: returns the end of the tag (0: not a raw tag). */
static size_t raw_begin(const char *s, size_t n, size_t p)
{
    size_t q = p + 2;
    if (q < n && (s[q] == '-' || s[q] == '+')) q++;
    q += ws_run(s + q, n - q);
    if (n - q < 3 || memcmp(s + q, "raw", 3)) return 0;
    q += 3;
    q += ws_run(s + q, n - q);
    if (n - q >= 3 && !memcmp(s + q, "-%}", 3)) return q + 3 + ws_run(s + q + 3, n - q - 3);
    if (n - q >= 2 && !memcmp(s + q, "%}", 2)) return q + 2;
    return 0;
}

static void lex(struct lexer *L)
{
    const char *s = L->src;
    size_t n = L->len;
    L->line = 1;
    L->line_starting = 1;
    while (L->pos < n) {
        size_t p = L->pos, q = p;
        while (q + 1 < n && !(s[q] == '{' && (s[q + 1] == '{' || s[q + 1] == '%' || s[q + 1] == '#'))) q++;
        if (q + 1 >= n) { /* no more tags */
            struct token t = {.type = T_DATA, .s = s + p, .n = n - p, .line = L->line};
            lex_push(L, t);
            L->line += count_nl(s + p, n - p);
            L->pos = n;
            break;
        }
        char kind = s[q + 1];
        char sign = (q + 2 < n && (s[q + 2] == '-' || s[q + 2] == '+')) ? s[q + 2] : 0;
        size_t raw_end = kind == '%' ? raw_begin(s, n, q) : 0;
        lex_data(L, s + p, q - p, sign, kind != '{');
        L->line += count_nl(s + p, q - p);
        L->pos = q + 2 + (sign ? 1 : 0);
        L->line_starting = 0;
        if (raw_end) {
            L->line += count_nl(s + q, raw_end - q);
            L->pos = raw_end;
            L->line_starting = s[raw_end - 1] == '\n';
            /* (.*?)({%[-+]? \s* endraw \s* (+%} | -%}\s* | %}\n?)) */
            size_t r = L->pos, tag_end = 0;
            char rsign = 0;
            for (; r + 1 < n; r++) {
                if (s[r] != '{' || s[r + 1] != '%') continue;
                size_t t = r + 2;
                char sg = (t < n && (s[t] == '-' || s[t] == '+')) ? s[t] : 0;
                if (sg) t++;
                t += ws_run(s + t, n - t);
                if (n - t < 6 || memcmp(s + t, "endraw", 6)) continue;
                t += 6;
                t += ws_run(s + t, n - t);
                if (n - t >= 3 && !memcmp(s + t, "+%}", 3)) tag_end = t + 3;
                else if (n - t >= 3 && !memcmp(s + t, "-%}", 3)) tag_end = t + 3 + ws_run(s + t + 3, n - t - 3);
                else if (n - t >= 2 && !memcmp(s + t, "%}", 2)) tag_end = t + 2 + (t + 2 < n && s[t + 2] == '\n');
                if (tag_end) { rsign = sg; break; }
            }
            if (!tag_end) lfail(L, "missing end of raw directive");
            lex_data(L, s + L->pos, r - L->pos, rsign, 1);
            L->line += count_nl(s + L->pos, tag_end - L->pos);
            L->pos = tag_end;
            L->line_starting = s[tag_end - 1] == '\n';
            continue;
        }
        if (kind == '#') {
            size_t r = L->pos, e = 0;
            for (; r < n; r++) {
                if (n - r >= 3 && s[r] == '+' && !memcmp(s + r + 1, "#}", 2)) { e = r + 3; break; }
                if (n - r >= 3 && s[r] == '-' && !memcmp(s + r + 1, "#}", 2)) { e = r + 3 + ws_run(s + r + 3, n - r - 3); break; }
                if (n - r >= 2 && !memcmp(s + r, "#}", 2)) { e = r + 2 + (r + 2 < n && s[r + 2] == '\n'); break; }
            }
            if (!e) lfail(L, "missing end of comment tag");
            L->line += count_nl(s + L->pos, e - L->pos);
            L->pos = e;
            L->line_starting = s[e - 1] == '\n';
            continue;
        }
        struct token t = {.type = kind == '%' ? T_BLOCK_BEGIN : T_VAR_BEGIN, .line = L->line};
        lex_push(L, t);
        lex_tag(L, kind == '%');
    }
    struct token t = {.type = T_EOF, .line = L->line};
    lex_push(L, t);
}

// ---------------------------------------------------------------------------------------------
// AST

enum nk {
    /* expressions */
    N_CONST, N_NAME, N_LIST, N_TUPLE, N_DICT, N_GETATTR, N_GETITEM, N_SLICE, N_CALL, N_FILTER,
    N_TEST, N_BINOP, N_CONCAT, N_COMPARE, N_AND, N_OR, N_NOT, N_NEG, N_POS, N_COND,
    /* statements */
    S_BODY, S_DATA, S_PRINT, S_IF, S_FOR, S_SET, S_SETBLOCK, S_MACRO, S_CALLBLOCK,
    S_FILTERBLOCK, S_WITH, S_BREAK, S_CONTINUE,
};

/* One node type for all; the fields each kind uses:
 *   N_CONST cv | N_NAME name | N_LIST, N_TUPLE, N_CONCAT v | N_DICT v (keys), w (values)
 *   N_GETATTR a.name | N_GETITEM a[b] | N_SLICE a[b:c:d] | N_BINOP a op b | N_AND, N_OR a, b
 *   N_CALL a(v, names=w) | N_FILTER a|name(v, names=w), id | N_TEST a is name(v), id
 *   N_COMPARE a ops[i] v[i] ... | N_NOT, N_NEG, N_POS a | N_COND b if a else c
 *   S_BODY v | S_DATA name[len] | S_PRINT a | S_IF if a: b else c
 *   S_FOR for a in b if c: d else e | S_SET a = b | S_SETBLOCK a = (filter c)(body b)
 *   S_MACRO name(names = w): b | S_CALLBLOCK call a with caller(names = w): b
 *   S_FILTERBLOCK (filter chain a, whose innermost operand is NULL)(b) | S_WITH v = w: b */
struct node {
    enum nk k;
    int line;
    int id;                  /* operator, filter or test */
    int flag;                /* S_MACRO: MF_* uses; S_FOR: loop index */
    const char *name;
    size_t len;
    struct jv cv;
    struct node *a, *b, *c, *d, *e;
    struct node **v, **w;
    int nv, nw;
    const char **names;      /* kwarg / parameter names (nw of them) */
    int *ops;                /* N_COMPARE */
};

#define MF_VARARGS 1
#define MF_KWARGS 2
#define MF_CALLER 4

enum filter_id {
    F_ABS, F_ATTR, F_CAPITALIZE, F_DEFAULT, F_DICTSORT, F_ESCAPE, F_FIRST, F_FLOAT, F_INDENT,
    F_INT, F_ITEMS, F_JOIN, F_LAST, F_LENGTH, F_LIST, F_LOWER, F_MAP, F_MAX, F_MIN, F_REJECT,
    F_REJECTATTR, F_REPLACE, F_REVERSE, F_ROUND, F_SAFE, F_SELECT, F_SELECTATTR, F_SORT,
    F_STRING, F_SUM, F_TITLE, F_TOJSON, F_TRIM, F_UNIQUE, F_UPPER, F_WORDCOUNT, F_FORCEESCAPE,
    F_CENTER, F_UNSUPPORTED,
};

static const struct { const char *name; int id; } filter_names[] = {
    {"abs", F_ABS}, {"attr", F_ATTR}, {"capitalize", F_CAPITALIZE}, {"count", F_LENGTH},
    {"d", F_DEFAULT}, {"default", F_DEFAULT}, {"dictsort", F_DICTSORT}, {"e", F_ESCAPE},
    {"escape", F_ESCAPE}, {"first", F_FIRST}, {"float", F_FLOAT}, {"indent", F_INDENT},
    {"int", F_INT}, {"items", F_ITEMS}, {"join", F_JOIN}, {"last", F_LAST},
    {"length", F_LENGTH}, {"list", F_LIST}, {"lower", F_LOWER}, {"map", F_MAP}, {"max", F_MAX},
    {"min", F_MIN}, {"reject", F_REJECT}, {"rejectattr", F_REJECTATTR}, {"replace", F_REPLACE},
    {"reverse", F_REVERSE}, {"round", F_ROUND}, {"safe", F_SAFE}, {"select", F_SELECT},
    {"selectattr", F_SELECTATTR}, {"sort", F_SORT}, {"string", F_STRING}, {"sum", F_SUM},
    {"title", F_TITLE}, {"tojson", F_TOJSON}, {"trim", F_TRIM}, {"unique", F_UNIQUE},
    {"upper", F_UPPER}, {"wordcount", F_WORDCOUNT}, {"forceescape", F_FORCEESCAPE},
    {"center", F_CENTER},
    /* jinja2 has these; a template using one fails to load here rather than render wrong */
    {"batch", F_UNSUPPORTED}, {"filesizeformat", F_UNSUPPORTED}, {"format", F_UNSUPPORTED},
    {"groupby", F_UNSUPPORTED}, {"pprint", F_UNSUPPORTED}, {"random", F_UNSUPPORTED},
    {"slice", F_UNSUPPORTED}, {"striptags", F_UNSUPPORTED}, {"truncate", F_UNSUPPORTED},
    {"urlencode", F_UNSUPPORTED}, {"urlize", F_UNSUPPORTED}, {"wordwrap", F_UNSUPPORTED},
    {"xmlattr", F_UNSUPPORTED},
};

enum test_id {
    TS_BOOLEAN, TS_CALLABLE, TS_DEFINED, TS_DIVISIBLEBY, TS_EQ, TS_ESCAPED, TS_EVEN, TS_FALSE,
    TS_FILTER, TS_FLOAT, TS_GE, TS_GT, TS_IN, TS_INTEGER, TS_ITERABLE, TS_LE, TS_LOWER, TS_LT,
    TS_MAPPING, TS_NE, TS_NONE, TS_NUMBER, TS_ODD, TS_SAMEAS, TS_SEQUENCE, TS_STRING, TS_TEST,
    TS_TRUE, TS_UNDEFINED, TS_UPPER,
};

static const struct { const char *name; int id; } test_names[] = {
    {"boolean", TS_BOOLEAN}, {"callable", TS_CALLABLE}, {"defined", TS_DEFINED},
    {"divisibleby", TS_DIVISIBLEBY}, {"eq", TS_EQ}, {"equalto", TS_EQ}, {"==", TS_EQ},
    {"escaped", TS_ESCAPED}, {"even", TS_EVEN}, {"false", TS_FALSE}, {"filter", TS_FILTER},
    {"float", TS_FLOAT}, {"ge", TS_GE}, {">=", TS_GE}, {"gt", TS_GT}, {"greaterthan", TS_GT},
    {">", TS_GT}, {"in", TS_IN}, {"integer", TS_INTEGER}, {"iterable", TS_ITERABLE},
    {"le", TS_LE}, {"<=", TS_LE}, {"lower", TS_LOWER}, {"lt", TS_LT}, {"lessthan", TS_LT},
    {"<", TS_LT}, {"mapping", TS_MAPPING}, {"ne", TS_NE}, {"!=", TS_NE}, {"none", TS_NONE},
    {"number", TS_NUMBER}, {"odd", TS_ODD}, {"sameas", TS_SAMEAS}, {"sequence", TS_SEQUENCE},
    {"string", TS_STRING}, {"test", TS_TEST}, {"true", TS_TRUE}, {"undefined", TS_UNDEFINED},
    {"upper", TS_UPPER},
};

static int lookup_test(const char *name)
{
    for (size_t i = 0; i < sizeof test_names / sizeof *test_names; i++)
        if (!strcmp(test_names[i].name, name)) return test_names[i].id;
    return -1;
}

static int lookup_filter(const char *name)
{
    for (size_t i = 0; i < sizeof filter_names / sizeof *filter_names; i++)
        if (!strcmp(filter_names[i].name, name)) return filter_names[i].id;
    return -1;
}

// ---------------------------------------------------------------------------------------------
// Parser: tokens -> AST, following jinja2's parser.py rule for rule (precedence included:
// `-2 ** 2` is (-2) ** 2, a filter binds tighter than a binary operator but after postfix,
// `x if c` without else is undefined when c is false)

struct parser {
    struct token *t;
    size_t pos;
    struct arena *a;
    struct jerr *je;
    int depth;
    int loops;              /* for-loops open around the current point (break/continue) */
    struct node *macro;     /* the macro being parsed (its uses of varargs/kwargs/caller) */
};

static void pfail(struct parser *P, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
static void pfail(struct parser *P, const char *fmt, ...)
{
    char m[ERR_LEN - 32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    jfail(P->je, "line %d: %s", P->t[P->pos].line, m);
}

static struct token *cur(struct parser *P) { return &P->t[P->pos]; }
static struct token *look(struct parser *P) { return P->t[P->pos].type == T_EOF ? &P->t[P->pos] : &P->t[P->pos + 1]; }
static void adv(struct parser *P) { if (P->t[P->pos].type != T_EOF) P->pos++; }

static int is_op(const struct token *t, enum op o) { return t->type == T_OP && t->op == o; }
static int is_name(const struct token *t, const char *n) { return t->type == T_NAME && !strcmp(t->s, n); }

static const char *tok_desc(const struct token *t, char *buf, size_t n)
{
    switch (t->type) {
    case T_EOF: return "end of template";
    case T_DATA: return "template data";
    case T_VAR_BEGIN: return "'{{'";
    case T_VAR_END: return "end of print statement";
    case T_BLOCK_BEGIN: return "'{%'";
    case T_BLOCK_END: return "end of statement block";
    case T_NAME: snprintf(buf, n, "'%.60s'", t->s); return buf;
    case T_STRING: return "string";
    case T_INT: return "integer";
    case T_FLOAT: return "float";
    default: snprintf(buf, n, "'%s'", op_str(t->op)); return buf;
    }
}

static void expect_op(struct parser *P, enum op o)
{
    char b[80];
    if (!is_op(cur(P), o)) pfail(P, "expected '%s', got %s", op_str(o), tok_desc(cur(P), b, sizeof b));
    adv(P);
}

static void expect_type(struct parser *P, enum tok_type ty, const char *what)
{
    char b[80];
    if (cur(P)->type != ty) pfail(P, "expected %s, got %s", what, tok_desc(cur(P), b, sizeof b));
    adv(P);
}

static const char *expect_name(struct parser *P)
{
    char b[80];
    if (cur(P)->type != T_NAME) pfail(P, "expected a name, got %s", tok_desc(cur(P), b, sizeof b));
    const char *s = cur(P)->s;
    adv(P);
    return s;
}

static struct node *mk(struct parser *P, enum nk k)
{
    struct node *n = aalloc(P->a, sizeof *n);
    memset(n, 0, sizeof *n);
    n->k = k;
    n->line = cur(P)->line;
    return n;
}

/* A growable node list in the arena. */
struct nlist {
    struct node **v;
    int n, cap;
};

static void nl_push(struct parser *P, struct nlist *l, struct node *x)
{
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 4;
        struct node **nv = aalloc(P->a, sizeof *nv * (size_t)cap);
        if (l->n) memcpy(nv, l->v, sizeof *nv * (size_t)l->n);
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = x;
}

static void enter(struct parser *P)
{
    if (++P->depth > JINJA_MAX_NEST) pfail(P, "the template nests deeper than %d levels", JINJA_MAX_NEST);
}

static struct node *parse_expression(struct parser *P, int with_condexpr);
static struct node *parse_or(struct parser *P);
static struct node *parse_unary(struct parser *P, int with_filter);
static struct node *parse_primary(struct parser *P);
static struct node *parse_postfix(struct parser *P, struct node *n);
static struct node *parse_filter_expr(struct parser *P, struct node *n);

/* Is the current token the end of a tuple? (end of tag, ')' or an extra end name) */
static int tuple_end(struct parser *P, const char *extra)
{
    struct token *t = cur(P);
    if (t->type == T_VAR_END || t->type == T_BLOCK_END || is_op(t, OP_RPAREN) || t->type == T_EOF) return 1;
    return extra && is_name(t, extra);
}

/* mode: 0 expression, 1 expression without inline if, 2 primaries only (assignment target) */
static struct node *parse_tuple(struct parser *P, int mode, const char *extra, int explicit_parens)
{
    struct nlist items = {0};
    int is_tuple = 0;
    int line = cur(P)->line;
    for (;;) {
        if (items.n) expect_op(P, OP_COMMA);
        if (tuple_end(P, extra)) break;
        struct node *x = mode == 2 ? parse_primary(P) : parse_expression(P, mode == 0);
        nl_push(P, &items, x);
        if (is_op(cur(P), OP_COMMA)) is_tuple = 1;
        else break;
    }
    if (!is_tuple) {
        if (items.n) return items.v[0];
        if (!explicit_parens) {
            char b[80];
            pfail(P, "expected an expression, got %s", tok_desc(cur(P), b, sizeof b));
        }
    }
    struct node *n = mk(P, N_TUPLE);
    n->line = line;
    n->v = items.v;
    n->nv = items.n;
    return n;
}

static struct node *parse_primary(struct parser *P)
{
    enter(P);
    struct token *t = cur(P);
    struct node *n;
    char b[80];
    if (t->type == T_NAME) {
        n = mk(P, N_CONST);
        if (!strcmp(t->s, "true") || !strcmp(t->s, "True")) n->cv = jv_bool(1);
        else if (!strcmp(t->s, "false") || !strcmp(t->s, "False")) n->cv = jv_bool(0);
        else if (!strcmp(t->s, "none") || !strcmp(t->s, "None")) n->cv = JV_NONE_V;
        else {
            n->k = N_NAME;
            n->name = t->s;
            if (P->macro) {
                if (!strcmp(t->s, "varargs")) P->macro->flag |= MF_VARARGS;
                else if (!strcmp(t->s, "kwargs")) P->macro->flag |= MF_KWARGS;
                else if (!strcmp(t->s, "caller")) P->macro->flag |= MF_CALLER;
            }
        }
        adv(P);
    } else if (t->type == T_STRING) {
        n = mk(P, N_CONST);
        struct abuf s = {0};
        ab_put(P->a, &s, "", 0);
        while (cur(P)->type == T_STRING) { /* adjacent literals concatenate */
            ab_put(P->a, &s, cur(P)->s, cur(P)->n);
            adv(P);
        }
        struct jstr *js = aalloc(P->a, sizeof *js + s.len + 1);
        js->len = s.len;
        memcpy(js->p, s.p, s.len + 1);
        n->cv.t = JT_STR;
        n->cv.u.s = js;
    } else if (t->type == T_INT || t->type == T_FLOAT) {
        n = mk(P, N_CONST);
        n->cv = t->type == T_INT ? jv_int(t->i) : jv_float(t->f);
        adv(P);
    } else if (is_op(t, OP_LPAREN)) {
        adv(P);
        n = parse_tuple(P, 0, NULL, 1);
        expect_op(P, OP_RPAREN);
    } else if (is_op(t, OP_LBRACKET)) {
        n = mk(P, N_LIST);
        adv(P);
        struct nlist items = {0};
        while (!is_op(cur(P), OP_RBRACKET)) {
            if (items.n) expect_op(P, OP_COMMA);
            if (is_op(cur(P), OP_RBRACKET)) break;
            nl_push(P, &items, parse_expression(P, 1));
        }
        expect_op(P, OP_RBRACKET);
        n->v = items.v;
        n->nv = items.n;
    } else if (is_op(t, OP_LBRACE)) {
        n = mk(P, N_DICT);
        adv(P);
        struct nlist keys = {0}, vals = {0};
        while (!is_op(cur(P), OP_RBRACE)) {
            if (keys.n) expect_op(P, OP_COMMA);
            if (is_op(cur(P), OP_RBRACE)) break;
            nl_push(P, &keys, parse_expression(P, 1));
            expect_op(P, OP_COLON);
            nl_push(P, &vals, parse_expression(P, 1));
        }
        expect_op(P, OP_RBRACE);
        n->v = keys.v;
        n->w = vals.v;
        n->nv = keys.n;
    } else {
        pfail(P, "unexpected %s", tok_desc(t, b, sizeof b));
    }
    P->depth--;
    return n;
}

/* (args, name=value, ...) into n->v / n->names + n->w */
static void parse_call_args(struct parser *P, struct node *n)
{
    expect_op(P, OP_LPAREN);
    struct nlist args = {0}, kwv = {0};
    const char **kwn = NULL;
    int kcap = 0;
    int need_comma = 0;
    while (!is_op(cur(P), OP_RPAREN)) {
        if (need_comma) {
            expect_op(P, OP_COMMA);
            if (is_op(cur(P), OP_RPAREN)) break;
        }
        if (is_op(cur(P), OP_MUL) || is_op(cur(P), OP_POW))
            pfail(P, "*args / **kwargs in calls are not supported");
        if (cur(P)->type == T_NAME && is_op(look(P), OP_ASSIGN)) {
            const char *k = cur(P)->s;
            adv(P);
            adv(P);
            if (kwv.n == kcap) {
                kcap = kcap ? kcap * 2 : 4;
                const char **nk = aalloc(P->a, sizeof *nk * (size_t)kcap);
                if (kwv.n) memcpy(nk, kwn, sizeof *nk * (size_t)kwv.n);
                kwn = nk;
            }
            kwn[kwv.n] = k;
            nl_push(P, &kwv, parse_expression(P, 1));
        } else {
            if (kwv.n) pfail(P, "a positional argument follows a keyword argument");
            nl_push(P, &args, parse_expression(P, 1));
        }
        need_comma = 1;
    }
    expect_op(P, OP_RPAREN);
    n->v = args.v;
    n->nv = args.n;
    n->w = kwv.v;
    n->nw = kwv.n;
    n->names = kwn;
}

static struct node *parse_call(struct parser *P, struct node *callee)
{
    struct node *n = mk(P, N_CALL);
    n->a = callee;
    parse_call_args(P, n);
    return n;
}

/* x[...]: an index, a slice or several (a tuple key) */
static struct node *parse_subscribed(struct parser *P)
{
    struct node *parts[3] = {NULL, NULL, NULL};
    int line = cur(P)->line;
    if (is_op(cur(P), OP_COLON)) {
        adv(P);
    } else {
        struct node *x = parse_expression(P, 1);
        if (!is_op(cur(P), OP_COLON)) return x;
        adv(P);
        parts[0] = x;
    }
    if (!is_op(cur(P), OP_COLON) && !is_op(cur(P), OP_RBRACKET) && !is_op(cur(P), OP_COMMA))
        parts[1] = parse_expression(P, 1);
    if (is_op(cur(P), OP_COLON)) {
        adv(P);
        if (!is_op(cur(P), OP_RBRACKET) && !is_op(cur(P), OP_COMMA)) parts[2] = parse_expression(P, 1);
    }
    struct node *n = mk(P, N_SLICE);
    n->line = line;
    n->b = parts[0];
    n->c = parts[1];
    n->d = parts[2];
    return n;
}

static struct node *parse_postfix(struct parser *P, struct node *n)
{
    for (;;) {
        if (is_op(cur(P), OP_DOT)) {
            adv(P);
            struct token *t = cur(P);
            if (t->type == T_NAME) {
                struct node *g = mk(P, N_GETATTR);
                g->a = n;
                g->name = t->s;
                adv(P);
                n = g;
            } else if (t->type == T_INT) {
                struct node *g = mk(P, N_GETITEM), *k = mk(P, N_CONST);
                k->cv = jv_int(t->i);
                g->a = n;
                g->b = k;
                adv(P);
                n = g;
            } else {
                pfail(P, "expected a name or a number after '.'");
            }
        } else if (is_op(cur(P), OP_LBRACKET)) {
            adv(P);
            struct nlist args = {0};
            while (!is_op(cur(P), OP_RBRACKET)) {
                if (args.n) expect_op(P, OP_COMMA);
                nl_push(P, &args, parse_subscribed(P));
            }
            expect_op(P, OP_RBRACKET);
            if (args.n == 0) pfail(P, "expected a subscript");
            struct node *key;
            if (args.n == 1) key = args.v[0];
            else {
                /* Jinja builds a tuple holding slice objects here, which indexes nothing it
                   renders (a list, a string or a dict raises); found by tests/fuzz/fuzz_jinja */
                for (int i = 0; i < args.n; i++)
                    if (args.v[i]->k == N_SLICE)
                        pfail(P, "a slice in a subscript of several items (x[a:b, c]) is not supported");
                key = mk(P, N_TUPLE);
                key->v = args.v;
                key->nv = args.n;
            }
            if (key->k == N_SLICE) {
                key->a = n;
                n = key;
            } else {
                struct node *g = mk(P, N_GETITEM);
                g->a = n;
                g->b = key;
                n = g;
            }
        } else if (is_op(cur(P), OP_LPAREN)) {
            n = parse_call(P, n);
        } else {
            return n;
        }
    }
}

static struct node *parse_filter(struct parser *P, struct node *operand, int start_inline)
{
    while (is_op(cur(P), OP_PIPE) || start_inline) {
        if (!start_inline) adv(P);
        start_inline = 0;
        struct node *f = mk(P, N_FILTER);
        const char *name = expect_name(P);
        while (is_op(cur(P), OP_DOT)) {
            adv(P);
            pfail(P, "dotted filter names are not supported ('%s.%s')", name, cur(P)->type == T_NAME ? cur(P)->s : "?");
        }
        f->name = name;
        f->id = lookup_filter(name);
        if (f->id < 0) pfail(P, "no filter named '%s'", name);
        if (f->id == F_UNSUPPORTED) pfail(P, "filter '%s' is not supported by ropeserve's template engine", name);
        f->a = operand;
        if (is_op(cur(P), OP_LPAREN)) parse_call_args(P, f);
        operand = f;
    }
    return operand;
}

static struct node *parse_test(struct parser *P, struct node *operand)
{
    adv(P); /* 'is' */
    int negated = 0;
    if (is_name(cur(P), "not")) {
        adv(P);
        negated = 1;
    }
    struct node *t = mk(P, N_TEST);
    const char *name = expect_name(P);
    if (is_op(cur(P), OP_DOT)) pfail(P, "dotted test names are not supported ('%s.')", name);
    t->name = name;
    t->id = lookup_test(name);
    if (t->id < 0) pfail(P, "no test named '%s'", name);
    t->a = operand;
    struct token *c = cur(P);
    if (is_op(c, OP_LPAREN)) {
        parse_call_args(P, t);
    } else if ((c->type == T_NAME || c->type == T_STRING || c->type == T_INT || c->type == T_FLOAT ||
                is_op(c, OP_LBRACKET) || is_op(c, OP_LBRACE)) &&
               !is_name(c, "else") && !is_name(c, "or") && !is_name(c, "and")) {
        if (is_name(c, "is")) pfail(P, "tests cannot be chained with 'is'");
        struct node *arg = parse_postfix(P, parse_primary(P));
        t->v = aalloc(P->a, sizeof *t->v);
        t->v[0] = arg;
        t->nv = 1;
    }
    if (negated) {
        struct node *n = mk(P, N_NOT);
        n->a = t;
        return n;
    }
    return t;
}

static struct node *parse_filter_expr(struct parser *P, struct node *n)
{
    for (;;) {
        if (is_op(cur(P), OP_PIPE)) n = parse_filter(P, n, 0);
        else if (is_name(cur(P), "is")) n = parse_test(P, n);
        else if (is_op(cur(P), OP_LPAREN)) n = parse_call(P, n);
        else return n;
    }
}

static struct node *parse_unary(struct parser *P, int with_filter)
{
    enter(P);
    struct node *n;
    if (is_op(cur(P), OP_SUB) || is_op(cur(P), OP_ADD)) {
        n = mk(P, is_op(cur(P), OP_SUB) ? N_NEG : N_POS);
        adv(P);
        n->a = parse_unary(P, 0);
    } else {
        n = parse_primary(P);
    }
    n = parse_postfix(P, n);
    if (with_filter) n = parse_filter_expr(P, n);
    P->depth--;
    return n;
}

static struct node *binop(struct parser *P, enum op op, struct node *l, struct node *r)
{
    struct node *n = mk(P, N_BINOP);
    n->id = op;
    n->a = l;
    n->b = r;
    return n;
}

static struct node *parse_pow(struct parser *P)
{
    struct node *l = parse_unary(P, 1);
    while (is_op(cur(P), OP_POW)) {
        adv(P);
        l = binop(P, OP_POW, l, parse_unary(P, 1));
    }
    return l;
}

static struct node *parse_math2(struct parser *P)
{
    struct node *l = parse_pow(P);
    while (is_op(cur(P), OP_MUL) || is_op(cur(P), OP_DIV) || is_op(cur(P), OP_FLOORDIV) || is_op(cur(P), OP_MOD)) {
        enum op o = cur(P)->op;
        adv(P);
        l = binop(P, o, l, parse_pow(P));
    }
    return l;
}

static struct node *parse_concat(struct parser *P)
{
    struct node *first = parse_math2(P);
    if (!is_op(cur(P), OP_TILDE)) return first;
    struct nlist args = {0};
    nl_push(P, &args, first);
    while (is_op(cur(P), OP_TILDE)) {
        adv(P);
        nl_push(P, &args, parse_math2(P));
    }
    struct node *n = mk(P, N_CONCAT);
    n->v = args.v;
    n->nv = args.n;
    return n;
}

static struct node *parse_math1(struct parser *P)
{
    struct node *l = parse_concat(P);
    while (is_op(cur(P), OP_ADD) || is_op(cur(P), OP_SUB)) {
        enum op o = cur(P)->op;
        adv(P);
        l = binop(P, o, l, parse_concat(P));
    }
    return l;
}

enum { CMP_EQ = 1, CMP_NE, CMP_LT, CMP_LE, CMP_GT, CMP_GE, CMP_IN, CMP_NOTIN };

static struct node *parse_compare(struct parser *P)
{
    struct node *first = parse_math1(P);
    struct nlist rhs = {0};
    int *ops = NULL, cap = 0;
    for (;;) {
        int op = 0;
        struct token *t = cur(P);
        if (t->type == T_OP) {
            switch (t->op) {
            case OP_EQ: op = CMP_EQ; break;
            case OP_NE: op = CMP_NE; break;
            case OP_LT: op = CMP_LT; break;
            case OP_LE: op = CMP_LE; break;
            case OP_GT: op = CMP_GT; break;
            case OP_GE: op = CMP_GE; break;
            default: break;
            }
            if (op) adv(P);
        } else if (is_name(t, "in")) {
            op = CMP_IN;
            adv(P);
        } else if (is_name(t, "not") && is_name(look(P), "in")) {
            op = CMP_NOTIN;
            adv(P);
            adv(P);
        }
        if (!op) break;
        if (rhs.n == cap) {
            cap = cap ? cap * 2 : 2;
            int *no = aalloc(P->a, sizeof *no * (size_t)cap);
            if (rhs.n) memcpy(no, ops, sizeof *no * (size_t)rhs.n);
            ops = no;
        }
        ops[rhs.n] = op;
        nl_push(P, &rhs, parse_math1(P));
    }
    if (!rhs.n) return first;
    struct node *n = mk(P, N_COMPARE);
    n->a = first;
    n->v = rhs.v;
    n->nv = rhs.n;
    n->ops = ops;
    return n;
}

static struct node *parse_not(struct parser *P)
{
    if (is_name(cur(P), "not")) {
        enter(P);
        struct node *n = mk(P, N_NOT);
        adv(P);
        n->a = parse_not(P);
        P->depth--;
        return n;
    }
    return parse_compare(P);
}

static struct node *parse_and(struct parser *P)
{
    struct node *l = parse_not(P);
    while (is_name(cur(P), "and")) {
        adv(P);
        struct node *n = mk(P, N_AND);
        n->a = l;
        n->b = parse_not(P);
        l = n;
    }
    return l;
}

static struct node *parse_or(struct parser *P)
{
    struct node *l = parse_and(P);
    while (is_name(cur(P), "or")) {
        adv(P);
        struct node *n = mk(P, N_OR);
        n->a = l;
        n->b = parse_and(P);
        l = n;
    }
    return l;
}

static struct node *parse_condexpr(struct parser *P)
{
    struct node *e1 = parse_or(P);
    while (is_name(cur(P), "if")) {
        adv(P);
        struct node *n = mk(P, N_COND);
        n->a = parse_or(P);
        n->b = e1;
        if (is_name(cur(P), "else")) {
            adv(P);
            enter(P);
            n->c = parse_condexpr(P);
            P->depth--;
        }
        e1 = n;
    }
    return e1;
}

static struct node *parse_expression(struct parser *P, int with_condexpr)
{
    enter(P);
    struct node *n = with_condexpr ? parse_condexpr(P) : parse_or(P);
    P->depth--;
    return n;
}

/* --- statements --- */

static struct node *parse_body(struct parser *P, const char *const *ends);

static int name_in(const struct token *t, const char *const *ends)
{
    if (!ends || t->type != T_NAME) return 0;
    for (int i = 0; ends[i]; i++)
        if (!strcmp(t->s, ends[i])) return 1;
    return 0;
}

/* After the statement's header: '%}' then the body up to one of ends (left current). */
static struct node *parse_statements(struct parser *P, const char *const *ends)
{
    if (is_op(cur(P), OP_COLON)) adv(P);
    expect_type(P, T_BLOCK_END, "end of statement block");
    return parse_body(P, ends);
}

static void check_target(struct parser *P, struct node *t, int allow_ns)
{
    if (t->k == N_NAME) {
        if (!strcmp(t->name, "loop") || !strcmp(t->name, "varargs") || !strcmp(t->name, "kwargs") || !strcmp(t->name, "caller"))
            pfail(P, "cannot assign to '%s'", t->name);
        return;
    }
    if (t->k == N_TUPLE) {
        for (int i = 0; i < t->nv; i++) check_target(P, t->v[i], 0);
        return;
    }
    if (allow_ns && t->k == N_GETATTR && t->a->k == N_NAME) return;
    pfail(P, "cannot assign to this expression");
}

static struct node *parse_assign_target(struct parser *P, const char *extra, int with_ns)
{
    if (with_ns && cur(P)->type == T_NAME && is_op(look(P), OP_DOT)) {
        struct node *g = mk(P, N_GETATTR), *nm = mk(P, N_NAME);
        nm->name = expect_name(P);
        adv(P);
        g->a = nm;
        g->name = expect_name(P);
        return g;
    }
    struct node *t = parse_tuple(P, 2, extra, 0);
    check_target(P, t, 0);
    return t;
}

/* (a, b=default, ...) into names / w */
static void parse_signature(struct parser *P, struct node *n)
{
    expect_op(P, OP_LPAREN);
    struct nlist defs = {0};
    const char **names = NULL;
    int cap = 0;
    while (!is_op(cur(P), OP_RPAREN)) {
        if (defs.n) expect_op(P, OP_COMMA);
        if (is_op(cur(P), OP_RPAREN)) break;
        const char *a = expect_name(P);
        for (int i = 0; i < defs.n; i++)
            if (!strcmp(names[i], a)) pfail(P, "duplicate parameter '%s'", a);
        struct node *d = NULL;
        if (is_op(cur(P), OP_ASSIGN)) {
            adv(P);
            d = parse_expression(P, 1);
        } else if (defs.n && defs.v[defs.n - 1]) {
            pfail(P, "non-default parameter '%s' follows a default one", a);
        }
        if (defs.n == cap) {
            cap = cap ? cap * 2 : 4;
            const char **nn = aalloc(P->a, sizeof *nn * (size_t)cap);
            if (defs.n) memcpy(nn, names, sizeof *nn * (size_t)defs.n);
            names = nn;
        }
        names[defs.n] = a;
        nl_push(P, &defs, d);
    }
    expect_op(P, OP_RPAREN);
    n->names = names;
    n->w = defs.v;
    n->nw = defs.n;
}

static struct node *parse_statement(struct parser *P)
{
    static const char *const end_for[] = {"endfor", "else", NULL}, *const end_for2[] = {"endfor", NULL};
    static const char *const end_if[] = {"elif", "else", "endif", NULL}, *const end_if2[] = {"endif", NULL};
    static const char *const end_set[] = {"endset", NULL}, *const end_macro[] = {"endmacro", NULL};
    static const char *const end_call[] = {"endcall", NULL}, *const end_filter[] = {"endfilter", NULL};
    static const char *const end_with[] = {"endwith", NULL}, *const end_gen[] = {"endgeneration", NULL};
    char b[80];
    struct token *t = cur(P);
    if (t->type != T_NAME) pfail(P, "tag name expected, got %s", tok_desc(t, b, sizeof b));
    const char *tag = t->s;
    enter(P);
    struct node *n;
    if (!strcmp(tag, "for")) {
        adv(P);
        n = mk(P, S_FOR);
        n->a = parse_assign_target(P, "in", 0);
        if (!is_name(cur(P), "in")) pfail(P, "expected 'in' in the for loop");
        adv(P);
        n->b = parse_tuple(P, 1, "recursive", 0);
        if (is_name(cur(P), "if")) {
            adv(P);
            n->c = parse_expression(P, 1);
        }
        if (is_name(cur(P), "recursive")) pfail(P, "recursive for loops are not supported");
        P->loops++;
        n->d = parse_statements(P, end_for);
        P->loops--;
        if (is_name(cur(P), "else")) {
            adv(P);
            n->e = parse_statements(P, end_for2);
        }
        adv(P); /* endfor */
    } else if (!strcmp(tag, "if")) {
        adv(P);
        n = mk(P, S_IF);
        n->a = parse_tuple(P, 1, NULL, 0);
        n->b = parse_statements(P, end_if);
        struct node *last = n;
        for (;;) {
            if (is_name(cur(P), "elif")) {
                adv(P);
                struct node *e = mk(P, S_IF);
                e->a = parse_tuple(P, 1, NULL, 0);
                e->b = parse_statements(P, end_if);
                last->c = e;
                last = e;
            } else if (is_name(cur(P), "else")) {
                adv(P);
                last->c = parse_statements(P, end_if2);
            } else {
                break;
            }
        }
        adv(P); /* endif */
    } else if (!strcmp(tag, "set")) {
        adv(P);
        struct node *target = parse_assign_target(P, NULL, 1);
        if (is_op(cur(P), OP_ASSIGN)) {
            adv(P);
            n = mk(P, S_SET);
            n->a = target;
            n->b = parse_tuple(P, 0, NULL, 0);
        } else {
            n = mk(P, S_SETBLOCK);
            n->a = target;
            if (is_op(cur(P), OP_PIPE)) n->c = parse_filter(P, NULL, 0);
            n->b = parse_statements(P, end_set);
            adv(P);
        }
    } else if (!strcmp(tag, "macro")) {
        adv(P);
        n = mk(P, S_MACRO);
        n->name = expect_name(P);
        parse_signature(P, n);
        struct node *outer = P->macro;
        int loops = P->loops;
        P->macro = n;
        P->loops = 0;
        n->b = parse_statements(P, end_macro);
        P->macro = outer;
        P->loops = loops;
        adv(P);
    } else if (!strcmp(tag, "call")) {
        adv(P);
        n = mk(P, S_CALLBLOCK);
        if (is_op(cur(P), OP_LPAREN)) parse_signature(P, n);
        n->a = parse_expression(P, 1);
        if (n->a->k != N_CALL) pfail(P, "expected a call after 'call'");
        struct node *outer = P->macro;
        int loops = P->loops;
        P->macro = n; /* the caller body is a macro too */
        P->loops = 0;
        n->b = parse_statements(P, end_call);
        P->macro = outer;
        P->loops = loops;
        adv(P);
    } else if (!strcmp(tag, "filter")) {
        adv(P);
        n = mk(P, S_FILTERBLOCK);
        n->a = parse_filter(P, NULL, 1);
        n->b = parse_statements(P, end_filter);
        adv(P);
    } else if (!strcmp(tag, "with")) {
        adv(P);
        n = mk(P, S_WITH);
        struct nlist tg = {0}, vals = {0};
        while (cur(P)->type != T_BLOCK_END) {
            if (tg.n) expect_op(P, OP_COMMA);
            nl_push(P, &tg, parse_assign_target(P, NULL, 0));
            expect_op(P, OP_ASSIGN);
            nl_push(P, &vals, parse_expression(P, 1));
        }
        n->v = tg.v;
        n->nv = tg.n;
        n->w = vals.v;
        n->nw = vals.n;
        n->b = parse_statements(P, end_with);
        adv(P);
    } else if (!strcmp(tag, "break") || !strcmp(tag, "continue")) {
        if (!P->loops) pfail(P, "'%s' outside of a for loop", tag);
        n = mk(P, tag[0] == 'b' ? S_BREAK : S_CONTINUE);
        adv(P);
    } else if (!strcmp(tag, "generation")) { /* transformers' AssistantTracker: renders its body */
        adv(P);
        n = parse_statements(P, end_gen);
        adv(P);
    } else if (!strcmp(tag, "print")) {
        adv(P);
        n = mk(P, S_PRINT);
        n->a = parse_tuple(P, 0, NULL, 0);
    } else if (!strcmp(tag, "include") || !strcmp(tag, "extends") || !strcmp(tag, "import") ||
               !strcmp(tag, "from") || !strcmp(tag, "block") || !strcmp(tag, "autoescape")) {
        pfail(P, "tag '%s' is not supported (a chat template is one self-contained template)", tag);
    } else {
        pfail(P, "unknown tag '%s'", tag);
    }
    P->depth--;
    return n;
}

static struct node *parse_body(struct parser *P, const char *const *ends)
{
    enter(P);
    struct nlist body = {0};
    struct node *n = mk(P, S_BODY);
    for (;;) {
        struct token *t = cur(P);
        if (t->type == T_EOF) {
            if (ends) pfail(P, "unexpected end of template, expected '%s'", ends[0]);
            break;
        }
        if (t->type == T_DATA) {
            struct node *d = mk(P, S_DATA);
            d->name = t->s;
            d->len = t->n;
            nl_push(P, &body, d);
            adv(P);
        } else if (t->type == T_VAR_BEGIN) {
            adv(P);
            struct node *p = mk(P, S_PRINT);
            p->a = parse_tuple(P, 0, NULL, 0);
            expect_type(P, T_VAR_END, "end of print statement ('}}')");
            nl_push(P, &body, p);
        } else if (t->type == T_BLOCK_BEGIN) {
            adv(P);
            if (name_in(cur(P), ends)) break;
            nl_push(P, &body, parse_statement(P));
            expect_type(P, T_BLOCK_END, "end of statement block ('%}')");
        } else {
            char b[80];
            pfail(P, "unexpected %s", tok_desc(t, b, sizeof b));
        }
    }
    n->v = body.v;
    n->nv = body.n;
    P->depth--;
    return n;
}

// ---------------------------------------------------------------------------------------------
// Evaluation: scopes and the render state

struct scope {
    struct scope *parent;
    size_t n, cap;
    const char **names;
    struct jv *vals;
};

struct jmacro {
    const struct node *def; /* S_MACRO, or S_CALLBLOCK for a `caller` */
    struct scope *closure;
    struct jv caller;       /* undefined unless invoked from a call block */
};

struct rs {
    struct arena a;
    struct jerr je;
    struct jinja_limits lim;
    struct abuf *out;
    long long steps, iters;
    int depth;
    int ctl;                /* 1: break, 2: continue pending */
    struct jdict *vars;     /* the context variables */
    struct jv hole;         /* the operand of a filter block's innermost filter */
    time_t now;
};

static void rfail(struct rs *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->je.msg, sizeof r->je.msg, fmt, ap);
    va_end(ap);
    longjmp(r->je.jb, 1);
}

static void undef_fail(struct rs *r, const struct jv *v) __attribute__((noreturn));
static void undef_fail(struct rs *r, const struct jv *v)
{
    rfail(r, "%s", v->u.hint ? v->u.hint : "a value is undefined");
}

static struct scope *scope_new(struct rs *r, struct scope *parent)
{
    struct scope *s = aalloc(&r->a, sizeof *s);
    memset(s, 0, sizeof *s);
    s->parent = parent;
    return s;
}

static void scope_set(struct rs *r, struct scope *s, const char *name, struct jv v)
{
    for (size_t i = 0; i < s->n; i++)
        if (!strcmp(s->names[i], name)) {
            s->vals[i] = v;
            return;
        }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        const char **nn = aalloc(&r->a, sizeof *nn * cap);
        struct jv *nv = aalloc(&r->a, sizeof *nv * cap);
        if (s->n) {
            memcpy(nn, s->names, sizeof *nn * s->n);
            memcpy(nv, s->vals, sizeof *nv * s->n);
        }
        s->names = nn;
        s->vals = nv;
        s->cap = cap;
    }
    s->names[s->n] = name;
    s->vals[s->n] = v;
    s->n++;
}

enum fn_id { FN_RANGE = 1, FN_NAMESPACE, FN_DICT, FN_RAISE, FN_STRFTIME, FN_UNSUPPORTED };

static struct jv jv_fn(int fn)
{
    struct jv v = {.t = JT_FUNC};
    v.fn = (uint16_t)fn;
    return v;
}

static struct jv lookup(struct rs *r, struct scope *s, const char *name)
{
    for (; s; s = s->parent)
        for (size_t i = s->n; i > 0; i--)
            if (!strcmp(s->names[i - 1], name)) return s->vals[i - 1];
    struct jv *v = dict_find_str(r->vars, name);
    if (v) return *v;
    if (!strcmp(name, "range")) return jv_fn(FN_RANGE);
    if (!strcmp(name, "namespace")) return jv_fn(FN_NAMESPACE);
    if (!strcmp(name, "dict")) return jv_fn(FN_DICT);
    if (!strcmp(name, "raise_exception")) return jv_fn(FN_RAISE);
    if (!strcmp(name, "strftime_now")) return jv_fn(FN_STRFTIME);
    if (!strcmp(name, "lipsum") || !strcmp(name, "cycler") || !strcmp(name, "joiner")) {
        struct jv f = jv_fn(FN_UNSUPPORTED);
        f.u.hint = name;
        return f;
    }
    char *h = aalloc(&r->a, strlen(name) + 20);
    sprintf(h, "'%s' is undefined", name);
    return jv_undef(h);
}

static void tick(struct rs *r)
{
    if (++r->steps > r->lim.max_steps)
        rfail(r, "the template took more than %lld evaluation steps", r->lim.max_steps);
}

static void emit(struct rs *r, const char *s, size_t n)
{
    if (r->out->len + n > r->lim.max_output)
        rfail(r, "the rendered template is larger than %zu bytes", r->lim.max_output);
    ab_put(&r->a, r->out, s, n);
}

/* str(v) as a value (a str stays itself, Markup included). */
static struct jv to_str(struct rs *r, const struct jv *v)
{
    if (v->t == JT_STR) return *v;
    struct abuf b = {0};
    ab_put(&r->a, &b, "", 0);
    jv_write(r, &r->a, &b, v, 0);
    struct jv s = jv_strn(&r->a, b.p, b.len);
    return s;
}

static struct jv str_of(struct rs *r, const char *s, size_t n) { return jv_strn(&r->a, s, n); }

static const char *tname(const struct jv *v) { return jv_type_name(v); }

/* The items of an iterable as a C array (strings give their characters, dicts their keys). */
static struct jv *iter_items(struct rs *r, const struct jv *v, size_t *n)
{
    switch (v->t) {
    case JT_UNDEF: *n = 0; return NULL;
    case JT_LIST: case JT_TUPLE: *n = v->u.l->n; return v->u.l->v;
    case JT_DICT: {
        struct jv *o = aalloc(&r->a, sizeof *o * (v->u.d->n + 1));
        for (size_t i = 0; i < v->u.d->n; i++) o[i] = v->u.d->kv[i].k;
        *n = v->u.d->n;
        return o;
    }
    case JT_STR: {
        size_t cnt = u8_count(v->u.s->p, v->u.s->len);
        struct jv *o = aalloc(&r->a, sizeof *o * (cnt + 1));
        size_t k = 0;
        uint32_t cp;
        for (size_t i = 0; i < v->u.s->len; k++) {
            int len = u8_dec(v->u.s->p + i, v->u.s->len - i, &cp);
            o[k] = str_of(r, v->u.s->p + i, (size_t)len);
            i += (size_t)len;
        }
        *n = k;
        return o;
    }
    case JT_RANGE: {
        int64_t len = range_len(v->u.rg);
        if (len > r->lim.max_iterations) rfail(r, "range() of %lld items is over the loop limit", (long long)len);
        struct jv *o = aalloc(&r->a, sizeof *o * ((size_t)len + 1));
        for (int64_t i = 0; i < len; i++) o[i] = jv_int(v->u.rg->start + i * v->u.rg->step);
        *n = (size_t)len;
        return o;
    }
    default:
        rfail(r, "'%s' object is not iterable", tname(v));
    }
}

static struct jv list_from(struct rs *r, const struct jv *items, size_t n, int tuple)
{
    struct jv l = jv_list_n(&r->a, n, tuple);
    if (n) memcpy(l.u.l->v, items, sizeof *items * n);
    return l;
}

/* Python's comparison for sorting and <, <=, >, >= */
static int jv_cmp(struct rs *r, const struct jv *x, const struct jv *y)
{
    if (is_num(x) && is_num(y)) {
        if (x->t != JT_FLOAT && y->t != JT_FLOAT) return x->u.i < y->u.i ? -1 : x->u.i > y->u.i;
        double a = num_f(x), b = num_f(y);
        return a < b ? -1 : a > b;
    }
    if (x->t == JT_STR && y->t == JT_STR) {
        size_t n = x->u.s->len < y->u.s->len ? x->u.s->len : y->u.s->len;
        int c = memcmp(x->u.s->p, y->u.s->p, n);
        if (c) return c < 0 ? -1 : 1;
        return x->u.s->len < y->u.s->len ? -1 : x->u.s->len > y->u.s->len;
    }
    if ((x->t == JT_LIST && y->t == JT_LIST) || (x->t == JT_TUPLE && y->t == JT_TUPLE)) {
        size_t n = x->u.l->n < y->u.l->n ? x->u.l->n : y->u.l->n;
        for (size_t i = 0; i < n; i++)
            if (!jv_eq(&x->u.l->v[i], &y->u.l->v[i])) {
                frame_in();
                int c = jv_cmp(r, &x->u.l->v[i], &y->u.l->v[i]);
                FRAME_OUT();
                return c;
            }
        return x->u.l->n < y->u.l->n ? -1 : x->u.l->n > y->u.l->n;
    }
    if (x->t == JT_UNDEF) undef_fail(r, x);
    if (y->t == JT_UNDEF) undef_fail(r, y);
    rfail(r, "'<' not supported between instances of '%s' and '%s'", tname(x), tname(y));
}

// --- attribute and item access -----------------------------------------------------------

enum method_id {
    M_NONE = 0, M_UNSUPPORTED, M_UNSAFE,
    /* str */
    M_STRIP, M_LSTRIP, M_RSTRIP, M_SPLIT, M_RSPLIT, M_SPLITLINES, M_STARTSWITH, M_ENDSWITH,
    M_UPPER, M_LOWER, M_TITLE, M_CAPITALIZE, M_SWAPCASE, M_CASEFOLD, M_REPLACE, M_FIND,
    M_RFIND, M_INDEX, M_RINDEX, M_COUNT, M_JOIN, M_ISDIGIT, M_ISALPHA, M_ISALNUM, M_ISSPACE,
    M_ISUPPER, M_ISLOWER, M_PARTITION, M_RPARTITION, M_REMOVEPREFIX, M_REMOVESUFFIX,
    M_CENTER, M_LJUST, M_RJUST, M_ZFILL,
    /* dict */
    M_ITEMS, M_KEYS, M_VALUES, M_GET, M_DCOPY,
    /* list, tuple */
    M_LCOUNT, M_LINDEX, M_LCOPY,
    /* loop */
    M_CYCLE, M_CHANGED,
};

static const struct { const char *name; int id; } str_methods[] = {
    {"strip", M_STRIP}, {"lstrip", M_LSTRIP}, {"rstrip", M_RSTRIP}, {"split", M_SPLIT},
    {"rsplit", M_RSPLIT}, {"splitlines", M_SPLITLINES}, {"startswith", M_STARTSWITH},
    {"endswith", M_ENDSWITH}, {"upper", M_UPPER}, {"lower", M_LOWER}, {"title", M_TITLE},
    {"capitalize", M_CAPITALIZE}, {"swapcase", M_SWAPCASE}, {"casefold", M_CASEFOLD},
    {"replace", M_REPLACE}, {"find", M_FIND}, {"rfind", M_RFIND}, {"index", M_INDEX},
    {"rindex", M_RINDEX}, {"count", M_COUNT}, {"join", M_JOIN}, {"isdigit", M_ISDIGIT},
    {"isalpha", M_ISALPHA}, {"isalnum", M_ISALNUM}, {"isspace", M_ISSPACE},
    {"isupper", M_ISUPPER}, {"islower", M_ISLOWER}, {"partition", M_PARTITION},
    {"rpartition", M_RPARTITION}, {"removeprefix", M_REMOVEPREFIX},
    {"removesuffix", M_REMOVESUFFIX}, {"center", M_CENTER}, {"ljust", M_LJUST},
    {"rjust", M_RJUST}, {"zfill", M_ZFILL},
    /* the rest of Python's str methods: found (so not "undefined"), refused when called */
    {"encode", M_UNSUPPORTED}, {"expandtabs", M_UNSUPPORTED}, {"format", M_UNSUPPORTED},
    {"format_map", M_UNSUPPORTED}, {"isascii", M_UNSUPPORTED}, {"isdecimal", M_UNSUPPORTED},
    {"isidentifier", M_UNSUPPORTED}, {"isnumeric", M_UNSUPPORTED},
    {"isprintable", M_UNSUPPORTED}, {"istitle", M_UNSUPPORTED}, {"maketrans", M_UNSUPPORTED},
    {"translate", M_UNSUPPORTED},
};

static struct jv bound(struct rs *r, const struct jv *self, int id, const char *name)
{
    if (id == M_UNSAFE)
        rfail(r, "access to attribute '%s' of '%s' object is unsafe", name, tname(self));
    struct jbound *b = aalloc(&r->a, sizeof *b);
    b->self = *self;
    b->name = name;
    struct jv v = {.t = JT_METHOD};
    v.fn = (uint16_t)id;
    v.u.b = b;
    return v;
}

static const char *attr_hint(struct rs *r, const struct jv *obj, const char *name)
{
    char *h = aalloc(&r->a, strlen(name) + 64);
    sprintf(h, "'%s object' has no attribute '%s'", tname(obj), name);
    return h;
}

static struct jv loop_attr(struct rs *r, const struct jv *lv, const char *name)
{
    const struct jloop *L = lv->u.lp;
    if (!strcmp(name, "index")) return jv_int(L->index0 + 1);
    if (!strcmp(name, "index0")) return jv_int(L->index0);
    if (!strcmp(name, "revindex")) return jv_int(L->length - L->index0);
    if (!strcmp(name, "revindex0")) return jv_int(L->length - L->index0 - 1);
    if (!strcmp(name, "first")) return jv_bool(L->index0 == 0);
    if (!strcmp(name, "last")) return jv_bool(L->index0 == L->length - 1);
    if (!strcmp(name, "length")) return jv_int(L->length);
    if (!strcmp(name, "depth")) return jv_int(1);
    if (!strcmp(name, "depth0")) return jv_int(0);
    if (!strcmp(name, "previtem")) return L->has_prev ? L->prev : jv_undef("there is no previous item");
    if (!strcmp(name, "nextitem")) return L->has_next ? L->next : jv_undef("there is no next item");
    if (!strcmp(name, "cycle")) return bound(r, lv, M_CYCLE, name);
    if (!strcmp(name, "changed")) return bound(r, lv, M_CHANGED, name);
    return jv_undef(attr_hint(r, lv, name));
}

/* jinja2's sandboxed getattr: the attribute first (methods), then the item for mappings. */
static struct jv get_attr(struct rs *r, const struct jv *obj, const char *name, int item_fallback)
{
    if (obj->t == JT_UNDEF) undef_fail(r, obj);
    if (name[0] == '_') rfail(r, "access to attribute '%s' of '%s' object is unsafe", name, tname(obj));
    switch (obj->t) {
    case JT_DICT: {
        static const char *const safe[] = {"items", "keys", "values", "get", "copy"};
        static const int ids[] = {M_ITEMS, M_KEYS, M_VALUES, M_GET, M_DCOPY};
        for (int i = 0; i < 5; i++) if (!strcmp(name, safe[i])) return bound(r, obj, ids[i], name);
        if (!strcmp(name, "pop") || !strcmp(name, "popitem") || !strcmp(name, "setdefault") ||
            !strcmp(name, "update") || !strcmp(name, "clear"))
            return bound(r, obj, M_UNSAFE, name);
        if (!strcmp(name, "fromkeys")) return bound(r, obj, M_UNSUPPORTED, name);
        if (item_fallback) {
            struct jv *v = dict_find_str(obj->u.d, name);
            if (v) return *v;
        }
        return jv_undef(attr_hint(r, obj, name));
    }
    case JT_NS: {
        struct jv *v = dict_find_str(obj->u.d, name);
        return v ? *v : jv_undef(attr_hint(r, obj, name));
    }
    case JT_STR:
        for (size_t i = 0; i < sizeof str_methods / sizeof *str_methods; i++)
            if (!strcmp(name, str_methods[i].name)) return bound(r, obj, str_methods[i].id, name);
        return jv_undef(attr_hint(r, obj, name));
    case JT_LIST: case JT_TUPLE:
        if (!strcmp(name, "count")) return bound(r, obj, M_LCOUNT, name);
        if (!strcmp(name, "index")) return bound(r, obj, M_LINDEX, name);
        if (obj->t == JT_LIST) {
            if (!strcmp(name, "copy")) return bound(r, obj, M_LCOPY, name);
            if (!strcmp(name, "append") || !strcmp(name, "extend") || !strcmp(name, "insert") ||
                !strcmp(name, "pop") || !strcmp(name, "remove") || !strcmp(name, "reverse") ||
                !strcmp(name, "sort") || !strcmp(name, "clear"))
                return bound(r, obj, M_UNSAFE, name);
        }
        return jv_undef(attr_hint(r, obj, name));
    case JT_LOOP: return loop_attr(r, obj, name);
    case JT_RANGE:
        if (!strcmp(name, "start")) return jv_int(obj->u.rg->start);
        if (!strcmp(name, "stop")) return jv_int(obj->u.rg->stop);
        if (!strcmp(name, "step")) return jv_int(obj->u.rg->step);
        return jv_undef(attr_hint(r, obj, name));
    case JT_INT: case JT_FLOAT: case JT_BOOL: {
        static const char *const num_attrs[] = {"real", "imag", "numerator", "denominator", "conjugate",
            "bit_length", "bit_count", "to_bytes", "as_integer_ratio", "is_integer", "hex"};
        for (size_t i = 0; i < sizeof num_attrs / sizeof *num_attrs; i++)
            if (!strcmp(name, num_attrs[i]))
                rfail(r, "attribute '%s' of numbers is not supported by ropeserve's template engine", name);
        return jv_undef(attr_hint(r, obj, name));
    }
    case JT_MACRO:
        if (!strcmp(name, "name") && obj->u.m->def->k == S_MACRO) return jv_str(&r->a, obj->u.m->def->name);
        rfail(r, "attribute '%s' of macros is not supported by ropeserve's template engine", name);
    default:
        return jv_undef(attr_hint(r, obj, name));
    }
}

/* Python's slice.indices(n) */
static void slice_indices(struct rs *r, const struct jv *b, const struct jv *e, const struct jv *st,
                          int64_t n, int64_t *start, int64_t *stop, int64_t *step)
{
    *step = st ? st->u.i : 1;
    if (*step == 0) rfail(r, "slice step cannot be zero");
    int64_t lo = *step < 0 ? -1 : 0, hi = *step < 0 ? n - 1 : n;
    if (!b) *start = *step < 0 ? hi : lo;
    else {
        *start = b->u.i;
        if (*start < 0) { *start += n; if (*start < lo) *start = lo; }
        else if (*start > hi) *start = hi;
    }
    if (!e) *stop = *step < 0 ? lo : hi;
    else {
        *stop = e->u.i;
        if (*stop < 0) { *stop += n; if (*stop < lo) *stop = lo; }
        else if (*stop > hi) *stop = hi;
    }
}

static struct jv do_slice(struct rs *r, const struct jv *obj, const struct jv *b, const struct jv *e,
                          const struct jv *st)
{
    if (obj->t == JT_UNDEF) undef_fail(r, obj);
    const struct jv *bs[3] = {b, e, st};
    for (int i = 0; i < 3; i++)
        if (bs[i] && bs[i]->t == JT_NONE) bs[i] = NULL;
        else if (bs[i] && bs[i]->t != JT_INT && bs[i]->t != JT_BOOL) return jv_undef("slice indices must be integers or None");
    int64_t n, start, stop, step;
    if (obj->t == JT_STR) {
        size_t ncp = u8_count(obj->u.s->p, obj->u.s->len);
        n = (int64_t)ncp;
        slice_indices(r, bs[0], bs[1], bs[2], n, &start, &stop, &step);
        struct abuf out = {0};
        ab_put(&r->a, &out, "", 0);
        if (step == 1) {
            if (stop > start) {
                size_t o1 = u8_offset(obj->u.s->p, obj->u.s->len, (size_t)start);
                size_t o2 = o1 + u8_offset(obj->u.s->p + o1, obj->u.s->len - o1, (size_t)(stop - start));
                ab_put(&r->a, &out, obj->u.s->p + o1, o2 - o1);
            }
        } else {
            /* code point offsets once, then walk */
            size_t *off = aalloc(&r->a, sizeof *off * (ncp + 1));
            uint32_t cp;
            size_t k = 0;
            for (size_t i = 0; i < obj->u.s->len; k++) { off[k] = i; i += (size_t)u8_dec(obj->u.s->p + i, obj->u.s->len - i, &cp); }
            off[ncp] = obj->u.s->len;
            for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
                ab_put(&r->a, &out, obj->u.s->p + off[i], off[i + 1] - off[i]);
        }
        return str_of(r, out.p, out.len);
    }
    if (is_seq(obj)) {
        n = (int64_t)obj->u.l->n;
        slice_indices(r, bs[0], bs[1], bs[2], n, &start, &stop, &step);
        size_t cnt = 0;
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) cnt++;
        struct jv l = jv_list_n(&r->a, cnt, obj->t == JT_TUPLE);
        size_t k = 0;
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) l.u.l->v[k++] = obj->u.l->v[i];
        return l;
    }
    if (obj->t == JT_RANGE) rfail(r, "slicing a range() is not supported by ropeserve's template engine");
    return jv_undef("object is not subscriptable");
}

static struct jv get_item(struct rs *r, const struct jv *obj, const struct jv *key)
{
    if (obj->t == JT_UNDEF) undef_fail(r, obj);
    if (obj->t == JT_DICT) {
        if (jv_hashable(key)) {
            struct jv *v = dict_find(obj->u.d, key);
            if (v) return *v;
        }
    } else if ((is_seq(obj) || obj->t == JT_STR || obj->t == JT_RANGE) && (key->t == JT_INT || key->t == JT_BOOL)) {
        int64_t n = obj->t == JT_STR ? (int64_t)u8_count(obj->u.s->p, obj->u.s->len)
                    : obj->t == JT_RANGE ? range_len(obj->u.rg) : (int64_t)obj->u.l->n;
        int64_t i = key->u.i < 0 ? key->u.i + n : key->u.i;
        if (i >= 0 && i < n) {
            if (obj->t == JT_RANGE) return jv_int(obj->u.rg->start + i * obj->u.rg->step);
            if (is_seq(obj)) return obj->u.l->v[i];
            size_t o = u8_offset(obj->u.s->p, obj->u.s->len, (size_t)i);
            uint32_t cp;
            int len = u8_dec(obj->u.s->p + o, obj->u.s->len - o, &cp);
            return str_of(r, obj->u.s->p + o, (size_t)len);
        }
        return jv_undef("index out of range");
    }
    if (key->t == JT_STR) return get_attr(r, obj, key->u.s->p, 0);
    return jv_undef("no such item");
}

// --- operators ---------------------------------------------------------------------------

static void html_escape(struct rs *r, struct abuf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        switch (s[i]) {
        case '&': ab_puts(&r->a, b, "&amp;"); break;
        case '<': ab_puts(&r->a, b, "&lt;"); break;
        case '>': ab_puts(&r->a, b, "&gt;"); break;
        case '"': ab_puts(&r->a, b, "&#34;"); break;
        case '\'': ab_puts(&r->a, b, "&#39;"); break;
        default: ab_put(&r->a, b, s + i, 1);
        }
    }
}

static struct jv markup_of(struct rs *r, const struct jv *v)
{
    if (v->t == JT_STR && (v->flags & JF_MARKUP)) return *v;
    struct jv s = to_str(r, v);
    struct abuf b = {0};
    ab_put(&r->a, &b, "", 0);
    html_escape(r, &b, s.u.s->p, s.u.s->len);
    struct jv m = str_of(r, b.p, b.len);
    m.flags |= JF_MARKUP;
    return m;
}

static int64_t checked(struct rs *r, int ovf, int64_t v)
{
    if (ovf) rfail(r, "integer overflow (ropeserve's templates use 64-bit integers)");
    return v;
}

static int64_t i_add(struct rs *r, int64_t a, int64_t b) { int64_t v; int o = __builtin_add_overflow(a, b, &v); return checked(r, o, v); }
static int64_t i_sub(struct rs *r, int64_t a, int64_t b) { int64_t v; int o = __builtin_sub_overflow(a, b, &v); return checked(r, o, v); }
static int64_t i_mul(struct rs *r, int64_t a, int64_t b) { int64_t v; int o = __builtin_mul_overflow(a, b, &v); return checked(r, o, v); }

static double py_fmod(double x, double y, double *floordiv)
{
    double mod = fmod(x, y), div = (x - mod) / y;
    if (mod != 0) {
        if ((y < 0) != (mod < 0)) { mod += y; div -= 1.0; }
    } else {
        mod = copysign(0.0, y);
    }
    if (floordiv) {
        double fd;
        if (div != 0) { fd = floor(div); if (div - fd > 0.5) fd += 1.0; }
        else fd = copysign(0.0, x / y);
        *floordiv = fd;
    }
    return mod;
}

static struct jv repeat(struct rs *r, const struct jv *seq, int64_t times)
{
    if (times < 0) times = 0;
    if (seq->t == JT_STR) {
        if (seq->u.s->len && (uint64_t)times > r->lim.max_output / seq->u.s->len)
            rfail(r, "string repetition larger than %zu bytes", r->lim.max_output);
        struct jv o = jv_strn(&r->a, "", 0);
        struct jstr *js = aalloc(&r->a, sizeof *js + seq->u.s->len * (size_t)times + 1);
        js->len = seq->u.s->len * (size_t)times;
        for (int64_t i = 0; i < times; i++) memcpy(js->p + i * (int64_t)seq->u.s->len, seq->u.s->p, seq->u.s->len);
        js->p[js->len] = 0;
        o.u.s = js;
        return o;
    }
    if (seq->u.l->n && (uint64_t)times > (uint64_t)r->lim.max_iterations / seq->u.l->n)
        rfail(r, "list repetition larger than %lld items", r->lim.max_iterations);
    struct jv l = jv_list_n(&r->a, seq->u.l->n * (size_t)times, seq->t == JT_TUPLE);
    for (int64_t i = 0; i < times; i++) memcpy(l.u.l->v + i * (int64_t)seq->u.l->n, seq->u.l->v, sizeof(struct jv) * seq->u.l->n);
    return l;
}

static struct jv binop_eval(struct rs *r, int op, const struct jv *x, const struct jv *y)
{
    if (x->t == JT_UNDEF) undef_fail(r, x);
    if (y->t == JT_UNDEF) undef_fail(r, y);
    if (is_num(x) && is_num(y)) {
        int fl = x->t == JT_FLOAT || y->t == JT_FLOAT;
        double a = num_f(x), b = num_f(y);
        int64_t i = x->u.i, j = y->u.i;
        switch (op) {
        case OP_ADD: return fl ? jv_float(a + b) : jv_int(i_add(r, i, j));
        case OP_SUB: return fl ? jv_float(a - b) : jv_int(i_sub(r, i, j));
        case OP_MUL: return fl ? jv_float(a * b) : jv_int(i_mul(r, i, j));
        case OP_DIV:
            if (b == 0) rfail(r, "division by zero");
            return jv_float(a / b);
        case OP_FLOORDIV: case OP_MOD:
            if (b == 0) rfail(r, op == OP_MOD ? "modulo by zero" : "integer division or modulo by zero");
            if (!fl) {
                if (i == INT64_MIN && j == -1) checked(r, 1, 0);
                int64_t q = i / j, m = i % j;
                if (m != 0 && ((m < 0) != (j < 0))) { q--; m += j; }
                return jv_int(op == OP_MOD ? m : q);
            } else {
                double fd, m = py_fmod(a, b, &fd);
                return jv_float(op == OP_MOD ? m : fd);
            }
        case OP_POW:
            if (!fl && j >= 0) {
                int64_t acc = 1, base = i;
                for (int64_t e = j; e > 0; e >>= 1) {
                    if (e & 1) acc = i_mul(r, acc, base);
                    if (e > 1) base = i_mul(r, base, base);
                }
                return jv_int(acc);
            }
            if (a == 0 && b < 0) rfail(r, "0.0 cannot be raised to a negative power");
            if (a < 0 && b != floor(b)) rfail(r, "a negative number raised to a fractional power is complex");
            return jv_float(pow(a, b));
        default: break;
        }
    }
    if (op == OP_ADD) {
        if (x->t == JT_STR && y->t == JT_STR) {
            struct jv xs = *x, ys = *y;
            int markup = (x->flags | y->flags) & JF_MARKUP;
            if (markup) { xs = markup_of(r, x); ys = markup_of(r, y); }
            struct jv o = jv_strn(&r->a, "", 0);
            struct jstr *js = aalloc(&r->a, sizeof *js + xs.u.s->len + ys.u.s->len + 1);
            js->len = xs.u.s->len + ys.u.s->len;
            memcpy(js->p, xs.u.s->p, xs.u.s->len);
            memcpy(js->p + xs.u.s->len, ys.u.s->p, ys.u.s->len + 1);
            o.u.s = js;
            o.flags = (uint8_t)markup;
            return o;
        }
        if ((x->t == JT_LIST && y->t == JT_LIST) || (x->t == JT_TUPLE && y->t == JT_TUPLE)) {
            struct jv l = jv_list_n(&r->a, x->u.l->n + y->u.l->n, x->t == JT_TUPLE);
            if (x->u.l->n) memcpy(l.u.l->v, x->u.l->v, sizeof(struct jv) * x->u.l->n);
            if (y->u.l->n) memcpy(l.u.l->v + x->u.l->n, y->u.l->v, sizeof(struct jv) * y->u.l->n);
            return l;
        }
        if (x->t == JT_STR)
            rfail(r, "can only concatenate str (not \"%s\") to str", tname(y));
        if (is_seq(x))
            rfail(r, "can only concatenate %s (not \"%s\") to %s", tname(x), tname(y), tname(x));
    }
    if (op == OP_MUL) {
        if ((x->t == JT_STR || is_seq(x)) && (y->t == JT_INT || y->t == JT_BOOL)) return repeat(r, x, y->u.i);
        if ((y->t == JT_STR || is_seq(y)) && (x->t == JT_INT || x->t == JT_BOOL)) return repeat(r, y, x->u.i);
    }
    if (op == OP_MOD && x->t == JT_STR)
        rfail(r, "printf-style string formatting ('%%' on a string) is not supported by ropeserve's template engine");
    rfail(r, "unsupported operand type(s) for %s: '%s' and '%s'", op_str((enum op)op), tname(x), tname(y));
}

static int contains(struct rs *r, const struct jv *hay, const struct jv *x)
{
    switch (hay->t) {
    case JT_STR:
        if (x->t != JT_STR) rfail(r, "'in <string>' requires string as left operand, not %s", tname(x));
        if (x->u.s->len == 0) return 1;
        return memmem(hay->u.s->p, hay->u.s->len, x->u.s->p, x->u.s->len) != NULL;
    case JT_LIST: case JT_TUPLE:
        for (size_t i = 0; i < hay->u.l->n; i++)
            if (jv_eq(&hay->u.l->v[i], x)) return 1;
        return 0;
    case JT_DICT:
        if (!jv_hashable(x)) rfail(r, "unhashable type: '%s'", tname(x));
        return dict_find(hay->u.d, x) != NULL;
    case JT_RANGE: {
        if (!is_num(x)) return 0;
        double f = num_f(x);
        if (f != floor(f)) return 0;
        int64_t i = (int64_t)f, st = hay->u.rg->start, s = hay->u.rg->step;
        if (s > 0 ? (i < st || i >= hay->u.rg->stop) : (i > st || i <= hay->u.rg->stop)) return 0;
        return (i - st) % s == 0;
    }
    case JT_UNDEF: return 0;
    default: rfail(r, "argument of type '%s' is not iterable", tname(hay));
    }
}

static int compare(struct rs *r, int op, const struct jv *x, const struct jv *y)
{
    switch (op) {
    case CMP_EQ: return jv_eq(x, y);
    case CMP_NE: return !jv_eq(x, y);
    case CMP_LT: return jv_cmp(r, x, y) < 0;
    case CMP_LE: return jv_cmp(r, x, y) <= 0;
    case CMP_GT: return jv_cmp(r, x, y) > 0;
    case CMP_GE: return jv_cmp(r, x, y) >= 0;
    case CMP_IN: return contains(r, y, x);
    default: return !contains(r, y, x);
    }
}

// --- call arguments ----------------------------------------------------------------------

struct args {
    const struct jv *pos;
    size_t np;
    const char *const *kn;
    const struct jv *kv;
    size_t nk;
    const char *what; /* for messages: "str.split()", "filter 'join'" */
};

static const struct jv *arg_get(struct rs *r, const struct args *A, size_t idx, const char *name)
{
    const struct jv *v = idx < A->np ? &A->pos[idx] : NULL;
    for (size_t i = 0; name && i < A->nk; i++)
        if (!strcmp(A->kn[i], name)) {
            if (v) rfail(r, "%s got multiple values for argument '%s'", A->what, name);
            v = &A->kv[i];
        }
    return v;
}

/* At most max_pos positional arguments; keyword arguments only from names (NULL-terminated). */
static void arg_check(struct rs *r, const struct args *A, size_t max_pos, const char *const *names)
{
    if (A->np > max_pos)
        rfail(r, "%s takes at most %zu positional argument(s) (%zu given)", A->what, max_pos, A->np);
    for (size_t i = 0; i < A->nk; i++) {
        int ok = 0;
        for (int k = 0; names && names[k]; k++) ok |= !strcmp(names[k], A->kn[i]);
        if (!ok) rfail(r, "%s got an unexpected keyword argument '%s'", A->what, A->kn[i]);
    }
}

static int64_t arg_int(struct rs *r, const struct args *A, size_t idx, const char *name, int64_t def)
{
    const struct jv *v = arg_get(r, A, idx, name);
    if (!v || v->t == JT_NONE) return def;
    if (v->t != JT_INT && v->t != JT_BOOL)
        rfail(r, "%s: argument '%s' must be an integer, not %s", A->what, name ? name : "?", tname(v));
    return v->u.i;
}

static int arg_bool(struct rs *r, const struct args *A, size_t idx, const char *name, int def)
{
    const struct jv *v = arg_get(r, A, idx, name);
    return v ? jv_truthy(v) : def;
}

/* A str argument (NULL when absent or None). */
static const struct jv *arg_str(struct rs *r, const struct args *A, size_t idx, const char *name)
{
    const struct jv *v = arg_get(r, A, idx, name);
    if (!v || v->t == JT_NONE) return NULL;
    if (v->t == JT_UNDEF) undef_fail(r, v);
    if (v->t != JT_STR) rfail(r, "%s: argument '%s' must be a str, not %s", A->what, name ? name : "?", tname(v));
    return v;
}

// --- str methods -------------------------------------------------------------------------

/* Code points of s (for character sets and indexing). */
static uint32_t *cps_of(struct rs *r, const char *s, size_t n, size_t *cnt, size_t **offs)
{
    size_t m = u8_count(s, n);
    uint32_t *c = aalloc(&r->a, sizeof *c * (m + 1));
    size_t *o = offs ? aalloc(&r->a, sizeof *o * (m + 1)) : NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; k++) {
        if (o) o[k] = i;
        i += (size_t)u8_dec(s + i, n - i, &c[k]);
    }
    if (o) o[m] = n;
    *cnt = m;
    if (offs) *offs = o;
    return c;
}

static int memchr_u32(const uint32_t *set, size_t n, uint32_t c);

static struct jv s_strip(struct rs *r, const struct jv *s, const struct jv *chars, int left, int right)
{
    size_t nc = 0;
    uint32_t *set = chars ? cps_of(r, chars->u.s->p, chars->u.s->len, &nc, NULL) : NULL;
    const char *p = s->u.s->p;
    size_t b = 0, e = s->u.s->len;
    uint32_t c;
#define STRIPPABLE(cp) (set ? memchr_u32(set, nc, cp) : py_isspace(cp))
    /* only the ends are decoded: a long message costs what its edges cost */
    while (left && b < e) {
        int k = u8_dec(p + b, e - b, &c);
        if (!STRIPPABLE(c)) break;
        b += (size_t)k;
    }
    while (right && e > b) {
        size_t st = e - 1;
        while (st > b && ((unsigned char)p[st] & 0xC0) == 0x80) st--;
        u8_dec(p + st, e - st, &c);
        if (!STRIPPABLE(c)) break;
        e = st;
    }
#undef STRIPPABLE
    if (b == 0 && e == s->u.s->len) return *s;
    return str_of(r, p + b, e - b);
}

static int memchr_u32(const uint32_t *set, size_t n, uint32_t c)
{
    for (size_t i = 0; i < n; i++)
        if (set[i] == c) return 1;
    return 0;
}

static void push_item(struct rs *r, struct jv **items, size_t *n, size_t *cap, struct jv v)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 8;
        struct jv *ni = aalloc(&r->a, sizeof *ni * *cap);
        if (*n) memcpy(ni, *items, sizeof *ni * *n);
        *items = ni;
    }
    (*items)[(*n)++] = v;
}

/* str.split / str.rsplit */
static struct jv s_split(struct rs *r, const struct jv *s, const struct jv *sep, int64_t maxsplit, int right)
{
    const char *p = s->u.s->p;
    size_t n = s->u.s->len;
    struct jv *items = NULL;
    size_t cnt = 0, cap = 0;
    int64_t splits = 0;
    if (!sep) {
        size_t m, *off;
        uint32_t *c = cps_of(r, p, n, &m, &off);
        if (!right) {
            size_t i = 0;
            for (;;) {
                while (i < m && py_isspace(c[i])) i++;
                if (i == m) break;
                if (maxsplit >= 0 && splits == maxsplit) {
                    push_item(r, &items, &cnt, &cap, str_of(r, p + off[i], n - off[i]));
                    break;
                }
                size_t j = i;
                while (j < m && !py_isspace(c[j])) j++;
                push_item(r, &items, &cnt, &cap, str_of(r, p + off[i], off[j] - off[i]));
                splits++;
                i = j;
            }
        } else {
            size_t i = m;
            for (;;) {
                while (i > 0 && py_isspace(c[i - 1])) i--;
                if (i == 0) break;
                if (maxsplit >= 0 && splits == maxsplit) {
                    push_item(r, &items, &cnt, &cap, str_of(r, p, off[i]));
                    break;
                }
                size_t j = i;
                while (j > 0 && !py_isspace(c[j - 1])) j--;
                push_item(r, &items, &cnt, &cap, str_of(r, p + off[j], off[i] - off[j]));
                splits++;
                i = j;
            }
            for (size_t a = 0, b = cnt ? cnt - 1 : 0; a < b; a++, b--) {
                struct jv t = items[a];
                items[a] = items[b];
                items[b] = t;
            }
        }
        return list_from(r, items, cnt, 0);
    }
    const char *q = sep->u.s->p;
    size_t k = sep->u.s->len;
    if (k == 0) rfail(r, "str.split(): empty separator");
    if (!right) {
        size_t i = 0;
        for (;;) {
            const char *hit = (maxsplit >= 0 && splits == maxsplit) ? NULL : memmem(p + i, n - i, q, k);
            if (!hit) {
                push_item(r, &items, &cnt, &cap, str_of(r, p + i, n - i));
                break;
            }
            push_item(r, &items, &cnt, &cap, str_of(r, p + i, (size_t)(hit - (p + i))));
            i = (size_t)(hit - p) + k;
            splits++;
        }
    } else {
        size_t end = n;
        for (;;) {
            const char *hit = NULL;
            if (!(maxsplit >= 0 && splits == maxsplit))
                for (size_t i = end; i >= k && !hit; i--)
                    if (!memcmp(p + i - k, q, k)) hit = p + i - k;
            if (!hit) {
                push_item(r, &items, &cnt, &cap, str_of(r, p, end));
                break;
            }
            push_item(r, &items, &cnt, &cap, str_of(r, hit + k, (size_t)(p + end - (hit + k))));
            end = (size_t)(hit - p);
            splits++;
        }
        for (size_t a = 0, b = cnt - 1; a < b; a++, b--) {
            struct jv t = items[a];
            items[a] = items[b];
            items[b] = t;
        }
    }
    return list_from(r, items, cnt, 0);
}

static struct jv s_splitlines(struct rs *r, const struct jv *s, int keepends)
{
    size_t m, *off;
    uint32_t *c = cps_of(r, s->u.s->p, s->u.s->len, &m, &off);
    struct jv *items = NULL;
    size_t cnt = 0, cap = 0, i = 0;
    while (i < m) {
        size_t j = i;
        while (j < m && !py_islinebreak(c[j])) j++;
        size_t eol = j;
        if (j < m) {
            j += (c[j] == '\r' && j + 1 < m && c[j + 1] == '\n') ? 2 : 1;
            if (keepends) eol = j;
        }
        push_item(r, &items, &cnt, &cap, str_of(r, s->u.s->p + off[i], off[eol] - off[i]));
        i = j;
    }
    return list_from(r, items, cnt, 0);
}

enum { CASE_UPPER, CASE_LOWER, CASE_TITLE, CASE_CAPITALIZE, CASE_SWAP };

static struct jv s_case(struct rs *r, const struct jv *s, int mode)
{
    struct abuf b = {0};
    ab_put(&r->a, &b, "", 0);
    int prev_cased = 0, first = 1;
    for (size_t i = 0; i < s->u.s->len;) {
        uint32_t c, o;
        i += (size_t)u8_dec(s->u.s->p + i, s->u.s->len - i, &c);
        switch (mode) {
        case CASE_UPPER: o = cp_upper(c); break;
        case CASE_LOWER: o = cp_lower(c); break;
        case CASE_TITLE: o = prev_cased ? cp_lower(c) : cp_upper(c); prev_cased = cp_iscased(c); break;
        case CASE_CAPITALIZE: o = first ? cp_upper(c) : cp_lower(c); break;
        default: o = cp_isupper(c) ? cp_lower(c) : cp_islower(c) ? cp_upper(c) : c;
        }
        first = 0;
        char e[4];
        ab_put(&r->a, &b, e, (size_t)u8_enc(o, e));
    }
    return str_of(r, b.p, b.len);
}

/* jinja2's |title: each run after [-\s({[<]+ gets its first character upper-cased, the rest lower. */
static struct jv f_title(struct rs *r, const struct jv *s)
{
    struct abuf b = {0};
    ab_put(&r->a, &b, "", 0);
    int at_start = 1;
    for (size_t i = 0; i < s->u.s->len;) {
        uint32_t c, o;
        i += (size_t)u8_dec(s->u.s->p + i, s->u.s->len - i, &c);
        int sep = py_isspace(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
        if (sep) { o = c; at_start = 1; }
        else { o = at_start ? cp_upper(c) : cp_lower(c); at_start = 0; }
        char e[4];
        ab_put(&r->a, &b, e, (size_t)u8_enc(o, e));
    }
    return str_of(r, b.p, b.len);
}

static struct jv s_replace(struct rs *r, const struct jv *s, const struct jv *old, const struct jv *nw, int64_t count)
{
    struct abuf b = {0};
    ab_put(&r->a, &b, "", 0);
    const char *p = s->u.s->p;
    size_t n = s->u.s->len, k = old->u.s->len;
    int64_t done = 0;
    if (k == 0) { /* between every character and at both ends */
        size_t i = 0;
        for (;;) {
            if (count < 0 || done < count) { ab_put(&r->a, &b, nw->u.s->p, nw->u.s->len); done++; }
            else { ab_put(&r->a, &b, p + i, n - i); break; }
            if (i >= n) break;
            uint32_t c;
            int l = u8_dec(p + i, n - i, &c);
            ab_put(&r->a, &b, p + i, (size_t)l);
            i += (size_t)l;
            if (b.len > r->lim.max_output) rfail(r, "str.replace() result larger than %zu bytes", r->lim.max_output);
        }
        return str_of(r, b.p, b.len);
    }
    size_t i = 0;
    for (;;) {
        const char *hit = (count >= 0 && done >= count) ? NULL : memmem(p + i, n - i, old->u.s->p, k);
        if (!hit) break;
        ab_put(&r->a, &b, p + i, (size_t)(hit - (p + i)));
        ab_put(&r->a, &b, nw->u.s->p, nw->u.s->len);
        if (b.len > r->lim.max_output) rfail(r, "str.replace() result larger than %zu bytes", r->lim.max_output);
        i = (size_t)(hit - p) + k;
        done++;
    }
    ab_put(&r->a, &b, p + i, n - i);
    return str_of(r, b.p, b.len);
}

/* The code point range [start, end) of s[start:end] as byte offsets. */
static void sub_range(struct rs *r, const struct jv *s, const struct args *A, size_t idx, size_t *bo, size_t *eo, size_t *cp0)
{
    int64_t n = (int64_t)u8_count(s->u.s->p, s->u.s->len);
    const struct jv *b = arg_get(r, A, idx, NULL), *e = arg_get(r, A, idx + 1, NULL);
    int64_t st, sp, step;
    struct jv bb, ee;
    if (b && b->t != JT_NONE && b->t != JT_INT && b->t != JT_BOOL) rfail(r, "%s: slice indices must be integers", A->what);
    if (e && e->t != JT_NONE && e->t != JT_INT && e->t != JT_BOOL) rfail(r, "%s: slice indices must be integers", A->what);
    if (b && b->t != JT_NONE) bb = *b;
    if (e && e->t != JT_NONE) ee = *e;
    slice_indices(r, (b && b->t != JT_NONE) ? &bb : NULL, (e && e->t != JT_NONE) ? &ee : NULL, NULL, n, &st, &sp, &step);
    if (sp < st) sp = st;
    *cp0 = (size_t)st;
    *bo = u8_offset(s->u.s->p, s->u.s->len, (size_t)st);
    *eo = *bo + u8_offset(s->u.s->p + *bo, s->u.s->len - *bo, (size_t)(sp - st));
}

static int64_t s_find(struct rs *r, const struct jv *s, const struct jv *sub, const struct args *A, int right)
{
    size_t bo, eo, cp0;
    sub_range(r, s, A, 1, &bo, &eo, &cp0);
    const char *p = s->u.s->p + bo;
    size_t n = eo - bo, k = sub->u.s->len;
    if (k > n) return -1;
    const char *hit = NULL;
    if (!right) hit = k ? memmem(p, n, sub->u.s->p, k) : p;
    else for (size_t i = n - k + 1; i > 0 && !hit; i--) if (!memcmp(p + i - 1, sub->u.s->p, k)) hit = p + i - 1;
    if (!hit) return -1;
    return (int64_t)(cp0 + u8_count(p, (size_t)(hit - p)));
}

static int s_affix(struct rs *r, const struct jv *s, const struct jv *aff, const struct args *A, int end)
{
    size_t bo, eo, cp0;
    sub_range(r, s, A, 1, &bo, &eo, &cp0);
    const struct jv *cands = aff;
    size_t nc = 1;
    if (aff->t == JT_TUPLE) { cands = aff->u.l->v; nc = aff->u.l->n; }
    else if (aff->t != JT_STR)
        rfail(r, "%s: the argument must be a str or a tuple of str, not %s", A->what, tname(aff));
    for (size_t i = 0; i < nc; i++) {
        if (cands[i].t != JT_STR) rfail(r, "%s: tuple items must be str, not %s", A->what, tname(&cands[i]));
        size_t k = cands[i].u.s->len;
        if (k > eo - bo) continue;
        if (!memcmp(s->u.s->p + (end ? eo - k : bo), cands[i].u.s->p, k)) return 1;
    }
    return 0;
}

static int s_class(const struct jv *s, int which)
{
    if (!s->u.s->len) return 0;
    int cased = 0;
    for (size_t i = 0; i < s->u.s->len;) {
        uint32_t c;
        i += (size_t)u8_dec(s->u.s->p + i, s->u.s->len - i, &c);
        switch (which) {
        case M_ISDIGIT: if (!cp_isdigit(c)) return 0; break;
        case M_ISALPHA: if (!cp_isalpha(c)) return 0; break;
        case M_ISALNUM: if (!cp_isalpha(c) && !cp_isdigit(c)) return 0; break;
        case M_ISSPACE: if (!py_isspace(c)) return 0; break;
        case M_ISUPPER: if (cp_islower(c)) return 0; cased |= cp_isupper(c); break;
        case M_ISLOWER: if (cp_isupper(c)) return 0; cased |= cp_islower(c); break;
        }
    }
    return (which == M_ISUPPER || which == M_ISLOWER) ? cased : 1;
}

static struct jv s_pad(struct rs *r, const struct jv *s, int64_t width, const struct jv *fill, int mode)
{
    uint32_t f = ' ';
    if (fill) {
        if (u8_count(fill->u.s->p, fill->u.s->len) != 1) rfail(r, "the fill character must be exactly one character long");
        u8_dec(fill->u.s->p, fill->u.s->len, &f);
    }
    int64_t len = (int64_t)u8_count(s->u.s->p, s->u.s->len);
    if (width <= len) return *s;
    if (width > (int64_t)r->lim.max_output) rfail(r, "padding wider than %zu", r->lim.max_output);
    int64_t marg = width - len, left;
    if (mode == 0) left = marg / 2 + (marg & width & 1); /* center, as CPython */
    else if (mode == 1) left = 0;                          /* ljust */
    else left = marg;                                      /* rjust */
    char e[4];
    int el = u8_enc(f, e);
    struct abuf b = {0};
    ab_put(&r->a, &b, "", 0);
    for (int64_t i = 0; i < left; i++) ab_put(&r->a, &b, e, (size_t)el);
    ab_put(&r->a, &b, s->u.s->p, s->u.s->len);
    for (int64_t i = 0; i < marg - left; i++) ab_put(&r->a, &b, e, (size_t)el);
    return str_of(r, b.p, b.len);
}

static struct jv call_method(struct rs *r, const struct jv *m, const struct args *A0)
{
    const struct jv *self = &m->u.b->self;
    struct args A = *A0;
    char what[96];
    snprintf(what, sizeof what, "%s.%s()", tname(self), m->u.b->name);
    A.what = what;
    static const char *const nk[] = {NULL};
    static const char *const k_split[] = {"sep", "maxsplit", NULL};
    switch (m->fn) {
    case M_UNSUPPORTED:
        rfail(r, "%s is not supported by ropeserve's template engine", what);
    case M_STRIP: case M_LSTRIP: case M_RSTRIP:
        arg_check(r, &A, 1, nk);
        return s_strip(r, self, arg_str(r, &A, 0, NULL), m->fn != M_RSTRIP, m->fn != M_LSTRIP);
    case M_SPLIT: case M_RSPLIT:
        arg_check(r, &A, 2, k_split);
        return s_split(r, self, arg_str(r, &A, 0, "sep"), arg_int(r, &A, 1, "maxsplit", -1), m->fn == M_RSPLIT);
    case M_SPLITLINES: {
        static const char *const k[] = {"keepends", NULL};
        arg_check(r, &A, 1, k);
        return s_splitlines(r, self, arg_bool(r, &A, 0, "keepends", 0));
    }
    case M_STARTSWITH: case M_ENDSWITH: {
        arg_check(r, &A, 3, nk);
        const struct jv *aff = arg_get(r, &A, 0, NULL);
        if (!aff) rfail(r, "%s takes at least 1 argument", what);
        return jv_bool(s_affix(r, self, aff, &A, m->fn == M_ENDSWITH));
    }
    case M_UPPER: case M_LOWER: case M_TITLE: case M_CAPITALIZE: case M_SWAPCASE: case M_CASEFOLD:
        arg_check(r, &A, 0, nk);
        return s_case(r, self, m->fn == M_UPPER ? CASE_UPPER : m->fn == M_TITLE ? CASE_TITLE
                               : m->fn == M_CAPITALIZE ? CASE_CAPITALIZE : m->fn == M_SWAPCASE ? CASE_SWAP : CASE_LOWER);
    case M_REPLACE: {
        static const char *const k[] = {"count", NULL};
        arg_check(r, &A, 3, k);
        const struct jv *o = arg_str(r, &A, 0, NULL), *n = arg_str(r, &A, 1, NULL);
        if (!o || !n) rfail(r, "%s takes two str arguments", what);
        return s_replace(r, self, o, n, arg_int(r, &A, 2, "count", -1));
    }
    case M_FIND: case M_RFIND: case M_INDEX: case M_RINDEX: case M_COUNT: {
        arg_check(r, &A, 3, nk);
        const struct jv *sub = arg_str(r, &A, 0, NULL);
        if (!sub) rfail(r, "%s takes a str argument", what);
        if (m->fn == M_COUNT) {
            size_t bo, eo, cp0;
            sub_range(r, self, &A, 1, &bo, &eo, &cp0);
            if (!sub->u.s->len) return jv_int((int64_t)u8_count(self->u.s->p + bo, eo - bo) + 1);
            int64_t c = 0;
            for (size_t i = bo; i + sub->u.s->len <= eo;) {
                const char *h = memmem(self->u.s->p + i, eo - i, sub->u.s->p, sub->u.s->len);
                if (!h) break;
                c++;
                i = (size_t)(h - self->u.s->p) + sub->u.s->len;
            }
            return jv_int(c);
        }
        int64_t at = s_find(r, self, sub, &A, m->fn == M_RFIND || m->fn == M_RINDEX);
        if (at < 0 && (m->fn == M_INDEX || m->fn == M_RINDEX)) rfail(r, "%s: substring not found", what);
        return jv_int(at);
    }
    case M_JOIN: {
        arg_check(r, &A, 1, nk);
        const struct jv *it = arg_get(r, &A, 0, NULL);
        if (!it) rfail(r, "%s takes exactly one argument", what);
        size_t n;
        struct jv *items = iter_items(r, it, &n);
        struct abuf b = {0};
        ab_put(&r->a, &b, "", 0);
        for (size_t i = 0; i < n; i++) {
            if (items[i].t != JT_STR) rfail(r, "%s: sequence item %zu: expected str instance, %s found", what, i, tname(&items[i]));
            if (i) ab_put(&r->a, &b, self->u.s->p, self->u.s->len);
            ab_put(&r->a, &b, items[i].u.s->p, items[i].u.s->len);
        }
        return str_of(r, b.p, b.len);
    }
    case M_ISDIGIT: case M_ISALPHA: case M_ISALNUM: case M_ISSPACE: case M_ISUPPER: case M_ISLOWER:
        arg_check(r, &A, 0, nk);
        return jv_bool(s_class(self, m->fn));
    case M_PARTITION: case M_RPARTITION: {
        arg_check(r, &A, 1, nk);
        const struct jv *sep = arg_str(r, &A, 0, NULL);
        if (!sep) rfail(r, "%s takes a str argument", what);
        if (!sep->u.s->len) rfail(r, "%s: empty separator", what);
        const char *p = self->u.s->p, *hit = NULL;
        size_t n = self->u.s->len, k = sep->u.s->len;
        if (m->fn == M_PARTITION) hit = memmem(p, n, sep->u.s->p, k);
        else for (size_t i = n + 1; i > k && !hit; i--) if (!memcmp(p + i - 1 - k, sep->u.s->p, k)) hit = p + i - 1 - k;
        struct jv t = jv_list_n(&r->a, 3, 1);
        if (!hit) {
            struct jv e = str_of(r, "", 0);
            t.u.l->v[0] = m->fn == M_PARTITION ? *self : e;
            t.u.l->v[1] = e;
            t.u.l->v[2] = m->fn == M_PARTITION ? e : *self;
        } else {
            t.u.l->v[0] = str_of(r, p, (size_t)(hit - p));
            t.u.l->v[1] = *sep;
            t.u.l->v[2] = str_of(r, hit + k, n - (size_t)(hit - p) - k);
        }
        return t;
    }
    case M_REMOVEPREFIX: case M_REMOVESUFFIX: {
        arg_check(r, &A, 1, nk);
        const struct jv *a = arg_str(r, &A, 0, NULL);
        if (!a) rfail(r, "%s takes a str argument", what);
        size_t k = a->u.s->len, n = self->u.s->len;
        if (k > n) return *self;
        if (m->fn == M_REMOVEPREFIX) return memcmp(self->u.s->p, a->u.s->p, k) ? *self : str_of(r, self->u.s->p + k, n - k);
        return memcmp(self->u.s->p + n - k, a->u.s->p, k) ? *self : str_of(r, self->u.s->p, n - k);
    }
    case M_CENTER: case M_LJUST: case M_RJUST:
        arg_check(r, &A, 2, nk);
        if (!arg_get(r, &A, 0, NULL)) rfail(r, "%s takes at least 1 argument", what);
        return s_pad(r, self, arg_int(r, &A, 0, NULL, 0), arg_str(r, &A, 1, NULL),
                     m->fn == M_CENTER ? 0 : m->fn == M_LJUST ? 1 : 2);
    case M_ZFILL: {
        arg_check(r, &A, 1, nk);
        int64_t w = arg_int(r, &A, 0, NULL, 0), len = (int64_t)u8_count(self->u.s->p, self->u.s->len);
        if (w <= len) return *self;
        if (w > (int64_t)r->lim.max_output) rfail(r, "zfill wider than %zu", r->lim.max_output);
        struct abuf b = {0};
        ab_put(&r->a, &b, "", 0);
        size_t sign = (self->u.s->len && (self->u.s->p[0] == '+' || self->u.s->p[0] == '-')) ? 1 : 0;
        ab_put(&r->a, &b, self->u.s->p, sign);
        for (int64_t i = 0; i < w - len; i++) ab_put(&r->a, &b, "0", 1);
        ab_put(&r->a, &b, self->u.s->p + sign, self->u.s->len - sign);
        return str_of(r, b.p, b.len);
    }
    case M_ITEMS: case M_KEYS: case M_VALUES: {
        arg_check(r, &A, 0, nk);
        size_t n = self->u.d->n;
        struct jv l = jv_list_n(&r->a, n, 0);
        for (size_t i = 0; i < n; i++) {
            if (m->fn == M_KEYS) l.u.l->v[i] = self->u.d->kv[i].k;
            else if (m->fn == M_VALUES) l.u.l->v[i] = self->u.d->kv[i].v;
            else {
                struct jv t = jv_list_n(&r->a, 2, 1);
                t.u.l->v[0] = self->u.d->kv[i].k;
                t.u.l->v[1] = self->u.d->kv[i].v;
                l.u.l->v[i] = t;
            }
        }
        return l;
    }
    case M_GET: {
        arg_check(r, &A, 2, nk);
        const struct jv *k = arg_get(r, &A, 0, NULL), *d = arg_get(r, &A, 1, NULL);
        if (!k) rfail(r, "%s takes at least 1 argument", what);
        if (!jv_hashable(k)) rfail(r, "unhashable type: '%s'", tname(k));
        struct jv *v = dict_find(self->u.d, k);
        return v ? *v : d ? *d : JV_NONE_V;
    }
    case M_DCOPY: case M_LCOPY:
        arg_check(r, &A, 0, nk);
        return *self; /* values are immutable here: a copy is the same value */
    case M_LCOUNT: case M_LINDEX: {
        arg_check(r, &A, 1, nk);
        const struct jv *x = arg_get(r, &A, 0, NULL);
        if (!x) rfail(r, "%s takes exactly one argument", what);
        int64_t c = 0;
        for (size_t i = 0; i < self->u.l->n; i++)
            if (jv_eq(&self->u.l->v[i], x)) {
                if (m->fn == M_LINDEX) return jv_int((int64_t)i);
                c++;
            }
        if (m->fn == M_LINDEX) rfail(r, "%s: value is not in the list", what);
        return jv_int(c);
    }
    case M_CYCLE: {
        if (A.nk) rfail(r, "loop.cycle() takes no keyword arguments");
        if (!A.np) rfail(r, "loop.cycle(): no items for cycling given");
        return A.pos[self->u.lp->index0 % (int64_t)A.np];
    }
    case M_CHANGED: {
        struct jloop *L = self->u.lp;
        struct jv t = list_from(r, A.pos, A.np, 1);
        int changed = !L->changed_set || !jv_eq(&t, &L->last_changed);
        L->last_changed = t;
        L->changed_set = 1;
        return jv_bool(changed);
    }
    default:
        rfail(r, "%s is not callable", what);
    }
}

// --- global functions, macros --------------------------------------------------------------

static void exec(struct rs *r, const struct node *n, struct scope *sc);
static struct jv eval(struct rs *r, const struct node *n, struct scope *sc);
static void assign(struct rs *r, const struct node *target, struct jv v, struct scope *sc);

/* Python's datetime.now().strftime(fmt) on a naive local time: %f is the microseconds, %z and
 * %Z are empty (no tzinfo), everything else is the C library's strftime in the C locale. */
static struct jv fn_strftime(struct rs *r, const struct jv *fmt)
{
    struct tm tm;
    time_t now = r->now;
    localtime_r(&now, &tm);
    struct abuf b = {0};
    ab_put(&r->a, &b, "", 0);
    const char *p = fmt->u.s->p;
    size_t n = fmt->u.s->len;
    for (size_t i = 0; i < n;) {
        const char *pct = memchr(p + i, '%', n - i);
        size_t upto = pct ? (size_t)(pct - p) : n;
        ab_put(&r->a, &b, p + i, upto - i);
        i = upto;
        if (!pct) break;
        if (i + 1 >= n) { ab_put(&r->a, &b, "%", 1); break; }
        char spec[4] = {'%', p[i + 1], 0, 0};
        size_t used = 2;
        if ((p[i + 1] == '-' || p[i + 1] == 'E' || p[i + 1] == 'O') && i + 2 < n) {
            spec[2] = p[i + 2];
            used = 3;
        }
        char conv = spec[used - 1];
        i += used;
        if (conv == 'f') { ab_puts(&r->a, &b, "000000"); continue; }
        if (conv == 'z' || conv == 'Z') continue;
        char out[256];
        size_t k = strftime(out, sizeof out, spec, &tm);
        if (k == 0 && conv != 'p') {
            /* an empty expansion or an unknown directive: glibc leaves unknown ones as is */
            if (!strchr("aAbBcCdDeFgGhHIjklmMnpPrRsStTuUVwWxXyY%+", conv)) ab_put(&r->a, &b, spec, used);
            continue;
        }
        ab_put(&r->a, &b, out, k);
    }
    return str_of(r, b.p, b.len);
}

static struct jv dict_from_args(struct rs *r, const struct args *A, int ns)
{
    struct jv d = jv_dict(&r->a, ns);
    if (A->np > 1) rfail(r, "%s expected at most 1 positional argument", A->what);
    if (A->np == 1) {
        const struct jv *src = &A->pos[0];
        if (src->t == JT_DICT || src->t == JT_NS) {
            for (size_t i = 0; i < src->u.d->n; i++) dict_set(&r->a, d.u.d, src->u.d->kv[i].k, src->u.d->kv[i].v);
        } else {
            size_t n;
            struct jv *items = iter_items(r, src, &n);
            for (size_t i = 0; i < n; i++) {
                if (!is_seq(&items[i]) || items[i].u.l->n != 2)
                    rfail(r, "%s: sequence element #%zu is not a key/value pair", A->what, i);
                if (!jv_hashable(&items[i].u.l->v[0])) rfail(r, "unhashable type: '%s'", tname(&items[i].u.l->v[0]));
                dict_set(&r->a, d.u.d, items[i].u.l->v[0], items[i].u.l->v[1]);
            }
        }
    }
    for (size_t i = 0; i < A->nk; i++) dict_set(&r->a, d.u.d, jv_str(&r->a, A->kn[i]), A->kv[i]);
    return d;
}

static struct jv call_macro(struct rs *r, const struct jmacro *m, const struct args *A, const struct jv *caller)
{
    const struct node *def = m->def;
    const char *mname = def->k == S_MACRO ? def->name : "caller";
    if (++r->depth > r->lim.max_depth) rfail(r, "macro calls nested deeper than %d", r->lim.max_depth);
    struct scope *sc = scope_new(r, m->closure);
    size_t np = (size_t)def->nw;
    if (A->np > np && !(def->flag & MF_VARARGS))
        rfail(r, "macro '%s' takes not more than %zu argument(s)", mname, np);
    struct jv kw = jv_dict(&r->a, 0);
    for (size_t k = 0; k < A->nk; k++) {
        int found = 0;
        for (size_t i = 0; i < np; i++)
            if (!strcmp(def->names[i], A->kn[k])) {
                if (i < A->np) rfail(r, "macro '%s' got multiple values for argument '%s'", mname, A->kn[k]);
                found = 1;
            }
        if (!found && strcmp(A->kn[k], "caller")) {
            if (!(def->flag & MF_KWARGS)) rfail(r, "macro '%s' takes no keyword argument '%s'", mname, A->kn[k]);
            dict_set(&r->a, kw.u.d, jv_str(&r->a, A->kn[k]), A->kv[k]);
        }
    }
    for (size_t i = 0; i < np; i++) {
        struct jv v;
        const struct jv *given = i < A->np ? &A->pos[i] : NULL;
        for (size_t k = 0; !given && k < A->nk; k++)
            if (!strcmp(def->names[i], A->kn[k])) given = &A->kv[k];
        if (given) v = *given;
        else if (def->w[i]) v = eval(r, def->w[i], sc);
        else {
            char *h = aalloc(&r->a, strlen(def->names[i]) + 40);
            sprintf(h, "parameter '%s' was not provided", def->names[i]);
            v = jv_undef(h);
        }
        scope_set(r, sc, def->names[i], v);
    }
    if (def->flag & MF_VARARGS)
        scope_set(r, sc, "varargs", A->np > np ? list_from(r, A->pos + np, A->np - np, 1) : jv_list_n(&r->a, 0, 1));
    if (def->flag & MF_KWARGS) scope_set(r, sc, "kwargs", kw);
    if (def->flag & MF_CALLER) scope_set(r, sc, "caller", caller ? *caller : jv_undef("no caller was passed to the macro"));
    struct abuf *saved = r->out, buf = {0};
    ab_put(&r->a, &buf, "", 0);
    r->out = &buf;
    exec(r, def->b, sc);
    r->out = saved;
    r->depth--;
    return str_of(r, buf.p, buf.len);
}

static struct jv call_value(struct rs *r, const struct jv *f, const struct args *A0)
{
    struct args A = *A0;
    tick(r);
    switch (f->t) {
    case JT_METHOD: return call_method(r, f, &A);
    case JT_MACRO: {
        const struct jv *caller = NULL;
        for (size_t i = 0; i < A.nk; i++)
            if (!strcmp(A.kn[i], "caller")) caller = &A.kv[i];
        return call_macro(r, f->u.m, &A, caller);
    }
    case JT_FUNC: break;
    case JT_UNDEF: undef_fail(r, f);
    default: rfail(r, "'%s' object is not callable", tname(f));
    }
    static const char *const nk[] = {NULL};
    switch (f->fn) {
    case FN_RANGE: {
        A.what = "range()";
        arg_check(r, &A, 3, nk);
        if (A.np == 0) rfail(r, "range expected at least 1 argument, got 0");
        for (size_t i = 0; i < A.np; i++)
            if (A.pos[i].t != JT_INT && A.pos[i].t != JT_BOOL)
                rfail(r, "range(): '%s' object cannot be interpreted as an integer", tname(&A.pos[i]));
        struct jrange *rg = aalloc(&r->a, sizeof *rg);
        rg->start = A.np == 1 ? 0 : A.pos[0].u.i;
        rg->stop = A.np == 1 ? A.pos[0].u.i : A.pos[1].u.i;
        rg->step = A.np == 3 ? A.pos[2].u.i : 1;
        if (rg->step == 0) rfail(r, "range() arg 3 must not be zero");
        if (rg->step == INT64_MIN) rfail(r, "range() step out of range");
        if (range_len(rg) > 100000) /* jinja2's sandbox refuses these too */
            rfail(r, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        struct jv v = {.t = JT_RANGE};
        v.u.rg = rg;
        return v;
    }
    case FN_NAMESPACE: A.what = "namespace()"; return dict_from_args(r, &A, 1);
    case FN_DICT: A.what = "dict()"; return dict_from_args(r, &A, 0);
    case FN_RAISE: {
        A.what = "raise_exception()";
        arg_check(r, &A, 1, nk);
        const struct jv *m = arg_get(r, &A, 0, NULL);
        struct jv s = m ? to_str(r, m) : str_of(r, "", 0);
        r->je.raised = 1;
        rfail(r, "%s", s.u.s->p);
    }
    case FN_STRFTIME: {
        A.what = "strftime_now()";
        arg_check(r, &A, 1, nk);
        const struct jv *fmt = arg_str(r, &A, 0, NULL);
        if (!fmt) rfail(r, "strftime_now() takes a format string");
        return fn_strftime(r, fmt);
    }
    default:
        rfail(r, "the global '%s' is not supported by ropeserve's template engine", f->u.hint ? f->u.hint : "?");
    }
}

// --- filters and tests -------------------------------------------------------------------

static struct jv apply_filter_id(struct rs *r, int id, const char *name, struct jv x, const struct args *A);
static int apply_test_id(struct rs *r, int id, const char *name, const struct jv *x, const struct args *A);

/* jinja2's make_attrgetter: "a.b.0" looks up item/attribute a, then b, then index 0. */
static struct jv attr_path(struct rs *r, struct jv x, const struct jv *path)
{
    const char *p = path->u.s->p;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        int digits = n > 0;
        for (size_t i = 0; i < n; i++) digits &= isdigit((unsigned char)p[i]) != 0;
        struct jv key = digits ? jv_int(strtoll(p, NULL, 10)) : str_of(r, p, n);
        x = get_item(r, &x, &key);
        if (!dot) return x;
        p = dot + 1;
    }
}

static const struct jv *attr_arg(struct rs *r, const struct args *A, size_t idx, const char *name)
{
    const struct jv *a = arg_get(r, A, idx, name);
    if (!a || a->t == JT_NONE) return NULL;
    if (a->t == JT_INT) return a; /* an index */
    if (a->t != JT_STR) rfail(r, "%s: attribute must be a str", A->what);
    return a;
}

static struct jv sort_key(struct rs *r, struct jv x, const struct jv *attr, int case_sensitive)
{
    if (attr) x = attr->t == JT_INT ? get_item(r, &x, attr) : attr_path(r, x, attr);
    if (!case_sensitive && x.t == JT_STR) x = s_case(r, &x, CASE_LOWER);
    return x;
}

/* Stable merge sort of items by keys (Python's sorted). */
static void sort_items(struct rs *r, struct jv *items, struct jv *keys, size_t n, int reverse)
{
    if (n < 2) return;
    struct jv *ti = aalloc(&r->a, sizeof *ti * n), *tk = aalloc(&r->a, sizeof *tk * n);
    for (size_t w = 1; w < n; w *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                int c = jv_cmp(r, &keys[j], &keys[i]);
                int take_right = reverse ? c > 0 : c < 0;
                if (take_right) { ti[k] = items[j]; tk[k++] = keys[j++]; }
                else { ti[k] = items[i]; tk[k++] = keys[i++]; }
            }
            while (i < mid) { ti[k] = items[i]; tk[k++] = keys[i++]; }
            while (j < hi) { ti[k] = items[j]; tk[k++] = keys[j++]; }
        }
        memcpy(items, ti, sizeof *ti * n);
        memcpy(keys, tk, sizeof *tk * n);
    }
}

/* A filter or test called by name from map/select/selectattr: the arguments after the name. */
static struct args args_shift(const struct args *A, size_t k)
{
    struct args B = *A;
    B.pos = A->np > k ? A->pos + k : NULL;
    B.np = A->np > k ? A->np - k : 0;
    return B;
}

static struct jv filter_by_name(struct rs *r, const struct jv *name, struct jv x, const struct args *A)
{
    if (name->t != JT_STR) rfail(r, "%s: the filter name must be a str", A->what);
    int id = lookup_filter(name->u.s->p);
    if (id < 0) rfail(r, "no filter named '%s'", name->u.s->p);
    if (id == F_UNSUPPORTED) rfail(r, "filter '%s' is not supported by ropeserve's template engine", name->u.s->p);
    char what[96];
    snprintf(what, sizeof what, "filter '%s'", name->u.s->p);
    struct args B = *A;
    B.what = what;
    return apply_filter_id(r, id, name->u.s->p, x, &B);
}

static int test_by_name(struct rs *r, const struct jv *name, const struct jv *x, const struct args *A)
{
    if (!name) return jv_truthy(x);
    if (name->t != JT_STR) rfail(r, "%s: the test name must be a str", A->what);
    int id = lookup_test(name->u.s->p);
    if (id < 0) rfail(r, "no test named '%s'", name->u.s->p);
    char what[96];
    snprintf(what, sizeof what, "test '%s'", name->u.s->p);
    struct args B = *A;
    B.what = what;
    return apply_test_id(r, id, name->u.s->p, x, &B);
}

static struct jv py_round(struct rs *r, const struct jv *x, int64_t prec, const char *method)
{
    if (!is_num(x)) rfail(r, "filter 'round': a number is required, not %s", tname(x));
    if (strcmp(method, "common") && strcmp(method, "floor") && strcmp(method, "ceil"))
        rfail(r, "filter 'round': method must be common, ceil or floor");
    if (prec < -300 || prec > 300) rfail(r, "filter 'round': precision out of range");
    double v = num_f(x), p10 = pow(10.0, (double)prec);
    if (strcmp(method, "common")) {
        double y = !strcmp(method, "floor") ? floor(v * p10) : ceil(v * p10);
        return jv_float(y / p10);
    }
    if (x->t != JT_FLOAT) { /* round(int, n) stays an int */
        if (prec >= 0) return jv_int(x->u.i);
        double y = (double)x->u.i / pow(10.0, (double)-prec), z = nearbyint(y);
        return jv_int((int64_t)(z * pow(10.0, (double)-prec)));
    }
    if (!isfinite(v)) return *x;
    if (prec >= 0) {
        char buf[512];
        snprintf(buf, sizeof buf, "%.*f", (int)(prec > 340 ? 340 : prec), v);
        return jv_float(strtod(buf, NULL));
    }
    double pw = pow(10.0, (double)-prec), y = v / pw, z = round(y);
    if (fabs(y - z) == 0.5) z = 2.0 * round(y / 2.0);
    return jv_float(z * pw);
}

/* Python's float(str) (None on failure). */
static int py_parse_float(const char *s, size_t n, double *out)
{
    char buf[128];
    size_t b = 0, e = n;
    while (b < e && isspace((unsigned char)s[b])) b++;
    while (e > b && isspace((unsigned char)s[e - 1])) e--;
    if (e == b || e - b >= sizeof buf) return 0;
    size_t k = 0;
    for (size_t i = b; i < e; i++) {
        char c = s[i];
        if (c == '_') {
            if (i == b || i + 1 == e || !isdigit((unsigned char)s[i - 1]) || !isdigit((unsigned char)s[i + 1])) return 0;
            continue;
        }
        if (c == 'x' || c == 'X' || c == 'p' || c == 'P') return 0;
        buf[k++] = c;
    }
    buf[k] = 0;
    char *end;
    *out = strtod(buf, &end);
    return *end == 0 && end != buf;
}

/* Python's int(str, base) for base 10 or 2..36 (0 and prefixes: base 0 only). */
static int py_parse_int(const char *s, size_t n, int base, int64_t *out)
{
    size_t b = 0, e = n;
    while (b < e && isspace((unsigned char)s[b])) b++;
    while (e > b && isspace((unsigned char)s[e - 1])) e--;
    int neg = 0;
    if (b < e && (s[b] == '+' || s[b] == '-')) neg = s[b++] == '-';
    /* a 0x / 0o / 0b prefix: base 0 takes it as the base, base 16 / 8 / 2 allow their own */
    if (e - b > 2 && s[b] == '0' && s[b + 1] && strchr("xXoObB", s[b + 1])) {
        char c = (char)(s[b + 1] | 32);
        int pb = c == 'x' ? 16 : c == 'o' ? 8 : 2;
        if (base == 0 || base == pb) {
            base = pb;
            b += 2;
            if (b < e && s[b] == '_') b++;
        }
    }
    if (base == 0) base = 10;
    if (b == e) return 0;
    uint64_t v = 0;
    for (size_t i = b; i < e; i++) {
        char c = s[i];
        if (c == '_') {
            if (i + 1 == e || s[i + 1] == '_' || i == b) return 0;
            continue;
        }
        int d = isdigit((unsigned char)c) ? c - '0' : isalpha((unsigned char)c) ? (c | 32) - 'a' + 10 : 99;
        if (d >= base) return 0;
        if (v > (UINT64_MAX - (uint64_t)d) / (uint64_t)base) return -1;
        v = v * (uint64_t)base + (uint64_t)d;
    }
    if (v > (uint64_t)INT64_MAX + (neg ? 1u : 0u)) return -1;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 1;
}

static struct jv apply_filter_id(struct rs *r, int id, const char *name, struct jv x, const struct args *A)
{
    static const char *const nk[] = {NULL};
    tick(r);
    switch (id) {
    case F_ABS:
        arg_check(r, A, 0, nk);
        if (x.t == JT_UNDEF) undef_fail(r, &x);
        if (x.t == JT_FLOAT) return jv_float(fabs(x.u.f));
        if (x.t == JT_INT || x.t == JT_BOOL) {
            if (x.u.i == INT64_MIN) checked(r, 1, 0);
            return jv_int(x.u.i < 0 ? -x.u.i : x.u.i);
        }
        rfail(r, "bad operand type for abs(): '%s'", tname(&x));
    case F_ATTR: {
        arg_check(r, A, 1, nk);
        const struct jv *a = arg_get(r, A, 0, NULL);
        if (!a) rfail(r, "filter 'attr' takes an attribute name");
        struct jv an = to_str(r, a);
        if (x.t == JT_DICT) { /* getattr only: a dict's keys are not attributes */
            struct jv m = get_attr(r, &x, an.u.s->p, 0);
            return m;
        }
        return get_attr(r, &x, an.u.s->p, 0);
    }
    case F_CAPITALIZE: arg_check(r, A, 0, nk); x = to_str(r, &x); return s_case(r, &x, CASE_CAPITALIZE);
    case F_UPPER: arg_check(r, A, 0, nk); x = to_str(r, &x); return s_case(r, &x, CASE_UPPER);
    case F_LOWER: arg_check(r, A, 0, nk); x = to_str(r, &x); return s_case(r, &x, CASE_LOWER);
    case F_TITLE: arg_check(r, A, 0, nk); x = to_str(r, &x); return f_title(r, &x);
    case F_DEFAULT: {
        static const char *const k[] = {"default_value", "boolean", NULL};
        arg_check(r, A, 2, k);
        const struct jv *d = arg_get(r, A, 0, "default_value");
        int boolean = arg_bool(r, A, 1, "boolean", 0);
        if (x.t == JT_UNDEF || (boolean && !jv_truthy(&x))) return d ? *d : str_of(r, "", 0);
        return x;
    }
    case F_DICTSORT: {
        static const char *const k[] = {"case_sensitive", "by", "reverse", NULL};
        arg_check(r, A, 3, k);
        int cs = arg_bool(r, A, 0, "case_sensitive", 0), rev = arg_bool(r, A, 2, "reverse", 0);
        const struct jv *by = arg_str(r, A, 1, "by");
        int pos = 0;
        if (by && !strcmp(by->u.s->p, "value")) pos = 1;
        else if (by && strcmp(by->u.s->p, "key")) rfail(r, "filter 'dictsort': You can only sort by either \"key\" or \"value\"");
        if (x.t == JT_UNDEF) undef_fail(r, &x);
        if (x.t != JT_DICT) rfail(r, "filter 'dictsort': '%s' object has no attribute 'items'", tname(&x));
        size_t n = x.u.d->n;
        struct jv *items = aalloc(&r->a, sizeof *items * (n + 1)), *keys = aalloc(&r->a, sizeof *keys * (n + 1));
        for (size_t i = 0; i < n; i++) {
            struct jv t = jv_list_n(&r->a, 2, 1);
            t.u.l->v[0] = x.u.d->kv[i].k;
            t.u.l->v[1] = x.u.d->kv[i].v;
            items[i] = t;
            keys[i] = sort_key(r, t.u.l->v[pos], NULL, cs);
        }
        sort_items(r, items, keys, n, rev);
        return list_from(r, items, n, 0);
    }
    case F_ESCAPE: arg_check(r, A, 0, nk); return markup_of(r, &x);
    case F_FORCEESCAPE: {
        arg_check(r, A, 0, nk);
        struct jv s = to_str(r, &x);
        s.flags = 0;
        return markup_of(r, &s);
    }
    case F_SAFE: {
        arg_check(r, A, 0, nk);
        struct jv s = to_str(r, &x);
        s.flags |= JF_MARKUP;
        return s;
    }
    case F_FIRST: case F_LAST: {
        arg_check(r, A, 0, nk);
        size_t n;
        struct jv *items = iter_items(r, &x, &n);
        if (!n) return jv_undef(id == F_FIRST ? "No first item, sequence was empty." : "No last item, sequence was empty.");
        return items[id == F_FIRST ? 0 : n - 1];
    }
    case F_FLOAT: {
        static const char *const k[] = {"default", NULL};
        arg_check(r, A, 1, k);
        const struct jv *d = arg_get(r, A, 0, "default");
        double f;
        if (is_num(&x)) return jv_float(num_f(&x));
        if (x.t == JT_STR && py_parse_float(x.u.s->p, x.u.s->len, &f)) return jv_float(f);
        return d ? *d : jv_float(0.0);
    }
    case F_INT: {
        static const char *const k[] = {"default", "base", NULL};
        arg_check(r, A, 2, k);
        const struct jv *d = arg_get(r, A, 0, "default");
        int64_t base = arg_int(r, A, 1, "base", 10), v;
        if (base != 0 && (base < 2 || base > 36)) rfail(r, "filter 'int': base must be 0 or between 2 and 36");
        if (x.t == JT_INT || x.t == JT_BOOL) return jv_int(x.u.i);
        if (x.t == JT_FLOAT) {
            if (!isfinite(x.u.f)) rfail(r, "filter 'int': cannot convert %s to an integer", isnan(x.u.f) ? "NaN" : "infinity");
            if (fabs(x.u.f) >= 9.2e18) checked(r, 1, 0);
            return jv_int((int64_t)x.u.f);
        }
        if (x.t == JT_STR) {
            int ok = py_parse_int(x.u.s->p, x.u.s->len, (int)base, &v);
            if (ok < 0) checked(r, 1, 0);
            if (ok) return jv_int(v);
            double f;
            if (py_parse_float(x.u.s->p, x.u.s->len, &f)) {
                if (!isfinite(f)) rfail(r, "filter 'int': cannot convert %s to an integer", isnan(f) ? "NaN" : "infinity");
                if (fabs(f) >= 9.2e18) checked(r, 1, 0);
                return jv_int((int64_t)f);
            }
        }
        return d ? *d : jv_int(0);
    }
    case F_INDENT: {
        static const char *const k[] = {"width", "first", "blank", NULL};
        arg_check(r, A, 3, k);
        const struct jv *w = arg_get(r, A, 0, "width");
        int first = arg_bool(r, A, 1, "first", 0), blank = arg_bool(r, A, 2, "blank", 0);
        struct jv ind;
        if (!w) ind = str_of(r, "    ", 4);
        else if (w->t == JT_STR) ind = *w;
        else if (w->t == JT_INT || w->t == JT_BOOL) {
            struct jv sp = str_of(r, " ", 1);
            ind = repeat(r, &sp, w->u.i);
        } else rfail(r, "filter 'indent': width must be an int or a str");
        struct jv s = to_str(r, &x);
        struct jv nl = str_of(r, "\n", 1);
        struct jv sn = binop_eval(r, OP_ADD, &s, &nl); /* s += "\n": the quirk splitlines needs */
        struct jv lines = s_splitlines(r, &sn, 0);
        struct abuf b = {0};
        ab_put(&r->a, &b, "", 0);
        size_t n = lines.u.l->n;
        if (first) ab_put(&r->a, &b, ind.u.s->p, ind.u.s->len);
        for (size_t i = 0; i < n; i++) {
            const struct jstr *ln = lines.u.l->v[i].u.s;
            if (i) {
                ab_put(&r->a, &b, "\n", 1);
                if (blank || ln->len) ab_put(&r->a, &b, ind.u.s->p, ind.u.s->len);
            }
            ab_put(&r->a, &b, ln->p, ln->len);
            if (b.len > r->lim.max_output) rfail(r, "filter 'indent': result larger than %zu bytes", r->lim.max_output);
        }
        if (blank && n == 0 && 0) ab_put(&r->a, &b, "", 0);
        return str_of(r, b.p, b.len);
    }
    case F_ITEMS: {
        arg_check(r, A, 0, nk);
        if (x.t == JT_UNDEF) return jv_list_n(&r->a, 0, 0);
        if (x.t != JT_DICT) rfail(r, "filter 'items': Can only get item pairs from a mapping.");
        struct args B = {.what = "dict.items()"};
        struct jv m = bound(r, &x, M_ITEMS, "items");
        return call_method(r, &m, &B);
    }
    case F_JOIN: {
        static const char *const k[] = {"d", "attribute", NULL};
        arg_check(r, A, 2, k);
        const struct jv *d = arg_get(r, A, 0, "d");
        const struct jv *attr = attr_arg(r, A, 1, "attribute");
        struct jv sep = d ? to_str(r, d) : str_of(r, "", 0);
        size_t n;
        struct jv *items = iter_items(r, &x, &n);
        struct abuf b = {0};
        ab_put(&r->a, &b, "", 0);
        for (size_t i = 0; i < n; i++) {
            struct jv it = items[i];
            if (attr) it = attr->t == JT_INT ? get_item(r, &it, attr) : attr_path(r, it, attr);
            struct jv s = to_str(r, &it);
            if (i) ab_put(&r->a, &b, sep.u.s->p, sep.u.s->len);
            ab_put(&r->a, &b, s.u.s->p, s.u.s->len);
            if (b.len > r->lim.max_output) rfail(r, "filter 'join': result larger than %zu bytes", r->lim.max_output);
        }
        return str_of(r, b.p, b.len);
    }
    case F_LENGTH:
        arg_check(r, A, 0, nk);
        switch (x.t) {
        case JT_UNDEF: return jv_int(0);
        case JT_STR: return jv_int((int64_t)u8_count(x.u.s->p, x.u.s->len));
        case JT_LIST: case JT_TUPLE: return jv_int((int64_t)x.u.l->n);
        case JT_DICT: return jv_int((int64_t)x.u.d->n);
        case JT_RANGE: return jv_int(range_len(x.u.rg));
        case JT_LOOP: return jv_int(x.u.lp->length);
        default: rfail(r, "object of type '%s' has no len()", tname(&x));
        }
    case F_LIST: {
        arg_check(r, A, 0, nk);
        size_t n;
        struct jv *items = iter_items(r, &x, &n);
        return list_from(r, items, n, 0);
    }
    case F_REVERSE: {
        arg_check(r, A, 0, nk);
        if (x.t == JT_STR) {
            struct jv m1 = jv_int(-1);
            return do_slice(r, &x, NULL, NULL, &m1);
        }
        size_t n;
        struct jv *items = iter_items(r, &x, &n);
        struct jv l = jv_list_n(&r->a, n, 0);
        for (size_t i = 0; i < n; i++) l.u.l->v[i] = items[n - 1 - i];
        return l;
    }
    case F_MAP: {
        size_t n;
        struct jv *items = iter_items(r, &x, &n);
        const struct jv *attr = NULL, *dflt = NULL, *fname = NULL;
        for (size_t i = 0; i < A->nk; i++) {
            if (!strcmp(A->kn[i], "attribute")) attr = &A->kv[i];
            else if (!strcmp(A->kn[i], "default")) dflt = &A->kv[i];
        }
        if (!attr) {
            if (!A->np) rfail(r, "filter 'map' needs a filter name or attribute=");
            fname = &A->pos[0];
        } else if (A->np) rfail(r, "filter 'map': attribute= and a filter name cannot be combined");
        if (attr && A->nk > (size_t)(1 + (dflt != NULL))) rfail(r, "filter 'map': unexpected keyword arguments");
        if (attr && attr->t != JT_STR && attr->t != JT_INT) rfail(r, "filter 'map': attribute must be a str");
        struct args B = args_shift(A, 1);
        struct jv l = jv_list_n(&r->a, n, 0);
        for (size_t i = 0; i < n; i++) {
            if (attr) {
                struct jv v = attr->t == JT_INT ? get_item(r, &items[i], attr) : attr_path(r, items[i], attr);
                l.u.l->v[i] = (v.t == JT_UNDEF && dflt) ? *dflt : v;
            } else {
                l.u.l->v[i] = filter_by_name(r, fname, items[i], &B);
            }
        }
        return l;
    }
    case F_MAX: case F_MIN: {
        static const char *const k[] = {"case_sensitive", "attribute", NULL};
        arg_check(r, A, 2, k);
        int cs = arg_bool(r, A, 0, "case_sensitive", 0);
        const struct jv *attr = attr_arg(r, A, 1, "attribute");
        size_t n;
        struct jv *items = iter_items(r, &x, &n);
        if (!n) return jv_undef("No aggregated item, sequence was empty.");
        size_t best = 0;
        struct jv bk = sort_key(r, items[0], attr, cs);
        for (size_t i = 1; i < n; i++) {
            struct jv k2 = sort_key(r, items[i], attr, cs);
            int c = jv_cmp(r, &k2, &bk);
            if (id == F_MAX ? c > 0 : c < 0) { best = i; bk = k2; }
        }
        return items[best];
    }
    case F_SELECT: case F_REJECT: case F_SELECTATTR: case F_REJECTATTR: {
        if (A->nk) rfail(r, "filter '%s' takes no keyword arguments", name);
        int byattr = id == F_SELECTATTR || id == F_REJECTATTR, want = id == F_SELECT || id == F_SELECTATTR;
        const struct jv *attr = NULL;
        if (byattr) {
            if (!A->np) rfail(r, "filter '%s' needs an attribute name", name);
            attr = &A->pos[0];
            if (attr->t != JT_STR && attr->t != JT_INT) rfail(r, "filter '%s': the attribute must be a str", name);
        }
        size_t skip = byattr ? 1 : 0;
        const struct jv *tn = A->np > skip ? &A->pos[skip] : NULL;
        struct args B = args_shift(A, skip + 1);
        size_t n;
        struct jv *items = iter_items(r, &x, &n);
        struct jv *out = aalloc(&r->a, sizeof *out * (n + 1));
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            struct jv v = items[i];
            if (attr) v = attr->t == JT_INT ? get_item(r, &v, attr) : attr_path(r, v, attr);
            if (test_by_name(r, tn, &v, &B) == want) out[k++] = items[i];
        }
        return list_from(r, out, k, 0);
    }
    case F_REPLACE: {
        static const char *const k[] = {"count", NULL};
        arg_check(r, A, 3, k);
        const struct jv *o = arg_get(r, A, 0, NULL), *nw = arg_get(r, A, 1, NULL);
        if (!o || !nw) rfail(r, "filter 'replace' takes two arguments");
        struct jv os = to_str(r, o), ns = to_str(r, nw), s = to_str(r, &x);
        return s_replace(r, &s, &os, &ns, arg_int(r, A, 2, "count", -1));
    }
    case F_ROUND: {
        static const char *const k[] = {"precision", "method", NULL};
        arg_check(r, A, 2, k);
        const struct jv *m = arg_str(r, A, 1, "method");
        if (x.t == JT_UNDEF) undef_fail(r, &x);
        return py_round(r, &x, arg_int(r, A, 0, "precision", 0), m ? m->u.s->p : "common");
    }
    case F_SORT: {
        static const char *const k[] = {"reverse", "case_sensitive", "attribute", NULL};
        arg_check(r, A, 3, k);
        int rev = arg_bool(r, A, 0, "reverse", 0), cs = arg_bool(r, A, 1, "case_sensitive", 0);
        const struct jv *attr = attr_arg(r, A, 2, "attribute");
        size_t n;
        struct jv *src = iter_items(r, &x, &n);
        struct jv *items = aalloc(&r->a, sizeof *items * (n + 1)), *keys = aalloc(&r->a, sizeof *keys * (n + 1));
        for (size_t i = 0; i < n; i++) {
            items[i] = src[i];
            keys[i] = sort_key(r, src[i], attr, cs);
        }
        sort_items(r, items, keys, n, rev);
        return list_from(r, items, n, 0);
    }
    case F_UNIQUE: {
        static const char *const k[] = {"case_sensitive", "attribute", NULL};
        arg_check(r, A, 2, k);
        int cs = arg_bool(r, A, 0, "case_sensitive", 0);
        const struct jv *attr = attr_arg(r, A, 1, "attribute");
        size_t n;
        struct jv *items = iter_items(r, &x, &n);
        struct jv *out = aalloc(&r->a, sizeof *out * (n + 1)), *seen = aalloc(&r->a, sizeof *seen * (n + 1));
        size_t k2 = 0;
        for (size_t i = 0; i < n; i++) {
            struct jv key = sort_key(r, items[i], attr, cs);
            if (!jv_hashable(&key)) rfail(r, "unhashable type: '%s'", tname(&key));
            int dup = 0;
            for (size_t j = 0; j < k2 && !dup; j++) dup = jv_eq(&seen[j], &key);
            if (!dup) { seen[k2] = key; out[k2++] = items[i]; }
        }
        return list_from(r, out, k2, 0);
    }
    case F_STRING: arg_check(r, A, 0, nk); return to_str(r, &x);
    case F_SUM: {
        static const char *const k[] = {"attribute", "start", NULL};
        arg_check(r, A, 2, k);
        const struct jv *attr = attr_arg(r, A, 0, "attribute"), *st = arg_get(r, A, 1, "start");
        struct jv acc = st ? *st : jv_int(0);
        size_t n;
        struct jv *items = iter_items(r, &x, &n);
        for (size_t i = 0; i < n; i++) {
            struct jv v = items[i];
            if (attr) v = attr->t == JT_INT ? get_item(r, &v, attr) : attr_path(r, v, attr);
            if (v.t == JT_STR || acc.t == JT_STR) rfail(r, "filter 'sum': unsupported operand type(s) for +: '%s' and '%s'", tname(&acc), tname(&v));
            acc = binop_eval(r, OP_ADD, &acc, &v);
        }
        return acc;
    }
    case F_TOJSON: {
        static const char *const k[] = {"ensure_ascii", "indent", "separators", "sort_keys", NULL};
        arg_check(r, A, 4, k);
        struct json_opts o = {0};
        o.ensure_ascii = arg_bool(r, A, 0, "ensure_ascii", 0);
        o.sort_keys = arg_bool(r, A, 3, "sort_keys", 0);
        const struct jv *ind = arg_get(r, A, 1, "indent"), *sep = arg_get(r, A, 2, "separators");
        if (ind && ind->t != JT_NONE) {
            if (ind->t == JT_STR) o.indent = ind->u.s->p;
            else if (ind->t == JT_INT || ind->t == JT_BOOL) {
                int64_t w = ind->u.i < 0 ? 0 : ind->u.i;
                if (w > 1024) rfail(r, "filter 'tojson': indent too large");
                char *sp = aalloc(&r->a, (size_t)w + 1);
                memset(sp, ' ', (size_t)w);
                sp[w] = 0;
                o.indent = sp;
            } else rfail(r, "filter 'tojson': indent must be an int or a str");
        }
        o.item_sep = o.indent ? "," : ", ";
        o.key_sep = ": ";
        if (sep && sep->t != JT_NONE) {
            if (!is_seq(sep) || sep->u.l->n != 2 || sep->u.l->v[0].t != JT_STR || sep->u.l->v[1].t != JT_STR)
                rfail(r, "filter 'tojson': separators must be a pair of strings");
            o.item_sep = sep->u.l->v[0].u.s->p;
            o.key_sep = sep->u.l->v[1].u.s->p;
        }
        struct abuf b = {0};
        ab_put(&r->a, &b, "", 0);
        json_dump(r, &r->a, &b, &x, &o, 0);
        if (b.len > r->lim.max_output) rfail(r, "filter 'tojson': result larger than %zu bytes", r->lim.max_output);
        return str_of(r, b.p, b.len);
    }
    case F_TRIM: {
        static const char *const k[] = {"chars", NULL};
        arg_check(r, A, 1, k);
        struct jv s = to_str(r, &x);
        return s_strip(r, &s, arg_str(r, A, 0, "chars"), 1, 1);
    }
    case F_WORDCOUNT: {
        arg_check(r, A, 0, nk);
        struct jv s = to_str(r, &x);
        int64_t words = 0;
        int in = 0;
        for (size_t i = 0; i < s.u.s->len;) {
            uint32_t c;
            i += (size_t)u8_dec(s.u.s->p + i, s.u.s->len - i, &c);
            int w = cp_isalpha(c) || cp_isdigit(c) || c == '_';
            if (w && !in) words++;
            in = w;
        }
        return jv_int(words);
    }
    case F_CENTER: {
        static const char *const k[] = {"width", NULL};
        arg_check(r, A, 1, k);
        struct jv s = to_str(r, &x);
        return s_pad(r, &s, arg_int(r, A, 0, "width", 80), NULL, 0);
    }
    default:
        rfail(r, "filter '%s' is not supported by ropeserve's template engine", name);
    }
}

static int apply_test_id(struct rs *r, int id, const char *name, const struct jv *x, const struct args *A)
{
    static const char *const nk[] = {NULL};
    const struct jv *y = NULL;
    tick(r);
    switch (id) {
    case TS_DIVISIBLEBY: case TS_EQ: case TS_NE: case TS_LT: case TS_LE: case TS_GT: case TS_GE:
    case TS_IN: case TS_SAMEAS:
        arg_check(r, A, 1, nk);
        y = arg_get(r, A, 0, NULL);
        if (!y) rfail(r, "test '%s' takes one argument", name);
        break;
    default:
        arg_check(r, A, 0, nk);
    }
    switch (id) {
    case TS_BOOLEAN: return x->t == JT_BOOL;
    case TS_CALLABLE: return x->t == JT_FUNC || x->t == JT_METHOD || x->t == JT_MACRO || x->t == JT_UNDEF;
    case TS_DEFINED: return x->t != JT_UNDEF;
    case TS_UNDEFINED: return x->t == JT_UNDEF;
    case TS_NONE: return x->t == JT_NONE;
    case TS_TRUE: return x->t == JT_BOOL && x->u.i;
    case TS_FALSE: return x->t == JT_BOOL && !x->u.i;
    case TS_INTEGER: return x->t == JT_INT;
    case TS_FLOAT: return x->t == JT_FLOAT;
    case TS_NUMBER: return is_num(x);
    case TS_STRING: return x->t == JT_STR;
    case TS_MAPPING: return x->t == JT_DICT;
    case TS_ESCAPED: return x->t == JT_STR && (x->flags & JF_MARKUP);
    case TS_ITERABLE:
        return x->t == JT_STR || is_seq(x) || x->t == JT_DICT || x->t == JT_RANGE || x->t == JT_UNDEF || x->t == JT_LOOP;
    case TS_SEQUENCE:
        return x->t == JT_STR || is_seq(x) || x->t == JT_DICT || x->t == JT_RANGE || x->t == JT_UNDEF;
    case TS_ODD: case TS_EVEN: {
        struct jv two = jv_int(2), m = binop_eval(r, OP_MOD, x, &two);
        struct jv one = jv_int(id == TS_ODD ? 1 : 0);
        return jv_eq(&m, &one);
    }
    case TS_DIVISIBLEBY: {
        struct jv m = binop_eval(r, OP_MOD, x, y), zero = jv_int(0);
        return jv_eq(&m, &zero);
    }
    case TS_EQ: return compare(r, CMP_EQ, x, y);
    case TS_NE: return compare(r, CMP_NE, x, y);
    case TS_LT: return compare(r, CMP_LT, x, y);
    case TS_LE: return compare(r, CMP_LE, x, y);
    case TS_GT: return compare(r, CMP_GT, x, y);
    case TS_GE: return compare(r, CMP_GE, x, y);
    case TS_IN: return contains(r, y, x);
    case TS_SAMEAS:
        if (x->t != y->t) return 0;
        if (x->t == JT_NONE || x->t == JT_UNDEF) return x->t == JT_NONE;
        if (x->t == JT_BOOL) return x->u.i == y->u.i;
        if (x->t == JT_INT) return x->u.i == y->u.i && x->u.i >= -5 && x->u.i <= 256; /* CPython's small-int cache */
        return x->u.l == y->u.l;
    case TS_LOWER: case TS_UPPER: {
        struct jv s = to_str(r, x);
        return s_class(&s, id == TS_LOWER ? M_ISLOWER : M_ISUPPER);
    }
    case TS_FILTER: return x->t == JT_STR && lookup_filter(x->u.s->p) >= 0;
    case TS_TEST: return x->t == JT_STR && lookup_test(x->u.s->p) >= 0;
    default: rfail(r, "test '%s' is not supported", name);
    }
}

// --- expressions and statements ----------------------------------------------------------


static struct args eval_args(struct rs *r, const struct node *n, struct scope *sc, const char *what)
{
    struct args A = {0};
    A.what = what;
    A.np = (size_t)n->nv;
    A.nk = (size_t)n->nw;
    A.kn = n->names;
    if (n->nv) {
        struct jv *p = aalloc(&r->a, sizeof *p * (size_t)n->nv);
        for (int i = 0; i < n->nv; i++) p[i] = eval(r, n->v[i], sc);
        A.pos = p;
    }
    if (n->nw) {
        struct jv *k = aalloc(&r->a, sizeof *k * (size_t)n->nw);
        for (int i = 0; i < n->nw; i++) k[i] = eval(r, n->w[i], sc);
        A.kv = k;
    }
    return A;
}

static struct jv eval(struct rs *r, const struct node *n, struct scope *sc)
{
    tick(r);
    frame_in();
    struct jv v, x, y;
    switch (n->k) {
    case N_CONST: v = n->cv; break;
    case N_NAME: v = lookup(r, sc, n->name); break;
    case N_LIST: case N_TUPLE:
        v = jv_list_n(&r->a, (size_t)n->nv, n->k == N_TUPLE);
        for (int i = 0; i < n->nv; i++) v.u.l->v[i] = eval(r, n->v[i], sc);
        break;
    case N_DICT:
        v = jv_dict(&r->a, 0);
        for (int i = 0; i < n->nv; i++) {
            x = eval(r, n->v[i], sc);
            if (!jv_hashable(&x)) rfail(r, "unhashable type: '%s'", tname(&x));
            y = eval(r, n->w[i], sc);
            dict_set(&r->a, v.u.d, x, y);
        }
        break;
    case N_GETATTR: x = eval(r, n->a, sc); v = get_attr(r, &x, n->name, 1); break;
    case N_GETITEM: x = eval(r, n->a, sc); y = eval(r, n->b, sc); v = get_item(r, &x, &y); break;
    case N_SLICE: {
        struct jv b, e, s;
        x = eval(r, n->a, sc);
        if (n->b) b = eval(r, n->b, sc);
        if (n->c) e = eval(r, n->c, sc);
        if (n->d) s = eval(r, n->d, sc);
        v = do_slice(r, &x, n->b ? &b : NULL, n->c ? &e : NULL, n->d ? &s : NULL);
        break;
    }
    case N_CALL: {
        x = eval(r, n->a, sc);
        struct args A = eval_args(r, n, sc, "call");
        v = call_value(r, &x, &A);
        break;
    }
    case N_FILTER: {
        x = n->a ? eval(r, n->a, sc) : r->hole;
        char what[80];
        snprintf(what, sizeof what, "filter '%s'", n->name);
        struct args A = eval_args(r, n, sc, what);
        A.what = what;
        v = apply_filter_id(r, n->id, n->name, x, &A);
        break;
    }
    case N_TEST: {
        x = eval(r, n->a, sc);
        char what[80];
        snprintf(what, sizeof what, "test '%s'", n->name);
        struct args A = eval_args(r, n, sc, what);
        A.what = what;
        v = jv_bool(apply_test_id(r, n->id, n->name, &x, &A));
        break;
    }
    case N_BINOP: x = eval(r, n->a, sc); y = eval(r, n->b, sc); v = binop_eval(r, n->id, &x, &y); break;
    case N_CONCAT: {
        struct abuf b = {0};
        ab_put(&r->a, &b, "", 0);
        for (int i = 0; i < n->nv; i++) {
            x = eval(r, n->v[i], sc);
            if (x.t == JT_STR) ab_put(&r->a, &b, x.u.s->p, x.u.s->len);
            else jv_write(r, &r->a, &b, &x, 0);
            if (b.len > r->lim.max_output) rfail(r, "a string larger than %zu bytes", r->lim.max_output);
        }
        v = str_of(r, b.p, b.len);
        break;
    }
    case N_COMPARE: {
        int res = 1;
        x = eval(r, n->a, sc);
        for (int i = 0; i < n->nv; i++) {
            y = eval(r, n->v[i], sc);
            if (!compare(r, n->ops[i], &x, &y)) { res = 0; break; }
            x = y;
        }
        v = jv_bool(res);
        break;
    }
    case N_AND: x = eval(r, n->a, sc); v = jv_truthy(&x) ? eval(r, n->b, sc) : x; break;
    case N_OR: x = eval(r, n->a, sc); v = jv_truthy(&x) ? x : eval(r, n->b, sc); break;
    case N_NOT: x = eval(r, n->a, sc); v = jv_bool(!jv_truthy(&x)); break;
    case N_NEG: case N_POS:
        x = eval(r, n->a, sc);
        if (x.t == JT_UNDEF) undef_fail(r, &x);
        if (x.t == JT_FLOAT) v = jv_float(n->k == N_NEG ? -x.u.f : x.u.f);
        else if (x.t == JT_INT || x.t == JT_BOOL) {
            if (n->k == N_NEG && x.u.i == INT64_MIN) checked(r, 1, 0);
            v = jv_int(n->k == N_NEG ? -x.u.i : x.u.i);
        } else rfail(r, "bad operand type for unary %s: '%s'", n->k == N_NEG ? "-" : "+", tname(&x));
        break;
    case N_COND:
        x = eval(r, n->a, sc);
        if (jv_truthy(&x)) v = eval(r, n->b, sc);
        else v = n->c ? eval(r, n->c, sc)
                      : jv_undef("the inline if-expression evaluated to false and no else section was defined");
        break;
    default:
        rfail(r, "internal: not an expression");
    }
    FRAME_OUT();
    return v;
}

static void assign(struct rs *r, const struct node *t, struct jv v, struct scope *sc)
{
    if (t->k == N_NAME) {
        scope_set(r, sc, t->name, v);
        return;
    }
    if (t->k == N_TUPLE) {
        if (v.t == JT_UNDEF) undef_fail(r, &v);
        size_t n;
        struct jv *items = iter_items(r, &v, &n);
        if (n < (size_t)t->nv) rfail(r, "not enough values to unpack (expected %d, got %zu)", t->nv, n);
        if (n > (size_t)t->nv) rfail(r, "too many values to unpack (expected %d)", t->nv);
        for (int i = 0; i < t->nv; i++) assign(r, t->v[i], items[i], sc);
        return;
    }
    struct jv ns = lookup(r, sc, t->a->name); /* ns.attr = v */
    if (ns.t == JT_UNDEF) undef_fail(r, &ns);
    if (ns.t != JT_NS) rfail(r, "can only set attributes on namespace objects, '%s' is a %s", t->a->name, tname(&ns));
    dict_set(&r->a, ns.u.d, jv_str(&r->a, t->name), v);
}

/* Run body into a fresh buffer; returns the text as a str. */
static struct jv capture(struct rs *r, const struct node *body, struct scope *sc)
{
    struct abuf *saved = r->out, buf = {0};
    ab_put(&r->a, &buf, "", 0);
    r->out = &buf;
    exec(r, body, sc);
    r->out = saved;
    return str_of(r, buf.p, buf.len);
}

static void emit_value(struct rs *r, const struct jv *x)
{
    if (x->t == JT_STR) {
        emit(r, x->u.s->p, x->u.s->len);
        return;
    }
    struct jv s = to_str(r, x);
    emit(r, s.u.s->p, s.u.s->len);
}

static struct jv make_macro(struct rs *r, const struct node *def, struct scope *sc)
{
    struct jmacro *m = aalloc(&r->a, sizeof *m);
    m->def = def;
    m->closure = sc;
    m->caller = JV_UNDEF_V;
    struct jv v = {.t = JT_MACRO};
    v.u.m = m;
    return v;
}

static void exec_for(struct rs *r, const struct node *n, struct scope *sc)
{
    struct jv it = eval(r, n->b, sc);
    if (it.t == JT_NONE || it.t == JT_INT || it.t == JT_FLOAT || it.t == JT_BOOL)
        rfail(r, "'%s' object is not iterable", tname(&it));
    size_t cnt;
    struct jv *items = iter_items(r, &it, &cnt);
    struct scope *ls = scope_new(r, sc);
    if (n->c) { /* for x in seq if cond: filter first, so loop.length counts what is kept */
        struct jv *kept = aalloc(&r->a, sizeof *kept * (cnt + 1));
        size_t k = 0;
        for (size_t i = 0; i < cnt; i++) {
            if (++r->iters > r->lim.max_iterations) rfail(r, "the template ran more than %lld loop iterations", r->lim.max_iterations);
            ls->n = 0;
            assign(r, n->a, items[i], ls);
            struct jv c = eval(r, n->c, ls);
            if (jv_truthy(&c)) kept[k++] = items[i];
        }
        items = kept;
        cnt = k;
    }
    struct jloop *L = aalloc(&r->a, sizeof *L);
    memset(L, 0, sizeof *L);
    L->length = (int64_t)cnt;
    struct jv lv = {.t = JT_LOOP};
    lv.u.lp = L;
    for (size_t i = 0; i < cnt; i++) {
        if (++r->iters > r->lim.max_iterations) rfail(r, "the template ran more than %lld loop iterations", r->lim.max_iterations);
        ls->n = 0; /* every iteration starts from the enclosing scope (jinja2's scoping) */
        L->index0 = (int64_t)i;
        L->has_prev = i > 0;
        if (i > 0) L->prev = items[i - 1];
        L->has_next = i + 1 < cnt;
        if (i + 1 < cnt) L->next = items[i + 1];
        scope_set(r, ls, "loop", lv);
        assign(r, n->a, items[i], ls);
        exec(r, n->d, ls);
        if (r->ctl == 1) { r->ctl = 0; break; }
        r->ctl = 0;
    }
    if (cnt == 0 && n->e) {
        ls->n = 0;
        exec(r, n->e, ls);
    }
}

static void exec(struct rs *r, const struct node *n, struct scope *sc)
{
    tick(r);
    frame_in();
    switch (n->k) {
    case S_BODY:
        for (int i = 0; i < n->nv && !r->ctl; i++) exec(r, n->v[i], sc);
        break;
    case S_DATA: emit(r, n->name, n->len); break;
    case S_PRINT: {
        struct jv x = eval(r, n->a, sc);
        emit_value(r, &x);
        break;
    }
    case S_IF: {
        struct jv c = eval(r, n->a, sc);
        if (jv_truthy(&c)) exec(r, n->b, sc);
        else if (n->c) exec(r, n->c, sc);
        break;
    }
    case S_FOR: exec_for(r, n, sc); break;
    case S_SET: assign(r, n->a, eval(r, n->b, sc), sc); break;
    case S_SETBLOCK: {
        struct jv s = capture(r, n->b, sc);
        if (n->c) {
            struct jv saved = r->hole;
            r->hole = s;
            s = eval(r, n->c, sc);
            r->hole = saved;
        }
        assign(r, n->a, s, sc);
        break;
    }
    case S_MACRO: scope_set(r, sc, n->name, make_macro(r, n, sc)); break;
    case S_CALLBLOCK: {
        struct jv caller = make_macro(r, n, sc);
        const struct node *call = n->a;
        struct jv f = eval(r, call->a, sc);
        struct args A = eval_args(r, call, sc, "call");
        /* the call gets caller=<the block> as one more keyword argument */
        const char **kn = aalloc(&r->a, sizeof *kn * (A.nk + 1));
        struct jv *kv = aalloc(&r->a, sizeof *kv * (A.nk + 1));
        for (size_t i = 0; i < A.nk; i++) {
            kn[i] = A.kn[i];
            kv[i] = A.kv[i];
        }
        kn[A.nk] = "caller";
        kv[A.nk] = caller;
        A.kn = kn;
        A.kv = kv;
        A.nk++;
        struct jv out = call_value(r, &f, &A);
        emit_value(r, &out);
        break;
    }
    case S_FILTERBLOCK: {
        struct jv s = capture(r, n->b, sc), saved = r->hole;
        r->hole = s;
        struct jv x = eval(r, n->a, sc);
        r->hole = saved;
        emit_value(r, &x);
        break;
    }
    case S_WITH: {
        struct scope *inner = scope_new(r, sc);
        struct jv *vals = aalloc(&r->a, sizeof *vals * (size_t)(n->nw + 1));
        for (int i = 0; i < n->nw; i++) vals[i] = eval(r, n->w[i], sc);
        for (int i = 0; i < n->nv; i++) assign(r, n->v[i], vals[i], inner);
        exec(r, n->b, inner);
        break;
    }
    case S_BREAK: r->ctl = 1; break;
    case S_CONTINUE: r->ctl = 2; break;
    default: rfail(r, "internal: not a statement");
    }
    FRAME_OUT();
}

// ---------------------------------------------------------------------------------------------
// Public API

struct jinja_tmpl {
    struct arena a;
    struct node *root;
    int content_list; /* iterates a message's content: vLLM passes content as a list of parts */
};

/* vLLM's _detect_content_format ("auto"): the template takes content as a list of parts when
 * it has a `for ... in M['content']` (or M.content, through filters and slices) where M is the
 * variable of a `for M in X` loop and X is `messages` or a variable assigned from it. Like
 * vLLM, variables are followed by name, not by scope. */
static int elems_access(const struct node *n, const char *var, const char *key)
{
    while (n && (n->k == N_FILTER || n->k == N_TEST || n->k == N_SLICE)) n = n->a;
    if (!n) return 0;
    if (!key) return n->k == N_NAME && !strcmp(n->name, var);
    if (n->k == N_GETATTR) return n->a->k == N_NAME && !strcmp(n->a->name, var) && !strcmp(n->name, key);
    return n->k == N_GETITEM && n->a->k == N_NAME && !strcmp(n->a->name, var) && n->b->k == N_CONST &&
           n->b->cv.t == JT_STR && !strcmp(n->b->cv.u.s->p, key);
}

struct node_set {
    const struct node **v;
    int n, cap;
};

static void collect(struct arena *a, const struct node *n, enum nk kind, struct node_set *out, int depth)
{
    if (!n || depth > JINJA_MAX_NEST * 4) return;
    if (n->k == kind) {
        if (out->n == out->cap) {
            int cap = out->cap ? out->cap * 2 : 16;
            const struct node **nv = aalloc(a, sizeof *nv * (size_t)cap);
            if (out->n) memcpy(nv, out->v, sizeof *nv * (size_t)out->n);
            out->v = nv;
            out->cap = cap;
        }
        out->v[out->n++] = n;
    }
    const struct node *kids[5] = {n->a, n->b, n->c, n->d, n->e};
    for (int i = 0; i < 5; i++) collect(a, kids[i], kind, out, depth + 1);
    for (int i = 0; i < n->nv; i++) collect(a, n->v[i], kind, out, depth + 1);
    for (int i = 0; i < n->nw; i++) collect(a, n->w[i], kind, out, depth + 1);
}

static int detect_content_list(struct arena *a, const struct node *root)
{
    struct node_set sets = {0}, fors = {0};
    collect(a, root, S_SET, &sets, 0);
    collect(a, root, S_FOR, &fors, 0);
    /* names holding the message list: messages, and what is assigned from them (BFS) */
    const char **mv = aalloc(a, sizeof *mv * (size_t)(sets.n + 1));
    int nm = 0, head = 0;
    mv[nm++] = "messages";
    while (head < nm) {
        const char *cur_name = mv[head++];
        for (int i = 0; i < sets.n; i++) {
            const struct node *st = sets.v[i];
            if (st->a->k != N_NAME || !elems_access(st->b, cur_name, NULL)) continue;
            int seen = 0;
            for (int k = 0; k < nm; k++) seen |= !strcmp(mv[k], st->a->name);
            if (!seen) mv[nm++] = st->a->name;
        }
    }
    /* loop variables over them: the message variables */
    const char **msg = aalloc(a, sizeof *msg * (size_t)(fors.n + 1));
    int nmsg = 0;
    for (int i = 0; i < fors.n; i++)
        for (int k = 0; k < nm; k++)
            if (elems_access(fors.v[i]->b, mv[k], NULL)) {
                if (fors.v[i]->a->k == N_NAME) msg[nmsg++] = fors.v[i]->a->name;
                break;
            }
    for (int i = 0; i < fors.n; i++)
        for (int k = 0; k < nmsg; k++)
            if (elems_access(fors.v[i]->b, msg[k], "content")) return 1;
    return 0;
}

int jinja_compile(jinja_tmpl_t **out, const char *src, size_t len, char *err)
{
    *out = NULL;
    if (len > JINJA_MAX_SOURCE)
        return set_err(err, -1, "chat template: %zu bytes, more than the %u allowed", len, JINJA_MAX_SOURCE);
    if (!utf8_valid(src, len)) return set_err(err, -1, "chat template: not valid UTF-8");
    struct jerr *je = xcalloc(1, sizeof *je);
    jinja_tmpl_t *volatile t = xcalloc(1, sizeof *t);
    t->a.je = je;
    if (setjmp(je->jb)) {
        set_err(err, -1, "chat template: %s", je->msg);
        afree(&t->a);
        free(t);
        free(je);
        return -1;
    }
    /* newlines: \r\n and \r become \n; one trailing newline goes (keep_trailing_newline off) */
    char *s = aalloc(&t->a, len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else {
            s[n++] = src[i];
        }
    }
    if (n && s[n - 1] == '\n') n--;
    s[n] = 0;
    struct lexer L = {.src = s, .len = n, .a = &t->a, .je = je};
    lex(&L);
    struct parser P = {.t = L.toks, .a = &t->a, .je = je};
    t->root = parse_body(&P, NULL);
    t->content_list = detect_content_list(&t->a, t->root);
    t->a.je = NULL;
    free(je);
    *out = t;
    return 0;
}

void jinja_free(jinja_tmpl_t *t)
{
    if (!t) return;
    afree(&t->a);
    free(t);
}

/* Set up a render state; the caller setjmp()s on r->je.jb right after. */
static struct rs *rs_new(const struct jinja_limits *lim, long long now)
{
    struct rs *r = xcalloc(1, sizeof *r);
    r->lim = lim ? *lim : jinja_default_limits();
    if (r->lim.max_depth <= 0 || r->lim.max_depth > 1000) r->lim.max_depth = 1000;
    r->a.limit = r->lim.max_memory;
    r->a.je = &r->je;
    r->now = now ? (time_t)now : time(NULL);
    r->hole = JV_UNDEF_V;
    return r;
}

static void rs_finish(struct rs *r, char **out, size_t *out_len, const struct abuf *b)
{
    char *o = xmalloc(b->len + 1);
    memcpy(o, b->p, b->len);
    o[b->len] = 0;
    *out = o;
    if (out_len) *out_len = b->len;
}

static void render_root(struct rs *r, const jinja_tmpl_t *t, struct abuf *b)
{
    ab_put(&r->a, b, "", 0);
    r->out = b;
    frames = 0;
    frames_rs = r;
    exec(r, t->root, scope_new(r, NULL));
    frames_rs = NULL;
}

int jinja_render_json(const jinja_tmpl_t *t, const char *vars, size_t len, long long now,
                      const struct jinja_limits *lim, char **out, size_t *out_len, char *err)
{
    *out = NULL;
    struct rs *volatile r = rs_new(lim, now);
    if (setjmp(r->je.jb)) {
        frames_rs = NULL;
        set_err(err, -1, "chat template%s: %s", r->je.raised ? " raised an error" : "", r->je.msg);
        afree(&r->a);
        free(r);
        return -1;
    }
    struct jv v = json_parse(&r->a, &r->je, vars, len);
    if (v.t != JT_DICT) rfail(r, "the template variables must be a JSON object");
    r->vars = v.u.d;
    struct abuf b = {0};
    render_root(r, t, &b);
    rs_finish(r, out, out_len, &b);
    afree(&r->a);
    free(r);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// A chat request -> the template's variables, as vLLM builds them (parse_chat_messages +
// _postprocess_messages + apply_hf_chat_template) and transformers renders them
// (continue_final_message included)

static struct jv *req_field(struct jdict *d, const char *k)
{
    struct jv *v = dict_find_str(d, k);
    return (v && v->t != JT_NONE) ? v : NULL;
}

/* json.loads(s), or {} when s is not valid JSON (vLLM's rule for tool-call arguments). */
static struct jv loads_or_empty(struct rs *r, const struct jv *s)
{
    struct jerr je2;
    /* parse errors come back here; running out of memory still goes to the render's handler */
    if (setjmp(je2.jb)) return jv_dict(&r->a, 0);
    return json_parse(&r->a, &je2, s->u.s->p, s->u.s->len);
}

static struct jv content_text(struct rs *r, const struct jv *c, size_t mi);

/* The message's content as vLLM gives it to a template that iterates it ("openai" format): a
 * list of {"type": "text", "text": ...} parts, one per text part (a string is one part). */
static struct jv content_parts(struct rs *r, const struct jv *c, size_t mi)
{
    struct jv *items = NULL;
    size_t n = 0, cap = 0;
    size_t cnt = (c && is_seq(c)) ? c->u.l->n : (c && c->t == JT_STR ? 1 : 0);
    for (size_t i = 0; i < cnt; i++) {
        const struct jv *p = c->t == JT_STR ? c : &c->u.l->v[i];
        struct jv one = jv_list_n(&r->a, 1, 0);
        one.u.l->v[0] = *p;
        struct jv text = content_text(r, &one, mi);
        if (p->t == JT_DICT) {
            struct jv *ty = dict_find_str(p->u.d, "type");
            const char *tn = (ty && ty->t == JT_STR) ? ty->u.s->p : "";
            const char *key = !strcmp(tn, "refusal") ? "refusal" : !strcmp(tn, "thinking") ? "thinking" : "text";
            struct jv *t = dict_find_str(p->u.d, key);
            if (!t || t->t == JT_NONE) continue; /* skipped, as vLLM skips it */
        }
        struct jv part = jv_dict(&r->a, 0);
        dict_set(&r->a, part.u.d, jv_str(&r->a, "type"), jv_str(&r->a, "text"));
        dict_set(&r->a, part.u.d, jv_str(&r->a, "text"), text);
        push_item(r, &items, &n, &cap, part);
    }
    return list_from(r, items, n, 0);
}

static struct jv content_text(struct rs *r, const struct jv *c, size_t mi)
{
    if (!c || c->t == JT_NONE) return str_of(r, "", 0);
    if (c->t == JT_STR) return *c;
    if (!is_seq(c)) rfail(r, "messages[%zu].content must be a string or a list of parts, got %s", mi, tname(c));
    struct abuf b = {0};
    ab_put(&r->a, &b, "", 0);
    int first = 1;
    for (size_t i = 0; i < c->u.l->n; i++) {
        const struct jv *p = &c->u.l->v[i], *text = NULL;
        if (p->t == JT_STR) text = p;
        else if (p->t == JT_DICT) {
            struct jv *ty = dict_find_str(p->u.d, "type");
            const char *tn = (ty && ty->t == JT_STR) ? ty->u.s->p : "";
            const char *key = !strcmp(tn, "text") || !strcmp(tn, "input_text") || !strcmp(tn, "output_text") ? "text"
                              : !strcmp(tn, "refusal") ? "refusal" : !strcmp(tn, "thinking") ? "thinking" : NULL;
            if (!key) rfail(r, "messages[%zu].content[%zu]: part type '%.40s' is not supported (text only)", mi, i, tn);
            text = dict_find_str(p->u.d, key);
            if (text && text->t == JT_NONE) text = NULL;
            if (!text) continue; /* vLLM skips text parts without text */
            if (text->t != JT_STR) rfail(r, "messages[%zu].content[%zu].%s must be a string", mi, i, key);
        } else {
            rfail(r, "messages[%zu].content[%zu] must be an object or a string", mi, i);
        }
        if (!first) ab_put(&r->a, &b, "\n", 1);
        ab_put(&r->a, &b, text->u.s->p, text->u.s->len);
        first = 0;
    }
    return str_of(r, b.p, b.len);
}

static struct jv chat_messages(struct rs *r, const struct jv *msgs, int parts)
{
    if (!msgs || !is_seq(msgs)) rfail(r, "'messages' must be a list");
    struct jv out = jv_list_n(&r->a, msgs->u.l->n, 0);
    for (size_t i = 0; i < msgs->u.l->n; i++) {
        const struct jv *m = &msgs->u.l->v[i];
        if (m->t != JT_DICT) rfail(r, "messages[%zu] must be an object", i);
        struct jv *role = dict_find_str(m->u.d, "role");
        if (!role || role->t != JT_STR) rfail(r, "messages[%zu].role must be a string", i);
        struct jv nm = jv_dict(&r->a, 0);
        dict_set(&r->a, nm.u.d, jv_str(&r->a, "role"), *role);
        const struct jv *c = dict_find_str(m->u.d, "content");
        const char *rs = role->u.s->p;
        /* vLLM gives a tool message's text parts as one string even in the list format */
        dict_set(&r->a, nm.u.d, jv_str(&r->a, "content"),
                 parts && strcmp(rs, "tool") ? content_parts(r, c && c->t != JT_NONE ? c : NULL, i)
                                             : content_text(r, c, i));
        if (!strcmp(rs, "assistant")) {
            struct jv *tc = req_field(m->u.d, "tool_calls");
            if (tc) {
                if (!is_seq(tc)) rfail(r, "messages[%zu].tool_calls must be a list", i);
                if (tc->u.l->n) { /* an empty list is dropped: the template takes its plain path */
                    struct jv calls = jv_list_n(&r->a, tc->u.l->n, 0);
                    for (size_t k = 0; k < tc->u.l->n; k++) {
                        const struct jv *c = &tc->u.l->v[k];
                        struct jv *fn = c->t == JT_DICT ? dict_find_str(c->u.d, "function") : NULL;
                        if (!fn || fn->t != JT_DICT) rfail(r, "messages[%zu].tool_calls[%zu].function must be an object", i, k);
                        struct jv nf = jv_dict(&r->a, 0), nc = jv_dict(&r->a, 0);
                        for (size_t q = 0; q < fn->u.d->n; q++) dict_set(&r->a, nf.u.d, fn->u.d->kv[q].k, fn->u.d->kv[q].v);
                        struct jv *args = dict_find_str(nf.u.d, "arguments");
                        struct jv parsed;
                        if (args && args->t == JT_STR) parsed = loads_or_empty(r, args);
                        else if (args && (args->t == JT_DICT || is_seq(args))) parsed = *args;
                        else parsed = jv_dict(&r->a, 0);
                        dict_set(&r->a, nf.u.d, jv_str(&r->a, "arguments"), parsed);
                        for (size_t q = 0; q < c->u.d->n; q++) dict_set(&r->a, nc.u.d, c->u.d->kv[q].k, c->u.d->kv[q].v);
                        dict_set(&r->a, nc.u.d, jv_str(&r->a, "function"), nf);
                        calls.u.l->v[k] = nc;
                    }
                    dict_set(&r->a, nm.u.d, jv_str(&r->a, "tool_calls"), calls);
                }
            }
            struct jv *reasoning = req_field(m->u.d, "reasoning");
            if (reasoning) {
                dict_set(&r->a, nm.u.d, jv_str(&r->a, "reasoning"), *reasoning);
                dict_set(&r->a, nm.u.d, jv_str(&r->a, "reasoning_content"), *reasoning);
            }
        } else if (!strcmp(rs, "tool")) {
            struct jv *id = dict_find_str(m->u.d, "tool_call_id");
            if (id) dict_set(&r->a, nm.u.d, jv_str(&r->a, "tool_call_id"), *id);
        }
        struct jv *name = dict_find_str(m->u.d, "name");
        if (name && name->t == JT_STR) dict_set(&r->a, nm.u.d, jv_str(&r->a, "name"), *name);
        struct jv *task = dict_find_str(m->u.d, "task");
        if (task && task->t == JT_STR) dict_set(&r->a, nm.u.d, jv_str(&r->a, "task"), *task);
        if (!strcmp(rs, "developer")) {
            struct jv *tools = dict_find_str(m->u.d, "tools");
            dict_set(&r->a, nm.u.d, jv_str(&r->a, "tools"), tools ? *tools : JV_NONE_V);
        }
        out.u.l->v[i] = nm;
    }
    return out;
}

/* vLLM's tool_dicts: each tool is its pydantic model dumped (ChatCompletionToolsParam with
 * FunctionDefinition, extra keys allowed): declared fields first in their order, a missing one
 * as None ("description": null), then the extra keys as given. */
static struct jv vllm_tools(struct rs *r, const struct jv *tools)
{
    if (!is_seq(tools)) return *tools;
    struct jv out = jv_list_n(&r->a, tools->u.l->n, 0);
    static const char *const tool_keys[] = {"type", "function"}, *const fn_keys[] = {"name", "description", "parameters"};
    for (size_t i = 0; i < tools->u.l->n; i++) {
        const struct jv *t = &tools->u.l->v[i];
        if (t->t != JT_DICT) rfail(r, "tools[%zu] must be an object", i);
        struct jv nt = jv_dict(&r->a, 0), nf = jv_dict(&r->a, 0);
        struct jv *fn = dict_find_str(t->u.d, "function"), *ty = dict_find_str(t->u.d, "type");
        if (!fn || fn->t != JT_DICT) rfail(r, "tools[%zu].function must be an object", i);
        for (int k = 0; k < 3; k++) {
            struct jv *v = dict_find_str(fn->u.d, fn_keys[k]);
            dict_set(&r->a, nf.u.d, jv_str(&r->a, fn_keys[k]), v ? *v : JV_NONE_V);
        }
        for (size_t k = 0; k < fn->u.d->n; k++) dict_set(&r->a, nf.u.d, fn->u.d->kv[k].k, fn->u.d->kv[k].v);
        dict_set(&r->a, nt.u.d, jv_str(&r->a, tool_keys[0]), ty ? *ty : jv_str(&r->a, "function"));
        dict_set(&r->a, nt.u.d, jv_str(&r->a, tool_keys[1]), nf);
        for (size_t k = 0; k < t->u.d->n; k++) {
            const struct jv *key = &t->u.d->kv[k].k;
            if (key->t == JT_STR && (!strcmp(key->u.s->p, "type") || !strcmp(key->u.s->p, "function"))) continue;
            dict_set(&r->a, nt.u.d, *key, t->u.d->kv[k].v);
        }
        out.u.l->v[i] = nt;
    }
    return out;
}

/* str.strip() as byte offsets. */
static void strip_range(const char *s, size_t n, size_t *b, size_t *e)
{
    size_t i = ws_run(s, n);
    *b = i;
    *e = i + rstrip_len(s + i, n - i);
}

int chat_template_render(const jinja_tmpl_t *t, const char *body, size_t len,
                         const struct chat_template_args *ca, char **out, size_t *out_len, char *err)
{
    *out = NULL;
    struct rs *volatile r = rs_new(ca->lim, ca->now);
    if (setjmp(r->je.jb)) {
        frames_rs = NULL;
        set_err(err, -1, "%s%s", r->je.raised ? "the chat template raised an error: " : "chat template: ", r->je.msg);
        afree(&r->a);
        free(r);
        return -1;
    }
    struct jv req = json_parse(&r->a, &r->je, body, len);
    if (req.t != JT_DICT) rfail(r, "the request body must be a JSON object");
    struct jv vars = jv_dict(&r->a, 0);
    const char *special[][2] = {{"bos_token", ca->bos_token}, {"eos_token", ca->eos_token},
                                {"unk_token", ca->unk_token}, {"pad_token", ca->pad_token}};
    for (int i = 0; i < 4; i++)
        if (special[i][1]) dict_set(&r->a, vars.u.d, jv_str(&r->a, special[i][0]), jv_str(&r->a, special[i][1]));
    struct jv msgs = chat_messages(r, dict_find_str(req.u.d, "messages"), t->content_list);
    dict_set(&r->a, vars.u.d, jv_str(&r->a, "messages"), msgs);
    struct jv *tools = req_field(req.u.d, "tools"), *docs = req_field(req.u.d, "documents");
    dict_set(&r->a, vars.u.d, jv_str(&r->a, "tools"), tools ? vllm_tools(r, tools) : JV_NONE_V);
    dict_set(&r->a, vars.u.d, jv_str(&r->a, "documents"), docs ? *docs : JV_NONE_V);
    int agp = ca->add_generation_prompt != 0, cont = ca->continue_final_message != 0;
    if (agp && cont)
        rfail(r, "Cannot set both `continue_final_message` and `add_generation_prompt` to True.");
    struct jv *kw = req_field(req.u.d, "chat_template_kwargs");
    if (kw) {
        static const char *const refused[] = {"chat_template", "tokenize", "messages", "conversation",
            "padding", "truncation", "max_length", "return_tensors", "return_dict",
            "return_assistant_tokens_mask", "tokenizer_kwargs", NULL};
        if (kw->t != JT_DICT) rfail(r, "'chat_template_kwargs' must be an object");
        for (size_t i = 0; i < kw->u.d->n; i++) {
            const struct jv *k = &kw->u.d->kv[i].k, *v = &kw->u.d->kv[i].v;
            for (int q = 0; refused[q]; q++)
                if (!strcmp(k->u.s->p, refused[q]))
                    rfail(r, "chat_template_kwargs: '%s' is not a template variable and cannot be set here", refused[q]);
            if (!strcmp(k->u.s->p, "continue_final_message")) { cont = jv_truthy(v); continue; }
            if (!strcmp(k->u.s->p, "add_generation_prompt")) agp = jv_truthy(v);
            dict_set(&r->a, vars.u.d, *k, *v);
        }
    }
    if (!dict_find_str(vars.u.d, "add_generation_prompt"))
        dict_set(&r->a, vars.u.d, jv_str(&r->a, "add_generation_prompt"), jv_bool(agp));
    if (agp && cont)
        rfail(r, "continue_final_message and add_generation_prompt are not compatible. Use continue_final_message "
                 "when you want the model to continue the final message, and add_generation_prompt when you want "
                 "to add a header that will prompt it to start a new assistant message instead.");
    r->vars = vars.u.d;
    struct abuf b = {0};
    render_root(r, t, &b);
    if (cont) { /* transformers' continue_final_message: cut after the final message's content */
        if (msgs.u.l->n == 0) rfail(r, "continue_final_message needs at least one message");
        const struct jv *last = &msgs.u.l->v[msgs.u.l->n - 1], *fc = dict_find_str(last->u.d, "content");
        if (is_seq(fc)) { /* transformers: the last part with a "text" */
            const struct jv *txt = NULL;
            for (size_t i = fc->u.l->n; i > 0 && !txt; i--)
                if (fc->u.l->v[i - 1].t == JT_DICT) txt = dict_find_str(fc->u.l->v[i - 1].u.d, "text");
            if (!txt || txt->t != JT_STR)
                rfail(r, "continue_final_message is set but we could not find any text to continue in the final message!");
            fc = txt;
        }
        const struct jstr *fm = fc->u.s;
        size_t sb, se;
        strip_range(fm->p, fm->len, &sb, &se);
        const char *hit = NULL;
        for (size_t i = b.len + 1; i > se - sb && !hit; i--)
            if (!memcmp(b.p + i - 1 - (se - sb), fm->p + sb, se - sb)) hit = b.p + i - 1 - (se - sb);
        if (!hit)
            rfail(r, "continue_final_message is set but the final message does not appear in the chat after "
                     "applying the chat template! This can happen if the chat template deletes portions of the "
                     "final message. Please verify the chat template and final message in your chat to ensure "
                     "they are compatible.");
        size_t loc = (size_t)(hit - b.p), lstripped = fm->len - sb;
        if (loc + lstripped <= b.len && lstripped == fm->len && !memcmp(b.p + loc, fm->p, fm->len))
            b.len = loc + lstripped; /* the template keeps the message's spacing */
        else
            b.len = loc + (se - sb); /* its trailing spacing was trimmed */
        b.p[b.len] = 0;
    }
    rs_finish(r, out, out_len, &b);
    afree(&r->a);
    free(r);
    return 0;
}
