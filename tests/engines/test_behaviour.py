"""One behaviour suite, every engine: the contract holds on each (uvloop's tests/test_tcp.py idea).

Real sockets on 127.0.0.1 / ::1 / a Unix path, port 0, readiness = ``Server.start()`` returning.
"""

from __future__ import annotations

import logging
import os
import random
import select
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socklab.apps.echo.protocol import EchoDatagramProtocol, EchoProtocol
from socklab.core.protocol import BufferedProtocol
from socklab.core.settings import ServerSettings
from socklab.core.trace import Tracer
from socklab.runtime import Server
from tests.conftest import is_listening, running_server, wait_until

pytestmark = pytest.mark.timeout(60)


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def recv_exactly(sock: socket.socket, n: int, bufsize: int = 65536) -> bytes:
    """Read exactly ``n`` bytes; the peer's end of the stream before that fails the test (a bare
    ``while len(got) < n: got += recv()`` spins forever on it)."""
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(bufsize)
        assert chunk, f"closed after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


def echo_roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    """Send everything (from a thread, so a full buffer cannot deadlock), half-close, read all back."""
    def writer() -> None:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=writer)
    t.start()
    got = recv_all(sock)
    t.join(10)
    return got


# ---- byte-exact echo over every address family --------------------------------------------------
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(st.binary(max_size=2048), st.integers(0, 1 << 20).map(lambda n: os.urandom(n))))
def test_echo_is_byte_exact(engine: str, payload: bytes) -> None:
    with running_server(EchoProtocol, engine) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
            assert echo_roundtrip(c, payload) == payload


def test_echo_over_ipv6(engine: str) -> None:
    with running_server(EchoProtocol, engine, host="::1") as srv:
        with socket.create_connection(("::1", srv.port), timeout=10) as c:
            assert echo_roundtrip(c, b"over ipv6\n" * 100) == b"over ipv6\n" * 100


def test_dual_stack_listener_accepts_both_families(engine: str) -> None:
    with running_server(EchoProtocol, engine, host="::") as srv:
        for host in ("127.0.0.1", "::1"):
            with socket.create_connection((host, srv.port), timeout=10) as c:
                assert echo_roundtrip(c, host.encode()) == host.encode()


