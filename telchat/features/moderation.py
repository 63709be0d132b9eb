"""Operators: kick, ban, mute and room topics.

What every node must agree on (bans, mutes, topics) is written to the store first and then
announced with a control event. Every node, this one included, applies the event to its
memory (the ban list here, `Chat.mutes`, `Chat.topics`) and acts on its own users. At
start a node loads it all from the store, so restarts forget nothing, and connect-time ban
checks never wait for the store.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any, Final

from telchat.chat.rooms import Chat, ChatError, User, check_nick_or_error, check_room_or_error
from telchat.obs.logs import get_logger
from telchat.rules import replies
from telchat.rules.addresses import Network, parse_address, parse_network
from telchat.rules.names import NameError_, check_nick, nick_key, room_key
from telchat.store import events
from telchat.store.base import Record
from telchat.store.events import Event

log = get_logger(__name__)

# Record kinds in the store, and the control events that announce their changes.
BAN: Final = "ban"
MUTE: Final = "mute"
TOPIC: Final = "topic"
KICK: Final = "kick"

EVERYWHERE = "*"
CLEAR_TOPIC = "-"
_DURATION = re.compile(r"^(\d{1,6})([smhdw]?)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "": 60}


def parse_duration(text: str) -> float | None:
    """Seconds in `10m`, `2h`, `7d` (a bare number is minutes); None if not a duration."""
    match = _DURATION.match(text.lower())
    if match is None or int(match[1]) == 0:
        return None
    return float(int(match[1]) * _UNITS[match[2]])


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "permanently"
    return f"for {span(seconds)}"


def span(seconds: float) -> str:
    """`1h 5m`, `2m 7s`, `3d 4h`: the two largest units."""
    rest = max(0, round(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size or (unit == "s" and not parts):
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return " ".join(parts[:2])


def _reason(reason: str) -> str:
    return f": {reason}" if reason else ""


def _until(duration: float | None) -> float | None:
    return time.time() + duration if duration is not None else None


def _active(until: float | None) -> bool:
    return until is None or until > time.time()


@dataclass(frozen=True, slots=True)
class Target:
    """What a ban names: `nick:<key>` or `ip:<network>`, and how to show it."""

    key: str
    shown: str


def ban_target(text: str) -> Target:
    try:
        network = parse_network(text)
    except ValueError:
        try:
            nick = check_nick(text)
        except NameError_:
            raise ChatError(replies.BAD_BAN_TARGET.format(text=text)) from None
        return Target(f"nick:{nick_key(nick)}", nick)
    shown = str(network.network_address) if network.prefixlen == network.max_prefixlen else str(network)
    return Target(f"ip:{network}", shown)


def address_in(ip: str, network: Network) -> bool:
    address = parse_address(ip)
    return address is not None and address in network


class Moderation:
    def __init__(self, chat: Chat, operators: frozenset[str]) -> None:
        self.chat = chat
        self.store = chat.store
        self.operators = operators
        self.bans: dict[str, Record] = {}
        self._networks: dict[str, Network] = {}
        chat.controls.update({KICK: self._on_kick, BAN: self._on_ban, MUTE: self._on_mute, TOPIC: self._on_topic})

    async def load(self) -> None:
        """Read bans, mutes and topics from the store into this node's memory."""
        for key, record in (await self.store.records(BAN)).items():
            self._apply_ban(await self._rekeyed(BAN, key, _ban_key(key, record), record), record)
        for key, record in (await self.store.records(MUTE)).items():
            scope, _, nick = key.partition(" ")
            current = f"{scope} {nick_key(record.get('nick', nick))}"
            scope, _, nick = (await self._rekeyed(MUTE, key, current, record)).partition(" ")
            self._apply_mute(scope, nick, record)
        for key, record in (await self.store.records(TOPIC)).items():
            self._apply_topic(key, record)

    async def _rekeyed(self, kind: str, key: str, current: str, record: Record) -> str:
        """`current`, the key `record` has by today's rules; a record stored under an older
        form (a nick key before confusables data, an IPv4-mapped network) moves there."""
        if current != key:
            await self.store.put_record(kind, current, record)
            await self.store.put_record(kind, key, None)
            log.info("record_rekeyed", kind=kind, old=key, new=current)
        return current

    # checks used by others

    def is_operator(self, account: str, record: Record) -> bool:
        return account in self.operators or bool(record.get("operator"))

    def refusal(self, ip: str) -> str | None:
        """The line refusing a connection from `ip`, or None when it is welcome."""
        for key, network in self._networks.items():
            record = self.bans[key]
            if _active(record.get("until")) and address_in(ip, network):
                return replies.CONNECTION_BANNED.format(reason=_reason(record.get("reason", "")))
        return None

    def check_login(self, user: User, raw_nick: str) -> None:
        """Refuse a banned nick, and any nick change by a muted user."""
        try:
            nick = check_nick(raw_nick)
        except NameError_:
            return  # the login itself explains what is wrong with the nick
        record = self.bans.get(f"nick:{nick_key(nick)}")
        if record is not None and _active(record.get("until")):
            raise ChatError(replies.NICK_BANNED.format(nick=raw_nick, reason=_reason(record.get("reason", ""))))
        # A new nick is text everyone sees, even one that differs only in case.
        if nick != user.nick and self.chat.muted_anywhere(user):
            raise ChatError(replies.MUTED_NO_NICK_CHANGE)

    def quit_reason(self, user: User, reason: str) -> str:
        """The reason others see `user` quit with: their own words only if not muted."""
        return replies.QUIT_PLAIN if self.chat.muted_anywhere(user) else reason

    # operator commands

    def require_operator(self, user: User, command: str) -> None:
        if not user.operator:
            raise ChatError(replies.NOT_OPERATOR.format(command=command))

    async def kick(self, user: User, raw_nick: str, reason: str) -> None:
        self.require_operator(user, "kick")
        nick, key = await self._online(raw_nick)
        _log_action(user, "kick", nick, reason=reason)
        user.send(replies.KICK_DONE.format(nick=nick, reason=_reason(reason)))
        self.store.publish(
            disconnect_event(
                f"nick:{key}",
                replies.KICKED.format(by=user.nick, reason=_reason(reason)),
                replies.KICK_QUIT.format(by=user.nick, reason=_reason(reason)),
            )
        )

    async def ban(self, user: User, raw_target: str, rest: list[str]) -> None:
        """`ban TARGET [DURATION] [REASON]`: `rest` is what follows the target."""
        self.require_operator(user, "ban")
        target = ban_target(raw_target)
        duration = parse_duration(rest[0]) if rest else None
        reason = " ".join(rest[1:] if duration is not None else rest)
        record = {"shown": target.shown, "by": user.nick, "reason": reason, "until": _until(duration)}
        await self.store.put_record(BAN, target.key, record)
        _log_action(user, "ban", target.shown, reason=reason, duration=duration)
        user.send(
            replies.BAN_DONE.format(target=target.shown, duration=format_duration(duration), reason=_reason(reason))
        )
        self.store.publish(events.control(BAN, target.key, record=record))

    async def unban(self, user: User, raw_target: str) -> None:
        self.require_operator(user, "unban")
        target = ban_target(raw_target)
        if target.key not in self.bans:
            raise ChatError(replies.NOT_BANNED.format(target=target.shown))
        await self.store.put_record(BAN, target.key, None)
        _log_action(user, "unban", target.shown)
        user.send(replies.UNBAN_DONE.format(target=target.shown))
        self.store.publish(events.control(BAN, target.key, record=None))

    def list_bans(self, user: User) -> str:
        self.require_operator(user, "bans")
        listed = [_describe_ban(record) for record in self.bans.values() if _active(record.get("until"))]
        return replies.BANS.format(bans="; ".join(sorted(listed))) if listed else replies.NO_BANS

    async def mute(self, user: User, raw_nick: str, options: list[str]) -> None:
        """`mute NICK [DURATION] [#ROOM|*]`: `options` is what follows the nick."""
        self.require_operator(user, "mute")
        nick, key = _nick(raw_nick)
        duration, raw_scope = _mute_options(options)
        scope, where = self._scope(user, raw_scope)
        record = {"nick": nick, "by": user.nick, "until": _until(duration)}
        await self.store.put_record(MUTE, f"{scope} {key}", record)
        _log_action(user, "mute", nick, scope=scope, duration=duration)
        user.send(replies.MUTE_DONE.format(nick=nick, scope=where, duration=format_duration(duration)))
        self.store.publish(events.control(MUTE, key, scope=scope, where=where, record=record))

    async def unmute(self, user: User, raw_nick: str, raw_scope: str | None) -> None:
        self.require_operator(user, "unmute")
        nick, key = _nick(raw_nick)
        scope, where = self._scope(user, raw_scope)
        if self.chat.mutes.get((scope, key), 0.0) <= time.time():
            raise ChatError(replies.NOT_MUTED.format(nick=nick, scope=where))
        await self.store.put_record(MUTE, f"{scope} {key}", None)
        _log_action(user, "unmute", nick, scope=scope)
        user.send(replies.UNMUTE_DONE.format(nick=nick, scope=where))
        self.store.publish(events.control(MUTE, key, scope=scope, where=where, record=None))

    async def topic(self, user: User, text: str | None) -> None:
        room = user.current
        if room is None:
            raise ChatError(replies.NO_ROOM)
        if text is None:
            current = self.chat.topics.get(room.key)
            if current is None:
                user.send(replies.NO_TOPIC.format(room=room.name))
            else:
                user.send(replies.TOPIC_IS.format(room=room.name, topic=current[0], nick=current[1]))
            return
        self.require_operator(user, "topic")
        self.chat.check_voice(user, room)
        record = None if text == CLEAR_TOPIC else {"topic": text, "by": user.nick}
        await self.store.put_record(TOPIC, room.key, record)
        _log_action(user, "topic", f"#{room.name}", topic=text)
        self.store.publish(events.control(TOPIC, room.key, record=record))
        notice = (
            replies.TOPIC_CLEARED.format(nick=user.nick, room=room.name)
            if record is None
            else replies.TOPIC_SET.format(nick=user.nick, room=room.name, topic=text)
        )
        self.store.publish(events.notice(notice, rooms=(room.key,)))

    async def _online(self, raw_nick: str) -> tuple[str, str]:
        nick, key = _nick(raw_nick)
        local = self.chat.nicks.get(key)
        if local is not None:
            return local.nick, key
        if not await self.store.remote_nick(key):
            raise ChatError(replies.NO_SUCH_USER.format(nick=raw_nick))
        return nick, key

    @staticmethod
    def _scope(user: User, raw: str | None) -> tuple[str, str]:
        """(room key or "*", how to say it): the given room, `*`, else the current room."""
        if raw == EVERYWHERE or (raw is None and user.current is None):
            return EVERYWHERE, "on this server"
        if raw is None:
            assert user.current is not None
            return user.current.key, f"in #{user.current.name}"
        name = check_room_or_error(raw)
        return room_key(name), f"in #{name}"

    # control events, on every node

    def _on_kick(self, event: Event) -> None:
        args = events.control_args(event)
        for user in self._matching(event.target):
            if connection_of(user) == args.get("spare"):
                continue
            user.send(args["notice"])
            user.hangup(args["reason"])

    def _on_ban(self, event: Event) -> None:
        record = events.control_args(event)["record"]
        self._apply_ban(event.target, record)
        if record is None:
            return
        notice = replies.BANNED_NOTICE.format(by=record["by"], reason=_reason(record["reason"]))
        reason = replies.BAN_QUIT.format(by=record["by"], reason=_reason(record["reason"]))
        for user in self._matching(event.target):
            user.send(notice)
            user.hangup(reason)

    def _on_mute(self, event: Event) -> None:
        args = events.control_args(event)
        record = args["record"]
        self._apply_mute(args["scope"], event.target, record)
        user = self.chat.nicks.get(event.target)
        if user is None:
            return
        if record is None:
            user.send(replies.UNMUTED_NOTICE.format(scope=args["where"]))
        else:
            if user.profile.away:
                user.profile.away = ""  # still away, but its text would reach others
            until = record["until"]
            duration = format_duration(None if until is None else until - time.time())
            user.send(replies.MUTED_NOTICE.format(scope=args["where"], by=record["by"], duration=duration))

    def _on_topic(self, event: Event) -> None:
        self._apply_topic(event.target, events.control_args(event)["record"])

    def _apply_ban(self, key: str, record: Record | None) -> None:
        self.bans.pop(key, None)
        self._networks.pop(key, None)
        if record is None or not _active(record.get("until")):
            return
        self.bans[key] = record
        if key.startswith("ip:"):
            self._networks[key] = parse_network(key[3:])

    def _apply_mute(self, scope: str, key: str, record: Record | None) -> None:
        if record is None:
            self.chat.mutes.pop((scope, key), None)
            return
        until = record.get("until")
        self.chat.mutes[(scope, key)] = math.inf if until is None else float(until)

    def _apply_topic(self, room: str, record: Record | None) -> None:
        if record is None:
            self.chat.topics.pop(room, None)
        else:
            self.chat.topics[room] = (record["topic"], record["by"])

    def _matching(self, target: str) -> list[User]:
        """This node's users a kick or ban target names (`nick:`, `account:` or `ip:`); an
        address ban spares operators."""
        kind, _, value = target.partition(":")
        if kind == "nick":
            return self.chat.sessions_of(value)
        if kind == "account":
            return [user for user in self.chat.users if user.account == value]
        network = parse_network(value)
        return [user for user in self.chat.users if not user.operator and address_in(user.ip, network)]


