"""Turn stored rows into the public records of SPEC Appendix A.

A row that cannot be decoded (written by an older version or edited by hand: invalid JSON in
``payload``/``result``, a time outside ``datetime``'s range, a worker's capabilities that are not
a JSON list) never breaks a listing: the record comes back with that field None (an empty tuple
for a worker's lists) and ``unreadable[field]`` saying why. Sound rows take the fast path; the
field-by-field path runs only after it failed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tideflow.core import codec
from tideflow.core.types import TaskRow, WorkerRow
from tideflow.models import TaskInfo, WorkerInfo

__all__ = ["task_info", "utc", "worker_info"]

_TASK_TIMES = ("created_at", "next_run_time", "start_time", "last_active_time", "last_event_time")
_WORKER_TIMES = ("registered_at", "last_seen_at", "expires_at")
_WORKER_LISTS = ("capabilities", "handlers")


def utc(ts: float | None) -> datetime | None:
    """POSIX seconds as an aware UTC datetime (None stays None)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def task_info(row: TaskRow) -> TaskInfo:
    """The public snapshot of a task row (see the module's note on unreadable fields)."""
    try:
        decoded: dict[str, Any] = {
            "payload": codec.decode(row.payload),
            "result": codec.decode(row.result),
        }
        for name in _TASK_TIMES:
            decoded[name] = utc(getattr(row, name))
        unreadable: dict[str, str] = {}
    except Exception:
        decoded, unreadable = {}, {}
        for name in ("payload", "result"):
            decoded[name] = _salvage(name, getattr(row, name), codec.decode, unreadable)
        for name in _TASK_TIMES:
            decoded[name] = _salvage(name, getattr(row, name), _time, unreadable)
    return TaskInfo(
        id=row.id,
        name=row.name,
        type=row.type,
        status=row.status,
        priority=row.priority,
        payload=decoded["payload"],
        result=decoded["result"],
        error=row.error,
        tag=row.tag,
        stage=row.stage,
        context=row.context,
        created_at=decoded["created_at"],
        next_run_time=decoded["next_run_time"],
        start_time=decoded["start_time"],
        last_active_time=decoded["last_active_time"],
        last_event_type=row.last_event_type,
        last_event_time=decoded["last_event_time"],
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
        unreadable=unreadable,
        trace_context=row.trace_context,
    )


def worker_info(row: WorkerRow) -> WorkerInfo:
    """The public view of a worker row (see the module's note on unreadable fields)."""
    unreadable: dict[str, str] = {}
    lists = {
        name: _salvage(name, getattr(row, name), _names, unreadable) or () for name in _WORKER_LISTS
    }
    times = {name: _salvage(name, getattr(row, name), _time, unreadable) for name in _WORKER_TIMES}
    return WorkerInfo(
        worker_id=row.worker_id,
        pod_id=row.pod_id,
        host=row.host,
        pid=row.pid,
        status=row.status,
        capabilities=lists["capabilities"],
        handlers=lists["handlers"],
        concurrency=row.concurrency,
        registered_at=times["registered_at"],
        last_seen_at=times["last_seen_at"],
        expires_at=times["expires_at"],
        unreadable=unreadable,
    )


def _salvage(name: str, stored: Any, read: Callable[[Any], Any], unreadable: dict[str, str]) -> Any:
    """``read(stored)``, or None with the reason recorded under ``name``."""
    try:
        return read(stored)
    except Exception as exc:
        unreadable[name] = f"{_shown(stored)} cannot be read: {exc}"
        return None


def _time(ts: Any) -> datetime | None:
    if ts is None:
        return None
    try:
        seconds = float(ts)
        if isinstance(ts, (bool, str, bytes)) or not math.isfinite(seconds):
            raise ValueError
        return datetime.fromtimestamp(seconds, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise ValueError(
            "not a time datetime can represent (POSIX seconds within years 1 to 9999 UTC)"
        ) from None


def _names(text: Any) -> tuple[str, ...]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("not a JSON list of strings")
    return tuple(value)


def _shown(stored: Any) -> str:
    text = repr(stored)
    return text if len(text) <= 60 else text[:57] + "..."
