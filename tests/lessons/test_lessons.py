"""The lessons: every program runs and does its job; every planted exercise mistake fails its check,
with its own explanation; the lessons stay small, documented and shipped in the package."""

from __future__ import annotations

import importlib.resources
import re
import socket
from pathlib import Path

import pytest

from socklab.core.sockets import Endpoint
from socklab.tools.check.chat import chat_probes
from socklab.tools.check.echo import tcp_probes, udp_probes
from socklab.tools.check.http import http_probes
from socklab.tools.check.report import Probe, run_probes
from socklab.tools.learn.catalog import LESSONS, Lesson, Mistake
from socklab.tools.learn.cli import plant, source_of

from .conftest import run_program

LESSON_FILES = sorted(p for p in importlib.resources.files("socklab.lessons").iterdir()  # type: ignore[union-attr]
                      if p.name.endswith(".py") and p.name != "__init__.py")


def probes_for(lesson: Lesson, address: str, root: Path | None, timeout: float) -> list[Probe]:
    host, port = address.rsplit(":", 1)
    ep = Endpoint(host, int(port))
    assert lesson.check is not None
    kind = lesson.check.split()[0]
    if kind == "http":
        return http_probes(ep, root, None, timeout)
    if kind == "chat":
        return chat_probes(ep, timeout)
    if "--udp" in lesson.check:
        return udp_probes(ep, timeout)
    probes = tcp_probes(ep, timeout)
    if "--iterative" in lesson.check:
        probes = [p for p in probes if p.name not in ("second_client", "idle_client", "concurrent_50")]
    return probes


def start(serve, lesson: Lesson, program: str | Path, tmp_path: Path):
    args = []
    if lesson.name == "web":
        root = tmp_path / "www"
        root.mkdir()
        (root / "index.html").write_text("<h1>hi</h1>\n")
        args = [str(root)]
    return serve(program, *args), (tmp_path / "www" if args else None)


GRADED = [x for x in LESSONS if x.check]
PLANTED = [(x, m) for x in LESSONS for m in x.mistakes]


@pytest.mark.parametrize("lesson", GRADED, ids=[x.name for x in GRADED])
def test_lesson_server_passes_its_check(serve, lesson, tmp_path):
    s, root = start(serve, lesson, lesson.programs[0], tmp_path)
    results = run_probes(probes_for(lesson, s.address, root, 5.0))
    assert [r for r in results if not r.passed] == []


@pytest.mark.parametrize("lesson, mistake", PLANTED, ids=[f"{x.name}-{m.name}" for x, m in PLANTED])
def test_planted_mistake_fails_with_its_own_explanation(serve, lesson: Lesson, mistake: Mistake, tmp_path):
    program = tmp_path / f"{lesson.programs[0]}.py"
    program.write_text(plant(lesson, mistake))
    assert program.read_text() != source_of(lesson.programs[0]).read_text()
    s, root = start(serve, lesson, program, tmp_path)
    probes = [p for p in probes_for(lesson, s.address, root, 3.0) if p.name == mistake.probe]
    (result,) = run_probes(probes)
    assert not result.passed
    assert mistake.explains in result.mistake + " " + result.happened


def test_each_planted_mistake_has_its_own_explanation():
    for lesson in LESSONS:
        assert len({m.explains for m in lesson.mistakes}) == len(lesson.mistakes)


@pytest.mark.parametrize("path", LESSON_FILES, ids=[p.name for p in LESSON_FILES])
def test_lesson_file_is_small_and_says_what_socklab_adds(path):
    text = path.read_text()
    assert len(text.splitlines()) <= 115
    assert text.startswith('"""Lesson ')
    assert "At full strength: `socklab " in text
    imports = set(re.findall(r"^(?:import|from) (\w+)", text, re.M))
    assert imports <= {"socket", "sys", "threading", "select", "selectors", "re", "json", "time", "struct",
                       "pathlib", "urllib", "typing", "collections"}, imports  # plain Python, no socklab


def test_every_catalog_program_exists():
    for lesson in LESSONS:
        for module in lesson.programs:
            assert source_of(module).is_file()


def test_tcp_echo_client_sees_eof_after_shutdown(serve):
    s = serve("tcp_echo_server")
    done = run_program("socklab.lessons.tcp_echo_client", s.host, str(s.port), "hello", "two words")
    assert done.returncode == 0, done.stderr
    assert "sent 'hello', got back 'hello\\n'" in done.stdout
    assert "server closed too" in done.stdout


def test_tcp_echo_client_says_refused_in_one_line():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = run_program("socklab.lessons.tcp_echo_client", "127.0.0.1", str(port), "x")
    assert done.returncode == 1 and "connection refused" in done.stderr and "Traceback" not in done.stderr


def test_udp_pinger_counts_replies_and_timeouts(serve):
    s = serve("udp_echo_server")
    done = run_program("socklab.lessons.udp_pinger", s.host, str(s.port), "3")
    assert "3 sent, 3 received, 0% lost" in done.stdout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = run_program("socklab.lessons.udp_pinger", "127.0.0.1", str(port), "2")
    assert "2 sent, 0 received, 100% lost" in done.stdout


