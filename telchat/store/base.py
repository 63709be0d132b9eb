"""Stores: where history lives and how committed events come back to be delivered.

The room manager sees only `Store`. `publish` persists an event (history for messages) and
then, once it is committed, calls the `deliver` callback given to `open` — on this node for
the local stores, on every node for a shared one. Cluster views (nicks, presence) are
answered locally by the manager; a shared store adds what other nodes know.
"""

from __future__ import annotations

import abc
import asyncio
import heapq
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import orjson

from telchat.obs.logs import get_logger
from telchat.obs.stats import Stats
from telchat.rules.names import nick_key
from telchat.store import events
from telchat.store.events import EntryId, Event

log = get_logger(__name__)


class Turn(Protocol):
    """The end of an event-loop turn, as a store sees it: the output Flusher (chat/outbox.py)."""

    def before_flush(self, hook: Callable[[], None]) -> None:
        """Run `hook` at the turn's end, before that turn's output is written."""

    def schedule(self) -> None:
        """Make sure this turn has an end: hooks run, then output is written."""


Deliver = Callable[[Event], None]
# Called with a nick key that another node turned out to own while a local user held it.
NickLost = Callable[[str], None]
Record = dict[str, Any]
RETRY_SECONDS = 0.5
# Local failure counters are swept of stale keys once there are this many.
FAILURE_SWEEP_AT = 1024
# Record kind of the local stores' mailboxes.
MAIL = "mail"
# `return_mail`'s caps: none (Redis's Lua takes it as a number).
UNCAPPED = 2**31
# What `add_mail` did: stored it, or refused it as the box or the sender's share is full.
Posted = Literal["ok", "box_full", "sender_full"]


# Where a page of search results ended: (ts, id) of its oldest line; the next page is older.
Cursor = tuple[float, EntryId]
# Words as SQLite's unicode61 tokenizer cuts them (`_` separates), so every store agrees.
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True, slots=True)
class Query:
    """A history search: lines with every word (whole words, any case), optionally only of
    one room (key) and one nick (key), said at or after `since` (epoch seconds)."""

    words: tuple[str, ...] = ()
    room: str = ""
    nick: str = ""
    since: float = 0.0


def words_of(text: str) -> set[str]:
    return set(_WORD.findall(text.casefold()))


def matches(query: Query, event: Event, before: Cursor | None) -> bool:
    if event.ts < query.since or (before is not None and (event.ts, event.id) >= before):
        return False
    if query.room and event.room != query.room:
        return False
    if query.nick and nick_key(event.nick) != query.nick:
        return False
    if not query.words:
        return True
    # Substrings first: most lines fail there, without being cut into words.
    text = event.text.casefold()
    return all(word in text for word in query.words) and words_of(text).issuperset(query.words)


def newest(events: Iterable[Event], limit: int) -> list[Event]:
    """Up to `limit` of `events`, newest first."""
    return heapq.nlargest(limit, events, key=lambda event: (event.ts, event.id))


@dataclass(frozen=True, slots=True)
class RemoteRoom:
    """A live room as the other nodes have it: its shown name, their members' nick keys (an
    account's sessions on several nodes are one key), and how many of their members are anonymous."""

    name: str
    keys: frozenset[str]
    anonymous: int


class StoreError(Exception):
    """The store cannot be used (bad URL, unreachable, not answering); the message is for the
    operator. Every store call that can fail raises this, and only this."""


