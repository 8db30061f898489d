"""PostgreSQL server CPU per task of the store's own hot path: claim and complete, no worker.

    python bench/store_cost.py [-n 40000] [--batch 1000] [--runs 5] [--url URL]
                               [--ddl "DROP INDEX ...; ..."]

Each run inserts ``n`` tasks in a schema of its own, then claims them ``batch`` at a time, each
exchange writing the completions of the previous batch with the next claim (as a busy worker
does), and reads the CPU time of the one backend that served it from /proc (the server must run
on this machine). No worker process, no handler, no polling: on a small shared machine this
figure moves far less than a drain's (``bench/cost.py``), so it is the one to compare when a
change to the store's statements is worth 10% or less. To compare two commits, run it with
``PYTHONPATH=<checkout>/src`` for each, interleaved. ``--ddl`` runs statements after setup
(a what-if: ``--ddl "DROP INDEX tideflow_events_task"`` shows what that index costs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from cost import cpu_seconds

from tideflow.core import lifecycle
from tideflow.core.options import TaskPolicy
from tideflow.core.types import ClaimRequest, TaskRow
from tideflow.store.sql.postgres import PostgresStore


def never(expr: str, tz: str, after: float) -> float:
    raise AssertionError("no cron task here")


def one_run(url: str, schema: str, n: int, batch: int, ddl: str) -> tuple[float, float]:
    """(server µs/task, client µs/task) of claiming and completing ``n`` tasks."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    store = PostgresStore(
        psycopg.conninfo.make_conninfo(url, options=f"-csearch_path={schema}"),
        min_size=1,
        max_size=1,
    )
    try:
        store.setup()
        if ddl:
            with store._write() as cur:
                for statement in filter(None, (s.strip() for s in ddl.split(";"))):
                    cur.execute(statement)
        policy = TaskPolicy()
        for start in range(0, n, batch):
            store.insert_tasks(
                [
                    lifecycle.new_task(
                        name="job",
                        type="async",
                        payload="null",
                        policy=policy,
                        next_run_time=1.0,
                        now=1.0,
                    )
                    for _ in range(min(batch, n - start))
                ]
            )
        with store._read() as cur:
            cur.execute("SELECT pg_backend_pid()")
            backend = int(cur.fetchone()[0])
        server0, client0 = cpu_seconds(backend), time.process_time()
        running: list[TaskRow] = []
        while True:
            request = ClaimRequest(
                worker_id="w",
                now=2.0,
                limit=batch,
                names={"job": None},
                capabilities=frozenset(),
                plan=lifecycle.claim("w", 2.0),
            )
            done = [lifecycle.complete(row, None, 3.0, never) for row in running]
            _, running = store.exchange(done, request)
            if not running:
                break
        server1, client1 = cpu_seconds(backend), time.process_time()
    finally:
        store.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    return (server1 - server0) / n * 1e6, (client1 - client0) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--url", default=common.PG_URL, help="a PostgreSQL database on this host")
    parser.add_argument("--ddl", default="", help="statements to run after setup, ;-separated")
    args = parser.parse_args()
    schema = f"tideflow_store_cost_{os.getpid()}"
    results = [one_run(args.url, schema, args.n, args.batch, args.ddl) for _ in range(args.runs)]
    servers = sorted(r[0] for r in results)
    print(
        f"postgres store  server {statistics.median(servers):6.1f} µs/task"
        f" (runs {', '.join(f'{s:.1f}' for s in servers)})"
        f"  client {statistics.median(r[1] for r in results):6.1f} µs/task"
    )


if __name__ == "__main__":
    main()
