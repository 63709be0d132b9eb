"""The character sets a user can have, by whatever name a client or a person calls them."""

from __future__ import annotations

import codecs

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
