"""Faults changed at run time reach connections already open, as toxiproxy's toxics do (issue 17).

Lower bounds only: a busy machine adds delay, it never removes any.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from socklab.apps.echo.protocol import EchoProtocol
from socklab.tools.tap import Fault, Tap
from socklab.tools.tap.control import request
from tests.conftest import running_server


def exchange(sock: socket.socket, msg: bytes = b"ping\n") -> float:
    t0 = time.monotonic()
    sock.sendall(msg)
    got = b""
    while len(got) < len(msg):
        chunk = sock.recv(100)
        assert chunk, "the tap closed the connection"
        got += chunk
    assert got == msg
    return time.monotonic() - t0


def test_a_latency_added_while_a_connection_is_open_delays_its_next_exchange_and_removing_it_heals() -> None:
    """On the old code a fault reached only connections opened after it: the second exchange
    came back at once and the lower bound failed."""
    with running_server(EchoProtocol) as srv, Tap(target=("127.0.0.1", srv.port)) as tap:
        port = int(tap.serve_control()[1])
        with socket.create_connection(("127.0.0.1", tap.port), timeout=30) as sock:
            exchange(sock)  # open, relayed, no fault
            answer = request("127.0.0.1", port, {"op": "add", "fault": {
                "kind": "latency", "direction": "downstream", "latency": 300}})
            assert answer["ok"], answer
            assert exchange(sock) >= 0.299  # the same connection, now delayed
            assert request("127.0.0.1", port, {"op": "remove", "name": "latency_downstream"})["removed"]
            # healed: no longer delayed (a loose bound - only a wedged relay takes 300 ms x 10)
            assert min(exchange(sock) for _ in range(3)) < 3.0
            assert tap.relays  # still the same open connection


def test_a_timeout_added_at_run_time_holds_data_until_it_is_removed() -> None:
    """toxiproxy: with timeout 0 "data will be delayed until the toxic is removed". The old tap
    applied it only to new connections (and dropped what it held)."""
    with running_server(EchoProtocol) as srv, Tap(target=("127.0.0.1", srv.port)) as tap:
        tap.serve_control()  # faults change at run time, as through the control port
        with socket.create_connection(("127.0.0.1", tap.port), timeout=30) as sock:
            exchange(sock)
            tap.add_fault(Fault("timeout", "upstream", timeout=0))
            sock.sendall(b"held\n")
            sock.settimeout(0.3)
            try:
                early = sock.recv(100)
            except TimeoutError:
                early = b""
            assert early == b""  # held back while the fault is in force
            sock.settimeout(30)
            assert tap.remove_fault("timeout_upstream")
            assert sock.recv(100) == b"held\n"  # released, in order


def test_a_reset_peer_added_at_run_time_resets_an_open_connection() -> None:
    with running_server(EchoProtocol) as srv, Tap(target=("127.0.0.1", srv.port)) as tap:
        tap.serve_control()  # faults change at run time, as through the control port
        with socket.create_connection(("127.0.0.1", tap.port), timeout=30) as sock:
            exchange(sock)
            tap.add_fault(Fault("reset_peer", "downstream", timeout=0))
            sock.settimeout(10)  # the old code never reset it: recv timed out
            got = b""
            try:
                got = sock.recv(100)
            except ConnectionResetError:
                got = b"RST"
            assert got in (b"", b"RST")  # closed by the tap; the echo server is still up


def test_slicer_delay_is_in_microseconds_as_toxiproxys() -> None:
    """2000 bytes cut into 100-byte writes 20,000 µs apart take at least 19 x 20 ms. On the old
    code delay was milliseconds: 19 x 20 s, beyond the test's time bound."""
    with running_server(EchoProtocol) as srv, Tap(target=("127.0.0.1", srv.port), faults=[
            Fault("slicer", "downstream", average_size=100, delay=20_000)]) as tap:
        with socket.create_connection(("127.0.0.1", tap.port), timeout=30) as sock:
            assert 0.019 * 19 <= exchange(sock, b"s" * 1999 + b"\n") < 30


