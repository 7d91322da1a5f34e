/*
 * loadgen.c - the echo load generator behind `socklab bench echo` and `socklab bench sweep`.
 *
 * Why C: a load generator must be faster than what it measures. A Python client spends more CPU
 * per round trip than a good Python server, so it would report its own limit, not the server's.
 * This one is a single thread on one epoll instance, like the C echo server it is checked against.
 *
 * What it does, in phases:
 *   1. connect: opens --idle + --connections TCP connections (at most --max-connecting at a time);
 *      each does one 16-byte round trip, which proves the server really accepted and serves it.
 *   2. warm-up (--warmup seconds): the --connections active ones run the load, nothing is recorded.
 *   3. measure (--duration seconds): each active connection keeps --pipeline messages of --size
 *      bytes in flight; a message is complete when --size bytes of echo came back (echo is a byte
 *      stream, so the reply is counted in bytes, not in recv() calls; they are counted, not copied:
 *      recv(MSG_TRUNC) drops them in the kernel). Each message's round-trip
 *      time goes into a log-bucket histogram (16 sub-buckets per power of two, ~3% resolution).
 * It writes "measure-start" and "measure-end" lines on stderr at the phase edges (the runner samples
 * the server's CPU and memory there), then one JSON object on stdout with completed round trips,
 * bytes, p50/p90/p99/p99.9/max latency and its own CPU time (getrusage): a generator near 100%
 * CPU is the limit, not the server.
 *
 * Warm-up (issue 19), before phase 1, for each server: one connection opened and closed without
 * data (connect, shutdown(SHUT_WR), then wait until the server closes its side too, at most 5 s).
 * An asyncio server that has never seen an EOF reads every message into a fresh 256 KiB block
 * (mmap + munmap per recv); the first EOF raises glibc's mmap threshold for the life of the
 * process. Every real server meets such a connection within seconds, so every contender gets one
 * here, alike. The JSON says what happened ("warm": {"tcp_empty": "closed by server", ...});
 * --cold skips it ("warm": null) to show the other figure.
 *
 * Interleaved (--vs-port Q): a second server, B, gets its own --connections, and the two take
 * turns in slices of --slice-ms: A's connections run the load while B's wait, then A's finish the
 * messages in flight (no new ones) and B's start, and so on. Two servers measured minutes apart on
 * a shared VM differ by +-10 % from the machine alone; slices a few hundred ms apart see the same
 * machine, so their ratio is the servers'. Each side's req/s counts only its own slices; B's
 * figures come out as the "vs" object of the JSON. (No --idle with --vs-port.)
 *
 * WebSocket (--ws PATH, `socklab bench ws`): each connection first upgrades with GET PATH (RFC 6455
 * handshake, in place of the 16-byte round trip; anything but "HTTP/1.1 101" fails it); then a message
 * is one masked text frame of --size bytes of 'x' (FIN set; the masking key is 0, which leaves the
 * payload as it is, so the frames are built once), and it is complete when the server's unmasked
 * frame of the same payload (2, 4 or 10 bytes of header + --size) came back. Other frames from the
 * server (a ping) would be miscounted: raise the server's ping interval above the run.
 *
 * Usage: loadgen --port P [--host 127.0.0.1] [-c 20] [-s 1024] [-p 1] [-d 10] [-w 1] [--idle 0]
 *                [--cpu N] [--connect-timeout 30] [--max-connecting 128] [--vs-port Q] [--slice-ms 200]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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

#define SEND_CHUNK (256 * 1024)
#define READ_SIZE (256 * 1024)
#define PING_SIZE 16
#define MAX_EVENTS 512

enum state { CONNECTING, PINGING, HELD, ACTIVE, DEAD };

struct conn {
    int fd;
    enum state st;
    int active;           /* part of the load (not one of the idle ones) */
    int side;             /* 0: the --port server, 1: the --vs-port server */
    int want_out;         /* EPOLLOUT registered */
    uint64_t to_send;     /* bytes of queued messages not yet written */
    uint64_t rpos;        /* bytes of the current reply received so far */
    uint64_t spos;        /* --ws: where the next byte to send is within a frame */
    uint32_t hs_tail;     /* --ws: the last 4 bytes of the handshake response so far */
    uint64_t *sent_at;    /* ring of send times, one per message in flight */
    int head, count;
};

