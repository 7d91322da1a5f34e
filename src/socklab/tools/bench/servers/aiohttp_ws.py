"""Reference for `socklab bench ws`: a plain aiohttp WebSocket echo (``--uvloop``: on uvloop).

Why this exists: the bar for socklab's WebSocket path on the same event loop - aiohttp's
``WebSocketResponse`` the way its documentation shows it, text echoed as text, binary as
binary; heartbeat off and no compression (socklab negotiates none either).

Usage: ``python servers/aiohttp_ws.py [--port 0] [--uvloop]``
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import WSMsgType, web


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False, max_msg_size=1 << 20)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def main(host: str, port: int, name: str) -> None:
    app = web.Application()
    app.router.add_get("/ws", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    real = runner.addresses[0][1]  # the port the kernel chose for port 0
    print(f"reference {name} listening on tcp://{host}:{real}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--uvloop", action="store_true")
    args = ap.parse_args()
    try:
        if args.uvloop:
            import uvloop

            uvloop.run(main(args.host, args.port, "aiohttp_uvloop"))
        else:
            asyncio.run(main(args.host, args.port, "aiohttp_asyncio"))
    except KeyboardInterrupt:
        pass
