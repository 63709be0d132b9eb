"""`--web-port`: one page with a terminal in it, and telnet over a WebSocket behind it.

Each WebSocket drives a `ChatTelnetServer` from the same `protocol_factory` as the telnet
listener, through `WebSocketTransport`: admission and the telnet guard, negotiation, the
client class, the character-mode Terminal and its line editor, and the Session are the
telnet listener's own objects. This module adds only what a browser brings: an Origin to
check, a message size to bound, and a client address that a reverse proxy may forward.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.http_websocket import WebSocketError

from telchat.config import Config
from telchat.obs.logs import get_logger
from telchat.obs.telemetry import Telemetry
from telchat.telnet.protocol import ChatTelnetServer, peer_of
from telchat.web.transport import WebSocketTransport

log = get_logger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
# The registered subprotocol for telnet carried in WebSocket binary messages.
SUBPROTOCOL = "telnet.mudstandards.org"
# No request to this server has a body.
MAX_REQUEST_BODY = 1024
# A WebSocket closing handshake waits this long for the browser's answer.
CLOSE_TIMEOUT = 5.0
# The page, its script and xterm.js come from this server only; xterm.js sets inline styles.
CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class WebDoor:
    def __init__(self, config: Config, factory: Callable[[], ChatTelnetServer], telemetry: Telemetry) -> None:
        self._config = config
        self._factory = factory
        self._telemetry = telemetry
        self._origins = {_netloc(origin) for origin in _items(config.web_origins)}
        self._proxies = [ipaddress.ip_network(item, strict=False) for item in _items(config.web_trusted_proxies)]
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None

    async def start(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        backlog: int,
        *,
        reuse_port: bool,
        listener: socket.socket | None = None,
    ) -> int:
        """Listen on `host` and `port`, or on `listener` (carried over a server upgrade)."""
        app = web.Application(client_max_size=MAX_REQUEST_BODY)
        app.router.add_get("/", self._page)
        app.router.add_get("/telnet", self._websocket)
        app.router.add_static("/static/", STATIC)
        app.on_response_prepare.append(_headers)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        assert self._runner.server is not None
        loop = asyncio.get_running_loop()
        if listener is not None:
            self._server = await loop.create_server(self._runner.server, sock=listener, ssl=tls, backlog=backlog)
        else:
            self._server = await loop.create_server(
                self._runner.server, host, port, ssl=tls, backlog=backlog, reuse_port=reuse_port or None
            )
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info("web_listening", host=host, port=bound, tls=tls is not None)
        return bound

    def sockets(self) -> list[socket.socket]:
        return list(self._server.sockets) if self._server is not None else []

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        """After the sessions ended: drop what is left (a page still loading, say)."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        tcp = request.transport
        if tcp is None:
            raise web.HTTPBadRequest()
        peer = self.client_of(request, tcp)
        if not self._origin_allowed(request):
            self._telemetry.limit(
                "web_origin",
                conn_id=self._telemetry.next_conn_id(),
                peer=f"{peer[0]}:{peer[1]}",
                transport="web",
                origin=request.headers.get("Origin"),
            )
            raise web.HTTPForbidden(text="*** This page may not open a chat connection (Origin not allowed).\n")
        ws = web.WebSocketResponse(
            protocols=(SUBPROTOCOL,),
            # aiohttp refuses a message of max_msg_size bytes itself: the option is the largest allowed.
            max_msg_size=self._config.web_max_frame_bytes + 1,
            compress=False,  # a deflate bomb is not worth the bytes saved on chat text
            timeout=CLOSE_TIMEOUT,
        )
        await ws.prepare(request)
        transport = WebSocketTransport(ws, tcp, peer)
        protocol = self._factory()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        await self._read(ws, transport, protocol)
        return ws

    async def _read(self, ws: web.WebSocketResponse, transport: WebSocketTransport, protocol: ChatTelnetServer) -> None:
        """Hand each message's bytes to the telnet protocol, as a socket's data would be."""
        try:
            while await transport.readable():
                message = await ws.receive()
                if message.type is WSMsgType.BINARY:
                    protocol.data_received(message.data)
                elif message.type is WSMsgType.TEXT:
                    protocol.data_received(message.data.encode())
                else:
                    if message.type is WSMsgType.ERROR:
                        self._errored(protocol, transport, message.data)
                    break
        finally:
            protocol.connection_lost(None)
            await transport.closed()

    def _errored(self, protocol: ChatTelnetServer, transport: WebSocketTransport, error: object) -> None:
        if not (isinstance(error, WebSocketError) and error.code == WSCloseCode.MESSAGE_TOO_BIG):
            return
        # aiohttp has closed the WebSocket (code 1009); the session ends with this reason.
        if protocol.guard is not None:
            protocol.guard.gate.cut = "web_frame"
        self._telemetry.limit(
            "web_frame",
            conn_id=protocol.conn_id,
            peer=peer_of(transport),
            transport="web",
            bytes=self._config.web_max_frame_bytes,
        )

    def _origin_allowed(self, request: web.Request) -> bool:
        """A browser always sends Origin: a page may open the WebSocket only if it is this
        server's own (same host and port; the scheme may differ behind a TLS proxy) or one
        listed in --web-origins. Without Origin it is not a browser, and nothing a browser
        holds (cookies, a logged-in page) is at stake."""
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        netloc = _netloc(origin)
        return netloc == request.host.lower() or netloc in self._origins

    def client_of(self, request: web.Request, tcp: asyncio.BaseTransport) -> tuple[str, int]:
        peer = tcp.get_extra_info("peername") or ("-", 0)
        forwarded = forwarded_client(str(peer[0]), request.headers.getall("X-Forwarded-For", []), self._proxies)
        return (str(peer[0]), int(peer[1])) if forwarded is None else (forwarded, 0)


def forwarded_client(peer: str, headers: Sequence[str], proxies: Sequence[Network]) -> str | None:
    """The client address that trusted proxies forwarded, or None to use the socket's.

    X-Forwarded-For lists every hop, the nearest last; only the hops that trusted proxies
    appended are believed, so the answer is the last address not itself a trusted proxy.
    """
    if not _trusted(peer, proxies):
        return None
    hops = [hop.strip() for header in headers for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return None  # a hop that is not an address: believe none of the header
        if not any(address in network for network in proxies):
            return str(address)
    return hops[0] if hops else None


def _trusted(address: str, proxies: Sequence[Network]) -> bool:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in proxies)


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _netloc(origin: str) -> str:
    return urlsplit(origin.strip()).netloc.lower()


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
