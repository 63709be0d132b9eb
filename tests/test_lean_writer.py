"""LeanTelnetWriter answers every lookup as telnetlib3's own writer does."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
import telnetlib3
from telnetlib3.stream_writer import TelnetWriterUnicode
from telnetlib3.telopt import GMCP, NAWS, NOP, TM, TTYPE

from telchat.app import App
from telchat.telnet.internals import WRITER_DEFAULTS, LeanTelnetWriter, compact
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
            assert cmd in got
            assert got[cmd].__func__ is handler.__func__ and got[cmd].__self__ is lean
            assert got.get(cmd).__func__ is handler.__func__
        assert b"\x00\x01" not in got and got.get(b"\x00\x01") is None
        with pytest.raises(KeyError):
            got[b"\x00\x01"]
        assert not dict.__len__(got), f"{table} holds bound methods"
    assert "_lean_slctab" in lean.__dict__ and lean.__dict__["_lean_slctab"] is None
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
    assert {name: getattr(lean, name) for name in before} == before
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
            if not name.startswith(("_reader_factory", "_writer_factory", "door")):  # ours
                assert getattr(plain, name) == value == getattr(protocol, name), name
        assert len(protocol.writer.__dict__) <= 42  # the dict's smaller size (see `compact`)
    finally:
        await client.close()
