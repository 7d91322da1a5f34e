"""Static files: confined to one directory, with ranges, conditional requests and listings.

Why this exists: serving files is the first job of a web server and the classic place to get
security wrong. The request path arrives here already decoded and confined by
:func:`socklab.protocols.http_paths.parse_target` (no ``..``, no encoded slashes, no control
bytes). This module then:

- opens the file (``O_NONBLOCK`` so a FIFO cannot hang the engine) and checks the *real path of
  what was opened* (``/proc/self/fd/N``, or ``fstat`` identity against ``realpath`` elsewhere):
  a symlink pointing outside the root, or a directory swapped for such a symlink between checks,
  is refused with 404 unless ``follow_symlinks`` is on;
- answers conditional requests (RFC 9110 §13: ``If-None-Match``/``If-Modified-Since`` → 304,
  ``If-Match``/``If-Unmodified-Since`` → 412, ``If-Range``);
- answers ``Range`` (RFC 9110 §14): one range → 206 with ``Content-Range``, several →
  ``multipart/byteranges``, none satisfiable → 416;
- serves ``index.html`` for a directory, else an HTML-escaped, sorted listing with sizes and dates;
- never reads a whole large file: the response body is a :class:`~socklab.apps.http.router.FileSpan`
  that the protocol sends in chunks or with sendfile.

Speed without trusting names: every request still opens the file and checks what was opened.
Only what follows is cached (:class:`_FileCache`), keyed by the *opened* file's identity
``(dev, ino, size, mtime_ns, ctime_ns)`` from ``fstat`` plus its name (the MIME type): the
encoded header block (type, ETag, Last-Modified) and, for small files, the bytes. A change to
the file changes its ctime (which no user can set back), so a stale entry is never hit; bytes
are cached only once the ctime is over a second old, so two writes within one timestamp tick
(the "racy git" problem) cannot leave old bytes behind a key that still matches.
"""

from __future__ import annotations

import functools
import html
import itertools
import mimetypes
import os
import stat
import time
import urllib.parse
from email.utils import formatdate, parsedate_to_datetime
from typing import IO

from socklab.apps.http.router import FileSpan, Request, Response
from socklab.protocols.ranges import Unsatisfiable, parse_range

__all__ = ["StaticFiles"]

LISTING_MAX = 10_000  # entries shown in one directory listing (the page is built in memory)
SMALL_FILE = 16 * 1024  # files up to this size are read at once (one write with the head)
CACHE_ENTRIES = 1024  # files whose response headers (and bytes, if small) are kept
CACHE_BYTES = 8 * 1024 * 1024  # total bytes of small files kept in memory
RACY_SECONDS = 1.0  # a file changed more recently than this is not cached byte for byte
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_EXTRA_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
                ".wasm": "application/wasm", ".json": "application/json", ".md": "text/markdown",
                ".txt": "text/plain", ".html": "text/html", ".htm": "text/html", ".ico": "image/x-icon",
                ".png": "image/png", ".webp": "image/webp"}
_TEXTUAL = ("text/", "application/json", "application/javascript", "image/svg+xml")


@functools.lru_cache(maxsize=512)
def _mime_for_ext(ext: str) -> str:
    ctype = _EXTRA_TYPES.get(ext) or mimetypes.guess_type("x" + ext, strict=False)[0] or "application/octet-stream"
    if ctype.startswith(_TEXTUAL):
        ctype += "; charset=utf-8"
    return ctype


def _mime(name: str) -> str:
    return _mime_for_ext(os.path.splitext(name)[1].lower())


def _etag(st: os.stat_result) -> str:
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


@functools.lru_cache(maxsize=4096)
def _http_date(ts: int) -> str:
    """An IMF-fixdate (RFC 9110 §5.6.7); cached, as a site's files share few modification times."""
    return formatdate(ts, usegmt=True)


