"""What an HTTP listener on this machine refuses from web pages and from one greedy address.

Why this exists: a server bound to loopback feels private, but every web page the user opens can
make the browser send requests to it. Three doors, each closed here once for every HTTP listener
socklab has (the static server, the chat's web port, JSON-RPC over HTTP and WebSocket):

- **DNS rebinding.** A page on ``attacker.example`` re-resolves its own name to ``127.0.0.1``; the
  browser then treats the local server as same-origin with the attacker's page. The request still
  says ``Host: attacker.example``. So a connection that arrived on a loopback address is answered
  only when ``Host`` is a loopback name or address (``localhost``, ``127.x.y.z``, ``[::1]``) with
  this connection's port, or a name the user allowed (``--allow-host``); otherwise 421
  Misdirected Request (RFC 9110 §15.5.20: "this server is not that name"). A request without
  ``Host`` (HTTP/1.0 tools) passes: browsers always send it.
- **Cross-site WebSocket hijacking.** Browsers send WebSocket handshakes from any page, with the
  page's ``Origin`` (RFC 6455 §10.2). A handshake is accepted when ``Origin`` is absent (not a
  browser), same-origin with the ``Host`` it came to or with the connection's own address, or in
  ``--allow-origin``; otherwise 403.
- **Simple cross-site POSTs.** A page may POST ``text/plain`` anywhere without a CORS preflight; a
  JSON-RPC endpoint therefore requires a JSON media type (:func:`is_json_content_type`, 415 else).

And one resource door: :class:`PeerCount` caps the connections one client address holds
(``max_connections_per_ip``), so a thousand half-sent requests from one address do not lock
everyone else out until the header timeout.

Pure functions of their arguments, plus one small counter; no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

__all__ = ["PeerCount", "host_allowed", "is_json_content_type", "is_loopback", "origin_allowed",
           "peer_refusal"]

JSON_TYPES = frozenset({"application/json", "application/json-rpc", "application/jsonrequest"})


def is_loopback(address: Any) -> bool:
    """True when ``address`` (a socket address tuple or a host string) is a loopback address."""
    host = address[0] if isinstance(address, tuple) and address else address
    if not isinstance(host, str) or not host:
        return False
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``name[:port]`` or ``[v6][:port]`` as (lowercase host, port or None); None if malformed."""
    value = value.strip().lower()
    if not value or any(c in value for c in " /\\@?#"):
        return None
    try:
        parts = urlsplit("//" + value)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if not host:
        return None
    return host, port


def _loopback_name(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost") or is_loopback(host)


def host_allowed(host_header: str | None, local: Any, *, tls: bool = False, allowed: Iterable[str] = ()) -> bool:
    """May a request with this ``Host`` be answered on a connection to ``local``?

    Args:
        host_header: the request's ``Host`` value (``None`` when absent).
        local: the connection's local address (``sockname``).
        tls: the connection is TLS (the default port is then 443).
        allowed: ``--allow-host`` entries: ``NAME`` (any port) or ``NAME:PORT``.

    Returns:
        True when the connection did not arrive on loopback (nothing to check), when ``Host`` is
        absent, a loopback name or address with the connection's port, or an allowed name.
    """
    if host_header is None or not is_loopback(local):
        return True
    split = _split_host(host_header)
    if split is None:
        return False
    host, port = split
    for entry in allowed:
        want = _split_host(entry)
        if want is not None and want[0] == host and (want[1] is None or want[1] == port):
            return True
    own_port = local[1] if isinstance(local, tuple) and len(local) > 1 else None
    return _loopback_name(host) and (port if port is not None else (443 if tls else 80)) == own_port


def origin_allowed(origin: str | None, host_header: str | None, local: Any, *, tls: bool = False,
                   allowed: Iterable[str] = ()) -> bool:
    """May a WebSocket handshake with this ``Origin`` be accepted (RFC 6455 §4.2.2, §10.2)?

    Args:
        origin: the ``Origin`` value, ``None`` when absent (a client that is not a browser).
        host_header: the handshake's ``Host`` (already checked by :func:`host_allowed`).
        local: the connection's local address.
        tls: the connection is TLS.
        allowed: ``--allow-origin`` entries (``http://host:port``; ``*`` allows every origin).
    """
    if origin is None:
        return True
    origin = origin.strip().lower()
    for entry in allowed:
        entry = entry.strip().lower().rstrip("/")
        if entry == "*" or entry == origin:
            return True
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
        return False  # "null" (a sandboxed or file: page) and anything that is not an origin
    port = port if port is not None else (443 if parts.scheme == "https" else 80)
    own = {"https" if tls else "http"}
    if parts.scheme not in own:
        return False
    if host_header is not None:
        split = _split_host(host_header)
        if split is not None and split[0] == parts.hostname and (split[1] or (443 if tls else 80)) == port:
            return True
    if isinstance(local, tuple) and len(local) > 1:
        try:
            same_ip = ipaddress.ip_address(parts.hostname) == ipaddress.ip_address(str(local[0]).split("%")[0])
        except ValueError:
            same_ip = False
        return same_ip and port == local[1]
    return False


def is_json_content_type(value: str | None) -> bool:
    """True for ``application/json`` (with parameters) and the JSON-RPC media types; a CORS
    "simple" type (``text/plain``, forms) or no type at all is False."""
    if value is None:
        return False
    return value.split(";", 1)[0].strip().lower() in JSON_TYPES


class PeerCount:
    """Connections open per client address, for one server (every protocol it creates shares it).

    Callbacks run serialized on the engine (or under its lock), so a plain dict is enough.
    """

    def __init__(self) -> None:
        self.open: dict[str, int] = {}

    def add(self, client: Any, limit: int) -> bool:
        """Count a new connection from ``client``; False (not counted) when it already holds ``limit``."""
        key = _key(client)
        if key is None or limit <= 0:
            return True
        n = self.open.get(key, 0)
        if n >= limit:
            return False
        self.open[key] = n + 1
        return True

    def remove(self, client: Any) -> None:
        key = _key(client)
        if key is None:
            return
        n = self.open.get(key, 0) - 1
        if n > 0:
            self.open[key] = n
        else:
            self.open.pop(key, None)


def _key(client: Any) -> str | None:
    if isinstance(client, tuple) and client and isinstance(client[0], str) and client[0]:
        return client[0]
    return None


def peer_refusal() -> bytes:
    """The complete 503 answer for a connection over ``max_connections_per_ip``."""
    body = b"503 Service Unavailable: too many connections from your address (max_connections_per_ip)\n"
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"retry-after: 1\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
