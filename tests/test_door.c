/* test_door.c - server/door.c, the listening socket in front of libmicrohttpd:
 *
 *   door_verdict   the first bytes of a connection -> wait, skip blank lines, hand over, or 400
 *                  (a table of lines, each prefix of a good line, RDHUP)
 *   door_open      real sockets on 127.0.0.1: a request line (in one piece, trickled, after blank
 *                  lines) is handed over with every byte of it still unread; garbage gets the
 *                  JSON 400 and an orderly close; the per-address limit closes the excess at
 *                  accept; door_close closes what waits; --idle-timeout closes a silent
 *                  connection, or one that sent only a method, with a FIN (no reset).
 *
 * Waits poll for the state they need (30 s at most); no check depends on speed. */
#include "../server/server_internal.h"
#include "test.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char *vname(enum door_verdict v)
{
    static const char *n[] = {"wait", "skip", "handoff", "refuse"};
    return n[v];
}

static void verdict_is(const char *in, size_t n, int more, enum door_verdict want, size_t want_skip)
{
    size_t skip = 99;
    enum door_verdict v = door_verdict(in, n, more, &skip);
    TEST_CONDF(v == want && (want != DOOR_SKIP || skip == want_skip), "verdict(%.*s%s): %s (skip %zu), want %s (%zu)",
               (int)(n > 40 ? 40 : n), in, more ? "" : " +FIN", vname(v), skip, vname(want), want_skip);
}

static void test_verdicts(void)
{
#define V(s, more, want, skip) verdict_is(s, sizeof(s) - 1, more, want, skip)
    V("GET / HTTP/1.1\r\n", 1, DOOR_HANDOFF, 0);
    V("POST /v1/completions HTTP/1.1\r\nHost: x\r\n", 1, DOOR_HANDOFF, 0);
    V("M-SEARCH * HTTP/1.1\r\n", 1, DOOR_HANDOFF, 0);  /* any token is a method */
    V("GET /x", 0, DOOR_HANDOFF, 0);                   /* the client's FIN: the rest is for libmicrohttpd */
    V("\r\n\r\nGET / HTTP/1.1\r\n", 1, DOOR_SKIP, 4);
    V("\n\nGET", 1, DOOR_SKIP, 2);
    V("\r\n\r", 1, DOOR_SKIP, 2);
    V("\r", 1, DOOR_WAIT, 0);                          /* CR of a blank line; LF next */
    V("\r", 0, DOOR_REFUSE, 0);
    V("\rX", 1, DOOR_REFUSE, 0);                       /* a bare CR is no line end */
    V("G", 1, DOOR_WAIT, 0);
    V("GET", 1, DOOR_WAIT, 0);
    V("GET", 0, DOOR_REFUSE, 0);
    V("GARBAGE\r\n\r\n", 1, DOOR_REFUSE, 0);           /* no space: libmicrohttpd says nothing */
    V("GARBAGE\n", 1, DOOR_REFUSE, 0);
    V(" GET / HTTP/1.1\r\n", 1, DOOR_REFUSE, 0);       /* empty method */
    V("GET\t/ HTTP/1.1\r\n", 1, DOOR_REFUSE, 0);
    V("\x16\x03\x01\x02\x00", 1, DOOR_REFUSE, 0);      /* a TLS hello */
    V("\x00GET / HTTP/1.1\r\n", 1, DOOR_REFUSE, 0);
    V("G\x00T / HTTP/1.1\r\n", 1, DOOR_REFUSE, 0);
    V("GET\xc3\xa9 / HTTP/1.1\r\n", 1, DOOR_REFUSE, 0);
    V("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA ", 1, DOOR_HANDOFF, 0); /* 31 bytes: the longest method */
    V("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", 1, DOOR_REFUSE, 0);  /* 32 and no space yet */
    V("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", 1, DOOR_WAIT, 0);
#undef V
    /* every prefix of a good request waits or hands over, never refuses */
    const char *good = "\r\n\nPUT /a?b=c HTTP/1.0\r\nHost: x\r\n\r\n";
    int bad = 0;
    for (size_t n = 1; n <= strlen(good); n++) {
        size_t skip, off = 0;
        enum door_verdict v;
        while ((v = door_verdict(good + off, n - off, 1, &skip)) == DOOR_SKIP) off += skip;
        if (v == DOOR_REFUSE) bad++;
    }
    TEST_COND("every prefix of a good request line: wait, skip or hand over", bad == 0);
}

