"""The chat line protocol without sockets: commands, events, names, the token bucket, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socklab.core.errors import ProtocolError, RemoteProtocolError
from socklab.protocols.chat import (
    Bye,
    ChatConnection,
    EndOfInput,
    ErrorReply,
    Help,
    History,
    Invalid,
    Join,
    Joined,
    Me,
    Members,
    Message,
    Nick,
    NickChanged,
    Notice,
    Part,
    Parted,
    Ping,
    Pong,
    Presence,
    Private,
    PrivMsg,
    Quit,
    RoomInfo,
    RoomList,
    Rooms,
    Say,
    Synced,
    TokenBucket,
    Topic,
    TopicChanged,
    Welcome,
    Who,
    check_nick,
    check_room,
    check_text,
    encode_event,
    event_from_json,
    event_to_json,
    parse_command,
    parse_event,
)
from socklab.protocols.text import find_unsafe


@pytest.mark.parametrize(("line", "expected"), [
    ("hello world", Say("hello world")),
    ("//etc/passwd is a path", Say("/etc/passwd is a path")),
    ("/say #dev hi there", Say("hi there", "#dev")),
    ("/say hi there", Say("hi there")),
    ("/nick Ann_1", Nick("Ann_1")),
    ("/NICK ann", Nick("ann")),
    ("/join #Dev", Join("#dev")),
    ("/join #dev 42", Join("#dev", 42)),
    ("/part", Part()),
    ("/part #dev", Part("#dev")),
    ("/msg bob hi  there", PrivMsg("bob", "hi  there")),
    ("/me waves", Me("waves")),
    ("/who", Who()),
    ("/who #dev", Who("#dev")),
    ("/rooms", Rooms()),
    ("/topic", Topic()),
    ("/topic sockets and more", Topic("sockets and more")),
    ("/history 10", History(10)),
    ("/history 10 #dev", History(10, "#dev")),
    ("/quit gone fishing", Quit("gone fishing")),
    ("/quit", Quit("")),
    ("/help", Help()),
    ("/ping abc", Ping("abc")),
])
def test_commands(line: str, expected: object) -> None:
    assert parse_command(line) == expected


@pytest.mark.parametrize(("line", "code"), [
    ("/nick", 400), ("/nick two words", 400), ("/nick 1abc", 422), ("/nick " + "a" * 30, 422),
    ("/join", 400), ("/join lobby", 422), ("/join #a b", 400), ("/join #" + "x" * 40, 422),
    ("/msg bob", 400), ("/msg", 400), ("/me", 400), ("/history", 400), ("/history 0", 400),
    ("/history 100000", 400), ("/history x", 400), ("/history ٣", 400), ("/frobnicate", 400), ("/", 400),
])
def test_bad_commands_carry_a_code(line: str, code: int) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_command(line)
    assert info.value.hint == code


def test_names_and_text() -> None:
    assert check_nick("ann") == "ann"
    assert check_room("#Lobby") == "#lobby"
    assert check_text("héllo", 10) == "héllo"
    for bad, code in [("", 422), ("  ", 422), ("a\x1b[31mred", 422), ("a\x9b31m", 422), ("a\u202eb", 422),
                      ("x" * 11, 413), ("é" * 6, 413)]:
        with pytest.raises(RemoteProtocolError) as info:
            check_text(bad, 10)
        assert info.value.hint == code


EVENTS = [
    Welcome("socklab-chat@h", 1, "welcome: hi"),
    Message("#lobby", 7, 1700000000.125, "ann", "hello :) world", "say"),
    Message("#lobby", 8, 1700000000.5, "ann", "waves", "action"),
    Private("ann", "bob", 1.0, "psst"),
    Joined("#a", "ann"), Parted("#a", "ann", "quit: bye"), Parted("#a", "ann", ""),
    NickChanged("*", "ann"), TopicChanged("#a", "ann", "sockets"), Members("#a", ("ann", "bob")),
    Members("#a", ()), RoomList((RoomInfo("#a", 2, 10), RoomInfo("#b", 0, 3))), RoomList(()),
    Synced("#a", 10), Notice("note"), ErrorReply(429, "slow down"), Pong("x y"), Pong(""), Bye("bye"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_events_round_trip_as_lines_and_json(event: object) -> None:
    line = encode_event(event)  # type: ignore[arg-type]
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_event(line.decode()[:-1]) == event
    assert event_from_json(event_to_json(event)) == event  # type: ignore[arg-type]


def test_message_line_is_documented_shape() -> None:
    line = encode_event(Message("#lobby", 7, 1700000000.125, "ann", "hello world"))
    assert line == b"MSG #lobby 7 1700000000.125 ann say :hello world\n"


def test_newlines_never_split_a_server_line() -> None:
    assert encode_event(Notice("a\nb\rc")) == b"INFO :a\\nb\\rc\n"


UNSAFE_SAMPLES = ["\x1b]0;owned\x07\x1b[2J", "\x9b2J", "\x85", "\u202e", "\u2066", "\u200b", "\ufeff", "\r",
                  "\x00", "\x7f"]


@pytest.mark.parametrize("bad", UNSAFE_SAMPLES, ids=repr)
@pytest.mark.parametrize("template", [
    "/quit gone{}", "/part #a bye{}", "/part bye{}", "hello {}", "//x{}", "/say #a hi{}", "/say hi{}",
    "/me waves{}", "/msg bob psst{}", "/topic new{}", "/ping tok{}", "/nick ann{}", "/join #a{}", "/who #a{}",
    "/history 5{}", "/rooms {}", "/help {}",
])
def test_every_text_field_refuses_controls_bidi_and_zero_width(template: str, bad: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_command(template.format(bad))
    assert info.value.hint == 422, info.value
    assert f"U+{ord(bad[0]):04X}" in str(info.value)


def test_quit_reason_with_escapes_is_an_invalid_line_on_the_wire() -> None:
    conn = ChatConnection()
    conn.receive_data(b"/quit \x1b]0;owned\x07\x1b[2J\r\n/quit fine\r\n")
    ev = conn.next_event()
    assert isinstance(ev, Invalid) and ev.code == 422 and ev.reason.startswith("quit reason holds U+001B")
    assert conn.next_event() == Quit("fine")


def test_part_reason() -> None:
    assert parse_command("/part #dev see you all") == Part("#dev", "see you all")
    assert parse_command("/part see you") == Part(None, "see you")


def test_tab_is_text() -> None:
    assert parse_command("a\tb") == Say("a\tb")
    assert encode_event(Notice("a\tb")) == b"INFO :a\tb\n"


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_fuzz_no_command_carries_unsafe_text(text: str) -> None:
    try:
        cmd = parse_command(text)
    except RemoteProtocolError:
        return
    for value in vars(cmd).values():
        assert not isinstance(value, str) or find_unsafe(value, allow_tab=True) is None, cmd


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.text(max_size=20))
def test_fuzz_server_lines_never_carry_unsafe_characters(text: str, nick: str) -> None:
    for event in (Message("#a", 1, 1.0, nick, text), Parted("#a", nick, text), Bye(text), Pong(text)):
        line = encode_event(event)
        assert line.count(b"\n") == 1 and line.endswith(b"\n")
        assert find_unsafe(line.decode()[:-1], allow_tab=True) is None


def feed(data: bytes, chunk: int) -> list[object]:
    conn = ChatConnection(max_line=64)
    out: list[object] = []
    try:
        for i in range(0, len(data), chunk):
            conn.receive_data(data[i:i + chunk])
            while (ev := conn.next_event()) is not None:
                out.append(ev)
        conn.receive_data(b"")
        while (ev := conn.next_event()) is not None:
            out.append(ev)
    except RemoteProtocolError as exc:
        out.append(("fatal", exc.hint))
    return out


def test_connection_whole_and_byte_by_byte() -> None:
    data = b"/nick ann\r\nhello\n\n/join #x 3\n\xff\xfe\n/bogus\nlast"
    whole = feed(data, len(data))
    assert whole == feed(data, 1)
    assert whole == [Nick("ann"), Say("hello"), Join("#x", 3), Invalid(422, "lines must be UTF-8"),
                     Invalid(400, "unknown command /bogus; try /help"), Say("last"), EndOfInput()]


def test_one_mib_line_without_newline_is_fatal_and_bounded() -> None:
    conn = ChatConnection(max_line=4096)
    chunk = b"x" * 65536
    conn.receive_data(b"/nick ann\n")
    for _ in range(16):
        conn.receive_data(chunk)
        assert conn._lines.buffered <= 4096 + 65536
    assert conn.next_event() == Nick("ann")  # what came before the long line still counts
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.hint == 413


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=80), st.sampled_from(
    [b"\n", b"\r\n", b"/nick ", b"/join #", b"/msg ", b"/history ", b"/", b"//", b"#", b" ", b"\xc3", b"\x00"])),
    max_size=40), st.integers(1, 7))
def test_fuzz_connection_only_protocol_errors_and_same_events(parts: list[bytes], chunk: int) -> None:
    data = b"".join(parts)
    assert feed(data, len(data) or 1) == feed(data, chunk) == feed(data, 1)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=120))
def test_fuzz_parse_command(text: str) -> None:
    try:
        cmd = parse_command(text)
    except ProtocolError as exc:
        assert isinstance(exc, RemoteProtocolError) and exc.hint in (400, 413, 422)
        return
    assert cmd is not None


names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_\-]{0,10}", fullmatch=True)
rooms = st.from_regex(r"#[a-z0-9_\-]{1,8}", fullmatch=True)
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), min_size=1,
                max_size=40).filter(lambda t: find_unsafe(t, allow_tab=True) is None)  # refused as input
events = st.one_of(
    st.builds(Message, rooms, st.integers(0, 2**40), st.integers(0, 2**40).map(lambda n: n / 1000), names, texts,
              st.sampled_from(["say", "action"])),
    st.builds(Private, names, names, st.integers(0, 2**30).map(lambda n: n / 1000), texts),
    st.builds(Joined, rooms, names), st.builds(Parted, rooms, names, texts),
    st.builds(Members, rooms, st.lists(names, max_size=5).map(tuple)),
    st.builds(ErrorReply, st.integers(100, 599), texts), st.builds(Notice, texts),
    st.builds(TopicChanged, rooms, names, texts), st.builds(Synced, rooms, st.integers(0, 2**40)),
    st.builds(Presence, rooms, st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6), texts),
)


@settings(max_examples=300, deadline=None)
@given(events)
def test_fuzz_event_codec_round_trip(event: object) -> None:
    assert parse_event(encode_event(event).decode()[:-1]) == event  # type: ignore[arg-type]
    assert event_from_json(event_to_json(event)) == event  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=100), st.text(max_size=60).map(lambda t: "PRESENCE " + t),
                 st.lists(st.sampled_from(["#a", "1", "-1", "x", ":", " :t", "2"]), max_size=7).map(
                     lambda parts: "PRESENCE " + " ".join(parts))))
def test_fuzz_parse_event_garbage(text: str) -> None:
    try:
        parse_event(text)
    except ProtocolError as exc:
        assert isinstance(exc, RemoteProtocolError)
    try:
        event_from_json(text)
    except ProtocolError as exc:
        assert isinstance(exc, RemoteProtocolError)


def test_token_bucket() -> None:
    b = TokenBucket(rate=2, burst=3, now=100.0)
    assert [b.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert b.retry_after(100.0) == pytest.approx(0.5)
    assert b.take(100.5) and not b.take(100.5)
    assert b.take(110.0) and b.take(110.0) and b.take(110.0) and not b.take(110.0)  # capped at burst
    assert b.take(109.0) is False  # a clock going backwards adds nothing
    with pytest.raises(ValueError):
        TokenBucket(0, 1, 0.0)
