/*
 * common.h - what the load generators (loadgen.c, udp_loadgen.c, tls_loadgen.c) share.
 *
 * Why: the three measure the same way - one monotonic clock, one latency histogram, the same run
 * (warm-up, then the measured window; with a second server, turns of --slice-ms between the two),
 * the same warm-up connection and the same JSON per server - so that a figure means the same
 * whichever generator took it. Each generator is one translation unit that includes this file, so
 * everything here is static (inline: a generator need not use all of it); build.py hashes this file
 * with each source, so a change here recompiles them all.
 *
 * A generator keeps, per server ("side"), the messages in flight and, while `recording`, every
 * completed round trip (record_round_trip). Its event loop calls run_tick() once per turn of the
 * loop; when that returns 1, the load has passed to sides[run.cur] and the generator starts it
 * there. run_finish() closes the window; print_side() writes one server's figures.
 */
#ifndef SOCKLAB_BENCH_COMMON_H
#define SOCKLAB_BENCH_COMMON_H

#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define NBUCKETS 1024

/* What one server got: round trips, bytes and latencies while recording, and its share of the time. */
struct side {
    int port;
    int running;          /* its connections or flows queue a new message when one completes */
    int64_t inflight;     /* messages sent and not yet fully echoed */
    uint64_t hist[NBUCKETS];
    uint64_t requests, nbytes, lat_sum, lat_max, slices;
    uint64_t active_ns;   /* recorded time this side had the load (interleaved runs) */
};

static struct side sides[2];
static int recording;                /* inside the measured window */
static uint64_t errors, connect_errors;
static char first_error[200];

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Log buckets: 16 sub-buckets per power of two (~3 % resolution), exact below 16 ns. */
static inline int bucket_of(uint64_t v) {
    if (v < 16) return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int idx = (msb - 3) * 16 + (int)((v >> (msb - 4)) & 15);
    return idx < NBUCKETS ? idx : NBUCKETS - 1;
}

static inline double bucket_mid(int idx) {  /* middle of the bucket, nanoseconds */
    if (idx < 16) return idx;
    int msb = idx / 16 + 3, sub = idx % 16;
    double low = (double)((uint64_t)(16 + sub) << (msb - 4));
    return low + (double)(1ull << (msb - 4)) / 2.0;
}

static inline double percentile_us(const struct side *s, double q) {
    if (!s->requests) return 0;
    uint64_t want = (uint64_t)(q * (double)s->requests);
    if (want >= s->requests) want = s->requests - 1;
    uint64_t seen = 0;
    for (int i = 0; i < NBUCKETS; i++) {
        seen += s->hist[i];
        if (seen > want) return bucket_mid(i) / 1000.0;
    }
    return (double)s->lat_max / 1000.0;
}

/* One completed round trip of `lat` ns that brought back `nbytes` (0: counted elsewhere). */
static inline void record_round_trip(struct side *s, uint64_t lat, uint64_t nbytes) {
    s->requests++;
    s->nbytes += nbytes;
    s->hist[bucket_of(lat)]++;
    s->lat_sum += lat;
    if (lat > s->lat_max) s->lat_max = lat;
}

static inline double cpu_seconds(const struct rusage *u, const struct rusage *s, int sys) {
    const struct timeval *a = sys ? &u->ru_stime : &u->ru_utime, *b = sys ? &s->ru_stime : &s->ru_utime;
    return (double)(a->tv_sec - b->tv_sec) + (double)(a->tv_usec - b->tv_usec) / 1e6;
}

static inline void pin_to_cpu(int cpu) {  /* --cpu N; negative: not pinned */
    if (cpu < 0) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0) perror("sched_setaffinity");
}

/*
 * The warm-up connection every TCP contender gets: open, send nothing, close our side, wait (at
 * most 5 s) for the server to close its own. An asyncio server that never met an EOF reads every
 * message into a fresh 256 KiB block; the first EOF raises glibc's mmap threshold for the life of
 * the process, and every real server meets one within seconds.
 */
static inline const char *warm_tcp(const struct sockaddr_in *sin) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return "socket failed";
    struct timeval tv = {.tv_sec = 5, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);  /* bounds connect() too */
    if (connect(fd, (const struct sockaddr *)sin, sizeof *sin) < 0) { close(fd); return "connect failed"; }
    shutdown(fd, SHUT_WR);
    char b[256];
    ssize_t n;
    int got = 0;
    while ((n = recv(fd, b, sizeof b, 0)) > 0) got = 1;
    int err = errno;
    close(fd);
    if (n == 0) return got ? "server sent data, then closed" : "closed by server";
    return err == EAGAIN || err == EWOULDBLOCK ? "server kept it open for 5 s"
           : err == ECONNRESET ? "reset by server" : "recv failed";
}

/* The run's clock: --warmup seconds of load, then --duration measured; with two sides, turns. */
struct run {
    int nsides, cur, draining;
    double warmup;
    uint64_t start, measure_at, end, measured_from, measured_to;
    uint64_t slice_ns, slice_from, slice_end;
    struct rusage ru0, ru1;
};

