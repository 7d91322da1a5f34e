"""The TCP state each traced call implies, checked call by call on strace lines (real strace's format).

Every sequence here is one a learner's program makes; the state after each call must be the one
the kernel would report (RFC 9293 section 3.3.2, Linux's tcp_close_state), never an older one.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from socklab.core.trace import TCP_STATES
from socklab.tools.tracing.events import SockEvent
from socklab.tools.tracing.lifecycle import Lifecycle
from tests.tools.tracing.helpers import lifecycle_events as run

C = "TCP:[127.0.0.1:40000->127.0.0.1:7007]"  # a connected socket, as -yy shows it
NEW = "TCP:[1323936]"  # a socket not yet bound nor connected
ADDR = '{sa_family=AF_INET, sin_port=htons(7007), sin_addr=inet_addr("127.0.0.1")}'
SOCKET = f"1 1.00 socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_TCP) = 3<{NEW}> <0.00002>\n"
NB_CONNECT = (f"1 1.01 connect(3<{NEW}>, {ADDR}, 16) = -1 EINPROGRESS (Operation now in progress) <0.00005>\n")


def states(events: list[SockEvent]) -> list[tuple[str, str | None]]:
    return [(e.op, e.state) for e in events if e.fd is not None]


def test_non_blocking_connect_then_poll_writable_then_shutdown_is_fin_wait1_not_close() -> None:
    events = run(SOCKET + NB_CONNECT
                 + "1 1.02 poll([{fd=3<TCP:[1323936]>, events=POLLOUT}], 1, 5000) = 1 ([{fd=3, revents=POLLOUT}])"
                   " <0.00002>\n"
                 + f"1 1.03 shutdown(3<{C}>, SHUT_WR) = 0 <0.00002>\n")
    assert states(events) == [("socket", "CLOSE"), ("connect", "SYN_SENT"), ("shutdown", "FIN_WAIT1")]
    assert "FIN sent" in (events[-1].detail or "")


def test_non_blocking_connect_then_select_writable_is_established() -> None:
    events = run(SOCKET + NB_CONNECT
                 + f"1 1.02 pselect6(4, NULL, [3<{NEW}>], NULL, {{tv_sec=5, tv_nsec=0}}, NULL) = 1 (out [3], left "
                   "{tv_sec=4, tv_nsec=9}) <0.00002>\n"
                 + f"1 1.03 setsockopt(3<{C}>, SOL_SOCKET, SO_KEEPALIVE, [1], 4) = 0 <0.00001>\n", finish=False)
    assert states(events)[-1] == ("setsockopt", "ESTABLISHED")


def test_epoll_writable_finishes_the_connect() -> None:
    events = run(SOCKET + NB_CONNECT
                 + f"1 1.02 epoll_ctl(5<anon_inode:[eventpoll]>, EPOLL_CTL_ADD, 3<{NEW}>, {{events=EPOLLOUT, "
                   "data={u32=3, u64=3}}) = 0 <0.00001>\n"
                 + "1 1.03 epoll_wait(5<anon_inode:[eventpoll]>, [{events=EPOLLOUT, data={u32=3, u64=3}}], 1, 5000)"
                   " = 1 <0.00001>\n"
                 + f"1 1.04 close(3<{C}>) = 0 <0.00001>\n")
    close = events[-1]
    assert (close.op, close.state) == ("close", "FIN_WAIT1") and close.detail == "FIN sent"


def test_a_refused_non_blocking_connect_is_closed_after_pollerr_and_so_error() -> None:
    events = run(SOCKET + NB_CONNECT
                 + "1 1.02 poll([{fd=3<TCP:[1323936]>, events=POLLOUT}], 1, 5000) = 1 ([{fd=3, "
                   "revents=POLLOUT|POLLERR|POLLHUP}]) <0.00002>\n"
                 + f"1 1.03 getsockopt(3<{NEW}>, SOL_SOCKET, SO_ERROR, [ECONNREFUSED], [4]) = 0 <0.00002>\n"
                 + f"1 1.04 close(3<{NEW}>) = 0 <0.00001>\n")
    close = events[-1]
    assert (close.op, close.state) == ("close", "CLOSE") and "FIN" not in (close.detail or "")
    assert "connection refused: nothing listens" in events[-2].notes[0]  # SO_ERROR says it as connect would


def test_select_readable_and_writable_proves_nothing_so_so_error_decides() -> None:
    text = (SOCKET + NB_CONNECT
            + f"1 1.02 pselect6(4, [3<{NEW}>], [3<{NEW}>], NULL, {{tv_sec=5, tv_nsec=0}}, NULL) = 2 (in [3], out [3],"
              " left {tv_sec=4, tv_nsec=9}) <0.00002>\n"
            + f"1 1.03 getsockopt(3<{NEW}>, SOL_SOCKET, SO_ERROR, [ECONNREFUSED], [4]) = 0 <0.00002>\n")
    events = run(text)
    assert events[-1].op == "getsockopt" and events[-1].state == "CLOSE"


def test_connect_again_after_einprogress_eisconn_is_connected_and_econnrefused_closed() -> None:
    again = f"1 1.02 connect(3<{C}>, {ADDR}, 16) = -1 EISCONN (Transport endpoint is already connected) <0.00001>\n"
    events = run(SOCKET + NB_CONNECT + again, finish=False)
    assert events[-1].state == "ESTABLISHED" and "already connected" in (events[-1].detail or "")
    refused = f"1 1.02 connect(3<{NEW}>, {ADDR}, 16) = -1 ECONNREFUSED (Connection refused) <0.00001>\n"
    events = run(SOCKET + NB_CONNECT + refused)
    assert events[-1].state == "CLOSE"


def test_a_blocking_connect_refused_stays_closed() -> None:
    events = run(SOCKET + f"1 1.01 connect(3<{NEW}>, {ADDR}, 16) = -1 ECONNREFUSED (Connection refused) <0.0001>\n")
    assert states(events)[-1] == ("connect", "CLOSE") and "connection refused" in events[-1].notes[0]


def test_a_recv_error_after_einprogress_is_the_connects_failure() -> None:
    events = run(SOCKET + NB_CONNECT
                 + f'1 1.02 recvfrom(3<{NEW}>, 0x7f, 10, 0, NULL, NULL) = -1 ECONNREFUSED (Connection refused) '
                   '<0.00001>\n')
    assert events[-1].state == "CLOSE"


def test_active_close_shutdown_then_eof_then_close_is_time_wait() -> None:
    events = run(f"1 1.0 shutdown(3<{C}>, SHUT_WR) = 0 <0.00002>\n"
                 f'1 1.1 recvfrom(3<{C}>, "hi", 100, 0, NULL, NULL) = 2 <0.00002>\n'
                 f'1 1.2 recvfrom(3<{C}>, "", 100, 0, NULL, NULL) = 0 <0.00002>\n'
                 f"1 1.3 close(3<{C}>) = 0 <0.00002>\n")
    assert states(events) == [("shutdown", "FIN_WAIT1"), ("recvfrom", "FIN_WAIT1"), ("recvfrom", "TIME_WAIT"),
                              ("close", "TIME_WAIT")]
    assert events[-1].detail is None  # the FIN went with the shutdown, not again with the close


def test_passive_close_eof_then_close_is_close_wait_then_last_ack() -> None:
    events = run(f"1 1.0 accept4(5<TCP:[127.0.0.1:7007]>, NULL, NULL, SOCK_CLOEXEC) = 3<{C}> <0.001>\n"
                 f'1 1.1 recvfrom(3<{C}>, "", 100, 0, NULL, NULL) = 0 <0.00002>\n'
                 f"1 1.2 close(3<{C}>) = 0 <0.00002>\n")
    assert states(events) == [("accept", "ESTABLISHED"), ("recvfrom", "CLOSE_WAIT"), ("close", "LAST_ACK")]
    assert events[-1].detail == "FIN sent (the peer had closed)"


def test_shut_rd_sends_nothing_and_its_recv_of_0_is_no_fin() -> None:
    events = run(f"1 1.0 shutdown(3<{C}>, SHUT_RD) = 0 <0.00002>\n"
                 f'1 1.1 recvfrom(3<{C}>, "", 10, 0, NULL, NULL) = 0 <0.00002>\n'
                 f"1 1.2 close(3<{C}>) = 0 <0.00002>\n")
    assert states(events) == [("shutdown", "ESTABLISHED"), ("recvfrom", "ESTABLISHED"), ("close", "FIN_WAIT1")]
    assert "peer sent FIN" not in "\n".join(events[1].notes) and "SHUT_RD" in events[1].notes[0]


def test_shut_rdwr_is_fin_wait1() -> None:
    events = run(f"1 1.0 shutdown(3<{C}>, SHUT_RDWR) = 0 <0.00002>\n")
    assert states(events) == [("shutdown", "FIN_WAIT1")]


def test_so_linger_0_close_sends_rst_and_ends_in_close() -> None:
    events = run(f"1 1.0 setsockopt(3<{C}>, SOL_SOCKET, SO_LINGER, {{l_onoff=1, l_linger=0}}, 8) = 0 <0.00001>\n"
                 f"1 1.1 close(3<{C}>) = 0 <0.00002>\n")
    close = events[-1]
    assert close.state == "CLOSE" and "RST sent" in (close.detail or "") and "FIN sent" not in (close.detail or "")


def test_linger_with_a_timeout_still_closes_with_fin() -> None:
    events = run(f"1 1.0 setsockopt(3<{C}>, SOL_SOCKET, SO_LINGER, {{l_onoff=1, l_linger=5}}, 8) = 0 <0.00001>\n"
                 f"1 1.1 close(3<{C}>) = 0 <0.00002>\n")
    assert events[-1].state == "FIN_WAIT1" and events[-1].detail == "FIN sent"


def test_a_listening_socket_is_listen_then_closed() -> None:
    lst = "TCP:[127.0.0.1:7007]"
    events = run(SOCKET.replace(NEW, lst) + f"1 1.1 listen(3<{lst}>, 5) = 0 <0.00001>\n"
                 f"1 1.2 close(3<{lst}>) = 0 <0.00001>\n")
    assert states(events) == [("socket", "CLOSE"), ("listen", "LISTEN"), ("close", "CLOSE")]


def test_ecconreset_and_epipe_close_the_connection_but_epipe_after_our_own_shutdown_does_not() -> None:
    events = run(f'1 1.0 recvfrom(3<{C}>, 0x7f, 10, 0, NULL, NULL) = -1 ECONNRESET (Connection reset by peer) <0>\n')
    assert events[-1].state == "CLOSE"
    events = run(f"1 1.0 shutdown(3<{C}>, SHUT_WR) = 0 <0.00002>\n"
                 f'1 1.1 sendto(3<{C}>, "x", 1, 0, NULL, 0) = -1 EPIPE (Broken pipe) <0.00001>\n')
    assert events[-1].state == "FIN_WAIT1" and "already shut down its sending side" in events[-1].notes[0]


def test_udp_has_no_tcp_state() -> None:
    u = "UDP:[127.0.0.1:5000->127.0.0.1:7007]"
    events = run(f"1 1.0 socket(AF_INET, SOCK_DGRAM|SOCK_CLOEXEC, IPPROTO_IP) = 3<UDP:[77]> <0.00001>\n"
                 f"1 1.1 connect(3<UDP:[77]>, {ADDR}, 16) = 0 <0.00001>\n"
                 f'1 1.2 sendto(3<{u}>, "", 0, 0, NULL, 0) = 0 <0.00001>\n'
                 f'1 1.3 recvfrom(3<{u}>, "", 10, 0, NULL, NULL) = 0 <0.00001>\n'
                 f"1 1.4 close(3<{u}>) = 0 <0.00001>\n")
    assert [e.state for e in events] == [None] * 5 and not any(e.notes for e in events)


def test_exit_with_a_connection_open_moves_it_on() -> None:
    events = run(f"1 1.0 accept4(5<TCP:[127.0.0.1:7007]>, NULL, NULL, 0) = 3<{C}> <0.001>\n"
                 f'1 1.1 recvfrom(3<{C}>, "", 100, 0, NULL, NULL) = 0 <0.00002>\n'
                 "1 1.2 +++ exited with 0 +++\n")
    exit_ev = next(e for e in events if e.op == "exit")
    assert exit_ev.state == "LAST_ACK" and "left in CLOSE_WAIT" in exit_ev.notes[0]


def test_the_kernels_report_wins_within_what_the_network_can_do() -> None:
    lc = Lifecycle()
    run(f"1 1.0 shutdown(3<{C}>, SHUT_WR) = 0 <0.00002>\n", lc, finish=False)
    ((pid, fd, info),) = lc.open_tcp()
    lc.kernel_state(pid, fd, info, "FIN_WAIT2", 1.5)  # the peer ACKed our FIN
    events = run(f'1 1.6 recvfrom(3<{C}>, "x", 100, 0, NULL, NULL) = 1 <0.00002>\n', lc, False)
    assert (events[0].state, events[0].state_from) == ("FIN_WAIT2", "kernel")
    lc.kernel_state(pid, fd, info, "ESTABLISHED", 1.7)  # older news: a connection does not go back
    events = run(f'1 1.8 recvfrom(3<{C}>, "", 100, 0, NULL, NULL) = 0 <0.00002>\n', lc, False)
    assert (events[0].state, events[0].state_from) == ("TIME_WAIT", "calls")
    assert events[0].to_json(1.0)["state_from"] == "calls"


_TCP_LINES = [
    SOCKET.strip(), NB_CONNECT.strip(),
    f"1 1.1 connect(3<{NEW}>, {ADDR}, 16) = 0 <0.0001>",
    f"1 1.1 connect(3<{NEW}>, {ADDR}, 16) = -1 ECONNREFUSED (Connection refused) <0.0001>",
    f"1 1.1 connect(3<{C}>, {ADDR}, 16) = -1 EISCONN (Transport endpoint is already connected) <0.0001>",
    "1 1.2 poll([{fd=3<TCP:[1]>, events=POLLOUT}], 1, 5000) = 1 ([{fd=3, revents=POLLOUT}]) <0.0001>",
    "1 1.2 poll([{fd=3<TCP:[1]>, events=POLLOUT}], 1, 5000) = 1 ([{fd=3, revents=POLLOUT|POLLERR|POLLHUP}]) <0>",
    f"1 1.3 pselect6(4, [3<{NEW}>], [3<{NEW}>], NULL, NULL, NULL) = 2 (in [3], out [3]) <0.0001>",
    f"1 1.3 getsockopt(3<{NEW}>, SOL_SOCKET, SO_ERROR, [0], [4]) = 0 <0.0001>",
    f'1 1.4 sendto(3<{C}>, "ab", 2, 0, NULL, 0) = 2 <0.0001>',
    f'1 1.4 sendto(3<{C}>, "ab", 2, 0, NULL, 0) = -1 EPIPE (Broken pipe) <0.0001>',
    f'1 1.5 recvfrom(3<{C}>, "ab", 100, 0, NULL, NULL) = 2 <0.0001>',
    f'1 1.5 recvfrom(3<{C}>, "", 100, 0, NULL, NULL) = 0 <0.0001>',
    f"1 1.5 recvfrom(3<{C}>, 0x7f, 100, 0, NULL, NULL) = -1 ECONNRESET (Connection reset by peer) <0.0001>",
    f"1 1.6 shutdown(3<{C}>, SHUT_WR) = 0 <0.0001>", f"1 1.6 shutdown(3<{C}>, SHUT_RD) = 0 <0.0001>",
    f"1 1.6 shutdown(3<{C}>, SHUT_RDWR) = 0 <0.0001>",
    f"1 1.7 setsockopt(3<{C}>, SOL_SOCKET, SO_LINGER, {{l_onoff=1, l_linger=0}}, 8) = 0 <0.0001>",
    "1 1.8 listen(3<TCP:[127.0.0.1:7007]>, 5) = 0 <0.0001>",
    f"1 1.9 close(3<{C}>) = 0 <0.0001>",
]
_AFTER_FIN = {"FIN_WAIT1", "FIN_WAIT2", "CLOSING", "TIME_WAIT", "LAST_ACK", "CLOSE"}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_TCP_LINES), max_size=25))
def test_any_order_of_calls_never_shows_a_state_it_has_left(lines: list[str]) -> None:
    """Whatever the order: states are the kernel's names; once a FIN went out the connection never
    shows ESTABLISHED or SYN_SENT again; once data moved, never SYN_SENT (until it is CLOSE)."""
    fin = moved = False
    for ev in run("\n".join(lines) + "\n", finish=False):
        if ev.fd is None:
            continue
        if ev.op == "socket" or (ev.op == "connect" and ev.state == "SYN_SENT" and not fin and not moved):
            fin = moved = False  # a new socket on fd 3 (the old one was closed)
        assert ev.state in TCP_STATES.values()
        if fin:
            assert ev.state in _AFTER_FIN, (lines, ev)
        if moved:
            assert ev.state != "SYN_SENT", (lines, ev)
        fin = fin or bool(ev.detail and "FIN sent" in ev.detail)
        moved = moved or (ev.op in ("sendto", "recvfrom") and ev.errno is None and ev.state != "CLOSE")
        if ev.op == "close" or ev.state == "CLOSE":
            fin = moved = False  # fd 3 may name a new socket next; a TCP socket in CLOSE may connect anew


def test_a_failed_shutdown_sends_no_fin_and_a_second_one_no_new_fin() -> None:
    events = run(SOCKET + f"1 1.1 shutdown(3<{NEW}>, SHUT_WR) = -1 ENOTCONN (Transport endpoint is not connected) "
                 "<0.00001>\n", finish=False)
    assert events[-1].state == "CLOSE" and events[-1].detail == "failed: ENOTCONN (Transport endpoint is not connected)"
    events = run(f"1 1.0 shutdown(3<{C}>, SHUT_WR) = 0 <0.00002>\n1 1.1 shutdown(3<{C}>, SHUT_RDWR) = 0 <0.00002>\n",
                 finish=False)
    assert [(e.detail, e.state) for e in events] == [("SHUT_WR: FIN sent, still reading", "FIN_WAIT1"),
                                                     ("SHUT_RDWR: no more reading; no new FIN (already sent)",
                                                      "FIN_WAIT1")]
