"""Many chat nodes, one set of rooms: the Redis backend.

Why this exists: one process serves a few thousand users; more users, or a node that can be
restarted without kicking everybody out, need several nodes sharing rooms, nicks and history.
Redis pub/sub would be the obvious bus, but it is *at-most-once*: a message published while a node
is reconnecting is gone for that node. So everything goes through Redis **Streams**, which are
durable and can be re-read from any position:

- publishing a message runs one Lua script (atomic): ``INCR`` the room's sequence number,
  ``XADD`` the message to the room's stream (its history, entry id ``SEQ-1``) and to the global
  ``events`` stream every node reads, and remember an idempotency key so that a publish retried
  after a dropped connection is not stored twice;
- each node has **one subscription**: a thread doing ``XREAD BLOCK`` on ``events`` from the last
  entry id it saw. After a node or Redis blip it simply continues from that id: nothing is skipped.
  If a room's sequence numbers still show a gap (the events stream was trimmed while the node was
  away), the node fills it from the room's stream before delivering;
- presence and nick uniqueness are Redis keys with a time-to-live renewed by a heartbeat, so a
  node that dies frees its users' nicks after ``presence_ttl`` seconds.

A message is acknowledged (its sender sees it come back) only after Redis stored it; run Redis
with ``appendonly yes`` and ``appendfsync always`` for that to survive a Redis restart.

Threads: a *worker* runs every other Redis command in order (so the engine thread never waits on
the network) and the *reader* runs the subscription; both post results back to the engine with
``post`` (``Server.call_soon_threadsafe``). Redis is reached through redis-py.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import redis

from socklab.apps.chat.settings import ChatSettings
from socklab.apps.chat.store import RoomState
from socklab.core.errors import NetworkError
from socklab.protocols.chat import (
    Joined,
    Message,
    NickChanged,
    Parted,
    Private,
    ServerEvent,
    TopicChanged,
    event_from_json,
    event_to_json,
    nick_key,
)
from socklab.protocols.text import escape_peer_text

if TYPE_CHECKING:
    from socklab.apps.chat.hub import ChatHub

__all__ = ["RedisBackend"]

PREFIX = "socklab:chat:"
EVENTS = PREFIX + "events"
ROOM_HISTORY_MAX = 10000  # entries kept per room stream (approximate trimming)
EVENTS_MAX = 100000  # entries kept in the shared events stream
PUBLISH_RETRY = 15.0  # seconds a publish keeps retrying while Redis is unreachable

_PUBLISH = """
local done = redis.call('GET', KEYS[4])
if done then return tonumber(done) end
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], seq .. '-1',
           'seq', seq, 'ts', ARGV[2], 'nick', ARGV[3], 'text', ARGV[4], 'kind', ARGV[5])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 't', 'msg', 'room', ARGV[1], 'seq', seq,
           'ts', ARGV[2], 'nick', ARGV[3], 'text', ARGV[4], 'kind', ARGV[5])
redis.call('SET', KEYS[4], seq, 'EX', 3600)
return seq
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

Job = Callable[[Any], Callable[[], None] | None]
_NOTHING = object()


class _Publish:
    """A queued publish: the worker sends consecutive ones in one pipeline."""

    __slots__ = ("msg", "on_error", "token")

    def __init__(self, msg: Message, token: str, on_error: Callable[[str], None]) -> None:
        self.msg = msg
        self.token = token
        self.on_error = on_error


class _Claim:
    """A queued nick claim: consecutive ones go out in one pipeline (a join storm is mostly these)."""

    __slots__ = ("cb", "nick")

    def __init__(self, nick: str, cb: Callable[[bool], None]) -> None:
        self.nick = nick
        self.cb = cb


class _RoomEvent:
    """A queued room event (join, part, rename, topic): consecutive ones go out in one pipeline."""

    __slots__ = ("data", "event", "room")

    def __init__(self, room: str, event: ServerEvent) -> None:
        self.room = room
        self.event = event
        self.data = event_to_json(event)


_Grouped = _Publish | _Claim | _RoomEvent


def _room_key(room: str) -> str:
    return f"{PREFIX}room:{room}"


def _seq_key(room: str) -> str:
    return f"{PREFIX}seq:{room}"


