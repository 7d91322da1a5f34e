"""Socket buffers sized for a TFTP window, and the window those buffers can really hold.

Why this exists: with ``windowsize`` blocks in flight, the receiver's kernel must queue a whole
window of datagrams before the application reads them. When it cannot, the tail of every window is
dropped (``UdpRcvbufErrors`` grows), nothing arrives out of order to reveal the gap, and the
transfer waits a whole timeout per window: ``blksize 8192 x windowsize 16`` took 310 s for 40 MB
against Linux's default 208 KiB receive buffer.

What a datagram costs: Linux charges each queued datagram its buffer's *truesize*, not its payload
- measured on loopback, a 516-byte datagram costs about 1.3 KiB, an 8,196-byte one about 16.5 KiB
and a 65,468-byte one about 73 KiB. :func:`datagram_charge` over-estimates that on purpose
(a power of two above the datagram plus 1 KiB). ``setsockopt(SO_RCVBUF, n)`` is capped by
``net.core.rmem_max`` (``wmem_max`` for SO_SNDBUF) and the kernel doubles what it grants (the
double is what it compares the queue with). The transport's ``set_buffer_sizes`` capability
(:mod:`socklab.core.transport`) does the asking on every engine and says what was granted, and
:func:`size_for_window` returns the window that fits, so that a server grants no window its
buffers cannot hold (RFC 7440 section 3 lets it answer a smaller windowsize in its OACK) and a
client asks for none.
"""

from __future__ import annotations

from socklab.core.transport import DatagramTransport

__all__ = ["datagram_charge", "size_for_window"]

#: IP + UDP headers and the TFTP DATA header, over the payload
_HEADERS = 20 + 8 + 4
#: datagrams of slack beyond the window (an ACK, a duplicate, a resent block)
_SLACK = 2


def datagram_charge(blksize: int) -> int:
    """Bytes of socket buffer one DATA datagram of ``blksize`` may cost (an upper estimate)."""
    size = blksize + _HEADERS + 512
    return (1 << (size - 1).bit_length()) + 1024


def size_for_window(transport: DatagramTransport, blksize: int, windowsize: int, *, receive: bool = True,
                    send: bool = True) -> int:
    """Grow the transport's buffers to hold ``windowsize`` blocks of ``blksize``; return the window they hold.

    Args:
        transport: the UDP endpoint the window will run on.
        blksize, windowsize: the window wanted.
        receive: size SO_RCVBUF (the side that receives DATA needs it).
        send: size SO_SNDBUF (the side that sends a window in one burst; a full send buffer only
            delays: the engine queues).

    Returns:
        The largest window (1..``windowsize``) the granted receive buffer holds; never below 1, since
        lock-step always works. ``windowsize`` itself where the engine cannot tell (no socket).
    """
    charge = datagram_charge(blksize)
    want = charge * (windowsize + _SLACK)
    granted = transport.set_buffer_sizes(rcvbuf=want if receive else None, sndbuf=want if send else None)
    if granted is None or not receive:
        return windowsize
    return max(1, min(windowsize, granted[0] // charge - _SLACK))  # a full receive buffer drops: it decides