static struct conn *conns;
static int nconns, nactive, nidle, size = 1024, pipeline = 1, max_connecting = 128;
static double duration = 10, warmup = 1, connect_timeout = 30, slice_ms = 200;
static int ep;
static char sbuf[SEND_CHUNK];
static char rbuf[READ_SIZE];
static int cold;
static const char *ws_path;          /* --ws: the path to upgrade */
static const char *ws_host;
static uint64_t msg_out, msg_in;     /* bytes per message sent / expected back (--size, or frames) */
static uint64_t sbuf_stream;         /* bytes of sbuf that are whole messages, repeated */
static const char *warm_result[2];
static double warm_seconds[2];

static void note_error(const char *what, int err) {
    if (!first_error[0]) snprintf(first_error, sizeof first_error, "%s: %s", what, strerror(err));
}

static void set_out(struct conn *c, int on) {
    if (c->want_out == on) return;
    struct epoll_event e = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
    c->want_out = on;
}

static void kill_conn(struct conn *c, const char *why, int err) {
    if (c->st == DEAD) return;
    if (c->st == CONNECTING || c->st == PINGING) connect_errors++; else errors++;
    note_error(why, err);
    close(c->fd);
    sides[c->side].inflight -= c->count;  /* its messages will never complete */
    c->count = 0;
    c->to_send = 0;
    c->st = DEAD;
}

/* Write queued message bytes until done or the socket is full. */
static void pump(struct conn *c) {
    while (c->to_send > 0) {
        size_t want = c->to_send < SEND_CHUNK ? (size_t)c->to_send : SEND_CHUNK;
        uint64_t off = 0;
        if (ws_path) {  /* sbuf holds whole frames back to back: resume where the last send stopped */
            off = c->spos;
            if (want > sbuf_stream - off) want = (size_t)(sbuf_stream - off);
        }
        ssize_t n = send(c->fd, sbuf + off, want, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) { set_out(c, 1); return; }
            kill_conn(c, "send", errno);
            return;
        }
        c->to_send -= (uint64_t)n;
        if (ws_path) c->spos = (off + (uint64_t)n) % msg_out;
    }
    set_out(c, 0);
}

static void queue_message(struct conn *c, uint64_t t) {
    c->sent_at[(c->head + c->count) % pipeline] = t;
    c->count++;
    c->to_send += msg_out;
    sides[c->side].inflight++;
}

static void start_load(struct conn *c, uint64_t t) {
    c->st = ACTIVE;
    c->rpos = 0;
    for (int i = 0; i < pipeline; i++) queue_message(c, t);
    pump(c);
}

static void on_readable(struct conn *c, int *pinging) {  /* pinging: connections still in phase 1 */
    for (;;) {
        /* MSG_TRUNC: TCP discards the echoed bytes in the kernel instead of copying them out. Only
         * their count matters here, and at 64 KiB the copy would make this generator, not the
         * server, the limit (it does the same copying work as the server it measures). */
        int handshake = ws_path && c->st == PINGING;  /* the 101 response is read, not discarded */
        ssize_t n = recv(c->fd, rbuf, sizeof rbuf, handshake ? 0 : MSG_TRUNC);
        if (n == 0) { kill_conn(c, "server closed the connection", ECONNRESET); return; }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            kill_conn(c, "recv", errno);
            return;
        }
        if (handshake) {
            if (c->rpos == 0 && (n < 12 || memcmp(rbuf, "HTTP/1.1 101", 12) != 0)) {
                kill_conn(c, "websocket upgrade refused", EPROTO);
                return;
            }
            c->rpos += (uint64_t)n;
            for (ssize_t i = 0; i < n; i++) c->hs_tail = (c->hs_tail << 8) | (uint8_t)rbuf[i];
            if (c->hs_tail == 0x0d0a0d0au) { c->st = HELD; c->rpos = 0; (*pinging)--; }
            if ((size_t)n < sizeof rbuf) return;
            continue;
        }
        if (c->st == PINGING) {
            c->rpos += (uint64_t)n;
            if (c->rpos >= PING_SIZE) { c->st = HELD; c->rpos = 0; (*pinging)--; }
            if ((size_t)n < sizeof rbuf) return;
            continue;
        }
        if (c->st != ACTIVE) return;  /* an idle connection got data it did not ask for: ignore */
        uint64_t t = now_ns();
        struct side *s = &sides[c->side];
        c->rpos += (uint64_t)n;
        if (recording) s->nbytes += (uint64_t)n;
        while (c->rpos >= msg_in && c->count > 0) {
            c->rpos -= msg_in;
            uint64_t lat = t - c->sent_at[c->head];
            c->head = (c->head + 1) % pipeline;
            c->count--;
            s->inflight--;
            if (recording) record_round_trip(s, lat, 0);  /* bytes are counted as they arrive */
            if (s->running) queue_message(c, t);
        }
        if (c->to_send) pump(c);
        if ((size_t)n < sizeof rbuf) return;  /* drained what was there */
    }
}

