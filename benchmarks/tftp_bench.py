"""TFTP windows on loopback: time, retransmissions and kernel drops per blksize x windowsize cell.

Why this exists: issue 15 found that once blksize x windowsize exceeds the socket's receive buffer,
the kernel drops the tail of every window and the transfer waits a whole timeout per window
(8192 x 16 on 40 MB: 310 s, 310 retransmissions). This script runs socklab's client against a
``socklab tftp serve`` subprocess (its own process: no shared GIL) directly on loopback, get and
put, and prints for each cell the time, the rate, the retransmissions both sides counted and the
rise of the kernel's ``UdpRcvbufErrors`` (/proc/net/snmp) - which must stay 0 now that both ends
size their buffers for the window they negotiate.

``--many N`` then times N gets and N puts of small files back to back, each from a new port (a PXE
loader's or a script's pattern): transfers per second, and how many failed - a server that keeps a
finished transfer's slot until it gets round to its final ACK refuses them past its per-address cap.

    .venv/bin/python benchmarks/tftp_bench.py                      # 40 MiB, the default cells
    .venv/bin/python benchmarks/tftp_bench.py --size 8 --cells 8192x16,65464x8
    .venv/bin/python benchmarks/tftp_bench.py --cells '' --many 500   # small files back to back only
"""

from __future__ import annotations

import argparse
import io
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CELLS = "512x1,1428x8,8192x8,8192x16,65464x8,65464x16"