def test_echo_over_unix_socket(engine: str, tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")
    with running_server(EchoProtocol, engine, unix=path):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(10)
            c.connect(path)
            assert echo_roundtrip(c, b"unix" * 5000) == b"unix" * 5000


def test_echo_over_tls(engine: str, tls_files: dict[str, str]) -> None:
    ctx = ssl.create_default_context(cafile=tls_files["ca"])
    with running_server(EchoProtocol, engine, tls_cert=tls_files["cert"], tls_key=tls_files["key"]) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as c:
                payload = os.urandom(200_000)
                c.sendall(payload)
                assert recv_exactly(c, len(payload)) == payload
                assert c.version() in ("TLSv1.2", "TLSv1.3")


class SmallBufferEcho(BufferedProtocol):
    """Lends a 7-byte buffer of its own: one read (one TLS record) takes many get_buffer/buffer_updated rounds."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = bytearray(7)

    def get_buffer(self, sizehint: int) -> bytearray:
        assert sizehint > 0  # the engines never pass asyncio's -1 through
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(bytes(self.buf[:nbytes]))

    def eof_received(self) -> bool:
        self.transport.close()
        return False


def test_an_app_that_lends_its_buffer_gets_the_plaintext_over_tls(engine: str, tls_files: dict[str, str]) -> None:
    # A BufferedProtocol under TLS got nothing on the reactor and thread engines (the TLS layer
    # called its data_received, which a BufferedProtocol does not have).
    ctx = ssl.create_default_context(cafile=tls_files["ca"])
    payload = os.urandom(100_000)
    with running_server(SmallBufferEcho, engine, tls_cert=tls_files["cert"], tls_key=tls_files["key"]) as srv, \
            ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=10),
                            server_hostname="localhost") as c:
        c.sendall(payload)
        assert recv_exactly(c, len(payload)) == payload


def test_tls_handshake_failure_does_not_kill_the_server(engine: str, tls_files: dict[str, str]) -> None:
    with running_server(EchoProtocol, engine, tls_cert=tls_files["cert"], tls_key=tls_files["key"]) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
            c.sendall(b"GET / HTTP/1.0\r\n\r\nthis is not TLS")
            c.settimeout(5)
            with _tolerate_reset():
                recv_all(c)  # the server closes (or resets) a peer that does not speak TLS
        ctx = ssl.create_default_context(cafile=tls_files["ca"])
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=10),
                             server_hostname="localhost") as c:
            c.sendall(b"still alive")
            assert c.recv(100) == b"still alive"


def test_a_tls_peer_that_closes_before_the_handshake_gets_a_close_not_a_reset(engine: str,
                                                                            tls_files: dict[str, str]) -> None:
    # A health check or a client that gave up: it sent nothing and closed. The server closes too
    # (a FIN, perhaps after a TLS alert); a reset would tell a probe that something went wrong.
    with running_server(EchoProtocol, engine, tls_cert=tls_files["cert"], tls_key=tls_files["key"]) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
        c.shutdown(socket.SHUT_WR)
        c.settimeout(10)
        while c.recv(4096):  # an alert is allowed; then the end of the stream, never ECONNRESET
            pass


@pytest.mark.parametrize("engine_name", ["iterative", "threads", "pool", "select", "poll", "epoll", "asyncio", "uvloop"])
def test_a_failed_tls_handshake_is_said_in_the_log_at_most_every_10s(engine_name: str, tls_files: dict[str, str],
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    # socklab's TLS layer, the same on every engine
    from socklab.core import tls

    tls._HANDSHAKE_FAILURES.next_at = 0.0  # a fresh process's limiter
    tls._HANDSHAKE_FAILURES.unsaid = 0
    with caplog.at_level(logging.WARNING, logger="socklab"), \
            running_server(EchoProtocol, engine_name, tls_cert=tls_files["cert"], tls_key=tls_files["key"]) as srv:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
                c.sendall(b"GET / HTTP/1.0\r\n\r\nthis is not TLS")
                c.settimeout(5)
                with _tolerate_reset():
                    recv_all(c)
        deadline = time.monotonic() + 5
        while tls._HANDSHAKE_FAILURES.unsaid < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    said = [r.getMessage() for r in caplog.records if "TLS handshake with" in r.getMessage()]
    assert len(said) == 1 and "with 127.0.0.1:" in said[0], said  # the first, with the client's address
    assert tls._HANDSHAKE_FAILURES.unsaid == 2  # the next two are counted for the next line


class _tolerate_reset:
    """Tolerate the reset a server may answer garbage with; any other error fails the test."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        return et is None or issubclass(et, ConnectionResetError)  # a timeout still fails


# ---- concurrency ---------------------------------------------------------------------------------
def test_200_concurrent_clients(concurrent_engine: str) -> None:
    # A pool worker serves one connection until it closes: 200 open clients need 200 workers.
    with running_server(EchoProtocol, concurrent_engine, workers=200, queue_size=256) as srv:
        socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=20) for _ in range(200)]
        try:
            for i, s in enumerate(socks):
                s.sendall(b"client %d\n" % i)
            for i, s in enumerate(socks):
                want = b"client %d\n" % i
                assert recv_exactly(s, len(want)) == want
        finally:
            for s in socks:
                s.close()


def test_iterative_serves_one_client_at_a_time() -> None:
    with running_server(EchoProtocol, "iterative") as srv:
        first = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        second = socket.create_connection(("127.0.0.1", srv.port), timeout=10)  # waits in the backlog
        try:
            first.sendall(b"one")
            assert first.recv(10) == b"one"
            second.sendall(b"two")
            second.settimeout(0.3)
            with pytest.raises(TimeoutError):
                second.recv(10)  # not served while the first client is connected
            first.close()
            second.settimeout(10)
            assert second.recv(10) == b"two"
        finally:
            first.close()
            second.close()


# ---- half-close, shutdown, limits ---------------------------------------------------------------
def test_half_close_gets_everything_back(engine: str) -> None:
    payload = os.urandom(3 * 1024 * 1024)
    with running_server(EchoProtocol, engine) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=20) as c:
        assert echo_roundtrip(c, payload) == payload


