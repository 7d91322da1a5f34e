"""What the hub sees of a connection: a :class:`Member` it can send :class:`Frame` objects to.

Why this exists: TCP line clients (:mod:`.tcp`) and WebSocket clients (:mod:`.web`) are two
adapters onto one :class:`~socklab.apps.chat.hub.ChatHub`; this is the interface between them. A
frame is one server event encoded lazily, once per event, as a line and/or as JSON - a message to
1,000 members is encoded once, not 1,000 times.
"""

from __future__ import annotations

import itertools

from socklab.protocols.chat import Bye, ServerEvent, TokenBucket, encode_event, event_to_json

__all__ = ["Frame", "Member"]

_ids = itertools.count(1)


class Frame:
    """One server event, encoded on first use for each kind of client and then shared."""

    __slots__ = ("_json", "_line", "event")

    def __init__(self, event: ServerEvent) -> None:
        self.event = event
        self._line: bytes | None = None
        self._json: str | None = None

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


class Member:
    """One connected user. Adapters implement :meth:`send_frame` and :meth:`close_with`."""

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
