"""Syscalls to socket events, without strace: the notes and the per-process fd tables."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from socklab.core.errors import RemoteProtocolError
from socklab.tools.tracing.decode import parse_annotation, parse_sockaddr
from socklab.tools.tracing.events import SockEvent, format_line
from socklab.tools.tracing.lifecycle import Lifecycle
from socklab.tools.tracing.strace_parse import StraceParser
from tests.tools.tracing.helpers import lifecycle_events as run

C = "TCP:[127.0.0.1:5000->127.0.0.1:7007]"


def notes(events: list[SockEvent]) -> str:
    return "\n".join(n for e in events for n in e.notes)


def test_annotations_and_addresses() -> None:
    assert parse_annotation(C) == ("tcp", "127.0.0.1:5000", "127.0.0.1:7007")
    assert parse_annotation("TCPv6:[[::1]:80->[::1]:5000]") == ("tcp6", "[::1]:80", "[::1]:5000")
    assert parse_annotation("UDP:[123]") == ("udp", None, None)
    assert parse_annotation("/etc/passwd") is None
    assert parse_sockaddr('{sa_family=AF_INET6, sin6_port=htons(80), inet_pton(AF_INET6, "::1", &sin6_addr)}') \
        == "[::1]:80"


def test_partial_send_then_other_data_is_named() -> None:
    events = run(f'1 1.0 sendto(3<{C}>, "abcdefgh", 8, 0, NULL, 0) = 3 <0.001>\n'
                 f'1 1.1 sendto(3<{C}>, "NEXT", 4, 0, NULL, 0) = 4 <0.001>\n')
    assert format_line(events[0], 1.0).split()[4:7] == ["3", "of", "8"]
    assert "partial send" in notes(events[:1])
    assert "return value ignored" in notes(events[1:]) and "5 bytes of that message were never sent" in notes(events)


def test_partial_send_then_the_rest_is_right() -> None:
    events = run(f'1 1.0 sendto(3<{C}>, "abcdefgh", 8, 0, NULL, 0) = 3 <0.001>\n'
                 f'1 1.1 sendto(3<{C}>, "defgh", 5, 0, NULL, 0) = 5 <0.001>\n')
    assert "ignored" not in notes(events)


def test_reading_after_eof_is_named_once_and_counted_at_close() -> None:
    lines = "".join(f'1 1.{i} read(3<{C}>, "", 100) = 0 <0.001>\n' for i in range(5))
    events = run(lines + f"1 2.0 close(3<{C}>) = 0 <0.001>\n")
    assert [e.op for e in events] == ["read", "read", "close"]  # the 3 further reads are folded
    assert events[0].state == "CLOSE_WAIT" and "peer sent FIN" in notes(events[:1])
    assert "kept reading" in notes(events[1:2])
    assert "after 4 reads at end of stream" in (events[2].detail or "")


def test_eaddrinuse_says_why_with_what_the_kernel_says_now() -> None:
    asked: list[tuple[str, str]] = []

    def probe(proto: str, addr: str) -> str:
        asked.append((proto, addr))
        return "a socket is bound to port 7007 in state LISTEN"

    events = run('1 1.0 socket(AF_INET, SOCK_STREAM, IPPROTO_IP) = 3<TCP:[99]> <0.001>\n'
                 '1 1.1 bind(3<TCP:[99]>, {sa_family=AF_INET, sin_port=htons(7007), sin_addr=inet_addr("0.0.0.0")}'
                 ', 16) = -1 EADDRINUSE (Address already in use) <0.001>\n', Lifecycle(probe=probe))
    assert asked == [("tcp", "0.0.0.0:7007")]
    text = notes(events)
    assert "EADDRINUSE: 0.0.0.0:7007 is in use" in text and "SO_REUSEADDR was not set" in text
    assert "TIME_WAIT" in text and "state LISTEN" in text


def test_close_in_a_forked_parent_sends_no_fin_and_close_wait_at_exit_is_named() -> None:
    events = run(
        f"1 1.0 accept4(3<TCP:[127.0.0.1:7007]>, NULL, NULL, 0) = 4<{C}> <0.001>\n"
        "1 1.1 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|SIGCHLD) = 2 <0.001>\n"
        f"1 1.2 close(4<{C}>) = 0 <0.001>\n"
        f'2 1.3 recvfrom(4<{C}>, "", 10, 0, NULL, NULL) = 0 <0.001>\n'
        "2 1.4 +++ exited with 0 +++\n")
    close = next(e for e in events if e.op == "close")
    assert "another fd still holds the socket" in (close.detail or "")
    exit_ev = next(e for e in events if e.op == "exit")
    assert exit_ev.pid == 2 and "left in CLOSE_WAIT" in notes([exit_ev])


def test_threads_share_the_fd_table_and_a_blocking_wait_is_named() -> None:
    events = run(
        "1 1.0 clone3({flags=CLONE_VM|CLONE_FILES|CLONE_THREAD}, 88) = 2 <0.001>\n"
        f'1 1.1 setsockopt(4<{C}>, SOL_SOCKET, SO_REUSEADDR, [1], 4) = 0 <0.001>\n'
        f'2 1.2 recvfrom(4<{C}>, "hi", 10, 0, NULL, NULL) = 2 <3.500>\n', Lifecycle(slow=1.0))
    recv = next(e for e in events if e.op == "recvfrom")
    assert (recv.pid, recv.tid, recv.thread) == (1, 2, "thread-2")
    assert "blocked 3.5 s with no timeout" in notes([recv])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([
    f"1 1.0 sendto(3<{C}>, \"ab\", 2, 0, NULL, 0) = 1 <0.1>", f"1 1.0 read(3<{C}>, \"\", 9) = 0 <2>",
    "1 1.0 socket(AF_INET, SOCK_DGRAM, 0) = 3<UDP:[5]> <0>", f"1 1.0 close(3<{C}>) = 0 <0>",
    "1 1.0 clone(flags=SIGCHLD) = 2 <0>", "2 1.0 +++ exited with 0 +++", "1 1.0 execve(\"/x\", [], []) = 0 <0>",
    "1 1.0 dup2(3<TCP:[1]>, 7) = 7 <0>", "1 1.0 bind(3<TCP:[1]>, garbage) = -1 EADDRINUSE (x) <0>",
    "1 1.0 accept4(3<TCP:[1]>, x) = 4<TCP:[a->b]> <0>", "1 1.0 shutdown(3<TCP:[a->b]>, SHUT_WR) = 0 <0>",
    "1 1.0 connect(3, {x}, 1) = -1 ECONNREFUSED (r) <0>", "1 1.0 fcntl(3<TCP:[a->b]>, F_SETFL, O_RDWR|O_NONBLOCK) = 0",
    "1 1.0 sendmsg(3<UDP:[a]>, {msg_iov=[{iov_base=\"x\", iov_len=1}]}, 0) = 1 <0>", "garbage", "1 1.0 x(",
]), max_size=30))
def test_fuzz_lifecycle_never_raises_but_the_protocol_error(lines: list[str]) -> None:
    lc = Lifecycle(probe=lambda proto, addr: None)
    p = StraceParser()
    p.receive_data(("\n".join(lines) + "\n").encode())
    p.receive_data(b"")
    while True:
        try:
            ev = p.next_event()
        except RemoteProtocolError:
            continue
        if ev is None:
            break
        for se in lc.feed(ev):
            format_line(se, 0.0)
            se.to_json()
    lc.finish()


def test_the_line_is_socklabs_own_trace_line() -> None:
    """trace run prints what socklab's --trace console prints for the same event (core/trace.py)."""
    import io

    from socklab.core import trace as core
    from socklab.tools.tracing.events import to_trace_event

    events = run(f'1 1.0 sendto(3<{C}>, "abcdefgh", 8, 0, NULL, 0) = 3 <0.001>\n'
                 f'1 1.5 recvfrom(3<{C}>, "", 100, 0, NULL, NULL) = 0 <0.001>\n'
                 f'1 2.0 shutdown(3<{C}>, SHUT_WR) = 0 <0.001>\n')
    for ev in events:
        out = io.StringIO()
        core._ConsoleSink(out, color=False)(to_trace_event(ev, 0.5))
        assert format_line(ev, 0.5) + "\n" == out.getvalue()


