"""telnetlib3's private internals that telchat relies on, in one place.

Checked against telnetlib3 5.0.1 (pinned in requirements.txt). Re-check every name here
when upgrading it: `TelnetReader._buffer`, `_eof`, `_exception`, `_wakeup_waiter`,
`_waiter`, `_paused` and `_transport` (`read_chunk` waits as `_wait_for_data` does);
`TelnetWriter`'s `_iac_callback`, `_slc_callback`, `_ext_callback`,
`_ext_send_callback`, `_ext_offer_callback` tables, `_check_waiters`, `slctab` and
`default_slc_tab`; `handle_will`, `handle_do`, `handle_wont` and `handle_subnegotiation`
(overridden here: the options agreed to, TIMING-MARK answers, malformed subnegotiations),
`pending_option`; `Option` (its `name`, `log`, `_on_change`, `enabled` and `__setitem__`, which
`LeanOption` does as it does) and `TelnetSessionContext`,
which `_Recipe` makes for each writer as __init__ does (`learn` refuses any attribute it
does not know how to make, and then every writer is made by __init__); and
`TelnetServer._check_negotiation_timer`, `_waiter_connected`,
`_check_later` and `_tasks` (protocol.py overrides the first and ends a raw client's
negotiation with the others, as telnetlib3's own timeout does), `_tls_checked`,
`_mccp3_decompressor`, `_rx_bytes` and the writer's `iac_received` and `cmd_received`
(protocol.py feeds a chunk without IAC past telnetlib3 when they say it is all text), and asyncio's
`FlowControlMixin._drain_waiters` (made on first use there). tests/test_lean_writer.py,
tests/test_session_cost.py and the negotiation tests fail if one of them changes meaning.

Per-connection memory: telnetlib3's writer __init__ gives every connection eight empty sets
and two empty deques (about 3 KiB; an empty deque alone is 760 bytes) that a chat server's
connection mostly never fills. In 5.0.1, on the server side, `always_will`, `always_do`,
`always_wont`, `always_dont` and `passive_do` are only read (`in`; only telnetlib3's client
fills them), so they share one empty frozenset (`_Unused`); `rejected_will`, `rejected_do`
and `directional_refusals` are added to when a client offers something refused, and
`_sb_buffer` (a subnegotiation being read) and `_slc_buffer` (LINEMODE SLC replies) are
used only by clients that send those, so each is made on first use (`OnFirstUse`).
The writer's own `_sb_buffer` is read (for the guard's subnegotiation limit) through
`subnegotiation_bytes`, which does not make it. `send_iac` (every IAC telnetlib3 writes goes
through it, but LINEMODE's, which a chat server never negotiates) is what `Corked` batches.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, cast

from telnetlib3 import slc
from telnetlib3._session_context import TelnetSessionContext
from telnetlib3.stream_reader import TelnetReader, TelnetReaderUnicode
from telnetlib3.stream_writer import Option, TelnetWriterUnicode
from telnetlib3.telopt import (
    AYT,
    BINARY,
    CHARSET,
    DO,
    DONT,
    ECHO,
    EOR,
    GMCP,
    IAC,
    IP,
    MSSP,
    NAWS,
    NEW_ENVIRON,
    SGA,
    TM,
    TTYPE,
    WILL,
    WONT,
    name_command,
)

READ_CHUNK = 65536


class ChunkReader(TelnetReaderUnicode):
    """telnetlib3's reader, plus raw-chunk reads: we split and decode lines ourselves.

    While `take` is set, in-band bytes that arrive with nothing buffered are offered to it
    first, in data_received: a chat line is then handled as it arrives, not a loop turn
    later in the reading task (behind whatever else that turn runs). What `take` refuses
    is buffered for `read_chunk` as usual; `nudge` wakes the reading task for what `take`
    accepted but left for it.

    A reading task with nothing to read may end instead of waiting (`park`): an idle
    connection then holds no task, coroutine frames nor future (some 1.5 KiB). Whatever
    would have woken it (input `take` leaves, a nudge, EOF, an error) calls the `wake`
    given to `park` instead, once, to start another.
    """

    take: Callable[[bytes, Callable[[], None]], bool] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Set here, not first in `nudge`: an attribute added after __init__ turns the
        # instance's compact attribute array into a full dict (some 800 bytes).
        self._nudged = False
        self._wake: Callable[[], None] | None = None

    def feed_data(self, data: bytes) -> None:
        take = self.take
        if take is not None and data and not self._buffer and not self._eof and take(data, self.nudge):
            return
        super().feed_data(data)

    def nudge(self) -> None:
        self._nudged = True
        self._wakeup_waiter()

    def park(self, wake: Callable[[], None]) -> bool:
        """If a read would wait, have the next event call `wake` rather than wake a reader
        (who then stops reading) and return True; else False: read on."""
        if self._nudged or self._buffer or self._eof or self._exception is not None:
            return False
        self._wake = wake
        return True

    def _wakeup_waiter(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None:
            wake()
        else:
            super()._wakeup_waiter()

    def set_exception(self, exc: Exception) -> None:
        super().set_exception(exc)
        self._wakeup_waiter()

    async def read_chunk(self, n: int = READ_CHUNK) -> bytes | None:
        """Up to `n` bytes; b"" at EOF; None when nudged."""
        while not (self._nudged or self._buffer or self._eof):
            if self._exception is not None:
                raise self._exception
            # telnetlib3's _wait_for_data, inlined: its coroutine frame (some 220 bytes)
            # would be held by every idle connection's reading task while it waits.
            if self._waiter is not None:
                raise RuntimeError("read_chunk() called while another coroutine is already waiting for data")
            if self._paused:
                self._paused = False
                cast("asyncio.ReadTransport", self._transport).resume_reading()
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        if self._nudged:
            self._nudged = False
            return None
        return await TelnetReader.read(self, n)


class _Learnt:
    """What one of the writer's tables holds by default, command -> handler name, the same
    for every writer: its own handlers (registered by __init__) and its protocol's
    (registered while the protocol is `wiring` it up), learnt from the first of each."""

    __slots__ = ("own", "wired")

    def __init__(self) -> None:
        self.own: dict[bytes, str] = {}
        self.wired: dict[bytes, str] = {}


class _Handlers(dict[bytes, Callable[..., Any]]):
    """One of a TelnetWriter's callback tables, without a bound method per entry.

    telnetlib3 fills five such tables in every writer's __init__ with the writer's own
    handle_* methods: 63 bound methods, some 8 KiB and 68 objects for the garbage collector
    per connection, nearly all never called; its server protocol then registers eight of
    its own (on_naws, on_ttype...) as it connects. This table stores only what is registered
    on top of those; a lookup of a command nobody overrode binds the protocol's handler
    then (for a writer of a protocol that wires it up, `WriterEvents`), else the writer's.
    Which handlers those are, telnetlib3 itself says: the first writer's registrations in
    __init__, and the first protocol's while it is `wiring` its writer up (see
    `ChatTelnetServer.connection_made`), are learnt, per table, for all (`_Learnt`).
    """

    __slots__ = ("_learnt", "_writer")

    def __init__(self, writer: LeanTelnetWriter, learnt: _Learnt) -> None:
        super().__init__()
        self._writer: LeanTelnetWriter | None = writer
        self._learnt = learnt

    def __setitem__(self, key: bytes, func: Callable[..., Any]) -> None:
        writer, learnt = self._writer, self._learnt
        if writer is not None and writer.initializing and key in learnt.own:
            return  # __init__ registering its default again: learnt from the first writer
        bound_to = getattr(func, "__self__", None)
        name = getattr(func, "__name__", "")
        if writer is not None and bound_to is not None:
            if bound_to is writer:
                if getattr(writer, "initializing", False):
                    learnt.own.setdefault(key, name)
                # Its own handler is the default, unless its protocol's takes the command.
                taken = key in learnt.wired and self._wired_protocol() is not None
                default = None if taken else learnt.own.get(key)
            elif bound_to is getattr(writer, "_protocol", None):
                if getattr(bound_to, "wiring", False):
                    learnt.wired.setdefault(key, name)
                default = learnt.wired.get(key)
            else:
                default = None
            if default == name:
                self.pop(key, None)  # the default handler: looked up when needed
                return
        super().__setitem__(key, func)

    def _wired_protocol(self) -> WriterEvents | None:
        protocol = getattr(self._writer, "_protocol", None)
        return protocol if isinstance(protocol, WriterEvents) else None

    def __missing__(self, key: bytes) -> Callable[..., Any]:
        writer = self._writer
        if writer is None:
            raise KeyError(key)
        protocol = self._wired_protocol()
        name = self._learnt.wired.get(key) if protocol is not None else None
        if name is not None:
            handler: Callable[..., Any] = getattr(protocol, name)
            return handler
        name = self._learnt.own.get(key)
        if name is None:
            raise KeyError(key)
        own: Callable[..., Any] = getattr(writer, name)
        return own

    def __contains__(self, key: object) -> bool:
        if super().__contains__(key):
            return True
        learnt = self._learnt
        wired = key in learnt.wired and self._wired_protocol() is not None
        return self._writer is not None and (key in learnt.own or wired)

    def get(self, key: bytes, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def clear(self) -> None:
        # TelnetWriter.close() clears its tables to break reference cycles: forget the writer.
        super().clear()
        self._writer = None


_ABSENT = object()


def shared_defaults(defaults: Mapping[str, object]) -> Callable[[type[Any]], type[Any]]:
    """A class decorator: `defaults` (attribute -> immutable value) become class attributes,
    for `compact` to drop each instance's copy that still holds the same value."""

    def share(cls: type[Any]) -> type[Any]:
        for name, value in defaults.items():
            setattr(cls, name, value)
        cls.shared = defaults
        return cls

    return share


