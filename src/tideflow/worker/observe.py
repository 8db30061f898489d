"""The instrumentation seam: how tracing, metrics and structured logs see the worker and submits.

The worker and the manager know nothing of OpenTelemetry or Prometheus. They consult the
module-level :data:`HOOKS` (a tuple, empty unless something was installed) with one truth test on
the hot path, and call the functions below only when it is not empty; so an uninstrumented
process pays one attribute read per attempt and imports nothing. Implementations:
:mod:`tideflow.otel` (spans), :mod:`tideflow.metrics` (Prometheus), :mod:`tideflow.logs`
(task fields on log records).

What a hook sees:

- :meth:`Hooks.publish` at ``submit``/``submit_many``/``cron``, around the insert: it returns the
  propagation headers to store with each task (``trace_context``, JSON) and hears the ids;
- :meth:`Hooks.inject` inside a handler (``task.next(...)``): the headers of the running attempt,
  stored with the children it spawns;
- :meth:`Hooks.attempt` when the worker starts an attempt: the returned :class:`AttemptHook` is
  entered in the attempt's own :class:`contextvars.Context` (in which the handler runs, on the
  event loop or on a handler thread) and ended with the attempt's outcome;
- :meth:`Hooks.claimed` and :meth:`Hooks.store_error` from :class:`ObservedStore`, the store the
  worker is given when hooks are installed before ``start()``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

from tideflow.core.types import Change, NewTask, TaskRow

__all__ = [
    "HOOKS",
    "AttemptHook",
    "CurrentAttempt",
    "Hooks",
    "Observation",
    "ObservedStore",
    "Publication",
    "current_task",
    "extra",
    "inject",
    "install",
    "observed_store",
    "publish",
    "start_attempt",
    "uninstall",
]

R = TypeVar("R")

log = logging.getLogger("tideflow.worker")

#: the installed hooks; replaced (never mutated) by :func:`install` and :func:`uninstall`, so
#: readers need no lock
HOOKS: tuple[Hooks, ...] = ()
_lock = threading.Lock()


class CurrentAttempt(NamedTuple):
    """What a log record or span says about the attempt it concerns."""

    task_id: int
    task_name: str
    attempt: int
    worker_id: str | None


#: the attempt whose handler runs in this context (set only while some hook is installed)
_current: contextvars.ContextVar[CurrentAttempt | None] = contextvars.ContextVar(
    "tideflow_attempt", default=None
)


def extra(row: TaskRow, worker_id: str | None = None) -> dict[str, Any]:
    """The ``extra`` of a log record about an attempt of ``row`` (see :mod:`tideflow.logs`)."""
    return {
        "task_id": row.id,
        "task_name": row.name,
        "attempt": row.attempt,
        "worker_id": worker_id if worker_id is not None else row.worker_id,
    }


def current_task() -> CurrentAttempt | None:
    """The attempt whose handler is running here, when the worker is instrumented."""
    return _current.get()


class Publication(Protocol):
    """One hook's view of one insert of tasks (see :meth:`Hooks.publish`)."""

    @property
    def headers(self) -> Sequence[Mapping[str, str] | None]:
        """Per task, in order: the propagation headers to store with it (None: nothing)."""

    def done(self, ids: Sequence[int]) -> None:
        """The tasks were inserted with these ids."""

    def failed(self, error: BaseException) -> None:
        """The insert raised ``error``; nothing was written."""


class AttemptHook(Protocol):
    """One hook's view of one attempt."""

    def enter(self) -> None:
        """Called inside the attempt's context before its handler runs (e.g. make a span
        current there); the context is thrown away afterwards, so nothing needs undoing."""

    def end(self, outcome: str, error: BaseException | None, duration: float) -> None:
        """The attempt's outcome is decided: ``completed``, ``failed``, ``timeout``,
        ``suspended`` (spawned children or suspended) or ``interrupted`` (fenced off, lost, or
        abandoned at a stop); ``duration`` in seconds from its start."""


class Hooks(Protocol):
    """What an instrumentation implements; every method must be cheap and must not raise."""

    def publish(self, names: Sequence[str]) -> Publication | None:
        """Tasks named ``names`` are about to be inserted (one transaction)."""

    def inject(self) -> Mapping[str, str] | None:
        """Propagation headers of the current context (inside a handler: its attempt)."""

    def attempt(self, row: TaskRow, worker_id: str) -> AttemptHook | None:
        """The worker starts an attempt of claimed ``row``."""

    def claimed(self, count: int) -> None:
        """A claim of the worker brought back ``count`` rows."""

    def store_error(self, operation: str, error: BaseException) -> None:
        """A store call of the worker (``exchange``, ``heartbeat``, ...) raised ``error``."""


def install(hooks: Hooks) -> None:
    """Add ``hooks`` (once; installing it again is a no-op)."""
    global HOOKS
    with _lock:
        if hooks not in HOOKS:
            HOOKS = (*HOOKS, hooks)


