/* test_openai.c - the server's JSON edge without an engine or a model: request parsing and
 * validation (types, ranges, errors naming `param`), logit_bias and stop lists, context-length
 * errors, error JSON, response/chunk rendering (logprobs, NaN -> null, partial UTF-8 tokens),
 * chat templates and UTF-8 handling. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../server/server_internal.h"
#include "test.h"

#define VOCAB 512

static struct oai_error E;
static struct oai_request R;

/* parse a completions (or chat) body; returns the status (200 = ok) */
static int parse(enum oai_kind k, const char *body)
{
    memset(&E, 0, sizeof E);
    oai_request_free(&R);
    if (oai_parse_request(k, body, strlen(body), VOCAB, 16, &R, &E) == 0) return 200;
    return E.status;
}
/* the same for a body that may hold NUL bytes */
static int parse_n(enum oai_kind k, const char *body, size_t n)
{
    memset(&E, 0, sizeof E);
    oai_request_free(&R);
    if (oai_parse_request(k, body, n, VOCAB, 16, &R, &E) == 0) return 200;
    return E.status;
}
#define P(body) parse(OAI_COMPLETION, body)
#define C(body) parse(OAI_CHAT, body)

/* expect a 400 naming param */
static void bad(enum oai_kind k, const char *body, const char *param)
{
    int st = parse(k, body);
    TEST_CONDF(st == 400 && !strcmp(E.param, param ? param : ""),
               "400 param '%s' for %s (got %d, param '%s', msg '%s')", param ? param : "", body,
               st, E.param, E.message);
}

static void test_basic(void)
{
    TEST_COND("minimal completion", P("{\"prompt\":\"hi\"}") == 200);
    TEST_COND("defaults: n 1, max_tokens 16, no logprobs",
              R.n == 1 && R.sp.max_tokens == 16 && R.logprobs == -1 && !R.stream && !R.echo);
    TEST_COND("prompt text kept", R.n_prompts == 1 && !strcmp(R.prompts[0].text, "hi"));
    bad(OAI_COMPLETION, "{\"prompt\": \"hi\"", NULL);
    TEST_COND("malformed JSON message", strstr(E.message, "not valid JSON") != NULL);
    bad(OAI_COMPLETION, "[1,2]", NULL);
    bad(OAI_COMPLETION, "{}", "prompt");
    bad(OAI_COMPLETION, "{\"prompt\":null}", "prompt");
    bad(OAI_COMPLETION, "{\"prompt\":5}", "prompt");
    bad(OAI_COMPLETION, "{\"prompt\":[]}", "prompt");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"suffix\":\"y\"}", "suffix");
    TEST_COND("suffix code", E.code && !strcmp(E.code, "unsupported_parameter"));
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"whatever\":[1,{}]}", "whatever");
    TEST_COND("unknown field code", E.code && !strcmp(E.code, "unknown_parameter"));
    TEST_COND("user ignored", P("{\"prompt\":\"x\",\"user\":\"bob\"}") == 200);
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"user\":5}", "user");
    TEST_COND("model kept", P("{\"prompt\":\"x\",\"model\":\"m\"}") == 200 && !strcmp(R.model, "m"));
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"model\":3}", "model");
}

static void test_prompts(void)
{
    TEST_COND("token ids", P("{\"prompt\":[1,2,511]}") == 200 && R.n_prompts == 1 &&
                               R.prompts[0].n_ids == 3 && R.prompts[0].ids[2] == 511 &&
                               !R.prompts[0].text);
    TEST_COND("batch of strings", P("{\"prompt\":[\"a\",\"b\",\"c\"]}") == 200 &&
                                      R.n_prompts == 3 && !strcmp(R.prompts[2].text, "c"));
    TEST_COND("batch of id lists", P("{\"prompt\":[[1,2],[3]]}") == 200 && R.n_prompts == 2 &&
                                       R.prompts[1].n_ids == 1 && R.prompts[1].ids[0] == 3);
    TEST_COND("batch mixed", P("{\"prompt\":[\"a\",[5,6]]}") == 200 && R.n_prompts == 2 &&
                                 R.prompts[1].n_ids == 2);
    bad(OAI_COMPLETION, "{\"prompt\":[1,512]}", "prompt");
    TEST_COND("id out of range message names the vocab",
              strstr(E.message, "512") && strstr(E.message, "out of range"));
    bad(OAI_COMPLETION, "{\"prompt\":[1,-1]}", "prompt");
    bad(OAI_COMPLETION, "{\"prompt\":[1,2.5]}", "prompt");
    bad(OAI_COMPLETION, "{\"prompt\":[1,\"a\"]}", "prompt");
    bad(OAI_COMPLETION, "{\"prompt\":[\"a\",5]}", "prompt");
    bad(OAI_COMPLETION, "{\"prompt\":[[1],[]]}", "prompt");
    bad(OAI_COMPLETION, "{\"prompt\":[[1],[99999]]}", "prompt");
    bad(OAI_COMPLETION, "{\"prompt\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\"],\"n\":3}", "n");
    TEST_COND("n x prompts at the cap", P("{\"prompt\":[\"a\",\"b\"],\"n\":8}") == 200);
}

static void test_sampling(void)
{
    TEST_COND("all sampling fields",
              P("{\"prompt\":\"x\",\"temperature\":0.5,\"top_p\":0.9,\"top_k\":40,\"min_p\":0.05,"
                "\"presence_penalty\":1.5,\"frequency_penalty\":-0.5,\"repetition_penalty\":1.1,"
                "\"seed\":42,\"ignore_eos\":true,\"max_tokens\":7,\"n\":2}") == 200);
    TEST_COND("sampling values", fabsf(R.sp.temperature - 0.5f) < 1e-6 && fabsf(R.sp.top_p - 0.9f) < 1e-6 &&
                                     R.sp.top_k == 40 && fabsf(R.sp.min_p - 0.05f) < 1e-6 &&
                                     fabsf(R.sp.presence_penalty - 1.5f) < 1e-6 &&
                                     fabsf(R.sp.frequency_penalty + 0.5f) < 1e-6 &&
                                     fabsf(R.sp.repetition_penalty - 1.1f) < 1e-6 &&
                                     R.sp.seed == 42 && R.sp.has_seed && R.sp.ignore_eos &&
                                     R.sp.max_tokens == 7 && R.max_tokens_set && R.n == 2);
    TEST_COND("top_k -1 = off", P("{\"prompt\":\"x\",\"top_k\":-1}") == 200 && R.sp.top_k == 0);
    TEST_COND("null = default", P("{\"prompt\":\"x\",\"temperature\":null,\"max_tokens\":null}") == 200 &&
                                    R.sp.max_tokens == 16);
    TEST_COND("integral float as int", P("{\"prompt\":\"x\",\"max_tokens\":8.0}") == 200 &&
                                           R.sp.max_tokens == 8);
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"temperature\":\"hot\"}", "temperature");
    TEST_COND("type message", strstr(E.message, "must be a number") && strstr(E.message, "a string"));
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"temperature\":2.5}", "temperature");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"temperature\":-0.1}", "temperature");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"top_p\":0}", "top_p");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"top_p\":1.5}", "top_p");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"top_k\":-2}", "top_k");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"top_k\":1.5}", "top_k");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"min_p\":2}", "min_p");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"presence_penalty\":3}", "presence_penalty");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"frequency_penalty\":-3}", "frequency_penalty");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"repetition_penalty\":0}", "repetition_penalty");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"n\":0}", "n");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"n\":17}", "n");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"n\":\"2\"}", "n");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"best_of\":3}", "best_of");
    TEST_COND("best_of 1", P("{\"prompt\":\"x\",\"best_of\":1}") == 200);
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":-1}", "max_tokens");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":\"10\"}", "max_tokens");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":2.5}", "max_tokens");
    TEST_COND("fraction message", strstr(E.message, "integer") != NULL);
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"seed\":\"x\"}", "seed");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"seed\":1.5}", "seed");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"seed\":-1}", "seed");
    TEST_COND("big seed", P("{\"prompt\":\"x\",\"seed\":18446744073709549568}") == 200 &&
                              R.sp.seed == 18446744073709549568ull);
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"ignore_eos\":1}", "ignore_eos");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"stream\":\"yes\"}", "stream");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"echo\":1}", "echo");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"stream_options\":{\"include_usage\":true}}",
        "stream_options");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"stream\":true,\"stream_options\":{\"include_usage\":3}}",
        "stream_options");
    TEST_COND("stream options", P("{\"prompt\":\"x\",\"stream\":true,\"stream_options\":"
                                  "{\"include_usage\":true,\"continuous_usage_stats\":true}}") == 200 &&
                                    R.stream && R.include_usage && R.continuous_usage);
}

static void test_logprobs_echo(void)
{
    TEST_COND("logprobs 5", P("{\"prompt\":\"x\",\"logprobs\":5}") == 200 && R.logprobs == 5 &&
                                R.sp.n_logprobs == 5 && !R.sp.prompt_logprobs);
    TEST_COND("logprobs 0", P("{\"prompt\":\"x\",\"logprobs\":0}") == 200 && R.logprobs == 0 &&
                                R.sp.n_logprobs == 0);
    TEST_COND("logprobs 20", P("{\"prompt\":\"x\",\"logprobs\":20}") == 200);
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":21}", "logprobs");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":-1}", "logprobs");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":\"5\"}", "logprobs");
    TEST_COND("echo + logprobs -> prompt logprobs",
              P("{\"prompt\":\"x\",\"echo\":true,\"logprobs\":1,\"max_tokens\":0}") == 200 &&
                  R.echo && R.sp.prompt_logprobs && R.sp.max_tokens == 0 && R.max_tokens_set);
    TEST_COND("echo alone: no prompt logprobs",
              P("{\"prompt\":\"x\",\"echo\":true}") == 200 && !R.sp.prompt_logprobs);
}

