"""Reference: a TLS echo server on a plain ``asyncio.Protocol`` with ``ssl=context`` (``--uvloop``: on uvloop).

Why this exists: it is the bar for socklab's engines over TLS (``bench echo --tls``): the loop's
own TLS, the way the asyncio documentation shows it, nothing added. TLS 1.2 or newer, the
certificate and key given on the command line (the benchmark makes a throwaway self-signed pair).

Usage: ``python reference/tls_protocol.py --cert C.pem --key K.pem [--port 0] [--uvloop]``
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:  # checked as part of the package; run by its path, _common is the file beside it
    from ._common import parse_args, ready
else:
    from _common import parse_args, ready


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def _take(flag: str) -> str:
    i = sys.argv.index(flag)
    value = sys.argv[i + 1]
    del sys.argv[i:i + 2]
    return value


async def main(name: str, cert: str, key: str) -> None:
    args = parse_args(name)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, args.host, args.port, ssl=ctx, backlog=4096)
    ready(name, args.host, server.sockets[0].getsockname()[1], "tls")
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    use_uvloop = "--uvloop" in sys.argv
    if use_uvloop:
        sys.argv.remove("--uvloop")
    cert, key = _take("--cert"), _take("--key")
    try:
        if use_uvloop:
            import uvloop

            uvloop.run(main("tls_uvloop_protocol", cert, key))
        else:
            asyncio.run(main("tls_asyncio_protocol", cert, key))
    except KeyboardInterrupt:
        pass
