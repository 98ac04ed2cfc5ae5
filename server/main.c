/* main.c - the ropeserve command line: `serve`, `generate`, `rope`, `eval`, `--version`.
 *
 * Every flag lives in one table (name, argument, help, which commands take it), so `--help`
 * and the README's flag list are the same thing. main() is the only place that exits. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../common/common.h"
#include "../engine/engine.h"
#include "../kernels/backend.h"
#include "../models/model.h"
#include "../tokenizer/tokenizer.h"
#include "server.h"
#include "server_internal.h"

enum { C_SERVE = 1, C_GEN = 2, C_ROPE = 4, C_EVAL = 8, C_ALL = 15, C_RUN = 11 };

struct opts {
    const char *model;
    struct backend_params bp;
    struct engine_params ep;
    struct server_params sp;
    double drain_timeout;
    /* rope overrides (llama.cpp spelling) */
    const char *rope_json, *rope_type, *yarn_variant;
    double rope_scale, rope_theta, yarn_beta_fast, yarn_beta_slow, yarn_attn_factor;
    int yarn_orig_ctx;
    int string_shift, string_local; /* -1: not given */
    /* generate */
    const char *prompt, *prompt_ids;
    int max_tokens, top_k, top_logprobs, json, ignore_eos, has_seed;
    double temperature, top_p, min_p, repetition_penalty;
    unsigned given;        /* OAI_GIVEN_* of the sampling flags given (generation_config fills the rest) */
    int max_tokens_given;
    unsigned long long seed;
    /* rope */
    int seq_len;
    /* eval */
    struct eval_params ev;
    int kv_cache_dtype; /* MODEL_KV_DTYPE_AUTO or an enum bk_dtype */
    int ev_lengths[64], ev_windows[64];
};

struct flag {
    const char *name, *arg, *help;
    int cmds;
};