def _ban_key(key: str, record: Record) -> str:
    """The key a stored ban has by today's rules: see `ban_target`."""
    kind, _, value = key.partition(":")
    if kind == "ip":
        return f"ip:{parse_network(value)}"
    return f"nick:{nick_key(record.get('shown', value))}"


def _describe_ban(record: Record) -> str:
    until = record.get("until")
    left = "permanent" if until is None else f"{span(until - time.time())} left"
    return f"{record['shown']} ({left}, by {record['by']}{_reason(record.get('reason', ''))})"


def _mute_options(options: list[str]) -> tuple[float | None, str | None]:
    duration: float | None = None
    scope: str | None = None
    for option in options:
        if option == EVERYWHERE or option.startswith("#"):
            scope = option
        elif (seconds := parse_duration(option)) is not None:
            duration = seconds
        else:
            raise ChatError(replies.BAD_DURATION.format(text=option))
    return duration, scope


def disconnect_event(target: str, notice: str, reason: str, spare: User | None = None) -> Event:
    """Disconnect, on whichever node they are, the users `target` names (`nick:<key>`, or
    `account:<key>` for every connection linked to an account), except `spare`: by the time
    a node handles the event, `spare` may hold the nick."""
    return events.control(KICK, target, notice=notice, reason=reason, spare=connection_of(spare) if spare else "")


def connection_of(user: User) -> str:
    """A name for one connection that no other node's connection shares at the same time."""
    return f"{user.conn_id}@{user.peer}"


def _nick(raw: str) -> tuple[str, str]:
    nick = check_nick_or_error(raw)
    return nick, nick_key(nick)


def _log_action(user: User, action: str, target: str, **fields: Any) -> None:
    log.info(
        "moderation",
        action=action,
        target=target,
        by=user.nick,
        by_account=user.account,
        **user.identity,
        **fields,
    )
