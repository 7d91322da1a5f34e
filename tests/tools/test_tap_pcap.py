"""Captures: tshark reads every pcapng the tap writes, follows each stream byte-exact, decodes HTTP."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from socklab.apps.echo.protocol import EchoDatagramProtocol, EchoProtocol
from socklab.core.settings import ServerSettings
from socklab.protocols.pcap import TcpFlow, checksum
from socklab.runtime import Server
from socklab.tools.tap import Fault, Tap
from socklab.tools.tap.observe import PcapObserver
from tests.tools.test_tap import read_all, server

pytestmark = pytest.mark.interop


def tshark(*args: str) -> str:
    out = subprocess.run(["tshark", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def follow(path: Path, stream: int = 0) -> tuple[bytes, bytes]:
    """Client-to-server and server-to-client bytes of TCP stream ``stream`` as tshark rebuilds them."""
    text = tshark("-r", str(path), "-q", "-z", f"follow,tcp,raw,{stream}")
    up, down = bytearray(), bytearray()
    for line in text.splitlines():
        if not line.strip() or line.startswith(("=", "Follow:", "Filter:", "Node ")):
            continue
        if line.startswith("\t"):
            down += bytes.fromhex(line.strip())
        else:
            up += bytes.fromhex(line.strip())
    return bytes(up), bytes(down)


def test_checksum_matches_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (complement 220d)
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_followed_stream_equals_the_bytes_sent(tmp_path: Path, family: str) -> None:
    host = "127.0.0.1" if family == "ipv4" else "::1"
    pcap = tmp_path / "echo.pcapng"
    payload = os.urandom(200_000)
    srv = Server(ServerSettings(host=host, port=0))
    srv.listen(EchoProtocol)
    with srv, Tap(listen=(host, 0), target=(host, srv.port), observers=[PcapObserver(str(pcap))]) as tap:
        with socket.create_connection((host, tap.port), timeout=30) as sock:
            result: list[bytes] = []
            reader = threading.Thread(target=lambda: result.append(read_all(sock)))
            reader.start()
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            reader.join(30)
    assert result == [payload]
    up, down = follow(pcap)
    assert up == payload and down == payload
    summary = tshark("-r", str(pcap), "-T", "fields", "-e", "tcp.flags.str")
    assert "S" in summary.splitlines()[0] and any("F" in line for line in summary.splitlines())
    sources = set(tshark("-r", str(pcap), "-T", "fields", "-e", "ip.src", "-e", "ipv6.src").split())
    assert sources == {host}


def test_faults_are_packet_comments_and_rst_is_shown(tmp_path: Path) -> None:
    pcap = tmp_path / "reset.pcapng"
    with server(EchoProtocol) as srv, Tap(target=("127.0.0.1", srv.port), observers=[PcapObserver(str(pcap))],
                                           faults=[Fault("reset_peer", timeout=30)]) as tap:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError), \
                socket.create_connection(("127.0.0.1", tap.port), timeout=30) as sock:
            sock.sendall(b"before reset\n")
            sock.recv(100)
            sock.recv(100)
    comments = tshark("-r", str(pcap), "-T", "fields", "-e", "frame.comment")
    assert "reset_peer" in comments
    flags = tshark("-r", str(pcap), "-T", "fields", "-e", "tcp.flags.reset")
    assert any(v.strip() in ("1", "True") for v in flags.splitlines())


def test_udp_capture_decodes_datagrams(tmp_path: Path) -> None:
    pcap = tmp_path / "udp.pcapng"
    with server(EchoDatagramProtocol, udp=True) as srv, Tap(
            target=("127.0.0.1", srv.port), udp=True, observers=[PcapObserver(str(pcap))]) as tap:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(30)
            for msg in (b"first", b"second"):
                c.sendto(msg, ("127.0.0.1", tap.port))
                assert c.recvfrom(100)[0] == msg
    fields = tshark("-r", str(pcap), "-T", "fields", "-e", "udp.payload").split()
    assert [bytes.fromhex(f) for f in fields] == [b"first", b"first", b"second", b"second"]


def test_tapped_http_request_shows_up_as_http(tmp_path: Path, spawn: Any) -> None:
    pcap = tmp_path / "http.pcapng"
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "hello.txt").write_text("hello over http\n")
    http = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                             "--directory", str(tmp_path / "www")], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert http.stdout is not None
        line = http.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N ..." = ready
        port = int(line.split(" port ")[1].split()[0])
        with Tap(target=("127.0.0.1", port), observers=[PcapObserver(str(pcap))]) as tap:
            with socket.create_connection(("127.0.0.1", tap.port), timeout=30) as sock:
                sock.sendall(b"GET /hello.txt HTTP/1.0\r\nHost: localhost\r\n\r\n")
                answer = read_all(sock)
        assert answer.endswith(b"hello over http\n")
    finally:
        http.kill()
        http.wait(5)
        if http.stdout:
            http.stdout.close()
    # decode the tap's port as HTTP too (port 0 picked a random one)
    out = tshark("-r", str(pcap), "-d", f"tcp.port=={port},http", "-Y", "http", "-T", "fields",
                 "-e", "http.request.method", "-e", "http.request.uri", "-e", "http.response.code")
    rows = [r.split("\t") for r in out.strip().splitlines()]
    assert ["GET", "/hello.txt", ""] in rows and any(r[-1] == "200" for r in rows)
    _, down = follow(pcap)
    assert down == answer


def test_tcp_flow_sequence_numbers_advance_by_payload() -> None:
    flow = TcpFlow(("127.0.0.1", 1), ("127.0.0.1", 2))
    flow.handshake()
    before = flow.seq_c
    flow.data(True, b"x" * 100_000)
    assert flow.seq_c == before + 100_000
    flow.fin(True)
    assert flow.seq_c == before + 100_001


def test_dns_style_datagrams_decode_as_dns(tmp_path: Path) -> None:
    pcap = tmp_path / "dns.pcapng"
    # a DNS query for socklab.test, type A (RFC 1035 section 4.1)
    query = bytes.fromhex("1234 0100 0001 0000 0000 0000".replace(" ", "")) + \
        b"\x07socklab\x04test\x00" + bytes.fromhex("00010001")
    with server(EchoDatagramProtocol, udp=True) as srv, Tap(
            target=("127.0.0.1", srv.port), udp=True, observers=[PcapObserver(str(pcap))]) as tap:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(30)
            c.sendto(query, ("127.0.0.1", tap.port))
            assert c.recvfrom(512)[0] == query
    names = tshark("-r", str(pcap), "-d", f"udp.port=={srv.port},dns", "-T", "fields", "-e", "dns.qry.name")
    assert names.split() == ["socklab.test", "socklab.test"]


# ---- --pcap -: a live stream on stdout (issue 17) -------------------------------------------------
def _readline(stream: Any, timeout: float) -> bytes:
    """One line from a pipe, or b"" once ``timeout`` passes (a bound only a broken pipe reaches)."""
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            return b""
        return bytes(stream.readline())


@contextlib.contextmanager
def _tap_to_stdout(tmp_path: Path, target: int) -> Any:
    """``socklab tap ... --pcap -`` in its own process group, ended by pid."""
    proc = subprocess.Popen([sys.executable, "-m", "socklab", "tap", "127.0.0.1:0", "--to", f"127.0.0.1:{target}",
                             "--pcap", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                            start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _tap_port(proc: Any) -> int:
    line = _readline(proc.stderr, 15).decode()  # the banner goes to stderr: stdout is the capture
    assert "listening on tcp://" in line, line
    return int(line.split("tcp://")[1].split()[0].rsplit(":", 1)[1])


@pytest.mark.parametrize("how", ["-r", "-i"], ids=["tshark -r -", "tshark -i - (as wireshark -k -i -)"])
def test_pcap_dash_streams_pcapng_that_tshark_reads_live(tmp_path: Path, how: str) -> None:
    """``socklab tap ... --pcap - | tshark -r -`` (or ``-i -``, the live-capture path Wireshark's
    ``-k -i -`` takes): tshark shows the packet while the tap still runs. The old code wrote a
    file named ``-`` and its banner went to stdout: tshark saw no capture."""
    with server(EchoProtocol) as srv, _tap_to_stdout(tmp_path, srv.port) as tap:
        shark = subprocess.Popen(["tshark", "-l", how, "-", "-Y", "tcp.len > 0", "-T", "fields", "-e", "tcp.payload"],
                                 stdin=tap.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert tap.stdout is not None
            tap.stdout.close()  # tshark holds the pipe now
            port = _tap_port(tap)
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(b"hello-pcap\n")
                assert sock.recv(100) == b"hello-pcap\n"
                first = _readline(shark.stdout, 20)  # live: the tap is still running
                assert first.strip() == b"hello-pcap\n".hex().encode(), first
            assert tap.poll() is None
        finally:
            shark.terminate()  # SIGTERM: tshark -i removes its temporary capture file
            try:
                shark.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                shark.kill()
                shark.communicate(timeout=10)
        assert not (tmp_path / "-").exists()


def test_pcap_dash_puts_nothing_but_pcapng_on_stdout(tmp_path: Path) -> None:
    with server(EchoProtocol) as srv, _tap_to_stdout(tmp_path, srv.port) as tap:
        port = _tap_port(tap)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"x\n")
            assert sock.recv(10) == b"x\n"
        os.killpg(tap.pid, 15)
        out, err = tap.communicate(timeout=30)
    assert out[:4] == b"\x0a\x0d\x0d\x0a"  # a pcapng Section Header Block first
    capture = tmp_path / "c.pcapng"
    capture.write_bytes(out)
    assert "x" in tshark("-r", str(capture), "-Y", "tcp.len > 0", "-T", "fields", "-e", "tcp.payload") \
        .replace("780a", "x")
    assert b"#0 connection" in err  # the views' lines went to stderr, not into the capture
