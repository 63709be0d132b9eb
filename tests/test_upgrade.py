"""SIGUSR2: the server runs the code on disk in the same process, and drops no one.

Real processes: the server runs from a copy of the source tree, which the tests then change
(the greeting) or break (a syntax error) before they signal it.
"""

from __future__ import annotations

import asyncio
import enum
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from telchat.clients.gmcp import PLAYERS_INTERVAL
from telchat.upgrade import incompatible
from tests.clients import MudClient, RawClient, TermClient
from tests.procs import ROOT, ServerProcess
from tests.redis_server import RedisServer, free_port
from tests.test_redis import worker_of
from tests.test_tls import make_certificate, tls_connect
from tests.webclient import WebClient

WELCOME = "*** Welcome to telchat. Type help for commands."
NEW_WELCOME = "*** Welcome to telchat, upgraded. Type help for commands."
UNCARRIED = (
    "*** The server is being upgraded and cannot keep TLS, SSH or web connections open. Please reconnect in a moment."
)
LINES = 100
RATE = 50.0


def copied_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "telchat", tree / "telchat", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "server.py", tree)
    return tree


def change_greeting(tree: Path) -> None:
    replies = tree / "telchat" / "rules" / "replies.py"
    text = replies.read_text()
    assert WELCOME in text
    replies.write_text(text.replace(WELCOME, NEW_WELCOME))


def start(tree: Path, *args: str, command: list[str] | None = None) -> ServerProcess:
    return ServerProcess(*args, command=command or [str(tree / "server.py")], env={"PYTHONPATH": str(tree)})


async def member(port: int, nick: str, room: str = "ops") -> RawClient:
    client = await RawClient.connect(port)
    await client.login(nick)
    await client.join(room, nick)
    return client


async def said(
    client: RawClient | MudClient, nick: str, last: str, room: str = "ops", others: list[str] | None = None
) -> list[str]:
    """The lines `nick` said in `room`, as `client` got them, up to `last`; the other lines
    read meanwhile go to `others`."""
    lines: list[str] = []
    prefix = f"#{room}:{nick}> "
    while not lines or lines[-1] != last:
        line = await client.read_line(10)
        if line.startswith(prefix):
            lines.append(line.removeprefix(prefix))
        elif others is not None:
            others.append(line)
    return lines


async def echoed(term: TermClient, text: str) -> None:
    """Read a character-mode terminal's lines (echo and redraws included) until one shows `text`."""
    while text not in await term.read_line():
        pass


