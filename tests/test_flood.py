"""Fakelag: a flooder's lines are delayed, never dropped, never in anyone else's way."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telchat.app import App
from telchat.rules import replies
from telchat.rules.flood import PASTE_GAP, PASTE_LINES, Fakelag, PasteMeter, TokenBucket
from tests.attack import Attacker
from tests.clients import RawClient, read_through
from tests.conftest import Connect, user, with_config
from tests.health import Memory, assert_healthy, session_of, settled

MiB = 1 << 20
SLOWED = replies.SLOWED_DOWN.format(rate="20")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_burst_then_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(5, 2, clock)
    assert [bucket.take() for _ in range(5)] == [0.0] * 5
    assert bucket.take() == pytest.approx(0.5)
    assert bucket.take() == pytest.approx(1.0)
    clock.now += 1.0
    assert bucket.take() == pytest.approx(0.5)
    clock.now += 10
    assert bucket.full


def test_fakelag_tells_once_per_slowdown() -> None:
    clock = FakeClock()
    lag = Fakelag(2, 1, clock)
    begins = []
    for _ in range(6):
        delay, begin = lag.take()
        begins.append(begin)
        clock.now += delay
    assert begins == [False, False, True, False, False, False]
    clock.now += 1.5  # not full again yet: the same slowdown
    assert lag.take()[1] is False
    clock.now += 60
    assert [lag.take()[1] for _ in range(3)] == [False, False, True]


@given(
    burst=st.integers(1, 10),
    rate=st.floats(0.5, 50),
    gaps=st.lists(st.floats(0, 2), max_size=60),
)
def test_paced_lines_never_beat_the_rate(burst: int, rate: float, gaps: list[float]) -> None:
    """However a sender spaces its lines, those let through fit burst + rate * time."""
    clock = FakeClock()
    lag = Fakelag(burst, rate, clock)
    starts = []
    for gap in gaps:
        clock.now += gap
        delay, _ = lag.take()
        clock.now += delay  # the sender's line runs once its delay is over
        starts.append(clock.now)
    for i, first in enumerate(starts):
        for j in range(i, len(starts)):
            assert j - i + 1 <= burst + rate * (starts[j] - first) + 1e-6


@given(burst=st.integers(1, 10), rate=st.floats(0.5, 50), count=st.integers(0, 40))
def test_a_sender_within_the_rate_is_never_delayed(burst: int, rate: float, count: int) -> None:
    clock = FakeClock()
    lag = Fakelag(burst, rate, clock)
    for _ in range(count):
        assert lag.take() == (0.0, False)
        clock.now += 1 / rate


@pytest.mark.parametrize("config", [with_config(flood_burst=5, flood_rate=20)])
async def test_flood_is_delayed_not_dropped_and_others_are_unaffected(connect: Connect, app: App) -> None:
    before = app.telemetry.counters.value("limits", kind="flood")
    bob = await user(connect, "bob", "room")
    ann = await user(connect, "ann", "room")
    eve = await user(connect, "eve", "room")
    for client in (bob, ann):
        await client.drain()
    flood = [f"#room:eve> spam {i}" for i in range(40)]
    await eve.send_bytes(b"".join(b"spam %d\r\n" % i for i in range(40)))
    eve_session = await session_of(app, "eve")
    await asyncio.sleep(0.3)
    # Her excess waits in her session (typing would still be echoed), within the input limit.
    assert 0 < eve_session._waiting_bytes < app.config.max_unterminated_bytes
    for i in range(3):
        await bob.send(f"bob {i}")
        await ann.send(f"ann {i}")
    chat = {f"#room:bob> bob {i}" for i in range(3)} | {f"#room:ann> ann {i}" for i in range(3)}
    for client in (bob, ann):
        lines = await read_through(client, {flood[-1]})
        assert [line for line in lines if line.startswith("#room:eve>")] == flood
        # The others' lines overtook the flooder's backlog: nobody waited behind it.
        assert chat <= set(lines[: lines.index(flood[-1])])
    eve_lines = await read_through(eve, {flood[-1]})
    assert eve_lines.count(SLOWED) == 1
    assert [line for line in eve_lines if line.startswith("#room:eve>")] == flood
    assert app.telemetry.counters.value("limits", kind="flood") == before + 1
    await assert_healthy(app, bob, ann, eve)


@pytest.mark.parametrize("config", [with_config(flood_burst=2, flood_rate=20)])
async def test_commands_count_too(connect: Connect, app: App) -> None:
    eve = await connect()
    # One packet is a paste: its first PASTE_LINES lines cost one token, the rest one each.
    await eve.send_bytes(b"who\r\n" * (PASTE_LINES + 5))
    lines = await eve.drain(0.8)
    assert lines.count(SLOWED) == 1
    assert sum(line.startswith("*** Users online") for line in lines) == PASTE_LINES + 5
    await assert_healthy(app, eve)


@pytest.mark.parametrize("config", [with_config(flood_burst=5, flood_rate=2)])
async def test_flooder_gets_backpressure_and_memory_stays_bounded(connect: Connect, port: int, app: App) -> None:
    bob = await user(connect, "bob", "room")
    flood = b"spam spam spam spam\r\n" * (8 * MiB // 21)
    with Memory() as memory:
        eve = Attacker.joined(port, "eve")
        await bob.read_until("*** User eve joined room #room")
        sending = eve.flood(flood)
        await asyncio.sleep(1.5)
        assert not sending.done()  # the kernel pushes back on her: the server is not reading
        assert memory.peak < 3 * MiB
        assert (await bob.read_line()).startswith("#room:eve> spam")
        # She vanishes with megabytes still unsaid: her backlog goes with her.
        await eve.reset()
        lines = await bob.read_until("*** User eve quit")
        # What got through is her burst, her first paste's PASTE_LINES counted as one line.
        assert len(lines) < 10 + PASTE_LINES
        await assert_healthy(app, bob)
        assert memory.grown < MiB // 2


@pytest.mark.parametrize("config", [with_config(flood_burst=5, flood_rate=2)])
async def test_a_backlog_ends_when_its_sender_hangs_up(connect: Connect, app: App) -> None:
    bob = await user(connect, "bob", "room")
    eve = await user(connect, "eve", "room")
    assert isinstance(eve, RawClient)
    await bob.drain()
    await eve.send_bytes(b"spam\r\n" * 200)
    await eve.read_until("#room:eve> spam")
    # Half-closed: she still reads, so her lines would go on arriving; a paused socket shows no EOF.
    eve.writer.write_eof()
    lines = await bob.read_until("*** User eve quit")
    assert len(lines) < 10 + PASTE_LINES  # her burst, her first paste's lines counted as one
    await eve.close()
    await assert_healthy(app, bob)


@pytest.mark.parametrize("config", [with_config(flood_burst=5, flood_rate=20, max_unterminated_bytes=4096)])
async def test_input_limits_hold_while_delayed(connect: Connect, app: App) -> None:
    bob = await user(connect, "bob", "room")
    eve = await user(connect, "eve", "room")
    await bob.drain()
    await eve.send_bytes(b"".join(b"spam %d\r\n" % i for i in range(20)) + b"x" * 20000)
    lines = await bob.read_until("*** User eve quit")
    assert lines[-1] == "*** User eve quit (input overflow)"
    assert [line for line in lines if line.startswith("#room:eve>")] == [f"#room:eve> spam {i}" for i in range(20)]
    await assert_healthy(app, bob)


@pytest.mark.parametrize("config", [with_config(flood_burst=1, flood_rate=0.5, shutdown_grace=0.2)])
async def test_shutdown_does_not_wait_for_a_backlog(connect: Connect, app: App) -> None:
    eve = await connect()
    await eve.send_bytes(b"login eve\r\njoin room\r\n" + b"spam\r\n" * 50)
    await eve.expect("*** User change nick anonymous --> eve")
    await eve.read_until(replies.SLOWED_DOWN.format(rate="0.5"))  # after her paste's first lines
    loop = asyncio.get_running_loop()
    started = loop.time()
    await app.stop()
    assert loop.time() - started < 4
    assert b"*** have a nice day ***" in await eve.wait_closed()
    await settled(app, 0)


def test_a_paste_is_one_message_up_to_its_cap() -> None:
    clock = FakeClock()
    meter = PasteMeter(clock)
    clock.now = 10.0
    paste = [meter.cost() for _ in range(PASTE_LINES + 3)]
    assert paste == [1.0] + [0.0] * (PASTE_LINES - 1) + [1.0] * 3
    clock.now += PASTE_GAP  # a pause: the next line begins a new paste
    assert [meter.cost(), meter.cost()] == [1.0, 0.0]
