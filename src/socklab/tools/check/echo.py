"""``socklab check echo``: the probes that tell a correct echo server from the classic broken ones.

Why this exists: an echo server that answers ``hello`` looks finished. The mistakes show only
when TCP does what it is allowed to do - split a message, merge several, deliver 1 MiB in
pieces, half-close, reset - or when a second client arrives. Each probe below provokes one of
those and names the mistake it reveals. Concurrency is judged by events, not by timing: the
second client is answered while the first stays connected, or it is not (an iterative server).

UDP probes: one datagram, boundaries kept, a large datagram, many peers each answered at its own
address, and a peer that vanished before its answer.

Its UDP probes keep raw sockets on purpose (issue 18: clients use :mod:`socklab.runtime.client`),
as the grader's helpers in :mod:`.net` do: a peer that sends, resends after silence and closes
before the answer comes is the system call sequence being graded.
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

from socklab.core.sockets import Endpoint
from socklab.tools.check.net import (
    DONE,
    EOF,
    RESET,
    TIMEOUT,
    Exchange,
    connect,
    diagnose,
    exchange,
    reset_close,
    tcp_state_of_server_side,
)
from socklab.tools.check.report import Probe, ProbeFailed, quote

__all__ = ["CONCURRENT_PROBES", "tcp_probes", "udp_probes"]

# the probes an iterative server fails by design (``--iterative`` leaves them out)
CONCURRENT_PROBES = ("second_client", "idle_client", "concurrent_50")

ITERATIVE = ("the server is iterative: it serves one client until that client leaves and only then "
             "returns to accept()")
ITERATIVE_FIX = "serve each client in its own thread, or watch all sockets with select()/selectors"


def _expect_echo(sock: socket.socket, payload: bytes, timeout: float) -> None:
    failed = diagnose(exchange(sock, payload, len(payload), timeout), payload, timeout)
    if failed is not None:
        raise failed


def tcp_probes(target: Endpoint, timeout: float = 5.0) -> list[Probe]:
    """Every TCP echo probe, in the order they run."""

    def small() -> str:
        with connect(target, timeout) as s:
            _expect_echo(s, b"hello\n", timeout)
            ex = exchange(s, b"again\n", 6, timeout)
            # After a close, the server's kernel answers the second message with RST: read before
            # the FIN or after it (a race), it is the same hang-up.
            if ex.end in (EOF, RESET) and not ex.got:
                raise ProbeFailed("the first message came back, then the server closed the connection "
                                  "before the second", "it answers one recv() and hangs up",
                                  "loop: recv, sendall, until recv() returns b'' (the client closed)")
            failed = diagnose(ex, b"again\n", timeout)
            if failed:
                raise failed
        return "two messages on one connection came back byte-exact"

    def large() -> str:
        payload = os.urandom(1 << 20)
        with connect(target, timeout) as s:
            _expect_echo(s, payload, timeout)
        return "1 MiB of random bytes came back byte-exact"

    def slow_reader() -> str:
        payload = os.urandom(16 << 20)
        with connect(target, timeout) as s:
            ex = exchange(s, payload, len(payload), timeout, slow_reader=True)
        failed = diagnose(ex, payload, timeout)
        if failed:
            if ex.end == TIMEOUT and ex.got:
                failed.mistake = ("bytes were lost while the client was slow to read: the server ignores how "
                                  "much send() took (a non-blocking send() takes only what fits, or raises "
                                  "BlockingIOError) and drops the rest")
                failed.fix = "keep the unsent tail and send it when select() says the socket is writable"
            raise failed
        return "16 MiB sent before reading anything (every buffer full) came back byte-exact"

    def byte_at_a_time() -> str:
        message = b"one byte at a time\n"
        with connect(target, timeout) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            got = b""
            for i in range(len(message)):
                s.sendall(message[i:i + 1])
                # wait (briefly) for the byte's echo, so each byte reaches the server alone
                s.settimeout(0.3)
                try:
                    chunk = s.recv(4096)
                except TimeoutError:
                    chunk = None
                if chunk == b"":
                    break
                got += chunk or b""
            ex = exchange(s, b"", len(message) - len(got), timeout) if len(got) < len(message) else None
        full = Exchange(got + (ex.got if ex else b""), ex.end if ex else DONE)
        failed = diagnose(full, message, timeout)
        if failed:
            if full.end == EOF:
                failed.mistake = ("it treats one recv() as one whole message: when a message arrives in "
                                  "pieces it answers the first piece and hangs up")
            raise failed
        return f"{len(message)} bytes sent with one send() each came back whole"

    def many_in_one() -> str:
        payload = b"".join(b"message %03d\n" % i for i in range(100))
        with connect(target, timeout) as s:
            _expect_echo(s, payload, timeout)
        return "100 messages sent in one segment all came back, in order"

    def binary() -> str:
        payload = bytes(range(256)) * 4 + b"\r\n\x00\xff\xfe"
        with connect(target, timeout) as s:
            _expect_echo(s, payload, timeout)
        return "all 256 byte values (NUL, CR, LF, invalid UTF-8) came back unchanged"

    def second_client() -> str:
        with connect(target, timeout) as first:
            _expect_echo(first, b"first\n", timeout)
            with connect(target, timeout) as second:
                ex = exchange(second, b"second\n", 7, timeout)
                if ex.end == TIMEOUT and not ex.got:
                    first.close()
                    later = exchange(second, b"", 7, timeout)
                    after = " - and answered it only after the first hung up" if later.got else ""
                    raise ProbeFailed(f"a second client got no answer in {timeout:.0f} s while the first "
                                      f"stayed connected{after}", ITERATIVE, ITERATIVE_FIX)
                failed = diagnose(ex, b"second\n", timeout)
                if failed:
                    raise failed
        return "a second client was answered while the first stayed connected"

    def idle_client() -> str:
        with connect(target, timeout) as idle:
            with connect(target, timeout) as other:
                ex = exchange(other, b"not blocked\n", 12, timeout)
                if ex.end == TIMEOUT and not ex.got:
                    raise ProbeFailed(f"while one client sent nothing, another got no answer in {timeout:.0f} s",
                                      "a silent client blocks everyone: the server waits in a blocking recv() "
                                      "on one client (an iterative server, or recv() in the accept loop "
                                      "before the thread starts)", ITERATIVE_FIX)
                failed = diagnose(ex, b"not blocked\n", timeout)
                if failed:
                    raise failed
            del idle
        return "a client that sends nothing did not delay another"

    def concurrent() -> str:
        return _concurrent(target, 50, timeout)

    def half_close() -> str:
        payload = os.urandom(65536)
        with connect(target, timeout) as s:
            ex = exchange(s, payload, len(payload), timeout, shut_after_send=True, until_eof=True)
            if ex.got == payload and ex.end == TIMEOUT:
                state = tcp_state_of_server_side(s)
                seen = f" (the kernel shows the server's socket in {state})" if state else ""
                raise ProbeFailed(f"everything came back, but the server did not close in {timeout:.0f} s "
                                  f"after the client's shutdown(SHUT_WR){seen}",
                                  "the server ignores EOF: recv() returned b'' and it never called close(), "
                                  "so its socket sits in CLOSE_WAIT (and a loop that keeps calling recv() "
                                  "after b'' spins)", "when recv() returns b'', close the connection")
            failed = diagnose(ex if ex.end != EOF or ex.got != payload else Exchange(ex.got, DONE),
                              payload, timeout)
            if failed:
                raise failed
        return "after the client's shutdown(SHUT_WR) all 64 KiB came back, then the server closed"

    def reset() -> str:
        s = connect(target, timeout)
        s.sendall(b"half a message without its newl")
        reset_close(s)
        try:
            with connect(target, timeout) as after:
                ex = exchange(after, b"still there?\n", 13, timeout)
        except ProbeFailed as fail:
            raise ProbeFailed(f"after a client reset its connection, {fail.happened}",
                              "the server crashed on the reset: recv()/send() raised ConnectionResetError "
                              "(or BrokenPipeError) and nothing caught it",
                              "catch OSError around each client's recv/send and drop that client only") from None
        if ex.end in (EOF, "reset") and not ex.got:
            raise ProbeFailed("after a client reset its connection, the next client was cut off unanswered",
                              "the server crashed on the reset: ConnectionResetError not caught",
                              "catch OSError around each client's recv/send and drop that client only")
        failed = diagnose(ex, b"still there?\n", timeout)
        if failed:
            raise failed
        return "a client reset mid-message, and the next client was still served"

    return [
        Probe("small", "two small messages on one connection come back byte-exact", small),
        Probe("byte_at_a_time", "a message sent one byte per segment comes back whole", byte_at_a_time),
        Probe("many_in_one", "100 messages sent in one segment all come back", many_in_one),
        Probe("binary", "binary data (every byte value) comes back unchanged", binary),
        Probe("large", "1 MiB comes back byte-exact", large),
        Probe("slow_reader", "a client that reads only after sending 16 MiB gets it all back", slow_reader),
        Probe("second_client", "a second client is served while the first stays connected", second_client),
        Probe("idle_client", "a client that sends nothing does not block others", idle_client),
        Probe("concurrent_50", "50 clients connected at once are all served", concurrent),
        Probe("half_close", "after the client's shutdown(SHUT_WR): all data back, then the server closes",
              half_close),
        Probe("reset", "a client that resets mid-message does not stop the server", reset),
    ]


def _concurrent(target: Endpoint, n: int, timeout: float) -> str:
    socks: list[socket.socket] = []
    deadline = time.monotonic() + 2 * timeout
    try:
        for _ in range(n):
            if time.monotonic() > deadline:
                raise ProbeFailed(f"only {len(socks)} of {n} clients could connect in {2 * timeout:.0f} s",
                                  "the accept queue is full: the server is not calling accept() while it "
                                  "serves other clients", ITERATIVE_FIX)
            try:
                socks.append(connect(target, timeout))
            except ProbeFailed as fail:
                raise ProbeFailed(f"only {len(socks)} of {n} clients could connect: {fail.happened}",
                                  ITERATIVE + " - the others wait in the accept queue until it is full",
                                  ITERATIVE_FIX) from None
        pending = {s: b"client %02d says hi\n" % i for i, s in enumerate(socks)}
        got = {s: b"" for s in socks}
        with selectors.DefaultSelector() as sel:
            for s, msg in pending.items():
                s.sendall(msg)
                sel.register(s, selectors.EVENT_READ)
            while pending and time.monotonic() < deadline:
                for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                    s = key.fileobj  # type: ignore[assignment]
                    assert isinstance(s, socket.socket)
                    try:
                        chunk = s.recv(4096)
                    except OSError:
                        chunk = b""
                    got[s] += chunk
                    if not chunk or len(got[s]) >= len(pending[s]):
                        sel.unregister(s)
                        if got[s] != pending.pop(s):
                            raise ProbeFailed(f"client got {quote(got[s])} instead of its own message",
                                              "replies go to the wrong client (a shared buffer or a global "
                                              "'current connection')", "keep each client's socket and data local "
                                              "to the code serving it")
        served = n - len(pending)
        if pending:
            mistake = ITERATIVE if served <= 1 else (f"the server serves at most about {served} clients at "
                                                      "once (a fixed pool, or a small select() set)")
            raise ProbeFailed(f"{served} of {n} clients connected at once were answered within "
                              f"{2 * timeout:.0f} s", mistake, ITERATIVE_FIX)
        return f"{n} clients connected at once were all answered"
    finally:
        for s in socks:
            s.close()


def _udp_socket(target: Endpoint) -> tuple[socket.socket, Any]:
    family, _, _, _, addr = socket.getaddrinfo(target.host, target.port, 0, socket.SOCK_DGRAM)[0]
    s = socket.socket(family, socket.SOCK_DGRAM)
    return s, addr


def _udp_ask(s: socket.socket, addr: Any, payload: bytes, timeout: float, tries: int = 3) -> bytes:
    """Send a datagram (again after each silence, UDP may lose it) and return the first reply."""
    s.settimeout(timeout / tries)
    for _ in range(tries):
        s.sendto(payload, addr)
        try:
            return s.recvfrom(65536)[0]
        except TimeoutError:
            continue
        except ConnectionRefusedError:
            raise ProbeFailed("the datagram was refused (ICMP port unreachable): nothing listens on that "
                              "UDP port", "the server is not running, listens on TCP, or crashed earlier",
                              "start the UDP server (SOCK_DGRAM) and give its port") from None
    raise ProbeFailed(f"no reply in {timeout:.0f} s ({tries} tries)", "the server does not answer: it replies "
                      "to another address than recvfrom() returned, or never calls sendto()",
                      "data, addr = sock.recvfrom(65535); sock.sendto(data, addr)")


def udp_probes(target: Endpoint, timeout: float = 5.0) -> list[Probe]:
    """Every UDP echo probe, in the order they run."""

    def _check(got: bytes, payload: bytes) -> None:
        if got != payload:
            if len(got) < len(payload) and payload.startswith(got):
                raise ProbeFailed(f"a {len(payload)}-byte datagram came back as {len(got)} bytes",
                                  f"recvfrom({len(got)}) is too small: the kernel silently discards the rest of "
                                  "a datagram that does not fit", "recvfrom(65535)")
            raise ProbeFailed(f"sent {quote(payload[:40])}, got {quote(got[:40])}",
                              "the server changes the data or answers another datagram",
                              "send back exactly what recvfrom() returned, to the address it returned")

    def one() -> str:
        s, addr = _udp_socket(target)
        with s:
            _check(_udp_ask(s, addr, b"ping 1", timeout), b"ping 1")
        return "a datagram came back to its sender"

    def boundaries() -> str:
        s, addr = _udp_socket(target)
        sizes = [1, 300, 5]
        with s:
            _udp_ask(s, addr, b"warm-up", timeout)
            sent = [bytes([65 + i]) * n for i, n in enumerate(sizes)]
            for d in sent:
                s.sendto(d, addr)
            got = []
            s.settimeout(timeout)
            try:
                for _ in sent:
                    got.append(s.recvfrom(65536)[0])
            except TimeoutError:
                pass
        if sorted(got) != sorted(sent):
            raise ProbeFailed(f"3 datagrams of {sizes} bytes came back as {[len(g) for g in got]} bytes",
                              "datagram boundaries were not kept: the server joins or splits datagrams "
                              "(a buffer shared between datagrams, or a stream-style loop)",
                              "answer each recvfrom() with exactly one sendto()")
        return "3 datagrams came back as 3 datagrams, sizes kept"

    def large() -> str:
        payload = os.urandom(60000)
        s, addr = _udp_socket(target)
        with s:
            _check(_udp_ask(s, addr, payload, timeout), payload)
        return "a 60,000-byte datagram came back whole"

    def many_peers() -> str:
        peers = [_udp_socket(target) for _ in range(20)]
        try:
            for i, (s, addr) in enumerate(peers):
                try:
                    got = _udp_ask(s, addr, b"peer %02d" % i, timeout)
                except ProbeFailed as fail:
                    if "refused" in fail.happened:
                        raise
                    raise ProbeFailed(f"peer {i} of 20 (a new socket) got no reply in {timeout:.0f} s",
                                      "replies go to another address than the sender's: the server remembers a "
                                      "peer (the first one, or a 'current client') instead of answering the "
                                      "address recvfrom() returned with this datagram",
                                      "data, addr = sock.recvfrom(65535); sock.sendto(data, addr)") from None
                if got != b"peer %02d" % i:
                    raise ProbeFailed(f"peer {i} got {quote(got)}", "replies go to the wrong peer",
                                      "reply to the address recvfrom() returned with this datagram")
            extra = []
            for i, (s, _) in enumerate(peers):
                s.setblocking(False)
                try:
                    extra.append((i, s.recv(65536)))
                except BlockingIOError:
                    pass
            if extra:
                raise ProbeFailed(f"peer {extra[0][0]} received {quote(extra[0][1])} it did not ask for",
                                  "the server replies to peers that did not send (it keeps a list of "
                                  "addresses and sends to all, or to the first one)",
                                  "an echo answers only the sender of each datagram")
        finally:
            for s, _ in peers:
                s.close()
        return "20 peers each got their own answer, and only that"

    def vanished_peer() -> str:
        gone, addr = _udp_socket(target)
        gone.sendto(b"answer me when I am gone", addr)
        gone.close()
        s, addr = _udp_socket(target)
        with s:
            try:
                _check(_udp_ask(s, addr, b"and me?", timeout), b"and me?")
            except ProbeFailed as fail:
                raise ProbeFailed(f"after a peer vanished, {fail.happened}",
                                  "the server crashed or stopped when a reply could not be delivered "
                                  "(ConnectionRefusedError from a connect()ed UDP socket)",
                                  "use one unconnected socket with sendto(), and catch OSError around it") from None
        return "a peer that vanished before its answer did not stop the server"

    probes: list[tuple[str, str, Callable[[], str]]] = [
        ("one", "a datagram comes back to its sender", one),
        ("boundaries", "datagram boundaries are kept", boundaries),
        ("large", "a 60,000-byte datagram comes back whole", large),
        ("many_peers", "20 peers each get their own answer at their own address", many_peers),
        ("vanished_peer", "a peer that leaves before its answer does not stop the server", vanished_peer),
    ]
    return [Probe(n, t, f) for n, t, f in probes]
