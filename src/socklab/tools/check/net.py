"""The grader's socket helpers: every wait has a deadline, every outcome has a name.

Why this exists: a grader that talks to a broken server must never hang and must say what it saw.
:func:`exchange` sends a payload and collects the reply at the same time (a server that echoes
1 MiB while the client is not reading would fill both socket buffers and deadlock otherwise) and
ends in one of four named outcomes; :func:`diagnose` turns a short or wrong reply into the
mistake that usually causes it. Deadlines are generous (the verdict must not depend on how busy
the machine is): they matter only when something is broken.

These helpers keep raw sockets on purpose (issue 18: clients use :mod:`socklab.runtime.client`): a
grader's probe is the raw call itself - a half-written request, a reset, a deadline per recv - which
no engine is meant to make.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import struct
import time
from dataclasses import dataclass

from socklab.core.sockets import Endpoint
from socklab.tools.check.report import ProbeFailed, quote

__all__ = ["Exchange", "connect", "diagnose", "exchange", "reset_close", "tcp_state_of_server_side"]

DONE, EOF, RESET, TIMEOUT = "done", "eof", "reset", "timeout"
TOTAL_FACTOR = 12  # an exchange never lasts longer than this many progress timeouts


@dataclass(frozen=True)
class Exchange:
    """What came back: the bytes, and how it ended (done, eof, reset or timeout)."""

    got: bytes
    end: str


def connect(target: Endpoint, timeout: float, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A connected socket, or ProbeFailed saying why not (refused, timed out, unreachable)."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, 0, kind)
    except socket.gaierror as exc:
        raise ProbeFailed(f"{target.host} does not resolve ({exc.strerror})", "a wrong host name",
                          "give the address the server listens on, e.g. 127.0.0.1:7007") from exc
    family, socktype, proto, _, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    sock.settimeout(timeout)
    try:
        sock.connect(addr)
    except ConnectionRefusedError:
        sock.close()
        raise ProbeFailed(f"connection refused: nothing listens on {target}",
                          "the server is not running, listens on another port or address, "
                          "or crashed during an earlier probe",
                          "start it, give its port, and read its terminal for a traceback") from None
    except (TimeoutError, OSError) as exc:
        sock.close()
        raise ProbeFailed(f"connect to {target} did not complete in {timeout:.0f} s ({exc})",
                          "the server's accept queue is full: it has stopped calling accept()",
                          "return to accept() promptly (serve each client in a thread or with select)") from None
    sock.settimeout(None)
    return sock


def exchange(sock: socket.socket, payload: bytes, want: int, timeout: float, *,
             shut_after_send: bool = False, until_eof: bool = False, slow_reader: bool = False) -> Exchange:
    """Send ``payload`` while reading; stop at ``want`` bytes (or EOF when ``until_eof``).

    ``timeout`` bounds each wait for progress, so a large transfer may take longer in total but a
    stalled one ends ``timeout`` seconds after the last byte moved; and the whole exchange ends
    after ``12 * timeout`` (a server that trickles or streams forever). ``slow_reader``: first send
    without reading until the socket stays full for a second (every buffer on the way is full
    then, so the server's own sends cannot complete), then read as usual.
    """
    sock.setblocking(False)
    got = bytearray()
    sent = 0
    if slow_reader:
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_WRITE)
            while sent < len(payload) and sel.select(1.0):
                try:
                    sent += sock.send(payload[sent:sent + 65536])
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    return Exchange(b"", RESET)
        payload = payload[sent:]
        sent = 0
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if payload else 0))
        if not payload and shut_after_send and not _shutdown(sock):
            return Exchange(b"", RESET)
        deadline = time.monotonic() + TOTAL_FACTOR * timeout
        while until_eof or len(got) < want:
            events = sel.select(min(timeout, max(0.0, deadline - time.monotonic())))
            if not events:
                return Exchange(bytes(got), TIMEOUT)
            _, mask = events[0]
            if mask & selectors.EVENT_WRITE and sent < len(payload):
                try:
                    sent += sock.send(payload[sent:sent + 65536])
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    return Exchange(bytes(got), RESET)
                if sent == len(payload):
                    sel.modify(sock, selectors.EVENT_READ)
                    if shut_after_send and not _shutdown(sock):
                        return Exchange(bytes(got), RESET)
            if mask & selectors.EVENT_READ:
                try:
                    chunk = sock.recv(262144)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    return Exchange(bytes(got), RESET)
                if not chunk:
                    return Exchange(bytes(got), EOF)
                got += chunk
                if len(got) > want + 65536:  # far more than was sent: enough to judge, and memory bounded
                    return Exchange(bytes(got), DONE)
    return Exchange(bytes(got), DONE)


def _shutdown(sock: socket.socket) -> bool:
    """shutdown(SHUT_WR); False when the connection is already gone (the server reset or closed it)."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return False
    return True


def reset_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN (a client that vanished)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def diagnose(ex: Exchange, expected: bytes, timeout: float) -> ProbeFailed | None:
    """None when ``ex.got == expected``; otherwise the failure that explains the difference."""
    got, n = ex.got, len(expected)
    if got == expected:
        return None
    for i, (a, b) in enumerate(zip(got, expected, strict=False)):
        if a != b:
            return ProbeFailed(f"the bytes came back changed at offset {i}: sent {quote(expected[i:i + 20])}, "
                               f"got {quote(got[i:i + 20])}",
                               "the server transforms the data (decode/encode, strip(), upper(), adds a "
                               "newline) or sends another buffer than the one recv() filled",
                               "send back exactly the bytes recv() returned, unchanged")
    if len(got) > n:
        return ProbeFailed(f"{len(got)} bytes came back for {n} sent (extra {quote(got[n:])})",
                           "the server adds to what it echoes (a prompt, a newline, a greeting)",
                           "an echo server sends back exactly what it received, nothing more")
    k = len(got)
    if ex.end == EOF and k == 0:
        return ProbeFailed("the server closed the connection without sending anything back",
                           "it closes (or crashes) before echoing: a traceback in its terminal, or a close() "
                           "in the wrong place", "loop: data = recv(); if not data: break; sendall(data)")
    if ex.end == EOF:
        return ProbeFailed(f"only {k} of {n} bytes came back, then the server closed the connection",
                           "it answers one recv() and hangs up: one recv() is not one message, TCP is a "
                           "byte stream and a message can arrive in pieces (or several in one piece)",
                           "keep calling recv() and echoing each chunk until recv() returns b''")
    if ex.end == RESET:
        return ProbeFailed(f"the connection was reset (RST) after {k} of {n} bytes came back",
                           "the server closed its socket while data was still arriving (close() with unread "
                           "bytes sends RST): it stops reading too early - it answers one recv() and hangs up, "
                           "or it crashed", "keep reading until recv() returns b'' before you close()")
    if k == 0:
        return ProbeFailed(f"nothing came back within {timeout:.0f} s",
                           "the server never sends what it receives, or waits for more than was sent "
                           "(recv in a loop until the client closes, a fixed-size read, a readline() "
                           "waiting for a newline)", "send back each chunk as soon as recv() returns it")
    return ProbeFailed(f"only {k} of {n} bytes came back; the rest never did (waited {timeout:.0f} s)",
                       "the server echoes only part of what arrives: send() instead of sendall() (send may "
                       "send less and returns how much), or one recv() per message and the rest dropped",
                       "use sendall(), and loop on recv() for everything the client sends")


_TCP_STATE_NAMES = {"08": "CLOSE_WAIT", "01": "ESTABLISHED", "06": "TIME_WAIT", "09": "LAST_ACK"}


def tcp_state_of_server_side(client: socket.socket) -> str | None:
    """The server's end of ``client``'s connection as the kernel sees it (Linux, same machine), or None."""
    try:
        lport = client.getsockname()[1]
        pport = client.getpeername()[1]
    except OSError:
        return None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table, encoding="ascii") as fh:
            next(fh, None)
            for line in fh:
                fields = line.split()
                local, remote, state = fields[1], fields[2], fields[3]
                if int(local.rsplit(":", 1)[1], 16) == pport and int(remote.rsplit(":", 1)[1], 16) == lport:
                    return _TCP_STATE_NAMES.get(state, state)
    return None


def deadline_left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
