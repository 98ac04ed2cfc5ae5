/* http.c - the libmicrohttpd glue: daemon lifecycle, routes, API key, CORS, body limit, the
 * request lifecycle, and the blocking loop of a non-streaming generation.
 *
 * Threads: libmicrohttpd runs one thread per connection (MHD_USE_THREAD_PER_CONNECTION), so a
 * handler may block while its request generates; parsing, validation and tokenization happen on
 * that thread and the engine thread only ever sees engine_submit()/engine_cancel(). Many
 * connections can wait at once; the engine queues them (--max-queue, then 429).
 *
 * Slow and hostile clients: the door (door.c) accepts and holds a connection, without a thread,
 * until its first request line shows a method and a space (or answers 400: a line libmicrohttpd
 * would close without a word), then hands it over. From there it has a thread:
 * --max-connections bounds the threads, --max-connections-per-ip what one address holds
 * (libmicrohttpd closes the excess at hand-over; the door applies the same two limits to the
 * connections it holds), and the watch thread (conn_watch) closes, with a 408, every connection
 * whose request head and body did not arrive within --request-read-timeout of its request line,
 * and without a word one that sent no request line within --idle-timeout of its opening (the
 * door) or previous response: libmicrohttpd's own idle timeout restarts with every byte, so a
 * client trickling a header line every few seconds would hold its thread for ever.
 * (--idle-timeout's 75 s outlasts nginx's 60 s upstream keep-alive, so nginx closes its idle
 * connections first.) A request line libmicrohttpd cannot use (a bad version, ...) gets its 400;
 * on a keep-alive connection's second request, one with no space is closed without a word (the
 * door sees only a connection's first request).
 *
 * Request lifecycle (libmicrohttpd's access-handler protocol, as in chunked_example.c):
 *   call 1       allocate struct req_ctx; refuse a declared Content-Length over the limit (413)
 *   call 2..k    append upload chunks (counting; over the limit -> discard, 413 at the end)
 *   last call    route: auth -> method -> state -> handler; queue exactly one response
 *   completed    free the context (streams: sse_free frees the job when the response goes)
 *
 * Status mapping: 400 bad input (param named), 401 key, 404 route/model, 405 method (Allow),
 * 413 body, 429 queue full (Retry-After), 503 loading/draining, 500 only for engine failures.
 * A client error never kills the server: every path returns a JSON error. */
#include "server_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct server_params server_default_params(void)
{
    struct server_params p;
    memset(&p, 0, sizeof p);
    p.host = "127.0.0.1";
    p.port = 8080;
    p.max_body_mb = 8;
    p.max_n = 16;
    p.n_threads = 16;
    p.max_connections = 1024;
    p.max_connections_per_ip = 256;
    p.read_timeout_s = 30;
    p.idle_timeout_s = 75;
    return p;
}

/* An idle keep-alive connection holds a thread; close it after this long without traffic. A
 * handler that blocks while its request generates is not idle (libmicrohttpd does not time out
 * a connection whose handler is running). */
#ifndef HTTP_IDLE_TIMEOUT_S
#define HTTP_IDLE_TIMEOUT_S 300
#endif

struct req_ctx {
    struct strbuf body;
    int too_big;
    int responded; /* a response was queued early (413) */
};

/* One open connection, for the read deadline (conn_watch). Under srv->conn_mu. */
struct conn_entry {
    struct conn_entry *prev, *next;
    int fd;
    double t0;          /* the connection opened, its previous response went, or (line_seen)
                           its request line arrived */
    int reading;        /* 1 until the request is complete (dispatch); the deadline applies */
    int line_seen;      /* libmicrohttpd parsed a request line since t0 */
    int reaped;         /* closed by the watch (408) */
};

/* ---------------------------------------------------------------------------------------------
 * responses */

static void add_cors(struct server *s, struct MHD_Connection *conn, struct MHD_Response *r)
{
    const char *allow = s->p.cors_origin;
    if (!allow || !*allow) return;
    if (!strcmp(allow, "*")) {
        MHD_add_response_header(r, "Access-Control-Allow-Origin", "*");
        return;
    }
    const char *origin = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin");
    if (!origin) return;
    /* a comma-separated list of allowed origins */
    size_t ol = strlen(origin);
    for (const char *p = allow; *p;) {
        const char *q = strchr(p, ',');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        while (n && *p == ' ') p++, n--;
        while (n && p[n - 1] == ' ') n--;
        if (n == ol && !memcmp(p, origin, n)) {
            MHD_add_response_header(r, "Access-Control-Allow-Origin", origin);
            MHD_add_response_header(r, "Vary", "Origin");
            return;
        }
        if (!q) break;
        p = q + 1;
    }
}

/* Queue a response with body (malloc'd, taken). */
static enum MHD_Result respond(struct server *s, struct MHD_Connection *conn, int status,
                               char *body, const char *ctype)
{
    size_t n = body ? strlen(body) : 0;
    struct MHD_Response *r =
        MHD_create_response_from_buffer(n, body ? body : (void *)"", body ? MHD_RESPMEM_MUST_FREE
                                                                          : MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(r, "Content-Type", ctype);
    add_cors(s, conn, r);
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    metrics_count_http(s->metrics, status);
    return ret;
}

static enum MHD_Result respond_json(struct server *s, struct MHD_Connection *conn, int status,
                                    cJSON *o)
{
    char *body = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return respond(s, conn, status, body, "application/json");
}

/* close: the connection cannot carry another request (its framing is in doubt) */
static enum MHD_Result respond_error_ex(struct server *s, struct MHD_Connection *conn,
                                        const struct oai_error *e, const char *allow, int close)
{
    char *body = oai_error_json(e);
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body,
                                                             MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "Content-Type", "application/json");
    if (close) MHD_add_response_header(r, "Connection", "close");
    if (e->retry_after_s > 0) {
        char v[16];
        snprintf(v, sizeof v, "%d", e->retry_after_s);
        MHD_add_response_header(r, "Retry-After", v);
    }
    if (allow) MHD_add_response_header(r, "Allow", allow);
    if (e->status == 401) MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    add_cors(s, conn, r);
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)e->status, r);
    MHD_destroy_response(r);
    metrics_count_http(s->metrics, e->status);
    /* every refusal at info, with what the client was told */
    if (e->status >= 500 && e->status != 503) LOG_W("HTTP %d: %s", e->status, e->message);
    else LOG_I("HTTP %d%s%.64s%s: %s", e->status, e->param[0] ? " (param '" : "", e->param,
               e->param[0] ? "')" : "", e->message);
    return ret;
}

static enum MHD_Result respond_error(struct server *s, struct MHD_Connection *conn,
                                     const struct oai_error *e, const char *allow)
{
    return respond_error_ex(s, conn, e, allow, 0);
}