static inline void begin_recording(struct run *r) {
    recording = 1;
    getrusage(RUSAGE_SELF, &r->ru0);
    fprintf(stderr, "measure-start\n");  /* the runner samples the server's CPU and memory here */
}

/* Start the clock; side 0 has the load first (the caller starts it on side 0's connections). */
static inline void run_start(struct run *r, int nsides, double warmup, double duration, double slice_ms) {
    memset(r, 0, sizeof *r);
    r->nsides = nsides;
    r->warmup = warmup;
    r->start = r->measured_from = r->slice_from = now_ns();
    r->measure_at = r->start + (uint64_t)(warmup * 1e9);
    r->end = r->measure_at + (uint64_t)(duration * 1e9);
    r->slice_ns = (uint64_t)(slice_ms * 1e6);
    r->slice_end = r->start + r->slice_ns;
    sides[0].running = 1;
    sides[0].slices = 1;
    if (warmup == 0) begin_recording(r);
}

/*
 * Once per turn of the event loop, at time t: start recording when the warm-up is over; with two
 * sides, end the current side's slice (no new messages, the ones in flight finish), then hand the
 * load to the other side. Returns 1 when sides[r->cur] has just been given the load.
 */
static inline int run_tick(struct run *r, uint64_t t) {
    if (!recording && t >= r->measure_at) {
        r->measured_from = t;
        for (int k = 0; k < r->nsides; k++) sides[k].slices = k == r->cur;
        begin_recording(r);
    }
    if (r->nsides != 2) return 0;
    if (!r->draining && t >= r->slice_end) {  /* this side's turn is over: finish what is in flight */
        r->draining = 1;
        sides[r->cur].running = 0;
    }
    if (!r->draining || sides[r->cur].inflight > 0) return 0;
    if (recording) sides[r->cur].active_ns += t - (r->slice_from > r->measured_from ? r->slice_from : r->measured_from);
    r->cur ^= 1;
    r->draining = 0;
    r->slice_from = t;
    r->slice_end = t + r->slice_ns;
    sides[r->cur].running = 1;
    if (recording) sides[r->cur].slices++;
    return 1;
}

/* Close the measured window: the slice in progress counts up to the end. */
static inline void run_finish(struct run *r) {
    r->measured_to = now_ns();
    getrusage(RUSAGE_SELF, &r->ru1);
    fprintf(stderr, "measure-end\n");
    fflush(stderr);
    if (r->warmup == 0) r->measured_from = r->start;
    uint64_t from = r->slice_from > r->measured_from ? r->slice_from : r->measured_from;
    if (r->nsides == 2) sides[r->cur].active_ns += r->measured_to - from;
    else sides[0].active_ns = r->measured_to - r->measured_from;
}

/*
 * Side k's figures as JSON, without the closing brace: the caller adds its "warm" member, and
 * print_end() closes the object (side 1 is the "vs" member of side 0's object).
 */
static inline void print_side(const struct run *r, int k, const char *scheme, const char *host, int connections,
                              int idle, int held, int alive, int size, int pipeline, double connect_seconds) {
    const struct side *s = &sides[k];
    double secs = (double)(r->measured_to - r->measured_from) / 1e9, on = (double)s->active_ns / 1e9;
    double user = cpu_seconds(&r->ru1, &r->ru0, 0), sys = cpu_seconds(&r->ru1, &r->ru0, 1);
    if (k == 1) printf(", \"vs\": ");
    printf("{\"target\": \"%s%s:%d\", \"connections\": %d, \"idle\": %d, \"held\": %d, \"alive\": %d, "
           "\"size\": %d, \"pipeline\": %d, \"warmup\": %.3f, \"duration\": %.6f, \"active_seconds\": %.6f, "
           "\"slices\": %llu, \"connect_seconds\": %.3f, "
           "\"requests\": %llu, \"bytes\": %llu, \"rps\": %.1f, \"mbps\": %.3f, "
           "\"latency_us\": {\"p50\": %.2f, \"p90\": %.2f, \"p99\": %.2f, \"p999\": %.2f, \"max\": %.2f, "
           "\"mean\": %.2f}, \"cpu\": {\"user\": %.4f, \"sys\": %.4f, \"percent\": %.1f}, "
           "\"errors\": %llu, \"connect_errors\": %llu, \"first_error\": \"%s\"",
           scheme, host, s->port, connections, idle, held, alive, size, pipeline, r->warmup, secs, on,
           (unsigned long long)s->slices, connect_seconds,
           (unsigned long long)s->requests, (unsigned long long)s->nbytes, on > 0 ? (double)s->requests / on : 0.0,
           on > 0 ? (double)s->nbytes / on / 1e6 : 0.0,
           percentile_us(s, 0.50), percentile_us(s, 0.90), percentile_us(s, 0.99), percentile_us(s, 0.999),
           (double)s->lat_max / 1000.0, s->requests ? (double)s->lat_sum / (double)s->requests / 1000.0 : 0.0,
           user, sys, secs > 0 ? (user + sys) / secs * 100.0 : 0.0,
           (unsigned long long)errors, (unsigned long long)connect_errors, first_error);
}

static inline void print_end(const struct run *r) { printf(r->nsides == 2 ? "}}\n" : "}\n"); }

#endif
