/* server_internal.h - what the files of server/ share; never included from another module.
 *
 *   http.c     libmicrohttpd glue: lifecycle, routes, auth, CORS, body limits, the blocking
 *              (non-streaming) request loop
 *   door.c     the listening socket: accept, wait for a request line's method, hand the
 *              connection to libmicrohttpd; a line that is not HTTP gets a 400
 *   openai.c   cJSON <-> C structs: request parsing/validation (struct oai_request), error and
 *              response rendering; a growable string buffer
 *   chat.c     chat templates: the checkpoint's Jinja template or a built-in one (llama-2
 *              [INST], ChatML, plain) -> prompt text -> token ids
 *   jinja.c    the Jinja2 subset Hugging Face chat templates are written in
 *   sse.c      the job: a set of choices (one engine stream each), events -> text with stop
 *              strings, logprobs; the SSE content-reader callback
 *   metrics.c  counters and histograms, Prometheus text
 *
 * Nothing here knows about the engine's internals: only engine.h / tokenizer.h. */
#ifndef ROPESERVE_SERVER_INTERNAL_H
#define ROPESERVE_SERVER_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "../common/common.h"
#include "../engine/engine.h"
#include "../tokenizer/tokenizer.h"
#include "server.h"

#define OAI_MAX_STOP 16          /* stop strings per request */
#define OAI_MAX_STOP_LEN 512     /* bytes per stop string */
#define OAI_MAX_STOP_IDS 64
#define OAI_MAX_MESSAGES 4096
#define SSE_KEEPALIVE_S 5.0      /* ": keep-alive" while nothing else is sent (issue: <= 10 s) */

/* ---------------------------------------------------------------------------------------------
 * string buffer (openai.c) */

