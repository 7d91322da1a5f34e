"""The peer node's settings: every limit and timer of the mesh named once, with its default.

Why this exists: ``socklab peer``'s options, the library API (:class:`~socklab.apps.peer.node.PeerNode`)
and docs/peer.md all come from this one dataclass (see :mod:`socklab.core.settings`).
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from socklab.core.errors import UsageError
from socklab.core.settings import ServerSettings, setting

__all__ = ["WILDCARD_HOSTS", "PeerSettings", "check_control_socket", "control_dir", "default_control_path", "prepare_control_dir"]


WILDCARD_HOSTS = ("", "0.0.0.0", "::")  # a listen address that means "every interface"


def control_dir() -> Path:
    """Where control sockets live: ``$XDG_RUNTIME_DIR/socklab`` or ``/tmp/socklab-<uid>``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "socklab"
    return Path(f"/tmp/socklab-{os.getuid()}")


def default_control_path(name: str) -> str:
    """The control socket of the node called ``name`` (``.../peer-<name>.sock``)."""
    return str(control_dir() / f"peer-{name}.sock")


def _check_dir(d: Path) -> None:
    """Refuse a control directory another local user could use to swap the socket."""
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"the control directory {d} is not a directory (a symlink?): remove it, or pass --control")
    if st.st_uid not in (os.getuid(), 0):
        raise UsageError(f"the control directory {d} belongs to uid {st.st_uid}, not to you: another user could "
                         "swap the node's socket there; remove it, or pass --control PATH in a directory of yours")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise UsageError(f"the control directory {d} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                         "another user could swap the node's socket there; chmod 700 it, or pass --control")


def prepare_control_dir(sock_path: str) -> None:
    """Create the control socket's directory, 0700, and check it is safe to put the socket in.

    The default directory (:func:`control_dir`) must be this user's and 0700: one found with wider
    modes is tightened if it is ours and refused if it is not. A directory named by ``--control``
    must be this user's (or root's) and not writable by others unless sticky (as ``/tmp`` is).

    Raises:
        UsageError: the directory is a symlink, another user's, or writable by others.
    """
    d = Path(sock_path).parent
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    if d == control_dir():
        st = os.lstat(d)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(d, 0o700)
        elif stat.S_ISDIR(st.st_mode) and st.st_uid != os.getuid():
            raise UsageError(f"the control directory {d} belongs to uid {st.st_uid}, not to you: another user "
                             "could swap the node's socket there; remove it, or pass --control")
    _check_dir(d)


def check_control_socket(sock_path: str) -> None:
    """Before a command goes to a node: the socket must be this user's, in a directory others cannot write.

    Raises:
        UsageError: the path is not a socket, belongs to another user, or lies in an unsafe directory.
    """
    _check_dir(Path(sock_path).parent)
    try:
        st = os.lstat(sock_path)
    except FileNotFoundError:
        return  # connecting will say "no node listens there"
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError(f"{sock_path} is not a socket: no node's control socket is there")
    if st.st_uid != os.getuid():
        raise UsageError(f"the control socket {sock_path} belongs to uid {st.st_uid}, not to you: refusing to send "
                         "it commands (another user may have put it there)")


@dataclass
class PeerSettings(ServerSettings):
    """What ``socklab peer`` accepts on top of every server's settings (host/port come from --listen)."""

    name: str = setting("", "This node's name in the mesh (a letter or _ then letters, digits, _ or -).")
    hop_limit: int = setting(8, "Hops a message may travel before it is no longer forwarded.")
    history: int = setting(200, "Recent messages kept for late joiners (the catch-up ring).")
    catchup: int = setting(100, "Messages asked from each new neighbour when a link comes up.")
    seen_cache: int = setting(4096, "Message ids remembered to drop duplicates (LRU).")
    seen_max_age: float = setting(600.0, "Seconds a message id is remembered (0 = until evicted).")
    max_neighbours: int = setting(8, "Links this node opens by itself; it still accepts others' links.")
    ping_interval: float = setting(2.0, "Seconds between PINGs on each link (RTT and liveness).")
    link_timeout: float = setting(6.0, "A link silent for this many seconds is dropped (and redialled).")
    redial_base: float = setting(0.5, "First redial delay, seconds; doubles each failure (with jitter).")
    redial_max: float = setting(15.0, "Longest redial delay, seconds.")
    connect_timeout: float = setting(5.0, "Seconds to wait for a neighbour's TCP handshake.")
    group: str = setting("239.255.77.77", "Multicast group of --discover announces: IPv4 (224.0.0.0/4) or "
                                          "IPv6 (ff00::/8, e.g. ff15::7777 with an IPv6 --listen).")
    discovery_port: int = setting(7799, "UDP port of --discover announces.")
    announce_interval: float = setting(2.0, "Seconds between --discover announces.")
    max_frame: int = setting(64 * 1024, "Longest frame accepted from a neighbour, bytes.")
    max_text: int = setting(4096, "Longest message typed at the prompt, bytes.")
    transfer_timeout: float = setting(30.0, "Seconds a file transfer may stall (no fetcher, no progress) "
                                            "before it is abandoned.")
    cafile: str | None = setting(None, "With --tls-cert: the mesh's CA (PEM). Links are TLS both ways and "
                                       "only nodes whose certificate this CA signed can link.", metavar="PEM")
    downloads: str = setting(".", "Directory fetched files are written to.", metavar="DIR")
    control: str | None = setting(None, "Control socket path (default: $XDG_RUNTIME_DIR/socklab/peer-NAME.sock "
                                        "or /tmp/socklab-UID/peer-NAME.sock).", metavar="PATH")
    join: tuple[str, ...] = setting((), "A node to link to at start (repeatable); redialled with backoff if lost.",
                                    metavar="HOST:PORT")
    discover: bool = setting(False, "Find other nodes with UDP multicast announces (--group, --discovery-port).")

    def validate(self) -> None:
        super().validate()
        from socklab.protocols.chat import check_nick

        try:
            check_nick(self.name)
        except Exception as exc:
            raise UsageError(f"--name: {exc}") from None
        for field in ("hop_limit", "seen_cache", "max_neighbours", "max_frame", "max_text"):
            if getattr(self, field) < 1:
                raise UsageError(f"{field} must be at least 1")
        if self.hop_limit > 255:
            raise UsageError("hop_limit must be at most 255")
        for field in ("ping_interval", "link_timeout", "redial_base", "redial_max", "announce_interval",
                      "connect_timeout", "transfer_timeout"):
            if getattr(self, field) <= 0:
                raise UsageError(f"{field} must be positive")
        if self.link_timeout <= self.ping_interval:
            raise UsageError("link_timeout must be longer than ping_interval")
        try:
            if not ipaddress.ip_address(self.group).is_multicast:
                raise ValueError
        except ValueError:
            raise UsageError(f"--group {self.group!r} is not a multicast address (224.0.0.0/4 or ff00::/8)") from None
        if self.tls_self_signed and self.cafile:
            raise UsageError("--cafile admits nodes a CA signed, and a --tls-self-signed node has no CA: give "
                             "--tls-cert with --cafile (a closed mesh), or --tls-self-signed alone (encrypted)")
        if bool(self.tls_cert) != bool(self.cafile):
            raise UsageError("a TLS mesh needs both --tls-cert (this node's certificate) and --cafile (the CA "
                             "that signed every node's certificate)")

    @property
    def control_path(self) -> str:
        return self.control or default_control_path(self.name)
