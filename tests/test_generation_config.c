/* test_generation_config.c - generation_config.json and EOS lists as models/ reads them: every
 * eos_token_id (int or list, config.json and generation_config.json), the sampling defaults vLLM
 * takes (to_diff_dict: transformers' default values and nulls count as absent), the config.json
 * fallback without generation_config.json, range checks naming file and field. The HTTP side
 * (defaults applied and overridden, EOS ids ending requests) is tests/test_chat_http.py. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/common.h"
#include "../models/model.h"
#include "test.h"

static char dir[64];
static char err[ERR_LEN];

static void put(const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void rm(const char *name)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(path);
}

static const char *config(const char *eos)
{
    static char buf[1024];
    snprintf(buf, sizeof buf, "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":512,\"hidden_size\":64,"
             "\"intermediate_size\":128,\"num_hidden_layers\":1,\"num_attention_heads\":4,"
             "\"max_position_embeddings\":256%s%s}", eos ? ",\"eos_token_id\":" : "", eos ? eos : "");
    return buf;
}

static int gen(const char *json, struct generation_config *g)
{
    put("generation_config.json", json);
    return model_generation_config_load(g, dir, err);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/ropeserve-gencfg-XXXXXX");
    if (!mkdtemp(dir)) return 1;
    struct model_config c;
    struct generation_config g;

    put("config.json", config("[128001, 128008, 128009]"));
    TEST_COND("config.json eos list", model_config_load(&c, dir, err) == 0 && c.n_eos == 3 && c.eos_id == 128001 &&
                                          c.eos_ids[2] == 128009);
    TEST_COND("the primary EOS defaults to config.json's first (the caller puts the tokenizer's)",
              c.eos_primary == 128001);
    TEST_COND("add_eos dedupes", model_config_add_eos(&c, 128008) == 0 && model_config_add_eos(&c, 7) == 0 &&
                                     model_config_add_eos(&c, -1) == 0 && c.n_eos == 4 && c.eos_ids[3] == 7);
    model_config_free(&c);
    put("config.json", config("2"));
    TEST_COND("config.json eos int", model_config_load(&c, dir, err) == 0 && c.n_eos == 1 && c.eos_id == 2);
    model_config_free(&c);
    put("config.json", config("null"));
    TEST_COND("config.json eos null", model_config_load(&c, dir, err) == 0 && c.n_eos == 0 && c.eos_id == -1 &&
                                          c.eos_primary == -1);
    model_config_free(&c);
    put("config.json", config("[2, \"x\"]"));
    TEST_COND("config.json bad eos names the field", model_config_load(&c, dir, err) != 0 &&
                                                         strstr(err, "config.json") && strstr(err, "eos_token_id"));
    put("config.json", config("[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]"));
    TEST_COND("config.json: too many eos ids", model_config_load(&c, dir, err) != 0 && strstr(err, "eos_token_id"));

    put("config.json", config("2"));
    TEST_COND("no generation_config.json: config.json's keys", model_generation_config_load(&g, dir, err) == 0 &&
                                                                  !g.present && g.n_eos == 1 && g.eos_ids[0] == 2 &&
                                                                  !g.has_temperature);
    TEST_COND("eos list and defaults",
              gen("{\"eos_token_id\": [128001, 128009], \"temperature\": 0.6, \"top_p\": 0.9, \"top_k\": 20, \"min_p\": 0.05,"
                  " \"repetition_penalty\": 1.05, \"max_new_tokens\": 2048, \"do_sample\": true, \"max_length\": 4096}", &g) == 0 &&
                  g.present && g.n_eos == 2 && g.eos_ids[1] == 128009 && g.has_temperature && g.temperature == 0.6 &&
                  g.has_top_p && g.top_p == 0.9 && g.has_top_k && g.top_k == 20 && g.has_min_p && g.min_p == 0.05 &&
                  g.has_repetition_penalty && g.repetition_penalty == 1.05 && g.has_max_new_tokens &&
                  g.max_new_tokens == 2048);
    TEST_COND("transformers' defaults count as absent (to_diff_dict)",
              gen("{\"temperature\": 1.0, \"top_p\": 1.0, \"top_k\": 50, \"repetition_penalty\": 1.0}", &g) == 0 &&
                  !g.has_temperature && !g.has_top_p && !g.has_top_k && !g.has_repetition_penalty);
    TEST_COND("nulls count as absent", gen("{\"temperature\": null, \"min_p\": null, \"eos_token_id\": null}", &g) == 0 &&
                                           !g.has_temperature && !g.has_min_p && g.n_eos == 0);
    TEST_COND("min_p 0 and top_k -1 are values", gen("{\"min_p\": 0, \"top_k\": -1, \"temperature\": 0}", &g) == 0 &&
                                                     g.has_min_p && g.min_p == 0 && g.has_top_k && g.top_k == -1 &&
                                                     g.has_temperature && g.temperature == 0);
    static const char *const bad[][2] = {
        {"{\"temperature\": -0.5}", "temperature"}, {"{\"temperature\": \"hot\"}", "temperature"},
        {"{\"top_p\": 0}", "top_p"}, {"{\"top_p\": 1.5}", "top_p"}, {"{\"top_k\": 2.5}", "top_k"},
        {"{\"top_k\": -2}", "top_k"}, {"{\"min_p\": 2}", "min_p"}, {"{\"repetition_penalty\": 0}", "repetition_penalty"},
        {"{\"max_new_tokens\": 0}", "max_new_tokens"}, {"{\"eos_token_id\": [1.5]}", "eos_token_id"},
        {"[1]", "JSON object"}, {"{\"temperature\": ", "malformed JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        TEST_CONDF(gen(bad[i][0], &g) != 0 && strstr(err, "generation_config.json") && strstr(err, bad[i][1]),
                   "%s refused naming '%s' (%s)", bad[i][0], bad[i][1], err);
    rm("generation_config.json");
    rm("config.json");
    TEST_COND("neither file: nothing", model_generation_config_load(&g, dir, err) == 0 && !g.present && g.n_eos == 0);
    rmdir(dir);
    return test_report("test_generation_config");
}
