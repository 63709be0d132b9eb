"""A few seconds of scripts/soak.py, as a smoke test: the script works and the server holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.procs import ROOT


def test_short_soak_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [
            sys.executable,
            "scripts/soak.py",
            *("--seconds", "5", "--users", "6", "--rooms", "2", "--flooders", "1"),
            *("--slow-readers", "1", "--disconnectors", "3", "--pace", "0.7"),
            *("--sample-every", "1", "--settle", "2", "--json", str(out)),
            "--",
            "--sendq-bytes=16384",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(out.read_text())
    normal = summary["normal"]
    assert normal["sent"] > 0 and normal["delivered"] == normal["deliveries_expected"]
    assert (normal["lost"], normal["out_of_order"], normal["unsafe_lines"]) == (0, 0, 0)
    assert summary["server"]["errors_logged"] == 0 and summary["server"]["exit_code"] == 0
    assert summary["flooders"]["lines_written"] > summary["flooders"]["echoed_back"] > 0
    assert sum(summary["server"]["disconnect_reasons"].values()) > 3
    assert "RSS (MiB)" in result.stdout
