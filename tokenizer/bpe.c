/* bpe.c - Hugging Face tokenizer.json with a byte-level BPE model (GPT-2, Llama-3, Qwen2/3),
 * encoding exactly as the `tokenizers` library does (the reference the tests compare with):
 *
 *   text ──added tokens (normalized: false)──▶ plain pieces ──normalizer (NFC ...)──▶
 *        ──added tokens (normalized: true)──▶ pieces ──pre-tokenizers (Split regex, ByteLevel)──▶
 *        pre-tokens ──BPE over their bytes (merges by rank)──▶ ids ──post-processor──▶ + BOS
 *
 * Byte level: ByteLevel maps every byte to a printable character ("Ġ" for a space) and the
 * vocabulary is written in that alphabet. The mapping is a bijection, so we key the encoder's
 * tables by the raw bytes instead (each vocabulary string is mapped back once at load) and
 * never build the mapped string. Decoding is the same table read backwards: each id's bytes.
 *
 * BPE over a pre-token: one symbol per byte in a linked list, a min-heap of mergeable adjacent
 * pairs keyed (rank, position); pop the lowest, skip it if either side changed since it was
 * pushed, merge, push the new pairs on both sides. That is the reference's algorithm (the
 * heap order makes ties go to the leftmost pair). O(k log k) for a pre-token of k bytes.
 * ignore_merges (Llama-3): a pre-token that is itself in the vocabulary is one id, unmerged.
 * A cache of pre-token results (short pre-tokens, a hashed direct-mapped table in 64 locked
 * shards) saves the merges for the words that repeat, i.e. most of them.
 *
 * Regexes: the reference uses Oniguruma; we use PCRE2 (JIT) on a translated pattern, since the
 * two differ in what the real patterns rely on: \s is Unicode White_Space in Oniguruma (PCRE2
 * adds U+180E), and (?i:'s|'t...) folds only ASCII there ("'ſ" is no contraction), so \s/\S
 * become explicit classes and a case-insensitive group of plain letters becomes [sS]-style
 * classes. \p{L}/\p{N} follow each library's Unicode tables (PCRE2 10.42: Unicode 14).
 *
 * Complexity: O(n * L) for added tokens (L = longest one), O(n) for the normalizer and for the
 * real split patterns (each match attempt scans a bounded distance past its match; a match
 * limit turns a pathological pattern into an error instead of a hang), O(n log n) for BPE.
 * A 1M-character run of one letter is one pre-token and costs one heap-BPE pass.
 *
 * Anything in the file that would change the ids and is not implemented here is refused at
 * load with the field's path, never ignored.
 *
 * Rejected: running the regex over byte-level-mapped text (the reference's order; equivalent
 * and slower); a per-thread cache (no clean point to free it when a thread or model goes). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "../common/common.h"
#include "tokenizer.h"
#include "tokenizer_internal.h"

#define JSON_MAX_BYTES (512u << 20) /* tokenizer.json files are ~10 MB; this only stops accidents */
#define MAX_STEPS 8                 /* pre-tokenizer steps after flattening Sequences */
#define REGEX_MATCH_LIMIT 100000000u
#define CACHE_SHARDS 64
#define CACHE_WAYS 1024 /* entries per shard, direct-mapped */
#define CACHE_KEY_MAX 24
#define CACHE_IDS_MAX 8

/* --------------------------------------------------------------------------------------------
 * Hash tables */

static uint64_t hash_bytes(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ v) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, s, n);
    h = (h ^ v) * 0x94D049BB133111EBull;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 32);
}

/* Strings (kept elsewhere, per id) -> id. slot = (hash tag << 32) | (id + 1); 0 = empty. */
struct strtab {
    uint64_t *slot;
    uint32_t mask;
    const char *const *arena; /* where the keys live: (*arena)[off[id]], len[id] bytes */
    const uint32_t *const *off, *const *len;
};

static void strtab_init(struct strtab *t, size_t n, const char *const *arena,
                        const uint32_t *const *off, const uint32_t *const *len)
{
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    t->slot = xcalloc(cap, sizeof *t->slot);
    t->mask = (uint32_t)(cap - 1);
    t->arena = arena;
    t->off = off;
    t->len = len;
}

static int32_t strtab_find_h(const struct strtab *t, const char *key, size_t n, uint64_t h)
{
    uint32_t tag = (uint32_t)(h >> 32), i = (uint32_t)h & t->mask;
    for (;; i = (i + 1) & t->mask) {
        uint64_t s = t->slot[i];
        if (!s) return -1;
        if ((uint32_t)(s >> 32) != tag) continue;
        uint32_t id = (uint32_t)s - 1;
        if ((*t->len)[id] == n && memcmp(*t->arena + (*t->off)[id], key, n) == 0) return (int32_t)id;
    }
}

static int32_t strtab_find(const struct strtab *t, const char *key, size_t n)
{
    return strtab_find_h(t, key, n, hash_bytes(key, n));
}

/* Insert id under its key; an existing entry with the same key is replaced (the later wins). */
static void strtab_put(struct strtab *t, uint32_t id)
{
    const char *key = *t->arena + (*t->off)[id];
    size_t n = (*t->len)[id];
    uint64_t h = hash_bytes(key, n);
    uint32_t tag = (uint32_t)(h >> 32), i = (uint32_t)h & t->mask;
    for (;; i = (i + 1) & t->mask) {
        uint64_t s = t->slot[i];
        if (s && (uint32_t)(s >> 32) == tag) {
            uint32_t old = (uint32_t)s - 1;
            if ((*t->len)[old] == n && memcmp(*t->arena + (*t->off)[old], key, n) == 0) break;
            continue;
        }
        if (!s) break;
    }
    t->slot[i] = ((uint64_t)tag << 32) | (id + 1);
}

/* (left id, right id) -> merge rank. */
struct mergetab {
    uint64_t *key; /* (left << 32) | right; UINT64_MAX = empty */
    int32_t *rank;
    uint32_t mask;
};

static inline uint32_t pair_hash(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xFF51AFD7ED558CCDull;
    k ^= k >> 33;
    return (uint32_t)k;
}

static inline int32_t merge_find(const struct mergetab *t, int32_t a, int32_t b)
{
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (uint32_t i = pair_hash(k) & t->mask;; i = (i + 1) & t->mask) {
        if (t->key[i] == k) return t->rank[i];
        if (t->key[i] == UINT64_MAX) return -1;
    }
}

/* A later merge of the same pair replaces the earlier one, as in the reference's map. */
static void merge_put(struct mergetab *t, int32_t a, int32_t b, int32_t rank)
{
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint32_t i = pair_hash(k) & t->mask;
    while (t->key[i] != UINT64_MAX && t->key[i] != k) i = (i + 1) & t->mask;
    t->key[i] = k;
    t->rank[i] = rank;
}

/* --------------------------------------------------------------------------------------------
 * The model */

enum split_behavior { SPLIT_ISOLATED, SPLIT_REMOVED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS };
enum step_kind { STEP_SPLIT, STEP_PREFIX_SPACE };

struct pretok_step {
    enum step_kind kind;
    pcre2_code *re;    /* STEP_SPLIT */
    enum split_behavior behavior;
    int invert;
};

struct cache_entry {
    uint32_t tag;     /* 0 = empty */
    uint8_t klen, nids;
    char key[CACHE_KEY_MAX];
    int32_t ids[CACHE_IDS_MAX];
};

struct cache_shard {
    pthread_mutex_t mu;
    struct cache_entry e[CACHE_WAYS];
};

struct bpe_model {
    int n_ids;              /* highest id + 1 */
    /* per id: the piece string (NUL-terminated) and its decoded bytes */
    char *pieces;           /* every piece string, NUL-terminated, back to back */
    uint32_t *piece_off, *piece_len; /* (n_ids); piece_off UINT32_MAX = hole */
    char *bytes;            /* every decoded byte string back to back */
    uint32_t *bytes_off, *bytes_len; /* (n_ids) */
    uint8_t *is_special;    /* (n_ids) 0, 1 special, 2 special but decoded (see load_added) */
    uint8_t *is_added;      /* (n_ids) */

