"""What crosses the store seam: task rows read back, and the writes the core plans.

The records that are built per task on the hot path are named tuples: immutable, typed, and
several times cheaper to build than frozen dataclasses (a claimed task builds about ten).

The core plans every write as a :class:`Change` (or :class:`NewTask`); the store applies it in one
transaction as a compare-and-set and reports whether it held. Times are POSIX seconds (float).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

__all__ = [
    "AttemptClose",
    "AttemptOpen",
    "Change",
    "ClaimRequest",
    "EventFilter",
    "FanIn",
    "Fence",
    "NewEvent",
    "NewTask",
    "TaskFilter",
    "TaskRow",
    "WorkerRow",
]


class TaskRow(NamedTuple):
    """One row of ``tideflow_tasks``; field names are the column names."""

    id: int
    name: str
    type: str
    status: str
    priority: int
    payload: str | None
    result: str | None
    error: str | None
    tag: str | None
    stage: int
    context: bytes | None
    created_at: float
    next_run_time: float | None
    start_time: float | None
    last_active_time: float | None
    last_event_type: str | None
    last_event_time: float | None
    heartbeat_at: float | None
    timeout: float
    max_retries: int
    retry_count: int
    retry_interval: float
    retry_backoff: str
    max_retry_interval: float
    retry_jitter: bool
    cron_expr: str | None
    tz: str | None
    parent_id: int | None
    root_id: int
    parent_stage: int | None
    total_children: int
    completed_children: int
    worker_id: str | None
    attempt: int
    requires: str | None
    unique_key: str | None
    suspend_reason: str | None
    current_stage_name: str | None
    progress_text: str | None
    progress_percent: float | None
    #: W3C trace context of the submit (JSON of the propagation headers), when instrumented
    trace_context: str | None = None
    #: the id of the running attempt's row, reserved by its claim (the row is written when the
    #: attempt closes); internal, not part of ``TaskInfo``
    attempt_id: int | None = None

    def with_values(self, values: Mapping[str, Any]) -> TaskRow:
        """Return this row with ``values`` applied, as the store wrote them."""
        fields = list(self)
        for name, value in values.items():
            fields[_FIELD_INDEX[name]] = value
        return TaskRow._make(fields)


TASK_COLUMNS: tuple[str, ...] = TaskRow._fields
_FIELD_INDEX = {name: i for i, name in enumerate(TASK_COLUMNS)}


class Fence(NamedTuple):
    """A write about a running task holds only while this worker still owns this attempt."""

    worker_id: str
    attempt: int


class NewEvent(NamedTuple):
    """An audit event to insert; the store adds the task's ids."""

    event_type: str
    from_status: str | None
    to_status: str | None
    stage: int
    worker_id: str | None
    attempt: int | None
    event_time: float
    message: str | None = None
    metadata: Mapping[str, Any] | None = None
    #: the store adds ``child_task_ids`` (known only after the insert) to the metadata
    lists_children: bool = False


class AttemptOpen(NamedTuple):
    """Open an attempt: the running task row states it until it closes (the store gives it
    the id its closed row will keep)."""

    attempt: int
    worker_id: str
    stage: int
    started_at: float


class AttemptClose(NamedTuple):
    """Close the open attempt ``attempt`` with an outcome: the store writes its one row, with
    what the running task row said of it (``worker_id``, ``stage``, ``started_at``)."""

    attempt: int
    outcome: str
    ended_at: float
    error: str | None = None
    timeout_flag: bool = False
    worker_id: str | None = None
    stage: int = 0
    started_at: float | None = None
    attempt_id: int | None = None


class NewTask(NamedTuple):
    """A task to insert with its creation events. ``root_id`` None means "its own id"."""

    values: Mapping[str, Any]
    events: tuple[NewEvent, ...]


class FanIn(NamedTuple):
    """Parent bookkeeping attached to a child's write that enters or leaves a terminal status.

    The store adds ``delta`` to the parent's ``completed_children`` only while the parent is
    suspended at ``stage`` (the round that spawned the child, so a late child of an old round
    counts nothing); when that makes ``completed_children >= total_children`` it applies
    ``resume`` in the same transaction. The counters are per round.
    """

    parent_id: int
    stage: int
    delta: int = 1
    resume: Change | None = None


