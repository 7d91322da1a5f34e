"""bind(): a port or path in use is refused with one clear line, for TCP, UDP and Unix (issue 15).

Before the fix, UDP servers set SO_REUSEADDR on fixed ports: a second ``socklab echo serve --udp``
on a port in use printed "listening" and took the first one's datagrams.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from socklab.apps.echo.protocol import EchoDatagramProtocol
from socklab.core.errors import AddressInUse
from socklab.core.settings import ServerSettings
from socklab.core.sockets import open_tcp_listener, open_udp_socket
from socklab.runtime import Server

pytestmark = pytest.mark.timeout(60)


def _socklab(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    env = {"NO_COLOR": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "socklab", *args], capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_second_udp_bind_on_a_port_in_use_is_refused(host: str) -> None:
    first = open_udp_socket(host, 0)
    try:
        port = first.getsockname()[1]
        # the first server's socket, as socklab made it before the fix (SO_REUSEADDR on a fixed port)
        with pytest.raises(AddressInUse, match="another UDP socket is bound to this port"):
            open_udp_socket(host, port)
    finally:
        first.close()


def test_two_udp_servers_on_one_fixed_port_refuse_the_second() -> None:
    port = _free_udp_port()
    one = open_udp_socket("127.0.0.1", port)  # a fixed port, as `--port P` gives
    try:
        with pytest.raises(AddressInUse):
            open_udp_socket("127.0.0.1", port).close()
        srv = Server(ServerSettings(engine="epoll", host="127.0.0.1", port=port))
        with pytest.raises(AddressInUse):
            srv.listen_udp(EchoDatagramProtocol)
        srv.close()
    finally:
        one.close()


def test_reuse_port_shares_a_udp_port_when_both_ask() -> None:
    first = open_udp_socket("127.0.0.1", 0, reuse_port=True)
    try:
        second = open_udp_socket("127.0.0.1", first.getsockname()[1], reuse_port=True)
        second.close()
    finally:
        first.close()


def test_udp_port_zero_gives_distinct_ports() -> None:
    socks = [open_udp_socket("127.0.0.1", 0) for _ in range(50)]
    try:
        assert len({s.getsockname()[1] for s in socks}) == 50
    finally:
        for s in socks:
            s.close()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("command", [["echo", "serve", "--udp"], ["tftp", "serve"]], ids=["echo", "tftp"])
def test_cli_udp_server_on_a_port_in_use_exits_with_one_line(spawn: Any, tmp_path: Path,
                                                             command: list[str]) -> None:
    extra = ["--root", str(tmp_path)] if command[0] == "tftp" else []
    port = str(_free_udp_port())  # a fixed port for both, as `--port P` gives (port 0 never collides)
    first = spawn(*command, "--port", port, *extra)
    first.wait_for(r"listening on udp://127\.0\.0\.1:" + port)
    out = _socklab(*command, "--port", port, *extra, timeout=20)  # the old code served: TimeoutExpired
    err = out.stderr.decode()
    assert out.returncode == 1, (out.returncode, out.stdout, err)
    assert b"listening" not in out.stdout
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("socklab: error: address already in use while binding 127.0.0.1:" + port)
    assert "another UDP socket" in lines[0] and "TIME_WAIT" not in lines[0]


def test_tcp_message_names_the_real_port() -> None:
    holder = open_tcp_listener("127.0.0.1", 0)
    try:
        port = holder.getsockname()[1]
        with pytest.raises(AddressInUse, match=f"socklab ss --port {port}"):
            open_tcp_listener("127.0.0.1", port)
    finally:
        holder.close()
