/* test_loader.c - config.json and safetensors loading (models/config.c, models/safetensors.c).
 *
 * Part 1 loads the four fixture checkpoints of tests/fixtures/models and checks what their
 * README states. Part 2 feeds broken inputs, each in its own temporary directory, and checks
 * that every one fails cleanly: non-zero return, a message naming the file and the
 * field/tensor, nothing left allocated (run under valgrind --leak-check=full to prove it).
 * Run from the repository root. */
#include <dirent.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/common.h"
#include "../models/model.h"
#include "../models/model_internal.h"
#include "test.h"

#define FIX "tests/fixtures/models/"

// ---------------------------------------------------------------------------------------------
// Temporary directories and files

static char *tmp_dir(void)
{
    char *d = xstrdup("/tmp/ropeserve-loader-XXXXXX");
    CHECK(mkdtemp(d), "mkdtemp failed");
    return d;
}

/* Remove the files of d (flat) and d itself, and free the name. */
static void tmp_rm(char *d)
{
    DIR *dh = opendir(d);
    if (dh) {
        struct dirent *e;
        char p[1024];
        while ((e = readdir(dh))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            snprintf(p, sizeof p, "%s/%s", d, e->d_name);
            unlink(p);
        }
        closedir(dh);
    }
    rmdir(d);
    free(d);
}

static void write_bytes(const char *dir, const char *name, const void *buf, size_t n)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    CHECK(f, "cannot write %s", p);
    CHECK(fwrite(buf, 1, n, f) == n, "short write %s", p);
    fclose(f);
}

static void write_text(const char *dir, const char *name, const char *text)
{
    write_bytes(dir, name, text, strlen(text));
}

/* A safetensors file: u64 header length, the header padded with spaces to 8, data_len bytes. */
static void write_st_len(const char *dir, const char *name, const char *header, uint64_t hlen_field,
                         size_t data_len)
{
    size_t h = strlen(header), pad = (8 - h % 8) % 8;
    size_t n = 8 + h + pad + data_len;
    uint8_t *buf = xcalloc(n, 1);
    uint64_t hl = hlen_field ? hlen_field : h + pad;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(hl >> (8 * i));
    memcpy(buf + 8, header, h);
    memset(buf + 8 + h, ' ', pad);
    for (size_t i = 0; i < data_len; i++) buf[8 + h + pad + i] = (uint8_t)i;
    write_bytes(dir, name, buf, n);
    free(buf);
}

static void write_st(const char *dir, const char *name, const char *header, size_t data_len)
{
    write_st_len(dir, name, header, 0, data_len);
}

/* Copy at most max bytes of src to dir/name. */
static void copy_file(const char *src, const char *dir, const char *name, size_t max)
{
    FILE *f = fopen(src, "rb");
    CHECK(f, "cannot read %s", src);
    fseek(f, 0, SEEK_END);
    size_t n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    if (n > max) n = max;
    char *buf = xmalloc(n);
    CHECK(fread(buf, 1, n, f) == n, "short read %s", src);
    fclose(f);
    write_bytes(dir, name, buf, n);
    free(buf);
}

static int has(const char *s, const char *sub)
{
    return s && strstr(s, sub) != NULL;
}

/* st_open_dir on dir must fail with a message holding dir-relative file `file` and `what`. */
static void expect_st_fail(const char *label, const char *dir, const char *file, const char *what)
{
    char err[ERR_LEN] = "";
    safetensors_t *st = (safetensors_t *)1;
    int rc = st_open_dir(&st, dir, err);
    char path[1024];
    snprintf(path, sizeof path, "%s%s%s", dir, *file ? "/" : "", file);
    TEST_CONDF(rc != 0 && st == NULL, "%s: st_open_dir fails (rc %d)", label, rc);
    TEST_CONDF(has(err, path), "%s: message names the file %s: %s", label, path, err);
    TEST_CONDF(has(err, what), "%s: message names '%s': %s", label, what, err);
    if (rc == 0) st_close(st);
}

static void expect_cfg_fail(const char *label, const char *dir, const char *what)
{
    char err[ERR_LEN] = "";
    struct model_config c;
    int rc = model_config_load(&c, dir, err);
    char path[1024];
    snprintf(path, sizeof path, "%s/config.json", dir);
    TEST_CONDF(rc != 0, "%s: model_config_load fails", label);
    TEST_CONDF(has(err, path), "%s: message names %s: %s", label, path, err);
    TEST_CONDF(has(err, what), "%s: message names '%s': %s", label, what, err);
    TEST_CONDF(c.rope.short_factor == NULL && c.vocab_size == 0, "%s: config left zeroed", label);
    if (rc == 0) model_config_free(&c);
}

/* A minimal valid config.json: `extra` (comma-separated members, may be "") is put first and
 * replaces the base member of the same name; the base member `omit` is left out. */
static void write_cfg(const char *dir, const char *extra, const char *omit)
{
    static const char *base[][2] = {
        {"vocab_size", "512"}, {"hidden_size", "64"}, {"intermediate_size", "172"},
        {"num_hidden_layers", "2"}, {"num_attention_heads", "4"},
        {"num_key_value_heads", "2"}, {"max_position_embeddings", "2048"},
        {"architectures", "[\"LlamaForCausalLM\"]"}, {"hidden_act", "\"silu\""},
    };
    char buf[8192];
    size_t o = (size_t)snprintf(buf, sizeof buf, "{%s", extra);
    int first = !*extra;
    for (size_t i = 0; i < sizeof base / sizeof base[0]; i++) {
        char key[64];
        snprintf(key, sizeof key, "\"%s\"", base[i][0]);
        if ((omit && !strcmp(omit, base[i][0])) || strstr(extra, key)) continue;
        o += (size_t)snprintf(buf + o, sizeof buf - o, "%s%s: %s", first ? "" : ", ", key,
                              base[i][1]);
        first = 0;
    }
    snprintf(buf + o, sizeof buf - o, "}\n");
    write_text(dir, "config.json", buf);
}

