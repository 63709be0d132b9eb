"""SIGUSR2 while a user's line waits on the store: the line is neither lost nor run twice.

A command waits for the store to deliver what its user said before it (`Session._run`), so
a store that does not answer holds it: Redis stopped (SIGSTOP), or SQLite's write lock held
by another process. Each test holds a command so, signals, lets the store go, and checks
that every room member got each line once, in order, that history has it, and that the
server upgraded: within the pause, which waits for the store, or, when the store did not
answer within it and the upgrade failed on the old code, at the next signal.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.clients import RawClient
from tests.procs import ServerProcess
from tests.redis_server import RedisServer
from tests.test_upgrade import copied_tree, member, start

# What ann says while the store is held: a message, a command waiting on the store for it,
# and a message waiting behind that command; as every member of #ops sees them.
HELD = ("one", "/me waits", "three")
SEEN = ["#ops:ann> one", "#ops:* ann waits", "#ops:ann> three"]
REGISTERED = "*** Nick ann is now registered to you; next time type login ann <password>"


async def room_lines(client: RawClient, last: str, timeout: float = 15) -> list[str]:
    """The lines of #ops `client` reads, up to `last`."""
    lines: list[str] = []
    while not lines or lines[-1] != last:
        line = await client.read_line(timeout)
        if line.startswith("#ops:"):
            lines.append(line)
    return lines


@asynccontextmanager
async def room(server: ServerProcess) -> AsyncIterator[list[RawClient]]:
    """ann, bob and cat in #ops, with ann's "before" read by everyone."""
    clients = [await member(server.port, nick) for nick in ("ann", "bob", "cat")]
    try:
        await clients[0].send("before")
        for client in clients:
            await room_lines(client, "#ops:ann> before")
        yield clients
    finally:
        for client in clients:
            await client.close()


async def say_held(ann: RawClient) -> None:
    for line in HELD:
        await ann.send(line)
    await asyncio.sleep(0.2)  # read and waiting on the store before the signal


async def check_everything_once(server: ServerProcess, clients: list[RawClient]) -> None:
    """Each member got the held lines once, in order; history has them; nobody left."""
    for client in clients:
        assert await room_lines(client, SEEN[-1]) == SEEN
    ann = clients[0]
    await ann.send("after")
    # A line that came twice would come before this one.
    for client in clients:
        assert await room_lines(client, "#ops:ann> after") == ["#ops:ann> after"]
    await ann.send("history 5")
    assert await ann.read_until("#ops:ann> after") == ["*** #ops history", "#ops:ann> before", *SEEN, "#ops:ann> after"]
    assert not [event for event in server.events if event["event"] == "disconnect"]
    assert server.proc.poll() is None


def upgraded(server: ServerProcess) -> None:
    assert server.wait_event("upgrade")["sessions"] == 3


def upgraded_once_the_store_is_back(server: ServerProcess) -> None:
    """The store came back within the pause, and the upgrade went on; or just after (the
    store's own retry, a loaded machine), and the upgrade failed: then the second one goes."""
    outcome = server.wait_for(lambda e: e["event"] in ("upgrade", "upgrade_failed"), "upgrade outcome")
    if outcome["event"] == "upgrade_failed":
        assert outcome["stage"] == "pause"
        server.proc.send_signal(signal.SIGUSR2)
    upgraded(server)


# A store that does not answer, and how long for: a moment (the pause waits for it), or
# past the pause's grace. Then the old image goes on, for a new one could not open the
# store, and what it could not commit is not carried: it upgrades once the store is back.
STORES = ["redis", "sqlite"]
HOLDS = ["for a moment", "past the pause"]


@pytest.mark.parametrize("hold", HOLDS)
@pytest.mark.parametrize("store", STORES)
async def test_a_command_waiting_on_the_store_across_an_upgrade_runs_once(
    tmp_path: Path, request: pytest.FixtureRequest, store: str, hold: str
) -> None:
    server, stall = stalled(tmp_path, request, store)
    try:
        async with room(server) as clients:
            release = stall()
            try:
                await say_held(clients[0])
                server.proc.send_signal(signal.SIGUSR2)
                if hold == "for a moment":
                    server.wait_event("upgrade_paused")
                    await asyncio.sleep(0.1)
                else:
                    failed = server.wait_event("upgrade_failed")
                    assert failed["stage"] == "pause"
                    assert "store" in str(failed["error"])
            finally:
                release()
            if hold == "for a moment":
                upgraded_once_the_store_is_back(server)
            await check_everything_once(server, clients)
            if hold == "past the pause":
                server.proc.send_signal(signal.SIGUSR2)
                upgraded(server)
                await clients[1].send("still here")
                for client in clients:
                    assert await room_lines(client, "#ops:bob> still here") == ["#ops:bob> still here"]
    finally:
        server.kill()


