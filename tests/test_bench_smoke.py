"""Smoke tests of the benchmarks: a quick drain on SQLite prints the table and the JSON, and the
store-level cost probe reads the PostgreSQL backend's CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``bench/<script>`` with ``args``; fail with its output's tail unless it succeeds."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_bench_quick_drain_sqlite(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = bench("run.py", "--quick", "--only", "drain", "--stores", "sqlite", "--json", str(out))
    assert "drain_1proc" in proc.stdout
    assert "ratio tideflow/peer" in proc.stdout
    data = json.loads(out.read_text())
    assert data["machine"]["cores"] >= 1
    for scenario in ("drain_1proc", "drain_2proc"):
        cell = data["results"][scenario]["sqlite"]
        assert cell["unit"] == "tasks/s"
        assert cell["tideflow"] is not None
        assert cell["tideflow"] > 0


@pytest.mark.slow
def test_store_cost_reads_the_backends_cpu_per_task(postgres_url: str) -> None:
    """``bench/store_cost.py`` drains through the store alone and prints the server's CPU per
    task (a what-if statement given with ``--ddl`` runs first)."""
    proc = bench(
        "store_cost.py",
        *("-n", "300", "--batch", "100", "--runs", "1", "--url", postgres_url),
        *("--ddl", "DROP INDEX tideflow_events_task"),
    )
    server = float(proc.stdout.split("server")[1].split()[0])
    assert server > 0