class Store(abc.ABC):
    #: Whether other nodes share this store (and may have sessions of a local user's account).
    clustered = False

    def __init__(self, keep: int = 1000) -> None:
        #: The hot-path statistics this store counts into; the App hands over its own.
        self.stats = Stats()
        self._keep = keep

    @abc.abstractmethod
    async def open(self, deliver: Deliver) -> None:
        """Connect; raise StoreError when the store cannot be used."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Commit what is pending and disconnect."""

    @abc.abstractmethod
    def publish(self, event: Event) -> None:
        """Persist `event`, then deliver it. Deliveries keep publish order."""

    @abc.abstractmethod
    async def settled(self) -> None:
        """Return once every event published here so far has been delivered here.

        A session awaits this after each line, so that a command's replies and the notices
        it caused reach its user in the order they happened."""

    @abc.abstractmethod
    async def recent(self, room: str, limit: int) -> list[Event]:
        """The last `limit` committed messages of `room` (a room key), oldest first."""

    async def after(self, room: str, entry_id: EntryId) -> list[Event]:
        """The committed messages of `room` newer than `entry_id`, oldest first: at most the
        kept history (`--history-keep`)."""
        return [event for event in await self.recent(room, self._keep) if event.id > entry_id]

    @abc.abstractmethod
    async def history_rooms(self) -> list[str]:
        """The keys of the rooms that have history."""

    async def search(self, query: Query, before: Cursor | None, limit: int) -> list[Event]:
        """Up to `limit` committed messages that match `query` and are older than `before`,
        newest first. This default reads the kept history of every room it may match."""
        rooms = [query.room] if query.room else await self.history_rooms()
        found: list[Event] = []
        for room in rooms:
            found += [event for event in await self.recent(room, self._keep) if matches(query, event, before)]
            await asyncio.sleep(0)  # one room at a time: other users' lines go on meanwhile
        return newest(found, limit)

    # Mailboxes: what waits for a user who is offline, taken (and so removed) once.

    @abc.abstractmethod
    async def add_mail(self, box: str, sender: str, item: Record, box_max: int, sender_max: int) -> Posted:
        """Append `item` to `box` durably, unless the box holds `box_max` items or `sender_max`
        of `sender`'s."""

    @abc.abstractmethod
    async def mail_count(self, box: str) -> int:
        """How many items wait in `box`."""

    @abc.abstractmethod
    async def take_mail(self, box: str) -> list[Record]:
        """Remove and return `box`'s items, oldest first: no two calls get the same item."""

    async def return_mail(self, box: str, items: list[Record]) -> None:
        """Put back items `take_mail` returned that never reached their reader, past the caps
        (they were within them once). This default appends them: a reader sorts by `ts`."""
        for item in items:
            await self.add_mail(box, str(item["sender"]), item, UNCAPPED, UNCAPPED)

    async def check(self) -> None:  # noqa: B027 - local stores have nothing to check
        """Raise StoreError when the store does not answer."""

    def commit_before(self, flusher: Turn) -> None:  # noqa: B027 - only batching stores use it
        """Commit this turn's batch in `flusher`'s end-of-turn callback, before it writes."""

    # A server upgrade in place (telchat/upgrade.py): the store's state, carried to the next image.

    async def drain(self, within: float) -> None:  # noqa: B027 - local stores commit in the turn
        """Send what is queued, waiting at most `within` seconds."""

    def carry(self) -> dict[str, Any]:
        """What the next image's store needs to go on as this one (plain data); call after `drain`."""
        return {}

    def take_up(self, state: dict[str, Any]) -> None:  # noqa: B027 - most stores keep nothing
        """Go on from a `carry` of the previous image's store; call before `open`."""

    # Records: small JSON-able documents by kind and key (accounts, bans, mutes, topics).

    @abc.abstractmethod
    async def get_record(self, kind: str, key: str) -> Record | None:
        """The record stored under (`kind`, `key`), or None."""

    @abc.abstractmethod
    async def put_record(self, kind: str, key: str, record: Record | None) -> None:
        """Store `record` durably before returning; None deletes it."""

    @abc.abstractmethod
    async def records(self, kind: str) -> dict[str, Record]:
        """Every record of `kind`, by key."""

    # Failure counters (login throttling), shared by every node that shares the store.

    @abc.abstractmethod
    async def failures(self, key: str, window: float) -> int:
        """How many failures were added under `key` in the last `window` seconds."""

    @abc.abstractmethod
    async def add_failure(self, key: str, window: float) -> int:
        """Count one failure under `key`; return the count in the last `window` seconds."""

    @abc.abstractmethod
    async def reserve_attempt(self, key: str, window: float) -> tuple[int, str]:
        """Count an attempt under `key` as a failure until `release_attempt(key, token)`
        (it is being verified now, here or on another node); return the failures in the last
        `window` seconds plus the attempts in flight, this one included, and the token."""

    @abc.abstractmethod
    def release_attempt(self, key: str, token: str) -> None:
        """The attempt `token` is over (a failure it turned out to be is counted by
        `add_failure`). Never raises: a lost release only expires later."""

    # Cluster-wide views; a single-process store has nothing beyond the local node.

    async def claim_nick(self, key: str, nick: str) -> bool:
        """Claim `nick` (identity `key`) cluster-wide, unless another node holds it or a
        nick that reads like it (either of names.lookalikes); release_nick frees both."""
        return True

    def on_nick_lost(self, handler: NickLost) -> None:  # noqa: B027 - one process never loses a nick
        """Call `handler` when a nick a local user holds turns out to be another node's."""

    async def room_name(self, key: str, name: str) -> str:
        """The room's display name cluster-wide: the first spelling anyone used."""
        return name

    def release_nick(self, key: str) -> None:
        return None

    def share_nick(self, key: str, nick: str) -> None:  # noqa: B027 - one process has no other node
        """A local session joins an account whose nick `key` another node holds: hold it
        too, and take the claim over should the other node let go of it."""

    def joined(self, room: str, room_name: str, member: str, nick: str) -> None:
        return None

    def left(self, room: str, member: str) -> None:
        return None

    def renamed(self, member: str, nick: str, rooms: tuple[str, ...]) -> None:
        return None

    def online(self, member: str, nick: str) -> None:
        return None

    def offline(self, member: str, rooms: tuple[str, ...]) -> None:
        return None

    async def remote_nick(self, key: str) -> bool:
        """Whether `key` is a nick held on another node."""
        return False

    async def remote_members(self, room: str) -> list[str]:
        return []

    async def remote_rooms(self) -> dict[str, RemoteRoom]:
        """Room key -> the room as other nodes have it, for the rooms they have members in."""
        return {}

    async def remote_online(self) -> list[str]:
        return []


