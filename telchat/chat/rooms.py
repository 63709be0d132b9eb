"""The room manager: users, nicks, rooms, membership, history and fan-out. No sockets here.

Everything other users should see is published to the store as an Event; the store
commits it and hands it back to `deliver` (on every node, for a shared store), which
fans it out to the local users concerned. Each user reaches the network only through
its Outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from time import perf_counter
from typing import Any, Final, Protocol

from telchat.chat.observers import ChatEvents, Players
from telchat.chat.outbox import Broadcast, Outbox, fan_out
from telchat.chat.profile import Profile, away_notice, mention_keys, who_entry
from telchat.obs.logs import get_logger
from telchat.obs.telemetry import Telemetry
from telchat.rules import replies
from telchat.rules.names import NameError_, check_nick, check_room, look_key, lookalikes, nick_key, room_key
from telchat.rules.pages import page_count, page_of, wrap
from telchat.store import events
from telchat.store.base import RemoteRoom, Store, StoreError, last_id
from telchat.store.events import EMOTE, NO_ID, SAY, EntryId, Event, MessageKind

log = get_logger(__name__)

# `who *`: everyone online, even from a room.
EVERYONE = "*"

#: --announce-nicks=auto tells everyone connected to this node of a nick change while at
#: most this many users are; past it, only those sharing a room with the user (and the user).
ANNOUNCE_ALL_UP_TO = 100


class ChatError(Exception):
    """A refused request; its message is the `*** ` line shown to the user."""


class NotOnline(ChatError):
    """A private message to a nick that nobody holds now."""


class Link(Protocol):
    """A user's connection, as the chat sees it (its session sets it)."""

    def hangup(self, message: str) -> None:
        """End the connection with a quit message (kicks use it)."""

    def connected(self) -> bool:
        """Whether the peer is still there: what was written may have reached it."""
        ...


class _Unlinked:
    """A user no session has taken yet: nothing to hang up, and there as far as anyone knows."""

    def hangup(self, message: str) -> None:
        return None

    def connected(self) -> bool:
        return True


UNLINKED: Link = _Unlinked()


# A notice to more members than this may linger (outbox.NOTICE_LINGER) to share a write.
LINGER_AUDIENCE = 50
# Control events: a session of an account joined or left a room; its sessions on every node follow.
ACCOUNT_JOIN: Final = "account_join"
ACCOUNT_LEAVE: Final = "account_leave"


@dataclass(eq=False, slots=True)
class User:
    conn_id: int
    outbox: Outbox
    peer: str = ""
    charset: str = "utf-8"
    # The door it came in by (telnet, tls, web, ssh): its log events name it.
    door: str = "telnet"
    nick: str = replies.ANONYMOUS
    key: str | None = None
    rooms: dict[str, Room] = field(default_factory=dict)
    current: Room | None = None
    events: ChatEvents | None = None
    profile: Profile = field(default_factory=Profile)
    # The account (nick key) this connection proved it owns; operator rights come with it.
    account: str | None = None
    operator: bool = False
    # Its connection: one object, not two callbacks (bound methods) every user would hold.
    link: Link = UNLINKED
    # The client's width, as far as it told (NAWS); what long answers are wrapped to.
    columns: int = 80

    @property
    def logged_in(self) -> bool:
        return self.key is not None

    def hangup(self, message: str) -> None:
        self.link.hangup(message)

    def connected(self) -> bool:
        return self.link.connected()

    @property
    def identity(self) -> dict[str, Any]:
        """What names this connection in a log event. Given explicitly: the event may be
        logged outside its session's log context (in data_received, or another user's task)."""
        return {"conn_id": self.conn_id, "peer": self.peer, "transport": self.door, "nick": self.nick}

    @property
    def ip(self) -> str:
        return host_of(self.peer)

    @property
    def member_id(self) -> str:
        """This connection's name in cluster-wide presence."""
        return str(self.conn_id)

    def send(self, text: str, ts: float | None = None, *, dated: bool = False) -> None:
        """Queue one line for this user alone; `ts` is when it was said, for timestamps
        (`dated`: shown even to a user who turned timestamps off)."""
        fan_out(self.profile.render(text, ts, dated=dated), (self,))


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
    # Members with an events sink (see observers.py).
    listeners: dict[User, None] = field(default_factory=dict)
    # Lines to all members; reset whenever `members` changes.
    output: Broadcast = field(default_factory=Broadcast)
    # The newest history id its members have been given (replay or delivery): where a
    # member who leaves now is up to (features/continuity.py's read markers).
    last: EntryId = NO_ID

    @property
    def empty(self) -> bool:
        return not self.members and not self.pending


