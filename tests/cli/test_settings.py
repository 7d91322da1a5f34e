"""One settings object for every command (issue 18 part 5): transports declared with the setting."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from socklab.apps.tftp.server import TftpSettings
from socklab.core.settings import ServerSettings, option_name

TCP_ONLY = [f for f in dataclasses.fields(ServerSettings) if "udp" not in f.metadata.get("transports", ("udp",))]


def socklab(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SOCKLAB_DEBUG"}
    return subprocess.run([sys.executable, "-m", "socklab", *args], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL, env=env)


def test_tcp_only_settings_are_declared() -> None:
    names = {f.name for f in TCP_ONLY}
    assert {"max_buffer", "workers", "queue_size", "max_connections", "tls_cert", "idle_timeout"} <= names


def test_a_udp_server_shows_only_the_options_that_apply() -> None:
    help_text = socklab("tftp", "serve", "--help").stdout
    for f in TCP_ONLY:
        if f.name in {g.name for g in dataclasses.fields(TftpSettings)}:
            assert option_name(f) + " " not in help_text, option_name(f)
    assert "--port" in help_text and "--engine" in help_text


@pytest.mark.parametrize("option,value", [("--workers", "3"), ("--max-buffer", "4096"), ("--queue-size", "8")])
def test_echo_udp_refuses_a_tcp_only_option_given_on_the_command_line(option: str, value: str) -> None:
    # old code: accepted silently and started serving (the timeout of socklab() then fails the test)
    out = socklab("echo", "serve", "--udp", "--port", "0", option, value)
    err = out.stderr.strip()
    assert out.returncode == 2 and len(err.splitlines()) == 1 and option in err and "UDP" in err, err
