"""The echo commands end to end: real processes, readiness lines, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from socklab.apps.echo.client import EchoClient
from socklab.apps.echo.protocol import EchoDatagramProtocol
from socklab.core.errors import ConnectionRefused, OperationTimeout, ResolveError
from socklab.core.sockets import parse_endpoint
from tests.conftest import is_listening, roundtrip, running_server, wait_until

pytestmark = pytest.mark.timeout(60)


def socklab(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "socklab", *args], input=stdin, capture_output=True,
                          timeout=30, env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("engine", ["iterative", "threads", "epoll", "uvloop"])
def test_serve_and_client_session(spawn: Any, engine: str) -> None:
    srv = spawn("echo", "serve", "--engine", engine, "--port", "0")
    addr = srv.wait_for(r"socklab echo listening on tcp://(\S+) \(engine " + engine + r"\)").group(1)
    out = socklab("echo", "client", addr, stdin=b"hello\nworld\n")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().splitlines()
    assert [ln.split("    (")[0] for ln in lines] == ["hello", "world"]
    assert all(ln.endswith(" ms)") for ln in lines)
    ping = socklab("echo", "client", addr, "--count", "3", "--size", "1000", "--interval", "0", "--json")
    assert ping.returncode == 0, ping.stderr
    stats = json.loads(ping.stdout)
    assert stats["sent"] == stats["received"] == 3 and stats["loss_percent"] == 0
    assert srv.stop(signal.SIGTERM) == 0
    assert b"shutting down" in srv.popen.stderr.read()


def test_udp_ping(spawn: Any) -> None:
    srv = spawn("echo", "serve", "--udp", "--port", "0")
    addr = srv.wait_for(r"listening on udp://(\S+)").group(1)
    out = socklab("echo", "client", "--udp", addr, "-c", "5", "-s", "1200", "-i", "0")
    assert out.returncode == 0, out.stderr
    assert b"5 sent, 5 received, 0.0% loss" in out.stdout


def test_udp_loss_is_counted_and_retried() -> None:
    class DropEveryOther(EchoDatagramProtocol):
        n = 0

        def datagram_received(self, data: bytes, addr: Any) -> None:
            DropEveryOther.n += 1
            if DropEveryOther.n % 2:
                return  # lost on the way
            super().datagram_received(data, addr)

    with running_server(DropEveryOther, udp=True) as srv:
        c = EchoClient(parse_endpoint(f"127.0.0.1:{srv.port}"), udp=True, timeout=0.2, retries=1)
        with c:
            stats = c.ping(4, 32, 0)
        assert stats.received == 4 and stats.retries == 4 and stats.loss == 0


def test_trace_json_records_the_lifecycle(spawn: Any, tmp_path: Path) -> None:
    srv = spawn("echo", "serve", "--port", "0")
    addr = srv.wait_for(r"listening on tcp://(\S+)").group(1)
    trace = tmp_path / "client.jsonl"
    out = socklab("echo", "client", addr, "--trace-json", str(trace), stdin=b"x\n")
    assert out.returncode == 0
    ops = [json.loads(line)["op"] for line in trace.read_text().splitlines()]
    assert ops[:2] == ["socket", "connect"] and "send" in ops and ops[-1] == "close"


@pytest.mark.parametrize("args,needle,code", [
    (["echo", "client", "127.0.0.1:1"], "connection refused while connecting to 127.0.0.1:1", 1),
    (["echo", "client", "no-such-host.invalid:7"], "cannot resolve name", 1),
    (["echo", "client", "127.0.0.1"], "no port", 2),
    (["echo", "serve", "--port", "70000"], "out of range", 2),
])
def test_errors_are_one_line_without_traceback(args: list[str], needle: str, code: int) -> None:
    out = socklab(*args)
    err = out.stderr.decode()
    assert out.returncode == code, err
    assert needle in err.lower()
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback() -> None:
    out = socklab("--debug", "echo", "client", "127.0.0.1:1")
    assert out.returncode != 0 and b"Traceback" in out.stderr


def test_address_in_use_is_explained() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        out = socklab("echo", "serve", "--port", str(port), "--trace")
    err = out.stderr.decode()
    assert out.returncode == 1 and "address already in use" in err.lower()
    assert "EADDRINUSE" in err and "TIME_WAIT" in err  # the trace's note explains it


class _Silent(EchoDatagramProtocol):
    def datagram_received(self, data: bytes, addr: Any) -> None:
        pass


def test_client_library_errors_are_typed() -> None:
    with pytest.raises(ConnectionRefused):
        EchoClient(parse_endpoint("127.0.0.1:1"))
    with pytest.raises(ResolveError):
        EchoClient(parse_endpoint("no-such-host.invalid:7"))
    with running_server(_Silent, udp=True) as srv:
        c = EchoClient(parse_endpoint(f"127.0.0.1:{srv.port}"), udp=True, timeout=0.1, retries=0)
        with c, pytest.raises(OperationTimeout):
            c.roundtrip(b"anyone?")


def test_ss_labels_a_running_echo_server(spawn: Any) -> None:
    srv = spawn("echo", "serve", "--port", "0", "--engine", "poll")
    port = srv.wait_for(r"listening on tcp://127\.0\.0\.1:(\d+)").group(1)
    out = socklab("ss", "--port", port, "--json")
    rows = json.loads(out.stdout)
    assert any(r["state"] == "LISTEN" and r["socklab"] == "echo (engine poll)" for r in rows), rows


def _stderr_until(srv: Any, needle: bytes) -> None:
    for _ in range(10):
        if needle in srv.popen.stderr.readline():
            return
    raise AssertionError(f"the server never said {needle!r}")


@pytest.mark.parametrize("engine", ["select", "poll", "epoll", "asyncio", "uvloop"])
def test_one_thread_engines_run_on_the_main_thread_and_still_shut_down_gracefully(spawn: Any, engine: str) -> None:
    """A one-thread engine serves on the main thread: the process has exactly one thread (cheaper
    system calls), and SIGTERM - handled between two loop callbacks - still drains, then stops."""
    srv = spawn("echo", "serve", "--engine", engine, "--port", "0")
    host, port = srv.wait_for(r"listening on tcp://(\S+):(\d+) ").groups()
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        assert roundtrip(conn, b"before\n") == b"before\n"
        assert len(os.listdir(f"/proc/{srv.pid}/task")) == 1
        srv.popen.send_signal(signal.SIGTERM)
        _stderr_until(srv, b"shutting down")
        assert roundtrip(conn, b"during the grace period\n") == b"during the grace period\n"
        # the listener closes as the shutdown begins, on the loop: gone from the kernel's table...
        wait_until(lambda: not is_listening(int(port)), "the listener to close after SIGTERM")
        with pytest.raises(OSError):  # ...so a new connection is refused
            socket.create_connection((host, int(port)), timeout=2).close()
        assert roundtrip(conn, b"still served\n") == b"still served\n"
    assert srv.popen.wait(8) == 0  # the last connection closed: no need to wait out the grace period


@pytest.mark.parametrize("engine", ["epoll", "uvloop"])
def test_a_second_signal_forces_a_one_thread_engine(spawn: Any, engine: str) -> None:
    srv = spawn("echo", "serve", "--engine", engine, "--port", "0", "--shutdown-timeout", "60")
    host, port = srv.wait_for(r"listening on tcp://(\S+):(\d+) ").groups()
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        assert roundtrip(conn, b"x") == b"x"
        srv.popen.send_signal(signal.SIGINT)
        _stderr_until(srv, b"shutting down")
        srv.popen.send_signal(signal.SIGINT)
        assert srv.popen.wait(8) == 0
        with pytest.raises(ConnectionResetError):  # a forced shutdown aborts: RST, not FIN
            conn.recv(10)