    struct strtab vocab;    /* model vocabulary: piece -> id */
    struct strtab added;    /* added tokens: content -> id (looked up first) */
    struct strtab enc;      /* model vocabulary by decoded bytes (byte-alphabet pieces only) */
    int32_t byte_tok[256];  /* the id of each single byte, -1 if none */
    struct mergetab merges;
    int32_t *merge_new;     /* (n_merges) rank -> id of the merged token */
    int n_merges;
    int ignore_merges;
    int32_t unk_id;         /* -1: characters not in the vocabulary are dropped */
    int fuse_unk, byte_fallback;

    struct added_set *added_raw;  /* normalized: false (matched in the raw text) */
    struct added_set *added_norm; /* normalized: true (matched in normalized text) */
    utf8proc_option_t norm[4];    /* normalizers in order; 0 ends the list */
    int n_norm;
    struct pretok_step steps[MAX_STEPS];
    int n_steps;
    int32_t *prefix, *suffix;     /* post-processor ids around the text */
    int n_prefix, n_suffix;

    struct cache_shard *cache;    /* (CACHE_SHARDS) */
};

/* --------------------------------------------------------------------------------------------
 * Byte-level alphabet (GPT-2's bytes_to_unicode) */

static void byte_alphabet(uint32_t cp_of_byte[256])
{
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        cp_of_byte[b] = printable ? (uint32_t)b : 256u + (uint32_t)n++;
    }
}

/* Decode a byte-alphabet string into bytes (out has room for len bytes): the byte count, or
 * -1 when some character is not in the alphabet. */
static int from_byte_alphabet(const int16_t *byte_of_cp, const char *s, size_t len, char *out)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    int n = 0;
    while (i < len) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(p + i, (utf8proc_ssize_t)(len - i), &cp);
        if (k <= 0 || cp < 0 || cp >= 512 || byte_of_cp[cp] < 0) return -1;
        out[n++] = (char)byte_of_cp[cp];
        i += (size_t)k;
    }
    return n;
}

/* --------------------------------------------------------------------------------------------
 * Regex translation (Oniguruma semantics on PCRE2) */

#define WS_CLASS "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

struct sbuf {
    char *p;
    size_t len, cap;
};

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = 2 * (b->len + n + 1);
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}
static void sb_puts(struct sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* A (?i: group of plain text (letters, digits, ' and |) becomes ASCII case classes. Returns the
 * index after the group's ')' or 0 when the group is not that simple. */
static size_t caseless_group(const char *re, size_t i, struct sbuf *out)
{
    size_t j = i + 4; /* past "(?i:" */
    for (; re[j] && re[j] != ')'; j++) {
        char c = re[j];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '\'' || c == '|' || c == ' '))
            return 0;
    }
    if (re[j] != ')') return 0;
    sb_puts(out, "(?:");
    for (size_t k = i + 4; k < j; k++) {
        char c = re[k], lo = c | 0x20;
        if (lo >= 'a' && lo <= 'z') {
            char cls[5] = {'[', lo, (char)(lo - 32), ']', 0};
            sb_puts(out, cls);
        } else {
            sb_put(out, &c, 1);
        }
    }
    sb_puts(out, ")");
    return j + 1;
}

static int regex_translate(const char *re, struct sbuf *out, const char *where, char *err)
{
    int in_class = 0;
    for (size_t i = 0; re[i];) {
        char c = re[i];
        if (c == '\\') {
            char d = re[i + 1];
            if (!d) return set_err(err, -1, "%s: the pattern ends in a backslash", where);
            if (d == 's') sb_puts(out, in_class ? WS_CLASS : "[" WS_CLASS "]");
            else if (d == 'S' && !in_class) sb_puts(out, "[^" WS_CLASS "]");
            else if (d == 'S') return set_err(err, -1, "%s: \\S inside a character class is not supported", where);
            else if (d == 'h') sb_puts(out, in_class ? "0-9a-fA-F" : "[0-9a-fA-F]"); /* Oniguruma: hex digit */
            else if (d == 'H' && !in_class) sb_puts(out, "[^0-9a-fA-F]");
            else if (d == 'H') return set_err(err, -1, "%s: \\H inside a character class is not supported", where);
            else sb_put(out, re + i, 2);
            i += 2;
            continue;
        }
        if (in_class) {
            if (c == '[' && re[i + 1] != ':')
                return set_err(err, -1, "%s: nested character classes are not supported", where);
            if (c == ']') in_class = 0;
            sb_put(out, &c, 1);
            i++;
            continue;
        }
        if (c == '[') {
            in_class = 1;
            sb_put(out, &c, 1);
            i++;
            if (re[i] == '^') sb_put(out, re + i++, 1);
            if (re[i] == ']') sb_put(out, re + i++, 1); /* a leading ] is literal */
            continue;
        }
        if (c == '(' && strncmp(re + i, "(?i:", 4) == 0) {
            size_t next = caseless_group(re, i, out);
            if (next) {
                i = next;
                continue;
            }
        }
        sb_put(out, &c, 1);
        i++;
    }
    if (in_class) return set_err(err, -1, "%s: unterminated character class", where);
    return 0;
}

static int regex_compile(pcre2_code **out, const char *pattern, int literal, const char *where,
                         char *err)
{
    *out = NULL;
    struct sbuf b = {0};
    uint32_t opts = PCRE2_UTF | PCRE2_UCP;
    if (literal) {
        sb_puts(&b, pattern);
        opts = PCRE2_UTF | PCRE2_LITERAL; /* PCRE2_LITERAL allows no other options we use */
    } else {
        opts |= PCRE2_MULTILINE; /* Oniguruma's ^ and $ are line anchors */
        if (regex_translate(pattern, &b, where, err) < 0) {
            free(b.p);
            return -1;
        }
    }
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)(b.p ? b.p : ""), PCRE2_ZERO_TERMINATED, opts, &code, &off, NULL);
    free(b.p);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        return set_err(err, -1, "%s: the pattern does not compile (%s at offset %zu)", where,
                       (const char *)msg, (size_t)off);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* without JIT, pcre2_match interprets */
    *out = re;
    return 0;
}

/* --------------------------------------------------------------------------------------------
 * Loading tokenizer.json */

struct loader {
    const char *path;
    char *err;
    cJSON *root;
    struct bpe_model *m;
    int16_t byte_of_cp[512];
    size_t piece_cap, piece_used, bytes_cap, bytes_used;
    int n_vocab;      /* entries in model.vocab */
    int max_vocab_id; /* the highest id in model.vocab */
};

