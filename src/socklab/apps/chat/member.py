"""What the hub sees of a connection: a :class:`Member` it can send :class:`Frame` objects to.

Why this exists: TCP line clients (:mod:`.tcp`) and WebSocket clients (:mod:`.web`) are two
adapters onto one :class:`~socklab.apps.chat.hub.ChatHub`; this is the interface between them. A
frame is one server event encoded lazily, once per event, as a line and/or as a WebSocket frame of
JSON - a message to 1,000 members is encoded once, not 1,000 times (server-to-client WebSocket
frames are not masked, RFC 6455 section 5.1, so every browser gets the same bytes too).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from socklab.protocols.chat import Bye, ServerEvent, TokenBucket, encode_event, event_to_json
from socklab.protocols.wsframe import data_frame

__all__ = ["Frame", "Member"]

_ids = itertools.count(1)


class Frame:
    """One server event, encoded on first use for each kind of client and then shared."""

    __slots__ = ("_json", "_line", "_ws", "event")

    def __init__(self, event: ServerEvent) -> None:
        self.event = event
        self._line: bytes | None = None
        self._json: str | None = None
        self._ws: bytes | None = None

    @property
    def line(self) -> bytes:
        if self._line is None:
            self._line = encode_event(self.event)
        return self._line

    @property
    def json(self) -> str:
        if self._json is None:
            self._json = event_to_json(self.event)
        return self._json

    @property
    def ws(self) -> bytes:
        """The JSON as one WebSocket text frame, header included."""
        if self._ws is None:
            self._ws = data_frame(self.json)
        return self._ws


class Member:
    """One connected user. Adapters implement :meth:`send_frame` and :meth:`close_with`.

    ``fast_write``: while not ``None``, the fan-out (:mod:`.fanout`) hands a frame's line to this
    callable instead of calling :meth:`send_frame` - an adapter sets it to its transport's ``write``
    while that takes bytes at once, and back to ``None`` before anything else must happen to a
    frame (flow control paused it, it is closing).
    """

    kind = "?"

    def __init__(self, peer: str = "", address: str | None = None) -> None:
        self.id = next(_ids)
        self.peer = peer  # "host:port", for messages
        self.address = address  # the client's address, for the per-address cap (None: not counted)
        self.admitted = False  # counted in the hub's per-address table
        self.nick: str | None = None
        self.rooms: list[str] = []
        self.current: str | None = None
        self.bucket: TokenBucket | None = None  # messages
        self.commands: TokenBucket | None = None  # every other command
        self.limited = False
        self.commands_limited = False
        self.gone = False
        self.pending_nick: str | None = None
        self.fast_write: Callable[[bytes], None] | None = None

    def send(self, event: ServerEvent) -> None:
        self.send_frame(Frame(event))

    def send_frame(self, frame: Frame) -> None:
        raise NotImplementedError

    def send_frames(self, frames: list[Frame]) -> None:
        """Several frames at once (adapters that can, write them in one go)."""
        for frame in frames:
            self.send_frame(frame)

    def close_with(self, bye: Bye) -> None:
        """Send ``bye`` (the reason) and close the connection."""
        raise NotImplementedError
