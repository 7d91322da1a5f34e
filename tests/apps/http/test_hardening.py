"""The server under abuse: invalid and smuggling requests, traversal, symlinks, slowloris, slow readers, limits."""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
from pathlib import Path

import pytest

from socklab.apps.http.api import Request, Response, Router
from socklab.tools.ss import list_sockets
from tests.apps.http.conftest import http_server, raw_exchange
from tests.apps.http.test_protocols import INVALID, TRAVERSAL
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)


def status_of(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:100]
    return int(data[9:12])


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_invalid_corpus_answered_and_closed(site: Path, parser: str) -> None:
    with http_server(site, max_body=1 << 20, parser=parser) as srv:
        for data, status in INVALID:
            out, closed = raw_exchange(srv.port, data)
            assert status_of(out) == status, data[:80]
            assert b"connection: close" in out and closed, data[:80]
            # the framing after the bad request is never parsed as a second request
            assert out.count(b"\r\nHTTP/1.1 ") == 0


@pytest.mark.parametrize("index", [0, 2, 16, 18])
def test_smuggling_refused_on_every_engine(site: Path, concurrent_engine: str, index: int) -> None:
    data, status = INVALID[index]
    with http_server(site, concurrent_engine) as srv:
        out, closed = raw_exchange(srv.port, data + b"GET /sub/a.txt HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status_of(out) == status and closed and b"0123456789" not in out


def test_traversal_corpus_serves_nothing_from_outside(site: Path) -> None:
    secret = b"TOP-SECRET-OUTSIDE-ROOT"
    extra = [b"/secret.txt", b"/../secret.txt", b"/sub/../../secret.txt", b"/%2e%2e/secret.txt",
             b"/..%2fsecret.txt", b"/%252e%252e/secret.txt", b"/..\\secret.txt", b"/%c0%ae%c0%ae/secret.txt",
             b"//../secret.txt", b"/sub/%2e%2e/%2e%2e/secret.txt", b"/sub/..%5c..%5csecret.txt",
             str(site.parent / "secret.txt").encode(), b"/" + str(site.parent / "secret.txt").encode(),
             b"http://127.0.0.1/../secret.txt", b"/%00../secret.txt", b"/sub/a.txt%00.html"]
    with http_server(site) as srv:
        for target in TRAVERSAL + extra:
            out, _ = raw_exchange(srv.port, b"GET " + target + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert secret not in out, target
            assert status_of(out) in (400, 404), target
        # and through curl, which must not normalize the path first
        import subprocess

        for target in ("/../secret.txt", "/%2e%2e/secret.txt", "/sub/../../secret.txt"):
            r = subprocess.run(["curl", "-sS", "--path-as-is", "--max-time", "10", "-o", "-", "-w", "%{http_code}",
                                f"http://127.0.0.1:{srv.port}{target}"], capture_output=True, timeout=20)
            assert secret not in r.stdout and r.stdout.endswith((b"400", b"404"))


def test_redirect_never_points_to_another_host(site: Path) -> None:
    (site / "evil.example").mkdir()
    with http_server(site) as srv:
        out, _ = raw_exchange(srv.port, b"GET //evil.example HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert status_of(out) == 301 and b"\r\nlocation: /evil.example/\r\n" in out


def test_symlinks_leaving_the_root_are_refused(site: Path) -> None:
    outside = site.parent / "outside"
    outside.mkdir()
    (outside / "o.txt").write_bytes(b"OUTSIDE")
    os.symlink(site.parent / "secret.txt", site / "link-out.txt")
    os.symlink(outside, site / "dir-out")
    os.symlink(site / "sub" / "a.txt", site / "link-in.txt")
    os.symlink("/etc/passwd", site / "sub" / "passwd")

    def get(port: int, path: str) -> bytes:
        out, _ = raw_exchange(port, f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        return out

    with http_server(site) as srv:
        for path in ("/link-out.txt", "/dir-out/o.txt", "/dir-out/", "/sub/passwd"):
            out = get(srv.port, path)
            assert status_of(out) == 404 and b"OUTSIDE" not in out and b"SECRET" not in out and b"root:" not in out
        assert get(srv.port, "/link-in.txt").endswith(b"0123456789")
    with http_server(site, follow_symlinks=True) as srv:
        assert get(srv.port, "/link-out.txt").endswith(b"TOP-SECRET-OUTSIDE-ROOT")
        assert get(srv.port, "/dir-out/o.txt").endswith(b"OUTSIDE")


def test_directory_swapped_for_a_symlink_never_escapes(site: Path) -> None:
    """A directory replaced by a symlink to outside while requests run: every answer is inside or 404."""
    outside = site.parent / "outside2"
    outside.mkdir()
    (outside / "f.txt").write_bytes(b"OUTSIDE")
    (site / "swap").mkdir()
    (site / "swap" / "f.txt").write_bytes(b"INSIDE")
    stop = threading.Event()

    def swapper() -> None:
        inside = site / "swap-real"
        while not stop.is_set():
            os.rename(site / "swap", inside)
            os.symlink(outside, site / "swap")
            os.unlink(site / "swap")
            os.rename(inside, site / "swap")

    t = threading.Thread(target=swapper)
    with http_server(site) as srv:
        t.start()
        try:
            for _ in range(300):
                out, _ = raw_exchange(srv.port, b"GET /swap/f.txt HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                assert b"OUTSIDE" not in out
        finally:
            stop.set()
            t.join()


def test_limits_414_431_413_and_body_on_get(site: Path) -> None:
    router = Router()
    router.add_route("POST", "/echo", lambda req: Response(200, [("content-type", "text/plain")], req.body))
    with http_server(site, router=router, max_request_line=100, max_headers_size=500, max_body=1000) as srv:
        out, closed = raw_exchange(srv.port, b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status_of(out) == 414 and closed
        out, closed = raw_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 600 + b"\r\n\r\n")
        assert status_of(out) == 431 and closed
        out, closed = raw_exchange(srv.port, b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n"
                                   + b"a" * 2000)
        assert status_of(out) == 413 and closed
        out, closed = raw_exchange(srv.port, b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                                   b"Expect: 100-continue\r\nConnection: close\r\n\r\nhello")
        assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK") and out.endswith(b"hello")
        out, closed = raw_exchange(srv.port, b"DELETE /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert status_of(out) == 405 and b"allow: POST" in out


def test_max_connections_get_a_complete_503(site: Path, concurrent_engine: str) -> None:
    with http_server(site, concurrent_engine, max_connections=2) as srv:
        held = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(2)]
        try:
            for s in held:  # make sure both are accepted and counted
                s.sendall(b"GET /sub/a.txt HTTP/1.1\r\nHost: a\r\n\r\n")
                assert s.recv(65536).startswith(b"HTTP/1.1 200")
            out, closed = raw_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and closed
            head, _, body = out.partition(b"\r\n\r\n")
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            assert len(body) == length
        finally:
            for s in held:
                s.close()


def test_header_deadline_is_absolute_and_answers_408(site: Path, concurrent_engine: str) -> None:
    with http_server(site, concurrent_engine, header_timeout=1.0) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            t0 = time.monotonic()
            got = b""
            s.setblocking(False)
            for byte in b"GET / HTTP/1.1\r\nHost: a\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa":
                try:
                    s.send(bytes([byte]))
                    chunk = s.recv(4096)
                    got += chunk
                    if chunk == b"":
                        break
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    break
                time.sleep(0.1)  # a slowloris client: one byte every 100 ms, forever
                if time.monotonic() - t0 > 8:
                    break
            s.setblocking(True)
            try:
                while chunk := s.recv(4096):
                    got += chunk
            except (ConnectionResetError, TimeoutError):
                pass
        assert got.startswith(b"HTTP/1.1 408")
        assert time.monotonic() - t0 < 6  # cut at ~1 s although it never stopped sending


@pytest.mark.slow
def test_slowloris_does_not_starve_a_probe(site: Path, concurrent_engine: str) -> None:
    """60 connections dribbling header bytes are each cut at header_timeout; a probe keeps getting answers."""
    n = 60 if concurrent_engine not in ("threads", "pool") else 20
    with http_server(site, concurrent_engine, header_timeout=2.0, workers=64) as srv:
        sel = selectors.DefaultSelector()
        conns = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            conns.append(s)
        open_conns = set(conns)
        t0 = time.monotonic()
        probes = 0
        payload = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 1000
        i = 0
        while open_conns and time.monotonic() - t0 < 15:
            for s in list(open_conns):
                try:
                    s.send(payload[i:i + 1] or b"a")
                except OSError:
                    pass
            i += 1
            for key, _ in sel.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if not data or data.startswith(b"HTTP/1.1 408"):
                    open_conns.discard(sock)
                    sel.unregister(sock)
            # the probe: a normal client on a fresh connection gets its answer quickly
            with socket.create_connection(("127.0.0.1", srv.port), timeout=3) as p:
                p.sendall(b"GET /sub/a.txt HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                got = b""
                while chunk := p.recv(4096):
                    got += chunk
                assert got.endswith(b"0123456789")
                probes += 1
        elapsed = time.monotonic() - t0
        sel.close()
        for s in conns:
            s.close()
        assert not open_conns, f"{len(open_conns)} slow connections still open after {elapsed:.1f} s"
        assert elapsed < 10 and probes >= 3


def test_slow_reader_memory_bounded_and_send_timeout(site: Path, concurrent_engine: str) -> None:
    """Clients that stop reading a 3 MiB file: per-connection buffering stays bounded; send_timeout drops them."""
    max_buffer = 64 * 1024
    with http_server(site, concurrent_engine, send_timeout=1.0, max_buffer=max_buffer) as srv:
        clients = []
        for _ in range(8):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(5)
            s.connect(("127.0.0.1", srv.port))
            s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\n")
            clients.append(s)
        # The server has filled what it can once each connection's send queue in the kernel holds
        # bytes the client has not taken (its 4 KiB window is full): read from /proc/net/tcp.
        def filled() -> bool:
            mine = [e for e in list_sockets(("tcp",), with_pids=False, port=srv.port)
                    if e.local_port == srv.port and e.state == "ESTABLISHED"]
            return len(mine) == len(clients) and all(e.send_q > 0 for e in mine)

        wait_until(filled, "the server to fill every client's connection")
        buffered = [c.get_write_buffer_size() for c in list(srv.engine.connections)  # type: ignore[attr-defined]
                    if hasattr(c, "get_write_buffer_size")]
        assert buffered and max(buffered) <= max_buffer + 64 * 1024 + 1, buffered
        # send_timeout (1 s) passes while the clients accept nothing: the server drops all of them
        wait_until(lambda: srv.statistics().connections == 0, "the server to drop the clients that read nothing",
                   timeout=15)
        for s in clients:  # the server gave up on them: what was in flight, then EOF or RST
            got = 0
            try:
                while chunk := s.recv(1 << 20):
                    got += len(chunk)
            except (ConnectionResetError, TimeoutError):
                pass
            assert got < 3 * 1024 * 1024, "the whole file arrived: the client was not cut"
            s.close()


def test_graceful_shutdown_finishes_in_flight_and_closes_idle(site: Path, concurrent_engine: str) -> None:
    with http_server(site, concurrent_engine, send_timeout=20) as srv:
        idle = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        idle.sendall(b"GET /sub/a.txt HTTP/1.1\r\nHost: a\r\n\r\n")
        assert idle.recv(65536).endswith(b"0123456789")
        busy = socket.socket()
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        busy.settimeout(10)
        busy.connect(("127.0.0.1", srv.port))
        busy.sendall(b"GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\n")
        first = busy.recv(1000)
        assert first.startswith(b"HTTP/1.1 200")
        stopper = threading.Thread(target=srv.shutdown, kwargs={"timeout": 20})
        t0 = time.monotonic()
        stopper.start()
        assert idle.recv(100) == b""  # the idle keep-alive is closed at once
        assert time.monotonic() - t0 < 2
        idle.close()
        data = bytearray(first)
        while chunk := busy.recv(1 << 20):
            data += chunk
        busy.close()
        body = bytes(data).partition(b"\r\n\r\n")[2]
        assert body == (site / "big.bin").read_bytes()  # the in-flight response completed
        stopper.join(10)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()


def test_pipelined_request_after_shutdown_gets_connection_close(site: Path) -> None:
    router = Router()
    srv_box: list[object] = []

    def slow(req: Request) -> Response:
        srv = srv_box[0]
        srv.engine.begin_shutdown()  # type: ignore[attr-defined]
        return Response(200, [("content-type", "text/plain")], b"done")

    router.add_route("GET", "/trigger", slow)
    with http_server(site, router=router) as srv:
        srv_box.append(srv)
        out, closed = raw_exchange(srv.port, b"GET /trigger HTTP/1.1\r\nHost: a\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200") and b"connection: close" in out and closed


def test_cap_plus_many_refused_fast_accepted_unaffected(site: Path, concurrent_engine: str) -> None:
    """20 connections at the cap, 100 more: each excess one gets a complete 503; the 20 keep being served."""
    cap = 20
    with http_server(site, concurrent_engine, max_connections=cap, workers=cap + 4) as srv:
        held = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(cap)]
        try:
            for s in held:
                s.sendall(b"GET /sub/a.txt HTTP/1.1\r\nHost: a\r\n\r\n")
                assert s.recv(65536).endswith(b"0123456789")
            refused = 0
            for _ in range(100):
                out, closed = raw_exchange(srv.port, b"GET /sub/a.txt HTTP/1.1\r\nHost: a\r\n\r\n")
                refused += out.startswith(b"HTTP/1.1 503") and closed
            assert refused == 100
            for s in held:  # the accepted clients are unaffected
                s.sendall(b"GET /sub/a.txt HTTP/1.1\r\nHost: a\r\n\r\n")
                assert s.recv(65536).endswith(b"0123456789")
        finally:
            for s in held:
                s.close()
