"""Every command and every error line, through a real server and real sockets."""

from __future__ import annotations

import pytest

from tests.clients import LineClient
from tests.conftest import Connect, user
from tests.test_names import LOOKALIKES


async def listener_and_talker(connect: Connect) -> tuple[LineClient, LineClient]:
    """ann and bob in #one, ann's input read: what bob's next line makes her see."""
    listener = await user(connect, "ann", "one")
    talker = await user(connect, "bob", "one")
    await listener.drain()
    return listener, talker


async def test_speaking_needs_login(connect: Connect) -> None:
    anon = await connect()
    await anon.send("join lobby")
    await anon.expect("*** #lobby history", "*** User anonymous joined room #lobby")
    await anon.send("hello")
    await anon.expect("*** Please login first: login <nick>")
    await anon.send("/me waves")
    await anon.expect("*** Please login first: login <nick>")
    await anon.send("/msg bob hi")
    await anon.expect("*** Please login first: login <nick>")


async def test_anonymous_reads_room(connect: Connect) -> None:
    anon = await connect()
    await anon.send("join lobby")
    await anon.read_until("*** User anonymous joined")
    bob = await user(connect, "bob", "lobby")
    await anon.read_until("*** User bob joined")
    await bob.send("hi all")
    assert await anon.read_line() == "#lobby:bob> hi all"


async def test_message_without_room(connect: Connect) -> None:
    bob = await user(connect, "bob")
    await bob.send("hello?")
    await bob.expect("*** You are not in a room. Type join <room> first.")


async def test_nick_change_and_alias(connect: Connect) -> None:
    bob = await user(connect, "bob")
    watcher = await connect()
    await bob.send("nick robert")
    await bob.expect("*** User change nick bob --> robert")
    await watcher.expect("*** User change nick bob --> robert")
    await bob.send("/login robert")
    await bob.expect("*** You are already robert")
    await bob.send("/login Robert")
    await bob.expect("*** User change nick robert --> Robert")


async def test_nick_taken_ignores_case_and_lookalikes(connect: Connect) -> None:
    await user(connect, "frank")
    other = await connect()
    for attempt in ("frank", "FRANK", "fr\u0430nk".replace("\u0430", "a")):
        await other.send(f"login {attempt}")
        await other.expect(f"*** Nick {attempt} is already taken")
    await other.send("login \u0440\u0430\u0441")  # Cyrillic "рас" reads as Latin "pac"
    await other.expect("*** User change nick anonymous --> \u0440\u0430\u0441")
    third = await connect()
    await third.send("login pac")
    await third.expect("*** Nick pac is already taken")


@pytest.mark.parametrize(("nick", "spoof"), LOOKALIKES)
async def test_lookalike_nicks_are_taken_either_way_round(connect: Connect, nick: str, spoof: str) -> None:
    for first, second in ((nick, spoof), (spoof, nick)):
        holder = await user(connect, first)
        other = await connect()
        await other.send(f"login {second}")
        await other.expect(f"*** Nick {second} is already taken")
        await holder.send("quit")
        await holder.wait_closed()


@pytest.mark.parametrize(
    ("nick", "error"),
    [
        ("1abc", "*** Invalid nick '1abc': 1-24 letters of one script, digits, _ or -, starting with a letter"),
        (
            "a" * 25,
            f"*** Invalid nick '{'a' * 25}': 1-24 letters of one script, digits, _ or -, starting with a letter",
        ),
        ("fr\u0430nk", "*** Invalid nick 'fr\u0430nk': letters must all be of one script"),
        ("bob!", "*** Invalid nick 'bob!': 1-24 letters of one script, digits, _ or -, starting with a letter"),
        ("admin", "*** Nick admin is reserved"),
        ("Anonymous", "*** Nick Anonymous is reserved"),
        ("SERVER", "*** Nick SERVER is reserved"),
    ],
)
async def test_invalid_nicks(connect: Connect, nick: str, error: str) -> None:
    client = await connect()
    await client.send(f"login {nick}")
    await client.expect(error)


