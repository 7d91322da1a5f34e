"""The stream protocols of a peer node: a mesh link, a file sender, a file fetcher.

Why this exists: a peer node's one TCP port serves two kinds of connections - links to neighbours
(HELLO first) and file requests (WANT first) - and the node dials out with the same protocols.
These adapters turn bytes into :mod:`socklab.protocols.gossip` events and hand them to the
:class:`~socklab.apps.peer.node.PeerNode`, which holds all the mesh state. Everything here runs on
the node's one engine thread (protocol callbacks and timers are serialized), so nothing locks.

The fetcher is the minimal verified transfer the mesh needs (size and sha256 announced by the
holder's OFFER, written to ``NAME.part``, fsynced, checked, renamed; the ``.part`` is removed on any
failure). socklab's native file transfer app had not landed when this was written.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from socklab.core.errors import ProtocolError, SocklabError
from socklab.core.protocol import Protocol
from socklab.core.transport import Transport
from socklab.protocols import gossip as g

if TYPE_CHECKING:
    from socklab.apps.peer.node import PeerNode

__all__ = ["FetchProtocol", "FetchResult", "PeerLink"]

CHUNK = 64 * 1024


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
        self.sender: _FileSender | None = None
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

    def pause_writing(self) -> None:
        if self.sender is not None:
            self.sender.paused = True

    def resume_writing(self) -> None:
        if self.sender is not None:
            self.sender.paused = False
            self.sender.pump()

    def shutdown_requested(self) -> None:
        self.node.stopping = True
        self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if self.sender is not None:
            self.sender.close()
        self.node.link_lost(self, exc)

    def close(self) -> None:
        self.closed = True
        self.transport.close()

    def serve_file(self, path: str, header: g.FileHeader) -> None:
        """Answer a WANT: the header, then the body as fast as the peer reads, then close."""
        self.sender = _FileSender(self, path, header.size)
        self.send(header)
        self.sender.pump()

    def describe(self) -> str:
        if self.peer is not None:
            return f"{self.peer.name} {self.peer.listen}"
        peer = self.transport.get_extra_info("peername") if hasattr(self, "transport") else None
        return str(self.dialed or peer)


class _FileSender:
    """Streams one file into a link, pausing while the transport's buffer is above its high mark."""

    def __init__(self, link: PeerLink, path: str, size: int) -> None:
        self.link = link
        self.left = size
        self.paused = False
        self.file: BinaryIO | None = open(path, "rb")  # noqa: SIM115 - closed in close()

    def pump(self) -> None:
        while self.file is not None and not self.paused and not self.link.closed:
            chunk = self.file.read(min(CHUNK, self.left)) if self.left else b""
            if not chunk:
                self.close()
                self.link.close()  # flushes what is buffered, then FIN
                return
            self.left -= len(chunk)
            self.link.transport.write(chunk)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class FetchResult:
    """How a fetch ended: ``path`` on success, else ``error``."""

    def __init__(self, offer: g.Offer, path: str | None = None, error: str | None = None) -> None:
        self.offer = offer
        self.path = path
        self.error = error

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.error is None, "file": self.offer.file, "sha256": self.offer.sha256,
                "size": self.offer.size, "holder": self.offer.holder, "path": self.path, "error": self.error}


class FetchProtocol(Protocol):
    """Fetch one offered file straight from its holder, verified (size and sha256), atomically.

    Args:
        offer: what is fetched (its size and sha256 are checked against what arrives).
        dest: the final path; the bytes go to ``dest + ".part"`` until verified.
        done: called once with the :class:`FetchResult`.
        max_frame: frame limit of the gossip decoder.
    """

    def __init__(self, offer: g.Offer, dest: str, done: Callable[[FetchResult], None],
                 max_frame: int = g.MAX_FRAME) -> None:
        self.offer = offer
        self.dest = dest
        self.part = dest + ".part"
        self.done = done
        self.conn = g.GossipConnection(max_frame)
        self.file: BinaryIO | None = None
        self.hash = hashlib.sha256()
        self.received = 0
        self.finished = False

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        transport.write(self.conn.send(g.Want(self.offer.sha256)))

    def data_received(self, data: bytes) -> None:
        try:
            self.conn.receive_data(data)
            for event in self.conn.events():
                self._on_event(event)
                if self.finished:
                    return
        except (ProtocolError, SocklabError, OSError) as exc:
            self._fail(str(exc))

    def _on_event(self, event: g.Event) -> None:
        if isinstance(event, g.Refused):
            self._fail(f"the holder refused: {event.reason}")
        elif isinstance(event, g.FileHeader):
            if event.sha256 != self.offer.sha256 or event.size != self.offer.size:
                self._fail("the holder announced a different file than its offer")
                return
            self.file = open(self.part, "wb")  # noqa: SIM115 - closed in _finish/_fail
        elif isinstance(event, g.FileData):
            if self.file is None:
                self._fail("file data before the file header")
                return
            self.file.write(event.data)
            self.hash.update(event.data)
            self.received += len(event.data)
        elif isinstance(event, g.FileEnd):
            self._verify_and_rename()
        elif isinstance(event, g.EndOfStream):
            self._fail("the holder closed the connection before sending the file")
        # HELLO/MEMBERS/PING from a holder that took us for a link are ignored

    def _verify_and_rename(self) -> None:
        assert self.file is not None
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.file = None
        digest = self.hash.hexdigest()
        if self.received != self.offer.size or digest != self.offer.sha256:
            self._fail(f"verification failed: got {self.received} bytes with sha256 {digest[:16]}..., "
                       f"expected {self.offer.size} bytes with {self.offer.sha256[:16]}...")
            return
        os.rename(self.part, self.dest)
        with contextlib.suppress(OSError):
            dirfd = os.open(str(Path(self.dest).parent), os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        self.finished = True
        self.transport.close()
        self.done(FetchResult(self.offer, path=self.dest))

    def _fail(self, why: str) -> None:
        if self.finished:
            return
        self.finished = True
        if self.file is not None:
            self.file.close()
            self.file = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.part)
        self.transport.abort()
        self.done(FetchResult(self.offer, error=why))

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.finished:
            self._fail(f"connection lost ({exc or 'closed'}) after {self.received} bytes")
