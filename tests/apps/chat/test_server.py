"""The chat node over real sockets: rooms, refusals, limits, slow consumers, history across restarts."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socklab.protocols.chat import Members, Message, Private, Synced, parse_event
from tests.apps.chat.helpers import LineClient, Pump, chat_node


def test_two_clients_talk_on_every_engine(concurrent_engine: str) -> None:
    with chat_node(concurrent_engine) as node, LineClient(node.tcp_port, "ann") as ann, \
            LineClient(node.tcp_port, "bob") as bob:
        ann.expect("JOIN #lobby bob")
        bob.send("hello ann")
        for c in (ann, bob):  # the sender's own copy is its acknowledgement
            msg = c.event("MSG")
            assert isinstance(msg, Message) and (msg.room, msg.seq, msg.nick, msg.text) == \
                ("#lobby", 1, "bob", "hello ann")
        ann.send("/msg bob psst")
        for c in (bob, ann):
            ev = c.event("PRIV")
            assert isinstance(ev, Private) and (ev.sender, ev.target, ev.text) == ("ann", "bob", "psst")
        bob.send("/who")
        assert bob.event("WHO") == Members("#lobby", ("ann", "bob"))
        bob.send("/quit see you")
        assert bob.expect("BYE") == "BYE :bye: see you"
        assert ann.expect("PART") == "PART #lobby bob :quit: see you"


def test_byte_by_byte_commands_and_crlf() -> None:
    with chat_node() as node, LineClient(node.tcp_port) as c:
        for b in b"/nick slow\r\n/join #dev\r\nhi there\r\n":
            c.sock.send(bytes([b]))
        c.expect("SYNC #dev")
        assert c.expect("MSG").endswith("slow say :hi there")


def test_refusals_are_clear_and_keep_the_connection() -> None:
    with chat_node() as node, LineClient(node.tcp_port) as c, LineClient(node.tcp_port, "ann") as ann:
        c.send("hello")
        assert c.expect("ERR").startswith("ERR 401 ")
        c.send("/nick 9lives")
        assert c.expect("ERR").startswith("ERR 422 ")
        c.send("/nick ANN")
        assert c.expect("ERR").startswith("ERR 409 ")
        c.send(b"\xff\xfe")
        assert c.expect("ERR") == "ERR 422 :lines must be UTF-8"
        c.send("/nick carl")
        c.expect("SYNC")
        c.send("/part #nowhere")
        assert c.expect("ERR").startswith("ERR 403 ")
        c.send("/msg nobody hi")
        assert c.expect("ERR").startswith("ERR 404 ")
        c.send("x" * 2001)
        assert c.expect("ERR").startswith("ERR 413 ")
        c.send("bad \x1b[2J escape")
        assert c.expect("ERR").startswith("ERR 422 ")
        c.send("/ping still-here")
        assert c.expect("PONG") == "PONG :still-here"
        ann.send("/topic the topic")
        assert c.expect("TOPIC") == "TOPIC #lobby ann :the topic"


def test_one_mib_line_without_newline_errors_and_closes(concurrent_engine: str) -> None:
    with chat_node(concurrent_engine) as node, LineClient(node.tcp_port, "big") as c, \
            LineClient(node.tcp_port, "other") as other:
        try:
            c.sock.sendall(b"y" * (1 << 20))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close before we finish: that is the point
        rest = c.read_until_closed()
        assert any(line.startswith("ERR 413 ") for line in rest), rest
        assert rest[-1].startswith("BYE ")
        other.send("/ping alive")
        other.expect("PONG")
        assert node.hub.members.__len__() == 1


def test_flood_is_rate_limited_with_one_notice(concurrent_engine: str) -> None:
    with chat_node(concurrent_engine, rate=1.0, burst=5) as node, LineClient(node.tcp_port, "flood") as f, \
            LineClient(node.tcp_port, "calm") as calm:
        f.sock.sendall(b"".join(b"spam %d\n" % i for i in range(200)) + b"/ping done\n")
        f.expect("PONG")
        notices = [line for line in f.seen if line.startswith("ERR 429 ")]
        assert len(notices) == 1
        calm.expect("MSG #lobby 5 ")  # the burst got through...
        calm.send("/ping x")
        calm.expect("PONG")
        f.send("/history 100")
        f.expect("SYNC")
        spam = [parse_event(line) for line in f.seen[f.seen.index(notices[0]):] if line.startswith("MSG")]
        assert 5 <= len({m.seq for m in spam if isinstance(m, Message)}) <= 6  # ...the rest did not


def test_slow_consumer_is_dropped_others_unaffected(concurrent_engine: str) -> None:
    # max_buffer and max_queue small so the test is quick; the slow client's kernel buffer tiny.
    with chat_node(concurrent_engine, rate=1e6, burst=100000, max_buffer=65536, max_queue=65536) as node:
        slow = LineClient(node.tcp_port, "slow", rcvbuf=4096)
        with LineClient(node.tcp_port, "fast") as fast, LineClient(node.tcp_port, "talker") as talker:
            n = 4200  # 8 MB in total: past the kernel's send buffer (tcp_wmem max 4 MiB) + ours
            pumps = [Pump(c, b"MSG #lobby ", n) for c in (fast, talker)]  # these two keep up
            for p in pumps:
                p.start()
            # In steps of 20 messages that the fast member has received: it never lags more than that,
            # while the slow one falls behind by everything.
            for step in range(0, n, 20):
                talker.sock.sendall(b"".join(f"{i} {'z' * 1900}\n".encode() for i in range(step, step + 20)))
                pumps[0].wait_count(step + 20)
            lines = pumps[0].lines()
            seqs = [int(line.split()[2]) for line in lines if line.startswith("MSG")]
            assert seqs == list(range(1, n + 1))  # fast got every message, in order, no gaps
            pumps[1].lines()
            fast.send("/who")
            who = fast.event("WHO")
            assert isinstance(who, Members) and "slow" not in who.nicks
        rest = slow.read_until_closed()
        slow.close()
        assert rest and rest[-1].startswith("BYE :outbound queue full")


def test_history_survives_restart_and_reconnect_catches_up(tmp_path: Path) -> None:
    db = str(tmp_path / "chat.sqlite3")
    with chat_node(store=db) as node, LineClient(node.tcp_port, "ann") as ann:
        for i in range(5):
            ann.send(f"message {i}")
        for _ in range(5):
            ann.expect("MSG")  # acknowledged = durably stored
        ann.send("/topic kept")
        ann.expect("TOPIC")
    with chat_node(store=db) as node, LineClient(node.tcp_port, "bob") as bob:
        assert bob.seen[-1] == "SYNC #lobby 5"
        assert [parse_event(x).seq for x in bob.seen if x.startswith("MSG")] == [1, 2, 3, 4, 5]  # type: ignore[attr-defined]
        assert "TOPIC #lobby ann :kept" in bob.seen
        with LineClient(node.tcp_port, "carl") as carl:
            carl.send("after restart")
            carl.expect("MSG #lobby 6 ")
        bob.expect("MSG #lobby 6 ")  # live
        bob.send("/join #lobby 3")  # "the last I saw was 3"
        assert bob.expect("MSG").startswith("MSG #lobby 4 ")
        bob.expect("MSG #lobby 5 ")
        bob.expect("MSG #lobby 6 ")
        assert bob.event("SYNC") == Synced("#lobby", 6)
        bob.send("/history 2")
        assert bob.expect("MSG").startswith("MSG #lobby 5 ")


def test_max_connections_refuses_with_a_reason(concurrent_engine: str) -> None:
    with chat_node(concurrent_engine, max_connections=2) as node, LineClient(node.tcp_port, "a") as a, \
            LineClient(node.tcp_port, "b"):
        with socket.create_connection(("127.0.0.1", node.tcp_port), timeout=10) as s:
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        assert data.startswith(b"BYE :server full")
        a.send("/ping ok")
        a.expect("PONG")


def test_shutdown_says_bye() -> None:
    with chat_node() as node:
        c = LineClient(node.tcp_port, "ann")
        node.shutdown(2.0)
        assert c.read_until_closed()[-1].startswith("BYE :server shutting down")
        c.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.binary(max_size=200), st.sampled_from(
    [b"\n", b"/nick ", b"/join #", b"/msg ", b"/topic ", b"/history 5", b"/quit", b"/part", b"\r\n", b"\xff"])),
    max_size=30))
def test_fuzz_no_input_crashes_the_server_or_another_client(node_and_probe: Any, parts: list[bytes]) -> None:
    node, probe = node_and_probe
    with socket.create_connection(("127.0.0.1", node.tcp_port), timeout=5) as s:
        s.sendall(b"/nick fuzz\n" + b"".join(parts) + b"\n")
        s.shutdown(socket.SHUT_WR)
        try:
            while s.recv(65536):
                pass
        except ConnectionResetError:
            pass
    probe.send("/ping ok")
    probe.expect("PONG")


@pytest.fixture(scope="module")
def node_and_probe() -> Any:
    with chat_node(rate=1000.0, burst=1000) as node, LineClient(node.tcp_port, "probe") as probe:
        yield node, probe


@pytest.mark.interop
def test_cli_readiness_and_nc(spawn: Any, tmp_path: Path) -> None:
    p = spawn("chat", "serve", "--tcp-port", "0", "--http-port", "-1", "--store", str(tmp_path / "c.db"))
    m = p.wait_for(r"socklab chat listening on tcp://127\.0\.0\.1:(\d+) \(engine epoll\)")
    port = int(m.group(1))
    with LineClient(port, "ann") as ann:
        out = subprocess.run(["nc", "-q", "2", "127.0.0.1", str(port)], input=b"/nick netcat\nhi from nc\n/quit\n",
                             capture_output=True, timeout=20)
        lines = out.stdout.decode().splitlines()
        assert lines[0].startswith("HELLO ") and lines[-1] == "BYE :bye"
        assert ann.expect("MSG").endswith("netcat say :hi from nc")
