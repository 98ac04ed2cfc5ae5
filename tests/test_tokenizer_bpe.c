/* test_tokenizer_bpe.c - tokenizer/bpe.c (tokenizer.json) through the tokenizer.h API.
 *
 *   build/tests/test_tokenizer_bpe                      the offline tests: small tokenizer.json
 *        files (tests/fixtures/tokenizers/) against the ids Hugging Face tokenizers gave for
 *        them (expected.json, made by tests/tokenizers/make_fixtures.mjs), files that must be
 *        refused with a message naming the field, the streaming detokenizer, threads
 *   build/tests/test_tokenizer_bpe --reference REF.json  the real Llama-3.1 / Qwen3 files against
 *        the reference's ids and decodes (tests/tokenizers/reference.mjs makes REF.json;
 *        tests/test_tokenizer_bpe.sh runs both)
 *   build/tests/test_tokenizer_bpe --bench DIR TEXT     encode throughput (MB/s) of DIR's
 *        tokenizer on the file TEXT (a benchmark, not a test; tools/bench_tokenizer.sh)
 *   build/tests/test_tokenizer_bpe --bench-adversarial DIR   encode cost on long runs
 * Run from the repository root. */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/common.h"
#include "../tokenizer/tokenizer.h"
#include "test.h"

#define FIXTURES "tests/fixtures/tokenizers"

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

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0, r;
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

static cJSON *read_json(const char *path)
{
    size_t n;
    char *s = read_file(path, &n);
    if (!s) return NULL;
    cJSON *j = cJSON_ParseWithLength(s, n);
    free(s);
    return j;
}

