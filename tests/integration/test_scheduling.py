"""Scheduling, routing, concurrency, controls and queries through a real worker (SPEC §2-§8)."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from support.wait import assert_stays, wait_for, wait_for_status
from tideflow import Status, TaskManager
from tideflow.errors import (
    HandlerRegistrationError,
    InvalidOptionError,
    OwnershipLostError,
    PayloadError,
)


def event_types(tm: Any, task_id: int) -> list[str]:
    return [e.event_type for e in tm.query_task_events(task_id).items]


def attempts(tm: Any, task_id: int) -> list[Any]:
    return sorted(tm.query_task_attempts(task_id).items, key=lambda a: a.attempt)


def wait_all(tm: Any, ids: list[int], status: str = "completed", timeout: float = 15.0) -> None:
    for task_id in ids:
        wait_for_status(tm, task_id, status, timeout=timeout)


class Gauge:
    """Counts handlers running at once and remembers the maximum."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live = 0
        self.max = 0
        self.done = 0

    def __enter__(self) -> Gauge:
        with self.lock:
            self.live += 1
            self.max = max(self.max, self.live)
        return self

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.live -= 1
            self.done += 1


# --------------------------------------------------------------------------------------------
# order and time


def test_priority_then_id_order(make_manager: Any) -> None:
    tm = make_manager(max_concurrent_tasks=1)
    order: list[int] = []
    tm.use("job", lambda task: order.append(task.id))
    priorities = [0, 5, -3, 5, 20, -20, 0, 1]
    ids = [tm.submit("job", {"i": i}, priority=p) for i, p in enumerate(priorities)]
    tm.start()
    wait_all(tm, ids)

    expected = [
        i for _, i in sorted(zip(priorities, ids, strict=True), key=lambda x: (-x[0], x[1]))
    ]
    assert order == expected
    assert [tm.get_task(i).priority for i in ids] == priorities


def test_delay_postpones_the_first_run(make_manager: Any) -> None:
    tm = make_manager()
    order: list[str] = []
    tm.use("job", lambda task: order.append(task.payload))
    tm.start()
    delayed = tm.submit("job", "delayed", delay=0.4)
    prompt = tm.submit("job", "prompt")

    info = wait_for_status(tm, delayed, "completed")
    wait_for_status(tm, prompt, "completed")
    assert order == ["prompt", "delayed"]
    due = info.created_at + timedelta(seconds=0.4)
    assert abs((info.next_run_time - due).total_seconds()) < 0.05
    (att,) = attempts(tm, delayed)
    assert att.started_at >= due - timedelta(milliseconds=5)