/* ---------------------------------------------------------------------------------------------
 * connections: the read deadline, libmicrohttpd's log, header checks */

static struct conn_entry *conn_entry_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

static void conn_set_reading(struct server *s, struct MHD_Connection *conn, int reading)
{
    struct conn_entry *ce = conn_entry_of(conn);
    if (!ce) return;
    pthread_mutex_lock(&s->conn_mu);
    if (reading) {
        ce->t0 = now_s();
        ce->line_seen = 0;
    }
    ce->reading = reading;
    pthread_mutex_unlock(&s->conn_mu);
}

static void send_raw(int fd, int status, const char *reason, const char *msg)
{
    char body[256], out[512];
    int bl = snprintf(body, sizeof body, "{\"error\":{\"message\":\"%s\",\"type\":\"invalid_request_error\","
                      "\"param\":null,\"code\":%d}}", msg, status);
    int n = snprintf(out, sizeof out, "HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\n\r\n%s", status, reason, bl, body);
    if (send(fd, out, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) { /* the client is gone: fine */ }
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    struct server *s = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        struct conn_entry *ce = xcalloc(1, sizeof *ce);
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        ce->fd = ci ? ci->connect_fd : -1;
        ce->t0 = now_s();
        ce->reading = 1;
        pthread_mutex_lock(&s->conn_mu);
        ce->next = s->conns;
        if (s->conns) s->conns->prev = ce;
        s->conns = ce;
        s->n_conns++;
        pthread_mutex_unlock(&s->conn_mu);
        *socket_context = ce;
        return;
    }
    struct conn_entry *ce = *socket_context;
    if (!ce) return;
    pthread_mutex_lock(&s->conn_mu);
    if (ce->prev) ce->prev->next = ce->next;
    else s->conns = ce->next;
    if (ce->next) ce->next->prev = ce->prev;
    s->n_conns--;
    pthread_mutex_unlock(&s->conn_mu);
    free(ce);
    *socket_context = NULL;
}

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    struct server *s = cls;
    struct conn_entry *ce = conn_entry_of(conn);
    if (ce) {
        pthread_mutex_lock(&s->conn_mu);
        ce->line_seen = 1;
        ce->t0 = now_s(); /* the request's read deadline starts */
        pthread_mutex_unlock(&s->conn_mu);
    }
    return NULL; /* *con_cls starts NULL: on_request allocates its context */
}

/* Every 250 ms: close (408) the connections whose request did not arrive in time. */
static void *conn_watch(void *arg)
{
    struct server *s = arg;
    pthread_mutex_lock(&s->conn_mu);
    while (!s->watch_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 250 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&s->conn_cv, &s->conn_mu, &ts);
        if (s->watch_stop) continue;
        double t = now_s();
        int n = 0;
        for (struct conn_entry *ce = s->conns; ce; ce = ce->next) {
            double limit = ce->line_seen ? s->p.read_timeout_s : s->p.idle_timeout_s;
            if (!ce->reading || ce->reaped || ce->fd < 0 || limit <= 0 || t - ce->t0 < limit) continue;
            /* the entry leaves the list (on_connection) before libmicrohttpd closes the fd, and
             * that takes conn_mu: the fd is still this connection's. A request under way gets a
             * 408; an idle connection is just closed (a client may be reusing it right now) */
            if (ce->line_seen)
                send_raw(ce->fd, 408, "Request Timeout", "the request did not arrive within --request-read-timeout");
            shutdown(ce->fd, SHUT_RDWR);
            ce->reaped = 1;
            n++;
        }
        if (n) {
            s->reaped += n;
            LOG_D("closed %d connection(s): a request not in within --request-read-timeout %g s or no request "
                  "within --idle-timeout %g s (%lld in all)", n, s->p.read_timeout_s, s->p.idle_timeout_s, s->reaped);
        }
    }
    pthread_mutex_unlock(&s->conn_mu);
    return NULL;
}

/* Refusals at accept (the door's and libmicrohttpd's): one warning per 10 s, with a count. */
static void note_limit_hit(struct server *s, const char *msg)
{
    pthread_mutex_lock(&s->conn_mu);
    s->limit_hits++;
    double t = now_s();
    int say = t - s->limit_log_t >= 10;
    long long hits = s->limit_hits;
    if (say) {
        s->limit_log_t = t;
        s->limit_hits = 0;
    }
    pthread_mutex_unlock(&s->conn_mu);
    if (say) LOG_W("HTTP: %lld connection(s) refused at accept (--max-connections %d, --max-connections-per-ip %d): %s",
                   hits, s->p.max_connections, s->p.max_connections_per_ip, msg);
}

/* libmicrohttpd's messages: a client that hangs up mid-response is routine (debug; our own
 * line says which request), connection-limit refusals are summed (one line per 10 s), trouble
 * of the server's own (threads, memory, sockets) is a warning. */
static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
    struct server *s = cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = 0;
    if (strstr(msg, "connection limit") || strstr(msg, "Connection limit") || strstr(msg, "per-IP") ||
        strstr(msg, "too many") || strstr(msg, "Failed to create a thread")) {
        note_limit_hit(s, msg);
        return;
    }
    /* the rest is per-connection news (a client hung up, a malformed request line, a reset):
     * debug, except what says the server itself is short of something */
    if (strstr(msg, "thread") || strstr(msg, "bind") || strstr(msg, "listen") || strstr(msg, "memory") ||
        strstr(msg, "epoll"))
        LOG_W("HTTP: %s", msg);
    else
        LOG_D("HTTP: %s", msg);
}

/* the door (door.c): a connection whose request line has begun goes to libmicrohttpd, which
 * closes it when over --max-connections(-per-ip) (its log line: note_limit_hit) */
static void door_handoff(void *cls, int fd, const struct sockaddr *addr, unsigned addrlen)
{
    struct server *s = cls;
    if (MHD_add_connection(s->daemon, fd, addr, (socklen_t)addrlen) != MHD_YES)
        LOG_D("HTTP: connection not taken: %s", strerror(errno));
}

static void door_refused(void *cls, int fd, const char *why)
{
    struct server *s = cls;
    send_raw(fd, 400, "Bad Request", why);
    metrics_count_http(s->metrics, 400);
    LOG_I("HTTP 400: %s", why);
}

static void door_limited(void *cls, const char *why)
{
    note_limit_hit(cls, why);
}

struct hdr_count {
    int content_length, transfer_encoding;
};

static enum MHD_Result count_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    struct hdr_count *c = cls;
    if (!strcasecmp(key, "Content-Length")) c->content_length++;
    if (!strcasecmp(key, "Transfer-Encoding")) c->transfer_encoding++;
    return MHD_YES;
}