/* A hex string's bytes (xmalloc'd, NUL-terminated; the text may contain NUL). */
static char *unhex(const char *h, size_t *len)
{
    size_t n = strlen(h) / 2;
    char *out = xmalloc(n + 1);
    for (size_t i = 0; i < n; i++) { /* not sscanf: it measures the whole string each call */
        int v = 0;
        for (int k = 0; k < 2; k++) {
            char c = h[2 * i + (size_t)k];
            v = 16 * v + (c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
        }
        out[i] = (char)v;
    }
    out[n] = '\0';
    *len = n;
    return out;
}

static int json_ids(const cJSON *arr, int32_t **out)
{
    int n = cJSON_GetArraySize(arr);
    *out = xmalloc((size_t)(n ? n : 1) * sizeof **out);
    const cJSON *it;
    int i = 0;
    cJSON_ArrayForEach(it, arr) (*out)[i++] = (int32_t)it->valuedouble;
    return n;
}

/* First index where a and b differ (or the shorter length), -1 when equal. */
static long first_diff(const int32_t *a, int na, const int32_t *b, int nb)
{
    int n = na < nb ? na : nb;
    for (int i = 0; i < n; i++)
        if (a[i] != b[i]) return i;
    return na == nb ? -1 : n;
}

static void print_diff(const char *what, const int32_t *got, int ng, const int32_t *ref, int nr)
{
    long d = first_diff(got, ng, ref, nr);
    printf("  %s: %d ids (reference %d), first difference at %ld:\n    ours:", what, ng, nr, d);
    for (long i = d > 3 ? d - 3 : 0; i < d + 6 && i < ng; i++) printf(" %d", (int)got[i]);
    printf("\n    ref: ");
    for (long i = d > 3 ? d - 3 : 0; i < d + 6 && i < nr; i++) printf(" %d", (int)ref[i]);
    printf("\n");
}

/* Stream ids id by id; the concatenation, and whether every chunk was whole UTF-8. */
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
 * Against the reference (--reference) */

static void check_encode_case(const tokenizer_t *t, const char *tname, const cJSON *c,
                              long *n_ids, int *n_cases)
{
    const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
    const cJSON *text = cJSON_GetObjectItem(c, "text");
    size_t len = strlen(text->valuestring);
    char err[ERR_LEN];
    int32_t *ref, *got;
    int nr = json_ids(cJSON_GetObjectItem(c, "ids"), &ref);
    int ng = tokenizer_encode(t, text->valuestring, len, 0, &got, err);
    (*n_cases)++;
    if (ng < 0) {
        TEST_CONDF(0, "%s/%s: encode failed: %s", tname, name, err);
    } else {
        int same = first_diff(got, ng, ref, nr) < 0;
        TEST_CONDF(same, "%s/%s: ids identical to the reference", tname, name);
        if (!same) print_diff("ids", got, ng, ref, nr);
        *n_ids += nr;
        /* decode of the reference ids */
        char *dec;
        size_t dlen;
        size_t wlen;
        char *want = unhex(cJSON_GetObjectItem(c, "decoded_hex")->valuestring, &wlen);
        if (tokenizer_decode(t, ref, nr, &dec, &dlen, err) == 0) {
            TEST_CONDF(dlen == wlen && memcmp(dec, want, dlen) == 0,
                       "%s/%s: decode identical to the reference", tname, name);
            free(dec);
        } else {
            TEST_CONDF(0, "%s/%s: decode failed: %s", tname, name, err);
        }
        free(want);
        free(got);
    }
    free(ref);
    const cJSON *sp = cJSON_GetObjectItem(c, "ids_special");
    if (sp) {
        nr = json_ids(sp, &ref);
        ng = tokenizer_encode(t, text->valuestring, len, 1, &got, err);
        int same = ng >= 0 && first_diff(got, ng, ref, nr) < 0;
        TEST_CONDF(same, "%s/%s: ids with special tokens identical to the reference", tname, name);
        if (!same && ng >= 0) print_diff("ids_special", got, ng, ref, nr);
        if (ng >= 0) free(got);
        *n_ids += nr;
        free(ref);
    }
}

static int run_reference(const char *path)
{
    cJSON *root = read_json(path);
    if (!root) {
        printf("FAIL cannot read %s\n", path);
        return 1;
    }
    const cJSON *tk;
    cJSON_ArrayForEach(tk, cJSON_GetObjectItem(root, "tokenizers")) {
        const char *name = cJSON_GetObjectItem(tk, "name")->valuestring;
        const char *dir = cJSON_GetObjectItem(tk, "dir")->valuestring;
        char err[ERR_LEN];
        tokenizer_t *t;
        double t0 = now_s();
        if (tokenizer_load(&t, dir, err) < 0) {
            TEST_CONDF(0, "%s: load %s: %s", name, dir, err);
            continue;
        }
        printf("%s: loaded %s in %.2f s (%d ids, bos %d, eos %d)\n", name, dir, now_s() - t0,
               tokenizer_vocab_size(t), tokenizer_bos_id(t), tokenizer_eos_id(t));
        long n_ids = 0;
        int n_cases = 0, failed0 = test_n_failed;
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItem(tk, "encode")) check_encode_case(t, name, c, &n_ids, &n_cases);
        printf("%s: encode: %d cases, %ld reference ids compared, %d failures\n", name, n_cases,
               n_ids, test_n_failed - failed0);

        /* decodes of id lists, and the stream against the full decode for each */
        int n_dec = 0, dec_bad = 0, stream_bad = 0;
        cJSON_ArrayForEach(c, cJSON_GetObjectItem(tk, "decode")) {
            int32_t *ids;
            int n = json_ids(cJSON_GetObjectItem(c, "ids"), &ids);
            size_t wlen;
            char *want = unhex(cJSON_GetObjectItem(c, "text_hex")->valuestring, &wlen);
            char *dec;
            size_t dlen, slen;
            n_dec++;
            if (tokenizer_decode(t, ids, n, &dec, &dlen, err) < 0) {
                dec_bad++;
                free(ids);
                free(want);
                continue;
            }
            if (dlen != wlen || memcmp(dec, want, dlen) != 0) {
                if (dec_bad++ < 5) {
                    printf("  decode mismatch for ids");
                    for (int i = 0; i < n && i < 24; i++) printf(" %d", (int)ids[i]);
                    printf("\n    ours: \"%s\"\n    ref:  \"%s\"\n", dec, want);
                }
            }
            int chunks_ok = 1;
            int cut = n / 2; /* half of the list as the prompt */
            char *pre, *str = stream_all(t, ids, cut, ids + cut, n - cut, &slen, &chunks_ok);
            size_t plen;
            if (tokenizer_decode(t, ids, cut, &pre, &plen, err) == 0) {
                /* decode(prompt) + streamed == decode(all), unless the prompt ends inside a
                 * character (then decode(prompt) shows U+FFFD for what the stream completes) */
                size_t ok_prefix = plen;
                while (ok_prefix >= 3 && !memcmp(pre + ok_prefix - 3, "\xef\xbf\xbd", 3)) ok_prefix -= 3;
                int same = plen + slen == dlen && !memcmp(pre, dec, plen) && !memcmp(str, dec + plen, slen);
                int completed = ok_prefix < plen && !memcmp(pre, dec, ok_prefix) &&
                                !memcmp(str, dec + dlen - slen, slen) && slen <= dlen;
                if ((!chunks_ok || !(same || completed)) && stream_bad++ < 5) {
                    printf("  stream mismatch for ids");
                    for (int i = 0; i < n && i < 24; i++) printf(" %d%s", (int)ids[i], i + 1 == cut ? " |" : "");
                    printf("\n    prompt: \"%s\"\n    stream: \"%s\"\n    full:   \"%s\"\n", pre, str, dec);
                }
                free(pre);
            }
            free(str);
            free(dec);
            free(ids);
            free(want);
        }
        TEST_CONDF(dec_bad == 0, "%s: %d of %d id-list decodes identical to the reference", name,
                   n_dec - dec_bad, n_dec);
        TEST_CONDF(stream_bad == 0, "%s: streamed text of %d id lists equals the full decode (%d differ)",
                   name, n_dec, stream_bad);
        tokenizer_free(t);
    }
    cJSON_Delete(root);
    return test_report("test_tokenizer_bpe");
}

