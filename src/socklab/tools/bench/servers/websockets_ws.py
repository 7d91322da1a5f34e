"""Reference for `socklab bench ws`: a `websockets` echo (its asyncio server, C speedups on).

Why this exists: the most used Python WebSocket library, as its documentation shows an echo
server; compression and keep-alive pings off, as in every contender of the run.

Usage: ``python servers/websockets_ws.py [--port 0]``
"""

from __future__ import annotations

import argparse
import asyncio

from websockets.asyncio.server import ServerConnection, serve


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def main(host: str, port: int) -> None:
    async with serve(echo, host, port, compression=None, ping_interval=None, max_size=1 << 20) as server:
        real = next(iter(server.sockets)).getsockname()[1]
        print(f"reference websockets listening on tcp://{host}:{real}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    try:
        asyncio.run(main(args.host, args.port))
    except KeyboardInterrupt:
        pass