static void test_stop_bias(void)
{
    TEST_COND("stop string", P("{\"prompt\":\"x\",\"stop\":\"\\n\"}") == 200 && R.n_stop == 1 &&
                                 !strcmp(R.stop[0], "\n"));
    TEST_COND("stop list", P("{\"prompt\":\"x\",\"stop\":[\"a\",\"bc\"]}") == 200 && R.n_stop == 2 &&
                               !strcmp(R.stop[1], "bc"));
    TEST_COND("stop null", P("{\"prompt\":\"x\",\"stop\":null}") == 200 && R.n_stop == 0);
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"stop\":[\"a\",1]}", "stop");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"stop\":\"\"}", "stop");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"stop\":5}", "stop");
    bad(OAI_COMPLETION,
        "{\"prompt\":\"x\",\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\","
        "\"11\",\"12\",\"13\",\"14\",\"15\",\"16\",\"17\"]}", "stop");
    TEST_COND("stop_token_ids", P("{\"prompt\":\"x\",\"stop_token_ids\":[2,13]}") == 200 &&
                                    R.sp.n_stop_ids == 2 && R.sp.stop_ids[1] == 13);
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"stop_token_ids\":[600]}", "stop_token_ids");

    TEST_COND("logit_bias map", P("{\"prompt\":\"x\",\"logit_bias\":{\"5\":10,\"7\":-100}}") == 200 &&
                                    R.sp.n_logit_bias == 2 && R.sp.logit_bias_ids[0] == 5 &&
                                    R.sp.logit_bias_vals[0] == 10.0f &&
                                    R.sp.logit_bias_ids[1] == 7 && R.sp.logit_bias_vals[1] == -100.0f);
    TEST_COND("logit_bias pairs", P("{\"prompt\":\"x\",\"logit_bias\":[[9,2.5]]}") == 200 &&
                                      R.sp.n_logit_bias == 1 && R.sp.logit_bias_ids[0] == 9 &&
                                      R.sp.logit_bias_vals[0] == 2.5f);
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"logit_bias\":{\"abc\":1}}", "logit_bias");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"logit_bias\":{\"512\":1}}", "logit_bias");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"logit_bias\":{\"-1\":1}}", "logit_bias");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"logit_bias\":{\"5\":101}}", "logit_bias");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"logit_bias\":{\"5\":\"1\"}}", "logit_bias");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"logit_bias\":[[5]]}", "logit_bias");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"logit_bias\":7}", "logit_bias");
}

static void test_chat_parse(void)
{
    TEST_COND("chat", C("{\"messages\":[{\"role\":\"system\",\"content\":\"s\"},"
                        "{\"role\":\"user\",\"content\":\"u\"}]}") == 200 &&
                          R.n_msgs == 2 && R.msgs[0].role == CHAT_SYSTEM &&
                          !strcmp(R.msgs[1].content, "u") && !R.max_tokens_set);
    TEST_COND("content parts", C("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\","
                                 "\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]}]}") == 200 &&
                                   !strcmp(R.msgs[0].content, "a\nb")); /* vLLM joins parts with "\n" */
    TEST_COND("developer = system", C("{\"messages\":[{\"role\":\"developer\",\"content\":\"d\"}]}") == 200 &&
                                        R.msgs[0].role == CHAT_SYSTEM);
    TEST_COND("max_completion_tokens", C("{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],"
                                         "\"max_completion_tokens\":5}") == 200 &&
                                           R.sp.max_tokens == 5 && R.max_tokens_set);
    TEST_COND("chat logprobs", C("{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],"
                                 "\"logprobs\":true,\"top_logprobs\":3}") == 200 &&
                                   R.logprobs == 3 && R.sp.n_logprobs == 3);
    TEST_COND("chat logprobs no top", C("{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],"
                                        "\"logprobs\":true}") == 200 && R.logprobs == 0);
    bad(OAI_CHAT, "{}", "messages");
    bad(OAI_CHAT, "{\"messages\":[]}", "messages");
    bad(OAI_CHAT, "{\"messages\":\"hi\"}", "messages");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"u\"}]}", "messages");
    bad(OAI_CHAT, "{\"messages\":[{\"content\":\"u\"}]}", "messages");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}",
        "messages");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],\"top_logprobs\":2}",
        "top_logprobs");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],\"logprobs\":true,"
                  "\"top_logprobs\":21}", "top_logprobs");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],\"logprobs\":3}", "logprobs");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],\"tools\":[{}]}", "tools");
    /* chat-template fields (vLLM's) */
    const char *tools = "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{}}}]";
    char body[1024];
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],%s,\"tool_choice\":\"none\"}", tools);
    TEST_COND("tools with tool_choice none", C(body) == 200 && R.has_tools && R.add_generation_prompt == 1);
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],%s}", tools);
    TEST_COND("tools alone mean auto (the server refuses it without a parser)",
              C(body) == 200 && R.tool_choice == OAI_TOOL_CHOICE_AUTO && R.parallel_tool_calls == 1);
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],%s,\"tool_choice\":\"auto\","
             "\"parallel_tool_calls\":false}", tools);
    TEST_COND("tool_choice auto, parallel_tool_calls false", C(body) == 200 && R.tool_choice == OAI_TOOL_CHOICE_AUTO &&
                                                                 R.parallel_tool_calls == 0);
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],%s,\"tool_choice\":\"required\"}", tools);
    TEST_COND("tool_choice required: refused (no constrained decoding)",
              C(body) == 400 && !strcmp(E.param, "tool_choice") && E.code && !strcmp(E.code, "unsupported_parameter"));
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],%s,\"tool_choice\":"
             "{\"type\":\"function\",\"function\":{\"name\":\"f\"}}}", tools);
    TEST_COND("tool_choice naming a function: refused (no constrained decoding)",
              C(body) == 400 && !strcmp(E.param, "tool_choice") && strstr(E.message, "naming a function"));
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],%s,\"tool_choice\":"
             "{\"type\":\"function\",\"function\":{\"name\":\"g\"}}}", tools);
    TEST_COND("tool_choice naming a function not in tools", C(body) == 400 && strstr(E.message, "does not match"));
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],\"tools\":[],"
             "\"tool_choice\":\"required\"}");
    TEST_COND("tool_choice required with no tools is none (vLLM)", C(body) == 200 && R.tool_choice == OAI_TOOL_CHOICE_NONE);
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],\"tool_choice\":\"required\"}", "tool_choice");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],\"tool_choice\":\"auto\"}", "tool_choice");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],\"parallel_tool_calls\":1}", "parallel_tool_calls");
    TEST_COND("template fields", C("{\"messages\":[{\"role\":\"user\",\"content\":\"u\"},{\"role\":\"assistant\","
                                   "\"content\":\"a\"}],\"add_generation_prompt\":false,\"continue_final_message\":true,"
                                   "\"chat_template\":\"tool_use\",\"chat_template_kwargs\":{\"enable_thinking\":false}}") == 200 &&
                                     !R.add_generation_prompt && R.continue_final_message && R.has_template_kwargs &&
                                     !strcmp(R.chat_template, "tool_use"));
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],\"continue_final_message\":true}",
        "continue_final_message"); /* add_generation_prompt defaults to true: both set */
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],\"chat_template_kwargs\":[1]}",
        "chat_template_kwargs");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],\"chat_template\":1}", "chat_template");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],\"documents\":[1]}", "documents");
    TEST_COND("tool round trip parses",
              C("{\"messages\":[{\"role\":\"user\",\"content\":\"u\"},{\"role\":\"assistant\",\"content\":null,"
                "\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},"
                "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"r\"}]}") == 200 &&
                R.n_msgs == 3 && R.msgs[2].role == CHAT_TOOL && !strcmp(R.msgs[1].content, ""));
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{}}]}]}", "messages");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\",\"tool_calls\":[{\"function\":{\"name\":\"f\"}}]}]}",
        "messages");
    TEST_COND("empty tool_calls on a user message change nothing",
              C("{\"messages\":[{\"role\":\"user\",\"content\":\"u\",\"tool_calls\":[]}]}") == 200 &&
                  !R.template_only_field[0]);
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"tool\",\"content\":\"u\",\"tool_call_id\":5}]}", "messages");
    TEST_COND("given sampling fields recorded",
              C("{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],\"temperature\":0.5,\"top_k\":null}") == 200 &&
                R.given == OAI_GIVEN_TEMPERATURE);
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],"
                  "\"response_format\":{\"type\":\"json_object\"}}", "response_format");
}

static void test_utf8(void)
{
    const char body[] = "{\"prompt\":\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"}";
    TEST_COND("valid multibyte prompt", P(body) == 200 && strlen(R.prompts[0].text) == 14);
    const char bad1[] = "{\"prompt\":\"ab\xc3\"}";
    TEST_COND("truncated sequence -> 400", P(bad1) == 400 && strstr(E.message, "UTF-8"));
    const char bad2[] = "{\"prompt\":\"\xed\xa0\x80\"}"; /* a surrogate */
    TEST_COND("surrogate -> 400", P(bad2) == 400);
    const char bad3[] = "{\"prompt\":\"\xc0\xaf\"}"; /* overlong */
    TEST_COND("overlong -> 400", P(bad3) == 400);
    TEST_COND("escaped pair ok", P("{\"prompt\":\"\\ud83d\\ude00\"}") == 200 &&
                                     !strcmp(R.prompts[0].text, "\xf0\x9f\x98\x80"));
    TEST_COND("lone escaped surrogate -> 400", P("{\"prompt\":\"\\ud83d\"}") == 400);
    TEST_COND("cp count", utf8_cp_count("a\xc3\xa9\xe2\x82\xac", 6) == 3);
}

