"""Hostile peers against a real chat node: terminal escapes, slot hogs, room churn, command floods."""

from __future__ import annotations

import socket
import threading

from socklab.apps.chat.client import ChatClient
from socklab.protocols.text import find_unsafe
from tests.apps.chat.helpers import LineClient, chat_node, http_get, refused
from tests.apps.chat.test_web import WsClient

ESCAPES = "\x1b]0;owned\x07\x1b[2J"  # retitle the window, clear the screen


def _clean(lines: list[str]) -> bool:
    return all(find_unsafe(line, allow_tab=True) is None for line in lines)


def test_quit_and_part_reasons_with_escapes_never_reach_another_client(concurrent_engine: str) -> None:
    with chat_node(concurrent_engine) as node, LineClient(node.tcp_port, "ann") as ann, \
            LineClient(node.tcp_port, "eve") as eve:
        ann.expect("JOIN #lobby eve")
        eve.send("/join #side")
        eve.expect("SYNC #side")
        ann.send("/join #side")
        ann.expect("SYNC #side")
        eve.send(f"/quit {ESCAPES}")
        assert eve.expect("ERR").startswith("ERR 422 :quit reason holds U+001B")
        eve.send(f"/part #side {ESCAPES}")
        assert eve.expect("ERR").startswith("ERR 422 :part reason holds U+001B")
        for text in ("csi \x9b2J", "bidi \u202egnp.exe", "zero\u200bwidth", "isolate \u2066x"):
            eve.send(text)  # C1, bidi and zero-width characters in ordinary messages: refused too
            assert eve.expect("ERR").startswith("ERR 422 :message holds U+")
        eve.send("/quit bye for now")
        assert eve.expect("BYE") == "BYE :bye: bye for now"
        assert ann.expect("PART #lobby eve") == "PART #lobby eve :quit: bye for now"
        ann.send("/ping end")
        ann.expect("PONG")
        assert not [line for line in ann.seen if line.startswith("MSG")], ann.seen
        assert _clean(ann.seen), ann.seen
        assert _clean(eve.seen), eve.seen  # the refusals name the code point, they do not echo it


def test_terminal_client_escapes_whatever_a_server_sends() -> None:
    """A rogue (or old) server's raw escapes are shown escaped by socklab's own client."""
    lines = [b"HELLO evil 1 :hi\x1b]0;owned\x07", b"MSG #a 1 1.000 eve say :\x1b[2Jclear \xc2\x9b2J",
             "PART #a eve :quit: \x1b]0;t\x07\u202e".encode(),
             b"NOT A PROTOCOL LINE \x1b[31m"]
    shown: list[str] = []
    got_all = threading.Event()

    def show(line: str) -> None:
        shown.append(line)
        if len(shown) >= len(lines):
            got_all.set()

    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        client = ChatClient(f"127.0.0.1:{port}", "ann", show)

        def serve() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.sendall(b"\n".join(lines) + b"\n")
                got_all.wait(10)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        client.start()
        try:
            assert got_all.wait(10), shown
        finally:
            client.quitting = True
            client.close()
            t.join(10)
    text = "\n".join(shown[:len(lines)])
    assert _clean(shown), shown
    assert "\\x1b]0;owned\\x07" in text and "\\x1b[2Jclear \\x9b2J" in text and "\\u202e" in text
    assert "\\x1b[31m" in text


# ---- chat slots ----------------------------------------------------------------------------------
def test_a_connection_without_a_nick_is_closed_at_its_deadline(concurrent_engine: str) -> None:
    with chat_node(concurrent_engine, http_port=0, register_timeout=0.5) as node, \
            LineClient(node.tcp_port, "ann") as ann, LineClient(node.tcp_port) as silent:
        ws = WsClient(node.http_port)
        try:
            ws.expect("HELLO")
            assert ws.expect("BYE")["text"].startswith("no nick chosen within 0.5 s (register_timeout)")
        finally:
            ws.close()
        rest = silent.read_until_closed()  # it sent nothing after HELLO
        assert rest and rest[-1] == \
            "BYE :no nick chosen within 0.5 s (register_timeout); closing - send /nick NAME first"
        ann.send("/ping still-here")  # chose a nick in time: stays
        ann.expect("PONG")
        assert list(node.hub.members.values()) == [m for m in node.hub.members.values() if m.nick == "ann"]


def test_one_address_is_capped_while_another_still_connects(concurrent_engine: str) -> None:
    with chat_node(concurrent_engine, max_per_address=3) as node:
        held = [LineClient(node.tcp_port) for _ in range(3)]
        try:
            assert refused(node.tcp_port) == \
                b"BYE :too many connections from 127.0.0.1 (3, max_per_address); close one and try again\n"
            with LineClient(node.tcp_port, "elsewhere", source="127.0.0.2") as other:
                other.send("/ping ok")
                other.expect("PONG")
            held[0].send("/quit")
            held[0].expect("BYE")  # its place is free once the BYE is written
            held[0].close()
            with LineClient(node.tcp_port, "again") as again:
                again.send("/ping ok")
                again.expect("PONG")
        finally:
            for c in held:
                c.close()


