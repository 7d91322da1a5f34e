"""The TFTP server and client over real sockets (127.0.0.1, port 0), on every engine, and the
path policy; interop with tftp-hpa and curl lives in test_interop.py, faults in test_faults.py."""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from socklab.apps.tftp.client import TftpClientOptions, tftp_get, tftp_put
from socklab.apps.tftp.server import TftpServer, TftpSettings, serve_tftp
from socklab.core.errors import RemoteProtocolError
from socklab.protocols import tftp
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)

FAST: dict[str, Any] = dict(timeout=0.2, max_retries=5)


@contextmanager
def tftp_server(root: Path, engine: str = "epoll", **kw: Any) -> Iterator[tuple[int, TftpServer]]:
    settings = TftpSettings(host="127.0.0.1", port=0, root=str(root), engine=engine, **kw)
    srv, proto = serve_tftp(settings)
    srv.start()
    try:
        yield srv.port, proto
    finally:
        srv.shutdown(timeout=1)


def get(port: int, name: str, **opts: Any) -> bytes:
    out = io.BytesIO()
    tftp_get("127.0.0.1", port, name, out, TftpClientOptions(**{**FAST, **opts}))
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 511, 512, 513, 70_000])
def test_get_and_put_every_engine(engine: str, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "f.bin").write_bytes(data)
    with tftp_server(tmp_path, engine, create=True) as (port, _proto):
        assert get(port, "f.bin") == data
        assert get(port, "/f.bin", blksize=1428, windowsize=8) == data
        res = tftp_put("127.0.0.1", port, "up.bin", io.BytesIO(data), TftpClientOptions(windowsize=4, **FAST))
        assert res.bytes == size
    assert (tmp_path / "up.bin").read_bytes() == data
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tftp-part")]


def test_options_and_tsize_are_reported(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 10_000)
    with tftp_server(tmp_path, max_blksize=4096, max_windowsize=16) as (port, _):
        res = tftp_get("127.0.0.1", port, "f", io.BytesIO(),
                       TftpClientOptions(blksize=8192, windowsize=32, **FAST))
    assert (res.blksize, res.windowsize, res.tsize, res.bytes) == (4096, 16, 10_000, 10_000)


def test_netascii_both_ways(tmp_path: Path) -> None:
    text = b"line one\nline two\r\nbare cr\rend\n" * 100
    (tmp_path / "t.txt").write_bytes(text)
    with tftp_server(tmp_path, create=True) as (port, _):
        assert get(port, "t.txt", mode="netascii") == text
        tftp_put("127.0.0.1", port, "t2.txt", io.BytesIO(text), TftpClientOptions(mode="netascii", **FAST))
    assert (tmp_path / "t2.txt").read_bytes() == text


TRAVERSAL = ["../secret", "../../etc/passwd", "a/../../secret", "/../secret", "..", "sub/../../secret",
             "..\\secret", "a\\..\\..\\secret", "//x/../../secret", "sub/link-out/secret", "link-out/secret", "link-file"]


