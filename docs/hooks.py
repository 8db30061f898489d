"""MkDocs hooks: reference tables rendered from the code at build time, so they cannot drift.

A page asks for one with a marker line, ``<!-- tideflow:NAME -->``; an unknown name fails the
build, and so does an option the code knows that :data:`OPTION_TEXT` does not describe (or the
reverse). Names: ``transitions`` (the state machine's table), ``state-diagram`` (a Mermaid
diagram of the same rows), ``options``, ``cli``, ``routes`` (dashboard endpoints), ``metrics``,
``schema`` (the SQL of every dialect), ``guards``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

MARKER = re.compile(r"^<!-- tideflow:([a-z-]+) -->$", re.MULTILINE)

#: what each option means; the scopes, defaults and bounds come from core/options.py
OPTION_TEXT: dict[str, str] = {
    "timeout": "one attempt's limit; past it the attempt is `timeout`",
    "max_retries": "attempts in all, the first included (0 and 1 both mean one)",
    "retry_interval": "delay before the next attempt (the base under exponential backoff)",
    "retry_backoff": "`fixed`, or `exponential`: `retry_interval * 2**(retry_count-1)`",
    "max_retry_interval": "the cap of exponential backoff",
    "retry_jitter": "full jitter on exponential backoff",
    "priority": "higher is claimed first",
    "tag": "free text for grouping and stats",
    "requires": "capabilities a worker must have to claim the task",
    "unique_key": "while a task with this key is not finished, `submit` returns its id",
    "delay": "seconds (or a `timedelta`) before the first run",
    "run_at": "an aware `datetime` for the first run (not with `delay`)",
    "max_concurrent_tasks": "per worker; per task type when set at registration",
    "isolation": "`thread`; `process` is refused for now (not built yet)",
    "description": "shown by `get_task_info` and the dashboard",
    "retry_on": "only these exceptions (and subclasses) are retried",
    "no_retry_on": "these exceptions end the task at once",
    "payload_type": "a dataclass or pydantic v2 model: payloads validated at submit",
    "poll_interval": "idle polling; PostgreSQL also wakes on NOTIFY",
    "task_heartbeat_interval": "how often running tasks' heartbeats are written",
    "task_heartbeat_timeout": "a running task silent this long is timed out (uses an attempt)",
    "worker_heartbeat_interval": "how often the worker heartbeats",
    "worker_heartbeat_timeout": "a worker silent this long is dead; it fences itself at half",
    "worker_id": "this worker's identity (default `host-pid-random`)",
    "pod_id": "stable node identity: a newer worker of the pod supersedes the older one",
    "capabilities": "what this worker offers (matched against `requires`)",
    "allow_unregistered": "`submit`/`cron` accept names with no handler here",
    "max_payload_bytes": "larger payloads or results are refused (`PayloadError`)",
    "recover_running_jobs": "recover running tasks of dead or superseded workers",
    "retention": "`{'expire_time': s, 'statuses': [...]}` or a number (`expire_time`)",
    "expire_time": "finished workflows idle this long are deleted",
    "retention_interval": "how often the automatic retention sweep runs (never at start)",
}


def _options() -> str:
    from tideflow.core import options as o

    scopes = {
        "task": o.TASK_OPTIONS,
        "registration": o.REGISTRATION_OPTIONS,
        "manager": o.MANAGER_OPTIONS,
    }
    names = set().union(*scopes.values())
    missing, extra = names - set(OPTION_TEXT), set(OPTION_TEXT) - names
    if missing or extra:
        raise ValueError(
            f"docs/hooks.py OPTION_TEXT is out of date: describe {sorted(missing)},"
            f" remove {sorted(extra)}"
        )
    settings = o.ManagerSettings()
    defaults: dict[str, Any] = {
        **{f: getattr(settings.policy, f) for f in o.POLICY_OPTIONS},
        **{
            f: getattr(settings, f)
            for f in (
                "max_concurrent_tasks",
                "poll_interval",
                "task_heartbeat_interval",
                "task_heartbeat_timeout",
                "worker_heartbeat_interval",
                "worker_heartbeat_timeout",
                "pod_id",
                "capabilities",
                "allow_unregistered",
                "max_payload_bytes",
                "recover_running_jobs",
                "expire_time",
                "retention_interval",
            )
        },
        "worker_id": "host-pid-random",
        "retention": {
            "expire_time": settings.expire_time,
            "statuses": list(settings.retention_statuses),
        },
        "isolation": "thread",
        "description": "",
        "delay": 0,
    }
    years = "≤ 100 years"
    bounds = {
        "_positive_seconds": f"> 0, {years}",
        "_seconds": f"≥ 0, {years}",
        "_delay": f"≥ 0, {years}",
        "_retries": "≥ 0",
        "_concurrency": "≥ 1",
        "_priority": f"{o.PRIORITY_MIN}..{o.PRIORITY_MAX}",
        "_run_at": "1970 .. now + 100 years",
        "_retention": f"expire_time ≥ 0, {years}",
        "<lambda>": "≥ 1",
    }
    rows = [
        "| option | default | bound | task | registration | manager | meaning |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in sorted(names):
        validator = o._VALIDATORS[name]
        bound = bounds.get(getattr(validator, "__name__", ""), "")
        if name == "retry_backoff":
            bound = ", ".join(o.BACKOFFS)
        if name == "isolation":
            bound = ", ".join(o.ISOLATIONS)
        default = defaults.get(name)
        shown = "none" if default in (None, ()) else f"`{default!r}`"
        marks = ["✓" if name in scopes[s] else "" for s in scopes]
        rows.append(f"| `{name}` | {shown} | {bound} | {' | '.join(marks)} | {OPTION_TEXT[name]} |")
    return "\n".join(rows) + "\n"


def _transitions() -> str:
    from tideflow.core.states import render_markdown

    return render_markdown()


def _guards() -> str:
    from tideflow.core.states import GUARD_TEXT

    rows = ["| guard | holds when |", "|---|---|"]
    rows += [f"| `{name}` | {text} |" for name, text in GUARD_TEXT.items()]
    return "\n".join(rows) + "\n"


def _state_diagram() -> str:
    from tideflow.core.states import NEW, TRANSITIONS

    edges: dict[tuple[str, str], list[str]] = {}
    for row in TRANSITIONS:
        for source in sorted(row.sources):
            label = row.trigger.value
            key = ("[*]" if source == NEW else source, row.target)
            if label not in edges.setdefault(key, []):
                edges[key].append(label)
    lines = ["```mermaid", "stateDiagram-v2"]
    for (source, target), labels in edges.items():
        lines.append(f"    {source} --> {target}: {', '.join(labels)}")
    lines.append("```")
    return "\n".join(lines) + "\n"


def _cli() -> str:
    from tideflow.cli.main import build_parser

    out: list[str] = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if path and not subs:
            out.append(f"### `{path}`\n")
            if parser.description:
                out.append(parser.description + "\n")
            out.append("```text\n" + parser.format_usage().strip() + "\n```\n")
            rows = []
            for action in parser._actions:
                if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                    continue
                name = ", ".join(action.option_strings) or (action.metavar or action.dest)
                text = (action.help or "").replace("|", "\\|")
                if action.choices is not None:
                    text += f" (one of: {', '.join(map(str, action.choices))})"
                rows.append(f"| `{name}` | {text.strip()} |")
            if rows:
                out.append("| argument | meaning |\n|---|---|\n" + "\n".join(rows) + "\n")
        for action in subs:
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, child in action.choices.items():
                if not child.description and helps.get(name):
                    child.description = helps[name][0].upper() + helps[name][1:] + "."
                walk(child, f"{path} {name}".strip() if path else f"tideflow {name}")

    walk(build_parser(), "")
    return "\n".join(out)


def _routes() -> str:
    from tideflow import TaskManager
    from tideflow.dashboard import create_app

    tm = TaskManager("sqlite::memory:")
    try:
        app = create_app(tm, "documentation-token")
        rows = ["| method | path |", "|---|---|"]
        for route in app.routes:
            methods = sorted(getattr(route, "methods", None) or {"GET"})
            methods = [m for m in methods if m != "HEAD"]
            rows.append(f"| {', '.join(methods)} | `{getattr(route, 'path', '')}` |")
    finally:
        tm.close()
    return "\n".join(rows) + "\n"


def _metrics() -> str:
    from tideflow import TaskManager
    from tideflow.dashboard.app import _Metrics

    tm = TaskManager("sqlite::memory:")
    try:
        tm.setup()
        rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
        for family in _Metrics(tm).collect():
            labels = sorted({k for s in family.samples for k in s.labels}) or ["-"]
            rows.append(
                f"| `{family.name}` | {family.type} | {', '.join(labels)}"
                f" | {family.documentation} |"
            )
    finally:
        tm.close()
    return "\n".join(rows) + "\n"


def _schema() -> str:
    from tideflow.store.sql import script as schema_sql

    parts = []
    for dialect in schema_sql.DIALECTS:
        sql = schema_sql.render(dialect, 0, f"an empty {dialect} database")
        body = "\n".join("    " + line if line else "" for line in sql.splitlines())
        parts.append(f'=== "{dialect}"\n\n    ```sql\n{body}\n    ```\n')
    return "\n".join(parts)


RENDERERS: dict[str, Callable[[], str]] = {
    "transitions": _transitions,
    "state-diagram": _state_diagram,
    "guards": _guards,
    "options": _options,
    "cli": _cli,
    "routes": _routes,
    "metrics": _metrics,
    "schema": _schema,
}


def render(name: str) -> str:
    """The Markdown for marker ``name``."""
    if name not in RENDERERS:
        raise ValueError(f"unknown marker <!-- tideflow:{name} -->; known: {sorted(RENDERERS)}")
    return RENDERERS[name]()


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace every ``<!-- tideflow:NAME -->`` line of a page by what the code says."""
    return MARKER.sub(lambda m: render(m.group(1)), markdown)
