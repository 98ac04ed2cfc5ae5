/* test_tokenizer.c - tokenizer/ against llama.cpp's recorded tokenizations
 * (tests/fixtures/llamacpp/NAME.json), libsentencepiece's own decode, and the streaming
 * detokenizer's contract. Run from the repository root.
 *
 *   build/tests/test_tokenizer                          the unit tests
 *   build/tests/test_tokenizer --encode-file FILE       one line of ids per line of FILE (no
 *                                                       BOS), like spm_encode --output_format=id
 *   build/tests/test_tokenizer --decode-ids "1 2 3"     the decoded text and a newline
 * (--model PATH before either mode picks another model; tests/test_tokenizer_spm.sh uses them.)
 *
 * The stream checks are property tests: thousands of random id sequences (byte-fallback ids
 * forming whole, split and broken UTF-8, controls, ordinary pieces, ids of CJK/emoji text),
 * each streamed id by id and compared with one full decode, with and without a prompt. */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "../tokenizer/tokenizer.h"
#include "test.h"

#define MODEL_PATH "models/demo/tokenizer.model"
#define FIXTURE_DIR "tests/fixtures"
#define BYTE_ID(b) (3 + (b)) /* <0x00> is id 3 in the test model */
#define ID_THE 267           /* "▁the" */
#define ID_SPACE 418         /* "▁" */

static const char *FIXTURES[] = {"llama-gqa-none", "llama-linear-f16", "llama-mha-yarn-theta",
                                 "llama-yarn-bf16"};

/* --------------------------------------------------------------------------------------------
 * Helpers */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rng_u32(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}
static int rng_int(int lo, int hi) { return lo + (int)(rng_u32() % (uint32_t)(hi - lo)); }

