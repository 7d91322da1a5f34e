"""toxiproxy's HTTP API, served by the tap: its existing clients and curl drive socklab's relays.

Why this exists: toxiproxy is what people already script fault tests with (Go, Ruby, Python
clients, ``toxiproxy-cli``, curl). Speaking its API - the same paths, the same JSON, the same
toxic types, attributes and units - lets those scripts drive the tap unchanged, and gain what
toxiproxy lacks: the hexdump, the pcapng capture with each fault marked, recordings to replay.

The paths (``--api HOST:PORT``, 127.0.0.1 unless told otherwise)::

    GET    /version                          text: what answers
    GET    /proxies                          {"NAME": PROXY, ...}
    POST   /proxies                          create PROXY                    -> 201 PROXY
    POST   /populate                         create or replace [PROXY, ...]  -> 201 {"proxies": [...]}
    GET    /proxies/NAME                     PROXY
    POST   /proxies/NAME                     change listen, upstream, enabled -> 200 PROXY
    DELETE /proxies/NAME                                                     -> 204
    GET    /proxies/NAME/toxics              [TOXIC, ...]
    POST   /proxies/NAME/toxics              add TOXIC                       -> 200 TOXIC
    GET    /proxies/NAME/toxics/TOXIC        TOXIC
    POST   /proxies/NAME/toxics/TOXIC        change its attributes, toxicity -> 200 TOXIC
    DELETE /proxies/NAME/toxics/TOXIC                                        -> 204
    POST   /reset                            enable every proxy, remove every toxic -> 204

    PROXY = {"name": "redis", "listen": "127.0.0.1:26379", "upstream": "127.0.0.1:6379",
             "enabled": true, "toxics": [TOXIC, ...]}
    TOXIC = {"name": "latency_downstream", "type": "latency", "stream": "downstream",
             "toxicity": 1.0, "attributes": {"latency": 100, "jitter": 10}}

Errors answer ``{"error": "one line", "status": CODE}`` (400 bad body, 404 unknown, 409 exists,
415 not JSON, 403 a browser, 500 cannot listen). A toxic reaches the proxy's open connections at
once (:meth:`~socklab.tools.tap.relay.Tap.set_faults`). ``enabled: false`` closes the proxy's
listener and its connections (clients then get "connection refused"), as toxiproxy does.

Why browsers are refused: any web page can make the browser POST to a loopback port. A request
with an ``Origin`` or ``Sec-Fetch-Site: cross-site``/``same-site`` header, or a browser's
``Mozilla/`` User-Agent (toxiproxy refuses those too), gets 403; a POST with a body must say
``Content-Type: application/json``, which a page can only send after a CORS preflight this
server never approves. The HTTP layer also checks ``Host`` (DNS rebinding) and caps connections
per address.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from socklab.apps.http.router import Request, Response, Router
from socklab.core.errors import SocklabError, UsageError
from socklab.core.sockets import Endpoint, parse_endpoint
from socklab.protocols.faults import Fault
from socklab.protocols.text import escape_peer_text
from socklab.tools.tap.events import Observer
from socklab.tools.tap.relay import Tap

__all__ = ["TOXIC_TYPES", "ApiError", "ProxyEntry", "ToxiproxyApi", "fault_from_toxic", "toxic_json"]

# toxiproxy's toxic types; their attributes and units are the tap's (protocols/faults.py)
TOXIC_TYPES = ("latency", "bandwidth", "slow_close", "timeout", "reset_peer", "slicer", "limit_data")
STREAMS = ("upstream", "downstream")

TapFactory = Callable[[Endpoint, Endpoint, list[Fault]], Tap]


class ApiError(SocklabError):
    """An answer ``{"error": message, "status": status}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def toxic_json(fault: Fault) -> dict[str, Any]:
    """A fault as toxiproxy's toxic JSON."""
    return {"name": fault.name, "type": fault.kind, "stream": fault.direction, "toxicity": fault.toxicity,
            "attributes": {k: _number(v) for k, v in fault.params.items()}}


