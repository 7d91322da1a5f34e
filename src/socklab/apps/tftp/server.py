"""The TFTP server: requests on one well-known port, each transfer on a socket of its own.

Why this exists: RFC 1350 section 4 makes every transfer a new "connection" identified by a pair
of transfer IDs (TIDs, the UDP ports): the server answers a request *from a new port*, and from
then on both sides check that each datagram comes from the right TID. This module shows that on
socklab's engines: the listening socket only takes RRQ/WRQ; for each one it opens a new UDP socket
(``open_udp_socket(host, 0)``) and serves it with ``engine.serve_datagram``, driven by the sans-I/O
machines of :mod:`socklab.protocols.tftp`. Retransmission timers are ``transport.call_later``.

``single_port`` is a documented deviation: every transfer is answered from the listening port and
told apart by the client's address. Proxies and NAT that only expect replies from the port they
sent to (including ``socklab tap``'s UDP relay, whose upstream socket is connected) need it.

Path policy, as strict as tftp-hpa's ``-s``: names are relative to ``--root`` (a leading ``/`` is
dropped); ``..`` components, NUL and anything whose real path (symlinks resolved) leaves the root
are refused with ERROR 2; a WRQ writes only existing files unless ``--create``; uploads land in a
temporary file renamed into place once complete, so a failed upload leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from socklab.core.errors import RemoteProtocolError, UsageError
from socklab.core.protocol import DatagramProtocol
from socklab.core.server import Server
from socklab.core.settings import ServerSettings, setting
from socklab.core.sockets import open_udp_socket
from socklab.core.trace import Tracer
from socklab.core.transport import DatagramTransport, TimerHandle
from socklab.protocols import tftp

__all__ = ["TftpAccessError", "TftpServer", "TftpSettings", "TransferDriver", "resolve_path"]


@dataclass
class TftpSettings(ServerSettings):
    """The TFTP server's settings (and limits)."""

    port: int = setting(69, "UDP port for requests (69 is TFTP's, and needs root); 0 lets the kernel choose.")
    root: str = setting(".", "Directory served; nothing outside it is readable or writable.", metavar="DIR")
    create: bool = setting(False, "Let WRQ create new files (otherwise only existing files are overwritten).")
    timeout: float = setting(1.0, "Retransmission timeout, seconds, unless the client negotiates one (RFC 2349).")
    max_retries: int = setting(5, "Timeouts in a row without progress before a transfer is abandoned.")
    max_blksize: int = setting(65464, "Largest blksize granted (RFC 2348 allows 8..65464).")
    max_windowsize: int = setting(64, "Largest windowsize granted (RFC 7440).")
    max_transfers: int = setting(1000, "Transfers at once; more requests get ERROR 0 'server busy'.")
    max_file_size: int = setting(1 << 32, "Largest upload accepted, bytes (ERROR 3 beyond).")
    single_port: bool = setting(False, "Answer every transfer from the listening port (an RFC 1350 "
                                       "deviation, for NAT and relays that expect it).")

    def validate(self) -> None:
        super().validate()
        if not Path(self.root).is_dir():
            raise UsageError(f"--root {self.root!r} is not a directory")
        if not tftp.MIN_BLKSIZE <= self.max_blksize <= tftp.MAX_BLKSIZE:
            raise UsageError(f"max_blksize must be within {tftp.MIN_BLKSIZE}..{tftp.MAX_BLKSIZE}")
        if not 1 <= self.max_windowsize <= tftp.MAX_WINDOW:
            raise UsageError("max_windowsize must be within 1..65535")
        if self.timeout <= 0 or self.max_retries < 1:
            raise UsageError("timeout must be positive and max_retries at least 1")


