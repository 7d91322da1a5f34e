"""connect/listen against real peers (netcat-openbsd, socat), EOF policies, UDP peers, --exec, -z."""

from __future__ import annotations

import contextlib
import hashlib
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
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def wait_stderr(popen: subprocess.Popen[bytes], pattern: str, timeout: float = 15.0) -> re.Match[str]:
    """Read ``popen``'s stderr until a line matches ``pattern`` (a readiness signal).

    Reads the raw descriptor (a buffered readline could swallow the next lines where select()
    no longer sees them).
    """
    assert popen.stderr is not None
    fd = popen.stderr.fileno()
    rx, text = re.compile(pattern), ""
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sel.select(max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            text += chunk.decode(errors="replace")
            for line in text.splitlines():
                if m := rx.search(line):
                    return m
    finally:
        sel.close()
    raise AssertionError(f"no stderr line matching {pattern!r}: {text!r}")


@contextlib.contextmanager
def peer(*argv: str, stdin: Any = subprocess.DEVNULL) -> Iterator[subprocess.Popen[bytes]]:
    """A third-party peer (nc, socat), always ended by its pid."""
    p = subprocess.Popen(list(argv), stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    try:
        yield p
    finally:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        p.wait(5)
        for s in (p.stdout, p.stderr, p.stdin):
            if s:
                s.close()


def socklab(*args: str, stdin: Any = subprocess.DEVNULL, timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "socklab", *args], stdin=stdin, capture_output=True,
                          timeout=timeout, env=env)


@pytest.fixture
def data_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(300_000) + b"\x00\r\n\xff"  # binary-safe: NUL, CR, LF, 0xff
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    return path, data


@pytest.mark.interop
def test_connect_to_netcat_listener_both_directions(tmp_path: Path, data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    reply = os.urandom(100_000)
    (tmp_path / "reply.bin").write_bytes(reply)
    with open(tmp_path / "reply.bin", "rb") as reply_in, \
            peer("nc", "-lvN", "127.0.0.1", "0", stdin=reply_in) as nc:
        port = wait_stderr(nc, r"Listening on \S+ (\d+)").group(1)
        drained: list[bytes] = []
        reader = threading.Thread(target=lambda: drained.append(nc.communicate(timeout=15)[0]))
        reader.start()  # drain nc's stdout concurrently: a full pipe would stall the transfer
        with open(path, "rb") as f:
            # nc may finish sending (and FIN) before we do: keep sending after its FIN
            out = socklab("connect", "127.0.0.1", port, "--on-peer-eof", "keep", stdin=f)
        reader.join(15)
        got = drained[0]
    assert out.returncode == 0, out.stderr
    assert got == data
    assert out.stdout == reply


@pytest.mark.interop
def test_connect_half_closes_so_socat_exec_can_answer(data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    with peer("socat", "-d", "-d", "TCP-LISTEN:0,bind=127.0.0.1", "EXEC:sha256sum") as socat:
        port = wait_stderr(socat, r"listening on .*:(\d+)").group(1)
        with open(path, "rb") as f:
            out = socklab("connect", "127.0.0.1", port, "--explain", stdin=f)
    assert out.returncode == 0, out.stderr
    # sha256sum answers only after EOF: the answer proves we sent FIN and kept reading
    assert out.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert b"half-close" in out.stderr


def start_listen(spawn: Any, *args: str, stdin: Any = subprocess.DEVNULL) -> tuple[Any, int]:
    proc = spawn("listen", *args, stdin=stdin)
    m = wait_stderr(proc.popen, r"socklab listen listening on \w+://127\.0\.0\.1:(\d+) \(engine (\w+)\)")
    return proc, int(m.group(1))


@pytest.mark.interop
def test_listen_with_netcat_client_both_directions(spawn: Any, tmp_path: Path,
                                                   data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    reply = os.urandom(50_000)
    (tmp_path / "reply.bin").write_bytes(reply)
    with open(tmp_path / "reply.bin", "rb") as reply_in:
        proc, port = start_listen(spawn, "0", "--on-peer-eof", "keep", stdin=reply_in)
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.append(proc.popen.stdout.read()))
        reader.start()  # drain our stdout while nc runs: a full pipe would block the listener
        with open(path, "rb") as f:
            nc = subprocess.run(["nc", "-N", "127.0.0.1", str(port)], stdin=f, capture_output=True, timeout=15)
        reader.join(10)
        got = received[0]
        assert proc.popen.wait(10) == 0
    assert nc.stdout == reply
    assert got == data


@pytest.mark.interop
def test_listen_exec_with_socat_client_half_close(spawn: Any, data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    proc, port = start_listen(spawn, "0", "--exec", "sha256sum")
    with open(path, "rb") as f:
        out = subprocess.run(["socat", "-t", "5", "-", f"TCP:127.0.0.1:{port}"], stdin=f, capture_output=True,
                             timeout=15)
    assert out.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert proc.popen.wait(10) == 0


def _fin_then_read_server() -> tuple[socket.socket, list[bytes], threading.Thread]:
    """A server that says 'hi', sends FIN at once, then reads everything the client still sends."""
    lsock = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = lsock.accept()
        with conn:
            conn.sendall(b"hi\n")
            conn.shutdown(socket.SHUT_WR)
            buf = b""
            while chunk := conn.recv(65536):
                buf += chunk
            got.append(buf)
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return lsock, got, t


@pytest.mark.parametrize("policy", ["keep", "exit"])
def test_on_peer_eof_policy(policy: str) -> None:
    lsock, got, t = _fin_then_read_server()
    with lsock:
        p = subprocess.Popen([sys.executable, "-m", "socklab", "connect", "127.0.0.1", str(lsock.getsockname()[1]),
                              "--on-peer-eof", policy, "--explain"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            assert p.stdout is not None and p.stdin is not None
            assert p.stdout.readline() == b"hi\n"
            if policy == "keep":
                wait_stderr(p, r"peer sent FIN -> we are in CLOSE_WAIT -> waiting for stdin EOF")
                p.stdin.write(b"after your FIN\n")
                p.stdin.flush()
                p.stdin.close()
                assert p.wait(10) == 0
                t.join(5)
                assert got == [b"after your FIN\n"]
            else:
                assert p.wait(10) == 0  # exits on the peer's FIN although stdin is still open
                t.join(5)
                assert got == [b""]
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            for s in (p.stdin, p.stdout, p.stderr):
                if s and not s.closed:
                    s.close()


def test_on_stdin_eof_keep_does_not_send_fin() -> None:
    lsock = socket.create_server(("127.0.0.1", 0))
    with lsock:
        p = subprocess.Popen([sys.executable, "-m", "socklab", "connect", "127.0.0.1", str(lsock.getsockname()[1]),
                              "--on-stdin-eof", "keep", "--explain"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        conn, _ = lsock.accept()
        with conn:
            # the event: the client has handled its stdin EOF (a FIN sent then would be here by now)
            wait_stderr(p, r"stdin ended; sending nothing")
            with pytest.raises(BlockingIOError):
                conn.recv(10, socket.MSG_DONTWAIT)  # no FIN: stdin ended but the connection stays open
            conn.sendall(b"still here\n")
            conn.shutdown(socket.SHUT_WR)
            out, _ = p.communicate(timeout=10)
    assert out == b"still here\n" and p.returncode == 0


def test_listen_keep_open_serves_clients_concurrently(spawn: Any, concurrent_engine: str) -> None:
    proc, port = start_listen(spawn, "0", "--keep-open", "--engine", concurrent_engine)
    a = socket.create_connection(("127.0.0.1", port), timeout=30)
    b = socket.create_connection(("127.0.0.1", port), timeout=30)
    with a, b:
        b.sendall(b"from-b\n")  # b talks while a is still connected: served at once
        a.sendall(b"from-a\n")
        assert proc.popen.stdout is not None
        seen = proc.popen.stdout.readline() + proc.popen.stdout.readline()
    assert b"from-a\n" in seen and b"from-b\n" in seen


def test_udp_listen_serves_many_peers(spawn: Any) -> None:
    proc, port = start_listen(spawn, "-u", "--keep-open", "0", stdin=subprocess.PIPE)
    peers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for i, s in enumerate(peers):
            s.settimeout(30)
            s.sendto(b"peer%d\n" % i, ("127.0.0.1", port))
        assert proc.popen.stdout is not None
        lines = {proc.popen.stdout.readline() for _ in peers}
        assert lines == {b"peer0\n", b"peer1\n", b"peer2\n"}
        proc.popen.stdin.write(b"to everyone\n")
        proc.popen.stdin.flush()
        assert [s.recvfrom(100)[0] for s in peers] == [b"to everyone\n"] * 3
    finally:
        for s in peers:
            s.close()


@pytest.mark.interop
def test_scan_exit_status_matches_nc_z() -> None:
    """Issue 15: ``connect -z`` exited 1 when any port of a range was closed; ``nc -z`` exits 0
    when any is open (and 1 when none is). Checked against netcat-openbsd on the same ports."""
    with socket.create_server(("127.0.0.1", 0)) as open_sock:
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connecting gets RST
        with closed:
            port_open, port_closed = open_sock.getsockname()[1], closed.getsockname()[1]
            cases = {"open": [port_open], "mixed": [port_open, port_closed], "closed": [port_closed]}
            ours = {k: socklab("connect", "-z", "127.0.0.1", ",".join(map(str, v))) for k, v in cases.items()}
            theirs = {k: subprocess.run(["nc", "-z", "-w", "10", "127.0.0.1", *map(str, v)], capture_output=True,
                                        timeout=30).returncode for k, v in cases.items()}
    assert theirs == {"open": 0, "mixed": 0, "closed": 1}
    assert {k: r.returncode for k, r in ours.items()} == theirs
    assert f"127.0.0.1:{port_open} open".encode() in ours["mixed"].stdout
    assert f"127.0.0.1:{port_closed} closed".encode() in ours["mixed"].stderr


def test_refused_is_one_line_and_exit_1() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    with closed:
        out = socklab("connect", "127.0.0.1", str(closed.getsockname()[1]))
    assert out.returncode == 1
    assert out.stderr.decode().strip().count("\n") == 0 and "refused" in out.stderr.decode()


def test_usage_error_is_exit_2() -> None:
    assert socklab("connect", "127.0.0.1", "notaport").returncode == 2


def test_idle_timeout_exits_1() -> None:
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        p = subprocess.Popen([sys.executable, "-m", "socklab", "connect", "127.0.0.1", str(lsock.getsockname()[1]),
                              "--idle-timeout", "0.3", "--on-stdin-eof", "keep"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        conn, _ = lsock.accept()
        with conn:
            _, err = p.communicate(timeout=10)
    assert p.returncode == 1 and b"idle" in err


def test_tls_client_and_server(spawn: Any, tls_files: dict[str, str]) -> None:
    proc, port = start_listen(spawn, "0", "--tls-cert", tls_files["cert"], "--tls-key", tls_files["key"],
                              stdin=subprocess.PIPE)
    p = subprocess.Popen([sys.executable, "-m", "socklab", "connect", "127.0.0.1", str(port), "--tls",
                          "--cafile", tls_files["ca"], "--on-stdin-eof", "keep"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(b"over tls\n")
        p.stdin.flush()
        assert proc.popen.stdout.readline() == b"over tls\n"
        proc.popen.stdin.write(b"and back\n")
        proc.popen.stdin.flush()
        assert p.stdout.readline() == b"and back\n"
    finally:
        p.kill()
        p.wait()
        for s in (p.stdin, p.stdout, p.stderr):
            if s:
                s.close()


def test_crlf_and_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen()
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            buf = b""
            while chunk := conn.recv(100):
                buf += chunk
            got.append(buf)
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with srv:
        out = subprocess.run([sys.executable, "-m", "socklab", "connect", f"unix:{path}", "--crlf"],
                             input=b"a\nb\r\n", capture_output=True, timeout=10)
        t.join(5)
    assert out.returncode == 0, out.stderr
    assert got == [b"a\r\nb\r\n"]


def test_udp_connect_to_udp_echo() -> None:
    from socklab.apps.echo.protocol import EchoDatagramProtocol
    from socklab.core.settings import ServerSettings
    from socklab.runtime import Server

    srv = Server(ServerSettings(host="127.0.0.1", port=0))
    srv.listen_udp(EchoDatagramProtocol)
    with srv:
        # stdin stays open until the echo is back (an event), then ends: the client stops after
        # its quiet period. (With stdin ending at once and --idle-timeout 0.5, a busy machine's
        # slow echo came after the client had given up.)
        with subprocess.Popen([sys.executable, "-m", "socklab", "connect", "-u", "127.0.0.1", str(srv.port),
                               "--explain"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) as p:  # closes the pipes
            try:
                assert p.stdin is not None and p.stdout is not None and p.stderr is not None
                p.stdin.write(b"datagram\n")
                p.stdin.flush()
                assert p.stdout.readline() == b"datagram\n"
                p.stdin.close()
                assert p.wait(30) == 0
                out, err = p.stdout.read(), p.stderr.read()
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    assert out == b""
    assert b"UDP has no" in err


def _closing_listener(spawn: Any) -> tuple[Any, int, socket.socket]:
    """``listen --explain`` with its stdin held open, and one client connected and accepted."""
    proc, port = start_listen(spawn, "0", "--explain", stdin=subprocess.PIPE)
    client = socket.create_connection(("127.0.0.1", port), timeout=30)
    wait_stderr(proc.popen, r"accepted 127\.0\.0\.1:\d+")
    return proc, port, client


def _server_side_states(port: int) -> list[str]:
    from socklab.tools.ss import list_sockets

    return [e.state for e in list_sockets(("tcp",), with_pids=False, port=port) if e.local_port == port]


def test_listen_explains_the_active_close_when_it_closes_first(spawn: Any) -> None:
    """Issue 15: stdin ended, so the listener sent FIN first; its explanation said "client sent FIN
    -> CLOSE_WAIT -> LAST_ACK" while the kernel had it in FIN_WAIT and then TIME_WAIT."""
    proc, port, client = _closing_listener(spawn)
    with client:
        proc.popen.stdin.close()  # stdin EOF: the listener half-closes (FIN first)
        assert client.recv(10) == b""  # its FIN arrived
        client.close()  # now ours
        assert proc.popen.wait(30) == 0
    err = proc.popen.stderr.read().decode()
    assert "FIN sent to the client first" in err and "FIN_WAIT1" in err
    assert "client sent FIN after ours" in err and "TIME_WAIT" in err
    assert "CLOSE_WAIT" not in err and "LAST_ACK" not in err
    assert _server_side_states(port) == ["TIME_WAIT"]  # what `ss` shows on the listener's side


def test_listen_explains_the_passive_close_when_the_client_closes_first(spawn: Any) -> None:
    proc, port, client = _closing_listener(spawn)
    with client:
        client.shutdown(socket.SHUT_WR)  # the client's FIN first
        assert client.recv(10) == b""  # the listener closed its side in answer
        assert proc.popen.wait(30) == 0
        err = proc.popen.stderr.read().decode()
        assert "client sent FIN first -> CLOSE_WAIT" in err and "LAST_ACK" in err
        assert "FIN_WAIT" not in err and "after ours" not in err
        assert _server_side_states(port) == []  # the passive closer keeps no TIME_WAIT
        client_port = client.getsockname()[1]
    from socklab.tools.ss import list_sockets

    # this connection only: the kernel reuses an ephemeral port for other destinations, and their
    # TIME_WAITs (earlier tests' connections from the same port number) would be counted too
    mine = [e.state for e in list_sockets(("tcp",), with_pids=False, port=client_port)
            if e.local_port == client_port and e.peer_port == port]
    assert mine == ["TIME_WAIT"]  # the client closed first: the TIME_WAIT is on its side


def test_listen_explain_escapes_a_unix_clients_chosen_name(spawn: Any, tmp_path: Path) -> None:
    """A Unix client's bound path is its own choice: the explanation shows it escaped, never raw."""
    path = str(tmp_path / "l.sock")
    proc = spawn("listen", "--unix", path, "--explain", stdin=subprocess.PIPE)
    wait_stderr(proc.popen, r"socklab listen listening on unix:")
    evil = str(tmp_path / "c\x1b[2J\x1b]0;pwned\x07\u202e.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.bind(evil)
        c.connect(path)
        c.shutdown(socket.SHUT_WR)
        assert c.recv(10) == b""
    assert proc.popen.wait(30) == 0
    err = proc.popen.stderr.read().decode()
    assert r"c\x1b[2J\x1b]0;pwned\x07\u202e.sock" in err  # shown, escaped
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err


def test_a_big_pipe_through_an_echo_server_does_not_deadlock(tmp_path: Path) -> None:
    # Full duplex: both sides write more than their buffers hold while the other also writes. The
    # engines stop reading while their own write buffer is over high water, so a connect session
    # that let its buffer fill waited for the echo server, which waited for it (the first
    # engine-based session stalled after ~1.4 MB). 20 MB must go through and come back whole.
    from socklab.apps.echo.protocol import EchoProtocol
    from tests.conftest import running_server

    data = os.urandom(20_000_000)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    with running_server(EchoProtocol) as srv, open(path, "rb") as f:
        out = socklab("connect", "127.0.0.1", str(srv.port), stdin=f, timeout=40)
    assert out.returncode == 0, out.stderr
    assert out.stdout == data


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_connect_takes_host_colon_port_like_every_other_command(family: str) -> None:
    # issue 17: `socklab connect 127.0.0.1:7070` said "connect needs HOST PORT"
    host, fam = ("127.0.0.1", socket.AF_INET) if family == "ipv4" else ("::1", socket.AF_INET6)
    with socket.create_server((host, 0), family=fam) as srv:
        port = srv.getsockname()[1]
        target = f"{host}:{port}" if family == "ipv4" else f"[{host}]:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "socklab", "connect", target], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            srv.settimeout(30)
            conn, _ = srv.accept()
            with conn:
                assert proc.stdin is not None
                proc.stdin.write(b"hi\n")
                proc.stdin.close()
                conn.settimeout(30)
                got = b""
                while chunk := conn.recv(64):
                    got += chunk
                assert got == b"hi\n"
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            for f in (proc.stdout, proc.stderr):
                if f is not None:
                    f.close()
