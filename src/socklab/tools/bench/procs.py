"""Start the servers under test, pin them to a core, and read their CPU time and memory.

Why this exists: a fair comparison runs every server the same way - its own process, started
with port 0, ready when it prints its ``listening on tcp://HOST:PORT`` line (never a sleep),
pinned to the server core, watched through ``/proc/PID/stat`` (CPU ticks of all its threads)
and ``/proc/PID/status`` (resident memory), and stopped by its pid.

Which server is which (:func:`server_specs`):

- ``socklab``: ``python -m socklab echo serve --engine E`` (the real CLI);
- ``reference``: a plain server written directly on the engine's mechanism
  (``socklab/tools/bench/reference/*.py``), the bar each engine must reach;
- ``c``: the single-threaded C epoll server (:mod:`socklab.tools.bench.build`);
- ``target``: any HOST:PORT the user names (no process to watch).
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from socklab.core.errors import SocklabError

__all__ = ["READY_RE", "REFERENCE_FOR", "SERVERS_DIR", "ServerProcess", "ServerSpec", "pick_cores", "process_cpu", "process_cpu_times",
           "reference_dir", "server_specs"]

READY_RE = re.compile(r"listening on (?:tcp|udp|tls)://\[?(?P<host>[^\s\]]+)\]?:(?P<port>\d+)")

#: engine -> the plain server written directly on the same mechanism
REFERENCE_FOR = {
    "asyncio": "asyncio_protocol",
    "uvloop": "uvloop_protocol",
    "select": "selectors_loop",
    "poll": "selectors_loop",
    "epoll": "selectors_loop",
    "threads": "threading_tcpserver",
    "pool": "threading_tcpserver",
    "iterative": "threading_tcpserver",
}

#: over UDP (``bench echo --udp``): the plain server on the same mechanism. One socket needs no
#: multiplexing, so the readiness-loop engines are held to the blocking loop (the faster); the
#: ``selectors`` loop (udp_selectors) is measured beside them as a second bar.
UDP_REFERENCE_FOR = {
    "asyncio": "udp_asyncio_protocol",
    "uvloop": "udp_uvloop_protocol",
    **{e: "udp_blocking" for e in ("select", "poll", "epoll", "threads", "pool", "iterative")},
}
UDP_REFERENCE_ARGS = {"udp_uvloop_protocol": ("udp_asyncio_protocol.py", "--uvloop")}

#: the plain reference servers, shipped with the package (scripts run by path, see :func:`reference_dir`)
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
#: the other servers benchmarks start (WebSocket echo servers, aiohttp's static files), shipped alike
SERVERS_DIR = Path(__file__).resolve().parent / "servers"

MISSING_REFERENCES = ("the reference servers are missing (is SOCKLAB_BENCH_REFERENCE_DIR set to a directory "
                      "without them?); pass --no-reference to measure without them")

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server under test.

    Attributes:
        name: the row label (``"epoll"``, ``"ref:selectors_loop"``, ``"C epoll"``, ``"HOST:PORT"``).
        kind: ``"socklab"``, ``"reference"``, ``"c"`` or ``"target"``.
        command: the argv to start it (empty for a target).
        engine: the socklab engine, for ``kind == "socklab"``.
        address: ``(host, port)`` for a target.
        reference: the row name of this engine's reference, when it is not ``REFERENCE_FOR``'s
            (UDP and TLS runs).
    """

    name: str
    kind: str
    command: tuple[str, ...] = ()
    engine: str | None = None
    address: tuple[str, int] | None = None
    reference: str | None = None


