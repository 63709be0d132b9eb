"""Records and failure counters behave alike in every store: memory, SQLite and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from telchat.store.base import FAILURE_SWEEP_AT, MemoryStore, Store
from telchat.store.url import make_store
from tests.redis_server import RedisServer


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "redis":
        url = request.getfixturevalue("redis").url
        # The module shares one redis-server: each test starts from an empty one.
        client = aioredis.Redis.from_url(url)
        await client.flushdb()
        await client.aclose()
    else:
        url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'r.db'}"
    opened = make_store(url, 100)
    await opened.open(lambda _event: None)
    yield opened
    await opened.close()


async def test_records_round_trip(store: Store) -> None:
    assert await store.get_record("account", "frank") is None
    record = {"hash": "$argon2id$...", "settings": {"bell": True}, "ignored": ["bob"], "until": None}
    await store.put_record("account", "frank", record)
    got = await store.get_record("account", "frank")
    assert got == record
    assert got is not record
    got["ignored"].append("changed")
    assert await store.get_record("account", "frank") == record
    await store.put_record("ban", "nick:bob", {"reason": "spam"})
    await store.put_record("ban", "ip:10.0.0.0/8", {"reason": "range"})
    assert await store.records("ban") == {"nick:bob": {"reason": "spam"}, "ip:10.0.0.0/8": {"reason": "range"}}
    assert await store.records("mute") == {}
    await store.put_record("ban", "nick:bob", None)
    assert await store.records("ban") == {"ip:10.0.0.0/8": {"reason": "range"}}
    await store.put_record("ban", "nick:absent", None)


async def test_failures_count_within_a_window(store: Store) -> None:
    assert await store.failures("login:nick:frank", 0.5) == 0
    assert await store.add_failure("login:nick:frank", 0.5) == 1
    assert await store.add_failure("login:nick:frank", 0.5) == 2
    assert await store.add_failure("login:ip:10.0.0.1", 0.5) == 1
    assert await store.failures("login:nick:frank", 0.5) == 2
    await asyncio.sleep(0.6)
    assert await store.failures("login:nick:frank", 0.5) == 0
    assert await store.add_failure("login:nick:frank", 0.5) == 1


async def test_sqlite_records_survive_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    first = make_store(url, 100)
    await first.open(lambda _event: None)
    await first.put_record("topic", "lobby", {"topic": "hi", "by": "boss"})
    await first.close()
    second = make_store(url, 100)
    await second.open(lambda _event: None)
    assert await second.records("topic") == {"lobby": {"topic": "hi", "by": "boss"}}
    await second.close()


async def test_local_failure_counters_forget_stale_keys() -> None:
    store = MemoryStore()
    for i in range(FAILURE_SWEEP_AT):
        await store.add_failure(f"login:nick:n{i}", 0.05)
    await asyncio.sleep(0.06)
    await store.add_failure("login:nick:fresh", 0.05)
    # Memory stays bounded however many nicks an attacker tries.
    assert list(store._failures) == ["login:nick:fresh"]
