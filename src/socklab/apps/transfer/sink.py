"""Where one received file's bytes go: hashing and writing, in order, on worker threads.

Split from :mod:`socklab.apps.transfer.receiver` (which owns the ring of buffers and the
session): a :class:`Sink` takes filled buffers and hands them to the hashing and writing threads,
or does both inline; writes at page-aligned offsets go through ``O_DIRECT``.
"""

from __future__ import annotations

import contextlib
import errno
import os
from concurrent.futures import Future
from typing import IO, TYPE_CHECKING

from socklab.protocols import transfer as tp

if TYPE_CHECKING:
    from socklab.apps.transfer.receiver import ReceiveSession

__all__ = ["ALIGN", "Sink"]

ALIGN = 4096  # O_DIRECT: file offset, length and memory address in multiples of this


class Sink:
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
