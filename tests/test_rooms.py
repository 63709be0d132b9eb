"""The room manager and fan-out, without sockets."""

from __future__ import annotations

import asyncio

import pytest

from telchat.outbox import Flusher, Outbox, encode_line
from telchat.rooms import Chat, ChatError, User
from telchat.store import MemoryStore


class FakeSink:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

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
