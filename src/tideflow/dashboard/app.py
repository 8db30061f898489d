"""The web dashboard: an ASGI application (Starlette) over a :class:`TaskManager`.

Pages: the overview (counts, throughput over the last hour, workers), the task list (search,
sort, paging, bulk actions with a review page), a task (payload, result, error, progress,
events, attempts, actions), a workflow (a paged timeline with its critical path) and the
workers (what each runs now). They update themselves from the server-sent events of
``/events/stream`` (:mod:`tideflow.dashboard.live`); what they show is shaped by
:mod:`tideflow.dashboard.views`. ``/api/`` serves the same data as JSON and ``/metrics``
serves Prometheus metrics.

Reading and acting need the token (reading does not with ``public_read=True``): a browser gives
it once at ``/login`` and gets a random session id, kept in memory here with an idle and an
absolute expiry and revoked at sign-out, in an HttpOnly SameSite=Strict cookie (``Secure`` over
HTTPS); every form carries a CSRF token that must match a cookie of its own (double submit); API
clients and Prometheus send ``Authorization: Bearer <token>``. Wrong tokens are throttled, the
``Host`` header must be one the dashboard answers to, and every response carries a CSP without
inline script plus nosniff, no-referrer and (outside ``/static/``) ``no-store``: see
:mod:`tideflow.dashboard.security`. Serve it on 127.0.0.1 (the default of ``tideflow dashboard``)
or behind a proxy that adds TLS.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import Scope

from tideflow.dashboard import views
from tideflow.dashboard.live import ChangeFeed, short_mark
from tideflow.dashboard.security import (
    LOOPBACK_HOSTS,
    VALUE_LIMIT,
    AuthGate,
    Clock,
    HostCheck,
    LoginThrottle,
    SecurityHeaders,
    SessionStore,
    cap_value,
    client_key,
    header_bytes,
    json_chunks,
    json_size,
    parse_choice,
    parse_fields,
    parse_int,
    parse_text,
    retry_after,
    same_secret,
)
from tideflow.errors import (
    InvalidOptionError,
    InvalidTransitionError,
    TaskNotFoundError,
    TideflowError,
)
from tideflow.manager import TaskManager
from tideflow.models import WORKER_STATUSES, Page, Status, TaskEvent, TaskInfo

__all__ = ["ACTIONS", "create_app"]

ACTIONS = ("resume", "cancel", "pause", "retry", "delete")
STATUSES = tuple(s.value for s in Status)
UNFINISHED = tuple(s for s in STATUSES if s not in ("completed", "permanently_failed"))
SESSION_COOKIE = "tideflow_session"
CSRF_COOKIE = "tideflow_csrf"
#: what a list of tasks leaves out unless asked (``?fields=payload,result``)
LIST_FIELDS = ("payload", "result", "context")
#: the values ``GET /api/tasks/{id}/{field}`` serves whole (streamed)
VALUE_FIELDS = ("payload", "result", "context", "error")
ORDERS = ("desc", "asc")
MAX_PAGE = 500
TREE_LIMIT = 500  # tasks per page of a workflow's timeline


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """A query parameter of ASCII digits only (``+5``, ``1_0``, other scripts' digits: 400)."""
    return parse_int(request.query_params.get(name), name, default, low, high)


def _task_filters(request: Request) -> dict[str, Any]:
    params = request.query_params
    filters: dict[str, Any] = {}
    for key in ("status", "name", "tag"):
        value = parse_text(params.get(key), key)
        if value is not None:
            filters[key] = value
    return filters  # query_tasks checks them


class _Metrics(Collector):
    """Prometheus gauges read from the database at each scrape."""

    def __init__(self, tm: TaskManager) -> None:
        self._tm = tm

    def collect(self) -> Any:
        tasks = GaugeMetricFamily(
            "tideflow_tasks", "Tasks by name and status", labels=["name", "status"]
        )
        for row in self._tm.get_task_stats():
            tasks.add_metric([row["name"], row["status"]], row["count"])
        yield tasks
        workers = GaugeMetricFamily("tideflow_workers", "Workers by status", labels=["status"])
        counts: dict[str, int] = dict.fromkeys(WORKER_STATUSES, 0)
        for w in self._tm.get_workers():
            counts[w.status] = counts.get(w.status, 0) + 1
        for status, count in counts.items():
            workers.add_metric([status], count)
        yield workers
        finished = GaugeMetricFamily(
            "tideflow_tasks_finished_last_5m",
            "Tasks that finished over the last 5 minutes, by outcome",
            labels=["status"],
        )
        buckets = self._tm.get_throughput(window=300, bucket=300)
        for status in ("completed", "permanently_failed"):
            finished.add_metric([status], sum(b[status] for b in buckets))
        yield finished


def create_app(
    tm: TaskManager,
    token: str,
    *,
    public_read: bool = False,
    allowed_hosts: Sequence[str] | None = None,
    session_idle: float = 12 * 3600,
    session_lifetime: float = 24 * 3600,
    clock: Clock = time.monotonic,
) -> Starlette:
    """The dashboard of ``tm``'s database; ``token`` unlocks reading and the actions.

    ``public_read``: pages, the read API and ``/metrics`` need no token (actions still do).
    ``allowed_hosts``: the ``Host`` names it answers to (default: the loopback names
    127.0.0.1, localhost and [::1]; ``*.example.com`` matches subdomains, ``["*"]`` anything).
    ``session_idle`` / ``session_lifetime``: seconds a browser's sign-in lasts unused / at most.
    ``clock``: monotonic seconds for sessions and sign-in throttling (tests move it).
    """
    if not isinstance(token, str) or len(token) < 8:
        raise InvalidOptionError("the dashboard token must be a string of at least 8 characters")
    templates = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
    views.install(templates.env)
    feed = ChangeFeed(tm)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Metrics(tm))
    sessions = SessionStore(idle=session_idle, lifetime=session_lifetime, clock=clock)
    throttle = LoginThrottle(clock=clock)
    hosts = list(LOOPBACK_HOSTS if allowed_hosts is None else allowed_hosts)

    def signed_in(request: Request) -> bool:
        return sessions.check(request.cookies.get(SESSION_COOKIE))

    def bearer_ok(request: Request) -> bool:
        """``Authorization: Bearer <token>``, compared as bytes and throttled when wrong; a
        refusal leaves its reason in the scope for the 401/429 answer."""
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        client = _client(request)
        wait = throttle.wait(client)
        if wait > 0:
            request.scope["tideflow.throttled"] = wait
            return False
        if same_secret(header_bytes(given.strip()), token):
            throttle.succeeded(client)
            return True
        throttle.failed(client)
        request.scope["tideflow.wrong_token"] = True
        return False

    def authorised(scope: Scope) -> bool:
        request = Request(scope)
        return signed_in(request) or bearer_ok(request)

    def cookie(response: Response, request: Request, name: str, value: str, **kw: Any) -> None:
        secure = request.url.scheme == "https"
        response.set_cookie(
            name, value, httponly=True, samesite="strict", secure=secure, path="/", **kw
        )

    def page(request: Request, name: str, context: Mapping[str, Any], status: int = 200) -> Any:
        csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
        response = templates.TemplateResponse(
            request,
            name,
            {
                "csrf": csrf,
                "signed_in": signed_in(request),
                "statuses": STATUSES,
                "actions": ACTIONS,
                "mark": None,
                **context,
            },
            status_code=status,
        )
        if CSRF_COOKIE not in request.cookies:
            cookie(response, request, CSRF_COOKIE, csrf)
        return response

    # --- data shared by the pages and the API -----------------------------------------------
    shared: dict[str, Any] = {}

    def overview() -> dict[str, Any]:
        """The overview's data; while live streams are open, computed once per change of the
        database (every open overview refreshes after the same change) rather than per reader."""
        mark = feed.current()
        cached = shared.get("overview")
        if mark is not None and cached is not None and cached[0] == mark:
            return dict(cached[1])
        data = compute_overview()
        if mark is not None:
            shared["overview"] = (mark, data)
        return dict(data)

    def compute_overview() -> dict[str, Any]:
        stats = tm.get_task_stats()
        by_status = dict.fromkeys(STATUSES, 0)
        names: dict[str, dict[str, int]] = {}
        for row in stats:
            by_status[row["status"]] = by_status.get(row["status"], 0) + row["count"]
            names.setdefault(row["name"], {})[row["status"]] = row["count"]
        workers = tm.get_workers()
        throughput = tm.get_throughput(window=3600, bucket=60)
        return {
            "statuses": by_status,
            "total": sum(by_status.values()),
            "names": [
                {"name": n, "counts": c, "total": sum(c.values())} for n, c in sorted(names.items())
            ],
            "workers": {s: sum(1 for w in workers if w.status == s) for s in WORKER_STATUSES},
            "throughput": throughput,
            "unserved": tm.get_unserved_tasks(),
            "peak": max((b["completed"] + b["permanently_failed"] for b in throughput), default=0),
        }

    def task_page(request: Request) -> tuple[Page[TaskInfo], dict[str, Any], int, int]:
        """A page of the task list: the exact filters, the searches and the sort of
        :func:`views.search_keywords`; returns the parameters used (for links) as filters."""
        _task_filters(request)  # the exact filters' checks
        keywords, used = views.search_keywords(request.query_params, datetime.now(UTC))
        limit = _int_param(request, "limit", 50, 1, MAX_PAGE)
        offset = _int_param(request, "offset", 0, 0, 10**12)
        order = parse_choice(request.query_params.get("order"), "order", ORDERS, "desc")
        if request.query_params.get("order"):
            used["order"] = order
        found = tm.query_tasks(**keywords, limit=limit, offset=offset, order=order)
        return found, used, limit, offset

    def live_mark() -> str:
        """The change mark a page is rendered at (its script compares the stream's with it)."""
        return short_mark(tm.get_change_mark())

    def task_detail(task_id: int) -> dict[str, Any]:
        audit = tm.get_task_audit(task_id)
        if audit.task is None:
            raise TaskNotFoundError(f"no task with id {task_id}")
        children = tm.get_child_tasks(task_id)
        return {
            "task": _page_capped(audit.task),
            "events": _events_capped(audit.events),
            "attempts": audit.attempts,
            "children": children,
        }

    def last_children(parent_id: int) -> Sequence[TaskInfo]:
        """The child a parent waited for last: an unfinished one if any (it finishes now at
        the earliest), else the one that finished last; one row read either way."""
        live = tm.query_tasks(parent_id=parent_id, statuses=UNFINISHED, limit=1, order="desc")
        if live.items:
            return live.items
        return tm.query_tasks(parent_id=parent_id, sort="finished", order="desc", limit=1).items

    def workflow_detail(root_id: int, offset: int = 0) -> dict[str, Any]:
        summary = tm.get_workflow_audit_summary(root_id)
        if summary["root_task"] is None:
            raise TaskNotFoundError(f"no workflow with root id {root_id}")
        found = tm.query_tasks(workflow_root_id=root_id, limit=TREE_LIMIT, offset=offset)
        tasks = found.items
        root = tm.get_task(root_id)
        assert root is not None
        path = views.critical_path(root, last_children)
        path_attempts = {t.id: tm.query_task_attempts(t.id).items for t in path}
        attempts = []
        if tasks:
            # the attempts of this page's tasks (they started after its first was created)
            on_page = {t.id for t in tasks}
            attempts = [
                a
                for a in tm.query_workflow_attempts(
                    root_id, started_after=tasks[0].created_at, limit=TREE_LIMIT * 20
                ).items
                if a.task_id in on_page
            ]
        drawn = views.timeline(tasks, attempts, datetime.now(UTC), root_id, path, path_attempts)
        return {
            "summary": summary,
            "root": root,
            "page": found,
            "timeline": drawn,
            "prev": max(0, offset - TREE_LIMIT) if offset else None,
            "next": offset + TREE_LIMIT if found.has_more else None,
        }

    def act(task_id: int, action: str, reason: str | None) -> None:
        if action not in ACTIONS:
            raise HTTPException(404, f"unknown action {action!r}")
        if action == "resume":
            tm.resume_task(task_id, resume_reason=reason)
        elif action == "cancel":
            tm.cancel_task(task_id, reason=reason)
        elif action == "pause":
            tm.pause_task(task_id)
        elif action == "retry":
            tm.retry_task(task_id)
        elif not tm.delete_tasks(ids=[task_id]):
            raise TaskNotFoundError(f"no task with id {task_id}")

    # --- HTML ---------------------------------------------------------------------------------
    def home(request: Request) -> Any:
        return page(request, "overview.html", {"o": overview(), "mark": live_mark()})

    def tasks(request: Request) -> Any:
        mark = live_mark()
        found, filters, limit, offset = task_page(request)

        def link(new_offset: int) -> str:
            return "/tasks?" + urlencode({**filters, "limit": limit, "offset": new_offset})

        def sort_link(key: str) -> str:
            """The column's header: sorts by it, the other way round when it already does."""
            current = filters.get("sort", "id")
            order = filters.get("order", "desc")
            flip = "asc" if current == key and order == "desc" else "desc"
            return "/tasks?" + urlencode({**filters, "sort": key, "order": flip, "limit": limit})

        done = parse_text(request.query_params.get("done"), "done")
        return page(
            request,
            "tasks.html",
            {
                "page": found,
                "filters": filters,
                "sort": filters.get("sort", "id"),
                "order": filters.get("order", "desc"),
                "sort_link": sort_link,
                "limit": limit,
                "prev": link(max(0, offset - limit)) if offset else None,
                "next": link(offset + limit) if found.has_more else None,
                "bulk_actions": views.BULK_ACTIONS,
                "bulk_max": views.BULK_MAX,
                "done": done,
                "mark": mark,
            },
        )

    def task(request: Request) -> Any:
        mark = live_mark()
        data = task_detail(request.path_params["task_id"])
        done = parse_text(request.query_params.get("done"), "done")
        return page(request, "task.html", {**data, "done": done, "mark": mark})

    def workflow(request: Request) -> Any:
        mark = live_mark()
        offset = _int_param(request, "offset", 0, 0, 10**12)
        data = workflow_detail(request.path_params["root_id"], offset)
        return page(request, "workflow.html", {**data, "mark": mark})

    def workers(request: Request) -> Any:
        mark = live_mark()
        show_all = parse_choice(request.query_params.get("all"), "all", ("0", "1"), "0") == "1"
        everyone = tm.get_workers()
        shown, hidden = views.visible_workers(everyone, datetime.now(UTC), show_all)
        running: dict[str, list[TaskInfo]] = {}
        found = tm.query_tasks(status="running", limit=MAX_PAGE, order="asc")
        for t in found.items:
            running.setdefault(t.worker_id or "", []).append(t)
        return page(
            request,
            "workers.html",
            {
                "workers": shown,
                "hidden": hidden,
                "show_all": show_all,
                "running": running,
                "running_total": found.total,
                "age_out": views.WORKER_AGE_OUT,
                "mark": mark,
            },
        )

    async def events_stream(request: Request) -> Any:
        """Server-sent events: ``hello`` then ``change`` whenever the database changed."""
        return StreamingResponse(
            feed.stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def bulk(request: Request) -> Any:
        """A bulk action on the task list's selection: first a review page that says how many
        tasks it acts on, which it skips and why (running ones unless included), then, with
        ``confirm=1``, the action on exactly the tasks reviewed (re-checked: one that started
        running meanwhile is skipped unless running ones were included)."""
        form = await request.form()
        if not _csrf_ok(request, form):
            raise HTTPException(403, "the form's CSRF token is missing or stale; reload the page")
        if not signed_in(request):
            return RedirectResponse(f"/login?{urlencode({'next': '/tasks'})}", 303)
        action = parse_text(_form_text(form, "action"), "action") or ""
        if action not in views.BULK_ACTIONS:
            raise InvalidOptionError(
                f"bulk action must be one of {', '.join(views.BULK_ACTIONS)}; got {action[:40]!r}"
            )
        include_running = _form_text(form, "include_running") == "1"
        scope = parse_choice(_form_text(form, "scope"), "scope", ("selected", "all"), "selected")
        back = {k: v for k in views.SEARCH_PARAMS if (v := _form_text(form, k))}
        reason = parse_text(_form_text(form, "reason"), "reason")
        raw_ids = [v for v in form.getlist("ids") if isinstance(v, str)]
        if len(raw_ids) > views.BULK_MAX or not all(i.isascii() and i.isdigit() for i in raw_ids):
            raise InvalidOptionError(f"ids must be at most {views.BULK_MAX} task ids")
        ids = [int(i) for i in raw_ids if len(i) <= 19]

        def chosen() -> tuple[Sequence[TaskInfo], bool]:
            if scope == "all" and _form_text(form, "confirm") != "1":
                keywords, _ = views.search_keywords(back, datetime.now(UTC))
                found = tm.query_tasks(**keywords, limit=views.BULK_MAX, order="asc")
                return found.items, found.has_more
            if not ids:
                raise InvalidOptionError(
                    "no task is selected: tick the tasks to act on, or choose all matching"
                )
            return tm.query_tasks(ids=ids, limit=views.BULK_MAX, order="asc").items, False

        items, more = await run_in_threadpool(chosen)
        selection = views.select_bulk(action, items, include_running, more)
        if _form_text(form, "confirm") != "1":
            return page(
                request,
                "bulk.html",
                {
                    "selection": selection,
                    "meaning": views.BULK_ACTIONS[action][1],
                    "back": back,
                    "back_url": "/tasks?" + urlencode(back),
                    "reason": reason,
                },
            )

        def run() -> tuple[int, int]:
            done = failed = 0
            if action == "delete":
                targets = selection.targets
                if targets:
                    done = tm.delete_tasks(ids=targets)
                return done, len(items) - done
            for task_id in selection.targets:
                try:
                    if action == "retry":
                        tm.retry_task(task_id)
                    else:
                        tm.cancel_task(task_id, reason=reason)
                    done += 1
                except (InvalidTransitionError, TaskNotFoundError):
                    failed += 1
            return done, len(items) - done

        done, skipped = await run_in_threadpool(run)
        verb = {"retry": "retried", "cancel": "cancelled", "delete": "deleted"}[action]
        note = f"{verb} {done} task{'s' if done != 1 else ''}"
        if skipped:
            note += f", skipped {skipped}"
        return RedirectResponse(f"/tasks?{urlencode({**back, 'done': note})}", status_code=303)

    async def login(request: Request) -> Any:
        if request.method == "GET":
            return page(request, "login.html", {"error": None})
        form = await request.form()
        if not _csrf_ok(request, form):
            raise HTTPException(403, "the form's CSRF token is missing or stale; reload the page")
        client = _client(request)
        wait = throttle.wait(client)
        if wait > 0:
            message = (
                f"Too many wrong tokens (from your address, or from everyone): try again in"
                f" {retry_after(wait)} s."
            )
            response = page(request, "login.html", {"error": message}, status=429)
            response.headers["Retry-After"] = retry_after(wait)
            return response
        given = form.get("token")
        if not isinstance(given, str) or not same_secret(given, token):
            throttle.failed(client)
            return page(request, "login.html", {"error": "wrong token"}, status=401)
        throttle.succeeded(client)
        sessions.revoke(request.cookies.get(SESSION_COOKIE))  # a fresh id at every sign-in
        response = RedirectResponse(_local(str(form.get("next", "/"))), status_code=303)
        cookie(response, request, SESSION_COOKIE, sessions.create(), max_age=int(session_lifetime))
        return response

    async def logout(request: Request) -> Any:
        form = await request.form()
        if not _csrf_ok(request, form):
            raise HTTPException(403, "the form's CSRF token is missing or stale; reload the page")
        sessions.revoke(request.cookies.get(SESSION_COOKIE))  # the id stops working everywhere
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(
            SESSION_COOKIE,
            path="/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    async def task_action(request: Request) -> Any:
        form = await request.form()
        if not _csrf_ok(request, form):
            raise HTTPException(403, "the form's CSRF token is missing or stale; reload the page")
        task_id, action = request.path_params["task_id"], request.path_params["action"]
        if not signed_in(request):
            return RedirectResponse(f"/login?{urlencode({'next': f'/tasks/{task_id}'})}", 303)
        reason = str(form.get("reason") or "") or None
        await _threaded(lambda: act(task_id, action, reason))
        target = "/tasks" if action == "delete" else f"/tasks/{task_id}"
        return RedirectResponse(f"{target}?{urlencode({'done': action})}", status_code=303)

    # --- JSON ---------------------------------------------------------------------------------
    def api_overview(request: Request) -> Any:
        data = overview()
        data["throughput"] = [{**b, "start": b["start"].isoformat()} for b in data["throughput"]]
        return JSONResponse(data)

    def api_tasks(request: Request) -> Any:
        fields = parse_fields(request.query_params.get("fields"), LIST_FIELDS)
        found, _, _, _ = task_page(request)
        return JSONResponse(
            {
                "items": [
                    _api_task(t.to_dict(), omit=set(LIST_FIELDS) - fields) for t in found.items
                ],
                "total": found.total,
                "limit": found.limit,
                "offset": found.offset,
                "has_more": found.has_more,
            }
        )

    def api_task(request: Request) -> Any:
        audit = tm.get_task_audit(request.path_params["task_id"])
        if audit.task is None:
            raise TaskNotFoundError(f"no task with id {request.path_params['task_id']}")
        data = audit.to_dict()
        data["task"] = _api_task(data["task"])
        for event in data["events"]["items"]:
            event["metadata"] = cap_value(event["metadata"], None)
        return JSONResponse(data)

    def api_task_value(request: Request) -> Any:
        """One value of a task whole, streamed as JSON: what the capped views point to."""
        task_id, field = request.path_params["task_id"], request.path_params["field"]
        if field not in VALUE_FIELDS:
            raise HTTPException(
                404, f"unknown task field {field[:40]!r}; allowed: {', '.join(VALUE_FIELDS)}"
            )
        found = tm.get_task(task_id)
        if found is None:
            raise TaskNotFoundError(f"no task with id {task_id}")
        return StreamingResponse(json_chunks(getattr(found, field)), media_type="application/json")

    def api_workflow(request: Request) -> Any:
        root_id = request.path_params["root_id"]
        summary = tm.get_workflow_audit_summary(root_id)
        if summary["root_task"] is None:
            raise TaskNotFoundError(f"no workflow with root id {root_id}")
        failed = [
            {**f, "error": cap_value(f["error"], f"/api/tasks/{f['task_id']}/error")}
            for f in summary["failed_tasks"]
        ]
        root = _api_task(summary["root_task"])
        return JSONResponse({**summary, "root_task": root, "failed_tasks": failed})

    def api_workers(request: Request) -> Any:
        return JSONResponse([w.to_dict() for w in tm.get_workers()])

    async def api_action(request: Request) -> Any:
        if not bearer_ok(request):
            return JSONResponse(
                {"error": "send the dashboard token as 'Authorization: Bearer <token>'"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        reason = request.query_params.get("reason") or None
        task_id, action = request.path_params["task_id"], request.path_params["action"]
        await _threaded(lambda: act(task_id, action, reason))
        return JSONResponse({"task_id": task_id, "action": action, "ok": True})

    def metrics(request: Request) -> Any:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    # --- errors -------------------------------------------------------------------------------
    def error(request: Request, status: int, message: str) -> Any:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status)
        return page(request, "error.html", {"status": status, "message": message}, status=status)

    async def on_error(request: Request, exc: Exception) -> Any:
        if isinstance(exc, HTTPException):
            return error(request, exc.status_code, str(exc.detail))
        if isinstance(exc, TaskNotFoundError):
            return error(request, 404, str(exc))
        if isinstance(exc, InvalidTransitionError):
            return error(request, 409, str(exc))
        if isinstance(exc, InvalidOptionError):
            return error(request, 400, str(exc))
        return error(request, 500, f"{type(exc).__name__}: {exc}")

    # ids in paths are {name:tideflow_id}: ASCII digits, past 2**63-1 a 404 (never :int)
    routes = [
        Route("/", home),
        Route("/tasks", tasks),
        Route("/tasks/bulk", bulk, methods=["POST"]),
        Route("/events/stream", events_stream),
        Route("/tasks/{task_id:tideflow_id}", task),
        Route("/tasks/{task_id:tideflow_id}/{action:str}", task_action, methods=["POST"]),
        Route("/workflows/{root_id:tideflow_id}", workflow),
        Route("/workers", workers),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/api/overview", api_overview),
        Route("/api/tasks", api_tasks),
        Route("/api/tasks/{task_id:tideflow_id}", api_task),
        Route("/api/tasks/{task_id:tideflow_id}/{field:str}", api_task_value, methods=["GET"]),
        Route("/api/tasks/{task_id:tideflow_id}/{action:str}", api_action, methods=["POST"]),
        Route("/api/workflows/{root_id:tideflow_id}", api_workflow),
        Route("/api/workers", api_workers),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    handlers: dict[Any, Callable[..., Any]] = {
        HTTPException: on_error,
        TideflowError: on_error,
    }
    # outermost first: headers on every answer (refusals too), then the Host check, then the
    # token (reading needs it unless public_read)
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(HostCheck, allowed_hosts=hosts),
        Middleware(AuthGate, allowed=authorised, public_read=public_read, public=_public_path),
    ]
    return Starlette(routes=routes, exception_handlers=handlers, middleware=middleware)


STATIC = Path(__file__).with_name("static")


def _public_path(path: str) -> bool:
    """Paths anyone may fetch: signing in and out, and the CSS and JavaScript."""
    return path in ("/login", "/logout", "/favicon.ico") or path.startswith("/static/")


def _client(request: Request) -> str:
    """The address sign-in failures are counted against (the proxy's client address when
    ``--forwarded-allow-ips`` trusts it)."""
    return client_key(request.client.host) if request.client else "unknown"


def _api_task(
    data: dict[str, Any], omit: set[str] | frozenset[str] = frozenset()
) -> dict[str, Any]:
    """A task's dict for the API: ``omit`` left out, large values replaced by a marker."""
    out = {k: v for k, v in data.items() if k not in omit}
    for field in VALUE_FIELDS:
        if field in out:
            out[field] = cap_value(out[field], f"/api/tasks/{data['id']}/{field}")
    return out


def _events_capped(events: Page[TaskEvent]) -> Page[TaskEvent]:
    """The events with any metadata over the limit replaced by a marker of its size."""
    if all(json_size(e.metadata) <= VALUE_LIMIT for e in events.items):
        return events
    items = [
        dataclasses.replace(e, metadata=cap_value(e.metadata, None))
        if json_size(e.metadata) > VALUE_LIMIT
        else e
        for e in events.items
    ]
    return dataclasses.replace(events, items=items)


def _page_capped(task: TaskInfo) -> TaskInfo:
    """The task with each value over the limit replaced by a note of its size and its URL."""
    changes: dict[str, Any] = {}
    for field in VALUE_FIELDS:
        value = getattr(task, field)
        size = json_size(value)
        if size > VALUE_LIMIT:
            changes[field] = (
                f"[{size:,} bytes, over the {VALUE_LIMIT:,}-byte display limit:"
                f" the whole value is at /api/tasks/{task.id}/{field}]"
            )
    return dataclasses.replace(task, **changes) if changes else task


def _form_text(form: Mapping[str, Any], name: str) -> str:
    """A form field as text ("" when absent or a file)."""
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _csrf_ok(request: Request, form: Mapping[str, Any]) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    given = form.get("csrf", "")
    return bool(cookie) and isinstance(given, str) and same_secret(given, cookie)


def _local(target: str) -> str:
    """Only a path on this site is followed after login (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


async def _threaded(fn: Callable[[], None]) -> None:
    await run_in_threadpool(fn)