def _parse_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _etag_list(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


def _weak_match(tags: list[str], etag: str) -> bool:
    """RFC 9110 §8.8.3.2 weak comparison (used by If-None-Match)."""
    bare = etag.removeprefix("W/")
    return any(t == "*" or t.removeprefix("W/") == bare for t in tags)


_proc_fd = -1  # a descriptor on /proc/self/fd, opened on first use


def _proc_fd_dir() -> int:
    """A descriptor on this process's ``/proc/self/fd`` (reading a link relative to it skips a path walk).

    Raises:
        OSError: no /proc.
    """
    global _proc_fd
    if _proc_fd < 0:
        _proc_fd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    return _proc_fd


def _forget_proc_fd() -> None:
    """After a fork: the inherited descriptor shows the *parent's* table; the child opens its own."""
    global _proc_fd
    if _proc_fd >= 0:
        try:
            os.close(_proc_fd)
        except OSError:
            pass
    _proc_fd = -1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_proc_fd)


class _Entry:
    """What a file's metadata determines: its header block, ETag and dates; its bytes when small."""

    __slots__ = ("data", "etag", "head", "head_304", "mtime")

    def __init__(self, head: bytes, head_304: bytes, etag: str, mtime: int, data: bytes | None) -> None:
        self.head = head  # content-type, etag, last-modified, accept-ranges lines (CRLF-terminated)
        self.head_304 = head_304  # etag and last-modified lines (a 304 repeats only those)
        self.etag = etag
        self.mtime = mtime
        self.data = data


class _FileCache:
    """A bounded map from an opened file's identity to its :class:`_Entry` (oldest evicted first)."""

    def __init__(self, entries: int = CACHE_ENTRIES, max_bytes: int = CACHE_BYTES) -> None:
        self.max_entries = entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._map: dict[tuple[int, int, int, int, int, str], _Entry] = {}

    def get(self, key: tuple[int, int, int, int, int, str]) -> _Entry | None:
        return self._map.get(key)

    def put(self, key: tuple[int, int, int, int, int, str], entry: _Entry) -> None:
        size = len(entry.data) if entry.data is not None else 0
        if size > self.max_bytes:
            entry.data, size = None, 0
        m = self._map
        while m and (len(m) >= self.max_entries or self.bytes + size > self.max_bytes):
            try:
                old = m.pop(next(iter(m)), None)
            except (StopIteration, RuntimeError):  # emptied or changed by another thread meanwhile
                break
            if old is not None and old.data is not None:
                self.bytes -= len(old.data)
        previous = m.get(key)
        if previous is not None and previous.data is not None:
            self.bytes -= len(previous.data)  # replaced, not added
        m[key] = entry
        self.bytes += size

    def __len__(self) -> int:
        return len(self._map)


