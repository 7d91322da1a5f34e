"""serve_http: an HTTP server (a socklab Server running HttpProtocol) in one call.

Why this exists: the CLI, the tests and the apps that mount handlers (chat, JSON-RPC) all build
the same thing - settings, a router, a protocol factory, a listening Server. This is that, once.
"""

from __future__ import annotations

from typing import Any

from socklab.apps.http.protocol import AccessLog, HttpProtocol
from socklab.apps.http.router import Router
from socklab.apps.http.settings import HttpSettings
from socklab.runtime import Server

__all__ = ["serve_http"]


def serve_http(settings: HttpSettings, router: Router, *, tracer: Any = None, access_log: Any = None,
               label: str = "http", ssl_context: Any = None) -> Server:
    """A :class:`~socklab.runtime.Server` listening with ``router``, not yet started.

    Args:
        settings: address, engine and limits.
        router: what answers the requests.
        tracer: lifecycle trace sink, or ``None``.
        access_log: a callable ``(request, client, status, size, line)``; by default one line per
            response on stdout in ``settings.log_format`` (``none``: no log).
        ssl_context: serve TLS with this context instead of the settings' (``tls_cert`` or
            ``tls_self_signed``, see :meth:`~socklab.runtime.Server.tls_context`).

    Returns:
        The server: call ``start()`` / ``serve_forever()``; ``server.port`` is the bound port.

    Raises:
        UsageError: bad settings; NetworkError: the address cannot be bound.
    """
    if access_log is None and settings.log_format != "none":
        access_log = AccessLog(settings.log_format)
    server = Server(settings, tracer=tracer, label=label)
    server.listen(lambda: HttpProtocol(router, settings, access_log), ssl_context=ssl_context)
    return server
