"""The tap's control API: change faults on a running tap, one JSON object per line.

Why this exists: a fault test often needs the network to break *during* a session (a transfer
that loses its link half-way) and heal again. The tap serves this small protocol on a loopback
TCP port, on the same engine as the relay; ``socklab tap ctl`` is its client.

Requests and answers are JSON lines::

    {"op": "list"}                                   -> {"ok": true, "seed": 1, "faults": [...]}
    {"op": "add", "fault": {"kind": "latency", "direction": "downstream", "latency": 100}}
    {"op": "remove", "name": "latency_downstream"}   -> {"ok": true, "removed": true}
    {"op": "clear"}                                  -> {"ok": true}
    {"op": "stats"}                                  -> {"ok": true, "stats": {...}, "recent_faults": [...]}

An error answers ``{"ok": false, "error": "one line"}`` and keeps the connection open. New
faults apply to connections (and UDP flows) opened afterwards.
"""

from __future__ import annotations

import json
import socket
from typing import TYPE_CHECKING, Any

from socklab.core.errors import RemoteProtocolError, SocklabError, translate_oserror
from socklab.core.protocol import Protocol
from socklab.protocols.faults import Fault
from socklab.protocols.lines import Line, LineDecoder

if TYPE_CHECKING:
    from socklab.core.transport import Transport
    from socklab.tools.tap.relay import Tap

__all__ = ["ControlProtocol", "handle_request", "request"]


def handle_request(tap: Tap, req: Any) -> dict[str, Any]:
    """Answer one control request (runs on the tap's engine thread)."""
    if not isinstance(req, dict):
        return {"ok": False, "error": "a request is a JSON object with an 'op'"}
    op = req.get("op")
    try:
        if op == "list":
            return {"ok": True, "seed": tap.seed, "faults": [f.to_dict() for f in tap.faults]}
        if op == "add":
            fault = Fault.from_dict(req.get("fault") or {})
            tap.add_fault(fault)
            return {"ok": True, "fault": fault.to_dict()}
        if op == "remove":
            return {"ok": True, "removed": tap.remove_fault(str(req.get("name")))}
        if op == "clear":
            tap.set_faults([])
            return {"ok": True}
        if op == "stats":
            recent = [{"conn": e.conn, "direction": e.direction, "kind": e.kind, "text": e.text}
                      for e in tap.fault_log[-20:]]
            return {"ok": True, "stats": dict(tap.stats), "recent_faults": recent}
    except SocklabError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": False, "error": f"unknown op {op!r}; use list, add, remove, clear or stats"}


class ControlProtocol(Protocol):
    """Serves the control API on one connection."""

    def __init__(self, tap: Tap) -> None:
        self.tap = tap
        self.decoder = LineDecoder(max_line=64 * 1024)

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.decoder.receive_data(data)
            while (event := self.decoder.next_event()) is not None:
                if isinstance(event, Line) and event.data.strip():
                    self._answer(event.data)
        except RemoteProtocolError as exc:
            self.transport.write(json.dumps({"ok": False, "error": str(exc)}).encode() + b"\n")
            self.transport.close()

    def _answer(self, line: bytes) -> None:
        try:
            req = json.loads(line)
        except ValueError as exc:
            answer: dict[str, Any] = {"ok": False, "error": f"not JSON: {exc}"}
        else:
            answer = handle_request(self.tap, req)
        self.transport.write(json.dumps(answer).encode() + b"\n")


def request(host: str, port: int, req: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to a running tap's control port; return its answer.

    Raises:
        NetworkError: the tap cannot be reached or hung up.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(json.dumps(req).encode() + b"\n")
            buf = b""
            while b"\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except OSError as exc:
        raise translate_oserror(exc, f"talking to the tap's control port {host}:{port}") from exc
    try:
        answer: dict[str, Any] = json.loads(buf.split(b"\n", 1)[0])
    except ValueError as exc:
        raise SocklabError(f"the control port answered something that is not JSON: {buf[:80]!r}") from exc
    return answer
