/* fuzz_config.c - config.json (models/config.c, models/rope.c) and generation_config.json: the
 * first byte picks the file, the rest is its text. A config that loads must give a RoPE that
 * initializes or fails with a message; nothing may crash. */
#include "fuzz.h"
#include "../../models/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    log_min_level = LOG_ERROR;
    char err[ERR_LEN];
    const char *dir = fuzz_dir();
    if (data[0] & 1) {
        char path[512];
        snprintf(path, sizeof path, "%s/config.json", dir);
        unlink(path);
        fuzz_write("generation_config.json", data + 1, size - 1);
        struct generation_config g;
        memset(&g, 0, sizeof g);
        if (model_generation_config_load(&g, dir, err)) FUZZ_ASSERT(err[0]);
        return 0;
    }
    char path[512];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    unlink(path);
    fuzz_write("config.json", data + 1, size - 1);
    struct model_config c;
    memset(&c, 0, sizeof c);
    if (model_config_load(&c, dir, err)) {
        FUZZ_ASSERT(err[0]);
        return 0;
    }
    FUZZ_ASSERT(c.vocab_size > 0 && c.n_layers > 0);
    struct rope r;
    memset(&r, 0, sizeof r);
    if (rope_init(&r, &c, dir, err) == 0) {
        int len = c.max_pos > 0 && c.max_pos < 4096 ? c.max_pos : 4096;
        float *inv = malloc(sizeof(float) * 4096), af = 0;
        if (r.rotary_dim > 0 && r.rotary_dim <= 8192) rope_freqs(&r, len, inv, &af);
        free(inv);
        rope_free(&r);
    }
    model_config_free(&c);
    return 0;
}
