"""The TCP adapter: one line client (nc, telnet, the terminal client, a bot) as a hub member.

Why this exists: it glues three things together - the engine's transport, the sans-I/O
:class:`~socklab.protocols.chat.ChatConnection` (bytes to commands) and the
:class:`~socklab.apps.chat.hub.ChatHub`. Its one piece of policy is the *slow consumer*:

- while the transport accepts data, frames are written at once (the engine tries ``send()``
  immediately and buffers only the leftover, up to its high-water mark); meanwhile the transport's
  ``write`` is this member's ``fast_write``, which a room's fan-out calls directly (:mod:`.fanout`);
- when the transport says ``pause_writing`` (the peer stopped reading and the kernel buffers are
  full), frames wait in a per-client queue bounded by ``max_queue`` bytes;
- when that queue is full the client is disconnected with ``BYE`` and the reason (best effort: a
  client that does not read may never see it). Nobody else waits for it: a fan-out only ever
  appends to buffers, it never blocks on one client.
"""

from __future__ import annotations

from collections import deque

from socklab.apps.chat.hub import ChatHub, Frame, Member
from socklab.core.errors import RemoteProtocolError
from socklab.core.protocol import Protocol
from socklab.core.trace import format_addr
from socklab.core.transport import Transport
from socklab.protocols.chat import Bye, ChatConnection, Command, EndOfInput, ErrorReply, Invalid

__all__ = ["ChatLineProtocol"]

CLOSE_GRACE = 10.0  # seconds a closing connection gets to flush its BYE before it is aborted


class ChatLineProtocol(Protocol, Member):
    """A line-protocol chat client.

    Args:
        hub: the node's hub.
    """

    kind = "tcp"

    def __init__(self, hub: ChatHub) -> None:
        Member.__init__(self)
        self.hub = hub
        self.conn = ChatConnection(hub.settings.max_line)
        self.paused = False
        self.queue: deque[bytes] = deque()
        self.queued = 0
        self.closing = False
        self.dropped_slow = False
        self.limit = hub.settings.max_buffer + hub.settings.max_queue  # bytes waiting for this client, at most

    # ---- transport callbacks ---------------------------------------------------------------------
    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self.fast_write = transport.write  # until paused or closing: the fan-out writes to it directly
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer, self.address = format_addr(peer), str(peer[0])  # [::1]:5000 for IPv6
        else:  # a Unix socket: no address to count
            self.peer = str(peer)
        self.hub.attach(self)  # or BYE with the reason (full, too many from this address) and close

    def data_received(self, data: bytes) -> None:
        if self.gone:
            return
        self.conn.receive_data(data)
        self._drain_events()

    def _drain_events(self) -> None:
        while not self.gone:
            try:
                ev = self.conn.next_event()
            except RemoteProtocolError as exc:
                # A line over max_line: the only fatal input. Say why, then close (the buffer is bounded).
                self.send(ErrorReply(exc.hint or 413, str(exc)))
                self.close_with(Bye(f"{exc}; closing"))
                self.hub.detach(self, "line too long")
                return
            if ev is None:
                return
            if isinstance(ev, Invalid):
                self.hub.invalid(self, ev.code, ev.reason)
            elif isinstance(ev, EndOfInput):
                self.hub.detach(self, "connection closed")
                return
            else:
                assert isinstance(ev, Command)
                self.hub.handle(self, ev)

    def eof_received(self) -> bool | None:
        if not self.gone:
            self.conn.receive_data(b"")
            self._drain_events()
        return None  # close our side too

    def connection_lost(self, exc: BaseException | None) -> None:
        self.fast_write = None
        self.queue.clear()
        self.hub.detach(self, "connection lost" if exc is None else f"connection lost: {exc}")

    def pause_writing(self) -> None:
        # Called inside the write that crossed the high-water mark: the next frame already queues.
        self.paused = True
        self.fast_write = None

    def resume_writing(self) -> None:
        self.paused = False
        write = self.transport.write
        while self.queue and not self.paused:
            data = self.queue.popleft()
            self.queued -= len(data)
            write(data)
        if not self.paused and not self.closing:  # the queue is empty: frames may skip it again
            self.fast_write = write

    def shutdown_requested(self) -> None:
        if not self.gone:
            self.close_with(Bye("server shutting down; reconnect later"))
            self.hub.detach(self, "server shutting down")

    # ---- Member ----------------------------------------------------------------------------------
    def send_frame(self, frame: Frame) -> None:
        if self.closing:
            return
        if not self.paused:
            transport = self.transport
            transport.write(frame.line)
            # Engines call pause_writing when they can; the buffer size is the check that never waits.
            if transport.get_write_buffer_size() > self.limit:
                self._drop_slow()
            return
        data = frame.line
        self.queue.append(data)
        self.queued += len(data)
        if self.queued > self.hub.settings.max_queue:
            self._drop_slow()

    def _drop_slow(self) -> None:
        self.dropped_slow = True
        self.fast_write = None
        self.queue.clear()
        self.queued = 0
        self.paused = False
        self.close_with(Bye(f"outbound queue full ({self.hub.settings.max_queue} bytes): you are not "
                            "reading; disconnected (507)"))
        self.hub.detach(self, "too slow (outbound queue full)")

    def send_frames(self, frames: list[Frame]) -> None:
        if not self.paused and not self.closing:
            self.transport.write(b"".join(f.line for f in frames))  # one send() for the whole batch
            if self.transport.get_write_buffer_size() > self.limit:
                self._drop_slow()
            return
        for frame in frames:
            self.send_frame(frame)

    def close_with(self, bye: Bye) -> None:
        if self.closing:
            return
        self.fast_write = None
        self.transport.write(Frame(bye).line)
        self.closing = True
        self.transport.close()
        # A peer that does not read would keep close() waiting for the buffer to drain: bound it.
        self.transport.call_later(CLOSE_GRACE, self.transport.abort)
