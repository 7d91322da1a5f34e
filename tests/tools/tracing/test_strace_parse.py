"""The strace parser: real lines, unfinished/resumed across threads, any chunking, and fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socklab.core.errors import RemoteProtocolError
from socklab.tools.tracing.strace_parse import (
    MAX_LINE,
    ProcessEnd,
    StraceEvent,
    StraceParser,
    Syscall,
    split_args,
    unquote,
)

# Lines as strace 6.1 writes them with -f -Y -ttt -T -yy (taken from a real run, pids kept).
REAL = b"""\
9944<python3> 1796431301.695286 socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_IP) = 3<TCP:[28881]> <0.000036>
9944<python3> 1796431301.703185 setsockopt(3<TCP:[28881]>, SOL_SOCKET, SO_REUSEADDR, [1], 4) = 0 <0.000034>
9944<python3> 1796431301.709818 bind(3<TCP:[28881]>, {sa_family=AF_INET, sin_port=htons(0), sin_addr=inet_addr("127.0.0.1")}, 16) = 0 <0.000056>
9944<python3> 1796431301.716119 listen(3<TCP:[127.0.0.1:43459]>, 5) = 0 <0.000033>
10040<python3> 1796431301.720613 accept4(3<TCP:[127.0.0.1:43459]>,  <unfinished ...>
9944<python3> 1796431301.729884 connect(5<TCP:[28891]>, {sa_family=AF_INET, sin_port=htons(43459), sin_addr=inet_addr("127.0.0.1")}, 16) = 0 <0.000131>
10040<python3> 1796431301.735399 <... accept4 resumed>{sa_family=AF_INET, sin_port=htons(57656), sin_addr=inet_addr("127.0.0.1")}, [16], SOCK_CLOEXEC) = 4<TCP:[127.0.0.1:43459->127.0.0.1:57656]> <0.014736>
9944<python3> 1796431301.739917 sendto(5<TCP:[127.0.0.1:57656->127.0.0.1:43459]>, "hel\\"lo) = 9", 11, 0, NULL, 0) = 11 <0.000053>
9944<python3> 1796431301.750402 getpeername(3<TCP:[127.0.0.1:43459]>, 0x7ffc124a3d20, [16]) = -1 ENOTCONN (Transport endpoint is not connected) <0.000010>
9944<python3> 1796431301.750500 fcntl(3</etc/passwd>, F_GETFL) = 0x8000 (flags O_RDONLY|O_LARGEFILE) <0.000006>
10040<python3> 1796431301.745364 +++ exited with 0 +++
9944<python3> 1796431301.759086 +++ killed by SIGPIPE +++
"""


def parse_all(data: bytes, chunk: int | None = None) -> list[StraceEvent]:
    p = StraceParser()
    out: list[StraceEvent] = []
    pieces = [data] if chunk is None else [data[i:i + chunk] for i in range(0, len(data), chunk)]
    for piece in [*pieces, b""]:
        p.receive_data(piece)
        while (ev := p.next_event()) is not None:
            out.append(ev)
    return out


def test_real_lines_whole_and_byte_by_byte() -> None:
    whole = parse_all(REAL)
    assert whole == parse_all(REAL, chunk=1) == parse_all(REAL, chunk=7)
    calls = [e for e in whole if isinstance(e, Syscall)]
    assert [c.name for c in calls] == ["socket", "setsockopt", "bind", "listen", "connect", "accept4", "sendto",
                                       "getpeername", "fcntl"]
    sock = calls[0]
    assert (sock.pid, sock.comm, sock.value, sock.ret_fd) == (9944, "python3", 3, "TCP:[28881]")
    assert sock.ts == pytest.approx(1796431301.695286) and sock.dur == pytest.approx(0.000036)
    accept = calls[5]  # joined across the other thread's connect; its time is when it started
    assert accept.pid == 10040 and accept.ts == pytest.approx(1796431301.720613)
    assert accept.ret_fd == "TCP:[127.0.0.1:43459->127.0.0.1:57656]" and accept.value == 4
    assert accept.args.startswith("3<TCP:[127.0.0.1:43459]>, {sa_family=AF_INET, sin_port=htons(57656)")
    send = calls[6]  # a ") = 9" inside the string does not end the call
    assert send.value == 11 and split_args(send.args)[1] == '"hel\\"lo) = 9"'
    assert unquote(split_args(send.args)[1]) == (b'hel"lo) = 9', False)
    assert (calls[7].value, calls[7].errno, calls[7].errmsg) == (-1, "ENOTCONN", "Transport endpoint is not connected")
    assert calls[8].value == 0x8000 and calls[8].extra == "flags O_RDONLY|O_LARGEFILE"
    ends = [e for e in whole if isinstance(e, ProcessEnd)]
    assert ends == [ProcessEnd(pid=10040, ts=pytest.approx(1796431301.745364), comm="python3", code=0),
                    ProcessEnd(pid=9944, ts=pytest.approx(1796431301.759086), comm="python3", signal="SIGPIPE")]


def test_unfinished_call_of_a_killed_process_is_reported() -> None:
    data = (b"7 1.5 recvfrom(3<TCP:[1.2.3.4:5->6.7.8.9:10]>,  <unfinished ...>\n"
            b"7 2.5 +++ killed by SIGKILL +++\n")
    events = parse_all(data)
    assert isinstance(events[0], Syscall) and events[0].name == "recvfrom" and events[0].ret is None
    assert isinstance(events[1], ProcessEnd) and events[1].signal == "SIGKILL"


def test_a_bad_line_raises_the_protocol_error_and_parsing_goes_on() -> None:
    p = StraceParser()
    p.receive_data(b"this is not strace\n5 1.0 close(3) = 0 <0.1>\n")
    with pytest.raises(RemoteProtocolError):
        p.next_event()
    ev = p.next_event()
    assert isinstance(ev, Syscall) and ev.name == "close" and ev.value == 0


def test_an_overlong_line_is_refused_and_skipped() -> None:
    p = StraceParser()
    p.receive_data(b"5 1.0 write(" + b"x" * (MAX_LINE + 10))
    with pytest.raises(RemoteProtocolError):
        p.next_event()
    p.receive_data(b"more\n5 2.0 close(4) = 0 <0.1>\n")
    ev = p.next_event()
    assert isinstance(ev, Syscall) and ev.name == "close"


def test_split_args_and_unquote() -> None:
    assert split_args('3<TCP:[a->b]>, {x=1, y=[2, 3]}, "a,b", 4') == ["3<TCP:[a->b]>", "{x=1, y=[2, 3]}", '"a,b"', "4"]
    assert unquote('"ab\\n\\x00\\377"...') == (b"ab\n\x00\xff", True)
    assert unquote("NULL") is None


LINE_PARTS = st.sampled_from([
    "5 ", "5<py> ", "1.25 ", "socket(", "accept4(", "<... accept4 resumed>", " <unfinished ...>", ") = ",
    "3<TCP:[1.2.3.4:5->6.7.8.9:10]>", "-1 EAGAIN (Resource temporarily unavailable)", " <0.001>", '"a\\"b"',
    "{", "}", "[", "]", "(", ")", ", ", "+++ exited with 0 +++", "+++ killed by SIGKILL +++", "--- SIGPIPE {} ---",
    "?", "0x10", "\n", "<", ">", "\\", '"',
])


def _feed_checking(data: bytes, chunk: int) -> None:
    p = StraceParser()
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)] + [b""]
    for piece in pieces:
        p.receive_data(piece)
        while True:
            try:
                if p.next_event() is None:
                    break
            except RemoteProtocolError:
                continue


@settings(max_examples=300, deadline=None)
@given(st.lists(LINE_PARTS, max_size=40).map(lambda xs: "".join(xs).encode()), st.integers(1, 8))
def test_fuzz_grammar_pieces_only_raise_the_protocol_error(data: bytes, chunk: int) -> None:
    _feed_checking(data, chunk)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_bytes_only_raise_the_protocol_error(data: bytes) -> None:
    _feed_checking(data, len(data) or 1)
    _feed_checking(data, 1)