def process_cpu_times(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of every thread of process ``pid`` so far, or None once it is gone.

    Read from ``/proc/PID/stat``, whose process line already sums all its threads.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": field 3 is fields[0]
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime (fields 14, 15)


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0.0 once it is gone)."""
    times = process_cpu_times(pid)
    return 0.0 if times is None else times[0] + times[1]


def reference_dir() -> Path | None:
    """The reference servers: ``$SOCKLAB_BENCH_REFERENCE_DIR`` if set, else the ones shipped in the package.

    Each is a plain script run by its path (``python DIR/selectors_loop.py --port 0``), so it
    imports nothing of socklab and its memory and start-up are its own.
    """
    env = os.environ.get("SOCKLAB_BENCH_REFERENCE_DIR")
    d = Path(env) if env else REFERENCE_DIR
    return d if d.is_dir() else None


def socklab_command(engine: str, max_connections: int | None = None,
                    pool_workers: int | None = None, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The argv of socklab's own echo server on ``engine`` (127.0.0.1, port 0).

    Args:
        max_connections: raise the server's connection cap (the sweep).
        pool_workers: ``--workers`` for the pool engine, which serves at most that many
            connections at once: a run with more long-lived connections than workers would leave
            the excess waiting in the queue for the whole run.
    """
    import importlib.util

    if importlib.util.find_spec("socklab.apps.echo.cli") is not None:
        cmd = [sys.executable, "-m", "socklab", "echo", "serve", "--engine", engine, "--host", "127.0.0.1",
               "--port", "0"]
    else:  # until `socklab echo serve` exists: the same server, started by a stand-in
        cmd = [sys.executable, "-m", "socklab.tools.bench.standin", "--engine", engine, "--port", "0"]
    if max_connections is not None:
        cmd += ["--max-connections", str(max_connections)]
    if engine == "pool" and pool_workers is not None:
        cmd += ["--workers", str(pool_workers)]
    return (*cmd, *extra)


def server_specs(engines: list[str], *, references: bool, with_c: bool, targets: list[tuple[str, int]],
                 max_connections: int | None = None, pool_workers: int | None = None) -> list[ServerSpec]:
    """Every server one run measures, in table order: C, then per engine its reference and itself.

    ``max_connections`` and ``pool_workers`` go to socklab's servers (:func:`socklab_command`).

    Raises:
        SocklabError: references were asked for but their directory is missing.
    """
    from socklab.tools.bench.build import binary

    specs: list[ServerSpec] = []
    if with_c:
        specs.append(ServerSpec("C epoll", "c", (str(binary("echo_server")), "--port", "0")))
    ref_dir = reference_dir() if references else None
    if references and ref_dir is None:
        raise SocklabError(MISSING_REFERENCES)
    seen_refs: set[str] = set()
    for engine in engines:
        ref = REFERENCE_FOR.get(engine)
        if ref_dir is not None and ref is not None and ref not in seen_refs:
            seen_refs.add(ref)
            specs.append(ServerSpec(f"ref:{ref}", "reference",
                                    (sys.executable, str(ref_dir / f"{ref}.py"), "--port", "0")))
        specs.append(ServerSpec(engine, "socklab", socklab_command(engine, max_connections, pool_workers),
                                engine=engine))
    for host, port in targets:
        specs.append(ServerSpec(f"{host}:{port}", "target", address=(host, port)))
    return specs


def udp_server_specs(engines: list[str], *, references: bool, with_c: bool) -> list[ServerSpec]:
    """The servers of ``bench echo --udp``: C loop, then per engine its reference and itself (``--udp``).

    The ``selectors`` loop (udp_selectors) comes too when a readiness-loop engine is measured: it
    has no engine to take turns with, so it runs on its own.

    Raises:
        SocklabError: references were asked for but their directory is missing.
    """
    from socklab.tools.bench.build import binary

    specs: list[ServerSpec] = []
    if with_c:
        specs.append(ServerSpec("C udp loop", "c", (str(binary("udp_echo_server")), "--port", "0")))
    ref_dir = reference_dir() if references else None
    if references and ref_dir is None:
        raise SocklabError(MISSING_REFERENCES)

    def ref_spec(ref: str) -> ServerSpec:
        assert ref_dir is not None
        script, *args = UDP_REFERENCE_ARGS.get(ref, (f"{ref}.py",))
        return ServerSpec(f"ref:{ref}", "reference", (sys.executable, str(ref_dir / script), *args, "--port", "0"))

    seen: set[str] = set()
    for engine in engines:
        ref = UDP_REFERENCE_FOR.get(engine)
        if ref_dir is not None and ref is not None and ref not in seen:
            seen.add(ref)
            specs.append(ref_spec(ref))
        specs.append(ServerSpec(engine, "socklab", socklab_command(engine, extra=("--udp",)), engine=engine,
                                reference=f"ref:{ref}" if ref_dir is not None and ref else None))
    if ref_dir is not None and {"select", "poll", "epoll"} & set(engines):
        specs.append(ref_spec("udp_selectors"))
    return specs


