"""What the dashboard's pages show, computed from the public API's records: the task list's
search form turned into ``query_tasks`` keywords, readable values (JSON, times, durations,
previews), the cancelled badge, bulk-action selections, the workflow timeline with its
waiting-time critical path, and the workers page's age-out. Pure functions: the handlers in
:mod:`tideflow.dashboard.app` read, these shape, the templates draw."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from tideflow.core.types import TASK_SORTS
from tideflow.dashboard.security import parse_text
from tideflow.errors import InvalidOptionError
from tideflow.models import TaskAttempt, TaskInfo, WorkerInfo

__all__ = [
    "BULK_ACTIONS",
    "Selection",
    "Timeline",
    "critical_path",
    "display_status",
    "duration_text",
    "event_metadata",
    "finished_at",
    "folded",
    "install",
    "pretty_json",
    "preview",
    "search_keywords",
    "select_bulk",
    "task_duration",
    "timeline",
    "visible_workers",
]

#: the searches of the task list: URL parameter -> ``query_tasks`` keyword
_TEXT_SEARCHES = {"q_name": "name_prefix", "q_tag": "tag_contains", "q_worker": "worker_contains"}
#: time ranges: URL parameter -> ``query_tasks`` keyword
_TIME_SEARCHES = {
    "created_from": "created_after",
    "created_to": "created_before",
    "finished_from": "finished_after",
    "finished_to": "finished_before",
}
#: exact filters kept from the first dashboard (links from the overview use them)
_EXACT = ("status", "name", "tag", "worker_id")
#: every parameter of the task list's search (kept by sorting and paging links)
SEARCH_PARAMS = (*_EXACT, "q_id", *_TEXT_SEARCHES, *_TIME_SEARCHES, "sort", "order")
_AGO = re.compile(r"^\s*(\d{1,6})\s*(s|m|min|h|d|w)\s*$", re.IGNORECASE)
_AGO_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
#: the longest list of ids one search may name
MAX_IDS = 500


def parse_when(raw: str, name: str, now: datetime) -> datetime:
    """A time the task list's form accepts: ISO 8601 (``2026-05-01``, ``2026-05-01T10:30``;
    UTC unless it names an offset) or an age like ``15m``, ``2h``, ``7d`` (that long ago)."""
    text = raw.strip()
    ago = _AGO.match(text)
    if ago:
        seconds = int(ago.group(1)) * _AGO_UNITS[ago.group(2).lower()]
        try:
            return now - timedelta(seconds=seconds)
        except OverflowError:
            raise InvalidOptionError(f"{name}: {text!r} reaches before the year 1") from None
    try:
        value = datetime.fromisoformat(text.replace(" ", "T", 1) if " " in text else text)
    except ValueError:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise InvalidOptionError(
            f"{name} must be a date and time like 2026-05-01T10:30 (UTC unless an offset is"
            f" given) or an age like 15m, 2h, 7d; got {shown!r}"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def search_keywords(
    params: Mapping[str, str], now: datetime
) -> tuple[dict[str, Any], dict[str, str]]:
    """``query_tasks`` keywords for the task list's parameters, and the parameters that were
    used (to keep in links and forms). Each value is checked by ``query_tasks`` itself or
    here: a bad one raises :class:`InvalidOptionError` (a 400 that says what is wrong)."""
    keywords: dict[str, Any] = {}
    used: dict[str, str] = {}

    def text(key: str) -> str:
        return parse_text(params.get(key), key) or ""

    for key in _EXACT:
        value = text(key)
        if value:
            keywords[key] = value
            used[key] = value
    raw_ids = text("q_id").strip()
    if raw_ids:
        parts = [p for p in re.split(r"[\s,]+", raw_ids) if p]
        if len(parts) > MAX_IDS or not all(p.isascii() and p.isdigit() for p in parts):
            raise InvalidOptionError(
                f"id must be task ids (digits 0-9), separated by commas or spaces, at most"
                f" {MAX_IDS}; got {raw_ids[:40]!r}"
            )
        keywords["ids"] = [int(p) for p in parts if len(p) <= 19]
        used["q_id"] = raw_ids
    for param, keyword in _TEXT_SEARCHES.items():
        value = text(param)
        if value.strip():
            keywords[keyword] = value.strip()
            used[param] = value
    for param, keyword in _TIME_SEARCHES.items():
        value = text(param)
        if value.strip():
            keywords[keyword] = parse_when(value, param, now)
            used[param] = value
    sort = text("sort")
    if sort:
        if sort not in TASK_SORTS:
            raise InvalidOptionError(
                f"sort must be one of {', '.join(TASK_SORTS)}; got {sort[:40]!r}"
            )
        keywords["sort"] = sort
        used["sort"] = sort
    return keywords, used


# --- what a task shows -------------------------------------------------------------------------
def display_status(task: TaskInfo) -> str:
    """The badge: ``cancelled`` for a task that ended by cancellation (stored as
    ``permanently_failed`` with a ``task_cancelled`` event last), otherwise its status."""
    if task.status == "permanently_failed" and task.last_event_type == "task_cancelled":
        return "cancelled"
    return task.status


def finished_at(task: TaskInfo) -> datetime | None:
    """When a completed or permanently failed task finished (its last activity); else None."""
    if task.status in ("completed", "permanently_failed"):
        return task.last_active_time
    return None


def task_duration(task: TaskInfo) -> float | None:
    """Seconds from the start of its latest round to its finish, for a finished task."""
    end = finished_at(task)
    if end is None or task.start_time is None:
        return None
    return max(0.0, (end - task.start_time).total_seconds())


def duration_text(seconds: float | None) -> str:
    """``0.042 s``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``, ``3 d 4 h``; ``-`` for None."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 1:
        return f"{seconds:.3f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def preview(text: Any, length: int = 120) -> str:
    """The first line of ``text``, cut at ``length`` characters (with … when cut)."""
    if text is None:
        return ""
    value = str(text).strip()
    first = value.split("\n", 1)[0]
    if len(first) > length:
        return first[:length].rstrip() + "…"
    return first + (" …" if len(first) < len(value) else "")


