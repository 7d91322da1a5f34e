"""Where messages become durable and numbered: the :class:`Backend` interface, and the one-node
:class:`LocalBackend` (SQLite). The Redis backend for several nodes is :mod:`.broker`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Protocol as _TypingProtocol

from socklab.apps.chat.store import RoomState, SqliteStore
from socklab.protocols.chat import Message, Private, ServerEvent

if TYPE_CHECKING:
    from socklab.apps.chat.hub import ChatHub

__all__ = ["Backend", "LocalBackend", "OneNode"]


class Backend(_TypingProtocol):
    """Where messages become durable and numbered, and how nodes share rooms."""

    def start(self, hub: ChatHub) -> dict[str, RoomState]: ...
    def publish(self, msg: Message, on_error: Callable[[str], None]) -> None: ...
    def history(self, room: str, after: int | None, limit: int, cb: Callable[[list[Message]], None]) -> None: ...
    def set_topic(self, room: str, nick: str, text: str) -> None: ...
    def claim_nick(self, nick: str, old: str | None, cb: Callable[[bool], None]) -> None: ...
    def release_nick(self, nick: str) -> None: ...
    def room_event(self, room: str, event: ServerEvent) -> None: ...
    def private(self, event: Private, cb: Callable[[bool], None]) -> None: ...
    def who(self, room: str, cb: Callable[[list[str]], None]) -> None: ...
    def member_count(self, room: str) -> int: ...
    def close(self) -> None: ...


class OneNode:
    """What a backend with no other node answers: every nick is free unless the hub's own table says
    otherwise, room events go straight back to the hub, a private message to someone not here goes
    nowhere, and who/how many are the hub's own members. A subclass adds the messages' part."""

    hub: ChatHub | None = None

    def claim_nick(self, nick: str, old: str | None, cb: Callable[[bool], None]) -> None:
        cb(True)  # the hub's own table is the whole truth on one node

    def release_nick(self, nick: str) -> None:
        pass

    def room_event(self, room: str, event: ServerEvent) -> None:
        assert self.hub is not None
        self.hub.on_room_event(room, event)

    def private(self, event: Private, cb: Callable[[bool], None]) -> None:
        cb(False)  # the target is not on this node, and there is no other node

    def who(self, room: str, cb: Callable[[list[str]], None]) -> None:
        assert self.hub is not None
        cb(self.hub.local_names(room))

    def member_count(self, room: str) -> int:
        assert self.hub is not None
        r = self.hub.rooms.get(room)
        return len(r.members) if r else 0


class LocalBackend(OneNode):
    """One process: numbers messages itself and keeps them in SQLite (:class:`SqliteStore`)."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.next_seq: dict[str, int] = {}
        self._durable: list[Message] = []
        store.after_batch = self._deliver_durable

    def _deliver_durable(self) -> None:
        batch, self._durable = self._durable, []
        if batch and self.hub is not None:
            self.hub.on_messages(batch)

    def start(self, hub: ChatHub) -> dict[str, RoomState]:
        self.hub = hub
        rooms = self.store.load()
        self.next_seq = {name: st.seq for name, st in rooms.items()}
        return rooms

    def publish(self, msg: Message, on_error: Callable[[str], None]) -> None:
        seq = self.next_seq.get(msg.room, 0) + 1
        self.next_seq[msg.room] = seq
        numbered = Message(msg.room, seq, msg.ts, msg.nick, msg.text, msg.kind)
        hub = self.hub
        assert hub is not None

        def done(err: BaseException | None) -> None:
            if err is None:
                self._durable.append(numbered)  # delivered with its whole batch (after_batch)
            else:
                on_error(f"not stored: {err}")

        self.store.append(numbered, done)

    def history(self, room: str, after: int | None, limit: int, cb: Callable[[list[Message]], None]) -> None:
        cb(self.store.recent(room, limit) if after is None else self.store.after(room, after, limit))

    def set_topic(self, room: str, nick: str, text: str) -> None:
        self.store.set_topic(room, nick, text)

    def close(self) -> None:
        self.store.close()