def uninstall(hooks: Hooks) -> None:
    """Remove ``hooks`` if installed."""
    global HOOKS
    with _lock:
        HOOKS = tuple(h for h in HOOKS if h is not hooks)


def _merge(parts: Sequence[Mapping[str, str] | None]) -> str | None:
    headers: dict[str, str] = {}
    for part in parts:
        if part:
            headers.update(part)
    return json.dumps(headers, separators=(",", ":"), sort_keys=True) if headers else None


def publish(insert: Callable[[list[NewTask]], list[int]], tasks: Sequence[NewTask]) -> list[int]:
    """``insert(tasks)`` with each task's ``trace_context`` set from the hooks' headers."""
    names = [str(t.values.get("name")) for t in tasks]
    pubs = [p for p in (_call(h, "publish", names) for h in HOOKS) if p is not None]
    if not pubs:
        return insert(list(tasks))
    stamped: list[NewTask] = []
    for i, task in enumerate(tasks):
        text = _merge([p.headers[i] for p in pubs])
        if text is not None:
            task = task._replace(values={**task.values, "trace_context": text})
        stamped.append(task)
    try:
        ids = insert(stamped)
    except BaseException as exc:
        for p in pubs:
            p.failed(exc)
        raise
    for p in pubs:
        p.done(ids)
    return ids


def inject() -> str | None:
    """The hooks' headers for the current context as stored text (None when none)."""
    hooks = HOOKS
    if not hooks:
        return None
    return _merge([_call(h, "inject") for h in hooks])


class Observation:
    """The hooks of one attempt, and the context its handler runs in."""

    __slots__ = ("_hooks", "_started", "context")

    def __init__(self, context: contextvars.Context, hooks: list[AttemptHook]) -> None:
        self.context = context
        self._hooks = hooks
        self._started = time.perf_counter()

    def end(self, change: Change | None, error: BaseException | None) -> None:
        """The attempt's outcome: ``change`` is the write the worker queued (None when it
        writes none: the attempt lost its task or was abandoned)."""
        close = change.attempt_close if change is not None else None
        outcome = close.outcome if close is not None else "interrupted"
        duration = time.perf_counter() - self._started
        for hook in self._hooks:
            try:
                hook.end(outcome, error, duration)
            except Exception as exc:  # instrumentation must never break the worker
                _failed(hook, exc)


def start_attempt(row: TaskRow, worker_id: str) -> Observation | None:
    """Start observing an attempt of ``row``; None when no hook is installed. The handler is
    to run in the returned observation's ``context``."""
    hooks = HOOKS
    if not hooks:
        return None
    attached: list[AttemptHook] = []
    for hook in hooks:
        try:
            found = hook.attempt(row, worker_id)
        except Exception as exc:
            _failed(hook, exc)
            continue
        if found is not None:
            attached.append(found)
    context = contextvars.copy_context()
    context.run(_enter, CurrentAttempt(row.id, row.name, row.attempt, worker_id), attached)
    return Observation(context, attached)


def _enter(fields: CurrentAttempt, attached: list[AttemptHook]) -> None:
    _current.set(fields)
    for hook in attached:
        try:
            hook.enter()
        except Exception as exc:
            _failed(hook, exc)


def _call(hook: Any, method: str, *args: Any) -> Any:
    """``hook.method(*args)``; None (and a warning) when it raises."""
    try:
        return getattr(hook, method)(*args)
    except Exception as exc:
        _failed(hook, exc)
        return None


def _failed(hook: Any, exc: Exception) -> None:
    log.warning("instrumentation %s failed: %s: %s", type(hook).__name__, type(exc).__name__, exc)


class ObservedStore:
    """The worker's view of a store while hooks are installed: every call that raises is
    reported (:meth:`Hooks.store_error`, by operation name) and every claim's size
    (:meth:`Hooks.claimed`). Anything else passes through unchanged."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._store, name)
        if name.startswith("_") or not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                result = value(*args, **kwargs)
            except Exception as exc:
                for hook in HOOKS:
                    try:
                        hook.store_error(name, exc)
                    except Exception as failure:
                        _failed(hook, failure)
                raise
            if name == "exchange" and (args[1:2] or [kwargs.get("request")])[0] is not None:
                _claimed(len(result[1]))
            elif name == "claim":
                _claimed(len(result))
            return result

        call.__name__ = name
        self.__dict__[name] = call  # the next lookup finds it without __getattr__
        return call


def _claimed(count: int) -> None:
    for hook in HOOKS:
        try:
            hook.claimed(count)
        except Exception as exc:
            _failed(hook, exc)


def observed_store(store: R) -> R:
    """``store`` as the worker should use it: wrapped in :class:`ObservedStore` when hooks are
    installed (install them before ``start()``), else ``store`` itself."""
    if not HOOKS:
        return store
    wrapped: Any = ObservedStore(store)
    return wrapped  # type: ignore[no-any-return]
