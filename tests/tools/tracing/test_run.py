"""``socklab trace run`` on real programs under real strace: Python, C, and the classic mistakes."""

from __future__ import annotations

import re
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.tools.tracing.helpers import (
    C_CLIENT,
    compile_c,
    echo_server,
    first_line,
    needs_strace,
    socklab,
    trace_run,
)

pytestmark = needs_strace


def lines_of(err: str, op: str) -> list[str]:
    return [ln for ln in err.splitlines() if re.search(rf" fd=\d+ {op} ", ln)]


def test_a_python_client_is_traced_like_socklabs_own_trace(tmp_path: Path) -> None:
    prog = tmp_path / "client.py"
    prog.write_text(textwrap.dedent("""
        import socket, sys
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
        s.sendall(b"hello world")
        got = b""
        while len(got) < 11:
            chunk = s.recv(100)
            if not chunk:  # the server closed early: say so, do not spin
                sys.exit(f"the server closed after {len(got)} of 11 bytes")
            got += chunk
        print(got.decode())
        s.close()
    """))
    with echo_server() as port:
        r = socklab("trace", "run", "--", sys.executable, str(prog), str(port))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello world\n"  # the program's output alone: the trace went to stderr
    err = r.stderr
    name = re.escape(Path(sys.executable).name[:15])
    connect = lines_of(err, "connect")
    assert len(connect) == 1
    assert re.match(rf"\d\d:\d\d:\d\d\.\d{{6}} {name}\[\d+\]/main fd=(\d+) connect peer=127\.0\.0\.1:{port} "
                    r"three-way handshake done .* \[ESTABLISHED\]$", connect[0]), connect
    fd = re.search(r"fd=(\d+)", connect[0]).group(1)  # type: ignore[union-attr]
    assert any(f"fd={fd} sendto 11 bytes peer=127.0.0.1:{port}" in ln for ln in lines_of(err, "sendto"))
    recvs = lines_of(err, "recvfrom")
    assert sum(int(re.search(r"recvfrom (\d+) bytes", ln).group(1)) for ln in recvs) == 11  # type: ignore[union-attr,misc]
    assert "(asked for up to 100)" in recvs[0]
    assert any(f"fd={fd} close peer=127.0.0.1:{port} FIN sent" in ln for ln in lines_of(err, "close")), err
    assert lines_of(err, "socket")[0].endswith("socket AF_INET, SOCK_STREAM [CLOSE]")


def test_a_c_client_read_write_and_shutdown(tmp_path: Path) -> None:
    exe = compile_c(tmp_path, "client", C_CLIENT)
    out = tmp_path / "c.jsonl"
    with echo_server() as port:
        r = socklab("trace", "run", "--json", str(out), "--", str(exe), "127.0.0.1", str(port))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "got 11 bytes\n"
    err = r.stderr
    assert re.search(rf"client\[\d+\]/main fd=3 connect peer=127\.0\.0\.1:{port} ", err), err
    assert re.search(rf"fd=3 write 11 bytes peer=127\.0\.0\.1:{port} data=\"hello world\"", err), err
    assert re.search(r"fd=3 read 11 bytes \(asked for up to 100\)", err), err
    assert re.search(r"fd=3 shutdown .*SHUT_WR: FIN sent, still reading \[FIN_WAIT1\]", err), err
    assert re.search(r"fd=3 read 0 bytes \(asked for up to 100\) .*\[TIME_WAIT\]\n    note: recv returned 0", err)
    assert re.search(r"fd=3 close ", err)
    import json

    events = [json.loads(x) for x in out.read_text().splitlines()]
    write = next(e for e in events if e["op"] == "write")
    assert write["nbytes"] == 11 and write["peer"] == f"127.0.0.1:{port}" and write["local"].startswith("127.0.0.1:")
    assert write["ts"] > 1e9 and write["source"] == "strace"


def test_reading_on_after_recv_returned_0_gets_the_note(tmp_path: Path) -> None:
    prog = tmp_path / "deaf.py"
    prog.write_text(textwrap.dedent("""
        import socket, sys
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
        s.sendall(b"ping")
        s.shutdown(socket.SHUT_WR)
        data = s.recv(100)
        for _ in range(6):          # the mistake: recv() == 0 means the peer closed, yet it reads on
            data = s.recv(100)
        s.close()
    """))
    with echo_server() as port:
        r = socklab("trace", "run", "--", sys.executable, str(prog), str(port))
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("recv returned 0 again") == 1, r.stderr
    assert "this program kept reading" in r.stderr
    assert re.search(r"close .*after \d+ reads at end of stream", r.stderr), r.stderr


