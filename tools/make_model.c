/* make_model.c - write a deterministic random LLaMA, Mistral or Qwen2 checkpoint in Hugging
 * Face format.
 *
 *   make_model --out DIR [--preset demo|bench|tiny|7b-shape|qwen2-tiny|mistral-tiny]
 *              [--arch llama|mistral|qwen2] [--hidden N] [--layers N]
 *              [--heads N] [--kv-heads N] [--head-dim N] [--ffn N] [--vocab N] [--max-pos N]
 *              [--theta F] [--eps F] [--rope-scaling-json '{...}'|null] [--dtype f32|f16|bf16]
 *              [--tie] [--attention-bias] [--mlp-bias] [--sliding-window N|0]
 *              [--max-window-layers N] [--shard-bytes N] [--seed N] [--tokenizer PATH|none]
 *              [--threads N] [--init default|stable] [--perturb-layer0 REL]
 *
 * --init stable (issue 10 item 6): an init whose deep stacks are not chaotic, so two backends'
 * logprobs can be compared on it at 7B scale. Residual-branch output projections (o_proj,
 * down_proj) are scaled by 1/sqrt(2 n_layers), so the residual stream grows by O(1) over the
 * whole stack instead of per layer; q and k get sigma 0.5/sqrt(hidden), so attention logits have a
 * standard deviation of about 0.25 (instead of ~100 with the default 0.2, where every softmax is
 * one-hot and flips on the smallest change); norm weights 1 +- 0.02, biases 0.02. The default init
 * (tests/fixtures' scales) is unchanged.
 * --perturb-layer0 REL multiplies every value of layer 0's tensors by (1 + REL * N(0, 1)) from a
 * stream of their own (the other values are unchanged): the nudge test (tests/test_stable_init.c,
 * tools/nudge_test.py) compares the logprobs of a model with its nudged twin.
 *
 * Architectures (config.json as transformers' config classes write them): llama (attention_bias
 * puts random biases on q, k, v, o; mlp_bias on gate, up, down), mistral (sliding_window in every
 * layer, null when 0), qwen2 (random q, k, v biases always; --sliding-window W writes
 * use_sliding_window true with max_window_layers, default 0 = every layer slides; without it
 * use_sliding_window false and sliding_window = max_pos, as Qwen2.5 ships). Biases are drawn like
 * the weights (N(0, sigma), sigma 0.5 for q/k, 0.2 for v, 0.1 for o and the MLP): non-zero, so
 * a loader that drops one computes something visibly different.
 *
 * DIR gets config.json, generation_config.json, the weights (model.safetensors, or
 * model-0000i-of-0000N.safetensors + model.safetensors.index.json with --shard-bytes) and, when a
 * tokenizer is at hand, tokenizer.model, tokenizer_config.json and special_tokens_map.json. The
 * files mirror tests/fixtures/models/ (see tests/fixtures/README.md and
 * tests/fixtures/scripts/make_models.py): same config keys, same weight scales, same safetensors
 * layout (tensors in name order, data contiguous, header padded with spaces to 8 bytes,
 * __metadata__ {"format":"pt"}), same sharding rule as save_pretrained.
 *
 * Invariants:
 * - Same flags -> byte-identical files, whatever --threads is. Every tensor is cut into chunks
 *   of CHUNK_ELEMS values and every chunk draws from its own xoshiro256** stream, seeded from
 *   (--seed, tensor name, chunk index). So a value depends on nothing but its place, and chunks
 *   can be drawn in any order, by any thread, straight into their place in the file (pwrite).
 * - Memory stays O(threads * CHUNK_ELEMS) whatever the model size: the 7b-shape preset (13 GB)
 *   is streamed to disk and never held.
 * - Each file is written under a temporary name and renamed into place; config.json comes last,
 *   so a DIR with a config.json is complete (the Makefile's demo target depends on it).
 *
 * Rejected alternatives: numpy's generator (the fixtures' script) would make the two tools agree
 * bit for bit, but needs PCG64 + numpy's ziggurat in C and fixes generation to state-dict order,
 * which rules out streaming in name order and threading. One stream per tensor (instead of per
 * chunk) would serialise the 262 MB embedding of 7b-shape onto one core. cJSON's printer writes
 * tabs and "10000" for 10000.0; the fixtures are Python json.dump output ("rope_theta": 10000.0,
 * indent 2), so JSON is printed by hand and cJSON only validates --rope-scaling-json.
 *
 * Values are computed in double (mean + sigma * N(0,1), Box-Muller), rounded once to float, then
 * to the storage dtype with round-to-nearest-even (common.c). They use libm's log/sin/cos, so
 * byte-identity holds for one libm build; a different glibc may move a rare value by one ulp. */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../common/common.h"

#define CHUNK_ELEMS ((size_t)1 << 20) /* values per PRNG stream (and per pwrite) */
#define MAX_THREADS 64
#define TRANSFORMERS_VERSION "4.44.2" /* what the fixtures' configs state */
#define DEFAULT_TOKENIZER "models/demo/tokenizer.model"
#define DEFAULT_TOKENIZER_VOCAB 512

/* ---------------------------------------------------------------------------------------------
 * Configuration: presets and flags */

enum st_dtype { DT_F32 = 0, DT_F16, DT_BF16 };
static const char *dtype_flag[] = {"f32", "f16", "bf16"};
static const char *dtype_st[] = {"F32", "F16", "BF16"};             /* safetensors header */
static const char *dtype_torch[] = {"float32", "float16", "bfloat16"}; /* config.json */
static const size_t dtype_size[] = {4, 2, 2};

enum mm_arch { ARCH_LLAMA = 0, ARCH_MISTRAL, ARCH_QWEN2 };
static const char *arch_flag[] = {"llama", "mistral", "qwen2"};
static const char *arch_class[] = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"};

struct mm_config {
    enum mm_arch arch;
    int vocab, hidden, n_layers, n_heads, n_kv_heads, head_dim, ffn, max_pos;
    int attention_bias, mlp_bias; /* llama only; qwen2 always has q/k/v biases */
    int sliding_window;       /* mistral, qwen2: W (0 = none) */
    int max_window_layers;    /* qwen2: layers below it attend to everything */
    double rope_theta, rms_norm_eps;
    const char *rope_scaling; /* validated JSON object text; NULL = "rope_scaling": null */
    enum st_dtype dtype;
    int tie;
    uint64_t shard_bytes;     /* 0 = one model.safetensors */
    uint64_t seed;
    int init_stable;          /* --init stable */
    double perturb_layer0;    /* --perturb-layer0 REL (0: none) */
};

struct preset {
    const char *name;
    struct mm_config c;
};