def host_of(peer: str) -> str:
    """The address part of a `host:port` peer string (IPv6 included)."""
    return peer.rsplit(":", 1)[0]


def _log(event: str, user: User, **fields: Any) -> None:
    log.info(event, **user.identity, **fields)


def _people(here: Room | None, elsewhere: RemoteRoom | None) -> int:
    """The members of a room, here and on other nodes: an account's sessions counted once
    wherever they are (as `who` names them), each anonymous member once."""
    keys = set(elsewhere.keys) if elsewhere is not None else set()
    anonymous = elsewhere.anonymous if elsewhere is not None else 0
    for member in here.members if here is not None else ():
        if member.key is None:
            anonymous += 1
        else:
            keys.add(member.key)
    return len(keys) + anonymous


def _any_in(users: list[User], room: Room) -> bool:
    return any(user in room.members for user in users)


def _names(here: Iterable[User], elsewhere: Iterable[str]) -> tuple[list[str], str]:
    """A listing's items and tail: users here and other nodes' nicks, an account's sessions
    named once (as a session here shows it, if it has one), anonymous ones counted in the tail."""
    entries: dict[str, str] = {}
    anonymous = 0
    for user in here:
        if user.key is None:
            anonymous += 1
        else:
            entries.setdefault(user.key, who_entry(user.nick, user.profile))
    for nick in elsewhere:
        if nick == replies.ANONYMOUS:
            anonymous += 1
        else:
            entries.setdefault(nick_key(nick), nick)
    names = sorted(entries.values(), key=str.casefold)
    return names or ["nobody logged in"], f" (+{anonymous} anonymous)" if anonymous else ""


def _listing(head: str, listing: tuple[list[str], str], number: int, command: str, after: list[str]) -> list[str]:
    """Page `number` of a listing (items and the tail after the last), in short lines; the
    last page ends with the lines `after`, any other with how to see the next."""
    items, tail = listing
    page = page_of(items, number)
    if page is None:
        raise ChatError(replies.NO_SUCH_PAGE.format(page=number, pages=page_count(items)))
    if page.last:
        return wrap(head, page.items, tail) + after
    more = replies.MORE_PAGES.format(page=page.number, pages=page.count, command=command, next=page.number + 1)
    return [*wrap(head, page.items), more]


