"""JSON-RPC 2.0 as data: parse, validate, decide and encode messages - no sockets, no threads.

Why this exists: the JSON-RPC 2.0 specification (https://www.jsonrpc.org/specification) is short,
but its corner cases decide whether two implementations interoperate: a parse error answers with
``"id": null``; an empty batch ``[]`` is one Invalid Request, not an empty array; notifications
(requests without an ``id``) never get an answer, not even an error; a batch of only
notifications gets *nothing* back. This module holds those rules once, for the server, the client
and the tests, independent of how the bytes travel (TCP framing, HTTP POST, WebSocket).

It is also the safety gate in front of ``json.loads``. CPython's JSON parser is recursive and its
``int()`` is quadratic in the number of digits, so untrusted input is checked first:

- size: ``Limits.max_message_size`` bytes;
- nesting: a cheap scan counts brackets outside strings (only when the message holds more
  brackets than ``max_depth``, so ordinary messages skip it) - ``[`` x 100,000 is refused after
  ``max_depth`` steps, never reaching the recursive parser (no ``RecursionError``);
- numbers: ``parse_int``/``parse_float`` refuse literals longer than ``max_number_length``
  digits before converting them (a 100,000-digit number is refused in linear time);
- ``NaN``/``Infinity`` are not JSON (RFC 8259 section 6) and are refused.

The pieces: :func:`parse_incoming` (bytes from a client -> :class:`Incoming`, requests and
ready-made error responses), :func:`bind_params` (the dispatch decision -32602),
:class:`ReplyCollector` (assembles a batch's answers; knows when nothing must be sent),
:func:`encode` and :func:`parse_replies` (the client side).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from socklab.core.errors import RemoteProtocolError

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "REQUEST_CANCELLED",
    "REQUEST_TIMEOUT",
    "SERVER_ERROR",
    "ErrorObject",
    "ErrorResponse",
    "Incoming",
    "Limits",
    "ReplyCollector",
    "Request",
    "Response",
    "bind_params",
    "encode",
    "error_response",
    "id_key",
    "make_request",
    "parse_incoming",
    "parse_replies",
    "safe_loads",
]

# Specification section 5.1, "Error object": the pre-defined codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# -32000 to -32099: "Reserved for implementation-defined server-errors". socklab's:
SERVER_ERROR = -32000  # a handler raised an application error without choosing a code
REQUEST_TIMEOUT = -32001  # the call ran longer than call_timeout
REQUEST_CANCELLED = -32800  # cancelled by $/cancelRequest (the code LSP uses)

MESSAGES = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid Request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid params",
    INTERNAL_ERROR: "Internal error",
    SERVER_ERROR: "Server error",
    REQUEST_TIMEOUT: "Request timed out",
    REQUEST_CANCELLED: "Request cancelled",
}

_MISSING: Any = object()
Id = str | int | float | None


@dataclass(frozen=True)
class Limits:
    """What an incoming message may be. The defaults suit a server on the open internet."""

    max_message_size: int = 1024 * 1024
    max_batch: int = 1000
    max_depth: int = 64
    max_number_length: int = 100


@dataclass(frozen=True)
class ErrorObject:
    """Specification section 5.1: ``code``, ``message`` and optional ``data``."""

    code: int
    message: str
    data: Any = _MISSING

    @property
    def has_data(self) -> bool:
        return self.data is not _MISSING

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not _MISSING:
            out["data"] = self.data
        return out


@dataclass(frozen=True)
class Request:
    """Specification section 4: a call (``id`` present) or a notification (``is_notification``)."""

    method: str
    params: list[Any] | dict[str, Any] | None = None
    id: Id = None
    is_notification: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"jsonrpc": "2.0", "method": self.method}
        if self.params is not None:
            out["params"] = self.params
        if not self.is_notification:
            out["id"] = self.id
        return out


@dataclass(frozen=True)
class Response:
    """Specification section 5: a successful answer."""

    id: Id
    result: Any

    def to_json(self) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "result": self.result, "id": self.id}


@dataclass(frozen=True)
class ErrorResponse:
    """Specification section 5: an error answer (``id`` is null when it could not be read)."""

    id: Id
    error: ErrorObject

    def to_json(self) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "error": self.error.to_json(), "id": self.id}


Message = Request | Response | ErrorResponse


def error_response(id: Id, code: int, message: str | None = None, data: Any = _MISSING) -> ErrorResponse:
    """An error answer with the specification's message for ``code`` unless one is given."""
    return ErrorResponse(id, ErrorObject(code, message or MESSAGES.get(code, "Server error"), data))


