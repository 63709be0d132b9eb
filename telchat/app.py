"""The running server: listener, sessions, and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import os
import socket
import ssl
import time
import weakref
from asyncio import Transport
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from telchat.chat.outbox import Flusher, Outbox, encode_line
from telchat.chat.rooms import Chat, User, host_of
from telchat.clients.mssp import ServerStatus
from telchat.clients.terminal import Terminal, writes_unchanged
from telchat.config import Config
from telchat.features.services import make_services
from telchat.obs.limits import EndReason
from telchat.obs.logs import get_logger
from telchat.obs.telemetry import Telemetry
from telchat.rules import names, replies
from telchat.session import commands
from telchat.session.session import Session, idle_carried, take_up
from telchat.store.base import Store, StoreError
from telchat.store.events import Event
from telchat.store.url import make_store
from telchat.telnet.admission import Address
from telchat.telnet.dormant import Dormant, Watch, can_sleep
from telchat.telnet.guard import Guards
from telchat.telnet.internals import ChunkReader
from telchat.telnet.protocol import (
    ChatTelnetServer,
    ClientClass,
    Door,
    carry,
    log_negotiation,
    negotiated_charset,
    open_socket,
    peer_text,
    protocol_factory,
    pump,
    shell_started,
)
from telchat.telnet.sockets import tune_listener
from telchat.telnet.tls import TlsAcceptor, server_context

if TYPE_CHECKING:
    from telchat.obs.metrics import MetricsServer
    from telchat.ssh.door import SshDoor
    from telchat.web.door import WebDoor

log = get_logger(__name__)

HEALTH_TIMEOUT = 2.0
# An upgrade takes connections up this many at a time, each chunk given ADOPT_TURNS loop turns.
ADOPT_CHUNK = 250
ADOPT_TURNS = 4
# Dormant connections (telnet/dormant.py) are woken this many at a time once everyone is
# back: small enough that the loop turns between chunks keep the others' lines flowing.
WAKE_CHUNK = 50
WAKE_PATIENCE = 2.0
#: How long a new image that was handed connections tries to open its store (another
#: process holding SQLite's write lock), and how often: its users wait, paused, meanwhile.
CARRIED_STORE_PATIENCE = 60.0
CARRIED_STORE_RETRY = 0.5
#: How long a shutdown waits for the sessions whose connections it cut to end (a few loop turns).
CUT_PATIENCE = 1.0


SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


def listen_backlog(configured: int | None) -> int:
    """`--backlog`, else the kernel's own cap (a larger backlog is cut to it anyway): a
    storm of connects then waits in the accept queue instead of having its SYNs dropped."""
    if configured is not None:
        return configured
    try:
        return int(SOMAXCONN.read_text())
    except (OSError, ValueError):
        return socket.SOMAXCONN


class HandoverError(Exception):
    """Why this server cannot hand its connections over to a new image."""


@dataclass(slots=True)
class Carried:
    """What a server upgrade hands the next image (see telchat/upgrade.py): the listening
    sockets, and each connection's socket with its record (`App.carry`)."""

    #: Each door's listening socket, by door (telnet, tls, web, ssh).
    listeners: dict[str, socket.socket]
    #: Each connection's record, its socket's descriptor (`fd`) this process's to own.
    connections: list[dict[str, Any]]
    last_conn_id: int
    store: dict[str, Any]


@dataclass(slots=True, eq=False)
class Sleeper:
    """A dormant connection (telnet/dormant.py) and its user, back in the chat, with what
    came for it while it slept: a hangup (a kick) or an overflowing Outbox, which wake it,
    and which its session carries out once built."""

    dormant: Dormant
    user: User = field(init=False)
    # Counted in the per-address limits while it sleeps: its protocol counts it once built.
    address: Address = field(init=False)
    hangup_reason: str | None = None
    overflowed: bool = False

    def hangup(self, message: str) -> None:
        self.hangup_reason = message
        self.dormant.wake()

    def overflow(self) -> None:
        self.overflowed = True
        self.dormant.wake()

    def connected(self) -> bool:
        return True  # its socket is written to as is: a peer gone is found when it wakes