/* Load a config made by write_cfg; returns rc and leaves err. */
static int load_cfg(struct model_config *c, const char *extra, const char *omit, char *err)
{
    char *d = tmp_dir();
    write_cfg(d, extra, omit);
    int rc = model_config_load(c, d, err);
    tmp_rm(d);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Fixture configs

static void test_fixture_configs(void)
{
    char err[ERR_LEN] = "";
    struct model_config c;

    int rc = model_config_load(&c, FIX "llama-gqa-none", err);
    TEST_CONDF(rc == 0, "gqa-none config loads: %s", err);
    TEST_COND("gqa-none shape", c.vocab_size == 512 && c.hidden_size == 64 &&
              c.intermediate_size == 172 && c.n_layers == 2 && c.n_heads == 4 &&
              c.n_kv_heads == 2 && c.head_dim == 16 && c.max_pos == 2048);
    TEST_COND("gqa-none eps 1e-5", c.rms_norm_eps == 1e-5f);
    TEST_COND("gqa-none theta 10000", c.rope_theta == 10000.0);
    TEST_COND("gqa-none rope_scaling null", !c.rope.present && !strcmp(c.rope.type, "default"));
    TEST_COND("gqa-none untied", c.tie_word_embeddings == 0);
    TEST_COND("gqa-none ids", c.bos_id == 1 && c.eos_id == 2 && c.pad_id == -1);
    TEST_COND("gqa-none dtype f32", c.torch_dtype == BK_F32);
    TEST_COND("gqa-none defaults", c.partial_rotary_factor == 1.0 && c.original_max_pos == 0 &&
              c.log_scale == 0 && c.string_shift == 0 && c.string_local == 0);
    model_config_free(&c);

    rc = model_config_load(&c, FIX "llama-linear-f16", err);
    TEST_CONDF(rc == 0, "linear-f16 config loads: %s", err);
    TEST_COND("linear-f16 rope `type` spelling", c.rope.present && !strcmp(c.rope.type, "linear"));
    TEST_COND("linear-f16 factor 4", c.rope.has_factor && c.rope.factor == 4.0);
    TEST_COND("linear-f16 no original", c.rope.original_max_pos == 0);
    TEST_COND("linear-f16 dtype f16", c.torch_dtype == BK_F16);
    model_config_free(&c);

    rc = model_config_load(&c, FIX "llama-yarn-bf16/", err); /* trailing slash on purpose */
    TEST_CONDF(rc == 0, "yarn-bf16 config loads: %s", err);
    TEST_COND("yarn-bf16 rope `rope_type` spelling", c.rope.present && !strcmp(c.rope.type, "yarn"));
    TEST_COND("yarn-bf16 factor 8, original 256",
              c.rope.factor == 8.0 && c.rope.original_max_pos == 256);
    TEST_COND("yarn-bf16 tied", c.tie_word_embeddings == 1);
    TEST_COND("yarn-bf16 dtype bf16", c.torch_dtype == BK_BF16);
    TEST_COND("yarn-bf16 yarn defaults", c.rope.truncate == 1 && c.rope.finetuned == 0 &&
              !strcmp(c.rope.yarn_variant, "standard") && !c.rope.has_beta_fast &&
              !c.rope.has_beta_slow && !c.rope.has_attention_factor && !c.rope.has_mscale);
    model_config_free(&c);

    rc = model_config_load(&c, FIX "llama-mha-yarn-theta", err);
    TEST_CONDF(rc == 0, "mha-yarn-theta config loads: %s", err);
    TEST_COND("mha no head_dim -> 96/6 = 16", c.head_dim == 16);
    TEST_COND("mha heads 6 = kv 6", c.n_heads == 6 && c.n_kv_heads == 6 && c.n_layers == 3 &&
              c.hidden_size == 96 && c.intermediate_size == 256);
    TEST_COND("mha theta 500000", c.rope_theta == 500000.0);
    TEST_COND("mha eps 1e-6", c.rms_norm_eps == 1e-6f);
    TEST_COND("mha yarn factor 4, original 512", !strcmp(c.rope.type, "yarn") &&
              c.rope.factor == 4.0 && c.rope.original_max_pos == 512);
    model_config_free(&c);
    model_config_free(NULL);
}

// ---------------------------------------------------------------------------------------------
// Fixture checkpoints

static double rms_of(const struct st_tensor *t)
{
    size_t n = t->nbytes / bk_dtype_size(t->dtype);
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        float v;
        if (t->dtype == BK_F32) {
            memcpy(&v, (const char *)t->data + 4 * i, 4);
        } else {
            uint16_t h;
            memcpy(&h, (const char *)t->data + 2 * i, 2);
            v = t->dtype == BK_F16 ? f16_to_f32(h) : bf16_to_f32(h);
        }
        s += (double)v * v;
    }
    return sqrt(s / (double)n);
}

static int all_dtype(const safetensors_t *st, enum bk_dtype d)
{
    for (int i = 0; i < st_count(st); i++)
        if (st_at(st, i)->dtype != d) return 0;
    return 1;
}

static void test_fixture_weights(void)
{
    char err[ERR_LEN] = "";
    safetensors_t *st = NULL;
    const struct st_tensor *t;

    /* sharded F32 */
    int rc = st_open_dir(&st, FIX "llama-gqa-none", err);
    TEST_CONDF(rc == 0 && st, "gqa-none (2 shards) opens: %s", err);
    if (rc == 0) {
        TEST_CONDF(st_count(st) == 21, "gqa-none 21 tensors, got %d", st_count(st));
        TEST_COND("gqa-none all F32", all_dtype(st, BK_F32));
        size_t total = 0;
        int sorted = 1, shard1 = 0, shard2 = 0;
        for (int i = 0; i < st_count(st); i++) {
            total += st_at(st, i)->nbytes;
            if (i && strcmp(st_at(st, i - 1)->name, st_at(st, i)->name) >= 0) sorted = 0;
            if (has(st_at(st, i)->file, "model-00001-of-00002.safetensors")) shard1++;
            if (has(st_at(st, i)->file, "model-00002-of-00002.safetensors")) shard2++;
        }
        TEST_CONDF(total == 625920, "gqa-none total_size 625920, got %zu", total);
        TEST_COND("st_at walks names in order", sorted);
        TEST_CONDF(shard1 == 13 && shard2 == 8, "13 + 8 tensors per shard, got %d + %d", shard1,
                   shard2);
        rc = st_get(st, "model.embed_tokens.weight", 2, (int64_t[]){512, 64}, &t, err);
        TEST_CONDF(rc == 0 && t && has(t->file, "00001"), "embed [512, 64] in shard 1: %s", err);
        if (t) TEST_CONDF(fabs(rms_of(t) - 1.0) < 0.05, "embed rms ~1 (sigma 1), got %g", rms_of(t));
        rc = st_get(st, "model.layers.1.self_attn.k_proj.weight", 2, (int64_t[]){32, 64}, &t, err);
        TEST_CONDF(rc == 0 && has(t->file, "00001"), "layer 1 k_proj [32, 64] in shard 1: %s", err);
        rc = st_get(st, "model.layers.1.self_attn.o_proj.weight", 2, (int64_t[]){64, 64}, &t, err);
        TEST_CONDF(rc == 0 && has(t->file, "00002"), "layer 1 o_proj [64, 64] in shard 2: %s", err);
        rc = st_get(st, "model.layers.0.mlp.down_proj.weight", 2, (int64_t[]){64, 172}, &t, err);
        TEST_CONDF(rc == 0, "down_proj [64, 172]: %s", err);
        rc = st_get(st, "model.norm.weight", 1, (int64_t[]){64}, &t, err);
        TEST_CONDF(rc == 0 && t->nbytes == 256, "norm [64]: %s", err);
        rc = st_get(st, "lm_head.weight", 2, (int64_t[]){512, 64}, &t, err);
        TEST_CONDF(rc == 0 && has(t->file, "00002"), "lm_head in shard 2: %s", err);
        TEST_COND("st_find absent -> NULL", st_find(st, "model.layers.2.mlp.up_proj.weight") == NULL);
        rc = st_get(st, "model.norm.weight", 1, (int64_t[]){32}, &t, err);
        TEST_CONDF(rc != 0 && t == NULL && has(err, "model-00002-of-00002.safetensors: tensor "
                   "'model.norm.weight': expected shape [32], found [64]"), "wrong shape: %s", err);
        rc = st_get(st, "model.norm.weight", 2, (int64_t[]){64, 1}, &t, err);
        TEST_CONDF(rc != 0 && has(err, "expected shape [64, 1], found [64]"), "wrong rank: %s", err);
        rc = st_get(st, "missing.weight", 1, (int64_t[]){1}, &t, err);
        TEST_CONDF(rc != 0 && has(err, FIX "llama-gqa-none: required tensor 'missing.weight' not "
                   "found"), "missing tensor: %s", err);
        st_close(st);
    }

    /* F16 */
    rc = st_open_dir(&st, FIX "llama-linear-f16", err);
    TEST_CONDF(rc == 0, "linear-f16 opens: %s", err);
    if (rc == 0) {
        TEST_CONDF(st_count(st) == 21, "linear-f16 21 tensors, got %d", st_count(st));
        TEST_COND("linear-f16 all F16", all_dtype(st, BK_F16));
        rc = st_get(st, "model.embed_tokens.weight", 2, (int64_t[]){512, 64}, &t, err);
        TEST_CONDF(rc == 0 && t->nbytes == 512 * 64 * 2, "f16 embed [512, 64]: %s", err);
        if (t) TEST_CONDF(fabs(rms_of(t) - 1.0) < 0.05, "f16 embed rms ~1, got %g", rms_of(t));
        TEST_COND("f16 file", has(t ? t->file : NULL, "llama-linear-f16/model.safetensors"));
        st_close(st);
    }

    /* BF16, tied: no lm_head */
    rc = st_open_dir(&st, FIX "llama-yarn-bf16", err);
    TEST_CONDF(rc == 0, "yarn-bf16 opens: %s", err);
    if (rc == 0) {
        TEST_CONDF(st_count(st) == 20, "yarn-bf16 20 tensors, got %d", st_count(st));
        TEST_COND("yarn-bf16 all BF16", all_dtype(st, BK_BF16));
        TEST_COND("yarn-bf16 has no lm_head.weight", st_find(st, "lm_head.weight") == NULL);
        rc = st_get(st, "lm_head.weight", 2, (int64_t[]){512, 64}, &t, err);
        TEST_CONDF(rc != 0 && has(err, "required tensor 'lm_head.weight' not found"),
                   "bf16 lm_head via st_get: %s", err);
        rc = st_get(st, "model.embed_tokens.weight", 2, (int64_t[]){512, 64}, &t, err);
        TEST_CONDF(rc == 0, "bf16 embed: %s", err);
        if (t) TEST_CONDF(fabs(rms_of(t) - 0.375) < 0.02, "bf16 embed rms ~3/8, got %g",
                          rms_of(t));
        st_close(st);
    }

    /* MHA F32, hidden 96 */
    rc = st_open_dir(&st, FIX "llama-mha-yarn-theta", err);
    TEST_CONDF(rc == 0, "mha-yarn-theta opens: %s", err);
    if (rc == 0) {
        TEST_CONDF(st_count(st) == 30, "mha 30 tensors, got %d", st_count(st));
        TEST_COND("mha all F32", all_dtype(st, BK_F32));
        rc = st_get(st, "model.layers.2.self_attn.v_proj.weight", 2, (int64_t[]){96, 96}, &t, err);
        TEST_CONDF(rc == 0, "mha v_proj [96, 96]: %s", err);
        rc = st_get(st, "model.layers.2.mlp.up_proj.weight", 2, (int64_t[]){256, 96}, &t, err);
        TEST_CONDF(rc == 0, "mha up_proj [256, 96]: %s", err);
        st_close(st);
    }
    st_close(NULL);
    TEST_COND("bk_dtype_size", bk_dtype_size(BK_F32) == 4 && bk_dtype_size(BK_F16) == 2 &&
              bk_dtype_size(BK_BF16) == 2);
}

