"""From system calls to the socket lifecycle, with the mistakes a learner makes named as they happen.

Why this exists: strace reports every call of every thread; a learner wants to see *their
sockets*: which socket was created, bound, connected or accepted, how many bytes each send and
recv moved, when FIN went out, and where the program did something that bites later. This
module keeps, per process, a table of its socket file descriptors (shared by its threads, copied
on fork, pruned on exec) and turns each :class:`Syscall` into a :class:`SockEvent`. Pure: no
process, no file; whatever the kernel can say *now* (who holds a port) comes in through
``probe``.

The TCP state shown is the one the calls imply, by the table of
:mod:`socklab.tools.tracing.tcp_state` (which call means which step is decided here); where the
kernel's TCP table reports a state the network alone has moved the socket to since, that wins
(``kernel_state``), and the JSON line says which (``state_from``: ``calls`` or ``kernel``).

Mistake notes: recv returned 0 and the program kept reading; a partial send whose rest was never
sent (the return value ignored); EADDRINUSE and why; a socket left in CLOSE_WAIT at exit; a
blocking call without a timeout that waited long; connection refused and reset.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from socklab.tools.tracing.decode import (
    FD_ARG,
    IOV_LEN,
    TIME_OPTIONS,
    parse_annotation,
    parse_sockaddr,
    preview,
    to_int,
)
from socklab.tools.tracing.events import RECV_CALLS, SEND_CALLS, SockEvent
from socklab.tools.tracing.multiplex import MULTIPLEX_CALLS, describe, ready_fds
from socklab.tools.tracing.sockinfo import SockInfo
from socklab.tools.tracing.strace_parse import ProcessEnd, StraceEvent, Syscall, split_args, unquote
from socklab.tools.tracing.tcp_state import Step, TcpState, network_move

__all__ = ["SLOW_CALL", "STRACE_CALLS", "Lifecycle", "SockInfo"]

# What strace must trace for this module (its -e trace= list).
STRACE_CALLS = ("%network", "close", "read", "write", "readv", "writev", "sendfile", "dup", "dup2", "dup3",
                "fcntl", "ioctl", "clone", "clone3", "fork", "vfork", "execve", *sorted(MULTIPLEX_CALLS))
SLOW_CALL = 1.0  # seconds a blocking call may wait before it gets a note

# errors by which a connect (blocking, or finished later) says it failed
CONNECT_ERRORS = frozenset({"ECONNREFUSED", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH", "ECONNABORTED"})

_REFUSED = ("connection refused: nothing listens on that address (its host answered the SYN with RST); is the "
            "server running, on this port and address?")
_WAIT_LIMIT = re.compile(r" \((?:up to [0-9.e+-]+ s|no timeout)\)")
Probe = Callable[[str, str], str | None]  # (proto, "host:port") -> what the kernel says now


class Lifecycle:
    """Feeds on strace events, returns socket events.

    Args:
        probe: asked ``(proto, address)`` when a bind fails with EADDRINUSE; answers one sentence
            about who holds the address now (or ``None``).
        slow: seconds a blocking call may wait before a note says it had no timeout.
    """

    def __init__(self, probe: Probe | None = None, slow: float = SLOW_CALL) -> None:
        self.probe = probe
        self.slow = slow
        self.tables: dict[int, dict[int, SockInfo]] = {}  # tgid -> fd -> socket
        self.tgid: dict[int, int] = {}  # thread id -> its process
        self.comm: dict[int, str] = {}
        self.epolls: dict[int, dict[int, set[int]]] = {}  # pid -> epoll fd -> socket fds watched
        self._last_wait: dict[int, str] = {}  # thread -> the last wait shown

    def feed(self, ev: StraceEvent) -> list[SockEvent]:
        """The socket events one strace event means (often none: a file read, a getsockname)."""
        if ev.comm:
            self.comm[ev.pid] = ev.comm
        if isinstance(ev, ProcessEnd):
            return self._process_end(ev)
        if isinstance(ev, Syscall):
            return self._syscall(ev)
        return []

    def finish(self) -> list[SockEvent]:
        """At the end of the trace: notes for any process whose end strace did not report."""
        out: list[SockEvent] = []
        for pid in list(self.tables):
            out.extend(self._leftovers(pid, None, pid))
        return out

    def open_tcp(self) -> list[tuple[int, int, SockInfo]]:
        """(pid, fd, socket) of every connected TCP socket still open, for a look at the kernel's table."""
        return [(pid, fd, info) for pid, table in self.tables.items() for fd, info in table.items()
                if info.is_tcp and info.local and info.peer]

    def kernel_state(self, pid: int, fd: int, info: SockInfo, state: str, ts: float) -> list[SockEvent]:
        """The kernel reports ``state`` for this socket. Where the network alone can have moved it
        there from the state the calls implied (the peer's ACK, its FIN, the handshake's end), later
        lines show the kernel's state. Seen twice in a row (the program had time to react): a note
        when it says something the calls have not shown yet."""
        moved = network_move(info.tcp, state) if info.is_tcp else None
        if moved is not None or state == info.state:
            info.tcp, info.state_from = moved or info.tcp, "kernel"
        previous, info.kernel_state = info.kernel_state, state
        if state != previous or info.kernel_said:
            return []
        if state == "CLOSE_WAIT" and not info.eof:
            info.kernel_said = True
            return [SockEvent(ts=ts, op="note", pid=pid, tid=pid, comm=self._name(pid), fd=fd, proto=info.proto,
                              local=info.local, peer=info.peer, state=state, state_from="kernel",
                              detail="the kernel reports CLOSE_WAIT: the peer closed its side (its FIN arrived) "
                                     "and this program has not read to the end yet; until it reads (recv returns "
                                     "0) and calls close(), the socket stays in CLOSE_WAIT")]
        return []

    # ---- processes and fds -------------------------------------------------------------------------
    def _pid(self, tid: int) -> int:
        return self.tgid.get(tid, tid)

    def _table(self, tid: int) -> dict[int, SockInfo]:
        return self.tables.setdefault(self._pid(tid), {})

    def _name(self, tid: int) -> str:
        return self.comm.get(self._pid(tid)) or self.comm.get(tid) or "?"

    def _event(self, sc: Syscall, op: str, fd: int | None, info: SockInfo | None, **kw: object) -> SockEvent:
        ev = SockEvent(ts=sc.ts + (sc.dur or 0.0), op=op, pid=self._pid(sc.pid), tid=sc.pid,
                       comm=self._name(sc.pid), fd=fd, dur=sc.dur, errno=sc.errno)
        if info is not None:
            ev.proto, ev.local, ev.peer = info.proto, info.local, info.peer
            if info.is_tcp:
                ev.state, ev.state_from = info.state, info.state_from
        for k, v in kw.items():
            setattr(ev, k, v)
        if sc.errno and (sc.errno == "EINTR" or sc.errno.startswith("ERESTART")) and "detail" not in kw:
            ev.detail = "interrupted by a signal (EINTR): the call is restarted, or the program handles the signal"
        elif sc.errno and not ev.detail:
            ev.detail = f"failed: {sc.errno} ({sc.errmsg})"
        return ev

    def _fd_info(self, sc: Syscall, arg: str) -> tuple[int | None, SockInfo | None]:
        """The fd an argument names and its socket (made from the -yy annotation when new)."""
        m = FD_ARG.match(arg.strip())
        if m is None:
            return None, None
        fd = int(m[1])
        table = self._table(sc.pid)
        ann = parse_annotation(m[2])
        info = table.get(fd)
        if ann is None:
            if info is not None and m[2] is not None and not m[2].startswith(("TCP", "UDP", "SCTP")):
                del table[fd]  # the fd now names something else (we missed a close)
                info = None
            return fd, info
        proto, local, peer = ann
        if info is None:
            info = table[fd] = SockInfo(proto=proto, tcp=TcpState.ESTABLISHED if peer and proto.startswith("tcp")
                                        else TcpState.CLOSE)
        info.local = local or info.local
        info.peer = peer or info.peer
        return fd, info

    def _syscall(self, sc: Syscall) -> list[SockEvent]:
        name = sc.name
        args = split_args(sc.args)
        if name in ("clone", "clone3", "fork", "vfork"):
            self._cloned(sc)
            return []
        if name == "execve":
            if sc.value == 0:
                table = self._table(sc.pid)
                for fd in [fd for fd, s in table.items() if s.cloexec]:
                    table.pop(fd).refs -= 1
            return []
        if name == "socket":
            return self._socket(sc, args)
        if name in MULTIPLEX_CALLS:
            self._readiness(sc)
            said = describe(sc, self.epolls.setdefault(self._pid(sc.pid), {}))
            same = _WAIT_LIMIT.sub("", said[1]) if said is not None else None
            if said is None or (said[2] and self._last_wait.get(sc.pid) == same):
                return []  # the same wait timing out again (an idle event loop): said once
            self._last_wait[sc.pid] = same or ""
            return [self._event(sc, said[0], None, None, detail=said[1])]
        if not args:
            return []
        maybe_fd, info = self._fd_info(sc, args[0])
        if maybe_fd is None:
            return []
        fd = maybe_fd
        if name in ("dup", "dup2", "dup3", "fcntl") and info is not None:
            self._dup_or_flags(sc, name, args, info)
            return []
        if name == "ioctl" and info is not None and len(args) > 2 and "FIONBIO" in args[1]:
            info.nonblocking = to_int(args[2]) not in (0, None)
            return []
        if info is None:
            return []
        handler = _HANDLERS.get(name)
        if handler is None:
            if name in SEND_CALLS:
                return self._send(sc, fd, info, args)
            if name in RECV_CALLS:
                return self._recv(sc, fd, info, args)
            return []
        return handler(self, sc, fd, info, args)

    def _readiness(self, sc: Syscall) -> None:
        """A wait said a connecting socket is ready: writable alone is a finished handshake, an
        error (POLLERR/POLLHUP) a failed one; readable and writable at once (select reports a
        failure that way too) proves neither, so the state waits for SO_ERROR or the next call."""
        table = self._table(sc.pid)
        for r in ready_fds(sc):
            info = table.get(r.fd)
            if info is None or info.tcp is not TcpState.SYN_SENT:
                continue
            if r.error:
                info.move(Step.CONNECT_FAILED)
            elif r.writable and (not r.readable or sc.name not in ("select", "pselect6")):
                info.move(Step.CONNECTED)

    def _cloned(self, sc: Syscall) -> None:
        child = sc.value
        if child is None or child <= 0:
            return
        parent = self._pid(sc.pid)
        if "CLONE_THREAD" in sc.args:
            self.tgid[child] = parent
            stray = self.tables.pop(child, None)  # events seen before clone returned
            if stray:
                self.tables.setdefault(parent, {}).update(stray)
            return
        table = self.tables.setdefault(child, {})
        if "CLONE_FILES" in sc.args:
            self.tables[child] = self.tables.setdefault(parent, {})
            return
        for fd, info in self.tables.get(parent, {}).items():
            if fd not in table:
                table[fd] = info
                info.refs += 1

    def _dup_or_flags(self, sc: Syscall, name: str, args: list[str], info: SockInfo) -> None:
        value = sc.value
        if name == "fcntl":
            if len(args) > 1 and args[1].startswith(("F_DUPFD", "F_DUPFD_CLOEXEC")) and value is not None \
                    and value >= 0:
                self._table(sc.pid)[value] = info
                info.refs += 1
            elif len(args) > 2 and args[1] == "F_SETFL":
                info.nonblocking = "O_NONBLOCK" in args[2]
            return
        if value is not None and value >= 0:
            table = self._table(sc.pid)
            old = table.get(value)
            if old is not None and old is not info:
                old.refs -= 1
            table[value] = info
            info.refs += 1

    # ---- the lifecycle calls ---------------------------------------------------------------------
    def _socket(self, sc: Syscall, args: list[str]) -> list[SockEvent]:
        ann = parse_annotation(sc.ret_fd)
        family = args[0] if args else "?"
        if family not in ("AF_INET", "AF_INET6"):
            return []
        kinds = args[1].split("|") if len(args) > 1 else []
        shown = ", ".join([family] + [k for k in kinds if k != "SOCK_CLOEXEC"])
        fd = sc.value
        if fd is None or fd < 0 or ann is None:
            ev = self._event(sc, "socket", None, None, detail=f"{shown} failed: {sc.errno} ({sc.errmsg})")
            return [ev]
        info = SockInfo(proto=ann[0], cloexec="SOCK_CLOEXEC" in kinds, nonblocking="SOCK_NONBLOCK" in kinds)
        self._table(sc.pid)[fd] = info
        return [self._event(sc, "socket", fd, info, detail=shown)]

    def _setsockopt(self, sc: Syscall, fd: int, info: SockInfo, args: list[str]) -> list[SockEvent]:
        opt = args[2] if len(args) > 2 else "?"
        raw = args[3] if len(args) > 3 else ""
        value = to_int(raw)
        if opt in ("SO_REUSEADDR", "SO_REUSEPORT") and value:
            info.reuseaddr = True
        if opt in TIME_OPTIONS:
            info.timeout = "tv_sec=0, tv_usec=0" not in raw
        shown = f"{opt}={value if value is not None else raw}"
        notes = []
        if opt == "SO_LINGER" and not sc.errno:
            info.linger0 = "l_onoff=1" in raw and "l_linger=0" in raw
        if opt == "SO_LINGER" and info.linger0:
            notes.append("SO_LINGER with a zero timeout: close() will send RST instead of FIN (an abortive close)")
        return [self._event(sc, "setsockopt", fd, info, detail=shown, notes=notes)]

    def _getsockopt(self, sc: Syscall, fd: int, info: SockInfo, args: list[str]) -> list[SockEvent]:
        """Only SO_ERROR after a non-blocking connect is shown: it says whether the connect worked."""
        if len(args) < 4 or args[2] != "SO_ERROR" or not info.connecting or sc.errno:
            return []
        info.connecting = False
        err = args[3].strip("[]")
        if err == "0":
            info.move(Step.CONNECTED)
            return [self._event(sc, "getsockopt", fd, info, detail="SO_ERROR=0: the non-blocking connect "
                                "finished (three-way handshake done)")]
        info.move(Step.CONNECT_FAILED)
        return [self._event(sc, "getsockopt", fd, info, detail=f"SO_ERROR={err}: the non-blocking connect failed",
                            notes=[_REFUSED] if err == "ECONNREFUSED" else [])]

    def _bind(self, sc: Syscall, fd: int, info: SockInfo, args: list[str]) -> list[SockEvent]:
        addr = parse_sockaddr(args[1]) if len(args) > 1 else None
        if sc.errno is None:
            info.local = addr if addr and not addr.endswith(":0") else info.local or addr
            return [self._event(sc, "bind", fd, info, detail=addr)]
        notes = []
        if sc.errno == "EADDRINUSE":
            notes.append(self._addrinuse_note(info, addr or "?"))
        elif sc.errno == "EACCES":
            notes.append("EACCES: ports below 1024 need root (or CAP_NET_BIND_SERVICE); use a port >= 1024")
        elif sc.errno == "EADDRNOTAVAIL":
            notes.append("EADDRNOTAVAIL: no interface of this machine has that address; bind 0.0.0.0 or 127.0.0.1")
        return [self._event(sc, "bind", fd, info, detail=f"{addr} failed: {sc.errno} ({sc.errmsg})", notes=notes)]

    def _addrinuse_note(self, info: SockInfo, addr: str) -> str:
        if info.reuseaddr:
            why = ("SO_REUSEADDR was set, so this is not TIME_WAIT: another socket is bound to it or "
                   "listening there; stop that program or choose another port")
        else:
            why = ("SO_REUSEADDR was not set: connections of an earlier run that closed first stay in "
                   "TIME_WAIT for ~60 s and keep the port; set SO_REUSEADDR before bind(); if another "
                   "program is listening there, stop it or choose another port")
        now = self.probe(info.proto, addr) if self.probe is not None else None
        return f"EADDRINUSE: {addr} is in use. {why}" + (f". Now: {now}" if now else "")

    def _listen(self, sc: Syscall, fd: int, info: SockInfo, args: list[str]) -> list[SockEvent]:
        if sc.errno is None:
            info.move(Step.LISTEN)
        backlog = args[1] if len(args) > 1 else "?"
        return [self._event(sc, "listen", fd, info, detail=f"backlog={backlog}")]

    def _accept(self, sc: Syscall, fd: int, info: SockInfo, args: list[str]) -> list[SockEvent]:
        notes = self._slow_notes(sc, info, "accept")
        new = sc.value
        ann = parse_annotation(sc.ret_fd)
        if new is None or new < 0 or ann is None:
            if sc.errno in ("EAGAIN", "EWOULDBLOCK"):
                return []  # a non-blocking accept with nobody waiting: noise
            return [self._event(sc, "accept", fd, info, notes=notes)]
        flags = args[3] if len(args) > 3 else ""
        conn = SockInfo(proto=ann[0], local=ann[1], peer=ann[2], tcp=TcpState.ESTABLISHED,
                        cloexec="SOCK_CLOEXEC" in flags, nonblocking="SOCK_NONBLOCK" in flags, listen_fd=fd)
        self._table(sc.pid)[new] = conn
        return [self._event(sc, "accept", new, conn, detail=f"new fd from listening fd {fd}", notes=notes)]

    def _connect(self, sc: Syscall, fd: int, info: SockInfo, args: list[str]) -> list[SockEvent]:
        addr = parse_sockaddr(args[1]) if len(args) > 1 else None
        info.peer = addr or info.peer
        notes = self._slow_notes(sc, info, "connect")
        if sc.errno is None:
            info.move(Step.CONNECTED)
            detail = ("UDP: only fixes the default peer; nothing is sent" if info.proto.startswith("udp")
                      else "three-way handshake done (SYN, SYN-ACK, ACK)")
        elif sc.errno == "EINPROGRESS":
            info.move(Step.CONNECTING)
            info.connecting = True
            detail = "EINPROGRESS: SYN sent, waiting for writable"
        elif sc.errno == "EALREADY":
            detail = "EALREADY: the earlier connect is still in progress (no answer to the SYN yet)"
        elif sc.errno == "EISCONN" and info.tcp in (TcpState.SYN_SENT, TcpState.ESTABLISHED):
            info.move(Step.CONNECTED)
            detail = "EISCONN: already connected - the non-blocking connect had finished"
        else:
            detail = f"failed: {sc.errno} ({sc.errmsg})"
            if sc.errno in CONNECT_ERRORS:
                info.move(Step.CONNECT_FAILED)
            if sc.errno == "ECONNREFUSED":
                notes.append(_REFUSED)
            elif sc.errno == "ETIMEDOUT":
                notes.append("no answer to the SYN: a firewall drops it, or the host is down")
        return [self._event(sc, "connect", fd, info, detail=detail, notes=notes)]

    def _send(self, sc: Syscall, fd: int, info: SockInfo, args: list[str]) -> list[SockEvent]:
        if sc.errno in ("EAGAIN", "EWOULDBLOCK"):
            return [self._event(sc, sc.name, fd, info, detail="EAGAIN: the send buffer is full; wait for writable")]
        data = unquote(args[1]) if len(args) > 1 and sc.name != "sendfile" else None
        requested = sum(int(n) for n in IOV_LEN.findall(sc.args)) if sc.name in ("writev", "sendmsg") \
            else to_int(args[3] if sc.name == "sendfile" and len(args) > 3 else args[2] if len(args) > 2 else None)
        n = sc.value if sc.errno is None else None
        self._io_proves(sc, info, n)
        notes = self._slow_notes(sc, info, "send")
        notes.extend(self._ignored_send(info, data, requested))
        peer = parse_sockaddr(args[4]) if sc.name == "sendto" and len(args) > 4 else None
        if n is not None and requested is not None and n < requested:
            notes.append(f"partial send: the kernel took {n} of {requested} bytes; the rest must be sent again "
                         "(sendall() or a loop does it)")
            info.unsent = data[0][n:] if data is not None else None
            info.unsent_count = requested - n
        if sc.errno == "EPIPE" and info.fin_sent:
            notes.append("EPIPE: this program had already shut down its sending side (shutdown or FIN sent); "
                         "nothing more can be sent on it")
        elif sc.errno in ("EPIPE", "ECONNRESET"):
            info.move(Step.RESET)
            notes.append(f"{sc.errno}: the peer is gone (it closed, or reset the connection); writing to it "
                         "fails - without MSG_NOSIGNAL or SIG_IGN the program is also killed by SIGPIPE")
        ev = self._event(sc, sc.name, fd, info, nbytes=n, requested=requested, notes=notes,
                         detail=preview(data) if sc.errno is None else None)
        if peer:
            ev.peer = peer
        return [ev]

    def _ignored_send(self, info: SockInfo, data: tuple[bytes, bool] | None, requested: int | None) -> list[str]:
        """After a partial send, the next send must carry the rest: by content where strace showed
        it, else by size (sendall() and a C loop send exactly the bytes left)."""
        count, rest = info.unsent_count, info.unsent
        info.unsent, info.unsent_count = None, 0
        if count <= 0:
            return []
        if rest and data is not None:
            sent = data[0]
            common = min(len(rest), len(sent))
            if common and sent[:common] == rest[:common]:
                return []
        elif requested == count:
            return []
        return [f"send's return value ignored: the previous send took only part of its data and this one sends "
                f"something else, so {count} bytes of that message were never sent (use sendall() or loop "
                "until every byte is taken)"]

    def _recv(self, sc: Syscall, fd: int, info: SockInfo, args: list[str]) -> list[SockEvent]:
        if sc.errno in ("EAGAIN", "EWOULDBLOCK"):
            return []  # non-blocking recv with nothing there: the event loop asks again
        n = sc.value if sc.errno is None else None
        self._io_proves(sc, info, n)
        requested = sum(int(x) for x in IOV_LEN.findall(sc.args)) if sc.name in ("readv", "recvmsg") \
            else to_int(args[2] if len(args) > 2 else None)
        notes = self._slow_notes(sc, info, "recv")
        data = unquote(args[1]) if len(args) > 1 and sc.name in ("read", "recvfrom", "recv") else None
        peer = parse_sockaddr(args[4]) if sc.name == "recvfrom" and len(args) > 4 else None
        if n == 0 and info.is_tcp and info.shut_rd:
            notes.append("recv returned 0 because this program shut down its reading side (SHUT_RD): not a FIN "
                         "from the peer")
        elif n == 0 and info.is_tcp:
            if info.eof:
                info.reads_after_eof += 1
                if info.reads_after_eof > 1:
                    return []  # said once; counted for the close line
                notes.append("recv returned 0 again: the peer closed its side earlier (the first 0 was the end "
                             "of the stream) and this program kept reading; stop reading and close() when recv "
                             "returns 0")
            else:
                info.eof = True
                info.move(Step.EOF)
                notes.append("recv returned 0 bytes: the peer sent FIN (end of its stream)")
        if sc.errno == "ECONNRESET":
            info.move(Step.RESET)
            notes.append("ECONNRESET: the peer reset the connection (RST): it closed with unread data, set "
                         "SO_LINGER 0, or crashed; whatever it had not yet delivered is lost")
        ev = self._event(sc, sc.name, fd, info, nbytes=n, requested=requested, notes=notes,
                         detail=preview(data) if n else None)
        if peer:
            ev.peer = peer
        return [ev]

    def _shutdown(self, sc: Syscall, fd: int, info: SockInfo, args: list[str]) -> list[SockEvent]:
        how = args[1] if len(args) > 1 else "?"
        was = info.tcp
        detail: str | None = None
        if sc.errno is None and how in ("SHUT_RD", "SHUT_RDWR"):
            info.shut_rd = True
            info.move(Step.SHUT_RD)
            detail = "SHUT_RD: no more reading (nothing is sent)"
        if sc.errno is None and how in ("SHUT_WR", "SHUT_RDWR"):
            info.move(Step.SEND_FIN)
            if was in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT) or not info.is_tcp:
                info.fin_sent = True
                detail = {"SHUT_WR": "SHUT_WR: FIN sent, still reading"}.get(how, f"{how}: FIN sent, no more reading")
            elif was is TcpState.SYN_SENT:
                detail = (f"{how}: the connect had not been seen to finish, so the attempt is dropped (no FIN); "
                          "wait for writable or SO_ERROR=0 first")
            else:
                detail = (f"{how}: " + ("no more reading; " if how == "SHUT_RDWR" else "")
                          + ("no new FIN (already sent)" if info.fin_sent else "no FIN (not connected)"))
        return [self._event(sc, "shutdown", fd, info, detail=detail)]

    def _close(self, sc: Syscall, fd: int, info: SockInfo, args: list[str]) -> list[SockEvent]:
        self._table(sc.pid).pop(fd, None)
        info.refs -= 1
        notes: list[str] = []
        details: list[str] = []
        if info.reads_after_eof > 1:
            details.append(f"after {info.reads_after_eof} reads at end of stream")
        if info.unsent_count > 0:
            notes.append(f"closed with {info.unsent_count} bytes of a partial send never sent (the send's "
                         "return value was ignored)")
            info.unsent, info.unsent_count = None, 0
        if info.refs > 0:
            details.append(f"another fd still holds the socket ({info.refs}): "
                           + ("it keeps listening" if info.state == "LISTEN" else "no FIN yet"))
        elif info.is_tcp:
            said = info.last_close()
            if said:
                details.append(said)
        return [self._event(sc, "close", fd, info, detail="; ".join(details) or None, notes=notes)]

    def _io_proves(self, sc: Syscall, info: SockInfo, n: int | None) -> None:
        """A send or recv on a socket whose connect was not seen to finish: it went through (the
        handshake had finished), or it failed with the connect's error."""
        if info.tcp is not TcpState.SYN_SENT:
            return
        if n is not None:
            info.move(Step.CONNECTED)
        elif sc.errno in CONNECT_ERRORS:
            info.move(Step.CONNECT_FAILED)

    def _slow_notes(self, sc: Syscall, info: SockInfo, what: str) -> list[str]:
        if sc.dur is None or sc.dur < self.slow or info.nonblocking or info.timeout:
            return []
        if what == "accept":
            return [f"accept waited {sc.dur:.1f} s for a client (a blocking socket without a timeout): normal for "
                    "a server that does nothing else; one that must also serve others uses select/poll or threads"]
        return [f"{sc.name} blocked {sc.dur:.1f} s with no timeout: if the peer never answers (or vanished "
                "without FIN) it waits forever; use settimeout()/SO_RCVTIMEO, or select/poll with a timeout"]

    def _process_end(self, ev: ProcessEnd) -> list[SockEvent]:
        pid = self._pid(ev.pid)
        if pid != ev.pid:
            return []  # a thread ended; its process goes on
        out: list[SockEvent] = []
        if ev.signal == "SIGPIPE":
            out.append(SockEvent(ts=ev.ts, op="note", pid=pid, tid=pid, comm=self._name(pid),
                                 detail="killed by SIGPIPE: it wrote to a socket whose peer had closed; "
                                        "ignore SIGPIPE or send with MSG_NOSIGNAL and handle EPIPE"))
        out.extend(self._leftovers(pid, ev, ev.pid))
        return out

    def _leftovers(self, pid: int, ev: ProcessEnd | None, tid: int) -> list[SockEvent]:
        table = self.tables.pop(pid, {})
        out: list[SockEvent] = []
        ts = ev.ts if ev is not None else 0.0
        for fd, info in sorted(table.items()):
            info.refs -= 1
            if info.refs > 0 or not info.is_tcp:
                continue
            notes = []
            if info.state == "CLOSE_WAIT":
                notes.append(f"fd {fd} was left in CLOSE_WAIT: the peer closed, this program never called close(); "
                             "the kernel closes it only now that the process exits - a long-running server "
                             "leaks one socket per client this way")
            elif info.state == "ESTABLISHED":
                notes.append(f"fd {fd} was still open at exit: the kernel closes it for the program")
            said = info.last_close()
            if notes:
                out.append(SockEvent(ts=ts, op="exit", pid=pid, tid=tid, comm=self._name(pid), fd=fd,
                                     proto=info.proto, local=info.local, peer=info.peer, state=info.state,
                                     state_from=info.state_from, notes=notes,
                                     detail="process ended with the socket open: the kernel closes it"
                                            + (f", {said}" if said else "")))
        return out


Handler = Callable[[Lifecycle, Syscall, int, SockInfo, list[str]], list[SockEvent]]
_HANDLERS: dict[str, Handler] = {
    "setsockopt": Lifecycle._setsockopt, "bind": Lifecycle._bind, "listen": Lifecycle._listen,
    "accept": Lifecycle._accept, "accept4": Lifecycle._accept, "connect": Lifecycle._connect,
    "shutdown": Lifecycle._shutdown, "close": Lifecycle._close, "getsockopt": Lifecycle._getsockopt,
}