def id_key(id: Id) -> tuple[str, Any]:
    """A dict key for an id that keeps ``1`` and ``"1"`` apart (they are different ids)."""
    return (type(id).__name__, id)


# ---- safe parsing ------------------------------------------------------------------------------
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def _check_depth(text: str, max_depth: int) -> None:
    # Fast path: a message with few brackets cannot nest deeply (most messages end here).
    if text.count("[") + text.count("{") <= max_depth:
        return
    depth = 0
    for m in _BRACKET.finditer(_STRING.sub("", text)):
        if m.group() in "[{":
            depth += 1
            if depth > max_depth:
                raise RemoteProtocolError(f"nesting deeper than {max_depth} levels (max_depth)", hint=PARSE_ERROR)
        else:
            depth -= 1


def safe_loads(data: bytes | str, limits: Limits = Limits()) -> Any:
    """``json.loads`` for untrusted input: size, depth and number length checked first.

    Raises:
        RemoteProtocolError: hint -32700 for anything that is not acceptable JSON, -32600 for a
            message over ``max_message_size``.
    """
    if len(data) > limits.max_message_size:
        raise RemoteProtocolError(f"message larger than {limits.max_message_size} bytes (max_message_size)",
                                  hint=INVALID_REQUEST)
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"not UTF-8: {exc.reason} at byte {exc.start}", hint=PARSE_ERROR) from None
    _check_depth(text, limits.max_depth)
    limit = limits.max_number_length

    def parse_int(s: str) -> int:
        if len(s) > limit:
            raise RemoteProtocolError(f"number longer than {limit} digits (max_number_length)", hint=PARSE_ERROR)
        return int(s)

    def parse_float(s: str) -> float:
        if len(s) > limit:
            raise RemoteProtocolError(f"number longer than {limit} digits (max_number_length)", hint=PARSE_ERROR)
        return float(s)

    def parse_constant(s: str) -> Any:
        raise RemoteProtocolError(f"{s} is not JSON (RFC 8259 section 6)", hint=PARSE_ERROR)

    try:
        return json.loads(text, parse_int=parse_int, parse_float=parse_float, parse_constant=parse_constant)
    except json.JSONDecodeError as exc:
        raise RemoteProtocolError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                                  hint=PARSE_ERROR) from None
    except (RecursionError, ValueError) as exc:  # belt and braces: the scans above should prevent these
        raise RemoteProtocolError(f"invalid JSON: {exc}", hint=PARSE_ERROR) from None


# ---- the server side -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Incoming:
    """One message from a client, validated: what to run and what to answer at once.

    Attributes:
        batch: the message was an array (the answer must be an array too, spec section 6).
        items: in order, a :class:`Request` to dispatch or an :class:`ErrorResponse` already
            decided (invalid member). A parse error is a single ``ErrorResponse`` with id null.
    """

    batch: bool
    items: list[Request | ErrorResponse] = field(default_factory=list)


def _valid_id(value: Any) -> bool:
    # Spec section 4: "String, Number, or NULL"; booleans are not numbers here.
    return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))


def validate_request(obj: Any) -> Request | ErrorResponse:
    """One request object checked against specification section 4."""
    if not isinstance(obj, dict):
        return error_response(None, INVALID_REQUEST, data="a request must be a JSON object")
    has_id = "id" in obj
    rid = obj.get("id")
    reply_id = rid if has_id and _valid_id(rid) else None
    if obj.get("jsonrpc") != "2.0":
        return error_response(reply_id, INVALID_REQUEST, data='"jsonrpc" must be exactly "2.0"')
    method = obj.get("method")
    if not isinstance(method, str):
        return error_response(reply_id, INVALID_REQUEST, data='"method" must be a string')
    params = obj.get("params")
    if "params" in obj and not isinstance(params, (list, dict)):
        return error_response(reply_id, INVALID_REQUEST, data='"params" must be an array or an object')
    if has_id and not _valid_id(rid):
        return error_response(None, INVALID_REQUEST, data='"id" must be a string, a number or null')
    return Request(method, params, rid, is_notification=not has_id)


