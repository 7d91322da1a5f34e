"""``socklab chat connect``: a terminal chat client whose prompt survives incoming messages.

Why this exists: the naive client - ``print()`` incoming lines from a thread while ``input()``
waits - scribbles messages over the line being typed. This client draws the prompt with
prompt_toolkit and prints incoming messages *above* it (``patch_stdout``), so typing is never
interrupted; up/down browse what you typed, the terminal's scrollback keeps the conversation.

It is also a model of a well-behaved protocol client, on the same contract as the server
(:mod:`socklab.runtime.client`): an engine drives the connection on its own thread, whose
protocol turns server lines into events (:func:`~socklab.protocols.chat.parse_event`); it remembers the last sequence number seen in
each room and, when the connection drops (a server restart), reconnects with back-off and rejoins
with ``/join #room LAST_SEQ`` - so nothing is missed and nothing is shown twice. The same goes for
what a rejoin repeats (your own join, the topic, the member list): shown again only if it changed.

The server's greeting is written for ``nc`` users ("choose a nick with /nick NAME"); this client
signs in by itself with ``--nick``, so it says that instead, and tells how to pick another nick
(``/nick NEW`` at the prompt) when the server refuses one.
"""

from __future__ import annotations

import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from socklab.core.errors import RemoteProtocolError
from socklab.core.protocol import Protocol
from socklab.core.settings import ClientSettings
from socklab.core.sockets import parse_endpoint
from socklab.protocols.chat import (
    ACTION,
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
    RoomList,
    ServerEvent,
    Synced,
    TopicChanged,
    Welcome,
    parse_event,
)
from socklab.protocols.text import escape_peer_text
from socklab.runtime.client import BlockingClient, connect

__all__ = ["ChatClient", "format_event", "run_terminal_client"]


def _clock(ts: float | None = None) -> str:
    return time.strftime("%H:%M", time.localtime(ts if ts is not None else time.time()))


def format_event(ev: ServerEvent, me: str) -> str | None:
    """How the terminal shows one event (``None``: nothing to show).

    Whatever came from the server is escaped visibly (:func:`escape_peer_text`): the server already
    refuses such text, but a terminal must not depend on a server being right (defence in depth).
    """
    line = _format(ev, me)
    return None if line is None else escape_peer_text(line)


def _format(ev: ServerEvent, me: str) -> str | None:
    if isinstance(ev, Message):
        if ev.kind == ACTION:
            return f"[{_clock(ev.ts)}] {ev.room} * {ev.nick} {ev.text}"
        return f"[{_clock(ev.ts)}] {ev.room} <{ev.nick}> {ev.text}"
    if isinstance(ev, Private):
        arrow = f"-> {ev.target}" if ev.sender == me else f"<- {ev.sender}"
        return f"[{_clock(ev.ts)}] (private {arrow}) {ev.text}"
    if isinstance(ev, Joined):
        return f"-- {ev.nick} joined {ev.room}"
    if isinstance(ev, Parted):
        return f"-- {ev.nick} left {ev.room}" + (f" ({ev.reason})" if ev.reason else "")
    if isinstance(ev, NickChanged):
        return None if ev.old == "*" else f"-- {ev.old} is now {ev.new}"
    if isinstance(ev, TopicChanged):
        return f"-- {ev.room} topic: {ev.text} (set by {ev.nick})"
    if isinstance(ev, Members):
        return f"-- in {ev.room}: {', '.join(ev.nicks) or 'nobody'}"
    if isinstance(ev, RoomList):
        return "-- rooms: " + (", ".join(f"{r.name} ({r.members})" for r in ev.rooms) or "none")
    if isinstance(ev, ErrorReply):
        return f"!! {ev.code} {ev.text}"
    if isinstance(ev, (Notice, Welcome)):
        return f"-- {ev.text}"
    if isinstance(ev, Pong):
        return f"-- pong {ev.token}"
    if isinstance(ev, Bye):
        return f"-- server: {ev.text}"
    if isinstance(ev, Presence):  # a crowded room: the count, who came, went or was renamed
        return f"-- {ev.text}"
    return None


