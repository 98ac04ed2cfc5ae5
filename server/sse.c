/* sse.c - a job (one HTTP generation request = n x prompts choices, one engine stream each) and
 * its delivery as Server-Sent Events.
 *
 * Events -> text: every generated id goes through an incremental detokenizer (tok_stream), which
 * releases whole UTF-8 characters only, so no chunk and no JSON string ever holds half a
 * character; a dangling sequence at the end becomes U+FFFD (tok_stream_finish). Stop strings are
 * matched here, on the detokenized text: the text is cut before the match, the engine request is
 * cancelled and finish_reason is "stop" with stop_reason = the string. While streaming, the tail
 * of the text that could still grow into a stop string is held back, so a client never sees the
 * beginning of a stop string that later matches.
 *
 * SSE: libmicrohttpd runs one thread per connection (http.c), so the content-reader callback
 * may block; it waits for engine events in slices of 100 ms, checks the socket for a closed peer
 * (POLLRDHUP) between slices and cancels the engine request at once when the client is gone, and
 * writes ": keep-alive" when nothing was sent for SSE_KEEPALIVE_S seconds (long prefills).
 *
 *   state: streaming --(all choices done)--> tail queued (usage chunk, [DONE]) --> end
 *
 * Rejected alternative: suspend/resume with an eventfd per stream. It saves threads but makes
 * every path asynchronous; one thread per connection is enough for the connection counts an
 * inference server sees and keeps the lifecycle linear. */
#include "server_internal.h"

#include <math.h>
#include <microhttpd.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int token_text_cb(void *ctx, int32_t id, char *buf, int cap)
{
    const tokenizer_t *tok = ctx;
    if (!tok) return 0;
    int n = tokenizer_id_to_bytes(tok, id, buf, cap);
    if (n <= 0 && tokenizer_is_special(tok, id)) {
        const char *piece = tokenizer_id_to_piece(tok, id);
        if (piece) {
            n = (int)strlen(piece);
            if (n > cap) n = cap;
            memcpy(buf, piece, (size_t)n);
        }
    }
    return n < 0 ? 0 : n;
}

/* ---------------------------------------------------------------------------------------------
 * submitting */

static int map_submit_error(int rc, const char *msg, struct oai_error *e, int n_prompt, int mml)
{
    switch (rc) {
    case ENGINE_E_QUEUE_FULL:
        oai_err(e, 429, NULL, "queue_full", "the server is busy (waiting queue full); retry later");
        e->retry_after_s = 1;
        return -1;
    case ENGINE_E_DRAINING:
        oai_err(e, 503, NULL, "draining", "the server is shutting down");
        e->retry_after_s = 5;
        return -1;
    case ENGINE_E_TOO_LONG:
        oai_err(e, 400, "prompt", "context_length_exceeded", "%s", msg);
        e->n_prompt_tokens = n_prompt;
        e->max_model_len = mml;
        return -1;
    case ENGINE_E_INVALID:
        return oai_err(e, 400, NULL, NULL, "%s", msg);
    default:
        return oai_err(e, 500, NULL, NULL, "the engine failed: %s", msg);
    }
}

/* text offset (code points) of each prompt token, as an incremental decode places them */
static int *prompt_offsets(const tokenizer_t *tok, const int32_t *ids, int n)
{
    int *off = xmalloc(sizeof(int) * (size_t)(n + 1));
    tok_stream_t *ds = tok_stream_new(tok, NULL, 0);
    int cp = 0;
    for (int i = 0; i < n; i++) {
        off[i] = cp;
        const char *s;
        int len = tok_stream_push(ds, ids[i], &s);
        if (len > 0) cp += utf8_cp_count(s, (size_t)len);
    }
    off[n] = cp;
    tok_stream_free(ds);
    return off;
}