static const struct preset presets[] = {
    /* what `make run` serves: a context-extended model (YaRN x4 over 2048), the bundled
     * tokenizer's vocab (models/demo/tokenizer.model: 512, bos 1, eos 2) */
    {"demo", {.vocab = 512, .hidden = 256, .n_layers = 4, .n_heads = 8, .n_kv_heads = 4,
              .head_dim = 32, .ffn = 688, .max_pos = 8192, .rope_theta = 10000.0,
              .rms_norm_eps = 1e-5,
              .rope_scaling = "{\"rope_type\":\"yarn\",\"factor\":4.0,"
                              "\"original_max_position_embeddings\":2048}",
              .dtype = DT_BF16}},
    /* the model the foundation issue benchmarks against llama.cpp */
    {"bench", {.vocab = 512, .hidden = 512, .n_layers = 8, .n_heads = 8, .n_kv_heads = 8,
               .head_dim = 64, .ffn = 1376, .max_pos = 16384, .rope_theta = 10000.0,
               .rms_norm_eps = 1e-5, .dtype = DT_F32}},
    /* the fixtures' small shape, for tests */
    {"tiny", {.vocab = 512, .hidden = 64, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
              .head_dim = 16, .ffn = 172, .max_pos = 2048, .rope_theta = 10000.0,
              .rms_norm_eps = 1e-5, .dtype = DT_F32}},
    /* LLaMA-2-7B's shape (13 GB in bf16), for GPU throughput */
    {"7b-shape", {.vocab = 32000, .hidden = 4096, .n_layers = 32, .n_heads = 32,
                  .n_kv_heads = 32, .head_dim = 128, .ffn = 11008, .max_pos = 4096,
                  .rope_theta = 10000.0, .rms_norm_eps = 1e-5, .dtype = DT_BF16}},
    /* Qwen2.5-7B-Instruct in small: q/k/v biases, theta 1e6, eps 1e-6, YaRN x4 added to a
     * config whose max_position_embeddings stays the original context (Qwen's instructions) */
    {"qwen2-tiny", {.arch = ARCH_QWEN2, .vocab = 512, .hidden = 64, .n_layers = 2, .n_heads = 4,
                    .n_kv_heads = 2, .head_dim = 16, .ffn = 172, .max_pos = 64,
                    .rope_theta = 1000000.0, .rms_norm_eps = 1e-6,
                    .rope_scaling = "{\"factor\":4.0,\"original_max_position_embeddings\":64,"
                                    "\"type\":\"yarn\"}",
                    .dtype = DT_BF16}},
    /* Mistral-7B-v0.1 in small: GQA 4:1, sliding window 64 in every layer */
    {"mistral-tiny", {.arch = ARCH_MISTRAL, .vocab = 512, .hidden = 64, .n_layers = 2, .n_heads = 4,
                      .n_kv_heads = 1, .head_dim = 16, .ffn = 172, .max_pos = 2048,
                      .rope_theta = 10000.0, .rms_norm_eps = 1e-5, .sliding_window = 64,
                      .dtype = DT_BF16}},
};
#define N_PRESETS ((int)(sizeof(presets) / sizeof(presets[0])))

static void usage(FILE *f)
{
    fprintf(f,
        "usage: make_model --out DIR [--preset demo|bench|tiny|7b-shape|qwen2-tiny|mistral-tiny] [flags]\n"
        "Writes a deterministic random LLaMA, Mistral or Qwen2 checkpoint in Hugging Face format to DIR.\n"
        "  --preset NAME        base shape (default demo); the flags below override it\n"
        "  --arch llama|mistral|qwen2  architecture (default: the preset's)\n"
        "  --attention-bias     llama: biases on q, k, v, o (qwen2 always has q, k, v biases)\n"
        "  --mlp-bias           llama: biases on gate, up, down\n"
        "  --sliding-window N   mistral, qwen2: attend to the last N keys (0: full attention)\n"
        "  --max-window-layers N  qwen2: the first N layers attend to everything (default 0)\n"
        "  --hidden N --layers N --heads N --kv-heads N --ffn N --vocab N --max-pos N\n"
        "  --head-dim N         default: hidden / heads\n"
        "  --theta F            rope_theta\n"
        "  --eps F              rms_norm_eps\n"
        "  --rope-scaling-json J  rope_scaling object, re-emitted as given; 'null' for none\n"
        "  --dtype f32|f16|bf16 storage dtype (values rounded to nearest even)\n"
        "  --tie                tie_word_embeddings: no lm_head.weight\n"
        "  --shard-bytes N      shard like save_pretrained(max_shard_size=N); N may end in\n"
        "                       KB/MB/GB (10^3..) or KiB/MiB/GiB\n"
        "  --seed N             PRNG seed (default 1234); same flags -> identical files\n"
        "  --tokenizer PATH     copy this tokenizer.model ('none': no tokenizer files); default\n"
        "                       " DEFAULT_TOKENIZER " when vocab is 512 and it exists\n"
        "  --threads N          generator threads (default: online CPUs; output unchanged)\n"
        "  --init default|stable  stable: residual outputs / sqrt(2 layers), attention logits ~0.25\n"
        "                       (not chaotic at depth: backends can be compared on it)\n"
        "  --perturb-layer0 REL multiply layer 0's values by (1 + REL N(0,1)) (the nudge test)\n"
        "presets:\n"
        "  demo      vocab 512, hidden 256, 4 layers, 8 heads, 4 kv, ffn 688, max_pos 8192,\n"
        "            yarn x4 over 2048, bf16\n"
        "  bench     vocab 512, hidden 512, 8 layers, 8 heads, 8 kv, ffn 1376, max_pos 16384, f32\n"
        "  tiny      vocab 512, hidden 64, 2 layers, 4 heads, 2 kv, ffn 172, max_pos 2048, f32\n"
        "  7b-shape  vocab 32000, hidden 4096, 32 layers, 32 heads, 32 kv, ffn 11008,\n"
        "            max_pos 4096, bf16 (13 GB)\n"
        "  qwen2-tiny    qwen2, vocab 512, hidden 64, 2 layers, 4 heads, 2 kv, ffn 172, q/k/v\n"
        "                biases, theta 1e6, max_pos 64 with yarn x4 over 64, bf16\n"
        "  mistral-tiny  mistral, vocab 512, hidden 64, 2 layers, 4 heads, 1 kv, ffn 172,\n"
        "                max_pos 2048, sliding window 64, bf16\n");
}

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("make_model: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static long long parse_int(const char *flag, const char *s, long long lo, long long hi)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        die("%s: expected an integer in [%lld, %lld], got '%s'", flag, lo, hi, s);
    return v;
}

static double parse_double(const char *flag, const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v <= 0)
        die("%s: expected a positive number, got '%s'", flag, s);
    return v;
}

