"""Workflows: validating child specs and resolving their options (SPEC §6)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tideflow.core import codec, lifecycle
from tideflow.core.options import TASK_OPTIONS, TaskPolicy, resolve_policy, validate_options
from tideflow.core.registry import Registration, validate_name
from tideflow.core.types import NewTask, TaskRow
from tideflow.errors import HandlerRegistrationError, InvalidOptionError

__all__ = ["CHILD_KEYS", "child_results", "plan_children"]

CHILD_OPTION_KEYS = frozenset(
    {"priority", "timeout", "max_retries", "retry_interval", "retry_backoff", "tag", "requires"}
)
CHILD_KEYS = frozenset({"name", "payload", "delay"} | CHILD_OPTION_KEYS)


def _as_list(children: Any) -> list[Mapping[str, Any]]:
    if isinstance(children, Mapping):
        return [children]
    if isinstance(children, (list, tuple)):
        if not children:
            raise InvalidOptionError("next() needs at least one child spec; got an empty list")
        for spec in children:
            if not isinstance(spec, Mapping):
                raise InvalidOptionError(f"a child spec must be a dict, got {spec!r}")
        return list(children)
    raise InvalidOptionError(f"next() takes a dict or a list of dicts, got {children!r}")


def plan_children(
    parent: TaskRow,
    children: Any,
    registrations: Mapping[str, Registration],
    manager: TaskPolicy,
    now: float,
    max_payload_bytes: int,
    trace_context: str | None = None,
) -> list[NewTask]:
    """Validate child specs and plan their inserts; raises a clear error for a bad spec.
    ``trace_context`` (the spawning attempt's) is stored with every child."""
    planned: list[NewTask] = []
    parent_policy = {
        "priority": parent.priority,
        "timeout": parent.timeout,
        "max_retries": parent.max_retries,
        "retry_interval": parent.retry_interval,
        "retry_backoff": parent.retry_backoff,
    }
    for index, spec in enumerate(_as_list(children)):
        unknown = sorted(set(spec) - CHILD_KEYS)
        if unknown:
            raise InvalidOptionError(
                f"child spec #{index} has unknown key(s) {', '.join(unknown)};"
                f" allowed: {', '.join(sorted(CHILD_KEYS))}"
            )
        if "name" not in spec:
            raise InvalidOptionError(f"child spec #{index} has no 'name'")
        try:
            name = validate_name(spec["name"], f"child spec #{index} name")
        except HandlerRegistrationError as exc:
            raise InvalidOptionError(str(exc)) from None
        opts = validate_options(
            {k: v for k, v in spec.items() if k in CHILD_OPTION_KEYS or k == "delay"},
            TASK_OPTIONS,
            f"child spec #{index} ({name})",
        )
        reg = registrations.get(name)
        reg_opts = reg.options if reg is not None else {}
        policy = resolve_policy(opts, reg_opts, manager, parent_policy)
        payload = codec.encode(spec.get("payload"), f"payload of child {name!r}", max_payload_bytes)
        planned.append(
            lifecycle.new_task(
                name=name,
                type="async",
                payload=payload,
                policy=policy,
                next_run_time=now + float(opts.get("delay", 0.0)),
                now=now,
                tag=opts.get("tag", reg_opts.get("tag")),
                requires=opts.get("requires", reg_opts.get("requires", ())),
                parent=parent,
                trace_context=trace_context,
            )
        )
    return planned


def child_results(children: Sequence[TaskRow]) -> list[dict[str, Any]]:
    """What a resumed parent sees as ``task.result``: its round's children in order."""
    return [
        {
            "task_id": c.id,
            "name": c.name,
            "status": c.status,
            "result": codec.decode(c.result),
            "error": c.error,
        }
        for c in children
    ]
