"""Turning an HTTP request-target into a path that cannot leave the served root.

Why this exists: path traversal is the classic static-server hole (aiohttp's CVE-2024-23334,
countless ``..%2f`` variants). The rule here is simple and strict, and it runs before any file
system call: decode the path once, refuse anything ambiguous, and return the path as a tuple of
plain segments that the file layer joins under its root.

Refused with 400 (``RemoteProtocolError(hint=400)``):

- a target that is not origin-form (RFC 9112 §3.2.1): absolute-form and authority-form are not
  served here, ``*`` only for OPTIONS;
- a bad ``%``-escape, an encoded ``/`` (``%2f``) or ``\\`` (``%5c``), any control character or NUL
  (raw or encoded), a backslash, bytes that are not valid UTF-8 after decoding (this refuses
  overlong encodings such as ``%c0%ae``);
- a ``.`` or ``..`` segment, raw or encoded (browsers resolve them before sending - RFC 3986
  §5.2.4 - so one arriving here was made by hand), and a ``%`` left after decoding (double
  encoding is therefore never decoded twice: ``%252e`` stays the literal name ``%2e``... and is refused).

Empty segments (``//``) are dropped, so ``//evil.example/`` can never become a redirect to
another host: callers build any ``Location`` from the returned segments.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from socklab.core.errors import RemoteProtocolError

__all__ = ["TargetPath", "parse_target", "percent_decode"]

_HEX = b"0123456789abcdefABCDEF"
PLAIN_CACHE_SIZE = 4096  # plain targets (nothing to decode) remembered with their parsed form...
PLAIN_TARGET_MAX = 256  # ...when at most this long (the cache stays under ~2 MiB)
_plain_cache: dict[bytes, TargetPath] = {}
_PLAIN = re.compile(rb"(?:/[A-Za-z0-9._~!$&'()*+,;=:@-]*)+")  # origin-form path, RFC 3986 pchar minus '%'


@dataclass(frozen=True)
class TargetPath:
    """A confined request path.

    Attributes:
        segments: the decoded path segments, none empty, ``.``, ``..`` or containing ``/``.
        trailing_slash: the raw path ended with ``/`` (a directory was asked for).
        query: the raw query string after ``?`` (not decoded), ``b""`` when absent.
    """

    segments: tuple[str, ...]
    trailing_slash: bool
    query: bytes

    @functools.cached_property
    def path(self) -> str:
        """The canonical decoded path: ``/`` + segments joined by ``/`` (+ ``/`` for a directory)."""
        joined = "/" + "/".join(self.segments)
        if self.trailing_slash and self.segments:
            joined += "/"
        return joined


def _bad(msg: str) -> RemoteProtocolError:
    return RemoteProtocolError(msg, hint=400)


def percent_decode(raw: bytes) -> bytes:
    """Decode ``%XX`` escapes once (RFC 3986 §2.1).

    Raises:
        RemoteProtocolError: hint 400 for a ``%`` not followed by two hex digits.
    """
    if b"%" not in raw:
        return raw
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x25:  # '%'
            pair = raw[i + 1:i + 3]
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                raise _bad("bad %-escape in the request path")
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)


def _check_segment(raw: bytes) -> str:
    low = raw.lower()
    if b"%2f" in low or b"%5c" in low:
        raise _bad("an encoded '/' or '\\' in the request path")
    decoded = percent_decode(raw)
    if any(b < 0x20 or b == 0x7F for b in decoded):
        raise _bad("a control character in the request path")
    if b"\\" in decoded:
        raise _bad("a backslash in the request path")
    if b"%" in decoded:
        raise _bad("a '%' in the decoded request path (double encoding is refused)")
    if decoded in (b".", b".."):
        raise _bad("a '.' or '..' segment in the request path")
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("the request path is not valid UTF-8 once decoded") from None
    return text


def parse_target(target: bytes, method: bytes = b"GET") -> TargetPath:
    """Split and confine an origin-form request-target (RFC 9112 §3.2).

    Args:
        target: the raw request-target from the request line.
        method: the request method (``*`` is accepted for OPTIONS only).

    Returns:
        The :class:`TargetPath`.

    Raises:
        RemoteProtocolError: hint 400, for every case listed in the module docstring.
    """
    hit = _plain_cache.get(target)
    if hit is not None:
        return hit
    if _PLAIN.fullmatch(target):  # the common case: nothing to decode, no dot segment, no query
        segments = tuple(seg.decode("ascii") for seg in target.split(b"/") if seg)
        if b"/." not in target:
            tp = TargetPath(segments, target.endswith(b"/"), b"")
            if len(target) <= PLAIN_TARGET_MAX:
                if len(_plain_cache) >= PLAIN_CACHE_SIZE:
                    _plain_cache.clear()
                _plain_cache[target] = tp  # a pure function of the target: safe to remember
            return tp
    if target == b"*" and method == b"OPTIONS":
        return TargetPath((), False, b"")
    if not target.startswith(b"/"):
        raise _bad("the request-target must start with '/' (origin-form)")
    if any(b <= 0x20 or b >= 0x7F for b in target):
        raise _bad("a control, space or non-ASCII byte in the request-target")
    path, _, query = target.partition(b"?")
    frag = path.find(b"#")
    if frag >= 0:
        raise _bad("a '#' fragment in the request-target")
    raw_segments = path.split(b"/")
    segments = tuple(_check_segment(s) for s in raw_segments if s)
    return TargetPath(segments, path.endswith(b"/"), query)
