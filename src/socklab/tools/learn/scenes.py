"""The scenes of ``socklab learn``: a question, something run for real, and why it happened.

Why this exists: a learner remembers what they predicted wrong. Each scene asks first (what will
``recv`` return after the client closes? what does a second client see?), then runs the lesson's
programs or a few lines of socket code against the lesson's server, shows what came out - the
programs' output and, when tracing works, their socket calls - and then explains.

It keeps raw sockets on purpose (issue 18: clients use :mod:`socklab.runtime.client`): each scene
shows one system call and what the kernel answers, so it makes that call itself.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from socklab.protocols.text import escape_peer_text
from socklab.tools.learn.runner import LessonRun, Program

__all__ = ["SCENES", "Scene", "Stage", "show_program"]

TRACE_LINES = 30


@dataclass
class Stage:
    """What a scene works with: the run (to start programs), the server's address, a printer."""

    run: LessonRun
    say: Callable[[str], None]
    host: str = "127.0.0.1"
    port: int = 0
    server: Program | None = None
    workdir: Path = field(default_factory=Path)

    def lesson_program(self, module: str, *args: str, title: str = "") -> Program:
        """Run a lesson client to completion and show what it printed (and its trace)."""
        prog = self.run.start("socklab.lessons." + module, list(args))
        prog.finish(30)
        show_program(prog, self.say, title or f"python -m socklab.lessons.{module} {' '.join(args)}")
        return prog


def show_program(prog: Program, say: Callable[[str], None], title: str) -> None:
    say(f"  $ {title}")
    for line in prog.lines:
        say("  | " + escape_peer_text(line))
    trace = prog.trace_lines()
    if trace:
        say(f"  its socket calls (socklab trace run), {len(trace)} lines:")
        for line in trace[:TRACE_LINES]:
            say("  trace> " + line)
        if len(trace) > TRACE_LINES:
            say(f"  trace> ... {len(trace) - TRACE_LINES} more")


@dataclass(frozen=True)
class Scene:
    question: str
    run: Callable[[Stage], None]
    answer: str


def _connect(stage: Stage) -> socket.socket:
    s = socket.create_connection((stage.host, stage.port), timeout=10)
    return s


def _answer_within(s: socket.socket, seconds: float) -> bytes | None:
    s.settimeout(seconds)
    try:
        return s.recv(4096)
    except TimeoutError:
        return None


def two_clients(stage: Stage) -> None:
    """A first client stays connected; does a second one get an answer?"""
    with _connect(stage) as first:
        first.sendall(b"first\n")
        stage.say(f"  first client: sent 'first', got back {_answer_within(first, 10)!r}; it stays connected")
        with _connect(stage) as second:
            stage.say("  second client: connect() returned - the kernel completed the handshake")
            second.sendall(b"second\n")
            t0 = time.monotonic()
            got = _answer_within(second, 2)
            if got is not None:
                stage.say(f"  second client: got back {got!r} after {time.monotonic() - t0:.3f} s")
                return
            stage.say("  second client: sent 'second' ... no answer after 2 s")
            first.close()
            stage.say("  first client: closed")
            got = _answer_within(second, 10)
            stage.say(f"  second client: got back {got!r} {time.monotonic() - t0:.1f} s after sending")


def tcp_client(stage: Stage) -> None:
    stage.lesson_program("tcp_echo_client", stage.host, str(stage.port), "hello")


def pinger(stage: Stage) -> None:
    stage.lesson_program("udp_pinger", stage.host, str(stage.port), "3")


def pinger_nobody(stage: Stage) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # a port that is ours, so nobody else answers there
    stage.lesson_program("udp_pinger", "127.0.0.1", str(port), "2")


def lifecycle(stage: Stage) -> None:
    stage.lesson_program("lifecycle")


def errors(stage: Stage) -> None:
    stage.lesson_program("errors_timeouts")


def slow_reader(stage: Stage) -> None:
    payload = bytes(16 << 20)
    with _connect(stage) as s:
        s.setblocking(False)
        sent = 0
        try:
            while sent < len(payload):
                sent += s.send(payload[sent:sent + 65536])
        except BlockingIOError:
            pass
        stage.say(f"  client: sent {sent:,} bytes without reading, then send() raised BlockingIOError "
                  "(every buffer on the way is full)")
        got = 0
        s.setblocking(True)
        s.settimeout(10)
        while got < sent:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
        stage.say(f"  client: now reading - {got:,} of {sent:,} bytes came back; the server was never stuck")
    with _connect(stage) as other:
        other.sendall(b"ping\n")
        stage.say(f"  another client meanwhile: {_answer_within(other, 10)!r}")


