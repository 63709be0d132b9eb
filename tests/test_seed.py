"""The seed's transcript (shared/seed/README.txt), byte for byte."""

from __future__ import annotations

import pytest

from tests.conftest import Connect

KINDS = [("raw", "raw"), ("telnet", "telnet"), ("raw", "telnet"), ("telnet", "raw")]


@pytest.mark.parametrize(("kind_a", "kind_b"), KINDS)
async def test_seed_transcript(connect: Connect, kind_a: str, kind_b: str) -> None:
    frank = await connect(kind_a)
    await frank.send("login frank")
    assert await frank.read_line_bytes() == b"*** User change nick anonymous --> frank\r\n"
    await frank.send("join frank_talk")
    assert await frank.read_line_bytes() == b"*** #frank_talk history\r\n"
    assert await frank.read_line_bytes() == b"*** User frank joined room #frank_talk\r\n"
    await frank.send("i think you need to tank to frank...")
    assert await frank.read_line_bytes() == b"#frank_talk:frank> i think you need to tank to frank...\r\n"
    await frank.send("frank frank frank")
    assert await frank.read_line_bytes() == b"#frank_talk:frank> frank frank frank\r\n"

    me = await connect(kind_b)
    await me.send("login me")
    assert await me.read_line_bytes() == b"*** User change nick anonymous --> me\r\n"
    assert await frank.read_line_bytes() == b"*** User change nick anonymous --> me\r\n"
    await me.send("join #frank_talk")
    assert await me.read_line_bytes() == b"*** #frank_talk history\r\n"
    assert await me.read_line_bytes() == b"#frank_talk:frank> i think you need to tank to frank...\r\n"
    assert await me.read_line_bytes() == b"#frank_talk:frank> frank frank frank\r\n"
    assert await me.read_line_bytes() == b"*** User me joined room #frank_talk\r\n"
    assert await frank.read_line_bytes() == b"*** User me joined room #frank_talk\r\n"
    assert await frank.drain() == []
    assert await me.drain() == []


async def test_greeting_is_first_line_for_raw_client(connect: Connect) -> None:
    client = await connect("raw", greet=False)
    assert await client.read_line_bytes(timeout=0.5) == b"*** Welcome to telchat. Type help for commands.\r\n"
