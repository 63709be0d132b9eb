"""The TLS listener: telnet over TLS (telnets) with the operator's certificate.

asyncio's own TLS listener calls a protocol's `connection_made` only once the handshake is
done, so a client that never finishes one would hold a descriptor that no limit counts
(and asyncio gives it 60 s). Here the listener is a plain TCP one: `TlsAcceptor` counts
the connection in at accept, like a plain telnet one, then runs the handshake under
`--tls-handshake-timeout`, and only then hands the connection to its telnet protocol.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from asyncio.sslproto import SSLProtocol
from collections.abc import Callable
from typing import cast

from telchat.telnet.admission import Address
from telchat.telnet.guard import Guards
from telchat.telnet.protocol import ChatTelnetServer, peer_of


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context with modern defaults; raises OSError, naming the file, when the
    certificate or the key is unusable (OpenSSL's own errors name neither)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for what, path in (("certificate", cert), ("key", key)):
        if not os.access(path, os.R_OK):
            raise OSError(f"cannot read the TLS {what} {path}")
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise OSError(f"unusable TLS certificate {cert} or key {key}: {exc.reason or exc}") from exc
    return context


class TlsAcceptor(asyncio.Protocol):
    """One TLS connection, from accept until its handshake is done.

    It is the TCP transport's protocol for an instant: at accept it counts the connection
    in and puts asyncio's TLS protocol in its place (what asyncio's own TLS listener does,
    only after counting; under uvloop too, which would read the ClientHello into this
    protocol before a `start_tls` task ran). When the handshake is done, the TLS transport
    calls `connection_made` again and this hands it to the telnet protocol, in that call.
    """

    __slots__ = ("_address", "_context", "_guards", "_make", "_peer", "_timeout")

    def __init__(
        self, make: Callable[[], ChatTelnetServer], context: ssl.SSLContext, guards: Guards, timeout: float
    ) -> None:
        self._make = make
        self._context = context
        self._guards = guards
        self._timeout = timeout
        self._address: Address | None = None
        self._peer = "-"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._address is not None:
            self._hand_over(transport)
            return
        # uvloop's transports do not derive from asyncio's classes: only typed as them.
        transport = cast(asyncio.Transport, transport)
        self._peer = peer_of(transport)
        self._address = self._guards.count_in(transport, self._peer, "tls")
        if self._address is None:
            transport.abort()  # nothing to say it with: a refusal line needs the handshake
            return
        loop = asyncio.get_running_loop()
        handshake = loop.create_future()
        handshake.add_done_callback(self._handshake_done)
        # typeshed says int; asyncio takes any number of seconds.
        timeout = cast(int, self._timeout)
        layer = SSLProtocol(loop, self, self._context, handshake, server_side=True, ssl_handshake_timeout=timeout)
        transport.set_protocol(layer)
        layer.connection_made(transport)

    def _hand_over(self, tls: asyncio.BaseTransport) -> None:
        protocol = self._make()
        protocol.admitted = self._address
        tls.set_protocol(protocol)
        protocol.connection_made(tls)

    def _handshake_done(self, handshake: asyncio.Future[None]) -> None:
        failure = handshake.exception() if not handshake.cancelled() else None
        if failure is None or self._address is None:
            return
        # Timed out, refused by TLS, or the client left: the connection is closed already.
        self._guards.release(self._address)
        self._address = None
        # Not a session yet (no conn_id): named by its listener, as a refusal at accept is.
        error = type(failure).__name__
        self._guards.telemetry.limit("tls_handshake", level="info", peer=self._peer, listener="tls", error=error)
