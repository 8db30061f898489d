"""Option names, validation and resolution (SPEC §4).

Three scopes take options: a task (``submit``/``cron``/child specs), a registration (``use``) and
the manager. Each name has one validator; resolution is per-task, then the registration's
explicit options, then (for children) the parent's, then the manager's.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from tideflow.core import payloads
from tideflow.errors import InvalidOptionError

__all__ = [
    "MANAGER_OPTIONS",
    "MAX_DURATION_SECONDS",
    "REGISTRATION_OPTIONS",
    "TASK_OPTIONS",
    "UNSET",
    "ManagerSettings",
    "TaskPolicy",
    "latest_time",
    "positive_seconds",
    "resolve_policy",
    "retention_cutoff",
    "schedule_time",
    "validate_options",
]


class _Unset:
    """Tells "not given" from None."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Final = _Unset()

PRIORITY_MIN, PRIORITY_MAX = -20, 20

#: The longest any time option may be: 100 years (36,525 days) in seconds. Every duration
#: (``delay``, ``timeout``, ``retry_interval``, heartbeats, ``expire_time``...) is at most this,
#: and every scheduled time (``run_at``, a cron tick, a retry) at most this far from now, so any
#: stored time stays far inside what ``datetime`` can represent (year 9999).
MAX_DURATION_SECONDS: Final = 36525 * 86400
_BOUND_TEXT = "100 years (3155760000 seconds)"
BACKOFFS = ("fixed", "exponential")
ISOLATIONS = ("thread", "process")


def _number(
    name: str,
    value: Any,
    *,
    minimum: float = 0.0,
    positive: bool = False,
    maximum: float = MAX_DURATION_SECONDS,
) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and math.isnan(value))
    ):
        raise InvalidOptionError(f"option {name!r} must be a number of seconds, got {value!r}")
    if positive and value <= 0:
        raise InvalidOptionError(f"option {name!r} must be greater than 0, got {value!r}")
    if value < minimum:
        raise InvalidOptionError(f"option {name!r} must be >= {minimum:g}, got {value!r}")
    if value > maximum:
        raise InvalidOptionError(
            f"option {name!r} must be at most {_BOUND_TEXT}, got {value!r} seconds"
        )
    return float(value)


def latest_time(now: float | None = None) -> float:
    """The latest POSIX time a task may be scheduled at: ``now`` + :data:`MAX_DURATION_SECONDS`."""
    return (time.time() if now is None else now) + MAX_DURATION_SECONDS


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _seconds(name: str, value: Any) -> float:
    return _number(name, value)


def _positive_seconds(name: str, value: Any) -> float:
    return _number(name, value, positive=True)


def positive_seconds(name: str, value: Any) -> float:
    """``value`` as seconds > 0 (a number or a ``timedelta``), or :class:`InvalidOptionError`."""
    return _positive_seconds(name, value)


