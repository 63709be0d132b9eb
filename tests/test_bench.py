"""The benchmark runs end to end on a tiny load: both servers, zero loss, the JSON it promises.

No timing is asserted here (speed is measured by scripts/bench.py, never by a test).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from bench_load import MARK, Client, Member, Recorder  # noqa: E402

TINY = ["--clients", "12", "--senders", "3", "--warmup", "0.2", "--duration", "0.5"]


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [sys.executable, "scripts/bench.py", "--scenario", "a", "--quick", *TINY, "--max-seconds", "40"]
    run = subprocess.run(
        [*command, "--json", str(out)], check=False, cwd=ROOT, capture_output=True, text=True, timeout=50
    )
    assert run.returncode == 0, run.stderr
    assert "scenario a" in run.stdout
    document = json.loads(out.read_text())
    assert {"python", "cpus", "pinned"} <= document["machine"].keys()
    (scenario,) = document["scenarios"]
    runs = {r["server"]: r for r in scenario["runs"]}
    assert set(runs) == {"telchat", "reference"}
    for result in runs.values():
        assert result["sessions"] == 12
        assert result["messages_sent"] > 0
        assert result["lost"] == result["duplicates"] == result["reordered"] == result["extra"] == 0
        assert result["deliveries"] == result["deliveries_expected"] == result["messages_sent"] * 12
        for key in ("deliveries_per_s", "rss_mib"):
            assert result[key] > 0, key  # each was measured: a run that delivers holds memory
        for key in ("latency_ms", "greeting_ms"):
            assert result[key]["p50"] <= result[key]["p99"] <= result[key]["max"]
    # CPU is read at the kernel's 10 ms tick: the reference's and the generator's, for a dozen
    # clients, can read 0; telchat's, logging every line, does not.
    assert runs["telchat"]["server_cpu"] > 0
    assert runs["telchat"]["logged_messages"] == runs["telchat"]["messages_sent"]
    assert {"throughput", "latency_p99", "greeting_p99"} <= scenario["ratios"].keys()
    assert [t["target"] for t in scenario["targets"]] == ["p99 latency <= 2 x reference", "zero loss"]


def test_bench_storm_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [sys.executable, "scripts/bench.py", "--scenario", "e", "--clients", "60", "--rooms", "6"]
    # The reference behind telnetlib3 too: the stack's floor, which the closing notes cite.
    command += ["--servers", "telchat,reference,reference-telnet"]
    run = subprocess.run(
        [*command, "--concurrency", "20", "--max-seconds", "40", "--json", str(out)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert run.returncode == 0, run.stderr
    (scenario,) = json.loads(out.read_text())["scenarios"]
    runs = {r["server"]: r for r in scenario["runs"]}
    assert set(runs) == {"telchat", "reference", "reference-telnet"}
    for result in runs.values():
        # Every member of every room got its room's probe.
        assert result["sessions"] == result["proven_live"] == 60
        assert result["connect_ms"]["p99"] is not None and result["all_live_s"] is not None
        assert result["listen_overflows"] >= 0 and result["server_cpu_ms_per_conn"] > 0
    assert {"time_all_live", "connect_p99", "rss_per_session"} <= scenario["ratios"].keys()
    assert len(scenario["targets"]) == 5


# The generator's own bookkeeping, on hand-made input (no sockets).


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent.append(bytes(data))

    def abort(self) -> None:
        pass


def client(sender: int = -1) -> tuple[Client, Recorder, FakeTransport]:
    rec = Recorder()
    transport = FakeTransport()
    one = Client(rec, Member("u1", "r0", sender=sender), started=0)
    one.connection_made(transport)
    return one, rec, transport


def message(sender: int, seq: int) -> bytes:
    return b"#r0:u%d%s%d %d %d xx\r\n" % (sender, MARK, sender, seq, 10**9)


async def test_telnet_commands_split_across_reads_are_refused_and_stripped() -> None:
    one, rec, transport = client()
    data = b"\xff\xfd\x18\xff\xfb\x01\xff\xfa\x18\x01\xff\xf0*** Welcome to telchat. Type help for commands.\r\n"
    for i in range(len(data)):  # one byte at a time: every command is split somewhere
        one.data_received(data[i : i + 1])
    assert transport.sent == [b"\xff\xfc\x18", b"\xff\xfe\x01"]
    assert len(rec.greetings) == 1
    assert rec.other_lines == 0


async def test_gaps_late_arrivals_and_repeats_are_told_apart() -> None:
    one, rec, _ = client()
    one.data_received(b"".join(message(5, seq) for seq in (0, 1, 3, 2, 2, 4)))
    assert (one.messages, one.reordered, one.duplicates) == (6, 1, 1)
    assert rec.delivered == 6


async def test_counting_receivers_count_markers_split_across_reads() -> None:
    one, rec, _ = client(sender=7)
    one.count_only()
    data = b"".join(message(s, seq) for seq in range(3) for s in (7, 3, 17))
    for i in range(0, len(data), 5):
        one.data_received(data[i : i + 5])
    assert one.messages == rec.delivered == 9
    assert one.in_flight == -3  # its own three came back (none were sent through this client)