/* Framing a proxy in front could read differently from us (request smuggling): more than one
 * Content-Length, or Content-Length with Transfer-Encoding. NULL when fine. */
static const char *framing_problem(struct MHD_Connection *conn)
{
    struct hdr_count c = {0, 0};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, count_header, &c);
    if (c.content_length > 1) return "more than one Content-Length header";
    if (c.content_length && c.transfer_encoding) return "both Content-Length and Transfer-Encoding";
    if (c.transfer_encoding > 1) return "more than one Transfer-Encoding header";
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * auth */

/* Constant time in the length of the expected key: no early exit on the first difference. */
static int key_equal(const char *want, const char *got)
{
    size_t wl = strlen(want), gl = strlen(got);
    unsigned diff = (unsigned)(wl ^ gl);
    for (size_t i = 0; i < wl; i++) diff |= (unsigned char)want[i] ^ (unsigned char)(gl ? got[i % gl] : 0);
    return diff == 0;
}

static int authorized(struct server *s, struct MHD_Connection *conn)
{
    if (!s->api_key) return 1;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return 0;
    h += 7;
    while (*h == ' ') h++;
    return key_equal(s->api_key, h);
}

/* ---------------------------------------------------------------------------------------------
 * helpers for handlers */

static void new_id(struct server *s, const char *prefix, char *out, size_t cap)
{
    pthread_mutex_lock(&s->mu);
    unsigned long long n = ++s->next_id;
    pthread_mutex_unlock(&s->mu);
    snprintf(out, cap, "%s-%s%08llx", prefix, s->id_prefix, n);
}

static int model_ok(struct server *s, const struct oai_request *r, struct oai_error *e)
{
    if (!r->model || !strcmp(r->model, s->model_name) ||
        (s->model_dir && !strcmp(r->model, s->model_dir)))
        return 0;
    return oai_err(e, 404, "model", "model_not_found", "The model `%.200s` does not exist.",
                   r->model);
}

/* generation_config.json's sampling defaults for the fields a request left unset (vLLM:
 * to_sampling_params takes default_sampling_params.get(field) when the request's is None). */
static void apply_gen_defaults(const struct server *s, struct oai_request *r)
{
    gen_defaults_apply(&s->gen, &r->sp, r->given);
}

/* Append the EOS id to n ids when tokenizer_config.json says add_eos_token (transformers'
 * LlamaTokenizer adds it to every text encoded with special tokens, and vLLM encodes completion
 * prompts so); returns the new count. */
static int add_eos(const struct server *s, int add_special, int32_t **ids, int n)
{
    if (n < 0 || !add_special || !s->add_eos) return n;
    *ids = xrealloc(*ids, sizeof(int32_t) * (size_t)(n + 1));
    (*ids)[n] = tokenizer_eos_id(s->tok);
    return n + 1;
}

/* Tokenizing costs CPU in proportion to the text (seconds for megabytes), so a prompt that
 * cannot fit is refused before it is tokenized. A lower bound on its token count that needs no
 * tokenizer: every printable ASCII byte survives normalization (NFKC keeps ASCII, whitespace
 * rules touch only whitespace) and one token covers at most max_token_bytes of them, so
 * tokens >= (printable ASCII bytes) / max_token_bytes. Bytes the tokenizer might fold into an
 * unknown-token run are not counted (ascii_counts, checked at load). */
static long long prompt_token_bound(const struct server *s, const char *text, size_t len)
{
    if (s->max_token_bytes <= 0) return 0;
    long long n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c < 128) n += s->ascii_counts[c];
    }
    return n / s->max_token_bytes;
}

/* Prompts bound above this many tokens are refused untokenized: max_model_len, or (a request that
 * truncates, /tokenize) PROMPT_BOUND_FACTOR times it. */
#define PROMPT_BOUND_FACTOR 4
static int check_prompt_bound(const struct server *s, const char *text, size_t len, long long limit,
                              const char *param, struct oai_error *e)
{
    long long b = prompt_token_bound(s, text, len);
    if (b <= limit) return 0;
    oai_err(e, 400, param, "context_length_exceeded", "This model's maximum context length is %d tokens. "
            "However, your prompt has at least %lld tokens (%zu bytes; refused before tokenizing: at most %lld "
            "tokens %s). Please reduce the length of the prompt.", s->max_model_len, b, len, limit,
            limit > s->max_model_len ? "when truncating or counting" : "fit");
    e->max_model_len = s->max_model_len;
    return -1;
}

/* At load: the longest token's bytes and the ASCII bytes that always count. */
static void prompt_bound_init(struct server *s)
{
    char buf[1024];
    int longest = 1;
    int nv = tokenizer_vocab_size(s->tok);
    for (int id = 0; id < nv; id++) {
        int n = token_text_cb((void *)s->tok, id, buf, sizeof buf);
        if (n >= (int)sizeof buf) n = 1 << 20; /* cannot tell: no bound */
        const char *piece = tokenizer_id_to_piece(s->tok, id);
        int pl = piece ? (int)strlen(piece) : 0;
        if (n > longest) longest = n;
        if (pl > longest) longest = pl;
    }
    s->max_token_bytes = longest < (1 << 20) ? longest : 0;
    int unk = tokenizer_unk_id(s->tok);
    memset(s->ascii_counts, 0, sizeof s->ascii_counts);
    for (int c = 0x21; c < 0x7f; c++) {
        char t[2] = {(char)c, 0};
        int32_t *ids = NULL;
        char err[ERR_LEN];
        int n = tokenizer_encode(s->tok, t, 1, 0, &ids, err);
        int ok = n >= 1;
        for (int i = 0; i < n; i++)
            if (ids[i] == unk) ok = 0;
        free(ids);
        s->ascii_counts[c] = (unsigned char)ok;
    }
}

/* A chat request -> prompt text -> ids, through the model's template (or a built-in one). limit:
 * refuse untokenized a rendered prompt bound above this many tokens. */
static int chat_ids(struct server *s, const struct oai_request *r, const char *body, size_t len, int add_bos,
                    long long limit, int32_t **ids, struct oai_error *e)
{
    char *text = NULL;
    if (chat_apply(&s->ct, r, body, len, add_bos, &text, e)) return -1;
    if (check_prompt_bound(s, text, strlen(text), limit, "messages", e)) {
        free(text);
        return -1;
    }
    int n = chat_encode(&s->ct, s->tok, text, ids, e);
    free(text);
    /* vLLM: add_special_tokens=true adds BOS on top of what the template wrote */
    if (n >= 0 && !s->ct.use_builtin && (r->given & OAI_GIVEN_ADD_SPECIAL_TOKENS) && r->add_special_tokens &&
        tokenizer_bos_id(s->tok) >= 0) {
        *ids = xrealloc(*ids, sizeof(int32_t) * (size_t)(n + 1));
        memmove(*ids + 1, *ids, sizeof(int32_t) * (size_t)n);
        (*ids)[0] = tokenizer_bos_id(s->tok);
        n++;
    }
    if (!s->ct.use_builtin && (r->given & OAI_GIVEN_ADD_SPECIAL_TOKENS)) n = add_eos(s, r->add_special_tokens, ids, n);
    return n;
}

