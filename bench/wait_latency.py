"""How soon ``tm.wait`` returns after a task finishes, and how many queries a wait costs.

    python bench/wait_latency.py [-n 200] [--waiters 10] [--work-ms 20] [--poll] [--db URL]

A worker manager runs a handler that sleeps ``--work-ms`` and returns; a second manager in the
same process, with a store (pool and LISTEN connection) of its own and no worker, submits each
task and waits for it with ``tm.wait`` from ``--waiters`` threads. Two latencies per task:

* **commit to wait**: from the moment the worker's store call that wrote the completion returned
  (the transaction had committed) to the moment ``tm.wait`` returned in the other manager; it
  can be a little below zero when the NOTIFY reaches the waiter before the worker's thread has
  read the commit's reply;
* **handler to wait**: from the handler's return (just before it) to ``tm.wait``'s return; it
  adds the worker's group commit (the completion rides the next claim transaction).

Reads are the waiting manager's task reads (``get_task`` / ``query_tasks``) while waits are on
their way. On PostgreSQL a wait reads once when it starts and once after the NOTIFY saying its
task finished, so anything above 2 per wait would be polling. ``--poll`` turns the NOTIFY off
for the waiter (as on SQLite and MySQL: 10 ms doubling to 0.5 s) to compare. Target (issue 11):
p99 commit-to-wait within 50 ms, no polling queries while waiting.

The default database is a fresh ``tideflow_bench_wait`` on ``$BENCH_PG_URL``; ``--db`` takes
any tideflow URL (its tasks table must be new or empty).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import percentile

from tideflow import TaskManager
from tideflow.models import TERMINAL_STATUSES

NAME = "tideflow_bench_wait"


def record_commits(tm: TaskManager, committed: dict[int, float]) -> None:
    """Note when each completion's transaction committed (its store call returned)."""
    store: Any = tm._store
    exchange, apply = store.exchange, store.apply

    def note(changes: Sequence[Any], held: Sequence[bool]) -> None:
        now = time.monotonic()
        for change, ok in zip(changes, held, strict=True):
            if ok and change.values.get("status") in TERMINAL_STATUSES:
                committed[change.task_id] = now

    def timed_exchange(changes: Sequence[Any], request: Any) -> Any:
        held, rows = exchange(changes, request)
        note(changes, held)
        return held, rows

    def timed_apply(changes: Sequence[Any]) -> Any:
        held = apply(changes)
        note(changes, held)
        return held

    store.exchange, store.apply = timed_exchange, timed_apply


def count_reads(tm: TaskManager, reads: list[int]) -> None:
    """Count the manager's task reads (what a polling wait would repeat)."""
    store: Any = tm._store
    get_task, query_tasks = store.get_task, store.query_tasks

    def counted_get(task_id: int) -> Any:
        reads.append(1)
        return get_task(task_id)

    def counted_query(query: Any) -> Any:
        reads.append(1)
        return query_tasks(query)

    store.get_task, store.query_tasks = counted_get, counted_query


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-n", type=int, default=200, help="tasks to wait for (default 200)")
    parser.add_argument("--waiters", type=int, default=10, help="waiting threads (default 10)")
    parser.add_argument("--work-ms", type=float, default=20.0, help="handler sleep (ms)")
    parser.add_argument("--poll", action="store_true", help="waiter polls, no NOTIFY")
    parser.add_argument("--db", help="a tideflow URL (default: a fresh PostgreSQL database)")
    args = parser.parse_args()

    db = args.db
    if db is None:
        missing = common.pg_available()
        if missing:
            sys.exit(f"PostgreSQL not available: {missing}")
        db = common.fresh_pg_database(NAME)

    handler_done: dict[int, float] = {}
    committed: dict[int, float] = {}

    def work(task: Any) -> str:
        time.sleep(args.work_ms / 1000)
        handler_done[task.id] = time.monotonic()
        return "ok"

    worker = TaskManager(db, max_concurrent_tasks=max(10, args.waiters), poll_interval=1.0)
    worker.use("work", work, timeout=60)
    waiter = TaskManager(db)
    waiter.use("work", work)  # to submit; this manager runs no worker
    try:
        worker.start()
        waiter.setup()
        record_commits(worker, committed)
        if args.poll:
            waiter._store.watch_finished = lambda on_finished: None  # type: ignore[method-assign]
        waiter.wait(waiter.submit("work"), timeout=30)  # warm up: pools, LISTEN connection

        reads: list[int] = []
        count_reads(waiter, reads)
        lat_commit: list[float] = []
        lat_handler: list[float] = []
        lock = threading.Lock()
        todo = iter(range(args.n))

        def waiting() -> None:
            while True:
                with lock:
                    if next(todo, None) is None:
                        return
                task_id = waiter.submit("work")
                info = waiter.wait(task_id, timeout=30)
                returned = time.monotonic()
                assert info.status == "completed", info
                # the NOTIFY may beat the worker's thread back from its commit: let it note it
                deadline = returned + 5
                while task_id not in committed and time.monotonic() < deadline:
                    time.sleep(0.001)
                with lock:
                    lat_commit.append(returned - committed[task_id])
                    lat_handler.append(returned - handler_done[task_id])

        threads = [threading.Thread(target=waiting) for _ in range(args.waiters)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
    finally:
        worker.stop(timeout=10)
        worker.close()
        waiter.close()
        if args.db is None:
            common.drop_pg_database(NAME)

    n = len(lat_commit)
    ms = [x * 1000 for x in lat_commit]
    hms = [x * 1000 for x in lat_handler]
    mode = "polling (--poll)" if args.poll else "NOTIFY" if db.startswith("postgres") else "polling"
    print(f"tm.wait on {db.split('://')[0].split(':')[0]}, {mode}: {n} tasks,")
    print(f"  {args.waiters} waiting threads, {args.work_ms:g} ms handlers, {elapsed:.1f} s")
    print(
        f"  commit -> wait returns   p50 {percentile(ms, 50):6.2f} ms   p99"
        f" {percentile(ms, 99):6.2f} ms   max {max(ms):6.2f} ms"
    )
    print(
        f"  handler -> wait returns  p50 {percentile(hms, 50):6.2f} ms   p99"
        f" {percentile(hms, 99):6.2f} ms   max {max(hms):6.2f} ms"
    )
    extra = len(reads) - 2 * n
    print(
        f"  task reads while waiting: {len(reads)} ({len(reads) / n:.2f} per wait; a first read"
        f" and one after the wake-up would be 2.00): {max(0, extra)} beyond that"
    )
    if not args.poll and mode == "NOTIFY":
        ok = percentile(ms, 99) <= 50 and extra <= 0
        print(f"  target p99 <= 50 ms and no polling reads: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
