"""The sanitizer, without sockets."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telchat.sanitize import sanitize

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
