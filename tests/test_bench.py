"""The benchmark runs end to end on a tiny load: both servers, zero loss, the JSON it promises.

No timing is asserted here (speed is measured by scripts/bench.py, never by a test).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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
        for key in ("deliveries_per_s", "server_cpu", "load_cpu", "rss_mib"):
            assert result[key] >= 0
        for key in ("latency_ms", "greeting_ms"):
            assert result[key]["p50"] <= result[key]["p99"] <= result[key]["max"]
    assert runs["telchat"]["logged_messages"] == runs["telchat"]["messages_sent"]
    assert {"throughput", "latency_p99", "greeting_p99"} <= scenario["ratios"].keys()
    assert [t["target"] for t in scenario["targets"]] == ["p99 latency <= 2 x reference", "zero loss"]
