"""Where running socklab servers say who they are, so ``socklab ss`` can label their sockets.

Why this exists: ``ss`` and ``netstat`` show a pid and a program name - ``python3`` for every
socklab server. Each server therefore drops a small JSON file in a per-user directory when it
starts (app, engine, addresses, and whatever the app knows: chat nicks, the transfer in
progress), and removes it when it stops. ``socklab ss`` reads the files and matches them by pid
and port. Files of processes that died without cleaning up are ignored and removed (stale
files are expected: a ``kill -9`` cannot run cleanup code).

How an app uses it::

    from socklab.runtime import register_server

    reg = register_server(server, app="chat", extra={"room": "lobby"})
    reg.update(peers={"127.0.0.1:50122": "nick alice"})   # shown next to that connection
    # removed automatically when the server stops (Server.on_stop) or the process exits

The directory is ``$XDG_RUNTIME_DIR/socklab/servers`` when that variable names a writable
directory, else ``/tmp/socklab-<uid>/servers`` (mode 0700).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["Registration", "read_servers", "register_server", "registry_dir"]

_counter = 0
_counter_lock = threading.Lock()


def registry_dir() -> Path:
    """The per-user directory holding one JSON file per running socklab server."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return Path(runtime) / "socklab" / "servers"
    return Path(tempfile.gettempdir()) / f"socklab-{os.getuid()}" / "servers"


def _address_text(addr: Any) -> str:
    if isinstance(addr, tuple):
        return f"[{addr[0]}]:{addr[1]}" if ":" in str(addr[0]) else f"{addr[0]}:{addr[1]}"
    return addr.decode(errors="replace") if isinstance(addr, bytes) else str(addr)


class Registration:
    """One server's registry file; :meth:`update` rewrites it, :meth:`remove` deletes it."""

    def __init__(self, path: Path, record: dict[str, Any]) -> None:
        self.path, self.record = path, record
        self._lock = threading.Lock()
        self._write()

    def _write(self) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.record), encoding="utf-8")
            os.replace(tmp, self.path)  # readers never see half a file

    def update(self, **extra: Any) -> None:
        """Merge ``extra`` into the app-specific information and rewrite the file.

        ``peers={"HOST:PORT": "label"}`` labels single connections (by the peer's address).
        """
        self.record.setdefault("extra", {}).update(extra)
        with contextlib.suppress(OSError):
            self._write()

    def remove(self) -> None:
        """Delete the file (idempotent)."""
        with contextlib.suppress(OSError):
            self.path.unlink()


def register_server(server: Any = None, *, app: str | None = None, engine: str | None = None,
                    addresses: list[Any] | None = None, extra: dict[str, Any] | None = None) -> Registration:
    """Announce a running server to ``socklab ss``.

    Args:
        server: a :class:`~socklab.runtime.Server` whose listeners are bound (its engine,
            addresses and label are read; removal is hooked on its ``on_stop``), or ``None``.
        app: the app's name as ``ss`` shows it (``"echo"``, ``"chat"``...; default: the
            server's label).
        engine: the engine name (default: the server's).
        addresses: the bound addresses (default: the server's).
        extra: app-specific information (``{"peers": {...}}``, ``{"transfer": "a.iso 41%"}``...).

    Returns:
        The :class:`Registration`; also removed at interpreter exit. A server registered before
        gets its registration back (``extra`` merged in), so there is one file per server.
    """
    global _counter
    previous = getattr(server, "registration", None)
    if isinstance(previous, Registration):  # one file per server, however often it is announced
        if extra:
            previous.update(**extra)
        return previous
    if server is not None:
        app = app or getattr(server, "label", None)
        engine = engine or server.engine.name
        addresses = addresses if addresses is not None else list(server.addresses)
    with _counter_lock:
        _counter += 1
        n = _counter
    pid = os.getpid()
    name = f"{pid}.json" if n == 1 else f"{pid}-{n}.json"
    record = {"pid": pid, "app": app or "server", "engine": engine or "-", "started": time.time(),
              "addresses": [_address_text(a) for a in addresses or []], "extra": dict(extra or {})}
    reg = Registration(registry_dir() / name, record)
    atexit.register(reg.remove)
    if server is not None and hasattr(server, "on_stop"):
        server.on_stop(reg.remove)
        server.registration = reg
    return reg


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_servers(directory: Path | None = None, *, clean: bool = True) -> list[dict[str, Any]]:
    """The registered servers whose process still runs; stale files are removed when ``clean``."""
    d = directory or registry_dir()
    out = []
    try:
        files = sorted(d.glob("*.json"))
    except OSError:
        return []
    for f in files:
        try:
            record = json.loads(f.read_text(encoding="utf-8"))
            pid = int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # half-written or foreign: ignore
        if not _alive(pid):
            if clean:
                with contextlib.suppress(OSError):
                    f.unlink()
            continue
        out.append(record)
    return out
