"""A Redis node dies with its users on it, and they all reconnect to the survivor at once.
Real telchat processes (default --node-ttl) and a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator

import pytest

from telchat.rules import replies
from telchat.store.redis import RECONNECT_SECONDS
from tests.clients import RawClient
from tests.procs import ServerProcess
from tests.redis_server import RedisServer, login
from tests.test_redis_faults import eventually, up_for

USERS = 240
ROOMS = 24
# Issue 15: everyone is back within this long after their node died. Their node's liveness
# key (--node-ttl, 15 s by default) has not expired by then.
BACK_WITHIN = 10.0


def nick(i: int) -> str:
    return f"u{i:03d}"


def room(i: int) -> str:
    return f"r{i % ROOMS}"


@pytest.fixture
def nodes(redis: RedisServer) -> Iterator[list[ServerProcess]]:
    """Two nodes with the default --node-ttl."""
    with contextlib.ExitStack() as stack:
        started = []
        for _ in range(2):
            started.append(ServerProcess(f"--store={redis.url}", "--flood-rate=0"))
            stack.callback(started[-1].kill)
        yield started


async def arrive(port: int, i: int, deadline: float) -> RawClient:
    """Connect as user `i` and log in (again while the nick is taken, like a person would
    retry), then join its room."""
    client = await RawClient.connect(port)
    while True:
        await client.send(f"login {nick(i)}")
        line = await client.read_line(timeout=5)
        while line.startswith("*** User change nick") and not line.endswith(f"> {nick(i)}"):
            line = await client.read_line(timeout=5)  # another user's login, announced to all
        if line == f"*** User change nick anonymous --> {nick(i)}":
            break
        assert line == replies.NICK_TAKEN.format(nick=nick(i)), line
        if time.monotonic() > deadline:
            raise AssertionError(f"{nick(i)} still taken {BACK_WITHIN} s after its node died")
        await asyncio.sleep(0.5)
    await client.join(room(i), nick(i))
    return client


async def crowd(port: int, deadline: float) -> list[RawClient]:
    arrivals = [asyncio.ensure_future(arrive(port, i, deadline)) for i in range(USERS)]
    try:
        return list(await asyncio.gather(*arrivals))
    except BaseException:
        for arrival in arrivals:
            arrival.cancel()
        done = await asyncio.gather(*arrivals, return_exceptions=True)
        for client in done:
            if isinstance(client, RawClient):
                await client.close()
        raise


async def test_users_of_a_killed_node_are_back_on_the_other_within_seconds(
    redis: RedisServer, nodes: list[ServerProcess], clients: list[RawClient]
) -> None:
    one, two = nodes
    clients += await crowd(one.port, time.monotonic())
    dead = one.wait_event("redis_open")["node"]
    one.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    clients += await crowd(two.port, killed + BACK_WITHIN)
    assert time.monotonic() - killed < BACK_WITHIN
    # The dead node is buried: none of its presence is left, and `who` shows each room's users.
    admin = redis.client()

    def leftovers() -> list[str]:
        hashes = ["telchat:online", *(f"telchat:members:r{k}" for k in range(ROOMS))]
        return [field for name in hashes for field in admin.hkeys(name) if field.startswith(f"{dead}:")]

    await eventually(lambda: not leftovers(), BACK_WITHIN - (time.monotonic() - killed))
    asker = clients[-1]
    await asker.drain(0.05)
    for k in range(ROOMS):
        await asker.send(f"who #r{k}")
        names = ", ".join(sorted(nick(i) for i in range(USERS) if i % ROOMS == k))
        assert (await asker.read_until("*** Users in"))[-1] == f"*** Users in #r{k}: {names}"
    assert not admin.exists(f"telchat:node:{dead}")
    # Those already back were not announced as lost.
    assert two.wait_event("redis_node_lost")["users"] == USERS


async def test_a_killed_node_is_proven_dead_by_the_first_logins_after_it(
    redis: RedisServer, clients: list[RawClient]
) -> None:
    """Its nicks are free as soon as a claim finds it without a connection to Redis, not a
    heartbeat interval (here 20 s) after its last heartbeat, nor at its --node-ttl."""
    one, two = (ServerProcess(f"--store={redis.url}", "--node-ttl=60", "--flood-rate=0") for _ in range(2))
    try:
        await login(clients, one, "alice", "r")
        await up_for(redis, RECONNECT_SECONDS)
        one.proc.send_signal(signal.SIGKILL)
        one.proc.wait()
        again = await RawClient.connect(two.port)
        clients.append(again)
        answers = []
        for _ in range(20):  # a person retrying for 5 s
            await again.send("login alice")
            answers.append(await again.read_line())
            if answers[-1] == "*** User change nick anonymous --> alice":
                break
            await asyncio.sleep(0.25)
        assert answers[-1] == "*** User change nick anonymous --> alice", answers
        assert two.wait_event("redis_node_dead")["node"] == one.wait_event("redis_open")["node"]
    finally:
        one.kill()
        two.kill()


async def test_a_killed_node_nobody_reconnects_to_is_buried_after_a_missed_heartbeat(
    redis: RedisServer, clients: list[RawClient]
) -> None:
    """No claim meets its nicks, so only a janitor finds it: one with no connection to Redis
    that missed a heartbeat is declared dead (an expiry never logs `redis_node_dead`), and
    its users quit their rooms then, not at --node-ttl."""
    one, two = (ServerProcess(f"--store={redis.url}", "--node-ttl=6", "--flood-rate=0") for _ in range(2))
    try:
        await login(clients, one, "alice", "r")
        bob = await login(clients, two, "bob", "r")
        await up_for(redis, RECONNECT_SECONDS)
        one.proc.send_signal(signal.SIGKILL)
        one.proc.wait()
        assert (await bob.read_until("*** User alice quit", timeout=10))[-1] == "*** User alice quit (server lost)"
        assert two.wait_event("redis_node_dead")["node"] == one.wait_event("redis_open")["node"]
        await bob.send("who")
        assert (await bob.read_until("*** Users in #r"))[-1] == "*** Users in #r: bob"
    finally:
        one.kill()
        two.kill()


async def test_a_storm_of_logins_shares_a_few_redis_connections(redis: RedisServer, clients: list[RawClient]) -> None:
    """The reads and claims of logins arriving together go out on one pipeline per loop
    turn, not each on a connection of its own from the pool (64)."""
    node = ServerProcess(f"--store={redis.url}", "--node-ttl=60", "--flood-rate=0")
    try:
        admin = redis.client()
        before = admin.info("stats")["total_connections_received"]
        await asyncio.gather(*(login(clients, node, nick(i), room(i)) for i in range(USERS)))
        opened = admin.info("stats")["total_connections_received"] - before
        assert opened <= 16, opened
    finally:
        node.kill()
