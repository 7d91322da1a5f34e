"""Reference: a TLS echo server on a plain ``asyncio.Protocol`` with ``ssl=context`` (``--uvloop``: on uvloop).

Why this exists: it is the bar for socklab's engines over TLS (``bench echo --tls``): the loop's
own TLS, the way the asyncio documentation shows it, nothing added. TLS 1.2 or newer, the
certificate and key given on the command line (the benchmark makes a throwaway self-signed pair).

Usage: ``python reference/tls_protocol.py --cert C.pem --key K.pem [--port 0] [--uvloop]``
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:  # checked as part of the package; run by its path, _common is the file beside it
    from ._common import parse_args, ready, tls_context
else:
    from _common import parse_args, ready, tls_context


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def main(name: str) -> None:
    args = parse_args(name, tls=True)
    ctx = tls_context(args)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, args.host, args.port, ssl=ctx, backlog=4096)
    ready(name, args.host, server.sockets[0].getsockname()[1], "tls")
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    use_uvloop = "--uvloop" in sys.argv
    if use_uvloop:
        sys.argv.remove("--uvloop")
    try:
        if use_uvloop:
            import uvloop

            uvloop.run(main("tls_uvloop_protocol"))
        else:
            asyncio.run(main("tls_asyncio_protocol"))
    except KeyboardInterrupt:
        pass
