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
 *        tokenizer on the file TEXT (a benchmark, not a test)
 * Run from the repository root. */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
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
    double best = 1e30;
    int n = 0;
    for (int r = 0; r < 3; r++) {
        double t0 = now_s();
        n = tokenizer_encode(t, text, len, 0, &ids, err);
        double s = now_s() - t0;
        if (n < 0) {
            fprintf(stderr, "encode: %s\n", err);
            return 1;
        }
        free(ids);
        if (s < best) best = s;
    }
    printf("ropeserve %s: %.2f MB, %d ids, best of 3 %.3f s = %.2f MB/s\n", dir, len / 1e6, n, best,
           len / 1e6 / best);
    free(text);
    tokenizer_free(t);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--reference")) return run_reference(argv[2]);
    if (argc == 4 && !strcmp(argv[1], "--bench")) return run_bench(argv[2], argv[3]);
    return test_report("test_tokenizer_bpe");
}
