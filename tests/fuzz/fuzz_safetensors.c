/* fuzz_safetensors.c - the safetensors reader (models/safetensors.c): the input is a
 * model.safetensors file (8-byte header length, JSON header, data). It opens with every tensor
 * inside the file, or fails with an error naming the file. */
#include "fuzz.h"
#include "../../models/model_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    log_min_level = LOG_ERROR;
    fuzz_write("model.safetensors", data, size);
    safetensors_t *st = NULL;
    char err[ERR_LEN];
    if (st_open_dir(&st, fuzz_dir(), err)) {
        FUZZ_ASSERT(strstr(err, "model.safetensors") != NULL);
        return 0;
    }
    for (int i = 0; i < st_count(st); i++) {
        const struct st_tensor *t = st_at(st, i);
        FUZZ_ASSERT(t && t->name && st_find(st, t->name));
        size_t want = bk_dtype_size(t->dtype);
        for (int k = 0; k < t->n_dims; k++) want *= (size_t)t->shape[k];
        FUZZ_ASSERT(want == t->nbytes);
        FUZZ_ASSERT((const uint8_t *)t->data >= (const uint8_t *)0 && t->nbytes <= size);
        volatile uint8_t sum = 0;
        for (size_t b = 0; b < t->nbytes; b++) sum += ((const uint8_t *)t->data)[b]; /* inside the mapping */
    }
    st_close(st);
    return 0;
}
