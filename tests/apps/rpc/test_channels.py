"""The channels under load: the engine owns each connection, any thread may send.

A TLS connection must not be read on one thread while another writes it, so the TCP and
WebSocket channels leave the connection to their engine's thread and senders queue their bytes.
These tests hammer tls:// and wss:// connections from several threads while the server answers
(and, for the raw channel, pushes notifications of its own), check that every answer arrives
intact, that a server which stops reading blocks senders instead of growing a queue without
bound, and that close() works from any thread with ``on_lost`` reported once.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from socklab import rpc
from socklab.apps.rpc.channels import TcpChannel, parse_url, tls_context
from socklab.apps.rpc.settings import RpcClientSettings
from socklab.core.errors import BrokenError, ClosedError, OperationTimeout
from socklab.core.protocol import Protocol
from socklab.core.settings import ServerSettings
from socklab.core.transport import Transport
from socklab.runtime import Server

from .helpers import rpc_server

THREADS = 6
CALLS = 60  # per thread
SIZES = (3, 700, 17_000, 70_000)  # a TLS record holds 16 KiB: the larger ones span several


def payload(thread: int, i: int) -> str:
    return f"t{thread}-c{i}-" + "x" * SIZES[(thread + i) % len(SIZES)]


def run_threads(target: Any) -> None:
    errors: list[BaseException] = []

    def guarded(n: int) -> None:
        try:
            target(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    assert not any(t.is_alive() for t in threads), "a sender hung"
    assert not errors, errors


@pytest.mark.parametrize("scheme", ["tls", "wss"])
def test_many_threads_share_a_tls_client(tls_files: dict[str, str], scheme: str) -> None:
    listen = {"tls": "tls://127.0.0.1:0", "wss": "wss://127.0.0.1:0/ws"}[scheme]
    with rpc_server(listen=(listen,), tls_cert=tls_files["cert"], tls_key=tls_files["key"]) as rs, \
            rpc.connect(rs.urls[0], timeout=30, cafile=tls_files["ca"]) as client:

        def hammer(n: int) -> None:
            for i in range(CALLS):
                value = payload(n, i)
                if i % 3 == 0:  # several in flight from this thread, answered in any order
                    futures = [(value + str(k), client.submit("echo", value + str(k))) for k in range(4)]
                    for sent, fut in futures:
                        assert fut.result(30) == sent
                elif i % 3 == 1:
                    client.notify("update", value)
                    assert client.call("async_sleep", (i % 5) / 1000) == (i % 5) / 1000
                else:
                    assert client.echo(value) == value

        run_threads(hammer)
        assert client.connections == 1  # nothing was lost on the way


class PushingEcho(Protocol):
    """Answers each ndjson request with its params, and pushes notifications of its own meanwhile."""

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self.buf = b""
        self.pushed = 0
        self.timer = transport.call_later(0.001, self.push)

    def push(self) -> None:
        if self.pushed < 300:
            self.pushed += 1
            self.transport.write(json.dumps({"jsonrpc": "2.0", "method": "tick",
                                             "params": [self.pushed, "y" * 5000]}).encode() + b"\n")
            self.timer = self.transport.call_later(0.001, self.push)

    def data_received(self, data: bytes) -> None:
        *lines, self.buf = (self.buf + data).split(b"\n")
        for line in lines:
            req = json.loads(line)
            if req["id"] % 2:  # a notification in front of every other answer
                self.transport.write(b'{"jsonrpc": "2.0", "method": "note", "params": [%d]}\n' % req["id"])
            self.transport.write(json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": req["params"]}).encode()
                                 + b"\n")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.timer.cancel()


@pytest.fixture
def pushing_server(tls_files: dict[str, str]) -> Iterator[Server]:
    srv = Server(ServerSettings(engine="epoll", tls_cert=tls_files["cert"], tls_key=tls_files["key"]), label="test")
    srv.listen(PushingEcho, host="127.0.0.1", port=0, tls=True)
    srv.start()
    try:
        yield srv
    finally:
        srv.shutdown(2)


def test_tls_channel_hammered_while_the_server_pushes(pushing_server: Server, tls_files: dict[str, str]) -> None:
    total = THREADS * CALLS
    answers: dict[int, Any] = {}
    notes: list[Any] = []
    lost: list[BaseException] = []
    done = threading.Event()

    def on_message(data: bytes) -> None:  # the owner thread: no lock needed for these
        msg = json.loads(data)
        if "id" not in msg:
            notes.append(msg)
            return
        assert msg["id"] not in answers
        answers[msg["id"]] = msg["result"]
        if len(answers) == total:
            done.set()

    ch = TcpChannel(parse_url(f"tls://127.0.0.1:{pushing_server.port}"), on_message, lost.append,
                    ssl_context=tls_context(tls_files["ca"]))
    try:
        def hammer(n: int) -> None:
            for i in range(CALLS):
                ident = n * CALLS + i
                ch.send(json.dumps({"jsonrpc": "2.0", "id": ident, "method": "echo",
                                    "params": [payload(n, i)]}).encode(), 30)

        run_threads(hammer)
        assert done.wait(30), f"{total - len(answers)} answers never arrived"
        assert answers == {n * CALLS + i: [payload(n, i)] for n in range(THREADS) for i in range(CALLS)}
        assert sum(1 for m in notes if m["method"] == "note") == total // 2
        assert not lost
    finally:
        ch.close()
    assert len(lost) == 1 and isinstance(lost[0], ClosedError)
    assert ch.done.is_set()  # the connection ended before close() returned


def test_close_from_a_callback_reports_lost_once(pushing_server: Server, tls_files: dict[str, str]) -> None:
    lost: list[BaseException] = []
    got, made = threading.Event(), threading.Event()
    ch: TcpChannel

    def on_message(data: bytes) -> None:
        # The server pushes at once: this can run before the constructor below has returned
        # (the owner thread starts inside it), so wait until ``ch`` exists.
        assert made.wait(10)
        ch.close()  # on the owner thread: must not wait for itself
        got.set()

    ch = TcpChannel(parse_url(f"tls://127.0.0.1:{pushing_server.port}"), on_message, lost.append,
                    ssl_context=tls_context(tls_files["ca"]))
    made.set()
    assert got.wait(10)
    assert ch.done.wait(10)  # closed from its own callback: the connection still ended
    ch.close()  # again, from another thread: nothing more happens
    assert len(lost) == 1 and isinstance(lost[0], ClosedError)
    with pytest.raises(ClosedError):
        ch.send(b"{}")


def test_a_server_that_stops_reading_blocks_senders_at_max_queued() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        lost: list[BaseException] = []
        ch = TcpChannel(parse_url(f"tcp://127.0.0.1:{listener.getsockname()[1]}"), lambda data: None,
                        lost.append, settings=RpcClientSettings(max_queued=64 * 1024))
        peer, _ = listener.accept()  # accepted, never read
        try:
            big = b"x" * (16 * 1024 * 1024)  # more than the kernel buffers: most of it stays queued
            ch.send(big)  # a message larger than the limit is accepted when nothing else waits
            with pytest.raises(OperationTimeout):
                ch.send(b"y", timeout=0.2)
            blocked: list[BaseException] = []
            waiting = threading.Thread(target=lambda: blocked.extend(_raises(ch.send, b"z")))
            waiting.start()
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()  # RST: the connection breaks, the waiting sender is released
            waiting.join(10)
            assert not waiting.is_alive()
            assert len(blocked) == 1 and isinstance(blocked[0], BrokenError)
            assert len(lost) == 1 and isinstance(lost[0], BrokenError)
        finally:
            peer.close()
            ch.close()
        assert len(lost) == 1


def _raises(func: Any, *args: Any) -> list[BaseException]:
    try:
        func(*args)
    except BaseException as exc:
        return [exc]
    return []
