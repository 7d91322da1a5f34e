"""ss against sockets the test opens itself: LISTEN, ESTABLISHED, TIME_WAIT, CLOSE_WAIT on IPv4 and IPv6."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socklab.apps.echo.protocol import EchoProtocol
from socklab.core.settings import ServerSettings
from socklab.runtime import Server, registry
from socklab.tools.ss import SocketEntry, explain_entries, list_sockets, parse_proc_net, parse_proc_unix


def find(port: int, state: str, kinds: tuple[str, ...]) -> list[SocketEntry]:
    """Sockets on ``port`` in ``state``, in one look.

    No polling: each caller first waits for an event that implies the state (accept() returned,
    recv() saw the FIN, an echo came back), and on loopback the kernel has changed the state by
    the time that event reaches the process.
    """
    return [e for e in list_sockets(kinds, port=port) if e.state == state and port in (e.local_port, e.peer_port)]


@pytest.fixture(params=["ipv4", "ipv6"])
def family(request: pytest.FixtureRequest) -> tuple[str, tuple[str, ...]]:
    return ("127.0.0.1", ("tcp",)) if request.param == "ipv4" else ("::1", ("tcp6",))


@contextlib.contextmanager
def pair(host: str) -> Iterator[tuple[socket.socket, socket.socket, socket.socket]]:
    lsock = socket.create_server((host, 0), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    client = socket.create_connection((host, lsock.getsockname()[1]))
    server, _ = lsock.accept()
    try:
        yield lsock, client, server
    finally:
        for s in (client, server, lsock):
            s.close()


def test_listen_and_established_with_pids(family: tuple[str, tuple[str, ...]]) -> None:
    host, kinds = family
    with pair(host) as (lsock, client, _server):
        port = lsock.getsockname()[1]
        listening = find(port, "LISTEN", kinds)
        assert [e.pid for e in listening] == [os.getpid()]
        assert listening[0].program
        established = find(port, "ESTABLISHED", kinds)
        assert len(established) == 2  # both ends are ours
        assert {e.local_port for e in established} == {port, client.getsockname()[1]}
        assert host in established[0].local


def test_close_wait_and_time_wait(family: tuple[str, tuple[str, ...]]) -> None:
    host, kinds = family
    with pair(host) as (lsock, client, server):
        port = lsock.getsockname()[1]
        client_port = client.getsockname()[1]
        client.shutdown(socket.SHUT_WR)  # the client's FIN: the server side enters CLOSE_WAIT
        assert server.recv(10) == b""
        close_wait = [e for e in find(port, "CLOSE_WAIT", kinds) if e.peer_port == client_port]
        assert [e.local_port for e in close_wait] == [port]
        warnings = [w for w in explain_entries(close_wait) if w.startswith("WARNING")]
        assert warnings and "never" in warnings[0]
        server.close()  # now the client, which sent FIN first, ends in TIME_WAIT
        client.recv(10)
        client.close()
        time_wait = [e for e in find(client_port, "TIME_WAIT", kinds) if e.peer_port == port]
        assert [e.local_port for e in time_wait] == [client_port]
        assert time_wait[0].pid is None  # TIME_WAIT belongs to no process any more


def test_udp_sockets_are_listed() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
        found = [e for e in list_sockets(("udp6",), port=port) if e.local_port == port]
        assert [(e.state, e.pid) for e in found] == [("UNCONN", os.getpid())]


def test_socklab_servers_are_labelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    srv = Server(ServerSettings(host="127.0.0.1", port=0, engine="epoll"))
    srv.listen(EchoProtocol)
    with srv:
        reg = registry.register_server(srv, app="echo", extra={"note": "demo"})
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as c:
            c.sendall(b"x")
            assert c.recv(1) == b"x"  # the server accepted this connection (its fd has an owner now)
            reg.update(peers={f"127.0.0.1:{c.getsockname()[1]}": "nick alice"})
            entries = [e for e in list_sockets(("tcp",), port=srv.port) if srv.port in (e.local_port,)]
            by_state = {e.state: e for e in entries}
            assert by_state["LISTEN"].socklab == "echo (engine epoll)"
            assert by_state["LISTEN"].detail == "note=demo"
            est = find(srv.port, "ESTABLISHED", ("tcp",))
            mine = [e for e in est if e.local_port == srv.port]
            assert mine and mine[0].detail == "nick alice"
    assert not list(registry.registry_dir().glob("*.json"))  # removed when the server stopped


def test_stale_registry_files_are_ignored_and_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    d = registry.registry_dir()
    d.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (d / f"{dead.pid}.json").write_text(json.dumps({"pid": dead.pid, "app": "ghost"}))
    (d / "garbage.json").write_text("{not json")
    assert registry.read_servers() == []
    assert not (d / f"{dead.pid}.json").exists()


def test_parsers_on_kernel_lines() -> None:
    tcp = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
           "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000005 00:00000000 00000000  1000        0 4242 1\n")
    e = parse_proc_net(tcp, "tcp")[0]
    assert (e.local, e.peer, e.state, e.recv_q, e.inode) == ("127.0.0.1:8080", "*:*", "LISTEN", 5, 4242)
    tcp6 = ("header\n   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 "
            "01 00000010:00000000 00:00000000 00000000  1000        0 77 1\n")
    e6 = parse_proc_net(tcp6, "tcp6")[0]
    assert (e6.local, e6.state, e6.send_q) == ("[::1]:80", "ESTABLISHED", 16)
    unix = ("Num       RefCount Protocol Flags    Type St Inode Path\n"
            "0000000000000000: 00000002 00000000 00010000 0001 01 12345 /run/app.sock\n")
    u = parse_proc_unix(unix)[0]
    assert (u.proto, u.state, u.local) == ("unix/stream", "LISTEN", "/run/app.sock")
    assert parse_proc_net("header\ngarbage line\n", "tcp") == []
    assert len(parse_proc_net(tcp, "tcp", port=8080)) == 1 and parse_proc_net(tcp, "tcp", port=81) == []


def test_cli_json_and_filters() -> None:
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        port = lsock.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "socklab", "ss", "-lt", "--port", str(port), "--json"],
                             capture_output=True, timeout=30)
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)
        assert [(r["state"], r["local_port"], r["pid"]) for r in rows] == [("LISTEN", port, os.getpid())]
        text = subprocess.run([sys.executable, "-m", "socklab", "ss", "--port", str(port), "--explain"],
                              capture_output=True, timeout=30, env=dict(os.environ, COLUMNS="200"))
        assert b"LISTEN" in text.stdout and b"waiting for connections" in text.stdout
        bad = subprocess.run([sys.executable, "-m", "socklab", "ss", "-4", "-6"], capture_output=True, timeout=30)
        assert bad.returncode == 2


@given(st.text(max_size=300))
def test_proc_parsers_never_crash_on_garbage(text: str) -> None:
    header = "  sl  local_address rem_address   st\n"
    for proto in ("tcp", "udp6"):
        parse_proc_net(header + text, proto)
    parse_proc_unix("Num RefCount\n" + text)


def _real_ss_queues(port: int) -> list[tuple[int, int]]:
    """(Recv-Q, Send-Q) of the listeners on ``port`` as iproute2's ``ss`` prints them."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return [(int(f[1]), int(f[2])) for f in (line.split() for line in out.stdout.splitlines())]


