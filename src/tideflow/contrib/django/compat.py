"""The Django tasks API this process has: ``django.tasks`` (Django 6) or the ``django_tasks``
backport package (Django 5.2). Everything tideflow uses from either is re-exported here."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "SOURCE",
    "BaseTaskBackend",
    "InvalidTask",
    "InvalidTaskBackend",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "normalize_json",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
]


def _load() -> tuple[str, dict[str, Any]]:
    try:  # Django 6
        base = importlib.import_module("django.tasks.base")
        backends = importlib.import_module("django.tasks.backends.base")
        exceptions = importlib.import_module("django.tasks.exceptions")
        signals = importlib.import_module("django.tasks.signals")
        root = importlib.import_module("django.tasks")
        json = importlib.import_module("django.utils.json")
        return "django.tasks", {
            "BaseTaskBackend": backends.BaseTaskBackend,
            "InvalidTask": exceptions.InvalidTask,
            "InvalidTaskBackend": exceptions.InvalidTaskBackend,
            "TaskResultDoesNotExist": exceptions.TaskResultDoesNotExist,
            "normalize_json": json.normalize_json,
            "base": base,
            "signals": signals,
            "task_backends": root.task_backends,
        }
    except ImportError:
        pass
    try:  # the django-tasks backport (Django 5.2, Python 3.11)
        root = importlib.import_module("django_tasks")
        base = importlib.import_module("django_tasks.base")
        backends = importlib.import_module("django_tasks.backends.base")
        exceptions = importlib.import_module("django_tasks.exceptions")
        signals = importlib.import_module("django_tasks.signals")
        utils = importlib.import_module("django_tasks.utils")
    except ImportError as exc:
        raise ImportError(
            "tideflow.contrib.django needs Django 6 (django.tasks) or Django 5.2 with the"
            " django-tasks package: pip install 'tideflow[django]'"
        ) from exc
    return "django_tasks", {
        "BaseTaskBackend": backends.BaseTaskBackend,
        "InvalidTask": exceptions.InvalidTaskError,
        "InvalidTaskBackend": exceptions.InvalidTaskBackendError,
        "TaskResultDoesNotExist": exceptions.TaskResultDoesNotExist,
        "normalize_json": utils.normalize_json,
        "base": base,
        "signals": signals,
        "task_backends": root.task_backends,
    }


#: ``"django.tasks"`` or ``"django_tasks"``: where the API below comes from
SOURCE, _api = _load()

BaseTaskBackend: Any = _api["BaseTaskBackend"]
InvalidTask: Any = _api["InvalidTask"]
InvalidTaskBackend: Any = _api["InvalidTaskBackend"]
TaskResultDoesNotExist: Any = _api["TaskResultDoesNotExist"]
normalize_json: Any = _api["normalize_json"]
task_backends: Any = _api["task_backends"]
Task: Any = _api["base"].Task
TaskContext: Any = _api["base"].TaskContext
TaskError: Any = _api["base"].TaskError
TaskResult: Any = _api["base"].TaskResult
TaskResultStatus: Any = _api["base"].TaskResultStatus
TASK_MIN_PRIORITY: int = _api["base"].TASK_MIN_PRIORITY
TASK_MAX_PRIORITY: int = _api["base"].TASK_MAX_PRIORITY
task_enqueued: Any = _api["signals"].task_enqueued
task_started: Any = _api["signals"].task_started
task_finished: Any = _api["signals"].task_finished
del _api