def compact(instance: Any) -> None:
    """Drop the attributes of `instance` still at their class's shared default (reads see
    the same value; a write makes it the instance's again) and the containers made on first
    use (`MADE_ON_USE`) still empty (the next use makes another), and rebuild its attribute dict at the size it
    then needs: a dict never shrinks by itself, and past 42 keys it takes 1584 bytes, at
    most 42 832 (telnetlib3's writer has 47 and its protocol 41)."""
    shared = type(instance).shared
    instance.__dict__ = {
        name: value for name, value in instance.__dict__.items() if not _at_default(shared, name, value)
    }


def _at_default(shared: Mapping[str, object], name: str, value: object) -> bool:
    if name.startswith(MADE_ON_USE):
        return not value
    default = shared.get(name, _ABSENT)
    return default is value or (type(default) is type(value) and default == value)


#: The prefix of the instance attributes that `OnFirstUse` and `_HandlersAttribute` make
#: when first used, and `compact` drops while they are empty.
MADE_ON_USE = "_lean"


class _Settled:
    """A done future's stand-in, one for every connection: all that telnetlib3 still asks
    of its negotiation's futures once they are done (connection_lost cancels them, and
    stops waiting for them), without two futures (320 bytes) per connection."""

    __slots__ = ()

    def done(self) -> bool:
        return True

    def cancelled(self) -> bool:
        return False

    def cancel(self, msg: object = None) -> bool:
        return False

    def remove_done_callback(self, fn: object) -> int:
        return 0