static int field_err(struct loader *L, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int field_err(struct loader *L, const char *field, const char *fmt, ...)
{
    char msg[ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return set_err(L->err, -1, "%s: field '%s': %s", L->path, field, msg);
}

static const cJSON *get(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

/* A boolean field: absent or null gives dflt. */
static int get_bool(struct loader *L, const cJSON *o, const char *key, const char *where, int dflt, int *out)
{
    const cJSON *v = get(o, key);
    if (!v) {
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsBool(v)) return field_err(L, where, "expected true or false");
    *out = cJSON_IsTrue(v);
    return 0;
}

static const char *type_of(const cJSON *o)
{
    const cJSON *t = get(o, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

static void put_piece(struct loader *L, int32_t id, const char *s, size_t n)
{
    struct bpe_model *m = L->m;
    if (L->piece_used + n + 1 > L->piece_cap) {
        L->piece_cap = 2 * (L->piece_used + n + 1);
        m->pieces = xrealloc(m->pieces, L->piece_cap);
    }
    memcpy(m->pieces + L->piece_used, s, n);
    m->pieces[L->piece_used + n] = '\0';
    m->piece_off[id] = (uint32_t)L->piece_used;
    m->piece_len[id] = (uint32_t)n;
    L->piece_used += n + 1;
}

/* The decoded bytes of id: the ByteLevel decoder maps a token whose every character is in the
 * alphabet to those bytes, and leaves any other token as its UTF-8 text. Returns 1 when the
 * token was in the alphabet. */
static int put_bytes(struct loader *L, int32_t id, const char *s, size_t n)
{
    struct bpe_model *m = L->m;
    if (L->bytes_used + n > L->bytes_cap) {
        L->bytes_cap = 2 * (L->bytes_used + n) + 64;
        m->bytes = xrealloc(m->bytes, L->bytes_cap);
    }
    int k = from_byte_alphabet(L->byte_of_cp, s, n, m->bytes + L->bytes_used);
    if (k < 0) memcpy(m->bytes + L->bytes_used, s, n);
    m->bytes_off[id] = (uint32_t)L->bytes_used;
    m->bytes_len[id] = k < 0 ? (uint32_t)n : (uint32_t)k;
    L->bytes_used += m->bytes_len[id];
    return k >= 0;
}

static int load_normalizer(struct loader *L, const cJSON *n, const char *where)
{
    struct bpe_model *m = L->m;
    if (!n) return 0;
    const char *t = type_of(n);
    char sub[96];
    if (t && !strcmp(t, "Sequence")) {
        const cJSON *list = get(n, "normalizers"), *it;
        if (!cJSON_IsArray(list)) return field_err(L, where, "a Sequence needs a 'normalizers' list");
        int i = 0;
        cJSON_ArrayForEach(it, list) {
            snprintf(sub, sizeof sub, "%s.normalizers[%d]", where, i++);
            if (load_normalizer(L, it, sub) < 0) return -1;
        }
        return 0;
    }
    utf8proc_option_t o = 0;
    if (t && !strcmp(t, "NFC")) o = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
    else if (t && !strcmp(t, "NFD")) o = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE;
    else if (t && !strcmp(t, "NFKC")) o = UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
    else if (t && !strcmp(t, "NFKD")) o = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
    snprintf(sub, sizeof sub, "%s.type", where);
    if (!o)
        return field_err(L, sub, "normalizer '%s' is not supported (supported: NFC, NFD, NFKC, NFKD, Sequence)",
                         t ? t : "(missing)");
    if (m->n_norm == (int)(sizeof m->norm / sizeof *m->norm))
        return field_err(L, where, "more than %d normalizers", m->n_norm);
    m->norm[m->n_norm++] = o;
    return 0;
}

static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int add_step(struct loader *L, const char *where, struct pretok_step s)
{
    struct bpe_model *m = L->m;
    if (m->n_steps == MAX_STEPS) {
        if (s.re) pcre2_code_free(s.re);
        return field_err(L, where, "more than %d pre-tokenizer steps", MAX_STEPS);
    }
    m->steps[m->n_steps++] = s;
    return 0;
}

/* Flatten the pre-tokenizer into steps; *byte_level counts ByteLevel steps (exactly one, last). */
static int load_pretok(struct loader *L, const cJSON *p, const char *where, int *byte_level)
{
    const char *t = type_of(p);
    char sub[128];
    if (*byte_level)
        return field_err(L, where, "a pre-tokenizer after ByteLevel is not supported");
    if (t && !strcmp(t, "Sequence")) {
        const cJSON *list = get(p, "pretokenizers"), *it;
        if (!cJSON_IsArray(list)) return field_err(L, where, "a Sequence needs a 'pretokenizers' list");
        int i = 0;
        cJSON_ArrayForEach(it, list) {
            snprintf(sub, sizeof sub, "%s.pretokenizers[%d]", where, i++);
            if (load_pretok(L, it, sub, byte_level) < 0) return -1;
        }
        return 0;
    }
    if (t && !strcmp(t, "Split")) {
        struct pretok_step s = {.kind = STEP_SPLIT};
        const cJSON *pat = get(p, "pattern"), *beh = get(p, "behavior");
        const cJSON *rx = pat ? get(pat, "Regex") : NULL, *lit = pat ? get(pat, "String") : NULL;
        snprintf(sub, sizeof sub, "%s.pattern", where);
        if (!cJSON_IsString(rx) && !cJSON_IsString(lit))
            return field_err(L, sub, "expected {\"Regex\": ...} or {\"String\": ...}");
        snprintf(sub, sizeof sub, "%s.behavior", where);
        const char *b = cJSON_IsString(beh) ? beh->valuestring : "";
        if (!strcmp(b, "Isolated")) s.behavior = SPLIT_ISOLATED;
        else if (!strcmp(b, "Removed")) s.behavior = SPLIT_REMOVED;
        else if (!strcmp(b, "MergedWithPrevious")) s.behavior = SPLIT_MERGED_PREV;
        else if (!strcmp(b, "MergedWithNext")) s.behavior = SPLIT_MERGED_NEXT;
        else if (!strcmp(b, "Contiguous")) s.behavior = SPLIT_CONTIGUOUS;
        else return field_err(L, sub, "unknown split behavior '%s'", b);
        snprintf(sub, sizeof sub, "%s.invert", where);
        if (get_bool(L, p, "invert", sub, 0, &s.invert) < 0) return -1;
        char what[ERR_LEN];
        snprintf(what, sizeof what, "%s: field '%s.pattern'", L->path, where);
        if (regex_compile(&s.re, cJSON_IsString(rx) ? rx->valuestring : lit->valuestring,
                          !cJSON_IsString(rx), what, L->err) < 0)
            return -1;
        return add_step(L, where, s);
    }
    if (t && !strcmp(t, "ByteLevel")) {
        int prefix = 0, use_regex = 0;
        snprintf(sub, sizeof sub, "%s.add_prefix_space", where);
        if (get_bool(L, p, "add_prefix_space", sub, 1, &prefix) < 0) return -1;
        snprintf(sub, sizeof sub, "%s.use_regex", where);
        if (get_bool(L, p, "use_regex", sub, 1, &use_regex) < 0) return -1;
        /* trim_offsets only moves offsets, which we do not report */
        if (prefix && add_step(L, where, (struct pretok_step){.kind = STEP_PREFIX_SPACE}) < 0) return -1;
        if (use_regex) {
            struct pretok_step s = {.kind = STEP_SPLIT, .behavior = SPLIT_ISOLATED};
            if (regex_compile(&s.re, GPT2_PATTERN, 0, "ByteLevel", L->err) < 0) return -1;
            if (add_step(L, where, s) < 0) return -1;
        }
        (*byte_level)++;
        return 0;
    }
    snprintf(sub, sizeof sub, "%s.type", where);
    return field_err(L, sub, "pre-tokenizer '%s' is not supported (supported: Split, ByteLevel, Sequence)",
                     t ? t : "(missing)");
}

/* The decoder must be the ByteLevel decoder (possibly in a Sequence of one). */
static int load_decoder(struct loader *L, const cJSON *d, const char *where)
{
    char sub[96];
    if (!d) return field_err(L, where, "a tokenizer without a decoder joins tokens with spaces; not supported");
    const char *t = type_of(d);
    if (t && !strcmp(t, "Sequence")) {
        const cJSON *list = get(d, "decoders");
        if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) != 1)
            return field_err(L, where, "only a Sequence of one ByteLevel decoder is supported");
        snprintf(sub, sizeof sub, "%s.decoders[0]", where);
        return load_decoder(L, cJSON_GetArrayItem(list, 0), sub);
    }
    if (t && !strcmp(t, "ByteLevel")) return 0;
    snprintf(sub, sizeof sub, "%s.type", where);
    return field_err(L, sub, "decoder '%s' is not supported (supported: ByteLevel)", t ? t : "(missing)");
}

static void push_id(int32_t **v, int *n, int32_t id)
{
    *v = xrealloc(*v, (size_t)(*n + 1) * sizeof **v);
    (*v)[(*n)++] = id;
}

static int load_template(struct loader *L, const cJSON *p, const char *where)
{
    struct bpe_model *m = L->m;
    char sub[128];
    const cJSON *single = get(p, "single"), *specials = get(p, "special_tokens"), *it;
    snprintf(sub, sizeof sub, "%s.single", where);
    if (!cJSON_IsArray(single)) return field_err(L, sub, "expected a list");
    int seen_seq = 0, i = 0;
    cJSON_ArrayForEach(it, single) {
        snprintf(sub, sizeof sub, "%s.single[%d]", where, i++);
        const cJSON *sp = get(it, "SpecialToken"), *seq = get(it, "Sequence");
        if (seq) {
            const cJSON *id = get(seq, "id");
            if (seen_seq || !cJSON_IsString(id) || strcmp(id->valuestring, "A"))
                return field_err(L, sub, "a single-sequence template has one Sequence \"A\"");
            seen_seq = 1;
            continue;
        }
        const cJSON *name = sp ? get(sp, "id") : NULL;
        if (!cJSON_IsString(name)) return field_err(L, sub, "expected a SpecialToken or a Sequence");
        const cJSON *def = specials ? get(specials, name->valuestring) : NULL;
        const cJSON *ids = def ? get(def, "ids") : NULL, *x;
        if (!cJSON_IsArray(ids))
            return field_err(L, sub, "special token '%s' is not in %s.special_tokens", name->valuestring, where);
        cJSON_ArrayForEach(x, ids) {
            if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble >= m->n_ids)
                return field_err(L, sub, "special token '%s' has an id outside the vocabulary", name->valuestring);
            if (seen_seq) push_id(&m->suffix, &m->n_suffix, (int32_t)x->valuedouble);
            else push_id(&m->prefix, &m->n_prefix, (int32_t)x->valuedouble);
        }
    }
    if (!seen_seq) return field_err(L, where, "the single-sequence template has no Sequence \"A\"");
    return 0;
}

static int load_post(struct loader *L, const cJSON *p, const char *where)
{
    char sub[96];
    if (!p) return 0;
    const char *t = type_of(p);
    if (t && !strcmp(t, "Sequence")) {
        const cJSON *list = get(p, "processors"), *it;
        if (!cJSON_IsArray(list)) return field_err(L, where, "a Sequence needs a 'processors' list");
        int i = 0;
        cJSON_ArrayForEach(it, list) {
            snprintf(sub, sizeof sub, "%s.processors[%d]", where, i++);
            if (load_post(L, it, sub) < 0) return -1;
        }
        return 0;
    }
    if (t && !strcmp(t, "ByteLevel")) return 0; /* offsets only */
    if (t && !strcmp(t, "TemplateProcessing")) {
        if (L->m->n_prefix || L->m->n_suffix)
            return field_err(L, where, "more than one TemplateProcessing");
        return load_template(L, p, where);
    }
    snprintf(sub, sizeof sub, "%s.type", where);
    return field_err(L, sub, "post-processor '%s' is not supported (supported: TemplateProcessing, ByteLevel, Sequence)",
                     t ? t : "(missing)");
}

/* Stable sort of a run of combining marks by canonical combining class: Unicode's canonical
 * ordering. Counting sort, O(k): utf8proc's own reordering is a bubble sort, quadratic on a
 * long run of alternating classes (U+0301 U+0316 ...), which text can be made of. */
static void sort_marks(utf8proc_int32_t *cp, size_t k, utf8proc_int32_t *tmp)
{
    size_t count[257] = {0};
    for (size_t i = 0; i < k; i++) count[utf8proc_get_property(cp[i])->combining_class + 1]++;
    for (int c = 1; c < 257; c++) count[c] += count[c - 1];
    for (size_t i = 0; i < k; i++) tmp[count[utf8proc_get_property(cp[i])->combining_class]++] = cp[i];
    memcpy(cp, tmp, k * sizeof *cp);
}

/* One normalization form (utf8proc option bits) of valid UTF-8 s: decompose every character,
 * reorder the marks, compose (NFC/NFKC), re-encode. *out xmalloc'd. */
static int normalize_form(const char *s, size_t n, utf8proc_option_t opt, char **out, size_t *out_len)
{
    size_t cap = n + 16, len = 0;
    utf8proc_int32_t *cp = xmalloc(cap * sizeof *cp);
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(p + i, (utf8proc_ssize_t)(n - i), &c);
        if (k <= 0) {
            free(cp);
            return -1;
        }
        i += (size_t)k;
        for (;;) {
            int boundclass = 0;
            utf8proc_ssize_t r = utf8proc_decompose_char(c, cp + len, (utf8proc_ssize_t)(cap - len), opt, &boundclass);
            if (r < 0) {
                free(cp);
                return -1;
            }
            if (len + (size_t)r <= cap) {
                len += (size_t)r;
                break;
            }
            cap = 2 * (len + (size_t)r);
            cp = xrealloc(cp, cap * sizeof *cp);
        }
    }
    utf8proc_int32_t *tmp = NULL;
    for (size_t i = 0; i < len;) {
        if (!utf8proc_get_property(cp[i])->combining_class) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < len && utf8proc_get_property(cp[j])->combining_class) j++;
        if (j - i > 1) {
            if (!tmp) tmp = xmalloc(len * sizeof *tmp);
            sort_marks(cp + i, j - i, tmp);
        }
        i = j;
    }
    free(tmp);
    if (opt & UTF8PROC_COMPOSE) {
        utf8proc_ssize_t r = utf8proc_normalize_utf32(cp, (utf8proc_ssize_t)len, opt & (UTF8PROC_STABLE | UTF8PROC_COMPOSE));
        if (r < 0) {
            free(cp);
            return -1;
        }
        len = (size_t)r;
    }
    char *o = xmalloc(4 * len + 1);
    size_t ol = 0;
    for (size_t i = 0; i < len; i++) ol += (size_t)utf8proc_encode_char(cp[i], (utf8proc_uint8_t *)o + ol);
    o[ol] = '\0';
    free(cp);
    *out = o;
    *out_len = ol;
    return 0;
}

