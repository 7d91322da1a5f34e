"""The state machine as data: every transition of tcp_state's table, and the kernel's moves."""

from __future__ import annotations

import pytest

from socklab.core.trace import TCP_STATES
from socklab.tools.tracing.sockinfo import SockInfo
from socklab.tools.tracing.tcp_state import NETWORK_MOVES, TRANSITIONS, Step, TcpState, after, network_move

S, T = TcpState, Step

# Every transition, written out once more by hand from RFC 9293 3.3.2 and Linux's tcp_close_state().
EXPECTED = [
    (S.CLOSE, T.LISTEN, S.LISTEN), (S.CLOSE, T.CONNECTING, S.SYN_SENT), (S.CLOSE, T.CONNECTED, S.ESTABLISHED),
    (S.CLOSE, T.CONNECT_FAILED, S.CLOSE), (S.CLOSE, T.CLOSE, S.CLOSE),
    (S.LISTEN, T.CLOSE, S.CLOSE), (S.LISTEN, T.ABORT, S.CLOSE), (S.LISTEN, T.SHUT_RD, S.CLOSE),
    (S.LISTEN, T.SEND_FIN, S.LISTEN),
    (S.SYN_SENT, T.CONNECTED, S.ESTABLISHED), (S.SYN_SENT, T.CONNECT_FAILED, S.CLOSE),
    (S.SYN_SENT, T.CONNECTING, S.SYN_SENT), (S.SYN_SENT, T.RESET, S.CLOSE), (S.SYN_SENT, T.SEND_FIN, S.CLOSE),
    (S.SYN_SENT, T.SHUT_RD, S.CLOSE), (S.SYN_SENT, T.CLOSE, S.CLOSE), (S.SYN_SENT, T.ABORT, S.CLOSE),
    (S.ESTABLISHED, T.EOF, S.CLOSE_WAIT), (S.ESTABLISHED, T.SEND_FIN, S.FIN_WAIT1),
    (S.ESTABLISHED, T.CLOSE, S.FIN_WAIT1), (S.ESTABLISHED, T.ABORT, S.CLOSE), (S.ESTABLISHED, T.RESET, S.CLOSE),
    (S.ESTABLISHED, T.SHUT_RD, S.ESTABLISHED), (S.ESTABLISHED, T.CONNECTED, S.ESTABLISHED),
    (S.FIN_WAIT1, T.EOF, S.TIME_WAIT), (S.FIN_WAIT1, T.CLOSE, S.FIN_WAIT1), (S.FIN_WAIT1, T.SEND_FIN, S.FIN_WAIT1),
    (S.FIN_WAIT1, T.ABORT, S.CLOSE), (S.FIN_WAIT1, T.RESET, S.CLOSE),
    (S.FIN_WAIT2, T.EOF, S.TIME_WAIT), (S.FIN_WAIT2, T.CLOSE, S.FIN_WAIT2), (S.FIN_WAIT2, T.ABORT, S.CLOSE),
    (S.FIN_WAIT2, T.RESET, S.CLOSE), (S.CLOSING, T.ABORT, S.CLOSE), (S.CLOSING, T.CLOSE, S.CLOSING),
    (S.TIME_WAIT, T.CLOSE, S.TIME_WAIT), (S.TIME_WAIT, T.EOF, S.TIME_WAIT),
    (S.CLOSE_WAIT, T.SEND_FIN, S.LAST_ACK), (S.CLOSE_WAIT, T.CLOSE, S.LAST_ACK), (S.CLOSE_WAIT, T.ABORT, S.CLOSE),
    (S.CLOSE_WAIT, T.RESET, S.CLOSE), (S.CLOSE_WAIT, T.EOF, S.CLOSE_WAIT),
    (S.LAST_ACK, T.CLOSE, S.LAST_ACK), (S.LAST_ACK, T.RESET, S.CLOSE),
]


@pytest.mark.parametrize(("state", "step", "new"), EXPECTED, ids=[f"{a.value}-{b.name}" for a, b, _ in EXPECTED])
def test_each_transition(state: TcpState, step: Step, new: TcpState) -> None:
    assert after(state, step) is new


def test_the_table_holds_nothing_that_is_not_checked_above() -> None:
    checked = {(a, b) for a, b, _ in EXPECTED}
    assert set(TRANSITIONS) <= checked, set(TRANSITIONS) - checked


def test_state_names_are_the_kernels() -> None:
    assert {s.value for s in TcpState} <= set(TCP_STATES.values())


def test_the_kernel_wins_only_forward() -> None:
    assert network_move(S.FIN_WAIT1, "FIN_WAIT2") is S.FIN_WAIT2
    assert network_move(S.SYN_SENT, "ESTABLISHED") is S.ESTABLISHED
    assert network_move(S.ESTABLISHED, "CLOSE_WAIT") is S.CLOSE_WAIT
    assert network_move(S.FIN_WAIT2, "ESTABLISHED") is None  # older news
    assert network_move(S.ESTABLISHED, "FIN_WAIT1") is None  # only a call sends FIN
    assert network_move(S.ESTABLISHED, "UNCONN") is None
    for src, targets in NETWORK_MOVES.items():
        assert src not in targets


def test_udp_has_no_state_and_does_not_move() -> None:
    u = SockInfo(proto="udp")
    for step in Step:
        u.move(step)
    assert u.tcp is S.CLOSE and not u.is_tcp
