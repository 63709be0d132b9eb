"""What travels from the room manager, through a store, back to the room manager(s).

A store commits an Event (messages go into history) and only then hands it to every
node's `deliver` callback; the room manager turns it into lines for its local users.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

import orjson

MessageKind = Literal["say", "emote"]
# Instructions for every node; features/ register a handler for each in `Chat.controls`.
ControlKind = Literal["kick", "ban", "mute", "topic", "whois", "registered", "account_join", "account_leave"]
Kind = Literal[MessageKind, "notice", "private", ControlKind]
KINDS: frozenset[str] = frozenset(get_args(Kind))  # nested Literals are flattened

SAY: Final = "say"
EMOTE: Final = "emote"
NOTICE: Final = "notice"
PRIVATE: Final = "private"

HISTORY_KINDS: frozenset[str] = frozenset({SAY, EMOTE})

# Orders history entries within a room; (0, 0) means "not committed yet" / "before anything".
EntryId = tuple[int, int]
NO_ID: EntryId = (0, 0)


@dataclass(frozen=True, slots=True)
class Event:
    kind: Kind
    text: str
    room: str = ""
    room_name: str = ""
    nick: str = ""
    # Notices: room keys whose members see it, a nick key that sees it, or everyone.
    rooms: tuple[str, ...] = ()
    target: str = ""
    everyone: bool = False
    ts: float = field(default_factory=time.time)
    id: EntryId = NO_ID

    @property
    def in_history(self) -> bool:
        return self.kind in HISTORY_KINDS

    def with_id(self, entry_id: EntryId) -> Event:
        """This event as committed under `entry_id`. Positional, in field order: stores call
        this once per message, and dataclasses.replace costs 2.5 times as much."""
        return Event(
            self.kind,
            self.text,
            self.room,
            self.room_name,
            self.nick,
            self.rooms,
            self.target,
            self.everyone,
            self.ts,
            entry_id,
        )


def message(kind: MessageKind, room: str, room_name: str, nick: str, text: str) -> Event:
    return Event(kind, text, room=room, room_name=room_name, nick=nick)


def notice(
    text: str, *, rooms: tuple[str, ...] = (), target: str = "", everyone: bool = False, nick: str = ""
) -> Event:
    """A `***` line for rooms (or `target`'s sessions, or everyone); `nick`: whom it is about."""
    return Event(NOTICE, text, nick=nick, rooms=rooms, target=target, everyone=everyone)


def private(sender: str, target_key: str, text: str) -> Event:
    return Event(PRIVATE, text, nick=sender, target=target_key)


def control(kind: ControlKind, target: str = "", **args: Any) -> Event:
    """An instruction for every node rather than a line for users (kick, ban, mute, ...).

    Its arguments travel as JSON in `text`, so any store carries it unchanged."""
    return Event(kind, orjson.dumps(args).decode(), target=target)


def kind_of(value: str) -> Kind:
    """`value` as an event kind; ValueError for one this version does not know."""
    if value not in KINDS:
        raise ValueError(f"unknown event kind {value!r}")
    return value  # type: ignore[return-value]  # checked against KINDS just above


def carry(event: Event) -> list[Any]:
    """`event` as plain data (a server upgrade carries a memory store's history)."""
    return [event.kind, event.text, event.room, event.room_name, event.nick, list(event.rooms),
            event.target, event.everyone, event.ts, list(event.id)]  # fmt: skip


def uncarry(data: list[Any]) -> Event:
    kind, text, room, room_name, nick, rooms, target, everyone, ts, entry_id = data
    return Event(kind_of(kind), text, room, room_name, nick, tuple(rooms), target, everyone, ts, tuple(entry_id))


def control_args(event: Event) -> dict[str, Any]:
    args = orjson.loads(event.text)
    return args if isinstance(args, dict) else {}
