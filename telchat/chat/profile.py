"""A user's personal state (away, ignores, display settings, activity) and how lines are
rendered for one user who asked for personal formatting. Pure: no chat state, no sockets.

Personal formatting costs a line its shared encoding, so the room manager asks `personal`
before it gives a user a copy of their own; everyone else shares the common bytes.
"""

from __future__ import annotations

import operator
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from telchat.rules import replies
from telchat.rules.names import ascii_keys, nick_key
from telchat.rules.plain import sparse

# The only escape sequences the server ever sends: user text never contains ESC (sanitize).
BOLD = "\x1b[1m"
RESET = "\x1b[0m"
BELL = "\x07"

SETTINGS = ("timestamps", "bell", "highlight", "catchup")
_settings_of = operator.attrgetter(*SETTINGS)

_WORD = re.compile(r"[\w-]+")


@dataclass(slots=True)
class Profile:
    away: str | None = None
    ignored: set[str] = field(default_factory=set)
    timestamps: bool = False
    bell: bool = False
    highlight: bool = True
    # At login, show each restored room's missed lines (off: the ordinary join replay).
    catchup: bool = True
    # The time zone of every time shown to this user; None: the server's.
    zone: ZoneInfo | None = None
    connected: float = field(default_factory=time.time)
    active: float = field(default_factory=time.monotonic)

    @property
    def personal(self) -> bool:
        """Whether lines to this user may differ from everyone else's copy of them."""
        return self.timestamps or bool(self.ignored)

    def settings(self) -> dict[str, bool]:
        return dict(zip(SETTINGS, _settings_of(self), strict=True))

    def change(self, name: str, value: bool) -> None:
        if name not in SETTINGS:
            raise KeyError(name)
        setattr(self, name, value)

    def snapshot(self) -> dict[str, Any]:
        """As plain data, what is empty left out; `active` as seconds idle, monotonic clocks
        differ between processes."""
        state = {
            "away": self.away,
            "ignored": sorted(self.ignored) if self.ignored else None,
            **self.settings(),
            "connected": self.connected,
            "idle": self.idle(),
            "tz": self.zone.key if self.zone is not None else None,
        }
        return sparse(state, "away", "ignored", "tz")

    @classmethod
    def restored(cls, state: dict[str, Any]) -> Profile:
        away, ignored, zone = state.get("away"), state.get("ignored"), state.get("tz")
        profile = cls(
            away=None if away is None else str(away),
            ignored={str(key) for key in ignored} if ignored else set(),
            connected=float(state["connected"]),
            active=time.monotonic() - float(state["idle"]),
            zone=zone_named(str(zone)) if zone else None,
        )
        # Each of thousands within an upgrade's pause: setattr, not `change`'s check.
        for name in SETTINGS:
            if name in state:  # a process of an older version may not know the newer ones
                setattr(profile, name, bool(state[name]))
        return profile

    def touch(self) -> None:
        self.active = time.monotonic()

    def idle(self) -> float:
        return time.monotonic() - self.active

    def ignores(self, nick: str) -> bool:
        return bool(self.ignored) and nick_key(nick) in self.ignored

    def render(self, text: str, ts: float | None = None, *, dated: bool = False) -> str:
        """`text` as this user sees it: with a timestamp when they asked for one, or `dated`."""
        return stamp(text, ts, zone=self.zone) if self.timestamps or dated else text

    def mentioned(self, text: str) -> str:
        """A line that names this user: bold, and with the bell if they want it."""
        return f"{BOLD}{text}{RESET}{BELL if self.bell else ''}"


def stamp(text: str, ts: float | None = None, now: float | None = None, zone: tzinfo | None = None) -> str:
    """`HH:MM text`, or `YYYY-MM-DD HH:MM text` for a moment before today, in `zone` (default:
    the server's time)."""
    if zone is None:
        today = time.localtime(now)
        moment = time.localtime(ts) if ts is not None else today
        fmt = "%H:%M" if moment[:3] >= today[:3] else "%Y-%m-%d %H:%M"
        return f"{time.strftime(fmt, moment)} {text}"
    day = datetime.fromtimestamp(now if now is not None else time.time(), zone)
    when = datetime.fromtimestamp(ts, zone) if ts is not None else day
    return f"{when.strftime('%H:%M' if when.date() >= day.date() else '%Y-%m-%d %H:%M')} {text}"


def zone_named(name: str) -> ZoneInfo | None:
    """The IANA time zone `name` (`Europe/Moscow`), or None if there is no such zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def mention_keys(text: str) -> set[str]:
    """The nick keys of the words in `text` (`bob:`, `@Bob` and `BOB` all name bob)."""
    # For ASCII text, nick_key is a table lookup per character: skip its Unicode work on the hot path.
    words = _WORD.findall(text.translate(ascii_keys()) if text.isascii() else nick_key(text))
    return {word.strip("-") for word in words} | set(words)


def who_entry(nick: str, profile: Profile) -> str:
    """How a user appears in `who`."""
    return f"{nick} (away)" if profile.away is not None else nick


def away_notice(nick: str, profile: Profile) -> str:
    if profile.away:
        return replies.AWAY_MESSAGE.format(nick=nick, message=profile.away)
    return replies.AWAY.format(nick=nick)
