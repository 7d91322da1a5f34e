"""``socklab send``'s and ``socklab receive``'s settings, and what the receiver reports per entry."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from socklab.apps.transfer.sink import ALIGN
from socklab.core.errors import UsageError
from socklab.core.settings import ENGINE_NAMES, ClientSettings, ServerSettings, best_engine, setting
from socklab.protocols import transfer as tp

__all__ = ["FileReport", "ReceiveSettings", "SendSettings"]


@dataclass
class ReceiveSettings(ServerSettings):
    """``socklab receive``'s settings."""

    port: int = setting(tp.DEFAULT_PORT, "TCP port to listen on (transfer's own; `send --to HOST` connects to it; "
                                         "0: the kernel picks and the readiness line says).")
    dir: str = setting(".", "Destination directory; nothing is written outside it.", metavar="DIR")
    overwrite: bool = setting(False, "Replace existing files (a replaced file keeps its mode and owner). Without "
                                     "it an existing file is kept: one with the sender's content is verified and "
                                     "skipped, a different one refused, and the sender told why.")
    perms: bool = setting(True, "Give new files the sender's permission bits - rwxr-xr-x at most, masked by the "
                                "umask: never setuid, setgid, sticky, group or world write (--no-perms: the "
                                "receiver's default mode, 0666 & ~umask).")
    discard: bool = setting(False, "Verify and count the data but write nothing (benchmarks).")
    buffer_size: int = setting(tp.CHUNK_SIZE, "Bytes per receive buffer (4 of them per session; best: the "
                                              "chunk size, one hash call per buffer).")
    fsync: bool = setting(True, "fsync each file and its directory before reporting success.")
    idle_timeout: float = setting(60.0, "Close a session silent for this many seconds.")
    recv_lowat: int = setting(1 << 20, "SO_RCVLOWAT while a file's bytes stream: the engine wakes up once "
                                         "this much has arrived (fewer, larger reads; 0: off).")
    direct_io: bool = setting(True, "Write file data with O_DIRECT (no page-cache copy; falls back to "
                                    "buffered writes where the filesystem refuses it).")
    hash_on_recv: bool = setting(True, "Hash each read on the receiving thread right after recv_into, while "
                                       "its bytes are in the CPU cache (off: a worker thread hashes each "
                                       "filled buffer).")
    worker_threads: bool = setting(True, "Hash and write on worker threads, one each (off: on the "
                                         "receiving thread, no hand-offs but no overlap).")

    def validate(self) -> None:
        """Every usage error in one line naming the option and its value, before anything listens."""
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port {self.port}: must be within 0..65535")
        if not self.idle_timeout >= 0:  # also NaN
            raise UsageError(f"--idle-timeout {self.idle_timeout:g}: must be 0 or more seconds")
        if self.recv_lowat < 0:
            raise UsageError(f"--recv-lowat {self.recv_lowat}: must be 0 or more bytes")
        if self.buffer_size < ALIGN or self.buffer_size % ALIGN:
            raise UsageError(f"--buffer-size {self.buffer_size}: must be a multiple of {ALIGN} bytes")
        super().validate()
        if not self.discard and not Path(self.dir).is_dir():
            why = "does not exist" if not Path(self.dir).exists() else "is not a directory"
            raise UsageError(f"--dir {self.dir!r}: {why}")

    def check_writable(self) -> None:
        """``--dir`` must be a directory this process can create files in (tried, not guessed: root,
        a read-only mount, an ACL all answer the same way). For ``receive`` writing into it."""
        try:
            with tempfile.TemporaryFile(dir=self.dir, prefix=".socklab-probe-"):
                pass
        except OSError as exc:
            raise UsageError(f"--dir {self.dir!r}: cannot create files there ({exc.strerror or exc})") from None


@dataclass
class FileReport:
    """What happened to one entry."""

    name: str
    ok: bool
    bytes: int = 0
    resumed_from: int = 0
    error: str | None = None
    code: str | None = None


@dataclass
class SendSettings:
    """``socklab send``'s settings, and the sender's library API's (``send_to``, ``SendServer``).

    The fields with ``cli=""`` are the library's only: the command keeps their defaults.
    """

    host: str = setting("127.0.0.1", "Reverse mode: address to listen on.")
    port: int = setting(0, "Reverse mode: port (default 0: the kernel picks).")
    name: str = setting("stdin", "Name given to stdin ('-') on the receiver.")
    chunk_size: int = setting(tp.CHUNK_SIZE, "Bytes per verified chunk; a resume re-sends at most one.")
    connect_timeout: float = setting(10.0, "Seconds to wait for the receiver's TCP handshake.", cli="")
    stall_timeout: float = setting(0.0, "Give up when bytes waiting to go out have not moved for this many "
                                        "seconds: a receiver that vanished without FIN or RST (0: never).", cli="")
    engine: str = setting(best_engine(), "The engine the sender runs on (see `socklab engines`).", cli="",
                          choices=ENGINE_NAMES)

    def validate(self) -> None:
        """Every usage error in one line naming the option and its value, before anything connects."""
        if not 4096 <= self.chunk_size <= 1 << 30:
            raise UsageError(f"--chunk-size {self.chunk_size}: must be within 4096..1073741824 (1 GiB)")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port {self.port}: must be within 0..65535")
        for name in ("connect_timeout", "stall_timeout"):
            if not getattr(self, name) >= 0:  # also NaN
                raise UsageError(f"{name} {getattr(self, name):g}: must be 0 or more seconds")
        if self.engine not in ENGINE_NAMES:
            raise UsageError(f"unknown engine {self.engine!r}; choose one of: {', '.join(ENGINE_NAMES)}")

    def client(self) -> ClientSettings:
        """What connecting to a receiver needs (``send --to``)."""
        return ClientSettings(connect_timeout=self.connect_timeout)

    def listener(self) -> ServerSettings:
        """The one-connection server of reverse mode (``send --listen``): no idle timeout - a sender
        may stream a large file for longer than any idle limit while the receiver says nothing."""
        return ServerSettings(host=self.host, port=self.port, engine=self.engine, backlog=1, max_connections=1,
                              idle_timeout=0, shutdown_timeout=1.0)
