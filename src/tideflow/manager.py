"""The :class:`TaskManager`: the one object users hold (the composition root)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar, overload

from tideflow.core import audit, codec, cron, lifecycle
from tideflow.core.options import (
    TASK_OPTIONS,
    UNSET,
    ManagerSettings,
    positive_seconds,
    resolve_policy,
    retention_cutoff,
    schedule_time,
    validate_options,
)
from tideflow.core.records import task_info, worker_info
from tideflow.core.registry import (
    PayloadT,
    Registration,
    Registry,
    TaskFunction,
    make_registration,
    task_function,
    validate_name,
)
from tideflow.core.states import ATTEMPT_OUTCOMES
from tideflow.core.types import TASK_SORTS, Change, EventFilter, NewTask, TaskFilter, TaskRow
from tideflow.errors import (
    HandlerRegistrationError,
    InvalidOptionError,
    InvalidTransitionError,
    TaskFailedError,
    TaskNotFoundError,
    TideflowError,
    WaitTimeoutError,
)
from tideflow.models import (
    TERMINAL_STATUSES,
    WORKER_STATUSES,
    HandlerInfo,
    Page,
    TaskAttempt,
    TaskAudit,
    TaskEvent,
    TaskInfo,
    WorkerInfo,
    WorkflowAudit,
    parse_status,
)
from tideflow.store import retention
from tideflow.store.factory import open_store
from tideflow.store.protocol import Store
from tideflow.worker import observe
from tideflow.worker.runtime import Worker

__all__ = ["TaskManager"]

log = logging.getLogger("tideflow")

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_RETRY_STRATEGY_KEYS = {
    "max_attempts": "max_retries",
    "backoff": "retry_backoff",
    "interval": "retry_interval",
    "max_interval": "max_retry_interval",
    "jitter": "retry_jitter",
}


def _twin(
    fn: Callable[Concatenate[TaskManager, P], R],
) -> Callable[Concatenate[TaskManager, P], Awaitable[R]]:
    """The ``a``-prefixed coroutine twin of a blocking method (runs it in a thread)."""

    async def twin(self: TaskManager, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(fn, self, *args, **kwargs)

    functools.update_wrapper(twin, fn)
    twin.__name__ = twin.__qualname__ = f"a{fn.__name__}"
    twin.__doc__ = f"Coroutine version of :meth:`TaskManager.{fn.__name__}`."
    return twin


def _check_id(task_id: Any) -> int:
    if isinstance(task_id, bool) or not isinstance(task_id, int):
        if isinstance(task_id, str) and task_id.strip().isdigit():
            return int(task_id)
        raise InvalidOptionError(f"a task id must be an integer, got {task_id!r}")
    return task_id


#: how many times cancel_task re-reads a workflow to cancel descendants that changed meanwhile
_CASCADE_TRIES = 10


def _filter_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidOptionError(
            f"{what} must be a non-empty string, got {value!r}; to list every task use"
            " get_tasks() or query_tasks() without it"
        )
    return value


def _keywords(
    given: Mapping[str, Any] | None,
    what: str,
    method: Callable[..., Any],
    *,
    exclude: Sequence[str] = (),
) -> dict[str, Any]:
    """``given`` checked against the keyword-only parameters of ``method``."""
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise InvalidOptionError(f"{what} must be a dict of query keywords, got {given!r}")
    allowed = {
        name
        for name, p in inspect.signature(method).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in exclude
    }
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise InvalidOptionError(
            f"unknown {what} keyword(s) {', '.join(map(repr, unknown))};"
            f" allowed: {', '.join(sorted(allowed))}"
        )
    return dict(given)


def _filters(given: Mapping[str, Any]) -> dict[str, Any]:
    """A query method's keyword arguments, from its ``locals()`` (without self and the id)."""
    return {k: v for k, v in given.items() if k not in ("self", "task_id", "root_id")}


def _audit_filter(scope: EventFilter, given: Mapping[str, Any]) -> EventFilter:
    """``scope`` (a task or a workflow) with the checked keywords of an event or attempt
    query: ``event_type`` joins ``event_types``, times become POSIX seconds."""
    _check_page(given["limit"], given["offset"], given["order"])
    values = dict(given)
    if "event_types" in values:
        types = values.pop("event_types")
        if isinstance(types, str):
            raise InvalidOptionError(
                f"event_types must be a list of event types, got the string {types!r}"
            )
        types = list(types or [])
        if values.get("event_type") is not None:
            types.append(values["event_type"])
        values["event_types"] = types or None
    values.pop("event_type", None)
    outcome = values.get("outcome")
    if outcome is not None and outcome not in ATTEMPT_OUTCOMES:
        raise InvalidOptionError(
            f"outcome must be one of {', '.join(sorted(ATTEMPT_OUTCOMES))}, got {outcome!r}"
        )
    if not isinstance(values.get("open_only", False), bool):
        raise InvalidOptionError(f"open_only must be True or False, got {values['open_only']!r}")
    for name in ("started_after", "started_before", "ended_after", "ended_before"):
        if name in values:
            values[name] = _ts(values[name], name)
    return dataclasses.replace(scope, **values)


#: the most ids one task query may name
MAX_QUERY_IDS = 10_000
#: the longest search text
MAX_SEARCH = 500


def _check_ids(ids: Any) -> list[int]:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise InvalidOptionError(f"ids must be a list of task ids, got {ids!r}")
    checked = [_check_id(i) for i in ids]
    if len(checked) > MAX_QUERY_IDS:
        raise InvalidOptionError(
            f"ids may name at most {MAX_QUERY_IDS} tasks, got {len(checked)}; page through them"
        )
    return checked


def _check_statuses(statuses: Any) -> list[str]:
    if isinstance(statuses, str) or not isinstance(statuses, Iterable):
        raise InvalidOptionError(
            f"statuses must be a list of statuses, got {statuses!r} (one status: status=...)"
        )
    return [parse_status(s) for s in statuses]


