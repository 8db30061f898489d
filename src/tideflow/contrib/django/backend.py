"""``TideflowBackend``: Django's task backend API (``django.tasks``) on tideflow.

How Django's task model maps onto tideflow's:

- a Django task is submitted as one tideflow task named ``django:<module path>`` (e.g.
  ``django:shop.tasks.send_receipt``); its payload is ``{"args", "kwargs", "priority",
  "queue_name", "backend"}`` (JSON), the result id is the tideflow task id as a string;
- priority: Django's -100..100 becomes tideflow's -20..20 as ``round(priority / 5)`` (0 stays 0,
  the order is kept; Django priorities within 5 of each other may share a tideflow priority);
- ``run_after`` becomes ``run_at``; ``queue_name`` becomes the requirement ``queue:<name>``
  (tideflow capabilities: only a worker serving that queue claims it) and the task's tag;
- statuses: pending, failed and timeout (a retry is due), paused -> READY; running, suspended ->
  RUNNING; completed -> SUCCESSFUL; permanently_failed -> FAILED;
- each failed or timed-out attempt is one ``TaskError`` (oldest first) with the exception's
  dotted class path and its traceback; ``worker_ids`` lists the worker of each attempt.

``OPTIONS``: ``DB`` (a tideflow URL; default: built from ``DATABASES[DATABASE]``), ``DATABASE``
(the Django database alias, default ``"default"``), ``TASK_OPTIONS`` (tideflow task options for
every task: ``timeout``, ``max_retries`` (default 1: Django tasks are not retried unless you say
so), ``retry_interval``, ``retry_backoff``, ``max_retry_interval``) and ``MANAGER_OPTIONS``
(keywords of ``TaskManager``, e.g. ``poll_interval``).
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import re
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import checks
from django.utils import timezone
from django.utils.module_loading import import_string

import tideflow.errors
from tideflow.core.options import TASK_OPTIONS, validate_options
from tideflow.errors import HandlerRegistrationError, InvalidOptionError, PayloadError
from tideflow.manager import TaskManager
from tideflow.models import TaskAttempt, TaskInfo

from . import compat

__all__ = [
    "NAME_PREFIX",
    "TideflowBackend",
    "close_managers",
    "database_url",
    "defined_tasks",
    "django_priority",
    "queue_requirement",
    "task_error",
    "tideflow_priority",
]

#: tideflow task names of Django tasks start with this, then the task's module path
NAME_PREFIX = "django:"
_OPTION_KEYS = frozenset({"DB", "DATABASE", "TASK_OPTIONS", "MANAGER_OPTIONS"})
# set by the backend for each task; not allowed in TASK_OPTIONS
_SET_PER_TASK = frozenset({"priority", "requires", "tag", "run_at", "delay", "unique_key"})
_DEFAULT_TASK_OPTIONS: Mapping[str, Any] = {"max_retries": 1}
# libpq parameters that Django's PostgreSQL OPTIONS may carry and a URL can pass on
_LIBPQ_OPTIONS = frozenset(
    {
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "sslcrl",
        "options",
        "application_name",
        "connect_timeout",
        "target_session_attrs",
        "service",
        "passfile",
        "channel_binding",
        "gssencmode",
    }
)

_STATUS = {
    "pending": "READY",
    "failed": "READY",
    "timeout": "READY",
    "paused": "READY",
    "running": "RUNNING",
    "suspended": "RUNNING",
    "completed": "SUCCESSFUL",
    "permanently_failed": "FAILED",
}
_FINISHED = frozenset({"completed", "permanently_failed"})

# module path -> Task, per backend alias: every task Django validated for a TideflowBackend
_DEFINED: dict[str, dict[str, Any]] = {}
_DEFINED_LOCK = threading.Lock()

# one TaskManager per (URL, options) for the whole process: Django makes a backend instance
# per thread, and each would otherwise open its own connection pool
_MANAGERS: dict[tuple[str, str], TaskManager] = {}
_MANAGERS_LOCK = threading.Lock()


def tideflow_priority(priority: int) -> int:
    """Django's priority (-100..100) as tideflow's (-20..20): ``round(priority / 5)``."""
    return round(priority / 5)


def django_priority(priority: int) -> int:
    """The inverse of :func:`tideflow_priority` for a task submitted without Django."""
    return max(compat.TASK_MIN_PRIORITY, min(compat.TASK_MAX_PRIORITY, priority * 5))


def queue_requirement(queue_name: str) -> str:
    """The tideflow capability a worker must offer to run tasks of ``queue_name``."""
    return f"queue:{queue_name}"


def defined_tasks(alias: str) -> dict[str, Any]:
    """The Django tasks defined so far (imported) for the TideflowBackend ``alias``, by module
    path."""
    with _DEFINED_LOCK:
        return dict(_DEFINED.get(alias, {}))


def database_url(database: Mapping[str, Any]) -> str:
    """The tideflow URL of a Django ``DATABASES`` entry (SQLite, PostgreSQL or MySQL/MariaDB)."""
    engine = str(database.get("ENGINE", ""))
    name = database.get("NAME")
    options = database.get("OPTIONS") or {}
    if engine.endswith(("sqlite3", "spatialite")):
        text = str(name) if name else ""
        if not text or text == ":memory:" or "mode=memory" in text:
            return "sqlite::memory:"
        return f"sqlite:{text}"
    if engine.endswith(("postgresql", "postgis", "postgresql_psycopg2")):
        scheme = "postgresql"
        query = {k: str(v) for k, v in options.items() if k in _LIBPQ_OPTIONS}
    elif engine.endswith("mysql"):
        scheme = "mysql"
        query = {"unix_socket": str(options["unix_socket"])} if "unix_socket" in options else {}
    else:
        raise InvalidOptionError(
            f"cannot build a tideflow URL from a database with ENGINE {engine!r}: tideflow runs"
            " on SQLite, PostgreSQL and MySQL/MariaDB; give OPTIONS['DB'] = 'postgresql://...'"
        )
    if not name:
        raise InvalidOptionError(f"the {scheme} database in DATABASES has no NAME")
    user = quote(str(database.get("USER") or ""), safe="")
    password = quote(str(database.get("PASSWORD") or ""), safe="")
    userinfo = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = str(database.get("HOST") or "127.0.0.1")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    port = f":{database['PORT']}" if database.get("PORT") else ""
    tail = f"?{urlencode(query)}" if query else ""
    return f"{scheme}://{userinfo}{host}{port}/{quote(str(name), safe='')}{tail}"


def _manager(url: str, options: Mapping[str, Any]) -> TaskManager:
    key = (url, repr(sorted(options.items())))
    with _MANAGERS_LOCK:
        tm = _MANAGERS.get(key)
        if tm is None:
            tm = TaskManager(url, **{**options, "allow_unregistered": True})
            _MANAGERS[key] = tm
        return tm


def close_managers() -> None:
    """Close the TaskManagers the backends opened (at exit, or after changing ``TASKS`` or
    ``DATABASES`` in tests); the next call opens new ones."""
    with _MANAGERS_LOCK:
        managers = list(_MANAGERS.values())
        _MANAGERS.clear()
    for tm in managers:
        tm.close()


atexit.register(close_managers)


def _class_path(name: str, text: str) -> str:
    """The dotted path of exception class ``name`` from a stored error: the traceback's last
    ``module.Class: message`` line names it; builtins and tideflow's own errors otherwise."""
    pattern = re.compile(rf"^((?:[A-Za-z_][\w]*\.)*){re.escape(name)}(?::|$)")
    for line in reversed(text.splitlines()[1:]):
        match = pattern.match(line)
        if match and match.group(1):
            return f"{match.group(1)}{name}"
        if match:
            break
    if isinstance(getattr(builtins, name, None), type):
        return f"builtins.{name}"
    if isinstance(getattr(tideflow.errors, name, None), type):
        return f"tideflow.errors.{name}"
    return "tideflow.errors.TideflowError"


