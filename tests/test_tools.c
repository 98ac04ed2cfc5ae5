/* test_tools.c - the tool-call parsers of server/tools.c on fixed model outputs.
 *
 * Without arguments: unit checks of Python-json semantics (what json.dumps(json.loads(x),
 * ensure_ascii=False) writes), vLLM's hermes and llama3_json extraction, and the streaming
 * hold-back. With an argument it is the C side of tests/test_tool_calls.py, which compares it
 * with Python itself over a larger corpus:
 *   test_tools --pyjson            stdin: a JSON list of texts; stdout: a list of strings (null
 *                                  where json.loads would refuse the text)
 *   test_tools --extract PARSER    stdin: a JSON list of answers; stdout: a list of
 *                                  {"called", "content", "calls": [[name, arguments], ...],
 *                                   "safe": [bytes releasable after each prefix]} */
#include <cjson/cJSON.h>
#include <string.h>

#include "../server/server_internal.h"
#include "test.h"

static int py(const char *in, const char *want)
{
    char *out = NULL;
    int rc = tool_json_python(in, strlen(in), &out);
    int ok = want ? rc == 0 && !strcmp(out, want) : rc < 0;
    if (!ok) printf("  json %s -> %s (want %s)\n", in, rc ? "(refused)" : out, want ? want : "(refused)");
    free(out);
    return ok;
}

/* One answer through a parser: called, the content ("\1" for null), and up to two calls. */
static int ex(int parser, const char *text, int called, const char *content, const char *n0, const char *a0,
              const char *n1, const char *a1)
{
    struct tool_result r;
    tool_extract(parser, text, strlen(text), &r);
    int ok = r.called == called;
    if (ok && content) {
        if (!strcmp(content, "\1")) ok = r.content_null;
        else ok = !r.content_null && r.content_len == strlen(content) && !memcmp(text, content, r.content_len);
    }
    int want_n = n1 ? 2 : n0 ? 1 : 0;
    if (ok && called) ok = r.n_calls == want_n;
    if (ok && n0) ok = !strcmp(r.calls[0].name, n0) && !strcmp(r.calls[0].arguments, a0) &&
                       !strncmp(r.calls[0].id, "chatcmpl-tool-", 14) && strlen(r.calls[0].id) == 14 + 32;
    if (ok && n1) ok = !strcmp(r.calls[1].name, n1) && !strcmp(r.calls[1].arguments, a1) &&
                       strcmp(r.calls[0].id, r.calls[1].id);
    if (!ok) {
        printf("  %s: %s -> called %d, %d calls", tool_parser_name(parser), text, r.called, r.n_calls);
        for (int i = 0; i < r.n_calls; i++) printf(" [%s %s]", r.calls[i].name, r.calls[i].arguments);
        printf(" content %s%.*s\n", r.content_null ? "null " : "", (int)r.content_len, text);
    }
    tool_result_free(&r);
    return ok;
}

static size_t safe(int parser, const char *t) { return tool_stream_safe(parser, t, strlen(t)); }

