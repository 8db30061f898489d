"""A worker process for the multi-process tests.

Usage: ``python worker_script.py DB_PATH --worker-id ID [--idle-exit S] [--max-lifetime S]``.
Serves the no-op task ``noop`` from the SQLite file ``DB_PATH`` and stops gracefully on SIGTERM,
or once tasks have existed and none has been outstanding for ``--idle-exit`` seconds.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any

from tideflow import TaskManager

OUTSTANDING = ("pending", "running", "failed", "timeout")


def noop(task: Any) -> None:
    return None


def outstanding(tm: TaskManager) -> int:
    return sum(tm.query_tasks(status=status, limit=1).total for status in OUTSTANDING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("db_path")
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--idle-exit", type=float, default=1.0)
    parser.add_argument("--max-lifetime", type=float, default=120.0)
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    tm = TaskManager(
        f"sqlite:{args.db_path}",
        max_concurrent_tasks=8,
        poll_interval=0.02,
        worker_id=args.worker_id,
    )
    tm.use("noop", noop)
    tm.start()
    print(f"{args.worker_id} started", flush=True)

    deadline = time.monotonic() + args.max_lifetime
    seen_work = False
    idle_since: float | None = None
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            seen_work = seen_work or tm.query_tasks(limit=1).total > 0
            if seen_work and outstanding(tm) == 0:
                idle_since = idle_since if idle_since is not None else time.monotonic()
                if time.monotonic() - idle_since >= args.idle_exit:
                    break
            else:
                idle_since = None
            stop.wait(0.1)
    finally:
        tm.stop(timeout=10)
        tm.close()
    print(f"{args.worker_id} stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