def test_lifecycle_walks_every_step():
    done = run_program("socklab.lessons.lifecycle")
    assert done.returncode == 0, done.stderr
    for step in ("socket()", "bind()", "listen()", "connect()", "accept()", "send()", "recv(): b''",
                 "shutdown(SHUT_WR)", "close()"):
        assert step in done.stdout


def test_errors_lesson_provokes_each_error():
    done = run_program("socklab.lessons.errors_timeouts")
    assert done.returncode == 0, done.stderr
    for name in ("ConnectionRefusedError", "TimeoutError", "ConnectionResetError", "Address already in use",
                 "Bad file descriptor"):
        assert name in done.stdout
    assert "BrokenPipeError" in done.stdout or "4. send on that dead connection -> ConnectionResetError" in done.stdout


def test_file_transfer_is_byte_exact_and_confined(serve, tmp_path):
    shared, dest = tmp_path / "shared", tmp_path / "dest"
    shared.mkdir()
    dest.mkdir()
    (tmp_path / "secret.txt").write_text("outside")
    data = bytes(range(256)) * 4000
    (shared / "big.bin").write_bytes(data)
    s = serve("file_server", str(shared))
    done = run_program("socklab.lessons.file_client", s.host, str(s.port), "big.bin", str(dest))
    assert done.returncode == 0, done.stderr
    assert (dest / "big.bin").read_bytes() == data and not (dest / "big.bin.part").exists()
    done = run_program("socklab.lessons.file_client", s.host, str(s.port), "../secret.txt", str(dest))
    assert done.returncode == 1 and "no such file" in done.stderr
    assert not (dest / "secret.txt").exists()


def test_rpc_calls_and_errors(serve):
    s = serve("rpc_server")
    done = run_program("socklab.lessons.rpc_client", s.host, str(s.port), "add", "2", "3")
    assert done.stdout.strip() == "5"
    done = run_program("socklab.lessons.rpc_client", s.host, str(s.port), "sub", "2", "3")
    assert done.returncode == 1 and "KeyError" in done.stderr
    with socket.create_connection((s.host, s.port), timeout=10) as sock:  # two requests, one segment
        sock.sendall(b'{"id": 1, "method": "upper", "params": ["a"]}\n{"id": 2, "method": "add", "params": [1, 1]}\n')
        replies = b""
        while replies.count(b"\n") < 2:
            chunk = sock.recv(4096)
            assert chunk
            replies += chunk
    assert replies.splitlines() == [b'{"id": 1, "result": "A"}', b'{"id": 2, "result": 2}']


def test_chat_client_talks_to_the_chat_server(serve):
    s = serve("chat_server")
    done = run_program("socklab.lessons.chat_client", s.host, str(s.port), "ann", stdin=b"hello all\n")
    assert "MSG #lobby ann :hello all" in done.stdout
    assert "BYE" in done.stdout and "server closed the connection" in done.stdout


def test_two_peers_exchange_lines(serve):
    a = serve("peer")
    b = serve("peer", a.address)
    a.wait_for(re.compile("linked with"))
    assert a.popen.stdin is not None
    a.popen.stdin.write(b"hello from A\n")
    a.popen.stdin.flush()
    b.wait_for(re.compile(r"\] hello from A"))


def test_lessons_grader_and_learn_are_packages_the_wheel_ships():
    import setuptools

    src = Path(__file__).resolve().parents[2] / "src"
    packages = setuptools.find_packages(str(src))  # what [tool.setuptools.packages.find] ships
    assert {"socklab.lessons", "socklab.tools.check", "socklab.tools.learn"} <= set(packages)


@pytest.mark.parametrize("client, reply", [
    (["socklab.lessons.rpc_client", "{host}", "{port}", "add", "1", "2"], b'{"id": 1, "result": "\\u001b]0;owned\\u0007"}\n'),
    (["socklab.lessons.rpc_client", "{host}", "{port}", "add", "1", "2"], b'{"id": 1, "error": "\\u001b[2J"}\n'),
    (["socklab.lessons.file_client", "{host}", "{port}", "x", "."], b"ERR \x1b[2J\x1b]0;owned\x07\n"),
], ids=["rpc-result", "rpc-error", "file-refusal"])
def test_lesson_clients_never_print_server_text_raw(client, reply):
    """A hostile server's escape sequences reach the terminal escaped, never as ESC bytes."""
    import threading

    with socket.create_server(("127.0.0.1", 0)) as listener:
        host, port = listener.getsockname()

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(reply)

        t = threading.Thread(target=answer, daemon=True)
        t.start()
        args = [a.format(host=host, port=port) for a in client]
        done = run_program(*args)
        t.join(10)
    assert "\x1b" not in done.stdout + done.stderr and "\x07" not in done.stdout + done.stderr
    assert "owned" in done.stdout + done.stderr or "[2J" in done.stdout + done.stderr  # shown, escaped
