"""Native transfer over real sockets: every engine, directories and stdin, resume, verification,
name confinement, overwrite policy, a full disk, cuts at many offsets (through socklab tap), the
CLI in both directions."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from socklab.apps.transfer.receiver import ReceiverProtocol, ReceiveSession, ReceiveSettings
from socklab.apps.transfer.sender import SendReport, collect, send_to
from socklab.apps.transfer.settings import SendSettings
from socklab.core.errors import BrokenError, OperationTimeout, SocklabError
from socklab.core.sockets import Endpoint
from socklab.protocols import transfer as tp
from socklab.runtime import Server

pytestmark = pytest.mark.timeout(60)

CHUNK = 64 * 1024


class Sessions(list[ReceiveSession]):
    """The receiver's ended sessions; :meth:`wait_for` blocks until ``n`` have ended (no polling)."""

    def __init__(self) -> None:
        super().__init__()
        self._cond = threading.Condition()

    def append(self, session: ReceiveSession) -> None:
        with self._cond:
            super().append(session)
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 10) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self) >= n, timeout), f"{len(self)} sessions ended, not {n}"


@contextmanager
def receiver(dest: Path, engine: str = "epoll", **kw: Any) -> Iterator[tuple[int, Sessions]]:
    settings = ReceiveSettings(host="127.0.0.1", port=0, dir=str(dest), engine=engine, **kw)
    sessions = Sessions()
    srv = Server(settings, label="receive")
    srv.listen(lambda: ReceiverProtocol(settings, on_session=sessions.append))
    srv.start()
    try:
        yield srv.port, sessions
    finally:
        srv.shutdown(timeout=2)


def send(port: int, paths: list[str], stdin: bytes = b"", via: int | None = None, engine: str = "epoll",
         host: str = "127.0.0.1", **kw: Any) -> list[SendReport]:
    return send_to(Endpoint(host, via or port), collect(paths, stdin_name="piped.bin"),
                   SendSettings(chunk_size=CHUNK, engine=engine), stdin=io.BytesIO(stdin), **kw).result()


def make_tree(root: Path) -> dict[str, bytes]:
    files = {"top.bin": os.urandom(CHUNK + 1), "empty": b"", "one": b"1", "d/exact": os.urandom(CHUNK),
             "d/e/deep.txt": b"deep\n" * 1000}
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "one").chmod(0o600)
    os.utime(root / "top.bin", (1_600_000_000, 1_600_000_000))
    (root / "d" / "e").chmod(0o750)
    os.utime(root / "d", (1_500_000_000, 1_500_000_000))
    return files


