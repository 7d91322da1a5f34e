/*
 * udp_loadgen.c - the UDP echo load generator behind `socklab bench echo --udp`.
 *
 * Why C: as for loadgen.c, a load generator must be faster than what it measures; a Python one
 * spends more CPU per datagram than the servers it would measure.
 *
 * -c N flows, each one connected UDP socket with one datagram of -s bytes in flight (ping-pong):
 * a flow sends, waits for the echo (any datagram on its socket), records the round trip, sends the
 * next. A datagram lost (no echo within 1 s) is sent again and counted in "errors".
 *
 * Phases, as loadgen.c: warm-up of each server (issue 19: one EMPTY datagram, then a 16-byte one;
 * the reply to the 16-byte one proves the server has handled the empty one, since one socket's
 * datagrams arrive in order on loopback; "warm": {"udp_empty": "echoed" | "dropped"} says whether it
 * came back - every engine should echo it, as epoll and threads do), then one 16-byte round trip
 * per flow ("held"), --warmup seconds of load, --duration seconds measured. "measure-start" and
 * "measure-end" on stderr; one JSON object on stdout with the same keys as loadgen.c's.
 * --cold skips the empty datagram. --vs-port Q: a second server takes turns with the first in
 * slices of --slice-ms (its figures in "vs").
 *
 * Usage: udp_loadgen --port P [--host 127.0.0.1] [-c 20] [-s 64] [-d 10] [-w 1] [--cpu N]
 *                    [--connect-timeout 30] [--vs-port Q] [--slice-ms 200] [--cold]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
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
#define PING_SIZE 16
#define LOST_NS 1000000000ull

struct flow {
    int fd, side, held, waiting;
    uint64_t sent_at;
};

static struct flow *flows;
static int nflows, nactive = 20, size = 64, cold;
static double duration = 10, warmup = 1, connect_timeout = 30, slice_ms = 200;
static char sbuf[65536], rbuf[65536];
static const char *warm_result[2];
static double warm_seconds[2];

static void note_error(const char *what, int err) {
    if (!first_error[0]) snprintf(first_error, sizeof first_error, "%s: %s", what, strerror(err));
}

static int udp_socket(const struct sockaddr_in *sin, int nonblock) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) return -1;
    if (connect(fd, (const struct sockaddr *)sin, sizeof *sin) < 0) { close(fd); return -1; }
    return fd;
}

/* The warm-up: an empty datagram, then a 16-byte one; wait (at most 5 s) for the 16-byte echo. */
static const char *warm_udp(const struct sockaddr_in *sin) {
    int fd = udp_socket(sin, 0);
    if (fd < 0) return "socket failed";
    struct timeval tv = {.tv_sec = 5, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    const char *res = "no reply to the 16-byte datagram within 5 s";
    int empty_back = 0;
    if (send(fd, sbuf, 0, 0) < 0 || send(fd, sbuf, PING_SIZE, 0) < 0) { close(fd); return "send failed"; }
    for (;;) {
        ssize_t n = recv(fd, rbuf, sizeof rbuf, 0);
        if (n < 0) break;
        if (n == 0) empty_back = 1;
        else { res = empty_back ? "echoed" : "dropped"; break; }
    }
    close(fd);
    return res;
}

static void send_one(struct flow *f, int len, uint64_t t) {
    if (send(f->fd, sbuf, (size_t)len, 0) < 0 && errno != EAGAIN && errno != ECONNREFUSED) note_error("send", errno);
    f->sent_at = t;
    f->waiting = 1;
}

static void start_flow(struct flow *f, uint64_t t) {
    sides[f->side].inflight++;
    send_one(f, size, t);
}

static void on_readable(struct flow *f, int *pinging) {
    for (;;) {
        ssize_t n = recv(f->fd, rbuf, sizeof rbuf, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) { note_error("recv", errno); if (f->held) errors++; }
            return;
        }
        if (!f->waiting || (f->held && n != size)) continue;  /* a late echo of one sent again: ignore */
        uint64_t t = now_ns();
        f->waiting = 0;
        if (!f->held) { f->held = 1; (*pinging)--; continue; }
        struct side *s = &sides[f->side];
        s->inflight--;
        if (recording) record_round_trip(s, t - f->sent_at, (uint64_t)n);
        if (s->running) start_flow(f, t);
    }
}

