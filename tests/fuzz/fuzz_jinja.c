/* fuzz_jinja.c - the chat-template engine (server/jinja.c): the input is template source, then a
 * NUL byte, then a JSON object. The template compiles or fails with a message; a compiled one
 * renders the object's members as variables, and renders the object as a chat request (vLLM's
 * messages/tools handling), within tight limits (every limit is an error, never a hang). */
#include "fuzz.h"
#include "../../server/server_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    log_min_level = LOG_ERROR;
    const char *src = (const char *)data;
    const uint8_t *nul = memchr(data, 0, size);
    size_t slen = nul ? (size_t)(nul - data) : size;
    const char *vars = nul ? (const char *)nul + 1 : "{}";
    size_t vlen = nul ? size - slen - 1 : 2;
    char err[ERR_LEN];
    jinja_tmpl_t *t = NULL;
    if (jinja_compile(&t, src, slen, err)) {
        FUZZ_ASSERT(err[0] != 0);
        return 0;
    }
    struct jinja_limits lim = jinja_default_limits();
    lim.max_output = 1 << 16;
    lim.max_memory = 1 << 22;
    lim.max_steps = 20000;
    lim.max_iterations = 5000;
    lim.max_depth = 16;
    char *out = NULL;
    size_t n = 0;
    if (jinja_render_json(t, vars, vlen, 1700000000, &lim, &out, &n, err) == 0) {
        FUZZ_ASSERT(out && strlen(out) <= n && n <= lim.max_output);
        free(out);
    } else {
        FUZZ_ASSERT(err[0] != 0);
    }
    struct chat_template_args a = {"<s>", "</s>", "<unk>", NULL, 1, 0, 1700000000, &lim};
    out = NULL;
    if (chat_template_render(t, vars, vlen, &a, &out, &n, err) == 0) free(out);
    jinja_free(t);
    return 0;
}
