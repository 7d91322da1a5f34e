"""``socklab bench transfer``: file transfer against netcat and a bare sendfile copy; TFTP windowed vs lock-step.

Why this exists: the transfer's targets are *ratios measured in one run* (the machine drifts
between runs), so every contender runs here, interleaved, on the same file:

- ``native``: ``socklab send`` -> ``socklab receive --discard`` (verification on: the blake3 tree
  on both sides), and -> a receiver writing to disk (O_DIRECT, fsync, rename);
- ``nc``: netcat-openbsd, ``nc -l > /dev/null`` fed by ``nc -N < file``;
- ``bare``: Python ``os.sendfile`` -> ``recv_into`` a reused 1 MiB buffer (discard, or write + fsync).

CPU is reported per process (sender, receiver; user + system of every thread, from ``wait4``),
interpreter start-up subtracted: on a shared machine the rates swing, the CPU cost per GiB does not.
The TFTP runs go through a :class:`~socklab.tools.tap.Tap` that adds delay or loss.

The nc receiver needs a port number before it starts; the benchmark binds port 0, closes it and
hands the number to nc (a benchmark-only shortcut the tests never take), retrying on a clash.

One raw socket finds a free port for the nc contender, which cannot report a port-0 bind.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from socklab.cli.options import run_cli
from socklab.core.errors import SocklabError

if TYPE_CHECKING:
    from socklab.tools.tap import Fault

__all__ = ["run_native_table", "run_tftp_faults", "run_tftp_table", "transfer"]

PY = sys.executable

BARE_RECV = r"""
import os, socket, sys
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen(1)
print(lst.getsockname()[1], flush=True)
c, _ = lst.accept(); buf = bytearray(1 << 20); view = memoryview(buf); total = 0
out = open(sys.argv[1], "wb") if sys.argv[1] != "-" else None
while True:
    n = c.recv_into(buf)
    if not n: break
    total += n
    if out: out.write(view[:n])
if out: out.flush(); os.fsync(out.fileno()); out.close()
c.close()
print(total, flush=True)
"""

BARE_SEND = r"""
import os, socket, sys, time
t = time.perf_counter()
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
fd = os.open(sys.argv[2], os.O_RDONLY); size = os.fstat(fd).st_size; pos = 0
while pos < size:
    pos += os.sendfile(s.fileno(), fd, pos, size - pos)
s.shutdown(socket.SHUT_WR); s.recv(1)  # wait for the receiver to have read everything (its close)
print(time.perf_counter() - t, flush=True)
"""


def make_file(size_mib: int, where: Path) -> Path:
    path = where / f"bench-{size_mib}MiB.bin"
    if not path.exists() or path.stat().st_size != size_mib << 20:
        block = os.urandom(1 << 20)
        with open(path, "wb") as f:
            for _ in range(size_mib):
                f.write(block)
    with open(path, "rb") as f:  # warm the page cache: every contender reads it from memory
        while f.read(8 << 20):
            pass
    return path


class Cpu:
    """CPU seconds (user + system, every thread) of one contender's sender and receiver processes."""

    def __init__(self) -> None:
        self.tx = 0.0
        self.rx = 0.0


def _reap(proc: subprocess.Popen[str] | subprocess.Popen[bytes], timeout: float = 120) -> float:
    """Wait for ``proc`` with ``wait4`` and return its own CPU seconds (not its siblings')."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return ru.ru_utime + ru.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
            raise SocklabError(f"{proc.args!r} did not finish within {timeout:g} s")
        time.sleep(0.01)


def _run_tx(argv: list[str], stdin: int | None = None) -> tuple[str, float]:
    tx = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert tx.stdout is not None and tx.stderr is not None
    out = tx.stdout.read()
    err = tx.stderr.read()
    tx.stdout.close()
    tx.stderr.close()
    cpu = _reap(tx)
    if tx.returncode != 0:
        raise SocklabError(f"{' '.join(argv)} failed ({tx.returncode}): {out} {err}")
    return out, cpu


def run_native(path: Path, discard: bool, dest: Path, cpu: Cpu) -> float:
    args = [PY, "-m", "socklab", "receive", "--port", "0", "--once", "--quiet", "--dir", str(dest),
            "--overwrite"]
    if discard:
        args.append("--discard")
    rx = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert rx.stdout is not None and rx.stderr is not None
    line = rx.stdout.readline()
    m = re.search(r":(\d+) \(engine", line)
    if not m:
        rx.kill()
        raise SocklabError(f"the receiver did not start: {line!r} {rx.communicate(timeout=10)[1][-1500:]}")
    out, cpu.tx = _run_tx([PY, "-m", "socklab", "send", str(path), "--to", f"127.0.0.1:{m.group(1)}", "--json",
                           "--quiet"])
    rx.stdout.read()
    rx.stdout.close()
    rx.stderr.close()
    cpu.rx = _reap(rx)
    summary = json.loads(out)
    elapsed = float(summary["seconds"])  # measured inside the sender: connect to the verified RESULT
    if not summary.get("ok"):
        raise SocklabError(f"socklab send reported a failure: {summary}")
    for f in dest.glob("*"):
        f.unlink()
    return path.stat().st_size / elapsed


def run_bare(path: Path, discard: bool, dest: Path, cpu: Cpu) -> float:
    target = "-" if discard else str(dest / "bare.bin")
    rx = subprocess.Popen([PY, "-c", BARE_RECV, target], stdout=subprocess.PIPE, text=True)
    assert rx.stdout is not None
    port = rx.stdout.readline().strip()
    out, cpu.tx = _run_tx([PY, "-c", BARE_SEND, port, str(path)])
    elapsed = float(out)  # measured inside the sender: connect to the receiver's close
    total = int(rx.stdout.readline())
    rx.stdout.close()
    cpu.rx = _reap(rx)
    if total != path.stat().st_size:
        raise SocklabError(f"the bare receiver got {total} bytes of {path.stat().st_size}")
    for f in dest.glob("*"):
        f.unlink()
    return total / elapsed


def _listening(port: int) -> bool:
    """Is something listening on 127.0.0.1:port? (/proc/net/tcp: state 0A = LISTEN)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return any(line.split()[1] == want and line.split()[3] == "0A" for line in list(f)[1:])


