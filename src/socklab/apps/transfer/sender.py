"""The sending side of a native transfer: a protocol on an engine, ``sendfile`` for the bytes, a thread for the hash.

Why this exists: the fastest way to put a file on a TCP connection is to not touch it - the
kernel copies from the page cache to the socket (the transport's ``sendfile`` capability: ``os.sendfile``
where the engine can, zero copies in user space). Verification needs the bytes hashed though, so one
thread reads the same file (``preadv`` into one reused 1 MiB buffer) and computes its blake3-tree
hash (per-chunk digests and the root, one pass) while the engine sends; BLAKE3 releases the GIL, so
on a multi-core machine the hashing runs beside the copy instead of in front of it, at ~0.25 CPU s
per GiB including the read.

The sender stands on the same contract as a server (:mod:`socklab.core.protocol`): a
:class:`SenderProtocol` driven by an engine, whose OS errors the engine has translated already.
:func:`send_to` connects to a receiver through :mod:`socklab.runtime.client`; :class:`SendServer`
is reverse mode, a one-connection runtime server the receiver connects to. The session's rules
come from :mod:`socklab.protocols.transfer`. Threads: the protocol runs on the engine's thread;
the hash thread and, for stdin, a reading thread (:mod:`socklab.apps.transfer.sources`) hand
their results to it through ``post`` (the engine's ``call_soon_threadsafe``). While a file's bytes stream the write buffer's water marks are
zero, so ``pause_writing``/``resume_writing`` say exactly "socket full"/"drained"; between two
turns of the pump the engine reads the receiver, so an early ERROR (a full disk) stops the sender
within a socket buffer instead of after gigabytes sent into a void.
"""

from __future__ import annotations

import enum
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from socklab.apps.transfer.settings import SendSettings
from socklab.apps.transfer.sources import FileHashes, Post, SendItem, StdinReader, collect, os_reason
from socklab.core.errors import BrokenError, OperationTimeout, RemoteProtocolError, SocklabError
from socklab.core.protocol import Protocol
from socklab.core.sockets import Endpoint
from socklab.core.trace import Tracer
from socklab.core.transport import TimerHandle, Transport
from socklab.protocols import transfer as tp
from socklab.protocols.text import escape_peer_text
from socklab.runtime import Server
from socklab.runtime.client import BlockingClient

__all__ = ["SendItem", "SendReport", "SendServer", "SenderProtocol", "collect", "send_to"]

SLICE = 8 << 20  # bytes per turn of the pump; then the engine reads the receiver (an early ERROR)
POKE = 16 * 1024  # socket full: this many file bytes go through the write buffer, whose drain says "writable"


@dataclass
class SendReport:
    """What happened to one entry: ``sent`` bytes went out, starting at ``offset`` (a resume)."""

    name: str
    ok: bool
    bytes: int = 0
    sent: int = 0
    offset: int = 0
    error: str | None = None
    code: str | None = None


class _Step(enum.Enum):
    """Where the session is; the value says it in an error message."""

    HELLO = "waiting for the receiver's HELLO"
    ANSWER = "waiting for the receiver's OFFER or RESULT"
    PREFIX = "checking the receiver's resumable prefix"
    FILE = "sending"
    STREAM = "sending stdin"
    HASH = "finishing the file's hash"
    RESULT = "waiting for the receiver's RESULT"
    DONE = "ending the session"


