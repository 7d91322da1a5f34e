"""The terminal client in a crowded room: PRESENCE lines (a count) shown, an unchanged count not repeated."""

from __future__ import annotations

from tests.apps.chat.helpers import LineClient, chat_node
from tests.apps.chat.test_client_lines import Screen, _client


def test_crowded_room_count_shown_once_and_changes_shown() -> None:
    screen = Screen()
    with chat_node(presence_names=1, presence_interval=0.05) as node, LineClient(node.tcp_port, "amy") as amy:
        client = _client(node.tcp_port, "ann", screen)
        try:
            first = screen.wait_for("-- 2 members in #lobby")  # the count instead of the list
            assert not any(line.startswith("-- in #lobby") for line in screen.lines), screen.lines
            amy.expect("PRESENCE #lobby 2 ")
            client.submit("/join #lobby")  # a rejoin: the same count again, not shown again
            client.submit("/ping after-rejoin")
            screen.wait_for("-- pong after-rejoin", after=first)
            assert screen.count("-- 2 members in #lobby;") == 1, screen.lines  # the count without news: once
            with LineClient(node.tcp_port, "bob"):
                screen.wait_for("3 members in #lobby: 1 joined (bob)", after=first)
            amy.send("/nick amz")  # a rename in a crowded room: a 0/0 PRESENCE line whose sentence tells it
            screen.wait_for("1 renamed (amy is now amz)", after=first)
            client.submit("/who")  # on demand: every name
            screen.wait_for("-- in #lobby: amz, ann", after=first)
        finally:
            client.close()
