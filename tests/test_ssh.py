"""The SSH door with the real OpenSSH client in tmux, and asyncssh as a scripted client:
a character-mode session as the SSH user name, chat with a telnet user, PTY resizes as
NAWS, the host key made once and kept, one session per connection, and admission. A
registered nick logs in with a key its account added (`key add`, `key list`, `key remove`)
or with its password through keyboard-interactive, and is not asked it again."""

from __future__ import annotations

import asyncio
import os
import shlex
import stat
import subprocess
import warnings
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from telchat.app import App
from telchat.config import Config
from telchat.telnet.protocol import ChatTelnetServer
from tests.clients import LineClient, RawClient
from tests.conftest import TEST_CONFIG, Connect, room_with, running, user
from tests.health import assert_healthy, session_of
from tests.procs import ServerProcess
from tests.tmux import Pane, require

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # cryptography's DSA deprecation, on import
    import asyncssh

CYRILLIC = "здравствуй, телнет"


def ssh_config(tmp_path: Path, **changes: object) -> Config:
    return replace(TEST_CONFIG, ssh_port=0, ssh_host_key=str(tmp_path / "host_key"), **changes)  # type: ignore[arg-type]


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    async with running(ssh_config(tmp_path)) as server:
        yield server


@pytest.fixture
async def port(app: App) -> int:
    return app.port


def ssh_command(port: int, nick: str, tmp_path: Path) -> list[str]:
    return [
        "ssh", "-tt", "-F", "/dev/null", "-p", str(port),
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}", "-o", "IdentitiesOnly=yes",
        f"{nick}@127.0.0.1",
    ]  # fmt: skip


def protocol_of(app: App, nick: str) -> ChatTelnetServer:
    for session, transport in app.sessions.items():
        if session.user.nick == nick:
            protocol = transport.get_protocol()
            assert isinstance(protocol, ChatTelnetServer)
            return protocol
    raise AssertionError(f"no session for {nick}")


async def test_openssh_user_chats_with_a_telnet_user(app: App, connect: Connect, tmp_path: Path) -> None:
    require("ssh", "tmux")
    assert app.ssh_port is not None
    ann = await user(connect, "ann", "talk")
    pane = await Pane.start(ssh_command(app.ssh_port, "frank", tmp_path), width=100, height=30)
    try:
        await pane.wait_line("*** User change nick anonymous --> frank", timeout=10)
        await pane.type("join talk")
        await pane.keys("Enter")
        await ann.read_until("*** User frank joined room #talk")
        await pane.type("привет из ssh")
        await pane.keys("Enter")
        assert await ann.read_line_bytes() == "#talk:frank> привет из ssh\r\n".encode()
        await ann.send(CYRILLIC)
        await ann.read_until(f"#talk:ann> {CYRILLIC}")
        await pane.wait_line(f"#talk:ann> {CYRILLIC}")

        protocol = protocol_of(app, "frank")
        # A PTY with a terminal type: character mode, as for a telnet terminal.
        assert app.session_classes().count(("telnet", "ssh")) == 1
        assert protocol.get_extra_info("TERM") not in ("", "unknown")
        assert protocol.get_extra_info("cols") == 100
        await pane.tmux("resize-window", "-x", "60", "-y", "20")
        await _until(lambda: protocol.get_extra_info("cols") == 60, "NAWS after the resize")
        assert protocol.get_extra_info("rows") == 20
        # The server's line editor: Up recalls the last line.
        await pane.keys("Up", "Enter")
        assert await ann.read_line_bytes() == "#talk:frank> привет из ssh\r\n".encode()
        # Tab completion, the line editor's too.
        await pane.type("joi")
        await pane.keys("Tab")
        await pane.type("side")
        await pane.keys("Enter")
        await pane.wait_line("*** User frank joined room #side")
        await pane.type("quit")
        await pane.keys("Enter")
        await ann.read_until("*** User frank quit")
    finally:
        await pane.close()


