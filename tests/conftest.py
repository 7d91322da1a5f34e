"""Fixtures shared by every test: engines, running servers, subprocesses ended by pid.

Every behaviour test that takes the ``engine`` fixture runs once per engine (ids are the engine
names), the way uvicorn and uvloop bind one suite to several implementations.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from socklab.core.settings import ENGINE_NAMES, ServerSettings
from socklab.runtime import Server

CONCURRENT_ENGINES = [e for e in ENGINE_NAMES if e != "iterative"]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(params=ENGINE_NAMES)
def engine(request: pytest.FixtureRequest) -> str:
    """Every engine, one test run each."""
    return str(request.param)


@pytest.fixture(params=CONCURRENT_ENGINES)
def concurrent_engine(request: pytest.FixtureRequest) -> str:
    """Every engine that serves several clients at once."""
    return str(request.param)


def roundtrip(conn: socket.socket, data: bytes) -> bytes:
    """Send ``data`` and read until as many bytes came back (or the peer closed): one echo."""
    conn.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = conn.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll a state that has no event to wait on until it holds; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def is_listening(port: int) -> bool:
    """Whether a TCP socket of this machine listens on ``port`` (the kernel's table, as ``ss -l``)."""
    from socklab.tools.ss import list_sockets

    return any(e.state == "LISTEN" and e.local_port == port
               for e in list_sockets(("tcp", "tcp6"), with_pids=False, port=port))


def blocked_in_poll(native_id: int) -> bool:
    """Whether this process's thread ``native_id`` sleeps in select/poll/epoll_wait (its wchan)."""
    try:
        with open(f"/proc/self/task/{native_id}/wchan", encoding="ascii") as f:
            wchan = f.read()
    except OSError:
        return False
    return "poll" in wchan or "select" in wchan


@contextlib.contextmanager
def running_server(factory: Callable[[], Any], engine: str = "epoll", *, udp: bool = False,
                   tracer: Any = None, **settings: Any) -> Iterator[Server]:
    """A started server on 127.0.0.1 port 0 (unless told otherwise), always shut down."""
    settings.setdefault("host", "127.0.0.1")
    srv = Server(ServerSettings(engine=engine, **settings), tracer=tracer)
    try:
        if udp:
            srv.listen_udp(factory)
        else:
            srv.listen(factory)
        srv.start()
        yield srv
    finally:
        srv.shutdown(timeout=2)


class Proc:
    """A socklab subprocess; ``wait_for(pattern)`` reads stdout until a line matches (readiness).

    ``prefix=["ip", "netns", "exec", NS]`` runs it inside a network namespace (the prefix must exec
    the command, so the pid is still socklab's).
    """

    def __init__(self, args: list[str], **kwargs: Any) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", NO_COLOR="1", COLUMNS="200")
        env.update(kwargs.pop("env", {}))
        self.popen = subprocess.Popen(
            [*kwargs.pop("prefix", []), sys.executable, "-m", "socklab", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=kwargs.pop("stdin", subprocess.DEVNULL), env=env, start_new_session=True,
            bufsize=0, **kwargs)  # unbuffered: select() then sees every byte not yet read
        self.pid = self.popen.pid
        self.lines: list[str] = []

    def wait_for(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.popen.stdout, selectors.EVENT_READ)
        try:
            while time.monotonic() < deadline:
                if not sel.select(max(0.0, deadline - time.monotonic())):
                    break
                line = self.popen.stdout.readline().decode(errors="replace")
                if not line:
                    break
                self.lines.append(line)
                m = rx.search(line)
                if m:
                    return m
        finally:
            sel.close()
        err = self.popen.stderr.read().decode(errors="replace") if self.popen.poll() is not None and \
            self.popen.stderr else ""
        raise AssertionError(f"no line matching {pattern!r}; stdout: {self.lines!r} stderr: {err[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode


@pytest.fixture
def spawn() -> Iterator[Callable[..., Proc]]:
    """Start socklab subprocesses; every one is ended (by its pid's process group) after the test."""
    procs: list[Proc] = []

    def start(*args: str, **kwargs: Any) -> Proc:
        p = Proc(list(args), **kwargs)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop(signal.SIGKILL)
        for stream in (p.popen.stdout, p.popen.stderr, p.popen.stdin):
            if stream:
                stream.close()


def make_tls_files(directory: Path, *names: str) -> dict[str, str]:
    """A throwaway CA and a server certificate for ``names`` (trustme), written into ``directory``:
    the paths of ``ca`` (the CA's certificate), ``cert`` (key and chain) and ``key``."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert(*names)
    paths = {"ca": str(directory / "ca.pem"), "cert": str(directory / "cert.pem"), "key": str(directory / "key.pem")}
    ca.cert_pem.write_to_path(paths["ca"])
    cert.private_key_and_cert_chain_pem.write_to_path(paths["cert"])
    cert.private_key_pem.write_to_path(paths["key"])
    return paths


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1, ::1 and localhost (trustme)."""
    return make_tls_files(tmp_path_factory.mktemp("tls"), "localhost", "127.0.0.1", "::1")


@contextlib.contextmanager
def silent_listener(host: str = "127.0.0.1", case: str = "the connect-timeout case") -> Iterator[tuple[str, int]]:
    """A listener on ``host`` that never accepts, its listen(0) accept queue filled: later SYNs are
    dropped, so a connect to the (host, port) it yields can only time out. Fails the test, naming
    ``case``, when the backlog never fills."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family)
    fillers: list[socket.socket] = []
    try:
        listener.bind((host, 0))
        listener.listen(0)
        for _ in range(16):
            s = socket.socket(family)
            s.settimeout(0.3)
            fillers.append(s)
            try:
                s.connect(listener.getsockname())
            except TimeoutError:
                break
        else:
            pytest.fail(f"the backlog never filled: {case} cannot be set up")
        yield listener.getsockname()[:2]
    finally:
        for s in fillers:
            s.close()
        listener.close()
