"""telchat's benchmark: the same loopback load against telchat and against a minimal raw-asyncio
server of the same line protocol (scripts/bench_reference.py), one after the other, with the
ratios between them. docs/PERFORMANCE.md explains the scenarios and the numbers.

    python scripts/bench.py --scenario all            # a to d, about 75 s on 2 cores
    python scripts/bench.py --scenario e              # the connection storm, about a minute
    python scripts/bench.py --scenario a --quick      # a smoke run
    python scripts/bench.py --scenario b --server-arg=--store=memory:// --json out.json

Every phase has a time cap and the whole run stops after --max-seconds, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import json
import math
import os
import platform
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from bench_load import Client, Dial, Member, Recorder, connect_all

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
DRAIN_QUIET = 2.0
DRAIN_MAX = 10.0
FD_MARGIN = 200
PY_SPY = str(Path(sys.executable).with_name("py-spy"))
SERVER_CORE, LOAD_CORE = 0, 1


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    clients: int
    rooms: int
    senders: int = 0
    # Messages per second per sender; 0 sends open loop (each sender keeps `window` in flight).
    rate: float = 0.0
    window: int = 8
    warmup: float = 1.0
    duration: float = 6.0
    # Sessions scenario: how long to hold everyone, and how many one-at-a-time probe greetings.
    hold: float = 0.0
    probes: int = 0
    # "" leaves telchat its default (auto), which the reference then mirrors.
    announce_nicks: str = "all"
    # Storm scenario: everyone connects at once (`concurrency` at a time), then one probe
    # per room proves every member live.
    storm: bool = False
    text_bytes: int = 64
    concurrency: int = 50
    # Every Nth client checks each message it receives; the rest count them.
    check_every: int = 1

    @property
    def traffic(self) -> bool:
        return self.senders > 0

    def describe(self) -> str:
        what = f"{self.clients} clients, {self.rooms} room{'s' if self.rooms != 1 else ''}"
        if self.storm:
            return f"{what}, {self.concurrency} connecting at a time, default options, one probe per room"
        if not self.traffic:
            return f"{what}, held {self.hold:g} s, {self.probes} probe connects"
        pace = f"{self.rate:g} msg/s each" if self.rate else f"open loop, window {self.window}"
        return f"{what}, {self.senders} senders {pace}, {self.duration:g} s measured"


SCENARIOS = {
    "a": Scenario("a", "latency, one room", clients=100, rooms=1, senders=10, rate=20),
    "b": Scenario("b", "throughput, one room, open loop", clients=100, rooms=1, senders=10, window=16, check_every=20),
    "c": Scenario("c", "latency, many rooms", clients=1000, rooms=50, senders=100, rate=5, announce_nicks="rooms"),
    "d": Scenario("d", "many sessions held", clients=10000, rooms=500, hold=3.0, probes=200, announce_nicks="rooms"),
    "e": Scenario("e", "connection storm", clients=10000, rooms=500, concurrency=200, storm=True, announce_nicks=""),
}
# How long the storm's probes get to reach every member.
PROOF_TIMEOUT = 30.0
QUICK: dict[str, Any] = {"warmup": 0.3, "duration": 1.5, "hold": 0.5, "probes": 20}
QUICK_SESSIONS = 1000
# Scenario d upgrades telchat in place (SIGUSR2) with every session held, when it can.
UPGRADES = (ROOT / "telchat" / "upgrade.py").exists()
UPGRADE_TIMEOUT = 60.0
# Upgrades in a row: the pause is their median (one varies by half again on a shared VM).
UPGRADE_ROUNDS = 3
# After the upgrade, how long a client the handover dropped gets to be noticed.
UPGRADE_SETTLE = 1.0


# measuring processes


def cpu_seconds(pid: int) -> float:
    """CPU time of a process's threads, from /proc/PID/task/*/schedstat (nanoseconds): stat's
    user and system times count 10 ms ticks, and a small run can read 0 there. A thread that
    has exited is not counted; the servers' threads (the store's worker, the hashers) live
    as long as they do."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return total / 1e9


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def listen_overflows() -> int:
    """The kernel's count of connections dropped because an accept queue was full (this
    network namespace, every listener: other processes' overflows count too)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True)).get("ListenOverflows", 0))
    return 0


def process_counts(pid: int) -> dict[str, float]:
    """A process's system calls that read and that write (/proc/PID/io), and its system
    (kernel) CPU seconds (/proc/PID/stat, in ticks): where a connection's cost goes."""
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    stime = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[12])
    return {"reads": int(io["syscr"]), "writes": int(io["syscw"]), "system_s": stime / TICKS}