def test_eaddrinuse_gets_its_note_and_the_exit_status_passes_through(tmp_path: Path) -> None:
    holder = socket.create_server(("127.0.0.1", 0))  # someone listens there
    port = holder.getsockname()[1]
    prog = tmp_path / "server.py"
    prog.write_text(textwrap.dedent("""
        import socket, sys
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", int(sys.argv[1])))
        except OSError as e:
            print("bind failed:", e.errno)
            sys.exit(3)
    """))
    try:
        r = socklab("trace", "run", "--", sys.executable, str(prog), str(port))
    finally:
        holder.close()
    assert r.returncode == 3, r.stderr
    assert "bind failed: 98" in r.stdout
    assert re.search(rf"fd=\d+ bind 127\.0\.0\.1:{port} failed: EADDRINUSE", r.stderr), r.stderr
    assert f"note: EADDRINUSE: 127.0.0.1:{port} is in use. SO_REUSEADDR was not set" in r.stderr
    assert f"Now: a socket is bound to port {port} in state LISTEN" in r.stderr


def test_close_wait_at_exit_and_a_long_blocking_accept(tmp_path: Path) -> None:
    prog = tmp_path / "leaky.py"
    prog.write_text(textwrap.dedent("""
        import socket, os
        srv = socket.create_server(("127.0.0.1", 0))
        print(srv.getsockname()[1], flush=True)   # readiness: the port, through trace run's stdout
        conn, _ = srv.accept()
        conn.recv(100)
        conn.recv(100)   # 0: the client closed - and this server never closes conn
        os._exit(0)      # ends like a killed server: no close() at all (Python's exit would close it)
    """))
    with trace_run("--slow", "0", "--", sys.executable, str(prog)) as proc:
        port = int(first_line(proc.stdout, "the traced server did not print its port"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"x")
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert re.search(r"exit peer=127\.0\.0\.1:\d+ process ended with the socket open: the kernel closes it, "
                     r"FIN sent \(the peer had closed\) \[LAST_ACK\]", err), err  # the state after the kernel's close
    assert "was left in CLOSE_WAIT: the peer closed, this program never called close()" in err
    assert re.search(r"accept waited \d+\.\d s for a client \(a blocking socket without a timeout\)", err), err


def test_a_partial_send_whose_rest_is_never_sent(tmp_path: Path) -> None:
    prog = tmp_path / "partial.py"
    prog.write_text(textwrap.dedent("""
        import socket
        srv = socket.create_server(("127.0.0.1", 0))
        c = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
        c.setblocking(False)
        n = c.send(b"A" * 4_000_000)          # the mistake: n < 4,000,000 and the rest is forgotten
        assert n < 4_000_000
        conn.setblocking(False)
        try:
            while conn.recv(1 << 20):          # make room
                pass
        except BlockingIOError:
            pass
        c.setblocking(True)
        c.send(b"next message")
        c.close(); conn.close(); srv.close()
    """))
    r = socklab("trace", "run", "--", sys.executable, str(prog))
    assert r.returncode == 0, r.stderr
    assert re.search(r"sendto \d+ of 4000000 bytes", r.stderr), r.stderr
    assert "send's return value ignored" in r.stderr
    assert re.search(r"so \d+ bytes of that message were never sent", r.stderr)


def test_strace_missing_and_tracing_not_permitted(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = socklab("trace", "run", "--", "/bin/true", env={"PATH": str(empty)})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "socklab: trace run needs strace, which is not installed: apt-get install strace "
        "(scripts/setup.sh installs it)"]
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "strace").write_text("#!/bin/sh\necho 'strace: test_ptrace_get_syscall_info: PTRACE_TRACEME: "
                                 "Operation not permitted' >&2\nexit 1\n")
    (fake / "strace").chmod(0o755)
    r = socklab("trace", "run", "--", "/bin/true", env={"PATH": f"{fake}:/usr/bin:/bin"})
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("socklab: tracing is not permitted here (strace: ")
    assert "SYS_PTRACE" in lines[0] or "ptrace_scope" in lines[0] or "root" in lines[0]


def test_usage_errors(tmp_path: Path) -> None:
    r = socklab("trace", "run", "--", "no-such-program-xyz")
    assert r.returncode == 2 and "no program 'no-such-program-xyz'" in r.stderr
    r = socklab("trace", "run")
    assert r.returncode == 2 and "CMD" in r.stderr


@pytest.mark.parametrize("sig", [15])
def test_a_signal_death_is_the_exit_status(tmp_path: Path, sig: int) -> None:
    prog = tmp_path / "die.py"
    prog.write_text(f"import os\nos.kill(os.getpid(), {sig})\n")
    r = socklab("trace", "run", "--", sys.executable, str(prog))
    assert r.returncode == 128 + sig, r.stderr


