"""The trace shows TCP's closing states, not only the fd's: TIME_WAIT for the side that closed first.

Linux moves a connection whose first closer has received the peer's FIN to a TIME_WAIT mini-socket
(what ``ss`` lists) and the socket the program still holds reports CLOSE. A trace that prints
``[CLOSE]`` there teaches that the active closer is done, while TCP keeps the connection for 60 s.
"""

from __future__ import annotations

import socket

from socklab.core.trace import Tracer, tcp_state


def _pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    lst = socket.create_server(("127.0.0.1", 0))
    cli = socket.create_connection(lst.getsockname(), timeout=10)
    srv, _ = lst.accept()
    srv.settimeout(10)
    return lst, cli, srv


def test_the_first_closer_ends_in_time_wait_the_second_in_close() -> None:
    tracer = Tracer("test")
    events = tracer.record()
    lst, cli, srv = _pair()
    with lst, cli, srv:
        cli.shutdown(socket.SHUT_WR)
        tracer.emit("shutdown", cli, detail="SHUT_WR: FIN sent, still reading")
        assert srv.recv(10) == b""
        tracer.emit("recv", srv, nbytes=0)
        srv.shutdown(socket.SHUT_WR)
        tracer.emit("shutdown", srv, detail="SHUT_WR: FIN sent, still reading")
        assert cli.recv(10) == b""
        kernel = tcp_state(cli)
        tracer.emit("recv", cli, nbytes=0)
        tracer.emit("close", cli)
        tracer.emit("close", srv)
    by_fd = [(e.op, e.state) for e in events]
    assert kernel == "CLOSE"  # what the fd reports: the connection itself went to TIME_WAIT
    assert by_fd[3] == ("recv", "TIME_WAIT") and by_fd[4] == ("close", "TIME_WAIT")
    assert by_fd[1] == ("recv", "CLOSE_WAIT")
    assert by_fd[5][1] in ("CLOSE", "LAST_ACK")  # the second closer really is done


def test_a_reused_fd_starts_a_new_story() -> None:
    tracer = Tracer("test")
    events = tracer.record()
    tracer.emit("shutdown", fd=9, detail="SHUT_WR: FIN sent, still reading", state="FIN_WAIT2")
    tracer.emit("close", fd=9, state="FIN_WAIT2")
    tracer.emit("accept", fd=9, state="ESTABLISHED")
    tracer.emit("recv", fd=9, nbytes=0, state="CLOSE_WAIT")
    tracer.emit("shutdown", fd=9, detail="SHUT_WR: FIN sent, still reading", state="CLOSE")
    assert [e.state for e in events][-1] == "CLOSE"  # passive close on the new connection: no TIME_WAIT
