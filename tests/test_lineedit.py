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
    assert out.endswith(editor.redraw()) and editor.redraw().startswith(CLEAR_LINE)
    assert editor.cursor_column < 29
    assert LineEditor().resize(10) == ""


def test_line_length_is_capped_with_bell() -> None:
    editor = LineEditor(max_bytes=5)
    out = editor.feed("abcdefg").output
    assert editor.text == "abcde"
    assert BELL in out
    assert BELL in editor.feed("h").output


def test_the_cap_counts_bytes_of_the_charset() -> None:
    """The server's limit is in bytes: Cyrillic takes two each in UTF-8, one in cp1251."""
    editor = LineEditor(max_bytes=5)
    assert BELL in editor.feed("жжж").output
    assert editor.text == "жж" and editor.length == 4
    editor.set_charset("cp1251")
    assert editor.length == 2
    assert BELL not in editor.feed("жжж").output
    assert editor.text == "жжжжж"


def test_tab_becomes_space() -> None:
    assert typed("a\tb").text == "a b"


KEYS = ["a", "я", "中", " ", "\u0301", "\u200d", "👍", LEFT, RIGHT, HOME, END, BS, DEL, DELETE, CTRL_U, CTRL_W, UP]
KEYS += ["\x1bb", "\x1bf", "\x1bd", "\x1b\x7f", "\x1b[1;5D", "\x1b[1;5C", "\x0b", "\t", "\r"]


@given(st.lists(st.sampled_from(KEYS)))
def test_any_key_sequence_keeps_state_consistent(keys: list[str]) -> None:
    editor = LineEditor(width=10)
    editor.complete = lambda before, word: ["alpha", "alps", "beta"]
    editor.set_prompt("[#r] ")
    for key in keys:
        editor.feed(key)
        assert 0 <= editor.cursor <= len(editor.text) <= len(editor.text.encode()) == editor.length
        assert 0 <= editor.cursor_column < editor.width


# readline keys (issue 14, item 10)

ALT_B, ALT_F, ALT_D, ALT_BS = "\x1bb", "\x1bf", "\x1bd", "\x1b\x7f"
CTRL_LEFT, CTRL_RIGHT, ALT_LEFT = "\x1b[1;5D", "\x1b[1;5C", "\x1b[1;3D"
CTRL_A, CTRL_E, CTRL_K, TAB = "\x01", "\x05", "\x0b", "\t"


@pytest.mark.parametrize("back", [ALT_B, CTRL_LEFT, ALT_LEFT])
@pytest.mark.parametrize("forward", [ALT_F, CTRL_RIGHT])
def test_word_motion(back: str, forward: str) -> None:
    editor = typed("say hello, world", back)
    assert editor.cursor == len("say hello, ")
    typed(back, back, editor=editor)
    assert editor.cursor == 0
    typed(forward, editor=editor)
    assert editor.cursor == len("say")
    typed(forward, "!", editor=editor)
    assert editor.text == "say hello!, world"


def test_alt_d_and_alt_backspace_kill_words() -> None:
    editor = typed("one two three", CTRL_A, ALT_D)
    assert (editor.text, editor.cursor) == (" two three", 0)
    typed(CTRL_E, ALT_BS, editor=editor)
    assert editor.text == " two "
    editor = typed("a-b c-d", CTRL_W)
    assert editor.text == "a-b ", "Ctrl-W erases back to whitespace, as readline does"


def test_ctrl_a_ctrl_e_ctrl_k() -> None:
    editor = typed("hello world", CTRL_A, "> ", CTRL_E, "!")
    assert editor.text == "> hello world!"
    typed(CTRL_A, ALT_F, CTRL_K, editor=editor)
    assert editor.text == "> hello"


def completer(before: str, word: str) -> list[str]:
    names = ["join", "who", "whois", "help"] if not before.strip() else ["frank", "fred", "#frank_talk"]
    return [name for name in names if name.lower().startswith(word.lower())]


def test_tab_completes_a_unique_word_with_a_space() -> None:
    editor = LineEditor()
    editor.complete = completer
    typed("jo", TAB, editor=editor)
    assert editor.text == "join "
    typed("#f", TAB, editor=editor)
    assert editor.text == "join #frank_talk "


