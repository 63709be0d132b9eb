"""The room manager's events port, without sockets: what a sink hears, and who hears nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from telchat.chat.observers import Players
from telchat.chat.outbox import Flusher
from tests.test_rooms import make_user, open_chat


class Recorder:
    def __init__(self) -> None:
        self.heard: list[tuple[str, Any]] = []

    def channels(self, rooms: list[str]) -> None:
        self.heard.append(("channels", rooms))

    def channel_text(self, channel: str, talker: str, text: str) -> None:
        self.heard.append(("text", (channel, talker, text)))

    def players(self, players: Callable[[], Players]) -> None:
        self.heard.append(("players", players()))

    def take(self) -> list[tuple[str, Any]]:
        heard, self.heard = self.heard, []
        return heard


async def test_sink_hears_rooms_members_and_talk() -> None:
    flusher = Flusher()
    chat = await open_chat()
    (ann, _), (bob, _) = make_user(1, flusher), make_user(2, flusher)
    for user, nick in ((ann, "ann"), (bob, "bob")):
        chat.connect(user)
        await chat.set_nick(user, nick)
    await chat.join(ann, "one")
    recorder = Recorder()
    chat.attach_events(ann, recorder)
    assert recorder.take() == [("channels", ["one"]), ("players", [("ann", ["one"])])]

    await chat.join(bob, "one")
    assert recorder.take() == [("players", [("ann", ["one"]), ("bob", ["one"])])]
    chat.say(bob, "hi")
    await chat.private(bob, "ann", "psst")
    assert recorder.take() == [
        ("text", ("one", "bob", "#one:bob> hi")),
        ("text", ("tell bob", "bob", "*bob*> psst")),
    ]
    await chat.join(ann, "two")
    assert recorder.take() == [
        ("channels", ["two", "one"]),
        ("players", [("ann", ["one", "two"]), ("bob", ["one"])]),
    ]
    await chat.set_nick(bob, "robert")
    assert recorder.take() == [("players", [("ann", ["one", "two"]), ("robert", ["one"])])]
    chat.disconnect(bob, "bye")
    assert recorder.take() == [("players", [("ann", ["one", "two"])])]
    chat.leave(ann, "one")
    assert recorder.take() == [("channels", ["two"]), ("players", [("ann", ["two"])])]


async def test_an_accounts_sessions_are_one_player() -> None:
    flusher = Flusher()
    chat = await open_chat()
    (ann, _), (second, _), (bob, _) = make_user(1, flusher), make_user(2, flusher), make_user(3, flusher)
    for user in (ann, second, bob):
        chat.connect(user)
    await chat.set_nick(ann, "ann")
    await chat.set_nick(bob, "bob")
    chat.add_session(second, "Ann")
    for user in (ann, second, bob):
        await chat.join(user, "one")
    await chat.join(second, "two")
    recorder = Recorder()
    chat.attach_events(bob, recorder)
    assert recorder.take() == [("channels", ["one"]), ("players", [("ann", ["one"]), ("bob", ["one"])])]
    await chat.join(bob, "two")
    assert recorder.take()[-1] == ("players", [("ann", ["one", "two"]), ("bob", ["one", "two"])])


async def test_rooms_without_listeners_cost_nothing_extra() -> None:
    flusher = Flusher()
    chat = await open_chat()
    user, _ = make_user(1, flusher)
    chat.connect(user)
    await chat.set_nick(user, "solo")
    await chat.join(user, "quiet")
    assert chat.rooms["quiet"].listeners == {}
    chat.say(user, "nobody has a sink here")