# Shows a joiner the history `Chat.join` loaded for it (the ordinary replay, or catch-up).
Replay = Callable[["User", "Room", list[Event]], None]


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
        self,
        store: Store,
        *,
        history_replay: int = 20,
        announce_nicks: str = "auto",
        log_messages: bool = True,
        max_rooms_per_user: int = 50,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.store = store
        self.max_rooms_per_user = max_rooms_per_user
        self.telemetry = telemetry or Telemetry()
        self.stats = self.telemetry.stats
        self.log_messages = log_messages
        self.history_replay = history_replay
        self.announce_nicks = announce_nicks
        self.users: dict[User, None] = {}
        self.nicks: dict[str, User] = {}
        # look_key of each local user's nick -> that user: lookalikes are refused.
        self.looks: dict[str, User] = {}

        self.rooms: dict[str, Room] = {}
        # Local users whose lines may differ from the common copy (Profile.personal).
        self.special: dict[User, None] = {}
        # (room key or "*", nick key) -> muted until (epoch seconds); kept by moderation.
        self.mutes: dict[tuple[str, str], float] = {}
        # room key -> (topic, who set it); kept by moderation.
        self.topics: dict[str, tuple[str, str]] = {}
        # Control event kind -> its handler on this node (moderation, whois).
        self.controls: dict[str, Callable[[Event], None]] = {}
        # Nick key -> this node's further sessions of an account logged in more than once
        # (features/accounts.py); its first session is the one in `nicks`.
        self.sessions: dict[str, list[User]] = {}
        self._quits: set[asyncio.Future[None]] = set()
        # This node's sessions of an account joining a room one of its sessions on another node joined.
        self._following: set[asyncio.Task[None]] = set()
        self.controls[ACCOUNT_JOIN] = self._account_joined
        self.controls[ACCOUNT_LEAVE] = self._account_left
        # Called with a user about to leave everything (features/continuity.py saves its rooms).
        self.departures: list[Callable[[User], None]] = []
        # Called with a user who joined or left a room (features/continuity.py saves its rooms).
        self.moved: list[Callable[[User], None]] = []
        # Called with each room message as it is published, on the speaker's node only.
        self.said: list[Callable[[User, Room, str], None]] = []
        store.on_nick_lost(self.lose_nick)
        # Notices to everyone: one shared batch per loop turn, as a room's lines.
        self.everyone = Broadcast()

    def look_keys(self) -> dict[User, str]:
        """Each local user's look key (`looks` the other way round), for an upgrade to
        carry: the new image then need not read the confusables data within its pause."""
        return {user: look for look, user in self.looks.items()}

    # connection lifecycle

    def connect(self, user: User) -> None:
        self.users[user] = None
        self.everyone.reset()
        self.store.online(user.member_id, user.nick)

    def disconnect(self, user: User, reason: str) -> None:
        """Forget `user` everywhere; members of its rooms see it go."""
        if user not in self.users:
            return
        for departure in self.departures:
            departure(user)
        del self.users[user]
        self.everyone.reset()
        self.special.pop(user, None)
        peers = self.peers(user)
        if user.key is not None:
            self._drop_session(user, user.key)
        rooms = tuple(user.rooms)
        left = self._leave_all(user)
        self.store.offline(user.member_id, rooms)
        # The account stays in the rooms where another of its sessions is.
        gone = tuple(room.key for room in left if not _any_in(peers, room))
        quit_notice = replies.QUIT.format(nick=user.nick, reason=reason)
        if gone and user.account is not None and self.store.clustered:
            task = asyncio.ensure_future(self._quit_unless_elsewhere(user, gone, quit_notice))
            self._quits.add(task)
            task.add_done_callback(self._quits.discard)
        elif gone:
            self.store.publish(events.notice(quit_notice, rooms=gone))
        _players_changed(left)

    async def _quit_unless_elsewhere(self, user: User, rooms: tuple[str, ...], text: str) -> None:
        """Announce a registered user's quit to the rooms where no session of its account on
        another node still is."""
        gone = []
        for room in rooms:
            try:
                if not await self._elsewhere(user, room):
                    gone.append(room)
            except StoreError:
                gone.append(room)
        if gone:
            self.store.publish(events.notice(text, rooms=tuple(gone)))

    async def _elsewhere(self, user: User, room: str) -> bool:
        """Whether a session of `user`'s account on another node is in `room`."""
        if user.account is None or user.key != user.account or not self.store.clustered:
            return False
        return any(nick_key(nick) == user.key for nick in await self.store.remote_members(room))

    def sessions_of(self, key: str) -> list[User]:
        """This node's sessions holding nick `key`: one, or several of one account."""
        first = self.nicks.get(key)
        return [first, *self.sessions.get(key, ())] if first is not None else []

    def peers(self, user: User) -> list[User]:
        """The other sessions here of `user`'s account."""
        if user.key is None or user.key not in self.sessions:
            return []
        return [peer for peer in self.sessions_of(user.key) if peer is not user]

    def add_session(self, user: User, nick: str) -> None:
        """`user` becomes one more session of the account holding `nick`, here or on another
        node (whose claim it shares: store.share_nick). Only its own screen shows the change."""
        key = nick_key(nick)
        old = user.nick
        if user.key is not None:
            self._drop_session(user, user.key)
        user.nick, user.key = nick, key
        if key in self.nicks:
            self.sessions.setdefault(key, []).append(user)
        else:
            self.nicks[key] = user
            self.looks[look_key(nick)] = user
            self.store.share_nick(key, nick)
        _log("session", user, old=old)
        self.store.renamed(user.member_id, nick, tuple(user.rooms))
        user.send(replies.NICK_CHANGE.format(old=old, new=nick))

    def _drop_session(self, user: User, key: str) -> None:
        """`user` gives up nick `key`: the next session of its account (if any) holds it."""
        rest = self.sessions.get(key)
        if rest is not None and user in rest:
            rest.remove(user)
        elif self.nicks.get(key) is user:
            self._forget_look(user)
            if rest:
                self.nicks[key] = rest.pop(0)
                self.looks[look_key(user.nick)] = self.nicks[key]
            else:
                del self.nicks[key]
                self.store.release_nick(key)
        if rest is not None and not rest:
            del self.sessions[key]

    def _leave_all(self, user: User) -> list[Room]:
        """Take `user` out of every room, telling no one; return the rooms it was in."""
        left = list(user.rooms.values())
        for room in left:
            self._remove_member(room, user)
        user.rooms.clear()
        user.current = None
        return left

    def attach_events(self, user: User, sink: ChatEvents, tell: bool = True) -> None:
        """From now on, tell `sink` about `user`'s rooms, their members and their talk
        (and, if `tell`, what they are now)."""
        user.events = sink
        for room in user.rooms.values():
            room.listeners[user] = None
        if tell:
            _channels_changed(user)
            sink.players(partial(players_of, user))

    def adopt(self, user: User, rooms: Sequence[tuple[str, str]], current: str | None, look: str | None) -> None:
        """Take up a user carried over a server upgrade: back under its nick (`look`, its
        look key, if carried) and in its rooms (key, name) as it was, announced to no one:
        to everyone else, nothing happened."""
        self.users[user] = None
        if user.key is not None and user.key in self.nicks:
            self.sessions.setdefault(user.key, []).append(user)  # another session of an account
        elif user.key is not None:
            self.nicks[user.key] = user
            self.looks[look if look is not None else look_key(user.nick)] = user
        for key, name in rooms:
            room = self.rooms.get(key) or self.rooms.setdefault(key, Room(key, name))
            room.members[user] = None
            room.output.reset()
            if user.events is not None:
                room.listeners[user] = None
            user.rooms[key] = room
        user.current = user.rooms.get(current) if current is not None else None
        self.refresh(user)

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
        if (owner is not None and owner is not user) or self._lookalike_held(user, nick):
            raise ChatError(replies.NICK_TAKEN.format(nick=nick))
        look = look_key(nick)
        if owner is None:
            # The store claims the look key with the identity key (Store.claim_nick).
            await self._claim(user, key, nick)
        old, old_key = user.nick, user.key
        if old_key is not None and old_key != key:
            self._drop_session(user, old_key)
        self._forget_look(user)
        self.looks[look] = user
        user.nick, user.key = nick, key
        _log("nick", user, old=old, new=nick)
        self.store.renamed(user.member_id, nick, tuple(user.rooms))
        self.store.publish(self._nick_notice(user, replies.NICK_CHANGE.format(old=old, new=nick)))
        _players_changed(user.rooms.values())

    async def _claim(self, user: User, key: str, nick: str) -> None:
        """Claim `key` in the store for `user`; whatever happens, no claim outlives its reason."""
        # Hold the key locally while the store decides, so no local rival can slip in.
        self.nicks[key] = user
        try:
            claimed = await self.store.claim_nick(key, nick)
        except BaseException:
            self._unhold(user, key)
            raise
        if claimed and user in self.users:
            return
        self._unhold(user, key)
        if claimed:
            self.store.release_nick(key)  # the user left while the store answered
        raise ChatError(replies.NICK_TAKEN.format(nick=nick))

    def _unhold(self, user: User, key: str) -> None:
        if self.nicks.get(key) is user:
            del self.nicks[key]

    def lose_nick(self, key: str) -> None:
        """The store found `key` owned by another node (this node was cut off for longer
        than the node TTL, or Redis lost the claim and someone took it): the local holder
        must go, or two people would answer to one nick."""
        for user in self.sessions_of(key):
            _log("nick_lost", user)
            # The nick is someone else's now: nothing to release, and no quit under it to its
            # rooms, which already saw this user quit when its node was declared dead.
            user.key = None
            _players_changed(self._leave_all(user))
            user.send(replies.NICK_LOST.format(nick=user.nick))
            user.hangup(replies.NICK_LOST_REASON)
        self.nicks.pop(key, None)
        self.sessions.pop(key, None)

    def _lookalike_held(self, user: User, nick: str) -> bool:
        """Whether someone else here holds a nick that reads like `nick` (names.lookalikes)."""
        for key in lookalikes(nick):
            for held in (self.nicks, self.looks):
                holder = held.get(key)
                if holder is not None and holder is not user:
                    return True
        return False

    def _forget_look(self, user: User) -> None:
        if user.key is not None:
            look = look_key(user.nick)
            if self.looks.get(look) is user:
                del self.looks[look]

    def _nick_notice(self, user: User, text: str) -> Event:
        if self.announce_nicks == "all" or (self.announce_nicks == "auto" and len(self.users) <= ANNOUNCE_ALL_UP_TO):
            return events.notice(text, everyone=True)
        return events.notice(text, rooms=tuple(user.rooms), target=user.key or "")

    # rooms

    async def join(self, user: User, raw: str, since: EntryId | None = None, replay: Replay | None = None) -> None:
        """Join `raw`, shown its last `history_replay` lines; or, given `since`, the lines after
        that id (all that are kept), shown by `replay`. The account's other sessions, here and
        on the other nodes, join too."""
        room = await self._join(user, raw, since, replay)
        if room is None:
            return
        for peer in self.peers(user):
            await self._follow(peer, room.name)
        self._tell_nodes(ACCOUNT_JOIN, user, room)

    async def _join(self, user: User, raw: str, since: EntryId | None, replay: Replay | None) -> Room | None:
        """`user` alone joins `raw`: the room, once it was admitted there."""
        name = check_room_or_error(raw)
        key = room_key(name)
        room = self.rooms.get(key)
        if room is not None and key in user.rooms:
            user.current = room
            user.send(replies.SWITCHED.format(room=room.name))
            _channels_changed(user)
            return None
        if len(user.rooms) >= self.max_rooms_per_user:
            # Each membership lengthens every answer about this user (whois) and its quit.
            raise ChatError(replies.ROOM_LIMIT.format(limit=self.max_rooms_per_user))
        if room is None:
            name = await self.store.room_name(key, name)
            # Another local user may have created it while the store answered.
            room = self.rooms.get(key) or self.rooms.setdefault(key, Room(key, name))
        if user in room.pending:
            return None  # already joining; the first join finishes it

        room.pending[user] = []
        try:
            if since is None:
                history = await self.store.recent(key, self.history_replay)
            else:
                history = await self.store.after(key, since)
            elsewhere = await self._elsewhere(user, key)
        except BaseException:
            self._drop_pending(room, user)
            raise
        held = room.pending.pop(user, None)
        if held is None or user not in self.users:
            self._drop_pending(room, user)
            return None  # the user left while the store answered
        quiet = elsewhere or _any_in(self.peers(user), room)
        self._admit(room, user, history, held, since=since or NO_ID, replay=replay or self._replay, quiet=quiet)
        return room

    async def _follow(self, peer: User, name: str) -> None:
        """One more session of an account joins the room another one joined (they share
        their rooms): shown its history and told, it stays in its own current room."""
        if room_key(name) in peer.rooms:
            return  # `_join` would make it the current room
        current = peer.current
        joined = None
        with contextlib.suppress(ChatError):  # its room limit: it has the rooms the other has
            joined = await self._join(peer, name, None, None)
        if current is not None and joined is not None and peer.current is joined:
            peer.current = current
            _channels_changed(peer)

    def _tell_nodes(self, kind: events.ControlKind, user: User, room: Room, **args: str) -> None:
        """Tell the other nodes that `user`'s account joined or left `room`, for its sessions
        there to follow (a registered account only: others have one session)."""
        if self.store.clustered and user.account is not None and user.key == user.account:
            self.store.publish(events.control(kind, user.key, room=room.name, **args))

    def _account_joined(self, event: Event) -> None:
        name = str(events.control_args(event).get("room", ""))
        sessions = [s for s in self.sessions_of(event.target) if room_key(name) not in s.rooms]
        if sessions:
            task = asyncio.ensure_future(self._follow_all(sessions, name))
            self._following.add(task)
            task.add_done_callback(self._following.discard)

    async def _follow_all(self, sessions: list[User], name: str) -> None:
        for session in sessions:
            try:
                await self._follow(session, name)
            except StoreError as exc:
                log.warning("store_error", during="account_join", error=str(exc), nick=session.nick)

    def _account_left(self, event: Event) -> None:
        args = events.control_args(event)
        key = room_key(str(args.get("room", "")))
        room = self.rooms.get(key)
        for session in self.sessions_of(event.target):
            if room is not None and key in session.rooms:
                self._part(session, room, str(args.get("text", "")))

    def _admit(
        self,
        room: Room,
        user: User,
        history: list[Event],
        held: list[tuple[EntryId, str]],
        *,
        since: EntryId,
        replay: Replay,
        quiet: bool,
    ) -> None:
        seen = max(last_id(history), since)
        replay(user, room, history)
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
        room.last = max(room.last, seen)
        user.rooms[room.key] = room
        user.current = room
        _log("join", user, room=room.name)
        self.store.joined(room.key, room.name, user.member_id, user.nick)
        joined = replies.JOINED.format(nick=user.nick, room=room.name)
        if quiet:
            user.send(joined)  # the account was here already: only this session sees it come
        else:
            self.store.publish(events.notice(joined, rooms=(room.key,), nick=user.nick))
        _membership_changed(user, room)
        for moved in self.moved:
            moved(user)

    def _drop_pending(self, room: Room, user: User) -> None:
        room.pending.pop(user, None)
        if room.empty and self.rooms.get(room.key) is room:
            del self.rooms[room.key]

    def leave(self, user: User, raw: str | None) -> None:
        """`user`'s account leaves the room: every session of it here, each told; the room
        is told once."""
        room = self._member_room(user, raw)
        text = replies.LEFT.format(nick=user.nick, room=room.name)
        for session in [user, *self.peers(user)]:
            if room.key in session.rooms:
                self._part(session, room, text)
        self.store.publish(events.notice(text, rooms=(room.key,)))
        self._tell_nodes(ACCOUNT_LEAVE, user, room, text=text)

    def _part(self, user: User, room: Room, text: str) -> None:
        # The leaver sees its own notice: deliver it directly, the room no longer includes it.
        user.send(text)
        self._remove_member(room, user)
        del user.rooms[room.key]
        if user.current is room:
            user.current = next(reversed(user.rooms.values()), None)
            if user.current is not None:
                user.send(replies.SWITCHED.format(room=user.current.name))
        _membership_changed(user, room)
        for moved in self.moved:
            moved(user)

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

    def say(self, user: User, text: str, kind: MessageKind = SAY) -> None:
        room = self._speaking_room(user)
        self.stats.messages += 1
        _log("message", user, room=room.name, kind=kind, **self._text(text))
        self.store.publish(events.message(kind, room.key, room.name, user.nick, text))
        for watcher in self.said:
            watcher(user, room, text)

    def emote(self, user: User, text: str) -> None:
        self.say(user, text, EMOTE)

    async def private(self, user: User, raw_nick: str, text: str) -> None:
        self._require_login(user)
        self.check_voice(user, None)
        key = nick_key(raw_nick)
        target = self.nicks.get(key)
        if target is None and not await self.store.remote_nick(key):
            raise NotOnline(replies.NO_SUCH_USER.format(nick=raw_nick))
        shown = target.nick if target is not None else raw_nick
        self.stats.private_messages += 1
        _log("private_message", user, to=shown, **self._text(text))
        line = replies.PRIVATE_OUT.format(nick=shown, text=text)
        user.send(line)
        _channel_text((user,), f"tell {shown}", user.nick, line)
        self.store.publish(events.private(user.nick, key, text))

    def _text(self, text: str) -> dict[str, str]:
        """The chat text for a log event, unless the operator keeps chat text out of logs."""
        return {"text": text} if self.log_messages else {}

    def _speaking_room(self, user: User) -> Room:
        self._require_login(user)
        if user.current is None:
            raise ChatError(replies.NO_ROOM)
        self.check_voice(user, user.current)
        return user.current

    def muted(self, key: str, room: str = "*") -> bool:
        """Whether nick `key` is muted in `room` (or server-wide, for "*")."""
        if not self.mutes:
            return False
        now = time.time()
        return any(self.mutes.get((scope, key), 0.0) > now for scope in {room, "*"})

    def muted_anywhere(self, user: User) -> bool:
        """Whether `user` is muted in any room or server-wide: then nothing they write may
        reach others, whatever the way (a quit reason, an away message, a nick)."""
        if not self.mutes or user.key is None:
            return False
        now = time.time()
        return any(until > now for (_, nick), until in self.mutes.items() if nick == user.key)

    def check_voice(self, user: User, room: Room | None) -> None:
        """Refuse text from `user` to `room` (None: to anyone, as a private message) while
        they are muted there."""
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
    def format_entry(room: str, entry: Event) -> str:
        """A history entry as a line of the room named `room`."""
        template = replies.EMOTE if entry.kind == EMOTE else replies.SAY
        return template.format(room=room, nick=entry.nick, text=entry.text)

    # delivery of committed events (called by the store)

    def deliver(self, event: Event) -> None:
        if event.in_history:
            room = self.rooms.get(event.room)
            if room is not None:
                room.last = max(room.last, event.id)
                started = perf_counter()
                line = self.format_entry(room.name, event)
                self._deliver_room(room, event, line)
                self.stats.fanout_seconds.observe(perf_counter() - started)
                if room.listeners:
                    hearing = tuple(u for u in room.listeners if not u.profile.ignores(event.nick))
                    _channel_text(hearing, room.name, event.nick, line)
        elif event.kind == events.PRIVATE:
            self._deliver_private(event)
        elif event.kind == events.NOTICE:
            self._deliver_notice(event)
        else:
            handler = self.controls.get(event.kind)
            if handler is not None:
                handler(event)

    def _deliver_private(self, event: Event) -> None:
        targets = self.sessions_of(event.target)
        if not targets or targets[0].profile.ignores(event.nick):
            return
        line = replies.PRIVATE_IN.format(nick=event.nick, text=event.text)
        for target in targets:
            target.send(line)
        self.stats.deliveries += len(targets)
        _channel_text(targets, f"tell {event.nick}", event.nick, line)
        target = targets[0]
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
        addressed = self.sessions_of(event.target) if event.target else []
        if len(audience) <= LINGER_AUDIENCE:
            audience.update(dict.fromkeys(addressed))
            self._fan_out(event.text, audience)
            return
        # A big room's joins and quits come in storms: each may wait a moment to share a
        # write with the next (one write per notice was most of a storm's cost). Whom it
        # is addressed to, or about (a joiner: its join is its answer), gets it at once.
        about = [user for user in self.sessions_of(nick_key(event.nick)) if user in audience] if event.nick else []
        subject = dict.fromkeys([*addressed, *about])
        self._fan_out(event.text, subject)
        self._fan_out(event.text, [user for user in audience if user not in subject], linger=True)

    def _fan_out(self, text: str, recipients: Iterable[User], linger: bool = False) -> None:
        """fan_out, except that users with personal formatting get their own rendering."""
        if not self.special:
            fan_out(text, recipients, linger)
            return
        common: list[User] = []
        for user in recipients:
            if user in self.special:
                user.send(text)
            else:
                common.append(user)
        fan_out(text, common, linger)

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
            self.stats.deliveries += len(room.members)
        else:
            # Some get their own copy, or none, or (listeners) more: one push each.
            room.output.reset()
            self.stats.deliveries += fan_out(text, recipients)

    def _personal(self, room: Room, event: Event) -> dict[User, bool]:
        """Members whose copy of this message is their own -> whether it names them."""
        personal = {user: False for user in self.special if user in room.members}
        for key in mention_keys(event.text):
            for user in self.sessions_of(key):
                if user in room.members and user.profile.highlight and user.nick != event.nick:
                    personal[user] = True
        return personal

    def _send_personal(
        self, recipients: Iterable[User], personal: dict[User, bool], event: Event, text: str
    ) -> list[User]:
        """Send the personal copies; return the recipients who share the common one."""
        common: list[User] = []
        for user in recipients:
            mentioned = personal.get(user)
            if mentioned is None:
                common.append(user)
            elif not user.profile.ignores(event.nick):
                user.send(user.profile.mentioned(text) if mentioned else text, event.ts)
                self.stats.deliveries += 1
        return common

    # queries (this node's view, plus what the store knows of other nodes)

    async def who(self, user: User, raw: str | None, page: int = 1) -> list[str]:
        """Page `page` of the members of room `raw` (default: the current room), or of
        everyone online (`*`, or no room at all)."""
        if raw == EVERYONE or (raw is None and user.current is None):
            remote = await self.store.remote_online()
            head = replies.WHO_ALL.format(names="").rstrip()
            listing = _names(self.users, remote)
            return _listing(head, listing, page, f"who {EVERYONE}", self._current_line(user, None))
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
        shown = room.name if room is not None else name
        head = replies.WHO_ROOM.format(room=shown, names="").rstrip()
        listing = _names(room.members if room is not None else (), remote)
        return _listing(head, listing, page, f"who #{shown}", self._current_line(user, key))

    async def room_list(self, user: User, page: int = 1) -> list[str]:
        """Page `page` of the rooms with members, then which one is `user`'s current room."""
        elsewhere = await self.store.remote_rooms()
        # The name the store kept (the first one given, anywhere) wins over this node's.
        names = {key: room.name for key, room in self.rooms.items()} | {
            key: room.name for key, room in elsewhere.items()
        }
        counts = ((key, name, _people(self.rooms.get(key), elsewhere.get(key))) for key, name in names.items())
        listed = sorted(item for item in counts if item[2])
        if not listed:
            return [replies.NO_ROOMS]
        items = [f"#{name} ({count})" for _, name, count in listed]
        head = replies.ROOMS.format(rooms="").rstrip()
        return _listing(head, (items, ""), page, "rooms", self._current_line(user, None))

    @staticmethod
    def _current_line(user: User, shown: str | None) -> list[str]:
        """The line naming `user`'s current room, unless the answer (about `shown`) did."""
        if user.current is None or user.current.key == shown:
            return []
        return [replies.CURRENT_ROOM.format(room=user.current.name)]

    async def history(self, user: User, count: int) -> None:
        if user.current is None:
            raise ChatError(replies.NO_ROOM)
        room = user.current
        self._replay(user, room, await self.store.recent(room.key, count))

    def _replay(self, user: User, room: Room, entries: list[Event]) -> None:
        user.send(replies.HISTORY_HEADER.format(room=room.name))
        for entry in entries:
            if not user.profile.ignores(entry.nick):
                user.send(self.format_entry(room.name, entry), entry.ts)

    def broadcast_local(self, text: str) -> None:
        """Tell every user connected to this node, now (shutdown)."""
        self._fan_out(text, self.users)