/* ---- the door on real sockets ---- */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int handed[64], n_handed, n_refused, n_limited;

static void on_handoff(void *cls, int fd, const struct sockaddr *a, unsigned al)
{
    pthread_mutex_lock(&mu);
    if (n_handed < 64) handed[n_handed++] = fd;
    else close(fd);
    pthread_mutex_unlock(&mu);
}
/* what http.c's send_raw sends, in short */
static void on_refused(void *cls, int fd, const char *why)
{
    char out[512];
    int n = snprintf(out, sizeof out, "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n{\"error\":{\"message\":\"%s\"}}", strlen(why) + 24, why);
    send(fd, out, (size_t)n, MSG_NOSIGNAL);
    pthread_mutex_lock(&mu);
    n_refused++;
    pthread_mutex_unlock(&mu);
}
static void on_limited(void *cls, const char *why)
{
    pthread_mutex_lock(&mu);
    n_limited++;
    pthread_mutex_unlock(&mu);
}

static int counter(int *c)
{
    pthread_mutex_lock(&mu);
    int v = *c;
    pthread_mutex_unlock(&mu);
    return v;
}

static int wait_count(int *c, int want)
{
    double t = now_s() + 30;
    while (now_s() < t) {
        if (counter(c) >= want) return 1;
        usleep(2000);
    }
    return 0;
}

static int dial(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Everything fd sends until EOF (30 s at most); *how: 0 EOF, 1 reset, 2 still open. */
static size_t read_until_eof(int fd, char *out, size_t cap, int *how)
{
    size_t n = 0;
    double t = now_s() + 30;
    *how = 2;
    while (now_s() < t) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0) continue;
        ssize_t k = recv(fd, out + n, cap - 1 - n, 0);
        if (k > 0) {
            n += (size_t)k;
            if (n + 1 >= cap) break;
            continue;
        }
        *how = k == 0 ? 0 : 1;
        break;
    }
    out[n] = 0;
    return n;
}

/* What a handed-over fd still holds to read (the bytes the door only peeked). */
static size_t drain_handed(int fd, char *out, size_t cap, size_t want)
{
    size_t n = 0;
    double t = now_s() + 30;
    while (n < want && now_s() < t) {
        ssize_t k = recv(fd, out + n, cap - 1 - n, MSG_DONTWAIT);
        if (k > 0) n += (size_t)k;
        else if (k == 0) break;
        else usleep(2000);
    }
    out[n] = 0;
    return n;
}

