"""The TCP states ``trace run`` shows for real programs under real strace: never an old state.

Three programs a learner writes: a non-blocking client that sends once its connect is done, a
client that half-closes (shutdown SHUT_WR) and reads to the end (FIN_WAIT -> TIME_WAIT), and a
server whose client closes first (CLOSE_WAIT -> LAST_ACK).
"""

from __future__ import annotations

import os
import re
import selectors
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.tools.tracing.helpers import echo_server, first_line, needs_strace, socklab, trace_run

pytestmark = needs_strace

LINE = re.compile(r" fd=(\d+) (\S+) .*\[([A-Z_0-9]+)\]$")

NB_CONNECT = """
    import select, socket, sys
    s = socket.socket()
    s.setblocking(False)
    assert s.connect_ex(("127.0.0.1", int(sys.argv[1]))) in (0, 115)   # 115: EINPROGRESS
    _, writable, _ = select.select([], [s], [], 30)                      # the handshake is done
    assert writable
    s.setblocking(True)
    s.settimeout(30)
"""


def states(err: str) -> list[tuple[str, str]]:
    """(call, state) of each line on the traced program's TCP socket, in order."""
    out = []
    for ln in err.splitlines():
        m = LINE.search(ln)
        if m and m[1] == "3":
            out.append((m[2], m[3]))
    return out


def traced(tmp_path: Path, body: str, port: int) -> list[tuple[str, str]]:
    """A client that connects without blocking, then runs ``body``, traced against ``port``."""
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent(NB_CONNECT) + textwrap.dedent(body))
    r = socklab("trace", "run", "--", sys.executable, str(prog), str(port))
    assert r.returncode == 0, r.stderr
    return states(r.stderr)


def test_a_non_blocking_connect_then_send_is_established_after_select_says_writable(tmp_path: Path) -> None:
    with echo_server() as port:
        seen = traced(tmp_path, """
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(b"hello")
            assert s.recv(100) == b"hello"
            s.close()
        """, port)
    assert seen[:2] == [("socket", "CLOSE"), ("connect", "SYN_SENT")], seen
    after = seen[2:]
    assert [op for op, _ in after] == ["setsockopt", "sendto", "recvfrom", "close"], seen
    assert [st for _, st in after[:3]] == ["ESTABLISHED"] * 3, seen  # the old code said SYN_SENT for setsockopt
    assert after[3][1] in ("FIN_WAIT1", "FIN_WAIT2"), seen


def test_a_client_that_shuts_down_then_reads_to_the_end_is_fin_wait_then_time_wait(tmp_path: Path) -> None:
    with echo_server() as port:
        seen = traced(tmp_path, """
            s.shutdown(socket.SHUT_WR)                # FIN: "I have no more to send"
            while s.recv(100):                        # the server echoes nothing, then closes: EOF
                pass
            s.close()
        """, port)
    ops = [op for op, _ in seen]
    assert ops == ["socket", "connect", "shutdown", "recvfrom", "close"], seen
    assert seen[2][1] in ("FIN_WAIT1", "FIN_WAIT2"), seen  # the old code said CLOSE here
    assert seen[3][1] == "TIME_WAIT" and seen[4][1] == "TIME_WAIT", seen
    assert "CLOSE" not in [st for _, st in seen[2:]] and "SYN_SENT" not in [st for _, st in seen[2:]]


