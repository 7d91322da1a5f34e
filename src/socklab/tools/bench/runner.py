"""Run the load against each server, take medians, and sweep the number of connections.

Why this exists: one run of one server says little. The runner starts every server afresh for
every repeat and interleaves them (round 1: A, B, C; round 2: C, B, A; ...), so a slow minute on
a shared machine hits every server alike, and reports the median of the repeats (ratios between
servers are taken round by round, then the median: see ``report.paired_ratio``). It samples the
server's CPU time and memory exactly when the load generator starts and stops measuring (the
generator says so on stderr), so the warm-up and the connect phase are not counted.

With ``interleave=True`` an engine and its reference are measured *together*: one generator
holds connections to both and gives them the load in turns of ``slice_ms`` (``loadgen
--vs-port``). Runs of one server taken a minute apart on this VM differ by 10-30 %; slices
200 ms apart do not, so the engine's ratio to its reference is measured to about 1 %, where
separate runs left it at +-8 % even as a median of nine rounds.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from socklab.core.errors import SocklabError
from socklab.tools.bench.build import binary
from socklab.tools.bench.procs import REFERENCE_FOR, ServerProcess, ServerSpec

__all__ = ["Load", "Result", "raise_nofile", "run_echo", "run_loadgen", "run_loadgen_pair", "run_sweep",
           "summarize"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Load:
    """What the load generator does.

    Attributes:
        connections: active connections, each with ``pipeline`` messages in flight.
        size: message size, bytes.
        pipeline: messages in flight per connection (1 = ping-pong).
        duration: measured seconds.
        warmup: seconds of load before measuring.
        idle: extra connections that do one round trip and then stay silent (the sweep).
        proto: ``"tcp"`` (loadgen), ``"udp"`` (udp_loadgen: one connected socket per "connection",
            one datagram in flight), ``"ws"`` (loadgen --ws /ws: one text frame of ``size`` per message).
        cold: skip the warm-up every server otherwise gets before its load (a connection opened
            and closed without data, issue 19): the figure of a server that never met an EOF.
    """

    connections: int = 20
    size: int = 1024
    pipeline: int = 1
    duration: float = 10.0
    warmup: float = 1.0
    idle: int = 0
    cold: bool = False
    proto: str = "tcp"

    def argv(self) -> list[str]:
        return ["-c", str(self.connections), "-s", str(self.size), "-p", str(self.pipeline),
                "-d", f"{self.duration:g}", "-w", f"{self.warmup:g}", "--idle", str(self.idle),
                *(["--cold"] if self.cold else [])]


@dataclass
class Result:
    """The median of the repeats for one server under one load (``error`` set if it failed)."""

    name: str
    kind: str
    engine: str | None
    load: Load
    rps: float = 0.0
    mbps: float = 0.0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max_us: float = 0.0
    server_cpu: float | None = None
    server_user: float | None = None  # the part of server_cpu spent in the server's own code
    rss: int | None = None
    rss_idle: int | None = None
    loadgen_cpu: float = 0.0
    errors: int = 0
    held: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)
    c_pairs: list[dict[str, Any]] = field(default_factory=list)  # runs interleaved with the C server
    error: str | None = None
    ref_row: str | None = None  # the spec's own reference (UDP, TLS), else REFERENCE_FOR's

    @property
    def reference(self) -> str | None:
        """The row name of this engine's reference server."""
        if self.ref_row is not None:
            return self.ref_row
        ref = REFERENCE_FOR.get(self.engine or "") if self.kind == "socklab" else None
        return f"ref:{ref}" if ref else None

    @property
    def cpu_us_per_request(self) -> float | None:
        """Server CPU time per round trip, microseconds: steadier than req/s on a shared machine."""
        if self.server_cpu is None or self.rps <= 0:
            return None
        return self.server_cpu / 100.0 / self.rps * 1e6

    @property
    def user_us_per_request(self) -> float | None:
        """The part of :attr:`cpu_us_per_request` in user space: the interpreter, for Python servers."""
        if self.server_user is None or self.rps <= 0:
            return None
        return self.server_user / 100.0 / self.rps * 1e6

    @property
    def vs_c_interleaved(self) -> float | None:
        """The median req/s ratio to the C server over the runs interleaved with it (None: none)."""
        pairs = [float(p["rps"]) / float(p["c_rps"]) for p in self.c_pairs if float(p["c_rps"]) > 0]
        return statistics.median(pairs) if pairs else None

    @property
    def bytes_per_connection(self) -> float | None:
        """Memory the server gained per open connection (RSS under load minus RSS before)."""
        total = self.load.connections + self.load.idle
        if self.rss is None or self.rss_idle is None or total == 0:
            return None
        return (self.rss - self.rss_idle) / total

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reference"] = self.reference
        d["bytes_per_connection"] = self.bytes_per_connection
        d["cpu_us_per_request"] = self.cpu_us_per_request
        d["user_us_per_request"] = self.user_us_per_request
        return d


