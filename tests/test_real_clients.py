"""The real clients people use, driven in tmux: Debian's inetutils telnet and TinTin++."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from telnetlib3.telopt import ECHO

from telchat.app import App
from tests.conftest import Connect, user
from tests.tmux import Pane, require

TELNET = "telnet"
TINTIN = "/usr/games/tt++"

StartPane = Callable[..., Awaitable[Pane]]


@pytest.fixture
async def pane() -> AsyncIterator[StartPane]:
    panes: list[Pane] = []

    async def start(command: list[str], **options: Any) -> Pane:
        started = await Pane.start(command, **options)
        panes.append(started)
        return started

    yield start
    for started in panes:
        await started.close()


async def enter_room(pane: Pane, nick: str, room: str) -> None:
    await pane.wait_line("*** Welcome to telchat.")
    await pane.type(f"login {nick}\r")
    await pane.wait_line(f"*** User change nick anonymous --> {nick}")
    await pane.type(f"join {room}\r")
    await pane.wait_line(f"*** User {nick} joined room #{room}")


async def test_telnet_edits_lines_and_keeps_them_intact_under_incoming_messages(
    pane: StartPane, connect: Connect, port: int
) -> None:
    require(TELNET, "tmux")
    bob = await pane([TELNET, "127.0.0.1", str(port)], width=60, height=20)
    await enter_room(bob, "bob", "one")
    ann = await user(connect, "ann", "one")
    await ann.drain()

    # Ctrl-U drops a false start; a backspace fixes a typo; arrows insert a missed letter.
    await bob.type("garbage")
    await bob.keys("C-u")
    await bob.type("hellp")
    await bob.keys("BSpace")
    await bob.type("o wrld")
    await bob.keys("Left", "Left", "Left")
    await bob.type("o")
    await bob.keys("End")
    await bob.type(" again")
    await bob.wait_line("hello world again")
    await bob.keys("Enter")
    assert await ann.read_line() == "#one:bob> hello world again"
    await bob.wait_line("#one:bob> hello world again")

    # A message arrives while bob is half-way through a line, cursor in the middle of it.
    await bob.type("partial inp")
    await bob.keys("Left", "Left")
    # The current room is shown before the input (only while something is typed).
    await bob.wait(lambda s: s[-1] == "[#one] partial inp", "the partial input")
    await ann.send("ping from ann")
    screen = await bob.wait(
        lambda s: s[-2:] == ["#one:ann> ping from ann", "[#one] partial inp"], "message above input"
    )
    assert screen[-3] == "#one:bob> hello world again"
    assert await bob.cursor() == (len("[#one] partial i"), len(screen) - 1)

    # The redrawn line is still live: finishing it sends the whole thing.
    await bob.keys("End")
    await bob.type("ut")
    await bob.keys("Enter")
    assert await ann.read_until("#one:bob>") == ["#one:ann> ping from ann", "#one:bob> partial input"]

    # Up brings the last line back for another edit; Cyrillic goes through as UTF-8.
    await bob.keys("Up")
    await bob.wait(lambda s: s[-1] == "[#one] partial input", "history recall")
    await bob.keys("C-w")
    await bob.type("привет")
    await bob.keys("Enter")
    assert await ann.read_line() == "#one:bob> partial привет"


async def test_tintin_stays_in_line_mode_with_utf8_and_gets_gmcp(
    pane: StartPane, connect: Connect, port: int, app: App, tmp_path: Path
) -> None:
    require(TINTIN, "tmux")
    script = tmp_path / "telchat.tin"
    script.write_text(
        # TinTin++ refuses GMCP unless a script asks for it: answer WILL GMCP with DO GMCP.
        "#event {IAC WILL GMCP} {#send {\\xFF\\xFD\\xC9\\}}\n"
        "#event {IAC SB GMCP Comm.Channel.Text IAC SE} {#showme {GMCP-TEXT %0}}\n"
        f"#session chat 127.0.0.1 {port}\n"
    )
    tina = await pane([TINTIN, "-G", str(script)], width=120, height=30)
    await enter_room(tina, "tina", "one")

    (protocol,) = [t.get_protocol() for t in app.sessions.values()]
    assert not protocol.writer.local_option.enabled(ECHO), "a MUD client must not get server echo"

    ann = await user(connect, "ann", "one")
    await tina.wait_line("*** User ann joined room #one")
    await ann.send("привет, tina")
    await tina.wait_line("#one:ann> привет, tina")
    await tina.wait_line("GMCP-TEXT {channel}{one}{talker}{ann}{text}{#one:ann> привет, tina}")

    await tina.type("здравствуйте все\r")
    assert (await ann.read_until("#one:tina>"))[-1] == "#one:tina> здравствуйте все"
    screen = await tina.wait_line("#one:tina> здравствуйте все")
    # TinTin++ shows what was typed once, itself: the server did not echo it back.
    assert sum(line == "здравствуйте все" for line in screen) == 1


async def test_telnet_readline_keys_tab_completion_and_resizing(pane: StartPane, connect: Connect, port: int) -> None:
    require(TELNET, "tmux")
    bob = await pane([TELNET, "127.0.0.1", str(port)], width=60, height=20)
    await enter_room(bob, "bob", "one")
    ann = await user(connect, "annabel", "one")
    await bob.wait_line("*** User annabel joined room #one")
    await ann.drain()

    # Tab completes a nick; Alt-b and Ctrl-Left move back by words, Alt-d kills one.
    await bob.type("hi ann")
    await bob.keys("Tab")
    await bob.wait(lambda s: s[-1] == "[#one] hi annabel", "the completed nick")
    await bob.type("how are you")
    await bob.keys("M-b", "M-b", "C-Left", "M-d")
    await bob.type("who")
    await bob.keys("C-e")
    await bob.type("?")
    await bob.keys("Enter")
    # (Shown to annabel highlighted: it names her.)
    assert "#one:bob> hi annabel who are you?" in await ann.read_line()

    # A long line, then a narrower window: no piece of the old line stays on screen.
    await bob.type("0123456789" * 5)
    await bob.wait(lambda s: s[-1] == "[#one] " + "0123456789" * 5, "the long line")
    await bob.tmux("resize-window", "-x", "30", "-y", "20")
    screen = await bob.wait(lambda s: s[-1].endswith("0123456789") and len(s[-1]) <= 30, "the line redrawn")
    # (capture-pane -J joins the rows a line was wrapped onto.)
    assert screen[-2] == "#one:bob> hi annabel who are you?", "the line above is the last message"
    await bob.tmux("resize-window", "-x", "80", "-y", "20")
    await bob.wait(lambda s: s[-1] == "[#one] " + "0123456789" * 5, "the line redrawn whole when widened")
    # A line that fills its new rows exactly (7 + 53 = 60 cells, 2 x 30), the cursor at its
    # end: tmux leaves the cursor on the second row, and the message above stays too.
    await bob.type("abc")
    await bob.wait(lambda s: s[-1] == "[#one] " + "0123456789" * 5 + "abc", "the line filling 60 cells")
    await bob.tmux("resize-window", "-x", "30", "-y", "20")
    screen = await bob.wait(lambda s: s[-1].endswith("789abc") and len(s[-1]) <= 30, "the full line redrawn")
    assert screen[-2] == "#one:bob> hi annabel who are you?", "the line above is still the last message"


async def test_up_never_recalls_a_password_typed_as_a_word(pane: StartPane, port: int) -> None:
    require(TELNET, "tmux")
    bob = await pane([TELNET, "127.0.0.1", str(port)], width=80, height=20)
    await enter_room(bob, "bob", "one")
    await bob.type("hello there\r")
    await bob.wait_line("#one:bob> hello there")
    await bob.type("register s3cret-one\r")
    await bob.wait_line("*** Nick bob is now registered to you; next time type login bob <password>")
    await bob.type("password s3cret-one s3cret-two\r")
    await bob.wait_line("*** Password changed")
    await bob.type("login bob s3cret-two\r")
    await bob.wait_line("*** You are already bob")
    # Up goes past all three to the last line without a password; a second Up finds no other.
    await bob.keys("Up")
    await bob.wait(lambda s: s[-1] == "[#one] hello there", "the line before the passwords")
    await bob.keys("Up", "Up", "Up")
    await bob.wait(lambda s: s[-1] == "[#one] login bob", "the oldest line kept, after join one")