def _search_text(value: Any, what: str) -> str | None:
    """A case-insensitive search text, lower-cased (the store compares it with its lower-cased
    column); None stays None."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidOptionError(f"{what} must be a non-empty string, got {value!r}")
    if "\x00" in value:
        raise InvalidOptionError(f"{what} must not contain a NUL character, got {value[:40]!r}")
    if len(value) > MAX_SEARCH:
        raise InvalidOptionError(
            f"{what} must be at most {MAX_SEARCH} characters, got {len(value)}"
        )
    return value.lower()


def _check_page(limit: int | None, offset: int, order: str) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InvalidOptionError(f"limit must be None or an integer >= 0, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidOptionError(f"offset must be an integer >= 0, got {offset!r}")
    if order not in ("asc", "desc"):
        raise InvalidOptionError(f"order must be 'asc' or 'desc', got {order!r}")


def _ts(value: datetime | float | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidOptionError(f"{name} must be a timezone-aware datetime")
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise InvalidOptionError(f"{name} must be a datetime or POSIX seconds, got {value!r}")


#: the first pause between two reads of a polled wait (SQLite, MySQL); it doubles up to the cap
_POLL_FIRST = 0.01
_POLL_CAP = 0.5
#: the longest single sleep of a wait (a longer or unbounded timeout sleeps in such steps)
_WAIT_STEP = 3600.0
#: ids per read of a wait_many
_READ_CHUNK = 500


def _check_timeout(timeout: Any) -> float | None:
    """``timeout`` of a wait: None (no limit) or a number of seconds >= 0."""
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or math.isnan(timeout)
        or timeout < 0
    ):
        raise InvalidOptionError(
            f"timeout must be None (wait as long as it takes) or a number of seconds >= 0,"
            f" got {timeout!r}"
        )
    return None if math.isinf(timeout) else float(timeout)


def _check_wait_ids(task_ids: Any) -> list[int]:
    """The ids of a ``wait_many``: an iterable (not a string) of positive integer ids."""
    if isinstance(task_ids, (str, bytes)) or not isinstance(task_ids, Iterable):
        raise InvalidOptionError(f"task_ids must be a list of task ids, got {task_ids!r}")
    return [_check_wait_id(task_id) for task_id in task_ids]


def _check_wait_id(task_id: Any) -> int:
    checked = _check_id(task_id)
    if checked <= 0:
        raise InvalidOptionError(f"a task id is a positive integer, got {task_id!r}")
    return checked


def _still_hint(info: TaskInfo) -> str:
    """What a task that is not finished is waiting for, and what to do about it."""
    if info.status == "running":
        return "its handler is still running"
    if info.status == "suspended":
        return f"it waits for its child tasks or for resume_task({info.id})"
    if info.status == "paused":
        return f"it is paused; resume_task({info.id}) lets it run"
    return (
        f"check that a worker with a handler for {info.name!r} is running"
        " (tm.get_unserved_tasks() lists work no active worker can run)"
    )


def _timeout_error(infos: Sequence[TaskInfo], waited: float) -> WaitTimeoutError:
    first = infos[0]
    others = f" (and {len(infos) - 1} more unfinished)" if len(infos) > 1 else ""
    return WaitTimeoutError(
        f"task {first.id} ({first.name}) is still {first.status!r} after waiting {waited:g}s"
        f"{others}: {_still_hint(first)}; wait longer (a larger timeout, or None) or look at"
        f" tm.get_task_audit({first.id})"
    )


def _failed_error(info: TaskInfo) -> TaskFailedError:
    error = info.error
    line = (error or "no error was stored").strip().splitlines()[0] if error else None
    return TaskFailedError(
        f"task {info.id} ({info.name}) ended permanently_failed after {info.attempt}"
        f" attempt(s): {line or 'no error was stored'}. The full error is in .error, its"
        f" history in tm.get_task_audit({info.id}); tm.retry_task({info.id}) runs it again",
        task_id=info.id,
        error=error,
        task=info,
    )


def _outcome(info: TaskInfo) -> Any:
    """The result of a finished task, or :class:`TaskFailedError`."""
    if info.status == "completed":
        return info.result
    raise _failed_error(info)


class _Waiters:
    """Who waits for which task; woken by the store's finish notifications (PostgreSQL NOTIFY).

    One subscription per manager, taken at the first wait and kept until ``close``. A waiter
    registers here before its first read and re-reads after every wake-up, so a task finishing
    between the read and the wait still wakes it; when the store's channel (re)connects it
    reports ``None`` ("anything may have finished") and every waiter re-reads.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._by_id: dict[int, list[Callable[[], None]]] = {}
        self._every: dict[int, Callable[[], None]] = {}  # all wakes, by registration
        self._next = 0
        self._push: bool | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def push(self) -> bool:
        """Whether finishes are pushed (else waits poll); subscribes on first use."""
        with self._lock:
            if self._push is None:
                self._unsubscribe = self._store.watch_finished(self._finished)
                self._push = self._unsubscribe is not None
            return self._push

    def add(self, task_ids: Iterable[int], wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` when one of ``task_ids`` may have finished; returns the removal."""
        ids = set(task_ids)
        with self._lock:
            key = self._next
            self._next += 1
            self._every[key] = wake
            for task_id in ids:
                self._by_id.setdefault(task_id, []).append(wake)

        def remove() -> None:
            with self._lock:
                self._every.pop(key, None)
                for task_id in ids:
                    wakes = self._by_id.get(task_id)
                    if wakes is None:
                        continue
                    with contextlib.suppress(ValueError):
                        wakes.remove(wake)
                    if not wakes:
                        del self._by_id[task_id]

        return remove

    def _finished(self, task_ids: Iterable[int] | None) -> None:
        with self._lock:
            if task_ids is None:
                wakes = list(self._every.values())
            else:
                wakes = [w for task_id in task_ids for w in self._by_id.get(task_id, ())]
        for wake in wakes:
            wake()

    def close(self) -> None:
        """Unsubscribe and wake every waiter (their next read says the manager is closed)."""
        with self._lock:
            unsubscribe, self._unsubscribe = self._unsubscribe, None
            self._push = False
        if unsubscribe is not None:
            unsubscribe()
        self._finished(None)


@dataclasses.dataclass(frozen=True, slots=True)
class _Shape:
    """The part of a task's plan its payload does not change (see ``TaskManager._shape``)."""

    name: str
    registration: Registration | None
    max_payload_bytes: int
    fields: Mapping[str, Any]

    def plan(self, payload: Any) -> NewTask:
        """The insert of a task of this shape carrying ``payload``."""
        if self.registration is not None:
            # a payload_type validates and serialises
            payload = self.registration.prepare_payload(payload)
        text = codec.encode(payload, f"the payload of {self.name!r}", self.max_payload_bytes)
        return lifecycle.new_task(payload=text, **self.fields)


class TaskManager:
    """Registers handlers, creates and controls tasks, answers queries, and runs a worker.

    ``TaskManager("sqlite:tasks.db", max_concurrent_tasks=10, timeout=60)``; the default
    database is a private ``sqlite::memory:``. See SPEC §4 for the options.
    """

    def __init__(self, db: str = "sqlite::memory:", **options: Any) -> None:
        self._settings = ManagerSettings.from_options(options)
        self._store: Store = open_store(db)
        self._registry = Registry()
        self._lock = threading.RLock()
        self._set_up = False
        self._state = "new"  # new -> started -> stopped -> closed
        self._worker: Worker | None = None
        self._paused = False
        self._waiters = _Waiters(self._store)

    def __repr__(self) -> str:
        return f"<TaskManager {self._store.safe_url} {self._state}>"

    # --- lifecycle -----------------------------------------------------------------------------
    @property
    def db_url(self) -> str:
        """The connection string, with any password replaced by ``***``."""
        return self._store.safe_url

    @property
    def worker_id(self) -> str:
        """This manager's worker identity."""
        return self._settings.worker_id

    @property
    def settings(self) -> ManagerSettings:
        """The current validated options."""
        return self._settings

    def setup(self) -> None:
        """Create or migrate the schema (idempotent; ``start()`` calls it)."""
        self._check_open()
        self._store.setup()
        self._set_up = True

    def start(self) -> None:
        """Start the worker in background threads of this process."""
        with self._lock:
            self._check_open()
            if self._state == "started":
                return
            if self._state == "stopped":
                raise TideflowError("a stopped TaskManager cannot be started again; make a new one")
            if not self._set_up:
                self.setup()
            store = observe.observed_store(self._store)  # itself unless instrumented
            worker = Worker(store, self._registry, lambda: self._settings)
            if self._paused:
                worker.pause()
            worker.start()
            self._worker = worker
            self._state = "started"

    def stop(self, timeout: float = 30) -> None:
        """Stop the worker: no new claims, ``timeout`` seconds of grace, then release the rest."""
        with self._lock:
            if self._state != "started" or self._worker is None:
                return
            self._worker.stop(timeout)
            self._state = "stopped"

    def pause(self) -> None:
        """Stop claiming in this process (running attempts go on)."""
        self._paused = True
        if self._worker is not None:
            self._worker.pause()

    def resume(self) -> None:
        """Claim again after :meth:`pause`."""
        self._paused = False
        if self._worker is not None:
            self._worker.resume()

    def close(self) -> None:
        """Stop the worker if running and release the database."""
        with self._lock:
            if self._state == "closed":
                return
            self.stop()
            self._store.close()
            self._state = "closed"
        self._waiters.close()  # waiters wake and find the manager closed

    def __enter__(self) -> TaskManager:
        self.setup()
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self.close()

    async def __aenter__(self) -> TaskManager:
        """``async with TaskManager(url) as tm:`` runs :meth:`setup` and :meth:`start` in a
        thread, so the caller's event loop runs on meanwhile."""
        await asyncio.to_thread(self.__enter__)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """:meth:`stop` (running attempts get their grace time) and :meth:`close`, in a thread."""
        await asyncio.to_thread(self.__exit__, exc_type, exc, tb)

    def _check_open(self) -> None:
        if self._state == "closed":
            raise TideflowError("this TaskManager is closed; make a new one")

    def _ensure_setup(self) -> None:
        if not self._set_up:
            self.setup()

    def _notify(self) -> None:
        if self._worker is not None and not self._paused:
            self._worker.notify()

    # --- registration --------------------------------------------------------------------------
    def use(self, name: str | Mapping[str, Any], handler: Any = None, /, **options: Any) -> None:
        """Register handlers: ``use(name, fn)``, ``use(name, {"handler": fn, ...})``,
        ``use(name, fn, timeout=...)`` or ``use({"a": fn, "b": {...}})``."""
        if isinstance(name, Mapping):
            if handler is not None or options:
                raise HandlerRegistrationError(
                    "the bulk form takes only a dict of {name: handler or options dict}"
                )
            if not name:
                raise HandlerRegistrationError("use() got an empty dict of handlers")
            regs = [make_registration(n, spec, {}) for n, spec in name.items()]
        else:
            if handler is None:
                raise HandlerRegistrationError(
                    f"use({name!r}) needs a handler: a callable or an options dict with 'handler'"
                )
            regs = [make_registration(name, handler, options)]
        self._registry.add(regs)
        self._notify()

    @overload
    def task(
        self, name: str | None = None, /, *, payload_type: type[PayloadT], **options: Any
    ) -> Callable[[Callable[P, R]], TaskFunction[P, R, PayloadT]]: ...

    @overload
    def task(
        self, name: str | None = None, /, **options: Any
    ) -> Callable[[Callable[P, R]], TaskFunction[P, R, Any]]: ...

    def task(
        self, name: str | None = None, /, **options: Any
    ) -> Callable[[Callable[P, R]], TaskFunction[P, R, Any]]:
        """Decorator form of :meth:`use`; the function stays itself and gains
        ``.submit(payload, **opts)``, typed by ``payload_type=Model`` (mypy refuses a wrong
        payload)."""

        def decorate(fn: Callable[P, R]) -> TaskFunction[P, R, Any]:
            task_name = name if name is not None else getattr(fn, "__name__", None)
            self._registry.add([make_registration(task_name, fn, options)])

            def submit(payload: Any = None, **opts: Any) -> int:
                return self.submit(str(task_name), payload, **opts)

            self._notify()
            return task_function(fn, submit)

        return decorate

    def unuse(self, names: str | Iterable[str]) -> int:
        """Unregister handlers; returns how many were registered."""
        if isinstance(names, str):
            names = [names]
        return self._registry.remove(names)

    def get_task_info(self, name: str) -> HandlerInfo | None:
        """What is registered under ``name`` here (None if nothing)."""
        reg = self._registry.get(name)
        if reg is None:
            return None
        options = {k: v for k, v in reg.options.items() if k != "description"}
        return HandlerInfo(name=reg.name, description=reg.description, options=options)

    def configure_worker(
        self,
        *,
        max_concurrency: Any = UNSET,
        capabilities: Any = UNSET,
        retry_strategy: Any = UNSET,
        pod_id: Any = UNSET,
    ) -> None:
        """Set concurrency, capabilities, retry defaults and pod id (``configureWorker``)."""
        opts: dict[str, Any] = {}
        if pod_id is not UNSET:
            opts["pod_id"] = pod_id
        if max_concurrency is not UNSET:
            opts["max_concurrent_tasks"] = max_concurrency
        if capabilities is not UNSET:
            opts["capabilities"] = capabilities
        if retry_strategy is not UNSET:
            if not isinstance(retry_strategy, Mapping):
                raise InvalidOptionError("retry_strategy must be a dict")
            unknown = sorted(set(retry_strategy) - set(_RETRY_STRATEGY_KEYS))
            if unknown:
                raise InvalidOptionError(
                    f"unknown retry_strategy key(s) {', '.join(unknown)};"
                    f" allowed: {', '.join(sorted(_RETRY_STRATEGY_KEYS))}"
                )
            for key, value in retry_strategy.items():
                opts[_RETRY_STRATEGY_KEYS[key]] = value
        self._settings = self._settings.updated(opts)
        if self._worker is not None:
            self._worker.refresh()

    # --- creating tasks ------------------------------------------------------------------------
    def _registration_for(self, name: Any) -> Registration | None:
        name = validate_name(name)
        reg = self._registry.get(name)
        if reg is None and not self._settings.allow_unregistered:
            raise HandlerRegistrationError(
                f"no handler is registered for {name!r}: register one with use() or create the"
                " TaskManager with allow_unregistered=True to enqueue for other workers"
            )
        return reg

    def _plan(
        self,
        name: Any,
        payload: Any,
        options: Mapping[str, Any],
        *,
        now: float,
        cron_expr: str | None = None,
        tz: str | None = None,
    ) -> NewTask:
        return self._shape(name, options, now=now, cron_expr=cron_expr, tz=tz).plan(payload)

    def _shape(
        self,
        name: Any,
        options: Mapping[str, Any],
        *,
        now: float,
        cron_expr: str | None = None,
        tz: str | None = None,
    ) -> _Shape:
        """What every task of ``name`` with ``options`` submitted at ``now`` shares: the
        validated options, the resolved policy and the due time (checked once per shape)."""
        reg = self._registration_for(name)
        opts = validate_options(options, TASK_OPTIONS, f"task {name!r}")
        reg_opts = reg.options if reg is not None else {}
        policy = resolve_policy(opts, reg_opts, self._settings.policy)
        if cron_expr is not None:
            if "delay" in opts or "run_at" in opts:
                raise InvalidOptionError("cron tasks run on their schedule: no delay or run_at")
            assert tz is not None
            next_run = cron.next_tick(cron_expr, tz, now)
        else:
            next_run = schedule_time(now, opts.get("delay"), opts.get("run_at"))
        return _Shape(
            name=name,
            registration=reg,
            max_payload_bytes=self._settings.max_payload_bytes,
            fields={
                "name": name,
                "type": "cron" if cron_expr is not None else "async",
                "policy": policy,
                "next_run_time": next_run,
                "now": now,
                "tag": opts.get("tag", reg_opts.get("tag")),
                "requires": opts.get("requires", reg_opts.get("requires", ())),
                "unique_key": opts.get("unique_key"),
                "cron_expr": cron_expr,
                "tz": tz,
            },
        )

    def submit(self, name: str, payload: Any = None, /, **options: Any) -> int:
        """Create a one-off task; returns its id (fib-flow's ``async()``)."""
        self._check_open()
        task = self._plan(name, payload, options, now=self._store.clock())
        self._ensure_setup()
        (task_id,) = self._insert([task])
        self._notify()
        return task_id

    def _insert(self, tasks: list[NewTask]) -> list[int]:
        if observe.HOOKS:  # tracing: a producer span per task, its context stored with it
            return observe.publish(self._store.insert_tasks, tasks)
        return self._store.insert_tasks(tasks)

    def submit_many(
        self,
        items: Iterable[tuple[str, Any] | tuple[str, Any, Mapping[str, Any]] | Mapping[str, Any]],
        /,
        **options: Any,
    ) -> list[int]:
        """Create many tasks in one transaction. Items are ``(name, payload)``,
        ``(name, payload, options)`` or ``{"name":, "payload":, **options}``; ``options`` here
        apply to every item (an item's own options win)."""
        self._check_open()
        now = self._store.clock()
        planned: list[NewTask] = []
        shapes: dict[tuple[Any, ...], _Shape] = {}  # most items share a name and options
        for index, item in enumerate(items):
            if isinstance(item, Mapping):
                spec = dict(item)
                if "name" not in spec:
                    raise InvalidOptionError(f"submit_many item #{index} has no 'name'")
                name, payload = spec.pop("name"), spec.pop("payload", None)
                own: Mapping[str, Any] = spec
            elif isinstance(item, tuple) and len(item) in (2, 3):
                name, payload = item[0], item[1]
                own = item[2] if len(item) == 3 else {}
                if not isinstance(own, Mapping):
                    raise InvalidOptionError(f"submit_many item #{index}: options must be a dict")
            else:
                raise InvalidOptionError(
                    f"submit_many item #{index} must be (name, payload), (name, payload, options)"
                    f" or a dict, got {item!r}"
                )
            merged = {**options, **own}
            try:
                key: tuple[Any, ...] | None = (name, *merged.items())
                shape = shapes.get(key)  # type: ignore[arg-type]
            except TypeError:  # an option value that cannot be hashed: no reuse
                key, shape = None, None
            if shape is None:
                shape = self._shape(name, merged, now=now)
                if key is not None:
                    shapes[key] = shape
            planned.append(shape.plan(payload))
        if not planned:
            return []
        self._ensure_setup()
        ids = self._insert(planned)
        self._notify()
        return ids

    def cron(
        self, name: str, expr: str, payload: Any = None, /, *, tz: str | None = None, **options: Any
    ) -> int:
        """Create a cron task: 5 fields, or 6 with seconds first; read in zone ``tz``."""
        self._check_open()
        cron.validate_cron(expr)
        zone = cron.validate_tz(tz)
        task = self._plan(name, payload, options, now=self._store.clock(), cron_expr=expr, tz=zone)
        self._ensure_setup()
        (task_id,) = self._insert([task])
        self._notify()
        return task_id

    # --- controlling tasks ---------------------------------------------------------------------
    def _control(self, task_id: Any, plan: Callable[[TaskRow, float], list[Change]]) -> None:
        task_id = _check_id(task_id)
        self._ensure_setup()
        for _ in range(10):
            row = self._store.get_task(task_id)
            if row is None:
                raise TaskNotFoundError(f"no task with id {task_id}")
            changes = plan(row, self._store.clock())
            if self._store.apply(changes)[0]:
                self._notify()
                if self._worker is not None and row.status == "running":
                    self._worker.refresh()
                return
        raise InvalidTransitionError(f"task {task_id} kept changing while being updated; try again")

    def resume_task(self, task_id: int, resume_reason: str | None = None) -> None:
        """Resume a paused task or an explicit suspension (``stage + 1`` for the latter)."""
        self._control(task_id, lambda row, now: [lifecycle.resume(row, resume_reason, now)])

    def cancel_task(self, task_id: int, reason: str | None = None) -> None:
        """Cancel a task and its unfinished descendants (they end ``permanently_failed``).

        Returns once none of them is live; raises :class:`InvalidTransitionError` naming the
        descendants that kept changing (claimed, finished, spawning) through every try.
        """
        task_id = _check_id(task_id)
        child_reason = reason or "parent cancelled"

        def cascade(now: float) -> list[Change]:
            return [
                lifecycle.cancel(child, child_reason, now)
                for child in self._store.descendants(task_id)
                if child.status not in TERMINAL_STATUSES
            ]

        self._control(task_id, lambda row, now: [lifecycle.cancel(row, reason, now), *cascade(now)])
        # a descendant that changed between the read and the write (claimed, finished, or
        # spawned children of its own) lost its guard: read the tree again and cancel what is
        # still live, until nothing is
        for _ in range(_CASCADE_TRIES):
            changes = cascade(self._store.clock())
            if not changes:
                return
            self._store.apply(changes)
        left = [c.task_id for c in cascade(self._store.clock())]
        if not left:
            return
        raise InvalidTransitionError(
            f"task {task_id} is cancelled, but its descendant(s)"
            f" {', '.join(map(str, sorted(left)))} changed every time they were cancelled"
            f" ({_CASCADE_TRIES} tries) and are still live: cancel them with cancel_task(id)"
        )

    def pause_task(self, task_id: int) -> None:
        """Pause a task or cron schedule until :meth:`resume_task`."""
        self._control(task_id, lambda row, now: [lifecycle.pause(row, now)])

    def retry_task(self, task_id: int) -> None:
        """Give a permanently failed task a fresh set of attempts from where it stopped."""
        self._control(task_id, lambda row, now: [lifecycle.retry_task(row, now)])

    # --- queries -------------------------------------------------------------------------------
    def _rows(self, query: TaskFilter) -> tuple[list[TaskRow], int]:
        self._check_open()
        self._ensure_setup()
        return self._store.query_tasks(query)

    def get_task(self, task_id: int) -> TaskInfo | None:
        """One task, or None if there is no such id."""
        task_id = _check_id(task_id)
        self._check_open()
        self._ensure_setup()
        row = self._store.get_task(task_id)
        return None if row is None else task_info(row)

    def get_tasks(
        self, *, tag: str | None = None, status: str | None = None, name: str | None = None
    ) -> list[TaskInfo]:
        """Tasks matching every given filter, oldest first."""
        status = parse_status(status) if status is not None else None
        tag = _filter_text(tag, "tag") if tag is not None else None
        name = _filter_text(name, "name") if name is not None else None
        rows, _ = self._rows(TaskFilter(tag=tag, status=status, name=name))
        return [task_info(r) for r in rows]

    def get_tasks_by_name(self, name: str) -> list[TaskInfo]:
        """Tasks of one type."""
        return self.get_tasks(name=_filter_text(name, "get_tasks_by_name() name"))

    def get_tasks_by_status(self, status: str, suspend_reason: str | None = None) -> list[TaskInfo]:
        """Tasks in one status (suspended ones optionally by reason)."""
        rows, _ = self._rows(TaskFilter(status=parse_status(status), suspend_reason=suspend_reason))
        return [task_info(r) for r in rows]

    def get_tasks_by_tag(self, tag: str) -> list[TaskInfo]:
        """Tasks with one tag."""
        return self.get_tasks(tag=_filter_text(tag, "get_tasks_by_tag() tag"))

    def get_child_tasks(self, parent_id: int) -> list[TaskInfo]:
        """The direct children of a task, in creation order."""
        rows, _ = self._rows(TaskFilter(parent_id=_check_id(parent_id)))
        return [task_info(r) for r in rows]

    def get_task_stats_by_tag(self, tag: str, status: str | None = None) -> list[dict[str, Any]]:
        """Counts of tasks with ``tag`` per name and status."""
        self._check_open()
        self._ensure_setup()
        return self._store.tag_stats(tag, parse_status(status) if status is not None else None)

    def get_task_stats(self) -> list[dict[str, Any]]:
        """Counts of tasks per name and status: ``[{"name", "status", "count"}]``."""
        self._check_open()
        self._ensure_setup()
        return [
            {"name": name, "status": status, "count": count}
            for name, status, count in self._store.task_counts()
        ]

    def get_unserved_tasks(self) -> list[dict[str, Any]]:
        """Tasks waiting to be claimed that no active worker can run, grouped by name and
        required capabilities: ``[{"name", "requires", "count", "reason"}]``, where ``reason``
        says what is missing (a handler, or which capabilities)."""
        self._check_open()
        self._ensure_setup()
        workers = self.get_workers("active")
        out: list[dict[str, Any]] = []
        for name, requires, count in self._store.waiting_counts():
            needed = set(requires.split(",")) if requires else set()
            able = [set(w.capabilities) for w in workers if name in w.handlers]
            if any(needed <= caps for caps in able):
                continue
            if not able:
                reason = f"no active worker has a handler for {name!r}"
            else:
                missing = min((needed - caps for caps in able), key=len)
                reason = "no active worker with a handler for it has the capabilities " + ", ".join(
                    sorted(missing)
                )
            out.append({"name": name, "requires": sorted(needed), "count": count, "reason": reason})
        return out

    def get_throughput(self, window: float = 3600.0, bucket: float = 60.0) -> list[dict[str, Any]]:
        """Tasks finished per ``bucket`` seconds over the last ``window`` seconds, oldest first:
        ``[{"start", "completed", "permanently_failed"}]``, one entry per bucket (zeros
        included). A task counts where it finished last (a cron task that completed and is
        pending again is not counted)."""
        window = positive_seconds("window", window)
        bucket = positive_seconds("bucket", bucket)
        if window / bucket > 10_000:
            raise InvalidOptionError(
                f"window / bucket must be at most 10000 buckets, got {window / bucket:.0f}"
            )
        self._check_open()
        self._ensure_setup()
        now = self._store.clock()
        first = int((now - window) // bucket) + 1
        last = int(now // bucket)
        finished = ("completed", "permanently_failed")
        counts = {
            (slot, status): n
            for slot, status, n in self._store.finished_histogram(first * bucket, bucket, finished)
        }
        return [
            {
                "start": datetime.fromtimestamp(slot * bucket, UTC),
                **{status: counts.get((slot, status), 0) for status in finished},
            }
            for slot in range(first, last + 1)
        ]

    def delete_tasks(
        self,
        *,
        ids: Sequence[int] | None = None,
        name: str | None = None,
        status: str | None = None,
        tag: str | None = None,
    ) -> int:
        """Delete matching tasks with their events and attempts; at least one filter is needed."""
        if ids is None and name is None and status is None and tag is None:
            raise InvalidOptionError(
                "delete_tasks() needs at least one filter (ids, name, status or tag)"
            )
        query = TaskFilter(
            ids=[_check_id(i) for i in ids] if ids is not None else None,
            name=name,
            status=parse_status(status) if status is not None else None,
            tag=tag,
        )
        self._check_open()
        self._ensure_setup()
        return self._store.delete_tasks(query)

    def run_retention(self, policy: Mapping[str, Any] | None = None) -> dict[str, int]:
        """Delete expired workflows now, in bounded batches: a root task and everything under
        it go together once every one of them is in the retention statuses and was last active
        more than ``expire_time`` ago (running and suspended tasks never are; nor, therefore,
        the parents of live children). ``policy`` (``expire_time``, ``statuses``, ``now``, any
        subset) overrides the manager's ``retention`` for this run. Returns
        ``{"tasks_deleted", "events_deleted", "attempts_deleted"}``."""
        before, statuses = retention_cutoff(self._settings, policy, self._store.clock())
        self._check_open()
        self._ensure_setup()
        return retention.sweep(self._store, before, statuses)

    def query_tasks(
        self,
        *,
        name: str | None = None,
        status: str | None = None,
        type: str | None = None,
        tag: str | None = None,
        worker_id: str | None = None,
        parent_id: int | None = None,
        root_id: int | None = None,
        workflow_root_id: int | None = None,
        ids: Sequence[int] | None = None,
        statuses: Sequence[str] | None = None,
        name_prefix: str | None = None,
        tag_contains: str | None = None,
        worker_contains: str | None = None,
        created_after: datetime | float | None = None,
        created_before: datetime | float | None = None,
        finished_after: datetime | float | None = None,
        finished_before: datetime | float | None = None,
        sort: str = "id",
        limit: int | None = None,
        offset: int = 0,
        order: str = "asc",
    ) -> Page[TaskInfo]:
        """Tasks matching every given filter, one page at a time.

        Besides the exact filters: ``ids`` (any of them), ``statuses`` (any of them);
        case-insensitive searches ``name_prefix`` (the name starts with it), ``tag_contains``
        and ``worker_contains`` (the tag / the worker id contains it); time ranges
        ``created_after`` <= created_at < ``created_before`` and ``finished_after`` <= the
        time a task completed or permanently failed < ``finished_before`` (aware datetimes or
        POSIX seconds; a finished range matches finished tasks only). ``sort`` is one of
        ``id, name, status, priority, tag, worker, created, started, finished, progress,
        duration`` (``order`` its direction; tasks without a value come last, ties by id).
        """
        _check_page(limit, offset, order)
        if type is not None and type not in ("async", "cron"):
            raise InvalidOptionError(f"type must be 'async' or 'cron', got {type!r}")
        if sort not in TASK_SORTS:
            raise InvalidOptionError(f"sort must be one of {', '.join(TASK_SORTS)}, got {sort!r}")
        query = TaskFilter(
            name=name,
            status=parse_status(status) if status is not None else None,
            type=type,
            tag=tag,
            worker_id=worker_id,
            parent_id=parent_id,
            root_id=root_id if root_id is not None else workflow_root_id,
            ids=_check_ids(ids) if ids is not None else None,
            statuses=_check_statuses(statuses) if statuses is not None else None,
            name_prefix=_search_text(name_prefix, "name_prefix"),
            tag_contains=_search_text(tag_contains, "tag_contains"),
            worker_contains=_search_text(worker_contains, "worker_contains"),
            created_after=_ts(created_after, "created_after"),
            created_before=_ts(created_before, "created_before"),
            finished_after=_ts(finished_after, "finished_after"),
            finished_before=_ts(finished_before, "finished_before"),
            sort=sort,
            limit=limit,
            offset=offset,
            order=order,
        )
        rows, total = self._rows(query)
        return Page(
            items=[task_info(r) for r in rows],
            total=total,
            limit=limit,
            offset=offset,
            has_more=offset + len(rows) < total,
        )

    def query_task_events(
        self,
        task_id: int,
        *,
        event_type: str | None = None,
        event_types: Sequence[str] | None = None,
        worker_id: str | None = None,
        attempt: int | None = None,
        stage: int | None = None,
        started_after: datetime | float | None = None,
        started_before: datetime | float | None = None,
        limit: int | None = None,
        offset: int = 0,
        order: str = "asc",
    ) -> Page[TaskEvent]:
        """The audit events of one task (``started_*`` bound the event time)."""
        query = _audit_filter(EventFilter(task_id=_check_id(task_id)), _filters(locals()))
        return self._page_of(self._store.query_events, query)

    def query_workflow_events(
        self,
        root_id: int,
        *,
        event_type: str | None = None,
        event_types: Sequence[str] | None = None,
        worker_id: str | None = None,
        attempt: int | None = None,
        stage: int | None = None,
        started_after: datetime | float | None = None,
        started_before: datetime | float | None = None,
        limit: int | None = None,
        offset: int = 0,
        order: str = "asc",
    ) -> Page[TaskEvent]:
        """The audit events of every task of the workflow rooted at ``root_id``."""
        query = _audit_filter(EventFilter(root_id=_check_id(root_id)), _filters(locals()))
        return self._page_of(self._store.query_events, query)

    def query_task_attempts(
        self,
        task_id: int,
        *,
        worker_id: str | None = None,
        outcome: str | None = None,
        started_after: datetime | float | None = None,
        started_before: datetime | float | None = None,
        ended_after: datetime | float | None = None,
        ended_before: datetime | float | None = None,
        open_only: bool = False,
        limit: int | None = None,
        offset: int = 0,
        order: str = "asc",
    ) -> Page[TaskAttempt]:
        """The execution rounds of one task (``open_only``: only the one running now)."""
        query = _audit_filter(EventFilter(task_id=_check_id(task_id)), _filters(locals()))
        return self._page_of(self._store.query_attempts, query)

    def query_workflow_attempts(
        self,
        root_id: int,
        *,
        worker_id: str | None = None,
        outcome: str | None = None,
        started_after: datetime | float | None = None,
        started_before: datetime | float | None = None,
        ended_after: datetime | float | None = None,
        ended_before: datetime | float | None = None,
        open_only: bool = False,
        limit: int | None = None,
        offset: int = 0,
        order: str = "asc",
    ) -> Page[TaskAttempt]:
        """The execution rounds of every task of the workflow rooted at ``root_id``."""
        query = _audit_filter(EventFilter(root_id=_check_id(root_id)), _filters(locals()))
        return self._page_of(self._store.query_attempts, query)

    def _page_of(
        self, run: Callable[[EventFilter], tuple[list[T], int]], query: EventFilter
    ) -> Page[T]:
        self._check_open()
        self._ensure_setup()
        items, total = run(query)
        return Page(items, total, query.limit, query.offset, query.offset + len(items) < total)

    def get_task_audit(
        self,
        task_id: int,
        *,
        events: Mapping[str, Any] | None = None,
        attempts: Mapping[str, Any] | None = None,
    ) -> TaskAudit:
        """A task with its events and attempts; ``events`` and ``attempts`` are the keywords of
        :meth:`query_task_events` and :meth:`query_task_attempts` as dicts. An unknown id gives
        ``task=None`` and empty pages."""
        event_filters = _keywords(events, "events", self.query_task_events)
        attempt_filters = _keywords(attempts, "attempts", self.query_task_attempts)
        task_id = _check_id(task_id)
        return TaskAudit(
            task=self.get_task(task_id),
            events=self.query_task_events(task_id, **event_filters),
            attempts=self.query_task_attempts(task_id, **attempt_filters),
        )

    def get_workflow_audit(
        self,
        root_id: int,
        *,
        tasks: Mapping[str, Any] | None = None,
        events: Mapping[str, Any] | None = None,
    ) -> WorkflowAudit:
        """A workflow's root with its tasks and events; ``tasks`` and ``events`` are the keywords
        of :meth:`query_tasks` (without the root filters) and :meth:`query_workflow_events` as
        dicts. An unknown id gives ``root_task=None`` and empty pages."""
        task_filters = _keywords(
            tasks, "tasks", self.query_tasks, exclude=("root_id", "workflow_root_id")
        )
        event_filters = _keywords(events, "events", self.query_workflow_events)
        root_id = _check_id(root_id)
        root = self._workflow_root(root_id)
        return WorkflowAudit(
            root_task=root,
            tasks=self.query_tasks(workflow_root_id=root_id, **task_filters),
            events=self.query_workflow_events(root_id, **event_filters),
        )

    def _workflow_root(self, root_id: int) -> TaskInfo | None:
        """The root task ``root_id`` (None if unknown); a task inside a workflow is refused."""
        root = self.get_task(root_id)
        if root is not None and root.root_id != root.id:
            raise InvalidOptionError(
                f"task {root.id} is not a workflow root: it belongs to the workflow rooted at"
                f" {root.root_id}; pass that id"
            )
        return root

    def get_workflow_audit_summary(self, root_id: int) -> dict[str, Any]:
        """Counts, timings, failed tasks, the critical path and the 5 slowest attempts of the
        workflow rooted at ``root_id`` (SPEC Appendix A), from the rows still stored. It reads
        the whole workflow: meant for diagnosis, not for a hot path."""
        root_id = _check_id(root_id)
        root = self._workflow_root(root_id)
        return audit.workflow_summary(
            root,
            self.query_tasks(workflow_root_id=root_id).items,
            self.query_workflow_attempts(root_id).items,
            self.query_workflow_events(root_id).items,
        )

    def get_workers(self, status: str | None = None) -> list[WorkerInfo]:
        """Registered workers, optionally with one status."""
        if status is not None and status not in WORKER_STATUSES:
            raise InvalidOptionError(
                f"worker status must be one of {', '.join(WORKER_STATUSES)}, got {status!r}"
            )
        self._check_open()
        self._ensure_setup()
        return [worker_info(r) for r in self._store.list_workers(status)]

    def get_worker(self, worker_id: str) -> WorkerInfo | None:
        """One worker, or None."""
        for worker in self.get_workers():
            if worker.worker_id == worker_id:
                return worker
        return None

    def get_change_mark(self) -> str:
        """A short opaque text that differs once tasks were created, changed (status, progress,
        any audit event) or deleted through this manager, or workers came or went. Cheap (a few
        lookups at the ends of primary keys): poll it to learn when to read again, e.g. the
        dashboard's live updates, one poll for all its readers. Deletions made elsewhere show
        at the next change."""
        self._check_open()
        self._ensure_setup()
        return self._store.change_mark()

    def watch_changes(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake()`` (from another thread) soon after tasks changed, and whenever the
        channel reconnects; returns a function that stops it. Only where the database pushes
        (PostgreSQL LISTEN/NOTIFY); elsewhere it returns None: poll :meth:`get_change_mark`."""
        self._check_open()
        return self._store.watch_changes(wake)

    # --- waiting for results -------------------------------------------------------------------
    def _read_waited(self, task_ids: Sequence[int]) -> dict[int, TaskInfo]:
        """The current snapshots of ``task_ids``; TaskNotFoundError names any that is gone."""
        self._check_open()
        self._ensure_setup()
        if len(task_ids) == 1:
            row = self._store.get_task(task_ids[0])
            rows = [] if row is None else [row]
        else:
            rows = []
            for start in range(0, len(task_ids), _READ_CHUNK):
                chunk = task_ids[start : start + _READ_CHUNK]
                rows += self._store.query_tasks(TaskFilter(ids=chunk))[0]
        found = {row.id: task_info(row) for row in rows}
        missing = [task_id for task_id in task_ids if task_id not in found]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise TaskNotFoundError(
                f"no task with id {missing[0]}{more} to wait for: it was never created here or"
                " was deleted (retention deletes finished workflows after expire_time)"
            )
        return found

    def wait_many(self, task_ids: Iterable[int], timeout: float | None = None) -> list[TaskInfo]:
        """Block until every task of ``task_ids`` is ``completed`` or ``permanently_failed``;
        their snapshots, in the order given. Raises :class:`WaitTimeoutError` (also a
        builtin ``TimeoutError``) naming a task still unfinished after ``timeout`` seconds
        (None: no limit), :class:`TaskNotFoundError` for an unknown id.

        On PostgreSQL the wait sleeps until a NOTIFY says one of them finished (no polling
        queries); SQLite and MySQL re-read with a backoff from 10 ms up to 0.5 s.
        """
        ids = _check_wait_ids(task_ids)
        limit = _check_timeout(timeout)
        self._check_open()
        if not ids:
            return []
        pending = set(ids)
        done: dict[int, TaskInfo] = {}
        push = self._waiters.push()
        woken = threading.Event()
        remove = self._waiters.add(pending, woken.set)
        try:
            started = time.monotonic()
            delay = _POLL_FIRST
            while True:
                woken.clear()  # before the read: a finish after it wakes the wait below
                self._wait_read(pending, done, started, limit)
                if not pending:
                    return [done[task_id] for task_id in ids]
                step = _WAIT_STEP if push else delay
                if limit is not None:
                    step = min(step, max(0.0, started + limit - time.monotonic()))
                woken.wait(step)
                delay = min(delay * 2, _POLL_CAP)
        finally:
            remove()

    def _wait_read(
        self, pending: set[int], done: dict[int, TaskInfo], started: float, limit: float | None
    ) -> None:
        """Read the pending tasks once; move the finished ones from ``pending`` to ``done``;
        past ``limit`` seconds since ``started`` with some unfinished, raise the timeout."""
        expired = limit is not None and time.monotonic() - started >= limit
        unfinished: list[TaskInfo] = []
        for task_id, info in self._read_waited(sorted(pending)).items():
            if info.status in TERMINAL_STATUSES:
                done[task_id] = info
                pending.discard(task_id)
            else:
                unfinished.append(info)
        if unfinished and expired:
            assert limit is not None
            raise _timeout_error(unfinished, limit)

    def wait(self, task_id: int, timeout: float | None = None) -> TaskInfo:
        """Block until the task is ``completed`` or ``permanently_failed``; its final snapshot.

        ``timeout`` seconds (None: no limit) past which :class:`WaitTimeoutError` (also a
        builtin ``TimeoutError``) names the task and its status; an unknown id raises
        :class:`TaskNotFoundError`. See :meth:`wait_many`.
        """
        checked = _check_wait_id(task_id)
        return self.wait_many([checked], timeout)[0]

    def result(self, task_id: int, timeout: float | None = None) -> Any:
        """:meth:`wait`, then the task's result; :class:`TaskFailedError` (carrying the
        stored ``error`` and the ``task``) when it ended ``permanently_failed``."""
        return _outcome(self.wait(task_id, timeout))

    async def await_many(
        self, task_ids: Iterable[int], timeout: float | None = None
    ) -> list[TaskInfo]:
        """Coroutine version of :meth:`wait_many`: the caller's event loop runs on while it
        waits (reads run in a thread; the wait itself is an ``asyncio.Event``)."""
        ids = _check_wait_ids(task_ids)
        limit = _check_timeout(timeout)
        self._check_open()
        if not ids:
            return []
        pending = set(ids)
        done: dict[int, TaskInfo] = {}
        push = await asyncio.to_thread(self._waiters.push)
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()

        def wake() -> None:  # from the listener's thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(woken.set)

        remove = self._waiters.add(pending, wake)
        try:
            started = time.monotonic()
            delay = _POLL_FIRST
            while True:
                woken.clear()
                await asyncio.to_thread(self._wait_read, pending, done, started, limit)
                if not pending:
                    return [done[task_id] for task_id in ids]
                step = _WAIT_STEP if push else delay
                if limit is not None:
                    step = min(step, max(0.0, started + limit - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), step)
                delay = min(delay * 2, _POLL_CAP)
        finally:
            remove()

    async def await_task(self, task_id: int, timeout: float | None = None) -> TaskInfo:
        """Coroutine version of :meth:`wait` (never blocks the caller's event loop)."""
        checked = _check_wait_id(task_id)
        return (await self.await_many([checked], timeout))[0]

    async def aresult(self, task_id: int, timeout: float | None = None) -> Any:
        """Coroutine version of :meth:`result`."""
        return _outcome(await self.await_task(task_id, timeout))

    # --- async twins ---------------------------------------------------------------------------
    asetup = _twin(setup)
    asubmit = _twin(submit)
    asubmit_many = _twin(submit_many)
    acron = _twin(cron)
    aresume_task = _twin(resume_task)
    acancel_task = _twin(cancel_task)
    apause_task = _twin(pause_task)
    aretry_task = _twin(retry_task)
    aget_task = _twin(get_task)
    aget_tasks = _twin(get_tasks)
    aget_tasks_by_name = _twin(get_tasks_by_name)
    aget_tasks_by_status = _twin(get_tasks_by_status)
    aget_tasks_by_tag = _twin(get_tasks_by_tag)
    aget_child_tasks = _twin(get_child_tasks)
    aget_task_stats_by_tag = _twin(get_task_stats_by_tag)
    adelete_tasks = _twin(delete_tasks)
    aget_task_stats = _twin(get_task_stats)
    aget_throughput = _twin(get_throughput)
    aget_unserved_tasks = _twin(get_unserved_tasks)
    arun_retention = _twin(run_retention)
    aquery_tasks = _twin(query_tasks)
    aquery_task_events = _twin(query_task_events)
    aquery_task_attempts = _twin(query_task_attempts)
    aquery_workflow_events = _twin(query_workflow_events)
    aquery_workflow_attempts = _twin(query_workflow_attempts)
    aget_task_audit = _twin(get_task_audit)
    aget_workflow_audit = _twin(get_workflow_audit)
    aget_workflow_audit_summary = _twin(get_workflow_audit_summary)
    aget_workers = _twin(get_workers)
    aget_worker = _twin(get_worker)
    aget_change_mark = _twin(get_change_mark)
    astart = _twin(start)
    astop = _twin(stop)
    aclose = _twin(close)