/* --------------------------------------------------------------------------------------------
 * Throughput (--bench) */

/* TEXT holds documents separated by NUL bytes (reference.mjs --bench writes it): encode them
 * one call each, in order, best of 3; then the first 1 MB (NULs as blank lines) in one call. */
static int run_bench(const char *dir, const char *path)
{
    char err[ERR_LEN];
    tokenizer_t *t;
    if (tokenizer_load(&t, dir, err) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    size_t len;
    char *text = read_file(path, &len);
    if (!text) {
        fprintf(stderr, "%s: cannot read\n", path);
        return 1;
    }
    int32_t *ids;
    double best = 1e30, best_cpu = 1e30;
    long n = 0;
    int n_docs = 0;
    for (int r = 0; r < 3; r++) {
        n = 0;
        n_docs = 0;
        double t0 = now_s(), c0 = cpu_s();
        for (size_t at = 0; at < len;) {
            size_t dlen = strlen(text + at);
            int k = tokenizer_encode(t, text + at, dlen, 0, &ids, err);
            if (k < 0) {
                fprintf(stderr, "encode: %s\n", err);
                return 1;
            }
            free(ids);
            n += k;
            n_docs++;
            at += dlen + 1;
        }
        double s = now_s() - t0, c = cpu_s() - c0;
        if (s < best) best = s;
        if (c < best_cpu) best_cpu = c;
    }
    double mb = (double)(len - (size_t)(n_docs - 1)) / 1e6;
    /* the documents joined by blank lines, cut to 1 MB on a character boundary */
    char *whole = xmalloc(2 * len + 2);
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == '\0') whole[o++] = '\n';
        whole[o++] = text[i] ? text[i] : '\n';
    }
    if (o > 1000000) {
        o = 1000000;
        while (o > 0 && ((unsigned char)whole[o] & 0xC0) == 0x80) o--;
    }
    double t0 = now_s(), c0 = cpu_s();
    int nw = tokenizer_encode(t, whole, o, 0, &ids, err);
    double sw = now_s() - t0, cw = cpu_s() - c0;
    if (nw >= 0) free(ids);
    printf("ropeserve %s:\n  per document: %d docs, %.2f MB, %ld ids, best of 3: %.3f s wall = %.2f MB/s, "
           "%.3f s CPU = %.2f MB/s\n  one %.2f MB string: %d ids, %.3f s wall = %.2f MB/s, %.3f s CPU = %.2f MB/s\n",
           dir, n_docs, mb, n, best, mb / best, best_cpu, mb / best_cpu, o / 1e6, nw, sw, o / 1e6 / sw,
           cw, o / 1e6 / cw);
    free(whole);
    free(text);
    tokenizer_free(t);
    return 0;
}

