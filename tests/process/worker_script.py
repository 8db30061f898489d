"""A worker process for the multi-process tests, on any database (``sqlite:...``,
``postgresql://...``, ``mysql://...``).

Usage: ``python worker_script.py URL --worker-id ID [--idle-exit S] [--max-lifetime S]
[--heartbeat S]``
or ``python worker_script.py URL --setup-at T`` (call ``setup()`` at POSIX time ``T``, exit).

Serves the no-op task ``noop`` (and ``block``, which sleeps for a minute) from the database at
``URL`` and stops gracefully on SIGTERM, or once tasks have existed and none has been
outstanding for ``--idle-exit`` seconds.
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


def block(task: Any) -> None:
    time.sleep(60)


def outstanding(tm: TaskManager) -> int:
    return sum(tm.query_tasks(status=status, limit=1).total for status in OUTSTANDING)


def setup_at(url: str, when: float) -> int:
    tm = TaskManager(url, allow_unregistered=True)
    try:
        time.sleep(max(0.0, when - time.time()))
        tm.setup()
    finally:
        tm.close()
    print("setup done", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--worker-id")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--idle-exit", type=float, default=1.0)
    parser.add_argument("--max-lifetime", type=float, default=180.0)
    parser.add_argument("--setup-at", type=float)
    parser.add_argument("--heartbeat", type=float, default=5.0, help="heartbeat intervals")
    args = parser.parse_args(argv)
    if args.setup_at is not None:
        return setup_at(args.url, args.setup_at)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    tm = TaskManager(
        args.url,
        max_concurrent_tasks=args.concurrency,
        poll_interval=0.05,
        worker_id=args.worker_id,
        task_heartbeat_interval=args.heartbeat,
        worker_heartbeat_interval=args.heartbeat,
    )
    tm.use("noop", noop)
    tm.use("block", block)
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
            stop.wait(0.2)
    finally:
        tm.stop(timeout=10)
        tm.close()
    print(f"{args.worker_id} stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