class Change(NamedTuple):
    """One planned state change of one task, applied as compare-and-set.

    It holds only if the task's status is in ``from_statuses`` and, when ``fence`` is set, the
    task is owned by that worker and attempt (and, when ``stage`` is set, is at that stage).
    """

    task_id: int
    root_id: int
    parent_id: int | None
    from_statuses: frozenset[str]
    values: Mapping[str, Any]
    events: tuple[NewEvent, ...] = ()
    fence: Fence | None = None
    stage: int | None = None
    attempt_open: AttemptOpen | None = None
    attempt_close: AttemptClose | None = None
    children: tuple[NewTask, ...] = ()
    fan_in: FanIn | None = None


class SweepRequest(NamedTuple):
    """One maintenance round's reads and marks (``Store.sweep``): mark silent workers dead,
    then, unless ``fenced``, take or renew ``lease``, and if held read the orphaned and the
    stalled running tasks."""

    worker_id: str
    silent_for: float  # a worker last seen longer ago than this is dead
    lease: str
    fenced: bool
    recover: bool  # read the running tasks of workers that are not active
    stalled_after: float  # read running tasks whose heartbeat is older than this


class SweepRead(NamedTuple):
    """What ``Store.sweep`` marked and read."""

    dead: list[str]
    leader: bool
    orphaned: list[TaskRow]
    stalled: list[TaskRow]


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimRequest:
    """Claim up to ``limit`` due tasks for one worker.

    ``names`` maps each claimable task name to its remaining per-type slots (None: no per-type
    limit). ``plan`` is the core's transition for each chosen row; the store applies it.
    """

    worker_id: str
    now: float
    limit: int
    names: Mapping[str, int | None]
    capabilities: frozenset[str]
    plan: Callable[[TaskRow], Change]


@dataclasses.dataclass(frozen=True, slots=True)
class TaskFilter:
    """Filters for task queries; every given field must match."""

    ids: Sequence[int] | None = None
    name: str | None = None
    status: str | None = None
    type: str | None = None
    tag: str | None = None
    worker_id: str | None = None
    parent_id: int | None = None
    root_id: int | None = None
    suspend_reason: str | None = None
    #: any of these statuses
    statuses: Sequence[str] | None = None
    #: case-insensitive searches, lower-cased already: name starts with, tag / worker contain
    name_prefix: str | None = None
    tag_contains: str | None = None
    worker_contains: str | None = None
    #: POSIX seconds: created in [after, before); finished (completed or permanently failed,
    #: by its last activity) in [after, before)
    created_after: float | None = None
    created_before: float | None = None
    finished_after: float | None = None
    finished_before: float | None = None
    #: what to sort by (one of ``TASK_SORTS``), ties by id; rows without a value sort last
    sort: str = "id"
    limit: int | None = None
    offset: int = 0
    order: str = "asc"


#: what task queries may sort by (``TaskFilter.sort``)
TASK_SORTS = (
    "id",
    "name",
    "status",
    "priority",
    "tag",
    "worker",
    "created",
    "started",
    "finished",
    "progress",
    "duration",
)


@dataclasses.dataclass(frozen=True, slots=True)
class EventFilter:
    """Filters for event and attempt queries."""

    task_id: int | None = None
    root_id: int | None = None
    event_types: Sequence[str] | None = None
    worker_id: str | None = None
    attempt: int | None = None
    stage: int | None = None
    outcome: str | None = None
    started_after: float | None = None
    started_before: float | None = None
    ended_after: float | None = None
    ended_before: float | None = None
    open_only: bool = False
    limit: int | None = None
    offset: int = 0
    order: str = "asc"


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerRow:
    """One row of ``tideflow_workers``."""

    worker_id: str
    pod_id: str | None
    host: str
    pid: int
    status: str
    capabilities: str
    handlers: str
    concurrency: int
    registered_at: float
    last_seen_at: float
    expires_at: float
