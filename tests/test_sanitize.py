"""The sanitizer, without sockets."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telchat.rules.sanitize import sanitize

BIDI = {chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]}


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("plain text", "plain text"),
        ("\x1b[31mred\x1b[0m", "red"),
        ("\x1b]52;c;ZXZpbA==\x07after", "after"),
        ("\x1b]0;title\x1b\\after", "after"),
        ("\x1bPdcs payload\x1b\\after", "after"),
        ("\x9b31mC1 CSI", "C1 CSI"),
        ("\x9d0;title\x9cafter", "after"),
        ("a\tb", "a b"),
        ("bell\x07", "bell"),
        ("back\x08space", "backspace"),
        ("del\x7f", "del"),
        ("\u202eevil\u202c", "evil"),
        ("\u2066iso\u2069", "iso"),
        ("zero\u200bwidth\ufeff", "zerowidth"),
        ("family \U0001f468\u200d\U0001f469\u200d\U0001f467", "family \U0001f468\u200d\U0001f469\u200d\U0001f467"),
        ("a\u200db", "ab"),
        ("truncated \x1b[", "truncated "),
        ("\x1b", ""),
        ("привет", "привет"),
    ],
)
def test_examples(raw: str, clean: str) -> None:
    assert sanitize(raw) == clean


@given(st.text())
def test_no_control_or_bidi_survives(text: str) -> None:
    out = sanitize(text)
    for ch in out:
        category = unicodedata.category(ch)
        assert category not in ("Cc", "Cs", "Zl", "Zp"), repr(ch)
        assert ch not in BIDI
        assert category != "Cf" or ch == "\u200d"


@given(st.text())
def test_idempotent(text: str) -> None:
    once = sanitize(text)
    assert sanitize(once) == once


# Text that is mostly the dangerous parts: hypothesis' plain st.text() rarely builds a whole
# escape sequence, so it is given the pieces to build them from.
PIECES = [
    "\x1b", "[", "]", "P", "X", "^", "_", "\\", "\x07", "\x9b", "\x9c", "\x9d", "\x90",
    "0", "1", ";", "?", "m", "H", "J", "\x00", "\t", "\r", "\n", "\x7f", "\x85",
    "\u202a", "\u202e", "\u2066", "\u2069", "\u200b", "\u200d", "\u200e", "\ufeff", "\u00ad",
    "\u2028", "\U000e0041", "\U0001f468", "\U0001f3fd", "\ufe0f", "a", "я", " ",
]  # fmt: skip
hostile = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)
printable = st.text(st.characters(categories=["L", "N", "P", "Zs", "Sm", "Sc"]), max_size=30)


@given(st.one_of(hostile, st.text()))
def test_hostile_text_comes_out_inert_and_stable(text: str) -> None:
    out = sanitize(text)
    assert "\x1b" not in out
    for ch in out:
        category = unicodedata.category(ch)
        assert category not in ("Cc", "Cs", "Zl", "Zp"), repr(ch)
        assert ch not in BIDI
        assert category != "Cf" or ch == "\u200d"
    assert sanitize(out) == out


@given(printable)
def test_plain_text_is_never_changed(text: str) -> None:
    assert sanitize(text) == text


SEQUENCES = ["\x1b[31m", "\x1b[2J", "\x1b]0;title\x07", "\x1b]52;c;ZXZpbA==\x1b\\", "\x1bPq#0\x1b\\", "\x9b1m", "\x1bc"]


@given(before=printable, sequence=st.sampled_from(SEQUENCES), after=printable)
def test_a_whole_sequence_goes_and_the_text_around_it_stays(before: str, sequence: str, after: str) -> None:
    assert sanitize(before + sequence + after) == before + after


@given(st.lists(st.text(max_size=10), max_size=5))
def test_sanitizing_parts_equals_sanitizing_whole_when_parts_are_clean(parts: list[str]) -> None:
    clean = [sanitize(part) for part in parts]
    assert sanitize("".join(clean)) == "".join(clean)
