"""socklab check echo: correct servers pass every probe, each broken one fails with its mistake named.

Servers run as subprocesses on 127.0.0.1 port 0 (readiness line), ended by pid. A failing probe
waits its deadline (3 s here), which only matters when something is broken.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from socklab.core.sockets import Endpoint
from socklab.tools.check.echo import CONCURRENT_PROBES, tcp_probes, udp_probes
from socklab.tools.check.report import Result, run_probes

BROKEN = Path(__file__).parent / "broken"
TIMEOUT = 3.0


def verdicts(address: str, udp: bool = False, only: tuple[str, ...] = (), timeout: float = TIMEOUT) -> dict[str, Result]:
    host, port = address.rsplit(":", 1)
    ep = Endpoint(host, int(port))
    probes = udp_probes(ep, timeout) if udp else tcp_probes(ep, timeout)
    return {r.name: r for r in run_probes([p for p in probes if not only or p.name in only])}


def thread_per_client(program: Path, serve: str) -> Path:
    """A server program at ``program``: ``serve`` (Python source defining ``serve(c)``) runs in a thread
    per client; it listens on the port given as its argument and prints its readiness line."""
    program.write_text(
        "import socket, sys, threading, time\n" + serve
        + "s = socket.create_server(('127.0.0.1', int(sys.argv[1])))\n"
        "print('listening on {}:{}'.format(*s.getsockname()), flush=True)\n"
        "while True:\n"
        "    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()\n")
    return program


def failed(results: dict[str, Result]) -> dict[str, Result]:
    return {n: r for n, r in results.items() if not r.passed}


@pytest.mark.parametrize("server", ["threaded_server", "select_server", "selectors_server"])
def test_concurrent_lesson_servers_pass_every_probe(serve, server):
    s = serve(server)
    assert failed(verdicts(s.address)) == {}


def test_iterative_server_is_named_iterative(serve):
    s = serve("tcp_echo_server")
    bad = failed(verdicts(s.address))
    assert set(bad) == set(CONCURRENT_PROBES)
    assert "iterative" in bad["second_client"].mistake
    assert "only after the first hung up" in bad["second_client"].happened
    assert "iterative" in bad["concurrent_50"].mistake


def test_one_recv_and_hang_up_is_named(serve):
    s = serve(BROKEN / "one_recv_server.py")
    bad = failed(verdicts(s.address, only=("small", "large", "byte_at_a_time")))
    assert set(bad) == {"small", "large", "byte_at_a_time"}
    assert "answers one recv() and hangs up" in bad["small"].mistake
    assert "one recv()" in bad["large"].mistake


def test_one_recv_and_hang_up_is_named_when_the_second_message_meets_a_reset(serve, tmp_path):
    # Found by CI beside two CPU hogs: the grader's second message reaches a socket the server
    # already closed, its kernel answers with RST, and when that RST is read before the FIN the
    # verdict was "the connection was reset ... the server closed its socket while data was still
    # arriving" instead of naming the mistake. A close with SO_LINGER 0 is that order every time.
    program = thread_per_client(
        tmp_path / "one_recv_rst.py",
        "import struct\n"
        "def serve(c):\n"
        "    c.sendall(c.recv(4096))\n"
        "    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n"
        "    c.close()  # a reset: what the client reads when the RST wins the race\n"
    )
    s = serve(program)
    r = verdicts(s.address, only=("small",))["small"]
    assert not r.passed
    assert r.mistake == "it answers one recv() and hangs up", (r.happened, r.mistake)


def test_server_that_never_closes_is_named_close_wait(serve):
    s = serve(BROKEN / "never_closes_server.py")
    res = verdicts(s.address)
    assert set(failed(res)) == {"half_close"}
    r = res["half_close"]
    assert "CLOSE_WAIT" in r.mistake and "ignores EOF" in r.mistake
    assert "CLOSE_WAIT" in r.happened  # the kernel's own view of the server's socket, from /proc


def test_crash_on_reset_is_named(serve):
    s = serve(BROKEN / "crash_on_reset_server.py")
    r = verdicts(s.address, only=("reset",))["reset"]
    assert not r.passed
    assert "crashed on the reset" in r.mistake


def test_transforming_server_is_named(serve):
    s = serve(BROKEN / "text_server.py")
    r = verdicts(s.address, only=("binary",))["binary"]
    assert not r.passed and "transforms the data" in r.mistake


@pytest.mark.slow
def test_grader_never_hangs_on_a_silent_server(serve):
    """A server that accepts and never answers: every probe fails, each within its deadline."""
    s = serve(BROKEN / "silent_server.py")
    t0 = time.monotonic()
    res = verdicts(s.address, timeout=1.0)
    elapsed = time.monotonic() - t0
    assert all(not r.passed for r in res.values())
    assert "nothing came back" in res["small"].happened
    # 11 probes with 1 s deadlines (a few wait two or three): a bounded run, about 15 s
    assert elapsed < 50


def test_same_verdict_on_repeated_runs(serve):
    s = serve(BROKEN / "one_recv_server.py")
    runs = [{n: r.passed for n, r in verdicts(s.address, only=("small", "half_close", "reset")).items()}
            for _ in range(10)]
    assert all(run == runs[0] for run in runs)
    assert runs[0] == {"small": False, "half_close": False, "reset": True}


def test_udp_lesson_server_passes(serve):
    s = serve("udp_echo_server")
    assert failed(verdicts(s.address, udp=True)) == {}


def test_udp_reply_to_the_wrong_peer_is_named(serve):
    s = serve(BROKEN / "udp_wrong_peer_server.py")
    bad = failed(verdicts(s.address, udp=True, only=("many_peers",)))
    assert "many_peers" in bad
    assert "another address than the sender's" in bad["many_peers"].mistake


def test_refused_when_nothing_listens():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = verdicts(f"127.0.0.1:{port}", only=("small",))["small"]
    assert not r.passed and "connection refused" in r.happened


def test_a_server_that_keeps_only_the_first_message_of_a_recv_is_named(serve, tmp_path):
    program = thread_per_client(
        tmp_path / "first_line.py",
        "def serve(c):\n"
        "    with c:\n"
        "        while data := c.recv(65536):\n"
        "            c.sendall(data.split(b'\\n')[0] + b'\\n')  # one recv = one message, it thinks\n"
    )
    s = serve(program)
    res = verdicts(s.address, only=("small", "many_in_one"))
    assert res["small"].passed
    r = res["many_in_one"]
    assert not r.passed
    assert "only 12 of 1200 bytes came back" in r.happened and "one recv() per message" in r.mistake


def test_a_server_that_streams_forever_cannot_hold_the_grader(serve, tmp_path):
    """Progress resets the per-wait deadline, but every exchange has a total bound too."""
    program = thread_per_client(
        tmp_path / "stream.py",
        "def serve(c):\n"
        "    try:\n"
        "        while True:\n"
        "            c.sendall(b'x' * 1024)\n"
        "    except OSError:\n"
        "        c.close()\n"
    )
    s = serve(program)
    t0 = time.monotonic()
    r = verdicts(s.address, only=("half_close",), timeout=1.0)["half_close"]
    assert not r.passed and "changed at offset 0" in r.happened
    assert time.monotonic() - t0 < 30  # it stops reading past what was sent (and after 12 x 1 s at most)


@pytest.mark.slow
def test_a_server_that_trickles_cannot_hold_the_grader(serve, tmp_path):
    """One byte every 0.3 s is progress each time, yet the exchange ends at its total bound (12 x 1 s)."""
    program = thread_per_client(
        tmp_path / "trickle.py",
        "def serve(c):\n"
        "    try:\n"
        "        while c.recv(65536):\n"
        "            for _ in range(1000):\n"
        "                c.sendall(b'x')\n"
        "                time.sleep(0.3)\n"
        "    except OSError:\n"
        "        c.close()\n"
    )
    s = serve(program)
    t0 = time.monotonic()
    r = verdicts(s.address, only=("large",), timeout=1.0)["large"]
    elapsed = time.monotonic() - t0
    assert not r.passed
    assert 10 < elapsed < 40
