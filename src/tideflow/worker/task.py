"""The object handed to handlers: the task's data and what a handler can do during an attempt."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from tideflow.core import codec, lifecycle
from tideflow.core.types import Change, TaskRow
from tideflow.errors import OwnershipLostError, TaskTimeoutError
from tideflow.worker import observe

__all__ = ["AttemptState", "Next", "Suspend", "Task"]


@dataclasses.dataclass(frozen=True, slots=True)
class Next:
    """Returned by a handler to spawn children and wait for them."""

    children: Any
    context: bytes | None = None
    #: the spawning attempt's trace context, stored with each child (when instrumented)
    trace_context: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Suspend:
    """Returned by a handler to wait for an outside decision (``resume_task``)."""

    reason: str
    context: bytes | None = None


class AttemptState:
    """Flags one attempt shares between its handler and the worker (plain attributes: each is
    only ever switched on, and reading a bool is atomic)."""

    __slots__ = ("deadline", "lost", "timed_out")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline  # time.monotonic() value
        self.timed_out = False
        self.lost = False


def _context(value: bytes | bytearray | memoryview | str | None) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"context must be bytes (or str, stored as UTF-8), got {type(value).__name__}")


class Task:
    """One task as seen by its handler during one attempt."""

    __slots__ = (
        "_clock",
        "_enqueue",
        "_row",
        "_state",
        "_write",
        "attempt",
        "context",
        "id",
        "max_retries",
        "name",
        "parent_id",
        "payload",
        "priority",
        "result",
        "retry_count",
        "root_id",
        "stage",
        "status",
        "tag",
        "timeout",
        "worker_id",
    )

    def __init__(
        self,
        row: TaskRow,
        *,
        result: Any,
        state: AttemptState,
        write: Callable[[Change], int | None],
        enqueue: Callable[[Change], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._row = row
        self._state = state
        self._write = write
        self._enqueue = enqueue
        self._clock = clock  # the worker's: the database's clock
        self.id = row.id
        self.name = row.name
        self.payload: Any = codec.decode(row.payload)
        self.status = row.status
        self.stage = row.stage
        self.parent_id = row.parent_id
        self.root_id = row.root_id
        self.tag = row.tag
        self.priority = row.priority
        self.retry_count = row.retry_count
        self.max_retries = row.max_retries
        self.timeout = row.timeout
        self.context = row.context
        self.result: Any = result
        self.worker_id = row.worker_id
        self.attempt = row.attempt

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.name!r} stage={self.stage} attempt={self.attempt}>"

    def next(self, children: Any, context: bytes | str | None = None) -> Next:
        """Return this from the handler to spawn ``children`` (a dict or a list of dicts).

        The task is suspended until every child is finished, then runs again at ``stage + 1``
        with the children's outcomes in ``task.result``.
        """
        if observe.HOOKS:  # traced: the children's spans go under this attempt's
            return Next(children, _context(context), observe.inject())
        return Next(children, _context(context))

    def suspend(self, reason: str, context: bytes | str | None = None) -> Suspend:
        """Return this from the handler to wait until ``resume_task`` or ``cancel_task``."""
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("suspend() needs a non-empty reason, e.g. 'awaiting_approval'")
        return Suspend(reason, _context(context))

    def check_timeout(self) -> None:
        """Raise if this attempt is past its timeout or no longer owns the task."""
        if self._state.lost:
            raise OwnershipLostError(
                f"task {self.id} attempt {self.attempt} no longer owns the task"
                " (it was recovered, cancelled, paused or timed out); stop working on it"
            )
        if self._state.timed_out or time.monotonic() > self._state.deadline:
            self._state.timed_out = True
            raise TaskTimeoutError(
                f"task {self.id} ({self.name}) ran past its timeout of {self.timeout:g} s"
            )

    def progress(
        self,
        text: str | None = None,
        *,
        stage_name: str | None = None,
        progress_percent: float | None = None,
        message: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> int:
        """Record progress (snapshot fields and a ``task_progress`` event); returns the event id.

        Raises ``ValueError`` (writing nothing) for invalid input, blank text, or a call with
        nothing to report.
        """
        change = self._progress_change(text, stage_name, progress_percent, message, metadata)
        return self._written(self._write(change))

    def audit(
        self, code: str, message: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> int:
        """Write a ``task_checkpoint`` event; returns the event id."""
        return self._written(self._write(self._audit_change(code, message, metadata)))

    async def aprogress(
        self,
        text: str | None = None,
        *,
        stage_name: str | None = None,
        progress_percent: float | None = None,
        message: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """:meth:`progress` for async handlers, with no database round trip on the event loop:
        the event joins the worker's next group commit (with outcomes and claims, in order), so
        it costs the handler next to nothing. Same checks as :meth:`progress`; once the attempt
        is known to be fenced off it raises ``OwnershipLostError`` and writes nothing. It
        returns no event id (the event is not written yet): :meth:`progress` returns one."""
        change = self._progress_change(text, stage_name, progress_percent, message, metadata)
        await self._write_later(change)

    async def aaudit(
        self, code: str, message: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> None:
        """:meth:`audit` for async handlers: the ``task_checkpoint`` event joins the worker's
        next group commit, like :meth:`aprogress`."""
        await self._write_later(self._audit_change(code, message, metadata))

    async def _write_later(self, change: Change) -> None:
        if self._enqueue is not None:
            self._enqueue(change)
        else:  # not run by a worker (e.g. a test): write it from a thread
            self._written(await asyncio.to_thread(self._write, change))

    def _progress_change(
        self,
        text: str | None,
        stage_name: str | None,
        progress_percent: float | None,
        message: str | None,
        metadata: Mapping[str, Any] | None,
    ) -> Change:
        if stage_name is not None and (not isinstance(stage_name, str) or not stage_name.strip()):
            raise ValueError("stage_name must be a non-empty string")
        if progress_percent is not None and (
            isinstance(progress_percent, bool)
            or not isinstance(progress_percent, (int, float))
            or math.isnan(progress_percent)
            or not 0 <= progress_percent <= 100
        ):
            raise ValueError(
                f"progress_percent must be between 0 and 100, got {progress_percent!r}"
            )
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise ValueError(
                f"progress text must be a non-blank string, got {text!r};"
                " leave it out to report only a stage_name or progress_percent"
            )
        if message is not None and (not isinstance(message, str) or not message.strip()):
            raise ValueError(f"progress message must be a non-blank string, got {message!r}")
        meta = _metadata(metadata)
        if (text, stage_name, progress_percent, message) == (None, None, None, None) and not meta:
            raise ValueError(
                "progress() needs something to report: text, stage_name, progress_percent,"
                " message or metadata"
            )
        event_meta: dict[str, Any] = {}
        values: dict[str, Any] = {}
        if stage_name is not None:
            event_meta["stage_name"] = values["current_stage_name"] = stage_name
        if text is not None:
            event_meta["progress_text"] = values["progress_text"] = text
        if progress_percent is not None:
            event_meta["progress_percent"] = values["progress_percent"] = float(progress_percent)
        event_meta.update(meta)
        return self._change("task_progress", message or text, event_meta, values)

    def _audit_change(
        self, code: str, message: str | None, metadata: Mapping[str, Any] | None
    ) -> Change:
        if not isinstance(code, str) or not code.strip():
            raise ValueError("audit() needs a non-empty code")
        return self._change("task_checkpoint", message, {"code": code, **_metadata(metadata)}, {})

    def _change(
        self, event_type: str, message: str | None, meta: dict[str, Any], values: dict[str, Any]
    ) -> Change:
        if self._state.lost:
            self.check_timeout()
        return lifecycle.annotate(
            self._row, self._clock(), event_type, message=message, metadata=meta, values=values
        )

    def _written(self, event_id: int | None) -> int:
        if event_id is None:
            self._state.lost = True
            self.check_timeout()
            raise OwnershipLostError(f"task {self.id} attempt {self.attempt} was fenced off")
        return event_id


def _metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ValueError("metadata must be a dict")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be JSON-serialisable: {exc}") from None
    return dict(metadata)