static void test_length(void)
{
    TEST_COND("parse", P("{\"prompt\":\"x\",\"max_tokens\":2040}") == 200);
    TEST_COND("fits", oai_check_length(&R, 8, 2048, &E) == 0);
    TEST_COND("too long", oai_check_length(&R, 10, 2048, &E) == -1 && E.status == 400 &&
                              E.code && !strcmp(E.code, "context_length_exceeded") &&
                              strstr(E.message, "2048") && strstr(E.message, "2050") &&
                              strstr(E.message, "10 in the prompt") &&
                              strstr(E.message, "2040 in the completion") &&
                              E.n_prompt_tokens == 10 && E.max_model_len == 2048);
    TEST_COND("prompt alone too long", oai_check_length(&R, 4000, 2048, &E) == -1 &&
                                           strstr(E.message, "4000") && !strcmp(E.param, "prompt"));
    TEST_COND("chat parse", C("{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}]}") == 200);
    TEST_COND("chat default max_tokens = rest of context",
              oai_check_length(&R, 48, 2048, &E) == 0 && R.sp.max_tokens == 2000);
    TEST_COND("max_tokens 0 scoring at the limit",
              P("{\"prompt\":\"x\",\"max_tokens\":0,\"echo\":true,\"logprobs\":0}") == 200 &&
                  oai_check_length(&R, 2048, 2048, &E) == 0);

    char *js = oai_error_json(&E);
    cJSON *o = cJSON_Parse(js);
    oai_err(&E, 400, "temperature", NULL, "bad %d", 3);
    free(js);
    cJSON_Delete(o);
    js = oai_error_json(&E);
    o = cJSON_Parse(js);
    cJSON *er = cJSON_GetObjectItem(o, "error");
    TEST_COND("error JSON shape",
              er && cJSON_IsString(cJSON_GetObjectItem(er, "message")) &&
                  !strcmp(cJSON_GetObjectItem(er, "type")->valuestring, "invalid_request_error") &&
                  !strcmp(cJSON_GetObjectItem(er, "param")->valuestring, "temperature") &&
                  cJSON_GetObjectItem(er, "code") != NULL);
    free(js);
    cJSON_Delete(o);
    oai_err(&E, 401, NULL, "invalid_api_key", "no");
    js = oai_error_json(&E);
    o = cJSON_Parse(js);
    er = cJSON_GetObjectItem(o, "error");
    TEST_COND("401 error JSON", er && cJSON_IsNull(cJSON_GetObjectItem(er, "param")) &&
                                    !strcmp(cJSON_GetObjectItem(er, "code")->valuestring, "invalid_api_key") &&
                                    !strcmp(cJSON_GetObjectItem(er, "type")->valuestring, "authentication_error"));
    free(js);
    cJSON_Delete(o);
}

static void test_tokenize_parse(void)
{
    struct oai_request r;
    const char *b1 = "{\"prompt\":\"hello\",\"add_special_tokens\":false}";
    TEST_COND("tokenize prompt", oai_parse_tokenize(b1, strlen(b1), &r, &E) == 0 &&
                                     !strcmp(r.prompts[0].text, "hello") && !r.add_special_tokens);
    oai_request_free(&r);
    const char *b2 = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    TEST_COND("tokenize messages", oai_parse_tokenize(b2, strlen(b2), &r, &E) == 0 && r.n_msgs == 1);
    oai_request_free(&r);
    const char *b3 = "{\"prompt\":5}";
    TEST_COND("tokenize bad", oai_parse_tokenize(b3, strlen(b3), &r, &E) == -1 && !strcmp(E.param, "prompt"));
    const char *b4 = "{\"tokens\":[1,2,3]}";
    TEST_COND("detokenize", oai_parse_detokenize(b4, strlen(b4), VOCAB, &r, &E) == 0 &&
                                r.prompts[0].n_ids == 3);
    oai_request_free(&r);
    const char *b5 = "{\"tokens\":[1,9999]}";
    TEST_COND("detokenize out of range", oai_parse_detokenize(b5, strlen(b5), VOCAB, &r, &E) == -1 &&
                                             !strcmp(E.param, "tokens"));
    const char *b6 = "{\"tokens\":\"1\"}";
    TEST_COND("detokenize type", oai_parse_detokenize(b6, strlen(b6), VOCAB, &r, &E) == -1);
}

/* ---------------------------------------------------------------------------------------------
 * rendering */

static int fake_text(void *ctx, int32_t id, char *buf, int cap)
{
    const char *t = id == 10 ? "Hello" : id == 11 ? " world" : id == 12 ? "\xe2\x82" : id == 13 ? "\xac" : id == 2 ? "</s>" : "?";
    int n = (int)strlen(t);
    memcpy(buf, t, (size_t)n);
    return n;
}

static void test_render(void)
{
    struct oai_render rc = {.kind = OAI_COMPLETION, .id = "cmpl-1", .model = "m", .created = 7,
                            .top_n = 2, .logprobs = 1, .token_text = fake_text};
    struct oai_lp lp[3];
    memset(lp, 0, sizeof lp);
    lp[0].token = 10; lp[0].logprob = NAN; lp[0].text_offset = 0;
    lp[1].token = 11; lp[1].logprob = -0.5f; lp[1].n_top = 2; lp[1].top_ids[0] = 10;
    lp[1].top_lp[0] = -0.25f; lp[1].top_ids[1] = 12; lp[1].top_lp[1] = -1.0f; lp[1].text_offset = 5;
    lp[2].token = 12; lp[2].logprob = -2.0f; lp[2].text_offset = 11;
    struct oai_piece pc = {.index = 0, .text = "Hello world\xe2\x82\xac", .len = 14, .lp = lp,
                           .n_lp = 3, .finish_reason = "length"};
    struct oai_usage u = {3, 2};
    char *js = oai_render_response(&rc, &pc, 1, &u);
    cJSON *o = cJSON_Parse(js);
    TEST_COND("response is JSON", o != NULL);
    cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    cJSON *l = cJSON_GetObjectItem(ch, "logprobs");
    TEST_COND("object text_completion", !strcmp(cJSON_GetObjectItem(o, "object")->valuestring, "text_completion"));
    TEST_COND("text", !strcmp(cJSON_GetObjectItem(ch, "text")->valuestring, "Hello world\xe2\x82\xac"));
    TEST_COND("finish_reason", !strcmp(cJSON_GetObjectItem(ch, "finish_reason")->valuestring, "length"));
    TEST_COND("first logprob null", cJSON_IsNull(cJSON_GetArrayItem(cJSON_GetObjectItem(l, "token_logprobs"), 0)));
    TEST_COND("first top null", cJSON_IsNull(cJSON_GetArrayItem(cJSON_GetObjectItem(l, "top_logprobs"), 0)));
    TEST_COND("second logprob", cJSON_GetArrayItem(cJSON_GetObjectItem(l, "token_logprobs"), 1)->valuedouble == -0.5);
    cJSON *t1 = cJSON_GetArrayItem(cJSON_GetObjectItem(l, "top_logprobs"), 1);
    TEST_COND("top dict has the top 2 and the chosen token", cJSON_GetArraySize(t1) == 3 &&
                                                                 cJSON_GetObjectItem(t1, "Hello") &&
                                                                 cJSON_GetObjectItem(t1, " world"));
    TEST_COND("partial UTF-8 token as bytes:", !strcmp(cJSON_GetArrayItem(cJSON_GetObjectItem(l, "tokens"), 2)->valuestring,
                                                       "bytes:\\xe2\\x82"));
    TEST_COND("text_offset", cJSON_GetArrayItem(cJSON_GetObjectItem(l, "text_offset"), 2)->valueint == 11);
    cJSON *us = cJSON_GetObjectItem(o, "usage");
    TEST_COND("usage", cJSON_GetObjectItem(us, "total_tokens")->valueint == 5 &&
                           cJSON_GetObjectItem(us, "completion_tokens")->valueint == 2);
    free(js);
    cJSON_Delete(o);

    rc.kind = OAI_CHAT;
    rc.id = "chatcmpl-1";
    struct oai_piece first = {.index = 1, .text = "", .role = 1};
    js = oai_render_chunk(&rc, &first, NULL, 1);
    o = cJSON_Parse(js);
    ch = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    cJSON *d = cJSON_GetObjectItem(ch, "delta");
    TEST_COND("chat chunk object", !strcmp(cJSON_GetObjectItem(o, "object")->valuestring, "chat.completion.chunk"));
    TEST_COND("chat first delta role", d && !strcmp(cJSON_GetObjectItem(d, "role")->valuestring, "assistant") &&
                                           cJSON_GetObjectItem(ch, "index")->valueint == 1 &&
                                           cJSON_IsNull(cJSON_GetObjectItem(ch, "finish_reason")) &&
                                           cJSON_IsNull(cJSON_GetObjectItem(o, "usage")));
    free(js);
    cJSON_Delete(o);
    struct oai_piece mid = {.index = 0, .text = "Hello", .len = 5, .lp = &lp[1], .n_lp = 1,
                            .finish_reason = "stop", .stop_reason = "\n"};
    js = oai_render_chunk(&rc, &mid, &u, 0);
    o = cJSON_Parse(js);
    ch = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    d = cJSON_GetObjectItem(ch, "delta");
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "logprobs"), "content"), 0);
    TEST_COND("chat delta content", !strcmp(cJSON_GetObjectItem(d, "content")->valuestring, "Hello") &&
                                        !cJSON_GetObjectItem(d, "role"));
    TEST_COND("chat logprobs content", c0 && !strcmp(cJSON_GetObjectItem(c0, "token")->valuestring, " world") &&
                                           cJSON_GetArraySize(cJSON_GetObjectItem(c0, "bytes")) == 6 &&
                                           cJSON_GetArraySize(cJSON_GetObjectItem(c0, "top_logprobs")) == 2);
    TEST_COND("chat stop_reason", !strcmp(cJSON_GetObjectItem(ch, "stop_reason")->valuestring, "\n"));
    TEST_COND("continuous usage", cJSON_GetObjectItem(cJSON_GetObjectItem(o, "usage"), "prompt_tokens")->valueint == 3);
    free(js);
    cJSON_Delete(o);
    js = oai_render_usage_chunk(&rc, &u);
    o = cJSON_Parse(js);
    TEST_COND("usage chunk", cJSON_GetArraySize(cJSON_GetObjectItem(o, "choices")) == 0 &&
                                 cJSON_GetObjectItem(cJSON_GetObjectItem(o, "usage"), "total_tokens")->valueint == 5);
    free(js);
    cJSON_Delete(o);
    struct oai_piece full = {.index = 0, .text = "Hi", .len = 2, .finish_reason = "stop"};
    rc.logprobs = 0;
    js = oai_render_response(&rc, &full, 1, &u);
    o = cJSON_Parse(js);
    ch = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    cJSON *msg = cJSON_GetObjectItem(ch, "message");
    TEST_COND("chat response", !strcmp(cJSON_GetObjectItem(o, "object")->valuestring, "chat.completion") &&
                                   !strcmp(cJSON_GetObjectItem(msg, "role")->valuestring, "assistant") &&
                                   !strcmp(cJSON_GetObjectItem(msg, "content")->valuestring, "Hi") &&
                                   cJSON_IsNull(cJSON_GetObjectItem(ch, "logprobs")));
    free(js);
    cJSON_Delete(o);
}