def test_graceful_shutdown_loses_nothing_mid_stream(engine: str) -> None:
    srv = Server(ServerSettings(engine=engine, shutdown_timeout=10))
    srv.listen(EchoProtocol)
    srv.start()
    c = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    payload = os.urandom(2 * 1024 * 1024)
    received = bytearray()

    def reader() -> None:
        while True:
            data = c.recv(65536)
            if not data:
                return
            received.extend(data)

    t = threading.Thread(target=reader)
    t.start()
    c.sendall(payload[: len(payload) // 2])
    stopper = threading.Thread(target=srv.shutdown)
    stopper.start()
    # The shutdown has begun once the listener is gone from the kernel's table (no sleep: a busy
    # machine may take longer than any guess to run the engine's begin_shutdown).
    wait_until(lambda: not is_listening(srv.port), "the shutdown to close the listener")
    # new connections are refused at once (the listener is closed)
    if engine != "iterative":
        with pytest.raises(OSError):
            probe = socket.create_connection(("127.0.0.1", srv.port), timeout=2)
            probe.sendall(b"x")
            assert probe.recv(10) in (b"", ServerSettings().overflow_message)
            raise ConnectionRefusedError
    c.sendall(payload[len(payload) // 2:])
    c.shutdown(socket.SHUT_WR)
    t.join(20)
    stopper.join(20)
    c.close()
    assert bytes(received) == payload
    assert not stopper.is_alive()


def test_max_connections_refuses_the_excess_with_a_reason(concurrent_engine: str) -> None:
    with running_server(EchoProtocol, concurrent_engine, max_connections=2, workers=4) as srv:
        a = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        b = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        for s in (a, b):
            s.sendall(b"hi")
            assert s.recv(10) == b"hi"
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as extra:
            assert b"max_connections" in recv_all(extra)
        a.sendall(b"still served")
        assert a.recv(100) == b"still served"
        a.close()
        b.close()


def test_max_connections_on_a_tls_listener_refuses_without_plaintext(concurrent_engine: str,
                                                                    tls_files: dict[str, str]) -> None:
    # The refusal used to send overflow_message in plaintext into what the client reads as TLS
    # records: OpenSSL then reports "wrong version number", a false diagnosis. Now a refused TLS
    # client gets only the close (a FIN, or a reset if its ClientHello was unread).
    ctx = ssl.create_default_context(cafile=tls_files["ca"])
    with running_server(EchoProtocol, concurrent_engine, max_connections=1, workers=2,
                        tls_cert=tls_files["cert"], tls_key=tls_files["key"]) as srv, \
            ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=10),
                            server_hostname="localhost") as served:
        served.sendall(b"hi")
        assert served.recv(10) == b"hi"
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as probe:
            probe.settimeout(10)
            assert recv_all(probe) == b""
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw:
            with pytest.raises((ssl.SSLEOFError, ConnectionResetError)):
                ctx.wrap_socket(raw, server_hostname="localhost").close()
        served.sendall(b"still served")
        assert served.recv(100) == b"still served"


def test_idle_connections_are_closed(engine: str) -> None:
    with running_server(EchoProtocol, engine, idle_timeout=0.3) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
        t0 = time.monotonic()
        assert recv_all(c) == b""
        assert 0.25 <= time.monotonic() - t0 < 5


def test_an_active_connection_outlives_the_idle_timeout(engine: str) -> None:
    """Idle means silent: a client that keeps talking is never cut off, however long it stays."""
    # A message every 0.1 s against a 0.6 s timeout: a 6x margin for a machine loaded by other tests.
    with running_server(EchoProtocol, engine, idle_timeout=0.6) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
        deadline = time.monotonic() + 2.0  # more than three idle timeouts
        n = 0
        while time.monotonic() < deadline:
            msg = f"message {n}\n".encode()
            c.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = c.recv(4096)
                assert chunk, f"closed after {n} messages although the client was active"
                got += chunk
            assert got == msg
            n += 1
            time.sleep(0.1)


def test_a_client_that_never_reads_cannot_grow_server_memory(concurrent_engine: str) -> None:
    limit = 64 * 1024
    with running_server(EchoProtocol, concurrent_engine, max_buffer=limit) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        c.setblocking(False)
        sent, chunk = 0, b"x" * 65536
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                sent += c.send(chunk)
            except BlockingIOError:  # wait for room (an event); none for 0.5 s: the server stopped reading
                if not select.select([], [c], [], 0.5)[1]:
                    break
        assert sent < 64 * 1024 * 1024, "the server kept reading a peer that does not read"
        buffered = [conn.get_write_buffer_size() for conn in srv.engine.connections  # type: ignore[attr-defined]
                    if hasattr(conn, "get_write_buffer_size")]
        assert buffered and max(buffered) <= limit + 256 * 1024


# ---- UDP -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")],
                         ids=["ipv4", "ipv6"])
def test_udp_echo_from_many_peers(engine: str, family: int, host: str) -> None:
    with running_server(EchoDatagramProtocol, engine, udp=True, host=host) as srv:
        peers = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(20)]
        try:
            for i, p in enumerate(peers):
                p.settimeout(5)
                p.sendto(b"peer %d" % i, (host, srv.port))
            for i, p in enumerate(peers):
                data, addr = p.recvfrom(100)
                assert data == b"peer %d" % i
                assert addr[1] == srv.port
        finally:
            for p in peers:
                p.close()


def test_udp_largest_datagram_and_oversized(engine: str) -> None:
    with running_server(EchoDatagramProtocol, engine, udp=True) as srv, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as p:
        p.settimeout(5)
        p.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        big = os.urandom(65507)  # 65535 - 20 (IP header) - 8 (UDP header)
        p.sendto(big, ("127.0.0.1", srv.port))
        assert p.recvfrom(70000)[0] == big
        with pytest.raises(OSError) as err:
            p.sendto(b"x" * 65508, ("127.0.0.1", srv.port))
        assert "too long" in str(err.value).lower()
        p.sendto(b"after", ("127.0.0.1", srv.port))  # the server is unaffected
        assert p.recvfrom(100)[0] == b"after"


