"""A server-side line editor for character-mode terminals. Pure state: text in, text out.

`LineEditor.feed` takes what the person typed (already decoded) and returns what to send
back to their terminal (echo, cursor moves and redraws as ANSI/VT100 sequences) and the
lines they committed with Enter. The input line lives on the terminal's last line; it is
measured in terminal cells (wide characters count 2, combining marks 0, an emoji ZWJ
sequence is one grapheme) and scrolls horizontally when it is wider than the terminal.

Keys: printable text inserts at the cursor; Backspace (BS or DEL) and Delete erase;
Ctrl-U erases to the start, Ctrl-K to the end, Ctrl-W the word before the cursor;
Left/Right, Home/End (also Ctrl-B/F, Ctrl-A/E) move; Up/Down (Ctrl-P/N) walk the history;
Ctrl-C drops the line; Ctrl-L redraws; Enter (CR, CR LF, CR NUL or LF) commits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from wcwidth import iter_graphemes, width

CLEAR_LINE = "\r\x1b[K"
BELL = "\x07"
MIN_WIDTH = 8
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
_CONTROL_KEYS = {
    "\x01": "home",
    "\x02": "left",
    "\x03": "cancel",
    "\x04": "delete",
    "\x05": "end",
    "\x06": "right",
    "\x08": "backspace",
    "\x0b": "kill_end",
    "\x0c": "redraw",
    "\x0e": "down",
    "\x10": "up",
    "\x15": "kill_start",
    "\x17": "kill_word",
    "\x7f": "backspace",
}


_MOVES: dict[str, Callable[[int, int], int]] = {
    "left": lambda cursor, end: max(0, cursor - 1),
    "right": lambda cursor, end: min(end, cursor + 1),
    "home": lambda cursor, end: 0,
    "end": lambda cursor, end: end,
}

_ERASES = frozenset({"backspace", "delete", "kill_end", "kill_start", "kill_word"})


@dataclass(slots=True)
class Feed:
    """The result of one `LineEditor.feed`: text to send to the terminal, and committed lines."""

    output: str = ""
    lines: list[str] = field(default_factory=list)


def _cells(grapheme: str) -> int:
    return max(0, width(grapheme))


def _insertable(ch: str) -> bool:
    # ZWJ is a format character, but emoji sequences need it to stay one grapheme.
    return ch.isprintable() or ch == _ZWJ


class LineEditor:
    __slots__ = (
        "_after_cr",
        "_cells",
        "_cursor",
        "_draft",
        "_graphemes",
        "_history",
        "_history_at",
        "_history_size",
        "_offset",
        "_pending_escape",
        "max_chars",
        "secret",
        "width",
    )

    def __init__(self, width: int = 80, history_size: int = 100, max_chars: int = 1024) -> None:
        self.width = max(width, MIN_WIDTH)
        self.max_chars = max_chars
        self._history_size = history_size
        self._history: list[str] = []
        # Position while walking the history; len(history) means "the line being typed".
        self._history_at = 0
        self._draft = ""
        self._graphemes: list[str] = []
        self._cells: list[int] = []
        self._cursor = 0
        self._offset = 0
        self._pending_escape = ""
        self._after_cr = False
        # A password is being typed: it must never be recalled with Up.
        self.secret = False

    # state

    @property
    def text(self) -> str:
        return "".join(self._graphemes)

    @property
    def cursor(self) -> int:
        """The cursor position, in graphemes from the start of the line."""
        return self._cursor

    @property
    def cursor_column(self) -> int:
        """The terminal column (0-based) the cursor is drawn at."""
        return sum(self._cells[self._offset : self._cursor])

    @property
    def history(self) -> list[str]:
        return list(self._history)

    # drawing

    def visible(self) -> str:
        """The part of the line shown on screen: from the scroll offset, as much as fits."""
        room = self.width - 1
        used = 0
        end = self._offset
        while end < len(self._graphemes) and used + self._cells[end] <= room:
            used += self._cells[end]
            end += 1
        return "".join(self._graphemes[self._offset : end])

    def redraw(self) -> str:
        """Draw the whole input line and put the cursor where it belongs."""
        column = self.cursor_column
        return CLEAR_LINE + self.visible() + "\r" + (f"\x1b[{column}C" if column else "")

    def resize(self, width: int) -> str:
        self.width = max(width, MIN_WIDTH)
        self._scroll()
        return self.redraw() if self._graphemes else ""

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
                result.output += CLEAR_LINE if self._graphemes else ""
                result.lines.append(self._commit())
                redraw = False
                i += 1
            elif ch == _ESC:
                key, i = self._read_sequence(text, i)
                redraw |= self._act(key, result) if key else False
            elif ch in _CONTROL_KEYS:
                redraw |= self._act(_CONTROL_KEYS[ch], result)
                i += 1
            else:
                run_end = i
                while run_end < len(text) and (_insertable(text[run_end]) or text[run_end] == "\t"):
                    run_end += 1
                if run_end == i:  # another control character: ignored
                    i += 1
                    continue
                redraw |= self._insert(text[i:run_end].replace("\t", " "), result)
                i = run_end
        if redraw:
            result.output += self.redraw()
        return result

    def _read_sequence(self, text: str, start: int) -> tuple[str, int]:
        """Parse an escape sequence at `start`; return (action or "", index after it)."""
        if start + 1 >= len(text):
            self._pending_escape = text[start:]
            return "", len(text)
        if text[start + 1] not in "[O":
            return "", start + 1  # a lone ESC: dropped
        end = start + 2
        while end < len(text) and "0" <= text[end] <= "?":
            end += 1
        if end >= len(text):
            if end - start < _MAX_SEQUENCE:
                self._pending_escape = text[start:]
            return "", len(text)
        params = text[start + 2 : end].split(";", maxsplit=1)[0]
        final = text[end]
        return _SEQUENCE_KEYS.get(params + final if final == "~" else final, ""), end + 1

    def _insert(self, run: str, result: Feed) -> bool:
        room = self.max_chars - len(self.text)
        if room <= 0:
            result.output += BELL
            return False
        if len(run) > room:
            run = run[:room]
            result.output += BELL
        at_end = self._cursor == len(self._graphemes)
        left = list(iter_graphemes("".join(self._graphemes[: self._cursor]) + run))
        right = self._graphemes[self._cursor :]
        self._set(left + right, len(left))
        scrolled = self._scroll()
        if at_end and not scrolled:
            result.output += run
            return False
        return True

    def _set(self, graphemes: list[str], cursor: int) -> None:
        self._graphemes = graphemes
        self._cells = [_cells(g) for g in graphemes]
        self._cursor = cursor

    def _scroll(self) -> bool:
        """Move the scroll offset so the cursor is visible; return whether it moved."""
        before = self._offset
        room = self.width - 1
        if self._cursor < self._offset:
            self._offset = max(0, self._cursor - room // 2)
        before_cursor = sum(self._cells[self._offset : self._cursor])
        while self._offset < self._cursor and before_cursor >= room:
            before_cursor -= self._cells[self._offset]
            self._offset += 1
        if self._offset > 0 and sum(self._cells) < room:
            self._offset = 0
        return self._offset != before

    def _act(self, key: str, result: Feed) -> bool:
        """Run one editing key; return whether the line needs a redraw."""
        if key in ("up", "down"):
            self._walk_history(-1 if key == "up" else 1)
        elif key in _MOVES:
            self._cursor = _MOVES[key](self._cursor, len(self._graphemes))
        elif key in _ERASES:
            start, stop = self._erase_range(key)
            if start == stop:
                return False
            self._set(self._graphemes[:start] + self._graphemes[stop:], start)
        elif key == "cancel":
            self._set([], 0)
            self._history_at = len(self._history)
        elif key != "redraw":
            return False
        self._scroll()
        return True

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
        return self._word_start(), cursor

    def _word_start(self) -> int:
        i = self._cursor
        while i > 0 and self._graphemes[i - 1].isspace():
            i -= 1
        while i > 0 and not self._graphemes[i - 1].isspace():
            i -= 1
        return i

    def _walk_history(self, step: int) -> None:
        target = self._history_at + step
        if not 0 <= target <= len(self._history):
            return
        if self._history_at == len(self._history):
            self._draft = self.text
        self._history_at = target
        line = self._draft if target == len(self._history) else self._history[target]
        graphemes = list(iter_graphemes(line))
        self._offset = 0
        self._set(graphemes, len(graphemes))

    def _commit(self) -> str:
        line = self.text
        if line.strip() and not self.secret and (not self._history or self._history[-1] != line):
            self._history.append(line)
            del self._history[: -self._history_size]
        self._history_at = len(self._history)
        self._draft = ""
        self._offset = 0
        self._set([], 0)
        return line
