"""Nick and room-name rules (pure functions, no state)."""

from __future__ import annotations

import unicodedata

MAX_NICK = 24
MAX_ROOM = 32
NICK_RULE = "1-24 letters of one script, digits, _ or -, starting with a letter"
ROOM_RULE = "1-32 letters, digits, _, - or ."

RESERVED = frozenset(
    {
        "anonymous",
        "admin",
        "administrator",
        "chanserv",
        "everyone",
        "mod",
        "moderator",
        "nickserv",
        "operator",
        "root",
        "server",
        "sysop",
        "system",
        "telchat",
    }
)

# Letters of other scripts that look like Latin ones after casefolding: two nicks that
# differ only by these would read the same on screen, so they count as the same nick.
_CONFUSABLES = str.maketrans(
    {
        "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
        "с": "c", "т": "t", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s", "һ": "h",
        "ԁ": "d", "ԛ": "q", "ԝ": "w", "ӏ": "l", "α": "a", "β": "b", "ε": "e", "ι": "i",
        "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x",
    }
)  # fmt: skip


# Letters that render as blank space (Hangul fillers): a nick or room made of them, or
# padded with them, looks like nothing or like someone else's.
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0")


class NameError_(ValueError):
    """A nick or room name that breaks the rules; the message is shown to the user."""


def _script(ch: str) -> str:
    return unicodedata.name(ch, "UNKNOWN").split(" ", 1)[0]


def _is_ascii_digit(ch: str) -> bool:
    return "0" <= ch <= "9"


def _is_visible_letter(ch: str) -> bool:
    return ch.isalpha() and ch not in _INVISIBLE


def _is_room_char(ch: str) -> bool:
    return _is_visible_letter(ch) or _is_ascii_digit(ch) or ch in "_-."


def nick_key(nick: str) -> str:
    """The identity of a nick: case- and lookalike-insensitive."""
    return unicodedata.normalize("NFKC", nick).casefold().translate(_CONFUSABLES)


def check_nick(raw: str) -> str:
    """Return the nick as it will be shown, or raise NameError_ with the reason."""
    nick = unicodedata.normalize("NFKC", raw)
    if not 1 <= len(nick) <= MAX_NICK or not _is_visible_letter(nick[0]):
        raise NameError_(f"Invalid nick {raw!r}: {NICK_RULE}")
    scripts = {_script(ch) for ch in nick if ch.isalpha()}
    if len(scripts) > 1:
        raise NameError_(f"Invalid nick {raw!r}: letters must all be of one script")
    if not all(_is_visible_letter(ch) or _is_ascii_digit(ch) or ch in "_-" for ch in nick):
        raise NameError_(f"Invalid nick {raw!r}: {NICK_RULE}")
    if nick_key(nick) in RESERVED:
        raise NameError_(f"Nick {nick} is reserved")
    return nick


def check_room(raw: str) -> str:
    """Return the room name without its leading '#', or raise NameError_."""
    name = unicodedata.normalize("NFKC", raw.removeprefix("#"))
    if not 1 <= len(name) <= MAX_ROOM or not all(_is_room_char(ch) for ch in name):
        raise NameError_(f"Invalid room name {raw!r}: {ROOM_RULE}")
    return name


def room_key(name: str) -> str:
    return name.casefold()
