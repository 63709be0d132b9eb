"""Run as a process: N of the benchmark's clients (they refuse every telnet option) connect,
log in and join a room, say `ready`, and hold their sessions until stdin closes.

A process of its own, so that what a test measures in the server's process is the
server's alone (tests/test_session_cost.py)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from bench_load import Dial, Member, Recorder, connect_all


async def main(port: int, count: int, room_size: int) -> None:
    rec = Recorder()
    members = [Member(f"u{i}", f"r{i // room_size}") for i in range(count)]
    clients, errors = await connect_all(rec, members, Dial(("127.0.0.1", port), concurrency=50))
    print("ready", len(clients), len(errors), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    rec.close_all()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