def stalled(tmp_path: Path, request: pytest.FixtureRequest, store: str) -> tuple[ServerProcess, Stall]:
    """A server on `store`, and how to stall that store (which returns how to end the stall)."""
    tree = copied_tree(tmp_path)
    if store == "sqlite":
        server = start(tree, "--store=sqlite:///telchat.db", "--flood-rate=0")
        return server, lambda: sqlite_locked(server)
    redis: RedisServer = request.getfixturevalue("redis")
    # The default --node-ttl: a command waits on Redis for up to 5 s, well past the pause.
    server = start(tree, f"--store={redis.url}", "--flood-rate=0")
    return server, lambda: redis_stopped(redis)


Stall = Callable[[], Callable[[], None]]


def redis_stopped(redis: RedisServer) -> Callable[[], None]:
    proc = redis.proc
    assert proc is not None
    proc.send_signal(signal.SIGSTOP)
    return lambda: proc.send_signal(signal.SIGCONT)


def sqlite_locked(server: ServerProcess) -> Callable[[], None]:
    """Another process's write lock on the server's SQLite file: every commit fails until it goes."""
    db = sqlite3.connect(Path(server.home) / "telchat.db", isolation_level=None)
    db.execute("BEGIN IMMEDIATE")

    def release() -> None:
        db.rollback()
        db.close()

    return release


async def test_a_command_running_on_a_locked_sqlite_keeps_everyone_on_the_old_image(tmp_path: Path) -> None:
    """A command past its wait, writing to the store (a record, which waits for SQLite's
    lock on a thread): written down mid-run, it would be lost; the old image goes on."""
    server = start(copied_tree(tmp_path), "--store=sqlite:///telchat.db", "--flood-rate=0")
    try:
        async with room(server) as clients:
            ann, bob = clients[:2]
            release = sqlite_locked(server)
            try:
                await ann.send("register s3cret-pw")
                await asyncio.sleep(0.2)
                server.proc.send_signal(signal.SIGUSR2)
                server.wait_event("upgrade_paused")
                # Held with everyone's input during the pause, it runs once the old image goes on.
                await bob.send("said during the pause")
                failed = server.wait_event("upgrade_failed")
                assert failed["stage"] == "pause"
                assert "still run a line" in str(failed["error"])
            finally:
                release()
            # bob's line runs once the old image goes on, ann's registration once the lock is
            # let go: either may reach ann first.
            held = "#ops:bob> said during the pause"
            seen = await ann.read_until(REGISTERED)
            if held not in seen:
                seen += await room_lines(ann, held)
            assert seen.count(held) == 1
            for client in clients[1:]:
                assert await room_lines(client, held) == [held]
            await ann.send("after")
            assert await ann.read_until("#ops:ann> after") == ["#ops:ann> after"]
            server.proc.send_signal(signal.SIGUSR2)
            upgraded(server)
            newcomer = await RawClient.connect(server.port)
            await newcomer.send("login ann")
            assert (await newcomer.read_line()).startswith("*** Password for ann ")
            await newcomer.close()
            assert not [event for event in server.events if event["event"] == "disconnect"]
    finally:
        server.kill()


async def test_a_new_image_waits_for_a_locked_sqlite_instead_of_dropping_everyone(tmp_path: Path) -> None:
    """Another process takes SQLite's write lock after the pause found the store well, and
    holds it past the new image's wait for it (5 s): the new image tries again, and its
    users wait for it, paused, rather than all being dropped."""
    server = start(copied_tree(tmp_path), "--store=sqlite:///telchat.db", "--flood-rate=0")
    try:
        async with room(server) as clients:
            release = sqlite_locked(server)
            try:
                server.proc.send_signal(signal.SIGUSR2)
                waited = server.wait_event("store_unavailable", timeout=15)
                assert "locked" in str(waited["error"])
            finally:
                release()
            server.wait_event("upgrade", timeout=15)
            await clients[0].send("after")
            for client in clients:
                assert await room_lines(client, "#ops:ann> after") == ["#ops:ann> after"]
            assert not [event for event in server.events if event["event"] in ("disconnect", "start_failed")]
    finally:
        server.kill()


async def test_input_held_by_the_pause_keeps_its_place_before_input_sent_after_the_exec(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """bob's "two" reaches the old image while its input is held, so it is carried over
    unprocessed; his "three", sent once the old image has written its state, waits in the
    kernel for the new one, ready on the socket before the connection's state is taken up
    (uvloop reads it before the next loop turn). "two" must still run first."""
    server, stall = stalled(tmp_path, request, "redis")
    try:
        async with room(server) as clients:
            ann, bob = clients[:2]
            release = stall()
            try:
                await ann.send("one")  # waits on the store: so does the pause
                server.proc.send_signal(signal.SIGUSR2)
                server.wait_event("upgrade_paused")
                await bob.send("two")
                await asyncio.sleep(0.1)
            finally:
                release()
            server.wait_event("upgrade_exec")
            await bob.send("three")
            upgraded(server)
            seen = ["#ops:ann> one", "#ops:bob> two", "#ops:bob> three"]
            for client in clients:
                assert await room_lines(client, seen[-1]) == seen
            assert not [e for e in server.events if e["event"] == "disconnect" or "exception" in e]
    finally:
        server.kill()
