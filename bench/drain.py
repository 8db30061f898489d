"""Drain N pre-submitted no-op tasks with one worker and print tasks/s.

Usage: python bench/drain.py [--db sqlite:/tmp/bench.db] [-n 5000] [--concurrency 50] [--async]

A quick in-process check while developing; the benchmark suite with peers, separate worker
processes and row counting is ``python bench/run.py`` (see its docstring).
"""

from __future__ import annotations

import argparse
import os
import time

from tideflow import TaskManager


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", default="sqlite:/tmp/tideflow-bench.db")
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--async", dest="use_async", action="store_true")
    args = parser.parse_args()
    if args.db.startswith("sqlite:") and not args.db.endswith(":memory:"):
        path = args.db.split(":", 1)[1]
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)

    tm = TaskManager(args.db, max_concurrent_tasks=args.concurrency, poll_interval=0.01)
    if args.use_async:

        async def noop(task: object) -> None:
            return None

        tm.use("noop", noop)
    else:
        tm.use("noop", lambda task: None)
    tm.setup()
    t0 = time.perf_counter()
    tm.submit_many([("noop", None)] * args.n)
    submit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tm.start()
    while True:
        page = tm.query_tasks(status="completed", limit=0)
        if page.total >= args.n:
            break
        time.sleep(0.01)
    drain_s = time.perf_counter() - t0
    tm.stop()
    attempts = tm.query_task_attempts(1).total
    tm.close()
    print(
        f"db={args.db} n={args.n} submit_many {args.n / submit_s:,.0f}/s;"
        f" drain {args.n / drain_s:,.0f} tasks/s ({drain_s:.2f}s)"
        f" {'async' if args.use_async else 'sync'} handlers; attempts(task 1)={attempts}"
    )


if __name__ == "__main__":
    main()
