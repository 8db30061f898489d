"""Public data shapes: task statuses and the immutable result records of SPEC Appendix A."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

from tideflow.errors import InvalidStatusError

__all__ = [
    "TERMINAL_STATUSES",
    "WORKER_STATUSES",
    "HandlerInfo",
    "Page",
    "Status",
    "TaskAttempt",
    "TaskAudit",
    "TaskEvent",
    "TaskInfo",
    "WorkerInfo",
    "WorkflowAudit",
    "parse_status",
]


class Status(enum.StrEnum):
    """The status of a task (SPEC §5)."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    PERMANENTLY_FAILED = "permanently_failed"
    PAUSED = "paused"
    SUSPENDED = "suspended"

    def __str__(self) -> str:
        return self.value


TERMINAL_STATUSES = frozenset({Status.COMPLETED.value, Status.PERMANENTLY_FAILED.value})
_STATUS_VALUES = tuple(s.value for s in Status)

#: a worker's liveness (SPEC §8): ``superseded`` and ``dead`` workers claim nothing
WORKER_STATUSES = ("active", "superseded", "dead", "stopped")


def parse_status(value: str | Status) -> str:
    """Return the status name for ``value`` or raise :class:`InvalidStatusError`."""
    text = value.value if isinstance(value, Status) else value
    if text not in _STATUS_VALUES:
        raise InvalidStatusError(
            f"unknown task status {value!r}; allowed: {', '.join(_STATUS_VALUES)}"
        )
    return text


class _Record:
    """Mixin giving the frozen dataclasses a ``to_dict()``."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            out[field.name] = _plain(getattr(self, field.name))
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class TaskInfo(_Record):
    """A snapshot of one task row.

    ``unreadable`` names each field whose stored value could not be decoded (a row written by
    an older version or edited by hand: invalid JSON, a time outside ``datetime``'s range) with
    the reason; such a field is None. It is empty for a sound row.
    """

    id: int
    name: str
    type: str
    status: str
    priority: int
    payload: Any
    result: Any
    error: str | None
    tag: str | None
    stage: int
    context: bytes | None
    created_at: datetime | None
    next_run_time: datetime | None
    start_time: datetime | None
    last_active_time: datetime | None
    last_event_type: str | None
    last_event_time: datetime | None
    timeout: float
    max_retries: int
    retry_count: int
    retry_interval: float
    retry_backoff: str
    cron_expr: str | None
    tz: str | None
    parent_id: int | None
    root_id: int
    total_children: int
    completed_children: int
    worker_id: str | None
    attempt: int
    requires: tuple[str, ...]
    unique_key: str | None
    suspend_reason: str | None
    current_stage_name: str | None
    progress_text: str | None
    progress_percent: float | None
    unreadable: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: the W3C trace context stored at submit (JSON of ``traceparent``/``tracestate``) when
    #: tracing was on (:mod:`tideflow.otel`), else None; not part of equality
    trace_context: str | None = dataclasses.field(default=None, compare=False)


@dataclasses.dataclass(frozen=True, slots=True)
class TaskEvent(_Record):
    """One audit event of a task."""

    id: int
    task_id: int
    root_id: int
    parent_id: int | None
    event_type: str
    from_status: str | None
    to_status: str | None
    stage: int
    worker_id: str | None
    attempt: int | None
    event_time: datetime
    message: str | None
    metadata: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class TaskAttempt(_Record):
    """One execution round of a task."""

    id: int
    task_id: int
    attempt: int
    worker_id: str
    stage: int
    started_at: datetime
    ended_at: datetime | None
    outcome: str | None
    error: str | None
    timeout_flag: bool
    duration_seconds: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerInfo(_Record):
    """A registered worker and its liveness.

    ``unreadable`` names each field whose stored value could not be decoded, with the reason;
    such a time is None and such a list is empty. It is empty for a sound row.
    """

    worker_id: str
    pod_id: str | None
    host: str
    pid: int
    status: str
    capabilities: tuple[str, ...]
    handlers: tuple[str, ...]
    concurrency: int
    registered_at: datetime | None
    last_seen_at: datetime | None
    expires_at: datetime | None
    unreadable: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class HandlerInfo(_Record):
    """What ``get_task_info`` says about a registered handler."""

    name: str
    description: str
    options: dict[str, Any]


T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class Page(_Record, Generic[T]):
    """One page of query results."""

    items: Sequence[T]
    total: int
    limit: int | None
    offset: int
    has_more: bool


@dataclasses.dataclass(frozen=True, slots=True)
class TaskAudit(_Record):
    """A task with its events and attempts."""

    task: TaskInfo | None
    events: Page[TaskEvent]
    attempts: Page[TaskAttempt]


@dataclasses.dataclass(frozen=True, slots=True)
class WorkflowAudit(_Record):
    """A workflow root with its tasks and events."""

    root_task: TaskInfo | None
    tasks: Page[TaskInfo]
    events: Page[TaskEvent]
