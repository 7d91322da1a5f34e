"""Presence in crowded rooms: joins and parts gathered per tick, counted (not named) above
``presence_names`` members, the member list on demand (issue 19: 10,000 members in one room).

Sans-I/O tests drive the hub with a fake backend, fake members and a fake timer; the real-socket
test puts 300 line clients in one room and counts the presence lines each receives.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from socklab.apps.chat.backends import OneNode
from socklab.apps.chat.hub import ChatHub, Frame, Member
from socklab.apps.chat.presence import summary
from socklab.apps.chat.settings import ChatSettings
from socklab.apps.chat.store import RoomState
from socklab.core.errors import RemoteProtocolError
from socklab.protocols.chat import (
    Bye,
    Join,
    Joined,
    Members,
    Message,
    Nick,
    Parted,
    Presence,
    Quit,
    Say,
    ServerEvent,
    Who,
    encode_event,
    event_from_json,
    event_to_json,
    parse_event,
)
from tests.apps.chat.helpers import LineClient, chat_node

PRESENCE_KINDS = (Joined, Parted, Presence, Members)


# ---- the PRESENCE line -------------------------------------------------------------------------------
def test_presence_line_and_json_round_trip() -> None:
    ev = Presence("#big", 10000, 37, 2, "10000 members in #big: 37 joined (a, b, c and 34 more); 2 left (d, e)")
    line = encode_event(ev)
    assert line == b"PRESENCE #big 10000 37 2 :10000 members in #big: 37 joined (a, b, c and 34 more); 2 left (d, e)\n"
    assert parse_event(line.decode().rstrip("\n")) == ev
    assert event_from_json(event_to_json(ev)) == ev
    assert '"type":"PRESENCE"' in event_to_json(ev)
    with pytest.raises(RemoteProtocolError):
        parse_event("PRESENCE #big ten 1 2 :x")
    with pytest.raises(RemoteProtocolError):
        parse_event("PRESENCE #big 1 2 :x")


def test_summary_names_a_few_and_counts_the_rest() -> None:
    assert summary("#a", 500, ["ann", "bob", "cat", "dan", "eve"], ["fay"]) == \
        "500 members in #a: 5 joined (ann, bob, cat and 2 more); 1 left (fay)"
    assert summary("#a", 1, [], ["x"]) == "1 member in #a: 1 left (x)"
    assert summary("#a", 300, [], []) == "300 members in #a; /who #a lists them"


# ---- the hub, sans I/O -----------------------------------------------------------------------------
class FakeTimer:
    def __init__(self) -> None:
        self.due: list[Callable[[], None]] = []

    def call_later(self, delay: float, cb: Callable[[], None]) -> Any:
        self.due.append(cb)
        timer = self

        class Handle:
            def cancel(self) -> None:
                if cb in timer.due:
                    timer.due.remove(cb)

        return Handle()

    def tick(self) -> None:
        due, self.due = self.due, []
        for cb in due:
            cb()


class FakeBackend(OneNode):
    """Like LocalBackend, without a store: numbers messages and delivers them at once."""

    def __init__(self) -> None:
        self.seq = 0

    def start(self, hub: ChatHub) -> dict[str, RoomState]:
        self.hub = hub
        return {}

    def publish(self, msg: Message, on_error: Callable[[str], None]) -> None:
        assert self.hub is not None
        self.seq += 1
        self.hub.on_message(Message(msg.room, self.seq, msg.ts, msg.nick, msg.text, msg.kind))

    def history(self, room: str, after: int | None, limit: int, cb: Callable[[list[Message]], None]) -> None:
        cb([])

    def set_topic(self, room: str, nick: str, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class FakeMember(Member):
    def __init__(self) -> None:
        super().__init__("test:1")
        self.writes: list[list[ServerEvent]] = []  # one entry per write

    def send_frame(self, frame: Frame) -> None:
        self.writes.append([frame.event])

    def send_frames(self, frames: list[Frame]) -> None:
        self.writes.append([f.event for f in frames])

    def close_with(self, bye: Bye) -> None:
        self.writes.append([bye])

    @property
    def events(self) -> list[ServerEvent]:
        return [e for w in self.writes for e in w]

    def presence(self) -> list[ServerEvent]:
        """Presence events about others (its own JOIN excluded)."""
        return [e for e in self.events if isinstance(e, PRESENCE_KINDS)
                and not (isinstance(e, Joined) and e.nick == self.nick)]


def make_hub(**overrides: Any) -> tuple[ChatHub, FakeTimer]:
    values: dict[str, Any] = {"history_on_join": 0, "presence_names": 10, "presence_interval": 0.5,
                              "command_burst": 1000, "max_connections": 10000, "max_per_address": 0,
                              "register_timeout": 0}
    values.update(overrides)
    timer = FakeTimer()
    hub = ChatHub(ChatSettings(**values), FakeBackend(), call_later=timer.call_later)
    return hub, timer


def join(hub: ChatHub, nick: str) -> FakeMember:
    m = FakeMember()
    hub.attach(m)
    hub.handle(m, Nick(nick))  # joins #lobby
    return m


def test_a_small_room_gets_join_lines_once_per_tick_in_one_write() -> None:
    hub, timer = make_hub()
    ann = join(hub, "ann")
    assert Joined("#lobby", "ann") in ann.events  # its own JOIN at once
    assert Members("#lobby", ("ann",)) in ann.events
    bob, cat = join(hub, "bob"), join(hub, "cat")
    assert ann.presence() == [Members("#lobby", ("ann",))]  # nothing yet: gathered until the tick
    writes_before = len(ann.writes)
    timer.tick()
    assert ann.writes[writes_before:] == [[Joined("#lobby", "bob"), Joined("#lobby", "cat")]]  # one write
    assert bob.presence()[-1] == Joined("#lobby", "cat")  # bob's WHO had ann; it gets cat's JOIN
    assert Joined("#lobby", "bob") not in bob.presence()
    assert cat.presence() == [Members("#lobby", ("ann", "bob", "cat"))]  # its WHO had everybody
    hub.handle(bob, Quit("bye"))
    timer.tick()
    assert ann.events[-1] == Parted("#lobby", "bob", "quit: bye")


def test_a_message_after_a_join_in_a_small_room_comes_after_the_join_line() -> None:
    hub, timer = make_hub()
    ann = join(hub, "ann")
    bob = join(hub, "bob")
    hub.handle(bob, Say("hi"))
    kinds = [type(e).__name__ for e in ann.events if isinstance(e, (Joined, Message))]
    assert kinds == ["Joined", "Joined", "Message"]  # ann's own, bob's (flushed first), the message
    assert not timer.due or hub.presence.pending == {}


def test_a_crowded_room_gets_one_presence_line_per_tick_not_one_per_join() -> None:
    hub, timer = make_hub(presence_names=10)
    first = join(hub, "m0")
    members = [first] + [join(hub, f"m{i}") for i in range(1, 300)]
    timer.tick()
    # m0 saw 299 joins: one write with a PRESENCE line (the room is past 10 members), not 299 JOINs;
    # it counts every join of the tick (m0's own too: it happened in this tick)
    others = first.presence()
    assert others[-1] == Presence("#lobby", 300, 300, 0, "300 members in #lobby: 300 joined (m0, m1, m2 and 297 "
                                                          "more)")
    assert len(others) == 2  # its WHO at the join, then the one PRESENCE line
    # a member joining the crowded room gets the count, not 300 names
    late = join(hub, "late")
    assert not any(isinstance(e, Members) for e in late.events)
    count = [e for e in late.events if isinstance(e, Presence)]
    assert count and count[0].count == 301 and count[0].joined == 0 and "/who #lobby" in count[0].text
    # ... and can list everybody on demand
    hub.handle(late, Who("#lobby"))
    who = late.events[-1]
    assert isinstance(who, Members) and len(who.nicks) == 301 and "m299" in who.nicks
    timer.tick()
    for m in members:  # the count when it joined (past 10 members), then one per tick: 2 ticks
        assert sum(isinstance(e, Presence) for e in m.events) <= 3


def test_a_room_shrinking_back_gets_the_list_afresh_then_lines() -> None:
    hub, timer = make_hub(presence_names=3)
    ms = [join(hub, f"u{i}") for i in range(6)]
    timer.tick()
    assert isinstance(ms[0].events[-1], Presence)
    for m in ms[3:]:
        hub.handle(m, Quit(""))
    timer.tick()
    assert ms[0].events[-1] == Members("#lobby", ("u0", "u1", "u2"))  # back to 3: everybody's list afresh
    hub.handle(ms[2], Quit(""))
    timer.tick()
    assert ms[0].events[-1] == Parted("#lobby", "u2", "quit")


def test_presence_of_a_room_everybody_left_is_dropped_and_rooms_freed() -> None:
    hub, timer = make_hub(presence_names=2)
    ms = [join(hub, f"u{i}") for i in range(3)]
    timer.tick()
    assert hub.presence.crowded == {"#lobby"}
    for m in ms:
        hub.handle(m, Quit(""))
    timer.tick()
    assert hub.rooms == {} and hub.presence.pending == {} and hub.presence.crowded == set()  # nothing kept
    hub.shutdown()
    assert timer.due == []


def test_interval_zero_sends_at_once() -> None:
    hub, timer = make_hub(presence_interval=0)
    ann = join(hub, "ann")
    join(hub, "bob")
    assert ann.events[-1] == Joined("#lobby", "bob") and timer.due == []


def test_joining_another_room_and_rejoining() -> None:
    hub, timer = make_hub()
    ann, bob = join(hub, "ann"), join(hub, "bob")
    hub.handle(ann, Join("#dev"))
    hub.handle(bob, Join("#dev"))
    timer.tick()
    assert Joined("#dev", "bob") in ann.events and Joined("#lobby", "bob") in ann.events


# ---- real sockets --------------------------------------------------------------------------------------
def _read_lines(sel: selectors.BaseSelector, bufs: dict[int, bytes], lines: dict[int, list[str]],
                done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        assert left > 0, "timed out waiting for the clients"
        for key, _ in sel.select(min(left, 1.0)):
            s: socket.socket = key.fileobj  # type: ignore[assignment]
            data = s.recv(1 << 16)
            assert data, f"client {key.data} was closed: {lines[key.data][-3:]}"
            *complete, bufs[key.data] = (bufs[key.data] + data).split(b"\n")
            lines[key.data] += [c.decode() for c in complete]


@pytest.mark.parametrize("engine", ["epoll", "asyncio"])
def test_300_clients_join_one_room_with_o1_presence_lines_per_tick(engine: str) -> None:
    """300 line clients join #lobby: the first one receives a presence line per tick, not 299 JOIN
    lines; a late nc-style client gets the count and lists all 301 members with /who. On the old
    code every member got one JOIN line per later join (the first one, 299)."""
    n = 300
    with chat_node(engine, presence_names=5, presence_interval=0.2, max_per_address=0,
                   history_on_join=0) as node:
        sel = selectors.DefaultSelector()
        socks: list[socket.socket] = []
        bufs: dict[int, bytes] = {}
        lines: dict[int, list[str]] = {}
        try:
            for i in range(n):
                s = socket.create_connection(("127.0.0.1", node.tcp_port), timeout=10)
                s.sendall(f"/nick c{i}\n".encode())
                s.setblocking(False)
                socks.append(s)
                bufs[i], lines[i] = b"", []
                sel.register(s, selectors.EVENT_READ, i)

            def synced() -> bool:
                return all(any(x.startswith("SYNC #lobby") for x in lines[i]) for i in range(n))

            _read_lines(sel, bufs, lines, synced, 45)
            with LineClient(node.tcp_port, "late", timeout=10) as late:
                at_join = [parse_event(x) for x in late.seen if x.startswith("PRESENCE #lobby")]  # before SYNC
                assert at_join == [Presence("#lobby", n + 1, 0, 0, at_join[0].text if at_join else "")]
                assert "/who #lobby" in at_join[0].text
                assert not any(x.startswith("WHO") for x in late.seen)  # the count, not 301 names
                late.send("/who")
                who = late.event("WHO #lobby")
                assert isinstance(who, Members) and len(who.nicks) == n + 1
                assert {"c0", "c299", "late"} <= set(who.nicks)

                def first_saw_late() -> bool:  # the tick that carried late's join reached c0
                    return any(x == "JOIN #lobby late" or (x.startswith("PRESENCE #lobby") and
                               parse_event(x).count == n + 1) for x in lines[0])  # type: ignore[attr-defined]

                _read_lines(sel, bufs, lines, first_saw_late, 20)
            about_others = [x for x in lines[0] if x.startswith(("JOIN", "PART", "PRESENCE", "WHO"))
                            and x != "JOIN #lobby c0"]
            ticks = node.hub.presence.ticks
            # per tick one PRESENCE line once the room is past 5 members (before: at most 5 JOIN lines),
            # plus c0's own WHO list at its join - whatever the number of joins
            assert len(about_others) <= ticks + 1 + 5, about_others[:20]
            assert len(about_others) < 60, f"{len(about_others)} presence lines for {n} joins"
        finally:
            sel.close()
            for s in socks:
                s.close()


def test_presence_settings_are_checked_and_named() -> None:
    from socklab.core.errors import UsageError

    with pytest.raises(UsageError, match="--presence-interval"):
        ChatSettings(presence_interval=-1).validate()
    with pytest.raises(UsageError, match="--presence-names"):
        ChatSettings(presence_names=-1).validate()


def test_who_list_is_kept_until_the_membership_changes() -> None:
    hub, _ = make_hub(presence_names=1)
    ann, bob = join(hub, "ann"), join(hub, "bob")
    hub.handle(ann, Who(None))
    first = ann.events[-1]
    hub.handle(ann, Who(None))
    assert ann.events[-1] == first == Members("#lobby", ("ann", "bob"))
    assert hub.rooms["#lobby"].names == ["ann", "bob"]  # sorted once, reused
    hub.handle(bob, Nick("Zed"))
    hub.handle(ann, Who(None))
    assert ann.events[-1] == Members("#lobby", ("ann", "Zed"))
    cat = join(hub, "cat")
    hub.handle(cat, Who(None))
    assert cat.events[-1] == Members("#lobby", ("ann", "cat", "Zed"))
    hub.handle(cat, Quit(""))
    hub.handle(ann, Who(None))
    assert ann.events[-1] == Members("#lobby", ("ann", "Zed"))


def test_a_rename_in_a_crowded_room_is_told_in_the_tick_not_a_line_to_everybody() -> None:
    from socklab.protocols.chat import NickChanged

    hub, timer = make_hub(presence_names=2)
    ms = [join(hub, f"u{i}") for i in range(4)]
    timer.tick()
    before = len(ms[0].events)
    hub.handle(ms[1], Nick("zed"))
    assert NickChanged("u1", "zed") in ms[1].events  # the renamer is told at once
    assert len(ms[0].events) == before  # the others wait for the tick
    timer.tick()
    assert ms[0].events[before:] == [Presence("#lobby", 4, 0, 0, "4 members in #lobby: 1 renamed (u1 is now zed)")]
    assert summary("#a", 3, [], [], [("a", "b")] * 4) == \
        "3 members in #a: 4 renamed (a is now b, a is now b, a is now b and 1 more)"
    # in a small room a rename is still a NICK line at once
    hub2, _ = make_hub(presence_names=10)
    a, b = join(hub2, "a"), join(hub2, "b")
    hub2.handle(b, Nick("c"))
    assert a.events[-1] == NickChanged("b", "c")


def test_parts_caused_by_a_flush_do_not_nest_flushes() -> None:
    """On some engines a failed write closes the connection at once: its PART arrives while the
    PART that caused the write is being sent. 300 such closes in a row recursed 300 deep."""
    hub, _ = make_hub(presence_interval=0, presence_names=1000)
    ms = [join(hub, f"u{i}") for i in range(300)]

    class Dying(FakeMember):
        def send_frames(self, frames: list[Frame]) -> None:
            hub.detach(self, "connection lost")  # the write failed: gone, before anything else

    for i, m in enumerate(ms[1:], 1):  # swap every member for one whose next write kills it
        d = Dying()
        d.nick, d.rooms, d.current = m.nick, m.rooms, m.current
        hub.rooms["#lobby"].members[m.id] = d
        hub.members[m.id] = d
        d.id = m.id
        d.bucket, d.commands = m.bucket, m.commands
        ms[i] = d
    hub.handle(ms[0], Quit(""))  # one part: every other member's write fails in turn
    assert hub.rooms == {}  # everybody left, and no RecursionError on the way


def _soft_nofile(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no 'Max open files' line")


@pytest.mark.interop
def test_the_node_raises_its_open_file_limit_to_fit_max_connections(spawn: Any, tmp_path: Any) -> None:
    """Started from a shell with ulimit -n 1024, a node for 3,000 connections raised its own soft
    limit (the old node kept 1,024, and accept() failed with EMFILE near 1,000 members); past the
    hard limit it says so in one line."""
    common = ("chat", "serve", "--tcp-port", "0", "--http-port", "-1", "--store", ":memory:")
    p = spawn(*common, "--max-connections", "3000", prefix=["prlimit", "--nofile=1024:8192"])
    p.wait_for(r"socklab chat listening on tcp://127\.0\.0\.1:(\d+)")
    assert _soft_nofile(p.pid) >= 3000 + 64
    q = spawn(*common, "--max-connections", "5000", prefix=["prlimit", "--nofile=1024:2048"])
    q.wait_for(r"socklab chat listening on tcp://127\.0\.0\.1:(\d+)")
    assert _soft_nofile(q.pid) == 2048
    assert q.popen.stderr is not None
    err = q.popen.stderr.readline().decode()
    assert "--max-connections 5000 needs about 5064 open files" in err and "2048" in err


def test_an_ipv6_peer_is_named_with_brackets() -> None:
    # before: "::1:5000", which reads as an address with no port
    from socklab.apps.chat.tcp import ChatLineProtocol

    class _Transport:
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return ("::1", 5000, 0, 0) if name == "peername" else default

        def write(self, data: bytes) -> None:
            pass

        def close(self) -> None:
            pass

        def is_closing(self) -> bool:
            return False

        def get_write_buffer_size(self) -> int:
            return 0

        def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
            pass

    hub, _ = make_hub()
    proto = ChatLineProtocol(hub)
    proto.connection_made(_Transport())  # type: ignore[arg-type]
    assert proto.peer == "[::1]:5000" and proto.address == "::1"
