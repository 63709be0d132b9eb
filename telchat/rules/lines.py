"""Split a client's byte stream into lines, with hard limits.

Terminators: CRLF, LF, CR NUL (telnet's bare CR) and a lone CR; a CR at the end of one chunk
and its LF or NUL at the start of the next count once. Lines longer than `max_line` are
reported as `Oversize` (their bytes are dropped, not buffered); more than `max_unterminated`
bytes without a terminator raise `Overflow`, on which the session disconnects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from telchat.rules.plain import sparse

_CR = 0x0D
_LF = 0x0A
_NUL = 0x00


class Overflow(Exception):
    """More input without a line terminator than the session accepts."""


@dataclass(frozen=True, slots=True)
class Oversize:
    """A complete line that was longer than the line limit; its text is discarded."""

    length: int


Line = bytes | Oversize

# The editing keys a line-mode client may send inside a line instead of applying them.
_EDIT_KEYS = re.compile("[\b\x7f\x15\x17]")


def apply_edits(text: str) -> str:
    """The line a line-mode user meant: telnetlib3-client and the like send editing keys
    as they are typed, so apply them before the sanitizer strips control characters.
    Backspace (BS or DEL) erases the character before it, Ctrl-U everything before it,
    Ctrl-W the word before it (and the spaces after that word)."""
    if _EDIT_KEYS.search(text) is None:
        return text
    kept: list[str] = []
    for ch in text:
        if ch in "\b\x7f":
            if kept:
                kept.pop()
        elif ch == "\x15":
            kept.clear()
        elif ch == "\x17":
            while kept and kept[-1].isspace():
                kept.pop()
            while kept and not kept[-1].isspace():
                kept.pop()
        else:
            kept.append(ch)
    return "".join(kept)


class LineSplitter:
    __slots__ = ("_buf", "_dropped", "_skip_after_cr", "max_line", "max_unterminated")

    def __init__(self, max_line: int = 1024, max_unterminated: int = 8192) -> None:
        self.max_line = max_line
        self.max_unterminated = max_unterminated
        self._buf = b""
        # Bytes of the current line already thrown away because the line is oversize.
        self._dropped = 0
        self._skip_after_cr = False

    @property
    def pending(self) -> int:
        """Bytes of the current, unterminated line (kept or dropped)."""
        return len(self._buf) + self._dropped

    def snapshot(self) -> dict[str, Any]:
        """The unterminated line, as plain data (bytes as latin-1 text), what is empty left out."""
        state = {"buf": self._buf.decode("latin-1"), "dropped": self._dropped, "skip_after_cr": self._skip_after_cr}
        return sparse(state, "buf", "dropped", "skip_after_cr")

    def restore(self, state: dict[str, Any]) -> None:
        self._buf = str(state.get("buf", "")).encode("latin-1")
        self._dropped = int(state.get("dropped", 0))
        self._skip_after_cr = bool(state.get("skip_after_cr"))

    def feed(self, data: bytes) -> list[Line]:
        if self._skip_after_cr and data:
            self._skip_after_cr = False
            if data[0] in (_LF, _NUL):
                data = data[1:]
        buf = self._buf + data if self._buf else data
        out: list[Line] = []
        start = 0
        end = len(buf)
        while start < end:
            lf = buf.find(b"\n", start)
            cr = buf.find(b"\r", start, lf if lf >= 0 else end)
            if cr >= 0:
                stop, nxt = cr, cr + 1
                if nxt < end:
                    if buf[nxt] in (_LF, _NUL):
                        nxt += 1
                else:
                    self._skip_after_cr = True
            elif lf >= 0:
                stop, nxt = lf, lf + 1
            else:
                break
            out.append(self._complete(buf, start, stop))
            start = nxt
        self._keep_tail(buf, start, end)
        return out

    def _complete(self, buf: bytes, start: int, stop: int) -> Line:
        length = self._dropped + stop - start
        self._dropped = 0
        if length > self.max_unterminated:
            raise Overflow(length)
        if length > self.max_line:
            return Oversize(length)
        return buf[start:stop]

    def _keep_tail(self, buf: bytes, start: int, end: int) -> None:
        tail = end - start
        if self._dropped + tail > self.max_unterminated:
            raise Overflow(self._dropped + tail)
        if self._dropped or tail > self.max_line:
            # Already oversize: remember only how long it is, never its bytes.
            self._dropped += tail
            self._buf = b""
        else:
            self._buf = buf[start:] if start else buf
