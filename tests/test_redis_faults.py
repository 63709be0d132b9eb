"""The Redis store under faults: paused nodes, a Redis that forgets, refuses or stalls, bad bus
entries and nodes of another version. Real telchat processes and a real redis-server."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from telchat.rules import replies
from telchat.store.events import notice
from telchat.store.redis import (
    BUS_VERSION,
    PROBE_SECONDS,
    QUIET_SECONDS,
    RECONNECT_SECONDS,
    RETRY_MAX,
    RedisStore,
)
from tests.clients import RawClient
from tests.conftest import running
from tests.procs import ServerProcess, run_server
from tests.redis_server import RedisServer, login
from tests.test_metrics import METRICS, http_get

TTL = "--node-ttl=1"


@pytest.fixture
def forgetful(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server without persistence: a restart loses every key."""
    server = RedisServer(tmp_path, persist=False)
    yield server
    server.stop()


def start(redis: RedisServer, count: int, *args: str) -> list[ServerProcess]:
    return [ServerProcess(f"--store={redis.url}", TTL, "--flood-rate=0", *args) for _ in range(count)]


@pytest.fixture
def procs() -> Iterator[list[ServerProcess]]:
    """Server processes a test starts; all are killed at the end."""
    started: list[ServerProcess] = []
    yield started
    for proc in started:
        if proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGCONT)
        proc.kill()


@pytest.fixture
def pair(redis: RedisServer, procs: list[ServerProcess]) -> list[ServerProcess]:
    """Two nodes on `redis`, with a one-second node TTL."""
    procs += start(redis, 2)
    return procs


@pytest.fixture
def node(redis: RedisServer, procs: list[ServerProcess]) -> ServerProcess:
    procs += start(redis, 1)
    return procs[0]