def machine_busy_seconds() -> float:
    """CPU time all processes on the machine have used, from the first line of /proc/stat."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # Neither idle (4th) nor iowait (5th) is work; guest time is already counted in user.
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / TICKS


class Profiler:
    """py-spy sampling a server (without pausing it) into a collapsed-stacks file."""

    def __init__(self, pid: int, path: Path) -> None:
        self.path = path
        self._argv = [PY_SPY, "record", "--pid", str(pid), "--rate", "250", "--nonblocking"]
        self._argv += ["--format", "raw", "--output", str(path)]
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(self._argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self._proc is not None:
            # SIGINT is py-spy's "stop and write what you have".
            self._proc.send_signal(signal.SIGINT)
            self._proc.wait(timeout=30)


# Frames every sample passes through: they say nothing about where the time goes.
PROFILE_PLUMBING = tuple(
    f"({where})"
    for where in ("asyncio/base_events.py", "asyncio/runners.py", "asyncio/events.py", "server.py", "telchat/cli.py")
)


# Where telchat's time goes, in areas an optimisation targets. A sample belongs to the area of
# the frame nearest the top of its stack that matches one (so logging called from Chat.say
# counts as logging); the order below breaks ties within one frame.
PROFILE_AREAS: dict[str, tuple[str, ...]] = {
    "telnetlib3 Server._register_protocol": ("_register_protocol",),
    "telnetlib3 per-connection writer, SLC table": ("TelnetWriter.__init__", "TelnetWriterUnicode.__init__", "slc.py"),
    "JSON logging (structlog, orjson, write)": (
        "structlog/",
        "orjson",
        "telchat/obs/logs.py",
        "_log (telchat/chat/rooms.py",
    ),
    "transport.write (send)": ("_SelectorSocketTransport.write", "TransportSink."),
    "Outbox.flush, Flusher": ("Outbox.flush", "Flusher."),
    "fan-out: queueing per member": ("fan_out", "Outbox.push", "encode_line"),
    "history store": ("telchat/store/base.py",),
    "commands, Chat": ("telchat/session/commands.py", "telchat/chat/rooms.py"),
    "line split, decode, sanitize, Session": (
        "telchat/rules/lines.py",
        "telchat/rules/sanitize.py",
        "telchat/session/session.py",
    ),
    "telnetlib3 input, negotiation": ("telnetlib3/",),
    "telchat protocol, app": ("telchat/telnet/protocol.py", "telchat/app.py"),
    "socket read, accept": ("_read_ready", "_accept_connection", "(socket.py"),
    "waiting in epoll": ("EpollSelector.select",),
}


def profile_area(frames: Sequence[str]) -> str:
    for frame in reversed(frames):
        for area, patterns in PROFILE_AREAS.items():
            if any(p in frame for p in patterns):
                return area
    return "other (event loop, tasks)"


def profile_summary(path: Path, top: int = 15) -> dict[str, Any]:
    """Per function (its lines together): share of samples on top of the stack ("self") and
    anywhere on it ("inclusive"), the most first; and per area of PROFILE_AREAS."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    areas: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines() if path.exists() else []:
        stack, _, text = line.rpartition(" ")
        count = int(text)
        # py-spy now and then emits a frame it could not name (`text (kind:…)`): not ours to count.
        frames = [frame for frame in stack.split(";") if ".py" in frame]
        if not frames:
            continue
        functions = [_function(frame) for frame in frames]
        total += count
        own[functions[-1]] = own.get(functions[-1], 0) + count
        for function in set(functions):
            if not function.endswith(PROFILE_PLUMBING):
                inclusive[function] = inclusive.get(function, 0) + count
        area = profile_area(frames)
        areas[area] = areas.get(area, 0) + count

    def ranked(counts: dict[str, int]) -> list[list[Any]]:
        best = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return [[function, round(n / max(1, total), 3)] for function, n in best]

    return {
        "file": str(path),
        "samples": total,
        "areas": ranked(areas),
        "top_self": ranked(own),
        "top_inclusive": ranked(inclusive),
    }


