"""The line editor as pure logic: keys in, screen updates and committed lines out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telchat.rules.lineedit import BELL, CLEAR_LINE, LineEditor

LEFT, RIGHT, UP, DOWN = "\x1b[D", "\x1b[C", "\x1b[A", "\x1b[B"
HOME, END, DELETE = "\x1b[H", "\x1b[F", "\x1b[3~"
BS, DEL, CTRL_U, CTRL_W = "\x08", "\x7f", "\x15", "\x17"


def typed(*keys: str, editor: LineEditor | None = None) -> LineEditor:
    editor = editor or LineEditor()
    for key in keys:
        editor.feed(key)
    return editor


def test_plain_typing_echoes_and_commits() -> None:
    editor = LineEditor()
    assert editor.feed("hi").output == "hi"
    result = editor.feed(" there\r\n")
    assert result.lines == ["hi there"]
    assert result.output == " there" + CLEAR_LINE
    assert editor.text == ""


@pytest.mark.parametrize("enter", ["\r", "\r\n", "\r\x00", "\n"])
def test_every_enter_commits_once(enter: str) -> None:
    editor = LineEditor()
    assert editor.feed("a" + enter + "b" + enter).lines == ["a", "b"]


def test_cr_and_lf_split_across_feeds_count_once() -> None:
    editor = LineEditor()
    assert editor.feed("a\r").lines == ["a"]
    assert editor.feed("\nb\r").lines == ["b"]


@pytest.mark.parametrize("key", [BS, DEL])
def test_backspace_erases_before_cursor(key: str) -> None:
    assert typed("helo", key, key, "llo").text == "hello"


def test_backspace_at_start_does_nothing() -> None:
    assert typed("ab", HOME, BS).text == "ab"


def test_insert_in_the_middle() -> None:
    editor = typed("hllo", LEFT, LEFT, LEFT, "e")
    assert editor.text == "hello"
    assert editor.cursor == 2


def test_delete_under_cursor() -> None:
    assert typed("xhello", HOME, DELETE).text == "hello"


def test_ctrl_u_erases_to_start() -> None:
    assert typed("garbage", CTRL_U, "good").text == "good"
    assert typed("abc def", LEFT, LEFT, LEFT, CTRL_U).text == "def"


def test_ctrl_w_erases_previous_word() -> None:
    assert typed("say hello world  ", CTRL_W).text == "say hello "
    assert typed("one two", CTRL_W, CTRL_W).text == ""


def test_home_end_and_ss3_arrows() -> None:
    editor = typed("bc", HOME, "a", END, "d", "\x1bOD", "\x1bOD", "-")
    assert editor.text == "ab-cd"
    assert typed("x", "\x1b[1~", "<", "\x1b[4~", ">").text == "<x>"


def test_escape_sequence_split_across_feeds() -> None:
    editor = typed("ab", "\x1b", "[", "D", "X")
    assert editor.text == "aXb"


def test_unknown_sequences_and_controls_are_ignored() -> None:
    assert typed("a", "\x1b[99Z", "\x1bx", "\x07", "b").text == "axb"


def test_history_up_down_keeps_draft() -> None:
    editor = typed("first\r", "second\r", "dra")
    editor.feed(UP)
    assert editor.text == "second"
    editor.feed(UP)
    assert editor.text == "first"
    editor.feed(UP)
    assert editor.text == "first"
    editor.feed(DOWN)
    editor.feed(DOWN)
    assert editor.text == "dra"
    editor.feed(UP)
    assert editor.feed("!\r").lines == ["second!"]
    assert editor.history == ["first", "second", "second!"]


def test_history_skips_blank_and_repeated_lines() -> None:
    editor = typed("a\r", "a\r", "  \r", "b\r")
    assert editor.history == ["a", "b"]


def test_ctrl_c_drops_the_line() -> None:
    editor = typed("oops", "\x03")
    assert editor.text == ""
    assert editor.feed("ok\r").lines == ["ok"]


def test_redraw_places_cursor() -> None:
    editor = typed("hello", LEFT, LEFT)
    assert editor.redraw() == CLEAR_LINE + "hello\r\x1b[3C"
    assert typed("x", HOME).redraw() == CLEAR_LINE + "x\r"


def test_wide_and_combining_characters_are_measured_in_cells() -> None:
    editor = typed("中文e\u0301")
    assert editor.cursor == 3
    assert editor.cursor_column == 5
    editor.feed(BS)
    assert editor.text == "中文"
    editor.feed(LEFT)
    assert editor.cursor_column == 2


def test_emoji_zwj_sequence_is_one_grapheme() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    editor = typed("a" + family + "b", LEFT, BS)
    assert editor.text == "ab"


def test_long_line_scrolls_horizontally() -> None:
    editor = LineEditor(width=20)
    editor.feed("0123456789" * 3)
    assert editor.cursor_column <= 18
    assert len(editor.visible()) <= 19
    assert editor.visible().endswith("9")
    editor.feed(HOME)
    assert editor.cursor_column == 0
    assert editor.visible().startswith("0123")
    assert editor.feed("\r").lines == ["0123456789" * 3]


def test_resize_redraws_and_keeps_cursor_visible() -> None:
    editor = typed("x" * 70)
    out = editor.resize(30)
    assert out.startswith(CLEAR_LINE)
    assert editor.cursor_column < 29
    assert LineEditor().resize(10) == ""


def test_line_length_is_capped_with_bell() -> None:
    editor = LineEditor(max_chars=5)
    out = editor.feed("abcdefg").output
    assert editor.text == "abcde"
    assert BELL in out
    assert BELL in editor.feed("h").output


def test_tab_becomes_space() -> None:
    assert typed("a\tb").text == "a b"


KEYS = ["a", "я", "中", " ", LEFT, RIGHT, HOME, END, BS, DEL, DELETE, CTRL_U, CTRL_W, UP, "\r"]


@given(st.lists(st.sampled_from(KEYS)))
def test_any_key_sequence_keeps_state_consistent(keys: list[str]) -> None:
    editor = LineEditor(width=10)
    for key in keys:
        editor.feed(key)
        assert 0 <= editor.cursor <= len(editor.text)
        assert 0 <= editor.cursor_column < editor.width
