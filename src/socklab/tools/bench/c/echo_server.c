/*
 * echo_server.c - the yardstick: a single-threaded epoll echo server in plain C.
 *
 * Why this exists: `socklab bench echo` compares every engine with the fastest thing one core can
 * do on this machine. This is that thing, written the obvious way and nothing more: non-blocking
 * sockets, one epoll instance, one reused 64 KiB read buffer, TCP_NODELAY, and a per-connection
 * leftover buffer only when send() was partial (then the server stops reading that peer until the
 * leftover is gone: the same backpressure socklab's engines apply).
 *
 * Usage: echo_server [--host 127.0.0.1] [--port 0] [--edge]
 *   --edge   edge-triggered epoll (read/accept until EAGAIN); the default is level-triggered.
 * Prints "c-echo listening on tcp://HOST:PORT (epoll, level|edge)" once bound, then serves until
 * SIGTERM/SIGINT. Compiled by socklab.tools.bench.build with gcc -O2.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_SIZE 65536
#define MAX_EVENTS 512

struct conn {
    int fd;
    char *pending;     /* bytes send() did not take yet */
    size_t plen, poff;
};

static char rbuf[READ_SIZE];
static int ep;
static int edge;
static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

static void die(const char *what) { perror(what); exit(1); }

static void set_events(struct conn *c, unsigned int ev) {
    struct epoll_event e = {.events = ev | (edge ? EPOLLET : 0), .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e) < 0) die("epoll_ctl mod");
}

static void close_conn(struct conn *c) {
    close(c->fd); /* also removes it from the epoll set */
    free(c->pending);
    free(c);
}

/* Send what is left over; returns 0 when all is out, 1 when the socket is full, -1 on error. */
static int flush(struct conn *c) {
    while (c->poff < c->plen) {
        ssize_t n = send(c->fd, c->pending + c->poff, c->plen - c->poff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 1;
            return -1;
        }
        c->poff += (size_t)n;
    }
    free(c->pending);
    c->pending = NULL;
    c->plen = c->poff = 0;
    return 0;
}

/* Read and echo; returns -1 when the connection must be closed. */
static int on_readable(struct conn *c) {
    for (;;) {
        ssize_t n = recv(c->fd, rbuf, sizeof rbuf, 0);
        if (n == 0) return -1;  /* EOF: echo has nothing left to send back */
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            return -1;
        }
        ssize_t off = 0;
        while (off < n) {
            ssize_t w = send(c->fd, rbuf + off, (size_t)(n - off), MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                return -1;
            }
            off += w;
        }
        if (off < n) {  /* keep the rest, stop reading until it is out */
            c->plen = (size_t)(n - off);
            c->poff = 0;
            c->pending = malloc(c->plen);
            if (!c->pending) die("malloc");
            memcpy(c->pending, rbuf + off, c->plen);
            set_events(c, EPOLLOUT);
            return 0;
        }
        if (!edge) return 0;  /* level-triggered: epoll will tell us again */
    }
}

static void on_accept(int lfd) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) perror("accept4");
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) die("calloc");
        c->fd = fd;
        struct epoll_event e = {.events = EPOLLIN | (edge ? EPOLLET : 0), .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0) die("epoll_ctl add");
        if (!edge) return;
    }
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--host") && i + 1 < argc) host = argv[++i];
        else if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--edge")) edge = 1;
        else { fprintf(stderr, "usage: %s [--host H] [--port P] [--edge]\n", argv[0]); return 2; }
    }
    struct rlimit rl;  /* the connection sweep needs 10,000+ descriptors */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (inet_pton(AF_INET, host, &sin.sin_addr) != 1) { fprintf(stderr, "bad IPv4 address %s\n", host); return 2; }
    if (bind(lfd, (struct sockaddr *)&sin, sizeof sin) < 0) die("bind");
    if (listen(lfd, 4096) < 0) die("listen");
    socklen_t sl = sizeof sin;
    getsockname(lfd, (struct sockaddr *)&sin, &sl);

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event le = {.events = EPOLLIN | (edge ? EPOLLET : 0), .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &le) < 0) die("epoll_ctl listen");

    printf("c-echo listening on tcp://%s:%d (epoll, %s)\n", host, ntohs(sin.sin_port), edge ? "edge" : "level");
    fflush(stdout);

    struct epoll_event evs[MAX_EVENTS];
    while (!stop) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) { on_accept(lfd); continue; }
            if (c->pending) {  /* waiting for EPOLLOUT */
                int r = flush(c);
                if (r < 0) { close_conn(c); continue; }
                if (r == 0) {
                    set_events(c, EPOLLIN);
                    if (edge && on_readable(c) < 0) close_conn(c);  /* data may have queued meanwhile */
                }
                continue;
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                if (on_readable(c) < 0) close_conn(c);
            }
        }
    }
    return 0;
}