def rcvbuf_errors() -> int:
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines() if ln.startswith("Udp:")]
    return int(dict(zip(lines[0], lines[1], strict=True)).get("RcvbufErrors", 0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=float, default=40, help="MiB (the issue's figure: 40)")
    p.add_argument("--cells", default=CELLS, help="blksize x windowsize cells, comma-separated")
    p.add_argument("--timeout", type=float, default=1.0, help="retransmission timeout, both sides")
    p.add_argument("--tmp", default=None, help="directory for the files (default: the system's)")
    p.add_argument("--many", type=int, default=0, help="then N back-to-back gets and puts of small files")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from socklab.apps.tftp.client import TftpClientOptions, tftp_get, tftp_put

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        size = int(args.size * (1 << 20))
        data = os.urandom(size)
        (root / "f.bin").write_bytes(data)
        server = subprocess.Popen([sys.executable, "-m", "socklab", "tftp", "serve", "--root", str(root),
                                   "--port", "0", "--create", "--allow-write", "--timeout", str(args.timeout),
                                   "--max-retries", "50"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                  env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
        try:
            assert server.stdout is not None
            m = re.search(r"udp://127\.0\.0\.1:(\d+)", server.stdout.readline())
            if m is None:
                raise SystemExit("the server did not start")
            port = int(m.group(1))
            print(f"TFTP on loopback, {args.size:g} MiB, socklab client -> socklab tftp serve "
                  f"(timeout {args.timeout:g} s)" if args.cells else "TFTP on loopback -> socklab tftp serve")
            if args.cells:
                print(f"  {'cell':>10s}  {'op':>3s}  {'seconds':>8s}  {'MB/s':>8s}  {'window':>6s}  "
                      f"{'retrans':>7s}  {'RcvbufErrors':>12s}")
            for cell in filter(None, args.cells.split(",")):
                blksize, window = (int(x) for x in cell.split("x"))
                opts = TftpClientOptions(blksize=blksize, windowsize=window, timeout=args.timeout, max_retries=50)
                for op in ("get", "put"):
                    drops = rcvbuf_errors()
                    start = time.perf_counter()
                    if op == "get":
                        out = io.BytesIO()
                        res = tftp_get("127.0.0.1", port, "f.bin", out, opts)
                        ok = out.getvalue() == data
                    else:
                        res = tftp_put("127.0.0.1", port, "up.bin", io.BytesIO(data), opts)
                        ok = True
                    elapsed = time.perf_counter() - start
                    if not ok:
                        raise SystemExit(f"data differs ({cell} {op})")
                    print(f"  {cell:>10s}  {op:>3s}  {res.seconds:8.2f}  {size / res.seconds / 1e6:8.1f}  "
                          f"{res.windowsize:6d}  {res.retransmissions:7d}  {rcvbuf_errors() - drops:12d}"
                          + ("" if elapsed < res.seconds + 5 else "  (slow dally)"), flush=True)
            if args.cells and (root / "up.bin").read_bytes() != data:
                raise SystemExit("the last upload differs")
            if args.many:
                many(root, port, args.many, args.timeout)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def many(root: Path, port: int, n: int, timeout: float) -> None:
    """``n`` gets, then ``n`` puts, of small files (0 to 1,099 bytes) back to back.

    Two clients: a lock-step one on a raw socket, a new port per file (kept so the figures compare
    with the earlier runs, when socklab's own ``tftp_get`` waited a timeout after each download), and
    tftp-hpa's ``tftp`` asking for all of them from one port in one invocation (``get a b c...``).
    """
    import shutil
    import socket

    from socklab.protocols import tftp

    small = {f"s{i}": bytes([i % 251]) * (i * 7 % 1100) for i in range(n)}
    for name, data in small.items():
        (root / name).write_bytes(data)

    def lockstep(op: str, name: str, data: bytes) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(max(5.0, timeout * 5))  # no retransmission: a dropped request waits here
            sock.sendto(tftp.encode_packet(tftp.Request(name, "octet", {}, write=op == "put")), ("127.0.0.1", port))
            got, block = b"", 1
            while True:
                raw, tid = sock.recvfrom(65536)
                packet = tftp.parse_packet(raw)
                if isinstance(packet, tftp.Error):
                    return False
                if op == "get" and isinstance(packet, tftp.Data):
                    got += packet.payload
                    sock.sendto(tftp.encode_packet(tftp.Ack(packet.block)), tid)
                    if len(packet.payload) < 512:
                        return got == data
                elif op == "put" and isinstance(packet, tftp.Ack):
                    if packet.block == block:
                        return True
                    sock.sendto(tftp.encode_packet(tftp.Data(1, data[:511])), tid)

    print(f"  {n} small files back to back")
    for op in ("get", "put"):
        failed, start = 0, time.perf_counter()
        for name, data in small.items():
            try:
                failed += not lockstep(op, name if op == "get" else f"u{name}", data)
            except OSError:  # timed out: a request the server dropped
                failed += 1
        elapsed = time.perf_counter() - start
        print(f"  lock-step {op}, a new port each: {n / elapsed:7.0f} transfers/s  ({elapsed:6.2f} s)  "
              f"failed {failed}", flush=True)
    if shutil.which("tftp") is None:
        return
    with tempfile.TemporaryDirectory() as work:
        for op in ("get", "put"):
            names = list(small) if op == "get" else [str(root / name) for name in small]
            start = time.perf_counter()
            tail = [] if op == "get" else ["hpa"]
            (root / "hpa").mkdir(exist_ok=True)
            try:
                r = subprocess.run(["tftp", "127.0.0.1", str(port), "-m", "octet", "-c", op, *names, *tail],
                                   cwd=work, capture_output=True, text=True, timeout=30, check=False)
                note = f"  ({r.stderr.strip()[:60]})" if r.returncode else ""
            except subprocess.TimeoutExpired:
                note = "  (stopped after 30 s)"
            elapsed = time.perf_counter() - start
            done = sum(1 for name in small if (Path(work) / name if op == "get" else root / "hpa" / name).exists())
            print(f"  tftp-hpa {op} of {n} files, one port:  {done / elapsed:7.0f} transfers/s  ({elapsed:6.2f} s)  "
                  f"not done {n - done}{note}", flush=True)


if __name__ == "__main__":
    main()
