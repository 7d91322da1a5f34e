"""A service: the named Python functions a JSON-RPC server exposes.

Why this exists: "remote procedure call" means a name on the wire picks a function here. A
:class:`Service` is that table, built with a decorator or from an existing module/object::

    svc = Service()

    @svc.method
    def add(a: int, b: int) -> int:
        return a + b

    @svc.method(name="math.slow")
    async def slow(seconds: float) -> str: ...

Sync functions run on a bounded thread pool (they may block); ``async def`` functions run on an
asyncio loop; ``inline=True`` marks a cheap sync function that may run directly on the engine
thread (no thread hop - it must never block). Each method keeps its :class:`inspect.Signature` so
parameters are checked before the call (-32602) and ``rpc.discover`` can list them.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, overload

from socklab.apps.rpc.errors import RpcError
from socklab.core.errors import UsageError

__all__ = ["MethodSpec", "Service", "demo_service", "load_target"]

F = Callable[..., Any]


@dataclass(frozen=True)
class MethodSpec:
    """One exposed method: its wire name, function, signature and how it runs."""

    name: str
    func: F
    signature: inspect.Signature
    is_async: bool
    inline: bool

    def describe(self) -> dict[str, Any]:
        params = []
        for p in self.signature.parameters.values():
            entry: dict[str, Any] = {"name": p.name, "kind": p.kind.name.lower()}
            if p.default is not inspect.Parameter.empty:
                entry["default"] = repr(p.default)
            if p.annotation is not inspect.Parameter.empty:
                entry["type"] = p.annotation if isinstance(p.annotation, str) else \
                    getattr(p.annotation, "__name__", repr(p.annotation))
            params.append(entry)
        doc = inspect.getdoc(self.func) or ""
        return {"name": self.name, "signature": f"{self.name}{self.signature}", "params": params,
                "async": self.is_async, "doc": doc.split("\n\n")[0]}


class Service:
    """A table of methods by name. ``rpc.discover`` (introspection) is always present."""

    def __init__(self, name: str = "service") -> None:
        self.name = name
        self.methods: dict[str, MethodSpec] = {}

    @overload
    def method(self, func: F) -> F: ...

    @overload
    def method(self, *, name: str | None = None, inline: bool = False) -> Callable[[F], F]: ...

    def method(self, func: F | None = None, *, name: str | None = None, inline: bool = False) -> Any:
        """Decorator: expose ``func`` (as ``name`` if given). ``inline=True``: run on the engine thread."""
        def register(f: F) -> F:
            self.register(f, name=name, inline=inline)
            return f
        return register(func) if func is not None else register

    def register(self, func: F, *, name: str | None = None, inline: bool = False) -> MethodSpec:
        """Expose ``func``; returns its :class:`MethodSpec`.

        Raises:
            UsageError: the name is reserved (``rpc.`` prefix, spec section 4) or taken.
        """
        wire = name or func.__name__
        if wire.startswith("rpc.") or wire.startswith("$/"):
            raise UsageError(f"method names starting with 'rpc.' or '$/' are reserved: {wire!r}")
        if wire in self.methods:
            raise UsageError(f"method {wire!r} is registered twice")
        is_async = inspect.iscoroutinefunction(func)
        if is_async and inline:
            raise UsageError(f"{wire!r}: async methods cannot be inline")
        spec = MethodSpec(wire, func, inspect.signature(func), is_async, inline)
        self.methods[wire] = spec
        return spec

    def lookup(self, name: str) -> MethodSpec | None:
        if name == "rpc.discover":
            return _DISCOVER_SPEC
        return self.methods.get(name)

    def describe(self) -> dict[str, Any]:
        """What ``rpc.discover`` answers: every method with its signature and first doc paragraph."""
        return {"service": self.name, "methods": [m.describe() for _, m in sorted(self.methods.items())]}

    @classmethod
    def from_object(cls, obj: Any, name: str | None = None) -> Service:
        """Expose an object's (or module's) public functions and methods."""
        if isinstance(obj, Service):
            return obj
        svc = cls(str(name or getattr(obj, "__name__", type(obj).__name__)))
        for attr in sorted(dir(obj)):
            if attr.startswith("_"):
                continue
            value = getattr(obj, attr)
            if isinstance(obj, ModuleType) and getattr(value, "__module__", None) != obj.__name__:
                continue  # imported names are not the module's API
            if inspect.isfunction(value) or inspect.ismethod(value):
                svc.register(value)
        return svc


def _discover() -> None:
    """List the service's methods and their signatures."""


