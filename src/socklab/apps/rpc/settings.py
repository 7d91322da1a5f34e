"""The RPC client's settings: one object for ``rpc.connect``, ``AsyncClient`` and ``socklab rpc call``.

Why this exists: the client used to take a dozen loose keyword arguments, restated by the async
client and by the command line. :class:`RpcClientSettings` declares each once (with
:func:`~socklab.core.settings.setting`), on top of every client's connect timeout and TLS options;
``socklab rpc call`` builds it with ``options_from`` as the servers build theirs, and the library
takes it whole (keyword arguments to ``rpc.connect`` are changes to it, checked by name).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from socklab.core.errors import UsageError
from socklab.core.settings import ENGINE_NAMES, ClientSettings, best_engine, setting
from socklab.protocols.framing import CONTENT_LENGTH, NDJSON

__all__ = ["MAX_QUEUED", "RpcClientSettings"]

MAX_QUEUED = 4 * 1024 * 1024
"""Bytes a tcp:// or ws:// connection lets wait for the server before a call waits for room."""


@dataclass
class RpcClientSettings(ClientSettings):
    """What a JSON-RPC client accepts, on top of every client's connect timeout and TLS options.

    ``tls`` follows the URL's scheme (``tls://``, ``https://``, ``wss://``): the URL decides it.
    ``timeout=None`` (the library only) waits for an answer forever.
    The fields with ``cli=""`` are the library's only; ``socklab rpc call`` keeps their defaults
    (and makes a single attempt: ``retries=0``).
    """

    timeout: float | None = setting(30.0, "Seconds to wait for each answer.", min=0)
    framing: str = setting(NDJSON, "TCP framing: ndjson (one JSON text per line) or content-length (LSP-style "
                                   "headers).", choices=(NDJSON, CONTENT_LENGTH))
    reconnect: bool = setting(True, "Reconnect on the next call after the connection dropped.", cli="")
    retries: int = setting(5, "Connection attempts after the first one failed.", min=0, cli="")
    backoff: float = setting(0.05, "The first delay between connection attempts, seconds (doubles each time).",
                             min=0, cli="")
    max_backoff: float = setting(2.0, "The longest delay between connection attempts, seconds.", min=0, cli="")
    cancel_on_timeout: bool = setting(True, "Send $/cancelRequest for a call that timed out.", cli="")
    max_queued: int = setting(MAX_QUEUED, "Bytes a tcp:// or ws:// connection lets wait for a server that does "
                                          "not read them before a call waits for room.", min=1, cli="")
    engine: str = setting(best_engine(), "The engine the client's connections run on (see `socklab engines`).",
                          choices=ENGINE_NAMES, cli="")
    background: bool = setting(False, "Read answers on a thread of the engine's own, also while no call waits "
                                      "(for futures waited on with concurrent.futures.wait or done callbacks); "
                                      "otherwise select, poll and epoll run on the thread that waits.", cli="")

    def validate(self) -> None:
        """Raise :class:`~socklab.core.errors.UsageError` naming the option for a value it cannot take."""
        super().validate()  # ranges, --pin's pairs, --source
        if self.timeout is not None and not self.timeout > 0:
            raise UsageError(f"--timeout is {self.timeout:g}: it must be more than 0 (the library's None waits "
                             "forever)")
        if self.framing not in (NDJSON, CONTENT_LENGTH):
            raise UsageError(f"--framing {self.framing!r}: use {NDJSON} or {CONTENT_LENGTH}")
        if self.engine not in ENGINE_NAMES:
            raise UsageError(f"unknown engine {self.engine!r}; choose one of: {', '.join(ENGINE_NAMES)}")

    def replace(self, **changes: Any) -> RpcClientSettings:
        """A copy with some fields changed, checked (an unknown name is a UsageError naming it)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise UsageError(f"unknown RPC client setting(s): {', '.join(unknown)} (see RpcClientSettings)")
        out = dataclasses.replace(self, **changes)
        out.validate()
        return out

    @classmethod
    def for_url(cls, tls: bool, settings: RpcClientSettings | None, changes: dict[str, Any]) -> RpcClientSettings:
        """What a client of a URL takes: ``settings`` (or the defaults) with ``changes``, checked, and
        ``tls`` as the URL's scheme says.

        Raises:
            UsageError: an unknown or bad setting; ``pin`` for a URL without TLS (the pin is checked
            over TLS only, and the URL says plain).
        """
        base = settings if settings is not None else cls()
        if not isinstance(base, cls):
            raise UsageError(f"settings must be an RpcClientSettings, not {type(base).__name__}")
        out = base.replace(**changes, tls=tls)
        if out.pin is not None and not tls:
            raise UsageError("--pin checks a TLS certificate: use a tls://, https:// or wss:// URL")
        return out