class LocalStore(Store):
    """One process: deliveries go straight back to this node's manager after each commit.

    Subclasses persist history; commits are batched per event-loop turn (`_commit`), and
    nothing is delivered before the batch that holds it is committed.
    """

    def __init__(self, keep: int = 1000) -> None:
        super().__init__(keep)
        self._deliver: Deliver | None = None
        self._pending: list[Event] = []
        self._scheduled = False
        self._turn: Turn | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._flushed: asyncio.Future[None] | None = None
        # Failure times per key, oldest first; in memory, as nothing else shares them.
        self._failures: dict[str, deque[float]] = {}
        # A mailbox is a record read, changed and written back: one change at a time.
        self._mail_lock = asyncio.Lock()
        # Attempts being verified now, per key.
        self._attempts: Counter[str] = Counter()

    async def open(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        self._flush()

    def commit_before(self, flusher: Turn) -> None:
        # Committed in the output flush's own callback: delivered and written in one go.
        self._turn = flusher
        flusher.before_flush(self._turn_end)

    def publish(self, event: Event) -> None:
        self._pending.append(event)
        if not self._scheduled:
            self._scheduled = True
            if self._turn is not None:
                self._turn.schedule()
            else:
                asyncio.get_running_loop().call_soon(self._flush)

    def _turn_end(self) -> None:
        if self._scheduled and self._retry is None:
            self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        self._retry = None
        events, self._pending = self._pending, []
        if not events:
            return
        started = perf_counter()
        try:
            committed = self._commit(events)
        except StoreError as exc:
            self.stats.store_errors += 1
            # Nothing of the batch was delivered; keep it, in order, and try again soon.
            self._pending[:0] = events
            log.error("store_error", error=str(exc), pending=len(self._pending))
            self._scheduled = True
            self._retry = asyncio.get_running_loop().call_later(RETRY_SECONDS, self._flush)
            return
        self.stats.store_commit_seconds.observe(perf_counter() - started)
        for event in committed:
            self._deliver_one(event)
        if self._flushed is not None and not self._pending:
            self._flushed.set_result(None)
            self._flushed = None

    async def settled(self) -> None:
        if not self._pending:
            return
        if self._flushed is None:
            self._flushed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._flushed)

    def _deliver_one(self, event: Event) -> None:
        assert self._deliver is not None
        try:
            self._deliver(event)
        except Exception:
            # One failed delivery must not cost the rest of the batch theirs.
            log.exception("deliver_failed", kind=event.kind)

    @abc.abstractmethod
    def _commit(self, events: list[Event]) -> list[Event]:
        """Make the history events among `events` durable; return all, ids assigned.

        Raise StoreError, having changed nothing, when the commit fails."""

    async def add_mail(self, box: str, sender: str, item: Record, box_max: int, sender_max: int) -> Posted:
        async with self._mail_lock:
            record = await self.get_record(MAIL, box)
            items: list[Record] = record["items"] if record is not None else []
            if len(items) >= box_max:
                return "box_full"
            if sum(1 for old in items if old["sender"] == sender) >= sender_max:
                return "sender_full"
            items.append({**item, "sender": sender})
            await self.put_record(MAIL, box, {"items": items})
            return "ok"

    async def mail_count(self, box: str) -> int:
        record = await self.get_record(MAIL, box)
        return len(record["items"]) if record is not None else 0

    async def take_mail(self, box: str) -> list[Record]:
        async with self._mail_lock:
            record = await self.get_record(MAIL, box)
            if record is None:
                return []
            await self.put_record(MAIL, box, None)
            items: list[Record] = record["items"]
            return items

    async def return_mail(self, box: str, items: list[Record]) -> None:
        async with self._mail_lock:
            record = await self.get_record(MAIL, box)
            newer: list[Record] = record["items"] if record is not None else []
            await self.put_record(MAIL, box, {"items": items + newer})

    async def failures(self, key: str, window: float) -> int:
        times = self._failures.get(key)
        if times is None:
            return 0
        _expire(times, time.monotonic() - window)
        if not times:
            del self._failures[key]
        return len(times)

    async def add_failure(self, key: str, window: float) -> int:
        now = time.monotonic()
        if len(self._failures) >= FAILURE_SWEEP_AT:
            self._sweep(now - window)
        times = self._failures.setdefault(key, deque())
        times.append(now)
        _expire(times, now - window)
        return len(times)

    async def reserve_attempt(self, key: str, window: float) -> tuple[int, str]:
        self._attempts[key] += 1
        return await self.failures(key, window) + self._attempts[key], key

    def release_attempt(self, key: str, token: str) -> None:
        self._attempts[key] -= 1
        if self._attempts[key] <= 0:
            del self._attempts[key]

    def _sweep(self, cutoff: float) -> None:
        for key in [k for k, times in self._failures.items() if times[-1] <= cutoff]:
            del self._failures[key]


