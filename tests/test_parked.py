"""An idle session holds no reading task: its task ends when nothing is left to read
(`ChunkReader.park`), and the next thing that would have woken it starts another. What
that must keep: input handled in order, the end of a connection however it ends, and the
log context of the session."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest

import telchat.session.commands
from telchat.app import App
from telchat.obs.logs import get_logger
from tests.clients import unread
from tests.conftest import Connect, user, with_config
from tests.test_logs import Stream, stream

__all__ = ["stream"]  # a fixture, used by name

READING = ("App._run_session", "App._read")


def reading_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "") in READING]


async def parked(app: App, sessions: int) -> None:
    """Until `sessions` are running and none of them has a reading task."""
    for _ in range(100):
        if len(app.sessions) == sessions and not reading_tasks():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{len(app.sessions)} sessions, reading tasks: {reading_tasks()}")


async def test_an_idle_session_holds_no_task_and_wakes_for_commands(connect: Connect, app: App) -> None:
    bob = await user(connect, "bob", "room")
    eve = await user(connect, "eve", "room")
    await bob.drain()
    await parked(app, 2)
    # A command waits on the store: the task it needs is started, and ends again.
    await eve.send("join other")
    await eve.expect("*** #other history")
    await eve.send("who")
    assert any("eve" in line for line in await eve.drain())
    await parked(app, 2)
    await eve.send("join room")
    await eve.send("hello again")
    await bob.expect("#room:eve> hello again")


def rst(client: Any) -> None:
    """Vanish with a RST, not a FIN: the server's reader then gets an error, not EOF."""
    sock: socket.socket = client.writer.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()


@pytest.mark.parametrize("ending", ["eof", "reset"])
async def test_a_parked_session_ends_with_its_connection(connect: Connect, app: App, ending: str) -> None:
    bob = await user(connect, "bob", "room")
    eve = await user(connect, "eve", "room")
    await bob.drain()
    await parked(app, 2)
    if ending == "eof":
        await eve.close()
    else:
        rst(eve)
    await bob.expect("*** User eve quit (connection closed)")
    await parked(app, 1)
    assert app.telemetry.counters.value("disconnects", reason="eof" if ending == "eof" else "error") == 1


async def test_a_woken_session_logs_in_its_own_context(
    connect: Connect, app: App, stream: Stream, monkeypatch: pytest.MonkeyPatch
) -> None:
    execute = telchat.session.commands.execute

    async def logging_execute(ctx: Any, decision: Any) -> None:
        # As a feature's event that names no one (a store error, a rekeyed record) does.
        get_logger("telchat.test").info("probe")
        await execute(ctx, decision)

    monkeypatch.setattr(telchat.session.commands, "execute", logging_execute)
    bob = await user(connect, "bob", "room")
    await bob.drain()
    await parked(app, 1)
    (session,) = app.sessions
    await bob.send("who")
    await bob.drain()
    probes = [record for record in stream.records() if record["event"] == "probe"]
    assert probes[-1]["nick"] == "bob" and probes[-1]["conn_id"] == session.user.conn_id, probes


@pytest.mark.parametrize("config", [with_config(max_sndbuf=8192)])
async def test_a_parked_session_whose_client_takes_nothing_ends_at_shutdown(
    connect: Connect, port: int, app: App
) -> None:
    # Its goodbye never leaves: the close that would end its connection waits on output the
    # client does not take, and a parked session has no reading task for the exit to cancel.
    sloth = unread(port, b"login sloth\r\njoin room\r\n")
    talker = await user(connect, "talker", "room")
    for number in range(60):  # some 55 KB: within the sendq, far past what the kernel holds for it
        await talker.send(f"{number} {'p' * 900}")
    await talker.read_until("#room:talker> 59 ")
    await parked(app, 2)
    await app.stop()
    assert not app.sessions
    assert app.telemetry.counters.value("disconnects", reason="shutdown") == 2
    sloth.close()
