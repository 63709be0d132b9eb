"""Continuity: a registered user's rooms and read markers, restored at login.

The state of an account is one record (`seen`): its rooms, the current one last, and per
room the id of the newest line its sessions were given (`Room.last` when it left). At login
the rooms are joined again; a room with a marker shows what came after it (catch-up) in
place of the ordinary `*** #room history` replay. Markers cost nothing per delivered line:
`Room.last` is one field per room, read when a user leaves and every `--marker-flush`
seconds for the users still online, and written only when it changed.
"""

from __future__ import annotations

import asyncio
import contextlib

from telchat.chat.rooms import Chat, Room, User
from telchat.features.accounts import Accounts
from telchat.obs.logs import get_logger
from telchat.rules import replies
from telchat.rules.names import room_key
from telchat.store.base import Record, StoreError
from telchat.store.events import EntryId, Event

log = get_logger(__name__)

SEEN = "seen"


def state_of(user: User) -> Record:
    """`user`'s rooms (the current one last, so that it is joined last) and read markers."""
    rooms = [room for room in user.rooms.values() if room is not user.current]
    if user.current is not None:
        rooms.append(user.current)
    return {"rooms": [room.name for room in rooms], "markers": {room.key: list(room.last) for room in rooms}}


def _marker(state: Record, key: str) -> EntryId | None:
    marker = state.get("markers", {}).get(key)
    return (int(marker[0]), int(marker[1])) if marker is not None else None


class Continuity:
    def __init__(self, chat: Chat, accounts: Accounts, catchup_max: int, flush_seconds: float) -> None:
        self.chat = chat
        self.store = chat.store
        self.catchup_max = catchup_max
        self.flush_seconds = flush_seconds
        # Account -> the state last written for an online user, so an unchanged one is not.
        self._saved: dict[str, Record] = {}
        # Account -> its latest write; writes of one account are chained, in order.
        self._writes: dict[str, asyncio.Task[None]] = {}
        self._flusher: asyncio.Task[None] | None = None
        chat.departures.append(self._departed)
        chat.moved.append(self._moved)
        # Users whose rooms are being restored: their joins are not saved one by one.
        self._restoring: set[User] = set()
        accounts.logins.append(self.restore)
        # The rooms joined before registering are the account's at once, not at the next flush.
        accounts.registrations.append(self._save_changed)

    def start(self) -> None:
        if self.flush_seconds > 0:
            self._flusher = asyncio.create_task(self._flush_every())

    async def close(self) -> None:
        """Stop the periodic flush; wait for the writes of users who left."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await asyncio.gather(*self._writes.values())

    async def restore(self, user: User) -> None:
        """Join the rooms `user`'s account was in; catch up on each, unless they turned it off."""
        account = user.account
        if account is None:
            return
        peers = self.chat.peers(user)
        if peers:
            await self._share_rooms(user, peers[0])
            return
        pending = self._writes.get(account)
        if pending is not None:
            await pending  # its last session's rooms, written as it left
        state = await self.store.get_record(SEEN, account)
        if state is None:
            return
        self._restoring.add(user)
        try:
            for name in state.get("rooms", []):
                since = _marker(state, room_key(name)) if user.profile.catchup else None
                if since is None:
                    await self.chat.join(user, name)
                else:
                    await self.chat.join(user, name, since=since, replay=self._catch_up)
                # Its join notice before the next room's lines, on a store that delivers later.
                await self.store.settled()
        finally:
            self._restoring.discard(user)
        self._saved[account] = state_of(user)

    async def _share_rooms(self, user: User, peer: User) -> None:
        """A second session here: it joins the rooms of the first, which has seen it all."""
        for room in state_of(peer)["rooms"]:
            joined = self.chat.rooms.get(room_key(room))
            since = joined.last if joined is not None else None
            await self.chat.join(user, room, since=since, replay=self._catch_up)
            await self.store.settled()

    def _catch_up(self, user: User, room: Room, missed: list[Event]) -> None:
        shown = [entry for entry in missed if not user.profile.ignores(entry.nick)]
        if not shown:
            return
        count, tail = len(shown), shown[-self.catchup_max :] if self.catchup_max else []
        if len(tail) < count:
            user.send(replies.CATCHUP_CAPPED.format(room=room.name, count=count, shown=len(tail)))
        else:
            user.send(replies.CATCHUP.format(room=room.name, lines=replies.counted(count, "new line", "new lines")))
        for entry in tail:
            user.send(self.chat.format_entry(room.name, entry), entry.ts)

    def _departed(self, user: User) -> None:
        account = _owner(user)
        if account is None or self.chat.peers(user):
            return  # its last session saves the account's rooms
        self._saved.pop(account, None)
        self._write(account, state_of(user))

    def _moved(self, user: User) -> None:
        # Rooms are saved as they change (markers only at the flush): a session of the account
        # on another node, or a login after a crash, finds them.
        if user not in self._restoring:
            self._save_changed(user)

    def flush(self) -> None:
        """Write the state of every online registered user whose rooms or markers changed."""
        for user in self.chat.users:
            self._save_changed(user)

    def _save_changed(self, user: User) -> None:
        account = _owner(user)
        if account is None or self.chat.nicks.get(account) is not user:
            return  # one session per account: the one holding the nick
        state = state_of(user)
        if self._saved.get(account) != state:
            self._saved[account] = state
            self._write(account, state)

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            self.flush()

    def _write(self, account: str, state: Record) -> None:
        task = asyncio.create_task(self._put(account, state, self._writes.get(account)))
        self._writes[account] = task
        task.add_done_callback(lambda done: self._written(account, done))

    async def _put(self, account: str, state: Record, after: asyncio.Task[None] | None) -> None:
        if after is not None:
            await after
        try:
            await self.store.put_record(SEEN, account, await self._merged(account, state))
        except StoreError as exc:
            # Not fatal: the next login rejoins the rooms of an older state.
            log.warning("store_error", during="continuity", error=str(exc), account=account)

    async def _merged(self, account: str, state: Record) -> Record:
        """`state` with no marker older than the saved one: markers only move on. A room taken
        over from a process before an upgrade has no `last` yet, until its next line."""
        saved = await self.store.get_record(SEEN, account)
        if saved is None:
            return state
        state = {**state, "markers": dict(state["markers"])}  # not the one `_saved` holds
        for key, marker in state["markers"].items():
            before = _marker(saved, key)
            if before is not None and before > tuple(marker):
                state["markers"][key] = list(before)
        return state

    def _written(self, account: str, task: asyncio.Task[None]) -> None:
        if self._writes.get(account) is task:
            del self._writes[account]


def _owner(user: User) -> str | None:
    """The account whose state `user` is: only while it uses that account's own nick."""
    return user.account if user.account is not None and user.account == user.key else None
