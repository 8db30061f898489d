"""The dashboard in a real browser (headless Chromium): signing in, each action of the task page,
bulk retry, a running task's progress updated live without a reload, the workflow timeline,
the 400 px layout, and hostile data that never runs. Fixtures and the hostile strings:
``conftest.py``. Every wait is for a condition (Playwright's ``expect``; not
``wait_for_function``, whose string the page's CSP refuses to eval); the time limits only guard
against a hang."""

from __future__ import annotations

import os
import queue
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

if os.environ.get("CI", "").lower() != "true":  # under CI a missing Playwright fails
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
from playwright.sync_api import Page, expect

from support.wait import wait_for, wait_for_status

from .conftest import (
    BIG_ERROR,
    IMG,
    LONG_TAG,
    RLO,
    RLO_TEXT,
    SCRIPT,
    SVG,
    TOKEN,
    Browsing,
    Guard,
    Site,
    sign_in,
)

HOLD = "approvals.manual"  # no worker runs this name: its tasks stay where the test puts them


def status_of(page: Page) -> Any:
    return page.locator("#task-status [data-status]")


def wait_live(page: Page) -> None:
    """The page's script ran (the CSP let it) and its event stream is connected."""
    expect(page.locator("#live-state")).to_have_attribute("data-state", "live")