/* Text prompts -> ids (BOS per tokenizer_config's add_bos_token); chat: template -> ids. */
static int tokenize_prompts(struct server *s, struct oai_request *r, const char *body, size_t len,
                            struct oai_error *e)
{
    char err[ERR_LEN];
    apply_gen_defaults(s, r);
    long long limit = (long long)s->max_model_len * (r->truncate ? PROMPT_BOUND_FACTOR : 1);
    if (r->kind == OAI_CHAT) {
        int32_t *ids = NULL;
        int n = chat_ids(s, r, body, len, s->add_bos, limit, &ids, e);
        if (n < 0) return -1;
        r->prompts = xcalloc(1, sizeof *r->prompts);
        r->n_prompts = 1;
        r->prompts[0].ids = ids;
        r->prompts[0].n_ids = n;
    } else {
        for (int i = 0; i < r->n_prompts; i++) {
            struct oai_prompt *p = &r->prompts[i];
            if (!p->text) continue;
            if (check_prompt_bound(s, p->text, strlen(p->text), limit, "prompt", e)) return -1;
            int n = tokenizer_encode(s->tok, p->text, strlen(p->text),
                                     s->add_bos && r->add_special_tokens, &p->ids, err);
            if (n < 0) return oai_err(e, 400, "prompt", NULL, "could not tokenize the prompt: %s", err);
            n = add_eos(s, r->add_special_tokens, &p->ids, n);
            p->n_ids = n;
        }
    }
    for (int i = 0; i < r->n_prompts; i++) {
        if (r->prompts[i].n_ids == 0)
            return oai_err(e, 400, r->kind == OAI_CHAT ? "messages" : "prompt", NULL,
                           "the prompt is empty (0 tokens)");
        /* vLLM's get_max_tokens: generation_config's max_new_tokens is a chat request's default
         * (completions default to 16), and a cap besides with --generation-config DIR */
        if (r->max_tokens_set) r->sp.max_tokens = gen_defaults_cap(&s->gen, r->sp.max_tokens);
        if (oai_fit_prompt(r, &r->prompts[i], s->max_model_len, e)) return -1;
        if (!r->max_tokens_set && r->kind == OAI_CHAT)
            r->sp.max_tokens = gen_defaults_chat_max_tokens(&s->gen, r->sp.max_tokens);
    }
    return 0;
}

static int conn_fd(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

/* ---------------------------------------------------------------------------------------------
 * handlers */

/* vLLM (serving_chat): "auto" tool choice needs --enable-auto-tool-choice and --tool-call-parser;
 * without them a chat request may send tools only with "tool_choice": "none". */
static int check_tool_choice(const struct server *s, const struct oai_request *r, struct oai_error *e)
{
    if (r->kind != OAI_CHAT || r->tool_choice != OAI_TOOL_CHOICE_AUTO) return 0;
    if (s->p.enable_auto_tool_choice && s->tool_parser) return 0;
    return oai_err(e, 400, "tool_choice", "unsupported_parameter", "\"auto\" tool choice requires "
                   "--enable-auto-tool-choice and --tool-call-parser to be set (tools without 'tool_choice' mean "
                   "\"auto\"; send \"tool_choice\": \"none\" to render the tools into the prompt and get the "
                   "model's text back)");
}

static enum MHD_Result handle_generate(struct server *s, struct MHD_Connection *conn,
                                       enum oai_kind kind, struct req_ctx *rc)
{
    struct oai_error e;
    memset(&e, 0, sizeof e);
    struct job *j = xcalloc(1, sizeof *j);
    j->srv = s;
    j->sock = conn_fd(conn);
    j->t_start = now_s();
    if (oai_parse_request(kind, rc->body.p ? rc->body.p : "", rc->body.len, s->vocab_size,
                          s->p.max_n > 0 ? s->p.max_n : 16, &j->req, &e) ||
        model_ok(s, &j->req, &e) || check_tool_choice(s, &j->req, &e) ||
        tokenize_prompts(s, &j->req, rc->body.p ? rc->body.p : "", rc->body.len, &e)) {
        job_free(j);
        return respond_error(s, conn, &e, NULL);
    }
    if (job_client_gone(j)) { /* it left while its prompt was templated and tokenized */
        LOG_D("client disconnected before its request was queued");
        job_free(j);
        return MHD_NO;
    }
    new_id(s, kind == OAI_CHAT ? "chatcmpl" : "cmpl", j->id, sizeof j->id);
    if (j->req.request_id[0]) /* vLLM: the client's id, under our prefix */
        snprintf(j->id, sizeof j->id, "%s-%s", kind == OAI_CHAT ? "chatcmpl" : "cmpl", j->req.request_id);
    j->rc.kind = kind;
    j->rc.id = j->id;
    j->rc.model = s->model_name;
    j->rc.created = (long long)time(NULL);
    j->rc.logprobs = j->req.logprobs >= 0;
    j->rc.top_n = j->req.logprobs > 0 ? j->req.logprobs : 0;
    j->rc.prompt_top_n = j->req.prompt_logprobs;
    j->rc.token_text = token_text_cb;
    j->rc.token_ctx = (void *)s->tok;
    if (kind == OAI_CHAT && j->req.tool_choice == OAI_TOOL_CHOICE_AUTO) j->tool_parser = s->tool_parser;
    if (s->p.request_timeout_s > 0) j->deadline = j->t_start + s->p.request_timeout_s;
    if (job_submit(j, &e)) {
        job_free(j);
        return respond_error(s, conn, &e, NULL);
    }

    if (j->req.stream) {
        j->last_send = now_s();
        struct MHD_Response *r =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, sse_reader, j, sse_free);
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        MHD_add_response_header(r, "X-Accel-Buffering", "no");
        add_cors(s, conn, r);
        enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, r);
        MHD_destroy_response(r); /* the job lives until sse_free */
        metrics_count_http(s->metrics, 200);
        return ret;
    }

    /* non-streaming: wait here (this connection's own thread) */
    int stopped = 0;
    while (!job_step(j, 100)) {
        if (job_client_gone(j)) {
            job_cancel(j, "abort");
            job_finish_log(j);
            LOG_D("%s: client disconnected, cancelled", j->id);
            job_free(j);
            return MHD_NO; /* close the connection; nobody reads a response */
        }
        if (s->state == SERVER_STOPPING) {
            job_cancel(j, "abort");
            stopped = 1;
        }
        if (j->deadline > 0 && now_s() > j->deadline) {
            LOG_W("%s: --request-timeout %d s passed, cancelled", j->id, s->p.request_timeout_s);
            job_cancel(j, "abort");
        }
    }
    if (stopped) { /* --drain-timeout passed (or a second SIGTERM): an answer, not a cut socket */
        j->status = 503;
        job_finish_log(j);
        job_free(j);
        oai_err(&e, 503, NULL, "server_shutdown", "the server shut down before the request finished "
                "(--drain-timeout passed); it was cancelled");
        return respond_error_ex(s, conn, &e, NULL, 1);
    }
    for (int i = 0; i < j->n_ch; i++) j->status = j->ch[i].err[0] ? 500 : j->status; /* for the log */
    job_finish_log(j);
    for (int i = 0; i < j->n_ch; i++) {
        if (j->ch[i].err[0]) { /* the engine failed this request: a 500, never a half answer */
            oai_err(&e, 500, NULL, "engine_error", "%s", j->ch[i].err);
            job_free(j);
            return respond_error(s, conn, &e, NULL);
        }
    }
    char *body = job_render_response(j);
    job_free(j);
    return respond(s, conn, 200, body, "application/json");
}