async def test_any_key_or_none_is_taken_and_commands_are_refused(app: App) -> None:
    assert app.ssh_port is not None
    key = asyncssh.generate_private_key("ssh-ed25519")
    for keys in (None, [key]):
        async with asyncssh.connect(
            "127.0.0.1", app.ssh_port, username="keyed", known_hosts=None, client_keys=keys
        ) as conn:
            process = await conn.create_process(term_type="xterm", encoding=None)
            assert await _first_line(process) == "*** Welcome to telchat. Type help for commands."
            process.close()
    # No exec, no subsystem (sftp), no forwarding: the chat is the only thing here. Each on a
    # connection of its own, whose one session channel it would be.
    for attempt in (
        lambda conn: conn.create_process("cat /etc/passwd"),
        lambda conn: conn.start_sftp_client(),
        lambda conn: conn.open_connection("127.0.0.1", app.port),
    ):
        async with asyncssh.connect(
            "127.0.0.1", app.ssh_port, username="nosy", known_hosts=None, client_keys=None
        ) as conn:
            with pytest.raises((asyncssh.ChannelOpenError, asyncssh.SFTPError)):
                await attempt(conn)


async def test_the_host_key_is_made_once_and_kept(tmp_path: Path) -> None:
    config = ssh_config(tmp_path)
    key_path = Path(config.ssh_host_key)
    fingerprints = []
    for _ in range(2):
        async with running(config) as app:
            assert app.ssh_port is not None
            async with asyncssh.connect(
                "127.0.0.1", app.ssh_port, username="probe", known_hosts=None, client_keys=None
            ) as conn:
                fingerprints.append(conn.get_server_host_key().get_fingerprint())
    assert fingerprints[0] == fingerprints[1]
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600


async def test_a_second_session_on_one_connection_is_refused(app: App, connect: Connect) -> None:
    assert app.ssh_port is not None
    ann, bob = await room_with(connect, "ann", "bob")
    async with asyncssh.connect(
        "127.0.0.1", app.ssh_port, username="multi", known_hosts=None, client_keys=None
    ) as conn:
        first, _ = await conn.create_session(asyncssh.SSHClientSession, term_type="xterm", encoding=None)
        await session_of(app, "multi")
        for _ in range(5):
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.create_session(asyncssh.SSHClientSession, term_type="xterm", encoding=None)
        first.close()
    await assert_healthy(app, ann, bob)


async def test_ssh_sessions_share_the_address_count_with_telnet(tmp_path: Path) -> None:
    config = ssh_config(tmp_path, limit_loopback=True, conn_burst_per_ip=500)
    async with running(config) as app:
        assert app.ssh_port is not None
        ann = await user(_connector(app.port), "ann", "room")
        results = await asyncio.gather(*(_ssh(app.ssh_port, f"u{i}") for i in range(20)), return_exceptions=True)
        conns = [result for result in results if not isinstance(result, BaseException)]
        try:
            firsts = await asyncio.gather(*(_first_line(process) for _, process in conns))
        finally:
            for conn, _ in conns:
                conn.close()
        # One count per address for every door: ann holds one of its ten places, nine SSH
        # connections get the others, the rest are cut before their key exchange.
        assert len(conns) == 9
        assert all(isinstance(result, (OSError, asyncssh.Error)) for result in results if result not in conns)
        assert firsts == ["*** Welcome to telchat. Type help for commands."] * 9
        assert app.telemetry.counters.value("limits", kind="conns_per_ip") == 11
        await ann.send("still here")
        await ann.read_until("#room:ann> still here")
        await assert_healthy(app, ann)
        await ann.close()


