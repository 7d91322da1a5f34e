"""What an anonymous TFTP peer may do to the user's files (issue 14): read-only unless told,
replacing and creating as separate choices, a replaced file keeps its mode and owner, and an upload
is acknowledged only once it is on disk - stored off the engine thread, an ERROR if it cannot be."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from socklab.apps.tftp.client import TftpClientOptions, tftp_put
from socklab.core.errors import RemoteProtocolError
from socklab.protocols import tftp
from tests.apps.tftp.rawclient import RawClient
from tests.apps.tftp.test_server import FAST, get, tftp_server

pytestmark = pytest.mark.timeout(60)


def put(port: int, name: str, data: bytes) -> None:
    tftp_put("127.0.0.1", port, name, io.BytesIO(data), TftpClientOptions(**FAST))


def refused(port: int, name: str, data: bytes = b"evil") -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        put(port, name, data)
    return info.value


def hpa_put(port: int, local: Path, remote: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["tftp", "127.0.0.1", str(port), "-m", "octet", "-c", "put", str(local), remote],
                          capture_output=True, timeout=30, check=False)


def test_read_only_by_default_refuses_every_wrq(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_bytes(b"original")
    (root / "f").chmod(0o666)  # even a world-writable file: the server has not been told to write
    (tmp_path / "evil").write_bytes(b"evil")
    with tftp_server(root) as (port, _):
        for name in ("f", "new"):
            err = refused(port, name)
            assert err.hint == tftp.ErrorCode.ACCESS_VIOLATION and "read-only" in str(err), name
            r = hpa_put(port, tmp_path / "evil", name)  # the real tftp-hpa client, as in the report
            assert b"Error code 2" in r.stdout + r.stderr, (name, r)
        assert get(port, "f") == b"original"  # reading still works
    assert (root / "f").read_bytes() == b"original"
    assert sorted(p.name for p in root.iterdir()) == ["f"]


def test_replacing_and_creating_are_separate_choices(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"original")
    with tftp_server(tmp_path, create=True) as (port, _):  # a drop box: new names only
        err = refused(port, "f")
        assert err.hint == tftp.ErrorCode.FILE_EXISTS and "--allow-write" in str(err)
        put(port, "new", b"fresh")
    assert (tmp_path / "f").read_bytes() == b"original"
    assert (tmp_path / "new").read_bytes() == b"fresh"
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    with tftp_server(tmp_path, allow_write=True) as (port, _):  # replace only
        err = refused(port, "other")
        assert err.hint == tftp.ErrorCode.ACCESS_VIOLATION and "--create" in str(err)
        put(port, "f", b"replaced")
    assert (tmp_path / "f").read_bytes() == b"replaced" and not (tmp_path / "other").exists()


def test_replaced_file_keeps_mode_and_owner_and_read_only_files_are_refused(tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    keep.write_bytes(b"old")
    keep.chmod(0o640)
    owner = (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        os.chown(keep, 1234, 2345)
        owner = (1234, 2345)
    frozen = tmp_path / "frozen"
    frozen.write_bytes(b"do not touch")
    frozen.chmod(0o444)
    (tmp_path / "new.bin").write_bytes(b"x" * 3000)
    with tftp_server(tmp_path, allow_write=True, create=True) as (port, _):
        put(port, "keep", b"new content")
        err = refused(port, "frozen")
        assert err.hint == tftp.ErrorCode.ACCESS_VIOLATION and "read-only (mode 0444)" in str(err)
        r = hpa_put(port, tmp_path / "new.bin", "frozen")
        assert b"Error code 2" in r.stdout + r.stderr
    st = keep.stat()
    assert keep.read_bytes() == b"new content"
    assert stat.S_IMODE(st.st_mode) == 0o640 and (st.st_uid, st.st_gid) == owner
    assert frozen.read_bytes() == b"do not touch" and stat.S_IMODE(frozen.stat().st_mode) == 0o444
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tftp-part")]


def _upload_until_last_block(client: RawClient, name: str) -> None:
    client.request(name, write=True)
    assert client.recv() == tftp.Ack(0)
    client.send(tftp.Data(1, b"x" * 512))
    assert client.recv() == tftp.Ack(1)
    client.send(tftp.Data(2, b"the end"))  # the last block: the server now stores the file


def test_a_failing_commit_answers_error_not_the_final_ack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "f").write_bytes(b"original")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    with tftp_server(tmp_path, allow_write=True, timeout=5.0) as (port, _), RawClient(port) as client:
        monkeypatch.setattr(os, "fsync", broken_fsync)
        _upload_until_last_block(client, "f")
        reply = client.recv()
        monkeypatch.undo()
        assert isinstance(reply, tftp.Error), reply  # the old server acknowledged block 2 here
        assert "Input/output error" in reply.message
    assert (tmp_path / "f").read_bytes() == b"original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_a_file_made_read_only_during_the_upload_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"original")
    with tftp_server(tmp_path, allow_write=True, timeout=5.0) as (port, _), RawClient(port) as client:
        client.request("f", write=True)
        assert client.recv() == tftp.Ack(0)
        (tmp_path / "f").chmod(0o444)  # the owner locks it while the data comes
        client.send(tftp.Data(1, b"short"))
        reply = client.recv()
        assert isinstance(reply, tftp.Error) and reply.code == tftp.ErrorCode.ACCESS_VIOLATION, reply
    assert (tmp_path / "f").read_bytes() == b"original"


def test_the_commit_runs_off_the_engine_thread_and_the_ack_waits_for_it(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "f").write_bytes(b"original")
    (tmp_path / "other").write_bytes(b"someone else's download")
    real_fsync = os.fsync
    release = threading.Event()
    threads: list[str] = []

    def slow_fsync(fd: int) -> None:  # a slow disk: the commit blocks until the test says
        threads.append(threading.current_thread().name)
        release.wait(20)
        real_fsync(fd)

    with tftp_server(tmp_path, allow_write=True, timeout=5.0) as (port, _), RawClient(port) as client:
        monkeypatch.setattr(os, "fsync", slow_fsync)
        try:
            _upload_until_last_block(client, "f")
            # the engine is free meanwhile: another client's download goes through (with the old
            # server the fsync ran on the engine thread and this timed out)
            assert get(port, "other") == b"someone else's download"
            client.sock.settimeout(0.2)
            with pytest.raises(TimeoutError):
                client.recv()  # no final ACK before the data is on disk
        finally:
            release.set()
        client.sock.settimeout(10)
        assert client.recv() == tftp.Ack(2)
        monkeypatch.undo()
    assert (tmp_path / "f").read_bytes() == b"x" * 512 + b"the end"
    assert threads and all(name.startswith("socklab-tftp-commit") for name in threads), threads


def test_peer_names_are_escaped_in_the_log(tmp_path: Path) -> None:
    evil = "f\x1b]0;pwned\x07\n"
    (tmp_path / evil).write_bytes(b"x")
    with tftp_server(tmp_path) as (port, proto), RawClient(port) as client:
        assert client.get(evil) == b"x"
    assert len(proto.log) == 1 and "\x1b" not in proto.log[0] and "\n" not in proto.log[0]
    assert "f\\x1b]0;pwned\\x07\\n" in proto.log[0], proto.log


def test_the_client_escapes_a_servers_error_text() -> None:
    import socket

    from socklab.apps.tftp.client import tftp_get

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as evil_server:
        evil_server.bind(("127.0.0.1", 0))
        evil_server.settimeout(10)
        port = evil_server.getsockname()[1]

        def answer() -> None:
            _, addr = evil_server.recvfrom(1000)
            evil_server.sendto(tftp.encode_packet(tftp.Error(1, "nope\x1b[2J\rfake: done")), addr)

        t = threading.Thread(target=answer)
        t.start()
        try:
            with pytest.raises(RemoteProtocolError) as info:
                tftp_get("127.0.0.1", port, "f", io.BytesIO(), TftpClientOptions(**FAST))
        finally:
            t.join(10)
    text = str(info.value)
    assert "\x1b" not in text and "\r" not in text and "\\x1b[2J\\rfake" in text