_DISCOVER_SPEC = MethodSpec("rpc.discover", _discover, inspect.signature(_discover), False, True)


def load_target(target: str) -> Service:
    """The service named by ``module:object``, ``module``, or ``path/file.py[:object]``.

    Raises:
        UsageError: it cannot be imported or holds no methods.
    """
    modname, _, attr = target.partition(":")
    try:
        if modname.endswith(".py"):
            path = Path(modname)
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                raise UsageError(f"cannot load {modname}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(modname)
    except (ImportError, OSError, SyntaxError) as exc:
        raise UsageError(f"cannot import {modname!r}: {exc}") from exc
    obj: Any = module
    for part in filter(None, attr.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"{modname!r} has no attribute {attr!r}") from None
    svc = Service.from_object(obj)
    if not svc.methods:
        raise UsageError(f"{target!r} exposes no public functions")
    return svc


def demo_service() -> Service:
    """The methods of the JSON-RPC 2.0 specification's examples (section 7) and a few more."""
    svc = Service("demo")

    @svc.method(inline=True)
    def subtract(minuend: float, subtrahend: float) -> float:
        """Return minuend - subtrahend (by position or by name)."""
        return minuend - subtrahend

    @svc.method(name="sum", inline=True)
    def sum_(*numbers: float) -> float:
        """Add any count of numbers."""
        return sum(numbers)

    @svc.method(inline=True)
    def get_data() -> list[Any]:
        """Return the specification's sample data."""
        return ["hello", 5]

    @svc.method(inline=True)
    def update(*args: Any) -> None:
        """Accept anything (the specification sends it as a notification)."""

    @svc.method(inline=True)
    def notify_hello(*args: Any) -> None:
        """Accept anything (a notification in the specification)."""

    @svc.method(inline=True)
    def notify_sum(*args: Any) -> None:
        """Accept anything (a notification in the specification)."""

    @svc.method
    def add(a: float, b: float) -> float:
        """Return a + b (runs on the handler thread pool)."""
        return a + b

    @svc.method(name="add_inline", inline=True)
    def add_inline(a: float, b: float) -> float:
        """Return a + b on the engine thread (no thread hop)."""
        return a + b

    @svc.method
    def echo(value: Any) -> Any:
        """Return the value unchanged."""
        return value

    @svc.method
    def sleep(seconds: float) -> float:
        """Block a handler thread for ``seconds`` (at most 60), then return them."""
        import time

        time.sleep(min(float(seconds), 60.0))
        return seconds

    @svc.method
    async def async_sleep(seconds: float) -> float:
        """Wait ``seconds`` (at most 60) on the asyncio loop, then return them."""
        import asyncio

        await asyncio.sleep(min(float(seconds), 60.0))
        return seconds

    @svc.method
    async def async_add(a: float, b: float) -> float:
        """Return a + b from a coroutine."""
        return a + b

    @svc.method
    def fail(code: int = -32050, message: str = "it failed", data: Any = None) -> None:
        """Raise an application error with this code, message and data."""
        raise RpcError(message, data, code=code)

    @svc.method
    def crash() -> None:
        """Raise an unexpected exception: the client sees -32603 and no traceback."""
        raise ZeroDivisionError("secret internals")

    return svc
