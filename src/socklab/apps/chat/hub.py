"""The chat's core: rooms, nicks, sequence numbers and fan-out, whatever the transport.

Why this exists: TCP line clients and WebSocket clients are two *adapters* onto one
:class:`ChatHub`. The hub never sees a socket: a connected user is a :class:`Member` that can be
sent a :class:`Frame` (an event encoded lazily, once per event, as a line and/or as JSON - a message
to 1,000 members is encoded once, not 1,000 times) and can be closed with a reason.

Where messages go, step by step (``/say hello`` in ``#lobby``):

1. the adapter parses the line into a command and calls :meth:`ChatHub.handle`;
2. the hub checks the nick, the room, the text and the sender's token bucket (refusals are an
   ``ERR`` line, never a silent drop or a disconnect);
3. the *backend* makes the message durable and numbers it: :class:`LocalBackend` with SQLite
   (:mod:`.store`), or the Redis broker (:mod:`.broker`) shared by several nodes;
4. once durable, the backend calls :meth:`ChatHub.on_message` on the engine thread, and the hub
   writes the frame to every member of the room (:mod:`.fanout`: one call per member) - the
   sender's own copy is its acknowledgement.

Thread model: everything here runs on the engine's thread (callbacks of one engine are
serialized), so there are no locks. Backends that use threads post their results back with
``Server.call_soon_threadsafe``.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import Any

from socklab.apps.chat.admission import CallLater, Door
from socklab.apps.chat.backends import Backend, LocalBackend
from socklab.apps.chat.fanout import Room
from socklab.apps.chat.member import Frame, Member
from socklab.apps.chat.presence import PresenceBatcher
from socklab.apps.chat.settings import ChatSettings
from socklab.core.errors import RemoteProtocolError
from socklab.protocols.chat import (
    ACTION,
    HELP_TEXT,
    Bye,
    Command,
    ErrorReply,
    Help,
    History,
    Join,
    Joined,
    Me,
    Members,
    Message,
    Nick,
    NickChanged,
    Notice,
    Part,
    Parted,
    Ping,
    Pong,
    Presence,
    Private,
    PrivMsg,
    Quit,
    RoomInfo,
    RoomList,
    Rooms,
    Say,
    ServerEvent,
    Synced,
    TokenBucket,
    Topic,
    TopicChanged,
    Welcome,
    Who,
    check_text,
    nick_key,
)

__all__ = ["Backend", "ChatHub", "Frame", "LocalBackend", "Member", "Room"]

MAX_REASON = 300  # bytes of a topic, or of a part or quit reason


class ChatHub:
    """Rooms, nicks and fan-out for one node.

    Args:
        settings: the limits (message size, rate, rooms per client, history replayed...).
        backend: :class:`LocalBackend` or the Redis broker.
        clock: monotonic seconds, for the token buckets and deadlines (tests pass their own).
        call_later: the engine's timer, for the deadline to choose a nick (``None``: no deadline).

    Memory: a :class:`Room` exists only while it has members here; the last sequence number and
    the topic of every room with history live in two flat tables (``last_seq``, ``topics``), the
    little the store's history needs. Join/part churn leaves nothing behind.
    """

    def __init__(self, settings: ChatSettings, backend: Backend, *,
                 clock: Callable[[], float] = time.monotonic, wallclock: Callable[[], float] = time.time,
                 server_name: str = "socklab-chat", call_later: CallLater | None = None) -> None:
        self.settings = settings
        self.backend = backend
        self.clock = clock
        self.wallclock = wallclock
        self.server_name = server_name
        self.rooms: dict[str, Room] = {}
        self.last_seq: dict[str, int] = {}  # room -> last sequence number delivered here
        self.topics: dict[str, tuple[str, str]] = {}  # room -> (topic, set by)
        self.nicks: dict[str, Member] = {}
        self.members: dict[int, Member] = {}
        self.door = Door(settings, clock, call_later, self._expire)
        self.presence = PresenceBatcher(self, call_later)  # joins and parts, gathered per tick
        self.shutting_down = False
        self.delivered = 0
        self.messages = 0
        for name, st in backend.start(self).items():
            if st.seq:
                self.last_seq[name] = st.seq
            if st.topic:
                self.topics[name] = (st.topic, st.topic_by)

    # ---- membership ------------------------------------------------------------------------------
    def attach(self, member: Member) -> bool:
        """A new connection: greet it (it must choose a nick before anything else).

        Returns:
            False when it was refused (server full, too many from its address): it was sent
            ``BYE`` with the reason and closed.
        """
        refusal = "server shutting down" if self.shutting_down else self.door.refusal(member, len(self.members))
        if refusal is not None:
            self.door.refused += 1
            member.gone = True
            member.close_with(Bye(refusal))
            return False
        now = self.clock()
        member.bucket = TokenBucket(self.settings.rate, self.settings.burst, now)
        member.commands = TokenBucket(self.settings.command_rate, self.settings.command_burst, now)
        self.members[member.id] = member
        self.door.admit(member)
        member.send(Welcome(self.server_name, 1, "welcome! choose a nick with /nick NAME; /help lists the "
                                                 "commands"))
        return True

    def _expire(self, member: Member) -> None:
        t = self.settings.register_timeout
        member.close_with(Bye(f"no nick chosen within {t:g} s (register_timeout); closing - send /nick NAME "
                              "first"))
        self.detach(member, "no nick chosen")

    def detach(self, member: Member, reason: str = "") -> None:
        """The connection is gone (or going): leave every room, free the nick. Idempotent."""
        if member.gone:
            return
        member.gone = True
        self.members.pop(member.id, None)
        self.door.leave(member)
        for name in list(member.rooms):
            self._leave(member, name, reason, tell_self=False)
        if member.nick is not None:
            if self.nicks.get(nick_key(member.nick)) is member:
                del self.nicks[nick_key(member.nick)]
            self.backend.release_nick(member.nick)

    def shutdown(self) -> None:
        """Tell everybody the server is going away, and close their connections."""
        self.shutting_down = True
        self.door.close()
        for member in list(self.members.values()):
            member.close_with(Bye("server shutting down; reconnect later"))
            self.detach(member, "server shutting down")
        self.presence.close()

    # ---- commands --------------------------------------------------------------------------------
    def error(self, member: Member, code: int, text: str) -> None:
        member.send(ErrorReply(code, text))

    def handle(self, member: Member, cmd: Command) -> None:
        """Carry out one command of ``member``; every refusal is an ``ERR`` line to it.

        Commands other than messages take a token from the member's command bucket
        (``command_rate``, ``command_burst``); without one the command is dropped, with one
        ``ERR 429`` per burst of refusals. Messages have their own bucket (``rate``, ``burst``);
        ``/quit`` is never refused.
        """
        if member.gone:
            return
        try:
            handler = self._handlers[type(cmd)]
        except KeyError:
            self.error(member, 400, f"unsupported command {type(cmd).__name__}")
            return
        if not isinstance(cmd, (Say, Me, PrivMsg, Quit)) and not self._command_allowed(member):
            return
        try:
            handler(self, member, cmd)
        except RemoteProtocolError as exc:
            self.error(member, exc.hint or 400, str(exc))

    def invalid(self, member: Member, code: int, text: str) -> None:
        """A line that is not a valid command: ``ERR code text``, metered like a command."""
        if not member.gone and self._command_allowed(member):
            self.error(member, code, text)

    def _command_allowed(self, member: Member) -> bool:
        bucket = member.commands
        if bucket is None:
            return True
        now = self.clock()
        if bucket.take(now):
            member.commands_limited = False
            return True
        if not member.commands_limited:  # one notice per burst of refusals, not one per line
            member.commands_limited = True
            s = self.settings
            self.error(member, 429, f"rate limited ({s.command_rate:g} commands/s, bursts of {s.command_burst}): "
                                    f"commands are dropped for {bucket.retry_after(now):.1f} s")
        return False

    def _need_nick(self, member: Member) -> str:
        if member.nick is None:
            raise RemoteProtocolError("choose a nick first: /nick NAME", hint=401)
        return member.nick

    def _target_room(self, member: Member, room: str | None) -> str:
        name = room or member.current
        if name is None:
            raise RemoteProtocolError("join a room first: /join #room", hint=403)
        if name not in member.rooms:
            raise RemoteProtocolError(f"you are not in {name}; /join {name} first", hint=403)
        return name

    def _metered(self, member: Member) -> bool:
        """True when ``member`` may send now; False: dropped by the rate limit (the notice is sent)."""
        assert member.bucket is not None
        now = self.clock()
        if member.bucket.take(now):
            member.limited = False
            return True
        wait = member.bucket.retry_after(now)
        if not member.limited:  # one notice per burst of refusals, not one per line
            member.limited = True
            self.error(member, 429, f"rate limited ({self.settings.rate:g} messages/s, bursts of "
                                    f"{self.settings.burst}): messages are dropped for {wait:.1f} s")
        return False

    def _say(self, member: Member, cmd: Say | Me) -> None:
        nick = self._need_nick(member)
        room = self._target_room(member, cmd.room if isinstance(cmd, Say) else None)
        text = check_text(cmd.text, self.settings.max_message)
        if not self._metered(member):  # dropped; the notice was already sent
            return
        self.messages += 1
        msg = Message(room, 0, round(self.wallclock(), 3), nick, text, ACTION if isinstance(cmd, Me) else "say")

        def failed(reason: str) -> None:
            if not member.gone:
                self.error(member, 500, f"message to {room} was not stored ({reason}); send it again")

        self.backend.publish(msg, failed)

    def _nick(self, member: Member, cmd: Nick) -> None:
        new = cmd.nick
        key = nick_key(new)
        holder = self.nicks.get(key)
        if holder is not None and holder is not member:
            raise RemoteProtocolError(f"nick {new} is already in use; choose another", hint=409)
        if member.pending_nick is not None:
            raise RemoteProtocolError("a nick change is already in progress", hint=409)
        old = member.nick
        if old == new:
            member.send(NickChanged(old, new))
            return
        member.pending_nick = new
        self.nicks[key] = member  # reserve locally while the backend checks the other nodes

        def claimed(ok: bool) -> None:
            member.pending_nick = None
            if member.gone:
                if self.nicks.get(key) is member:
                    del self.nicks[key]
                if ok:
                    self.backend.release_nick(new)
                return
            if not ok:
                if self.nicks.get(key) is member and (old is None or nick_key(old) != key):
                    del self.nicks[key]
                self.error(member, 409, f"nick {new} is already in use on another node; choose another")
                return
            if old is not None and nick_key(old) != key:
                self.nicks.pop(nick_key(old), None)
                self.backend.release_nick(old)
            member.nick = new
            for name in member.rooms:
                r = self.rooms.get(name)
                if r is not None:
                    r.names = None
            self.door.registered(member)
            event = NickChanged(old or "*", new)
            member.send(event)
            for name in member.rooms:
                self.backend.room_event(name, event)
            if old is None and not member.rooms:
                self._join(member, Join(self.settings.default_room))

        self.backend.claim_nick(new, old, claimed)

    def _join(self, member: Member, cmd: Join) -> None:
        nick = self._need_nick(member)
        name = cmd.room
        if name not in member.rooms:
            if len(member.rooms) >= self.settings.max_rooms:
                raise RemoteProtocolError(f"you are in {self.settings.max_rooms} rooms already; /part one",
                                          hint=403)
            room = self.rooms.get(name)
            if room is None:
                room = self.rooms[name] = Room(name)
            member.rooms.append(name)
            room.members[member.id] = member
            room.names = None
            event = Joined(name, nick)
            member.send(event)  # at once; the others get it with the room's next presence tick
            self.backend.room_event(name, event)
        member.current = name
        topic = self.topics.get(name)
        if topic is not None:
            member.send(TopicChanged(name, topic[1], topic[0]))

        def send_members(nicks: list[str]) -> None:
            if not member.gone:
                member.send(Members(name, tuple(nicks)))

        if self.presence.is_crowded(name):  # the count, not 10,000 names: /who lists them on demand
            count = self.member_count(name)
            member.send(Presence(name, count, 0, 0, f"{count} members in {name}; joins and parts are counted, "
                                                     f"not named, above {self.settings.presence_names} members; "
                                                     f"/who {name} lists them"))
        else:
            self.backend.who(name, send_members)
        limit = self.settings.max_catchup if cmd.since is not None else self.settings.history_on_join
        self._replay(member, name, cmd.since, limit)

    def _replay(self, member: Member, name: str, after: int | None, limit: int) -> None:
        def send(messages: list[Message]) -> None:
            if member.gone:
                return
            for m in messages:
                member.send(m)
            member.send(Synced(name, max(self.last_seq.get(name, 0), messages[-1].seq if messages else 0)))

        if limit <= 0:
            send([])
        else:
            self.backend.history(name, after, limit, send)

    def _leave(self, member: Member, name: str, reason: str, tell_self: bool = True) -> None:
        room = self.rooms.get(name)
        if name in member.rooms:
            member.rooms.remove(name)
        if room is not None:
            room.members.pop(member.id, None)
            room.names = None
            if not room.members:
                del self.rooms[name]  # freed: its sequence number and topic stay in the flat tables
        if member.current == name:
            member.current = member.rooms[-1] if member.rooms else None
        if member.nick is not None:
            event = Parted(name, member.nick, reason)
            self.backend.room_event(name, event)
            if tell_self and not member.gone:
                member.send(event)

    def _part(self, member: Member, cmd: Part) -> None:
        self._need_nick(member)
        name = self._target_room(member, cmd.room)
        reason = check_text(cmd.reason, MAX_REASON, "part reason") if cmd.reason else ""
        self._leave(member, name, f"left: {reason}" if reason else "left")

    def _privmsg(self, member: Member, cmd: PrivMsg) -> None:
        nick = self._need_nick(member)
        text = check_text(cmd.text, self.settings.max_message)
        if not self._metered(member):  # dropped; the notice was already sent
            return
        target = self.nicks.get(nick_key(cmd.nick))
        event = Private(nick, cmd.nick if target is None or target.nick is None else target.nick,
                        round(self.wallclock(), 3), text)
        if target is not None and target.nick is not None:
            target.send(event)
            if target is not member:
                member.send(event)
            return

        def routed(found: bool) -> None:
            if member.gone:
                return
            if found:
                member.send(event)
            else:
                self.error(member, 404, f"no user called {cmd.nick} is connected")

        self.backend.private(event, routed)

    def _who(self, member: Member, cmd: Who) -> None:
        self._need_nick(member)
        name = cmd.room or member.current
        if name is None:
            raise RemoteProtocolError("usage: /who #room (you are in no room)", hint=400)

        def send(nicks: list[str]) -> None:
            if not member.gone:
                member.send(Members(name, tuple(nicks)))

        self.backend.who(name, send)

    def _rooms(self, member: Member, cmd: Rooms) -> None:
        """The ``rooms_listed`` rooms with the most members here (a heap, not a sort of every room),
        then how many more there are."""
        self._need_nick(member)
        limit = self.settings.rooms_listed
        top = heapq.nlargest(limit, self.rooms.values(), key=lambda r: len(r.members))
        member.send(RoomList(tuple(RoomInfo(r.name, len(r.members), self.last_seq.get(r.name, 0)) for r in top)))
        more = len(self.rooms) - len(top)
        if more > 0:
            member.send(Notice(f"and {more} more room{'s' if more != 1 else ''} (the {limit} with the most "
                               "members are listed)"))

    def _topic(self, member: Member, cmd: Topic) -> None:
        nick = self._need_nick(member)
        name = self._target_room(member, None)
        if cmd.text is None:
            topic = self.topics.get(name)
            if topic is not None:
                member.send(TopicChanged(name, topic[1], topic[0]))
            else:
                member.send(Notice(f"{name} has no topic; set one with /topic TEXT"))
            return
        text = check_text(cmd.text, min(self.settings.max_message, MAX_REASON), "topic")
        self.topics[name] = (text, nick)
        self.backend.set_topic(name, nick, text)
        self.backend.room_event(name, TopicChanged(name, nick, text))

    def _history(self, member: Member, cmd: History) -> None:
        self._need_nick(member)
        name = self._target_room(member, cmd.room)
        self._replay(member, name, None, min(cmd.count, self.settings.max_catchup))

    def _quit(self, member: Member, cmd: Quit) -> None:
        # parse_command refused unsafe characters already; the size is bounded here like a topic's
        reason = check_text(cmd.reason, MAX_REASON, "quit reason") if cmd.reason.strip() else ""
        member.close_with(Bye("bye" + (f": {reason}" if reason else "")))
        self.detach(member, "quit" + (f": {reason}" if reason else ""))

    def _help(self, member: Member, cmd: Help) -> None:
        member.send(Notice(HELP_TEXT))

    def _ping(self, member: Member, cmd: Ping) -> None:
        member.send(Pong(cmd.token))

    _handlers: dict[type[Command], Callable[[ChatHub, Member, Any], None]] = {
        Say: _say, Me: _say, Nick: _nick, Join: _join, Part: _part, PrivMsg: _privmsg, Who: _who,
        Rooms: _rooms, Topic: _topic, History: _history, Quit: _quit, Help: _help, Ping: _ping,
    }

    # ---- from the backend (engine thread) ----------------------------------------------------------
    def member_count(self, room: str) -> int:
        """Members of ``room`` (on every node, as far as the backend knows)."""
        return self.backend.member_count(room)

    def local_names(self, room: str) -> list[str]:
        """The sorted nicks of ``room`` on this node: sorted once, then reused until somebody joins,
        leaves or changes nick (10,000 nicks take milliseconds to sort; /who may be asked often)."""
        r = self.rooms.get(room)
        if r is None:
            return []
        if r.names is None:
            r.names = sorted((m.nick for m in r.members.values() if m.nick), key=str.casefold)
        return r.names

    def on_room_event(self, room: str, event: ServerEvent) -> None:
        """An event for everybody in ``room`` (of this node or, through the broker, of another):
        joins and parts wait for the presence tick (:mod:`.presence`), anything else goes at once,
        after the room's gathered lines."""
        if isinstance(event, (Joined, Parted)) or (isinstance(event, NickChanged) and self.presence.is_crowded(room)):
            self.presence.add(room, event)  # a rename in a crowded room is told in its PRESENCE sentence
            return
        self.presence.before(room)
        self.fanout(room, Frame(event))

    def on_message(self, msg: Message) -> None:
        """A durable, numbered message: deliver it to the room's members here."""
        if msg.seq > self.last_seq.get(msg.room, 0):
            self.last_seq[msg.room] = msg.seq
        if self.presence.pending:
            self.presence.before(msg.room)
        self.fanout(msg.room, Frame(msg))

    def on_messages(self, messages: list[Message]) -> None:
        """Several durable messages at once: each member gets a room's share of them in one write
        (the same bytes for every member of the room; a member of two of the rooms gets two writes,
        each room's messages in order)."""
        if len(messages) == 1:
            self.on_message(messages[0])
            return
        last_seq = self.last_seq
        by_room: dict[str, list[Frame]] = {}
        for msg in messages:
            if msg.seq > last_seq.get(msg.room, 0):
                last_seq[msg.room] = msg.seq
            frames = by_room.get(msg.room)
            if frames is None:
                by_room[msg.room] = [Frame(msg)]
            else:
                frames.append(Frame(msg))
        for name, frames in by_room.items():
            if self.presence.pending:
                self.presence.before(name)
            room = self.rooms.get(name)
            if room is not None:  # else nobody here (a room of another node, or everyone left)
                self.delivered += room.send_batch(frames)

    def on_topic(self, room: str, nick: str, text: str) -> None:
        self.topics[room] = (text, nick)

    def fanout(self, room: str, frame: Frame) -> None:
        """Send ``frame`` to every member of ``room`` on this node (:meth:`Room.send`)."""
        r = self.rooms.get(room)
        if r is not None:
            self.delivered += r.send(frame)

    def deliver_private(self, event: Private) -> bool:
        """A private message routed from another node; returns whether the target is here."""
        target = self.nicks.get(nick_key(event.target))
        if target is None or target.gone or target.nick is None:
            return False
        target.send(event)
        return True
