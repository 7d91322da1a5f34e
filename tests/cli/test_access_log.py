"""Server logging (issue 17): a line per client at info, -q hides it, addresses as host:port."""

from __future__ import annotations

import os
import re
import selectors
import socket
import time
from collections.abc import Callable

import pytest

from tests.conftest import Proc


def _serve(spawn: Callable[..., Proc], *extra: str) -> tuple[Proc, str, int]:
    proc = spawn("echo", "serve", "--port", "0", "--engine", "asyncio", *extra)
    m = proc.wait_for(r"listening on tcp://(\S+):(\d+)")
    return proc, m.group(1), int(m.group(2))


def _stderr(proc: Proc) -> str:
    assert proc.popen.stderr is not None
    return proc.popen.stderr.read().decode(errors="replace")


def _wait_stderr(proc: Proc, pattern: str, timeout: float = 20.0) -> str:
    """Read the server's stderr until ``pattern`` appears (the event), within a generous deadline."""
    assert proc.popen.stderr is not None
    seen = ""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.popen.stderr, selectors.EVENT_READ)
        while not re.search(pattern, seen) and time.monotonic() < deadline:
            if sel.select(max(0.0, deadline - time.monotonic())):
                chunk = os.read(proc.popen.stderr.fileno(), 4096)
                if not chunk:
                    break
                seen += chunk.decode(errors="replace")
    return seen


def _one_client(host: str, port: int) -> int:
    with socket.create_connection((host, port), timeout=10) as c:
        c.sendall(b"hello\n")
        got = b""
        while len(got) < 6:
            chunk = c.recv(64)
            assert chunk
            got += chunk
        return int(c.getsockname()[1])


def test_each_client_gets_a_connected_and_a_closed_line(spawn: Callable[..., Proc]) -> None:
    proc, host, port = _serve(spawn)
    try:
        local = _one_client(host, port)
        err = _wait_stderr(proc, rf"127\.0\.0\.1:{local} - closed after")
    finally:
        proc.stop()
    assert f"socklab echo: 127.0.0.1:{local} - connected" in err, err
    # at info the line stays off the data path (no per-message cost): no byte counts
    assert re.search(rf"127\.0\.0\.1:{local} - closed after [\d.]+ s\n", err), err
    assert not re.search(r"\('127\.0\.0\.1', \d+\)", err)  # never a Python tuple


def test_verbose_access_lines_count_the_bytes(spawn: Callable[..., Proc]) -> None:
    proc, host, port = _serve(spawn, "-v")
    try:
        local = _one_client(host, port)
        err = _wait_stderr(proc, rf"127\.0\.0\.1:{local} - closed after")
    finally:
        proc.stop()
    assert re.search(rf"127\.0\.0\.1:{local} - closed after [\d.]+ s, 6 B in, 6 B out", err), err
    assert not re.search(r"\('127\.0\.0\.1', \d+\)", err)  # never a Python tuple


def test_quiet_hides_the_access_lines(spawn: Callable[..., Proc]) -> None:
    proc, host, port = _serve(spawn, "-q")
    try:
        _one_client(host, port)
    finally:
        proc.stop()
    err = _stderr(proc)
    assert "stopped" in err and " - connected" not in err, err


@pytest.mark.parametrize("args", [["--log-level", "loud"], ["--log-level"]])
def test_log_level_is_checked(spawn: Callable[..., Proc], args: list[str]) -> None:
    proc = spawn("echo", "serve", "--port", "0", *args)
    assert proc.popen.wait(30) == 2


@pytest.mark.parametrize("command", [["echo", "serve"], ["http", "serve"], ["chat", "serve"], ["rpc", "serve"],
                                     ["peer"], ["tftp", "serve"]])
def test_every_server_takes_the_same_logging_options(command: list[str]) -> None:
    from click.testing import CliRunner

    from socklab.cli.main import cli

    out = CliRunner().invoke(cli, [*command, "--help"])
    assert out.exit_code == 0, out.output
    assert "--log-level" in out.output and "-v, --verbose" in out.output and "-q, --quiet" in out.output
