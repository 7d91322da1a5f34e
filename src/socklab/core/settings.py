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

__all__ = ["ClientSettings", "ServerSettings", "check_ranges", "option_name", "setting"]

TRANSPORTS = ("tcp", "udp", "unix")


def setting(default: Any, help: str, *, cli: str | None = None, choices: tuple[str, ...] | None = None,
            hidden: bool = False, metavar: str | None = None, min: float | None = None,
            max: float | None = None, output: bool | tuple[str, ...] = False,
            transports: tuple[str, ...] = TRANSPORTS) -> Any:
    """Declare a settings field with its CLI help and the values it accepts.

    Args:
        default: the default value (immutable, or a tuple).
        help: one sentence for ``--help`` and the docs; say the unit.
        cli: the option name when it differs from the field name (``"--tls-cert"``), or ``""``
            to keep the field out of the CLI.
        choices: allowed values for a string field.
        hidden: keep it out of ``--help`` (still accepted).
        metavar: how ``--help`` names the value.
        min, max: the accepted range (inclusive); the CLI refuses values outside it before any
            work starts, and :meth:`ServerSettings.validate` (via :func:`check_ranges`) refuses
            them from the library, both naming the option.
        output: a path socklab creates or writes: the CLI checks it is writable when parsing
            (a tuple: values that are not paths and pass as they are, e.g. ``(":memory:",)``).
        transports: the transports the setting applies to (``("tcp",)`` for a write buffer);
            a UDP command leaves the others out of its options and ``--help``.
    """
    return field(default=default, metadata={"help": help, "cli": cli, "choices": choices,
                                            "hidden": hidden, "metavar": metavar, "min": min, "max": max,
                                            "output": output, "transports": transports})


def option_name(f: dataclasses.Field[Any]) -> str:
    """The command-line name of a settings field: ``max_connections`` -> ``--max-connections``."""
    cli = f.metadata.get("cli")
    return cli if cli else "--" + f.name.replace("_", "-")


def check_ranges(settings: Any) -> None:
    """Raise :class:`~socklab.core.errors.UsageError` naming the option for a value out of its range."""
    from socklab.core.errors import UsageError

    for f in dataclasses.fields(settings):
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        value = getattr(settings, f.name)
        if (lo is None and hi is None) or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if lo is not None and value < lo:
            raise UsageError(f"{option_name(f)} is {value}: it must be at least {lo}")
        if hi is not None and value > hi:
            raise UsageError(f"{option_name(f)} is {value}: it must be at most {hi}")


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
    port: int = setting(0, "Port to bind; 0 lets the kernel choose and socklab prints the real one.",
                         min=0, max=65535)
    unix: str | None = setting(None, "Bind a Unix domain socket at this path instead of host:port.",
                               metavar="PATH", output=True, transports=("unix",))
    engine: str = setting(best_engine(), "How to handle many clients (see `socklab engines`); the default is "
                         "the best the platform has (epoll on Linux).", choices=ENGINE_NAMES)
    backlog: int = setting(1024, "listen() backlog: connections the kernel queues before accept().", min=1,
                            transports=("tcp", "unix"))
    max_connections: int = setting(1000, "Connections served at once; the excess gets one line and a close.",
                                    min=1, transports=("tcp", "unix"))
    idle_timeout: float = setting(300.0, "Close a connection silent for this many seconds (0 = never).",
                                   min=0, transports=("tcp", "unix"))
    max_buffer: int = setting(256 * 1024, "Write-buffer high-water mark per connection, bytes: above it the "
                                          "server stops reading that peer.", min=1,
                               transports=("tcp", "unix"))
    shutdown_timeout: float = setting(10.0, "Graceful-shutdown deadline, seconds, before open connections are "
                                            "closed.", min=0)
    workers: int = setting(16, "Threads of the 'pool' engine.", min=1, transports=("tcp", "unix"))
    queue_size: int = setting(64, "Accepted connections the 'pool' engine queues for a free worker; the "
                                  "excess is refused.", min=1, transports=("tcp", "unix"))
    reuse_port: bool = setting(False, "Set SO_REUSEPORT so several processes can bind the same port.",
                                transports=("tcp", "udp"))
    tls_cert: str | None = setting(None, "Serve TLS with this certificate chain (PEM).", cli="--tls-cert",
                                   metavar="PEM", transports=("tcp", "unix"))
    tls_key: str | None = setting(None, "Private key for --tls-cert (PEM; defaults to the cert file).",
                                  cli="--tls-key", metavar="PEM", transports=("tcp", "unix"))
    tls_self_signed: bool = setting(False, "Serve TLS with a certificate made at start, in memory (no --tls-cert "
                                           "needed); its SHA-256 fingerprint is printed for clients to pin "
                                           "(--pin SHA256).", cli="--tls-self-signed", transports=("tcp", "unix"))
    overflow_message: bytes = setting(b"socklab: server full (max_connections reached), try again later\r\n",
                                      "Sent to a connection refused for max_connections (not on a TLS listener, whose "
                                      "refused clients get only the close: plaintext would break their handshake).", cli="")

    def validate(self) -> None:
        """Raise :class:`~socklab.core.errors.UsageError` for impossible combinations."""
        from socklab.core.errors import UsageError

        if self.engine not in ENGINE_NAMES:
            raise UsageError(f"unknown engine {self.engine!r}; choose one of: {', '.join(ENGINE_NAMES)}")
        check_ranges(self)
        if self.tls_self_signed and self.tls_cert:
            raise UsageError(f"--tls-self-signed makes its own certificate: drop --tls-cert {self.tls_cert}")
        if self.tls_key and not self.tls_cert:
            raise UsageError("--tls-key needs --tls-cert")

    @property
    def serves_tls(self) -> bool:
        """The listeners speak TLS: ``--tls-cert``, or ``--tls-self-signed`` (whose certificate
        ``socklab.runtime.Server.tls_context`` makes)."""
        return bool(self.tls_cert) or self.tls_self_signed

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


