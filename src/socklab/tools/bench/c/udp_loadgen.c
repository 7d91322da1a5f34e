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

#define NBUCKETS 1024
#define MAX_EVENTS 512
#define PING_SIZE 16
#define LOST_NS 1000000000ull

struct flow {
    int fd, side, held, waiting;
    uint64_t sent_at;
};

struct side {
    int port, running;
    int64_t inflight;
    uint64_t hist[NBUCKETS];
    uint64_t requests, nbytes, lat_sum, lat_max, slices, active_ns;
};

static struct flow *flows;
static struct side sides[2];
static int nflows, nactive = 20, size = 64, cold, recording;
static double duration = 10, warmup = 1, connect_timeout = 30, slice_ms = 200;
static char sbuf[65536], rbuf[65536];
static uint64_t errors, connect_errors;
static char first_error[160];
static const char *warm_result[2];
static double warm_seconds[2];

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int bucket_of(uint64_t v) {
    if (v < 16) return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int idx = (msb - 3) * 16 + (int)((v >> (msb - 4)) & 15);
    return idx < NBUCKETS ? idx : NBUCKETS - 1;
}

static double bucket_mid(int idx) {
    if (idx < 16) return idx;
    int msb = idx / 16 + 3, sub = idx % 16;
    double low = (double)((uint64_t)(16 + sub) << (msb - 4));
    return low + (double)(1ull << (msb - 4)) / 2.0;
}

static double percentile_us(const struct side *s, double q) {
    if (!s->requests) return 0;
    uint64_t want = (uint64_t)(q * (double)s->requests), seen = 0;
    if (want >= s->requests) want = s->requests - 1;
    for (int i = 0; i < NBUCKETS; i++) {
        seen += s->hist[i];
        if (seen > want) return bucket_mid(i) / 1000.0;
    }
    return (double)s->lat_max / 1000.0;
}

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
        if (recording) {
            uint64_t lat = t - f->sent_at;
            s->requests++;
            s->nbytes += (uint64_t)n;
            s->hist[bucket_of(lat)]++;
            s->lat_sum += lat;
            if (lat > s->lat_max) s->lat_max = lat;
        }
        if (s->running) start_flow(f, t);
    }
}

