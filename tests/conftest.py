from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from telchat.app import App
from telchat.config import Config
from telchat.obs.logs import configure_logging
from tests.clients import LineClient, RawClient, TelnetClient
from tests.redis_server import RedisServer

# Cheap password hashes keep account tests fast; the cost options are what production tunes.
# No fakelag: scripted clients type faster than people; test_flood.py turns it back on.
TEST_CONFIG = Config(
    host="127.0.0.1",
    port=0,
    connect_maxwait=0.25,
    shutdown_grace=0.5,
    store="memory://",
    argon2_time_cost=1,
    argon2_memory_kib=8,
    flood_rate=0,
)


if os.environ.get("TELCHAT_TEST_LOOP") == "uvloop":
    # In-process tests run on asyncio's loop; TELCHAT_TEST_LOOP=uvloop runs them on uvloop.
    # (Server processes started by tests use --loop auto, so uvloop, which requirements.txt
    # installs.) tests/test_real_clients.py and test_telnet_prompt.py hang there: uvloop's
    # subprocesses leave their output pipes to the tmux server that `new-session` starts.
    def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], object]]:
        import uvloop

        return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session", autouse=True)
def _quiet_logs() -> None:
    # In-process servers log at info (so every log call runs) into the void; log content is
    # checked against real server processes in test_logging.py.
    configure_logging("json", "info", open(os.devnull, "wb"))  # noqa: SIM115


@pytest.fixture(params=["memory", "sqlite"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Config:
    """Every in-process server test runs against both local stores."""
    if request.param == "sqlite":
        return replace(TEST_CONFIG, store=f"sqlite:///{tmp_path / 'telchat.db'}")
    return TEST_CONFIG


@pytest.fixture
async def app(config: Config) -> AsyncIterator[App]:
    server = App(config)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def port(app: App) -> int:
    return app.port


Connect = Callable[..., Awaitable[LineClient]]


@pytest.fixture
async def connect(port: int) -> AsyncIterator[Connect]:
    """Open clients of either kind; all are closed at the end of the test."""
    opened: list[LineClient] = []

    async def _connect(kind: str = "raw", greet: bool = True) -> LineClient:
        cls = RawClient if kind == "raw" else TelnetClient
        client = await cls.connect(port, greet=greet)
        opened.append(client)
        return client

    yield _connect
    for client in opened:
        await client.close()


def with_config(**changes: object) -> Config:
    return replace(TEST_CONFIG, **changes)  # type: ignore[arg-type]


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[App]:
    """An in-process server for the block: for tests that restart one on the same store."""
    server = App(config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def user(connect: Connect, nick: str, room: str | None = None) -> LineClient:
    """A client logged in as `nick`, in `room` if given."""
    client = await connect()
    await client.login(nick)
    if room:
        await client.join(room, nick)
    return client


async def room_with(connect: Connect, *nicks: str) -> list[LineClient]:
    """Users in #room, in this order, with everything so far read."""
    clients = [await user(connect, nick, "room") for nick in nicks]
    for client in clients:
        await client.drain(0.05)
    return clients


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of the test's own (with AOF), stopped at the end."""
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
async def clients() -> AsyncIterator[list[RawClient]]:
    """Clients a test opens to server processes; all are closed at the end of the test."""
    opened: list[RawClient] = []
    yield opened
    for client in opened:
        await client.close()
