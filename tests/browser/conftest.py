"""Browser tests of the dashboard: Playwright for Python driving Debian's Chromium.

Two dashboards are served, each by uvicorn in a thread on a free 127.0.0.1 port over a SQLite
file, with a worker (its own ``TaskManager``, as in a deployment) that ran
real tasks into it:

- ``site``: an operator's everyday database (mails, payments, reports as a workflow, failed
  invoice syncs to retry, a CSV import that reports progress step by step when a test says so),
  the source of the README's screenshots;
- ``hostile_site``: names, tags, payloads, results, progress texts, suspend reasons, event
  metadata and errors carrying ``<script>``, ``"><img src=x onerror=...>``, a right-to-left
  override (U+202E), a 5,000-character tag and a 100 KB error.

The dashboards and one browser live as long as this package's tests (not the whole run, whose
other tests should not share the machine with their workers); each test gets fresh contexts
(signed in by a saved session cookie unless asked otherwise) whose pages are watched by
:class:`Guard`: a dialog nobody
expected, a hostile string that ran (``window.__xss``), a Content-Security-Policy violation or
an uncaught script error fails the test.

Chromium comes from the system (``apt-get install chromium``; ``$TIDEFLOW_TEST_CHROMIUM``
names another binary): Playwright cannot download its browsers here. Without it (or without
Playwright) the tests skip with the reason, except under ``CI=true``, where they fail.
``TIDEFLOW_SCREENSHOTS=1`` makes the screenshot tests (the overview's and the workflow
timeline's, which come first in the file, before other tests add tasks) write
``docs/images/*.png``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from support.wait import wait_for, wait_for_status

CHROMIUM_ENV = "TIDEFLOW_TEST_CHROMIUM"
SCREENSHOTS_ENV = "TIDEFLOW_SCREENSHOTS"
TOKEN = "browser-test-token-0123456789"
ROOT = Path(__file__).resolve().parents[2]
#: a guard against a hang, not a timing assertion: Playwright's waits give up after this
WAIT_MS = 20_000

# --- hostile strings -----------------------------------------------------------------------------
# Each tries to run script; if one ever runs it sets window.__xss (see Guard) and opens a dialog.
SCRIPT = '<script>window.__xss=1;alert("xss-script")</script>'
IMG = '"><img src=x onerror="window.__xss=1;alert(\'xss-img\')">'
SVG = "'><svg onload=window.__xss=1;alert(3)>"
RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: "report{RLO}fdp.exe" would read "reportexe.pdf"
RLO_TEXT = f"report{RLO}fdp.exe"
LONG_TAG = "x" * 5000
BIG_ERROR = f"ValueError: {SCRIPT} {IMG} " + "a long traceback line\n" * 4800  # about 100 KB


def unavailable(reason: str) -> None:
    """Skip, or under ``CI=true`` fail: CI must run every browser test."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary (and Playwright importable); skips or fails without them."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        unavailable("Playwright is not installed: pip install -e '.[dev]'")
    path = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or "/usr/bin/chromium"
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        unavailable(
            f"no Chromium at {path}: apt-get install chromium (or set {CHROMIUM_ENV}); "
            "Playwright's own browsers cannot be downloaded here"
        )
    return path


# --- the dashboards -------------------------------------------------------------------------------
@dataclass
class Site:
    """A served dashboard: its base URL, the dashboard's manager (tests read and set up tasks
    with it, as another process would) and the ids of the seeded tasks."""

    url: str
    tm: Any
    worker: Any
    ids: dict[str, Any] = field(default_factory=dict)
    #: gates of the step-by-step handler: put() lets it take the next step
    gates: dict[str, queue.Queue[str]] = field(default_factory=dict)
    #: switches the handlers look at (``invoices_fixed``: the invoice syncs succeed)
    switches: dict[str, threading.Event] = field(default_factory=dict)


