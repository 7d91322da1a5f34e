"""The one rule for peer text: refused in text protocols, escaped visibly in logs and consoles."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socklab.core.errors import RemoteProtocolError
from socklab.protocols.text import check_peer_text, escape_peer_text, find_unsafe

ATTACKS = [
    "\x1b]0;pwned\x07\x1b[2J",  # OSC title + clear screen
    "ok\rforged line",  # CR rewrites the line shown
    "a\x9b31mred",  # C1 CSI
    "\u202eevil.txt",  # right-to-left override
    "\u2066isolate\u2069",  # bidi isolate
    "ad\u200bmin",  # zero-width space
    "x\u2028y",  # line separator
    "\x7f",
    "\ufeffbom",
]


@pytest.mark.parametrize("text", ATTACKS)
def test_every_attack_is_refused_and_escaped(text: str) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        check_peer_text(text, "quit reason")
    assert exc.value.hint == 422 and "quit reason" in str(exc.value)
    shown = escape_peer_text(text)
    assert find_unsafe(shown) is None
    assert "\\" in shown


def test_plain_text_and_unicode_pass_unchanged() -> None:
    for text in ["hello", "grüße, 世界 🙂", "tab\there", "a\\b"]:
        assert check_peer_text(text) == text
    assert escape_peer_text("grüße 世界") == "grüße 世界"
    assert escape_peer_text("a\nb") == "a\\nb"
    assert escape_peer_text("\x1b") == "\\x1b" and escape_peer_text("\u202e") == "\\u202e"


def test_tab_is_refused_when_not_allowed() -> None:
    with pytest.raises(RemoteProtocolError):
        check_peer_text("a\tb", allow_tab=False)


@given(st.text())
def test_escaped_text_never_holds_an_unsafe_character(text: str) -> None:
    assert find_unsafe(escape_peer_text(text)) is None
    if find_unsafe(text, allow_tab=True) is None:
        assert check_peer_text(text) == text
    else:
        with pytest.raises(RemoteProtocolError):
            check_peer_text(text)