async def test_a_flood_of_ssh_handshakes_is_cut_before_the_key_exchange(tmp_path: Path) -> None:
    config = ssh_config(tmp_path, limit_loopback=True, conn_burst_per_ip=500)
    async with running(config) as app:
        assert app.ssh_port is not None
        ann = await user(_connector(app.port), "ann", "room")
        # Connections that open the socket and never speak SSH.
        socks = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", app.ssh_port) for _ in range(40)))
        banners = await asyncio.gather(*(reader.read(64) for reader, _ in socks))
        assert sum(1 for banner in banners if banner.startswith(b"SSH-2.0-")) == 9  # ann holds the tenth place
        assert app.telemetry.counters.value("limits", kind="conns_per_ip") == 31
        for _, writer in socks:
            writer.close()
        await ann.send("still here")
        await ann.read_until("#room:ann> still here")
        await _until(lambda: app.guards.admission.total == 1, "the closes")  # ann's place only
        conn, process = await _ssh(app.ssh_port, "later")  # the places are free again
        assert await _first_line(process) == "*** Welcome to telchat. Type help for commands."
        conn.close()
        await assert_healthy(app, ann)
        await ann.close()


def _connector(port: int) -> Connect:
    from tests.clients import RawClient

    async def connect(kind: str = "raw", greet: bool = True) -> RawClient:
        return await RawClient.connect(port, greet=greet)

    return connect


async def _ssh(port: int, nick: str) -> tuple[asyncssh.SSHClientConnection, asyncssh.SSHClientProcess[bytes]]:
    conn = await asyncssh.connect("127.0.0.1", port, username=nick, known_hosts=None, client_keys=None)
    process = await conn.create_process(term_type="xterm", encoding=None)
    return conn, process


async def _first_line(process: asyncssh.SSHClientProcess[bytes]) -> str:
    line = await asyncio.wait_for(process.stdout.readline(), 10)
    return bytes(line).decode().rstrip("\r\n")


async def _until(check: object, what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_an_unusable_host_key_stops_the_start(tmp_path: Path) -> None:
    from tests.procs import run_server

    bad = tmp_path / "host_key"
    bad.write_text("not a key\n")
    result = run_server("--host=127.0.0.1", "--port=0", "--ssh-port=0", f"--ssh-host-key={bad}", "--store=memory://")
    assert result.returncode == 2
    assert f"SSH host key {bad}" in result.stderr


PASSWORD = "s3cret-pw"
DENIED = "Permission denied"
WELCOME = "*** Welcome to telchat."


def keypair(tmp_path: Path, name: str) -> tuple[Path, str, str]:
    """A new Ed25519 key from ssh-keygen: its private key file, public key line and fingerprint."""
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@laptop", "-f", str(path)], check=True)
    public = path.with_suffix(".pub").read_text().strip()
    listed = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], check=True, capture_output=True, text=True)
    return path, public, listed.stdout.split()[1]


async def ssh_pane(app: App, nick: str, *options: str) -> Pane:
    """OpenSSH as a user runs it, in tmux; the pane stays to show how ssh ended."""
    assert app.ssh_port is not None
    command = [
        "ssh", "-tt", "-F", "/dev/null", "-p", str(app.ssh_port),
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        *options, f"{nick}@127.0.0.1",
    ]  # fmt: skip
    return await Pane.start(["sh", "-c", shlex.join(command) + "; echo ssh-exit=$?; sleep 30"])


async def with_key(app: App, nick: str, key: Path) -> Pane:
    return await ssh_pane(app, nick, "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes")


async def owner(connect: Connect, nick: str) -> LineClient:
    client = await user(connect, nick)
    await client.send(f"register {PASSWORD}")
    await client.read_until(f"*** Nick {nick} is now registered")
    return client


async def refused(pane: Pane) -> list[str]:
    try:
        screen = await pane.wait_line("ssh-exit=", timeout=10)
    finally:
        await pane.close()
    assert any(DENIED in line for line in screen), screen
    assert not any(WELCOME in line for line in screen)
    return screen


async def enter(pane: Pane, line: str) -> None:
    await pane.type(line)
    await pane.keys("Enter")


