"""``tideflow demo``: a worker runs a batch of example tasks with live progress, then a summary.

:func:`build_demo` registers the example handlers and :func:`demo_batch` makes the batch; both
are plain tideflow code a newcomer can read. To add an example, add a handler, an entry in
``EXAMPLES`` and its tasks in :func:`demo_batch`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import os
import shlex
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TextIO

from tideflow import Task
from tideflow.cli.common import CliError, check_reachable, command_prefix, redact, sqlite_file
from tideflow.manager import TaskManager
from tideflow.models import TERMINAL_STATUSES, TaskInfo

__all__ = ["DEFAULT_DB", "EXAMPLES", "add_command", "build_demo", "demo_batch", "run_demo"]

DEFAULT_DB = "sqlite:tideflow-demo.db"
ITEMS = ["mug", "poster", "t-shirt", "stickers"]
MIN_TASKS = 10
DEADLINE = 120.0  # seconds; the demo normally takes two or three


# --- the example handlers ----------------------------------------------------------------------
def resize_image(task: Task) -> dict[str, Any]:
    """A sync handler (runs in the worker's thread pool) doing a little CPU work."""
    size = int(task.payload["size"])
    digest = hashlib.sha256(f"{task.payload['image']}:{size}".encode() * 500).hexdigest()
    return {"thumbnail": f"{size // 4}x{size // 4}", "digest": digest[:12]}


async def fetch_page(task: Task) -> dict[str, Any]:
    """An async handler (runs on the worker's event loop): waits on I/O without a thread."""
    await asyncio.sleep(float(task.payload["latency"]))
    return {"url": task.payload["url"], "status": 200}


def charge_card(task: Task) -> dict[str, Any]:
    """Fails its first attempt and succeeds on the retry (``retry_count`` says which)."""
    if task.retry_count == 0:
        raise ConnectionError("payment gateway timed out (the demo fails every first attempt)")
    return {"charged": task.payload["amount"], "on_attempt": task.attempt}


def import_rows(task: Task) -> None:
    """Always fails: after ``max_retries`` attempts the task is ``permanently_failed``."""
    raise ValueError(f"{task.payload['file']}, row 42: invalid date '2024-13-01'")


def build_report(task: Task) -> dict[str, Any]:
    """Reports progress as it goes: ``task.progress()`` writes an event and a percentage."""
    steps = ("query", "aggregate", "render")
    for done, step in enumerate(steps, 1):
        time.sleep(0.005)
        task.progress(f"{step} done", stage_name=step, progress_percent=100 * done / len(steps))
    return {"report": task.payload["report"], "pages": 3}


def send_alert(task: Task) -> str:
    """Submitted last with priority 10: claimed before the bulk that was already waiting."""
    return f"alerted {task.payload['to']}"


def cleanup(task: Task) -> str:
    """Submitted with ``delay=1``: not due, so not claimed, until a second has passed."""
    return "temporary files removed"


def ship_order(task: Task) -> Any:
    """A workflow in three stages: fan out, fan in, then wait for a person's approval.

    Stage 0 spawns one ``pack_item`` child per item and is suspended until they all finish.
    Stage 1 sees their results in ``task.result`` (creation order) and suspends itself with
    ``task.suspend()`` until someone calls ``resume_task`` (the demo approves it for you).
    Stage 2 ships, reading what stage 1 kept in ``task.context``.
    """
    if task.stage == 0:
        task.progress("packing", stage_name="pack", progress_percent=0)
        items = task.payload["items"]
        return task.next([{"name": "pack_item", "payload": {"item": item}} for item in items])
    if task.stage == 1:
        boxes = [child["result"]["box"] for child in task.result]
        task.progress("waiting for approval", stage_name="approve", progress_percent=66)
        return task.suspend("awaiting_approval", context=",".join(boxes))
    boxes = (task.context or b"").decode().split(",")
    task.progress("shipped", stage_name="ship", progress_percent=100)
    return {"order": task.payload["order"], "boxes": boxes, "approved": True}


def pack_item(task: Task) -> dict[str, str]:
    """A child of ``ship_order``: its return value reaches the parent's next stage."""
    time.sleep(0.01)
    return {"item": task.payload["item"], "box": f"box-{task.payload['item']}"}


@dataclasses.dataclass(frozen=True)
class Example:
    """One kind of demo task: its handler, registration options, tag and what it shows."""

    handler: Callable[..., Any]
    shows: str
    tag: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


EXAMPLES: dict[str, Example] = {
    "resize_image": Example(resize_image, "sync handler: a little CPU work", "images"),
    "fetch_page": Example(fetch_page, "async handler: awaits asyncio.sleep()", "web"),
    "charge_card": Example(
        charge_card,
        "fails once, succeeds on its retry 0.2s later",
        "billing",
        {"max_retries": 3, "retry_interval": 0.2},
    ),
    "import_rows": Example(
        import_rows,
        "always fails: permanently_failed after 2 attempts",
        "imports",
        {"max_retries": 2, "retry_interval": 0.1},
    ),
    "build_report": Example(build_report, "reports progress with task.progress()", "reports"),
    "send_alert": Example(send_alert, "priority 10: submitted last, runs first", "alerts"),
    "cleanup": Example(cleanup, "delay=1: not run before a second has passed", "maintenance"),
    "ship_order": Example(
        ship_order,
        "workflow: fans out to children, gathers them, waits for approval",
        "orders",
    ),
    "pack_item": Example(pack_item, "a child of ship_order", "orders"),
}


def build_demo(tm: TaskManager) -> None:
    """Register every example handler on ``tm``."""
    for name, example in EXAMPLES.items():
        tm.use(name, example.handler, description=example.shows, **example.options)


def demo_batch(n: int) -> list[tuple[str, Any, dict[str, Any]]]:
    """``n`` tasks for ``submit_many``: mostly sync and async work, a few of each other example,
    alerts last."""
    special = {
        "charge_card": max(1, n // 20),
        "build_report": max(1, n // 20),
        "import_rows": 1,
        "cleanup": 1,
        "send_alert": max(1, n // 40),
        "ship_order": 1,
    }
    bulk = n - sum(special.values())
    items: list[tuple[str, Any, dict[str, Any]]] = []
    for i in range(bulk):
        if i % 2:
            payload: dict[str, Any] = {"url": f"https://example.com/page/{i}", "latency": 0.02}
            items.append(("fetch_page", payload, {"tag": "web"}))
        else:
            items.append(
                ("resize_image", {"image": f"img{i}.png", "size": 1024}, {"tag": "images"})
            )
    for i in range(special["charge_card"]):
        items.append(("charge_card", {"order": 1000 + i, "amount": 19.99}, {"tag": "billing"}))
    for i in range(special["build_report"]):
        items.append(("build_report", {"report": f"weekly-{i}"}, {"tag": "reports"}))
    items.append(("import_rows", {"file": "customers.csv"}, {"tag": "imports"}))
    items.append(("cleanup", {"dir": "/tmp/demo"}, {"tag": "maintenance", "delay": 1.0}))
    items.append(("ship_order", {"order": "A-1001", "items": ITEMS}, {"tag": "orders"}))
    for i in range(special["send_alert"]):
        items.append(("send_alert", {"to": f"oncall-{i}"}, {"tag": "alerts", "priority": 10}))
    return items


# --- the command -------------------------------------------------------------------------------
def add_command(sub: Any) -> None:
    """Register ``demo`` on the top-level subparsers."""
    p = sub.add_parser(
        "demo",
        help="run example tasks with live progress (start here)",
        description="Start a worker, submit a batch of example tasks, watch them run.",
    )
    p.add_argument("--db", default=DEFAULT_DB, metavar="URL", help=f"(default {DEFAULT_DB})")
    p.add_argument(
        "--tasks", type=int, default=200, metavar="N", help=f"batch size, >= {MIN_TASKS}"
    )
    p.add_argument(
        "--fresh",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="delete the demo database first, so runs are repeatable (default: yes)",
    )
    p.set_defaults(func=lambda args: run_demo(args.db, args.tasks, fresh=args.fresh))


def run_demo(db: str, n: int, *, fresh: bool = True, out: TextIO | None = None) -> int:
    """Run the demo on ``db`` with ``n`` tasks; returns the exit code."""
    out = out if out is not None else sys.stdout
    if n < MIN_TASKS:
        raise CliError(f"--tasks must be at least {MIN_TASKS}, got {n}")
    path = sqlite_file(db)
    if fresh and path is not None:
        _remove_demo_db(path)
    created = path is not None and not os.path.exists(path)
    check_reachable(db)
    tm = TaskManager(db, max_concurrent_tasks=8, poll_interval=0.05)
    if created and path is not None:
        with open(path + MARKER, "w", encoding="utf-8") as marker:
            marker.write("created by tideflow demo; --fresh may delete this database\n")
    try:
        build_demo(tm)
        if fresh and path is None:
            for name in EXAMPLES:
                tm.delete_tasks(name=name)
        _intro(out, db, n)
        tm.start()
        started = time.time()
        ids = tm.submit_many(demo_batch(n))
        finished = _watch(tm, out, started, len(ids))
        tm.stop(timeout=5)
        if finished is None:
            out.write(f"\nthe demo did not finish within {DEADLINE:g}s\n")
            return 1
        _summary(tm, out, db, path, min(ids), started)
    finally:
        tm.close()
    return 0


MARKER = ".tideflow-demo"  # written next to a database the demo created


def _remove_demo_db(path: str) -> None:
    """Delete a database an earlier demo run created (it left a marker file beside it)."""
    if not os.path.exists(path):
        return
    if not os.path.exists(path + MARKER) and os.path.getsize(path) > 0:
        raise CliError(
            f"{path} exists and was not created by tideflow demo: refusing to delete it"
            " (pick another --db, or pass --no-fresh to add to it)",
            code=1,
        )
    for suffix in ("", "-wal", "-shm", "-journal", MARKER):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


def _intro(out: TextIO, db: str, n: int) -> None:
    out.write(f"tideflow demo: {n} tasks on {redact(db)}, one worker with 8 slots\n")
    width = max(len(name) for name in EXAMPLES)
    tags = max(len(example.tag) for example in EXAMPLES.values()) + 2
    for name, example in EXAMPLES.items():
        tag = f"[{example.tag}]"
        out.write(f"  {name.ljust(width)}  {tag.ljust(tags)}  {example.shows}\n")
    out.write("\n")
    out.flush()


# --- live progress -----------------------------------------------------------------------------
# (label, statuses) in display order; "retrying" tasks failed an attempt and wait for the next.
_GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("completed", ("completed",)),
    ("failed", ("permanently_failed",)),
    ("running", ("running",)),
    ("retrying", ("failed", "timeout")),
    ("pending", ("pending",)),
    ("suspended", ("suspended",)),
    ("paused", ("paused",)),
]


def _counts(tm: TaskManager) -> dict[str, int]:
    # One query per status; in this order (the way tasks flow, backwards) a task that moves
    # during the sampling is missed rather than counted twice.
    statuses = [s for _, group in _GROUPS for s in group]
    return {s: tm.query_tasks(status=s, limit=0).total for s in statuses}


def _line(counts: dict[str, int], expected: int, elapsed: float, width: int, fancy: bool) -> str:
    total = max(sum(counts.values()), expected)
    done = sum(counts[s] for s in TERMINAL_STATUSES)
    filled = 20 * done // total if total else 0
    full, empty = ("█", "░") if fancy else ("#", ".")
    bar = full * filled + empty * (20 - filled)
    parts = []
    for label, group in _GROUPS:
        count = sum(counts[s] for s in group)
        if count or label == "completed":
            parts.append(f"{count} {label}")
    pct = 100 * done // total if total else 0
    text = f"[{bar}] {pct:3d}% {done}/{total} {elapsed:5.1f}s  {', '.join(parts)}"
    return text[:width]


def _watch(tm: TaskManager, out: TextIO, started: float, expected: int) -> float | None:
    """Show progress until every task is terminal; returns the time that happened (or None).

    ``expected`` is the number of tasks submitted (more may appear, e.g. workflow children).
    """
    tty = out.isatty()
    encoding = (getattr(out, "encoding", None) or "").lower().replace("-", "")
    fancy = tty and encoding == "utf8"
    width = shutil.get_terminal_size().columns - 1 if tty else 200
    last_print = 0.0
    idle_before = False
    while True:
        _approve(tm, out, tty)
        counts = _counts(tm)
        now = time.time()
        idle = all(counts[s] == 0 for s in counts if s not in TERMINAL_STATUSES)
        # a task can move between two of the per-status queries: trust "all done" twice in a row
        done, idle_before = idle and idle_before, idle
        line = _line(counts, expected, now - started, width, fancy)
        if tty:
            out.write("\r" + line + "\x1b[K")
            out.flush()
        elif done or (not idle and now - last_print >= 1.0):
            out.write(line + "\n")
            out.flush()
            last_print = now
        if done:
            if tty:
                out.write("\n")
            return now
        if now - started > DEADLINE:
            return None
        if not idle:
            time.sleep(0.1)


def _approve(tm: TaskManager, out: TextIO, tty: bool) -> None:
    """Play the person in the loop: approve every order waiting for approval."""
    for task in tm.get_tasks_by_status("suspended", suspend_reason="awaiting_approval"):
        tm.resume_task(task.id, resume_reason="approved by the demo")
        out.write(("\r\x1b[K" if tty else "") + f"approved order task {task.id} (resume_task)\n")


# --- summary -----------------------------------------------------------------------------------
def _summary(
    tm: TaskManager, out: TextIO, db: str, path: str | None, first_id: int, started: float
) -> None:
    tasks = [t for t in tm.query_tasks(limit=None).items if t.id >= first_id]
    elapsed = _finished_after(tasks, started)
    undelayed = [t for t in tasks if t.name != "cleanup"]
    busy = _finished_after(undelayed, started)
    statuses = Counter(t.status for t in tasks)
    attempts = sum(t.attempt for t in tasks)
    retried = [t for t in tasks if t.retry_count > 0]
    failed = [t for t in tasks if t.status == "permanently_failed"]

    out.write(
        f"\nDone: {len(tasks)} tasks in {elapsed:.2f}s; the {len(undelayed)} not delayed were"
        f" done after {busy:.2f}s ({len(undelayed) / busy:.0f} tasks/s)\n"
    )
    for status, count in statuses.most_common():
        out.write(f"  {status:<20}{count:>6}\n")
    out.write(f"Attempts: {attempts} in total; {len(retried)} task(s) needed more than one\n")
    recovered = [t for t in retried if t.status == "completed"]
    if recovered:
        t = recovered[0]
        out.write(f"  e.g. task {t.id} ({t.name}) failed, then completed on attempt {t.attempt}\n")
    for t in failed[:1]:
        first = (t.error or "").splitlines()[0] if t.error else "-"
        out.write(f"Permanently failed: task {t.id} ({t.name}) after {t.attempt} attempts:\n")
        out.write(f"  {first}\n")
    _priority_note(out, tasks)
    for t in tasks:
        if t.name == "cleanup" and t.start_time is not None and t.created_at is not None:
            wait = (t.start_time - t.created_at).total_seconds()
            out.write(f"Delayed: task {t.id} (cleanup, delay=1) started {wait:.2f}s after submit\n")
    for t in tasks:
        if t.name == "ship_order":
            _workflow_note(tm, out, t)
    reports = [t for t in tasks if t.name == "build_report"]
    if reports:
        t = reports[0]
        out.write(
            f"Progress: task {t.id} (build_report) reported {t.progress_percent or 0:.0f}%"
            f" at stage {t.current_stage_name!r} with task.progress()\n"
        )

    if path is None and db.startswith("sqlite:"):
        out.write(f"\nDatabase: {db} (in memory: gone now that the demo has ended)\n")
        return
    prog = command_prefix()
    show = (failed or retried or tasks)[0].id
    if path is not None:
        out.write(f"\nDatabase: {os.path.abspath(path)}\n")
        db_arg = f" --db {shlex.quote(db)}"
    else:  # a server: keep its password out of the suggested commands
        out.write(f"\nDatabase: {redact(db)}\n")
        db_arg = ""
    out.write("Explore it" + (":\n" if db_arg else " (with TIDEFLOW_DB set to that URL):\n"))
    out.write(f"  {prog} tasks list{db_arg}\n")
    out.write(f"  {prog} tasks show {show}{db_arg}\n")
    out.write(f"  {prog} dashboard{db_arg}   (pip install 'tideflow[dashboard]')\n")


def _workflow_note(tm: TaskManager, out: TextIO, order: TaskInfo) -> None:
    children = tm.get_child_tasks(order.id)
    kinds = [e.event_type for e in tm.query_task_events(order.id).items]
    out.write(
        f"Workflow: task {order.id} (ship_order) spawned {len(children)} pack_item children,"
        f" resumed {kinds.count('task_resumed')} times (children done, then approval),"
        f" ended {order.status} at stage {order.stage}: {order.result}\n"
    )


def _finished_after(tasks: list[TaskInfo], started: float) -> float:
    """Seconds from ``started`` to the last activity of ``tasks``."""
    ends = [t.last_active_time.timestamp() for t in tasks if t.last_active_time is not None]
    return max(max(ends, default=time.time()) - started, 1e-3)


def _priority_note(out: TextIO, tasks: list[TaskInfo]) -> None:
    starts = [t.start_time for t in tasks if t.start_time is not None]
    alerts = [t.start_time for t in tasks if t.name == "send_alert" and t.start_time is not None]
    if alerts:
        # tasks claimed together share a start time: count everything that started by then
        before = sum(1 for s in starts if s <= max(alerts))
        out.write(
            f"Priority: {len(alerts)} send_alert task(s) (priority 10, submitted last)"
            f" started among the first {before} of {len(starts)}\n"
        )
