"""The room manager and fan-out, without sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from telchat.chat.outbox import Broadcast, Flusher, Outbox, encode_line
from telchat.chat.rooms import LINGER_AUDIENCE, Chat, ChatError, User
from telchat.store.base import MemoryStore
from telchat.store.events import message, notice
from telchat.store.sqlite import SqliteStore


class FakeSink:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.writes.append(data)
        return self.buffered()

    def buffered(self) -> int:
        return 0


def make_user(conn_id: int, flusher: Flusher, charset: str = "utf-8", limit: int = 1 << 20) -> tuple[User, FakeSink]:
    sink = FakeSink()
    overflowed: list[int] = []
    user = User(conn_id, Outbox(sink, flusher, limit, lambda: overflowed.append(conn_id)), charset=charset)
    return user, sink


async def open_chat() -> Chat:
    chat = Chat(MemoryStore())
    await chat.store.open(chat.deliver)
    return chat


async def test_one_write_per_member_per_loop_turn() -> None:
    flusher = Flusher()
    chat = await open_chat()
    users = [make_user(i, flusher) for i in range(3)]
    for i, (user, _) in enumerate(users):
        chat.connect(user)
        await chat.set_nick(user, f"u{i}")
        await chat.join(user, "room")
    flusher.flush()
    for _, sink in users:
        sink.writes.clear()
    for n in range(10):
        chat.say(users[0][0], f"line {n}")
    await asyncio.sleep(0)
    for _, sink in users:
        assert len(sink.writes) == 1
        assert sink.writes[0] == b"".join(encode_line(f"#room:u0> line {n}", "utf-8") for n in range(10))


async def test_a_batching_store_commits_and_writes_in_one_turn(tmp_path: Path) -> None:
    """With SQLite, a turn's lines are committed in the flusher's callback and written in
    that same callback; events published while delivering still get their own commit."""
    flusher = Flusher()
    store = SqliteStore(str(tmp_path / "t.db"))
    chat = Chat(store)
    store.commit_before(flusher)
    await store.open(chat.deliver)
    try:
        users = [make_user(i, flusher) for i in range(2)]
        for i, (user, _) in enumerate(users):
            chat.connect(user)
            await chat.set_nick(user, f"u{i}")
            await chat.join(user, "room")
        await store.settled()
        flusher.flush()
        sinks = [sink for _, sink in users]
        for sink in sinks:
            sink.writes.clear()
        for n in range(3):
            chat.say(users[0][0], f"line {n}")
        assert not any(sink.writes for sink in sinks)
        await asyncio.sleep(0)  # one turn: commit, deliver and write
        expected = b"".join(encode_line(f"#room:u0> line {n}", "utf-8") for n in range(3))
        assert [sink.writes for sink in sinks] == [[expected], [expected]]

        def answer() -> None:  # like an away notice, published while delivering
            if len(sinks[1].writes) == 1:
                store.publish(message("say", "room", "room", "u1", "answer"))

        flusher.before_flush(answer)
        chat.say(users[0][0], "question")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert sinks[1].writes[1:] == [encode_line(f"#room:{line}", "utf-8") for line in ("u0> question", "u1> answer")]
    finally:
        await store.close()


async def test_encoded_once_per_charset() -> None:
    flusher = Flusher()
    chat = await open_chat()
    users = [make_user(i, flusher, charset) for i, charset in enumerate(["utf-8", "cp1251", "utf-8", "cp1251"])]
    for i, (user, _) in enumerate(users):
        chat.connect(user)
        await chat.set_nick(user, f"u{i}")
        await chat.join(user, "room")
    flusher.flush()
    chat.say(users[0][0], "привет")
    queued = [user.outbox._chunks[-1] for user, _ in users]
    assert queued[0] is queued[2]
    assert queued[1] is queued[3]
    assert queued[1] == "#room:u0> привет\r\n".encode("cp1251")


def test_cp1251_ya_is_escaped_for_telnet() -> None:
    assert encode_line("я", "cp1251") == b"\xff\xff\r\n"
    assert encode_line("я", "utf-8") == "я\r\n".encode()


class StuckSink(FakeSink):
    """A transport whose peer never reads: everything written stays buffered."""

    def buffered(self) -> int:
        return sum(map(len, self.writes))


async def test_outbox_overflow_calls_back_and_drops() -> None:
    flusher = Flusher()
    hits: list[str] = []
    sink = StuckSink()
    outbox = Outbox(sink, flusher, 100, lambda: hits.append("over"))
    outbox.push(b"x" * 60)
    flusher.flush()
    assert hits == []
    outbox.push(b"x" * 60)
    flusher.flush()
    assert hits == ["over"]
    assert outbox.closed
    outbox.push(b"more")
    flusher.flush()
    assert sink.writes == [b"x" * 60, b"x" * 60]


async def test_manager_errors_are_chat_errors() -> None:
    flusher = Flusher()
    chat = await open_chat()
    user, _ = make_user(1, flusher)
    chat.connect(user)
    with pytest.raises(ChatError, match="Please login first"):
        chat.say(user, "hi")
    await chat.set_nick(user, "bob")
    with pytest.raises(ChatError, match="not in a room"):
        chat.say(user, "hi")
    with pytest.raises(ChatError, match="Invalid room name"):
        await chat.join(user, "a b")


async def test_disconnect_leaves_no_ghosts() -> None:
    flusher = Flusher()
    chat = await open_chat()
    a, _ = make_user(1, flusher)
    b, _ = make_user(2, flusher)
    for user, nick in ((a, "a"), (b, "b")):
        chat.connect(user)
        await chat.set_nick(user, nick)
        await chat.join(user, "r")
    chat.disconnect(a, "gone")
    assert list(chat.rooms["r"].members) == [b]
    assert set(chat.nicks) == {"b"}
    chat.disconnect(b, "gone")
    assert chat.rooms == {}
    assert chat.users == {}


def received(sink: FakeSink) -> list[str]:
    return b"".join(sink.writes).decode().splitlines()


async def room_of(
    chat: Chat, flusher: Flusher, count: int, charsets: list[str] | None = None
) -> list[tuple[User, FakeSink]]:
    """`count` users u0.. in #room, everything so far flushed and forgotten."""
    users = [make_user(i, flusher, charset) for i, charset in enumerate(charsets or ["utf-8"] * count)]
    for i, (user, _) in enumerate(users):
        chat.connect(user)
        await chat.set_nick(user, f"u{i}")
        await chat.join(user, "room")
    # Past everyone's history (Room.since): from here on, room lines take the shared batches.
    chat.say(users[0][0], "hello")
    flusher.flush()
    for _, sink in users:
        sink.writes.clear()
    return users


