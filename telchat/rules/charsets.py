"""The character sets a user can have, by whatever name a client or a person calls them,
and what makes text safe to send in each."""

from __future__ import annotations

import codecs
import functools
import re
import unicodedata
from collections.abc import Callable

SUPPORTED = ("utf-8", "cp1251", "koi8-r", "latin-1")
# Python's canonical codec names for the ones above that differ from how we show them.
_CANONICAL = {"iso8859-1": "latin-1", "ascii": "utf-8"}


def resolve(name: str) -> str | None:
    """The supported charset `name` means (`UTF8`, `windows-1251`, `KOI8-R`...), or None."""
    try:
        canonical = codecs.lookup(name.strip()).name
    except (LookupError, ValueError):
        return None
    charset = _CANONICAL.get(canonical, canonical)
    return charset if charset in SUPPORTED else None


def from_lang(lang: str) -> str | None:
    """The charset of a locale such as `ru_RU.KOI8-R` or `en_US.UTF-8@euro`."""
    _, dot, rest = lang.partition(".")
    return resolve(rest.split("@", 1)[0]) if dot else None


# What stands in for a character that a charset would encode as a C1 control byte, or
# lacks, by words of its Unicode name; anything else without an ASCII form becomes "?".
_BY_NAME = (
    ("DOUBLE", '"'),
    ("QUOTATION", "'"),
    ("DASH", "-"),
    ("BULLET", "*"),
    ("HORIZONTAL", "-"),
    ("VERTICAL", "|"),
    ("BOX DRAWINGS", "+"),
)
_C1 = range(0x80, 0xA0)


def _stand_in(ch: str, charset: str) -> str:
    """A harmless spelling of `ch` in `charset`: its compatibility form or, for a letter,
    its base letter (`…` -> `...`, `ќ` -> `к`; not `½` -> `1`) if that encodes outside the C1
    range, else a lookalike."""
    forms = [unicodedata.normalize("NFKC", ch)]
    if unicodedata.category(ch).startswith("L"):
        forms.append(unicodedata.normalize("NFKD", ch)[:1])
    for form in forms:
        try:
            encoded = form.encode(charset)
        except UnicodeEncodeError:
            continue
        if form != ch and not any(byte in _C1 for byte in encoded):
            return form
    name = unicodedata.name(ch, "")
    quote = "QUOTATION" in name
    for word, stand_in in _BY_NAME:
        if word in name and (word != "DOUBLE" or quote):
            return stand_in
    return "?"


def _c1_safe_table(charset: str) -> dict[int, str]:
    """str.translate table replacing every character that `charset` encodes as a byte in
    0x80-0x9F: terminals that are not in UTF-8 run those bytes as C1 controls (0x9B is CSI)."""
    table: dict[int, str] = {}
    for byte in _C1:
        try:
            ch = bytes([byte]).decode(charset)
        except UnicodeDecodeError:
            continue
        table[ord(ch)] = _stand_in(ch, charset)
    return table


def readable(charset: str) -> str:
    """The codec error handler for `str.encode(charset, readable(charset))`: what `charset`
    lacks is spelt as `_stand_in` spells it (`…` -> `...`, an en dash -> `-`, `™` -> `TM`), else
    `?`. One a charset: a charmap codec's error names no charset."""
    return f"telchat-readable-{charset}"


def _speller(charset: str) -> Callable[[UnicodeError], tuple[str, int]]:
    spelt = functools.lru_cache(maxsize=4096)(functools.partial(_stand_in, charset=charset))

    def spell(error: UnicodeError) -> tuple[str, int]:
        if not isinstance(error, UnicodeEncodeError):
            raise error
        return "".join(map(spelt, error.object[error.start : error.end])), error.end

    return spell


for _charset in SUPPORTED:
    codecs.register_error(readable(_charset), _speller(_charset))


# Built once per charset: the table, and a pattern finding what it replaces.
_TABLES = {charset: _c1_safe_table(charset) for charset in SUPPORTED if charset != "utf-8"}
_FINDERS = {charset: re.compile(f"[{re.escape(''.join(map(chr, table)))}]") for charset, table in _TABLES.items()}


def c1_safe(text: str, charset: str) -> str:
    """`text` with what single-byte `charset` would encode as C1 control bytes replaced.
    Most lines hold none: a scan (none at all for ASCII) costs less than a translate."""
    if text.isascii() or _FINDERS[charset].search(text) is None:
        return text
    return text.translate(_TABLES[charset])


# Guessing a Russian speaker's charset from what they typed (issue 14, item 9).

# The fifteen commonest letters of Russian text: in the right charset, most letters are these.
_COMMON_RUSSIAN = frozenset("оеаинтсрвлкмдпу")
# Besides letters, what a Russian keyboard's high half types: guillemets, dashes, numero.
_CYRILLIC_PUNCTUATION = frozenset("«»\u2013\u2014№")
_GUESSES = ("cp1251", "koi8-r")
MIN_LETTERS = 3


def guess_cyrillic(data: bytes) -> str | None:
    """`cp1251` or `koi8-r` when `data` is not UTF-8 but reads as Russian in that charset,
    else None.

    Both are single-byte: every byte above 0x7F must decode to a Cyrillic letter (or the
    punctuation such keyboards type), at least `MIN_LETTERS` of them, and the charset
    whose reading has more of Russian's commonest letters wins (lowercase text in one reads
    as mostly uppercase, rare letters in the other).
    """
    try:
        data.decode("utf-8")
        return None
    except UnicodeDecodeError:
        pass
    best, best_score = None, 0.0
    for charset in _GUESSES:
        high = [ch for ch, byte in zip(data.decode(charset, "replace"), data, strict=True) if byte >= 0x80]
        letters = [ch for ch in high if "\u0400" <= ch <= "\u04ff"]
        if len(letters) < MIN_LETTERS or len(letters) + sum(ch in _CYRILLIC_PUNCTUATION for ch in high) < len(high):
            continue
        score = sum(ch in _COMMON_RUSSIAN for ch in letters) / len(letters)
        if score > best_score:
            best, best_score = charset, score
    return best if best_score >= 0.5 else None
