"""A hostile sender against the receiver (and a hostile receiver against the sender): modes, times,
text for the terminal, and what is durable before the receiver says so (issue 14)."""

from __future__ import annotations

import json
import math
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from socklab.apps.transfer.receiver import ReceiveSession, ReceiveSettings
from socklab.protocols import transfer as tp
from tests.apps.transfer.test_transfer import CHUNK, raw_session, receiver

pytestmark = pytest.mark.timeout(60)


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def frame(kind: bytes, obj: dict[str, Any]) -> bytes:
    body = json.dumps(obj).encode()  # NaN and Infinity as Python's json writes them
    return kind + len(body).to_bytes(4, "big") + body


def send_file(sock: socket.socket, conn: tp.TransferConnection, event: Callable[[], tp.Event], name: str,
              data: bytes, mode: int = 0o644, mtime: float | None = None) -> tp.Event:
    """One file entry, hand-made; returns the receiver's RESULT."""
    sock.sendall(conn.send(tp.Entry(name, "file", len(data), mode, mtime)))
    answer = event()
    if isinstance(answer, tp.Result):
        return answer
    assert isinstance(answer, tp.Offer), answer
    h = tp.FileHasher(CHUNK)
    h.update(data)
    sock.sendall(conn.send(tp.Start(0)) + data + conn.send(tp.Trailer(h.hexdigest(), h.final_chunks())))
    return event()


def dir_entry(sock: socket.socket, conn: tp.TransferConnection, event: Callable[[], tp.Event], name: str,
              mode: int) -> None:
    sock.sendall(conn.send(tp.Entry(name, "dir", 0, mode, None)))
    result = event()
    assert isinstance(result, tp.Result) and result.ok, result


# ---- 1. modes: permission bits only, masked by the umask; a replaced file keeps its own -------------
def test_setuid_setgid_sticky_and_world_write_are_never_applied(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with umask(0o027), receiver(dest) as (port, sessions):
        sock, conn, event = raw_session(port)
        with sock:
            dir_entry(sock, conn, event, "d", 0o7777)
            result = send_file(sock, conn, event, "d/f", b"#!/bin/sh\n", mode=0o6777)
            assert isinstance(result, tp.Result) and result.ok, result
            assert send_file(sock, conn, event, "g", b"g", mode=0o4755) == tp.Result(True, bytes=1)
            sock.sendall(conn.send(tp.Done()))
        sessions.wait_for(1)
    f, d, g = (dest / "d" / "f").stat().st_mode, (dest / "d").stat().st_mode, (dest / "g").stat().st_mode
    assert stat.S_IMODE(f) == 0o777 & ~0o027 == 0o750, oct(f)  # not -rwsrwsrwx
    assert stat.S_IMODE(d) == 0o750, oct(d)  # not drwsrwsrwt
    assert stat.S_IMODE(g) == 0o755 & ~0o027 == 0o750, oct(g)
    for m in (f, d, g):
        assert not m & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWOTH)


@pytest.mark.parametrize("factory", ["receive", "peer fetch"])
def test_group_and_world_write_are_never_a_peers_even_with_umask_0(tmp_path: Path, factory: str) -> None:
    # also through the peer mesh's receiver class (what `socklab peer fetch` runs)
    from socklab.apps.peer.links import Receiver
    from socklab.apps.transfer.receiver import ReceiverProtocol
    from socklab.runtime import Server

    dest = tmp_path / "dest"
    dest.mkdir()
    ended: list[ReceiveSession] = []
    with umask(0):
        settings = ReceiveSettings(host="127.0.0.1", port=0, dir=str(dest))
        srv = Server(settings, label="receive")
        srv.listen(lambda: Receiver(settings, ended.append) if factory == "peer fetch"
                   else ReceiverProtocol(settings))
        srv.start()
        try:
            sock, conn, event = raw_session(srv.port)
            with sock:
                dir_entry(sock, conn, event, "d", 0o7777)
                assert send_file(sock, conn, event, "d/f", b"x", mode=0o6777).ok  # type: ignore[attr-defined]
                sock.sendall(conn.send(tp.Done()))
                assert sock.recv(1) == b""  # the receiver closes once the session is done
        finally:
            srv.shutdown(timeout=2)
    assert stat.S_IMODE((dest / "d" / "f").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "d").stat().st_mode) == 0o755