def test_files_directories_and_stdin_on_every_engine(engine: str, tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    dest.mkdir()
    files = make_tree(src)
    piped = os.urandom(3 * CHUNK + 5)
    # a small SO_RCVLOWAT, so that every engine meets it being raised and lowered per file
    with receiver(dest, engine, recv_lowat=4096) as (port, _sessions):
        reports = send(port, [str(src / "top.bin"), str(src), "-"], stdin=piped)
    assert all(r.ok for r in reports), reports
    assert (dest / "top.bin").read_bytes() == files["top.bin"]
    for name, data in files.items():
        assert (dest / "src" / name).read_bytes() == data
    assert (dest / "piped.bin").read_bytes() == piped
    assert (dest / "src" / "one").stat().st_mode & 0o777 == 0o600
    assert (dest / "src" / "d" / "e").stat().st_mode & 0o777 == 0o750
    assert (dest / "top.bin").stat().st_mtime == 1_600_000_000
    assert (dest / "src" / "d").stat().st_mtime == 1_500_000_000
    assert not list(dest.rglob("*.part"))


def test_the_sender_runs_on_every_engine(engine: str, tmp_path: Path) -> None:
    # the sender is a protocol on an engine like a server: the kernel's sendfile where the engine has
    # it, the transport's read-and-write fallback where not; a file and a stream larger than the
    # socket buffers, so the pump meets a full socket (pause_writing) and its drain (resume_writing)
    src, dest = tmp_path / "src", tmp_path / "dest"
    dest.mkdir()
    files = make_tree(src)
    big = os.urandom(160 * CHUNK + 7)  # 10 MiB
    (tmp_path / "big.bin").write_bytes(big)
    piped = os.urandom(40 * CHUNK + 3)
    with receiver(dest) as (port, _sessions):
        reports = send(port, [str(tmp_path / "big.bin"), str(src), "-"], stdin=piped, engine=engine)
    assert all(r.ok for r in reports), reports
    assert (reports[0].sent, reports[-1].sent) == (len(big), len(piped))
    assert (dest / "big.bin").read_bytes() == big
    assert (dest / "piped.bin").read_bytes() == piped
    for name, data in files.items():
        assert (dest / "src" / name).read_bytes() == data


@contextmanager
def silent_after_offer() -> Iterator[int]:
    """A receiver that answers HELLO and the first ENTRY's OFFER, then reads nothing more."""
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(20)
    over = threading.Event()

    def serve() -> None:
        try:
            c, _ = lsock.accept()
        except OSError:
            return
        with c:
            c.settimeout(20)
            conn = tp.TransferConnection("receiver")
            while not isinstance(ev := conn.next_event(), tp.Entry):
                if isinstance(ev, tp.Hello):
                    c.sendall(conn.send(tp.Hello(chunk_size=ev.chunk_size)))
                elif ev is None:
                    conn.receive_data(c.recv(65536))
            c.sendall(conn.send(tp.Offer(0, ())))
            over.wait(20)  # the sender's bytes pile up in the socket buffers until the test ends

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield lsock.getsockname()[1]
    finally:
        over.set()
        lsock.close()
        t.join(20)


def test_a_receiver_that_stops_reading_is_given_up_after_the_stall_timeout(tmp_path: Path) -> None:
    # what TCP_USER_TIMEOUT did for the peer's sender: bytes that cannot go out for that long end it
    (tmp_path / "f.bin").write_bytes(os.urandom(48 << 20))  # more than both socket buffers hold
    with silent_after_offer() as port:
        started = time.monotonic()
        with pytest.raises(OperationTimeout, match=r"nothing could be sent for 0\.5 s"):
            send_to(Endpoint("127.0.0.1", port), collect([str(tmp_path / "f.bin")]),
                    SendSettings(chunk_size=CHUNK, stall_timeout=0.5)).result()
        assert time.monotonic() - started < 15


def test_existing_file_needs_overwrite(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"new")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "f").write_bytes(b"old")
    with receiver(dest) as (port, _):
        [r] = send(port, [str(tmp_path / "f")])
    assert not r.ok and r.code == "exists" and "--overwrite" in (r.error or "")
    assert (dest / "f").read_bytes() == b"old"
    with receiver(dest, overwrite=True) as (port, _):
        [r] = send(port, [str(tmp_path / "f")])
    assert r.ok and (dest / "f").read_bytes() == b"new"


def raw_session(port: int) -> tuple[socket.socket, tp.TransferConnection, Callable[[], tp.Event]]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = tp.TransferConnection("sender")

    def event() -> tp.Event:
        while (ev := conn.next_event()) is None:
            conn.receive_data(sock.recv(65536))
        return ev

    sock.sendall(conn.send(tp.Hello(chunk_size=CHUNK)))
    assert isinstance(event(), tp.Hello)
    return sock, conn, event


@pytest.mark.parametrize("name", ["../evil", "/tmp/abs-evil", "a/../../evil", "link/evil", "..", "a\\..\\evil"])
def test_names_are_confined_to_the_destination(tmp_path: Path, name: str) -> None:
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "link").symlink_to(outside)
    with receiver(dest) as (port, _):
        sock, conn, event = raw_session(port)
        with sock:
            sock.sendall(conn.send(tp.Entry(name, "file", 4)))
            result = event()
            assert isinstance(result, tp.Result) and not result.ok and result.code == "name", result
            sock.sendall(conn.send(tp.Done()))
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in dest.iterdir()) == ["link"]
    assert not Path("/tmp/abs-evil").exists()


def test_flipped_bit_is_detected_and_the_verified_prefix_kept(tmp_path: Path) -> None:
    data = os.urandom(4 * CHUNK + 100)
    (tmp_path / "f.bin").write_bytes(data)
    dest = tmp_path / "dest"
    dest.mkdir()
    bad = bytearray(data)
    bad[2 * CHUNK + 7] ^= 0x10
    h = tp.FileHasher(CHUNK)
    h.update(data)
    with receiver(dest) as (port, _):
        sock, conn, event = raw_session(port)
        with sock:
            sock.sendall(conn.send(tp.Entry("f.bin", "file", len(data))))
            assert event() == tp.Offer(0, ())
            sock.sendall(conn.send(tp.Start(0)) + bytes(bad) + conn.send(tp.Trailer(h.hexdigest(), h.final_chunks())))
            result = event()
            sock.sendall(conn.send(tp.Done()))
        assert isinstance(result, tp.Result) and not result.ok and result.code == "verify"
        assert "chunk 2" in (result.error or "")
        assert not (dest / "f.bin").exists()
        assert (dest / "f.bin.part").read_bytes() == data[:2 * CHUNK]
        [r] = send(port, [str(tmp_path / "f.bin")])  # resuming re-sends from the damaged chunk
    assert r.ok and r.offset == 2 * CHUNK and r.sent == len(data) - 2 * CHUNK
    assert (dest / "f.bin").read_bytes() == data