def test_tab_completes_the_common_part_then_shows_the_choices() -> None:
    editor = LineEditor()
    editor.complete = completer
    typed("hi #", editor=editor)
    assert editor.feed(TAB).output == CLEAR_LINE + "hi #frank_talk " + "\r\x1b[15C"
    typed(CTRL_U, "hi f", editor=editor)
    assert editor.feed(TAB).output == CLEAR_LINE + "hi fr" + "\r\x1b[5C", "the part they share"
    # Nothing more in common: the choices are shown above the input line, which stays.
    assert editor.feed(TAB).output == CLEAR_LINE + "frank  fred\r\n" + CLEAR_LINE + "hi fr\r\x1b[5C"
    assert editor.text == "hi fr"
    assert BELL in editor.feed("x" + TAB).output, "nothing to complete"


def test_prompt_shows_before_input_only_while_typing() -> None:
    editor = LineEditor(width=40)
    assert editor.set_prompt("[#frank_talk] ") == ""
    assert editor.feed("hi").output == "[#frank_talk] hi"
    assert editor.cursor_column == len("[#frank_talk] hi")
    assert editor.redraw() == CLEAR_LINE + "[#frank_talk] hi\r\x1b[16C"
    assert editor.set_prompt("[#one] ") == CLEAR_LINE + "[#one] hi\r\x1b[9C"
    assert editor.feed("\r").lines == ["hi"]
    assert editor.redraw() == CLEAR_LINE


def test_prompt_is_left_out_on_a_narrow_terminal() -> None:
    editor = LineEditor(width=16)
    editor.set_prompt("[#frank_talk] ")
    assert editor.feed("hi").output == "hi"


# cost (issue 13, finding 1): a bounded amount of work per key, whatever the line's length


def test_history_walks_and_scattered_inserts_measure_each_grapheme_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import telchat.rules.lineedit as lineedit

    calls = 0
    real = lineedit.width

    def counted(text: str) -> int:
        nonlocal calls
        calls += 1
        return real(text)

    monkeypatch.setattr(lineedit, "width", counted)
    editor = LineEditor(width=80, max_bytes=2000)
    editor.feed("x" * 1000 + "\r")
    calls = 0
    result = editor.feed((UP + DOWN) * 10_000)
    assert calls == 0, "walking the history measures nothing again"
    assert result.keys == 20_000
    typed(UP, editor=editor)
    # One character at a time, NULs between (as a hostile client sends them), mid-line.
    editor.feed(HOME)
    calls = 0
    editor.feed("\x00".join("y" * 500))
    assert calls <= 3 * 500, "each insert measures only the graphemes next to it"


def test_narrowing_erases_the_rows_the_old_line_was_wrapped_onto() -> None:
    editor = typed("x" * 70)  # 80 columns: drawn on one row, cursor at column 70
    assert editor.resize(30) == "\r\x1b[2A\x1b[J" + editor.redraw(), "wrapped onto 3 rows, cursor on the third"
    assert editor.resize(60).startswith(CLEAR_LINE), "widened: one row, redrawn in place"


def test_narrowing_to_a_width_the_line_fills_exactly_erases_no_row_above_it() -> None:
    # A cursor just past a line filling its rows exactly stays on the last (tmux): going up
    # as many rows as a longer line needs would erase the line of chat above the input.
    editor = typed("x" * 60)  # cursor at column 60
    assert editor.resize(30) == "\r\x1b[1A\x1b[J" + editor.redraw(), "two full rows, cursor on the second"
    editor = typed("x" * 30)
    assert editor.resize(30) == "\r\x1b[J" + editor.redraw(), "one full row: nothing above it to erase"
    # With text after the cursor, the cell under it starts a row of its own.
    editor = typed("x" * 60 + LEFT * 30)
    assert editor.resize(30) == "\r\x1b[1A\x1b[J" + editor.redraw(), "the cursor on the second row"


def test_lines_that_give_a_password_stay_out_of_the_history() -> None:
    from telchat.session.commands import holds_password

    given = ["login bob pw", "/nick bob pw ghost", "register pw", "PASSWORD old new", "password old"]
    kept = ["login bob", "register", "//register pw", "say register pw", "hello pw", ""]
    assert [line for line in given + kept if holds_password(line)] == given
    editor = LineEditor()
    editor.private = holds_password
    for line in ("join one", "register pw", "hello"):
        editor.feed(line + "\r")
    assert editor.history == ["join one", "hello"]


def test_narrowing_with_the_cursor_moved_left_erases_the_rows_after_it() -> None:
    # The cursor on the first of the rows the old line was wrapped onto: those after it
    # are pieces of the old line, which a chat line would then be written over.
    editor = typed("x" * 53 + LEFT * 46)  # cursor at column 7 of 53
    assert editor.resize(20) == "\r\x1b[J" + editor.redraw()
    assert editor.resize(40).startswith(CLEAR_LINE), "widened: nothing below to erase"
