"""Exceptions raised by tideflow.

Every error derives from :class:`TideflowError`; its message says what was wrong and what is
allowed. A call that raises writes nothing::

    TideflowError
    ├── HandlerRegistrationError   bad handler or registration option; unregistered name at submit
    ├── InvalidOptionError         a bad option value, filter, limit/offset/order or blank id
    │   ├── InvalidCronError       a cron expression or zone that cannot be read
    │   └── InvalidStatusError     a status name that does not exist
    ├── PayloadError               payload/result not JSON-serialisable or over max_payload_bytes
    ├── TaskNotFoundError          a control call named a task id that does not exist
    ├── TaskFailedError            tm.result() of a task that ended permanently_failed
    ├── WaitTimeoutError           tm.wait() gave up before the task finished (also a TimeoutError)
    ├── InvalidTransitionError     a call the state machine does not allow in the task's state
    ├── TaskTimeoutError           raised by task.check_timeout() past the attempt's timeout
    ├── OwnershipLostError         the attempt was fenced off (recovered, cancelled, paused...)
    ├── PermanentError             raised BY a handler: fail the task now, no retry (subclass it)
    └── StoreError                 connection string or database problem (never shows a password)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "HandlerRegistrationError",
    "InvalidCronError",
    "InvalidOptionError",
    "InvalidStatusError",
    "InvalidTransitionError",
    "OwnershipLostError",
    "PayloadError",
    "PermanentError",
    "StoreError",
    "TaskFailedError",
    "TaskNotFoundError",
    "TaskTimeoutError",
    "TideflowError",
    "WaitTimeoutError",
]


class TideflowError(Exception):
    """Base class of every error tideflow raises on purpose."""


class HandlerRegistrationError(TideflowError):
    """A handler registration is invalid, or a task name has no handler here."""


class InvalidOptionError(TideflowError, ValueError):
    """An option, filter or paging value is not allowed."""


class InvalidCronError(InvalidOptionError):
    """A cron expression (or its time zone) cannot be parsed."""


class InvalidStatusError(InvalidOptionError):
    """A task status name that does not exist."""


class PayloadError(TideflowError, ValueError):
    """A payload, result or context is not JSON-serialisable or is too large."""


class TaskNotFoundError(TideflowError, LookupError):
    """No task has the given id."""


class TaskFailedError(TideflowError):
    """``tm.result()`` of a task that ended ``permanently_failed`` (retries used up, cancelled,
    or failed for good): ``task_id``, the stored ``error`` (``Type: message`` line, then the
    traceback) and the final ``task`` (a :class:`~tideflow.models.TaskInfo`)."""

    def __init__(self, message: str, *, task_id: int, error: str | None, task: Any) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.error = error
        self.task = task


class WaitTimeoutError(TideflowError, TimeoutError):
    """``tm.wait()`` (or ``result``, ``wait_many``, their async twins) ran out of time before
    the task was ``completed`` or ``permanently_failed``; the task goes on."""


class InvalidTransitionError(TideflowError):
    """The task's current status does not allow the requested transition."""


class TaskTimeoutError(TideflowError):
    """The current attempt ran past its timeout."""


class OwnershipLostError(TideflowError):
    """The current attempt no longer owns its task (it was fenced off)."""


class PermanentError(TideflowError):
    """Raise it (or a subclass) from a handler to fail the task at once, whatever attempts it
    has left: a one-off task ends ``permanently_failed``, a cron task is ``paused`` (as on its
    last attempt). Its ``task_permanently_failed`` (or ``task_paused``) event says why:
    ``{"reason": "no_retry", "exception": "pkg.module.Class", "rule": "PermanentError"}``.
    A handler's ``no_retry_on=(...)`` / ``retry_on=(...)`` do the same for other exceptions."""


class StoreError(TideflowError):
    """The database could not be reached or used; the message never contains a password."""
