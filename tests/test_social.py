"""Away, ignore, mentions, timestamps, whois and settings, through a real server; and the
rule that personal formatting never costs anyone else their shared encoding."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace

import pytest

from telchat.app import App
from telchat.chat.outbox import Flusher
from telchat.config import Config
from telchat.store import events
from telchat.store.events import SAY
from tests.clients import LineClient
from tests.conftest import Connect, user
from tests.test_accounts import registered
from tests.test_rooms import make_user, open_chat

CLOCK = r"\d\d:\d\d "
BOLD, RESET, BELL = b"\x1b[1m", b"\x1b[0m", b"\x07"


@pytest.fixture
def config(config: Config) -> Config:
    return replace(config, operators="boss")


async def pair(connect: Connect, room: str = "room") -> tuple[LineClient, LineClient]:
    ann = await user(connect, "ann", room)
    bob = await user(connect, "bob", room)
    await ann.drain()
    return ann, bob


async def test_away_and_back(connect: Connect) -> None:
    ann, bob = await pair(connect)
    await bob.send("/away gone fishing")
    await bob.expect("*** You are marked as away")
    await ann.send("who")
    await ann.expect("*** Users in #room: ann, bob (away)")
    await ann.send("/msg bob are you there?")
    await ann.expect("-> *bob*> are you there?", "*** bob is away: gone fishing")
    assert await bob.read_line() == "*ann*> are you there?"
    await bob.send("back")
    await bob.expect("*** You are back")
    await bob.send("back")
    await bob.expect("*** You are not marked as away")
    await bob.send("away")
    await bob.expect("*** You are marked as away")
    await ann.send("/msg bob hello")
    await ann.expect("-> *bob*> hello", "*** bob is away")
    assert await bob.read_line() == "*ann*> hello"
    await bob.send("away from keyboard")
    await bob.expect("#room:bob> away from keyboard")


async def test_ignore_hides_messages_and_private_messages(connect: Connect) -> None:
    ann, bob = await pair(connect)
    cid = await user(connect, "cid", "room")
    await ann.drain()
    await bob.drain()
    await ann.send("ignore BOB")
    await ann.expect("*** Ignoring BOB: you will not see their messages")
    await bob.send("can anyone hear me")
    await bob.send("/me waves")
    await bob.send("/msg ann psst")
    await cid.read_until("#room:* bob waves")
    await bob.read_until("-> *ann*> psst")
    await cid.send("only cid is heard")
    assert await ann.read_line() == "#room:cid> only cid is heard"
    dan = await user(connect, "dan")
    assert (await ann.read_line()).endswith("--> dan"), "notices still reach an ignoring user"
    await dan.send("join room")
    await ann.read_until("*** User dan joined")
    await ann.send("ignore")
    await ann.expect("*** Ignoring: bob")
    await ann.send("history")
    assert await ann.read_until("#room:cid>") == ["*** #room history", "#room:cid> only cid is heard"]
    await ann.send("unignore bob")
    await ann.expect("*** No longer ignoring bob")
    await bob.send("back in view")
    assert await ann.read_line() == "#room:bob> back in view"
    await ann.send("ignore cid")
    await ann.expect("*** Ignoring cid: you will not see their messages")
    await ann.send("register ann-password")
    await ann.read_until("*** Nick ann is now registered")
    await ann.send("ignore")
    await ann.expect("*** Ignoring: cid")
    await ann.send("unignore cid")
    await ann.expect("*** No longer ignoring cid")
    for line, error in [
        ("ignore ann", "*** You cannot ignore yourself"),
        ("unignore bob", "*** You are not ignoring bob"),
        ("ignore", "*** You ignore nobody"),
        ("/ignore 1x", "*** Invalid nick '1x': 1-24 letters of one script, digits, _ or -, starting with a letter"),
    ]:
        await ann.send(line)
        await ann.expect(error)


async def test_mentions_fold_lookalikes_as_nicks_do(connect: Connect) -> None:
    mike = await user(connect, "Mike0", "room")
    bob = await user(connect, "bob", "room")
    await mike.drain()
    for text in ("hi mike0", "hi MIKEO", "hi rnike0"):
        await bob.send(text)
        assert await mike.read_line_bytes() == BOLD + f"#room:bob> {text}".encode() + RESET + b"\r\n"


async def test_mentions_are_bold_for_the_named_user_only(connect: Connect) -> None:
    ann, bob = await pair(connect)
    cid = await user(connect, "cid", "room")
    await ann.drain()
    await bob.drain()
    await bob.send("hey ANN: look at this")
    line = b"#room:bob> hey ANN: look at this"
    assert await ann.read_line_bytes() == BOLD + line + RESET + b"\r\n"
    assert await bob.read_line_bytes() == line + b"\r\n"
    assert await cid.read_line_bytes() == line + b"\r\n"
    await ann.send("set bell on")
    await ann.expect("*** bell is now on")
    await bob.send("@ann ring")
    assert await ann.read_line_bytes() == BOLD + b"#room:bob> @ann ring" + RESET + BELL + b"\r\n"
    await ann.send("set highlight off")
    await ann.expect("*** highlight is now off")
    await bob.send("ann again")
    assert await ann.read_line_bytes() == b"#room:bob> ann again\r\n"
    await ann.send("i am ann")
    assert await ann.read_line_bytes() == b"#room:ann> i am ann\r\n"


async def test_timestamps(connect: Connect) -> None:
    ann, bob = await pair(connect)
    await ann.send("set timestamps on")
    assert re.fullmatch(CLOCK + r"\*\*\* timestamps is now on", await ann.read_line())
    await bob.send("hello")
    assert re.fullmatch(CLOCK + "#room:bob> hello", await ann.read_line())
    assert await bob.read_line() == "#room:bob> hello"
    await bob.send("who")
    await bob.expect("*** Users in #room: ann, bob")
    await ann.send("who")
    assert re.fullmatch(CLOCK + r"\*\*\* Users in #room: ann, bob", await ann.read_line())
    await ann.send("set timestamps off")
    await ann.expect("*** timestamps is now off")


async def test_replayed_history_older_than_today_has_dates(connect: Connect, app: App) -> None:
    old = time.time() - 3 * 86400
    app.store.publish(replace(events.message(SAY, "room", "room", "zed", "three days ago"), ts=old))
    app.store.publish(events.message(SAY, "room", "room", "zed", "just now"))
    await asyncio.sleep(0.05)
    ann = await user(connect, "ann")
    await ann.send("set timestamps on")
    await ann.read_line()
    await ann.send("join room")
    lines = [await ann.read_line() for _ in range(4)]
    assert re.fullmatch(CLOCK + r"\*\*\* User ann joined room #room", lines[3])
    day = time.strftime("%Y-%m-%d", time.localtime(old))
    assert re.fullmatch(CLOCK + r"\*\*\* #room history", lines[0])
    assert re.fullmatch(day + " " + CLOCK + "#room:zed> three days ago", lines[1])
    assert re.fullmatch(CLOCK + "#room:zed> just now", lines[2])
    bob = await user(connect, "bob")
    assert await bob.join("room", "bob") == [
        "*** #room history",
        "#room:zed> three days ago",
        "#room:zed> just now",
        "*** User bob joined room #room",
    ]


async def test_whois(connect: Connect) -> None:
    ann, bob = await pair(connect)
    await bob.join("kitchen", "bob")
    await bob.send("/away brb")
    await bob.read_line()
    await ann.send("whois bob")
    lines = await ann.read_until("*** bob is away")
    assert lines[0] == "*** bob is in #room, #kitchen"
    assert re.fullmatch(r"\*\*\* bob has been idle \d+s, online for \d+s", lines[1])
    assert lines[2] == "*** bob is away: brb"
    boss = await registered(connect, "boss", "boss-password")
    await ann.drain()
    await ann.send("whois boss")
    await ann.expect("*** boss is in no room")
    assert (await ann.read_line()).startswith("*** boss has been idle")
    await ann.expect("*** boss is an operator")
    await boss.drain()
    await boss.send("whois ann")
    await boss.expect("*** ann is in #room")
    assert (await boss.read_line()).startswith("*** ann has been idle")
    await boss.expect("*** ann connects from 127.0.0.1")
    await ann.send("whois nobody")
    await ann.expect("*** No such user: nobody")


async def test_settings(connect: Connect) -> None:
    ann = await user(connect, "ann")
    for line, reply in [
        ("set", "*** Settings: charset utf-8, timestamps off, bell off, highlight on, catchup on, tz server"),
        (
            "set colour on",
            "*** Unknown setting 'colour': choose from charset, timestamps, bell, highlight, catchup, tz",
        ),
        ("set bell maybe", "*** Setting bell takes on or off"),
        ("/set bell", "*** Usage: set [charset <name> | timestamps|bell|highlight|catchup on|off | tz <zone>]"),
        ("set BELL ON", "*** bell is now on"),
        ("set", "*** Settings: charset utf-8, timestamps off, bell on, highlight on, catchup on, tz server"),
    ]:
        await ann.send(line)
        await ann.expect(reply)
    await ann.send("set sail")
    await ann.expect("*** You are not in a room. Type join <room> first.")


async def test_personal_formatting_keeps_shared_encoding_for_everyone_else() -> None:
    flusher = Flusher()
    chat = await open_chat()
    charsets = ["utf-8", "utf-8", "utf-8", "utf-8", "cp1251", "cp1251"]
    users = [member for member, _ in (make_user(i, flusher, charset) for i, charset in enumerate(charsets))]
    for i, member in enumerate(users):
        chat.connect(member)
        await chat.set_nick(member, f"u{i}")
        await chat.join(member, "room")
    flusher.flush()
    users[1].profile.timestamps = True
    chat.refresh(users[1])
    chat.say(users[0], "привет u2")
    queued = [member.outbox._chunks[-1] for member in users]
    line = "#room:u0> привет u2"
    assert queued[0] is queued[3] and queued[0] == f"{line}\r\n".encode()
    assert queued[4] is queued[5] and queued[4] == f"{line}\r\n".encode("cp1251")
    assert re.fullmatch(CLOCK.encode() + f"{line}\r\n".encode(), queued[1])
    assert queued[2] == BOLD + line.encode() + RESET + b"\r\n"
    chat.say(users[0], "nobody named")
    common = [users[i].outbox._chunks[-1] for i in (0, 2, 3)]
    assert common[0] is common[1] is common[2]


@pytest.mark.parametrize(
    ("charset", "shown"),
    [
        ("cp1251", '#room:ann> \u0422\u0435\u043a\u0441\u0442 ? \' \u043a - "ok" ... TM'),
        # What koi8-r lacks is spelt as readably (PROTOCOL.md), its C1 byte 0x9B (`⌡`) as `?`.
        ("koi8-r", '#room:ann> \u0422\u0435\u043a\u0441\u0442 ? \' \u043a - "ok" ... TM'),
    ],
)
async def test_single_byte_charsets_never_get_c1_control_bytes(connect: Connect, charset: str, shown: str) -> None:
    ann = await user(connect, "ann", "room")
    reader = await user(connect, "bob", "room")
    await reader.send(f"set charset {charset}")
    await reader.expect(f"*** Charset is now {charset}")
    await ann.drain()
    await ann.send("\u0422\u0435\u043a\u0441\u0442 \u2321 \u203a \u045c \u2013 \u201cok\u201d \u2026 \u2122")
    line = await reader.read_line_bytes()
    assert not any(0x80 <= byte <= 0x9F for byte in line), line
    assert line == f"{shown}\r\n".encode(charset, "replace")
