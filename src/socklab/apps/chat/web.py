"""The web side of a chat node: the page (static files) and the WebSocket adapter onto the hub.

Why this exists: browsers cannot open a raw TCP socket, so they reach the same rooms through a
WebSocket on the HTTP port (RFC 6455, served by :mod:`socklab.apps.http`). A browser sends the very
same command lines as an ``nc`` user (one command per text message) and receives each server event
as one JSON text message (``{"type": "MSG", "room": ..., "seq": ...}``); see docs/chat-protocol.md.

Limits: a WebSocket message over ``max_ws_message`` is closed with 1009 and invalid UTF-8 with 1007
by the HTTP layer before the hub sees anything. A browser that stops reading is a slow consumer like
any other: once the bytes waiting for it pass ``max_buffer + max_queue`` it is closed with code 4507
and the reason.
"""

from __future__ import annotations

import struct
import zlib
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from socklab.apps.chat.hub import ChatHub, Frame, Member
from socklab.apps.http.api import HttpProtocol, HttpSettings, Request, Response, Router, WebSocket
from socklab.core.errors import RemoteProtocolError
from socklab.core.trace import format_addr
from socklab.protocols.chat import Bye, parse_command

if TYPE_CHECKING:
    from socklab.apps.chat.server import ChatServer

__all__ = ["STATIC_DIR", "WebMember", "favicon_ico", "listen_web"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
WEB_EXTRA_PER_ADDRESS = 16  # HTTP connections an address may hold beyond its chat cap (page loads)
CLOSE_SLOW = 4507  # application close code (RFC 6455 section 7.4.2: 4000-4999 are ours)


class WebMember(Member):
    """One browser (or any WebSocket client) in the hub."""

    kind = "ws"

    def __init__(self, hub: ChatHub, ws: WebSocket) -> None:
        client = ws.client
        super().__init__(self._describe(client), str(client[0]) if isinstance(client, tuple) else None)
        self.hub = hub
        self.ws = ws
        self.limit = hub.settings.max_buffer + hub.settings.max_queue
        self.dropped_slow = False
        ws.on_message = self.on_message
        ws.on_close = self.on_close

    @staticmethod
    def _describe(client: Any) -> str:
        return format_addr(client) if isinstance(client, tuple) else str(client)  # [::1]:5000 for IPv6

    def on_message(self, message: str | bytes) -> None:
        if self.gone:
            return
        hub = self.hub
        if isinstance(message, bytes):
            hub.invalid(self, 400, "send commands as text messages")
            return
        if len(message.encode()) > hub.settings.max_line:
            hub.invalid(self, 413, f"message longer than {hub.settings.max_line} bytes")
            return
        line = message.rstrip("\r\n")
        if not line.strip():
            return
        if "\n" in line:
            hub.invalid(self, 422, "one command per WebSocket message (no newlines)")
            return
        try:
            cmd = parse_command(line)
        except RemoteProtocolError as exc:
            hub.invalid(self, exc.hint or 400, str(exc))
            return
        hub.handle(self, cmd)

    def on_close(self, code: int, reason: str) -> None:
        self.hub.detach(self, "connection closed")

    def send_frame(self, frame: Frame) -> None:
        ws = self.ws
        if ws.closed:
            return
        if ws.buffered_amount > self.limit:
            self.dropped_slow = True
            ws.close(CLOSE_SLOW, "outbound queue full: not reading; disconnected")
            self.hub.detach(self, "too slow (outbound queue full)")
            return
        ws.send_framed(frame.ws)  # framed once for every browser in the room

    def send_frames(self, frames: list[Frame]) -> None:
        ws = self.ws
        if ws.closed:
            return
        if ws.buffered_amount > self.limit:
            self.send_frame(frames[0])  # the same check, the same close
            return
        ws.send_framed(b"".join([f.ws for f in frames]))  # one write for the batch

    def close_with(self, bye: Bye) -> None:
        if not self.ws.closed:
            self.ws.send(Frame(bye).json)
            # 1001 going away, 1013 try again later (refused: full, too many from this address)
            code = 1001 if "shutting down" in bye.text else 1013 if "try again" in bye.text else 1000
            self.ws.close(code, bye.text[:120])


# The page's icon, a speech bubble with three dots (the page also carries it inline as SVG); browsers
# and crawlers still ask for /favicon.ico, which answered 404 before.
_ICON = (
    "................",
    "................",
    "..############..",
    ".##############.",
    ".##############.",
    ".##############.",
    ".###oo#oo#oo###.",
    ".###oo#oo#oo###.",
    ".##############.",
    ".##############.",
    "..############..",
    "...###..........",
    "...##...........",
    "...#............",
    "................",
    "................",
)
_COLOURS = {".": (0, 0, 0, 0), "#": (0x1D, 0x35, 0x57, 255), "o": (0xA8, 0xDA, 0xDC, 255)}


@cache
def favicon_ico() -> bytes:
    """A 16x16 ICO file holding one PNG image (ICO allows PNG entries since Windows Vista)."""
    raw = b"".join(b"\0" + b"".join(bytes(_COLOURS[c]) for c in row) for row in _ICON)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack("!IIBBBBB", 16, 16, 8, 6, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    header = struct.pack("<HHH", 0, 1, 1)  # reserved, type 1 (icon), one image
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


def make_router(node: ChatServer) -> Router:
    """The chat's routes: ``/ws`` (WebSocket), ``/healthz``, ``/favicon.ico`` and the page's files at ``/``."""
    router = Router()
    hub = node.hub

    def on_ws(ws: WebSocket) -> None:
        if hub.shutting_down:
            ws.close(1001, "server shutting down")
            return
        hub.attach(WebMember(hub, ws))

    def health(req: Request) -> Response:
        return Response.json(200, {"members": len(hub.members), "rooms": len(hub.rooms),
                                   "delivered": hub.delivered})

    def favicon(req: Request) -> Response:
        return Response(200, [("content-type", "image/x-icon"), ("cache-control", "max-age=86400")], favicon_ico())

    router.websocket("/ws")(on_ws)
    router.route("GET", "/healthz")(health)
    router.route("GET", "/favicon.ico")(favicon)
    router.static("/", node.settings.web or STATIC_DIR, listing=False)
    return router


def listen_web(node: ChatServer) -> Any:
    """Bind the node's HTTP port on its server; returns the bound address."""
    s = node.settings
    # The HTTP layer checks Host (DNS rebinding) and a WebSocket's Origin with the chat's allow-lists,
    # and caps HTTP connections per address: the chat's cap plus some for loading the page beside them.
    per_ip = s.max_per_address + WEB_EXTRA_PER_ADDRESS if s.max_per_address else 0
    hs = HttpSettings(host=s.host, engine=s.engine, max_buffer=s.max_buffer,
                      ws_max_message=s.max_ws_message, log_format="none", max_body=64 * 1024,
                      allow_origin=s.allow_origin, allow_host=s.allow_host, max_connections_per_ip=per_ip)
    router = make_router(node)
    return node.server.listen(lambda: HttpProtocol(router, hs), port=s.http_port)
