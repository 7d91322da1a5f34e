"""Hostile peers against a real chat node: terminal escapes, slot hogs, room churn, command floods."""

from __future__ import annotations

import socket
import threading

from socklab.apps.chat.client import ChatClient
from socklab.protocols.text import find_unsafe
from tests.apps.chat.helpers import LineClient, chat_node

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
