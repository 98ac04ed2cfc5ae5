/* tokenizer.c - tokenizer.h for both kinds of tokenizer: SentencePiece (tokenizer.model, through
 * the sentencepiece wrapper in sentencepiece.cc) and Hugging Face tokenizer.json byte-level BPE
 * (bpe.c). Here: choosing the file, special ids, piece tables, BOS handling, special-token text
 * in prompts, strict UTF-8 checks and the streaming detokenizer.
 *
 * Which file: a model directory with tokenizer.model uses SentencePiece even when it also has a
 * tokenizer.json (Llama-2 and Mistral ship both; their tokenizer.json is a SentencePiece-style
 * BPE that bpe.c refuses, and libsentencepiece is the exact reference for the .model); a
 * directory with only tokenizer.json uses bpe.c.
 *
 * Special-token text in prompts ("<s>", "<|im_start|>") is parsed as the special token, as
 * Hugging Face tokenizers and so vLLM do by default, for both kinds: SentencePiece's own encoder
 * would read "<s>" as text, so its control and unknown pieces are matched first (added.c) and
 * the text between them is encoded piece by piece, which is what HF's tokenizer.json for these
 * models does. tokenizer_config.json's split_special_tokens: true turns this off.
 *
 * SentencePiece encode and decode go straight to libsentencepiece (the fixtures were recorded
 * against it). The streaming detokenizer cannot: a full decode turns an unfinished UTF-8
 * sequence into U+FFFD, so re-decoding a growing id list would print U+FFFD and then take it
 * back. Instead the stream replays the decoder's rules one id at a time from a per-id table
 * built at load. SentencePiece's Decode():
 *
 *   - a piece's text ("surface") is its string with every U+2581 "▁" turned into a space;
 *     control pieces (<s>, </s>) have none; <unk> has the unk surface (" ⁇ ");
 *   - byte pieces (<0xNN>) are collected into runs; a run is decoded one UTF-8 character at a
 *     time, and a byte that cannot start a valid character (strict UTF-8: no overlongs, no
 *     surrogates, <= U+10FFFF) becomes U+FFFD on its own; any non-byte piece, even a control
 *     one, ends the run;
 *   - the dummy-prefix space: while nothing has been decoded yet, a piece's leading "▁" is
 *     dropped, once (a second "▁" piece right after a dropped one keeps its space).
 *
 * tokenizer.json's ByteLevel decoder (the reference's decode with skip_special_tokens, as vLLM
 * detokenizes): every id stands for bytes; special tokens are left out entirely (bytes on both
 * sides of one still join into a character); the bytes of the whole text are then read as UTF-8
 * with each maximal invalid subsequence replaced by one U+FFFD (Rust's from_utf8_lossy). Here
 * tokenizer_decode is the stream itself.
 *
 * Worked example (ids of the test model): 1 <s>, 267 "▁the", 233 <0xE6>, 154 <0x97>,
 * 146 <0x8F>. Stream with no prompt: push 1 -> "", push 267 -> "the" (start of text: space
 * dropped), push 233 -> "" (E6 held), push 154 -> "" (E6 97 held), push 146 -> "族". With the
 * prompt [1, 267], pushing 267 gives " the": decode(prompt + gen) minus decode(prompt).
 * Had the stream finished after 233 154, finish() would give U+FFFD U+FFFD, as Decode does
 * (a tokenizer.json model gives one U+FFFD for the unfinished E6 97).
 *
 * Invariant: the concatenation of every push output plus finish equals tokenizer_decode() of
 * the same ids, and every output is whole UTF-8 characters. For SentencePiece, tokenizer_load()
 * streams the whole vocabulary once, compares with the library's decode and warns if a model
 * breaks the rule (a model with a denormalizer would).
 *
 * Rejected: vLLM's re-decode of a sliding window of ids per generated token (costs a library
 * call and a string compare per token, and guesses at U+FFFD); decoding SentencePiece pieces
 * ourselves in tokenizer_decode (the library is the reference the stream is tested against). */
#include "tokenizer.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "tokenizer_internal.h"

static const char SPACE_SYMBOL[] = "\xe2\x96\x81"; /* U+2581, sentencepiece's space */
static const char REPLACEMENT[] = "\xef\xbf\xbd";  /* U+FFFD */

struct tok_piece {
    uint32_t off;         /* surface bytes at surf + off */
    uint32_t len;         /* surface length; 1 for a byte piece */
    uint8_t kind;         /* enum sp_piece_type */
    uint8_t space_prefix; /* the piece starts with "▁" (its surface with ' ') */
};

