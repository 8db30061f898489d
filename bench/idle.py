"""Idle cost of one tideflow worker on PostgreSQL at default settings.

    python bench/idle.py [--seconds 30] [--warmup 12]

Starts ``bench/tideflow_worker.py --defaults`` on a fresh database, waits ``--warmup`` seconds,
then reads ``xact_commit + xact_rollback`` of that database from ``pg_stat_database`` and the
worker's CPU from /proc, before and after ``--seconds``. The two statistics reads are made on a
connection to another database, so they are not counted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from cost import cpu_seconds


def xacts(name: str) -> int:
    with common.pg_connect(common.PG_URL) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (name,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=12.0)
    args = parser.parse_args()
    name = f"tideflow_idle_{os.getpid()}"
    url = common.fresh_pg_database(name)
    here = Path(__file__).resolve().parent
    proc = subprocess.Popen(
        [sys.executable, str(here / "tideflow_worker.py"), url, "--defaults"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        time.sleep(args.warmup)
        x0, c0, t0 = xacts(name), cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.seconds)
        x1, c1, t1 = xacts(name), cpu_seconds(proc.pid), time.monotonic()
        # pg_stat_database is flushed by each backend at most every second or so: the window's
        # edges blur by about one flush
        print(
            f"idle worker, PostgreSQL, defaults: {(x1 - x0) / (t1 - t0):.2f} xact/s,"
            f" {100 * (c1 - c0) / (t1 - t0):.2f}% of a core over {t1 - t0:.0f} s"
        )
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)
        common.drop_pg_database(name)


if __name__ == "__main__":
    main()