def test_resume_checks_the_prefix_chunk_by_chunk(tmp_path: Path) -> None:
    data = os.urandom(5 * CHUNK + 3)
    (tmp_path / "f.bin").write_bytes(data)
    dest = tmp_path / "dest"
    dest.mkdir()
    part = bytearray(data[:3 * CHUNK + 500])  # 3 full chunks and a bit
    (dest / "f.bin.part").write_bytes(part)
    with receiver(dest) as (port, _):
        [r] = send(port, [str(tmp_path / "f.bin")])
        assert r.ok and r.offset == 3 * CHUNK  # the partial 4th chunk is re-sent, nothing more
        (dest / "f.bin").unlink()
        part[CHUNK + 1] ^= 1  # a corrupt prefix: only the chunks before the damage count
        (dest / "f.bin.part").write_bytes(part)
        [r] = send(port, [str(tmp_path / "f.bin")])
        assert r.ok and r.offset == CHUNK
    assert (dest / "f.bin").read_bytes() == data


@pytest.mark.parametrize(("direct_io", "hash_on_recv", "worker_threads"),
                         [(True, True, True), (False, False, True), (True, False, False)])
def test_direct_and_buffered_writes_give_identical_files(tmp_path: Path, direct_io: bool, hash_on_recv: bool,
                                                         worker_threads: bool) -> None:
    # sizes around O_DIRECT's 4 KiB alignment and the ring's buffers; a resumed prefix; a stream
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    sizes = [0, 1, 4095, 4096, 4097, CHUNK - 1, CHUNK, 3 * CHUNK + 4097, 9 * CHUNK + 5]
    files = {f"f{n}": os.urandom(n) for n in sizes}
    for name, data in files.items():
        (src / name).write_bytes(data)
    big = files[f"f{9 * CHUNK + 5}"]
    (dest / f"f{9 * CHUNK + 5}.part").write_bytes(big[:2 * CHUNK + 10])
    piped = os.urandom(2 * CHUNK + 4099)
    with receiver(dest, direct_io=direct_io, hash_on_recv=hash_on_recv, worker_threads=worker_threads,
                  buffer_size=2 * CHUNK) as (port, _):
        reports = send(port, [str(src / name) for name in files] + ["-"], stdin=piped)
    assert all(r.ok for r in reports), reports
    assert reports[len(sizes) - 1].offset == 2 * CHUNK
    for name, data in files.items():
        assert (dest / name).read_bytes() == data, name
    assert (dest / "piped.bin").read_bytes() == piped


def test_resume_offset_must_be_an_offered_chunk_boundary(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "f.bin.part").write_bytes(os.urandom(2 * CHUNK))
    with receiver(dest) as (port, _):
        for offset in (CHUNK + 1, 3 * CHUNK):  # not a boundary; beyond the 2 chunks offered
            sock, conn, event = raw_session(port)
            with sock:
                sock.sendall(conn.send(tp.Entry("f.bin", "file", 4 * CHUNK)))
                offer = event()
                assert isinstance(offer, tp.Offer) and offer.have == 2
                sock.sendall(conn.send(tp.Start(offset)))
                with pytest.raises(BrokenError, match="not a chunk boundary"):
                    err = event()
                    if isinstance(err, tp.ErrorFrame):
                        raise BrokenError(err.message)
    assert not (dest / "f.bin").exists()


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, check=False).returncode == 0


def test_full_disk_is_a_clean_error_on_both_sides(tmp_path: Path) -> None:
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "1m"):
        pytest.fail("cannot mount a tmpfs (the tests run as root in CI)")
    try:
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(48 * CHUNK))  # 3 MiB into 1 MiB
        (tmp_path / "ok.txt").write_bytes(b"fits")
        with receiver(small, fsync=False) as (port, sessions):
            with pytest.raises(BrokenError, match=r"receiver cannot write big\.bin: No space left on device"):
                send(port, [str(big)])
            assert list(small.iterdir()) == []  # nothing left behind
            [r] = send(port, [str(tmp_path / "ok.txt")])  # the receiver still serves
            assert r.ok
        assert any(s.failed and "No space left" in s.failed for s in sessions)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def _cut_points(size: int) -> list[int]:
    hello = len(tp.TransferConnection("sender").send(tp.Hello(chunk_size=CHUNK)))
    entry = len(tp.TransferConnection("sender", state="idle").send(
        tp.Entry("f.bin", "file", size, 0o644, 0.0)))
    start = len(tp.TransferConnection("sender").send(tp.Start(0)))
    head = hello + entry + start
    return [0, 1, hello, hello + 1, hello + entry, head, head + 1, head + CHUNK - 1, head + CHUNK,
            head + CHUNK + 1, head + 2 * CHUNK, head + size - 1, head + size]


