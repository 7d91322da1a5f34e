"""The progress bar of every long transfer (send/receive, TFTP get/put): one look, on stderr.

Why this exists: a learner moving a big file wants to see bytes, rate and time left, and a script
reading stdout must not get the bar mixed into its data. Written once, so the apps agree.
"""

from __future__ import annotations

from typing import Any

__all__ = ["byte_progress"]


def byte_progress(label: str) -> Any:
    """A rich ``Progress`` (label, bar, bytes, rate, time left) writing to stderr; not started yet.

    ``label`` is a rich ``TextColumn`` format, e.g. ``"[bold]{task.description}"`` or plain text.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True))
