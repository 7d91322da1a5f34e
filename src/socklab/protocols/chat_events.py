"""The chat's server events (server -> client), and their two encodings: a line and JSON.

Why this exists: :mod:`socklab.protocols.chat` parses what clients send; this module is the other
direction - everything a chat server says (``MSG``, ``JOIN``, ``ERR``...), encoded as one protocol
line (:func:`encode_event`) or as one JSON object for WebSocket clients (:func:`event_to_json`), and
decoded back by clients (:func:`parse_event`, :func:`event_from_json`). The wire format is written
down in ``docs/chat-protocol.md``.

A server line never carries a control, bidi or zero-width character: :func:`encode_event` shows
any that reached an event (history stored before such text was refused, a broker entry) as a
visible escape (:func:`~socklab.protocols.text.escape_peer_text`), so an ``nc`` user's terminal
never obeys it. Text the server *receives* is refused at the door instead (``ERR 422``).

Pure functions, no I/O.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from socklab.core.errors import RemoteProtocolError
from socklab.protocols.text import escape_peer_text

__all__ = [
    "ACTION",
    "EVENT_TYPES",
    "Bye",
    "ErrorReply",
    "Joined",
    "Members",
    "Message",
    "NickChanged",
    "Notice",
    "Parted",
    "Pong",
    "Presence",
    "Private",
    "RoomInfo",
    "RoomList",
    "ServerEvent",
    "Synced",
    "TopicChanged",
    "Welcome",
    "encode_event",
    "event_from_json",
    "event_to_json",
    "parse_event",
]

ACTION = "action"

# ---- server events (server -> client) --------------------------------------------------------------
@dataclass(frozen=True)
class ServerEvent:
    """Base of everything the server sends. ``KIND`` is the line keyword and the JSON ``type``."""

    KIND = ""


@dataclass(frozen=True)
class Welcome(ServerEvent):
    """First line of every connection."""

    KIND = "HELLO"
    server: str
    version: int
    text: str


@dataclass(frozen=True)
class Message(ServerEvent):
    """A message in a room; ``seq`` is the room's sequence number (1, 2, 3... without gaps).

    Receiving your own message back is the acknowledgement: it is sent only once the message is
    durably stored.
    """

    KIND = "MSG"
    room: str
    seq: int
    ts: float
    nick: str
    text: str
    kind: str = "say"  # or ACTION (/me)


@dataclass(frozen=True)
class Private(ServerEvent):
    KIND = "PRIV"
    sender: str
    target: str
    ts: float
    text: str


@dataclass(frozen=True)
class Joined(ServerEvent):
    KIND = "JOIN"
    room: str
    nick: str


@dataclass(frozen=True)
class Parted(ServerEvent):
    KIND = "PART"
    room: str
    nick: str
    reason: str = ""


@dataclass(frozen=True)
class NickChanged(ServerEvent):
    """``old`` is ``*`` when a connection chooses its first nick."""

    KIND = "NICK"
    old: str
    new: str


@dataclass(frozen=True)
class TopicChanged(ServerEvent):
    KIND = "TOPIC"
    room: str
    nick: str
    text: str


@dataclass(frozen=True)
class Members(ServerEvent):
    KIND = "WHO"
    room: str
    nicks: tuple[str, ...]


@dataclass(frozen=True)
class Presence(ServerEvent):
    """Who came and went in a crowded room, gathered over one presence interval.

    A room with more than ``presence_names`` members does not announce each join and part with
    its own ``JOIN``/``PART`` line (10,000 joins would be 50 million lines): once per interval its
    members get one of these instead - the member count now, how many joined and left since the
    last one, and ``text``, a sentence naming a few of them for people (``nc``). ``joined`` and
    ``left`` both 0: the count alone (sent to a member joining a crowded room). ``/who`` lists
    every member on demand.
    """

    KIND = "PRESENCE"
    room: str
    count: int
    joined: int
    left: int
    text: str


@dataclass(frozen=True)
class RoomInfo:
    name: str
    members: int
    seq: int


@dataclass(frozen=True)
class RoomList(ServerEvent):
    KIND = "ROOMS"
    rooms: tuple[RoomInfo, ...]


@dataclass(frozen=True)
class Synced(ServerEvent):
    """Catch-up in ``room`` is complete; ``seq`` is the room's latest sequence number."""

    KIND = "SYNC"
    room: str
    seq: int


@dataclass(frozen=True)
class Notice(ServerEvent):
    KIND = "INFO"
    text: str


