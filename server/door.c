/* door.c - the listening socket, in front of libmicrohttpd.
 *
 * libmicrohttpd 0.9.75 (Debian 12) closes a connection whose request line it cannot split (no
 * space, or a leading space) without a word, and shuts the socket before telling us, so no
 * callback of ours can answer it. The door accepts, waits (on epoll, no thread per connection)
 * until the first request line shows its method and the space after it, and only then hands the
 * connection to libmicrohttpd (MHD_add_connection), which reads the bytes the door only peeked.
 * Anything else gets a 400 here:
 *
 *   leading CRLF / LF   blank lines (RFC 9112 2.2): consumed, as libmicrohttpd would skip them
 *   token SP ...        handed over: libmicrohttpd parses the rest (a bad version: its 400)
 *   token CR|LF|other   a line with no space, a NUL, a TLS hello on the plain port: 400, closed
 *   SP ...              no method: 400, closed
 *   token of 32 bytes   no method is that long: 400, closed
 *   token so far        wait for more, until --idle-timeout from the accept (then closed);
 *                       the client shut its side: 400
 *
 * Limits: at most max_pending connections wait here, max_pending_per_ip from one address; the
 * rest are closed at accept. A 400 goes with the bytes the client sent read and dropped, then
 * SHUT_WR; the door reads until the client closes (at most LINGER_S) so that no reset can
 * overtake the answer. */
#include "server_internal.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

enum { DOOR_PEEK = 4096, DOOR_EVENTS = 64 };
#define LINGER_S 2.0

struct waiting {
    int fd;
    int idx;           /* in door.w */
    int closing;       /* answered (400): dropping what still comes until EOF or LINGER_S */
    double t0;         /* accepted, or (closing) answered */
    struct sockaddr_storage addr;
    socklen_t alen;
};

struct door {
    struct door_params p;
    int lfd, efd, wfd; /* listening socket, epoll, eventfd (stop) */
    pthread_t th;
    int started;
    struct waiting **w;
    int n, cap;
    double resume_t;   /* > 0: accepting paused (out of descriptors) until then */
};

static const char BAD_LINE[] = "malformed request line: expected METHOD SP request-target SP HTTP/1.1";

static int is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return 1;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int same_ip(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family) return 0;
    if (a->ss_family == AF_INET)
        return !memcmp(&((const struct sockaddr_in *)a)->sin_addr, &((const struct sockaddr_in *)b)->sin_addr,
                       sizeof(struct in_addr));
    if (a->ss_family == AF_INET6)
        return !memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr, &((const struct sockaddr_in6 *)b)->sin6_addr,
                       sizeof(struct in6_addr));
    return 1;
}

enum door_verdict door_verdict(const char *buf, size_t n, int more, size_t *skip)
{
    size_t i = 0;
    for (;;) {
        if (i < n && buf[i] == '\n') i++;
        else if (i + 1 < n && buf[i] == '\r' && buf[i + 1] == '\n') i += 2;
        else break;
    }
    *skip = i;
    if (i) return DOOR_SKIP;
    if (n == 0) return more ? DOOR_WAIT : DOOR_REFUSE;
    if (n == 1 && buf[0] == '\r' && more) return DOOR_WAIT; /* a blank line's CR; its LF is on the way */
    size_t m = 0;
    while (m < n && m < DOOR_METHOD_MAX && is_tchar((unsigned char)buf[m])) m++;
    if (m == n && m < DOOR_METHOD_MAX) return more ? DOOR_WAIT : DOOR_REFUSE; /* the method so far */
    if (m > 0 && m < n && buf[m] == ' ') return DOOR_HANDOFF;
    return DOOR_REFUSE;
}

/* Leave the table (and epoll); closes fd unless keep_fd. */
static void drop(struct door *d, struct waiting *w, int keep_fd)
{
    epoll_ctl(d->efd, EPOLL_CTL_DEL, w->fd, NULL);
    if (!keep_fd) close(w->fd);
    d->w[w->idx] = d->w[--d->n];
    d->w[w->idx]->idx = w->idx;
    free(w);
}