/* The normalizers over s into a malloc'd string (*out NULL when s is unchanged). O(n). */
static int normalize(const struct bpe_model *m, const char *s, size_t n, char **out, size_t *out_len)
{
    *out = NULL;
    int only_low = 1; /* every code point < U+0300 is its own NFC (and NFC is the usual one) */
    for (size_t i = 0; i < n && only_low; i++) only_low = (unsigned char)s[i] < 0xCC;
    if (only_low && m->n_norm == 1 && m->norm[0] == (UTF8PROC_STABLE | UTF8PROC_COMPOSE)) return 0;
    const char *cur = s;
    size_t cur_len = n;
    char *owned = NULL;
    for (int k = 0; k < m->n_norm; k++) {
        char *next;
        size_t next_len;
        if (normalize_form(cur, cur_len, m->norm[k], &next, &next_len) < 0) {
            free(owned);
            return -1;
        }
        free(owned);
        owned = next;
        cur = owned;
        cur_len = next_len;
    }
    if (cur_len == n && memcmp(cur, s, n) == 0) {
        free(owned);
        return 0;
    }
    *out = owned;
    *out_len = cur_len;
    return 0;
}

/* Added tokens get their ids as the reference assigns them, whatever the file says (it only
 * warns): the model's id when the content is in model.vocab, the id of an earlier entry with the
 * same content, else the next free id counting from the vocabulary's size. Real files agree with
 * that; a file that does not gets a warning here too. */
