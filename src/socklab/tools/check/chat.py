"""``socklab check chat``: probes for a multi-client chat server speaking the lab subset.

Why this exists: a chat server that works with two terminals typing slowly can still lose a
line sent in two segments, merge two lines sent in one, send the speaker its own message twice,
or die the moment a client vanishes. These probes provoke each case.

The lab subset of docs/chat-protocol.md that the probes rely on (socklab's own chat server and
the `chat` lesson both speak it): one command per line ending in LF; ``/nick NAME`` is answered
by a line containing NAME; ``/join #room`` by a line containing ``#room`` (to the joiner; the
other members may see it too); any other line is said in the current room, and every other
member receives a line containing the sender's nick and the text; the sender at most once.
Each probe uses fresh random nicks and a fresh room, so runs never disturb each other.
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from collections.abc import Callable

from socklab.core.sockets import Endpoint
from socklab.tools.check.net import connect, reset_close
from socklab.tools.check.report import Probe, ProbeFailed, quote

__all__ = ["ChatClient", "chat_probes"]

LINES = "keep a buffer per client and handle only complete lines (up to each \\n); keep the rest for later"


def _token(prefix: str) -> str:
    return prefix + os.urandom(4).hex()


class ChatClient:
    """One grader-side chat connection: lines in, with deadlines."""

    def __init__(self, target: Endpoint, nick: str, timeout: float) -> None:
        self.sock = connect(target, timeout)
        self.sock.setblocking(False)
        self.nick, self.timeout = nick, timeout
        self.buffer = b""
        self.lines: list[str] = []  # every line received so far
        self.closed = False

    def send(self, text: str) -> None:
        self.sock.setblocking(True)
        try:
            self.sock.sendall(text.encode())
        finally:
            self.sock.setblocking(False)

    def _pump(self, wait: float) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ)
            if not sel.select(wait):
                return
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return
        self.buffer += data
        while b"\n" in self.buffer:
            raw, self.buffer = self.buffer.split(b"\n", 1)
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\r"))
        if len(self.buffer) > 65536 or len(self.lines) > 100_000:  # a flood: stop reading, memory bounded
            self.closed = True

    def wait_for(self, predicate: Callable[[str], bool], timeout: float | None = None) -> str | None:
        """The first line (new or already seen) matching ``predicate``, or None at the deadline/EOF."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if predicate(line):
                    return line
            seen = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return None
            self._pump(left)

    def drain(self) -> None:
        """Read whatever has already arrived, without waiting."""
        before = -1
        while before != len(self.buffer) + len(self.lines) and not self.closed:
            before = len(self.buffer) + len(self.lines)
            self._pump(0)

    def close(self) -> None:
        self.sock.close()


def close_cleanly(clients: list[ChatClient], wait: float = 2.0) -> None:
    """Say EOF (FIN) on every client and read until the server closes: closing a socket with
    unread bytes would send RST, and the grader must not reset connections the probes did not mean to."""
    deadline = time.monotonic() + wait
    for c in clients:
        try:
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            c.closed = True
    for c in clients:
        while not c.closed and time.monotonic() < deadline:
            c._pump(deadline - time.monotonic())
        c.close()


def _member(target: Endpoint, room: str, timeout: float, clients: list[ChatClient]) -> ChatClient:
    """A client that took a fresh nick and joined ``room`` (both acknowledged by the server)."""
    c = ChatClient(target, _token("ck"), timeout)
    clients.append(c)
    c.send(f"/nick {c.nick}\n")
    if c.wait_for(lambda line: c.nick in line) is None:
        raise ProbeFailed(f"no line containing the nick {c.nick} came back in {timeout:.0f} s after "
                          f"'/nick {c.nick}'" + (" (the server closed the connection)" if c.closed else ""),
                          "the server does not answer /nick, or waits for more than one line",
                          "answer each /nick NAME with a line such as 'NICK * NAME'")
    c.send(f"/join {room}\n")
    if c.wait_for(lambda line: room in line.lower()) is None:
        raise ProbeFailed(f"no line containing {room} came back in {timeout:.0f} s after '/join {room}'",
                          "the server does not answer /join", "answer /join #room with 'JOIN #room NICK'")
    return c


def _expect_said(listener: ChatClient, speaker: ChatClient, text: str, what: str) -> str:
    line = listener.wait_for(lambda ln: text in ln)
    if line is None:
        closed = " (the server closed the connection)" if listener.closed else ""
        raise ProbeFailed(f"{what}: another member of the room did not receive it in "
                          f"{listener.timeout:.0f} s{closed}",
                          "the server does not send a room's message to every member (it answers only the "
                          "sender, or loops over the wrong list of sockets)",
                          "for each complete line, sendall() it to every client in the sender's room")
    if speaker.nick not in line:
        raise ProbeFailed(f"{what}: the line {quote(line)} does not name the sender {speaker.nick}",
                          "the others cannot tell who spoke", "send 'MSG #room NICK :TEXT'")
    return line


