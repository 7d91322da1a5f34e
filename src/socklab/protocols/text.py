"""Text from a peer, made safe for terminals: one rule, one helper, used everywhere.

Why this exists: a terminal obeys the bytes it is given. A chat message, a quit reason, a peer's
nick or a file name that carries ``ESC ] 0 ; ... BEL`` retitles the window, ``ESC [ 2 J`` clears the
screen, a CR rewrites the line already shown (so a peer can forge ``received fake.txt: verified``),
a C1 ``CSI`` (U+009B) does what ``ESC [`` does on many terminals, and bidi overrides make text read
differently from what it is (the class of CVE-2021-42574, "Trojan Source"). Zero-width characters
make two different names look the same.

So socklab keeps one rule for all text that came from the network:

- protocols whose payload *is* text (chat lines, nicks, reasons, gossip messages) **refuse** it
  with :func:`check_peer_text` (a :class:`RemoteProtocolError` with hint 422, the chat's "invalid
  name or text");
- logs and consoles that must show what arrived anyway (file names, addresses, errors quoting peer
  data) **escape** it visibly with :func:`escape_peer_text`: ``\\x1b``, ``\\u202e``, ``\\n``.

What is unsafe, by code point:

=================  ==========================================================
U+0000-U+001F      C0 controls (TAB is allowed in text protocols only)
U+007F-U+009F      DEL and the C1 controls (U+009B is CSI)
U+200B-U+200F      zero-width space/non-joiner/joiner, LRM, RLM
U+2028, U+2029     line and paragraph separators (a line break to some viewers)
U+202A-U+202E      bidi embeddings and overrides
U+2060-U+2064      word joiner and invisible operators
U+2066-U+2069      bidi isolates
U+061C, U+180E     Arabic letter mark, Mongolian vowel separator
U+FEFF             zero-width no-break space (BOM)
=================  ==========================================================

Pure functions, no I/O: protocols import this module too.
"""

from __future__ import annotations

import re

from socklab.core.errors import RemoteProtocolError

__all__ = ["UNSAFE_CHARS", "check_peer_text", "escape_peer_text", "find_unsafe"]

_NOT_C0 = "\x7f-\x9f\u061c\u180e\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
UNSAFE_CHARS = "\x00-\x1f" + _NOT_C0
_UNSAFE = re.compile(f"[{UNSAFE_CHARS}]")
_UNSAFE_BUT_TAB = re.compile(f"[\x00-\x08\x0a-\x1f{_NOT_C0}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def find_unsafe(text: str, *, allow_tab: bool = False) -> str | None:
    """The first character of ``text`` a terminal must not receive raw, or None if there is none."""
    m = (_UNSAFE_BUT_TAB if allow_tab else _UNSAFE).search(text)
    return m.group() if m else None


def check_peer_text(text: str, what: str = "text", *, allow_tab: bool = True) -> str:
    """Refuse text that carries controls, bidi overrides or zero-width characters.

    Args:
        text: what the peer sent, already decoded.
        what: names the field in the error ("message", "quit reason", "nick").
        allow_tab: TAB is harmless on a terminal and common in pasted text.

    Returns:
        ``text`` unchanged.

    Raises:
        RemoteProtocolError: hint 422, naming the field and the offending code point.
    """
    bad = find_unsafe(text, allow_tab=allow_tab)
    if bad is not None:
        raise RemoteProtocolError(
            f"{what} holds U+{ord(bad):04X}: control, bidi and zero-width characters are not allowed",
            hint=422)
    return text


def _escape_one(m: re.Match[str]) -> str:
    ch = m.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_peer_text(text: object) -> str:
    """``text`` (any object; ``str()`` is taken) with every unsafe character shown as an escape.

    ``"a\\x1b[2Jb\\n"`` becomes ``a\\x1b[2Jb\\n`` spelled out with backslashes, so a log line or a
    console line always shows what arrived and never obeys it. Safe text is returned unchanged.
    """
    s = text if isinstance(text, str) else str(text)
    return _UNSAFE.sub(_escape_one, s)
