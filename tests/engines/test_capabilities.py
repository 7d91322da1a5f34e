"""Transport capabilities instead of socket escapes (issue 18 part 4), on every engine.

``detach`` hands the socket over (netcat's ``--exec``), ``sendfile`` sends a file (the kernel's
``sendfile`` on the reactor, read + write elsewhere), ``set_cork`` / ``set_recv_lowat`` set
socket options where the engine has a socket, and TLS falls back.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from socklab.core.protocol import Protocol
from tests.conftest import running_server

pytestmark = pytest.mark.timeout(60)


def _read_all(sock: socket.socket) -> bytes:
    out = bytearray()
    while chunk := sock.recv(65536):
        out += chunk
    return bytes(out)


class _Detacher(Protocol):
    lost: list[BaseException | None]

    def __init__(self, lost: list[BaseException | None]) -> None:
        self.lost = lost

    def connection_made(self, transport: Any) -> None:
        sock = transport.detach()
        with sock:
            assert sock.gettimeout() is None  # blocking: ready for a child process
            sock.sendall(b"handed over\n")
            sock.shutdown(socket.SHUT_WR)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


def test_detach_hands_the_socket_over(engine: str) -> None:
    lost: list[BaseException | None] = []
    with running_server(lambda: _Detacher(lost), engine) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
        assert _read_all(c) == b"handed over\n"
    assert lost == [None]  # connection_lost once, without an error


class _FileSender(Protocol):
    def __init__(self, path: Path, options: dict[str, bool]) -> None:
        self.path, self.options = path, options

    def connection_made(self, transport: Any) -> None:
        self.options["cork"] = transport.set_cork(True)
        self.options["lowat"] = transport.set_recv_lowat(4)
        size = self.path.stat().st_size
        with self.path.open("rb") as f:
            offset = 0
            while offset < size:
                n = transport.sendfile(f, offset, size - offset)
                assert n > 0  # 200 KB fits the loopback socket buffer: never "full" here
                offset += n
        transport.set_cork(False)
        transport.close()


def test_sendfile_and_socket_options(engine: str, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    options: dict[str, bool] = {}
    with running_server(lambda: _FileSender(path, options), engine) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        assert _read_all(c) == data
    assert options == {"cork": True, "lowat": True}


def test_sendfile_past_the_end_of_the_file_says_so(engine: str, tmp_path: Path) -> None:
    path = tmp_path / "short.bin"
    path.write_bytes(b"abc")
    errors: list[BaseException] = []
    done = threading.Event()

    class Short(Protocol):
        def connection_made(self, transport: Any) -> None:
            with path.open("rb") as f:
                try:
                    transport.sendfile(f, 3, 10)
                except EOFError as exc:
                    errors.append(exc)
            done.set()
            transport.close()

    with running_server(Short, engine) as srv, socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
        assert _read_all(c) == b""
        assert done.wait(10)
    assert len(errors) == 1


def test_tls_falls_back(engine: str, tmp_path: Path, tls_files: dict[str, str]) -> None:
    import ssl

    data = os.urandom(100_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    options: dict[str, bool] = {}
    with running_server(lambda: _FileSender(path, options), engine, tls_cert=tls_files["cert"],
                        tls_key=tls_files["key"]) as srv:
        ctx = ssl.create_default_context(cafile=tls_files["ca"])
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as c:
            got = bytearray()
            try:
                while chunk := c.recv(65536):
                    got += chunk
            except ssl.SSLError:
                pass
            assert bytes(got) == data  # plaintext: sendfile fell back to read + write through TLS
    assert options["lowat"] is False  # a plaintext byte count means nothing to the ciphertext socket


# ---- set_buffer_sizes: SO_RCVBUF / SO_SNDBUF without the raw socket (tftp sizes its window with it) ----
# Linux's defaults are at most rmem_max / wmem_max (212,992 B unless raised), and setsockopt is capped
# there *before* the kernel doubles it: asking for up to twice the cap is granted whatever the machine.
_CAP = min(int(Path("/proc/sys/net/core/rmem_max").read_text()), int(Path("/proc/sys/net/core/wmem_max").read_text()))
_WANT = min(2 * _CAP, 400_000)


class _Sizer:
    """Records what ``set_buffer_sizes`` answered on its transport, and the socket's own view."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, int] | None] = []
        self.kernel: tuple[int, int] | None = None
        self.done = threading.Event()

    def size(self, transport: Any) -> None:
        try:
            self.answers.append(transport.set_buffer_sizes(rcvbuf=_WANT, sndbuf=_WANT))
            self.answers.append(transport.set_buffer_sizes(rcvbuf=1024, sndbuf=1024))  # never shrinks
            self.answers.append(transport.set_buffer_sizes())  # only asks
            self.answers.append(transport.set_buffer_sizes(rcvbuf=8 * _CAP))  # capped: no error
            sock = transport.get_extra_info("socket")  # the test checks the kernel itself; apps do not
            self.kernel = (sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                           sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
        finally:
            self.done.set()

    def check(self) -> None:
        assert self.done.wait(10)
        first, again, asked, capped = self.answers
        assert first is not None and first[0] >= _WANT and first[1] >= _WANT, first
        assert again == first and asked == first, self.answers
        assert capped is not None and first[0] <= capped[0] <= 2 * _CAP and capped[1] == first[1], capped
        assert self.kernel == capped, (self.kernel, capped)


def test_set_buffer_sizes_on_a_datagram_endpoint(engine: str) -> None:
    from socklab.core.protocol import DatagramProtocol

    sizer = _Sizer()

    class Sized(DatagramProtocol):
        def connection_made(self, transport: Any) -> None:
            sizer.size(transport)

    with running_server(Sized, engine, udp=True):
        sizer.check()


def test_set_buffer_sizes_on_a_stream(engine: str) -> None:
    sizer = _Sizer()

    class Sized(Protocol):
        def connection_made(self, transport: Any) -> None:
            sizer.size(transport)
            transport.close()

    with running_server(Sized, engine) as srv, socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
        assert _read_all(c) == b""
        sizer.check()


def test_set_buffer_sizes_through_tls(engine: str, tls_files: dict[str, str]) -> None:
    import ssl

    sizer = _Sizer()

    class Sized(Protocol):
        def connection_made(self, transport: Any) -> None:
            sizer.size(transport)
            transport.write(b"sized\n")
            transport.close()

    with running_server(Sized, engine, tls_cert=tls_files["cert"], tls_key=tls_files["key"]) as srv:
        ctx = ssl.create_default_context(cafile=tls_files["ca"])
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as c:
            assert c.recv(100) == b"sized\n"
        sizer.check()


def test_set_buffer_sizes_after_close_says_nothing(engine: str) -> None:
    answers: list[Any] = []
    done = threading.Event()

    class Aborter(Protocol):
        def connection_made(self, transport: Any) -> None:
            self.t = transport
            transport.abort()

        def connection_lost(self, exc: BaseException | None) -> None:
            answers.append(self.t.set_buffer_sizes(rcvbuf=_WANT))
            done.set()

    with running_server(Aborter, engine) as srv, socket.socket() as c:
        c.settimeout(10)
        with contextlib.suppress(ConnectionResetError):  # the RST may beat connect()'s return
            c.connect(("127.0.0.1", srv.port))
            c.recv(10)
        assert done.wait(10)
    assert answers == [None]
