"""The TFTP server's files: which names a peer may read or write, and how an upload is stored.

Why this exists: a TFTP server is reachable by anyone who can send it a datagram, with no login.
So what it lets a peer do to the user's files is a policy written in one place:

- **Names** are as strict as tftp-hpa's ``-s``: relative to the root (a leading ``/`` is dropped);
  ``..`` components, backslashes, NUL and anything whose real path (symlinks resolved) leaves the
  root are refused with ERROR 2.
- **Read-only unless told.** Without ``allow_write`` or ``create`` every WRQ gets ERROR 2 (tftp-hpa
  is read-only unless its files are world-writable; socklab needs an explicit option).
  ``allow_write`` lets a WRQ *replace* an existing file; ``create`` lets it *create* a new one - two
  separate choices, as tftp-hpa separates them (its ``-c``). With ``create`` alone an existing name
  gets ERROR 6 (file exists): a drop box that never destroys anything.
- **What may be replaced**: a regular file with at least one write bit (a ``0444`` file is
  read-only to every peer, even to a server running as root) that the server's user may write.
  The replacement keeps the file's permission bits (without setuid/setgid, which the kernel clears
  on any write too) and its owner and group; if they cannot be kept, the upload fails. A new file
  gets ``0666`` minus the umask, as any file a program creates.
- **Nothing half-done under the final name, and no ACK before the disk.** An upload goes to a
  temporary file beside the target; :meth:`Upload.commit` (run on a worker thread, never on the
  engine) fsyncs it, renames it into place (a new file is linked, so a file that appeared meanwhile
  is never replaced) and fsyncs the directory. Only then does the server send the final ACK.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from socklab.core.errors import SocklabError
from socklab.protocols import tftp

__all__ = ["Download", "Refuse", "TftpAccessError", "Upload", "new_file_mode", "resolve_path"]


class TftpAccessError(SocklabError):
    """A request the path policy refuses; ``code`` is the TFTP error code to answer with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Refuse(TftpAccessError):
    """An upload refused while it runs or when it is stored (too large, disk full, cannot commit)."""


_READ_ONLY = ("access violation: this server is read-only (it accepts uploads only when started with "
              "--allow-write to replace files or --create to add new ones)")


def resolve_path(root: str | Path, filename: str, *, write: bool, create: bool = False,
                 allow_write: bool = False) -> Path:
    """Map a requested name onto a file under ``root``, or refuse it.

    Args:
        write: a WRQ (else an RRQ).
        create: a WRQ may create a new file.
        allow_write: a WRQ may replace an existing file.

    Raises:
        TftpAccessError: code 2 (access violation) for escapes, a read-only server and files that
            may not be replaced; 1 (file not found) for a missing file to read or a missing
            directory; 6 (file exists) for a WRQ onto an existing name without ``allow_write``.
    """
    if write and not (create or allow_write):
        raise TftpAccessError(tftp.ErrorCode.ACCESS_VIOLATION, _READ_ONLY)
    if "\0" in filename or "\\" in filename:
        raise TftpAccessError(tftp.ErrorCode.ACCESS_VIOLATION, "illegal character in file name")
    parts = [p for p in filename.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise TftpAccessError(tftp.ErrorCode.ACCESS_VIOLATION, "access violation: name leaves the root")
    base = Path(os.path.realpath(root))
    real = Path(os.path.realpath(base.joinpath(*parts)))
    if real != base and base not in real.parents:
        raise TftpAccessError(tftp.ErrorCode.ACCESS_VIOLATION, "access violation: name leaves the root")
    if not write:
        if not real.exists():
            raise TftpAccessError(tftp.ErrorCode.FILE_NOT_FOUND, "file not found")
        if not real.is_file():
            raise TftpAccessError(tftp.ErrorCode.ACCESS_VIOLATION, "not a regular file")
        return real
    if real.exists() or real.is_symlink():
        if not allow_write:
            raise TftpAccessError(tftp.ErrorCode.FILE_EXISTS,
                                  "file exists (this server creates new files but replaces none: --allow-write)")
        check_replaceable(real)
        return real
    if not create:
        raise TftpAccessError(tftp.ErrorCode.ACCESS_VIOLATION,
                              "access violation: no such file (this server replaces files but creates none: --create)")
    if not real.parent.is_dir():
        raise TftpAccessError(tftp.ErrorCode.FILE_NOT_FOUND, "directory not found")
    return real


def check_replaceable(path: Path) -> os.stat_result:
    """The rule for replacing an existing file (module docstring); returns its ``lstat``.

    Raises:
        TftpAccessError: code 2 when the file may not be replaced, with the reason.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError as exc:
        raise TftpAccessError(tftp.ErrorCode.FILE_NOT_FOUND, "file vanished") from exc
    if not stat.S_ISREG(st.st_mode):
        raise TftpAccessError(tftp.ErrorCode.ACCESS_VIOLATION, "access violation: not a regular file")
    if not st.st_mode & 0o222:
        raise TftpAccessError(tftp.ErrorCode.ACCESS_VIOLATION,
                              f"access violation: the file is read-only (mode {stat.S_IMODE(st.st_mode):04o})")
    if not os.access(path, os.W_OK):
        raise TftpAccessError(tftp.ErrorCode.ACCESS_VIOLATION,
                              "access violation: the server's user may not write this file")
    if os.geteuid() not in (0, st.st_uid):
        raise TftpAccessError(tftp.ErrorCode.ACCESS_VIOLATION,
                              "access violation: the file belongs to another user, whose ownership a "
                              "replacement could not keep")
    return st


def new_file_mode() -> int:
    """``0666`` minus the process's umask (read once at startup: ``os.umask`` can only be read by
    setting it, which would race with threads creating files)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