class ChatClient:
    """A reconnecting line-protocol client; ``show`` receives one text line per event to display.

    Args:
        address: ``HOST:PORT``.
        nick: the nick to take (and take again after a reconnect).
        show: prints one line (thread-safe with the prompt).
        room: a room to join besides the server's default.
    """

    def __init__(self, address: str, nick: str, show: Callable[[str], None], room: str | None = None, *,
                 tls: ssl.SSLContext | None = None, server_name: str | None = None,
                 settings: ClientSettings | None = None) -> None:
        self.endpoint = parse_endpoint(address)
        self.tls = tls
        self.server_name = server_name
        self.nick = nick
        self.show = show
        self.rooms: list[str] = [room] if room else []
        self.current: str | None = room
        self.last_seq: dict[str, int] = {}
        self.transport: Any = None  # the live connection's, or None between connections
        self.closed = threading.Event()
        self.quitting = False
        self.signed_in = False  # the server accepted a nick on this connection
        self.failed_attempts = 0  # reconnections tried and failed in the current outage
        self._nick_pending: str | None = None  # a /nick sent and not answered yet
        self._welcomed = False
        self._rejoining: set[str] = set()  # rooms rejoined after a reconnect: their JOIN is not news
        self._topics: dict[str, str] = {}  # what was shown, per room, to show a repeat only if it changed
        self._members: dict[str, frozenset[str]] = {}
        self._counted: dict[str, set[str]] = {}  # PRESENCE sentences with nobody coming or going, shown
        self._show_who: set[str] = set()  # asked for by the user (/who, /join): shown even if unchanged
        self._show_topic: set[str] = set()
        self._lock = threading.Lock()
        self._delay = 0.25  # the next reconnection's wait (doubles to 5 s)
        self._said_still = False
        self._rejoin_due = False
        self._client: BlockingClient | None = None
        # settings: the command line's (--pin, --source...); TLS is ``tls`` when given, else theirs
        base = settings if settings is not None else ClientSettings(server_name=server_name)
        self._settings = base.replace(connect_timeout=5.0)

    def start(self) -> None:
        """Connect now (errors raise: ConnectionRefused, TlsError...) and start reading."""
        self._client = BlockingClient(self._settings)
        try:
            self._client.connect(self.endpoint, lambda: _ChatSide(self), ssl_context=self.tls)
        except BaseException:
            self._client.close()
            raise
        self._greet()

    # ---- the engine's side: one connection, then reconnections with back-off ---------------------
    def _connected(self, transport: Any) -> None:
        with self._lock:
            self.transport = transport
        if self._rejoin_due:  # a reconnection (the first connection greets from start())
            self._rejoin_due = False
            self._delay, self.failed_attempts, self._said_still = 0.25, 0, False
            self.signed_in = False
            self._rejoining = set(self.rooms)
            self.show(f"-- reconnected to {self.endpoint}; catching up")
            self._greet()

    def _lost(self) -> None:
        with self._lock:
            self.transport = None
        self._outage_step()

    def _outage_step(self) -> None:
        """After a lost connection or a failed attempt: say so (once per outage) and try again later."""
        if self.quitting or self.closed.is_set() or self._client is None:
            self.closed.set()
            return
        self._rejoin_due = True
        if self.failed_attempts == 0:  # once per outage, not once per attempt
            self.show(f"-- disconnected; reconnecting in {self._delay:.1f} s")
        elif self._delay >= 5.0 and not self._said_still:
            self._said_still = True
            self.show("-- still reconnecting, every 5 s (Ctrl-D to give up)")
        self._client.engine.call_later(self._delay, self._reconnect)

    def _reconnect(self) -> None:
        if self.closed.is_set() or self._client is None:
            return
        connect(self.endpoint, lambda: _ChatSide(self), self._settings, engine=self._client.engine,
                ssl_context=self.tls, on_error=self._attempt_failed)

    def _attempt_failed(self, exc: BaseException) -> None:
        self.failed_attempts += 1
        self._delay = min(5.0, self._delay * 2)
        self._outage_step()

    @property
    def prompt(self) -> str:
        """The prompt: current room and nick, or that no nick is accepted yet."""
        if not self.signed_in:
            return f"[{self.current or '-'}] (not signed in as {self.nick})> "
        return f"[{self.current or '-'}] {self.nick}> "

    def _greet(self) -> None:
        self._nick_pending = self.nick
        self.send(f"/nick {self.nick}")
        for room in self.rooms:
            since = self.last_seq.get(room)
            self.send(f"/join {room}" + (f" {since}" if since is not None else ""))

    def submit(self, line: str) -> None:
        """A line the user typed: noted (what to show of the answer), then sent."""
        words = line.split()
        verb = words[0].lower() if words else ""
        arg = words[1].lower() if len(words) > 1 else None
        if verb == "/nick" and arg:
            self._nick_pending = words[1]
        elif verb == "/who":
            self._show_who.add(arg or self.current or "")
        elif verb == "/topic" and arg is None:
            self._show_topic.add(self.current or "")
        elif verb == "/join" and arg:
            self._show_who.add(arg)
            self._show_topic.add(arg)
        self.send(line)

    def send(self, line: str) -> None:
        """Queue one line for the engine (which owns the connection)."""
        with self._lock:
            transport = self.transport
        if transport is None or self._client is None:
            self.show("!! not connected (reconnecting); try again in a moment")
            return
        # bound to this connection: a line for a dead connection is not replayed on the next
        self._client.engine.call_soon_threadsafe(lambda: transport.write(line.encode() + b"\n"))

    def _lines(self, raw_lines: list[bytes]) -> None:
        for raw in raw_lines:
            try:
                ev = parse_event(raw.decode("utf-8", "replace").rstrip("\r"))
            except RemoteProtocolError:
                self.show(escape_peer_text(raw.decode("utf-8", "replace").rstrip("\r")))
                continue
            self._on_event(ev)

    def _on_event(self, ev: ServerEvent) -> None:
        if isinstance(ev, Message):
            last = self.last_seq.get(ev.room, 0)
            if ev.seq <= last:
                return  # seen before the reconnect
            self.last_seq[ev.room] = ev.seq
        elif isinstance(ev, Synced):
            self.last_seq.setdefault(ev.room, ev.seq)
        elif isinstance(ev, NickChanged) and ev.old in ("*", self.nick):
            self.nick = ev.new
            self.signed_in = True
            self._nick_pending = None
        elif isinstance(ev, Joined) and ev.nick == self.nick:
            if ev.room not in self.rooms:
                self.rooms.append(ev.room)
            self.current = ev.room
            if ev.room in self._rejoining:
                self._rejoining.discard(ev.room)
                return  # rejoined after a reconnect: not news
        elif isinstance(ev, (Welcome, ErrorReply, TopicChanged, Members, Presence)):
            line = self._reply(ev)
            if line is not None:
                self.show(escape_peer_text(line))
            return
        elif isinstance(ev, Parted) and ev.nick == self.nick and ev.room in self.rooms:
            self.rooms.remove(ev.room)
            self.current = self.rooms[-1] if self.rooms else None
        elif isinstance(ev, Bye) and ev.text.startswith("bye"):
            self.quitting = True
        text = format_event(ev, self.nick)
        if text is not None:
            self.show(text)

    def _reply(self, ev: ServerEvent) -> str | None:
        """The line for an event that a reconnect repeats, or that this client words its own way."""
        if isinstance(ev, Welcome):
            if self._welcomed:
                return None  # "reconnected" was said already
            self._welcomed = True
            # The server's own words, less its advice for nc users (which this client follows by itself).
            said = "; ".join(c for c in ev.text.split("; ") if "/nick" not in c and "/help" not in c).strip()
            return (f"-- {said + ' ' if said else ''}connected to {ev.server}; signing in as {self.nick}. /help lists "
                    "the commands; /nick NEW changes your nick (start with --nick NEW to choose it); /quit leaves")
        if isinstance(ev, ErrorReply):
            refused, self._nick_pending = self._nick_pending, None
            if refused is not None and ev.code in (400, 409, 422):
                if self.signed_in:
                    return f"!! {ev.code} {ev.text} - you are still {self.nick}"
                return (f"!! {ev.code} {ev.text} - not signed in: type /nick OTHER to choose another nick "
                        f"(or start with --nick OTHER)")
            if ev.code == 401:
                return (f"!! 401 not signed in (the nick {self.nick} was refused): type /nick OTHER to choose "
                        "a nick, then send again")
            return _format(ev, self.nick)
        if isinstance(ev, TopicChanged):
            if ev.room in self._show_topic:
                self._show_topic.discard(ev.room)
            elif self._topics.get(ev.room) == ev.text:
                return None  # the same topic, repeated by a rejoin
            self._topics[ev.room] = ev.text
            return _format(ev, self.nick)
        if isinstance(ev, Members):
            return self._members_line(ev)
        if isinstance(ev, Presence):
            # The count alone (0 joined, 0 left) comes with every join, so a rejoin repeats it: shown
            # again only if it says something new. A 0/0 line can also tell renames: a new sentence.
            if ev.joined == 0 and ev.left == 0:
                seen = self._counted.setdefault(ev.room, set())
                if ev.text in seen:
                    return None
                if len(seen) >= 32:
                    seen.clear()
                seen.add(ev.text)
            return _format(ev, self.nick)
        return _format(ev, self.nick)

    def _members_line(self, ev: Members) -> str | None:
        nicks = frozenset(ev.nicks)
        before = self._members.get(ev.room)
        self._members[ev.room] = nicks
        if ev.room in self._show_who or before is None:
            self._show_who.discard(ev.room)
            return _format(ev, self.nick)
        if nicks == before:
            return None  # the same members, repeated by a rejoin
        came, went = sorted(nicks - before), sorted(before - nicks)
        change = "; ".join(part for part in (f"came: {', '.join(came)}" if came else "",
                                               f"gone: {', '.join(went)}" if went else "") if part)
        return f"-- in {ev.room} now: {', '.join(ev.nicks) or 'nobody'} ({change})"

    def close(self) -> None:
        self.quitting = True
        self.closed.set()
        client, self._client = self._client, None
        if client is not None:
            with self._lock:
                transport, self.transport = self.transport, None
            if transport is not None:
                client.engine.call_soon_threadsafe(transport.close)
            client.close()


