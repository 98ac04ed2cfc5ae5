/* sequence.c - request state inside the engine, and the per-request event stream.
 *
 * The stream is the only object two threads share: the engine thread pushes events, the
 * caller pops them. It is reference counted (engine + caller) so either side may let go first;
 * a caller that lets go before DONE also sets `cancelled`, which the engine polls each step. */
#include <errno.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <stdio.h>
#include <stdlib.h>

#include "../common/common.h"
#include "engine_internal.h"

struct sequence *seq_new(const struct engine_request *req, uint64_t id, int max_len)
{
    struct sequence *s = xcalloc(1, sizeof *s);
    s->id = id;
    snprintf(s->req_id, sizeof s->req_id, "%s", req->id[0] ? req->id : "req");
    s->cap = req->n_prompt + (req->sp.max_tokens > 0 ? req->sp.max_tokens : 0) + 1;
    if (s->cap > max_len + 1) s->cap = max_len + 1;
    if (s->cap < req->n_prompt + 1) s->cap = req->n_prompt + 1;
    s->tokens = xmalloc(sizeof(int32_t) * s->cap);
    memcpy(s->tokens, req->prompt, sizeof(int32_t) * req->n_prompt);
    s->n_tokens = s->n_prompt = req->n_prompt;
    s->sp = req->sp;
    if (req->sp.n_stop_ids > 0) {
        s->sp.stop_ids = xmalloc(sizeof(int32_t) * req->sp.n_stop_ids);
        memcpy(s->sp.stop_ids, req->sp.stop_ids, sizeof(int32_t) * req->sp.n_stop_ids);
    } else {
        s->sp.stop_ids = NULL;
        s->sp.n_stop_ids = 0;
    }
    s->priority = req->priority;
    s->cache_salt = req->cache_salt;
    s->report_progress = req->report_progress;
    s->eos_ids = NULL;
    s->n_eos = 0;
    s->t_arrival = now_s();
    return s;
}

void seq_free(struct sequence *s)
{
    if (!s) return;
    free(s->tokens);
    free(s->block_table);
    free(s->block_hash);
    free(s->sp.stop_ids);
    free(s);
}

void seq_append(struct sequence *s, int32_t tok)
{
    if (s->n_tokens == s->cap) {
        s->cap = s->cap * 2 + 16;
        s->tokens = xrealloc(s->tokens, sizeof(int32_t) * s->cap);
    }
    s->tokens[s->n_tokens++] = tok;
}

/* --------------------------------------------------------------------------------------------- */

struct engine_stream *stream_new(void)
{
    struct engine_stream *s = xcalloc(1, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    CHECK(s->efd >= 0, "eventfd: %s", strerror(errno));
    s->cap = 64;
    s->ev = xmalloc(sizeof *s->ev * s->cap);
    atomic_init(&s->cancelled, 0);
    atomic_init(&s->refs, 2);
    return s;
}

void stream_push(struct engine_stream *s, const struct engine_event *ev)
{
    pthread_mutex_lock(&s->mu);
    if (s->count == s->cap) { /* grow, unrolling the ring */
        struct engine_event *n = xmalloc(sizeof *n * s->cap * 2);
        for (int i = 0; i < s->count; i++) n[i] = s->ev[(s->head + i) % s->cap];
        free(s->ev);
        s->ev = n;
        s->head = 0;
        s->cap *= 2;
    }
    s->ev[(s->head + s->count) % s->cap] = *ev;
    s->count++;
    if (ev->type == ENGINE_EV_DONE) s->done = 1;
    uint64_t one = 1;
    ssize_t w = write(s->efd, &one, sizeof one);
    (void)w;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void stream_release(struct engine_stream *s)
{
    if (atomic_fetch_sub(&s->refs, 1) != 1) return;
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    close(s->efd);
    free(s->ev);
    free(s);
}

int engine_stream_next(engine_stream_t *s, struct engine_event *ev, int timeout_ms)
{
    pthread_mutex_lock(&s->mu);
    struct timespec dl;
    if (timeout_ms >= 0) {
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_sec += timeout_ms / 1000;
        dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) { dl.tv_sec++; dl.tv_nsec -= 1000000000L; }
    }
    while (s->count == 0 && !(s->done && s->last.type == ENGINE_EV_DONE)) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&s->cv, &s->mu);
        } else if (pthread_cond_timedwait(&s->cv, &s->mu, &dl) == ETIMEDOUT) {
            pthread_mutex_unlock(&s->mu);
            return 0;
        }
    }
    if (s->count > 0) {
        *ev = s->ev[s->head];
        s->head = (s->head + 1) % s->cap;
        s->count--;
        if (ev->type == ENGINE_EV_DONE) s->last = *ev;
        if (s->count == 0) { /* drain the eventfd so poll() sleeps again */
            uint64_t v;
            ssize_t r = read(s->efd, &v, sizeof v);
            (void)r;
        }
    } else {
        *ev = s->last;
    }
    pthread_mutex_unlock(&s->mu);
    return 1;
}

void engine_cancel(engine_stream_t *s) { atomic_store(&s->cancelled, 1); }

void engine_stream_free(engine_stream_t *s)
{
    if (!s) return;
    atomic_store(&s->cancelled, 1);
    stream_release(s);
}

int engine_stream_fd(engine_stream_t *s) { return s->efd; }