def run_nc(path: Path, cpu: Cpu) -> float:
    for _ in range(5):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        with open(os.devnull, "wb") as null:
            rx = subprocess.Popen(["nc", "-l", "127.0.0.1", str(port)], stdout=null, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while not _listening(port) and rx.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)  # nc prints nothing when ready; the kernel's table says it
        if rx.poll() is not None:
            continue  # the port was taken meanwhile: try another
        start = time.perf_counter()
        with open(path, "rb") as f:
            tx = subprocess.Popen(["nc", "-N", "127.0.0.1", str(port)], stdin=f, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
            cpu.tx = _reap(tx)
        cpu.rx = _reap(rx)
        elapsed = time.perf_counter() - start
        if tx.returncode == 0:
            return path.stat().st_size / elapsed
    raise SocklabError("nc did not run (5 attempts)")


def _startup_cpu(argv: list[str]) -> float:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _reap(proc)


def run_native_table(size: int, repeat: int, tmp_dir: str | None, as_json: bool) -> None:
    """native vs nc vs bare sendfile, interleaved rounds; prints the table (and JSON with ``as_json``)."""
    contenders: dict[str, Callable[[Path, Path, Cpu], float]] = {
        "native-discard": lambda p, d, c: run_native(p, True, d, c),
        "bare-discard": lambda p, d, c: run_bare(p, True, d, c),
        "nc": lambda p, d, c: run_nc(p, c),
        "native-disk": lambda p, d, c: run_native(p, False, d, c),
        "bare-disk": lambda p, d, c: run_bare(p, False, d, c),
    }
    # CPU seconds of each process (user + system, all threads, from wait4), minus interpreter
    # start-up: on a shared machine the wall-clock rate moves with the neighbours, the CPU cost barely does
    startup = {"native": _startup_cpu([PY, "-m", "socklab", "send", "--help"]),
               "bare": _startup_cpu([PY, "-c", "import socket, os"]), "nc": 0.0}
    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        work = Path(tmp)
        dest = work / "dest"
        dest.mkdir()
        path = make_file(size, work)
        runs: dict[str, list[float]] = {k: [] for k in contenders}
        tx_cpu: dict[str, list[float]] = {k: [] for k in contenders}
        rx_cpu: dict[str, list[float]] = {k: [] for k in contenders}
        for fn in contenders.values():
            # one unmeasured round: the first writer of a run otherwise pays for the VM handing
            # page-cache memory back (first-touch), which is the machine, not the contender
            fn(path, dest, Cpu())
        order = list(contenders.items())
        for rnd in range(repeat):  # interleaved, so drift hits every contender alike
            for name, fn in order if rnd % 2 == 0 else order[::-1]:  # A,B,C then C,B,A: nobody always first
                cpu = Cpu()
                runs[name].append(fn(path, dest, cpu))
                base = startup[name.split("-")[0]]
                tx_cpu[name].append(max(0.0, cpu.tx - base))
                rx_cpu[name].append(max(0.0, cpu.rx - base))
    med = {k: statistics.median(v) for k, v in runs.items()}
    gib = size / 1024
    tx = {k: statistics.median(v) / gib for k, v in tx_cpu.items()}
    rx = {k: statistics.median(v) / gib for k, v in rx_cpu.items()}
    click.echo(f"native transfer, {size} MiB on loopback, median of {repeat} (CPU: s per GiB, "
               f"interpreter start-up subtracted):")
    click.echo(f"  {'contender':15s} {'MB/s':>8s} {'CPU send':>9s} {'CPU recv':>9s} {'CPU both':>9s}   each run, MB/s")
    for k, v in med.items():
        each = " ".join(f"{r / 1e6:.0f}" for r in runs[k])
        click.echo(f"  {k:15s} {v / 1e6:8.0f} {tx[k]:9.2f} {rx[k]:9.2f} {tx[k] + rx[k]:9.2f}   {each}")
    # Ratios are paired: each round's rate divided by the other contender's rate of the same round,
    # then the median of those (a slow minute on the shared VM hits both sides of a pair alike).
    for a, b, target in (("native-discard", "nc", 1.2), ("native-discard", "bare-discard", 0.8),
                         ("native-disk", "bare-disk", 1.0)):
        pairs = [x / y for x, y in zip(runs[a], runs[b], strict=True) if y]
        each = " ".join(f"{r:.2f}" for r in pairs)
        click.echo(f"  {a + ' / ' + b:29s} = {statistics.median(pairs):.2f}  (target >= {target}; "
                   f"ratio of medians {med[a] / med[b]:.2f}; each round {each})")
    if as_json:
        click.echo(json.dumps({k: {"rate": round(v), "cpu_send_s_per_gib": round(tx[k], 3),
                                   "cpu_recv_s_per_gib": round(rx[k], 3)} for k, v in med.items()}))


def _tftp_once(size: int, blksize: int, window: int, faults: Sequence[Fault], seed: int, timeout: float,
               root: Path) -> tuple[float, int]:
    from socklab.apps.tftp.client import TftpClientOptions, tftp_get
    from socklab.apps.tftp.server import TftpSettings, serve_tftp
    from socklab.tools.tap import Tap

    settings = TftpSettings(host="127.0.0.1", port=0, root=str(root), single_port=True, timeout=timeout,
                            max_retries=60)
    srv, _ = serve_tftp(settings)
    srv.start()
    try:
        with Tap(target=("127.0.0.1", srv.port), udp=True, faults=faults, seed=seed) as tap:
            out = io.BytesIO()
            start = time.perf_counter()
            res = tftp_get("127.0.0.1", tap.port, "f.bin", out,
                           TftpClientOptions(blksize=blksize, windowsize=window, timeout=timeout, max_retries=60))
            elapsed = time.perf_counter() - start
        if out.getvalue() != (root / "f.bin").read_bytes():
            raise SocklabError(f"TFTP data differs (blksize {blksize}, window {window})")
        return size / elapsed, res.retransmissions
    finally:
        srv.shutdown(timeout=1)


def run_tftp_table(size_mib: float, blksize: int, windows_spec: str, latency: str, tmp_dir: str | None) -> None:
    """TFTP get rate per window size and added one-way delay; prints the table."""
    from socklab.tools.tap import Fault

    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        root = Path(tmp)
        size = int(size_mib * (1 << 20))
        (root / "f.bin").write_bytes(os.urandom(size))
        windows = [int(w) for w in windows_spec.split(",")]
        click.echo(f"TFTP get of {size_mib} MiB, blksize {blksize}, through socklab tap with added one-way delay "
                   "(MB/s):")
        click.echo("  delay ms  " + "".join(f"{'w=' + str(w):>10s}" for w in windows))
        for lat in [float(x) for x in latency.split(",")]:
            faults = [Fault("delay", "both", delay=lat)] if lat else []
            rates = [_tftp_once(size, blksize, w, faults, 1, max(0.2, 8 * lat / 1000), root)[0] for w in windows]
            click.echo(f"  {lat:8g}  " + "".join(f"{r / 1e6:10.2f}" for r in rates))


def run_tftp_faults(size_mib: float, tmp_dir: str | None) -> None:
    """The loss matrix: 5 % and 20 % loss each way, 3 block sizes x 3 windows, byte-identical each time."""
    from socklab.tools.tap import Fault

    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        root = Path(tmp)
        size = int(size_mib * (1 << 20))
        (root / "f.bin").write_bytes(os.urandom(size))
        click.echo(f"TFTP get of {size_mib} MiB through socklab tap: loss each way + 2 % duplicate + 2 % reorder")
        for loss in (0.05, 0.20):
            for blksize in (512, 1428, 8192):
                for window in (1, 8, 32):
                    faults = [Fault("loss", "both", probability=loss), Fault("duplicate", "both", probability=0.02),
                              Fault("reorder", "both", probability=0.02, delay=5)]
                    rate, retrans = _tftp_once(size, blksize, window, faults, blksize * window, 0.05, root)
                    click.echo(f"  loss {loss:4.0%} blksize {blksize:5d} window {window:2d}: byte-identical, "
                               f"{rate / 1e6:6.2f} MB/s, {retrans} client re-ACKs on timeout")


@click.group("transfer")
@click.option("--tmp", "tmp_dir", metavar="DIR", default=None, type=click.Path(file_okay=False, exists=True),
              help="Directory for the test file (default: the system's temporary directory).")
@click.pass_context
def transfer(ctx: click.Context, tmp_dir: str | None) -> None:
    """File transfer: socklab send/receive vs netcat vs a bare sendfile copy; TFTP windowed vs lock-step.

    \b
      socklab bench transfer native --size 256              # 256 MiB, every contender once
      socklab bench transfer native --size 1024 --repeat 3  # 1 GiB, median of 3 interleaved rounds
      socklab bench transfer tftp --size 4 --latency 0,1,5  # MB/s per window size and added delay
      socklab bench transfer tftp-faults --size 10          # the loss matrix, byte-identical each time
    """
    ctx.obj = {**(ctx.obj or {}), "tmp_dir": tmp_dir}


@transfer.command("native")
@click.option("--size", type=click.IntRange(1, 1 << 20), default=256, show_default=True, help="File size, MiB.")
@click.option("--repeat", type=click.IntRange(1, 100), default=1, show_default=True,
              help="Interleaved rounds (each contender once per round); the table shows medians.")
@click.option("--json", "as_json", is_flag=True, help="Also print the medians as one JSON line.")
@click.pass_context
@run_cli
def native_cmd(ctx: click.Context, size: int, repeat: int, as_json: bool) -> None:
    """socklab send -> receive (discarding, and writing to disk) vs nc vs a bare sendfile copy.

    One file of --size MiB, served from the page cache, goes over loopback to each contender in
    turn: MB/s (measured inside the sender, connect to the verified end), the sender's and the
    receiver's CPU seconds per GiB, and each pair's ratio round by round (the bars: native
    >= 1.2x nc, >= 0.8x bare sendfile when discarding; >= 1.0x bare when writing to disk).
    Needs nc (netcat-openbsd).

    \b
      socklab bench transfer native --size 256              # 256 MiB, every contender once
      socklab bench transfer native --size 1024 --repeat 3  # 1 GiB, median of 3 interleaved rounds
    """
    if shutil.which("nc") is None:
        raise SocklabError("the native comparison needs nc (netcat-openbsd) on PATH")
    run_native_table(size, repeat, ctx.obj.get("tmp_dir"), as_json)


@transfer.command("tftp")
@click.option("--size", type=click.FloatRange(0.001, 1024), default=4.0, show_default=True, help="File size, MiB.")
@click.option("--blksize", type=click.IntRange(8, 65464), default=1428, show_default=True,
              help="TFTP block size, bytes (RFC 2348).")
@click.option("--windows", default="1,8,32", show_default=True, metavar="LIST",
              help="Window sizes (RFC 7440), comma-separated; 1 is classic lock-step.")
@click.option("--latency", default="0,1,5", show_default=True, metavar="LIST",
              help="Added one-way delay in ms, comma-separated.")
@click.pass_context
@run_cli
def tftp_cmd(ctx: click.Context, size: float, blksize: int, windows: str, latency: str) -> None:
    """TFTP get rate per window size under added one-way delay: what windowing buys over lock-step.

    A TFTP server and client on loopback, with a tap between them adding the delay each way.
    Lock-step (window 1) waits one round trip per block; a window of N sends N blocks per round
    trip, so the gap grows with the delay.

    \b
      socklab bench transfer tftp --size 4 --latency 0,1,5,10
      socklab bench transfer tftp --blksize 8192 --windows 1,16
    """
    for name, value, kind in (("--windows", windows, int), ("--latency", latency, float)):
        try:
            for x in value.split(","):
                kind(x)
        except ValueError:
            raise click.BadParameter(f"{value!r}: give numbers separated by commas", param_hint=name)
    run_tftp_table(size, blksize, windows, latency, ctx.obj.get("tmp_dir"))


@transfer.command("tftp-faults")
@click.option("--size", type=click.FloatRange(0.001, 1024), default=10.0, show_default=True, help="File size, MiB.")
@click.pass_context
@run_cli
def tftp_faults_cmd(ctx: click.Context, size: float) -> None:
    """TFTP through loss, duplicates and reordering: every get byte-identical, with its rate and re-ACKs.

    5 % and 20 % loss each way (plus 2 % duplicates and 2 % reordering), for block sizes 512,
    1428 and 8192 and windows 1, 8 and 32.

    \b
      socklab bench transfer tftp-faults --size 10
    """
    run_tftp_faults(size, ctx.obj.get("tmp_dir"))
