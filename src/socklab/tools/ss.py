"""``socklab ss``: every socket on the machine with its state, queues and owner - and what it means.

Why this exists: ``ss``/``netstat`` answer "what is listening, who is connected, who owns it",
but leave the reader to know what ``CLOSE_WAIT`` or a full Recv-Q says about a program. This
tool reads the same kernel tables (``/proc/net/tcp``, ``tcp6``, ``udp``, ``udp6``, ``unix``),
maps socket inodes to processes through ``/proc/<pid>/fd``, labels sockets that belong to a
running socklab server (from :mod:`socklab.runtime.registry`), and with ``--explain`` says what
each state means and warns about the patterns that usually reveal a bug.

Pure Python, no root: another user's processes just show no pid.

It keeps raw sockets on purpose (issue 18: clients use :mod:`socklab.runtime.client`): it reads the
kernel's tables and probes sockets itself, which is its whole job.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import struct
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import click

from socklab.cli.options import run_cli
from socklab.core.errors import UsageError
from socklab.core.trace import TCP_STATES

__all__ = ["SocketEntry", "explain_entries", "list_sockets", "listen_backlogs", "parse_proc_net", "parse_proc_unix",
           "ss"]

PROC = "/proc"

# What each TCP state means (RFC 9293 section 3.3.2), for --explain.
STATE_MEANING = {
    "LISTEN": "waiting for connections: a server called listen(); Recv-Q is the accept queue, Send-Q its "
              "limit (the backlog)",
    "SYN_SENT": "connect() sent SYN and waits for SYN-ACK (stuck here: a firewall drops the SYN, or the host is down)",
    "SYN_RECV": "a SYN arrived and we answered SYN-ACK; waiting for the client's ACK",
    "ESTABLISHED": "connected: data flows both ways",
    "FIN_WAIT1": "we sent FIN (close or shutdown) and wait for its ACK",
    "FIN_WAIT2": "our FIN was acknowledged; waiting for the peer's FIN (the peer has not closed yet)",
    "TIME_WAIT": "we closed first and both FINs passed; the kernel keeps the pair ~60 s so late packets of this "
                 "connection cannot be mistaken for a new one. Normal.",
    "CLOSE": "closed, not yet released",
    "CLOSE_WAIT": "the PEER closed (sent FIN) and our application has not called close() yet",
    "LAST_ACK": "we closed after the peer did; waiting for the ACK of our FIN",
    "CLOSING": "both sides sent FIN at the same time",
    "UNCONN": "a UDP socket without a default peer (a server, or a client using sendto())",
}


@dataclass
class SocketEntry:
    """One socket as ``ss`` shows it."""

    proto: str  # tcp, tcp6, udp, udp6, unix
    state: str
    local: str
    peer: str
    local_port: int
    peer_port: int
    recv_q: int
    send_q: int
    inode: int
    pid: int | None = None
    program: str | None = None
    socklab: str | None = None  # "echo (engine epoll)" for sockets of socklab servers
    detail: str | None = None  # what the app says about this connection (a chat nick...)


def _decode_addr(text: str) -> tuple[str, int]:
    """``0100007F:1F90`` -> ("127.0.0.1", 8080); IPv6 words are in host byte order."""
    host_hex, port_hex = text.split(":")
    # the kernel prints each 32-bit word of the address as a host-order integer
    raw = b"".join(struct.pack("=I", int(host_hex[i:i + 8], 16)) for i in range(0, len(host_hex), 8))
    if len(raw) == 4:
        host = str(ipaddress.IPv4Address(raw))
    else:
        ip6 = ipaddress.IPv6Address(raw)
        host = f"::ffff:{ip6.ipv4_mapped}" if ip6.ipv4_mapped else str(ip6)
    return host, int(port_hex, 16)


def _fmt(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::") and port == 0:
        return "*:*"
    h = "*" if host in ("0.0.0.0", "::") else host
    return f"[{h}]:{port}" if ":" in h else f"{h}:{port}"


def parse_proc_net(text: str, proto: str, port: int | None = None) -> list[SocketEntry]:
    """Parse ``/proc/net/{tcp,tcp6,udp,udp6}``.

    Args:
        text: the file's content.
        proto: ``tcp``, ``tcp6``, ``udp`` or ``udp6``.
        port: keep only sockets with this local or peer port (skips decoding the others: a busy
            machine has tens of thousands of TIME_WAIT lines).
    """
    out = []
    want = None if port is None else f"{port:04X}"
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10:
            continue
        if want is not None and not (f[1].endswith(want) or f[2].endswith(want)):
            continue
        try:
            lhost, lport = _decode_addr(f[1])
            rhost, rport = _decode_addr(f[2])
            st = int(f[3], 16)
            tx, rx = (int(x, 16) for x in f[4].split(":"))
            inode = int(f[9])
        except (ValueError, struct.error):
            continue
        if proto.startswith("udp"):
            state = "ESTABLISHED" if st == 1 else "UNCONN"
        else:
            state = TCP_STATES.get(st, f"STATE_{st}")
        out.append(SocketEntry(proto, state, _fmt(lhost, lport), _fmt(rhost, rport), lport, rport,
                               rx, tx, inode))
    return out


def parse_proc_unix(text: str) -> list[SocketEntry]:
    """Parse ``/proc/net/unix`` (no queues or peers are exposed there)."""
    out = []
    types = {1: "stream", 2: "dgram", 5: "seqpacket"}
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 7:
            continue
        try:
            flags, typ, st, inode = int(f[3], 16), int(f[4], 16), int(f[5], 16), int(f[6])
        except ValueError:
            continue
        path = f[7] if len(f) > 7 else ""
        if flags & 0x10000:
            state = "LISTEN"
        elif st == 3:
            state = "ESTABLISHED"
        else:
            state = "UNCONN"
        out.append(SocketEntry(f"unix/{types.get(typ, typ)}", state, path or "*", "*", 0, 0, 0, 0, inode))
    return out


def _inode_owners() -> dict[int, int]:
    """Socket inode -> pid, from the ``socket:[N]`` links in ``/proc/<pid>/fd``."""
    owners: dict[int, int] = {}
    for name in os.listdir(PROC):
        if not name.isdigit():
            continue
        fd_dir = f"{PROC}/{name}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owners.setdefault(int(target[8:-1]), int(name))
    return owners


def _program(pid: int, cache: dict[int, str]) -> str:
    if pid not in cache:
        try:
            with open(f"{PROC}/{pid}/comm", encoding="utf-8", errors="replace") as f:
                cache[pid] = f.read().strip()
        except OSError:
            cache[pid] = "?"
    return cache[pid]


def _label(entries: list[SocketEntry]) -> None:
    from socklab.runtime.registry import read_servers

    servers = read_servers()
    if not servers:
        return
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for s in servers:
        by_pid.setdefault(int(s["pid"]), []).append(s)
    for e in entries:
        if e.pid is None or e.pid not in by_pid:
            continue
        for s in by_pid[e.pid]:
            ports = {a.rsplit(":", 1)[-1] for a in s.get("addresses", []) if ":" in a}
            paths = {a for a in s.get("addresses", []) if a.startswith("/")}
            if str(e.local_port) in ports or e.local in paths or len(by_pid[e.pid]) == 1:
                e.socklab = f"{s.get('app', '?')} (engine {s.get('engine', '?')})"
                extra = s.get("extra") or {}
                peers = extra.get("peers") or {}
                if e.peer in peers:
                    e.detail = str(peers[e.peer])
                elif e.state == "LISTEN":
                    info = {k: v for k, v in extra.items() if k != "peers"}
                    e.detail = ", ".join(f"{k}={v}" for k, v in info.items()) or None
                break


def listen_backlogs(families: tuple[int, ...] = (2, 10)) -> dict[int, tuple[int, int]]:
    """Listening TCP sockets' queues by inode: ``(accept queue length, backlog)``, as ``ss`` shows them.

    ``/proc/net/tcp`` prints a listener's accept queue but not its backlog (its tx_queue column
    is 0), so Send-Q would read 0. ``ss`` asks the kernel over netlink (``NETLINK_SOCK_DIAG``,
    ``inet_diag``): for a listener ``idiag_rqueue`` is the accept queue and ``idiag_wqueue`` the
    backlog given to ``listen()`` (capped by ``net.core.somaxconn``). Returns ``{}`` where netlink
    is not available.
    """
    import socket

    out: dict[int, tuple[int, int]] = {}
    for family in families:
        try:
            with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4) as nl:  # 4: NETLINK_SOCK_DIAG
                nl.settimeout(5)
                # inet_diag_req_v2: family, IPPROTO_TCP, no extensions, pad, states = 1 << TCP_LISTEN(10)
                req = struct.pack("=BBBBI", family, 6, 0, 0, 1 << 10) + bytes(48)
                # nlmsghdr: SOCK_DIAG_BY_FAMILY (20), NLM_F_REQUEST | NLM_F_DUMP
                nl.sendall(struct.pack("=IHHII", 16 + len(req), 20, 0x301, 1, 0) + req)
                done = False
                while not done:
                    data = nl.recv(65536)
                    if not data:
                        break
                    offset = 0
                    while offset + 16 <= len(data):
                        length, kind = struct.unpack_from("=IH", data, offset)
                        if length < 16 or kind in (2, 3):  # NLMSG_ERROR, NLMSG_DONE
                            done = True
                            break
                        if length >= 16 + 72:
                            rqueue, wqueue, _uid, inode = struct.unpack_from("=IIII", data, offset + 16 + 56)
                            out[inode] = (rqueue, wqueue)
                        offset += (length + 3) & ~3
        except OSError:
            continue
    return out


def list_sockets(kinds: tuple[str, ...] = ("tcp", "tcp6", "udp", "udp6", "unix"), *,
                 with_pids: bool = True, port: int | None = None) -> list[SocketEntry]:
    """Every socket of the kinds asked (only those on ``port`` when given), with owners and labels."""
    entries: list[SocketEntry] = []
    for kind in kinds:
        try:
            with open(f"{PROC}/net/{kind}", encoding="ascii", errors="replace") as f:
                text = f.read()
        except OSError:
            continue  # no IPv6 on this machine, say
        if kind == "unix":
            entries.extend(parse_proc_unix(text) if port is None else [])
        else:
            entries.extend(parse_proc_net(text, kind, port))
    listeners = [e for e in entries if e.state == "LISTEN" and e.proto.startswith("tcp")]
    if listeners:
        families = tuple(sorted({10 if e.proto == "tcp6" else 2 for e in listeners}))
        queues = listen_backlogs(families)
        for e in listeners:
            if e.inode in queues:
                e.recv_q, e.send_q = queues[e.inode]
    if with_pids:
        owners = _inode_owners()
        names: dict[int, str] = {}
        for e in entries:
            pid = owners.get(e.inode) if e.inode else None
            if pid is not None:
                e.pid, e.program = pid, _program(pid, names)
        _label(entries)
    return entries


def explain_entries(entries: list[SocketEntry]) -> list[str]:
    """What the states shown mean, and warnings about what usually signals a bug."""
    lines = []
    states = Counter(e.state for e in entries)
    for state in sorted(states):
        if state in STATE_MEANING:
            lines.append(f"{state} ({states[state]}): {STATE_MEANING[state]}")
    close_wait = Counter(e.pid for e in entries if e.state == "CLOSE_WAIT")
    for pid, n in close_wait.items():
        who = f"pid {pid}" if pid else "an unknown process"
        lines.append(f"WARNING: {n} socket(s) of {who} in CLOSE_WAIT: the peer closed but the application never "
                     "called close() - a leak if they pile up (check the code path after recv() returns 0)")
    tw = states.get("TIME_WAIT", 0)
    if tw >= 100:
        lines.append(f"WARNING: {tw} sockets in TIME_WAIT: many short connections closed by this side; reuse "
                     "connections (keep-alive, pooling) or let the client close first")
    for e in entries:
        if e.state == "LISTEN" and e.proto.startswith("tcp") and e.send_q and e.recv_q >= e.send_q:
            lines.append(f"WARNING: {e.local} accept queue full ({e.recv_q}/{e.send_q}): the server does not "
                         "accept() fast enough; new SYNs are dropped")
        elif e.state == "ESTABLISHED" and e.recv_q >= 64 * 1024:
            lines.append(f"WARNING: {e.local} <- {e.peer} has {e.recv_q} unread bytes (Recv-Q): the application "
                         "does not read; the peer will soon be blocked by TCP flow control")
        elif e.state == "ESTABLISHED" and e.send_q >= 256 * 1024:
            lines.append(f"note: {e.local} -> {e.peer} has {e.send_q} unacknowledged bytes (Send-Q): the peer "
                         "reads slowly or the network is slow")
    return lines


def _filter(entries: list[SocketEntry], *, listening: bool, port: int | None, states: tuple[str, ...],
            pid: int | None, socklab_only: bool) -> list[SocketEntry]:
    wanted = {s.upper().replace("-", "_") for s in states}
    out = []
    for e in entries:
        if listening and e.state not in ("LISTEN", "UNCONN"):
            continue
        if port is not None and port not in (e.local_port, e.peer_port):
            continue
        if wanted and e.state not in wanted:
            continue
        if pid is not None and e.pid != pid:
            continue
        if socklab_only and e.socklab is None:
            continue
        out.append(e)
    return out


def _table(entries: list[SocketEntry]) -> Any:
    from rich.table import Table
    from rich.text import Text

    from socklab.protocols.text import escape_peer_text

    def cell(text: str) -> Text:
        # Unix socket paths, program names and what apps say about a connection (a chat nick a
        # peer chose) are other people's text: controls escaped visibly, never read as markup.
        return Text(escape_peer_text(text))

    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("Proto", "State", "Recv-Q", "Send-Q", "Local", "Peer", "Process", "socklab"):
        table.add_column(col, justify="right" if col.endswith("-Q") else "left", overflow="fold")
    for e in entries:
        proc = f"{e.program}/{e.pid}" if e.pid else ""
        label = e.socklab or ""
        if e.detail:
            label = f"{label}: {e.detail}" if label else e.detail
        style = "yellow" if e.state == "CLOSE_WAIT" else None
        table.add_row(e.proto, e.state, str(e.recv_q), str(e.send_q), cell(e.local), cell(e.peer), cell(proc),
                      cell(label), style=style)
    return table


@click.command()
@click.option("--listening", "-l", is_flag=True, help="Only listening (TCP) and unconnected (UDP) sockets.")
@click.option("--tcp", "-t", is_flag=True, help="TCP sockets.")
@click.option("--udp", "-u", is_flag=True, help="UDP sockets.")
@click.option("--unix", "-x", is_flag=True, help="Unix domain sockets.")
@click.option("-4", "ipv4", is_flag=True, help="Only IPv4.")
@click.option("-6", "ipv6", is_flag=True, help="Only IPv6.")
@click.option("--port", "-p", type=int, default=None, help="Local or peer port.")
@click.option("--state", "-s", "states", multiple=True, metavar="STATE",
              help="Only this state (repeatable): LISTEN, ESTABLISHED, TIME_WAIT, CLOSE_WAIT...")
@click.option("--pid", type=int, default=None, help="Only sockets of this process.")
@click.option("--socklab", "socklab_only", is_flag=True, help="Only sockets of running socklab servers.")
@click.option("--watch", "-w", type=float, default=None, metavar="SECONDS", is_flag=False, flag_value=1.0,
              help="Refresh a live table every SECONDS (default 1) until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of sockets.")
@click.option("--explain", is_flag=True, help="Say what each state shown means and warn about likely bugs.")
@run_cli
def ss(listening: bool, tcp: bool, udp: bool, unix: bool, ipv4: bool, ipv6: bool, port: int | None,
       states: tuple[str, ...], pid: int | None, socklab_only: bool, watch: float | None, as_json: bool,
       explain: bool) -> None:
    """Sockets with their states, queues and owners; socklab servers labelled with app and engine.

    \b
    Examples:
      socklab ss -lt                       # what listens on TCP
      socklab ss --port 8080 --explain     # who talks to 8080, and what the states mean
      socklab ss -s CLOSE_WAIT --watch     # watch a leak grow
      socklab ss --socklab --json
    """
    if ipv4 and ipv6:
        raise UsageError("-4 and -6 together show nothing; leave both out for both families")
    if not (tcp or udp or unix):
        tcp = udp = True
        unix = not (ipv4 or ipv6 or port is not None)
    kinds: list[str] = []
    for on, name in ((tcp, "tcp"), (udp, "udp")):
        if on:
            if not ipv6:
                kinds.append(name)
            if not ipv4:
                kinds.append(name + "6")
    if unix and not (ipv4 or ipv6):
        kinds.append("unix")

    def snapshot() -> list[SocketEntry]:
        return _filter(list_sockets(tuple(kinds), port=port), listening=listening, port=port, states=states, pid=pid,
                       socklab_only=socklab_only)

    if as_json:
        click.echo(json.dumps([asdict(e) for e in snapshot()], indent=1))
        return
    from rich.console import Group
    from rich.text import Text

    from socklab.cli.output import print_rich, stdout_console

    console = stdout_console()

    def render() -> Any:
        entries = snapshot()
        parts: list[Any] = [_table(entries)]
        if explain:
            parts.extend(Text(line, style="yellow" if line.startswith("WARNING") else "") for line in
                         ["", *explain_entries(entries)])
        parts.append(Text(f"{len(entries)} sockets", style="dim"))
        return Group(*parts)

    if watch is None:
        print_rich(render())
        return
    from rich.live import Live

    with Live(render(), console=console, refresh_per_second=4, screen=False) as live:
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(max(0.1, watch))
                live.update(render())

