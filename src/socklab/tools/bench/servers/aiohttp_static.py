"""aiohttp's static file handler on a port-0 socket, for `socklab bench http` (prints `ready PORT`)."""

from __future__ import annotations

import socket
import sys

from aiohttp import web


def main() -> None:
    app = web.Application()
    app.router.add_static("/", sys.argv[1])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    print(f"ready {sock.getsockname()[1]}", flush=True)
    web.run_app(app, sock=sock, access_log=None, print=None)


if __name__ == "__main__":
    main()
