"""After an attack: is the server alive, has it forgotten everyone who left, is memory bounded?

Memory is judged by what the server holds, not by the process's size: live connection
objects (found through the garbage collector), the per-connection buffers, and tracemalloc's
count of bytes allocated while the attack ran.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import tracemalloc

from telchat.app import App
from telchat.session.session import Session
from telchat.telnet.protocol import ChatTelnetServer
from tests.clients import LineClient, RawClient

_probes = itertools.count(1)


def live(cls: type) -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, cls))


async def settled(app: App, sessions: int, timeout: float = 3.0) -> None:
    """Wait until exactly `sessions` sessions and as many admitted connections remain."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (len(app.sessions), app.guards.admission.total, len(app.chat.users)) != (sessions,) * 3:
        if loop.time() > deadline:
            raise AssertionError(
                f"want {sessions} sessions; have {len(app.sessions)} sessions, "
                f"{app.guards.admission.total} admitted, {len(app.chat.users)} users"
            )
        await asyncio.sleep(0.02)


async def session_of(app: App, nick: str, timeout: float = 3.0) -> Session:
    """The session of the user called `nick`, once it has logged in."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for session in app.sessions:
            if session.user.nick == nick:
                return session
        await asyncio.sleep(0.02)
    raise AssertionError(f"no session for {nick}")


async def assert_healthy(app: App, *survivors: LineClient, room: str = "health") -> None:
    """The server serves a newcomer, and keeps nothing of the clients that are gone."""
    await settled(app, len(survivors))
    probe = await RawClient.connect(app.port)
    try:
        nick = f"probe{next(_probes)}"
        await probe.login(nick)
        await probe.join(room, nick)
        await probe.send("still alive?")
        assert "#" + room + f":{nick}> still alive?" in await probe.read_until(f"#{room}:{nick}> ")
        await settled(app, len(survivors) + 1)
        # telnetlib3 keeps closed protocols listed until the next connection; the probe was it.
        assert live(ChatTelnetServer) == len(survivors) + 1
        assert live(Session) == len(survivors) + 1
        for session in app.sessions:
            assert session.held_input <= app.config.max_unterminated_bytes
    finally:
        await probe.close()
    await settled(app, len(survivors))


class Memory:
    """tracemalloc over a block: the peak and the lasting growth of allocations, in bytes."""

    def __enter__(self) -> Memory:
        tracemalloc.start()
        gc.collect()
        self.base = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        tracemalloc.stop()

    @property
    def peak(self) -> int:
        return tracemalloc.get_traced_memory()[1] - self.base

    @property
    def grown(self) -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - self.base
