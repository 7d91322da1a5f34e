"""Output that terminals and pipes can both use (issue 17).

Why this exists: rich sizes a table to the terminal, and when stdout is a pipe it assumes 80
columns and folds cells (``127.0.0.1:602`` / ``63``), so ``socklab ss -lt | grep PORT`` found
nothing. :func:`stdout_console` gives a console that, piped, never wraps (one row per line, no
trailing padding) and prints no colour; on a terminal it is rich as usual. ``NO_COLOR`` is
honoured either way (rich reads it). :func:`json_text` is pretty on a terminal and compact when
piped, as httpie does.
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["json_text", "print_rich", "stdout_console", "stdout_is_terminal"]

PIPE_WIDTH = 100_000  # wide enough that no row of any table folds


def stdout_is_terminal() -> bool:
    return bool(getattr(sys.stdout, "isatty", lambda: False)())


def stdout_console() -> Any:
    """A rich Console on stdout: the terminal's width on a terminal, never wrapping when piped."""
    from rich.console import Console

    if stdout_is_terminal():
        return Console(highlight=False, soft_wrap=False)
    return Console(highlight=False, soft_wrap=False, width=PIPE_WIDTH, color_system=None, emoji=False)


def print_rich(renderable: Any) -> None:
    """Print a table (or a group of them) to stdout; piped: one row per line, right ends trimmed."""
    console = stdout_console()
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as capture:
        console.print(renderable)
    text = "\n".join(line.rstrip() for line in capture.get().splitlines())
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def json_text(value: Any) -> str:
    """JSON for people on a terminal (indented), one compact line for a pipe."""
    if stdout_is_terminal():
        return json.dumps(value, indent=2, ensure_ascii=False)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
