"""Reference: a UDP echo server on a plain ``asyncio.DatagramProtocol`` (``--uvloop``: on uvloop).

Why this exists: it is the bar for socklab's ``asyncio`` (and, with ``--uvloop``, ``uvloop``)
engine over UDP - the same loop, the protocol the asyncio documentation shows, nothing added.
Every datagram goes back to its sender, an empty one too.

Usage: ``python reference/udp_asyncio_protocol.py [--port 0] [--uvloop]``
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # checked as part of the package; run by its path, _common is the file beside it
    from ._common import parse_args, ready
else:
    from _common import parse_args, ready


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


async def main(name: str) -> None:
    args = parse_args(name)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=(args.host, args.port))
    ready(name, args.host, transport.get_extra_info("sockname")[1], "udp")
    await asyncio.Event().wait()


if __name__ == "__main__":
    use_uvloop = "--uvloop" in sys.argv
    if use_uvloop:
        sys.argv.remove("--uvloop")
    try:
        if use_uvloop:
            import uvloop

            uvloop.run(main("udp_uvloop_protocol"))
        else:
            asyncio.run(main("udp_asyncio_protocol"))
    except KeyboardInterrupt:
        pass
