"""GMCP for MUD clients: the room manager's events as Comm.Channel.* messages.

Frames are queued on the user's Outbox like text lines, so they keep their order with the
text and count against the slow-reader limit. Payloads are UTF-8 JSON whatever the user's
charset, as GMCP requires.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson
from telnetlib3.telopt import GMCP, IAC, SB, SE

from telchat import __version__
from telchat.chat.observers import Players
from telchat.chat.outbox import Outbox
from telchat.chat.rooms import Chat, User, players_of
from telchat.obs.logs import get_logger

log = get_logger(__name__)


def frame(package: str, data: Any = None) -> bytes:
    payload = package.encode() if data is None else package.encode() + b" " + orjson.dumps(data)
    return IAC + SB + GMCP + payload.replace(IAC, IAC + IAC) + IAC + SE


# A member's player list is sent at most this often (the latest one, after the last change).
PLAYERS_INTERVAL = 1.0


class GmcpEvents:
    """A user's events sink (observers.ChatEvents) that speaks GMCP.

    `Comm.Channel.Players` is the whole list of who shares a room with the user, so sending
    it on every join and leave costs each member the room's size per change: one user
    joining and leaving at the flood rate would send a room of 400 GMCP members megabytes a
    second. Changes are coalesced instead: the latest list goes out at once (the next loop
    turn) if none went out in the last `PLAYERS_INTERVAL` seconds, else when that is over.
    The list is built then, not at each change: a flood of joins and leaves costs each
    member one list a second, not one per change.
    """

    __slots__ = ("_due", "_outbox", "_players", "_sent_at")

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._players: Callable[[], Players] | None = None
        self._due: asyncio.TimerHandle | None = None
        self._sent_at = -PLAYERS_INTERVAL

    def send(self, package: str, data: Any = None) -> None:
        self._outbox.push(frame(package, data))

    def channels(self, rooms: list[str]) -> None:
        # No "command": a client sends it followed by the text to speak in that channel, and
        # telchat has no command that speaks in a room other than the current one.
        self.send("Comm.Channel.List", [{"name": r, "caption": f"#{r}"} for r in rooms])

    def channel_text(self, channel: str, talker: str, text: str) -> None:
        self.send("Comm.Channel.Text", {"channel": channel, "talker": talker, "text": text})

    def players(self, players: Callable[[], Players]) -> None:
        self._players = players
        if self._due is None:
            loop = asyncio.get_running_loop()
            wait = max(0.0, self._sent_at + PLAYERS_INTERVAL - loop.time())
            self._due = loop.call_later(wait, self._send_players)

    def players_now(self, players: Callable[[], Players]) -> None:
        """The client asked: the list now, and nothing pending after it."""
        self._players = players
        self._send_players()

    def close(self) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None

    def _send_players(self) -> None:
        self.close()
        players, self._players = self._players, None
        if players is not None:
            self._sent_at = asyncio.get_running_loop().time()
            self.send("Comm.Channel.Players", [{"name": nick, "channels": rooms} for nick, rooms in players()])


def start(chat: Chat, user: User, greet: bool = True) -> GmcpEvents:
    """The client enabled GMCP: greet it and start telling it about the user's rooms
    (not `greet`: it was told everything before a server upgrade; only go on, with one
    players list: a change the old image held back for `PLAYERS_INTERVAL` went with it)."""
    sink = GmcpEvents(user.outbox)
    if greet:
        sink.send("Core.Hello", {"name": "telchat", "version": __version__})
    chat.attach_events(user, sink, greet)
    if not greet:
        sink.players(partial(players_of, user))
    return sink


def receive(sink: GmcpEvents, user: User, package: str, data: Any) -> None:
    """Answer what a client asks for over GMCP; anything else is only logged."""
    name = package.lower()
    if name == "comm.channel.players":
        sink.players_now(partial(players_of, user))
    elif name == "core.ping":
        sink.send("Core.Ping")
    elif name == "core.hello" and isinstance(data, dict):
        client, version = str(data.get("client", "")), str(data.get("version", ""))
        log.info("gmcp_hello", **user.identity, client=client, version=version)
    else:
        log.debug("gmcp_ignored", **user.identity, package=package)
