"""The TFTP machines without sockets: packets, options, netascii, and transfers through a
simulated network that loses, duplicates and reorders (deterministic, seeded, virtual time)."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socklab.core.errors import ProtocolError, RemoteProtocolError
from socklab.protocols import tftp
from tests.apps.tftp.sim import CLIENT, SERVER_TID, Faults, run_transfer

PEER = ("10.0.0.9", 1234)


# ---- packets ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("packet", [
    tftp.Request("boot/pxelinux.0", "octet", {"blksize": "1428", "tsize": "0"}),
    tftp.Request("a", "netascii", {}, write=True),
    tftp.Data(1, b""), tftp.Data(65535, b"x" * 512), tftp.Ack(0), tftp.Ack(65535),
    tftp.Error(1, "file not found"), tftp.OAck({"blksize": "8192", "windowsize": "8"}), tftp.OAck({}),
])
def test_packets_round_trip(packet: tftp.Packet) -> None:
    assert tftp.parse_packet(tftp.encode_packet(packet)) == packet


def test_rfc1350_wire_layout() -> None:
    assert tftp.encode_packet(tftp.Request("f", "octet")) == b"\x00\x01f\x00octet\x00"
    assert tftp.encode_packet(tftp.Data(2, b"hi")) == b"\x00\x03\x00\x02hi"
    assert tftp.encode_packet(tftp.Ack(65536)) == b"\x00\x04\x00\x00"  # rollover
    assert tftp.encode_packet(tftp.Error(5, "x")) == b"\x00\x05\x00\x05x\x00"


@pytest.mark.parametrize("raw", [b"", b"\x00", b"\x00\x09", b"\x00\x01f\x00", b"\x00\x01f\x00octet",
                                 b"\x00\x01\x00octet\x00", b"\x00\x01f\x00bogus\x00", b"\x00\x04\x00",
                                 b"\x00\x03\x00", b"\x00\x06blksize\x00", b"\x00\x01f\x00octet\x00k\x00"])
def test_malformed_packets_raise_remote_protocol_error(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        tftp.parse_packet(raw)
    assert info.value.hint == tftp.ErrorCode.ILLEGAL_OPERATION


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_only_protocol_errors_escape(raw: bytes) -> None:
    for data in (raw, b"\x00\x01" + raw, b"\x00\x06" + raw, b"\x00\x02" + raw):
        try:
            pkt = tftp.parse_packet(data)
        except ProtocolError:
            continue
        assert isinstance(pkt, tftp.Packet)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=30))
def test_fuzz_machines_never_crash_on_garbage(datagrams: list[bytes]) -> None:
    recv = tftp.Receiver(lambda b: None, tftp.TransferOptions(), peer=PEER)
    send = tftp.Sender(lambda n: b"z" * min(n, 100), tftp.TransferOptions(), peer=PEER)
    send.start()
    for d in datagrams:
        for m in (recv, send):
            for data, _addr in m.datagram_received(d, PEER):
                tftp.parse_packet(data)  # whatever we send is well-formed


def test_a_megabyte_of_random_datagrams_is_fast() -> None:
    rng = random.Random(7)
    recv = tftp.Receiver(lambda b: None, tftp.TransferOptions(), peer=PEER)
    for _ in range(1024):
        recv.datagram_received(rng.randbytes(1024), PEER)
    assert recv.finished  # the first bad packet failed it; the rest were ignored quickly


# ---- options ----------------------------------------------------------------------------------------
def test_negotiation_caps_and_ignores() -> None:
    req = tftp.Request("f", "octet", {"blksize": "99999", "windowsize": "1000", "timeout": "0",
                                      "tsize": "0", "foo": "bar"})
    run, oack = tftp.negotiate(req, max_blksize=8192, max_windowsize=32, tsize=1234)
    assert oack == {"blksize": "8192", "windowsize": "32", "tsize": "1234"}
    assert (run.blksize, run.windowsize, run.tsize) == (8192, 32, 1234)
    run, oack = tftp.negotiate(tftp.Request("f", "octet", {"blksize": "7", "timeout": "256"}))
    assert oack == {} and run.blksize == 512


def test_wrq_tsize_over_limit_is_disk_full() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        tftp.negotiate(tftp.Request("f", "octet", {"tsize": "100"}, write=True), max_tsize=10)
    assert info.value.hint == tftp.ErrorCode.DISK_FULL


def test_client_refuses_an_oack_it_did_not_ask_for() -> None:
    with pytest.raises(RemoteProtocolError):
        tftp.check_oack({"blksize": "512"}, tftp.OAck({"windowsize": "4"}), 1.0)
    with pytest.raises(RemoteProtocolError):
        tftp.check_oack({"blksize": "512"}, tftp.OAck({"blksize": "1024"}), 1.0)
    assert tftp.check_oack({"blksize": "1024"}, tftp.OAck({"blksize": "512"}), 1.0).blksize == 512


# ---- netascii ---------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 50))
def test_netascii_round_trip_whatever_the_block_cuts(text: bytes, cut: int) -> None:
    wire = tftp.NetasciiEncoder().encode(text)
    dec = tftp.NetasciiDecoder()
    pieces = [wire[i:i + cut] for i in range(0, len(wire), cut)] or [b""]
    out = b"".join(dec.decode(p, final=i == len(pieces) - 1) for i, p in enumerate(pieces))
    assert out == text


# ---- the state machines, packet by packet -----------------------------------------------------------
def test_sorcerers_apprentice_duplicate_ack_sends_nothing() -> None:
    blocks = iter([b"a" * 512, b"b" * 512, b"c"])
    s = tftp.Sender(lambda n: next(blocks), tftp.TransferOptions(), peer=PEER)
    assert [tftp.parse_packet(d) for d, _ in s.start()] == [tftp.Data(1, b"a" * 512)]
    assert [tftp.parse_packet(d) for d, _ in s.datagram_received(tftp.encode_packet(tftp.Ack(1)), PEER)] == \
        [tftp.Data(2, b"b" * 512)]
    for _ in range(5):  # RFC 1123 4.2.3.1: a duplicate ACK must not trigger DATA
        assert s.datagram_received(tftp.encode_packet(tftp.Ack(1)), PEER) == []
    assert s.retransmissions == 0
    out = s.timer_expired()  # only a timeout retransmits
    assert [tftp.parse_packet(d) for d, _ in out] == [tftp.Data(2, b"b" * 512)]
    assert s.retransmissions == 1


def test_unknown_tid_gets_error_5_and_the_transfer_goes_on() -> None:
    r = tftp.Receiver(lambda b: None, tftp.TransferOptions(), peer=PEER)
    stranger = ("10.0.0.66", 999)
    out = r.datagram_received(tftp.encode_packet(tftp.Data(1, b"x" * 512)), stranger)
    assert out == [(tftp.encode_packet(tftp.Error(5, "unknown transfer ID")), stranger)]
    assert not r.finished and r.unknown_tid == 1
    out = r.datagram_received(tftp.encode_packet(tftp.Data(1, b"x")), PEER)
    assert [tftp.parse_packet(d) for d, _ in out] == [tftp.Ack(1)] and r.state is tftp.State.DONE


def test_receiver_reacks_final_block_while_dallying() -> None:
    r = tftp.Receiver(lambda b: None, tftp.TransferOptions(), peer=PEER)
    last = tftp.encode_packet(tftp.Data(1, b"end"))
    assert len(r.datagram_received(last, PEER)) == 1
    assert [tftp.parse_packet(d) for d, _ in r.datagram_received(last, PEER)] == [tftp.Ack(1)]


def test_gives_up_after_max_retries() -> None:
    s = tftp.Sender(lambda n: b"x", tftp.TransferOptions(), peer=PEER, max_retries=3)
    s.start()
    for _ in range(3):
        assert s.timer_expired()
    out = s.timer_expired()
    assert s.state is tftp.State.FAILED and "timed out" in (s.error or "")
    assert tftp.parse_packet(out[0][0]) == tftp.Error(0, s.error or "")


def test_peer_error_ends_the_transfer_without_an_answer() -> None:
    r = tftp.Receiver(lambda b: None, tftp.TransferOptions(), peer=PEER)
    assert r.datagram_received(tftp.encode_packet(tftp.Error(3, "disk full")), PEER) == []
    assert r.state is tftp.State.FAILED and r.error_code == 3


# ---- whole transfers through the simulated network --------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 1024, 5000])
@pytest.mark.parametrize("upload", [False, True], ids=["get", "put"])
def test_edge_sizes_clean_network(size: int, upload: bool) -> None:
    payload = os.urandom(size)
    res = run_transfer(payload, upload=upload)
    assert res.data == payload
    assert res.client.state is tftp.State.DONE and res.server.state is tftp.State.DONE
    assert res.client.retransmissions == 0 and res.server.retransmissions == 0


@pytest.mark.parametrize("upload", [False, True], ids=["get", "put"])
def test_block_number_rollover(upload: bool) -> None:
    payload = os.urandom(8 * 65540 + 3)  # 65,541 blocks of 8 bytes: wraps past 65,535
    res = run_transfer(payload, upload=upload, options={"blksize": "8", "windowsize": "16"})
    assert res.data == payload


def test_options_are_negotiated_end_to_end() -> None:
    payload = os.urandom(100_000)
    res = run_transfer(payload, upload=False, options={"blksize": "1428", "windowsize": "8", "tsize": "0"})
    assert res.data == payload
    assert res.client.options.blksize == 1428 and res.client.options.windowsize == 8
    assert res.client.options.tsize == len(payload)


def _data_sent(machine: tftp._Machine) -> int:
    return machine.packets_sent


@pytest.mark.parametrize("loss", [0.05, 0.20])
@pytest.mark.parametrize("blksize,window", [(512, 1), (512, 8), (1428, 8), (1428, 32), (8192, 1),
                                            (8192, 32)])
@pytest.mark.parametrize("upload", [False, True], ids=["get", "put"])
def test_lossy_duplicating_reordering_network(loss: float, blksize: int, window: int, upload: bool) -> None:
    size = 1 << 20 if blksize >= 1428 else 256 * 1024
    payload = random.Random(size + window).randbytes(size)
    faults = Faults(loss=loss, dup=0.02, reorder=0.02, latency=0.001)
    res = run_transfer(payload, upload=upload, seed=blksize * window, up=faults, down=faults,
                       options={"blksize": str(blksize), "windowsize": str(window)}, max_retries=60)
    assert res.data == payload
    sender = res.server if not upload else res.client
    assert sender.state is tftp.State.DONE
    # Retransmissions explained by the faults: each lost or reordered packet (either way) can
    # cost at most one window resent (go-back-N, RFC 7440); a duplicate costs nothing, and a
    # spurious timeout or an answer to a duplicate ACK would break this bound.
    faults_seen = sum(res.lost.values()) + sum(res.reordered.values())
    assert sender.retransmissions <= (faults_seen + 1) * window
    blocks = size // blksize + 1
    assert sender.packets_sent - sender.retransmissions == blocks + 1  # + the OACK or the WRQ


def test_ten_mebibytes_windowed_under_loss() -> None:
    payload = random.Random(10).randbytes(10 << 20)
    faults = Faults(loss=0.05, dup=0.01, reorder=0.01)
    res = run_transfer(payload, upload=False, up=faults, down=faults,
                       options={"blksize": "8192", "windowsize": "32"})
    assert res.data == payload


def test_no_loss_means_no_retransmission_even_with_reordering_free_latency() -> None:
    payload = os.urandom(300_000)
    res = run_transfer(payload, upload=False, options={"windowsize": "16"}, up=Faults(latency=0.02),
                       down=Faults(latency=0.02), timeout=0.5)
    assert res.data == payload and res.server.retransmissions == 0 and res.client.retransmissions == 0


def test_a_dead_peer_fails_the_client_in_bounded_time() -> None:
    res = run_transfer(b"x" * 10_000, upload=False, up=Faults(loss=1.0), max_retries=4, timeout=1.0)
    assert res.client.state is tftp.State.FAILED and res.elapsed <= 5.0 + 0.01
    assert CLIENT and SERVER_TID  # addresses used by the simulation


@pytest.mark.slow
@pytest.mark.parametrize("loss", [0.05, 0.20])
@pytest.mark.parametrize("blksize", [512, 1428, 8192])
@pytest.mark.parametrize("window", [1, 8, 32])
def test_the_issues_ten_mebibyte_matrix(loss: float, blksize: int, window: int) -> None:
    """10 MiB, 5 % and 20 % loss each way, 2 % duplication and reordering: the issue's matrix."""
    payload = random.Random(blksize * window).randbytes(10 << 20)
    faults = Faults(loss=loss, dup=0.02, reorder=0.02, latency=0.001)
    res = run_transfer(payload, upload=(blksize + window) % 2 == 1, seed=int(loss * 100) + blksize + window,
                       up=faults, down=faults, options={"blksize": str(blksize), "windowsize": str(window)},
                       max_retries=60)
    assert res.data == payload
    sender = res.client if (blksize + window) % 2 == 1 else res.server
    faults_seen = sum(res.lost.values()) + sum(res.reordered.values())
    assert sender.retransmissions <= (faults_seen + 1) * window