int job_submit(struct job *j, struct oai_error *e)
{
    struct server *s = j->srv;
    struct oai_request *r = &j->req;
    if (r->priority != 0 && engine_get_sched_policy(s->eng) != ENGINE_SCHED_PRIORITY)
        return oai_err(e, 400, "priority", "unsupported_parameter", "'priority' %lld: this server schedules "
                       "first come, first served; start it with --scheduling-policy priority",
                       (long long)r->priority);
    j->n_ch = r->n_prompts * r->n;
    j->ch = xcalloc((size_t)j->n_ch, sizeof *j->ch);
    for (int i = 0; i < j->n_ch; i++) j->ch[i].stop_token = -1;
    for (int i = 0; i < j->n_ch; i++) {
        struct choice *c = &j->ch[i];
        const struct oai_prompt *p = &r->prompts[i / r->n];
        c->index = i;
        c->prompt_idx = i / r->n;
        struct engine_request er;
        memset(&er, 0, sizeof er);
        er.prompt = p->ids;
        er.n_prompt = p->n_ids;
        er.sp = r->sp;
        er.string_set = r->string_set;
        er.string_shift = r->string_shift;
        er.string_local = r->string_local;
        er.priority = r->priority;
        er.cache_salt = r->cache_salt;
        er.report_progress = r->stream && r->include_progress;
        if (r->sp.has_seed && r->n > 1) er.sp.seed = r->sp.seed + (uint64_t)(i % r->n);
        snprintf(er.id, sizeof er.id, "%s-%d", j->id, i);
        char err[ERR_LEN] = "";
        int rc = engine_submit(s->eng, &er, &c->st, err);
        if (rc != ENGINE_OK) {
            c->st = NULL;
            for (int k = 0; k < i; k++) {
                engine_stream_free(j->ch[k].st);
                j->ch[k].st = NULL;
                j->ch[k].done = 1;
            }
            for (int k = i; k < j->n_ch; k++) j->ch[k].done = 1;
            j->logged = 1; /* nothing ran */
            return map_submit_error(rc, err, e, p->n_ids, s->max_model_len);
        }
        c->ds = tok_stream_new(s->tok, p->ids, p->n_ids);
        sb_append(&c->text, "", 0);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * events */

/* Search the text for a stop string that ends in what old_len..len added (vLLM looks back
 * len(stop) - 1 bytes: a match that ended before was already seen, or fell in min_tokens). */
static void check_stop(struct job *j, struct choice *c, size_t old_len)
{
    const struct oai_request *r = &j->req;
    if (!r->n_stop || c->done) return;
    const char *best = NULL;
    int best_i = -1;
    for (int i = 0; i < r->n_stop; i++) {
        size_t sl = strlen(r->stop[i]);
        size_t from = old_len > sl - 1 ? old_len - (sl - 1) : 0;
        const char *q = memmem(c->text.p + from, c->text.len - from, r->stop[i], sl);
        if (q && (!best || q < best)) {
            best = q;
            best_i = i;
        }
    }
    if (!best) return;
    size_t cut = (size_t)(best - c->text.p) + (r->include_stop_str ? strlen(r->stop[best_i]) : 0);
    c->text.len = cut;
    c->text.p[cut] = 0;
    /* drop the records of tokens whose text starts after the cut */
    while (c->n_lp > 0 && c->lp_byte[c->n_lp - 1] >= cut && c->n_lp > c->lp_sent) c->n_lp--;
    c->finish = "stop";
    c->stop_reason = xstrdup(r->stop[best_i]);
    c->done = 1;
    engine_cancel(c->st);
}

static void fill_lp(struct oai_lp *l, const struct engine_event *ev)
{
    l->token = ev->token;
    l->logprob = ev->logprob;
    l->rank = ev->rank;
    l->n_top = ev->n_top > ENGINE_MAX_LOGPROBS ? ENGINE_MAX_LOGPROBS : ev->n_top;
    memcpy(l->top_ids, ev->top_ids, sizeof(int32_t) * (size_t)l->n_top);
    memcpy(l->top_lp, ev->top_logprobs, sizeof(float) * (size_t)l->n_top);
    l->text_offset = 0;
}

static const char *finish_name(enum finish_reason r)
{
    switch (r) {
    case FINISH_STOP: return "stop";
    case FINISH_LENGTH: return "length";
    case FINISH_ERROR: return "error";
    default: return "abort";
    }
}

/* "<tool_call>" / "</tool_call>" when id is a special token with that text (Hermes 2 Pro marks
 * them special; Qwen does not), else NULL. Special tokens are left out of the text otherwise;
 * vLLM's hermes parser turns skip_special_tokens off so that these reach it. */
static const char *hermes_tag(const tokenizer_t *tok, int32_t id)
{
    if (!tokenizer_is_special(tok, id)) return NULL;
    const char *piece = tokenizer_id_to_piece(tok, id);
    if (piece && (!strcmp(piece, "<tool_call>") || !strcmp(piece, "</tool_call>"))) return piece;
    return NULL;
}

static void sse_data(struct job *j, char *json);

static void on_event(struct job *j, struct choice *c, const struct engine_event *ev)
{
    const struct oai_request *r = &j->req;
    const struct oai_prompt *p = &r->prompts[c->prompt_idx];
    if (ev->type == ENGINE_EV_PROGRESS) { /* opt-in; each prefill step's event is sent, none merged */
        if (!c->finish_sent)
            sse_data(j, oai_render_progress_chunk(&j->rc, c->index, ev->n_processed, ev->n_total, ev->n_cached,
                                                  ev->elapsed_s * 1000.0));
        return;
    }
    if (ev->type == ENGINE_EV_PROMPT_TOKEN) {
        if (!r->sp.prompt_logprobs) return;
        if (!c->plp) c->plp = xcalloc((size_t)p->n_ids + 1, sizeof *c->plp);
        /* an engine that skips the first prompt token (it has no logprob) still lines up */
        if (c->n_plp == 0 && p->n_ids > 1 && ev->token != p->ids[0] && ev->token == p->ids[1]) {
            c->plp[0].token = p->ids[0];
            c->plp[0].logprob = NAN;
            c->n_plp = 1;
        }
        if (c->n_plp < p->n_ids) fill_lp(&c->plp[c->n_plp++], ev);
        return;
    }
    if (ev->type == ENGINE_EV_TOKEN) {
        if (c->done) return; /* after a stop string: the cancel is on its way */
        c->n_gen++;
        if (c->t_first == 0) c->t_first = now_s();
        size_t old = c->text.len;
        if (r->logprobs >= 0) {
            if (c->n_lp == c->cap_lp) {
                c->cap_lp = c->cap_lp ? c->cap_lp * 2 : 32;
                c->lp = xrealloc(c->lp, sizeof *c->lp * (size_t)c->cap_lp);
                c->lp_byte = xrealloc(c->lp_byte, sizeof *c->lp_byte * (size_t)c->cap_lp);
            }
            fill_lp(&c->lp[c->n_lp], ev);
            c->lp_byte[c->n_lp] = old;
            c->n_lp++;
        }
        /* the token that stops (EOS, a stop id) leaves no text, unless asked (vLLM) */
        if (ev->stop && !r->include_stop_str) return;
        const char *out;
        int len;
        if (j->tool_parser == TOOL_PARSER_HERMES && (out = hermes_tag(j->srv->tok, ev->token))) {
            len = (int)strlen(out); /* vLLM decodes with skip_special_tokens=False for the parser */
        } else {
            len = tok_stream_push(c->ds, ev->token, &out);
        }
        if (len > 0) sb_append(&c->text, out, (size_t)len);
        if (c->n_gen > r->sp.min_tokens) check_stop(j, c, old); /* min_tokens: no stop string yet */
        return;
    }
    /* DONE */
    if (c->done) return;
    const char *out;
    size_t old = c->text.len;
    int len = tok_stream_finish(c->ds, &out);
    if (len > 0) sb_append(&c->text, out, (size_t)len);
    if (c->n_gen > r->sp.min_tokens) check_stop(j, c, old);
    if (c->done) return;
    c->done = 1;
    c->finish = finish_name(ev->reason);
    if (ev->reason == FINISH_STOP) c->stop_token = ev->stop_token;
    if (ev->reason == FINISH_ERROR) snprintf(c->err, sizeof c->err, "%s", ev->err);
}

int job_step(struct job *j, int timeout_ms)
{
    struct engine_event ev;
    int got = 0, open = 0;
    struct choice *first = NULL;
    for (int i = 0; i < j->n_ch; i++) {
        struct choice *c = &j->ch[i];
        if (c->done) continue;
        for (int k = 0; k < 256 && !c->done && engine_stream_next(c->st, &ev, 0) == 1; k++) {
            on_event(j, c, &ev);
            got = 1;
        }
        if (!c->done) {
            open++;
            if (!first) first = c;
        }
    }
    if (!open) return 1;
    if (got || timeout_ms == 0) return 0;
    /* nothing ready: block on one stream (several open: a short slice, then look at all) */
    int wait = open == 1 ? timeout_ms : (timeout_ms < 5 ? timeout_ms : 5);
    if (engine_stream_next(first->st, &ev, wait) == 1) on_event(j, first, &ev);
    for (int i = 0; i < j->n_ch; i++)
        if (!j->ch[i].done) return 0;
    return 1;
}

void job_cancel(struct job *j, const char *finish)
{
    for (int i = 0; i < j->n_ch; i++) {
        struct choice *c = &j->ch[i];
        if (c->done) continue;
        if (c->st) engine_cancel(c->st);
        c->done = 1;
        c->finish = finish;
    }
}

int job_client_gone(const struct job *j)
{
    if (j->sock < 0) return 0;
    struct pollfd pfd = {.fd = j->sock, .events = POLLRDHUP};
    if (poll(&pfd, 1, 0) <= 0) return 0;
    return (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

/* ---------------------------------------------------------------------------------------------
 * tool calls (tools.c does the parsing) */

/* Parse a finished choice's answer into tool calls, once (vLLM: tool_choice "auto" with
 * --enable-auto-tool-choice). parallel_tool_calls false keeps the first call (OpenAI: at most
 * one). A stream releases what tool_stream_safe() allows; when the parse would take some of
 * that back (a llama3_json answer that does not open with '{', which vLLM's streaming parser
 * does not look into), the answer stays content, as vLLM streams it - decided on the whole
 * text, so the outcome never depends on how the tokens were batched into chunks. */
static void choice_tools(const struct job *j, struct choice *c, size_t sent)
{
    if (c->tools_parsed || !j->tool_parser) return;
    c->tools_parsed = 1;
    tool_extract(j->tool_parser, c->text.p, c->text.len, &c->tools);
    struct tool_result *t = &c->tools;
    if (t->called && !j->req.parallel_tool_calls)
        while (t->n_calls > 1) {
            t->n_calls--;
            free(t->calls[t->n_calls].name);
            free(t->calls[t->n_calls].arguments);
        }
    size_t released = j->req.stream ? tool_stream_safe(j->tool_parser, c->text.p, c->text.len) : 0;
    if (released < sent) released = sent;
    if (t->called && (t->content_null ? released > 0 : released > t->content_len)) {
        tool_result_free(t);
        t->content_len = c->text.len;
    }
}

/* ---------------------------------------------------------------------------------------------
 * rendering a finished job */

static int echo_text(const struct job *j, const struct oai_prompt *p, char **out)
{
    if (p->text) {
        *out = xstrdup(p->text);
        return (int)strlen(p->text);
    }
    char err[ERR_LEN];
    size_t n = 0;
    if (tokenizer_decode(j->srv->tok, p->ids, p->n_ids, out, &n, err) < 0) {
        *out = xstrdup("");
        return 0;
    }
    return (int)n;
}

/* The choice's logprob records with text offsets: prompt ones (echo) then generated ones. */
static struct oai_lp *choice_records(const struct job *j, const struct choice *c, int echo_cp,
                                     int *n_out, int from_lp, int upto_lp)
{
    const struct oai_prompt *p = &j->req.prompts[c->prompt_idx];
    int n_prompt = (from_lp == 0 && c->plp) ? c->n_plp : 0;
    int n = n_prompt + (upto_lp - from_lp);
    struct oai_lp *v = xcalloc((size_t)n + 1, sizeof *v);
    if (n_prompt) {
        int *off = prompt_offsets(j->srv->tok, p->ids, p->n_ids);
        for (int i = 0; i < n_prompt; i++) {
            v[i] = c->plp[i];
            v[i].text_offset = off[i] < echo_cp ? off[i] : echo_cp;
        }
        free(off);
    }
    for (int i = from_lp; i < upto_lp; i++) {
        struct oai_lp *l = &v[n_prompt + i - from_lp];
        *l = c->lp[i];
        size_t b = c->lp_byte[i] < c->text.len ? c->lp_byte[i] : c->text.len;
        l->text_offset = echo_cp + utf8_cp_count(c->text.p, b);
    }
    *n_out = n;
    return v;
}

static void job_usage(const struct job *j, struct oai_usage *u)
{
    u->prompt_tokens = 0;
    u->completion_tokens = 0;
    for (int i = 0; i < j->req.n_prompts; i++) u->prompt_tokens += j->req.prompts[i].n_ids;
    for (int i = 0; i < j->n_ch; i++) u->completion_tokens += j->ch[i].n_gen;
}

char *job_render_response(struct job *j)
{
    struct oai_piece *pc = xcalloc((size_t)j->n_ch, sizeof *pc);
    char **texts = xcalloc((size_t)j->n_ch, sizeof *texts);
    struct oai_lp **recs = xcalloc((size_t)j->n_ch, sizeof *recs);
    for (int i = 0; i < j->n_ch; i++) {
        struct choice *c = &j->ch[i];
        struct strbuf t = {0};
        sb_append(&t, "", 0);
        int echo_cp = 0;
        char *echo = NULL;
        if (j->req.echo) {
            int n = echo_text(j, &j->req.prompts[c->prompt_idx], &echo);
            sb_append(&t, echo, (size_t)n);
            echo_cp = utf8_cp_count(echo, (size_t)n);
        }
        sb_append(&t, c->text.p, c->text.len);
        int n_rec = 0;
        if (j->req.logprobs >= 0) recs[i] = choice_records(j, c, echo_cp, &n_rec, 0, c->n_lp);
        free(echo);
        texts[i] = t.p;
        pc[i].index = c->index;
        pc[i].text = t.p;
        pc[i].len = t.len;
        pc[i].lp = recs[i];
        pc[i].n_lp = n_rec;
        pc[i].finish_reason = c->finish ? c->finish : "abort";
        pc[i].stop_reason = c->stop_reason;
        pc[i].stop_token = c->stop_token >= 0 ? &c->stop_token : NULL;
        pc[i].plp = c->plp;
        pc[i].n_plp = c->n_plp;
        choice_tools(j, c, 0);
        if (c->tools.called) { /* vLLM: finish_reason "tool_calls" when the parser found calls */
            pc[i].len = c->tools.content_len;
            pc[i].content_null = c->tools.content_null;
            pc[i].tool_calls = c->tools.calls;
            pc[i].n_tool_calls = c->tools.n_calls;
            pc[i].finish_reason = "tool_calls";
        }
    }
    struct oai_usage u;
    job_usage(j, &u);
    char *body = oai_render_response(&j->rc, pc, j->n_ch, &u);
    for (int i = 0; i < j->n_ch; i++) {
        free(texts[i]);
        free(recs[i]);
    }
    free(texts);
    free(recs);
    free(pc);
    return body;
}

void job_finish_log(struct job *j)
{
    if (j->logged) return;
    j->logged = 1;
    double t = now_s(), e2e = t - j->t_start, ttft = -1;
    int n_prompt = 0, n_gen = 0;
    char reasons[128] = "";
    size_t o = 0;
    for (int i = 0; i < j->req.n_prompts; i++) n_prompt += j->req.prompts[i].n_ids;
    for (int i = 0; i < j->n_ch; i++) {
        struct choice *c = &j->ch[i];
        const char *f = c->finish ? c->finish : "abort";
        double ct = c->t_first > 0 ? c->t_first - j->t_start : -1;
        if (ct >= 0 && (ttft < 0 || ct < ttft)) ttft = ct;
        n_gen += c->n_gen;
        metrics_observe(j->srv->metrics, f, j->req.prompts[c->prompt_idx].n_ids, c->n_gen, ct, e2e);
        if (o < sizeof reasons - 16)
            o += (size_t)snprintf(reasons + o, sizeof reasons - o, "%s%s", i ? "," : "", f);
        if (c->err[0]) LOG_W("%s-%d: engine error: %s", j->id, i, c->err);
    }
    LOG_I("%s: %d, prompt %d tok, generated %d tok, ttft %.3f s, total %.3f s, finish %s%s", j->id,
          j->status ? j->status : 200, n_prompt, n_gen, ttft < 0 ? 0.0 : ttft, e2e, reasons,
          j->req.stream ? " (stream)" : "");
}

void job_free(struct job *j)
{
    if (!j) return;
    for (int i = 0; i < j->n_ch; i++) {
        struct choice *c = &j->ch[i];
        if (c->st) engine_stream_free(c->st);
        tok_stream_free(c->ds);
        sb_free(&c->text);
        free(c->lp);
        free(c->lp_byte);
        free(c->plp);
        free(c->stop_reason);
        tool_result_free(&c->tools);
    }
    free(j->ch);
    sb_free(&j->out);
    oai_request_free(&j->req);
    free(j);
}

/* ---------------------------------------------------------------------------------------------
 * SSE */

/* Bytes at the end of text that could be the start of a stop string: held back. */
static size_t holdback(const struct job *j, const struct choice *c)
{
    const struct oai_request *r = &j->req;
    size_t best = 0;
    for (int i = 0; i < r->n_stop; i++) {
        size_t sl = strlen(r->stop[i]);
        for (size_t k = sl - 1; k > best; k--) {
            if (k <= c->text.len && !memcmp(c->text.p + c->text.len - k, r->stop[i], k)) {
                best = k;
                break;
            }
        }
    }
    return best;
}

static void sse_data(struct job *j, char *json)
{
    sb_puts(&j->out, "data: ");
    sb_puts(&j->out, json);
    sb_puts(&j->out, "\n\n");
    free(json);
}

static void choice_usage(const struct job *j, const struct choice *c, struct oai_usage *u)
{
    u->prompt_tokens = j->req.prompts[c->prompt_idx].n_ids;
    u->completion_tokens = c->n_gen;
}

/* Append chunks for what each choice has that the client has not seen yet. */
static void sse_emit(struct job *j)
{
    const struct oai_request *r = &j->req;
    for (int i = 0; i < j->n_ch; i++) {
        struct choice *c = &j->ch[i];
        struct oai_piece p;
        memset(&p, 0, sizeof p);
        p.index = c->index;
        struct oai_usage u;
        choice_usage(j, c, &u);
        const struct oai_usage *up = r->continuous_usage ? &u : NULL;
        int unull = r->include_usage && !r->continuous_usage;
        if (r->kind == OAI_CHAT && !j->role_sent) { /* chat: delta.role first, alone */
            p.role = 1;
            p.text = "";
            sse_data(j, oai_render_chunk(&j->rc, &p, up, unull));
            p.role = 0;
        }
        /* echo: the prompt first, once its logprobs (if asked) have all arrived */
        if (r->echo && !c->prompt_sent && !c->finish_sent) {
            int prompt_complete = !r->sp.prompt_logprobs || c->n_gen > 0 || c->done ||
                                  c->n_plp >= r->prompts[c->prompt_idx].n_ids;
            if (!prompt_complete) continue;
            char *echo = NULL;
            int n = echo_text(j, &r->prompts[c->prompt_idx], &echo);
            int n_rec = 0;
            struct oai_lp *rec = NULL;
            c->echo_cp = utf8_cp_count(echo, (size_t)n);
            if (r->logprobs >= 0 && c->plp) rec = choice_records(j, c, c->echo_cp, &n_rec, 0, 0);
            p.text = echo;
            p.len = (size_t)n;
            p.lp = rec;
            p.n_lp = n_rec;
            sse_data(j, oai_render_chunk(&j->rc, &p, up, unull));
            free(rec);
            free(echo);
            c->prompt_sent = 1;
        }
        if (c->finish_sent) continue;
        size_t safe = c->done ? c->text.len : c->text.len - holdback(j, c);
        if (j->tool_parser && !c->done) { /* what may become a tool call waits for the end */
            /* no tag starts before what was sent (it would have been held), so only the new text
             * is scanned; a llama3_json answer that sent anything did not open with '{' */
            size_t ts = j->tool_parser == TOOL_PARSER_LLAMA3_JSON && c->sent > 0 ? c->text.len
                      : c->sent + tool_stream_safe(j->tool_parser, c->text.p + c->sent, c->text.len - c->sent);
            if (ts < safe) safe = ts;
            if (safe < c->sent) safe = c->sent;
        }
        if (c->done) choice_tools(j, c, c->sent);
        int tools = c->done && c->tools.called;
        if (tools) safe = c->tools.content_null ? c->sent : c->tools.content_len;
        int upto = c->lp_sent;
        while (upto < c->n_lp && (c->done || c->lp_byte[upto] < safe)) upto++;
        if (safe <= c->sent && upto == c->lp_sent && !c->done) continue;
        p.text = c->text.p + c->sent;
        p.len = safe > c->sent ? safe - c->sent : 0;
        int n_rec = 0;
        struct oai_lp *rec = NULL;
        if (r->logprobs >= 0 && upto > c->lp_sent) {
            struct choice tmp = *c;
            tmp.plp = NULL; /* generated tokens only */
            rec = choice_records(j, &tmp, c->echo_cp, &n_rec, c->lp_sent, upto);
        }
        p.lp = rec;
        p.n_lp = n_rec;
        if (c->done) {
            p.finish_reason = c->finish ? c->finish : "abort";
            p.stop_reason = c->stop_reason;
            p.stop_token = c->stop_token >= 0 ? &c->stop_token : NULL;
        }
        if (tools) { /* content, then each call (name, then arguments), then the finish */
            struct oai_piece last = p;
            p.finish_reason = NULL;
            if (p.len || p.n_lp) sse_data(j, oai_render_chunk(&j->rc, &p, up, unull));
            memset(&p, 0, sizeof p);
            p.index = c->index;
            p.text = "";
            p.n_tool_calls = 1;
            for (int k = 0; k < c->tools.n_calls; k++)
                for (int part = 1; part <= 2; part++) {
                    p.tool_calls = &c->tools.calls[k];
                    p.tool_index = k;
                    p.tool_part = part;
                    sse_data(j, oai_render_chunk(&j->rc, &p, up, unull));
                }
            memset(&p, 0, sizeof p);
            p.index = c->index;
            p.text = "";
            p.finish_reason = "tool_calls";
            p.stop_reason = last.stop_reason;
            p.stop_token = last.stop_token;
        }
        if (p.len || p.n_lp || p.finish_reason)
            sse_data(j, oai_render_chunk(&j->rc, &p, up, unull));
        free(rec);
        c->sent = safe;
        c->lp_sent = upto;
        if (c->done) c->finish_sent = 1;
        if (c->done && c->err[0]) {
            struct oai_error e;
            oai_err(&e, 500, NULL, "engine_error", "%s", c->err);
            sse_data(j, oai_error_json(&e));
        }
    }
    j->role_sent = 1;
}

ssize_t sse_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct job *j = cls;
    (void)pos;
    for (;;) {
        if (j->out_pos < j->out.len) {
            size_t n = j->out.len - j->out_pos;
            if (n > max) n = max;
            memcpy(buf, j->out.p + j->out_pos, n);
            j->out_pos += n;
            if (j->out_pos == j->out.len) j->out.len = j->out_pos = 0;
            j->last_send = now_s();
            return (ssize_t)n;
        }
        if (j->sse_phase >= 1) {
            job_finish_log(j);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        if (j->srv->state == SERVER_STOPPING) job_cancel(j, "abort");
        if (job_client_gone(j)) {
            job_cancel(j, "abort");
            job_finish_log(j);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (j->deadline > 0 && now_s() > j->deadline) job_cancel(j, "abort");
        int done = job_step(j, 100);
        sse_emit(j);
        if (done) {
            /* every choice's finish chunk went out in sse_emit */
            if (j->req.include_usage) {
                struct oai_usage u;
                job_usage(j, &u);
                sse_data(j, oai_render_usage_chunk(&j->rc, &u));
            }
            sb_puts(&j->out, "data: [DONE]\n\n");
            j->sse_phase = 1;
            continue;
        }
        if (j->out.len == 0 && now_s() - j->last_send >= SSE_KEEPALIVE_S)
            sb_puts(&j->out, ": keep-alive\n\n");
    }
}

void sse_free(void *cls)
{
    struct job *j = cls;
    job_cancel(j, "abort");
    job_finish_log(j);
    job_free(j);
}