def test_no_perms_gives_the_receivers_default_mode(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with umask(0o022), receiver(dest, perms=False) as (port, sessions):
        sock, conn, event = raw_session(port)
        with sock:
            dir_entry(sock, conn, event, "d", 0o700)
            assert send_file(sock, conn, event, "d/f", b"x", mode=0o700).ok  # type: ignore[attr-defined]
            sock.sendall(conn.send(tp.Done()))
        sessions.wait_for(1)
    assert stat.S_IMODE((dest / "d" / "f").stat().st_mode) == 0o644
    assert stat.S_IMODE((dest / "d").stat().st_mode) == 0o755


def test_a_replaced_file_and_an_existing_directory_keep_their_modes(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "keep").mkdir(parents=True)
    (dest / "keep").chmod(0o700)
    (dest / "keep" / "f").write_bytes(b"old contents")
    (dest / "keep" / "f").chmod(0o600)
    owner = (1234, 4321) if os.geteuid() == 0 else (os.getuid(), os.getgid())  # as root: someone else's file
    os.chown(dest / "keep" / "f", *owner)
    with umask(0o022), receiver(dest, overwrite=True) as (port, sessions):
        sock, conn, event = raw_session(port)
        with sock:
            dir_entry(sock, conn, event, "keep", 0o777)
            assert send_file(sock, conn, event, "keep/f", b"new", mode=0o777).ok  # type: ignore[attr-defined]
            sock.sendall(conn.send(tp.Done()))
        sessions.wait_for(1)
    assert (dest / "keep" / "f").read_bytes() == b"new"
    assert stat.S_IMODE((dest / "keep" / "f").stat().st_mode) == 0o600
    assert ((dest / "keep" / "f").stat().st_uid, (dest / "keep" / "f").stat().st_gid) == owner
    assert stat.S_IMODE((dest / "keep").stat().st_mode) == 0o700


# ---- 2. times: a bad mtime refuses its entry, the session goes on ------------------------------------
@pytest.mark.parametrize("mtime", [math.nan, math.inf, -math.inf, 1e300, -1e18, 253_402_300_800, "nan", 10**400,
                                   True, [1]], ids=lambda v: repr(v)[:24])
def test_a_bad_mtime_refuses_the_entry_and_the_session_goes_on(tmp_path: Path, mtime: Any) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with receiver(dest) as (port, sessions):
        sock, conn, event = raw_session(port)
        with sock:
            for kind in ("file", "dir"):
                sock.sendall(frame(b"E", {"name": f"bad-{kind}", "kind": kind, "size": 3, "mode": 0o644,
                                          "mtime": mtime}))
                conn.state = "answer"
                result = event()
                assert isinstance(result, tp.Result) and not result.ok and result.code == "invalid", result
                assert "mtime" in (result.error or "")
            assert send_file(sock, conn, event, "good", b"ok!", mtime=1_700_000_000) == tp.Result(True, bytes=3)
            sock.sendall(conn.send(tp.Done()))
        sessions.wait_for(1)
    assert sorted(p.name for p in dest.iterdir()) == ["good"]  # nothing half-done under any name
    assert (dest / "good").stat().st_mtime == 1_700_000_000
    assert sessions[0].failed is None and sessions[0].done


# ---- 3. text from the network never reaches a terminal raw -------------------------------------------
FORGED = "x\n\x1b[2Jreceived fake.txt: 999 bytes, verified"


def test_receive_escapes_peer_file_names(tmp_path: Path, spawn: Callable[..., Any]) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    rx = spawn("receive", "--port", "0", "--dir", str(dest), "--once")
    port = int(rx.wait_for(r"listening on tcp://127\.0\.0\.1:(\d+)").group(1))
    sock, conn, event = raw_session(port)
    with sock:
        assert send_file(sock, conn, event, FORGED, b"data").ok  # type: ignore[attr-defined]
        sock.sendall(frame(b"E", {"name": "y\x1b]0;title\x07", "kind": "file", "size": 1, "mtime": math.nan}))
        conn.state = "answer"
        assert not event().ok  # type: ignore[attr-defined]
        conn.state = "idle"
        sock.sendall(conn.send(tp.Done()))
    assert rx.popen.wait(15) == 1  # one entry refused
    err = rx.popen.stderr.read().decode()
    assert "\x1b" not in err and "\x07" not in err
    assert not any(line.startswith("received fake.txt") for line in err.splitlines()), err
    assert "received x\\n\\x1b[2Jreceived fake.txt: 999 bytes, verified: 4 bytes, verified" in err
    assert "y\\x1b]0;title\\x07" in err
    assert (dest / FORGED).read_bytes() == b"data"  # a legal name on disk; only its display is escaped


@contextmanager
def fake_receiver(answer: Callable[[socket.socket, tp.TransferConnection], None]) -> Iterator[int]:
    """A receiver that speaks HELLO, then lets ``answer`` handle the first ENTRY."""
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(20)

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
            answer(c, conn)
            with_eof = c.recv(65536)  # DONE or EOF: then close
            del with_eof

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield lsock.getsockname()[1]
    finally:
        lsock.close()
        t.join(20)


@pytest.mark.parametrize("how", ["result", "error"])
def test_send_escapes_what_the_receiver_says(tmp_path: Path, how: str) -> None:
    (tmp_path / "f").write_bytes(b"f")
    evil = "\x1b]0;pwned\x07\x1b[2J\rsocklab send: 1/1 entries, verified\u202e"

    def answer(c: socket.socket, conn: tp.TransferConnection) -> None:
        if how == "result":
            c.sendall(conn.send(tp.Result(False, evil, "io")))
        else:
            c.sendall(conn.send(tp.ErrorFrame(evil, "disk")))

    with fake_receiver(answer) as port:
        out = subprocess.run([sys.executable, "-m", "socklab", "send", str(tmp_path / "f"), "--to",
                              f"127.0.0.1:{port}"], capture_output=True, timeout=30, check=False)
    err = out.stderr.decode()
    assert out.returncode != 0
    assert "\x1b" not in err and "\r" not in err and "\u202e" not in err and "\x07" not in err, err
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\rsocklab send" in err


# ---- 6. acknowledge only what is durable -----------------------------------------------------------
def test_metadata_fsync_rename_and_every_new_directory_fsynced_before_result(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    calls: list[str] = []

    def where(fd: int) -> str:
        return os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"), dest)

    real_fsync, real_fchmod, real_utime, real_replace = os.fsync, os.fchmod, os.utime, os.replace

    def fsync(fd: int) -> None:
        calls.append(f"fsync {where(fd)}")
        real_fsync(fd)

    def fchmod(fd: int, mode: int) -> None:
        calls.append("fchmod")
        real_fchmod(fd, mode)

    def utime(path: Any, *a: Any, **kw: Any) -> None:
        calls.append("utime")
        real_utime(path, *a, **kw)

    def replace(src: Any, dst: Any) -> None:
        calls.append(f"rename {os.path.relpath(dst, dest)}")
        real_replace(src, dst)

    def sent(data: bytes) -> None:
        if data[:1] == b"R":
            calls.append("RESULT")

    for name, fn in (("fsync", fsync), ("fchmod", fchmod), ("utime", utime), ("replace", replace)):
        monkeypatch.setattr(os, name, fn)
    session = ReceiveSession(ReceiveSettings(dir=str(dest), fsync=True), sent)
    s = tp.TransferConnection("sender")
    h = tp.FileHasher(CHUNK)
    h.update(b"durable")
    session.data_received(s.send(tp.Hello(chunk_size=CHUNK)))
    s.state = "idle"
    session.data_received(s.send(tp.Entry("a/b/f.txt", "file", 7, 0o644, 1_600_000_000)))
    session.data_received(s.send(tp.Start(0)) + b"durable" + s.send(tp.Trailer(h.hexdigest(), h.final_chunks())))
    session.close()
    monkeypatch.undo()
    assert session.reports[0].ok, session.reports
    assert (dest / "a" / "b" / "f.txt").read_bytes() == b"durable"
    file_sync = calls.index("fsync a/b/f.txt.part")
    rename = calls.index("rename a/b/f.txt")
    # mode and time are part of what fsync makes durable: set before it, never after
    assert calls.index("fchmod") < file_sync and calls.index("utime") < file_sync, calls
    assert file_sync < rename < calls.index("RESULT"), calls
    # the file's entry, and the entries of the two directories the session created, before RESULT
    for d in ("a/b", "a", "."):
        assert rename < calls.index(f"fsync {d}") < calls.index("RESULT"), (d, calls)