@pytest.mark.slow
def test_cut_at_many_offsets_resumes_byte_identical(tmp_path: Path) -> None:
    from socklab.tools.tap import Fault, Tap

    size = 3 * CHUNK + 777
    data = os.urandom(size)
    src = tmp_path / "f.bin"
    src.write_bytes(data)
    os.utime(src, (0, 0))  # mtime 0 keeps the ENTRY frame's length predictable
    for cut in _cut_points(size):
        dest = tmp_path / f"dest{cut}"
        dest.mkdir()
        with receiver(dest) as (port, sessions):
            with Tap(target=("127.0.0.1", port),
                     faults=[Fault("limit_data", "upstream", bytes=cut)], seed=cut) as tap:
                with pytest.raises(SocklabError):
                    send(port, [str(src)], via=tap.port)
            if cut:
                sessions.wait_for(1)  # the cut session let go of f.bin.part (else: RESULT busy)
            part = dest / "f.bin.part"
            got = part.read_bytes() if part.exists() else b""
            assert data.startswith(got), cut  # the partial file is a prefix, never garbage
            assert not (dest / "f.bin").exists()
            [r] = send(port, [str(src)])
        assert r.ok, (cut, r)
        assert (dest / "f.bin").read_bytes() == data, cut
        assert r.sent <= size - len(got) + CHUNK, (cut, r.sent, len(got))  # at most one chunk re-sent


