"""MSSP, the MUD Server Status Protocol: what MUD listing crawlers ask about a server.

Sent as telnet option 70 to clients that accept it, and as plain text lines in reply to a
`MSSP-REQUEST` line from crawlers that do not speak telnet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from telnetlib3.telopt import IAC, MSSP, SB, SE

from telchat import __version__
from telchat.chat.rooms import Chat

MSSP_VAR = b"\x01"
MSSP_VAL = b"\x02"
REQUEST = "MSSP-REQUEST"

# The fixed part: what telchat is and supports (1 = yes, 0 = no; "-1" = not applicable).
_STATIC = {
    "CODEBASE": f"telchat {__version__}",
    "CRAWL DELAY": "-1",
    "FAMILY": "Custom",
    "GENRE": "None",
    "GAMEPLAY": "Social",
    "STATUS": "Live",
    "GAMESYSTEM": "None",
    "LANGUAGE": "English",
    "MINIMUM AGE": "0",
    "ANSI": "1",
    "GMCP": "1",
    "MSDP": "0",
    "MCCP": "0",
    "MCP": "0",
    "MSP": "0",
    "MXP": "0",
    "PUEBLO": "0",
    "UTF-8": "1",
    "VT100": "1",
    "XTERM 256 COLORS": "0",
    "PAY TO PLAY": "0",
    "PAY FOR PERKS": "0",
    "HIRING BUILDERS": "0",
    "HIRING CODERS": "0",
}


@dataclass(slots=True)
class ServerStatus:
    """What the server says about itself; the app fills in the ports it listens on."""

    chat: Chat
    name: str
    port: int = 0
    tls_port: int | None = None
    started: int = field(default_factory=lambda: int(time.time()))

    def variables(self) -> dict[str, str]:
        values = {
            "NAME": self.name,
            "PLAYERS": str(len(self.chat.nicks)),
            "UPTIME": str(self.started),
            "PORT": str(self.port),
            "ROOMS": str(len(self.chat.rooms)),
            **_STATIC,
        }
        if self.tls_port is not None:
            values["SSL"] = str(self.tls_port)
        return values


def frame(values: dict[str, str]) -> bytes:
    payload = b"".join(MSSP_VAR + key.encode() + MSSP_VAL + value.encode() for key, value in values.items())
    return IAC + SB + MSSP + payload.replace(IAC, IAC + IAC) + IAC + SE


def plaintext(values: dict[str, str]) -> list[str]:
    return ["MSSP-REPLY-START", *(f"{key}\t{value}" for key, value in values.items()), "MSSP-REPLY-END"]
