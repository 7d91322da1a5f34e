"""The node's control socket: a local Unix socket that answers ``status`` and takes commands.

Why this exists: a running node is a process with a prompt; scripts, tests and ``socklab peer
status`` need to ask it things without typing at that prompt. Each node serves, on its own
engine, a Unix stream socket (mode 0600 directory, so only its user can talk to it) under
``$XDG_RUNTIME_DIR/socklab/`` or ``/tmp/socklab-<uid>/``. One JSON object per line each way::

    -> {"cmd":"status"}                       <- {"ok":true,"status":{...}}
    -> {"cmd":"say","text":"hello"}           <- {"ok":true,"mid":"9a1b..."}
    -> {"cmd":"share","path":"/tmp/x.bin"}    <- {"ok":true,"sha256":"...","file":"x.bin","size":3}
    -> {"cmd":"fetch","file":"x.bin","dest":"/tmp/in"}  <- (when done) {"ok":true,"path":...}

Unix sockets live in the filesystem, not in a network namespace: a node started with ``ip netns
exec`` is still reachable here from the host, which is how the namespace tests drive it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from socklab.core.errors import ProtocolError, SocklabError
from socklab.core.protocol import Protocol
from socklab.core.settings import ClientSettings
from socklab.core.sockets import Endpoint
from socklab.core.transport import Transport
from socklab.protocols.lines import EndOfStream, LineDecoder
from socklab.runtime.client import run_client

if TYPE_CHECKING:
    from socklab.apps.peer.links import FetchResult
    from socklab.apps.peer.node import PeerNode

__all__ = ["ControlProtocol", "control_request"]


class ControlProtocol(Protocol):
    """Serves one control connection: requests one per line, answers one per line."""

    def __init__(self, node: PeerNode) -> None:
        self.node = node
        self.lines = LineDecoder(max_line=64 * 1024)
        self.pending = 0  # fetches whose answer is still owed
        self.eof = False

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.lines.receive_data(data)
        except ProtocolError as exc:
            self._reply({"ok": False, "error": str(exc)})
            self.transport.close()
            return
        while (event := self.lines.next_event()) is not None:
            if isinstance(event, EndOfStream):
                return
            self._handle(event.data)

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.pending:
            return True  # half-open: the answers to pending fetches are still owed
        return None

    def shutdown_requested(self) -> None:
        self.transport.close()

    def _reply(self, obj: dict[str, Any]) -> None:
        if not self.transport.is_closing():
            self.transport.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    def _handle(self, line: bytes) -> None:
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("a request is a JSON object")
            cmd = req.get("cmd")
            node = self.node
            if cmd == "status":
                self._reply({"ok": True, "status": node.status()})
            elif cmd == "say":
                self._reply({"ok": True, "mid": node.say(str(req.get("text", "")))})
            elif cmd == "share":
                offer = node.share(str(req.get("path", "")))
                self._reply({"ok": True, "sha256": offer.sha256, "file": offer.file, "size": offer.size})
            elif cmd == "fetch":
                dest = req.get("dest")

                def done(result: FetchResult) -> None:
                    self.pending -= 1
                    self._reply(result.as_json())
                    if self.eof and not self.pending:
                        self.transport.close()

                self.pending += 1
                try:
                    node.fetch(str(req.get("file", "")), done, dest_dir=str(dest) if dest else None)
                except BaseException:
                    self.pending -= 1
                    raise
            else:
                self._reply({"ok": False, "error": f"unknown command {str(cmd)[:40]!r} "
                                                   "(status, say, share, fetch)"})
        except (ValueError, SocklabError) as exc:
            self._reply({"ok": False, "error": str(exc)})


class _OneAnswer(Protocol):
    """The client's side: send one request line, keep the first answer line, close."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.answer = bytearray()

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.answer += data
        if b"\n" in self.answer or len(self.answer) > 1 << 20:
            self.transport.close()


def control_request(path: str, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to a node's control socket and return its answer.

    Raises:
        UsageError: the socket or its directory belongs to another user (see ``check_control_socket``).
        NetworkError (ConnectionRefused...): no node listens there.
        OperationTimeout: no answer within ``timeout``.
        RemoteProtocolError: the answer is not JSON.
    """
    from socklab.apps.peer.settings import check_control_socket
    from socklab.core.errors import RemoteProtocolError

    check_control_socket(path)
    answer_line = run_client(Endpoint(unix=path), lambda: _OneAnswer(json.dumps(request).encode() + b"\n"),
                             ClientSettings(connect_timeout=timeout), timeout=timeout).answer
    buf = bytes(answer_line)
    try:
        answer = json.loads(buf.split(b"\n", 1)[0])
    except ValueError as exc:
        raise RemoteProtocolError(f"the node answered something that is not JSON: {bytes(buf[:80])!r}") from exc
    if not isinstance(answer, dict):
        raise RemoteProtocolError("the node's answer is not a JSON object")
    return answer
