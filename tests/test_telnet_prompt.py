"""The password prompt through a real telnet program (inetutils `telnet` in tmux): what the
user types at the prompt never appears on their screen, and echo comes back after it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.clients import RawClient
from tests.procs import ServerProcess
from tests.test_accounts import CHEAP_HASHES

PASSWORD = "Hidden-Secret7"


def _require_tools() -> None:
    missing = [tool for tool in ("tmux", "telnet") if shutil.which(tool) is None]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed; scripts/test.sh installs them"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class Pane:
    """One tmux session on a private server socket, running one command."""

    def __init__(self, command: str) -> None:
        self.socket = f"telchat-test-{os.getpid()}-{time.monotonic_ns()}"
        self._tmux("new-session", "-d", "-x", "120", "-y", "40", command)

    def _tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout

    def type(self, text: str) -> None:
        self._tmux("send-keys", "-l", text)
        self._tmux("send-keys", "Enter")

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-S", "-1000")

    def wait_for(self, text: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen or time.monotonic() > deadline:
                assert text in screen, f"{text!r} not on screen:\n{screen}"
                return screen
            time.sleep(0.05)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, check=False, timeout=10)


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    proc = ServerProcess("--store=memory://", *CHEAP_HASHES)
    yield proc
    proc.kill()


async def test_password_is_never_on_screen(server: ServerProcess) -> None:
    _require_tools()
    owner = await RawClient.connect(server.port)
    await owner.login("frank")
    await owner.send(f"register {PASSWORD}")
    await owner.read_until("*** Nick frank is now registered")
    await owner.send("quit")
    await owner.wait_closed()

    pane = Pane(f"telnet 127.0.0.1 {server.port}")
    try:
        pane.wait_for("*** Welcome to telchat.")
        pane.type("login frank")
        pane.wait_for("*** Password for frank")
        pane.type(PASSWORD)
        pane.wait_for("*** User change nick anonymous --> frank")
        # Echo is back on: what is typed next shows up again.
        pane.type("whois frank")
        screen = pane.wait_for("*** frank is a registered user")
        assert "whois frank" in screen
        assert PASSWORD not in screen
    finally:
        pane.close()
