"""The tap's relay: a TCP or UDP proxy on socklab's reactor that injects faults and reports traffic.

Why this exists: to see what an application really sends, and how it copes when the network
misbehaves, put a relay between client and server. Every connection accepted on the listen
address gets its own upstream connection to the target; bytes are copied both ways through a
:class:`_Pipe` per direction, which applies that direction's faults (decided by the seeded
:class:`~socklab.protocols.faults.FaultSchedule`) and tells the observers (hexdump, pcap, record)
exactly what was delivered and which fault fired.

With no fault a pipe is one ``transport.write`` per received chunk (no timers, no copies beyond
the engine's). Back-pressure crosses the relay: when one side's write buffer is full (or a
fault's delay queue grows) the other side stops being read, so a slow reader slows the writer
as it would without the tap.

Library use (the fault tests of other areas)::

    with Tap(listen=("127.0.0.1", 0), target=("127.0.0.1", port),
             faults=[Fault("limit_data", direction="downstream", bytes=1000)], seed=1) as tap:
        sock = socket.create_connection(("127.0.0.1", tap.port))
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import itertools
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from socklab.core.errors import BrokenError, UsageError
from socklab.core.protocol import DatagramProtocol, Protocol
from socklab.core.server import Server
from socklab.core.settings import ServerSettings, setting
from socklab.core.sockets import Endpoint, open_udp_socket
from socklab.core.trace import Tracer
from socklab.core.transport import DatagramTransport, TimerHandle, Transport
from socklab.protocols.faults import DatagramFaults, Fault, FaultSchedule, Plan

__all__ = ["ConnInfo", "FaultEvent", "Observer", "Tap", "TapSettings"]

UPSTREAM, DOWNSTREAM = "upstream", "downstream"
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


@dataclass
class TapSettings(ServerSettings):
    """The tap's settings: a server's, with no idle timeout (a hung connection is often the point)."""

    idle_timeout: float = setting(0.0, "Close a connection silent for this many seconds (0 = never).")
    max_connections: int = setting(10000, "Connections relayed at once.")
    udp_flow_timeout: float = setting(60.0, "Forget a UDP peer (and its upstream socket) after this many "
                                            "seconds without a datagram.")


@dataclass
class ConnInfo:
    """One relayed connection (or UDP flow) as observers see it."""

    index: int
    client: Any
    server: Any
    udp: bool
    started: float
    plan: Plan
    listen: Any = None


@dataclass
class FaultEvent:
    """One injected fault, as logged and marked in the capture."""

    ts: float
    conn: int
    direction: str
    kind: str
    text: str


class Observer:
    """What the tap reports; subclasses override what they need. Runs on the engine thread.

    ``wants_data = False`` says the observer ignores :meth:`data`, so fault-free connections may
    take the zero-copy path (the bytes never reach Python).
    """

    wants_data: bool = True

    def opened(self, conn: ConnInfo) -> None:
        """A connection was accepted and its upstream connected (or a UDP flow began)."""

    def data(self, conn: ConnInfo, direction: str, data: bytes) -> None:
        """``data`` was delivered in ``direction`` (after faults)."""

    def fault(self, conn: ConnInfo, direction: str, kind: str, text: str) -> None:
        """A fault fired."""

    def closed(self, conn: ConnInfo, direction: str, how: str) -> None:
        """The sender of ``direction`` finished: ``how`` is ``"fin"`` or ``"rst"``."""

    def close(self) -> None:
        """The tap stopped: flush files."""


class _Pipe:
    """One direction of one TCP connection: faults, delay queue, delivery, back-pressure."""

    def __init__(self, conn: _TcpRelay, direction: str, faults: list[tuple[Fault, Any]]) -> None:
        self.conn, self.direction = conn, direction
        self.src: Transport | None = None
        self.dst: Transport | None = None
        self.kinds = {f.kind: (f, rng) for f, rng in faults}
        self.delayed = bool({"latency", "bandwidth", "slicer", "slow_close"} & self.kinds.keys())
        lim = self.kinds.get("limit_data")
        self.limit: int | None = int(lim[0]["bytes"]) if lim else None
        self.hung = "timeout" in self.kinds
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.queued = 0
        self.clock = 0.0
        self.timer: TimerHandle | None = None
        self.pauses: set[str] = set()
        self.done = False
        self.close_after = False
        self.noted: set[str] = set()
        # What arrived before the destination was connected. A plain socket is not read until
        # then (pause_reading), but a TLS layer may already hold decrypted records: a client's
        # first request often comes in the same segment as its handshake's Finished.
        self.early: list[bytes] = []
        self.early_eof = False

    # ---- input -----------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if self.dst is None:
            self.early.append(data)
            return
        if self.done or self.close_after:
            return  # finished, or limit_data already cut this direction
        if self.hung:
            self._once("timeout", f"timeout: {len(data)} bytes held back (never delivered)")
            return
        cut = False
        if self.limit is not None:
            if len(data) >= self.limit:
                data, cut = data[:self.limit], True
            self.limit -= len(data)
        if not self.delayed and not self.queue:
            self._deliver(data)
        elif data:
            self._schedule(data)
        if cut:
            self.conn.fault(self.direction, "limit_data",
                            f"limit_data: {int(self.kinds['limit_data'][0]['bytes'])} bytes forwarded, closing")
            self.close_after = True
            self.eof()

    def _schedule(self, data: bytes) -> None:
        now = time.monotonic()
        chunks = [data]
        slicer = self.kinds.get("slicer")
        if slicer is not None:
            chunks = self._slice(data, slicer[0], slicer[1])
            if len(chunks) > 1:
                self._once("slicer", f"slicer: {len(data)} bytes cut into {len(chunks)} writes")
        bandwidth = self.kinds.get("bandwidth")
        if bandwidth is not None:
            rate = bandwidth[0]["rate"]
            step = max(1024, int(rate / 100))  # ~10 ms of data per release keeps the rate smooth
            chunks = [c[i:i + step] for c in chunks for i in range(0, len(c), step)]
        latency = self.kinds.get("latency")
        t = max(now, self.clock)
        if latency is not None:
            f, rng = latency
            jitter = f["jitter"]
            ms = f["latency"] + (rng.uniform(-jitter, jitter) if jitter else 0.0)
            t = max(t, now + max(0.0, ms) / 1000.0)
            self._once("latency", f"latency: delaying by {f['latency']:g} ms (jitter {jitter:g})")
        for i, chunk in enumerate(chunks):
            if slicer is not None and i > 0:
                t += slicer[0]["delay"] / 1000.0
            if bandwidth is not None:
                t += len(chunk) / bandwidth[0]["rate"]
            self.queue.append((t, chunk))
            self.queued += len(chunk)
        self.clock = t
        if self.queued > self.conn.tap.settings.max_buffer:
            self.pause("queue")
        self._arm()

    @staticmethod
    def _slice(data: bytes, fault: Fault, rng: Any) -> list[bytes]:
        avg, var = int(fault["average_size"]), int(fault["size_variation"])
        out, i = [], 0
        while i < len(data):
            size = max(1, avg + (rng.randint(-var, var) if var else 0))
            out.append(data[i:i + size])
            i += size
        return out

    def connected(self) -> None:
        """The destination is there: pass on what arrived before it."""
        early, self.early = self.early, []
        for data in early:
            self.feed(data)
        if self.early_eof:
            self.eof()

    def eof(self) -> None:
        """The source finished (FIN): pass it on, after queued data and any slow_close delay."""
        if self.dst is None:
            self.early_eof = True
            return
        if self.done or (self.hung and not self.close_after):
            return  # a hung direction passes nothing on, not even the FIN
        slow = self.kinds.get("slow_close")
        if slow is None and not self.queue:
            self._finish()
            return
        t = max(time.monotonic(), self.clock)
        if slow is not None:
            t += slow[0]["delay"] / 1000.0
            self.conn.fault(self.direction, "slow_close", f"slow_close: FIN delayed by {slow[0]['delay']:g} ms")
        self.clock = t
        self.queue.append((t, None))
        self._arm()

    # ---- output ----------------------------------------------------------------------------------
    def _arm(self) -> None:
        if self.timer is not None or not self.queue:
            return
        delay = max(0.0, self.queue[0][0] - time.monotonic())
        self.timer = self.conn.tap.engine.call_later(delay, self._release)

    def _release(self) -> None:
        self.timer = None
        now = time.monotonic()
        while self.queue and self.queue[0][0] <= now + 0.0005:
            _, chunk = self.queue.popleft()
            if chunk is None:
                self._finish()
                return
            self.queued -= len(chunk)
            self._deliver(chunk)
        if self.queued <= self.conn.tap.settings.max_buffer // 4:
            self.resume("queue")
        self._arm()

    def _deliver(self, data: bytes) -> None:
        if self.dst is None or self.done or not data:
            return
        self.dst.write(data)
        for obs in self.conn.tap.observers:
            obs.data(self.conn.info, self.direction, data)

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        for obs in self.conn.tap.observers:
            obs.closed(self.conn.info, self.direction, "fin")
        if self.close_after:
            self.conn.close_all()
        elif self.dst is not None:
            if self.dst.can_write_eof():
                self.dst.write_eof()
            else:
                self.dst.close()

    # ---- flow control ----------------------------------------------------------------------------
    def pause(self, reason: str) -> None:
        if not self.pauses and self.src is not None:
            self.src.pause_reading()
        self.pauses.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self.pauses:
            self.pauses.discard(reason)
            if not self.pauses and self.src is not None and not self.src.is_closing():
                self.src.resume_reading()

    def _once(self, kind: str, text: str) -> None:
        if kind not in self.noted:
            self.noted.add(kind)
            self.conn.fault(self.direction, kind, text)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        self.done = True

class _SplicePump:
    """One direction of a fault-free, unobserved connection, moved by the kernel: socket -> pipe -> socket.

    ``splice(2)`` moves pages between a socket and a pipe without copying them through user space,
    so a relay with nothing to show or break costs a couple of system calls per MiB. Used only
    when the connection has no fault and the tap has no observer (otherwise the bytes must pass
    through Python to be shown, recorded or delayed).
    """

    SIZE = 1 << 20
    ROUNDS = 8  # splices per wake-up at most (8 MiB), then the other connections' turn

    def __init__(self, relay: _TcpRelay, direction: str, src: Transport, dst: Transport) -> None:
        self.relay, self.direction, self.src, self.dst = relay, direction, src, dst
        self.reactor = relay.tap.engine
        self.src_fd: int = src.get_extra_info("fd")
        self.dst_fd: int = dst.get_extra_info("fd")
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.pipe_w, 1031, self.SIZE)  # F_SETPIPE_SZ: room for 1 MiB in flight
        self.pending = 0
        self.eof = False
        self.done = False
        self.bytes = 0

    def start(self) -> None:
        self.reactor.add_reader(self.src_fd, self._on_readable)

    def _on_readable(self) -> None:
        # Drain per wake-up: while a splice fills most of the pipe the sender is ahead of us, so
        # going round again is cheaper than returning to epoll_wait. Bounded, so one fast
        # connection cannot starve the others on this reactor. Interest is changed only when
        # the destination pushes back (EAGAIN), never per chunk.
        for _ in range(self.ROUNDS):
            if self.pipe_r < 0 or self.done:
                return
            try:
                n = os.splice(self.src_fd, self.pipe_w, self.SIZE, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return
            except OSError as exc:
                self.relay.splice_failed(self, exc)
                return
            if n == 0:
                self.eof = True
                self.reactor.remove_reader(self.src_fd)
            self.pending += n
            self.bytes += n
            if not self._flush() or n < self.SIZE // 2:
                return  # blocked, finished, or the socket was (nearly) empty: wait for epoll

    def _flush(self) -> bool:
        """Move the pipe's bytes on; True if it is empty and the source may be read again."""
        while self.pending:
            try:
                n = os.splice(self.pipe_r, self.dst_fd, self.pending, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                # the receiver is slow: stop reading the sender until the pipe drains
                self.reactor.remove_reader(self.src_fd)
                self.reactor.add_writer(self.dst_fd, self._on_writable)
                return False
            except OSError as exc:
                self.relay.splice_failed(self, exc)
                return False
            self.pending -= n
        if self.eof:
            self._finish()
            return False
        return True

    def _on_writable(self) -> None:
        if self.pipe_r < 0:
            return
        drained = self._flush()  # if it blocks again, the writer simply stays registered
        if self.pipe_r >= 0 and not self.pending:
            self.reactor.remove_writer(self.dst_fd)
        if drained and not self.done:
            self.reactor.add_reader(self.src_fd, self._on_readable)

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        with contextlib.suppress(OSError):
            self.dst.get_extra_info("socket").shutdown(socket.SHUT_WR)  # pass the FIN on
        for obs in self.relay.tap.observers:
            obs.closed(self.relay.info, self.direction, "fin")
        self.relay.splice_done()

    def close(self) -> None:
        """Stop watching the sockets, then free the pipe (its fd numbers are reused at once)."""
        if self.pipe_r < 0:
            return
        self.done = True
        if self.reactor._readers.get(self.src_fd) == self._on_readable:
            self.reactor.remove_reader(self.src_fd)
        if self.reactor._writers.get(self.dst_fd) == self._on_writable:
            self.reactor.remove_writer(self.dst_fd)
        for fd in (self.pipe_r, self.pipe_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pipe_r = self.pipe_w = -1


class _TcpRelay:
    """One relayed TCP connection: the client side, the server side and two pipes."""

    def __init__(self, tap: Tap, index: int, plan: Plan) -> None:
        self.tap, self.index, self.plan = tap, index, plan
        self.up = _Pipe(self, UPSTREAM, plan.faults(UPSTREAM))
        self.down = _Pipe(self, DOWNSTREAM, plan.faults(DOWNSTREAM))
        self.client: Transport | None = None
        self.server: Transport | None = None
        self.info = ConnInfo(index, None, tap.target_address, False, time.time(), plan)
        self.timers: list[TimerHandle] = []
        self.finished = False
        self.pumps: list[_SplicePump] = []

    def fault(self, direction: str, kind: str, text: str) -> None:
        self.tap.log_fault(self.info, direction, kind, text)

    def server_connected(self, transport: Transport) -> None:
        assert self.client is not None
        self.server = transport
        self.info.server = transport.get_extra_info("peername") or self.info.server
        self.up.src, self.up.dst = self.client, transport
        self.down.src, self.down.dst = transport, self.client
        for obs in self.tap.observers:
            obs.opened(self.info)
        if self.tap.splice and not self.plan.active and not any(o.wants_data for o in self.tap.observers) \
                and hasattr(os, "splice") and not self.up.early and not self.up.early_eof:
            self._start_splice(transport)
            return
        for direction in (UPSTREAM, DOWNSTREAM):
            reset = self.plan.get("reset_peer", direction)
            if reset is not None:
                self.timers.append(self.tap.engine.call_later(
                    reset["timeout"] / 1000.0, lambda d=direction: self.reset(d)))
            hang = self.plan.get("timeout", direction)
            if hang is not None:
                self.fault(direction, "timeout", f"timeout: {direction} data stopped"
                           + (f", closing after {hang['timeout']:g} ms" if hang["timeout"] else " (hang)"))
                if hang["timeout"] > 0:
                    self.timers.append(self.tap.engine.call_later(hang["timeout"] / 1000.0, self.close_all))
        self.up.connected()
        if not self.finished:
            self.client.resume_reading()

    def _start_splice(self, server: Transport) -> None:
        assert self.client is not None
        server.pause_reading()  # the pumps read both sockets from now on
        self.pumps = [_SplicePump(self, UPSTREAM, self.client, server),
                      _SplicePump(self, DOWNSTREAM, server, self.client)]
        for pump in self.pumps:
            pump.start()

    def splice_done(self) -> None:
        if all(p.done for p in self.pumps):
            self.tap.stats["bytes_up"] += self.pumps[0].bytes
            self.tap.stats["bytes_down"] += self.pumps[1].bytes
            self.close_all()

    def splice_failed(self, pump: _SplicePump, exc: OSError) -> None:
        for obs in self.tap.observers:
            obs.closed(self.info, pump.direction, "rst")
        self.abort_all()  # a reset on one side is passed on as a reset

    def reset(self, direction: str) -> None:
        """reset_peer: RST towards the receiver of ``direction`` (and the other side too)."""
        if self.finished:
            return
        self.fault(direction, "reset_peer", "reset_peer: sending RST")
        for obs in self.tap.observers:
            obs.closed(self.info, UPSTREAM if direction == DOWNSTREAM else DOWNSTREAM, "rst")
        self.abort_all()

    def close_all(self) -> None:
        self._stop()
        for t in (self.client, self.server):
            if t is not None:
                t.close()

    def abort_all(self) -> None:
        self._stop()
        for t in (self.client, self.server):
            if t is not None:
                t.abort()

    def _stop(self) -> None:
        self.finished = True
        for pump in self.pumps:
            pump.close()
        for timer in self.timers:
            timer.cancel()
        self.up.cancel()
        self.down.cancel()

    def side_lost(self, side: str, exc: BaseException | None) -> None:
        other = self.server if side == "client" else self.client
        if self.finished or other is None:
            self._stop()
            return
        pipe = self.up if side == "client" else self.down
        if isinstance(exc, BrokenError):
            for obs in self.tap.observers:
                obs.closed(self.info, pipe.direction, "rst")
            self.abort_all()  # pass the reset on, as the real network would
            return
        if not pipe.done:
            pipe.close_after = True
            pipe.eof()
        else:
            other_pipe = self.down if side == "client" else self.up
            if other_pipe.done:
                other.close()


class _ClientSide(Protocol):
    def __init__(self, tap: Tap) -> None:
        self.tap = tap
        self.relay: _TcpRelay | None = None

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        tap = self.tap
        index = next(tap._counter)
        plan = tap.schedule.plan(index)
        relay = self.relay = _TcpRelay(tap, index, plan)
        relay.client = transport
        relay.info.client = transport.get_extra_info("peername")
        relay.info.listen = transport.get_extra_info("sockname")
        tap.stats["connections"] += 1
        if plan.has("down"):
            relay.fault(DOWNSTREAM, "down", "down: connection refused (RST)")
            relay.finished = True
            transport.abort()
            return
        transport.pause_reading()
        tap.engine.connect_stream(Endpoint(tap.target.host, tap.target.port, tap.target.unix),
                                  lambda: _ServerSide(relay), timeout=tap.connect_timeout,
                                  ssl_context=tap.upstream_tls, server_hostname=tap.upstream_hostname,
                                  on_error=self._upstream_failed)

    def _upstream_failed(self, exc: BaseException) -> None:
        assert self.relay is not None
        self.relay.fault(UPSTREAM, "upstream", f"cannot reach the target: {exc}")
        self.relay.finished = True
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        assert self.relay is not None
        self.tap.stats["bytes_up"] += len(data)
        self.relay.up.feed(data)

    def eof_received(self) -> bool:
        assert self.relay is not None
        self.relay.up.eof()
        return True

    def pause_writing(self) -> None:
        if self.relay is not None:
            self.relay.down.pause("client-buffer")

    def resume_writing(self) -> None:
        if self.relay is not None:
            self.relay.down.resume("client-buffer")

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.relay is not None:
            self.relay.side_lost("client", exc)


class _ServerSide(Protocol):
    def __init__(self, relay: _TcpRelay) -> None:
        self.relay = relay

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        if self.relay.finished or self.relay.client is None or self.relay.client.is_closing():
            transport.close()
            return
        self.relay.server_connected(transport)

    def data_received(self, data: bytes) -> None:
        self.relay.tap.stats["bytes_down"] += len(data)
        self.relay.down.feed(data)

    def eof_received(self) -> bool:
        self.relay.down.eof()
        return True

    def pause_writing(self) -> None:
        self.relay.up.pause("server-buffer")

    def resume_writing(self) -> None:
        self.relay.up.resume("server-buffer")

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.relay.server is not None:
            self.relay.side_lost("server", exc)


# ---- UDP ----------------------------------------------------------------------------------------
class _UdpFlow(DatagramProtocol):
    """One client address: its own upstream socket (so replies find their way back) and faults."""

    def __init__(self, front: _UdpFront, addr: Any, index: int) -> None:
        tap = front.tap
        self.front, self.tap, self.addr = front, tap, addr
        plan = tap.schedule.plan(index)
        self.up = DatagramFaults(plan.faults(UPSTREAM))
        self.down = DatagramFaults(plan.faults(DOWNSTREAM))
        self.info = ConnInfo(index, addr, tap.target_address, True, time.time(), plan)
        self.last = time.monotonic()
        sock = open_udp_socket("", 0, connect_to=(tap.target.host, tap.target.port), tracer=tap.tracer)
        self.info.server = sock.getpeername()
        self.endpoint: DatagramTransport = tap.engine.serve_datagram(sock, lambda: self)
        for obs in tap.observers:
            obs.opened(self.info)

    def datagram_received(self, data: bytes, addr: Any) -> None:  # from the target
        self.last = time.monotonic()
        self.tap.stats["datagrams_down"] += 1
        self._forward(self.down, DOWNSTREAM, data)

    def from_client(self, data: bytes) -> None:
        self.last = time.monotonic()
        self.tap.stats["datagrams_up"] += 1
        self._forward(self.up, UPSTREAM, data)

    def _forward(self, faults: DatagramFaults, direction: str, data: bytes) -> None:
        decision = faults.decide(data)
        for note in decision.notes:
            self.tap.log_fault(self.info, direction, note.partition(":")[0], note)
        for delay, payload in decision.copies:
            if delay <= 0:
                self._send(direction, payload)
            else:
                self.tap.engine.call_later(delay, lambda p=payload: self._send(direction, p))

    def _send(self, direction: str, data: bytes) -> None:
        if direction == UPSTREAM:
            self.endpoint.sendto(data)
        elif self.front.out is not None:
            self.front.out.sendto(data, self.addr)
        for obs in self.tap.observers:
            obs.data(self.info, direction, data)

    def error_received(self, exc: BaseException) -> None:
        self.tap.log_fault(self.info, UPSTREAM, "error", f"target: {exc}")

    def close(self) -> None:
        self.endpoint.close()


class _UdpFront(DatagramProtocol):
    def __init__(self, tap: Tap) -> None:
        self.tap = tap
        self.out: DatagramTransport | None = None
        self.flows: dict[Any, _UdpFlow] = {}

    def connection_made(self, transport: DatagramTransport) -> None:
        self.out = transport
        if self.tap.settings.udp_flow_timeout > 0:
            self.tap.engine.call_later(min(5.0, self.tap.settings.udp_flow_timeout), self._sweep)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        flow = self.flows.get(addr)
        if flow is None:
            flow = self.flows[addr] = _UdpFlow(self, addr, next(self.tap._counter))
            self.tap.stats["connections"] += 1
        flow.from_client(data)

    def _sweep(self) -> None:
        limit = self.tap.settings.udp_flow_timeout
        old = time.monotonic() - limit
        for addr, flow in list(self.flows.items()):
            if flow.last < old:
                flow.close()
                del self.flows[addr]
        self.tap.engine.call_later(min(5.0, limit), self._sweep)

    def connection_lost(self, exc: BaseException | None) -> None:
        for flow in self.flows.values():
            flow.close()
        self.flows.clear()


# ---- the public object --------------------------------------------------------------------------
def _endpoint(value: Any, what: str) -> Endpoint:
    if isinstance(value, Endpoint):
        return value
    if isinstance(value, tuple):
        return Endpoint(str(value[0]), int(value[1]))
    if isinstance(value, str):
        from socklab.core.sockets import parse_endpoint

        return parse_endpoint(value)
    raise UsageError(f"bad {what} address {value!r}")


class Tap:
    """A fault-injecting, observing relay from ``listen`` to ``target``.

    Args:
        listen: where to accept clients, ``(host, port)`` (port 0: the kernel picks; see :attr:`port`).
        target: where to relay to, ``(host, port)`` or ``"HOST:PORT"``.
        udp: relay datagrams instead of a stream.
        faults: the faults in force (change them later with :meth:`set_faults`).
        seed: seed of the fault schedule (``None``: random; :attr:`seed` tells which, to replay).
        observers: receivers of traffic and fault events (hexdump, pcap writer, recorder...).
        engine: ``epoll`` (default), ``poll`` or ``select``.
        tracer: the lifecycle trace, or ``None``.
        connect_timeout: seconds to reach the target for each client.
        splice: move the bytes of fault-free, unobserved connections with ``splice(2)`` (zero copy).
        tls_cert, tls_key: terminate TLS from clients with this certificate (PEM): the tap then
            sees, shows, records and breaks the plaintext.
        upstream_tls: speak TLS to the target with this client context (verify it as you would
            the target itself); ``upstream_hostname`` is the name to verify (default: the
            target's host).

    Raises:
        UsageError: bad address or fault; NetworkError subclasses when binding fails.

    Use it as a context manager (``with Tap(...) as tap``), or call :meth:`start` and :meth:`close`.
    """

    def __init__(self, listen: Any = ("127.0.0.1", 0), target: Any = None, *, udp: bool = False,
                 faults: Iterable[Fault] = (), seed: int | None = None,
                 observers: Iterable[Observer] = (), engine: str = "epoll", tracer: Tracer | None = None,
                 connect_timeout: float = 10.0, settings: TapSettings | None = None,
                 splice: bool = True, tls_cert: str | None = None, tls_key: str | None = None,
                 upstream_tls: ssl.SSLContext | None = None, upstream_hostname: str | None = None) -> None:
        if target is None:
            raise UsageError("a tap needs a target (--to HOST:PORT)")
        if engine not in ("epoll", "poll", "select"):
            raise UsageError(f"the tap runs on a reactor engine (epoll, poll, select), not {engine!r}")
        self.listen_at = _endpoint(listen, "listen")
        self.target = _endpoint(target, "target")
        self.target_address: Any = (self.target.host, self.target.port)
        self.udp = udp
        self.schedule = FaultSchedule(faults, seed)
        self.observers: list[Observer] = list(observers)
        self.tracer = tracer
        self.connect_timeout = connect_timeout
        if udp and (tls_cert or upstream_tls):
            raise UsageError("TLS is for TCP relays (there is no TLS over plain UDP)")
        self.upstream_tls = upstream_tls
        self.upstream_hostname = upstream_hostname or (self.target.host if upstream_tls else None)
        # splice(2) moves the kernel's bytes: with TLS on either side those are ciphertext of two
        # different sessions, so every byte must pass through the TLS layers instead.
        self.splice = splice and not tls_cert and upstream_tls is None
        base = settings or TapSettings()
        self.settings: TapSettings = base.replace(host=self.listen_at.host, port=self.listen_at.port,
                                                  engine=engine, tls_cert=tls_cert or base.tls_cert,
                                                  tls_key=tls_key or base.tls_key)
        self.server = Server(self.settings, tracer=tracer, label="tap")
        self.engine: Any = self.server.engine
        self.fault_log: list[FaultEvent] = []
        self.fault_listeners: list[Callable[[FaultEvent], None]] = []
        self.stats: dict[str, int] = collections.defaultdict(int)
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self.address: Any = None
        self._front: _UdpFront | None = None
        self._started = False
        self._closed = False

    @property
    def seed(self) -> int:
        return self.schedule.seed

    @property
    def faults(self) -> list[Fault]:
        return list(self.schedule.faults)

    def set_faults(self, faults: Iterable[Fault]) -> None:
        """Replace the faults; new connections (and every UDP flow opened after) get the new set."""
        self.schedule.set_faults(faults)

    def add_fault(self, fault: Fault) -> None:
        self.set_faults([*(f for f in self.schedule.faults if f.name != fault.name), fault])

    def remove_fault(self, name: str) -> bool:
        before = self.schedule.faults
        self.set_faults([f for f in before if f.name != name])
        return len(before) != len(self.schedule.faults)

    def log_fault(self, conn: ConnInfo, direction: str, kind: str, text: str) -> None:
        event = FaultEvent(time.time(), conn.index, direction, kind, text)
        self.fault_log.append(event)
        self.stats["faults"] += 1
        for obs in self.observers:
            obs.fault(conn, direction, kind, text)
        for listener in self.fault_listeners:
            listener(event)

    def bind(self) -> Tap:
        """Bind the listener now (the port is known after this); :meth:`start` calls it."""
        if self.address is None:
            if self.udp:
                self.address = self.server.listen_udp(self._make_front)
            else:
                self.address = self.server.listen(lambda: _ClientSide(self))
        return self

    def serve_control(self, host: str = "127.0.0.1", port: int = 0) -> Any:
        """Serve the control API (:mod:`socklab.tools.tap.control`) on ``host:port``; returns the address.

        Thread-safe: on a running tap the listener is added on the relay's thread.
        """
        from socklab.tools.tap.control import ControlProtocol

        def bind() -> Any:
            return self.server.listen(lambda: ControlProtocol(self), host=host, port=port, tls=False)
        return self.call(bind) if self._started else bind()

    def _make_front(self) -> _UdpFront:
        self._front = _UdpFront(self)
        return self._front

    def start(self) -> Tap:
        """Bind (if not yet) and run the relay on its own thread; returns once it accepts."""
        self.bind()
        if not self._started:
            self._started = True
            self.server.start()
        return self

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, func: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run ``func`` on the relay's thread and return its result (thread-safe)."""
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            try:
                box.append(func())
            finally:
                done.set()
        self.engine.call_soon_threadsafe(run)
        done.wait(timeout)
        return box[0] if box else None

    def serve_forever(self, on_signal: Callable[[str], None] | None = None,
                      on_ready: Callable[[], None] | None = None) -> None:
        """Serve until SIGINT/SIGTERM (the CLI's main loop); ``on_ready`` once signals are handled."""
        self.bind()
        self._started = True
        try:
            self.server.serve_forever(on_signal=on_signal, on_ready=on_ready)
        finally:
            self._close_observers()

    def close(self) -> None:
        """Stop at once: close the listener and every relayed connection."""
        if self._closed:
            return
        self._closed = True
        self.server.shutdown(timeout=0.5)
        self._close_observers()

    def _close_observers(self) -> None:
        for obs in self.observers:
            with contextlib.suppress(Exception):
                obs.close()

    def __enter__(self) -> Tap:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