def _pkts(out: list[tuple[bytes, object]]) -> list[tftp.Packet]:
    return [tftp.parse_packet(d) for d, _ in out]


def test_an_upload_is_acknowledged_only_after_its_commit() -> None:
    got: list[bytes] = []
    r = tftp.Receiver(got.append, tftp.TransferOptions(), peer=PEER, hold_final_ack=True)
    assert _pkts(r.datagram_received(tftp.encode_packet(tftp.Data(1, b"x" * 512)), PEER)) == [tftp.Ack(1)]
    last = tftp.encode_packet(tftp.Data(2, b"end"))
    assert r.datagram_received(last, PEER) == [] and r.state is tftp.State.COMMITTING and not r.finished
    assert r.datagram_received(last, PEER) == []  # the sender's resend: still no ACK
    assert r.timer_expired() == [] and r.retries == 0  # no timer runs while the disk works
    assert _pkts(r.commit_done(None)) == [tftp.Ack(2)] and r.state is tftp.State.DONE
    assert _pkts(r.datagram_received(last, PEER)) == [tftp.Ack(2)]  # dallying as before
    failed = tftp.Receiver(got.append, tftp.TransferOptions(), peer=PEER, hold_final_ack=True)
    failed.datagram_received(last.replace(b"\x00\x02end", b"\x00\x01end"), PEER)
    assert _pkts(failed.commit_done((3, "disk full"))) == [tftp.Error(3, "disk full")]
    assert failed.state is tftp.State.FAILED