def _function(frame: str) -> str:
    """`func (pkg/file.py:123)` -> `func (pkg/file.py)`."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0].removesuffix(')')})" if where else name


class Meter:
    """CPU of the server, of this generator, and of everything else, between start and stop.

    Others' CPU matters because this machine is shared: a test suite running beside the
    benchmark takes cycles from the server or the generator, and the numbers with it.
    """

    def __init__(self, pid: int, profile: Path | None = None) -> None:
        self.pid = pid
        self.profiler = Profiler(pid, profile) if profile else None
        self._begin = (0.0, 0.0, 0.0, 0.0)
        self.wall = self.server_cpu = self.load_cpu = self.other_cpu = 0.0

    def _now(self) -> tuple[float, float, float, float]:
        return time.perf_counter(), cpu_seconds(self.pid), cpu_seconds(os.getpid()), machine_busy_seconds()

    def start(self) -> None:
        if self.profiler is not None:
            self.profiler.start()
        self._begin = self._now()

    def stop(self) -> None:
        end = self._now()
        if self.profiler is not None:
            self.profiler.stop()
        self.wall = end[0] - self._begin[0]
        server, load, busy = (end[i] - self._begin[i] for i in (1, 2, 3))
        self.server_cpu = server / self.wall
        self.load_cpu = load / self.wall
        self.other_cpu = max(0.0, busy - server - load) / self.wall


# server processes


@dataclass(frozen=True)
class Target:
    """A server to benchmark: how to start it."""

    name: str
    argv: tuple[str, ...]


def telchat_target(scenario: Scenario, extra: Sequence[str]) -> Target:
    argv = [sys.executable, str(ROOT / "server.py"), "--host", HOST, "--port", "0", "--log-format", "json"]
    argv += ["--log-level", "info"]
    options = telchat_options()
    # Flood control would throttle the load itself; it is off where the server has it.
    if "--flood-rate" in options:
        argv.append("--flood-rate=0")
    if "--announce-nicks" in options and scenario.announce_nicks:
        argv.append(f"--announce-nicks={scenario.announce_nicks}")
    # The sessions held plus the probes that connect while they are: over the default 10 000.
    if "--max-connections" in options:
        argv.append(f"--max-connections={max(10_000, 2 * (scenario.clients + scenario.probes))}")
    return Target("telchat", (*argv, *extra))


def web_target(scenario: Scenario, extra: Sequence[str]) -> Target:
    """telchat measured through its web door: every client is telnet over a WebSocket."""
    telchat = telchat_target(scenario, extra)
    return Target("telchat-web", (*telchat.argv, "--web-port=0"))


def reference_target(scenario: Scenario, extra: Sequence[str]) -> Target:
    argv = [sys.executable, str(ROOT / "scripts" / "bench_reference.py"), "--host", HOST, "--port", "0"]
    return Target("reference", (*argv, f"--announce-nicks={scenario.announce_nicks or 'auto'}", *extra))


def reference_telnet_target(scenario: Scenario, extra: Sequence[str]) -> Target:
    """The reference behind telnetlib3's server protocol: the floor of the chosen stack. With
    telchat's default backlog (the kernel's somaxconn), so that a storm measures what its
    connections cost, not the SYNs it drops."""
    reference = reference_target(scenario, extra)
    backlog = Path("/proc/sys/net/core/somaxconn").read_text().strip()
    return Target("reference-telnet", (*reference.argv, "--telnet", f"--backlog={backlog}"))


# The servers --servers names, and how each is started.
TARGETS: dict[str, Callable[[Scenario, Sequence[str]], Target]] = {
    "telchat": telchat_target,
    "telchat-web": web_target,
    "reference": reference_target,
    "reference-telnet": reference_telnet_target,
}


@functools.cache
def telchat_options() -> str:
    """telchat's --help: which options this version of the server has."""
    argv = [sys.executable, str(ROOT / "server.py"), "--help"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout


class ServerFailed(Exception):
    """A server could not be started: nothing to measure."""


class Server:
    """A running server process: its stdout (logs) goes to a file, from which we read its port."""

    def __init__(self, target: Target, logdir: Path) -> None:
        self.target = target
        self.log_path = logdir / f"{target.name}.log"
        self.err_path = logdir / f"{target.name}.err"
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        # Where to write a py-spy profile of the measured window, if anywhere.
        self.profile: Path | None = None

    async def start(self, core: int | None) -> None:
        with self.log_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *self.target.argv,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                # Whatever a server leaves behind (a SQLite file, say) goes with the logs.
                cwd=self.log_path.parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        if core is not None:
            os.sched_setaffinity(self.pid, {core})
        async with asyncio.timeout(START_TIMEOUT):
            self.port = await self._listening_port()

    async def _listening_port(self) -> int:
        while self.alive():
            for line in self.log_path.read_bytes().splitlines():
                event = json.loads(line) if line.startswith(b"{") else {}
                if event.get("event") == "listening":
                    return int(event["web_port" if self.target.name == "telchat-web" else "port"])
            await asyncio.sleep(0.02)
        raise ServerFailed(f"{self.target.name} exited before listening: {self.stderr_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def stderr_tail(self, size: int = 2000) -> str:
        return self.err_path.read_bytes()[-size:].decode(errors="replace")

    async def wait_event(self, names: set[str], within: float, nth: int = 1) -> dict[str, Any] | None:
        """The `nth` log event named one of `names`, waiting up to `within` seconds."""
        deadline = time.monotonic() + within
        while self.alive() and time.monotonic() < deadline:
            events = (json.loads(line) for line in self.log_path.read_bytes().splitlines() if line.startswith(b"{"))
            found = [event for event in events if event.get("event") in names]
            if len(found) >= nth:
                return found[nth - 1]
            await asyncio.sleep(0.05)
        return None

    def log_count(self, needle: bytes) -> int:
        """Lines of the server's log that contain `needle`."""
        with self.log_path.open("rb") as log:
            return sum(needle in line for line in log)

    async def stop(self) -> None:
        """SIGTERM, and SIGKILL if it has not exited within STOP_TIMEOUT."""
        if self.proc is None or not self.alive():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await self.proc.wait()
        except TimeoutError:
            self.kill()
            await self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.alive():
            self.proc.kill()


# one server, one scenario


def percentiles(values_ns: Sequence[int]) -> dict[str, float | None]:
    """p50, p99 and max in milliseconds (None when nothing was measured)."""
    if not values_ns:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values_ns)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] / 1e6, 3)

    return {"p50": at(0.50), "p99": at(0.99), "max": round(ordered[-1] / 1e6, 3)}


def members_of(scenario: Scenario) -> list[Member]:
    """Client i sits in room i mod R; the first S clients send, so senders spread over rooms
    (in a storm, the first client of each room sends its probe)."""
    senders = scenario.rooms if scenario.storm else scenario.senders
    return [
        Member(
            f"u{i}",
            f"r{i % scenario.rooms}" if scenario.rooms else "",
            sender=i if i < senders else -1,
            checked=i % scenario.check_every == 0,
        )
        for i in range(scenario.clients)
    ]


def dial(server: Server, scenario: Scenario, args: argparse.Namespace, concurrency: int | None = None) -> Dial:
    # Several loopback source addresses, so 10 000 connections cannot run out of ports.
    return Dial(
        (HOST, server.port),
        sources=[f"127.0.0.{i}" for i in range(1, 1 + args.sources)],
        concurrency=concurrency or scenario.concurrency,
        window=scenario.window,
        # The fixed part of a message text (`~S SEQ NANOSECONDS `) is about 30 bytes.
        pad=b"x" * max(1, scenario.text_bytes - 30),
        websocket=server.target.name == "telchat-web",
    )


