"""``echo serve --tls-self-signed``: TLS with no certificate file; clients pin the printed SHA-256
(issue 17). Every engine family: the reactor's TLS layer and asyncio's."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from tests.tools.test_nc import ENV, SOCKLAB, read_until


@pytest.mark.parametrize("engine", ["epoll", "threads", "asyncio"])
def test_echo_self_signed_pinned_client_and_wrong_pin(engine: str) -> None:
    p = subprocess.Popen([*SOCKLAB, "echo", "serve", "--port", "0", "--engine", engine, "--tls-self-signed"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV,
                         start_new_session=True, bufsize=0)
    try:
        assert p.stdout is not None
        fp = read_until(p.stdout, r"SHA-256 ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})").group(1)
        host, port = read_until(p.stdout, r"listening on tls://([\d.]+):(\d+)").groups()
        ok = subprocess.run([*SOCKLAB, "nc", "-N", "--ssl", "--pin", fp, host, port], input=b"over TLS\n",
                            capture_output=True, timeout=30, env=ENV)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout == b"over TLS\n"
        wrong = ("11" if fp.startswith("00") else "00") + fp[2:]
        bad = subprocess.run([*SOCKLAB, "nc", "-N", "--ssl", "--pin", wrong, host, port], input="x\n",
                             capture_output=True, text=True, timeout=30, env=ENV)
        assert bad.returncode == 1 and bad.stdout == ""
        assert re.fullmatch(r"socklab: error: the server's certificate is not the pinned one .*\n", bad.stderr)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
        p.communicate(timeout=15)


def test_self_signed_excludes_cert_and_udp() -> None:
    for extra in (["--tls-cert", "/nonexistent.pem"], ["--udp"]):
        r = subprocess.run([sys.executable, "-m", "socklab", "echo", "serve", "--port", "0", "--tls-self-signed",
                            *extra], capture_output=True, text=True, timeout=30, env=ENV,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 2, r.stderr
        assert "--tls-self-signed" in r.stderr or "--tls-cert" in r.stderr
