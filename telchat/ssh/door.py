"""`--ssh-port`: `ssh -p PORT nick@host` opens a chat session as that nick.

asyncssh does SSH; each session channel drives a `ChatTelnetServer` from the telnet
listener's own `protocol_factory`, through `SshTransport` and the in-process
`TelnetShim`: admission, the telnet guard, negotiation, the client class and the
character-mode line editor are the telnet listener's. An SSH user name that is not a
registered nick needs no authentication and is typed as `login <name>` for the user; a
registered nick must prove itself to SSH, with a key its account added (`key add`) or its
password (keyboard-interactive or password auth), and its session starts logged in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, cast

with warnings.catch_warnings():
    # cryptography warns on import about DSA, which telchat neither offers nor accepts.
    warnings.simplefilter("ignore")
    import asyncssh

from telchat.config import Config
from telchat.obs.logs import get_logger
from telchat.ssh.shim import TelnetShim
from telchat.telnet.admission import Address
from telchat.telnet.guard import Guards
from telchat.telnet.protocol import ChatTelnetServer

log = get_logger(__name__)

HOST_KEY_TYPE = "ssh-ed25519"
# An SSH client has this long to authenticate and open its session.
LOGIN_TIMEOUT = 15.0
# SSH keepalives find dead peers; the telnet layer's TIMING-MARK pings are answered by the shim.
KEEPALIVE_INTERVAL = 60.0
KEEPALIVE_COUNT_MAX = 3


def host_key(path: Path) -> asyncssh.SSHKey:
    """The server's host key: read from `path`, or made there (mode 0600) on the first start."""
    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key(HOST_KEY_TYPE)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another worker made it first
        return asyncssh.read_private_key(str(path))
    with os.fdopen(descriptor, "wb") as file:
        file.write(key.export_private_key())
    log.info("ssh_host_key_created", path=str(path), fingerprint=key.get_fingerprint())
    return key


class Owners(Protocol):
    """Who owns a registered nick, as the accounts (above this layer) know it."""

    async def registered(self, raw_nick: str) -> bool: ...

    async def key_proves(self, raw_nick: str, fingerprint: str) -> bool: ...

    async def password_proves(self, raw_nick: str, password: str, peer: str, door: str) -> bool: ...


class SshDoor:
    def __init__(self, config: Config, factory: Callable[[], ChatTelnetServer], guards: Guards, owners: Owners) -> None:
        self._config = config
        self._factory = factory
        self._guards = guards
        self._owners = owners
        self._server: asyncssh.SSHAcceptor | None = None

    async def start(
        self, host: str, port: int, backlog: int, *, reuse_port: bool, listener: socket.socket | None = None
    ) -> int:
        """Listen on `host` and `port`, or on `listener` (carried over a server upgrade)."""
        path = Path(self._config.ssh_host_key)
        try:
            key = host_key(path)
        except (asyncssh.KeyImportError, ValueError) as exc:
            # An OSError, as for an unreadable TLS key: the server says so and exits 2.
            raise OSError(f"SSH host key {path}: {exc}") from exc
        where: dict[str, Any] = {"sock": listener} if listener is not None else {"host": host, "port": port}
        self._server = await asyncssh.create_server(
            lambda: ChatSshServer(self._factory, self._guards, self._owners),
            **where,
            server_host_keys=[key],
            encoding=None,
            allow_pty=True,
            x11_forwarding=False,
            agent_forwarding=False,
            login_timeout=LOGIN_TIMEOUT,
            keepalive_interval=KEEPALIVE_INTERVAL,
            keepalive_count_max=KEEPALIVE_COUNT_MAX,
            backlog=backlog,
            reuse_port=(reuse_port or None) if listener is None else None,
        )
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info("ssh_listening", host=host, port=bound, fingerprint=key.get_fingerprint())
        return bound

    def sockets(self) -> list[socket.socket]:
        return list(self._server.sockets) if self._server is not None else []

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()


