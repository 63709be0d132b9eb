"""The one sanitizer for all user text: nothing a user types reaches a terminal as a command.

Removes whole ESC/CSI/OSC/DCS/SOS/PM/APC sequences (7-bit and C1 forms), every remaining C0
and C1 control (TAB becomes a space), bidi overrides and isolates, and every other format
(Cf) character except a zero-width joiner between two emoji. Idempotent by construction:
the output holds no ESC and no control, so a second pass finds nothing to remove.
"""

from __future__ import annotations

import re
import unicodedata

# A truncated sequence (no final byte, no string terminator) is removed up to where it stops.
_SEQUENCES = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?"
)
_ZWJ = "\u200d"


def _is_emoji(ch: str) -> bool:
    # Emoji are So; a sequence may also end in VS16 or a skin-tone modifier (Sk) before a ZWJ.
    return unicodedata.category(ch) == "So" or ch == "\ufe0f" or "\U0001f3fb" <= ch <= "\U0001f3ff"


def _keep(text: str, i: int) -> str:
    ch = text[i]
    if ch == "\t":
        return " "
    category = unicodedata.category(ch)
    if category in ("Cc", "Cs"):
        return ""
    if category in ("Zl", "Zp"):
        return " "
    if category == "Cf":
        if ch == _ZWJ and 0 < i < len(text) - 1 and _is_emoji(text[i - 1]) and _is_emoji(text[i + 1]):
            return ch
        return ""
    return ch


def sanitize(text: str) -> str:
    """Return `text` safe to print on anyone's terminal."""
    if text.isprintable():
        # Fast path: printable text has no Cc, Cf, Zl, Zp and so nothing to remove.
        return text
    text = _SEQUENCES.sub("", text)
    return "".join([_keep(text, i) for i in range(len(text))])
