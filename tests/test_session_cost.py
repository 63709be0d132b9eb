"""What one connection costs the server, bounded: memory a held session keeps, the writes
its negotiation takes, and a raw client not kept waiting for answers it will never send.
Costs, not times: speed targets are in scripts/bench.py (scenario e)."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clients import TelnetClient
from tests.conftest import running, with_config

ROOT = Path(__file__).resolve().parent.parent
GREETING = "*** Welcome to telchat. Type help for commands."
# Bytes of Python allocations one held session keeps in the server (logged in, in a room),
# measured with tracemalloc: 8.3 KiB now; 9.3 KiB before negotiation's futures and timer
# went once it was over (`ChatTelnetServer.settle`) and `compact` dropped the writer's empty
# handler tables and waiter lists; 11.1 KiB before an idle session's reading task
# ended until its next input (`ChunkReader.park`); 11.5 KiB before that task lost two of
# its five coroutine frames (the shell adapter and telnetlib3's wait for data); 15.8 KB
# before the watchdogs shared one timer, telnetlib3's option tables lost their attribute
# dicts (`LeanOption`), the protocol's own handlers were looked up instead of bound per
# connection, its writer and terminal heard it through `WriterEvents` and `TerminalHooks`,
# and the protocol's and writer's attribute dicts were kept at 21 entries or fewer; and
# 25.7 KB before telnetlib3's unused per-connection containers (empty sets and deques),
# asyncio's drain-waiter deque, the read gate's Event and the Terminal's closures were cut,
# and telnetlib3's objects compacted after negotiation.
SESSION_BYTES = 9 * 1024
# The server's writes to telnetlib3's client before its greeting: DO TTYPE, the TTYPE
# request, the advanced negotiation's offers, the answers to the client's answers, the
# NEW-ENVIRON request: 5, where each command was its own write before (14).
NEGOTIATION_WRITES = 5
# At most this many objects of each kind per held session (kinds by type name).
HELD_OBJECTS = {"TimerHandle": 0.1, "method": 9.0, "Option": 0.1, "set": 1.5, "coroutine": 0.1, "Task": 0.1}


async def test_a_held_session_keeps_few_bytes() -> None:
    count = 200
    async with running(with_config(store="memory://")) as app:
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            objects_before = object_types()
            clients = await asyncio.create_subprocess_exec(
                sys.executable,
                str(ROOT / "tests" / "held_clients.py"),
                str(app.port),
                str(count),
                "20",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert clients.stdout is not None and clients.stdin is not None
            ready = await asyncio.wait_for(clients.stdout.readline(), 60)
            assert ready.split() == [b"ready", str(count).encode(), b"0"]
            await asyncio.sleep(0.2)  # the last join notices are flushed
            gc.collect()
            after = tracemalloc.take_snapshot()
            objects = object_types() - objects_before
        finally:
            tracemalloc.stop()
        kept = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        assert len(app.sessions) == count
        clients.stdin.close()
        await clients.wait()
    assert kept / count <= SESSION_BYTES, f"{kept / count:.0f} bytes per session"
    # Objects each session holds for its lifetime, of the kinds that once came per session:
    # the liveness watchdog's timer (they share one, telnet/liveness.py) and its callbacks,
    # telnetlib3's option tables (`LeanOption` in telnet/internals.py), the read gate's set of holds,
    # and the reading task (an idle session's has ended; it held 3 frames, and 5 before its
    # shell adapter and telnetlib3's wait were cut).
    per_session = {kind: objects[kind] / count for kind in HELD_OBJECTS}
    assert all(per_session[kind] <= HELD_OBJECTS[kind] for kind in HELD_OBJECTS), per_session


def object_types() -> Counter[str]:
    # asyncio keeps a cancelled timer (telnetlib3's negotiation timeout) until it is due;
    # it holds nothing of the session's by then.
    live = (o for o in gc.get_objects() if not (isinstance(o, asyncio.Handle) and o.cancelled()))
    return Counter(type(o).__name__ for o in live)


@pytest.fixture
def server_writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, bytes]]]:
    """Every transport write, with the local port it was written from."""
    from asyncio import selector_events

    writes: list[tuple[int, bytes]] = []
    cls: Any = selector_events._SelectorSocketTransport
    write = cls.write

    def counted(self: Any, data: bytes) -> None:
        writes.append((self.get_extra_info("sockname")[1], bytes(data)))
        write(self, data)

    monkeypatch.setattr(cls, "write", counted)
    yield writes


async def test_negotiation_is_few_writes(server_writes: list[tuple[int, bytes]]) -> None:
    async with running(with_config(store="memory://")) as app:
        client = await TelnetClient.connect(app.port)  # waits for the greeting
        mine = [data for port, data in server_writes if port == app.port]
        greeting = next(i for i, data in enumerate(mine) if GREETING.encode() in data)
        await client.close()
    assert 0 < greeting <= NEGOTIATION_WRITES, mine[:greeting]
    assert all(data.startswith(b"\xff") for data in mine[:greeting])


async def test_a_raw_client_is_served_on_its_first_line() -> None:
    # Waiting for telnet answers would take --connect-maxwait (an hour here): the client
    # never answers DO TTYPE, and its first line ends the negotiation instead.
    async with running(with_config(store="memory://", connect_maxwait=3600.0)) as app:
        loop = asyncio.get_running_loop()
        sock = socket.create_connection(("127.0.0.1", app.port))
        sock.setblocking(False)
        try:
            await loop.sock_sendall(sock, b"login nc\r\n")
            received = b""
            async with asyncio.timeout(5):
                while b"anonymous --> nc" not in received:
                    chunk = await loop.sock_recv(sock, 4096)
                    assert chunk, received
                    received += chunk
        finally:
            sock.close()
    assert received.removeprefix(b"\xff\xfd\x18").startswith(GREETING.encode()), received  # after DO TTYPE