async def setup(
    server: Server, scenario: Scenario, rec: Recorder, args: argparse.Namespace
) -> tuple[list[Client], dict[str, Any]]:
    started = time.perf_counter()
    clients, errors = await connect_all(rec, members_of(scenario), dial(server, scenario, args))
    elapsed = time.perf_counter() - started
    result = {
        "sessions": len(clients),
        "setup_errors": len(errors),
        "setup_error_sample": errors[:3],
        "setup_s": round(elapsed, 3),
        "sessions_per_s": round(len(clients) / elapsed, 1),
        "greeting_ms": percentiles(rec.greetings),
    }
    return clients, result


async def run_traffic(server: Server, scenario: Scenario, rec: Recorder, args: argparse.Namespace) -> dict[str, Any]:
    clients, result = await setup(server, scenario, rec, args)
    senders = [c for c in clients if c.sender >= 0]
    for client in clients:
        if not client.member.checked:
            client.count_only()
    meter, delivered = await _send_and_measure(rec, server, senders, scenario)
    sent_to = _sent_per_room(senders)
    should = [sent_to.get(c.member.room, 0) for c in clients]
    expected = sum(should)
    await _drain(rec, expected)
    unique = [c.messages - c.duplicates for c in clients]
    return result | {
        "messages_sent": sum(c.seq for c in senders),
        "deliveries_expected": expected,
        "deliveries": rec.delivered,
        "deliveries_per_read": round(rec.delivered / max(1, rec.reads), 2),
        "lost": sum(max(0, want - got) for want, got in zip(should, unique, strict=True)),
        # Deliveries beyond what was sent: duplicates a counting receiver cannot tell apart.
        "extra": sum(max(0, got - want) for want, got in zip(should, unique, strict=True)),
        "duplicates": sum(c.duplicates for c in clients),
        "reordered": sum(c.reordered for c in clients),
        "checked_receivers": sum(not c.counting for c in clients),
        "closed_by_server": rec.closed_by_server,
        "deliveries_per_s": round(delivered / meter.wall, 1),
        "latency_ms": percentiles(rec.latencies),
        "latency_samples": len(rec.latencies),
        "server_cpu": round(meter.server_cpu, 3),
        "load_cpu": round(meter.load_cpu, 3),
        "other_cpu": round(meter.other_cpu, 3),
        "rss_mib": round(rss_kib(server.pid) / 1024, 1),
    }


async def _send_and_measure(
    rec: Recorder, server: Server, senders: Sequence[Client], scenario: Scenario
) -> tuple[Meter, int]:
    """Send through warm-up and the measured window; return its meter and deliveries in it."""
    meter = Meter(server.pid, server.profile)
    rec.window_start = time.perf_counter_ns() + int(scenario.warmup * 1e9)
    rec.window_end = rec.window_start + int(scenario.duration * 1e9)
    pacers = _start_sending(rec, senders, scenario)
    try:
        await asyncio.sleep(scenario.warmup)
        before = rec.delivered
        meter.start()
        await asyncio.sleep(scenario.duration)
        meter.stop()
        return meter, rec.delivered - before
    finally:
        rec.sending = False
        for task in pacers:
            task.cancel()


def _sent_per_room(senders: Sequence[Client]) -> dict[str, int]:
    """Messages said in each room: what each of its members should receive."""
    sent: dict[str, int] = {}
    for client in senders:
        sent[client.member.room] = sent.get(client.member.room, 0) + client.seq
    return sent


def _start_sending(rec: Recorder, senders: Sequence[Client], scenario: Scenario) -> list[asyncio.Task[None]]:
    rec.sending = True
    if not scenario.rate:
        rec.open_loop = True
        for client in senders:
            client.refill()
        return []
    return [asyncio.create_task(_pace(rec, client, scenario.rate)) for client in senders]


async def _pace(rec: Recorder, client: Client, rate: float) -> None:
    """Send at `rate` per second on a fixed schedule: a random phase keeps senders from firing
    together, and a sender that fell behind catches up, so the offered load holds."""
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate
    due = loop.time() + random.random() * interval
    while rec.sending:
        await asyncio.sleep(max(0.0, due - loop.time()))
        if rec.sending:
            client.send_message()
        due += interval


async def _drain(rec: Recorder, expected: int) -> None:
    """Wait for what is still on its way: until all arrived, nothing moved for a while, or a cap."""
    deadline = time.monotonic() + DRAIN_MAX
    last, quiet_since = -1, time.monotonic()
    while rec.delivered < expected and time.monotonic() < deadline:
        if rec.delivered != last:
            last, quiet_since = rec.delivered, time.monotonic()
        elif time.monotonic() - quiet_since > DRAIN_QUIET:
            return
        await asyncio.sleep(0.05)


