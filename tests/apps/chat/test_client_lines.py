"""What the terminal client says: its own wording for signing in, and a reconnect that repeats nothing.

The client (:class:`ChatClient`, the object behind ``socklab chat connect``) runs against a real
chat node on loopback; its ``show`` callback collects the lines it would print.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from socklab.apps.chat.client import ChatClient
from tests.apps.chat.helpers import LineClient, chat_node


class Screen:
    """The lines a client printed, with a bounded wait for one to appear."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()

    def show(self, line: str) -> None:
        with self.cond:
            self.lines.append(line)
            self.cond.notify_all()

    def wait_for(self, text: str, timeout: float = 20.0, *, after: int = 0) -> int:
        """Index of the first line from ``after`` on that holds ``text``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(after, len(self.lines)):
                    if text in self.lines[i]:
                        return i
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{text!r} never shown; lines: {self.lines}")
                self.cond.wait(left)

    def count(self, text: str) -> int:
        with self.cond:
            return sum(text in line for line in self.lines)


@pytest.fixture
def screen() -> Iterator[Screen]:
    yield Screen()


def _client(port: int, nick: str, screen: Screen) -> ChatClient:
    client = ChatClient(f"127.0.0.1:{port}", nick, screen.show)
    client.start()
    return client


def test_greeting_speaks_of_the_client_not_nc(screen: Screen) -> None:
    with chat_node() as node:
        client = _client(node.tcp_port, "ann", screen)
        try:
            screen.wait_for("-- in #lobby: ann")
            greeting = screen.lines[screen.wait_for("connected to")]
            assert "signing in as ann" in greeting and "--nick" in greeting and "/nick NEW" in greeting
            assert not any("/nick NAME" in line for line in screen.lines), screen.lines  # nc's wording
            assert client.signed_in and client.prompt == "[#lobby] ann> "
        finally:
            client.close()


def test_refused_nick_says_how_to_choose_another(screen: Screen) -> None:
    with chat_node() as node, LineClient(node.tcp_port, "ann") as ann:
        client = _client(node.tcp_port, "Ann", screen)  # nicks are case-insensitive: taken
        try:
            first = screen.wait_for("!! 409")
            refusal = screen.lines[first]
            assert "not signed in: type /nick OTHER" in refusal and "--nick OTHER" in refusal
            assert not client.signed_in and "not signed in" in client.prompt
            client.submit("hello?")  # before any nick: 401, in the client's words
            assert "type /nick OTHER" in screen.lines[screen.wait_for("!! 401")]
            client.submit("/nick ann2")
            screen.wait_for("-- in #lobby: ann, ann2")
            assert client.signed_in and client.prompt == "[#lobby] ann2> "
            ann.expect("JOIN #lobby ann2")
            client.submit("/nick ann")  # a refused change keeps the nick you have
            assert "you are still ann2" in screen.lines[screen.wait_for("!! 409", after=first + 1)]
            assert not any("/nick NAME" in line for line in screen.lines), screen.lines
        finally:
            client.close()


def test_reconnect_shows_topic_join_and_members_once(screen: Screen, tmp_path: Path) -> None:
    db = str(tmp_path / "chat.db")
    with chat_node(store=db) as node, LineClient(node.tcp_port, "bob") as bob:
        bob.send("/topic the topic of the day")
        bob.expect("TOPIC")
        client = _client(node.tcp_port, "ann", screen)
        screen.wait_for("-- in #lobby: ann, bob")
        bob.expect("JOIN #lobby ann")
        bob.send("before the restart")
        screen.wait_for("<bob> before the restart")
        port = node.tcp_port
    try:
        screen.wait_for("-- disconnected")
        # The same store and port: the topic survives; bob is gone. The client's rejoin brings the
        # default room's JOIN, TOPIC and WHO, and its own /join #lobby LAST_SEQ the TOPIC and WHO again.
        with chat_node(store=db, tcp_port=port) as node:
            back = screen.wait_for("-- reconnected")
            changed = screen.wait_for("-- in #lobby now: ann (gone: bob)", after=back)
            with LineClient(node.tcp_port, "carl") as carl:
                carl.send("after the restart")
                screen.wait_for("<carl> after the restart", after=changed)  # later than every rejoin answer
                assert screen.count("topic: the topic of the day") == 1, screen.lines
                assert screen.count("-- ann joined #lobby") == 1, screen.lines
                assert screen.count("-- in #lobby") == 2, screen.lines  # the first list, then what changed
                assert screen.count("connected to") == 2  # the greeting once, then "reconnected"
                assert screen.count("<bob> before the restart") == 1
                client.submit("/who")  # asked for: shown even though the list is what it was
                screen.wait_for("-- in #lobby: ann, carl", after=changed)
    finally:
        client.close()


def test_a_long_outage_says_disconnected_once(screen: Screen) -> None:
    with chat_node() as node:
        client = _client(node.tcp_port, "ann", screen)
        screen.wait_for("-- in #lobby: ann")
    try:  # the server is gone and stays gone: the client keeps trying (0.25, 0.5, 1, 2, 4 s apart)
        deadline = time.monotonic() + 30
        while getattr(client, "failed_attempts", 0) < 4 and screen.count("-- disconnected") < 2:
            assert time.monotonic() < deadline, screen.lines
            client.closed.wait(0.05)  # polling a counter the I/O thread raises: no event to wait on
        assert screen.count("-- disconnected") == 1, screen.lines
        assert screen.count("reconnecting") == 1, screen.lines
    finally:
        client.close()
