"""The TFTP server: requests on one well-known port, each transfer on a socket of its own.

Why this exists: RFC 1350 section 4 makes every transfer a new "connection" identified by a pair
of transfer IDs (TIDs, the UDP ports): the server answers a request *from a new port*, and from
then on both sides check that each datagram comes from the right TID. This module shows that on
socklab's engines: the listening socket only takes RRQ/WRQ; for each one the runtime opens a new UDP
socket on the listener's host and engine (:func:`socklab.runtime.bind_datagram` with
``Endpoint(host, 0)``), whose transport sizes its buffers for the window granted
(:mod:`~socklab.apps.tftp.sockbuf`), driven by the sans-I/O machines of
:mod:`socklab.protocols.tftp` through a :class:`~socklab.apps.tftp.driver.TransferDriver`.

``single_port`` is a documented deviation: every transfer is answered from the listening port and
told apart by the client's address. Proxies and NAT that only expect replies from the port they
sent to (including ``socklab tap``'s UDP relay, whose upstream socket is connected) need it.

What a peer may do to files is :mod:`~socklab.apps.tftp.files`' policy: read-only unless
``allow_write`` (replace) or ``create`` (new files); an upload is acknowledged only once stored
(fsync, rename, directory fsync, on a worker thread). What one peer may hold: ``max_transfers``
in all, ``max_transfers_per_client`` per address, a negotiated timeout of at most ``max_timeout``,
and ``stall_timeout`` seconds without progress; when every slot is taken, a transfer that never
started (no answer from its client for a second) gives its slot to a new request.

A slot is free when its transfer really ended: the final ACK read, or the upload stored. A fast
client sends its next request right after its final ACK, and the engine may read that request
before the ACK (another socket, read later in the same turn): a request that finds its slots held
by transfers with nothing left but that last word (:attr:`TransferDriver.finishing`) waits for
one of them to end - at most ``PARK_WAIT`` seconds - instead of being refused. So a client with one
transfer at a time is never refused, and one that holds ``max_transfers_per_client`` transfers that
never end still is. A new request from the port of a transfer that is finishing ends that
transfer's wait (the client has moved on: a dallying upload's socket closes at once) or waits for
it; a repeat of the same request is the client's retransmission and is ignored. An ended upload
dallies (keeps its socket, to acknowledge a resent last block); past ``max_transfers_per_client``
dallying sockets for one address (or ``max_transfers`` in all) the oldest closes
(:mod:`~socklab.apps.tftp.dallies`), so a fast uploader cannot pile up descriptors.

A transfer that cannot be opened because the server is out of resources (no file descriptor left,
no port, no buffer) gets ``ERROR 0`` "server busy", and the server goes on.

Shutdown (SIGTERM, Ctrl-C): new requests get ERROR 0 at once, transfers in flight run to their end
within ``shutdown_timeout``, and only what is left then is aborted with an ERROR.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import errno
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from socklab.apps.tftp.dallies import Dallies
from socklab.apps.tftp.driver import CommitResult, TransferDriver, TransferEndpoint
from socklab.apps.tftp.files import Download, Refuse, TftpAccessError, Upload, new_file_mode, resolve_path
from socklab.apps.tftp.sockbuf import size_for_window
from socklab.core.errors import RemoteProtocolError, SocklabError, UsageError
from socklab.core.protocol import DatagramProtocol
from socklab.core.settings import ServerSettings, setting
from socklab.core.sockets import Endpoint
from socklab.core.trace import Tracer
from socklab.core.transport import DatagramTransport, TimerHandle
from socklab.protocols import tftp
from socklab.protocols.text import escape_peer_text
from socklab.runtime import Server, bind_datagram

__all__ = ["PARK_WAIT", "TftpAccessError", "TftpServer", "TftpSettings", "TransferDriver", "resolve_path",
           "serve_tftp"]

#: seconds a request over a limit may wait for a slot held by a transfer that is only waiting for
#: its final ACK (or its commit); it starts as soon as that transfer ends, else it is refused then
PARK_WAIT = 0.25
#: what a client hears when the server is out of descriptors, ports or buffers (no detail: the log has it)
BUSY = "server busy (out of resources), try again later"
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_STILL_RUNNING = "a transfer from your port is still running"
_SHUTTING_DOWN = "server shutting down, try again later"


@dataclass
class _Waiting:
    """A request waiting for a slot (see PARK_WAIT)."""

    packet: tftp.Request
    raw: bytes
    timer: TimerHandle | None = None


@dataclass
class TftpSettings(ServerSettings):
    """The TFTP server's settings (and limits)."""

    port: int = setting(69, "UDP port for requests (69 is TFTP's, and needs root); 0 lets the kernel choose.")
    root: str = setting(".", "Directory served; nothing outside it is readable or writable.", metavar="DIR")
    allow_write: bool = setting(False, "Let WRQ replace existing files (regular files with a write bit that "
                                       "the server's user may write; their mode and owner are kept). "
                                       "Without it or --create the server is read-only.")
    create: bool = setting(False, "Let WRQ create new files (mode 0666 minus the umask). Alone, it never "
                                  "replaces a file: an existing name gets ERROR 6.")
    timeout: float = setting(1.0, "Retransmission timeout, seconds, unless the client negotiates one (RFC 2349).")
    max_timeout: int = setting(5, "Largest timeout, seconds, a client may negotiate (RFC 2349 allows 1..255); "
                                  "a larger one is not acknowledged and --timeout applies.")
    max_retries: int = setting(5, "Timeouts in a row without progress before a transfer is abandoned.")
    stall_timeout: float = setting(10.0, "Abandon a transfer that made no progress for this many seconds, "
                                         "whatever its retries (0 = no limit).")
    max_blksize: int = setting(65464, "Largest blksize granted (RFC 2348 allows 8..65464).")
    max_windowsize: int = setting(64, "Largest windowsize granted (RFC 7440); less when the socket buffers "
                                      "cannot hold the window.")
    max_transfers: int = setting(1000, "Transfers at once; more requests get ERROR 0 'server busy'.")
    max_transfers_per_client: int = setting(32, "Transfers at once from one client address; more get ERROR 0.")
    max_file_size: int = setting(1 << 32, "Largest upload accepted, bytes (ERROR 3 beyond).")
    single_port: bool = setting(False, "Answer every transfer from the listening port (an RFC 1350 "
                                       "deviation, for NAT and relays that expect it).")

    def validate(self) -> None:
        super().validate()
        if not Path(self.root).is_dir():
            raise UsageError(f"--root {self.root!r} is not a directory")
        if not tftp.MIN_BLKSIZE <= self.max_blksize <= tftp.MAX_BLKSIZE:
            raise UsageError(f"--max-blksize must be within {tftp.MIN_BLKSIZE}..{tftp.MAX_BLKSIZE}")
        if not 1 <= self.max_windowsize <= tftp.MAX_WINDOW:
            raise UsageError("--max-windowsize must be within 1..65535")
        if not tftp.MIN_TIMEOUT <= self.max_timeout <= tftp.MAX_TIMEOUT:
            raise UsageError(f"--max-timeout must be within {tftp.MIN_TIMEOUT}..{tftp.MAX_TIMEOUT}")
        if self.timeout <= 0 or self.max_retries < 1:
            raise UsageError("--timeout must be positive and --max-retries at least 1")
        if self.stall_timeout < 0:
            raise UsageError("--stall-timeout cannot be negative")
        if self.max_transfers < 1 or self.max_transfers_per_client < 1:
            raise UsageError("--max-transfers and --max-transfers-per-client must be at least 1")


