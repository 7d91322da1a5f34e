"""The chat server's settings: every limit named once, with its default and its help text.

Why this exists: the CLI options of ``socklab chat serve``, the library API and the docs all come
from this one dataclass (see :mod:`socklab.core.settings`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from socklab.core.errors import UsageError
from socklab.core.settings import ServerSettings, setting

__all__ = ["ChatSettings", "default_store_path"]


def default_store_path() -> str:
    """``$XDG_DATA_HOME/socklab/chat.sqlite3`` (``~/.local/share/socklab/chat.sqlite3``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "socklab" / "chat.sqlite3")


@dataclass
class ChatSettings(ServerSettings):
    """What ``socklab chat serve`` accepts (on top of every server's settings)."""

    idle_timeout: float = setting(3600.0, "Close a connection silent for this many seconds (0 = never); chat "
                                          "users idle for long, browsers answer pings.")
    overflow_message: bytes = setting(b"BYE :server full (max_connections reached); try again later\r\n",
                                      "Sent to a connection refused for max_connections (a protocol line).",
                                      cli="")
    tcp_port: int = setting(7070, "Port of the line protocol (nc/telnet/programs); 0 lets the kernel choose.")
    http_port: int = setting(7080, "Port of the web page and its WebSocket endpoint; 0 lets the kernel "
                                   "choose, -1 turns the web side off.")
    store: str | None = setting(None, "SQLite file keeping the rooms' history (default: "
                                      "~/.local/share/socklab/chat.sqlite3; ':memory:' keeps nothing).",
                                metavar="PATH", output=(":memory:",))
    store_sync: str = setting("full", "SQLite synchronous mode: 'full' survives power loss, 'normal' "
                                      "survives a crashed process.", choices=("full", "normal"))
    broker: str | None = setting(None, "Share rooms, nicks and history with other chat nodes through "
                                       "Redis (redis://HOST:PORT or unix:///path).", metavar="URL")
    node: str | None = setting(None, "This node's name in the broker (default: hostname-pid).")
    presence_ttl: float = setting(30.0, "With --broker: seconds a node's nicks and presence outlive it if it "
                                        "dies (renewed every third of it).")
    register_timeout: float = setting(20.0, "Seconds a new connection has to choose a nick (/nick NAME); then "
                                            "it is closed with the reason, so silent connections cannot hold "
                                            "the slots (0 = no deadline).")
    max_per_address: int = setting(32, "Chat connections (line and WebSocket) one client address may hold at "
                                       "once; the next is refused with the reason (0 = no cap). Behind a proxy "
                                       "or NAT, raise it.")
    web_reserve: int = setting(64, "Connections the web port may use on top of --max-connections, so the page "
                                   "still loads (and says 'server full') when every chat slot is taken.")
    command_rate: float = setting(20.0, "Commands other than messages (/join, /who, /rooms...) a client may send "
                                        "per second; the excess gets one ERR 429 and is dropped.")
    command_burst: int = setting(40, "Commands other than messages a client may send at once.")
    rooms_listed: int = setting(100, "Rooms /rooms shows at most (those with the most members here), followed "
                                     "by how many more there are.")
    presence_interval: float = setting(0.5, "Seconds joins and parts are gathered before they are sent: one write "
                                            "per member per interval, not one per join (0 = at once).")
    presence_names: int = setting(100, "Rooms with more members announce joins and parts as one PRESENCE line per "
                                       "interval (the count and a few names) instead of a JOIN/PART line per "
                                       "nick, and a joiner gets the count instead of the full list; /who lists "
                                       "them.")
    allow_origin: tuple[str, ...] = setting((), "A web page origin (http://host:port) allowed to open the chat's "
                                                "WebSocket besides the chat's own page; '*' allows all (others get "
                                                "403). Repeatable.", metavar="ORIGIN")
    allow_host: tuple[str, ...] = setting((), "A Host name (NAME or NAME:PORT) the web port answers on a loopback "
                                              "connection besides localhost, 127.x and [::1] (against DNS "
                                              "rebinding; others get 421). Repeatable.", metavar="NAME")
    max_line: int = setting(4096, "Longest line accepted, bytes; a longer one is an error and a close.")
    max_message: int = setting(2000, "Longest message text, bytes (UTF-8).")
    rate: float = setting(10.0, "Messages a client may send per second (token bucket refill rate).")
    burst: int = setting(20, "Messages a client may send at once (token bucket size).")
    max_queue: int = setting(512 * 1024, "Outbound bytes queued for a client that does not read, on top "
                                         "of the transport buffer (max_buffer); past both the client is "
                                         "disconnected.")
    max_rooms: int = setting(20, "Rooms one client may be in at once.")
    history_on_join: int = setting(20, "Messages replayed when joining a room without a sequence number.")
    max_catchup: int = setting(1000, "Most messages replayed to a reconnecting client.")
    max_ws_message: int = setting(16 * 1024, "Largest WebSocket message accepted, bytes (bigger: close 1009).")
    default_room: str = setting("#lobby", "Room every new connection joins once it has a nick.")
    web: str | None = setting(None, "Serve the web page from this directory instead of the built-in one.",
                              metavar="DIR", hidden=True)

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.tcp_port <= 65535 or not -1 <= self.http_port <= 65535:
            raise UsageError("ports must be in 0..65535 (-1 turns the web side off)")
        if self.max_line < 64 or self.max_message < 1 or self.max_message > self.max_line:
            raise UsageError("need max_line >= 64 and 1 <= max_message <= max_line")
        if self.rate <= 0 or self.burst < 1:
            raise UsageError("rate must be > 0 and burst >= 1")
        if self.command_rate <= 0 or self.command_burst < 1:
            raise UsageError(f"--command-rate must be > 0 and --command-burst >= 1 (got {self.command_rate:g}, {self.command_burst})")
        if self.register_timeout < 0:
            raise UsageError(f"--register-timeout cannot be negative (got {self.register_timeout:g}; 0 = no deadline)")
        if self.max_per_address < 0 or self.web_reserve < 0:
            raise UsageError("--max-per-address and --web-reserve cannot be negative (0 = no cap, no reserve)")
        if self.presence_interval < 0 or self.presence_interval > 60:
            raise UsageError(f"--presence-interval must be in 0..60 seconds (got {self.presence_interval:g})")
        if self.presence_names < 0:
            raise UsageError(f"--presence-names cannot be negative (got {self.presence_names})")
        if self.rooms_listed < 1:
            raise UsageError(f"--rooms-listed must be at least 1 (got {self.rooms_listed})")
        if self.max_queue < 1024 or self.max_rooms < 1 or self.history_on_join < 0 or self.max_catchup < 0:
            raise UsageError("max_queue >= 1024, max_rooms >= 1, history counts >= 0")
        if self.broker and not self.broker.startswith(("redis://", "rediss://", "unix://")):
            raise UsageError("--broker must be a redis://, rediss:// or unix:// URL")
        if self.broker:
            from socklab.core.extras import require

            require("redis", "--broker (multi-node chat)")
        from socklab.protocols.chat import check_room

        try:
            check_room(self.default_room)
        except Exception as exc:
            raise UsageError(f"--default-room: {exc}") from None
