/* test_jinja.c - the chat-template interpreter (server/jinja.c) on its own: load-time errors
 * that name the construct, render-time errors (raise_exception, undefined values, refused
 * Python features), every limit (loops, output, memory, recursion, nesting) as an error and not
 * a crash or a hang, Python's text forms (float repr, str repr, tojson), vLLM's request ->
 * variables mapping (chat_template_render), and a mutation fuzz over the real templates in
 * tests/fixtures/chat_templates (also run under ASan/UBSan by tests/test_asan.sh).
 *
 * Byte identity with jinja2 over real templates and conversations is tests/test_chat_template.py,
 * which drives this program as its renderer:
 *   test_jinja --batch   reads JSON lines {"template": str, "vars": str (JSON text), "now": int,
 *                        "chat": bool, "args": {...}} and writes {"ok": bool, "out"|"error": str}
 *                        per line ("vars" is JSON text so that 1.0 stays a float). */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "../server/server_internal.h"
#include "test.h"

static char err[ERR_LEN];

/* Render src with vars (JSON); returns the malloc'd output or NULL (err set). */
static char *render(const char *src, const char *vars)
{
    jinja_tmpl_t *t;
    if (jinja_compile(&t, src, strlen(src), err)) return NULL;
    char *out = NULL;
    size_t n;
    int rc = jinja_render_json(t, vars ? vars : "{}", strlen(vars ? vars : "{}"), 1700000000, NULL, &out, &n, err);
    jinja_free(t);
    return rc ? NULL : out;
}

/* 1 when src renders exactly to want. */
static int renders(const char *src, const char *vars, const char *want)
{
    char *o = render(src, vars);
    int ok = o && !strcmp(o, want);
    if (!ok) printf("  %s -> %s%s%s (want %s)\n", src, o ? "\"" : "error: ", o ? o : err, o ? "\"" : "", want);
    free(o);
    return ok;
}

/* 1 when src fails (to compile or to render) with a message containing want. */
static int fails(const char *src, const char *vars, const char *want)
{
    char *o = render(src, vars);
    int ok = !o && strstr(err, want) != NULL;
    if (!ok) printf("  %s -> %s (want an error with \"%s\")\n", src, o ? o : err, want);
    free(o);
    return ok;
}

static void test_load_errors(void)
{
    TEST_COND("unknown filter named", fails("{{ x | frobnicate }}", NULL, "no filter named 'frobnicate'"));
    TEST_COND("refused filter named", fails("{{ x | groupby('a') }}", NULL, "filter 'groupby' is not supported"));
    TEST_COND("refused format filter", fails("{{ '%s' | format(1) }}", NULL, "filter 'format' is not supported"));
    TEST_COND("unknown test named", fails("{{ x is frobnicated }}", NULL, "no test named 'frobnicated'"));
    TEST_COND("unknown tag named", fails("{% frobnicate %}", NULL, "unknown tag 'frobnicate'"));
    TEST_COND("include refused", fails("{% include 'x.j2' %}", NULL, "tag 'include' is not supported"));
    TEST_COND("extends refused", fails("{% extends 'x.j2' %}", NULL, "tag 'extends' is not supported"));
    TEST_COND("recursive loop refused", fails("{% for x in y recursive %}{% endfor %}", NULL, "recursive for loops"));
    TEST_COND("do tag (not enabled in transformers)", fails("{% do x.append(1) %}", NULL, "unknown tag 'do'"));
    TEST_COND("missing endif, line number", fails("a\nb\n{% if x %}", NULL, "expected 'elif'"));
    TEST_COND("line numbers", fails("a\nb\n{{ x | nope }}", NULL, "line 3"));
    TEST_COND("unclosed comment", fails("{# x", NULL, "missing end of comment"));
    TEST_COND("unclosed print", fails("{{ x ", NULL, "missing '}}'"));
    TEST_COND("bad bracket", fails("{{ (x] }}", NULL, "unexpected ']'"));
    TEST_COND("break outside loop", fails("{% break %}", NULL, "outside of a for loop"));
    TEST_COND("non-ASCII name", fails("{{ caf\xc3\xa9 }}", NULL, "non-ASCII identifiers"));
    TEST_COND("bad escape", fails("{{ '\\x4' }}", NULL, "truncated \\x escape"));
    TEST_COND("assign to loop", fails("{% set loop = 1 %}", NULL, "cannot assign to 'loop'"));
    TEST_COND("invalid UTF-8 template", fails("\xff", NULL, "not valid UTF-8"));
    TEST_COND("star args refused", fails("{{ f(*x) }}", NULL, "*args"));
    TEST_COND("slice in a multi-item subscript refused (a fuzz finding: it evaluated a NULL node)",
              fails("{{ x[::, 2] }}", NULL, "a slice in a subscript of several items"));
    TEST_COND("slice after an item refused too", fails("{{ x[1, 2:] }}", NULL, "a slice in a subscript"));
}