/* "350000", "5GB", "500MiB" -> bytes */
static uint64_t parse_size(const char *flag, const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-') die("%s: expected a byte count, got '%s'", flag, s);
    static const struct { const char *suffix; uint64_t mul; } units[] = {
        {"", 1}, {"B", 1}, {"KB", 1000}, {"MB", 1000000}, {"GB", 1000000000},
        {"KiB", 1024}, {"MiB", 1024 * 1024}, {"GiB", 1024 * 1024 * 1024},
    };
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
        if (!strcmp(end, units[i].suffix)) {
            if (v == 0 || v > UINT64_MAX / units[i].mul) break;
            return v * units[i].mul;
        }
    die("%s: expected a positive byte count (optional KB/MB/GB/KiB/MiB/GiB), got '%s'", flag, s);
}

/* ---------------------------------------------------------------------------------------------
 * JSON text in Python's json.dump style */

/* A growing string. */
struct sbuf {
    char *p;
    size_t len, cap;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = b->cap - b->len;
        int n = vsnprintf(b->p ? b->p + b->len : NULL, room, fmt, ap);
        va_end(ap);
        CHECK(n >= 0, "vsnprintf failed");
        if ((size_t)n < room) { b->len += (size_t)n; return; }
        b->cap = 2 * b->cap + (size_t)n + 64;
        b->p = xrealloc(b->p, b->cap);
    }
}

static void sb_putc(struct sbuf *b, char c) { sb_printf(b, "%c", c); }

static void sb_indent(struct sbuf *b, int level)
{
    sb_printf(b, "\n%*s", 2 * level, "");
}

/* Python's repr(float): the shortest digits that read back as v; fixed notation for decimal
 * exponents in [-4, 16) with at least one fractional digit, else d.ddde+XX.
 * 10000.0 -> "10000.0", 1e-05 -> "1e-05", 0.1 -> "0.1", 1e16 -> "1e+16". */
static void fmt_pyfloat(double v, char *out, size_t len)
{
    char e[40];
    int p;
    for (p = 1; p <= 17; p++) {
        snprintf(e, sizeof(e), "%.*e", p - 1, v);
        if (strtod(e, NULL) == v) break;
    }
    /* e = [-]d[.ddd]e[+-]XX */
    const char *s = e;
    int neg = (*s == '-');
    if (neg) s++;
    char digits[24];
    int nd = 0;
    for (; *s && *s != 'e'; s++)
        if (*s != '.') digits[nd++] = *s;
    digits[nd] = 0;
    int exp10 = atoi(s + 1);
    while (nd > 1 && digits[nd - 1] == '0') digits[--nd] = 0;

    char body[48];
    if (exp10 >= -4 && exp10 < 16) {
        int k = 0;
        if (exp10 < 0) {
            k += snprintf(body + k, sizeof(body) - k, "0.%.*s%s", -exp10 - 1, "0000", digits);
        } else {
            int n_int = exp10 + 1;
            for (int i = 0; i < n_int; i++) body[k++] = i < nd ? digits[i] : '0';
            body[k++] = '.';
            if (nd > n_int) { memcpy(body + k, digits + n_int, nd - n_int); k += nd - n_int; }
            else body[k++] = '0';
            body[k] = 0;
        }
    } else {
        snprintf(body, sizeof(body), "%c%s%.*se%c%02d", digits[0], nd > 1 ? "." : "", nd - 1,
                 digits + 1, exp10 < 0 ? '-' : '+', abs(exp10));
    }
    snprintf(out, len, "%s%s", neg ? "-" : "", body);
}

/* Re-indent valid JSON text the way json.dump(indent=2) does, starting at nesting `level`;
 * tokens (strings, numbers: "4.0" stays "4.0", "2048" stays "2048") are copied verbatim. */
static void sb_json_pretty(struct sbuf *b, const char *json, int level)
{
    for (const char *s = json; *s; s++) {
        char c = *s;
        if (c == '"') {
            const char *q = s + 1;
            while (*q && *q != '"') q += (*q == '\\' && q[1]) ? 2 : 1;
            sb_printf(b, "%.*s", (int)(q - s + 1), s);
            s = q;
        } else if (c == '{' || c == '[') {
            const char *q = s + 1;
            while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r') q++;
            if (*q == (c == '{' ? '}' : ']')) {
                sb_printf(b, "%c%c", c, *q);
                s = q;
            } else {
                sb_putc(b, c);
                sb_indent(b, ++level);
            }
        } else if (c == '}' || c == ']') {
            sb_indent(b, --level);
            sb_putc(b, c);
        } else if (c == ',') {
            sb_putc(b, ',');
            sb_indent(b, level);
        } else if (c == ':') {
            sb_printf(b, ": ");
        } else if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            sb_putc(b, c);
        }
    }
}

/* --rope-scaling-json: an object (kept as text) or null (returns NULL). */
static const char *check_rope_scaling(const char *json)
{
    cJSON *j = cJSON_Parse(json);
    if (!j) die("--rope-scaling-json: not valid JSON: '%s'", json);
    int is_null = cJSON_IsNull(j), is_obj = cJSON_IsObject(j);
    if (is_obj && !cJSON_GetObjectItemCaseSensitive(j, "rope_type") &&
        !cJSON_GetObjectItemCaseSensitive(j, "type"))
        die("--rope-scaling-json: the object needs a \"rope_type\" (or \"type\") key");
    cJSON_Delete(j);
    if (is_null) return NULL;
    if (!is_obj) die("--rope-scaling-json: expected an object or null, got '%s'", json);
    return json;
}

/* ---------------------------------------------------------------------------------------------
 * Files */

/* mkdir -p */
static int make_dirs(const char *path, char *err)
{
    char *p = xstrdup(path);
    int rc = 0;
    for (char *s = p + 1;; s++) {
        if (*s == '/' || *s == 0) {
            char c = *s;
            *s = 0;
            if (mkdir(p, 0777) != 0 && errno != EEXIST) {
                rc = set_err(err, -1, "mkdir %s: %s", p, strerror(errno));
                break;
            }
            *s = c;
            if (!c) break;
        }
    }
    if (!rc) {
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
            rc = set_err(err, -1, "%s: not a directory", path);
    }
    free(p);
    return rc;
}

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static char *tmp_name(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 16;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/.%s.tmp", dir, name);
    return p;
}

