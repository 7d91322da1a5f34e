"""The progress bar of every long transfer (send/receive, TFTP get/put): one look, on stderr.

Why this exists: a learner moving a big file wants to see bytes, rate and time left, and a script
reading stdout must not get the bar mixed into its data. Written once, so the apps agree.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Self

__all__ = ["BarScope", "bar_wanted", "byte_progress"]


def bar_wanted(quiet: bool = False) -> bool:
    """Whether to draw a bar: only on a terminal (stderr), never with ``--quiet``, never on a pipe
    or a file (there the app's one-line summary says it all) nor a ``TERM=dumb`` terminal."""
    if quiet or os.environ.get("TERM") == "dumb":
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced stderr
        return False


def byte_progress(label: str, **options: Any) -> Any:
    """A rich ``Progress`` (label, bar, percent, bytes, rate, time left) writing to stderr; not started yet.

    ``label`` is a rich ``TextColumn`` format, e.g. ``"[bold]{task.description}"`` or plain text.
    ``options`` go to rich's ``Progress`` (``transient``, ``redirect_stdout``...).
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(TextColumn(label), BarColumn(), TaskProgressColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True), **options)


class BarScope:
    """A command's bars for the length of a ``with`` block: ``progress`` (a :func:`byte_progress`, or
    ``None`` for no bars) starts on entering and stops on leaving, also on an error."""

    progress: Any = None

    def __enter__(self) -> Self:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
