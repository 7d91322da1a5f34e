"""Click parameter types shared by every command.

Why this exists: an option naming a file socklab will write (``--trace-json``, ``--pcap``,
``--save``, ``--unix``, ``--store``) must fail while the options are parsed - one line naming the
option and the path, exit 2 - not as a ``PermissionError`` after the server started or the
benchmark ran.
"""

from __future__ import annotations

import os
import stat
from typing import Any

import click

__all__ = ["Number", "WritablePath"]


class WritablePath(click.ParamType[Any]):
    """A path socklab will create or overwrite: its folder must exist and be writable.

    ``allow_dash``: ``-`` means stdout and is passed through; so are the ``special`` values
    (SQLite's ``:memory:``).
    """

    name = "path"

    def __init__(self, *, allow_dash: bool = False, special: tuple[str, ...] = ()) -> None:
        self.allow_dash, self.special = allow_dash, special

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or (self.allow_dash and value == "-") or value in self.special:
            return value
        path = os.fspath(value)
        problem = writable_problem(path)
        if problem:
            self.fail(f"cannot write {path!r}: {problem}", param, ctx)
        return path


def writable_problem(path: str) -> str | None:
    """Why ``path`` cannot be written, in a few words, or ``None`` when it can.

    Asks the kernel rather than guessing from mode bits (root passes ``os.access`` on ``/proc``):
    a new file is created and removed again; an existing one is opened for appending, not truncated.
    """
    if not path:
        return "empty path"
    if os.path.isdir(path):
        return "it is a directory"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"no such directory {folder!r}"
    try:
        if os.path.lexists(path):
            if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
                return None  # a socket left by an earlier server, a FIFO, /dev/null: the command decides
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        else:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(path)
    except OSError as exc:
        return exc.strerror.lower() if exc.strerror else str(exc)
    return None


class Number(click.ParamType[Any]):
    """An int or float within an inclusive range: ``--port: 70000 is out of range 0..65535``.

    ``above``: an exclusive lower bound instead (a timeout must be more than 0).
    """

    def __init__(self, kind: type[int] | type[float], min: float | None = None, max: float | None = None, *,
                 above: float | None = None) -> None:
        self.kind, self.min, self.max, self.above = kind, min, max, above
        self.name = "integer" if kind is int else "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, self.kind) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = self.kind(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a valid {self.name}", param, ctx)
        if self.above is not None and not number > self.above:
            self.fail(f"{_num(number)} is out of range: must be more than {_num(self.above)}", param, ctx)
        low = self.min is not None and number < self.min
        high = self.max is not None and number > self.max
        if low or high:
            if self.min is not None and self.max is not None:
                self.fail(f"{_num(number)} is out of range {_num(self.min)}..{_num(self.max)}", param, ctx)
            bound = f"at least {_num(self.min)}" if low else f"at most {_num(self.max)}"
            self.fail(f"{_num(number)} is out of range: must be {bound}", param, ctx)
        return number

    def __repr__(self) -> str:
        return f"Number({self.kind.__name__}, {self.min}, {self.max}, above={self.above})"


def _num(x: float | None) -> str:
    """``3``, ``16777216``, ``0.5``: a bound as people write it."""
    if x is None:
        return "?"
    return str(int(x)) if float(x).is_integer() else repr(x)
