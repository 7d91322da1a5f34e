"""Reference: an echo server on a plain ``asyncio.Protocol`` running on uvloop.

Why this exists: it is the bar for socklab's ``uvloop`` engine - libuv's loop with the plainest
protocol possible. (uvloop sets TCP_NODELAY on TCP sockets itself.)

Usage: ``python reference/uvloop_protocol.py [--port 0]``
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

import uvloop

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
    args = parse_args("uvloop_protocol")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, args.host, args.port, backlog=4096)
    ready("uvloop_protocol", args.host, server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        uvloop.run(main())
    except KeyboardInterrupt:
        pass