static const struct flag flags[] = {
    {"--model", "DIR", "Hugging Face model directory (config.json, safetensors, tokenizer.model or tokenizer.json)", C_ALL},
    {"--device", "auto|cpu|cuda", "compute backend (auto: CUDA when compiled in and a GPU exists)", C_RUN},
    {"--threads", "N", "CPU worker threads (default: all cores)", C_RUN},
    {"--dtype", "bf16|f16", "CUDA weight and KV dtype (default bf16)", C_RUN},
    {"--gpu-memory-utilization", "F", "fraction of GPU memory ropeserve may use (default 0.95)", C_RUN},
    {"--kv-cache-dtype", "auto|bf16|f16|fp8", "KV cache storage: auto = the weights' dtype (CPU: f32); fp8 (alias "
     "fp8_e4m3) = e4m3 with per-KV-head scales, 1.0 or the checkpoint's k_scale/v_scale (half the bytes of bf16)", C_RUN},
    {"--no-cuda-graphs", NULL, "run decode steps without CUDA graphs (debugging; env ROPESERVE_CUDA_GRAPHS=0 too)", C_RUN},
    {"--kv-cache-gb", "G", "KV cache size in GiB (default: fits the longest requests; on a GPU all memory left)", C_RUN},
    {"--max-model-len", "N", "longest prompt + completion (default: derived from the RoPE method)", C_ALL},
    {"--block-size", "N", "tokens per KV block, a power of two (default 16)", C_RUN},
    {"--max-batched-tokens", "N", "token budget per step; long prompts are prefilled in chunks (default 2048)", C_RUN},
    {"--max-num-seqs", "N", "sequences running at once (default 64)", C_RUN},
    {"--max-queue", "N", "waiting requests before 429 (default 1024)", C_SERVE},
    {"--scheduling-policy", "fcfs|priority", "admission order: arrival, or the requests' priority (lower first, "
     "ties by arrival; vLLM's); fcfs refuses a nonzero priority (default fcfs)", C_SERVE},
    {"--no-prefix-cache", NULL, "disable prefix caching", C_RUN},
    {"--log-level", "debug|info|warn|error", "log verbosity (default info)", C_ALL},
    {"--rope-scaling", "TYPE", "override rope_scaling type (linear, dynamic, ntk, yarn, llama3, longrope, ...)", C_ALL},
    {"--rope-scale", "F", "override rope_scaling.factor", C_ALL},
    {"--rope-theta", "B", "override rope_theta", C_ALL},
    {"--yarn-orig-ctx", "N", "override rope_scaling.original_max_position_embeddings", C_ALL},
    {"--yarn-beta-fast", "F", "override rope_scaling.beta_fast", C_ALL},
    {"--yarn-beta-slow", "F", "override rope_scaling.beta_slow", C_ALL},
    {"--yarn-attn-factor", "F", "override rope_scaling.attention_factor", C_ALL},
    {"--yarn-variant", "standard|revised", "YaRN variant; revised = PoSE's (the config cannot tell)", C_ALL},
    {"--rope-scaling-json", "JSON", "replace the config's rope_scaling dict", C_ALL},
    {"--rope-scaling-mode", "static|per-request", "per-request: each request's YaRN factor from its prompt + max_tokens "
     "(smallest power of two >= length / original context, capped at the configured factor)", C_RUN},
    {"--string-shift", "S", "STRING (training-free): shifted_offset S, 0 = off (overrides string_config)", C_ALL},
    {"--string-local", "W", "STRING local_value W, 0 <= W < S (default: string_config's, else 128)", C_ALL},
    {"--host", "ADDR", "listen address (default 127.0.0.1)", C_SERVE},
    {"--port", "N", "listen port (default 8080)", C_SERVE},
    {"--api-key", "KEY", "serve: require Authorization: Bearer KEY (/health and /v1/health stay open); eval --url: send it", C_SERVE | C_EVAL},
    {"--api-key-file", "FILE", "read the API key from FILE", C_SERVE},
    {"--cors-origin", "ORIGIN", "send CORS headers for ORIGIN (* for any)", C_SERVE},
    {"--max-body-mb", "N", "largest request body (default 8; 413 beyond, before anything is parsed)", C_SERVE},
    {"--max-connections", "N", "open HTTP connections, one thread each (default 1024)", C_SERVE},
    {"--max-connections-per-ip", "N", "open connections per client address (default 256; 0: no limit, e.g. "
     "behind a reverse proxy)", C_SERVE},
    {"--request-read-timeout", "S", "a request's head and body must arrive within S seconds of its request line, "
     "bytes or no bytes, else 408 and close (default 30; 0: off)", C_SERVE},
    {"--idle-timeout", "S", "close a connection that sends no request line for S seconds after it opened or its "
     "previous response (default 75; 0: off)", C_SERVE},
    {"--metrics-public", NULL, "serve /metrics without the API key (default: behind --api-key)", C_SERVE},
    {"--request-timeout", "S", "cancel a request after S seconds (default: none)", C_SERVE},
    {"--served-model-name", "NAME", "model name in the API (default: the directory name)", C_SERVE},
    {"--chat-template", "NAME|FILE", "chat template: one of the checkpoint's (tokenizer_config.json lists names), "
     "llama-2, chatml, plain, a Jinja file or the template text (default: the checkpoint's)", C_SERVE},
    {"--generation-config", "auto|vllm|DIR", "sampling defaults: the model's generation_config.json (auto), none "
     "(vllm), or DIR's; requests override them; EOS ids are read in every mode (default auto)", C_RUN},
    {"--enable-auto-tool-choice", NULL, "parse chat answers into tool_calls when a request's tool_choice is \"auto\" "
     "(the default with tools); needs --tool-call-parser (vLLM's flag)", C_SERVE},
    {"--tool-call-parser", "hermes|llama3_json", "the answers' tool-call format: hermes (<tool_call>{json}</tool_call>: "
     "Hermes 2 Pro, Qwen2.5, Qwen3) or llama3_json (a JSON object: Llama 3.1-3.3) (vLLM's names)", C_SERVE},
    {"--drain-timeout", "S", "on SIGTERM, wait this long for running requests (default 30)", C_SERVE},
    {"--prompt", "TEXT", "prompt text (BOS is added)", C_GEN},
    {"--prompt-ids", "1,2,3", "prompt token ids, used as given (no BOS added)", C_GEN},
    {"--max-tokens", "N", "tokens to generate (default 16; --generation-config DIR: at most its max_new_tokens)", C_GEN},
    {"--temperature", "T", "sampling temperature (default: generation_config.json's, else 0: greedy)", C_GEN},
    {"--top-k", "K", "top-k sampling, 0 = off (default: generation_config.json's, else off)", C_GEN},
    {"--top-p", "P", "nucleus sampling (default: generation_config.json's, else 1)", C_GEN},
    {"--min-p", "P", "min-p sampling (default: generation_config.json's, else 0)", C_GEN},
    {"--repetition-penalty", "R", "HF repetition penalty over prompt + output (default: generation_config.json's, else 1)", C_GEN},
    {"--seed", "N", "sampling seed (eval passkey: the keys' seed, default 1)", C_GEN | C_EVAL},
    {"--ignore-eos", NULL, "do not stop at EOS", C_GEN},
    {"--top-logprobs", "K", "report the K most likely tokens of each step (0..20)", C_GEN},
    {"--json", NULL, "print JSON", C_GEN | C_ROPE | C_EVAL},
    {"--seq-len", "L", "sequence length to show the RoPE for (default: the longest)", C_ROPE},
    {"--url", "URL", "evaluate an OpenAI-compatible server (http://host:port) instead of --model", C_EVAL},
    {"--remote-model", "NAME", "with --url: the model name to send (default: the first of /v1/models)", C_EVAL},
    {"--lengths", "L1,L2,..", "passkey prompt lengths in tokens, k = 1024 (default 512,1k,.. up to max_model_len)", C_EVAL},
    {"--trials", "N", "passkey trials per length, depths spread evenly (default 10)", C_EVAL},
    {"--text", "FILE", "perplexity: the UTF-8 text to score", C_EVAL},
    {"--windows", "W1,W2,..", "perplexity window lengths, k = 1024 (default 512,1k,.. up to max_model_len)", C_EVAL},
    {"--stride", "N", "perplexity: tokens between window starts (default W/2)", C_EVAL},
    {"--max-text-tokens", "N", "perplexity: score only the first N tokens of the text", C_EVAL},
};
#define N_FLAGS (int)(sizeof flags / sizeof flags[0])

static void usage(FILE *f)
{
    fprintf(f, "ropeserve %s - long-context LLaMA inference server\n\n"
               "usage: ropeserve serve    --model DIR [flags]   OpenAI-compatible HTTP server\n"
               "       ropeserve generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3) [flags]\n"
               "       ropeserve rope     --model DIR [--seq-len L] [--json]\n"
               "       ropeserve eval passkey    (--model DIR [flags] | --url URL) [--lengths ..] [--trials N]\n"
               "       ropeserve eval perplexity (--model DIR [flags] | --url URL) --text FILE [--windows ..] [--stride N]\n"
               "       ropeserve --version\n\nflags (commands):\n", ROPESERVE_VERSION);
    for (int i = 0; i < N_FLAGS; i++) {
        char left[64];
        snprintf(left, sizeof left, "%s%s%s", flags[i].name, flags[i].arg ? " " : "", flags[i].arg ? flags[i].arg : "");
        fprintf(f, "  %-36s %s (%s%s%s%s)\n", left, flags[i].help, flags[i].cmds & C_SERVE ? "serve " : "",
                flags[i].cmds & C_GEN ? "generate " : "", flags[i].cmds & C_ROPE ? "rope " : "",
                flags[i].cmds & C_EVAL ? "eval" : "");
    }
}