@contextlib.contextmanager
def serving(tm: Any, name: str) -> Iterator[str]:
    import uvicorn

    from tideflow.dashboard import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(tm, TOKEN),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"dashboard-{name}", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, message=f"the {name} dashboard did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def managers(
    db: str, handlers: dict[str, Any], worker_id: str | None = None
) -> Iterator[tuple[Any, Any]]:
    """(the worker's manager, started; the dashboard's manager) on one SQLite file."""
    from tideflow import TaskManager

    worker = TaskManager(db, poll_interval=0.02, max_concurrent_tasks=16, worker_id=worker_id)
    worker.use(handlers)
    worker.start()
    reader = TaskManager(db, allow_unregistered=True)  # submits names no worker runs
    try:
        yield worker, reader
    finally:
        worker.stop(timeout=5)
        worker.close()
        reader.close()


def _report(task: Any) -> Any:
    """A monthly report: fetch three regions in parallel, then render, then publish."""
    if task.stage == 0:
        regions = [("eu", 0.5), ("us", 0.9), ("apac", 0.3)]
        return task.next(
            [{"name": "reports.fetch", "payload": {"region": r, "work": w}} for r, w in regions]
        )
    if task.stage == 1:
        return task.next([{"name": "reports.render", "payload": {"pages": 12}}])
    return {"published": "reports/2026-11.pdf"}


def _fetch(task: Any) -> Any:
    if task.payload["region"] == "us" and task.attempt == 1:
        raise TimeoutError("upstream API timed out")  # retried after retry_interval
    for step in range(1, 4):
        time.sleep(task.payload["work"] / 3)  # the work the bar shows
        task.progress(f"page {step} of 3", progress_percent=step * 100 / 3)
    return {"rows": 1200}


def _render(task: Any) -> Any:
    time.sleep(0.4)
    return {"pages": task.payload["pages"]}


