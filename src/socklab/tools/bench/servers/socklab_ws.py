"""socklab's WebSocket echo for `socklab bench ws`: the HTTP layer's ``/ws`` route on one engine.

Why this exists: it is the server side of the WebSocket rows - what a chat page or a ``ws://`` RPC
call meets: :func:`socklab.apps.http.server.serve_http` with a router whose ``/ws`` handler sends
every message back as it came (text as text). Pings are off for the run (the generator counts
bytes and would miscount a ping frame); access logging is off (no log line per upgrade).

Usage: ``python servers/socklab_ws.py --engine epoll [--port 0]``
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from socklab.apps.http.router import Router
from socklab.apps.http.server import serve_http
from socklab.apps.http.settings import HttpSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="epoll")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    router = Router()

    @router.websocket("/ws")
    def on_ws(ws: Any) -> None:
        ws.on_message = ws.send

    settings = HttpSettings(host=args.host, port=args.port, engine=args.engine, log_format="none",
                            ws_ping_interval=0, max_connections=10_000)
    server = serve_http(settings, router)
    server.start()
    print(f"socklab ws ({args.engine}) listening on tcp://{args.host}:{server.port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, SystemExit):
        pass