async def eventually(holds: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until `holds()` (the nodes write presence a moment after they answer)."""
    for _ in range(int(timeout / 0.05)):
        if holds():
            return
        await asyncio.sleep(0.05)
    assert holds()


async def up_for(redis: RedisServer, seconds: float) -> None:
    """Until redis-server has run `seconds`: before that, a node with no connection may be a
    live one still reconnecting after a Redis restart, and is not declared dead."""
    uptime = redis.client().info("server")["uptime_in_seconds"]
    await asyncio.sleep(max(0.0, seconds - uptime + 1))  # whole seconds, rounded down


def logged(node: ServerProcess) -> set[str]:
    """Every event `node` logged: it is stopped, so that none is still on its way."""
    node.stop()
    return {record["event"] for record in node.events}


async def until(client: RawClient, command: str, want: str, timeout: float = 10.0) -> None:
    """Send `command` until its answer (the first line starting like `want`) is `want`."""
    deadline = time.monotonic() + timeout
    got = ""
    while time.monotonic() < deadline:
        await client.drain(quiet=0.05)
        await client.send(command)
        got = (await client.read_until(want.split(":", maxsplit=1)[0]))[-1]
        if got == want:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{command!r} answered {got!r}, never {want!r}")


async def test_paused_node_drops_the_nicks_taken_meanwhile(
    redis: RedisServer, pair: list[ServerProcess], clients: list[RawClient]
) -> None:
    one, two = pair
    alice = await login(clients, one, "alice", "r")
    bob = await login(clients, one, "bob", "r")
    carol = await login(clients, two, "carol", "r")
    one.proc.send_signal(signal.SIGSTOP)
    try:
        # Longer than --node-ttl: node two declares node one dead and frees its nicks.
        two.wait_event("redis_node_lost", timeout=10)
        usurper = await login(clients, two, "alice", "r")
    finally:
        one.proc.send_signal(signal.SIGCONT)
    said = (await alice.wait_closed(timeout=10)).decode()
    assert replies.NICK_LOST.format(nick="alice") in said
    # One alice: a private message reaches exactly one person, from either node.
    await bob.drain()
    await bob.send("/msg alice from bob")
    assert (await usurper.read_until("*bob*>"))[-1] == "*bob*> from bob"
    await carol.send("/msg alice from carol")
    assert (await usurper.read_until("*carol*>"))[-1] == "*carol*> from carol"
    # Node one wrote its surviving users' presence and nicks again: bob is back, alice listed once.
    await until(carol, "who", "*** Users in #r: alice, bob, carol")
    assert redis.client().get("telchat:nick:bob") == one.wait_event("redis_open")["node"]
    assert one.wait_event("nick_lost")["nick"] == "alice"


async def test_paused_node_drops_a_nick_whose_lookalike_was_taken_meanwhile(
    pair: list[ServerProcess], clients: list[RawClient]
) -> None:
    """The heartbeat re-claims look keys too: `aIice` taken while `alice`'s node was buried
    reads like `alice`, so the old alice goes, though her own key was still free."""
    one, two = pair
    alice = await login(clients, one, "alice")
    one.proc.send_signal(signal.SIGSTOP)
    try:
        two.wait_event("redis_node_lost", timeout=10)
        await login(clients, two, "aIice")
    finally:
        one.proc.send_signal(signal.SIGCONT)
    assert replies.NICK_LOST.format(nick="alice") in (await alice.wait_closed(timeout=10)).decode()


async def test_a_paused_node_is_not_declared_dead_before_its_ttl(
    redis: RedisServer, procs: list[ServerProcess], clients: list[RawClient]
) -> None:
    """A node that stopped beating but still has its connections to Redis (SIGSTOP, a long
    pause) is alive until its --node-ttl: only a node with no connection is dead sooner."""
    procs += [ServerProcess(f"--store={redis.url}", "--node-ttl=6", "--flood-rate=0") for _ in range(2)]
    one, two = procs
    await login(clients, one, "alice")
    one.proc.send_signal(signal.SIGSTOP)
    try:
        other = await RawClient.connect(two.port)
        clients.append(other)
        # Past a heartbeat interval (2 s) without a beat, well within the TTL.
        await asyncio.sleep(3)
        await other.send("login alice")
        await other.expect("*** Nick alice is already taken")
    finally:
        one.proc.send_signal(signal.SIGCONT)
    assert "redis_node_dead" not in logged(two)


async def test_redis_restart_without_persistence_keeps_nicks_unique(
    forgetful: RedisServer, procs: list[ServerProcess], clients: list[RawClient]
) -> None:
    procs += start(forgetful, 2)
    one, two = procs
    alice = await login(clients, one, "alice", "r")
    bob = await login(clients, two, "bob", "r")
    await asyncio.to_thread(forgetful.restart, 0.2)
    # The next heartbeats write both nodes' nicks and presence again.
    await until(bob, "who", "*** Users in #r: alice, bob")
    other = await RawClient.connect(two.port)
    clients.append(other)
    await other.send("login alice")
    await other.expect("*** Nick alice is already taken")
    await alice.drain()
    await bob.send("/msg alice still here?")
    assert (await alice.read_until("*bob*>"))[-1] == "*bob*> still here?"


async def test_the_first_command_after_a_redis_restart_is_answered(redis: RedisServer) -> None:
    """A pooled connection that Redis closed on its restart is reconnected and the command
    retried once: the user's line is answered, not refused as a store error."""
    store = RedisStore(redis.url, node_ttl=60)  # heartbeats 20 s apart: none in between
    await store.open(lambda event: None)
    try:
        await store.put_record("account", "alice", {"nick": "alice"})
        await asyncio.to_thread(redis.restart)
        # The reader (its own pooled connection) is back in its blocking read by then; the
        # connection the command gets is the one the restart closed.
        await asyncio.sleep(RETRY_MAX + 0.5)
        assert await store.get_record("account", "alice") == {"nick": "alice"}
        assert await store.mail_count("alice") == 0
    finally:
        await store.close()


async def test_refused_nick_claim_leaves_no_stuck_nick(
    redis: RedisServer, node: ServerProcess, clients: list[RawClient]
) -> None:
    ghost = await RawClient.connect(node.port)
    clients.append(ghost)
    admin = redis.client()
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)
    try:
        await ghost.send("login ghost")
        assert await ghost.read_line(timeout=10) == replies.STORE_UNAVAILABLE
    finally:
        admin.config_set("maxmemory", 0)
    # Nothing of the failed claim is left: the nick is free for anyone, claimed in Redis when
    # taken, and messages to it reach its new owner.
    taker = await RawClient.connect(node.port)
    clients.append(taker)
    await taker.send("login ghost")
    assert await taker.read_line(timeout=10) == "*** User change nick anonymous --> ghost"
    assert admin.get("telchat:nick:ghost") == node.wait_event("redis_open")["node"]
    pal = await login(clients, node, "pal")
    await pal.send("/msg ghost boo")
    assert (await taker.read_until("*pal*>"))[-1] == "*pal*> boo"
    assert "command_failed" not in logged(node)