async def test_cyrillic_nick_and_text(connect: Connect) -> None:
    ivan = await user(connect, "фрэнк", "комната")
    await ivan.send("привет всем")
    await ivan.expect("#комната:фрэнк> привет всем")


@pytest.mark.parametrize("room", ["a" * 33, "bad/room", "#", "with space"])
async def test_invalid_room_names(connect: Connect, room: str) -> None:
    client = await user(connect, "bob")
    await client.send(f"/join {room}")
    line = await client.read_line()
    assert line.startswith("*** Invalid room name") or line == "*** Usage: join <room>"


async def test_room_names_are_case_insensitive(connect: Connect) -> None:
    bob = await user(connect, "bob", "Lobby")
    ann = await user(connect, "ann")
    await ann.send("join #lobby")
    await ann.read_until("*** User ann joined room #Lobby")
    assert (await bob.read_until("*** User ann joined"))[-1] == "*** User ann joined room #Lobby"


async def test_join_existing_switches(connect: Connect) -> None:
    bob = await user(connect, "bob", "one")
    await bob.join("two", "bob")
    await bob.send("join one")
    await bob.expect("*** Current room is now #one")
    await bob.send("hi")
    await bob.expect("#one:bob> hi")


async def test_multi_room_routing(connect: Connect) -> None:
    bob = await user(connect, "bob", "one")
    await bob.join("two", "bob")
    one = await user(connect, "ann", "one")
    two = await user(connect, "cid", "two")
    for client in (bob, one, two):
        await client.drain()
    await bob.send("to two")
    await bob.expect("#two:bob> to two")
    assert await two.read_line() == "#two:bob> to two"
    await bob.send("join one")
    await bob.expect("*** Current room is now #one")
    await bob.send("to one")
    await bob.expect("#one:bob> to one")
    assert await one.read_line() == "#one:bob> to one"
    assert await one.drain() == []
    assert await two.drain() == []


async def test_leave_current_and_named(connect: Connect) -> None:
    bob = await user(connect, "bob", "one")
    await bob.join("two", "bob")
    ann = await user(connect, "ann", "one")
    await bob.drain()
    await bob.send("left one")
    await bob.expect("*** User bob left room #one")
    assert await ann.read_line() == "*** User bob left room #one"
    await bob.send("/part")
    await bob.expect("*** User bob left room #two")
    await bob.send("/leave")
    await bob.expect("*** You are not in a room. Type join <room> first.")
    await bob.send("/leave one")
    await bob.expect("*** You are not in #one")


async def test_leave_current_falls_back_to_other_room(connect: Connect) -> None:
    bob = await user(connect, "bob", "one")
    await bob.join("two", "bob")
    await bob.send("left")
    await bob.expect("*** User bob left room #two", "*** Current room is now #one")


async def test_emote(connect: Connect) -> None:
    bob = await user(connect, "bob", "one")
    ann = await user(connect, "ann", "one")
    await bob.drain()
    await bob.send("/me waves")
    await bob.expect("#one:* bob waves")
    assert await ann.read_line() == "#one:* bob waves"
    await bob.send("/me")
    await bob.expect("*** Usage: me <action>")


async def test_private_messages(connect: Connect) -> None:
    bob = await user(connect, "bob")
    ann = await user(connect, "ann")
    await bob.drain()
    await bob.send("/msg ANN hello there")
    await bob.expect("-> *ann*> hello there")
    assert await ann.read_line() == "*bob*> hello there"
    await ann.send("/tell bob hi")
    assert await bob.read_line() == "*ann*> hi"
    await bob.send("/msg nobody hi")
    await bob.expect("*** No such user: nobody")
    await bob.send("/msg ann")
    await bob.expect("*** Usage: msg <nick> <text>")


async def test_who(connect: Connect) -> None:
    bob = await user(connect, "bob")
    await connect()
    await bob.send("who")
    await bob.expect("*** Users online: bob (+1 anonymous)")
    await bob.join("one", "bob")
    ann = await user(connect, "ann", "one")
    await bob.drain()
    await bob.send("who")
    await bob.expect("*** Users in #one: ann, bob")
    await ann.send("who #one")
    await ann.expect("*** Users in #one: ann, bob")
    await ann.send("who nowhere")
    await ann.expect("*** No such room: #nowhere")