# ---- the CLI --------------------------------------------------------------------------------------
def test_cli_receive_once_and_send_json(tmp_path: Path, spawn: Callable[..., Any]) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    data = os.urandom(300_000)
    (tmp_path / "a.bin").write_bytes(data)
    rx = spawn("receive", "--port", "0", "--dir", str(dest), "--once", "--json")
    port = rx.wait_for(r"socklab receive listening on tcp://127\.0\.0\.1:(\d+)").group(1)
    out = subprocess.run([sys.executable, "-m", "socklab", "send", str(tmp_path / "a.bin"), "--to",
                          f"127.0.0.1:{port}", "--json"], capture_output=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["ok"] and summary["bytes"] == len(data) and summary["entries"][0]["name"] == "a.bin"
    assert rx.popen.wait(15) == 0
    assert (dest / "a.bin").read_bytes() == data


def test_cli_reverse_mode_and_stdout(tmp_path: Path, spawn: Callable[..., Any]) -> None:
    data = os.urandom(200_000)
    (tmp_path / "a.bin").write_bytes(data)
    tx = spawn("send", str(tmp_path / "a.bin"), "--listen", "--port", "0", "--quiet")
    where = tx.wait_for(r"socklab send listening on tcp://(\S+) \(fetch with: socklab receive --from").group(1)
    out = subprocess.run([sys.executable, "-m", "socklab", "receive", "--from", where, "--stdout", "--quiet"],
                         capture_output=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == data
    assert tx.popen.wait(15) == 0


def test_cli_reverse_mode_interrupted_before_a_receiver_came(spawn: Callable[..., Any], tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"a")
    tx = spawn("send", str(tmp_path / "a.bin"), "--listen", "--port", "0")
    tx.wait_for(r"socklab send listening on tcp://\S+ \(fetch with: socklab receive --from")
    tx.popen.send_signal(signal.SIGINT)
    assert tx.popen.wait(15) == 130
    assert tx.popen.stderr is not None
    assert tx.popen.stderr.read().decode().strip().splitlines() == ["socklab: interrupted"]


def test_reverse_mode_gives_up_when_no_receiver_comes_and_stops_listening(tmp_path: Path) -> None:
    # the peer's one-shot transfer port: a deadline for the fetcher, then nothing listens there
    from socklab.apps.transfer.sender import SendServer

    (tmp_path / "f").write_bytes(b"f")
    sender = SendServer(collect([str(tmp_path / "f")]), SendSettings(port=0))
    port = sender.address[1]
    with pytest.raises(OperationTimeout, match=r"no receiver connected within 0\.2 s"):
        sender.run(accept_timeout=0.2)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_cli_exit_status_1_on_refusal(tmp_path: Path, spawn: Callable[..., Any]) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (tmp_path / "x").write_bytes(b"x")
    (dest / "x").write_bytes(b"old")
    rx = spawn("receive", "--port", "0", "--dir", str(dest))
    port = rx.wait_for(r"listening on tcp://127\.0\.0\.1:(\d+)").group(1)
    out = subprocess.run([sys.executable, "-m", "socklab", "send", str(tmp_path / "x"), "--to",
                          f"127.0.0.1:{port}", "--quiet"], capture_output=True, timeout=30, check=False)
    assert out.returncode == 1 and b"exists" in out.stderr


def test_several_senders_at_once(concurrent_engine: str, tmp_path: Path) -> None:
    import threading

    dest = tmp_path / "dest"
    dest.mkdir()
    files = {f"f{i}.bin": os.urandom(2 * CHUNK + i * 1000) for i in range(6)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    reports: list[SendReport] = []
    errors: list[BaseException] = []

    def one(name: str) -> None:
        try:
            reports.extend(send(port, [str(tmp_path / name)]))
        except BaseException as exc:
            errors.append(exc)

    with receiver(dest, concurrent_engine) as (port, _):
        threads = [threading.Thread(target=one, args=(n,)) for n in files]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert not errors and len(reports) == len(files) and all(r.ok for r in reports)
    for name, data in files.items():
        assert (dest / name).read_bytes() == data


def test_server_shutdown_mid_transfer_leaves_a_resumable_part(tmp_path: Path) -> None:
    import threading

    from socklab.tools.tap import Fault, Tap

    data = os.urandom(40 * CHUNK)  # 2.5 MiB at 1 MB/s: still in flight when the server stops
    (tmp_path / "f.bin").write_bytes(data)
    dest = tmp_path / "dest"
    dest.mkdir()
    started = threading.Event()
    failure: list[BaseException] = []
    settings = ReceiveSettings(host="127.0.0.1", port=0, dir=str(dest), shutdown_timeout=0.2)
    srv = Server(settings, label="receive")
    srv.listen(lambda: ReceiverProtocol(settings))
    srv.start()
    with Tap(target=("127.0.0.1", srv.port), faults=[Fault("bandwidth", "upstream", rate=1000)]) as tap:  # KB/s
        def sender() -> None:
            try:
                send(tap.port, [str(tmp_path / "f.bin")], progress=lambda n: started.set())
            except SocklabError as exc:
                failure.append(exc)
            finally:
                started.set()

        t = threading.Thread(target=sender)
        t.start()
        assert started.wait(20)
        srv.shutdown()  # graceful: 0.2 s to finish, then the connection is aborted
        t.join(20)
    assert failure, "the transfer should not have completed"
    assert not (dest / "f.bin").exists()
    part = (dest / "f.bin.part").read_bytes()
    assert data.startswith(part)
    with receiver(dest) as (port, _):
        [r] = send(port, [str(tmp_path / "f.bin")])
    assert r.ok and r.offset == len(part) // CHUNK * CHUNK
    assert (dest / "f.bin").read_bytes() == data


def test_ipv6_loopback(tmp_path: Path) -> None:
    data = os.urandom(CHUNK + 10)
    (tmp_path / "f.bin").write_bytes(data)
    dest = tmp_path / "dest"
    dest.mkdir()
    settings = ReceiveSettings(host="::1", port=0, dir=str(dest))
    srv = Server(settings, label="receive")
    srv.listen(lambda: ReceiverProtocol(settings))
    srv.start()
    try:
        [r] = send(srv.port, [str(tmp_path / "f.bin")], host="::1")
    finally:
        srv.shutdown(timeout=2)
    assert r.ok and (dest / "f.bin").read_bytes() == data


def test_two_senders_of_the_same_name_never_mix(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with receiver(dest) as (port, _):
        a_sock, a, a_event = raw_session(port)
        b_sock, b, b_event = raw_session(port)
        with a_sock, b_sock:
            a_sock.sendall(a.send(tp.Entry("same.bin", "file", 10)))
            assert a_event() == tp.Offer(0, ())
            b_sock.sendall(b.send(tp.Entry("same.bin", "file", 10)))
            refused = b_event()
            assert isinstance(refused, tp.Result) and not refused.ok and refused.code == "busy"
            payload = b"0123456789"
            h = tp.FileHasher(CHUNK)
            h.update(payload)
            a_sock.sendall(a.send(tp.Start(0)) + payload + a.send(tp.Trailer(h.hexdigest(), h.final_chunks())))
            assert a_event() == tp.Result(True, bytes=10)
            a_sock.sendall(a.send(tp.Done()))
            b_sock.sendall(b.send(tp.Done()))
    assert (dest / "same.bin").read_bytes() == b"0123456789"