static char *read_text_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0, r;
    char *buf = xmalloc(cap);
    while ((r = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += r;
        if (cap - n - 1 == 0) buf = xrealloc(buf, cap *= 2);
    }
    fclose(f);
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

static int json_ids(const cJSON *arr, int32_t **out)
{
    int n = cJSON_GetArraySize(arr);
    *out = xmalloc((size_t)n * sizeof **out);
    for (int i = 0; i < n; i++) (*out)[i] = (int32_t)cJSON_GetArrayItem(arr, i)->valuedouble;
    return n;
}

static int ids_equal(const int32_t *a, int na, const int32_t *b, int nb)
{
    return na == nb && (na == 0 || memcmp(a, b, (size_t)na * sizeof *a) == 0);
}

static char *decode_or_die(const tokenizer_t *t, const int32_t *ids, int n, size_t *len)
{
    char err[ERR_LEN], *text;
    int rc = tokenizer_decode(t, ids, n, &text, len, err);
    CHECK(rc == 0, "decode: %s", err);
    return text;
}

/* Stream ids (after prompt) and return the concatenated output; *chunks_ok is cleared if any
 * output is not valid UTF-8 on its own. */
static char *stream_all(const tokenizer_t *t, const int32_t *prompt, int n_prompt,
                        const int32_t *ids, int n, size_t *len, int *chunks_ok)
{
    tok_stream_t *s = tok_stream_new(t, prompt, n_prompt);
    size_t cap = 64, used = 0;
    char *acc = xmalloc(cap);
    for (int i = 0; i <= n; i++) {
        const char *out;
        int k = i < n ? tok_stream_push(s, ids[i], &out) : tok_stream_finish(s, &out);
        CHECK(k >= 0, "stream push of id %d", (int)ids[i]);
        if (!utf8_valid(out, (size_t)k)) *chunks_ok = 0;
        if (used + (size_t)k + 1 > cap) acc = xrealloc(acc, cap = 2 * (used + (size_t)k + 1));
        memcpy(acc + used, out, (size_t)k);
        used += (size_t)k;
    }
    acc[used] = '\0';
    tok_stream_free(s);
    *len = used;
    return acc;
}

/* --------------------------------------------------------------------------------------------
 * Loading, vocabulary, special ids */

static void test_load_errors(void)
{
    char err[ERR_LEN] = "";
    tokenizer_t *t = (tokenizer_t *)1;
    int rc = tokenizer_load(&t, "no/such/dir/tokenizer.model", err);
    TEST_COND("load: missing file fails", rc < 0 && t == NULL);
    TEST_CONDF(strstr(err, "no/such/dir/tokenizer.model") != NULL, "load: error names path: %s",
               err);
    rc = tokenizer_load(&t, FIXTURE_DIR "/README.md", err);
    TEST_COND("load: non-model file fails", rc < 0 && t == NULL);
    TEST_CONDF(strstr(err, FIXTURE_DIR "/README.md") != NULL, "load: error names path: %s", err);
    tokenizer_free(NULL);
    tok_stream_free(NULL);
}

static void test_vocab(const tokenizer_t *t)
{
    TEST_COND("vocab size 512", tokenizer_vocab_size(t) == 512);
    TEST_COND("bos 1", tokenizer_bos_id(t) == 1);
    TEST_COND("eos 2", tokenizer_eos_id(t) == 2);
    TEST_COND("unk 0", tokenizer_unk_id(t) == 0);
    TEST_COND("pad -1", tokenizer_pad_id(t) == -1);
    TEST_COND("special 0/1/2", tokenizer_is_special(t, 0) && tokenizer_is_special(t, 1) &&
                                   tokenizer_is_special(t, 2));
    TEST_COND("not special 3/267/511", !tokenizer_is_special(t, 3) &&
                                           !tokenizer_is_special(t, ID_THE) &&
                                           !tokenizer_is_special(t, 511));
    TEST_COND("not special out of range", !tokenizer_is_special(t, -1) &&
                                              !tokenizer_is_special(t, 512));

    TEST_COND("piece <s>", strcmp(tokenizer_id_to_piece(t, 1), "<s>") == 0);
    TEST_COND("piece </s>", strcmp(tokenizer_id_to_piece(t, 2), "</s>") == 0);
    TEST_COND("piece <unk>", strcmp(tokenizer_id_to_piece(t, 0), "<unk>") == 0);
    TEST_COND("piece ▁the", strcmp(tokenizer_id_to_piece(t, ID_THE), "\xe2\x96\x81the") == 0);
    TEST_COND("piece <0x0A>", strcmp(tokenizer_id_to_piece(t, BYTE_ID(0x0A)), "<0x0A>") == 0);
    TEST_COND("piece out of range", tokenizer_id_to_piece(t, -1) == NULL &&
                                        tokenizer_id_to_piece(t, 512) == NULL);
    int round_trip = 1;
    for (int id = 0; id < tokenizer_vocab_size(t); id++)
        if (tokenizer_piece_to_id(t, tokenizer_id_to_piece(t, id)) != id) round_trip = 0;
    TEST_COND("piece -> id -> piece for the whole vocabulary", round_trip);
    TEST_COND("piece_to_id <unk> is 0", tokenizer_piece_to_id(t, "<unk>") == 0);
    TEST_COND("piece_to_id unknown piece is -1", tokenizer_piece_to_id(t, "zzqqxx") == -1);
    TEST_COND("piece_to_id empty/NULL is -1", tokenizer_piece_to_id(t, "") == -1 &&
                                                  tokenizer_piece_to_id(t, NULL) == -1);
}

static void test_id_to_bytes(const tokenizer_t *t)
{
    char buf[64];
    int all_bytes = 1;
    for (int b = 0; b < 256; b++) {
        int n = tokenizer_id_to_bytes(t, BYTE_ID(b), buf, sizeof buf);
        if (n != 1 || (unsigned char)buf[0] != b) all_bytes = 0;
    }
    TEST_COND("id_to_bytes: 256 byte pieces give their byte", all_bytes);
    int n = tokenizer_id_to_bytes(t, BYTE_ID(0x0A), buf, sizeof buf);
    TEST_COND("id_to_bytes <0x0A> = \\n", n == 1 && buf[0] == '\n');
    n = tokenizer_id_to_bytes(t, ID_THE, buf, sizeof buf);
    TEST_COND("id_to_bytes ▁the = \" the\"", n == 4 && memcmp(buf, " the", 4) == 0);
    n = tokenizer_id_to_bytes(t, ID_SPACE, buf, sizeof buf);
    TEST_COND("id_to_bytes ▁ = \" \"", n == 1 && buf[0] == ' ');
    TEST_COND("id_to_bytes <s> </s> empty", tokenizer_id_to_bytes(t, 1, buf, sizeof buf) == 0 &&
                                                tokenizer_id_to_bytes(t, 2, buf, sizeof buf) == 0);
    n = tokenizer_id_to_bytes(t, 0, buf, sizeof buf);
    TEST_COND("id_to_bytes <unk> = \" ⁇ \"", n == 5 && memcmp(buf, " \xe2\x81\x87 ", 5) == 0);
    TEST_COND("id_to_bytes out of range", tokenizer_id_to_bytes(t, 512, buf, sizeof buf) < 0 &&
                                              tokenizer_id_to_bytes(t, -1, buf, sizeof buf) < 0);
    TEST_COND("id_to_bytes cap too small", tokenizer_id_to_bytes(t, ID_THE, buf, 3) < 0);

    /* Every piece's bytes = what decode adds for it after a plain "A" (no start-of-text
     * stripping there). Byte pieces >= 0x80 are broken UTF-8 alone: skip those. */
    int agree = 1;
    for (int id = 0; id < tokenizer_vocab_size(t); id++) {
        if (id >= BYTE_ID(0x80) && id <= BYTE_ID(0xFF)) continue;
        int32_t ids[2] = {BYTE_ID('A'), id};
        size_t len;
        char *text = decode_or_die(t, ids, 2, &len);
        n = tokenizer_id_to_bytes(t, id, buf, sizeof buf);
        if (n < 0 || len != (size_t)n + 1 || memcmp(text + 1, buf, (size_t)n) != 0) {
            if (agree) printf("  id %d: id_to_bytes differs from decode\n", id);
            agree = 0;
        }
        free(text);
    }
    TEST_COND("id_to_bytes agrees with decode for every piece", agree);
}

/* --------------------------------------------------------------------------------------------
 * UTF-8, encode / decode errors */

static void test_utf8(void)
{
    static const struct {
        const char *s;
        int len, valid;
    } cases[] = {
        {"", 0, 1},
        {"plain ascii", 11, 1},
        {"a\0b", 3, 1},
        {"Gr\xc3\xb6\xc3\x9f" "e", 6, 1},
        {"\xe6\x97\x8f", 3, 1},                  /* 族 */
        {"\xf0\x9f\x98\x80", 4, 1},              /* 😀 */
        {"\xef\xbf\xbd", 3, 1},                  /* U+FFFD itself */
        {"\xf4\x8f\xbf\xbf", 4, 1},              /* U+10FFFF */
        {"\xee\x80\x80", 3, 1},                  /* U+E000, first after the surrogates */
        {"\xff", 1, 0},
        {"\x80", 1, 0},                          /* lone continuation */
        {"\xc0\x80", 2, 0},                      /* overlong NUL */
        {"\xc1\xbf", 2, 0},                      /* overlong */
        {"\xe0\x80\xaf", 3, 0},                  /* overlong '/' */
        {"\xf0\x8f\xbf\xbf", 4, 0},              /* overlong */
        {"\xed\xa0\x80", 3, 0},                  /* surrogate D800 */
        {"\xed\xbf\xbf", 3, 0},                  /* surrogate DFFF */
        {"\xf4\x90\x80\x80", 4, 0},              /* U+110000 */
        {"\xf5\x80\x80\x80", 4, 0},
        {"\xe6\x97", 2, 0},                      /* truncated */
        {"\xf0\x9f\x98", 3, 0},                  /* truncated */
        {"ok \xe6\x97" "x", 6, 0},               /* bad continuation */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        TEST_CONDF(utf8_valid(cases[i].s, (size_t)cases[i].len) == cases[i].valid,
                   "utf8_valid case %zu", i);
}

static void test_encode_decode_errors(const tokenizer_t *t)
{
    char err[ERR_LEN];
    int32_t *ids = (int32_t *)1;
    static const char *bad[] = {"\xff", "abc \xc0\x80", "\xed\xa0\x80 surrogate", "cut \xe6\x97"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        int n = tokenizer_encode(t, bad[i], strlen(bad[i]), 1, &ids, err);
        TEST_CONDF(n < 0 && ids == NULL && strstr(err, "UTF-8"), "encode invalid UTF-8 %zu: %s",
                   i, err);
    }
    int n = tokenizer_encode(t, "", 0, 0, &ids, err);
    TEST_COND("encode empty text = no ids", n == 0 && ids != NULL);
    free(ids);
    n = tokenizer_encode(t, "", 0, 1, &ids, err);
    TEST_COND("encode empty text with BOS = [1]", n == 1 && ids[0] == 1);
    free(ids);
    n = tokenizer_encode(t, "a\0b", 3, 0, &ids, err);
    TEST_COND("encode text with NUL byte", n == 3 && ids[1] == BYTE_ID(0));
    free(ids);

    char *text = (char *)1;
    size_t len = 7;
    int32_t big[] = {1, ID_THE, 512};
    int rc = tokenizer_decode(t, big, 3, &text, &len, err);
    TEST_CONDF(rc < 0 && text == NULL && strstr(err, "512"), "decode id 512 fails: %s", err);
    int32_t neg[] = {-1};
    rc = tokenizer_decode(t, neg, 1, &text, &len, err);
    TEST_COND("decode id -1 fails", rc < 0 && text == NULL);
    rc = tokenizer_decode(t, NULL, 0, &text, &len, err);
    TEST_COND("decode no ids = \"\"", rc == 0 && len == 0 && text && text[0] == '\0');
    free(text);
    int32_t controls[] = {1, 2, 1};
    rc = tokenizer_decode(t, controls, 3, &text, NULL, err);
    TEST_COND("decode control tokens = \"\"", rc == 0 && text[0] == '\0');
    free(text);
    int32_t the[] = {1, ID_THE, ID_THE};
    rc = tokenizer_decode(t, the, 3, &text, &len, err);
    TEST_COND("decode strips only the first dummy space", rc == 0 && strcmp(text, "the the") == 0);
    free(text);
    int32_t spaces[] = {ID_SPACE, ID_SPACE, ID_THE};
    rc = tokenizer_decode(t, spaces, 3, &text, &len, err);
    TEST_COND("decode ▁ ▁ ▁the = \"  the\"", rc == 0 && strcmp(text, "  the") == 0);
    free(text);
    int32_t broken[] = {BYTE_ID(0xE6), 2, BYTE_ID(0x97), BYTE_ID(0x8F)};
    rc = tokenizer_decode(t, broken, 4, &text, &len, err);
    TEST_COND("decode: a control token breaks a byte run (3 x U+FFFD)",
              rc == 0 && strcmp(text, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd") == 0);
    free(text);
}

/* --------------------------------------------------------------------------------------------
 * llama.cpp fixtures */

/* The stream continuing a recorded prompt with its recorded greedy continuation. */
static void check_stream_after_prompt(const tokenizer_t *t, const int32_t *prompt, int n_prompt,
                                      const int32_t *gen, int n_gen, const char *what)
{
    int32_t *all = xmalloc((size_t)(n_prompt + n_gen) * sizeof *all);
    memcpy(all, prompt, (size_t)n_prompt * sizeof *all);
    memcpy(all + n_prompt, gen, (size_t)n_gen * sizeof *all);
    size_t lp, la, ls;
    char *p = decode_or_die(t, prompt, n_prompt, &lp);
    char *a = decode_or_die(t, all, n_prompt + n_gen, &la);
    int chunks_ok = 1;
    char *s = stream_all(t, prompt, n_prompt, gen, n_gen, &ls, &chunks_ok);
    TEST_CONDF(chunks_ok, "%s: stream chunks are valid UTF-8", what);
    if (lp <= la && memcmp(p, a, lp) == 0)
        TEST_CONDF(ls == la - lp && memcmp(s, a + lp, ls) == 0,
                   "%s: stream = decode(prompt+gen) - decode(prompt)", what);
    free(p);
    free(a);
    free(s);
    free(all);
}

static void test_fixture(const char *name)
{
    char path[512], err[ERR_LEN];
    snprintf(path, sizeof path, FIXTURE_DIR "/llamacpp/%s.json", name);
    char *json_text = read_text_file(path, NULL);
    TEST_CONDF(json_text != NULL, "read %s", path);
    if (!json_text) return;
    cJSON *root = cJSON_Parse(json_text);
    free(json_text);
    TEST_CONDF(root != NULL, "parse %s", path);
    if (!root) return;

    const char *dir = cJSON_GetObjectItem(root, "model_hf_dir")->valuestring;
    snprintf(path, sizeof path, FIXTURE_DIR "/%s/tokenizer.model", dir);
    tokenizer_t *t;
    int rc = tokenizer_load(&t, path, err);
    TEST_CONDF(rc == 0, "load %s: %s", path, err);
    if (rc != 0) {
        cJSON_Delete(root);
        return;
    }

    const cJSON *c;
    int k = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "tokenize_cases"))
    {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        const char *want_text = cJSON_GetObjectItem(c, "sentencepiece_decoded")->valuestring;
        int32_t *want, *want_bos, *got;
        int n_want = json_ids(cJSON_GetObjectItem(c, "llamacpp_ids"), &want);
        int n_want_bos = json_ids(cJSON_GetObjectItem(c, "llamacpp_ids_add_special"), &want_bos);

        int n = tokenizer_encode(t, text, strlen(text), 0, &got, err);
        TEST_CONDF(n >= 0 && ids_equal(got, n, want, n_want), "%s tokenize_cases[%d]: encode",
                   name, k);
        free(got);
        n = tokenizer_encode(t, text, strlen(text), 1, &got, err);
        TEST_CONDF(n >= 0 && ids_equal(got, n, want_bos, n_want_bos),
                   "%s tokenize_cases[%d]: encode with BOS", name, k);
        free(got);

        size_t len;
        char *dec = decode_or_die(t, want, n_want, &len);
        TEST_CONDF(strcmp(dec, want_text) == 0, "%s tokenize_cases[%d]: decode", name, k);
        free(dec);
        dec = decode_or_die(t, want_bos, n_want_bos, &len);
        TEST_CONDF(strcmp(dec, want_text) == 0, "%s tokenize_cases[%d]: decode with BOS", name,
                   k);
        free(dec);

        /* the text streamed one id at a time, after a BOS-only prompt and after none */
        int chunks_ok = 1;
        char *s = stream_all(t, want_bos, 1, want_bos + 1, n_want_bos - 1, &len, &chunks_ok);
        TEST_CONDF(chunks_ok && strcmp(s, want_text) == 0, "%s tokenize_cases[%d]: stream", name,
                   k);
        free(s);
        /* split in the middle: the stream continues the first half's text */
        char what[128];
        snprintf(what, sizeof what, "%s tokenize_cases[%d] split", name, k);
        check_stream_after_prompt(t, want_bos, n_want_bos / 2, want_bos + n_want_bos / 2,
                                  n_want_bos - n_want_bos / 2, what);
        free(want);
        free(want_bos);
        k++;
    }
    TEST_CONDF(k == 5, "%s: 5 tokenize_cases (got %d)", name, k);

    const cJSON *tc = cJSON_GetObjectItem(root, "text_case");
    const char *text = cJSON_GetObjectItem(tc, "text")->valuestring;
    int32_t *want, *got;
    int n_want = json_ids(cJSON_GetObjectItem(tc, "prompt_ids_llamacpp"), &want);
    int n = tokenizer_encode(t, text, strlen(text), 1, &got, err);
    TEST_CONDF(n == 689 && ids_equal(got, n, want, n_want), "%s text_case: encode with BOS (%d)",
               name, n);
    free(got);
    size_t len;
    char *dec = decode_or_die(t, want, n_want, &len);
    TEST_CONDF(strcmp(dec, text) == 0, "%s text_case: decode round trip", name);
    free(dec);
    int32_t *gen;
    int n_gen = json_ids(cJSON_GetObjectItem(tc, "greedy_ids"), &gen);
    check_stream_after_prompt(t, want, n_want, gen, n_gen, "text_case greedy");
    free(gen);
    free(want);

    /* random prompts (byte tokens, BOS/UNK inside) + llama.cpp's greedy continuations */
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases"))
    {
        int32_t *prompt;
        int n_prompt = json_ids(cJSON_GetObjectItem(c, "prompt_ids"), &prompt);
        n_gen = json_ids(cJSON_GetObjectItem(c, "greedy_ids"), &gen);
        char what[160];
        snprintf(what, sizeof what, "%s %s", name, cJSON_GetObjectItem(c, "name")
                                                       ? cJSON_GetObjectItem(c, "name")->valuestring
                                                       : "case");
        check_stream_after_prompt(t, prompt, n_prompt, gen, n_gen, what);
        free(prompt);
        free(gen);
    }
    tokenizer_free(t);
    cJSON_Delete(root);
}

/* --------------------------------------------------------------------------------------------
 * Streaming detokenizer */

static void expect_push(tok_stream_t *s, int32_t id, const char *want, const char *what)
{
    const char *out;
    int n = tok_stream_push(s, id, &out);
    TEST_CONDF(n == (int)strlen(want) && strcmp(out, want) == 0, "%s: push %d gave \"%s\"", what,
               (int)id, out);
}

static void expect_finish(tok_stream_t *s, const char *want, const char *what)
{
    const char *out;
    int n = tok_stream_finish(s, &out);
    TEST_CONDF(n == (int)strlen(want) && strcmp(out, want) == 0, "%s: finish gave \"%s\"", what,
               out);
}

static void test_stream_examples(const tokenizer_t *t)
{
    tok_stream_t *s = tok_stream_new(t, NULL, 0);
    expect_push(s, 1, "", "no prompt");
    expect_push(s, ID_THE, "the", "no prompt");
    expect_push(s, BYTE_ID(0xE6), "", "no prompt");
    expect_push(s, BYTE_ID(0x97), "", "no prompt");
    expect_push(s, BYTE_ID(0x8F), "\xe6\x97\x8f", "no prompt");
    expect_push(s, BYTE_ID(0xF0), "", "no prompt");
    expect_push(s, BYTE_ID(0x9F), "", "no prompt");
    expect_finish(s, "\xef\xbf\xbd\xef\xbf\xbd", "dangling F0 9F");
    const char *out;
    TEST_COND("push out-of-range id = -1", tok_stream_push(s, 512, &out) == -1 && out[0] == 0);
    tok_stream_free(s);

    int32_t prompt[] = {1, ID_THE};
    s = tok_stream_new(t, prompt, 2);
    expect_push(s, ID_THE, " the", "after \"the\"");
    expect_push(s, BYTE_ID('!'), "!", "after \"the\"");
    expect_push(s, BYTE_ID(0xE6), "", "after \"the\"");
    expect_push(s, BYTE_ID('x'), "\xef\xbf\xbdx", "broken sequence");
    expect_finish(s, "", "nothing pending");
    tok_stream_free(s);

    s = tok_stream_new(t, NULL, 0);
    expect_push(s, ID_SPACE, "", "▁ ▁ ▁the");
    expect_push(s, ID_SPACE, " ", "▁ ▁ ▁the");
    expect_push(s, ID_THE, " the", "▁ ▁ ▁the");
    tok_stream_free(s);

    int32_t bos_only[] = {1};
    s = tok_stream_new(t, bos_only, 1);
    expect_push(s, ID_THE, "the", "after BOS only");
    tok_stream_free(s);

    char err[ERR_LEN];
    int32_t *ids;
    int n = tokenizer_encode(t, "Hello", 5, 1, &ids, err);
    s = tok_stream_new(t, ids, n);
    expect_push(s, ID_THE, " the", "after \"Hello\"");
    tok_stream_free(s);
    free(ids);

    /* the prompt ends inside a character: the generated bytes complete it */
    int32_t cut[] = {1, ID_THE, BYTE_ID(0xE6)};
    s = tok_stream_new(t, cut, 3);
    expect_push(s, BYTE_ID(0x97), "", "prompt ends in E6");
    expect_push(s, BYTE_ID(0x8F), "\xe6\x97\x8f", "prompt ends in E6");
    tok_stream_free(s);
    s = tok_stream_new(t, cut, 3);
    expect_push(s, ID_THE, " the", "prompt ends in E6, then a piece");
    expect_finish(s, "", "prompt ends in E6, then a piece");
    tok_stream_free(s);
}

/* One random id sequence; ids from encoded CJK/emoji text are in pool. */
static int random_ids(int32_t *ids, int cap, const int32_t *pool, int n_pool)
{
    int n = 0, want = rng_int(1, cap - 8);
    while (n < want) {
        int kind = rng_int(0, 100);
        if (kind < 30) { /* a whole UTF-8 character as byte pieces */
            uint32_t cp;
            int r = rng_int(0, 3);
            if (r == 0) cp = (uint32_t)rng_int(0x80, 0x800);
            else if (r == 1) cp = (uint32_t)rng_int(0x800, 0x10000);
            else cp = (uint32_t)rng_int(0x10000, 0x110000);
            if (cp >= 0xD800 && cp < 0xE000) cp = 0x65E5;
            unsigned char b[4];
            int m;
            if (cp < 0x800) {
                b[0] = (unsigned char)(0xC0 | cp >> 6), b[1] = (unsigned char)(0x80 | (cp & 0x3F));
                m = 2;
            } else if (cp < 0x10000) {
                b[0] = (unsigned char)(0xE0 | cp >> 12);
                b[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
                b[2] = (unsigned char)(0x80 | (cp & 0x3F));
                m = 3;
            } else {
                b[0] = (unsigned char)(0xF0 | cp >> 18);
                b[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
                b[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
                b[3] = (unsigned char)(0x80 | (cp & 0x3F));
                m = 4;
            }
            /* sometimes cut it short or corrupt one byte */
            if (rng_int(0, 6) == 0) m = rng_int(1, m + 1);
            if (rng_int(0, 10) == 0) b[rng_int(0, m)] = (unsigned char)rng_int(0, 256);
            for (int i = 0; i < m; i++) ids[n++] = BYTE_ID(b[i]);
        } else if (kind < 45) {
            ids[n++] = BYTE_ID(rng_int(0, 256));
        } else if (kind < 52) {
            ids[n++] = rng_int(0, 3);
        } else if (kind < 57) {
            ids[n++] = ID_SPACE;
        } else if (kind < 85) {
            ids[n++] = rng_int(259, 512);
        } else {
            int at = rng_int(0, n_pool), m = rng_int(1, 8);
            for (int i = 0; i < m && at + i < n_pool; i++) ids[n++] = pool[at + i];
        }
    }
    return n;
}

static void test_stream_random(const tokenizer_t *t)
{
    static const char pool_text[] =
        "吾輩は猫である。名前はまだ無い。 Family 👨‍👩‍👧‍👦, flag 🏳️‍🌈, coder 🧑🏽‍💻, "
        "thumbs 👍. Größe Grüße – schön 東京タワー 😀 한국어 текст";
    char err[ERR_LEN];
    int32_t *pool;
    int n_pool = tokenizer_encode(t, pool_text, strlen(pool_text), 0, &pool, err);
    CHECK(n_pool > 0, "encode pool: %s", err);

    enum { N_SEQ = 4000, CAP = 64 };
    int32_t ids[CAP];
    int bad_whole = 0, bad_chunks = 0, bad_prompt = 0, n_prefix = 0;
    for (int it = 0; it < N_SEQ; it++) {
        int n = random_ids(ids, CAP, pool, n_pool);
        size_t la, ls;
        char *a = decode_or_die(t, ids, n, &la);
        int chunks_ok = 1;
        char *s = stream_all(t, NULL, 0, ids, n, &ls, &chunks_ok);
        if (ls != la || memcmp(s, a, la) != 0) {
            if (bad_whole < 3) {
                printf("  stream != decode for ids:");
                for (int i = 0; i < n; i++) printf(" %d", (int)ids[i]);
                printf("\n");
            }
            bad_whole++;
        }
        if (!chunks_ok) bad_chunks++;
        free(s);

        /* the same ids split into prompt + generated at a random point */
        int k = rng_int(0, n + 1);
        size_t lp;
        char *p = decode_or_die(t, ids, k, &lp);
        chunks_ok = 1;
        s = stream_all(t, ids, k, ids + k, n - k, &ls, &chunks_ok);
        if (!chunks_ok) bad_chunks++;
        if (lp <= la && memcmp(p, a, lp) == 0) {
            n_prefix++;
            if (ls != la - lp || memcmp(s, a + lp, ls) != 0) {
                if (bad_prompt < 3) {
                    printf("  stream after prompt (k=%d) wrong for ids:", k);
                    for (int i = 0; i < n; i++) printf(" %d", (int)ids[i]);
                    printf("\n");
                }
                bad_prompt++;
            }
        }
        free(p);
        free(s);
        free(a);
    }
    TEST_CONDF(bad_whole == 0, "stream = decode on %d random sequences (%d differ)", N_SEQ,
               bad_whole);
    TEST_CONDF(bad_chunks == 0, "every streamed chunk is valid UTF-8 (%d bad)", bad_chunks);
    TEST_CONDF(bad_prompt == 0 && n_prefix > N_SEQ / 2,
               "stream after a prompt = decode(all) - decode(prompt) (%d of %d differ)",
               bad_prompt, n_prefix);
    free(pool);
}

/* --------------------------------------------------------------------------------------------
 * Threads: one tokenizer, many concurrent encodes and decodes */

struct thread_job {
    const tokenizer_t *t;
    const char *text;
    const int32_t *want;
    int n_want;
    int ok;
};

static void *thread_main(void *arg)
{
    struct thread_job *j = arg;
    char err[ERR_LEN];
    j->ok = 1;
    for (int it = 0; it < 30; it++) {
        int32_t *ids;
        int n = tokenizer_encode(j->t, j->text, strlen(j->text), 1, &ids, err);
        if (n < 0 || !ids_equal(ids, n, j->want, j->n_want)) j->ok = 0;
        char *text;
        if (n >= 0 && tokenizer_decode(j->t, ids, n, &text, NULL, err) == 0) {
            if (strcmp(text, j->text) != 0) j->ok = 0;
            free(text);
        } else {
            j->ok = 0;
        }
        free(ids);
    }
    return NULL;
}

static void test_threads(const tokenizer_t *t)
{
    char path[] = FIXTURE_DIR "/llamacpp/llama-gqa-none.json", err[ERR_LEN];
    char *json_text = read_text_file(path, NULL);
    CHECK(json_text, "read %s", path);
    cJSON *root = cJSON_Parse(json_text);
    free(json_text);
    CHECK(root, "parse %s", path);
    const char *text = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "text_case"), "text")
                           ->valuestring;
    int32_t *want;
    int n_want = tokenizer_encode(t, text, strlen(text), 1, &want, err);
    CHECK(n_want > 0, "%s", err);

    enum { N_THREADS = 8 };
    pthread_t th[N_THREADS];
    struct thread_job jobs[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        jobs[i] = (struct thread_job){t, text, want, n_want, 0};
        pthread_create(&th[i], NULL, thread_main, &jobs[i]);
    }
    int ok = 1;
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(th[i], NULL);
        ok &= jobs[i].ok;
    }
    TEST_COND("8 threads encode + decode the text case concurrently", ok);
    free(want);
    cJSON_Delete(root);
}

/* --------------------------------------------------------------------------------------------
 * Command-line modes for tests/test_tokenizer_spm.sh */

static int cli_encode_file(const tokenizer_t *t, const char *path)
{
    size_t len;
    char *buf = read_text_file(path, &len), err[ERR_LEN];
    if (!buf) {
        fprintf(stderr, "%s: cannot read\n", path);
        return 1;
    }
    int rc = 0;
    for (size_t at = 0; at < len;) {
        const char *nl = memchr(buf + at, '\n', len - at);
        size_t line_len = nl ? (size_t)(nl - (buf + at)) : len - at;
        int32_t *ids;
        int n = tokenizer_encode(t, buf + at, line_len, 0, &ids, err);
        if (n < 0) {
            fprintf(stderr, "encode: %s\n", err);
            printf("ERROR\n");
            rc = 1;
        } else {
            for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", (int)ids[i]);
            printf("\n");
            free(ids);
        }
        at += line_len + 1;
    }
    free(buf);
    return rc;
}

static int cli_decode_ids(const tokenizer_t *t, const char *list)
{
    int32_t *ids = xmalloc((strlen(list) / 2 + 1) * sizeof *ids);
    int n = 0;
    char *end;
    for (const char *p = list;; p = end) {
        long v = strtol(p, &end, 10);
        if (end == p) break;
        ids[n++] = (int32_t)v;
    }
    char err[ERR_LEN], *text;
    size_t len;
    int rc = tokenizer_decode(t, ids, n, &text, &len, err);
    free(ids);
    if (rc < 0) {
        fprintf(stderr, "decode: %s\n", err);
        return 1;
    }
    fwrite(text, 1, len, stdout);
    printf("\n");
    free(text);
    return 0;
}

int main(int argc, char **argv)
{
    const char *model = MODEL_PATH;
    char err[ERR_LEN];
    if (argc >= 3 && strcmp(argv[1], "--model") == 0) {
        model = argv[2];
        argc -= 2;
        argv += 2;
    }
    tokenizer_t *t;
    if (tokenizer_load(&t, model, err) != 0) {
        printf("FAIL load: %s\n", err);
        printf("test_tokenizer: 0 passed, 1 failed\n");
        return 1;
    }
    if (argc == 3 && (strcmp(argv[1], "--encode-file") == 0 ||
                      strcmp(argv[1], "--decode-ids") == 0)) {
        int rc = argv[1][2] == 'e' ? cli_encode_file(t, argv[2]) : cli_decode_ids(t, argv[2]);
        tokenizer_free(t);
        return rc;
    }
    if (argc != 1) {
        fprintf(stderr, "usage: %s [--model PATH] [--encode-file FILE | --decode-ids \"IDS\"]\n",
                argv[0]);
        tokenizer_free(t);
        return 2;
    }

    test_load_errors();
    test_vocab(t);
    test_id_to_bytes(t);
    test_utf8();
    test_encode_decode_errors(t);
    for (size_t i = 0; i < sizeof FIXTURES / sizeof FIXTURES[0]; i++) test_fixture(FIXTURES[i]);
    test_stream_examples(t);
    test_stream_random(t);
    test_threads(t);
    tokenizer_free(t);
    return test_report("test_tokenizer");
}
