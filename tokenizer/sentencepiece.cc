/* sentencepiece.cc - the only C++ file in ropeserve: libsentencepiece's SentencePieceProcessor
 * behind the extern "C" functions of tokenizer_internal.h. Everything else in the tokenizer
 * (ids <-> pieces tables, BOS handling, UTF-8 checks, the streaming detokenizer) is C in
 * tokenizer.c; this file only translates types, statuses and exceptions.
 *
 * Invariants:
 *   - No C++ exception leaves this file: every entry point catches and turns it into an int
 *     error with a message in err (an allocation failure inside the library included).
 *   - After load the processor is only used through const methods (Encode, Decode, IdToPiece,
 *     PieceToId, Is*), which sentencepiece documents as safe to call concurrently.
 *
 * Rejected: linking sentencepiece's protobuf headers to read the ModelProto directly (Debian
 * ships only sentencepiece_processor.h; the processor's own accessors are enough); writing our
 * own BPE encoder (the library is the reference the fixtures were recorded against). */
#include <sentencepiece_processor.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

extern "C" {
#include "../common/common.h"
}
#include "tokenizer_internal.h"

struct sp_model {
    sentencepiece::SentencePieceProcessor proc;
};

extern "C" int sp_model_load(struct sp_model **out, const char *path, char *err)
{
    *out = nullptr;
    /* Check the file first so the common error reads "PATH: No such file or directory" and not
     * the library's longer message. */
    FILE *f = fopen(path, "rb");
    if (!f) return set_err(err, -1, "%s: %s", path, strerror(errno));
    fclose(f);

    sp_model *m = nullptr;
    try {
        m = new sp_model();
        const auto st = m->proc.Load(path);
        if (!st.ok()) {
            set_err(err, -1, "%s: not a sentencepiece model (%s)", path, st.ToString().c_str());
            delete m;
            return -1;
        }
        if (m->proc.GetPieceSize() <= 0) {
            set_err(err, -1, "%s: sentencepiece model has no pieces", path);
            delete m;
            return -1;
        }
    } catch (const std::exception &e) {
        delete m;
        return set_err(err, -1, "%s: %s", path, e.what());
    } catch (...) {
        delete m;
        return set_err(err, -1, "%s: unknown error loading sentencepiece model", path);
    }
    *out = m;
    return 0;
}

extern "C" void sp_model_free(struct sp_model *m)
{
    delete m;
}

extern "C" int sp_model_n_pieces(const struct sp_model *m)
{
    return m->proc.GetPieceSize();
}

extern "C" void sp_model_special_ids(const struct sp_model *m, int *bos, int *eos, int *unk,
                                     int *pad)
{
    *bos = m->proc.bos_id();
    *eos = m->proc.eos_id();
    *unk = m->proc.unk_id();
    *pad = m->proc.pad_id();
}

extern "C" const char *sp_model_id_to_piece(const struct sp_model *m, int id)
{
    return m->proc.IdToPiece(id).c_str();
}

extern "C" int sp_model_piece_to_id(const struct sp_model *m, const char *piece)
{
    try {
        return m->proc.PieceToId(piece);
    } catch (...) {
        return -1;
    }
}

extern "C" enum sp_piece_type sp_model_piece_type(const struct sp_model *m, int id)
{
    if (m->proc.IsByte(id)) return SP_PIECE_BYTE;
    if (m->proc.IsControl(id)) return SP_PIECE_CONTROL;
    if (m->proc.IsUnknown(id)) return SP_PIECE_UNKNOWN;
    return SP_PIECE_NORMAL;
}

extern "C" int sp_model_encode(const struct sp_model *m, const char *text, size_t len,
                               int32_t **ids, char *err)
{
    *ids = nullptr;
    try {
        std::vector<int> v;
        const auto st = m->proc.Encode(absl::string_view(text, len), &v);
        if (!st.ok()) return set_err(err, -1, "sentencepiece encode: %s", st.ToString().c_str());
        if (v.size() > (size_t)0x7fffffff) return set_err(err, -1, "text too long to encode");
        int32_t *p = (int32_t *)xmalloc(v.size() * sizeof *p);
        for (size_t i = 0; i < v.size(); i++) p[i] = v[i];
        *ids = p;
        return (int)v.size();
    } catch (const std::exception &e) {
        return set_err(err, -1, "sentencepiece encode: %s", e.what());
    } catch (...) {
        return set_err(err, -1, "sentencepiece encode: unknown error");
    }
}

extern "C" int sp_model_decode(const struct sp_model *m, const int32_t *ids, int n, char **out,
                               size_t *out_len, char *err)
{
    *out = nullptr;
    try {
        std::vector<int> v(ids, ids + n);
        std::string s;
        const auto st = m->proc.Decode(v, &s);
        if (!st.ok()) return set_err(err, -1, "sentencepiece decode: %s", st.ToString().c_str());
        char *p = (char *)xmalloc(s.size() + 1);
        memcpy(p, s.data(), s.size());
        p[s.size()] = '\0';
        *out = p;
        if (out_len) *out_len = s.size();
        return 0;
    } catch (const std::exception &e) {
        return set_err(err, -1, "sentencepiece decode: %s", e.what());
    } catch (...) {
        return set_err(err, -1, "sentencepiece decode: unknown error");
    }
}
