"""The password prompt through a real telnet program (inetutils `telnet` in tmux): what the
user types at the prompt never appears on their screen, and echo comes back after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.clients import RawClient
from tests.procs import ServerProcess
from tests.test_accounts import CHEAP_HASHES
from tests.tmux import Pane, require

PASSWORD = "Hidden-Secret7"


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    proc = ServerProcess("--store=memory://", *CHEAP_HASHES)
    yield proc
    proc.kill()


async def test_password_is_never_on_screen(server: ServerProcess) -> None:
    require("tmux", "telnet")
    owner = await RawClient.connect(server.port)
    await owner.login("frank")
    await owner.send(f"register {PASSWORD}")
    await owner.read_until("*** Nick frank is now registered")
    await owner.send("quit")
    await owner.wait_closed()

    pane = await Pane.start(["telnet", "127.0.0.1", str(server.port)])
    try:
        await pane.wait_line("*** Welcome to telchat.")
        await pane.type("login frank")
        await pane.keys("Enter")
        await pane.wait_line("*** Password for frank")
        await pane.type(PASSWORD)
        await pane.keys("Enter")
        screen = await pane.wait_line("*** User change nick anonymous --> frank")
        assert not any(PASSWORD in line for line in screen)
        # No blank line between the prompt and what follows the hidden answer.
        prompt = next(i for i, line in enumerate(screen) if line.startswith("*** Password for frank"))
        assert screen[prompt + 1].startswith("*** User change nick anonymous --> frank"), screen
        # Echo is back on: what is typed next shows up again, before Enter is pressed.
        await pane.type("whois frank")
        await pane.wait_line("whois frank")
        await pane.keys("Enter")
        screen = await pane.wait_line("*** frank is a registered user")
        assert not any(PASSWORD in line for line in screen)
    finally:
        await pane.close()
