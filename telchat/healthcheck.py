"""Container health probe: `python -m telchat.healthcheck`, exit 0 if healthy, else 1.

With TELCHAT_METRICS_PORT set it asks `/healthz`, which also checks the store; without it,
it can only check that the telnet port accepts a TCP connection. Standard library only, so
the probe works in the slim image and starts fast every interval.
"""

from __future__ import annotations

import http.client
import os
import socket
import sys
from collections.abc import Mapping

TIMEOUT = 2.0
DEFAULT_PORT = "2323"
# A wildcard bind is reachable on loopback; a specific address may only be reachable there.
_WILDCARDS = ("", "0.0.0.0", "::")


def _host(environ: Mapping[str, str], name: str) -> str:
    host = environ.get(name, "").strip()
    return "127.0.0.1" if host in _WILDCARDS else host


def _healthz(host: str, port: int) -> tuple[bool, str]:
    # http.client, not urllib: urllib would honour HTTP_PROXY and ask a proxy instead.
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        # A 503's body says why (listener or store); it ends up in `docker inspect`, on one line.
        body = " ".join(response.read(200).decode("utf-8", "replace").split())
    finally:
        conn.close()
    return response.status == 200, f"HTTP {response.status} {body}".rstrip()


def _tcp(host: str, port: int) -> tuple[bool, str]:
    with socket.create_connection((host, port), timeout=TIMEOUT):
        return True, "connected"


def check(environ: Mapping[str, str]) -> tuple[bool, str]:
    """(healthy, one line saying what was probed and how it went)."""
    metrics_port = environ.get("TELCHAT_METRICS_PORT", "").strip()
    if metrics_port:
        host, port, what = _host(environ, "TELCHAT_METRICS_HOST"), metrics_port, "GET /healthz"
    else:
        host, port, what = _host(environ, "TELCHAT_HOST"), environ.get("TELCHAT_PORT", "").strip(), "TCP connect"
        port = port or DEFAULT_PORT
    where = f"{what} on {host}:{port}"
    try:
        probe = _healthz if metrics_port else _tcp
        healthy, result = probe(host, int(port))
    except (OSError, ValueError, http.client.HTTPException) as exc:
        healthy, result = False, " ".join(str(exc).split()) or type(exc).__name__
    return healthy, f"{'healthy' if healthy else 'unhealthy'}: {where}: {result}"


def main() -> int:
    healthy, line = check(os.environ)
    print(line, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