class _ChatSide(Protocol):
    """One connection to the chat server, on the client's engine: lines in, events out."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client
        self.buf = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.client._connected(transport)

    def data_received(self, data: bytes) -> None:
        *lines, self.buf = (self.buf + data).split(b"\n")
        self.client._lines(lines)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.client._lost()


def run_terminal_client(address: str, nick: str, *, room: str | None = None, plain: bool = False,
                        tls: ssl.SSLContext | None = None, server_name: str | None = None,
                        settings: ClientSettings | None = None) -> None:
    """The ``socklab chat connect`` command: prompt until /quit, EOF or Ctrl-D."""
    if plain or not sys.stdin.isatty():
        _run_plain(ChatClient(address, nick, _locked_print(), room, tls=tls, server_name=server_name,
                              settings=settings))
        return
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import InMemoryHistory
    from prompt_toolkit.patch_stdout import patch_stdout

    session: PromptSession[str] = PromptSession(history=InMemoryHistory())

    def show(line: str) -> None:
        print(escape_peer_text(line), flush=True)  # patch_stdout draws it above the prompt

    client = ChatClient(address, nick, show, room, tls=tls, server_name=server_name, settings=settings)
    with patch_stdout(raw=True):
        client.start()
        try:
            while not client.closed.is_set():
                try:
                    line = session.prompt(lambda: client.prompt)
                except EOFError:
                    client.send("/quit")
                    break
                except KeyboardInterrupt:
                    continue
                if not line.strip():
                    continue
                client.submit(line)
                if line.strip().split(" ")[0].lower() in ("/quit", "/exit", "/bye"):
                    client.quitting = True
                    client.closed.wait(2)
                    break
        finally:
            client.close()


def _locked_print() -> Callable[[str], None]:
    lock = threading.Lock()

    def show(line: str) -> None:
        with lock:
            print(escape_peer_text(line), flush=True)

    return show


def _run_plain(client: ChatClient) -> None:
    client.start()
    try:
        for line in sys.stdin:
            if client.closed.is_set():
                break
            if line.strip():
                client.submit(line.rstrip("\r\n"))
        else:
            client.send("/quit")
            client.quitting = True
        client.closed.wait(2)
    finally:
        client.close()