static void usage(const char *me) {
    fprintf(stderr, "usage: %s --port P [--host H] [-c FLOWS] [-s SIZE] [-d SECONDS] [-w WARMUP] [--cpu N] "
            "[--connect-timeout S] [--vs-port Q] [--slice-ms MS] [--cold]\n", me);
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
        else if (!strcmp(a, "--connect-timeout")) connect_timeout = atof(v);
        else if (!strcmp(a, "--vs-port")) vs_port = atoi(v);
        else if (!strcmp(a, "--slice-ms")) slice_ms = atof(v);
        else usage(argv[0]);
    }
    if (port <= 0 || port > 65535 || size < 1 || size > (int)sizeof sbuf || nactive < 1 || duration <= 0 ||
        warmup < 0 || vs_port < 0 || vs_port > 65535 || slice_ms < 1)
        usage(argv[0]);
    int nsides = vs_port ? 2 : 1;
    sides[0].port = port;
    sides[1].port = vs_port;
    pin_to_cpu(cpu);
    memset(sbuf, 'x', sizeof sbuf);
    struct sockaddr_in sin[2];
    for (int k = 0; k < 2; k++) {
        sin[k] = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((unsigned short)sides[k].port)};
        if (inet_pton(AF_INET, host, &sin[k].sin_addr) != 1) { fprintf(stderr, "bad IPv4 address %s\n", host); return 2; }
    }
    for (int k = 0; k < nsides && !cold; k++) {
        uint64_t w0 = now_ns();
        warm_result[k] = warm_udp(&sin[k]);
        warm_seconds[k] = (double)(now_ns() - w0) / 1e9;
    }
    nflows = nactive * nsides;
    flows = calloc((size_t)nflows, sizeof *flows);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (!flows || ep < 0) { perror("setup"); return 1; }
    int pinging = 0;
    uint64_t t0 = now_ns();
    for (int i = 0; i < nflows; i++) {
        struct flow *f = &flows[i];
        f->side = i >= nactive;
        f->fd = udp_socket(&sin[f->side], 1);
        if (f->fd < 0) { connect_errors++; note_error("socket", errno); continue; }
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = f};
        epoll_ctl(ep, EPOLL_CTL_ADD, f->fd, &e);
        send_one(f, PING_SIZE, t0);
        pinging++;
    }
    struct epoll_event evs[MAX_EVENTS];
    uint64_t deadline = t0 + (uint64_t)(connect_timeout * 1e9);
    while (pinging > 0) {  /* phase 1: one 16-byte round trip per flow, sent again every 200 ms */
        uint64_t t = now_ns();
        if (t > deadline) { note_error("first round trip", ETIMEDOUT); break; }
        for (int i = 0; i < nflows; i++)
            if (flows[i].fd >= 0 && !flows[i].held && t - flows[i].sent_at > 200000000ull) send_one(&flows[i], PING_SIZE, t);
        int n = epoll_wait(ep, evs, MAX_EVENTS, 50);
        for (int i = 0; i < n; i++) on_readable(evs[i].data.ptr, &pinging);
    }
    int held[2] = {0, 0};
    for (int i = 0; i < nflows; i++) {
        held[flows[i].side] += flows[i].held;
        if (!flows[i].held && flows[i].fd >= 0) connect_errors++;
    }
    double connect_seconds = (double)(now_ns() - t0) / 1e9;

    struct run run;
    run_start(&run, nsides, warmup, duration, slice_ms);
    int dummy = 0;
    for (int i = 0; i < nflows; i++)
        if (flows[i].held && flows[i].side == 0) start_flow(&flows[i], run.start);
    uint64_t last_scan = run.start;
    for (;;) {
        uint64_t t = now_ns();
        if (t - last_scan > 100000000ull) {  /* a datagram lost for 1 s: send it again */
            last_scan = t;
            for (int i = 0; i < nflows; i++) {
                struct flow *f = &flows[i];
                if (f->held && f->waiting && t - f->sent_at > LOST_NS) { errors++; note_error("echo lost", ETIMEDOUT); send_one(f, size, t); }
            }
        }
        if (run_tick(&run, t))  /* the other server's turn: its flows start */
            for (int i = 0; i < nflows; i++)
                if (flows[i].side == run.cur && flows[i].held) start_flow(&flows[i], t);
        if (t >= run.end) break;
        int n = epoll_wait(ep, evs, MAX_EVENTS, 5);
        if (n < 0 && errno != EINTR) { perror("epoll_wait"); return 1; }
        for (int i = 0; i < n; i++) on_readable(evs[i].data.ptr, &dummy);
    }
    run_finish(&run);
    for (int k = 0; k < nsides; k++) {
        print_side(&run, k, "udp://", host, nactive, 0, held[k], held[k], size, 1, connect_seconds);
        if (cold) printf(", \"warm\": null");
        else printf(", \"warm\": {\"udp_empty\": \"%s\", \"seconds\": %.3f}", warm_result[k], warm_seconds[k]);
    }
    print_end(&run);
    return 0;
}