static int die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static int die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "ropeserve: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static long parse_int(const char *flag, const char *v, long lo, long hi)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) die("%s: expected an integer in [%ld, %ld], got '%s'", flag, lo, hi, v);
    return x;
}

static double parse_num(const char *flag, const char *v, double lo, double hi)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !(x >= lo && x <= hi)) die("%s: expected a number in [%g, %g], got '%s'", flag, lo, hi, v);
    return x;
}

static void set_flag(struct opts *o, const char *f, const char *v)
{
#define IS(s) (strcmp(f, s) == 0)
    if (IS("--model")) o->model = v;
    else if (IS("--device")) {
        if (!strcmp(v, "auto")) o->bp.device = BK_DEVICE_AUTO;
        else if (!strcmp(v, "cpu")) o->bp.device = BK_DEVICE_CPU;
        else if (!strcmp(v, "cuda")) o->bp.device = BK_DEVICE_CUDA;
        else die("--device: expected auto, cpu or cuda, got '%s'", v);
    } else if (IS("--threads")) o->bp.n_threads = (int)parse_int(f, v, 1, 1024);
    else if (IS("--dtype")) {
        if (!strcmp(v, "bf16")) o->bp.dtype = BK_BF16;
        else if (!strcmp(v, "f16")) o->bp.dtype = BK_F16;
        else die("--dtype: expected bf16 or f16, got '%s'", v);
    } else if (IS("--gpu-memory-utilization")) o->bp.gpu_memory_utilization = parse_num(f, v, 0.05, 1.0);
    else if (IS("--kv-cache-dtype")) {
        if (model_kv_dtype_parse(v, &o->kv_cache_dtype) < 0)
            die("--kv-cache-dtype: expected auto, bf16, f16, fp8 (or fp8_e4m3) or f32, got '%s'", v);
    } else if (IS("--no-cuda-graphs")) o->bp.cuda_graphs = 0;
    else if (IS("--kv-cache-gb")) o->ep.kv_cache_gb = parse_num(f, v, 1e-6, 1e6);
    else if (IS("--max-model-len")) o->ep.max_model_len = (int)parse_int(f, v, 1, 1 << 30);
    else if (IS("--block-size")) o->ep.block_size = (int)parse_int(f, v, 1, 1024);
    else if (IS("--max-batched-tokens")) o->ep.max_batched_tokens = (int)parse_int(f, v, 1, 1 << 20);
    else if (IS("--max-num-seqs")) o->ep.max_num_seqs = (int)parse_int(f, v, 1, 65536);
    else if (IS("--max-queue")) o->ep.max_queue = (int)parse_int(f, v, 0, 1 << 24);
    else if (IS("--no-prefix-cache")) o->ep.enable_prefix_cache = 0;
    else if (IS("--scheduling-policy")) {
        if (!strcmp(v, "fcfs")) o->ep.sched_policy = ENGINE_SCHED_FCFS;
        else if (!strcmp(v, "priority")) o->ep.sched_policy = ENGINE_SCHED_PRIORITY;
        else die("--scheduling-policy: expected fcfs or priority, got '%s'", v);
    }
    else if (IS("--log-level")) {
        static const char *lv[] = {"debug", "info", "warn", "error"};
        int k = -1;
        for (int i = 0; i < 4; i++) if (!strcmp(v, lv[i])) k = i;
        if (k < 0) die("--log-level: expected debug, info, warn or error, got '%s'", v);
        log_min_level = k;
    } else if (IS("--rope-scaling")) o->rope_type = v;
    else if (IS("--rope-scale")) o->rope_scale = parse_num(f, v, 1e-6, 1e6);
    else if (IS("--rope-theta")) o->rope_theta = parse_num(f, v, 1, 1e12);
    else if (IS("--yarn-orig-ctx")) o->yarn_orig_ctx = (int)parse_int(f, v, 1, 1 << 30);
    else if (IS("--yarn-beta-fast")) o->yarn_beta_fast = parse_num(f, v, 1e-6, 1e6);
    else if (IS("--yarn-beta-slow")) o->yarn_beta_slow = parse_num(f, v, 1e-6, 1e6);
    else if (IS("--yarn-attn-factor")) o->yarn_attn_factor = parse_num(f, v, 1e-6, 1e6);
    else if (IS("--yarn-variant")) {
        if (strcmp(v, "standard") && strcmp(v, "revised")) die("--yarn-variant: expected standard or revised, got '%s'", v);
        o->yarn_variant = v;
    } else if (IS("--rope-scaling-json")) o->rope_json = v;
    else if (IS("--rope-scaling-mode")) {
        if (!strcmp(v, "static")) o->ep.rope_mode = ENGINE_ROPE_STATIC;
        else if (!strcmp(v, "per-request")) o->ep.rope_mode = ENGINE_ROPE_PER_REQUEST;
        else die("--rope-scaling-mode: expected static or per-request, got '%s'", v);
    } else if (IS("--string-shift")) o->string_shift = (int)parse_int(f, v, 0, 1 << 30);
    else if (IS("--string-local")) o->string_local = (int)parse_int(f, v, 0, 1 << 30);
    else if (IS("--host")) o->sp.host = v;
    else if (IS("--port")) o->sp.port = (int)parse_int(f, v, 1, 65535);
    else if (IS("--api-key")) o->sp.api_key = o->ev.api_key = v;
    else if (IS("--api-key-file")) o->sp.api_key_file = v;
    else if (IS("--cors-origin")) o->sp.cors_origin = v;
    else if (IS("--max-body-mb")) o->sp.max_body_mb = parse_num(f, v, 0.001, 4096);
    else if (IS("--request-timeout")) o->sp.request_timeout_s = (int)parse_int(f, v, 0, 1 << 24);
    else if (IS("--max-connections")) o->sp.max_connections = (int)parse_int(f, v, 1, 1 << 20);
    else if (IS("--max-connections-per-ip")) o->sp.max_connections_per_ip = (int)parse_int(f, v, 0, 1 << 20);
    else if (IS("--request-read-timeout")) o->sp.read_timeout_s = parse_num(f, v, 0, 1e6);
    else if (IS("--idle-timeout")) o->sp.idle_timeout_s = parse_num(f, v, 0, 1e6);
    else if (IS("--metrics-public")) o->sp.metrics_public = 1;
    else if (IS("--served-model-name")) o->sp.served_model_name = v;
    else if (IS("--chat-template")) o->sp.chat_template = v;
    else if (IS("--generation-config")) o->sp.generation_config = v;
    else if (IS("--enable-auto-tool-choice")) o->sp.enable_auto_tool_choice = 1;
    else if (IS("--tool-call-parser")) o->sp.tool_call_parser = v;
    else if (IS("--drain-timeout")) o->drain_timeout = parse_num(f, v, 0, 1e6);
    else if (IS("--prompt")) o->prompt = v;
    else if (IS("--prompt-ids")) o->prompt_ids = v;
    else if (IS("--max-tokens")) { o->max_tokens = (int)parse_int(f, v, 0, 1 << 30); o->max_tokens_given = 1; }
    else if (IS("--temperature")) { o->temperature = parse_num(f, v, 0, 100); o->given |= OAI_GIVEN_TEMPERATURE; }
    else if (IS("--top-k")) { o->top_k = (int)parse_int(f, v, 0, 1 << 30); o->given |= OAI_GIVEN_TOP_K; }
    else if (IS("--top-p")) { o->top_p = parse_num(f, v, 1e-9, 1); o->given |= OAI_GIVEN_TOP_P; }
    else if (IS("--min-p")) { o->min_p = parse_num(f, v, 0, 1); o->given |= OAI_GIVEN_MIN_P; }
    else if (IS("--repetition-penalty")) {
        o->repetition_penalty = parse_num(f, v, 1e-6, 1e6);
        o->given |= OAI_GIVEN_REPETITION_PENALTY;
    }
    else if (IS("--seed")) { o->seed = o->ev.seed = (unsigned long long)parse_int(f, v, 0, 0x7fffffffffffffffL); o->has_seed = 1; }
    else if (IS("--ignore-eos")) o->ignore_eos = 1;
    else if (IS("--top-logprobs")) o->top_logprobs = (int)parse_int(f, v, 0, ENGINE_MAX_LOGPROBS);
    else if (IS("--json")) o->json = o->ev.json = 1;
    else if (IS("--seq-len")) o->seq_len = (int)parse_int(f, v, 1, 1 << 30);
    else if (IS("--url")) o->ev.url = v;
    else if (IS("--remote-model")) o->ev.remote_model = v;
    else if (IS("--trials")) o->ev.trials = (int)parse_int(f, v, 1, 1 << 20);
    else if (IS("--text")) o->ev.text = v;
    else if (IS("--stride")) o->ev.stride = (int)parse_int(f, v, 1, 1 << 30);
    else if (IS("--max-text-tokens")) o->ev.max_text_tokens = (int)parse_int(f, v, 1, 1 << 30);
    else if (IS("--lengths") || IS("--windows")) {
        char err[ERR_LEN];
        int *dst = IS("--lengths") ? o->ev_lengths : o->ev_windows;
        int n = eval_parse_list(v, dst, 64, err);
        if (n < 0) die("%s: %s", f, err);
        if (IS("--lengths")) { o->ev.lengths = dst; o->ev.n_lengths = n; }
        else { o->ev.windows = dst; o->ev.n_windows = n; }
    }
#undef IS
}