# --- signing in -----------------------------------------------------------------------------------
def test_sign_in_with_the_token_and_a_wrong_token_is_refused(browse: Browsing, site: Site) -> None:
    page = browse.open(site, "/tasks", signed_in=False)
    # reading needs the token: the page sends the browser to sign in, then back
    expect(page).to_have_url(re.compile(r"/login\?next=%2Ftasks$"))
    expect(page.locator("#sign-in")).to_be_visible()

    sign_in(page, "not-the-token-at-all")
    expect(page.locator("#login-error")).to_have_text("wrong token")
    assert "/login" in page.url
    assert not [c for c in page.context.cookies() if c["name"] == "tideflow_session"]
    page.goto(site.url + "/tasks")
    expect(page).to_have_url(re.compile(r"/login\?next="))

    sign_in(page, TOKEN)
    expect(page).to_have_url(site.url + "/tasks")
    expect(page.locator("#sign-out")).to_be_visible()
    expect(page.locator(f"#task-row-{site.ids['report']}")).to_be_visible()
    session = [c for c in page.context.cookies() if c["name"] == "tideflow_session"]
    assert session
    assert session[0]["httpOnly"]

    # signing out ends the session: the pages ask for the token again
    page.locator("#sign-out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto(site.url + "/tasks")
    expect(page).to_have_url(re.compile(r"/login\?next="))


# --- the overview, its own script and styles ------------------------------------------------------
def test_overview_runs_its_own_script_and_styles(
    browse: Browsing, guard: Guard, site: Site, screenshot: Callable[[Any, str], Path | None]
) -> None:
    page = browse.open(site, "/")
    wait_live(page)
    completed = site.tm.query_tasks(status="completed", limit=1).total
    expect(page.locator("#count-completed")).to_have_text(str(completed))
    # the stylesheet applied (the CSP lets the app's own file in) ...
    header = page.locator("header").evaluate("h => getComputedStyle(h).backgroundColor")
    assert header == "rgb(18, 49, 79)"
    # ... and the script: times in the browser's zone, UTC in the tooltip
    page.goto(site.url + f"/tasks/{site.ids['report']}")
    created = page.locator("#task-facts time").first
    expect(created).to_have_attribute("data-local", "1")
    expect(created).to_have_attribute("title", re.compile(r"UTC \(shown in your time zone\)$"))
    assert not created.inner_text().endswith("UTC")
    page.goto(site.url + "/")
    wait_live(page)
    expect(page.locator("#overview-names")).to_contain_text("reports.monthly")
    screenshot(page, "dashboard-overview")
    guard.check()  # no CSP violation: the app's own script and styles are files it allows


def test_dark_mode_follows_the_system(browse: Browsing, site: Site) -> None:
    colours = "b => [getComputedStyle(b).backgroundColor, getComputedStyle(b).color]"
    light = browse.open(site, "/").locator("body").evaluate(colours)
    dark = browse.open(site, "/", color_scheme="dark").locator("body").evaluate(colours)
    assert light == ["rgb(246, 247, 249)", "rgb(29, 36, 48)"]
    assert dark == ["rgb(20, 24, 30)", "rgb(223, 227, 234)"]


# --- the workflow timeline ------------------------------------------------------------------------
def test_the_workflow_timeline(
    browse: Browsing, site: Site, screenshot: Callable[[Any, str], Path | None]
) -> None:
    root = site.ids["report"]
    tasks = site.tm.query_tasks(workflow_root_id=root, limit=100).items
    children = [t for t in tasks if t.id != root]
    assert len(children) == 4  # three fetches, then a render
    page = browse.open(site, f"/workflows/{root}")
    timeline = page.locator("#workflow-timeline")
    expect(timeline.locator(".tl-row[data-task-id]")).to_have_count(len(tasks))
    # every task has a bar: its attempts drawn on the time axis, with a width
    for t in tasks:
        row = page.locator(f"#tl-{t.id}")
        expect(row).to_be_visible()
        widths = row.locator("rect.a").evaluate_all(
            "rs => rs.map(r => r.getBoundingClientRect().width)"
        )
        assert widths, f"task {t.id} has no attempt bar"
        assert max(widths) > 0
        expect(row).to_have_attribute("data-parent", "" if t.id == root else str(t.parent_id))
    # the fetch that failed once: a failed attempt, a wait, then one that completed
    (us,) = [t for t in children if t.payload == {"region": "us", "work": 0.9}]
    us_row = page.locator(f"#tl-{us.id}")
    expect(us_row.locator("rect.a.o-failed")).to_have_count(1)
    expect(us_row.locator("rect.a.o-completed")).to_have_count(1)
    expect(us_row.locator("rect.w")).not_to_have_count(0)
    expect(page.locator(f"#tl-{root}")).to_have_class(re.compile(r"\bcritical\b"))
    expect(page.locator("#critical-path")).to_contain_text("reports.monthly")
    # the axis shows local times (the script ran)
    expect(page.locator(".tl-axis time[data-local]").first).to_be_attached()
    wait_live(page)
    screenshot(page, "dashboard-workflow-timeline")

    # folding the root hides its subtree; unfolding shows it again
    fold = page.locator(f"[data-testid=fold-{root}]")
    fold.click()
    for t in children:
        expect(page.locator(f"#tl-{t.id}")).to_be_hidden()
    expect(fold).to_have_attribute("aria-expanded", "false")
    fold.click()
    for t in children:
        expect(page.locator(f"#tl-{t.id}")).to_be_visible()


# --- the task page's actions ----------------------------------------------------------------------
def _pending(site: Site) -> int:
    task_id: int = site.tm.submit(HOLD, {"invoice": "INV-77"})
    return task_id


def _paused(site: Site) -> int:
    task_id = _pending(site)
    site.tm.pause_task(task_id)
    return task_id


def _cancelled(site: Site) -> int:
    task_id = _pending(site)
    site.tm.cancel_task(task_id, reason="set up by the test")
    return task_id


# action: (how the task starts, the status the page then shows, a reason to type)
ACTIONS: dict[str, tuple[Callable[[Site], int], str | None, str | None]] = {
    "pause": (_pending, "paused", None),
    "resume": (_paused, "pending", "approved by Dana"),
    "cancel": (_pending, "cancelled", "customer withdrew"),
    "retry": (_cancelled, "pending", None),
    "delete": (_pending, None, None),
}


@pytest.mark.parametrize("action", list(ACTIONS))
def test_each_action_from_the_task_page(
    browse: Browsing, guard: Guard, site: Site, action: str
) -> None:
    setup, expected, reason = ACTIONS[action]
    task_id = setup(site)
    before = site.tm.get_task(task_id)
    page = browse.open(site, f"/tasks/{task_id}")
    expect(page.locator(f"#action-{action}")).to_be_visible()
    if reason is not None:
        page.locator(f"#action-{action}-reason").fill(reason)
    if action == "delete":
        guard.expect_confirm(f"Delete task {task_id}")  # the page asks first
    page.locator(f"#action-{action}").click()

    if action == "delete":
        expect(page).to_have_url(re.compile(r"/tasks\?done=delete$"))
        expect(page.locator("#done-note")).to_have_text("Done: delete.")
        expect(page.locator(f"#task-row-{task_id}")).to_have_count(0)
        assert guard.seen_confirms == [f"Delete task {task_id} with its events and attempts?"]
        assert site.tm.get_task(task_id) is None
        return
    expect(page).to_have_url(f"{site.url}/tasks/{task_id}?done={action}")
    expect(page.locator("#done-note")).to_have_text(f"Done: {action}.")
    expect(status_of(page)).to_have_attribute("data-status", str(expected))
    after = site.tm.get_task(task_id)
    assert after is not None
    assert after.status != before.status
    shown = "permanently_failed" if expected == "cancelled" else expected
    assert after.status == shown
    if reason is not None:  # the reason typed is the one recorded
        expect(page.locator("#task-events")).to_contain_text(reason)


# --- bulk retry -----------------------------------------------------------------------------------
def test_bulk_retry_of_the_failed_tasks_of_one_name(browse: Browsing, site: Site) -> None:
    invoices: list[int] = site.ids["invoices"]
    declined: list[int] = site.ids["declined"]
    page = browse.open(site, "/tasks")
    # search: the name's prefix in another case, and the status
    page.locator("#search-name").fill("INVOICES.")
    page.locator("#search-status").select_option("permanently_failed")
    page.locator("#search-submit").click()
    rows = page.locator("#task-list tr[data-task-id]")
    expect(rows).to_have_count(len(invoices))
    assert sorted(int(i) for i in rows.evaluate_all("rs => rs.map(r => r.dataset.taskId)")) == (
        sorted(invoices)
    )
    # a failed-tasks search offers "retry all matching"
    expect(page.locator("#bulk-scope")).to_have_value("all")
    expect(page.locator("#bulk-action")).to_have_value("retry")
    page.locator("#bulk-review").click()

    # the review page counts what it acts on and acts only when confirmed
    expect(page.locator("h1")).to_have_text(f"Retry {len(invoices)} tasks?")
    expect(page.locator("#bulk-count")).to_have_text(str(len(invoices)))
    for task_id in invoices:
        assert site.tm.get_task(task_id).status == "permanently_failed"

    site.switches["invoices_fixed"].set()  # the accounting API is back
    page.locator("#bulk-confirm").click()
    expect(page.locator("#done-note")).to_have_text(f"Done: retried {len(invoices)} tasks.")
    for task_id in invoices:
        wait_for_status(site.tm, task_id, "completed")
    for task_id in declined:  # another name's failures are left alone
        assert site.tm.get_task(task_id).status == "permanently_failed"
    # the list, still searching failed invoices, empties itself as they complete
    expect(page.locator("#task-list")).to_contain_text("No tasks match.")


# --- live updates ---------------------------------------------------------------------------------
def test_live_progress_of_a_running_task_without_a_reload(browse: Browsing, site: Site) -> None:
    gate: queue.Queue[str] = queue.Queue()
    site.gates["live"] = gate
    task_id = site.worker.submit("imports.csv", {"gate": "live"})
    wait_for(
        lambda: (t := site.tm.get_task(task_id)) is not None and t.progress_percent == 10,
        message="the import did not report its first step",
    )
    page = browse.open(site, f"/tasks/{task_id}")
    bar = page.locator("#task-progress")
    expect(bar).to_have_attribute("value", re.compile(r"^10(\.0)?$"))
    expect(status_of(page)).to_have_attribute("data-status", "running")
    wait_live(page)
    # the same task in the list, in a second tab, with another task's box ticked
    listing = page.context.new_page()
    listing.goto(site.url + "/tasks")
    wait_live(listing)
    other = site.ids["report"]
    listing.locator(f"[data-testid=pick-{other}]").check()
    for p in (page, listing):
        p.evaluate("window.__marker = 'the same document'")
    # half a reason typed, the cursor still in the field
    reason = page.locator("#action-cancel-reason")
    reason.press_sequentially("half a rea")

    gate.put("go")  # the handler reports 60 %
    expect(bar).to_have_js_property("value", 60)
    expect(page.locator("#task-progress-text")).to_contain_text("validating rows")
    expect(listing.locator(f"#progress-{task_id}")).to_have_js_property("value", 60)
    for p in (page, listing):  # no reload: what the page held is still there
        assert p.evaluate("window.__marker") == "the same document"
    expect(reason).to_have_value("half a rea")
    expect(reason).to_be_focused()
    expect(listing.locator(f"[data-testid=pick-{other}]")).to_be_checked()

    gate.put("go")  # the handler returns
    expect(status_of(page)).to_have_attribute("data-status", "completed")
    expect(page.locator("#task-result")).to_contain_text('"rows": 5000')
    expect(listing.locator(f"#task-row-{task_id}")).to_have_attribute("data-status", "completed")
    assert page.evaluate("window.__marker") == "the same document"
    expect(reason).to_have_value("half a rea")


def test_live_workflow_timeline_keeps_its_folds(browse: Browsing, site: Site) -> None:
    gate: queue.Queue[str] = queue.Queue()
    site.gates["workflow"] = gate
    root = site.worker.submit("sync.batch", {"gate": "workflow", "parts": 2})

    def both_parts_run() -> list[Any] | None:
        found = site.tm.query_tasks(workflow_root_id=root, status="running")
        return found.items if found.total == 2 else None

    parts = [t.id for t in wait_for(both_parts_run, message="the workflow's parts did not start")]
    page = browse.open(site, f"/workflows/{root}")
    wait_live(page)
    for part in parts:
        expect(page.locator(f"#tl-{part} [data-status]")).to_have_attribute(
            "data-status", "running"
        )
    page.evaluate("window.__marker = 'the same document'")
    page.locator(f"[data-testid=fold-{root}]").click()  # fold the parts away
    for part in parts:
        expect(page.locator(f"#tl-{part}")).to_be_hidden()

    for _ in parts:
        gate.put("go")
    # the workflow finishes on the open page: the timeline is swapped in, the fold kept
    expect(page.locator("#workflow-status [data-status]")).to_have_attribute(
        "data-status", "completed"
    )
    for part in parts:
        expect(page.locator(f"#tl-{part}")).to_be_hidden()
    assert page.evaluate("window.__marker") == "the same document"
    page.locator(f"[data-testid=fold-{root}]").click()
    for part in parts:
        row = page.locator(f"#tl-{part}")
        expect(row).to_be_visible()
        expect(row.locator("[data-status]")).to_have_attribute("data-status", "completed")
        expect(row.locator("rect.a.o-completed")).to_have_count(1)


# --- the 400 px layout ----------------------------------------------------------------------------
def _no_sideways_scroll(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 400, f"{page.url} is {width} px wide at a 400 px viewport"


def _in_view(page: Page, selector: str) -> None:
    element = page.locator(selector)
    expect(element).to_be_visible()
    box = element.bounding_box()
    assert box is not None
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= 400, f"{selector} is cut off at 400 px: {box}"


@pytest.mark.parametrize("which", ["site", "hostile"])
def test_400px_layout_has_no_sideways_scroll(
    browse: Browsing, site: Site, hostile_site: Site, which: str
) -> None:
    s = site if which == "site" else hostile_site
    tasks = (
        [site.ids["report"], site.ids["declined"][0]]
        if which == "site"
        else [hostile_site.ids[k] for k in ("long_tag", "error", "rlo", "workflow")]
    )
    page = browse.open(s, "/", width=400, height=800)
    root = site.ids["report"] if which == "site" else hostile_site.ids["workflow"]
    for path in ["/", "/tasks", *(f"/tasks/{i}" for i in tasks), f"/workflows/{root}", "/workers"]:
        page.goto(s.url + path)
        expect(page.locator("main h1")).to_be_visible()
        _no_sideways_scroll(page)
        _in_view(page, "#sign-out")
    # signed out: the sign-in link fits too
    out = browse.open(s, "/", signed_in=False, width=400, height=800)
    expect(out).to_have_url(re.compile(r"/login"))
    _no_sideways_scroll(out)
    _in_view(out, "#sign-in")


# --- hostile data ---------------------------------------------------------------------------------
RLO_OUTSIDE_ISOLATION = """() => {
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const bad = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (n.data.includes("\\u202e") && !n.parentElement.closest("bdi, [dir=auto], .iso")) {
      bad.push(n.parentElement.outerHTML.slice(0, 200));
    }
  }
  return bad;
}"""


def test_no_hostile_string_executes(browse: Browsing, guard: Guard, hostile_site: Site) -> None:
    ids = hostile_site.ids
    # path: texts the page must show literally (proof that the hostile data is on it)
    pages: dict[str, list[str]] = {
        "/": [SCRIPT, IMG],
        "/tasks": [SCRIPT, IMG, SVG],
        f"/tasks?q_name={quote(SCRIPT)}&q_tag={quote(IMG)}": [SCRIPT, IMG, "1-1 of 1"],
        f"/tasks?done={quote(SCRIPT)}": [f"Done: {SCRIPT}."],
        f"/tasks/{ids['script']}": [SCRIPT, IMG, f"checkpoint {SVG}"],
        f"/tasks/{ids['img']}": [IMG, SCRIPT],
        f"/tasks/{ids['rlo']}?done={quote(IMG)}": [RLO_TEXT, f"Done: {IMG}."],
        f"/tasks/{ids['error']}": [SVG, "display limit"],
        f"/tasks/{ids['long_tag']}": [LONG_TAG[:100]],
        f"/workflows/{ids['workflow']}": [SVG, SCRIPT, IMG],
        "/workers": [SCRIPT, RLO_TEXT],
        f"/tasks?created_from={quote(SCRIPT)}": [SCRIPT[:30]],  # a 400 that quotes the value
        "/tasks/9223372036854775807": [],  # a 404
    }
    page = browse.open(hostile_site, None)
    for path, texts in pages.items():
        page.goto(hostile_site.url + path)
        expect(page.locator("main h1")).to_be_visible()
        text = page.locator("main").inner_text()
        for shown in texts:
            assert shown in text, f"{path}: {shown[:60]!r} is not shown as text"
        assert page.evaluate(RLO_OUTSIDE_ISOLATION) == [], f"{path}: U+202E not isolated"
        if path.startswith("/tasks/") and "error" not in path:
            assert text.count("a long traceback line") <= 1
        guard.check()
    # the 100 KB error is not printed whole (it is over the display limit), nor 4 times
    page.goto(hostile_site.url + f"/tasks/{ids['error']}")
    assert len(page.content()) < len(BIG_ERROR)
    assert RLO in hostile_site.tm.get_task(ids["rlo"]).name

    # the bulk review page lists hostile selections too
    page.goto(hostile_site.url + "/tasks")
    page.locator("#bulk-scope").select_option("all")
    page.locator("#bulk-action").select_option("delete")
    page.locator("#bulk-review").click()
    expect(page.locator("#bulk-count")).to_have_text(str(hostile_site.tm.query_tasks().total))
    guard.check()

    # hostile rows that arrive by a live update (parsed and swapped in by the script)
    page.goto(hostile_site.url + "/tasks")
    wait_live(page)
    page.evaluate("window.__marker = 1")
    new = hostile_site.worker.submit(IMG, {"live": SCRIPT}, tag=SCRIPT)
    expect(page.locator(f"#task-row-{new}")).to_contain_text(IMG)
    expect(page.locator(f"#task-row-{new}")).to_have_attribute("data-status", "completed")
    assert page.evaluate("window.__marker") == 1
    guard.check()
