"""Structured logs: task fields on log records, and one JSON object per line.

Records of the worker that concern a task carry ``task_id``, ``task_name``, ``attempt`` and
``worker_id`` as attributes (``extra``). With :func:`instrument`, so do the records a handler
logs itself (the worker runs each handler in a context that knows its attempt), through the
:class:`TaskFields` filter. :class:`JsonFormatter` prints a record as one JSON object; it is
what ``tideflow worker --log-format json`` uses::

    import logging, sys, tideflow.logs

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(tideflow.logs.JsonFormatter())
    handler.addFilter(tideflow.logs.TaskFields())
    logging.basicConfig(level="INFO", handlers=[handler])
    tideflow.logs.instrument()                    # before tm.start()
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from tideflow.core.types import TaskRow
from tideflow.worker import observe

__all__ = ["FIELDS", "JsonFormatter", "TaskFields", "instrument", "uninstrument"]

#: the structured fields of a record that concerns a task
FIELDS = ("task_id", "task_name", "attempt", "worker_id")


class TaskFields(logging.Filter):
    """Adds the running attempt's fields to records logged inside a handler (when
    :func:`instrument` is in effect), and ``worker_id`` (when given) to every record without
    one. Never drops a record."""

    def __init__(self, worker_id: str | None = None) -> None:
        super().__init__()
        self.worker_id = worker_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "task_id"):
            current = observe.current_task()
            if current is not None:
                record.task_id = current.task_id
                record.task_name = current.task_name
                record.attempt = current.attempt
                if not hasattr(record, "worker_id"):
                    record.worker_id = current.worker_id
        if self.worker_id is not None and not hasattr(record, "worker_id"):
            record.worker_id = self.worker_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``,
    ``message``, ``process``, the task fields the record has (:data:`FIELDS`), and
    ``exc_info`` (the formatted traceback) and ``stack_info`` when present."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class _LogContext:
    """Hooks that only make the worker run handlers in a context that knows their attempt
    (:func:`tideflow.worker.observe.start_attempt` sets it for every installed hook)."""

    def publish(self, names: Sequence[str]) -> None:
        return None

    def inject(self) -> Mapping[str, str] | None:
        return None

    def attempt(self, row: TaskRow, worker_id: str) -> None:
        return None

    def claimed(self, count: int) -> None:
        pass

    def store_error(self, operation: str, error: BaseException) -> None:
        pass


_HOOKS = _LogContext()


def instrument() -> None:
    """Let :class:`TaskFields` see which attempt a handler's records belong to. Call it before
    ``tm.start()``."""
    observe.install(_HOOKS)


def uninstrument() -> None:
    """Undo :func:`instrument`."""
    observe.uninstall(_HOOKS)
