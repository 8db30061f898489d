"""The application the chaos workers serve: ``tideflow worker tests.chaos.app:make_manager``.

Configured by environment variables (the test sets them for each worker process):

``TIDEFLOW_DB``
    the database (set by ``tideflow worker --db``)
``CHAOS_LOG_DIR``
    directory of the execution records, one ``<worker id>.jsonl`` file per process
``CHAOS_NAME``
    a readable name; the worker id is ``<name>-<pid>``
``CHAOS_HB_INTERVAL`` / ``CHAOS_HB_TIMEOUT``
    ``worker_heartbeat_interval`` (also ``task_heartbeat_interval``) and
    ``worker_heartbeat_timeout``, in seconds (defaults 0.3 and 2.5)
``CHAOS_CONCURRENCY`` / ``CHAOS_POLL``
    ``max_concurrent_tasks`` (default 3) and ``poll_interval`` (default 0.05)
``CHAOS_SKEW``
    seconds added to ``time.time()`` in this process (a machine whose clock is off)

The handler ``chaos`` is async: it sleeps ``payload["sleep"]`` seconds and records the execution
(task id, attempt, worker id, pid, start and end on the real clock, how it ended) as JSON lines:
a ``start`` line before it sleeps and an ``end`` line in ``finally``, so a cancelled attempt is
recorded too. A process killed with ``kill -9`` leaves only the ``start`` line. The lines are
written with one unbuffered ``os.write`` each on an ``O_APPEND`` file, so nothing waits in a
buffer when the process dies.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from tideflow import TaskManager

#: the real clock, taken before any skew patch: every record uses it, so records of all the
#: processes of this machine compare
real_time = time.time

NAME = os.environ.get("CHAOS_NAME", "chaos")
WORKER_ID = f"{NAME}-{os.getpid()}"
_fd: int | None = None


def _record(**fields: Any) -> None:
    global _fd
    if _fd is None:
        path = os.path.join(os.environ["CHAOS_LOG_DIR"], f"{WORKER_ID}.jsonl")
        _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    line = json.dumps({"worker": WORKER_ID, "pid": os.getpid(), **fields}) + "\n"
    os.write(_fd, line.encode())


async def chaos(task: Any) -> dict[str, Any]:
    payload = task.payload or {}
    _record(ev="start", task=task.id, attempt=task.attempt, t=real_time())
    how = "error"
    try:
        await asyncio.sleep(float(payload.get("sleep", 0.1)))
        how = "ok"
        return {"i": payload.get("i"), "by": WORKER_ID}
    except asyncio.CancelledError:
        how = "cancelled"
        raise
    finally:
        _record(ev="end", task=task.id, attempt=task.attempt, t=real_time(), how=how)


def _skew_clock(seconds: float) -> None:
    """Make this process's ``time.time()`` run ``seconds`` ahead (or behind, if negative).

    The worker, the store and the drivers read ``time.time`` from the module each time, so the
    patch reaches all of them; ``real_time`` above keeps the true clock for the records."""
    if seconds:
        time.time = lambda: real_time() + seconds


def make_manager() -> TaskManager:
    _skew_clock(float(os.environ.get("CHAOS_SKEW", "0") or 0))
    interval = float(os.environ.get("CHAOS_HB_INTERVAL", "0.3"))
    timeout = float(os.environ.get("CHAOS_HB_TIMEOUT", "2.5"))
    tm = TaskManager(
        os.environ["TIDEFLOW_DB"],
        worker_id=WORKER_ID,
        max_concurrent_tasks=int(os.environ.get("CHAOS_CONCURRENCY", "3")),
        poll_interval=float(os.environ.get("CHAOS_POLL", "0.05")),
        worker_heartbeat_interval=interval,
        task_heartbeat_interval=interval,
        worker_heartbeat_timeout=timeout,
        # a task's own heartbeat limit stays far above the worker's: a silent worker's tasks
        # are recovered (no attempt used), never timed out by the stall sweep
        task_heartbeat_timeout=max(30.0, 4 * timeout),
    )
    tm.use("chaos", chaos)
    return tm
