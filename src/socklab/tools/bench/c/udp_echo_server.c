/*
 * udp_echo_server.c - the C yardstick for `socklab bench echo --udp`: a blocking recvfrom/sendto loop.
 *
 * Why: a UDP echo server has nothing to multiplex (one socket), so the fastest plain server is
 * this loop; the Python references and socklab's engines are measured against it with the same
 * generator, which shows the generator is not the limit. Every datagram goes back to its sender,
 * the empty one too.
 *
 * Usage: udp_echo_server [--port 0] [--host 127.0.0.1]; prints "c-udp-echo listening on udp://H:P".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--host")) host = argv[i + 1];
        else { fprintf(stderr, "usage: %s [--port P] [--host H]\n", argv[0]); return 2; }
    }
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (fd < 0 || inet_pton(AF_INET, host, &sin.sin_addr) != 1 || bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0) {
        perror("bind");
        return 1;
    }
    socklen_t len = sizeof sin;
    getsockname(fd, (struct sockaddr *)&sin, &len);
    printf("c-udp-echo listening on udp://%s:%d\n", host, ntohs(sin.sin_port));
    fflush(stdout);
    static char buf[65536];
    for (;;) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &plen);
        if (n < 0) continue;
        sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&peer, plen);
    }
}
