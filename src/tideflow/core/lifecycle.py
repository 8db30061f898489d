"""Plan each state change of a task as a :class:`Change` the store applies.

Every function takes the task row as read, the facts of the event and ``now``, asks
:mod:`tideflow.core.states` for the transition and returns the write: new column values, audit
events in order, the attempt row to open or close, the fence, and parent bookkeeping.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from tideflow.core import retry
from tideflow.core.options import TaskPolicy
from tideflow.core.states import NEW, Facts, Transition, Trigger, transition
from tideflow.core.types import (
    AttemptClose,
    AttemptOpen,
    Change,
    FanIn,
    Fence,
    NewEvent,
    NewTask,
    TaskRow,
)
from tideflow.models import TERMINAL_STATUSES, Status

__all__ = [
    "AWAITING_SUBTASKS",
    "NoRetry",
    "after_failure",
    "annotate",
    "cancel",
    "claim",
    "complete",
    "fail",
    "new_task",
    "pause",
    "recover",
    "resume",
    "retry_task",
    "spawn",
    "suspend",
]

AWAITING_SUBTASKS = "awaiting_subtasks"
NO_FACTS = Facts()
RUNNING = Status.RUNNING.value


def _events(
    t: Transition,
    row: TaskRow,
    now: float,
    *,
    worker_id: str | None,
    attempt: int | None,
    stage: int | None = None,
    message: str | None = None,
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[NewEvent, ...]:
    # positional and without a comprehension: this runs for every event of every task, and
    # both keyword construction of a named tuple and a comprehension's frame cost more
    from_status = row.status if row.status != NEW else None
    at_stage = row.stage if stage is None else stage
    meta = metadata or {}
    out = []
    for name in t.events:
        out.append(
            NewEvent(
                name,
                from_status,
                t.target,
                at_stage,
                worker_id,
                attempt,
                now,
                message,
                meta.get(name),
            )
        )
    return tuple(out)


def _touch(t: Transition, now: float, **values: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "status": t.target,
        "last_active_time": now,
        "last_event_type": t.events[-1],
        "last_event_time": now,
    }
    if t.target != RUNNING:
        out["heartbeat_at"] = None
    out.update(values)
    return out


def _fence(row: TaskRow) -> Fence | None:
    if row.status != RUNNING or row.worker_id is None:
        return None
    return Fence(row.worker_id, row.attempt)


def _close(
    t: Transition, row: TaskRow, now: float, error: str | None = None
) -> AttemptClose | None:
    if t.attempt is None or t.attempt == "open" or row.status != RUNNING:
        return None
    return AttemptClose(
        attempt=row.attempt,
        outcome=t.attempt,
        ended_at=now,
        error=error,
        timeout_flag=t.attempt == "timeout",
        worker_id=row.worker_id,
        stage=row.stage,
        started_at=row.start_time,
        attempt_id=row.attempt_id,
    )


def _fan_in(row: TaskRow, target: str, now: float) -> FanIn | None:
    """When a child turns terminal, count it on its parent and maybe resume the parent."""
    if row.parent_id is None or target not in TERMINAL_STATUSES or row.parent_stage is None:
        return None
    parent_stage = row.parent_stage
    t = transition(Trigger.CHILDREN_DONE, Status.SUSPENDED.value, Facts(awaiting_children=True))
    event = NewEvent(
        event_type=t.events[0],
        from_status=Status.SUSPENDED.value,
        to_status=t.target,
        stage=parent_stage + 1,
        worker_id=None,
        attempt=None,
        event_time=now,
        metadata={"resume_reason": "children_completed"},
    )
    resume = Change(
        task_id=row.parent_id,
        root_id=row.root_id,
        parent_id=None,
        from_statuses=t.sources,
        stage=parent_stage,
        values=_touch(t, now, stage=parent_stage + 1, next_run_time=now, suspend_reason=None),
        events=(event,),
    )
    return FanIn(parent_id=row.parent_id, stage=parent_stage, resume=resume)


def new_task(
    *,
    name: str,
    type: str,
    payload: str | None,
    policy: TaskPolicy,
    next_run_time: float,
    now: float,
    tag: str | None = None,
    requires: Sequence[str] = (),
    unique_key: str | None = None,
    cron_expr: str | None = None,
    tz: str | None = None,
    parent: TaskRow | None = None,
    trace_context: str | None = None,
) -> NewTask:
    """Plan the insert of a new task and its ``task_created`` event."""
    t = transition(Trigger.CREATE, NEW)
    values: dict[str, Any] = {
        "name": name,
        "type": type,
        "status": t.target,
        "priority": policy.priority,
        "payload": payload,
        "result": None,
        "error": None,
        "tag": tag,
        "stage": 0,
        "context": None,
        "created_at": now,
        "next_run_time": next_run_time,
        "start_time": None,
        "last_active_time": now,
        "last_event_type": t.events[-1],
        "last_event_time": now,
        "heartbeat_at": None,
        "timeout": policy.timeout,
        "max_retries": policy.max_retries,
        "retry_count": 0,
        "retry_interval": policy.retry_interval,
        "retry_backoff": policy.retry_backoff,
        "max_retry_interval": policy.max_retry_interval,
        "retry_jitter": policy.retry_jitter,
        "cron_expr": cron_expr,
        "tz": tz,
        "parent_id": parent.id if parent else None,
        "root_id": parent.root_id if parent else None,
        "parent_stage": parent.stage if parent else None,
        "total_children": 0,
        "completed_children": 0,
        "worker_id": None,
        "attempt": 0,
        "requires": ",".join(requires) if requires else None,
        "unique_key": unique_key,
        "suspend_reason": None,
        "current_stage_name": None,
        "progress_text": None,
        "progress_percent": None,
        "trace_context": trace_context,
    }
    event = NewEvent(
        event_type=t.events[0],
        from_status=None,
        to_status=t.target,
        stage=0,
        worker_id=None,
        attempt=None,
        event_time=now,
        metadata={"next_run_time": next_run_time},
    )
    return NewTask(values=values, events=(event,))


_FRESH = Facts(after_failure=False)
_AFTER_FAILURE = Facts(after_failure=True)
_RESUMED = "task_resumed"
PENDING = Status.PENDING.value


def after_failure(row: TaskRow) -> bool:
    """Whether a ``pending`` row's previous round failed or timed out (the claim's fact).

    Only ``retry_task`` and ``resume_task`` of a paused task put a task whose last round
    failed back to ``pending``; both reset ``retry_count`` to 0 and write ``task_resumed``, and
    the failure's ``error`` stays until the task completes. So: a task that has run, whose last
    event is a resume, with no retries counted and an error kept. (A ``failed``/``timeout`` row
    says it by its status.) Read from the row alone: the claim plan runs for every claimed task.
    It can err one way: after such a reset, a round that ended suspended (or paused while
    running) and was resumed by hand, with the old error still kept, counts as a retry. The
    exact answer needs the last attempt's outcome on the task row (a schema change).
    """
    return (
        row.last_event_type == _RESUMED
        and row.error is not None
        and row.retry_count == 0
        and row.attempt > 0
    )


def claim(worker_id: str, when: float) -> Callable[[TaskRow], Change]:
    """The plan for each row a worker claims at about ``when``.

    The store judges what is due with the database's clock, in the claim statement, which runs
    after ``when`` was read: a row that became due in between starts at its due time, so no
    task ever looks started before it was due."""

    def plan(row: TaskRow) -> Change:
        due = row.next_run_time
        now = when if due is None or due <= when else due
        facts = _AFTER_FAILURE if row.status != PENDING or after_failure(row) else _FRESH
        t = transition(Trigger.CLAIM, row.status, facts)
        attempt = row.attempt + 1
        return Change(
            task_id=row.id,
            root_id=row.root_id,
            parent_id=row.parent_id,
            from_statuses=t.sources,
            values=_touch(
                t,
                now,
                worker_id=worker_id,
                attempt=attempt,
                start_time=now,
                heartbeat_at=now,
            ),
            events=_events(
                t,
                row,
                now,
                worker_id=worker_id,
                attempt=attempt,
                metadata={"task_retry_started": {"retry_count": row.retry_count}},
            ),
            attempt_open=AttemptOpen(attempt, worker_id, row.stage, now),
        )

    return plan


def complete(
    row: TaskRow,
    result: str | None,
    now: float,
    next_tick: Callable[[str, str, float], float],
) -> Change:
    """The handler returned ``result`` (already JSON)."""
    t = transition(Trigger.SUCCEED, row.status, Facts(is_cron=row.type == "cron"))
    values = _touch(t, now, result=result, error=None)
    if row.type == "cron" and row.cron_expr is not None:
        after = max(now, row.next_run_time or now)
        values.update(
            next_run_time=next_tick(row.cron_expr, row.tz or "UTC", after),
            retry_count=0,
            stage=0,
        )
    return Change(
        task_id=row.id,
        root_id=row.root_id,
        parent_id=row.parent_id,
        from_statuses=t.sources,
        fence=_fence(row),
        values=values,
        events=_events(t, row, now, worker_id=row.worker_id, attempt=row.attempt),
        attempt_close=_close(t, row, now),
        fan_in=_fan_in(row, t.target, now),
    )


class NoRetry(NamedTuple):
    """Why a failure is not retried: the exception's full class path and the rule that said
    so (``"PermanentError"``, ``"no_retry_on"`` or ``"retry_on"``)."""

    exception: str
    rule: str


def fail(
    row: TaskRow,
    error: str,
    now: float,
    rng: random.Random,
    *,
    timed_out: bool = False,
    timeout_type: str = "total",
    no_retry: NoRetry | None = None,
) -> Change:
    """The attempt raised ``error`` or (``timed_out``) ran past its limit.

    ``no_retry`` (a failure only): the exception must not be retried, so the task fails at
    once whatever attempts it has left; the final event's metadata says why
    (``{"reason": "no_retry", "exception", "rule"}``).
    """
    attempts_left = row.retry_count + 1 < max(row.max_retries, 1)
    t = transition(
        Trigger.TIME_OUT if timed_out else Trigger.FAIL,
        row.status,
        Facts(
            is_cron=row.type == "cron",
            attempts_left=attempts_left,
            no_retry=no_retry is not None and not timed_out,
        ),
    )
    values = _touch(t, now, error=error)
    meta: dict[str, dict[str, Any]] = {
        "task_failed": {"error": error.split("\n", 1)[0]},
        "task_timed_out": {"timeout_type": timeout_type, "error": error.split("\n", 1)[0]},
    }
    if no_retry is not None and not timed_out:
        why = {"reason": "no_retry", "exception": no_retry.exception, "rule": no_retry.rule}
        meta["task_permanently_failed"] = meta["task_paused"] = why
    if "task_retry_scheduled" in t.events:
        retry_count = row.retry_count + 1
        delay = retry.retry_delay(
            retry_count,
            row.retry_interval,
            row.retry_backoff,
            row.max_retry_interval,
            row.retry_jitter,
            rng,
        )
        values.update(retry_count=retry_count, next_run_time=now + delay)
        meta["task_retry_scheduled"] = {"retry_count": retry_count, "next_run_time": now + delay}
    return Change(
        task_id=row.id,
        root_id=row.root_id,
        parent_id=row.parent_id,
        from_statuses=t.sources,
        fence=_fence(row),
        values=values,
        events=_events(t, row, now, worker_id=row.worker_id, attempt=row.attempt, metadata=meta),
        attempt_close=_close(t, row, now, error),
        fan_in=_fan_in(row, t.target, now),
    )


def spawn(row: TaskRow, children: Sequence[NewTask], context: bytes | None, now: float) -> Change:
    """The handler returned ``next(children)``: suspend and insert the children."""
    t = transition(Trigger.SPAWN, row.status)
    meta: dict[str, Mapping[str, Any]] = {
        "task_subtasks_created": {"child_count": len(children)},
        "task_suspended": {"suspend_reason": AWAITING_SUBTASKS},
    }
    values = _touch(
        t,
        now,
        suspend_reason=AWAITING_SUBTASKS,
        total_children=len(children),
        completed_children=0,
    )
    if context is not None:
        values["context"] = context
    return Change(
        task_id=row.id,
        root_id=row.root_id,
        parent_id=row.parent_id,
        from_statuses=t.sources,
        fence=_fence(row),
        values=values,
        events=tuple(
            e._replace(lists_children=True) if e.event_type == t.events[0] else e
            for e in _events(
                t, row, now, worker_id=row.worker_id, attempt=row.attempt, metadata=meta
            )
        ),
        attempt_close=_close(t, row, now),
        children=tuple(children),
    )


def suspend(row: TaskRow, reason: str, context: bytes | None, now: float) -> Change:
    """The handler returned ``task.suspend(reason)``: wait for a person."""
    t = transition(Trigger.SUSPEND, row.status)
    values = _touch(t, now, suspend_reason=reason)
    if context is not None:
        values["context"] = context
    return Change(
        task_id=row.id,
        root_id=row.root_id,
        parent_id=row.parent_id,
        from_statuses=t.sources,
        fence=_fence(row),
        values=values,
        events=_events(
            t,
            row,
            now,
            worker_id=row.worker_id,
            attempt=row.attempt,
            message=reason,
            metadata={"task_suspended": {"suspend_reason": reason}},
        ),
        attempt_close=_close(t, row, now),
    )


def recover(row: TaskRow, now: float, by_worker: str, message: str | None = None) -> Change:
    """Give a running task back (its worker stopped, died or was superseded)."""
    t = transition(Trigger.RECOVER, row.status)
    return Change(
        task_id=row.id,
        root_id=row.root_id,
        parent_id=row.parent_id,
        from_statuses=t.sources,
        fence=_fence(row),
        values=_touch(t, now, next_run_time=now),
        events=_events(
            t,
            row,
            now,
            worker_id=row.worker_id,
            attempt=row.attempt,
            message=message,
            metadata={
                "task_recovered": {
                    "recovered_from_worker_id": row.worker_id,
                    "recovered_by_worker_id": by_worker,
                }
            },
        ),
        attempt_close=_close(t, row, now),
    )


def _control(
    trigger: Trigger,
    row: TaskRow,
    now: float,
    facts: Facts = NO_FACTS,
    *,
    message: str | None = None,
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
    attempt_error: str | None = None,
    **values: Any,
) -> Change:
    t = transition(trigger, row.status, facts)
    running = row.status == RUNNING
    return Change(
        task_id=row.id,
        root_id=row.root_id,
        parent_id=row.parent_id,
        from_statuses=frozenset({row.status}),
        fence=_fence(row),
        values=_touch(t, now, **values),
        events=_events(
            t,
            row,
            now,
            worker_id=row.worker_id if running else None,
            attempt=row.attempt if running else None,
            stage=values.get("stage"),
            message=message,
            metadata=metadata,
        ),
        attempt_close=_close(t, row, now, attempt_error),
        fan_in=_fan_in(row, t.target, now),
    )


def cancel(row: TaskRow, reason: str | None, now: float) -> Change:
    """``cancel_task``: the task ends ``permanently_failed`` with the reason as its error."""
    error = reason or "cancelled"
    return _control(Trigger.CANCEL, row, now, message=reason, attempt_error=error, error=error)


def pause(row: TaskRow, now: float) -> Change:
    """``pause_task``: stop the task or cron schedule until ``resume_task``."""
    return _control(Trigger.PAUSE, row, now)


def resume(row: TaskRow, reason: str | None, now: float) -> Change:
    """``resume_task`` of a paused task or an explicit suspension."""
    awaiting = row.status == Status.SUSPENDED.value and row.completed_children < row.total_children
    facts = Facts(awaiting_children=awaiting)
    if row.status == Status.SUSPENDED.value:
        return _control(
            Trigger.RESUME,
            row,
            now,
            facts,
            message=reason,
            metadata={"task_resumed": {"resume_reason": reason or "manual"}},
            stage=row.stage + 1,
            suspend_reason=None,
            next_run_time=now,
        )
    return _control(
        Trigger.RESUME,
        row,
        now,
        facts,
        message=reason,
        metadata={"task_resumed": {"resume_reason": reason or "manual"}},
        retry_count=0,
        next_run_time=now if row.type != "cron" else max(now, row.next_run_time or now),
    )


def retry_task(row: TaskRow, now: float) -> Change:
    """``retry_task``: a permanently failed task gets a fresh set of attempts.

    A retried child leaves the terminal statuses, so it is uncounted on its parent's round.
    """
    change = _control(
        Trigger.RETRY,
        row,
        now,
        metadata={"task_resumed": {"resume_reason": "retry"}},
        retry_count=0,
        next_run_time=now,
    )
    if row.parent_id is not None and row.parent_stage is not None:
        change = change._replace(
            fan_in=FanIn(parent_id=row.parent_id, stage=row.parent_stage, delta=-1)
        )
    return change


def annotate(
    row: TaskRow,
    now: float,
    event_type: str,
    *,
    message: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    values: Mapping[str, Any] | None = None,
) -> Change:
    """A progress or checkpoint event written during an attempt; the status does not change.

    It refreshes the task heartbeat and holds only while the attempt still owns the task.
    """
    event = NewEvent(
        event_type=event_type,
        from_status=row.status,
        to_status=row.status,
        stage=row.stage,
        worker_id=row.worker_id,
        attempt=row.attempt,
        event_time=now,
        message=message,
        metadata=metadata,
    )
    return Change(
        task_id=row.id,
        root_id=row.root_id,
        parent_id=row.parent_id,
        from_statuses=frozenset({RUNNING}),
        fence=_fence(row),
        values={
            **(values or {}),
            "heartbeat_at": now,
            "last_active_time": now,
            "last_event_type": event_type,
            "last_event_time": now,
        },
        events=(event,),
    )
