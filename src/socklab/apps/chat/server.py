"""One chat node: one Server, one hub, two listeners (line protocol and web), one backend.

Why this exists: ``socklab chat serve`` and the tests build a node the same way. The line
protocol and the web page share one engine, so TCP and browser users share the hub's rooms with no
locking; the backend (SQLite alone, or Redis for several nodes) is chosen from the settings.

    node = ChatServer(ChatSettings(tcp_port=0, http_port=0, store=":memory:"))
    node.start()
    print(node.tcp_port, node.http_port)
    node.shutdown()
"""

from __future__ import annotations

import contextlib
import resource
import socket
import sys
from typing import Any

from socklab.apps.chat.backends import Backend, LocalBackend
from socklab.apps.chat.hub import ChatHub
from socklab.apps.chat.settings import ChatSettings, default_store_path
from socklab.apps.chat.store import SqliteStore
from socklab.apps.chat.tcp import ChatLineProtocol
from socklab.core.trace import Tracer
from socklab.runtime import Server

__all__ = ["ChatServer", "fit_open_files"]

FD_MARGIN = 64  # descriptors besides the connections: listeners, the store, the epoll fd, pipes, Redis


def fit_open_files(connections: int) -> str | None:
    """Raise this process's soft ``RLIMIT_NOFILE`` so that ``connections`` fit (up to the hard
    limit, which needs no privilege). A shell's usual 1,024 would stop a 10,000-member room at
    about 1,000 (``accept()`` fails with EMFILE).

    Returns:
        a one-line warning when even the hard limit is too low, else ``None``.
    """
    needed = connections + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed or soft == resource.RLIM_INFINITY:
        return None
    target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft >= needed:
        return None
    return (f"--max-connections {connections} needs about {needed} open files, but this process may have "
            f"only {soft} (ulimit -n; hard limit {hard}): connections past that are refused until it is "
            "raised (ulimit -Hn, or LimitNOFILE= in a systemd unit)")


class ChatServer:
    """A chat node, bound and ready to start.

    Args:
        settings: the node's settings (ports, store, broker, limits).
        tracer: the lifecycle trace, or ``None``.

    Raises:
        UsageError, AddressInUse, NetworkError: from binding or from connecting to the broker.
    """

    def __init__(self, settings: ChatSettings, tracer: Tracer | None = None) -> None:
        self.settings = settings
        # The hub counts chat slots (max_connections) itself; the engine admits web_reserve more, so
        # the page (and the refusal of a WebSocket past the slots) is served when every slot is taken.
        reserve = settings.web_reserve if settings.http_port >= 0 else 0
        warning = fit_open_files(settings.max_connections + reserve)
        if warning is not None:
            print(f"socklab chat: warning: {warning}", file=sys.stderr, flush=True)
        self.server = Server(settings.replace(max_connections=settings.max_connections + reserve), tracer=tracer,
                             label="chat")
        self.backend = self._make_backend()
        try:
            self.hub = ChatHub(settings, self.backend, call_later=self.server.engine.call_later,
                               server_name=f"socklab-chat@{settings.node or socket.gethostname()}")
            self.tcp_address: Any = self.server.listen(lambda: ChatLineProtocol(self.hub),
                                                       port=settings.tcp_port)
            self.http_address: Any = None
            self.schemes = ["tls" if settings.serves_tls else "tcp"]
            if settings.http_port >= 0:
                from socklab.apps.chat.web import listen_web

                self.http_address = listen_web(self)
                self.schemes.append("https" if settings.serves_tls else "http")
        except BaseException:
            self.backend.close()
            self.server.close()
            raise
        self.server.on_stop(self.backend.close)

    def _make_backend(self) -> Backend:
        s = self.settings
        if s.broker:
            from socklab.apps.chat.broker import RedisBackend

            return RedisBackend(s, self.server.call_soon_threadsafe)
        path = s.store or default_store_path()
        return LocalBackend(SqliteStore(path, self.server.call_soon_threadsafe, s.store_sync))

    @property
    def tcp_port(self) -> int:
        return int(self.tcp_address[1])

    @property
    def http_port(self) -> int:
        if self.http_address is None:
            raise ValueError("the web side is off (--http-port -1)")
        return int(self.http_address[1])

    def start(self) -> ChatServer:
        self.server.start()
        return self

    def shutdown(self, timeout: float | None = None) -> None:
        """Graceful: every client is told ``BYE``, stored messages are flushed, the backend closed."""
        with contextlib.suppress(Exception):
            self.server.call_soon_threadsafe(self.hub.shutdown)
        self.server.shutdown(timeout)

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown(2.0)
