/* added.c - added and special tokens ("<|begin_of_text|>", "<|im_start|>", "<s>") found in text
 * before the model sees it, with Hugging Face tokenizers' rules (AddedVocabulary::find_matches):
 *
 *   - matches are leftmost-longest and never overlap: at the first position where any token
 *     matches, the longest one wins; the search resumes at its end;
 *   - single_word: a match whose neighbour on either side is a word character (Unicode \w: letters,
 *     marks, Nd/Nl digits, connector punctuation, ZWJ/ZWNJ) is dropped (the text stays text);
 *   - lstrip: the match swallows the whitespace run before it (never text a previous match took);
 *     rstrip: the whitespace run after it;
 *   - special tokens are skipped when the caller asks (split_special_tokens).
 *
 * "Whitespace" is Unicode White_Space, the \s of Rust's regex crate that the reference uses.
 *
 * Matching walks a byte trie from every position whose byte can start a token: O(n * L) for n
 * bytes of text and L the longest token (a few dozen bytes), with no allocation. Rejected:
 * Aho-Corasick (O(n), but the automaton is more code than the tables it would save: token sets
 * are a few hundred strings sharing long prefixes such as "<|reserved_special_token_"). */
#include <string.h>
#include <utf8proc.h>

#include "../common/common.h"
#include "tokenizer_internal.h"

struct trie_node {
    int32_t child;   /* first child, -1 if none */
    int32_t sibling; /* next child of the same parent, -1 if none */
    int32_t tok;     /* index into toks of the token ending here, -1 if none */
    uint8_t byte;    /* the byte on the edge from the parent */
};

struct added_set {
    struct added_tok *toks; /* (n_toks) with content copied */
    int n_toks;
    struct trie_node *nodes; /* node 0 is the root */
    int n_nodes, cap_nodes;
    uint8_t first[256];      /* 1 when some token starts with this byte */
};

/* --------------------------------------------------------------------------------------------
 * Unicode classes */

/* Decode the code point at s (valid UTF-8 assumed); *n gets its length. */
static uint32_t cp_at(const unsigned char *s, int *n)
{
    if (s[0] < 0x80) { *n = 1; return s[0]; }
    if (s[0] < 0xE0) { *n = 2; return ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F); }
    if (s[0] < 0xF0) {
        *n = 3;
        return ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    }
    *n = 4;
    return ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
           ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
}

/* The code point that ends at s + len (len > 0, valid UTF-8). */
static uint32_t cp_before(const unsigned char *s, size_t len, int *n)
{
    size_t i = len - 1;
    while (i > 0 && (s[i] & 0xC0) == 0x80) i--;
    return cp_at(s + i, n);
}

enum ucat unicode_category(uint32_t c)
{
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: return UCAT_L;
    case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: return UCAT_M;
    case UTF8PROC_CATEGORY_ND: return UCAT_ND;
    case UTF8PROC_CATEGORY_NL: return UCAT_NL;
    case UTF8PROC_CATEGORY_NO: return UCAT_NO;
    case UTF8PROC_CATEGORY_PC: return UCAT_PC;
    default: return UCAT_OTHER;
    }
}

int unicode_is_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* \w of Rust's regex crate: Alphabetic, M, Nd, Pc, Join_Control. Alphabetic is the letters, Nl
 * and Other_Alphabetic; the latter is marks (already in M) plus the circled and squared Latin
 * letters listed here. */
static int unicode_is_word(uint32_t c)
{
    if (c < 0x80)
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (c == 0x200C || c == 0x200D) return 1;
    if ((c >= 0x24B6 && c <= 0x24E9) || (c >= 0x1F130 && c <= 0x1F149) ||
        (c >= 0x1F150 && c <= 0x1F169) || (c >= 0x1F170 && c <= 0x1F189))
        return 1;
    switch (unicode_category(c)) {
    case UCAT_L: case UCAT_M: case UCAT_ND: case UCAT_NL: case UCAT_PC: return 1;
    default: return 0;
    }
}

/* --------------------------------------------------------------------------------------------
 * Building */

static int trie_new_node(struct added_set *a, uint8_t byte)
{
    if (a->n_nodes == a->cap_nodes) {
        a->cap_nodes = a->cap_nodes ? 2 * a->cap_nodes : 64;
        a->nodes = xrealloc(a->nodes, (size_t)a->cap_nodes * sizeof *a->nodes);
    }
    struct trie_node *n = &a->nodes[a->n_nodes];
    n->child = n->sibling = n->tok = -1;
    n->byte = byte;
    return a->n_nodes++;
}