/* Adversarial inputs at 100 kB and 1 MB: the cost of each must grow about tenfold. */
static int run_bench_adversarial(const char *dir)
{
    char err[ERR_LEN];
    tokenizer_t *t;
    if (tokenizer_load(&t, dir, err) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    static const char *units[][2] = {
        {"one letter", "a"}, {"spaces", " "}, {"newlines", "\n"}, {"space tab", " \t"}, {"digits", "7"},
        {"emoji", "\xf0\x9f\x98\x80"}, {"CJK", "\xe4\xb8\xad"}, {"<|im_end|>", "<|im_end|>"},
        {"partial special", "<|im_sta"}, {"'s", "'s"}, {"alternating marks", "\xcc\x81\xcc\x96"},
        {"e + acute", "e\xcc\x81"}, {"\" a\"", " a"}, {"\". \"", ". "},
    };
    printf("ropeserve %s, adversarial inputs (CPU seconds):\n", dir);
    for (size_t u = 0; u < sizeof units / sizeof *units; u++) {
        printf("  %-18s", units[u][0]);
        for (size_t n = 100000; n <= 1000000; n *= 10) {
            size_t k = strlen(units[u][1]), len = n / k * k;
            char *s = xmalloc(len + 2);
            for (size_t i = 0; i < len; i += k) memcpy(s + i, units[u][1], k);
            s[len] = 'x'; /* a different last character, so runs end against something */
            int32_t *ids;
            double c0 = cpu_s();
            int m = tokenizer_encode(t, s, len + 1, 0, &ids, err);
            double c = cpu_s() - c0;
            if (m >= 0) free(ids);
            printf("  %7zu B: %7d ids %6.3f s", len + 1, m, c);
            free(s);
        }
        printf("\n");
    }
    tokenizer_free(t);
    return 0;
}

/* --------------------------------------------------------------------------------------------
 * Offline: the fixture tokenizers against expected.json */

static tokenizer_t *load_or_die(const char *path)
{
    char err[ERR_LEN];
    tokenizer_t *t;
    CHECK(tokenizer_load(&t, path, err) == 0, "load %s: %s", path, err);
    return t;
}

static void test_fixtures(void)
{
    cJSON *exp = read_json(FIXTURES "/expected.json");
    TEST_COND("fixtures: expected.json readable", exp != NULL);
    if (!exp) return;
    const cJSON *fx;
    cJSON_ArrayForEach(fx, exp) {
        char path[512], err[ERR_LEN];
        snprintf(path, sizeof path, FIXTURES "/%s.json", fx->string);
        tokenizer_t *t;
        if (tokenizer_load(&t, path, err) < 0) {
            TEST_CONDF(0, "fixture %s: load: %s", fx->string, err);
            continue;
        }
        int n_case = 0, bad = 0, n_ids = 0;
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItem(fx, "cases")) {
            const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
            for (int special = 0; special < 2; special++) {
                int32_t *ref, *got;
                int nr = json_ids(cJSON_GetObjectItem(c, special ? "ids_special" : "ids"), &ref);
                int ng = tokenizer_encode(t, text, strlen(text), special, &got, err);
                n_ids += nr;
                if (ng < 0 || first_diff(got, ng, ref, nr) >= 0) {
                    bad++;
                    printf("  %s case %d (\"%.40s\"%s):\n", fx->string, n_case, text, special ? ", special" : "");
                    if (ng >= 0) print_diff("ids", got, ng, ref, nr);
                    else printf("    %s\n", err);
                }
                if (ng >= 0) free(got);
                free(ref);
            }
            n_case++;
        }
        TEST_CONDF(bad == 0, "fixture %s: %d texts x (with, without special tokens), %d ids as Hugging Face", fx->string,
                   n_case, n_ids);
        int n_dec = 0;
        bad = 0;
        cJSON_ArrayForEach(c, cJSON_GetObjectItem(fx, "decodes")) {
            int32_t *ids;
            int n = json_ids(cJSON_GetObjectItem(c, "ids"), &ids);
            size_t wlen, dlen;
            char *want = unhex(cJSON_GetObjectItem(c, "text_hex")->valuestring, &wlen), *dec;
            if (tokenizer_decode(t, ids, n, &dec, &dlen, err) < 0 || dlen != wlen || memcmp(dec, want, wlen)) {
                bad++;
                printf("  %s decode %d differs\n", fx->string, n_dec);
            }
            if (dec) free(dec);
            free(want);
            free(ids);
            n_dec++;
        }
        TEST_CONDF(bad == 0, "fixture %s: %d id-list decodes as Hugging Face", fx->string, n_dec);
        tokenizer_free(t);
    }
    cJSON_Delete(exp);
}

