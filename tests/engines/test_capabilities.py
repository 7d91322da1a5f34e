"""Transport capabilities instead of socket escapes (issue 18 part 4), on every engine.

``detach`` hands the socket over (netcat's ``--exec``), ``sendfile`` sends a file (the kernel's
``sendfile`` on the reactor, read + write elsewhere), ``set_cork`` / ``set_recv_lowat`` set
socket options where the engine has a socket, and TLS falls back.
"""

from __future__ import annotations

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
