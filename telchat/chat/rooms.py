"""The room manager: users, nicks, rooms, membership, history and fan-out. No sockets here.

Everything other users should see is published to the store as an Event; the store
commits it and hands it back to `deliver` (on every node, for a shared store), which
fans it out to the local users concerned. Each user reaches the network only through
its Outbox.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from telchat.chat import observers as listeners
from telchat.chat.observers import ChatEvents
from telchat.chat.outbox import Broadcast, Outbox, fan_out
from telchat.chat.profile import Profile, away_notice, mention_keys, who_entry
from telchat.obs.logs import get_logger
from telchat.obs.stats import STATS
from telchat.rules import replies
from telchat.rules.names import NameError_, check_nick, check_room, nick_key, room_key
from telchat.store import events
from telchat.store.base import Store, last_id
from telchat.store.events import EMOTE, NO_ID, SAY, EntryId, Event

log = get_logger(__name__)

#: --announce-nicks=auto tells everyone connected to this node of a nick change while at
#: most this many users are; past it, only those sharing a room with the user (and the user).
ANNOUNCE_ALL_UP_TO = 100


class ChatError(Exception):
    """A refused request; its message is the `*** ` line shown to the user."""


def _no_hangup(message: str) -> None:
    return None


@dataclass(eq=False, slots=True)
class User:
    conn_id: int
    outbox: Outbox
    peer: str = ""
    charset: str = "utf-8"
    nick: str = replies.ANONYMOUS
    key: str | None = None
    rooms: dict[str, Room] = field(default_factory=dict)
    current: Room | None = None
    events: ChatEvents | None = None
    profile: Profile = field(default_factory=Profile)
    # The account (nick key) this connection proved it owns; operator rights come with it.
    account: str | None = None
    operator: bool = False
    # Ends the connection with a quit message; its session sets it (kicks use it).
    hangup: Callable[[str], None] = _no_hangup

    @property
    def logged_in(self) -> bool:
        return self.key is not None

    @property
    def ip(self) -> str:
        return host_of(self.peer)

    @property
    def member_id(self) -> str:
        """This connection's name in cluster-wide presence."""
        return str(self.conn_id)

    def send(self, text: str, ts: float | None = None) -> None:
        """Queue one line for this user alone; `ts` is when it was said, for timestamps."""
        fan_out(self.profile.render(text, ts), (self,))


@dataclass(eq=False, slots=True)
class Room:
    key: str
    name: str
    members: dict[User, None] = field(default_factory=dict)
    # Joiners waiting for their history: what arrives meanwhile is held, then replayed.
    pending: dict[User, list[tuple[EntryId, str]]] = field(default_factory=dict)
    # A new member's last history id; deliveries of older messages (a store that
    # delivers later than it answers history) are not shown to them twice.
    since: dict[User, EntryId] = field(default_factory=dict)
    # Members with an events sink (see listeners.py).
    listeners: dict[User, None] = field(default_factory=dict)
    # Lines to all members; reset whenever `members` changes.
    output: Broadcast = field(default_factory=Broadcast)

    @property
    def empty(self) -> bool:
        return not self.members and not self.pending


def host_of(peer: str) -> str:
    """The address part of a `host:port` peer string (IPv6 included)."""
    return peer.rsplit(":", 1)[0]


def _log(event: str, user: User, **fields: Any) -> None:
    # Explicit identity: the event may be logged from another user's task (a broadcast
    # that cut off a slow reader), whose context variables name someone else.
    log.info(event, conn_id=user.conn_id, peer=user.peer, nick=user.nick, **fields)


def _format_names(nicks: Iterable[str], anonymous: int) -> str:
    """`nicks` may include other nodes' anonymous users, listed as `anonymous`."""
    nicks = list(nicks)
    anonymous += nicks.count(replies.ANONYMOUS)
    names = sorted({n for n in nicks if n != replies.ANONYMOUS}, key=str.casefold)
    text = ", ".join(names) if names else "nobody logged in"
    return f"{text} (+{anonymous} anonymous)" if anonymous else text


