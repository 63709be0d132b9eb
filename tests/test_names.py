"""Nick and room rules, without sockets."""

from __future__ import annotations

import pytest

from telchat.names import NameError_, check_nick, check_room, nick_key


@pytest.mark.parametrize("nick", ["frank", "фрэнк", "a", "a" * 24, "Bob_2-x", "Ζεύς", "ｆｒａｎｋ"])
def test_valid_nicks(nick: str) -> None:
    check_nick(nick)


@pytest.mark.parametrize(
    "nick", ["", "1a", "_a", "a" * 25, "fr\u0430nk", "a b", "a\u200bb", "a!", "admin", "System", "a\u0663"]
)
def test_invalid_nicks(nick: str) -> None:
    with pytest.raises(NameError_):
        check_nick(nick)


def test_fullwidth_nick_is_normalized() -> None:
    assert check_nick("ｆｒａｎｋ") == "frank"


def test_lookalike_keys_collide() -> None:
    assert nick_key("рас") == nick_key("PAC")


@pytest.mark.parametrize("room", ["frank_talk", "#frank_talk", "a.b-c_d", "комната", "x" * 32])
def test_valid_rooms(room: str) -> None:
    assert check_room(room) == room.removeprefix("#")


@pytest.mark.parametrize("room", ["", "#", "x" * 33, "a b", "a/b", "a#b", "\x1b[31m"])
def test_invalid_rooms(room: str) -> None:
    with pytest.raises(NameError_):
        check_room(room)