class SenderProtocol(Protocol):
    """Send ``items`` to the receiver at the other end of the connection, then DONE and close.

    Args:
        items: what to send (see :func:`collect`).
        settings: the chunk size and the stall timeout (see :class:`SendSettings`).
        post: runs a callable on this protocol's engine from another thread (the engine's
            ``call_soon_threadsafe``): the hash and stdin threads hand their results over with it.
        progress: called (on the engine) with the number of bytes just handed to the kernel.
        skipped: called (on the engine) with bytes the receiver already had and that need not
            travel (a resumed prefix, a file present): a bar counts them too, to end at 100 %.
        stdin: where a ``-`` entry reads from (default: the process's stdin).
        on_done: called (on the engine) with this protocol once the connection is over.

    After ``connection_lost``: :meth:`result` returns the reports or raises why the session failed;
    ``started``/``ended`` are its ``time.monotonic()`` span.
    """

    def __init__(self, items: list[SendItem], settings: SendSettings, post: Post, *,
                 progress: Callable[[int], None] | None = None, skipped: Callable[[int], None] | None = None,
                 stdin: IO[bytes] | None = None, on_done: Callable[[SenderProtocol], None] | None = None) -> None:
        self.items, self.settings, self.post = list(items), settings, post
        self.progress, self.skipped, self.on_done = progress, skipped, on_done
        self.stdin = stdin if stdin is not None else sys.stdin.buffer
        self.conn = tp.TransferConnection("sender")
        self._made = False  # connection_made ran: self.transport is there
        self.reports: list[SendReport] = []
        self.error: BaseException | None = None
        self.complete = False  # every entry answered and DONE written
        self.interrupted = False  # the server this runs in was asked to shut down
        self.started = self.ended = 0.0
        self._step = _Step.HELLO
        self._index = -1
        self._paused = False
        self._moved = 0  # bytes handed to the transport (the stall watchdog compares it)
        self._watchdog: TimerHandle | None = None
        self._watch_moved, self._watch_since = -1, 0.0
        # the entry being sent
        self._file: IO[bytes] | None = None
        self._hashes: FileHashes | None = None
        self._reader: StdinReader | None = None
        self._offer = tp.Offer(0, ())
        self._trailer: tp.Trailer | None = None
        self._size = self._pos = self._offset = 0

    # ---- the contract's callbacks -----------------------------------------------------------------
    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self._made = True
        self.started = time.monotonic()
        self._write(self.conn.send(tp.Hello(chunk_size=self.settings.chunk_size)))
        if self.settings.stall_timeout > 0:
            self._watch_since = self.started
            self._watchdog = transport.call_later(self._watch_interval(), self._watch)

    def data_received(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            self.conn.receive_data(data)
            while self.error is None and (ev := self.conn.next_event()) is not None:
                self._on_event(ev)
        except SocklabError as exc:
            self._fail(exc)

    def eof_received(self) -> bool | None:
        if not self.complete:
            self._fail(BrokenError("the receiver closed the connection"))
        return None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._moved += 1  # the buffer drained: bytes moved
        if self._step is _Step.FILE:
            self._guarded(self._pump)
        elif self._step is _Step.STREAM and self._reader is not None:
            self._reader.room.set()

    def shutdown_requested(self) -> None:
        """The server is shutting down (Ctrl-C on ``send --listen``): stop now, as a signal stops a client."""
        if not self.complete:
            self.interrupted = True
            self._fail(BrokenError("interrupted"))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.ended = time.monotonic()
        if self.error is None and (exc is not None or not self.complete):
            self.error = exc if exc is not None else BrokenError("the receiver closed the connection")
        self._release()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.on_done is not None:
            self.on_done(self)

    def result(self) -> list[SendReport]:
        """One report per entry, once the session ended.

        Raises:
            BrokenError: the receiver failed the session (its message included), or the
                connection broke; RemoteProtocolError: the receiver broke the protocol;
                SocklabError: a file changed while it was being sent.
        """
        if self.error is not None:
            raise self.error
        return self.reports

    # ---- plumbing ---------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        self.transport.write(data)

    def _guarded(self, fn: Callable[..., None], *args: Any, index: int | None = None) -> None:
        """Run a step on the engine unless the session is over (or, given ``index``, has moved on
        from that entry); its failure ends the session."""
        if self.error is not None or not self._made or (index is not None and index != self._index):
            return
        try:
            fn(*args)
        except SocklabError as exc:
            self._fail(exc)

    @staticmethod
    def _raise(exc: SocklabError) -> None:
        raise exc

    def _fail(self, exc: BaseException) -> None:
        """End the session: a FIN when nothing waits to go out (the receiver sees a clean end, as
        after a socket's close), else RST - a buffer the receiver does not take would never drain."""
        if self.error is None:
            self.error = exc
        self._release()
        if not self._made:
            return
        if self.transport.get_write_buffer_size() == 0 and not isinstance(exc, OperationTimeout):
            self.transport.close()
        else:
            self.transport.abort()

    def _release(self) -> None:
        """Let go of the entry in progress: stop its threads, close its file."""
        if self._hashes is not None:
            self._hashes.cancelled = True
            self._hashes = None
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def _watch_interval(self) -> float:
        return min(1.0, max(0.05, self.settings.stall_timeout / 4))

    def _watch(self) -> None:
        """The stall timeout: bytes wait to go out (the transport is paused) and none moved."""
        if self.error is not None:
            return
        now, limit = time.monotonic(), self.settings.stall_timeout
        if not self._paused or self._moved != self._watch_moved:
            self._watch_moved, self._watch_since = self._moved, now
        elif now - self._watch_since >= limit:
            self._fail(OperationTimeout(f"nothing could be sent for {limit:g} s: the receiver stopped reading"))
            return
        self._watchdog = self.transport.call_later(self._watch_interval(), self._watch)

    # ---- the session ------------------------------------------------------------------------------
    def _on_event(self, ev: tp.Event) -> None:
        if isinstance(ev, tp.ErrorFrame):
            raise BrokenError(f"receiver: {escape_peer_text(ev.message)}")
        step = self._step
        if step is _Step.HELLO and isinstance(ev, tp.Hello):
            self._next_entry()
        elif step is _Step.ANSWER and isinstance(ev, tp.Result):
            name = self.items[self._index].entry.name
            self._entry_done(SendReport(name, ev.ok, 0, 0, 0, ev.error, ev.code))
        elif step is _Step.ANSWER and isinstance(ev, tp.Offer):
            self._begin(ev)
        elif step is _Step.RESULT and isinstance(ev, tp.Result):
            self._answered(ev)
        else:
            raise RemoteProtocolError(f"unexpected {type(ev).__name__} from the receiver while {step.value}")

    def _next_entry(self) -> None:
        self._index += 1
        if self._index == len(self.items):
            self.complete = True
            self._step = _Step.DONE
            self._write(self.conn.send(tp.Done()))
            self.transport.close()
            return
        self._step = _Step.ANSWER
        self._write(self.conn.send(self.items[self._index].entry))

    def _entry_done(self, report: SendReport) -> None:
        self._release()
        self._trailer = None
        self.reports.append(report)
        self._next_entry()

    def _begin(self, offer: tp.Offer) -> None:
        item = self.items[self._index]
        entry = item.entry
        if entry.kind == "stream":
            self._begin_stream()
            return
        if not isinstance(item.source, Path):
            raise RemoteProtocolError(f"the receiver offered to resume the directory {entry.name}")
        try:
            self._file = open(item.source, "rb", buffering=0)  # noqa: SIM115 - closed by _release
        except OSError as exc:
            raise SocklabError(f"{os_reason(exc)} while opening {item.source}") from exc
        fd = self._file.fileno()
        size = os.fstat(fd).st_size
        if size != entry.size:
            raise SocklabError(f"{entry.name} changed size while being sent")
        self._size, self._offer = size, offer
        # resume: the receiver's prefix counts only as far as its chunk digests match ours, which
        # the hash thread reports first (it hashes from byte 0 either way: the root needs them all)
        have = 0 if offer.present else min(offer.have, len(offer.chunks), size // self.settings.chunk_size)
        self._step = _Step.PREFIX
        index = self._index  # a late result of an abandoned entry's thread finds another index and is dropped
        self._hashes = FileHashes(fd, size, self.settings.chunk_size, have, self.post,
                               on_prefix=lambda ours: self._guarded(self._prefix, ours, index=index),
                               on_done=lambda trailer: self._guarded(self._hashed, trailer, index=index),
                               on_error=lambda exc: self._guarded(self._raise, exc, index=index))
        if have == 0:
            self._prefix([])

    def _prefix(self, ours: list[bytes]) -> None:
        if self._step is not _Step.PREFIX:
            return
        if self._offer.present:
            # the receiver keeps a file of this size under the name: send no bytes, only our root
            # (START at the end, then TRAILER, once hashed); it answers "present" or "exists"
            self._step = _Step.HASH
            return
        chunks = self._offer.chunks
        good = next((i for i, digest in enumerate(ours) if tp.wire(digest) != chunks[i]), len(ours))
        self._offset = self._pos = good * self.settings.chunk_size
        self._write(self.conn.send(tp.Start(self._offset)))
        if self._offset and self.skipped is not None:
            self.skipped(self._offset)
        self._step = _Step.FILE
        self.transport.set_write_buffer_limits(high=0, low=0)  # pause = "socket full", resume = "drained"
        self._pump()

    def _pump(self) -> None:
        """Hand the file's bytes to the kernel until the socket is full, the file ends or a slice is sent."""
        transport, f = self.transport, self._file
        if self._step is not _Step.FILE or f is None:
            return
        budget = SLICE
        while self._pos < self._size:
            if self._paused or transport.is_closing():
                return
            if budget <= 0:  # let the engine read the receiver (an ERROR), then go on
                transport.call_later(0, lambda: self._guarded(self._pump) if self._file is f else None)
                return
            want = self._size - self._pos
            try:
                n = transport.sendfile(f, self._pos, want)
                if n < want and not transport.is_closing() and not self._paused:
                    # short: the socket is full (or the engine's fallback wrote one piece). Queue a
                    # few bytes more, whose drain (resume_writing) says the socket has room again
                    data = os.pread(f.fileno(), min(POKE, want - n), self._pos + n)
                    if not data:
                        raise EOFError
                    transport.write(data)
                    n += len(data)
            except EOFError:
                raise SocklabError(f"{self.items[self._index].entry.name} shrank while being sent") from None
            except OSError as exc:
                raise SocklabError(f"{os_reason(exc)} while reading {self.items[self._index].entry.name}") from exc
            self._pos += n
            self._moved += n
            budget -= n
            if self.progress is not None:
                self.progress(n)
        transport.set_write_buffer_limits()  # back to the engine's marks for the frames
        self._step = _Step.HASH
        if self._trailer is not None:
            self._send_trailer()

    def _hashed(self, trailer: tp.Trailer) -> None:
        self._hashes = None
        self._trailer = trailer
        if self._step is not _Step.HASH:
            return  # the bytes are still going out: the pump's end sends it
        if self._offer.present:
            self._write(self.conn.send(tp.Start(self._size)))
        self._send_trailer()

    def _send_trailer(self) -> None:
        assert self._trailer is not None
        self._write(self.conn.send(self._trailer))
        self._step = _Step.RESULT

    def _answered(self, result: tp.Result) -> None:
        entry = self.items[self._index].entry
        if entry.kind == "stream":
            total = self._pos
            report = SendReport(entry.name, result.ok, total, total, 0, result.error, result.code)
        elif self._offer.present:
            if result.ok and self.skipped is not None:
                self.skipped(self._size)
            report = SendReport(entry.name, result.ok, self._size, 0, self._size, result.error, result.code)
        else:
            report = SendReport(entry.name, result.ok, self._size, self._size - self._offset, self._offset,
                                result.error, result.code)
        self._entry_done(report)

    # ---- stdin ------------------------------------------------------------------------------------
    def _begin_stream(self) -> None:
        self._offer = tp.Offer(0, ())
        self._write(self.conn.send(tp.Start(0)))
        self._step = _Step.STREAM
        self._pos = 0
        index = self._index
        self._reader = StdinReader(self.stdin, self.settings.chunk_size, self.post,
                                    on_data=lambda data: self._guarded(self._stream_data, data, index=index),
                                    on_end=lambda trailer, total: self._guarded(self._stream_end, trailer,
                                                                                index=index),
                                    on_error=lambda exc: self._guarded(self._raise, exc, index=index))

    def _stream_data(self, data: bytes) -> None:
        if self._step is not _Step.STREAM or self._reader is None:
            return
        reader = self._reader
        self._write(self.conn.send(tp.Chunk(data)))
        self._pos += len(data)
        self._moved += len(data)
        if self.progress is not None:
            self.progress(len(data))
        if not self._paused:
            reader.room.set()

    def _stream_end(self, trailer: tp.Trailer) -> None:
        if self._step is not _Step.STREAM:
            return
        self._reader = None
        self._write(self.conn.send(tp.Chunk(b"")))
        self._trailer = trailer
        self._send_trailer()


def send_to(endpoint: Endpoint, items: list[SendItem], settings: SendSettings | None = None, *,
            progress: Callable[[int], None] | None = None, skipped: Callable[[int], None] | None = None,
            stdin: IO[bytes] | None = None, tracer: Tracer | None = None) -> SenderProtocol:
    """Connect to a receiver (``socklab receive``) and send ``items``; blocks until the session ended.

    ``progress`` and ``skipped`` are :class:`SenderProtocol`'s (called on the engine's thread: this
    one, on select/poll/epoll, which turn on the caller's thread while it waits).
    Returns the protocol: ``result()`` gives the reports, ``started``/``ended`` the session's span.

    Raises:
        ConnectionRefused, ConnectTimeout, ResolveError...: the connection could not be made;
        BrokenError, RemoteProtocolError, SocklabError: see :meth:`SenderProtocol.result`.
    """
    settings = settings if settings is not None else SendSettings()
    settings.validate()
    with BlockingClient(settings.client(), engine=settings.engine, tracer=tracer, background=False) as client:
        handle = client.connect(endpoint, lambda: SenderProtocol(
            items, settings, client.engine.call_soon_threadsafe, progress=progress, skipped=skipped, stdin=stdin))
        client.wait(handle.closed)  # a reactor engine turns on this thread meanwhile
    assert handle.protocol is not None
    handle.protocol.result()
    return handle.protocol


class SendServer:
    """Reverse mode: listen, let one receiver connect (``socklab receive --from``), send it ``items``.

    A runtime :class:`~socklab.runtime.Server` bound at once (``address``: port 0 resolved); its
    first connection gets the sender and the server stops listening (a second receiver is turned
    away), and once that session ended the server shuts down. Serve it with
    :func:`~socklab.runtime.serve_until_signalled` (a command: readiness line, signals, ``ss``),
    or :meth:`run` (a library caller, on a background thread).

    Args: as :func:`send_to`.
    """

    def __init__(self, items: list[SendItem], settings: SendSettings | None = None, *,
                 progress: Callable[[int], None] | None = None, skipped: Callable[[int], None] | None = None,
                 stdin: IO[bytes] | None = None, tracer: Tracer | None = None) -> None:
        self.settings = settings if settings is not None else SendSettings()
        self.settings.validate()
        self.items, self.progress, self.skipped, self.stdin = items, progress, skipped, stdin
        self.server = Server(self.settings.listener(), tracer=tracer, label="send")
        self.protocol: SenderProtocol | None = None
        self.connected = threading.Event()
        self.finished = threading.Event()
        self._stopper: threading.Thread | None = None
        self.address: Any = self.server.listen(self._accept)

    def _accept(self) -> SenderProtocol:
        engine = self.server.engine
        if self.protocol is None:
            engine.call_soon_threadsafe(engine.close_listeners)  # one receiver: stop listening
        self.protocol = SenderProtocol(self.items, self.settings, engine.call_soon_threadsafe,
                                       progress=self.progress, skipped=self.skipped, stdin=self.stdin,
                                       on_done=self._ended)
        self.connected.set()
        return self.protocol

    def _ended(self, protocol: SenderProtocol) -> None:
        self._stopper = threading.Thread(target=self.server.shutdown, name="socklab-send-done", daemon=True)
        self._stopper.start()
        self.finished.set()

    def run(self, accept_timeout: float | None = None) -> SenderProtocol:
        """Serve on a background thread until the session ended; returns the protocol (see :func:`send_to`).

        Raises:
            OperationTimeout: no receiver connected within ``accept_timeout`` seconds;
            what :meth:`SenderProtocol.result` raises.
        """
        self.server.start()
        if not self.connected.wait(accept_timeout):
            self.server.close()
            if not self.connected.is_set():
                raise OperationTimeout(f"no receiver connected within {accept_timeout:g} s")
        try:
            self.finished.wait()
        except BaseException:
            self.server.close()
            raise
        assert self._stopper is not None and self.protocol is not None
        self._stopper.join()  # the session's end shuts the server down
        self.protocol.result()
        return self.protocol
