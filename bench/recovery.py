"""Recovery time after ``kill -9`` of the worker holding the maintenance lease (issue 10).

    python bench/recovery.py [--quick] [--stores STORE[,...]] [--runs N]
                             [--heartbeat-interval S] [--heartbeat-timeout S] [--json FILE]

On each store a victim worker (4 slots) takes the maintenance lease and four tasks that sleep a
minute; a second worker with free slots joins; the victim is killed with ``kill -9``. The figure
is the time from the kill to the moment all four tasks are ``running`` again under another
worker (the database is polled every 10 ms), in two cases:

* **pod replacement**: the victim has ``--pod-id``, and a new worker of that pod is started right
  after the kill (its start-up, imports and connecting, counts). Target: within
  ``worker_heartbeat_interval`` + 1 s.
* **no pod**: nobody replaces it; a live worker must notice the silence. Target: within
  ``worker_heartbeat_timeout`` + 1 s.

Every worker is a real ``tideflow worker recovery:make_manager`` process (this file is also
that APP). Figures are medians of 3 runs (1 with ``--quick``); defaults: heartbeat interval 1 s,
timeout 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

from tideflow import TaskManager

STORES = ("sqlite", "postgres", "mysql")
STORE_LABEL = {"sqlite": "SQLite file", "postgres": "PostgreSQL", "mysql": "MariaDB"}
CASES = ("pod", "nopod")
CASE_LABEL = {"pod": "pod replacement", "nopod": "no pod (silence)"}
SLOTS = 4
DB_NAME = "tideflow_bench_recovery"
VICTIM_POD = "recovery-victim"


# --- the APP the worker processes serve --------------------------------------------------------
async def hold(task: Any) -> None:
    await asyncio.sleep(float(task.payload or 60))


def make_manager() -> TaskManager:
    """``tideflow worker recovery:make_manager``; settings from ``RECOVERY_*`` variables."""
    tm = TaskManager(
        os.environ["TIDEFLOW_DB"],
        worker_id=f"recovery-{os.environ.get('RECOVERY_NAME', 'worker')}-{os.getpid()}",
        max_concurrent_tasks=SLOTS,
        poll_interval=0.05,
        worker_heartbeat_interval=float(os.environ["RECOVERY_HB_INTERVAL"]),
        task_heartbeat_interval=float(os.environ["RECOVERY_HB_INTERVAL"]),
        worker_heartbeat_timeout=float(os.environ["RECOVERY_HB_TIMEOUT"]),
        task_heartbeat_timeout=max(60.0, 4 * float(os.environ["RECOVERY_HB_TIMEOUT"])),
    )
    tm.use("hold", hold)
    return tm


# --- the orchestrator ----------------------------------------------------------------------------
@dataclass
class Worker:
    name: str
    popen: subprocess.Popen[bytes]

    @property
    def worker_id(self) -> str:
        return f"recovery-{self.name}-{self.popen.pid}"


@dataclass
class Cell:
    store: str
    case: str
    target: float
    seconds: list[float] = field(default_factory=list)
    note: str | None = None

    @property
    def median(self) -> float | None:
        return common.median(self.seconds)

    @property
    def met(self) -> bool | None:
        return None if not self.seconds else max(self.seconds) <= self.target


class Run:
    """One measurement: fresh database, victim with the lease and the tasks, kill, watch."""

    def __init__(self, url: str, args: argparse.Namespace) -> None:
        self.url, self.args = url, args
        self.workers: list[Worker] = []

    def spawn(self, name: str, pod: str | None) -> Worker:
        env = common.bench_env(
            {
                "TIDEFLOW_DB": self.url,
                "RECOVERY_NAME": name,
                "RECOVERY_HB_INTERVAL": str(self.args.heartbeat_interval),
                "RECOVERY_HB_TIMEOUT": str(self.args.heartbeat_timeout),
            }
        )
        cmd = [sys.executable, "-m", "tideflow.cli", "worker", "recovery:make_manager"]
        cmd += ["--stop-timeout", "1", "--log-level", "WARNING"]
        if pod is not None:
            cmd += ["--pod-id", pod]
        out = None if os.environ.get("BENCH_DEBUG") else subprocess.DEVNULL
        popen = subprocess.Popen(cmd, env=env, cwd=common.BENCH_DIR, stdout=out, stderr=out)
        worker = Worker(name, popen)
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for w in self.workers:
            if w.popen.poll() is None:
                w.popen.send_signal(signal.SIGKILL)
            with contextlib.suppress(Exception):
                w.popen.wait(timeout=10)

    def measure(self, case: str) -> float:
        client = TaskManager(self.url, allow_unregistered=True)
        try:
            client.setup()
            victim = self.spawn("victim", VICTIM_POD if case == "pod" else None)
            _until(lambda: _status(client, victim) == "active", 60, "the victim never started")
            _until(
                lambda: client._store.lease_holder("maintenance") == victim.worker_id,
                30,
                "the victim never took the maintenance lease",
            )
            ids = client.submit_many([("hold", 120)] * SLOTS)
            _until(
                lambda: _running(client, ids) == {victim.worker_id},
                30,
                "the victim never ran its tasks",
            )
            survivor = self.spawn("survivor", None)
            _until(lambda: _status(client, survivor) == "active", 60, "the survivor never started")
            # the victim still holds the lease: it renews it every heartbeat
            assert client._store.lease_holder("maintenance") == victim.worker_id
            killed_at = time.perf_counter()
            os.kill(victim.popen.pid, signal.SIGKILL)
            if case == "pod":
                self.spawn("replacement", VICTIM_POD)
            victim.popen.wait(timeout=10)
            limit = 4 * self.args.heartbeat_timeout + 30

            def elsewhere() -> bool:
                owners = _running(client, ids, count=True)
                return (
                    bool(owners)
                    and victim.worker_id not in owners
                    and sum(owners.values()) == SLOTS
                )

            _until(elsewhere, limit, "the victim's tasks did not run again elsewhere", 0.01)
            return time.perf_counter() - killed_at
        finally:
            self.close()
            client.close()


def _status(client: TaskManager, worker: Worker) -> str | None:
    if worker.popen.poll() is not None:
        raise RuntimeError(f"worker {worker.name} exited with {worker.popen.returncode}")
    info = client.get_worker(worker.worker_id)
    return None if info is None else info.status


def _running(client: TaskManager, ids: list[int], count: bool = False) -> Any:
    wanted = set(ids)
    rows = [t for t in client.query_tasks(status="running", limit=None).items if t.id in wanted]
    if count:
        owners: dict[str, int] = {}
        for t in rows:
            owners[str(t.worker_id)] = owners.get(str(t.worker_id), 0) + 1
        return owners
    return {t.worker_id for t in rows} if len(rows) == len(wanted) else set()


def _until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what} (waited {timeout:.0f}s)")
        time.sleep(interval)


def fresh_url(store: str, tmp: Path) -> str:
    if store == "postgres":
        return common.fresh_pg_database(DB_NAME)
    if store == "mysql":
        return common.fresh_mysql_database(DB_NAME)
    return f"sqlite:{common.fresh_sqlite_file(tmp, DB_NAME)}"


def drop(store: str) -> None:
    if store == "postgres":
        common.drop_pg_database(DB_NAME)
    elif store == "mysql":
        common.drop_mysql_database(DB_NAME)


def unavailable(store: str) -> str | None:
    if store == "postgres":
        return common.pg_available() or common.tideflow_store_available("postgres")
    if store == "mysql":
        return common.mysql_available() or common.tideflow_store_available("mysql")
    return None


def table(cells: list[Cell]) -> str:
    header = ("store", "case", "runs", "median s", "max s", "target s", "met")
    rows: list[tuple[str, ...]] = [header]
    for c in cells:
        med = "n/a" if c.median is None else f"{c.median:.2f}"
        worst = f"{max(c.seconds):.2f}" if c.seconds else (c.note or "n/a")
        met = "" if c.met is None else ("yes" if c.met else "NO")
        label = (STORE_LABEL[c.store], CASE_LABEL[c.case])
        rows.append((*label, str(len(c.seconds)), med, worst, f"{c.target:g}", met))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run per figure")
    parser.add_argument("--stores", default=",".join(STORES), help="comma separated")
    parser.add_argument("--runs", type=int, help="runs per figure (median; default 3)")
    parser.add_argument("--heartbeat-interval", type=float, default=1.0, metavar="S")
    parser.add_argument("--heartbeat-timeout", type=float, default=5.0, metavar="S")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    args = parser.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    for s in stores:
        if s not in STORES:
            parser.error(f"unknown store {s!r}; known: {', '.join(STORES)}")
    targets = {
        "pod": args.heartbeat_interval + 1.0,
        "nopod": args.heartbeat_timeout + 1.0,
    }
    print(
        f"recovery after kill -9 of the maintenance lease holder: heartbeat interval"
        f" {args.heartbeat_interval:g} s, timeout {args.heartbeat_timeout:g} s, {SLOTS} tasks,"
        f" {runs} run(s) per figure",
        flush=True,
    )
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="tideflow-recovery-") as tmp:
        for store in stores:
            why = unavailable(store)
            for case in CASES:
                cell = Cell(store, case, targets[case])
                cells.append(cell)
                if why:
                    cell.note = f"skipped: {why}"
                    continue
                for i in range(runs):
                    try:
                        run = Run(fresh_url(store, Path(tmp)), args)
                        seconds = run.measure(case)
                    except Exception as exc:
                        cell.note = f"failed: {type(exc).__name__}: {exc}"
                        print(f"  {store} {case} run {i + 1}: {cell.note}", flush=True)
                        break
                    finally:
                        drop(store)
                    cell.seconds.append(seconds)
                    print(f"  {store} {case} run {i + 1}: {seconds:.2f} s", flush=True)
    print()
    print(table(cells))
    for c in cells:
        if c.note:
            print(f"  {STORE_LABEL[c.store]} {CASE_LABEL[c.case]}: {c.note}")
    if args.json:
        data = {
            "heartbeat_interval": args.heartbeat_interval,
            "heartbeat_timeout": args.heartbeat_timeout,
            "runs_per_figure": runs,
            "results": {
                c.store + "/" + c.case: {
                    "seconds": c.seconds,
                    "median": c.median,
                    "target": c.target,
                    "met": c.met,
                    "note": c.note,
                }
                for c in cells
            },
        }
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0 if all(c.note is None for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