@pytest.mark.interop
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_listeners_send_q_is_its_backlog_and_recv_q_its_accept_queue_as_in_ss(host: str) -> None:
    """Issue 15: socklab showed Send-Q 0 for every listener (``/proc/net/tcp`` does not carry the
    backlog); ``ss`` shows the backlog there, and socklab's own --explain says so."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.create_server((host, 0), family=family, backlog=7) as lsock:
        port = lsock.getsockname()[1]
        pending = [socket.create_connection((host, port), timeout=30) for _ in range(2)]  # never accepted
        try:
            real = _real_ss_queues(port)
            ours = [(e.recv_q, e.send_q) for e in list_sockets(("tcp", "tcp6"), port=port) if e.state == "LISTEN"]
            out = subprocess.run([sys.executable, "-m", "socklab", "ss", "-lt", "--port", str(port), "--json"],
                                 capture_output=True, timeout=30)
            rows = [(r["recv_q"], r["send_q"]) for r in json.loads(out.stdout) if r["state"] == "LISTEN"]
        finally:
            for c in pending:
                c.close()
    assert real == [(2, 7)]
    assert ours == real and rows == real


def test_a_full_accept_queue_is_warned_about() -> None:
    with socket.create_server(("127.0.0.1", 0), backlog=1) as lsock:
        port = lsock.getsockname()[1]
        # Linux queues backlog + 1 connections before it drops SYNs
        pending = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)]
        try:
            warnings = [w for w in explain_entries(find(port, "LISTEN", ("tcp",))) if "accept queue full" in w]
        finally:
            for c in pending:
                c.close()
    assert warnings == [f"WARNING: 127.0.0.1:{port} accept queue full (2/1): the server does not accept() fast "
                        "enough; new SYNs are dropped"]


def test_text_an_app_took_from_a_peer_is_escaped_in_the_table(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A chat nick (a peer's choice) shown as a connection's detail: no raw ESC, no rich markup."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    srv = Server(ServerSettings(host="127.0.0.1", port=0, engine="epoll"))
    srv.listen(EchoProtocol)
    with srv:
        reg = registry.register_server(srv, app="chat")
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as c:
            c.sendall(b"x")
            assert c.recv(1) == b"x"
            reg.update(peers={f"127.0.0.1:{c.getsockname()[1]}": "nick \x1b]0;pwned\x07[bold]evil[/bold]\u202e"})
            out = subprocess.run([sys.executable, "-m", "socklab", "ss", "--port", str(srv.port)],
                                 capture_output=True, timeout=30,
                                 env=dict(os.environ, COLUMNS="300", XDG_RUNTIME_DIR=str(tmp_path)))
    text = out.stdout.decode()
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert r"nick \x1b]0;pwned\x07[bold]evil[/bold]\u202e" in text