def _chat_lines(s: socket.socket, wait: float = 1.0) -> list[str]:
    s.settimeout(wait)
    data = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pass
    return [escape_peer_text(x) for x in data.decode("utf-8", "replace").splitlines()]


def chat_room(stage: Stage) -> None:
    with _connect(stage) as ann, _connect(stage) as bob:
        for s, nick in ((ann, "ann"), (bob, "bob")):
            s.sendall(f"/nick {nick}\n/join #lobby\n".encode())
            _chat_lines(s, 1.0)
        _chat_lines(ann, 0.5)  # bob's JOIN line, sent to ann too
        ann.sendall(b"hi bob\n")
        stage.say(f"  ann typed 'hi bob'. ann received: {_chat_lines(ann)}")
        stage.say(f"  bob received: {_chat_lines(bob)}")
        ann.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ann.sendall(b"hel")
        stage.say(f"  ann sent 'hel' (no newline yet). bob received: {_chat_lines(bob)}")
        ann.sendall(b"lo\n")
        stage.say(f"  ann sent 'lo\\n'. bob received: {_chat_lines(bob)}")


def web_get(stage: Stage) -> None:
    for target in ("/", "/../../../../etc/passwd"):
        with _connect(stage) as s:
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: {stage.host}:{stage.port}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            s.settimeout(10)
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        stage.say(f"  GET {target} ->")
        for line in head.decode("latin-1").split("\r\n"):
            stage.say("  | " + escape_peer_text(line))
        stage.say(f"  | (blank line, then {len(body)} bytes of body)")


def file_fetch(stage: Stage) -> None:
    dest = stage.workdir / "downloads"
    dest.mkdir(exist_ok=True)
    stage.lesson_program("file_client", stage.host, str(stage.port), "notes.txt", str(dest))
    stage.lesson_program("file_client", stage.host, str(stage.port), "../secret.txt", str(dest))


def rpc_calls(stage: Stage) -> None:
    stage.lesson_program("rpc_client", stage.host, str(stage.port), "add", "2", "3")
    stage.lesson_program("rpc_client", stage.host, str(stage.port), "sub", "5", "3")


def peers(stage: Stage) -> None:
    assert stage.server is not None
    b = stage.run.start("socklab.lessons.peer", ["0", f"{stage.host}:{stage.port}"], stdin=True)
    linked = stage.server.wait_for("linked with")
    stage.say(f"  node A printed: {linked.group(0) if linked else '(nothing in 20 s)'} - B dialled it")
    stage.server.send_line("hello from A")
    got = b.wait_for(r"\] hello from A")
    stage.say(f"  A typed 'hello from A'; node B printed: {got.string if got else '(nothing in 20 s)'}")
    b.stop()
    left = stage.server.wait_for("left")
    stage.say(f"  B stopped; node A printed: {left.string if left else '(nothing)'}")