class TftpAccessError(Exception):
    """A request the path policy refuses; ``code`` is the TFTP error code to answer with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def resolve_path(root: str | Path, filename: str, *, write: bool, create: bool) -> Path:
    """Map a requested name onto a file under ``root``, or refuse it.

    Raises:
        TftpAccessError: code 2 (access violation) for escapes and forbidden writes, 1 (file not
            found) for a missing file to read, 6 for a WRQ onto something that is not a file.
    """
    if "\0" in filename or "\\" in filename:
        raise TftpAccessError(tftp.ErrorCode.ACCESS_VIOLATION, "illegal character in file name")
    parts = [p for p in filename.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise TftpAccessError(tftp.ErrorCode.ACCESS_VIOLATION, "access violation: name leaves the root")
    base = Path(os.path.realpath(root))
    candidate = base.joinpath(*parts)
    real = Path(os.path.realpath(candidate))
    if real != base and base not in real.parents:
        raise TftpAccessError(tftp.ErrorCode.ACCESS_VIOLATION, "access violation: name leaves the root")
    if not write:
        if not real.exists():
            raise TftpAccessError(tftp.ErrorCode.FILE_NOT_FOUND, "file not found")
        if not real.is_file():
            raise TftpAccessError(tftp.ErrorCode.ACCESS_VIOLATION, "not a regular file")
        return real
    if real.exists():
        if not real.is_file():
            raise TftpAccessError(tftp.ErrorCode.FILE_EXISTS, "exists and is not a regular file")
        return real
    if not create:
        raise TftpAccessError(tftp.ErrorCode.ACCESS_VIOLATION,
                              "access violation: file does not exist (the server runs without --create)")
    if not real.parent.is_dir():
        raise TftpAccessError(tftp.ErrorCode.FILE_NOT_FOUND, "directory not found")
    return real


class TransferDriver:
    """Runs one sans-I/O machine: sends what it returns, arms its timer, finishes the file.

    Args:
        machine: a :class:`~socklab.protocols.tftp.Sender` or ``Receiver``.
        sendto: sends one datagram to an address.
        call_later: the engine's timer.
        on_done: called once with the driver when the transfer ended (after dallying).
        finish: called with ``True`` (complete) or ``False`` before ``on_done`` (rename or delete).
    """

    def __init__(self, machine: Any, sendto: Callable[[bytes, Any], None],
                 call_later: Callable[[float, Callable[[], None]], TimerHandle],
                 on_done: Callable[[TransferDriver], None], finish: Callable[[bool], None]) -> None:
        self.machine = machine
        self._sendto = sendto
        self._call_later = call_later
        self._on_done = on_done
        self._finish = finish
        self._timer: TimerHandle | None = None
        self._gen = -1
        self._ended = False
        self._closed = False

    def handle(self, out: list[tuple[bytes, Any]]) -> None:
        """Send the machine's output, then finish, dally or (re)arm the timer as its state says."""
        for data, addr in out:
            self._sendto(data, addr)
        m = self.machine
        if m.finished and not self._ended:
            self._ended = True
            try:
                self._finish(m.state is tftp.State.DONE)
            except OSError as exc:  # the rename failed: tell the peer if still possible
                for data, addr in m.abort(tftp.ErrorCode.DISK_FULL, f"cannot store the file: {exc}"):
                    self._sendto(data, addr)
            if self._timer is not None:
                self._timer.cancel()
            if isinstance(m, tftp.Receiver) and m.state is tftp.State.DONE:
                # dally: our final ACK may be lost; stay as long as the sender may retry, to
                # acknowledge a resent last block (RFC 1350 section 6)
                self._timer = self._call_later(m.timeout * max(2, m.max_retries), self.close)
            else:
                self.close()
            return
        if m.timer_generation != self._gen and not m.finished:
            self._gen = m.timer_generation
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._call_later(m.timeout, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if not self._closed:
            self._gen = -1
            self.handle(self.machine.timer_expired())

    def datagram(self, data: bytes, addr: Any) -> None:
        """One datagram for this transfer."""
        if not self._closed:
            self.handle(self.machine.datagram_received(data, addr))

    def abort(self, message: str) -> None:
        """Stop now (server shutdown): ERROR 0 to the peer, partial upload removed."""
        if not self._ended:
            self.handle(self.machine.abort(tftp.ErrorCode.NOT_DEFINED, message))
        self.close()

    def release(self) -> None:
        """The engine stopped under us: close the file (a partial upload is removed), send nothing."""
        if not self._ended:
            self._ended = True
            with contextlib.suppress(OSError):
                self._finish(False)

    def close(self) -> None:
        """The transfer is over (idempotent): cancel the timer, tell the owner."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._on_done(self)


class _TransferEndpoint(DatagramProtocol):
    """The per-transfer socket (the server's new TID)."""

    def __init__(self, make_driver: Callable[[DatagramTransport], TransferDriver], first: Callable[[], list[Any]]) -> None:
        self._make_driver = make_driver
        self._first = first
        self.driver: TransferDriver | None = None

    def connection_made(self, transport: DatagramTransport) -> None:
        self.transport = transport
        self.driver = self._make_driver(transport)
        self.driver.handle(self._first())

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.driver is not None:
            self.driver.datagram(data, addr)

    def error_received(self, exc: BaseException) -> None:
        pass  # ICMP port unreachable from a vanished client: the retry limit ends the transfer


class _Upload:
    """A WRQ's destination: a temporary file in the target's directory, renamed when complete."""

    def __init__(self, path: Path, limit: int, netascii: bool) -> None:
        self.path = path
        self.limit = limit
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tftp-part", dir=path.parent)
        self.tmp = Path(tmp)
        self.file = os.fdopen(fd, "wb")
        self.size = 0
        self.decoder = tftp.NetasciiDecoder() if netascii else None
        self.machine: tftp.Receiver | None = None

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise _Refuse(tftp.ErrorCode.DISK_FULL, f"upload exceeds the server's limit ({self.limit} bytes)")
        if self.decoder is not None:
            data = self.decoder.decode(data)
        try:
            self.file.write(data)
        except OSError as exc:
            raise _Refuse(tftp.ErrorCode.DISK_FULL, f"cannot write: {exc.strerror}") from exc

    def finish(self, ok: bool) -> None:
        try:
            if ok:
                if self.decoder is not None:
                    self.file.write(self.decoder.decode(b"", final=True))
                self.file.flush()
                os.fsync(self.file.fileno())
                self.file.close()
                os.replace(self.tmp, self.path)
                return
        finally:
            if not self.file.closed:
                self.file.close()
            if not ok:
                with contextlib.suppress(FileNotFoundError):
                    self.tmp.unlink()


class _Refuse(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Download:
    """An RRQ's source; netascii converts on the fly (RFC 1350 section 1)."""

    def __init__(self, path: Path, netascii: bool) -> None:
        self.file = open(path, "rb")  # noqa: SIM115 - closed in finish()
        self.size = os.fstat(self.file.fileno()).st_size
        self.encoder = tftp.NetasciiEncoder() if netascii else None
        self._pending = b""

    def read(self, n: int) -> bytes:
        if self.encoder is None:
            return self.file.read(n)
        while len(self._pending) < n:
            raw = self.file.read(max(n, 4096))
            if not raw:
                break
            self._pending += self.encoder.encode(raw)
        out, self._pending = self._pending[:n], self._pending[n:]
        return out

    def finish(self, ok: bool) -> None:
        self.file.close()


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
        # requests whose transfer just ended: a late retransmission of one must not start it again
        self.recent: set[tuple[Any, bytes]] = set()
        self.completed = 0
        self.failed = 0
        self.log: list[str] = []

    def connection_made(self, transport: DatagramTransport) -> None:
        self.transport = transport

    def _error(self, addr: Any, code: int, message: str) -> None:
        self.transport.sendto(tftp.encode_packet(tftp.Error(code, message)), addr)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        driver = self.transfers.get(addr)
        if driver is not None:
            if self.settings.single_port and data[:2] not in (b"\x00\x01", b"\x00\x02"):
                driver.datagram(data, addr)  # (a repeated RRQ/WRQ is the client's retransmission)
            return  # per-TID mode: a retransmitted request for a transfer already running
        if (addr, data) in self.recent:
            return  # a client's retransmitted request that crossed our first answer
        try:
            packet = tftp.parse_packet(data)
        except RemoteProtocolError as exc:
            self._error(addr, exc.hint or tftp.ErrorCode.ILLEGAL_OPERATION, str(exc))
            return
        if not isinstance(packet, tftp.Request):
            if not isinstance(packet, tftp.Error):
                self._error(addr, tftp.ErrorCode.UNKNOWN_TID, "unknown transfer ID")
            return
        if len(self.transfers) >= self.settings.max_transfers:
            self._error(addr, tftp.ErrorCode.NOT_DEFINED, "server busy (max_transfers), try again later")
            return
        try:
            self._start(packet, addr, data)
        except TftpAccessError as exc:
            self.failed += 1
            self._error(addr, exc.code, str(exc))
        except RemoteProtocolError as exc:
            self.failed += 1
            self._error(addr, exc.hint or tftp.ErrorCode.NOT_DEFINED, str(exc))
        except OSError as exc:
            self.failed += 1
            self._error(addr, tftp.ErrorCode.ACCESS_VIOLATION, f"cannot open: {exc.strerror}")

    def _start(self, req: tftp.Request, addr: Any, raw: bytes) -> None:
        s = self.settings
        if req.mode == "mail":
            raise TftpAccessError(tftp.ErrorCode.ILLEGAL_OPERATION, "mail mode is not supported")
        path = resolve_path(s.root, req.filename, write=req.write, create=s.create)
        netascii = req.mode == "netascii"
        resource: _Upload | _Download
        if req.write:
            run, oack = tftp.negotiate(req, max_blksize=s.max_blksize, max_windowsize=s.max_windowsize,
                                       default_timeout=s.timeout, max_tsize=s.max_file_size)
            upload = _Upload(path, s.max_file_size, netascii)
            resource = upload
            machine: Any = tftp.Receiver(upload.write, run, peer=addr, max_retries=s.max_retries)

            def first() -> list[Any]:
                out: list[Any] = machine.start(tftp.OAck(oack) if oack else None)
                return out
        else:
            download = _Download(path, netascii)
            resource = download
            run, oack = tftp.negotiate(req, max_blksize=s.max_blksize, max_windowsize=s.max_windowsize,
                                       default_timeout=s.timeout,
                                       tsize=None if netascii else download.size)
            machine = tftp.Sender(download.read, run, peer=addr, max_retries=s.max_retries)

            def first() -> list[Any]:
                out: list[Any] = machine.start_after_oack(tftp.OAck(oack)) if oack else machine.start()
                return out
        what = f"{'WRQ' if req.write else 'RRQ'} {req.filename} from {addr[0]}:{addr[1]}"

        def done(driver: TransferDriver) -> None:
            self.transfers.pop(addr, None)
            key = (addr, raw)
            self.recent.add(key)
            self.transport.call_later(s.timeout * (s.max_retries + 1), lambda: self.recent.discard(key))
            m = driver.machine
            if m.state is tftp.State.DONE:
                self.completed += 1
            else:
                self.failed += 1
            self.log.append(f"{what}: {m.state.value} {m.bytes} bytes, {m.retransmissions} retransmissions"
                            + (f" ({m.error})" if m.error else ""))
            endpoint = getattr(driver, "endpoint", None)
            if endpoint is not None:
                endpoint.close()

        def finish(ok: bool) -> None:
            resource.finish(ok)

        guarded = _guard(machine)
        if s.single_port:
            driver = TransferDriver(guarded, self.transport.sendto, self.transport.call_later, done, finish)
            self.transfers[addr] = driver
            driver.handle(first())
            return
        host = self.transport.get_extra_info("sockname")[0]
        try:
            sock = open_udp_socket(host, 0, tracer=self.tracer)
        except Exception:
            resource.finish(False)
            raise

        def make_driver(transport: DatagramTransport) -> TransferDriver:
            d = TransferDriver(guarded, transport.sendto, transport.call_later, done, finish)
            d.endpoint = transport  # type: ignore[attr-defined]
            self.transfers[addr] = d
            return d

        self.engine.serve_datagram(sock, lambda: _TransferEndpoint(make_driver, first))

    def connection_lost(self, exc: BaseException | None) -> None:
        # the listener closed (shutdown): tell every client at once instead of letting it time out
        self.shutdown_all()

    def shutdown_all(self, message: str = "server shutting down") -> None:
        """Abort every transfer with an ERROR (runs on the engine)."""
        for driver in list(self.transfers.values()):
            driver.abort(message)

    def release_all(self) -> None:
        """After the engine stopped: close every file still open."""
        for driver in list(self.transfers.values()):
            driver.release()
        self.transfers.clear()


def _guard(machine: Any) -> Any:
    """Make a write/read failure inside the machine an ERROR packet instead of an exception."""
    inner = machine.datagram_received

    def datagram_received(data: bytes, addr: Any) -> list[tuple[bytes, Any]]:
        try:
            return inner(data, addr)  # type: ignore[no-any-return]
        except _Refuse as exc:
            return machine.abort(exc.code, str(exc))  # type: ignore[no-any-return]
        except OSError as exc:
            return machine.abort(tftp.ErrorCode.NOT_DEFINED, f"I/O error: {exc.strerror}")  # type: ignore[no-any-return]

    machine.datagram_received = datagram_received
    return machine


def serve_tftp(settings: TftpSettings, tracer: Tracer | None = None) -> tuple[Server, TftpServer]:
    """Bind a TFTP server (not started yet); returns the Server and the listening protocol.

    Raises:
        UsageError: bad settings; NetworkError subclasses when binding fails.
    """
    srv = Server(settings, tracer=tracer, label="tftp")
    proto = TftpServer(settings, srv.engine, tracer)
    srv.listen_udp(lambda: proto)
    srv.on_stop(proto.release_all)
    return srv, proto