async def test_a_key_logs_in_once_the_account_added_it(app: App, connect: Connect, tmp_path: Path) -> None:
    require("ssh", "ssh-keygen", "tmux")
    key, public, fingerprint = keypair(tmp_path, "boss")
    boss = await owner(connect, "boss")
    # Before `key add`: the key proves nothing, and without a password there is no way in.
    await refused(await with_key(app, "boss", key))

    await boss.send(f"key add {public}")
    await boss.read_until(f"*** Key {fingerprint} added")
    await boss.send("key list")
    await boss.read_until(f"*** Key 1: {fingerprint} boss@laptop")
    await boss.send("quit")
    await boss.wait_closed()

    pane = await with_key(app, "boss", key)
    try:
        screen = await pane.wait_line("*** User change nick anonymous --> boss", timeout=10)
        assert not any("Password" in line for line in screen)
        # Logged in to the account itself: its commands work.
        await enter(pane, "key remove 1")
        await pane.wait_line(f"*** Key {fingerprint} removed")
        await enter(pane, "key list")
        await pane.wait_line("*** No keys; add one with key add <openssh public key>")
        await enter(pane, "quit")
        await pane.wait_line("ssh-exit=")
    finally:
        await pane.close()
    await refused(await with_key(app, "boss", key))


async def test_another_accounts_key_does_not_log_in(app: App, connect: Connect, tmp_path: Path) -> None:
    require("ssh", "ssh-keygen", "tmux")
    key, public, fingerprint = keypair(tmp_path, "ann")
    ann = await owner(connect, "ann")
    await ann.send(f"key add {public}")
    await ann.read_until(f"*** Key {fingerprint} added")
    bob = await owner(connect, "bob")
    await refused(await with_key(app, "bob", key))
    await bob.send("still here")
    await ann.close()


async def test_keyboard_interactive_takes_the_password(app: App, connect: Connect, tmp_path: Path) -> None:
    require("ssh", "tmux")
    boss = await owner(connect, "boss")
    await boss.send("quit")
    await boss.wait_closed()
    options = ("-o", "PreferredAuthentications=keyboard-interactive", "-o", "NumberOfPasswordPrompts=1")

    pane = await ssh_pane(app, "boss", *options)
    try:
        await pane.wait_line("Password:", timeout=10)
        await enter(pane, "wrong-password")
    except BaseException:
        await pane.close()
        raise
    await refused(pane)

    pane = await ssh_pane(app, "boss", *options)
    try:
        await pane.wait_line("Password:", timeout=10)
        await enter(pane, PASSWORD)
        screen = await pane.wait_line("*** User change nick anonymous --> boss", timeout=10)
        # Asked once, by SSH: not again inside the session, and never shown.
        assert not any("*** Password for boss" in line for line in screen)
        assert not any(PASSWORD in line for line in screen)
    finally:
        await pane.close()


async def test_key_commands_refuse_bad_input(app: App, connect: Connect, tmp_path: Path) -> None:
    anon = await user(connect, "anon", "room")
    await anon.send("key list")
    await anon.read_until("*** Your nick is not registered; type register <password> first")
    # Bare, only its three actions make the command: other lines are messages.
    await anon.send("key points are clear")
    await anon.read_until("#room:anon> key points are clear")
    boss = await owner(connect, "boss")
    for line, reply in (
        ("key add not-a-key", "*** Not an OpenSSH public key"),
        ("key remove 1", "*** No key 1; key list shows them"),
        ("/key frobnicate", "*** Usage: key add <openssh public key>"),
        ("key list", "*** No keys; add one with key add <openssh public key>"),
    ):
        await boss.send(line)
        await boss.read_until(reply)
    _, public, fingerprint = keypair(tmp_path, "boss")
    await boss.send(f"key add {public}")
    await boss.read_until(f"*** Key {fingerprint} added")
    await boss.send(f"key add {public}")
    await boss.read_until(f"*** Key {fingerprint} is already added")
    for number in range(2, 11):
        _, public, added = keypair(tmp_path, f"k{number}")
        await boss.send(f"key add {public}")
        await boss.read_until(f"*** Key {added} added")
    _, public, _ = keypair(tmp_path, "eleventh")
    await boss.send(f"key add {public}")
    await boss.read_until("*** An account holds at most 10 keys")
    await boss.send(f"key remove {fingerprint}")
    await boss.read_until(f"*** Key {fingerprint} removed")
    await boss.send("key list")
    lines = await boss.read_until("*** Key 9: ")
    assert fingerprint not in "".join(lines)