static int load_added(struct loader *L, const cJSON *list, int n_vocab)
{
    struct bpe_model *m = L->m;
    const cJSON *it;
    int n = cJSON_GetArraySize(list), i = -1, n_toks = 0, rc = 0, max_id = L->max_vocab_id;
    int32_t next_id = n_vocab;
    struct added_tok *toks = xcalloc((size_t)n + 1, sizeof *toks);
    uint8_t *normed = xcalloc((size_t)n + 1, 1);
    char **owned = xcalloc((size_t)n + 1, sizeof *owned);
    int *slot_of = xmalloc((size_t)m->n_ids * sizeof *slot_of); /* id -> index in toks */
    memset(slot_of, 0xFF, (size_t)m->n_ids * sizeof *slot_of);
    strtab_init(&m->added, (size_t)n, (const char *const *)&m->pieces,
                (const uint32_t *const *)&m->piece_off, (const uint32_t *const *)&m->piece_len);
    cJSON_ArrayForEach(it, list) {
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%d]", ++i);
        const cJSON *id = get(it, "id"), *content = get(it, "content");
        if (!cJSON_IsNumber(id) || !cJSON_IsString(content)) {
            rc = field_err(L, where, "expected an object with an integer 'id' and a string 'content'");
            break;
        }
        int special = 0, single = 0, lstrip = 0, rstrip = 0, normalized = 0;
        if (get_bool(L, it, "special", where, 0, &special) < 0 ||
            get_bool(L, it, "single_word", where, 0, &single) < 0 ||
            get_bool(L, it, "lstrip", where, 0, &lstrip) < 0 ||
            get_bool(L, it, "rstrip", where, 0, &rstrip) < 0 ||
            get_bool(L, it, "normalized", where, !special, &normalized) < 0) {
            rc = -1;
            break;
        }
        const char *c = content->valuestring;
        size_t clen = strlen(c);
        if (clen == 0) continue; /* the reference ignores empty tokens */
        int32_t tid = strtab_find(&m->added, c, clen);
        if (tid < 0) tid = strtab_find(&m->vocab, c, clen);
        if (tid < 0) {
            if (next_id >= m->n_ids) CHECK(0, "added token ids beyond the bound computed at load");
            tid = next_id++;
        }
        if ((double)tid != id->valuedouble)
            LOG_W("%s: %s \"%.60s\" has id %.0f in the file but gets %d (as Hugging Face assigns it)",
                  L->path, where, c, id->valuedouble, (int)tid);
        /* normalized tokens match (and decode as) their normalized form */
        const char *form = c;
        size_t form_len = clen;
        if (normalized && m->n_norm) {
            if (!utf8_valid(c, clen) || normalize(m, c, clen, &owned[i], &form_len) < 0) {
                rc = field_err(L, where, "content is not valid UTF-8");
                break;
            }
            if (owned[i]) form = owned[i];
        }
        put_piece(L, tid, c, clen);
        put_bytes(L, tid, form, form_len);
        strtab_put(&m->added, (uint32_t)tid);
        /* 2: special, but decode keeps it: the reference skips a special token by its content,
         * and looks up the normalized form it decodes to (so "Ⅸ" -> "IX" stays) */
        m->is_special[tid] = (uint8_t)(special ? (form == c ? 1 : 2) : 0);
        m->is_added[tid] = 1;
        if (tid > max_id) max_id = tid;
        int k = slot_of[tid] >= 0 ? slot_of[tid] : (slot_of[tid] = n_toks++); /* a repeat replaces */
        toks[k] = (struct added_tok){form, form_len, tid, (uint8_t)special, (uint8_t)single,
                                     (uint8_t)lstrip, (uint8_t)rstrip};
        normed[k] = (uint8_t)normalized;
    }
    if (rc == 0) {
        struct added_tok *raw = xcalloc((size_t)n_toks + 1, sizeof *raw), *nrm = xcalloc((size_t)n_toks + 1, sizeof *nrm);
        int n_raw = 0, n_norm = 0;
        for (int k = 0; k < n_toks; k++) {
            if (normed[k]) nrm[n_norm++] = toks[k];
            else raw[n_raw++] = toks[k];
        }
        m->added_raw = n_raw ? added_set_new(raw, n_raw) : NULL;
        m->added_norm = n_norm ? added_set_new(nrm, n_norm) : NULL;
        free(raw);
        free(nrm);
        m->n_ids = max_id + 1;
    }
    for (int k = 0; k <= n; k++) free(owned[k]);
    free(owned);
    free(toks);
    free(normed);
    free(slot_of);
    return rc;
}

/* The model's vocabulary and merges. */
static int load_bpe(struct loader *L, const cJSON *model)
{
    struct bpe_model *m = L->m;
    const cJSON *vocab = get(model, "vocab"), *merges = get(model, "merges"), *it;
    const char *t = type_of(model);
    if (!t || strcmp(t, "BPE"))
        return field_err(L, "model.type", "model '%s' is not supported (supported: BPE)", t ? t : "(missing)");
    if (!cJSON_IsObject(vocab)) return field_err(L, "model.vocab", "expected an object");
    if (!cJSON_IsArray(merges)) return field_err(L, "model.merges", "expected a list");
    const cJSON *v;
    if ((v = get(model, "dropout")) && !(cJSON_IsNumber(v) && v->valuedouble == 0))
        return field_err(L, "model.dropout", "BPE dropout is random; not supported");
    const char *affix[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int k = 0; k < 2; k++) {
        char f[64];
        snprintf(f, sizeof f, "model.%s", affix[k]);
        if ((v = get(model, affix[k])) && !(cJSON_IsString(v) && v->valuestring[0] == '\0'))
            return field_err(L, f, "a non-empty affix is not supported");
    }
    if (get_bool(L, model, "ignore_merges", "model.ignore_merges", 0, &m->ignore_merges) < 0 ||
        get_bool(L, model, "fuse_unk", "model.fuse_unk", 0, &m->fuse_unk) < 0 ||
        get_bool(L, model, "byte_fallback", "model.byte_fallback", 0, &m->byte_fallback) < 0)
        return -1;

    /* ids first: the table sizes need the highest id */
    int max_id = -1;
    cJSON_ArrayForEach(it, vocab) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > INT_MAX / 2 ||
            it->valuedouble != (double)(int)it->valuedouble)
            return field_err(L, "model.vocab", "the id of \"%.60s\" is not a non-negative integer", it->string);
        if ((int)it->valuedouble > max_id) max_id = (int)it->valuedouble;
    }
    const cJSON *added = get(L->root, "added_tokens");
    if (added && !cJSON_IsArray(added)) return field_err(L, "added_tokens", "expected a list");
    if (max_id < 0) return field_err(L, "model.vocab", "the vocabulary is empty");
    /* room for every added token past the vocabulary; load_added trims n_ids */
    int n_vocab = cJSON_GetArraySize(vocab), n_added = cJSON_GetArraySize(added);
    int n = m->n_ids = (max_id + 1 > n_vocab ? max_id + 1 : n_vocab) + n_added;
    L->n_vocab = n_vocab;
    L->max_vocab_id = max_id;
    m->piece_off = xmalloc((size_t)n * sizeof *m->piece_off);
    memset(m->piece_off, 0xFF, (size_t)n * sizeof *m->piece_off);
    m->piece_len = xcalloc((size_t)n, sizeof *m->piece_len);
    m->bytes_off = xcalloc((size_t)n, sizeof *m->bytes_off);
    m->bytes_len = xcalloc((size_t)n, sizeof *m->bytes_len);
    m->is_special = xcalloc((size_t)n, 1);
    m->is_added = xcalloc((size_t)n, 1);
    uint8_t *in_alphabet = xcalloc((size_t)n, 1);
    strtab_init(&m->vocab, (size_t)n_vocab, (const char *const *)&m->pieces,
                (const uint32_t *const *)&m->piece_off, (const uint32_t *const *)&m->piece_len);
    strtab_init(&m->enc, (size_t)n_vocab, (const char *const *)&m->bytes,
                (const uint32_t *const *)&m->bytes_off, (const uint32_t *const *)&m->bytes_len);
    cJSON_ArrayForEach(it, vocab) {
        int32_t id = (int32_t)it->valuedouble;
        if (m->piece_off[id] != UINT32_MAX) {
            free(in_alphabet);
            return field_err(L, "model.vocab", "id %d is given to both \"%.60s\" and \"%.60s\"", (int)id,
                             m->pieces + m->piece_off[id], it->string);
        }
        put_piece(L, id, it->string, strlen(it->string));
        in_alphabet[id] = (uint8_t)put_bytes(L, id, it->string, strlen(it->string));
    }
    /* tables last: the arenas may have moved while growing */
    cJSON_ArrayForEach(it, vocab) {
        int32_t id = (int32_t)it->valuedouble;
        strtab_put(&m->vocab, (uint32_t)id);
        if (in_alphabet[id]) strtab_put(&m->enc, (uint32_t)id);
    }
    free(in_alphabet);
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        m->byte_tok[b] = strtab_find(&m->enc, &c, 1);
    }
    m->unk_id = -1;
    if ((v = get(model, "unk_token"))) {
        if (!cJSON_IsString(v)) return field_err(L, "model.unk_token", "expected a string");
        m->unk_id = strtab_find(&m->vocab, v->valuestring, strlen(v->valuestring));
        if (m->unk_id < 0)
            return field_err(L, "model.unk_token", "\"%.60s\" is not in model.vocab", v->valuestring);
    }

    /* merges: "a b" strings or [a, b] pairs; rank = position (after "#version" lines) */
    int n_merges = cJSON_GetArraySize(merges);
    size_t cap = 16;
    while (cap < 2 * (size_t)n_merges) cap <<= 1;
    m->merges.key = xmalloc(cap * sizeof *m->merges.key);
    memset(m->merges.key, 0xFF, cap * sizeof *m->merges.key);
    m->merges.rank = xmalloc(cap * sizeof *m->merges.rank);
    m->merges.mask = (uint32_t)(cap - 1);
    m->merge_new = xmalloc(((size_t)n_merges + 1) * sizeof *m->merge_new);
    char *buf = NULL;
    size_t buf_cap = 0;
    int i = 0, rank = 0, rc = 0;
    cJSON_ArrayForEach(it, merges) {
        char where[64];
        snprintf(where, sizeof where, "model.merges[%d]", i++);
        const char *a, *b;
        size_t la, lb;
        if (cJSON_IsString(it)) {
            const char *s = it->valuestring, *sp = strchr(s, ' ');
            if (!strncmp(s, "#version", 8)) continue;
            if (!sp || strchr(sp + 1, ' ')) {
                rc = field_err(L, where, "\"%.60s\" is not two tokens separated by one space", s);
                break;
            }
            a = s;
            la = (size_t)(sp - s);
            b = sp + 1;
            lb = strlen(b);
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 0)) && cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
            a = cJSON_GetArrayItem(it, 0)->valuestring;
            b = cJSON_GetArrayItem(it, 1)->valuestring;
            la = strlen(a);
            lb = strlen(b);
        } else {
            rc = field_err(L, where, "expected \"a b\" or [\"a\", \"b\"]");
            break;
        }
        if (la + lb > buf_cap) buf = xrealloc(buf, buf_cap = 2 * (la + lb) + 16);
        memcpy(buf, a, la);
        memcpy(buf + la, b, lb);
        int32_t ia = strtab_find(&m->vocab, a, la), ib = strtab_find(&m->vocab, b, lb);
        int32_t inew = strtab_find(&m->vocab, buf, la + lb);
        if (ia < 0 || ib < 0 || inew < 0) {
            rc = field_err(L, where, "\"%.*s\" is not in model.vocab",
                           (int)(ia < 0 ? la : ib < 0 ? lb : la + lb), ia < 0 ? a : ib < 0 ? b : buf);
            break;
        }
        merge_put(&m->merges, ia, ib, rank);
        m->merge_new[rank++] = inew;
    }
    free(buf);
    m->n_merges = rank;
    return rc;
}

