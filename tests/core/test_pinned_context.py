"""``pinned_client_context(pin)`` checks the pin inside every handshake made with it (issue 17).

A client handed the context cannot forget the check: a blocking ``wrap_socket``, asyncio's and
uvloop's TLS (``wrap_bio``) all fail the handshake with ``PinMismatch`` for another certificate,
before any application byte is sent, and talk to the pinned one with no CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from socklab.core.selfsigned import PinMismatch, SelfSigned, pinned_client_context, self_signed_context

pytestmark = pytest.mark.timeout(60)
WAIT = 20.0


@contextlib.contextmanager
def tls_server() -> Iterator[tuple[int, SelfSigned, list[bytes]]]:
    """A blocking TLS server for two clients: greets each, records what it sent."""
    ctx, cert = self_signed_context()
    got: list[bytes] = []
    lst = socket.create_server(("127.0.0.1", 0))
    lst.settimeout(WAIT)

    def serve() -> None:
        for _ in range(2):  # the pinned client, then the one with the wrong pin
            try:
                conn, _ = lst.accept()
            except OSError:
                return
            with contextlib.suppress(OSError), ctx.wrap_socket(conn, server_side=True) as t:
                t.settimeout(WAIT)
                t.sendall(b"hi\n")
                got.append(t.recv(100))

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        yield lst.getsockname()[1], cert, got
    finally:
        th.join(WAIT)
        lst.close()


def _blocking(port: int, pin: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw, \
            pinned_client_context(pin).wrap_socket(raw) as tls:
        data = tls.recv(10)
        tls.sendall(b"secret\n")
        return data


def _loop(run: Callable[[Any], Any]) -> Callable[[int, str], bytes]:
    def client(port: int, pin: str) -> bytes:
        async def talk() -> bytes:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=pinned_client_context(pin),
                                                               server_hostname="127.0.0.1")
            except PinMismatch:
                for _ in range(3):  # let the loop run the transport's close before run() closes the loop
                    await asyncio.sleep(0)
                raise
            data = await reader.readline()
            writer.write(b"secret\n")
            await writer.drain()
            writer.close()
            with contextlib.suppress(OSError):  # (ssl: the server may close without close_notify)
                await writer.wait_closed()
            return data
        return bytes(run(asyncio.wait_for(talk(), WAIT)))
    return client


def _uvloop_run(coro: Any) -> Any:
    import uvloop

    return uvloop.run(coro)


@pytest.mark.parametrize("client", [_blocking, _loop(asyncio.run), _loop(_uvloop_run)],
                         ids=["wrap_socket", "asyncio", "uvloop"])
def test_the_pin_is_checked_in_the_handshake(client: Callable[[int, str], bytes]) -> None:
    with tls_server() as (port, cert, got):
        assert client(port, cert.fingerprint) == b"hi\n"
        wrong = ("11" if cert.fingerprint.startswith("00") else "00") + cert.fingerprint[2:]
        with pytest.raises(PinMismatch, match="not the pinned one") as info:
            client(port, wrong)
        assert isinstance(info.value, ssl.SSLError)  # what TLS stacks expect from a handshake
        assert cert.fingerprint in str(info.value)
    assert b"secret\n" in got and len([g for g in got if g]) == 1  # nothing sent to the wrong one