SETTLED: Any = _Settled()


class OnFirstUse:
    """An attribute that telnetlib3's (or asyncio's) __init__ sets to an empty container for
    every connection, made only when something first uses it (most connections never do).
    Setting it to an empty container forgets it: the next use makes a fresh one."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory

    def __set_name__(self, owner: type, name: str) -> None:
        self._key = MADE_ON_USE + name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        found = instance.__dict__.get(self._key)
        if found is None:
            found = instance.__dict__[self._key] = self._factory()
        return found

    def __set__(self, instance: Any, value: Any) -> None:
        if value:
            instance.__dict__[self._key] = value
        else:
            instance.__dict__.pop(self._key, None)


class _Unused(OnFirstUse):
    """A writer attribute only telnetlib3's client fills: on a server, always empty and
    only read, so one frozenset serves every connection (filling it would raise)."""

    EMPTY: frozenset[bytes] = frozenset()

    def __init__(self) -> None:
        super().__init__(frozenset)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return instance.__dict__.get(self._key, self.EMPTY)


class _HandlersAttribute:
    """Makes a writer's `_iac_callback` (and the like) a `_Handlers`, from its __init__ on;
    one that `compact` dropped, empty (the defaults are looked up), is made again when used."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = MADE_ON_USE + name
        self._learnt = _Learnt()

    def __get__(self, writer: Any, owner: type | None = None) -> Any:
        if writer is None:
            return self
        table = writer.__dict__.get(self._slot)
        if table is None:
            table = writer.__dict__[self._slot] = _Handlers(writer, self._learnt)
        return table

    def __set__(self, writer: Any, value: dict[bytes, Callable[..., Any]]) -> None:
        table = _Handlers(writer, self._learnt)
        for key, func in value.items():
            table[key] = func
        setattr(writer, self._slot, table)


