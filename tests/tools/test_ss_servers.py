"""Every server command is labelled in ``socklab ss``: it serves through the runtime, which registers it.

Each command is started as a subprocess on port 0; once it says where it listens, ``socklab ss
--pid PID --socklab --json`` must show its sockets with its label (``"rpc (engine ...)"``). Before
the runtime layer, rpc, tap, peer and listen re-typed the serve lifecycle and were never labelled.
"""

from __future__ import annotations

import json
import re
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

READY = r"listening on (\S+)"

# label, command line (after "socklab"), which stream says "listening on"
COMMANDS: list[tuple[str, list[str], str]] = [
    ("echo", ["echo", "serve", "--port", "0"], "stdout"),
    ("chat", ["chat", "serve", "--tcp-port", "0", "--http-port", "-1", "--store", ":memory:"], "stdout"),
    ("http", ["http", "serve", "--port", "0", "{tmp}"], "stdout"),
    ("tftp", ["tftp", "serve", "--port", "0", "--root", "{tmp}"], "stdout"),
    ("receive", ["receive", "--port", "0", "--dir", "{tmp}"], "stdout"),
    ("send", ["send", "--listen", "--host", "127.0.0.1", "--port", "0", "{tmp}"], "stdout"),
    ("rpc", ["rpc", "serve", "--demo", "--port", "0"], "stdout"),
    ("tap", ["tap", "127.0.0.1:0", "--to", "127.0.0.1:9"], "stdout"),
    ("peer", ["peer", "--listen", "127.0.0.1:0", "--name", "ann", "--control", "{tmp}/ann.sock"], "stdout"),
    ("listen", ["listen", "127.0.0.1", "0"], "stderr"),
]


def wait_line(stream: Any, pattern: str, timeout: float = 30.0) -> str:
    """Read ``stream`` line by line until one matches ``pattern`` (the readiness signal)."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while sel.select(max(0.0, deadline - time.monotonic())):
            line: str = stream.readline().decode(errors="replace")
            if not line:
                break
            seen.append(line)
            if re.search(pattern, line):
                return line
    raise AssertionError(f"no line matching {pattern!r} within {timeout} s: {seen!r}")


@pytest.mark.parametrize(("label", "argv", "where"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_server_command_is_labelled_in_ss(label: str, argv: list[str], where: str, tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "PATH": "/usr/bin:/bin"}
    files = tmp_path / "files"
    files.mkdir()
    args = [a.replace("{tmp}", str(files)) for a in argv]
    proc = subprocess.Popen([sys.executable, "-m", "socklab", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, bufsize=0)
    try:
        wait_line(proc.stdout if where == "stdout" else proc.stderr, READY)
        out = subprocess.run([sys.executable, "-m", "socklab", "ss", "--pid", str(proc.pid), "--socklab", "--json"],
                             capture_output=True, timeout=30, env=env)
        assert out.returncode == 0, out.stderr
        labels = {row["socklab"] for row in json.loads(out.stdout)}
        assert any(str(lab).startswith(f"{label} (engine ") for lab in labels), \
            f"socklab ss shows {sorted(map(str, labels))} for {label}, not '{label} (engine ...)'"
    finally:
        proc.kill()
        proc.wait(10)
        for s in (proc.stdin, proc.stdout, proc.stderr):
            if s is not None:
                s.close()


def test_a_server_registered_without_naming_the_app_shows_its_label(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``Server(label=...)`` is what ``ss`` shows by default, and a server has one registry file."""
    from socklab.apps.echo.protocol import EchoProtocol
    from socklab.core.settings import ServerSettings
    from socklab.runtime import Server, read_servers, register_server

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    srv = Server(ServerSettings(host="127.0.0.1", port=0, engine="epoll"), label="mine")
    srv.listen(EchoProtocol)
    try:
        reg = register_server(srv)
        assert register_server(srv, app="other", extra={"note": "x"}) is reg  # announced twice: one file
        assert [(r["app"], r["extra"]) for r in read_servers()] == [("mine", {"note": "x"})]
    finally:
        srv.close()
    assert read_servers() == []  # removed when the server stopped
