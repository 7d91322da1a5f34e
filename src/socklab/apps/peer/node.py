"""A peer node: one engine that both listens and dials, and the mesh state it keeps.

Why this exists: this is the peer-to-peer pattern in one place. A node is a server (it accepts
links on ``--listen``) and a client (it dials ``--join`` addresses, members its neighbours tell it
about, and nodes heard on the discovery multicast group), all on one socklab engine thread:

- **links**: one per neighbour, keyed by node id. When two nodes dial each other at once, both
  keep the connection dialled by the node with the smaller id (both sides decide the same way).
- **flooding**: a message typed here gets a unique id and is sent to every neighbour; a node
  that receives it for the first time (:class:`~socklab.protocols.gossip.SeenCache`) delivers it,
  remembers it in the history ring and forwards it to its other neighbours with the hop limit
  decremented and its own name appended to the path. Later copies are counted as duplicates.
- **liveness**: every link is PINGed each ``ping_interval``; the PONG gives the RTT; a link
  silent for ``link_timeout`` is dropped - which is how a cut cable is noticed long before TCP
  would give up - and a lost neighbour is redialled with exponential backoff and jitter.
- **catch-up**: each new link asks the other side for its recent messages; they arrive as
  ordinary flooded frames, so duplicates vanish and anything new spreads on.
- **files**: ``share`` floods an OFFER (name, size, sha256, holder address); ``fetch`` asks the
  holder directly and receives the file with socklab's native transfer, then checks it against
  the offer (see :mod:`socklab.apps.peer.links`).
- **control**: a Unix socket answers ``status`` and accepts ``say``/``share``/``fetch``
  (see :mod:`socklab.apps.peer.control`).

Thread model: everything that touches the state runs on the engine thread. Other threads (the
prompt reader) go through :meth:`PeerNode.submit`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import ssl
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TextIO

from socklab.apps.peer import files
from socklab.apps.peer.links import FetchResult, PeerLink
from socklab.apps.peer.settings import WILDCARD_HOSTS, PeerSettings, prepare_control_dir
from socklab.core.errors import RemoteProtocolError, UsageError
from socklab.core.sockets import (
    client_ssl_context,
    parse_endpoint,
    server_ssl_context,
)
from socklab.core.trace import Tracer
from socklab.core.transport import TimerHandle
from socklab.protocols import gossip as g
from socklab.protocols.chat import check_text
from socklab.protocols.text import escape_peer_text
from socklab.runtime import Server

__all__ = ["PeerNode"]

@dataclass
class _Target:
    """An address this node dials: whether it must keep trying, and its redial state."""

    persistent: bool = False
    attempt: int = 0
    dialing: bool = False
    timer: TimerHandle | None = None
    is_self: bool = False
    expect_id: str | None = None  # a rumoured member: the id its HELLO must carry, or the dial is dropped


_MAX_KNOWN = 1024  # members remembered from rumours (a MEMBERS frame holds at most as many)


def _dialable(address: str) -> bool:
    """Whether a rumoured ``host:port`` is a unicast IP literal worth a dial (no name, 0.0.0.0, multicast)."""
    try:
        ep = parse_endpoint(address)
        ip = ipaddress.ip_address(ep.host)
    except (UsageError, ValueError):
        return False
    return 0 < ep.port < 65536 and not (ip.is_unspecified or ip.is_multicast)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PeerNode:
    """One mesh node on one engine.

    Args:
        settings: the node's settings (``host``/``port`` are where it listens; ``join``: ``HOST:PORT``
            addresses to dial at start and redial for ever; ``discover``: announce and listen on the
            multicast group, see :mod:`socklab.apps.peer.discovery`).
        tracer: socket trace sink, or ``None``.
        out: where delivered messages and link events are printed (stdout by default).

    Raises:
        UsageError, AddressInUse...: from binding the listener or the control socket.
    """

    def __init__(self, settings: PeerSettings, *, tracer: Tracer | None = None, out: TextIO | None = None) -> None:
        self.settings = settings
        self.id = uuid.uuid4().hex[:16]
        self.name = settings.name
        self._out = out
        self.server = Server(settings, tracer=tracer, label="peer")
        self.engine = self.server.engine
        # A TLS mesh is mutual: a node shows its certificate when it dials as when it is dialled,
        # and a link stands only if the mesh's CA signed the other side's (names are not checked:
        # membership is the CA's signature). With --tls-self-signed, links are TLS with each node's own
        # certificate, which no other node can check: encrypted, not authenticated (ncat --ssl's
        # default). Without either, links are plain TCP.
        self._tls_server: ssl.SSLContext | None = None
        self.tls_client: ssl.SSLContext | None = None
        if settings.tls_cert and settings.cafile:
            self._tls_server = server_ssl_context(settings.tls_cert, settings.tls_key, client_ca=settings.cafile)
            self.tls_client = client_ssl_context(settings.cafile, cert=settings.tls_cert, key=settings.tls_key,
                                                  check_hostname=False)
        elif settings.tls_self_signed:
            self._tls_server = self.server.tls_context()  # made now; its SHA-256 is server.tls_fingerprint
            self.tls_client = client_ssl_context(insecure=True)
        addr = self.server.listen(lambda: PeerLink(self), ssl_context=self._tls_server)
        self.listen = _hostport(str(addr[0]), int(addr[1]))
        self.control_path = settings.control_path
        prepare_control_dir(self.control_path)
        from socklab.apps.peer.control import ControlProtocol

        self.server.listen(lambda: ControlProtocol(self), unix=self.control_path, tls=False)  # local, in a 0700 directory
        self.server.on_stop(self.remove_control_socket)
        self.links: dict[str, PeerLink] = {}  # node id -> the link to that neighbour
        self.pending: set[PeerLink] = set()  # connections whose HELLO has not arrived
        self.known: dict[str, g.Member] = {}
        self.targets: dict[str, _Target] = {}
        self.seen = g.SeenCache(settings.seen_cache, settings.seen_max_age)
        self.history = g.History(settings.history)
        self.delivered: deque[dict[str, Any]] = deque(maxlen=max(1, settings.history))
        self.counters = {"unique": 0, "duplicates": 0, "sent": 0, "forwarded": 0, "frames_in": 0}
        self.shares: dict[str, tuple[str, g.Offer]] = {}  # sha256 -> (local path, offer)
        self.offers: dict[str, g.Offer] = {}  # sha256 -> latest offer seen
        self.fetches: list[dict[str, Any]] = []
        self.stopping = False
        self._ping_seq = 0
        self._rng = random.Random()
        self.discovery: Any = None
        if settings.discover:
            from socklab.apps.peer.discovery import start_discovery

            self.discovery = start_discovery(self)
        for address in settings.join:
            self.targets[self._norm(address)] = _Target(persistent=True)

    # ---- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Run the engine, then dial ``--join`` targets and start the timers."""
        self.server.start()
        self.server.call_soon_threadsafe(self._boot)

    def _boot(self) -> None:
        for address in list(self.targets):
            self._dial(address)
        self.engine.call_later(self.settings.ping_interval, self._tick)
        if self.discovery is not None:
            self.discovery.tick()

    def submit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the engine thread (from any thread)."""
        self.server.call_soon_threadsafe(callback)

    def remove_control_socket(self) -> None:
        """Remove the control socket's file (idempotent; runs when the server stops)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control_path)

    @property
    def out(self) -> TextIO:
        """Where lines go: the ``out`` given, else whatever ``sys.stdout`` is now (a prompt may patch it)."""
        return self._out if self._out is not None else sys.stdout

    def log(self, text: str) -> None:
        """One line of node news (links up/down, files) on the output; peer text in it is shown escaped."""
        print(f"*** {escape_peer_text(text)}", file=self.out, flush=True)

    def _norm(self, address: str) -> str:
        ep = parse_endpoint(address)
        return _hostport(ep.host, ep.port)

    def hello(self) -> g.Hello:
        return g.Hello(self.id, self.name, self.listen)

    def me(self) -> g.Member:
        return g.Member(self.id, self.name, self.listen)

    # ---- dialling -------------------------------------------------------------------------------------
    def consider(self, member: g.Member, *, persistent: bool = False) -> None:
        """A node heard of (MEMBERS, discovery): remember it and dial it if we have room."""
        if member.id == self.id or self.stopping:
            return
        # A rumour (a neighbour's MEMBERS, a discovery announce) is not a fact. It is remembered
        # (``known`` holds at most _MAX_KNOWN members) but its address is dialled only while this
        # node has room for links (rumoured dials in flight count against that room, so a list of
        # 1,024 addresses is not 1,024 dials), only if it is a unicast IP:port, and the link stands
        # only if the HELLO there carries the id the rumour claimed; otherwise the member is forgotten.
        if member.id not in self.known and len(self.known) >= _MAX_KNOWN and not persistent:
            return
        if not persistent and not _dialable(member.listen):
            return
        self.known[member.id] = member
        if member.id in self.links:
            return
        address = member.listen
        target = self.targets.get(address)
        if target is None:
            rumours_in_flight = sum(1 for t in self.targets.values() if t.expect_id is not None and t.dialing)
            if not persistent and len(self.links) + rumours_in_flight >= self.settings.max_neighbours:
                return
            target = self.targets[address] = _Target(persistent=persistent,
                                                     expect_id=None if persistent else member.id)
        if not target.dialing and target.timer is None and not target.is_self:
            self._dial(address)

    def _connected_to(self, address: str) -> bool:
        return any(link.peer is not None and link.peer.listen == address for link in self.links.values())

    def _dial(self, address: str) -> None:
        target = self.targets.get(address)
        if target is None or target.is_self or self.stopping:
            return
        target.timer = None
        if address == self.listen or self._connected_to(address):
            target.attempt = 0
            return
        target.dialing = True
        try:
            endpoint = parse_endpoint(address)
        except UsageError as exc:
            self.log(f"cannot dial {address}: {exc}")
            del self.targets[address]
            return
        self.engine.connect_stream(endpoint, lambda: PeerLink(self, dialed=address), ssl_context=self.tls_client,
                                   timeout=self.settings.connect_timeout,
                                   on_error=lambda exc: self._dial_failed(address, exc))

    def _dial_failed(self, address: str, exc: BaseException) -> None:
        target = self.targets.get(address)
        if target is None:
            return
        target.dialing = False
        self._schedule_redial(address, f"dial failed: {exc}")

    def _schedule_redial(self, address: str, why: str) -> None:
        target = self.targets.get(address)
        if target is None or target.is_self or self.stopping or target.timer is not None:
            return
        if not target.persistent and target.attempt >= 4:
            # a rumoured address that never answered: forget it, and stop passing it on
            del self.targets[address]
            for nid, member in list(self.known.items()):
                if member.listen == address and nid not in self.links:
                    del self.known[nid]
            return
        delay = g.backoff_delay(target.attempt, base=self.settings.redial_base, cap=self.settings.redial_max,
                                jitter=self._rng.random())
        target.attempt += 1
        target.timer = self.engine.call_later(delay, lambda: self._dial(address))
        if target.attempt & (target.attempt - 1) == 0:  # attempts 1, 2, 4, 8...: say so, not every time
            self.log(f"redialling {address} in {delay:.1f} s ({why})")

    # ---- links ------------------------------------------------------------------------------------------
    def link_opened(self, link: PeerLink) -> None:
        self.pending.add(link)

    def _register(self, link: PeerLink, hello: g.Hello) -> bool:
        if hello.id == self.id:  # we dialled ourselves (an address of ours we did not know)
            if link.dialed is not None and link.dialed in self.targets:
                self.targets[link.dialed].is_self = True
                self.targets[link.dialed].dialing = False
            link.superseded = True
            link.close()
            return False
        listen = hello.listen
        host = listen.rsplit(":", 1)[0].strip("[]")
        if host in WILDCARD_HOSTS:  # it listens everywhere: reach it where it came from
            peer = link.transport.get_extra_info("peername")
            listen = _hostport(str(peer[0]), int(listen.rsplit(":", 1)[1]))
        member = g.Member(hello.id, hello.name, listen)
        rumoured = self.targets.get(link.dialed) if link.dialed is not None else None
        if rumoured is not None and rumoured.expect_id is not None and rumoured.expect_id != hello.id:
            # the rumour named one node and another answered: drop the link and forget the address
            self.log(f"dropping {escape_peer_text(link.dialed)}: it was announced as node {rumoured.expect_id} "
                     f"but answered as {hello.id}")
            del self.targets[str(link.dialed)]
            if self.known.get(rumoured.expect_id, None) is not None and \
                    self.known[rumoured.expect_id].listen == link.dialed:
                del self.known[rumoured.expect_id]
            link.superseded = True
            link.close()
            return False
        existing = self.links.get(hello.id)
        if existing is not None and existing is not link:
            low = min(self.id, hello.id)

            def preferred(candidate: PeerLink) -> bool:
                dialer = self.id if candidate.outbound else hello.id
                return dialer == low

            if preferred(existing) and not preferred(link):
                link.superseded = True
                link.close()
                return False
            existing.superseded = True
            existing.close()
        link.peer = member
        self.links[hello.id] = link
        self.known[hello.id] = member
        for address in {link.dialed, member.listen} - {None}:
            target = self.targets.get(str(address))
            if target is not None:
                target.attempt = 0
                target.dialing = False
        if existing is None:
            self.log(f"link up: {member.name} {member.listen} ({'out' if link.outbound else 'in'})")
        return True

    def link_lost(self, link: PeerLink, exc: BaseException | None) -> None:
        self.pending.discard(link)
        if link.dialed is not None and link.peer is None:
            target = self.targets.get(link.dialed)
            if target is not None:
                target.dialing = False
                self._schedule_redial(link.dialed, f"lost before HELLO: {exc or 'closed'}")
            return
        if link.peer is None or self.links.get(link.peer.id) is not link:
            return
        del self.links[link.peer.id]
        if link.superseded or self.stopping:
            return
        self.log(f"link down: {link.peer.name} {link.peer.listen} ({exc or 'closed'})")
        address = link.peer.listen
        target = self.targets.setdefault(address, _Target())
        target.persistent = True  # a lost neighbour is redialled until it answers again
        target.dialing = False
        self._schedule_redial(address, "neighbour lost")

    def on_event(self, link: PeerLink, event: g.Event) -> None:
        """A frame from ``link`` (see the frame list in :mod:`socklab.protocols.gossip`)."""
        self.counters["frames_in"] += 1
        if isinstance(event, g.Hello):
            first = link.peer is None
            if not first or not self._register(link, event):
                return
            self.pending.discard(link)
            if not link.outbound:
                link.send(self.hello())
            link.send(g.Members(tuple(self.known.values())))
            link.send(g.CatchUp(self.settings.catchup))
            self._tell_members(exclude=link)
            return
        if isinstance(event, g.Want):
            files.serve_want(self, link, event)
            return
        if isinstance(event, g.EndOfStream):
            link.close()
            return
        if link.peer is None:
            raise RemoteProtocolError(f"{type(event).__name__} before HELLO")
        if isinstance(event, g.Flooded):
            self.receive_flood(event, link)
        elif isinstance(event, g.Ping):
            link.send(g.Pong(event.seq, event.ts))
        elif isinstance(event, g.Pong):
            link.rtt = max(0.0, time.monotonic() - event.ts)
        elif isinstance(event, g.Members):
            for member in event.members:
                self.consider(member)
        elif isinstance(event, g.CatchUp):
            frames = self.history.recent(event.limit)
            for frame in frames:
                link.send(frame)
            link.send(g.CaughtUp(len(frames)))
        elif isinstance(event, g.CaughtUp):
            pass
        else:
            raise RemoteProtocolError(f"unexpected {type(event).__name__} on a link")

    def _tell_members(self, exclude: PeerLink) -> None:
        members = g.Members((*self.known.values(), self.me()))
        for link in list(self.links.values()):  # a failed send can remove a link while we walk them
            if link is not exclude:
                link.send(members)

    def _tick(self) -> None:
        if self.stopping:
            return
        now = time.monotonic()
        for link in list(self.links.values()) + list(self.pending):
            if now - link.last_heard > self.settings.link_timeout:
                self.log(f"link to {link.describe()} silent for {self.settings.link_timeout:g} s: dropping it")
                link.transport.abort()
                continue
            if link.peer is not None:
                self._ping_seq += 1
                link.send(g.Ping(self._ping_seq, now))
        for address, target in list(self.targets.items()):  # persistent targets not linked: dial
            if target.persistent and not target.dialing and target.timer is None and not target.is_self \
                    and not self._connected_to(address):
                self._schedule_redial(address, "not connected")
        self.engine.call_later(self.settings.ping_interval, self._tick)

    # ---- messages ---------------------------------------------------------------------------------------
    def say(self, text: str) -> str:
        """Flood one message from this node; returns its id.

        Raises:
            RemoteProtocolError: empty, control characters or too long (the chat's rules).
        """
        check_text(text, self.settings.max_text)
        frame = g.Msg(uuid.uuid4().hex, self.id, self.name, self.settings.hop_limit, (self.name,), text)
        self.originate(frame)
        return frame.mid

    def originate(self, frame: g.Flooded) -> None:
        self.seen.first_time(frame.mid, time.monotonic())
        self.history.add(frame)
        self._record(frame, frame.path)
        self.counters["sent"] += 1
        for link in list(self.links.values()):
            link.send(frame)

    def receive_flood(self, frame: g.Flooded, via: PeerLink | None) -> None:
        """A flooded frame arrived: deliver and forward it the first time, count it otherwise."""
        if not self.seen.first_time(frame.mid, time.monotonic()):
            self.counters["duplicates"] += 1
            return
        self.counters["unique"] += 1
        if frame.hops > self.settings.hop_limit:  # a peer may not buy more reach than this node grants
            frame = replace(frame, hops=self.settings.hop_limit)
        path = (*frame.path, self.name)
        # kept as this node would pass it on, so a catch-up answer shows the path through here
        self.history.add(replace(frame, hops=max(0, frame.hops - 1), path=path[-255:]))
        self._record(frame, path)
        if isinstance(frame, g.Msg):
            print(escape_peer_text(f"<{frame.sender}> {frame.text}   (via {' > '.join(path)})"), file=self.out,
                  flush=True)
        elif isinstance(frame, g.Offer):
            self.offers[frame.sha256] = frame
            self.log(f"{frame.sender} shares {frame.file} ({frame.size} bytes, sha256 {frame.sha256[:12]}...): "
                     f"/fetch {frame.file}")
        onward = g.forward(frame, self.name)
        if onward is None:
            return
        for link in list(self.links.values()):
            if link is not via:
                link.send(onward)
                self.counters["forwarded"] += 1

    def _record(self, frame: g.Flooded, path: tuple[str, ...]) -> None:
        entry: dict[str, Any] = {"mid": frame.mid, "from": frame.sender, "origin": frame.origin,
                                 "path": list(path), "hops_left": frame.hops, "at": time.time()}
        if isinstance(frame, g.Msg):
            entry["text"] = frame.text
        elif isinstance(frame, g.Offer):
            entry["offer"] = {"file": frame.file, "size": frame.size, "sha256": frame.sha256}
        self.delivered.append(entry)

    # ---- files (see socklab.apps.peer.files) -------------------------------------------------------------
    def share(self, path: str) -> g.Offer:
        """Offer a local file to the mesh (hashes it now; flood an OFFER). Raises UsageError."""
        return files.share(self, path)

    def find_offer(self, key: str) -> g.Offer:
        """The offer whose file name, or sha256 prefix, is ``key``. Raises UsageError."""
        return files.find_offer(self, key)

    def fetch(self, key: str, done: Callable[[FetchResult], None], dest_dir: str | None = None) -> None:
        """Fetch an offered file from its holder into ``dest_dir``; ``done`` gets the result."""
        files.fetch(self, key, done, dest_dir)

    # ---- status -------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The node's state as JSON-able data (what ``socklab peer status`` shows)."""
        now = time.time()
        neighbours = [{"id": nid, "name": link.peer.name, "listen": link.peer.listen,
                       "direction": "out" if link.outbound else "in",
                       "rtt_ms": None if link.rtt is None else round(link.rtt * 1000, 3),
                       "up_s": round(now - link.since, 1)}
                      for nid, link in sorted(self.links.items(), key=lambda kv: kv[1].peer.name
                                              if kv[1].peer else "") if link.peer is not None]
        return {
            "id": self.id, "name": self.name, "listen": self.listen, "engine": self.engine.name,
            "tls": self.tls_client is not None,
            "neighbours": neighbours,
            "known": sorted(({"id": m.id, "name": m.name, "listen": m.listen} for m in self.known.values()),
                            key=lambda m: m["name"]),
            "messages": dict(self.counters, seen_ids=len(self.seen), history=len(self.history)),
            "recent": list(self.delivered),
            "shares": [{"file": o.file, "size": o.size, "sha256": o.sha256, "path": p}
                       for p, o in self.shares.values()],
            "offers": [{"file": o.file, "size": o.size, "sha256": o.sha256, "from": o.sender, "holder": o.holder}
                       for o in self.offers.values()],
            "fetches": list(self.fetches),
            "redialling": sorted(a for a, t in self.targets.items() if t.timer is not None),
        }
