"""LAN discovery for the peer mesh: who is out there, announced over UDP multicast, sans-I/O.

Why this exists: a peer-to-peer node needs *one* address of another node to join a mesh. On a LAN
it can find one without being told: every node periodically sends a small datagram to a
multicast group (by default ``239.255.77.77:7799``, in the organisation-local scope of RFC 2365
section 6.2, sent with TTL 1 so it never leaves the link, RFC 1112 section 6.1), and listens to
the same group. Each announce says "node <id> named <name> accepts connections at <HOST:PORT>".

The datagram is one line of ASCII then JSON::

    SOCKLAB-PEER/1 {"id":"5f0c...","name":"ann","listen":"10.77.0.2:7000"}

This module parses and builds those datagrams and decides what an arrival means. The app owns
the socket (group membership, TTL, loopback are socket options set there) and the clock. A node
that listens on a wildcard address (``0.0.0.0:7000``) announces that; the receiver substitutes
the datagram's source address, which is the address the sender is reachable at on this link.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from socklab.core.errors import RemoteProtocolError

__all__ = ["DEFAULT_GROUP", "DEFAULT_PORT", "MAGIC", "Announce", "Discovery", "decode_announce",
           "encode_announce"]

DEFAULT_GROUP = "239.255.77.77"
DEFAULT_PORT = 7799
MAGIC = b"SOCKLAB-PEER/1 "
MAX_DATAGRAM = 1024
_ID_RE = re.compile(r"[0-9a-f]{8,64}\Z")
_WILDCARDS = ("", "0.0.0.0", "::", "*")


@dataclass(frozen=True)
class Announce:
    """One node's announce: its id, name and where it listens."""

    id: str
    name: str
    listen: str


def encode_announce(announce: Announce) -> bytes:
    """The datagram for ``announce``."""
    body = json.dumps({"id": announce.id, "name": announce.name, "listen": announce.listen},
                      separators=(",", ":"), ensure_ascii=False).encode()
    return MAGIC + body


def decode_announce(data: bytes) -> Announce:
    """Parse one datagram.

    Raises:
        RemoteProtocolError: not an announce (wrong magic, bad JSON, missing or bad fields).
    """
    if len(data) > MAX_DATAGRAM or not data.startswith(MAGIC):
        raise RemoteProtocolError("not a socklab peer announce")
    try:
        obj = json.loads(data[len(MAGIC):])
    except (ValueError, RecursionError) as exc:
        raise RemoteProtocolError("announce is not JSON") from exc
    if not isinstance(obj, dict):
        raise RemoteProtocolError("announce is not a JSON object")
    fields: dict[str, str] = {}
    for key in ("id", "name", "listen"):
        value = obj.get(key)
        if not isinstance(value, str) or not value or len(value) > 255:
            raise RemoteProtocolError(f"announce field {key!r} missing or bad")
        fields[key] = value
    if not _ID_RE.match(fields["id"]):
        raise RemoteProtocolError("announce id is malformed")
    return Announce(**fields)


def _split_hostport(text: str) -> tuple[str, str] | None:
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or not text[close + 1:].startswith(":"):
            return None
        return text[1:close], text[close + 2:]
    if text.count(":") != 1:
        return None
    host, port = text.split(":")
    return host, port


class Discovery:
    """What a node makes of announce datagrams.

    Args:
        me: this node's own announce (sent by :meth:`announce`).
        group: the (group, port) datagrams are sent to.
    """

    def __init__(self, me: Announce, group: tuple[str, int] = (DEFAULT_GROUP, DEFAULT_PORT)) -> None:
        self.me = me
        self.group = group
        self.ignored = 0

    def announce(self) -> list[tuple[bytes, tuple[str, int]]]:
        """The datagram(s) to send now."""
        return [(encode_announce(self.me), self.group)]

    def datagram_received(self, data: bytes, addr: Any) -> Announce | None:
        """An arrival from ``addr``: another node's announce (listen address made reachable), or None.

        Our own announces (looped back) and garbage (counted in ``ignored``) give ``None``.
        """
        try:
            ann = decode_announce(data)
        except RemoteProtocolError:
            self.ignored += 1
            return None
        if ann.id == self.me.id:
            return None
        parts = _split_hostport(ann.listen)
        if parts is None or not parts[1].isdigit():
            self.ignored += 1
            return None
        host, port = parts
        if host in _WILDCARDS and isinstance(addr, tuple) and addr:
            src = str(addr[0])
            host = f"[{src}]" if ":" in src else src
            return Announce(ann.id, ann.name, f"{host}:{port}")
        return ann