/* Llama-2/Mistral's tokenizer.json: Metaspace or Prepend + Replace, byte fallback. */
static int looks_sentencepiece(const cJSON *root)
{
    const cJSON *model = get(root, "model"), *bf = model ? get(model, "byte_fallback") : NULL;
    if (cJSON_IsTrue(bf)) return 1;
    const char *keys[] = {"normalizer", "pre_tokenizer", "decoder"};
    for (int k = 0; k < 3; k++) {
        const cJSON *v = get(root, keys[k]);
        char *txt = v ? cJSON_PrintUnformatted(v) : NULL;
        int hit = txt && (strstr(txt, "\"Metaspace\"") || strstr(txt, "\"Prepend\"") || strstr(txt, "\"ByteFallback\""));
        cJSON_free(txt);
        if (hit) return 1;
    }
    return 0;
}

static void cache_init(struct bpe_model *m)
{
    m->cache = xcalloc(CACHE_SHARDS, sizeof *m->cache);
    for (int i = 0; i < CACHE_SHARDS; i++) pthread_mutex_init(&m->cache[i].mu, NULL);
}

int bpe_model_load(struct bpe_model **out, const char *path, char *err)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return set_err(err, -1, "%s: %s", path, strerror(errno));
    struct sbuf b = {0};
    char chunk[1 << 16];
    size_t r;
    while ((r = fread(chunk, 1, sizeof chunk, f)) > 0) {
        sb_put(&b, chunk, r);
        if (b.len > JSON_MAX_BYTES) break;
    }
    int rerr = ferror(f);
    fclose(f);
    if (rerr || b.len > JSON_MAX_BYTES) {
        free(b.p);
        return set_err(err, -1, "%s: %s", path, rerr ? "read error" : "larger than 512 MiB");
    }
    cJSON *root = b.p ? cJSON_ParseWithLength(b.p, b.len) : NULL;
    free(b.p);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return set_err(err, -1, "%s: not a JSON object (tokenizer.json expected)", path);
    }
    struct bpe_model *m = xcalloc(1, sizeof *m);
    struct loader L = {.path = path, .err = err, .root = root, .m = m};
    uint32_t cp_of_byte[256];
    byte_alphabet(cp_of_byte);
    memset(L.byte_of_cp, 0xFF, sizeof L.byte_of_cp);
    for (int i = 0; i < 256; i++) L.byte_of_cp[cp_of_byte[i]] = (int16_t)i;

    const cJSON *v;
    int byte_level = 0, rc = -1;
    if ((v = get(root, "truncation"))) {
        field_err(&L, "truncation", "truncation is not supported (it would cut prompts)");
        goto done;
    }
    if ((v = get(root, "padding"))) {
        const cJSON *st = get(v, "strategy");
        if (!(cJSON_IsString(st) && !strcmp(st->valuestring, "BatchLongest"))) {
            field_err(&L, "padding", "only BatchLongest padding (a no-op for one text) is supported");
            goto done;
        }
    }
    if (!(v = get(root, "model"))) {
        field_err(&L, "model", "missing");
        goto done;
    }
    /* the normalizer first: normalized added tokens are stored in normalized form */
    if (load_normalizer(&L, get(root, "normalizer"), "normalizer") < 0 || load_bpe(&L, v) < 0 ||
        load_added(&L, get(root, "added_tokens"), L.n_vocab) < 0)
        goto done;
    if (!(v = get(root, "pre_tokenizer"))) {
        field_err(&L, "pre_tokenizer", "missing (a byte-level BPE needs a ByteLevel pre-tokenizer)");
        goto done;
    }
    if (load_pretok(&L, v, "pre_tokenizer", &byte_level) < 0) goto done;
    if (byte_level != 1) {
        field_err(&L, "pre_tokenizer", "a ByteLevel pre-tokenizer is required (only byte-level BPE is supported)");
        goto done;
    }
    if (load_decoder(&L, get(root, "decoder"), "decoder") < 0 ||
        load_post(&L, get(root, "post_processor"), "post_processor") < 0)
        goto done;
    for (int i = 0; i < 256; i++)
        if (m->byte_tok[i] < 0 && !m->byte_fallback && m->unk_id < 0)
            LOG_W("%s: byte 0x%02X has no token; text containing it loses it, as in the reference", path, i);
    cache_init(m);
    rc = 0;
