"""docs/trace.md's first two samples are what its commands print today.

The doc shows ``socklab echo serve --port 7007 --trace`` and ``printf 'hello\\n' | socklab echo
client 127.0.0.1:7007 --trace``; this test runs the same two commands (the server on port 0) and
compares the trace lines with the doc's, the time of day, fd numbers and port numbers aside. The
TCP state of a ``connect`` that said EINPROGRESS, of a ``shutdown``, a ``close`` and a ``send``
depends on whether the peer's packet was handled before the state was read (the server's echo can
be read, and the client's FIN be in, before the server looks), so those are left out; every other
line's state is compared. (The samples went stale once: the client's connect became
non-blocking with the Happy Eyeballs dial, core/dial.py, and the doc still showed the old lines.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from tests.conftest import REPO

DOC = REPO / "docs" / "trace.md"
TRACE_LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d{6} |    note: )")


def doc_samples() -> tuple[list[str], list[str]]:
    text = DOC.read_text()
    after = text[text.index("Both sides of one conversation"):]
    server, client = re.findall(r"^```\n(.*?)^```", after, re.S | re.M)[:2]
    return server.splitlines(), client.splitlines()


def shape(line: str) -> tuple[str, str | None]:
    """A trace line without its time, fd and port numbers; and its TCP state where it is not a race."""
    line = re.sub(r"^\d\d:\d\d:\d\d\.\d{6} ", "", line)
    line = re.sub(r"fd=\d+", "fd=N", line)
    line = re.sub(r"(\d+\.\d+\.\d+\.\d+|\]):\d+", r"\1:P", line)
    m = re.match(r"^(.*) \[([A-Z_0-9]+)\]$", line)
    if not m:
        return line, None
    body, state = m.groups()
    racy = any(f" {op} " in body for op in ("shutdown", "close", "send")) or "EINPROGRESS" in body
    return body, None if racy else state


def trace_lines(output: str) -> list[tuple[str, str | None]]:
    return [shape(line) for line in output.splitlines() if TRACE_LINE.match(line)]


def test_the_echo_samples_are_what_the_commands_print(spawn: Callable[..., Any]) -> None:
    doc_server, doc_client = doc_samples()
    env = dict(os.environ, NO_COLOR="1", PYTHONUNBUFFERED="1")
    srv = spawn("echo", "serve", "--port", "0", "--trace")
    port = srv.wait_for(r"listening on tcp://127\.0\.0\.1:(\d+)").group(1)
    client = subprocess.run([sys.executable, "-m", "socklab", "echo", "client", f"127.0.0.1:{port}", "--trace"],
                            input=b"hello\n", capture_output=True, timeout=60, env=env, check=False)
    assert client.returncode == 0, client.stderr
    assert client.stdout.decode().startswith("hello ")
    srv.stop(2)  # SIGINT: graceful, the connection's close is traced before the exit
    assert srv.popen.stderr is not None
    server_out = srv.popen.stderr.read().decode()

    want_client = trace_lines("\n".join(doc_client))
    assert trace_lines(client.stderr.decode()) == want_client
    want_server = trace_lines("\n".join(doc_server))
    got_server = trace_lines(server_out)
    assert got_server[:len(want_server)] == want_server  # then the shutdown's lines, not in the doc
    # the doc's program lines are the program's too (the server's on stdout)
    program = [line for line in doc_server if line and not TRACE_LINE.match(line)]
    srv_stdout = "".join(srv.lines) + (srv.popen.stdout.read().decode() if srv.popen.stdout else "")
    for line in program:
        generic = re.sub(r"(\d+\.\d+\.\d+\.\d+):\d+", r"\1:", line)
        assert generic in re.sub(r"(\d+\.\d+\.\d+\.\d+):\d+", r"\1:", srv_stdout + server_out), line
