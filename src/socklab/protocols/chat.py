"""The chat line protocol, sans-I/O: commands in, events out, names checked, floods metered.

Why this exists: a chat server has two kinds of users - people typing into ``nc`` or telnet and
programs (the web page, the terminal client, bots, the benchmark). One text protocol serves both:
each message is one UTF-8 line ending in LF (CRLF accepted); a line starting with ``/`` is a
command, any other line is said in the current room. The server answers with lines that start
with an upper-case keyword (``MSG``, ``JOIN``, ``ERR``...), space-separated fields and an optional
last field after `` :`` that may hold spaces (the IRC convention, RFC 2812 section 2.3.1). The
full wire protocol, with its error codes, is written down in ``docs/chat-protocol.md``.

This module holds everything that needs no socket and no clock:

- :func:`parse_command` turns one line of text into a :class:`Command` (or raises
  :class:`~socklab.core.errors.RemoteProtocolError` with an error code as ``hint``);
- :class:`ChatConnection` frames a byte stream into commands (bounded line length, UTF-8 checked)
  and encodes server events; invalid lines become :class:`Invalid` events, because a typo must
  never cost a user their connection - only a line over the limit is fatal;
- :func:`check_nick`, :func:`check_room`, :func:`check_text`: the naming and content rules; no
  text a client sends may hold a control, bidi or zero-width character (``ERR 422``), so nothing
  relayed to another user's terminal can drive it;
- :class:`TokenBucket`: the per-client rate limit, with "now" passed in by the caller.

The server events (:class:`Message`, :class:`Joined`...) and their line and JSON encodings live in
:mod:`socklab.protocols.chat_events`; they are re-exported here, so clients import one module.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from socklab.core.errors import RemoteProtocolError
from socklab.protocols.chat_events import (
    ACTION,
    EVENT_TYPES,
    Bye,
    ErrorReply,
    Joined,
    Members,
    Message,
    NickChanged,
    Notice,
    Parted,
    Pong,
    Presence,
    Private,
    RoomInfo,
    RoomList,
    ServerEvent,
    Synced,
    TopicChanged,
    Welcome,
    encode_event,
    event_from_json,
    event_to_json,
    parse_event,
)
from socklab.protocols.lines import EndOfStream, Line, LineDecoder
from socklab.protocols.text import check_peer_text

__all__ = [
    "ACTION",
    "CODES",
    "EVENT_TYPES",
    "Bye",
    "ChatConnection",
    "Command",
    "EndOfInput",
    "ErrorReply",
    "Help",
    "History",
    "Invalid",
    "Join",
    "Joined",
    "Me",
    "Members",
    "Message",
    "Nick",
    "NickChanged",
    "Notice",
    "Part",
    "Parted",
    "Ping",
    "Pong",
    "Presence",
    "PrivMsg",
    "Private",
    "Quit",
    "RoomInfo",
    "RoomList",
    "Rooms",
    "Say",
    "ServerEvent",
    "Synced",
    "TokenBucket",
    "Topic",
    "TopicChanged",
    "Welcome",
    "Who",
    "check_nick",
    "check_room",
    "check_text",
    "encode_event",
    "event_from_json",
    "event_to_json",
    "nick_key",
    "parse_command",
    "parse_event",
]

# ---- error codes (documented in docs/chat-protocol.md; HTTP-like so they read at a glance) --------
CODES: dict[int, str] = {
    400: "bad command or argument",
    401: "choose a nick first (/nick NAME)",
    403: "not allowed (not in that room)",
    404: "no such nick or room",
    409: "nick already in use",
    413: "line or message too long",
    422: "invalid name or text",
    429: "rate limited: slow down",
    500: "server error (the message was not stored)",
    503: "server full, shutting down or storage unavailable",
    507: "outbound queue full: you are not reading fast enough",
}

NICK_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,23}\Z")
ROOM_RE = re.compile(r"#[A-Za-z0-9_\-]{1,32}\Z")


def nick_key(nick: str) -> str:
    """Nicks are unique regardless of case: ``Alice`` and ``alice`` are the same user."""
    return nick.casefold()


def check_nick(nick: str) -> str:
    """Validate a nick: a letter or ``_`` then up to 23 letters, digits, ``_`` or ``-``.

    Returns:
        the nick unchanged.

    Raises:
        RemoteProtocolError: hint 422 with the rule spelled out.
    """
    if not NICK_RE.match(nick):
        raise RemoteProtocolError(f"invalid nick {nick[:40]!r}: use a letter or _ then up to 23 letters, "
                                  "digits, _ or -", hint=422)
    return nick


def check_room(room: str) -> str:
    """Validate and normalize a room name: ``#`` then 1-32 letters, digits, ``_`` or ``-``.

    Returns:
        the name in lower case (rooms are case-insensitive).

    Raises:
        RemoteProtocolError: hint 422.
    """
    if not ROOM_RE.match(room):
        raise RemoteProtocolError(f"invalid room {room[:40]!r}: use # then 1-32 letters, digits, _ or -",
                                  hint=422)
    return room.lower()


def check_text(text: str, max_bytes: int, what: str = "message") -> str:
    """Validate message text: not empty, nothing a terminal obeys, bounded size.

    "Nothing a terminal obeys" is :func:`~socklab.protocols.text.check_peer_text`: no C0 or C1
    control (TAB is allowed), no bidi override or isolate, no zero-width character.

    Raises:
        RemoteProtocolError: hint 422 (empty, unsafe characters) or 413 (too long).
    """
    if not text.strip():
        raise RemoteProtocolError(f"empty {what}", hint=422)
    check_peer_text(text, what)
    if len(text.encode()) > max_bytes:
        raise RemoteProtocolError(f"{what} longer than {max_bytes} bytes", hint=413)
    return text


# ---- commands (client -> server) -------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    """Base of everything a client asks."""


@dataclass(frozen=True)
class Say(Command):
    """Say ``text`` in the current room (a line without a leading ``/``, or ``/say``)."""

    text: str
    room: str | None = None


@dataclass(frozen=True)
class Nick(Command):
    nick: str


@dataclass(frozen=True)
class Join(Command):
    """Join ``room``; ``since`` = the last sequence number seen there (catch up from it)."""

    room: str
    since: int | None = None


@dataclass(frozen=True)
class Part(Command):
    """Leave ``room`` (default: the current one), telling its members ``reason``."""

    room: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class PrivMsg(Command):
    nick: str
    text: str


@dataclass(frozen=True)
class Me(Command):
    text: str


@dataclass(frozen=True)
class Who(Command):
    room: str | None = None


@dataclass(frozen=True)
class Rooms(Command):
    pass


@dataclass(frozen=True)
class Topic(Command):
    """Show (``text`` None) or set the current room's topic."""

    text: str | None = None