/* ---------------------------------------------------------------------------------------------
 * strict fields: every field a vLLM, llama.cpp or OpenAI client may send is implemented,
 * accepted because it changes nothing, or refused with a 400 naming it; never ignored */

struct peer_field {
    const char *name;
    const char *fragment; /* "name": value, with a value that asks for an effect */
    int chat;             /* 1: sent to chat, 0: to completions */
    char expect;          /* 'A' accepted (implemented or no effect), 'R' refused */
};

static const struct peer_field peer_fields[] = {
    /* OpenAI completions */
    {"model", "\"model\":\"m\"", 0, 'A'}, {"echo", "\"echo\":true", 0, 'A'},
    {"frequency_penalty", "\"frequency_penalty\":0.5", 0, 'A'}, {"logit_bias", "\"logit_bias\":{\"5\":1}", 0, 'A'},
    {"logprobs", "\"logprobs\":2", 0, 'A'}, {"max_tokens", "\"max_tokens\":5", 0, 'A'}, {"n", "\"n\":2", 0, 'A'},
    {"presence_penalty", "\"presence_penalty\":0.5", 0, 'A'}, {"seed", "\"seed\":3", 0, 'A'},
    {"stop", "\"stop\":[\"a\"]", 0, 'A'}, {"stream", "\"stream\":true", 0, 'A'},
    {"stream_options", "\"stream\":true,\"stream_options\":{\"include_usage\":true}", 0, 'A'},
    {"suffix", "\"suffix\":\"end\"", 0, 'R'}, {"temperature", "\"temperature\":0.3", 0, 'A'},
    {"top_p", "\"top_p\":0.5", 0, 'A'}, {"user", "\"user\":\"u\"", 0, 'A'}, {"best_of", "\"best_of\":3", 0, 'R'},
    /* vLLM completions extras */
    {"use_beam_search", "\"use_beam_search\":true", 0, 'R'}, {"top_k", "\"top_k\":5", 0, 'A'},
    {"min_p", "\"min_p\":0.1", 0, 'A'}, {"repetition_penalty", "\"repetition_penalty\":1.2", 0, 'A'},
    {"watermarking", "\"watermarking\":true", 0, 'R'}, {"length_penalty", "\"length_penalty\":2", 0, 'R'},
    {"stop_token_ids", "\"stop_token_ids\":[5]", 0, 'A'},
    {"include_stop_str_in_output", "\"include_stop_str_in_output\":true", 0, 'A'},
    {"ignore_eos", "\"ignore_eos\":true", 0, 'A'}, {"min_tokens", "\"min_tokens\":3", 0, 'A'},
    {"skip_special_tokens", "\"skip_special_tokens\":false", 0, 'R'},
    {"spaces_between_special_tokens", "\"spaces_between_special_tokens\":false", 0, 'R'},
    {"truncate_prompt_tokens", "\"truncate_prompt_tokens\":5", 0, 'A'},
    {"truncation_side", "\"truncation_side\":\"right\"", 0, 'A'},
    {"allowed_token_ids", "\"allowed_token_ids\":[5]", 0, 'R'}, {"prompt_logprobs", "\"prompt_logprobs\":2", 0, 'A'},
    {"logprob_token_ids", "\"logprob_token_ids\":[5]", 0, 'R'}, {"bad_words", "\"bad_words\":[\"x\"]", 0, 'R'},
    {"prompt_embeds", "\"prompt_embeds\":\"AAAA\"", 0, 'R'}, {"add_special_tokens", "\"add_special_tokens\":false", 0, 'A'},
    {"response_format", "\"response_format\":{\"type\":\"json_object\"}", 0, 'R'},
    {"structured_outputs", "\"structured_outputs\":{\"regex\":\"a+\"}", 0, 'R'}, {"priority", "\"priority\":1", 0, 'A'},
    {"request_id", "\"request_id\":\"r1\"", 0, 'A'}, {"session_id", "\"session_id\":\"s\"", 0, 'A'},
    {"return_tokens_as_token_ids", "\"return_tokens_as_token_ids\":true", 0, 'R'},
    {"return_token_ids", "\"return_token_ids\":true", 0, 'R'},
    {"routed_experts_prompt_start", "\"routed_experts_prompt_start\":2", 0, 'R'},
    {"return_token_offsets", "\"return_token_offsets\":true", 0, 'A'}, {"return_mm_kwargs", "\"return_mm_kwargs\":false", 0, 'A'},
    {"cache_salt", "\"cache_salt\":\"tenant\"", 0, 'A'}, {"kv_transfer_params", "\"kv_transfer_params\":{\"a\":1}", 0, 'R'},
    {"ec_transfer_params", "\"ec_transfer_params\":{\"a\":1}", 0, 'R'}, {"vllm_xargs", "\"vllm_xargs\":{\"a\":1}", 0, 'R'},
    {"repetition_detection", "\"repetition_detection\":{\"max_pattern_size\":4}", 0, 'R'},
    {"thinking_token_budget", "\"thinking_token_budget\":100", 0, 'R'}, {"stream_interval", "\"stream_interval\":4", 0, 'A'},
    {"guided_json", "\"guided_json\":{\"type\":\"object\"}", 0, 'R'}, {"guided_regex", "\"guided_regex\":\"a+\"", 0, 'R'},
    {"guided_choice", "\"guided_choice\":[\"a\",\"b\"]", 0, 'R'}, {"guided_grammar", "\"guided_grammar\":\"root ::= \\\"a\\\"\"", 0, 'R'},
    {"guided_decoding_backend", "\"guided_decoding_backend\":\"xgrammar\"", 0, 'R'},
    {"guided_whitespace_pattern", "\"guided_whitespace_pattern\":\" \"", 0, 'R'},
    {"logits_processors", "\"logits_processors\":[\"my.Proc\"]", 0, 'R'},
    {"string_config", "\"string_config\":{\"shifted_offset\":0}", 0, 'A'},
    /* vLLM / OpenAI chat */
    {"messages", "\"max_tokens\":2", 1, 'A'}, {"max_completion_tokens", "\"max_completion_tokens\":4", 1, 'A'},
    {"logprobs", "\"logprobs\":true", 1, 'A'}, {"top_logprobs", "\"logprobs\":true,\"top_logprobs\":2", 1, 'A'},
    {"tools", "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"tool_choice\":\"none\"", 1, 'A'},
    {"tool_choice", "\"tool_choice\":\"auto\"", 1, 'R'}, {"reasoning_effort", "\"reasoning_effort\":\"low\"", 1, 'R'},
    {"include_reasoning", "\"include_reasoning\":false", 1, 'R'}, {"parallel_tool_calls", "\"parallel_tool_calls\":false", 1, 'A'},
    {"echo", "\"echo\":true", 1, 'R'}, {"add_generation_prompt", "\"add_generation_prompt\":false", 1, 'A'},
    {"continue_final_message", "\"continue_final_message\":true", 1, 'R'},
    {"add_special_tokens", "\"add_special_tokens\":true", 1, 'A'},
    {"documents", "\"documents\":[{\"title\":\"t\",\"text\":\"x\"}]", 1, 'A'},
    {"chat_template", "\"chat_template\":\"tool_use\"", 1, 'A'},
    {"chat_template_kwargs", "\"chat_template_kwargs\":{\"enable_thinking\":false}", 1, 'A'},
    {"mm_processor_kwargs", "\"mm_processor_kwargs\":{\"a\":1}", 1, 'R'},
    {"max_repetition_pattern_size", "\"max_repetition_pattern_size\":4", 1, 'R'},
    {"min_repetition_pattern_size", "\"min_repetition_pattern_size\":2", 1, 'R'},
    {"repetition_min_count", "\"repetition_min_count\":3", 1, 'R'},
    {"response_format", "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{}}", 1, 'R'},
    {"prompt_logprobs", "\"prompt_logprobs\":1", 1, 'A'}, {"min_tokens", "\"min_tokens\":1", 1, 'A'},
    {"audio", "\"audio\":{\"voice\":\"alloy\",\"format\":\"wav\"}", 1, 'R'},
    {"function_call", "\"function_call\":\"auto\"", 1, 'R'}, {"functions", "\"functions\":[{\"name\":\"f\"}]", 1, 'R'},
    {"metadata", "\"metadata\":{\"k\":\"v\"}", 1, 'A'}, {"modalities", "\"modalities\":[\"text\",\"audio\"]", 1, 'R'},
    {"prediction", "\"prediction\":{\"type\":\"content\",\"content\":\"x\"}", 1, 'A'},
    {"prompt_cache_key", "\"prompt_cache_key\":\"k\"", 1, 'A'}, {"safety_identifier", "\"safety_identifier\":\"h\"", 1, 'A'},
    {"service_tier", "\"service_tier\":\"flex\"", 1, 'R'}, {"store", "\"store\":true", 1, 'R'},
    {"verbosity", "\"verbosity\":\"low\"", 1, 'R'}, {"web_search_options", "\"web_search_options\":{}", 1, 'R'},
    {"user", "\"user\":\"u\"", 1, 'A'}, {"seed", "\"seed\":9", 1, 'A'}, {"n", "\"n\":2", 1, 'A'},
    /* llama.cpp's /completion and OAI routes */
    {"n_predict", "\"n_predict\":32", 0, 'R'}, {"n_indent", "\"n_indent\":2", 0, 'R'}, {"n_keep", "\"n_keep\":-1", 0, 'R'},
    {"n_cmpl", "\"n_cmpl\":2", 0, 'R'}, {"n_cache_reuse", "\"n_cache_reuse\":256", 0, 'R'},
    {"typical_p", "\"typical_p\":0.9", 0, 'R'}, {"repeat_penalty", "\"repeat_penalty\":1.1", 0, 'R'},
    {"repeat_last_n", "\"repeat_last_n\":32", 0, 'A'}, {"penalize_nl", "\"penalize_nl\":true", 0, 'R'},
    {"dry_multiplier", "\"dry_multiplier\":0.8", 0, 'R'}, {"dry_base", "\"dry_base\":1.75", 0, 'A'},
    {"dry_allowed_length", "\"dry_allowed_length\":2", 0, 'A'}, {"dry_penalty_last_n", "\"dry_penalty_last_n\":-1", 0, 'A'},
    {"dry_sequence_breakers", "\"dry_sequence_breakers\":[\"\\n\"]", 0, 'A'},
    {"xtc_probability", "\"xtc_probability\":0.5", 0, 'R'}, {"xtc_threshold", "\"xtc_threshold\":0.1", 0, 'A'},
    {"mirostat", "\"mirostat\":2", 0, 'R'}, {"mirostat_tau", "\"mirostat_tau\":5", 0, 'A'},
    {"mirostat_eta", "\"mirostat_eta\":0.1", 0, 'A'}, {"grammar", "\"grammar\":\"root ::= \\\"a\\\"\"", 0, 'R'},
    {"json_schema", "\"json_schema\":{}", 0, 'R'}, {"n_probs", "\"n_probs\":3", 0, 'R'}, {"min_keep", "\"min_keep\":2", 0, 'R'},
    {"t_max_predict_ms", "\"t_max_predict_ms\":100", 0, 'R'}, {"id_slot", "\"id_slot\":1", 0, 'A'},
    {"cache_prompt", "\"cache_prompt\":false", 0, 'R'}, {"return_tokens", "\"return_tokens\":true", 0, 'R'},
    {"samplers", "\"samplers\":[\"top_k\"]", 0, 'R'}, {"timings_per_token", "\"timings_per_token\":true", 0, 'R'},
    {"return_progress", "\"return_progress\":true", 0, 'A'}, {"post_sampling_probs", "\"post_sampling_probs\":true", 0, 'R'},
    {"response_fields", "\"response_fields\":[\"content\"]", 0, 'R'}, {"lora", "\"lora\":[{\"id\":0,\"scale\":1}]", 0, 'R'},
    {"top_n_sigma", "\"top_n_sigma\":1", 0, 'R'}, {"dynatemp_range", "\"dynatemp_range\":0.5", 0, 'R'},
    {"dynatemp_exponent", "\"dynatemp_exponent\":2", 0, 'A'}, {"tfs_z", "\"tfs_z\":0.9", 0, 'R'},
    {"sse_ping_interval", "\"sse_ping_interval\":10", 0, 'A'}, {"image_data", "\"image_data\":[]", 0, 'R'},
    {"slot_id", "\"slot_id\":0", 0, 'R'}, {"reasoning_format", "\"reasoning_format\":\"deepseek\"", 1, 'R'},
    {"parse_tool_calls", "\"parse_tool_calls\":true", 1, 'R'}, {"thinking_forced_open", "\"thinking_forced_open\":true", 1, 'R'},
    /* typos and near misses */
    {"temperatur", "\"temperatur\":0", 0, 'R'}, {"max_token", "\"max_token\":5", 0, 'R'},
    {"top-p", "\"top-p\":0.5", 0, 'R'}, {"Temperature", "\"Temperature\":0", 0, 'R'},
    {"stream_option", "\"stream\":true,\"stream_option\":{\"include_usage\":true}", 0, 'R'},
    {"maxTokens", "\"maxTokens\":5", 1, 'R'}, {"stop_sequences", "\"stop_sequences\":[\"a\"]", 1, 'R'},
    {"extra_body", "\"extra_body\":{\"top_k\":5}", 0, 'R'},
};

