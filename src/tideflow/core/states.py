"""The task state machine: one table of transitions (SPEC §5). Nothing else picks a status.

Each :class:`Transition` names a trigger, the statuses it may start from, an optional guard (a
named predicate over :class:`Facts`), the status it leads to, the events it writes in order and
what it does to the attempt row. :func:`transition` returns the one matching row or raises
:class:`InvalidTransitionError`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable
from typing import NamedTuple

from tideflow.errors import InvalidTransitionError
from tideflow.models import Status

__all__ = [
    "ATTEMPT_OUTCOMES",
    "TRANSITIONS",
    "Facts",
    "Transition",
    "Trigger",
    "render_markdown",
    "transition",
    "triggers_from",
]


class Trigger(enum.StrEnum):
    """What happened to a task."""

    CREATE = "create"
    CLAIM = "claim"
    SUCCEED = "succeed"
    FAIL = "fail"
    TIME_OUT = "time_out"
    SPAWN = "spawn"
    SUSPEND = "suspend"
    CHILDREN_DONE = "children_done"
    RESUME = "resume"
    RETRY = "retry"
    CANCEL = "cancel"
    PAUSE = "pause"
    RECOVER = "recover"


class Facts(NamedTuple):
    """What the guards may look at."""

    is_cron: bool = False
    attempts_left: bool = False
    awaiting_children: bool = False
    #: a claim's: the task's previous round failed or timed out (SPEC §5). A ``failed`` or
    #: ``timeout`` row says so by its status; a ``pending`` one after ``retry_task`` (or a
    #: ``resume_task`` of a paused task) by ``lifecycle.after_failure``
    after_failure: bool = False
    #: a failure's: the handler's exception must not be retried (``PermanentError``, or the
    #: handler's ``no_retry_on`` / ``retry_on``), whatever attempts are left
    no_retry: bool = False


NO_FACTS = Facts()

Guard = Callable[[Facts], bool]

GUARDS: dict[str, Guard] = {
    "always": lambda f: True,
    "one_off": lambda f: not f.is_cron,
    "cron": lambda f: f.is_cron,
    "attempts_left": lambda f: f.attempts_left and not f.no_retry,
    "last_attempt_one_off": lambda f: not f.attempts_left and not f.no_retry and not f.is_cron,
    "last_attempt_cron": lambda f: not f.attempts_left and not f.no_retry and f.is_cron,
    "no_retry_one_off": lambda f: f.no_retry and not f.is_cron,
    "no_retry_cron": lambda f: f.no_retry and f.is_cron,
    "awaiting_children": lambda f: f.awaiting_children,
    "explicit_suspension": lambda f: not f.awaiting_children,
    "fresh_round": lambda f: not f.after_failure,
    "after_failure": lambda f: f.after_failure,
}


GUARD_TEXT: dict[str, str] = {
    "always": "always",
    "one_off": "it is a one-off task",
    "cron": "it is a cron task",
    "attempts_left": "it has attempts left and its failure may be retried",
    "last_attempt_one_off": "it is a one-off task on its last attempt",
    "last_attempt_cron": "it is a cron task on its last attempt",
    "no_retry_one_off": "it is a one-off task whose failure must not be retried",
    "no_retry_cron": "it is a cron task whose failure must not be retried",
    "awaiting_children": "it waits for its children",
    "explicit_suspension": "it was suspended explicitly (a parent waiting for its children"
    " resumes by itself when they finish)",
    "fresh_round": "its previous round did not fail or time out",
    "after_failure": "its previous round failed or timed out",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Transition:
    """One row of the table. ``attempt`` is "open", an outcome to close with, or None."""

    trigger: Trigger
    sources: frozenset[str]
    guard: str
    target: str
    events: tuple[str, ...]
    attempt: str | None = None


P, R, C, F, T, PF, PA, S = (
    Status.PENDING.value,
    Status.RUNNING.value,
    Status.COMPLETED.value,
    Status.FAILED.value,
    Status.TIMEOUT.value,
    Status.PERMANENTLY_FAILED.value,
    Status.PAUSED.value,
    Status.SUSPENDED.value,
)
NEW = "(new)"


def _row(
    trigger: Trigger,
    sources: tuple[str, ...],
    guard: str,
    target: str,
    events: tuple[str, ...],
    attempt: str | None = None,
) -> Transition:
    return Transition(trigger, frozenset(sources), guard, target, events, attempt)


# fmt: off
TRANSITIONS: tuple[Transition, ...] = (
    _row(Trigger.CREATE, (NEW,), "always", P, ("task_created",)),
    _row(Trigger.CLAIM, (P,), "fresh_round", R, ("task_claimed", "task_started"), "open"),
    _row(Trigger.CLAIM, (P,), "after_failure", R, ("task_claimed", "task_retry_started"),
         "open"),
    _row(Trigger.CLAIM, (F, T), "always", R, ("task_claimed", "task_retry_started"), "open"),
    _row(Trigger.SUCCEED, (R,), "one_off", C, ("task_completed",), "completed"),
    _row(Trigger.SUCCEED, (R,), "cron", P, ("task_completed",), "completed"),
    _row(Trigger.FAIL, (R,), "attempts_left", F,
         ("task_failed", "task_retry_scheduled"), "failed"),
    _row(Trigger.FAIL, (R,), "last_attempt_one_off", PF,
         ("task_failed", "task_permanently_failed"), "failed"),
    _row(Trigger.FAIL, (R,), "last_attempt_cron", PA, ("task_failed", "task_paused"), "failed"),
    _row(Trigger.FAIL, (R,), "no_retry_one_off", PF,
         ("task_failed", "task_permanently_failed"), "failed"),
    _row(Trigger.FAIL, (R,), "no_retry_cron", PA, ("task_failed", "task_paused"), "failed"),
    _row(Trigger.TIME_OUT, (R,), "attempts_left", T,
         ("task_timed_out", "task_retry_scheduled"), "timeout"),
    _row(Trigger.TIME_OUT, (R,), "last_attempt_one_off", PF,
         ("task_timed_out", "task_permanently_failed"), "timeout"),
    _row(Trigger.TIME_OUT, (R,), "last_attempt_cron", PA,
         ("task_timed_out", "task_paused"), "timeout"),
    _row(Trigger.SPAWN, (R,), "always", S, ("task_subtasks_created", "task_suspended"),
         "suspended"),
    _row(Trigger.SUSPEND, (R,), "always", S, ("task_suspended",), "suspended"),
    _row(Trigger.CHILDREN_DONE, (S,), "awaiting_children", P, ("task_resumed",)),
    _row(Trigger.RESUME, (S,), "explicit_suspension", P, ("task_resumed",)),
    _row(Trigger.RESUME, (PA,), "always", P, ("task_resumed",)),
    _row(Trigger.RETRY, (PF,), "always", P, ("task_resumed",)),
    _row(Trigger.CANCEL, (P, F, T, PA, S), "always", PF, ("task_cancelled",)),
    _row(Trigger.CANCEL, (R,), "always", PF, ("task_cancelled",), "cancelled"),
    _row(Trigger.PAUSE, (P, F, T), "always", PA, ("task_paused",)),
    _row(Trigger.PAUSE, (R,), "always", PA, ("task_paused",), "paused"),
    _row(Trigger.RECOVER, (R,), "always", P, ("task_recovered",), "interrupted"),
)
# fmt: on

#: every outcome an attempt can be closed with
ATTEMPT_OUTCOMES = frozenset(
    row.attempt for row in TRANSITIONS if row.attempt is not None and row.attempt != "open"
)


@functools.lru_cache(maxsize=512)
def transition(trigger: Trigger, source: str, facts: Facts = NO_FACTS) -> Transition:
    """Return the row for ``trigger`` from ``source`` whose guard holds, or raise."""
    for row in TRANSITIONS:
        if row.trigger is trigger and source in row.sources and GUARDS[row.guard](facts):
            return row
    allowed = sorted(triggers_from(trigger))
    if source in allowed:
        reasons = [
            GUARD_TEXT[row.guard]
            for row in TRANSITIONS
            if row.trigger is trigger and source in row.sources
        ]
        raise InvalidTransitionError(
            f"cannot {trigger.value.replace('_', ' ')} a task that is {source!r}"
            f" unless {' or '.join(reasons)}"
        )
    raise InvalidTransitionError(
        f"cannot {trigger.value.replace('_', ' ')} a task that is {source!r}"
        f" (allowed from: {', '.join(allowed)})"
    )


def triggers_from(trigger: Trigger) -> frozenset[str]:
    """Every status ``trigger`` may start from, whatever the guard."""
    return frozenset(s for row in TRANSITIONS if row.trigger is trigger for s in row.sources)


def render_markdown() -> str:
    """The table as Markdown (``docs/architecture.md`` embeds it; a test keeps them equal)."""
    lines = [
        "| trigger | from | guard | to | events | attempt |",
        "|---|---|---|---|---|---|",
    ]
    for row in TRANSITIONS:
        lines.append(
            f"| {row.trigger.value} | {', '.join(sorted(row.sources))} | {row.guard}"
            f" | {row.target} | {', '.join(row.events)} | {row.attempt or ''} |"
        )
    return "\n".join(lines) + "\n"
