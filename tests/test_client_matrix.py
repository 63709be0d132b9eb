"""Every client a user might pick, driven in tmux through the same conversation.

For each: the seed conversation exactly as on its screen (no doubled lines beyond the
client's own local echo, no blank lines, no staircase, no stray bytes), one edited line
that arrives as intended, a message arriving while the user is typing, Cyrillic both
ways, and staying connected while idle for 3 x (idle-ping + idle-timeout).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from telnetlib3.telopt import ECHO

from telchat.app import App
from tests.conftest import Connect, with_config
from tests.test_real_clients import StartPane, pane  # noqa: F401  (a fixture)
from tests.tmux import Pane, require

IDLE_PING, IDLE_TIMEOUT = 0.2, 0.3
CONFIG = with_config(idle_ping=IDLE_PING, idle_timeout=IDLE_TIMEOUT)
WELCOME = "*** Welcome to telchat. Type help for commands."


@dataclass(frozen=True)
class Client:
    name: str
    command: tuple[str, ...]
    # The program that must be installed (scripts/test.sh installs them all).
    program: str
    term: str = "xterm"
    # Line mode: the client shows what is typed itself, and the server does not.
    local_echo: bool = False

    def argv(self, port: int) -> list[str]:
        return [part.format(port=port) for part in self.command]


TINTIN = "/usr/games/tt++"
CLIENTS = [
    Client("telnet", ("telnet", "127.0.0.1", "{port}"), "telnet"),
    Client("telnet-dumb", ("telnet", "127.0.0.1", "{port}"), "telnet", term="dumb", local_echo=True),
    Client("busybox", ("busybox", "telnet", "127.0.0.1", "{port}"), "busybox"),
    Client("tintin", (TINTIN, "-G", "-e", "#session chat 127.0.0.1 {port}"), TINTIN, local_echo=True),
    Client("telnetlib3", ("telnetlib3-client", "127.0.0.1", "{port}"), "telnetlib3-client", local_echo=True),
    Client("kermit", ("kermit", "-J", "127.0.0.1", "{port}"), "kermit"),
    Client("nc", ("nc", "127.0.0.1", "{port}"), "nc", local_echo=True),
]


def conversation(screen: list[str]) -> list[str]:
    """The screen from the greeting on, without the client's empty input line at the end."""
    assert any(line.endswith(WELCOME) for line in screen), screen
    start = max(i for i, line in enumerate(screen) if line.endswith(WELCOME))
    return [WELCOME, *screen[start + 1 :]]


async def until_echoing(app: App) -> None:
    for _ in range(100):
        if all(t.get_protocol().writer.local_option.enabled(ECHO) for t in app.sessions.values()):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the server never echoed")


async def say(client: Pane, text: str) -> None:
    await client.type(text)
    await client.keys("Enter")


@pytest.mark.parametrize("config", [CONFIG], ids=["small-idle"])
@pytest.mark.parametrize("client", CLIENTS, ids=[c.name for c in CLIENTS])
async def test_client(client: Client, pane: StartPane, connect: Connect, app: App) -> None:  # noqa: F811
    require(client.program, "tmux")
    frank = await pane(client.argv(app.port), width=100, height=40, term=client.term)
    await frank.wait_line(WELCOME)
    if not client.local_echo:
        # The client's DO ECHO may still be on its way: typing before it arrives is echoed
        # by the client itself.
        await until_echoing(app)

    # The seed conversation, with a second user (a plain socket) as `me`.
    typed = ["login frank", "join frank_talk", "i think you need to tank to frank...", "frank frank frank"]
    answers = [
        ["*** User change nick anonymous --> frank"],
        ["*** #frank_talk history", "*** User frank joined room #frank_talk"],
        ["#frank_talk:frank> i think you need to tank to frank..."],
        ["#frank_talk:frank> frank frank frank"],
    ]
    expected = [WELCOME]
    for line, answer in zip(typed, answers, strict=True):
        await say(frank, line)
        await frank.wait_line(answer[-1])
        expected += ([line] if client.local_echo else []) + answer
    # telnetlib3 answers pings as they come, whether or not the test is reading.
    me = await connect("telnet")
    await me.login("me")
    await me.send("join #frank_talk")
    assert await me.read_until("*** User me joined") == [
        "*** #frank_talk history",
        "#frank_talk:frank> i think you need to tank to frank...",
        "#frank_talk:frank> frank frank frank",
        "*** User me joined room #frank_talk",
    ]
    expected += ["*** User change nick anonymous --> me", "*** User me joined room #frank_talk"]
    screen = await frank.wait_line("*** User me joined room #frank_talk")
    assert conversation(screen) == expected

    # One edited line: a false start erased with Ctrl-U, a typo with Backspace.
    await frank.type("garbage")
    await frank.keys("C-u")
    await frank.type("hellp")
    await frank.keys("BSpace")
    await say(frank, "o world")
    assert await me.read_line() == "#frank_talk:frank> hello world"
    # (Each time, frank's screen shows his line before he types on: a line-mode client
    # prints what arrives after whatever is typed so far.)
    await frank.wait_line("#frank_talk:frank> hello world")

    # A message arrives while frank is typing; his line still goes out whole.
    await frank.type("partial")
    await asyncio.sleep(0.1)
    await me.send("ping from me")
    await frank.wait_line("#frank_talk:me> ping from me")
    await say(frank, " done")
    said = await me.read_until("#frank_talk:frank>")
    assert said == ["#frank_talk:me> ping from me", "#frank_talk:frank> partial done"]
    await frank.wait_line("#frank_talk:frank> partial done")

    # Cyrillic, both ways.
    await say(frank, "привет, мир")
    assert await me.read_line() == "#frank_talk:frank> привет, мир"
    await frank.wait_line("#frank_talk:frank> привет, мир")
    await me.send("здравствуй, frank")
    assert await me.read_line() == "#frank_talk:me> здравствуй, frank"
    await frank.wait_line("#frank_talk:me> здравствуй, frank")

    # Idle for 3 x (idle-ping + idle-timeout): still there.
    await asyncio.sleep(3 * (IDLE_PING + IDLE_TIMEOUT))
    await say(frank, "still here")
    assert await me.read_until("#frank_talk:frank>") == ["#frank_talk:frank> still here"]

    screen = conversation(await frank.wait_line("#frank_talk:frank> still here"))
    shown = "\n".join(screen)
    assert "" not in screen, f"no blank lines:\n{shown}"
    assert not any("\ufffd" in line or "\x1b" in line for line in screen), f"no stray bytes:\n{shown}"
