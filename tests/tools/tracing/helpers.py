"""Helpers for the trace tests: run ``socklab trace run`` bounded, a one-shot echo server, a C compiler."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

from socklab.tools.tracing.events import SockEvent
from socklab.tools.tracing.lifecycle import Lifecycle
from socklab.tools.tracing.strace_parse import StraceParser


def lifecycle_events(text: str, lc: Lifecycle | None = None, finish: bool = True) -> list[SockEvent]:
    """strace's output ``text`` (whole, then EOF) through the parser and ``lc``: the socket events, and
    with ``finish`` those of the program's end too."""
    lc = lc or Lifecycle()
    p = StraceParser()
    p.receive_data(text.encode())
    p.receive_data(b"")
    out: list[SockEvent] = []
    while (ev := p.next_event()) is not None:
        out.extend(lc.feed(ev))
    return out + (lc.finish() if finish else [])


needs_strace = pytest.mark.interop  # strace comes from scripts/setup.sh: without it these tests fail, never skip


def socklab(*args: str, timeout: float = 60.0, env: dict[str, str] | None = None,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    """``socklab ARGS`` to its end (bounded), output captured."""
    full_env = dict(os.environ, NO_COLOR="1", PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "socklab", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, stdin=subprocess.DEVNULL, cwd=cwd)


@contextmanager
def trace_run(*args: str, text: bool = True, stdout: int = subprocess.PIPE, stdin: int = subprocess.DEVNULL,
              **popen: Any) -> Iterator[subprocess.Popen[Any]]:
    """``socklab trace run ARGS`` running in its own process group (stderr piped); at the end of the
    block the group is killed if it is still running, so no traced program outlives the test."""
    env = dict(os.environ, NO_COLOR="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "socklab", "trace", "run", *args], stdin=stdin, stdout=stdout,
                            stderr=subprocess.PIPE, text=text, env=env, start_new_session=True, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def first_line(stream: IO[Any] | None, what: str, timeout: float = 30.0) -> Any:
    """The next line of ``stream`` once there is one; fails with ``what`` if none comes within ``timeout``."""
    assert stream is not None
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        assert sel.select(timeout), what
    return stream.readline()


@contextmanager
def echo_server(conns: int = 1) -> Iterator[int]:
    """A plain echo server on 127.0.0.1:0 for ``conns`` connections (each until EOF); yields its port."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(30)
    port = srv.getsockname()[1]

    def serve() -> None:
        for _ in range(conns):
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(30)
                while data := conn.recv(65536):
                    conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield port
    finally:
        srv.close()
        t.join(10)


def compile_c(tmp_path: Path, name: str, source: str) -> Path:
    """Compile ``source`` with cc (build-essential) into tmp_path/name."""
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    exe = tmp_path / name
    subprocess.run(["cc", "-O0", "-o", str(exe), str(src)], check=True, timeout=60, capture_output=True)
    return exe


C_CLIENT = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &addr.sin_addr);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("connect"); return 1; }
    const char *msg = "hello world";
    write(fd, msg, strlen(msg));
    char buf[100];
    ssize_t got = 0;
    while (got < (ssize_t)strlen(msg)) {
        ssize_t n = read(fd, buf + got, sizeof buf - got);
        if (n <= 0) break;
        got += n;
    }
    printf("got %zd bytes\n", got);
    shutdown(fd, SHUT_WR);
    read(fd, buf, sizeof buf);
    close(fd);
    return 0;
}
"""