enum tok_kind {
    TOK_SPM = 0, /* tokenizer.model through libsentencepiece */
    TOK_BPE = 1, /* tokenizer.json through bpe.c */
};

struct tokenizer {
    enum tok_kind kind;
    struct sp_model *sp;      /* TOK_SPM */
    struct added_set *specials; /* TOK_SPM: control and unknown pieces, matched in text */
    struct bpe_model *bpe;    /* TOK_BPE */
    int split_special;        /* special-token text stays text (tokenizer_config.json) */
    int n_vocab;
    int bos_id, eos_id, unk_id, pad_id;
    struct tok_piece *pieces; /* (n_vocab) */
    char *surf;               /* every surface back to back */
    int strip_dummy;          /* decode drops the first piece's "▁" (add_dummy_prefix) */
    int strip_repeat;         /* ... and keeps dropping while the text is empty
                                 (remove_extra_whitespaces) */
};

/* --------------------------------------------------------------------------------------------
 * UTF-8 */

/* The UTF-8 character at p (n >= 1 bytes available): its length 1..4 when p holds a whole valid
 * character, 0 when the n bytes are a proper prefix of one (more bytes could complete it), -1
 * when p[0] cannot start a valid character given the bytes after it. Strict (Unicode Table
 * 3-7), the same rule as sentencepiece's DecodeUTF8, so the stream places U+FFFD as Decode does. */
static int utf8_char(const unsigned char *p, size_t n)
{
    unsigned char c = p[0], lo = 0x80, hi = 0xBF;
    int need;
    if (c < 0x80) return 1;
    if (c < 0xC2) return -1; /* continuation byte, or overlong C0/C1 */
    if (c < 0xE0) {
        need = 2;
    } else if (c < 0xF0) {
        need = 3;
        if (c == 0xE0) lo = 0xA0; /* overlong */
        if (c == 0xED) hi = 0x9F; /* surrogates */
    } else if (c < 0xF5) {
        need = 4;
        if (c == 0xF0) lo = 0x90; /* overlong */
        if (c == 0xF4) hi = 0x8F; /* above U+10FFFF */
    } else {
        return -1;
    }
    for (int i = 1; i < need; i++) {
        if ((size_t)i >= n) return 0;
        unsigned char b = p[i];
        if (i == 1 ? (b < lo || b > hi) : (b & 0xC0) != 0x80) return -1;
    }
    return need;
}

/* Offset of the first byte that is not part of a valid character, or len when all are. */
static size_t utf8_valid_prefix(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        int r = utf8_char(p + i, len - i);
        if (r <= 0) return i;
        i += (size_t)r;
    }
    return len;
}

int utf8_valid(const char *s, size_t len)
{
    return utf8_valid_prefix(s, len) == len;
}

/* --------------------------------------------------------------------------------------------
 * Streaming detokenizer */

struct tok_stream {
    const tokenizer_t *t;
    int at_start;         /* sentencepiece's is_bos_ws: the next piece may lose its "▁" */
    int prev_stripped;    /* the last non-byte piece lost its "▁" (bos_ws_seen) */
    int text_nonempty;    /* some text, or a byte, has been decoded */
    unsigned char pend[4]; /* the byte run's unfinished character: a valid prefix + 1 new byte */
    int n_pend;
    int n_pend_ctx;       /* how many of pend[] came from the prompt */
    int in_prompt;        /* feeding the prompt: nothing is output */
    char *buf;            /* output of the current call, NUL-terminated */
    size_t len, cap;
};