# The telnet options this server implements, and only those: telnetlib3 would agree to more
# (COM-PORT-CONTROL, LINEMODE, STATUS, MSDP...) and then never complete them, and a client
# such as C-Kermit waits for that forever. TIMING-MARK is answered on its own (liveness.py).
#: Options the client may perform (its WILL gets our DO).
CLIENT_OPTIONS = frozenset({BINARY, SGA, TTYPE, NAWS, NEW_ENVIRON, CHARSET, GMCP})
#: Options the server performs when asked (the client's DO gets our WILL).
SERVER_OPTIONS = frozenset({BINARY, ECHO, SGA, EOR, CHARSET, GMCP, MSSP})


# What telnetlib3's writer __init__ (and our connection set-up) sets the same for every
# connection, and mostly never changes: `compact` drops each writer's copy.
WRITER_DEFAULTS: Mapping[str, object] = {
    "_closed_fut": None,
    "_compressed_remainder": None,
    "_connection_closed": False,
    "_corked": None,
    "_encoding_explicit": False,
    "_forwardmask": None,
    "_in_loop_detection": False,
    "_mccp2_activated": False,
    "_sb_overflow": False,
    "_linemode": slc.Linemode(),  # only ever replaced, never changed in place
    "_server": True,  # LeanTelnetWriter is the server's
    "_slc_sent": False,
    "compression": None,
    "encoding_errors": "replace",
    "environ_encoding": "ascii",
    "environ_send_raw": None,
    "initializing": False,
    "log": logging.getLogger("telnetlib3.stream_writer"),  # the logger __init__ takes
    "mccp2_active": False,
    "mccp3_active": False,
    "slc_received": None,
    "slc_simulated": False,
}


# What a writer is given, by name of the attribute telnetlib3's __init__ keeps it in.
_GIVEN = {
    "_transport": "transport",
    "_protocol": "protocol",
    "_reader": "reader",
    "fn_encoding": "fn_encoding",
    "encoding_errors": "encoding_errors",
}
# Values a writer's __init__ may set that every connection can share.
_IMMUTABLE = (type(None), bool, int, float, str, bytes, frozenset, tuple, logging.Logger)
_EMPTY_CONTAINERS = (list, dict, set, deque)
_Maker = Callable[["LeanTelnetWriter"], object]


_OPTION_TABLES = ("local_option", "remote_option", "pending_option")


class WriterEvents:
    """What a LeanTelnetWriter tells the connection it writes for (its protocol), each a
    no-op here."""

    def telnet_sent(self, buf: bytes) -> None:
        """A telnet command was written to the transport."""

    def malformed(self, option: bytes, error: Exception) -> None:
        """A subnegotiation of `option` could not be parsed."""

    def timing_mark(self) -> None:
        """The client answered our DO TIMING-MARK (WILL or WONT)."""

    def options_changed(self) -> None:
        """An option's state changed."""

    def echoes(self) -> bool:
        """Whether the connection echoes what its user types, if the client asks (DO ECHO)."""
        return True

    def command(self, cmd: bytes) -> None:
        """The client sent Interrupt Process (IAC IP: inetutils' `send ip`) or Are You There
        (IAC AYT, which wants something visible back)."""