def close_wait(stage: Stage) -> None:
    """A server that never closes: the client sees no EOF; ss shows the server's socket in CLOSE_WAIT."""
    import os
    import subprocess
    import sys

    from socklab.tools.learn.catalog import NO_CLOSE, find_lesson
    from socklab.tools.learn.cli import plant

    lesson = find_lesson("tcp-echo")
    assert lesson is not None
    patient = stage.workdir / "patient.py"
    patient.write_text(plant(lesson, NO_CLOSE), encoding="utf-8")
    prog, host, port = stage.run.start_server(str(patient), [])
    stage.say(f"  started a copy of tcp_echo_server with a bug, listening on {host}:{port}")
    with socket.create_connection((host, port), timeout=10) as client:
        client.sendall(b"hello\n")
        client.shutdown(socket.SHUT_WR)
        stage.say(f"  client: sent 'hello', shutdown(SHUT_WR); got back {_answer_within(client, 10)!r}")
        end = _answer_within(client, 2)
        stage.say("  client: no EOF after 2 s - the server never closed" if end is None else
                  f"  client: then {end!r}")
        ss = subprocess.run([sys.executable, "-m", "socklab", "ss", "-t", "--port", str(port), "--explain"],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
        stage.say(f"  $ socklab ss -t --port {port} --explain")
        for line in ss.stdout.splitlines()[:20]:
            stage.say("  | " + line)
    prog.stop()
    show_program(prog, stage.say, "python patient.py (stopped)")


SCENES: dict[str, Scene] = {
    "tcp-client": Scene(
        "The client sends 'hello', reads the echo, then calls shutdown(SHUT_WR). What does the server's "
        "next recv() return?", tcp_client,
        "b'' - an empty bytes object. That is how EOF looks: the client sent FIN. recv() never returns "
        "b'' otherwise, so the server's loop ends there and it closes; the client's recv() then returns "
        "b'' too ('server closed too')."),
    "iterative": Scene(
        "A first client stays connected. A second client connects and sends 'second'. What does it see?",
        two_clients,
        "connect() succeeds at once - the kernel completes the handshake and queues the connection - "
        "but nothing answers until the first client leaves: this server is iterative, it returns to "
        "accept() only between clients. The lessons threaded, select and selectors fix that."),
    "concurrent": Scene(
        "A first client stays connected. A second client connects and sends 'second'. What does it see now?",
        two_clients,
        "Its echo comes back at once: the server no longer waits inside one client's recv() loop."),
    "slow-reader": Scene(
        "A client sends without reading anything, until its send() would block. Does the server get "
        "stuck, or lose bytes?", slow_reader,
        "Neither: its sockets are non-blocking, so a send() that cannot take everything takes a part "
        "(or raises BlockingIOError); the rest waits in that client's buffer until the socket is "
        "writable, and the loop keeps serving everybody else."),
    "pinger": Scene("The pinger sends 3 datagrams. How many replies come back, and from where?", pinger,
                    "3, each from the server's address - recvfrom() says who sent each datagram, and sendto() "
                    "answers that address. On loopback nothing is lost; on a real network some would be."),
    "pinger-nobody": Scene(
        "Now the pinger sends to a port where nothing listens. Does sendto() fail?", pinger_nobody,
        "No: UDP has no connection, so sendto() succeeds whether or not anyone listens. The answer never "
        "comes, and only the timeout tells (without settimeout() recvfrom() would wait forever). On Linux "
        "the ICMP 'port unreachable' may surface as ConnectionRefusedError on a later call."),
    "lifecycle": Scene("The client calls connect() before the server calls accept(). Does connect() succeed?",
                       lifecycle,
                       "Yes: the kernel does the handshake for a listening socket and queues the connection; "
                       "accept() just takes the next one from the queue."),
    "errors": Scene("What does recv() raise when the peer resets the connection? And connect() to a port "
                    "nobody listens on?", errors,
                    "ConnectionResetError and ConnectionRefusedError (both OSError). A timeout is TimeoutError. "
                    "A server catches them per client and keeps serving the others."),
    "chat": Scene("ann and bob join #lobby. ann says 'hi bob'. Who receives the line, and how often? And "
                  "when ann's line arrives in two pieces?", chat_room,
                  "Both receive it once (ann's copy confirms delivery). The server handles only complete "
                  "lines: 'hel' waits in ann's buffer until 'lo\\n' completes it."),
    "web": Scene("How does a browser know where the page ends, without the server closing? And what does "
                 "GET /../../../../etc/passwd return?", web_get,
                 "Content-Length says how many bytes of body follow the blank line, so the connection can "
                 "carry the next request. The path is resolved and must stay inside the served directory: 404."),
    "file": Scene("The server sends 'OK SIZE' before the bytes. What does the client do with SIZE? And "
                  "what happens when it asks for ../secret.txt?", file_fetch,
                  "It reads exactly SIZE bytes: fewer followed by EOF means the transfer broke, not that the "
                  "file is shorter. ../secret.txt resolves outside the shared directory and is refused."),
    "rpc": Scene("The client calls add(2, 3). What travels on the wire? And for a method that does not exist?",
                 rpc_calls,
                 "One JSON object per line each way; the reply carries the request's id. An unknown method is an "
                 "error reply, not a dead connection."),
    "close-wait": Scene(
        "A client sends 'hello' and shuts down its side; the server echoes it. What state is the server's "
        "socket in afterwards, and which tool shows it?", close_wait,
        "CLOSE_WAIT: the client's FIN arrived (recv() returned b'') but the program never called close(), "
        "so the client never sees EOF and the socket stays until the process ends. `socklab ss --explain` "
        "finds it by state; `socklab trace run` shows recv returning 0 with no close after it. The fix is "
        "one line: close() the connection when recv() returns b''."),
    "peers": Scene("Node B dials node A. When A types a line, who prints it?", peers,
                   "B: once linked, both ends are the same - a socket each, and a reader thread each."),
}
