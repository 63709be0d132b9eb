"""A server-side line editor for character-mode terminals. Pure state: text in, text out.

`LineEditor.feed` takes what the person typed (already decoded) and returns what to send
back to their terminal (echo, cursor moves and redraws as ANSI/VT100 sequences), the
lines they committed with Enter, and how many editing keys it ran (`Feed.keys`, which the
connection charges to its telnet-command budget). The input line lives on the terminal's
last line, after an optional `prompt` (the current room) shown while something is typed;
it is measured in terminal cells (wide characters count 2, combining marks 0, an emoji ZWJ
sequence is one grapheme) and scrolls horizontally when it is wider than the terminal.

Keys, as readline has them: printable text inserts at the cursor; Backspace (BS or DEL)
and Delete (Ctrl-D) erase; Ctrl-U erases to the start, Ctrl-K to the end, Ctrl-W and
Alt-Backspace the word before the cursor, Alt-d the word after it; Left/Right (Ctrl-B/F),
Home/End (Ctrl-A/E) move, and Alt-b/Alt-f, Ctrl-Left/Ctrl-Right (and Alt-Left/Right) move
by word; Up/Down (Ctrl-P/N) walk the history; Tab completes the word before the cursor
(when a completer is set); Ctrl-C drops the line; Ctrl-L redraws; Enter (CR, CR LF, CR NUL
or LF) commits.

Cost: each key does a bounded amount of Python work whatever the line's length. A grapheme
is measured once, when it is typed (history entries keep their measurements); an insert or
erase re-segments only the graphemes next to it; scrolling and drawing happen once per
`feed`, not per key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wcwidth import iter_graphemes, width

CLEAR_LINE = "\r\x1b[K"
BELL = "\x07"
MIN_WIDTH = 8
# Ambiguous Tab completions shown at most (a hint, not a listing).
MAX_SHOWN = 12
_ESC = "\x1b"
_MAX_SEQUENCE = 16
_ZWJ = "\u200d"
# Keys sent as CSI/SS3 sequences: final byte (and numeric parameter for `~` keys) -> action.
_SEQUENCE_KEYS = {
    "A": "up",
    "B": "down",
    "C": "right",
    "D": "left",
    "H": "home",
    "F": "end",
    "1~": "home",
    "7~": "home",
    "4~": "end",
    "8~": "end",
    "3~": "delete",
}
# With a Ctrl or Alt modifier (CSI 1;5C, CSI 1;3D, rxvt's CSI 5C...), arrows move by word.
_WORD_KEYS = {"C": "word_right", "D": "word_left"}
# ESC followed by a key: Alt (Meta) as terminals send it.
_ALT_KEYS = {
    "b": "word_left",
    "f": "word_right",
    "d": "kill_word_end",
    "\x7f": "kill_word_back",
    "\x08": "kill_word_back",
}
_CONTROL_KEYS = {
    "\x01": "home",
    "\x02": "left",
    "\x03": "cancel",
    "\x04": "delete",
    "\x05": "end",
    "\x06": "right",
    "\x08": "backspace",
    "\t": "complete",
    "\x0b": "kill_end",
    "\x0c": "redraw",
    "\x0e": "down",
    "\x10": "up",
    "\x15": "kill_start",
    "\x17": "kill_word",
    "\x7f": "backspace",
}
_MOVES = frozenset({"left", "right", "home", "end", "word_left", "word_right"})
_ERASES = frozenset({"backspace", "delete", "kill_end", "kill_start", "kill_word", "kill_word_back", "kill_word_end"})

#: Candidates for the word being completed: (the line before that word, the word).
Completer = Callable[[str, str], Sequence[str]]


@dataclass(slots=True)
class Feed:
    """The result of one `LineEditor.feed`: text to send to the terminal, committed lines,
    and the number of editing keys (not plain text) it ran."""

    output: str = ""
    lines: list[str] = field(default_factory=list)
    keys: int = 0


@dataclass(frozen=True, slots=True)
class _Entry:
    """A history line, measured once."""

    graphemes: tuple[str, ...]
    cells: tuple[int, ...]
    #: Its bytes in the editor's charset, for the `max_bytes` limit.
    size: int

    @property
    def text(self) -> str:
        return "".join(self.graphemes)


_EMPTY = _Entry((), (), 0)


def _cells(grapheme: str) -> int:
    return max(0, width(grapheme))


def _insertable(ch: str) -> bool:
    # ZWJ is a format character, but emoji sequences need it to stay one grapheme.
    return ch.isprintable() or ch == _ZWJ


def _segment(text: str) -> list[str]:
    return list(iter_graphemes(text))


def _size(text: str, charset: str) -> int:
    return len(text.encode(charset, "replace"))


def _measured(text: str, charset: str) -> _Entry:
    graphemes = tuple(_segment(text))
    return _Entry(graphemes, tuple(_cells(g) for g in graphemes), _size(text, charset))


class LineEditor:
    __slots__ = (
        "_after_cr",
        "_bytes",
        "_cells",
        "_cursor",
        "_draft",
        "_graphemes",
        "_history",
        "_history_at",
        "_history_size",
        "_offset",
        "_pending_escape",
        "_prompt",
        "_prompt_cells",
        "charset",
        "complete",
        "max_bytes",
        "private",
        "secret",
        "width",
    )

    def __init__(self, width: int = 80, history_size: int = 100, max_bytes: int = 1024, charset: str = "utf-8") -> None:
        self.width = max(width, MIN_WIDTH)
        self.max_bytes = max_bytes
        #: What the line is measured in (`set_charset`): the server's limit is in its bytes.
        self.charset = charset
        self._history_size = history_size
        self._history: list[_Entry] = []
        # Position while walking the history; len(history) means "the line being typed".
        self._history_at = 0
        self._draft = _EMPTY
        # Lists while edited; a history entry's tuples while walked to (copied on the first edit).
        self._graphemes: Sequence[str] = []
        self._cells: Sequence[int] = []
        # Bytes of the line in `charset`, for the `max_bytes` limit.
        self._bytes = 0
        self._cursor = 0
        self._offset = 0
        self._pending_escape = ""
        self._after_cr = False
        self._prompt = ""
        self._prompt_cells = 0
        # A password is being typed: it must never be recalled with Up.
        self.secret = False
        # Tab completion; without one, Tab types a space.
        self.complete: Completer | None = None
        # Which lines hold a password (`login nick pw`): never kept for Up to show again.
        self.private: Callable[[str], bool] | None = None

    # state

    @property
    def text(self) -> str:
        return "".join(self._graphemes)

    @property
    def length(self) -> int:
        """Bytes typed into the line, in its charset."""
        return self._bytes

    def set_charset(self, charset: str) -> None:
        """The user's charset is now `charset`: what is typed and remembered is measured in it."""
        if charset == self.charset:
            return
        self.charset = charset
        self._bytes = _size(self.text, charset)
        self._history = [_Entry(e.graphemes, e.cells, _size(e.text, charset)) for e in self._history]
        self._draft = _Entry(self._draft.graphemes, self._draft.cells, _size(self._draft.text, charset))

    @property
    def typing(self) -> bool:
        """Whether anything is typed (the input line is on screen)."""
        return bool(self._graphemes)

    @property
    def cursor(self) -> int:
        """The cursor position, in graphemes from the start of the line."""
        return self._cursor

    @property
    def cursor_column(self) -> int:
        """The terminal column (0-based) the cursor is drawn at, prompt included."""
        return self._shown_prompt_cells() + sum(self._cells[self._offset : self._cursor])

    @property
    def history(self) -> list[str]:
        return [entry.text for entry in self._history]

    @property
    def prompt(self) -> str:
        return self._prompt

    def set_prompt(self, prompt: str) -> str:
        """Show `prompt` before the input; returns the redraw it needs, if any."""
        if prompt == self._prompt:
            return ""
        self._prompt = prompt
        self._prompt_cells = sum(_cells(g) for g in iter_graphemes(prompt))
        self._scroll()
        return self.redraw() if self._graphemes else ""

    def snapshot(self) -> dict[str, Any]:
        """Everything typed and remembered, as plain data (a server upgrade carries it)."""
        return {
            "width": self.width,
            "text": self.text,
            "cursor": self._cursor,
            "offset": self._offset,
            "history": self.history,
            "history_at": self._history_at,
            "draft": self._draft.text,
            "prompt": self._prompt,
            "pending_escape": self._pending_escape,
            "after_cr": self._after_cr,
            "secret": self.secret,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take up a `snapshot`: the same line, cursor, scroll and history."""
        self.width = max(int(state["width"]), MIN_WIDTH)
        line = _measured(str(state["text"]), self.charset)
        self._graphemes, self._cells, self._bytes = list(line.graphemes), list(line.cells), line.size
        self._cursor = min(int(state["cursor"]), len(self._graphemes))
        self._offset = min(int(state["offset"]), self._cursor)
        self._history = [_measured(str(text), self.charset) for text in state["history"]][-self._history_size :]
        self._history_at = min(int(state["history_at"]), len(self._history))
        self._draft = _measured(str(state["draft"]), self.charset)
        self._prompt = str(state["prompt"])
        self._prompt_cells = sum(_cells(g) for g in iter_graphemes(self._prompt))
        self._pending_escape = str(state["pending_escape"])
        self._after_cr = bool(state["after_cr"])
        self.secret = bool(state["secret"])

    # drawing

    def _shown_prompt_cells(self) -> int:
        # On a terminal too narrow for the prompt and some input, the prompt is left out.
        return self._prompt_cells if self._prompt_cells + MIN_WIDTH <= self.width else 0

    def _room(self) -> int:
        return self.width - 1 - self._shown_prompt_cells()

    def visible(self) -> str:
        """The part of the line shown on screen: from the scroll offset, as much as fits."""
        return "".join(self._graphemes[self._offset : self._visible_end()])

    def _visible_end(self) -> int:
        room = self._room()
        used = 0
        end = self._offset
        while end < len(self._graphemes) and used + self._cells[end] <= room:
            used += self._cells[end]
            end += 1
        return end

    def redraw(self) -> str:
        """Draw the whole input line and put the cursor where it belongs."""
        if not self._graphemes:
            return CLEAR_LINE
        column = self.cursor_column
        prompt = self._prompt if self._shown_prompt_cells() else ""
        return CLEAR_LINE + prompt + self.visible() + "\r" + (f"\x1b[{column}C" if column else "")

    def resize(self, width: int) -> str:
        """The terminal is now `width` columns wide: the redraw that needs (every change
        needs one, widening too; the same width, none).

        Narrowed, a terminal that reflows its lines (most do: VTE, kitty, tmux, Windows
        Terminal, the web page's xterm.js) has wrapped the old input line onto several
        rows, with the cursor on one of them: go up to the first and erase from there down
        (the input line is the last thing on screen), so no piece of it stays behind in the
        scrollback. A cursor just past the end of a line that fills its rows exactly waits
        at the end of the last (tmux), or is on a row of its own: going up one row too few
        at worst leaves a piece of the old input line, one too many would erase a line of
        chat, so it counts as the former.
        """
        width = max(width, MIN_WIDTH)
        if width == self.width:
            return ""
        narrowed = width < self.width
        up = self._rows_above(width) if narrowed and self._graphemes else 0
        self.width = width
        self._scroll()
        if not self._graphemes:
            return ""
        if not narrowed:
            return self.redraw()
        # Down from the line's first row: the rows after the cursor's go too (the cursor may
        # sit on the first, moved left).
        return "\r" + (f"\x1b[{up}A" if up else "") + "\x1b[J" + self.redraw()

    def _rows_above(self, width: int) -> int:
        """The rows above the cursor's once the drawn line is reflowed to `width` columns."""
        column = self.cursor_column
        at_end = self._cursor == self._visible_end()
        return column // width - (1 if at_end and column and column % width == 0 else 0)

    # input

    def feed(self, text: str) -> Feed:
        result = Feed()
        redraw = False
        i = 0
        text = self._pending_escape + text
        self._pending_escape = ""
        while i < len(text):
            ch = text[i]
            if self._after_cr:
                self._after_cr = False
                if ch in "\n\x00":
                    i += 1
                    continue
            if ch in "\r\n":
                self._after_cr = ch == "\r"
                redraw = False  # the line is cleared: what earlier keys did to it is moot
                result.output += CLEAR_LINE if self._graphemes else ""
                result.lines.append(self._commit())
                i += 1
            elif ch == _ESC or (ch in _CONTROL_KEYS and not (ch == "\t" and self.complete is None)):
                key, i = self._read_sequence(text, i) if ch == _ESC else (_CONTROL_KEYS[ch], i + 1)
                if key:
                    result.keys += 1
                    redraw |= self._act(key, result)
            else:
                i, redraw = self._type(text, i, redraw, result)
        if redraw:
            self._scroll()
            result.output += self.redraw()
        return result

    def _type(self, text: str, start: int, redraw: bool, result: Feed) -> tuple[int, bool]:
        """Insert the printable run at `start` (any other control character is skipped);
        return the index after it and whether the line needs a redraw."""
        end = start
        tab_types = self.complete is None
        while end < len(text) and (_insertable(text[end]) or (tab_types and text[end] == "\t")):
            end += 1
        if end == start:
            return start + 1, redraw
        run = text[start:end].replace("\t", " ")
        if redraw:  # earlier keys moved things: this run is drawn with them
            self._insert(run, result)
            return end, True
        return end, self._insert_echoing(run, result)

    def _read_sequence(self, text: str, start: int) -> tuple[str, int]:
        """Parse an escape sequence at `start`; return (action or "", index after it)."""
        if start + 1 >= len(text):
            self._pending_escape = text[start:]
            return "", len(text)
        second = text[start + 1]
        if second not in "[O":
            return _ALT_KEYS.get(second, ""), start + 2 if second in _ALT_KEYS else start + 1
        end = start + 2
        while end < len(text) and "0" <= text[end] <= "?":
            end += 1
        if end >= len(text):
            if end - start < _MAX_SEQUENCE:
                self._pending_escape = text[start:]
            return "", len(text)
        params = text[start + 2 : end].split(";")
        final = text[end]
        if final in _WORD_KEYS and params[-1] in ("3", "5", "9"):
            return _WORD_KEYS[final], end + 1
        return _SEQUENCE_KEYS.get(params[0] + final if final == "~" else final, ""), end + 1

    # editing

    def _splice(self, start: int, stop: int, text: str) -> None:
        """Replace graphemes [start, stop) with `text`; the cursor ends after `text`.

        Only the graphemes on either side are segmented again with it: what is typed can
        join them (a combining mark, a ZWJ), and an erase can let them join each other.
        """
        graphemes, cells = self._graphemes, self._cells
        if not isinstance(graphemes, list) or not isinstance(cells, list):
            # A history entry walked to: this line gets its own copy, once.
            graphemes, cells = self._graphemes, self._cells = list(graphemes), list(cells)
        low, high = max(0, start - 1), min(len(graphemes), stop + 1)
        before = "".join(graphemes[low:start]) + text
        joined = _segment(before + "".join(graphemes[stop:high]))
        self._bytes += _size(text, self.charset) - _size("".join(graphemes[start:stop]), self.charset)
        graphemes[low:high] = joined
        cells[low:high] = [_cells(g) for g in joined]
        # The cursor goes after the grapheme that holds the end of `text`.
        length, index = 0, low
        for grapheme in joined:
            if length >= len(before):
                break
            length += len(grapheme)
            index += 1
        self._cursor = index

    def _fit(self, run: str, result: Feed) -> str:
        """As much of `run` as fits the limit, in bytes of the charset (a BEL if not all)."""
        room = self.max_bytes - self._bytes
        if _size(run, self.charset) <= room:
            return run
        result.output += BELL
        for end, ch in enumerate(run):
            room -= _size(ch, self.charset)
            if room < 0:
                return run[:end]
        return run

    def _insert(self, run: str, result: Feed) -> None:
        run = self._fit(run, result)
        if run:
            self._splice(self._cursor, self._cursor, run)

    def _insert_echoing(self, run: str, result: Feed) -> bool:
        """Insert `run`; echo it as is when it goes at the end and fits, else return True
        (the line needs a redraw)."""
        at_end = self._cursor == len(self._graphemes)
        empty = not self._graphemes
        run = self._fit(run, result)
        if not run:
            return False
        self._splice(self._cursor, self._cursor, run)
        if not at_end or sum(self._cells[self._offset : self._cursor]) >= self._room():
            return True
        if empty and self._shown_prompt_cells():
            result.output += self._prompt
        result.output += run
        return False

    def _act(self, key: str, result: Feed) -> bool:
        """Run one editing key; return whether the line needs a redraw."""
        if key in ("up", "down"):
            return self._walk_history(-1 if key == "up" else 1)
        if key in _MOVES:
            before = self._cursor
            self._cursor = self._moved(key)
            return self._cursor != before
        if key in _ERASES:
            start, stop = self._erase_range(key)
            if start == stop:
                return False
            self._splice(start, stop, "")
            return True
        if key == "complete":
            return self._complete(result)
        if key == "cancel":
            self._clear()
            self._history_at = len(self._history)
            return True
        return key == "redraw"

    def _moved(self, key: str) -> int:
        cursor, end = self._cursor, len(self._graphemes)
        if key == "left":
            return max(0, cursor - 1)
        if key == "right":
            return min(end, cursor + 1)
        if key == "home":
            return 0
        if key == "end":
            return end
        if key == "word_left":
            return self._word_start(_word)
        return self._word_end()

    def _erase_range(self, key: str) -> tuple[int, int]:
        cursor, end = self._cursor, len(self._graphemes)
        if key == "backspace":
            return max(0, cursor - 1), cursor
        if key == "delete":
            return cursor, min(end, cursor + 1)
        if key == "kill_end":
            return cursor, end
        if key == "kill_start":
            return 0, cursor
        if key == "kill_word_end":
            return cursor, self._word_end()
        # Ctrl-W erases back to whitespace, as readline's unix-word-rubout; Alt-Backspace
        # to the start of the word, as its backward-kill-word.
        return self._word_start(_unspaced if key == "kill_word" else _word), cursor

    def _word_start(self, in_word: Callable[[str], bool]) -> int:
        i = self._cursor
        while i > 0 and not in_word(self._graphemes[i - 1]):
            i -= 1
        while i > 0 and in_word(self._graphemes[i - 1]):
            i -= 1
        return i

    def _word_end(self) -> int:
        i, end = self._cursor, len(self._graphemes)
        while i < end and not _word(self._graphemes[i]):
            i += 1
        while i < end and _word(self._graphemes[i]):
            i += 1
        return i

    def _complete(self, result: Feed) -> bool:
        assert self.complete is not None
        start = self._cursor
        while start > 0 and not self._graphemes[start - 1].isspace():
            start -= 1
        word = "".join(self._graphemes[start : self._cursor])
        candidates = sorted(set(self.complete("".join(self._graphemes[:start]), word)))
        if not candidates:
            result.output += BELL
            return False
        common = _common_prefix(candidates)
        if len(candidates) == 1:
            common += " "
        if len(common) > len(word):
            self._insert(common[len(word) :], result)
            return True
        # Ambiguous, and nothing more in common: show the choices above the input line.
        shown = candidates[:MAX_SHOWN] + (["..."] if len(candidates) > MAX_SHOWN else [])
        result.output += CLEAR_LINE + "  ".join(shown) + "\r\n"
        return True

    def _walk_history(self, step: int) -> bool:
        target = self._history_at + step
        if not 0 <= target <= len(self._history):
            return False
        if self._history_at == len(self._history):
            self._draft = self._entry()
        self._history_at = target
        entry = self._draft if target == len(self._history) else self._history[target]
        # The entry itself, measured when it was typed: a step never measures or copies text.
        self._graphemes, self._cells, self._bytes = entry.graphemes, entry.cells, entry.size
        self._cursor = len(self._graphemes)
        self._offset = 0
        return True

    def _entry(self) -> _Entry:
        graphemes, cells = self._graphemes, self._cells
        if isinstance(graphemes, tuple) and isinstance(cells, tuple):
            return _Entry(graphemes, cells, self._bytes)  # walked to and not edited since
        return _Entry(tuple(graphemes), tuple(cells), self._bytes)

    def _clear(self) -> None:
        self._graphemes, self._cells, self._bytes, self._cursor, self._offset = [], [], 0, 0, 0

    def _commit(self) -> str:
        line = self.text
        kept = not (self.secret or (self.private is not None and self.private(line)))
        if line.strip() and kept and (not self._history or self._history[-1].text != line):
            self._history.append(self._entry())
            del self._history[: -self._history_size]
        self._history_at = len(self._history)
        self._draft = _EMPTY
        self._clear()
        return line

    def _scroll(self) -> None:
        """Move the scroll offset so the cursor is visible."""
        room = self._room()
        if self._cursor < self._offset:
            self._offset = max(0, self._cursor - room // 2)
        before_cursor = sum(self._cells[self._offset : self._cursor])
        while self._offset < self._cursor and before_cursor >= room:
            before_cursor -= self._cells[self._offset]
            self._offset += 1
        if self._offset > 0 and sum(self._cells) < room:
            self._offset = 0


def _word(grapheme: str) -> bool:
    return grapheme.isalnum() or grapheme == "_"


def _common_prefix(words: Sequence[str]) -> str:
    first, last = min(words), max(words)
    i = 0
    while i < min(len(first), len(last)) and first[i] == last[i]:
        i += 1
    return first[:i]


def _unspaced(grapheme: str) -> bool:
    return not grapheme.isspace()
