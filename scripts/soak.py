#!/usr/bin/env python3
"""Soak test: a real telchat process on loopback, under a mix of users, for a bounded time.

Normal users chat in rooms for the whole run; flooders send as fast as the server lets them;
slow readers never read (and come back when cut off); disconnectors connect and leave in
every way a client can, some of them abusively. At the end it prints what was sent and
delivered, the server's disconnect reasons and limits (from its JSON log), and the server's
RSS and open file descriptors over time. Exit status 1 if a well-behaved user lost a message
or saw a control character, or the server logged an error or did not exit cleanly.

    python scripts/soak.py --minutes 5
    python scripts/soak.py --seconds 10 --users 8 -- --sendq-bytes=16384   # server options after --
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import random
import re
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # loopback only, always
IAC = 0xFF
LIMITS = {"minutes": 120, "users": 1000, "flooders": 100, "slow_readers": 100, "disconnectors": 100, "rooms": 100}
SAY = re.compile(r"^#(?P<room>[^:]+):(?P<nick>[^>]+)> (?P<text>.*)$")
TELNET = re.compile(rb"\xff[\xfb-\xfe].|\xff[\xf0-\xfa]", re.DOTALL)
Samples = list[tuple[float, float, int]]  # (seconds into the run, server RSS in MiB, open fds)
HANGUP = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)


# the server process


class Server:
    """`python server.py` on an ephemeral loopback port, its JSON log tallied as it comes."""

    def __init__(self, extra: list[str]) -> None:
        # Its own working directory: the default store starts empty, and the checkout stays clean.
        self.home = tempfile.TemporaryDirectory(prefix="telchat-soak-")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "server.py"), "--host", HOST, "--port", "0", "--log-format", "json", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.home.name,
        )
        self.stderr: list[str] = []
        self.disconnects: Counter[str] = Counter()
        self.limits: Counter[str] = Counter()
        self.errors: list[dict[str, Any]] = []
        self.connects = 0
        self._port: queue.Queue[int] = queue.Queue()
        threading.Thread(target=self._read_log, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self.port = self._port.get(timeout=20)

    def _read_log(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            name = event["event"]
            if name == "listening":
                self._port.put(int(event["port"]))
            elif name == "connect":
                self.connects += 1
            elif name == "disconnect":
                self.disconnects[event["reason"]] += 1
            elif name == "limit":
                self.limits[event["kind"]] += 1
            if event.get("level") == "error":
                self.errors.append(event)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(line.decode(errors="replace") for line in self.proc.stderr)

    def sample(self) -> tuple[float, int]:
        """(RSS in MiB, open file descriptors)."""
        rss_kib = next(
            int(line.split()[1]) for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        )  # fmt: skip
        return rss_kib / 1024, len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self, timeout: float = 10.0) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.terminate()
        code = self.proc.wait(timeout)
        return code, time.monotonic() - started


# a minimal client


class Client:
    """A raw TCP client that refuses telnet options by ignoring them, and reads lines."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._buffer = b""

    @classmethod
    async def open(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def send(self, text: str) -> None:
        self.writer.write(text.encode() + b"\r\n")
        await self.writer.drain()

    async def line(self) -> str | None:
        """The next line with telnet commands removed, or None at EOF."""
        while b"\r\n" not in self._buffer:
            data = await self.reader.read(65536)
            if not data:
                return None
            self._buffer += data
        raw, _, self._buffer = self._buffer.partition(b"\r\n")
        return strip_telnet(raw).decode("utf-8", "replace")

    async def until(self, prefix: str) -> None:
        while (line := await self.line()) is not None:
            if line.startswith(prefix):
                return
        raise EOFError(prefix)

    def reset(self) -> None:
        sock = self.writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def strip_telnet(data: bytes) -> bytes:
    # Enough for what the server sends a UTF-8 client that ignores it: option requests.
    return TELNET.sub(b"", data)


def unsafe(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf") and ch != "\u200d" for ch in text)


# the run


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    unsafe_lines: list[str] = field(default_factory=list)
    out_of_order: int = 0
    expected: int = 0
    delivered: int = 0


@dataclass
class Run:
    port: int
    args: argparse.Namespace
    deadline: float
    tally: Tally = field(default_factory=Tally)
    members: dict[str, list[str]] = field(default_factory=dict)
    listeners: list[asyncio.Task[None]] = field(default_factory=list)
    said: dict[str, int] = field(default_factory=dict)  # normal user -> last line number sent
    heard: dict[str, int] = field(default_factory=dict)  # normal user -> last own line heard back
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def running(self) -> bool:
        return time.monotonic() < self.deadline and self.tally.sent["normal"] < self.args.max_messages

    def room(self, n: int) -> str:
        return f"r{n % self.args.rooms}"


async def normal_user(run: Run, n: int) -> Client:
    """Joins, and starts listening: it must hear every normal user of its room, in order."""
    nick, room = f"u{n}", run.room(n)
    client = await Client.open(run.port)
    await client.send(f"login {nick}")
    await client.send(f"join {room}")
    await client.until(f"*** User {nick} joined room #{room}")
    run.members.setdefault(room, []).append(nick)
    run.listeners.append(asyncio.create_task(listen(run, client, str(n))))
    return client


async def chat(run: Run, n: int, client: Client) -> None:
    """Says a line every `pace` seconds on average, until the run ends."""
    rng = random.Random(n)
    seq = 0
    while True:
        await asyncio.sleep(rng.expovariate(1 / run.args.pace))
        if not run.running:
            return
        seq += 1
        run.said[str(n)] = seq
        run.tally.sent["normal"] += 1
        run.tally.expected += len(run.members[run.room(n)])
        await client.send(f"m{n}-{seq} " + "z" * rng.randint(10, 300))


async def listen(run: Run, client: Client, me: str) -> None:
    last: dict[str, int] = {}
    while (line := await client.line()) is not None:
        if unsafe(line):
            run.tally.unsafe_lines.append(line)
        said = SAY.match(line)
        if said is None or not said["nick"].startswith("u"):
            continue
        sender, seq = said["text"].split(" ", 1)[0][1:].split("-")
        run.tally.delivered += 1
        if int(seq) <= last.get(sender, 0):
            run.tally.out_of_order += 1
        last[sender] = int(seq)
        if sender == me:
            run.heard[me] = int(seq)
            run.progress.set()


async def all_heard(run: Run) -> None:
    """Until every normal user has heard its own last line: the same turn delivers it to all."""
    while any(run.heard.get(sender, 0) < seq for sender, seq in run.said.items()):
        run.progress.clear()
        await run.progress.wait()


async def flooder(run: Run, n: int) -> None:
    """Sends lines as fast as the server takes them, and reads what comes back."""
    client = await Client.open(run.port)
    nick = f"flood{n}"
    await client.send(f"login {nick}")
    await client.send(f"join {run.room(n)}")

    async def drain_input() -> None:
        while (line := await client.line()) is not None:
            if line.startswith(f"#{run.room(n)}:{nick}> "):
                run.tally.received["flood"] += 1

    reading = asyncio.create_task(drain_input())
    batch = b"".join(b"flood %d spam spam spam spam\r\n" % i for i in range(100))
    with contextlib.suppress(OSError, TimeoutError):
        while run.running:
            client.writer.write(batch)
            run.tally.sent["flood"] += 100
            # The server holds flooders back, so a drain can take until the end of the run.
            await asyncio.wait_for(client.writer.drain(), max(0.1, run.deadline - time.monotonic()))
    reading.cancel()
    client.reset()


async def slow_reader(run: Run, n: int) -> None:
    """Lurks in every room and never reads; when cut off, comes back as someone new."""
    generation = 0
    while run.running:
        generation += 1
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # An Ethernet-sized segment, as over a real link: with loopback's 64 KiB segments the
        # server's kernel would buffer megabytes for it before the server's own queue grew.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1400)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (HOST, run.port))
        joins = "".join(f"join {run.room(room)}\r\n" for room in range(run.args.rooms))
        sock.send(f"login slow{n}x{generation}\r\n{joins}".encode())
        run.tally.events["slow reader joined"] += 1
        if await cut_off(run, sock):
            run.tally.events["slow reader cut off"] += 1
        sock.close()


async def cut_off(run: Run, sock: socket.socket) -> bool:
    """Wait until the server drops `sock` (True) or the run ends (False), without reading."""
    poller = select.poll()
    poller.register(sock.fileno(), HANGUP)
    while run.running:
        if poller.poll(0):
            return True
        await asyncio.sleep(0.5)
    return False


async def disconnector(run: Run, n: int) -> None:
    """Connects and leaves, over and over, in every way a client can."""
    rng = random.Random(1000 + n)
    ways = list(LEAVE_WAYS)
    while run.running:
        way = rng.choice(ways)
        with contextlib.suppress(OSError, EOFError, TimeoutError):
            await asyncio.wait_for(LEAVE_WAYS[way](run, f"d{n}"), 10)
        run.tally.events[f"left by {way}"] += 1
        await asyncio.sleep(rng.uniform(0.05, 0.5))


async def joined(run: Run, nick: str) -> Client:
    client = await Client.open(run.port)
    await client.send(f"login {nick}")
    await client.send(f"join {run.room(0)}")
    await client.until(f"*** User {nick} joined")
    return client


async def leave_by_quit(run: Run, nick: str) -> None:
    client = await joined(run, nick)
    await client.send("/quit bye")
    while await client.line() is not None:
        pass
    await client.close()


async def leave_by_close(run: Run, nick: str) -> None:
    await (await joined(run, nick)).close()


async def leave_by_reset(run: Run, nick: str) -> None:
    (await joined(run, nick)).reset()


async def leave_by_half_close(run: Run, nick: str) -> None:
    client = await joined(run, nick)
    await client.send("last words")
    client.writer.write_eof()
    while await client.line() is not None:
        pass
    await client.close()


async def leave_during_negotiation(run: Run, nick: str) -> None:
    (await Client.open(run.port)).reset()


async def leave_by_unterminated_flood(run: Run, nick: str) -> None:
    client = await joined(run, nick)
    client.writer.write(b"x" * 20000)
    while await client.line() is not None:
        pass
    client.reset()


async def leave_by_subnegotiation_flood(run: Run, nick: str) -> None:
    client = await joined(run, nick)
    client.writer.write(bytes([IAC, 250, 24]) + b"t" * 20000)
    while await client.line() is not None:
        pass
    client.reset()


async def leave_after_escapes(run: Run, nick: str) -> None:
    client = await joined(run, nick)
    for attack in ("\x1b[2J\x1b]0;pwned\x07hi", "\u202eevil\u2066", "\x9b31m\x07\x08", "y" * 2000):
        await client.send(attack)
    await client.close()


LEAVE_WAYS: dict[str, Callable[[Run, str], Coroutine[Any, Any, None]]] = {
    "quit": leave_by_quit,
    "close": leave_by_close,
    "reset": leave_by_reset,
    "half-close": leave_by_half_close,
    "negotiation": leave_during_negotiation,
    "unterminated": leave_by_unterminated_flood,
    "subnegotiation": leave_by_subnegotiation_flood,
    "escapes": leave_after_escapes,
}


async def sample_server(server: Server, run: Run, samples: Samples, started: float) -> None:
    while run.running:
        rss, fds = server.sample()
        samples.append((time.monotonic() - started, rss, fds))
        await asyncio.sleep(run.args.sample_every)


async def soak(server: Server, args: argparse.Namespace) -> tuple[Run, Samples]:
    started = time.monotonic()
    run = Run(server.port, args, deadline=started + args.seconds)
    samples: Samples = []
    samples.append((0.0, *server.sample()))
    # Everyone is in their room before anyone speaks: each must then hear every line.
    clients = await asyncio.gather(*(normal_user(run, n) for n in range(args.users)))
    users = [asyncio.create_task(chat(run, n, client)) for n, client in enumerate(clients)]
    others = [asyncio.create_task(flooder(run, n)) for n in range(args.flooders)]
    others += [asyncio.create_task(slow_reader(run, n)) for n in range(args.slow_readers)]
    others += [asyncio.create_task(disconnector(run, n)) for n in range(args.disconnectors)]
    others.append(asyncio.create_task(sample_server(server, run, samples, started)))
    await asyncio.gather(*others, *users)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_heard(run), args.settle)
    await asyncio.sleep(0.2)
    for listener in run.listeners:
        listener.cancel()
    for client in clients:
        await client.close()
    await asyncio.sleep(1.0)  # for the server to notice the last departures
    samples.append((time.monotonic() - started, *server.sample()))
    return run, samples


def report(server: Server, run: Run, samples: Samples, code: int, stop_s: float) -> dict[str, Any]:
    tally = run.tally
    args = run.args
    summary = {
        "command": " ".join(sys.argv),
        "seconds": args.seconds,
        "mix": {
            "users": args.users,
            "rooms": args.rooms,
            "flooders": args.flooders,
            "slow_readers": args.slow_readers,
            "disconnectors": args.disconnectors,
        },
        "normal": {
            "sent": tally.sent["normal"],
            "deliveries_expected": tally.expected,
            "delivered": tally.delivered,
            "lost": tally.expected - tally.delivered,
            "out_of_order": tally.out_of_order,
            "unsafe_lines": len(tally.unsafe_lines),
        },
        "flooders": {"lines_written": tally.sent["flood"], "echoed_back": tally.received["flood"]},
        "client_events": dict(sorted(tally.events.items())),
        "server": {
            "connections": server.connects,
            "disconnect_reasons": dict(server.disconnects.most_common()),
            "limits": dict(server.limits.most_common()),
            "errors_logged": len(server.errors),
            "stderr_lines": len(server.stderr),
            "exit_code": code,
            "shutdown_seconds": round(stop_s, 2),
        },
        "samples": [{"t": round(t), "rss_mib": round(rss, 1), "fds": fds} for t, rss, fds in samples],
    }
    print_summary(summary)
    return summary


def print_summary(s: dict[str, Any]) -> None:
    normal, flood, srv = s["normal"], s["flooders"], s["server"]
    print(f"soak: {s['seconds']} s, mix {s['mix']}")
    print(
        f"normal users: {normal['sent']} messages sent, {normal['delivered']}/{normal['deliveries_expected']}"
        f" deliveries, lost {normal['lost']}, out of order {normal['out_of_order']},"
        f" lines with control characters {normal['unsafe_lines']}"
    )
    print(f"flooders: {flood['lines_written']} lines written, {flood['echoed_back']} delivered so far (fakelag)")
    print(f"client events: {s['client_events']}")
    print(f"server: {srv['connections']} connections; disconnect reasons {srv['disconnect_reasons']}")
    print(f"server limits hit: {srv['limits']}")
    print(
        f"server errors logged: {srv['errors_logged']}, stderr lines {srv['stderr_lines']};"
        f" exit code {srv['exit_code']}, {srv['shutdown_seconds']} s after SIGTERM"
    )
    print(f"{'t (s)':>6} {'RSS (MiB)':>10} {'fds':>5}")
    for row in s["samples"]:
        print(f"{row['t']:>6} {row['rss_mib']:>10} {row['fds']:>5}")


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    ours, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    duration = parser.add_mutually_exclusive_group()
    duration.add_argument("--minutes", type=float, help="how long to run (default 5)")
    duration.add_argument("--seconds", type=float, help="how long to run, in seconds")
    parser.add_argument("--users", type=int, default=40, help="normal users, chatting all along")
    parser.add_argument("--rooms", type=int, default=8)
    parser.add_argument("--flooders", type=int, default=4)
    parser.add_argument("--slow-readers", type=int, default=4)
    parser.add_argument("--disconnectors", type=int, default=6)
    parser.add_argument(
        "--pace",
        type=float,
        default=1.5,
        help="mean seconds between a normal user's lines; keep it well above 1/flood-rate, or fakelag holds them back",
    )
    parser.add_argument("--max-messages", type=int, default=1_000_000, help="stop after this many normal lines")
    parser.add_argument("--settle", type=float, default=10.0, help="at most this long for the last deliveries")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS/fd samples")
    parser.add_argument("--json", type=Path, help="also write the summary here, as JSON")
    args = parser.parse_args(ours)
    args.seconds = args.seconds if args.seconds is not None else 60 * (args.minutes or 5)
    for name, most in LIMITS.items():
        value = args.seconds / 60 if name == "minutes" else getattr(args, name)
        if not 0 <= value <= most:
            parser.error(f"{name} must be between 0 and {most}")
    if args.users < 1 or args.rooms < 1:
        parser.error("need at least one user and one room")
    return args, extra


def main(argv: list[str] | None = None) -> int:
    args, extra = parse(sys.argv[1:] if argv is None else argv)
    server = Server(extra)
    try:
        run, samples = asyncio.run(soak(server, args))
        code, stop_s = server.stop()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    summary = report(server, run, samples, code, stop_s)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    normal = summary["normal"]
    healthy = normal["lost"] == 0 and normal["unsafe_lines"] == 0 and normal["out_of_order"] == 0
    return 0 if healthy and not server.errors and not server.stderr and code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