def raise_nofile() -> int:
    """Raise this process's RLIMIT_NOFILE soft limit to the hard limit (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _ipv4(host: str, port: int) -> str:
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SocklabError(f"cannot resolve {host!r} to an IPv4 address: {exc}") from exc
    return str(infos[0][4][0])


Marks = dict[str, tuple[float, list[tuple[float, float] | None], list[int | None]]]


def _generate(argv: list[str], servers: list[ServerProcess | None], timeout: float) -> tuple[dict[str, Any], Marks]:
    """Run the generator; sample each server's CPU and memory at its measure-start/-end lines."""
    marks: Marks = {}
    err_lines: list[str] = []
    deadline = time.monotonic() + timeout
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out = rest = b""
    try:
        pending = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stderr, selectors.EVENT_READ)
            while "measure-end" not in marks:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise SocklabError(f"load generator did not finish within {timeout - 15:g} s")
                chunk = os.read(proc.stderr.fileno(), 4096)
                if not chunk:
                    break
                pending += chunk
                while b"\n" in pending:
                    raw, pending = pending.split(b"\n", 1)
                    line = raw.decode(errors="replace").strip()
                    if line in ("measure-start", "measure-end"):
                        marks[line] = (time.monotonic(), [sv.cpu_times() if sv else None for sv in servers],
                                       [sv.rss_bytes() if sv else None for sv in servers])
                    elif line:
                        err_lines.append(line)
        out = proc.stdout.read()
        rest = proc.stderr.read()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()
        proc.stderr.close()
    err_lines += [ln for ln in rest.decode(errors="replace").splitlines() if ln.strip()]
    if proc.returncode != 0 or not out.strip():
        raise SocklabError(f"load generator failed (exit {proc.returncode}): {' '.join(err_lines)[-500:]}")
    result: dict[str, Any] = json.loads(out)
    return result, marks


def _server_figures(result: dict[str, Any], marks: Marks, i: int, seconds: float | None) -> None:
    """Add server ``i``'s CPU % (over ``seconds``, default the marks' interval) and RSS to ``result``.

    Keys: ``server_cpu_percent`` and its parts ``server_user_percent`` (the server's own code) and
    ``server_sys_percent`` (the kernel, on its behalf); ``server_rss_start``/``server_rss_end``.
    """
    if "measure-start" in marks and "measure-end" in marks:
        (t0, c0, r0), (t1, c1, r1) = marks["measure-start"], marks["measure-end"]
        span = seconds if seconds is not None else t1 - t0
        cpu0, cpu1 = c0[i], c1[i]
        if cpu0 is not None and cpu1 is not None and span > 0:
            user, sys_ = (cpu1[0] - cpu0[0]) / span * 100.0, (cpu1[1] - cpu0[1]) / span * 100.0
            result["server_cpu_percent"] = user + sys_
            result["server_user_percent"], result["server_sys_percent"] = user, sys_
        result["server_rss_start"], result["server_rss_end"] = r0[i], r1[i]


def _argv(host: str, port: int, load: Load, cpu: int | None, connect_timeout: float) -> list[str]:
    program = {"tcp": "loadgen", "ws": "loadgen", "udp": "udp_loadgen", "tls": "tls_loadgen"}[load.proto]
    argv = [str(binary(program)), "--host", _ipv4(host, port), "--port", str(port), *load.argv(),
            "--connect-timeout", f"{connect_timeout:g}", *(["--ws", "/ws"] if load.proto == "ws" else [])]
    if cpu is not None:
        argv += ["--cpu", str(cpu)]
    return argv