def test_traversal_corpus_is_refused_with_error_2(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret").write_text("outside")
    (root / "sub" / "link-out").symlink_to(tmp_path)
    (root / "link-out").symlink_to(tmp_path)
    (root / "link-file").symlink_to(tmp_path / "secret")
    with tftp_server(root, create=True) as (port, _proto):
        for name in TRAVERSAL:
            with pytest.raises(RemoteProtocolError) as info:
                get(port, name)
            assert info.value.hint == tftp.ErrorCode.ACCESS_VIOLATION, name
            with pytest.raises(RemoteProtocolError) as info:
                tftp_put("127.0.0.1", port, name, io.BytesIO(b"evil"), TftpClientOptions(**FAST))
            assert info.value.hint == tftp.ErrorCode.ACCESS_VIOLATION, name
    assert (tmp_path / "secret").read_text() == "outside"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root", "secret"]


def test_wrq_needs_an_option_and_missing_file_is_error_1(tmp_path: Path) -> None:
    (tmp_path / "exists").write_bytes(b"old")
    with tftp_server(tmp_path, allow_write=True) as (port, _):
        with pytest.raises(RemoteProtocolError) as info:
            tftp_put("127.0.0.1", port, "new", io.BytesIO(b"x"), TftpClientOptions(**FAST))
        assert info.value.hint == tftp.ErrorCode.ACCESS_VIOLATION and "--create" in str(info.value)
        tftp_put("127.0.0.1", port, "exists", io.BytesIO(b"new"), TftpClientOptions(**FAST))
        with pytest.raises(RemoteProtocolError) as info:
            get(port, "missing")
        assert info.value.hint == tftp.ErrorCode.FILE_NOT_FOUND
    assert not (tmp_path / "new").exists() and (tmp_path / "exists").read_bytes() == b"new"


def test_upload_over_the_size_limit_is_disk_full_and_leaves_nothing(tmp_path: Path) -> None:
    with tftp_server(tmp_path, create=True, max_file_size=5000) as (port, _):
        for tsize in (True, False):  # refused at negotiation, or while receiving
            with pytest.raises(RemoteProtocolError) as info:
                tftp_put("127.0.0.1", port, "big", io.BytesIO(b"x" * 20_000),
                         TftpClientOptions(tsize=tsize, **FAST))
            assert info.value.hint == tftp.ErrorCode.DISK_FULL
    assert list(tmp_path.iterdir()) == []


def test_unknown_tid_gets_error_5_and_the_transfer_continues(tmp_path: Path) -> None:
    data = os.urandom(3000)
    (tmp_path / "f").write_bytes(data)
    with tftp_server(tmp_path, timeout=5.0) as (port, _), \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as me, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        me.settimeout(5)
        stranger.settimeout(5)
        me.sendto(tftp.encode_packet(tftp.Request("f", "octet")), ("127.0.0.1", port))
        got = b""
        block = 1
        while True:
            raw, tid = me.recvfrom(65536)
            assert tid[1] != port  # RFC 1350 section 4: the transfer runs from a new port
            pkt = tftp.parse_packet(raw)
            assert pkt == tftp.Data(block, pkt.payload) if isinstance(pkt, tftp.Data) else False
            got += pkt.payload
            if block == 2:  # an intruder speaks to the transfer's port
                stranger.sendto(tftp.encode_packet(tftp.Ack(2)), tid)
                assert tftp.parse_packet(stranger.recvfrom(100)[0]) == tftp.Error(5, "unknown transfer ID")
            me.sendto(tftp.encode_packet(tftp.Ack(block)), tid)
            if len(pkt.payload) < 512:
                break
            block += 1
    assert got == data


def test_two_hundred_parallel_transfers(tmp_path: Path) -> None:
    files = {f"f{i}": os.urandom(1000 + i * 37) for i in range(200)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    errors: list[BaseException] = []
    results: dict[str, bytes] = {}

    def one(name: str) -> None:
        try:
            results[name] = get(name_port[0], name, timeout=1.0, max_retries=10)
        except BaseException as exc:
            errors.append(exc)

    # all from 127.0.0.1: the per-address cap is raised for this one
    with tftp_server(tmp_path, max_transfers_per_client=200) as (port, _proto):
        name_port = [port]
        threads = [threading.Thread(target=one, args=(n,)) for n in files]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert not errors
    assert results == files


def test_single_port_mode_answers_from_the_listening_port(tmp_path: Path) -> None:
    data = os.urandom(5000)
    (tmp_path / "f").write_bytes(data)
    with tftp_server(tmp_path, single_port=True, create=True) as (port, _):
        assert get(port, "f", windowsize=4) == data
        tftp_put("127.0.0.1", port, "g", io.BytesIO(data), TftpClientOptions(**FAST))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(tftp.encode_packet(tftp.Request("f", "octet")), ("127.0.0.1", port))
            assert s.recvfrom(1000)[1][1] == port
    assert (tmp_path / "g").read_bytes() == data


def test_client_gives_up_on_a_silent_server() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        from socklab.core.errors import NetworkError

        with pytest.raises(NetworkError, match="timed out"):
            tftp_get("127.0.0.1", silent.getsockname()[1], "f", io.BytesIO(),
                     TftpClientOptions(timeout=0.05, max_retries=3))



@pytest.mark.slow
def test_rollover_past_65535_blocks_over_real_sockets(tmp_path: Path) -> None:
    data = os.urandom(8 * 65_600 + 5)  # blksize 8: 65,601 blocks, the block number wraps once
    (tmp_path / "f").write_bytes(data)
    with tftp_server(tmp_path, create=True) as (port, _):
        assert get(port, "f", blksize=8, windowsize=64, timeout=1.0) == data
        tftp_put("127.0.0.1", port, "g", io.BytesIO(data),
                 TftpClientOptions(blksize=8, windowsize=64, timeout=1.0))
    assert (tmp_path / "g").read_bytes() == data


def test_udp_port_zero_sockets_never_share_a_port() -> None:
    """Each transfer needs a port of its own (its TID): bind(0) must never hand out a port in use.
    (Linux does exactly that to UDP sockets that all set SO_REUSEADDR.)"""
    from socklab.core.sockets import open_udp_socket

    socks = [open_udp_socket("127.0.0.1", 0) for _ in range(2000)]
    try:
        ports = [s.getsockname()[1] for s in socks]
        assert len(set(ports)) == len(ports)
    finally:
        for s in socks:
            s.close()


def test_cli_serve_get_put(tmp_path: Path, spawn: Any) -> None:
    import json
    import subprocess
    import sys

    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(20_000)
    (root / "f.bin").write_bytes(data)
    (tmp_path / "up.bin").write_bytes(data[::-1])
    srv = spawn("tftp", "serve", "--root", str(root), "--port", "0", "--create")
    port = srv.wait_for(r"socklab tftp listening on udp://127\.0\.0\.1:(\d+) \(engine epoll\)").group(1)

    def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "socklab", "tftp", *args], capture_output=True,
                              timeout=30, check=False, cwd=tmp_path)

    r = cli("get", f"127.0.0.1:{port}", "f.bin", "-o", "got.bin", "--windowsize", "8", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["bytes"] == len(data) and summary["windowsize"] == 8 and summary["tsize"] == len(data)
    assert (tmp_path / "got.bin").read_bytes() == data
    r = cli("put", f"127.0.0.1:{port}", "up.bin", "--blksize", "1428", "--quiet")
    assert r.returncode == 0, r.stderr
    assert (root / "up.bin").read_bytes() == data[::-1]
    r = cli("get", f"127.0.0.1:{port}", "../etc/passwd", "-o", "x")
    assert r.returncode == 1 and b"access violation" in r.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()


def test_cli_bar_on_a_terminal_names_the_file_as_typed_and_none_on_a_pipe(tmp_path: Path, spawn: Any) -> None:
    """The bar's label is the name as typed: braces and brackets are neither a format nor rich markup
    (the old code crashed with KeyError on 'a{x}'); on a pipe no bar at all (the old code drew one)."""
    import subprocess
    import sys

    from tests.apps.terminal import Tty

    root = tmp_path / "root"
    root.mkdir()
    name = "a{x}[bold].bin"
    data = os.urandom(100_000)
    (root / name).write_bytes(data)
    srv = spawn("tftp", "serve", "--root", str(root), "--port", "0")
    port = srv.wait_for(r"socklab tftp listening on udp://127\.0\.0\.1:(\d+)").group(1)
    term = Tty(["tftp", "get", f"127.0.0.1:{port}", name, "-o", str(tmp_path / "tty.bin")])
    try:
        code, err = term.finish(30)
    finally:
        term.close()
    assert code == 0, err
    assert "\u2501" in err and f"get {name}" in err, err  # rich's bar glyph, and the name unchanged
    assert (tmp_path / "tty.bin").read_bytes() == data
    r = subprocess.run([sys.executable, "-m", "socklab", "tftp", "get", f"127.0.0.1:{port}", name, "-o",
                        str(tmp_path / "pipe.bin")], capture_output=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert "\u2501" not in err and err.startswith(f"socklab tftp: get {name}: 100000 bytes"), err
    assert (tmp_path / "pipe.bin").read_bytes() == data


def test_ipv6_loopback(tmp_path: Path) -> None:
    data = os.urandom(3000)
    (tmp_path / "f").write_bytes(data)
    settings = TftpSettings(host="::1", port=0, root=str(tmp_path), create=True)
    srv, _ = serve_tftp(settings)
    srv.start()
    try:
        out = io.BytesIO()
        tftp_get("::1", srv.port, "f", out, TftpClientOptions(windowsize=4, **FAST))
        tftp_put("::1", srv.port, "g", io.BytesIO(data), TftpClientOptions(**FAST))
    finally:
        srv.shutdown(timeout=1)
    assert out.getvalue() == data and (tmp_path / "g").read_bytes() == data


def test_serve_help_shows_no_tcp_only_options() -> None:
    from click.testing import CliRunner

    from socklab.apps.tftp.cli import tftp as tftp_group

    out = CliRunner().invoke(tftp_group, ["serve", "--help"]).output
    for gone in ("--max-buffer", "--workers", "--queue-size", "--backlog", "--max-connections"):
        assert gone not in out
    for shown in ("--allow-write", "--create", "--max-timeout", "--stall-timeout", "--max-transfers-per-client"):
        assert shown in out


def _drop_final_ack(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[bytes, Any]]]:
    """Make the client lose its final ACK (as the network may): the server then resends its last block."""
    from socklab.apps.tftp import client as client_mod

    dropped: list[list[tuple[bytes, Any]]] = []
    send = client_mod._Transfer.send

    def lossy(self: Any, out: list[tuple[bytes, Any]]) -> None:
        m = self.machine
        if isinstance(m, tftp.Receiver) and m.state is tftp.State.DONE and not dropped:
            dropped.append(out)
            out = []
        send(self, out)

    monkeypatch.setattr(client_mod._Transfer, "send", lossy)
    return dropped


def get_without_dally(port: int, name: str, data: bytes) -> None:
    """``tftp get`` of ``name`` with a 20 s client timeout: the right bytes, and back well before it."""
    out = io.BytesIO()
    start = time.monotonic()
    tftp_get("127.0.0.1", port, name, out, TftpClientOptions(timeout=20.0))
    took = time.monotonic() - start
    assert out.getvalue() == data
    # the old client waited its whole timeout (20 s); half of it is room for a loaded machine
    assert took < 10.0, f"get took {took:.2f} s with a 20 s timeout: the client dallied"


@pytest.mark.parametrize("lose_final_ack", [False, True])
def test_get_returns_right_after_the_final_ack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               lose_final_ack: bool) -> None:
    """No dally on the client: a get returns once its final ACK is sent, not a timeout later (it
    waited the whole client timeout: ~1 get per second at the default). A lost final ACK costs the
    client nothing, and the server ends that transfer by its retry limit."""
    data = os.urandom(700)
    (tmp_path / "f.bin").write_bytes(data)
    dropped = _drop_final_ack(monkeypatch) if lose_final_ack else []
    with tftp_server(tmp_path, timeout=0.2, max_retries=2) as (port, proto):
        get_without_dally(port, "f.bin", data)
        assert len(dropped) == int(lose_final_ack)
        wait_until(lambda: proto.completed + proto.failed >= 1,
                   "the server's transfer to end (ACK read, or its retries run out)", timeout=30)
        assert proto.active == 0 and proto.completed + proto.failed == 1
