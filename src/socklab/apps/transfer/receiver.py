"""The receiving side of a native transfer: safe landing of files, on an engine or a plain socket.

Why this exists: receiving is where a transfer becomes trustworthy or not. Everything here is
about the disk: names confined to the destination, data written to ``NAME.part``, hashed while it
streams, fsynced and renamed (then the directory fsynced) only once the sender's blake3-tree root
matches, a partial file offered for resumption chunk by chunk, and a full disk reported to the
sender before it wastes more bandwidth, with nothing left behind.

Speed: the session lends its own buffers to the engine (:class:`~socklab.core.protocol.BufferedProtocol`,
``recv_into``, no copies): a ring of four page-aligned 4 MiB buffers. Each read is hashed right
away on the receiving thread, while its bytes are in the CPU's cache (BLAKE3, one pass giving the
chunk digests and the root), and ``SO_RCVLOWAT`` makes reads ~1 MiB. A filled buffer goes to a
writer thread, which hands it to the disk with ``O_DIRECT`` (no page-cache copy) while the engine
receives into the next; when the ring is full the receiving thread waits for the oldest buffer,
which is the back-pressure (the kernel's window then slows the sender down). A resumed file
re-uses the digests of the prefix it offered: the kept bytes are not read again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import socket
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from socklab.core.errors import ProtocolError, RemoteProtocolError, UsageError
from socklab.core.protocol import BufferedProtocol
from socklab.core.settings import ServerSettings, setting
from socklab.core.transport import Transport
from socklab.protocols import transfer as tp

__all__ = ["FileReport", "ReceiveSession", "ReceiveSettings", "ReceiverProtocol"]

RING = 4
ALIGN = 4096  # O_DIRECT: file offset, length and memory address in multiples of this


@dataclass
class ReceiveSettings(ServerSettings):
    """``socklab receive``'s settings."""

    port: int = setting(7070, "TCP port to listen on (0: the kernel picks and the readiness line says).")
    dir: str = setting(".", "Destination directory; nothing is written outside it.", metavar="DIR")
    overwrite: bool = setting(False, "Replace existing files (otherwise they are refused).")
    discard: bool = setting(False, "Verify and count the data but write nothing (benchmarks).")
    buffer_size: int = setting(tp.CHUNK_SIZE, "Bytes per receive buffer (4 of them per session; best: the "
                                              "chunk size, one hash call per buffer).")
    fsync: bool = setting(True, "fsync each file and its directory before reporting success.")
    idle_timeout: float = setting(60.0, "Close a session silent for this many seconds.")
    recv_lowat: int = setting(1 << 20, "SO_RCVLOWAT while a file's bytes stream: the engine wakes up once "
                                         "this much has arrived (fewer, larger reads; 0: off).")
    direct_io: bool = setting(True, "Write file data with O_DIRECT (no page-cache copy; falls back to "
                                    "buffered writes where the filesystem refuses it).")
    hash_on_recv: bool = setting(True, "Hash each read on the receiving thread right after recv_into, while "
                                       "its bytes are in the CPU cache (off: a worker thread hashes each "
                                       "filled buffer).")
    worker_threads: bool = setting(True, "Hash and write on worker threads, one each (off: on the "
                                         "receiving thread, no hand-offs but no overlap).")

    def validate(self) -> None:
        super().validate()
        if not self.discard and not Path(self.dir).is_dir():
            raise UsageError(f"--dir {self.dir!r} is not a directory")
        if self.buffer_size < ALIGN or self.buffer_size % ALIGN:
            raise UsageError(f"buffer_size must be a multiple of {ALIGN}")


