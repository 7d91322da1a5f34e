"""Progress and honest counts (issue 17, "File transfer like croc"): a bar on both sides on a terminal
and none on a pipe, a resumed send's bar counting the bytes already there (it ends at 100 %), and
summaries that say how many bytes travelled this run, how many were already there, and how many sit
in a ``.part`` kept after an interrupted session."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from socklab.protocols import transfer as tp
from tests.apps.terminal import Tty
from tests.apps.transfer.test_transfer import CHUNK, raw_session

pytestmark = pytest.mark.timeout(60)

BAR = "━"  # rich's bar glyph


@pytest.fixture
def tty() -> Iterator[Callable[..., Tty]]:
    started: list[Tty] = []

    def start(*args: str, tty: bool = True) -> Tty:
        t = Tty(list(args), tty)
        started.append(t)
        return t

    yield start
    for t in started:
        t.close()


def _half_then_rest(port: int, data: bytes, stalled: Callable[[], None]) -> None:
    """Send one file by hand: half its bytes, ``stalled()`` (the receiver waits for the rest), the rest."""
    sock, conn, event = raw_session(port)
    with sock:
        sock.sendall(conn.send(tp.Entry("big.bin", "file", len(data))))
        assert isinstance(event(), tp.Offer)
        half = len(data) // 2
        sock.sendall(conn.send(tp.Start(0)) + data[:half])
        stalled()
        h = tp.FileHasher(CHUNK)
        h.update(data)
        sock.sendall(data[half:] + conn.send(tp.Trailer(h.hexdigest(), h.final_chunks())))
        assert event() == tp.Result(True, bytes=len(data))
        sock.sendall(conn.send(tp.Done()))


# ---- 1. the receiver's bar --------------------------------------------------------------------------
def test_the_receiver_shows_a_bar_on_a_terminal(tmp_path: Path, tty: Callable[..., Tty]) -> None:
    rx = tty("receive", "--port", "0", "--dir", str(tmp_path), "--once")
    port = int(rx.readiness(r"listening on tcp://127\.0\.0\.1:(\d+)").group(1))
    data = os.urandom(8 * CHUNK)

    def stalled() -> None:  # half the file is in: the bar says so while the sender pauses
        assert rx.read_until("50%"), rx.seen[-2000:]

    _half_then_rest(port, data, stalled)
    code, err = rx.finish()
    assert code == 0, err
    assert BAR in err and "big.bin" in err
    assert "received big.bin: 524288 bytes, verified" in err
    assert (tmp_path / "big.bin").read_bytes() == data


@pytest.mark.parametrize("how", ["piped", "quiet"])
def test_no_receiver_bar_on_a_pipe_or_with_quiet(tmp_path: Path, tty: Callable[..., Tty], how: str) -> None:
    rx = tty("receive", "--port", "0", "--dir", str(tmp_path), "--once", *(["--quiet"] if how == "quiet" else []),
             tty=how == "quiet")
    port = int(rx.readiness(r"listening on tcp://127\.0\.0\.1:(\d+)").group(1))
    data = os.urandom(8 * CHUNK)
    _half_then_rest(port, data, lambda: None)
    code, err = rx.finish()
    assert code == 0, err
    assert BAR not in err and "%" not in err, err
    if how == "piped":  # lines, nothing drawn: a line per file and the session's summary
        assert "\r" not in err and "\x1b" not in err, err
        assert "  received big.bin: 524288 bytes, verified\n" in err
        assert "socklab receive: 1/1 entries, 524288 bytes received this run in " in err
    else:
        assert err == "", err


# ---- 2. a resumed send: the bar starts at the kept bytes and ends at 100 % ----------------------------
def test_a_resumed_senders_bar_counts_the_kept_bytes_and_ends_at_100(tmp_path: Path, tty: Callable[..., Tty]) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    data = os.urandom(8 * CHUNK + 1000)
    (src / "f.bin").write_bytes(data)
    (dest / "f.bin.part").write_bytes(data[:5 * CHUNK + 7])  # 5 verified chunks are there
    rx = tty("receive", "--port", "0", "--dir", str(dest), "--once", "--json", tty=False)
    port = int(rx.readiness(r"listening on tcp://127\.0\.0\.1:(\d+)").group(1))
    tx = tty("send", str(src / "f.bin"), "--to", f"127.0.0.1:{port}", "--chunk-size", str(CHUNK))
    code, err = tx.finish()
    assert code == 0, err
    assert (dest / "f.bin").read_bytes() == data
    # the last frame of the bar: every byte accounted for
    assert "100%" in err, err
    done, total = re.findall(r"([\d.]+)/([\d.]+) [kM]?B", err)[-1]
    assert done == total, err
    sent, kept = len(data) - 5 * CHUNK, 5 * CHUNK
    assert f"{sent} bytes sent this run ({kept} already on the receiver)" in err, err
    rx_code, rx_out = rx.popen.wait(15), rx.popen.stdout.read() if rx.popen.stdout else b""
    assert rx_code == 0
    summary = json.loads(rx_out.splitlines()[-1])
    assert (summary["received"], summary["already"]) == (sent, kept), summary


def test_the_senders_json_and_words_count_what_was_already_there(tmp_path: Path, tty: Callable[..., Tty]) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    data = os.urandom(3 * CHUNK)
    (tmp_path / "f.bin").write_bytes(data)
    (dest / "f.bin.part").write_bytes(data[:2 * CHUNK])
    rx = tty("receive", "--port", "0", "--dir", str(dest), tty=False)
    port = int(rx.readiness(r"listening on tcp://127\.0\.0\.1:(\d+)").group(1))
    args = [sys.executable, "-m", "socklab", "send", str(tmp_path / "f.bin"), "--to", f"127.0.0.1:{port}",
            "--chunk-size", str(CHUNK)]
    out = subprocess.run([*args, "--json"], capture_output=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert (summary["sent"], summary["already"], summary["bytes"]) == (CHUNK, 2 * CHUNK, 3 * CHUNK), summary
    out = subprocess.run(args, capture_output=True, timeout=30, check=False)  # again: all of it is there
    err = out.stderr.decode()
    assert out.returncode == 0 and f"0 bytes sent this run ({3 * CHUNK} already on the receiver)" in err, err
    assert BAR not in err  # stderr is a pipe: no bar


# ---- 3. an interrupted session counts the bytes that arrived, and names the .part ----------------------
@pytest.mark.parametrize("resumed", [False, True])
def test_an_interrupted_session_counts_the_bytes_in_the_kept_part(
        tmp_path: Path, tty: Callable[..., Tty], resumed: bool) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    data = os.urandom(10 * CHUNK)
    if resumed:
        (dest / "big.iso.part").write_bytes(data[:2 * CHUNK])
    for as_json in (False, True):
        with contextlib.suppress(FileNotFoundError):
            (dest / "one").unlink()
        rx = tty("receive", "--port", "0", "--dir", str(dest), "--once", *(["--json"] if as_json else []),
                 tty=False)
        port = int(rx.readiness(r"listening on tcp://127\.0\.0\.1:(\d+)").group(1))
        sock, conn, event = raw_session(port)
        with sock:
            sock.sendall(conn.send(tp.Entry("one", "file", 1)))
            assert isinstance(event(), tp.Offer)
            h = tp.FileHasher(CHUNK)
            h.update(b"1")
            sock.sendall(conn.send(tp.Start(0)) + b"1" + conn.send(tp.Trailer(h.hexdigest(), ())))
            assert event() == tp.Result(True, bytes=1)
            sock.sendall(conn.send(tp.Entry("big.iso", "file", len(data))))
            offer = event()
            assert isinstance(offer, tp.Offer)
            start = offer.have * CHUNK
            part = dest / "big.iso.part"
            assert start == (part.stat().st_size // CHUNK * CHUNK if part.exists() else 0)  # resumed
            sock.sendall(conn.send(tp.Start(start)) + data[start:start + 3 * CHUNK])
        code, err = rx.finish()
        assert code == 1, err
        this_run, in_part = 1 + 3 * CHUNK, start + 3 * CHUNK
        assert (dest / "big.iso.part").stat().st_size == in_part
        if as_json:
            summary = json.loads(rx.popen.stdout.read() if rx.popen.stdout else b"")
            assert summary["complete"] is False and summary["partial"] == "big.iso", summary
            assert (summary["received"], summary["already"], summary["partial_bytes"]) == \
                (this_run, start, in_part), summary
            assert summary["bytes"] == this_run
        else:
            assert f"session interrupted after 1 entries (1 ok), {this_run} bytes received this run" in err, err
            assert f"big.iso.part kept to resume ({in_part} bytes in it; run the same send again)" in err, err