def fault_from_toxic(data: Any, base: Fault | None = None) -> Fault:
    """toxiproxy's toxic JSON -> a Fault (``base``: the toxic being updated). Raises ApiError 400."""
    if not isinstance(data, dict):
        raise ApiError(400, "bad request body: a toxic is a JSON object")
    kind = data.get("type", base.kind if base else None)
    if kind not in TOXIC_TYPES or (base is not None and kind != base.kind):
        raise ApiError(400, f"invalid toxic type: {escape_peer_text(str(kind))}; the tap has: "
                            + ", ".join(TOXIC_TYPES))
    stream = data.get("stream", base.direction if base else "downstream")
    if stream not in STREAMS or (base is not None and stream != base.direction):
        raise ApiError(400, "stream was invalid, can be either upstream or downstream")
    name = data.get("name", base.name if base else None) or f"{kind}_{stream}"
    if not isinstance(name, str):
        raise ApiError(400, "bad request body: name must be a string")
    toxicity = data.get("toxicity", base.toxicity if base else 1.0)
    attrs = data.get("attributes", {})
    if not isinstance(attrs, dict) or isinstance(toxicity, bool) or not isinstance(toxicity, (int, float)):
        raise ApiError(400, "bad request body: attributes must be an object and toxicity a number")
    params = dict(base.params) if base else {}
    for key, value in attrs.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ApiError(400, f"bad request body: attribute {escape_peer_text(str(key))} must be a number")
        params[str(key)] = float(value)
    try:
        return Fault(kind, stream, float(toxicity), name, **params)
    except UsageError as exc:
        raise ApiError(400, str(exc)) from exc


@dataclass
class ProxyEntry:
    """One proxy: a tap (``None`` while disabled) and what it needs to start again."""

    name: str
    listen: Endpoint
    upstream: Endpoint
    enabled: bool
    toxics: list[Fault] = field(default_factory=list)
    tap: Tap | None = None
    observers: list[Observer] = field(default_factory=list)  # closed when the entry goes
    factory: TapFactory | None = None  # how to build its tap again (default: the API's make_tap)
    counter: Any = None  # connection numbers go on across a disable (the views key on them)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "listen": str(self.listen), "upstream": str(self.upstream),
                "enabled": self.enabled, "toxics": [toxic_json(f) for f in self.toxics]}


@dataclass
class _ApiRouter(Router):
    """socklab's HTTP layer asks a Router; this one hands every request to the API."""

    api: Any = None

    def handle(self, request: Request) -> Response:
        return self.api.handle(request)  # type: ignore[no-any-return]