async def test_claim_of_a_user_who_left_is_released(
    redis: RedisServer, node: ServerProcess, clients: list[RawClient]
) -> None:
    leaver = await RawClient.connect(node.port)
    admin = redis.client()
    # Writes wait for a second: the claim is answered after its user is gone.
    admin.execute_command("CLIENT", "PAUSE", 1000, "WRITE")
    await leaver.send("login ghost")
    await asyncio.sleep(0.2)
    await leaver.close()
    node.wait_event("disconnect")
    await asyncio.sleep(1.0)
    await eventually(lambda: not admin.exists("telchat:nick:ghost"))
    assert not admin.sismember(f"telchat:nicks:{node.wait_event('redis_open')['node']}", "ghost")
    await login(clients, node, "ghost")


async def test_a_bad_bus_entry_is_skipped_and_logged(
    redis: RedisServer, pair: list[ServerProcess], clients: list[RawClient]
) -> None:
    a, b = [await login(clients, proc, nick, "r") for proc, nick in zip(pair, "ab", strict=True)]
    admin = redis.client()
    future = orjson.dumps({"k": "say", "x": "from the future", "v": BUS_VERSION + 1}).decode()
    odd_version = orjson.dumps({"v": [2]}).decode()
    entries = ({"e": "{not json"}, {"e": "[1, 2]"}, {"x": "no event"}, {"e": odd_version}, {"e": future}, {"e": future})
    for fields in entries:
        admin.xadd("telchat:bus", fields)
    await a.drain()
    await b.send("still delivered?")
    assert (await a.read_until("#r:b>"))[-1] == "#r:b> still delivered?"
    await a.send("who")
    assert (await a.read_until("*** Users in"))[-1] == "*** Users in #r: a, b"
    for node in pair:
        node.wait_for(
            lambda r: r["event"] == "bus_entry_skipped" and f"bus version {BUS_VERSION + 1}," in r["error"],
            "the last skip",
        )
        skipped = [r for r in node.events if r["event"] == "bus_entry_skipped"]
        # Three malformed entries, and each other version once, however many of its entries came.
        assert len(skipped) == 5, skipped
        assert "command_failed" not in logged(node)


async def test_a_dead_reader_fails_healthz(redis: RedisServer) -> None:
    async with running(replace(METRICS, store=redis.url, node_ttl=1)) as app:
        store, port = app.store, app.metrics_port
        assert isinstance(store, RedisStore) and port is not None
        assert await http_get(port, "/healthz") == (200, "ok\n")

        def broken(entry_id: str, fields: dict[str, str]) -> None:
            raise RuntimeError("a bug in delivery")

        # Any bug past the reader's own error handling ends its task.
        store._deliver_entry = broken  # type: ignore[method-assign]
        store.publish(notice("x", everyone=True))
        # A command waiting for its own events to come back does not wait forever...
        await asyncio.wait_for(store.settled(), 5)
        # ...and health says why nothing is delivered any more.
        status, body = await http_get(port, "/healthz")
        assert status == 503
        assert body.startswith("store not answering: redis-reader stopped: RuntimeError('a bug in delivery')")


def test_a_node_of_another_version_is_refused(redis: RedisServer) -> None:
    admin = redis.client()
    admin.set("telchat:node:newer-node", str(BUS_VERSION + 1), ex=30)
    admin.sadd("telchat:nodes", "newer-node")
    result = run_server("--port=0", f"--store={redis.url}")
    assert result.returncode == 2
    assert f"which speaks bus version {BUS_VERSION + 1}; this node speaks version {BUS_VERSION}" in result.stderr


