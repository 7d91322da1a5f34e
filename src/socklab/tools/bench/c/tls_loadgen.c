/*
 * tls_loadgen.c - the TLS echo load generator behind `socklab bench echo --tls` (OpenSSL, -lssl -lcrypto).
 *
 * Why C: as loadgen.c - the generator must be cheaper per message than the servers it measures;
 * TLS costs the client as much crypto as the server, and a Python client pays its interpreter on top.
 *
 * -c N connections, each a TLS client (no certificate check: loopback, self-signed) with one
 * message of -s bytes in flight: SSL_write it whole, SSL_read until -s bytes came back.
 * Phases as loadgen.c; the warm-up (issue 19), for each server, unless --cold:
 *   1. a TCP connection opened and closed without data (the server sees EOF before any handshake);
 *   2. a TLS connection whose first record (16 bytes of data) is written in two parts, 5 bytes
 *      then the rest, 20 ms apart - a reader that meets a partial record resets its buffers
 *      (uvloop's TLS reads); its echo proves the server handled it.
 * "warm": {"tcp_empty": ..., "tls_split": "echoed" | why not, "seconds": S} in the JSON.
 * The handshakes of phase 1 are done one connection at a time, blocking, before any load.
 * --vs-port Q: a second server, in turns of --slice-ms ("vs" in the JSON).
 *
 * Usage: tls_loadgen --port P [--host 127.0.0.1] [-c 20] [-s 1024] [-d 10] [-w 1] [--cpu N]
 *                    [--vs-port Q] [--slice-ms 200] [--cold]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

#define MAX_EVENTS 512

struct conn {
    int fd, side, alive, want_write;
    SSL *ssl;
    uint64_t sent_at, rpos, wpos;  /* wpos: bytes of the current message written (< size: a write is pending) */
};

static struct conn *conns;
static int nconns, nactive = 20, size = 1024, cold, ep;
static double duration = 10, warmup = 1, slice_ms = 200;
static char *sbuf, *rbuf;
static const char *warm_tcp_res[2], *warm_tls_res[2];
static double warm_seconds[2];
static SSL_CTX *ctx;

static void note_error(const char *what) {
    if (!first_error[0]) {
        unsigned long e = ERR_peek_error();
        snprintf(first_error, sizeof first_error, "%s: %s", what, e ? ERR_reason_error_string(e) : strerror(errno));
    }
}

static int tcp_connect(const struct sockaddr_in *sin) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct timeval tv = {.tv_sec = 10, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (const struct sockaddr *)sin, sizeof *sin) < 0) { close(fd); return -1; }
    return fd;
}

/* Write what SSL put into the memory BIO, as one write, or split after `split` bytes (20 ms apart). */
static int flush_bio(int fd, BIO *out, int split) {
    char buf[16384];
    int n;
    while ((n = BIO_read(out, buf, sizeof buf)) > 0) {
        int first = split > 0 && split < n ? split : n;
        if (send(fd, buf, (size_t)first, MSG_NOSIGNAL) != first) return -1;
        if (first < n) {
            usleep(20000);
            if (send(fd, buf + first, (size_t)(n - first), MSG_NOSIGNAL) != n - first) return -1;
        }
    }
    return 0;
}

static const char *warm_tls(const struct sockaddr_in *sin) {
    int fd = tcp_connect(sin);
    if (fd < 0) return "connect failed";
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    const char *res = "handshake failed";
    int r;
    if (SSL_connect(ssl) != 1) goto done;
    BIO *out = BIO_new(BIO_s_mem());  /* from here, records are written through memory, then by hand */
    SSL_set0_wbio(ssl, out);
    res = "no echo";
    if (SSL_write(ssl, "warm-up 16 bytes", 16) != 16 || flush_bio(fd, out, 5) < 0) goto done;
    char got[16];
    int have = 0;
    while (have < 16) {
        r = SSL_read(ssl, got + have, 16 - have);
        if (r <= 0) { flush_bio(fd, out, 0); if (SSL_get_error(ssl, r) == SSL_ERROR_WANT_READ) continue; goto done; }
        have += r;
    }
    res = "echoed";
    SSL_shutdown(ssl);
    flush_bio(fd, out, 0);
done:
    SSL_free(ssl);
    close(fd);
    return res;
}

static void kill_conn(struct conn *c, const char *why) {
    if (!c->alive) return;
    note_error(why);
    errors++;
    c->alive = 0;
    if (c->wpos < (uint64_t)size || c->rpos < (uint64_t)size) sides[c->side].inflight--;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
}

static void set_write_interest(struct conn *c, int on) {
    if (c->want_write == on) return;
    struct epoll_event e = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
    c->want_write = on;
}

static void pump(struct conn *c) {
    if (c->wpos >= (uint64_t)size) return;
    int r = SSL_write(c->ssl, sbuf, size);  /* same buffer and length on a retry, as OpenSSL wants */
    if (r > 0) { c->wpos = (uint64_t)size; set_write_interest(c, 0); return; }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) { set_write_interest(c, e == SSL_ERROR_WANT_WRITE); return; }
    kill_conn(c, "SSL_write");
}

static void start_message(struct conn *c, uint64_t t) {
    c->sent_at = t;
    c->rpos = 0;
    c->wpos = 0;
    sides[c->side].inflight++;
    pump(c);
}

static void on_event(struct conn *c) {
    if (c->wpos < (uint64_t)size) pump(c);
    for (;;) {
        if (!c->alive) return;
        int r = SSL_read(c->ssl, rbuf, size);
        if (r <= 0) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
            kill_conn(c, e == SSL_ERROR_ZERO_RETURN ? "server closed the connection" : "SSL_read");
            return;
        }
        c->rpos += (uint64_t)r;
        if (c->rpos < (uint64_t)size) continue;
        uint64_t t = now_ns();
        struct side *s = &sides[c->side];
        s->inflight--;
        if (recording) record_round_trip(s, t - c->sent_at, (uint64_t)size);
        c->rpos = 0;
        c->wpos = (uint64_t)size;
        if (s->running) start_message(c, t);
        else return;
    }
}

