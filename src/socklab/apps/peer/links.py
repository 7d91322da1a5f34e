"""The stream protocols of a peer node: a mesh link, a file sender, a file fetcher.

Why this exists: a peer node's one TCP port serves two kinds of connections - links to neighbours
(HELLO first) and file requests (WANT first) - and the node dials out with the same protocols.
These adapters turn bytes into :mod:`socklab.protocols.gossip` events and hand them to the
:class:`~socklab.apps.peer.node.PeerNode`, which holds all the mesh state. Everything here runs on
the node's one engine thread (protocol callbacks and timers are serialized), so nothing locks.

Files travel with socklab's native transfer (:mod:`socklab.apps.transfer`): the fetcher asks the
holder for a file on a mesh connection (WANT); the holder answers with the port of a one-shot
transfer listener (TRANSFER) and sends the file there with the transfer's sender (``sendfile``,
hashes, resume); the fetcher receives it with the transfer's receiver on its own engine (``.part``,
SHA-256 against the sender's trailer, fsync, rename) and finally checks the landed file against
the sha256 the OFFER announced, so a holder whose file changed since it was shared cannot hand
over something else.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from socklab.apps.transfer.receiver import ReceiverProtocol, ReceiveSession, ReceiveSettings
from socklab.apps.transfer.sender import SendServer
from socklab.core.errors import ProtocolError, SocklabError
from socklab.core.protocol import Protocol
from socklab.core.trace import format_addr
from socklab.core.transport import Transport
from socklab.protocols import gossip as g

if TYPE_CHECKING:
    from socklab.apps.peer.node import PeerNode

__all__ = ["FetchRequest", "FetchResult", "PeerLink", "Receiver", "send_file", "sha256_of"]

class PeerLink(Protocol):
    """One TCP connection of the node: a neighbour link, or (inbound) a file request.

    Args:
        node: the node that owns the mesh state.
        dialed: the ``HOST:PORT`` this node dialled, or ``None`` for an accepted connection.
    """

    def __init__(self, node: PeerNode, dialed: str | None = None) -> None:
        self.node = node
        self.dialed = dialed
        self.conn = g.GossipConnection(node.settings.max_frame)
        self.peer: g.Member | None = None  # set once HELLO arrived and the node registered us
        self.superseded = False  # closed because a better link to the same node exists
        self.rtt: float | None = None
        self.last_heard = time.monotonic()
        self.since = time.time()
        self.frames_in = 0
        self.closed = False

    @property
    def outbound(self) -> bool:
        return self.dialed is not None

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        if self.outbound:
            self.node.link_opened(self)
            self.send(self.node.hello())

    def send(self, frame: g.Frame) -> None:
        if not self.closed and not self.transport.is_closing():
            self.transport.write(self.conn.send(frame))

    def data_received(self, data: bytes) -> None:
        self.last_heard = time.monotonic()
        try:
            self.conn.receive_data(data)
            for event in self.conn.events():
                if self.closed:
                    return
                self.frames_in += 1
                self.node.on_event(self, event)
        except ProtocolError as exc:
            self.node.log(f"dropping a link ({self.describe()}): {exc}")
            self.transport.abort()

    def eof_received(self) -> bool | None:
        self.conn.receive_data(b"")
        with contextlib.suppress(ProtocolError):
            for event in self.conn.events():
                self.node.on_event(self, event)
        return None

    def shutdown_requested(self) -> None:
        self.node.stopping = True
        self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.node.link_lost(self, exc)

    def close(self) -> None:
        self.closed = True
        self.transport.close()

    def describe(self) -> str:
        if self.peer is not None:
            return f"{self.peer.name} {self.peer.listen}"
        if self.dialed is not None:
            return self.dialed
        peer = self.transport.get_extra_info("peername") if hasattr(self, "transport") else None
        return format_addr(peer) if peer else "?"


class FetchResult:
    """How a fetch ended: ``path`` on success, else ``error``."""

    def __init__(self, offer: g.Offer, path: str | None = None, error: str | None = None) -> None:
        self.offer = offer
        self.path = path
        self.error = error

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.error is None, "file": self.offer.file, "sha256": self.offer.sha256,
                "size": self.offer.size, "holder": self.offer.holder, "path": self.path, "error": self.error}


class FetchRequest(Protocol):
    """Ask a holder for one file: WANT, then TRANSFER (a port to fetch it from) or REFUSED.

    Args:
        offer: the file wanted.
        answer: called once with the transfer port, or with an error message.
        max_frame: frame limit of the gossip decoder.
    """

    def __init__(self, offer: g.Offer, answer: Callable[[int | None, str | None], None],
                 max_frame: int = g.MAX_FRAME) -> None:
        self.offer = offer
        self.answer = answer
        self.conn = g.GossipConnection(max_frame)
        self.answered = False

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        transport.write(self.conn.send(g.Want(self.offer.sha256)))

    def _give(self, port: int | None, error: str | None) -> None:
        if not self.answered:
            self.answered = True
            self.transport.close()
            self.answer(port, error)

    def data_received(self, data: bytes) -> None:
        try:
            self.conn.receive_data(data)
            for event in self.conn.events():
                if isinstance(event, g.Transfer) and event.sha256 == self.offer.sha256:
                    self._give(event.port, None)
                elif isinstance(event, g.Refused):
                    self._give(None, f"the holder refused: {event.reason}")
                elif isinstance(event, g.EndOfStream):
                    self._give(None, "the holder closed the connection without an answer")
                # HELLO/MEMBERS/PING from a holder that took us for a link are ignored
        except ProtocolError as exc:
            self._give(None, str(exc))

    def connection_lost(self, exc: BaseException | None) -> None:
        self._give(None, f"connection to the holder lost ({exc or 'closed'})")


class Receiver(ReceiverProtocol):
    """The native transfer's receiver; tells the fetch how its session ended."""

    def __init__(self, settings: ReceiveSettings, on_session: Callable[[ReceiveSession], None]) -> None:
        super().__init__(settings, on_session=on_session)


def sha256_of(path: str) -> str:
    """The SHA-256 of a file, hex (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def send_file(sender: SendServer, timeout: float) -> str | None:
    """Let one fetcher connect to ``sender`` (a one-shot transfer port) within ``timeout`` seconds and
    send it the file with the native transfer; blocks (run it on a thread of its own). A fetcher
    that stops taking bytes is given up after ``timeout`` seconds too (the sender's stall timeout).

    Returns:
        ``None`` on success, else why it failed (one line).
    """
    try:
        reports = sender.run(accept_timeout=timeout).result()
    except SocklabError as exc:
        return str(exc) if sender.connected.is_set() else f"no fetcher connected within {timeout:g} s"
    bad = [r for r in reports if not r.ok]
    return None if not bad else f"{bad[0].name}: {bad[0].error}"