class ChatSshServer(asyncssh.SSHServer):
    """One SSH connection: counted in at accept, authenticated only for a registered nick,
    one chat session at most."""

    def __init__(self, factory: Callable[[], ChatTelnetServer], guards: Guards, owners: Owners) -> None:
        self._factory = factory
        self._guards = guards
        self._owners = owners
        # The registered nick this connection is proving (or proved, once authenticated).
        self._claimed: str | None = None
        self._peer = "-:0"
        self._conn: asyncssh.SSHServerConnection | None = None
        self._session: ChatSshSession | None = None
        # Counted in, and not yet handed to a started session (whose telnet guard releases it).
        self._address: Address | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        # Like TLS: counted before the key exchange, the costly part, so that a flood of
        # handshakes meets the same per-address and server limits as telnet connections.
        peer = conn.get_extra_info("peername") or ("-", 0)
        self._peer = f"{peer[0]}:{peer[1]}"
        # count_in reads only get_extra_info("peername"), which the connection answers as its socket.
        self._address = self._guards.count_in(cast(asyncio.BaseTransport, conn), self._peer, "ssh")
        if self._address is None:
            conn.abort()  # before the key exchange: there is no channel to say why on
            return
        self._conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        address, self._address = self._address, None
        if address is not None:
            self._guards.release(address)

    async def begin_auth(self, username: str) -> bool:
        # Any key, or none, for a nick nobody registered, as ssh-chat does: `login` claims it.
        self._claimed = username if await self._owners.registered(username) else None
        return self._claimed is not None

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return await self._owners.key_proves(username, key.get_fingerprint())

    def password_auth_supported(self) -> bool:
        # asyncssh asks the same password through keyboard-interactive, which is what
        # OpenSSH's default configuration offers.
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        return await self._owners.password_proves(username, password, self._peer, "ssh")

    def session_requested(self) -> ChatSshSession | bool:
        # One session per connection: the connection was counted once.
        if self._session is not None or self._conn is None:
            return False
        self._session = ChatSshSession(self._conn, self._factory, self._hand_over, self._claimed)
        return self._session

    def _hand_over(self) -> Address | None:
        address, self._address = self._address, None
        return address


class ChatSshSession(asyncssh.SSHServerSession[bytes]):
    def __init__(
        self,
        conn: asyncssh.SSHServerConnection,
        factory: Callable[[], ChatTelnetServer],
        admitted: Callable[[], Address | None],
        proven: str | None,
    ) -> None:
        self._conn = conn
        # The registered nick the connection authenticated as; None: nobody's.
        self._proven = proven
        self._factory = factory
        # The connection's place in the admission count, taken over when the session starts.
        self._admitted = admitted
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._term = ""
        self._size = (80, 24)
        self._shim: TelnetShim | None = None
        self._protocol: ChatTelnetServer | None = None
        self._transport: SshTransport | None = None
        self._replies: list[bytes] = []

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any) -> bool:
        self._term = term_type
        self._size = (term_size[0] or 80, term_size[1] or 24)
        return True

    def shell_requested(self) -> bool:
        return True

    def session_started(self) -> None:
        assert self._chan is not None
        self._shim = TelnetShim(self._term, *self._size, reply=self._reply, show=self._show)
        self._transport = SshTransport(self._chan, self._conn, self._shim)
        self._protocol = self._factory()
        self._protocol.admitted = self._admitted()
        self._protocol.proven_nick = self._proven
        self._transport.set_protocol(self._protocol)
        self._protocol.connection_made(self._transport)
        nick = self._conn.get_extra_info("username") or ""
        if self._proven is None and nick and nick.isprintable() and not any(ch.isspace() for ch in nick):
            self._input(f"login {nick}\r\n".encode())

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._shim is not None:
            self._input(self._shim.from_user(data))

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self._shim is not None:
            self._shim.resize(width, height)

    def eof_received(self) -> bool:
        self._lost()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()
        self._conn.close()

    def _lost(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.connection_lost(None)

    def _input(self, data: bytes) -> None:
        if self._protocol is not None and self._transport is not None and not self._transport.is_closing():
            self._protocol.data_received(data)

    def _show(self, text: bytes) -> None:
        if self._chan is not None and not self._chan.is_closing():
            self._chan.write(text)

    def _reply(self, data: bytes) -> None:
        # The shim answers while the server is still writing: deliver after that write returns.
        if not self._replies:
            asyncio.get_running_loop().call_soon(self._send_replies)
        self._replies.append(data)

    def _send_replies(self) -> None:
        data, self._replies = b"".join(self._replies), []
        self._input(data)


class SshTransport(asyncio.Transport):
    """What a ChatTelnetServer takes for its socket: the shim reads its telnet, the channel
    carries the text, and reading pauses by pausing the channel."""

    def __init__(
        self, chan: asyncssh.SSHServerChannel[bytes], conn: asyncssh.SSHServerConnection, shim: TelnetShim
    ) -> None:
        super().__init__()
        self._chan = chan
        self._conn = conn
        self._shim = shim
        self._closing = False
        self._protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing:
            self._shim.from_server(bytes(data))

    def get_write_buffer_size(self) -> int:
        return int(self._chan.get_write_buffer_size())

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Send what is queued, then close the channel (and with it the connection)."""
        if not self._closing:
            self._closing = True
            with contextlib.suppress(OSError):
                self._chan.exit(0)

    def abort(self) -> None:
        self._closing = True
        self._conn.abort()

    def pause_reading(self) -> None:
        self._chan.pause_reading()

    def resume_reading(self) -> None:
        self._chan.resume_reading()

    def is_reading(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._conn.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol
