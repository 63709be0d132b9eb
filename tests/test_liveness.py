"""TIMING-MARK pings: silent telnet peers that answer stay, dead ones go; raw TCP is not pinged."""

from __future__ import annotations

import asyncio

import pytest
from telnetlib3.telopt import TM

from tests.clients import DO, IAC, LineClient, OptionClient, TelnetClient, TermClient
from tests.clients import TM as TM_OPT
from tests.conftest import Connect, with_config

NOP = 241
FAST = with_config(idle_ping=0.2, idle_timeout=0.3)


async def still_connected(client: LineClient) -> None:
    await client.send("who")
    # endswith: a terminal in character mode gets its typing echoed before the answer.
    assert (await client.read_line()).endswith("*** Users online: nobody logged in (+1 anonymous)")


async def stays_while_idle(client: OptionClient, seconds: float) -> None:
    """Idle for `seconds`, reading as a terminal program does (that is when it answers),
    then still connected; closed after."""
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            await client._fill(0.05)
        await still_connected(client)
    finally:
        await client.close()


@pytest.mark.parametrize("config", [FAST])
async def test_lurker_who_answers_pings_is_never_kicked(port: int, connect: Connect) -> None:
    lurker = await TelnetClient.connect(port)
    pings: list[bytes] = []
    lurker.writer.set_iac_callback(TM, pings.append)
    try:
        await asyncio.sleep(1.5)
        assert len(pings) >= 3
        await still_connected(lurker)
    finally:
        await lurker.close()


@pytest.mark.parametrize("config", [FAST])
async def test_pings_go_on_for_the_others_when_one_peer_leaves(port: int) -> None:
    # Every watchdog shares one timer (telnet/liveness.py): one stopping must not stop the rest.
    leaving = await TelnetClient.connect(port)
    staying = await TelnetClient.connect(port)
    pings: list[bytes] = []
    staying.writer.set_iac_callback(TM, pings.append)
    try:
        await asyncio.sleep(0.5)
        await leaving.close()
        await asyncio.sleep(0.3)
        before = len(pings)
        await asyncio.sleep(1.0)
        assert len(pings) >= before + 2
        await still_connected(staying)
    finally:
        await staying.close()


@pytest.mark.parametrize("config", [FAST])
async def test_terminal_that_answers_with_wont_also_stays(port: int) -> None:
    term = await TermClient.connect(port)
    await stays_while_idle(term, 1.0)
    assert (DO, TM_OPT) in term.commands


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


class TinTinLike(OptionClient):
    """Answers the first DO TIMING-MARK with WONT and ignores every later one, as TinTin++ does."""

    TERMINAL = b"TINTIN++"
    ACCEPT_DO = OptionClient.ACCEPT_DO - {TM_OPT}
    tm_seen = 0
    nops = 0

    def _refuse(self, cmd: int, opt: int) -> None:
        if cmd == DO and opt == TM_OPT:
            self.tm_seen += 1
            if self.tm_seen > 1:
                return
        super()._refuse(cmd, opt)


class Unanswering(OptionClient):
    """Negotiates, then never answers a TIMING-MARK (but reads everything)."""

    def _refuse(self, cmd: int, opt: int) -> None:
        if not (cmd == DO and opt == TM_OPT):
            super()._refuse(cmd, opt)


@pytest.mark.parametrize("config", [FAST])
async def test_client_that_ignores_all_but_the_first_ping_stays(port: int) -> None:
    tina = await TinTinLike.connect(port)
    await stays_while_idle(tina, 3 * (0.2 + 0.3))  # 3 x (idle-ping + idle-timeout)
    assert tina.tm_seen == 2, "after an ignored ping, no more pings"
    assert sum(cmd == NOP for cmd, _ in tina.commands) >= 2, "NOPs instead, for TCP to judge"


@pytest.mark.parametrize("config", [FAST])
async def test_client_that_never_answers_a_ping_is_told_why_it_is_dropped(port: int) -> None:
    mute = await Unanswering.connect(port)
    try:
        closing = await mute.wait_closed(timeout=3)
        assert b"*** Your client did not answer the server's ping within 0.3 s; disconnecting.\r\n" in closing
    finally:
        await mute.close()


@pytest.mark.parametrize("config", [with_config(idle_ping=1.0, idle_timeout=1.0)])
async def test_a_user_who_types_is_not_pinged(port: int, connect: Connect) -> None:
    """Lines count as activity: a telnet client typing more often than --idle-ping is
    never asked to prove it is there (a second: slack for a busy machine)."""
    typist = await connect()  # answers every DO with WONT: a telnet client the server pings
    try:
        await typist.login("typist")
        for _ in range(25):
            await typist.send("who")
            await typist.read_until("*** Users online")
            await asyncio.sleep(0.1)
        assert (DO, TM_OPT) not in typist.commands
    finally:
        await typist.close()