/* Read and drop what the client sent, 64 KB at most (a flood waits its turn): a close with
 * unread bytes would be a reset. Returns the last recv's result (0: EOF). */
static ssize_t drain(int fd)
{
    char buf[DOOR_PEEK];
    ssize_t k = 1;
    for (int i = 0; i < 16 && (k = recv(fd, buf, sizeof buf, 0)) > 0; i++) {}
    return k;
}

/* The 400 (the refused callback sends it): what the client sent so far is read first (a reset
 * could destroy the answer in flight), then SHUT_WR once it is out. */
static void refuse(struct door *d, struct waiting *w)
{
    drain(w->fd);
    d->p.refused(d->p.cls, w->fd, BAD_LINE);
    shutdown(w->fd, SHUT_WR);
    w->closing = 1;
    w->t0 = now_s();
}

/* Data (or EOF) on a waiting connection: consume blank lines, then decide. */
static void examine(struct door *d, struct waiting *w, unsigned events)
{
    char buf[DOOR_PEEK];
    if (w->closing) {
        ssize_t k = drain(w->fd);
        if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) drop(d, w, 0);
        return;
    }
    for (;;) {
        ssize_t k = recv(w->fd, buf, sizeof buf, MSG_PEEK);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (k <= 0) { /* the client left (or the socket failed) before a request */
            drop(d, w, 0);
            return;
        }
        size_t skip = 0;
        switch (door_verdict(buf, (size_t)k, !(events & EPOLLRDHUP), &skip)) {
        case DOOR_WAIT:
            return;
        case DOOR_SKIP: /* blank lines before the request line: libmicrohttpd would skip them too */
            if (recv(w->fd, buf, skip, 0) <= 0) {
                drop(d, w, 0);
                return;
            }
            continue;
        case DOOR_HANDOFF: {
            int fd = w->fd;
            struct sockaddr_storage a = w->addr;
            socklen_t al = w->alen;
            drop(d, w, 1);
            d->p.handoff(d->p.cls, fd, (const struct sockaddr *)&a, (unsigned)al); /* takes fd */
            return;
        }
        default:
            refuse(d, w);
            return;
        }
    }
}

static void accept_all(struct door *d)
{
    for (;;) {
        struct sockaddr_storage a;
        socklen_t al = sizeof a;
        int fd = accept4(d->lfd, (struct sockaddr *)&a, &al, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            /* out of descriptors or memory: accepting again at once would spin */
            char msg[128];
            snprintf(msg, sizeof msg, "accept: %s (accepting paused for 100 ms)", strerror(errno));
            if (d->p.limited) d->p.limited(d->p.cls, msg);
            struct epoll_event ev = {.events = 0, .data.ptr = &d->lfd};
            epoll_ctl(d->efd, EPOLL_CTL_MOD, d->lfd, &ev);
            d->resume_t = now_s() + 0.1;
            return;
        }
        int same = 0;
        if (d->p.max_pending_per_ip > 0)
            for (int i = 0; i < d->n; i++) same += same_ip(&d->w[i]->addr, &a);
        if (d->n >= d->p.max_pending || (d->p.max_pending_per_ip > 0 && same >= d->p.max_pending_per_ip)) {
            close(fd);
            if (d->p.limited) d->p.limited(d->p.cls, "too many connections waiting for a request line");
            continue;
        }
        if (d->n == d->cap) {
            d->cap = d->cap ? 2 * d->cap : 64;
            d->w = xrealloc(d->w, (size_t)d->cap * sizeof *d->w);
        }
        struct waiting *w = xcalloc(1, sizeof *w);
        w->fd = fd;
        w->t0 = now_s();
        w->addr = a;
        w->alen = al;
        w->idx = d->n;
        d->w[d->n++] = w;
        /* edge-triggered: the bytes stay in the socket (peeked), so a level would fire for ever;
         * an ADD on a socket with data already in reports it at the next wait */
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.ptr = w};
        if (epoll_ctl(d->efd, EPOLL_CTL_ADD, fd, &ev) < 0) drop(d, w, 0);
    }
}

