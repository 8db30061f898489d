"""CPU cost per task of a tideflow drain: worker and database server, in microseconds.

    python bench/cost.py [--stores sqlite,postgres,mysql] [-n 20000] [--runs 3]
                         [--concurrency 200 | --defaults] [--sync]
                         [--instrument metrics,otel,logs]

Wall-clock throughput on a small shared machine swings by ±20% between runs; CPU time spent per
task moves far less, so this is the figure to compare before and after a change to the hot path.
The worker is ``bench/tideflow_worker.py`` in its own process; its CPU is read from /proc after
READY and again when the last task is counted finished. The server's CPU is that of the
``mariadbd`` process over the same window (SQLite has none). On PostgreSQL it is the sum over the
backends connected to the drained database, minus the one that serves the counting query: the
server is shared with other users (their backends are not ours), and counting 20,000 rows every
20 ms would add 100-200 µs per task to a slow drain and less to a fast one. Shared background
processes (WAL writer, checkpointer) are left out there.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import Counter, Proc, median

from tideflow import TaskManager

TICK = os.sysconf("SC_CLK_TCK")
SERVER_COMM = {"postgres": ("postgres",), "mysql": ("mariadbd", "mysqld")}
COUNT = "SELECT count(*) FROM tideflow_tasks WHERE status = 'completed'"


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) in seconds; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def server_cpu(store: str) -> float:
    names = SERVER_COMM.get(store)
    if not names:
        return 0.0
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as fh:
                comm = fh.read().strip()
        except OSError:
            continue
        if comm in names:
            total += cpu_seconds(int(entry))
    return total


def target_for(store: str, tmp: Path) -> tuple[str, str]:
    """(tideflow url, counter target) of a fresh database."""
    name = f"tideflow_cost_{os.getpid()}"
    if store == "sqlite":
        path = str(common.fresh_sqlite_file(tmp, name))
        return f"sqlite:{path}", path
    if store == "postgres":
        url = common.fresh_pg_database(name)
    else:
        url = common.fresh_mysql_database(name)
    return url, url


def one_run(
    store: str,
    n: int,
    tmp: Path,
    concurrency: int | None = 200,
    sync: bool = False,
    instrument: str = "",
) -> tuple[float, float, float]:
    """(worker µs/task, server µs/task, wall-clock tasks/s) of one drain of ``n`` no-op tasks;
    ``concurrency`` None runs the worker with default settings, ``sync`` a plain def handler."""
    url, target = target_for(store, tmp)
    tm = TaskManager(url, allow_unregistered=True)
    tm.setup()
    tm.submit_many([("noop", None)] * n)
    tm.close()
    counter = Counter(store, target, COUNT)
    counting = (
        counter.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        if store == "postgres"
        else None
    )

    def server() -> float:
        return server_cpu(store) - (cpu_seconds(counting) if counting else 0.0)

    args = ["tideflow_worker.py", url]
    args += ["--defaults"] if concurrency is None else ["--concurrency", str(concurrency)]
    args += ["--sync"] if sync else []
    args += ["--instrument", instrument] if instrument else []
    proc = Proc(args)
    try:
        proc.wait_ready()
        w0, s0, t0 = cpu_seconds(proc.pid), server(), time.perf_counter()
        while counter.count() < n:
            if not proc.alive():
                raise RuntimeError("worker exited early")
            time.sleep(0.02)
        w1, s1, t1 = cpu_seconds(proc.pid), server(), time.perf_counter()
    finally:
        proc.stop()
        counter.close()
    return (w1 - w0) / n * 1e6, (s1 - s0) / n * 1e6, n / (t1 - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stores", default="sqlite,postgres,mysql")
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=200, help="worker slots (default 200)")
    parser.add_argument("--defaults", action="store_true", help="the worker's default settings")
    parser.add_argument("--sync", action="store_true", help="a plain def no-op handler")
    parser.add_argument(
        "--instrument",
        default="",
        help="the worker's instrumentation, comma-separated: metrics, otel, logs (default none)",
    )
    args = parser.parse_args()
    concurrency = None if args.defaults else args.concurrency
    with tempfile.TemporaryDirectory() as tmp:
        for store in args.stores.split(","):
            runs = [
                one_run(store, args.n, Path(tmp), concurrency, args.sync, args.instrument)
                for _ in range(args.runs)
            ]
            worker, server, rate = (median([r[i] for r in runs]) or 0.0 for i in range(3))
            print(
                f"{store:9} worker {worker:6.1f} µs/task  server {server:6.1f} µs/task"
                f"  total {worker + server:6.1f}  ({rate:,.0f} tasks/s incl. start)",
                flush=True,
            )
    if "postgres" in args.stores:
        common.drop_pg_database(f"tideflow_cost_{os.getpid()}")
    if "mysql" in args.stores:
        common.drop_mysql_database(f"tideflow_cost_{os.getpid()}")


if __name__ == "__main__":
    main()
