"""Issue 15's storm on Redis: N users on one of two nodes, that node SIGKILLed, and every user
reconnecting to the other with the same nick (retrying every 0.5 s while it is taken) and
joining its room again. Reports how long until all are back, when the survivor proved the
dead node dead, and the survivor's CPU for the storm. Needs redis-server.

    PYTHONPATH=. python scripts/bench_redis_storm.py --users 5000     # about a minute

Default options (`--node-ttl` 15 s): the dead node's liveness key outlives the storm, so the
figure is how fast a node with no Redis connection is proven dead and its nicks taken over.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import time
from datetime import datetime
from pathlib import Path

from tests.clients import RawClient
from tests.procs import ServerProcess
from tests.redis_server import RedisServer

ROOMS = 50
CONCURRENCY = 200
GIVE_UP = 60.0


async def arrive(port: int, nick: str, room: str, gate: asyncio.Semaphore, deadline: float) -> RawClient:
    async with gate:
        client = await RawClient.connect(port, greet=False)
        await client.read_until("*** Welcome", timeout=30)
    while True:
        await client.send(f"login {nick}")
        lines = await client.read_until("*** ", timeout=30)
        while "nick" in lines[-1] and not lines[-1].endswith((f"> {nick}", f"Nick {nick} is already taken")):
            lines = await client.read_until("*** ", timeout=30)  # another user's login
        if lines[-1].endswith(f"> {nick}"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{nick} still refused: {lines[-1]}")
        await asyncio.sleep(0.5)
    await client.join(room, nick)
    return client


async def crowd(port: int, users: int, deadline: float) -> list[RawClient]:
    gate = asyncio.Semaphore(CONCURRENCY)
    return list(await asyncio.gather(*(arrive(port, f"u{i}", f"r{i % ROOMS}", gate, deadline) for i in range(users))))


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(users: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as home:
        redis = RedisServer(Path(home), persist=False)
        nodes = [ServerProcess(f"--store={redis.url}", "--flood-rate=0") for _ in range(2)]
        opened: list[RawClient] = []
        try:
            started = time.monotonic()
            opened += await crowd(nodes[0].port, users, started + GIVE_UP)
            setup = time.monotonic() - started
            survivor = cpu_seconds(nodes[1].proc.pid)
            nodes[0].proc.send_signal(signal.SIGKILL)
            killed, killed_at = time.monotonic(), time.time()
            opened += await crowd(nodes[1].port, users, killed + GIVE_UP)
            back = time.monotonic() - killed
            survivor = cpu_seconds(nodes[1].proc.pid) - survivor
            # When the survivor proved the dead node dead: its users' nicks were free from then.
            proven = nodes[1].wait_event("redis_node_dead", timeout=1)["timestamp"]
        finally:
            for client in opened:
                await client.close()
            for node in nodes:
                node.kill()
            redis.stop()
    return {
        "users": users,
        "first_logins_s": round(setup, 2),
        "all_back_after_kill_s": round(back, 2),
        "dead_proven_after_kill_s": round(datetime.fromisoformat(proven).timestamp() - killed_at, 2),
        "survivor_cpu_s": round(survivor, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5000)
    print(json.dumps(asyncio.run(run(parser.parse_args().users))))


if __name__ == "__main__":
    main()