@pytest.fixture(scope="package")
def site(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    gates: dict[str, queue.Queue[str]] = {}
    invoices_fixed = threading.Event()

    def charge(task: Any) -> Any:
        if task.payload["card"].endswith("0002"):
            raise PermissionError("card declined")
        return {"charged": task.payload["amount"]}

    def sync_invoice(task: Any) -> Any:
        if not invoices_fixed.is_set():
            raise ConnectionError("accounting API unreachable")
        return {"synced": task.payload["invoice"]}

    def import_csv(task: Any) -> Any:
        """Progress in steps, each when the test puts a token in the task's gate."""
        gate = gates[task.payload["gate"]]
        task.progress("reading rows", progress_percent=10)
        gate.get(timeout=60)
        task.progress("validating rows", progress_percent=60)
        gate.get(timeout=60)
        return {"rows": 5000}

    def sync_batch(task: Any) -> Any:
        """A workflow whose parts each finish when the test puts a token in their gate."""
        if task.stage == 0:
            parts = task.payload["parts"]
            return task.next([{"name": "sync.part", "payload": task.payload}] * parts)
        return {"parts": len(task.result or [])}

    def sync_part(task: Any) -> Any:
        task.progress("waiting for the test", progress_percent=50)
        gates[task.payload["gate"]].get(timeout=60)
        return {"synced": True}

    def resize(task: Any) -> Any:
        task.progress("resized", progress_percent=100)
        return {"thumbnail": task.payload["path"] + ".thumb.png"}

    handlers = {
        "emails.send": lambda task: {"sent": True},
        "images.resize": resize,
        "payments.charge": charge,
        "invoices.sync": sync_invoice,
        "imports.csv": import_csv,
        "reports.monthly": _report,
        "reports.fetch": _fetch,
        "reports.render": _render,
        "sync.batch": sync_batch,
        "sync.part": sync_part,
    }
    db = f"sqlite:{tmp_path_factory.mktemp('site') / 'site.db'}"
    with managers(db, handlers) as (worker, tm):
        root = worker.submit("reports.monthly", {"month": "2026-11"}, retry_interval=0.3)
        ids: dict[str, Any] = {"report": root}
        done = [root]
        for i in range(14):
            done.append(worker.submit("emails.send", {"to": f"user{i}@example.com"}, tag="mail"))
        for i in range(6):
            done.append(worker.submit("images.resize", {"path": f"cat{i}.png"}, tag="media"))
        declined = []
        for i, card in enumerate(["4242", "0002", "4242", "4242", "0002"]):
            payload = {"card": f"4000 0000 0000 {card}", "amount": 10 + i}
            task = worker.submit("payments.charge", payload, max_retries=1, tag="billing")
            (declined if card == "0002" else done).append(task)
        invoices = [
            worker.submit("invoices.sync", {"invoice": f"INV-{n}"}, max_retries=1, tag="billing")
            for n in (1041, 1042, 1043)
        ]
        for n in range(2):
            tm.submit("exports.nightly", {"day": n}, delay=3600)  # no worker runs them (yet)
        for task_id in done:
            wait_for_status(worker, task_id, "completed", timeout=30)
        for task_id in declined + invoices:
            wait_for_status(worker, task_id, "permanently_failed", timeout=30)
        ids.update(declined=declined, invoices=invoices)
        with serving(tm, "site") as url:
            yield Site(url, tm, worker, ids, gates, {"invoices_fixed": invoices_fixed})
            invoices_fixed.set()
            for gate in gates.values():  # a test that failed midway leaves no handler waiting
                for _ in range(3):
                    gate.put("go")


@pytest.fixture(scope="package")
def hostile_site(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    def hostile(task: Any) -> Any:
        task.progress(f"{SCRIPT} {RLO_TEXT}", stage_name=IMG, progress_percent=40)
        task.audit(f"checkpoint {SVG}", message=SCRIPT, metadata={IMG: SCRIPT, "rtl": RLO_TEXT})
        return {SCRIPT: IMG, "rtl": RLO_TEXT, "svg": SVG}

    def boom(task: Any) -> Any:
        raise RuntimeError(BIG_ERROR)

    def parent(task: Any) -> Any:
        if task.stage == 0:
            return task.next([{"name": SCRIPT, "payload": IMG}, {"name": IMG, "payload": SVG}])
        return task.suspend(f"approval {IMG} {RLO_TEXT}")

    handlers = {SCRIPT: hostile, IMG: hostile, RLO_TEXT: hostile, "boom": boom, SVG: parent}
    db = f"sqlite:{tmp_path_factory.mktemp('hostile') / 'hostile.db'}"
    with managers(db, handlers, worker_id=f"w-{SCRIPT}-{RLO_TEXT}") as (worker, tm):
        ids = {
            "script": worker.submit(SCRIPT, {"html": SCRIPT, "img": IMG}, tag=IMG),
            "img": worker.submit(IMG, [SCRIPT, SVG], tag=SCRIPT),
            "rlo": worker.submit(RLO_TEXT, {"file": RLO_TEXT}, tag=RLO_TEXT),
            "error": worker.submit("boom", {"why": SVG}, max_retries=1, tag=SVG),
            "long_tag": tm.submit("later", {"tag": "long"}, tag=LONG_TAG),
            "workflow": worker.submit(SVG, {"html": SCRIPT}, tag=RLO_TEXT),
        }
        for key in ("script", "img", "rlo"):
            wait_for_status(worker, ids[key], "completed", timeout=30)
        wait_for_status(worker, ids["error"], "permanently_failed", timeout=30)
        wait_for_status(worker, ids["workflow"], "suspended", timeout=30)
        with serving(tm, "hostile") as url:
            yield Site(url, tm, worker, ids)


# --- the browser ----------------------------------------------------------------------------------
@pytest.fixture(scope="package")
def browser(chromium: str, site: Site, hostile_site: Site) -> Iterator[Any]:
    """One headless Chromium for these tests (set up after the dashboards, closed before)."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, headless=True)
        yield launched
        launched.close()


# Runs before any script of the page: window.__xss reports itself when a hostile string sets
# it, and CSP violations report themselves, both on the console (which outlives navigations).
GUARD_SCRIPT = """
(() => {
  Object.defineProperty(window, "__xss", {
    configurable: false,
    get() { return undefined; },
    set(v) { console.error("tideflow-guard: window.__xss was set: a hostile string ran"); },
  });
  document.addEventListener("securitypolicyviolation", (e) => {
    console.error(`tideflow-guard: CSP violation: ${e.violatedDirective} ${e.blockedURI}`);
  });
})();
"""


class Guard:
    """What a context's pages did that they must not: dialogs nobody expected (an alert from a
    hostile string), the ``window.__xss`` sentinel, CSP violations, uncaught script errors."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.confirms: list[str] = []  # messages of confirm() dialogs a test expects
        self.seen_confirms: list[str] = []

    def expect_confirm(self, text: str) -> None:
        """Accept the next ``confirm()`` whose message contains ``text`` (the app's own)."""
        self.confirms.append(text)

    def watch(self, page: Any) -> None:
        page.on("dialog", self._dialog)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"uncaught script error: {exc}"))

    def _dialog(self, dialog: Any) -> None:
        message = dialog.message
        expected = next((c for c in self.confirms if c in message), None)
        if dialog.type == "confirm" and expected is not None:
            self.confirms.remove(expected)
            self.seen_confirms.append(message)
            dialog.accept()
            return
        self.problems.append(f"unexpected {dialog.type} dialog: {message!r}")
        dialog.dismiss()

    def _console(self, message: Any) -> None:
        text = message.text
        if "tideflow-guard" in text or "Content Security Policy" in text:
            self.problems.append(f"console {message.type}: {text}")

    def check(self) -> None:
        assert not self.problems, "\n".join(self.problems)


