"""Nick and room-name rules (pure functions, no state).

Two nicks that read the same on screen are the same nick, using the Unicode confusables
data (UTS #39 skeletons, from the confusable-homoglyphs package). A nick has two keys:
- `nick_key`, its identity (what the nick registry, accounts, bans and ignores use): the
  skeleton of its case-folded form, case-folded: `frank`, `FRANK` and `fr\u0430nk` (Cyrillic
  a) are one nick;
- `look_key`, how it looks with its case kept: the skeleton of the nick as typed, then
  case-folded. Greek `\u039c\u0391\u03a7` looks like `MAX`, and `aIice` (capital i) like
  `alice`, though case folding alone would tell them apart.
A nick is taken when either key matches either key of a nick in use (`lookalikes`).
"""

from __future__ import annotations

import json
import unicodedata
from functools import cache, lru_cache
from importlib import resources

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


# A login, a join and each message's mentions look the same few nicks up again and again,
# within moments: the last few thousand keys (under 1 MB, both caches) serve a storm of logins.
KEYS_CACHED = 2048


@lru_cache(maxsize=KEYS_CACHED)
def nick_key(nick: str) -> str:
    """The identity of a nick: case- and lookalike-insensitive."""
    return skeleton(unicodedata.normalize("NFKC", nick).casefold()).casefold()


@cache
def ascii_keys() -> dict[int, str]:
    """str.translate table giving `nick_key` of ASCII text one character at a time (for
    ASCII, the key of a word is the keys of its characters): the cheap path for mentions."""
    return {code: nick_key(chr(code)) for code in range(128)}


@lru_cache(maxsize=KEYS_CACHED)
def look_key(nick: str) -> str:
    """What a nick looks like: its skeleton with the case kept, then case-folded."""
    return skeleton(unicodedata.normalize("NFKC", nick)).casefold()


def lookalikes(nick: str) -> frozenset[str]:
    """Both keys of a nick: two nicks that share one read alike."""
    return frozenset((nick_key(nick), look_key(nick)))


def legacy_nick_key(nick: str) -> str:
    """The identity a nick had in versions before the confusables data, exactly as they
    computed it: records stored then are found by it, and moved to `nick_key`. Not used to
    tell nicks apart."""
    return unicodedata.normalize("NFKC", nick).casefold().translate(_LEGACY_FOLDS)


# The lookalike folds those versions applied after case folding (for `legacy_nick_key` only).
_LEGACY_FOLDS = str.maketrans(
    {
        "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
        "с": "c", "т": "t", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s", "һ": "h",
        "ԁ": "d", "ԛ": "q", "ԝ": "w", "ӏ": "l", "α": "a", "β": "b", "ε": "e", "ι": "i",
        "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x",
    }
)  # fmt: skip


def skeleton(text: str) -> str:
    """The UTS #39 skeleton: each character replaced by the prototype it is confusable with."""
    prototypes = _prototypes()
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFD", "".join(prototypes.get(ch, ch) for ch in decomposed))


# Bidirectional marks the package's data keeps around right-to-left characters.
_MARKS = dict.fromkeys(map(ord, "\u200e\u200f"))


def prepare() -> None:
    """Read the confusables data now (some 40 ms), before anyone waits: not at a first
    login, which would stall the event loop, nor within an upgrade's pause."""
    _prototypes()


@cache
def _prototypes() -> dict[str, str]:
    """Character -> its prototype. The package lists each confusables.txt pair both ways
    (character -> prototype, prototype -> character), so each prototype is the one member
    of its group listed with more than one partner (a pair: either one will do)."""
    text = resources.files("confusable_homoglyphs").joinpath("confusables.json").read_text("utf-8")
    partners: dict[str, set[str]] = {}
    for source, entries in json.loads(text).items():
        for entry in entries:
            a, b = source.translate(_MARKS), entry["c"].translate(_MARKS)
            partners.setdefault(a, set()).add(b)
            partners.setdefault(b, set()).add(a)
    prototypes: dict[str, str] = {}
    for node, linked in partners.items():
        if len(node) != 1:
            continue  # a sequence is only ever a prototype (`m` looks like `rn`)
        candidates = [node, *linked] if len(linked) == 1 else [node]
        prototype = max(candidates, key=lambda c: (len(partners[c]), len(c), c == node))
        if prototype != node:
            prototypes[node] = prototype
    return prototypes


@lru_cache(maxsize=KEYS_CACHED)
def check_nick(raw: str) -> str:
    """Return the nick as it will be shown, or raise NameError_ with the reason. Cached: a
    login checks its nick three times over (moderation, accounts, the chat's rename)."""
    nick = unicodedata.normalize("NFKC", raw)
    if not 1 <= len(nick) <= MAX_NICK or not _is_visible_letter(nick[0]):
        raise NameError_(f"Invalid nick {raw!r}: {NICK_RULE}")
    scripts = {_script(ch) for ch in nick if ch.isalpha()}
    if len(scripts) > 1:
        raise NameError_(f"Invalid nick {raw!r}: letters must all be of one script")
    if not all(_is_visible_letter(ch) or _is_ascii_digit(ch) or ch in "_-" for ch in nick):
        raise NameError_(f"Invalid nick {raw!r}: {NICK_RULE}")
    if lookalikes(nick) & _reserved_keys():
        raise NameError_(f"Nick {nick} is reserved")
    return nick


@cache
def _reserved_keys() -> frozenset[str]:
    return frozenset(key for name in RESERVED for key in lookalikes(name))


def check_room(raw: str) -> str:
    """Return the room name without its leading '#', or raise NameError_."""
    name = unicodedata.normalize("NFKC", raw.removeprefix("#"))
    if not 1 <= len(name) <= MAX_ROOM or not all(_is_room_char(ch) for ch in name):
        raise NameError_(f"Invalid room name {raw!r}: {ROOM_RULE}")
    return name


def room_key(name: str) -> str:
    return name.casefold()