static int write_all(int fd, const void *buf, size_t n, off_t off)
{
    const char *p = buf;
    while (n) {
        ssize_t w = pwrite(fd, p, n, off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
        off += w;
    }
    return 0;
}

/* Write DIR/name = data[0..len) via a temporary file and rename. */
static int write_file(const char *dir, const char *name, const void *data, size_t len, char *err)
{
    char *tmp = tmp_name(dir, name), *dst = path_join(dir, name);
    int rc = 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { rc = set_err(err, -1, "%s: %s", tmp, strerror(errno)); goto out; }
    if (write_all(fd, data, len, 0) != 0) rc = set_err(err, -1, "%s: %s", tmp, strerror(errno));
    if (close(fd) != 0 && !rc) rc = set_err(err, -1, "%s: %s", tmp, strerror(errno));
    if (!rc && rename(tmp, dst) != 0) rc = set_err(err, -1, "rename %s: %s", dst, strerror(errno));
    if (rc) unlink(tmp);
out:
    free(tmp);
    free(dst);
    return rc;
}

static int read_file(const char *path, char **data, size_t *len, char *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) return set_err(err, -1, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *p = xmalloc(cap);
    size_t r;
    while ((r = fread(p + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) p = xrealloc(p, cap *= 2);
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) { free(p); return set_err(err, -1, "%s: read error", path); }
    *data = p;
    *len = n;
    return 0;
}

/* Number of pieces in a SentencePiece ModelProto (repeated field 1), or -1 if it does not
 * parse. Only used to warn when the tokenizer and --vocab disagree. */
static int spm_vocab_size(const unsigned char *p, size_t n)
{
    size_t i = 0;
    int pieces = 0;
    while (i < n) {
        uint64_t key = 0, len = 0;
        int sh = 0;
        do { if (i >= n || sh > 63) return -1; key |= (uint64_t)(p[i] & 0x7f) << sh; sh += 7; }
        while (p[i++] & 0x80);
        switch (key & 7) {
        case 0:
            do { if (i >= n) return -1; } while (p[i++] & 0x80);
            break;
        case 1: i += 8; break;
        case 5: i += 4; break;
        case 2:
            sh = 0;
            do { if (i >= n || sh > 63) return -1; len |= (uint64_t)(p[i] & 0x7f) << sh; sh += 7; }
            while (p[i++] & 0x80);
            if (len > n - i) return -1;
            i += len;
            if ((key >> 3) == 1) pieces++;
            break;
        default: return -1;
        }
    }
    return i == n ? pieces : -1;
}

/* ---------------------------------------------------------------------------------------------
 * Tensors: state-dict order, scales, shards */

struct mm_tensor {
    char name[96];
    int ndim;
    long long shape[2];   /* (rows, cols) or (n,) */
    size_t n;             /* elements */
    size_t nbytes;
    double mean, sigma;   /* value = mean + sigma * N(0, 1) */
    double perturb;       /* then times (1 + perturb * N(0, 1)) from a second stream; 0: none */
    uint64_t key;         /* PRNG key: f(seed, name) */
    int shard;            /* 0-based */
    size_t offset;        /* byte offset in its shard's data section */
};

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t fnv1a64(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

static void add_tensor(struct mm_tensor *t, int *n, const struct mm_config *c, const char *name,
                       long long rows, long long cols, double mean, double sigma)
{
    struct mm_tensor *x = &t[(*n)++];
    memset(x, 0, sizeof(*x));
    snprintf(x->name, sizeof(x->name), "%s", name);
    x->ndim = cols ? 2 : 1;
    x->shape[0] = rows;
    x->shape[1] = cols;
    x->n = (size_t)rows * (size_t)(cols ? cols : 1);
    x->nbytes = x->n * dtype_size[c->dtype];
    x->mean = mean;
    x->sigma = sigma;
    uint64_t s = c->seed;
    x->key = splitmix64(&s) ^ fnv1a64(name);
    if (c->perturb_layer0 > 0 && strncmp(name, "model.layers.0.", 15) == 0) x->perturb = c->perturb_layer0;
}

/* The tensors of LlamaForCausalLM (MistralForCausalLM, Qwen2ForCausalLM) in state-dict order,
 * scaled as tests/fixtures/README.md says, biases after their weights. Returns the count; t has
 * room for 16 * n_layers + 3. */
static int build_tensors(struct mm_tensor *t, const struct mm_config *c)
{
    int n = 0;
    long long H = c->hidden, F = c->ffn, V = c->vocab;
    long long q_dim = (long long)c->n_heads * c->head_dim, kv_dim = (long long)c->n_kv_heads * c->head_dim;
    double s_h = 1.0 / sqrt((double)H), s_out = 3.0 / sqrt((double)H);
    /* --init stable (see the top of the file); else tests/fixtures/README.md's scales */
    const int st = c->init_stable;
    const double res = st ? 1.0 / sqrt(2.0 * c->n_layers) : 1.0;
    const double s_qk = st ? 0.5 * s_h : 0.2, s_norm = st ? 0.02 : 0.1;
    const double b_qk = st ? 0.02 : 0.5, b_v = st ? 0.02 : 0.2, b_o = st ? 0.02 : 0.1;
    char name[96];
    /* tied: the embedding is also the output matrix, so it gets lm_head's scale */
    add_tensor(t, &n, c, "model.embed_tokens.weight", V, H, 0.0, c->tie ? s_out : 1.0);
    for (int l = 0; l < c->n_layers; l++) {
#define LAYER(suffix, rows, cols, mean, sigma)                                   \
        do {                                                                     \
            snprintf(name, sizeof(name), "model.layers.%d.%s", l, suffix);       \
            add_tensor(t, &n, c, name, rows, cols, mean, sigma);                 \
        } while (0)
        const int qkv_bias = c->arch == ARCH_QWEN2 || c->attention_bias;
        LAYER("self_attn.q_proj.weight", q_dim, H, 0.0, s_qk); /* (heads*hd, hidden) */
        if (qkv_bias) LAYER("self_attn.q_proj.bias", q_dim, 0, 0.0, b_qk);
        LAYER("self_attn.k_proj.weight", kv_dim, H, 0.0, s_qk); /* (kv*hd, hidden) */
        if (qkv_bias) LAYER("self_attn.k_proj.bias", kv_dim, 0, 0.0, b_qk);
        LAYER("self_attn.v_proj.weight", kv_dim, H, 0.0, s_h); /* (kv*hd, hidden) */
        if (qkv_bias) LAYER("self_attn.v_proj.bias", kv_dim, 0, 0.0, b_v);
        LAYER("self_attn.o_proj.weight", H, q_dim, 0.0, res / sqrt((double)q_dim)); /* (hidden, heads*hd) */
        if (c->attention_bias) LAYER("self_attn.o_proj.bias", H, 0, 0.0, b_o);
        LAYER("mlp.gate_proj.weight", F, H, 0.0, s_h);         /* (ffn, hidden) */
        if (c->mlp_bias) LAYER("mlp.gate_proj.bias", F, 0, 0.0, b_o);
        LAYER("mlp.up_proj.weight", F, H, 0.0, s_h);           /* (ffn, hidden) */
        if (c->mlp_bias) LAYER("mlp.up_proj.bias", F, 0, 0.0, b_o);
        LAYER("mlp.down_proj.weight", H, F, 0.0, res / sqrt((double)F)); /* (hidden, ffn) */
        if (c->mlp_bias) LAYER("mlp.down_proj.bias", H, 0, 0.0, b_o);
        LAYER("input_layernorm.weight", H, 0, 1.0, s_norm);    /* (hidden,) */
        LAYER("post_attention_layernorm.weight", H, 0, 1.0, s_norm);
#undef LAYER
    }
    add_tensor(t, &n, c, "model.norm.weight", H, 0, 1.0, s_norm);
    if (!c->tie) add_tensor(t, &n, c, "lm_head.weight", V, H, 0.0, s_out); /* (vocab, hidden) */
    return n;
}

/* huggingface_hub's split_state_dict_into_shards_factory (what save_pretrained uses): walk the
 * state dict in order; a tensor bigger than the limit gets a shard of its own; otherwise start
 * a new shard when the next tensor would push the current one past the limit. Returns the
 * number of shards. */
static int assign_shards(struct mm_tensor *t, int n, uint64_t max_bytes)
{
    if (!max_bytes) {
        for (int i = 0; i < n; i++) t[i].shard = 0;
        return 1;
    }
    /* shard ids in creation order; the open shard gets its id when it is closed */
    int *open_members = xmalloc(sizeof(int) * (size_t)n);
    int n_open = 0, n_shards = 0;
    uint64_t open_size = 0;
    for (int i = 0; i < n; i++) {
        if (t[i].nbytes > max_bytes) {
            t[i].shard = n_shards++;
            continue;
        }
        if (open_size + t[i].nbytes > max_bytes) {
            for (int k = 0; k < n_open; k++) t[open_members[k]].shard = n_shards;
            n_shards++;
            n_open = 0;
            open_size = 0;
        }
        open_members[n_open++] = i;
        open_size += t[i].nbytes;
    }
    if (n_open) {
        for (int k = 0; k < n_open; k++) t[open_members[k]].shard = n_shards;
        n_shards++;
    }
    free(open_members);
    return n_shards;
}

static int cmp_tensor_name(const void *a, const void *b)
{
    const struct mm_tensor *x = *(const struct mm_tensor *const *)a;
    const struct mm_tensor *y = *(const struct mm_tensor *const *)b;
    return strcmp(x->name, y->name); /* byte-wise, like Rust's String ordering */
}

/* ---------------------------------------------------------------------------------------------
 * Random values: xoshiro256** per chunk, Box-Muller */

struct rng {
    uint64_t s[4];
};

static void rng_seed(struct rng *r, uint64_t key, uint64_t chunk)
{
    uint64_t x = key ^ (chunk * 0xd1b54a32d192ed03ull);
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static inline uint64_t rng_next(struct rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Two independent N(0, 1) values. */
static inline void rng_gauss2(struct rng *r, double *z0, double *z1)
{
    double u1 = (double)((rng_next(r) >> 11) + 1) * 0x1p-53; /* (0, 1]: log is finite */
    double u2 = (double)(rng_next(r) >> 11) * 0x1p-53;       /* [0, 1) */
    double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
    *z0 = rad * cos(th);
    *z1 = rad * sin(th);
}

static inline void store_value(uint8_t *out, size_t i, enum st_dtype dt, float v)
{
    uint32_t bits;
    switch (dt) {
    case DT_F32:
        memcpy(&bits, &v, 4);
        out[4 * i + 0] = (uint8_t)bits;
        out[4 * i + 1] = (uint8_t)(bits >> 8);
        out[4 * i + 2] = (uint8_t)(bits >> 16);
        out[4 * i + 3] = (uint8_t)(bits >> 24);
        break;
    case DT_F16:
    case DT_BF16:
        bits = dt == DT_F16 ? f32_to_f16(v) : f32_to_bf16(v);
        out[2 * i + 0] = (uint8_t)bits;
        out[2 * i + 1] = (uint8_t)(bits >> 8);
        break;
    }
}

/* Chunk `chunk` of tensor t (n values), little-endian in the storage dtype, into out. */
static void fill_chunk(const struct mm_tensor *t, size_t chunk, size_t n, enum st_dtype dt,
                       uint8_t *out)
{
    struct rng r, rp;
    rng_seed(&r, t->key, chunk);
    rng_seed(&rp, t->key ^ 0x6a09e667f3bcc909ull, chunk); /* the nudge's own stream */
    for (size_t i = 0; i < n; i += 2) {
        double z0, z1, v0, v1;
        rng_gauss2(&r, &z0, &z1);
        v0 = t->mean + t->sigma * z0;
        v1 = t->mean + t->sigma * z1;
        if (t->perturb > 0) {
            double p0, p1;
            rng_gauss2(&rp, &p0, &p1);
            v0 *= 1.0 + t->perturb * p0;
            v1 *= 1.0 + t->perturb * p1;
        }
        store_value(out, i, dt, (float)v0);
        if (i + 1 < n) store_value(out, i + 1, dt, (float)v1);
    }
}

/* ---------------------------------------------------------------------------------------------
 * safetensors writer: header by hand, data by a pool of threads writing chunks in place */

struct chunk_job {
    const struct mm_tensor *t;
    size_t chunk;
    off_t file_off;
};

struct shard_work {
    int fd;
    enum st_dtype dtype;
    struct chunk_job *jobs;
    size_t n_jobs;
    size_t next;       /* next job to take, under mu */
    int err_no;        /* first pwrite error, under mu */
    pthread_mutex_t mu;
};

static void *shard_worker(void *arg)
{
    struct shard_work *w = arg;
    uint8_t *buf = xmalloc(CHUNK_ELEMS * 4);
    for (;;) {
        pthread_mutex_lock(&w->mu);
        size_t i = w->next++;
        int stop = w->err_no != 0;
        pthread_mutex_unlock(&w->mu);
        if (stop || i >= w->n_jobs) break;
        const struct chunk_job *j = &w->jobs[i];
        size_t first = j->chunk * CHUNK_ELEMS;
        size_t n = j->t->n - first < CHUNK_ELEMS ? j->t->n - first : CHUNK_ELEMS;
        fill_chunk(j->t, j->chunk, n, w->dtype, buf);
        if (write_all(w->fd, buf, n * dtype_size[w->dtype], j->file_off) != 0) {
            pthread_mutex_lock(&w->mu);
            if (!w->err_no) w->err_no = errno ? errno : EIO;
            pthread_mutex_unlock(&w->mu);
        }
    }
    free(buf);
    return NULL;
}

/* Write the tensors of shard `shard` to DIR/fname. Sets offsets; returns 0 or -1 with err. */
static int write_safetensors(const char *dir, const char *fname, struct mm_tensor *t, int n,
                             int shard, enum st_dtype dt, int n_threads, char *err)
{
    struct mm_tensor **mine = xmalloc(sizeof(*mine) * (size_t)n);
    int m = 0;
    for (int i = 0; i < n; i++)
        if (t[i].shard == shard) mine[m++] = &t[i];
    qsort(mine, (size_t)m, sizeof(*mine), cmp_tensor_name);

    struct sbuf h = {0};
    sb_printf(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
    size_t off = 0, n_jobs = 0;
    for (int i = 0; i < m; i++) {
        struct mm_tensor *x = mine[i];
        x->offset = off;
        sb_printf(&h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld", x->name, dtype_st[dt], x->shape[0]);
        if (x->ndim == 2) sb_printf(&h, ",%lld", x->shape[1]);
        sb_printf(&h, "],\"data_offsets\":[%zu,%zu]}", off, off + x->nbytes);
        off += x->nbytes;
        n_jobs += (x->n + CHUNK_ELEMS - 1) / CHUNK_ELEMS;
    }
    sb_putc(&h, '}');
    while (h.len % 8) sb_putc(&h, ' '); /* as the safetensors serializer pads */

    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)h.len >> (8 * i));
    off_t data_start = (off_t)(8 + h.len);

    struct shard_work w = {.dtype = dt, .n_jobs = n_jobs};
    w.jobs = xmalloc(sizeof(*w.jobs) * (n_jobs ? n_jobs : 1));
    size_t k = 0;
    for (int i = 0; i < m; i++)
        for (size_t c = 0; c * CHUNK_ELEMS < mine[i]->n; c++)
            w.jobs[k++] = (struct chunk_job){mine[i], c,
                data_start + (off_t)(mine[i]->offset + c * CHUNK_ELEMS * dtype_size[dt])};
    pthread_mutex_init(&w.mu, NULL);

    char *tmp = tmp_name(dir, fname), *dst = path_join(dir, fname);
    int rc = 0;
    w.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (w.fd < 0) { rc = set_err(err, -1, "%s: %s", tmp, strerror(errno)); goto out; }
    if (write_all(w.fd, len8, 8, 0) != 0 || write_all(w.fd, h.p, h.len, 8) != 0) {
        rc = set_err(err, -1, "%s: %s", tmp, strerror(errno));
    } else {
        int nt = n_threads < (int)n_jobs ? n_threads : (int)n_jobs;
        pthread_t th[MAX_THREADS];
        int started = 0;
        for (; started < nt; started++)
            if (pthread_create(&th[started], NULL, shard_worker, &w) != 0) break;
        if (started == 0) shard_worker(&w); /* no threads to be had: do it here */
        for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
        if (w.err_no) rc = set_err(err, -1, "%s: %s", tmp, strerror(w.err_no));
    }
    if (close(w.fd) != 0 && !rc) rc = set_err(err, -1, "%s: %s", tmp, strerror(errno));
    if (!rc && rename(tmp, dst) != 0) rc = set_err(err, -1, "rename %s: %s", dst, strerror(errno));
    if (rc) unlink(tmp);
out:
    pthread_mutex_destroy(&w.mu);
    free(tmp);
    free(dst);
    free(w.jobs);
    free(h.p);
    free(mine);
    return rc;
}

/* Remove weight files of an earlier run that this run did not write (e.g. a model.safetensors
 * next to a new index, or shards of another count), so a loader cannot pick them up. */
static void remove_stale_weights(const char *dir, int n_shards, int sharded)
{
    DIR *d = opendir(dir);
    if (!d) return;
    char ours[32];
    snprintf(ours, sizeof(ours), "-of-%05d.safetensors", n_shards);
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *nm = e->d_name;
        int stale = 0;
        if (!strcmp(nm, "model.safetensors")) stale = sharded;
        else if (!strcmp(nm, "model.safetensors.index.json")) stale = !sharded;
        else if (!fnmatch("model-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].safetensors", nm, 0))
            stale = !sharded || strcmp(nm + strlen("model-00000"), ours) != 0;
        if (stale) {
            char *p = path_join(dir, nm);
            if (unlink(p) != 0) fprintf(stderr, "make_model: warning: could not remove %s\n", p);
            free(p);
        }
    }
    closedir(d);
}

/* ---------------------------------------------------------------------------------------------
 * The small JSON files */

static int write_config(const char *dir, const struct mm_config *c, char *err)
{
    char theta[64], eps[64];
    fmt_pyfloat(c->rope_theta, theta, sizeof(theta));
    fmt_pyfloat(c->rms_norm_eps, eps, sizeof(eps));
    struct sbuf b = {0};
    sb_printf(&b,
        "{\n"
        "  \"architectures\": [\n"
        "    \"%s\"\n"
        "  ],\n"
        "  \"model_type\": \"%s\",\n"
        "  \"hidden_size\": %d,\n"
        "  \"intermediate_size\": %d,\n"
        "  \"num_hidden_layers\": %d,\n"
        "  \"num_attention_heads\": %d,\n"
        "  \"num_key_value_heads\": %d,\n"
        "  \"head_dim\": %d,\n"
        "  \"hidden_act\": \"silu\",\n"
        "  \"max_position_embeddings\": %d,\n"
        "  \"rms_norm_eps\": %s,\n"
        "  \"rope_theta\": %s,\n"
        "  \"rope_scaling\": ",
        arch_class[c->arch], arch_flag[c->arch],
        c->hidden, c->ffn, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->max_pos,
        eps, theta);
    if (c->rope_scaling) sb_json_pretty(&b, c->rope_scaling, 1);
    else sb_printf(&b, "null");
    sb_printf(&b, ",\n");
    switch (c->arch) { /* the keys each config class has */
    case ARCH_LLAMA:
        sb_printf(&b, "  \"attention_bias\": %s,\n  \"mlp_bias\": %s,\n", c->attention_bias ? "true" : "false",
                  c->mlp_bias ? "true" : "false");
        break;
    case ARCH_MISTRAL:
        if (c->sliding_window) sb_printf(&b, "  \"sliding_window\": %d,\n", c->sliding_window);
        else sb_printf(&b, "  \"sliding_window\": null,\n");
        break;
    case ARCH_QWEN2:
        sb_printf(&b, "  \"use_sliding_window\": %s,\n  \"sliding_window\": %d,\n  \"max_window_layers\": %d,\n",
                  c->sliding_window ? "true" : "false", c->sliding_window ? c->sliding_window : c->max_pos,
                  c->sliding_window ? c->max_window_layers : c->n_layers);
        break;
    }
    sb_printf(&b,
        "  \"attention_dropout\": 0.0,\n"
        "  \"tie_word_embeddings\": %s,\n"
        "  \"vocab_size\": %d,\n"
        "  \"bos_token_id\": 1,\n"
        "  \"eos_token_id\": 2,\n"
        "  \"pad_token_id\": null,\n"
        "  \"initializer_range\": 0.02,\n"
        "%s"
        "  \"use_cache\": true,\n"
        "  \"torch_dtype\": \"%s\",\n"
        "  \"transformers_version\": \"" TRANSFORMERS_VERSION "\"\n"
        "}\n",
        c->tie ? "true" : "false", c->vocab, c->arch == ARCH_LLAMA ? "  \"pretraining_tp\": 1,\n" : "",
        dtype_torch[c->dtype]);
    int rc = write_file(dir, "config.json", b.p, b.len, err);
    free(b.p);
    return rc;
}

static int write_small_json(const char *dir, const struct mm_config *c, int with_tokenizer,
                            char *err)
{
    static const char gen[] =
        "{\n"
        "  \"bos_token_id\": 1,\n"
        "  \"eos_token_id\": 2,\n"
        "  \"do_sample\": false,\n"
        "  \"transformers_version\": \"" TRANSFORMERS_VERSION "\"\n"
        "}\n";
    static const char special[] =
        "{\n"
        "  \"bos_token\": \"<s>\",\n"
        "  \"eos_token\": \"</s>\",\n"
        "  \"unk_token\": \"<unk>\"\n"
        "}\n";
    if (write_file(dir, "generation_config.json", gen, sizeof(gen) - 1, err)) return -1;
    if (!with_tokenizer) return 0;
    if (write_file(dir, "special_tokens_map.json", special, sizeof(special) - 1, err)) return -1;
    struct sbuf b = {0};
    sb_printf(&b,
        "{\n"
        "  \"add_bos_token\": true,\n"
        "  \"add_eos_token\": false,\n"
        "  \"bos_token\": \"<s>\",\n"
        "  \"eos_token\": \"</s>\",\n"
        "  \"unk_token\": \"<unk>\",\n"
        "  \"clean_up_tokenization_spaces\": false,\n"
        "  \"legacy\": true,\n"
        "  \"model_max_length\": %d,\n"
        "  \"tokenizer_class\": \"LlamaTokenizer\",\n"
        "  \"sp_model_kwargs\": {}\n"
        "}\n",
        c->max_pos);
    int rc = write_file(dir, "tokenizer_config.json", b.p, b.len, err);
    free(b.p);
    return rc;
}

/* model.safetensors.index.json as json.dump(indent=2, sort_keys=True) writes it. */
static int write_index(const char *dir, const struct mm_tensor *t, int n, int n_shards,
                       size_t n_params, size_t total_bytes, char *err)
{
    const struct mm_tensor **s = xmalloc(sizeof(*s) * (size_t)n);
    for (int i = 0; i < n; i++) s[i] = &t[i];
    qsort(s, (size_t)n, sizeof(*s), cmp_tensor_name);
    struct sbuf b = {0};
    sb_printf(&b, "{\n  \"metadata\": {\n    \"total_parameters\": %zu,\n    \"total_size\": %zu\n"
                  "  },\n  \"weight_map\": {", n_params, total_bytes);
    for (int i = 0; i < n; i++)
        sb_printf(&b, "%s\n    \"%s\": \"model-%05d-of-%05d.safetensors\"", i ? "," : "",
                  s[i]->name, s[i]->shard + 1, n_shards);
    sb_printf(&b, "\n  }\n}\n");
    int rc = write_file(dir, "model.safetensors.index.json", b.p, b.len, err);
    free(b.p);
    free(s);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * main */

int main(int argc, char **argv)
{
    const char *out = NULL, *preset_name = "demo", *tokenizer = NULL, *rope_json = NULL;
    int have_rope_json = 0, tie = 0, head_dim = 0, n_threads = 0;
    int arch = -1, attention_bias = 0, mlp_bias = 0, sliding_window = -1, max_window_layers = -1;
    int hidden = 0, layers = 0, heads = 0, kv_heads = 0, ffn = 0, vocab = 0, max_pos = 0;
    double theta = 0, eps = 0;
    int dtype = -1;
    uint64_t shard_bytes = 0, seed = 1234;
    int init_stable = 0;
    double perturb = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!strcmp(a, "--tie")) { tie = 1; continue; }
        if (!strcmp(a, "--attention-bias")) { attention_bias = 1; continue; }
        if (!strcmp(a, "--mlp-bias")) { mlp_bias = 1; continue; }
        if (i + 1 >= argc) { usage(stderr); die("%s: missing value (or unknown flag)", a); }
        const char *v = argv[++i];
        if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--preset")) preset_name = v;
        else if (!strcmp(a, "--hidden")) hidden = (int)parse_int(a, v, 1, 1 << 20);
        else if (!strcmp(a, "--layers")) layers = (int)parse_int(a, v, 1, 4096);
        else if (!strcmp(a, "--heads")) heads = (int)parse_int(a, v, 1, 4096);
        else if (!strcmp(a, "--kv-heads")) kv_heads = (int)parse_int(a, v, 1, 4096);
        else if (!strcmp(a, "--head-dim")) head_dim = (int)parse_int(a, v, 2, 4096);
        else if (!strcmp(a, "--ffn")) ffn = (int)parse_int(a, v, 1, 1 << 22);
        else if (!strcmp(a, "--vocab")) vocab = (int)parse_int(a, v, 3, 1 << 24);
        else if (!strcmp(a, "--max-pos")) max_pos = (int)parse_int(a, v, 1, 1 << 30);
        else if (!strcmp(a, "--theta")) theta = parse_double(a, v);
        else if (!strcmp(a, "--eps")) eps = parse_double(a, v);
        else if (!strcmp(a, "--rope-scaling-json")) { rope_json = v; have_rope_json = 1; }
        else if (!strcmp(a, "--shard-bytes")) shard_bytes = parse_size(a, v);
        else if (!strcmp(a, "--seed")) seed = (uint64_t)parse_int(a, v, 0, INT64_MAX);
        else if (!strcmp(a, "--tokenizer")) tokenizer = v;
        else if (!strcmp(a, "--init")) {
            if (strcmp(v, "default") && strcmp(v, "stable")) die("--init: expected default or stable, got '%s'", v);
            init_stable = !strcmp(v, "stable");
        }
        else if (!strcmp(a, "--perturb-layer0")) {
            perturb = parse_double(a, v);
            if (perturb >= 1) die("--perturb-layer0: a relative nudge below 1, got '%s'", v);
        }
        else if (!strcmp(a, "--threads")) n_threads = (int)parse_int(a, v, 1, MAX_THREADS);
        else if (!strcmp(a, "--sliding-window")) sliding_window = (int)parse_int(a, v, 0, 1 << 30);
        else if (!strcmp(a, "--max-window-layers")) max_window_layers = (int)parse_int(a, v, 0, 4096);
        else if (!strcmp(a, "--arch")) {
            for (int k = 0; k < 3; k++)
                if (!strcmp(v, arch_flag[k])) arch = k;
            if (arch < 0) die("--arch: expected llama, mistral or qwen2, got '%s'", v);
        }
        else if (!strcmp(a, "--dtype")) {
            for (int d = 0; d < 3; d++)
                if (!strcmp(v, dtype_flag[d])) dtype = d;
            if (dtype < 0) die("--dtype: expected f32, f16 or bf16, got '%s'", v);
        } else {
            usage(stderr);
            die("unknown flag '%s'", a);
        }
    }
    if (!out) { usage(stderr); die("--out DIR is required"); }

    const struct preset *p = NULL;
    for (int i = 0; i < N_PRESETS; i++)
        if (!strcmp(presets[i].name, preset_name)) p = &presets[i];
    if (!p) die("--preset: unknown preset '%s' (demo, bench, tiny, 7b-shape, qwen2-tiny, mistral-tiny)",
                preset_name);

    struct mm_config c = p->c;
    if (hidden) c.hidden = hidden;
    if (layers) c.n_layers = layers;
    if (heads) c.n_heads = heads;
    if (kv_heads) c.n_kv_heads = kv_heads;
    if (ffn) c.ffn = ffn;
    if (vocab) c.vocab = vocab;
    if (max_pos) c.max_pos = max_pos;
    if (theta) c.rope_theta = theta;
    if (eps) c.rms_norm_eps = eps;
    if (have_rope_json) c.rope_scaling = check_rope_scaling(rope_json);
    if (dtype >= 0) c.dtype = (enum st_dtype)dtype;
    if (tie) c.tie = 1;
    if (arch >= 0) c.arch = (enum mm_arch)arch;
    if (attention_bias) c.attention_bias = 1;
    if (mlp_bias) c.mlp_bias = 1;
    if (sliding_window >= 0) c.sliding_window = sliding_window;
    if (max_window_layers >= 0) c.max_window_layers = max_window_layers;
    if (c.arch != ARCH_LLAMA && (c.attention_bias || c.mlp_bias))
        die("--attention-bias / --mlp-bias: llama only (qwen2 has q, k, v biases; mistral none)");
    if (c.arch == ARCH_LLAMA && c.sliding_window) die("--sliding-window: mistral or qwen2 only");
    if (c.arch != ARCH_QWEN2 && max_window_layers >= 0) die("--max-window-layers: qwen2 only");
    c.shard_bytes = shard_bytes;
    c.seed = seed;
    c.init_stable = init_stable;
    c.perturb_layer0 = perturb;
    if (perturb > 0 && c.dtype != DT_F32)
        fprintf(stderr, "make_model: warning: --perturb-layer0 %g below %s precision: use --dtype f32\n", perturb,
                dtype_flag[c.dtype]);
    if (head_dim) {
        c.head_dim = head_dim;
    } else if (hidden || heads) {
        if (c.hidden % c.n_heads)
            die("hidden %d is not a multiple of heads %d: give --head-dim", c.hidden, c.n_heads);
        c.head_dim = c.hidden / c.n_heads;
    }
    if (c.head_dim % 2) die("head_dim %d must be even (RoPE rotates pairs)", c.head_dim);
    if (c.n_heads % c.n_kv_heads)
        die("heads %d is not a multiple of kv-heads %d", c.n_heads, c.n_kv_heads);
    if (!n_threads) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = cpus < 1 ? 1 : cpus > MAX_THREADS ? MAX_THREADS : (int)cpus;
    }

    /* tokenizer: explicit path, 'none', or the bundled one when the vocab fits it */
    char *tok_data = NULL;
    size_t tok_len = 0;
    char err[ERR_LEN];
    if (tokenizer && !strcmp(tokenizer, "none")) {
        tokenizer = NULL;
    } else if (!tokenizer && c.vocab == DEFAULT_TOKENIZER_VOCAB && access(DEFAULT_TOKENIZER, R_OK) == 0) {
        tokenizer = DEFAULT_TOKENIZER;
    }
    if (tokenizer) {
        if (read_file(tokenizer, &tok_data, &tok_len, err)) die("--tokenizer: %s", err);
        int tv = spm_vocab_size((const unsigned char *)tok_data, tok_len);
        if (tv < 0)
            fprintf(stderr, "make_model: warning: %s: not a SentencePiece model?\n", tokenizer);
        else if (tv != c.vocab)
            fprintf(stderr, "make_model: warning: %s has %d pieces but vocab is %d\n",
                    tokenizer, tv, c.vocab);
    }

    if (make_dirs(out, err)) die("%s", err);

    int max_tensors = 16 * c.n_layers + 3;
    struct mm_tensor *t = xmalloc(sizeof(*t) * (size_t)max_tensors);
    int n = build_tensors(t, &c);
    int n_shards = assign_shards(t, n, c.shard_bytes);
    size_t n_params = 0, total_bytes = 0;
    for (int i = 0; i < n; i++) { n_params += t[i].n; total_bytes += t[i].nbytes; }

    /* save_pretrained writes a single model.safetensors (no index) when everything fits */
    int sharded = n_shards > 1;
    for (int s = 0; s < n_shards; s++) {
        char fname[64];
        if (sharded) snprintf(fname, sizeof(fname), "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        else snprintf(fname, sizeof(fname), "model.safetensors");
        if (write_safetensors(out, fname, t, n, s, c.dtype, n_threads, err)) die("%s", err);
    }
    if (sharded && write_index(out, t, n, n_shards, n_params, total_bytes, err)) die("%s", err);
    remove_stale_weights(out, n_shards, sharded);

    if (tokenizer && write_file(out, "tokenizer.model", tok_data, tok_len, err)) die("%s", err);
    if (write_small_json(out, &c, tokenizer != NULL, err)) die("%s", err);
    if (write_config(out, &c, err)) die("%s", err); /* last: its presence means complete */

    printf("make_model: wrote %s (%s, %zu params, %s, %.1f MB)\n", out, arch_flag[c.arch], n_params,
           dtype_flag[c.dtype], (double)total_bytes / 1e6);
    free(t);
    free(tok_data);
    return 0;
}
