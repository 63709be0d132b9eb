"""What users set for themselves (away, ignores, settings) and learn of others (whois).

Settings and ignores of a registered user are saved with their account. `whois` of a user
on another node of a cluster is a control event: that user's node publishes the answer.
"""

from __future__ import annotations

import time
from typing import Final

from telchat.chat.profile import SETTINGS, away_notice, zone_named
from telchat.chat.rooms import Chat, ChatError, User, check_nick_or_error
from telchat.features.accounts import Accounts
from telchat.features.moderation import span
from telchat.rules import charsets, replies
from telchat.rules.names import nick_key
from telchat.rules.pages import wrap
from telchat.store import events
from telchat.store.events import Event

WHOIS: Final = "whois"
MAX_IGNORED = 100
SWITCH = {"on": True, "off": False}
# `set tz server` goes back to the server's time zone.
SERVER_ZONE = "server"


class Social:
    def __init__(self, chat: Chat, accounts: Accounts) -> None:
        self.chat = chat
        self.accounts = accounts
        chat.controls[WHOIS] = self._on_whois

    def away(self, user: User, message: str) -> None:
        if message and self.chat.muted_anywhere(user):
            raise ChatError(replies.MUTED_NO_AWAY_MESSAGE)
        user.profile.away = message
        user.send(replies.NOW_AWAY)

    @staticmethod
    def back(user: User) -> None:
        if user.profile.away is None:
            raise ChatError(replies.NOT_AWAY)
        user.profile.away = None
        user.send(replies.NOW_BACK)

    async def ignore(self, user: User, raw: str | None) -> None:
        ignored = user.profile.ignored
        if raw is None:
            listed = ", ".join(sorted(ignored))
            user.send(replies.IGNORING.format(nicks=listed) if ignored else replies.IGNORING_NOBODY)
            return
        nick = check_nick_or_error(raw)
        key = nick_key(nick)
        if key == user.key:
            raise ChatError(replies.IGNORE_SELF)
        if len(ignored) >= MAX_IGNORED and key not in ignored:
            raise ChatError(replies.IGNORE_LIMIT.format(limit=MAX_IGNORED))
        ignored.add(key)
        await self._changed(user)
        user.send(replies.IGNORED.format(nick=nick))

    async def unignore(self, user: User, raw: str) -> None:
        nick = check_nick_or_error(raw)
        key = nick_key(nick)
        if key not in user.profile.ignored:
            raise ChatError(replies.NOT_IGNORED.format(nick=nick))
        user.profile.ignored.discard(key)
        await self._changed(user)
        user.send(replies.UNIGNORED.format(nick=nick))

    async def setting(self, user: User, name: str | None, value: str | None) -> None:
        """`set` lists the settings; `set NAME on|off` changes one."""
        profile = user.profile
        if name is None:
            shown = ", ".join(f"{key} {'on' if on else 'off'}" for key, on in profile.settings().items())
            zone = profile.zone.key if profile.zone is not None else SERVER_ZONE
            user.send(replies.SETTINGS.format(settings=f"charset {user.charset}, {shown}, tz {zone}"))
            return
        name = name.lower()
        if name == "charset":
            self._set_charset(user, value or "")
            return
        if name == "tz":
            await self._set_zone(user, value or "")
            return
        if name not in SETTINGS:
            raise ChatError(replies.BAD_SETTING.format(name=name, names=", ".join(("charset", *SETTINGS, "tz"))))
        switch = SWITCH.get((value or "").lower())
        if switch is None:
            raise ChatError(replies.BAD_SETTING_VALUE.format(name=name))
        profile.change(name, switch)
        await self._changed(user)
        user.send(replies.SETTING_CHANGED.format(name=name, value="on" if switch else "off"))

    @staticmethod
    def _set_charset(user: User, value: str) -> None:
        # Per connection, not per account: the same person may use several terminals.
        charset = charsets.resolve(value)
        if charset is None:
            raise ChatError(replies.BAD_CHARSET.format(name=value, names=", ".join(charsets.SUPPORTED)))
        user.charset = charset
        user.send(replies.CHARSET_SET.format(charset=charset))

    async def _set_zone(self, user: User, value: str) -> None:
        # Per account (saved with it), unlike the charset: the same person in the same place.
        zone = None if value.lower() == SERVER_ZONE else zone_named(value)
        if zone is None and value.lower() != SERVER_ZONE:
            raise ChatError(replies.BAD_ZONE.format(name=value))
        user.profile.zone = zone
        await self._changed(user)
        user.send(replies.ZONE_SET.format(zone=zone.key if zone is not None else SERVER_ZONE))

    async def _changed(self, user: User) -> None:
        self.chat.refresh(user)
        await self.accounts.remember(user)

    async def whois(self, user: User, raw: str) -> None:
        nick = check_nick_or_error(raw)
        key = nick_key(nick)
        target = self.chat.nicks.get(key)
        if target is not None:
            for line in whois_lines(target, user.operator):
                user.send(line)
            return
        if not await self.chat.store.remote_nick(key):
            raise ChatError(replies.NO_SUCH_USER.format(nick=raw))
        if user.key is None:
            raise ChatError(replies.LOGIN_FIRST)  # the answer comes back addressed to a nick
        self.chat.store.publish(events.control(WHOIS, key, reply_to=user.key, operator=user.operator))

    def _on_whois(self, event: Event) -> None:
        target = self.chat.nicks.get(event.target)
        if target is None:
            return
        args = events.control_args(event)
        for line in whois_lines(target, bool(args["operator"])):
            self.chat.store.publish(events.notice(line, target=args["reply_to"]))


def whois_lines(target: User, for_operator: bool) -> list[str]:
    nick, profile = target.nick, target.profile
    rooms = [f"#{room.name}" for room in target.rooms.values()]
    head = replies.WHOIS_ROOMS.format(nick=nick, rooms="").rstrip()
    lines = wrap(head, rooms) if rooms else [replies.WHOIS_NO_ROOMS.format(nick=nick)]
    lines.append(
        replies.WHOIS_IDLE.format(nick=nick, idle=span(profile.idle()), online=span(time.time() - profile.connected))
    )
    if profile.away is not None:
        lines.append(away_notice(nick, profile))
    if target.operator:
        lines.append(replies.WHOIS_OPERATOR.format(nick=nick))
    elif target.account is not None:
        lines.append(replies.WHOIS_REGISTERED.format(nick=nick))
    if for_operator:
        lines.append(replies.WHOIS_ADDRESS.format(nick=nick, address=target.ip))
    return lines