struct strbuf {
    char *p;      /* NUL-terminated when non-NULL */
    size_t len, cap;
};
void sb_append(struct strbuf *b, const char *s, size_t n);
void sb_puts(struct strbuf *b, const char *s);
void sb_printf(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_free(struct strbuf *b);

/* ---------------------------------------------------------------------------------------------
 * errors (openai.c) */

struct oai_error {
    int status;              /* HTTP status */
    char message[ERR_LEN];
    char param[64];          /* "" -> null */
    const char *code;        /* NULL -> null */
    int n_prompt_tokens;     /* context_length_exceeded extras (0: absent) */
    int max_model_len;
    int retry_after_s;       /* 429/503: Retry-After header (0: none) */
};

/* Fill e; returns -1 so that `return oai_err(...)` reads as one line. param may be NULL. */
int oai_err(struct oai_error *e, int status, const char *param, const char *code, const char *fmt,
            ...) __attribute__((format(printf, 5, 6)));
/* "invalid_request_error", "authentication_error", ... from the status. */
const char *oai_error_type(int status);
/* {"error":{"message","type","param","code"}} as a malloc'd string. */
char *oai_error_json(const struct oai_error *e);

/* ---------------------------------------------------------------------------------------------
 * requests (openai.c) */

enum oai_kind { OAI_COMPLETION = 0, OAI_CHAT };

enum chat_role { CHAT_SYSTEM = 0, CHAT_USER, CHAT_ASSISTANT, CHAT_TOOL };

struct chat_message {
    enum chat_role role;
    char *content; /* owned, valid UTF-8 */
};

struct oai_prompt {
    char *text;    /* owned; NULL when the prompt came as token ids */
    int32_t *ids;  /* owned: the ids given, or (after tokenizing) the text's ids */
    int n_ids;
};

struct oai_request {
    enum oai_kind kind;
    char *model;                    /* NULL when absent */
    struct oai_prompt *prompts;     /* completions: >= 1; chat: exactly 1 after templating */
    int n_prompts;
    struct chat_message *msgs;      /* chat */
    int n_msgs;
    int n;                          /* choices per prompt */
    int stream, include_usage, continuous_usage;
    int echo;                       /* completions */
    int logprobs;                   /* -1: none; else top-K (completions 0..20; chat top_logprobs) */
    int max_tokens_set;             /* max_tokens / max_completion_tokens given */
    char *stop[OAI_MAX_STOP];       /* owned */
    int n_stop;
    int include_stop_str;           /* vLLM extra include_stop_str_in_output */
    int add_special_tokens;         /* /tokenize, completions: add BOS (default 1) */
    struct sampling_params sp;      /* sp.stop_ids owned (xmalloc) */
    /* "string_config": {"shifted_offset": S, "local_value": W}: per-request STRING (S = 0: off;
     * W absent: -1, the engine picks the model's or 128) */
    int string_set, string_shift, string_local;
    int include_progress;           /* stream_options.include_progress / return_progress */
    int prompt_logprobs;            /* -1: none; else top-K with every prompt token (vLLM) */
    int truncate, truncate_right;   /* truncate_prompt_tokens (0: none, -1: what fits), side */
    int64_t priority;               /* vLLM: lower first (--scheduling-policy priority) */
    uint64_t cache_salt;            /* 0: none */
    char request_id[32];            /* "": ours; else the response id is "cmpl-<request_id>" */
    int return_token_strs;          /* /tokenize: -1 absent, else 0/1 */
    /* chat templates (vLLM's fields; the template itself reads tools/kwargs from the body) */
    int add_generation_prompt;      /* default 1 */
    int continue_final_message;     /* default 0 */
    int has_tools;                  /* a non-empty "tools" list */
    int tool_choice;                /* OAI_TOOL_CHOICE_*: "none" (or no tools), "auto" (tools without
                                       tool_choice), "required", a named function */
    int parallel_tool_calls;        /* default 1; 0: at most one tool call (OpenAI) */
    int has_template_kwargs;        /* "chat_template_kwargs" or "documents" given */
    char *chat_template;            /* "chat_template": one of the model's template names; owned */
    char template_only_field[16];   /* "": none; else the first message field only a Jinja template
                                       shows (name, tool_calls, ...), in messages[template_only_msg] */
    int template_only_msg;
    unsigned given;                 /* OAI_GIVEN_*: sampling fields the request set itself */
};

enum { OAI_TOOL_CHOICE_NONE = 0, OAI_TOOL_CHOICE_AUTO, OAI_TOOL_CHOICE_REQUIRED, OAI_TOOL_CHOICE_NAMED };

/* Sampling fields a request set (the model's generation_config.json fills the others). */
enum {
    OAI_GIVEN_TEMPERATURE = 1, OAI_GIVEN_TOP_P = 2, OAI_GIVEN_TOP_K = 4, OAI_GIVEN_MIN_P = 8,
    OAI_GIVEN_REPETITION_PENALTY = 16, OAI_GIVEN_ADD_SPECIAL_TOKENS = 32,
};

/* ---------------------------------------------------------------------------------------------
 * generation_config.json's sampling defaults (gen_defaults.c), shared by serve and generate */

struct gen_defaults {
    struct generation_config g;      /* the file's values (and EOS ids, read in every mode) */
    int sampling;                    /* 0: --generation-config vllm (EOS ids only) */
    int cap_max_tokens;              /* --generation-config DIR: max_new_tokens caps every request */
    char source[600];                /* where they came from, for logs and /v1/models */
};

/* Resolve --generation-config mode ("auto" or NULL, "vllm", or a directory) against model_dir
 * (may be NULL) and read the file. Returns 0 or -1 with err naming the file and field. */
int gen_defaults_load(struct gen_defaults *d, const char *model_dir, const char *mode, char *err);
/* Fill the sampling fields whose OAI_GIVEN_* bit is not in given (vLLM: a request's None takes
 * the default). Returns the bits of the fields it filled. */
unsigned gen_defaults_apply(const struct gen_defaults *d, struct sampling_params *sp, unsigned given);
/* A request's max_tokens after the --generation-config DIR cap (max_new_tokens). */
int gen_defaults_cap(const struct gen_defaults *d, int max_tokens);
/* A chat request without max_tokens: max_new_tokens when it is smaller (vLLM's get_max_tokens). */
int gen_defaults_chat_max_tokens(const struct gen_defaults *d, int max_tokens);
/* Append " temperature 0.6 top_p 0.9 ..." (or " none (requests set their own)") to b. */
void gen_defaults_describe(const struct gen_defaults *d, struct strbuf *b);

/* Parse and validate a body. vocab_size bounds token ids and logit_bias keys; max_n bounds
 * n x prompts. Returns 0, or -1 with e filled (400 naming the param). The body need not be
 * NUL-terminated. On success the caller owns *r (oai_request_free). */
int oai_parse_request(enum oai_kind kind, const char *body, size_t len, int vocab_size, int max_n,
                      struct oai_request *r, struct oai_error *e);
/* /tokenize: {"prompt": str | "messages": [...], "add_special_tokens": bool} -> r->prompts[0]
 * text or r->msgs. /detokenize: {"tokens": [ids]} -> r->prompts[0].ids. */
int oai_parse_tokenize(const char *body, size_t len, struct oai_request *r, struct oai_error *e);
int oai_parse_detokenize(const char *body, size_t len, int vocab_size, struct oai_request *r,
                         struct oai_error *e);
void oai_request_free(struct oai_request *r); /* NULL-safe, idempotent */

/* Validate prompt + max_tokens against max_model_len for one prompt of n_prompt tokens
 * (vLLM's message, both numbers). Sets sp.max_tokens when it was not given (chat: the rest of
 * the context). Returns 0 or -1 with e (400 context_length_exceeded). */
int oai_check_length(struct oai_request *r, int n_prompt, int max_model_len, struct oai_error *e);
/* truncate_prompt_tokens on one tokenized (and templated) prompt, then oai_check_length. */
int oai_fit_prompt(struct oai_request *r, struct oai_prompt *p, int max_model_len, struct oai_error *e);
/* The request-field table (openai.c), for tests and docs: name of field i, and its use
 * (0 implemented, 1 accepted without effect, 2 refused unless switched off); NULL past the end. */
int oai_field_count(void);
const char *oai_field_name(int i, int *use);

/* ---------------------------------------------------------------------------------------------
 * response rendering (openai.c) */

/* One token's logprob record. logprob NaN renders as null (the first prompt token). */
struct oai_lp {
    int32_t token;
    float logprob;
    int rank;         /* 1 + tokens more likely (prompt_logprobs) */
    int n_top;
    int32_t top_ids[ENGINE_MAX_LOGPROBS];
    float top_lp[ENGINE_MAX_LOGPROBS];
    int text_offset;  /* code points from the start of the choice's text */
};

/* Token id -> its text bytes (may be part of a UTF-8 character); returns the byte count. */
typedef int (*oai_token_text_fn)(void *ctx, int32_t id, char *buf, int cap);

struct oai_render {
    enum oai_kind kind;
    const char *id;         /* "cmpl-..." / "chatcmpl-..." */
    const char *model;
    long long created;
    int top_n;              /* top logprobs per token (request's logprobs) */
    int logprobs;           /* render logprobs at all */
    int prompt_top_n;       /* prompt_logprobs' K; -1: no prompt_logprobs in the response */
    oai_token_text_fn token_text;
    void *token_ctx;
};

/* A piece of one choice: its text and the logprob records of its tokens. */
struct oai_piece {
    int index;
    const char *text;
    size_t len;
    const struct oai_lp *lp;
    int n_lp;
    const char *finish_reason;  /* NULL -> null */
    const char *stop_reason;    /* matched stop string; NULL -> null (or stop_token) */
    const int32_t *stop_token;  /* the stop_token_ids id that ended it (NULL: none) */
    const struct oai_lp *plp;   /* prompt_logprobs records, one per prompt token */
    int n_plp;
    int role;                   /* chat stream: first chunk carries delta.role */
    int content_null;           /* chat: "content": null (an answer that is only tool calls) */
    const struct tool_call *tool_calls; /* chat: the message's tool_calls (NULL: none) */
    int n_tool_calls;
    int tool_part;              /* stream: 0 no tool call; 1 tool_calls[0]'s id, type and name;
                                   2 its arguments (vLLM's two kinds of DeltaToolCall) */
    int tool_index;             /* stream: the tool call's index in the message */
};

struct oai_usage {
    int prompt_tokens, completion_tokens;
};

/* Non-streaming body: the choices in index order. Returns a malloc'd string. */
char *oai_render_response(const struct oai_render *rc, const struct oai_piece *choices, int n,
                          const struct oai_usage *u);
/* One SSE chunk's JSON (no "data: " framing) for one piece, usage NULL -> no usage key (or
 * null when usage_null). Returns a malloc'd string. */
char *oai_render_chunk(const struct oai_render *rc, const struct oai_piece *p,
                       const struct oai_usage *u, int usage_null);
/* The final usage-only chunk (choices: []). */
char *oai_render_usage_chunk(const struct oai_render *rc, const struct oai_usage *u);
/* A prefill progress chunk (choices: [], "prompt_progress": {total, cache, processed, time_ms,
 * index}, llama.cpp's return_progress shape). */
char *oai_render_progress_chunk(const struct oai_render *rc, int index, int processed, int total,
                                int cached, double time_ms);

/* Token text as a JSON-safe string into buf: valid UTF-8 as is, else "bytes:\xAB" escapes
 * (OpenAI's convention); returns buf. */
const char *oai_token_str(const struct oai_render *rc, int32_t id, char *buf, size_t cap);

/* A cJSON item holding the JSON string of n bytes of valid UTF-8 (NUL bytes included). */
struct cJSON;
struct cJSON *json_string_n(const char *s, size_t n);
/* Add what a rope carries beyond its frequencies to a JSON object: "log_scale" ("clex" |
 * "gene") and "string" {shifted_offset, local_value, attention_factor}, when present. Used by
 * /v1/models and `ropeserve rope --json`. */
struct rope;
void rope_json_extras(struct cJSON *o, const struct rope *r);

/* Count code points in s[0..n). */
int utf8_cp_count(const char *s, size_t n);

/* ---------------------------------------------------------------------------------------------
 * chat templates (chat.c) */

enum chat_template {
    CHAT_TEMPLATE_PLAIN = 0,
    CHAT_TEMPLATE_LLAMA2,
    CHAT_TEMPLATE_CHATML,
};

/* "llama-2"/"llama2", "chatml", "plain" -> template; -1 when unknown. */
int chat_template_from_name(const char *name);
const char *chat_template_name(enum chat_template t);
/* Render messages with a built-in template (ending with the assistant's turn opened) into a
 * malloc'd string. BOS/EOS are written as the literal markers "<s>" / "</s>" (ChatML:
 * "<|im_start|>", "<|im_end|>"); chat_encode() turns markers into their control ids. Returns 0
 * or -1 with e (400, messages). */
int chat_render(enum chat_template t, const struct chat_message *m, int n, int add_bos, char **out,
                struct oai_error *e);

typedef struct jinja_tmpl jinja_tmpl_t;

#define CHAT_MAX_NAMED 16
#define CHAT_MAX_ADDED 4096

/* The chat templates a server renders with: the checkpoint's (tokenizer_config.json,
 * chat_template.jinja) or --chat-template's, compiled at load; read-only afterwards. */
struct chat_templates {
    int use_builtin;                     /* render with builtin (no Jinja template) */
    enum chat_template builtin;
    jinja_tmpl_t *jinja;                 /* --chat-template FILE/TEXT, else NULL */
    int selected;                        /* index into names of the default template (-1: none) */
    int n_named;
    char *names[CHAT_MAX_NAMED];         /* tokenizer_config.json's names ("default", "tool_use") */
    jinja_tmpl_t *named[CHAT_MAX_NAMED]; /* NULL when it did not compile: */
    char *named_err[CHAT_MAX_NAMED];     /* ... the error, given to requests that select it */
    char *named_from[CHAT_MAX_NAMED];    /* the file each came from */
    char *bos_token, *eos_token, *unk_token, *pad_token; /* the template's variables (NULL: unset) */
    unsigned tokens_set;                 /* bit i: the config named token i (bos, eos, unk, pad) */
    int add_bos;                         /* tokenizer_config.json add_bos_token (-1: absent) */
    int add_eos;                         /* tokenizer_config.json add_eos_token (LlamaTokenizer: EOS
                                            after every text encoded with special tokens) */
    char **added;                        /* added_tokens_decoder contents */
    int n_added;
    char *source;                        /* for the start-up log and /v1/models */
    char **markers;                      /* token texts chat_encode maps to ids itself (those the
                                            tokenizer would not find), longest first */
    int32_t *marker_ids;
    int n_markers;
    unsigned char first_byte[256];       /* 1 where some marker starts with that byte */
};

/* Load model_dir's templates and apply --chat-template (flag, may be NULL). Errors name the file
 * and the construct (a default template that does not compile is a load error). */
int chat_templates_load(struct chat_templates *ct, const char *model_dir, const char *flag, char *err);
void chat_templates_free(struct chat_templates *ct);
/* Collect the special-token texts of tok for chat_encode(). */
void chat_templates_set_tokenizer(struct chat_templates *ct, const tokenizer_t *tok);
const char *chat_templates_describe(const struct chat_templates *ct);
/* A parsed chat request (r, with its JSON body) -> prompt text (malloc'd). add_bos: the built-in
 * templates' BOS marker. Returns 0 or -1 with e (400 naming the field; a template's
 * raise_exception message is quoted). */
int chat_apply(const struct chat_templates *ct, const struct oai_request *r, const char *body, size_t len,
               int add_bos, char **out, struct oai_error *e);
/* Encode a rendered chat prompt without BOS: special-token texts become their ids (the
 * tokenizer's own matching, plus ct's markers). Returns the count or -1 with e. */
int chat_encode(const struct chat_templates *ct, const tokenizer_t *tok, const char *text, int32_t **ids,
                struct oai_error *e);

/* ---------------------------------------------------------------------------------------------
 * Jinja chat templates (jinja.c)
 *
 * A compiled template is read-only: any number of threads may render it at once. Renders are
 * bounded by struct jinja_limits; every limit is an error, never a truncated output. Both entry
 * points take arbitrary bytes and return -1 with a message naming the construct (and, at load
 * time, the line) on any failure; they never crash (fuzz targets). */

struct jinja_limits {
    size_t max_output;        /* bytes of rendered text (and of any intermediate string) */
    size_t max_memory;        /* arena bytes of one render */
    long long max_steps;      /* evaluation steps */
    long long max_iterations; /* loop iterations, all loops together */
    int max_depth;            /* macro call nesting */
};
struct jinja_limits jinja_default_limits(void);

/* Compile len bytes of template source (jinja2 with transformers' settings: trim_blocks,
 * lstrip_blocks). Unknown tags, filters and tests are errors here. */
int jinja_compile(jinja_tmpl_t **out, const char *src, size_t len, char *err);
void jinja_free(jinja_tmpl_t *t); /* NULL-safe */

/* Render with the members of a JSON object (vars, len bytes) as the variables. now: the clock
 * of strftime_now() in seconds since the epoch (0: the current time). lim NULL: defaults. On
 * success *out is malloc'd (NUL-terminated, *out_len bytes). */
int jinja_render_json(const jinja_tmpl_t *t, const char *vars, size_t len, long long now,
                      const struct jinja_limits *lim, char **out, size_t *out_len, char *err);

struct chat_template_args {
    const char *bos_token, *eos_token, *unk_token, *pad_token; /* NULL: not defined */
    int add_generation_prompt, continue_final_message;         /* the request's (vLLM) */
    long long now;                                             /* 0: the current time */
    const struct jinja_limits *lim;                            /* NULL: defaults */
};

/* Render a chat request as vLLM does: body is the request's JSON object; its "messages" become
 * `messages` (content parts joined with "\n", or a list of text parts when the template loops
 * over a message's content - vLLM's content-format detection -, tool-call arguments parsed from
 * JSON strings, vLLM's keys kept), "tools" and "documents" (None when absent), "chat_template_kwargs" extra
 * variables (which may override add_generation_prompt, tools and continue_final_message), then
 * transformers' continue_final_message cut. raise_exception() messages are quoted in err. */
int chat_template_render(const jinja_tmpl_t *t, const char *body, size_t len,
                         const struct chat_template_args *a, char **out, size_t *out_len, char *err);

/* ---------------------------------------------------------------------------------------------
 * tool-call parsers (tools.c): vLLM's --tool-call-parser hermes | llama3_json */

enum { TOOL_PARSER_NONE = 0, TOOL_PARSER_HERMES, TOOL_PARSER_LLAMA3_JSON };
#define TOOL_CALL_ID_LEN 48

struct tool_call {
    char *name;                  /* owned */
    char *arguments;             /* owned: json.dumps(arguments, ensure_ascii=False) */
    char id[TOOL_CALL_ID_LEN];   /* "chatcmpl-tool-<32 hex>" (vLLM's make_tool_call_id) */
};

struct tool_result {
    int called;                  /* vLLM's tools_called */
    struct tool_call *calls;
    int n_calls;
    size_t content_len;          /* content = the text's first content_len bytes ... */
    int content_null;            /* ... or null */
};

/* "hermes" / "llama3_json" -> TOOL_PARSER_*; -1 when unknown. */
int tool_parser_from_name(const char *name);
const char *tool_parser_name(int parser);
/* vLLM's extract_tool_calls on a finished answer (text: len bytes of UTF-8). Never fails: a text
 * it cannot parse comes back as content (called 0). Free with tool_result_free. */
void tool_extract(int parser, const char *text, size_t len, struct tool_result *res);
void tool_result_free(struct tool_result *r);
/* Streaming: how many bytes of the text so far may go out as content now (the rest may be, or
 * become, a tool call and waits for tool_extract at the end). */
size_t tool_stream_safe(int parser, const char *text, size_t len);
/* A fresh tool call id. Thread-safe. */
void tool_call_id(char out[TOOL_CALL_ID_LEN]);
/* json.loads then json.dumps(ensure_ascii=False) as Python does them; -1 when Python's
 * json.loads would refuse the text (or keep a lone surrogate). *out malloc'd. For tests. */
int tool_json_python(const char *s, size_t n, char **out);

/* ---------------------------------------------------------------------------------------------
 * metrics (metrics.c) */

struct metrics;
struct metrics *metrics_new(void);
void metrics_free(struct metrics *m);
/* One finished choice. finish: "stop" / "length" / "abort" / "error". */
void metrics_observe(struct metrics *m, const char *finish, int n_prompt, int n_gen, double ttft_s,
                     double e2e_s);
void metrics_count_http(struct metrics *m, int status);
/* Prometheus text for the registry plus the engine's live gauges (e may be NULL). */
char *metrics_render(struct metrics *m, engine_t *e, const char *model_name);

/* ---------------------------------------------------------------------------------------------
 * the server and a job (http.c, sse.c) */

enum server_state {
    SERVER_LOADING = 0, /* listening, no engine yet: /health 503 "loading" */
    SERVER_READY,       /* engine attached: every route live */
    SERVER_DRAINING,    /* SIGTERM: /health 503, new work 503, in-flight work finishes */
    SERVER_STOPPING,    /* server_stop: streams end now */
};

/* ---------------------------------------------------------------------------------------------
 * door.c: the listening socket in front of libmicrohttpd */

struct sockaddr;
struct door;
struct door_params {
    int max_pending;            /* connections waiting for their request line, in all */
    int max_pending_per_ip;     /* ... from one address (0: no limit) */
    double idle_timeout_s;      /* no request line this long after the accept: closed (0: never) */
    /* the request line's method has arrived: take fd (nonblocking; its bytes unread) */
    void (*handoff)(void *cls, int fd, const struct sockaddr *addr, unsigned addrlen);
    void (*refused)(void *cls, int fd, const char *why);     /* send fd the 400 (why: its message) */
    void (*limited)(void *cls, const char *why);             /* closed at accept */
    void *cls;
};
/* What a connection's first bytes (buf, n of them, peeked) call for. more: the client may still
 * send (0 once it shut its side). DOOR_SKIP: *skip bytes of blank lines (CRLF, LF) to consume
 * first. A method is 1..DOOR_METHOD_MAX-1 token characters (RFC 9110 tchar) then a space. */
#define DOOR_METHOD_MAX 32
enum door_verdict { DOOR_WAIT, DOOR_SKIP, DOOR_HANDOFF, DOOR_REFUSE };
enum door_verdict door_verdict(const char *buf, size_t n, int more, size_t *skip);
/* Bind and listen on addr, serve from a thread of its own. Fills err ("bind: Address in use"). */
int door_open(struct door **out, const struct sockaddr *addr, unsigned addrlen, const struct door_params *p,
              char *err);
int door_port(const struct door *d); /* the bound port (--port 0) */
void door_close(struct door *d);     /* stops accepting; closes the connections still waiting */

struct server {
    struct server_params p;
    struct MHD_Daemon *daemon;
    struct door *door;               /* accepts, hands connections to daemon */
    int port;
    volatile int state;              /* enum server_state, read by every thread */
    engine_t *eng;
    const tokenizer_t *tok;
    int vocab_size, max_model_len, add_bos, add_eos;
    int max_token_bytes;             /* the most bytes one token covers (prompt_token_bound) */
    unsigned char ascii_counts[128]; /* 1: the printable ASCII byte is always a token's own */
    struct chat_templates ct;
    struct gen_defaults gen;         /* the sampling defaults requests inherit (and EOS ids) */
    int tool_parser;                 /* TOOL_PARSER_*: --tool-call-parser (NONE: not given) */
    int config_loaded;               /* server_load_model_config() ran */
    char *model_name, *model_dir, *api_key;
    char id_prefix[16];              /* random per process */
    unsigned long long next_id;
    pthread_mutex_t mu;              /* next_id, in_flight */
    pthread_cond_t idle_cv;
    int in_flight;
    struct metrics *metrics;
    /* open connections and the read-deadline watch (http.c) */
    pthread_mutex_t conn_mu;
    pthread_cond_t conn_cv;
    struct conn_entry *conns;
    int n_conns, watch_started, watch_stop;
    pthread_t watch;
    double limit_log_t;              /* connection-limit log lines: one per 10 s with a count */
    long long limit_hits;
    long long reaped;                /* connections closed by the read deadline */
};

/* A choice: one engine request and its detokenized output. */
struct choice {
    int index;
    int prompt_idx;
    engine_stream_t *st;
    tok_stream_t *ds;
    struct strbuf text;              /* generated text so far (after stop truncation when done) */
    size_t sent;                     /* bytes of text already given to the client */
    struct oai_lp *lp;               /* generated tokens' records (completions/chat logprobs) */
    size_t *lp_byte;                 /* byte offset in text where each token's text starts */
    int n_lp, cap_lp, lp_sent;
    struct oai_lp *plp;              /* echo + logprobs: prompt tokens' records */
    int n_plp;
    int n_gen;
    int done;
    const char *finish;              /* "stop" / "length" / "abort" / "error" */
    char *stop_reason;               /* matched stop string */
    int32_t stop_token;              /* stop_token_ids id that ended it (-1: none) */
    char err[128];
    double t_first;                  /* first generated token (0: none) */
    int prompt_sent;                 /* stream + echo: prompt text already emitted */
    int finish_sent;                 /* stream: the chunk with finish_reason went out */
    struct tool_result tools;        /* the parsed answer (job->tool_parser), once done */
    int tools_parsed;                /* tools holds the final parse */
    int echo_cp;                     /* stream + echo: code points of the echoed prompt */
};

struct job {
    struct server *srv;
    struct oai_request req;
    struct oai_render rc;
    char id[48];
    struct choice *ch;
    int n_ch;
    double t_start, deadline;        /* deadline 0: none */
    int sock;                        /* client socket for disconnect checks (-1: unknown) */
    /* SSE state */
    struct strbuf out;
    size_t out_pos;
    double last_send;
    int sse_phase;                   /* 0 streaming, 1 usage/DONE queued, 2 end */
    int role_sent;
    int logged;
    int status;                      /* for the log line: 200, or the error's status */
    int tool_parser;                 /* TOOL_PARSER_*: parse the answers into tool_calls (chat,
                                        tool_choice "auto", --enable-auto-tool-choice) */
};

/* Submit one engine request per choice. Returns 0, or -1 with e (400/429/503). */
int job_submit(struct job *j, struct oai_error *e);
/* Process the events that are ready, waiting up to timeout_ms for the first one. Returns 1 when
 * every choice is done. */
int job_step(struct job *j, int timeout_ms);
/* Cancel every unfinished choice (client gone, timeout); reason goes into finish_reason. */
void job_cancel(struct job *j, const char *finish);
/* 1 when the client closed its side of the socket. */
int job_client_gone(const struct job *j);
/* The non-streaming response body (malloc'd). */
char *job_render_response(struct job *j);
/* Metrics + the one log line; idempotent. */
void job_finish_log(struct job *j);
void job_free(struct job *j);
/* libmicrohttpd content-reader callback and its free callback (cls = struct job). */
ssize_t sse_reader(void *cls, uint64_t pos, char *buf, size_t max);
void sse_free(void *cls);

int token_text_cb(void *ctx, int32_t id, char *buf, int cap); /* ctx = tokenizer */

#endif