def pick_cores() -> tuple[set[int] | None, int | None, str]:
    """The server's core set, the load generator's core, and a sentence saying what was chosen."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None, (f"only {len(allowed)} core available: server and load generator share it, "
                            "so the figures measure both together (no pinning)")
    return {allowed[0]}, allowed[1], f"server pinned to core {allowed[0]}, load generator to core {allowed[1]}"


@dataclass
class ServerProcess:
    """A running server under test, started from a :class:`ServerSpec` and ended by its pid.

    Use :meth:`start` (returns once the readiness line was printed) and :meth:`stop`; or ``with``.
    """

    spec: ServerSpec
    cores: set[int] | None = None
    popen: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    port: int = 0
    output: deque[str] = field(default_factory=lambda: deque(maxlen=50))
    _stderr: IO[bytes] | None = None
    _drainer: threading.Thread | None = None

    def start(self, timeout: float = 20.0) -> ServerProcess:
        """Start the server and wait for its readiness line; pin it to :attr:`cores`.

        Raises:
            SocklabError: it exited or printed no readiness line within ``timeout`` (its output is shown).
        """
        if self.spec.kind == "target":
            assert self.spec.address is not None
            self.host, self.port = self.spec.address
            return self
        env = dict(os.environ, PYTHONUNBUFFERED="1", NO_COLOR="1")
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server; closed in stop()
        self.popen = subprocess.Popen(list(self.spec.command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=self._stderr, env=env, start_new_session=True)
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.popen.stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self._fail(f"printed no readiness line within {timeout:g} s")
                line = self.popen.stdout.readline().decode(errors="replace")
                if not line:
                    self._fail("exited before it was ready")
                self.output.append(line.rstrip())
                m = READY_RE.search(line)
                if m:
                    self.host, self.port = m["host"], int(m["port"])
                    break
        # keep reading stdout so a chatty server never blocks on a full pipe
        self._drainer = threading.Thread(target=self._drain, args=(self.popen.stdout,), daemon=True)
        self._drainer.start()
        if self.cores:
            self.pin(self.cores)
        return self

    def _drain(self, stream: IO[bytes]) -> None:
        with contextlib.suppress(OSError, ValueError):
            for raw in stream:
                self.output.append(raw.decode(errors="replace").rstrip())

    def _fail(self, why: str) -> None:
        err = self.stderr_text()
        self.stop()
        out = "\n".join(self.output)
        raise SocklabError(f"server {self.spec.name} ({' '.join(self.spec.command)}) {why}\n"
                           f"stdout: {out[-1500:]}\nstderr: {err[-1500:]}")

    def stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0)
            return self._stderr.read().decode(errors="replace")
        return ""

    def last_error(self) -> str:
        """The most telling line of the server's stderr (the exception line of a traceback, if any)."""
        lines = [ln.strip() for ln in self.stderr_text().splitlines() if ln.strip()]
        exc = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b", ln)]
        return (exc or lines or ["no output"])[-1]

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def pin(self, cores: set[int]) -> None:
        """Pin every thread of the server to ``cores`` (threads it creates later inherit it)."""
        if self.pid is None:
            return
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.sched_setaffinity(int(task.name), cores)

    def cpu_times(self) -> tuple[float, float] | None:
        """(user, system) CPU seconds of all the server's threads so far (``/proc/PID/stat``).

        The split shows where a request's time goes: the interpreter runs in user time, the
        kernel's TCP work (the same for every server on the same load) in system time.
        """
        return None if self.pid is None else process_cpu_times(self.pid)

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of all the server's threads so far."""
        times = self.cpu_times()
        return None if times is None else times[0] + times[1]

    def rss_bytes(self) -> int | None:
        """Resident memory now (``/proc/PID/statm``, second field, in pages)."""
        if self.pid is None:
            return None
        try:
            return int(Path(f"/proc/{self.pid}/statm").read_text().split()[1]) * PAGE
        except OSError:
            return None

    def alive(self) -> bool:
        return self.popen is None or self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM its process group, then SIGKILL after ``timeout``; close the pipes."""
        p = self.popen
        if p is not None:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)
            if self._drainer is not None:
                self._drainer.join(2.0)  # the pipe reached EOF when the process group ended
            if p.stdout is not None:
                p.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