void rope_json_extras(cJSON *o, const struct rope *r)
{
    if (r->log_scale != ROPE_LOG_SCALE_NONE)
        cJSON_AddStringToObject(o, "log_scale", r->log_scale == ROPE_LOG_SCALE_CLEX ? "clex" : "gene");
    if (r->string_shift > 0) {
        cJSON *st = cJSON_AddObjectToObject(o, "string");
        cJSON_AddNumberToObject(st, "shifted_offset", r->string_shift);
        cJSON_AddNumberToObject(st, "local_value", r->string_local);
        cJSON_AddNumberToObject(st, "attention_factor", ROPE_STRING_FACTOR);
    }
}

static cJSON *rope_json(const struct rope *r, const struct model_config *c, enum engine_rope_mode mode)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", r->name);
    cJSON_AddNumberToObject(o, "factor", r->factor);
    cJSON_AddNumberToObject(o, "original_max_position_embeddings", r->original_max_pos);
    cJSON_AddNumberToObject(o, "attention_factor", r->attn_factor);
    cJSON_AddNumberToObject(o, "rope_theta", r->base);
    cJSON_AddNumberToObject(o, "rotary_dim", r->rotary_dim);
    if (r->type == ROPE_TYPE_YARN || r->type == ROPE_TYPE_DYNAMIC_YARN) {
        cJSON_AddNumberToObject(o, "beta_fast", r->beta_fast);
        cJSON_AddNumberToObject(o, "beta_slow", r->beta_slow);
        cJSON_AddStringToObject(o, "yarn_variant", r->yarn_revised ? "revised" : "standard");
    }
    if (r->ramp_low >= 0 && r->ramp_high >= 0) {
        cJSON *ramp = cJSON_AddArrayToObject(o, "ramp");
        cJSON_AddItemToArray(ramp, cJSON_CreateNumber(r->ramp_low));
        cJSON_AddItemToArray(ramp, cJSON_CreateNumber(r->ramp_high));
    }
    cJSON_AddBoolToObject(o, "length_dependent", r->length_dependent != 0);
    cJSON_AddStringToObject(o, "rope_scaling_mode", mode == ENGINE_ROPE_PER_REQUEST ? "per-request" : "static");
    rope_json_extras(o, r);
    if (c) cJSON_AddNumberToObject(o, "max_position_embeddings", c->max_pos);
    return o;
}

/* The effective generation defaults and EOS ids, for /v1/models. */
static cJSON *gen_json(const struct server *s)
{
    const struct generation_config *g = &s->gen.g;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "source", s->gen.source);
    cJSON *d = cJSON_AddObjectToObject(o, "defaults");
    if (s->gen.sampling) {
        if (g->has_temperature) cJSON_AddNumberToObject(d, "temperature", g->temperature);
        if (g->has_top_p) cJSON_AddNumberToObject(d, "top_p", g->top_p);
        if (g->has_top_k) cJSON_AddNumberToObject(d, "top_k", g->top_k);
        if (g->has_min_p) cJSON_AddNumberToObject(d, "min_p", g->min_p);
        if (g->has_repetition_penalty) cJSON_AddNumberToObject(d, "repetition_penalty", g->repetition_penalty);
        if (g->has_max_new_tokens) cJSON_AddNumberToObject(d, "max_tokens", g->max_new_tokens);
    }
    const model_t *md = engine_model(s->eng);
    cJSON *eos = cJSON_AddArrayToObject(o, "eos_token_ids");
    if (md)
        for (int i = 0; i < model_get_config(md)->n_eos; i++)
            cJSON_AddItemToArray(eos, cJSON_CreateNumber(model_get_config(md)->eos_ids[i]));
    return o;
}

static enum MHD_Result handle_models(struct server *s, struct MHD_Connection *conn)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", s->model_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)time(NULL));
    cJSON_AddStringToObject(m, "owned_by", "ropeserve");
    cJSON_AddStringToObject(m, "root", s->model_dir ? s->model_dir : s->model_name);
    cJSON_AddNullToObject(m, "parent");
    cJSON_AddNumberToObject(m, "max_model_len", s->max_model_len);
    cJSON_AddStringToObject(m, "chat_template", chat_templates_describe(&s->ct));
    if (s->ct.n_named) {
        cJSON *names = cJSON_AddArrayToObject(m, "chat_templates");
        for (int i = 0; i < s->ct.n_named; i++) cJSON_AddItemToArray(names, cJSON_CreateString(s->ct.names[i]));
    }
    cJSON_AddItemToObject(m, "generation_config", gen_json(s));
    const model_t *md = engine_model(s->eng);
    const struct rope *r = md ? model_get_rope(md) : NULL;
    if (r) cJSON_AddItemToObject(m, "rope", rope_json(r, model_get_config(md), engine_get_rope_mode(s->eng)));
    cJSON_AddItemToArray(data, m);
    return respond_json(s, conn, 200, root);
}

