"""The sending side of a native transfer: ``sendfile`` for the bytes, a thread for the hash.

Why this exists: the fastest way to put a file on a TCP connection is to not touch it - the
kernel copies from the page cache to the socket (``os.sendfile``, zero copies in user space).
Verification needs the bytes hashed though, so one thread reads the same file (``preadv`` into
one reused 1 MiB buffer) and computes its blake3-tree hash (per-chunk digests and the root, one
pass) while the main thread sends; BLAKE3 releases the GIL, so on a multi-core machine the hashing
runs beside the copy instead of in front of it, at ~0.25 CPU s per GiB including the read.

The data path uses a plain blocking socket (speed is the point); the session's rules come from
:mod:`socklab.protocols.transfer`. Between ``sendfile`` slices the sender peeks for an early
ERROR from the receiver (a full disk), so it stops within a slice instead of sending gigabytes
into a void.
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from socklab.core.errors import BrokenError, RemoteProtocolError, SocklabError, UsageError, translate_oserror
from socklab.protocols import transfer as tp
from socklab.protocols.text import escape_peer_text

__all__ = ["SendItem", "SendReport", "SendSession", "collect"]

SLICE = 8 << 20  # bytes per sendfile call between checks for an early ERROR
READ_SIZE = 1 << 20  # bytes per read of the hashing thread


@dataclass(frozen=True)
class SendItem:
    """One entry to send and where its bytes come from (``None``: a directory; ``"-"``: stdin)."""

    entry: tp.Entry
    source: Path | str | None


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


def collect(paths: list[str], stdin_name: str = "stdin") -> list[SendItem]:
    """Files, directories (recursively, with modes and mtimes) and ``-`` (stdin) to entries.

    Raises:
        UsageError: a path does not exist or is not a file or directory.
    """
    items: list[SendItem] = []
    for raw in paths:
        if raw == "-":
            items.append(SendItem(tp.Entry(stdin_name, "stream", None, 0o644, None), "-"))
            continue
        path = Path(raw)
        try:
            st = path.stat()
        except OSError as exc:
            raise UsageError(f"PATH {raw!r}: cannot send it: {exc.strerror}") from exc
        if stat.S_ISREG(st.st_mode):
            if not os.access(path, os.R_OK):
                raise UsageError(f"PATH {raw!r}: cannot send it: not readable (permission denied)")
            items.append(SendItem(tp.Entry(path.name, "file", st.st_size, st.st_mode & 0o777, st.st_mtime), path))
        elif stat.S_ISDIR(st.st_mode):
            items.extend(_walk(path))
        else:
            raise UsageError(f"PATH {raw!r}: cannot send it: not a regular file or directory")
    return items


def _walk(root: Path) -> Iterator[SendItem]:
    base = root.resolve().name or "root"
    st = root.stat()
    yield SendItem(tp.Entry(base, "dir", 0, st.st_mode & 0o777, st.st_mtime), None)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root)
        for d in list(dirnames):
            p = Path(dirpath) / d
            if p.is_symlink():
                dirnames.remove(d)  # never follow links out of the tree
                continue
            s = p.stat()
            yield SendItem(tp.Entry(f"{base}/{(rel / d).as_posix()}".replace("/./", "/"), "dir", 0,
                                    s.st_mode & 0o777, s.st_mtime), None)
        for f in sorted(filenames):
            p = Path(dirpath) / f
            s = p.lstat()
            if not stat.S_ISREG(s.st_mode):
                continue  # symlinks, sockets, devices: skipped
            name = (Path(base) / rel / f).as_posix()
            yield SendItem(tp.Entry(name, "file", s.st_size, s.st_mode & 0o777, s.st_mtime), p)


class _Hashes:
    """The blake3-tree hash of a file, computed by one thread while the main thread sends it.

    The thread reads the file with ``preadv`` into one reused 1 MiB buffer (page cache -> a buffer
    that stays in the CPU's cache, where BLAKE3 is fastest) - measured a little cheaper than
    hashing through an ``mmap`` of the file (page faults, cold lines), and a file truncated while
    being sent gives a short read here, not the SIGBUS an ``mmap`` would.

    Args:
        fd: the open file; size: its size; chunk: the session's chunk size.
        prefix: digests of the first chunks, already computed (a resume): hashing starts after them.
    """

    def __init__(self, fd: int, size: int, chunk: int, prefix: list[bytes]) -> None:
        self.hasher = tp.FileHasher(chunk)
        for digest in prefix:
            self.hasher.add_chunk(digest)
        self.fd = fd
        self.size = size
        self.start = len(prefix) * chunk
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="socklab-hash")
        self._thread.start()

    def _run(self) -> None:
        step = READ_SIZE
        buf = mmap.mmap(-1, step)  # page-aligned, reused
        view = memoryview(buf)
        try:
            pos = self.start
            while pos < self.size:
                n = os.preadv(self.fd, [buf], pos)
                if n == 0:
                    raise SocklabError("the file shrank while being sent")
                self.hasher.update(view[:min(n, self.size - pos)])
                pos += n
        except BaseException as exc:
            self.error = exc
        finally:
            view.release()
            buf.close()

    def result(self) -> tp.Trailer:
        self._thread.join()
        if self.error is not None:
            raise self.error
        return tp.Trailer(self.hasher.hexdigest(), self.hasher.final_chunks())


def _prefix_digests(fd: int, chunks: int, chunk: int) -> list[bytes]:
    """Digests of the first ``chunks`` full chunks (to check a receiver's resumable prefix)."""
    out = []
    buf = bytearray(chunk)
    for i in range(chunks):
        n = os.preadv(fd, [buf], i * chunk)
        out.append(tp.chunk_digest(memoryview(buf)[:n]))
    return out


class SendSession:
    """Send entries over one connected, blocking TCP socket.

    Args:
        sock: connected to a receiver (``socklab receive``), or accepted from one (reverse mode).
        chunk_size: bytes per verified chunk.
        progress: called with the number of bytes just sent (for a progress bar).
        stdin: where a ``-`` entry reads from.
        skipped: called with the number of bytes the receiver already had and that need not
            travel (a resumed prefix, a file present): a bar counts them too, to end at 100 %.
    """

    def __init__(self, sock: socket.socket, chunk_size: int = tp.CHUNK_SIZE,
                 progress: Callable[[int], None] | None = None, stdin: IO[bytes] | None = None,
                 skipped: Callable[[int], None] | None = None) -> None:
        self.sock = sock
        self.conn = tp.TransferConnection("sender")
        self.chunk_size = chunk_size
        self.progress = progress
        self.skipped = skipped
        self.stdin = stdin if stdin is not None else sys.stdin.buffer
        self.reports: list[SendReport] = []

    # ---- plumbing ---------------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self._raise_peer_error(exc, "sending")

    def _raise_peer_error(self, exc: OSError, action: str) -> None:
        """The socket failed: if the receiver left an ERROR frame first, that is the real reason."""
        try:
            self.sock.setblocking(False)
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                self.conn.receive_data(data)
        except (OSError, RemoteProtocolError):
            pass
        while (ev := self.conn.next_event()) is not None:
            if isinstance(ev, tp.ErrorFrame):
                raise BrokenError(f"receiver: {escape_peer_text(ev.message)}") from exc
        raise translate_oserror(exc, f"{action} to the receiver") from exc

    def _event(self) -> tp.Event:
        while True:
            ev = self.conn.next_event()
            if ev is not None:
                if isinstance(ev, tp.ErrorFrame):
                    raise BrokenError(f"receiver: {escape_peer_text(ev.message)}")
                return ev
            try:
                data = self.sock.recv(65536)
            except OSError as exc:
                raise translate_oserror(exc, "waiting for the receiver") from exc
            if not data:
                raise BrokenError("the receiver closed the connection")
            self.conn.receive_data(data)

    def _check_early_error(self) -> None:
        readable, _, _ = select.select([self.sock], [], [], 0)
        if readable:
            try:
                data = self.sock.recv(65536)
            except OSError as exc:
                raise translate_oserror(exc, "sending (the receiver went away)") from exc
            if not data:
                raise BrokenError("the receiver closed the connection")
            self.conn.receive_data(data)
            ev = self.conn.next_event()
            if isinstance(ev, tp.ErrorFrame):
                raise BrokenError(f"receiver: {escape_peer_text(ev.message)}")
            if ev is not None:
                raise RemoteProtocolError(f"unexpected {type(ev).__name__} from the receiver while sending")

    # ---- the session ------------------------------------------------------------------------------
    def run(self, items: list[SendItem]) -> list[SendReport]:
        """Send every item; returns one report per item.

        Raises:
            BrokenError: the receiver failed the session (its message included), or the
                connection broke; RemoteProtocolError: the receiver broke the protocol.
        """
        self._send(self.conn.send(tp.Hello(chunk_size=self.chunk_size)))
        hello = self._event()
        assert isinstance(hello, tp.Hello)
        for item in items:
            self.reports.append(self._one(item))
        self._send(self.conn.send(tp.Done()))
        return self.reports

    def _one(self, item: SendItem) -> SendReport:
        entry = item.entry
        self._send(self.conn.send(entry))
        answer = self._event()
        if isinstance(answer, tp.Result):
            return SendReport(entry.name, answer.ok, 0, 0, 0, answer.error, answer.code)
        assert isinstance(answer, tp.Offer)
        if entry.kind == "stream":
            return self._stream(entry)
        assert isinstance(item.source, Path)
        try:
            fd = os.open(item.source, os.O_RDONLY)
        except OSError as exc:
            raise translate_oserror(exc, f"opening {item.source}") from exc
        try:
            return self._file(entry, fd, answer)
        finally:
            os.close(fd)

    def _file(self, entry: tp.Entry, fd: int, offer: tp.Offer) -> SendReport:
        size = os.fstat(fd).st_size
        if size != entry.size:
            raise SocklabError(f"{entry.name} changed size while being sent")
        # resume: the receiver's prefix counts only as far as its chunk digests match ours
        have = min(offer.have, len(offer.chunks), size // self.chunk_size)
        ours = _prefix_digests(fd, have, self.chunk_size)
        good = next((i for i in range(have) if tp.wire(ours[i]) != offer.chunks[i]), have)
        offset = good * self.chunk_size
        if offer.present:
            # the receiver keeps a file of this size under the name: send no bytes, only our root
            # (START at the end, then TRAILER); it answers "present" (the same file) or "exists"
            trailer = _Hashes(fd, size, self.chunk_size, []).result()
            self._send(self.conn.send(tp.Start(size)) + self.conn.send(trailer))
            result = self._event()
            assert isinstance(result, tp.Result)
            if result.ok and self.skipped is not None:
                self.skipped(size)
            return SendReport(entry.name, result.ok, size, 0, size, result.error, result.code)
        hashes = _Hashes(fd, size, self.chunk_size, ours[:good])
        self._send(self.conn.send(tp.Start(offset)))
        if offset and self.skipped is not None:
            self.skipped(offset)
        pos = offset
        while pos < size:
            try:
                n = os.sendfile(self.sock.fileno(), fd, pos, min(SLICE, size - pos))
            except OSError as exc:
                hashes.result()
                self._raise_peer_error(exc, f"sending {entry.name}")
                raise  # unreachable: _raise_peer_error raises
            if n == 0:
                raise SocklabError(f"{entry.name} shrank while being sent")
            pos += n
            if self.progress is not None:
                self.progress(n)
            self._check_early_error()
        trailer = hashes.result()
        self._send(self.conn.send(trailer))
        result = self._event()
        assert isinstance(result, tp.Result)
        return SendReport(entry.name, result.ok, size, size - offset, offset, result.error, result.code)

    def _stream(self, entry: tp.Entry) -> SendReport:
        self._send(self.conn.send(tp.Start(0)))
        hasher = tp.FileHasher(self.chunk_size)
        total = 0
        while True:
            data = self.stdin.read(1 << 20)
            if not data:
                break
            hasher.update(data)
            total += len(data)
            self._send(self.conn.send(tp.Chunk(data)))
            if self.progress is not None:
                self.progress(len(data))
        self._send(self.conn.send(tp.Chunk(b"")))
        self._send(self.conn.send(tp.Trailer(hasher.hexdigest(), hasher.final_chunks())))
        result = self._event()
        assert isinstance(result, tp.Result)
        return SendReport(entry.name, result.ok, total, total, 0, result.error, result.code)