async def run_sessions(server: Server, scenario: Scenario, rec: Recorder, args: argparse.Namespace) -> dict[str, Any]:
    idle_kib = rss_kib(server.pid)
    # The ramp is what a profile of this scenario is about: holding idle sessions costs nothing.
    ramp = Meter(server.pid, server.profile)
    ramp.start()
    clients, result = await setup(server, scenario, rec, args)
    ramp.stop()
    held_kib = rss_kib(server.pid)
    probe = Recorder()
    for _ in range(scenario.probes):
        # One at a time, with everyone else held: the greeting a newcomer gets at full load.
        await connect_all(probe, [Member("", "")], dial(server, scenario, args, concurrency=1))
        probe.close_all()
    meter = Meter(server.pid)
    meter.start()
    await asyncio.sleep(scenario.hold)
    meter.stop()
    sessions = max(1, len(clients))
    if server.target.name == "telchat" and UPGRADES:
        result |= await measure_upgrade(server, rec)
    result |= {
        "held_after": len(clients) - rec.closed_by_server,
        "closed_by_server": rec.closed_by_server,
        "probe_greeting_ms": percentiles(probe.greetings),
        "probe_failures": scenario.probes - len(probe.greetings),
        "server_cpu": round(ramp.server_cpu, 3),
        "load_cpu": round(ramp.load_cpu, 3),
        "other_cpu": round(ramp.other_cpu, 3),
        "hold_server_cpu": round(meter.server_cpu, 3),
        "rss_idle_mib": round(idle_kib / 1024, 1),
        "rss_mib": round(rss_kib(server.pid) / 1024, 1),
        "rss_per_session_kib": round((held_kib - idle_kib) / sessions, 2),
    }
    return result


