"""A stand-in for ``socklab echo serve`` when that command is not installed.

Why this exists: the benchmark starts socklab's echo server as a subprocess and waits for its
readiness line. ``socklab echo serve`` is the real thing; this module starts the same
:class:`~socklab.runtime.Server` with the same :class:`~socklab.apps.echo.protocol.EchoProtocol`
and prints the same line, so the benchmark works while the CLI is being written.

Usage: ``python -m socklab.tools.bench.standin --engine epoll --port 0 [--max-connections N] [--workers N]``
"""

from __future__ import annotations

import argparse

from socklab.apps.echo.protocol import EchoProtocol
from socklab.core.settings import ENGINE_NAMES, ServerSettings
from socklab.runtime import Server


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="socklab-bench-standin")
    ap.add_argument("--engine", default="epoll", choices=ENGINE_NAMES)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--max-connections", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=16)
    args = ap.parse_args(argv)
    srv = Server(ServerSettings(engine=args.engine, host=args.host, port=args.port,
                                max_connections=args.max_connections, workers=args.workers),
                 label="echo")
    srv.listen(EchoProtocol)
    print(f"socklab echo listening on tcp://{args.host}:{srv.port} (engine {args.engine})", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
