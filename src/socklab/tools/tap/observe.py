"""What the tap does with the traffic it relays: print it, capture it as pcapng, record it.

Why this exists: each view is an :class:`~socklab.tools.tap.events.Observer`, so the relay stays one
loop and the views combine freely (``--hexdump --pcap f.pcapng --record s.jsonl``).

- :class:`DumpObserver`: a hexdump or text view with direction markers (``>>`` client to server,
  ``<<`` server to client) and timestamps, plus one line per injected fault.
- :class:`PcapObserver`: a pcapng capture with synthesized headers (:mod:`socklab.protocols.pcap`),
  each fault as a packet comment on the next packet of its connection.
- :class:`RecordObserver`: JSON lines (one per chunk, base64) that ``socklab tap replay`` replays.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import string
import sys
import threading
import time
from typing import IO, Any

from socklab.core.trace import format_addr
from socklab.protocols.pcap import PcapngWriter, TcpFlow, udp_frame
from socklab.protocols.text import escape_peer_text
from socklab.tools.tap.events import UPSTREAM, ConnInfo, Observer

__all__ = ["DumpObserver", "PcapObserver", "RecordObserver", "hexdump"]

_PRINTABLE = set(string.printable.encode()) - set(b"\t\n\r\x0b\x0c")


def hexdump(data: bytes, width: int = 16) -> list[str]:
    """``offset  hex bytes  |ascii|`` lines, as ``hexdump -C`` prints them."""
    lines = []
    for off in range(0, len(data), width):
        chunk = data[off:off + width]
        hexpart = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if b in _PRINTABLE else "." for b in chunk)
        lines.append(f"{off:08x}  {hexpart:<{width * 3 - 1}}  |{text}|")
    return lines


class DumpObserver(Observer):
    """Prints traffic and faults.

    Args:
        stream: where to print (stdout in the CLI).
        mode: ``"hex"``, ``"text"`` or ``"none"`` (faults and connection lines only).
    """

    def __init__(self, stream: IO[str], mode: str = "hex") -> None:
        self.stream, self.mode = stream, mode
        self.wants_data = mode != "none"
        self.t0 = time.monotonic()
        self._lock = threading.Lock()

    def _line(self, text: str) -> None:
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    def _stamp(self) -> str:
        return f"+{time.monotonic() - self.t0:10.6f}"

    def opened(self, conn: ConnInfo) -> None:
        faults = ", ".join(conn.plan.describe()) or "no fault"
        kind = "udp flow" if conn.udp else "connection"
        self._line(f"{self._stamp()} #{conn.index} {kind} {format_addr(conn.client)} -> "
                   f"{format_addr(conn.server)} ({faults})")

    def data(self, conn: ConnInfo, direction: str, data: bytes) -> None:
        if self.mode == "none":
            return
        arrow = ">>" if direction == UPSTREAM else "<<"
        head = f"{self._stamp()} #{conn.index} {arrow} {len(data)} bytes"
        if self.mode == "text":
            # the peers' bytes, as text a terminal shows but never obeys: ESC, CR, bidi escaped
            # (a CRLF line end is just an end of line)
            body = data.decode("utf-8", errors="backslashreplace")
            lines = body.split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            shown = (escape_peer_text(ln[:-1] if ln.endswith("\r") else ln) for ln in lines)
            self._line(head + "\n" + "\n".join(f"  {arrow} {ln}" for ln in shown))
        else:
            self._line(head + "\n" + "\n".join("  " + ln for ln in hexdump(data)))

    def fault(self, conn: ConnInfo, direction: str, kind: str, text: str) -> None:
        self._line(f"{self._stamp()} #{conn.index} !! fault {direction}: {text}")

    def closed(self, conn: ConnInfo, direction: str, how: str) -> None:
        who = "client" if direction == UPSTREAM else "server"
        what = "sent FIN (finished sending)" if how == "fin" else "connection reset (RST)"
        self._line(f"{self._stamp()} #{conn.index} -- {who} {what}")


class PcapObserver(Observer):
    """Writes a pcapng capture of everything relayed; tshark and Wireshark read it.

    Args:
        path: the capture file (overwritten); ``"-"``: stdout, flushed after every block, so a
            reader of the pipe (``tshark -r -``, ``wireshark -k -i -``) sees each packet as it
            passes. A reader that goes away stops the capture, not the tap.
    """

    def __init__(self, path: str) -> None:
        self.writer = PcapngWriter()
        self.stdout = path == "-"
        self.file: IO[bytes] = sys.stdout.buffer if self.stdout else open(path, "wb")  # noqa: SIM115
        self.broken = False
        self._lock = threading.Lock()
        self._put(self.writer.header())
        self.flows: dict[int, TcpFlow] = {}
        self.pending: dict[int, list[str]] = {}
        self.closed_dirs: dict[int, set[str]] = {}

    def _put(self, block: bytes) -> None:
        """Write one block and flush it (a pipe's reader sees whole blocks only)."""
        with self._lock:
            if self.broken or self.file.closed:
                return
            try:
                self.file.write(block)
                self.file.flush()
            except BrokenPipeError:
                self.broken = True
                print("socklab tap: the capture's reader went away; capture stopped, relaying goes on",
                      file=sys.stderr, flush=True)
                if self.stdout:  # so that the interpreter's last flush of stdout fails silently
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, sys.stdout.fileno())
                    os.close(devnull)

    def _write(self, conn: ConnInfo, frames: list[bytes]) -> None:
        comments = self.pending.pop(conn.index, None)
        ts = time.time()
        blocks = [self.writer.packet(frame, ts, "; ".join(comments) if (comments and i == 0) else None)
                  for i, frame in enumerate(frames)]
        self._put(b"".join(blocks))

    def _flow(self, conn: ConnInfo) -> TcpFlow:
        flow = self.flows.get(conn.index)
        if flow is None:
            flow = self.flows[conn.index] = TcpFlow(conn.client, conn.server)
        return flow

    def opened(self, conn: ConnInfo) -> None:
        if not conn.udp:
            self._write(conn, self._flow(conn).handshake())

    def data(self, conn: ConnInfo, direction: str, data: bytes) -> None:
        if conn.udp:
            src, dst = (conn.client, conn.server) if direction == UPSTREAM else (conn.server, conn.client)
            self._write(conn, [udp_frame(src, dst, data)])
        else:
            self._write(conn, self._flow(conn).data(direction == UPSTREAM, data))

    def fault(self, conn: ConnInfo, direction: str, kind: str, text: str) -> None:
        self.pending.setdefault(conn.index, []).append(f"socklab tap fault ({direction}): {text}")
        if kind == "down" and not conn.udp and conn.index not in self.flows:
            flow = self._flow(conn)  # show the refused connection: handshake, then the RST
            self._write(conn, flow.handshake() + flow.rst(False))

    def closed(self, conn: ConnInfo, direction: str, how: str) -> None:
        if conn.udp:
            return
        done = self.closed_dirs.setdefault(conn.index, set())
        if "rst" in done or direction in done:
            return
        flow = self._flow(conn)
        from_client = direction == UPSTREAM
        if how == "rst":
            done.add("rst")
            self._write(conn, flow.rst(from_client))
        else:
            done.add(direction)
            self._write(conn, flow.fin(from_client))

    def close(self) -> None:
        with self._lock:
            if self.stdout:
                if not self.broken:
                    with contextlib.suppress(OSError):
                        self.file.flush()
            elif not self.file.closed:
                self.file.close()