def check_nick_or_error(raw: str) -> str:
    try:
        return check_nick(raw)
    except NameError_ as exc:
        raise ChatError(f"*** {exc}") from None


def check_room_or_error(raw: str) -> str:
    try:
        return check_room(raw)
    except NameError_ as exc:
        raise ChatError(f"*** {exc}") from None


class Chat:
    def __init__(
        self, store: Store, history_replay: int = 20, announce_nicks: str = "auto", log_messages: bool = True
    ) -> None:
        self.store = store
        self.log_messages = log_messages
        self.history_replay = history_replay
        self.announce_nicks = announce_nicks
        self.users: dict[User, None] = {}
        self.nicks: dict[str, User] = {}
        self.rooms: dict[str, Room] = {}
        # Local users whose lines may differ from the common copy (Profile.personal).
        self.special: dict[User, None] = {}
        # (room key or "*", nick key) -> muted until (epoch seconds); kept by moderation.
        self.mutes: dict[tuple[str, str], float] = {}
        # room key -> (topic, who set it); kept by moderation.
        self.topics: dict[str, tuple[str, str]] = {}
        # Control event kind -> its handler on this node (moderation, whois).
        self.controls: dict[str, Callable[[Event], None]] = {}
        # Notices to everyone: one shared batch per loop turn, as a room's lines.
        self.everyone = Broadcast()

    # connection lifecycle

    def connect(self, user: User) -> None:
        self.users[user] = None
        self.everyone.reset()
        self.store.online(user.member_id, user.nick)

    def disconnect(self, user: User, reason: str) -> None:
        """Forget `user` everywhere; members of its rooms see it go."""
        if user not in self.users:
            return
        del self.users[user]
        self.everyone.reset()
        self.special.pop(user, None)
        if user.key is not None:
            self.nicks.pop(user.key, None)
            self.store.release_nick(user.key)
        rooms = tuple(user.rooms)
        left = list(user.rooms.values())
        for room in left:
            self._remove_member(room, user)
        user.rooms.clear()
        user.current = None
        self.store.offline(user.member_id, rooms)
        if rooms:
            self.store.publish(events.notice(replies.QUIT.format(nick=user.nick, reason=reason), rooms=rooms))
        listeners.players_changed(left)

    def attach_events(self, user: User, sink: ChatEvents) -> None:
        """From now on, tell `sink` about `user`'s rooms, their members and their talk."""
        user.events = sink
        for room in user.rooms.values():
            room.listeners[user] = None
        listeners.channels_changed(user)
        sink.players(listeners.players_of(user))

    def refresh(self, user: User) -> None:
        """Call after `user.profile` changed: keeps the set of users with personal formatting."""
        if user.profile.personal and user in self.users:
            self.special[user] = None
        else:
            self.special.pop(user, None)

    # nicks

    async def set_nick(self, user: User, raw: str) -> None:
        try:
            nick = check_nick(raw)
        except NameError_ as exc:
            raise ChatError(f"*** {exc}") from None
        key = nick_key(nick)
        owner = self.nicks.get(key)
        if owner is user and nick == user.nick:
            raise ChatError(replies.NICK_SAME.format(nick=nick))
        if owner is not None and owner is not user:
            raise ChatError(replies.NICK_TAKEN.format(nick=nick))
        if owner is None:
            # Hold the key locally while the store decides, so no local rival can slip in.
            self.nicks[key] = user
            if not await self.store.claim_nick(key, nick) or user not in self.users:
                del self.nicks[key]
                raise ChatError(replies.NICK_TAKEN.format(nick=nick))
        old, old_key = user.nick, user.key
        if old_key is not None and old_key != key:
            del self.nicks[old_key]
            self.store.release_nick(old_key)
        user.nick, user.key = nick, key
        _log("nick", user, old=old, new=nick)
        self.store.renamed(user.member_id, nick, tuple(user.rooms))
        self.store.publish(self._nick_notice(user, replies.NICK_CHANGE.format(old=old, new=nick)))
        listeners.players_changed(user.rooms.values())

    def _nick_notice(self, user: User, text: str) -> Event:
        if self.announce_nicks == "all" or (self.announce_nicks == "auto" and len(self.users) <= ANNOUNCE_ALL_UP_TO):
            return events.notice(text, everyone=True)
        return events.notice(text, rooms=tuple(user.rooms), target=user.key or "")

    # rooms

    async def join(self, user: User, raw: str) -> None:
        name = check_room_or_error(raw)
        key = room_key(name)
        room = self.rooms.get(key)
        if room is not None and key in user.rooms:
            user.current = room
            user.send(replies.SWITCHED.format(room=room.name))
            listeners.channels_changed(user)
            return
        if room is None:
            name = await self.store.room_name(key, name)
            # Another local user may have created it while the store answered.
            room = self.rooms.get(key) or self.rooms.setdefault(key, Room(key, name))
        if user in room.pending:
            return  # already joining; the first join finishes it
        room.pending[user] = []
        try:
            history = await self.store.recent(key, self.history_replay)
        except BaseException:
            self._drop_pending(room, user)
            raise
        held = room.pending.pop(user, None)
        if held is None or user not in self.users:
            self._drop_pending(room, user)
            return  # the user left while the store answered
        self._admit(room, user, history, held)

    def _admit(self, room: Room, user: User, history: list[Event], held: list[tuple[EntryId, str]]) -> None:
        seen = last_id(history)
        self._replay(user, room, history)
        topic = self.topics.get(room.key)
        if topic is not None:
            user.send(replies.TOPIC_IS.format(room=room.name, topic=topic[0], nick=topic[1]))
        for entry_id, text in held:
            if entry_id == NO_ID or entry_id > seen:
                user.send(text)
        room.members[user] = None
        room.output.reset()
        if user.events is not None:
            room.listeners[user] = None
        room.since[user] = seen
        user.rooms[room.key] = room
        user.current = room
        _log("join", user, room=room.name)
        self.store.joined(room.key, room.name, user.member_id, user.nick)
        self.store.publish(events.notice(replies.JOINED.format(nick=user.nick, room=room.name), rooms=(room.key,)))
        listeners.membership_changed(user, room)

    def _drop_pending(self, room: Room, user: User) -> None:
        room.pending.pop(user, None)
        if room.empty and self.rooms.get(room.key) is room:
            del self.rooms[room.key]

    def leave(self, user: User, raw: str | None) -> None:
        room = self._member_room(user, raw)
        text = replies.LEFT.format(nick=user.nick, room=room.name)
        # The leaver sees its own notice: deliver it directly, the room no longer includes it.
        user.send(text)
        self._remove_member(room, user)
        del user.rooms[room.key]
        self.store.publish(events.notice(text, rooms=(room.key,)))
        if user.current is room:
            user.current = next(reversed(user.rooms.values()), None)
            if user.current is not None:
                user.send(replies.SWITCHED.format(room=user.current.name))
        listeners.membership_changed(user, room)

    def _remove_member(self, room: Room, user: User) -> None:
        room.members.pop(user, None)
        room.output.reset()
        room.listeners.pop(user, None)
        room.since.pop(user, None)
        _log("leave", user, room=room.name)
        self.store.left(room.key, user.member_id)
        if room.empty:
            del self.rooms[room.key]

    def _member_room(self, user: User, raw: str | None) -> Room:
        if raw is None:
            if user.current is None:
                raise ChatError(replies.NO_ROOM)
            return user.current
        name = check_room_or_error(raw)
        room = user.rooms.get(room_key(name))
        if room is None:
            raise ChatError(replies.NOT_MEMBER.format(room=name))
        return room

    # talking

    def say(self, user: User, text: str, kind: str = SAY) -> None:
        room = self._speaking_room(user)
        STATS.messages += 1
        _log("message", user, room=room.name, kind=kind, **self._text(text))
        self.store.publish(events.message(kind, room.key, room.name, user.nick, text))

    def emote(self, user: User, text: str) -> None:
        self.say(user, text, EMOTE)

    async def private(self, user: User, raw_nick: str, text: str) -> None:
        self._require_login(user)
        self._check_voice(user, None)
        key = nick_key(raw_nick)
        target = self.nicks.get(key)
        if target is None and not await self.store.remote_nick(key):
            raise ChatError(replies.NO_SUCH_USER.format(nick=raw_nick))
        shown = target.nick if target is not None else raw_nick
        STATS.private_messages += 1
        _log("private_message", user, to=shown, **self._text(text))
        line = replies.PRIVATE_OUT.format(nick=shown, text=text)
        user.send(line)
        listeners.channel_text((user,), f"tell {shown}", user.nick, line)
        self.store.publish(events.private(user.nick, key, text))

    def _text(self, text: str) -> dict[str, str]:
        """The chat text for a log event, unless the operator keeps chat text out of logs."""
        return {"text": text} if self.log_messages else {}

    def _speaking_room(self, user: User) -> Room:
        self._require_login(user)
        if user.current is None:
            raise ChatError(replies.NO_ROOM)
        self._check_voice(user, user.current)
        return user.current

    def muted(self, key: str, room: str = "*") -> bool:
        """Whether nick `key` is muted in `room` (or server-wide, for "*")."""
        if not self.mutes:
            return False
        now = time.time()
        return any(self.mutes.get((scope, key), 0.0) > now for scope in {room, "*"})

    def _check_voice(self, user: User, room: Room | None) -> None:
        if user.key is None or not self.muted(user.key, room.key if room is not None else "*"):
            return
        if room is not None and not self.muted(user.key):
            raise ChatError(replies.MUTED_IN.format(room=room.name))
        raise ChatError(replies.MUTED)

    @staticmethod
    def _require_login(user: User) -> None:
        if not user.logged_in:
            raise ChatError(replies.LOGIN_FIRST)

    @staticmethod
    def _format(room: Room, entry: Event) -> str:
        template = replies.EMOTE if entry.kind == EMOTE else replies.SAY
        return template.format(room=room.name, nick=entry.nick, text=entry.text)

    # delivery of committed events (called by the store)

    def deliver(self, event: Event) -> None:
        if event.in_history:
            room = self.rooms.get(event.room)
            if room is not None:
                started = perf_counter()
                line = self._format(room, event)
                self._deliver_room(room, event, line)
                STATS.fanout_seconds.observe(perf_counter() - started)
                if room.listeners:
                    hearing = tuple(u for u in room.listeners if not u.profile.ignores(event.nick))
                    listeners.channel_text(hearing, room.name, event.nick, line)
        elif event.kind == events.PRIVATE:
            self._deliver_private(event)
        elif event.kind == events.NOTICE:
            self._deliver_notice(event)
        else:
            handler = self.controls.get(event.kind)
            if handler is not None:
                handler(event)

    def _deliver_private(self, event: Event) -> None:
        target = self.nicks.get(event.target)
        if target is None or target.profile.ignores(event.nick):
            return
        line = replies.PRIVATE_IN.format(nick=event.nick, text=event.text)
        target.send(line)
        STATS.deliveries += 1
        listeners.channel_text((target,), f"tell {event.nick}", event.nick, line)
        if target.profile.away is not None:
            # Published, not sent: the sender may be connected to another node.
            self.store.publish(events.notice(away_notice(target.nick, target.profile), target=nick_key(event.nick)))

    def _deliver_notice(self, event: Event) -> None:
        if event.everyone:
            if self.special:
                self._fan_out(event.text, self.users)
            else:
                # A storm of logins costs one append per notice, not one push per user each.
                self.everyone.send(event.text, self.users)
            return
        audience: dict[User, None] = {}
        for key in event.rooms:
            room = self.rooms.get(key)
            if room is not None:
                audience.update(room.members)
                for held in room.pending.values():
                    held.append((NO_ID, event.text))
        target = self.nicks.get(event.target) if event.target else None
        if target is not None:
            audience[target] = None
        self._fan_out(event.text, audience)

    def _fan_out(self, text: str, recipients: Iterable[User]) -> None:
        """fan_out, except that users with personal formatting get their own rendering."""
        if not self.special:
            fan_out(text, recipients)
            return
        common: list[User] = []
        for user in recipients:
            if user in self.special:
                user.send(text)
            else:
                common.append(user)
        fan_out(text, common)

    def _deliver_room(self, room: Room, event: Event, text: str) -> None:
        entry_id = event.id
        for held in room.pending.values():
            held.append((entry_id, text))
        recipients: Iterable[User] = room.members
        since = room.since
        if since:
            recipients = [u for u in room.members if entry_id > since.get(u, NO_ID)]
            # Ids only grow: once past a member's history, no older message can follow.
            for user in [u for u, seen in since.items() if entry_id > seen]:
                del since[user]
        personal = self._personal(room, event)
        if personal:
            recipients = self._send_personal(recipients, personal, event, text)
        if recipients is room.members and not room.listeners:
            # Everyone gets the common copy and nothing else: the room's shared batches.
            room.output.send(text, recipients)
            STATS.deliveries += len(room.members)
        else:
            # Some get their own copy, or none, or (listeners) more: one push each.
            room.output.reset()
            STATS.deliveries += fan_out(text, recipients)

    def _personal(self, room: Room, event: Event) -> dict[User, bool]:
        """Members whose copy of this message is their own -> whether it names them."""
        personal = {user: False for user in self.special if user in room.members}
        for key in mention_keys(event.text):
            user = self.nicks.get(key)
            if user is not None and user in room.members and user.profile.highlight and user.nick != event.nick:
                personal[user] = True
        return personal

    @staticmethod
    def _send_personal(recipients: Iterable[User], personal: dict[User, bool], event: Event, text: str) -> list[User]:
        """Send the personal copies; return the recipients who share the common one."""
        common: list[User] = []
        for user in recipients:
            mentioned = personal.get(user)
            if mentioned is None:
                common.append(user)
            elif not user.profile.ignores(event.nick):
                user.send(user.profile.mentioned(text) if mentioned else text, event.ts)
                STATS.deliveries += 1
        return common

    # queries (this node's view, plus what the store knows of other nodes)

    async def who(self, user: User, raw: str | None) -> str:
        if raw is None and user.current is None:
            local = [who_entry(u.nick, u.profile) for u in self.users if u.logged_in]
            anonymous = len(self.users) - len(local)
            remote = await self.store.remote_online()
            return replies.WHO_ALL.format(names=_format_names([*local, *remote], anonymous))
        if raw is None:
            assert user.current is not None
            key, name = user.current.key, user.current.name
        else:
            name = check_room_or_error(raw)
            key = room_key(name)
        room = self.rooms.get(key)
        remote = await self.store.remote_members(key)
        if room is None and not remote:
            raise ChatError(replies.NO_SUCH_ROOM.format(room=name))
        members = list(room.members) if room is not None else []
        local = [who_entry(u.nick, u.profile) for u in members if u.logged_in]
        shown = room.name if room is not None else name
        return replies.WHO_ROOM.format(room=shown, names=_format_names([*local, *remote], len(members) - len(local)))

    async def room_list(self) -> str:
        counts = await self.store.remote_rooms()
        for room in self.rooms.values():
            name, count = counts.get(room.key, (room.name, 0))
            counts[room.key] = (name, count + len(room.members))
        listed = sorted((key, name, count) for key, (name, count) in counts.items() if count)
        if not listed:
            return replies.NO_ROOMS
        return replies.ROOMS.format(rooms=", ".join(f"#{name} ({count})" for _, name, count in listed))

    async def history(self, user: User, count: int) -> None:
        if user.current is None:
            raise ChatError(replies.NO_ROOM)
        room = user.current
        self._replay(user, room, await self.store.recent(room.key, count))

    def _replay(self, user: User, room: Room, entries: list[Event]) -> None:
        user.send(replies.HISTORY_HEADER.format(room=room.name))
        for entry in entries:
            if not user.profile.ignores(entry.nick):
                user.send(self._format(room, entry), entry.ts)

    def broadcast_local(self, text: str) -> None:
        """Tell every user connected to this node, now (shutdown)."""
        self._fan_out(text, self.users)
