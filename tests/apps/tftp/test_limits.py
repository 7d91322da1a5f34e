"""What one TFTP client may hold (issue 14: stalled requests took every slot for 25 minutes), windows
the socket buffers can hold (issue 15: 8192 x 16 stalled a second per window), and a SIGTERM that
lets transfers in flight finish (issue 15: it aborted them in 0.05 s)."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from socklab.apps.tftp.client import TftpClientOptions, tftp_get, tftp_put
from socklab.apps.tftp.sockbuf import datagram_charge
from socklab.protocols import tftp
from tests.apps.tftp.rawclient import RawClient
from tests.apps.tftp.test_server import tftp_server

pytestmark = pytest.mark.timeout(60)


def test_a_stalled_flood_from_one_address_locks_nobody_else_out(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"y" * 2000)
    flood = [RawClient(0, bind="127.0.0.1") for _ in range(50)]
    try:
        # 50 slots in all, 10 per address: 50 stalled requests asking timeout=255 from one address
        with tftp_server(tmp_path, max_transfers=50, max_transfers_per_client=10, timeout=1.0) as (port, _):
            replies = []
            for c in flood:
                c.server = ("127.0.0.1", port)
                c.request("f", timeout="255", blksize="1024")
                replies.append(c.recv())  # and never acknowledged
            oacks = [r for r in replies if isinstance(r, tftp.OAck)]
            errors = [r for r in replies if isinstance(r, tftp.Error)]
            assert len(oacks) == 10 and len(errors) == 40
            assert all("too many transfers from your address" in e.message for e in errors)
            assert all("timeout" not in o.options for o in oacks)  # 255 s is above --max-timeout
            with RawClient(port, bind="127.0.0.2") as other:  # another client is served at once
                assert other.get("f") == b"y" * 2000
    finally:
        for c in flood:
            c.close()


def test_a_transfer_without_progress_ends_at_the_stall_timeout(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"z" * 5000)
    # retries alone would hold the slot 100 x 0.3 s = 30 s; stall_timeout ends it after 1 s
    with tftp_server(tmp_path, timeout=0.3, max_retries=100, stall_timeout=1.0) as (port, proto), \
            RawClient(port) as client:
        client.request("f")
        packets = [client.recv()]
        while not isinstance(packets[-1], tftp.Error):
            packets.append(client.recv())  # DATA 1, resent every 0.3 s, then the ERROR
        assert "no progress for 1 s" in packets[-1].message
        assert all(p == tftp.Data(1, b"z" * 512) for p in packets[:-1])
        assert len(packets) - 1 < 20
    assert proto.active == 0 and proto.failed == 1


def test_a_full_server_gives_the_slot_of_a_transfer_that_never_started(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"w" * 100)
    flood = [RawClient(0, bind=f"127.0.0.{10 + i}") for i in range(5)]  # 5 addresses, 5 slots
    try:
        with tftp_server(tmp_path, max_transfers=5, timeout=0.5, max_retries=50) as (port, proto):
            for c in flood:
                c.server = ("127.0.0.1", port)
                c.request("f")
                assert isinstance(c.recv(), tftp.Data)
            for c in flood:  # a resend proves the server waited a whole timeout for each
                assert isinstance(c.recv(), tftp.Data)
            with RawClient(port, bind="127.0.0.2") as other:
                assert other.get("f") == b"w" * 100
            assert proto.evicted == 1
    finally:
        for c in flood:
            c.close()


def _rmem_max() -> int:
    return int(Path("/proc/sys/net/core/rmem_max").read_text())


@pytest.mark.parametrize("upload", [False, True], ids=["get", "put"])
def test_8192_x_16_runs_without_a_single_retransmission(tmp_path: Path, upload: bool) -> None:
    """Once blksize x windowsize exceeded the receive buffer (208 KiB by default), the tail of each
    window was dropped and waited a timeout: retransmissions counted, not time."""
    data = os.urandom(3 << 20)
    (tmp_path / "f.bin").write_bytes(data)
    opts = TftpClientOptions(blksize=8192, windowsize=16, timeout=2.0, max_retries=20)
    with tftp_server(tmp_path, create=True, timeout=2.0, max_retries=20) as (port, proto):
        if upload:
            res = tftp_put("127.0.0.1", port, "up.bin", io.BytesIO(data), opts)
        else:
            out = io.BytesIO()
            res = tftp_get("127.0.0.1", port, "f.bin", out, opts)
    assert (res.blksize, res.windowsize) == (8192, 16)
    assert ((tmp_path / "up.bin").read_bytes() if upload else out.getvalue()) == data
    assert res.retransmissions == 0 and proto.retransmissions == 0


@pytest.mark.parametrize("single_port", [False, True])
def test_the_server_grants_no_window_its_receive_buffer_cannot_hold(tmp_path: Path, engine: str,
                                                                   single_port: bool) -> None:
    # every engine: the window is sized through the transport's set_buffer_sizes (no raw socket)
    charge = datagram_charge(65464)
    fits = min(64, max(1, 2 * _rmem_max() // charge - 2))
    with tftp_server(tmp_path, engine, create=True, max_windowsize=64, single_port=single_port) as (port, _), \
            RawClient(port) as client:
        client.request("up.bin", write=True, blksize="65464", windowsize="64")
        oack = client.recv()
        assert isinstance(oack, tftp.OAck)
        assert int(oack.options["windowsize"]) == fits
        client.send(tftp.Error(0, "enough"))


def test_sigterm_lets_transfers_in_flight_finish(tmp_path: Path, spawn: Any) -> None:
    data = os.urandom(20_000)  # 40 lock-step blocks
    (tmp_path / "f").write_bytes(data)
    srv = spawn("tftp", "serve", "--root", str(tmp_path), "--port", "0", "--timeout", "5",
                "--shutdown-timeout", "20")
    port = int(srv.wait_for(r"listening on udp://127\.0\.0\.1:(\d+)").group(1))
    clients = [RawClient(port) for _ in range(5)]
    try:
        firsts = []
        for c in clients:
            c.request("f")
            firsts.append(c.recv())  # DATA 1: every transfer is in flight
        srv.popen.send_signal(signal.SIGTERM)
        late_ones = 0
        for _attempt in range(20):  # a new request is refused once the signal is handled; one that
            with RawClient(port) as late:  # raced it is a transfer in flight like the others
                late.request("f")
                reply = late.recv()
                if isinstance(reply, tftp.Error):
                    assert "shutting down" in reply.message
                    break
                assert late.get_rest(reply) == data
                late_ones += 1
        else:
            raise AssertionError("new requests were never refused")
        for c, first in zip(clients, firsts, strict=True):
            assert c.get_rest(first) == data  # the old server sent ERROR "server shutting down"
        assert srv.popen.wait(20) == 0
    finally:
        for c in clients:
            c.close()
    assert srv.popen.stderr is not None
    err = srv.popen.stderr.read().decode()
    assert f"{5 + late_ones} transfers completed, 0 failed" in err, err


def test_the_client_asks_for_no_window_its_receive_buffer_cannot_hold() -> None:
    import socket
    import threading

    charge = datagram_charge(65464)
    fits = min(64, max(1, 2 * _rmem_max() // charge - 2))
    asked: list[dict[str, str]] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fake_server:
        fake_server.bind(("127.0.0.1", 0))
        fake_server.settimeout(10)

        def answer() -> None:
            raw, addr = fake_server.recvfrom(2000)
            packet = tftp.parse_packet(raw)
            assert isinstance(packet, tftp.Request)
            asked.append(packet.options)
            fake_server.sendto(tftp.encode_packet(tftp.Error(1, "not here")), addr)

        t = threading.Thread(target=answer)
        t.start()
        try:
            with pytest.raises(Exception, match="not here"):
                tftp_get("127.0.0.1", fake_server.getsockname()[1], "f", io.BytesIO(),
                         TftpClientOptions(blksize=65464, windowsize=64, timeout=1.0))
        finally:
            t.join(10)
    assert asked and int(asked[0]["windowsize"]) == fits
