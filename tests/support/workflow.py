"""Small read helpers for workflow and human-in-the-loop tests (events, attempts, snapshots)."""

from __future__ import annotations

from typing import Any


def events(tm: Any, task_id: int, event_type: str | None = None) -> list[Any]:
    """The task's events in order, optionally only one type."""
    items = list(tm.query_task_events(task_id).items)
    if event_type is not None:
        items = [e for e in items if e.event_type == event_type]
    return items


def event_types(tm: Any, task_id: int) -> list[str]:
    """The types of the task's events in order."""
    return [e.event_type for e in tm.query_task_events(task_id).items]


def attempts(tm: Any, task_id: int) -> list[Any]:
    """The task's attempt rows by attempt number."""
    return sorted(tm.query_task_attempts(task_id).items, key=lambda a: a.attempt)


def outcomes(tm: Any, task_id: int) -> list[str | None]:
    """The outcome of each attempt of the task, in order (None while one is open)."""
    return [a.outcome for a in attempts(tm, task_id)]


def meta(event: Any) -> dict[str, Any]:
    """An event's metadata as a dict (never None)."""
    return dict(event.metadata or {})


def snapshot(tm: Any, task_id: int) -> tuple[Any, int, int]:
    """Everything a control call could change: the task row, its event and attempt counts."""
    return (
        tm.get_task(task_id),
        tm.query_task_events(task_id).total,
        tm.query_task_attempts(task_id).total,
    )


#: the events of a task recovered from its first worker and completed by another
RECOVERED_THEN_COMPLETED = [
    "task_created",
    "task_claimed",
    "task_started",
    "task_recovered",
    "task_claimed",
    "task_started",
    "task_completed",
]