/* --------------------------------------------------------------------------------------------
 * Offline: what must be refused, and where the tokenizer comes from */

static char tmpdir[256];

static void write_file(const char *path, const char *s)
{
    FILE *f = fopen(path, "wb");
    CHECK(f, "cannot write %s", path);
    fputs(s, f);
    fclose(f);
}

/* Load base with one edit (a JSON path and a value, as JSON); the error must name the file and
 * the field. */
static void expect_refused(const cJSON *base, const char *what, const char *obj_path, const char *key,
                           const char *value_json, const char *field)
{
    cJSON *j = cJSON_Duplicate(base, 1);
    cJSON *o = j;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", obj_path);
    for (char *tok = strtok(buf, "."); tok && *obj_path; tok = strtok(NULL, ".")) {
        if (tok[0] >= '0' && tok[0] <= '9') o = cJSON_GetArrayItem(o, atoi(tok));
        else o = cJSON_GetObjectItem(o, tok);
        CHECK(o, "no %s in the fixture", obj_path);
    }
    cJSON_ReplaceItemInObject(o, key, cJSON_Parse(value_json));
    char *txt = cJSON_PrintUnformatted(j);
    char path[512], err[ERR_LEN] = "";
    snprintf(path, sizeof path, "%s/tokenizer.json", tmpdir);
    write_file(path, txt);
    free(txt);
    cJSON_Delete(j);
    tokenizer_t *t = (tokenizer_t *)1;
    int rc = tokenizer_load(&t, path, err);
    TEST_CONDF(rc < 0 && t == NULL && strstr(err, path) && strstr(err, field),
               "refused: %s (error names the file and '%s': %s)", what, field, err);
    if (rc == 0) tokenizer_free(t);
}

static void test_refusals(void)
{
    cJSON *b = read_json(FIXTURES "/qwen-nfc.json");
    CHECK(b, "qwen-nfc.json");
    expect_refused(b, "Lowercase normalizer", "normalizer", "type", "\"Lowercase\"", "normalizer.type");
    expect_refused(b, "Metaspace pre-tokenizer", "", "pre_tokenizer",
                   "{\"type\":\"Metaspace\",\"replacement\":\"▁\",\"prepend_scheme\":\"first\",\"split\":false}",
                   "pre_tokenizer.type");
    expect_refused(b, "Digits inside a Sequence", "pre_tokenizer.pretokenizers.0", "type", "\"Digits\"",
                   "pre_tokenizer.pretokenizers[0].type");
    expect_refused(b, "no ByteLevel step", "pre_tokenizer", "pretokenizers",
                   "[{\"type\":\"Split\",\"pattern\":{\"String\":\" \"},\"behavior\":\"Isolated\",\"invert\":false}]",
                   "pre_tokenizer");
    expect_refused(b, "a step after ByteLevel", "pre_tokenizer", "pretokenizers",
                   "[{\"type\":\"ByteLevel\"},{\"type\":\"Split\",\"pattern\":{\"String\":\" \"},\"behavior\":\"Isolated\",\"invert\":false}]",
                   "pre_tokenizer.pretokenizers[1]");
    expect_refused(b, "bad regex", "pre_tokenizer.pretokenizers.0.pattern", "Regex", "\"(unclosed\"",
                   "pre_tokenizer.pretokenizers[0].pattern");
    expect_refused(b, "unknown split behavior", "pre_tokenizer.pretokenizers.0", "behavior", "\"Sideways\"",
                   "pre_tokenizer.pretokenizers[0].behavior");
    expect_refused(b, "SentencePiece-style decoder", "", "decoder",
                   "{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"}]}",
                   "decoder");
    expect_refused(b, "Metaspace decoder", "decoder", "type", "\"Metaspace\"", "decoder.type");
    expect_refused(b, "no decoder", "", "decoder", "null", "decoder");
    expect_refused(b, "WordPiece model", "model", "type", "\"WordPiece\"", "model.type");
    expect_refused(b, "BPE dropout", "model", "dropout", "0.1", "model.dropout");
    expect_refused(b, "continuing_subword_prefix", "model", "continuing_subword_prefix", "\"##\"",
                   "model.continuing_subword_prefix");
    expect_refused(b, "end_of_word_suffix", "model", "end_of_word_suffix", "\"</w>\"", "model.end_of_word_suffix");
    expect_refused(b, "merge of an unknown token", "model", "merges", "[[\"Ġ\", \"zzz\"]]", "model.merges[0]");
    expect_refused(b, "merge with two spaces", "model", "merges", "[\"a b c\"]", "model.merges[0]");
    expect_refused(b, "unk_token not in the vocabulary", "model", "unk_token", "\"<nope>\"", "model.unk_token");
    expect_refused(b, "truncation", "", "truncation",
                   "{\"direction\":\"Right\",\"max_length\":512,\"strategy\":\"LongestFirst\",\"stride\":0}",
                   "truncation");
    expect_refused(b, "fixed padding", "", "padding", "{\"strategy\":{\"Fixed\":128}}", "padding");
    expect_refused(b, "RobertaProcessing", "", "post_processor", "{\"type\":\"RobertaProcessing\"}",
                   "post_processor.type");
    expect_refused(b, "template with an unknown special", "", "post_processor",
                   "{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<q>\",\"type_id\":0}},"
                   "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"special_tokens\":{}}",
                   "post_processor.single[0]");
    expect_refused(b, "added token without content", "added_tokens.0", "content", "7", "added_tokens[0]");
    cJSON_Delete(b);

    char err[ERR_LEN] = "";
    char path[512];
    tokenizer_t *t = (tokenizer_t *)1;
    snprintf(path, sizeof path, "%s/tokenizer.json", tmpdir);
    write_file(path, "[1, 2");
    TEST_COND("refused: not JSON", tokenizer_load(&t, path, err) < 0 && t == NULL && strstr(err, path));
    TEST_CONDF(tokenizer_load(&t, "no/such/tokenizer.json", err) < 0 && strstr(err, "no/such/tokenizer.json"),
               "missing tokenizer.json: %s", err);
}

