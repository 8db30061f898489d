"""Worker processes of the chaos tests, their execution records, and the final checks.

A :class:`Cluster` starts real ``tideflow worker tests.chaos.app:make_manager`` processes,
kills them with ``kill -9`` (remembering when), stops the rest with SIGTERM, and reads what
their handlers recorded (see ``app.py``). :func:`check_run` asserts what must hold after any
amount of chaos.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from support.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.chaos.app:make_manager"
T = TypeVar("T")

#: how much chaos: 1 in CI, more for a soak run by hand (``TIDEFLOW_CHAOS_SCALE=10``)
SCALE = max(0.1, float(os.environ.get("TIDEFLOW_CHAOS_SCALE", "1") or 1))


def quietly(fn: Callable[[], T], default: Any = None) -> T | Any:
    """``fn()``, or ``default`` when it raises (the database may be restarting)."""
    try:
        return fn()
    except Exception:
        return default


@dataclasses.dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    pod: str | None = None
    skew: float = 0.0
    via_proxy: bool = False
    killed_at: float | None = None
    started_at: float = 0.0

    @property
    def worker_id(self) -> str:
        return f"{self.name}-{self.proc.pid}"

    @property
    def alive(self) -> bool:
        return self.killed_at is None and self.proc.poll() is None

    def __repr__(self) -> str:
        extra = f" pod={self.pod}" if self.pod else ""
        extra += f" skew={self.skew:+g}" if self.skew else ""
        extra += " via-proxy" if self.via_proxy else ""
        return f"<{self.worker_id}{extra}>"


@dataclasses.dataclass(frozen=True)
class Execution:
    """One run of the handler, as its process recorded it (real clock)."""

    task: int
    attempt: int
    worker: str
    start: float
    end: float
    how: str  # ok, cancelled, error, killed (no end line: its process was killed)


class Cluster:
    """Worker processes on one database, all serving ``tests/chaos/app.py``."""

    def __init__(
        self,
        url: str,
        workdir: Path,
        *,
        hb_interval: float,
        hb_timeout: float,
        concurrency: int = 3,
        proxy_url: str | None = None,
    ) -> None:
        self.url = url
        self.proxy_url = proxy_url
        self.records = workdir / "records"
        self.records.mkdir(parents=True, exist_ok=True)
        self.logs_dir = workdir / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.hb_interval = hb_interval
        self.hb_timeout = hb_timeout
        self.concurrency = concurrency
        self.workers: list[Worker] = []
        #: what the chaos did, in order, for failure messages: (real time, text)
        self.journal: list[tuple[float, str]] = []
        #: (from, to, worker id or None for all): when a live worker may lose its attempts
        #: (cut off from the database, or the server restarting); outside them only a killed
        #: worker's attempts may end unfinished
        self.excuses: list[tuple[float, float, str | None]] = []

    def note(self, text: str) -> None:
        self.journal.append((time.time(), text))

    def excuse(self, start: float, end: float, worker: Worker | None = None) -> None:
        """Attempts of ``worker`` (or of anyone) may be given up between ``start`` and ``end``
        plus twice the heartbeat timeout and a second."""
        limit = end + 2 * self.hb_timeout + 1
        self.excuses.append((start, limit, None if worker is None else worker.worker_id))

    def excused(self, worker_id: str, when: float) -> bool:
        return any(
            start <= when <= end and who in (None, worker_id) for start, end, who in self.excuses
        )

    # --- processes -----------------------------------------------------------------------------
    def spawn(
        self,
        name: str,
        *,
        pod: str | None = None,
        skew: float = 0.0,
        via_proxy: bool = False,
        concurrency: int | None = None,
    ) -> Worker:
        db = self.proxy_url if via_proxy else self.url
        assert db is not None, "no proxy for this cluster"
        env = {
            **os.environ,
            "CHAOS_LOG_DIR": str(self.records),
            "CHAOS_NAME": name,
            "CHAOS_HB_INTERVAL": str(self.hb_interval),
            "CHAOS_HB_TIMEOUT": str(self.hb_timeout),
            "CHAOS_CONCURRENCY": str(concurrency or self.concurrency),
            "CHAOS_SKEW": str(skew),
            "TIDEFLOW_DB": db,  # not on the command line, where ps would show it
        }
        cmd = [sys.executable, "-m", "tideflow.cli", "worker", APP, "--stop-timeout", "5"]
        if pod is not None:
            cmd += ["--pod-id", pod]
        log = self.logs_dir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        worker = Worker(name, proc, log, pod, skew, via_proxy, started_at=time.time())
        self.workers.append(worker)
        self.note(f"started {worker!r}")
        return worker

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.alive]

    def by_id(self, worker_id: str | None) -> Worker | None:
        return next((w for w in self.workers if w.worker_id == worker_id), None)

    def kill(self, worker: Worker, why: str = "") -> None:
        """``kill -9``; the time recorded is after the process is gone (its executions cannot
        have gone on past it)."""
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(timeout=30)
        worker.killed_at = time.time()
        self.note(f"kill -9 {worker!r} {why}".rstrip())

    def wait_active(self, client: Any, workers: Iterable[Worker], timeout: float = 60) -> None:
        wanted = list(workers)

        def up() -> bool:
            for w in wanted:
                assert w.proc.poll() is None, f"{w!r} exited early\n{self.tails()}"
            info = quietly(lambda: {i.worker_id: i.status for i in client.get_workers()}, {})
            return all(info.get(w.worker_id) == "active" for w in wanted)

        wait_for(
            up,
            timeout=timeout,
            interval=0.05,
            message=lambda: f"workers {wanted} not all active\n{self.tails()}",
        )

    def stop_all(self, timeout: float = 30) -> dict[str, int | None]:
        """SIGTERM every live worker; their exit codes (None: had to be killed)."""
        live = self.live()
        for w in live:
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + timeout
        for w in live:
            try:
                codes[w.worker_id] = w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(timeout=10)
                codes[w.worker_id] = None
        self.note(f"stopped {codes}")
        return codes

    def kill_all(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.kill()
                with contextlib.suppress(Exception):
                    w.proc.wait(timeout=10)

    # --- what happened -------------------------------------------------------------------------
    def tails(self, chars: int = 2500) -> str:
        parts = []
        for w in self.workers:
            text = w.log.read_text(errors="replace") if w.log.exists() else ""
            parts.append(f"--- {w!r} ({w.log.name}, exit {w.proc.poll()})\n{text[-chars:]}")
        return "\n".join(parts)

    def story(self) -> str:
        t0 = self.journal[0][0] if self.journal else 0.0
        return "\n".join(f"  {t - t0:7.2f}s {text}" for t, text in self.journal)

    def executions(self) -> tuple[list[Execution], list[str]]:
        """Every recorded execution, and the problems found reading them (an execution whose
        process was not killed but never recorded its end)."""
        killed = {w.worker_id: w.killed_at for w in self.workers if w.killed_at is not None}
        starts: dict[tuple[str, int, int], float] = {}
        ends: dict[tuple[str, int, int], tuple[float, str]] = {}
        for path in sorted(self.records.glob("*.jsonl")):
            for line in path.read_text().splitlines():
                if not line.strip():
                    continue
                rec = json.loads(line)
                key = (rec["worker"], rec["task"], rec["attempt"])
                if rec["ev"] == "start":
                    starts[key] = rec["t"]
                else:
                    ends[key] = (rec["t"], rec["how"])
        out: list[Execution] = []
        problems: list[str] = []
        for key, start in starts.items():
            worker, task, attempt = key
            if key in ends:
                end, how = ends[key]
            elif killed.get(worker) is not None:
                end, how = killed[worker], "killed"  # type: ignore[assignment]
            else:
                problems.append(
                    f"task {task} attempt {attempt} on {worker} started and never ended"
                    " (its process was not killed)"
                )
                continue
            out.append(Execution(task, attempt, worker, start, end, how))
        return out, problems


def check_run(client: Any, ids: list[int], cluster: Cluster) -> dict[str, Any]:
    """The invariants of any run: every task completed exactly once as far as the audit goes,
    no two executions of a task overlapped, every execution is an audited attempt, no attempt
    is left open. Returns a small summary."""
    problems: list[str] = []
    tasks = {t.id: t for t in client.query_tasks(limit=None).items}
    missing = set(ids) - set(tasks)
    if missing:
        problems.append(f"{len(missing)} task(s) missing: {sorted(missing)[:10]}")
    statuses = Counter(tasks[i].status for i in ids if i in tasks)
    if statuses != Counter({"completed": len(ids)}):
        bad = [i for i in ids if i in tasks and tasks[i].status != "completed"]
        problems.append(
            f"statuses {dict(statuses)}; not completed: "
            + ", ".join(
                f"{i} {tasks[i].status} ({(tasks[i].error or '')[:120]!r})" for i in bad[:10]
            )
        )

    executions, read_problems = cluster.executions()
    problems += read_problems
    by_task: dict[int, list[Execution]] = defaultdict(list)
    for e in executions:
        by_task[e.task].append(e)
    overlapping: set[int] = set()
    for task_id, runs in by_task.items():
        runs.sort(key=lambda e: e.start)
        for i, a in enumerate(runs):
            for b in runs[i + 1 :]:
                if b.start < a.end and a.start < b.end:
                    overlapping.add(task_id)
                    problems.append(
                        f"task {task_id}: attempt {a.attempt} on {a.worker}"
                        f" [{a.start:.3f}, {a.end:.3f}] ({a.how}) overlaps attempt {b.attempt}"
                        f" on {b.worker} [{b.start:.3f}, {b.end:.3f}] ({b.how}) by"
                        f" {min(a.end, b.end) - b.start:.3f}s"
                    )

    # outside the excused windows only a kill may cut an execution short: a live worker whose
    # attempt was cancelled, or whose finished attempt was not the one that completed, was
    # taken for dead (or superseded) while it was not
    killed = {w.worker_id for w in cluster.workers if w.killed_at is not None}
    completed_by = {}
    for task_id in ids:
        for a in client.query_task_attempts(task_id, outcome="completed").items:
            completed_by[task_id] = (a.attempt, a.worker_id)
    for e in executions:
        if e.how == "killed" or cluster.excused(e.worker, e.end):
            continue
        if e.how != "ok" or (
            completed_by.get(e.task) != (e.attempt, e.worker) and e.worker not in killed
        ):
            problems.append(
                f"task {e.task}: attempt {e.attempt} on live worker {e.worker} ended {e.how}"
                f" at {e.end:.3f} without being completed, outside any cut or restart"
                f" (completed attempt: {completed_by.get(e.task)})"
            )

    n_attempts = 0
    outcomes: Counter[str] = Counter()
    for task_id in ids:
        attempts = client.query_task_attempts(task_id).items
        n_attempts += len(attempts)
        rows = {a.attempt: a for a in attempts}
        outcomes.update(str(a.outcome) for a in attempts)
        still_open = client.query_task_attempts(task_id, open_only=True).items
        unended = [a for a in attempts if a.ended_at is None]
        if still_open or unended:
            problems.append(
                f"task {task_id}: open attempt(s) "
                f"{[(a.attempt, a.worker_id) for a in still_open or unended]}"
            )
        runs = by_task.get(task_id, [])
        for e in runs:
            row = rows.get(e.attempt)
            if row is None or row.worker_id != e.worker:
                problems.append(
                    f"task {task_id}: execution of attempt {e.attempt} on {e.worker} ({e.how})"
                    f" has no attempt row of that worker (audit has "
                    f"{[(a.attempt, a.worker_id, a.outcome) for a in attempts]})"
                )
        completed = [a for a in attempts if a.outcome == "completed"]
        if len(completed) != 1:
            problems.append(
                f"task {task_id}: {len(completed)} completed attempts "
                f"{[(a.attempt, a.worker_id, a.outcome) for a in attempts]}"
            )
        for a in completed:
            if not any(e.attempt == a.attempt and e.how == "ok" for e in runs):
                problems.append(
                    f"task {task_id}: attempt {a.attempt} completed by {a.worker_id} without a"
                    " recorded execution that ended ok"
                )

    summary = {
        "tasks": len(ids),
        "executions": len(executions),
        "executions_by_end": dict(Counter(e.how for e in executions)),
        "attempts": n_attempts,
        "attempt_outcomes": dict(outcomes),
        "overlapping_tasks": sorted(overlapping),
    }
    if problems:
        shown = "\n  ".join(problems[:40])
        more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
        raise AssertionError(
            f"{len(problems)} problem(s) after the chaos:\n  {shown}{more}\n"
            f"summary: {summary}\nwhat happened:\n{cluster.story()}\n{cluster.tails()}"
        )
    return summary