class StaticFiles:
    """Files under one directory.

    Args:
        directory: the served root (resolved once with ``realpath``).
        follow_symlinks: serve symlinks whose target is outside the root.
        listing: list a directory that has no ``index.html``.
        cache_bytes: bytes of small files kept in memory (``None``: :data:`CACHE_BYTES`; 0: none).
            Header blocks are cached in any case (at most :data:`CACHE_ENTRIES` files).
    """

    def __init__(self, directory: str | os.PathLike[str], *, follow_symlinks: bool = False,
                 listing: bool = True, cache_bytes: int | None = None) -> None:
        self.root = os.path.realpath(os.fspath(directory))
        if not os.path.isdir(self.root):
            from socklab.core.errors import UsageError

            raise UsageError(f"{directory} is not a directory")
        self.follow_symlinks = follow_symlinks
        self.listing = listing
        self._root_prefix = self.root.rstrip("/") + "/"
        self.cache = _FileCache(max_bytes=CACHE_BYTES if cache_bytes is None else cache_bytes)

    # ---- confinement -----------------------------------------------------------------------------
    def _inside(self, fd: int, expected: str) -> bool:
        """Is the object open on ``fd`` inside the root? Checked on what was opened, not on a name."""
        if self.follow_symlinks:
            return True
        try:
            real = os.readlink(str(fd), dir_fd=_proc_fd_dir())
        except OSError:  # no /proc: compare the identity of the opened file with its resolved name
            real = os.path.realpath(expected)
            try:
                a, b = os.fstat(fd), os.stat(real)
            except OSError:
                return False
            if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
                return False
        return real == self.root or real.startswith(self._root_prefix)

    # ---- serving ---------------------------------------------------------------------------------
    def serve(self, req: Request, prefix: tuple[str, ...] = ()) -> Response:
        """The response for ``req`` (a GET or HEAD whose path starts with ``prefix``)."""
        rel = req.segments[len(prefix):] if prefix else req.segments
        path = self.root + "/" + "/".join(rel) if rel else self.root
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError:
            return Response.text(404, "404 Not Found\n")
        try:
            if not self._inside(fd, path):  # what was opened, wherever the name led
                return Response.text(404, "404 Not Found\n")
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                if not req.trailing_slash and rel:
                    # Location built from the confined segments: never "//host" (open redirect).
                    loc = "/" + "/".join(urllib.parse.quote(s) for s in req.segments) + "/"
                    if req.query:
                        loc += "?" + req.query
                    return Response(301, [("location", loc), ("content-type", "text/plain")], b"moved\n")
                return self._directory(req, fd, path)
            if not stat.S_ISREG(st.st_mode) or req.trailing_slash:  # "/a.txt/" names a directory: 404 (nginx)
                return Response.text(404, "404 Not Found\n")
            owned, fd = fd, -1
            return self._file(req, owned, st, rel[-1] if rel else "")
        finally:
            if fd >= 0:
                os.close(fd)

    def _directory(self, req: Request, dir_fd: int, path: str) -> Response:
        try:
            fd = os.open("index.html", _OPEN_FLAGS, dir_fd=dir_fd)
        except OSError:
            fd = -1
        if fd >= 0:
            index_path = os.path.join(path, "index.html")
            if self._inside(fd, index_path):
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode):
                    return self._file(req, fd, st, "index.html")
            os.close(fd)
        if not self.listing:
            return Response.text(403, "403 Forbidden: directory listing is off\n")
        return self._listing(req, dir_fd)

    def _listing(self, req: Request, dir_fd: int) -> Response:
        rows = []
        with os.scandir(os.dup(dir_fd)) as it:
            entries = sorted(itertools.islice(it, LISTING_MAX + 1), key=lambda e: e.name)
        truncated = len(entries) > LISTING_MAX
        del entries[LISTING_MAX:]
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            name = entry.name + ("/" if is_dir else "")
            href = urllib.parse.quote(entry.name) + ("/" if is_dir else "")
            size = "-" if is_dir else str(st.st_size)
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(st.st_mtime))
            rows.append(f'<tr><td><a href="{html.escape(href)}">{html.escape(name)}</a></td>'
                        f"<td>{size}</td><td>{when}</td></tr>")
        note = f"<p>(listing truncated at {LISTING_MAX} entries)</p>" if truncated else ""
        title = html.escape(req.path)
        up = '<tr><td><a href="../">../</a></td><td></td><td></td></tr>' if req.segments else ""
        page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n"
                f"<body><h1>Index of {title}</h1>\n<table><tr><th>Name</th><th>Size</th><th>Modified (UTC)</th>"
                f"</tr>\n{up}{''.join(rows)}</table>"
                f"{note}</body></html>\n")
        return Response(200, [("content-type", "text/html; charset=utf-8")], page.encode("utf-8", "replace"))

    def _entry(self, fd: int, st: os.stat_result, name: str) -> _Entry:
        """The cached :class:`_Entry` of the file open on ``fd`` (made and cached on a miss)."""
        key = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns, name)
        entry = self.cache.get(key)
        if entry is not None:
            return entry
        etag = _etag(st)
        mtime = int(st.st_mtime)
        validators = f"etag: {etag}\r\nlast-modified: {_http_date(mtime)}\r\n".encode("latin-1")
        head = b"content-type: " + _mime(name).encode("latin-1") + b"\r\n" + validators + b"accept-ranges: bytes\r\n"
        if time.time() - st.st_ctime <= RACY_SECONDS:
            return _Entry(head, validators, etag, mtime, None)  # just changed: may change again unseen
        data = None
        size = st.st_size
        if size <= SMALL_FILE and size <= self.cache.max_bytes:
            data = os.pread(fd, size, 0)
            if len(data) != size:  # changed while being read: serve it uncached
                return _Entry(head, validators, etag, mtime, None)
        entry = _Entry(head, validators, etag, mtime, data)
        self.cache.put(key, entry)
        return entry

    def _file(self, req: Request, fd: int, st: os.stat_result, name: str) -> Response:
        """The response for the regular file open on ``fd`` (this method owns ``fd`` from here)."""
        try:
            entry = self._entry(fd, st, name)
        except OSError:
            os.close(fd)
            raise
        headers = req.headers
        if len(headers) > 1 or (headers and headers[0][0] != b"host"):  # anything beyond Host: look closer
            answer = self._special(req, fd, st, entry)
            if answer is not None:
                return answer
        if req.method == "HEAD":
            return Response(200, body=FileSpan(os.fdopen(fd, "rb", buffering=0), 0, st.st_size),
                            head_block=entry.head)
        if entry.data is not None:  # a small file, unchanged since it was read: no read at all
            os.close(fd)
            return Response(200, body=entry.data, head_block=entry.head)
        size = st.st_size
        if size <= SMALL_FILE:
            try:
                data = os.pread(fd, size, 0)  # small: read now, sent with the head in one write
            finally:
                os.close(fd)
            if len(data) == size:
                return Response(200, body=data, head_block=entry.head)
            return Response.text(500, "500 Internal Server Error: the file changed while being read\n")
        return Response(200, body=FileSpan(os.fdopen(fd, "rb", buffering=0), 0, size), head_block=entry.head)

    def _special(self, req: Request, fd: int, st: os.stat_result, entry: _Entry) -> Response | None:
        """Conditional and range requests: the response, or ``None`` for a plain 200."""
        etag, mtime, size = entry.etag, entry.mtime, st.st_size
        if req.header("if-match") or req.header("if-none-match") or req.header("if-modified-since") or \
                req.header("if-unmodified-since"):
            status = self._preconditions(req, etag, mtime)
            if status is not None:
                os.close(fd)
                return Response(status, body=b"", head_block=entry.head_304)
        range_header = req.header("range")
        if range_header is not None and self._if_range_ok(req.header("if-range"), etag, mtime):
            try:
                spans = parse_range(range_header, size)
            except Unsatisfiable:
                os.close(fd)
                return Response(416, [("content-range", f"bytes */{size}"), ("content-type", "text/plain")],
                                 b"416 Range Not Satisfiable\n")
            if spans is not None:
                return self._partial(os.fdopen(fd, "rb", buffering=0), spans, size, entry.head)
        return None

    @staticmethod
    def _preconditions(req: Request, etag: str, mtime: int) -> int | None:
        """RFC 9110 §13.2.2: evaluate the preconditions in order; 412 or 304, or None to go on."""
        if_match = req.header("if-match")
        if if_match is not None:
            tags = _etag_list(if_match)
            if "*" not in tags and etag not in tags:  # strong comparison
                return 412
        else:
            ius = _parse_date(req.header("if-unmodified-since"))
            if ius is not None and mtime > ius:
                return 412
        inm = req.header("if-none-match")
        if inm is not None:
            if _weak_match(_etag_list(inm), etag):
                return 304
        else:
            ims = _parse_date(req.header("if-modified-since"))
            if ims is not None and mtime <= ims:
                return 304
        return None

    @staticmethod
    def _if_range_ok(value: str | None, etag: str, mtime: int) -> bool:
        """RFC 9110 §13.1.5: honour Range only if the representation is unchanged."""
        if value is None:
            return True
        value = value.strip()
        if value.startswith('"') or value.startswith("W/"):
            return value == etag  # strong comparison; a weak tag never matches
        when = _parse_date(value)
        return when is not None and int(when) == mtime

    @staticmethod
    def _partial(f: IO[bytes], spans: list[tuple[int, int]], size: int, head: bytes) -> Response:
        if len(spans) == 1:
            first, last = spans[0]
            return Response(206, [("content-range", f"bytes {first}-{last}/{size}")],
                            FileSpan(f, first, last - first + 1), head_block=head)
        # RFC 9110 §14.6: multipart/byteranges, each part with its own Content-Type and Content-Range.
        boundary = os.urandom(12).hex()
        type_line, _, rest = head.partition(b"\r\n")  # the file's own content-type moves into each part
        ctype = type_line.partition(b": ")[2].decode("latin-1")
        parts: list[bytes | FileSpan] = []
        for first, last in spans:
            parts.append(f"\r\n--{boundary}\r\ncontent-type: {ctype}\r\n"
                         f"content-range: bytes {first}-{last}/{size}\r\n\r\n".encode())
            parts.append(FileSpan(f, first, last - first + 1))
        parts.append(f"\r\n--{boundary}--\r\n".encode())
        return Response(206, [("content-type", f"multipart/byteranges; boundary={boundary}")], parts, head_block=rest)