def run_loadgen(host: str, port: int, load: Load, *, cpu: int | None = None,
                server: ServerProcess | None = None, connect_timeout: float = 30.0) -> dict[str, Any]:
    """Run the C load generator once against ``host:port``; returns its JSON plus server figures.

    Added keys: ``server_cpu_percent`` and ``server_rss_start``/``server_rss_end`` (bytes) when
    ``server`` is given (sampled at the generator's measure-start and measure-end lines).

    Raises:
        SocklabError: the generator failed, hung, or printed no JSON.
    """
    result, marks = _generate(_argv(host, port, load, cpu, connect_timeout), [server],
                              connect_timeout + load.warmup + load.duration + 15)
    _server_figures(result, marks, 0, None)
    return result


def run_loadgen_pair(a: ServerProcess, b: ServerProcess, load: Load, *, cpu: int | None = None,
                     slice_ms: float = 200.0, connect_timeout: float = 30.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Measure two servers in one generator run, taking turns every ``slice_ms`` (both on one host).

    Each gets ``load.connections`` connections; each result counts only its own slices (its
    ``active_seconds``), and its ``server_cpu_percent`` is its CPU time over those seconds.

    Raises:
        SocklabError: the generator failed, hung, or printed no JSON.
    """
    if load.idle:
        raise SocklabError("an interleaved run has no idle connections")
    argv = [*_argv(a.host, a.port, load, cpu, connect_timeout), "--vs-port", str(b.port), "--slice-ms",
            f"{slice_ms:g}"]
    first, marks = _generate(argv, [a, b], connect_timeout + load.warmup + load.duration + 15)
    second = first.pop("vs")
    for i, res in enumerate((first, second)):
        _server_figures(res, marks, i, float(res["active_seconds"]))
    return first, second


def summarize(spec: ServerSpec, load: Load, samples: list[dict[str, Any]], rss_idle: list[int],
              error: str | None = None) -> Result:
    """The medians of ``samples`` (loadgen JSON objects) as one :class:`Result`."""
    res = Result(spec.name, spec.kind, spec.engine, load, samples=samples, error=error, ref_row=spec.reference)
    if not samples:
        return res

    def med(get: Callable[[dict[str, Any]], Any]) -> float:
        vals = [float(v) for v in (get(s) for s in samples) if v is not None]
        return statistics.median(vals) if vals else 0.0

    res.rps, res.mbps = med(lambda s: s["rps"]), med(lambda s: s["mbps"])
    res.p50, res.p90 = med(lambda s: s["latency_us"]["p50"]), med(lambda s: s["latency_us"]["p90"])
    res.p99, res.max_us = med(lambda s: s["latency_us"]["p99"]), med(lambda s: s["latency_us"]["max"])
    res.loadgen_cpu = med(lambda s: s["cpu"]["percent"])
    if any(s.get("server_cpu_percent") is not None for s in samples):
        res.server_cpu = med(lambda s: s.get("server_cpu_percent"))
    if any(s.get("server_user_percent") is not None for s in samples):
        res.server_user = med(lambda s: s.get("server_user_percent"))
    rss = [max(r for r in (s.get("server_rss_start"), s.get("server_rss_end")) if r is not None)
           for s in samples if s.get("server_rss_start") is not None or s.get("server_rss_end") is not None]
    res.rss = int(statistics.median(rss)) if rss else None
    res.rss_idle = int(statistics.median(rss_idle)) if rss_idle else None
    res.errors = sum(int(s["errors"]) + int(s["connect_errors"]) for s in samples)
    res.held = min(int(s["held"]) for s in samples)
    return res


def _check_held(sample: dict[str, Any], load: Load) -> None:
    wanted = load.connections + load.idle
    if sample["held"] == 0 or (load.idle == 0 and sample["held"] < wanted):
        raise SocklabError(f"served {sample['held']} of {wanted} connections "
                           f"({sample['first_error'] or 'no reply'})")


def _measure(spec: ServerSpec, load: Load, server_cores: set[int] | None, gen_cpu: int | None,
             connect_timeout: float) -> tuple[dict[str, Any], int | None]:
    with ServerProcess(spec, cores=server_cores) as server:
        rss_idle = server.rss_bytes()
        sample = run_loadgen(server.host, server.port, load, cpu=gen_cpu, server=server,
                             connect_timeout=connect_timeout)
        if not server.alive():
            raise SocklabError(f"server died during the run: {server.last_error()}")
    _check_held(sample, load)
    return sample, rss_idle


class _PairError(SocklabError):
    """An interleaved run failed; ``culprits`` names the server(s) to blame."""

    def __init__(self, message: str, culprits: list[str]) -> None:
        super().__init__(message)
        self.culprits = culprits


def _measure_pair(ref: ServerSpec, spec: ServerSpec, load: Load, server_cores: set[int] | None,
                  gen_cpu: int | None, connect_timeout: float, slice_ms: float,
                  ref_first: bool) -> tuple[tuple[dict[str, Any], int | None], tuple[dict[str, Any], int | None]]:
    """Start ``ref`` and ``spec`` side by side and measure them interleaved; ``(ref, spec)`` samples."""
    try:
        with ServerProcess(ref, cores=server_cores) as rs, ServerProcess(spec, cores=server_cores) as ss:
            idle = {ref.name: rs.rss_bytes(), spec.name: ss.rss_bytes()}
            a, b = (rs, ss) if ref_first else (ss, rs)
            sa, sb = run_loadgen_pair(a, b, load, cpu=gen_cpu, slice_ms=slice_ms, connect_timeout=connect_timeout)
            dead = [sv.spec.name for sv in (rs, ss) if not sv.alive()]
            if dead:
                why = "; ".join(f"{sv.spec.name}: {sv.last_error()}" for sv in (rs, ss) if not sv.alive())
                raise _PairError(f"server died during the run: {why}", dead)
    except _PairError:
        raise
    except SocklabError as exc:  # a server that would not start says so in the message
        raise _PairError(str(exc), [n for n in (ref.name, spec.name) if n in str(exc)] or [spec.name]) from exc
    by_name = {a.spec.name: sa, b.spec.name: sb}
    for name, sample in by_name.items():
        try:
            _check_held(sample, load)
        except SocklabError as exc:
            raise _PairError(str(exc), [name]) from exc
    return (by_name[ref.name], idle[ref.name]), (by_name[spec.name], idle[spec.name])


def _partners(specs: list[ServerSpec]) -> dict[str, ServerSpec]:
    """socklab engine row -> its reference's spec, for the engines whose reference is measured too."""
    by_name = {s.name: s for s in specs}
    out: dict[str, ServerSpec] = {}
    for s in specs:
        ref = REFERENCE_FOR.get(s.engine or "") if s.kind == "socklab" else None
        row = s.reference or (f"ref:{ref}" if ref is not None else None)
        if row is not None and row in by_name:
            out[s.name] = by_name[row]
    return out


def run_echo(specs: list[ServerSpec], load: Load, *, repeats: int = 3, server_cores: set[int] | None = None,
             gen_cpu: int | None = None, progress: Progress | None = None,
             connect_timeout: float = 30.0, interleave: bool = False, slice_ms: float = 200.0) -> list[Result]:
    """Measure every server ``repeats`` times, interleaved, each time in a fresh process.

    Args:
        interleave: measure each engine together with its reference, in turns of ``slice_ms``
            within one generator run (see the module docstring); the reference's row then
            gathers a sample from every engine it was paired with. Servers without a partner
            (C, targets) run alone as before; then, with a C server among ``specs``, the
            fastest socklab engine is measured ``repeats`` more times interleaved with C (its
            ``c_pairs``: the precise "best engine vs C" ratio). Needs ``load.idle == 0``.

    Returns:
        One :class:`Result` per spec, in the order given (medians of the repeats). A server that
        fails gets ``error`` set and is not retried; the others go on.
    """
    samples: dict[str, list[dict[str, Any]]] = {s.name: [] for s in specs}
    idle: dict[str, list[int]] = {s.name: [] for s in specs}
    errors: dict[str, str] = {}
    partners = _partners(specs) if interleave and load.idle == 0 else {}
    paired_refs = {r.name for r in partners.values()}

    def keep(spec: ServerSpec, sample: dict[str, Any], rss_idle: int | None, rnd: int) -> None:
        sample["round"] = rnd
        samples[spec.name].append(sample)
        if rss_idle is not None:
            idle[spec.name].append(rss_idle)

    def fail(name: str, exc: Exception) -> None:
        errors.setdefault(name, str(exc).splitlines()[0])
        if progress:
            progress(f"  {name} failed: {exc}")

    for rnd in range(repeats):
        # A, B, C then C, B, A: no server always runs first (or right after a given neighbour).
        for spec in specs if rnd % 2 == 0 else specs[::-1]:
            if spec.name in errors or spec.name in paired_refs:  # a paired reference runs with its engines
                continue
            ref = partners.get(spec.name)
            if ref is not None and ref.name not in errors:
                if progress:
                    progress(f"round {rnd + 1}/{repeats}: {spec.name} interleaved with {ref.name}")
                try:
                    (rs, ri), (es, ei) = _measure_pair(ref, spec, load, server_cores, gen_cpu, connect_timeout,
                                                       slice_ms, ref_first=rnd % 2 == 0)
                except _PairError as exc:
                    for name in exc.culprits:
                        fail(name, exc)
                    continue
                es["paired_rps"] = rs["rps"]
                rs["paired_with"] = spec.name
                keep(ref, rs, ri, rnd)
                keep(spec, es, ei, rnd)
                continue
            if progress:
                progress(f"round {rnd + 1}/{repeats}: {spec.name}")
            try:
                sample, rss_idle = _measure(spec, load, server_cores, gen_cpu, connect_timeout)
            except SocklabError as exc:
                fail(spec.name, exc)
                continue
            keep(spec, sample, rss_idle, rnd)
    results = [summarize(s, load, samples[s.name], idle[s.name], errors.get(s.name)) for s in specs]
    c_spec = next((s for s in specs if s.kind == "c"), None)
    if interleave and load.idle == 0 and c_spec is not None and c_spec.name not in errors:
        _pair_best_with_c(c_spec, specs, results, load, repeats, server_cores, gen_cpu, connect_timeout, slice_ms,
                          progress)
    return results


def _pair_best_with_c(c_spec: ServerSpec, specs: list[ServerSpec], results: list[Result], load: Load, repeats: int,
                      server_cores: set[int] | None, gen_cpu: int | None, connect_timeout: float, slice_ms: float,
                      progress: Progress | None) -> None:
    """Measure the fastest socklab engine interleaved with the C server, ``repeats`` times.

    The C server has no reference to take turns with, so its ratio to an engine measured a minute
    apart carries the machine's drift (+-8 %). These runs give the one ratio the targets ask
    about - the best engine against C - to about 1 %, in ``Result.c_pairs`` of that engine.
    """
    best = max((r for r in results if r.kind == "socklab" and r.error is None and r.rps > 0),
               key=lambda r: r.rps, default=None)
    if best is None:
        return
    spec = next(s for s in specs if s.name == best.name)
    for rnd in range(repeats):
        if progress:
            progress(f"against C {rnd + 1}/{repeats}: {spec.name} interleaved with {c_spec.name}")
        try:
            (cs, _), (es, _) = _measure_pair(c_spec, spec, load, server_cores, gen_cpu, connect_timeout, slice_ms,
                                             ref_first=rnd % 2 == 0)
        except _PairError as exc:
            if progress:
                progress(f"  interleaving {spec.name} with {c_spec.name} failed: {exc}")
            return
        best.c_pairs.append({"round": rnd, "rps": es["rps"], "c_rps": cs["rps"],
                             "cpu_percent": es.get("server_cpu_percent"), "c_cpu_percent": cs.get("server_cpu_percent"),
                             "loadgen_cpu_percent": es["cpu"]["percent"]})


def run_sweep(specs: list[ServerSpec], levels: list[int], *, active: int = 10, base: Load | None = None,
              repeats: int = 1, server_cores: set[int] | None = None, gen_cpu: int | None = None,
              progress: Progress | None = None, connect_timeout: float = 60.0) -> list[Result]:
    """For each total connection count in ``levels``: ``active`` busy connections, the rest idle.

    Returns:
        One :class:`Result` per (level, spec), level-major; ``load.idle + load.connections`` is the level.
    """
    base = base or Load(duration=2.0, warmup=0.5)
    out: list[Result] = []
    for level in levels:
        n_active = min(active, level)
        load = Load(connections=n_active, size=base.size, pipeline=base.pipeline, duration=base.duration,
                    warmup=base.warmup, idle=level - n_active, cold=base.cold)
        if progress:
            progress(f"sweep: {level} connections ({n_active} active)")
        out += run_echo(specs, load, repeats=repeats, server_cores=server_cores, gen_cpu=gen_cpu,
                        progress=progress, connect_timeout=connect_timeout)
    return out