class MemoryStore(LocalStore):
    """History in process memory: fast, gone on restart. A commit is immediate."""

    def __init__(self, keep: int = 1000) -> None:
        super().__init__(keep)
        self._rooms: dict[str, deque[Event]] = {}
        self._seq = 0
        # Encoded like the other stores' records, so a caller never shares a live dict.
        self._records: dict[str, dict[str, bytes]] = {}

    def publish(self, event: Event) -> None:
        # Nothing to wait for: deliver in the same turn, without a batch.
        self._deliver_one(self._commit([event])[0])

    def _commit(self, events: list[Event]) -> list[Event]:
        return [self._append(event) if event.in_history else event for event in events]

    def _append(self, event: Event) -> Event:
        self._seq += 1
        event = event.with_id((self._seq, 0))
        lines = self._rooms.get(event.room)
        if lines is None:
            lines = self._rooms[event.room] = deque(maxlen=self._keep)
        lines.append(event)
        return event

    async def recent(self, room: str, limit: int) -> list[Event]:
        lines = self._rooms.get(room)
        if not lines or limit <= 0:
            return []
        return list(lines)[-limit:]

    def carry(self) -> dict[str, Any]:
        # Memory is all this store has: history and records go with the process.
        return {
            "seq": self._seq,
            "rooms": {room: [events.carry(event) for event in lines] for room, lines in self._rooms.items()},
            "records": {kind: {k: v.decode() for k, v in table.items()} for kind, table in self._records.items()},
        }

    def take_up(self, state: dict[str, Any]) -> None:
        self._seq = int(state["seq"])
        for room, lines in state["rooms"].items():
            self._rooms[room] = deque((events.uncarry(line) for line in lines), maxlen=self._keep)
        self._records = {kind: {k: v.encode() for k, v in table.items()} for kind, table in state["records"].items()}

    async def history_rooms(self) -> list[str]:
        return list(self._rooms)

    async def get_record(self, kind: str, key: str) -> Record | None:
        data = self._records.get(kind, {}).get(key)
        return decode_record(data) if data is not None else None

    async def put_record(self, kind: str, key: str, record: Record | None) -> None:
        table = self._records.setdefault(kind, {})
        if record is None:
            table.pop(key, None)
        else:
            table[key] = encode_record(record)

    async def records(self, kind: str) -> dict[str, Record]:
        return {key: decode_record(data) for key, data in self._records.get(kind, {}).items()}


def encode_record(record: Record) -> bytes:
    return orjson.dumps(record)


def decode_record(data: str | bytes) -> Record:
    record = orjson.loads(data)
    if not isinstance(record, dict):
        raise StoreError("corrupt record: not a JSON object")
    return record


def _expire(times: deque[float], cutoff: float) -> None:
    while times and times[0] <= cutoff:
        times.popleft()


def last_id(events: list[Event]) -> EntryId:
    return events[-1].id if events else (0, 0)


def masked(url: str) -> str:
    """`url` with its password hidden: URLs end up in logs and on stderr."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()
