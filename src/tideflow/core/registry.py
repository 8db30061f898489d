"""Handler registration: the forms of ``use`` and the per-type options they carry."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ParamSpec, Protocol, TypeVar, cast

from tideflow.core import payloads
from tideflow.core.lifecycle import NoRetry
from tideflow.core.options import REGISTRATION_OPTIONS, validate_options
from tideflow.errors import (
    HandlerRegistrationError,
    InvalidOptionError,
    PayloadError,
    PermanentError,
)

__all__ = [
    "PayloadT",
    "Registration",
    "Registry",
    "TaskFunction",
    "task_function",
    "validate_name",
]

Handler = Callable[..., Any]

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
#: a handler's payload type, for ``@tm.task(payload_type=...)``
PayloadT = TypeVar("PayloadT")
PayloadT_contra = TypeVar("PayloadT_contra", contravariant=True)


class TaskFunction(Protocol[P, R_co, PayloadT_contra]):
    """What ``@tm.task(...)`` returns: the handler itself, still callable as before (so a test
    can call it with ``make_task``), with ``.submit(payload, **options)``; with
    ``payload_type=Model`` the payload is typed, so mypy refuses a wrong one."""

    __name__: str

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def submit(self, payload: PayloadT_contra = ..., /, **options: Any) -> int:
        """Submit a task to this handler; returns its id."""
        ...


def task_function(fn: Callable[P, R], submit: Callable[..., int]) -> TaskFunction[P, R, Any]:
    """``fn`` itself, given ``.submit`` (what ``@tm.task`` returns)."""
    fn.submit = submit  # type: ignore[attr-defined]
    return cast("TaskFunction[P, R, Any]", fn)


def exception_path(error: BaseException) -> str:
    """``module.Qualname`` of an exception's class (``builtins.ValueError``)."""
    cls = type(error)
    return f"{cls.__module__}.{cls.__qualname__}"


def validate_name(name: Any, what: str = "task name") -> str:
    """A task name is a non-empty string without surrounding blanks."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise HandlerRegistrationError(
            f"{what} must be a non-empty string without leading/trailing spaces, got {name!r}"
        )
    if len(name) > 200:
        raise HandlerRegistrationError(f"{what} is longer than 200 characters: {name[:40]!r}...")
    return name


@dataclasses.dataclass(frozen=True, slots=True)
class Registration:
    """One registered handler with the options given explicitly at registration."""

    name: str
    handler: Handler
    options: Mapping[str, Any]
    is_async: bool
    takes_next: bool

    @property
    def max_concurrent(self) -> int | None:
        value = self.options.get("max_concurrent_tasks")
        return int(value) if value is not None else None

    @property
    def description(self) -> str:
        return str(self.options.get("description", ""))

    @property
    def requires(self) -> tuple[str, ...]:
        return tuple(self.options.get("requires", ()))

    @property
    def payload_type(self) -> type | None:
        """The handler's ``payload_type`` (a pydantic model or a dataclass), if any."""
        value = self.options.get("payload_type")
        return value if isinstance(value, type) else None

    def prepare_payload(self, payload: Any) -> Any:
        """The payload as it is stored: validated and serialised through ``payload_type``
        (:class:`PayloadError` naming the field), or unchanged without one."""
        tp = self.payload_type
        if tp is None:
            return payload
        return payloads.dump(tp, payload, f"the payload of {self.name!r}")

    def no_retry(self, error: BaseException) -> NoRetry | None:
        """Why ``error`` raised by this handler must not be retried, or None if it may be:
        a :class:`PermanentError`, an instance of ``no_retry_on``, or (with ``retry_on``)
        not an instance of ``retry_on``, in that order."""
        if isinstance(error, PermanentError):
            return NoRetry(exception_path(error), "PermanentError")
        never = self.options.get("no_retry_on")
        if never and isinstance(error, never):
            return NoRetry(exception_path(error), "no_retry_on")
        only = self.options.get("retry_on")
        if only and not isinstance(error, only):
            return NoRetry(exception_path(error), "retry_on")
        return None


def _positional_count(handler: Handler) -> int:
    try:
        params = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return 1
    count = 0
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            return 2
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def _is_async(handler: Handler) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )


def make_registration(name: Any, spec: Any, options: Mapping[str, Any]) -> Registration:
    """Build a registration from the function, options-dict or keyword form."""
    name = validate_name(name)
    if isinstance(spec, Mapping):
        if options:
            raise HandlerRegistrationError(
                f"handler {name!r}: give options either in the dict or as keywords, not both"
            )
        if "handler" not in spec:
            raise HandlerRegistrationError(
                f"handler {name!r}: the options dict needs a 'handler' key with a callable"
            )
        options = {k: v for k, v in spec.items() if k != "handler"}
        spec = spec["handler"]
    if not callable(spec):
        raise HandlerRegistrationError(
            f"handler {name!r} must be callable (a function or async function), got {spec!r}"
        )
    # an unknown option NAME is a registration mistake; a bad VALUE is the same
    # InvalidOptionError that submit raises for it (SPEC §4, §13)
    unknown = sorted(str(k) for k in set(options) - REGISTRATION_OPTIONS)
    if unknown:
        raise HandlerRegistrationError(
            f"unknown option(s) for handler {name!r}: {', '.join(unknown)};"
            f" allowed: {', '.join(sorted(REGISTRATION_OPTIONS))}"
        )
    try:
        checked = validate_options(options, REGISTRATION_OPTIONS, f"handler {name!r}")
    except InvalidOptionError as exc:
        raise type(exc)(f"handler {name!r}: {exc}") from None
    if checked.get("isolation") == "process":
        raise HandlerRegistrationError(
            f"handler {name!r}: isolation='process' is not available yet; use 'thread'"
        )
    both = set(checked.get("retry_on", ())) & set(checked.get("no_retry_on", ()))
    if both:
        raise InvalidOptionError(
            f"handler {name!r}: {', '.join(sorted(c.__name__ for c in both))} is in both"
            " retry_on and no_retry_on; name each exception class in one of them (a subclass"
            " in no_retry_on of a class in retry_on is fine: no_retry_on wins)"
        )
    positional = _positional_count(spec)
    if positional < 1:
        raise HandlerRegistrationError(
            f"handler {name!r} must accept the task as its first positional parameter"
        )
    is_async = _is_async(spec)
    tp = checked.get("payload_type")
    return Registration(
        name=name,
        handler=spec if tp is None else _typed(spec, tp, name, is_async),
        options=checked,
        is_async=is_async,
        takes_next=positional >= 2,
    )


def _typed(handler: Handler, tp: type, name: str, is_async: bool) -> Handler:
    """``handler`` receiving ``task.payload`` as an instance of ``tp``. A stored payload that
    does not fit (submitted around the check, or the type changed since) fails the task at
    once: it would not fit on a retry either."""

    def convert(task: Any) -> None:
        try:
            task.payload = payloads.load(
                tp, task.payload, f"the stored payload of task {task.id} ({name})"
            )
        except PayloadError as exc:
            raise PermanentError(str(exc)) from None

    if is_async:

        @functools.wraps(handler)
        async def run_async(task: Any, *rest: Any) -> Any:
            convert(task)
            return await handler(task, *rest)

        return run_async

    @functools.wraps(handler)
    def run(task: Any, *rest: Any) -> Any:
        convert(task)
        return handler(task, *rest)

    return run


class Registry:
    """The handlers of one manager. Changes swap an immutable snapshot (hot reload)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handlers: dict[str, Registration] = {}
        self.version = 0

    def snapshot(self) -> Mapping[str, Registration]:
        """The current handlers; an attempt keeps the registration it started with."""
        return self._handlers

    def get(self, name: str) -> Registration | None:
        return self._handlers.get(name)

    def add(self, registrations: Iterable[Registration]) -> None:
        """Register (or replace) all of ``registrations`` at once."""
        with self._lock:
            handlers = dict(self._handlers)
            for reg in registrations:
                handlers[reg.name] = reg
            self._handlers = handlers
            self.version += 1

    def remove(self, names: Iterable[str]) -> int:
        """Unregister ``names``; returns how many were registered."""
        with self._lock:
            handlers = dict(self._handlers)
            removed = sum(1 for n in set(names) if handlers.pop(n, None) is not None)
            self._handlers = handlers
            self.version += 1
            return removed