static double cpu_seconds(struct rusage *u, struct rusage *s, int sys) {
    const struct timeval *a = sys ? &u->ru_stime : &u->ru_utime, *b = sys ? &s->ru_stime : &s->ru_utime;
    return (double)(a->tv_sec - b->tv_sec) + (double)(a->tv_usec - b->tv_usec) / 1e6;
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
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0) perror("sched_setaffinity");
    }
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

    struct rusage ru0, ru1;
    uint64_t start = now_ns(), measure_at = start + (uint64_t)(warmup * 1e9);
    uint64_t end = measure_at + (uint64_t)(duration * 1e9), measured_from = start;
    uint64_t slice_ns = (uint64_t)(slice_ms * 1e6), slice_from = start, slice_end = start + slice_ns;
    int cur = 0, draining = 0, dummy = 0;
    sides[0].running = 1;
    sides[0].slices = 1;
    for (int i = 0; i < nflows; i++)
        if (flows[i].held && flows[i].side == 0) start_flow(&flows[i], start);
    if (warmup == 0) { recording = 1; getrusage(RUSAGE_SELF, &ru0); fprintf(stderr, "measure-start\n"); }
    uint64_t last_scan = start;
    for (;;) {
        uint64_t t = now_ns();
        if (!recording && t >= measure_at) {
            recording = 1;
            measured_from = t;
            for (int k = 0; k < nsides; k++) sides[k].slices = k == cur;
            getrusage(RUSAGE_SELF, &ru0);
            fprintf(stderr, "measure-start\n");
        }
        if (t - last_scan > 100000000ull) {  /* a datagram lost for 1 s: send it again */
            last_scan = t;
            for (int i = 0; i < nflows; i++) {
                struct flow *f = &flows[i];
                if (f->held && f->waiting && t - f->sent_at > LOST_NS) { errors++; note_error("echo lost", ETIMEDOUT); send_one(f, size, t); }
            }
        }
        if (nsides == 2) {
            if (!draining && t >= slice_end) { draining = 1; sides[cur].running = 0; }
            if (draining && sides[cur].inflight <= 0) {
                if (recording) sides[cur].active_ns += t - (slice_from > measured_from ? slice_from : measured_from);
                cur ^= 1;
                draining = 0;
                slice_from = t;
                slice_end = t + slice_ns;
                sides[cur].running = 1;
                if (recording) sides[cur].slices++;
                for (int i = 0; i < nflows; i++)
                    if (flows[i].side == cur && flows[i].held) start_flow(&flows[i], t);
            }
        }
        if (t >= end) break;
        int n = epoll_wait(ep, evs, MAX_EVENTS, 5);
        if (n < 0 && errno != EINTR) { perror("epoll_wait"); return 1; }
        for (int i = 0; i < n; i++) on_readable(evs[i].data.ptr, &dummy);
    }
    uint64_t measured_to = now_ns();
    getrusage(RUSAGE_SELF, &ru1);
    fprintf(stderr, "measure-end\n");
    fflush(stderr);
    if (warmup == 0) measured_from = start;
    if (nsides == 2) sides[cur].active_ns += measured_to - (slice_from > measured_from ? slice_from : measured_from);
    else sides[0].active_ns = measured_to - measured_from;
    double secs = (double)(measured_to - measured_from) / 1e9;
    double user = cpu_seconds(&ru1, &ru0, 0), sys = cpu_seconds(&ru1, &ru0, 1);
    for (int k = 0; k < nsides; k++) {
        const struct side *s = &sides[k];
        double on = (double)s->active_ns / 1e9;
        if (k == 1) printf(", \"vs\": ");
        printf("{\"target\": \"udp://%s:%d\", \"connections\": %d, \"idle\": 0, \"held\": %d, \"alive\": %d, "
               "\"size\": %d, \"pipeline\": 1, \"warmup\": %.3f, \"duration\": %.6f, \"active_seconds\": %.6f, "
               "\"slices\": %llu, \"connect_seconds\": %.3f, "
               "\"requests\": %llu, \"bytes\": %llu, \"rps\": %.1f, \"mbps\": %.3f, "
               "\"latency_us\": {\"p50\": %.2f, \"p90\": %.2f, \"p99\": %.2f, \"p999\": %.2f, \"max\": %.2f, "
               "\"mean\": %.2f}, \"cpu\": {\"user\": %.4f, \"sys\": %.4f, \"percent\": %.1f}, "
               "\"errors\": %llu, \"connect_errors\": %llu, \"first_error\": \"%s\"",
               host, s->port, nactive, held[k], held[k], size, warmup, secs, on, (unsigned long long)s->slices,
               connect_seconds, (unsigned long long)s->requests, (unsigned long long)s->nbytes,
               on > 0 ? (double)s->requests / on : 0.0, on > 0 ? (double)s->nbytes / on / 1e6 : 0.0,
               percentile_us(s, 0.50), percentile_us(s, 0.90), percentile_us(s, 0.99), percentile_us(s, 0.999),
               (double)s->lat_max / 1000.0, s->requests ? (double)s->lat_sum / (double)s->requests / 1000.0 : 0.0,
               user, sys, secs > 0 ? (user + sys) / secs * 100.0 : 0.0,
               (unsigned long long)errors, (unsigned long long)connect_errors, first_error);
        if (cold) printf(", \"warm\": null");
        else printf(", \"warm\": {\"udp_empty\": \"%s\", \"seconds\": %.3f}", warm_result[k], warm_seconds[k]);
    }
    printf(nsides == 2 ? "}}\n" : "}\n");
    return 0;
}
