"""Running Django tasks: a tideflow worker whose handlers are the Django tasks of one backend.

:class:`DjangoWorker` registers one tideflow handler per Django task (``django:<module path>``):
first every task of the installed apps' ``tasks`` modules (and any other task already imported
for the backend), then, every ``scan_interval`` seconds, any ``django:`` name waiting in the
database that no active worker serves (a task defined in another module: it is imported when it
runs). A task whose module cannot be imported, or whose path is not a Django task, fails at once
(``PermanentError``, no retries) with an error naming it. ``manage.py tideflow_worker`` runs one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from inspect import iscoroutinefunction
from typing import Any

from django.db import close_old_connections
from django.utils.module_loading import autodiscover_modules

from tideflow.errors import HandlerRegistrationError, InvalidOptionError, PermanentError
from tideflow.manager import TaskManager
from tideflow.worker.task import Task as TideflowTask

from . import compat
from .backend import NAME_PREFIX, TideflowBackend, defined_tasks, queue_requirement

__all__ = ["DjangoWorker", "get_backend"]

log = logging.getLogger("tideflow.contrib.django")


def get_backend(alias: str = "default") -> TideflowBackend:
    """The ``TASKS[alias]`` backend; :class:`InvalidOptionError` unless it is a TideflowBackend."""
    try:
        backend = compat.task_backends[alias]
    except compat.InvalidTaskBackend as exc:
        raise InvalidOptionError(f"no task backend {alias!r} in TASKS: {exc}") from None
    if not isinstance(backend, TideflowBackend):
        raise InvalidOptionError(
            f"TASKS[{alias!r}] is a {type(backend).__name__}, not"
            " tideflow.contrib.django.TideflowBackend"
        )
    return backend


def _arguments(task: TideflowTask) -> tuple[list[Any], dict[str, Any]]:
    payload = task.payload
    if not isinstance(payload, dict):
        raise PermanentError(f"task {task.id} ({task.name}): the payload is not a Django task's")
    args, kwargs = payload.get("args", []), payload.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise PermanentError(f"task {task.id} ({task.name}): args/kwargs are not a list/dict")
    return args, kwargs


class DjangoWorker:
    """A tideflow worker in this process for the Django tasks of ``TASKS[alias]``.

    ``queues``: the Django queues to serve (default: the backend's ``QUEUES``, or ``default``
    when it allows any); ``capabilities``: more tideflow capabilities to offer;
    ``concurrency``, ``pod_id``: as for ``tideflow worker``. On an in-memory SQLite database
    the worker shares the backend's TaskManager; otherwise it opens its own.
    """

    def __init__(
        self,
        alias: str = "default",
        *,
        queues: Iterable[str] | None = None,
        capabilities: Iterable[str] = (),
        concurrency: int | None = None,
        pod_id: str | None = None,
        scan_interval: float = 5.0,
    ) -> None:
        self.backend = get_backend(alias)
        allowed = set(self.backend.queues)
        chosen = sorted(allowed or {"default"}) if queues is None else list(queues)
        if not chosen or any(not isinstance(q, str) or not q.strip() for q in chosen):
            raise InvalidOptionError(f"queues must be non-empty names, got {chosen!r}")
        unknown = sorted(set(chosen) - allowed) if allowed else []
        if unknown:
            raise InvalidOptionError(
                f"queue(s) {', '.join(unknown)} not in TASKS[{alias!r}]['QUEUES']"
                f" ({', '.join(sorted(allowed))})"
            )
        if scan_interval <= 0:
            raise InvalidOptionError(f"scan_interval must be > 0, got {scan_interval!r}")
        self.queues = chosen
        self.scan_interval = scan_interval
        url = self.backend.db_url
        self._owned = url != "sqlite::memory:"
        self.manager: TaskManager = (
            TaskManager(url, **self.backend.manager_options)
            if self._owned
            else self.backend.manager
        )
        options: dict[str, Any] = {
            "capabilities": [*(queue_requirement(q) for q in chosen), *capabilities]
        }
        if concurrency is not None:
            options["max_concurrency"] = concurrency
        if pod_id is not None:
            options["pod_id"] = pod_id
        self.manager.configure_worker(**options)
        self._registered: set[str] = set()
        self._stop = threading.Event()
        self._scanner: threading.Thread | None = None

    # --- handlers ------------------------------------------------------------------------------
    def register(self, module_path: str, task: Any = None) -> bool:
        """Register the handler of the Django task at ``module_path`` (``task``: the Django
        task itself, or None to import it when it first runs); False if already registered."""
        name = NAME_PREFIX + module_path
        if name in self._registered:
            return False
        self.manager.use(name, self._handler(module_path, task))
        self._registered.add(name)
        return True

    def discover(self) -> list[str]:
        """Import the ``tasks`` module of every installed app and register every Django task
        defined for this backend; returns the module paths registered now."""
        autodiscover_modules("tasks")
        return [
            path
            for path, task in sorted(defined_tasks(self.backend.alias).items())
            if self.register(path, task)
        ]

    def scan(self) -> list[str]:
        """Register a lazy handler for every ``django:`` task waiting in the database that no
        active worker serves and whose queue this worker serves; returns their module paths."""
        offered = set(self.manager.settings.capabilities)
        found: list[str] = []
        for row in self.manager.get_unserved_tasks():
            name = row["name"]
            if not name.startswith(NAME_PREFIX) or not set(row["requires"]) <= offered:
                continue
            path = name[len(NAME_PREFIX) :]
            if self.register(path):
                log.info("serving Django task %s (found waiting in the database)", path)
                found.append(path)
        return found

    def _resolve(self, module_path: str, task: TideflowTask) -> Any:
        try:
            return self.backend.resolve(module_path)
        except HandlerRegistrationError as exc:
            raise PermanentError(f"task {task.id}: {exc}") from exc

    def _handler(self, module_path: str, known: Any) -> Any:
        backend = self.backend
        if known is not None and iscoroutinefunction(known.func):

            async def run_async(task: TideflowTask) -> Any:
                args, kwargs = _arguments(task)
                if known.takes_context:
                    context = compat.TaskContext(
                        task_result=await backend.aget_result(str(task.id))
                    )
                    args = [context, *args]
                return compat.normalize_json(await known.acall(*args, **kwargs))

            return run_async

        def run(task: TideflowTask) -> Any:
            django_task = known if known is not None else self._resolve(module_path, task)
            args, kwargs = _arguments(task)
            close_old_connections()
            try:
                if django_task.takes_context:
                    context = compat.TaskContext(task_result=backend.get_result(str(task.id)))
                    args = [context, *args]
                value = django_task.call(*args, **kwargs)
            finally:
                close_old_connections()
            return compat.normalize_json(value)

        return run

    # --- running -------------------------------------------------------------------------------
    def start(self) -> None:
        """Discover and register the tasks, start the worker and the periodic scan."""
        paths = self.discover()
        self.scan()
        self.manager.start()
        log.info(
            "Django tasks worker %s: backend %r, queues %s, %d task(s) known: %s",
            self.manager.worker_id,
            self.backend.alias,
            ", ".join(self.queues),
            len(self._registered),
            ", ".join(paths) or "none yet",
        )
        self._scanner = threading.Thread(
            target=self._scan_loop, name="tideflow-django-scan", daemon=True
        )
        self._scanner.start()

    def _scan_loop(self) -> None:
        while not self._stop.wait(self.scan_interval):
            try:
                self.scan()
            except Exception as exc:  # the database may be away; the next round retries
                log.warning("scanning for Django tasks failed: %s: %s", type(exc).__name__, exc)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop gracefully: running tasks get ``timeout`` seconds, the rest are released."""
        self._stop.set()
        if self._scanner is not None:
            self._scanner.join()
        self.manager.stop(timeout)
        if self._owned:
            self.manager.close()

    def __enter__(self) -> DjangoWorker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