@dataclass(frozen=True)
class ErrorReply(ServerEvent):
    KIND = "ERR"
    code: int
    text: str


@dataclass(frozen=True)
class Pong(ServerEvent):
    KIND = "PONG"
    token: str


@dataclass(frozen=True)
class Bye(ServerEvent):
    """The server closes the connection after this line; ``text`` says why."""

    KIND = "BYE"
    text: str


EVENT_TYPES: dict[str, type[ServerEvent]] = {
    cls.KIND: cls for cls in (Welcome, Message, Private, Joined, Parted, NickChanged, TopicChanged, Members,
                              RoomList, Synced, Notice, ErrorReply, Pong, Bye, Presence)
}
_TRAILING = {"Welcome": "text", "Message": "text", "Private": "text", "Parted": "reason",
             "TopicChanged": "text", "Notice": "text", "ErrorReply": "text", "Bye": "text", "Pong": "token", "Presence": "text"}


def encode_event(event: ServerEvent) -> bytes:
    """One event as one protocol line (``KIND field... [:trailing]`` + LF).

    Every control (but TAB), bidi or zero-width character in a field is written as a visible
    escape (``\\x1b``, ``\\n``): a server line can never be split, and never drives a terminal.
    """
    out = [event.KIND]
    if isinstance(event, Members):
        out += [event.room, *event.nicks]
    elif isinstance(event, RoomList):
        out += [f"{r.name}={r.members}/{r.seq}" for r in event.rooms]
    else:
        trailing = _TRAILING.get(type(event).__name__)
        for f in fields(event):
            value = getattr(event, f.name)
            if f.name == trailing:
                continue
            if isinstance(value, float):
                out.append(f"{value:.3f}")
            else:
                out.append(str(value) if value != "" else "-")
        if trailing is not None:
            out.append(":" + getattr(event, trailing))
    line = " ".join(out)
    if "\t" in line:  # TAB is allowed in text (harmless on a terminal): kept as it is
        return ("\t".join(escape_peer_text(part) for part in line.split("\t")) + "\n").encode()
    return (escape_peer_text(line) + "\n").encode()


def parse_event(line: str) -> ServerEvent:
    """Decode one server line (terminator removed): the client side of :func:`encode_event`.

    Raises:
        RemoteProtocolError: not a line this protocol's servers send.
    """
    head, sep, trailing = line.partition(" :")
    parts = head.split(" ")
    cls = EVENT_TYPES.get(parts[0])
    if cls is None:
        raise RemoteProtocolError(f"unknown server line {line[:40]!r}")
    args = parts[1:]
    try:
        if cls is Members:
            return Members(args[0], tuple(args[1:]))
        if cls is RoomList:
            rooms = []
            for item in args:
                name, _, counts = item.partition("=")
                members, _, seq = counts.partition("/")
                rooms.append(RoomInfo(name, int(members), int(seq)))
            return RoomList(tuple(rooms))
        tname = _TRAILING.get(cls.__name__)
        kwargs: dict[str, Any] = {}
        flist = [f for f in fields(cls) if f.name != tname]
        if len(args) != len(flist) or (tname is not None and not sep):
            raise ValueError("wrong number of fields")
        for f, raw in zip(flist, args, strict=True):
            value: Any = "" if raw == "-" else raw
            if f.type in ("int", int):
                value = int(raw)
            elif f.type in ("float", float):
                value = float(raw)
            kwargs[f.name] = value
        if tname is not None:
            kwargs[tname] = trailing
        return cls(**kwargs)
    except (ValueError, IndexError, TypeError) as exc:
        raise RemoteProtocolError(f"malformed {parts[0]} line: {exc}") from None


def event_to_json(event: ServerEvent) -> str:
    """One event as the JSON text a WebSocket client receives: ``{"type": KIND, ...fields}``."""
    data = asdict(event)
    data["type"] = event.KIND
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def event_from_json(text: str) -> ServerEvent:
    """Decode :func:`event_to_json` output (used by tests and Python clients).

    Raises:
        RemoteProtocolError: not valid JSON or not a known event.
    """
    try:
        data = json.loads(text)
        cls = EVENT_TYPES[data.pop("type")]
        if cls is Members:
            data["nicks"] = tuple(data["nicks"])
        if cls is RoomList:
            data["rooms"] = tuple(RoomInfo(**r) for r in data["rooms"])
        return cls(**data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RemoteProtocolError(f"malformed event JSON: {exc}") from None
