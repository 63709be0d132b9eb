"""Messages that wait: `msg` to a registered user who is offline is kept in the store and
shown, with its time and sender, when they next log in.

A mailbox is taken (read and emptied) in one store operation, so a message is shown once:
to the first session that logs in after it was stored, on any node, across restarts. It is
bounded per recipient (`--mail-max`) and, within that, per sender (`--mail-per-sender`),
so one sender cannot fill another's box.
"""

from __future__ import annotations

import time

from telchat.chat.rooms import Chat, ChatError, NotOnline, User
from telchat.features.accounts import Accounts
from telchat.obs.logs import get_logger
from telchat.rules import replies
from telchat.rules.names import nick_key

log = get_logger(__name__)


def box_of(key: str) -> str:
    return f"msg:{key}"


class Mailbox:
    def __init__(self, chat: Chat, accounts: Accounts, box_max: int, per_sender: int) -> None:
        self.chat = chat
        self.store = chat.store
        self.box_max = box_max
        self.per_sender = per_sender
        self._accounts = accounts
        accounts.logins.append(self.deliver)

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
        """Show `user` what waited for their account, oldest first, and empty the box."""
        if user.account is None:
            return
        items = await self.store.take_mail(box_of(user.account))
        if not items:
            return
        user.send(replies.MAIL_WAITING.format(count=len(items)))
        for item in items:
            user.send(replies.PRIVATE_IN.format(nick=item["nick"], text=item["text"]), float(item["ts"]), dated=True)
