"""Dormant connections after an upgrade (telnet/dormant.py): users back in the chat before
their protocol and session are built, woken by their input, by what they are sent, or by
`App.awake`. In-process: one App hands its connections over to another as an exec would
(tests/test_upgrade.py runs the real exec, where the new image wakes everyone at once).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from telchat.app import App, Carried
from telchat.rules import replies
from tests.clients import IAC, NAWS, SB, SE, RawClient, TermClient, registered_member
from tests.conftest import TEST_CONFIG, running
from tests.test_liveness import TinTinLike, stays_while_idle
from tests.test_upgrade import member, said

CONFIG = replace(TEST_CONFIG, operators="boss")


@asynccontextmanager
async def handed_over(old: App, meanwhile: Callable[[], Awaitable[object]] | None = None) -> AsyncIterator[App]:
    """`old`'s connections in a new App that has not woken any of them yet; `meanwhile`
    runs between the old one's pause and the new one's start."""
    listeners = old.listeners()
    await old.pause(listeners, 0.5)
    if meanwhile is not None:
        await meanwhile()
    records = old.carry()
    connections = [dict(record, fd=os.dup(record["fd"])) for record in records]
    carried = Carried(listeners, connections, old.telemetry.last_conn_id, old.store.carry())
    # As the exec would: the old image's descriptors go, the sockets live on in the new one's.
    for transport in list(old.sessions.values()):
        transport.abort()
    new = App(old.config)
    await new.start(carried)
    try:
        yield new
    finally:
        await new.stop()


async def room_of(port: int, *nicks: str) -> list[RawClient]:
    return [await member(port, nick) for nick in nicks]


def dormant(app: App) -> int:
    return app.session_count - len(app.sessions)


async def test_dormant_users_hear_their_room_and_wake_at_their_first_line() -> None:
    async with running(CONFIG) as old:
        ann, bob, ian = await room_of(old.port, "ann", "bob", "Ian")
        async with handed_over(old) as new:
            assert dormant(new) == 3
            await ann.send("hello")
            for client in (ann, bob, ian):
                assert await said(client, "ann", "hello") == ["hello"]
            assert dormant(new) == 2  # only ann had something to say
            await bob.send("who ops")
            assert await bob.read_line() == "*** Users in #ops: ann, bob, Ian"
            # Their nicks are theirs, lookalikes too (lan, with a small L): nothing happened.
            newcomer = await RawClient.connect(new.port)
            await newcomer.send("login lan")
            assert await newcomer.read_line() == replies.NICK_TAKEN.format(nick="lan")
            await newcomer.close()
            await new.awake()
            assert dormant(new) == 0 and len(new.sessions) == 3
            await ian.send("bye")
            assert await said(ann, "Ian", "bye") == ["bye"]
            for client in (ann, bob, ian):
                await client.close()


async def test_each_sessions_byte_counts_go_on_across_the_handover() -> None:
    # What `disconnect` reports (bytes_in, bytes_out) counts the whole connection, not the
    # part since the last upgrade.
    async with running(CONFIG) as old:
        clients = await room_of(old.port, "ann", "bob")
        counted: list[tuple[int, int]] = []

        async def count() -> None:
            counted.append(old.live_bytes())

        async with handed_over(old, count) as new:
            assert counted[0][0] > 0 and counted[0][1] > 0
            assert new.live_bytes() == counted[0]  # dormant users
            await new.awake()
            assert new.live_bytes() == counted[0]  # their sessions built
            for client in clients:
                await client.close()


async def test_a_dormant_user_kicked_is_told_and_leaves() -> None:
    async with running(CONFIG) as old:
        boss = await registered_member(old.port, "boss", "boss-password", "ops")
        bob, cat = await room_of(old.port, "bob", "cat")
        async with handed_over(old) as new:
            await boss.send("/kick bob")
            assert (await boss.read_until("*** Kicked bob"))[-1:] == ["*** Kicked bob"]
            assert (await bob.read_until("*** You were kicked by boss"))[-1:] == ["*** You were kicked by boss"]
            await bob.wait_closed()
            assert (await cat.read_until("*** User bob quit"))[-1:] == ["*** User bob quit (kicked by boss)"]
            assert dormant(new) == 1  # cat, who only listened
            await boss.close()
            await cat.close()


async def test_a_client_gone_while_dormant_leaves_the_chat() -> None:
    async with running(CONFIG) as old:
        ann, bob, cat = await room_of(old.port, "ann", "bob", "cat")
        async with handed_over(old) as new:
            await bob.close()
            assert (await ann.read_until("*** User bob quit"))[-1:] == ["*** User bob quit (connection closed)"]
            await ann.send("who ops")
            assert (await ann.read_until("*** Users in #ops"))[-1:] == ["*** Users in #ops: ann, cat"]
            assert new.session_count == 2
            for client in (ann, cat):
                await client.close()


async def test_a_dormant_slow_reader_gets_every_line_in_order() -> None:
    # A small kernel send buffer: the dormant connection's socket soon takes no more, and
    # what it did not take must go out before everything sent after it, once it wakes.
    async with running(replace(CONFIG, max_sndbuf=8192)) as old:
        sloth_sock = socket.socket()
        sloth_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sloth_sock.connect(("127.0.0.1", old.port))
        reader, writer = await asyncio.open_connection(sock=sloth_sock)
        sloth = RawClient(reader, writer)
        await sloth.read_until(replies.WELCOME)
        await sloth.login("sloth")
        await sloth.join("ops", "sloth")
        (talker,) = await room_of(old.port, "talker")
        async with handed_over(old) as new:
            sloth.writer.transport.pause_reading()
            payload = "p" * 900
            lines = 60  # some 55 KB: within the sendq, far past what the kernel holds for it
            for number in range(lines):
                await talker.send(f"{number} {payload}")
            await talker.read_until(f"#ops:talker> {lines - 1} ")
            assert dormant(new) == 0  # its socket took only part: it woke to write the rest
            sloth.writer.transport.resume_reading()
            got = await said(sloth, "talker", f"{lines - 1} {payload}")
            assert got == [f"{number} {payload}" for number in range(lines)]
            await talker.close()
            await sloth.close()


async def test_dormant_users_are_told_goodbye_at_shutdown() -> None:
    async with running(CONFIG) as old:
        clients = await room_of(old.port, "ann", "bob")
        async with handed_over(old) as new:
            assert dormant(new) == 2
        for client in clients:
            assert (await client.read_until(replies.GOODBYE))[-1:] == [replies.GOODBYE]
            await client.wait_closed()


async def test_dormant_connections_count_toward_the_per_address_limit() -> None:
    limited = replace(CONFIG, max_conns_per_ip=2, limit_loopback=True, conn_rate_per_ip=0)
    async with running(limited) as old:
        ann, bob = await room_of(old.port, "ann", "bob")
        async with handed_over(old) as new:
            assert dormant(new) == 2
            third = await RawClient.connect(new.port, greet=False)
            assert "Too many connections from your address" in await third.read_line()
            await third.close()
            await new.awake()
            # Built, each is counted once: still two, and one leaving makes room for one.
            await bob.close()
            await ann.read_until("*** User bob quit")
            fourth = await RawClient.connect(new.port)
            await fourth.send("login cat")
            assert await fourth.read_line() == "*** User change nick anonymous --> cat"
            for client in (ann, fourth):
                await client.close()


async def test_a_newcomer_accepted_while_the_new_image_starts_gets_an_id_of_its_own(tmp_path: Path) -> None:
    """A client that connects during the pause is accepted while the new image still opens
    its slower doors (the web door's): it must not get a carried connection's id, by which
    a dormant user is found, or it would end that user's dormancy and, an upgrade later,
    be taken for them."""
    doors = replace(CONFIG, web_port=0, ssh_port=0, ssh_host_key=str(tmp_path / "host_key"))
    async with running(doors) as old:
        ann, bob = await room_of(old.port, "ann", "bob")
        carried_ids = {session.user.conn_id for session in old.sessions}
        port = old.port
        arriving: list[RawClient] = []

        async def connect() -> None:
            arriving.append(await RawClient.connect(port, greet=False))

        async with handed_over(old, connect) as new:
            # Taken up before the slower doors open (their imports would hold the pause).
            assert new.web is None and new.ssh is None
            await new.open_late_doors()
            assert new.web is not None and new.ssh is not None
            newcomer = arriving[0]
            await newcomer.expect("*** Welcome to telchat. Type help for commands.")
            assert [session.user.conn_id > max(carried_ids) for session in new.sessions] == [True]
            assert dormant(new) == 2
            await newcomer.send("login ann")
            assert await newcomer.read_line() == replies.NICK_TAKEN.format(nick="ann")
            await ann.send("still me")
            assert await said(bob, "ann", "still me") == ["still me"]
            for client in (ann, bob, newcomer):
                await client.close()


async def test_a_client_that_ignores_pings_is_not_pinged_again_after_an_upgrade() -> None:
    """TinTin++ answers its first TIMING-MARK only. Once the server has learnt that, the
    next image must know it too: pinged afresh, it would ignore the ping and be dropped."""
    pings = replace(CONFIG, idle_ping=0.2, idle_timeout=0.3)
    async with running(pings) as old:
        tina = await TinTinLike.connect(old.port)
        deadline = asyncio.get_running_loop().time() + 5
        while tina.tm_seen < 2 and asyncio.get_running_loop().time() < deadline:
            await tina._fill(0.05)
        assert tina.tm_seen == 2
        async with handed_over(old) as new:
            await new.awake()
            await stays_while_idle(tina, 3 * (0.2 + 0.3))
            assert tina.tm_seen == 2, "no more pings"


async def test_a_window_resized_during_the_pause_is_drawn_at_its_new_size() -> None:
    """The old image reads, and keeps, what comes during its pause (a NAWS here): the new
    one hands it on before the terminal is built, which must still draw at the new size."""
    async with running(CONFIG) as old:
        term = await TermClient.connect(old.port)
        await term.send_bytes(b"x" * 50)
        await term.drain()

        async def resize() -> None:
            term.buffer = b""
            await term.send_bytes(bytes([IAC, SB, NAWS, 0, 20, 0, 10, IAC, SE]))
            await asyncio.sleep(0.2)  # read by the old image, paused

        async with handed_over(old, resize) as new:
            await term._fill(1)
            # As a resize at any other time (tests/test_client_classes.py): the 50-cell line
            # wrapped onto 3 rows is erased and drawn again, scrolled to fit 20 columns.
            assert term.buffer == b"\r\x1b[2A\x1b[J" + b"\r\x1b[K" + b"x" * 18 + b"\r\x1b[18C"
            assert [session.user.columns for session in new.sessions] == [20]
            await term.close()
