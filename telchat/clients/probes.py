"""Lines that are not chat: a web browser's request and an MSSP crawler's plaintext probe."""

from __future__ import annotations

import re
from typing import Protocol

from telchat.chat.rooms import User
from telchat.clients import mssp
from telchat.obs.limits import EndReason

HTTP_REQUEST = re.compile(r"(?:GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|CONNECT|TRACE|PRI) \S+ HTTP/\d(?:\.\d)?")
NOT_HTTP = "*** This is a telnet chat server, not a web server: connect with a telnet client (telnet HOST PORT)."


class Prober(Protocol):
    user: User

    def quit(self, message: str, reason: EndReason = "quit", farewell: str | None = ...) -> None: ...


class LineProbes:
    """One connection's check of each line before it reaches the commands."""

    __slots__ = ("_first", "_session", "_status")

    def __init__(self, session: Prober, status: mssp.ServerStatus) -> None:
        self._session = session
        self._status = status
        self._first = True

    def __call__(self, text: str) -> bool:
        """Whether `text` was answered here (and so is not a chat line)."""
        first, self._first = self._first, False
        if first and HTTP_REQUEST.fullmatch(text):
            self._session.user.send(NOT_HTTP)
            self._session.quit("http request", reason="http", farewell=None)
            return True
        if text == mssp.REQUEST:
            for line in mssp.plaintext(self._status.variables()):
                self._session.user.send(line)
            return True
        return False
