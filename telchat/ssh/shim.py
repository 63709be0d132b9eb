"""The telnet client's half, in-process: what the SSH user's terminal would answer.

The SSH door runs a `ChatTelnetServer` like every door, so the session gets the telnet
stack's negotiation, client class and character-mode line editor. Nothing on the SSH
side speaks telnet: this shim stands where a telnet terminal would. It answers the
server's options as a character-mode terminal of the PTY's type (DO ECHO, DO SGA, WILL
TTYPE with the PTY's terminal type, WILL NAWS with its size; WONT/DONT to the rest),
passes the text on to the PTY, and turns the user's keystrokes, and PTY size changes, into
telnet input.
"""

from __future__ import annotations

from collections.abc import Callable

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
ECHO, SGA, TTYPE, NAWS = 1, 3, 24, 31
TTYPE_IS, TTYPE_SEND = 0, 1
# Options this side performs (DO -> WILL), and options it lets the server perform (WILL -> DO).
OURS = frozenset({TTYPE, NAWS})
THEIRS = frozenset({ECHO, SGA})

Send = Callable[[bytes], None]


class TelnetShim:
    """Parses what the server writes; `reply` takes telnet bytes back to it, `show` text for the PTY."""

    def __init__(self, term: str, cols: int, rows: int, reply: Send, show: Send) -> None:
        self._term = (term or "unknown").encode("ascii", "replace")
        self._size = (cols, rows)
        self._reply = reply
        self._show = show
        self._state = "data"
        self._command = 0
        self._sub = bytearray()
        self._ours: set[int] = set()
        self._theirs: set[int] = set()

    def from_server(self, data: bytes) -> None:
        if self._state == "data" and IAC not in data:
            self._show(data)  # the common case: plain text
            return
        text = bytearray()
        for byte in data:
            self._step(byte, text)
        if text:
            self._show(bytes(text))

    def from_user(self, data: bytes) -> bytes:
        """The user's bytes as telnet input: 0xFF doubled."""
        return data.replace(b"\xff", b"\xff\xff")

    def resize(self, cols: int, rows: int) -> None:
        self._size = (cols, rows)
        if NAWS in self._ours:
            self._send_size()

    def _step(self, byte: int, text: bytearray) -> None:
        state = self._state
        if state == "data":
            if byte == IAC:
                self._state = "iac"
            else:
                text.append(byte)
        elif state == "iac":
            self._after_iac(byte, text)
        elif state == "option":
            self._negotiate(self._command, byte)
            self._state = "data"
        else:
            self._in_subnegotiation(byte)

    def _after_iac(self, byte: int, text: bytearray) -> None:
        self._state = "data"
        if byte == IAC:
            text.append(IAC)
        elif byte == SB:
            self._sub.clear()
            self._state = "sb"
        elif WILL <= byte <= DONT:
            self._command = byte
            self._state = "option"
        # Anything else (GA, EOR, NOP, a TIMING-MARK's answer) means nothing to a terminal.

    def _in_subnegotiation(self, byte: int) -> None:
        if self._state == "sb":
            if byte == IAC:
                self._state = "sb-iac"
            else:
                self._sub.append(byte)
        elif byte == SE:
            self._subnegotiation(bytes(self._sub))
            self._state = "data"
        else:
            self._sub.append(byte)  # IAC IAC inside a subnegotiation: one 0xFF
            self._state = "sb"

    def _negotiate(self, command: int, option: int) -> None:
        """Answer changes of state only, so that the two sides never loop on an option."""
        if command == DO:
            if option not in OURS:
                self._send(WONT, option)
            elif option not in self._ours:
                self._ours.add(option)
                self._send(WILL, option)
                if option == NAWS:
                    self._send_size()
        elif command == DONT:
            if option in self._ours:
                self._ours.discard(option)
                self._send(WONT, option)
        elif command == WILL:
            if option not in THEIRS:
                self._send(DONT, option)
            elif option not in self._theirs:
                self._theirs.add(option)
                self._send(DO, option)
        elif option in self._theirs:  # WONT
            self._theirs.discard(option)
            self._send(DONT, option)

    def _subnegotiation(self, data: bytes) -> None:
        if data[:2] == bytes([TTYPE, TTYPE_SEND]):
            self._reply(bytes([IAC, SB, TTYPE, TTYPE_IS]) + self._term + bytes([IAC, SE]))

    def _send(self, command: int, option: int) -> None:
        self._reply(bytes([IAC, command, option]))

    def _send_size(self) -> None:
        cols, rows = (min(max(value, 1), 0xFFFF) for value in self._size)
        size = bytes([cols >> 8, cols & 0xFF, rows >> 8, rows & 0xFF]).replace(b"\xff", b"\xff\xff")
        self._reply(bytes([IAC, SB, NAWS]) + size + bytes([IAC, SE]))