class LeanOption(dict[bytes, bool]):
    """telnetlib3's `Option`, one of a writer's three option tables (what is agreed, asked,
    pending), without an attribute dict and a bound method of its writer each. The same
    reads and writes: a change is logged at debug level as `Option` logs it, and tells
    the writer (`_check_waiters`)."""

    __slots__ = ("_writer", "name")

    def __init__(self, name: str, writer: LeanTelnetWriter) -> None:
        super().__init__()
        self.name = name
        self._writer = writer

    @property
    def log(self) -> logging.Logger:
        log: logging.Logger = self._writer.log
        return log

    def enabled(self, key: bytes) -> bool:
        return self.get(key) is True

    def __setitem__(self, key: bytes, value: bool) -> None:
        log = self.log
        # Option formats its log line for every change, logged or not.
        if value != dict.get(self, key) and log.isEnabledFor(logging.DEBUG):
            descr = " + ".join([name_command(bytes([byte])) for byte in key[:2]] + [repr(byte) for byte in key[2:]])
            log.debug("%s[%s] = %s", self.name, descr, value)
        dict.__setitem__(self, key, value)
        self._writer._check_waiters()


class _Recipe:
    """How telnetlib3's writer __init__ sets a writer up, learnt from one writer it made, to
    set up the next ones without running it: its some 60 handler registrations and SLC table
    (discarded by `LeanTelnetWriter`) are most of a connection's set-up (about 100 us).

    Each attribute __init__ left is shared (an immutable value, the same for all), given
    (the transport, protocol, reader and encoding), or made afresh the way __init__ made it
    (an option table, a handler table, an empty container, a default object). An attribute
    of any other kind means the recipe cannot be trusted: `learn` returns None, and every
    writer is made by __init__ (tests/test_lean_writer.py fails first).
    """

    __slots__ = ("flags", "fresh", "shared")

    def __init__(self, flags: dict[str, object], shared: dict[str, object], fresh: dict[str, _Maker]) -> None:
        #: The keywords besides `_GIVEN`'s (server=True) the recipe was learnt with.
        self.flags = flags
        self.shared = shared
        self.fresh = fresh

    def make(self, given: Mapping[str, object]) -> LeanTelnetWriter:
        writer: LeanTelnetWriter = LeanTelnetWriter.__new__(LeanTelnetWriter)
        attributes = dict(self.shared)
        for name, keyword in _GIVEN.items():
            value = given[keyword]
            if LeanTelnetWriter.shared.get(name, _ABSENT) != value:
                attributes[name] = value
        for name, make in self.fresh.items():
            attributes[name] = make(writer)
        writer.__dict__ = attributes
        return writer


def _maker(writer: LeanTelnetWriter, value: object) -> _Maker | None:
    """How to make `value` (one of writer's attributes, as __init__ made it) for another writer."""
    if type(value) is LeanOption:
        if dict.__len__(value):
            return None
        name = value.name
        return lambda other: LeanOption(name, other)
    if type(value) is _Handlers:
        if dict.__len__(value):
            return None
        learnt = value._learnt
        return lambda other: _Handlers(other, learnt)
    kind = type(value)
    if kind in _EMPTY_CONTAINERS:
        return (lambda other: kind()) if not value else None
    try:  # a default object, such as the LINEMODE state
        same = vars(kind()) == vars(value)
    except TypeError:
        return None
    return (lambda other: kind()) if same else None


