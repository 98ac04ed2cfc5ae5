/* server.h - the OpenAI-compatible HTTP front end on libmicrohttpd + cJSON. cJSON lives only
 * in server/: requests are parsed and validated into plain C structs (struct engine_request)
 * here, tokenized here, and results rendered here (JSON or SSE).
 *
 * Lifecycle (driven by main):
 *   server_start()      listen; /health answers 503 {"status":"loading"} until ready
 *   server_set_engine() the model is loaded: routes go live, /health 200
 *   server_drain()      SIGTERM/SIGINT: /health 503, new requests 503, in-flight ones finish
 *   server_wait_idle()  until no request is in flight or the timeout passes
 *   server_stop()       close the daemon, free everything
 *
 * Thread-safety: libmicrohttpd's threads run the handlers; they talk to the engine only through
 * engine.h. server_* functions are called from main's thread. */
#ifndef ROPESERVE_SERVER_H
#define ROPESERVE_SERVER_H

#include "../engine/engine.h"
#include "../tokenizer/tokenizer.h"

struct server_params {
    const char *host;              /* default "127.0.0.1" */
    int port;                      /* default 8080 */
    const char *api_key;           /* NULL: no auth */
    const char *api_key_file;      /* a file holding the key (first line) */
    const char *cors_origin;       /* NULL: no CORS headers */
    double max_body_mb;            /* default 8 */
    int request_timeout_s;         /* 0: none */
    const char *served_model_name; /* default: the model directory's basename */
    const char *chat_template;     /* NULL: tokenizer_config.json's; else a template name of the
                                      checkpoint, a built-in (llama-2, chatml, plain), a file or
                                      the template text */
    const char *generation_config; /* "auto" (NULL): the model's generation_config.json
                                      defaults; "vllm": none; else a directory holding one */
    const char *tool_call_parser;  /* vLLM's --tool-call-parser: "hermes" | "llama3_json" (NULL: none) */
    int enable_auto_tool_choice;   /* vLLM's --enable-auto-tool-choice: "tool_choice": "auto" (and
                                      tools without tool_choice) parse the answer into tool_calls */
    int max_n;                     /* most choices per request (n x prompts), default 16 */
    int n_threads;                 /* HTTP worker threads, default 16 */
    int max_connections;           /* open connections (one thread each), default 1024 */
    int max_connections_per_ip;    /* per client address, default 256 (0: no limit) */
    double read_timeout_s;         /* a request's head and body must arrive within this many
                                      seconds of its request line (then 408 and close), default 30 */
    double idle_timeout_s;         /* a connection without a request line this long after it
                                      opened or its previous response is closed, default 75 */
    int metrics_public;            /* /metrics answers without the API key */
};

struct server_params server_default_params(void);

typedef struct server server_t;

int server_start(server_t **out, const struct server_params *p, char *err);
/* Read model_dir's chat templates (tokenizer_config.json, chat_template.jinja, --chat-template)
 * and generation defaults (generation_config.json) before the weights load, so that a template
 * ropeserve cannot render fails at once. Errors name the file and the construct. */
int server_load_model_config(server_t *s, const char *model_dir, char *err);
/* Attach the loaded engine/tokenizer (borrowed: they outlive the server); model_dir is used for
 * the default served model name (and the model config, when server_load_model_config() has not
 * run). */
int server_set_engine(server_t *s, engine_t *e, const tokenizer_t *tok, const char *model_dir, char *err);
void server_drain(server_t *s);
/* Returns 1 when idle, 0 when the timeout passed with requests still in flight. */
int server_wait_idle(server_t *s, double timeout_s);
void server_stop(server_t *s); /* NULL-safe */

/* `ropeserve eval passkey|perplexity` (eval.c): PoSE's passkey retrieval and sliding-window
 * perplexity, in process (engine + tok) or against any OpenAI-compatible server (url). */
struct eval_params {
    const char *task;            /* "passkey" or "perplexity" */
    const char *url;             /* NULL: in process */
    const char *api_key;         /* url: sent as Authorization: Bearer */
    const char *remote_model;    /* url: model name (default: the first of /v1/models) */
    const int *lengths;          /* passkey: prompt lengths in tokens (NULL: 512, 1k, .. max) */
    int n_lengths;
    int trials;                  /* passkey: trials per length (default 10) */
    unsigned long long seed;     /* passkey: keys (default 1) */
    const char *text;            /* perplexity: UTF-8 text file */
    const int *windows;          /* perplexity: window lengths (NULL: 512, 1k, .. max) */
    int n_windows;
    int stride;                  /* perplexity: 0 = W/2 */
    int max_text_tokens;         /* perplexity: score only the first N tokens (0: all) */
    int json;                    /* also print the results as one JSON line */
};
struct eval_params eval_default_params(void);
/* Runs the task, printing its table to stdout. engine/tok: in process (borrowed; desc names the
 * model and RoPE for the table's title); NULL with p->url. Returns 0 or <0 with err. */
int eval_run(const struct eval_params *p, engine_t *engine, const tokenizer_t *tok,
             const char *desc, char *err);
/* "512,1k,4096" -> ints (k = 1024) into out[cap]; returns the count or <0 with err. */
int eval_parse_list(const char *s, int *out, int cap, char *err);

#endif
