"""Helpers for testing your handlers (issue 11, part 4).

- :func:`make_task` builds the same :class:`~tideflow.Task` a handler gets from a worker, with
  no database: ``handler(make_task({"x": 1}))`` unit-tests a handler. ``task.progress()`` and
  ``task.audit()`` are recorded (read them with :func:`recorded`), ``task.next(...)`` and
  ``task.suspend(...)`` return the objects a worker acts on (:class:`Next`, :class:`Suspend`).
- :func:`run_until_idle` runs queued work in the calling process until nothing claimable is left
  (drain mode) and returns a :class:`DrainSummary`.
- The pytest plugin (``tideflow.pytest_plugin``, loaded by pytest on its own once tideflow is
  installed) adds a ``tideflow_manager`` fixture: a :class:`~tideflow.TaskManager` on
  ``sqlite::memory:``.

A five-line test::

    def test_double(tideflow_manager):
        tideflow_manager.use("double", lambda task: task.payload * 2)
        task_id = tideflow_manager.submit("double", 21)
        assert run_until_idle(tideflow_manager)["completed"] == 1
        assert tideflow_manager.get_task(task_id).result == 42
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tideflow.core import codec, payloads
from tideflow.core.options import ManagerSettings, positive_seconds
from tideflow.core.types import Change, TaskRow
from tideflow.errors import InvalidOptionError, WaitTimeoutError
from tideflow.manager import TaskManager
from tideflow.models import TaskEvent, TaskInfo
from tideflow.worker.task import AttemptState, Next, Suspend, Task

__all__ = [
    "DrainSummary",
    "Next",
    "Suspend",
    "arun_until_idle",
    "make_task",
    "recorded",
    "run_until_idle",
]

#: statuses a worker claims from
_CLAIMABLE = ("pending", "failed", "timeout")
#: a manager's default max_payload_bytes: make_task refuses what submit would
_MAX_PAYLOAD = ManagerSettings().max_payload_bytes
#: how often run_until_idle looks at the database while work is going on
_LOOK_EVERY = 0.01


# --- make_task -----------------------------------------------------------------------------


class _Recorder:
    """The ``write`` of a task made by :func:`make_task`: keeps each event instead of storing
    it, and answers with an event id as the store would."""

    def __init__(self) -> None:
        self.events: list[TaskEvent] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # aprogress() writes from a thread

    def __call__(self, change: Change) -> int:
        with self._lock:
            event_id = next(self._ids)
            for e in change.events:
                self.events.append(
                    TaskEvent(
                        id=event_id,
                        task_id=change.task_id,
                        root_id=change.root_id,
                        parent_id=change.parent_id,
                        event_type=e.event_type,
                        from_status=e.from_status,
                        to_status=e.to_status,
                        stage=e.stage,
                        worker_id=e.worker_id,
                        attempt=e.attempt,
                        event_time=datetime.fromtimestamp(e.event_time, UTC),
                        message=e.message,
                        metadata=dict(e.metadata or {}),
                    )
                )
            return event_id


def _typed(value: Any) -> type | None:
    tp = type(value)
    try:
        payloads.check_type("payload_type", tp)
    except InvalidOptionError:
        return None
    return tp


def make_task(
    payload: Any = None,
    *,
    name: str = "task",
    id: int = 1,
    stage: int = 0,
    result: Any = None,
    context: bytes | str | None = None,
    attempt: int = 1,
    retry_count: int = 0,
    max_retries: int = 3,
    timeout: float = 60.0,
    priority: int = 0,
    tag: str | None = None,
    parent_id: int | None = None,
    root_id: int | None = None,
    worker_id: str = "test-worker",
    payload_type: type | None = None,
) -> Task:
    """A :class:`~tideflow.Task` as a worker hands it to a handler, without a database.

    The payload goes through JSON as it would in production (a payload that cannot be stored
    raises :class:`~tideflow.errors.PayloadError`). With ``payload_type`` (or a payload that is
    a dataclass or pydantic model instance) ``task.payload`` is the typed object, as for a
    handler registered with ``payload_type``. ``result`` is what the handler finds in
    ``task.result`` (at ``stage`` > 0 of a workflow: the children's outcomes, a list of
    ``{"task_id", "name", "status", "result", "error"}``). ``task.progress()`` and
    ``task.audit()`` are recorded: read them with :func:`recorded`.
    """
    if payload_type is None:
        payload_type = _typed(payload)
    else:
        payloads.check_type("payload_type", payload_type)
    what = f"the payload of {name!r}"
    data = payloads.dump(payload_type, payload, what) if payload_type is not None else payload
    now = time.time()
    if isinstance(context, str):
        context = context.encode("utf-8")
    row = TaskRow(
        id=id,
        name=name,
        type="async",
        status="running",
        priority=priority,
        payload=codec.encode(data, what, _MAX_PAYLOAD),
        result=None,
        error=None,
        tag=tag,
        stage=stage,
        context=context,
        created_at=now,
        next_run_time=now,
        start_time=now,
        last_active_time=now,
        last_event_type="task_started",
        last_event_time=now,
        heartbeat_at=now,
        timeout=float(timeout),
        max_retries=max_retries,
        retry_count=retry_count,
        retry_interval=0.0,
        retry_backoff="fixed",
        max_retry_interval=3600.0,
        retry_jitter=True,
        cron_expr=None,
        tz=None,
        parent_id=parent_id,
        root_id=root_id if root_id is not None else (parent_id if parent_id is not None else id),
        parent_stage=None,
        total_children=0,
        completed_children=0,
        worker_id=worker_id,
        attempt=attempt,
        requires=None,
        unique_key=None,
        suspend_reason=None,
        current_stage_name=None,
        progress_text=None,
        progress_percent=None,
    )
    task = Task(
        row,
        result=result,
        state=AttemptState(time.monotonic() + float(timeout)),
        write=_Recorder(),
    )
    if payload_type is not None:
        task.payload = payloads.load(payload_type, task.payload, what)
    return task


def recorded(task: Task) -> list[TaskEvent]:
    """The events ``task`` (made by :func:`make_task`) recorded so far, oldest first:
    ``task_progress`` and ``task_checkpoint`` events with their ``message`` and ``metadata``,
    as :meth:`~tideflow.TaskManager.query_task_events` would return them."""
    recorder = task._write
    if not isinstance(recorder, _Recorder):
        raise InvalidOptionError(
            f"recorded() reads the events of a task made by make_task(); {task!r} was handed"
            " out by a worker, whose events are in the database: use tm.query_task_events(id)"
        )
    with recorder._lock:
        return list(recorder.events)


# --- run_until_idle ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DrainSummary:
    """What :func:`run_until_idle` did: the tasks it ran or created, counted by the status they
    are in now (``summary["completed"]``; 0 for a status none is in), and how many tasks are
    left waiting for a later time (``delayed``: a ``delay``, ``run_at``, a retry interval or a
    cron schedule), which it does not wait for."""

    counts: Mapping[str, int]
    task_ids: tuple[int, ...]
    delayed: int

    def __getitem__(self, status: str) -> int:
        return self.counts.get(status, 0)

    @property
    def total(self) -> int:
        """How many tasks ran or were created."""
        return len(self.task_ids)


def _all_tasks(tm: TaskManager) -> list[TaskInfo]:
    return list(tm.query_tasks().items)


def _key(info: TaskInfo) -> tuple[Any, ...]:
    return (info.status, info.attempt, info.stage, info.last_event_time)


def _look(tm: TaskManager) -> tuple[list[int], list[int], int]:
    """(running here, due and claimable here, delayed) task ids."""
    running = [t.id for t in tm.query_tasks(status="running", worker_id=tm.worker_id).items]
    capabilities = set(tm.settings.capabilities)
    now = datetime.now(UTC)
    due: list[int] = []
    delayed = 0
    for status in _CLAIMABLE:
        for t in tm.query_tasks(status=status).items:
            if tm.get_task_info(t.name) is None or not set(t.requires) <= capabilities:
                continue  # never claimed here: no handler, or capabilities this worker lacks
            if t.next_run_time is None or t.next_run_time <= now:
                due.append(t.id)
            else:
                delayed += 1
    return running, due, delayed


def run_until_idle(tm: TaskManager, timeout: float = 10.0) -> DrainSummary:
    """Run ``tm``'s queued work in this process until nothing it can claim is left, then
    return a :class:`DrainSummary`.

    Drain mode: it starts ``tm``'s worker if needed and lets it claim until no task with a
    handler here is running or due, children spawned on the way, fan-in resumes and retries
    that are due included; tasks due later (a ``delay``, a retry interval, the next cron tick)
    are left and counted in ``delayed``. It then pauses ``tm`` (nothing more is claimed until
    the next call, or ``tm.resume()``). Raises :class:`~tideflow.errors.WaitTimeoutError`
    naming the tasks still running or due after ``timeout`` seconds.
    """
    limit = positive_seconds("timeout", timeout)
    if not isinstance(tm, TaskManager):
        raise InvalidOptionError(f"run_until_idle() needs a TaskManager, got {tm!r}")
    before = {t.id: _key(t) for t in _all_tasks(tm)}
    deadline = time.monotonic() + limit
    tm.start()
    tm.resume()
    while True:
        running, due, delayed = _look(tm)
        if not running and not due:
            tm.pause()  # returns once no claim of the worker is on its way
            running, due, delayed = _look(tm)
            if not running and not due:
                break
            tm.resume()
        if time.monotonic() >= deadline:
            tm.pause()
            raise WaitTimeoutError(
                f"run_until_idle() gave up after {limit:g} s with task(s)"
                f" {', '.join(map(str, sorted(running + due)))} still running or due: a handler"
                " may be stuck or keep creating work; pass a larger timeout=, or look at"
                " tm.get_task(id)"
            )
        tm.resume()  # wakes the claim loop: work that became due is claimed at once
        time.sleep(_LOOK_EVERY)
    touched = [t for t in _all_tasks(tm) if before.get(t.id) != _key(t)]
    counts: dict[str, int] = {}
    for t in touched:
        counts[t.status] = counts.get(t.status, 0) + 1
    return DrainSummary(
        counts=dict(sorted(counts.items())),
        task_ids=tuple(t.id for t in touched),
        delayed=delayed,
    )


async def arun_until_idle(tm: TaskManager, timeout: float = 10.0) -> DrainSummary:
    """:func:`run_until_idle` for async tests: runs it in a thread, so the event loop goes on."""
    return await asyncio.to_thread(run_until_idle, tm, timeout)