static int trie_child(const struct added_set *a, int node, uint8_t byte)
{
    for (int c = a->nodes[node].child; c >= 0; c = a->nodes[c].sibling)
        if (a->nodes[c].byte == byte) return c;
    return -1;
}

struct added_set *added_set_new(const struct added_tok *toks, int n)
{
    struct added_set *a = xcalloc(1, sizeof *a);
    a->toks = xcalloc(n > 0 ? (size_t)n : 1, sizeof *a->toks);
    trie_new_node(a, 0);
    for (int i = 0; i < n; i++) {
        if (toks[i].len == 0) continue; /* an empty token never matches (HF ignores it) */
        struct added_tok *t = &a->toks[a->n_toks];
        *t = toks[i];
        char *c = xmalloc(toks[i].len + 1);
        memcpy(c, toks[i].content, toks[i].len);
        c[toks[i].len] = '\0';
        t->content = c;
        int node = 0;
        for (size_t k = 0; k < t->len; k++) {
            uint8_t b = (uint8_t)c[k];
            int next = trie_child(a, node, b);
            if (next < 0) {
                next = trie_new_node(a, b);
                a->nodes[next].sibling = a->nodes[node].child;
                a->nodes[node].child = next;
            }
            node = next;
        }
        /* the same content twice: the later entry wins, as in HF's content -> id map */
        a->nodes[node].tok = a->n_toks;
        a->first[(uint8_t)c[0]] = 1;
        a->n_toks++;
    }
    return a;
}

void added_set_free(struct added_set *a)
{
    if (!a) return;
    for (int i = 0; i < a->n_toks; i++) free((char *)a->toks[i].content);
    free(a->toks);
    free(a->nodes);
    free(a);
}

int added_set_size(const struct added_set *a) { return a ? a->n_toks : 0; }

/* --------------------------------------------------------------------------------------------
 * Splitting */

/* Leftmost-longest match at or after from: 1 with [*start, *end) and the token, else 0. */
static int next_match(const struct added_set *a, const unsigned char *s, size_t len, size_t from,
                      size_t *start, size_t *end, const struct added_tok **tok)
{
    for (size_t i = from; i < len; i++) {
        if (!a->first[s[i]]) continue;
        int node = 0, best = -1;
        size_t best_end = 0;
        for (size_t k = i; k < len; k++) {
            node = trie_child(a, node, s[k]);
            if (node < 0) break;
            if (a->nodes[node].tok >= 0) {
                best = a->nodes[node].tok;
                best_end = k + 1;
            }
        }
        if (best >= 0) {
            *start = i;
            *end = best_end;
            *tok = &a->toks[best];
            return 1;
        }
    }
    return 0;
}

int added_split(const struct added_set *a, const char *text, size_t len, int skip_special,
                added_split_cb cb, void *ctx)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t done = 0, from = 0, start, end;
    const struct added_tok *tok;
    int rc, n;
    while (a && a->n_toks && next_match(a, s, len, from, &start, &end, &tok)) {
        from = end;
        if (skip_special && tok->special) continue;
        if (tok->single_word) {
            int word_before = start > 0 && unicode_is_word(cp_before(s, start, &n));
            int word_after = end < len && unicode_is_word(cp_at(s + end, &n));
            if (word_before || word_after) continue;
        }
        if (tok->lstrip) {
            size_t st = start;
            while (st > 0) {
                uint32_t c = cp_before(s, st, &n);
                if (!unicode_is_space(c)) break;
                st -= (size_t)n;
            }
            start = st > done ? st : done;
        }
        if (tok->rstrip) {
            while (end < len) {
                uint32_t c = cp_at(s + end, &n);
                if (!unicode_is_space(c)) break;
                end += (size_t)n;
            }
        }
        if (done < start && (rc = cb(ctx, text + done, start - done, -1)) < 0) return rc;
        if ((rc = cb(ctx, text + start, end - start, tok->id)) < 0) return rc;
        done = end;
    }
    if (done < len && (rc = cb(ctx, text + done, len - done, -1)) < 0) return rc;
    return 0;
}
