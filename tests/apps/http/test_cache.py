"""The per-request caches: bounded, never stale, never in place of the confinement check."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from socklab.apps.http import static
from socklab.apps.http.api import HttpProtocol, HttpSettings, Router
from socklab.core.errors import RemoteProtocolError
from socklab.protocols import http1, http_paths
from socklab.protocols.http1 import Http1Parser

from .test_protocol_fake import FakeTransport


def get(root: Path, target: bytes, router: Router | None = None, extra: bytes = b"") -> tuple[int, bytes, bytes]:
    """One request on a fresh connection: (status, header block, body)."""
    if router is None:
        router = Router()
        router.static("/", root)
    proto = HttpProtocol(router, HttpSettings(log_format="none"))
    t = FakeTransport()
    proto.connection_made(t)
    proto.data_received(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n" + extra + b"\r\n")
    head, _, body = bytes(t.out).partition(b"\r\n\r\n")
    return int(head[9:12]), head, body


@pytest.fixture
def aged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files look older than the racy window, so small ones are cached byte for byte at once."""
    real = static.time.time
    monkeypatch.setattr(static.time, "time", lambda: real() + 3600)


def rewrite_same_size_and_mtime(path: Path, data: bytes) -> None:
    """Rewrite ``path`` in place, same size, mtime set back: only the ctime tells the change."""
    st = os.stat(path)
    for _ in range(100_000):  # until the kernel's coarse clock moved on (a few ms at most)
        path.write_bytes(data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        if os.stat(path).st_ctime_ns != st.st_ctime_ns:
            return
    raise AssertionError("the ctime never changed")


def test_small_file_served_from_cache_then_fresh_after_in_place_change(tmp_path: Path, aged: None) -> None:
    (tmp_path / "f.txt").write_bytes(b"one")
    router = Router()
    files = router.static("/", tmp_path)
    assert get(tmp_path, b"/f.txt", router)[2] == b"one"
    assert any(e.data == b"one" for e in files.cache._map.values())  # cached byte for byte
    rewrite_same_size_and_mtime(tmp_path / "f.txt", b"two")
    status, _head, body = get(tmp_path, b"/f.txt", router)
    assert (status, body) == (200, b"two")


def test_replaced_file_is_a_new_key(tmp_path: Path, aged: None) -> None:
    (tmp_path / "f.txt").write_bytes(b"one")
    router = Router()
    router.static("/", tmp_path)
    assert get(tmp_path, b"/f.txt", router)[2] == b"one"
    (tmp_path / "new").write_bytes(b"two")
    os.replace(tmp_path / "new", tmp_path / "f.txt")  # how deploys update files: a new inode
    assert get(tmp_path, b"/f.txt", router)[2] == b"two"


def test_recently_changed_file_is_not_cached_byte_for_byte(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_bytes(b"one")
    router = Router()
    files = router.static("/", tmp_path)
    assert get(tmp_path, b"/f.txt", router)[2] == b"one"
    assert len(files.cache) == 0  # within the racy window: read again next time
    (tmp_path / "f.txt").write_bytes(b"two")
    assert get(tmp_path, b"/f.txt", router)[2] == b"two"


def test_same_inode_under_two_names_keeps_each_content_type(tmp_path: Path, aged: None) -> None:
    (tmp_path / "a.css").write_bytes(b"x{}")
    os.link(tmp_path / "a.css", tmp_path / "a.js")
    router = Router()
    router.static("/", tmp_path)
    assert b"content-type: text/css" in get(tmp_path, b"/a.css", router)[1]
    assert b"content-type: text/javascript" in get(tmp_path, b"/a.js", router)[1]


def test_cached_file_still_checked_for_confinement(tmp_path: Path, aged: None) -> None:
    """A cached file whose name now leads outside (symlink swapped in) is refused, not served from cache."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "f.txt").write_bytes(b"INSIDE")
    (tmp_path / "o.txt").write_bytes(b"OUTSIDE")
    router = Router()
    router.static("/", root)
    assert get(root, b"/f.txt", router)[2] == b"INSIDE"
    os.replace(root / "f.txt", tmp_path / "moved.txt")  # the very inode, now outside the root
    os.symlink(tmp_path / "moved.txt", root / "f.txt")
    status, _, body = get(root, b"/f.txt", router)
    assert status == 404 and b"INSIDE" not in body


def test_conditional_and_range_requests_bypass_the_plain_path(tmp_path: Path, aged: None) -> None:
    (tmp_path / "f.txt").write_bytes(b"0123456789")
    router = Router()
    router.static("/", tmp_path)
    status, head, _ = get(tmp_path, b"/f.txt", router)
    etag = re.search(rb"etag: (\S+)", head).group(1)  # type: ignore[union-attr]
    assert get(tmp_path, b"/f.txt", router, b"If-None-Match: " + etag + b"\r\n")[0] == 304
    status, head, body = get(tmp_path, b"/f.txt", router, b"Range: bytes=2-4\r\n")
    assert (status, body) == (206, b"234") and b"content-range: bytes 2-4/10" in head


def test_file_cache_is_bounded() -> None:
    cache = static._FileCache(entries=8, max_bytes=100)
    for i in range(50):
        cache.put((i, 0, 0, 0, 0, "x"), static._Entry(b"", b"", "", 0, b"y" * 30))
        assert len(cache) <= 8 and cache.bytes <= 100
    cache.put((99, 0, 0, 0, 0, "x"), static._Entry(b"", b"", "", 0, b"z" * 1000))  # larger than the whole cache
    assert cache.bytes <= 100 and cache.get((99, 0, 0, 0, 0, "x")) is not None


def test_parsed_head_cache_is_bounded_and_gives_the_same_events() -> None:
    heads = [b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(http1.PARSED_CACHE_SIZE + 50)]
    for data in heads + heads[:5]:
        p = Http1Parser()
        p.receive_data(data)
        first, second = p.next_event(), p.next_event()
        q = Http1Parser()  # byte by byte: the slow path, never the cache
        for i in range(len(data)):
            q.receive_data(data[i:i + 1])
        assert [first, second] == [q.next_event(), q.next_event()]
        assert len(http1._parsed) <= http1.PARSED_CACHE_SIZE
        assert len(http1._checked) <= http1.PARSED_CACHE_SIZE
    for _ in range(3):  # a remembered head with a body after it is no longer bodiless: parsed again, refused
        p = Http1Parser()
        p.receive_data(b"GET /0 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx")
        with pytest.raises(RemoteProtocolError, match="must not carry a body"):
            p.next_event()


def test_target_cache_is_bounded() -> None:
    for i in range(http_paths.PLAIN_CACHE_SIZE + 10):
        assert http_paths.parse_target(b"/p%d/" % i).segments == (f"p{i}",)
        assert len(http_paths._plain_cache) <= http_paths.PLAIN_CACHE_SIZE


def test_confinement_check_after_fork_reads_the_childs_own_descriptors(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_bytes(b"x")
    files = static.StaticFiles(tmp_path)
    inside = os.open(tmp_path / "f.txt", os.O_RDONLY)  # descriptor N, inside the root, in the parent
    try:
        assert files._inside(inside, str(tmp_path / "f.txt"))  # opens /proc/self/fd in the parent
        pid = os.fork()
        if pid == 0:  # the child: its descriptor N now points outside; it must be judged on its own table
            code = 1
            try:
                outside = os.open("/", os.O_RDONLY)
                os.dup2(outside, inside)
                code = 0 if not files._inside(inside, "/") else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(inside)


def test_file_cache_zero_keeps_no_bytes(tmp_path: Path, aged: None) -> None:
    (tmp_path / "f.txt").write_bytes(b"one")
    router = Router()
    files = router.static("/", tmp_path, cache_bytes=0)
    assert get(tmp_path, b"/f.txt", router)[2] == b"one"
    assert files.cache.bytes == 0 and all(e.data is None for e in files.cache._map.values())


def test_file_cache_option_on_the_cli() -> None:
    from click.testing import CliRunner

    from socklab.apps.http.cli import http

    out = CliRunner().invoke(http, ["serve", "--help"]).output
    assert "--file-cache" in out
    assert CliRunner().invoke(http, ["serve", "--file-cache", "-1"]).exit_code != 0


class _RecordingSocket:
    """Stands for the engine's socket capabilities: a real socket for sendfile, cork calls recorded."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.calls: list[tuple[int, int, int]] = []

    def set_cork(self, on: bool) -> bool:
        self.calls.append((socket.IPPROTO_TCP, socket.TCP_CORK, 1 if on else 0))
        return True

    def sendfile(self, file: Any, offset: int, count: int) -> int:  # as the reactor's transport does
        try:
            return os.sendfile(self.sock.fileno(), file.fileno(), offset, count)
        except BlockingIOError:
            return 0


def test_large_file_corked_for_head_and_sendfile_then_uncorked(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(os.urandom(100_000))
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        rec = _RecordingSocket(a)

        class T(FakeTransport):  # the transport capabilities (set_cork, sendfile), as an engine has them
            def set_cork(self, on: bool) -> bool:
                return rec.set_cork(on)

            def sendfile(self, file: Any, offset: int, count: int) -> int:
                return rec.sendfile(file, offset, count)

        router = Router()
        router.static("/", tmp_path)
        proto = HttpProtocol(router, HttpSettings(log_format="none"))
        t = T()
        proto.connection_made(t)
        proto.data_received(b"GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\n")
        cork = (socket.IPPROTO_TCP, socket.TCP_CORK)
        assert rec.calls == [(*cork, 1), (*cork, 0)]  # corked for the head and the file, released after
        assert b"content-length: 100000" in bytes(t.out) and proto.state != 5
        got = b""
        b.settimeout(10)  # a short send fails here, not at the test's timeout
        while len(got) < 100_000:
            chunk = b.recv(65536)
            assert chunk, f"closed after {len(got)} of 100000 bytes"
            got += chunk
        assert got == (tmp_path / "big.bin").read_bytes()
        proto.data_received(b"GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\n")  # the next response corks afresh
        assert rec.calls[2:] == [(*cork, 1), (*cork, 0)]