static void *door_main(void *arg)
{
    struct door *d = arg;
    struct epoll_event ev[DOOR_EVENTS];
    for (;;) {
        int k = epoll_wait(d->efd, ev, DOOR_EVENTS, 250);
        if (k < 0 && errno != EINTR) {
            LOG_W("HTTP: epoll_wait: %s", strerror(errno));
            k = 0;
        }
        for (int i = 0; i < k; i++) {
            void *p = ev[i].data.ptr;
            if (p == &d->wfd) return NULL;
            if (p == &d->lfd) accept_all(d);
        }
        for (int i = 0; i < k; i++) {
            void *p = ev[i].data.ptr;
            if (p == &d->lfd || p == &d->wfd) continue;
            /* a connection handed over or dropped earlier in this batch is freed: look it up */
            struct waiting *w = p;
            int live = 0;
            for (int j = 0; j < d->n && !live; j++) live = d->w[j] == w;
            if (live) examine(d, w, ev[i].events);
        }
        double t = now_s();
        if (d->resume_t > 0 && t >= d->resume_t) {
            struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &d->lfd};
            epoll_ctl(d->efd, EPOLL_CTL_MOD, d->lfd, &lev);
            d->resume_t = 0;
        }
        for (int i = d->n - 1; i >= 0; i--) {
            struct waiting *w = d->w[i];
            double limit = w->closing ? LINGER_S : d->p.idle_timeout_s;
            if (limit <= 0 || t - w->t0 < limit) continue;
            /* idle: closed without a word (what it sent is read first: a close with unread
             * bytes would be a reset) */
            drain(w->fd);
            drop(d, w, 0);
        }
    }
}

int door_open(struct door **out, const struct sockaddr *addr, unsigned alen, const struct door_params *p,
              char *err)
{
    *out = NULL;
    struct door *d = xcalloc(1, sizeof *d);
    d->p = *p;
    d->lfd = d->efd = d->wfd = -1;
    const char *what = "socket";
    int one = 1;
    d->lfd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (d->lfd < 0) goto fail;
    /* SO_REUSEADDR: a restart binds at once past TIME_WAIT; a second server on a port in use
     * still fails (no SO_REUSEPORT) */
    setsockopt(d->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (addr->sa_family == AF_INET6) setsockopt(d->lfd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    what = "bind";
    if (bind(d->lfd, addr, (socklen_t)alen) < 0) goto fail;
    what = "listen";
    if (listen(d->lfd, SOMAXCONN) < 0) goto fail;
    what = "epoll";
    if ((d->efd = epoll_create1(EPOLL_CLOEXEC)) < 0) goto fail;
    if ((d->wfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) goto fail;
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &d->lfd};
    struct epoll_event wev = {.events = EPOLLIN, .data.ptr = &d->wfd};
    if (epoll_ctl(d->efd, EPOLL_CTL_ADD, d->lfd, &lev) < 0 || epoll_ctl(d->efd, EPOLL_CTL_ADD, d->wfd, &wev) < 0)
        goto fail;
    what = "thread";
    errno = pthread_create(&d->th, NULL, door_main, d);
    if (errno) goto fail;
    d->started = 1;
    *out = d;
    return 0;
fail:
    set_err(err, -1, "%s: %s", what, strerror(errno));
    door_close(d);
    return -1;
}

int door_port(const struct door *d)
{
    struct sockaddr_storage a;
    socklen_t al = sizeof a;
    if (!d || getsockname(d->lfd, (struct sockaddr *)&a, &al) < 0) return -1;
    if (a.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&a)->sin_port);
    if (a.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&a)->sin6_port);
    return -1;
}

void door_close(struct door *d)
{
    if (!d) return;
    if (d->started) {
        uint64_t one = 1;
        if (write(d->wfd, &one, sizeof one) < 0) { /* cannot fail on a fresh eventfd */ }
        pthread_join(d->th, NULL);
    }
    while (d->n) drop(d, d->w[d->n - 1], 0);
    free(d->w);
    if (d->lfd >= 0) close(d->lfd);
    if (d->efd >= 0) close(d->efd);
    if (d->wfd >= 0) close(d->wfd);
    free(d);
}
