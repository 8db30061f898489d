"""What progress reporting from async handlers costs: a drain with and without it.

    python bench/progress_overhead.py [--stores sqlite,postgres] [-n 200] [--calls 10] [--runs 3]

Each of ``n`` async handlers runs ``calls`` steps of ``await asyncio.sleep(--step)``; the
``aprogress`` variant reports progress after every step (``await task.aprogress(...)``, whose
event joins the worker's group commit), the ``progress`` variant with the blocking
``task.progress(...)`` (a database round trip on the event loop, what async handlers had
before), and ``none`` reports nothing. Every task is submitted first, then one worker in this
process (one slot per task, so all of them run at once) drains them; the figure is the wall time
from ``start()`` until the last one is completed (counted in the database), median of
``--runs``. The target: ``aprogress`` at most 1.2x ``none``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

from tideflow import TaskManager

VARIANTS = ("none", "aprogress", "progress")


def make_handler(variant: str, calls: int, pause: float) -> Any:
    async def none(task: Any) -> int:
        for _ in range(calls):
            await asyncio.sleep(pause)
        return calls

    async def aprogress(task: Any) -> int:
        for step in range(calls):
            await asyncio.sleep(pause)
            await task.aprogress(f"step {step + 1}", progress_percent=100 * (step + 1) / calls)
        return calls

    async def progress(task: Any) -> int:
        for step in range(calls):
            await asyncio.sleep(pause)
            task.progress(f"step {step + 1}", progress_percent=100 * (step + 1) / calls)
        return calls

    return {"none": none, "aprogress": aprogress, "progress": progress}[variant]


def drain(url: str, variant: str, n: int, calls: int, step: float) -> float:
    """Seconds from start() until all ``n`` tasks are completed."""
    tm = TaskManager(url, max_concurrent_tasks=n, poll_interval=0.01)
    try:
        tm.setup()
        tm.use("step", make_handler(variant, calls, step))
        tm.submit_many([("step", i) for i in range(n)])
        began = time.perf_counter()
        tm.start()
        while True:
            done = tm.query_tasks(status="completed", limit=0).total
            if done >= n:
                break
            time.sleep(0.005)
        elapsed = time.perf_counter() - began
        failed = tm.query_tasks(status="permanently_failed", limit=0).total
        if failed:
            raise SystemExit(f"{failed} tasks failed in the {variant} run on {url}")
        return elapsed
    finally:
        tm.stop()
        tm.close()


def fresh_url(store: str, tmp: Path, label: str) -> str:
    if store == "sqlite":
        return f"sqlite:{common.fresh_sqlite_file(tmp, label)}"
    return common.fresh_pg_database(f"bench_progress_{label}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("-n", type=int, default=200, help="handlers (tasks)")
    parser.add_argument("--calls", type=int, default=10, help="progress calls per handler")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--step", type=float, default=0.01, help="seconds each step sleeps")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    print(
        f"{args.n} async handlers x {args.calls} steps of sleep({args.step:g});"
        f" median of {args.runs}"
    )
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for store in args.stores.split(","):
            if store == "postgres" and (reason := common.pg_available()):
                print(f"{store}: skipped ({reason})")
                continue
            times: dict[str, list[float]] = {v: [] for v in variants}
            for run in range(args.runs):
                for variant in variants:  # interleaved, so drift hits every variant alike
                    url = fresh_url(store, tmp, f"{variant}{run}")
                    try:
                        times[variant].append(drain(url, variant, args.n, args.calls, args.step))
                    finally:
                        if store == "postgres":
                            common.drop_pg_database(f"bench_progress_{variant}{run}")
            base = statistics.median(times["none"]) if "none" in times else None
            for variant in variants:
                med = statistics.median(times[variant])
                ratio = f"  {med / base:.2f}x none" if base else ""
                runs = ", ".join(f"{t:.3f}" for t in times[variant])
                print(f"{store:8} {variant:10} {med:7.3f} s{ratio}   (runs: {runs})")


if __name__ == "__main__":
    main()