class TftpServer(DatagramProtocol):
    """The listening socket's protocol: validates requests and starts one transfer each.

    Args:
        settings: the server's settings.
        engine: the engine serving the listener (new transfer sockets are served on it).
        tracer: optional trace sink for the per-transfer sockets.
    """

    def __init__(self, settings: TftpSettings, engine: Any, tracer: Tracer | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.tracer = tracer
        self.transfers: dict[Any, TransferDriver] = {}  # client address -> driver
        self._of_host: dict[str, set[Any]] = {}  # client host -> the addresses in transfers
        # requests whose transfer just ended: a late retransmission of one must not start it again
        self.recent: set[tuple[Any, bytes]] = set()
        self.active = 0  # transfers not ended yet (dallying ones excluded)
        self.per_client: dict[str, int] = {}
        self.completed = 0
        self.failed = 0
        self.refused = 0
        self.evicted = 0
        self.retransmissions = 0  # over every transfer that ended (a dallying one counts at its last block)
        self.parked = 0  # requests that waited for a finishing transfer's slot (and got one or not)
        self.log: collections.deque[str] = collections.deque(maxlen=1000)  # the last transfers' outcomes
        self._waiting: dict[Any, _Waiting] = {}  # client address -> its request waiting for a slot
        self._wake_scheduled = False
        # ended uploads that keep their socket a while, at most max_transfers_per_client per address
        self.dallies = Dallies(settings.max_transfers_per_client, settings.max_transfers)
        self.draining = False
        self.drained = threading.Event()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._new_mode = new_file_mode()

    def connection_made(self, transport: DatagramTransport) -> None:
        self.transport = transport
        # room for a burst of requests (about 1.3 KiB of buffer each): a flood of them then costs a
        # legitimate client a refusal it can read, not a request the kernel silently dropped
        transport.set_buffer_sizes(rcvbuf=2 << 20)  # as the kernel counts it (2x what is asked), capped at rmem_max

    def _error(self, addr: Any, code: int, message: str) -> None:
        self.transport.sendto(tftp.encode_packet(tftp.Error(code, message)), addr)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        driver = self.transfers.get(addr)
        if driver is not None:
            is_request = data[:2] in (b"\x00\x01", b"\x00\x02")
            if self.settings.single_port and not is_request:
                driver.datagram(data, addr)
                return
            if not is_request or data == driver.request or not driver.finishing:
                # a retransmitted request (or a stray packet) for a transfer still running
                return
            # a new request from the port of a transfer that has nothing left but its last word:
            # the client has moved on
        if addr in self._waiting or (addr, data) in self.recent:
            return  # a client's retransmitted request (waiting, or that crossed our first answer)
        try:
            packet = tftp.parse_packet(data)
        except RemoteProtocolError as exc:
            self._error(addr, exc.hint or tftp.ErrorCode.ILLEGAL_OPERATION, str(exc))
            return
        if not isinstance(packet, tftp.Request):
            if not isinstance(packet, tftp.Error):
                self._error(addr, tftp.ErrorCode.UNKNOWN_TID, "unknown transfer ID")
            return
        if driver is not None:
            if driver.active:  # its final ACK may be queued, unread: wait for the transfer to end
                if not self.draining and self._wait(packet, addr, data):
                    return
                self.refused += 1
                self._error(addr, tftp.ErrorCode.NOT_DEFINED, _SHUTTING_DOWN if self.draining else _STILL_RUNNING)
                return
            driver.close()  # dallying: our final ACK reached the client
        self._request(packet, addr, data)

    def _request(self, packet: tftp.Request, addr: Any, raw: bytes, *, may_wait: bool = True) -> None:
        """Admit and start one request, wait for a slot about to be freed, or refuse it."""
        refusal = self._admit(addr)
        if refusal is not None:
            if may_wait and not self.draining and self._slot_ending_for(addr) and self._wait(packet, addr, raw):
                return
            self.refused += 1
            self._error(addr, tftp.ErrorCode.NOT_DEFINED, refusal)
            return
        self._open(packet, addr, raw)

    def _open(self, packet: tftp.Request, addr: Any, raw: bytes) -> None:
        """Start an admitted request; what stops it becomes the client's ERROR."""
        try:
            self._start(packet, addr, raw)
        except TftpAccessError as exc:
            self.failed += 1
            self._error(addr, exc.code, str(exc))
        except RemoteProtocolError as exc:
            self.failed += 1
            self._error(addr, exc.hint or tftp.ErrorCode.NOT_DEFINED, str(exc))
        except (OSError, SocklabError) as exc:
            self.failed += 1
            what = f"{'WRQ' if packet.write else 'RRQ'} {escape_peer_text(packet.filename)} from {addr[0]}:{addr[1]}"
            if isinstance(exc, SocklabError) or exc.errno in _OUT_OF_RESOURCES:
                # no descriptor, port or buffer for the transfer: the client may try again later
                self.log.append(f"{what}: refused, {escape_peer_text(str(exc))}")
                self._error(addr, tftp.ErrorCode.NOT_DEFINED, BUSY)
            else:
                self._error(addr, tftp.ErrorCode.ACCESS_VIOLATION, f"cannot open: {exc.strerror}")

    # ---- requests waiting for a slot that is about to be freed ----------------------------------------
    def _slot_ending_for(self, addr: Any) -> bool:
        """Does a transfer that holds a slot ``addr`` needs have nothing left but its last word?"""
        host, s = addr[0], self.settings
        if self.per_client.get(host, 0) >= s.max_transfers_per_client:
            held = [self.transfers[a] for a in self._of_host.get(host, ())]
        else:  # every slot is taken
            held = list(self.transfers.values())
        return any(d.active and d.finishing for d in held)

    def _wait(self, packet: tftp.Request, addr: Any, raw: bytes) -> bool:
        """Hold a request until a slot frees (a transfer ends) or ``PARK_WAIT`` passes; False if
        too many wait already (at most max_transfers_per_client per address, max_transfers in all)."""
        s, host = self.settings, addr[0]
        if len(self._waiting) >= s.max_transfers or \
                sum(1 for a in self._waiting if a[0] == host) >= s.max_transfers_per_client:
            return False
        waiting = _Waiting(packet, raw)
        waiting.timer = self.transport.call_later(PARK_WAIT, lambda: self._wait_over(addr, waiting))
        self._waiting[addr] = waiting
        self.parked += 1
        return True

    def _wake_waiting(self) -> None:
        """A transfer ended: try the waiting requests once the engine is done with it (next turn)."""
        if self._waiting and not self._wake_scheduled:
            self._wake_scheduled = True
            self.transport.call_later(0, self._retry_waiting)

    def _retry_waiting(self) -> None:
        self._wake_scheduled = False
        for addr, waiting in list(self._waiting.items()):
            if self._waiting.get(addr) is not waiting:
                continue
            busy = self.transfers.get(addr)
            if busy is not None:
                if busy.active:
                    continue  # the transfer from that port has not ended yet
                busy.close()  # dallying: the client has moved on
            if self._admit(addr) is None:
                self._stop_waiting(addr, waiting)
                self._open(waiting.packet, addr, waiting.raw)

    def _wait_over(self, addr: Any, waiting: _Waiting) -> None:
        """``PARK_WAIT`` passed: start the request if it can start now, else refuse it."""
        if self._waiting.get(addr) is not waiting:
            return
        self._stop_waiting(addr, waiting)
        busy = self.transfers.get(addr)
        if busy is not None:
            if not busy.finishing or busy.committing:
                self.refused += 1
                self._error(addr, tftp.ErrorCode.NOT_DEFINED, _STILL_RUNNING)
                return
            # the client moved on from that port, so it has the last block: our transfer's last
            # word was lost. End it without an ERROR (that port's next answer must be the new one's)
            busy.close()
        self._request(waiting.packet, addr, waiting.raw, may_wait=False)

    def _stop_waiting(self, addr: Any, waiting: _Waiting) -> None:
        del self._waiting[addr]
        if waiting.timer is not None:
            waiting.timer.cancel()

    def _refuse_waiting(self, message: str) -> None:
        for addr, waiting in list(self._waiting.items()):
            self._stop_waiting(addr, waiting)
            self.refused += 1
            self._error(addr, tftp.ErrorCode.NOT_DEFINED, message)

    # ---- limits --------------------------------------------------------------------------------------
    def _admit(self, addr: Any) -> str | None:
        """None if a new transfer from ``addr`` may start, else the reason sent in ERROR 0."""
        s = self.settings
        if self.draining:
            return _SHUTTING_DOWN
        if self.per_client.get(addr[0], 0) >= s.max_transfers_per_client:
            return f"too many transfers from your address (max_transfers_per_client {s.max_transfers_per_client})"
        if self.active >= s.max_transfers and not self._evict_one():
            return "server busy (max_transfers), try again later"
        return None

    def _evict_one(self) -> bool:
        """Every slot is taken: abort the transfer whose client never answered, longest silent first."""
        grace = min(1.0, self.settings.timeout)
        never = [d for d in self.transfers.values()
                 if d.active and d.machine.progress_count == 0 and d.idle_for() >= grace]
        if not never:
            return False
        victim = max(never, key=lambda d: d.idle_for())
        self.evicted += 1
        victim.abort("server full: your transfer never started and its slot was given to another client")
        return True

    def _slot_taken(self, addr: Any) -> Callable[[TransferDriver | None], None]:
        host = addr[0]
        self.active += 1
        self.per_client[host] = self.per_client.get(host, 0) + 1
        freed = False

        def free(driver: TransferDriver | None) -> None:
            nonlocal freed
            if freed:
                return
            freed = True
            if driver is not None:
                self.retransmissions += driver.machine.retransmissions
            self.active -= 1
            left = self.per_client.get(host, 1) - 1
            if left > 0:
                self.per_client[host] = left
            else:
                self.per_client.pop(host, None)
            if self.draining and self.active == 0:
                self.drained.set()
            self._wake_waiting()
        return free

    def _dally(self, driver: TransferDriver) -> None:
        """An ended upload keeps its socket to re-acknowledge a resent last block (RFC 1350
        section 6): bounded per address and in all, see :mod:`~socklab.apps.tftp.dallies`."""
        self.dallies.add(driver.machine.peer, driver)

    def _forget(self, addr: Any, driver: TransferDriver) -> None:
        if self.transfers.get(addr) is driver:
            del self.transfers[addr]
            mine = self._of_host.get(addr[0])
            if mine is not None:
                mine.discard(addr)
                if not mine:
                    del self._of_host[addr[0]]

    def _undally(self, addr: Any, driver: TransferDriver) -> None:
        self.dallies.remove(addr, driver)
        if addr in self._waiting:
            self._wake_waiting()

    # ---- one transfer ---------------------------------------------------------------------------------
    def _start(self, req: tftp.Request, addr: Any, raw: bytes) -> None:
        s = self.settings
        if req.mode == "mail":
            raise TftpAccessError(tftp.ErrorCode.ILLEGAL_OPERATION, "mail mode is not supported")
        path = resolve_path(s.root, req.filename, write=req.write, create=s.create, allow_write=s.allow_write)
        netascii = req.mode == "netascii"
        resource: Upload | Download
        if req.write:
            resource = Upload(path, s.max_file_size, netascii, replace=s.allow_write, new_mode=self._new_mode)
            tsize = None
        else:
            resource = Download(path, netascii)
            tsize = None if netascii else resource.size

        def negotiate(max_window: int) -> tuple[tftp.TransferOptions, dict[str, str]]:
            return tftp.negotiate(req, max_blksize=s.max_blksize, max_windowsize=max_window,
                                  default_timeout=s.timeout, max_timeout=s.max_timeout,
                                  max_tsize=s.max_file_size if req.write else None, tsize=tsize)
        try:
            run, oack = negotiate(s.max_windowsize)
        except BaseException:
            resource.finish(False)
            raise
        commit = self._committer(resource) if isinstance(resource, Upload) else None
        machine: Any = None

        def build(transport: DatagramTransport) -> Any:
            """The machine, once the transfer's socket is there: its window is what that socket holds."""
            nonlocal machine, run, oack
            # RFC 7440 section 3: grant no window our buffers cannot hold (a smaller one in the OACK)
            fits = size_for_window(transport, run.blksize, run.windowsize, receive=req.write, send=not req.write)
            if fits < run.windowsize:
                run, oack = negotiate(fits)
            if isinstance(resource, Upload):
                machine = tftp.Receiver(resource.write, run, peer=addr, max_retries=s.max_retries,
                                        hold_final_ack=True)
            else:
                machine = tftp.Sender(resource.read, run, peer=addr, max_retries=s.max_retries)
            return _guard(machine)

        def first() -> list[Any]:
            out: list[Any]
            if isinstance(machine, tftp.Receiver):
                out = machine.start(tftp.OAck(oack) if oack else None)
            else:
                out = machine.start_after_oack(tftp.OAck(oack)) if oack else machine.start()
            return out

        what = f"{'WRQ' if req.write else 'RRQ'} {escape_peer_text(req.filename)} from {addr[0]}:{addr[1]}"
        on_end = self._slot_taken(addr)

        def done(driver: TransferDriver) -> None:
            self._forget(addr, driver)
            self._undally(addr, driver)
            m = driver.machine
            key = (addr, raw)
            # ignore a late copy of the request for a while: a client that never heard us (no
            # progress) may resend it for its whole retry budget; one that answered could only have
            # resent it before its first answer - a copy still on its way, or unread, just after
            if key not in self.recent:
                self.recent.add(key)
                keep = s.timeout * (s.max_retries + 1) if m.progress_count == 0 else s.timeout
                self.transport.call_later(keep, lambda: self.recent.discard(key))
            if m.state is tftp.State.DONE:
                self.completed += 1
            else:
                self.failed += 1
            self.log.append(f"{what}: {m.state.value} {m.bytes} bytes, {m.retransmissions} retransmissions"
                            + (f" ({escape_peer_text(m.error)})" if m.error else ""))
            if driver.endpoint is not None:
                driver.endpoint.close()

        def make_driver(transport: DatagramTransport, endpoint: bool) -> TransferDriver:
            d = TransferDriver(build(transport), transport.sendto, transport.call_later, done, resource.finish,
                               commit=commit, stall_timeout=s.stall_timeout, on_end=on_end, on_dally=self._dally)
            d.request = raw
            if endpoint:
                d.endpoint = transport
            self.transfers[addr] = d
            self._of_host.setdefault(addr[0], set()).add(addr)
            return d

        if s.single_port:
            make_driver(self.transport, False).handle(first())
            return
        try:  # the transfer's own TID: a new port of the listener's host, on the listener's engine
            bind_datagram(Endpoint(self.transport.get_extra_info("sockname")[0], 0),
                          lambda: TransferEndpoint(lambda t: make_driver(t, True), first),
                          engine=self.engine, tracer=self.tracer)
        except BaseException:
            made = self.transfers.get(addr)
            if made is not None and made.request is raw:  # served, then refused by the engine
                made.discard()  # (select: fd >= 1024); bind_datagram closed the socket
                self._forget(addr, made)
            on_end(None)
            resource.finish(False)
            raise

    def _committer(self, upload: Upload) -> Callable[[Callable[[CommitResult], None]], None]:
        """Store ``upload`` on a worker thread; report back on the engine (never block the engine)."""

        def commit(callback: Callable[[CommitResult], None]) -> None:
            def work() -> None:
                result: CommitResult = None
                try:
                    upload.commit()
                except Refuse as exc:
                    result = (exc.code, str(exc))
                except Exception as exc:  # a bug must still answer the client, never hang it
                    result = (tftp.ErrorCode.NOT_DEFINED, f"cannot store the file: {exc}")
                with contextlib.suppress(Exception):  # the engine may have stopped meanwhile
                    self.engine.call_soon_threadsafe(lambda: callback(result))

            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="socklab-tftp-commit")
            self._executor.submit(work)
        return commit

    # ---- shutting down --------------------------------------------------------------------------------
    def begin_drain(self) -> None:
        """Refuse new requests; ``drained`` is set once the transfers in flight ended (on the engine)."""
        self.draining = True
        self._refuse_waiting(_SHUTTING_DOWN)
        if self.active == 0:
            self.drained.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        # the listener closed (shutdown): tell every client at once instead of letting it time out
        self.shutdown_all()

    def shutdown_all(self, message: str = "server shutting down") -> None:
        """Abort every transfer with an ERROR (runs on the engine)."""
        self._refuse_waiting(message)
        for driver in list(self.transfers.values()):
            driver.abort(message)

    def release_all(self) -> None:
        """After the engine stopped: let commits in progress end, then close every file still open."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        for driver in list(self.transfers.values()):
            driver.release()
        self.transfers.clear()
        self._of_host.clear()
        self._waiting.clear()
        self.dallies.clear()


def _guard(machine: Any) -> Any:
    """Make a write/read failure inside the machine an ERROR packet instead of an exception."""
    inner = machine.datagram_received

    def datagram_received(data: bytes, addr: Any) -> list[tuple[bytes, Any]]:
        try:
            return inner(data, addr)  # type: ignore[no-any-return]
        except Refuse as exc:
            return machine.abort(exc.code, str(exc))  # type: ignore[no-any-return]
        except OSError as exc:
            return machine.abort(tftp.ErrorCode.NOT_DEFINED, f"I/O error: {exc.strerror}")  # type: ignore[no-any-return]

    machine.datagram_received = datagram_received
    return machine


class _TftpLifecycle(Server):
    """A :class:`Server` whose graceful shutdown first lets the transfers in flight finish.

    The engine's own drain knows connections, not transfers: closing the listeners would close
    every transfer socket too. So: refuse new requests, wait (up to the grace period) until the
    transfers end, then shut down as every server does.
    """

    proto: TftpServer | None = None

    def shutdown(self, timeout: float | None = None) -> None:
        running = (self._thread is not None or self._foreground) and not self._shutdown_started
        proto = self.proto
        if running and proto is not None:
            grace = self.settings.shutdown_timeout if timeout is None else timeout
            start = time.monotonic()
            self.engine.call_soon_threadsafe(proto.begin_drain)
            proto.drained.wait(grace)
            timeout = max(0.0, grace - (time.monotonic() - start))
        super().shutdown(timeout)


def serve_tftp(settings: TftpSettings, tracer: Tracer | None = None) -> tuple[Server, TftpServer]:
    """Bind a TFTP server (not started yet); returns the Server and the listening protocol.

    Raises:
        UsageError: bad settings; NetworkError subclasses when binding fails.
    """
    srv = _TftpLifecycle(settings, tracer=tracer, label="tftp")
    proto = TftpServer(settings, srv.engine, tracer)
    srv.proto = proto
    srv.listen_udp(lambda: proto)
    srv.on_stop(proto.release_all)
    return srv, proto
