"""The receiving side of a native transfer: safe landing of files, on an engine or a plain socket.

Why this exists: receiving is where a transfer becomes trustworthy or not: names confined to the
destination, data written to ``NAME.part``, hashed while it streams, fsynced and renamed (then the
directory fsynced) only once the sender's blake3-tree root matches, a partial file offered for
resumption chunk by chunk, a file already there recognised and skipped, a full disk reported to
the sender at once with nothing left behind. What the receiver takes from a sender (names, modes,
times) and the commit are :mod:`socklab.apps.transfer.landing`; :mod:`~.sink` writes.

Speed: the session lends the engine its own buffers (``recv_into``, no copies): a ring of four
page-aligned 4 MiB buffers. Each read is hashed on the receiving thread while in the CPU's cache,
``SO_RCVLOWAT`` makes reads ~1 MiB, a filled buffer goes to a writer thread (``O_DIRECT``), and a
full ring makes the receiving thread wait for the oldest buffer: the back-pressure. A resumed file
re-uses the digests of the prefix it offered. (docs/transfer.md explains each choice.)
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO

from socklab.apps.transfer import landing
from socklab.apps.transfer.bars import NO_BAR, FileBar
from socklab.apps.transfer.landing import Refused
from socklab.apps.transfer.settings import FileReport, ReceiveSettings
from socklab.apps.transfer.sink import Sink
from socklab.core.errors import ProtocolError
from socklab.core.protocol import BufferedProtocol
from socklab.core.transport import Transport
from socklab.protocols import transfer as tp
from socklab.protocols.text import escape_peer_text

__all__ = ["FileReport", "ReceiveSession", "ReceiveSettings", "ReceiverProtocol"]

RING = 4


class ReceiveSession:
    """The receiver of one connection, independent of how bytes arrive.

    Args:
        settings: destination, overwrite and discard policy.
        send: writes bytes to the sender.
        log: told one line per finished entry (or ``None``).
        stdout: write every file's bytes here instead of into ``dir`` (``receive --stdout``).

    Feed it with :meth:`get_buffer` / :meth:`buffer_updated` (zero-copy) or :meth:`data_received`.
    """

    def __init__(self, settings: ReceiveSettings, send: Callable[[bytes], None],
                 log: Callable[[FileReport], None] | None = None, stdout: IO[bytes] | None = None) -> None:
        self.settings = settings
        self.send = send
        self.log = log
        self.stdout = stdout
        self.conn = tp.TransferConnection("receiver")
        self.dest = Path(os.path.realpath(settings.dir))
        self.reports: list[FileReport] = []
        self.dirs: list[tuple[Path, int, float | None, bool]] = []  # path, mode, mtime, created by us
        self.umask = landing.read_umask()
        self.done = False  # the sender said DONE: the session is complete
        self.partial: str | None = None  # an entry left as NAME.part when the session broke off
        self.partial_bytes = 0  # and how many bytes that .part holds
        self.received = 0  # file bytes that arrived in this session (every entry, a kept .part's too)
        self.already = 0  # bytes not sent because they were here: resumed prefixes, files present
        self.bar: FileBar = NO_BAR  # told about each file's bytes (a progress bar)
        self.chunk_size = tp.CHUNK_SIZE
        self.finished = False
        self.failed: str | None = None
        self._control = bytearray(64 * 1024)
        self._bufsize = settings.buffer_size
        self._ring: list[mmap.mmap] = []  # page-aligned; allocated with the first file's data
        self._ring_busy: list[tuple[Future[None], Future[None]] | None] = [None] * RING
        self._slot = 0
        self._fill = 0
        self.sha_pool = ThreadPoolExecutor(1, thread_name_prefix="socklab-sha")
        self.io_pool = ThreadPoolExecutor(1, thread_name_prefix="socklab-write")
        self._entry: tp.Entry | None = None
        self._sink: Sink | None = None
        self._part: Path | None = None
        self._final: Path | None = None
        self._resumed = 0
        self._prefix: list[bytes] = []  # full digests of the chunks offered for resuming
        self._present = False  # a same-size file is under the final name, and kept
        self._ours: Future[str] | None = None  # its root, hashed on a worker while the sender hashes its own
        self._skipping = False  # the sender has the same file: no bytes follow
        self._new_dirs: list[Path] = []  # created by this session, entries not yet fsynced
        self._discarding = False
        self._lock = threading.Lock()
        self.set_lowat: Callable[[int], object] | None = None  # transport.set_recv_lowat (SO_RCVLOWAT)
        self._lowat = 1

    # ---- feeding ----------------------------------------------------------------------------------
    def get_buffer(self) -> memoryview:
        """Where the next ``recv_into`` should write."""
        if self._discarding:
            return memoryview(self._control)
        if self.conn.raw_remaining and not self.conn.buffered and self._sink is not None:
            if not self._slot_ready():
                return memoryview(self._control)  # that buffer hit a disk error
            limit = min(self._bufsize - self._fill, self.conn.raw_remaining)
            return memoryview(self._ring[self._slot])[self._fill:self._fill + limit]
        return memoryview(self._control)

    def _slot_ready(self) -> bool:
        """Make the current ring slot usable: when the ring is full, wait for the oldest buffer
        (the back-pressure). False: a disk error ended the file meanwhile."""
        busy = self._ring_busy[self._slot]
        if busy is not None and self._fill == 0:
            self._ring_busy[self._slot] = None
            self._wait(busy)
            if self._discarding or self._sink is None:
                return False
        if not self._ring:
            # anonymous mmaps: page-aligned, as O_DIRECT wants (a bytearray's address is not)
            self._ring = [mmap.mmap(-1, self._bufsize) for _ in range(RING)]
        return True

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` arrived in the last buffer from :meth:`get_buffer`."""
        if self._discarding:
            return
        if self.conn.raw_remaining and not self.conn.buffered and self._sink is not None:
            self.conn.raw_received(nbytes)
            self.received += nbytes
            self.bar.advance(nbytes)
            if self.settings.hash_on_recv:
                self._sink.hasher.update(memoryview(self._ring[self._slot])[self._fill:self._fill + nbytes])
            self._fill += nbytes
            if self._fill == self._bufsize or not self.conn.raw_remaining:
                self._flush_slot()
            if self.conn.raw_remaining < self._lowat:
                self._want_lowat(1)
            return
        self.data_received(bytes(self._control[:nbytes]))
        if self.conn.raw_remaining < self._lowat:
            self._want_lowat(1)

    def _want_lowat(self, n: int) -> None:
        """Ask the kernel to wake us only once ``n`` bytes are queued - never more than will
        come before the sender waits for us (the file's remaining bytes), or we would hang."""
        if n != self._lowat and self.set_lowat is not None:
            self._lowat = n
            self.set_lowat(n)

    def _flush_slot(self) -> None:
        assert self._sink is not None
        if self._fill:
            view = memoryview(self._ring[self._slot])[:self._fill]
            self._ring_busy[self._slot] = self._sink.submit(view, hashed=self.settings.hash_on_recv)
            self._slot = (self._slot + 1) % RING
            self._fill = 0

    def _wait(self, futures: tuple[Future[None], Future[None]]) -> None:
        for f in futures:
            try:
                f.result()
            except OSError as exc:
                self._disk_error(exc)

    def data_received(self, data: bytes) -> None:
        """Bytes from the sender (control frames, or file bytes on the copying path)."""
        if self._discarding:
            return  # after a disk error: swallow the rest until the sender, told, closes
        try:
            self.conn.receive_data(data)
            while (event := self.conn.next_event()) is not None:
                self._handle(event)
        except ProtocolError as exc:
            self._fatal(f"protocol error: {exc}")

    def eof(self) -> None:
        """The sender closed its side."""
        if not self.finished:
            try:
                self.conn.receive_data(b"")
            except ProtocolError as exc:
                self.failed = str(exc)
            self.abort("the sender closed the connection before the end of the session (no DONE)")
            self.close()

    def abort(self, reason: str) -> None:
        """The session ends before the sender's DONE: say so (``failed``), keep a ``.part`` to resume."""
        if self.done:
            return
        self.failed = self.failed or reason
        part = None
        if self._part is not None and self._entry is not None and self._sink is not None \
                and self._sink.error is None and not self._skipping:
            self.partial, part = self._entry.name, self._part  # its .part stays, to be resumed
            with contextlib.suppress(Exception):
                self._flush_slot()  # what arrived goes to the .part too (a ring slot may be half full)
        self._abandon()
        if part is not None:
            with contextlib.suppress(OSError):
                self.partial_bytes = part.stat().st_size
        self.bar.end()
        self.finished = True

    # ---- events -----------------------------------------------------------------------------------
    def _handle(self, event: tp.Event) -> None:
        if isinstance(event, tp.Hello):
            self.chunk_size = event.chunk_size
            self.send(self.conn.send(tp.Hello(chunk_size=event.chunk_size)))
        elif isinstance(event, tp.Entry):
            self._on_entry(event)
        elif isinstance(event, tp.BadEntry):
            self._report(FileReport(event.name, False, error=f"invalid entry: {escape_peer_text(event.reason)}",
                                    code="invalid"))
        elif isinstance(event, tp.Start):
            self._on_start(event)
        elif isinstance(event, tp.RawData):
            self._write_copy(event.data)
        elif isinstance(event, tp.Chunk):
            if event.data:
                self._write_copy(event.data)
        elif isinstance(event, tp.Trailer):
            self._on_trailer(event)
        elif isinstance(event, tp.Done):
            self._on_done()
        elif isinstance(event, tp.ErrorFrame):
            self.abort(f"sender: {escape_peer_text(event.message)}")

    def _report(self, report: FileReport) -> None:
        self.bar.end()
        self.reports.append(report)
        if self.log is not None:
            self.log(report)
        self.send(self.conn.send(tp.Result(report.ok, report.error, report.code, report.bytes)))

    def _on_entry(self, entry: tp.Entry) -> None:
        self._entry = entry
        self._resumed = 0
        self._prefix = []
        self._present = False
        if self.stdout is not None or self.settings.discard:
            if entry.kind == "dir":
                self._report(FileReport(entry.name, True))
                return
            self._sink = Sink(self, None, 0, tp.FileHasher(self.chunk_size), out=self.stdout)
            self.send(self.conn.send(tp.Offer(0, ())))
            return
        shown = escape_peer_text(entry.name)
        fd = -1
        try:
            target = landing.resolve(self.dest, entry.name)
            if entry.kind == "dir":
                if target.exists() and not target.is_dir():
                    raise Refused("exists", f"{shown} exists and is not a directory")
                created = landing.make_dirs(self.dest, target)
                self.dirs.append((target, entry.mode, entry.mtime, target in created))
                self._new_dirs += created
                if self.settings.fsync:
                    for d in {c.parent for c in self._new_dirs}:
                        landing.fsync_dir(d)  # the RESULT says the directory is there: durably
                    self._new_dirs = []
                self._report(FileReport(entry.name, True))
                return
            if target.exists() or target.is_symlink():
                if not target.is_file():
                    raise Refused("exists", f"{shown} exists and is not a regular file")
                if not self.settings.overwrite:
                    if entry.kind != "file" or target.stat().st_size != entry.size:
                        why = "with different content (another size)" if entry.kind == "file" else "(a stream)"
                        raise Refused("exists", f"{shown} exists {why}; {_KEEPS}")
                    # kept whatever comes, but it may be this very file (a re-run send): the sender
                    # sends its root, no bytes; bytes sent anyway are hashed and dropped. No .part.
                    self._present, self._final = True, target
                    self._ours = self.sha_pool.submit(landing.tree_root, target, self.chunk_size)
                    self._sink = Sink(self, None, 0, tp.FileHasher(self.chunk_size))
                    self.send(self.conn.send(tp.Offer(0, (), present=True)))
                    return
            self._final = target
            self._new_dirs += landing.make_dirs(self.dest, target.parent)
            part = target.with_name(target.name + ".part")
            if part.is_symlink():
                raise Refused("name", f"refused: {escape_peer_text(part.name)} is a symlink")
            fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                # one writer per .part: two senders of the same name would interleave their bytes
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise Refused("busy", f"{shown} is being received from another sender right now") from None
        except Refused as exc:
            self._entry = self._final = None
            self._report(FileReport(entry.name, False, error=str(exc), code=exc.code))
            return
        except OSError as exc:
            self._entry = self._final = None
            self._report(FileReport(entry.name, False, error=f"cannot create {shown}: {exc.strerror}", code="io"))
            return
        self._part = part
        if entry.kind == "file":
            self._prefix = landing.prefix_digests(fd, entry.size or 0, self.chunk_size)
        self._sink = Sink(self, fd, 0, tp.FileHasher(self.chunk_size))
        if self.settings.direct_io:
            with contextlib.suppress(OSError):  # not every filesystem takes O_DIRECT (then: buffered)
                self._sink.dfd = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        self.send(self.conn.send(tp.Offer(len(self._prefix), tuple(tp.wire(d) for d in self._prefix))))

    def _on_start(self, start: tp.Start) -> None:
        sink, entry = self._sink, self._entry
        assert sink is not None and entry is not None
        self._skipping = self._present and start.offset == entry.size and entry.size > 0
        if self._skipping:
            return  # "mine is the same": no bytes follow, the TRAILER's root decides
        if start.offset:
            # resume: keep the offered prefix up to the sender's offset (its digests are already
            # known: no re-read), cut the rest
            chunks, rest = divmod(start.offset, self.chunk_size)
            if sink.fd is None or rest or chunks > len(self._prefix):
                self._fatal(f"sender resumes at {start.offset}, which is not a chunk boundary of the "
                            f"{len(self._prefix)} chunks offered")
                return
            os.ftruncate(sink.fd, start.offset)
            for digest in self._prefix[:chunks]:
                sink.hasher.add_chunk(digest)
            self._resumed = start.offset
            self.already += start.offset
        elif sink.fd is not None:
            os.ftruncate(sink.fd, 0)
        sink.pos = start.offset
        self.bar.begin(entry.name, entry.size, start.offset)
        self._slot, self._fill = 0, 0
        lowat = self.settings.recv_lowat
        if lowat > 1 and self.conn.raw_remaining >= 2 * lowat:
            self._want_lowat(lowat)

    def _write_copy(self, data: bytes) -> None:
        sink = self._sink
        if sink is None:
            return
        # copying path (file bytes that came with control frames, stream chunks): copied into the
        # ring like received bytes, so every write stays slot-aligned (O_DIRECT) and in order
        self.received += len(data)
        self.bar.advance(len(data))
        view = memoryview(data)
        while view:
            if not self._slot_ready():
                return
            n = min(self._bufsize - self._fill, len(view))
            self._ring[self._slot][self._fill:self._fill + n] = view[:n]
            if self.settings.hash_on_recv:
                sink.hasher.update(view[:n])
            self._fill += n
            view = view[n:]
            if self._fill == self._bufsize:
                self._flush_slot()

    def _drain(self) -> BaseException | None:
        for i, busy in enumerate(self._ring_busy):
            if busy is not None:
                self._wait(busy)
                self._ring_busy[i] = None
        sink = self._sink
        if sink is not None:
            for futs in sink.pending:
                self._wait(futs)
            sink.pending.clear()
            return sink.error
        return None

    def _disk_error(self, exc: OSError) -> None:
        sink = self._sink
        if sink is not None and sink.error is None:
            sink.error = exc
            name = self._entry.name if self._entry else "?"
            message = f"receiver cannot write {name}: {exc.strerror or exc}"
            # keep nothing behind, then tell the sender at once (it checks between sendfile slices)
            self._discarding = True
            self._want_lowat(1)
            self._abandon()
            self.send(self.conn.send(tp.ErrorFrame(message, "disk")))
            self.failed = message
            self.bar.end()
            self.reports.append(FileReport(name, False, error=message, code="disk"))
            if self.log is not None:
                self.log(self.reports[-1])

    def _on_trailer(self, trailer: tp.Trailer) -> None:
        entry, sink = self._entry, self._sink
        assert entry is not None and sink is not None
        if self._present:
            self._on_present(entry, trailer)
            return
        self._flush_slot()
        error = self._drain()
        if self.conn.state == "closed":
            return  # a disk error already ended the session
        if error is not None:
            return
        size = sink.pos
        if sink.hasher.hexdigest() != trailer.root or (entry.size is not None and size != entry.size):
            # Locate the damage with the per-chunk digests (computed in the same pass as the root)
            # and keep the verified prefix to resume.
            bad = self._first_bad_chunk(sink, trailer.chunks)
            self._keep_prefix(bad * self.chunk_size)
            kept = f" (kept the verified {bad * self.chunk_size} bytes for resuming)" if sink.fd is not None \
                else ""
            self._report(FileReport(entry.name, False, size, self._resumed,
                                    error=f"verification failed for {escape_peer_text(entry.name)}: chunk {bad} "
                                          f"differs{kept}", code="verify"))
            return
        try:
            self._commit(entry, sink)
        except (OSError, OverflowError, ValueError) as exc:
            self._abandon()
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            self._report(FileReport(entry.name, False, size, error=f"cannot store {escape_peer_text(entry.name)}: "
                                                                   f"{why}", code="disk"))
            return
        self._report(FileReport(entry.name, True, size, self._resumed))

    def _on_present(self, entry: tp.Entry, trailer: tp.Trailer) -> None:
        """A file of the entry's size is kept under the final name: is it the sender's file?"""
        sink, final = self._sink, self._final
        assert sink is not None and final is not None
        theirs = trailer.root
        if not self._skipping:  # the sender sent its bytes anyway: they were hashed and dropped
            self._flush_slot()
            self._drain()
            if self.conn.state == "closed":
                return
            theirs = sink.hasher.hexdigest()
        self._abandon()
        shown = escape_peer_text(entry.name)
        ours, self._ours = self._ours, None
        try:
            same = (ours.result() if ours is not None else landing.tree_root(final, self.chunk_size)) == theirs
        except OSError as exc:
            self._report(FileReport(entry.name, False, error=f"cannot read {shown}: {exc.strerror}", code="io"))
            return
        if same:
            self.already += entry.size or 0
            self._report(FileReport(entry.name, True, entry.size or 0, entry.size or 0, code="present"))
        else:
            self._report(FileReport(entry.name, False, error=f"{shown} exists with different content; {_KEEPS}",
                                    code="exists"))

    def _first_bad_chunk(self, sink: Sink, theirs: tuple[str, ...]) -> int:
        if sink.fd is None:
            return 0
        ours = sink.hasher.final_chunks()
        for i, digest in enumerate(ours):
            if i >= len(theirs):
                return 0  # we hold more than the sender sent: trust nothing
            if digest != theirs[i]:
                return i
        return 0  # every chunk matches yet the whole does not: trust nothing

    def _keep_prefix(self, nbytes: int) -> None:
        sink = self._sink
        if sink is not None and sink.fd is not None:
            sink.close_direct()
            with contextlib.suppress(OSError):
                os.ftruncate(sink.fd, nbytes)
            os.close(sink.fd)
            sink.fd = None
        self._sink, self._part, self._final = None, None, None

    def _commit(self, entry: tp.Entry, sink: Sink) -> None:
        if self.stdout is not None:
            self.stdout.flush()
            self._sink = None
            return
        if sink.fd is None:
            self._sink = None
            return
        assert self._part is not None and self._final is not None
        sink.close_direct()
        mode = landing.file_mode(entry.mode, self.umask, self.settings.perms)
        landing.commit_file(sink.fd, self._part, self._final, mode, entry.mtime, fsync=self.settings.fsync,
                            overwrite=self.settings.overwrite, new_dirs=self._new_dirs)
        if self.settings.fsync:
            self._new_dirs = []
        os.close(sink.fd)  # after the rename: the .part's lock was held until its name was gone
        sink.fd = None
        self._sink, self._part, self._final = None, None, None

    def _abandon(self) -> None:
        """Give up on the current file: close it; a disk error or refusal removes the .part."""
        sink = self._sink
        if sink is not None:
            with contextlib.suppress(Exception):
                self._drain()
            sink.close_direct()
            if sink.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(sink.fd)
                sink.fd = None
            if self._part is not None and (sink.error is not None):
                with contextlib.suppress(OSError):
                    self._part.unlink()
        self._sink, self._part, self._final = None, None, None

    def _on_done(self) -> None:
        # deepest first: a parent's time is set after its children changed it
        for path, mode, mtime, created in sorted(self.dirs, key=lambda d: len(d[0].parts), reverse=True):
            with contextlib.suppress(OSError, OverflowError, ValueError):
                if created:  # a directory that was there before keeps its mode
                    os.chmod(path, landing.dir_mode(mode, self.umask, self.settings.perms))
                if mtime is not None:
                    os.utime(path, (mtime, mtime))
        self.done = True
        self.finished = True

    def _fatal(self, message: str) -> None:
        self._want_lowat(1)
        self.failed = message
        with contextlib.suppress(Exception):
            self.send(self.conn.send(tp.ErrorFrame(message, "protocol")))
        self.abort(message)

    def close(self) -> None:
        """Release the worker threads (the session is over)."""
        self._abandon()
        self.sha_pool.shutdown(wait=True)
        self.io_pool.shutdown(wait=True)


