"""``--pin SHA256`` on every client that speaks TLS, and ``http serve --tls-self-signed`` (issue 17).

One option definition (``ClientSettings.pin``) reaches ``connect``, ``echo client``, ``chat connect``
and ``rpc call``; each is run against a self-signed server: the printed fingerprint connects (no
CA), any other fails in one line naming the certificate, exit 1 (a failed certificate check, as
``--cafile`` failing is). Usage errors around it are one line, exit 2.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

pytestmark = pytest.mark.timeout(120)

SOCKLAB = [sys.executable, "-m", "socklab"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", NO_COLOR="1")
WAIT = 20.0
FP = r"SHA-256 ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})"


def read_until(stream: IO[bytes], pattern: str, timeout: float = WAIT) -> re.Match[str]:
    rx, seen = re.compile(pattern), []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while time.monotonic() < deadline and sel.select(max(0.0, deadline - time.monotonic())):
            line = stream.readline().decode(errors="replace")
            if not line:
                break
            seen.append(line)
            if m := rx.search(line):
                return m
    raise AssertionError(f"no {pattern!r} in {seen}")


@contextlib.contextmanager
def server(*args: str, stdin: int = subprocess.DEVNULL) -> Iterator[subprocess.Popen[bytes]]:
    """A socklab server with stderr folded into stdout (the fingerprint, then the listening line).

    ``stdin=subprocess.PIPE`` gives one to write to (``p.stdin``)."""
    p = subprocess.Popen([*SOCKLAB, *args], stdin=stdin, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, env=ENV, start_new_session=True, bufsize=0)
    try:
        yield p
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate(timeout=5)


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*SOCKLAB, *args], input=stdin, capture_output=True, timeout=WAIT, env=ENV)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(errors="replace"),
                                       r.stderr.decode(errors="replace"))


def wrong(fp: str) -> str:
    return ("11" if fp.startswith("00") else "00") + fp[2:]


def assert_refused(r: subprocess.CompletedProcess[str], fp: str) -> None:
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not the pinned one" in lines[0] and fp in lines[0], r.stderr


@pytest.fixture(scope="module")
def echo_tls() -> Iterator[tuple[str, str]]:
    """``echo serve --tls-self-signed``: (HOST:PORT, its fingerprint)."""
    with server("echo", "serve", "--port", "0", "--tls-self-signed") as p:
        assert p.stdout is not None
        fp = read_until(p.stdout, FP).group(1)
        addr = read_until(p.stdout, r"listening on tls://(127\.0\.0\.1:\d+)").group(1)
        yield addr, fp


@pytest.fixture(scope="module")
def cert_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate in a PEM file (for servers that take --tls-cert): (path, fingerprint)."""
    from socklab.core.selfsigned import make_self_signed

    cert = make_self_signed()
    path = tmp_path_factory.mktemp("pin") / "self-signed.pem"
    path.write_bytes(cert.key_pem + cert.cert_pem)
    return str(path), cert.fingerprint


