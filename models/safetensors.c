/* safetensors.c - read-only access to the weights of a checkpoint directory: one
 * model.safetensors, or model.safetensors.index.json and the shards its weight_map names.
 *
 * A safetensors file is
 *
 *     [u64 little-endian N][N bytes of JSON header][data section]
 *
 * and the header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]},
 * offsets relative to the start of the data section, plus an optional "__metadata__" object of
 * strings (skipped). Worked example: a header of 80 bytes holding
 * {"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}, "b":{...,"data_offsets":[24,32]}}
 * puts a at file bytes [88, 112) and b at [112, 120).
 *
 * Every file is mmap'ed read-only and stays mapped until st_close(); struct st_tensor points
 * into the mapping, so no weight is copied here (the backend's weight_new() converts/uploads).
 *
 * Invariants after a successful st_open_dir():
 *   - every tensor has dtype F32/F16/BF16, at most ST_MAX_DIMS non-negative dims, and
 *     nbytes == dtype size x product(shape), lying entirely inside its file's data section;
 *   - no two non-empty tensors of one file share a byte; names are unique over all shards;
 *   - the tensor array is sorted by name (st_find is a binary search, st_at walks name order);
 *   - with an index, every weight_map entry is found in the shard it names.
 * The checks are strict because the data is mmap'ed: a header that lied would make the backend
 * read past the mapping (SIGBUS/SIGSEGV) far from the place that could explain it.
 *
 * Rejected: reading the files with read() into malloc'd memory (doubles host memory for large
 * checkpoints and costs a full copy before the upload); a general dtype table (only the three
 * dtypes the backends take are accepted, everything else is a clear error up front). */
#include "model_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/common.h"

#define ST_MAX_HEADER ((uint64_t)100000000) /* the reference implementation's limit */
#define ST_MAX_OFFSET 9007199254740992.0    /* 2^53: JSON numbers above it are not exact */

struct st_file {
    char *path;         /* full path, owned; st_tensor.file points here */
    const uint8_t *map; /* whole file, PROT_READ */
    size_t size;        /* bytes mapped */
    size_t data_start;  /* 8 + header length */
};

struct safetensors {
    char *dir;
    struct st_file *files; /* (n_files) */
    int n_files;
    struct st_tensor *tensors; /* (n_tensors) sorted by name; names owned */
    int n_tensors, cap_tensors;
};

size_t bk_dtype_size(enum bk_dtype t)
{
    switch (t) {
    case BK_F32: return 4;
    case BK_F16: return 2;
    case BK_BF16: return 2;
    case BK_FP8_E4M3: return 1;
    }
    CHECK(0, "unknown bk_dtype %d", (int)t);
}

static const char *dtype_name(enum bk_dtype t)
{
    return t == BK_F32 ? "F32" : t == BK_F16 ? "F16" : "BF16";
}

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir);
    int slash = n > 0 && dir[n - 1] == '/';
    char *p = xmalloc(n + strlen(name) + 2);
    sprintf(p, "%s%s%s", dir, slash ? "" : "/", name);
    return p;
}

static void shape_str(const int64_t *shape, int n_dims, char *buf, size_t len)
{
    size_t o = 0;
    o += snprintf(buf + o, len - o, "[");
    for (int i = 0; i < n_dims && o < len; i++)
        o += snprintf(buf + o, len - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < len) snprintf(buf + o, len - o, "]");
}

// ---------------------------------------------------------------------------------------------
// Mapping files

/* mmap path read-only into f (f->path is taken over: freed by unmap_file either way). */
static int map_file(struct st_file *f, char *path, char *err)
{
    memset(f, 0, sizeof *f);
    f->path = path;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return set_err(err, -1, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) < 0) {
        int e = errno;
        close(fd);
        return set_err(err, -1, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return set_err(err, -1, "%s: not a regular file", path);
    }
    if (sb.st_size == 0) { /* mmap of 0 bytes fails; let the header check report it */
        close(fd);
        return 0;
    }
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file open */
    if (m == MAP_FAILED) return set_err(err, -1, "%s: mmap failed: %s", path, strerror(e));
    f->map = m;
    f->size = (size_t)sb.st_size;
    return 0;
}

static void unmap_file(struct st_file *f)
{
    if (f->map) munmap((void *)f->map, f->size);
    free(f->path);
    memset(f, 0, sizeof *f);
}