def parse_incoming(data: bytes | str, limits: Limits = Limits()) -> Incoming:
    """Parse and validate what a client sent (one request or a batch). Never raises for bad input.

    Spec section 6: an empty array is one Invalid Request; every other invalid member gets its
    own error inside the batch answer.
    """
    try:
        obj = safe_loads(data, limits)
    except RemoteProtocolError as exc:
        code = exc.hint if exc.hint is not None else PARSE_ERROR
        return Incoming(False, [error_response(None, code, data=str(exc))])
    if isinstance(obj, list):
        if not obj:
            return Incoming(False, [error_response(None, INVALID_REQUEST, data="empty batch")])
        if len(obj) > limits.max_batch:
            return Incoming(False, [error_response(
                None, INVALID_REQUEST, data=f"batch of {len(obj)} requests; at most {limits.max_batch} "
                                            "(max_batch)")])
        return Incoming(True, [validate_request(member) for member in obj])
    return Incoming(False, [validate_request(obj)])


def bind_params(signature: inspect.Signature, params: list[Any] | dict[str, Any] | None
                ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Check ``params`` against a handler's signature (spec section 4.2: by-position or by-name).

    Returns:
        ``(args, kwargs)`` to call the handler with.

    Raises:
        RemoteProtocolError: hint -32602 (Invalid params), the message says what did not fit.
    """
    args: tuple[Any, ...] = tuple(params) if isinstance(params, list) else ()
    kwargs: dict[str, Any] = dict(params) if isinstance(params, dict) else {}
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise RemoteProtocolError(str(exc), hint=INVALID_PARAMS) from None
    return args, kwargs


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def encode(message: Message | list[Message]) -> bytes:
    """The JSON text of one message or a batch (compact, UTF-8, no raw newline).

    A result that is not JSON-serializable becomes -32603 (Internal error) for that answer.
    """
    if isinstance(message, list):
        parts = [encode(m) for m in message]
        return b"[" + b",".join(parts) + b"]"
    try:
        return _dumps(message.to_json())
    except (TypeError, ValueError) as exc:
        if isinstance(message, Request):
            raise
        rid = message.id
        return _dumps(error_response(rid, INTERNAL_ERROR, data=f"result is not JSON: {exc}").to_json())


class ReplyCollector:
    """Assembles the answer to one incoming message as its calls complete (in any order).

    ``add(slot, reply)`` records the answer for item ``slot`` (``None`` for a notification);
    ``payload()`` is the bytes to send once ``done`` - or ``None`` when nothing must be sent
    (notifications only, spec section 6: "the server MUST NOT return an empty Array").
    """

    def __init__(self, incoming: Incoming) -> None:
        self.batch = incoming.batch
        self._replies: list[Response | ErrorResponse | None] = [None] * len(incoming.items)
        self._pending = 0
        for i, item in enumerate(incoming.items):
            if isinstance(item, ErrorResponse):
                self._replies[i] = item
            else:
                self._pending += 1

    @property
    def done(self) -> bool:
        return self._pending == 0

    def add(self, slot: int, reply: Response | ErrorResponse | None) -> None:
        self._replies[slot] = reply
        self._pending -= 1

    def payload(self) -> bytes | None:
        replies = [r for r in self._replies if r is not None]
        if not replies:
            return None
        if self.batch:
            return encode(replies)  # type: ignore[arg-type]
        return encode(replies[0])


# ---- the client side -----------------------------------------------------------------------------
def make_request(method: str, params: list[Any] | dict[str, Any] | None, id: Id = None,
                 notification: bool = False) -> Request:
    """A request to send (``notification=True`` omits the id)."""
    return Request(method, params, None if notification else id, is_notification=notification)


def parse_replies(data: bytes | str, limits: Limits = Limits()) -> list[Response | ErrorResponse]:
    """What a server answered: one response or a batch of them.

    Raises:
        RemoteProtocolError: not JSON, or not shaped like a response (hint -32700/-32600).
    """
    obj = safe_loads(data, limits)
    items = obj if isinstance(obj, list) else [obj]
    out: list[Response | ErrorResponse] = []
    for item in items:
        if not isinstance(item, dict) or item.get("jsonrpc") != "2.0" or "id" not in item:
            raise RemoteProtocolError(f"not a JSON-RPC 2.0 response: {str(item)[:80]}", hint=INVALID_REQUEST)
        if "error" in item:
            err = item["error"]
            if not isinstance(err, dict) or not isinstance(err.get("code"), int) or \
                    not isinstance(err.get("message"), str):
                raise RemoteProtocolError(f"malformed error object: {str(err)[:80]}", hint=INVALID_REQUEST)
            out.append(ErrorResponse(item["id"], ErrorObject(err["code"], err["message"],
                                                             err.get("data", _MISSING))))
        elif "result" in item:
            out.append(Response(item["id"], item["result"]))
        else:
            raise RemoteProtocolError("a response needs a result or an error", hint=INVALID_REQUEST)
    return out


Handler = Callable[..., Any]
