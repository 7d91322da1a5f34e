"""A ``--unix`` server removes its socket file at shutdown, and "in use" is explained for Unix (issue 15).

Before the fix the file stayed on disk after a graceful shutdown, and a bind to a path in use
talked about TIME_WAIT and ``ss --port``, neither of which applies to a Unix socket.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from socklab.apps.echo.protocol import EchoProtocol
from socklab.core.errors import AddressInUse
from socklab.core.settings import ServerSettings
from socklab.runtime import Server

pytestmark = pytest.mark.timeout(60)


def _serve(path: str, engine: str = "epoll") -> Server:
    srv = Server(ServerSettings(engine=engine, unix=path))
    srv.listen(EchoProtocol)
    srv.start()
    return srv


def _listen_only(path: str) -> None:
    srv = Server(ServerSettings(unix=path))
    try:
        srv.listen(EchoProtocol)
    finally:
        srv.close()


def _talk(path: str) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(10)
        c.connect(path)
        c.sendall(b"ping")
        return c.recv(10)


@pytest.mark.parametrize("engine", ["threads", "epoll", "asyncio"])
def test_the_socket_file_is_removed_after_a_graceful_shutdown(tmp_path: Path, engine: str) -> None:
    path = str(tmp_path / "echo.sock")
    srv = _serve(path, engine)
    try:
        assert _talk(path) == b"ping"
        assert os.path.exists(path)
    finally:
        srv.shutdown(timeout=2)
    assert not os.path.lexists(path)


def test_a_file_that_replaced_ours_is_left_alone(tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")
    srv = _serve(path)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.unlink(path)  # someone removed our file and bound their own socket there
        other.bind(path)
        other.listen()
    finally:
        srv.shutdown(timeout=2)
    try:
        assert os.path.lexists(path), "the server removed a socket file it did not create"
    finally:
        other.close()


def test_cli_serve_unix_leaves_no_file_after_sigterm(spawn: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "cli.sock")
    srv = spawn("echo", "serve", "--unix", path)
    srv.wait_for("listening")
    assert _talk(path) == b"ping"
    assert srv.stop(signal.SIGTERM) == 0
    assert not os.path.lexists(path)


def test_a_unix_path_in_use_is_explained_for_unix(tmp_path: Path) -> None:
    path = str(tmp_path / "busy.sock")
    holder = _serve(path)
    try:
        with pytest.raises(AddressInUse) as info:
            _listen_only(path)
        message = str(info.value)
        assert "\n" not in message
        assert "TIME_WAIT" not in message and "--port" not in message
        assert "listening on this socket file" in message and f"rm {path}" in message
        assert _talk(path) == b"ping"  # and the running server's file was not touched
    finally:
        holder.shutdown(timeout=2)


def test_a_path_that_is_not_a_socket_is_named(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    with pytest.raises(AddressInUse, match="exists and is not a socket"):
        _listen_only(str(path))
    assert path.read_text() == "keep me"


def test_a_stale_socket_file_is_still_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # a crashed server's leftover: nobody listens
    srv = _serve(path)
    try:
        assert _talk(path) == b"ping"
    finally:
        srv.shutdown(timeout=2)
