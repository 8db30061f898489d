"""Smoke test of ``bench/recovery.py``: one quick run on a SQLite file prints the table and the
JSON, with a figure for both cases (the targets are the benchmark's business, not this test's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_recovery_quick_sqlite(tmp_path: Path) -> None:
    out = tmp_path / "recovery.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "recovery.py"),
            "--quick",
            "--stores",
            "sqlite",
            "--heartbeat-interval",
            "0.3",
            "--heartbeat-timeout",
            "2",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "pod replacement" in proc.stdout
    assert "no pod (silence)" in proc.stdout
    data = json.loads(out.read_text())
    for case in ("pod", "nopod"):
        cell = data["results"][f"sqlite/{case}"]
        assert cell["note"] is None, cell
        assert len(cell["seconds"]) == 1
        assert cell["seconds"][0] > 0
