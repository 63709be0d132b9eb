"""Nick and room rules, without sockets."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telchat.rules.names import NameError_, check_nick, check_room, lookalikes, nick_key, skeleton

INVISIBLE_OR_FORMAT = set(
    "\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2066\u2067\u2068\u2069"
    "\ufeff\u00ad\u180e\u061c\u115f\u1160\u3164\uffa0\u034f\U000e0041"
)


@pytest.mark.parametrize("nick", ["frank", "фрэнк", "a", "a" * 24, "Bob_2-x", "Ζεύς", "ｆｒａｎｋ"])
def test_valid_nicks(nick: str) -> None:
    check_nick(nick)


@pytest.mark.parametrize(
    "nick",
    [
        *["", "1a", "_a", "a" * 25, "fr\u0430nk", "a b", "a\u200bb", "a!", "admin", "System", "a\u0663"],
        *["\u202ebob", "bob\u2066", "b\u00adob", "\ufeffbob", "bo\u200db", "\u3164", "bob\u3164", "\uffa0bob"],
    ],
)
def test_invalid_nicks(nick: str) -> None:
    with pytest.raises(NameError_):
        check_nick(nick)


def test_fullwidth_nick_is_normalized() -> None:
    assert check_nick("ｆｒａｎｋ") == "frank"


def test_lookalike_keys_collide() -> None:
    assert nick_key("рас") == nick_key("PAC")


# Greek capitals that read as Latin ones, and a capital I that reads as a small L.
LOOKALIKES = [
    ("MAX", "\u039c\u0391\u03a7"),
    ("TONY", "\u03a4\u039f\u039d\u03a5"),
    ("ZEKE", "\u0396\u0395\u039a\u0395"),
    ("HANK", "\u0397\u0391\u039d\u039a"),
    ("NIKO", "\u039d\u0399\u039a\u039f"),
    ("alice", "aIice"),
]


@pytest.mark.parametrize(("nick", "spoof"), LOOKALIKES)
def test_lookalikes_share_a_key(nick: str, spoof: str) -> None:
    check_nick(spoof)
    assert lookalikes(nick) & lookalikes(spoof)


@pytest.mark.parametrize(("one", "other"), [("alice", "ALICE"), ("Ζεύς", "ΖΕΎΣ"), ("frank", "Frank")])
def test_case_is_not_identity(one: str, other: str) -> None:
    assert nick_key(one) == nick_key(other)


@pytest.mark.parametrize(("one", "other"), [("alice", "alike"), ("bob", "rob"), ("max", "rnix")])
def test_different_nicks_stay_different(one: str, other: str) -> None:
    assert not lookalikes(one) & lookalikes(other)


def test_skeleton_follows_uts39() -> None:
    # confusables.txt: 0049 (I) -> 006C (l), 0030 (0) -> 004F (O), 006D (m) -> 0072 006E (rn).
    assert skeleton("I0m") == "lOrn"


@pytest.mark.parametrize("room", ["frank_talk", "#frank_talk", "a.b-c_d", "комната", "x" * 32])
def test_valid_rooms(room: str) -> None:
    assert check_room(room) == room.removeprefix("#")


@pytest.mark.parametrize(
    "room", ["", "#", "x" * 33, "a b", "a/b", "a#b", "\x1b[31m", "lob\u200bby", "\u202elobby", "lobby\u3164", "\u3164"]
)
def test_invalid_rooms(room: str) -> None:
    with pytest.raises(NameError_):
        check_room(room)


def _is_invisible(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "Me") or ch in "\u115f\u1160\u3164\uffa0"


@given(st.text(max_size=30))
def test_an_accepted_nick_is_visible_letters_digits_and_dashes(raw: str) -> None:
    try:
        nick = check_nick(raw)
    except NameError_:
        return
    assert nick and not any(_is_invisible(ch) for ch in nick)
    assert all(ch.isalpha() or ch.isdigit() or ch in "_-" for ch in nick)
    assert check_nick(nick) == nick


@given(st.text(max_size=40))
def test_an_accepted_room_is_visible(raw: str) -> None:
    try:
        room = check_room(raw)
    except NameError_:
        return
    assert room and not any(_is_invisible(ch) for ch in room)
    assert check_room(room) == room


@given(st.sampled_from(["bob", "alice", "frank"]), st.sampled_from(sorted(INVISIBLE_OR_FORMAT)), st.integers(0, 5))
def test_an_invisible_character_never_makes_a_new_nick(nick: str, extra: str, at: int) -> None:
    spoof = nick[:at] + extra + nick[at:]
    try:
        accepted = check_nick(spoof)
    except NameError_:
        return
    # Only normalization may let it through, and then it is the same nick.
    assert nick_key(accepted) == nick_key(nick)
