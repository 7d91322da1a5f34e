"""The tap builds one settings object (issue 18 part 5): ``Tap(settings)``, and the CLI's options are its fields.

Before, ``socklab tap run`` re-typed ``--engine``, TLS and the timeouts, and ``Tap()`` took 13 loose
arguments that overrode its settings object. Now :class:`TapSettings` is declared once (help, ranges,
transports), ``options_from`` makes the command's options of it, and the library takes it as it is.
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
from typing import Any

import pytest

from socklab.apps.echo.protocol import EchoProtocol
from socklab.core.errors import UsageError
from socklab.core.settings import option_name
from socklab.protocols.faults import Fault
from socklab.tools.tap import Tap, TapSettings
from socklab.tools.tap.control import request
from tests.conftest import running_server

pytestmark = pytest.mark.timeout(60)

# every flag `socklab tap run` had before its options came from TapSettings: each must still parse
FLAGS_BEFORE = ("--to", "--udp", "--hexdump", "--text", "--quiet", "--pcap", "--record", "--fault", "--seed",
                "--ctl", "--api", "--name", "--engine", "--connect-timeout", "--tls-cert", "--tls-key", "--to-tls",
                "--cafile", "--insecure", "--no-splice", "--trace", "--trace-json")
CLI_EXCLUDED = {"host", "port", "unix", "workers", "queue_size"}  # LISTEN gives host/port; no Unix, no pool


def socklab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "socklab", *args], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


def test_tap_takes_its_settings_object_as_it_is() -> None:
    with running_server(EchoProtocol) as srv:
        settings = TapSettings(target=f"127.0.0.1:{srv.port}", seed=5, faults=(Fault.parse("latency:downstream,latency=1"),),
                               connect_timeout=3.0, splice=False)
        with Tap(settings) as tap, socket.create_connection(("127.0.0.1", tap.port), timeout=10) as c:
            c.sendall(b"hi\n")
            assert c.recv(10) == b"hi\n"
            assert tap.settings is settings  # read, never copied with overrides
            assert tap.seed == 5 and tap.connect_timeout == 3.0 and not tap.splice
            assert [f.kind for f in tap.faults] == ["latency"] and tap.target.port == srv.port


def test_keyword_fields_are_settings_fields_and_nothing_else() -> None:
    base = TapSettings(seed=1)
    tap = Tap(base, target=("127.0.0.1", 9), listen="127.0.0.1:0", faults=[Fault("down")])
    try:
        assert (tap.settings.target, tap.settings.host, tap.settings.port, tap.settings.seed) == (
            "127.0.0.1:9", "127.0.0.1", 0, 1)
        assert [f.kind for f in tap.settings.faults] == ["down"]
    finally:
        tap.close()
    assert base.target is None  # the caller's object is not changed
    with pytest.raises(TypeError):
        Tap(target=("127.0.0.1", 9), no_such_setting=1)
    with pytest.raises(UsageError, match="TapSettings"):
        Tap(("127.0.0.1", 0), target=("127.0.0.1", 9))  # type: ignore[arg-type]  # the old positional listen


@pytest.mark.parametrize("changes,message", [
    ({"engine": "threads"}, "reactor engine"),
    ({"connect_timeout": 0}, "--connect-timeout is 0"),
    ({"udp": True, "tls_cert": "x.pem"}, "TLS is for TCP"),
    ({"udp": True, "to_tls": True}, "TLS is for TCP"),
    ({"cafile": "ca.pem"}, "are for --to-tls"),
    ({"udp": True, "faults": ("latency",)}, "fault latency is a TCP fault; this tap relays UDP"),
    ({"faults": ("loss,probability=0.5",)}, "fault loss is a UDP fault; this tap relays TCP"),
    ({"tls_key": "k.pem"}, "--tls-key needs --tls-cert"),
])
def test_impossible_settings_are_refused_naming_the_option(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        TapSettings(target="127.0.0.1:9", **changes).validate()
    with pytest.raises(UsageError, match=message):
        Tap(target="127.0.0.1:9", **changes)


def test_fault_specs_are_parsed_as_the_cli_gives_them() -> None:
    specs: Any = ("latency:downstream,latency=7", Fault("down"))  # --fault gives strings; the library Faults
    assert [(f.kind, f.params.get("latency")) for f in TapSettings(faults=specs).faults] == [("latency", 7.0),
                                                                                            ("down", None)]
    with pytest.raises(UsageError):
        TapSettings(faults=(*specs[:1], "latency:downstream,latency"))


def test_the_control_port_is_a_setting_too() -> None:
    with running_server(EchoProtocol) as srv, Tap(target=("127.0.0.1", srv.port), ctl="0", seed=11) as tap:
        host, port = tap.control_address[:2]
        assert host == "127.0.0.1"
        assert request(host, port, {"op": "list"})["seed"] == 11


def test_run_offers_every_setting_and_every_flag_it_had() -> None:
    help_text = socklab("tap", "run", "--help").stdout
    for f in dataclasses.fields(TapSettings):
        if f.name in CLI_EXCLUDED or f.metadata.get("cli") == "":
            continue
        assert option_name(f) in help_text, option_name(f)
    for flag in FLAGS_BEFORE:
        assert flag in help_text, flag
    assert "--workers" not in help_text and "--queue-size" not in help_text and "--unix" not in help_text


@pytest.mark.parametrize("option,value", [("--tls-cert", "x.pem"), ("--to-tls", None), ("--no-splice", None),
                                          ("--max-connections", "5"), ("--connect-timeout", "3")])
def test_a_udp_tap_refuses_an_option_that_applies_only_to_tcp(option: str, value: str | None) -> None:
    out = socklab("tap", "run", "127.0.0.1:0", "--to", "127.0.0.1:9", "--udp", option, *([value] if value else []))
    err = out.stderr.strip()
    assert out.returncode == 2 and len(err.splitlines()) == 1, err
    assert option.replace("--no-", "--") in err and "UDP" in err, err


def test_a_tcp_tap_refuses_the_udp_flow_timeout() -> None:
    out = socklab("tap", "run", "127.0.0.1:0", "--to", "127.0.0.1:9", "--udp-flow-timeout", "5")
    assert out.returncode == 2 and "--udp-flow-timeout applies to UDP only" in out.stderr, out.stderr


def test_the_command_line_reaches_the_relay_through_the_settings(spawn: Any) -> None:
    """--max-connections was not a tap option before: one the CLI now takes from the settings, seen working."""
    with running_server(EchoProtocol) as srv:
        proc = spawn("tap", "127.0.0.1:0", "--to", f"127.0.0.1:{srv.port}", "--max-connections", "1",
                     "--seed", "4")
        port = int(proc.wait_for(r"socklab tap listening on tcp://127\.0\.0\.1:(\d+) -> ").group(1))
        proc.wait_for(r"socklab tap seed 4 faults: none")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as first:
            first.sendall(b"one\n")
            assert first.recv(10) == b"one\n"
            with socket.create_connection(("127.0.0.1", port), timeout=10) as second:
                refused = b""
                while chunk := second.recv(200):
                    refused += chunk
            assert b"server full" in refused
