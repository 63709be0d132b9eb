"""Messages that wait: `msg` to a registered user who is offline is kept in the store and
shown, with its time and sender, when they next log in.

A mailbox is taken (read and emptied) in one store operation, so a message is shown once:
to the first session that logs in after it was stored, on any node, across restarts. It is
bounded per recipient (`--mail-max`) and, within that, per sender (`--mail-per-sender`),
so one sender cannot fill another's box.

A room line that names a registered user who is offline is kept the same way, in a second
box (`mentions`), and counted at login. Which nicks are accounts is known from a set
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
from telchat.store.base import StoreError
from telchat.store.events import Event

log = get_logger(__name__)


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
        log.info("private_message_stored", conn_id=user.conn_id, peer=user.peer, nick=user.nick, to=nick)

    async def deliver(self, user: User) -> None:
        """Show `user` what waited for their account, oldest first, and empty the box; count
        the mentions."""
        if user.account is None:
            return
        items = await self.store.take_mail(box_of(user.account))
        if items:
            user.send(replies.MAIL_WAITING.format(count=len(items)))
        for item in items:
            user.send(replies.PRIVATE_IN.format(nick=item["nick"], text=item["text"]), float(item["ts"]), dated=True)
        mentioned = await self.store.mail_count(mentions_of(user.account))
        if mentioned:
            user.send(replies.MENTIONS_WAITING.format(count=mentioned))

    async def mentions(self, user: User) -> None:
        """`mentions`: the lines that named this account while it was offline, once."""
        if user.account is None:
            raise ChatError(replies.NICK_NOT_REGISTERED)
        items = await self.store.take_mail(mentions_of(user.account))
        if not items:
            raise ChatError(replies.MENTIONS_NONE)
        for item in items:
            line = replies.SAY.format(room=item["room"], nick=item["nick"], text=item["text"])
            user.send(line, float(item["ts"]), dated=True)

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
            if not await self.store.remote_nick(key):
                # A full box drops the mention: unlike a message, no one is waiting to be told.
                await self.store.add_mail(mentions_of(key), sender, item, self.box_max, self.per_sender)
        except StoreError as exc:
            log.warning("store_error", during="mention", error=str(exc), account=key)
