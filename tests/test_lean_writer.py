"""LeanTelnetWriter answers every lookup as telnetlib3's own writer does."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
import telnetlib3
from telnetlib3.stream_writer import TelnetWriterUnicode
from telnetlib3.telopt import GMCP, NAWS, NEW_ENVIRON, NOP, TM, TTYPE

from telchat.app import App
from telchat.telnet.internals import MADE_ON_USE, WRITER_DEFAULTS, LeanTelnetWriter, compact, learn
from telchat.telnet.protocol import PROTOCOL_DEFAULTS, ChatTelnetServer
from tests.clients import RawClient

TABLES = ("_iac_callback", "_slc_callback", "_ext_callback", "_ext_send_callback", "_ext_offer_callback")


class Transport(asyncio.Transport):
    def write(self, data: Any) -> None:
        pass

    def close(self) -> None:
        pass


def make(cls: type) -> Any:
    return cls(Transport(), None, lambda **_: "utf8", server=True)


def test_tables_and_slctab_match_telnetlib3s() -> None:
    plain, lean = make(TelnetWriterUnicode), make(LeanTelnetWriter)
    for table in TABLES:
        expected = getattr(plain, table)
        got = getattr(lean, table)
        assert expected, table
        for cmd, handler in expected.items():
            # The handler of the same name, the lean writer's own where it overrides one
            # (Interrupt Process, Are You There).
            own = getattr(LeanTelnetWriter, handler.__name__)
            assert cmd in got
            assert got[cmd].__func__ is own and got[cmd].__self__ is lean
            assert got.get(cmd).__func__ is own
        assert b"\x00\x01" not in got and got.get(b"\x00\x01") is None
        with pytest.raises(KeyError):
            got[b"\x00\x01"]
        assert not dict.__len__(got), f"{table} holds bound methods"
    assert lean.__dict__.get("_own_slctab") is None  # not made until something reads it
    assert {k: (v.level, v.val) for k, v in lean.slctab.items()} == {
        k: (v.level, v.val) for k, v in plain.slctab.items()
    }
    assert lean.slctab is lean.slctab


def test_registering_and_closing() -> None:
    lean = make(LeanTelnetWriter)
    seen: list[Any] = []
    lean.set_ext_callback(NAWS, lambda *args: seen.append(args))
    lean._ext_callback[NAWS](80, 24)
    assert seen == [(80, 24)]
    lean.set_ext_callback(GMCP, lean.handle_gmcp)  # back to its own handler
    assert lean._ext_callback[GMCP].__func__ is TelnetWriterUnicode.handle_gmcp
    lean.set_iac_callback(TM, lean.handle_nop)  # its own method, but not TM's handler
    assert lean._iac_callback[TM].__func__ is TelnetWriterUnicode.handle_nop
    assert lean._iac_callback[NOP].__func__ is TelnetWriterUnicode.handle_nop
    other = make(LeanTelnetWriter)
    assert other._iac_callback[TM].__func__ is TelnetWriterUnicode.handle_tm
    lean.slctab = {}
    assert lean.slctab == {}
    lean.close()
    for table in TABLES:
        assert TTYPE not in getattr(lean, table) and NOP not in getattr(lean, table)


def test_compacting_keeps_every_value() -> None:
    # As protocol_factory configures them (and ChatTelnetServer.connection_made, slc_simulated).
    plain, lean = (
        cls(Transport(), None, lambda **_: "utf8", server=True, encoding_errors="replace")
        for cls in (TelnetWriterUnicode, LeanTelnetWriter)
    )
    lean.slc_simulated = False
    # The shared defaults are telnetlib3's own first values (but slc_simulated, which
    # ChatTelnetServer sets): an upgrade that changes one fails here.
    for name, value in WRITER_DEFAULTS.items():
        if name != "slc_simulated":
            assert getattr(plain, name, value) == value, name
    before = {name: getattr(lean, name) for name in [*lean.__dict__, *WRITER_DEFAULTS]}
    size = sys.getsizeof(lean.__dict__)
    compact(lean)
    # What is made on first use is read through its descriptor (an empty one was dropped).
    assert {name: getattr(lean, name.removeprefix(MADE_ON_USE)) for name in before} == before
    assert sys.getsizeof(lean.__dict__) < size
    lean.mccp2_active = True  # a write is the instance's own again
    assert lean.mccp2_active and not make(LeanTelnetWriter).mccp2_active


async def test_a_sessions_protocol_is_compacted(app: App) -> None:
    client = await RawClient.connect(app.port)
    try:
        await client.login("ann")
        (transport,) = app.sessions.values()
        protocol = transport.get_protocol()
        assert isinstance(protocol, ChatTelnetServer)
        for name in PROTOCOL_DEFAULTS:
            assert name not in protocol.__dict__, name
        plain = telnetlib3.TelnetServer(encoding="utf8", encoding_errors="replace", force_binary=True, line_mode=True)
        for name, value in PROTOCOL_DEFAULTS.items():
            # Ours: the factories, the door, and the stand-in for negotiation's futures (`settle`).
            if not name.startswith(("_reader_factory", "_writer_factory", "door", "_waiter_connected", "waiter_")):
                assert getattr(plain, name) == value == getattr(protocol, name), name
        # At most 21 entries: a dict of 22 takes 832 bytes, of 21 464 (see `compact`).
        assert len(protocol.__dict__) <= 21, sorted(protocol.__dict__)
        assert len(protocol.writer.__dict__) <= 21, sorted(protocol.writer.__dict__)
    finally:
        await client.close()


async def test_a_protocols_own_handlers_are_looked_up_not_held(app: App) -> None:
    """telnetlib3's server registers eight of its methods on each writer as it connects:
    every connection's tables answer with its own protocol's, holding none."""
    clients = [await RawClient.connect(app.port) for _ in range(2)]
    try:
        for protocol in [transport.get_protocol() for transport in app.sessions.values()]:
            writer = protocol.writer
            for table, cmd, name in [
                ("_ext_callback", NAWS, "on_naws"),
                ("_ext_callback", TTYPE, "on_ttype"),
                ("_ext_offer_callback", NEW_ENVIRON, "on_request_environ"),
            ]:
                handler = getattr(writer, table)[cmd]
                assert handler.__self__ is protocol and handler.__name__ == name
            held = [f for t in TABLES for f in dict.values(getattr(writer, t))]
            assert all(getattr(f, "__self__", None) is not protocol for f in held), held
        # A writer of no such protocol still answers with its own handlers.
        bare = make(LeanTelnetWriter)
        assert bare._ext_callback[NAWS].__func__ is TelnetWriterUnicode.handle_naws
    finally:
        for client in clients:
            await client.close()


def given(transport: asyncio.Transport) -> dict[str, Any]:
    """The keywords telnetlib3's protocol makes each writer with."""
    protocol = ChatTelnetServer(encoding="utf8", encoding_errors="replace", force_binary=True, line_mode=True)
    return {
        "transport": transport,
        "protocol": protocol,
        "reader": None,
        "server": True,
        "fn_encoding": protocol.encoding,
        "encoding_errors": "replace",
    }