static void parse_args(struct opts *o, int cmd, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        char name[64];
        const char *eq = strchr(a, '=');
        if (eq && (size_t)(eq - a) < sizeof name) { /* --flag=value */
            memcpy(name, a, eq - a);
            name[eq - a] = 0;
            a = name;
            val = eq + 1;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); exit(0); }
        const struct flag *fl = NULL;
        for (int k = 0; k < N_FLAGS; k++) if (!strcmp(flags[k].name, a)) fl = &flags[k];
        if (!fl) die("unknown flag '%s' (see ropeserve --help)", argv[i]);
        if (!(fl->cmds & cmd)) die("flag %s does not apply to this command", a);
        if (fl->arg && !val) {
            if (i + 1 >= argc) die("%s needs a value (%s)", a, fl->arg);
            val = argv[++i];
        } else if (!fl->arg && val) {
            die("%s takes no value", a);
        }
        set_flag(o, a, val);
    }
    if (cmd == C_EVAL && o->ev.url) {
        if (o->model) die("eval: give --model DIR (in process) or --url URL (a server), not both");
        return;
    }
    if (!o->model) die(cmd == C_EVAL ? "eval: --model DIR or --url URL is required" : "--model DIR is required");
}

/* Apply the llama.cpp-style overrides to the config: the JSON replaces the dict, flags then
 * override single keys. */