class RecordObserver(Observer):
    """Records each connection's chunks as JSON lines for ``socklab tap replay``.

    One object per line: ``{"conn": 0, "event": "open", "client": ..., "server": ...}``, then
    ``{"conn": 0, "dir": "up"|"down", "t": seconds, "data": base64}``, and
    ``{"conn": 0, "event": "fin"|"rst", "dir": ...}``.
    """

    def __init__(self, path: str) -> None:
        self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.t0: dict[int, float] = {}
        self._lock = threading.Lock()

    def _emit(self, obj: dict[str, Any]) -> None:
        with self._lock:
            self.file.write(json.dumps(obj, separators=(",", ":")) + "\n")
            self.file.flush()

    def opened(self, conn: ConnInfo) -> None:
        self.t0[conn.index] = time.monotonic()
        self._emit({"conn": conn.index, "event": "open", "udp": conn.udp, "client": format_addr(conn.client),
                    "server": format_addr(conn.server)})

    def data(self, conn: ConnInfo, direction: str, data: bytes) -> None:
        t = time.monotonic() - self.t0.get(conn.index, time.monotonic())
        self._emit({"conn": conn.index, "dir": "up" if direction == UPSTREAM else "down", "t": round(t, 6),
                    "data": base64.b64encode(data).decode()})

    def closed(self, conn: ConnInfo, direction: str, how: str) -> None:
        self._emit({"conn": conn.index, "event": how, "dir": "up" if direction == UPSTREAM else "down"})

    def close(self) -> None:
        with self._lock:
            if not self.file.closed:
                self.file.close()