def chat_probes(target: Endpoint, timeout: float = 5.0) -> list[Probe]:
    """Every chat probe, in the order they run."""

    def scenario(n: int, body: Callable[[list[ChatClient], str], str]) -> Callable[[], str]:
        def run() -> str:
            clients: list[ChatClient] = []
            room = _token("#ck")
            try:
                for _ in range(n):
                    _member(target, room, timeout, clients)
                return body(clients, room)
            finally:
                close_cleanly(clients)

        return run

    def nick_join(clients: list[ChatClient], room: str) -> str:
        return f"/nick and /join {room} were answered"

    def message(clients: list[ChatClient], room: str) -> str:
        a, b = clients
        first, second = _token("hello-"), _token("again-")
        a.send(first + "\n")
        _expect_said(b, a, first, "a message")
        a.send(second + "\n")
        _expect_said(b, a, second, "a second message")
        a.drain()  # the server sent a's copies of the first message before it read the second
        copies = sum(first in line for line in a.lines)
        if copies > 1:
            raise ProbeFailed(f"the sender received its own message {copies} times",
                              "the message is sent to the room (which includes the sender) and once more to "
                              "the sender", "send each message once to each member of the room")
        return "a message reached the other member, naming the sender, and the sender at most once"

    def partial(clients: list[ChatClient], room: str) -> str:
        a, b = clients
        text = _token("partial-line-")
        a.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        a.send(text[:9])
        early = b.wait_for(lambda ln: text[:9] in ln, timeout=min(1.5, timeout))
        if early is not None:
            raise ProbeFailed(f"half a line ({quote(text[:9])}, no newline yet) was delivered as {quote(early)}",
                              "the server treats each recv() as one whole line", LINES)
        a.send(text[9:] + "\n")
        if b.wait_for(lambda ln: text in ln) is None:
            cut = b.wait_for(lambda ln: text[9:] in ln, timeout=0)
            if cut is not None:
                raise ProbeFailed(f"a line sent in two pieces arrived as {quote(cut)}: its first piece was lost",
                                  "the server replaces its buffer with each recv() instead of adding to it",
                                  LINES)
        line = _expect_said(b, a, text, "a line sent in two pieces")
        if text not in line:
            raise ProbeFailed(f"a line sent in two pieces arrived as {quote(line)}", "pieces were not joined", LINES)
        return "a line sent in two pieces arrived once, whole"

    def two_in_one(clients: list[ChatClient], room: str) -> str:
        a, b = clients
        one, two = _token("one-"), _token("two-")
        a.send(f"{one}\n{two}\n")
        line = _expect_said(b, a, one, "the first of two lines sent in one segment")
        if two in line:
            raise ProbeFailed(f"two lines sent in one segment arrived as one: {quote(line)}",
                              "the server treats one recv() as one line", LINES)
        _expect_said(b, a, two, "the second of two lines sent in one segment")
        return "two lines sent in one segment arrived as two messages"

    def concurrent(clients: list[ChatClient], room: str) -> str:
        said = {c.nick: _token("from-") for c in clients}
        for c in clients:
            c.send(said[c.nick] + "\n")
        for c in clients:
            for speaker in clients:
                if speaker is not c:
                    _expect_said(c, speaker, said[speaker.nick], f"with {len(clients)} clients, a message")
        return f"{len(clients)} clients in one room each received the other {len(clients) - 1} messages"

    def vanish(clients: list[ChatClient], room: str) -> str:
        a, b = clients
        # The one that vanishes took a nick but stays out of the room: then nothing the server sends
        # to the room can consume the reset's error first, and its next recv() meets the reset for sure.
        gone = ChatClient(target, _token("ck"), timeout)
        clients.append(gone)
        gone.send(f"/nick {gone.nick}\n")
        gone.wait_for(lambda line: gone.nick in line)
        gone.send("a line without its newline")
        reset_close(gone.sock)
        gone.closed = True
        text = _token("after-")
        a.send(text + "\n")
        try:
            _expect_said(b, a, text, "after a client vanished (reset), a message")
            newcomer = _member(target, room, timeout, clients)
        except ProbeFailed as fail:
            raise ProbeFailed(fail.happened, "the server crashed or stopped serving when a client vanished: "
                              "recv()/send() raised ConnectionResetError (or BrokenPipeError), or the dead "
                              "client stayed in the list",
                              "catch OSError per client; on b'' or an error remove the client and close it") from None
        del newcomer
        return "after a client vanished, the others still talked and a new client joined"

    return [
        Probe("nick_join", "/nick and /join are answered", scenario(1, nick_join)),
        Probe("message", "a message reaches the others, not the sender twice", scenario(2, message)),
        Probe("partial_line", "a line sent in two pieces is delivered once, whole", scenario(2, partial)),
        Probe("two_in_one", "two lines in one segment are two messages", scenario(2, two_in_one)),
        Probe("concurrent", "10 clients in one room all hear each other", scenario(10, concurrent)),
        Probe("vanish", "a client that vanishes does not stop the others", scenario(2, vanish)),
    ]
