"""Replay a recorded session against any server and compare the answers with the recording.

Why this exists: a bug seen once through the tap (``--record session.jsonl``) becomes a regression
test: replay the client's bytes against a fixed server, another engine, or another
implementation, and see whether it answers the same bytes. For each recorded connection the
replayer sends the client's chunks in order, and before each chunk waits until as many answer
bytes arrived as the recording had at that point - so request/response protocols replay in step.
"""

from __future__ import annotations

import base64
import json
import socket
from dataclasses import dataclass, field
from typing import Any

from socklab.core.errors import UsageError, translate_oserror
from socklab.core.sockets import Endpoint, connect_tcp

__all__ = ["ReplayResult", "load_recording", "replay"]


@dataclass
class _Conn:
    index: int
    udp: bool = False
    steps: list[tuple[str, bytes]] = field(default_factory=list)  # ("up"|"down", data) or ("fin", b"")


@dataclass
class ReplayResult:
    """The outcome for one recorded connection."""

    index: int
    expected: bytes
    received: bytes

    @property
    def matches(self) -> bool:
        return self.expected == self.received

    def describe(self) -> str:
        if self.matches:
            return f"#{self.index}: same {len(self.received)} response bytes as recorded"
        n = next((i for i, (a, b) in enumerate(zip(self.expected, self.received, strict=False)) if a != b),
                 min(len(self.expected), len(self.received)))
        return (f"#{self.index}: response differs at byte {n} (recorded {len(self.expected)} bytes, got "
                f"{len(self.received)}): expected {self.expected[n:n + 24]!r}, got {self.received[n:n + 24]!r}")


def load_recording(path: str) -> list[_Conn]:
    """Read a ``--record`` file. Raises UsageError when it is not one."""
    conns: dict[int, _Conn] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                obj: dict[str, Any] = json.loads(line)
                c = conns.setdefault(int(obj["conn"]), _Conn(int(obj["conn"])))
                if obj.get("event") == "open":
                    c.udp = bool(obj.get("udp"))
                elif "data" in obj:
                    c.steps.append((obj["dir"], base64.b64decode(obj["data"])))
                elif obj.get("event") == "fin" and obj.get("dir") == "up":
                    c.steps.append(("fin", b""))
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"cannot read recording {path!r}: {exc}") from exc
    return [conns[k] for k in sorted(conns)]


def _read_until(sock: socket.socket, received: bytearray, want: int, eof: bool) -> bool:
    """Read until ``want`` bytes (or EOF when ``eof``); False when the peer closed early."""
    while eof or len(received) < want:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return False
        if not chunk:
            return False
        received += chunk
    return True


def replay(path: str, target: Endpoint, *, timeout: float = 5.0) -> list[ReplayResult]:
    """Replay every TCP connection of the recording at ``path`` against ``target``.

    Raises:
        UsageError: not a recording; ConnectError and friends: the target cannot be reached.
    """
    results = []
    for conn in load_recording(path):
        if conn.udp:
            results.append(_replay_udp(conn, target, timeout))
            continue
        sock = connect_tcp(target, timeout=timeout)
        sock.settimeout(timeout)
        expected, received = bytearray(), bytearray()
        try:
            for kind, data in conn.steps:
                if kind == "down":
                    expected += data
                elif kind == "up":
                    _read_until(sock, received, len(expected), eof=False)
                    sock.sendall(data)
                else:
                    sock.shutdown(socket.SHUT_WR)
            _read_until(sock, received, len(expected), eof=("fin", b"") in conn.steps)
        except OSError as exc:
            raise translate_oserror(exc, f"replaying connection #{conn.index} to {target}") from exc
        finally:
            sock.close()
        results.append(ReplayResult(conn.index, bytes(expected), bytes(received)))
    return results


def _replay_udp(conn: _Conn, target: Endpoint, timeout: float) -> ReplayResult:
    """UDP: send each recorded datagram, then wait for as many answers as were recorded after it.

    Datagrams are compared one by one (each is length-prefixed in the result, so boundaries count).
    """
    from socklab.core.sockets import open_udp_socket

    sock = open_udp_socket("", 0, connect_to=(target.host, target.port))
    sock.settimeout(timeout)
    expected, received = bytearray(), bytearray()
    try:
        steps = conn.steps
        for i, (kind, data) in enumerate(steps):
            if kind != "up":
                continue
            sock.send(data)
            answers = 0
            for later_kind, later in steps[i + 1:]:
                if later_kind == "up":
                    break
                if later_kind == "down":
                    answers += 1
                    expected += len(later).to_bytes(4, "big") + later
            for _ in range(answers):
                try:
                    got = sock.recv(65536)
                except TimeoutError:
                    break
                received += len(got).to_bytes(4, "big") + got
    except OSError as exc:
        raise translate_oserror(exc, f"replaying UDP flow #{conn.index} to {target}") from exc
    finally:
        sock.close()
    return ReplayResult(conn.index, bytes(expected), bytes(received))