class ToxiproxyApi:
    """The toxiproxy API on socklab's HTTP layer: ``serve_http(settings, api.router())``.

    Args:
        make_tap: builds (not starts) a tap for ``(listen, upstream, faults)``; the CLI's keeps
            its engine and options.
        log: where one line per change goes (stderr in the CLI).

    Handlers run on the API server's engine thread; they change the taps through their
    thread-safe methods.
    """

    def __init__(self, make_tap: TapFactory | None = None, log: Callable[[str], None] | None = None, *,
                 max_proxies: int = 256, max_toxics: int = 64) -> None:
        self.max_proxies, self.max_toxics = max_proxies, max_toxics  # each proxy is a thread and a listener
        self.proxies: dict[str, ProxyEntry] = {}
        self.make_tap: TapFactory = make_tap or _default_tap
        self.log: Callable[[str], None] = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.lock = threading.RLock()

    def router(self) -> Router:
        """What to give ``serve_http`` (strict framing, Host check, per-address caps are its)."""
        return _ApiRouter(api=self)

    # ---- the library side ----------------------------------------------------------------------
    def add_proxy(self, name: str, listen: Endpoint, upstream: Endpoint, enabled: bool = True,
                  toxics: list[Fault] | None = None, tap: Tap | None = None,
                  observers: list[Observer] | None = None, factory: TapFactory | None = None) -> ProxyEntry:
        """Register a proxy (``tap``: one already started, e.g. the command line's; ``factory``
        builds it again after a disable, with the same options and ``observers``). Raises ApiError."""
        with self.lock:
            if name in self.proxies:
                raise ApiError(409, "proxy already exists")
            entry = ProxyEntry(name, listen, upstream, enabled, list(toxics or []), tap, list(observers or []),
                               factory)
            if tap is not None:
                entry.listen = _bound(tap)
                entry.toxics = tap.faults
            elif enabled:
                self._start(entry)
            self.proxies[name] = entry
            return entry

    def close(self) -> None:
        """Stop every proxy and close their observers."""
        with self.lock:
            for entry in self.proxies.values():
                self._stop(entry)
                _close_observers(entry)
            self.proxies.clear()

    def _start(self, entry: ProxyEntry) -> None:
        try:
            tap = (entry.factory or self.make_tap)(entry.listen, entry.upstream, list(entry.toxics))
            if entry.counter is not None:
                tap._counter = entry.counter
            tap.start()
        except SocklabError as exc:
            raise ApiError(500, f"cannot start proxy {entry.name}: {exc}") from exc
        entry.tap = tap
        entry.listen = _bound(tap)  # port 0 -> the port the kernel chose, as toxiproxy reports it
        entry.enabled = True
        if not _loopback(entry.listen.host):
            self.log(f"socklab tap api: warning: proxy {escape_peer_text(entry.name)} listens on {entry.listen}, "
                     "not on loopback: other machines can connect through it")

    def _stop(self, entry: ProxyEntry) -> None:
        if entry.tap is not None:
            entry.counter = entry.tap._counter
            entry.tap.close(keep_observers=True)
            entry.tap = None
        entry.enabled = False

    def _set_toxics(self, entry: ProxyEntry, toxics: list[Fault]) -> None:
        entry.toxics = toxics
        if entry.tap is not None:
            entry.tap.set_faults(toxics)

    # ---- HTTP ------------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        """Answer one request (the HTTP layer calls it on the API server's engine thread)."""
        try:
            _refuse_browsers(request)
            status, body = self._dispatch(request)
        except ApiError as exc:
            status, body = exc.status, {"error": str(exc), "status": exc.status}
        except Exception:  # a bug: 500 for the client, the traceback for the operator
            import traceback

            self.log(f"socklab tap api: {request.method} {escape_peer_text(request.path)} failed:\n"
                     + traceback.format_exc())
            status, body = 500, {"error": "internal error (see the tap's stderr)", "status": 500}
        if request.method != "GET":
            self.log(f"socklab tap api: {request.method} {escape_peer_text(request.path)} -> {status}")
        if status == 204:
            return Response(204)
        if isinstance(body, str):
            return Response.text(status, body)
        return Response.json(status, body)

    def _dispatch(self, request: Request) -> tuple[int, Any]:
        seg, method = request.segments, ("GET" if request.method == "HEAD" else request.method)
        routes: dict[tuple[int, str], tuple[str, ...]] = {
            (1, "version"): ("GET",), (1, "reset"): ("POST",), (1, "populate"): ("POST",),
            (1, "proxies"): ("GET", "POST"), (2, "proxies"): ("GET", "POST", "PATCH", "DELETE"),
            (3, "proxies"): ("GET", "POST"), (4, "proxies"): ("GET", "POST", "PATCH", "DELETE")}
        allowed = routes.get((len(seg), seg[0] if seg else ""))
        if allowed is None or (len(seg) >= 3 and seg[2] != "toxics"):
            raise ApiError(404, "not found")
        if method not in allowed:
            raise ApiError(405, f"method not allowed here; use {', '.join(allowed)}")
        body = _body(request) if method in ("POST", "PATCH") else None
        with self.lock:
            if seg[0] == "version":
                from socklab import __version__

                return 200, f"socklab-tap {__version__} (toxiproxy API 2)"
            if seg[0] == "reset":
                for entry in self.proxies.values():
                    if not entry.enabled:
                        self._start(entry)
                    self._set_toxics(entry, [])
                return 204, None
            if seg[0] == "populate":
                return self._populate(body)
            if len(seg) == 1:
                if method == "GET":
                    return 200, {name: e.to_json() for name, e in self.proxies.items()}
                return 201, self._create(body).to_json()
            if seg[1] not in self.proxies:
                raise ApiError(404, "proxy not found")
            entry = self.proxies[seg[1]]
            if len(seg) == 2:
                return self._proxy(entry, method, body)
            if len(seg) == 3:
                if method == "GET":
                    return 200, [toxic_json(f) for f in entry.toxics]
                fault = fault_from_toxic(body)
                if any(f.name == fault.name for f in entry.toxics):
                    raise ApiError(409, "toxic already exists")
                if len(entry.toxics) >= self.max_toxics:
                    raise ApiError(409, f"too many toxics on proxy {escape_peer_text(entry.name)} "
                                        f"(at most {self.max_toxics}): delete one first")
                self._set_toxics(entry, [*entry.toxics, fault])
                return 200, toxic_json(fault)
            old = next((f for f in entry.toxics if f.name == seg[3]), None)
            if old is None:
                raise ApiError(404, "toxic not found")
            if method == "GET":
                return 200, toxic_json(old)
            if method == "DELETE":
                self._set_toxics(entry, [f for f in entry.toxics if f is not old])
                return 204, None
            new = fault_from_toxic({k: v for k, v in body.items() if k != "name"}
                                   if isinstance(body, dict) else body, old)
            self._set_toxics(entry, [new if f is old else f for f in entry.toxics])
            return 200, toxic_json(new)

    def _proxy(self, entry: ProxyEntry, method: str, body: Any) -> tuple[int, Any]:
        if method == "GET":
            return 200, entry.to_json()
        if method == "DELETE":
            self._stop(entry)
            _close_observers(entry)
            del self.proxies[entry.name]
            return 204, None
        if not isinstance(body, dict):
            raise ApiError(400, "bad request body: a proxy is a JSON object")
        listen = _endpoint(body, "listen", entry.listen)
        upstream = _endpoint(body, "upstream", entry.upstream)
        enabled = body.get("enabled", entry.enabled)
        if not isinstance(enabled, bool):
            raise ApiError(400, "bad request body: enabled must be true or false")
        moved = listen != entry.listen or upstream != entry.upstream
        if moved or not enabled:
            self._stop(entry)
        entry.listen, entry.upstream = listen, upstream
        if enabled and entry.tap is None:
            self._start(entry)
        return 200, entry.to_json()

    def _create(self, body: Any) -> ProxyEntry:
        if not isinstance(body, dict):
            raise ApiError(400, "bad request body: a proxy is a JSON object")
        for key in ("name", "upstream"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise ApiError(400, f"missing required field: {key}")
        if body["name"] in self.proxies:
            raise ApiError(409, "proxy already exists")
        if len(self.proxies) >= self.max_proxies:
            raise ApiError(503, f"too many proxies (at most {self.max_proxies}): delete one first")
        enabled = body.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ApiError(400, "bad request body: enabled must be true or false")
        entry = ProxyEntry(body["name"], _endpoint(body, "listen", Endpoint("127.0.0.1", 0)),
                           _endpoint(body, "upstream", Endpoint()), enabled)
        if enabled:
            self._start(entry)
        self.proxies[entry.name] = entry
        return entry

    def _populate(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, list):
            raise ApiError(400, "bad request body: populate takes a JSON array of proxies")
        done: list[dict[str, Any]] = []
        for item in body:
            try:
                if not isinstance(item, dict):
                    raise ApiError(400, "bad request body: a proxy is a JSON object")
                there = self.proxies.get(str(item.get("name")))
                if there is not None:  # replaced, as toxiproxy does
                    self._stop(there)
                    _close_observers(there)
                    del self.proxies[there.name]
                done.append(self._create(item).to_json())
            except ApiError as exc:
                return exc.status, {"error": str(exc), "status": exc.status, "proxies": done}
        return 201, {"proxies": done}


# ---- helpers ------------------------------------------------------------------------------------
def _default_tap(listen: Endpoint, upstream: Endpoint, faults: list[Fault]) -> Tap:
    return Tap(listen=listen, target=upstream, faults=faults)


def _bound(tap: Tap) -> Endpoint:
    addr = tap.bind().address
    return Endpoint(str(addr[0]), int(addr[1]))


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _close_observers(entry: ProxyEntry) -> None:
    for obs in entry.observers:
        try:
            obs.close()
        except Exception as exc:  # a full disk must not stop the others from closing
            print(f"socklab tap api: closing an observer failed: {exc}", file=sys.stderr)


def _endpoint(body: dict[str, Any], key: str, default: Endpoint) -> Endpoint:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ApiError(400, f"bad request body: {key} must be a string HOST:PORT")
    try:
        ep = parse_endpoint(value, default_host="127.0.0.1")
    except UsageError as exc:
        raise ApiError(400, f"bad request body: {key}: {exc}") from exc
    if ep.unix is not None:
        raise ApiError(400, f"bad request body: {key} must be HOST:PORT")
    return ep


def _body(request: Request) -> Any:
    if not request.body:
        return None
    ctype = (request.header("content-type") or "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, "a request body must be JSON with Content-Type: application/json "
                            "(curl: --json DATA)")
    try:
        return json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"bad request body: not JSON ({exc})") from exc


def _refuse_browsers(request: Request) -> None:
    site = (request.header("sec-fetch-site") or "none").lower()
    agent = request.header("user-agent") or ""
    if request.header("origin") is not None or site not in ("none", "same-origin") or agent.startswith("Mozilla/"):
        raise ApiError(403, "requests from web browsers are refused (a web page must not change the faults)")

