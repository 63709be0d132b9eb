"""TIMING-MARK pings: silent telnet peers that answer stay, dead ones go; raw TCP is not pinged."""

from __future__ import annotations

import asyncio

import pytest
from telnetlib3.telopt import TM

from tests.clients import DO, IAC, TelnetClient, TermClient
from tests.clients import TM as TM_OPT
from tests.conftest import Connect, with_config

FAST = with_config(idle_ping=0.2, idle_timeout=0.3)


@pytest.mark.parametrize("config", [FAST])
async def test_lurker_who_answers_pings_is_never_kicked(port: int, connect: Connect) -> None:
    lurker = await TelnetClient.connect(port)
    pings: list[bytes] = []
    lurker.writer.set_iac_callback(TM, pings.append)
    try:
        await asyncio.sleep(1.5)
        assert len(pings) >= 3
        await lurker.send("who")
        await lurker.expect("*** Users online: nobody logged in (+1 anonymous)")
    finally:
        await lurker.close()


@pytest.mark.parametrize("config", [FAST])
async def test_terminal_that_answers_with_wont_also_stays(port: int) -> None:
    term = await TermClient.connect(port)
    try:
        # Keep reading, as a terminal program does: that is when it answers.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while loop.time() < deadline:
            await term._fill(0.05)
        assert (DO, TM_OPT) in term.commands
        await term.send("who")
        assert (await term.read_line()).endswith("*** Users online: nobody logged in (+1 anonymous)")
    finally:
        await term.close()


@pytest.mark.parametrize("config", [FAST])
async def test_peer_that_stops_answering_is_dropped(port: int, connect: Connect) -> None:
    watcher = await connect()
    await watcher.login("watcher")
    await watcher.join("one", "watcher")
    ghost = await TelnetClient.connect(port)
    await ghost.login("ghost")
    await ghost.join("one", "ghost")
    await watcher.read_until("*** User ghost joined")
    # Stop reading: the client's telnet layer no longer sees (or answers) anything.
    ghost.writer.transport.pause_reading()
    assert await watcher.read_line(timeout=3) == "*** User ghost quit (ping timeout)"
    ghost.writer.close()


@pytest.mark.parametrize("config", [FAST])
async def test_raw_client_is_not_pinged(port: int) -> None:
    # Raw as nc is: it never answers negotiation, so it can never answer a ping either.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await asyncio.sleep(0.8)
        writer.write(b"who\r\n")
        said = await asyncio.wait_for(reader.readuntil(b"*** Users online: nobody logged in (+1 anonymous)\r\n"), 3)
        assert bytes([IAC, DO, TM_OPT]) not in said
    finally:
        writer.close()