async def test_other_output_mid_turn_keeps_each_members_order() -> None:
    flusher = Flusher()
    chat = await open_chat()
    users = await room_of(chat, flusher, 3)
    chat.say(users[0][0], "one")
    await chat.private(users[0][0], "u1", "psst")
    chat.say(users[0][0], "two")
    users[2][0].send("*** just for u2")
    chat.say(users[0][0], "three")
    flusher.flush()
    said = ["#room:u0> one", "#room:u0> two", "#room:u0> three"]
    assert received(users[0][1]) == [said[0], "-> *u1*> psst", *said[1:]]
    assert received(users[1][1]) == [said[0], "*u0*> psst", *said[1:]]
    assert received(users[2][1]) == [*said[:2], "*** just for u2", said[2]]
    assert all(len(sink.writes) == 1 for _, sink in users)


async def test_membership_changes_mid_turn() -> None:
    flusher = Flusher()
    chat = await open_chat()
    users = await room_of(chat, flusher, 3)
    late, late_sink = make_user(9, flusher)
    chat.connect(late)
    await chat.set_nick(late, "late")
    flusher.flush()
    for sink in (late_sink, *(sink for _, sink in users)):
        sink.writes.clear()
    chat.say(users[0][0], "before")
    await chat.join(late, "room")
    chat.say(users[0][0], "after join")
    chat.leave(users[1][0], None)
    chat.say(users[0][0], "after leave")
    flusher.flush()
    joined, left = "*** User late joined room #room", "*** User u1 left room #room"
    lines = ["#room:u0> before", joined, "#room:u0> after join", left, "#room:u0> after leave"]
    assert received(users[0][1]) == received(users[2][1]) == lines
    assert received(users[1][1]) == [*lines[:3], left]
    assert received(late_sink) == ["*** #room history", "#room:u0> hello", *lines]


async def test_flushing_one_member_mid_turn_loses_nothing() -> None:
    flusher = Flusher()
    chat = await open_chat()
    users = await room_of(chat, flusher, 3, ["utf-8", "cp1251", "utf-8"])
    chat.say(users[0][0], "one")
    users[2][0].outbox.flush()
    chat.say(users[0][0], "два")
    flusher.flush()
    for user, sink in users:
        lines = b"".join(sink.writes).decode(user.charset).splitlines()
        assert lines == ["#room:u0> one", "#room:u0> два"]
    assert len(users[2][1].writes) == 2


async def test_broadcast_follows_membership_after_reset() -> None:
    flusher = Flusher()
    (a, sink_a), (b, sink_b), (c, sink_c) = (make_user(i, flusher) for i in range(3))
    out = Broadcast()
    out.send("1", [a, b])
    out.send("2", [a, b])
    out.reset()
    out.send("3", [a, c])
    flusher.flush()
    assert (received(sink_a), received(sink_b), received(sink_c)) == (["1", "2", "3"], ["1", "2"], ["3"])
    assert sink_a.writes == [b"1\r\n2\r\n3\r\n"]


async def test_lingering_notices_share_one_write_and_keep_their_order() -> None:
    flusher = Flusher()
    user, sink = make_user(1, flusher)
    for n in range(3):
        user.outbox.push(f"notice {n}\r\n".encode(), linger=True)
        await asyncio.sleep(0)
    assert sink.writes == []  # lingering: not written at the turn's end
    await asyncio.sleep(0.3)
    assert sink.writes == [b"notice 0\r\nnotice 1\r\nnotice 2\r\n"]
    # Something urgent behind a lingering notice takes it along, in order, this turn.
    user.outbox.push(b"notice 3\r\n", linger=True)
    user.outbox.push(b"a message\r\n")
    await asyncio.sleep(0)
    assert sink.writes[1:] == [b"notice 3\r\na message\r\n"]
    await asyncio.sleep(0.3)
    assert len(sink.writes) == 2


async def test_a_big_rooms_notice_lingers_but_not_for_whom_it_is_about() -> None:
    flusher = Flusher()
    chat = await open_chat()
    users = [make_user(i, flusher) for i in range(LINGER_AUDIENCE + 1)]
    for i, (user, _) in enumerate(users):
        chat.connect(user)
        await chat.set_nick(user, f"u{i}")
        await chat.join(user, "big")
    await asyncio.sleep(0.3)
    for _, sink in users:
        sink.writes.clear()
    # As a store delivers a join notice in a later turn than the join (Redis).
    chat.deliver(notice("*** User u0 joined room #big", rooms=("big",), nick="u0"))
    await asyncio.sleep(0)
    (_, subject_sink), *others = users
    assert subject_sink.writes == [b"*** User u0 joined room #big\r\n"]
    assert all(not sink.writes for _, sink in others)
    await asyncio.sleep(0.3)
    assert all(sink.writes == [b"*** User u0 joined room #big\r\n"] for _, sink in others)