def test_the_kernel_says_close_wait_while_the_program_has_not_noticed(tmp_path: Path) -> None:
    prog = tmp_path / "busy.py"
    prog.write_text(textwrap.dedent("""
        import socket, sys
        srv = socket.create_server(("127.0.0.1", 0))
        print(srv.getsockname()[1], flush=True)
        conn, _ = srv.accept()
        conn.recv(100)
        sys.stdin.readline()     # busy elsewhere: it does not read the socket while the client leaves
        conn.close()
    """))
    with trace_run("--", sys.executable, str(prog), stdin=subprocess.PIPE, bufsize=1) as proc:
        assert proc.stdin is not None and proc.stderr is not None
        port = int(first_line(proc.stdout, "the traced server did not print its port"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"x")
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stderr, selectors.EVENT_READ)
            seen: list[str] = []
            while not any("the kernel reports CLOSE_WAIT" in ln for ln in seen):
                assert sel.select(30), f"no CLOSE_WAIT note; trace so far: {seen}"
                line = proc.stderr.readline()
                assert line, f"trace ended without the note: {seen}"
                seen.append(line)
        proc.stdin.write("\n")
        proc.stdin.flush()
        _, rest = proc.communicate(timeout=30)
    assert proc.returncode == 0, rest
    note_line = next(ln for ln in seen if "the kernel reports CLOSE_WAIT" in ln)
    assert re.search(r"fd=\d+ note peer=127\.0\.0\.1:\d+ the kernel reports CLOSE_WAIT", note_line), note_line


def test_a_select_server_shows_what_it_waits_on(tmp_path: Path) -> None:
    prog = tmp_path / "mux.py"
    prog.write_text(textwrap.dedent("""
        import select, selectors, socket
        srv = socket.create_server(("127.0.0.1", 0))
        c = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
        c.sendall(b"x")
        select.select([srv, conn], [], [], 5)
        sel = selectors.DefaultSelector()
        sel.register(conn, selectors.EVENT_READ)
        sel.select(5)
    """))
    r = socklab("trace", "run", "--", sys.executable, str(prog))
    assert r.returncode == 0, r.stderr
    fds = re.search(r"fd=(\d+) accept ", r.stderr)
    srv_fd = re.search(r"fd=(\d+) listen ", r.stderr)
    assert fds and srv_fd, r.stderr
    conn, lst = fds.group(1), srv_fd.group(1)
    assert re.search(rf"fd=- pselect6 waits to read on fds {lst} {conn} \(up to 5 s\) -> ready: fd {conn} readable",
                     r.stderr), r.stderr
    assert f"fd=- epoll_ctl EPOLL_CTL_ADD: watch fd {conn} for EPOLLIN" in r.stderr
    assert f"epoll_wait waits on fds {conn} (up to 5 s) -> ready: fd {conn} EPOLLIN" in r.stderr


def test_explain_and_output_file(tmp_path: Path) -> None:
    prog = tmp_path / "client.py"
    prog.write_text(textwrap.dedent("""
        import socket, sys
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
        s.sendall(b"hello world")
        got = b""
        while len(got) < 11:
            chunk = s.recv(100)
            if not chunk:  # the server closed early: say so, do not spin
                sys.exit(f"the server closed after {len(got)} of 11 bytes")
            got += chunk
        s.close()
    """))
    out = tmp_path / "trace.txt"
    with echo_server() as port:
        r = socklab("trace", "run", "--explain", "-o", str(out), "--", sys.executable, str(prog), str(port))
    assert r.returncode == 0 and r.stderr == "", r.stderr  # the trace went to the file
    text = out.read_text()
    assert text.count("    what: connect() on TCP sends SYN") == 1
    assert re.search(r"summary: \S+\[\d+\]: 1 socket\(s\), 1 connection\(s\), 11 bytes sent, 11 received", text), text
    r = socklab("trace", "run", "--", str(prog))  # a script that is not executable
    assert r.returncode == 2 and "is not executable: run it with its interpreter" in r.stderr


def test_sigterm_to_trace_run_reaches_the_program(tmp_path: Path) -> None:
    prog = tmp_path / "forever.py"
    prog.write_text("import socket\nsrv = socket.create_server(('127.0.0.1', 0))\nprint('ready', flush=True)\n"
                    "srv.accept()\n")
    with trace_run("--", sys.executable, str(prog)) as proc:
        assert first_line(proc.stdout, "the traced server did not say ready") == "ready\n"
        proc.send_signal(signal.SIGTERM)  # to trace run alone, not its group
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert re.search(r"fd=\d+ listen backlog=\d+ \[LISTEN\]", err), err