async def measure_upgrade(server: Server, rec: Recorder) -> dict[str, Any]:
    """SIGUSR2 with every session held, UPGRADE_ROUNDS times: the pauses the upgrades in
    place log (the median one's parts), and whether anyone was dropped (telchat only: the
    reference server has no upgrade in place). A failed upgrade counts as no pause."""
    closed = rec.closed_by_server
    assert server.proc is not None
    rounds: list[dict[str, Any]] = []
    for nth in range(1, UPGRADE_ROUNDS + 1):
        server.proc.send_signal(signal.SIGUSR2)
        event = await server.wait_event({"upgrade", "upgrade_failed"}, UPGRADE_TIMEOUT, nth)
        await asyncio.sleep(UPGRADE_SETTLE)
        rounds.append(event if event is not None and event["event"] == "upgrade" else {"pause_ms": math.inf})
    median = sorted(rounds, key=lambda logged: float(logged["pause_ms"]))[len(rounds) // 2]
    return {
        "upgrade_pause_ms": median.get("pause_ms"),
        "upgrade_pauses_ms": " ".join(f"{logged['pause_ms']:.0f}" for logged in rounds),
        "upgrade_parts_ms": {part: median.get(f"{part}_ms") for part in ("handover", "start", "adopt")},
        "upgrade_sessions": min(int(logged.get("sessions", 0)) for logged in rounds),
        "upgrade_dropped": rec.closed_by_server - closed,
    }


async def run_storm(server: Server, scenario: Scenario, rec: Recorder, args: argparse.Namespace) -> dict[str, Any]:
    idle_kib = rss_kib(server.pid)
    overflows = listen_overflows()
    before = process_counts(server.pid)
    meter = Meter(server.pid, server.profile)
    meter.start()
    clients, result = await setup(server, scenario, rec, args)
    held_kib = rss_kib(server.pid)
    live = await prove_live(clients)
    meter.stop()
    sessions = max(1, len(clients))
    spent = {key: value - before[key] for key, value in process_counts(server.pid).items()}
    return result | {
        "proven_live": live,
        "connect_ms": percentiles(rec.connects),
        "all_live_s": round(meter.wall, 3) if live == scenario.clients else None,
        "server_cpu_ms_per_conn": round(meter.server_cpu * meter.wall * 1000 / sessions, 3),
        "server_system_ms_per_conn": round(spent["system_s"] * 1000 / sessions, 3),
        "server_reads_per_conn": round(spent["reads"] / sessions, 1),
        "server_writes_per_conn": round(spent["writes"] / sessions, 1),
        "server_cpu": round(meter.server_cpu, 3),
        "load_cpu": round(meter.load_cpu, 3),
        "other_cpu": round(meter.other_cpu, 3),
        "listen_overflows": listen_overflows() - overflows,
        "closed_by_server": rec.closed_by_server,
        "rss_mib": round(held_kib / 1024, 1),
        "rss_per_session_kib": round((held_kib - idle_kib) / sessions, 2),
    }


async def prove_live(clients: Sequence[Client]) -> int:
    """One message into each room; return how many clients it reached (all, when all live)."""
    for client in clients:
        if client.sender >= 0:
            client.send_message()
    deadline = time.monotonic() + PROOF_TIMEOUT
    # Polled: the counters are bumped in protocol callbacks, which have no event to set.
    while time.monotonic() < deadline and any(c.messages == 0 for c in clients):  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    return sum(c.messages > 0 for c in clients)


async def run_one(target: Target, scenario: Scenario, args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    # A directory of its own per run: a store file (telchat's default SQLite) left by an
    # earlier run would replay its history to this run's joiners, as old sequence numbers.
    rundir = Path(tempfile.mkdtemp(prefix=f"{scenario.name}-{target.name}-", dir=logdir))
    server = Server(target, rundir)
    if args.profile and target.name in args.profile_servers:
        server.profile = Path(args.profile) / f"{scenario.name}-{target.name}.txt"
    rec = Recorder()
    try:
        await server.start(SERVER_CORE if args.pin else None)
        run = run_storm if scenario.storm else run_traffic if scenario.traffic else run_sessions
        result = await run(server, scenario, rec, args)
        result["server_alive"] = server.alive()
        rec.close_all()
        await server.stop()
        # Proof that telchat logged every message (the reference logs nothing).
        result["logged_messages"] = server.log_count(b'"event":"message"')
        if server.profile is not None:
            result["profile"] = profile_summary(server.profile)
        return {"server": target.name, **result}
    finally:
        rec.close_all()
        server.kill()


# comparing and reporting


RATIOS = {
    "throughput": ("deliveries_per_s",),
    "latency_p99": ("latency_ms", "p99"),
    "greeting_p99": ("greeting_ms", "p99"),
    "probe_greeting_p99": ("probe_greeting_ms", "p99"),
    "rss_per_session": ("rss_per_session_kib",),
    "server_cpu": ("server_cpu",),
    "time_all_live": ("all_live_s",),
    "connect_p99": ("connect_ms", "p99"),
}


def dig(result: dict[str, Any], path: Sequence[str]) -> Any:
    value: Any = result
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def ratios(telchat: dict[str, Any], reference: dict[str, Any]) -> dict[str, float | None]:
    """telchat / reference for each number both have."""
    out: dict[str, float | None] = {}
    for name, path in RATIOS.items():
        mine, theirs = dig(telchat, path), dig(reference, path)
        if isinstance(mine, int | float) and isinstance(theirs, int | float):
            out[name] = round(mine / theirs, 3) if theirs else None
    return out


def targets(scenario: Scenario, telchat: dict[str, Any], ratio: dict[str, float | None]) -> list[dict[str, Any]]:
    """The issue's targets for this scenario, each with the measured value and whether it is met."""

    def check(what: str, value: float | None, ok: Callable[[float], bool]) -> dict[str, Any]:
        return {"target": what, "measured": value, "met": value is not None and ok(value)}

    checks: list[dict[str, Any]] = []
    if scenario.storm:
        live, p99 = telchat.get("proven_live"), dig(telchat, ("connect_ms", "p99"))
        checks.append(check(f"all {scenario.clients} proven live", live, lambda v: v >= scenario.clients))
        checks.append(check("TCP connect p99 <= 200 ms", p99, lambda v: v <= 200))
        checks.append(check("time until all live <= 5 x reference", ratio.get("time_all_live"), lambda v: v <= 5))
        cpu = telchat.get("server_cpu_ms_per_conn")
        checks.append(check("server CPU per connection <= 0.3 ms", cpu, lambda v: v <= 0.3))
        checks.append(check("RSS per session <= 8 KiB", telchat.get("rss_per_session_kib"), lambda v: v <= 8))
    elif scenario.traffic and not scenario.rate:
        checks.append(check("deliveries/s >= 0.5 x reference", ratio.get("throughput"), lambda v: v >= 0.5))
    elif scenario.traffic:
        checks.append(check("p99 latency <= 2 x reference", ratio.get("latency_p99"), lambda v: v <= 2))
        checks.append(check("zero loss", telchat.get("lost"), lambda v: v == 0))
    else:
        held = telchat.get("held_after")
        checks.append(check(f"{scenario.clients} sessions held", held, lambda v: v >= scenario.clients))
        checks.append(check("greeting p99 <= 20 ms", dig(telchat, ("probe_greeting_ms", "p99")), lambda v: v <= 20))
        if "upgrade_pause_ms" in telchat:
            pause = telchat["upgrade_pause_ms"]
            checks.append(check("upgrade in place: median pause <= 1 s", pause, lambda v: v <= 1000))
            checks.append(check("upgrade in place: nobody dropped", telchat["upgrade_dropped"], lambda v: v == 0))
    return checks


ROWS: dict[str, tuple[str, ...]] = {
    "sessions set up": ("sessions",),
    "sessions/s (setup)": ("sessions_per_s",),
    "greeting p50 ms": ("greeting_ms", "p50"),
    "greeting p99 ms": ("greeting_ms", "p99"),
    "messages sent": ("messages_sent",),
    "deliveries/s": ("deliveries_per_s",),
    "lost": ("lost",),
    "duplicates": ("duplicates",),
    "extra (counted)": ("extra",),
    "reordered": ("reordered",),
    "latency p50 ms": ("latency_ms", "p50"),
    "latency p99 ms": ("latency_ms", "p99"),
    "latency max ms": ("latency_ms", "max"),
    "held after hold": ("held_after",),
    "proven live": ("proven_live",),
    "TCP connect p50 ms": ("connect_ms", "p50"),
    "TCP connect p99 ms": ("connect_ms", "p99"),
    "time until all live s": ("all_live_s",),
    "server CPU ms per conn": ("server_cpu_ms_per_conn",),
    "  of it system ms": ("server_system_ms_per_conn",),
    "reads per conn (syscalls)": ("server_reads_per_conn",),
    "writes per conn (syscalls)": ("server_writes_per_conn",),
    "ListenOverflows": ("listen_overflows",),
    "probe greeting p50 ms": ("probe_greeting_ms", "p50"),
    "probe greeting p99 ms": ("probe_greeting_ms", "p99"),
    "server CPU (cores)": ("server_cpu",),
    "server CPU, holding": ("hold_server_cpu",),
    "generator CPU (cores)": ("load_cpu",),
    "others' CPU (cores)": ("other_cpu",),
    "RSS MiB": ("rss_mib",),
    "RSS KiB per session": ("rss_per_session_kib",),
    "closed by server": ("closed_by_server",),
    "upgrade pause ms, median": ("upgrade_pause_ms",),
    "upgrade pauses ms": ("upgrade_pauses_ms",),
    "upgrade: handover ms": ("upgrade_parts_ms", "handover"),
    "upgrade: exec, start ms": ("upgrade_parts_ms", "start"),
    "upgrade: adopt ms": ("upgrade_parts_ms", "adopt"),
    "upgrade: sessions kept": ("upgrade_sessions",),
    "upgrade: dropped": ("upgrade_dropped",),
}


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def report(entry: dict[str, Any]) -> str:
    runs = {r["server"]: r for r in entry["runs"]}
    names = list(runs)
    lines = [f"== scenario {entry['scenario']}: {entry['title']} ({entry['describe']})"]
    lines.append(f"{'':24}" + "".join(f"{n:>14}" for n in names) + ("         ratio" if len(names) == 2 else ""))
    ratio_of = {path: name for name, path in RATIOS.items()}
    for label, path in ROWS.items():
        values = [dig(runs[n], path) for n in names]
        if all(v is None for v in values):
            continue
        ratio = entry.get("ratios", {}).get(ratio_of.get(path, ""))
        lines.append(f"{label:24}" + "".join(f"{fmt(v):>14}" for v in values) + (f"{fmt(ratio):>14}" if ratio else ""))
    for check in entry.get("targets", []):
        verdict = "met" if check["met"] else "NOT met"
        lines.append(f"target: {check['target']}: {fmt(check['measured'])} -> {verdict}")
    lines.extend(f"note: {note}" for note in entry.get("notes", []))
    for name, run in runs.items():
        if "profile" in run:
            profile = run["profile"]
            lines.append(f"profile of {name} ({profile['samples']} samples, {profile['file']})")
            for kind in ("areas", "top_self", "top_inclusive"):
                lines.append(f"  {kind.removeprefix('top_')}:")
                lines.extend(f"  {share:6.1%}  {function}" for function, share in profile[kind])
    return "\n".join(lines)


def notes(scenario: Scenario, runs: Sequence[dict[str, Any]]) -> list[str]:
    """Warnings a reader needs before trusting the numbers."""
    out: list[str] = []
    for run in runs:
        name = run["server"]
        if run.get("load_cpu", 0) > 0.9:
            out.append(f"{name}: the generator used {run['load_cpu']:.0%} of its core; this server may be faster")
        if run.get("other_cpu", 0) > 0.2:
            out.append(f"{name}: other processes used {run['other_cpu']:.2f} cores meanwhile; numbers are noisy")
        if run.get("sessions", 0) < scenario.clients:
            out.append(f"{name}: only {run.get('sessions')} of {scenario.clients} sessions set up")
        if run.get("setup_errors"):
            out.append(f"{name}: setup errors, e.g. {run['setup_error_sample']}")
        if not run.get("server_alive", True):
            out.append(f"{name}: the server process died during the run")
    return out


# running it all


def fd_budget(wanted: int) -> int:
    """Raise the open-files limit (inherited by the servers) as far as allowed; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    goal = hard if hard != resource.RLIM_INFINITY else max(soft, wanted + FD_MARGIN)
    if soft < goal:
        resource.setrlimit(resource.RLIMIT_NOFILE, (goal, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pin_generator() -> bool:
    """Servers get one core and this generator another, when there are two."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return False
    global SERVER_CORE, LOAD_CORE
    SERVER_CORE, LOAD_CORE = cores[0], cores[1]
    os.sched_setaffinity(0, {LOAD_CORE})
    return True


def plan(args: argparse.Namespace) -> list[Scenario]:
    chosen = []
    for name in args.scenario:
        scenario = SCENARIOS[name]
        if args.quick:
            scenario = replace(scenario, **QUICK)
            if not scenario.traffic:
                scenario = replace(scenario, clients=QUICK_SESSIONS, rooms=QUICK_SESSIONS // 20)
        overrides = {f.name: getattr(args, f.name) for f in fields(Scenario) if getattr(args, f.name, None) is not None}
        chosen.append(replace(scenario, **overrides))
    return chosen


async def run_scenario(scenario: Scenario, args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    # Both servers on the same loop (the generator too): --server-arg/--ref-arg come later and win.
    loop = [f"--loop={args.loop}"]
    extra = {
        "telchat": [*(loop if "--loop" in telchat_options() else []), *args.server_arg],
        "telchat-web": [*(loop if "--loop" in telchat_options() else []), *args.server_arg],
        "reference": [*loop, *args.ref_arg],
        "reference-telnet": [*loop, *args.ref_arg],
    }
    entry: dict[str, Any] = {
        "scenario": scenario.name,
        "title": scenario.title,
        "describe": scenario.describe(),
        "params": asdict(scenario),
        "runs": [],
    }
    # What runs may be smaller than what was asked for; the targets stay those of the ask.
    runnable = scenario
    limit = fd_budget(scenario.clients + scenario.probes + FD_MARGIN)
    if limit < scenario.clients + FD_MARGIN:
        entry.setdefault("notes", []).append(f"open-files limit {limit}: cannot hold {scenario.clients} sessions")
        runnable = replace(scenario, clients=limit - FD_MARGIN)
    tries: dict[str, list[dict[str, Any]]] = {name: [] for name in args.servers}
    for _ in range(args.repeat):
        # Alternate the servers, so that a burst of load from elsewhere hits both alike.
        for name in args.servers:
            tries[name].append(await run_one(TARGETS[name](runnable, extra[name]), runnable, args, logdir))
    entry["runs"] = [quietest_run(results) for results in tries.values()]
    if args.repeat > 1:
        entry["all_runs"] = tries
    runs = {r["server"]: r for r in entry["runs"]}
    if "telchat" in runs and "reference" in runs:
        entry["ratios"] = ratios(runs["telchat"], runs["reference"])
        entry["targets"] = targets(scenario, runs["telchat"], entry["ratios"])
    entry["notes"] = entry.get("notes", []) + notes(runnable, entry["runs"])
    return entry


def quietest_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run during which other processes took the least CPU: on a shared machine, the
    one least disturbed (every run stays in the JSON's all_runs)."""
    return min(results, key=lambda r: r.get("other_cpu", 0.0))


async def run_all(args: argparse.Namespace, logdir: Path, emit: Callable[[dict[str, Any]], None]) -> list[Any]:
    entries: list[Any] = []
    try:
        async with asyncio.timeout(args.max_seconds):
            for scenario in plan(args):
                entry = await run_scenario(scenario, args, logdir)
                entries.append(entry)
                emit(entry)
    except TimeoutError:
        entries.append({"error": f"stopped after --max-seconds {args.max_seconds:g}; results above are complete"})
        emit(entries[-1])
    except ServerFailed as exc:
        entries.append({"error": str(exc)})
        emit(entries[-1])
    return entries


def scenario_names(text: str) -> str:
    names = "abcd" if text == "all" else text
    if not names or set(names) - set(SCENARIOS):
        raise argparse.ArgumentTypeError(f"not a, b, c, d, e, a combination of them, or all (a-d): {text!r}")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario", default="all", type=scenario_names, help="a, b, c, d, e, several (ac) or all (a to d)"
    )
    parser.add_argument("--quick", action="store_true", help="short durations (and 1000 sessions for d)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop the whole run after this long")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-' for stdout only)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra argument for telchat (repeatable)")
    parser.add_argument("--ref-arg", action="append", default=[], help="extra argument for the reference server")
    parser.add_argument(
        "--servers",
        default="telchat,reference",
        type=lambda s: s.split(","),
        help="telchat, telchat-web (telchat through its web door: telnet over WebSockets), reference, "
        "reference-telnet (the reference behind telnetlib3's server protocol: the stack's floor)",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop of both servers and of the generator (auto: uvloop when installed)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="run each server N times, report the quietest run")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin server and generator to cores")
    parser.add_argument("--sources", type=int, default=4, help="loopback source addresses to connect from")
    parser.add_argument("--keep-logs", metavar="DIR", help="keep the servers' logs in DIR")
    parser.add_argument("--profile", metavar="DIR", help="py-spy each server's measured window into DIR")
    parser.add_argument("--profile-servers", default="telchat", type=lambda s: s.split(","), help="whom to profile")
    sizes = parser.add_argument_group("override a scenario's parameters")
    for name, kind in (("clients", int), ("rooms", int), ("senders", int), ("rate", float), ("window", int)):
        sizes.add_argument(f"--{name}", type=kind)
    for name, kind in (("duration", float), ("warmup", float), ("hold", float), ("probes", int)):
        sizes.add_argument(f"--{name}", type=kind)
    sizes.add_argument("--text-bytes", type=int)
    sizes.add_argument("--concurrency", type=int, help="connections set up at once")
    args = parser.parse_args(argv)
    unknown = set(args.servers) - set(TARGETS)
    if unknown:
        parser.error(f"unknown servers: {sorted(unknown)}")
    if args.profile:
        if not Path(PY_SPY).exists():
            parser.error(f"--profile needs py-spy beside this Python ({PY_SPY}): pip install py-spy")
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    return args


@contextmanager
def log_dir(keep: str | None) -> Iterator[Path]:
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
        return
    with tempfile.TemporaryDirectory(prefix="telchat-bench-") as tmp:
        yield Path(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.loop = resolve_loop(args.loop)
    args.pin = args.pin and pin_generator()
    to_stdout = args.json == "-"

    def emit(entry: dict[str, Any]) -> None:
        text = report(entry) if "scenario" in entry else f"!! {entry['error']}"
        print(text + "\n", file=sys.stderr if to_stdout else sys.stdout, flush=True)

    print(f"event loop: {args.loop} (both servers and the generator)\n", file=sys.stderr if to_stdout else sys.stdout)
    runner: Callable[[Coroutine[Any, Any, list[Any]]], list[Any]] = asyncio.run
    if args.loop == "uvloop":
        runner = importlib.import_module("uvloop").run
    with log_dir(args.keep_logs) as logdir:
        entries = runner(run_all(args, logdir, emit))
    document = {"machine": machine(args), "scenarios": entries}
    if args.json:
        text = json.dumps(document, indent=2)
        if to_stdout:
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0 if all("error" not in e for e in entries) else 1


def resolve_loop(name: str) -> str:
    """`auto`: uvloop when it can be imported, as telchat's own --loop auto does."""
    if name != "auto":
        return name
    try:
        importlib.import_module("uvloop")
    except ImportError:
        return "asyncio"
    return "uvloop"


def machine(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "loop": args.loop,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "pinned": args.pin,
        "server_core": SERVER_CORE if args.pin else None,
        "generator_core": LOAD_CORE if args.pin else None,
        "kernel": platform.release(),
    }


if __name__ == "__main__":
    raise SystemExit(main())
