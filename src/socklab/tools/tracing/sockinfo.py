"""What the calls so far say about one socket of a traced program: addresses, TCP state, flags.

Why this exists: :mod:`socklab.tools.tracing.lifecycle` keeps one of these per socket (shared by
every fd, across dup and fork, that refers to it) and asks it to move along the table of
:mod:`socklab.tools.tracing.tcp_state`; what the last close sends (FIN, RST, nothing) depends on
the state and the options, and is decided here.
"""

from __future__ import annotations

from dataclasses import dataclass

from socklab.tools.tracing.tcp_state import Step, TcpState, after

__all__ = ["SockInfo"]


@dataclass
class SockInfo:
    """What the calls so far say about one socket (shared by every fd that refers to it)."""

    proto: str
    local: str | None = None
    peer: str | None = None
    tcp: TcpState = TcpState.CLOSE
    state_from: str = "calls"  # "kernel" when the kernel's table said the state last
    refs: int = 1  # file descriptors (across processes) open on it
    cloexec: bool = False
    nonblocking: bool = False
    timeout: bool = False  # SO_RCVTIMEO/SO_SNDTIMEO set
    reuseaddr: bool = False
    linger0: bool = False  # SO_LINGER on with 0 s: the last close sends RST
    eof: bool = False  # a recv returned 0
    reads_after_eof: int = 0
    fin_sent: bool = False
    shut_rd: bool = False  # shutdown(SHUT_RD): a recv of 0 is this side's doing, not a FIN
    unsent: bytes | None = None  # the rest of a partial send, until sent
    unsent_count: int = 0
    listen_fd: int | None = None
    connecting: bool = False  # a non-blocking connect whose SO_ERROR the program has not read yet
    kernel_state: str | None = None  # what the kernel's table said at the last look
    kernel_said: bool = False  # a note about it was given

    @property
    def state(self) -> str:
        return self.tcp.value

    @property
    def is_tcp(self) -> bool:
        return self.proto.startswith("tcp")

    def move(self, step: Step) -> None:
        """The state after ``step`` (tcp_state's table); UDP has none."""
        if self.is_tcp:
            new = after(self.tcp, step)
            if new is not self.tcp:
                self.tcp, self.state_from = new, "calls"

    def last_close(self) -> str | None:
        """The last fd on a TCP socket is gone (close, or the process ended): what went out, and the state."""
        was = self.tcp
        if was is TcpState.LISTEN:
            self.move(Step.CLOSE)
            return "listening socket: no more accepts"
        if was is TcpState.SYN_SENT:
            self.move(Step.CLOSE)
            return "the connect had not been seen to finish: the attempt is dropped (no FIN)"
        if self.linger0 and was in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT, TcpState.FIN_WAIT1,
                                    TcpState.FIN_WAIT2):
            self.move(Step.ABORT)
            return "RST sent (SO_LINGER 0): the connection is aborted at once, no FIN and no TIME_WAIT"
        if was is TcpState.CLOSE:
            return None
        said = None
        if not self.fin_sent and was in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            said = "FIN sent" if was is TcpState.ESTABLISHED else "FIN sent (the peer had closed)"
        self.fin_sent = True
        self.move(Step.CLOSE)
        return said
