/* tokenizer_internal.h - the seam between tokenizer.c (C11: the tokenizer.h API, UTF-8, the
 * streaming detokenizer) and sentencepiece.cc (the only C++ file: a thin extern "C" wrapper
 * around libsentencepiece's SentencePieceProcessor). Included by those two files only.
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

#ifdef __cplusplus
}
#endif

#endif
