"""The tap's TCP relay: per connection a client side, a server side and a faulty pipe each way.

Why this exists: every connection accepted on the listen address gets its own upstream
connection to the target; bytes are copied both ways through a :class:`_Pipe` per direction,
which applies that direction's faults (decided by the seeded
:class:`~socklab.protocols.faults.FaultSchedule`) and tells the observers exactly what was
delivered and which fault fired. Fault-free, unobserved connections go through
:class:`~socklab.tools.tap.splice._SplicePump` instead (zero copy).

With no fault a pipe is one ``transport.write`` per received chunk (no timers, no copies beyond
the engine's). Back-pressure crosses the relay: when one side's write buffer is full (or a
fault's delay queue grows) the other side stops being read, so a slow reader slows the writer
as it would without the tap.
"""

from __future__ import annotations

import collections
import os
import time
from typing import TYPE_CHECKING, Any

from socklab.core.errors import BrokenError
from socklab.core.protocol import Protocol
from socklab.core.sockets import Endpoint
from socklab.core.transport import TimerHandle, Transport
from socklab.protocols.faults import Fault, Plan
from socklab.tools.tap.events import DOWNSTREAM, UPSTREAM, ConnInfo
from socklab.tools.tap.splice import _SplicePump

if TYPE_CHECKING:
    from socklab.tools.tap.relay import Tap

__all__ = ["_ClientSide", "_Pipe", "_TcpRelay"]


class _Pipe:
    """One direction of one TCP connection: faults, delay queue, delivery, back-pressure."""

    def __init__(self, conn: _TcpRelay, direction: str, faults: list[tuple[Fault, Any]]) -> None:
        self.conn, self.direction = conn, direction
        self.src: Transport | None = None
        self.dst: Transport | None = None
        self.kinds: dict[str, tuple[Fault, Any]] = {}
        self.delayed = self.hung = False
        self.limit: int | None = None
        self.held: list[bytes] = []  # what a timeout toxic holds back, released when it is removed
        self.apply(faults)
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

    def apply(self, faults: list[tuple[Fault, Any]]) -> None:
        """Put ``faults`` in force for this direction now, on an open connection too (as toxiproxy).

        Data already queued keeps its release time; what arrives from now on meets the new set.
        A ``limit_data`` that stays counts on; a new one counts from now. Removing ``timeout``
        releases what it held back (toxiproxy: "data will be delayed until the toxic is removed").
        """
        old_limit = self.kinds.get("limit_data")
        self.kinds = {f.kind: (f, rng) for f, rng in faults}
        self.delayed = bool({"latency", "bandwidth", "slicer", "slow_close"} & self.kinds.keys())
        lim = self.kinds.get("limit_data")
        if lim is None:
            self.limit = None
        elif old_limit is None or old_limit[0] != lim[0]:
            self.limit = int(lim[0]["bytes"])
        was_hung, self.hung = self.hung, "timeout" in self.kinds
        if was_hung and not self.hung:
            self.noted.discard("timeout")
            held, self.held = self.held, []
            for data in held:
                self.feed(data)
            self.resume("held")

    # ---- input -----------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if self.dst is None:
            self.early.append(data)
            return
        if self.done or self.close_after:
            return  # finished, or limit_data already cut this direction
        if self.hung:
            self._once("timeout", f"timeout: {len(data)} bytes held back (until the fault is removed)")
            self.held.append(data)
            if sum(map(len, self.held)) > self.conn.tap.settings.max_buffer:
                self.pause("held")
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
            rate = bandwidth[0]["rate"] * 1000.0  # KB/s (toxiproxy's unit) -> bytes/s
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
                t += slicer[0]["delay"] / 1e6  # microseconds, as toxiproxy's
            if bandwidth is not None:
                t += len(chunk) / (bandwidth[0]["rate"] * 1000.0)
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


