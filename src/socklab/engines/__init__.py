"""The eight engines: how a server handles many clients, side by side.

Why this exists: choosing a concurrency model is the central decision of a network server.
socklab implements every classic one behind one interface (:class:`~socklab.engines.base.Engine`)
so the same app runs on each and they can be compared. Engines are imported lazily: asking for
``uvloop`` imports uvloop, asking for ``select`` does not.

================  ==========================================================================
``iterative``     one client at a time, blocking sockets: shows why concurrency is needed
``threads``       a thread per connection, blocking sockets
``pool``          a bounded pool of worker threads and a bounded queue of waiting connections
``select``        one thread, non-blocking sockets, select()
``poll``          one thread, non-blocking sockets, poll()
``epoll``         one thread, non-blocking sockets, epoll (socklab's default)
``asyncio``       CPython's event loop, socklab protocols adapted 1:1
``uvloop``        the libuv-based loop, the same adapter
================  ==========================================================================
"""

from __future__ import annotations

import importlib
from typing import Any

from socklab.core.errors import UsageError
from socklab.core.settings import ENGINE_NAMES
from socklab.engines.base import Engine, EngineInfo

__all__ = ["ENGINE_NAMES", "Engine", "EngineInfo", "engine_class", "engine_infos", "make_engine"]

_WHERE = {
    "iterative": "socklab.engines.blocking:IterativeEngine",
    "threads": "socklab.engines.blocking:ThreadsEngine",
    "pool": "socklab.engines.blocking:PoolEngine",
    "select": "socklab.engines.reactor:SelectEngine",
    "poll": "socklab.engines.reactor:PollEngine",
    "epoll": "socklab.engines.reactor:EpollEngine",
    "asyncio": "socklab.engines.aio:AsyncioEngine",
    "uvloop": "socklab.engines.aio:UvloopEngine",
}


def engine_class(name: str) -> type[Engine]:
    """The class of the engine called ``name``.

    Raises:
        UsageError: unknown name, or the engine cannot be imported on this machine.
    """
    if name not in _WHERE:
        raise UsageError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINE_NAMES)}")
    module, _, attr = _WHERE[name].partition(":")
    try:
        cls: type[Engine] = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise UsageError(f"engine {name!r} is not available here: {exc}") from exc
    return cls


def make_engine(name: str, *args: Any, **kwargs: Any) -> Engine:
    """A new engine called ``name``; arguments go to :class:`~socklab.engines.base.Engine`."""
    return engine_class(name)(*args, **kwargs)


def engine_infos() -> list[EngineInfo]:
    """What each engine is and when to choose it, in teaching order."""
    return [engine_class(name).info for name in ENGINE_NAMES]