async def test_rooms_holds_only_live_rooms_and_costs_one_round_trip(
    redis: RedisServer, procs: list[ServerProcess], clients: list[RawClient]
) -> None:
    # A long node TTL: no heartbeat or janitor pass lands in the counted window.
    procs += [ServerProcess(f"--store={redis.url}", "--node-ttl=60", "--flood-rate=0") for _ in range(2)]
    one, two = procs
    churner = await login(clients, one, "churner", "kept")
    await login(clients, two, "other", "elsewhere")
    for i in range(150):
        await churner.send(f"join gone{i}")
        await churner.send(f"leave gone{i}")
    await churner.send("who")
    await churner.read_until("*** Users in")
    admin = redis.client()
    await eventually(lambda: admin.scard("telchat:rooms") <= 2)
    assert admin.smembers("telchat:rooms") == {"kept", "elsewhere"}
    assert set(admin.hkeys("telchat:roomnames")) == {"kept", "elsewhere"}
    admin.config_resetstat()
    await churner.send("rooms")
    assert (await churner.read_until("*** Rooms"))[-1] == "*** Rooms: #elsewhere (1), #kept (1)"
    stats = admin.info("commandstats")
    # Blocking bus reads come and go on their own; everything else is the `rooms` command.
    calls = {
        name: stat["calls"] for name, stat in stats.items() if not name.startswith(("cmdstat_xread", "cmdstat_config"))
    }
    assert calls.get("cmdstat_eval", 0) == 1, calls
    assert sum(calls.values()) <= 10, calls
    # Empty rooms an older telchat left behind go with the first `rooms`.
    admin.sadd("telchat:rooms", *(f"stale{i}" for i in range(100)))
    await churner.send("rooms")
    assert (await churner.read_until("*** Rooms"))[-1] == "*** Rooms: #elsewhere (1), #kept (1)"
    assert admin.smembers("telchat:rooms") == {"kept", "elsewhere"}


async def test_a_dead_node_takes_its_rooms_along(
    redis: RedisServer, pair: list[ServerProcess], clients: list[RawClient]
) -> None:
    one, two = pair
    await login(clients, one, "stays", "kept")
    await login(clients, two, "doomed", "doomed")
    await login(clients, two, "doomed2", "kept")
    admin = redis.client()
    assert admin.smembers("telchat:rooms") == {"kept", "doomed"}
    two.proc.send_signal(signal.SIGKILL)
    one.wait_event("redis_node_lost")
    assert admin.smembers("telchat:rooms") == {"kept"}
    assert set(admin.hkeys("telchat:roomnames")) == {"kept"}


async def test_a_stalled_redis_gives_a_store_error_line(
    redis: RedisServer, node: ServerProcess, clients: list[RawClient]
) -> None:
    joiner = await login(clients, node, "joiner")
    asker = await login(clients, node, "asker", "here")
    await joiner.drain()
    await asker.drain()
    assert redis.proc is not None
    redis.proc.send_signal(signal.SIGSTOP)
    try:
        await joiner.send("join nowhere")
        # A line said just before cannot be written back: the command after it waits for it
        # only so long.
        await asker.send("/me waits")
        await asker.send("who")
        assert await joiner.read_line(timeout=15) == replies.STORE_UNAVAILABLE
        assert await asker.read_line(timeout=15) == replies.STORE_UNAVAILABLE
    finally:
        redis.proc.send_signal(signal.SIGCONT)
    await joiner.join("nowhere", "joiner")
    node.wait_for(lambda r: r["event"] == "store_error" and r.get("during") == "command", "store_error")
    assert "command_failed" not in logged(node)


async def test_a_node_handing_over_to_its_next_image_is_not_declared_dead(redis: RedisServer) -> None:
    """An upgrade in place (`drain`, then exec) leaves the node without a connection to
    Redis for a moment: it is not dead, and keeps its nicks, until the mark runs out."""
    old, rival = RedisStore(redis.url, node_ttl=60), RedisStore(redis.url, node_ttl=60)
    await old.open(lambda event: None)
    await rival.open(lambda event: None)
    try:
        assert await old.claim_nick("alice", "alice")
        await old.drain(1.0)
        # The exec: this image's connections close, and nothing else of it runs.
        old._closing = True
        for task in old._tasks:
            task.cancel()
        await asyncio.gather(*old._tasks, return_exceptions=True)
        await old._redis.aclose()
        await up_for(redis, RECONNECT_SECONDS)
        await asyncio.sleep(QUIET_SECONDS + 1)  # its last heartbeat does not count any more
        assert not await rival.claim_nick("alice", "alice")
        # Without the mark (the upgrade never finished), the node is dead at the next probe.
        redis.client().delete(f"telchat:handover:{old.node}")
        await asyncio.sleep(PROBE_SECONDS)
        assert await rival.claim_nick("alice", "alice")
    finally:
        await rival.close()