async def upgrade_mid_stream(
    server: ServerProcess,
    sender: RawClient,
    nick: str,
    receivers: tuple[RawClient | MudClient, ...],
    others: list[str] | None = None,
) -> list[list[str]]:
    """`sender` says LINES lines at RATE, and the server gets SIGUSR2 a third of the way
    through; what each receiver got of them (their other lines go to `others`)."""
    upgrade = asyncio.Event()
    sending = asyncio.create_task(send_lines(sender, LINES, LINES // 3, upgrade))
    await upgrade.wait()
    server.proc.send_signal(signal.SIGUSR2)
    got = await asyncio.gather(*(said(r, nick, f"line {LINES - 1}", others=others) for r in receivers))
    await sending
    return list(got)


async def send_lines(sender: RawClient, count: int, upgrade_at: int, upgrade: asyncio.Event) -> None:
    for number in range(count):
        if number == upgrade_at:
            upgrade.set()
        await sender.send(f"line {number}")
        await asyncio.sleep(1 / RATE)


async def test_upgrade_keeps_everyone_and_everything(tmp_path: Path) -> None:
    tree = copied_tree(tmp_path)
    # Fakelag holds some of the sender's lines back: those waiting are carried over too.
    server = start(tree, "--flood-rate", "25", "--flood-burst", "10")
    try:
        port = server.port
        sender = await member(port, "sender")
        plain = await member(port, "plain")
        vasya = await member(port, "vasya")
        await vasya.send("set charset cp1251")
        await vasya.read_until("*** Charset is now cp1251")
        mud = await MudClient.connect(port)
        await mud.login("mud")
        await mud.join("ops", "mud")
        term = await TermClient.connect(port)
        await term.send("login term")
        await echoed(term, "*** User change nick anonymous --> term")
        await term.send("join ops")
        await echoed(term, "*** User term joined room #ops")
        # Half a line typed, the cursor moved two places left of its end.
        await term.send_bytes(b"half\x1b[D\x1b[D")
        await term.drain()
        receivers = (plain, vasya, mud)
        for receiver in receivers:
            await receiver.drain()
        await asyncio.sleep(PLAYERS_INTERVAL)  # the players lists of these joins are out
        await mud.drain()
        mud.gmcp.clear()

        change_greeting(tree)
        got = await upgrade_mid_stream(server, sender, "sender", receivers)
        event = server.wait_event("upgrade")

        assert event["pid"] == server.proc.pid
        assert event["sessions"] == 5
        # plain and vasya, line-mode and idle, were back before their sessions were built.
        assert event["dormant"] >= 2
        expected = [f"line {n}" for n in range(LINES)]
        for lines in got:
            assert lines == expected
        assert not [e for e in server.events if e["event"] == "disconnect"]

        newcomer = await RawClient.connect(port, greet=False)
        assert await newcomer.read_line() == NEW_WELCOME
        await plain.send("who ops")
        assert await plain.read_line() == "*** Users in #ops: mud, plain, sender, term, vasya"

        # One players list after the upgrade: a change the old image held back goes on.
        members = ["mud", "plain", "sender", "term", "vasya"]
        assert await mud.gmcp_message("Comm.Channel.Players") == [{"name": n, "channels": ["ops"]} for n in members]
        mud.gmcp.clear()
        await sender.send("привет")
        assert (await vasya.read_line_bytes()).decode("cp1251") == "#ops:sender> привет\r\n"
        assert await mud.gmcp_message("Comm.Channel.Text") == {
            "channel": "ops",
            "talker": "sender",
            "text": "#ops:sender> привет",
        }

        # The half-typed line is still there, the cursor where it was: X lands inside it.
        await term.drain()
        await term.send_bytes(b"X\r\n")
        assert await said(plain, "term", "haXlf") == ["haXlf"]

        await plain.send("history 3")
        assert await plain.read_until("#ops:term> haXlf") == [
            "*** #ops history",
            "#ops:sender> line 99",
            "#ops:sender> привет",
            "#ops:term> haXlf",
        ]
        for client in (sender, plain, vasya, mud, term, newcomer):
            await client.close()
    finally:
        server.kill()


# What breaks the new code: the file, how, and what the failed check says.
BREAKAGES = {
    "syntax error": ("rules/replies.py", lambda text: text + "\nthis is not python(\n", "SyntaxError"),
    "state version": (
        "upgrade.py",
        lambda text: text.replace(
            "STATE_VERSION = 2\nREADABLE_VERSIONS = frozenset({1, STATE_VERSION})",
            "STATE_VERSION = 3\nREADABLE_VERSIONS = frozenset({STATE_VERSION})",
        ),
        "state format version 2; this code reads versions 3 only",
    ),
}


@pytest.mark.parametrize(("version", "readable"), [(1, True), (2, True), (3, False), (None, False)])
def test_the_state_of_an_older_image_is_read_and_a_newer_one_refused(version: int | None, readable: bool) -> None:
    # Version 1 wrote every key of a record; 2 leaves the empty ones out, read as empty.
    assert (incompatible({"version": version}) is None) is readable


@pytest.mark.parametrize("breakage", BREAKAGES)
async def test_new_code_failing_its_check_keeps_everyone_on_the_old(tmp_path: Path, breakage: str) -> None:
    tree = copied_tree(tmp_path)
    server = start(tree)
    try:
        ann = await member(server.port, "ann")
        bob = await member(server.port, "bob")
        name, change, error = BREAKAGES[breakage]
        module = tree / "telchat" / name
        module.write_text(change(module.read_text()))
        server.proc.send_signal(signal.SIGUSR2)
        failed = server.wait_event("upgrade_failed")
        assert failed["stage"] == "check"
        assert error in failed["error"]
        await ann.send("still here")
        assert await said(bob, "ann", "still here") == ["still here"]
        newcomer = await RawClient.connect(server.port, greet=False)
        assert await newcomer.read_line() == WELCOME
        assert server.proc.poll() is None
        for client in (ann, bob, newcomer):
            await client.close()
    finally:
        server.kill()


@pytest.mark.parametrize("during", ["upgrade_started", "upgrade_exec"])
async def test_a_second_signal_during_an_upgrade_is_ignored(tmp_path: Path, during: str) -> None:
    tree = copied_tree(tmp_path)
    server = start(tree)
    try:
        ann = await member(server.port, "ann")
        server.proc.send_signal(signal.SIGUSR2)
        server.wait_event(during)
        # While the new code is checked, the handler ignores it; once the new image is
        # exec'd, before its interpreter handles anything, the ignored disposition does.
        server.proc.send_signal(signal.SIGUSR2)
        assert server.wait_event("upgrade")["upgrades"] == 1
        if during == "upgrade_started":
            assert server.wait_event("upgrade_ignored")["reason"] == "an upgrade is already under way"
            assert [e["event"] for e in server.events].count("upgrade_started") == 1
        await ann.send("after")
        assert await said(ann, "ann", "after") == ["after"]
        assert server.proc.poll() is None
        await ann.close()
    finally:
        server.kill()


async def test_tls_and_web_users_are_told_and_closed_cleanly(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    tree = copied_tree(tmp_path)
    server = start(
        tree, "--tls-port", "0", "--tls-cert", str(cert), "--tls-key", str(key), "--web-port", "0", "--ssh-port", "0"
    )
    try:
        listening = server.wait_event("listening")
        doors = {door: listening_socket(int(listening[door])) for door in ("port", "tls_port", "web_port", "ssh_port")}
        tls_port = int(listening["tls_port"])
        plain = await member(server.port, "plain")
        secure = await tls_connect(tls_port, cert)
        web = await WebClient.connect(int(listening["web_port"]))
        for client, nick in ((secure, "secure"), (web, "webby")):
            await client.login(nick)
            await client.join("ops", nick)
        await plain.drain()
        server.proc.send_signal(signal.SIGUSR2)
        for client in (secure, web):
            assert (await client.wait_closed(10)).endswith(UNCARRIED.encode() + b"\r\n")
        quits = {await plain.read_line(10), await plain.read_line(10)}
        assert quits == {"*** User secure quit (server upgrade)", "*** User webby quit (server upgrade)"}
        upgraded = server.wait_event("upgrade")
        assert upgraded["sessions"] == 1
        # Every listener was carried over, the same socket (a connect meanwhile waited in its backlog).
        relistening = server.wait_for(lambda e: e["event"] == "listening" and e is not listening, "new listening")
        assert {door: listening_socket(int(relistening[door])) for door in doors} == doors
        again = await tls_connect(tls_port, cert)
        await again.login("secure")
        web_again = await WebClient.connect(int(relistening["web_port"]))
        await web_again.login("webby")
        for client in (plain, again, web_again):
            await client.close()
    finally:
        server.kill()


def listening_socket(port: int) -> int:
    """The inode of the socket listening on `port` (/proc/net/tcp: state 0A is LISTEN)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return int(fields[9])
    raise AssertionError(f"nothing listens on {port}")


# Each way to start telchat, with the store each test runs it on: history must survive either.
ENTRIES = {
    "server.py": (None, "--store=sqlite:///telchat.db"),
    "-m telchat": (["-m", "telchat"], "--store=memory://"),
    "console script": ([str(Path(sys.executable).parent / "telchat")], "--store=memory://"),
}


@pytest.mark.parametrize("entry", ENTRIES)
async def test_upgrade_twice_from_each_command_line(tmp_path: Path, entry: str) -> None:
    tree = copied_tree(tmp_path)
    command, store = ENTRIES[entry]
    server = start(tree, store, command=command)
    try:
        ann = await member(server.port, "ann")
        await ann.send("before")
        previous = "before"
        for round_ in (1, 2):
            server.proc.send_signal(signal.SIGUSR2)
            server.wait_for(lambda e, r=round_: e["event"] == "upgrade" and e["upgrades"] == r, f"upgrade {round_}")
            await ann.send(f"after {round_}")
            assert (await said(ann, "ann", f"after {round_}"))[-1] == f"after {round_}"
            await ann.send("history 2")
            assert await ann.read_until(f"#ops:ann> after {round_}") == [
                "*** #ops history",
                f"#ops:ann> {previous}",
                f"#ops:ann> after {round_}",
            ]
            previous = f"after {round_}"
        await ann.close()
    finally:
        server.kill()


def cached_bytecode(pid: int, source: Path) -> tuple[Path, Path]:
    """The bytecode cache the process `pid` runs with, and where `source`'s bytecode is in it."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    prefix = Path(next(v for v in environ if v.startswith(b"PYTHONPYCACHEPREFIX=")).partition(b"=")[2].decode())
    source = source.resolve()
    return prefix, prefix / source.parent.relative_to("/") / f"{source.stem}.{sys.implementation.cache_tag}.pyc"


async def test_a_server_writing_no_bytecode_gets_the_checks_bytecode(tmp_path: Path) -> None:
    """Under PYTHONDONTWRITEBYTECODE the new image would compile every module within the
    pause: it reads what the check compiled instead, from a private cache directory."""
    tree = copied_tree(tmp_path)
    server = ServerProcess(
        command=[str(tree / "server.py")],
        env={"PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": ""},
    )
    try:
        ann = await member(server.port, "ann")
        signalled = time.time()
        server.proc.send_signal(signal.SIGUSR2)
        server.wait_event("upgrade")
        prefix, compiled = cached_bytecode(server.proc.pid, tree / "telchat" / "app.py")
        assert prefix.stat().st_mode & 0o077 == 0
        assert compiled.stat().st_mtime >= signalled - 1
        # The interpreter's own first imports too: their bytecode is not read from beside them.
        assert cached_bytecode(server.proc.pid, Path(enum.__file__))[1].exists()
        assert not (tree / "telchat" / "__pycache__").exists()  # the tree itself is left as it was
        await ann.send("after")
        assert await said(ann, "ann", "after") == ["after"]
        await ann.close()
    finally:
        server.kill()


async def test_redis_node_keeps_its_identity_and_nicks(tmp_path: Path, redis: RedisServer) -> None:
    tree = copied_tree(tmp_path)
    # A short node TTL: a node that came back under another identity would be buried (and
    # its users quit) by the other node within the test.
    options = (f"--store={redis.url}", "--node-ttl=2", "--flood-rate=0")
    upgraded, other = start(tree, *options), start(tree, *options)
    try:
        ann = await member(upgraded.port, "ann")
        sam = await member(other.port, "sam")
        bea = await member(other.port, "bea")
        for client in (ann, sam, bea):
            await client.drain()
        change_greeting(tree)
        seen: list[str] = []
        got = await upgrade_mid_stream(upgraded, sam, "sam", (ann, bea), seen)
        assert upgraded.wait_event("upgrade")["sessions"] == 1
        expected = [f"line {n}" for n in range(LINES)]
        assert got == [expected, expected]
        nodes = [e["node"] for e in upgraded.events if e["event"] == "redis_open"]
        assert len(nodes) == 2 and nodes[0] == nodes[1]

        await asyncio.sleep(3)  # past the node TTL: a lost identity would have been buried by now
        await bea.send("who ops")
        seen += await bea.read_until("*** Users in #ops")
        assert seen == ["*** Users in #ops: ann, bea, sam"]
        assert not [e for e in other.events if e["event"] == "redis_node_lost"]
        rival = await RawClient.connect(other.port)
        await rival.send("login ann")
        assert await rival.read_line() == "*** Nick ann is already taken"
        await ann.send("still mine")
        assert await said(bea, "ann", "still mine") == ["still mine"]
        for client in (ann, sam, bea, rival):
            await client.close()
    finally:
        upgraded.kill()
        other.kill()


async def test_workers_upgrade_one_at_a_time_then_the_parent(tmp_path: Path, redis: RedisServer) -> None:
    tree = copied_tree(tmp_path)
    port = free_port()
    server = start(tree, f"--port={port}", "--workers=2", f"--store={redis.url}", "--flood-rate=0")
    try:
        first = server.wait_event("listening")["worker"]
        server.wait_for(lambda r: r["event"] == "listening" and r["worker"] != first, "second worker listening")
        # Connect until both workers serve someone: the kernel picks the worker.
        clients: list[RawClient] = []
        while len({worker_of(server, c) for c in clients}) < 2 and len(clients) < 40:
            clients.append(await member(port, f"u{len(clients)}"))
        workers = {worker_of(server, c) for c in clients}
        assert len(workers) == 2
        for client in clients:
            await client.drain()
        change_greeting(tree)
        got = await upgrade_mid_stream(server, clients[0], "u0", tuple(clients[1:]))
        assert got == [[f"line {n}" for n in range(LINES)]] * (len(clients) - 1)
        upgrades = [
            server.wait_for(lambda e, w=w: e["event"] == "upgrade" and e["worker"] == w, "upgrade") for w in workers
        ]
        assert {e["pid"] for e in upgrades} == workers
        kept = server.wait_event("supervisor_upgraded")
        assert kept["pid"] == server.proc.pid and sorted(kept["workers"]) == sorted(workers)
        newcomer = await RawClient.connect(port, greet=False)
        assert await newcomer.read_line() == NEW_WELCOME
        await clients[1].send("who ops")
        names = ", ".join(sorted((f"u{i}" for i in range(len(clients))), key=str.casefold))
        assert await clients[1].read_line() == f"*** Users in #ops: {names}"
        for client in (*clients, newcomer):
            await client.close()
    finally:
        server.end()


async def test_password_typed_across_an_upgrade_never_reaches_the_chat(tmp_path: Path) -> None:
    tree = copied_tree(tmp_path)
    server = start(tree)
    try:
        frank = await member(server.port, "frank")
        await frank.send("register s3cret-pw")
        await frank.read_until("*** Nick frank is now registered to you")
        await frank.send("quit")
        await frank.wait_closed()
        ann = await member(server.port, "ann")
        bob = await member(server.port, "bob")
        await ann.drain()
        await bob.send("login frank")
        await bob.read_until("*** Password for frank")
        server.proc.send_signal(signal.SIGUSR2)
        server.wait_event("upgrade")
        await bob.send("s3cret-pw")
        assert await bob.read_line() == (
            "*** The server was upgraded while you typed that; your line was not used. Please try again."
        )
        await bob.send("after")
        lines: list[str] = []
        assert await said(ann, "bob", "after", others=lines) == ["after"]
        assert not any("s3cret-pw" in line for line in lines)
        for client in (ann, bob):
            await client.close()
    finally:
        server.kill()


async def test_a_slow_readers_backlog_is_carried_over(tmp_path: Path) -> None:
    # A small kernel send buffer: most of the backlog then sits in the transport's buffer,
    # which dies with the old image unless the upgrade carries it.
    server = start(copied_tree(tmp_path), "--max-sndbuf", "8192", "--flood-rate", "0")
    try:
        sloth_sock = socket.socket()
        sloth_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sloth_sock.connect(("127.0.0.1", server.port))
        reader, writer = await asyncio.open_connection(sock=sloth_sock)
        sloth = RawClient(reader, writer)
        await sloth.read_until(WELCOME)
        await sloth.login("sloth")
        await sloth.join("ops", "sloth")
        talker = await member(server.port, "talker")
        sloth.writer.transport.pause_reading()  # and the kernel buffers fill
        payload = "p" * 900
        lines = 60  # some 55 KB: within the sendq, far past what the kernel holds for it
        for number in range(lines):
            await talker.send(f"{number} {payload}")
        await talker.read_until(f"#ops:talker> {lines - 1} ")
        server.proc.send_signal(signal.SIGUSR2)
        upgrade = server.wait_event("upgrade")
        assert upgrade["unsent_bytes"] > 16384 and upgrade["lost_bytes"] == 0
        sloth.writer.transport.resume_reading()
        got = await said(sloth, "talker", f"{lines - 1} {payload}")
        assert got == [f"{number} {payload}" for number in range(lines)]
        await talker.close()
        await sloth.close()
    finally:
        server.kill()