async def test_ssh_password_guesses_are_throttled_with_telnet_logins(app: App, connect: Connect) -> None:
    assert app.ssh_port is not None
    boss = await owner(connect, "boss")
    await boss.send("quit")
    await boss.wait_closed()
    guesser = await connect()
    await guesser.send("login boss wrong-one")
    await guesser.read_until("*** Wrong password for boss")
    for _ in range(app.config.login_failures - 1):
        with pytest.raises(asyncssh.PermissionDenied):
            await _password_login(app.ssh_port, "boss", "wrong-two")
    # The failures of both doors add up: now even the right password is refused, unverified.
    with pytest.raises(asyncssh.PermissionDenied):
        await _password_login(app.ssh_port, "boss", PASSWORD)
    assert app.telemetry.counters.value("limits", kind="login_failures") >= 1
    await guesser.send(f"login boss {PASSWORD}")
    await guesser.read_until("*** Too many")


async def test_ssh_keys_are_kept_in_the_account_on_sqlite(tmp_path: Path) -> None:
    config = ssh_config(tmp_path, store=f"sqlite:///{tmp_path / 'telchat.db'}")
    key = asyncssh.generate_private_key("ssh-ed25519", comment="boss@desk")
    public = key.export_public_key("openssh").decode().strip()
    async with running(config) as app:
        boss = await owner(_connector(app.port), "boss")
        await boss.send(f"key add {public}")
        await boss.read_until(f"*** Key {key.get_fingerprint()} added")
        await boss.close()
    async with running(config) as app:  # a restart: the key is read back from the database
        assert app.ssh_port is not None
        async with asyncssh.connect(
            "127.0.0.1", app.ssh_port, username="boss", known_hosts=None, client_keys=[key]
        ) as conn:
            process = await conn.create_process(term_type="xterm", encoding=None)
            await _line_starting(process, "*** User change nick anonymous --> boss")
            process.close()


async def test_a_wrong_ssh_password_is_logged_with_its_door() -> None:
    """A guess through SSH comes before any session, so it has no conn_id: its address and
    its door (`transport`) tell it from a telnet guess, which names its connection too."""
    server = ServerProcess("--ssh-port=0", "--store=memory://", "--flood-rate=0")
    try:
        ssh_port = server.wait_event("listening")["ssh_port"]
        boss = await RawClient.connect(server.port)
        await boss.login("boss")
        await boss.send(f"register {PASSWORD}")
        await boss.read_until("*** Nick boss is now registered")
        await boss.send("quit")
        guesser = await RawClient.connect(server.port)
        await guesser.send("login boss wrong-one")
        await guesser.read_until("*** Wrong password for boss")
        with pytest.raises(asyncssh.PermissionDenied):
            await _password_login(ssh_port, "boss", "wrong-two")
        by_ssh = server.wait_for(lambda r: r["event"] == "login_failed" and r.get("transport") == "ssh", "ssh")
        assert "conn_id" not in by_ssh and by_ssh["peer"].startswith("127.0.0.1:") and by_ssh["account"] == "boss"
        (by_telnet,) = [r for r in server.events if r["event"] == "login_failed" and r.get("transport") == "telnet"]
        assert isinstance(by_telnet["conn_id"], int) and by_telnet["account"] == "boss"
        await guesser.close()
    finally:
        server.kill()


async def _password_login(port: int, nick: str, password: str) -> None:
    async with asyncssh.connect(
        "127.0.0.1", port, username=nick, password=password, known_hosts=None, client_keys=None
    ):
        pass


async def _line_starting(process: asyncssh.SSHClientProcess[bytes], prefix: str) -> None:
    for _ in range(20):
        if (await _first_line(process)).startswith(prefix):
            return
    raise AssertionError(f"no line {prefix!r}")