static int field_use(const char *name)
{
    int use;
    for (int i = 0; i < oai_field_count(); i++)
        if (!strcmp(oai_field_name(i, &use), name)) return use;
    return -1;
}

static void test_strict_fields(void)
{
    int n = (int)(sizeof peer_fields / sizeof *peer_fields), silent = 0, wrong = 0;
    char body[512];
    for (int i = 0; i < n; i++) {
        const struct peer_field *f = &peer_fields[i];
        snprintf(body, sizeof body, f->chat ? "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],%s}"
                                            : "{\"prompt\":\"x\",%s}", f->fragment);
        int st = parse(f->chat ? OAI_CHAT : OAI_COMPLETION, body);
        int use = field_use(f->name);
        if (st == 200 && (use < 0 || use == 2)) { /* accepted but in no list: ignored */
            silent++;
            printf("  accepted without effect: %s\n", f->name);
        }
        if (st == 400 && strcmp(E.param, f->name) &&
            !(strcmp(f->name, "stream_option") == 0 && !strcmp(E.param, "stream_option"))) {
            wrong++;
            printf("  %s: refused naming '%s' instead (%s)\n", f->name, E.param, E.message);
        }
        TEST_CONDF((st == 200) == (f->expect == 'A') && (st == 200 || st == 400),
                   "%s %s: want %s, got %d (%s)", f->chat ? "chat" : "completions", f->name,
                   f->expect == 'A' ? "accepted" : "refused", st, st == 200 ? "" : E.message);
    }
    printf("strict fields: %d peer fields and typos sent; %d accepted without effect, %d refused without "
           "naming the field\n", n, silent, wrong);
    TEST_CONDF(silent == 0, "no field answered 200 without effect (%d)", silent);
    TEST_CONDF(wrong == 0, "every refusal names its field (%d)", wrong);

    /* "did you mean" */
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"temperatur\":0.2}", "temperatur");
    TEST_CONDF(strstr(E.message, "did you mean 'temperature'") != NULL, "typo hint: %s", E.message);
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],\"max_completion_token\":5}",
        "max_completion_token");
    TEST_CONDF(strstr(E.message, "max_completion_tokens") != NULL, "chat typo hint: %s", E.message);
    /* neutral values: a feature switched off is accepted */
    TEST_COND("neutral values accepted",
              P("{\"prompt\":\"x\",\"use_beam_search\":false,\"length_penalty\":1,\"skip_special_tokens\":true,"
                "\"spaces_between_special_tokens\":true,\"allowed_token_ids\":[],\"bad_words\":[],\"mirostat\":0,"
                "\"typical_p\":1.0,\"n_probs\":0,\"cache_prompt\":true,\"grammar\":\"\",\"json_schema\":null,"
                "\"top_n_sigma\":-1,\"repeat_penalty\":1,\"return_token_ids\":false,\"thinking_token_budget\":-1,"
                "\"response_format\":{\"type\":\"text\"},\"suffix\":\"\",\"service_tier\":\"auto\"}") == 200);
    TEST_COND("chat neutral values accepted",
              C("{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],\"tools\":[],\"tool_choice\":\"none\","
                "\"add_generation_prompt\":true,\"continue_final_message\":false,\"chat_template\":null,"
                "\"chat_template_kwargs\":{},\"documents\":[],\"echo\":false,\"store\":false,"
                "\"modalities\":[\"text\"],\"include_reasoning\":true,\"functions\":[]}") == 200);
    TEST_COND("null is the default for any known field", P("{\"prompt\":\"x\",\"use_beam_search\":null,"
                                                           "\"guided_json\":null,\"mirostat\":null}") == 200);
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"user\":5}", "user");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"id_slot\":\"a\"}", "id_slot");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"use_beam_search\":true}", "use_beam_search");
    TEST_COND("refusal says why", E.code && !strcmp(E.code, "unsupported_parameter") && strstr(E.message, "beam search"));
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"temperature\":1,\"temperature\":0}", "temperature");
    TEST_COND("duplicate key message", strstr(E.message, "more than once") != NULL);
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"stream\":true,\"stream_options\":{\"include_usages\":true}}",
        "stream_options");
    /* message fields: what the template is given is taken (and recorded: a built-in template
     * refuses it), what it is not given is refused unless empty */
    TEST_COND("a message's name reaches the template", C("{\"messages\":[{\"role\":\"user\",\"content\":\"u\"},"
                                                         "{\"role\":\"user\",\"content\":\"u\",\"name\":\"bob\"}]}") == 200 &&
                                                           !strcmp(R.template_only_field, "name") && R.template_only_msg == 1);
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"assistant\",\"content\":\"u\",\"refusal\":\"no\"}]}", "messages");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"assistant\",\"content\":\"u\",\"reasoning_content\":\"r\"}]}", "messages");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\",\"tool_call_id\":\"c1\"}]}", "messages");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\",\"reasoning\":\"r\"}]}", "messages");
    TEST_COND("an assistant's reasoning reaches the template",
              C("{\"messages\":[{\"role\":\"assistant\",\"content\":\"u\",\"reasoning\":\"r\"}]}") == 200 &&
                  !strcmp(R.template_only_field, "reasoning"));
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\",\"contents\":\"x\"}]}", "messages");
    TEST_COND("message with empty extras", C("{\"messages\":[{\"role\":\"assistant\",\"content\":\"u\","
                                              "\"tool_calls\":[],\"name\":null}]}") == 200);

    /* the README documents every field of the table */
    FILE *fr = fopen("README.md", "rb");
    char *readme = NULL;
    size_t rl = 0;
    if (fr) {
        fseek(fr, 0, SEEK_END);
        rl = (size_t)ftell(fr);
        fseek(fr, 0, SEEK_SET);
        readme = xcalloc(rl + 1, 1);
        if (fread(readme, 1, rl, fr) != rl) rl = 0;
        fclose(fr);
    }
    TEST_COND("README.md readable (run from the repository root)", readme && rl > 0);
    int missing = 0;
    for (int i = 0; readme && i < oai_field_count(); i++) {
        char pat[80];
        snprintf(pat, sizeof pat, "`%s`", oai_field_name(i, NULL));
        if (!strstr(readme, pat)) {
            missing++;
            printf("  README.md does not mention %s\n", pat);
        }
    }
    TEST_CONDF(missing == 0, "README.md lists every request field (%d missing)", missing);
    free(readme);
}

