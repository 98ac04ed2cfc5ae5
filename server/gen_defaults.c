/* gen_defaults.c - generation_config.json's sampling defaults, one path for `serve` and
 * `generate`.
 *
 * vLLM (ModelConfig.get_diff_sampling_param, then to_sampling_params) fills the sampling fields a
 * request leaves unset from the checkpoint's generation_config.json: temperature, top_p, top_k,
 * min_p, repetition_penalty, and max_new_tokens as max_tokens. `--generation-config auto` reads
 * the model directory's file, `vllm` reads it for the EOS ids only, `DIR` reads DIR's (whose
 * max_new_tokens then also caps every request). The HTTP server (http.c) and the command line
 * (main.c, generate) both go through gen_defaults_load / gen_defaults_apply, so a checkpoint's
 * temperature 0.6 means the same thing in a curl request and in `ropeserve generate`.
 *
 * Rejected alternative: resolving the defaults in main.c and handing the server finished
 * sampling_params. A request's unset fields are known only after its JSON is parsed, so the
 * server needs the rule itself; the CLI uses the same function with its own "given" bits. */
#include "server_internal.h"

#include <stdio.h>
#include <string.h>

int gen_defaults_load(struct gen_defaults *d, const char *model_dir, const char *mode, char *err)
{
    memset(d, 0, sizeof *d);
    if (!mode) mode = "auto";
    if (!*mode) return set_err(err, -1, "--generation-config: expected auto, vllm or a directory");
    const char *dir = !strcmp(mode, "auto") || !strcmp(mode, "vllm") ? model_dir : mode;
    d->sampling = strcmp(mode, "vllm") != 0;
    d->cap_max_tokens = dir != model_dir;
    if (dir && model_generation_config_load(&d->g, dir, err)) return -1;
    if (!d->sampling)
        snprintf(d->source, sizeof d->source, "--generation-config vllm (the model's sampling defaults unused)");
    else if (!dir)
        snprintf(d->source, sizeof d->source, "no model directory");
    else
        snprintf(d->source, sizeof d->source, "%s/%s", dir,
                 d->g.present ? "generation_config.json" : "config.json (no generation_config.json)");
    return 0;
}

unsigned gen_defaults_apply(const struct gen_defaults *d, struct sampling_params *sp, unsigned given)
{
    const struct generation_config *g = &d->g;
    unsigned took = 0;
    if (!d->sampling) return 0;
    if (g->has_temperature && !(given & OAI_GIVEN_TEMPERATURE)) {
        sp->temperature = (float)g->temperature;
        took |= OAI_GIVEN_TEMPERATURE;
    }
    if (g->has_top_p && !(given & OAI_GIVEN_TOP_P)) {
        sp->top_p = (float)g->top_p;
        took |= OAI_GIVEN_TOP_P;
    }
    if (g->has_top_k && !(given & OAI_GIVEN_TOP_K)) {
        sp->top_k = g->top_k > 0 ? g->top_k : 0; /* -1 (vLLM) and 0 (transformers): off */
        took |= OAI_GIVEN_TOP_K;
    }
    if (g->has_min_p && !(given & OAI_GIVEN_MIN_P)) {
        sp->min_p = (float)g->min_p;
        took |= OAI_GIVEN_MIN_P;
    }
    if (g->has_repetition_penalty && !(given & OAI_GIVEN_REPETITION_PENALTY)) {
        sp->repetition_penalty = (float)g->repetition_penalty;
        took |= OAI_GIVEN_REPETITION_PENALTY;
    }
    return took;
}

int gen_defaults_cap(const struct gen_defaults *d, int max_tokens)
{
    const struct generation_config *g = &d->g;
    if (d->sampling && d->cap_max_tokens && g->has_max_new_tokens && max_tokens > g->max_new_tokens)
        return g->max_new_tokens;
    return max_tokens;
}

int gen_defaults_chat_max_tokens(const struct gen_defaults *d, int max_tokens)
{
    const struct generation_config *g = &d->g;
    if (d->sampling && g->has_max_new_tokens && max_tokens > g->max_new_tokens) return g->max_new_tokens;
    return max_tokens;
}

void gen_defaults_describe(const struct gen_defaults *d, struct strbuf *b)
{
    const struct generation_config *g = &d->g;
    size_t start = b->len;
    if (d->sampling) {
        if (g->has_temperature) sb_printf(b, " temperature %g", g->temperature);
        if (g->has_top_p) sb_printf(b, " top_p %g", g->top_p);
        if (g->has_top_k) sb_printf(b, " top_k %d", g->top_k);
        if (g->has_min_p) sb_printf(b, " min_p %g", g->min_p);
        if (g->has_repetition_penalty) sb_printf(b, " repetition_penalty %g", g->repetition_penalty);
        if (g->has_max_new_tokens)
            sb_printf(b, " max_tokens %d%s", g->max_new_tokens, d->cap_max_tokens ? " (cap)" : "");
    }
    if (b->len == start) sb_puts(b, " none (requests set their own)");
}
