"""The tap's control port: loopback unless asked, SOCKLAB-TAP/1 greeting, HTTP never acts (issue 14)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socklab.apps.echo.protocol import EchoProtocol
from socklab.tools.tap import Tap
from socklab.tools.tap.control import GREETING, ControlProtocol, looks_like_http, request
from tests.conftest import running_server

ADD = {"op": "add", "fault": {"kind": "limit_data", "direction": "downstream", "bytes": 1}}


@contextlib.contextmanager
def tap_with_control() -> Iterator[tuple[Tap, int]]:
    with running_server(EchoProtocol) as srv, Tap(target=("127.0.0.1", srv.port)) as tap:
        yield tap, int(tap.serve_control()[1])


def read_until_closed(sock: socket.socket) -> bytes:
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def http_post(body: bytes, content_type: str = "text/plain") -> bytes:
    """What a web page's fetch(..., {method: "POST", body}) sends: no preflight for text/plain."""
    return (b"POST /ctl HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\n"
            b"Content-Type: " + content_type.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


@pytest.mark.parametrize("body", [
    json.dumps(ADD).encode() + b"\n",
    b"\n" + json.dumps(ADD).encode() + b"\n",
    GREETING + b"\n" + json.dumps(ADD).encode() + b"\n",  # even a body that knows the greeting
], ids=["json", "blank-then-json", "greeting-in-body"])
def test_an_http_post_with_a_json_command_in_its_body_adds_no_fault(body: bytes) -> None:
    with tap_with_control() as (tap, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(http_post(body))
            assert read_until_closed(sock) == b""  # closed at the request line, nothing answered
        assert tap.faults == []
        assert request("127.0.0.1", port, {"op": "list"})["faults"] == []  # the tap still serves


def test_curl_posting_a_command_changes_nothing() -> None:
    """A real HTTP client (curl) against the control port: the connection closes, no fault.

    ``--http0.9`` makes curl accept any answer and send its whole body, as a browser that does
    not care about the answer would (a no-cors fetch): without the greeting rule the body's
    command is obeyed.
    """
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is not installed (scripts/setup.sh installs it)")
    with tap_with_control() as (tap, port):
        out = subprocess.run([curl, "-sS", "--http0.9", "--max-time", "20", "-H", "Content-Type: text/plain",
                              "--data-binary", json.dumps(ADD) + "\n", f"http://127.0.0.1:{port}/"],
                             capture_output=True, timeout=30)
        assert out.returncode != 0  # curl: empty reply from server
        assert tap.faults == []


def test_a_line_that_looks_like_http_closes_even_after_the_greeting() -> None:
    with tap_with_control() as (tap, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(GREETING + b"\nHost: 127.0.0.1\n" + json.dumps(ADD).encode() + b"\n")
            answers = read_until_closed(sock).splitlines()
        assert [json.loads(a) for a in answers] == [{"ok": True, "hello": GREETING.decode()}]
        assert tap.faults == []


def test_a_command_without_the_greeting_is_refused_and_closes() -> None:
    with tap_with_control() as (tap, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(json.dumps(ADD).encode() + b"\n" + json.dumps(ADD).encode() + b"\n")
            answers = [json.loads(a) for a in read_until_closed(sock).splitlines()]
        assert len(answers) == 1 and answers[0]["ok"] is False
        assert "SOCKLAB-TAP/1" in answers[0]["error"]
        assert tap.faults == []


def test_the_real_client_speaks_the_greeting_and_changes_faults() -> None:
    with tap_with_control() as (tap, port):
        assert request("127.0.0.1", port, ADD)["ok"]
        assert [f.kind for f in tap.faults] == ["limit_data"]


def test_the_ctl_command_changes_a_running_taps_faults(spawn: Any) -> None:
    with running_server(EchoProtocol) as srv:
        proc = spawn("tap", "127.0.0.1:0", "--to", f"127.0.0.1:{srv.port}", "--ctl", "0")
        port = proc.wait_for(r"control on tcp://127\.0\.0\.1:(\d+)").group(1)
        proc.wait_for(r"socklab tap seed")
        from tests.conftest import Proc

        ctl = Proc(["tap", "ctl", port, "add", "latency:downstream,latency=5"])
        out, err = ctl.popen.communicate(timeout=30)
        assert ctl.popen.returncode == 0, err
        assert json.loads(out)["fault"]["kind"] == "latency"
        listed = request("127.0.0.1", int(port), {"op": "list"})["faults"]
        assert [f["kind"] for f in listed] == ["latency"]


@pytest.mark.parametrize("ctl", ["0", ":0"])
def test_ctl_binds_loopback_by_default_without_a_warning(spawn: Any, ctl: str) -> None:
    with running_server(EchoProtocol) as srv:
        proc = spawn("tap", "127.0.0.1:0", "--to", f"127.0.0.1:{srv.port}", "--ctl", ctl)
        port = int(proc.wait_for(r"control on tcp://127\.0\.0\.1:(\d+)").group(1))
        proc.wait_for(r"socklab tap seed")
        ss = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=30)
        assert [line.split()[3] for line in ss.stdout.splitlines()] == [f"127.0.0.1:{port}"]
        proc.stop()
        assert proc.popen.stderr is not None
        assert "warning" not in proc.popen.stderr.read().decode()


def _netns() -> str | None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return None
    name = f"sltap{os.getpid()}"
    try:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=30)
    except (subprocess.SubprocessError, OSError):
        return None
    return name


def test_a_ctl_host_that_is_not_loopback_is_warned_about_on_stderr(spawn: Any) -> None:
    """``--ctl 0.0.0.0:0`` is honoured, with a warning. Run in a fresh network namespace (only lo)."""
    ns = _netns()
    if ns is None:
        pytest.fail("needs root and `ip netns` (binds 0.0.0.0 only inside a namespace of its own)")
    try:
        proc = spawn("tap", "127.0.0.1:0", "--to", "127.0.0.1:9", "--ctl", "0.0.0.0:0",
                     prefix=["ip", "netns", "exec", ns])
        proc.wait_for(r"control on tcp://0\.0\.0\.0:\d+")
        proc.wait_for(r"socklab tap seed")
        proc.stop()
        assert proc.popen.stderr is not None
        err = proc.popen.stderr.read().decode()
        assert "warning: the control API listens on 0.0.0.0:" in err and "not on loopback" in err
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


# ---- the protocol, sans I/O: whole and byte by byte -----------------------------------------------
class FakeTransport:
    def __init__(self) -> None:
        self.out = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.out += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class FakeTap:
    seed = 1
    faults: list[Any] = []
    fault_log: list[Any] = []
    stats: dict[str, int] = {}

    def __init__(self) -> None:
        self.added: list[Any] = []

    def add_fault(self, fault: Any) -> None:
        self.added.append(fault)


def converse(data: bytes, bytewise: bool) -> tuple[FakeTap, FakeTransport]:
    tap, transport = FakeTap(), FakeTransport()
    proto = ControlProtocol(tap)  # type: ignore[arg-type]
    proto.connection_made(transport)  # type: ignore[arg-type]
    for piece in ([data[i:i + 1] for i in range(len(data))] if bytewise else [data]):
        if transport.closed:
            break
        proto.data_received(piece)
    return tap, transport


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_the_conversation_is_the_same_whole_and_byte_by_byte(bytewise: bool) -> None:
    tap, t = converse(GREETING + b"\r\n" + json.dumps(ADD).encode() + b"\n", bytewise)
    assert [json.loads(a)["ok"] for a in t.out.splitlines()] == [True, True]
    assert len(tap.added) == 1 and not t.closed
    tap, t = converse(http_post(json.dumps(ADD).encode() + b"\n"), bytewise)
    assert t.out == b"" and t.closed and tap.added == []


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_no_input_without_the_greeting_ever_acts(data: bytes, bytewise: bool) -> None:
    tap, t = converse(data, bytewise)
    assert tap.added == []
    assert t.out.count(b"\n") <= 1  # at most the one refusal


@given(st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4))
def test_a_json_request_never_looks_like_http(obj: dict[str, str]) -> None:
    assert not looks_like_http(json.dumps(obj).encode())
    assert not looks_like_http(GREETING)


@pytest.mark.parametrize("line", [b"POST / HTTP/1.1", b"GET /x?y HTTP/1.0", b"Host: a", b"content-length:3",
                                  b"  Origin: http://evil.example"])
def test_http_lines_are_recognised(line: bytes) -> None:
    assert looks_like_http(line)


def test_the_ctl_command_escapes_an_error_from_whatever_answers() -> None:
    """Whatever listens on that port wrote the error: `tap ctl` shows it escaped, never raw."""
    import threading

    from tests.conftest import Proc

    with socket.create_server(("127.0.0.1", 0)) as lsock:
        def fake_tap() -> None:
            conn, _ = lsock.accept()
            with conn:
                conn.sendall(json.dumps({"ok": False, "error": "\x1b]0;pwned\x07\x1b[2J"},
                                        ensure_ascii=False).encode() + b"\n")
                conn.shutdown(socket.SHUT_WR)
                with contextlib.suppress(OSError):
                    conn.recv(1024)
        t = threading.Thread(target=fake_tap, daemon=True)
        t.start()
        ctl = Proc(["tap", "ctl", str(lsock.getsockname()[1]), "list"])
        out, err = ctl.popen.communicate(timeout=30)
        t.join(30)
    assert ctl.popen.returncode == 2
    assert b"\x1b" not in out + err and b"\x07" not in out + err
    assert rb"\x1b]0;pwned\x07" in err


def test_serving_control_on_a_running_tap_reports_a_failed_bind() -> None:
    """Tap.call hands the relay thread's exception back (it returned None, then `[1]` failed)."""
    from socklab.core.errors import SocklabError

    with tap_with_control() as (tap, port):
        with pytest.raises(SocklabError):
            tap.serve_control("127.0.0.1", port)  # that port is taken by the first control listener
