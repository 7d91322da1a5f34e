"""The discovery socket: a UDP socket in a multicast group, served by the node's own engine.

Why this exists: :mod:`socklab.protocols.discovery` decides what announces mean; this module does
the socket part a learner has to get right once - the options that make multicast work:

- ``SO_REUSEADDR``/``SO_REUSEPORT`` so several nodes on one host can bind the group's port (every
  one of them receives each multicast datagram);
- bind to the *group* address, so only that group's datagrams arrive (not unicast to the port);
- ``IP_ADD_MEMBERSHIP`` (group + local interface address): the kernel joins the group on that
  interface and answers IGMP queries (RFC 1112 section 7);
- ``IP_MULTICAST_IF``: send announces out of the interface we listen on, not the default route's;
- ``IP_MULTICAST_TTL`` 1: announces never cross a router (RFC 1112 section 6.1);
- ``IP_MULTICAST_LOOP`` on: other nodes on this same host hear us too.

The interface is the node's ``--listen`` address when it is a specific IPv4 address (in the
network-namespace tests each node has its own), else the kernel's choice (``INADDR_ANY``).

An IPv6 group (``--group ff15::7777``, say) takes the same steps with their IPv6 names
(RFC 3493 section 5.2): ``IPV6_JOIN_GROUP`` with an interface *index* instead of an address,
``IPV6_MULTICAST_IF``, ``IPV6_MULTICAST_HOPS`` 1, ``IPV6_MULTICAST_LOOP``. The index is that of the
interface holding the node's ``--listen`` address (read from ``/proc/net/if_inet6``), or 0 for
the kernel's choice. The group's scope is in its address: ``ff02::`` link-local, ``ff05::``
site-local, ``ff15::`` a transient site-local group like the IPv4 default's organisation scope.
"""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING, Any

from socklab.core.errors import translate_oserror
from socklab.core.protocol import DatagramProtocol
from socklab.core.transport import DatagramTransport
from socklab.protocols.discovery import Announce, Discovery
from socklab.protocols.gossip import Member

if TYPE_CHECKING:
    from socklab.apps.peer.node import PeerNode

__all__ = ["DiscoveryEndpoint", "open_multicast_socket", "start_discovery"]


def interface_index(address: str) -> int:
    """The index of the interface that holds IPv6 ``address`` (0 when none or unknown: the kernel chooses)."""
    try:
        want = socket.inet_pton(socket.AF_INET6, address).hex()
        with open("/proc/net/if_inet6", encoding="ascii") as table:  # addr ifindex prefix scope flags name
            for line in table:
                fields = line.split()
                if fields and fields[0] == want:
                    return int(fields[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def open_multicast_socket(group: str, port: int, interface: str = "0.0.0.0") -> socket.socket:
    """A UDP socket bound to ``group:port``, member of ``group`` on ``interface``, TTL 1, loop on.

    ``group`` may be IPv4 (``interface``: an address of ours, or ``0.0.0.0``) or IPv6
    (``interface``: an IPv6 address of ours, or ``::``). The two families take the same steps,
    under their own option names (the lists below).

    Raises:
        NetworkError, AddressInUse: one-line reasons (no route for multicast, say).
    """
    if ":" in group:
        index = interface_index(interface) if interface not in ("", "::", "0.0.0.0") else 0
        steps: list[tuple[int, Any]] = [
            (socket.IPV6_JOIN_GROUP, socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", index)),
            *([(socket.IPV6_MULTICAST_IF, index)] if index else []),
            (socket.IPV6_MULTICAST_HOPS, 1),
            (socket.IPV6_MULTICAST_LOOP, 1),
        ]
        # the scope id in the bound address matters for link-local groups (ff02::)
        return _multicast_socket(socket.AF_INET6, (group, port, 0, index), socket.IPPROTO_IPV6, steps,
                                 f"joining multicast group [{group}]:{port} on {interface or '::'}")
    steps = [
        (socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton(interface)),
        *([(socket.IP_MULTICAST_IF, socket.inet_aton(interface))] if interface != "0.0.0.0" else []),
        (socket.IP_MULTICAST_TTL, 1),
        (socket.IP_MULTICAST_LOOP, 1),
    ]
    return _multicast_socket(socket.AF_INET, (group, port), socket.IPPROTO_IP, steps,
                             f"joining multicast group {group}:{port} on {interface}")


def _multicast_socket(family: int, address: tuple[Any, ...], level: int, steps: list[tuple[int, Any]],
                      what: str) -> socket.socket:
    """Share the port (every node on this host gets each datagram), bind the group, then ``steps``."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        for option, value in steps:
            sock.setsockopt(level, option, value)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise translate_oserror(exc, what) from exc
    return sock


class DiscoveryEndpoint(DatagramProtocol):
    """Sends this node's announce every ``announce_interval`` and reports the others' to the node."""

    def __init__(self, node: PeerNode, logic: Discovery) -> None:
        self.node = node
        self.logic = logic
        self.transport: DatagramTransport | None = None  # type: ignore[assignment]
        self.heard: dict[str, str] = {}  # node id -> listen address, for status
        self.send_errors = 0

    def connection_made(self, transport: DatagramTransport) -> None:
        self.transport = transport

    def tick(self) -> None:
        """Announce now and schedule the next announce."""
        if self.node.stopping or self.transport is None or self.transport.is_closing():
            return
        for data, addr in self.logic.announce():
            try:
                self.transport.sendto(data, addr)
            except Exception:  # no multicast route yet: try again next tick
                self.send_errors += 1
        self.node.engine.call_later(self.node.settings.announce_interval, self.tick)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        ann = self.logic.datagram_received(data, addr)
        if ann is None:
            return
        if ann.id not in self.heard:
            self.node.log(f"discovered {ann.name} at {ann.listen}")
            if len(self.heard) >= 4096:  # ids are per run: restarts add new ones; stay bounded
                self.heard.clear()
        self.heard[ann.id] = ann.listen
        self.node.consider(Member(ann.id, ann.name, ann.listen))

    def error_received(self, exc: BaseException) -> None:
        self.send_errors += 1


def start_discovery(node: PeerNode) -> DiscoveryEndpoint:
    """Open the multicast socket and serve it on the node's engine (before the engine starts).

    Raises:
        NetworkError: the group cannot be joined on the interface.
    """
    s = node.settings
    host = s.host
    if ":" in s.group:  # IPv6: the interface is found from our IPv6 listen address, if we have one
        interface = host if ":" in host else "::"
    else:
        try:
            interface = str(socket.inet_aton(host) and host) if host not in ("", "0.0.0.0") else "0.0.0.0"
        except OSError:
            interface = "0.0.0.0"  # a name or an IPv6 address: let the kernel choose
    sock = open_multicast_socket(s.group, s.discovery_port, interface)
    endpoint = DiscoveryEndpoint(node, Discovery(Announce(node.id, node.name, node.listen),
                                                 (s.group, s.discovery_port)))
    node.engine.serve_datagram(sock, lambda: endpoint)
    return endpoint
