"""Reference: an echo server on a plain ``asyncio.Protocol`` (CPython's own event loop).

Why this exists: it is the bar for socklab's ``asyncio`` engine - the same loop, used the way
the asyncio documentation shows, with nothing socklab adds. (asyncio's transport already sets
TCP_NODELAY on TCP sockets.)

Usage: ``python reference/asyncio_protocol.py [--port 0]``
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:  # checked as part of the package; run by its path, _common is the file beside it
    from ._common import parse_args, ready
else:
    from _common import parse_args, ready


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def main() -> None:
    args = parse_args("asyncio_protocol")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, args.host, args.port, backlog=4096)
    ready("asyncio_protocol", args.host, server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
