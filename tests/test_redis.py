"""Two telchat processes sharing a real redis-server act as one chat."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients import RawClient
from tests.procs import ServerProcess, run_server
from tests.redis_server import RedisServer, free_port, login


@pytest.fixture
def nodes(redis: RedisServer) -> Iterator[list[ServerProcess]]:
    procs = [ServerProcess(f"--store={redis.url}", "--node-ttl=1", "--flood-rate=0") for _ in range(2)]
    yield procs
    for proc in procs:
        proc.kill()


async def test_same_order_on_both_nodes(nodes: list[ServerProcess], clients: list[RawClient]) -> None:
    a = await login(clients, nodes[0], "a", "r")
    b = await login(clients, nodes[1], "b", "r")
    await asyncio.sleep(0.2)
    await a.drain()
    for i in range(50):
        await a.send(f"a{i}")
        await b.send(f"b{i}")
    seen = []
    for client in (a, b):
        lines = await client.read_until("#r:", timeout=5)
        while sum(1 for line in lines if line.startswith("#r:")) < 100:
            lines.append(await client.read_line(timeout=5))
        seen.append([line for line in lines if line.startswith("#r:")])
    assert seen[0] == seen[1]
    assert sorted(seen[0]) == sorted([f"#r:a> a{i}" for i in range(50)] + [f"#r:b> b{i}" for i in range(50)])


async def test_shared_history_and_presence(nodes: list[ServerProcess], clients: list[RawClient]) -> None:
    a = await login(clients, nodes[0], "alice", "Lobby")
    for i in range(3):
        await a.send(f"hello {i}")
    await a.read_until("#Lobby:alice> hello 2")
    b = await login(clients, nodes[1], "bob")
    await b.send("join lobby")
    lines = await b.read_until("*** User bob joined")
    # The room keeps its first spelling on every node.
    assert lines == [
        "*** #Lobby history",
        *(f"#Lobby:alice> hello {i}" for i in range(3)),
        "*** User bob joined room #Lobby",
    ]
    assert (await a.read_until("*** User bob joined"))[-1] == "*** User bob joined room #Lobby"
    await asyncio.sleep(0.2)
    await b.send("who")
    assert (await b.read_until("*** Users in"))[-1] == "*** Users in #Lobby: alice, bob"
    await a.send("/rooms")
    assert (await a.read_until("*** Rooms"))[-1] == "*** Rooms: #Lobby (2)"
    await b.send("/leave")
    await b.read_until("*** User bob left")
    await b.send("who")
    assert (await b.read_until("*** Users online"))[-1] == "*** Users online: alice, bob"


async def test_nick_taken_across_nodes(nodes: list[ServerProcess], clients: list[RawClient]) -> None:
    await login(clients, nodes[0], "frank")
    other = await RawClient.connect(nodes[1].port)
    clients.append(other)
    await other.send("login FRANK")
    await other.expect("*** Nick FRANK is already taken")


@pytest.mark.parametrize(("first", "second"), [("alice", "aIice"), ("aIice", "alice")])
async def test_lookalike_nick_taken_across_nodes_either_way_round(
    nodes: list[ServerProcess], clients: list[RawClient], first: str, second: str
) -> None:
    holder = await login(clients, nodes[0], first)
    other = await RawClient.connect(nodes[1].port)
    clients.append(other)
    await other.send(f"login {second}")
    await other.expect(f"*** Nick {second} is already taken")
    # Both of the holder's keys are released with the nick.
    await holder.send("quit")
    await holder.wait_closed()
    line = ""
    for _ in range(50):
        await other.send(f"login {second}")
        line = await other.read_line()
        if line != f"*** Nick {second} is already taken":
            break
        await asyncio.sleep(0.05)
    assert line == f"*** User change nick anonymous --> {second}"
    await other.send("who")
    assert (await other.read_until("*** Users online"))[-1] == f"*** Users online: {second}"


async def test_private_message_across_nodes(nodes: list[ServerProcess], clients: list[RawClient]) -> None:
    a = await login(clients, nodes[0], "alice")
    b = await login(clients, nodes[1], "bob")
    await a.drain()
    await a.send("/msg bob psst")
    await a.expect("-> *bob*> psst")
    assert (await b.read_until("*alice*>"))[-1] == "*alice*> psst"
    await a.send("/msg nobody hi")
    await a.expect("*** No such user: nobody")


async def test_killed_node_users_disappear(nodes: list[ServerProcess], clients: list[RawClient]) -> None:
    a = await login(clients, nodes[0], "alice", "r")
    await login(clients, nodes[1], "doomed", "r")
    await a.read_until("*** User doomed joined")
    nodes[1].proc.send_signal(signal.SIGKILL)
    started = time.monotonic()
    assert (await a.read_until("*** User doomed quit", timeout=30))[-1] == "*** User doomed quit (server lost)"
    # SCALING.md: the node key expires within --node-ttl, and the next janitor pass (every
    # --node-ttl/3) buries the node; the slack covers scheduling and delivery on a busy machine.
    ttl = 1.0
    assert time.monotonic() - started < ttl + ttl / 3 + 2.0
    await a.send("who")
    assert (await a.read_until("*** Users in"))[-1] == "*** Users in #r: alice"
    # The dead node's nick is free again: taken on the surviving node, and listed once.
    again = await RawClient.connect(nodes[0].port)
    clients.append(again)
    await again.send("login doomed")
    assert await again.read_line() == "*** User change nick anonymous --> doomed"
    await a.drain()
    await a.send("/leave")
    await a.read_until("*** User alice left")
    await a.send("who")
    assert (await a.read_until("*** Users online"))[-1] == "*** Users online: alice, doomed"


async def test_redis_restart_loses_and_duplicates_nothing(
    redis: RedisServer, nodes: list[ServerProcess], clients: list[RawClient]
) -> None:
    a = await login(clients, nodes[0], "a", "r")
    b = await login(clients, nodes[1], "b", "r")
    await asyncio.sleep(0.2)
    await a.drain()
    sent: list[str] = []

    async def talk(client: RawClient, nick: str) -> None:
        for i in range(60):
            await client.send(f"{nick}{i}")
            sent.append(f"#r:{nick}> {nick}{i}")
            await asyncio.sleep(0.01)

    talkers = asyncio.gather(talk(a, "a"), talk(b, "b"))
    await asyncio.sleep(0.2)
    await asyncio.to_thread(redis.restart, 0.3)
    await talkers
    seen = []
    for client in (a, b):
        lines: list[str] = []
        while len(lines) < 120:
            line = await client.read_line(timeout=15)
            if line.startswith("#r:"):
                lines.append(line)
        seen.append(lines)
        assert await client.drain(quiet=0.5) == []
    assert seen[0] == seen[1]
    assert sorted(seen[0]) == sorted(sent)


async def test_workers_share_one_port(redis: RedisServer, clients: list[RawClient]) -> None:
    port = free_port()
    proc = ServerProcess(f"--port={port}", "--workers=2", f"--store={redis.url}")
    try:
        first = proc.wait_event("listening")["worker"]
        proc.wait_for(lambda r: r["event"] == "listening" and r["worker"] != first, "second worker listening")
        # Each client is accepted by one worker, whose pid its `connect` event names. The
        # kernel picks the worker: connect until both have accepted some (and at least 8).
        served: set[int] = set()
        while len(clients) < 8 or (len(served) < 2 and len(clients) < 40):
            client = await _connect_retry(port)
            clients.append(client)
            served.add(worker_of(proc, client))
            await client.login(f"u{len(clients) - 1}")
            await client.join("r", f"u{len(clients) - 1}")
        assert served == {int(line.split()[1]) for line in _worker_pids(proc.proc.pid)}
        assert len(served) == 2
        await asyncio.sleep(0.3)
        await clients[0].drain()
        await clients[0].send("who")
        names = sorted((f"u{i}" for i in range(len(clients))), key=str.casefold)
        assert (await clients[0].read_until("*** Users in"))[-1] == "*** Users in #r: " + ", ".join(names)
        await clients[-1].send("hello all")
        last = f"#r:u{len(clients) - 1}>"
        for client in clients:
            assert (await client.read_until(last))[-1] == f"{last} hello all"
        proc.proc.send_signal(signal.SIGTERM)
        for client in clients:
            assert b"*** have a nice day ***" in await client.wait_closed(timeout=8)
        assert await asyncio.to_thread(proc.proc.wait, 10) == 0
    finally:
        proc.end()


def test_workers_end_with_their_parent(redis: RedisServer) -> None:
    """A parent SIGKILLed takes its workers with it: orphans would go on serving the port."""
    proc = ServerProcess(f"--port={free_port()}", "--workers=2", f"--store={redis.url}")
    try:
        first = proc.wait_event("listening")["worker"]
        proc.wait_for(lambda r: r["event"] == "listening" and r["worker"] != first, "second worker listening")
        workers = [int(line.split()[1]) for line in _worker_pids(proc.proc.pid)]
        assert len(workers) == 2
        proc.proc.kill()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(map(_running, workers)):
            time.sleep(0.05)
        assert not any(map(_running, workers)), workers
        assert proc.wait_event("shutdown")  # they said goodbye as on a stop
    finally:
        proc.end()


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's reaper may take its time)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def _connect_retry(port: int) -> RawClient:
    for _ in range(100):
        try:
            return await RawClient.connect(port)
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError("workers did not start")


def worker_of(proc: ServerProcess, client: RawClient) -> int:
    peer = f"127.0.0.1:{client.writer.get_extra_info('sockname')[1]}"
    return int(proc.wait_for(lambda r: r["event"] == "connect" and r["peer"] == peer, peer)["worker"])


def _worker_pids(parent: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "ppid=,pid=", "--ppid", str(parent)], capture_output=True, text=True, check=False)
    return [line for line in out.stdout.splitlines() if line.strip()]


def test_workers_need_redis() -> None:
    result = run_server("--workers=2", "--port=2323", "--store=memory://")
    assert result.returncode == 2
    assert "--workers above 1 needs a redis://" in result.stderr


def test_unreachable_redis_exits_2() -> None:
    result = run_server("--port=0", f"--store=redis://127.0.0.1:{free_port()}/0")
    assert result.returncode == 2
    assert result.stderr.startswith("telchat: cannot reach Redis")


def test_a_start_that_cannot_listen_closes_the_store_quietly(redis: RedisServer, tmp_path: Path) -> None:
    # The store was open when the TLS door failed: closed, not cancelled at exit, so none of
    # its tasks is logged as died (an error an operator would chase).
    missing = tmp_path / "missing.pem"
    result = run_server(
        f"--store={redis.url}", "--port=0", "--tls-port=0", f"--tls-cert={missing}", f"--tls-key={missing}"
    )
    assert result.returncode == 2
    assert "start_failed" in result.stdout and "redis_open" in result.stdout
    assert "redis_task_died" not in result.stdout
