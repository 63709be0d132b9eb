"""Redis: shared history, cross-process fan-out, nick ownership and presence.

- History: one stream per room (`h:{room}`, XADD MAXLEN ~ keep).
- Fan-out: one shared stream (`bus`) holding every event in one global order. Each node
  reads it with XREAD from the last id it processed, so a dropped connection resumes
  exactly where it stopped: nothing lost, nothing twice. Local events are delivered the
  same way, after their XADD: persist, then deliver, and the same order on every node.
- Publishing: a single writer task sends queued events in order, pipelined, through a
  Lua script that dedupes on an event id, writes history and bus atomically. A failed
  round trip is retried with the same ids, so a retry after a lost reply adds nothing.
- Nicks: `nick:{key}` and `look:{look}` (names.nick_key, names.look_key), claimed together
  by one script that also takes them over from a dead node. Each heartbeat re-claims every
  key the node holds (one script): a key Redis lost is written again, a key another node
  took is reported to the room manager, which drops that user here.
- Presence: hashes of `node:member -> nick` per room and online, and the set of live rooms;
  a room leaves the set with its last member. A node's liveness key expires when it dies,
  or is deleted sooner by a node that finds it has no connection to Redis left, and a
  surviving node's janitor removes its users and nicks in one script over the dead node's
  own sets. The node keeps a copy of its own presence and writes it all again when a
  heartbeat finds its liveness key gone (Redis lost it, or others declared the node dead).
- Versions: bus entries and liveness keys carry BUS_VERSION; a node refuses to start
  beside live nodes of another version, and skips (logging once) entries of another.
- Records: one hash per kind (`rec:{kind}`, key -> JSON); failure counters: one sorted set
  of failure times per key (`fail:{key}`), expiring with its window.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as ConnectionLost
from redis.exceptions import RedisError

from telchat.obs.logs import get_logger
from telchat.rules import replies
from telchat.rules.names import look_key, nick_key
from telchat.store import events as ev
from telchat.store.base import (
    Deliver,
    NickLost,
    Posted,
    Record,
    RemoteRoom,
    Store,
    StoreError,
    decode_record,
    encode_record,
    masked,
)
from telchat.store.events import EntryId, Event

log = get_logger(__name__)

PREFIX = "telchat:"
BUS_MAXLEN = 100_000
DEDUPE_SECONDS = 600
READ_COUNT = 1000
RETRY_MIN, RETRY_MAX = 0.05, 2.0
# The bus entry format. Raise it only for a change older nodes cannot read (they ignore
# fields they do not know); docs/SCALING.md says what a rolling upgrade then needs.
BUS_VERSION = 1
# Nicks per heartbeat script, and fields per presence-removal script (Lua's unpack limit).
CHUNK = 1000
# `rooms` lists at most this many rooms: one script, one round trip, a bounded reply.
ROOMS_LISTED = 1000
# How long a login attempt being verified counts, at most (its node may die meanwhile).
ATTEMPT_SECONDS = 30
# A node with no connection to Redis is dead (`_proven_dead`) unless it beat this recently,
# or Redis itself started this recently: a live node's reader reconnects within RETRY_MAX.
QUIET_SECONDS = 1.0
RECONNECT_SECONDS = RETRY_MAX + 1.0
# How often one node's liveness may be probed, at most (one CLIENT LIST each).
PROBE_SECONDS = 0.25
# Pipelines of the commands sessions wait for (`_batched`) in flight at once, at most.
PIPELINES = 4
# Connections to Redis per node: the reader's blocking read, the writer, the heartbeat and
# janitor, and the commands in flight.
POOL_CONNECTIONS = 64

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
# KEYS: nick key, look key, then the keys it must not read like: look:{nick key}, nick:{look key}
# ARGV: node, nick ttl, node key prefix
# Claims both keys unless a live node (one whose node key exists) holds any of the four; a
# dead node's claims are taken over. Returns {1, ""}, or {0, the live holder}.
CLAIM_LUA = """
for i = 1, #KEYS do
  local owner = redis.call('GET', KEYS[i])
  if owner and owner ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. owner) == 1 then
    return {0, owner}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return {1, ''}