class _BuggyDatagramProtocol(EchoDatagramProtocol):
    """Echoes, except that b"bad" makes it send to port 0 (EINVAL) - and its error handlers raise."""

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data == b"bad":
            self.transport.sendto(b"x", ("127.0.0.1", 0))  # type: ignore[union-attr]
            return
        super().datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        raise RuntimeError("a bug in error_received")

    def connection_lost(self, exc: BaseException | None) -> None:
        raise RuntimeError("a bug in connection_lost")


def test_udp_protocol_bugs_do_not_stop_the_endpoint(engine: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="socklab"), running_server(_BuggyDatagramProtocol, engine, udp=True) as srv, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as p:
        p.settimeout(5)
        p.sendto(b"bad", ("127.0.0.1", srv.port))
        p.sendto(b"after", ("127.0.0.1", srv.port))
        assert p.recvfrom(100)[0] == b"after"  # the endpoint outlived the bug in error_received
        deadline = time.monotonic() + 5
        while not srv.statistics().extra.get("callback_errors") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.statistics().extra.get("callback_errors", 0) >= 1  # reported, not swallowed
    # Stopping the server closed the endpoint: connection_lost raised, and that was reported as
    # the protocol's bug too (it once escaped from the reactor's close, cutting its shutdown short).
    reported = [r.getMessage() for r in caplog.records]
    assert any("_BuggyDatagramProtocol.connection_lost raised RuntimeError" in m for m in reported), reported


# ---- the trace -----------------------------------------------------------------------------------
SYSCALL_ENGINES = ["iterative", "threads", "pool", "select", "poll", "epoll"]


def test_scripted_session_trace(engine: str) -> None:
    tracer = Tracer(engine)
    events = tracer.record()
    closed = threading.Event()
    tracer.add_sink(lambda e: closed.set() if e.op == "close" and e.peer else None)
    with running_server(EchoProtocol, engine, tracer=tracer) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
            c.sendall(b"hello")
            assert c.recv(10) == b"hello"
            c.shutdown(socket.SHUT_WR)
            assert recv_all(c) == b""
        assert closed.wait(5), "the server never traced closing the connection"
    ops = [e.op for e in events if e.op != "note"]
    if engine in SYSCALL_ENGINES:
        expected = ["socket", "setsockopt", "bind", "listen", "accept", "recv", "send", "recv", "shutdown"]
        it = iter(ops)
        assert all(op in it for op in expected), ops  # in this order, others may interleave
        eof = [e for e in events if e.op == "recv" and e.nbytes == 0]
        assert eof and any("FIN" in n for n in eof[0].notes)
        assert any(e.op == "close" and e.peer for e in events)
    else:
        levels = {e.level for e in events if e.op in ("accept", "recv", "send", "close")}
        assert levels == {"transport"}, "asyncio-style engines must say they trace at the transport level"
        it = iter(ops)
        assert all(op in it for op in ["listen", "accept", "recv", "send", "recv", "close"]), ops


def test_partial_send_note() -> None:
    tracer = Tracer("test")
    event = tracer.emit("send", nbytes=10, requested=100)
    assert any("partial send" in n for n in event.notes)


def test_engines_run_the_same_random_conversation(concurrent_engine: str) -> None:
    rnd = random.Random(7)
    messages = [os.urandom(rnd.randint(1, 50_000)) for _ in range(30)]
    with running_server(EchoProtocol, concurrent_engine) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
        for m in messages:
            c.sendall(m)
            assert recv_exactly(c, len(m)) == m


class _Buggy(EchoProtocol):
    def data_received(self, data: bytes) -> None:
        if data.startswith(b"boom"):
            raise ValueError("a bug in the protocol")
        super().data_received(data)


def test_a_protocol_bug_closes_one_connection_not_the_server(engine: str, caplog: pytest.LogCaptureFixture) -> None:
    with running_server(_Buggy, engine) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as bad:
            bad.sendall(b"boom")
            with _tolerate_reset():
                assert recv_all(bad) == b""
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as good:
            good.sendall(b"fine")
            assert good.recv(10) == b"fine"
    assert any("a bug in the protocol" in r.getMessage() for r in caplog.records)


def test_tls_close_notify_reaches_the_protocol_as_eof(engine: str, tls_files: dict[str, str]) -> None:
    ctx = ssl.create_default_context(cafile=tls_files["ca"])
    with running_server(EchoProtocol, engine, tls_cert=tls_files["cert"], tls_key=tls_files["key"]) as srv:
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        c = ctx.wrap_socket(raw, server_hostname="localhost")
        c.sendall(b"bye")
        assert c.recv(10) == b"bye"
        plain = c.unwrap()  # sends close_notify and waits for the server's: the server saw EOF and closed
        assert plain.recv(10) == b""
        plain.close()