/* Parse bytes [0, len) as one JSON value followed by whitespace only. */
static cJSON *parse_json(const char *path, const char *what, const char *text, size_t len,
                         char *err)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (root) {
        while (end < text + len && (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n'))
            end++;
        if (end == text + len) return root;
        cJSON_Delete(root);
        set_err(err, -1, "%s: %s is not valid JSON: trailing bytes at offset %td", path, what,
                end - text);
        return NULL;
    }
    if (!end || end < text || end >= text + len)
        set_err(err, -1, "%s: %s is not valid JSON: unexpected end", path, what);
    else
        set_err(err, -1, "%s: %s is not valid JSON (error at byte %td)", path, what, end - text);
    return NULL;
}

// ---------------------------------------------------------------------------------------------
// One file's header

static int parse_dtype(const char *s, enum bk_dtype *out)
{
    if (!strcmp(s, "F32")) *out = BK_F32;
    else if (!strcmp(s, "F16")) *out = BK_F16;
    else if (!strcmp(s, "BF16")) *out = BK_BF16;
    else return -1;
    return 0;
}

/* An exact non-negative integer below 2^53. */
static int as_u64(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!isfinite(d) || d < 0 || d != floor(d) || d > ST_MAX_OFFSET) return -1;
    *out = (uint64_t)d;
    return 0;
}

static void push_tensor(safetensors_t *st, const struct st_tensor *t)
{
    if (st->n_tensors == st->cap_tensors) {
        st->cap_tensors = st->cap_tensors ? 2 * st->cap_tensors : 64;
        st->tensors = xrealloc(st->tensors, (size_t)st->cap_tensors * sizeof *st->tensors);
    }
    st->tensors[st->n_tensors++] = *t;
}

struct span { size_t begin, end; int idx; };

static int span_cmp(const void *a, const void *b)
{
    const struct span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

/* Check one entry of the header and append it to st->tensors; begin/end returned for the
 * overlap check. */
static int parse_entry(safetensors_t *st, const struct st_file *f, const cJSON *e,
                       size_t data_size, size_t *begin_out, char *err)
{
    const char *name = e->string;
    if (!cJSON_IsObject(e))
        return set_err(err, -1, "%s: tensor '%s': expected an object", f->path, name);

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!cJSON_IsString(dt))
        return set_err(err, -1, "%s: tensor '%s': field 'dtype' missing or not a string", f->path,
                       name);
    struct st_tensor t = {0};
    if (parse_dtype(dt->valuestring, &t.dtype))
        return set_err(err, -1, "%s: tensor '%s': dtype %.16s unsupported (F32, F16 or BF16 only)",
                       f->path, name, dt->valuestring);

    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!cJSON_IsArray(sh))
        return set_err(err, -1, "%s: tensor '%s': field 'shape' missing or not an array", f->path,
                       name);
    if (cJSON_GetArraySize(sh) > ST_MAX_DIMS)
        return set_err(err, -1, "%s: tensor '%s': field 'shape': %d dims, at most %d supported",
                       f->path, name, cJSON_GetArraySize(sh), ST_MAX_DIMS);
    uint64_t n_elems = 1;
    int overflow = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, sh) {
        uint64_t dim;
        if (as_u64(d, &dim))
            return set_err(err, -1, "%s: tensor '%s': field 'shape': expected non-negative "
                           "integers", f->path, name);
        t.shape[t.n_dims++] = (int64_t)dim;
        if (dim && n_elems > UINT64_MAX / dim) overflow = 1;
        n_elems *= dim;
    }

    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    uint64_t begin, end;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 ||
        as_u64(cJSON_GetArrayItem(off, 0), &begin) || as_u64(cJSON_GetArrayItem(off, 1), &end))
        return set_err(err, -1, "%s: tensor '%s': field 'data_offsets': expected [begin, end] "
                       "of non-negative integers", f->path, name);
    if (begin > end)
        return set_err(err, -1, "%s: tensor '%s': data_offsets [%llu, %llu]: begin after end",
                       f->path, name, (unsigned long long)begin, (unsigned long long)end);
    if (end > data_size)
        return set_err(err, -1, "%s: tensor '%s': data_offsets [%llu, %llu] outside the data "
                       "section of %zu bytes", f->path, name, (unsigned long long)begin,
                       (unsigned long long)end, data_size);
    size_t es = bk_dtype_size(t.dtype);
    if (overflow || n_elems > UINT64_MAX / es || end - begin != n_elems * es) {
        char s[128];
        shape_str(t.shape, t.n_dims, s, sizeof s);
        return set_err(err, -1, "%s: tensor '%s': data_offsets span %llu bytes but %s %s needs "
                       "%s%llu", f->path, name, (unsigned long long)(end - begin),
                       dtype_name(t.dtype), s, overflow ? "more than " : "",
                       overflow ? (unsigned long long)UINT64_MAX
                                : (unsigned long long)(n_elems * es));
    }

    t.name = xstrdup(name);
    t.data = f->map + f->data_start + begin;
    t.nbytes = (size_t)(end - begin);
    t.file = f->path;
    push_tensor(st, &t);
    *begin_out = (size_t)begin;
    return 0;
}

