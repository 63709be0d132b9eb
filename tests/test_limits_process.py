"""A real server process under abuse: every limit is a JSON `limit` event, and SIGTERM under
load still says goodbye and exits cleanly in time."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

from telchat.rules.flood import PASTE_LINES
from tests.attack import Attacker
from tests.clients import IAC, SB, RawClient
from tests.procs import ServerProcess


async def test_every_limit_is_a_logged_event_with_its_kind() -> None:
    server = ServerProcess(
        "--limit-loopback=yes",
        "--max-conns-per-ip=3",
        "--flood-burst=2",
        "--flood-rate=50",
        "--max-subneg-bytes=64",
        "--max-unterminated-bytes=4096",
    )
    try:
        bob = await RawClient.connect(server.port)
        await bob.login("bob")
        await bob.send("x" * 2000)
        await bob.read_until("*** Line too long")
        await bob.send_bytes(b"who\r\n" * (PASTE_LINES + 5))  # a paste: past its first lines
        await bob.read_until("*** You are sending faster")
        eve = Attacker.joined(server.port, "eve")
        await eve.read_until(b"*** User eve joined room #room\r\n")
        assert (await eve.send_and_read_all(bytes([IAC, SB, 24]) + b"x" * 1000)).endswith(
            b"*** Telnet subnegotiation over 64 bytes; disconnecting.\r\n"
        )
        mallory = Attacker(server.port)
        assert b"without a newline" in await mallory.send_and_read_all(b"y" * 5000)
        extra = [Attacker(server.port) for _ in range(3)]
        refused = await extra[-1].send_and_read_all(b"")
        assert refused == b"*** Too many connections from your address (limit 3). Please close one first.\r\n"
        for attacker in extra:
            await attacker.reset()
        await bob.close()
        assert server.stop() == 0
    finally:
        server.kill()
    limits = {e["kind"]: e for e in server.events if e["event"] == "limit"}
    assert set(limits) >= {"line_length", "flood", "subnegotiation", "unterminated_input", "conns_per_ip"}
    for event in limits.values():
        assert {"conn_id", "peer", "kind", "level", "timestamp"} <= event.keys(), event
        assert event["peer"].startswith("127.0.0.1:")
    reasons = {e["reason"] for e in server.events if e["event"] == "disconnect"}
    assert {"subnegotiation", "readq"} <= reasons


async def test_sigterm_under_load_says_goodbye_and_exits_in_time() -> None:
    server = ServerProcess("--flood-burst=5", "--flood-rate=2", "--sendq-bytes=65536")
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        talkers = [await RawClient.connect(server.port) for _ in range(6)]
        for i, client in enumerate(talkers):
            await client.login(f"t{i}")
            await client.join("busy", f"t{i}")
        flooders = [Attacker.joined(server.port, f"f{i}", "busy") for i in range(2)]
        for flooder in flooders:
            flooder.flood(b"spam\r\n" * 100_000)
        sloth = Attacker.joined(server.port, "sloth", "busy", rcvbuf=4096)

        async def talk(client: RawClient, n: int) -> None:
            while not stop.is_set():
                await client.send(f"chat from {n} " + "z" * 200)
                await asyncio.sleep(0.6)

        async def vanish() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
                    writer.close()
                await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(talk(c, n)) for n, c in enumerate(talkers)]
        tasks += [asyncio.create_task(vanish()) for _ in range(3)]
        await asyncio.sleep(2.0)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in talkers:
            rest = await client.wait_closed(timeout=8)
            assert b"*** have a nice day ***\r\n" in client.buffer + rest
        code = await asyncio.to_thread(server.proc.wait, 8)
        assert code == 0
        assert time.monotonic() - started < 8
        for attacker in (*flooders, sloth):
            await attacker.reset()
        server.stop()
    finally:
        stop.set()
        server.kill()
    shutdown = [e for e in server.events if e["event"] == "shutdown"]
    assert shutdown and shutdown[0]["sessions"] == 0
    assert not [e for e in server.events if e["level"] == "error"]