def made(transport: asyncio.Transport) -> Any:
    return LeanTelnetWriter(**given(transport))


def by_init(transport: asyncio.Transport) -> Any:
    """A writer made by telnetlib3's __init__, past the recipe."""
    return type.__call__(LeanTelnetWriter, **given(transport))


def state(writer: Any) -> dict[str, Any]:
    """What a writer holds, by attribute: its own values, with the writer itself replaced."""
    return {
        name: (type(value), dict(value)) if isinstance(value, dict) else value
        for name, value in writer.__dict__.items()
        # The context __init__ makes, the recipe leaves to be made on first use (`ctx`).
        if name not in ("_transport", "_protocol", "fn_encoding", "_leanctx")
    }


async def test_writers_made_by_the_recipe_are_those_init_makes() -> None:
    transport = Transport()
    made(transport)  # the first (in this process) teaches the recipe
    assert LeanTelnetWriter._recipe is not None, "telnetlib3's writer __init__ changed"
    first, second, third = by_init(transport), made(transport), made(transport)
    for writer in (first, second, third):
        compact(writer)
    assert state(second) == state(first)
    for name, value in second.__dict__.items():
        if isinstance(value, dict | list):  # made for each writer, not shared
            assert value is not third.__dict__[name], name
    # Each option table tells its own writer of a change, as telnetlib3's Option does.
    told: list[int] = []
    second._check_waiters = lambda: told.append(1)
    for count, table in enumerate(("local_option", "remote_option", "pending_option"), 1):
        getattr(second, table)[NAWS] = True
        assert len(told) == count and getattr(second, table).enabled(NAWS)
        dict.clear(getattr(second, table))
    del second._check_waiters
    assert second._iac_callback[TM].__self__ is second
    assert second.ctx is not third.ctx and second.ctx.gmcp_data == {}
    # They negotiate alike: the same answers to the same commands.
    answers: list[list[bytes]] = []
    for writer in (first, second):
        sent: list[bytes] = []
        writer.send_iac = sent.append
        for byte in b"\xff\xfb\x1f\xff\xfd\x01\xff\xfa\x1f\x00\x50\x00\x18\xff\xf0":
            writer.feed_byte(bytes([byte]))
        answers.append(sent)
    assert answers[0] == answers[1] and answers[0]
    assert first.remote_option == second.remote_option and first.local_option == second.local_option


async def test_an_unknown_attribute_leaves_init_to_make_every_writer() -> None:
    keywords = given(Transport())
    writer = type.__call__(LeanTelnetWriter, **keywords)
    assert learn(writer, keywords) is not None
    writer.__dict__["_something_new"] = object()  # what a telnetlib3 upgrade might add
    assert learn(writer, keywords) is None