def test_a_fault_added_to_a_spliced_connection_takes_it_off_the_zero_copy_path() -> None:
    """A library tap with no fault and no view splices; add_fault must still reach the open
    connection (before, it stayed on splice(2) and the fault never applied)."""
    with running_server(EchoProtocol) as srv, Tap(target=("127.0.0.1", srv.port)) as tap:
        with socket.create_connection(("127.0.0.1", tap.port), timeout=30) as sock:
            exchange(sock)
            spliced = tap.call(lambda: [bool(r.pumps) for r in tap.relays.values()])
            if spliced != [True]:
                pytest.fail("this platform has no splice(2): the tap's zero-copy path is Linux's")
            tap.add_fault(Fault("latency", "downstream", latency=300))
            assert exchange(sock) >= 0.299
            tap.remove_fault("latency_downstream")
            assert min(exchange(sock) for _ in range(3)) < 3.0


@pytest.mark.parametrize("engine", ["epoll", "poll", "select"])
def test_leaving_splice_in_the_middle_of_a_bulk_transfer_loses_and_reorders_nothing(engine: str) -> None:
    size = 8 << 20
    data = bytes(range(256)) * (size // 256)
    with running_server(EchoProtocol) as srv, Tap(target=("127.0.0.1", srv.port), engine=engine) as tap:
        with socket.create_connection(("127.0.0.1", tap.port), timeout=30) as sock:
            got = bytearray()

            def send() -> None:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            sender = threading.Thread(target=send)
            sender.start()
            while len(got) < size // 4:  # under way on the zero-copy path
                chunk = sock.recv(65536)
                assert chunk
                got += chunk
            tap.add_fault(Fault("slicer", "downstream", average_size=4096, delay=0))
            while chunk := sock.recv(65536):
                got += chunk
            sender.join(30)
            assert not sender.is_alive()
        assert len(got) == size and bytes(got) == data
        assert any("slicer" in e.text for e in tap.fault_log)  # it did reach this connection


class _HalfOpen(EchoProtocol):
    """Echoes; keeps its side open after the client's FIN until the test says (``finish``)."""

    eof_seen = threading.Event()
    instance: _HalfOpen | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        type(self).instance = self

    def eof_received(self) -> bool:
        type(self).eof_seen.set()
        return True

    def finish(self) -> None:
        self.transport.write(b"late\n")
        self.transport.close()


def test_leaving_splice_after_a_half_close_still_closes_the_connection() -> None:
    """The client's FIN passed on the zero-copy path, then a fault arrives: the server's late
    answer and its FIN still reach the client, and the tap lets the connection go."""
    _HalfOpen.eof_seen.clear()
    with running_server(_HalfOpen) as srv, Tap(target=("127.0.0.1", srv.port)) as tap:
        with socket.create_connection(("127.0.0.1", tap.port), timeout=30) as sock:
            exchange(sock)
            if tap.call(lambda: [bool(r.pumps) for r in tap.relays.values()]) != [True]:
                pytest.fail("this platform has no splice(2): the tap's zero-copy path is Linux's")
            sock.shutdown(socket.SHUT_WR)
            assert _HalfOpen.eof_seen.wait(10)
            tap.add_fault(Fault("latency", "downstream", latency=50))
            server_side = _HalfOpen.instance
            assert server_side is not None
            srv.call_soon_threadsafe(server_side.finish)
            got = b""
            while chunk := sock.recv(100):
                got += chunk
            assert got == b"late\n"
        deadline = time.monotonic() + 10
        while tap.call(lambda: len(tap.relays)) and time.monotonic() < deadline:
            time.sleep(0.02)  # the tap notices the client's close on its own schedule
        assert tap.call(lambda: len(tap.relays)) == 0


def test_finished_connections_leave_the_table_of_open_ones() -> None:
    """The table that lets a new fault reach open connections must not keep closed ones (a
    connection ending with two FINs is never "stopped")."""
    with running_server(EchoProtocol) as srv, Tap(target=("127.0.0.1", srv.port), splice=False,
                                                  faults=[Fault("latency", "upstream", latency=1)]) as tap:
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", tap.port), timeout=30) as sock:
                exchange(sock)
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(10) == b""
        deadline = time.monotonic() + 10
        while tap.call(lambda: len(tap.relays)) and time.monotonic() < deadline:
            time.sleep(0.02)  # the tap notices each close on its own schedule
        assert tap.call(lambda: len(tap.relays)) == 0
