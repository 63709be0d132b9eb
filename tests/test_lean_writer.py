"""LeanTelnetWriter answers every lookup as telnetlib3's own writer does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from telnetlib3.stream_writer import TelnetWriterUnicode
from telnetlib3.telopt import GMCP, NAWS, NOP, TM, TTYPE

from telchat.telnet.internals import LeanTelnetWriter

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