def test_the_page_loads_when_every_chat_slot_is_taken(concurrent_engine: str) -> None:
    with chat_node(concurrent_engine, http_port=0, max_connections=3) as node:
        held = [LineClient(node.tcp_port) for _ in range(3)]
        try:
            assert refused(node.tcp_port).startswith(b"BYE :server full")
            page = http_get(node.http_port)
            assert page.startswith(b"HTTP/1.1 200") and b"<title>socklab chat</title>" in page
            ws = WsClient(node.http_port)  # the page's socket is told why, and closed "try again later"
            try:
                assert ws.expect("BYE")["text"].startswith("server full")
                assert ws.close_code() == 1013
            finally:
                ws.close()
        finally:
            for c in held:
                c.close()


# ---- rooms and commands ----------------------------------------------------------------------------
def test_rooms_are_freed_after_join_part_churn(concurrent_engine: str) -> None:
    with chat_node(concurrent_engine, command_rate=1e6, command_burst=100_000, history_on_join=0) as node, \
            LineClient(node.tcp_port, "churn") as c:
        c.sock.sendall(b"".join(b"/join #r%d\n/part #r%d\n" % (i, i) for i in range(1000)))
        c.send("/join #kept")
        c.send("kept")  # a room with history: its sequence number outlives its members
        c.expect("MSG #kept 1 ", timeout=30)
        c.send("/part #kept")
        c.send("/ping done")
        c.expect("PONG", timeout=30)
        assert sorted(node.hub.rooms) == ["#lobby"], len(node.hub.rooms)
        assert all(r.members for r in node.hub.rooms.values())
        assert node.hub.last_seq == {"#kept": 1}
        c.send("/join #kept")
        assert c.expect("SYNC #kept") == "SYNC #kept 1"  # nothing forgotten that history needs


def test_a_command_flood_is_refused_with_one_429(concurrent_engine: str) -> None:
    with chat_node(concurrent_engine, command_rate=1.0, command_burst=5) as node, \
            LineClient(node.tcp_port, "flood") as f, LineClient(node.tcp_port, "calm") as calm:
        f.sock.sendall(b"/who\n" * 100 + b"/bogus\n" * 100 + b"still talking\n")
        f.expect("MSG #lobby 1 ")  # messages have their own bucket
        notices = [line for line in f.seen if line.startswith("ERR 429 ")]
        assert len(notices) == 1 and "commands/s" in notices[0], f.seen[:12]
        answered = [line for line in f.seen if line.startswith(("WHO ", "ERR 400 "))]
        assert 5 <= len(answered) <= 15, len(answered)  # the burst (and what refilled meanwhile), not 200
        calm.send("/who")
        calm.expect("WHO #lobby")  # another client's commands are unaffected


def test_rooms_listing_is_bounded(concurrent_engine: str) -> None:
    with chat_node(concurrent_engine, rooms_listed=3, max_rooms=10, history_on_join=0) as node, \
            LineClient(node.tcp_port, "ann") as ann, LineClient(node.tcp_port, "bob") as bob:
        for room in ("#a", "#b", "#c", "#d", "#e"):
            ann.send(f"/join {room}")
            ann.expect(f"SYNC {room}")
        for room in ("#c", "#d"):
            bob.send(f"/join {room}")
            bob.expect(f"SYNC {room}")
        bob.send("/rooms")
        listed = bob.expect("ROOMS").split()[1:]
        assert sorted(listed) == ["#c=2/0", "#d=2/0", "#lobby=2/0"], listed
        assert bob.expect("INFO") == "INFO :and 3 more rooms (the 3 with the most members are listed)"
        assert len(node.hub.rooms) == 6


# ---- browsers on the same machine --------------------------------------------------------------------
def _handshake(port: int, origin: str | None, host: str | None = None) -> bytes:
    head = (f"GET /ws HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")
    if origin is not None:
        head += f"Origin: {origin}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall((head + "\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0]


def test_the_chat_websocket_checks_origin_and_host() -> None:
    with chat_node(http_port=0, allow_origin=("http://friend.example",)) as node:
        port = node.http_port
        assert _handshake(port, "http://evil.example").startswith(b"HTTP/1.1 403")  # a page the user visits
        assert _handshake(port, f"http://127.0.0.1:{port}").startswith(b"HTTP/1.1 101")  # the chat's own page
        assert _handshake(port, "http://friend.example").startswith(b"HTTP/1.1 101")  # --allow-origin
        assert _handshake(port, None).startswith(b"HTTP/1.1 101")  # not a browser (nc, programs)
        assert _handshake(port, None, host="attacker.example").startswith(b"HTTP/1.1 421")  # DNS rebinding