def test_select_poll_and_epoll_on_sockets_are_shown() -> None:
    s = "TCP:[127.0.0.1:46459]"
    a = "TCP:[127.0.0.1:46459->127.0.0.1:34520]"
    events = run(
        f"1 1.0 pselect6(6, [3<{s}> 5<{a}>], NULL, NULL, {{tv_sec=5, tv_nsec=0}}, NULL) = 1 "
        "(in [5], left {tv_sec=4, tv_nsec=999993388}) <0.002>\n"
        f"1 1.1 poll([{{fd=5<{a}>, events=POLLIN}}], 1, 5000) = 0 (Timeout) <5.0>\n"
        f"1 1.2 epoll_ctl(6<anon_inode:[eventpoll]>, EPOLL_CTL_ADD, 5<{a}>, {{events=EPOLLIN, data={{u32=5, u64=5}}}})"
        " = 0 <0.0>\n"
        "1 1.3 epoll_wait(6<anon_inode:[eventpoll]>, [{events=EPOLLIN, data={u32=5, u64=5}}], 1, -1) = 1 <0.5>\n"
        "1 1.4 epoll_wait(7<anon_inode:[eventpoll]>, [], 1, -1) = 0 <0.5>\n"  # no socket on it: not shown
        "1 1.5 poll([{fd=0</dev/tty>, events=POLLIN}], 1, -1) = 1 ([{fd=0, revents=POLLIN}]) <0.1>\n")
    got = [(e.op, e.detail) for e in events if e.op not in ("exit",)]
    assert got == [
        ("pselect6", "waits to read on fds 3 5 (up to 5 s) -> ready: fd 5 readable"),
        ("poll", "waits on fd 5 POLLIN (up to 5 s) -> timed out, nothing ready"),
        ("epoll_ctl", "EPOLL_CTL_ADD: watch fd 5 for EPOLLIN"),
        ("epoll_wait", "waits on fds 5 (no timeout) -> ready: fd 5 EPOLLIN"),
    ]


