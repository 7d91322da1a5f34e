"""What the sender sends, and the threads that read it beside the engine.

Why this exists: the sender's protocol (:mod:`socklab.apps.transfer.sender`) runs on an engine's
thread, which must not block on a disk or a pipe. What it sends comes from here: :func:`collect`
turns paths into entries (files, directories with modes and mtimes, stdin); :class:`FileHashes` is
one thread hashing a file while the engine ``sendfile``s it; :class:`StdinReader` is one thread
reading stdin as fast as the receiver takes it. Both hand their results to the engine through
``post`` (its ``call_soon_threadsafe``), so every protocol state change stays on the engine.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from socklab.core.errors import SocklabError, UsageError
from socklab.protocols import transfer as tp

__all__ = ["READ_SIZE", "FileHashes", "Post", "SendItem", "StdinReader", "collect", "os_reason"]

READ_SIZE = 1 << 20  # bytes per read of the hashing thread, and of stdin

Post = Callable[[Callable[[], None]], None]  # run a callable on the engine's thread (from any thread)


@dataclass(frozen=True)
class SendItem:
    """One entry to send and where its bytes come from (``None``: a directory; ``"-"``: stdin)."""

    entry: tp.Entry
    source: Path | str | None


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


def os_reason(exc: OSError) -> str:
    """``permission denied``: an OS error's text as the rest of socklab words it."""
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:] if text[:1].isupper() and text[1:2].islower() else text


def _posting(post: Post, fn: Callable[[], None]) -> None:
    """``post(fn)`` from a helper thread; an engine that stopped meanwhile (the session was
    abandoned: nobody waits for the result) may refuse it."""
    with contextlib.suppress(Exception):
        post(fn)


class FileHashes:
    """The blake3-tree hash of a file, computed by one thread while the engine sends the file.

    The thread reads with ``preadv`` into one reused 1 MiB buffer (page cache -> a buffer that stays
    in the CPU's cache, where BLAKE3 is fastest) - measured a little cheaper than hashing through an
    ``mmap`` of the file (page faults, cold lines), and a file truncated while being sent gives a
    short read here, not the SIGBUS an ``mmap`` would. It hashes from byte 0: once the first
    ``want`` chunks are done it posts ``on_prefix(digests)`` (to check a receiver's resumable prefix),
    at the end ``on_done(trailer)``, or ``on_error(exc)``.
    """

    def __init__(self, fd: int, size: int, chunk: int, want: int, post: Post,
                 on_prefix: Callable[[list[bytes]], None], on_done: Callable[[tp.Trailer], None],
                 on_error: Callable[[SocklabError], None]) -> None:
        self.fd, self.size, self.chunk, self.want = fd, size, chunk, want
        self.post, self.on_prefix, self.on_done, self.on_error = post, on_prefix, on_done, on_error
        self.cancelled = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="socklab-hash")
        self._thread.start()

    def _run(self) -> None:
        hasher = tp.FileHasher(self.chunk)
        buf = mmap.mmap(-1, READ_SIZE)  # page-aligned, reused
        view = memoryview(buf)
        told = self.want == 0
        try:
            pos = 0
            while pos < self.size:
                if self.cancelled:
                    return
                n = os.preadv(self.fd, [buf], pos)
                if n == 0:
                    raise SocklabError("the file shrank while being sent")
                hasher.update(view[:min(n, self.size - pos)])
                pos += n
                if not told and len(hasher.digests) >= self.want:
                    told = True
                    prefix = hasher.digests[:self.want]
                    _posting(self.post, functools.partial(self.on_prefix, prefix))
            trailer = tp.Trailer(hasher.hexdigest(), hasher.final_chunks())
            _posting(self.post, functools.partial(self.on_done, trailer))
        except OSError as exc:
            err = SocklabError(f"{os_reason(exc)} while reading the file to hash it")
            _posting(self.post, functools.partial(self.on_error, err))
        except SocklabError as exc:
            _posting(self.post, functools.partial(self.on_error, exc))
        finally:
            view.release()
            buf.close()


class StdinReader:
    """The thread that reads stdin for a stream entry and hashes it, one read handed over at a time.

    It waits for ``room`` before each read (the engine sets it once the last read is written and
    the transport is not paused), so at most one read is on its way: stdin is read as fast as the
    receiver takes it, no faster.
    """

    def __init__(self, stdin: IO[bytes], chunk: int, post: Post, on_data: Callable[[bytes], None],
                 on_end: Callable[[tp.Trailer, int], None], on_error: Callable[[SocklabError], None]) -> None:
        self.stdin, self.chunk, self.post = stdin, chunk, post
        self.on_data, self.on_end, self.on_error = on_data, on_end, on_error
        self.room = threading.Event()
        self.room.set()
        self.stopped = False
        threading.Thread(target=self._run, daemon=True, name="socklab-stdin").start()

    def stop(self) -> None:
        self.stopped = True
        self.room.set()

    def _run(self) -> None:
        hasher = tp.FileHasher(self.chunk)
        total = 0
        try:
            while True:
                self.room.wait()
                if self.stopped:
                    return
                data = self.stdin.read(READ_SIZE)
                if self.stopped:
                    return
                if not data:
                    break
                hasher.update(data)
                total += len(data)
                self.room.clear()
                _posting(self.post, functools.partial(self.on_data, data))
        except OSError as exc:
            err = SocklabError(f"{os_reason(exc)} while reading stdin")
            _posting(self.post, functools.partial(self.on_error, err))
            return
        trailer = tp.Trailer(hasher.hexdigest(), hasher.final_chunks())
        _posting(self.post, functools.partial(self.on_end, trailer, total))
