"""A slow reader's backlog is bounded wherever it sits, the kernel's send buffer included (issue 15)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from telchat.app import App
from tests.conftest import Connect, with_config
from tests.test_commands import user

SENDQ = 65536


@pytest.mark.parametrize("config", [with_config(sendq_bytes=SENDQ)])
async def test_a_stalled_reader_is_cut_once_its_unread_bytes_pass_the_sendq(
    connect: Connect, port: int, app: App
) -> None:
    sloth = socket.socket()
    sloth.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sloth.connect(("127.0.0.1", port))
    sloth.sendall(b"login sloth\r\njoin busy\r\n")  # and never reads again
    readers = [await user(connect, f"reader{i}", "busy") for i in range(4)]
    talker = await user(connect, "talker", "busy")
    for client in (*readers, talker):
        await client.drain()
    payload = "p" * 900
    lines = 8 * SENDQ // len(payload)  # far less than the kernel alone would absorb (MiBs)
    reading = [asyncio.create_task(c.read_until(f"#busy:talker> {lines - 1} ", timeout=20)) for c in readers]
    for i in range(lines):
        await talker.send(f"{i} {payload}")
        if i % 16 == 15:
            # Its echo: the server fanned these out, and the readers (in this loop) had turns
            # to read them; on a busy machine a burst of all of them can outrun a reader.
            await talker.read_until(f"#busy:talker> {i} ")
    for task in reading:
        got = [line for line in await task if line.startswith("#busy")]
        assert len(got) == lines and got == [f"#busy:talker> {i} {payload}" for i in range(lines)]
    # Its unread bytes passed the sendq, counted where they sat (in Python or the kernel).
    assert "sloth" not in app.chat.nicks
    sloth.close()
