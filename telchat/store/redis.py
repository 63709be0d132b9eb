"""Redis: shared history, cross-process fan-out, nick ownership and presence.

- History: one stream per room (`h:{room}`, XADD MAXLEN ~ keep).
- Fan-out: one shared stream (`bus`) holding every event in one global order. Each node
  reads it with XREAD from the last id it processed, so a dropped connection resumes
  exactly where it stopped: nothing lost, nothing twice. Local events are delivered the
  same way, after their XADD: persist, then deliver, and the same order on every node.
- Publishing: a single writer task sends queued events in order, pipelined, through a
  Lua script that dedupes on an event id, writes history and bus atomically. A failed
  round trip is retried with the same ids, so a retry after a lost reply adds nothing.
- Nicks: `nick:{key}` SET NX with a TTL the owner keeps refreshing.
- Presence: hashes of `node:member -> nick` per room and online; a node's liveness key
  expires when it dies, and a surviving node's janitor removes its users and nicks.
- Records: one hash per kind (`rec:{kind}`, key -> JSON); failure counters: one sorted set
  of failure times per key (`fail:{key}`), expiring with its window.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from telchat.obs.logs import get_logger
from telchat.rules import replies
from telchat.store import events as ev
from telchat.store.base import Deliver, Record, Store, StoreError, decode_record, encode_record, masked
from telchat.store.events import EntryId, Event

log = get_logger(__name__)

PREFIX = "telchat:"
BUS_MAXLEN = 100_000
DEDUPE_SECONDS = 600
READ_BLOCK_MS = 1000
READ_COUNT = 1000
RETRY_MIN, RETRY_MAX = 0.05, 2.0

# KEYS: dedupe key, bus stream, history stream ("" for none)
# ARGV: event json, bus maxlen, history maxlen, dedupe seconds, event id
PUBLISH_LUA = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[4]) then return 0 end
local hid = ''
if KEYS[3] ~= '' then
  hid = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[1])
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1], 'h', hid, 'o', ARGV[5])
return 1
"""
# Delete a key only while it still holds the given value (a nick we still own).
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

Op = Callable[[Any], Awaitable[Any]]


def _key(*parts: str) -> str:
    return PREFIX + ":".join(parts)


def parse_id(raw: str) -> EntryId:
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq or 0)


def _encode(event: Event) -> bytes:
    return orjson.dumps(
        {
            "k": event.kind,
            "x": event.text,
            "r": event.room,
            "rn": event.room_name,
            "n": event.nick,
            "rs": event.rooms,
            "t": event.target,
            "a": event.everyone,
            "ts": event.ts,
        }
    )


def _decode(data: str, entry_id: EntryId) -> Event:
    d = orjson.loads(data)
    return Event(
        ev.kind_of(d["k"]),
        d["x"],
        room=d["r"],
        room_name=d["rn"],
        nick=d["n"],
        rooms=tuple(d["rs"]),
        target=d["t"],
        everyone=d["a"],
        ts=d["ts"],
        id=entry_id,
    )


