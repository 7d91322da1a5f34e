"""The fan-out's fast path: one encoding per message, one call per member, and a member that never
reads still leaves it at once (its queue bounded, then BYE), on every engine."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from socklab.apps.chat.backends import OneNode
from socklab.apps.chat.hub import ChatHub, Frame
from socklab.apps.chat.settings import ChatSettings
from socklab.apps.chat.tcp import ChatLineProtocol
from socklab.apps.chat.web import WebMember
from socklab.protocols.chat import Bye, Message, Nick, ServerEvent, encode_event, parse_event
from socklab.protocols.wsframe import data_frame
from tests.apps.chat.helpers import LineClient, Pump, chat_node


class Backend(OneNode):
    def start(self, hub: ChatHub) -> dict[str, Any]:
        self.hub = hub
        return {}

    def publish(self, msg: Message, on_error: Any) -> None:
        pass

    def history(self, room: str, after: int | None, limit: int, cb: Any) -> None:
        cb([])

    def set_topic(self, room: str, nick: str, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class FakeTransport:
    """Records every write; above ``high`` buffered bytes it pauses its protocol inside the write,
    as the engines do."""

    def __init__(self, high: int = 1 << 30) -> None:
        self.writes: list[bytes] = []
        self.after_close: list[bytes] = []
        self.buffered = 0
        self.high = high
        self.protocol: ChatLineProtocol | None = None
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed:
            self.after_close.append(data)
            return
        self.writes.append(data)
        self.buffered += len(data)
        if self.buffered > self.high and self.protocol is not None and not self.protocol.paused:
            self.protocol.pause_writing()

    def drain(self) -> None:
        self.buffered = 0
        assert self.protocol is not None
        self.protocol.resume_writing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def call_later(self, delay: float, cb: Any) -> None:
        pass


def line_room(n: int, **settings: Any) -> tuple[ChatHub, list[ChatLineProtocol], list[FakeTransport]]:
    values: dict[str, Any] = {"history_on_join": 0, "max_connections": n + 10, "max_per_address": 0,
                              "register_timeout": 0, "command_burst": 10**6, "presence_interval": 0}
    values.update(settings)
    hub = ChatHub(ChatSettings(**values), Backend())
    members, transports = [], []
    for i in range(n):
        t = FakeTransport()
        p = ChatLineProtocol(hub)
        t.protocol = p
        p.connection_made(t)  # type: ignore[arg-type]
        hub.handle(p, Nick(f"u{i}"))
        members.append(p)
        transports.append(t)
    for t in transports:
        t.writes.clear()
        t.buffered = 0
    return hub, members, transports


def message(seq: int, text: str = "hello") -> Message:
    return Message("#lobby", seq, 1.5, "u0", text)


def seqs(writes: list[bytes]) -> list[int]:
    """The sequence numbers of the MSG lines in ``writes``, in order."""
    events = [parse_event(line) for w in writes for line in w.decode().splitlines()]
    return [e.seq for e in events if isinstance(e, Message)]


def test_a_message_is_encoded_once_and_every_member_gets_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    hub, _, transports = line_room(50)
    calls: list[ServerEvent] = []

    def counting(event: ServerEvent) -> bytes:
        calls.append(event)
        return encode_event(event)

    monkeypatch.setattr("socklab.apps.chat.member.encode_event", counting)

    def no_method(self: ChatLineProtocol, frame: Frame) -> None:
        raise AssertionError("the fan-out called send_frame of a member whose transport takes bytes")

    monkeypatch.setattr(ChatLineProtocol, "send_frame", no_method)
    hub.on_message(message(1))
    assert len(calls) == 1  # one encoding for 50 members
    first = transports[0].writes[0]
    assert first.startswith(b"MSG #lobby 1 ")
    assert all(len(t.writes) == 1 and t.writes[0] is first for t in transports)  # the very same object
    assert hub.delivered == 50


def test_messages_committed_together_are_one_write_per_member_the_same_bytes() -> None:
    hub, _, transports = line_room(20)
    hub.on_messages([message(1, "a"), message(2, "b"), message(3, "c")])
    data = transports[0].writes[0]
    assert seqs([data]) == [1, 2, 3]
    assert all(t.writes == [data] and t.writes[0] is data for t in transports)
    assert hub.delivered == 60


def test_a_paused_member_leaves_the_fast_path_queues_then_comes_back_in_order() -> None:
    hub, members, transports = line_room(3, max_queue=10_000)
    slow, t = members[1], transports[1]
    t.high = 300  # this one's peer stopped reading
    for seq in range(1, 5):  # ~100 bytes each: the 4th write crosses 300 bytes and pauses it
        hub.on_message(message(seq, "x" * 60))
    assert slow.paused and slow.fast_write is None
    assert len(t.writes) == 4 and slow.queued == 0
    for seq in range(5, 8):  # queued by the member now, not written
        hub.on_message(message(seq, "x" * 60))
    assert len(t.writes) == 4 and len(slow.queue) == 3
    t.drain()  # resume_writing: the queue first, then the fast path again
    assert not slow.paused and slow.fast_write is not None and not slow.queue
    hub.on_message(message(8))
    assert seqs(t.writes) == list(range(1, 9))  # nothing lost, nothing reordered
    assert all(len(x.writes) == 8 for x in (transports[0], transports[2]))  # the others never waited


def test_a_member_that_never_reads_is_dropped_once_its_queue_is_full() -> None:
    hub, members, transports = line_room(3, max_queue=1000)
    slow, t = members[1], transports[1]
    t.high = 300
    for seq in range(1, 40):
        hub.on_message(message(seq, "x" * 60))
    assert slow.dropped_slow and slow.closing and slow.gone and t.closed
    assert b"BYE :outbound queue full" in t.writes[-1] and not t.after_close
    assert t.buffered <= 300 + 100 + 200  # the buffer stopped at the high-water mark (+ that write, the BYE)
    assert slow.id not in hub.rooms["#lobby"].members
    for other in (transports[0], transports[2]):  # every message, and the slow one's PART
        assert [w for w in other.writes if w.startswith(b"MSG")] == [w for w in transports[0].writes
                                                                     if w.startswith(b"MSG")]
        assert len([w for w in other.writes if w.startswith(b"MSG")]) == 39
        assert any(w.startswith(b"PART #lobby u1 ") for w in other.writes)


class FakeWs:
    def __init__(self) -> None:
        self.client = ("127.0.0.1", 40001)
        self.closed = False
        self.buffered_amount = 0
        self.framed: list[bytes] = []
        self.on_message: Any = None
        self.on_close: Any = None

    def send_framed(self, data: bytes) -> None:
        self.framed.append(data)

    def send(self, message: str) -> None:
        raise AssertionError("framed once, not per browser")


def test_browsers_in_a_room_get_one_websocket_frame_built_once() -> None:
    hub, _, transports = line_room(2)
    sockets = [FakeWs() for _ in range(5)]
    for i, ws in enumerate(sockets):
        m = WebMember(hub, ws)  # type: ignore[arg-type]
        hub.attach(m)
        hub.handle(m, Nick(f"w{i}"))
    for ws in sockets:
        ws.framed.clear()
    hub.on_message(message(1))
    frame = sockets[0].framed[0]
    assert all(ws.framed == [frame] and ws.framed[0] is frame for ws in sockets)
    assert frame == data_frame(Frame(message(1)).json)
    assert all(t.writes[-1].startswith(b"MSG #lobby 1 ") for t in transports)  # line members beside them
    hub.on_messages([message(2), message(3)])
    assert sockets[0].framed[-1] == data_frame(Frame(message(2)).json) + data_frame(Frame(message(3)).json)


def test_close_with_takes_the_member_off_the_fast_path() -> None:
    hub, members, transports = line_room(2)
    members[0].close_with(Bye("bye"))
    assert members[0].fast_write is None
    hub.on_message(message(1))
    assert transports[0].writes == [b"BYE :bye\n"] and not transports[0].after_close  # nothing after the BYE
    assert transports[1].writes[-1].startswith(b"MSG #lobby 1 ")


def test_a_never_reading_member_is_paused_within_its_write_on_every_engine(concurrent_engine: str) -> None:
    """What the fast path relies on: the engine calls pause_writing inside the write that takes the
    buffer past the high-water mark, so the bytes held for a member that never reads stay bounded
    (max_buffer + one write, which is one batch of messages at most), then its queue fills and it is
    dropped; the others get everything."""
    max_buffer = 32768
    with chat_node(concurrent_engine, rate=1e6, burst=100000, max_buffer=max_buffer, max_queue=32768) as node:
        slow = LineClient(node.tcp_port, "slow", rcvbuf=4096)
        with LineClient(node.tcp_port, "fast") as fast, LineClient(node.tcp_port, "talker") as talker:
            member = node.hub.nicks["slow"]
            assert isinstance(member, ChatLineProtocol) and member.fast_write is not None
            held: list[int] = []
            lock = threading.Lock()
            pause = member.pause_writing

            def recording_pause() -> None:
                with lock:
                    held.append(member.transport.get_write_buffer_size())
                pause()

            member.pause_writing = recording_pause  # type: ignore[method-assign]
            n = 4200  # 8 MB: past the kernel's buffers for the slow one (tcp_wmem max 4 MiB), then past ours
            pump = Pump(fast, b"MSG #lobby ", n)
            pump.start()
            talker_pump = Pump(talker, b"MSG #lobby ", n)
            talker_pump.start()
            for step in range(0, n, 20):  # the fast member never lags more than 20 messages
                talker.sock.sendall(b"".join(f"{i} {'z' * 1900}\n".encode() for i in range(step, step + 20)))
                pump.wait_count(step + 20)
            got = [int(line.split()[2]) for line in pump.lines() if line.startswith("MSG")]
            assert got == list(range(1, n + 1))
            talker_pump.lines()
        rest = slow.read_until_closed()
        slow.close()
        assert rest and rest[-1].startswith("BYE :outbound queue full")
        assert member.dropped_slow
        with lock:
            assert held, "pause_writing was never called"
            # the high-water mark + the write that crossed it: at most one store batch (the talker
            # sends 20 lines at a time, ~2,000 bytes each)
            assert max(held) <= max_buffer + 20 * 2000