def test_a_timeout_above_the_cap_is_not_acknowledged() -> None:
    for asked, granted in (("255", None), ("6", None), ("5", "5"), ("1", "1")):
        run, oack = tftp.negotiate(tftp.Request("f", options={"timeout": asked}), max_timeout=5,
                                   default_timeout=1.0)
        assert oack.get("timeout") == granted
        assert run.timeout == (float(granted) if granted else 1.0)


def test_a_gap_in_a_window_is_repaired_without_a_timeout() -> None:
    """RFC 7440 section 4: the receiver acknowledges its last in-order block as soon as a later
    one arrives, and the sender goes back to the block after it - no timer involved."""
    payloads = [bytes([i]) * 512 for i in range(1, 9)] + [b"end"]
    feed = iter(payloads)
    s = tftp.Sender(lambda n: next(feed), tftp.TransferOptions(windowsize=8), peer=PEER)
    r = tftp.Receiver(lambda b: None, tftp.TransferOptions(windowsize=8), peer=PEER)
    window = [d for d, _ in s.start()]
    assert len(window) == 8
    del window[2]  # block 3 is lost
    replies = [out for d in window for out in r.datagram_received(d, PEER)]
    assert _pkts(replies) == [tftp.Ack(2)]  # at once, on block 4, and once per gap
    resent = _pkts(s.datagram_received(replies[0][0], PEER))
    assert [p.block for p in resent if isinstance(p, tftp.Data)] == list(range(3, 10))  # 9 is the last
    final = [out for p in resent for out in r.datagram_received(tftp.encode_packet(p), PEER)]
    assert _pkts(final) == [tftp.Ack(9)] and r.state is tftp.State.DONE
    assert r.retransmissions == 0 and s.timer_generation > 0