def task_error(text: str) -> Any:
    """A Django ``TaskError`` from tideflow's stored error (``Type: message`` then the
    traceback)."""
    head = text.split("\n", 1)[0]
    name, sep, _ = head.partition(":")
    if sep and re.fullmatch(r"[A-Za-z_]\w*", name):
        path = _class_path(name, text)
    else:  # a reason given by hand (e.g. cancel_task's), not an exception
        path = "tideflow.errors.TideflowError"
    traceback = text.split("\n", 1)[1] if "\n" in text else text
    return compat.TaskError(exception_class_path=path, traceback=traceback)


def _for_django(value: datetime | None) -> datetime | None:
    """tideflow's aware UTC time, naive in Django's time zone when ``USE_TZ`` is off."""
    if value is None or settings.USE_TZ:
        return value
    naive: datetime = timezone.make_naive(value)
    return naive


class TideflowBackend(compat.BaseTaskBackend):
    """A Django task backend that stores tasks in tideflow (see the module docstring)."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        options: Mapping[str, Any] = self.options
        if not isinstance(options, Mapping):
            raise InvalidOptionError(f"TASKS[{alias!r}]['OPTIONS'] must be a dict")
        unknown = sorted(set(options) - _OPTION_KEYS)
        if unknown:
            raise InvalidOptionError(
                f"unknown key(s) in TASKS[{alias!r}]['OPTIONS']: {', '.join(unknown)};"
                f" allowed: {', '.join(sorted(_OPTION_KEYS))}"
            )
        task_options = options.get("TASK_OPTIONS", {})
        manager_options = options.get("MANAGER_OPTIONS", {})
        for key, value in (("TASK_OPTIONS", task_options), ("MANAGER_OPTIONS", manager_options)):
            if not isinstance(value, Mapping):
                raise InvalidOptionError(f"TASKS[{alias!r}]['OPTIONS'][{key!r}] must be a dict")
        fixed = sorted(set(task_options) & _SET_PER_TASK)
        if fixed:
            raise InvalidOptionError(
                f"TASKS[{alias!r}]['OPTIONS']['TASK_OPTIONS'] may not set {', '.join(fixed)}:"
                " the backend sets them from each Django task"
            )
        where = f"TASKS[{alias!r}]['OPTIONS']['TASK_OPTIONS']"
        self.task_options = {
            **_DEFAULT_TASK_OPTIONS,
            **validate_options(task_options, TASK_OPTIONS - _SET_PER_TASK, where),
        }
        self.manager_options = dict(manager_options)
        self._url: str | None = options.get("DB")
        if self._url is not None and not isinstance(self._url, str):
            raise InvalidOptionError(f"TASKS[{alias!r}]['OPTIONS']['DB'] must be a tideflow URL")
        self.database_alias = str(options.get("DATABASE", "default"))

    # --- where the tasks live ------------------------------------------------------------------
    @property
    def db_url(self) -> str:
        """The tideflow URL: ``OPTIONS["DB"]`` or the one of ``DATABASES[DATABASE]``."""
        if self._url is None:
            databases = settings.DATABASES
            if self.database_alias not in databases:
                raise InvalidOptionError(
                    f"TASKS[{self.alias!r}] uses database {self.database_alias!r}, which is not"
                    " in DATABASES"
                )
            self._url = database_url(databases[self.database_alias])
        return self._url

    @property
    def manager(self) -> TaskManager:
        """The process-wide TaskManager this backend submits and reads through."""
        return _manager(self.db_url, self.manager_options)

    def check(self, **kwargs: Any) -> list[Any]:
        """Django system check: the tideflow URL can be built from the settings."""
        try:
            self.db_url  # noqa: B018
        except InvalidOptionError as exc:
            return [checks.Error(str(exc), obj=f"TASKS[{self.alias!r}]", id="tideflow.E001")]
        return []

    # --- Django's backend API ------------------------------------------------------------------
    def validate_task(self, task: Any) -> None:
        super().validate_task(task)
        with _DEFINED_LOCK:
            _DEFINED.setdefault(self.alias, {}).setdefault(task.module_path, task)

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        self.validate_task(task)
        try:
            args = compat.normalize_json(list(args))
            kwargs = compat.normalize_json(dict(kwargs))
        except (TypeError, ValueError) as exc:
            raise PayloadError(
                f"the arguments of Django task {task.module_path!r} are not JSON: {exc}"
            ) from None
        payload = {
            "args": args,
            "kwargs": kwargs,
            "priority": task.priority,
            "queue_name": task.queue_name,
            "backend": self.alias,
        }
        options: dict[str, Any] = {
            **self.task_options,
            "priority": tideflow_priority(task.priority),
            "requires": [queue_requirement(task.queue_name)],
            "tag": task.queue_name,
        }
        if task.run_after is not None:
            run_after = task.run_after
            if timezone.is_naive(run_after):
                run_after = timezone.make_aware(run_after)
            options["run_at"] = run_after
        task_id = self.manager.submit(NAME_PREFIX + task.module_path, payload, **options)
        result = compat.TaskResult(
            task=task,
            id=str(task_id),
            status=compat.TaskResultStatus.READY,
            enqueued_at=timezone.now(),
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        compat.task_enqueued.send(type(self), task_result=result)
        return result

    async def aenqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        # tideflow is thread-safe: no need to queue behind Django's main thread
        return await sync_to_async(self.enqueue, thread_sensitive=False)(task, args, kwargs)

    def get_result(self, result_id: str) -> Any:
        task_id = int(result_id) if isinstance(result_id, str) and result_id.isdigit() else None
        if task_id is None:
            raise compat.TaskResultDoesNotExist(result_id)
        tm = self.manager
        info = tm.get_task(task_id)
        if info is None or not info.name.startswith(NAME_PREFIX):
            raise compat.TaskResultDoesNotExist(result_id)
        attempts = tm.query_task_attempts(task_id, limit=None).items
        return self._result(info, attempts)

    async def aget_result(self, result_id: str) -> Any:
        return await sync_to_async(self.get_result, thread_sensitive=False)(result_id)

    # --- reading a tideflow task as a Django TaskResult ----------------------------------------
    def resolve(self, module_path: str) -> Any:
        """The Django task at ``module_path`` (imported if needed); raises
        :class:`HandlerRegistrationError` naming it when it cannot be imported."""
        known = defined_tasks(self.alias).get(module_path)
        if known is not None:
            return known
        try:
            obj = import_string(module_path)
        except Exception as exc:
            raise HandlerRegistrationError(
                f"cannot import Django task {module_path!r}: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(obj, compat.Task):
            raise HandlerRegistrationError(
                f"{module_path!r} is a {type(obj).__name__}, not a Django task (@task)"
            )
        return obj

    def _result(self, info: TaskInfo, attempts: Sequence[TaskAttempt]) -> Any:
        payload = info.payload if isinstance(info.payload, dict) else {}
        task = self.resolve(info.name[len(NAME_PREFIX) :])
        changes: dict[str, Any] = {}
        priority = payload.get("priority", django_priority(info.priority))
        if priority != task.priority:
            changes["priority"] = priority
        queue_name = payload.get("queue_name", task.queue_name)
        if queue_name != task.queue_name:
            changes["queue_name"] = queue_name
        if task.backend != self.alias:
            changes["backend"] = self.alias
        if changes:
            # a queue no longer in QUEUES fails validation: report the task as defined now
            with contextlib.suppress(compat.InvalidTask):
                task = task.using(**changes)
        errors = [
            task_error(a.error)
            for a in attempts
            if a.outcome in ("failed", "timeout") and a.error is not None
        ]
        if info.status == "permanently_failed" and not errors and info.error:
            errors.append(task_error(info.error))
        status = _STATUS.get(info.status, "READY")
        finished_at = None
        if info.status in _FINISHED:
            ended = attempts[-1].ended_at if attempts else None
            finished_at = ended or info.last_active_time
        result = compat.TaskResult(
            task=task,
            id=str(info.id),
            status=compat.TaskResultStatus[status],
            enqueued_at=_for_django(info.created_at),
            started_at=_for_django(attempts[0].started_at if attempts else info.start_time),
            finished_at=_for_django(finished_at),
            last_attempted_at=_for_django(attempts[-1].started_at if attempts else None),
            args=payload.get("args", []),
            kwargs=payload.get("kwargs", {}),
            backend=self.alias,
            errors=errors,
            worker_ids=[a.worker_id for a in attempts],
        )
        if info.status == "completed":
            object.__setattr__(result, "_return_value", info.result)
        return result