// ---------------------------------------------------------------------------------------------
// Bad safetensors

static const char *ST_AB =
    "{\"__metadata__\":{\"format\":\"pt\"},"
    "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
    "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[16,24]}}";

static void test_bad_safetensors(void)
{
    char *d;

    d = tmp_dir();
    copy_file(FIX "llama-linear-f16/model.safetensors", d, "model.safetensors", 60000);
    expect_st_fail("truncated file", d, "model.safetensors", "outside the data section");
    tmp_rm(d);

    d = tmp_dir();
    copy_file(FIX "llama-linear-f16/model.safetensors", d, "model.safetensors", 200);
    expect_st_fail("truncated inside the header", d, "model.safetensors", "header length");
    tmp_rm(d);

    d = tmp_dir();
    copy_file(FIX "llama-linear-f16/model.safetensors", d, "model.safetensors", 5);
    expect_st_fail("5-byte file", d, "model.safetensors", "too small");
    tmp_rm(d);

    d = tmp_dir();
    write_st_len(d, "model.safetensors", "{}", 1000000, 0);
    expect_st_fail("header length > file", d, "model.safetensors", "header length 1000000");
    tmp_rm(d);

    d = tmp_dir();
    write_st(d, "model.safetensors", "{\"a\": not json at all", 0);
    expect_st_fail("header not JSON", d, "model.safetensors", "header is not valid JSON");
    tmp_rm(d);

    d = tmp_dir();
    write_st(d, "model.safetensors", "[1, 2]", 0);
    expect_st_fail("header not an object", d, "model.safetensors", "not a JSON object");
    tmp_rm(d);

    d = tmp_dir();
    write_st(d, "model.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],"
             "\"data_offsets\":[0,8]}} trailing", 8);
    expect_st_fail("header with trailing bytes", d, "model.safetensors", "trailing bytes");
    tmp_rm(d);

    d = tmp_dir();
    write_st(d, "model.safetensors", ST_AB, 20);
    expect_st_fail("data_offsets out of range", d, "model.safetensors",
                   "tensor 'b': data_offsets [16, 24] outside the data section of 20 bytes");
    tmp_rm(d);

    d = tmp_dir();
    write_st(d, "model.safetensors",
             "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 24);
    expect_st_fail("size != dtype x shape", d, "model.safetensors",
                   "tensor 'w': data_offsets span 20 bytes but F32 [2, 3] needs 24");
    tmp_rm(d);

    d = tmp_dir();
    write_st(d, "model.safetensors",
             "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 24);
    expect_st_fail("begin > end", d, "model.safetensors", "tensor 'w': data_offsets [8, 0]: begin after end");
    tmp_rm(d);

    d = tmp_dir();
    write_st(d, "model.safetensors",
             "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
             "\"y\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[24,28]},"
             "\"z\":{\"dtype\":\"F16\",\"shape\":[8],\"data_offsets\":[8,24]}}", 28);
    expect_st_fail("overlapping tensors", d, "model.safetensors",
                   "tensors 'x' and 'z' overlap");
    tmp_rm(d);

    d = tmp_dir();
    write_st(d, "model.safetensors",
             "{\"q\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4);
    expect_st_fail("dtype I8", d, "model.safetensors", "tensor 'q': dtype I8 unsupported");
    tmp_rm(d);

    d = tmp_dir();
    write_st(d, "model.safetensors",
             "{\"s\":{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,4]}}", 4);
    expect_st_fail("negative dim", d, "model.safetensors", "tensor 's': field 'shape'");
    tmp_rm(d);

    d = tmp_dir();
    write_st(d, "model.safetensors",
             "{\"s\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}", 4);
    expect_st_fail("5 dims", d, "model.safetensors", "tensor 's': field 'shape': 5 dims");
    tmp_rm(d);

    d = tmp_dir();
    write_st(d, "model.safetensors", "{\"s\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4);
    expect_st_fail("no data_offsets", d, "model.safetensors", "tensor 's': field 'data_offsets'");
    tmp_rm(d);

    d = tmp_dir();
    write_st(d, "model.safetensors",
             "{\"s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8);
    expect_st_fail("duplicate name in one header", d, "model.safetensors",
                   "tensor 's' appears twice");
    tmp_rm(d);

    d = tmp_dir();
    write_st(d, "model.safetensors", "{\"__metadata__\":{\"format\":\"pt\"}}", 0);
    expect_st_fail("no tensors", d, "model.safetensors", "no tensors");
    tmp_rm(d);

    d = tmp_dir();
    expect_st_fail("no weights at all", d, "", "no weights");
    tmp_rm(d);

    /* A valid small file: missing tensor, wrong shape, metadata skipped, empty tensor allowed. */
    d = tmp_dir();
    write_st(d, "model.safetensors",
             "{\"__metadata__\":{\"format\":\"pt\"},"
             "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
             "\"e\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[8,8]},"
             "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[16,24]}}", 24);
    {
        char err[ERR_LEN] = "", path[1024];
        safetensors_t *st = NULL;
        const struct st_tensor *t;
        int rc = st_open_dir(&st, d, err);
        TEST_CONDF(rc == 0, "small valid file opens: %s", err);
        if (rc == 0) {
            TEST_COND("metadata skipped, empty tensor kept", st_count(st) == 3 &&
                      st_find(st, "__metadata__") == NULL && st_find(st, "e")->nbytes == 0);
            t = st_find(st, "b");
            TEST_COND("b data offset", t && (const uint8_t *)t->data - (const uint8_t *)st_find(st, "a")->data == 16 &&
                      ((const uint8_t *)t->data)[0] == 16);
            err[0] = '\0';
            rc = st_get(st, "lm_head.weight", 2, (int64_t[]){4, 4}, &t, err);
            TEST_CONDF(rc != 0 && t == NULL && has(err, d) && has(err, "'lm_head.weight'"),
                       "missing tensor through st_get: %s", err);
            err[0] = '\0';
            rc = st_get(st, "a", 2, (int64_t[]){2, 3}, &t, err);
            snprintf(path, sizeof path, "%s/model.safetensors: tensor 'a': expected shape [2, 3], "
                     "found [2, 2]", d);
            TEST_CONDF(rc != 0 && t == NULL && !strcmp(err, path),
                       "wrong shape through st_get: %s", err);
            st_close(st);
        }
    }
    tmp_rm(d);
}

static void test_bad_index(void)
{
    static const char *SA = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    static const char *SB = "{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    char *d;

    d = tmp_dir();
    write_st(d, "s1.safetensors", SA, 8);
    write_st(d, "s2.safetensors", SB, 8);
    write_text(d, "model.safetensors.index.json",
               "{\"metadata\":{},\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}}");
    {
        char err[ERR_LEN] = "";
        safetensors_t *st = NULL;
        int rc = st_open_dir(&st, d, err);
        TEST_CONDF(rc == 0 && st_count(st) == 2, "small valid index opens: %s", err);
        if (rc == 0) {
            TEST_COND("shard paths", has(st_find(st, "a")->file, "/s1.safetensors") &&
                      has(st_find(st, "b")->file, "/s2.safetensors"));
            st_close(st);
        }
    }
    tmp_rm(d);

    d = tmp_dir();
    write_st(d, "s1.safetensors", SA, 8);
    write_text(d, "model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"missing.safetensors\"}}");
    expect_st_fail("index names a missing shard", d, "model.safetensors.index.json",
                   "shard 'missing.safetensors' (tensor 'b')");
    expect_st_fail("index names a missing shard (shard path)", d, "missing.safetensors",
                   "No such file");
    tmp_rm(d);

    d = tmp_dir();
    write_st(d, "s1.safetensors", SA, 8);
    write_text(d, "model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"s1.safetensors\",\"c\":\"s1.safetensors\"}}");
    expect_st_fail("index tensor missing from shard", d, "model.safetensors.index.json",
                   "tensor 'c': weight_map names shard 's1.safetensors' but the shard does not "
                   "contain it");
    tmp_rm(d);

    d = tmp_dir();
    write_st(d, "s1.safetensors", SA, 8);
    write_st(d, "s2.safetensors", SA, 8);
    write_text(d, "model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"s1.safetensors\",\"x\":\"s2.safetensors\"}}");
    expect_st_fail("tensor in two shards", d, "s2.safetensors", "tensor 'a' appears in two shards");
    tmp_rm(d);

    d = tmp_dir();
    write_st(d, "s1.safetensors", SA, 8);
    write_st(d, "s2.safetensors", SB, 8);
    write_text(d, "model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"s2.safetensors\",\"b\":\"s2.safetensors\"}}");
    expect_st_fail("index names the wrong shard", d, "model.safetensors.index.json",
                   "tensor 'a': weight_map names shard 's2.safetensors'");
    tmp_rm(d);

    d = tmp_dir();
    write_text(d, "model.safetensors.index.json", "{\"metadata\":{}}");
    expect_st_fail("index without weight_map", d, "model.safetensors.index.json",
                   "field 'weight_map'");
    tmp_rm(d);

    d = tmp_dir();
    write_text(d, "model.safetensors.index.json", "{\"weight_map\":{\"a\":\"../x.safetensors\"}}");
    expect_st_fail("shard outside the dir", d, "model.safetensors.index.json", "tensor 'a'");
    tmp_rm(d);

    d = tmp_dir();
    write_text(d, "model.safetensors.index.json", "{\"weight_map\":{\"a\":");
    expect_st_fail("index not JSON", d, "model.safetensors.index.json", "not valid JSON");
    tmp_rm(d);

    d = tmp_dir();
    write_st(d, "s1.safetensors", SA, 8);
    write_st(d, "s2.safetensors", "{\"b\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]}}", 16);
    write_text(d, "model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}}");
    expect_st_fail("bad dtype in second shard", d, "s2.safetensors", "tensor 'b': dtype F64");
    tmp_rm(d);
}

// ---------------------------------------------------------------------------------------------
// Bad and unusual configs

static void test_bad_configs(void)
{
    char *d;
    char err[ERR_LEN], want[1024];
    struct model_config c;

    d = tmp_dir();
    write_text(d, "config.json", "{\n  \"vocab_size\": 512,\n  \"hidden_size\": 64,\n");
    expect_cfg_fail("malformed config.json", d, "malformed JSON");
    tmp_rm(d);

    d = tmp_dir();
    write_text(d, "config.json", "{\n  \"vocab_size\": 512,\n  \"hidden_size\" 64\n}\n");
    expect_cfg_fail("malformed config.json (position)", d, "line 3, column");
    tmp_rm(d);

    d = tmp_dir();
    write_text(d, "config.json", "{\"vocab_size\": 512} {}");
    expect_cfg_fail("config.json with trailing data", d, "trailing");
    tmp_rm(d);

    d = tmp_dir();
    write_text(d, "config.json", "[1, 2]");
    expect_cfg_fail("config.json not an object", d, "object");
    tmp_rm(d);

    d = tmp_dir();
    write_cfg(d, "\"num_attention_heads\": \"x\"", NULL);
    err[0] = '\0';
    int rc = model_config_load(&c, d, err);
    snprintf(want, sizeof want, "%s/config.json: field 'num_attention_heads': expected a positive "
             "integer, got \"x\"", d);
    TEST_CONDF(rc != 0 && !strcmp(err, want), "string where an int belongs: %s", err);
    tmp_rm(d);

    d = tmp_dir();
    expect_cfg_fail("missing config.json", d, "No such file");
    tmp_rm(d);

    static const char *required[] = {"vocab_size", "hidden_size", "intermediate_size",
                                     "num_hidden_layers", "num_attention_heads",
                                     "max_position_embeddings"};
    for (int i = 0; i < 6; i++) {
        d = tmp_dir();
        write_cfg(d, "", required[i]);
        char what[128];
        snprintf(what, sizeof what, "field '%s': required field missing", required[i]);
        expect_cfg_fail(required[i], d, what);
        tmp_rm(d);
    }

    struct { const char *label, *extra, *what; } bad[] = {
        {"kv heads not dividing heads", "\"num_key_value_heads\": 3",
         "field 'num_key_value_heads': 3 does not divide num_attention_heads 4"},
        {"hidden not divisible, no head_dim", "\"hidden_size\": 66",
         "field 'hidden_size': 66 is not divisible by num_attention_heads 4"},
        {"zero layers", "\"num_hidden_layers\": 0",
         "field 'num_hidden_layers': expected a positive integer, got 0"},
        {"fractional vocab", "\"vocab_size\": 512.5", "field 'vocab_size'"},
        {"negative head_dim", "\"head_dim\": -16", "field 'head_dim'"},
        {"hidden_act gelu", "\"hidden_act\": \"gelu\"", "field 'hidden_act': unsupported"},
        {"architectures not causal LM", "\"architectures\": [\"LlamaModel\"]",
         "field 'architectures'"},
        {"architectures not a list", "\"architectures\": \"LlamaForCausalLM\"",
         "field 'architectures'"},
        {"rms_norm_eps string", "\"rms_norm_eps\": \"1e-5\"", "field 'rms_norm_eps'"},
        {"rope_theta negative", "\"rope_theta\": -1", "field 'rope_theta'"},
        {"partial_rotary_factor > 1", "\"partial_rotary_factor\": 1.5",
         "field 'partial_rotary_factor'"},
        {"tie flag string", "\"tie_word_embeddings\": \"yes\"", "field 'tie_word_embeddings'"},
        {"eos string", "\"eos_token_id\": \"</s>\"", "field 'eos_token_id'"},
        {"torch_dtype number", "\"torch_dtype\": 16", "field 'torch_dtype'"},
        {"rope_scaling not an object", "\"rope_scaling\": 4", "field 'rope_scaling'"},
        {"rope factor 0", "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 0}",
         "field 'rope_scaling.factor': expected a positive number, got 0"},
        {"rope factor negative", "\"rope_scaling\": {\"type\": \"linear\", \"factor\": -2}",
         "field 'rope_scaling.factor'"},
        {"rope factor string", "\"rope_scaling\": {\"type\": \"linear\", \"factor\": \"4\"}",
         "field 'rope_scaling.factor'"},
        {"rope type number", "\"rope_scaling\": {\"rope_type\": 3}",
         "field 'rope_scaling.rope_type'"},
        {"rope original string",
         "\"rope_scaling\": {\"type\": \"yarn\", \"original_max_position_embeddings\": \"4k\"}",
         "field 'rope_scaling.original_max_position_embeddings'"},
        {"yarn_variant unknown", "\"rope_scaling\": {\"type\": \"yarn\", \"yarn_variant\": \"x\"}",
         "field 'rope_scaling.yarn_variant'"},
        {"long_factor with a string",
         "\"rope_scaling\": {\"type\": \"longrope\", \"long_factor\": [1, \"a\"]}",
         "field 'rope_scaling.long_factor'"},
        {"truncate string", "\"rope_scaling\": {\"type\": \"yarn\", \"truncate\": \"no\"}",
         "field 'rope_scaling.truncate'"},
        {"string_config bad", "\"string_config\": {\"shifted_offset\": -5}",
         "field 'string_config.shifted_offset'"},
        {"v5 rope_parameters bad theta", "\"rope_parameters\": {\"rope_theta\": \"big\"}",
         "field 'rope_parameters.rope_theta'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        d = tmp_dir();
        write_cfg(d, bad[i].extra, NULL);
        expect_cfg_fail(bad[i].label, d, bad[i].what);
        tmp_rm(d);
    }
}

static void test_config_variants(void)
{
    char err[ERR_LEN] = "";
    struct model_config c;
    int rc;

    rc = load_cfg(&c, "", NULL, err);
    TEST_CONDF(rc == 0, "minimal config loads: %s", err);
    TEST_COND("minimal defaults", c.n_kv_heads == 2 && c.head_dim == 16 &&
              c.rms_norm_eps == 1e-6f && c.rope_theta == 10000.0 &&
              c.partial_rotary_factor == 1.0 && c.tie_word_embeddings == 0 && c.bos_id == -1 &&
              c.eos_id == -1 && c.pad_id == -1 && c.torch_dtype == BK_F32 && !c.rope.present);
    model_config_free(&c);

    rc = load_cfg(&c, "\"num_key_value_heads\": null, \"head_dim\": null, \"eos_token_id\": [7, 2], "
                  "\"bos_token_id\": null, \"tie_word_embeddings\": true, \"model_type\": \"mistral\", "
                  "\"architectures\": [\"MistralForCausalLM\"]",
                  NULL, err);
    TEST_CONDF(rc == 0, "nulls and eos list: %s", err);
    TEST_COND("null kv heads -> heads, null head_dim -> 16, eos list -> first",
              c.n_kv_heads == 4 && c.head_dim == 16 && c.eos_id == 7 && c.bos_id == -1 &&
              c.tie_word_embeddings == 1);
    model_config_free(&c);

    rc = load_cfg(&c, "\"head_dim\": 32, \"hidden_size\": 66, \"original_max_position_embeddings\": "
                  "4096, \"log_scale\": true, \"string_config\": {\"shifted_offset\": 1365, "
                  "\"local_value\": 128}, \"partial_rotary_factor\": 0.5, \"rope_theta\": 1e6",
                  NULL, err);
    TEST_CONDF(rc == 0, "explicit head_dim etc: %s", err);
    TEST_COND("head_dim given wins over hidden/heads", c.head_dim == 32 && c.hidden_size == 66);
    TEST_COND("top-level original, log_scale, string_config",
              c.original_max_pos == 4096 && c.log_scale == 1 && c.string_shift == 1365 &&
              c.string_local == 128);
    TEST_COND("partial 0.5, theta 1e6", c.partial_rotary_factor == 0.5 && c.rope_theta == 1e6);
    model_config_free(&c);

    rc = load_cfg(&c, "\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 40, \"beta_fast\": 32, "
                  "\"beta_slow\": 1, \"mscale\": 1.0, \"mscale_all_dim\": 0.707, "
                  "\"original_max_position_embeddings\": 4096, \"truncate\": false, "
                  "\"finetuned\": true, \"attention_factor\": 1.25, \"yarn_variant\": \"revised\", "
                  "\"unknown_key\": {\"x\": 1}}", NULL, err);
    TEST_CONDF(rc == 0, "full yarn: %s", err);
    TEST_COND("yarn keys", c.rope.present && c.rope.factor == 40.0 && c.rope.has_beta_fast &&
              c.rope.beta_fast == 32 && c.rope.beta_slow == 1 && c.rope.has_mscale &&
              c.rope.mscale == 1.0 && c.rope.mscale_all_dim == 0.707 &&
              c.rope.original_max_pos == 4096 && c.rope.truncate == 0 && c.rope.finetuned == 1 &&
              c.rope.has_attention_factor && c.rope.attention_factor == 1.25 &&
              !strcmp(c.rope.yarn_variant, "revised"));
    model_config_free(&c);

    rc = load_cfg(&c, "\"rope_scaling\": {\"rope_type\": \"llama3\", \"type\": \"ignored\", "
                  "\"factor\": 32.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
                  "\"original_max_position_embeddings\": 8192}", NULL, err);
    TEST_CONDF(rc == 0, "llama3: %s", err);
    TEST_COND("llama3 keys, rope_type wins over type", !strcmp(c.rope.type, "llama3") &&
              c.rope.has_low_freq_factor && c.rope.low_freq_factor == 1.0 &&
              c.rope.high_freq_factor == 4.0 && c.rope.original_max_pos == 8192);
    model_config_free(&c);

    rc = load_cfg(&c, "\"rope_scaling\": {\"type\": \"longrope\", \"short_factor\": [1, 1.5, 2], "
                  "\"long_factor\": [4, 5], \"short_mscale\": 1.1, \"long_mscale\": 1.2}", NULL, err);
    TEST_CONDF(rc == 0, "longrope: %s", err);
    TEST_COND("longrope arrays", c.rope.n_short_factor == 3 && c.rope.short_factor[1] == 1.5f &&
              c.rope.n_long_factor == 2 && c.rope.long_factor[1] == 5.0f &&
              c.rope.has_short_mscale && c.rope.long_mscale == 1.2 && !c.rope.has_factor);
    model_config_free(&c);
    TEST_COND("free clears arrays", c.rope.short_factor == NULL && c.rope.long_factor == NULL);

    rc = load_cfg(&c, "\"rope_scaling\": {\"type\": \"clex\", \"max_factor\": 16, "
                  "\"param_factor\": 1, \"factor\": 1}", NULL, err);
    TEST_CONDF(rc == 0, "clex: %s", err);
    TEST_COND("clex keys and defaults", c.rope.max_factor == 16 && c.rope.param_factor == 1 &&
              !strcmp(c.rope.act, "silu") && c.rope.time_dt == 0.01);
    model_config_free(&c);

    rc = load_cfg(&c, "\"rope_scaling\": {\"type\": \"clex\", \"max_factor\": 16, "
                  "\"param_factor\": 1, \"act\": \"tanh\", \"time_dt\": 0.02}", NULL, err);
    TEST_COND("clex act tanh, time_dt", rc == 0 && !strcmp(c.rope.act, "tanh") &&
              c.rope.time_dt == 0.02);
    model_config_free(&c);

    rc = load_cfg(&c, "\"rope_scaling\": {\"type\": \"gene\", \"factor\": 16.0, "
                  "\"num_rotations\": 3.0, \"training_seq_len\": 4096, "
                  "\"gene_random_scale\": true, \"log_scale\": true}", NULL, err);
    TEST_CONDF(rc == 0, "gene: %s", err);
    TEST_COND("gene keys", c.rope.has_gene_random_scale && c.rope.gene_random_scale == 1.0 &&
              c.rope.num_rotations == 3 && c.rope.training_seq_len == 4096 && c.log_scale == 1);
    model_config_free(&c);

    rc = load_cfg(&c, "\"rope_scaling\": {\"type\": \"gene\", \"factor\": 4}", NULL, err);
    TEST_COND("gene defaults", rc == 0 && c.rope.num_rotations == 3 &&
              c.rope.training_seq_len == 16384 && !c.rope.has_gene_random_scale);
    model_config_free(&c);

    /* transformers v5 */
    rc = load_cfg(&c, "\"rope_parameters\": {\"rope_type\": \"yarn\", \"factor\": 4.0, "
                  "\"rope_theta\": 1000000.0, \"original_max_position_embeddings\": 32768}, "
                  "\"dtype\": \"bfloat16\"", NULL, err);
    TEST_CONDF(rc == 0, "v5 rope_parameters: %s", err);
    TEST_COND("v5 rope_parameters -> rope + theta", c.rope.present &&
              !strcmp(c.rope.type, "yarn") && c.rope.factor == 4.0 &&
              c.rope.original_max_pos == 32768 && c.rope_theta == 1e6 &&
              c.torch_dtype == BK_BF16);
    model_config_free(&c);

    rc = load_cfg(&c, "\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 500000}",
                  NULL, err);
    TEST_COND("v5 default rope_parameters: absent scaling, theta", rc == 0 && !c.rope.present &&
              !strcmp(c.rope.type, "default") && c.rope_theta == 500000.0);
    model_config_free(&c);

    rc = load_cfg(&c, "\"rope_theta\": 20000, \"rope_parameters\": {\"rope_type\": \"default\", "
                  "\"rope_theta\": 500000}", NULL, err);
    TEST_COND("top-level rope_theta wins", rc == 0 && c.rope_theta == 20000.0);
    model_config_free(&c);

    rc = load_cfg(&c, "\"rope_scaling\": {\"type\": \"linear\", \"factor\": null}", NULL, err);
    TEST_COND("null factor = absent", rc == 0 && c.rope.present && !c.rope.has_factor);
    model_config_free(&c);
}

static void test_set_rope_json(void)
{
    char err[ERR_LEN] = "";
    struct model_config c;
    int rc = model_config_load(&c, FIX "llama-yarn-bf16", err);
    TEST_CONDF(rc == 0, "load for set_rope_json: %s", err);
    if (rc) return;

    rc = model_config_set_rope_json(&c, "{\"type\": \"longrope\", \"short_factor\": [1, 2], "
                                    "\"long_factor\": [3, 4, 5]}", err);
    TEST_CONDF(rc == 0 && !strcmp(c.rope.type, "longrope") && c.rope.n_long_factor == 3 &&
               c.rope.original_max_pos == 0 && !c.rope.has_factor,
               "set_rope_json replaces the whole rope: %s", err);

    rc = model_config_set_rope_json(&c, "{\"rope_type\": \"linear\", \"factor\": 2}", err);
    TEST_CONDF(rc == 0 && !strcmp(c.rope.type, "linear") && c.rope.factor == 2.0 &&
               c.rope.short_factor == NULL, "set_rope_json linear (arrays freed): %s", err);

    err[0] = '\0';
    rc = model_config_set_rope_json(&c, "{\"type\": \"linear\", \"factor\": -1}", err);
    TEST_CONDF(rc != 0 && has(err, "rope_scaling JSON: field 'factor'"),
               "set_rope_json bad factor: %s", err);
    TEST_COND("failed set_rope_json leaves the rope", !strcmp(c.rope.type, "linear") &&
              c.rope.factor == 2.0);

    err[0] = '\0';
    rc = model_config_set_rope_json(&c, "{\"type\": \"linear\", ", err);
    TEST_CONDF(rc != 0 && has(err, "rope_scaling JSON: malformed JSON"),
               "set_rope_json malformed: %s", err);

    err[0] = '\0';
    rc = model_config_set_rope_json(&c, "[1]", err);
    TEST_CONDF(rc != 0 && has(err, "expected an object or null"), "set_rope_json array: %s", err);

    err[0] = '\0';
    rc = model_config_set_rope_json(&c, "{\"type\": \"longrope\", \"short_factor\": [1, 2], "
                                    "\"long_factor\": \"x\"}", err);
    TEST_CONDF(rc != 0 && has(err, "'long_factor'"), "set_rope_json leak path: %s", err);

    rc = model_config_set_rope_json(&c, "null", err);
    TEST_CONDF(rc == 0 && !c.rope.present && !strcmp(c.rope.type, "default"),
               "set_rope_json null: %s", err);
    TEST_COND("set_rope_json keeps the rest", c.tie_word_embeddings == 1 && c.head_dim == 16);

    rc = model_config_set_rope_json(&c, " {\"type\": \"gene\", \"factor\": 4, \"log_scale\": true} ",
                                    err);
    TEST_CONDF(rc == 0 && !strcmp(c.rope.type, "gene") && c.log_scale == 1,
               "set_rope_json gene log_scale: %s", err);
    model_config_free(&c);
}

// ---------------------------------------------------------------------------------------------
// Architectures (llama, mistral, qwen2) and the fields nothing implements

/* The windows of c's 2 layers (write_cfg's base has 2), as "w0,w1". */
static int windows_are(const struct model_config *c, int w0, int w1)
{
    return c->layer_window && c->n_layers == 2 && c->layer_window[0] == w0 && c->layer_window[1] == w1;
}

static void test_arch_configs(void)
{
    char err[ERR_LEN] = "";
    struct model_config c;
    int rc;

    rc = load_cfg(&c, "", NULL, err);
    TEST_CONDF(rc == 0 && c.arch == MODEL_ARCH_LLAMA && !c.qkv_bias && !c.o_bias && !c.mlp_bias &&
               windows_are(&c, 0, 0), "minimal config: llama, no biases, no window: %s", err);
    model_config_free(&c);

    /* Qwen2.5-7B-Instruct's config.json with the YaRN its model card adds: q/k/v biases,
     * use_sliding_window false, max_position_embeddings left at the original 32768 */
    rc = load_cfg(&c, "\"architectures\": [\"Qwen2ForCausalLM\"], \"model_type\": \"qwen2\", "
                  "\"hidden_size\": 3584, \"intermediate_size\": 18944, \"num_attention_heads\": 28, "
                  "\"num_key_value_heads\": 4, \"max_position_embeddings\": 32768, \"vocab_size\": 152064, "
                  "\"use_sliding_window\": false, \"sliding_window\": 131072, \"max_window_layers\": 28, "
                  "\"rope_theta\": 1000000.0, \"rms_norm_eps\": 1e-06, \"rope_scaling\": {\"factor\": 4.0, "
                  "\"original_max_position_embeddings\": 32768, \"type\": \"yarn\"}", NULL, err);
    TEST_CONDF(rc == 0 && c.arch == MODEL_ARCH_QWEN2 && c.qkv_bias && !c.o_bias && !c.mlp_bias &&
               windows_are(&c, 0, 0) && c.rope_theta == 1e6 && !strcmp(c.rope.type, "yarn") && c.head_dim == 128,
               "qwen2.5: q/k/v biases, no window: %s", err);
    TEST_COND("qwen2 name", !strcmp(model_arch_name(c.arch), "qwen2"));
    struct rope r;
    /* HF's current YaRN (and v5): the explicit factor 4 (not max_pos / original = 1), L0 32768 */
    if (rc == 0 && rope_init(&r, &c, NULL, err) == 0) {
        TEST_CONDF(r.type == ROPE_TYPE_YARN && r.factor == 4.0 && r.original_max_pos == 32768 &&
                   r.ramp_low == 23 && r.ramp_high == 40 && fabsf(r.attn_factor - 1.1386294f) < 1e-6f &&
                   r.max_model_len == 131072, "qwen2.5 yarn: factor %g, L0 %d, ramp %g/%g, attn %.7f, context %d",
                   r.factor, r.original_max_pos, r.ramp_low, r.ramp_high, (double)r.attn_factor, r.max_model_len);
        rope_free(&r);
    } else {
        TEST_CONDF(0, "qwen2.5 rope_init: %s", err);
    }
    if (rc == 0) model_config_free(&c);

    struct { const char *label, *extra; int w0, w1; } ok[] = {
        {"qwen2 window from max_window_layers 1", "\"model_type\": \"qwen2\", \"architectures\": "
         "[\"Qwen2ForCausalLM\"], \"use_sliding_window\": true, \"sliding_window\": 64, "
         "\"max_window_layers\": 1", 0, 64},
        {"qwen2 window, max_window_layers default 28: none slides", "\"model_type\": \"qwen2\", "
         "\"architectures\": [\"Qwen2ForCausalLM\"], \"use_sliding_window\": true, \"sliding_window\": 64", 0, 0},
        {"qwen2 window default 4096, max_window_layers 0", "\"model_type\": \"qwen2\", \"architectures\": "
         "[\"Qwen2ForCausalLM\"], \"use_sliding_window\": true, \"max_window_layers\": 0", 4096, 4096},
        {"qwen2 layer_types", "\"model_type\": \"qwen2\", \"architectures\": [\"Qwen2ForCausalLM\"], "
         "\"use_sliding_window\": true, \"sliding_window\": 48, \"layer_types\": [\"sliding_attention\", "
         "\"full_attention\"]", 48, 0},
        {"qwen2 layer_types without use_sliding_window: full", "\"model_type\": \"qwen2\", \"architectures\": "
         "[\"Qwen2ForCausalLM\"], \"sliding_window\": 48, \"layer_types\": [\"sliding_attention\", "
         "\"sliding_attention\"]", 0, 0},
        {"qwen2 use_sliding_window, sliding_window null", "\"model_type\": \"qwen2\", \"architectures\": "
         "[\"Qwen2ForCausalLM\"], \"use_sliding_window\": true, \"sliding_window\": null, "
         "\"max_window_layers\": 0", 0, 0},
        {"qwen2 by architectures alone", "\"architectures\": [\"Qwen2ForCausalLM\"]", 0, 0},
        {"mistral v0.1: sliding_window 4096", "\"model_type\": \"mistral\", \"architectures\": "
         "[\"MistralForCausalLM\"], \"sliding_window\": 4096", 4096, 4096},
        {"mistral without the key: MistralConfig's default 4096", "\"model_type\": \"mistral\", "
         "\"architectures\": [\"MistralForCausalLM\"]", 4096, 4096},
        {"mistral v0.2+: sliding_window null", "\"model_type\": \"mistral\", \"architectures\": "
         "[\"MistralForCausalLM\"], \"sliding_window\": null", 0, 0},
        {"mistral use_sliding_window true, layer_types all sliding", "\"model_type\": \"mistral\", "
         "\"architectures\": [\"MistralForCausalLM\"], \"sliding_window\": 64, \"use_sliding_window\": true, "
         "\"layer_types\": [\"sliding_attention\", \"sliding_attention\"]", 64, 64},
        {"mistral by architectures alone", "\"architectures\": [\"MistralForCausalLM\"], \"sliding_window\": 8",
         8, 8},
        {"llama sliding_window null, use_sliding_window false, full layer_types", "\"sliding_window\": null, "
         "\"use_sliding_window\": false, \"layer_types\": [\"full_attention\", \"full_attention\"]", 0, 0},
        {"LLaMAForCausalLM (early conversions)", "\"architectures\": [\"LLaMAForCausalLM\"]", 0, 0},
        {"model_type llama, another *ForCausalLM class", "\"model_type\": \"llama\", \"architectures\": "
         "[\"CLEXLlamaForCausalLM\"]", 0, 0},
        {"neutral values of refused fields", "\"quantization_config\": null, \"num_experts\": 0, "
         "\"attn_logit_softcapping\": null, \"final_logit_softcapping\": null, \"qk_norm\": false, "
         "\"use_qk_norm\": false, \"attention_chunk_size\": null, \"use_bidirectional_attention\": false", 0, 0},
        {"pretraining_tp 2 (the same function)", "\"pretraining_tp\": 2", 0, 0},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        rc = load_cfg(&c, ok[i].extra, NULL, err);
        TEST_CONDF(rc == 0 && windows_are(&c, ok[i].w0, ok[i].w1), "%s: windows %d,%d: rc %d %s", ok[i].label,
                   ok[i].w0, ok[i].w1, rc, err);
        if (rc == 0) model_config_free(&c);
    }

    rc = load_cfg(&c, "\"attention_bias\": true, \"mlp_bias\": true", NULL, err);
    TEST_CONDF(rc == 0 && c.qkv_bias && c.o_bias && c.mlp_bias, "llama attention_bias, mlp_bias: %s", err);
    model_config_free(&c);
    rc = load_cfg(&c, "\"attention_bias\": false, \"mlp_bias\": true", NULL, err);
    TEST_CONDF(rc == 0 && !c.qkv_bias && !c.o_bias && c.mlp_bias, "llama mlp_bias only: %s", err);
    model_config_free(&c);

    /* effective windows: W >= max_len never slides; every layer must slide for window_all */
    rc = load_cfg(&c, "\"model_type\": \"mistral\", \"architectures\": [\"MistralForCausalLM\"], "
                  "\"sliding_window\": 64", NULL, err);
    TEST_CONDF(rc == 0 && model_config_layer_window(&c, 0, 65) == 64 && model_config_layer_window(&c, 1, 64) == 0 &&
               model_config_window_all(&c, 1000) == 64 && model_config_window_all(&c, 64) == 0,
               "mistral effective windows: %s", err);
    model_config_free(&c);
    rc = load_cfg(&c, "\"model_type\": \"qwen2\", \"architectures\": [\"Qwen2ForCausalLM\"], "
                  "\"use_sliding_window\": true, \"sliding_window\": 64, \"max_window_layers\": 1", NULL, err);
    TEST_CONDF(rc == 0 && model_config_layer_window(&c, 1, 1000) == 64 && model_config_window_all(&c, 1000) == 0,
               "qwen2 mixed layers: nothing every layer can free: %s", err);
    model_config_free(&c);

    struct { const char *label, *extra, *what; } bad[] = {
        {"model_type gemma", "\"model_type\": \"gemma\"", "field 'model_type': \"gemma\" is not supported"},
        {"model_type phi3", "\"model_type\": \"phi3\"", "field 'model_type': \"phi3\""},
        {"model_type qwen2_moe", "\"model_type\": \"qwen2_moe\"", "field 'model_type': \"qwen2_moe\""},
        {"model_type mixtral", "\"model_type\": \"mixtral\"", "field 'model_type': \"mixtral\""},
        {"model_type deepseek_v3", "\"model_type\": \"deepseek_v3\"", "field 'model_type': \"deepseek_v3\""},
        {"model_type number", "\"model_type\": 2", "field 'model_type'"},
        {"architectures alone, unknown", "\"architectures\": [\"GemmaForCausalLM\"]",
         "field 'architectures': [\"GemmaForCausalLM\"] is not supported"},
        {"architectures contradicting model_type", "\"model_type\": \"llama\", \"architectures\": "
         "[\"Qwen2ForCausalLM\"]", "field 'architectures': Qwen2ForCausalLM contradicts model_type \"llama\""},
        {"hidden_act gelu_pytorch_tanh", "\"hidden_act\": \"gelu_pytorch_tanh\"", "field 'hidden_act'"},
        {"quantization_config", "\"quantization_config\": {\"quant_method\": \"awq\", \"bits\": 4}",
         "field 'quantization_config': quantized checkpoints are not supported"},
        {"num_experts", "\"num_experts\": 8", "field 'num_experts'"},
        {"num_local_experts", "\"num_local_experts\": 8", "field 'num_local_experts'"},
        {"n_routed_experts", "\"n_routed_experts\": 64", "field 'n_routed_experts'"},
        {"attn_logit_softcapping", "\"attn_logit_softcapping\": 50.0", "field 'attn_logit_softcapping'"},
        {"final_logit_softcapping", "\"final_logit_softcapping\": 30.0", "field 'final_logit_softcapping'"},
        {"qk_norm", "\"qk_norm\": true", "field 'qk_norm'"},
        {"use_qk_norm", "\"use_qk_norm\": true", "field 'use_qk_norm'"},
        {"attention_chunk_size", "\"attention_chunk_size\": 8192", "field 'attention_chunk_size'"},
        {"sliding_window_pattern", "\"sliding_window_pattern\": 6", "field 'sliding_window_pattern'"},
        {"interleaved_sliding_window", "\"interleaved_sliding_window\": 4096", "field 'interleaved_sliding_window'"},
        {"use_bidirectional_attention", "\"use_bidirectional_attention\": true", "field 'use_bidirectional_attention'"},
        {"pretraining_tp 0", "\"pretraining_tp\": 0", "field 'pretraining_tp'"},
        {"attention_bias string", "\"attention_bias\": \"yes\"", "field 'attention_bias'"},
        {"llama sliding_window", "\"sliding_window\": 4096", "field 'sliding_window': 4096, but LlamaForCausalLM"},
        {"llama use_sliding_window", "\"use_sliding_window\": true", "field 'use_sliding_window'"},
        {"llama layer_types sliding", "\"layer_types\": [\"full_attention\", \"sliding_attention\"]",
         "field 'layer_types': layer 1 is \"sliding_attention\""},
        {"mistral use_sliding_window false with a window", "\"model_type\": \"mistral\", \"architectures\": "
         "[\"MistralForCausalLM\"], \"use_sliding_window\": false, \"sliding_window\": 4096",
         "field 'use_sliding_window': false, with sliding_window 4096"},
        {"mistral layer_types with a full layer", "\"model_type\": \"mistral\", \"architectures\": "
         "[\"MistralForCausalLM\"], \"sliding_window\": 64, \"layer_types\": [\"sliding_attention\", "
         "\"full_attention\"]", "field 'layer_types': layer 1 is \"full_attention\""},
        {"mistral attention_bias", "\"model_type\": \"mistral\", \"architectures\": [\"MistralForCausalLM\"], "
         "\"attention_bias\": true", "field 'attention_bias'"},
        {"mistral mlp_bias", "\"model_type\": \"mistral\", \"architectures\": [\"MistralForCausalLM\"], "
         "\"mlp_bias\": true", "field 'mlp_bias'"},
        {"qwen2 attention_bias", "\"model_type\": \"qwen2\", \"architectures\": [\"Qwen2ForCausalLM\"], "
         "\"attention_bias\": true", "field 'attention_bias'"},
        {"qwen2 mlp_bias", "\"model_type\": \"qwen2\", \"architectures\": [\"Qwen2ForCausalLM\"], "
         "\"mlp_bias\": true", "field 'mlp_bias'"},
        {"sliding_window 0", "\"model_type\": \"mistral\", \"architectures\": [\"MistralForCausalLM\"], \"sliding_window\": 0", "field 'sliding_window'"},
        {"sliding_window string", "\"model_type\": \"mistral\", \"architectures\": [\"MistralForCausalLM\"], \"sliding_window\": \"4k\"", "field 'sliding_window'"},
        {"max_window_layers negative", "\"model_type\": \"qwen2\", \"architectures\": [\"Qwen2ForCausalLM\"], \"max_window_layers\": -1",
         "field 'max_window_layers'"},
        {"layer_types wrong length", "\"model_type\": \"qwen2\", \"architectures\": [\"Qwen2ForCausalLM\"], \"layer_types\": [\"full_attention\"]",
         "field 'layer_types'"},
        {"layer_types unknown type", "\"model_type\": \"qwen2\", \"architectures\": [\"Qwen2ForCausalLM\"], \"layer_types\": [\"full_attention\", "
         "\"chunked_attention\"]", "field 'layer_types': expected only"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *d = tmp_dir();
        write_cfg(d, bad[i].extra, NULL);
        expect_cfg_fail(bad[i].label, d, bad[i].what);
        tmp_rm(d);
    }
}

int main(void)
{
    log_min_level = LOG_ERROR; /* model_type warnings are expected below */
    test_fixture_configs();
    test_fixture_weights();
    test_bad_safetensors();
    test_bad_index();
    test_bad_configs();
    test_config_variants();
    test_set_rope_json();
    test_arch_configs();
    return test_report("test_loader");
}