static int start_connect(struct conn *c, const struct sockaddr_in *sin) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { c->fd = -1; c->st = DEAD; connect_errors++; note_error("socket", errno); return -1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->st = CONNECTING;
    struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
    c->want_out = 1;
    if (connect(fd, (struct sockaddr *)sin, sizeof *sin) < 0 && errno != EINPROGRESS) {
        kill_conn(c, "connect", errno);
        return -1;
    }
    return 0;
}

static void on_connected(struct conn *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) { kill_conn(c, "connect", err); return; }
    c->st = PINGING;
    c->rpos = 0;
    set_out(c, 0);
    if (ws_path) {
        char req[1024];
        int len = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n", ws_path, ws_host, sides[c->side].port);
        if (len <= 0 || len >= (int)sizeof req || send(c->fd, req, (size_t)len, MSG_NOSIGNAL) != len)
            kill_conn(c, "send", errno);
        return;
    }
    if (send(c->fd, sbuf, PING_SIZE, MSG_NOSIGNAL) != PING_SIZE) kill_conn(c, "send", errno);
}

static void usage(const char *me) {
    fprintf(stderr, "usage: %s --port P [--host H] [-c CONNS] [-s SIZE] [-p PIPELINE] [-d SECONDS] "
            "[-w WARMUP] [--idle N] [--cpu N] [--connect-timeout S] [--max-connecting N] "
            "[--vs-port Q] [--slice-ms MS] [--cold] [--ws PATH]\n", me);
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
        else if (!strcmp(a, "-p") || !strcmp(a, "--pipeline")) pipeline = atoi(v);
        else if (!strcmp(a, "-d") || !strcmp(a, "--duration")) duration = atof(v);
        else if (!strcmp(a, "-w") || !strcmp(a, "--warmup")) warmup = atof(v);
        else if (!strcmp(a, "--idle")) nidle = atoi(v);
        else if (!strcmp(a, "--cpu")) cpu = atoi(v);
        else if (!strcmp(a, "--connect-timeout")) connect_timeout = atof(v);
        else if (!strcmp(a, "--max-connecting")) max_connecting = atoi(v);
        else if (!strcmp(a, "--vs-port")) vs_port = atoi(v);
        else if (!strcmp(a, "--slice-ms")) slice_ms = atof(v);
        else if (!strcmp(a, "--ws")) ws_path = v;
        else usage(argv[0]);
    }
    if (port <= 0 || port > 65535 || size < 1 || pipeline < 1 || nactive < 0 || nidle < 0 || duration <= 0 ||
        warmup < 0 || max_connecting < 1 || nactive + nidle < 1 || vs_port < 0 || vs_port > 65535 ||
        (vs_port && (nidle > 0 || nactive < 1)) || slice_ms < 1)
        usage(argv[0]);
    int nsides = vs_port ? 2 : 1;
    sides[0].port = port;
    sides[1].port = vs_port;
    pin_to_cpu(cpu);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    signal(SIGPIPE, SIG_IGN);
    memset(sbuf, 'x', sizeof sbuf);
    msg_out = msg_in = (uint64_t)size;
    if (ws_path) {  /* one masked text frame (key 0), repeated to fill sbuf; the echo comes unmasked */
        uint8_t hdr[14] = {0x81};
        int h = 2;
        if (size < 126) hdr[1] = (uint8_t)(0x80 | size);
        else if (size < 65536) { hdr[1] = 0x80 | 126; hdr[2] = (uint8_t)(size >> 8); hdr[3] = (uint8_t)size; h = 4; }
        else { hdr[1] = 0x80 | 127; for (int k = 0; k < 8; k++) hdr[2 + k] = (uint8_t)((uint64_t)size >> (56 - 8 * k)); h = 10; }
        h += 4;  /* the masking key, all zero */
        msg_out = (uint64_t)(h + size);
        msg_in = (uint64_t)(h - 4 + size);
        if (msg_out > SEND_CHUNK) { fprintf(stderr, "--ws: --size at most %d\n", SEND_CHUNK - 14); return 2; }
        sbuf_stream = (SEND_CHUNK / msg_out) * msg_out;
        for (uint64_t f = 0; f < sbuf_stream; f += msg_out) memcpy(sbuf + f, hdr, (size_t)h);
        ws_host = host;  /* each connection names its own server's port in Host (servers check it) */
    }
    struct sockaddr_in sin[2];
    for (int k = 0; k < 2; k++) {
        sin[k] = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((unsigned short)sides[k].port)};
        if (inet_pton(AF_INET, host, &sin[k].sin_addr) != 1) { fprintf(stderr, "bad IPv4 address %s\n", host); return 2; }
    }

    for (int k = 0; k < nsides && !cold; k++) {  /* the warm-up every contender gets (see the top) */
        uint64_t w0 = now_ns();
        warm_result[k] = warm_tcp(&sin[k]);
        warm_seconds[k] = (double)(now_ns() - w0) / 1e9;
    }

    nconns = nidle + nactive * nsides;
    conns = calloc((size_t)nconns, sizeof *conns);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (!conns || ep < 0) { perror("setup"); return 1; }
    /* idle ones first, active ones last: the active ones are connected to a server already holding the idle */
    for (int i = 0; i < nconns; i++) {
        conns[i].active = i >= nidle;
        conns[i].side = i >= nidle + nactive;  /* interleaved: the last nactive go to the --vs-port server */
        conns[i].fd = -1;
        conns[i].sent_at = conns[i].active ? calloc((size_t)pipeline, sizeof(uint64_t)) : NULL;
    }
    struct epoll_event evs[MAX_EVENTS];

    /* phase 1: connect everything, one round trip each, at most max_connecting in progress */
    uint64_t t0 = now_ns(), deadline = t0 + (uint64_t)(connect_timeout * 1e9);
    int next = 0, pinging = 0;
    while (next < nconns || pinging > 0) {
        while (next < nconns && pinging < max_connecting) {
            struct conn *c = &conns[next++];
            if (start_connect(c, &sin[c->side]) == 0) pinging++;
        }
        if (now_ns() > deadline) { note_error("connect phase", ETIMEDOUT); break; }
        int n = epoll_wait(ep, evs, MAX_EVENTS, 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            enum state before = c->st;
            if (c->st == CONNECTING) on_connected(c);
            else if (c->st == PINGING || c->st == HELD || c->st == ACTIVE) on_readable(c, &pinging);
            if (c->st == DEAD && (before == CONNECTING || before == PINGING)) pinging--;
        }
    }
    int held[2] = {0, 0};  /* per server: connections that answered their first round trip */
    for (int i = 0; i < nconns; i++) held[conns[i].side] += conns[i].st == HELD;
    double connect_seconds = (double)(now_ns() - t0) / 1e9;

    /* phases 2 and 3: warm-up, then measure (interleaved: side `cur` has the load, in slices) */
    struct run run;
    run_start(&run, nsides, warmup, duration, slice_ms);
    for (int i = nidle; i < nconns; i++)
        if (conns[i].st == HELD && conns[i].side == 0) start_load(&conns[i], run.start);
    int dummy = 0;
    for (;;) {
        uint64_t t = now_ns();
        if (run_tick(&run, t))  /* the other server's turn: its connections start */
            for (int i = nidle; i < nconns; i++)
                if (conns[i].side == run.cur && (conns[i].st == HELD || conns[i].st == ACTIVE)) start_load(&conns[i], t);
        if (t >= run.end) break;
        int n = epoll_wait(ep, evs, MAX_EVENTS, 5);
        if (n < 0 && errno != EINTR) { perror("epoll_wait"); return 1; }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->st == DEAD) continue;
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c, &dummy);
            if (c->st != DEAD && (evs[i].events & EPOLLOUT) && c->to_send) pump(c);
        }
    }
    run_finish(&run);
    int alive[2] = {0, 0};
    for (int i = 0; i < nconns; i++) alive[conns[i].side] += conns[i].st != DEAD;
    for (int k = 0; k < nsides; k++) {
        print_side(&run, k, "", host, nactive, k ? 0 : nidle, held[k], alive[k], size, pipeline, connect_seconds);
        if (cold) printf(", \"warm\": null");
        else printf(", \"warm\": {\"tcp_empty\": \"%s\", \"seconds\": %.3f}", warm_result[k], warm_seconds[k]);
    }
    print_end(&run);
    return 0;
}