static int unit(void)
{
    /* Python's json.loads + json.dumps(ensure_ascii=False) */
    TEST_COND("dumps separators", py("{\"a\":1,\"b\":[true,false,null]}", "{\"a\": 1, \"b\": [true, false, null]}"));
    TEST_COND("dumps floats as repr", py("[1.50, 1e5, 1E16, 1e-5, 0.0001, 2.5e-7, 123.456, 1e15]",
                                         "[1.5, 100000.0, 1e+16, 1e-05, 0.0001, 2.5e-07, 123.456, 1000000000000000.0]"));
    TEST_COND("float shortest repr", py("[0.1, 0.30000000000000004, 5e-324, 1.7976931348623157e308]",
                                        "[0.1, 0.30000000000000004, 5e-324, 1.7976931348623157e+308]"));
    TEST_COND("big ints stay exact", py("123456789012345678901234567890", "123456789012345678901234567890"));
    TEST_COND("-0 is 0, -0.0 stays", py("[-0, -0.0, -1]", "[0, -0.0, -1]"));
    TEST_COND("NaN, Infinity, overflow", py("[NaN, Infinity, -Infinity, 1e400]", "[NaN, Infinity, -Infinity, Infinity]"));
    TEST_COND("repeated key: first place, last value", py("{\"a\": 1, \"b\": 2, \"a\": 3}", "{\"a\": 3, \"b\": 2}"));
    TEST_COND("non-ASCII as is, surrogate pairs joined",
              py("\"\\u00e9 \\ud83d\\ude00 \xc3\xa9\"", "\"\xc3\xa9 \xf0\x9f\x98\x80 \xc3\xa9\""));
    TEST_COND("escapes: \\n \\t \\u0001 \\/ \\\"", py("\"a\\nb\\tc\\u0001\\/\\\"\"", "\"a\\nb\\tc\\u0001/\\\"\""));
    TEST_COND("DEL stays raw", py("\"\\u007f\"", "\"\x7f\""));
    TEST_COND("lone surrogate refused", py("\"\\ud800\"", NULL) && py("\"\\udc00x\"", NULL));
    TEST_COND("raw control character refused", py("\"a\tb\"", NULL));
    TEST_COND("leading zero, trailing comma, extra data refused",
              py("01", NULL) && py("[1,]", NULL) && py("{} {}", NULL) && py("", NULL) && py("1.", NULL));
    TEST_COND("whitespace around", py(" \n{ } \t", "{}"));
    char deep[1300];
    memset(deep, '[', 600);
    memset(deep + 600, ']', 600);
    deep[1200] = 0;
    TEST_COND("deep nesting refused past the limit", py(deep, NULL) && py("[[[[[[[[[[]]]]]]]]]]", "[[[[[[[[[[]]]]]]]]]]"));

    /* hermes (vLLM Hermes2ProToolParser.extract_tool_calls) */
    int H = TOOL_PARSER_HERMES, L = TOOL_PARSER_LLAMA3_JSON;
    TEST_COND("hermes: plain text", ex(H, "Hello there", 0, "Hello there", NULL, NULL, NULL, NULL));
    TEST_COND("hermes: one call, Qwen2.5's newlines",
              ex(H, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\",\"days\":2}}\n</tool_call>",
                 1, "\1", "get_weather", "{\"city\": \"Paris\", \"days\": 2}", NULL, NULL));
    TEST_COND("hermes: content before, two calls, the last unclosed",
              ex(H, "Let me check. <tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>\n"
                    "<tool_call>{\"arguments\": [1.0], \"name\": \"b\"}",
                 1, "Let me check. ", "a", "{}", "b", "[1.0]"));
    TEST_COND("hermes: arguments given as a JSON string are parsed",
              ex(H, "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"x\\\": 1e2}\"}</tool_call>", 1, "\1", "f",
                 "{\"x\": 100.0}", NULL, NULL));
    TEST_COND("hermes: invalid JSON -> all content",
              ex(H, "ok <tool_call>{\"name\": \"f\", \"arguments\": {</tool_call>", 0,
                 "ok <tool_call>{\"name\": \"f\", \"arguments\": {</tool_call>", NULL, NULL, NULL, NULL));
    TEST_COND("hermes: missing arguments -> content",
              ex(H, "<tool_call>{\"name\": \"f\"}</tool_call>", 0, "<tool_call>{\"name\": \"f\"}</tool_call>", NULL, NULL,
                 NULL, NULL));
    TEST_COND("hermes: a name that is not a string -> content",
              ex(H, "<tool_call>{\"name\": 3, \"arguments\": {}}</tool_call>", 0, NULL, NULL, NULL, NULL, NULL));
    TEST_COND("hermes: one bad call among good ones -> content",
              ex(H, "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call><tool_call>[]</tool_call>", 0, NULL,
                 NULL, NULL, NULL, NULL));
    TEST_COND("hermes: null arguments are kept", ex(H, "<tool_call>{\"name\": \"a\", \"arguments\": null}</tool_call>",
                                                    1, "\1", "a", "null", NULL, NULL));
    TEST_COND("hermes: empty block -> content", ex(H, "<tool_call></tool_call>", 0, NULL, NULL, NULL, NULL, NULL));

    /* llama3_json (vLLM Llama3JsonToolParser.extract_tool_calls) */
    TEST_COND("llama3: plain text", ex(L, "The weather is fine.", 0, "The weather is fine.", NULL, NULL, NULL, NULL));
    TEST_COND("llama3: parameters", ex(L, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Z\xc3\xbcrich\"}}", 1,
                                       "\1", "get_weather", "{\"city\": \"Z\xc3\xbcrich\"}", NULL, NULL));
    TEST_COND("llama3: arguments win over parameters; text around is dropped",
              ex(L, "Sure: {\"name\": \"f\", \"arguments\": {\"a\": [1, {\"b\": 2}]}, \"parameters\": 1} done", 1, "\1",
                 "f", "{\"a\": [1, {\"b\": 2}]}", NULL, NULL));
    TEST_COND("llama3: two calls separated by '; '",
              ex(L, "{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {\"x\": true}}", 1, "\1",
                 "a", "{}", "b", "{\"x\": true}"));
    /* vLLM skips a '{' at exactly the previous object's end (start <= end_index), then reads the
     * second object's inner {} as a call without "name": the whole answer is content */
    TEST_COND("llama3: objects back to back -> content (vLLM's start <= end_index)",
              ex(L, "{\"name\": \"a\", \"parameters\": {}}{\"name\": \"b\", \"parameters\": {}}", 0, NULL, NULL,
                 NULL, NULL, NULL));
    TEST_COND("llama3: a brace that is not JSON -> all content",
              ex(L, "use {curly} braces", 0, "use {curly} braces", NULL, NULL, NULL, NULL));
    TEST_COND("llama3: JSON without name -> content",
              ex(L, "{\"city\": \"Paris\"}", 0, "{\"city\": \"Paris\"}", NULL, NULL, NULL, NULL));
    TEST_COND("llama3: without arguments or parameters -> content",
              ex(L, "{\"name\": \"f\"}", 0, NULL, NULL, NULL, NULL, NULL));

    /* streaming hold-back */
    TEST_COND("stream hermes: text goes", safe(H, "Hello") == 5);
    TEST_COND("stream hermes: a partial tag is held", safe(H, "Hello <tool_") == 6 && safe(H, "a<") == 1);
    TEST_COND("stream hermes: from the tag on is held", safe(H, "Hi <tool_call>{\"na") == 3);
    TEST_COND("stream hermes: '<' that cannot start the tag goes", safe(H, "a < b") == 5);
    TEST_COND("stream llama3: an answer opening with '{' is held", safe(L, "{\"name\"") == 0 && safe(L, "") == 0);
    TEST_COND("stream llama3: other answers go", safe(L, "The {x}") == 7 && safe(L, " {") == 2);
    TEST_COND("stream llama3: a partial <|python_tag|> is held", safe(L, "<|pyth") == 0);
    TEST_COND("parser names", tool_parser_from_name("hermes") == TOOL_PARSER_HERMES &&
                                  tool_parser_from_name("llama3_json") == TOOL_PARSER_LLAMA3_JSON &&
                                  tool_parser_from_name("mistral") == -1);
    return test_report("test_tools");
}