class Upload:
    """A WRQ's destination: a temporary file beside the target, committed when complete.

    Args:
        path: the target (from :func:`resolve_path`).
        limit: the largest size accepted, bytes.
        netascii: convert CR LF back to local line ends.
        replace: the target may be replaced (``allow_write``); otherwise it must still be absent
            at commit time.
        new_mode: the permission bits of a new file (default ``0666`` minus the umask).
    """

    def __init__(self, path: Path, limit: int, netascii: bool, *, replace: bool = True,
                 new_mode: int | None = None) -> None:
        self.path = path
        self.limit = limit
        self.replace = replace
        self.new_mode = new_mode if new_mode is not None else new_file_mode()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tftp-part", dir=path.parent)
        self.tmp = Path(tmp)
        self.file = os.fdopen(fd, "wb")
        self.size = 0
        self.committed = False
        self.decoder = tftp.NetasciiDecoder() if netascii else None

    def write(self, data: bytes) -> None:
        """One in-order block (on the engine: a buffered write, no fsync)."""
        self.size += len(data)
        if self.size > self.limit:
            raise Refuse(tftp.ErrorCode.DISK_FULL, f"upload exceeds the server's limit ({self.limit} bytes)")
        if self.decoder is not None:
            data = self.decoder.decode(data)
        try:
            self.file.write(data)
        except OSError as exc:
            raise Refuse(tftp.ErrorCode.DISK_FULL, f"cannot write: {exc.strerror}") from exc

    def commit(self) -> None:
        """Store the upload durably under its final name. Blocking: run it on a worker thread.

        Raises:
            Refuse: it could not be stored (the code to answer with); the temporary file is gone.
        """
        try:
            self._commit()
        except TftpAccessError as exc:
            self.discard()
            raise Refuse(exc.code, str(exc)) from exc
        except FileExistsError as exc:
            self.discard()
            raise Refuse(tftp.ErrorCode.FILE_EXISTS, "file exists (created by someone else meanwhile)") from exc
        except OSError as exc:
            self.discard()
            code = tftp.ErrorCode.DISK_FULL if exc.errno in (errno.ENOSPC, errno.EDQUOT) else \
                tftp.ErrorCode.ACCESS_VIOLATION
            raise Refuse(code, f"cannot store the file: {exc.strerror or exc}") from exc

    def _commit(self) -> None:
        f = self.file
        if self.decoder is not None:
            f.write(self.decoder.decode(b"", final=True))
        f.flush()
        fd = f.fileno()
        exists = os.path.lexists(self.path)
        if exists:
            if not self.replace:
                raise FileExistsError(errno.EEXIST, "file exists")
            st = check_replaceable(self.path)  # again: it may have changed while the data came
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o777)  # keep rwx, never setuid/setgid
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(fd, st.st_uid, st.st_gid)
        else:
            os.fchmod(fd, self.new_mode)
        os.fsync(fd)
        f.close()
        if exists:
            os.replace(self.tmp, self.path)
        else:
            try:
                os.link(self.tmp, self.path)  # fails if the name appeared meanwhile: never replaces
                self.tmp.unlink()
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                # a file system without hard links (FAT, some FUSE): check, then rename
                if os.path.lexists(self.path):
                    raise FileExistsError(errno.EEXIST, "file exists") from exc
                os.replace(self.tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.committed = True

    def discard(self) -> None:
        """Close and remove the temporary file (idempotent; nothing once committed)."""
        if not self.file.closed:
            self.file.close()
        if not self.committed:
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()

    def finish(self, ok: bool) -> None:
        """The transfer ended: a commit already happened if it succeeded; otherwise clean up."""
        self.discard()


class Download:
    """An RRQ's source; netascii converts on the fly (RFC 1350 section 1)."""

    def __init__(self, path: Path, netascii: bool) -> None:
        self.file = open(path, "rb")  # noqa: SIM115 - closed in finish()
        self.size = os.fstat(self.file.fileno()).st_size
        self.encoder = tftp.NetasciiEncoder() if netascii else None
        self._pending = b""

    def read(self, n: int) -> bytes:
        if self.encoder is None:
            return self.file.read(n)
        while len(self._pending) < n:
            raw = self.file.read(max(n, 4096))
            if not raw:
                break
            self._pending += self.encoder.encode(raw)
        out, self._pending = self._pending[:n], self._pending[n:]
        return out

    def finish(self, ok: bool) -> None:
        self.file.close()
