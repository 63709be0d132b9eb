"""Nick announcements in a login storm (issue 15): who hears them, and what they cost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from telchat.chat.outbox import Outbox
from telchat.chat.rooms import ANNOUNCE_ALL_UP_TO
from telchat.config import Config
from tests.clients import RawClient
from tests.conftest import running, with_config


async def crowd(port: int, count: int) -> list[RawClient]:
    return list(await asyncio.gather(*(RawClient.connect(port) for _ in range(count))))


async def close_all(clients: list[RawClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients))


async def heard_login(config: Config, online: int) -> bool:
    """Whether a user sharing no room with a newcomer hears its login, `online` connected."""
    async with running(config) as app:
        others = await crowd(app.port, online - 2)
        watcher, newcomer = await RawClient.connect(app.port), await RawClient.connect(app.port)
        try:
            await newcomer.login("newcomer")
            await watcher.send("rooms")  # its answer comes after any announcement
            lines = await watcher.read_until("*** ")
            return "*** User change nick anonymous --> newcomer" in lines
        finally:
            await close_all([*others, watcher, newcomer])


async def test_auto_announces_to_everyone_on_a_small_server() -> None:
    assert await heard_login(with_config(announce_nicks="auto"), ANNOUNCE_ALL_UP_TO)


async def test_auto_announces_to_rooms_past_the_threshold() -> None:
    assert not await heard_login(with_config(announce_nicks="auto"), ANNOUNCE_ALL_UP_TO + 1)
    assert await heard_login(with_config(announce_nicks="all"), ANNOUNCE_ALL_UP_TO + 1)


def count_calls(monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...]) -> list[int]:
    """Count calls of Outbox methods (each still runs): how much per-recipient work is done."""
    counter = [0]
    for name in names:
        original = getattr(Outbox, name)

        def counted(self: Outbox, *args: Any, _original: Callable[..., Any] = original) -> Any:
            counter[0] += 1
            return _original(self, *args)

        monkeypatch.setattr(Outbox, name, counted)
    return counter


@pytest.mark.parametrize("store", ["memory://", "sqlite"])
async def test_a_login_storm_costs_per_user_not_per_user_squared(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, store: str
) -> None:
    online, arriving = 80, 40
    url = store if store == "memory://" else f"sqlite:///{tmp_path / 'chat.db'}"
    async with running(with_config(announce_nicks="all", store=url)) as app:
        clients = await crowd(app.port, online)
        calls = count_calls(monkeypatch, ("push", "share"))
        storm = clients[:arriving]
        for i, client in enumerate(storm):
            client.writer.write(f"login storm{i}\r\n".encode())  # all at once, not one by one
        await asyncio.gather(
            *(c.read_until(f"*** User change nick anonymous --> storm{i}") for i, c in enumerate(storm))
        )
        for client in clients[arriving:]:
            await client.read_until(f"*** User change nick anonymous --> storm{arriving - 1}")
        # One push per recipient per announcement would be online * arriving (3 200).
        assert calls[0] < online * arriving / 4
        await close_all(clients)