static void apply_rope_overrides(struct opts *o, struct model_config *c)
{
    char err[ERR_LEN];
    if (o->rope_json && model_config_set_rope_json(c, o->rope_json, err) < 0) die("--rope-scaling-json: %s", err);
    struct rope_scaling *r = &c->rope;
    if (o->rope_type) {
        snprintf(r->type, sizeof r->type, "%s", o->rope_type);
        r->present = strcmp(o->rope_type, "none") != 0 && strcmp(o->rope_type, "default") != 0;
        if (!r->present) snprintf(r->type, sizeof r->type, "default");
    }
    if (o->rope_scale > 0) { r->factor = o->rope_scale; r->has_factor = 1; r->present = 1; }
    if (o->rope_theta > 0) c->rope_theta = o->rope_theta;
    if (o->yarn_orig_ctx > 0) r->original_max_pos = o->yarn_orig_ctx;
    if (o->yarn_beta_fast > 0) { r->beta_fast = o->yarn_beta_fast; r->has_beta_fast = 1; }
    if (o->yarn_beta_slow > 0) { r->beta_slow = o->yarn_beta_slow; r->has_beta_slow = 1; }
    if (o->yarn_attn_factor > 0) { r->attention_factor = o->yarn_attn_factor; r->has_attention_factor = 1; }
    if (o->yarn_variant) snprintf(r->yarn_variant, sizeof r->yarn_variant, "%s", o->yarn_variant);
    /* STRING: --string-shift alone keeps the config's local_value, else STRING's usual 128 */
    if (o->string_shift >= 0) {
        c->string_shift = o->string_shift;
        if (o->string_local < 0 && c->string_local == 0) c->string_local = ROPE_STRING_LOCAL_DEFAULT;
        if (o->string_shift == 0) c->string_local = 0;
    }
    if (o->string_local >= 0) {
        if (c->string_shift == 0 && o->string_shift < 0) die("--string-local needs --string-shift (or string_config)");
        c->string_local = o->string_local;
    }
    if (c->string_shift > 0 && c->string_local >= c->string_shift)
        die("STRING: --string-local %d must be below --string-shift %d", c->string_local, c->string_shift);
}

struct loaded {
    struct gen_defaults gen; /* --generation-config: EOS ids, and generate's sampling defaults */
    struct model_config cfg;
    struct backend be;
    model_t *model;
    engine_t *engine;
    tokenizer_t *tok;
};

static void load_all(struct opts *o, struct loaded *L)
{
    char err[ERR_LEN];
    if (model_config_load(&L->cfg, o->model, err) < 0) die("%s", err);
    apply_rope_overrides(o, &L->cfg);
    if (tokenizer_load(&L->tok, o->model, err) < 0) die("%s", err); /* tokenizer.model or .json */
    if (tokenizer_vocab_size(L->tok) > L->cfg.vocab_size)
        die("%s: the tokenizer has %d tokens but config.json field 'vocab_size' is %d", o->model,
            tokenizer_vocab_size(L->tok), L->cfg.vocab_size);
    /* every EOS id ends generation: config.json's, generation_config.json's (--generation-config
     * DIR's when given) and the tokenizer's (vLLM stops on each of them) */
    if (gen_defaults_load(&L->gen, o->model, o->sp.generation_config, err) < 0) die("%s", err);
    for (int i = 0; i < L->gen.g.n_eos; i++)
        if (model_config_add_eos(&L->cfg, L->gen.g.eos_ids[i]) < 0)
            die("%s: more than %d EOS ids", L->gen.source, MODEL_MAX_EOS);
    if (model_config_add_eos(&L->cfg, tokenizer_eos_id(L->tok)) < 0) die("%s: more than %d EOS ids", o->model, MODEL_MAX_EOS);
    /* vLLM's primary EOS is the tokenizer's (stop_reason null); the others report their id */
    if (tokenizer_eos_id(L->tok) >= 0) L->cfg.eos_primary = tokenizer_eos_id(L->tok);
    if (L->cfg.bos_id < 0) L->cfg.bos_id = tokenizer_bos_id(L->tok);
    if (backend_init(&L->be, &o->bp, err) < 0) die("%s", err);
    char desc[256];
    L->be.ops->describe(L->be.ctx, desc, sizeof desc);
    LOG_I("backend %s", desc);
    struct model_params mp = model_default_params();
    mp.max_batch_tokens = o->ep.max_batched_tokens;
    mp.max_out_rows = o->ep.max_num_seqs > 256 ? o->ep.max_num_seqs : 256;
    if (mp.max_out_rows > mp.max_batch_tokens) mp.max_out_rows = mp.max_batch_tokens;
    mp.kv_cache_dtype = o->kv_cache_dtype;
    mp.graph_max_seqs = o->ep.max_num_seqs;
    double t0 = now_s();
    if (model_load(&L->model, o->model, &L->cfg, &L->be, &mp, err) < 0) die("%s", err);
    const struct model_config *c = model_get_config(L->model);
    LOG_I("model %s: %d layers, hidden %d, %d heads (%d kv), head_dim %d, ffn %d, vocab %d; weights %.2f GiB, loaded in %.2fs",
          o->model, c->n_layers, c->hidden_size, c->n_heads, c->n_kv_heads, c->head_dim, c->intermediate_size,
          c->vocab_size, (double)model_weight_bytes(L->model) / 1073741824.0, now_s() - t0);
    char rd[512];
    rope_describe(model_get_rope(L->model), rd, sizeof rd);
    LOG_I("rope: %s", rd);
    if (engine_init(&L->engine, &o->ep, L->model, err) < 0) die("%s", err);
}

static void free_all(struct loaded *L)
{
    engine_free(L->engine);
    model_free(L->model);
    backend_free(&L->be);
    tokenizer_free(L->tok);
    model_config_free(&L->cfg);
}