def pretty_json(value: Any) -> str:
    """``value`` as indented JSON with its characters as they are (no ``\\u003c`` escapes: the
    template's autoescaping makes it safe HTML)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


#: a value longer than this (characters or lines) starts folded
FOLD_CHARS = 2000
FOLD_LINES = 30


def folded(text: str) -> bool:
    return len(text) > FOLD_CHARS or text.count("\n") >= FOLD_LINES


_TIME_KEYS = ("_time", "_at")


def event_metadata(metadata: Mapping[str, Any] | None) -> list[tuple[str, Any, str]]:
    """``(key, value, kind)`` rows of an event's metadata: ``kind`` is ``time`` for a POSIX time
    (a number under a key ending ``_time`` or ``_at``, shown as a date), ``text`` for a string
    (long ones cut: the full error is shown once, in the task's Error section), ``json`` for
    anything else (compact)."""
    rows: list[tuple[str, Any, str]] = []
    for key, value in (metadata or {}).items():
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and key.endswith(_TIME_KEYS)
            and 0 < value < 253402300800
        ):
            rows.append((key, datetime.fromtimestamp(value, UTC), "time"))
        elif isinstance(value, str):
            rows.append((key, preview(value, 160), "text"))
        else:
            text = json.dumps(value, ensure_ascii=False, default=str)
            rows.append((key, preview(text, 160), "json"))
    return rows


# --- bulk actions ------------------------------------------------------------------------------
#: action -> (statuses it applies to, whether running tasks may be included, what it means)
BULK_ACTIONS: dict[str, tuple[frozenset[str], str]] = {
    "retry": (
        frozenset({"permanently_failed"}),
        "gives each permanently failed (or cancelled) task a fresh set of attempts",
    ),
    "cancel": (
        frozenset({"pending", "failed", "timeout", "paused", "suspended"}),
        "ends each task and its unfinished descendants as cancelled",
    ),
    "delete": (
        frozenset(
            {
                "pending",
                "failed",
                "timeout",
                "paused",
                "suspended",
                "completed",
                "permanently_failed",
            }
        ),
        "deletes each task with its events and attempts, for good",
    ),
}
#: the most tasks one bulk action acts on
BULK_MAX = 1000


@dataclasses.dataclass(frozen=True)
class Selection:
    """What a bulk action would do to the chosen tasks."""

    action: str
    chosen: int
    targets: list[int]
    running: list[int]
    skipped: dict[str, int]
    include_running: bool
    more: bool  # more tasks matched than BULK_MAX

    @property
    def acts_on(self) -> int:
        return len(self.targets)


def select_bulk(
    action: str, tasks: Sequence[TaskInfo], include_running: bool, more: bool = False
) -> Selection:
    """Which of ``tasks`` ``action`` applies to. Running tasks are counted apart and left out
    unless ``include_running`` (retry never applies to them); others it cannot apply to are
    counted by status."""
    if action not in BULK_ACTIONS:
        raise InvalidOptionError(
            f"bulk action must be one of {', '.join(BULK_ACTIONS)}; got {action[:40]!r}"
        )
    statuses, _ = BULK_ACTIONS[action]
    targets: list[int] = []
    running: list[int] = []
    skipped: dict[str, int] = {}
    for task in tasks:
        if task.status == "running" and action != "retry":
            running.append(task.id)
            if include_running:
                targets.append(task.id)
        elif task.status in statuses:
            targets.append(task.id)
        else:
            label = display_status(task)
            skipped[label] = skipped.get(label, 0) + 1
    return Selection(
        action=action,
        chosen=len(tasks),
        targets=targets,
        running=running,
        skipped=skipped,
        include_running=include_running,
        more=more,
    )


# --- the workflow timeline ---------------------------------------------------------------------
@dataclasses.dataclass
class Bar:
    """One task's row of the timeline: positions in percent of the time axis."""

    task: TaskInfo
    depth: int
    has_children: bool
    critical: bool
    queued: tuple[float, float] | None  # created -> first start
    attempts: list[tuple[float, float, str]]  # start, width, outcome
    waiting: list[tuple[float, float]]  # gaps between attempts (retry delay, children)
    span: float | None  # seconds created -> finished (or now)
    wait_seconds: float  # seconds not inside an attempt
    run_seconds: float


@dataclasses.dataclass
class Timeline:
    start: datetime
    end: datetime
    bars: list[Bar]
    ticks: list[tuple[float, datetime, float]]  # percent, time, seconds from the start
    critical_path: list[dict[str, Any]]
    critical_seconds: float
    critical_wait: float

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


def _pct(t: datetime, start: datetime, total: float) -> float:
    return max(0.0, min(100.0, (t - start).total_seconds() / total * 100))


def timeline(
    tasks: Sequence[TaskInfo],
    attempts: Iterable[TaskAttempt],
    now: datetime,
    root_id: int,
    path: Sequence[TaskInfo],
    path_attempts: Mapping[int, Sequence[TaskAttempt]],
) -> Timeline:
    """Bars for ``tasks`` (a page of a workflow, in id order, drawn as a tree: children under
    their parent, or at the top when the parent is on another page) on one time axis from the
    earliest creation to the latest finish (or ``now`` while something is unfinished).

    Each bar shows the time a task waited to be claimed (created -> first attempt), its
    attempts, and the waits between them (a retry's delay, or a parent suspended until its
    children finished). ``path`` is the critical path (:func:`critical_path`), with each of
    its tasks' attempts in ``path_attempts``.
    """
    by_task: dict[int, list[TaskAttempt]] = {}
    for a in attempts:
        by_task.setdefault(a.task_id, []).append(a)
    ids = {t.id for t in tasks}
    kids: dict[int | None, list[TaskInfo]] = {}
    for t in tasks:
        parent = t.parent_id if t.parent_id in ids and t.id != root_id else None
        kids.setdefault(parent, []).append(t)

    def end_of(t: TaskInfo) -> datetime:
        return finished_at(t) or now

    starts = [t.created_at for t in tasks if t.created_at is not None]
    start = min(starts) if starts else now
    end = max([end_of(t) for t in tasks] + [start + timedelta(milliseconds=1)])
    total = max((end - start).total_seconds(), 1e-3)

    critical = {t.id for t in path}

    bars: list[Bar] = []

    def bar(t: TaskInfo, depth: int) -> Bar:
        own = sorted(by_task.get(t.id, []), key=lambda a: a.started_at or now)
        created = t.created_at or start
        finish = end_of(t)
        drawn: list[tuple[float, float, str]] = []
        gaps: list[tuple[float, float]] = []
        run = 0.0
        cursor = None
        for a in own:
            if a.started_at is None:
                continue
            a_end = a.ended_at or (finish if finished_at(t) else now)
            if cursor is not None and a.started_at > cursor:
                gaps.append(_span(cursor, a.started_at, start, total))
            x, w = _span(a.started_at, a_end, start, total)
            drawn.append((x, w, a.outcome or "running"))
            run += max(0.0, (a_end - a.started_at).total_seconds())
            cursor = a_end
        first = own[0].started_at if own and own[0].started_at else None
        queued = _span(created, first or finish, start, total)
        if cursor is not None and finish > cursor and finished_at(t) is None:
            gaps.append(_span(cursor, finish, start, total))
        span = (finish - created).total_seconds()
        return Bar(
            task=t,
            depth=depth,
            has_children=bool(kids.get(t.id)),
            critical=t.id in critical,
            queued=queued,
            attempts=drawn,
            waiting=gaps,
            span=span,
            wait_seconds=max(0.0, span - run),
            run_seconds=run,
        )

    def walk(parent: int | None, depth: int) -> None:
        for t in kids.get(parent, []):
            bars.append(bar(t, depth))
            walk(t.id, depth + 1)

    walk(None, 0)
    steps: list[dict[str, Any]] = []
    for t in path:
        run = sum(_attempt_seconds(a, now) for a in path_attempts.get(t.id, ()))
        span = (end_of(t) - t.created_at).total_seconds() if t.created_at else 0.0
        steps.append({"task": t, "run": run, "wait": max(0.0, span - run), "span": span})
    root = path[0] if path else None
    critical_seconds = 0.0
    if root is not None and root.created_at is not None:
        critical_seconds = (end_of(root) - root.created_at).total_seconds()
    # the path's own running time: each step's attempts, counted once where they overlap
    # a parent's (a parent suspended while its child runs is not running then)
    running = sum(s["run"] for s in steps)
    return Timeline(
        start=start,
        end=end,
        bars=bars,
        ticks=[
            (i * 25.0, start + timedelta(seconds=total * i / 4), total * i / 4) for i in range(5)
        ],
        critical_path=steps,
        critical_seconds=critical_seconds,
        critical_wait=max(0.0, critical_seconds - running),
    )


def _attempt_seconds(a: TaskAttempt, now: datetime) -> float:
    if a.duration_seconds is not None:
        return a.duration_seconds
    if a.started_at is None:
        return 0.0
    return max(0.0, ((a.ended_at or now) - a.started_at).total_seconds())


def critical_path(
    root: TaskInfo, children_of: Callable[[int], Sequence[TaskInfo]]
) -> list[TaskInfo]:
    """The chain of tasks the workflow's end waited for: from the root, at each level the
    child that finished last (unfinished ones count as finishing now), down to a task with no
    children; at most 100 levels. Reads one level at a time through ``children_of`` (which
    may return only the candidates: the dashboard reads one row per level)."""
    chain = [root]
    node = root
    while node.total_children and len(chain) < 100:
        kids = children_of(node.id)
        if not kids:
            break
        far = datetime.max.replace(tzinfo=UTC)
        node = max(kids, key=lambda t: (finished_at(t) or far, t.id))
        chain.append(node)
    return chain


def _span(a: datetime, b: datetime, start: datetime, total: float) -> tuple[float, float]:
    x = _pct(a, start, total)
    return x, max(0.2, _pct(b, start, total) - x)


# --- workers -----------------------------------------------------------------------------------
#: a worker that stopped (or died, or was superseded) longer ago than this is hidden by default
WORKER_AGE_OUT = 3600.0


def visible_workers(
    workers: Sequence[WorkerInfo], now: datetime, show_all: bool
) -> tuple[list[WorkerInfo], int]:
    """The workers to list (active ones, and others seen within :data:`WORKER_AGE_OUT`
    seconds, unless ``show_all``) and how many were hidden."""
    if show_all:
        return list(workers), 0
    cutoff = now - timedelta(seconds=WORKER_AGE_OUT)
    shown = [
        w
        for w in workers
        if w.status == "active" or w.last_seen_at is None or w.last_seen_at >= cutoff
    ]
    return shown, len(workers) - len(shown)


# --- Jinja -------------------------------------------------------------------------------------
def install(env: Any) -> None:
    """Register the filters and globals the templates use on a Jinja environment."""
    env.filters["pretty_json"] = pretty_json
    env.filters["preview"] = preview
    env.filters["duration"] = duration_text
    env.globals["display_status"] = display_status
    env.globals["finished_at"] = finished_at
    env.globals["task_duration"] = task_duration
    env.globals["folded"] = folded
    env.globals["event_metadata"] = event_metadata