# Observers: what a user's events sink (observers.ChatEvents) hears.


def rooms_of(user: User) -> list[str]:
    current = user.current
    names = [room.name for room in user.rooms.values() if room is not current]
    return [current.name, *names] if current is not None else names


def players_of(user: User) -> Players:
    """Who shares a room with `user`, each once with the rooms shared: an account's
    sessions (`Chat.add_session`) are one player, under the nick its first one shows."""
    shared: dict[str, tuple[str, list[str]]] = {}
    for room in user.rooms.values():
        for member in room.members:
            if member.key is not None:
                rooms = shared.setdefault(member.key, (member.nick, []))[1]
                if not rooms or rooms[-1] != room.name:
                    rooms.append(room.name)
    return sorted(shared.values(), key=lambda p: p[0].casefold())


def _channels_changed(user: User) -> None:
    if user.events is not None:
        user.events.channels(rooms_of(user))


def _membership_changed(user: User, room: Room) -> None:
    """`user` joined or left `room`: its rooms changed, and so did who shares a room with whom."""
    _channels_changed(user)
    _players_changed((room,), also=user)


def _players_changed(rooms: Iterable[Room], also: User | None = None) -> None:
    listeners: dict[User, None] = {also: None} if also is not None else {}
    for room in rooms:
        listeners.update(room.listeners)
    for listener in listeners:
        if listener.events is not None:
            listener.events.players(partial(players_of, listener))


def _channel_text(listeners: Iterable[User], channel: str, talker: str, text: str) -> None:
    for listener in listeners:
        if listener.events is not None:
            listener.events.channel_text(channel, talker, text)
