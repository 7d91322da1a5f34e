"""Re-running a send after an interruption (issue 15): what arrived is verified and skipped, a
different file under the same name is the receiver's policy said on both sides, and the receiver's
summary after a broken session says it broke."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from socklab.protocols import transfer as tp
from tests.apps.transfer.test_transfer import CHUNK, raw_session, receiver, send

pytestmark = pytest.mark.timeout(60)


def socklab_send(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "socklab", "send", *args], capture_output=True, timeout=30,
                          check=False)


def test_rerun_after_an_interruption_skips_what_arrived_and_resumes_the_rest(
        tmp_path: Path, spawn: Callable[..., Any]) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    a, b, empty = os.urandom(3 * tp.CHUNK_SIZE // 2), os.urandom(tp.CHUNK_SIZE + 1000), b""
    for name, data in (("a.bin", a), ("b.bin", b), ("empty", empty)):
        (src / name).write_bytes(data)
    # the first run was cut during b.bin: a.bin and empty arrived, b.bin's first chunk is in b.bin.part
    (dest / "a.bin").write_bytes(a)
    (dest / "empty").write_bytes(b"")
    (dest / "b.bin.part").write_bytes(b[:tp.CHUNK_SIZE + 10])
    rx = spawn("receive", "--port", "0", "--dir", str(dest))
    port = rx.wait_for(r"listening on tcp://127\.0\.0\.1:(\d+)").group(1)
    paths = [str(src / n) for n in ("a.bin", "b.bin", "empty")]
    out = socklab_send(*paths, "--to", f"127.0.0.1:{port}", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["ok"] and summary["present"] == 2, summary
    by_name = {e["name"]: e for e in summary["entries"]}
    assert by_name["a.bin"]["ok"] and by_name["a.bin"]["code"] == "present" and by_name["a.bin"]["sent"] == 0
    assert by_name["empty"]["ok"] and by_name["empty"]["code"] == "present"
    assert by_name["b.bin"]["ok"] and by_name["b.bin"]["offset"] == tp.CHUNK_SIZE
    assert summary["sent"] == len(b) - tp.CHUNK_SIZE  # nothing of a.bin travelled again
    assert (dest / "b.bin").read_bytes() == b and not (dest / "b.bin.part").exists()
    # and once more, in words: everything is there
    out = socklab_send(*paths, "--to", f"127.0.0.1:{port}")
    err = out.stderr.decode()
    assert out.returncode == 0, err
    assert "a.bin: already present on the receiver (same content, verified), skipped" in err
    assert "3/3 entries (3 already present), 0 bytes sent" in err
    assert sorted(p.name for p in dest.iterdir()) == ["a.bin", "b.bin", "empty"]


def test_a_different_file_is_the_receivers_policy_said_on_both_sides(
        tmp_path: Path, spawn: Callable[..., Any]) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (tmp_path / "same-size").write_bytes(b"new!")
    (tmp_path / "other-size").write_bytes(b"longer new contents")
    (dest / "same-size").write_bytes(b"old!")
    (dest / "other-size").write_bytes(b"old")
    rx = spawn("receive", "--port", "0", "--dir", str(dest), "--once")
    port = rx.wait_for(r"listening on tcp://127\.0\.0\.1:(\d+)").group(1)
    out = socklab_send(str(tmp_path / "same-size"), str(tmp_path / "other-size"), "--to", f"127.0.0.1:{port}",
                       "--json")
    assert out.returncode == 1
    summary = json.loads(out.stdout)
    assert [e["code"] for e in summary["entries"]] == ["exists", "exists"]
    assert all(e["sent"] == 0 for e in summary["entries"])  # refused before any byte travelled
    err = out.stderr.decode()
    for name in ("same-size", "other-size"):
        assert f"{name}: the receiver already has a different file by that name and keeps it - the receiver's " \
               f"policy: `socklab receive --overwrite` on the receiving side replaces such files" in err, err
    assert rx.popen.wait(15) == 1
    rx_err = rx.popen.stderr.read().decode()
    assert "refused same-size: same-size exists with different content; this receiver keeps existing files " \
           "(start `socklab receive` with --overwrite to replace them)" in rx_err, rx_err
    assert (dest / "same-size").read_bytes() == b"old!" and (dest / "other-size").read_bytes() == b"old"
    assert sorted(p.name for p in dest.iterdir()) == ["other-size", "same-size"]  # no .part left


def test_overwrite_replaces_a_file_of_the_same_size(tmp_path: Path) -> None:
    # with --overwrite the receiver does not compare: the sender's file replaces its own
    dest = tmp_path / "dest"
    dest.mkdir()
    (tmp_path / "f").write_bytes(b"new!")
    (dest / "f").write_bytes(b"old!")
    with receiver(dest, overwrite=True) as (port, _):
        [f] = send(port, [str(tmp_path / "f")])
    assert f.ok and f.code is None and f.sent == 4 and (dest / "f").read_bytes() == b"new!"
    assert sorted(p.name for p in dest.iterdir()) == ["f"]


def test_a_sender_that_sends_the_bytes_anyway_is_checked_against_the_kept_file(tmp_path: Path) -> None:
    # an older sender ignores OFFER's "present": its bytes are hashed, dropped, and compared
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "same").write_bytes(b"abc")
    (dest / "diff").write_bytes(b"abc")
    with receiver(dest) as (port, _):
        sock, conn, event = raw_session(port)
        with sock:
            for name, data in (("same", b"abc"), ("diff", b"xyz")):
                sock.sendall(conn.send(tp.Entry(name, "file", 3)))
                offer = event()
                assert offer == tp.Offer(0, (), present=True)
                h = tp.FileHasher(CHUNK)
                h.update(data)
                sock.sendall(conn.send(tp.Start(0)) + data + conn.send(tp.Trailer(h.hexdigest(), h.final_chunks())))
                result = event()
                assert isinstance(result, tp.Result)
                assert (result.ok, result.code) == ((True, "present") if name == "same" else (False, "exists"))
            sock.sendall(conn.send(tp.Done()))
    assert (dest / "diff").read_bytes() == b"abc"
    assert sorted(p.name for p in dest.iterdir()) == ["diff", "same"]


# ---- the receiver's summary after a broken session -----------------------------------------------------
@pytest.mark.parametrize("cut", ["mid-file", "between-entries"])
def test_the_receivers_summary_says_an_interrupted_session_was_interrupted(
        tmp_path: Path, spawn: Callable[..., Any], cut: str) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    rx = spawn("receive", "--port", "0", "--dir", str(dest), "--once")
    port = int(rx.wait_for(r"listening on tcp://127\.0\.0\.1:(\d+)").group(1))
    sock, conn, event = raw_session(port)
    with sock:
        for name in ("one", "two"):
            sock.sendall(conn.send(tp.Entry(name, "file", 1)))
            assert isinstance(event(), tp.Offer)
            h = tp.FileHasher(CHUNK)
            h.update(name[:1].encode())
            sock.sendall(conn.send(tp.Start(0)) + name[:1].encode() + conn.send(tp.Trailer(h.hexdigest(), ())))
            assert event() == tp.Result(True, bytes=1)
        if cut == "mid-file":
            sock.sendall(conn.send(tp.Entry("three", "file", 10 * CHUNK)))
            assert isinstance(event(), tp.Offer)
            sock.sendall(conn.send(tp.Start(0)) + os.urandom(CHUNK))
    # closed without DONE
    assert rx.popen.wait(15) == 1
    err = rx.popen.stderr.read().decode()
    assert "2/2 entries" not in err, err
    assert "socklab receive: session interrupted after 2 entries (2 ok)" in err, err
    if cut == "mid-file":
        assert f"three.part kept to resume ({CHUNK} bytes in it; run the same send again)" in err, err
        assert f"closed in the middle of the session ({9 * CHUNK} bytes of the file still to come)" in err
        assert (dest / "three.part").exists()
    else:
        assert "the sender closed the connection before the end of the session (no DONE)" in err, err
