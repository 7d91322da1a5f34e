"""JSON-RPC errors as Python exceptions, on both sides of the wire.

Why this exists: a handler signals an application error by raising :class:`RpcError` with a
code and optional ``data``; the server turns it into the error object of specification section
5.1. The client does the reverse: an error answer is raised as the subclass matching its code
(``MethodNotFound``, ``InvalidParams``...), so callers can ``except`` the case they care about and
still read ``code``, ``message`` and ``data``.

Everything here is a :class:`~socklab.core.errors.SocklabError`. Client-side failures that are
not answers from the server use the core classes: :class:`CallTimeout` (no answer in time) is a
``OperationTimeout``; a lost connection is a ``BrokenError``.
"""

from __future__ import annotations

from typing import Any

from socklab.core.errors import OperationTimeout, SocklabError
from socklab.protocols import jsonrpc as j

__all__ = ["CallTimeout", "InternalError", "InvalidParams", "InvalidRequest", "MethodNotFound", "ParseError",
           "RequestCancelled", "RequestTimeout", "RpcError", "ServerError", "error_from_object"]

_NO_DATA: Any = j.ErrorObject(0, "").data  # the "no data member" sentinel


class RpcError(SocklabError):
    """An error answer: raise it in a handler, catch it around a client call.

    Args:
        code: the JSON-RPC error code (-32000 when not given: a generic application error).
        message: one short sentence.
        data: any JSON value with details (omitted from the answer when not given).
    """

    default_code = j.SERVER_ERROR

    def __init__(self, message: str = "", data: Any = _NO_DATA, *, code: int | None = None) -> None:
        self.code = code if code is not None else self.default_code
        self.message = message or j.MESSAGES.get(self.code, "Server error")
        self.data = data
        super().__init__(f"{self.code} {self.message}" + (f": {data}" if self.has_data else ""))

    @property
    def has_data(self) -> bool:
        return self.data is not _NO_DATA

    def to_error_object(self) -> j.ErrorObject:
        return j.ErrorObject(self.code, self.message, self.data)


class ParseError(RpcError):
    """-32700: the server could not parse the JSON text."""

    default_code = j.PARSE_ERROR


class InvalidRequest(RpcError):
    """-32600: the JSON was not a valid request object."""

    default_code = j.INVALID_REQUEST


class MethodNotFound(RpcError):
    """-32601: no such method."""

    default_code = j.METHOD_NOT_FOUND


class InvalidParams(RpcError):
    """-32602: the parameters do not fit the method's signature."""

    default_code = j.INVALID_PARAMS


class InternalError(RpcError):
    """-32603: the handler failed (the server does not say how: no traceback leaks)."""

    default_code = j.INTERNAL_ERROR


class ServerError(RpcError):
    """-32000..-32099 and application codes without a class of their own."""


class RequestTimeout(ServerError):
    """-32001: the call ran longer than the server's ``call_timeout``."""

    default_code = j.REQUEST_TIMEOUT


class RequestCancelled(ServerError):
    """-32800: the call was cancelled with ``$/cancelRequest``."""

    default_code = j.REQUEST_CANCELLED


class CallTimeout(OperationTimeout):
    """The client gave up waiting for an answer (its per-call timeout)."""


_BY_CODE: dict[int, type[RpcError]] = {
    cls.default_code: cls for cls in (ParseError, InvalidRequest, MethodNotFound, InvalidParams, InternalError,
                                      RequestTimeout, RequestCancelled)
}


def error_from_object(error: j.ErrorObject) -> RpcError:
    """The exception matching an error object's code (``ServerError`` for the others)."""
    cls = _BY_CODE.get(error.code, ServerError)
    return cls(error.message, error.data, code=error.code)