static enum MHD_Result handle_tokenize(struct server *s, struct MHD_Connection *conn,
                                       struct req_ctx *rc)
{
    struct oai_request r;
    struct oai_error e;
    memset(&e, 0, sizeof e);
    if (oai_parse_tokenize(rc->body.p ? rc->body.p : "", rc->body.len, &r, &e))
        return respond_error(s, conn, &e, NULL);
    if (model_ok(s, &r, &e)) {
        oai_request_free(&r);
        return respond_error(s, conn, &e, NULL);
    }
    int strs = r.return_token_strs != 0;
    int32_t *ids = NULL;
    int n;
    char err[ERR_LEN];
    long long limit = (long long)s->max_model_len * PROMPT_BOUND_FACTOR;
    if (r.kind == OAI_CHAT) {
        n = chat_ids(s, &r, rc->body.p ? rc->body.p : "", rc->body.len, s->add_bos && r.add_special_tokens, limit,
                     &ids, &e);
    } else {
        const char *t = r.prompts[0].text;
        n = check_prompt_bound(s, t, strlen(t), limit, "prompt", &e) ? -1
            : tokenizer_encode(s->tok, t, strlen(t), s->add_bos && r.add_special_tokens, &ids, err);
        if (n < 0 && e.status == 0) oai_err(&e, 400, "prompt", NULL, "could not tokenize the prompt: %s", err);
        n = add_eos(s, r.add_special_tokens, &ids, n);
    }
    oai_request_free(&r);
    if (n < 0) return respond_error(s, conn, &e, NULL);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "count", n);
    cJSON_AddNumberToObject(o, "max_model_len", s->max_model_len);
    cJSON *a = cJSON_AddArrayToObject(o, "tokens");
    cJSON *ts = strs ? cJSON_AddArrayToObject(o, "token_strs") : cJSON_AddNullToObject(o, "token_strs");
    struct oai_render rdr = {.token_text = token_text_cb, .token_ctx = (void *)s->tok};
    char buf[512];
    for (int i = 0; i < n; i++) {
        cJSON_AddItemToArray(a, cJSON_CreateNumber(ids[i]));
        if (strs) cJSON_AddItemToArray(ts, cJSON_CreateString(oai_token_str(&rdr, ids[i], buf, sizeof buf)));
    }
    free(ids);
    return respond_json(s, conn, 200, o);
}

static enum MHD_Result handle_detokenize(struct server *s, struct MHD_Connection *conn,
                                         struct req_ctx *rc)
{
    struct oai_request r;
    struct oai_error e;
    if (oai_parse_detokenize(rc->body.p ? rc->body.p : "", rc->body.len, s->vocab_size, &r, &e))
        return respond_error(s, conn, &e, NULL);
    if (model_ok(s, &r, &e)) {
        oai_request_free(&r);
        return respond_error(s, conn, &e, NULL);
    }
    char *text = NULL, err[ERR_LEN];
    size_t len = 0;
    int rc2 = r.prompts[0].n_ids
                  ? tokenizer_decode(s->tok, r.prompts[0].ids, r.prompts[0].n_ids, &text, &len, err)
                  : 0;
    oai_request_free(&r);
    if (rc2 < 0) {
        oai_err(&e, 400, "tokens", NULL, "%s", err);
        return respond_error(s, conn, &e, NULL);
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "prompt", json_string_n(text ? text : "", text ? len : 0));
    free(text);
    return respond_json(s, conn, 200, o);
}

static enum MHD_Result handle_health(struct server *s, struct MHD_Connection *conn)
{
    cJSON *o = cJSON_CreateObject();
    int st = s->state;
    cJSON_AddStringToObject(o, "status", st == SERVER_READY     ? "ok"
                                         : st == SERVER_LOADING ? "loading"
                                                                : "draining");
    return respond_json(s, conn, st == SERVER_READY ? 200 : 503, o);
}

/* ---------------------------------------------------------------------------------------------
 * routing */

enum route_id { R_HEALTH, R_METRICS, R_MODELS, R_COMPLETIONS, R_CHAT, R_TOKENIZE, R_DETOKENIZE,
                R_VERSION };

struct route {
    const char *path;
    const char *method; /* GET routes also answer HEAD */
    enum route_id id;
    int open;           /* no API key needed: 1 always, 2 with --metrics-public */
};

static const struct route routes[] = {
    {"/health", "GET", R_HEALTH, 1},
    {"/v1/health", "GET", R_HEALTH, 1},
    {"/metrics", "GET", R_METRICS, 2},
    {"/version", "GET", R_VERSION, 0},
    {"/v1/models", "GET", R_MODELS, 0},
    {"/v1/completions", "POST", R_COMPLETIONS, 0},
    {"/v1/chat/completions", "POST", R_CHAT, 0},
    {"/tokenize", "POST", R_TOKENIZE, 0},
    {"/detokenize", "POST", R_DETOKENIZE, 0},
};

static const struct route *find_route(const char *url)
{
    size_t n = strlen(url);
    while (n > 1 && url[n - 1] == '/') n--; /* "/v1/models/" too */
    for (size_t i = 0; i < sizeof routes / sizeof *routes; i++)
        if (strlen(routes[i].path) == n && !memcmp(routes[i].path, url, n)) return &routes[i];
    return NULL;
}

static enum MHD_Result preflight(struct server *s, struct MHD_Connection *conn)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    add_cors(s, conn, r);
    MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    const char *rh = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 "Access-Control-Request-Headers");
    MHD_add_response_header(r, "Access-Control-Allow-Headers",
                            rh ? rh : "Authorization, Content-Type");
    MHD_add_response_header(r, "Access-Control-Max-Age", "600");
    MHD_add_response_header(r, "Allow", "GET, POST, OPTIONS");
    enum MHD_Result ret = MHD_queue_response(conn, 204, r);
    MHD_destroy_response(r);
    metrics_count_http(s->metrics, 204);
    return ret;
}