@dataclass(frozen=True)
class History(Command):
    count: int
    room: str | None = None


@dataclass(frozen=True)
class Quit(Command):
    reason: str = ""


@dataclass(frozen=True)
class Help(Command):
    pass


@dataclass(frozen=True)
class Ping(Command):
    token: str = ""


HELP_TEXT = (
    "commands: /nick NAME | /join #room [LAST_SEQ] | /part [#room] [REASON] | /msg NICK TEXT | "
    "/me ACTION | /who [#room] | /rooms | /topic [TEXT] | /history N [#room] | /say [#room] TEXT | "
    "/ping [TOKEN] | "
    "/quit [REASON] | /help; any other line is said in the current room (start it with // to say a "
    "line beginning with /)"
)

MAX_HISTORY = 1000


def _split1(rest: str) -> tuple[str, str]:
    head, _, tail = rest.strip(" ").partition(" ")
    return head, tail.strip(" ")


# What each command's argument is called in a refusal ("quit reason holds U+001B: ...").
_ARGUMENT = {
    "say": "message", "nick": "nick", "join": "room", "part": "part reason", "leave": "part reason",
    "msg": "private message", "query": "private message", "privmsg": "private message", "me": "action",
    "who": "room", "names": "room", "rooms": "argument", "list": "argument", "topic": "topic",
    "history": "argument", "quit": "quit reason", "exit": "quit reason", "bye": "quit reason",
    "help": "argument", "?": "argument", "ping": "ping token",
}