done:
    if (rc < 0 && looks_sentencepiece(root)) {
        size_t n = strlen(err);
        snprintf(err + n, ERR_LEN - n, " (a SentencePiece-style tokenizer.json: put the model's tokenizer.model beside it)");
    }
    cJSON_Delete(root);
    if (rc < 0) {
        bpe_model_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void bpe_model_free(struct bpe_model *m)
{
    if (!m) return;
    free(m->pieces);
    free(m->piece_off);
    free(m->piece_len);
    free(m->bytes);
    free(m->bytes_off);
    free(m->bytes_len);
    free(m->is_special);
    free(m->is_added);
    free(m->vocab.slot);
    free(m->added.slot);
    free(m->enc.slot);
    free(m->merges.key);
    free(m->merges.rank);
    free(m->merge_new);
    added_set_free(m->added_raw);
    added_set_free(m->added_norm);
    for (int i = 0; i < m->n_steps; i++)
        if (m->steps[i].re) pcre2_code_free(m->steps[i].re);
    free(m->prefix);
    free(m->suffix);
    if (m->cache) {
        for (int i = 0; i < CACHE_SHARDS; i++) pthread_mutex_destroy(&m->cache[i].mu);
        free(m->cache);
    }
    free(m);
}

/* --------------------------------------------------------------------------------------------
 * Vocabulary */

int bpe_model_n_ids(const struct bpe_model *m) { return m->n_ids; }
int bpe_model_prefix_id(const struct bpe_model *m) { return m->n_prefix ? m->prefix[0] : -1; }
int bpe_model_unk_id(const struct bpe_model *m) { return m->unk_id; }

const char *bpe_model_id_to_piece(const struct bpe_model *m, int id)
{
    if (id < 0 || id >= m->n_ids || m->piece_off[id] == UINT32_MAX) return NULL;
    return m->pieces + m->piece_off[id];
}

int bpe_model_piece_to_id(const struct bpe_model *m, const char *piece)
{
    size_t n = strlen(piece);
    int32_t id = strtab_find(&m->added, piece, n); /* added tokens first, as the reference */
    return id >= 0 ? id : strtab_find(&m->vocab, piece, n);
}

int bpe_model_is_special(const struct bpe_model *m, int id)
{
    return id >= 0 && id < m->n_ids && m->is_special[id];
}

int bpe_model_decode_skips(const struct bpe_model *m, int id)
{
    return id >= 0 && id < m->n_ids && m->is_special[id] == 1;
}

const char *bpe_model_id_bytes(const struct bpe_model *m, int id, size_t *len)
{
    if (id < 0 || id >= m->n_ids || m->piece_off[id] == UINT32_MAX) {
        *len = 0;
        return "";
    }
    *len = m->bytes_len[id];
    return m->bytes + m->bytes_off[id];
}

/* --------------------------------------------------------------------------------------------
 * Encoding */

struct sym {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
    int32_t len;        /* bytes; 0 once merged into its left neighbour */
};

struct span {
    size_t start, end;
    int is_match;
};

struct enc {
    const struct bpe_model *m;
    int split_special;
    int32_t *ids;
    size_t n_ids, cap_ids;
    struct sym *sym;
    uint64_t *heap;
    size_t cap_sym, cap_heap;
    struct span *spans[MAX_STEPS];
    size_t cap_spans[MAX_STEPS];
    pcre2_match_data *md[MAX_STEPS];
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit;
    char *err;
    int rc;
};

static void emit(struct enc *e, int32_t id)
{
    if (e->n_ids == e->cap_ids) {
        e->cap_ids = e->cap_ids ? 2 * e->cap_ids : 256;
        e->ids = xrealloc(e->ids, e->cap_ids * sizeof *e->ids);
    }
    e->ids[e->n_ids++] = id;
}

static void heap_push(struct enc *e, size_t *n, uint64_t v)
{
    if (*n == e->cap_heap) {
        e->cap_heap = e->cap_heap ? 2 * e->cap_heap : 64;
        e->heap = xrealloc(e->heap, e->cap_heap * sizeof *e->heap);
    }
    uint64_t *h = e->heap;
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static uint64_t heap_pop(struct enc *e, size_t *n)
{
    uint64_t *h = e->heap, top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1] < h[c]) c++;
        if (h[c] >= last) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

static void cache_key(const unsigned char *w, size_t n, uint64_t *h, struct cache_shard **sh,
                      struct cache_entry **ce, const struct bpe_model *m)
{
    *h = hash_bytes(w, n);
    *sh = &m->cache[(*h >> 58) & (CACHE_SHARDS - 1)];
    *ce = &(*sh)->e[(*h >> 20) & (CACHE_WAYS - 1)];
}

/* BPE over one pre-token's bytes. */
static void bpe_word(struct enc *e, const unsigned char *w, size_t n)
{
    const struct bpe_model *m = e->m;
    if (m->ignore_merges) {
        int32_t id = strtab_find(&m->enc, (const char *)w, n);
        if (id >= 0) {
            emit(e, id);
            return;
        }
    }
    uint64_t h = 0;
    struct cache_shard *sh = NULL;
    struct cache_entry *ce = NULL;
    if (n <= CACHE_KEY_MAX) {
        cache_key(w, n, &h, &sh, &ce, m);
        uint32_t tag = (uint32_t)h | 1;
        int hit = 0;
        pthread_mutex_lock(&sh->mu);
        if (ce->tag == tag && ce->klen == n && memcmp(ce->key, w, n) == 0) {
            for (int i = 0; i < ce->nids; i++) emit(e, ce->ids[i]);
            hit = 1;
        }
        pthread_mutex_unlock(&sh->mu);
        if (hit) return;
    }

    if (n > e->cap_sym) {
        e->cap_sym = n + 64;
        free(e->sym);
        e->sym = xmalloc(e->cap_sym * sizeof *e->sym);
    }
    struct sym *s = e->sym;
    /* one symbol per byte; bytes without a token go through byte fallback, then unk */
    int32_t k = 0, unk_open = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = m->byte_tok[w[i]];
        if (id < 0 && m->byte_fallback) {
            char hex[8];
            snprintf(hex, sizeof hex, "<0x%02X>", w[i]);
            id = strtab_find(&m->vocab, hex, 6);
        }
        if (id < 0) {
            if (m->unk_id < 0) continue; /* dropped, as the reference does */
            if (unk_open && m->fuse_unk) {
                s[k - 1].len++;
                continue;
            }
            id = m->unk_id;
            unk_open = 1;
        } else {
            unk_open = 0;
        }
        s[k] = (struct sym){id, k - 1, k + 1, 1};
        k++;
    }
    if (k == 0) return;
    s[k - 1].next = -1;

    size_t nh = 0;
    for (int32_t i = 0; i + 1 < k; i++) {
        int32_t r = merge_find(&m->merges, s[i].id, s[i + 1].id);
        if (r >= 0) heap_push(e, &nh, ((uint64_t)r << 32) | (uint32_t)i);
    }
    while (nh) {
        uint64_t top = heap_pop(e, &nh);
        int32_t r = (int32_t)(top >> 32), pos = (int32_t)(uint32_t)top;
        struct sym *a = &s[pos];
        if (a->len == 0 || a->next < 0) continue;
        struct sym *b = &s[a->next];
        int32_t cur = merge_find(&m->merges, a->id, b->id);
        if (cur < 0 || m->merge_new[cur] != m->merge_new[r]) continue; /* stale entry */
        a->id = m->merge_new[r];
        a->len += b->len;
        b->len = 0;
        a->next = b->next;
        if (a->next >= 0) s[a->next].prev = pos;
        if (a->prev >= 0) {
            int32_t r2 = merge_find(&m->merges, s[a->prev].id, a->id);
            if (r2 >= 0) heap_push(e, &nh, ((uint64_t)r2 << 32) | (uint32_t)a->prev);
        }
        if (a->next >= 0) {
            int32_t r2 = merge_find(&m->merges, a->id, s[a->next].id);
            if (r2 >= 0) heap_push(e, &nh, ((uint64_t)r2 << 32) | (uint32_t)pos);
        }
    }
    size_t first = e->n_ids;
    for (int32_t i = 0; i >= 0; i = s[i].next) emit(e, s[i].id);

    size_t got = e->n_ids - first;
    if (ce && got <= CACHE_IDS_MAX) {
        pthread_mutex_lock(&sh->mu);
        ce->tag = (uint32_t)h | 1;
        ce->klen = (uint8_t)n;
        ce->nids = (uint8_t)got;
        memcpy(ce->key, w, n);
        memcpy(ce->ids, e->ids + first, got * sizeof *e->ids);
        pthread_mutex_unlock(&sh->mu);
    }
}

static void pretokenize(struct enc *e, const char *s, size_t n, int step);

