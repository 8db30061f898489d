"""``tideflow db migrate|sql|recount``, ``tideflow tasks ...``, ``stats`` and ``retention``."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

from tideflow.cli.common import CliError, add_db_option, open_manager, resolve_db
from tideflow.cli.format import duration, one_line, print_table, short_json, when
from tideflow.errors import TideflowError
from tideflow.manager import TaskManager
from tideflow.models import Status, TaskInfo
from tideflow.store.sql import script as sql_script
from tideflow.store.url import backend_of

__all__ = ["add_commands"]

STATUSES = [s.value for s in Status]


def add_commands(sub: Any) -> None:
    """Register ``db``, ``tasks``, ``stats`` and ``retention`` on the top-level subparsers."""
    db = sub.add_parser("db", help="database schema commands")
    db_sub = db.add_subparsers(title="commands", metavar="COMMAND")
    migrate = db_sub.add_parser("migrate", help="create or migrate the schema (idempotent)")
    add_db_option(migrate)
    migrate.set_defaults(func=cmd_migrate)
    sql = db_sub.add_parser(
        "sql",
        help="print the schema and migration SQL for review (changes nothing)",
        description="Print the SQL that 'tideflow db migrate' runs. With --db: only the"
        " migrations that database still needs (it is read, never written); with --dialect:"
        " the whole schema from an empty database (or from --from-version).",
    )
    add_db_option(sql)
    sql.add_argument("--dialect", choices=sql_script.DIALECTS, help="instead of --db")
    sql.add_argument(
        "--from-version",
        type=_non_negative,
        metavar="N",
        help="with --dialect: the schema version the database has now (default 0, empty)",
    )
    sql.set_defaults(func=cmd_sql)
    recount = db_sub.add_parser(
        "recount",
        help="count the tasks afresh into the kept counts (the dashboard's and /metrics')",
        description="Count the tasks table per name and status in one transaction and replace"
        " the kept counts with the result; prints where they differed. Counts drift only when"
        " tasks were changed by something that does not keep them (a worker older than schema"
        " 4, hand-written SQL). Safe with workers running: their writes wait for it.",
    )
    add_db_option(recount)
    recount.set_defaults(func=cmd_recount)
    db.set_defaults(func=_help(db))

    tasks = sub.add_parser("tasks", help="list, inspect and control tasks")
    t_sub = tasks.add_subparsers(title="commands", metavar="COMMAND")
    tasks.set_defaults(func=_help(tasks))

    ls = t_sub.add_parser("list", help="list tasks, newest first")
    add_db_option(ls)
    ls.add_argument("--status", choices=STATUSES)
    ls.add_argument("--name", help="task name (type)")
    ls.add_argument("--tag")
    ls.add_argument("--limit", type=_non_negative, default=20, help="0 for all (default 20)")
    ls.add_argument("--offset", type=_non_negative, default=0)
    ls.add_argument("--order", choices=["asc", "desc"], default="desc", help="by id (default desc)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=cmd_list)

    submit = t_sub.add_parser(
        "submit",
        help="create a one-off task; prints its id",
        description="Create a one-off task for the workers of this database (no handler needed"
        " here) and print its id. Options are resolved when the task is created: those not"
        " given take tideflow's defaults (timeout 60, max retries 3, ...), not the options of"
        " the handler's registration in the workers' code.",
    )
    add_db_option(submit)
    submit.add_argument("name", metavar="NAME", help="the task name (its handler's name)")
    submit.add_argument(
        "--payload", metavar="JSON", help="the payload as JSON; '-' reads it from stdin"
    )
    submit.add_argument("--delay", type=float, metavar="SECONDS", help="run no sooner than this")
    submit.add_argument(
        "--run-at",
        type=_aware_datetime,
        metavar="TIME",
        help="run at this ISO 8601 time with an offset, e.g. 2030-01-01T09:00:00+01:00",
    )
    submit.add_argument("--priority", type=int, metavar="N", help="-20..20, higher first")
    submit.add_argument("--tag")
    submit.add_argument("--timeout", type=float, metavar="SECONDS", help="per attempt")
    submit.add_argument("--max-retries", type=int, metavar="N", help="attempts in all")
    submit.add_argument("--retry-interval", type=float, metavar="SECONDS")
    submit.add_argument("--retry-backoff", choices=["fixed", "exponential"])
    submit.add_argument("--max-retry-interval", type=float, metavar="SECONDS")
    submit.add_argument(
        "--requires", metavar="CAP[,CAP...]", help="capabilities a worker must have"
    )
    submit.add_argument(
        "--unique-key", metavar="KEY", help="while a task with this key is open, print its id"
    )
    submit.add_argument("--json", action="store_true", help='print {"id": ..., ...} instead')
    submit.set_defaults(func=cmd_submit)

    show = t_sub.add_parser("show", help="a task's fields, events and attempts")
    add_db_option(show)
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true", help="the task with events and attempts")
    show.set_defaults(func=cmd_show)

    actions: dict[str, tuple[str, bool]] = {
        "resume": ("resume a paused task or a suspended one", True),
        "cancel": ("cancel tasks and their unfinished descendants", True),
        "pause": ("pause tasks (or cron schedules) until resumed", False),
        "retry": ("give permanently failed tasks a fresh set of attempts", False),
    }
    for action, (text, takes_reason) in actions.items():
        p = t_sub.add_parser(action, help=text)
        add_db_option(p)
        p.add_argument("ids", metavar="ID", type=int, nargs="+")
        if takes_reason:
            p.add_argument("--reason", help="stored in the task's events")
        p.set_defaults(func=cmd_control, action=action)

    delete = t_sub.add_parser(
        "delete", help="delete tasks with their events and attempts (filters combine)"
    )
    add_db_option(delete)
    delete.add_argument("ids", metavar="ID", type=int, nargs="*")
    delete.add_argument("--status", choices=STATUSES)
    delete.add_argument("--name")
    delete.add_argument("--tag")
    delete.set_defaults(func=cmd_delete)

    stats = sub.add_parser("stats", help="task counts per name and status, and workers")
    add_db_option(stats)
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_stats)

    keep = sub.add_parser(
        "retention",
        help="delete expired workflows now, with their events and attempts",
    )
    add_db_option(keep)
    keep.add_argument(
        "--expire-time",
        type=float,
        metavar="SECONDS",
        help="delete what was last active longer ago than this (default 86400)",
    )
    keep.add_argument(
        "--statuses",
        metavar="S[,S...]",
        help="statuses to delete (default completed,permanently_failed)",
    )
    keep.add_argument("--json", action="store_true")
    keep.set_defaults(func=cmd_retention)


def _help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show_help(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show_help


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _aware_datetime(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if value.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no UTC offset; add one, e.g. {text}+00:00 or {text}Z"
        )
    return value


def _client(args: argparse.Namespace) -> TaskManager:
    return open_manager(resolve_db(args))


# --- db migrate --------------------------------------------------------------------------------
def cmd_migrate(args: argparse.Namespace) -> int:
    """``tideflow db migrate``: create or upgrade the schema."""
    out = sys.stdout
    tm = open_manager(resolve_db(args), must_exist=False)
    try:
        tm.setup()
        out.write(f"schema is up to date: {tm._store.safe_url}\n")
    finally:
        tm.close()
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    """``tideflow db sql``: the migration SQL, for a DBA to review."""
    if args.dialect is not None:
        if args.db is not None:
            raise CliError("give --db or --dialect, not both")
        dialect, current = args.dialect, args.from_version or 0
        where = f"a {dialect} database at schema version {current}"
    else:
        if args.from_version is not None:
            raise CliError("--from-version goes with --dialect (with --db it is read)")
        db = resolve_db(args)
        dialect = _dialect_of(db)
        tm = open_manager(db)
        try:
            current = tm._store.schema_version()
            where = f"{tm._store.safe_url} (schema version {current})"
        finally:
            tm.close()
    sys.stdout.write(sql_script.render(dialect, current, where))
    return 0


def cmd_recount(args: argparse.Namespace) -> int:
    """``tideflow db recount``: rebuild the kept task counts from the tasks table."""
    tm = open_manager(resolve_db(args))
    try:
        fixed = tm._store.recount_tasks()
    finally:
        tm.close()
    out = sys.stdout
    if not fixed:
        out.write("the kept counts agree with the tasks table\n")
        return 0
    rows = [[name, status, str(kept), str(counted)] for name, status, kept, counted in fixed]
    print_table(out, ["NAME", "STATUS", "KEPT", "COUNTED"], rows)
    out.write(f"corrected {len(fixed)} count(s)\n")
    return 0


# --- tasks submit ------------------------------------------------------------------------------
def cmd_submit(args: argparse.Namespace) -> int:
    """``tideflow tasks submit NAME``: one task; prints its id."""
    payload: Any = None
    if args.payload is not None:
        text = sys.stdin.read() if args.payload == "-" else args.payload
        try:
            payload = json.loads(text)
        except ValueError as exc:
            raise CliError(f"--payload is not JSON: {exc}") from None
    options: dict[str, Any] = {
        key: getattr(args, key)
        for key in (
            "delay",
            "run_at",
            "priority",
            "tag",
            "timeout",
            "max_retries",
            "retry_interval",
            "retry_backoff",
            "max_retry_interval",
            "unique_key",
        )
        if getattr(args, key) is not None
    }
    if args.requires is not None:
        options["requires"] = [c.strip() for c in args.requires.split(",") if c.strip()]
    tm = _client(args)
    try:
        task_id = tm.submit(args.name, payload, **options)
        task = tm.get_task(task_id)
    finally:
        tm.close()
    if args.json:
        data = {"id": task_id, "name": args.name}
        if task is not None:
            data.update(status=task.status, next_run_time=task.to_dict()["next_run_time"])
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        sys.stdout.write(f"{task_id}\n")
    return 0


# --- tasks list / show -------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    """``tideflow tasks list``: one row per task."""
    out = sys.stdout
    tm = _client(args)
    try:
        page = tm.query_tasks(
            status=args.status,
            name=args.name,
            tag=args.tag,
            limit=args.limit or None,
            offset=args.offset,
            order=args.order,
        )
    finally:
        tm.close()
    if args.json:
        for task in page.items:
            out.write(json.dumps(task.to_dict(), ensure_ascii=False) + "\n")
        return 0
    if not page.items:
        out.write(
            "no tasks match\n" if page.total == 0 else f"no tasks on this page of {page.total}\n"
        )
        return 0
    rows = [
        [
            t.id,
            t.name,
            t.status,
            t.priority,
            f"{t.attempt}/{t.max_retries}",
            t.tag or "-",
            when(t.created_at),
            _detail(t),
        ]
        for t in page.items
    ]
    print_table(
        out, ["ID", "NAME", "STATUS", "PRI", "TRIES", "TAG", "CREATED (UTC)", "DETAIL"], rows
    )
    shown = f"{page.offset + 1}-{page.offset + len(page.items)}"
    more = " (use --limit/--offset for more)" if page.has_more else ""
    out.write(f"\n{shown} of {page.total} task(s){more}\n")
    return 0


def _detail(task: TaskInfo) -> str:
    if task.unreadable:
        return f"unreadable {', '.join(task.unreadable)} (see tasks show {task.id})"
    if task.status in ("permanently_failed", "failed", "timeout") and task.error:
        return one_line(task.error, 50)
    if task.status == "suspended":
        return f"suspended: {task.suspend_reason or '-'}"
    if task.status == "running" and task.progress_percent is not None:
        return f"{task.progress_percent:.0f}% {task.progress_text or ''}".strip()
    if task.status == "completed":
        return "result " + short_json(task.result, 43)
    if task.status == "pending" and task.next_run_time is not None:
        return f"due {when(task.next_run_time)}"
    return ""


def cmd_show(args: argparse.Namespace) -> int:
    """``tideflow tasks show ID``: fields, then events and attempts."""
    out = sys.stdout
    tm = _client(args)
    try:
        task = tm.get_task(args.id)
        if task is None:
            raise CliError(f"no task with id {args.id}", code=1)
        events = tm.query_task_events(args.id).items
        attempts = tm.query_task_attempts(args.id).items
    finally:
        tm.close()
    if args.json:
        data = {
            "task": task.to_dict(),
            "events": [e.to_dict() for e in events],
            "attempts": [a.to_dict() for a in attempts],
        }
        out.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
        return 0

    fields: list[tuple[str, Any]] = [
        ("id", task.id),
        ("name", task.name),
        ("type", task.type if task.cron_expr is None else f"cron {task.cron_expr} ({task.tz})"),
        ("status", task.status),
        ("stage", task.stage),
        ("priority", task.priority),
        ("tag", task.tag or "-"),
        ("requires", ", ".join(task.requires) or "-"),
        (
            "attempt",
            f"{task.attempt} (retries scheduled {task.retry_count}, max {task.max_retries})",
        ),
        ("timeout", duration(task.timeout)),
        ("created", when(task.created_at)),
        ("next run", when(task.next_run_time)),
        ("started", when(task.start_time)),
        ("last active", when(task.last_active_time)),
        ("worker", task.worker_id or "-"),
    ]
    if task.parent_id is not None or task.total_children:
        fields.append(("parent", task.parent_id if task.parent_id is not None else "-"))
        fields.append(("root", task.root_id))
        fields.append(("children", f"{task.completed_children}/{task.total_children} finished"))
    if task.suspend_reason:
        fields.append(("suspend reason", task.suspend_reason))
    if task.unique_key:
        fields.append(("unique key", task.unique_key))
    if task.progress_percent is not None or task.progress_text or task.current_stage_name:
        pct = "-" if task.progress_percent is None else f"{task.progress_percent:g}%"
        text = " ".join(x for x in (task.current_stage_name, task.progress_text) if x)
        fields.append(("progress", f"{pct} {text}".rstrip()))
    if task.context is not None:
        fields.append(("context", f"{len(task.context)} bytes"))
    fields.append(("payload", json.dumps(task.payload, ensure_ascii=False, default=str)))
    fields.append(("result", json.dumps(task.result, ensure_ascii=False, default=str)))
    for field, reason in task.unreadable.items():
        fields.append((f"unreadable {field}", reason))
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        out.write(f"{key.rjust(width)}: {value}\n")
    if task.error:
        out.write(f"{'error'.rjust(width)}:\n")
        for line in task.error.rstrip().splitlines():
            out.write(f"    {line}\n")

    out.write(f"\nevents ({len(events)}):\n")
    print_table(
        out,
        ["TIME (UTC)", "EVENT", "FROM -> TO", "STAGE", "TRY", "WORKER", "MESSAGE"],
        [
            [
                when(e.event_time),
                e.event_type,
                f"{e.from_status or '-'} -> {e.to_status or '-'}" if e.to_status else "",
                e.stage,
                e.attempt if e.attempt is not None else "-",
                e.worker_id or "-",
                one_line(e.message, 50) if e.message else "",
            ]
            for e in events
        ],
        indent="  ",
    )
    out.write(f"\nattempts ({len(attempts)}):\n")
    print_table(
        out,
        ["TRY", "WORKER", "STAGE", "STARTED (UTC)", "DURATION", "OUTCOME", "ERROR"],
        [
            [
                a.attempt,
                a.worker_id,
                a.stage,
                when(a.started_at),
                duration(a.duration_seconds),
                a.outcome or "(running)",
                one_line(a.error, 50) if a.error else "",
            ]
            for a in attempts
        ],
        indent="  ",
    )
    return 0


# --- control -----------------------------------------------------------------------------------
def cmd_control(args: argparse.Namespace) -> int:
    """``tideflow tasks resume|cancel|pause|retry ID...``."""
    out = sys.stdout
    tm = _client(args)
    failed = 0
    try:
        for task_id in args.ids:
            try:
                if args.action == "resume":
                    tm.resume_task(task_id, resume_reason=args.reason)
                elif args.action == "cancel":
                    tm.cancel_task(task_id, reason=args.reason)
                elif args.action == "pause":
                    tm.pause_task(task_id)
                else:
                    tm.retry_task(task_id)
            except TideflowError as exc:
                failed += 1
                sys.stderr.write(f"task {task_id}: {exc}\n")
                continue
            task = tm.get_task(task_id)
            status = task.status if task is not None else "deleted"
            out.write(f"task {task_id}: {args.action} done, status is now {status}\n")
    finally:
        tm.close()
    return 1 if failed else 0


def cmd_delete(args: argparse.Namespace) -> int:
    """``tideflow tasks delete``: by ids and/or filters (all given filters must match)."""
    out = sys.stdout
    if not args.ids and args.status is None and args.name is None and args.tag is None:
        raise CliError("tasks delete needs task ids or at least one of --status, --name, --tag")
    tm = _client(args)
    try:
        count = tm.delete_tasks(
            ids=args.ids or None, status=args.status, name=args.name, tag=args.tag
        )
    finally:
        tm.close()
    out.write(f"deleted {count} task(s)\n")
    return 0


# --- stats -------------------------------------------------------------------------------------
def cmd_stats(args: argparse.Namespace) -> int:
    """``tideflow stats``: counts per name and status, workers, and work nobody can serve."""
    out = sys.stdout
    tm = _client(args)
    try:
        stats = tm.get_task_stats()
        workers = tm.get_workers()
        unserved = tm.get_unserved_tasks()
    finally:
        tm.close()
    counts: Counter[tuple[str, str]] = Counter(
        {(r["name"], r["status"]): r["count"] for r in stats}
    )
    names = sorted({name for name, _ in counts})
    active = [w for w in workers if w.status == "active"]

    if args.json:
        data = {
            "counts": [
                {"name": n, "status": s, "count": c} for (n, s), c in sorted(counts.items())
            ],
            "workers": [w.to_dict() for w in workers],
            "unserved": unserved,
        }
        out.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
        return 0

    if not counts:
        out.write("no tasks\n")
    else:
        statuses = [s for s in STATUSES if any(counts[(n, s)] for n in names)]
        rows: list[list[Any]] = [
            [n, *[counts[(n, s)] for s in statuses], sum(counts[(n, s)] for s in statuses)]
            for n in names
        ]
        rows.append(
            [
                "TOTAL",
                *[sum(counts[(n, s)] for n in names) for s in statuses],
                sum(counts.values()),
            ]
        )
        print_table(out, ["NAME", *[s.upper() for s in statuses], "TOTAL"], rows)
    by_status = Counter(w.status for w in workers)
    summary = ", ".join(f"{c} {s}" for s, c in sorted(by_status.items())) or "none registered"
    out.write(f"\nworkers: {summary}\n")
    for w in active:
        caps = f" capabilities={','.join(w.capabilities)}" if w.capabilities else ""
        caps += f" pod={w.pod_id}" if w.pod_id else ""
        caps += f" unreadable={','.join(w.unreadable)}" if w.unreadable else ""
        out.write(
            f"  {w.worker_id} pid={w.pid} concurrency={w.concurrency}{caps}"
            f" handlers={','.join(w.handlers) or '-'} last seen {when(w.last_seen_at)}\n"
        )
    if unserved:
        out.write("\nwaiting with no active worker that can run them:\n")
        for u in unserved:
            needs = f" requiring {', '.join(u['requires'])}" if u["requires"] else ""
            out.write(f"  {u['count']} x {u['name']}{needs}: {u['reason']}\n")
    return 0


# --- retention ---------------------------------------------------------------------------------
def cmd_retention(args: argparse.Namespace) -> int:
    """``tideflow retention``: one retention run now."""
    out = sys.stdout
    policy: dict[str, Any] = {}
    if args.expire_time is not None:
        policy["expire_time"] = args.expire_time
    if args.statuses is not None:
        policy["statuses"] = [s.strip() for s in args.statuses.split(",") if s.strip()]
    tm = _client(args)
    try:
        deleted = tm.run_retention(policy)
    finally:
        tm.close()
    if args.json:
        out.write(json.dumps(deleted) + "\n")
    else:
        out.write(
            f"deleted {deleted['tasks_deleted']} task(s), {deleted['events_deleted']} event(s)"
            f" and {deleted['attempts_deleted']} attempt(s)\n"
        )
    return 0


def _dialect_of(db: str) -> str:
    """The dialect of connection string ``db``."""
    backend = backend_of(db)
    if backend is None:
        raise CliError(f"cannot tell the database of {db.split(':', 1)[0]!r}: use --dialect")
    return "postgresql" if backend == "postgres" else backend