static char *read_stdin(void)
{
    struct strbuf b = {0};
    char buf[65536];
    size_t n;
    sb_append(&b, "", 0);
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) sb_append(&b, buf, n);
    return b.p;
}

int main(int argc, char **argv)
{
    if (argc < 2) return unit();
    char *in = read_stdin();
    cJSON *list = cJSON_Parse(in), *it, *out = cJSON_CreateArray();
    free(in);
    if (!cJSON_IsArray(list)) return 2;
    int parser = argc > 2 ? tool_parser_from_name(argv[2]) : 0;
    cJSON_ArrayForEach(it, list) {
        const char *t = it->valuestring;
        size_t n = strlen(t);
        if (!strcmp(argv[1], "--pyjson")) {
            char *s = NULL;
            cJSON_AddItemToArray(out, tool_json_python(t, n, &s) ? cJSON_CreateNull() : json_string_n(s, strlen(s)));
            free(s);
            continue;
        }
        struct tool_result r;
        tool_extract(parser, t, n, &r);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddBoolToObject(o, "called", r.called);
        if (r.content_null) cJSON_AddNullToObject(o, "content");
        else cJSON_AddItemToObject(o, "content", json_string_n(t, r.content_len));
        cJSON *calls = cJSON_AddArrayToObject(o, "calls");
        for (int i = 0; i < r.n_calls; i++) {
            cJSON *c = cJSON_CreateArray();
            cJSON_AddItemToArray(c, json_string_n(r.calls[i].name, strlen(r.calls[i].name)));
            cJSON_AddItemToArray(c, json_string_n(r.calls[i].arguments, strlen(r.calls[i].arguments)));
            cJSON_AddItemToArray(calls, c);
        }
        cJSON *sf = cJSON_AddArrayToObject(o, "safe");
        for (size_t k = 0; k <= n; k++) cJSON_AddItemToArray(sf, cJSON_CreateNumber((double)tool_stream_safe(parser, t, k)));
        cJSON_AddItemToArray(out, o);
        tool_result_free(&r);
    }
    char *s = cJSON_PrintUnformatted(out);
    printf("%s\n", s);
    free(s);
    cJSON_Delete(out);
    cJSON_Delete(list);
    return 0;
}