"""
# Declare a node dead (delete its node key) unless it is handing over to its next image
# (`drain`) or beat within the grace seconds.
# KEYS: node key, beats hash, handover key; ARGV: node, grace. Returns 1 when declared.
DECLARE_DEAD_LUA = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local beat = redis.call('HGET', KEYS[2], ARGV[1])
if not beat or tonumber(redis.call('TIME')[1]) - tonumber(beat) < tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""
# KEYS: node key, nodes set, beats hash
# ARGV: node, version, node ttl, nick ttl, key prefix, then pairs (kind: nick or look, bare key)
# The claim keys and the node's sets of them are named in the script, from the prefix (as in
# BURY_LUA; single-instance Redis): with thousands of nicks, naming each in Python was most
# of a heartbeat's cost.
# Returns: whether the node key existed, and the positions (from 1) of the pairs whose key
# another node owns now.
HEARTBEAT_LUA = """
local node, prefix = ARGV[1], ARGV[5]
local alive = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('SADD', KEYS[2], node)
redis.call('HSET', KEYS[3], node, redis.call('TIME')[1])
local lost = {}
local pair = 0
for i = 6, #ARGV, 2 do
  pair = pair + 1
  local kind, bare = ARGV[i], ARGV[i + 1]
  local key = prefix .. kind .. ':' .. bare
  local owner = redis.call('GET', key)
  if owner == node or not owner then
    redis.call('SET', key, node, 'EX', ARGV[4])
    redis.call('SADD', prefix .. kind .. 's:' .. node, bare)
  else
    lost[#lost + 1] = pair
  end
end
return {alive, lost}
"""
# Every trace of a node, in one pass over its own sets: its presence in the rooms it had
# members in (all live rooms for a node of a version that kept no such set), its nick and
# look claims, its liveness. KEYS: its nicks, looks, rooms sets, node key, beats, nodes,
# online, rooms, roomnames; ARGV: node, key prefix.
# Returns {nick, room, nick, room, ...} of its members, and the nick keys another node
# has taken over (their users are back).
BURY_LUA = """
local node, prefix = ARGV[1], ARGV[2]
local mine = node .. ':'
local quits, back = {}, {}
local rooms = redis.call('SMEMBERS', KEYS[3])
if #rooms == 0 then rooms = redis.call('SMEMBERS', KEYS[8]) end
for _, room in ipairs(rooms) do
  local members = prefix .. 'members:' .. room
  local flat = redis.call('HGETALL', members)
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, #mine) == mine then
      redis.call('HDEL', members, flat[i])
      quits[#quits + 1] = flat[i + 1]
      quits[#quits + 1] = room
    end
  end
  if redis.call('EXISTS', members) == 0 then
    redis.call('SREM', KEYS[8], room)
    redis.call('HDEL', KEYS[9], room)
  end
end
for _, field in ipairs(redis.call('HKEYS', KEYS[7])) do
  if string.sub(field, 1, #mine) == mine then redis.call('HDEL', KEYS[7], field) end
end
for set, kind in ipairs({'nick:', 'look:'}) do
  for _, key in ipairs(redis.call('SMEMBERS', KEYS[set])) do
    local owner = redis.call('GET', prefix .. kind .. key)
    if owner == node then
      redis.call('DEL', prefix .. kind .. key)
    elseif owner and set == 1 then
      back[#back + 1] = key
    end
  end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('HDEL', KEYS[5], node)
redis.call('SREM', KEYS[6], node)
return {quits, back}
"""
# Remove presence fields from a room; the room's last member takes the room with it.
# KEYS: members hash, rooms set, roomnames hash; ARGV: room key, then fields
LEAVE_LUA = """
redis.call('HDEL', KEYS[1], unpack(ARGV, 2))
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
end
return 0
"""
# Other nodes' members of live rooms, in one round trip (and at most ARGV[3] rooms). A person,
# not a connection, is what is counted, and only the caller can tell (nick keys fold case and
# lookalikes, beyond Lua): so each room gives its distinct nicks, which an account's sessions
# share or nearly, and its anonymous members as a number. The members hashes are named from
# ARGV (single-instance Redis; the store does not support Cluster).
# KEYS: rooms set, roomnames hash; ARGV: this node's field prefix, members key prefix, cap, the anonymous nick
# Returns: {room, name, anonymous, {nick, ...}}, ...
ROOMS_LUA = """
local out = {}
for _, room in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if #out >= tonumber(ARGV[3]) then break end
  local presence = redis.call('HGETALL', ARGV[2] .. room)
  local anonymous, nicks, seen = 0, {}, {}
  for i = 1, #presence, 2 do
    local nick = presence[i + 1]
    if string.sub(presence[i], 1, #ARGV[1]) == ARGV[1] then
      -- this node's own: the caller counts them
    elseif nick == ARGV[4] then
      anonymous = anonymous + 1
    elseif not seen[nick] then
      seen[nick] = true
      nicks[#nicks + 1] = nick
    end
  end
  if #presence == 0 then
    -- left behind by a version that never removed rooms
    redis.call('SREM', KEYS[1], room)
    redis.call('HDEL', KEYS[2], room)
  elseif anonymous + #nicks > 0 then
    out[#out + 1] = {room, redis.call('HGET', KEYS[2], room) or room, anonymous, nicks}
  end
end
return out
"""

# A room's shown name: the first one given, kept. KEYS: roomnames hash; ARGV: room, name
ROOM_NAME_LUA = """
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[1], ARGV[1])
"""

# A mailbox: a list of JSON items and a hash of how many each sender has in it.
# KEYS: list, sender counts; ARGV: item json, box max, sender, sender max
# Returns: 0 stored, 1 box full, 2 sender's share full.
MAIL_LUA = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return 1 end
if tonumber(redis.call('HGET', KEYS[2], ARGV[3]) or '0') >= tonumber(ARGV[4]) then return 2 end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
return 0
"""
POSTED: tuple[Posted, ...] = ("ok", "box_full", "sender_full")

Op = Callable[[Any], Awaitable[Any]]
# Puts one command on a pipeline.
Add = Callable[[Any], object]


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
            "v": BUS_VERSION,
        }
    )


class BadEntry(Exception):
    """A bus or history entry this node cannot read: malformed, or of another `version`."""

    def __init__(self, message: str, version: str | None = None) -> None:
        super().__init__(message)
        self.version = version


def _decode(data: str, entry_id: EntryId) -> Event:
    try:
        return _event(orjson.loads(data), entry_id)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadEntry(f"malformed entry: {exc!r}") from None


def _event(d: Any, entry_id: EntryId) -> Event:
    # Entries written before versions existed have the format of version 1.
    version = d.get("v", 1)
    if version != BUS_VERSION:
        raise BadEntry(f"bus version {version!r}, this node reads {BUS_VERSION}", repr(version))
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


def _ignore_lost(key: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Pending:
    """An event for the writer to publish, under the id that makes a retry harmless."""

    event_id: str
    event: Event


# What the writer sends, in order: an event to publish, or any other write, as a function
# that adds its commands to the writer's pipeline.
Queued = Pending | Callable[[Any], object]


class RedisStore(Store):
    clustered = True

    def __init__(self, url: str, keep: int = 1000, node_ttl: float = 15.0) -> None:
        super().__init__(keep)
        self.url = url
        self.shown_url = masked(url)
        self.node = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.node_ttl = node_ttl
        self.nick_ttl = max(60, int(node_ttl * 4))
        # A call that takes longer fails (StoreError for a user's command) instead of
        # hanging on a stalled Redis; the bus read blocks for half of it.
        self.timeout = max(1.0, node_ttl / 3)
        # redis-py's return types are unions of every reply shape: typed as Any here.
        self._redis: Any = None
        self._deliver: Deliver | None = None
        self._nick_lost: NickLost = _ignore_lost
        self._queue: list[Queued] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._seq = itertools.count(1)
        self._published = 0  # the last event id this node published, and the last it read back
        self._seen_own = 0
        self._origin = f"{self.node}:"
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._last_bus_id = "0-0"
        self._carried_bus_id: str | None = None
        # Nick key -> its look key (names.look_key), both claimed in Redis for a local user.
        self._nicks: dict[str, str] = {}
        # How many of those nicks have each look key: renaming to a nick that looks the
        # same must not release the look key the new nick claimed.
        self._looks: Counter[str] = Counter()
        # Nicks (key -> look key) of accounts with a session here whose claim another node
        # holds (share_nick).
        self._shared: dict[str, str] = {}
        # When each other node's liveness was last probed (`_proven_dead`), by node.
        self._probed: dict[str, float] = {}
        self._janitor_wake = asyncio.Event()
        # This node's own presence, to write again when Redis has lost it.
        self._online: dict[str, str] = {}
        self._members: dict[str, dict[str, str]] = {}
        self._names: dict[str, str] = {}
        self._foreign_versions: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        # Commands asked for this loop turn (`_batched`), and the pipelines answering them.
        self._asked: list[tuple[Add, asyncio.Future[Any]]] = []
        self._answering: set[asyncio.Task[None]] = set()
        self._closing = False
        # Why a background task stopped; the store is then unhealthy.
        self._broken: str | None = None

    # lifecycle

    async def open(self, deliver: Deliver) -> None:
        parts = urlsplit(self.url)
        if not parts.hostname:
            raise StoreError(f"bad Redis URL {self.shown_url!r}: use redis://HOST:PORT/DB")
        self._deliver = deliver
        # A blocking pool: a storm of logins waits its turn for a connection (up to the
        # command timeout) instead of failing on redis-py's default cap of 100.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=POOL_CONNECTIONS,
            timeout=self.timeout,
            socket_connect_timeout=3,
            socket_timeout=self.timeout,
            # One retry, on a lost connection only: a pooled connection that a Redis restart
            # closed reconnects, and a stalled Redis is not waited for twice. The asyncio
            # Retry: the synchronous one "retries" the making of a coroutine, never its failure.
            retry=Retry(ExponentialWithJitterBackoff(base=RETRY_MIN, cap=RETRY_MAX), 1, (ConnectionLost,)),
            health_check_interval=10,
            decode_responses=True,
            # How other nodes tell that this process is gone: Redis drops its connections.
            client_name=_client_name(self.node),
        )
        self._redis = aioredis.Redis.from_pool(pool)
        try:
            await self._redis.ping()
            last = await self._redis.xrevrange(_key("bus"), count=1)
            await self._check_versions()
        except (RedisError, OSError) as exc:
            await self._redis.aclose()
            raise StoreError(f"cannot reach Redis at {self.shown_url}: {exc}") from exc
        except StoreError:
            await self._redis.aclose()
            raise
        # A node taken up from the previous image reads on where that image stopped.
        self._last_bus_id = self._carried_bus_id or (last[0][0] if last else "0-0")
        await self._heartbeat_once()
        if self._carried_bus_id is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.delete(_key("handover", self.node))
        self._tasks = [
            self._start(self._writer(), "redis-writer"),
            self._start(self._reader(), "redis-reader"),
            self._start(self._every(self.node_ttl / 3, self._heartbeat_once), "redis-heartbeat"),
            self._start(self._every(self.node_ttl / 3, self._janitor_once, self._janitor_wake), "redis-janitor"),
        ]
        log.info("redis_open", node=self.node, url=self.shown_url, bus_id=self._last_bus_id, version=BUS_VERSION)

    async def _check_versions(self) -> None:
        """Refuse to join live nodes that write another bus format: neither could read the other."""
        client = self._client()
        nodes = sorted(await client.smembers(_key("nodes")))
        versions = await client.mget([_key("node", node) for node in nodes]) if nodes else []
        for node, version in zip(nodes, versions, strict=True):
            if version is not None and version != str(BUS_VERSION):
                raise StoreError(
                    f"Redis at {self.shown_url} is in use by node {node}, which speaks bus version {version};"
                    f" this node speaks version {BUS_VERSION}. Stop the nodes of the other version first"
                    " (docs/SCALING.md, rolling upgrades)"
                )

    def _start(self, work: Awaitable[None], name: str) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        task.add_done_callback(self._stopped)
        return task

    def _stopped(self, task: asyncio.Task[None]) -> None:
        if self._closing:
            return
        error = None if task.cancelled() else task.exception()
        self._broken = f"{task.get_name()} stopped: {error!r}"
        log.error("redis_task_died", task=task.get_name(), error=repr(error))
        # Nothing will be read back now: commands must not wait for it.
        for _wanted, waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters = []

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

    # A server upgrade in place: the next image is this same node, reading on from here.

    async def drain(self, within: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), within)
        # A fresh heartbeat and a handover mark: while the image is replaced, this node has
        # no connection to Redis, and must not look dead to other nodes (`_proven_dead`)
        # meanwhile. The next image removes the mark once it is connected.
        with contextlib.suppress(RedisError, OSError):
            await self._beat()
            await self._client().set(_key("handover", self.node), 1, ex=max(1, round(self.node_ttl)))

    def carry(self) -> dict[str, Any]:
        return {
            "node": self.node,
            # Event ids go on from here: a reused one would be taken for a retry and dropped.
            "published": self._published,
            "seen_own": self._seen_own,
            "bus_id": self._last_bus_id,
            "nicks": self._nicks,
            "shared": self._shared,
            "online": self._online,
            "members": self._members,
            "names": self._names,
            # What the writer had not sent yet (a Redis too slow for the pause): sent again by
            # the next image; the event ids make a repeat harmless.
            "queued": [[item.event_id, ev.carry(item.event)] for item in self._queue if isinstance(item, Pending)],
        }

    def take_up(self, state: dict[str, Any]) -> None:
        self.node = str(state["node"])
        self._origin = f"{self.node}:"
        self._published = int(state["published"])
        self._seen_own = int(state["seen_own"])
        self._seq = itertools.count(self._published + 1)
        self._carried_bus_id = str(state["bus_id"])
        self._online = {str(k): str(v) for k, v in state["online"].items()}
        self._nicks = _with_looks(state["nicks"], self._online)
        self._looks = Counter(self._nicks.values())
        self._shared = _with_looks(state.get("shared", {}), self._online)
        self._members = {room: {str(k): str(v) for k, v in m.items()} for room, m in state["members"].items()}
        self._names = {str(k): str(v) for k, v in state["names"].items()}
        for event_id, event in state["queued"]:
            self._enqueue(Pending(str(event_id), ev.uncarry(event)))

    async def check(self) -> None:
        if self._broken is not None:
            raise StoreError(self._broken)
        await self._call("ping", lambda client: client.ping())

    def on_nick_lost(self, handler: NickLost) -> None:
        self._nick_lost = handler

    def _client(self) -> Any:
        if self._redis is None:
            raise StoreError("Redis store is not open")
        return self._redis

    async def _call(self, what: str, op: Op) -> Any:
        try:
            return await op(self._client())
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis {what} failed: {exc}") from exc

    async def _one(self, what: str, add: Add) -> Any:
        """The reply to the one command `add` puts on a pipeline (`_batched`), or StoreError."""
        try:
            return await self._batched(add)
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis {what} failed: {exc}") from exc

    def _batched(self, add: Add) -> asyncio.Future[Any]:
        """The reply to the one command `add` puts on a pipeline. The commands asked for in one
        loop turn share one pipeline: a storm of logins asks for thousands a second, and
        each on its own would pay a connection from the pool and a round trip."""
        future = asyncio.get_running_loop().create_future()
        self._asked.append((add, future))
        if len(self._asked) == 1:
            future.get_loop().call_soon(self._send_asked)
        return future

    def _send_asked(self) -> None:
        # With PIPELINES in flight, what is asked meanwhile waits for the first to answer, and
        # goes with it: under load the pipelines grow instead of the connections in use.
        if not self._asked or len(self._answering) >= PIPELINES:
            return
        asked, self._asked = self._asked, []
        task = asyncio.ensure_future(self._answer(asked))
        self._answering.add(task)
        task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Task[None]) -> None:
        self._answering.discard(task)
        self._send_asked()

    async def _answer(self, asked: list[tuple[Add, asyncio.Future[Any]]]) -> None:
        try:
            pipe = self._client().pipeline(transaction=False)
            for add, _ in asked:
                add(pipe)
            # A command's own error (a bad key type, a refused write) is its asker's alone.
            answers = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for _, future in asked:
                future.cancel()
            raise
        except Exception as exc:
            answers = [exc] * len(asked)
        for (_, future), reply in zip(asked, answers, strict=True):
            if future.done():
                continue  # its asker gave up (a closed session)
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    # publishing: one ordered queue, one writer

    def publish(self, event: Event) -> None:
        self._published = next(self._seq)
        self._enqueue(Pending(f"{self.node}:{self._published}", event))

    async def settled(self) -> None:
        if self._broken is not None or self._seen_own >= self._published:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((self._published, waiter))
        # Bounded: with Redis stalled, the command runs after the command timeout (and
        # gets the store's error if it needs Redis) instead of the session hanging.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), self.timeout)

    def _saw_own(self, origin: str) -> None:
        seq = origin[len(self._origin) :]
        if not origin.startswith(self._origin) or not seq.isdigit():
            return
        self._seen_own = max(self._seen_own, int(seq))
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

    def _enqueue(self, item: Queued) -> None:
        self._queue.append(item)
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

    async def _send(self, batch: list[Queued]) -> None:
        pipe = self._client().pipeline(transaction=False)
        for item in batch:
            if isinstance(item, Pending):
                self._add_publish(pipe, item.event_id, item.event)
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
        block_ms = int(self.timeout * 500)
        while not self._closing:
            try:
                reply = await client.xread({_key("bus"): self._last_bus_id}, count=READ_COUNT, block=block_ms)
            except (RedisError, OSError) as exc:
                log.warning("store_error", store="redis", error=str(exc), during="read")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_MIN
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    self._last_bus_id = entry_id
                    self._deliver_entry(entry_id, fields)

    def _deliver_entry(self, entry_id: str, fields: dict[str, str]) -> None:
        try:
            history_id = fields.get("h", "")
            event = _decode(fields["e"], parse_id(history_id) if history_id else ev.NO_ID)
        except (BadEntry, KeyError, ValueError) as exc:
            self._skipped(entry_id, exc)
        else:
            assert self._deliver is not None
            try:
                self._deliver(event)
            except Exception:
                log.exception("deliver_failed", kind=event.kind)
        self._saw_own(fields.get("o", ""))

    def _skipped(self, entry_id: str, exc: Exception) -> None:
        version = exc.version if isinstance(exc, BadEntry) else None
        if version is not None:
            # A rolling upgrade would log this for every entry: once per version is enough.
            if version in self._foreign_versions:
                return
            self._foreign_versions.add(version)
        log.error("bus_entry_skipped", entry=entry_id, error=str(exc))

    # history

    async def recent(self, room: str, limit: int) -> list[Event]:
        if limit <= 0:
            return []
        entries = await self._one("history read", lambda pipe: pipe.xrevrange(_key("h", room), count=limit))
        return self._history(reversed(entries))

    async def after(self, room: str, entry_id: EntryId) -> list[Event]:
        # Stream ids are the history ids: an exclusive range reads only what is newer.
        start = f"({entry_id[0]}-{entry_id[1]}" if entry_id != ev.NO_ID else "-"
        entries = await self._one("history read", lambda pipe: pipe.xrange(_key("h", room), min=start))
        return self._history(entries)

    async def history_rooms(self) -> list[str]:
        # SCAN, not KEYS: Redis keeps answering others meanwhile.
        pattern, cut = _key("h", "*"), len(_key("h", ""))

        async def run(client: Any) -> list[str]:
            return [name[cut:] async for name in client.scan_iter(match=pattern, count=1000)]

        return list(await self._call("history rooms", run))

    def _history(self, entries: Iterable[tuple[str, dict[str, str]]]) -> list[Event]:
        events = []
        for entry_id, fields in entries:
            try:
                events.append(_decode(fields["e"], parse_id(entry_id)))
            except (BadEntry, KeyError) as exc:
                self._skipped(entry_id, exc)
        return events

    # nicks

    async def claim_nick(self, key: str, nick: str) -> bool:
        look = look_key(nick)
        try:
            owner = await self._claim(key, look)
            if owner and await self._proven_dead(owner):
                owner = await self._claim(key, look)
        except (RedisError, OSError) as exc:
            # The claim may have been applied with its reply lost. The caller still holds
            # the nick locally, so no one here can own it: take it back if it is ours.
            with contextlib.suppress(RedisError, OSError):
                await self._client().eval(RELEASE_LUA, 1, _key("nick", key), self.node)
                if not self._looks[look]:
                    await self._client().eval(RELEASE_LUA, 1, _key("look", look), self.node)
            raise StoreError(f"Redis nick claim failed: {exc}") from exc
        if owner:
            return False
        self._hold(key, look)
        return True

    def _hold(self, key: str, look: str) -> None:
        """`key` and `look` are claimed for a local user: keep them, listed for cleanup."""
        self._nicks[key] = look
        self._looks[look] += 1

        def op(pipe: Any) -> None:
            pipe.sadd(_key("nicks", self.node), key)
            pipe.sadd(_key("looks", self.node), look)

        self._enqueue(op)

    async def _claim(self, key: str, look: str) -> str:
        """Claim nick `key` and its `look` in one script; "" if claimed, else the live node
        that holds one of them (or a nick that reads like it)."""
        keys = (_key("nick", key), _key("look", look), _key("look", key), _key("nick", look))
        args = (self.node, self.nick_ttl, _key("node", ""))
        claimed, owner = await self._batched(lambda pipe: pipe.eval(CLAIM_LUA, len(keys), *keys, *args))
        return "" if claimed else str(owner)

    async def _proven_dead(self, node: str) -> bool:
        """Whether `node`, whose liveness key has not expired yet, is dead all the same: it
        has no connection to Redis (a killed process's are closed at once), is not handing
        over to its next image (`drain`), and has not beaten for QUIET_SECONDS, with Redis up
        for RECONNECT_SECONDS (after a Redis restart, live nodes are back within that). Where
        INFO is not allowed, it must not have beaten for a heartbeat interval instead (a live
        node reconnecting after a Redis restart beats within one). Then its key is deleted,
        as its expiry would, and it is buried now instead of `--node-ttl` later. Probed at
        most every PROBE_SECONDS per node."""
        now = asyncio.get_running_loop().time()
        if now - self._probed.get(node, -PROBE_SECONDS) < PROBE_SECONDS:
            return False
        self._probed[node] = now
        unconnected, grace = await self._unconnected([node])
        if not unconnected or not await self._declare_dead(node, grace):
            return False
        self._janitor_wake.set()
        return True

    async def _unconnected(self, nodes: list[str]) -> tuple[list[str], float]:
        """Those of `nodes` with no connection to Redis, and how long such a node must not
        have beaten to be dead (`_proven_dead`); none when Redis is too young to tell, or
        refuses CLIENT LIST (then only a key's expiry tells)."""
        pipe = self._client().pipeline(transaction=False)
        pipe.client_list()
        pipe.info("server")
        connections, info = await pipe.execute(raise_on_error=False)
        if isinstance(connections, RedisError):
            return [], 0.0
        if isinstance(info, RedisError):
            grace = self.node_ttl / 3
        elif int(info["uptime_in_seconds"]) < RECONNECT_SECONDS:
            return [], 0.0
        else:
            grace = min(QUIET_SECONDS, self.node_ttl / 3)
        names = {c.get("name") for c in connections}
        return [node for node in nodes if _client_name(node) not in names], grace

    async def _declare_dead(self, node: str, grace: float) -> bool:
        """Delete `node`'s key, as its expiry would, unless it beat within `grace` seconds or
        is handing over to its next image."""
        keys = (_key("node", node), _key("beats"), _key("handover", node))
        if not await self._client().eval(DECLARE_DEAD_LUA, len(keys), *keys, node, grace):
            return False
        log.warning("redis_node_dead", node=node, by=self.node)
        return True

    def release_nick(self, key: str) -> None:
        self._shared.pop(key, None)
        self._release(key, self._forget_nick(key))

    def share_nick(self, key: str, nick: str) -> None:
        self._shared[key] = look_key(nick)

    async def _take_shared(self) -> None:
        """Claim the shared nicks whose holder let go: their sessions here are the account now."""
        for key, look in list(self._shared.items()):
            if await self._claim(key, look):
                continue
            if key not in self._shared:
                self._release(key, look)  # its last session here left meanwhile
                continue
            del self._shared[key]
            self._hold(key, look)

    def _forget_nick(self, key: str) -> str | None:
        """Stop holding `key`; return its look key if no other nick held here has it."""
        look = self._nicks.pop(key, None)
        if look is None:
            return None
        self._looks[look] -= 1
        if self._looks[look] > 0:
            return None
        del self._looks[look]
        return look

    def _release(self, key: str, look: str | None) -> None:
        def op(pipe: Any) -> None:
            # Decided when sent: a claim here since then (its user came back to this node)
            # wrote the same keys, and they are its now.
            if key not in self._nicks:
                pipe.eval(RELEASE_LUA, 1, _key("nick", key), self.node)
                pipe.srem(_key("nicks", self.node), key)
            if look is not None and not self._looks[look]:
                pipe.eval(RELEASE_LUA, 1, _key("look", look), self.node)
                pipe.srem(_key("looks", self.node), look)

        self._enqueue(op)

    def _lose(self, key: str) -> None:
        """Another node owns `key` (or its look) now: forget it here and have its local holder dropped."""
        if key not in self._nicks:
            return
        self._release(key, self._forget_nick(key))
        log.warning("redis_nick_lost", node=self.node, nick_key=key)
        try:
            self._nick_lost(key)
        except Exception:
            log.exception("nick_lost_failed", nick_key=key)

    async def room_name(self, key: str, name: str) -> str:
        keys = (_key("roomnames"),)
        return str(await self._one("room name", lambda pipe: pipe.eval(ROOM_NAME_LUA, 1, *keys, key, name)))

    async def remote_nick(self, key: str) -> bool:
        owner = await self._one("nick lookup", lambda pipe: pipe.get(_key("nick", key)))
        return owner is not None and owner != self.node

    # records and failure counters

    async def get_record(self, kind: str, key: str) -> Record | None:
        data = await self._one("record read", lambda pipe: pipe.hget(_key("rec", kind), key))
        return decode_record(data) if data is not None else None

    async def put_record(self, kind: str, key: str, record: Record | None) -> None:
        if record is None:
            await self._one("record write", lambda pipe: pipe.hdel(_key("rec", kind), key))
        else:
            data = encode_record(record)
            await self._one("record write", lambda pipe: pipe.hset(_key("rec", kind), key, data))

    async def records(self, kind: str) -> dict[str, Record]:
        table = await self._one("record read", lambda pipe: pipe.hgetall(_key("rec", kind)))
        return {key: decode_record(data) for key, data in table.items()}

    async def add_mail(self, box: str, sender: str, item: Record, box_max: int, sender_max: int) -> Posted:
        data = encode_record({**item, "sender": sender})
        keys = (_key("mail", box), _key("mailfrom", box))
        code = await self._one(
            "mail write", lambda pipe: pipe.eval(MAIL_LUA, 2, *keys, data, box_max, sender, sender_max)
        )
        return POSTED[int(code)]

    async def mail_count(self, box: str) -> int:
        return int(await self._one("mail read", lambda pipe: pipe.llen(_key("mail", box))))

    async def take_mail(self, box: str) -> list[Record]:
        async def run(client: Any) -> list[str]:
            # One transaction: a second taker (another node's session) finds the box empty.
            pipe = client.pipeline(transaction=True)
            pipe.lrange(_key("mail", box), 0, -1)
            pipe.delete(_key("mail", box), _key("mailfrom", box))
            items, _ = await pipe.execute()
            return list(items)

        return [decode_record(data) for data in await self._call("mail read", run)]

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

    async def reserve_attempt(self, key: str, window: float) -> tuple[int, str]:
        token = os.urandom(8).hex()
        failures, attempts = _key("fail", key), _key("attempt", key)

        async def run(client: Any) -> int:
            seconds, micros = await client.time()
            now = seconds + micros / 1e6
            pipe = client.pipeline(transaction=True)
            pipe.zremrangebyscore(failures, "-inf", now - window)
            pipe.zcard(failures)
            # An attempt whose node died before releasing it counts only this long.
            pipe.zremrangebyscore(attempts, "-inf", now - ATTEMPT_SECONDS)
            pipe.zadd(attempts, {token: now})
            pipe.expire(attempts, ATTEMPT_SECONDS)
            pipe.zcard(attempts)
            _, failed, _, _, _, flying = await pipe.execute()
            return int(failed) + int(flying)

        return int(await self._call("attempt count", run)), token

    def release_attempt(self, key: str, token: str) -> None:
        self._enqueue(lambda pipe: pipe.zrem(_key("attempt", key), token))

    # presence

    def _field(self, member: str) -> str:
        return f"{self.node}:{member}"

    def online(self, member: str, nick: str) -> None:
        self._online[member] = nick
        self._enqueue(lambda pipe: pipe.hset(_key("online"), self._field(member), nick))

    def offline(self, member: str, rooms: tuple[str, ...]) -> None:
        self._online.pop(member, None)
        gone = [room for room in rooms if self._forget_member(room, member)]
        field = self._field(member)

        def op(pipe: Any) -> None:
            pipe.hdel(_key("online"), field)
            for room in rooms:
                _remove_fields(pipe, room, [field])
            if gone:
                pipe.srem(_key("noderooms", self.node), *gone)

        self._enqueue(op)

    def renamed(self, member: str, nick: str, rooms: tuple[str, ...]) -> None:
        self._online[member] = nick
        for room in rooms:
            self._members.get(room, {})[member] = nick
        field = self._field(member)

        def op(pipe: Any) -> None:
            pipe.hset(_key("online"), field, nick)
            for room in rooms:
                pipe.hset(_key("members", room), field, nick)

        self._enqueue(op)

    def joined(self, room: str, room_name: str, member: str, nick: str) -> None:
        self._members.setdefault(room, {})[member] = nick
        self._names[room] = room_name
        field = self._field(member)

        def op(pipe: Any) -> None:
            # Members first: a room in `rooms` always has its members hash (LEAVE_LUA).
            pipe.hset(_key("members", room), field, nick)
            pipe.sadd(_key("rooms"), room)
            pipe.hsetnx(_key("roomnames"), room, room_name)
            pipe.sadd(_key("noderooms", self.node), room)

        self._enqueue(op)

    def left(self, room: str, member: str) -> None:
        gone = self._forget_member(room, member)
        field = self._field(member)

        def op(pipe: Any) -> None:
            _remove_fields(pipe, room, [field])
            if gone:
                pipe.srem(_key("noderooms", self.node), room)

        self._enqueue(op)

    def _forget_member(self, room: str, member: str) -> bool:
        """Drop `member` from this node's copy of `room`; whether the node has no one left there."""
        members = self._members.get(room)
        if members is None:
            return False
        members.pop(member, None)
        if members:
            return False
        del self._members[room]
        self._names.pop(room, None)
        return True

    def _restore(self) -> None:
        """Write this node's presence again, as it is now (Redis lost it, or a janitor removed it)."""
        online = {self._field(member): nick for member, nick in self._online.items()}
        rooms = {
            room: {self._field(member): nick for member, nick in members.items()}
            for room, members in self._members.items()
        }
        names = dict(self._names)

        def op(pipe: Any) -> None:
            # A janitor that buried this node must be free to do so again.
            pipe.delete(_key("janitor", self.node))
            if online:
                pipe.hset(_key("online"), mapping=online)
            for room, fields in rooms.items():
                pipe.hset(_key("members", room), mapping=fields)
                pipe.sadd(_key("rooms"), room)
                pipe.hsetnx(_key("roomnames"), room, names[room])
                pipe.sadd(_key("noderooms", self.node), room)

        self._enqueue(op)

    def _remote(self, mapping: dict[str, str]) -> list[str]:
        mine = f"{self.node}:"
        return [nick for field, nick in mapping.items() if not field.startswith(mine)]

    async def remote_members(self, room: str) -> list[str]:
        return self._remote(await self._one("presence read", lambda pipe: pipe.hgetall(_key("members", room))))

    async def remote_online(self) -> list[str]:
        return self._remote(await self._one("presence read", lambda pipe: pipe.hgetall(_key("online"))))

    async def remote_rooms(self) -> dict[str, RemoteRoom]:
        listed = await self._one(
            "room list",
            lambda pipe: pipe.eval(
                ROOMS_LUA,
                2,
                _key("rooms"),
                _key("roomnames"),
                f"{self.node}:",
                _key("members", ""),
                ROOMS_LISTED,
                replies.ANONYMOUS,
            ),
        )
        return {
            room: RemoteRoom(str(name), frozenset(map(nick_key, nicks)), int(anonymous))
            for room, name, anonymous, nicks in listed
        }

    # liveness and cleanup of dead nodes

    async def _every(
        self, seconds: float, action: Callable[[], Awaitable[None]], wake: asyncio.Event | None = None
    ) -> None:
        """Run `action` every `seconds`, or as soon as `wake` is set."""
        wake = wake or asyncio.Event()
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), seconds)
            wake.clear()
            try:
                await action()
            except (RedisError, OSError) as exc:
                log.warning("store_error", store="redis", error=str(exc), during=action.__name__)

    async def _beat(self, chunk: Sequence[tuple[str, str, str]] = ()) -> tuple[int, list[int]]:
        """Say this node is alive and re-claim `chunk`'s keys, (kind, bare key, nick key)
        each; return whether the node key existed, and the positions of the lost ones."""
        existed, taken = await self._client().eval(
            HEARTBEAT_LUA,
            3,
            _key("node", self.node),
            _key("nodes"),
            _key("beats"),
            self.node,
            BUS_VERSION,
            max(1, round(self.node_ttl)),
            self.nick_ttl,
            PREFIX,
            *(part for kind, bare, _ in chunk for part in (kind, bare)),
        )
        return int(existed), list(taken)

    async def _heartbeat_once(self) -> None:
        """Say this node is alive and re-claim its nicks; notice what Redis or a janitor took."""
        held = list(self._nicks.items())
        # Each held nick is two claims: its key and its look key.
        pairs = [claim for key, look in held for claim in (("nick", key, key), ("look", look, key))]
        alive: bool | None = None
        lost: set[str] = set()
        for start in range(0, len(pairs) or 1, CHUNK):
            chunk = pairs[start : start + CHUNK]
            existed, taken = await self._beat(chunk)
            alive = bool(existed) if alive is None else alive
            lost.update(chunk[position - 1][2] for position in taken)
        for key, look in held:
            if self._nicks.get(key) != look:
                # Released while the script ran, which may have just claimed it again.
                self._release(key, look if not self._looks[look] else None)
        for key in lost:
            self._lose(key)
        await self._take_shared()
        if not alive and self._online:
            log.warning("redis_presence_restored", node=self.node, users=len(self._online), nicks_lost=len(lost))
            self._restore()

    async def _janitor_once(self) -> None:
        client = self._client()
        nodes = await client.smembers(_key("nodes"))
        for gone in self._probed.keys() - nodes:
            del self._probed[gone]
        keyed = [node for node in nodes if node != self.node and await client.exists(_key("node", node))]
        silent = await self._silent(keyed) if keyed else set()
        for node in nodes:
            if node == self.node or (node in keyed and node not in silent):
                continue
            # One janitor per dead node, however many nodes notice at once.
            if await client.set(_key("janitor", node), self.node, nx=True, ex=30):
                await self._bury(node)

    async def _silent(self, nodes: list[str]) -> set[str]:
        """Those of `nodes`, their keys not expired yet, that are dead all the same: no
        connection to Redis (a killed process's close at once) and a heartbeat missed since
        (stricter than a claim's test, `_proven_dead`: nobody is waiting for their nicks).
        Declared dead now, they are buried a heartbeat interval or two after a kill, not at
        --node-ttl, though none of their users comes back to claim a nick."""
        unconnected, grace = await self._unconnected(nodes)
        missed = max(grace, self.node_ttl / 3 + QUIET_SECONDS)
        return {node for node in unconnected if await self._declare_dead(node, missed)}

    async def _bury(self, node: str) -> None:
        """Remove a dead node's users: presence, nicks, and a quit notice to their rooms,
        except for users already back on another node under their nick."""
        quits, back = await self._forget_node(node)
        rooms_of: dict[str, list[str]] = {}
        for i in range(0, len(quits), 2):
            rooms_of.setdefault(quits[i], []).append(quits[i + 1])
        for nick, rooms in rooms_of.items():
            if nick_key(nick) not in back:
                self.publish(ev.notice(replies.QUIT.format(nick=nick, reason="server lost"), rooms=tuple(rooms)))
        log.warning("redis_node_lost", node=node, users=len(rooms_of), back=len(back))

    async def _forget_node(self, node: str) -> tuple[list[str], set[str]]:
        """Delete every trace of `node` in one script; return its members as (nick, room)
        pairs, flat, and the keys of its nicks other nodes hold now."""
        quits, back = await self._client().eval(
            BURY_LUA,
            9,
            _key("nicks", node),
            _key("looks", node),
            _key("noderooms", node),
            _key("node", node),
            _key("beats"),
            _key("nodes"),
            _key("online"),
            _key("rooms"),
            _key("roomnames"),
            node,
            PREFIX,
        )
        return list(quits), set(back)


def _with_looks(held: Any, online: dict[str, str]) -> dict[str, str]:
    """Carried nicks as nick key -> look key. An image from before look keys carried the
    keys alone: its users' nicks give their looks (the heartbeat then claims them)."""
    if isinstance(held, list):
        looks = {nick_key(nick): look_key(nick) for nick in online.values()}
        return {str(key): looks.get(str(key)) or str(key) for key in held}
    return {str(key): str(look) for key, look in held.items()}


def _client_name(node: str) -> str:
    return f"telchat:{node}"


def _remove_fields(pipe: Any, room: str, fields: list[str]) -> None:
    pipe.eval(LEAVE_LUA, 3, _key("members", room), _key("rooms"), _key("roomnames"), room, *fields)