@dataclass
class Browsing:
    """Opens pages of a dashboard in fresh browser contexts, all watched by one Guard."""

    browser: Any
    guard: Guard
    sessions: dict[str, Any]
    contexts: list[Any] = field(default_factory=list)

    def open(
        self,
        site: Site,
        path: str | None = "/",
        *,
        signed_in: bool = True,
        width: int = 1280,
        height: int = 800,
        color_scheme: str = "light",
    ) -> Any:
        """A new context (light mode unless asked, Berlin time, ``width`` x ``height``) with one
        page at ``site.url + path`` (none if ``None``); signed in with the saved session cookie
        unless ``signed_in=False``."""
        context = self.browser.new_context(
            viewport={"width": width, "height": height},
            color_scheme=color_scheme,
            timezone_id="Europe/Berlin",  # not UTC: local times differ from the server's
            locale="en-GB",
            storage_state=self.sessions[site.url] if signed_in else None,
        )
        context.set_default_timeout(WAIT_MS)
        context.add_init_script(GUARD_SCRIPT)
        context.on("page", self.guard.watch)
        self.contexts.append(context)
        page = context.new_page()
        if path is not None:
            page.goto(site.url + path)
        return page


def sign_in(page: Any, token: str) -> None:
    page.locator("#login-token").fill(token)
    page.locator("#login-submit").click()


@pytest.fixture(scope="package")
def sessions(browser: Any, site: Site, hostile_site: Site) -> dict[str, Any]:
    """A signed-in storage state (the session cookie) per dashboard, made once by the form."""
    states = {}
    for s in (site, hostile_site):
        context = browser.new_context()
        page = context.new_page()
        page.goto(s.url + "/login")
        sign_in(page, TOKEN)
        page.locator("#sign-out").wait_for()
        states[s.url] = context.storage_state()
        context.close()
    return states


@pytest.fixture
def guard() -> Guard:
    return Guard()


@pytest.fixture
def browse(browser: Any, sessions: dict[str, Any], guard: Guard) -> Iterator[Browsing]:
    browsing = Browsing(browser, guard, sessions)
    yield browsing
    for context in browsing.contexts:
        context.close()
    guard.check()


@pytest.fixture
def screenshot() -> Callable[[Any, str], Path | None]:
    """``screenshot(page, name)``: with ``TIDEFLOW_SCREENSHOTS=1``, saves the page's viewport
    as ``docs/images/<name>.png`` (the README's pictures); otherwise does nothing, so a test
    run never rewrites committed files."""

    def take(page: Any, name: str) -> Path | None:
        if os.environ.get(SCREENSHOTS_ENV, "") not in ("1", "true"):
            return None
        target = ROOT / "docs" / "images" / f"{name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target), animations="disabled", caret="hide")
        return target

    return take