class _TcpRelay:
    """One relayed TCP connection: the client side, the server side and two pipes."""

    def __init__(self, tap: Tap, index: int, plan: Plan) -> None:
        self.tap, self.index, self.plan = tap, index, plan
        self.up = _Pipe(self, UPSTREAM, plan.faults(UPSTREAM))
        self.down = _Pipe(self, DOWNSTREAM, plan.faults(DOWNSTREAM))
        self.client: Transport | None = None
        self.server: Transport | None = None
        self.info = ConnInfo(index, None, tap.target_address, False, time.time(), plan)
        self.timers: dict[tuple[str, str], tuple[Fault, TimerHandle]] = {}  # (direction, name) -> timer
        self.finished = False
        self.pumps: list[_SplicePump] = []

    def replan(self, plan: Plan) -> None:
        """The tap's faults changed: put the new set in force on this open connection.

        A fault that stays as it was keeps its random stream and its timer; a new reset_peer or
        timeout counts its time from now. A spliced connection leaves the zero-copy path first
        (:meth:`_leave_splice`) - unless the new set is empty for it.
        """
        if self.finished:
            return
        if self.pumps and plan.active:
            self._leave_splice()
        if self.pumps:
            return  # still nothing to break: zero copy goes on
        old, self.plan = self.plan, plan
        self.info.plan = plan
        for pipe in (self.up, self.down):
            kept = {f.name: (f, rng) for f, rng in old.faults(pipe.direction)}
            pipe.apply([kept[f.name] if f.name in kept and kept[f.name][0] == f else (f, rng)
                        for f, rng in plan.faults(pipe.direction)])
        if self.server is not None:
            self._arm_timers()

    def _arm_timers(self) -> None:
        """Timers of the reset_peer and timeout faults in force; those of faults removed are cancelled."""
        wanted: dict[tuple[str, str], Fault] = {}
        for direction in (UPSTREAM, DOWNSTREAM):
            for kind in ("reset_peer", "timeout"):
                f = self.plan.get(kind, direction)
                if f is not None:
                    wanted[(direction, f.name)] = f
        for key, (f, handle) in list(self.timers.items()):
            if wanted.get(key) != f:
                handle.cancel()
                del self.timers[key]
        for (direction, name), f in wanted.items():
            if (direction, name) in self.timers:
                continue
            if f.kind == "reset_peer":
                handle = self.tap.engine.call_later(f["timeout"] / 1000.0, lambda d=direction: self.reset(d))
            else:
                self.fault(direction, "timeout", f"timeout: {direction} data stopped"
                           + (f", closing after {f['timeout']:g} ms" if f["timeout"] else " (hang)"))
                if not f["timeout"]:
                    continue
                handle = self.tap.engine.call_later(f["timeout"] / 1000.0, self.close_all)
            self.timers[(direction, name)] = (f, handle)

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
        if self.tap.splice and not self.plan.active \
                and not any(o.wants_data for o in self.tap.observers) \
                and hasattr(os, "splice") and not self.up.early and not self.up.early_eof:
            self._start_splice(transport)
            return
        self._arm_timers()
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

    def _leave_splice(self) -> None:
        """A fault arrived for a spliced connection: hand what the pipes hold on, relay through Python."""
        assert self.client is not None and self.server is not None
        pumps, self.pumps = self.pumps, []
        for pump in pumps:
            pipe = self.up if pump.direction == UPSTREAM else self.down
            self.tap.stats["bytes_up" if pump.direction == UPSTREAM else "bytes_down"] += pump.bytes
            left = pump.take_over()  # already in flight: passed on as it is, before any fault
            if left:
                pipe._deliver(left)
            if pump.done:
                pipe.done = True  # the FIN went on already
            elif pump.eof:
                pipe.eof()
        for transport in (self.client, self.server):
            if not transport.is_closing():  # a socket at EOF reads EOF again: the transport learns it
                transport.resume_reading()

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
        for _, timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        self.tap.relays.pop(self.index, None)
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


def _pin_refused(exc: BaseException) -> str | None:
    """``target ADDR: `` and ``connect --pin``'s own words, if ``exc`` is the target failing ``--pin``.

    The TLS layer reports a failed handshake as ``TLS handshake with ADDR failed: REASON``, and
    REASON is the :class:`~socklab.core.selfsigned.PinMismatch` text (it names ``--pin``, the
    fingerprint wanted and the one the target has): the user reads that, as ``connect --pin``
    says it, not "cannot reach the target" (it was reached). None for any other failure.
    """
    head, sep, reason = str(exc).partition(" failed: ")
    if not (sep and head.startswith("TLS handshake") and "--pin" in reason):
        return None
    where = head.removeprefix("TLS handshake").removeprefix(" with ").strip()
    return f"target {where}: {reason}" if where else f"target: {reason}"


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
        tap.relays[index] = relay  # so faults changed at run time reach it (Tap.set_faults)
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
        refused = _pin_refused(exc)  # the target was reached: its certificate is not the --pin one
        self.relay.fault(UPSTREAM, "upstream", refused or f"cannot reach the target: {exc}")
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
            # the client is gone: nothing left for a new fault to act on (a connection that ends
            # with two FINs is never "stopped", so this is where it leaves the table)
            self.tap.relays.pop(self.relay.index, None)
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
