"""One exception hierarchy for all of socklab.

Why this exists: a learner's first socket program dies with a bare ``OSError: [Errno 111]``.
socklab translates operating-system errors *once*, at the engine boundary (the place that
called the socket), into a small tree of exceptions whose names say what happened and whose
messages fit on one line. Everything above the engines - protocols, apps, the CLI - only ever
sees these classes.

The tree::

    SocklabError                      root: catch this to catch everything socklab raises
    ├── UsageError                    bad settings or arguments (the user's mistake, exit 2)
    ├── ProtocolError                 a protocol's rules were broken (sans-I/O layers raise these)
    │   ├── LocalProtocolError        *we* tried to break them: a bug in the calling code
    │   └── RemoteProtocolError       the *peer* broke them; carries a hint (e.g. an HTTP status)
    ├── LimitExceeded                 a named limit was reached (max connections, line length, ...)
    └── NetworkError                  the network or the peer failed us (translated OSError)
        ├── ResolveError              a name did not resolve (socket.gaierror)
        ├── ConnectError              connect() failed
        │   ├── ConnectionRefused     nobody listens there (RST in answer to SYN)
        │   ├── HostUnreachable       no route to the host or network
        │   └── ConnectTimeout        no answer within the connect timeout
        ├── AddressInUse              bind() found the address taken (EADDRINUSE)
        ├── ClosedError               *our* side already closed the socket (a bug if it surprises you)
        ├── BrokenError               the *peer* or the network broke the connection (RST, EPIPE)
        ├── OperationTimeout          an operation timed out (idle, send, header deadline)
        └── ResourceExhausted         out of file descriptors or memory (EMFILE, ENFILE, ENOBUFS)

Which ones mean a bug: ``LocalProtocolError`` and ``ClosedError`` point at the calling code.
The others describe the world and are expected in a network program.

The split between *Closed* and *Broken* comes from trio; the Local/Remote protocol split and the
hint from h11.
"""

from __future__ import annotations

import errno
import socket

__all__ = [
    "AddressInUse",
    "BrokenError",
    "ClosedError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionRefused",
    "HostUnreachable",
    "LimitExceeded",
    "LocalProtocolError",
    "NetworkError",
    "OperationTimeout",
    "ProtocolError",
    "RemoteProtocolError",
    "ResolveError",
    "ResourceExhausted",
    "SocklabError",
    "TimeoutError_",
    "UsageError",
    "translate_oserror",
]


class SocklabError(Exception):
    """Root of every exception socklab raises on purpose."""


class UsageError(SocklabError):
    """Bad settings or arguments: the caller asked for something impossible."""


class ProtocolError(SocklabError):
    """A protocol's rules were broken.

    Args:
        message: one line saying what rule was broken.
        hint: an optional value the protocol suggests answering with (an HTTP status code,
            a WebSocket close code, a JSON-RPC error code, a TFTP error code).
    """

    def __init__(self, message: str, hint: int | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class LocalProtocolError(ProtocolError):
    """Our own code tried to break the protocol (sending out of turn): a bug."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol (garbage, oversize frame, bad state)."""


class LimitExceeded(SocklabError):
    """A named limit was reached; the message names the setting to raise."""


class NetworkError(SocklabError):
    """The network, the operating system or the peer failed an operation.

    Attributes:
        errno: the original ``errno`` when the error came from the OS, else ``None``.
    """

    errno: int | None = None


class ResolveError(NetworkError):
    """A host name did not resolve."""


class ConnectError(NetworkError):
    """``connect()`` failed."""


class ConnectionRefused(ConnectError):
    """Nothing listens at that address: the host answered the SYN with an RST."""


class HostUnreachable(ConnectError):
    """No route to the host or its network."""


class ConnectTimeout(ConnectError):
    """No answer to the SYN within the connect timeout (a firewall drops it, or the host is down)."""


class AddressInUse(NetworkError):
    """``bind()`` found the address already taken."""


class ClosedError(NetworkError):
    """Our side already closed this socket or transport."""


class BrokenError(NetworkError):
    """The peer or the network broke the connection (reset, broken pipe)."""


class OperationTimeout(NetworkError):
    """An operation did not finish within its deadline.

    (Not called ``TimeoutError``: that name is a builtin, and ``OSError``'s subclass for ETIMEDOUT.)
    """


TimeoutError_ = OperationTimeout
"""Deprecated alias of :class:`OperationTimeout` (its old name, which read like the builtin);
kept for one release while code outside this repository moves."""


class ResourceExhausted(NetworkError):
    """The process or system is out of file descriptors or buffer memory."""


_ADDRINUSE_HINT = (
    "another socket is bound there - a running server, or connections in TIME_WAIT "
    "(socklab sets SO_REUSEADDR on listeners; see `socklab ss --port N`)"
)

_BY_ERRNO: dict[int, type[NetworkError]] = {
    errno.ECONNREFUSED: ConnectionRefused,
    errno.EHOSTUNREACH: HostUnreachable,
    errno.ENETUNREACH: HostUnreachable,
    errno.ETIMEDOUT: ConnectTimeout,
    errno.EADDRINUSE: AddressInUse,
    errno.EADDRNOTAVAIL: AddressInUse,
    errno.ECONNRESET: BrokenError,
    errno.EPIPE: BrokenError,
    errno.ECONNABORTED: BrokenError,
    errno.ENOTCONN: BrokenError,
    errno.EBADF: ClosedError,
    errno.EMFILE: ResourceExhausted,
    errno.ENFILE: ResourceExhausted,
    errno.ENOBUFS: ResourceExhausted,
    errno.ENOMEM: ResourceExhausted,
}


def translate_oserror(exc: BaseException, action: str) -> SocklabError:
    """Turn an ``OSError`` (or ``ssl.SSLError``) into socklab's hierarchy.

    Args:
        exc: the exception the operating system raised.
        action: what we were doing, phrased to follow "while": ``"connecting to 127.0.0.1:7"``.

    Returns:
        A :class:`SocklabError` with a one-line message. The caller raises it ``from exc``.
    """
    if isinstance(exc, SocklabError):
        return exc
    if isinstance(exc, socket.gaierror):
        err: NetworkError = ResolveError(f"cannot resolve name while {action}: {exc.strerror}")
        err.errno = exc.errno
        return err
    if isinstance(exc, (TimeoutError, socket.timeout)) and exc.errno is None:
        if action.startswith("connect"):
            return ConnectTimeout(f"timed out while {action}")
        return OperationTimeout(f"timed out while {action}")
    if isinstance(exc, OSError):
        code = exc.errno
        cls = _BY_ERRNO.get(code, NetworkError) if code is not None else NetworkError
        reason = exc.strerror or str(exc) or type(exc).__name__
        message = f"{reason.lower() if reason[:1].isupper() and reason[1:2].islower() else reason} while {action}"
        if cls is AddressInUse and code == errno.EADDRINUSE:
            message += f": {_ADDRINUSE_HINT}"
        out = cls(message)
        out.errno = code
        return out
    return SocklabError(f"{type(exc).__name__} while {action}: {exc}")