@dataclass
class FileReport:
    """What happened to one entry."""

    name: str
    ok: bool
    bytes: int = 0
    resumed_from: int = 0
    error: str | None = None
    code: str | None = None


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Sink:
    """Where one file's bytes go: ordered hashing (unless done on receipt) and writing, on worker threads."""

    def __init__(self, session: ReceiveSession, fd: int | None, offset: int, hasher: tp.FileHasher,
                 out: IO[bytes] | None = None) -> None:
        self.s = session
        self.fd = fd
        self.dfd: int | None = None  # the same file opened with O_DIRECT, for aligned writes
        self.out = out
        self.pos = offset
        self.hasher = hasher
        self.error: BaseException | None = None
        self.pending: list[tuple[Future[None], Future[None]]] = []

    def submit(self, view: memoryview, hashed: bool = False) -> tuple[Future[None], Future[None]]:
        """Hash (unless ``hashed`` already) and write one filled buffer, in order."""
        pos = self.pos
        self.pos += len(view)
        if self.s.settings.worker_threads:
            if hashed and self.out is None and self.fd is None:
                done: Future[None] = Future()
                done.set_result(None)
                return done, done  # discarding, already hashed: nothing left to do
            sha = self.s.sha_pool.submit(self.hasher.update, view) if not hashed else None
            if self.out is None and self.fd is None:
                assert sha is not None
                return sha, sha  # discarding: nothing to write, no second hand-off
            io = self.s.io_pool.submit(self._write, view, pos)
            return (sha or io), io
        # inline: hash and write on the receiving thread, like a plain recv/write loop - no
        # hand-off between threads, but no overlap either
        done = Future()
        try:
            if not hashed:
                self.hasher.update(view)
            self._write(view, pos)
            done.set_result(None)
        except OSError as exc:
            done.set_exception(exc)
        return done, done

    def _write(self, view: memoryview, pos: int) -> None:
        if self.out is not None:
            self.out.write(view)
            return
        if self.fd is None:
            return
        dfd = self.dfd
        if dfd is not None and pos % ALIGN == 0 and len(view) >= ALIGN:
            # views start at a ring slot (page-aligned mmap memory): the aligned part goes
            # straight from our buffer to the device, the kernel neither copies it into the
            # page cache nor has to find fresh pages for it (the costly part on this VM)
            aligned = len(view) - len(view) % ALIGN
            try:
                done = 0
                while done < aligned:
                    done += os.pwrite(dfd, view[done:aligned], pos + done)
                view, pos = view[aligned:], pos + aligned
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.close_direct()  # the filesystem refuses O_DIRECT after all: buffered from here on
        while view:
            n = os.pwrite(self.fd, view, pos)
            pos += n
            view = view[n:]

    def close_direct(self) -> None:
        if self.dfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.dfd)
            self.dfd = None


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
        self.dirs: list[tuple[Path, int, float | None]] = []
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
        self._sink: _Sink | None = None
        self._part: Path | None = None
        self._final: Path | None = None
        self._resumed = 0
        self._prefix: list[bytes] = []  # full digests of the chunks offered for resuming
        self._discarding = False
        self._lock = threading.Lock()
        self.set_lowat: Callable[[int], None] | None = None  # the adapter's SO_RCVLOWAT, if it has a socket
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
            self._abandon()
            self.finished = True
            self.close()

    # ---- events -----------------------------------------------------------------------------------
    def _handle(self, event: tp.Event) -> None:
        if isinstance(event, tp.Hello):
            self.chunk_size = event.chunk_size
            self.send(self.conn.send(tp.Hello(chunk_size=event.chunk_size)))
        elif isinstance(event, tp.Entry):
            self._on_entry(event)
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
            self.failed = f"sender: {event.message}"
            self._abandon()
            self.finished = True

    def _report(self, report: FileReport) -> None:
        self.reports.append(report)
        if self.log is not None:
            self.log(report)
        self.send(self.conn.send(tp.Result(report.ok, report.error, report.code, report.bytes)))

    def _target(self, name: str) -> Path:
        try:
            parts = tp.check_name(name)
        except RemoteProtocolError as exc:
            raise _Refused("name", str(exc)) from None
        target = self.dest.joinpath(*parts)
        parent = Path(os.path.realpath(target.parent))
        if parent != self.dest and self.dest not in parent.parents:
            raise _Refused("name", f"refused name {name!r}: leaves the destination (symlink?)")
        if target.is_symlink():
            raise _Refused("name", f"refused name {name!r}: is a symlink")
        return target

    def _on_entry(self, entry: tp.Entry) -> None:
        self._entry = entry
        self._resumed = 0
        self._prefix = []
        if self.stdout is not None or self.settings.discard:
            if entry.kind == "dir":
                self._report(FileReport(entry.name, True))
                return
            self._sink = _Sink(self, None, 0, tp.FileHasher(self.chunk_size), out=self.stdout)
            self.send(self.conn.send(tp.Offer(0, ())))
            return
        try:
            target = self._target(entry.name)
            if entry.kind == "dir":
                if target.exists() and not target.is_dir():
                    raise _Refused("exists", f"{entry.name} exists and is not a directory")
                target.mkdir(parents=True, exist_ok=True)
                self.dirs.append((target, entry.mode, entry.mtime))
                self._report(FileReport(entry.name, True))
                return
            if target.exists() and not self.settings.overwrite:
                raise _Refused("exists", f"{entry.name} exists (use --overwrite to replace it)")
            if target.exists() and not target.is_file():
                raise _Refused("exists", f"{entry.name} exists and is not a regular file")
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + ".part")
            if part.is_symlink():
                raise _Refused("name", f"refused: {part.name} is a symlink")
            fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                # one writer per .part: two senders of the same name would interleave their bytes
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise _Refused("busy", f"{entry.name} is being received from another sender right now") from None
        except _Refused as exc:
            self._entry = None
            self._report(FileReport(entry.name, False, error=str(exc), code=exc.code))
            return
        except OSError as exc:
            self._entry = None
            self._report(FileReport(entry.name, False, error=f"cannot create {entry.name}: {exc.strerror}",
                                    code="io"))
            return
        self._part, self._final = part, target
        if entry.kind == "file":
            self._prefix = self._scan_prefix(fd, entry.size or 0)
        self._sink = _Sink(self, fd, 0, tp.FileHasher(self.chunk_size))
        if self.settings.direct_io:
            with contextlib.suppress(OSError):  # not every filesystem takes O_DIRECT (then: buffered)
                self._sink.dfd = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        self.send(self.conn.send(tp.Offer(len(self._prefix), tuple(tp.wire(d) for d in self._prefix))))

    def _scan_prefix(self, fd: int, size: int) -> list[bytes]:
        """The digest of each full chunk of an existing .part (the resumable prefix), read once."""
        part_size = os.fstat(fd).st_size
        have = min(part_size, size) // self.chunk_size
        digests = []
        buf = bytearray(self.chunk_size) if have else bytearray()
        for i in range(have):
            n = os.preadv(fd, [buf], i * self.chunk_size)
            if n < self.chunk_size:
                break
            digests.append(tp.chunk_digest(buf))
        return digests

    def _on_start(self, start: tp.Start) -> None:
        sink = self._sink
        assert sink is not None
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
        elif sink.fd is not None:
            os.ftruncate(sink.fd, 0)
        sink.pos = start.offset
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
            self.reports.append(FileReport(name, False, error=message, code="disk"))
            if self.log is not None:
                self.log(self.reports[-1])

    def _on_trailer(self, trailer: tp.Trailer) -> None:
        entry, sink = self._entry, self._sink
        assert entry is not None and sink is not None
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
                                    error=f"verification failed for {entry.name}: chunk {bad} differs{kept}",
                                    code="verify"))
            return
        try:
            self._commit(entry, sink)
        except OSError as exc:
            self._abandon()
            self._report(FileReport(entry.name, False, size, error=f"cannot store {entry.name}: "
                                                                   f"{exc.strerror or exc}", code="disk"))
            return
        self._report(FileReport(entry.name, True, size, self._resumed))

    def _first_bad_chunk(self, sink: _Sink, theirs: tuple[str, ...]) -> int:
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

    def _commit(self, entry: tp.Entry, sink: _Sink) -> None:
        if self.stdout is not None:
            self.stdout.flush()
            self._sink = None
            return
        if sink.fd is None:
            self._sink = None
            return
        assert self._part is not None and self._final is not None
        sink.close_direct()
        fd = sink.fd
        if self.settings.fsync:
            os.fsync(fd)
        os.fchmod(fd, entry.mode & 0o7777)
        if entry.mtime is not None:
            os.utime(fd, (entry.mtime, entry.mtime))
        if not self.settings.overwrite and self._final.exists():
            raise FileExistsError(17, "appeared while receiving; not replaced")
        os.replace(self._part, self._final)  # still holding the .part's lock: nobody else writes it
        os.close(fd)
        sink.fd = None
        if self.settings.fsync:
            _fsync_dir(self._final.parent)
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
        for path, mode, mtime in sorted(self.dirs, key=lambda d: len(d[0].parts), reverse=True):
            with contextlib.suppress(OSError):
                os.chmod(path, mode | stat.S_IRWXU)
                if mtime is not None:
                    os.utime(path, (mtime, mtime))
        self.finished = True

    def _fatal(self, message: str) -> None:
        self._want_lowat(1)
        self.failed = message
        with contextlib.suppress(Exception):
            self.send(self.conn.send(tp.ErrorFrame(message, "protocol")))
        self._abandon()
        self.finished = True

    def close(self) -> None:
        """Release the worker threads (the session is over)."""
        self._abandon()
        self.sha_pool.shutdown(wait=True)
        self.io_pool.shutdown(wait=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ReceiverProtocol(BufferedProtocol):
    """A :class:`ReceiveSession` on an engine connection (``recv_into`` the session's buffers)."""

    def __init__(self, settings: ReceiveSettings, log: Callable[[FileReport], None] | None = None,
                 on_session: Callable[[ReceiveSession], None] | None = None) -> None:
        self.settings = settings
        self._log = log
        self._on_session = on_session
        self.session: ReceiveSession | None = None

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self.session = ReceiveSession(self.settings, transport.write, self._log)
        sock = transport.get_extra_info("socket")
        if sock is not None and self.settings.recv_lowat > 1:

            def set_lowat(n: int) -> None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)

            self.session.set_lowat = set_lowat

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
                s.failed = s.failed or (f"connection lost: {exc}" if exc else "connection closed early")
                s.finished = True
            s.close()
            if self._on_session is not None:
                self._on_session(s)

