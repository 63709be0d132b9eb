"""Messages that wait: `msg` to a registered user who is offline is kept in the store and
shown, with its time and sender, when they next log in.

A mailbox is taken (read and emptied) in one store operation, so a message is shown once:
to the first session that logs in after it was stored, on any node, across restarts. What
was taken is put back (`Store.return_mail`) unless it was written to a connection that was
still there: a session that dies at login does not lose it, the next login shows it. It is
bounded per recipient (`--mail-max`) and, within that, per sender (`--mail-per-sender`),
so one sender cannot fill another's box.

A room line that names a registered user who is offline is kept the same way, in a second
box (`mentions`), and counted at login. A full box keeps the mentions it has (the speaker
is not told: no one asked them to wait) and counts the ones it drops, in a `dropped`
record; the count line and `mentions` say how many. Which nicks are accounts is known from a set
loaded at start and grown by the `registered` control event, which every node hears:
checking a line costs the speaker's node one set intersection.
"""

from __future__ import annotations

import asyncio
import time

from telchat.chat.profile import mention_keys
from telchat.chat.rooms import Chat, ChatError, NotOnline, Room, User
from telchat.features.accounts import ACCOUNT, REGISTERED, Accounts
from telchat.obs.logs import get_logger
from telchat.rules import replies
from telchat.rules.names import nick_key
from telchat.store.base import Record, StoreError
from telchat.store.events import Event

log = get_logger(__name__)

# Record kind: how many mentions a full box dropped, by box.
DROPPED = "dropped"


def box_of(key: str) -> str:
    return f"msg:{key}"


def mentions_of(key: str) -> str:
    return f"mention:{key}"


class Mailbox:
    def __init__(self, chat: Chat, accounts: Accounts, box_max: int, per_sender: int) -> None:
        self.chat = chat
        self.store = chat.store
        self.box_max = box_max
        self.per_sender = per_sender
        self._accounts = accounts
        # Nick keys of the accounts this node knows of (see above).
        self.known: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # A dropped count is read, added to and written back: one change at a time.
        self._dropping = asyncio.Lock()
        accounts.logins.append(self.deliver)
        chat.controls[REGISTERED] = self._registered
        chat.said.append(self._said)

    async def load(self) -> None:
        self.known = set(await self.store.records(ACCOUNT))

    async def msg(self, user: User, raw_nick: str, text: str) -> None:
        """`msg NICK TEXT`: sent now to an online user, kept for a registered offline one."""
        try:
            await self.chat.private(user, raw_nick, text)
            return
        except NotOnline:
            account = await self._accounts.record_of(raw_nick)
            if account is None:
                raise
        assert user.key is not None  # private() refuses anyone not logged in
        nick = str(account.get("nick", raw_nick))
        key = nick_key(nick)
        # Stored or not, an ignored sender is told the same: ignoring is not announced.
        if user.key not in account.get("ignored", []):
            await self._store(user, user.key, key, nick, text)
        user.send(replies.MAIL_STORED.format(nick=nick))

    async def _store(self, user: User, sender: str, key: str, nick: str, text: str) -> None:
        item = {"nick": user.nick, "text": text, "ts": time.time()}
        posted = await self.store.add_mail(box_of(key), sender, item, self.box_max, self.per_sender)
        if posted == "box_full":
            raise ChatError(replies.MAIL_BOX_FULL.format(nick=nick, limit=self.box_max))
        if posted == "sender_full":
            raise ChatError(replies.MAIL_SENDER_FULL.format(nick=nick, limit=self.per_sender))
        log.info("private_message_stored", **user.identity, to=nick)

    async def deliver(self, user: User) -> None:
        """Show `user` what waited for their account, oldest first, and empty the box; count
        the mentions."""
        if user.account is None or not user.connected():
            return
        box = box_of(user.account)
        items = _oldest_first(await self.store.take_mail(box))
        if items:
            user.send(replies.MAIL_WAITING.format(messages=replies.counted(len(items), "message", "messages")))
            for item in items:
                line = replies.PRIVATE_IN.format(nick=item["nick"], text=item["text"])
                user.send(line, float(item["ts"]), dated=True)
            await self._shown_or_returned(user, box, items)
        mentions = mentions_of(user.account)
        mentioned = await self.store.mail_count(mentions)
        dropped = await self._dropped(mentions)
        if dropped:
            user.send(
                replies.MENTIONS_WAITING_DROPPED.format(
                    times=replies.times(mentioned + dropped), dropped=dropped, limit=self.box_max
                )
            )
        elif mentioned:
            user.send(replies.MENTIONS_WAITING.format(times=replies.times(mentioned)))

    async def _shown_or_returned(self, user: User, box: str, items: list[Record]) -> None:
        """Once `items`, just sent to `user`, were written: put them back unless the
        connection was still there to take them."""
        if await user.outbox.written() and user.connected():
            return
        await self.store.return_mail(box, items)
        log.info("mail_returned", **user.identity, count=len(items))

    async def mentions(self, user: User) -> None:
        """`mentions`: the lines that named this account while it was offline, once."""
        if user.account is None:
            raise ChatError(replies.NICK_NOT_REGISTERED)
        box = mentions_of(user.account)
        items = _oldest_first(await self.store.take_mail(box))
        dropped = await self._dropped(box)
        if not items and not dropped:
            raise ChatError(replies.MENTIONS_NONE)
        for item in items:
            line = replies.SAY.format(room=item["room"], nick=item["nick"], text=item["text"])
            user.send(line, float(item["ts"]), dated=True)
        if dropped:
            user.send(replies.MENTIONS_DROPPED.format(dropped=dropped, limit=self.box_max))
            await self.store.put_record(DROPPED, box, None)
        if items:
            await self._shown_or_returned(user, box, items)

    async def _dropped(self, box: str) -> int:
        record = await self.store.get_record(DROPPED, box)
        return int(record["count"]) if record is not None else 0

    def _registered(self, event: Event) -> None:
        self.known.add(event.target)

    def _said(self, user: User, room: Room, text: str) -> None:
        if not self.known or user.key is None:
            return
        named = mention_keys(text) & self.known
        if not named:
            return
        item = {"nick": user.nick, "room": room.name, "text": text, "ts": time.time()}
        for key in named - self.chat.nicks.keys() - {user.key}:
            task = asyncio.create_task(self._keep_mention(user.key, key, item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _keep_mention(self, sender: str, key: str, item: dict[str, object]) -> None:
        try:
            if await self.store.remote_nick(key):
                return
            box = mentions_of(key)
            # A full box drops the mention, and counts it: no one is waiting to be told.
            if await self.store.add_mail(box, sender, item, self.box_max, self.per_sender) != "ok":
                async with self._dropping:
                    await self.store.put_record(DROPPED, box, {"count": await self._dropped(box) + 1})
        except StoreError as exc:
            log.warning("store_error", during="mention", error=str(exc), account=key)


def _oldest_first(items: list[Record]) -> list[Record]:
    # Items put back (Store.return_mail) may follow newer ones.
    return sorted(items, key=lambda item: float(item["ts"]))