/* A model directory: tokenizer.model wins over tokenizer.json; tokenizer.json alone loads with
 * tokenizer_config.json's eos_token and split_special_tokens; neither is an error. */
static void test_directories(void)
{
    char dir[300], path[512], err[ERR_LEN] = "", cmd[1024];
    snprintf(dir, sizeof dir, "%s/model", tmpdir);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", dir, dir);
    CHECK(system(cmd) == 0, "%s", cmd);
    tokenizer_t *t = (tokenizer_t *)1;
    TEST_CONDF(tokenizer_load(&t, dir, err) < 0 && t == NULL && strstr(err, dir) &&
                   strstr(err, "no tokenizer.model or tokenizer.json"),
               "empty model directory refused: %s", err);

    snprintf(cmd, sizeof cmd, "cp " FIXTURES "/qwen-nfc.json '%s/tokenizer.json'", dir);
    CHECK(system(cmd) == 0, "%s", cmd);
    t = load_or_die(dir);
    TEST_COND("tokenizer.json alone: byte-level BPE", tokenizer_vocab_size(t) == 495 &&
                                                          !strcmp(tokenizer_id_to_piece(t, 490), "<|endoftext|>"));
    TEST_COND("no tokenizer_config.json: no EOS; no BOS (Qwen's template adds none)",
              tokenizer_eos_id(t) == -1 && tokenizer_bos_id(t) == -1);
    int32_t *ids;
    int n = tokenizer_encode(t, "<|im_end|>", 10, 1, &ids, err);
    TEST_COND("special-token text is the special token", n == 1 && ids[0] == 492);
    free(ids);
    tokenizer_free(t);

    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    write_file(path, "{\"eos_token\": \"<|im_end|>\", \"pad_token\": {\"content\": \"<|endoftext|>\"}, "
                     "\"split_special_tokens\": true, \"bos_token\": null}");
    t = load_or_die(dir);
    TEST_COND("tokenizer_config.json: eos_token and pad_token (string or object)",
              tokenizer_eos_id(t) == 492 && tokenizer_pad_id(t) == 490);
    n = tokenizer_encode(t, "<|im_end|>", 10, 1, &ids, err);
    TEST_COND("split_special_tokens: special-token text stays text", n > 1);
    free(ids);
    n = tokenizer_encode(t, "<think>", 7, 1, &ids, err);
    TEST_COND("split_special_tokens: non-special added tokens still match", n == 1 && ids[0] == 493);
    free(ids);
    tokenizer_free(t);
    write_file(path, "{\"split_special_tokens\": \"yes\"}");
    TEST_CONDF(tokenizer_load(&t, dir, err) < 0 && strstr(err, "split_special_tokens"),
               "tokenizer_config.json: a bad field is refused: %s", err);
    remove(path);

    snprintf(cmd, sizeof cmd, "cp models/demo/tokenizer.model '%s/tokenizer.model'", dir);
    CHECK(system(cmd) == 0, "%s", cmd);
    t = load_or_die(dir);
    TEST_COND("tokenizer.model and tokenizer.json: SentencePiece", tokenizer_vocab_size(t) == 512 &&
                                                                       !strcmp(tokenizer_id_to_piece(t, 1), "<s>"));
    tokenizer_free(t);
}