static void usage(const char *me) {
    fprintf(stderr, "usage: %s --port P [--host H] [-c CONNS] [-s SIZE] [-d SECONDS] [-w WARMUP] [--cpu N] "
            "[--vs-port Q] [--slice-ms MS] [--cold]\n", me);
    exit(2);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = -1, cpu = -1, vs_port = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--cold")) { cold = 1; continue; }
        if (i + 1 >= argc) usage(argv[0]);
        const char *v = argv[++i];
        if (!strcmp(a, "--host")) host = v;
        else if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "-c") || !strcmp(a, "--connections")) nactive = atoi(v);
        else if (!strcmp(a, "-s") || !strcmp(a, "--size")) size = atoi(v);
        else if (!strcmp(a, "-p") || !strcmp(a, "--pipeline")) { if (atoi(v) != 1) usage(argv[0]); }
        else if (!strcmp(a, "--idle")) { if (atoi(v) != 0) usage(argv[0]); }
        else if (!strcmp(a, "-d") || !strcmp(a, "--duration")) duration = atof(v);
        else if (!strcmp(a, "-w") || !strcmp(a, "--warmup")) warmup = atof(v);
        else if (!strcmp(a, "--cpu")) cpu = atoi(v);
        else if (!strcmp(a, "--connect-timeout")) { /* handshakes are bounded by 10 s socket timeouts */ }
        else if (!strcmp(a, "--vs-port")) vs_port = atoi(v);
        else if (!strcmp(a, "--slice-ms")) slice_ms = atof(v);
        else usage(argv[0]);
    }
    if (port <= 0 || port > 65535 || size < 1 || size > (1 << 24) || nactive < 1 || duration <= 0 || warmup < 0 ||
        vs_port < 0 || vs_port > 65535 || slice_ms < 1)
        usage(argv[0]);
    int nsides = vs_port ? 2 : 1;
    sides[0].port = port;
    sides[1].port = vs_port;
    pin_to_cpu(cpu);
    signal(SIGPIPE, SIG_IGN);
    sbuf = malloc((size_t)size);
    rbuf = malloc((size_t)size);
    ctx = SSL_CTX_new(TLS_client_method());
    if (!sbuf || !rbuf || !ctx) { perror("setup"); return 1; }
    memset(sbuf, 'x', (size_t)size);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    struct sockaddr_in sin[2];
    for (int k = 0; k < 2; k++) {
        sin[k] = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((unsigned short)sides[k].port)};
        if (inet_pton(AF_INET, host, &sin[k].sin_addr) != 1) { fprintf(stderr, "bad IPv4 address %s\n", host); return 2; }
    }
    for (int k = 0; k < nsides && !cold; k++) {
        uint64_t w0 = now_ns();
        warm_tcp_res[k] = warm_tcp(&sin[k]);
        warm_tls_res[k] = warm_tls(&sin[k]);
        warm_seconds[k] = (double)(now_ns() - w0) / 1e9;
    }
    nconns = nactive * nsides;
    conns = calloc((size_t)nconns, sizeof *conns);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (!conns || ep < 0) { perror("setup"); return 1; }
    uint64_t t0 = now_ns();
    int held[2] = {0, 0};
    for (int i = 0; i < nconns; i++) {  /* phase 1: connect and handshake, one at a time, blocking */
        struct conn *c = &conns[i];
        c->side = i >= nactive;
        c->fd = tcp_connect(&sin[c->side]);
        if (c->fd < 0) { connect_errors++; note_error("connect"); continue; }
        c->ssl = SSL_new(ctx);
        SSL_set_fd(c->ssl, c->fd);
        if (SSL_connect(c->ssl) != 1) { connect_errors++; note_error("handshake"); close(c->fd); continue; }
        if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) < 0) {
            connect_errors++; note_error("fcntl"); close(c->fd); continue;
        }
        c->alive = 1;
        c->wpos = (uint64_t)size;
        held[c->side]++;
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
    }
    double connect_seconds = (double)(now_ns() - t0) / 1e9;

    struct run run;
    run_start(&run, nsides, warmup, duration, slice_ms);
    for (int i = 0; i < nconns; i++)
        if (conns[i].alive && conns[i].side == 0) start_message(&conns[i], run.start);
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        uint64_t t = now_ns();
        if (run_tick(&run, t))  /* the other server's turn: its connections start */
            for (int i = 0; i < nconns; i++)
                if (conns[i].side == run.cur && conns[i].alive) start_message(&conns[i], t);
        if (t >= run.end) break;
        int n = epoll_wait(ep, evs, MAX_EVENTS, 5);
        if (n < 0 && errno != EINTR) { perror("epoll_wait"); return 1; }
        for (int i = 0; i < n; i++) on_event(evs[i].data.ptr);
    }
    run_finish(&run);
    int alive[2] = {0, 0};
    for (int i = 0; i < nconns; i++) alive[conns[i].side] += conns[i].alive;
    for (int k = 0; k < nsides; k++) {
        print_side(&run, k, "tls://", host, nactive, 0, held[k], alive[k], size, 1, connect_seconds);
        if (cold) printf(", \"warm\": null");
        else printf(", \"warm\": {\"tcp_empty\": \"%s\", \"tls_split\": \"%s\", \"seconds\": %.3f}",
                    warm_tcp_res[k], warm_tls_res[k], warm_seconds[k]);
    }
    print_end(&run);
    return 0;
}
