"""Parsing the HTTP ``Range`` header (RFC 9110 §14) into byte spans of a representation.

Why this exists: resumable downloads and media seeking rely on ``Range: bytes=...``. The grammar
has corners (suffix ranges ``-500``, open ranges ``9500-``, lists) and one abuse: a client asking
for thousands of overlapping ranges to multiply the work. This module turns the header into a
short, sorted, non-overlapping list of ``(start, end_inclusive)`` spans, or says to ignore the
header, or says it is unsatisfiable (416).
"""

from __future__ import annotations

from socklab.core.errors import RemoteProtocolError

__all__ = ["MAX_RANGES", "Unsatisfiable", "parse_range"]

MAX_RANGES = 16  # more ranges than this: the header is ignored and the whole file is sent


class Unsatisfiable(RemoteProtocolError):
    """No requested range overlaps the representation: answer 416 (RFC 9110 §15.5.17)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, hint=416)


def _int(text: str) -> int:
    if not text or not text.isascii() or not text.isdigit() or len(text) > 18:
        raise ValueError(text)
    return int(text)


def parse_range(header: str | bytes, size: int) -> list[tuple[int, int]] | None:
    """The byte spans a ``Range`` header asks of a representation of ``size`` bytes.

    Args:
        header: the field value, e.g. ``"bytes=0-99,-100"``.
        size: the length of the whole representation.

    Returns:
        Sorted, merged ``(first, last)`` inclusive spans, or ``None`` when the header must be
        ignored (another unit, bad syntax, too many ranges: RFC 9110 §14.2 lets a server ignore it).

    Raises:
        Unsatisfiable: the syntax is valid but no span overlaps the representation (416).
    """
    if isinstance(header, bytes):
        try:
            header = header.decode("ascii")
        except UnicodeDecodeError:
            return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    parts = [p.strip() for p in spec.split(",")]
    parts = [p for p in parts if p]
    if not parts or len(parts) > MAX_RANGES:
        return None
    spans: list[tuple[int, int]] = []
    try:
        for part in parts:
            first_s, dash, last_s = part.partition("-")
            if not dash:
                return None
            if not first_s:  # suffix-range: the last N bytes (RFC 9110 §14.1.1)
                n = _int(last_s)
                if n == 0 or size == 0:
                    continue
                spans.append((max(0, size - n), size - 1))
                continue
            first = _int(first_s)
            last = _int(last_s) if last_s else None
            if last is not None and last < first:
                return None  # invalid range-spec: the whole header is ignored
            if first >= size:
                continue
            spans.append((first, size - 1 if last is None else min(last, size - 1)))
    except ValueError:
        return None
    if not spans:
        raise Unsatisfiable(f"no range of {header!r} overlaps the {size} bytes")
    spans.sort()
    merged = [spans[0]]
    for first, last in spans[1:]:
        prev_first, prev_last = merged[-1]
        if first <= prev_last + 1:
            merged[-1] = (prev_first, max(prev_last, last))
        else:
            merged.append((first, last))
    return merged
