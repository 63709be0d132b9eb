"""The running server: listener, sessions, and graceful shutdown."""

from __future__ import annotations

import asyncio
import time
from asyncio import Transport

import telnetlib3

from telchat import replies
from telchat.config import Config
from telchat.logs import get_logger
from telchat.outbox import Flusher
from telchat.protocol import (
    ChatTelnetServer,
    ChunkReader,
    TransportSink,
    log_negotiation,
    make_shell,
    negotiated_charset,
    peer_of,
    pump,
)
from telchat.rooms import Chat
from telchat.session import Session
from telchat.store import HistoryStore, MemoryStore
from telchat.telnetguard import Guards, keep_no_closed_clients

log = get_logger("telchat.app")


class App:
    def __init__(self, config: Config, store: HistoryStore | None = None) -> None:
        self.config = config
        self.store = store or MemoryStore(config.history_keep)
        self.chat = Chat(self.store, config.history_replay, config.announce_nicks)
        self.sessions: dict[Session, Transport] = {}
        self._flusher = Flusher()
        self.guards = Guards(config)
        self._server: telnetlib3.Server | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        await self.store.open()
        self._server = await telnetlib3.create_server(
            host=self.config.host,
            port=self.config.port,
            protocol_factory=ChatTelnetServer.guarded(self.guards),
            shell=make_shell(self._run_session),
            encoding="utf8",
            # 'strict' (telnetlib3's default) kills the session on one bad byte either way.
            encoding_errors="replace",
            force_binary=True,
            line_mode=True,
            connect_maxwait=self.config.connect_maxwait,
            timeout=0,
        )
        keep_no_closed_clients(self._server)
        log.info("listening", host=self.config.host, port=self.port)

    async def _run_session(self, reader: ChunkReader, protocol: ChatTelnetServer, transport: Transport) -> None:
        if self._stopping:
            return
        charset = negotiated_charset(protocol)
        log_negotiation(protocol, charset)
        session = Session(
            self.chat,
            self.config,
            sink=TransportSink(transport),
            flusher=self._flusher,
            close=transport.abort,
            conn_id=protocol.conn_id,
            peer=peer_of(transport),
            charset=charset,
            gate=protocol.guard.gate if protocol.guard is not None else None,
        )
        self.sessions[session] = transport
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        reason = "error"
        try:
            session.start()
            reason = await pump(reader, session.feed, lambda: session.closing)
        except Exception:
            log.exception("session_failed")
        finally:
            self.sessions.pop(session, None)
            session.finish(reason)
            if not transport.is_closing():
                transport.close()

    async def stop(self) -> None:
        """Stop accepting, say goodbye to everyone, flush, close. Safe to call twice."""
        if self._stopping:
            return
        self._stopping = True
        started = time.monotonic()
        if self._server is not None and self._server._server is not None:
            # Close only the listener: telnetlib3's Server.close() would drop clients unwarned.
            self._server._server.close()
        self.chat.broadcast_all(replies.GOODBYE)
        self._flusher.flush()
        await self._drain(self.config.shutdown_grace)
        for session, transport in list(self.sessions.items()):
            session.reason = session.reason or "shutdown"
            transport.close()
        await self._wait_sessions_ended(deadline=started + self.config.shutdown_grace + 1.0)
        await self.store.close()
        log.info("shutdown", sessions=len(self.sessions), duration=round(time.monotonic() - started, 3))

    async def _wait_sessions_ended(self, deadline: float) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=max(0.0, deadline - time.monotonic()))

    async def _drain(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not any(t.get_write_buffer_size() for t in self.sessions.values()):
                return
            await asyncio.sleep(0.02)