static void stream_emit(tok_stream_t *s, const char *p, size_t n)
{
    if (s->in_prompt || n == 0) return;
    if (s->len + n + 1 > s->cap) {
        s->cap = 2 * (s->len + n + 1);
        s->buf = xrealloc(s->buf, s->cap);
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
}

static void stream_consume(tok_stream_t *s, int n)
{
    memmove(s->pend, s->pend + n, (size_t)(s->n_pend - n));
    s->n_pend -= n;
    s->n_pend_ctx = s->n_pend_ctx > n ? s->n_pend_ctx - n : 0;
}

/* The length of the maximal subpart at p (n bytes that are not a whole character): the longest
 * prefix that a valid character could start with, at least 1 byte. */
static int utf8_subpart(const unsigned char *p, int n)
{
    for (int j = n; j > 1; j--)
        if (utf8_char(p, (size_t)j) == 0) return j;
    return 1;
}

/* Output what the pending bytes decide. run_ended: no more bytes will join this run, so an
 * unfinished character is invalid (one U+FFFD per byte, as sentencepiece does; one per maximal
 * subpart for tokenizer.json, as from_utf8_lossy does). A prompt byte that turns out invalid
 * already printed its U+FFFD in decode(prompt): it is dropped silently. A character completed
 * across the prompt end is printed whole. */
static void stream_drain(tok_stream_t *s, int run_ended)
{
    while (s->n_pend > 0) {
        int r = utf8_char(s->pend, (size_t)s->n_pend);
        if (r > 0) {
            stream_emit(s, (const char *)s->pend, (size_t)r);
            stream_consume(s, r);
        } else if (r == 0 && !run_ended) {
            break;
        } else {
            if (s->n_pend_ctx == 0) stream_emit(s, REPLACEMENT, 3);
            stream_consume(s, s->t->kind == TOK_BPE ? utf8_subpart(s->pend, s->n_pend) : 1);
        }
    }
}

static void stream_feed(tok_stream_t *s, int32_t id)
{
    const tokenizer_t *t = s->t;
    const struct tok_piece *p = &t->pieces[id];
    if (t->kind == TOK_BPE) { /* every piece is bytes; special ones have none */
        for (uint32_t i = 0; i < p->len; i++) {
            s->pend[s->n_pend++] = (unsigned char)t->surf[p->off + i];
            stream_drain(s, 0);
        }
        return;
    }
    if (p->kind == SP_PIECE_BYTE) {
        s->pend[s->n_pend++] = (unsigned char)t->surf[p->off];
        s->text_nonempty = 1;
        stream_drain(s, 0);
        return;
    }
    stream_drain(s, 1);
    if (s->prev_stripped || s->text_nonempty) s->at_start = 0;
    const char *surf = t->surf + p->off;
    size_t n = p->len;
    int stripped = 0;
    if (p->kind == SP_PIECE_NORMAL && s->at_start && t->strip_dummy && p->space_prefix) {
        surf++;
        n--;
        stripped = !t->strip_repeat;
    }
    s->prev_stripped = stripped;
    stream_emit(s, surf, n);
    if (n > 0) s->text_nonempty = 1;
}

static void stream_init(tok_stream_t *s, const tokenizer_t *t)
{
    memset(s, 0, sizeof *s);
    s->t = t;
    s->at_start = 1;
    s->cap = 64;
    s->buf = xmalloc(s->cap);
    s->buf[0] = '\0';
}

tok_stream_t *tok_stream_new(const tokenizer_t *t, const int32_t *prompt_ids, int n_prompt)
{
    tok_stream_t *s = xmalloc(sizeof *s);
    stream_init(s, t);
    s->in_prompt = 1;
    for (int i = 0; i < n_prompt; i++)
        if (prompt_ids[i] >= 0 && prompt_ids[i] < t->n_vocab) stream_feed(s, prompt_ids[i]);
    s->in_prompt = 0;
    s->n_pend_ctx = s->n_pend;
    return s;
}

void tok_stream_free(tok_stream_t *s)
{
    if (!s) return;
    free(s->buf);
    free(s);
}

int tok_stream_push(tok_stream_t *s, int32_t id, const char **out)
{
    s->len = 0;
    s->buf[0] = '\0';
    *out = s->buf;
    if (id < 0 || id >= s->t->n_vocab) return -1;
    stream_feed(s, id);
    s->buf[s->len] = '\0';
    *out = s->buf; /* feeding may have grown (moved) the buffer */
    return (int)s->len;
}

int tok_stream_finish(tok_stream_t *s, const char **out)
{
    s->len = 0;
    stream_drain(s, 1);
    s->buf[s->len] = '\0';
    *out = s->buf;
    return (int)s->len;
}

/* --------------------------------------------------------------------------------------------
 * Loading */

/* Decode ids with the stream (tokenizer.json decode; the SentencePiece load-time self-check). */
static char *stream_decode_all(const tokenizer_t *t, const int32_t *ids, int n, size_t *len)
{
    tok_stream_t s;
    stream_init(&s, t);
    for (int i = 0; i < n; i++) stream_feed(&s, ids[i]);
    stream_drain(&s, 1);
    *len = s.len;
    return s.buf;
}

/* Learn how this model's decoder treats the dummy-prefix space (the normalizer flags are not
 * reachable through the processor's API), then check the stream against the library on every
 * id of the vocabulary in order. */
static void probe_decoder(tokenizer_t *t)
{
    int32_t space = tokenizer_piece_to_id(t, SPACE_SYMBOL), probe = -1;
    if (space >= 0 && t->pieces[space].kind == SP_PIECE_NORMAL) probe = space;
    for (int i = 0; probe < 0 && i < t->n_vocab; i++)
        if (t->pieces[i].kind == SP_PIECE_NORMAL && t->pieces[i].space_prefix) probe = i;
    char *text;
    size_t len;
    if (probe >= 0 && sp_model_decode(t->sp, &probe, 1, &text, &len, NULL) == 0) {
        const struct tok_piece *p = &t->pieces[probe];
        t->strip_dummy = len + 1 == p->len && memcmp(text, t->surf + p->off + 1, len) == 0;
        free(text);
    }
    int32_t two[2] = {space, space};
    if (t->strip_dummy && probe == space && sp_model_decode(t->sp, two, 2, &text, &len, NULL) == 0) {
        t->strip_repeat = len == 0;
        free(text);
    }

    int32_t *all = xmalloc((size_t)t->n_vocab * sizeof *all);
    for (int i = 0; i < t->n_vocab; i++) all[i] = i;
    size_t mine_len;
    char *mine = stream_decode_all(t, all, t->n_vocab, &mine_len);
    if (sp_model_decode(t->sp, all, t->n_vocab, &text, &len, NULL) == 0) {
        if (len != mine_len || memcmp(text, mine, len) != 0)
            LOG_W("tokenizer: streamed text may differ from a full decode for this model");
        free(text);
    }
    free(mine);
    free(all);
}

/* SentencePiece: the per-id table from the library, the decoder probe, and the control and
 * unknown pieces as special tokens matched in text. */
static int load_spm(tokenizer_t *t, const char *path, char *err)
{
    int rc = sp_model_load(&t->sp, path, err);
    if (rc < 0) return rc;
    t->n_vocab = sp_model_n_pieces(t->sp);
    sp_model_special_ids(t->sp, &t->bos_id, &t->eos_id, &t->unk_id, &t->pad_id);

    /* Surfaces are never longer than their pieces, except <unk> (" ⁇ ", 5 bytes). */
    size_t cap = 64, used = 0;
    for (int i = 0; i < t->n_vocab; i++) cap += strlen(sp_model_id_to_piece(t->sp, i)) + 8;
    t->surf = xmalloc(cap);
    t->pieces = xcalloc((size_t)t->n_vocab, sizeof *t->pieces);
    struct added_tok *specials = xcalloc((size_t)t->n_vocab, sizeof *specials);
    int n_specials = 0;
    for (int i = 0; i < t->n_vocab; i++) {
        struct tok_piece *p = &t->pieces[i];
        const char *piece = sp_model_id_to_piece(t->sp, i);
        size_t n = strlen(piece);
        p->kind = (uint8_t)sp_model_piece_type(t->sp, i);
        p->off = (uint32_t)used;
        if (p->kind == SP_PIECE_BYTE) {
            unsigned v;
            if (sscanf(piece, "<0x%2X>", &v) != 1 || n != 6) {
                free(specials);
                return set_err(err, -1, "%s: byte piece %d is \"%s\", not <0xNN>", path, i, piece);
            }
            t->surf[used++] = (char)v;
        } else if (p->kind == SP_PIECE_UNKNOWN) {
            char *text;
            size_t len;
            int32_t id = i;
            if (sp_model_decode(t->sp, &id, 1, &text, &len, NULL) == 0) {
                if (used + len > cap) t->surf = xrealloc(t->surf, cap = used + len + 64);
                memcpy(t->surf + used, text, len);
                used += len;
                free(text);
            }
        } else if (p->kind == SP_PIECE_NORMAL) {
            p->space_prefix = strncmp(piece, SPACE_SYMBOL, 3) == 0;
            for (size_t k = 0; k < n;) {
                if (strncmp(piece + k, SPACE_SYMBOL, 3) == 0) {
                    t->surf[used++] = ' ';
                    k += 3;
                } else {
                    t->surf[used++] = piece[k++];
                }
            }
        }
        p->len = (uint32_t)(used - p->off);
        if (p->kind == SP_PIECE_CONTROL || p->kind == SP_PIECE_UNKNOWN)
            specials[n_specials++] = (struct added_tok){piece, n, i, 1, 0, 0, 0};
    }
    t->specials = added_set_new(specials, n_specials);
    free(specials);
    probe_decoder(t);
    return 0;
}

/* tokenizer.json: the per-id table holds each id's decoded bytes; special tokens have none. */
static int load_bpe(tokenizer_t *t, const char *path, const struct hf_tok_config *cfg, char *err)
{
    int rc = bpe_model_load(&t->bpe, path, err);
    if (rc < 0) return rc;
    t->n_vocab = bpe_model_n_ids(t->bpe);
    size_t cap = 64, used = 0, len;
    for (int i = 0; i < t->n_vocab; i++) {
        bpe_model_id_bytes(t->bpe, i, &len);
        cap += len;
    }
    t->surf = xmalloc(cap);
    t->pieces = xcalloc((size_t)t->n_vocab, sizeof *t->pieces);
    for (int i = 0; i < t->n_vocab; i++) {
        struct tok_piece *p = &t->pieces[i];
        const char *b = bpe_model_id_bytes(t->bpe, i, &len);
        p->off = (uint32_t)used;
        p->kind = bpe_model_decode_skips(t->bpe, i) ? SP_PIECE_CONTROL : SP_PIECE_NORMAL;
        if (p->kind == SP_PIECE_NORMAL) {
            memcpy(t->surf + used, b, len);
            used += len;
        }
        p->len = (uint32_t)(used - p->off);
    }
    /* BOS is what the post-processor puts first; the rest come from tokenizer_config.json */
    t->bos_id = bpe_model_prefix_id(t->bpe);
    t->unk_id = bpe_model_unk_id(t->bpe);
    t->eos_id = t->pad_id = -1;
    const char *names[] = {cfg->eos_token, cfg->pad_token, cfg->unk_token};
    int *ids[] = {&t->eos_id, &t->pad_id, &t->unk_id};
    for (int k = 0; k < 3; k++) {
        if (!names[k]) continue;
        int id = bpe_model_piece_to_id(t->bpe, names[k]);
        if (id >= 0) *ids[k] = id;
        else LOG_W("tokenizer_config.json: token \"%s\" is not in %s; ignored", names[k], path);
    }
    return 0;
}

static int is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int tokenizer_load(tokenizer_t **out, const char *path, char *err)
{
    *out = NULL;
    char file[4096], cfg_path[4096];
    struct stat st;
    struct hf_tok_config cfg;
    memset(&cfg, 0, sizeof cfg);
    int is_dir = stat(path, &st) == 0 && S_ISDIR(st.st_mode), rc;
    if (is_dir) {
        snprintf(file, sizeof file, "%s/tokenizer.model", path);
        if (!is_file(file)) snprintf(file, sizeof file, "%s/tokenizer.json", path);
        if (!is_file(file))
            return set_err(err, -1, "%s: no tokenizer.model or tokenizer.json in the model directory", path);
        snprintf(cfg_path, sizeof cfg_path, "%s/tokenizer_config.json", path);
        if (hf_tok_config_read(cfg_path, &cfg, err) < 0) return -1;
    } else {
        snprintf(file, sizeof file, "%s", path);
    }
    size_t n = strlen(file);
    int json = n >= 5 && strcmp(file + n - 5, ".json") == 0;

    tokenizer_t *t = xcalloc(1, sizeof *t);
    t->kind = json ? TOK_BPE : TOK_SPM;
    t->split_special = cfg.split_special_tokens;
    rc = json ? load_bpe(t, file, &cfg, err) : load_spm(t, file, err);
    hf_tok_config_free(&cfg);
    if (rc < 0) {
        tokenizer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void tokenizer_free(tokenizer_t *t)
{
    if (!t) return;
    sp_model_free(t->sp);
    added_set_free(t->specials);
    bpe_model_free(t->bpe);
    free(t->pieces);
    free(t->surf);
    free(t);
}

/* --------------------------------------------------------------------------------------------
 * Vocabulary */

int tokenizer_vocab_size(const tokenizer_t *t) { return t->n_vocab; }
int tokenizer_bos_id(const tokenizer_t *t) { return t->bos_id; }
int tokenizer_eos_id(const tokenizer_t *t) { return t->eos_id; }
int tokenizer_unk_id(const tokenizer_t *t) { return t->unk_id; }
int tokenizer_pad_id(const tokenizer_t *t) { return t->pad_id; }

const char *tokenizer_id_to_piece(const tokenizer_t *t, int32_t id)
{
    if (id < 0 || id >= t->n_vocab) return NULL;
    if (t->kind == TOK_BPE) return bpe_model_id_to_piece(t->bpe, id);
    return sp_model_id_to_piece(t->sp, id);
}

int32_t tokenizer_piece_to_id(const tokenizer_t *t, const char *piece)
{
    if (!piece) return -1;
    if (t->kind == TOK_BPE) return bpe_model_piece_to_id(t->bpe, piece);
    int id = sp_model_piece_to_id(t->sp, piece);
    /* sentencepiece answers the unk id for a piece it does not know */
    if (id < 0 || id >= t->n_vocab || strcmp(sp_model_id_to_piece(t->sp, id), piece) != 0)
        return -1;
    return id;
}

int tokenizer_is_special(const tokenizer_t *t, int32_t id)
{
    if (id < 0 || id >= t->n_vocab) return 0;
    if (t->kind == TOK_BPE) return bpe_model_is_special(t->bpe, id);
    return t->pieces[id].kind == SP_PIECE_CONTROL || t->pieces[id].kind == SP_PIECE_UNKNOWN;
}

int tokenizer_id_to_bytes(const tokenizer_t *t, int32_t id, char *buf, int cap)
{
    if (id < 0 || id >= t->n_vocab) return -1;
    const struct tok_piece *p = &t->pieces[id];
    if (cap < 0 || p->len > (uint32_t)cap) return -1;
    memcpy(buf, t->surf + p->off, p->len);
    return (int)p->len;
}

/* --------------------------------------------------------------------------------------------
 * Encode / decode */

struct spm_enc {
    const tokenizer_t *t;
    int32_t *ids;
    size_t n, cap;
    char *err;
};

static void spm_push(struct spm_enc *e, const int32_t *ids, size_t n)
{
    if (e->n + n > e->cap) {
        e->cap = 2 * (e->n + n) + 16;
        e->ids = xrealloc(e->ids, e->cap * sizeof *e->ids);
    }
    memcpy(e->ids + e->n, ids, n * sizeof *ids);
    e->n += n;
}

static int spm_piece(void *ctx, const char *s, size_t n, int32_t id)
{
    struct spm_enc *e = ctx;
    if (id >= 0) {
        spm_push(e, &id, 1);
        return 0;
    }
    int32_t *part = NULL;
    int k = sp_model_encode(e->t->sp, s, n, &part, e->err);
    if (k < 0) return k;
    spm_push(e, part, (size_t)k);
    free(part);
    return 0;
}

int tokenizer_encode(const tokenizer_t *t, const char *text, size_t len, int add_bos,
                     int32_t **ids, char *err)
{
    *ids = NULL;
    if (len > (size_t)INT_MAX / 2) return set_err(err, -1, "text too long (%zu bytes)", len);
    size_t bad = utf8_valid_prefix(text, len);
    if (bad != len) return set_err(err, -1, "text is not valid UTF-8 (byte %zu)", bad);
    if (t->kind == TOK_BPE) return bpe_model_encode(t->bpe, text, len, add_bos, t->split_special, ids, err);
    struct spm_enc e = {.t = t, .err = err};
    if (add_bos && t->bos_id >= 0) spm_push(&e, &t->bos_id, 1);
    int rc = added_split(t->specials, text, len, t->split_special, spm_piece, &e);
    if (rc < 0 || e.n > INT_MAX) {
        free(e.ids);
        return rc < 0 ? rc : set_err(err, -1, "text too long");
    }
    *ids = e.ids ? e.ids : xmalloc(sizeof(int32_t));
    return (int)e.n;
}

int tokenizer_decode(const tokenizer_t *t, const int32_t *ids, int n, char **out, size_t *out_len,
                     char *err)
{
    *out = NULL;
    if (out_len) *out_len = 0;
    if (n < 0) return set_err(err, -1, "negative id count %d", n);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->n_vocab)
            return set_err(err, -1, "token id %d at position %d is out of range [0, %d)",
                           (int)ids[i], i, t->n_vocab);
    if (t->kind == TOK_BPE) {
        size_t len;
        char *text = stream_decode_all(t, ids, n, &len);
        text[len] = '\0';
        *out = text;
        if (out_len) *out_len = len;
        return 0;
    }
    return sp_model_decode(t->sp, ids, n, out, out_len, err);
}