/* Check f's header and append its tensors. */
static int parse_file(safetensors_t *st, struct st_file *f, char *err)
{
    if (f->size < 8)
        return set_err(err, -1, "%s: %zu bytes, too small for a safetensors header", f->path,
                       f->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | f->map[i]; /* little-endian on any host */
    if (n == 0 || n > f->size - 8)
        return set_err(err, -1, "%s: header length %llu exceeds the file size of %zu bytes "
                       "(truncated or not a safetensors file)", f->path, (unsigned long long)n,
                       f->size);
    if (n > ST_MAX_HEADER)
        return set_err(err, -1, "%s: header length %llu exceeds the limit of %llu bytes",
                       f->path, (unsigned long long)n, (unsigned long long)ST_MAX_HEADER);
    f->data_start = 8 + (size_t)n;
    size_t data_size = f->size - f->data_start;

    const char *hdr = (const char *)f->map + 8;
    if (hdr[0] != '{')
        return set_err(err, -1, "%s: header is not a JSON object (first byte 0x%02x)", f->path,
                       (unsigned char)hdr[0]);
    cJSON *root = parse_json(f->path, "header", hdr, (size_t)n, err);
    if (!root) return -1;

    int first = st->n_tensors, rc = -1;
    struct span *spans = NULL;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        if (!strcmp(e->string, "__metadata__")) continue;
        size_t begin;
        if (parse_entry(st, f, e, data_size, &begin, err)) goto fail;
    }

    /* No overlaps: sort this file's tensors by begin; empty tensors occupy no bytes. */
    int cnt = st->n_tensors - first;
    spans = xmalloc((size_t)(cnt ? cnt : 1) * sizeof *spans);
    for (int i = 0; i < cnt; i++) {
        const struct st_tensor *t = &st->tensors[first + i];
        size_t b = (size_t)((const uint8_t *)t->data - (f->map + f->data_start));
        spans[i] = (struct span){b, b + t->nbytes, first + i};
    }
    qsort(spans, (size_t)cnt, sizeof *spans, span_cmp);
    int prev = -1;
    for (int i = 0; i < cnt; i++) {
        if (spans[i].begin == spans[i].end) continue;
        if (prev >= 0 && spans[i].begin < spans[prev].end) {
            set_err(err, -1, "%s: tensors '%s' and '%s' overlap (data_offsets [%zu, %zu] and "
                    "[%zu, %zu])", f->path, st->tensors[spans[prev].idx].name,
                    st->tensors[spans[i].idx].name, spans[prev].begin, spans[prev].end,
                    spans[i].begin, spans[i].end);
            goto fail;
        }
        if (prev < 0 || spans[i].end > spans[prev].end) prev = i;
    }
    rc = 0;

fail:
    free(spans);
    cJSON_Delete(root);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// The directory

static int name_cmp(const void *a, const void *b)
{
    return strcmp(((const struct st_tensor *)a)->name, ((const struct st_tensor *)b)->name);
}

/* Sort by name and reject a name that appears twice (in one header or in two shards). */
static int sort_and_dedup(safetensors_t *st, char *err)
{
    if (st->n_tensors == 0) return 0;
    qsort(st->tensors, (size_t)st->n_tensors, sizeof *st->tensors, name_cmp);
    for (int i = 1; i < st->n_tensors; i++) {
        const struct st_tensor *a = &st->tensors[i - 1], *b = &st->tensors[i];
        if (strcmp(a->name, b->name)) continue;
        if (a->file == b->file)
            return set_err(err, -1, "%s: tensor '%s' appears twice in the header", a->file,
                           a->name);
        return set_err(err, -1, "%s: tensor '%s' appears in two shards: %s and %s", st->dir,
                       a->name, a->file, b->file);
    }
    return 0;
}

/* A shard name from weight_map: a plain file name inside the directory. */
static int plain_name(const char *s)
{
    return *s && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..");
}

static int open_index(safetensors_t *st, char *index_path, char *err)
{
    struct st_file idx;
    cJSON *root = NULL;
    const char **shards = NULL;
    int n_shards = 0, rc = -1;

    if (map_file(&idx, index_path, err)) goto fail;
    if (!idx.map) {
        set_err(err, -1, "%s: empty file", idx.path);
        goto fail;
    }
    if (!(root = parse_json(idx.path, "index", (const char *)idx.map, idx.size, err))) goto fail;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        set_err(err, -1, "%s: field 'weight_map': missing or not an object", idx.path);
        goto fail;
    }
    int n_entries = cJSON_GetArraySize(wm);
    if (n_entries == 0) {
        set_err(err, -1, "%s: field 'weight_map': no tensors", idx.path);
        goto fail;
    }

    /* The distinct shards, in first-seen order. */
    shards = xmalloc((size_t)n_entries * sizeof *shards);
    const cJSON *e;
    cJSON_ArrayForEach(e, wm) {
        if (!cJSON_IsString(e) || !plain_name(e->valuestring)) {
            set_err(err, -1, "%s: field 'weight_map': tensor '%s': expected a shard file name "
                    "in this directory", idx.path, e->string);
            goto fail;
        }
        int k = 0;
        while (k < n_shards && strcmp(shards[k], e->valuestring)) k++;
        if (k == n_shards) shards[n_shards++] = e->valuestring;
    }

    st->files = xcalloc((size_t)n_shards, sizeof *st->files);
    for (int k = 0; k < n_shards; k++) {
        char ferr[ERR_LEN];
        struct st_file *f = &st->files[st->n_files++];
        if (map_file(f, path_join(st->dir, shards[k]), ferr)) {
            /* name the tensor that needs the shard, then the system's reason */
            const char *who = "";
            cJSON_ArrayForEach(e, wm) {
                if (!strcmp(e->valuestring, shards[k])) {
                    who = e->string;
                    break;
                }
            }
            set_err(err, -1, "%s: shard '%s' (tensor '%s'): %s", idx.path, shards[k], who, ferr);
            goto fail;
        }
        if (parse_file(st, f, err)) goto fail;
    }
    if (sort_and_dedup(st, err)) goto fail;

    cJSON_ArrayForEach(e, wm) {
        const struct st_tensor *t = st_find(st, e->string);
        int k = 0;
        while (strcmp(shards[k], e->valuestring)) k++; /* present: shards came from wm */
        if (!t || t->file != st->files[k].path) {
            set_err(err, -1, "%s: tensor '%s': weight_map names shard '%s' but %s", idx.path,
                    e->string, e->valuestring, t ? "it is stored in another shard"
                                                 : "the shard does not contain it");
            goto fail;
        }
    }
    rc = 0;

fail:
    free(shards);
    cJSON_Delete(root);
    unmap_file(&idx);
    return rc;
}

