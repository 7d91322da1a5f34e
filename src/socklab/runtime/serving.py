"""Running a server from the CLI: the readiness line, signals, and what the user is told.

Why this exists: every server command ends the same way - print where it listens (tests and
scripts wait for that line), serve until Ctrl-C or SIGTERM, shut down gracefully and say so, force
on a second signal. Written once here.
"""

from __future__ import annotations

import sys
from typing import Any

from socklab.core.server import Server
from socklab.tools.registry import register_server

__all__ = ["describe_address", "serve_until_signalled"]


def describe_address(addr: Any, scheme: str) -> str:
    """``tcp://127.0.0.1:7``, ``udp://[::1]:7``, ``unix:/tmp/x.sock``."""
    if isinstance(addr, tuple):
        host, port = addr[0], addr[1]
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{port}"
    path = addr.decode() if isinstance(addr, bytes) else str(addr)
    return f"unix:{path}"


def serve_until_signalled(server: Server, app: str, schemes: list[str] | None = None, *,
                          stream: Any = None, quiet: bool = False) -> None:
    """Print one readiness line per listener, then serve until SIGINT/SIGTERM.

    Args:
        server: a server whose listeners are bound.
        app: the app's name in the readiness line (``socklab echo listening on ...``).
        schemes: one URL scheme per listener (default ``tcp``).
        stream: where the readiness lines go (stdout unless the command's stdout carries data).
    """
    out = stream if stream is not None else sys.stdout
    register_server(server, app=app)  # so `socklab ss` labels this server's sockets

    def ready() -> None:  # printed once the signal handlers are in place: SIGTERM is then graceful
        for i, addr in enumerate(server.addresses):
            scheme = (schemes[i] if schemes and i < len(schemes) else "tcp")
            print(f"socklab {app} listening on {describe_address(addr, scheme)} (engine {server.engine.name})",
                  file=out, flush=True)
        if not quiet:
            print("  press Ctrl-C to stop (graceful; a second Ctrl-C forces)", file=sys.stderr, flush=True)

    def told(kind: str) -> None:
        if kind == "graceful":
            print(f"\nsocklab {app}: shutting down - no new connections; waiting up to "
                  f"{server.settings.shutdown_timeout:g} s for open ones (Ctrl-C again to force)",
                  file=sys.stderr, flush=True)
        else:
            print(f"socklab {app}: forced shutdown", file=sys.stderr, flush=True)

    server.serve_forever(on_signal=told, on_ready=ready)
    if not quiet:
        print(f"socklab {app}: stopped", file=sys.stderr, flush=True)


