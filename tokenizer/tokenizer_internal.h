/* tokenizer_internal.h - the seams inside tokenizer/: tokenizer.c (C11: the tokenizer.h API, UTF-8,
 * the streaming detokenizer) on top of sentencepiece.cc (the only C++ file: a thin extern "C"
 * wrapper around libsentencepiece's SentencePieceProcessor), bpe.c (tokenizer.json) and added.c
 * (added/special tokens in text). Included by those files only.
 *
 * Every sp_model function is safe to call from many threads at once on one loaded model: they
 * only call const SentencePieceProcessor methods. All functions catch C++ exceptions; none
 * crosses into C. */
#ifndef ROPESERVE_TOKENIZER_INTERNAL_H
#define ROPESERVE_TOKENIZER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct sp_model;

/* What a piece is to sentencepiece's decoder (ModelProto::SentencePiece::Type, folded). */
enum sp_piece_type {
    SP_PIECE_NORMAL = 0,  /* text; U+2581 "▁" stands for a space (also USER_DEFINED, UNUSED) */
    SP_PIECE_CONTROL = 1, /* <s>, </s>: no text */
    SP_PIECE_UNKNOWN = 2, /* <unk>: decodes to the unk surface (" ⁇ ") */
    SP_PIECE_BYTE = 3,    /* <0xNN>: one raw byte; runs of them are decoded as UTF-8 */
};

/* Load a .model file. Errors name the path. */
int sp_model_load(struct sp_model **out, const char *path, char *err);
void sp_model_free(struct sp_model *m); /* NULL-safe */

int sp_model_n_pieces(const struct sp_model *m);
/* The model's special ids, -1 where it has none (sentencepiece's bos_id() etc.). */
void sp_model_special_ids(const struct sp_model *m, int *bos, int *eos, int *unk, int *pad);
/* 0 <= id < n_pieces (not checked). The string lives as long as m. */
const char *sp_model_id_to_piece(const struct sp_model *m, int id);
/* sentencepiece's PieceToId: the unk id for a piece that is not in the vocabulary. */
int sp_model_piece_to_id(const struct sp_model *m, const char *piece);
enum sp_piece_type sp_model_piece_type(const struct sp_model *m, int id);

/* Encode len bytes (no BOS/EOS) into *ids (xmalloc'd, caller frees). Returns the count or <0. */
int sp_model_encode(const struct sp_model *m, const char *text, size_t len, int32_t **ids,
                    char *err);
/* DecodeIds into *out (xmalloc'd, NUL-terminated, *out_len bytes). 0 or <0 (id out of range). */
int sp_model_decode(const struct sp_model *m, const int32_t *ids, int n, char **out,
                    size_t *out_len, char *err);

/* --------------------------------------------------------------------------------------------
 * added.c: added and special tokens matched in text before the model sees it (both kinds of
 * tokenizer). A set is read-only once built; added_split may run on many threads at once. */

struct added_tok {
    const char *content; /* the text matched: not NUL-terminated, len bytes */
    size_t len;
    int32_t id;
    uint8_t special;     /* skipped when the caller splits special tokens as text */
    uint8_t single_word; /* only matches with no word character on either side */
    uint8_t lstrip;      /* swallows the whitespace before it */
    uint8_t rstrip;      /* swallows the whitespace after it */
};
struct added_set;
/* Copies the contents; empty ones are ignored. */
struct added_set *added_set_new(const struct added_tok *toks, int n);
void added_set_free(struct added_set *a); /* NULL-safe */
int added_set_size(const struct added_set *a); /* 0 for NULL */
/* A piece of the split text: id >= 0 for a token (s, n: the text it covers), -1 for plain text
 * (n > 0). A negative return stops the split and is returned by added_split. */
typedef int (*added_split_cb)(void *ctx, const char *s, size_t n, int32_t id);
/* Split valid UTF-8 text into plain pieces and tokens, in order; a NULL set gives one piece.
 * skip_special: special tokens stay text. Returns 0 or the callback's negative code. */
int added_split(const struct added_set *a, const char *text, size_t len, int skip_special,
                added_split_cb cb, void *ctx);

/* Unicode helpers (added.c; categories from utf8proc). */
enum ucat { UCAT_OTHER = 0, UCAT_L, UCAT_M, UCAT_ND, UCAT_NL, UCAT_NO, UCAT_PC };
enum ucat unicode_category(uint32_t c);
int unicode_is_space(uint32_t c); /* White_Space (Rust regex and Oniguruma \s) */

/* --------------------------------------------------------------------------------------------
 * bpe.c: a Hugging Face tokenizer.json (byte-level BPE). Read-only once loaded; every function
 * may be called from many threads at once. */

struct bpe_model;

/* What tokenizer_config.json says (the fields the tokenizer uses). Strings are xmalloc'd or NULL. */
struct hf_tok_config {
    char *bos_token, *eos_token, *unk_token, *pad_token;
    int split_special_tokens; /* special-token text is encoded as text */
};
/* Read path; a missing file leaves *c zeroed and returns 0. Errors name the file and field. */
int hf_tok_config_read(const char *path, struct hf_tok_config *c, char *err);
void hf_tok_config_free(struct hf_tok_config *c);

/* Load tokenizer.json. Errors name the path and the JSON field (every type, option and field
 * that would change the ids and is not implemented is refused). */
int bpe_model_load(struct bpe_model **out, const char *path, char *err);
void bpe_model_free(struct bpe_model *m); /* NULL-safe */
int bpe_model_n_ids(const struct bpe_model *m); /* highest id + 1 (ids may have holes) */
/* The token string of id (vocabulary form, "Ġthe"; added tokens: their content); NULL for a hole. */
const char *bpe_model_id_to_piece(const struct bpe_model *m, int id);
int bpe_model_piece_to_id(const struct bpe_model *m, const char *piece); /* -1 if none */
int bpe_model_is_special(const struct bpe_model *m, int id); /* an added token with special */
/* Decode (skip_special_tokens) leaves id out: special, unless normalized to another form. */
int bpe_model_decode_skips(const struct bpe_model *m, int id);
/* The bytes id decodes to on its own (the ByteLevel decoder's output, before UTF-8 repair). */
const char *bpe_model_id_bytes(const struct bpe_model *m, int id, size_t *len);
/* The ids the post-processor puts before the text (Llama-3: <|begin_of_text|>), -1 if none;
 * the unk token, -1 if none. */
int bpe_model_prefix_id(const struct bpe_model *m);
int bpe_model_unk_id(const struct bpe_model *m);
/* Encode valid UTF-8. add_special: apply the post-processor's template; split_special: special
 * tokens' text is encoded as text. *ids xmalloc'd. Returns the count or <0 with err. */
int bpe_model_encode(const struct bpe_model *m, const char *text, size_t len, int add_special,
                     int split_special, int32_t **ids, char *err);

#ifdef __cplusplus
}
#endif

#endif
