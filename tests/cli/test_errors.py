"""User errors: one line naming the option and the value, exit 2, before any work starts (issue 17).

Each case ran a server, a traceback-ish ``PermissionError``/``FileNotFoundError`` line with exit 1,
or was accepted, before ``socklab.cli.params`` and the ranges declared with ``setting()``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from socklab.core.errors import UsageError
from socklab.core.settings import ServerSettings

MISSING_DIR = "/dev/null/socklab"  # under a character device: no command can ever create it


def socklab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI; a command that starts serving instead of refusing is killed by the timeout (a failure)."""
    full_env = {k: v for k, v in os.environ.items() if k != "SOCKLAB_DEBUG"}
    full_env.update(NO_COLOR="1", COLUMNS="200", **(env or {}))
    return subprocess.run([sys.executable, "-m", "socklab", *args], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL, env=full_env)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("args,option,value", [
    (["echo", "serve", "--port", "abc"], "--port", "'abc' is not a valid integer"),
    (["echo", "serve", "--port", "70000"], "--port", "70000"),
    (["echo", "serve", "--max-connections", "0"], "--max-connections", "0"),
    (["echo", "serve", "--idle-timeout", "-1"], "--idle-timeout", "-1"),
    (["echo", "serve", "--workers", "0"], "--workers", "0"),
    (["echo", "serve", "--engine", "nosuch"], "--engine", "'nosuch'"),
    (["echo", "serve", "--trace-json", f"{MISSING_DIR}/t.jsonl"], "--trace-json", MISSING_DIR),
    (["echo", "serve", "--unix", f"{MISSING_DIR}/s.sock"], "--unix", MISSING_DIR),
    (["chat", "serve", "--store", f"{MISSING_DIR}/c.sqlite3", "--tcp-port", "0", "--http-port", "-1"],
     "--store", MISSING_DIR),
    (["echo", "client", "--count", "-3", "127.0.0.1:9"], "--count", "-3"),
    (["echo", "client", "--size", "0", "-c", "1", "127.0.0.1:9"], "--size", "0"),
    (["echo", "client", "--timeout", "-1", "127.0.0.1:9"], "--timeout", "-1"),
    (["echo", "client", "--connect-timeout", "-1", "127.0.0.1:9"], "--connect-timeout", "-1"),
    (["rpc", "call", "--timeout", "-1", "127.0.0.1:9", "ping"], "--timeout", "-1"),
    (["tap", "run", "127.0.0.1:0", "--to", "127.0.0.1:9", "--pcap", f"{MISSING_DIR}/c.pcapng"], "--pcap",
     MISSING_DIR),
    (["tap", "run", "127.0.0.1:0", "--to", "127.0.0.1:9", "--record", f"{MISSING_DIR}/r.jsonl"], "--record",
     MISSING_DIR),
    (["tap", "run", "127.0.0.1:0", "--to", "127.0.0.1:9", "--connect-timeout", "-1"], "--connect-timeout", "-1"),
    (["peer", "fetch", "--timeout", "0", "somefile"], "--timeout", "0"),
    # issue 17: bench --save/--chart failed only after the whole run
    (["bench", "echo", "--engines", "epoll", "--save", f"{MISSING_DIR}/b.json"], "--save", MISSING_DIR),
    (["bench", "echo", "--engines", "epoll", "--chart", f"{MISSING_DIR}/b.html"], "--chart", MISSING_DIR),
    (["bench", "ws", "--save", f"{MISSING_DIR}/w.json"], "--save", MISSING_DIR),
])
def test_a_bad_option_is_one_line_naming_it_with_exit_2(args: list[str], option: str, value: str) -> None:
    out = socklab(*args)
    err = out.stderr.strip()
    assert out.returncode == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("socklab: ") and option in err and value in err, err
    assert "Error" not in err and "unexpected" not in err and "Usage:" not in err, err


def test_the_library_names_the_option_too() -> None:
    with pytest.raises(UsageError, match="--max-connections is 0: it must be at least 1"):
        ServerSettings(max_connections=0).validate()
    with pytest.raises(UsageError, match="--shutdown-timeout"):
        ServerSettings(shutdown_timeout=-1).validate()


def test_debug_works_after_the_subcommand() -> None:
    out = socklab("echo", "client", f"127.0.0.1:{closed_port()}", "--debug")
    assert out.returncode == 1 and "Traceback" in out.stderr, out.stderr


def test_socklab_debug_env_shows_the_traceback() -> None:
    out = socklab("echo", "client", f"127.0.0.1:{closed_port()}", env={"SOCKLAB_DEBUG": "1"})
    assert out.returncode == 1 and "Traceback" in out.stderr, out.stderr
    plain = socklab("echo", "client", f"127.0.0.1:{closed_port()}")
    assert "Traceback" not in plain.stderr


def test_help_still_exits_0() -> None:
    out = socklab("echo", "serve", "--help")
    assert out.returncode == 0 and "--debug" in out.stdout