static void test_sockets(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct door_params p = {.max_pending = 16, .max_pending_per_ip = 3, .idle_timeout_s = 0,
                            .handoff = on_handoff, .refused = on_refused, .limited = on_limited};
    struct door *d;
    char err[256];
    if (door_open(&d, (struct sockaddr *)&a, sizeof a, &p, err)) {
        TEST_CONDF(0, "door_open: %s", err);
        return;
    }
    int port = door_port(d);
    TEST_CONDF(port > 0, "door_port: %d", port);

    /* a request in one piece: handed over with all its bytes unread */
    const char *req = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    int c = dial(port);
    send(c, req, strlen(req), 0);
    TEST_COND("a request line: handed over", wait_count(&n_handed, 1));
    char buf[4096];
    if (counter(&n_handed) >= 1) {
        size_t n = drain_handed(handed[0], buf, sizeof buf, strlen(req));
        TEST_CONDF(n == strlen(req) && !memcmp(buf, req, n), "handed over with every byte unread (%zu of %zu)", n,
                   strlen(req));
        close(handed[0]);
    }
    close(c);

    /* blank lines first, then a method trickled a byte at a time: the blank lines are consumed */
    c = dial(port);
    const char *pieces[] = {"\r", "\n\r\n", "P", "O", "S", "T", " /x HTTP/1.1\r\n\r\n"};
    for (int i = 0; i < 7; i++) {
        send(c, pieces[i], strlen(pieces[i]), 0);
        usleep(20000); /* separate segments; not a timing check */
    }
    TEST_COND("blank lines and a trickled method: handed over", wait_count(&n_handed, 2));
    if (counter(&n_handed) >= 2) {
        const char *want = "POST /x HTTP/1.1\r\n\r\n";
        size_t n = drain_handed(handed[1], buf, sizeof buf, strlen(want));
        TEST_CONDF(n == strlen(want) && !memcmp(buf, want, n), "what libmicrohttpd reads starts at the method: '%s'",
                   buf);
        close(handed[1]);
    }
    close(c);

    /* garbage: the JSON 400, then an orderly close (EOF, not a reset) */
    int how;
    c = dial(port);
    send(c, "GARBAGE\r\n\r\n", 11, 0);
    read_until_eof(c, buf, sizeof buf, &how);
    close(c);
    TEST_CONDF(!strncmp(buf, "HTTP/1.1 400 ", 13) && strstr(buf, "\"malformed request line") &&
               strstr(buf, "Content-Type: application/json") && how == 0,
               "garbage: 400 JSON then EOF (how %d): %.80s", how, buf);
    TEST_COND("garbage: the refused callback ran", wait_count(&n_refused, 1));

    /* a large garbage request: the 400 still arrives whole (what was sent is read, no reset) */
    c = dial(port);
    static char big[64 * 1024];
    memset(big, 'x', sizeof big);
    memcpy(big, "\x16\x03\x01", 3);
    send(c, big, sizeof big, 0);
    read_until_eof(c, buf, sizeof buf, &how);
    close(c);
    TEST_CONDF(!strncmp(buf, "HTTP/1.1 400 ", 13) && strstr(buf, "}}"), "64 KB of garbage: the whole 400 arrives: %.60s",
               buf);

    /* a port in use is an error naming bind */
    struct sockaddr_in b = a;
    b.sin_port = htons((uint16_t)port);
    struct door *d3 = NULL;
    int rc = door_open(&d3, (struct sockaddr *)&b, sizeof b, &p, err);
    TEST_CONDF(rc < 0 && strstr(err, "bind"), "a port in use: '%s'", rc < 0 ? err : "(opened)");
    door_close(d3);

    /* silent connections from one address: 3 wait, the 4th and 5th are closed at accept; then
     * door_close closes the three (this door has no idle timeout) */
    int base_limited = counter(&n_limited);
    int s[5];
    for (int i = 0; i < 5; i++) s[i] = dial(port);
    TEST_COND("the per-address limit: two closed at accept", wait_count(&n_limited, base_limited + 2));
    door_close(d);
    int eof = 0;
    for (int i = 0; i < 5; i++) {
        read_until_eof(s[i], buf, sizeof buf, &how);
        eof += how != 2 && !buf[0];
        close(s[i]);
    }
    TEST_CONDF(eof == 5, "all five closed without a word, three by door_close (%d)", eof);

    /* --idle-timeout: a method that never ends, and a silent connection, are closed without a
     * word, with a FIN (what was sent is read first: no reset) */
    struct door_params q = p;
    q.idle_timeout_s = 0.3;
    struct door *d2;
    if (door_open(&d2, (struct sockaddr *)&a, sizeof a, &q, err)) {
        TEST_CONDF(0, "door_open: %s", err);
        return;
    }
    c = dial(door_port(d2));
    send(c, "GET", 3, 0);
    read_until_eof(c, buf, sizeof buf, &how);
    close(c);
    TEST_CONDF(how == 0 && !buf[0], "a method and nothing more: EOF at --idle-timeout (how %d, got '%s')", how, buf);
    c = dial(door_port(d2));
    read_until_eof(c, buf, sizeof buf, &how);
    close(c);
    TEST_CONDF(how == 0 && !buf[0], "a silent connection: EOF at --idle-timeout (how %d)", how);
    door_close(d2);
}

int main(void)
{
    test_verdicts();
    test_sockets();
    return test_report("test_door");
}
