"""Turn stored rows into the public records of SPEC Appendix A."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from tideflow.core import codec
from tideflow.core.types import TaskRow, WorkerRow
from tideflow.models import TaskInfo, WorkerInfo

__all__ = ["task_info", "utc", "worker_info"]


def utc(ts: float | None) -> datetime | None:
    """POSIX seconds as an aware UTC datetime (None stays None)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def task_info(row: TaskRow) -> TaskInfo:
    """The public snapshot of a task row."""
    return TaskInfo(
        id=row.id,
        name=row.name,
        type=row.type,
        status=row.status,
        priority=row.priority,
        payload=codec.decode(row.payload),
        result=codec.decode(row.result),
        error=row.error,
        tag=row.tag,
        stage=row.stage,
        context=row.context,
        created_at=datetime.fromtimestamp(row.created_at, UTC),
        next_run_time=utc(row.next_run_time),
        start_time=utc(row.start_time),
        last_active_time=utc(row.last_active_time),
        last_event_type=row.last_event_type,
        last_event_time=utc(row.last_event_time),
        timeout=row.timeout,
        max_retries=row.max_retries,
        retry_count=row.retry_count,
        retry_interval=row.retry_interval,
        retry_backoff=row.retry_backoff,
        cron_expr=row.cron_expr,
        tz=row.tz,
        parent_id=row.parent_id,
        root_id=row.root_id,
        total_children=row.total_children,
        completed_children=row.completed_children,
        worker_id=row.worker_id,
        attempt=row.attempt,
        requires=tuple(row.requires.split(",")) if row.requires else (),
        unique_key=row.unique_key,
        suspend_reason=row.suspend_reason,
        current_stage_name=row.current_stage_name,
        progress_text=row.progress_text,
        progress_percent=row.progress_percent,
    )


def worker_info(row: WorkerRow) -> WorkerInfo:
    """The public view of a worker row."""
    return WorkerInfo(
        worker_id=row.worker_id,
        pod_id=row.pod_id,
        host=row.host,
        pid=row.pid,
        status=row.status,
        capabilities=tuple(json.loads(row.capabilities)),
        handlers=tuple(json.loads(row.handlers)),
        concurrency=row.concurrency,
        registered_at=datetime.fromtimestamp(row.registered_at, UTC),
        last_seen_at=datetime.fromtimestamp(row.last_seen_at, UTC),
        expires_at=datetime.fromtimestamp(row.expires_at, UTC),
    )
