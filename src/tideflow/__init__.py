"""tideflow: durable task queues and workflows on the database you already have."""

from __future__ import annotations

from tideflow.errors import PermanentError
from tideflow.manager import TaskManager
from tideflow.models import (
    HandlerInfo,
    Page,
    Status,
    TaskAttempt,
    TaskAudit,
    TaskEvent,
    TaskInfo,
    WorkerInfo,
    WorkflowAudit,
)
from tideflow.worker.task import Task

__version__ = "0.1.0"

__all__ = [
    "HandlerInfo",
    "Page",
    "PermanentError",
    "Status",
    "Task",
    "TaskAttempt",
    "TaskAudit",
    "TaskEvent",
    "TaskInfo",
    "TaskManager",
    "WorkerInfo",
    "WorkflowAudit",
    "__version__",
]

for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and not isinstance(_obj, str):
        _obj.__module__ = "tideflow"
del _name, _obj