def test_an_idle_event_loop_timing_out_again_and_again_is_said_once() -> None:
    a = "TCP:[127.0.0.1:7007]"
    lines = f"1 1.0 epoll_ctl(6<anon_inode:[eventpoll]>, EPOLL_CTL_ADD, 3<{a}>, {{events=EPOLLIN, data={{u32=3}}}}) = 0\n"
    lines += "".join(f"1 {2 + i}.0 epoll_wait(6<anon_inode:[eventpoll]>, [], 64, 1000) = 0 <1.0>\n" for i in range(50))
    waits = [e for e in run(lines) if e.op == "epoll_wait"]
    assert len(waits) == 1 and "timed out" in (waits[0].detail or "")


def test_waits_with_drifting_timeouts_and_an_interrupted_wait() -> None:
    a = "TCP:[127.0.0.1:7007]"
    lines = f"1 1.0 epoll_ctl(6<anon_inode:[eventpoll]>, EPOLL_CTL_ADD, 3<{a}>, {{events=EPOLLIN, data={{u32=3}}}}) = 0\n"
    lines += "".join(f"1 {2 + i}.0 epoll_wait(6<anon_inode:[eventpoll]>, [], 64, {998 + i}) = 0 <1.0>\n"
                     for i in range(5))
    lines += "1 9.0 epoll_wait(6<anon_inode:[eventpoll]>, 0x7f00, 64, 1000) = -1 EINTR (Interrupted system call) <0.3>\n"
    waits = [e.detail for e in run(lines) if e.op == "epoll_wait"]
    assert waits == ["waits on fds 3 (up to 0.998 s) -> timed out, nothing ready",
                     "waits on fds 3 (up to 1 s) -> EINTR (a signal arrived)"]


def test_a_call_interrupted_by_a_signal_says_so() -> None:
    events = run("1 1.0 accept4(3<TCP:[127.0.0.1:7007]>, 0x7f, [16], SOCK_CLOEXEC) = ? ERESTARTSYS "
                 "(To be restarted if SA_RESTART is set) <2.0>\n")
    assert events[0].op == "accept" and (events[0].detail or "").startswith("interrupted by a signal (EINTR)")
