"""The room manager: users, nicks, rooms, membership, history and fan-out. No sockets here.

Each user reaches the network only through its Outbox; the store decides when a line is
durable, and only then is it delivered (`HistoryStore.after_commit`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from telchat import listeners, replies
from telchat.listeners import ChatEvents
from telchat.logs import get_logger
from telchat.names import NameError_, check_nick, check_room, nick_key, room_key
from telchat.outbox import Outbox, fan_out
from telchat.store import EMOTE, SAY, Entry, HistoryStore

log = get_logger("telchat.rooms")


class ChatError(Exception):
    """A refused request; its message is the `*** ` line shown to the user."""


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
    connected_at: float = field(default_factory=time.monotonic)
    events: ChatEvents | None = None

    @property
    def logged_in(self) -> bool:
        return self.key is not None

    def send(self, text: str) -> None:
        fan_out(text, (self,))


@dataclass(eq=False, slots=True)
class Room:
    key: str
    name: str
    members: dict[User, None] = field(default_factory=dict)
    # Members with an events sink (see listeners.py).
    listeners: dict[User, None] = field(default_factory=dict)


def _log(event: str, user: User, **fields: Any) -> None:
    # Explicit identity: the event may be logged from another user's task (a broadcast
    # that cut off a slow reader), whose context variables name someone else.
    log.info(event, conn_id=user.conn_id, peer=user.peer, nick=user.nick, **fields)


def _names(users: Iterable[User]) -> str:
    nicks = sorted((u.nick for u in users if u.logged_in), key=str.casefold)
    anonymous = sum(1 for u in users if not u.logged_in)
    text = ", ".join(nicks) if nicks else "nobody logged in"
    return f"{text} (+{anonymous} anonymous)" if anonymous else text


class Chat:
    def __init__(self, store: HistoryStore, history_replay: int = 20, announce_nicks: str = "all") -> None:
        self.store = store
        self.history_replay = history_replay
        self.announce_nicks = announce_nicks
        self.users: dict[User, None] = {}
        self.nicks: dict[str, User] = {}
        self.rooms: dict[str, Room] = {}

    # connection lifecycle

    def connect(self, user: User) -> None:
        self.users[user] = None

    def disconnect(self, user: User, reason: str) -> None:
        """Forget `user` everywhere; members of its rooms see it go."""
        if user not in self.users:
            return
        del self.users[user]
        if user.key is not None:
            self.nicks.pop(user.key, None)
        rooms = list(user.rooms.values())
        user.rooms.clear()
        user.current = None
        for room in rooms:
            self._remove_member(room, user)
        self._deliver(self._audience_of_rooms(rooms), replies.QUIT.format(nick=user.nick, reason=reason))
        listeners.players_changed(rooms)

    def attach_events(self, user: User, sink: ChatEvents) -> None:
        """From now on, tell `sink` about `user`'s rooms, their members and their talk."""
        user.events = sink
        for room in user.rooms.values():
            room.listeners[user] = None
        listeners.channels_changed(user)
        sink.players(listeners.players_of(user))

    # nicks

    def set_nick(self, user: User, raw: str) -> None:
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
        old = user.nick
        if user.key is not None:
            del self.nicks[user.key]
        self.nicks[key] = user
        user.nick, user.key = nick, key
        _log("nick", user, old=old, new=nick)
        self._deliver(self._nick_audience(user), replies.NICK_CHANGE.format(old=old, new=nick))
        listeners.players_changed(user.rooms.values())

    def _nick_audience(self, user: User) -> Iterable[User]:
        if self.announce_nicks == "all":
            return self.users
        audience = self._audience_of_rooms(user.rooms.values())
        audience[user] = None
        return audience

    def find_user(self, raw: str) -> User:
        user = self.nicks.get(nick_key(raw))
        if user is None:
            raise ChatError(replies.NO_SUCH_USER.format(nick=raw))
        return user

    # rooms

    async def join(self, user: User, raw: str) -> None:
        room = self._room(raw, create=True)
        if room.key in user.rooms:
            user.current = room
            user.send(replies.SWITCHED.format(room=room.name))
            listeners.channels_changed(user)
            return
        entries = await self.store.recent(room.key, self.history_replay)
        # Re-resolve: the room may have emptied and been dropped while the store answered.
        room = self._room(raw, create=True)
        user.send(replies.HISTORY_HEADER.format(room=room.name))
        for entry in entries:
            user.send(self._format(room, entry))
        room.members[user] = None
        if user.events is not None:
            room.listeners[user] = None
        user.rooms[room.key] = room
        user.current = room
        _log("join", user, room=room.name)
        self._deliver_after_commit(room.members, replies.JOINED.format(nick=user.nick, room=room.name))
        listeners.membership_changed(user, room)

    def leave(self, user: User, raw: str | None) -> None:
        room = self._member_room(user, raw)
        del user.rooms[room.key]
        audience = dict(room.members)
        self._remove_member(room, user)
        self._deliver_after_commit(audience, replies.LEFT.format(nick=user.nick, room=room.name))
        if user.current is room:
            user.current = next(reversed(user.rooms.values()), None)
            if user.current is not None:
                user.send(replies.SWITCHED.format(room=user.current.name))
        listeners.membership_changed(user, room)

    def _remove_member(self, room: Room, user: User) -> None:
        room.members.pop(user, None)
        room.listeners.pop(user, None)
        _log("leave", user, room=room.name)
        if not room.members:
            del self.rooms[room.key]

    def _room(self, raw: str, create: bool = False) -> Room:
        name = check_room_or_error(raw)
        key = room_key(name)
        room = self.rooms.get(key)
        if room is None:
            if not create:
                raise ChatError(replies.NO_SUCH_ROOM.format(room=name))
            room = self.rooms[key] = Room(key, name)
        return room

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

    @staticmethod
    def _audience_of_rooms(rooms: Iterable[Room]) -> dict[User, None]:
        audience: dict[User, None] = {}
        for room in rooms:
            audience.update(room.members)
        return audience

    # talking

    def say(self, user: User, text: str, kind: str = SAY) -> None:
        room = self._speaking_room(user)
        entry = Entry(room.key, user.nick, text, kind)
        self.store.append(entry)
        _log("message", user, room=room.name, kind=kind, text=text)
        line = self._format(room, entry)
        self._deliver_after_commit(room.members, line)
        if room.listeners:
            audience = tuple(room.listeners)
            self.store.after_commit(lambda: listeners.channel_text(audience, room.name, entry.nick, line))

    def emote(self, user: User, text: str) -> None:
        self.say(user, text, EMOTE)

    def private(self, user: User, raw_nick: str, text: str) -> None:
        self._require_login(user)
        target = self.find_user(raw_nick)
        _log("private_message", user, to=target.nick, text=text)
        line_in = replies.PRIVATE_IN.format(nick=user.nick, text=text)
        line_out = replies.PRIVATE_OUT.format(nick=target.nick, text=text)
        target.send(line_in)
        user.send(line_out)
        listeners.channel_text((target,), f"tell {user.nick}", user.nick, line_in)
        listeners.channel_text((user,), f"tell {target.nick}", user.nick, line_out)

    def _speaking_room(self, user: User) -> Room:
        self._require_login(user)
        if user.current is None:
            raise ChatError(replies.NO_ROOM)
        return user.current

    @staticmethod
    def _require_login(user: User) -> None:
        if not user.logged_in:
            raise ChatError(replies.LOGIN_FIRST)

    @staticmethod
    def _format(room: Room, entry: Entry) -> str:
        template = replies.EMOTE if entry.kind == EMOTE else replies.SAY
        return template.format(room=room.name, nick=entry.nick, text=entry.text)

    def _deliver(self, recipients: Iterable[User], text: str) -> None:
        fan_out(text, recipients)

    def _deliver_after_commit(self, members: dict[User, None], text: str) -> None:
        # Snapshot membership now: whoever is in the room when the line is said gets it.
        recipients = tuple(members)
        self.store.after_commit(lambda: self._deliver(recipients, text))

    # queries

    def who(self, user: User, raw: str | None) -> str:
        if raw is not None:
            room = self._room(raw)
            return replies.WHO_ROOM.format(room=room.name, names=_names(room.members))
        if user.current is not None:
            room = user.current
            return replies.WHO_ROOM.format(room=room.name, names=_names(room.members))
        return replies.WHO_ALL.format(names=_names(self.users))

    def room_list(self) -> str:
        if not self.rooms:
            return replies.NO_ROOMS
        rooms = sorted(self.rooms.values(), key=lambda r: r.key)
        return replies.ROOMS.format(rooms=", ".join(f"#{r.name} ({len(r.members)})" for r in rooms))

    async def history(self, user: User, count: int) -> list[str]:
        if user.current is None:
            raise ChatError(replies.NO_ROOM)
        room = user.current
        entries = await self.store.recent(room.key, count)
        return [replies.HISTORY_HEADER.format(room=room.name), *(self._format(room, e) for e in entries)]

    def broadcast_all(self, text: str) -> None:
        self._deliver(self.users, text)

    def stats(self) -> dict[str, Any]:
        return {"users": len(self.users), "rooms": len(self.rooms)}


def check_room_or_error(raw: str) -> str:
    try:
        return check_room(raw)
    except NameError_ as exc:
        raise ChatError(f"*** {exc}") from None
