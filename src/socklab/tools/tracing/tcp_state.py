"""The TCP state a traced program's calls imply, as data: states, steps and one transition table.

Why this exists: ``socklab trace run`` shows ``[STATE]`` after each call on a TCP socket. strace
sees only the calls, not the segments, so the state is inferred from what each call proves: a
connect that returned 0, a recv that returned 0 (the peer's FIN arrived), a shutdown that sent
FIN. A wrong guess teaches something false (a connected socket still shown ``SYN_SENT``, a
half-closed one shown ``CLOSE``), so the whole machine lives here, in one table a reader can check
against RFC 9293 section 3.3.2 and Linux's ``tcp_close_state()``, in the manner of h11's state
machine. The names are Linux's (``include/net/tcp_states.h``), the ones ``ss`` and socklab's own
``--trace`` print.

Where the kernel can be asked (``trace run`` reads its TCP table while the program runs), what it
reports wins, within the moves the network can make on its own (:data:`NETWORK_MOVES`): the peer's
ACK of our FIN (``FIN_WAIT1`` -> ``FIN_WAIT2``), its FIN (``ESTABLISHED`` -> ``CLOSE_WAIT``), the
end of a handshake (``SYN_SENT`` -> ``ESTABLISHED``). UDP has no TCP state: none is shown.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["NETWORK_MOVES", "TRANSITIONS", "Step", "TcpState", "after", "network_move"]


class TcpState(Enum):
    CLOSE = "CLOSE"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN_SENT"
    SYN_RECV = "SYN_RECV"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT1 = "FIN_WAIT1"
    FIN_WAIT2 = "FIN_WAIT2"
    CLOSING = "CLOSING"
    TIME_WAIT = "TIME_WAIT"
    CLOSE_WAIT = "CLOSE_WAIT"
    LAST_ACK = "LAST_ACK"


class Step(Enum):
    """What a call proves about the connection (the lifecycle module decides which call means which)."""

    LISTEN = "listen() succeeded"
    CONNECTING = "connect() said EINPROGRESS or EALREADY: SYN sent, handshake not finished"
    CONNECTED = ("the handshake finished: connect() returned 0 or EISCONN, SO_ERROR was 0, poll/select said "
                 "writable (and nothing else), or a send/recv went through")
    CONNECT_FAILED = "the connect failed: ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH... (from connect, SO_ERROR or I/O)"
    SEND_FIN = "shutdown(SHUT_WR or SHUT_RDWR) succeeded: FIN queued"
    SHUT_RD = "shutdown(SHUT_RD) succeeded: nothing is sent"
    EOF = "recv returned 0 while reading was not shut down: the peer's FIN arrived"
    CLOSE = "the last fd on the socket was closed (close() or the process ended)"
    ABORT = "the last fd was closed with SO_LINGER 0: RST instead of FIN"
    RESET = "a call failed with ECONNRESET or EPIPE: the peer's RST ended the connection"


S, T = TcpState, Step
# (state, step) -> the state after it. A pair that is not here leaves the state as it is.
TRANSITIONS: dict[tuple[TcpState, Step], TcpState] = {
    # a socket that is neither listening nor connected
    (S.CLOSE, T.LISTEN): S.LISTEN,
    (S.CLOSE, T.CONNECTING): S.SYN_SENT,
    (S.CLOSE, T.CONNECTED): S.ESTABLISHED,
    # a listening socket: closing it, or shutdown(SHUT_RD/RDWR), ends it (Linux inet_shutdown)
    (S.LISTEN, T.CLOSE): S.CLOSE,
    (S.LISTEN, T.ABORT): S.CLOSE,
    (S.LISTEN, T.SHUT_RD): S.CLOSE,
    (S.LISTEN, T.SEND_FIN): S.LISTEN,
    # the active open
    (S.SYN_SENT, T.CONNECTED): S.ESTABLISHED,
    (S.SYN_SENT, T.CONNECT_FAILED): S.CLOSE,
    (S.SYN_SENT, T.RESET): S.CLOSE,
    (S.SYN_SENT, T.SEND_FIN): S.CLOSE,  # shutdown before the handshake ended: Linux drops the attempt, no FIN
    (S.SYN_SENT, T.SHUT_RD): S.CLOSE,
    (S.SYN_SENT, T.CLOSE): S.CLOSE,
    (S.SYN_SENT, T.ABORT): S.CLOSE,
    # connected (accept()ed sockets start here)
    (S.ESTABLISHED, T.EOF): S.CLOSE_WAIT,  # the peer closed first (passive close)
    (S.ESTABLISHED, T.SEND_FIN): S.FIN_WAIT1,  # we close first (active close)
    (S.ESTABLISHED, T.CLOSE): S.FIN_WAIT1,
    (S.ESTABLISHED, T.ABORT): S.CLOSE,
    (S.ESTABLISHED, T.RESET): S.CLOSE,
    # active close: our FIN is out; the peer's ACK (FIN_WAIT2) only the kernel can tell
    (S.FIN_WAIT1, T.EOF): S.TIME_WAIT,  # its FIN arrived: both FINs passed (CLOSING for an instant at most)
    (S.FIN_WAIT1, T.ABORT): S.CLOSE,
    (S.FIN_WAIT1, T.RESET): S.CLOSE,
    (S.FIN_WAIT2, T.EOF): S.TIME_WAIT,
    (S.FIN_WAIT2, T.ABORT): S.CLOSE,
    (S.FIN_WAIT2, T.RESET): S.CLOSE,
    (S.CLOSING, T.ABORT): S.CLOSE,
    # passive close: the peer's FIN came first; ours ends it
    (S.CLOSE_WAIT, T.SEND_FIN): S.LAST_ACK,
    (S.CLOSE_WAIT, T.CLOSE): S.LAST_ACK,
    (S.CLOSE_WAIT, T.ABORT): S.CLOSE,
    (S.CLOSE_WAIT, T.RESET): S.CLOSE,
    (S.LAST_ACK, T.RESET): S.CLOSE,
}

# What the network alone can do to a connection between two calls: the only moves in which the
# kernel's report replaces the state the calls implied (a report that goes backwards is older news).
NETWORK_MOVES: dict[TcpState, frozenset[TcpState]] = {
    S.SYN_SENT: frozenset({S.ESTABLISHED, S.CLOSE_WAIT, S.CLOSE}),
    S.ESTABLISHED: frozenset({S.CLOSE_WAIT, S.CLOSE}),
    S.FIN_WAIT1: frozenset({S.FIN_WAIT2, S.CLOSING, S.TIME_WAIT, S.CLOSE}),
    S.FIN_WAIT2: frozenset({S.TIME_WAIT, S.CLOSE}),
    S.CLOSING: frozenset({S.TIME_WAIT, S.CLOSE}),
    S.CLOSE_WAIT: frozenset({S.CLOSE}),
    S.LAST_ACK: frozenset({S.CLOSE}),
    S.TIME_WAIT: frozenset({S.CLOSE}),
}


def after(state: TcpState, step: Step) -> TcpState:
    """The state after ``step`` (unchanged where the table has no entry)."""
    return TRANSITIONS.get((state, step), state)


def network_move(state: TcpState, reported: str) -> TcpState | None:
    """The kernel's ``reported`` state if the network alone can have moved ``state`` there, else ``None``."""
    try:
        new = TcpState(reported)
    except ValueError:
        return None
    return new if new in NETWORK_MOVES.get(state, frozenset()) else None
