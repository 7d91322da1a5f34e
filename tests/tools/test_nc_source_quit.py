"""``socklab nc -s/-p`` (the source address and port) and ``-q SECS`` beside real netcat-openbsd (issue 17).

``-s ADDR`` / ``-p PORT`` when connecting bind the local side first: the listener sees that address
(127.0.0.2 beside the usual 127.0.0.1; ``::1`` with a chosen port). ``-q SECS`` implies ``-N``
(netcat-openbsd's manual) and quits SECS after stdin ended, with status 0, even while the peer
stays open; its data reaches stdout until then.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]  # netcat-openbsd comes from scripts/setup.sh

SOCKLAB = [sys.executable, "-m", "socklab"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", NO_COLOR="1")
WAIT = 20.0


def _free_port(family: int, host: str) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _peer_of(cmd: list[str], family: int, listen_on: str) -> tuple[str, int, bytes]:
    """Run ``cmd + [HOST, PORT]`` against a listener; what it saw: the client's address, port and bytes."""
    with socket.create_server((listen_on, 0), family=family) as lst:
        lst.settimeout(WAIT)
        port = lst.getsockname()[1]
        proc = subprocess.Popen([*cmd, listen_on, str(port)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=ENV)
        try:
            assert proc.stdin is not None
            proc.stdin.write(b"from the source\n")
            proc.stdin.close()  # -N: the FIN ends the listener's read
            conn, peer = lst.accept()
            with conn:
                conn.settimeout(WAIT)
                got = b""
                while chunk := conn.recv(100):
                    got += chunk
            assert proc.wait(WAIT) == 0, proc.stderr.read() if proc.stderr else ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()
    return peer[0], peer[1], got


@pytest.mark.parametrize("nc", ["socklab", "netcat-openbsd"])
def test_dash_s_binds_the_source_address_ipv4(nc: str) -> None:
    cmd = [*SOCKLAB, "nc"] if nc == "socklab" else ["nc"]
    host, _, got = _peer_of([*cmd, "-N", "-s", "127.0.0.2"], socket.AF_INET, "127.0.0.1")
    assert (host, got) == ("127.0.0.2", b"from the source\n")


@pytest.mark.parametrize("nc", ["socklab", "netcat-openbsd"])
def test_dash_s_and_dash_p_bind_address_and_port_ipv6(nc: str) -> None:
    cmd = [*SOCKLAB, "nc"] if nc == "socklab" else ["nc"]
    port = _free_port(socket.AF_INET6, "::1")
    host, seen_port, got = _peer_of([*cmd, "-N", "-s", "::1", "-p", str(port)], socket.AF_INET6, "::1")
    assert (host, seen_port, got) == ("::1", port, b"from the source\n")


def test_source_of_the_wrong_family_is_one_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as lst:
        r = subprocess.run([*SOCKLAB, "nc", "-s", "::1", "127.0.0.1", str(lst.getsockname()[1])], timeout=WAIT,
                           capture_output=True, text=True, env=ENV, stdin=subprocess.DEVNULL)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and "no IPv4 address" in r.stderr, r.stderr


class _AnswersFinThenStays:
    """Reads until the client's FIN, answers, then keeps the connection open until told to go."""

    def __init__(self) -> None:
        self.lst = socket.create_server(("127.0.0.1", 0))
        self.lst.settimeout(WAIT)
        self.port = self.lst.getsockname()[1]
        self.got: list[bytes] = []
        self.answered = threading.Event()
        self.go = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.lst.accept()
        with conn:
            conn.settimeout(WAIT)
            buf = b""
            while chunk := conn.recv(100):  # until the client's FIN: -q implies -N
                buf += chunk
            self.got.append(buf)
            conn.sendall(b"answer after your FIN\n")
            self.answered.set()
            self.go.wait(WAIT)  # stays open: only -q's timer can end the client

    def close(self) -> None:
        self.go.set()
        self.thread.join(WAIT)
        self.lst.close()


def test_dash_q_secs_implies_N_and_quits_while_the_peer_stays_open() -> None:
    srv = _AnswersFinThenStays()
    try:
        started = time.monotonic()
        r = subprocess.run([*SOCKLAB, "nc", "-v", "-q", "1", "127.0.0.1", str(srv.port)], input=b"question\n",
                           timeout=WAIT, capture_output=True, env=ENV)
        elapsed = time.monotonic() - started
        assert srv.answered.is_set()
    finally:
        srv.close()
    assert r.returncode == 0, r.stderr
    assert srv.got == [b"question\n"]  # the FIN came (the server's read ended) without -N
    assert r.stdout == b"answer after your FIN\n"  # the peer's data went on to stdout meanwhile
    assert b"--quit-after" in r.stderr and elapsed >= 1.0


@pytest.mark.parametrize("nc", ["socklab", "netcat-openbsd"])
def test_dash_q_when_the_peer_answers_and_closes(nc: str) -> None:
    """Where netcat-openbsd and its manual agree: FIN sent, the answer printed, exit 0 once the peer closed."""
    cmd = [*SOCKLAB, "nc"] if nc == "socklab" else ["nc"]
    with socket.create_server(("127.0.0.1", 0)) as lst:
        lst.settimeout(WAIT)

        def serve() -> None:
            conn, _ = lst.accept()
            with conn:
                conn.settimeout(WAIT)
                buf = b""
                while chunk := conn.recv(100):
                    buf += chunk
                conn.sendall(buf.upper())

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        r = subprocess.run([*cmd, "-q", "5", "127.0.0.1", str(lst.getsockname()[1])], input=b"shout\n",
                           timeout=WAIT, capture_output=True, env=ENV)
        t.join(WAIT)
    assert (r.returncode, r.stdout) == (0, b"SHOUT\n"), r.stderr


def test_listen_dash_q_quits_after_stdin_while_the_client_stays() -> None:
    port = _free_port(socket.AF_INET, "127.0.0.1")
    proc = subprocess.Popen([*SOCKLAB, "nc", "-l", "-p", str(port), "-q", "1"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, start_new_session=True)
    try:
        assert proc.stderr is not None and proc.stdin is not None
        line = b""
        while b"listening on" not in line:  # the readiness line
            line = proc.stderr.readline()
            assert line, "the listener ended before it was ready"
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as c:
            proc.stdin.write(b"served\n")
            proc.stdin.close()
            got = b""
            while chunk := c.recv(100):  # -q implies -N: its FIN ends this read
                got += chunk
            assert got == b"served\n"
            c.sendall(b"still talking\n")  # the client stays open; the timer ends the listener
            assert proc.wait(WAIT) == 0
        assert proc.stdout is not None and proc.stdout.read() == b"still talking\n"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()


def test_verbose_shows_the_kernel_state_through_the_transport() -> None:
    """-v narrates with the kernel's TCP state beside each step (transport.tcp_state(), no raw socket)."""
    srv = _AnswersFinThenStays()
    try:
        r = subprocess.run([*SOCKLAB, "nc", "-v", "-N", "-q", "0.5", "127.0.0.1", str(srv.port)], input=b"x",
                           timeout=WAIT, capture_output=True, env=ENV)
    finally:
        srv.close()
    assert r.returncode == 0, r.stderr
    assert b"[kernel: ESTABLISHED]" in r.stderr
    assert b"[kernel: FIN_WAIT" in r.stderr  # after our FIN