_KEEPS = ("this receiver keeps existing files (start `socklab receive` with --overwrite to replace them)")


class ReceiverProtocol(BufferedProtocol):
    """A :class:`ReceiveSession` on an engine connection (``recv_into`` the session's buffers)."""

    def __init__(self, settings: ReceiveSettings, log: Callable[[FileReport], None] | None = None,
                 on_session: Callable[[ReceiveSession], None] | None = None,
                 bar: Callable[[], FileBar | None] | None = None) -> None:
        self.settings = settings
        self._log = log
        self._on_session = on_session
        self._bar = bar
        self.session: ReceiveSession | None = None

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self.session = ReceiveSession(self.settings, transport.write, self._log)
        self.session.bar = (self._bar() if self._bar is not None else None) or NO_BAR
        if self.settings.recv_lowat > 1:
            self.session.set_lowat = transport.set_recv_lowat  # SO_RCVLOWAT where the engine can

    def get_buffer(self, sizehint: int) -> memoryview:
        assert self.session is not None
        return self.session.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        assert self.session is not None
        s = self.session
        s.buffer_updated(nbytes)
        if s.finished and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:  # engines without the buffered path
        assert self.session is not None
        s = self.session
        if s.conn.raw_remaining and not s.conn.buffered:
            view = memoryview(data)
            while view:
                buf = s.get_buffer()
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                s.buffer_updated(n)
                view = view[n:]
        else:
            s.data_received(data)
        if s.finished and not self.transport.is_closing():
            self.transport.close()

    def eof_received(self) -> bool | None:
        if self.session is not None:
            self.session.eof()
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        s = self.session
        if s is not None:
            if not s.finished:
                s.abort(f"connection lost: {exc}" if exc else "connection closed before the end of the session")
            s.close()
            if self._on_session is not None:
                self._on_session(s)

