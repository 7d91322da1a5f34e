"""Who is in a room, told without flooding it: joins and parts gathered per tick.

Why this exists: a chat that sends every ``JOIN`` to every member sends N²/2 lines while N people
join one room - 50 million lines for 10,000 members, each with the joiner's full member list on
top. The benchmark stopped at 6,995 of 10,000 members after two minutes. Large IRC networks face
the same arithmetic and answer it the same way as this module:

- **per tick**: joins and parts are not sent as they happen, but gathered for
  ``presence_interval`` seconds and sent together, one write per member per tick;
- **small rooms** (at most ``presence_names`` members) get the same ``JOIN``/``PART`` lines as
  always, so every client can keep its member list;
- **crowded rooms** get one ``PRESENCE #room COUNT JOINED LEFT :TEXT`` line per tick instead (the
  count, how many came and went, a sentence naming a few), the same shared frame for everybody;
  nick changes there are told in that sentence too, not with a ``NICK`` line to every member;
  a member joining a crowded room gets that line with the count instead of the full ``WHO`` list,
  and ``/who`` lists everybody on demand. When the room shrinks back to ``presence_names`` its
  members get a fresh ``WHO`` list once, and per-nick lines again.

Anything else said in a room (a message, a nick change, a topic) first flushes that room's
gathered ``JOIN``/``PART`` lines in a small room, so nobody reads a message from someone whose
``JOIN`` has not arrived yet.

Everything runs on the engine thread, like the hub.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from socklab.apps.chat.admission import CallLater
from socklab.apps.chat.member import Frame, Member
from socklab.core.transport import TimerHandle
from socklab.protocols.chat import Joined, Members, NickChanged, Parted, Presence

Change = Joined | Parted | NickChanged

if TYPE_CHECKING:
    from socklab.apps.chat.hub import ChatHub

__all__ = ["PresenceBatcher", "summary"]

NAMED = 3  # nicks a PRESENCE sentence names, for each of joined and left


def _names(nicks: list[str]) -> str:
    shown = ", ".join(nicks[:NAMED])
    return shown if len(nicks) <= NAMED else f"{shown} and {len(nicks) - NAMED} more"


def summary(room: str, count: int, joined: list[str], left: list[str],
            renamed: list[tuple[str, str]] | None = None) -> str:
    """The sentence of a ``PRESENCE`` line: ``10000 members in #big: 37 joined (ann, bob, cat and 34
    more); 2 left (dan, eve); 1 renamed (fay is now gus)`` - or, with nobody coming or going, how to
    list them."""
    parts = []
    if joined:
        parts.append(f"{len(joined)} joined ({_names(joined)})")
    if left:
        parts.append(f"{len(left)} left ({_names(left)})")
    if renamed:
        parts.append(f"{len(renamed)} renamed ({_names([f'{old} is now {new}' for old, new in renamed])})")
    head = f"{count} member{'s' if count != 1 else ''} in {room}"
    if not parts:
        return f"{head}; /who {room} lists them"
    return f"{head}: " + "; ".join(parts)


class PresenceBatcher:
    """Joins and parts of every room of one hub, gathered until the next tick.

    Args:
        hub: the hub (its rooms, members and settings).
        call_later: the engine's timer; ``None`` (or ``presence_interval`` 0) sends at once.

    Counters for tests and the benchmark: ``ticks`` (flushes with something to send),
    ``lines`` (presence frames written to members).
    """

    def __init__(self, hub: ChatHub, call_later: CallLater | None) -> None:
        self.hub = hub
        self.call_later = call_later
        self.pending: dict[str, list[Change]] = {}
        self._timer: TimerHandle | None = None
        self._flushing = False
        self.crowded: set[str] = set()  # rooms told by count (PRESENCE) since they grew past the limit
        self.ticks = 0
        self.lines = 0

    def is_crowded(self, room: str) -> bool:
        """Whether ``room`` is announced by count: more than ``presence_names`` members."""
        return self.hub.member_count(room) > self.hub.settings.presence_names

    def add(self, room: str, event: Change) -> None:
        """A join or part in ``room`` (of this node or, through the broker, of another), or a nick
        change in a crowded room."""
        if room not in self.hub.rooms:
            self.crowded.discard(room)  # freed: a room that comes back starts small
            return  # nobody here to tell
        events = self.pending.get(room)
        if events is None:
            self.pending[room] = [event]
        else:
            events.append(event)
        interval = self.hub.settings.presence_interval
        if self.call_later is None or interval <= 0:
            self.flush()
        elif self._timer is None:
            self._timer = self.call_later(interval, self.flush)

    def before(self, room: str) -> None:
        """Something else is about to be said in ``room``: in a small room, its gathered joins
        and parts go first (message order is kept); a crowded room waits for its tick."""
        if room in self.pending and not self.is_crowded(room):
            self._flush_room(room, self.pending.pop(room))

    def flush(self) -> None:
        """The tick: every room with joins or parts gets its lines.

        Never nested: a write that fails closes its connection at once on some engines, and that
        member's parts arrive here while a flush is running; they are gathered and sent by the
        running flush's next round (without this, 300 clients closing together recursed 300
        deep, with ``--presence-interval 0`` as in the old code).
        """
        self._timer = None
        if self._flushing:
            return
        self._flushing = True
        try:
            while self.pending:
                pending, self.pending = self.pending, {}
                for room, events in pending.items():
                    self._flush_room(room, events)
        finally:
            self._flushing = False

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.pending.clear()

    def _flush_room(self, name: str, events: list[Change]) -> None:
        room = self.hub.rooms.get(name)
        if room is None:
            self.crowded.discard(name)
            return  # everybody here left: nobody to tell
        if not events:
            return
        self.ticks += 1
        count = self.hub.member_count(name)
        if count > self.hub.settings.presence_names:
            self.crowded.add(name)
            joined = [e.nick for e in events if isinstance(e, Joined)]
            left = [e.nick for e in events if isinstance(e, Parted)]
            renamed = [(e.old, e.new) for e in events if isinstance(e, NickChanged)]
            frame = Frame(Presence(name, count, len(joined), len(left), summary(name, count, joined, left, renamed)))
            self.lines += room.send(frame)  # the same bytes for everybody (the fan-out's fast path)
            return
        if name in self.crowded:  # back to a small room: everybody's list is stale, send it afresh
            self.crowded.discard(name)
            self.hub.backend.who(name, lambda nicks: self._send_list(name, nicks))
            return
        self._send_lines(list(room.members.values()), events)

    def _send_list(self, name: str, nicks: list[str]) -> None:
        room = self.hub.rooms.get(name)
        if room is None:
            return
        self.lines += room.send(Frame(Members(name, tuple(nicks))))

    def _send_lines(self, members: list[Member], events: list[Change]) -> None:
        """Small room: the gathered JOIN/PART lines, one write per member. A member does not get
        its own join or part (it was told at once), nor what happened before its own join in this
        tick (its ``WHO`` list, sent at the join, already had it)."""
        frames = [Frame(e) for e in events]
        for m in members:
            nick = m.nick
            start = 0
            for i, e in enumerate(events):
                if isinstance(e, Joined) and e.nick == nick:
                    start = i + 1
            share = [f for f, e in zip(frames[start:], events[start:], strict=True)
                     if (e.new if isinstance(e, NickChanged) else e.nick) != nick]
            if share:
                m.send_frames(share)
                self.lines += len(share)