def learn(writer: LeanTelnetWriter, given: Mapping[str, object]) -> _Recipe | None:
    """The recipe for writers like `writer`, which __init__ made from `given`; None if it has
    an attribute whose making is not known (a telnetlib3 upgrade changed __init__)."""
    shared: dict[str, object] = {}
    fresh: dict[str, _Maker] = {}
    lazy = {MADE_ON_USE + name for name, kind in vars(LeanTelnetWriter).items() if isinstance(kind, OnFirstUse)}
    for name, value in writer.__dict__.items():
        if name in _GIVEN:
            expected = given[_GIVEN[name]]
            if value is not expected and value != expected:
                return None
        elif name in lazy or _at_default(LeanTelnetWriter.shared, name, value):
            continue
        elif type(value) in _IMMUTABLE:
            if LeanTelnetWriter.shared.get(name, _ABSENT) != value:
                shared[name] = value
        else:
            make = _maker(writer, value)
            if make is None:
                return None
            fresh[name] = make
    return _Recipe(_flags(given), shared, fresh)


def _flags(given: Mapping[str, object]) -> dict[str, object]:
    return {key: value for key, value in given.items() if key not in _GIVEN.values()}


class _Learning(type):
    """LeanTelnetWriter's metaclass: the first writer made with keywords (as telnetlib3's
    protocol makes each) is made by __init__, and teaches the recipe the rest are made by."""

    _recipe: _Recipe | None = None
    _tried = False

    def __call__(cls, *args: Any, **given: Any) -> Any:
        recipe = cls._recipe
        if not args and recipe is not None and _flags(given) == recipe.flags:
            return recipe.make(given)
        writer = super().__call__(*args, **given)
        if not args and not cls._tried:
            cls._tried = True
            cls._recipe = learn(writer, given)
        return writer