def test_delay_accepts_timedelta(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("job", lambda task: None)
    task_id = tm.submit("job", delay=timedelta(seconds=120))
    info = tm.get_task(task_id)
    assert abs((info.next_run_time - info.created_at).total_seconds() - 120) < 0.5


def test_run_at_with_an_aware_datetime(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("job", lambda task: "ran")
    tm.start()
    plus_five = timezone(timedelta(hours=5))
    run_at = (datetime.now(UTC) + timedelta(seconds=0.4)).astimezone(plus_five)
    task_id = tm.submit("job", run_at=run_at)

    info = tm.get_task(task_id)
    assert info.next_run_time.utcoffset() == timedelta(0)
    assert abs((info.next_run_time - run_at).total_seconds()) < 0.002
    wait_for_status(tm, task_id, "completed")
    (att,) = attempts(tm, task_id)
    assert att.started_at >= run_at - timedelta(milliseconds=5)


# --------------------------------------------------------------------------------------------
# concurrency


def test_global_max_concurrent_tasks_is_never_exceeded(make_manager: Any) -> None:
    tm = make_manager(max_concurrent_tasks=3)
    gauge = Gauge()

    def work(task: Any) -> None:
        with gauge:
            time.sleep(0.05)

    tm.use("work", work)
    ids = tm.submit_many([("work", {"i": i}) for i in range(30)])
    tm.start()
    wait_all(tm, ids)
    assert gauge.done == 30
    assert gauge.max == 3


def test_per_type_max_concurrent_tasks(make_manager: Any) -> None:
    tm = make_manager(max_concurrent_tasks=10)
    limited, free, overall = Gauge(), Gauge(), Gauge()

    def run_limited(task: Any) -> None:
        with overall, limited:
            time.sleep(0.05)

    def run_free(task: Any) -> None:
        with overall, free:
            time.sleep(0.05)

    tm.use("limited", run_limited, max_concurrent_tasks=2)
    tm.use("free", run_free)
    ids = tm.submit_many([("limited", {"i": i}) for i in range(20)])
    ids += tm.submit_many([("free", {"i": i}) for i in range(10)])
    tm.start()
    wait_all(tm, ids)

    assert limited.done == 20
    assert limited.max == 2
    assert overall.max <= 10
    # the per-type limit does not hold back other types
    assert free.max >= 3


def test_async_handlers_run_many_at_once(make_manager: Any) -> None:
    tm = make_manager(max_concurrent_tasks=10)
    gauge = Gauge()

    async def nap(task: Any) -> int:
        with gauge:
            await asyncio.sleep(0.3)
        return task.payload

    tm.use("nap", nap)
    ids = tm.submit_many([("nap", i) for i in range(10)])
    tm.start()
    wait_all(tm, ids)
    assert gauge.max == 10
    assert [tm.get_task(i).result for i in ids] == list(range(10))


# --------------------------------------------------------------------------------------------
# dedupe and routing


def test_unique_key_deduplicates_until_terminal(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("job", lambda task: task.payload)
    first = tm.submit("job", 1, unique_key="k1")
    again = tm.submit("job", 2, unique_key="k1")
    other = tm.submit("job", 3, unique_key="k2")
    assert again == first
    assert other != first
    assert len(tm.get_tasks(name="job")) == 2
    assert tm.get_task(first).unique_key == "k1"
    assert tm.get_task(first).payload == 1

    tm.start()
    wait_all(tm, [first, other])
    after = tm.submit("job", 4, unique_key="k1")
    assert after not in (first, other)
    assert wait_for_status(tm, after, "completed").result == 4


def test_capabilities_route_tasks(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("render", lambda task: "rendered")
    gpu = tm.submit("render", requires=["gpu"])
    gpu_ssd = tm.submit("render", requires=["gpu", "ssd"])
    plain = tm.submit("render")
    assert tuple(tm.get_task(gpu).requires) == ("gpu",)
    tm.start()

    wait_for_status(tm, plain, "completed")
    assert_stays(
        lambda: tm.get_task(gpu).status == "pending" and tm.get_task(gpu_ssd).status == "pending",
        0.15,
        message="a task requiring gpu was claimed by a worker without gpu",
    )
    tm.configure_worker(capabilities=["gpu"])
    wait_for_status(tm, gpu, "completed")
    assert_stays(
        lambda: tm.get_task(gpu_ssd).status == "pending",
        0.1,
        message="a task requiring gpu+ssd was claimed by a worker with only gpu",
    )
    tm.configure_worker(capabilities=["gpu", "ssd"])
    wait_for_status(tm, gpu_ssd, "completed")


def test_capabilities_given_at_construction(make_manager: Any) -> None:
    tm = make_manager(capabilities=["gpu"])
    tm.use("render", lambda task: "ok")
    gpu = tm.submit("render", requires=["gpu"])
    tm.start()
    wait_for_status(tm, gpu, "completed")


# --------------------------------------------------------------------------------------------
# manager controls


def test_pause_and_resume_of_the_manager(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("a", lambda task: "a")
    tm.start()
    tm.pause()
    first = tm.submit("a")
    tm.use("b", lambda task: "b")  # registering does not unpause
    second = tm.submit("b")  # neither does submitting
    assert_stays(
        lambda: {tm.get_task(first).status, tm.get_task(second).status} == {"pending"},
        0.15,
        message="a paused manager claimed a task",
    )
    assert attempts(tm, first) == []
    tm.resume()
    assert wait_for_status(tm, first, "completed").result == "a"
    assert wait_for_status(tm, second, "completed").result == "b"


def test_hot_reload_keeps_the_running_handler(make_manager: Any) -> None:
    tm = make_manager()
    release = threading.Event()
    v1_started = threading.Event()

    def v1(task: Any) -> str:
        v1_started.set()
        release.wait(10)
        return "v1"

    tm.use("job", v1)
    tm.start()
    first = tm.submit("job")
    wait_for(v1_started.is_set, message="v1 never started")

    tm.use("job", lambda task: "v2")
    second = tm.submit("job")
    assert wait_for_status(tm, second, "completed").result == "v2"
    assert tm.get_task(first).status == "running"
    release.set()
    assert wait_for_status(tm, first, "completed").result == "v1"

    # unuse: what is pending stays pending, and new submits are refused
    tm.pause()
    later = tm.submit("job")
    assert tm.unuse("job") == 1
    assert tm.unuse("job") == 0
    tm.resume()
    assert_stays(
        lambda: tm.get_task(later).status == "pending",
        0.15,
        message="a task without a handler was claimed",
    )
    before = len(tm.get_tasks())
    with pytest.raises(HandlerRegistrationError):
        tm.submit("job")
    assert len(tm.get_tasks()) == before


def test_unuse_list_returns_number_removed(make_manager: Any) -> None:
    tm = make_manager()
    tm.use({"a": lambda task: 1, "b": lambda task: 2})
    assert tm.unuse(["a", "b", "c"]) == 2
    with pytest.raises(HandlerRegistrationError):
        tm.submit("a")


def test_graceful_stop_completes_quick_and_releases_slow(make_manager: Any) -> None:
    tm = make_manager(worker_id="stopping-worker")
    release = threading.Event()
    started: dict[str, threading.Event] = {"quick": threading.Event(), "slow": threading.Event()}

    def quick(task: Any) -> str:
        started["quick"].set()
        time.sleep(0.3)
        return "quick done"

    def slow(task: Any) -> str:
        started["slow"].set()
        release.wait(15)
        return "late"

    tm.use("quick", quick)
    tm.use("slow", slow)
    quick_id = tm.submit("quick")
    slow_id = tm.submit("slow")
    tm.start()
    try:
        wait_for(lambda: started["quick"].is_set() and started["slow"].is_set())
        t0 = time.monotonic()
        tm.stop(timeout=1.0)
        assert time.monotonic() - t0 < 4

        quick_info = tm.get_task(quick_id)
        assert quick_info.status == "completed"
        assert quick_info.result == "quick done"

        slow_info = tm.get_task(slow_id)
        assert slow_info.status == "pending"
        assert slow_info.retry_count == 0
        assert event_types(tm, slow_id) == [
            "task_created",
            "task_claimed",
            "task_started",
            "task_recovered",
        ]
        (att,) = attempts(tm, slow_id)
        assert att.outcome == "interrupted"
        assert att.ended_at is not None

        workers = {w.worker_id: w for w in tm.get_workers()}
        assert workers["stopping-worker"].status == "stopped"
    finally:
        release.set()
    # the released handler's late result is fenced off
    assert_stays(
        lambda: tm.get_task(slow_id).status == "pending" and tm.get_task(slow_id).result is None,
        0.15,
        message="a released attempt wrote its late result",
    )
    tm.stop(timeout=1)  # a second stop is a no-op


def test_stop_without_start_is_a_noop(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("a", lambda task: None)
    task_id = tm.submit("a")
    tm.stop(timeout=1)
    assert tm.get_task(task_id).status == "pending"


def test_context_manager_starts_and_stops(shared_db_url: str) -> None:
    with TaskManager(shared_db_url, poll_interval=0.02, worker_id="ctx-worker") as tm:
        tm.use("job", lambda task: task.payload + 1)
        task_id = tm.submit("job", 41)
        assert wait_for_status(tm, task_id, "completed").result == 42

    observer = TaskManager(shared_db_url, allow_unregistered=True)
    try:
        assert observer.get_task(task_id).result == 42
        workers = {w.worker_id: w for w in observer.get_workers()}
        assert workers["ctx-worker"].status == "stopped"
    finally:
        observer.close()


# --------------------------------------------------------------------------------------------
# creating tasks


def test_submit_many_is_one_transaction(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("a", lambda task: None)
    with pytest.raises(PayloadError):
        tm.submit_many([("a", {"i": 1}), ("a", {"bad": {1, 2}}), ("a", {"i": 3})])
    assert tm.get_tasks() == []
    with pytest.raises(HandlerRegistrationError):
        tm.submit_many([("a", {"i": 1}), ("unknown", {"i": 2})])
    assert tm.get_tasks() == []
    with pytest.raises(InvalidOptionError):
        tm.submit_many([("a", {"i": 1})], priority=99)
    assert tm.get_tasks() == []

    ids = tm.submit_many([("a", {"i": i}) for i in range(3)], tag="bulk", priority=4)
    assert len(ids) == 3
    assert ids == sorted(ids)
    infos = [tm.get_task(i) for i in ids]
    assert [t.payload for t in infos] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert {(t.tag, t.priority, t.status) for t in infos} == {("bulk", 4, "pending")}


def test_decorator_form_and_submit(make_manager: Any) -> None:
    tm = make_manager()

    def report(task: Any) -> int:
        return task.payload["x"] * 2

    decorated = tm.task("report", timeout=7, priority=2, description="doubles x")(report)
    assert decorated is report
    first = report.submit({"x": 2})
    second = report.submit({"x": 5}, priority=9)
    assert tm.get_task(first).timeout == 7
    assert tm.get_task(first).priority == 2
    assert tm.get_task(second).priority == 9
    tm.start()
    assert wait_for_status(tm, first, "completed").result == 4
    assert wait_for_status(tm, second, "completed").result == 10
    info = tm.get_task_info("report")
    assert info.name == "report"
    assert info.description == "doubles x"


def test_decorator_used_with_at_sign(make_manager: Any) -> None:
    tm = make_manager()

    @tm.task("hello")
    def hello(task: Any) -> str:
        return f"hello {task.payload}"

    task_id = hello.submit("world")
    tm.start()
    assert wait_for_status(tm, task_id, "completed").result == "hello world"


def test_bulk_options_and_keyword_forms_of_use(make_manager: Any) -> None:
    tm = make_manager()
    tm.use({"a": lambda task: "A", "b": {"handler": lambda task: "B", "timeout": 5}})
    tm.use(
        "c",
        {
            "handler": lambda task: "C",
            "timeout": 120,
            "max_retries": 2,
            "retry_interval": 30,
            "priority": 5,
        },
    )
    tm.use("d", lambda task: "D", timeout=120, max_retries=2, retry_interval=30, priority=5)
    ids = {name: tm.submit(name) for name in "abcd"}
    assert tm.get_task(ids["b"]).timeout == 5
    for name in "cd":
        info = tm.get_task(ids[name])
        assert (info.timeout, info.max_retries, info.retry_interval, info.priority) == (
            120,
            2,
            30,
            5,
        )
    assert tm.get_task_info("b").options.get("timeout") == 5
    tm.start()
    for name, task_id in ids.items():
        assert wait_for_status(tm, task_id, "completed").result == name.upper()


def test_option_resolution_order(make_manager: Any) -> None:
    tm = make_manager(timeout=11, max_retries=4, priority=1, retry_interval=3)
    tm.use("plain", lambda task: None)  # function form: no registration options
    tm.use("tuned", lambda task: None, timeout=22, priority=2)

    plain = tm.get_task(tm.submit("plain"))
    assert (plain.timeout, plain.max_retries, plain.priority, plain.retry_interval) == (
        11,
        4,
        1,
        3,
    )
    tuned = tm.get_task(tm.submit("tuned"))
    assert (tuned.timeout, tuned.max_retries, tuned.priority) == (22, 4, 2)
    override = tm.get_task(tm.submit("tuned", timeout=33, max_retries=1, priority=-4))
    assert (override.timeout, override.max_retries, override.priority) == (33, 1, -4)

    tm.configure_worker(retry_strategy={"max_attempts": 6, "backoff": "exponential", "interval": 2})
    after = tm.get_task(tm.submit("plain"))
    assert (after.max_retries, after.retry_backoff, after.retry_interval) == (6, "exponential", 2)


def test_default_options(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("plain", lambda task: None)
    info = tm.get_task(tm.submit("plain"))
    assert info.timeout == 60
    assert info.max_retries == 3
    assert info.retry_interval == 0
    assert info.retry_backoff == "fixed"
    assert info.priority == 0
    assert info.retry_count == 0
    assert info.stage == 0
    assert info.type == "async"
    assert info.status == "pending"
    assert info.root_id == info.id


# --------------------------------------------------------------------------------------------
# queries


def test_get_tasks_filters(make_manager: Any) -> None:
    tm = make_manager()
    tm.use({"a": lambda task: None, "b": lambda task: None})
    a1 = tm.submit("a", tag="t1")
    a2 = tm.submit("a", tag="t2")
    b1 = tm.submit("b", tag="t1")
    b2 = tm.submit("b")
    tm.pause_task(a2)

    def ids(tasks: list[Any]) -> set[int]:
        return {t.id for t in tasks}

    assert ids(tm.get_tasks()) == {a1, a2, b1, b2}
    assert ids(tm.get_tasks(name="a")) == {a1, a2}
    assert ids(tm.get_tasks(tag="t1")) == {a1, b1}
    assert ids(tm.get_tasks(status="pending")) == {a1, b1, b2}
    assert ids(tm.get_tasks(status=Status.PAUSED)) == {a2}
    assert ids(tm.get_tasks(name="a", tag="t1")) == {a1}
    assert ids(tm.get_tasks(name="b", status="paused")) == set()
    assert ids(tm.get_tasks_by_name("b")) == {b1, b2}
    assert ids(tm.get_tasks_by_status("paused")) == {a2}
    assert ids(tm.get_tasks_by_tag("t2")) == {a2}
    assert tm.get_task(a2).status == "paused"


def test_query_tasks_paging(make_manager: Any) -> None:
    tm = make_manager()
    tm.use({"p": lambda task: None, "q": lambda task: None})
    ids = [tm.submit("p", {"i": i}) for i in range(7)]
    tm.submit("q")

    page = tm.query_tasks(name="p", limit=3, offset=0)
    assert [t.id for t in page.items] == ids[:3]
    assert (page.total, page.limit, page.offset, page.has_more) == (7, 3, 0, True)

    page = tm.query_tasks(name="p", limit=3, offset=3)
    assert [t.id for t in page.items] == ids[3:6]
    assert page.has_more is True

    page = tm.query_tasks(name="p", limit=3, offset=6)
    assert [t.id for t in page.items] == ids[6:]
    assert (page.total, page.has_more) == (7, False)

    page = tm.query_tasks(name="p", limit=None)
    assert [t.id for t in page.items] == ids
    assert (page.total, page.has_more) == (7, False)

    page = tm.query_tasks(name="p", limit=2, order="desc")
    assert [t.id for t in page.items] == ids[::-1][:2]

    page = tm.query_tasks(status="pending", type="async", limit=None)
    assert page.total == 8


def test_get_task_stats_by_tag(make_manager: Any) -> None:
    tm = make_manager()
    tm.use({"a": lambda task: None, "b": lambda task: None})
    tm.submit("a", tag="s")
    tm.submit("a", tag="s")
    paused = tm.submit("a", tag="s")
    tm.submit("b", tag="s")
    tm.submit("b", tag="other")
    tm.pause_task(paused)

    def rows(stats: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
        return {(r["tag"], r["name"], r["status"], r["count"]) for r in stats}

    assert rows(tm.get_task_stats_by_tag("s")) == {
        ("s", "a", "pending", 2),
        ("s", "a", "paused", 1),
        ("s", "b", "pending", 1),
    }
    assert rows(tm.get_task_stats_by_tag("s", status="pending")) == {
        ("s", "a", "pending", 2),
        ("s", "b", "pending", 1),
    }
    assert tm.get_task_stats_by_tag("nothing") == []


def test_delete_tasks(make_manager: Any) -> None:
    tm = make_manager()
    tm.use({"a": lambda task: "done", "b": lambda task: None})
    tm.start()
    done = tm.submit("a")
    wait_for_status(tm, done, "completed")
    assert tm.query_task_events(done).total == 4
    assert tm.query_task_attempts(done).total == 1

    tm.pause()
    b1 = tm.submit("b")
    b2 = tm.submit("b", tag="x")
    a2 = tm.submit("a", tag="x")

    assert tm.delete_tasks(ids=[done]) == 1
    assert tm.get_task(done) is None
    assert tm.query_task_events(done).total == 0
    assert tm.query_task_attempts(done).total == 0

    assert tm.delete_tasks(name="a", tag="nomatch") == 0
    assert tm.delete_tasks(name="b", tag="x") == 1
    assert tm.get_task(b2) is None
    assert {t.id for t in tm.get_tasks()} == {b1, a2}
    assert tm.delete_tasks(status="pending") == 2
    assert tm.get_tasks() == []


def test_get_task_info(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("c", lambda task: None, timeout=9, description="Makes reports")
    info = tm.get_task_info("c")
    assert info.name == "c"
    assert info.description == "Makes reports"
    assert info.options.get("timeout") == 9
    assert info.to_dict()["name"] == "c"


def test_async_twins(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("job", lambda task: None)

    async def main() -> tuple[int, Any, list[Any]]:
        task_id = await tm.asubmit("job", {"via": "asyncio"}, tag="aio")
        info = await tm.aget_task(task_id)
        pending = await tm.aget_tasks_by_status("pending")
        return task_id, info, pending

    task_id, info, pending = asyncio.run(main())
    assert info.id == task_id
    assert info.payload == {"via": "asyncio"}
    assert info.tag == "aio"
    assert [t.id for t in pending] == [task_id]
    assert tm.get_task(task_id).status == "pending"


# --------------------------------------------------------------------------------------------
# task controls


def _blocking_handler(
    started: threading.Event, release: threading.Event, seen: list[type[BaseException]]
) -> Any:
    def handler(task: Any) -> str:
        started.set()
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline and not release.is_set():
                task.check_timeout()
                time.sleep(0.01)
        except BaseException as exc:
            seen.append(type(exc))
            raise
        return "late"

    return handler


def test_cancel_of_a_running_task_fences_the_attempt(make_manager: Any) -> None:
    tm = make_manager()
    started, release, seen = threading.Event(), threading.Event(), []
    tm.use("block", _blocking_handler(started, release, seen))
    task_id = tm.submit("block")
    tm.start()
    try:
        wait_for(started.is_set)
        tm.cancel_task(task_id, reason="operator said no")
        info = tm.get_task(task_id)
        assert info.status == "permanently_failed"
        assert "operator said no" in info.error
        wait_for(lambda: seen, timeout=10, message="the cancelled handler was not told")
        assert seen == [OwnershipLostError]
    finally:
        release.set()
    assert event_types(tm, task_id)[-1] == "task_cancelled"
    (att,) = attempts(tm, task_id)
    assert att.outcome == "cancelled"
    assert_stays(
        lambda: tm.get_task(task_id).status == "permanently_failed",
        0.1,
        message="a cancelled attempt changed its task afterwards",
    )


def test_pause_of_a_running_task_then_resume(make_manager: Any) -> None:
    tm = make_manager()
    started, release, seen = threading.Event(), threading.Event(), []
    tm.use("block", _blocking_handler(started, release, seen))
    task_id = tm.submit("block")
    tm.start()
    wait_for(started.is_set)
    tm.pause_task(task_id)
    assert tm.get_task(task_id).status == "paused"
    wait_for(lambda: seen, timeout=10, message="the paused handler was not told")
    assert seen == [OwnershipLostError]
    assert attempts(tm, task_id)[0].outcome == "paused"
    assert_stays(lambda: tm.get_task(task_id).status == "paused", 0.1)

    release.set()
    tm.resume_task(task_id)
    info = wait_for_status(tm, task_id, "completed")
    assert info.result == "late"
    assert info.retry_count == 0
    types = event_types(tm, task_id)
    assert types == [
        "task_created",
        "task_claimed",
        "task_started",
        "task_paused",
        "task_resumed",
        "task_claimed",
        "task_started",
        "task_completed",
    ]
    assert [a.outcome for a in attempts(tm, task_id)] == ["paused", "completed"]


def test_resume_of_a_paused_task_resets_retry_count(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("fail", lambda task: 1 / 0)
    task_id = tm.submit("fail", max_retries=3, retry_interval=100)
    tm.start()
    assert wait_for_status(tm, task_id, "failed").retry_count == 1
    tm.pause_task(task_id)
    assert tm.get_task(task_id).status == "paused"
    tm.pause()
    tm.resume_task(task_id)
    info = tm.get_task(task_id)
    assert (info.status, info.retry_count) == ("pending", 0)
    assert event_types(tm, task_id)[-2:] == ["task_paused", "task_resumed"]


# --------------------------------------------------------------------------------------------
# workers and audit queries


def test_worker_registers_with_its_details(make_manager: Any) -> None:
    tm = make_manager(worker_id="registry-worker", capabilities=["gpu"], max_concurrent_tasks=4)
    tm.use({"a": lambda task: None, "b": lambda task: None})
    tm.start()
    worker = wait_for(
        lambda: {w.worker_id: w for w in tm.get_workers()}.get("registry-worker"),
        message="the worker never registered",
    )
    assert worker.status == "active"
    assert tuple(worker.capabilities) == ("gpu",)
    assert set(worker.handlers) >= {"a", "b"}
    assert worker.concurrency == 4
    assert worker.pid > 0
    assert worker.host
    assert worker.expires_at > worker.last_seen_at
    assert worker.last_seen_at.utcoffset() == timedelta(0)
    assert [w.worker_id for w in tm.get_workers(status="active")] == ["registry-worker"]
    assert tm.get_workers(status="stopped") == []
    assert tm.get_worker("registry-worker").worker_id == "registry-worker"


def test_task_event_paging_and_order(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("job", lambda task: None)
    task_id = tm.submit("job")
    tm.start()
    wait_for_status(tm, task_id, "completed")

    everything = tm.query_task_events(task_id)
    assert everything.total == 4
    assert [e.event_type for e in everything.items] == [
        "task_created",
        "task_claimed",
        "task_started",
        "task_completed",
    ]
    newest = tm.query_task_events(task_id, limit=2, order="desc")
    assert [e.event_type for e in newest.items] == ["task_completed", "task_started"]
    assert (newest.total, newest.has_more) == (4, True)
    info = tm.get_task(task_id)
    assert info.last_event_type == "task_completed"
    assert info.last_event_time == everything.items[-1].event_time


# --------------------------------------------------------------------------------------------
# more ordering, stopping and sharing


def test_equal_priority_runs_earliest_next_run_time_first(make_manager: Any) -> None:
    tm = make_manager(max_concurrent_tasks=1)
    order: list[str] = []
    tm.use("job", lambda task: order.append(task.payload))
    now = datetime.now(UTC)
    tm.submit("job", "now")
    tm.submit("job", "a minute ago", run_at=now - timedelta(minutes=1))
    tm.submit("job", "an hour ago", run_at=now - timedelta(hours=1))
    last = tm.submit("job", "urgent", priority=1)
    tm.start()
    wait_for_status(tm, last, "completed")
    wait_for(lambda: len(order) == 4)
    assert order == ["urgent", "an hour ago", "a minute ago", "now"]


def test_graceful_stop_cancels_a_running_coroutine(make_manager: Any) -> None:
    tm = make_manager()
    started, cleaned_up = threading.Event(), threading.Event()

    async def sleepy(task: Any) -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            cleaned_up.set()
        return "never"

    tm.use("sleepy", sleepy)
    task_id = tm.submit("sleepy")
    tm.start()
    wait_for(started.is_set)
    t0 = time.monotonic()
    tm.stop(timeout=0.3)
    assert time.monotonic() - t0 < 4
    wait_for(cleaned_up.is_set, timeout=5, message="the coroutine was not cancelled at stop")
    info = tm.get_task(task_id)
    assert (info.status, info.retry_count) == ("pending", 0)
    assert event_types(tm, task_id)[-1] == "task_recovered"
    assert [a.outcome for a in attempts(tm, task_id)] == ["interrupted"]


def test_submit_from_many_threads_while_running(make_manager: Any) -> None:
    tm = make_manager(max_concurrent_tasks=4)
    tm.use("job", lambda task: task.payload)
    tm.start()
    ids: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def submitter(n: int) -> None:
        try:
            for i in range(25):
                task_id = tm.submit("job", n * 100 + i)
                with lock:
                    ids.append(task_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submitter, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(ids) == 100
    assert len(set(ids)) == 100
    wait_all(tm, ids)
    for task_id in ids:
        assert len(attempts(tm, task_id)) == 1


def test_two_managers_share_one_file(shared_db_url: str) -> None:
    url = shared_db_url
    managers = [
        TaskManager(url, worker_id=f"shared-{n}", poll_interval=0.02, max_concurrent_tasks=2)
        for n in range(2)
    ]
    try:
        for tm in managers:
            tm.use("job", lambda task: time.sleep(0.005))
        ids = managers[0].submit_many([("job", {"i": i}) for i in range(100)])
        for tm in managers:
            tm.start()
        wait_all(managers[1], ids)
        by_worker: dict[str, int] = {}
        for task_id in ids:
            (att,) = attempts(managers[1], task_id)
            assert att.outcome == "completed"
            by_worker[att.worker_id] = by_worker.get(att.worker_id, 0) + 1
        assert set(by_worker) == {"shared-0", "shared-1"}, by_worker
    finally:
        for tm in managers:
            tm.stop(timeout=5)
            tm.close()


def test_a_released_task_is_finished_by_another_worker(shared_db_url: str) -> None:
    url = shared_db_url
    first = TaskManager(url, worker_id="leaving", poll_interval=0.02)
    second = TaskManager(url, worker_id="staying", poll_interval=0.02)
    started, release = threading.Event(), threading.Event()

    def blocking(task: Any) -> str:
        started.set()
        release.wait(10)
        return "from leaving"

    try:
        first.use("job", blocking)
        second.use("job", lambda task: f"from staying, attempt {task.attempt}")
        task_id = first.submit("job")
        first.start()
        wait_for(started.is_set)
        first.stop(timeout=0.1)
        assert first.get_task(task_id).status == "pending"

        second.start()
        info = wait_for_status(second, task_id, "completed")
        assert info.result == "from staying, attempt 2"
        assert info.retry_count == 0
        assert event_types(second, task_id) == [
            "task_created",
            "task_claimed",
            "task_started",
            "task_recovered",
            "task_claimed",
            "task_started",  # the previous round was interrupted, not failed
            "task_completed",
        ]
        assert [(a.attempt, a.worker_id, a.outcome) for a in attempts(second, task_id)] == [
            (1, "leaving", "interrupted"),
            (2, "staying", "completed"),
        ]
    finally:
        release.set()
        for tm in (first, second):
            tm.stop(timeout=5)
            tm.close()


def test_unique_key_is_held_while_a_retry_waits(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("fail", lambda task: 1 / 0)
    task_id = tm.submit("fail", unique_key="once", max_retries=3, retry_interval=100)
    tm.start()
    wait_for_status(tm, task_id, "failed")
    assert tm.submit("fail", unique_key="once") == task_id
    tm.cancel_task(task_id)
    assert tm.submit("fail", unique_key="once") != task_id


def test_configure_worker_after_start_changes_concurrency(make_manager: Any) -> None:
    tm = make_manager(max_concurrent_tasks=1)
    gauge = Gauge()
    first_phase_max: list[int] = []

    def work(task: Any) -> None:
        with gauge:
            time.sleep(0.05)

    tm.use("work", work)
    ids = tm.submit_many([("work", {"i": i}) for i in range(24)])
    tm.start()
    wait_for(lambda: gauge.done >= 4)
    first_phase_max.append(gauge.max)
    tm.configure_worker(max_concurrency=3)
    wait_all(tm, ids)
    assert first_phase_max == [1]
    assert gauge.max == 3