static enum MHD_Result dispatch(struct server *s, struct MHD_Connection *conn, const char *url,
                                const char *method, struct req_ctx *rc)
{
    struct oai_error e;
    if (!strcmp(method, "OPTIONS")) return preflight(s, conn);
    const struct route *rt = find_route(url);
    if (!rt) {
        oai_err(&e, 404, NULL, "not_found", "no route %.100s %.200s", method, url);
        return respond_error(s, conn, &e, NULL);
    }
    int open = rt->open == 1 || (rt->open == 2 && s->p.metrics_public);
    if (!open && !authorized(s, conn)) {
        oai_err(&e, 401, NULL, "invalid_api_key", "Incorrect or missing API key (send "
                "'Authorization: Bearer KEY').");
        return respond_error(s, conn, &e, NULL);
    }
    int is_get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    if (strcmp(rt->method, method) != 0 && !(is_get && !strcmp(rt->method, "GET"))) {
        oai_err(&e, 405, NULL, "method_not_allowed", "%s does not accept %.20s; use %s", rt->path,
                method, rt->method);
        return respond_error(s, conn, &e, !strcmp(rt->method, "GET") ? "GET, HEAD" : rt->method);
    }
    if (rc->too_big) {
        oai_err(&e, 413, NULL, "payload_too_large", "the request body is over --max-body-mb %g MB",
                s->p.max_body_mb);
        return respond_error(s, conn, &e, NULL);
    }
    if (rt->id == R_HEALTH) return handle_health(s, conn);
    if (rt->id == R_VERSION) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "version", ROPESERVE_VERSION);
        return respond_json(s, conn, 200, o);
    }
    int st = s->state;
    if (st == SERVER_LOADING || !s->eng) {
        oai_err(&e, 503, NULL, "loading", "the model is still loading");
        e.retry_after_s = 5;
        return respond_error(s, conn, &e, NULL);
    }
    if (rt->id == R_METRICS) {
        char *text = metrics_render(s->metrics, s->eng, s->model_name);
        return respond(s, conn, 200, text, "text/plain; version=0.0.4; charset=utf-8");
    }
    if (st != SERVER_READY && (rt->id == R_COMPLETIONS || rt->id == R_CHAT)) {
        oai_err(&e, 503, NULL, "draining", "the server is shutting down");
        e.retry_after_s = 5;
        return respond_error(s, conn, &e, NULL);
    }
    switch (rt->id) {
    case R_MODELS: return handle_models(s, conn);
    case R_COMPLETIONS: return handle_generate(s, conn, OAI_COMPLETION, rc);
    case R_CHAT: return handle_generate(s, conn, OAI_CHAT, rc);
    case R_TOKENIZE: return handle_tokenize(s, conn, rc);
    case R_DETOKENIZE: return handle_detokenize(s, conn, rc);
    default: break;
    }
    oai_err(&e, 404, NULL, "not_found", "no route %.200s", url);
    return respond_error(s, conn, &e, NULL);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    struct server *s = cls;
    struct req_ctx *rc = *con_cls;
    size_t limit = (size_t)(s->p.max_body_mb * 1024.0 * 1024.0);
    if (!rc) {
        rc = xcalloc(1, sizeof *rc);
        *con_cls = rc;
        pthread_mutex_lock(&s->mu);
        s->in_flight++;
        pthread_mutex_unlock(&s->mu);
        const char *bad = framing_problem(conn);
        if (bad) {
            struct oai_error e;
            oai_err(&e, 400, NULL, "bad_request", "ambiguous request framing: %s", bad);
            rc->responded = 1;
            conn_set_reading(s, conn, 0);
            return respond_error_ex(s, conn, &e, NULL, 1);
        }
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > limit) {
            /* refuse before reading (and before "100 Continue"); MHD closes the connection */
            struct oai_error e;
            oai_err(&e, 413, NULL, "payload_too_large",
                    "the request body (%.20s bytes) is over --max-body-mb %g MB", cl,
                    s->p.max_body_mb);
            rc->responded = 1;
            conn_set_reading(s, conn, 0);
            return respond_error_ex(s, conn, &e, NULL, 1);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (!rc->responded && !rc->too_big) {
            if (rc->body.len + *upload_size > limit) {
                rc->too_big = 1;
                sb_free(&rc->body);
            } else {
                sb_append(&rc->body, upload, *upload_size);
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (rc->responded) return MHD_YES;
    rc->responded = 1;
    conn_set_reading(s, conn, 0); /* the request is in: no read deadline while it runs */
    return dispatch(s, conn, url, method, rc);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct server *s = cls;
    struct req_ctx *rc = *con_cls;
    conn_set_reading(s, conn, 1); /* the next request's deadline starts now */
    if (!rc) return;
    sb_free(&rc->body);
    free(rc);
    *con_cls = NULL;
    pthread_mutex_lock(&s->mu);
    s->in_flight--;
    if (s->in_flight == 0) pthread_cond_broadcast(&s->idle_cv);
    pthread_mutex_unlock(&s->mu);
}

/* ---------------------------------------------------------------------------------------------
 * lifecycle */

static char *read_key_file(const char *path, char *err)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        set_err(err, -1, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char line[1024];
    if (!fgets(line, sizeof line, f)) line[0] = 0;
    fclose(f);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ')) line[--n] = 0;
    if (!n) {
        set_err(err, -1, "%s: the API key file is empty", path);
        return NULL;
    }
    return xstrdup(line);
}

int server_start(server_t **out, const struct server_params *p, char *err)
{
    *out = NULL;
    struct server *s = xcalloc(1, sizeof *s);
    s->p = *p;
    if (!s->p.host) s->p.host = "127.0.0.1";
    if (s->p.max_body_mb <= 0) s->p.max_body_mb = 8;
    if (s->p.max_n <= 0) s->p.max_n = 16;
    if (s->p.max_connections <= 0) s->p.max_connections = 1024;
    if (s->p.max_connections_per_ip < 0) s->p.max_connections_per_ip = 0;
    s->state = SERVER_LOADING;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->idle_cv, NULL);
    pthread_mutex_init(&s->conn_mu, NULL);
    pthread_cond_init(&s->conn_cv, NULL);
    s->metrics = metrics_new();
    s->ct.use_builtin = 1;
    s->ct.selected = -1;
    if (p->api_key && *p->api_key) s->api_key = xstrdup(p->api_key);
    else if (p->api_key_file && !(s->api_key = read_key_file(p->api_key_file, err))) goto fail;
    if (p->tool_call_parser && (s->tool_parser = tool_parser_from_name(p->tool_call_parser)) < 0) {
        set_err(err, -1, "--tool-call-parser: expected hermes or llama3_json, got '%s'", p->tool_call_parser);
        goto fail;
    }
    if (p->enable_auto_tool_choice && !p->tool_call_parser) { /* vLLM's start-up check */
        set_err(err, -1, "--enable-auto-tool-choice requires --tool-call-parser (hermes or llama3_json)");
        goto fail;
    }
    if (p->generation_config && !*p->generation_config) {
        set_err(err, -1, "--generation-config: expected auto, vllm or a directory");
        goto fail;
    }
    {
        FILE *f = fopen("/dev/urandom", "rb");
        unsigned v = (unsigned)time(NULL) ^ (unsigned)getpid();
        if (f) {
            if (fread(&v, sizeof v, 1, f) != 1) v ^= 0x9e3779b9u;
            fclose(f);
        }
        snprintf(s->id_prefix, sizeof s->id_prefix, "%08x", v);
    }

    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char port[16];
    snprintf(port, sizeof port, "%d", p->port);
    int gai = getaddrinfo(s->p.host, port, &hints, &ai);
    if (gai != 0) {
        set_err(err, -1, "--host %s: %s", s->p.host, gai_strerror(gai));
        goto fail;
    }
    /* libmicrohttpd gets its connections from the door (door.c), which answers the request
     * lines it would drop without a word */
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_POLL | MHD_USE_ERROR_LOG | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC;
    s->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s,
                                 MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, s, /* first: all its lines */
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                                 MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
                                 MHD_OPTION_URI_LOG_CALLBACK, on_uri, s,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->p.max_connections,
                                 MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)s->p.max_connections_per_ip,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_IDLE_TIMEOUT_S,
                                 MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
                                 MHD_OPTION_END);
    if (!s->daemon) {
        freeaddrinfo(ai);
        set_err(err, -1, "cannot start libmicrohttpd (threads or memory?)");
        goto fail;
    }
    struct door_params dp = {
        .max_pending = s->p.max_connections,
        .max_pending_per_ip = s->p.max_connections_per_ip,
        .idle_timeout_s = s->p.idle_timeout_s,
        .handoff = door_handoff,
        .refused = door_refused,
        .limited = door_limited,
        .cls = s,
    };
    char derr[160];
    int drc = door_open(&s->door, ai->ai_addr, (unsigned)ai->ai_addrlen, &dp, derr);
    freeaddrinfo(ai);
    if (drc) {
        set_err(err, -1, "cannot listen on %s:%d: %s", s->p.host, p->port, derr);
        goto fail;
    }
    s->port = door_port(s->door);
    if (pthread_create(&s->watch, NULL, conn_watch, s) != 0) {
        set_err(err, -1, "cannot start the connection watch thread");
        goto fail;
    }
    s->watch_started = 1;
    *out = s;
    return 0;
