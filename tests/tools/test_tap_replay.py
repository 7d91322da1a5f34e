"""``socklab tap replay`` on the runtime client (issue 18): in step, EOF, silence and errors.

The replayer is a client on :mod:`socklab.runtime.client` (it owned a blocking socket before): these
tests pin what it does with servers that answer late, only at EOF, too little, or not at all.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from socklab.apps.echo.protocol import EchoDatagramProtocol, EchoProtocol
from socklab.core.errors import ConnectionRefused
from socklab.core.protocol import Protocol
from socklab.core.sockets import Endpoint
from socklab.tools.tap.replay import replay
from tests.conftest import running_server

pytestmark = pytest.mark.timeout(60)


def recording(path: Path, *conns: tuple[bool, list[tuple[str, bytes]]]) -> str:
    """A ``--record`` file: for each connection (udp?, [("up"|"down", data) or ("fin", b"")])."""
    lines = []
    for index, (udp, steps) in enumerate(conns):
        lines.append({"conn": index, "event": "open", "udp": udp})
        for kind, data in steps:
            if kind == "fin":
                lines.append({"conn": index, "event": "fin", "dir": "up"})
            else:
                lines.append({"conn": index, "dir": kind, "data": base64.b64encode(data).decode()})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def closed_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CountAtEof(Protocol):
    """Answers only once the client half-closed: how many bytes it sent."""

    def connection_made(self, transport: Any) -> None:
        self.transport, self.n = transport, 0

    def data_received(self, data: bytes) -> None:
        self.n += len(data)

    def eof_received(self) -> bool:
        self.transport.write(b"%d\n" % self.n)
        self.transport.close()
        return True


class Late(Protocol):
    """Answers each line after a pause: the replayer must wait for it before the next chunk."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.call_later(0.2, lambda: self.transport.write(data.upper()))


def test_an_answer_given_only_at_eof_is_waited_for(tmp_path: Path) -> None:
    rec = recording(tmp_path / "r.jsonl", (False, [("up", b"abc"), ("up", b"de"), ("fin", b""), ("down", b"5\n")]))
    with running_server(CountAtEof) as srv:
        [result] = replay(rec, Endpoint("127.0.0.1", srv.port), timeout=10)
    assert result.matches, result.describe()


def test_chunks_go_in_step_with_late_answers(tmp_path: Path) -> None:
    steps = [("up", b"one\n"), ("down", b"ONE\n"), ("up", b"two\n"), ("down", b"TWO\n")]
    rec = recording(tmp_path / "r.jsonl", (False, steps), (False, steps))
    with running_server(Late) as srv:
        results = replay(rec, Endpoint("127.0.0.1", srv.port), timeout=10)
    assert [r.matches for r in results] == [True, True], [r.describe() for r in results]


def test_a_silent_server_costs_the_timeout_per_wait_then_differs(tmp_path: Path) -> None:
    rec = recording(tmp_path / "r.jsonl", (False, [("up", b"x"), ("down", b"y"), ("up", b"z"), ("down", b"w")]))
    with running_server(Protocol) as srv:  # reads and never answers
        start = time.monotonic()
        [result] = replay(rec, Endpoint("127.0.0.1", srv.port), timeout=0.3)
        took = time.monotonic() - start
    assert not result.matches and result.received == b"" and "differs at byte 0" in result.describe()
    assert 0.5 <= took < 10  # two waits of 0.3 s of silence each, not forever


def test_udp_flows_replay_datagram_by_datagram(tmp_path: Path) -> None:
    rec = recording(tmp_path / "u.jsonl", (True, [("up", b"a"), ("down", b"a"), ("up", b""), ("down", b""),
                                                  ("up", b"bc"), ("down", b"bc")]))
    with running_server(EchoDatagramProtocol, udp=True) as srv:
        [result] = replay(rec, Endpoint("127.0.0.1", srv.port), timeout=10)
    assert result.matches, result.describe()


def test_nothing_listening_is_connection_refused(tmp_path: Path) -> None:
    tcp = recording(tmp_path / "t.jsonl", (False, [("up", b"x"), ("down", b"x")]))
    udp = recording(tmp_path / "u.jsonl", (True, [("up", b"x"), ("down", b"x")]))
    with pytest.raises(ConnectionRefused):
        replay(tcp, Endpoint("127.0.0.1", closed_port()), timeout=10)
    with pytest.raises(ConnectionRefused):  # ICMP port unreachable, as the old blocking recv() said
        replay(udp, Endpoint("127.0.0.1", closed_port(socket.SOCK_DGRAM)), timeout=10)


def test_an_echo_replays_exactly(tmp_path: Path) -> None:
    rec = recording(tmp_path / "r.jsonl", (False, [("up", b"hello\n"), ("down", b"hel"), ("down", b"lo\n"),
                                                   ("fin", b"")]))
    with running_server(EchoProtocol) as srv:
        [result] = replay(rec, Endpoint("127.0.0.1", srv.port), timeout=10)
    assert result.matches and result.received == b"hello\n"