async def test_rooms(connect: Connect) -> None:
    bob = await user(connect, "bob")
    await bob.send("rooms")
    await bob.expect("*** No rooms yet. Type join <room> to create one.")
    await bob.join("one", "bob")
    await user(connect, "ann", "two")
    await user(connect, "cid", "one")
    await bob.drain()
    await bob.send("/list")
    await bob.expect("*** Rooms: #one (2), #two (1)")


async def test_rooms_and_who_say_which_room_is_current(connect: Connect) -> None:
    bob = await user(connect, "bob", "one")
    await bob.join("two", "bob")
    current = "*** Your current room is #two"
    for line, answer in (
        ("rooms", ["*** Rooms: #one (1), #two (1)", current]),
        ("who one", ["*** Users in #one: bob", current]),
        ("who *", ["*** Users online: bob", current]),
        ("who", ["*** Users in #two: bob"]),  # it names the current room already
    ):
        await bob.send(line)
        await bob.expect(*answer)


async def test_history(connect: Connect) -> None:
    bob = await user(connect, "bob", "one")
    for i in range(5):
        await bob.send(f"line {i}")
        await bob.expect(f"#one:bob> line {i}")
    await bob.send("history 2")
    await bob.expect("*** #one history", "#one:bob> line 3", "#one:bob> line 4")
    await bob.send("/history")
    assert await bob.read_until("#one:bob> line 4") == ["*** #one history"] + [f"#one:bob> line {i}" for i in range(5)]
    await bob.send("/history zero")
    await bob.expect("*** Usage: history [N | since 2h|14:00|2026-12-01] (N from 1 to 1000)")
    await bob.send("/history 0")
    await bob.expect("*** Usage: history [N | since 2h|14:00|2026-12-01] (N from 1 to 1000)")


async def test_history_replay_order_and_limit(connect: Connect) -> None:
    bob = await user(connect, "bob", "one")
    for i in range(25):
        await bob.send(f"m{i}")
    await bob.read_until("#one:bob> m24")
    ann = await user(connect, "ann")
    lines = await ann.join("one", "ann")
    assert lines == ["*** #one history"] + [f"#one:bob> m{i}" for i in range(5, 25)] + ["*** User ann joined room #one"]


async def test_history_without_room(connect: Connect) -> None:
    bob = await user(connect, "bob")
    await bob.send("history")
    await bob.expect("*** You are not in a room. Type join <room> first.")


async def test_help(connect: Connect) -> None:
    bob = await connect()
    await bob.send("help")
    # A short list that fits an 80-column terminal; operator commands are for operators only.
    await bob.expect(
        "*** Commands: login, join, left, say, me, msg, who, rooms, history, help, quit,",
        "***   register, password, key, away, back, ignore, unignore, set, whois, topic,",
        "***   mentions, search",
        "*** Type help <command> for one command's usage.",
    )
    await bob.send("help msg")
    await bob.expect("*** msg <nick> <text> - send a private message", "*** Also: tell")
    await bob.send("/help /join")
    await bob.expect("*** join <room> - join a room (creating it) and make it current")
    await bob.send("/help nothing")
    await bob.expect("*** No such command: nothing. Type help for commands.")


async def test_unknown_command_and_usage(connect: Connect) -> None:
    bob = await user(connect, "bob", "one")
    await bob.send("/dance")
    await bob.expect("*** Unknown command /dance. Type help for commands.")
    await bob.send("/join")
    await bob.expect("*** Usage: join <room>")
    await bob.send("/join a b")
    await bob.expect("*** Usage: join <room>")
    await bob.send("/rooms now")
    await bob.expect("*** Usage: rooms [page]")


async def test_bare_words_that_do_not_fit_are_messages(connect: Connect) -> None:
    bob = await user(connect, "bob", "one")
    for text in ("join the party now", "quit smoking", "help me please", "me too", "John is here", "jion a party"):
        await bob.send(text)
        await bob.expect(f"#one:bob> {text}")