def _nick_key(nick: str) -> str:
    return f"{PREFIX}nick:{nick_key(nick)}"


def _members_key(room: str) -> str:
    return f"{PREFIX}members:{room}"


def _apply_membership(nicks: set[str], event: ServerEvent) -> None:
    """``nicks``, a room's members, after ``event`` (a join, part or nick change; others change nothing)."""
    if isinstance(event, Joined):
        nicks.add(event.nick)
    elif isinstance(event, Parted):
        nicks.discard(event.nick)
    elif isinstance(event, NickChanged):
        nicks.discard(event.old)
        nicks.add(event.new)


def _message(room: str, fields: dict[str, str]) -> Message:
    return Message(room, int(fields["seq"]), float(fields["ts"]), fields["nick"], fields["text"],
                   fields.get("kind", "say"))


class RedisBackend:
    """The hub's backend when several nodes share rooms through Redis.

    Args:
        settings: ``broker`` (the URL), ``node`` (this node's name), ``presence_ttl``.
        post: runs a callable on the engine thread.

    Raises:
        NetworkError: Redis cannot be reached at start-up (a clear one-line reason).
    """

    def __init__(self, settings: ChatSettings, post: Callable[[Callable[[], None]], None]) -> None:
        assert settings.broker
        self.settings = settings
        self.post = post
        self.node = settings.node or f"{socket.gethostname()}-{os.getpid()}"
        self.ttl = max(2, int(settings.presence_ttl))
        self.url = settings.broker
        self.hub: ChatHub | None = None
        self._jobs: queue.SimpleQueue[Job | _Grouped | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._nicks: set[str] = set()  # nicks held by this node, case-folded (for the heartbeat)
        self._presence: dict[str, set[str]] = {}  # room -> nicks here
        self._delivered: dict[str, int] = {}  # room -> last seq delivered here (engine thread)
        # room -> nicks in it on every node, for the member count (engine thread): kept only for rooms
        # with members here, seeded from the presence set, then followed on the events stream
        self._roster: dict[str, set[str]] = {}
        self._published = 0
        self.reconnects = 0
        try:
            self._cmd: Any = self._connect()
            self._cmd.ping()
            last = self._cmd.xrevrange(EVENTS, count=1)
        except redis.RedisError as exc:
            raise NetworkError(f"cannot reach the broker at {self.url}: {exc}") from None
        self._publish = self._cmd.register_script(_PUBLISH)
        self._release = self._cmd.register_script(_RELEASE)
        self.last_id = last[0][0] if last else "0-0"
        self._worker = threading.Thread(target=self._work, name="socklab-chat-broker", daemon=True)
        self._reader = threading.Thread(target=self._read, name="socklab-chat-subscription", daemon=True)

    def _connect(self) -> Any:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2)

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self, hub: ChatHub) -> dict[str, RoomState]:
        self.hub = hub
        self._worker.start()
        self._reader.start()
        return {}

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._jobs.put(None)
        if self._worker.is_alive():
            self._worker.join(timeout=PUBLISH_RETRY + 5)
        if self._reader.is_alive():
            self._reader.join(timeout=5)
        with contextlib.suppress(redis.RedisError):
            self._cmd.close()

    # ---- the worker: every command, in order ---------------------------------------------------------
    def _submit(self, job: Job | _Grouped) -> None:
        self._jobs.put(job)

    def _work(self) -> None:
        next_beat = time.monotonic()
        carry: Job | object | None = _NOTHING
        while True:
            if carry is not _NOTHING:
                job, carry = carry, _NOTHING
            elif time.monotonic() >= next_beat:  # due: before any queued job, so a busy node still beats
                job = self._heartbeat
                next_beat = time.monotonic() + self.ttl / 3
            else:
                try:
                    job = self._jobs.get(timeout=max(0.0, next_beat - time.monotonic()))
                except queue.Empty:
                    continue
            if job is None:
                with contextlib.suppress(redis.RedisError):
                    self._cleanup()
                return
            if isinstance(job, (_Publish, _Claim, _RoomEvent)):
                group: list[_Grouped] = [job]
                while len(group) < 500:
                    try:
                        nxt = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(nxt, (_Publish, _Claim, _RoomEvent)):
                        group.append(nxt)
                    else:
                        carry = nxt
                        break
                self._run_group(group)
                continue
            assert callable(job)
            try:
                then = job(self._cmd)
            except redis.RedisError:
                then = None  # the job reported its own failure (see _call); keep serving
            if then is not None:
                self.post(then)

    def _run_group(self, group: list[_Grouped]) -> None:
        """Publishes, nick claims and room events queued together: one pipeline, in queue order (so
        the events stream keeps it: a JOIN before its nick's first MSG), one round trip, and Redis
        fsyncs its append-only file once for the whole group (a group commit). 10,000 joins are
        10,000 claims and 10,000 room events: a few dozen round trips, not 30,000."""
        claims: list[tuple[_Claim, int]] = []  # each claim and the index of its SET's reply

        def run() -> Any:
            claims.clear()
            pipe = self._cmd.pipeline(transaction=False)
            n = 0
            until = time.time() + self.ttl
            for item in group:
                if isinstance(item, _Publish):
                    m = item.msg
                    self._publish(keys=[_seq_key(m.room), _room_key(m.room), EVENTS, item.token],
                                  args=[m.room, f"{m.ts:.3f}", m.nick, m.text, m.kind, ROOM_HISTORY_MAX,
                                        EVENTS_MAX], client=pipe)
                    n += 1
                elif isinstance(item, _Claim):
                    pipe.set(_nick_key(item.nick), self.node, nx=True, ex=self.ttl)
                    claims.append((item, n))
                    n += 1
                else:
                    pipe.xadd(EVENTS, {"t": "ev", "room": item.room, "ev": item.data}, maxlen=EVENTS_MAX,
                              approximate=True)
                    ev = item.event
                    n += 1
                    if isinstance(ev, Joined):
                        pipe.zadd(_members_key(item.room), {ev.nick: until})
                        n += 1
                    elif isinstance(ev, Parted):
                        pipe.zrem(_members_key(item.room), ev.nick)
                        n += 1
                    elif isinstance(ev, NickChanged):
                        pipe.zrem(_members_key(item.room), ev.old)
                        pipe.zadd(_members_key(item.room), {ev.new: until})
                        n += 2
            return pipe.execute()

        publishes = [p for p in group if isinstance(p, _Publish)]
        reason = ""
        try:  # idempotent enough to retry: publishes have their dedupe token, a claim checks its holder
            replies = self._call(run, retry_for=PUBLISH_RETRY if publishes else 2.0)
            won = [bool(replies[i]) for _, i in claims]
            again = [k for k, ok in enumerate(won) if not ok]
            if again:  # refused: still ours if the key names this node (a reconnect, a retried SET)
                pipe = self._cmd.pipeline(transaction=False)
                for k in again:
                    pipe.get(_nick_key(claims[k][0].nick))
                for k, holder in zip(again, pipe.execute(), strict=True):
                    won[k] = holder == self.node
        except redis.RedisError as exc:
            reason = f"broker unavailable: {exc}"
            won = [False] * len(claims)
            errors = [p.on_error for p in publishes]
        else:
            errors = []
        with self._lock:
            for (c, _), ok in zip(claims, won, strict=True):
                if ok:
                    self._nicks.add(nick_key(c.nick))
        answers = [(c.cb, ok) for (c, _), ok in zip(claims, won, strict=True)]
        if answers or errors:
            def report() -> None:
                for cb in errors:
                    cb(reason)
                for answer, ok in answers:
                    answer(ok)

            self.post(report)
        # a publish that went through comes back through the subscription: that is its acknowledgement

    def _call(self, fn: Callable[[], Any], retry_for: float = 0.0) -> Any:
        """Run ``fn`` (redis-py calls on ``self._cmd``), retrying through reconnects for ``retry_for`` s."""
        deadline = time.monotonic() + retry_for
        delay = 0.05
        while True:
            try:
                return fn()
            except (redis.ConnectionError, redis.TimeoutError):
                self.reconnects += 1
                if time.monotonic() >= deadline or (self._stop.is_set() and retry_for == 0):
                    raise
                time.sleep(delay)
                delay = min(1.0, delay * 2)

    def _heartbeat(self, r: redis.Redis) -> None:
        with self._lock:
            nicks = list(self._nicks)
            presence = [(room, nick) for room, ns in self._presence.items() for nick in ns]
        until = time.time() + self.ttl
        try:
            pipe = r.pipeline(transaction=False)
            for nick in nicks:
                pipe.set(_nick_key(nick), self.node, ex=self.ttl)
            for room, nick in presence:
                pipe.zadd(_members_key(room), {nick: until})
            pipe.execute()
        except redis.RedisError:
            pass  # retried at the next beat
        return None

    def _cleanup(self) -> None:
        with self._lock:
            nicks = list(self._nicks)
            presence = [(room, nick) for room, ns in self._presence.items() for nick in ns]
        for nick in nicks:
            self._release(keys=[_nick_key(nick)], args=[self.node])
        for room, nick in presence:
            self._cmd.zrem(_members_key(room), nick)

    # ---- Backend: called on the engine thread ------------------------------------------------------
    def publish(self, msg: Message, on_error: Callable[[str], None]) -> None:
        self._published += 1
        self._submit(_Publish(msg, f"{PREFIX}dedupe:{self.node}:{self._published}:{time.time_ns()}", on_error))

    def history(self, room: str, after: int | None, limit: int, cb: Callable[[list[Message]], None]) -> None:
        def job(r: Any) -> Callable[[], None]:
            try:
                if after is None:
                    rows = list(reversed(self._call(lambda: r.xrevrange(_room_key(room), count=limit))))
                else:
                    rows = self._call(lambda: r.xrange(_room_key(room), min=f"{after + 1}-0", count=limit))
                messages = [_message(room, fields) for _, fields in rows]
            except redis.RedisError:
                messages = []
            return lambda: cb(messages)

        self._submit(job)

    def set_topic(self, room: str, nick: str, text: str) -> None:
        def job(r: Any) -> None:
            with contextlib.suppress(redis.RedisError):
                r.hset(f"{PREFIX}topic:{room}", mapping={"nick": nick, "text": text})

        self._submit(job)

    def claim_nick(self, nick: str, old: str | None, cb: Callable[[bool], None]) -> None:
        self._submit(_Claim(nick, cb))

    def release_nick(self, nick: str) -> None:
        with self._lock:
            self._nicks.discard(nick_key(nick))

        def job(r: Any) -> None:
            with contextlib.suppress(redis.RedisError):
                self._release(keys=[_nick_key(nick)], args=[self.node])

        self._submit(job)

    def room_event(self, room: str, event: ServerEvent) -> None:
        self._track(room, event)
        self._follow(room, event)  # counted at once here; the stream brings it back (idempotent)
        self._submit(_RoomEvent(room, event))

    def _track(self, room: str, event: ServerEvent) -> None:
        with self._lock:
            here = self._presence.setdefault(room, set())
            _apply_membership(here, event)
            if not here:
                del self._presence[room]  # rooms nobody here is in leave no trail (join/part churn)

    def private(self, event: Private, cb: Callable[[bool], None]) -> None:
        data = json.dumps(asdict(event))

        def job(r: Any) -> Callable[[], None]:
            try:
                found = self._call(lambda: r.exists(_nick_key(event.target))) == 1
                if found:
                    r.xadd(EVENTS, {"t": "priv", "ev": data}, maxlen=EVENTS_MAX, approximate=True)
            except redis.RedisError:
                found = False
            return lambda: cb(found)

        self._submit(job)

    def who(self, room: str, cb: Callable[[list[str]], None]) -> None:
        def job(r: Any) -> Callable[[], None]:
            try:
                nicks = list(self._call(lambda: r.zrangebyscore(_members_key(room), time.time(), "+inf")))
            except redis.RedisError:
                with self._lock:
                    nicks = list(self._presence.get(room, ()))
            nicks.sort(key=str.casefold)
            return lambda: cb(nicks)

        self._submit(job)

    def member_count(self, room: str) -> int:
        """Members of ``room`` on every node: the presence set, read once when the room first has a
        member here, then followed on the events stream (approximate for a moment around that read)."""
        hub = self.hub
        assert hub is not None
        here = hub.rooms.get(room)
        local = len(here.members) if here else 0
        roster = self._roster.get(room)
        if roster is None:
            if not local:
                return 0
            roster = self._roster[room] = {m.nick for m in here.members.values() if m.nick} if here else set()

            def job(r: Any) -> Callable[[], None]:
                try:
                    nicks = list(r.zrangebyscore(_members_key(room), time.time(), "+inf"))
                except redis.RedisError:
                    nicks = []
                return lambda: self._roster[room].update(nicks) if room in self._roster else None

            self._submit(job)
        return max(local, len(roster))

    def _follow(self, room: str, event: ServerEvent) -> None:
        """Engine thread: keep the room's roster (for the count) in step with the stream."""
        hub = self.hub
        assert hub is not None
        if room not in hub.rooms:
            self._roster.pop(room, None)  # nobody here any more: nothing to count
            return
        roster = self._roster.get(room)
        if roster is None:
            self.member_count(room)  # seeds it (local members now, the presence set soon)
            return
        _apply_membership(roster, event)

    # ---- the subscription (one per node) ------------------------------------------------------------
    def _read(self) -> None:
        conn: Any = None
        delay = 0.05
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self._connect()
                reply = conn.xread({EVENTS: self.last_id}, count=1000, block=1000)
                delay = 0.05
            except redis.RedisError:
                self.reconnects += 1
                if conn is not None:
                    with contextlib.suppress(redis.RedisError):
                        conn.close()
                conn = None  # resubscribe from self.last_id: nothing is skipped
                self._stop.wait(delay)
                delay = min(1.0, delay * 2)
                continue
            for _stream, entries in reply or ():
                if entries:
                    self.last_id = entries[-1][0]
                    batch = [fields for _, fields in entries]
                    self.post(lambda b=batch: self._dispatch(b))  # type: ignore[misc]
        if conn is not None:
            with contextlib.suppress(redis.RedisError):
                conn.close()

    def _dispatch(self, batch: list[dict[str, str]]) -> None:
        """Engine thread: deliver entries of the events stream to this node's members."""
        hub = self.hub
        assert hub is not None

        pending: list[Message] = []  # consecutive messages are delivered together (one write each)
        for fields in batch:
            kind = fields.get("t")
            if kind != "msg" and pending:
                hub.on_messages(pending)
                pending = []
            try:
                if kind == "msg":
                    msg = _message(fields["room"], fields)
                    last = self._delivered.get(msg.room)
                    if last is not None and msg.seq <= last:
                        continue  # already delivered (a re-read after a reconnect)
                    if last is not None and msg.seq > last + 1 and msg.room in hub.rooms and \
                            hub.rooms[msg.room].members:
                        self._fill_gap(msg.room, last, msg.seq)
                    self._delivered[msg.room] = msg.seq
                    pending.append(msg)
                elif kind == "ev":
                    event = event_from_json(fields["ev"])
                    if isinstance(event, TopicChanged):
                        hub.on_topic(event.room, event.nick, event.text)
                    self._follow(fields["room"], event)
                    hub.on_room_event(fields["room"], event)
                elif kind == "priv":
                    ev = event_from_json(json.dumps({**json.loads(fields["ev"]), "type": "PRIV"}))
                    if isinstance(ev, Private):
                        hub.deliver_private(ev)
            except (KeyError, ValueError, Exception) as exc:  # one bad entry must not stop the node
                # the entry's text came from the network: escaped, so a log line is only a log line
                print(f"socklab chat: skipped a broker entry ({escape_peer_text(exc)})", flush=True)
        if pending:
            hub.on_messages(pending)

    def _fill_gap(self, room: str, last: int, upto: int) -> None:
        """Sequence numbers jumped: fetch the missing ones from the room's stream, deliver in order."""
        hub = self.hub
        assert hub is not None

        def job(r: Any) -> Callable[[], None]:
            try:
                rows = r.xrange(_room_key(room), min=f"{last + 1}-0", max=f"{upto - 1}-1")
                missing = [_message(room, fields) for _, fields in rows]
            except redis.RedisError:
                missing = []

            def deliver() -> None:
                for m in missing:  # late, but complete; clients order by seq
                    hub.on_message(m)

            return deliver

        self._submit(job)
