"""The warm-up every contender gets before it is measured, for benchmarks driven from Python.

Why this exists (issue 19): a plain asyncio server reads every message into a fresh 256 KiB
block until it has met one EOF; the first EOF frees the whole block and glibc raises its mmap
threshold for the rest of the process, making the server ~3x faster. Every real server meets such
a connection within seconds, so a fair benchmark gives it to every server alike before measuring.
The C generators do this themselves (``loadgen``, ``udp_loadgen``, ``tls_loadgen``: see their
headers); scripts that drive servers with other clients (wrk, curl, a Python client) call these.

It owns raw sockets because the warm-up must be the same bare connect/close (and empty datagram)
for every contender, socklab's servers and the plain references alike.
"""

from __future__ import annotations

import socket

__all__ = ["warm_tcp", "warm_udp"]


def warm_tcp(host: str, port: int, timeout: float = 5.0) -> str:
    """Open a connection, send nothing, close our side; wait until the server closes its own.

    Returns:
        ``"closed by server"`` (it handled the EOF), ``"reset by server"``, or
        ``"server kept it open"`` (no close within ``timeout`` seconds).
    """
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.shutdown(socket.SHUT_WR)
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            return "reset by server"
        except TimeoutError:
            return "server kept it open"
    return "closed by server"


def warm_udp(host: str, port: int, timeout: float = 5.0) -> str:
    """Send an empty datagram, then a 16-byte one; wait for the 16-byte echo.

    Returns:
        ``"echoed"`` if the empty datagram came back first, ``"dropped"`` if only the 16-byte one
        did (the server handled the empty one: a socket's datagrams arrive in order on loopback),
        ``"no reply"`` if nothing came back within ``timeout``.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        s.send(b"")
        s.send(b"warm-up 16 bytes")
        empty_back = False
        try:
            while True:
                data = s.recv(65536)
                if data:
                    return "echoed" if empty_back else "dropped"
                empty_back = True
        except TimeoutError:
            return "no reply"
