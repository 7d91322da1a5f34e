"""Server logging for every server command: ``-v``/``-q``/``--log-level`` and one line per client.

Why this exists: a server was either silent or, with ``--trace``, printed every system call. As
uvicorn does, each client now gets an access line at ``info`` on stderr::

    socklab echo: 127.0.0.1:53422 - connected
    socklab echo: 127.0.0.1:53422 - closed after 1.2 s, 3.0 KiB in, 3.0 KiB out

``-q`` hides them (warnings only), ``-qq`` errors only, ``-v`` adds debug. Addresses are printed
as ``host:port`` (``[::1]:port`` for IPv6), never as a Python tuple.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from socklab.core.trace import format_addr

__all__ = ["LEVELS", "access_logged", "format_addr", "log_options"]

F = TypeVar("F", bound=Callable[..., Any])
LEVELS = ("debug", "info", "warning", "error")
log = logging.getLogger("socklab.access")


def _configure(ctx: click.Context) -> None:
    meta = ctx.meta
    level = meta.get("socklab.log_level")
    if level is None:
        index = 1 - meta.get("socklab.verbose", 0) + meta.get("socklab.quiet", 0)
        level = LEVELS[max(0, min(len(LEVELS) - 1, index))]
    root = logging.getLogger("socklab")
    root.setLevel(level.upper())
    if not any(getattr(h, "_socklab", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._socklab = True  # type: ignore[attr-defined]
        root.addHandler(handler)


def _store(key: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value:
            ctx.meta[key] = value
        _configure(ctx)

    return callback


def log_options(func: F) -> F:
    """``-v``, ``-q`` (repeatable) and ``--log-level``: what a server prints on stderr."""
    func = click.option("--log-level", type=click.Choice(LEVELS), default=None, expose_value=False,
                        callback=_store("socklab.log_level"),
                        help="What the server logs on stderr; 'info' (the default) adds a line per client "
                             "connection (-v: debug, -q: warning, -qq: error).")(func)
    func = click.option("-q", "--quiet", count=True, expose_value=False, callback=_store("socklab.quiet"),
                        help="Less on stderr: no line per connection (-qq: errors only).")(func)
    func = click.option("-v", "--verbose", count=True, expose_value=False, callback=_store("socklab.verbose"),
                        help="More on stderr (debug).")(func)
    return func


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB"):
        n_f = n / 1024
        if n_f < 1024 or unit == "GiB":
            return f"{n_f:.1f} {unit}"
        n = int(n_f)
    return f"{n} B"  # pragma: no cover


class _CountingTransport:
    """The transport a protocol sees: counts the bytes it writes, passes everything else through."""

    def __init__(self, transport: Any, owner: _CountingAccess) -> None:
        self._transport, self._owner = transport, owner

    def write(self, data: Any) -> None:
        self._owner.bytes_out += len(data)
        self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Access:
    """Wraps one connection's protocol: one line when it opens, one when it closes.

    It stays off the data path: ``data_received`` and the transport are the inner protocol's own
    (found through ``__getattr__``), so the line per client costs nothing per message - the
    engines' fast paths (uvloop calling the app directly, the zero-copy echo) are kept. Byte
    counts need the data path: :class:`_CountingAccess` adds them at debug level (``-v``).
    """

    bytes_in = bytes_out = -1  # not counted

    def __init__(self, inner: Any, label: str) -> None:
        self._inner, self._label = inner, label
        self._start = time.monotonic()
        self._who = "-"

    def connection_made(self, transport: Any) -> None:
        self._start = time.monotonic()
        self._who = format_addr(transport.get_extra_info("peername"))
        log.info("socklab %s: %s - connected", self._label, self._who)
        self._inner.connection_made(self._transport_for_inner(transport))

    def _transport_for_inner(self, transport: Any) -> Any:
        return transport

    def connection_lost(self, exc: BaseException | None) -> None:
        took = time.monotonic() - self._start
        why = f" ({exc})" if exc is not None else ""
        if self.bytes_in < 0 or (getattr(self._inner, "zero_copy_echo", False) and not self.bytes_in):
            # not counted, or the engine echoed from its receive buffer without calling the
            # protocol (the access line must not cost the fast path): no byte counts
            log.info("socklab %s: %s - closed after %.1f s%s", self._label, self._who, took, why)
        else:
            log.info("socklab %s: %s - closed after %.1f s, %s in, %s out%s", self._label, self._who, took,
                     _size(self.bytes_in), _size(self.bytes_out), why)
        self._inner.connection_lost(exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _CountingAccess(_Access):
    """At debug level: the same lines, with the bytes each way (one Python call more per message)."""

    def __init__(self, inner: Any, label: str) -> None:
        super().__init__(inner, label)
        self.bytes_in = self.bytes_out = 0

    def _transport_for_inner(self, transport: Any) -> Any:
        return _CountingTransport(transport, self)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self._inner.data_received(data)


def access_logged(factory: Callable[[], Any], label: str) -> Callable[[], Any]:
    """A protocol factory whose connections each log an access line (when info is on)."""
    if not log.isEnabledFor(logging.INFO):
        return factory
    cls = _CountingAccess if log.isEnabledFor(logging.DEBUG) else _Access
    return lambda: cls(factory(), label)
