"""A fast sequential client, and a server out of descriptors.

A PXE loader, or a script fetching many small files, asks for the next file right after its final
ACK. The server may read that request before the ACK (the ACK goes to the transfer's own socket,
read later in the same engine turn): the finished transfers then still held their slots, and the
client was refused "too many transfers from your address" after --max-transfers-per-client of
them - or, when it reuses its port as tftp-hpa does for several files, its request was ignored as a
retransmission and it waited a whole timeout (5 s for tftp-hpa) per file. A fast uploader left one
dallying socket behind per file (5 s each). And a transfer whose socket could not be opened (EMFILE)
raised out of the listener's callback: the client heard nothing.

Each client here is real (raw sockets or tftp-hpa) on loopback, on every engine, and never sleeps:
it answers each packet the moment it arrives and fails on the first ERROR or silence (2 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from socklab.protocols import tftp
from tests.apps.tftp.rawclient import RawClient
from tests.apps.tftp.test_server import tftp_server

pytestmark = pytest.mark.timeout(120)

N = 200
SILENCE = 2.0  # seconds a client waits for any answer: a dropped request fails the test, not a timer


def _files(root: Path, n: int = N) -> dict[str, bytes]:
    """``n`` small files of 0 to 3 lock-step blocks (sizes 0, 512 and 1024 among them)."""
    files = {f"f{i:03d}": bytes([i % 251]) * (i * 7 % 1100) for i in range(n)}
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


@pytest.mark.parametrize("cap", [1, 32], ids=["cap1", "cap32"])
@pytest.mark.parametrize("same_port", [False, True], ids=["new-port", "same-port"])
def test_back_to_back_gets_are_never_refused(engine: str, tmp_path: Path, same_port: bool, cap: int) -> None:
    files = _files(tmp_path)
    with tftp_server(tmp_path, engine, max_transfers_per_client=cap) as (port, proto):
        client = RawClient(port, timeout=SILENCE)
        try:
            for name, data in files.items():
                if not same_port:
                    client.close()
                    client = RawClient(port, timeout=SILENCE)
                client.tid = None  # a new transfer: the server answers from a new TID
                client.request(name)
                assert client.get_rest(client.recv()) == data, name  # an ERROR or silence fails here
        finally:
            client.close()
        assert proto.refused == 0 and proto.retransmissions == 0


def _put(client: RawClient, name: str, data: bytes) -> None:
    """One lock-step upload of at most 511 bytes: WRQ, ACK 0, DATA 1, the final ACK 1."""
    client.tid = None
    client.request(name, write=True)
    assert client.recv() == tftp.Ack(0), name
    client.send(tftp.Data(1, data))
    client.sock.settimeout(30)  # the final ACK waits for fsync and rename: a busy disk may take seconds
    try:
        assert client.recv() == tftp.Ack(1), name
    finally:
        client.sock.settimeout(SILENCE)


@pytest.mark.parametrize("same_port", [False, True], ids=["new-port", "same-port"])
def test_back_to_back_puts_leave_at_most_the_cap_of_dallying_sockets(engine: str, tmp_path: Path,
                                                                     same_port: bool) -> None:
    # the final ACK of each upload is followed by a dally of timeout x retries (5 s here), on the
    # transfer's own socket: at 100 uploads a second that was 500 sockets, one descriptor each
    with tftp_server(tmp_path, engine, create=True, max_transfers_per_client=4, timeout=1.0,
                     max_retries=5) as (port, proto):
        client = RawClient(port, timeout=SILENCE)
        try:
            for i in range(60):
                if not same_port:
                    client.close()
                    client = RawClient(port, timeout=SILENCE)
                _put(client, f"up{i}", b"u%d" % i)
        finally:
            client.close()
        with RawClient(port, timeout=SILENCE) as probe:  # answered after the last upload's dally began
            probe.request("missing")
            assert isinstance(probe.recv(), tftp.Error)
        assert len([d for d in list(proto.transfers.values()) if not d.active]) <= 4
        assert proto.refused == 0 and proto.failed == 1  # (the probe)
    assert all((tmp_path / f"up{i}").read_bytes() == b"u%d" % i for i in range(60))


def test_dallying_sockets_are_bounded_in_all_too(tmp_path: Path) -> None:
    # 12 clients on 12 addresses, one upload each: within the per-address cap, past max_transfers
    with tftp_server(tmp_path, create=True, max_transfers=3, timeout=1.0, max_retries=5) as (port, proto):
        for i in range(12):
            with RawClient(port, bind=f"127.0.0.{20 + i}", timeout=SILENCE) as client:
                _put(client, f"up{i}", b"u%d" % i)
        with RawClient(port, timeout=SILENCE) as probe:  # answered after the last upload's dally began
            probe.request("missing")
            assert isinstance(probe.recv(), tftp.Error)
        assert len([d for d in list(proto.transfers.values()) if not d.active]) == 3
        assert len(proto.dallies) == 3
    assert all((tmp_path / f"up{i}").read_bytes() == b"u%d" % i for i in range(12))


def test_a_client_holding_its_cap_of_finishing_transfers_is_still_refused(tmp_path: Path) -> None:
    # one-block files: each transfer has sent its last DATA at once, and only waits for the ACK
    # that this client never sends. Its fifth request may wait a moment for a slot, then is refused
    (tmp_path / "f").write_bytes(b"small")
    held = [RawClient(0, timeout=SILENCE) for _ in range(4)]
    try:
        with tftp_server(tmp_path, max_transfers_per_client=4, timeout=1.0) as (port, proto):
            for c in held:
                c.server = ("127.0.0.1", port)
                c.request("f")
                assert c.recv() == tftp.Data(1, b"small")  # and never acknowledged
            with RawClient(port, timeout=SILENCE) as fifth:
                fifth.request("f")
                reply = fifth.recv()
                assert isinstance(reply, tftp.Error) and "too many transfers from your address" in reply.message
            assert proto.active == 4
            with RawClient(port, bind="127.0.0.2", timeout=SILENCE) as other:  # another address: served
                assert other.get("f") == b"small"
    finally:
        for c in held:
            c.close()


def _tftp_hpa(port: int, cwd: Path, *command: str) -> subprocess.CompletedProcess[str]:
    # -v prints one line per file; each file is asked for from the same port (tftp-hpa keeps one socket)
    return subprocess.run(["tftp", "127.0.0.1", str(port), "-m", "octet", "-v", "-c", *command], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.interop
def test_tftp_hpa_gets_and_puts_many_files_in_one_go(tmp_path: Path) -> None:
    root, work = tmp_path / "root", tmp_path / "work"
    (root / "in").mkdir(parents=True)
    work.mkdir()
    files = _files(root)
    for name, data in files.items():
        (work / f"u{name}").write_bytes(data[::-1])
    with tftp_server(root, create=True) as (port, proto):
        # 200 files back to back: before, every request that crossed the previous final ACK was
        # ignored and tftp-hpa waited 5 s before asking again (the 60 s bound fails the test)
        r = _tftp_hpa(port, work, "get", *files)
        assert r.returncode == 0 and "Transfer timed out" not in r.stdout + r.stderr, r.stdout + r.stderr
        r = _tftp_hpa(port, work, "put", *(f"u{name}" for name in files), "in")
        assert r.returncode == 0 and "Transfer timed out" not in r.stdout + r.stderr, r.stdout + r.stderr
        assert proto.refused == 0 and proto.failed == 0
    assert all((work / name).read_bytes() == data for name, data in files.items())
    assert all((root / "in" / f"u{name}").read_bytes() == data[::-1] for name, data in files.items())


# ---- out of descriptors ---------------------------------------------------------------------------
SERVER = textwrap.dedent("""
    import os, resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    from socklab.apps.tftp.server import TftpSettings, serve_tftp
    srv, proto = serve_tftp(TftpSettings(host="127.0.0.1", port=0, root=sys.argv[1], engine=sys.argv[2]))
    srv.start()
    held = []
    try:
        while True:  # every descriptor the process may still open
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    print(srv.port, flush=True)
    for line in sys.stdin:  # "free N": give N descriptors back (N=0: all), then say so
        n = int(line.split()[1]) or len(held)
        for _ in range(n):
            os.close(held.pop())
        print("freed", flush=True)
    srv.shutdown(timeout=1)
""")


def test_out_of_descriptors_is_answered_with_error_0_and_the_server_goes_on(engine: str, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path), engine], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        port = int(proc.stdout.readline())

        def ask() -> tftp.Packet | bytes:
            with RawClient(port, timeout=5.0) as c:  # (the test's own descriptors are not limited)
                c.request("f")
                return c.get_rest(reply) if isinstance(reply := c.recv(), tftp.Data) else reply

        def free(n: int) -> None:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(f"free {n}\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "freed\n"

        for free_now in (0, 1):  # no descriptor for the file; then one: the file's, none for the socket
            if free_now:
                free(free_now)
            reply = ask()
            assert reply == tftp.Error(0, "server busy (out of resources), try again later"), (free_now, reply)
        free(0)
        assert ask() == b"data"  # and the server goes on
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
        err = proc.stderr.read() if proc.stderr else ""
        assert "raised" not in err and "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream and not stream.closed:
                stream.close()