/* --------------------------------------------------------------------------------------------
 * Offline: properties (round trip, stream, threads, long input) */

static const char *TEXTS[] = {
    "Hello world! How's it going? I'M FINE",
    "  leading, trailing  \n\n\t tabs\r\n and \xc2\xa0nbsp",
    "emoji \xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9 \xe4\xb8\xad\xe6\x96\x87 caf\xc3\xa9",
    "<|begin_of_text|>text <|eot_id|> more<|eot_id|>",
    "digits 12345678901234567890 and 3.14",
};

static void test_round_trip_and_stream(void)
{
    tokenizer_t *t = load_or_die(FIXTURES "/llama3-bos.json");
    char err[ERR_LEN];
    int ok = 1;
    for (size_t i = 0; i < sizeof TEXTS / sizeof *TEXTS; i++) {
        int32_t *ids;
        int n = tokenizer_encode(t, TEXTS[i], strlen(TEXTS[i]), 1, &ids, err);
        char *dec;
        size_t dlen;
        CHECK(n > 0 && tokenizer_decode(t, ids, n, &dec, &dlen, err) == 0, "%s", err);
        /* special tokens decode to nothing; the rest of the text comes back byte for byte */
        const char *want = i == 3 ? "text  more" : TEXTS[i];
        if (dlen != strlen(want) || memcmp(dec, want, dlen)) ok = 0;
        free(dec);
        free(ids);
    }
    TEST_COND("decode(encode(text)) == text (no normalizer; special tokens skipped)", ok);

    /* stream == decode for random id lists (lone bytes, specials, ids of text), with prompts */
    int n_vocab = tokenizer_vocab_size(t), stream_ok = 1, chunks_ok = 1;
    for (int iter = 0; iter < 3000; iter++) {
        int n = 1 + (int)(rng_u32() % 20), cut = (int)(rng_u32() % (uint32_t)(n + 1));
        int32_t ids[32];
        for (int k = 0; k < n; k++) {
            uint32_t r = rng_u32() % 10;
            ids[k] = r < 6 ? (int32_t)(128 + rng_u32() % 128) : (int32_t)(rng_u32() % (uint32_t)n_vocab);
        }
        char *all, *pre, *str;
        size_t alen, plen, slen;
        CHECK(tokenizer_decode(t, ids, n, &all, &alen, err) == 0, "%s", err);
        CHECK(tokenizer_decode(t, ids, cut, &pre, &plen, err) == 0, "%s", err);
        str = stream_all(t, ids, cut, ids + cut, n - cut, &slen, &chunks_ok);
        /* the prompt's decode may end in U+FFFD for bytes the stream completes or folds */
        size_t keep = plen;
        while (keep >= 3 && !memcmp(pre + keep - 3, "\xef\xbf\xbd", 3)) keep -= 3;
        int same = plen + slen == alen && !memcmp(pre, all, plen) && !memcmp(str, all + plen, slen);
        int folded = slen <= alen && keep <= alen - slen && !memcmp(pre, all, keep) &&
                     !memcmp(str, all + alen - slen, slen);
        if (!(same || folded)) stream_ok = 0;
        size_t full_len;
        char *full = stream_all(t, NULL, 0, ids, n, &full_len, &chunks_ok);
        if (full_len != alen || memcmp(full, all, alen)) stream_ok = 0;
        free(full);
        free(all);
        free(pre);
        free(str);
    }
    TEST_COND("stream: concatenated output == decode, with and without a prompt", stream_ok);
    TEST_COND("stream: every chunk is whole UTF-8", chunks_ok);
    const char *out;
    tok_stream_t *s = tok_stream_new(t, NULL, 0);
    TEST_COND("stream: id out of range gives -1", tok_stream_push(s, n_vocab, &out) == -1 && out[0] == 0);
    tok_stream_free(s);
    tokenizer_free(t);
}