class RedisStore(Store):
    def __init__(self, url: str, keep: int = 1000, node_ttl: float = 15.0) -> None:
        super().__init__()
        self.url = url
        self.shown_url = masked(url)
        self._keep = keep
        self.node = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.node_ttl = node_ttl
        self.nick_ttl = max(60, int(node_ttl * 4))
        # redis-py's return types are unions of every reply shape: typed as Any here.
        self._redis: Any = None
        self._deliver: Deliver | None = None
        self._queue: list[tuple[str, Any]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._seq = itertools.count(1)
        self._published = 0  # the last event id this node published, and the last it read back
        self._seen_own = 0
        self._origin = f"{self.node}:"
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._last_bus_id = "0-0"
        self._nicks: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    # lifecycle

    async def open(self, deliver: Deliver) -> None:
        parts = urlsplit(self.url)
        if not parts.hostname:
            raise StoreError(f"bad Redis URL {self.shown_url!r}: use redis://HOST:PORT/DB")
        self._deliver = deliver
        self._redis = aioredis.Redis.from_url(
            self.url, socket_connect_timeout=3, health_check_interval=10, decode_responses=True
        )
        try:
            await self._redis.ping()
            last = await self._redis.xrevrange(_key("bus"), count=1)
        except (RedisError, OSError) as exc:
            await self._redis.aclose()
            raise StoreError(f"cannot reach Redis at {self.shown_url}: {exc}") from exc
        self._last_bus_id = last[0][0] if last else "0-0"
        await self._heartbeat_once()
        self._tasks = [
            asyncio.create_task(self._writer(), name="redis-writer"),
            asyncio.create_task(self._reader(), name="redis-reader"),
            asyncio.create_task(self._every(self.node_ttl / 3, self._heartbeat_once), name="redis-heartbeat"),
            asyncio.create_task(self._every(self.node_ttl / 3, self._janitor_once), name="redis-janitor"),
        ]
        log.info("redis_open", node=self.node, url=self.shown_url, bus_id=self._last_bus_id)

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 2.0)
        # redis-py may turn a cancelled blocking read into a connection error, which the
        # loops would retry: the flag tells them to stop instead.
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._forget_node(self.node)
            await self._redis.aclose()

    async def check(self) -> None:
        try:
            await self._client().ping()
        except (RedisError, OSError) as exc:
            raise StoreError(str(exc)) from exc

    def _client(self) -> Any:
        if self._redis is None:
            raise StoreError("Redis store is not open")
        return self._redis

    # publishing: one ordered queue, one writer

    def publish(self, event: Event) -> None:
        self._published = next(self._seq)
        self._enqueue("event", (f"{self.node}:{self._published}", event))

    async def settled(self) -> None:
        if self._seen_own >= self._published:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((self._published, waiter))
        await waiter

    def _saw_own(self, origin: str) -> None:
        if not origin.startswith(self._origin):
            return
        self._seen_own = max(self._seen_own, int(origin[len(self._origin) :]))
        if not self._waiters:
            return
        still = []
        for wanted, waiter in self._waiters:
            if wanted <= self._seen_own:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((wanted, waiter))
        self._waiters = still

    def _enqueue(self, kind: str, item: Any) -> None:
        self._queue.append((kind, item))
        self._idle.clear()
        self._wake.set()

    async def _writer(self) -> None:
        delay = RETRY_MIN
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and not self._closing:
                batch = self._queue[:500]
                started = perf_counter()
                try:
                    await self._send(batch)
                except (RedisError, OSError) as exc:
                    self.stats.store_errors += 1
                    log.warning("store_error", store="redis", error=str(exc), pending=len(self._queue))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                    continue
                delay = RETRY_MIN
                self.stats.store_commit_seconds.observe(perf_counter() - started)
                del self._queue[: len(batch)]
            self._idle.set()

    async def _send(self, batch: list[tuple[str, Any]]) -> None:
        pipe = self._client().pipeline(transaction=False)
        for kind, item in batch:
            if kind == "event":
                self._add_publish(pipe, *item)
            else:
                item(pipe)
        await pipe.execute()

    def _add_publish(self, pipe: Any, event_id: str, event: Event) -> None:
        history = _key("h", event.room) if event.in_history else ""
        # EVAL, not EVALSHA: a restarted Redis has an empty script cache, and the retry
        # after a restart must not fail on NOSCRIPT.
        pipe.eval(
            PUBLISH_LUA,
            3,
            _key("ev", event_id),
            _key("bus"),
            history,
            _encode(event),
            BUS_MAXLEN,
            self._keep,
            DEDUPE_SECONDS,
            event_id,
        )

    # delivery: everyone reads the bus

    async def _reader(self) -> None:
        delay = RETRY_MIN
        client = self._client()
        while not self._closing:
            try:
                reply = await client.xread({_key("bus"): self._last_bus_id}, count=READ_COUNT, block=READ_BLOCK_MS)
            except (RedisError, OSError) as exc:
                log.warning("store_error", store="redis", error=str(exc), during="read")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_MIN
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    self._last_bus_id = entry_id
                    self._deliver_entry(fields)

    def _deliver_entry(self, fields: dict[str, str]) -> None:
        history_id = fields.get("h", "")
        event = _decode(fields["e"], parse_id(history_id) if history_id else ev.NO_ID)
        assert self._deliver is not None
        try:
            self._deliver(event)
        except Exception:
            log.exception("deliver_failed", kind=event.kind)
        self._saw_own(fields.get("o", ""))

    # history

    async def recent(self, room: str, limit: int) -> list[Event]:
        if limit <= 0:
            return []
        try:
            entries = await self._client().xrevrange(_key("h", room), count=limit)
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis history read failed: {exc}") from exc
        return [_decode(fields["e"], parse_id(entry_id)) for entry_id, fields in reversed(entries)]

    # nicks

    async def claim_nick(self, key: str, nick: str) -> bool:
        try:
            claimed = await self._client().set(_key("nick", key), self.node, nx=True, ex=self.nick_ttl)
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis nick claim failed: {exc}") from exc
        if claimed:
            self._nicks.add(key)
            self._enqueue("op", lambda pipe: pipe.sadd(_key("nicks", self.node), key))
        return bool(claimed)

    def release_nick(self, key: str) -> None:
        self._nicks.discard(key)

        def op(pipe: Any) -> None:
            pipe.eval(RELEASE_LUA, 1, _key("nick", key), self.node)
            pipe.srem(_key("nicks", self.node), key)

        self._enqueue("op", op)

    async def room_name(self, key: str, name: str) -> str:
        pipe = self._client().pipeline(transaction=True)
        pipe.hsetnx(_key("roomnames"), key, name)
        pipe.hget(_key("roomnames"), key)
        _, shown = await pipe.execute()
        return str(shown)

    async def remote_nick(self, key: str) -> bool:
        owner = await self._client().get(_key("nick", key))
        return owner is not None and owner != self.node

    # records and failure counters

    async def get_record(self, kind: str, key: str) -> Record | None:
        data = await self._call("record read", lambda client: client.hget(_key("rec", kind), key))
        return decode_record(data) if data is not None else None

    async def put_record(self, kind: str, key: str, record: Record | None) -> None:
        if record is None:
            await self._call("record write", lambda client: client.hdel(_key("rec", kind), key))
        else:
            data = encode_record(record)
            await self._call("record write", lambda client: client.hset(_key("rec", kind), key, data))

    async def records(self, kind: str) -> dict[str, Record]:
        table = await self._call("record read", lambda client: client.hgetall(_key("rec", kind)))
        return {key: decode_record(data) for key, data in table.items()}

    async def failures(self, key: str, window: float) -> int:
        return await self._count_failures(key, window, add=False)

    async def add_failure(self, key: str, window: float) -> int:
        return await self._count_failures(key, window, add=True)

    async def _count_failures(self, key: str, window: float, *, add: bool) -> int:
        name = _key("fail", key)

        async def run(client: Any) -> int:
            # Redis's clock, not ours: every node must agree on what the window holds.
            seconds, micros = await client.time()
            now = seconds + micros / 1e6
            pipe = client.pipeline(transaction=True)
            pipe.zremrangebyscore(name, "-inf", now - window)
            if add:
                pipe.zadd(name, {f"{now}:{os.urandom(4).hex()}": now})
                pipe.expire(name, max(1, int(window) + 1))
            pipe.zcard(name)
            *_, count = await pipe.execute()
            return int(count)

        return int(await self._call("failure count", run))

    async def _call(self, what: str, op: Op) -> Any:
        try:
            return await op(self._client())
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis {what} failed: {exc}") from exc

    # presence

    def _field(self, member: str) -> str:
        return f"{self.node}:{member}"

    def online(self, member: str, nick: str) -> None:
        self._enqueue("op", lambda pipe: pipe.hset(_key("online"), self._field(member), nick))

    def offline(self, member: str, rooms: tuple[str, ...]) -> None:
        field = self._field(member)

        def op(pipe: Any) -> None:
            pipe.hdel(_key("online"), field)
            for room in rooms:
                pipe.hdel(_key("members", room), field)

        self._enqueue("op", op)

    def renamed(self, member: str, nick: str, rooms: tuple[str, ...]) -> None:
        field = self._field(member)

        def op(pipe: Any) -> None:
            pipe.hset(_key("online"), field, nick)
            for room in rooms:
                pipe.hset(_key("members", room), field, nick)

        self._enqueue("op", op)

    def joined(self, room: str, room_name: str, member: str, nick: str) -> None:
        field = self._field(member)

        def op(pipe: Any) -> None:
            pipe.hset(_key("members", room), field, nick)
            pipe.sadd(_key("rooms"), room)

        self._enqueue("op", op)

    def left(self, room: str, member: str) -> None:
        self._enqueue("op", lambda pipe: pipe.hdel(_key("members", room), self._field(member)))

    def _remote(self, mapping: dict[str, str]) -> list[str]:
        mine = f"{self.node}:"
        return [nick for field, nick in mapping.items() if not field.startswith(mine)]

    async def remote_members(self, room: str) -> list[str]:
        return self._remote(await self._client().hgetall(_key("members", room)))

    async def remote_online(self) -> list[str]:
        return self._remote(await self._client().hgetall(_key("online")))

    async def remote_rooms(self) -> dict[str, tuple[str, int]]:
        client = self._client()
        rooms = sorted(await client.smembers(_key("rooms")))
        pipe = client.pipeline(transaction=False)
        for room in rooms:
            pipe.hgetall(_key("members", room))
        pipe.hgetall(_key("roomnames"))
        *members, names = await pipe.execute()
        out: dict[str, tuple[str, int]] = {}
        for room, mapping in zip(rooms, members, strict=True):
            count = len(self._remote(mapping))
            if count:
                out[room] = (names.get(room, room), count)
        return out

    # liveness and cleanup of dead nodes

    async def _every(self, seconds: float, action: Callable[[], Awaitable[None]]) -> None:
        while not self._closing:
            await asyncio.sleep(seconds)
            try:
                await action()
            except (RedisError, OSError) as exc:
                log.warning("store_error", store="redis", error=str(exc), during=action.__name__)

    async def _heartbeat_once(self) -> None:
        pipe = self._client().pipeline(transaction=False)
        pipe.set(_key("node", self.node), "1", ex=max(1, round(self.node_ttl)))
        pipe.sadd(_key("nodes"), self.node)
        for key in self._nicks:
            pipe.expire(_key("nick", key), self.nick_ttl)
        await pipe.execute()

    async def _janitor_once(self) -> None:
        client = self._client()
        for node in await client.smembers(_key("nodes")):
            if node == self.node or await client.exists(_key("node", node)):
                continue
            # One janitor per dead node, however many nodes notice at once.
            if await client.set(_key("janitor", node), self.node, nx=True, ex=30):
                await self._bury(node)

    async def _bury(self, node: str) -> None:
        """Remove a dead node's users: presence, nicks, and a quit notice to their rooms."""
        quits = await self._forget_node(node)
        for nick, rooms in quits.items():
            self.publish(ev.notice(replies.QUIT.format(nick=nick, reason="server lost"), rooms=tuple(rooms)))
        log.warning("redis_node_lost", node=node, users=len(quits))

    async def _forget_node(self, node: str) -> dict[str, list[str]]:
        """Delete every trace of `node`; return its users' nicks and their rooms."""
        client = self._client()
        prefix = f"{node}:"
        rooms_of: dict[str, list[str]] = {}
        for room in await client.smembers(_key("rooms")):
            mapping = await client.hgetall(_key("members", room))
            fields = [field for field in mapping if field.startswith(prefix)]
            if fields:
                await client.hdel(_key("members", room), *fields)
            for field in fields:
                rooms_of.setdefault(mapping[field], []).append(room)
        online = [field for field in await client.hkeys(_key("online")) if field.startswith(prefix)]
        if online:
            await client.hdel(_key("online"), *online)
        for key in await client.smembers(_key("nicks", node)):
            await client.eval(RELEASE_LUA, 1, _key("nick", key), node)
        await client.delete(_key("nicks", node), _key("node", node))
        await client.srem(_key("nodes"), node)
        return rooms_of
