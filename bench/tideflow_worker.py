"""A tideflow worker process for the benchmarks.

``python bench/tideflow_worker.py URL [--concurrency 200] [--poll 0.05]``

It registers async handlers ``noop`` (returns None), ``lat`` (reports its start time to the
orchestrator over UDP) and ``parent`` (spawns ``payload`` no-op children, then completes with
their count), starts the worker, prints ``READY`` and runs until stdin closes or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from common import report_start

from tideflow import TaskManager


async def noop(task: Any) -> None:
    return None


async def lat(task: Any) -> None:
    report_start(task.payload)


async def parent(task: Any) -> Any:
    if task.stage == 0:
        return task.next([{"name": "noop"}] * int(task.payload))
    return len(task.result)


def build_manager(url: str, concurrency: int, poll: float) -> TaskManager:
    tm = TaskManager(url, max_concurrent_tasks=concurrency, poll_interval=poll)
    tm.use("noop", noop)
    tm.use("lat", lat)
    tm.use("parent", parent)
    return tm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--poll", type=float, default=0.05)
    args = parser.parse_args()
    tm = build_manager(args.url, args.concurrency, args.poll)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    tm.start()
    print("READY", flush=True)

    def watch_stdin() -> None:
        sys.stdin.read()
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    done.wait()
    tm.stop(5)
    tm.close()


if __name__ == "__main__":
    main()