/* ---------------------------------------------------------------------------------------------
 * generate */

/* Append len bytes to the NUL-terminated *text; with echo, also print them as they come. */
static void text_append(char **text, size_t *text_len, const char *piece, int len, int echo)
{
    *text = xrealloc(*text, *text_len + len + 1);
    memcpy(*text + *text_len, piece, len);
    *text_len += len;
    (*text)[*text_len] = 0;
    if (echo) {
        fwrite(piece, 1, len, stdout);
        fflush(stdout);
    }
}

/* One line saying where each sampling setting of `generate` came from: a flag, the
 * generation_config defaults (naming the file), or the command's own default. */
static void log_generate_sampling(const struct opts *o, const struct gen_defaults *g,
                                  const struct sampling_params *sp, unsigned took)
{
    const char *src_gen = g->source;
#define FROM(bit) ((o->given & (bit)) ? "flag" : (took & (bit)) ? "generation_config" : "default")
    LOG_I("generate: temperature %g (%s), top_p %g (%s), top_k %d (%s), min_p %g (%s), repetition_penalty %g (%s), "
          "max_tokens %d (%s); generation_config = %s",
          sp->temperature, FROM(OAI_GIVEN_TEMPERATURE), sp->top_p, FROM(OAI_GIVEN_TOP_P), sp->top_k,
          FROM(OAI_GIVEN_TOP_K), sp->min_p, FROM(OAI_GIVEN_MIN_P), sp->repetition_penalty,
          FROM(OAI_GIVEN_REPETITION_PENALTY), sp->max_tokens,
          sp->max_tokens != o->max_tokens ? "generation_config cap" : o->max_tokens_given ? "flag" : "default",
          src_gen);
#undef FROM
}

static int cmd_generate(struct opts *o)
{
    char err[ERR_LEN];
    if (!o->prompt == !o->prompt_ids) die("generate: give exactly one of --prompt or --prompt-ids");
    struct loaded L;
    memset(&L, 0, sizeof L);
    load_all(o, &L);
    int32_t *ids = NULL;
    int n = 0;
    if (o->prompt) {
        n = tokenizer_encode(L.tok, o->prompt, strlen(o->prompt), 1, &ids, err);
        if (n < 0) die("--prompt: %s", err);
    } else {
        ids = xmalloc(sizeof(int32_t) * (strlen(o->prompt_ids) / 2 + 2));
        for (const char *p = o->prompt_ids; *p;) {
            while (*p == ',' || isspace((unsigned char)*p)) p++;
            if (!*p) break;
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p) die("--prompt-ids: expected comma-separated integers, got '%s'", p);
            ids[n++] = (int32_t)v;
            p = end;
        }
        if (n == 0) die("--prompt-ids: no ids");
    }
    struct engine_request req;
    memset(&req, 0, sizeof req);
    req.prompt = ids;
    req.n_prompt = n;
    req.sp = sampling_default_params();
    req.sp.max_tokens = gen_defaults_cap(&L.gen, o->max_tokens);
    req.sp.temperature = (float)o->temperature;
    req.sp.top_k = o->top_k;
    req.sp.top_p = (float)o->top_p;
    req.sp.min_p = (float)o->min_p;
    if (o->given & OAI_GIVEN_REPETITION_PENALTY) req.sp.repetition_penalty = (float)o->repetition_penalty;
    /* the server's rule (gen_defaults.c): what a flag did not set comes from generation_config */
    unsigned took = gen_defaults_apply(&L.gen, &req.sp, o->given);
    log_generate_sampling(o, &L.gen, &req.sp, took);
    req.sp.seed = o->seed;
    req.sp.has_seed = o->has_seed;
    req.sp.ignore_eos = o->ignore_eos;
    req.sp.n_logprobs = o->top_logprobs;
    snprintf(req.id, sizeof req.id, "generate");
    engine_stream_t *s;
    double t0 = now_s(), t_first = 0;
    if (engine_submit(L.engine, &req, &s, err) != ENGINE_OK) die("%s", err);

    cJSON *out_ids = cJSON_CreateArray(), *tops = cJSON_CreateArray();
    int n_gen = 0;
    tok_stream_t *ts = tok_stream_new(L.tok, ids, n);
    char *text = xcalloc(1, 1);
    size_t text_len = 0;
    struct engine_event ev;
    enum finish_reason why = FINISH_NONE;
    int32_t stop_token = -1;
    while (engine_stream_next(s, &ev, -1) == 1) {
        if (ev.type == ENGINE_EV_DONE) { why = ev.reason; stop_token = ev.reason == FINISH_STOP ? ev.stop_token : -1; if (ev.reason == FINISH_ERROR) die("generate: %s", ev.err); break; }
        if (ev.type != ENGINE_EV_TOKEN) continue;
        if (!t_first) t_first = now_s();
        n_gen++;
        cJSON_AddItemToArray(out_ids, cJSON_CreateNumber(ev.token));
        cJSON *step = cJSON_CreateArray();
        for (int i = 0; i < ev.n_top; i++) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddNumberToObject(e, "id", ev.top_ids[i]);
            cJSON_AddNumberToObject(e, "logprob", ev.top_logprobs[i]);
            cJSON_AddItemToArray(step, e);
        }
        cJSON_AddItemToArray(tops, step);
        /* the continuation as a full decode of prompt + generated shows it, minus the prompt */
        const char *piece;
        int len = tok_stream_push(ts, ev.token, &piece);
        if (len > 0) text_append(&text, &text_len, piece, len, !o->json);
    }
    double t1 = now_s();
    const char *piece;
    int len = tok_stream_finish(ts, &piece);
    text_append(&text, &text_len, piece, len, !o->json);
    if (o->json) {
        cJSON *root = cJSON_CreateObject();
        cJSON *pids = cJSON_CreateArray();
        for (int i = 0; i < n; i++) cJSON_AddItemToArray(pids, cJSON_CreateNumber(ids[i]));
        cJSON_AddItemToObject(root, "prompt_ids", pids);
        cJSON_AddItemToObject(root, "ids", out_ids);
        cJSON_AddStringToObject(root, "text", text);
        cJSON_AddItemToObject(root, "top_logprobs", tops);
        cJSON_AddStringToObject(root, "finish_reason", finish_reason_name(why));
        if (stop_token >= 0) cJSON_AddNumberToObject(root, "stop_reason", stop_token); /* as the server's */
        else cJSON_AddNullToObject(root, "stop_reason");
        cJSON_AddNumberToObject(root, "rope_factor", engine_rope_factor_for(L.engine, (long long)n + o->max_tokens));
        char *js = cJSON_PrintUnformatted(root);
        printf("%s\n", js);
        free(js);
        cJSON_Delete(root);
    } else {
        printf("\n"); /* the text ends its line before the log line on stderr */
        fflush(stdout);
        cJSON_Delete(out_ids);
        cJSON_Delete(tops);
    }
    LOG_I("generate: prompt %d tokens, generated %d (%s), time to first token %.3fs, %.1f tokens/s after it",
          n, n_gen, finish_reason_name(why), t_first ? t_first - t0 : 0.0,
          n_gen > 1 ? (n_gen - 1) / (t1 - t_first) : 0.0);
    tok_stream_free(ts);
    engine_stream_free(s);
    free(text);
    free(ids);
    free_all(&L);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * rope */

