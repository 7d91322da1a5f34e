"""The progress bars of ``socklab send`` and ``socklab receive``: on a terminal only.

Why this exists: a receiver serves several senders at once, each file with its own bar, while its
per-file lines and summaries must still read as lines. One rich ``Progress`` per command holds a
task per file being received (rich locks its own state, so sessions on several engine threads may
advance their bars at once), and every line goes through :meth:`Bars.say`, printed above the bars.
On a pipe, or with ``--quiet``, there are no bars and ``say`` is a plain line on stderr.
"""

from __future__ import annotations

from typing import Any, Protocol

import click

from socklab.cli.progress import BarScope, bar_wanted, byte_progress
from socklab.protocols.text import escape_peer_text

__all__ = ["NO_BAR", "Bars", "FileBar"]


class FileBar(Protocol):
    """What a receive session tells about the file it is receiving."""

    def begin(self, name: str, total: int | None, done: int) -> None:
        """A file starts: ``done`` of its ``total`` bytes are already here (a resume, a present file)."""

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more arrived."""

    def end(self) -> None:
        """The file is over (landed, refused or interrupted)."""


class Bars(BarScope):
    """A command's bars (``enabled``: on a terminal and not ``--quiet``; see :func:`bar_wanted`)."""

    def __init__(self, quiet: bool, enabled: bool | None = None) -> None:
        self.quiet = quiet
        on = bar_wanted(quiet) if enabled is None else enabled
        # stdout may carry data (--stdout) or JSON: the bars never touch it
        self.progress = byte_progress("{task.description}", redirect_stdout=False) if on else None

    def say(self, line: str, always: bool = False) -> None:
        """One line on stderr (above the bars while they show); with ``--quiet`` only if ``always``."""
        if self.quiet and not always:
            return
        if self.progress is not None:
            self.progress.console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
        else:
            click.echo(line, err=True)

    def file_bar(self) -> FileBar | None:
        """A bar for one session's files, or ``None`` (no bars)."""
        return _TaskBar(self.progress) if self.progress is not None else None

    def task(self, label: str, total: int | None) -> Any:
        """A task of the sender's single bar (its id), or ``None``."""
        return self.progress.add_task(label, total=total) if self.progress is not None else None


class _TaskBar:
    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.task: Any = None

    def begin(self, name: str, total: int | None, done: int) -> None:
        from rich.markup import escape

        self.end()
        label = escape(escape_peer_text(name))  # a peer's name: no controls, no rich markup
        self.task = self.progress.add_task(label, total=total, completed=done)

    def advance(self, nbytes: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, nbytes)

    def end(self) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
            self.progress.refresh()  # redraw now: the next line must not repeat the bar's last frame


class _NoBar:
    def begin(self, name: str, total: int | None, done: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def end(self) -> None:
        pass


NO_BAR: FileBar = _NoBar()
