"""Finding old lines: `search WORDS [in ROOM] [from NICK] [since WHEN]`, paged with
`search more`, and `history since WHEN`.

WHEN is a span back from now (`2h`, `30m`, `7d`), a time of day (`14:00`: the last one that
has passed) or a date (`2026-12-01`: its start), in the user's time zone. The store does the
matching (`Store.search`): SQLite through its FTS5 index, the others by a scan of the kept
history.
"""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta, tzinfo

from telchat.chat.rooms import Chat, ChatError, User, check_nick_or_error, check_room_or_error
from telchat.features.moderation import parse_duration
from telchat.rules import replies
from telchat.rules.names import nick_key, room_key
from telchat.store.base import Cursor, Query, words_of

PAGE = 10
# As many lines as `history N` shows at most.
HISTORY_MAX = 1000
FILTERS = ("in", "from", "since")
MORE = "more"


def parse_since(text: str, now: float, zone: tzinfo | None) -> float | None:
    """The moment `text` names (see above), as epoch seconds; None if it names none."""
    span = parse_duration(text)
    if span is not None:
        return now - span
    here = datetime.fromtimestamp(now, zone).astimezone(zone)
    try:
        clock = datetime.strptime(text, "%H:%M").time()
    except ValueError:
        pass
    else:
        moment = datetime.combine(here.date(), clock, here.tzinfo)
        return (moment if moment <= here else moment - timedelta(days=1)).timestamp()
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return None
    return datetime.combine(day, datetime.min.time(), here.tzinfo).timestamp()


class Search:
    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        self.store = chat.store
        # A user's last search and where its last page ended, for `search more`.
        self._pages: dict[User, tuple[Query, Cursor]] = {}
        chat.departures.append(self._forget)

    def _forget(self, user: User) -> None:
        self._pages.pop(user, None)

    def since(self, user: User, text: str) -> float:
        moment = parse_since(text, time.time(), user.profile.zone)
        if moment is None:
            raise ChatError(replies.BAD_SINCE.format(text=text))
        return moment

    async def history_since(self, user: User, text: str) -> None:
        """`history since WHEN`: the current room's lines from then on, oldest first."""
        room = user.current
        if room is None:
            raise ChatError(replies.NO_ROOM)
        found = await self.store.search(Query(room=room.key, since=self.since(user, text)), None, HISTORY_MAX)
        user.send(replies.HISTORY_HEADER.format(room=room.name))
        for entry in reversed(found):
            if not user.profile.ignores(entry.nick):
                user.send(self.chat.format_entry(room.name, entry), entry.ts)

    async def search(self, user: User, args: list[str]) -> None:
        if args == [MORE]:
            page = self._pages.get(user)
            if page is None:
                raise ChatError(replies.SEARCH_NO_MORE)
            await self._page(user, *page)
            return
        await self._page(user, self._query(user, args), None)

    def _query(self, user: User, args: list[str]) -> Query:
        words: list[str] = []
        room = nick = ""
        since = 0.0
        rest = iter(args)
        for word in rest:
            name = word.lower()
            value = next(rest, None) if name in FILTERS else None
            if value is None:
                words += sorted(words_of(word))
            elif name == "in":
                room = room_key(check_room_or_error(value))
            elif name == "from":
                nick = nick_key(check_nick_or_error(value))
            else:
                since = self.since(user, value)
        if not words:
            raise ChatError(replies.USAGE.format(usage=SEARCH_USAGE))
        return Query(tuple(words), room, nick, since)

    async def _page(self, user: User, query: Query, before: Cursor | None) -> None:
        found = await self.store.search(query, before, PAGE)
        if not found:
            self._pages.pop(user, None)
            raise ChatError(replies.SEARCH_NONE if before is None else replies.SEARCH_END)
        for entry in found:
            user.send(self.chat.format_entry(entry.room_name, entry), entry.ts, dated=True)
        if len(found) < PAGE:
            self._pages.pop(user, None)
            user.send(replies.SEARCH_END)
            return
        self._pages[user] = (query, (found[-1].ts, found[-1].id))
        user.send(replies.SEARCH_MORE)


SEARCH_USAGE = "search <words> [in <room>] [from <nick>] [since 2h|14:00|2026-12-01] | search more"