def test_a_server_whose_client_closes_first_is_close_wait_then_last_ack(tmp_path: Path) -> None:
    prog = tmp_path / "server.py"
    prog.write_text(textwrap.dedent("""
        import socket
        srv = socket.create_server(("127.0.0.1", 0))
        print(srv.getsockname()[1], flush=True)
        conn, _ = srv.accept()
        conn.settimeout(30)
        got = b""
        while data := conn.recv(100):      # until the client's FIN: recv returns 0
            got += data
        conn.sendall(got.upper())          # CLOSE_WAIT: this side may still send
        conn.close()                       # our FIN: LAST_ACK until the client ACKs it
        srv.close()
    """))
    with trace_run("--", sys.executable, str(prog)) as proc:
        port = int(first_line(proc.stdout, "the traced server did not print its port"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"bye")
            c.shutdown(socket.SHUT_WR)
            reply = b""
            while data := c.recv(100):
                reply += data
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert reply == b"BYE"
    conn = [(m[2], m[3]) for ln in err.splitlines() if (m := LINE.search(ln)) and m[1] == "4"]
    assert conn[0] == ("accept", "ESTABLISHED"), err
    eof = conn.index(("recvfrom", "CLOSE_WAIT"))
    assert all(st in ("ESTABLISHED", "CLOSE_WAIT") for _, st in conn[1:eof]), err
    assert conn[eof + 1:] == [("sendto", "CLOSE_WAIT"), ("close", "LAST_ACK")], err
    listening = [(m[2], m[3]) for ln in err.splitlines() if (m := LINE.search(ln)) and m[1] == "3"]
    assert ("listen", "LISTEN") in listening and listening[-1] == ("close", "CLOSE"), err  # old: [LISTEN]


def test_the_kernels_fin_wait2_replaces_the_guess_while_the_program_runs(tmp_path: Path) -> None:
    """After shutdown(SHUT_WR) the calls can only say FIN_WAIT1; the peer's ACK (FIN_WAIT2) only the
    kernel knows. A second connection, closed by the server, makes trace run say "the kernel reports
    CLOSE_WAIT": proof that it has looked at the kernel's table (twice) while the first was in FIN_WAIT2."""
    prog = tmp_path / "halfclose.py"
    prog.write_text(textwrap.dedent("""
        import socket, sys
        port = int(sys.argv[1])
        a = socket.create_connection(("127.0.0.1", port), timeout=60)
        a.sendall(b"A")
        b = socket.create_connection(("127.0.0.1", port), timeout=60)
        b.sendall(b"B")
        a.shutdown(socket.SHUT_WR)
        while a.recv(100):
            pass
        a.close()
        while b.recv(100):
            pass
        b.close()
    """))
    out = tmp_path / "t.jsonl"
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(30)
    err = b""
    with srv, trace_run("--json", str(out), "--", sys.executable, str(prog), str(srv.getsockname()[1]),
                        text=False, stdout=subprocess.DEVNULL) as proc:
        conns = {}
        for _ in range(2):
            c, _ = srv.accept()
            c.settimeout(30)
            conns[c.recv(1)] = c
        a, b = conns[b"A"], conns[b"B"]
        assert a.recv(100) == b""  # the client's FIN on A: A is in FIN_WAIT2 on its side
        b.shutdown(socket.SHUT_WR)  # B: the client's kernel goes CLOSE_WAIT, the program does not read B yet
        assert proc.stderr is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stderr, selectors.EVENT_READ)
            while b"the kernel reports CLOSE_WAIT" not in err:
                assert sel.select(30), err.decode()
                chunk = os.read(proc.stderr.fileno(), 65536)
                assert chunk, err.decode()
                err += chunk
        a.sendall(b"x")
        a.close()
        b.close()
        _, rest = proc.communicate(timeout=30)
        err += rest
    text = err.decode()
    assert proc.returncode == 0, text
    shut = re.search(r" fd=(\d+) shutdown .*\[FIN_WAIT1\]$", text, re.M)
    assert shut, text
    got = re.search(rf" fd={shut[1]} recvfrom 1 bytes .*\[(\w+)\]$", text, re.M)
    assert got and got[1] == "FIN_WAIT2", text  # the old code said FIN_WAIT1
    import json

    events = [json.loads(ln) for ln in out.read_text().splitlines()]
    recv = next(e for e in events if e["op"] == "recvfrom" and e["fd"] == int(shut[1]) and e["nbytes"] == 1)
    assert recv["state_from"] == "kernel"
    page = tmp_path / "t.html"
    v = socklab("trace", "view", str(out), "-o", str(page))
    assert v.returncode == 0, v.stderr
    shown = set(re.findall(r'<text class="state" [^>]*data-from="(\w+)"[^>]*>\[(\w+)\]',
                           page.read_text()))  # the ladder marks which states the kernel reported
    assert {("calls", "FIN_WAIT1"), ("kernel", "FIN_WAIT2")} <= shown, shown