/* Matches of step's regex in s as spans covering all of s, then the behavior's grouping. */
static size_t split_spans(struct enc *e, const char *s, size_t n, int step)
{
    const struct pretok_step *st = &e->m->steps[step];
    size_t ns = 0, prev = 0, off = 0;
#define SPAN(a, b, mt)                                                                              \
    do {                                                                                            \
        if (ns == e->cap_spans[step]) {                                                             \
            e->cap_spans[step] = e->cap_spans[step] ? 2 * e->cap_spans[step] : 64;                  \
            e->spans[step] = xrealloc(e->spans[step], e->cap_spans[step] * sizeof *e->spans[step]); \
        }                                                                                           \
        e->spans[step][ns++] = (struct span){(a), (b), (mt)};                                       \
    } while (0)
    while (off <= n) {
        int rc = pcre2_match(st->re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK, e->md[step], e->mctx);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            if (e->rc == 0) {
                PCRE2_UCHAR msg[160];
                pcre2_get_error_message(rc, msg, sizeof msg);
                e->rc = set_err(e->err, -1, "pre-tokenizer regex failed: %s", (const char *)msg);
            }
            break;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md[step]);
        size_t a = ov[0], b = ov[1];
        if (b == a) { /* an empty match splits nothing; step over one character */
            if (a >= n) break;
            off = a + 1;
            while (off < n && ((unsigned char)s[off] & 0xC0) == 0x80) off++;
            continue;
        }
        if (prev < a) SPAN(prev, a, st->invert);
        SPAN(a, b, !st->invert);
        prev = off = b;
    }
    if (prev < n) SPAN(prev, n, st->invert);
#undef SPAN
    struct span *sp = e->spans[step];
    size_t out = 0;
    switch (st->behavior) {
    case SPLIT_ISOLATED:
        for (size_t i = 0; i < ns; i++) sp[i].is_match = 0;
        out = ns;
        break;
    case SPLIT_REMOVED:
        out = ns;
        break;
    case SPLIT_CONTIGUOUS: {
        int prev_match = 0;
        for (size_t i = 0; i < ns; i++) {
            struct span cur = sp[i]; /* sp[out] may be sp[i] */
            if (out && cur.is_match == prev_match) sp[out - 1].end = cur.end;
            else sp[out++] = (struct span){cur.start, cur.end, 0};
            prev_match = cur.is_match;
        }
        break;
    }
    case SPLIT_MERGED_PREV: {
        int prev_match = 0;
        for (size_t i = 0; i < ns; i++) {
            struct span cur = sp[i];
            if (cur.is_match && !prev_match && out) sp[out - 1].end = cur.end;
            else sp[out++] = (struct span){cur.start, cur.end, 0};
            prev_match = cur.is_match;
        }
        break;
    }
    case SPLIT_MERGED_NEXT: { /* the reference folds from the right */
        int prev_match = 0;
        size_t w = ns;
        for (size_t i = ns; i-- > 0;) {
            struct span cur = sp[i];
            if (cur.is_match && !prev_match && w < ns) sp[w].start = cur.start;
            else sp[--w] = (struct span){cur.start, cur.end, 0};
            prev_match = cur.is_match;
        }
        memmove(sp, sp + w, (ns - w) * sizeof *sp);
        out = ns - w;
        break;
    }
    }
    return out;
}

static void pretokenize(struct enc *e, const char *s, size_t n, int step)
{
    if (n == 0 || e->rc) return;
    const struct bpe_model *m = e->m;
    if (step == m->n_steps) {
        bpe_word(e, (const unsigned char *)s, n);
        return;
    }
    const struct pretok_step *st = &m->steps[step];
    if (st->kind == STEP_PREFIX_SPACE) {
        if (s[0] == ' ') {
            pretokenize(e, s, n, step + 1);
            return;
        }
        char *p = xmalloc(n + 1);
        p[0] = ' ';
        memcpy(p + 1, s, n);
        pretokenize(e, p, n + 1, step + 1);
        free(p);
        return;
    }
    size_t ns = split_spans(e, s, n, step);
    for (size_t i = 0; i < ns; i++) {
        struct span sp = e->spans[step][i];
        if (!sp.is_match) pretokenize(e, s + sp.start, sp.end - sp.start, step + 1);
    }
}

static int on_normalized_piece(void *ctx, const char *s, size_t n, int32_t id)
{
    struct enc *e = ctx;
    if (id >= 0) emit(e, id);
    else pretokenize(e, s, n, 0);
    return e->rc;
}

static int on_raw_piece(void *ctx, const char *s, size_t n, int32_t id)
{
    struct enc *e = ctx;
    if (id >= 0) {
        emit(e, id);
        return 0;
    }
    char *norm = NULL;
    size_t norm_len = 0;
    if (e->m->n_norm && normalize(e->m, s, n, &norm, &norm_len) < 0)
        return e->rc = set_err(e->err, -1, "the normalizer failed on the text");
    if (norm) {
        s = norm;
        n = norm_len;
    }
    int rc = added_split(e->m->added_norm, s, n, e->split_special, on_normalized_piece, e);
    free(norm);
    return rc;
}

int bpe_model_encode(const struct bpe_model *m, const char *text, size_t len, int add_special,
                     int split_special, int32_t **ids, char *err)
{
    *ids = NULL;
    struct enc e = {.m = m, .split_special = split_special, .err = err};
    e.mctx = pcre2_match_context_create(NULL);
    pcre2_set_match_limit(e.mctx, REGEX_MATCH_LIMIT);
    e.jit = pcre2_jit_stack_create(32 * 1024, 16 * 1024 * 1024, NULL);
    if (e.jit) pcre2_jit_stack_assign(e.mctx, NULL, e.jit);
    for (int i = 0; i < m->n_steps; i++)
        if (m->steps[i].re) e.md[i] = pcre2_match_data_create_from_pattern(m->steps[i].re, NULL);
    if (add_special)
        for (int i = 0; i < m->n_prefix; i++) emit(&e, m->prefix[i]);
    int rc = added_split(m->added_raw, text, len, split_special, on_raw_piece, &e);
    if (rc == 0 && e.rc) rc = e.rc;
    if (add_special)
        for (int i = 0; i < m->n_suffix; i++) emit(&e, m->suffix[i]);
    for (int i = 0; i < m->n_steps; i++) {
        pcre2_match_data_free(e.md[i]);
        free(e.spans[i]);
    }
    pcre2_jit_stack_free(e.jit);
    pcre2_match_context_free(e.mctx);
    free(e.sym);
    free(e.heap);
    if (rc < 0 || e.n_ids > INT_MAX) {
        free(e.ids);
        return rc < 0 ? rc : set_err(err, -1, "text too long: more than %d tokens", INT_MAX);
    }
    *ids = e.ids ? e.ids : xmalloc(sizeof(int32_t));
    return (int)e.n_ids;
}

/* --------------------------------------------------------------------------------------------
 * tokenizer_config.json */

static char *config_token(const cJSON *root, const char *key)
{
    const cJSON *v = get(root, key);
    if (cJSON_IsObject(v)) v = get(v, "content"); /* {"content": "...", "__type": "AddedToken"} */
    return cJSON_IsString(v) ? xstrdup(v->valuestring) : NULL;
}

int hf_tok_config_read(const char *path, struct hf_tok_config *c, char *err)
{
    memset(c, 0, sizeof *c);
    FILE *f = fopen(path, "rb");
    if (!f) return errno == ENOENT ? 0 : set_err(err, -1, "%s: %s", path, strerror(errno));
    struct sbuf b = {0};
    char chunk[1 << 16];
    size_t r;
    while ((r = fread(chunk, 1, sizeof chunk, f)) > 0 && b.len <= JSON_MAX_BYTES) sb_put(&b, chunk, r);
    fclose(f);
    cJSON *root = b.p ? cJSON_ParseWithLength(b.p, b.len) : NULL;
    free(b.p);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return set_err(err, -1, "%s: not a JSON object", path);
    }
    c->bos_token = config_token(root, "bos_token");
    c->eos_token = config_token(root, "eos_token");
    c->unk_token = config_token(root, "unk_token");
    c->pad_token = config_token(root, "pad_token");
    const cJSON *s = get(root, "split_special_tokens");
    int rc = 0;
    if (s && !cJSON_IsBool(s)) rc = set_err(err, -1, "%s: field 'split_special_tokens': expected true or false", path);
    else c->split_special_tokens = s && cJSON_IsTrue(s);
    cJSON_Delete(root);
    if (rc < 0) hf_tok_config_free(c);
    return rc;
}

void hf_tok_config_free(struct hf_tok_config *c)
{
    free(c->bos_token);
    free(c->eos_token);
    free(c->unk_token);
    free(c->pad_token);
    memset(c, 0, sizeof *c);
}
