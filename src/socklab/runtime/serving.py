"""Running a server from a command: the readiness line, signals, and what the user is told.

Why this exists: every server command ends the same way - say where it listens (tests and
scripts wait for that line), register in the directory ``socklab ss`` reads, serve until Ctrl-C
or SIGTERM, shut down gracefully and say so, force on a second signal. Written once here, so a
server command cannot forget a step (before this, four commands re-typed it and never appeared
labelled in ``socklab ss``).
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from socklab.runtime.registry import register_server
from socklab.runtime.server import Server

__all__ = ["announce_tls", "describe_address", "serve_until_signalled"]


def describe_address(addr: Any, scheme: str) -> str:
    """``tcp://127.0.0.1:7``, ``udp://[::1]:7``, ``unix:/tmp/x.sock``."""
    if isinstance(addr, tuple):
        host, port = addr[0], addr[1]
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{port}"
    path = addr.decode() if isinstance(addr, bytes) else str(addr)
    return f"unix:{path}"


_announced: weakref.WeakSet[Server] = weakref.WeakSet()  # servers whose fingerprint was said


def announce_tls(server: Server, app: str) -> None:
    """Say a ``--tls-self-signed`` certificate's SHA-256 on stderr, once, so a client can pin it.

    ``socklab APP: TLS with a self-signed certificate, SHA-256 AB:CD:...`` and the ``--pin`` to
    give; nothing when the server made no such certificate. :func:`serve_until_signalled` calls
    it before the readiness lines; a command that prints its own readiness lines calls it first.
    """
    fp = server.tls_fingerprint
    if fp is None or server in _announced:
        return
    _announced.add(server)
    print(f"socklab {app}: TLS with a self-signed certificate, SHA-256 {fp}", file=sys.stderr)
    print(f"socklab {app}: clients check it with --pin {fp}", file=sys.stderr, flush=True)


def serve_until_signalled(server: Server, app: str, schemes: list[str] | None = None, *,
                          stream: Any = None, quiet: bool = False, where: Sequence[str] | None = None,
                          on_ready: Callable[[], None] | None = None, waiting_for: str = "open ones",
                          serve: Callable[..., None] | None = None,
                          extra: dict[str, Any] | None = None) -> None:
    """Register, print one readiness line per listener, then serve until SIGINT/SIGTERM.

    Args:
        server: a server whose listeners are bound.
        app: the app's name in the readiness line (``socklab echo listening on ...``) and in ``ss``.
        schemes: one URL scheme per listener (default ``tcp``).
        stream: where the readiness lines go (stdout unless the command's stdout carries data).
        quiet: no Ctrl-C hint and no shutdown messages on stderr.
        where: the text after ``listening on`` for each line, instead of the listeners'
            addresses (``rpc`` prints its URLs; an empty list prints no readiness line).
        on_ready: called after the readiness lines, once the signal handlers are in place.
        waiting_for: what a graceful shutdown waits for, as the user is told.
        serve: runs the server instead of ``server.serve_forever`` (a wrapper that does more
            around it); called with the keywords ``on_signal`` and ``on_ready``.
        extra: app-specific information for ``socklab ss``.
    """
    out = stream if stream is not None else sys.stdout
    announce_tls(server, app)  # the fingerprint first: a client waiting for the readiness line has it
    register_server(server, app=app, extra=extra)  # so `socklab ss` labels this server's sockets
    lines = list(where) if where is not None else [
        describe_address(addr, schemes[i] if schemes and i < len(schemes) else "tcp")
        for i, addr in enumerate(server.addresses)]

    def ready() -> None:  # printed once the signal handlers are in place: SIGTERM is then graceful
        for line in lines:
            print(f"socklab {app} listening on {line} (engine {server.engine.name})", file=out, flush=True)
        if on_ready is not None:
            on_ready()
        if not quiet:
            print("  press Ctrl-C to stop (graceful; a second Ctrl-C forces)", file=sys.stderr, flush=True)

    def told(kind: str) -> None:
        if quiet:
            return
        if kind == "graceful":
            print(f"\nsocklab {app}: shutting down - no new connections; waiting up to "
                  f"{server.settings.shutdown_timeout:g} s for {waiting_for} (Ctrl-C again to force)",
                  file=sys.stderr, flush=True)
        else:
            print(f"socklab {app}: forced shutdown", file=sys.stderr, flush=True)

    (serve or server.serve_forever)(on_signal=told, on_ready=ready)
    if not quiet:
        print(f"socklab {app}: stopped", file=sys.stderr, flush=True)