def _integer(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOptionError(f"option {name!r} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise InvalidOptionError(f"option {name!r} must be {bounds}, got {value!r}")
    return value


def _priority(name: str, value: Any) -> int:
    return _integer(name, value, PRIORITY_MIN, PRIORITY_MAX)


def _retries(name: str, value: Any) -> int:
    return _integer(name, value, 0)


def _concurrency(name: str, value: Any) -> int:
    return _integer(name, value, 1)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidOptionError(f"option {name!r} must be True or False, got {value!r}")
    return value


def _choice(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if value not in choices:
            raise InvalidOptionError(
                f"option {name!r} must be one of {', '.join(map(repr, choices))}, got {value!r}"
            )
        return str(value)

    return check


def _optional_text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidOptionError(f"option {name!r} must be a non-empty string or None")
    return value


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidOptionError(f"option {name!r} must be a string, got {value!r}")
    return value


def _names(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Iterable):
        raise InvalidOptionError(f"option {name!r} must be a list of strings, got {value!r}")
    items = list(value)
    if not all(isinstance(v, str) and v.strip() for v in items):
        raise InvalidOptionError(f"option {name!r} must be a list of non-empty strings")
    return tuple(sorted(set(items)))


def _statuses(name: str, value: Any) -> tuple[str, ...]:
    known = ("completed", "permanently_failed", "failed", "timeout", "paused", "pending")
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidOptionError(f"{name} must be a list of statuses, got {value!r}")
    items = tuple(value)
    bad = [v for v in items if v not in known]
    if bad or not items:
        raise InvalidOptionError(
            f"{name} must be a non-empty list of {', '.join(known)}; got {value!r}"
        )
    return items


def _delay(name: str, value: Any) -> float:
    if value is None:
        return 0.0
    return _number(name, value)


def _run_at(name: str, value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidOptionError(f"option {name!r} must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidOptionError(
            f"option {name!r} must be timezone-aware (e.g. datetime.now(timezone.utc)),"
            f" got naive {value!r}"
        )
    ts = value.timestamp()
    latest = latest_time()
    if not 0 <= ts <= latest:
        raise InvalidOptionError(
            f"option {name!r} must lie between 1970-01-01T00:00:00+00:00 and {_BOUND_TEXT}"
            f" from now ({_iso(latest)}), got {value.isoformat()}"
        )
    return value


def _exception_classes(name: str, value: Any) -> tuple[type[Exception], ...]:
    items = value if isinstance(value, (tuple, list, set, frozenset)) else (value,)
    bad = [v for v in items if not (isinstance(v, type) and issubclass(v, Exception))]
    if bad or not items:
        raise InvalidOptionError(
            f"option {name!r} must be an exception class or a tuple of them (subclasses of"
            f" Exception, e.g. (ConnectionError, TimeoutError)), got {value!r}"
            + (
                "; to retry nothing, raise tideflow.PermanentError or set max_retries=1"
                if not items
                else ""
            )
        )
    return tuple(dict.fromkeys(items))


def _retention(name: str, value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    return _seconds(name, value)


Validator = Callable[[str, Any], Any]

_VALIDATORS: dict[str, Validator] = {
    "timeout": _positive_seconds,
    "max_retries": _retries,
    "retry_interval": _seconds,
    "retry_backoff": _choice(BACKOFFS),
    "max_retry_interval": _seconds,
    "retry_jitter": _bool,
    "priority": _priority,
    "tag": _optional_text,
    "requires": _names,
    "unique_key": _optional_text,
    "delay": _delay,
    "run_at": _run_at,
    "max_concurrent_tasks": _concurrency,
    "isolation": _choice(ISOLATIONS),
    "description": _text,
    "retry_on": _exception_classes,
    "no_retry_on": _exception_classes,
    "payload_type": payloads.check_type,
    "poll_interval": _positive_seconds,
    "task_heartbeat_interval": _positive_seconds,
    "task_heartbeat_timeout": _positive_seconds,
    "worker_heartbeat_interval": _positive_seconds,
    "worker_heartbeat_timeout": _positive_seconds,
    "worker_id": _optional_text,
    "pod_id": _optional_text,
    "capabilities": _names,
    "allow_unregistered": _bool,
    "max_payload_bytes": lambda n, v: _integer(n, v, 1),
    "recover_running_jobs": _bool,
    "retention": _retention,
    "expire_time": _seconds,
    "retention_interval": _positive_seconds,
}

POLICY_OPTIONS: Final = (
    "priority",
    "timeout",
    "max_retries",
    "retry_interval",
    "retry_backoff",
    "max_retry_interval",
    "retry_jitter",
)
PARENT_INHERITED: Final = ("priority", "timeout", "max_retries", "retry_interval", "retry_backoff")
TASK_OPTIONS: Final = frozenset(
    (*POLICY_OPTIONS, "tag", "requires", "unique_key", "delay", "run_at")
)
REGISTRATION_OPTIONS: Final = frozenset(
    (
        *POLICY_OPTIONS,
        "tag",
        "requires",
        "max_concurrent_tasks",
        "isolation",
        "description",
        "retry_on",
        "no_retry_on",
        "payload_type",
    )
)
MANAGER_OPTIONS: Final = frozenset(
    (
        *POLICY_OPTIONS,
        "max_concurrent_tasks",
        "poll_interval",
        "task_heartbeat_interval",
        "task_heartbeat_timeout",
        "worker_heartbeat_interval",
        "worker_heartbeat_timeout",
        "worker_id",
        "pod_id",
        "capabilities",
        "allow_unregistered",
        "max_payload_bytes",
        "recover_running_jobs",
        "retention",
        "expire_time",
        "retention_interval",
    )
)


def validate_options(
    options: Mapping[str, Any], allowed: frozenset[str], where: str
) -> dict[str, Any]:
    """Validate ``options`` against the names ``allowed`` in scope ``where``.

    Values equal to :data:`UNSET` are dropped. Raises :class:`InvalidOptionError`.
    """
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InvalidOptionError(
            f"unknown option(s) for {where}: {', '.join(unknown)};"
            f" allowed: {', '.join(sorted(allowed))}"
        )
    return {k: _VALIDATORS[k](k, v) for k, v in options.items() if v is not UNSET}


def default_worker_id() -> str:
    """``host-pid-random``: unique per process and per manager."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclasses.dataclass(frozen=True, slots=True)
class TaskPolicy:
    """The resolved retry/timeout/priority policy stored on a task row."""

    priority: int = 0
    timeout: float = 60.0
    max_retries: int = 3
    retry_interval: float = 0.0
    retry_backoff: str = "fixed"
    max_retry_interval: float = 3600.0
    retry_jitter: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class ManagerSettings:
    """A manager's validated options with their defaults."""

    policy: TaskPolicy = TaskPolicy()
    max_concurrent_tasks: int = 10
    poll_interval: float = 1.0
    task_heartbeat_interval: float = 5.0
    task_heartbeat_timeout: float = 30.0
    worker_heartbeat_interval: float = 5.0
    worker_heartbeat_timeout: float = 30.0
    worker_id: str = ""
    pod_id: str | None = None
    capabilities: tuple[str, ...] = ()
    allow_unregistered: bool = False
    max_payload_bytes: int = 1024 * 1024
    recover_running_jobs: bool = True
    expire_time: float = 86400.0
    retention_statuses: tuple[str, ...] = ("completed", "permanently_failed")
    retention_interval: float = 300.0

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ManagerSettings:
        """Build settings from raw manager options (validated here)."""
        return cls().updated(options)

    def updated(self, options: Mapping[str, Any]) -> ManagerSettings:
        """Return a copy with raw ``options`` validated and applied."""
        opts = validate_options(options, MANAGER_OPTIONS, "TaskManager")
        policy = dataclasses.replace(
            self.policy, **{k: opts.pop(k) for k in POLICY_OPTIONS if k in opts}
        )
        retention = opts.pop("retention", None)
        if isinstance(retention, dict):
            unknown = sorted(set(retention) - {"expire_time", "statuses"})
            if unknown:
                raise InvalidOptionError(
                    f"unknown retention key(s) {', '.join(unknown)}; allowed: expire_time, statuses"
                )
            if "expire_time" in retention:
                opts.setdefault("expire_time", _seconds("expire_time", retention["expire_time"]))
            if "statuses" in retention:
                opts["retention_statuses"] = _statuses("retention statuses", retention["statuses"])
        elif retention is not None:
            opts.setdefault("expire_time", retention)
        if not opts.get("worker_id", self.worker_id):
            opts["worker_id"] = default_worker_id()
        return dataclasses.replace(self, policy=policy, **opts)


def retention_cutoff(
    settings: ManagerSettings, policy: Mapping[str, Any] | None, now: float
) -> tuple[float, tuple[str, ...]]:
    """``(before, statuses)`` for a retention run: ``policy`` (``expire_time``, ``statuses``,
    ``now``, any subset) merged over the manager's settings and validated."""
    if policy is None:
        policy = {}
    if not isinstance(policy, Mapping):
        raise InvalidOptionError(f"a retention policy must be a dict, got {policy!r}")
    unknown = sorted(set(policy) - {"expire_time", "statuses", "now"})
    if unknown:
        raise InvalidOptionError(
            f"unknown retention policy key(s) {', '.join(unknown)};"
            " allowed: expire_time, statuses, now"
        )
    expire = settings.expire_time
    if "expire_time" in policy:
        expire = _seconds("expire_time", policy["expire_time"])
    statuses = settings.retention_statuses
    if "statuses" in policy:
        statuses = _statuses("retention statuses", policy["statuses"])
    if "now" in policy:
        given = policy["now"]
        if isinstance(given, datetime):
            _run_at("now", given)  # refuses a naive datetime or a time past the bound
            now = given.timestamp()
        else:
            now = _number("now", given, minimum=-math.inf, maximum=math.inf)
            latest = latest_time()
            if not 0 <= now <= latest:
                raise InvalidOptionError(
                    f"retention 'now' must be a POSIX time between 0 and {_BOUND_TEXT} from now"
                    f" ({latest:.0f}, {_iso(latest)}), got {given!r}"
                )
    return now - expire, statuses


def resolve_policy(
    task: Mapping[str, Any],
    registration: Mapping[str, Any],
    manager: TaskPolicy,
    parent: Mapping[str, Any] | None = None,
) -> TaskPolicy:
    """Resolve the stored policy: task, then registration, then parent, then manager."""
    values: dict[str, Any] = {}
    for name in POLICY_OPTIONS:
        if name in task:
            values[name] = task[name]
        elif name in registration:
            values[name] = registration[name]
        elif parent is not None and name in PARENT_INHERITED:
            values[name] = parent[name]
    return dataclasses.replace(manager, **values) if values else manager


def schedule_time(now: float, delay: float | None, run_at: datetime | None) -> float:
    """The first ``next_run_time`` of a task: ``now + delay`` or ``run_at``."""
    if run_at is not None:
        if delay:
            raise InvalidOptionError("give either 'delay' or 'run_at', not both")
        return run_at.timestamp()
    return now + (delay or 0.0)
