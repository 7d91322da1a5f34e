"""strace's argument text, decoded: socket annotations (``-yy``), socket addresses, strings, numbers.

Why this exists: strace prints arguments the way C would write them
(``{sa_family=AF_INET, sin_port=htons(80), sin_addr=inet_addr("1.2.3.4")}``) and adds what it knows
about each fd (``3<TCP:[127.0.0.1:5000->127.0.0.1:80]>``). These few pure functions turn that text
into the addresses and counts the lifecycle needs; none of them raises on text it does not know.
"""

from __future__ import annotations

import re

from socklab.protocols.text import escape_peer_text

__all__ = ["FD_ARG", "IOV_LEN", "TIME_OPTIONS", "parse_annotation", "parse_sockaddr", "preview", "to_int"]

_ANNOT = re.compile(r"(TCP|TCPv6|UDP|UDPv6|UDPLITE|UDPLITEv6|SCTP|SCTPv6):\[(.*)\]\Z", re.S)
FD_ARG = re.compile(r"(-?\d+)(?:<(.*)>)?\Z", re.S)
_PORT = re.compile(r"sin6?_port=htons\((\d+)\)")
_ADDR4 = re.compile(r'inet_addr\("([^"]*)"\)')
_ADDR6 = re.compile(r'inet_pton\(AF_INET6, "([^"]*)"')
IOV_LEN = re.compile(r"iov_len=(\d+)")
TIME_OPTIONS = ("SO_RCVTIMEO", "SO_SNDTIMEO", "SO_RCVTIMEO_OLD", "SO_SNDTIMEO_OLD", "SO_RCVTIMEO_NEW", "SO_SNDTIMEO_NEW")

def parse_annotation(text: str | None) -> tuple[str, str | None, str | None] | None:
    """``TCP:[1.2.3.4:5->6.7.8.9:10]`` -> ``("tcp", local, peer)``; ``None`` if not an IP socket."""
    if not text:
        return None
    m = _ANNOT.match(text)
    if m is None:
        return None
    proto = m[1].lower().replace("v6", "6")
    inner = m[2]
    if inner.isdigit():  # only the inode: not bound, not connected
        return proto, None, None
    local, sep, peer = inner.partition("->")
    return proto, local or None, (peer or None) if sep else None


def parse_sockaddr(text: str) -> str | None:
    """``{sa_family=AF_INET, sin_port=htons(80), sin_addr=inet_addr("1.2.3.4")}`` -> ``1.2.3.4:80``."""
    port = _PORT.search(text)
    if port is None:
        return None
    a4 = _ADDR4.search(text)
    if a4 is not None:
        return f"{a4[1]}:{port[1]}"
    a6 = _ADDR6.search(text)
    if a6 is not None:
        return f"[{a6[1]}]:{port[1]}"
    return None


def to_int(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip().strip("[]")
    try:
        return int(text, 0)
    except ValueError:
        return None


def preview(data: tuple[bytes, bool] | None, limit: int = 32) -> str | None:
    """``data="GET / HTTP/1.1\\r\\n"...`` with controls escaped (peer text never reaches a terminal raw)."""
    if data is None:
        return None
    raw, cut = data
    text = escape_peer_text(raw[:limit].decode("utf-8", errors="replace"))
    return f'data="{text}"' + ("..." if cut or len(raw) > limit else "")
