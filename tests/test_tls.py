"""The telnets listener: a TLS session beside the plain one, with a certificate made here."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from telchat.app import App
from telchat.config import parse_config
from tests.clients import RawClient, TermClient
from tests.conftest import with_config
from tests.procs import ServerProcess, run_server
from tests.tmux import require


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    return make_certificate(tmp_path)


def make_certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, and its key."""
    require("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
async def tls_app(certificate: tuple[Path, Path]) -> AsyncIterator[App]:
    cert, key = certificate
    server = App(with_config(tls_port=0, tls_cert=str(cert), tls_key=str(key)))
    await server.start()
    yield server
    await server.stop()


async def tls_connect(port: int, cert: Path, cls: type[RawClient] = RawClient) -> RawClient:
    context = ssl.create_default_context(cafile=str(cert))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    client = cls(reader, writer)
    await client.expect("*** Welcome to telchat. Type help for commands.")
    return client


async def test_tls_session_beside_plain_listener(tls_app: App, certificate: tuple[Path, Path]) -> None:
    assert tls_app.tls_port is not None and tls_app.tls_port != tls_app.port
    secure = await tls_connect(tls_app.tls_port, certificate[0])
    plain = await RawClient.connect(tls_app.port)
    try:
        await secure.login("secure")
        await secure.join("one", "secure")
        await plain.login("plain")
        await plain.join("one", "plain")
        await secure.read_until("*** User plain joined")
        await plain.send("hello over plain")
        assert await secure.read_line() == "#one:plain> hello over plain"
        await secure.send("привет по TLS")
        assert (await plain.read_until("#one:secure>"))[-1] == "#one:secure> привет по TLS"
    finally:
        await secure.close()
        await plain.close()


async def test_tls_terminal_gets_character_mode_too(tls_app: App, certificate: tuple[Path, Path]) -> None:
    assert tls_app.tls_port is not None
    term = await tls_connect(tls_app.tls_port, certificate[0], TermClient)
    try:
        await term.send("login tls")
        assert await term.read_line() == "login tls\r\x1b[K*** User change nick anonymous --> tls"
    finally:
        await term.close()


def test_tls_port_needs_certificate_and_key() -> None:
    with pytest.raises(SystemExit):
        parse_config(["--tls-port=992"], {})
    config = parse_config(["--tls-port=992", "--tls-cert=c.pem", "--tls-key=k.pem"], {})
    assert (config.tls_port, config.tls_cert, config.tls_key) == (992, "c.pem", "k.pem")


async def test_a_stalled_handshakes_limit_event_names_its_listener(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server = ServerProcess("--tls-port=0", f"--tls-cert={cert}", f"--tls-key={key}", "--tls-handshake-timeout=0.2")
    try:
        tls_port = server.wait_event("listening")["tls_port"]
        _, writer = await asyncio.open_connection("127.0.0.1", tls_port)  # and never says hello
        event = server.wait_for(lambda r: r["event"] == "limit" and r["kind"] == "tls_handshake", "the limit")
        # Not a session yet: no conn_id, named by its listener as a refusal at accept is.
        assert event["listener"] == "tls" and event["peer"].startswith("127.0.0.1:") and "conn_id" not in event
        writer.close()
    finally:
        server.kill()


def test_an_unusable_certificate_stops_the_start_and_is_named(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    _, key = certificate
    missing = tmp_path / "missing.pem"
    # With workers, before any is forked (each would fail, and be restarted, over and over):
    # no Redis is asked either, the certificate is checked first.
    workers = ["--port=24999", "--workers=2", "--store=redis://127.0.0.1:1/0", "--tls-port=0"]
    result = run_server(*workers, f"--tls-cert={missing}", f"--tls-key={key}")
    assert (result.returncode, result.stderr.strip()) == (2, f"telchat: cannot read the TLS certificate {missing}")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    result = run_server("--port=0", "--store=memory://", "--tls-port=0", f"--tls-cert={garbage}", f"--tls-key={key}")
    assert result.returncode == 2
    assert f"unusable TLS certificate {garbage} or key {key}" in result.stderr