def parse_command(line: str) -> Command:
    """Parse one line of text (terminator already removed) into a :class:`Command`.

    Args:
        line: the decoded line. ``//x`` says ``/x``; a line without ``/`` says itself.

    Returns:
        the command. Names are validated here, and so is every piece of text a client sends (a
        message, an action, a quit or part reason, a topic, a ping token): a control, bidi or
        zero-width character anywhere is refused with hint 422 (one rule,
        :func:`~socklab.protocols.text.check_peer_text`). Message *size* is checked by the server
        (which knows the limit) with :func:`check_text`.

    Raises:
        RemoteProtocolError: unknown command, bad arguments or unsafe text; ``hint`` is the code.
    """
    if not line.startswith("/"):
        return Say(check_peer_text(line, "message"))
    if line.startswith("//"):
        return Say(check_peer_text(line[1:], "message"))
    name, rest = _split1(line[1:])
    name = name.lower()
    what = _ARGUMENT.get(name)
    if what is None:
        raise RemoteProtocolError(f"unknown command /{name[:20]}; try /help", hint=400)
    check_peer_text(rest, what)
    if name == "say":
        first, tail = _split1(rest)
        if first.startswith("#"):
            return Say(tail, check_room(first))
        return Say(rest)
    if name == "nick":
        if not rest or " " in rest:
            raise RemoteProtocolError("usage: /nick NAME", hint=400)
        return Nick(check_nick(rest))
    if name == "join":
        room, tail = _split1(rest)
        if not room:
            raise RemoteProtocolError("usage: /join #room [LAST_SEQ]", hint=400)
        since: int | None = None
        if tail:
            if not tail.isascii() or not tail.isdigit() or len(tail) > 18:
                raise RemoteProtocolError("usage: /join #room [LAST_SEQ] (LAST_SEQ is a number)", hint=400)
            since = int(tail)
        return Join(check_room(room), since)
    if name in ("part", "leave"):
        if not rest.startswith("#"):
            return Part(None, rest)
        room, reason = _split1(rest)
        return Part(check_room(room), reason)
    if name in ("msg", "query", "privmsg"):
        nick, text = _split1(rest)
        if not nick or not text:
            raise RemoteProtocolError("usage: /msg NICK TEXT", hint=400)
        return PrivMsg(check_nick(nick), text)
    if name == "me":
        if not rest:
            raise RemoteProtocolError("usage: /me ACTION", hint=400)
        return Me(rest)
    if name in ("who", "names"):
        if not rest:
            return Who()
        if " " in rest:
            raise RemoteProtocolError("usage: /who [#room]", hint=400)
        return Who(check_room(rest))
    if name in ("rooms", "list"):
        return Rooms()
    if name == "topic":
        return Topic(rest or None)
    if name == "history":
        count, tail = _split1(rest)
        if not count.isascii() or not count.isdigit() or not 1 <= int(count[:5] or "0") <= MAX_HISTORY \
                or len(count) > 5:
            raise RemoteProtocolError(f"usage: /history N [#room] (N from 1 to {MAX_HISTORY})", hint=400)
        return History(int(count), check_room(tail) if tail else None)
    if name in ("quit", "exit", "bye"):
        return Quit(rest)
    if name in ("help", "?"):
        return Help()
    if name == "ping":
        return Ping(rest[:64])
    raise RemoteProtocolError(f"unknown command /{name[:20]}; try /help", hint=400)


# ---- the server side of one connection --------------------------------------------------------------
@dataclass(frozen=True)
class Invalid:
    """A line that is not a valid command: answer ``ERR code text`` and carry on."""

    code: int
    reason: str


@dataclass(frozen=True)
class EndOfInput:
    """The client closed its side."""


class ChatConnection:
    """Bytes from one line client in, commands out; server events in, bytes out.

    Args:
        max_line: the longest line accepted in bytes (terminator excluded); longer is fatal
            (:class:`RemoteProtocolError` hint 413, after which the server says why and closes),
            and the buffer never holds more than ``max_line + 1`` bytes.
    """

    def __init__(self, max_line: int = 4096) -> None:
        self._lines = LineDecoder(max_line)
        self._events: deque[Command | Invalid | EndOfInput] = deque()
        self._error: RemoteProtocolError | None = None

    def receive_data(self, data: bytes) -> None:
        """Feed bytes (``b""`` = EOF). Never raises: a fatal error waits behind the commands before it."""
        if self._error is not None:
            return
        try:
            self._lines.receive_data(data)
        except RemoteProtocolError as exc:
            self._error = exc  # raised by next_event once the complete lines before it are consumed
        while True:
            ev = self._lines.next_event()
            if ev is None:
                return
            if isinstance(ev, EndOfStream):
                if ev.partial.strip():  # a last line without newline still counts
                    self._events.append(self._parse(ev.partial))
                self._events.append(EndOfInput())
                return
            assert isinstance(ev, Line)
            if ev.data.strip():
                self._events.append(self._parse(ev.data))

    @staticmethod
    def _parse(raw: bytes) -> Command | Invalid:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return Invalid(422, "lines must be UTF-8")
        try:
            return parse_command(text.rstrip("\r"))
        except RemoteProtocolError as exc:
            return Invalid(exc.hint or 400, str(exc))

    def next_event(self) -> Command | Invalid | EndOfInput | None:
        """The next command (or :class:`Invalid` line, or :class:`EndOfInput`), else ``None``.

        Raises:
            RemoteProtocolError: a line longer than ``max_line`` (hint 413), after the commands that
                came before it; the connection should be closed with the reason.
        """
        if self._events:
            return self._events.popleft()
        if self._error is not None:
            raise self._error
        return None

    @staticmethod
    def send(event: ServerEvent) -> bytes:
        """The bytes for one server event."""
        return encode_event(event)


# ---- rate limiting -----------------------------------------------------------------------------------
class TokenBucket:
    """A token bucket: ``rate`` tokens per second refill a bucket of ``burst`` tokens.

    Each message takes a token; with none left it is refused (the caller sends a notice). The
    clock is the caller's: pass ``now`` (seconds, monotonic) to every call, which keeps this
    logic pure and testable.
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float, n: float = 1.0) -> bool:
        """Take ``n`` tokens if available; returns whether the action may proceed."""
        self._refill(now)
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def retry_after(self, now: float, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens will be available."""
        self._refill(now)
        return max(0.0, (n - self.tokens) / self.rate)