static void test_json_strict(void)
{
    bad(OAI_COMPLETION, "{\"prompt\":\"x\"} xyz", NULL);
    TEST_COND("trailing garbage message", strstr(E.message, "after the JSON object") != NULL);
    bad(OAI_COMPLETION, "{\"prompt\":\"x\"}{\"prompt\":\"y\"}", NULL);
    TEST_COND("trailing whitespace is fine", P("{\"prompt\":\"x\"} \n\t") == 200);
    static const char nul_body[] = "{\"prompt\":\"ab\0cd\"}";
    TEST_COND("raw NUL inside a string -> 400 naming the field",
              parse_n(OAI_COMPLETION, nul_body, sizeof nul_body - 1) == 400 && !strcmp(E.param, "prompt"));
    static const char nul_after[] = "{\"prompt\":\"ab\"}\0{\"x\":1}";
    TEST_COND("NUL after the object -> 400", parse_n(OAI_COMPLETION, nul_after, sizeof nul_after - 1) == 400);
    bad(OAI_COMPLETION, "{\"prompt\":\"a\\u0000b\"}", "prompt");
    TEST_COND("escaped NUL message", strstr(E.message, "U+0000") != NULL);
    bad(OAI_COMPLETION, "{\"prompt\":\"a\x01" "b\"}", "prompt");
    bad(OAI_COMPLETION, "{\"prompt\":\"a\tb\"}", "prompt");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\x1f\"}]}", "messages");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"stop\":[\"\\u0000\"]}", "stop");
    TEST_COND("escaped control characters are fine", P("{\"prompt\":\"a\\tb\\u0001c\\n\"}") == 200 &&
                                                        !strcmp(R.prompts[0].text, "a\tb\x01" "c\n"));
    bad(OAI_COMPLETION, "{\x01\"prompt\":\"x\"}", NULL);
    TEST_COND("escaped key", P("{\"\\u0070rompt\":\"x\",\"se\\u0065d\":9007199254740993}") == 200 &&
                                 R.sp.seed == 9007199254740993ull);

    /* tools of the wrong type */
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],\"tools\":\"abc\"}", "tools");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],\"tools\":{}}", "tools");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],\"tools\":5}", "tools");

    /* seed: the full uint64 range, exactly */
    TEST_COND("seed 2^64-1", P("{\"prompt\":\"x\",\"seed\":18446744073709551615}") == 200 &&
                                 R.sp.seed == UINT64_MAX && R.sp.has_seed);
    TEST_COND("seed 2^53+1 exact", P("{\"prompt\":\"x\",\"seed\":9007199254740993}") == 200 &&
                                       R.sp.seed == 9007199254740993ull);
    TEST_COND("seed 12345678901234567891 exact", P("{\"prompt\":\"x\",\"seed\":12345678901234567891}") == 200 &&
                                                     R.sp.seed == 12345678901234567891ull);
    TEST_COND("seed 0", P("{\"prompt\":\"x\",\"seed\":0}") == 200 && R.sp.seed == 0 && R.sp.has_seed);
    TEST_COND("seed 5.0", P("{\"prompt\":\"x\",\"seed\":5.0}") == 200 && R.sp.seed == 5);
    TEST_COND("seed 1e3", P("{\"prompt\":\"x\",\"seed\":1e3}") == 200 && R.sp.seed == 1000);
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"seed\":18446744073709551616}", "seed");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"seed\":-5}", "seed");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"seed\":-0.5}", "seed");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"seed\":1e30}", "seed");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"seed\":\"5\"}", "seed");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"seed\":true}", "seed");
    TEST_COND("priority int64 ends", P("{\"prompt\":\"x\",\"priority\":-9223372036854775808}") == 200 &&
                                         R.priority == INT64_MIN &&
                                         P("{\"prompt\":\"x\",\"priority\":9223372036854775807}") == 200 &&
                                         R.priority == INT64_MAX);
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"priority\":9223372036854775808}", "priority");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"priority\":1.5}", "priority");

    /* logit_bias keys: canonical integers only */
    static const char *keys[] = {" 5", "05", "+5", "5.0", "-0", "", "5 ", "0x5", "1e1", "99999999999"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        char b[128];
        snprintf(b, sizeof b, "{\"prompt\":\"x\",\"logit_bias\":{\"%s\":1}}", keys[i]);
        int st = P(b);
        char quoted[32];
        snprintf(quoted, sizeof quoted, "\"%s\"", keys[i]);
        TEST_CONDF(st == 400 && !strcmp(E.param, "logit_bias") && strstr(E.message, quoted),
                   "logit_bias key \"%s\" refused, naming it (%d: %s)", keys[i], st, E.message);
    }
    TEST_COND("logit_bias keys 0 and 511", P("{\"prompt\":\"x\",\"logit_bias\":{\"0\":1,\"511\":-1}}") == 200 &&
                                              R.sp.n_logit_bias == 2);
}