class App:
    def __init__(self, config: Config, store: Store | None = None) -> None:
        self.config = config
        self.telemetry = Telemetry()
        self.store = store or make_store(config.store, config.history_keep, config.node_ttl)
        self.store.stats = self.telemetry.stats
        self.chat = Chat(
            self.store,
            history_replay=config.history_replay,
            announce_nicks=config.announce_nicks,
            log_messages=config.log_messages,
            max_rooms_per_user=config.max_rooms_per_user,
            telemetry=self.telemetry,
        )
        self.metrics: MetricsServer | None = None
        # The web and SSH listeners an upgrade carried over, until `open_late_doors`.
        self._late_listeners: dict[str, socket.socket] = {}
        self.metrics_port: int | None = None
        self._terminals: dict[Session, Terminal] = {}
        # Every connection, negotiating or not (an upgrade carries them all).
        self._connections: weakref.WeakSet[ChatTelnetServer] = weakref.WeakSet()
        self.services = make_services(self.chat, config)
        self.sessions: dict[Session, Transport] = {}
        # Connections an upgrade carried over whose session is not built yet, by conn_id.
        self._dormant: dict[int, Sleeper] = {}
        # Their sockets, watched for input; None while there are none.
        self._watch: Watch | None = None
        self._waking: set[asyncio.Task[None]] = set()
        self._flusher = Flusher()
        self.store.commit_before(self._flusher)
        self.guards = Guards(config, self.telemetry)
        self._server: asyncio.Server | None = None
        self._tls_server: asyncio.Server | None = None
        self.web: WebDoor | None = None
        self.web_port: int | None = None
        self.ssh: SshDoor | None = None
        self.ssh_port: int | None = None
        self.status = ServerStatus(self.chat, config.server_name)
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.backlog = listen_backlog(config.backlog)

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def tls_port(self) -> int | None:
        if self._tls_server is None or not self._tls_server.sockets:
            return None
        return int(self._tls_server.sockets[0].getsockname()[1])

    async def start(self, carried: Carried | None = None) -> None:
        """Open the store and listen; or, after a server upgrade, take up the listeners and
        connections `carried` over from the previous image."""
        if carried is not None:
            # Before any door opens: a connection accepted while the slower doors start
            # must not get a carried connection's id, by which a dormant user is found.
            self.telemetry.skip_conn_ids(carried.last_conn_id)
            self.store.take_up(carried.store)
        # A store taken up reads on where the previous image stopped: what it delivers before
        # the carried sessions are adopted waits for them (their lines from other nodes).
        early: list[Event] | None = [] if carried is not None else None

        def deliver(event: Event) -> None:
            if early is None:
                self.chat.deliver(event)
            else:
                early.append(event)

        if carried is None:
            await self.store.open(self.chat.deliver)
        else:
            await self._open_store_patiently(deliver)
        await self.services.moderation.load()
        await self.services.mailbox.load()
        self.services.continuity.start()
        if carried is None:  # after an upgrade, once everyone is back (`awake`)
            names.prepare()
        await self._open_telnet_doors(carried.listeners if carried is not None else {})
        if carried is not None:
            await self._adopt(carried)
            self._late_listeners = carried.listeners
        for event in early or ():
            self.chat.deliver(event)
        early = None
        self.status.port, self.status.tls_port = self.port, self.tls_port
        if carried is None:
            await self.open_late_doors()

    async def open_late_doors(self) -> None:
        """The web and SSH doors and the metrics endpoint, then the `listening` event. A new
        image an upgrade handed connections to opens them once its pause is over (see
        `Upgrader.resumed`), on the listeners carried over: importing aiohttp and asyncssh
        takes some 400 ms, which would hold everyone's pause, and runs on a thread instead
        while users are served (connections to those doors wait in their backlogs)."""
        listeners, self._late_listeners = self._late_listeners, {}
        await self._open_late_doors(listeners)
        config = self.config
        if config.metrics_port is not None and self.metrics is None:
            # Imported only when used: prometheus_client takes some 40 ms to import.
            await asyncio.to_thread(importlib.import_module, "telchat.obs.metrics")
            from telchat.obs.metrics import MetricsServer

            self.metrics = MetricsServer(self)
            self.metrics_port = await self.metrics.start(config.metrics_host, config.metrics_port, self.backlog)
        # `loop`: asyncio or uvloop (--loop auto picks uvloop when it is installed).
        loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
        log.info(
            "listening",
            host=config.host,
            port=self.port,
            tls_port=self.tls_port,
            web_port=self.web_port,
            ssh_port=self.ssh_port,
            workers=config.workers,
            loop=loop,
            backlog=self.backlog,
        )

    async def _open_store_patiently(self, deliver: Callable[[Event], None]) -> None:
        """Open the store after an upgrade, trying again for a while: the previous image
        checked it answered, but another process may hold it (SQLite's write lock) when this
        one opens it, and giving up would drop every user it was handed."""
        deadline = time.monotonic() + CARRIED_STORE_PATIENCE
        while True:
            try:
                await self.store.open(deliver)
                return
            except StoreError as exc:
                if time.monotonic() >= deadline:
                    raise
                log.warning("store_unavailable", during="upgrade", error=str(exc), retry_in=CARRIED_STORE_RETRY)
            await asyncio.sleep(CARRIED_STORE_RETRY)

    def _factory(self, door: Door) -> Callable[[], ChatTelnetServer]:
        """Every door's connections: one telnet protocol, one session runner."""
        make = protocol_factory(self._run_session, self.config.connect_maxwait, self.guards, door)

        def factory() -> ChatTelnetServer:
            protocol = make()
            self._connections.add(protocol)
            return protocol

        return factory

    async def _open_telnet_doors(self, listeners: dict[str, socket.socket]) -> None:
        """Listen at the plain and TLS telnet doors, on the socket `listeners` has for each
        if any (an upgrade carried it over, or the upgrade failed and it is listened on again)."""
        config = self.config
        self._server = await self._listen(config.port, listener=listeners.get("telnet"))
        if config.tls_port is not None:
            tls = server_context(config.tls_cert, config.tls_key)
            self._tls_server = await self._listen(config.tls_port, tls, listeners.get("tls"))

    async def _open_late_doors(self, listeners: dict[str, socket.socket]) -> None:
        """The web and SSH doors, as `_open_telnet_doors`. Their modules are imported only
        when used, and on a thread: aiohttp and asyncssh (with cryptography) take some 200 ms
        each, which the event loop would otherwise stand still for."""
        config = self.config
        if config.web_port is not None:
            await asyncio.to_thread(importlib.import_module, "telchat.web.door")
            await self._open_web(config.web_port, listeners.get("web"))
        if config.ssh_port is not None:
            await asyncio.to_thread(importlib.import_module, "telchat.ssh.door")
            await self._open_ssh(config.ssh_port, listeners.get("ssh"))

    async def _open_web(self, port: int, listener: socket.socket | None) -> None:
        config = self.config
        tls = server_context(config.web_tls_cert, config.web_tls_key) if config.web_tls_cert else None
        from telchat.web.door import WebDoor

        self.web = WebDoor(config, self._factory("web"), self.telemetry)
        self.web_port = await self.web.start(
            config.host, port, tls, self.backlog, reuse_port=config.workers > 1, listener=listener
        )
        tune_listener(self.web.sockets(), config.max_sndbuf)

    async def _open_ssh(self, port: int, listener: socket.socket | None) -> None:
        from telchat.ssh.door import SshDoor

        self.ssh = SshDoor(self.config, self._factory("ssh"), self.guards, self.services.accounts)
        self.ssh_port = await self.ssh.start(
            self.config.host, port, self.backlog, reuse_port=self.config.workers > 1, listener=listener
        )
        tune_listener(self.ssh.sockets(), self.config.max_sndbuf)

    async def _listen(
        self, port: int, tls: ssl.SSLContext | None = None, listener: socket.socket | None = None
    ) -> asyncio.Server:
        """Listen on `port`, or on the `listener` an upgrade carried over."""
        config = self.config
        factory = self._factory("telnet" if tls is None else "tls")
        accept: Callable[[], asyncio.Protocol] = factory
        if tls is not None:

            def accept() -> asyncio.Protocol:
                return TlsAcceptor(factory, tls, self.guards, config.tls_handshake_timeout)

        loop = asyncio.get_running_loop()
        if listener is not None:
            server = await loop.create_server(accept, sock=listener, backlog=self.backlog)
        else:
            server = await loop.create_server(
                accept, config.host, port, backlog=self.backlog, reuse_port=config.workers > 1 or None
            )
        tune_listener(server.sockets, config.max_sndbuf)
        return server

    async def _adopt(self, carried: Carried) -> None:
        """Take up each connection carried over an upgrade: one with nothing to do until its
        next input sleeps (`_sleep`), its user back in the chat, until `awake` or its input
        wakes it; any other at once, its protocol restoring its telnet state instead of
        negotiating, and `_run_session` resuming its session."""
        now: list[dict[str, Any]] = []
        for record in carried.connections:
            if _sleeps(record):
                self._sleep(record)
            else:
                now.append(record)
        for start in range(0, len(now), ADOPT_CHUNK):
            chunk = now[start : start + ADOPT_CHUNK]
            await asyncio.gather(*(self._take_up(record) for record in chunk))
            # A few loop turns take this chunk's sessions from restored options to reading
            # again: its users are back before the next chunk, not all only at the end.
            for _ in range(ADOPT_TURNS):
                await asyncio.sleep(0)

    async def _take_up(self, record: dict[str, Any]) -> None:
        factory = self._factory("telnet")
        # The family as carried: finding it out takes three system calls per socket.
        sock = socket.socket(int(record.get("family", -1)), socket.SOCK_STREAM, 0, int(record["fd"]))

        def adopted() -> ChatTelnetServer:
            protocol = factory()
            protocol.carried = record
            return protocol

        try:
            await asyncio.get_running_loop().connect_accepted_socket(adopted, sock)
        except Exception as exc:
            log.error("adopt_failed", conn_id=record["conn_id"], error=repr(exc))
            sock.close()
            self._let_go(record)

    def _sleep(self, record: dict[str, Any]) -> None:
        """Take up a carried connection's user only: in its rooms, written to through its
        socket, which is watched for input (telnet/dormant.py)."""
        dormant = Dormant(record, self._wake)
        state = record["session"]
        peer = str(record.get("peer") or _peer(dormant.fd))
        sleeper = Sleeper(dormant)
        outbox = Outbox(dormant, self._flusher, self.config.sendq_bytes, sleeper.overflow)
        sleeper.user = user = User(dormant.conn_id, outbox, peer, str(state["charset"]))
        user.link = sleeper
        user.columns = int(record["telnet"]["extra"].get("cols") or user.columns)
        take_up(self.chat, user, state)
        sleeper.address = self.guards.carry_in(None, peer)
        self._dormant[dormant.conn_id] = sleeper
        if self._watch is None:
            self._watch = Watch(self._wake)
        self._watch.watch(dormant)

    def _wake(self, dormant: Dormant) -> asyncio.Task[None] | None:
        """Build a dormant connection's protocol and session; None if under way already."""
        if not dormant.wake_up():
            return None
        if self._watch is not None:
            self._watch.forget(dormant)
        task = asyncio.ensure_future(self._take_up(dormant.record))
        self._waking.add(task)
        task.add_done_callback(self._waking.discard)
        return task

    async def awake(self) -> None:
        """Wake every dormant connection, a chunk at a time, and wait until each has its
        session. One whose client left before its session started never gets one: after
        WAKE_PATIENCE its user leaves the chat."""
        names.prepare()
        sleepers = [sleeper.dormant for sleeper in self._dormant.values()]
        for start in range(0, len(sleepers), WAKE_CHUNK):
            chunk = [task for dormant in sleepers[start : start + WAKE_CHUNK] if (task := self._wake(dormant))]
            await asyncio.gather(*chunk)
            for _ in range(ADOPT_TURNS):
                await asyncio.sleep(0)
        await until(lambda: not self._dormant, time.monotonic() + WAKE_PATIENCE)
        for sleeper in list(self._dormant.values()):
            self._let_go(sleeper.dormant.record)
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def _let_go(self, record: dict[str, Any]) -> None:
        """A carried connection that gets no session: a dormant one's user leaves the chat."""
        sleeper = self._no_longer_dormant(int(record["conn_id"]))
        if sleeper is not None:
            self.chat.disconnect(sleeper.user, "connection closed")

    def _no_longer_dormant(self, conn_id: int) -> Sleeper | None:
        """A dormant connection is no more (its session runs, or it got none)."""
        sleeper = self._dormant.pop(conn_id, None)
        if sleeper is not None:
            self.guards.release(sleeper.address)
        return sleeper

    @property
    def session_count(self) -> int:
        """Sessions running, and dormant ones (an upgrade carried them; not built yet)."""
        return len(self.sessions) + len(self._dormant)

    async def _run_session(self, reader: ChunkReader, writer: Any) -> None:
        """A connection's shell (telnetlib3's): its session, from negotiation's end to its own."""
        started = shell_started(writer)
        if started is None:
            return
        protocol, transport = started
        carried = protocol.carried if protocol.carried is not None and "session" in protocol.carried else None
        if protocol.carried is not None:
            protocol.carried = None
        charset = str(carried["session"]["charset"]) if carried is not None else negotiated_charset(protocol)
        if not self._admitted(protocol, transport, charset):
            if carried is not None:
                self._let_go(carried)
            return
        sleeper = self._dormant.get(protocol.conn_id) if carried is not None else None
        session, terminal = self._new_session(protocol, transport, charset, carried, sleeper)
        self._track(asyncio.current_task())
        begin = self._begin(protocol, reader, session, terminal, carried=carried, sleeper=sleeper)
        await self._read(reader, session, begin)

    async def _begin(
        self,
        protocol: ChatTelnetServer,
        reader: ChunkReader,
        session: Session,
        terminal: Terminal,
        *,
        carried: dict[str, Any] | None,
        sleeper: Sleeper | None,
    ) -> None:
        """A session's start: greeted (and logged in, if its door proved the account), or
        resumed where an upgrade carried it from."""
        if carried is None:
            terminal.attach(session)
            session.start()
            if protocol.proven_nick is not None:  # its door proved the account's
                await commands.run(session, self.services.accounts.login_proven(session.user, protocol.proven_nick))
        else:
            _resume(session, terminal, carried, sleeper)
            reader.nudge()  # lines carried over waiting to run

    def _track(self, task: asyncio.Task[None] | None) -> None:
        """Hold a session's task: the loop holds it only weakly."""
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _read(
        self, reader: ChunkReader, session: Session, begin: Coroutine[Any, Any, None] | None = None
    ) -> None:
        """A session's reading task (after its `begin`, the first), until it ends or has
        nothing left to read for now: then the task ends (an idle connection holds none),
        and its next input starts another."""
        wake = _Parked(self, reader, session)
        reason: EndReason | None = "error"
        try:
            if begin is not None:
                await begin
            reason = await pump(reader, session, wake)
        except Exception:
            log.exception("session_failed")
        finally:
            if reason is None:
                # Synchronously after the check that parked it: nothing can have woken it yet.
                wake.context = contextvars.copy_context()
            else:
                self._end(session, reason)

    def _end(self, session: Session, reason: EndReason) -> None:
        terminal = self._terminals.pop(session, None)
        if terminal is not None:
            terminal.detach()
        transport = self.sessions.pop(session, None)
        session.finish(reason)
        if transport is not None and not transport.is_closing():
            transport.close()

    def _new_session(
        self,
        protocol: ChatTelnetServer,
        transport: Transport,
        charset: str,
        carried: dict[str, Any] | None,
        sleeper: Sleeper | None,
    ) -> tuple[Session, Terminal]:
        """A connection's terminal and session, new or `carried` over an upgrade (and back
        in the chat already, if it was dormant: `sleeper`)."""
        if sleeper is not None:
            protocol.sink.write(sleeper.dormant.take_pending())
        terminal = Terminal(protocol, self.config, self.status, carried["terminal"] if carried is not None else None)
        if carried is None:
            log_negotiation(protocol, charset, terminal.client_class, terminal.mode)
        session = Session(
            self.chat,
            self.config,
            sink=terminal.wrap(protocol.sink),
            flusher=self._flusher,
            connection=transport,
            conn_id=protocol.conn_id,
            peer=protocol.peer,
            door=protocol.door,
            charset=charset,
            services=self.services,
            echo=terminal,
            gate=protocol.guard.gate if protocol.guard is not None else None,
            user=sleeper.user if sleeper is not None else None,
        )
        self.sessions[session] = transport
        if sleeper is not None:
            self._no_longer_dormant(protocol.conn_id)
        self._terminals[session] = terminal
        return session, terminal

    def _admitted(self, protocol: ChatTelnetServer, transport: Transport, charset: str) -> bool:
        """Whether a connection gets a session: not while stopping, nor from a banned address."""
        if self._stopping:
            return False
        refusal = self.services.moderation.refusal(host_of(protocol.peer))
        if refusal is None:
            return True
        self.telemetry.limit("banned_address", conn_id=protocol.conn_id, peer=protocol.peer, transport=protocol.door)
        transport.write(encode_line(refusal, charset))
        transport.close()
        return False

    @property
    def stopping(self) -> bool:
        return self._stopping

    def accepting(self) -> bool:
        return self._server is not None and self._server.is_serving() and not self._stopping

    def session_classes(self) -> list[tuple[ClientClass, Door]]:
        running = [(terminal.client_class, terminal.protocol.door) for terminal in self._terminals.values()]
        dormant: list[tuple[ClientClass, Door]] = [
            (sleeper.dormant.record["terminal"]["client_class"], "telnet") for sleeper in self._dormant.values()
        ]
        return running + dormant

    def live_bytes(self) -> tuple[int, int]:
        """Bytes in and out of the connections open now, dormant ones included."""
        sessions, sleepers = list(self.sessions), list(self._dormant.values())
        bytes_in = sum(s.bytes_in for s in sessions)
        bytes_in += sum(int(sleeper.dormant.record["session"].get("bytes_in", 0)) for sleeper in sleepers)
        users = [s.user for s in sessions] + [sleeper.user for sleeper in sleepers]
        return bytes_in, sum(user.outbox.bytes_out for user in users)

    def logged_in(self) -> int:
        return len(self.chat.nicks)

    def room_count(self) -> int:
        return len(self.chat.rooms)

    async def problem(self) -> str | None:
        """Why the node is unhealthy, or None: the listener must accept and the store answer."""
        if not self.accepting():
            return "listener not accepting"
        try:
            await asyncio.wait_for(self.store.check(), HEALTH_TIMEOUT)
        except (StoreError, TimeoutError) as exc:
            return f"store not answering: {exc}"
        return None

    async def stop(self) -> None:
        """Stop accepting, say goodbye to everyone, flush, close. Safe to call twice."""
        if self._stopping:
            return
        # Everyone carried over an upgrade gets a session first, to be told and to leave as one.
        await self.awake()
        self._stopping = True
        if self.metrics is not None:
            self.metrics.close()
        started = time.monotonic()
        for server in (self._server, self._tls_server):
            if server is not None:
                server.close()  # the listener only: connections stay open for the goodbye
        for door in (self.web, self.ssh):
            if door is not None:
                door.stop_listening()
        self.chat.broadcast_local(replies.GOODBYE)
        self._flusher.flush()
        await self._drain(self.config.shutdown_grace, list(self.sessions.values()))
        for session, transport in list(self.sessions.items()):
            session.reason = session.reason or "shutdown"
            transport.close()
        await self._wait_sessions_ended(deadline=started + self.config.shutdown_grace + 1.0)
        # A client that took nothing meanwhile holds its connection's close back for good, and
        # a parked session has no task for the exit to cancel: cutting the connection ends it.
        for transport in list(self.sessions.values()):
            transport.abort()
        await self._wait_sessions_ended(deadline=time.monotonic() + CUT_PATIENCE)
        for door in (self.web, self.ssh):
            if door is not None:
                await door.close()
        await self.services.continuity.close()
        await self.store.close()
        log.info("shutdown", sessions=len(self.sessions), duration=round(time.monotonic() - started, 3))

    # A server upgrade (telchat/upgrade.py): stop, settle, and hand everything over.

    def listeners(self) -> dict[str, socket.socket]:
        """Each door's listening socket (a duplicate, which outlives its server), by door; one
        per door or an upgrade cannot carry them."""
        listening = {
            "telnet": self._server.sockets if self._server is not None else None,
            "tls": self._tls_server.sockets if self._tls_server is not None else None,
            "web": self.web.sockets() if self.web is not None else None,
            "ssh": self.ssh.sockets() if self.ssh is not None else None,
        }
        carried: dict[str, socket.socket] = {}
        for door, sockets in listening.items():
            if sockets is None:
                continue
            if len(sockets) != 1:
                raise HandoverError(f"the {door} listener has {len(sockets)} sockets; --host must name one address")
            carried[door] = socket.socket(fileno=os.dup(sockets[0].fileno()))
        return carried

    async def pause(self, listeners: dict[str, socket.socket], grace: float) -> None:
        """Stop accepting (new connections wait in the kernel's backlog of `listeners`,
        which stay open), let go of the sessions that cannot be carried, stop reading, let
        running lines finish and write what was accepted, waiting at most `grace` seconds.
        Only the goodbyes of the sessions let go are waited for until their clients take
        them: what a carried connection's client has not taken yet is carried over too.
        HandoverError if the store does not answer and commit, or a line does not end,
        within `grace`: then nothing may be carried (`resume`)."""
        deadline = time.monotonic() + grace
        for server in (self._server, self._tls_server):
            if server is not None:
                server.close()
        for door in (self.web, self.ssh):
            if door is not None:
                door.stop_listening()
        self.guards.hold_input(True)
        leaving: list[Transport] = []
        for session, transport in list(self.sessions.items()):
            if not self._carried_over(session):
                leaving.append(transport)
                session.quit("server upgrade", reason="upgrade", farewell=replies.UPGRADE_UNCARRIED)
        # The store first: a new image that cannot open it ends, dropping everyone.
        await self._store_settled(deadline)
        # Lines running finish, and the sessions saying goodbye end.
        await until(self._settled, deadline)
        self._flusher.flush()
        await self.store.drain(max(0.0, deadline - time.monotonic()))
        await self._drain(max(0.0, deadline - time.monotonic()), leaving)
        # A line still running (or one paced that started meanwhile) would be lost.
        await until(lambda: not self._running(), deadline)
        running = self._running()
        if running:
            raise HandoverError(f"{running} sessions still run a line")

    def _carried_over(self, session: Session) -> bool:
        # A plain telnet socket is all the kernel carries: TLS and SSH keys, and a
        # WebSocket's framing, live in this process only.
        return self._terminals[session].protocol.door == "telnet"

    async def _store_settled(self, deadline: float) -> None:
        """The store answers and has delivered what was published, by `deadline`; else
        HandoverError. (A line waiting on the store cannot end, nor a new image open it.)"""
        try:
            await asyncio.wait_for(self._store_answers(), max(0.0, deadline - time.monotonic()))
        except (StoreError, TimeoutError) as exc:
            raise HandoverError(f"the store did not answer and commit within the pause: {exc!r}") from exc

    async def _store_answers(self) -> None:
        await self.store.check()
        await self.store.settled()

    def _settled(self) -> bool:
        return all(s.settled and self._carried_over(s) for s in self.sessions)

    def _running(self) -> int:
        """The sessions to carry over that are running a line (those let go are closing)."""
        return sum(1 for s in self.sessions if not s.settled and not s.closing)

    async def resume(self, listeners: dict[str, socket.socket]) -> None:
        """The upgrade failed after `pause`: accept and read again, on the same sockets."""
        self.guards.hold_input(False, (protocol.guard for protocol in self._connections if protocol.guard is not None))
        await self._open_telnet_doors(listeners)
        await self._open_late_doors(listeners)

    def carry(self, take_output: bool = True) -> list[dict[str, Any]]:
        """Every connection as plain data with its socket's descriptor (`fd`); with
        `take_output`, what each session has queued moves into its record."""
        self._flusher.flush()
        sessions = {terminal.protocol: (session, terminal) for session, terminal in self._terminals.items()}
        looks = self.chat.look_keys()
        records: list[dict[str, Any]] = []
        for protocol in list(self._connections):
            sock = open_socket(protocol)
            if sock is None:
                continue
            record: dict[str, Any] = {
                "fd": sock.fileno(),
                "family": int(sock.family),
                "conn_id": protocol.conn_id,
                "peer": protocol.peer,
                "telnet": carry(protocol),
            }
            # A connection still negotiating gets its session in the next image.
            session, terminal = sessions.get(protocol, (None, None))
            if session is not None and terminal is not None:
                if session.closing:
                    continue
                snapshot = session.snapshot(take_output, looks.get(session.user))
                record.update(terminal=terminal.snapshot(), session=snapshot)
            records.append(record)
        return records

    async def _wait_sessions_ended(self, deadline: float) -> None:
        # Not only the reading tasks running now: a parked session's ends in the task that
        # its connection's end starts.
        await until(lambda: not self.sessions, deadline)

    async def _drain(self, grace: float, transports: list[Transport]) -> None:
        """Wait, at most `grace` seconds, for the clients of `transports` to take what they hold."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not any(map(_holding, transports)):
                return
            await asyncio.sleep(0.02)


async def until(done: Callable[[], bool], deadline: float, poll: float = 0.01) -> None:
    """Return once `done()`, looked at every `poll` seconds, or at `deadline` (monotonic)."""
    while time.monotonic() < deadline:
        if done():
            return
        await asyncio.sleep(poll)


def _sleeps(record: dict[str, Any]) -> bool:
    """Whether a carried connection may wait dormant (telnet/dormant.py): it has a session
    with nothing to do until its next input, and a terminal that adds nothing to its output."""
    return (
        "session" in record
        and can_sleep(record["telnet"])
        and writes_unchanged(record["terminal"])
        and idle_carried(record["session"])
    )


def _peer(fd: int) -> str:
    """The peer of a socket carried by an image whose records did not say."""
    sock = socket.socket(fileno=fd)
    try:
        return peer_text(sock.getpeername())
    except OSError:
        return "-"
    finally:
        sock.detach()


class _Parked:
    """What starts a parked session's next reading task, in the log context of its last."""

    __slots__ = ("app", "context", "reader", "session")

    def __init__(self, app: App, reader: ChunkReader, session: Session) -> None:
        self.app = app
        self.reader = reader
        self.session = session
        self.context: contextvars.Context | None = None

    def __call__(self) -> None:
        app = self.app
        app._track(asyncio.get_running_loop().create_task(app._read(self.reader, self.session), context=self.context))


def _resume(session: Session, terminal: Terminal, carried: dict[str, Any], sleeper: Sleeper | None) -> None:
    """Take up a carried session; a dormant one's user, back already, gets what came for it
    while it slept."""
    terminal.attach(session, carried["terminal"])
    session.resume(carried["session"], taken_up=sleeper is not None)
    if sleeper is None:
        return
    if sleeper.overflowed:
        session.sendq_exceeded()
    elif sleeper.hangup_reason is not None:
        session.user.hangup(sleeper.hangup_reason)


def _holding(transport: Transport) -> int:
    """What `transport` has yet to send. A TLS transport that finished closing cannot say
    (asyncio drops its SSL protocol then, and the size with it): it holds nothing."""
    try:
        return transport.get_write_buffer_size()
    except AttributeError:
        return 0
