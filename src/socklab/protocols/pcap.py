"""pcapng writing with synthesized Ethernet/IPv4/IPv6/TCP/UDP headers: captures without root.

Why this exists: the tap sees application bytes, not packets (the kernel owns TCP). To let
Wireshark and tshark decode what passed - HTTP inside TCP, DNS-style datagrams inside UDP - this
module invents the packets a real capture would have held: a three-way handshake, data segments
with consistent sequence and acknowledgement numbers, FIN or RST at the end, and UDP datagrams,
all between the real addresses. ``tshark -z follow,tcp`` then rebuilds each stream byte-exact.

The file format is pcapng (draft-ietf-opsawg-pcapng): a Section Header Block, one Interface
Description Block (link type 1, Ethernet) and one Enhanced Packet Block per packet; a packet may
carry an ``opt_comment`` - the tap puts each injected fault there, next to its effect.

Pure bytes: the caller passes timestamps and writes the returned bytes wherever it likes.
"""

from __future__ import annotations

import ipaddress
import struct
import sys
from array import array
from dataclasses import dataclass
from typing import Any

__all__ = ["PcapngWriter", "TcpFlow", "checksum"]

MAX_SEGMENT = 32 * 1024  # bytes of payload per synthesized segment (fits any IP length field)
_ETH_IPV4, _ETH_IPV6 = 0x0800, 0x86DD
_MAC_A, _MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
# TCP flags (RFC 9293 section 3.1)
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): one's-complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    words = array("H", data)
    if sys.byteorder == "little":
        words.byteswap()
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad4(value)


def _ip(addr: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    host = addr[0] if isinstance(addr, tuple) else addr
    ip = ipaddress.ip_address(str(host).split("%")[0])
    return ip


class PcapngWriter:
    """Builds a pcapng byte stream: :meth:`header` once, then packets.

    Args:
        application: written into the section header (``shb_userappl``).
    """

    def __init__(self, application: str = "socklab tap") -> None:
        self.application = application

    def header(self) -> bytes:
        """Section Header Block + Interface Description Block (Ethernet, microsecond stamps)."""
        opts = _option(4, self.application.encode()) + _option(0, b"")
        body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + opts
        shb = struct.pack("<II", 0x0A0D0D0A, len(body) + 12) + body + struct.pack("<I", len(body) + 12)
        idb_body = struct.pack("<HHI", 1, 0, 0) + _option(2, b"tap") + _option(0, b"")
        idb = struct.pack("<II", 1, len(idb_body) + 12) + idb_body + struct.pack("<I", len(idb_body) + 12)
        return shb + idb

    @staticmethod
    def packet(frame: bytes, ts: float, comment: str | None = None) -> bytes:
        """One Enhanced Packet Block carrying ``frame`` at ``ts`` (seconds since the epoch)."""
        usec = round(ts * 1_000_000)
        opts = b""
        if comment:
            opts = _option(1, comment.encode()) + _option(0, b"")
        body = struct.pack("<IIIII", 0, usec >> 32, usec & 0xFFFFFFFF, len(frame), len(frame)) + _pad4(frame) + opts
        return struct.pack("<II", 6, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

    @staticmethod
    def frame(src: Any, dst: Any, proto: int, payload: bytes, from_a: bool = True) -> bytes:
        """Ethernet + IP header around a transport ``payload`` whose checksum is already set."""
        macs = (_MAC_B + _MAC_A) if from_a else (_MAC_A + _MAC_B)  # destination first
        s, d = _ip(src), _ip(dst)
        if s.version != d.version:  # mixed families: show both as IPv6 (IPv4-mapped)
            s, d = _as_v6(s), _as_v6(d)
        if s.version == 4:
            hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, proto, 0,
                              s.packed, d.packed)
            hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
            return macs + struct.pack("!H", _ETH_IPV4) + hdr + payload
        hdr = struct.pack("!IHBB16s16s", 6 << 28, len(payload), proto, 64, s.packed, d.packed)
        return macs + struct.pack("!H", _ETH_IPV6) + hdr + payload


def _as_v6(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address):
        return ip
    return ipaddress.IPv6Address("::ffff:" + str(ip))


def _pseudo(src: Any, dst: Any, proto: int, length: int) -> bytes:
    s, d = _ip(src), _ip(dst)
    if s.version != d.version:
        s, d = _as_v6(s), _as_v6(d)
    if s.version == 4:
        return s.packed + d.packed + struct.pack("!BBH", 0, proto, length)
    return s.packed + d.packed + struct.pack("!IxxxB", length, proto)


def udp_frame(src: Any, dst: Any, data: bytes) -> bytes:
    """An Ethernet frame holding one UDP datagram from ``src`` to ``dst`` (RFC 768)."""
    length = 8 + len(data)
    hdr = struct.pack("!HHHH", src[1], dst[1], length, 0)
    csum = checksum(_pseudo(src, dst, 17, length) + hdr + data) or 0xFFFF
    hdr = hdr[:6] + struct.pack("!H", csum)
    return PcapngWriter.frame(src, dst, 17, hdr + data)


@dataclass
class TcpFlow:
    """The synthesized TCP conversation between ``client`` and ``server`` (RFC 9293 section 3.4).

    Sequence numbers start at fixed ISNs and advance by each segment's length (SYN and FIN count
    one), so the receiver's acknowledgement always equals the sender's next sequence number.
    """

    client: Any
    server: Any
    seq_c: int = 1000
    seq_s: int = 5000

    def _segment(self, from_client: bool, flags: int, payload: bytes = b"") -> bytes:
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        seq = self.seq_c if from_client else self.seq_s
        ack = (self.seq_s if from_client else self.seq_c) if flags & ACK else 0
        hdr = struct.pack("!HHIIBBHHH", src[1], dst[1], seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags,
                          65535, 0, 0)
        csum = checksum(_pseudo(src, dst, 6, len(hdr) + len(payload)) + hdr + payload)
        hdr = hdr[:16] + struct.pack("!H", csum) + hdr[18:]
        advance = len(payload) + (1 if flags & (SYN | FIN) else 0)
        if from_client:
            self.seq_c += advance
        else:
            self.seq_s += advance
        return PcapngWriter.frame(src, dst, 6, hdr + payload, from_a=from_client)

    def handshake(self) -> list[bytes]:
        """SYN, SYN-ACK, ACK."""
        return [self._segment(True, SYN), self._segment(False, SYN | ACK), self._segment(True, ACK)]

    def data(self, from_client: bool, payload: bytes) -> list[bytes]:
        """Data segments (PSH|ACK) of at most :data:`MAX_SEGMENT` bytes each."""
        return [self._segment(from_client, PSH | ACK, payload[i:i + MAX_SEGMENT])
                for i in range(0, len(payload), MAX_SEGMENT)]

    def fin(self, from_client: bool) -> list[bytes]:
        """FIN|ACK from one side."""
        return [self._segment(from_client, FIN | ACK)]

    def rst(self, from_client: bool) -> list[bytes]:
        """RST|ACK from one side: the connection is reset."""
        return [self._segment(from_client, RST | ACK)]
