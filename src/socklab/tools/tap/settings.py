"""The tap's settings: one object for the library (``Tap(settings)``) and for ``socklab tap run``.

Why this exists: every server in socklab is configured by one dataclass whose fields are declared
once with :func:`~socklab.core.settings.setting` - their help text, range and the transports they
apply to - and become the command's options through :func:`socklab.cli.options.options_from`.
The tap is a server too (it listens, it has connections, it shuts down), so its settings extend
:class:`~socklab.core.settings.ServerSettings` with where it relays to, the faults it injects and
TLS on either side, instead of the command re-typing ``--engine``, TLS and timeouts and the
library taking a dozen loose arguments.

What is *not* a setting: the observers (hexdump, pcapng writer, recorder - objects with files), the
tracer, and an ``ssl.SSLContext`` built by the caller; :class:`~socklab.tools.tap.Tap` takes those
beside its settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from socklab.core.errors import UsageError
from socklab.core.settings import ServerSettings, setting
from socklab.core.sockets import Endpoint, parse_endpoint
from socklab.protocols.faults import Fault

__all__ = ["REACTORS", "TapSettings", "endpoint_of"]

#: the engines the tap runs on: its relay, splice pump and timers are the reactor's
REACTORS = ("epoll", "poll", "select")


@dataclass
class TapSettings(ServerSettings):
    """Where the tap listens (``host``/``port``) and relays to, what it breaks, and TLS on either side.

    A server's settings, with no idle timeout by default (a hung connection is often the point).
    ``faults`` takes :class:`~socklab.protocols.faults.Fault` objects or their specs
    (``"latency:downstream,latency=100"``, as ``--fault`` does); specs are parsed on construction.
    """

    engine: str = setting("epoll", "The reactor the relay runs on.", choices=REACTORS)
    max_connections: int = setting(10000, "Connections relayed at once.", min=1, transports=("tcp",))
    idle_timeout: float = setting(0.0, "Close a connection silent for this many seconds (0 = never).", min=0,
                                  transports=("tcp",))
    tls_cert: str | None = setting(None, "Terminate clients' TLS with this certificate chain: the tap sees the "
                                         "plaintext.", cli="--tls-cert", metavar="PEM", transports=("tcp",))
    tls_key: str | None = setting(None, "Private key for --tls-cert (default: the cert file).", cli="--tls-key",
                                  metavar="PEM", transports=("tcp",))
    tls_self_signed: bool = setting(False, "Terminate clients' TLS with a certificate made at start, in memory "
                                           "(no --tls-cert needed); its SHA-256 fingerprint is printed for clients "
                                           "to pin (--pin SHA256).", cli="--tls-self-signed", transports=("tcp",))
    target: str | None = setting(None, "Where to relay to (needed with LISTEN).", cli="--to", metavar="HOST:PORT")
    udp: bool = setting(False, "Relay UDP datagrams (one upstream socket per client).")
    faults: tuple[Fault, ...] = setting(
        (), "KIND[:DIRECTION][,key=value...], e.g. latency:downstream,latency=100,jitter=10 (repeatable; see "
            "`socklab tap faults`). Units are toxiproxy's: ms, but bandwidth rate in KB/s (was bytes/s) and "
            "slicer delay in microseconds (was ms).", cli="--fault", metavar="SPEC")
    seed: int | None = setting(None, "Seed of the fault schedule: the same seed replays the same faults.")
    ctl: str | None = setting(None, "Serve the control API on this port, on 127.0.0.1 unless HOST says otherwise "
                                    "(0: any free port; printed at start). A HOST that is not loopback lets other "
                                    "machines change the faults: a warning says so.", metavar="[HOST:]PORT")
    connect_timeout: float = setting(10.0, "Seconds to reach the target for each client (more than 0).", min=0,
                                     transports=("tcp",))
    to_tls: bool = setting(False, "Speak TLS to the target (verified against --cafile or the system's CAs).",
                           transports=("tcp",))
    cafile: str | None = setting(None, "With --to-tls: trust this CA bundle.", metavar="PEM", transports=("tcp",))
    insecure: bool = setting(False, "With --to-tls: do not verify the target (testing only).", transports=("tcp",))
    to_server_name: str | None = setting(None, "With --to-tls: the name to verify in the target's certificate "
                                               "(default: the --to host).", metavar="NAME", transports=("tcp",))
    pin: str | None = setting(None, "Accept only the target certificate with this SHA-256 fingerprint (as a "
                                    "--tls-self-signed server prints it); implies --to-tls and replaces the CA and "
                                    "name checks.", metavar="SHA256", transports=("tcp",))
    splice: bool = setting(True, "Move the bytes of connections with nothing to show or break with splice(2), "
                                 "zero copy; --no-splice copies them through Python.", transports=("tcp",))
    udp_flow_timeout: float = setting(60.0, "Forget a UDP peer (and its upstream socket) after this many seconds "
                                            "without a datagram.", min=0, transports=("udp",))

    def __post_init__(self) -> None:
        self.faults = tuple(f if isinstance(f, Fault) else Fault.parse(str(f)) for f in self.faults)

    @property
    def upstream_uses_tls(self) -> bool:
        """The tap speaks TLS to the target: ``--to-tls``, or ``--pin`` (a fingerprint is checked over TLS)."""
        return self.to_tls or self.pin is not None

    @property
    def transport(self) -> str:
        """``udp`` or ``tcp``: what this tap relays."""
        return "udp" if self.udp else "tcp"

    def validate(self) -> None:
        """Raise :class:`~socklab.core.errors.UsageError` for impossible values or combinations."""
        super().validate()
        if self.engine not in REACTORS:
            raise UsageError(f"the tap runs on a reactor engine (epoll, poll, select), not {self.engine!r}")
        if self.connect_timeout <= 0:
            raise UsageError(f"--connect-timeout is {self.connect_timeout:g}: it must be more than 0")
        if self.udp and (self.serves_tls or self.upstream_uses_tls):
            raise UsageError("TLS is for TCP relays (there is no TLS over plain UDP)")
        if (self.cafile or self.insecure or self.to_server_name) and not self.upstream_uses_tls:
            raise UsageError("--cafile, --insecure and --to-server-name are for --to-tls")
        if self.pin is not None:
            from socklab.core.selfsigned import normalize_pin

            normalize_pin(self.pin)
            if self.insecure:
                raise UsageError("--pin checks the target's certificate and --insecure skips the check: give one")
            if self.cafile:
                raise UsageError(f"--pin {self.pin} trusts that one certificate, not a CA: drop --cafile")
        for f in self.faults:
            if f.transport not in ("any", self.transport):
                raise UsageError(f"fault {f.kind} is a {f.transport.upper()} fault; "
                                 f"this tap relays {self.transport.upper()}")

    def with_fields(self, **fields: Any) -> TapSettings:
        """A copy with ``fields`` changed; ``listen`` and ``target`` may be ``(host, port)``,
        ``"HOST:PORT"`` or an :class:`~socklab.core.sockets.Endpoint` (``listen`` sets host and port).

        Raises:
            TypeError: a name that is not a setting; UsageError: a bad address or fault spec.
        """
        changes = dict(fields)
        if "listen" in changes:
            at = endpoint_of(changes.pop("listen"), "listen")
            changes.update(host=at.host, port=at.port)
        if changes.get("target") is not None:
            changes["target"] = str(endpoint_of(changes["target"], "target"))
        if "faults" in changes:
            changes["faults"] = tuple(changes["faults"])
        result: TapSettings = self.replace(**changes)
        return result


def endpoint_of(value: Any, what: str) -> Endpoint:
    """``(host, port)``, ``"HOST:PORT"`` (127.0.0.1 when the host is left out) or an Endpoint, as an Endpoint."""
    if isinstance(value, Endpoint):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        return Endpoint(str(value[0]), int(value[1]))
    if isinstance(value, str):
        return parse_endpoint(value)
    raise UsageError(f"bad {what} address {value!r}")