@shared_defaults(WRITER_DEFAULTS)
class LeanTelnetWriter(TelnetWriterUnicode, metaclass=_Learning):
    """telnetlib3's writer, with a fraction of its per-connection memory and objects.

    Its callback tables hold no bound methods (`_Handlers`), and its SLC table (30 entries,
    a dozen objects made for each connection) exists only once something looks at it: a
    line-mode chat server negotiates no LINEMODE, so normally never.
    """

    _iac_callback = _HandlersAttribute()
    _slc_callback = _HandlersAttribute()
    _ext_callback = _HandlersAttribute()
    _ext_send_callback = _HandlersAttribute()
    _ext_offer_callback = _HandlersAttribute()
    always_will = _Unused()
    always_do = _Unused()
    always_wont = _Unused()
    always_dont = _Unused()
    passive_do = _Unused()
    rejected_will = OnFirstUse(set)
    rejected_do = OnFirstUse(set)
    directional_refusals = OnFirstUse(set)
    _sb_buffer = OnFirstUse(deque)
    _slc_buffer = OnFirstUse(deque)
    # Waiters for an option's state (wait_for; nothing here waits) and NEW-ENVIRON requests
    # still to send (a client that asks for them in batches).
    _waiters = OnFirstUse(list)
    _environ_batches = OnFirstUse(list)
    # Filled only by the MUD data a client sends in ZMP, ATCP, Aardwolf or MSSP subnegotiations.
    ctx = OnFirstUse(TelnetSessionContext)
    #: While corked (`Corked`), what send_iac would have written, to go out in one write.
    _corked: list[bytes] | None
    initializing: bool
    shared: Mapping[str, object]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.initializing = True
        super().__init__(*args, **kwargs)
        self.initializing = False
        for name in _OPTION_TABLES:
            table = getattr(self, name)
            # Only an Option as 5.0.1 makes it: anything else stays as it is (and `learn`,
            # knowing no way to make it, leaves every writer to __init__).
            if type(table) is Option and not dict.__len__(table) and table._on_change == self._check_waiters:
                setattr(self, name, LeanOption(table.name, self))

    def subnegotiation_bytes(self) -> int:
        """The length of the subnegotiation being read (without making its buffer)."""
        return len(self.__dict__.get(MADE_ON_USE + "_sb_buffer") or ())

    def send_iac(self, buf: bytes) -> None:
        corked = self._corked
        if corked is None:
            self._send(buf)
        elif not self.is_closing():
            corked.append(buf)

    @property
    def events(self) -> WriterEvents | None:
        """Who is told what happens: its protocol, looked up each time (four callbacks held
        per writer were four bound methods and dict entries a connection)."""
        protocol = self._protocol
        return protocol if isinstance(protocol, WriterEvents) else None

    def _send(self, buf: bytes) -> None:
        closing = self.is_closing()
        TelnetWriterUnicode.send_iac(self, buf)
        events = self.events
        if not closing and events is not None:
            events.telnet_sent(buf)

    def handle_will(self, opt: bytes) -> None:
        if opt == TM:
            self._timing_mark()
        if opt in CLIENT_OPTIONS or opt == TM:
            super().handle_will(opt)
            return
        self.iac(DONT, opt)
        self.remote_option[opt] = False

    def handle_subnegotiation(self, buf: Any) -> None:
        # telnetlib3 lets a malformed one (a 3-byte NAWS, an unknown option) raise, and logs
        # each as a dozen traceback lines with no connection ids: a flood of them would fill
        # the disk and take the CPU. Reported to the connection instead (log once, charge).
        option = bytes(buf[0]) if buf else b""
        try:
            super().handle_subnegotiation(buf)
        except Exception as exc:  # whatever the client sent, it is its problem only
            events = self.events
            if events is not None:
                events.malformed(option, exc)

    def handle_wont(self, opt: bytes) -> None:
        if opt == TM:
            self._timing_mark()
        super().handle_wont(opt)

    def _timing_mark(self) -> None:
        events = self.events
        if events is not None and self.pending_option.enabled(DO + TM):
            events.timing_mark()

    def handle_do(self, opt: bytes) -> bool:
        if opt == ECHO and not self._may_echo():
            self.iac(WONT, ECHO)
            return False
        if opt in SERVER_OPTIONS or opt == TM:
            return bool(super().handle_do(opt))
        if not self.local_option.enabled(opt):
            self.iac(WONT, opt)
        return False

    def _may_echo(self) -> bool:
        """DO ECHO is agreed to when the server asked for it (a password prompt, character
        mode) or echoes anyway: a line-mode client switched to character mode by its user
        (inetutils' `mode character`) would stop echoing, with no one echoing for it."""
        events = self.events
        return (
            self.pending_option.enabled(WILL + ECHO)
            or self.local_option.enabled(ECHO)
            or events is None
            or events.echoes()
        )

    def handle_ip(self, _byte: bytes) -> None:
        self._command(IP)

    def handle_ayt(self, _byte: bytes) -> None:
        self._command(AYT)

    def _command(self, cmd: bytes) -> None:
        events = self.events
        if events is not None:
            events.command(cmd)

    def handle_dont(self, opt: bytes) -> None:
        # RFC 1143: a DONT for an option that is on is acknowledged with WONT (a client
        # switched to line mode waits for it); one for an option already off is not (loops).
        if self.local_option.enabled(opt):
            self.send_iac(IAC + WONT + opt)
        super().handle_dont(opt)

    def _check_waiters(self) -> None:
        super()._check_waiters()
        events = self.events
        if events is not None:
            events.options_changed()

    @property
    def slctab(self) -> dict[bytes, Any]:
        table: dict[bytes, Any] | None = self.__dict__.get("_own_slctab")
        if table is None:
            table = self.__dict__["_own_slctab"] = slc.generate_slctab(self.default_slc_tab)
        return table

    @slctab.setter
    def slctab(self, table: dict[bytes, Any]) -> None:
        # __init__ sets the default table: drop it, it is made again when first read.
        if self.initializing:
            self.__dict__.pop("_own_slctab", None)
        else:
            self.__dict__["_own_slctab"] = table


class Corked:
    """Within the block, the writer's telnet commands are collected and written at its end
    in one write: one send() for a negotiation step instead of one per command. Nested
    blocks write once, at the outermost end."""

    __slots__ = ("_outer", "_writer")

    def __init__(self, writer: LeanTelnetWriter) -> None:
        self._writer = writer
        self._outer = False

    def __enter__(self) -> None:
        writer = self._writer
        if writer._corked is None:
            writer._corked = []
            self._outer = True

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        writer = self._writer
        if not self._outer or writer._corked is None:
            return
        corked, writer._corked = writer._corked, None
        if corked:
            writer._send(b"".join(corked))