@dataclass
class ClientSettings:
    """What every socklab client accepts."""

    connect_timeout: float = setting(10.0, "Seconds to wait for the connection to be established.",
                                     min=0)
    tls: bool = setting(False, "Speak TLS to the server.")
    cafile: str | None = setting(None, "Trust this CA bundle (PEM) instead of the system's.", metavar="PEM")
    insecure: bool = setting(False, "Do not verify the server's certificate (testing only).")
    server_name: str | None = setting(None, "Name to verify in the server's certificate (SNI).", metavar="NAME")
    pin: str | None = setting(None, "Accept only the server certificate with this SHA-256 fingerprint (as a "
                                    "--tls-self-signed server prints it); implies --tls and replaces the CA and "
                                    "name checks.", metavar="SHA256", transports=("tcp", "unix"))
    source: str | None = setting(None, "Bind this local address before connecting: HOST, HOST:PORT, [v6]:PORT "
                                       "or :PORT (netcat's -s and -p).", metavar="ADDR", transports=("tcp", "udp"))

    def validate(self) -> None:
        """Raise :class:`~socklab.core.errors.UsageError` naming the option for a bad value or pair."""
        from socklab.core.errors import UsageError
        from socklab.core.selfsigned import normalize_pin

        check_ranges(self)
        if self.pin is not None:
            normalize_pin(self.pin)
            if self.insecure:
                raise UsageError("--pin checks the certificate and --insecure skips the check: give one of them")
            if self.cafile:
                raise UsageError(f"--pin {self.pin} trusts that one certificate, not a CA: drop --cafile")
        self.source_address()

    @property
    def uses_tls(self) -> bool:
        """TLS was asked for: ``--tls``, or ``--pin`` (a fingerprint is only checked over TLS)."""
        return self.tls or self.pin is not None

    def source_address(self) -> tuple[str, int] | None:
        """``source`` as ``(host, port)`` (host ``""``: any address; port 0: the kernel picks), or None.

        Raises:
            UsageError: naming ``--source`` and the value.
        """
        from socklab.core.errors import UsageError

        text = self.source
        if text is None:
            return None
        host, port_s = text.strip(), ""
        if host.startswith("["):
            host, _, rest = host[1:].partition("]")
            if rest and not rest.startswith(":"):
                raise UsageError(f"--source {text!r}: write [v6addr]:PORT")
            port_s = rest[1:]
        elif host.count(":") == 1:
            host, port_s = host.split(":")
        if not host and not port_s:
            raise UsageError(f"--source {text!r}: give an address, HOST:PORT or :PORT")
        if not port_s:
            return host, 0
        if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
            raise UsageError(f"--source {text!r}: the port must be a number 0..65535")
        return host, int(port_s)

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)
