"""``socklab nc`` against real netcat-openbsd: the same flags mean the same things (issue 17)."""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

pytestmark = [pytest.mark.interop]  # netcat-openbsd and curl come from scripts/setup.sh: a missing one fails

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
                         (["-q", "x", "127.0.0.1", "1"], "-q"),
                         (["-p", "99999", "127.0.0.1", "1"], "-p '99999'"),
                         (["-s", "127.0.0.2:x", "127.0.0.1", "1"], "--source '127.0.0.2:x'"),
                         (["--ssl", "--pin", "nothex", "127.0.0.1", "1"], "--pin")):
        r = subprocess.run([*SOCKLAB, "nc", *args], timeout=20, capture_output=True, text=True, env=ENV,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr


def _tls_server(extra: tuple[str, ...] = ()) -> tuple[list[str], int]:
    port = free_port()
    # no -N: the server sends nothing and ends when the client's FIN arrives (its stdin is empty, so
    # -N there would half-close at once, and the client ends at the server's EOF before it sends)
    return [*SOCKLAB, "nc", "-l", "-p", str(port), "--ssl", *extra], port


def _fingerprint(srv: subprocess.Popen[bytes], port: int) -> str:
    assert srv.stderr is not None
    fp = read_until(srv.stderr, r"SHA-256 ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})").group(1)
    read_until(srv.stderr, rf"listening on tls://127\.0\.0\.1:{port}")
    return fp


def test_self_signed_server_and_pinned_client() -> None:
    args, port = _tls_server()
    with spawn(args) as srv:
        fp = _fingerprint(srv, port)
        r = subprocess.run([*SOCKLAB, "nc", "-v", "-N", "--ssl", "--pin", fp.lower().replace(":", ""), "127.0.0.1",
                            str(port)],
                           input=b"over TLS\n", timeout=20, capture_output=True, env=ENV)
        assert r.returncode == 0, r.stderr
        out, err = srv.communicate(timeout=15)
        assert out == b"over TLS\n", (err, r.stderr)


@pytest.mark.parametrize("version", ["TLS1.2", "TLS1.3"])
def test_ssl_dash_N_sends_close_notify_and_fin_and_reads_the_answer_after_them(
        tmp_path: Path, version: str) -> None:
    """--ssl -N: stdin, then close_notify and FIN; the server answers only after that EOF, and it arrives.

    socat's OPENSSL-LISTEN hands the TLS stream to ``wc -c``, which counts until end-of-file: socat
    gives it that end on the client's close_notify (a TCP FIN without one is an error to OpenSSL 3,
    and the old --ssl -N sent only the FIN), then sends the count back and waits ``-t 10`` s for it.
    """
    from socklab.core.selfsigned import make_self_signed

    cert = make_self_signed()
    pem = tmp_path / "server.pem"
    pem.write_bytes(cert.cert_pem + cert.key_pem)
    port = free_port()
    server = ["socat", "-d", "-d", "-t", "10",
              f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,cert={pem},verify=0,"
              f"min-version={version},max-version={version}", "SYSTEM:wc -c"]
    with spawn(server) as srv:
        assert srv.stderr is not None
        read_until(srv.stderr, r"listening on")
        r = subprocess.run([*SOCKLAB, "nc", "-v", "-N", "--ssl", "--pin", cert.fingerprint, "127.0.0.1", str(port)],
                           input=b"x" * 100_000 + b"\nend\n", timeout=30, capture_output=True, env=ENV)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == b"100005", r.stderr  # the count: every byte, then the end of them
        assert b"close_notify, then FIN" in r.stderr and version.replace("TLS", "TLSv").encode() in r.stderr
        assert srv.wait(timeout=15) == 0


def test_wrong_pin_is_refused_in_one_line() -> None:
    args, port = _tls_server()
    with spawn(args) as srv:
        fp = _fingerprint(srv, port)
        wrong = ("00" if not fp.startswith("00") else "11") + fp[2:]
        r = subprocess.run([*SOCKLAB, "nc", "--ssl", "--pin", wrong, "127.0.0.1", str(port)], input="secret\n",
                           timeout=20, capture_output=True, text=True, env=ENV)
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "not the pinned one" in lines[0] and fp in lines[0], r.stderr
        # The refused client did not use up nc -l's one client (listen waits past it): the right
        # pin gets through, and only its bytes arrive.
        ok = subprocess.run([*SOCKLAB, "nc", "-N", "--ssl", "--pin", fp, "127.0.0.1", str(port)], input="right\n",
                            timeout=20, capture_output=True, text=True, env=ENV)
        assert ok.returncode == 0, ok.stderr
        out, _ = srv.communicate(timeout=15)
        assert b"right" in out and b"secret" not in out  # nothing was sent to the wrong server


def test_curl_k_talks_to_the_self_signed_server() -> None:
    args, port = _tls_server()
    with spawn(args) as srv:
        _fingerprint(srv, port)
        subprocess.run(["curl", "-sk", "--max-time", "5", f"https://127.0.0.1:{port}/"], timeout=20,
                       capture_output=True)
        out, _ = srv.communicate(timeout=15)  # curl gave up waiting for an answer and closed
        assert out.startswith(b"GET / HTTP/1.1\r\n")


def test_selfsigned_context_and_pin_unit() -> None:
    import ssl

    from socklab.core.selfsigned import (
        PinMismatch,
        check_pin,
        normalize_pin,
        pinned_client_context,
        self_signed_context,
    )

    ctx, cert = self_signed_context()
    assert isinstance(ctx, ssl.SSLContext)
    assert normalize_pin("sha256:" + cert.fingerprint.replace(":", "").lower()) == cert.fingerprint
    with socket.create_server(("127.0.0.1", 0)) as lst:
        def serve() -> None:
            conn, _ = lst.accept()
            with contextlib.suppress(OSError), ctx.wrap_socket(conn, server_side=True) as t:
                t.recv(1)

        th = threading.Thread(target=serve, daemon=True)
        th.start()
        with socket.create_connection(lst.getsockname(), timeout=10) as raw, \
                pinned_client_context().wrap_socket(raw) as tls:
            assert check_pin(tls, cert.fingerprint) == cert.fingerprint
            with pytest.raises(PinMismatch):
                check_pin(tls, "AA" * 32)
        th.join(10)