static const char *rope_type_name(enum rope_type t)
{
    static const char *names[] = {"default", "linear", "dynamic", "ntk", "yarn", "dynamic-yarn",
                                  "llama3", "longrope", "clex", "gene"};
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

static int cmd_rope(struct opts *o)
{
    char err[ERR_LEN];
    struct model_config c;
    if (model_config_load(&c, o->model, err) < 0) die("%s", err);
    apply_rope_overrides(o, &c);
    struct rope r;
    if (rope_init(&r, &c, o->model, err) < 0) die("%s", err);
    int max_len = o->ep.max_model_len > 0 ? o->ep.max_model_len : r.max_model_len;
    int L = o->seq_len > 0 ? o->seq_len : max_len;
    int pairs = r.rotary_dim / 2;
    float *inv = xmalloc(sizeof(float) * (pairs ? pairs : 1));
    float af;
    rope_freqs(&r, L, inv, &af);
    if (o->json) {
        cJSON *root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "rope_type", r.name[0] ? r.name : rope_type_name(r.type));
        cJSON_AddNumberToObject(root, "rotary_dim", r.rotary_dim);
        cJSON_AddNumberToObject(root, "factor", r.factor);
        cJSON_AddNumberToObject(root, "original_max_position_embeddings", r.original_max_pos);
        cJSON_AddNumberToObject(root, "attention_factor", af);
        cJSON_AddNumberToObject(root, "seq_len", L);
        cJSON_AddNumberToObject(root, "max_model_len", max_len);
        cJSON *arr = cJSON_CreateArray();
        for (int i = 0; i < pairs; i++) {
            char buf[32];
            snprintf(buf, sizeof buf, "%.9g", inv[i]); /* exact float round trip */
            cJSON_AddItemToArray(arr, cJSON_CreateRaw(buf));
        }
        cJSON_AddItemToObject(root, "inv_freq", arr);
        rope_json_extras(root, &r);
        char *js = cJSON_PrintUnformatted(root);
        printf("%s\n", js);
        free(js);
        cJSON_Delete(root);
    } else {
        char d[512];
        rope_describe(&r, d, sizeof d);
        printf("%s\nseq_len %d, max_model_len %d, attention factor %.9g\n", d, L, max_len, af);
        for (int i = 0; i < pairs; i++) printf("pair %3d  inv_freq %.9e  wavelength %.1f\n", i, inv[i], 2 * M_PI / inv[i]);
    }
    free(inv);
    rope_free(&r);
    model_config_free(&c);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * eval (server/eval.c) */

static int cmd_eval(struct opts *o)
{
    char err[ERR_LEN];
    if (o->ev.url) {
        if (eval_run(&o->ev, NULL, NULL, NULL, err) < 0) die("eval %s: %s", o->ev.task, err);
        return 0;
    }
    struct loaded L;
    memset(&L, 0, sizeof L);
    load_all(o, &L);
    char rd[512], desc[1024];
    rope_describe(model_get_rope(L.model), rd, sizeof rd);
    snprintf(desc, sizeof desc, "%s, %s", o->model, rd);
    int rc = eval_run(&o->ev, L.engine, L.tok, desc, err);
    free_all(&L);
    if (rc < 0) die("eval %s: %s", o->ev.task, err);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * serve */

/* SIGTERM/SIGINT. Every thread this program starts blocks them, but a library constructor can
 * start threads before main (OpenBLAS's pool) with an empty mask: a signal sent to the process
 * may land there. So the signals have a handler (whatever thread runs it, it only writes the
 * signal number into a pipe) and one thread reads the pipe: the first signal while loading exits
 * at once (0, "bye"); after loading the first starts the drain, a second cuts it short. */
static int sig_pipe[2] = {-1, -1};
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n, last, ready;
} sigs = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0};

static void on_signal(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    if (write(sig_pipe[1], &b, 1) < 0) { /* the pipe is full: a signal is pending anyway */ }
    errno = saved;
}

static const char *sig_name(int sig) { return sig == SIGTERM ? "SIGTERM" : "SIGINT"; }

static void *signal_thread(void *arg)
{
    (void)arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL); /* some thread must take them (no OpenBLAS pool) */
    for (;;) {
        unsigned char b;
        ssize_t r = read(sig_pipe[0], &b, 1);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return NULL;
        pthread_mutex_lock(&sigs.mu);
        sigs.n++;
        sigs.last = b;
        int ready = sigs.ready, n = sigs.n;
        pthread_cond_broadcast(&sigs.cv);
        pthread_mutex_unlock(&sigs.mu);
        if (!ready) {
            LOG_I("%s while loading the model: exiting", sig_name(b));
            LOG_I("bye");
            _exit(0);
        }
        if (n == 2) LOG_W("second %s: ending the drain now", sig_name(b));
    }
}

static void signals_init(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* inherited by every thread started from here */
    signal(SIGPIPE, SIG_IGN);
    if (pipe(sig_pipe) < 0) die("pipe: %s", strerror(errno));
    fcntl(sig_pipe[1], F_SETFL, fcntl(sig_pipe[1], F_GETFL) | O_NONBLOCK);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    pthread_t th;
    if (pthread_create(&th, NULL, signal_thread, NULL) != 0) die("cannot start the signal thread");
    pthread_detach(th);
}

/* Every connection is a descriptor (--max-connections in libmicrohttpd's threads, as many again
 * waiting at the door for a request line): raise the soft limit to the hard one, as nginx's
 * worker_rlimit_nofile would, and say so when even that is short. */
static void raise_nofile(const struct server_params *p)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) getrlimit(RLIMIT_NOFILE, &rl);
    }
    rlim_t want = 2 * (rlim_t)(p->max_connections > 0 ? p->max_connections : 1024) + 64;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want)
        LOG_W("open files limit %llu is under the %llu that --max-connections %d may take: connections past it "
              "are refused at accept (raise it with ulimit -n or docker run --ulimit nofile=...)",
              (unsigned long long)rl.rlim_cur, (unsigned long long)want, p->max_connections);
}

static int cmd_serve(struct opts *o)
{
    char err[ERR_LEN];
    signals_init();
    raise_nofile(&o->sp);

    server_t *srv;
    if (server_start(&srv, &o->sp, err) < 0) die("%s", err);
    if (server_load_model_config(srv, o->model, err) < 0) die("%s", err);
    LOG_I("listening on http://%s:%d (loading the model; /health answers 503 until ready)", o->sp.host, o->sp.port);
    struct loaded L;
    memset(&L, 0, sizeof L);
    load_all(o, &L);
    if (server_set_engine(srv, L.engine, L.tok, o->model, err) < 0) die("%s", err);
    LOG_I("ready: max_model_len %d", engine_max_model_len(L.engine));
    pthread_mutex_lock(&sigs.mu);
    sigs.ready = 1;
    while (sigs.n == 0) pthread_cond_wait(&sigs.cv, &sigs.mu);
    int sig = sigs.last;
    pthread_mutex_unlock(&sigs.mu);
    LOG_I("%s: draining (up to %.0fs for running requests)", sig_name(sig), o->drain_timeout);
    server_drain(srv);
    engine_drain(L.engine);
    double t_end = now_s() + o->drain_timeout;
    for (;;) {
        double left = t_end - now_s();
        if (server_wait_idle(srv, left < 0.2 ? (left > 0 ? left : 0) : 0.2)) break;
        pthread_mutex_lock(&sigs.mu);
        int n = sigs.n;
        pthread_mutex_unlock(&sigs.mu);
        if (n >= 2) break; /* the signal thread said so */
        if (now_s() >= t_end) {
            LOG_W("drain timeout: cancelling the requests still running");
            break;
        }
    }
    server_stop(srv); /* each request still running gets its end (an error, or abort + [DONE]) */
    free_all(&L);
    LOG_I("bye");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version"))) {
        char pick[256];
        backend_auto_describe(pick, sizeof pick);
        printf("ropeserve %s (backends: %s)\n--device auto picks %s\n", ROPESERVE_VERSION, backend_list(), pick);
        return 0;
    }
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 1 : 0;
    }
    struct opts o;
    memset(&o, 0, sizeof o);
    o.string_shift = o.string_local = -1;
    o.bp = backend_default_params();
    o.ep = engine_default_params();
    o.kv_cache_dtype = MODEL_KV_DTYPE_AUTO;
    o.sp = server_default_params();
    o.drain_timeout = 30;
    o.max_tokens = 16;
    o.top_p = 1;
    o.ev = eval_default_params();
    const char *cmd = argv[1];
    int c = !strcmp(cmd, "serve") ? C_SERVE : !strcmp(cmd, "generate") ? C_GEN : !strcmp(cmd, "rope") ? C_ROPE
          : !strcmp(cmd, "eval") ? C_EVAL : 0;
    if (!c) die("unknown command '%s' (serve, generate, rope, eval, --version)", cmd);
    int skip = 2;
    if (c == C_EVAL) {
        if (argc < 3 || (strcmp(argv[2], "passkey") && strcmp(argv[2], "perplexity")))
            die("eval: expected a task: ropeserve eval passkey|perplexity ... (see --help)");
        o.ev.task = argv[2];
        skip = 3;
    }
    parse_args(&o, c, argc - skip, argv + skip);
    if (c == C_EVAL) return cmd_eval(&o);
    if (c == C_GEN) return cmd_generate(&o);
    if (c == C_ROPE) return cmd_rope(&o);
    return cmd_serve(&o);
}