fail:
    server_stop(s);
    return -1;
}

int server_load_model_config(server_t *s, const char *model_dir, char *err)
{
    struct chat_templates ct;
    if (chat_templates_load(&ct, model_dir, s->p.chat_template, err)) return -1;
    chat_templates_free(&s->ct);
    s->ct = ct;
    /* --generation-config: auto (the model's), vllm (none: vLLM's neutral defaults), or a
     * directory holding a generation_config.json (its max_new_tokens also caps requests) */
    if (gen_defaults_load(&s->gen, model_dir, s->p.generation_config, err)) return -1;
    s->config_loaded = 1;
    return 0;
}

int server_set_engine(server_t *s, engine_t *e, const tokenizer_t *tok, const char *model_dir,
                      char *err)
{
    if (!s || !e || !tok) return set_err(err, -1, "server_set_engine: engine and tokenizer needed");
    if (!s->config_loaded && server_load_model_config(s, model_dir, err)) return -1;
    s->tok = tok;
    s->max_model_len = engine_max_model_len(e);
    int tv = tokenizer_vocab_size(tok);
    const model_t *m = engine_model(e);
    int mv = m ? model_get_config(m)->vocab_size : tv;
    s->vocab_size = (mv > 0 && mv < tv) ? mv : tv;
    s->add_bos = tokenizer_bos_id(tok) >= 0 && s->ct.add_bos != 0;
    s->add_eos = tokenizer_eos_id(tok) >= 0 && s->ct.add_eos;
    chat_templates_set_tokenizer(&s->ct, tok);
    prompt_bound_init(s);
    if (model_dir) {
        free(s->model_dir);
        s->model_dir = xstrdup(model_dir);
    }
    free(s->model_name);
    if (s->p.served_model_name && *s->p.served_model_name) {
        s->model_name = xstrdup(s->p.served_model_name);
    } else if (model_dir) {
        char *d = xstrdup(model_dir);
        size_t n = strlen(d);
        while (n > 1 && d[n - 1] == '/') d[--n] = 0;
        const char *slash = strrchr(d, '/');
        s->model_name = xstrdup(slash ? slash + 1 : d);
        free(d);
    } else {
        s->model_name = xstrdup("ropeserve");
    }
    LOG_I("serving '%s': max_model_len %d, vocab %d, chat template %s, BOS %s%s%s", s->model_name,
          s->max_model_len, s->vocab_size, chat_templates_describe(&s->ct), s->add_bos ? "on" : "off",
          s->add_eos ? ", EOS appended to text prompts (add_eos_token)" : "",
          s->api_key ? ", API key required" : "");
    for (int i = 0; i < s->ct.n_named; i++)
        if (!s->ct.named[i]) LOG_W("%s (requests that select it get a 400)", s->ct.named_err[i]);
    struct strbuf b = {0};
    sb_append(&b, "", 0);
    gen_defaults_describe(&s->gen, &b);
    sb_puts(&b, "; EOS ids");
    for (int i = 0; m && i < model_get_config(m)->n_eos; i++) sb_printf(&b, " %d", model_get_config(m)->eos_ids[i]);
    LOG_I("generation defaults from %s:%s", s->gen.source, b.p);
    sb_free(&b);
    __atomic_store_n(&s->eng, e, __ATOMIC_SEQ_CST);
    __atomic_store_n(&s->state, SERVER_READY, __ATOMIC_SEQ_CST);
    return 0;
}

void server_drain(server_t *s)
{
    if (!s) return;
    if (s->state == SERVER_READY || s->state == SERVER_LOADING)
        __atomic_store_n(&s->state, SERVER_DRAINING, __ATOMIC_SEQ_CST);
    if (s->eng) engine_drain(s->eng);
    LOG_I("draining: /health 503, new requests refused, %d in flight", s->in_flight);
}

int server_wait_idle(server_t *s, double timeout_s)
{
    if (!s) return 1;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double t = (double)ts.tv_sec + ts.tv_nsec * 1e-9 + (timeout_s > 0 ? timeout_s : 0);
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    pthread_mutex_lock(&s->mu);
    while (s->in_flight > 0) {
        if (timeout_s <= 0 || pthread_cond_timedwait(&s->idle_cv, &s->mu, &ts) == ETIMEDOUT) break;
    }
    int idle = s->in_flight == 0;
    pthread_mutex_unlock(&s->mu);
    return idle;
}

void server_stop(server_t *s)
{
    if (!s) return;
    __atomic_store_n(&s->state, SERVER_STOPPING, __ATOMIC_SEQ_CST);
    /* the running requests see STOPPING within 100 ms and end properly (an error response; a
     * stream's abort chunk and [DONE]) before the daemon closes their sockets */
    if (s->daemon && !server_wait_idle(s, 5))
        LOG_W("%d request(s) still open after 5 s: closing their connections", s->in_flight);
    if (s->watch_started) {
        pthread_mutex_lock(&s->conn_mu);
        s->watch_stop = 1;
        pthread_cond_broadcast(&s->conn_cv);
        pthread_mutex_unlock(&s->conn_mu);
        pthread_join(s->watch, NULL);
    }
    door_close(s->door); /* no new connection for the daemon from here */
    if (s->daemon) MHD_stop_daemon(s->daemon); /* joins the connection threads */
    pthread_cond_destroy(&s->conn_cv);
    pthread_mutex_destroy(&s->conn_mu);
    metrics_free(s->metrics);
    pthread_cond_destroy(&s->idle_cv);
    pthread_mutex_destroy(&s->mu);
    free(s->api_key);
    free(s->model_name);
    free(s->model_dir);
    chat_templates_free(&s->ct);
    free(s);
}