static void test_new_fields(void)
{
    TEST_COND("min_tokens", P("{\"prompt\":\"x\",\"min_tokens\":4,\"max_tokens\":8}") == 200 && R.sp.min_tokens == 4);
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"min_tokens\":9,\"max_tokens\":8}", "min_tokens");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"min_tokens\":-1}", "min_tokens");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"min_tokens\":20}", "min_tokens"); /* default max_tokens 16 */
    TEST_COND("chat min_tokens without max_tokens", C("{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],"
                                                      "\"min_tokens\":50}") == 200);
    TEST_COND("checked against the rest of the context", oai_check_length(&R, 2000, 2040, &E) == -1 &&
                                                            !strcmp(E.param, "min_tokens"));

    TEST_COND("prompt_logprobs", P("{\"prompt\":\"x\",\"prompt_logprobs\":3}") == 200 && R.prompt_logprobs == 3 &&
                                     R.sp.prompt_logprobs && R.sp.n_prompt_logprobs == 3 && R.logprobs == -1);
    TEST_COND("prompt_logprobs 0", P("{\"prompt\":\"x\",\"prompt_logprobs\":0}") == 200 &&
                                       R.sp.prompt_logprobs && R.sp.n_prompt_logprobs == 0);
    TEST_COND("echo + logprobs: same path, K from logprobs",
              P("{\"prompt\":\"x\",\"echo\":true,\"logprobs\":4}") == 200 && R.sp.prompt_logprobs &&
                  R.sp.n_prompt_logprobs == 4 && R.prompt_logprobs == -1);
    TEST_COND("echo + logprobs + prompt_logprobs: prompt_logprobs sets K",
              P("{\"prompt\":\"x\",\"echo\":true,\"logprobs\":4,\"prompt_logprobs\":2}") == 200 &&
                  R.sp.n_prompt_logprobs == 2);
    TEST_COND("chat prompt_logprobs", C("{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],"
                                        "\"prompt_logprobs\":5}") == 200 && R.sp.n_prompt_logprobs == 5);
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"prompt_logprobs\":2,\"stream\":true}", "prompt_logprobs");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"prompt_logprobs\":-1}", "prompt_logprobs");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"prompt_logprobs\":21}", "prompt_logprobs");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"prompt_logprobs\":true}", "prompt_logprobs");

    TEST_COND("progress (stream_options)", P("{\"prompt\":\"x\",\"stream\":true,\"stream_options\":"
                                             "{\"include_progress\":true}}") == 200 && R.include_progress);
    TEST_COND("progress (llama.cpp)", P("{\"prompt\":\"x\",\"stream\":true,\"return_progress\":true}") == 200 &&
                                          R.include_progress);
    TEST_COND("return_progress without stream: nothing to show", P("{\"prompt\":\"x\",\"return_progress\":true}") == 200 &&
                                                                      !R.include_progress);
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"return_progress\":1}", "return_progress");

    TEST_COND("cache_salt", P("{\"prompt\":\"x\",\"cache_salt\":\"a\"}") == 200 && R.cache_salt != 0);
    uint64_t s1 = R.cache_salt;
    TEST_COND("cache_salt differs by string", P("{\"prompt\":\"x\",\"cache_salt\":\"b\"}") == 200 && R.cache_salt != s1);
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"cache_salt\":\"\"}", "cache_salt");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"cache_salt\":7}", "cache_salt");
    TEST_COND("request_id", P("{\"prompt\":\"x\",\"request_id\":\"job-7.a:b_c\"}") == 200 &&
                                !strcmp(R.request_id, "job-7.a:b_c"));
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"request_id\":\"a b\"}", "request_id");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"request_id\":\"0123456789012345678901234567890123\"}", "request_id");
    TEST_COND("priority", P("{\"prompt\":\"x\",\"priority\":-3}") == 200 && R.priority == -3);

    /* truncate_prompt_tokens, after tokenization (vLLM: keep the last N) */
    TEST_COND("truncate parse", P("{\"prompt\":[1,2,3,4,5,6,7,8,9,10],\"truncate_prompt_tokens\":4,"
                                  "\"max_tokens\":2}") == 200 && R.truncate == 4);
    TEST_COND("truncate keeps the last 4", oai_fit_prompt(&R, &R.prompts[0], 100, &E) == 0 &&
                                               R.prompts[0].n_ids == 4 && R.prompts[0].ids[0] == 7 &&
                                               R.prompts[0].ids[3] == 10);
    TEST_COND("truncation_side right", P("{\"prompt\":[1,2,3,4,5,6],\"truncate_prompt_tokens\":2,"
                                         "\"truncation_side\":\"right\",\"max_tokens\":1}") == 200 &&
                                           oai_fit_prompt(&R, &R.prompts[0], 100, &E) == 0 &&
                                           R.prompts[0].n_ids == 2 && R.prompts[0].ids[1] == 2);
    TEST_COND("truncate -1: what fits beside max_tokens", P("{\"prompt\":[1,2,3,4,5,6,7,8,9,10],"
                                                            "\"truncate_prompt_tokens\":-1,\"max_tokens\":4}") == 200 &&
                                                              oai_fit_prompt(&R, &R.prompts[0], 10, &E) == 0 &&
                                                              R.prompts[0].n_ids == 6 && R.prompts[0].ids[0] == 5);
    TEST_COND("truncate larger than max_model_len - max_tokens: 400 with both numbers",
              P("{\"prompt\":[1,2,3],\"truncate_prompt_tokens\":9,\"max_tokens\":4}") == 200 &&
                  oai_fit_prompt(&R, &R.prompts[0], 10, &E) == -1 && !strcmp(E.param, "truncate_prompt_tokens") &&
                  strstr(E.message, "10") && strstr(E.message, "9"));
    TEST_COND("a text prompt truncated echoes its kept tokens", P("{\"prompt\":\"abc\",\"truncate_prompt_tokens\":1}") == 200);
    R.prompts[0].ids = xmalloc(3 * sizeof(int32_t));
    R.prompts[0].ids[0] = 1; R.prompts[0].ids[1] = 2; R.prompts[0].ids[2] = 3;
    R.prompts[0].n_ids = 3;
    TEST_COND("text dropped after truncation", oai_fit_prompt(&R, &R.prompts[0], 100, &E) == 0 &&
                                                   !R.prompts[0].text && R.prompts[0].n_ids == 1);
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"truncate_prompt_tokens\":0}", "truncate_prompt_tokens");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"truncation_side\":\"middle\"}", "truncation_side");
    TEST_COND("too long without truncation names both numbers and the fix",
              P("{\"prompt\":\"x\"}") == 200 && oai_check_length(&R, 5000, 2048, &E) == -1 &&
                  strstr(E.message, "5000") && strstr(E.message, "2048") && strstr(E.message, "truncate_prompt_tokens"));

    /* /tokenize and /detokenize are strict too */
    struct oai_request r;
    const char *b1 = "{\"prompt\":\"a\",\"add_special_token\":false}";
    TEST_COND("tokenize typo", oai_parse_tokenize(b1, strlen(b1), &r, &E) == -1 &&
                                   !strcmp(E.param, "add_special_token") && strstr(E.message, "add_special_tokens"));
    const char *b2 = "{\"prompt\":\"a\",\"model\":\"m\",\"return_token_strs\":false}";
    TEST_COND("tokenize model + return_token_strs", oai_parse_tokenize(b2, strlen(b2), &r, &E) == 0 &&
                                                        !strcmp(r.model, "m") && r.return_token_strs == 0);
    oai_request_free(&r);
    const char *b3 = "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"add_generation_prompt\":false}";
    TEST_COND("tokenize chat-template field", oai_parse_tokenize(b3, strlen(b3), &r, &E) == 0 && !r.add_generation_prompt);
    oai_request_free(&r);
    const char *b3p = "{\"prompt\":\"a\",\"add_generation_prompt\":false}";
    TEST_COND("tokenize: a chat-template field with a prompt is refused",
              oai_parse_tokenize(b3p, strlen(b3p), &r, &E) == -1 && !strcmp(E.param, "add_generation_prompt"));
    const char *b3t = "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}";
    TEST_COND("tokenize renders tools without a tool_choice (it generates nothing)",
              oai_parse_tokenize(b3t, strlen(b3t), &r, &E) == 0 && r.has_tools);
    oai_request_free(&r);
    const char *b4 = "{\"tokens\":[1,2]} x";
    TEST_COND("detokenize trailing garbage", oai_parse_detokenize(b4, strlen(b4), VOCAB, &r, &E) == -1);
    const char *b5 = "{\"tokens\":[1,2],\"skip_special_tokens\":false}";
    TEST_COND("detokenize unknown field", oai_parse_detokenize(b5, strlen(b5), VOCAB, &r, &E) == -1 &&
                                              !strcmp(E.param, "skip_special_tokens"));
    const char *b6 = "{\"tokens\":[1,2],\"model\":\"m\"}";
    TEST_COND("detokenize model", oai_parse_detokenize(b6, strlen(b6), VOCAB, &r, &E) == 0 && !strcmp(r.model, "m"));
    oai_request_free(&r);
}

static void test_render_new(void)
{
    struct oai_render rc = {.kind = OAI_COMPLETION, .id = "cmpl-1", .model = "m", .created = 7,
                            .top_n = 0, .logprobs = 0, .prompt_top_n = 2, .token_text = fake_text};
    struct oai_lp plp[3];
    memset(plp, 0, sizeof plp);
    plp[0].token = 10; plp[0].logprob = NAN;
    plp[1].token = 11; plp[1].logprob = -0.5f; plp[1].rank = 2; plp[1].n_top = 2;
    plp[1].top_ids[0] = 13; plp[1].top_lp[0] = -0.25f; plp[1].top_ids[1] = 11; plp[1].top_lp[1] = -0.5f;
    plp[2].token = 12; plp[2].logprob = -3.0f; plp[2].rank = 7; plp[2].n_top = 2;
    plp[2].top_ids[0] = 10; plp[2].top_lp[0] = -0.1f; plp[2].top_ids[1] = 13; plp[2].top_lp[1] = -2.5f;
    int32_t stop_id = 13;
    struct oai_piece pc = {.index = 0, .text = "", .len = 0, .finish_reason = "stop", .stop_token = &stop_id,
                           .plp = plp, .n_plp = 3};
    struct oai_usage u = {3, 1};
    char *js = oai_render_response(&rc, &pc, 1, &u);
    cJSON *o = cJSON_Parse(js);
    cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    TEST_COND("stop_reason: the stop token id, a number", cJSON_IsNumber(cJSON_GetObjectItem(ch, "stop_reason")) &&
                                                              cJSON_GetObjectItem(ch, "stop_reason")->valueint == 13);
    cJSON *pl = cJSON_GetObjectItem(ch, "prompt_logprobs");
    TEST_COND("prompt_logprobs: one per prompt token, first null", cJSON_GetArraySize(pl) == 3 &&
                                                                      cJSON_IsNull(cJSON_GetArrayItem(pl, 0)));
    cJSON *p1 = cJSON_GetArrayItem(pl, 1), *p2 = cJSON_GetArrayItem(pl, 2);
    TEST_COND("prompt token first, then the top K (its place as rank)",
              cJSON_GetArraySize(p1) == 2 && !strcmp(p1->child->string, "11") &&
                  cJSON_GetObjectItem(cJSON_GetObjectItem(p1, "11"), "rank")->valueint == 2 &&
                  cJSON_GetObjectItem(cJSON_GetObjectItem(p1, "13"), "rank")->valueint == 1 &&
                  !strcmp(cJSON_GetObjectItem(cJSON_GetObjectItem(p1, "11"), "decoded_token")->valuestring, " world"));
    TEST_COND("a prompt token outside the top K keeps its vocabulary rank",
              cJSON_GetArraySize(p2) == 3 && cJSON_GetObjectItem(cJSON_GetObjectItem(p2, "12"), "rank")->valueint == 7 &&
                  cJSON_GetObjectItem(cJSON_GetObjectItem(p2, "12"), "logprob")->valuedouble == -3.0 &&
                  cJSON_GetObjectItem(cJSON_GetObjectItem(p2, "10"), "rank")->valueint == 1);
    free(js);
    cJSON_Delete(o);
    rc.kind = OAI_CHAT;
    js = oai_render_response(&rc, &pc, 1, &u);
    o = cJSON_Parse(js);
    TEST_COND("chat: prompt_logprobs at the top level", cJSON_GetArraySize(cJSON_GetObjectItem(o, "prompt_logprobs")) == 3 &&
                  !cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0), "prompt_logprobs"));
    free(js);
    cJSON_Delete(o);
    rc.prompt_top_n = -1;
    pc.stop_token = NULL;
    js = oai_render_response(&rc, &pc, 1, &u);
    o = cJSON_Parse(js);
    TEST_COND("no prompt_logprobs asked: none; stop_reason null",
              !cJSON_GetObjectItem(o, "prompt_logprobs") &&
                  cJSON_IsNull(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0), "stop_reason")));
    free(js);
    cJSON_Delete(o);
    js = oai_render_progress_chunk(&rc, 1, 512, 2000, 16, 1234.5678);
    o = cJSON_Parse(js);
    cJSON *pp = cJSON_GetObjectItem(o, "prompt_progress");
    TEST_COND("progress chunk: llama.cpp's prompt_progress", pp && cJSON_GetArraySize(cJSON_GetObjectItem(o, "choices")) == 0 &&
                  cJSON_GetObjectItem(pp, "total")->valueint == 2000 && cJSON_GetObjectItem(pp, "processed")->valueint == 512 &&
                  cJSON_GetObjectItem(pp, "cache")->valueint == 16 && cJSON_GetObjectItem(pp, "index")->valueint == 1 &&
                  fabs(cJSON_GetObjectItem(pp, "time_ms")->valuedouble - 1234.568) < 1e-9);
    free(js);
    cJSON_Delete(o);
}

