"""The tap's control API: change faults on a running tap, one JSON object per line.

Why this exists: a fault test often needs the network to break *during* a session (a transfer
that loses its link half-way) and heal again. The tap serves this small protocol on a loopback
TCP port, on the same engine as the relay; ``socklab tap ctl`` is its client.

A conversation opens with the greeting line ``SOCKLAB-TAP/1``; the tap answers
``{"ok": true, "hello": "SOCKLAB-TAP/1"}``. Then requests and answers are JSON lines::

    {"op": "list"}                                   -> {"ok": true, "seed": 1, "faults": [...]}
    {"op": "add", "fault": {"kind": "latency", "direction": "downstream", "latency": 100}}
    {"op": "remove", "name": "latency_downstream"}   -> {"ok": true, "removed": true}
    {"op": "clear"}                                  -> {"ok": true}
    {"op": "stats"}                                  -> {"ok": true, "stats": {...}, "recent_faults": [...]}

An error answers ``{"ok": false, "error": "one line"}`` and keeps the connection open. New
faults apply at once, to connections (and UDP flows) already open too.

Why the greeting: any web page the user visits can make the browser send an HTTP request to a
loopback port (``fetch("http://127.0.0.1:9999", {method: "POST", body: ...})`` needs no
preflight with ``Content-Type: text/plain``). Without a greeting, a JSON command in the body of
such a POST would be a valid request line on its own - a cross-protocol forgery. An HTTP request
always starts with its request line, never with ``SOCKLAB-TAP/1``, so it is refused before its
body is read; and a line that looks like an HTTP request line or header field closes the
connection at any point, without acting and without an answer.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from socklab.core.errors import RemoteProtocolError, SocklabError
from socklab.core.protocol import Protocol
from socklab.protocols.faults import Fault
from socklab.protocols.lines import Line, LineDecoder
from socklab.protocols.text import escape_peer_text

if TYPE_CHECKING:
    from socklab.core.transport import Transport
    from socklab.tools.tap.relay import Tap

__all__ = ["GREETING", "ControlProtocol", "handle_request", "looks_like_http", "request"]

GREETING = b"SOCKLAB-TAP/1"
# An HTTP/1.x request line (RFC 9112 §3: method SP target SP HTTP-version) or a header field
# (token ":"); JSON requests start with "{" and the greeting has no ":" or space.
_HTTP_LINE = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+(?: \S+ HTTP/|:)")


def looks_like_http(line: bytes) -> bool:
    """True if ``line`` is an HTTP request line or header field (the control API never is)."""
    return bool(_HTTP_LINE.match(line.lstrip()))


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
    """Serves the control API on one connection: the greeting first, then JSON lines."""

    def __init__(self, tap: Tap) -> None:
        self.tap = tap
        self.decoder = LineDecoder(max_line=64 * 1024)
        self.greeted = False

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.decoder.receive_data(data)
            while not self.transport.is_closing() and (event := self.decoder.next_event()) is not None:
                if isinstance(event, Line):
                    self._line(event.data)
        except RemoteProtocolError as exc:
            self._refuse(str(exc))

    def _line(self, line: bytes) -> None:
        if looks_like_http(line):
            self.transport.close()  # an HTTP request (a web page?) never gets to say anything here
            return
        if not self.greeted:
            if line.strip() != GREETING:
                shown = escape_peer_text(line[:40].decode("utf-8", "replace"))
                self._refuse(f"expected the greeting {GREETING.decode()!r} first, got {shown!r}")
                return
            self.greeted = True
            self._send({"ok": True, "hello": GREETING.decode()})
            return
        if not line.strip():
            return
        try:
            req = json.loads(line)
        except ValueError as exc:
            self._send({"ok": False, "error": f"not JSON: {exc}"})
            return
        self._send(handle_request(self.tap, req))

    def _send(self, answer: dict[str, Any]) -> None:
        self.transport.write(json.dumps(answer).encode() + b"\n")

    def _refuse(self, error: str) -> None:
        self._send({"ok": False, "error": error})
        self.transport.close()


class _Exchange(Protocol):
    """The client's side: the greeting and one request, then the two answer lines (hello, answer)."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.answer = bytearray()

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        transport.write(GREETING + b"\n" + self.request + b"\n")

    def data_received(self, data: bytes) -> None:
        self.answer += data
        if self.answer.count(b"\n") >= 2 or len(self.answer) > 1 << 20:
            self.transport.close()


def request(host: str, port: int, req: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one request to a running tap's control port (greeting first); return its answer.

    A client on the runtime's contract (:func:`socklab.runtime.client.run_client`): the engine
    connects and translates OS errors, the exchange is the protocol above.

    Raises:
        NetworkError: the tap cannot be reached or hung up; OperationTimeout: no answer in ``timeout``.
        SocklabError: the port does not speak ``SOCKLAB-TAP/1``.
    """
    from socklab.core.settings import ClientSettings
    from socklab.core.sockets import Endpoint
    from socklab.runtime.client import run_client

    buf = bytes(run_client(Endpoint(host, port), lambda: _Exchange(json.dumps(req).encode()),
                           ClientSettings(connect_timeout=timeout), timeout=timeout).answer)
    lines = buf.split(b"\n")
    try:
        hello: dict[str, Any] = json.loads(lines[0])
        if hello.get("hello") != GREETING.decode():
            return hello if "error" in hello else {"ok": False, "error": f"unexpected greeting {hello!r}"}
        answer: dict[str, Any] = json.loads(lines[1])
    except (ValueError, AttributeError, IndexError) as exc:
        shown = escape_peer_text(buf[:80].decode("utf-8", "replace"))
        raise SocklabError(f"{host}:{port} does not speak {GREETING.decode()}: it answered {shown!r}") from exc
    return answer
