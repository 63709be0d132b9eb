"""A scripted client for the web door: telnet over a WebSocket, as the page speaks it.

It is a RawClient (refuses every option, reads lines) whose byte stream is a WebSocket's
binary messages instead of a TCP socket's: the same server code is on the other end.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import aiohttp

from tests.clients import RawClient

SUBPROTOCOL = "telnet.mudstandards.org"


class _Reader:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws

    async def read(self, _n: int = -1) -> bytes:
        message = await self._ws.receive()
        if message.type is aiohttp.WSMsgType.BINARY:
            return bytes(message.data)
        return b""  # CLOSE, CLOSED or ERROR: the end of the stream


class _Writer:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._sends: list[asyncio.Task[None]] = []

    def write(self, data: bytes) -> None:
        self._sends.append(asyncio.ensure_future(self._ws.send_bytes(data)))

    async def drain(self) -> None:
        sends, self._sends = self._sends, []
        await asyncio.gather(*sends)


class WebClient(RawClient):
    session: aiohttp.ClientSession
    ws: aiohttp.ClientWebSocketResponse

    @classmethod
    async def connect(  # type: ignore[override]
        cls, port: int, greet: bool = True, headers: dict[str, str] | None = None, tls: ssl.SSLContext | None = None
    ) -> WebClient:
        session = aiohttp.ClientSession()
        scheme = "https" if tls is not None else "http"
        try:
            ws = await session.ws_connect(
                f"{scheme}://127.0.0.1:{port}/telnet",
                protocols=(SUBPROTOCOL,),
                headers=headers,
                max_msg_size=0,
                ssl=tls if tls is not None else True,
            )
        except BaseException:
            await session.close()
            raise
        client = cls(_Reader(ws), _Writer(ws))  # type: ignore[arg-type]
        client.session, client.ws = session, ws
        if greet:
            await client.expect("*** Welcome to telchat. Type help for commands.")
        return client

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.ws.close()
        await self.session.close()