static void test_render_errors(void)
{
    TEST_COND("raise_exception names the message",
              fails("{{ raise_exception('Only user and assistant roles are supported!') }}", NULL,
                    "raised an error: Only user and assistant roles are supported!"));
    TEST_COND("undefined attribute", fails("{{ foo.bar }}", NULL, "'foo' is undefined"));
    TEST_COND("missing key then attribute", fails("{{ x.y.z }}", "{\"x\":{}}", "'dict object' has no attribute 'y'"));
    TEST_COND("str.format refused", fails("{{ '{}'.format(1) }}", NULL, "str.format() is not supported"));
    TEST_COND("printf formatting refused", fails("{{ '%d' % 3 }}", NULL, "printf-style"));
    TEST_COND("list.append unsafe", fails("{{ [].append(1) }}", NULL, "unsafe"));
    TEST_COND("dict.pop unsafe", fails("{{ {}.pop('a') }}", NULL, "unsafe"));
    TEST_COND("dunder unsafe", fails("{{ ''.__class__ }}", NULL, "unsafe"));
    TEST_COND("int overflow", fails("{{ 9223372036854775807 + 1 }}", NULL, "integer overflow"));
    TEST_COND("division by zero", fails("{{ 1 / 0 }}", NULL, "division by zero"));
    TEST_COND("str + int", fails("{{ 'a' + 1 }}", NULL, "can only concatenate str"));
    TEST_COND("unpack count", fails("{% for a, b in [[1, 2, 3]] %}{% endfor %}", NULL, "too many values to unpack"));
    TEST_COND("not iterable", fails("{% for x in 3 %}{% endfor %}", NULL, "'int' object is not iterable"));
    TEST_COND("macro arity", fails("{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}", NULL, "takes not more than 1"));
    TEST_COND("set attr on dict", fails("{% set d = {} %}{% set d.a = 1 %}", NULL, "namespace"));
    TEST_COND("range too big (sandbox)", fails("{{ range(100001) | length }}", NULL, "Range too big"));
    TEST_COND("vars must be an object", fails("x", "[1]", "JSON object"));
    TEST_COND("vars JSON error", fails("x", "{\"a\":", "invalid JSON"));
    TEST_COND("vars not UTF-8", fails("x", "{\"a\":\"\xff\"}", "not valid UTF-8"));
    TEST_COND("vars control character", fails("x", "{\"a\":\"\x01\"}", "control character"));
    TEST_COND("vars lone surrogate", fails("x", "{\"a\":\"\\ud800\"}", "lone surrogate"));
    TEST_COND("vars escapes decoded", renders("{{ a }}", "{\"a\":\"\\u00e9\\ud83d\\ude00\\n\\\"\\/\"}", "\xc3\xa9\xf0\x9f\x98\x80\n\"/"));
    TEST_COND("lipsum refused", fails("{{ lipsum() }}", NULL, "'lipsum' is not supported"));
    TEST_COND("printing a macro", fails("{% macro m() %}{% endmacro %}{{ m }}", NULL, "cannot print"));
}

static int fails_lim(const char *src, const struct jinja_limits *lim, const char *want)
{
    jinja_tmpl_t *t;
    if (jinja_compile(&t, src, strlen(src), err)) {
        int ok = strstr(err, want) != NULL;
        if (!ok) printf("  compile: %s\n", err);
        return ok;
    }
    char *out = NULL;
    int rc = jinja_render_json(t, "{}", 2, 1, lim, &out, NULL, err);
    jinja_free(t);
    free(out);
    int ok = rc != 0 && strstr(err, want) != NULL;
    if (!ok) printf("  %.60s -> rc %d, %s (want \"%s\")\n", src, rc, rc ? err : "ok", want);
    return ok;
}

static void test_limits(void)
{
    struct jinja_limits l = jinja_default_limits();
    double t0 = now_s();
    TEST_COND("loop iterations capped",
              fails_lim("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", &l,
                        "loop iterations"));
    TEST_COND("macro recursion capped",
              fails_lim("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", &l, "nested deeper"));
    TEST_COND("namespace self-reference printing capped",
              fails_lim("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}", &l, "nests evaluation deeper"));
    TEST_COND("deep list built in a loop, printed",
              fails_lim("{% set ns = namespace(x=[]) %}{% for i in range(5000) %}{% set ns.x = [ns.x] %}{% endfor %}"
                        "{{ ns.x }}", &l, "deeper"));
    TEST_COND("deep lists compared",
              fails_lim("{% set ns = namespace(x=[], y=[]) %}{% for i in range(5000) %}{% set ns.x = [ns.x] %}"
                        "{% set ns.y = [ns.y] %}{% endfor %}{{ ns.x == ns.y }}", &l, "deeper"));
    l.max_output = 1000;
    TEST_COND("output capped", fails_lim("{% for i in range(2000) %}xx{% endfor %}", &l, "larger than 1000 bytes"));
    TEST_COND("string repetition capped", fails_lim("{{ 'x' * 100000 }}", &l, "larger than"));
    l = jinja_default_limits();
    l.max_memory = 1 << 20;
    TEST_COND("memory capped",
              fails_lim("{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                        &l, "more than"));
    l = jinja_default_limits();
    l.max_steps = 1000;
    TEST_COND("steps capped", fails_lim("{% for i in range(10000) %}{{ i }}{% endfor %}", &l, "evaluation steps"));
    /* parser nesting: deep parentheses and blocks are an error, not a stack overflow */
    size_t n = 100000;
    char *deep = xmalloc(2 * n + 16);
    strcpy(deep, "{{ ");
    memset(deep + 3, '(', n);
    memset(deep + 3 + n, ')', n);
    strcpy(deep + 3 + 2 * n, " }}");
    TEST_COND("deep parentheses", fails_lim(deep, NULL, "deeper"));
    free(deep);
    struct strbuf b = {0};
    for (int i = 0; i < 5000; i++) sb_puts(&b, "{% if true %}");
    TEST_COND("deep blocks", fails_lim(b.p, NULL, "deeper"));
    sb_free(&b);
    for (int i = 0; i < 5000; i++) sb_puts(&b, "-");
    sb_puts(&b, "1");
    char *neg = xmalloc(b.len + 16);
    sprintf(neg, "{{ %s }}", b.p);
    TEST_COND("deep unary minus", fails_lim(neg, NULL, "deeper"));
    free(neg);
    sb_free(&b);
    TEST_CONDF(now_s() - t0 < 60, "limits hit in reasonable time (%.1fs; a hang guard, not a benchmark)", now_s() - t0);
}

static void test_python_forms(void)
{
    TEST_COND("floats as repr", renders("{{ 0.1 }} {{ 1e-5 }} {{ 1e16 }} {{ 1234567890123456.0 }} {{ 100.0 }} {{ -0.0 }} "
                                        "{{ 0.1 + 0.2 }} {{ 1.5e-7 }} {{ 1e300 * 1e300 }} {{ 2.5 }}", NULL,
                                        "0.1 1e-05 1e+16 1234567890123456.0 100.0 -0.0 0.30000000000000004 1.5e-07 inf 2.5"));
    TEST_COND("containers as repr", renders("{{ [1, 'a', none, 1.5, true, (1,), {'k': \"it's\"}] }}", NULL,
                                            "[1, 'a', None, 1.5, True, (1,), {'k': \"it's\"}]"));
    TEST_COND("str repr escapes", renders("{{ ['a\\n\\t\\\\', '\\x00\\x7f\\xa0\xc3\xa9'] }}", NULL,
                                          "['a\\n\\t\\\\', '\\x00\\x7f\\xa0\xc3\xa9']"));
    TEST_COND("tojson", renders("{{ {'b': [1, 2.0, none, true, 'x\"\\n\xc3\xa9']} | tojson }}", NULL,
                                "{\"b\": [1, 2.0, null, true, \"x\\\"\\n\xc3\xa9\"]}"));
    TEST_COND("tojson indent sort_keys", renders("{{ {'b': 1, 'a': [], 'c': {}} | tojson(indent=2, sort_keys=true) }}", NULL,
                                                 "{\n  \"a\": [],\n  \"b\": 1,\n  \"c\": {}\n}"));
    TEST_COND("tojson ensure_ascii", renders("{{ '\xc3\xa9\xf0\x9f\x98\x80' | tojson(ensure_ascii=true) }}", NULL,
                                             "\"\\u00e9\\ud83d\\ude00\""));
    TEST_COND("int vs float from JSON", renders("{{ a }} {{ b }} {{ a | tojson }} {{ b | tojson }}", "{\"a\":1,\"b\":1.0}",
                                                "1 1.0 1 1.0"));
    TEST_COND("arithmetic", renders("{{ 7 // -2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ -2 ** 2 }} {{ 7.5 // 2 }}",
                                    NULL, "-4 2 3.5 1024 0.5 4 3.0"));
    TEST_COND("slices", renders("{{ 'abc'[::-1] }} {{ 'h\xc3\xa9llo'[1:3] }} {{ [1, 2, 3][-1] }} {{ [1, 2, 3, 4][::2] }} {{ [1, 2, 3][5:] }}",
                                NULL, "cba \xc3\xa9l 3 [1, 3] []"));
    TEST_COND("equality across types", renders("{{ true == 1 }} {{ 1 == 1.0 }} {{ [1] == [1.0] }} {{ (1,) == [1] }}",
                                               NULL, "True True True False"));
    TEST_COND("str methods", renders("{{ ' a b '.split() }} {{ 'a,b,c'.split(',', 1) }} {{ 'a,b,c'.rsplit(',', 1) }} "
                                     "{{ 'hello world'.title() }} {{ 'x'.startswith(('a', 'x')) }} {{ 'abc'.replace('', '-') }} "
                                     "{{ '\xe3\x80\x80" "a\\n'.strip() }}", NULL,
                                     "['a', 'b'] ['a', 'b,c'] ['a,b', 'c'] Hello World True -a-b-c- a"));
    TEST_COND("loop variables", renders("{% for x in [1, 2, 3] if x > 1 %}{{ loop.index }}/{{ loop.length }}{{ loop.last }} "
                                        "{% endfor %}", NULL, "1/2False 2/2True "));
    TEST_COND("scoping resets each iteration", renders("{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = 5 %}{{ x }}{% endfor %}{{ x }}",
                                                       NULL, "15151"));
    TEST_COND("namespace escapes the loop", renders("{% set ns = namespace(a=0) %}{% for i in [1, 2] %}{% set ns.a = ns.a + i %}{% endfor %}{{ ns.a }}",
                                                    NULL, "3"));
    TEST_COND("whitespace control", renders("  {% if true %}\n  x\n  {% endif %}\n  {{ 1 }}  \n{# c #}\nend\n", NULL,
                                            "  x\n  1  \nend"));
    TEST_COND("dict methods", renders("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{{ d.get('z', 0) }}",
                                      "{\"d\":{\"a\":1,\"items\":2}}", "a=1;items=2;0"));
    /* d.items is the method even when the dict has a key "items"; printing a method is refused
     * (Python prints an address, which no template can rely on) */
    TEST_COND("dict method wins over key", fails("{{ d.items }}", "{\"d\":{\"items\":2}}", "cannot print"));
    TEST_COND("item access finds the key", renders("{{ d['items'] }}", "{\"d\":{\"items\":2}}", "2"));
    TEST_COND("strftime_now (naive local time, TZ=UTC here)",
              renders("{{ strftime_now('%d %b %Y %H:%M:%S %f%z') }}", NULL, "14 Nov 2023 22:13:20 000000"));
}

/* chat_template_render: vLLM's request -> variables */
static int chat(const char *src, const char *body, int agp, int cont, const char *want)
{
    jinja_tmpl_t *t;
    if (jinja_compile(&t, src, strlen(src), err)) {
        printf("  compile: %s\n", err);
        return 0;
    }
    struct chat_template_args a = {.bos_token = "<s>", .eos_token = "</s>", .add_generation_prompt = agp,
                                   .continue_final_message = cont, .now = 1};
    char *out = NULL;
    int rc = chat_template_render(t, body, strlen(body), &a, &out, NULL, err);
    jinja_free(t);
    int ok = want[0] == '!' ? (rc != 0 && strstr(err, want + 1)) : (rc == 0 && !strcmp(out, want));
    if (!ok) printf("  %s -> %s (want %s)\n", body, rc ? err : out, want);
    free(out);
    return ok;
}

static void test_chat_vars(void)
{
    const char *dump = "{% for m in messages %}[{{ m | tojson }}]{% endfor %}|{{ tools }}|{{ add_generation_prompt }}";
    TEST_COND("content parts joined with newlines",
              chat(dump, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
                         "{\"type\":\"text\",\"text\":\"b\"}]}]}", 1, 0,
                   "[{\"role\": \"user\", \"content\": \"a\\nb\"}]|None|True"));
    TEST_COND("null content is empty, tool call arguments parsed, extra keys dropped",
              chat(dump, "{\"messages\":[{\"role\":\"assistant\",\"content\":null,\"extra\":1,\"tool_calls\":[{\"id\":\"c1\","
                         "\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\\\": 1.0}\"}}]}]}", 0, 0,
                   "[{\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": [{\"id\": \"c1\", \"type\": \"function\", "
                   "\"function\": {\"name\": \"f\", \"arguments\": {\"x\": 1.0}}}]}]|None|False"));
    TEST_COND("bad arguments become {}, empty tool_calls dropped",
              chat(dump, "{\"messages\":[{\"role\":\"assistant\",\"content\":\"x\",\"tool_calls\":[{\"function\":{\"name\":\"f\","
                         "\"arguments\":\"not json\"}}]},{\"role\":\"assistant\",\"content\":\"y\",\"tool_calls\":[]}]}", 0, 0,
                   "[{\"role\": \"assistant\", \"content\": \"x\", \"tool_calls\": [{\"function\": {\"name\": \"f\", "
                   "\"arguments\": {}}}]}][{\"role\": \"assistant\", \"content\": \"y\"}]|None|False"));
    TEST_COND("tool message keeps tool_call_id, name kept",
              chat(dump, "{\"messages\":[{\"role\":\"tool\",\"content\":\"r\",\"tool_call_id\":\"c1\",\"name\":\"f\"}]}", 1, 0,
                   "[{\"role\": \"tool\", \"content\": \"r\", \"tool_call_id\": \"c1\", \"name\": \"f\"}]|None|True"));
    TEST_COND("reasoning -> reasoning_content",
              chat(dump, "{\"messages\":[{\"role\":\"assistant\",\"content\":\"a\",\"reasoning\":\"r\"}]}", 0, 0,
                   "[{\"role\": \"assistant\", \"content\": \"a\", \"reasoning\": \"r\", \"reasoning_content\": \"r\"}]|None|False"));
    TEST_COND("tools passed as vLLM dumps them",
              chat("{{ tools | tojson }}", "{\"messages\":[],\"tools\":[{\"function\":{\"name\":\"f\",\"strict\":true},\"x\":1}]}",
                   1, 0, "[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"description\": null, "
                         "\"parameters\": null, \"strict\": true}, \"x\": 1}]"));
    TEST_COND("kwargs become variables and override",
              chat("{{ enable_thinking }}{{ add_generation_prompt }}",
                   "{\"messages\":[],\"chat_template_kwargs\":{\"enable_thinking\":false,\"add_generation_prompt\":false}}",
                   1, 0, "FalseFalse"));
    TEST_COND("kwargs cannot set the template", chat("x", "{\"messages\":[],\"chat_template_kwargs\":{\"chat_template\":\"y\"}}",
                                                     1, 0, "!'chat_template' is not a template variable"));
    TEST_COND("both flags refused", chat("x", "{\"messages\":[]}", 1, 1, "!Cannot set both"));
    const char *chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    TEST_COND("continue_final_message cuts after the final message",
              chat(chatml, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"The answer is\"}]}",
                   0, 1, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nThe answer is"));
    TEST_COND("continue_final_message keeps trailing space the template keeps",
              chat(chatml, "{\"messages\":[{\"role\":\"assistant\",\"content\":\"Sure \"}]}", 0, 1,
                   "<|im_start|>assistant\nSure "));
    TEST_COND("continue_final_message: trimmed trailing space is cut",
              chat("{% for m in messages %}[{{ m.content | trim }}]{% endfor %}",
                   "{\"messages\":[{\"role\":\"assistant\",\"content\":\" Sure \"}]}", 0, 1, "[Sure"));
    TEST_COND("continue_final_message: message not in output",
              chat("nothing", "{\"messages\":[{\"role\":\"assistant\",\"content\":\"zzz\"}]}", 0, 1,
                   "!final message does not appear"));
    TEST_COND("raise_exception quoted", chat("{{ raise_exception('System role not supported') }}", "{\"messages\":[]}", 1, 0,
                                             "!the chat template raised an error: System role not supported"));
    TEST_COND("non-text part refused",
              chat(dump, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\"}}]}]}",
                   1, 0, "!part type 'image_url' is not supported"));
    /* vLLM's content-format detection: a template looping over a message's content gets parts */
    TEST_COND("content as parts for a template that iterates it",
              chat("{% set loop_messages = messages[1:] %}{% for m in loop_messages %}{% for b in m['content'] %}"
                   "{{ b.type }}:{{ b.text }}|{% endfor %}{% endfor %}",
                   "{\"messages\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":[{\"type\":"
                   "\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]},{\"role\":\"assistant\",\"content\":\"c\"}]}",
                   1, 0, "text:a|text:b|text:c|"));
    TEST_COND("content as a string otherwise",
              chat("{% for m in messages %}{{ m.content is string }}{% endfor %}",
                   "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"}]}]}", 1, 0, "True"));
    TEST_COND("bos/eos passed", chat("{{ bos_token }}{{ eos_token }}{{ unk_token is defined }}", "{\"messages\":[]}", 1, 0,
                                     "<s></s>False"));
}

/* --- mutation fuzz over the fixture templates ---------------------------------------------- */

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static char *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    struct strbuf b = {0};
    char buf[4096];
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, f)) > 0) sb_append(&b, buf, k);
    fclose(f);
    *n = b.len;
    return b.p;
}

static void test_fuzz(void)
{
    static const char *const body =
        "{\"messages\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"u \\u00e9\"},"
        "{\"role\":\"assistant\",\"content\":\"a\",\"tool_calls\":[{\"id\":\"abcdefghi\",\"type\":\"function\","
        "\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\\\":1}\"}}]},{\"role\":\"tool\",\"content\":\"r\","
        "\"tool_call_id\":\"abcdefghi\"},{\"role\":\"user\",\"content\":\"\"}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\"}}}]}";
    static const char *const tokens[] = {"{{", "}}", "{%", "%}", "{#", "#}", "-", "|", "(", ")", "[", "]", "'",
                                         "\"", " if ", " for ", " endfor ", " set ", "loop", ".", "~", "**", "\n"};
    const char *dir = "tests/fixtures/chat_templates";
    DIR *d = opendir(dir);
    if (!d) {
        TEST_COND("fixture templates present", 0);
        return;
    }
    struct jinja_limits lim = jinja_default_limits();
    lim.max_output = 1 << 20;
    lim.max_memory = 16u << 20;
    lim.max_steps = 200000;
    lim.max_iterations = 20000;
    struct chat_template_args a = {.bos_token = "<s>", .eos_token = "</s>", .add_generation_prompt = 1, .now = 1, .lim = &lim};
    int files = 0, compiled = 0, rendered = 0, runs = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t ln = strlen(e->d_name);
        if (ln < 6 || strcmp(e->d_name + ln - 6, ".jinja")) continue;
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        size_t n;
        char *src = read_file(path, &n);
        if (!src) continue;
        files++;
        /* the unmutated template renders the fuzz conversation or fails cleanly */
        for (int it = 0; it < 150; it++) {
            struct strbuf m = {0};
            sb_append(&m, src, n);
            int edits = 1 + (int)(next_rand() % 4);
            for (int k = 0; k < edits && it > 0 && m.len; k++) {
                size_t at = next_rand() % m.len;
                switch (next_rand() % 4) {
                case 0: m.p[at] = (char)(next_rand() % 128); break;          /* flip to ASCII */
                case 1: m.len = at; m.p[at] = 0; break;                      /* truncate */
                case 2: memmove(m.p + at, m.p + at + 1, m.len - at); m.len--; break; /* delete */
                default: {                                                   /* insert a token */
                    const char *tk = tokens[next_rand() % (sizeof tokens / sizeof *tokens)];
                    struct strbuf x = {0};
                    sb_append(&x, m.p, at);
                    sb_puts(&x, tk);
                    sb_append(&x, m.p + at, m.len - at);
                    sb_free(&m);
                    m = x;
                }
                }
            }
            jinja_tmpl_t *t;
            runs++;
            if (jinja_compile(&t, m.p ? m.p : "", m.len, err) == 0) {
                compiled++;
                char *out = NULL;
                if (chat_template_render(t, body, strlen(body), &a, &out, NULL, err) == 0) rendered++;
                free(out);
                jinja_free(t);
            }
            sb_free(&m);
        }
        free(src);
    }
    closedir(d);
    /* random bytes and random JSON contexts too */
    for (int it = 0; it < 300; it++) {
        char buf[256];
        size_t n = next_rand() % sizeof buf;
        for (size_t i = 0; i < n; i++) buf[i] = (char)(next_rand() % 96 + 32);
        jinja_tmpl_t *t;
        runs++;
        if (jinja_compile(&t, buf, n, err) == 0) {
            char *out = NULL;
            jinja_render_json(t, buf, n, 1, &lim, &out, NULL, err);
            free(out);
            jinja_free(t);
        }
    }
    printf("fuzz: %d templates, %d runs, %d compiled, %d rendered\n", files, runs, compiled, rendered);
    TEST_CONDF(files >= 10, "fixture templates found (%d)", files);
    TEST_COND("fuzz ran without a crash", runs > 0);
}

/* --- batch renderer for tests/test_chat_template.py ------------------------------------------ */

static int batch(void)
{
    struct strbuf line = {0};
    int c;
    for (;;) {
        line.len = 0;
        sb_append(&line, "", 0);
        while ((c = getchar()) != EOF && c != '\n') {
            char ch = (char)c;
            sb_append(&line, &ch, 1);
        }
        if (c == EOF && line.len == 0) break;
        cJSON *in = cJSON_ParseWithLength(line.p, line.len);
        cJSON *out = cJSON_CreateObject();
        const cJSON *tp = cJSON_GetObjectItem(in, "template"), *vp = cJSON_GetObjectItem(in, "vars");
        const cJSON *np = cJSON_GetObjectItem(in, "now"), *cp = cJSON_GetObjectItem(in, "chat");
        const cJSON *ap = cJSON_GetObjectItem(in, "args");
        char *res = NULL;
        size_t rlen = 0;
        int rc = -1;
        if (!cJSON_IsString(tp) || !cJSON_IsString(vp)) {
            snprintf(err, sizeof err, "batch: bad input line");
        } else {
            jinja_tmpl_t *t;
            rc = jinja_compile(&t, tp->valuestring, strlen(tp->valuestring), err);
            if (rc == 0) {
                long long now = cJSON_IsNumber(np) ? (long long)np->valuedouble : 1;
                if (cJSON_IsTrue(cp)) {
                    struct chat_template_args a = {0};
                    const cJSON *v;
                    if ((v = cJSON_GetObjectItem(ap, "bos_token")) && cJSON_IsString(v)) a.bos_token = v->valuestring;
                    if ((v = cJSON_GetObjectItem(ap, "eos_token")) && cJSON_IsString(v)) a.eos_token = v->valuestring;
                    a.add_generation_prompt = cJSON_IsTrue(cJSON_GetObjectItem(ap, "add_generation_prompt"));
                    a.continue_final_message = cJSON_IsTrue(cJSON_GetObjectItem(ap, "continue_final_message"));
                    a.now = now;
                    rc = chat_template_render(t, vp->valuestring, strlen(vp->valuestring), &a, &res, &rlen, err);
                } else {
                    rc = jinja_render_json(t, vp->valuestring, strlen(vp->valuestring), now, NULL, &res, &rlen, err);
                }
                jinja_free(t);
            }
        }
        cJSON_AddBoolToObject(out, "ok", rc == 0);
        if (rc == 0) cJSON_AddItemToObject(out, "out", json_string_n(res, rlen));
        else cJSON_AddStringToObject(out, "error", err);
        char *s = cJSON_PrintUnformatted(out);
        puts(s);
        fflush(stdout);
        free(s);
        free(res);
        cJSON_Delete(out);
        cJSON_Delete(in);
        if (c == EOF) break;
    }
    sb_free(&line);
    return 0;
}

int main(int argc, char **argv)
{
    setenv("TZ", "UTC", 1);
    tzset();
    if (argc > 1 && !strcmp(argv[1], "--batch")) return batch();
    test_load_errors();
    test_render_errors();
    test_limits();
    test_python_forms();
    test_chat_vars();
    test_fuzz();
    return test_report("test_jinja");
}
