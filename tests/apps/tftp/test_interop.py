"""TFTP against real peers: tftp-hpa's client and curl against socklab's server, socklab's client
against tftp-hpa's in.tftpd (installed by scripts/setup.sh)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from socklab.apps.tftp.client import TftpClientOptions, tftp_get, tftp_put
from tests.apps.tftp.test_server import _drop_final_ack, get_without_dally, tftp_server

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, timeout=30, check=False)


@pytest.mark.parametrize("size", [0, 512, 100_000])
def test_tftp_hpa_client_against_socklab(tmp_path: Path, size: int) -> None:
    root, work = tmp_path / "root", tmp_path / "work"
    root.mkdir()
    work.mkdir()
    data = os.urandom(size)
    (root / "f.bin").write_bytes(data)
    (work / "up.bin").write_bytes(data[::-1])
    with tftp_server(root, create=True) as (port, _):
        r = run("tftp", "127.0.0.1", str(port), "-m", "octet", "-c", "get", "f.bin", "got.bin", cwd=work)
        assert r.returncode == 0, r.stderr
        r = run("tftp", "127.0.0.1", str(port), "-m", "octet", "-c", "put", "up.bin", "up.bin", cwd=work)
        assert r.returncode == 0, r.stderr
    assert (work / "got.bin").read_bytes() == data
    assert (root / "up.bin").read_bytes() == data[::-1]


def test_tftp_hpa_netascii_and_errors(tmp_path: Path) -> None:
    text = b"one\ntwo\r\nthree\n" * 50
    (tmp_path / "t.txt").write_bytes(text)
    with tftp_server(tmp_path) as (port, _):
        r = run("tftp", "127.0.0.1", str(port), "-m", "netascii", "-c", "get", "t.txt", str(tmp_path / "o.txt"))
        assert r.returncode == 0, r.stderr
        r = run("tftp", "127.0.0.1", str(port), "-m", "octet", "-c", "get", "../etc/passwd",
                str(tmp_path / "p"))
        assert b"Error code 2" in r.stdout + r.stderr
    assert (tmp_path / "o.txt").read_bytes() == text


@pytest.mark.parametrize("blksize", [None, "1428", "8192"])
def test_curl_against_socklab(tmp_path: Path, blksize: str | None) -> None:
    data = os.urandom(200_000)
    (tmp_path / "f.bin").write_bytes(data)
    (tmp_path / "src.bin").write_bytes(data[::-1])
    extra = ["--tftp-blksize", blksize] if blksize else []
    with tftp_server(tmp_path, create=True) as (port, _):
        r = run("curl", "-sS", *extra, f"tftp://127.0.0.1:{port}/f.bin", "-o", str(tmp_path / "got.bin"))
        assert r.returncode == 0, r.stderr
        r = run("curl", "-sS", *extra, "-T", str(tmp_path / "src.bin"), f"tftp://127.0.0.1:{port}/up.bin")
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "got.bin").read_bytes() == data
    assert (tmp_path / "up.bin").read_bytes() == data[::-1]


@pytest.fixture
def in_tftpd(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """tftp-hpa's server in inetd mode on a socket we bound (port 0: no port guessing), -s root, -c."""
    root = tmp_path / "hpa-root"
    root.mkdir()
    root.chmod(0o777)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    proc = subprocess.Popen(["/usr/sbin/in.tftpd", "-s", str(root), "-c", "-u", "root", "-t", "30", "-p"],
                            stdin=sock.fileno(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sock.close()
    try:
        yield port, root
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.parametrize("blksize,windowsize", [(None, None), (1428, 8), (8192, None), (8, None)])
def test_socklab_client_against_in_tftpd(in_tftpd: tuple[int, Path], blksize: int | None,
                                         windowsize: int | None) -> None:
    port, root = in_tftpd
    data = os.urandom(150_000 if blksize != 8 else 20_000)
    (root / "x.bin").write_bytes(data)
    opts = TftpClientOptions(blksize=blksize, windowsize=windowsize, timeout=1.0)
    out = io.BytesIO()
    res = tftp_get("127.0.0.1", port, "x.bin", out, opts)
    assert out.getvalue() == data and res.tsize == len(data)
    if blksize:
        assert res.blksize == blksize
    tftp_put("127.0.0.1", port, "up.bin", io.BytesIO(data[::-1]), opts)
    assert (root / "up.bin").read_bytes() == data[::-1]


def test_socklab_client_netascii_against_in_tftpd(in_tftpd: tuple[int, Path]) -> None:
    port, root = in_tftpd
    text = b"alpha\nbeta\r\ngamma\rdelta\n" * 100
    (root / "t.txt").write_bytes(text)
    out = io.BytesIO()
    tftp_get("127.0.0.1", port, "t.txt", out, TftpClientOptions(mode="netascii"))
    assert out.getvalue() == text


@pytest.mark.slow
def test_rollover_against_in_tftpd(in_tftpd: tuple[int, Path]) -> None:
    port, root = in_tftpd
    data = os.urandom(8 * 65_600 + 5)  # 65,601 blocks of 8 bytes: tftp-hpa wraps to 0 as we do
    (root / "r.bin").write_bytes(data)
    out = io.BytesIO()
    tftp_get("127.0.0.1", port, "r.bin", out, TftpClientOptions(blksize=8, timeout=1.0))
    assert out.getvalue() == data


@pytest.mark.parametrize("lose_final_ack", [False, True])
def test_socklab_get_from_in_tftpd_returns_right_after_the_final_ack(
        in_tftpd: tuple[int, Path], monkeypatch: pytest.MonkeyPatch, lose_final_ack: bool) -> None:
    """As tftp-hpa's own client: no dally after the final ACK (the old client waited a whole
    timeout). With that ACK lost, in.tftpd resends its last block to a closed port and gives up
    on its own; the next get is served as usual."""
    port, root = in_tftpd
    data = os.urandom(1000)
    (root / "x.bin").write_bytes(data)
    dropped = _drop_final_ack(monkeypatch) if lose_final_ack else []
    for _ in range(2):
        get_without_dally(port, "x.bin", data)
    assert len(dropped) == int(lose_final_ack)
