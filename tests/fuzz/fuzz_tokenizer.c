/* fuzz_tokenizer.c - the tokenizer's input path: text -> ids -> text for a SentencePiece model
 * (models/demo/tokenizer.model) and a byte-level BPE tokenizer.json (tests/fixtures/tokenizers/
 * llama3-bos.json), and arbitrary ids -> text (decode and the streaming detokenizer). The first
 * byte picks the tokenizer and the mode. Invalid UTF-8 must be refused, never crash. */
#include "fuzz.h"
#include "../../tokenizer/tokenizer.h"

static tokenizer_t *toks[2];

static void load(void)
{
    if (toks[0]) return;
    const char *files[2] = {"models/demo/tokenizer.model", "tests/fixtures/tokenizers/llama3-bos.json"};
    for (int i = 0; i < 2; i++) {
        char path[512], err[ERR_LEN];
        snprintf(path, sizeof path, "%s/%s", fuzz_root(), files[i]);
        if (tokenizer_load(&toks[i], path, err)) {
            fprintf(stderr, "fuzz_tokenizer: %s (run from the repository root or set ROPESERVE_ROOT)\n", err);
            exit(1);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    log_min_level = LOG_ERROR;
    load();
    const tokenizer_t *t = toks[data[0] & 1];
    int mode = (data[0] >> 1) & 3;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    char err[ERR_LEN];
    if (mode < 2) {
        int32_t *ids = NULL;
        int n = tokenizer_encode(t, text, len, mode, &ids, err);
        if (n < 0) {
            FUZZ_ASSERT(!utf8_valid(text, len) || err[0]);
            return 0;
        }
        FUZZ_ASSERT(utf8_valid(text, len));
        for (int i = 0; i < n; i++) FUZZ_ASSERT(ids[i] >= 0 && ids[i] < tokenizer_vocab_size(t));
        char *out = NULL;
        size_t olen = 0;
        FUZZ_ASSERT(tokenizer_decode(t, ids, n, &out, &olen, err) == 0);
        FUZZ_ASSERT(utf8_valid(out, olen));
        free(out);
        free(ids);
        return 0;
    }
    /* the bytes as ids (some out of range) */
    int n = (int)(len / 2);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n + 1));
    int vs = tokenizer_vocab_size(t);
    for (int i = 0; i < n; i++) ids[i] = (int32_t)(((uint32_t)(uint8_t)text[2 * i] << 8 | (uint8_t)text[2 * i + 1]) % (uint32_t)(vs + 8));
    char *out = NULL;
    size_t olen = 0;
    if (tokenizer_decode(t, ids, n, &out, &olen, err) == 0) {
        FUZZ_ASSERT(utf8_valid(out, olen));
        free(out);
    }
    tok_stream_t *s = tok_stream_new(t, ids, n / 2);
    for (int i = n / 2; i < n; i++) {
        const char *o;
        tok_stream_push(s, ids[i], &o);
    }
    const char *o;
    tok_stream_finish(s, &o);
    tok_stream_free(s);
    free(ids);
    return 0;
}