def test_connect_pin(echo_tls: tuple[str, str]) -> None:
    addr, fp = echo_tls
    p = subprocess.Popen([*SOCKLAB, "connect", addr, "--pin", fp.replace(":", "").lower(), "--on-stdin-eof",
                          "close"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(b"pinned\n")
        p.stdin.flush()
        assert read_until(p.stdout, "^pinned$")  # the echo came back over TLS
        p.stdin.close()
        assert p.wait(WAIT) == 0
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        for f in (p.stdout, p.stderr):
            if f:
                f.close()
    assert_refused(run("connect", addr, "--pin", wrong(fp), stdin=b"secret\n"), fp)


def test_echo_client_pin(echo_tls: tuple[str, str]) -> None:
    addr, fp = echo_tls
    ok = run("echo", "client", addr, "--pin", fp, "-c", "2", "-i", "0")
    assert ok.returncode == 0, ok.stderr
    assert "2 sent, 2 received, 0.0% loss" in ok.stdout
    assert ok.stderr == ""  # (it used to end a TLS connection with write_eof, which TLS refuses)
    assert_refused(run("echo", "client", addr, "--pin", wrong(fp), "-c", "1"), fp)


def test_chat_connect_pin(cert_file: tuple[str, str]) -> None:
    pem, fp = cert_file
    with server("chat", "serve", "--store", ":memory:", "--tcp-port", "0", "--http-port", "0", "--tls-cert",
                pem) as p:
        assert p.stdout is not None
        addr = read_until(p.stdout, r"listening on tls://(127\.0\.0\.1:\d+)").group(1)
        ok = run("chat", "connect", addr, "--nick", "ann", "--plain", "--pin", fp, stdin=b"hello over a pin\n")
        assert ok.returncode == 0, ok.stderr
        assert "ann joined #lobby" in ok.stdout
        assert_refused(run("chat", "connect", addr, "--nick", "bob", "--plain", "--pin", wrong(fp),
                           stdin=b"hello\n"), fp)


def test_rpc_call_pin(cert_file: tuple[str, str]) -> None:
    pem, fp = cert_file
    with server("rpc", "serve", "--demo", "--listen", "tls://127.0.0.1:0", "--listen", "https://127.0.0.1:0/rpc",
                "--tls-cert", pem) as p:
        assert p.stdout is not None
        urls = [read_until(p.stdout, r"listening on (tls://\S+)").group(1),
                read_until(p.stdout, r"listening on (https://\S+)").group(1)]
        for url in urls:
            ok = run("rpc", "call", url, "subtract", "42", "23", "--pin", fp)
            assert (ok.returncode, ok.stdout.strip()) == (0, "19"), (url, ok.stderr)
            assert_refused(run("rpc", "call", url, "subtract", "42", "23", "--pin", wrong(fp)), fp)


def test_http_serve_tls_self_signed(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hello over https\n")
    with server("http", "serve", str(tmp_path), "--port", "0", "--tls-self-signed") as p:
        assert p.stdout is not None
        fp = read_until(p.stdout, FP).group(1)
        port = read_until(p.stdout, r"listening on https://127\.0\.0\.1:(\d+)").group(1)
        curl = subprocess.run(["curl", "-sS", "--insecure", "--max-time", "10", f"https://127.0.0.1:{port}/hello.txt"],
                              capture_output=True, text=True, timeout=WAIT)
        assert curl.stdout == "hello over https\n", curl.stderr
        plain = subprocess.run(["curl", "-sS", "--max-time", "10", f"https://127.0.0.1:{port}/hello.txt"],
                               capture_output=True, text=True, timeout=WAIT)
        assert plain.returncode != 0  # no CA knows it: only --insecure or the pin
        request = f"GET /hello.txt HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        ok = run("connect", "127.0.0.1", port, "--pin", fp, stdin=request)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.startswith("HTTP/1.1 200") and ok.stdout.endswith("hello over https\n")
        assert_refused(run("connect", "127.0.0.1", port, "--pin", wrong(fp), stdin=request), fp)


@pytest.mark.parametrize(("args", "needle"), [
    (["connect", "127.0.0.1", "1", "--pin", "AB" * 32, "--insecure"], "--insecure"),
    (["connect", "127.0.0.1", "1", "--pin", "nothex"], "--pin"),
    (["connect", "-u", "127.0.0.1", "1", "--pin", "AB" * 32], "--pin"),
    (["echo", "client", "127.0.0.1:1", "--udp", "--pin", "AB" * 32], "--pin"),
    (["rpc", "call", "tcp://127.0.0.1:1", "ping", "--pin", "AB" * 32], "--pin"),
    (["http", "serve", ".", "--tls-self-signed", "--tls-cert", "x.pem"], "--tls-cert"),
    (["listen", "-u", "0", "--tls-self-signed"], "--tls-self-signed"),
])
def test_usage_errors_are_one_line_exit_2(args: list[str], needle: str) -> None:
    r = run(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
