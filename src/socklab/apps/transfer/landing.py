"""Where a received file lands, and what the receiver lets a sender decide about it.

Why this exists: a sender is a peer, and a peer may be anyone who can reach the port. It names
the file, suggests a mode and a modification time; the receiver decides what of that it takes.
This module is that policy, and the commit that makes a verified file durable, apart from the
receiving machinery (:mod:`socklab.apps.transfer.receiver`), so both are small enough to read.

The rules (rsync's ``--chmod``/``--no-perms`` and tftp-hpa are the reference):

- **names** stay inside the destination: no absolute path, ``..``, NUL or backslash, no path
  through a symlink that leaves it, no symlink as the final name;
- **modes**: only the permission bits of the sender's suggestion are used, masked by the receiver's
  umask; setuid, setgid and sticky never are, and neither are group or world write (a peer must not
  open the receiver's files to other local users: 0o755 at most). ``--no-perms``: new files get the
  receiver's default (0o666 & ~umask, directories 0o777 & ~umask) - the user's umask, the user's
  choice. A directory keeps ``u+rwx`` (the receiver must be able to write into it), and a
  directory that already existed keeps its mode;
- **a replaced file** (``--overwrite``) keeps its permission bits and, as far as the receiver may
  set them, its owner and group; the sender's suggestion does not apply to it;
- **times** are checked by the protocol (finite, 0001..9999; see :func:`transfer.check_mtime`);
- **durability**: mode and time are set, the data and metadata fsynced, the ``.part`` renamed to
  the final name, and the directory fsynced (with every directory the session created), and only
  then does the sender hear ``RESULT ok``. The final name holds the old file, nothing, or the whole
  verified new file - never a part of one.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path

from socklab.core.errors import RemoteProtocolError, SocklabError
from socklab.protocols import transfer as tp
from socklab.protocols.text import escape_peer_text

__all__ = ["Refused", "commit_file", "dir_mode", "file_mode", "fsync_dir", "make_dirs", "prefix_digests", "read_umask", "resolve",
           "tree_root"]

PERM_BITS = 0o777  # permission bits: never setuid (0o4000), setgid (0o2000), sticky (0o1000)
PEER_BITS = 0o755  # all a peer may ever suggest: no group or world write either

_umask_lock = threading.Lock()


class Refused(SocklabError):
    """An entry the receiver will not take; ``code`` goes to the sender in RESULT."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def read_umask() -> int:
    """This process's umask, read without changing it (``/proc/self/status``; Linux 4.7+).

    Falls back to setting and restoring it, which is only safe while no other thread creates files.
    """
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode(suggested: int, umask: int, perms: bool = True) -> int:
    """The mode a new file gets: the sender's bits (0o755 at most) masked by the umask, or the default."""
    base = suggested & PEER_BITS if perms else 0o666
    return base & ~umask & PERM_BITS


def dir_mode(suggested: int, umask: int, perms: bool = True) -> int:
    """The mode a new directory gets: as :func:`file_mode`, plus ``u+rwx`` (we write into it)."""
    base = suggested & PEER_BITS if perms else 0o777
    return (base & ~umask & PERM_BITS) | stat.S_IRWXU


def resolve(dest: Path, name: str) -> Path:
    """The path ``name`` lands at inside ``dest`` (a real path).

    Raises:
        Refused: code ``name`` - the name leaves ``dest`` or the final name is a symlink.
    """
    shown = escape_peer_text(repr(name))
    try:
        parts = tp.check_name(name)
    except RemoteProtocolError:
        raise Refused("name", f"refused name {shown}: absolute, empty, '..', NUL or backslash") from None
    target = dest.joinpath(*parts)
    parent = Path(os.path.realpath(target.parent))
    if parent != dest and dest not in parent.parents:
        raise Refused("name", f"refused name {shown}: leaves the destination (symlink?)")
    if target.is_symlink():
        raise Refused("name", f"refused name {shown}: is a symlink")
    return target


def make_dirs(dest: Path, path: Path) -> list[Path]:
    """Create ``path`` and its missing parents inside ``dest``; the ones created, outermost first."""
    created: list[Path] = []
    missing: list[Path] = []
    p = path
    while p != dest and not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()  # 0o777 & ~umask, the default; a dir entry sets its own mode at DONE
        except FileExistsError:
            continue  # another session made it meanwhile
        created.append(d)
    return created


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (names created, renamed) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tree_root(path: Path, chunk_size: int) -> str:
    """The blake3-tree root of an existing file (to tell whether the sender's is the same)."""
    hasher = tp.FileHasher(chunk_size)
    buf = bytearray(min(chunk_size, 1 << 20))
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        while n := os.readv(fd, [buf]):
            hasher.update(view[:n])
    finally:
        os.close(fd)
    return hasher.hexdigest()


def prefix_digests(fd: int, size: int, chunk_size: int) -> list[bytes]:
    """The digest of each full chunk of an existing ``.part`` (the resumable prefix), read once."""
    have = min(os.fstat(fd).st_size, size) // chunk_size
    digests = []
    buf = bytearray(chunk_size) if have else bytearray()
    for i in range(have):
        if os.preadv(fd, [buf], i * chunk_size) < chunk_size:
            break
        digests.append(tp.chunk_digest(buf))
    return digests


def commit_file(fd: int, part: Path, final: Path, mode: int, mtime: float | None, *, fsync: bool,
                overwrite: bool, new_dirs: list[Path]) -> None:
    """Give the verified ``part`` (open as ``fd``) its mode and time, make it durable, rename it.

    ``mode`` applies to a new file; a file replaced under ``final`` passes its own permission bits
    and owner on. ``new_dirs``: directories this session created, whose own entries must be made
    durable too. ``fd`` stays open (the caller holds the ``.part``'s lock with it).

    Raises:
        OSError: the disk refused (``FileExistsError``: ``final`` appeared meanwhile and
            ``overwrite`` is off); ``final`` is then untouched and ``part`` still holds the data.
    """
    try:
        old = os.lstat(final)
    except FileNotFoundError:
        old = None
    if old is not None:
        if not overwrite:
            raise FileExistsError(17, "appeared while receiving; not replaced")
        mode = stat.S_IMODE(old.st_mode) & PERM_BITS
        with contextlib.suppress(PermissionError):  # root: the same owner; others: the group if theirs
            try:
                os.fchown(fd, old.st_uid, old.st_gid)
            except PermissionError:
                os.fchown(fd, -1, old.st_gid)
    os.fchmod(fd, mode)
    if mtime is not None:
        os.utime(fd, (mtime, mtime))
    if fsync:
        os.fsync(fd)  # the data and the inode (mode, time) before the name points at them
    os.replace(part, final)
    if fsync:
        for d in {final.parent, *(n.parent for n in new_dirs)}:
            fsync_dir(d)
