"""The workflow audit summary: one aggregate view of a workflow's tasks, attempts and events.

A pure function over records already read, so every backend gives the same answer. It describes
only the rows still stored (retention may have deleted older ones). Like ``to_dict()``, it gives
times as ISO 8601 strings (UTC) and durations as float seconds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from tideflow.models import TaskAttempt, TaskEvent, TaskInfo

__all__ = ["FAILED_STATUSES", "workflow_summary"]

#: snapshot statuses listed under ``failed_tasks``
FAILED_STATUSES = frozenset({"failed", "timeout", "permanently_failed", "paused"})


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _duration(a: TaskAttempt) -> float | None:
    if a.duration_seconds is not None:
        return a.duration_seconds
    if a.ended_at is None:
        return None
    return max(0.0, (a.ended_at - a.started_at).total_seconds())


def _longest_first(a: TaskAttempt) -> tuple[float, float, int]:
    d = _duration(a)
    return (-(d if d is not None else -1.0), a.started_at.timestamp(), a.id)


def _attempt_dict(a: TaskAttempt) -> dict[str, Any]:
    return {**a.to_dict(), "duration_seconds": _duration(a)}


def workflow_summary(
    root: TaskInfo | None,
    tasks: Sequence[TaskInfo],
    attempts: Sequence[TaskAttempt],
    events: Sequence[TaskEvent],
) -> dict[str, Any]:
    """Aggregate a workflow (``tasks`` includes the root) into the summary of SPEC Appendix A.

    The critical path starts at the root and, at each task, follows the child whose own path is
    longest (ties to the lowest id); a task weighs its longest attempt.
    """
    by_task: dict[int, list[TaskAttempt]] = {}
    for a in attempts:
        by_task.setdefault(a.task_id, []).append(a)
    children: dict[int, list[TaskInfo]] = {}
    for t in tasks:
        if t.parent_id is not None:
            children.setdefault(t.parent_id, []).append(t)

    last_ended = max((a.ended_at for a in attempts if a.ended_at is not None), default=None)
    created = root.created_at if root is not None else None

    def node(t: TaskInfo) -> tuple[float, dict[str, Any]]:
        own = min(by_task.get(t.id, []), key=_longest_first, default=None)
        d = _duration(own) if own is not None else None
        return (d or 0.0), {
            "task_id": t.id,
            "name": t.name,
            "status": t.status,
            "stage": t.stage,
            "attempt": own.attempt if own is not None else None,
            "outcome": own.outcome if own is not None else None,
            "duration_seconds": d,
            "started_at": _iso(own.started_at) if own is not None else None,
            "ended_at": _iso(own.ended_at) if own is not None else None,
        }

    def path(t: TaskInfo) -> tuple[float, list[dict[str, Any]]]:
        # iterative walk from the deepest tasks up: workflows may be deeper than the recursion limit
        best: dict[int, tuple[float, list[dict[str, Any]]]] = {}
        order, stack = [], [t]
        while stack:
            current = stack.pop()
            order.append(current)
            stack.extend(children.get(current.id, []))
        for current in reversed(order):
            weight, own = node(current)
            tail: tuple[float, list[dict[str, Any]]] = (0.0, [])
            for child in sorted(children.get(current.id, []), key=lambda c: c.id):
                if best[child.id][0] > tail[0] or not tail[1]:
                    tail = best[child.id]
            best[current.id] = (weight + tail[0], [own, *tail[1]])
        return best[t.id]

    total, nodes = path(root) if root is not None else (0.0, [])
    root_attempts = sorted(by_task.get(root.id, []), key=lambda a: a.attempt) if root else []
    return {
        "root_task": root.to_dict() if root is not None else None,
        "totals": {
            "tasks": len(tasks),
            "attempts": len(attempts),
            "events": len(events),
            "checkpoints": sum(1 for e in events if e.event_type == "task_checkpoint"),
            "max_attempt": max((a.attempt for a in attempts), default=0),
        },
        "statuses": dict(sorted(Counter(t.status for t in tasks).items())),
        "attempt_outcomes": dict(
            sorted(Counter(a.outcome for a in attempts if a.outcome is not None).items())
        ),
        "task_names": dict(sorted(Counter(t.name for t in tasks).items())),
        "stages": dict(sorted(Counter(t.stage for t in tasks).items())),
        "workers": sorted(
            {a.worker_id for a in attempts if a.worker_id}
            | {e.worker_id for e in events if e.worker_id}
        ),
        "timing": {
            "created_at": _iso(created),
            "first_started_at": _iso(min((a.started_at for a in attempts), default=None)),
            "last_ended_at": _iso(last_ended),
            "last_event_time": _iso(max((e.event_time for e in events), default=None)),
            "workflow_duration_seconds": (
                max(0.0, (last_ended - created).total_seconds())
                if last_ended is not None and created is not None
                else None
            ),
        },
        "stage_timings": [
            {
                "stage": a.stage,
                "attempt": a.attempt,
                "started_at": _iso(a.started_at),
                "ended_at": _iso(a.ended_at),
                "duration_seconds": _duration(a),
                "outcome": a.outcome,
                "worker_id": a.worker_id,
            }
            for a in root_attempts
        ],
        "failed_tasks": [
            {"task_id": t.id, "name": t.name, "status": t.status, "error": t.error}
            for t in sorted(tasks, key=lambda t: t.id)
            if t.status in FAILED_STATUSES
        ],
        "critical_path": {"total_duration_seconds": total, "nodes": nodes},
        "slowest_attempts": [_attempt_dict(a) for a in sorted(attempts, key=_longest_first)[:5]],
    }
