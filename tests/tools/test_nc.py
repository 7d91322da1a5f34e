"""``socklab nc`` against real netcat-openbsd: the same flags mean the same things (issue 17)."""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO

import pytest

pytestmark = [pytest.mark.interop,
              pytest.mark.skipif(shutil.which("nc") is None, reason="netcat-openbsd not installed")]

SOCKLAB = [sys.executable, "-m", "socklab"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", NO_COLOR="1")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_until(stream: IO[bytes], pattern: str, timeout: float = 15.0) -> re.Match[str]:
    """Read ``stream`` line by line until ``pattern`` matches (the readiness signal)."""
    rx = re.compile(pattern)
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(max(0.0, deadline - time.monotonic())):
                break
            line = stream.readline().decode(errors="replace")
            if not line:
                break
            seen.append(line)
            m = rx.search(line)
            if m:
                return m
    raise AssertionError(f"no {pattern!r} in {seen}")


@contextlib.contextmanager
def spawn(args: list[str], stdin: int | None = subprocess.DEVNULL) -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(args, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                         start_new_session=True, bufsize=0)
    try:
        yield p
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        for f in (p.stdin, p.stdout, p.stderr):
            if f is not None:
                f.close()


def test_socklab_listens_real_nc_sends() -> None:
    port = free_port()
    with spawn([*SOCKLAB, "nc", "-l", "-p", str(port)]) as srv:
        assert srv.stderr is not None and srv.stdout is not None
        read_until(srv.stderr, rf"listening on tcp://127\.0\.0\.1:{port}")
        subprocess.run(["nc", "-N", "127.0.0.1", str(port)], input=b"from real nc\n\x00\xff", timeout=15,
                       check=True)
        out, _ = srv.communicate(timeout=15)
        assert out == b"from real nc\n\x00\xff"
        assert srv.returncode == 0


def test_real_nc_listens_socklab_sends() -> None:
    port = free_port()
    with spawn(["nc", "-v", "-l", "-p", str(port)]) as srv:
        assert srv.stderr is not None
        read_until(srv.stderr, "Listening")
        r = subprocess.run([*SOCKLAB, "nc", "-N", f"127.0.0.1:{port}"], input=b"from socklab\n", timeout=15,
                           capture_output=True, env=ENV)
        assert r.returncode == 0, r.stderr
        out, _ = srv.communicate(timeout=15)
        assert out == b"from socklab\n"


def test_dash_N_half_closes_and_keeps_reading() -> None:
    """-N sends FIN when stdin ends and still prints what the peer sends after it."""
    with socket.create_server(("127.0.0.1", 0)) as lst:
        port = lst.getsockname()[1]
        got: list[bytes] = []

        def serve() -> None:
            conn, _ = lst.accept()
            with conn:
                conn.settimeout(15)
                buf = b""
                while chunk := conn.recv(4096):  # until the client's FIN
                    buf += chunk
                got.append(buf)
                conn.sendall(b"after your FIN: " + buf)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        r = subprocess.run([*SOCKLAB, "nc", "-N", "127.0.0.1", str(port)], input=b"abc", timeout=20,
                           capture_output=True, env=ENV)
        t.join(10)
    assert got == [b"abc"]
    assert r.stdout == b"after your FIN: abc", r.stderr
    assert r.returncode == 0


def test_scan_exit_codes_match_nc() -> None:
    with socket.create_server(("127.0.0.1", 0)) as lst:
        open_port = lst.getsockname()[1]
        closed_port = free_port()
        for spec in (str(open_port), str(closed_port), f"{closed_port}", f"{open_port}"):
            ours = subprocess.run([*SOCKLAB, "nc", "-z", "-w", "2", "127.0.0.1", spec], timeout=20,
                                  capture_output=True, env=ENV)
            theirs = subprocess.run(["nc", "-z", "-w", "2", "127.0.0.1", spec], timeout=20, capture_output=True)
            assert ours.returncode == theirs.returncode, (spec, ours.stderr)
        assert subprocess.run(["nc", "-z", "-w", "2", "127.0.0.1", str(open_port)], timeout=20).returncode == 0


def test_udp_datagrams_both_ways() -> None:
    port = free_port(socket.SOCK_DGRAM)
    with spawn([*SOCKLAB, "nc", "-u", "-l", "-p", str(port)], stdin=subprocess.PIPE) as srv, \
            spawn(["nc", "-u", "127.0.0.1", str(port)], stdin=subprocess.PIPE) as cli:
        assert srv.stderr and srv.stdout and srv.stdin and cli.stdin and cli.stdout
        read_until(srv.stderr, rf"listening on udp://127\.0\.0\.1:{port}")
        cli.stdin.write(b"ping\n")
        read_until(srv.stdout, "^ping$")
        srv.stdin.write(b"pong\n")
        read_until(cli.stdout, "^pong$")


def test_user_errors_are_one_line_exit_2() -> None:
    for args, needle in ((["-4", "-6", "127.0.0.1", "1"], "-4 and -6"),
                         (["-l"], "-l needs a PORT"),
                         (["-q", "3", "127.0.0.1", "1"], "-q"),
                         (["--ssl", "--pin", "nothex", "127.0.0.1", "1"], "--pin")):
        r = subprocess.run([*SOCKLAB, "nc", *args], timeout=20, capture_output=True, text=True, env=ENV,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr
