"""What a connection's client gets besides chat lines, decided once it has negotiated.

- telnet terminals that can move the cursor (inetutils telnet, PuTTY) get character mode:
  the server echoes and edits the input line (lineedit.py) and, when output arrives while
  the person is typing, clears the input line, prints the output and redraws the line;
- MUD clients (TTYPE/MTTS names, or GMCP enabled) keep line mode and no server echo;
  they get GMCP and MSSP when they accept them, and GA or EOR after a prompt;
- telnet terminals that cannot move the cursor (TERM=dumb) keep line mode, out of BINARY;
- raw TCP clients (nc) that answered no negotiation keep line mode, and their bytes are
  taken as they come: 0xFF is a character (cp1251 'я'), not a telnet command.

The Terminal is its connection's output Sink (so it decorates each flush once, never
each line) and, in character mode, its session's line framer.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Any, cast

from telnetlib3.telopt import AYT, BINARY, CMD_EOR, DO, DONT, ECHO, EOR, GA, GMCP, IAC, MSSP, NOP, SGA, TM, WILL, WONT

from telchat.chat.outbox import Sink, encode_text
from telchat.clients import completion, gmcp, mssp
from telchat.clients.probes import LineProbes
from telchat.config import Config
from telchat.rules.lineedit import CLEAR_LINE, LineEditor
from telchat.rules.lines import Oversize
from telchat.rules.plain import sparse
from telchat.session.commands import holds_password
from telchat.session.session import Session
from telchat.telnet.internals import LeanTelnetWriter
from telchat.telnet.liveness import Watchdog, set_user_timeout
from telchat.telnet.protocol import ChatTelnetServer, ClientClass, client_class, input_hider

# TTYPEs that promise nothing about cursor movement: such clients stay in line mode.
NO_CURSOR_TERMS = frozenset({"", "unknown", "dumb", "network"})
# What one editing key is charged to the connection's telnet budget, in bytes of telnet
# commands: about what it costs the server, next to a telnet command's byte (13.1).
EDIT_KEY_COST = 16
# Undecodable input kept for the charset guess, at most (a line's worth).
UNDECODED_KEPT = 256
# What a client dropped by the liveness check is told (if it is still there to read it).
PING_TIMEOUT = "*** Your client did not answer the server's ping within {seconds} s; disconnecting."
# The answer to telnet's Are You There (IAC AYT).
HERE = "*** Yes: telchat is here."
# What the line editor takes for Ctrl-C, and telnet's Interrupt Process (IAC IP) is.
CANCEL = "\x03"


def writes_unchanged(carried: dict[str, Any]) -> bool:
    """Whether a terminal carried over an upgrade (its `snapshot`) writes its session's
    output as it is (`Terminal._plain`) and sends nothing of its own meanwhile: a line-mode
    telnet or MUD client without an editor or GMCP. Such a session's output can go straight
    to its socket before the Terminal is built again (telnet/dormant.py)."""
    plain = carried.get("client_class") in ("telnet", "mud") and carried.get("editor") is None
    return plain and not carried.get("gmcp")


class Terminal:
    __slots__ = (
        "_config",
        "_decoder",
        "_decoder_charset",
        "_editor",
        "_gmcp",
        "_hide_line_mode",
        "_inner",
        "_mark",
        "_plain",
        "_prompt_room",
        "_prompting",
        "_protocol",
        "_session",
        "_status",
        "_undecoded",
        "_watchdog",
        "_writer",
        "character_mode",
        "client_class",
        "term",
    )

    def __init__(
        self,
        protocol: ChatTelnetServer,
        config: Config,
        status: mssp.ServerStatus,
        carried: dict[str, Any] | None = None,
    ) -> None:
        self._protocol = protocol
        self._writer = cast(LeanTelnetWriter, protocol.writer)
        self._config = config
        self._status = status
        # A terminal carried over an upgrade keeps the class its session began with (and
        # skips telnetlib3's fingerprinting); an older image's record does not hold it.
        self.client_class: ClientClass = (carried or {}).get("client_class") or client_class(protocol)
        self.term = str(protocol.get_extra_info("TERM") or "")
        self.character_mode = self.client_class == "telnet" and self.term.lower() not in NO_CURSOR_TERMS
        self._editor = (
            LineEditor(int(protocol.get_extra_info("cols") or 80), max_bytes=config.max_line_bytes)
            if self.character_mode
            else None
        )
        if self._editor is not None:
            self._editor.complete = self._complete
            self._editor.private = holds_password
        self._prompt_room: str | None = None
        self._inner: Sink | None = None
        self._session: Session | None = None
        self._decoder: codecs.IncrementalDecoder | None = None
        self._decoder_charset = ""
        self._watchdog: Watchdog | None = None
        self._gmcp: gmcp.GmcpEvents | None = None
        # Input bytes of the line being typed that did not decode (for Session.check_charset).
        self._undecoded = b""
        self._hide_line_mode = input_hider(protocol)
        # A line-mode telnet client's output needs no decoration: the common case, written
        # without looking at anything else.
        self._plain = self._editor is None and self.client_class != "raw"
        # The end-of-output mark (EOR or GA) that follows a prompt, and only a prompt: every
        # other line ends in CR LF, and a mark after it is a blank line in TinTin++. Depends
        # on negotiated options only, so kept up to date as they change.
        self._mark = self._end_of_output()
        self._prompting = False
        protocol.hooks = self

    @property
    def protocol(self) -> ChatTelnetServer:
        return self._protocol

    @property
    def mode(self) -> str:
        return "character" if self.character_mode else "line"

    # output: the session's Sink

    def wrap(self, inner: Sink) -> Terminal:
        self._inner = inner
        return self

    def write(self, data: bytes) -> int:
        assert self._inner is not None and self._session is not None
        if self._prompting:
            self._prompting = False
            data += self._mark
        if self._plain:
            return self._inner.write(data)
        editor = self._editor
        if self._protocol.passthrough:
            if self._session.user.charset != "utf-8":
                # A raw client is not a telnet peer: undo the IAC doubling of single-byte charsets.
                data = data.replace(b"\xff\xff", b"\xff")
        elif editor is not None and editor.typing and self.echoing and not editor.secret:
            self._sync_prompt(editor)
            # A session's last words (a quit, a kick, an upgrade's farewell) leave no
            # half-typed line drawn after them.
            redraw = "" if self._session.closing else editor.redraw()
            data = self._encode(CLEAR_LINE) + data + self._encode(redraw)
        return self._inner.write(data)

    def buffered(self) -> int:
        assert self._inner is not None
        return self._inner.buffered()

    @property
    def echoing(self) -> bool:
        """Whether the client let us echo (it answered DO ECHO to our WILL ECHO)."""
        return bool(self._writer.local_option.enabled(ECHO))

    # TerminalHooks: what the connection tells this terminal.

    def options_changed(self) -> None:
        self._mark = self._end_of_output()
        if self._editor is not None and self._session is not None and self._echo_refused():
            # Switched to line mode by its user (DONT ECHO): the client echoes now, and in
            # BINARY inetutils telnet echoes Enter as a bare line feed.
            self._leave_binary()

    def _echo_refused(self) -> bool:
        """The client said DONT ECHO (before our WILL ECHO, the option is not in the table;
        while it is being answered, pending)."""
        writer = self._writer
        return ECHO in writer.local_option and not self.echoing and not writer.pending_option.enabled(WILL + ECHO)

    def echoes(self) -> bool:
        """The line editor echoes what is typed; in line mode, no one but the client does."""
        return self._editor is not None

    def command(self, cmd: bytes) -> None:
        """Interrupt Process is Ctrl-C: the line being typed is dropped (a line-mode client
        drops its own line before it sends one). Are You There is answered."""
        if self._session is None:
            return
        if cmd == AYT:
            self._session.user.send(HERE)
        elif self._editor is not None:
            output = self._editor.feed(CANCEL).output
            if output and self.echoing:
                self._echo(output)

    def timing_mark(self) -> None:
        if self._watchdog is not None:
            self._watchdog.answered()

    def _end_of_output(self) -> bytes:
        if self.client_class == "raw":
            return b""
        if self._writer.local_option.enabled(EOR):
            return IAC + CMD_EOR
        if self.client_class == "mud" and not self._writer.local_option.enabled(SGA):
            return IAC + GA
        return b""

    def _encode(self, text: str) -> bytes:
        assert self._session is not None
        return encode_text(text, self._session.user.charset)

    # input: the session's framer in character mode

    def feed(self, data: bytes) -> Sequence[str | Oversize]:
        assert self._editor is not None and self._session is not None
        charset = self._session.user.charset
        editor = self._editor
        if self._decoder is None or charset != self._decoder_charset:
            self._decoder = codecs.getincrementaldecoder(charset)("replace")
            self._decoder_charset = charset
            editor.set_charset(charset)
        moved = self._sync_prompt(editor)
        text = self._decoder.decode(data)
        if "\ufffd" in text and len(self._undecoded) < UNDECODED_KEPT:
            self._undecoded += data
        result = editor.feed(text)
        if result.lines and self._undecoded:
            # Typed a key at a time, a line's worth of bytes says more than any one key.
            self._session.check_charset(self._undecoded)
            self._undecoded = b""
        output = moved + result.output
        if output and self.echoing and not editor.secret:
            self._echo(output)
        guard = self._protocol.guard
        if result.keys and guard is not None:
            # Editing keys cost the server work (a redraw each, a history step copies a
            # line): they are paced with the telnet commands, not free.
            guard.charge(result.keys * EDIT_KEY_COST)
        return [self._checked(line, charset) for line in result.lines]

    @property
    def pending(self) -> int:
        """Bytes typed into the current line, not yet committed."""
        return self._editor.length if self._editor is not None else 0

    def _sync_prompt(self, editor: LineEditor) -> str:
        """Keep the input line's prompt on the current room; the redraw that needs."""
        current = self._session.user.current if self._session is not None else None
        room = current.name if current is not None else None
        if room == self._prompt_room:
            return ""
        self._prompt_room = room
        return editor.set_prompt(f"[#{room}] " if room is not None else "")

    def _complete(self, before: str, word: str) -> list[str]:
        assert self._session is not None
        return completion.candidates(self._session.chat, self._session.user, before, word)

    def hide_input(self, hidden: bool) -> bool:
        """Stop (or resume) showing what the user types: for a password prompt, which the
        next write carries. Whether this client can: a raw one echoes by itself."""
        self._prompting = hidden
        if self._editor is not None:
            # We do the echoing in character mode: simply echo nothing, and keep no history.
            # Nor a line end after the answer: the prompt ended its own line, and the hidden
            # answer left that next line empty for what the server says next.
            self._editor.secret = hidden
        else:
            self._hide_line_mode(hidden)
        return self.client_class != "raw"

    def _checked(self, line: str, charset: str) -> str | Oversize:
        length = len(line.encode(charset, "replace"))
        return Oversize(length) if length > self._config.max_line_bytes else line

    def _echo(self, text: str) -> None:
        assert self._inner is not None
        self._inner.write(self._encode(text))

    def resized(self, cols: int) -> None:
        # Followed from `attach` on, for clients that speak telnet.
        if self._session is None or self.client_class == "raw":
            return
        self._session.user.columns = cols
        if self._editor is not None and self.echoing:
            output = self._editor.resize(cols)
            if output:
                self._echo(output)

    # lifecycle

    def snapshot(self) -> dict[str, Any]:
        """What this terminal keeps beyond the telnet options, as plain data (an upgrade
        carries it), what is empty left out."""
        state = {
            "editor": self._editor.snapshot() if self._editor is not None else None,
            "gmcp": self._gmcp is not None,
            "undecoded": self._undecoded.decode("latin-1"),
            "prompt_room": self._prompt_room,
            "client_class": self.client_class,
            "liveness": self._watchdog.snapshot() if self._watchdog is not None else None,
        }
        return sparse(state, "editor", "gmcp", "undecoded", "prompt_room", "liveness")

    def attach(self, session: Session, carried: dict[str, Any] | None = None) -> None:
        """Set the connection up for its client class; call before `session.start()`. A
        terminal `carried` over a server upgrade (its `snapshot`) was set up then: it only
        takes up where it was."""
        self._session = session
        session.intercept = LineProbes(session, self._status)
        if self.client_class == "raw":
            self._protocol.passthrough = True
            return
        writer = self._writer
        # What the server wraps to the window (help): NAWS, kept up to date by `_resize`.
        session.user.columns = int(self._protocol.get_extra_info("cols") or session.user.columns)
        if self.client_class == "telnet" and not self.character_mode and carried is None:
            self._leave_binary()
        if self.character_mode:
            if self._protocol.guard is not None:
                self._protocol.guard.edited = True
            if carried is None:
                writer.iac(WILL, SGA)
                writer.iac(WILL, ECHO)
            elif self._editor is not None and carried.get("editor") is not None:
                self._editor.restore(carried["editor"])
                self._undecoded = str(carried.get("undecoded", "")).encode("latin-1")
                self._prompt_room = carried.get("prompt_room")
                # A window resized during the upgrade: its NAWS, kept by the old image and
                # handed on before this terminal was built, was not heard by it.
                self.resized(session.user.columns)
            session.set_framer(self)
        self._start_gmcp(session, carried is None or bool(carried.get("gmcp")), carried is None)
        if carried is None and writer.local_option.enabled(MSSP):
            session.user.outbox.push(mssp.frame(self._status.variables()))
        self._start_watchdog(carried.get("liveness") if carried is not None else None)

    def _start_watchdog(self, carried: dict[str, Any] | None) -> None:
        # The watchdog calls this terminal back (`Watched`): no callbacks held per session.
        self._watchdog = watchdog = Watchdog(
            self, ping_after=self._config.idle_ping, answer_within=self._config.idle_timeout
        )
        if carried is not None:
            watchdog.restore(carried)
        watchdog.start()

    # Watched (the liveness watchdog's view of this connection)

    def idle(self) -> float:
        return float(self._protocol.idle)

    def ping(self) -> None:
        self._writer.iac(DO, TM)

    def nop(self) -> None:
        self._writer.send_iac(IAC + NOP)

    def deaf(self) -> None:
        set_user_timeout(self._writer.transport, self._config.idle_timeout)

    def expire(self) -> None:
        assert self._session is not None
        farewell = PING_TIMEOUT.format(seconds=f"{self._config.idle_timeout:g}")
        self._session.quit("ping timeout", reason="ping_timeout", farewell=farewell)

    def _leave_binary(self) -> None:
        """A terminal that stays in line mode cooks its own input and output, and in BINARY
        (which it agrees to, and asks for in return) inetutils telnet stops turning the
        Enter it echoes into CR LF: a staircase. UTF-8 passes without BINARY, so turn it off."""
        writer = self._writer
        if writer.local_option.enabled(BINARY):
            writer.iac(WONT, BINARY)
        if writer.remote_option.enabled(BINARY):
            writer.iac(DONT, BINARY)

    def _start_gmcp(self, session: Session, now: bool, greet: bool) -> None:
        """Answer GMCP, and start it `now` if it is enabled (`greet`: with Core.Hello and
        the user's rooms and players; not for a session carried over an upgrade)."""
        self._writer.set_ext_callback(GMCP, self._on_gmcp)
        if now and self._gmcp_enabled():
            self._gmcp = gmcp.start(session.chat, session.user, greet)

    def _gmcp_enabled(self) -> bool:
        writer = self._writer
        return bool(writer.local_option.enabled(GMCP) or writer.remote_option.enabled(GMCP))

    def _on_gmcp(self, package: str, data: Any) -> None:
        session = self._session
        assert session is not None
        if self._gmcp is None and self._gmcp_enabled():
            self._gmcp = gmcp.start(session.chat, session.user)
        if self._gmcp is not None:
            gmcp.receive(self._gmcp, session.user, package, data)

    def detach(self) -> None:
        if self._gmcp is not None:
            self._gmcp.close()
        if self._watchdog is not None:
            self._watchdog.stop()
        self._protocol.hooks = None
