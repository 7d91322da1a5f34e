"""The access log: one line per response, in Common Log Format or as JSON.

Why this exists: an operator's first question about a web server is "who asked for what, and what
did they get". The Common Log Format (NCSA, also nginx's and Apache's default) answers it in one
line that every log tool reads; ``--log-format json`` gives the same facts as one JSON object per
line for machines. Request lines are escaped, so a client cannot forge log lines with quotes or
control characters.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from socklab.apps.http.router import Request

__all__ = ["AccessLog"]


class AccessLog:
    """One line per response on ``stream``: Common Log Format or JSON (``log_format``)."""

    def __init__(self, fmt: str = "common", stream: Any = None) -> None:
        self.fmt = fmt
        self.stream = stream if stream is not None else sys.stdout

    def __call__(self, req: Request | None, client: Any, status: int, size: int, line: str) -> None:
        host = client[0] if isinstance(client, tuple) else str(client or "-")
        if self.fmt == "json":
            rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "client": host,
                   "method": req.method if req else None, "path": req.path if req else None,
                   "target": req.target if req else line, "status": status, "bytes": size,
                   "user_agent": req.header("user-agent") if req else None}
            out = json.dumps(rec)
        else:
            ts = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
            safe = line.encode("ascii", "backslashreplace").decode().replace('"', '\\"')
            out = f'{host} - - [{ts}] "{safe}" {status} {size if size else "-"}'
        try:
            print(out, file=self.stream, flush=True)
        except (OSError, ValueError):
            pass  # a closed stdout must not break serving
