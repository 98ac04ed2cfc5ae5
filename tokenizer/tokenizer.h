/* tokenizer.h - the model's tokenizer behind a small C API: SentencePiece (tokenizer.model,
 * through libsentencepiece; sentencepiece.cc is the only C++ file) or a Hugging Face
 * tokenizer.json with a byte-level BPE model (GPT-2, Llama-3, Qwen2/3: bpe.c), encoding and
 * decoding exactly as the `tokenizers` library does.
 *
 * Thread-safety: a loaded tokenizer is read-only (bpe.c's pre-token cache is internally
 * locked); encode/decode/piece lookups may be called from any number of threads at once. A
 * detokenizer (tok_stream) belongs to one request and is used by one thread at a time.
 *
 * Cost (tokenizer.json): encode is O(n log n) in the text length n, whatever the text (a
 * million-character run of one letter is one pre-token and one heap-ordered BPE pass; added
 * tokens cost O(n * longest token)); no call is unbounded: the split regexes run under a match
 * limit and fail with an error past it. */
#ifndef ROPESERVE_TOKENIZER_H
#define ROPESERVE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct tokenizer tokenizer_t;

/* Load a tokenizer. path is a model directory: tokenizer.model (SentencePiece) when it exists,
 * even beside a tokenizer.json (Llama-2 and Mistral ship both, and their tokenizer.json is a
 * SentencePiece-style BPE), else tokenizer.json; tokenizer_config.json, when present, gives the
 * EOS and pad tokens of a tokenizer.json and split_special_tokens. Or path is one file: a
 * ".json" file is a tokenizer.json, anything else a SentencePiece model. Errors name the path,
 * and for tokenizer.json the field ("DIR/tokenizer.json: field 'pre_tokenizer.type': ..."):
 * every type or option that would change the ids and is not implemented is refused. */
int tokenizer_load(tokenizer_t **out, const char *path, char *err);
void tokenizer_free(tokenizer_t *t); /* NULL-safe */

/* Highest id + 1 (a tokenizer.json may leave holes: those ids have no piece and decode to ""). */
int tokenizer_vocab_size(const tokenizer_t *t);
/* The id encode(add_bos) puts first: SentencePiece's BOS; for tokenizer.json the first special
 * token of its post-processor's template (Llama-3: <|begin_of_text|>; Qwen: none). -1 if none. */
int tokenizer_bos_id(const tokenizer_t *t);
int tokenizer_eos_id(const tokenizer_t *t);
int tokenizer_unk_id(const tokenizer_t *t);
int tokenizer_pad_id(const tokenizer_t *t);

/* Encode UTF-8 text (len bytes) into *ids (malloc'd, caller frees). add_bos: add the special
 * tokens the tokenizer adds to a text (HF's add_special_tokens): SentencePiece's BOS, or the
 * tokenizer.json post-processor's template (before and after the text). Special-token text in
 * the input ("<s>", "<|eot_id|>") becomes that token, as Hugging Face and vLLM do, unless
 * tokenizer_config.json sets split_special_tokens. Returns the number of ids, or <0 with err
 * (invalid UTF-8, a regex past its match limit). */
int tokenizer_encode(const tokenizer_t *t, const char *text, size_t len, int add_bos,
                     int32_t **ids, char *err);
/* Decode ids into a malloc'd NUL-terminated string. SentencePiece: as DecodeIds does (leading
 * dummy-prefix space removed, byte pieces merged; invalid UTF-8 becomes U+FFFD per byte).
 * tokenizer.json: as the `tokenizers` library's decode with skip_special_tokens (special tokens
 * left out, the ByteLevel decoder, each maximal invalid UTF-8 subsequence one U+FFFD). Ids out
 * of range give <0 with err. *out_len gets the byte length (may be NULL). */
int tokenizer_decode(const tokenizer_t *t, const int32_t *ids, int n, char **out, size_t *out_len,
                     char *err);

/* The piece of an id ("▁the", "<0x0A>", "<s>"; tokenizer.json: "Ġthe", "<|eot_id|>"); NULL
 * when out of range or a hole. Valid while t lives. */
const char *tokenizer_id_to_piece(const tokenizer_t *t, int32_t id);
/* The id of a piece, or -1. */
int32_t tokenizer_piece_to_id(const tokenizer_t *t, const char *piece);
/* 1 when id is a control token (<s>, </s>, <unk>, ...; tokenizer.json: an added token marked
 * special, such as <|eot_id|>, but not Qwen's <think>) */
int tokenizer_is_special(const tokenizer_t *t, int32_t id);
/* The raw bytes id stands for in a decoded text: byte pieces give their byte, "▁" becomes a
 * space, control tokens give nothing, <unk> gives " ⁇ " (tokenizer.json: the token's bytes,
 * which may be part of a UTF-8 character). Returns the byte count written to buf (<= cap), or
 * -1 when id is out of range or the bytes do not fit in cap. No dummy-prefix stripping (that
 * depends on the context). */
int tokenizer_id_to_bytes(const tokenizer_t *t, int32_t id, char *buf, int cap);

/* Incremental detokenizer for streaming: feed ids one at a time, get back only whole UTF-8
 * characters; bytes of a character split across tokens (byte-fallback pieces, byte-level
 * tokens) are held until it completes. The concatenation of every output plus tok_stream_finish() equals
 * tokenizer_decode() of all ids fed (after the prompt context given at creation). */
typedef struct tok_stream tok_stream_t;
/* prompt_ids: the ids already in the context (may be NULL/0); they decide whether the first
 * generated piece keeps its leading space, as a full decode of prompt+generated would. */
tok_stream_t *tok_stream_new(const tokenizer_t *t, const int32_t *prompt_ids, int n_prompt);
void tok_stream_free(tok_stream_t *s);
/* Append the text completed by id to *out (a malloc'd buffer the stream owns, NUL-terminated,
 * valid until the next call); returns its length (0 when the character is still incomplete), or
 * -1 (and "") for an id out of range. Prompt ids out of range are skipped. If the prompt ends
 * inside a UTF-8 character (byte pieces), a character the generated bytes complete is output
 * whole; if they do not, the prompt's bytes print nothing (decode(prompt) showed them). */
int tok_stream_push(tok_stream_t *s, int32_t id, const char **out);
/* Flush: a dangling incomplete sequence becomes U+FFFD. Returns the length. */
int tok_stream_finish(tok_stream_t *s, const char **out);

/* Check that len bytes are valid UTF-8 (no overlongs, no surrogates). 1 = valid. */
int utf8_valid(const char *s, size_t len);

#endif