int st_open_dir(safetensors_t **out, const char *dir, char *err)
{
    *out = NULL;
    safetensors_t *st = xcalloc(1, sizeof *st);
    st->dir = xstrdup(dir);
    char *single = path_join(dir, "model.safetensors");
    char *index = path_join(dir, "model.safetensors.index.json");
    struct stat sb;

    if (stat(single, &sb) == 0) {
        free(index);
        index = NULL;
        st->files = xcalloc(1, sizeof *st->files);
        st->n_files = 1;
        if (map_file(&st->files[0], single, err)) goto fail;
        if (parse_file(st, &st->files[0], err)) goto fail;
        if (sort_and_dedup(st, err)) goto fail;
    } else if (stat(index, &sb) == 0) {
        free(single);
        single = NULL;
        if (open_index(st, index, err)) goto fail;
    } else {
        if (stat(dir, &sb) != 0)
            set_err(err, -1, "%s: cannot open model directory: %s", dir, strerror(errno));
        else
            set_err(err, -1, "%s: no weights: neither model.safetensors nor "
                    "model.safetensors.index.json found", dir);
        free(single);
        free(index);
        goto fail;
    }
    if (st->n_tensors == 0) {
        set_err(err, -1, "%s: no tensors", st->files[0].path);
        goto fail;
    }
    *out = st;
    return 0;

fail:
    st_close(st);
    return -1;
}

void st_close(safetensors_t *st)
{
    if (!st) return;
    for (int i = 0; i < st->n_tensors; i++) free((char *)st->tensors[i].name);
    for (int i = 0; i < st->n_files; i++) unmap_file(&st->files[i]);
    free(st->tensors);
    free(st->files);
    free(st->dir);
    free(st);
}

const struct st_tensor *st_find(const safetensors_t *st, const char *name)
{
    int lo = 0, hi = st->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(st->tensors[mid].name, name);
        if (c == 0) return &st->tensors[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

int st_get(const safetensors_t *st, const char *name, int n_dims, const int64_t *shape,
           const struct st_tensor **out, char *err)
{
    *out = NULL;
    const struct st_tensor *t = st_find(st, name);
    if (!t) return set_err(err, -1, "%s: required tensor '%s' not found", st->dir, name);
    int same = t->n_dims == n_dims;
    for (int i = 0; same && i < n_dims; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char want[128], got[128];
        shape_str(shape, n_dims, want, sizeof want);
        shape_str(t->shape, t->n_dims, got, sizeof got);
        return set_err(err, -1, "%s: tensor '%s': expected shape %s, found %s", t->file, name,
                       want, got);
    }
    *out = t;
    return 0;
}

int st_count(const safetensors_t *st)
{
    return st->n_tensors;
}

const struct st_tensor *st_at(const safetensors_t *st, int i)
{
    CHECK(i >= 0 && i < st->n_tensors, "st_at(%d) of %d tensors", i, st->n_tensors);
    return &st->tensors[i];
}