/* ---------------------------------------------------------------------------------------------
 * chat templates */

static struct chat_message M(enum chat_role r, const char *c)
{
    struct chat_message m = {r, (char *)c};
    return m;
}

static void test_templates(void)
{
    char *out = NULL;
    struct chat_message conv[4] = {M(CHAT_SYSTEM, "Be brief."), M(CHAT_USER, " Hi "),
                                   M(CHAT_ASSISTANT, "Hello!"), M(CHAT_USER, "Bye")};
    TEST_COND("llama-2 renders", chat_render(CHAT_TEMPLATE_LLAMA2, conv, 4, 1, &out, &E) == 0);
    TEST_COND("llama-2 text",
              out && !strcmp(out, "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n Hi [/INST] Hello! </s>"
                                  "<s>[INST] Bye [/INST]"));
    free(out);
    TEST_COND("llama-2 no system", chat_render(CHAT_TEMPLATE_LLAMA2, conv + 1, 1, 1, &out, &E) == 0 &&
                                       !strcmp(out, "<s>[INST] Hi [/INST]"));
    free(out);
    struct chat_message wrong[2] = {M(CHAT_USER, "a"), M(CHAT_USER, "b")};
    TEST_COND("llama-2 needs alternation", chat_render(CHAT_TEMPLATE_LLAMA2, wrong, 2, 1, &out, &E) == -1 &&
                                               E.status == 400 && !strcmp(E.param, "messages"));
    TEST_COND("chatml", chat_render(CHAT_TEMPLATE_CHATML, conv, 2, 0, &out, &E) == 0 &&
                            !strcmp(out, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Hi "
                                         "<|im_end|>\n<|im_start|>assistant\n"));
    free(out);
    TEST_COND("plain", chat_render(CHAT_TEMPLATE_PLAIN, conv, 4, 1, &out, &E) == 0 &&
                           !strcmp(out, "<s>Be brief.\n\nUser:  Hi \nAssistant: Hello!</s>\nUser: Bye\n"
                                        "Assistant:"));
    free(out);
    TEST_COND("names", chat_template_from_name("llama-2") == CHAT_TEMPLATE_LLAMA2 &&
                           chat_template_from_name("llama2") == CHAT_TEMPLATE_LLAMA2 &&
                           chat_template_from_name("chatml") == CHAT_TEMPLATE_CHATML &&
                           chat_template_from_name("plain") == CHAT_TEMPLATE_PLAIN &&
                           chat_template_from_name("jinja") == -1);
    /* the built-ins render as the checkpoints' own templates do (fixtures from their configs) */
    static const struct { enum chat_template t; const char *file; int add_bos; } same[] = {
        {CHAT_TEMPLATE_LLAMA2, "tests/fixtures/chat_templates/meta-llama-Llama-2-7b-chat-hf.jinja", 1},
        {CHAT_TEMPLATE_CHATML, "tests/fixtures/chat_templates/teknium-OpenHermes-2.5-Mistral-7B.jinja", 0},
    };
    static const char *const bodies[] = {
        "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\" Hi \"},"
        "{\"role\":\"assistant\",\"content\":\"Hello! \"},{\"role\":\"user\",\"content\":\"\\nBye\"}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"  x  \"}]}",
    };
    for (size_t k = 0; k < 2; k++) {
        FILE *f = fopen(same[k].file, "rb");
        char src[4096];
        size_t n = f ? fread(src, 1, sizeof src - 1, f) : 0;
        if (f) fclose(f);
        src[n] = 0;
        jinja_tmpl_t *t = NULL;
        char err[ERR_LEN];
        TEST_CONDF(n > 0 && jinja_compile(&t, src, n, err) == 0, "fixture %s compiles", same[k].file);
        for (size_t b = 0; t && b < 2; b++) {
            struct oai_request r;
            struct oai_error e2;
            TEST_COND("fixture body parses", oai_parse_request(OAI_CHAT, bodies[b], strlen(bodies[b]), VOCAB, 16, &r, &e2) == 0);
            struct chat_template_args a = {.bos_token = "<s>", .eos_token = "</s>", .add_generation_prompt = 1};
            char *want = NULL, *got = NULL;
            int rc1 = chat_template_render(t, bodies[b], strlen(bodies[b]), &a, &want, NULL, err);
            int rc2 = chat_render(same[k].t, r.msgs, r.n_msgs, same[k].add_bos, &got, &e2);
            TEST_CONDF(rc1 == 0 && rc2 == 0 && !strcmp(want, got), "built-in %s == %s on body %zu (%s | %s)",
                       chat_template_name(same[k].t), same[k].file, b, want ? want : err, got ? got : e2.message);
            free(want);
            free(got);
            oai_request_free(&r);
        }
        jinja_free(t);
    }
}

static void test_json_string(void)
{
    const char raw[] = "a\0b\"c\\d\n\x01\xc3\xa9";
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "t", json_string_n(raw, sizeof raw - 1));
    char *js = cJSON_PrintUnformatted(o);
    TEST_COND("NUL and controls escaped",
              !strcmp(js, "{\"t\":\"a\\u0000b\\\"c\\\\d\\n\\u0001\xc3\xa9\"}"));
    cJSON *back = cJSON_Parse(js);
    TEST_COND("escaped string parses", back && cJSON_IsString(cJSON_GetObjectItem(back, "t")));
    cJSON_Delete(back);
    free(js);
    cJSON_Delete(o);
}

static void test_strbuf(void)
{
    struct strbuf b = {0};
    for (int i = 0; i < 1000; i++) sb_printf(&b, "%d,", i);
    TEST_COND("strbuf grows", b.len > 3000 && !strncmp(b.p, "0,1,2,", 6) && b.p[b.len] == 0);
    char big[2000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    size_t before = b.len;
    sb_printf(&b, "%s", big);
    TEST_COND("strbuf long printf", b.len == before + sizeof big - 1);
    sb_free(&b);
}

/* ---------------------------------------------------------------------------------------------
 * the daemon before a model is attached: /health 503 "loading", routes 503, 404/405 still right */

static int http_get(int port, const char *method, const char *path, char *resp, size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    char req[256];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.0\r\nContent-Length: 0\r\n\r\n", method, path);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    size_t got = 0;
    ssize_t k;
    while (got + 1 < cap && (k = read(fd, resp + got, cap - 1 - got)) > 0) got += (size_t)k;
    resp[got] = 0;
    close(fd);
    int status = -1;
    sscanf(resp, "HTTP/1.%*d %d", &status);
    return status;
}

static void test_lifecycle(void)
{
    char err[ERR_LEN] = "", resp[4096];
    log_min_level = LOG_WARN;
    struct server_params p = server_default_params();
    TEST_COND("default params", p.port == 8080 && !strcmp(p.host, "127.0.0.1") && p.max_body_mb == 8);
    p.port = 0; /* any free port */
    server_t *s = NULL;
    TEST_COND("server_start", server_start(&s, &p, err) == 0 && s);
    if (!s) return;
    int port = s->port;
    TEST_COND("bound a port", port > 0);
    TEST_COND("loading: /health 503", http_get(port, "GET", "/health", resp, sizeof resp) == 503 &&
                                          strstr(resp, "\"loading\""));
    TEST_COND("loading: /v1/models 503", http_get(port, "GET", "/v1/models", resp, sizeof resp) == 503 &&
                                             strstr(resp, "service_unavailable_error"));
    TEST_COND("loading: POST completions 503",
              http_get(port, "POST", "/v1/completions", resp, sizeof resp) == 503 && strstr(resp, "Retry-After"));
    TEST_COND("loading: 404 still", http_get(port, "GET", "/nope", resp, sizeof resp) == 404 &&
                                        strstr(resp, "not_found_error"));
    TEST_COND("loading: 405 still", http_get(port, "DELETE", "/v1/models", resp, sizeof resp) == 405 &&
                                        strstr(resp, "Allow: GET"));
    server_drain(s);
    TEST_COND("draining: /health 503", http_get(port, "GET", "/health", resp, sizeof resp) == 503 &&
                                           strstr(resp, "\"draining\""));
    TEST_COND("idle", server_wait_idle(s, 1.0) == 1);
    server_stop(s);
    server_stop(NULL);

    p = server_default_params();
    p.port = 0;
    p.api_key_file = "/nonexistent/key";
    TEST_COND("missing key file is an error naming it",
              server_start(&s, &p, err) == -1 && strstr(err, "/nonexistent/key"));
    p.api_key_file = NULL;
    struct chat_templates ct;
    TEST_COND("unknown --chat-template is an error naming it",
              chat_templates_load(&ct, NULL, "jinja2", err) == -1 && strstr(err, "--chat-template jinja2"));
    TEST_COND("--chat-template with a broken template names the construct",
              chat_templates_load(&ct, NULL, "{{ x | nope }}", err) == -1 && strstr(err, "no filter named 'nope'"));
    TEST_COND("--chat-template chatml", chat_templates_load(&ct, NULL, "chatml", err) == 0 && ct.use_builtin &&
                                            ct.builtin == CHAT_TEMPLATE_CHATML);
    chat_templates_free(&ct);
    TEST_COND("--chat-template TEXT", chat_templates_load(&ct, NULL, "{{ messages[0].content }}", err) == 0 && ct.jinja);
    chat_templates_free(&ct);
    p.host = "not a host";
    TEST_COND("bad --host is an error", server_start(&s, &p, err) == -1 && strstr(err, "--host"));
}

int main(void)
{
    test_basic();
    test_prompts();
    test_sampling();
    test_logprobs_echo();
    test_stop_bias();
    test_chat_parse();
    test_utf8();
    test_length();
    test_tokenize_parse();
    test_render();
    test_strict_fields();
    test_json_strict();
    test_new_fields();
    test_render_new();
    test_templates();
    test_strbuf();
    test_json_string();
    test_lifecycle();
    oai_request_free(&R);
    return test_report("test_openai");
}