async def test_bare_commands_match_in_any_case(connect: Connect) -> None:
    bob = await user(connect, "bob", "one")
    await bob.send("Who")
    await bob.expect("*** Users in #one: bob")
    await bob.send("JOIN two")
    await bob.expect("*** #two history", "*** User bob joined room #two")


@pytest.mark.parametrize(
    ("line", "answer"),
    [
        ("login", "*** Usage: login <nick> [password [ghost]]"),
        ("Login boss pw extra words", "*** Usage: login <nick> [password [ghost]]"),
        ("nick boss pw extra words", "*** Usage: login <nick> [password [ghost]]"),
        ("register correct horse battery", "*** Usage: register <password>"),
        ("PASSWORD only-one", "*** Usage: password <old> <new>"),
        ("msg", "*** Usage: msg <nick> <text>"),
        ("tell ann", "*** Usage: msg <nick> <text>"),
        ("msg nobody secret one", "*** No such user: nobody"),
    ],
)
async def test_lines_with_secrets_are_never_posted(connect: Connect, line: str, answer: str) -> None:
    listener, bob = await listener_and_talker(connect)
    await bob.send(line)
    await bob.expect(answer)
    await bob.send("after")
    await bob.expect("#one:bob> after")
    assert await listener.read_until("#one:bob> after") == ["#one:bob> after"]


async def test_bare_msg_and_tell_are_private(connect: Connect) -> None:
    ann, bob = await listener_and_talker(connect)
    for command, secret in (("msg", "secret one"), ("Tell", "secret two")):
        await bob.send(f"{command} ann {secret}")
        await bob.expect(f"-> *ann*> {secret}")
        await ann.expect(f"*bob*> {secret}")
    carol = await user(connect, "carol")
    await carol.send("register carol-password")
    await carol.read_until("*** Nick carol is now registered")
    await carol.send("quit")
    await carol.wait_closed()
    await ann.drain()
    await bob.drain()
    await bob.send("msg carol are you there")
    await bob.expect("*** carol is offline; they will get your message when they log in.")
    await bob.send("after")
    assert await ann.read_until("#one:bob> after") == ["#one:bob> after"]


@pytest.mark.parametrize("line", ["jion lobby", "/jion", "/Jion lobby", "hlep"])
async def test_mistyped_command_gets_a_hint_not_posted(connect: Connect, line: str) -> None:
    listener, bob = await listener_and_talker(connect)
    await bob.send(line)
    name = line.lstrip("/").split()[0]
    suggestion = "help" if name == "hlep" else "join"
    await bob.expect(f"*** Unknown command {name}. Did you mean {suggestion}?")
    await bob.send("after")
    assert await listener.read_until("#one:bob> after") == ["#one:bob> after"]


async def test_slash_slash_and_say(connect: Connect) -> None:
    bob = await user(connect, "bob", "one")
    await bob.send("//join is a command")
    await bob.expect("#one:bob> /join is a command")
    await bob.send("/say join x")
    await bob.expect("#one:bob> join x")
    await bob.send("/SAY upper")
    await bob.expect("#one:bob> upper")


async def test_blank_lines_are_ignored(connect: Connect) -> None:
    bob = await user(connect, "bob", "one")
    await bob.send("   ")
    await bob.send("")
    await bob.send("after")
    await bob.expect("#one:bob> after")


async def test_quit_tells_room_and_closes(connect: Connect) -> None:
    bob = await user(connect, "bob", "one")
    ann = await user(connect, "ann", "one")
    await bob.drain()
    await ann.send("/quit gone fishing")
    assert await ann.read_line() == "*** have a nice day ***"
    await ann.wait_closed()
    assert await bob.read_line() == "*** User ann quit (gone fishing)"
    await bob.send("who")
    await bob.expect("*** Users in #one: bob")


async def test_bare_quit(connect: Connect) -> None:
    bob = await user(connect, "bob")
    await bob.send("quit")
    await bob.expect("*** have a nice day ***")
    await bob.wait_closed()
    again = await connect()
    await again.login("bob")
