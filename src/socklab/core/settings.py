"""Settings: one dataclass per server drives both the library API and the CLI.

Why this exists: a limit that is named once, with its default and its help text, cannot drift
between the docs, the ``--help`` output and the code. Each field is declared with
:func:`setting`; ``socklab.cli.options.options_from(Cls)`` turns the fields into click options,
and the library takes the same dataclass. Apps extend :class:`ServerSettings` with their own
fields (``HttpSettings(ServerSettings)`` adds header limits, and so on).

Defaults are chosen for a server on the open internet, not for a benchmark: every limit is on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ClientSettings", "ServerSettings", "setting"]


def setting(default: Any, help: str, *, cli: str | None = None, choices: tuple[str, ...] | None = None,
            hidden: bool = False, metavar: str | None = None) -> Any:
    """Declare a settings field with its CLI help.

    Args:
        default: the default value (immutable, or a tuple).
        help: one sentence for ``--help`` and the docs; say the unit.
        cli: the option name when it differs from the field name (``"--tls-cert"``), or ``""``
            to keep the field out of the CLI.
        choices: allowed values for a string field.
        hidden: keep it out of ``--help`` (still accepted).
        metavar: how ``--help`` names the value.
    """
    return field(default=default, metadata={"help": help, "cli": cli, "choices": choices,
                                            "hidden": hidden, "metavar": metavar})


ENGINE_NAMES = ("iterative", "threads", "pool", "select", "poll", "epoll", "asyncio", "uvloop")


def best_engine() -> str:
    """The default engine: the best readiness API this platform has (epoll is Linux-only; poll is
    POSIX; select is everywhere)."""
    import select

    for name in ("epoll", "poll"):
        if hasattr(select, name):
            return name
    return "select"


@dataclass
class ServerSettings:
    """What every socklab server accepts. All limits are on by default."""

    host: str = setting("127.0.0.1", "Address to bind: an IPv4/IPv6 address, a name, or '::' for dual-stack.")
    port: int = setting(0, "Port to bind; 0 lets the kernel choose and socklab prints the real one.")
    unix: str | None = setting(None, "Bind a Unix domain socket at this path instead of host:port.",
                               metavar="PATH")
    engine: str = setting(best_engine(), "How to handle many clients (see `socklab engines`); the default is "
                         "the best the platform has (epoll on Linux).", choices=ENGINE_NAMES)
    backlog: int = setting(1024, "listen() backlog: connections the kernel queues before accept().")
    max_connections: int = setting(1000, "Connections served at once; the excess gets one line and a close.")
    idle_timeout: float = setting(300.0, "Close a connection silent for this many seconds (0 = never).")
    max_buffer: int = setting(256 * 1024, "Write-buffer high-water mark per connection, bytes: above it the "
                                          "server stops reading that peer.")
    shutdown_timeout: float = setting(10.0, "Graceful-shutdown deadline, seconds, before open connections are "
                                            "closed.")
    workers: int = setting(16, "Threads of the 'pool' engine.")
    queue_size: int = setting(64, "Accepted connections the 'pool' engine queues for a free worker; the "
                                  "excess is refused.")
    reuse_port: bool = setting(False, "Set SO_REUSEPORT so several processes can bind the same port.")
    tls_cert: str | None = setting(None, "Serve TLS with this certificate chain (PEM).", cli="--tls-cert",
                                   metavar="PEM")
    tls_key: str | None = setting(None, "Private key for --tls-cert (PEM; defaults to the cert file).",
                                  cli="--tls-key", metavar="PEM")
    overflow_message: bytes = setting(b"socklab: server full (max_connections reached), try again later\r\n",
                                      "Sent to a connection refused for max_connections.", cli="")

    def validate(self) -> None:
        """Raise :class:`~socklab.core.errors.UsageError` for impossible combinations."""
        from socklab.core.errors import UsageError

        if self.engine not in ENGINE_NAMES:
            raise UsageError(f"unknown engine {self.engine!r}; choose one of: {', '.join(ENGINE_NAMES)}")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"port {self.port} is out of range 0..65535")
        for name in ("max_connections", "max_buffer", "backlog", "workers", "queue_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1")
        if self.idle_timeout < 0 or self.shutdown_timeout < 0:
            raise UsageError("timeouts cannot be negative")
        if self.tls_key and not self.tls_cert:
            raise UsageError("--tls-key needs --tls-cert")

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


@dataclass
class ClientSettings:
    """What every socklab client accepts."""

    connect_timeout: float = setting(10.0, "Seconds to wait for the connection to be established.")
    tls: bool = setting(False, "Speak TLS to the server.")
    cafile: str | None = setting(None, "Trust this CA bundle (PEM) instead of the system's.", metavar="PEM")
    insecure: bool = setting(False, "Do not verify the server's certificate (testing only).")
    server_name: str | None = setting(None, "Name to verify in the server's certificate (SNI).", metavar="NAME")
