"""Issue 13, finding 15's CPU: a join/leave flood must not build every GMCP member's player
list on every change. Real server, real sockets; the room manager's list builder is counted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from telchat.chat import rooms
from telchat.chat.observers import Players
from telchat.clients.gmcp import PLAYERS_INTERVAL
from tests.clients import MudClient
from tests.conftest import Connect, user

MEMBERS = 12
PAIRS = 30


async def test_a_join_leave_flood_builds_each_members_list_once_a_second(
    port: int, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = [await MudClient.connect(port) for _ in range(MEMBERS)]
    try:
        for i, member in enumerate(members):
            await member.login(f"mud{i}")
            await member.join("big", f"mud{i}")
        flooder = await user(connect, "flooder")
        for member in members:
            await member.gmcp_message("Comm.Channel.Players")
        built = 0
        players_of: Callable[[rooms.User], Players] = rooms.players_of

        def counted(member: rooms.User) -> Players:
            nonlocal built
            built += 1
            return players_of(member)

        monkeypatch.setattr(rooms, "players_of", counted)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await flooder.send_bytes(b"join big\r\nleft big\r\n" * PAIRS + b"join big\r\n")
        await flooder.read_until("*** User flooder joined room #big")
        # Every member's last list names everyone, the flooder included.
        for member in members:
            while len(await member.gmcp_message("Comm.Channel.Players")) != MEMBERS + 1:
                pass
        elapsed = loop.time() - started
        # 61 changes used to build 61 lists for each member; now one a second (and one at once).
        assert built <= MEMBERS * (2 + elapsed / PLAYERS_INTERVAL), built
    finally:
        for member in members:
            await member.close()
