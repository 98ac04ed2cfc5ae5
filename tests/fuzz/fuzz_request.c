/* fuzz_request.c - the request JSON parsers (server/openai.c): completions, chat, /tokenize,
 * /detokenize. The first byte picks the parser, the rest is the body. A parse either succeeds
 * (then the request is checked against a context length, a chat one rendered with a built-in
 * template) or fails with a 4xx error whose JSON renders. */
#include "fuzz.h"
#include "../../server/server_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    log_min_level = LOG_ERROR;
    int which = data[0] % 4;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    struct oai_request r;
    struct oai_error e;
    memset(&r, 0, sizeof r);
    memset(&e, 0, sizeof e);
    int rc;
    if (which == 0) rc = oai_parse_request(OAI_COMPLETION, body, len, 512, 16, &r, &e);
    else if (which == 1) rc = oai_parse_request(OAI_CHAT, body, len, 512, 16, &r, &e);
    else if (which == 2) rc = oai_parse_tokenize(body, len, &r, &e);
    else rc = oai_parse_detokenize(body, len, 512, &r, &e);
    if (rc) {
        FUZZ_ASSERT(e.status >= 400 && e.status < 500);
        char *j = oai_error_json(&e);
        FUZZ_ASSERT(j && j[0] == '{');
        free(j);
        return 0;
    }
    if (which == 0) {
        for (int i = 0; i < r.n_prompts; i++) {
            FUZZ_ASSERT(r.prompts[i].text || r.prompts[i].n_ids >= 0);
            if (r.prompts[i].ids)
                for (int k = 0; k < r.prompts[i].n_ids; k++) FUZZ_ASSERT(r.prompts[i].ids[k] >= 0 && r.prompts[i].ids[k] < 512);
            struct oai_prompt p = r.prompts[i];
            if (p.ids && p.n_ids > 0) {
                struct oai_prompt copy = {NULL, malloc(sizeof(int32_t) * (size_t)p.n_ids), p.n_ids};
                memcpy(copy.ids, p.ids, sizeof(int32_t) * (size_t)p.n_ids);
                oai_fit_prompt(&r, &copy, 64, &e);
                free(copy.ids);
            }
        }
    }
    if (which == 1 && r.n_msgs > 0) {
        for (int t = CHAT_TEMPLATE_PLAIN; t <= CHAT_TEMPLATE_CHATML; t++) {
            char *out = NULL;
            if (chat_render((enum chat_template)t, r.msgs, r.n_msgs, 1, &out, &e) == 0) FUZZ_ASSERT(out != NULL);
            free(out);
        }
    }
    oai_request_free(&r);
    return 0;
}