struct thread_arg {
    const tokenizer_t *t;
    int ok;
};

static void *thread_main(void *p)
{
    struct thread_arg *a = p;
    char err[ERR_LEN];
    a->ok = 1;
    for (int rep = 0; rep < 200; rep++) {
        for (size_t i = 0; i < sizeof TEXTS / sizeof *TEXTS; i++) {
            int32_t *x, *y;
            int nx = tokenizer_encode(a->t, TEXTS[i], strlen(TEXTS[i]), 0, &x, err);
            int ny = tokenizer_encode(a->t, TEXTS[(i + (size_t)rep) % 5], strlen(TEXTS[(i + (size_t)rep) % 5]), 0, &y, err);
            free(y);
            int32_t *z;
            int nz = tokenizer_encode(a->t, TEXTS[i], strlen(TEXTS[i]), 0, &z, err);
            if (nx < 0 || ny < 0 || nx != nz || memcmp(x, z, (size_t)nx * sizeof *x)) a->ok = 0;
            free(x);
            free(z);
        }
    }
    return NULL;
}

static void test_threads(void)
{
    tokenizer_t *t = load_or_die(FIXTURES "/qwen-nfc.json");
    pthread_t th[4];
    struct thread_arg a[4];
    for (int i = 0; i < 4; i++) {
        a[i].t = t;
        pthread_create(&th[i], NULL, thread_main, &a[i]);
    }
    int ok = 1;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ok &= a[i].ok;
    }
    TEST_COND("4 threads encoding at once on one tokenizer agree with themselves", ok);
    tokenizer_free(t);
}

/* Long runs: one 1M-character pre-token, a long whitespace run, 20k special tokens. */
static void test_long_inputs(void)
{
    tokenizer_t *t = load_or_die(FIXTURES "/qwen-nfc.json");
    char err[ERR_LEN];
    size_t n = 1000000;
    char *s = xmalloc(n + 1);
    const char *fills[] = {"a", " ", "\n", "7", "ab", "<|im_end|>"};
    int ok = 1;
    for (size_t f = 0; f < sizeof fills / sizeof *fills; f++) {
        size_t k = strlen(fills[f]), len = n - n % k;
        for (size_t i = 0; i < len; i += k) memcpy(s + i, fills[f], k);
        s[len] = '\0';
        int32_t *ids;
        char *dec;
        size_t dlen;
        int m = tokenizer_encode(t, s, len, 0, &ids, err);
        if (m <= 0 || tokenizer_decode(t, ids, m, &dec, &dlen, err) < 0) {
            ok = 0;
            printf("  long run of \"%s\": %s\n", fills[f], err);
            continue;
        }
        /* specials decode to nothing; everything else round-trips */
        int same = f == 5 ? (dlen == 0 && m == (int)(len / k)) : (dlen == len && !memcmp(dec, s, len));
        if (!same) {
            ok = 0;
            printf("  long run of \"%s\": %d ids, round trip differs\n", fills[f], m);
        }
        free(dec);
        free(ids);
    }
    TEST_COND("1M-byte runs (letter, space, newline, digit, pair, special) encode and round-trip", ok);
    free(s);
    tokenizer_free(t);
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--reference")) return run_reference(argv[2]);
    if (argc == 4 && !strcmp(argv[1], "--bench")) return run_bench(argv[2], argv[3]);
    if (argc == 3 && !strcmp(argv[1], "--bench-adversarial")) return run_bench_adversarial(argv[2]);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_tokenizer_bpe.%d", (int)getpid());
    char cmd[600];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", tmpdir);
    CHECK(system(cmd) == 0, "%s", cmd);
    test_fixtures();
    test_refusals();
    test_directories();
    test_round_trip_and_stream();
    test_threads();
    test_long_inputs();
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) printf("could not remove %s\n", tmpdir);
    return test_report("test_tokenizer_bpe");
}
