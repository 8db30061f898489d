"""Workflows through a real worker: children, rounds, fan-in, options, cancel (SPEC §5, §6, §16).

The fib-flow workflow guide's examples, translated to tideflow.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from support.wait import assert_stays, wait_for, wait_for_status
from support.workers import claim
from support.workflow import attempts, event_types, events, meta, outcomes
from tideflow import TaskManager
from tideflow.errors import InvalidTransitionError

RESULT_KEYS = {"task_id", "name", "status", "result", "error"}


def child_ids(tm: Any, parent_id: int) -> list[int]:
    return [c.id for c in tm.get_child_tasks(parent_id)]


# --------------------------------------------------------------------------------------------
# the basic shape


def test_parent_with_two_children(make_manager: Any) -> None:
    tm = make_manager(worker_id="wf-worker")
    seen: list[tuple[int, Any]] = []

    def parent(task: Any) -> Any:
        seen.append((task.stage, task.result))
        if task.stage == 0:
            return task.next([{"name": "double", "payload": 2}, {"name": "double", "payload": 5}])
        return {"sum": sum(c["result"] for c in task.result)}

    tm.use("parent", parent)
    tm.use("double", lambda task: task.payload * 2)
    parent_id = tm.submit("parent")
    tm.start()

    info = wait_for_status(tm, parent_id, "completed")
    assert info.result == {"sum": 14}
    assert info.stage == 1
    assert info.total_children == 2
    assert info.completed_children == 2
    assert info.error is None

    kids = tm.get_child_tasks(parent_id)
    assert [k.payload for k in kids] == [2, 5]
    assert all(k.parent_id == parent_id and k.root_id == parent_id for k in kids)
    assert all(k.status == "completed" and k.type == "async" for k in kids)
    assert [k.result for k in kids] == [4, 10]

    # stage 0 saw no result; stage 1 saw both children in creation order
    assert seen[0] == (0, None)
    assert seen[1][0] == 1
    round_ = seen[1][1]
    assert [set(r) for r in round_] == [RESULT_KEYS, RESULT_KEYS]
    assert round_ == [
        {
            "task_id": kids[0].id,
            "name": "double",
            "status": "completed",
            "result": 4,
            "error": None,
        },
        {
            "task_id": kids[1].id,
            "name": "double",
            "status": "completed",
            "result": 10,
            "error": None,
        },
    ]

    assert event_types(tm, parent_id) == [
        "task_created",
        "task_claimed",
        "task_started",
        "task_subtasks_created",
        "task_suspended",
        "task_resumed",
        "task_claimed",
        "task_started",
        "task_completed",
    ]
    assert outcomes(tm, parent_id) == ["suspended", "completed"]
    assert [a.stage for a in attempts(tm, parent_id)] == [0, 1]

    (created,) = events(tm, parent_id, "task_subtasks_created")
    assert meta(created)["child_count"] == 2
    assert meta(created)["child_task_ids"] == [k.id for k in kids]
    assert created.stage == 0
    (suspended,) = events(tm, parent_id, "task_suspended")
    assert meta(suspended)["suspend_reason"] == "awaiting_subtasks"
    assert (suspended.from_status, suspended.to_status) == ("running", "suspended")
    (resumed,) = events(tm, parent_id, "task_resumed")
    assert meta(resumed)["resume_reason"] == "children_completed"
    assert (resumed.from_status, resumed.to_status) == ("suspended", "pending")
    assert resumed.stage == 1


@pytest.mark.parametrize("form", ["task.next", "next-argument"])
def test_both_handler_forms_spawn_children(make_manager: Any, form: str) -> None:
    tm = make_manager()

    def with_method(task: Any) -> Any:
        if task.stage == 0:
            return task.next({"name": "leaf", "payload": "a"})
        return [c["result"] for c in task.result]

    def with_argument(task: Any, next: Any) -> Any:
        if task.stage == 0:
            return next([{"name": "leaf", "payload": "a"}, {"name": "leaf", "payload": "b"}])
        return [c["result"] for c in task.result]

    tm.use("parent", with_method if form == "task.next" else with_argument)
    tm.use("leaf", lambda task: task.payload.upper())
    parent_id = tm.submit("parent")
    tm.start()

    info = wait_for_status(tm, parent_id, "completed")
    assert info.result == (["A"] if form == "task.next" else ["A", "B"])
    assert outcomes(tm, parent_id) == ["suspended", "completed"]
    assert len(events(tm, parent_id, "task_resumed")) == 1


def test_nested_workflow_root_middle_leaf(make_manager: Any) -> None:
    tm = make_manager()

    def root(task: Any) -> Any:
        if task.stage == 0:
            return task.next({"name": "middle", "payload": {"n": 3}})
        return {"middle": task.result[0]["result"], "middle_status": task.result[0]["status"]}

    def middle(task: Any) -> Any:
        if task.stage == 0:
            return task.next({"name": "leaf", "payload": task.payload})
        return {"leaf": task.result[0]["result"]}

    def leaf(task: Any) -> Any:
        time.sleep(0.05)
        return task.payload["n"] * 7

    tm.use({"root": root, "middle": middle, "leaf": leaf})
    root_id = tm.submit("root")
    tm.start()

    info = wait_for_status(tm, root_id, "completed")
    assert info.result == {"middle": {"leaf": 21}, "middle_status": "completed"}

    (mid,) = tm.get_child_tasks(root_id)
    (lf,) = tm.get_child_tasks(mid.id)
    assert (mid.parent_id, mid.root_id) == (root_id, root_id)
    assert (lf.parent_id, lf.root_id) == (mid.id, root_id)
    assert info.root_id == root_id
    assert info.parent_id is None
    assert mid.result == {"leaf": 21}
    assert lf.result == 21

    everything = tm.query_tasks(root_id=root_id)
    assert everything.total == 3
    assert {t.id for t in everything.items} == {root_id, mid.id, lf.id}
    assert all(t.root_id == root_id for t in everything.items)

    leaf_end = attempts(tm, lf.id)[-1].ended_at
    mid_end = attempts(tm, mid.id)[-1].ended_at
    root_end = attempts(tm, root_id)[-1].ended_at
    assert leaf_end <= mid_end <= root_end
    assert outcomes(tm, root_id) == ["suspended", "completed"]
    assert outcomes(tm, mid.id) == ["suspended", "completed"]
    # events of the whole tree carry the root's id
    assert all(e.root_id == root_id for e in events(tm, lf.id))


def test_child_results_in_creation_order_across_two_rounds(make_manager: Any) -> None:
    tm = make_manager()
    seen: dict[int, Any] = {}

    def parent(task: Any) -> Any:
        seen[task.stage] = task.result
        if task.stage == 0:
            # the slowest child first: completion order is the reverse of creation order
            return task.next(
                [
                    {"name": "sleepy", "payload": {"i": 1, "sleep": 0.4}},
                    {"name": "sleepy", "payload": {"i": 2, "sleep": 0.2}},
                    {"name": "sleepy", "payload": {"i": 3, "sleep": 0.0}},
                ]
            )
        if task.stage == 1:
            return task.next(
                [{"name": "other", "payload": 4}, {"name": "other", "payload": 5}],
            )
        return "done"

    def sleepy(task: Any) -> Any:
        time.sleep(task.payload["sleep"])
        return task.payload["i"] * 10

    tm.use("parent", parent)
    tm.use("sleepy", sleepy)
    tm.use("other", lambda task: f"o{task.payload}")
    parent_id = tm.submit("parent")
    tm.start()

    info = wait_for_status(tm, parent_id, "completed")
    assert info.result == "done"
    assert info.stage == 2
    assert info.total_children == 2  # per round: the last round spawned 2
    assert info.completed_children == 2

    kids = tm.get_child_tasks(parent_id)
    assert [k.name for k in kids] == ["sleepy"] * 3 + ["other"] * 2
    # the premise: round 1 finished in the reverse order of creation
    ends = [attempts(tm, k.id)[-1].ended_at for k in kids[:3]]
    assert ends[2] < ends[1] < ends[0]

    assert seen[0] is None
    assert seen[1] == [
        {"task_id": k.id, "name": "sleepy", "status": "completed", "result": r, "error": None}
        for k, r in zip(kids[:3], [10, 20, 30], strict=True)
    ]
    assert seen[2] == [
        {"task_id": k.id, "name": "other", "status": "completed", "result": r, "error": None}
        for k, r in zip(kids[3:], ["o4", "o5"], strict=True)
    ]
    assert outcomes(tm, parent_id) == ["suspended", "suspended", "completed"]
    assert [meta(e)["child_count"] for e in events(tm, parent_id, "task_subtasks_created")] == [
        3,
        2,
    ]
    resumed = events(tm, parent_id, "task_resumed")
    assert [e.stage for e in resumed] == [1, 2]


def test_failed_child_is_reported_and_the_parent_decides(make_manager: Any) -> None:
    tm = make_manager()
    seen: list[Any] = []

    def parent(task: Any) -> Any:
        if task.stage == 0:
            return task.next(
                [
                    {"name": "ok", "payload": 1},
                    {"name": "bad", "payload": 2, "max_retries": 1},
                    {"name": "ok", "payload": 3},
                ]
            )
        seen.append(task.result)
        return {
            "completed": [c["result"] for c in task.result if c["status"] == "completed"],
            "failed": [c["task_id"] for c in task.result if c["status"] == "permanently_failed"],
        }

    def bad(task: Any) -> None:
        raise ValueError(f"bad child {task.payload}")

    tm.use({"parent": parent, "ok": lambda task: task.payload + 100, "bad": bad})
    parent_id = tm.submit("parent")
    tm.start()

    info = wait_for_status(tm, parent_id, "completed")
    kids = tm.get_child_tasks(parent_id)
    assert info.result == {"completed": [101, 103], "failed": [kids[1].id]}
    assert info.completed_children == 3
    assert info.total_children == 3

    (round_,) = seen
    assert [set(r) for r in round_] == [RESULT_KEYS] * 3
    assert [r["status"] for r in round_] == ["completed", "permanently_failed", "completed"]
    failed = round_[1]
    assert failed["task_id"] == kids[1].id
    assert failed["name"] == "bad"
    assert failed["result"] is None
    assert failed["error"].startswith("ValueError: bad child 2")
    assert round_[0]["error"] is None
    assert round_[2]["error"] is None

    bad_info = tm.get_task(kids[1].id)
    assert bad_info.status == "permanently_failed"
    assert bad_info.max_retries == 1
    assert outcomes(tm, kids[1].id) == ["failed"]
    # counted once: one resume
    assert len(events(tm, parent_id, "task_resumed")) == 1
    assert outcomes(tm, parent_id) == ["suspended", "completed"]


def test_cron_parent_with_children(make_manager: Any) -> None:
    tm = make_manager()
    runs: list[dict[str, Any]] = []
    lock = threading.Lock()

    def parent(task: Any) -> Any:
        with lock:
            if task.stage == 0:
                runs.append({"stage0": task.stage, "result0": task.result})
                n = len(runs)
                return task.next(
                    [
                        {"name": "leaf", "payload": {"run": n, "i": 0}},
                        {"name": "leaf", "payload": {"run": n, "i": 1}},
                    ]
                )
            run = runs[-1]
            run["stage1"] = task.stage
            run["result1"] = task.result
            n = len(runs)
            if n == 2:
                tm.pause()  # no third run: the state after this run can be inspected calmly
            return {"run": n, "leaves": [c["result"] for c in task.result]}

    tm.use("parent", parent)
    tm.use("leaf", lambda task: task.payload["run"] * 10 + task.payload["i"])
    cron_id = tm.cron("parent", "* * * * * *", max_retries=1)
    tm.start()

    def two_runs_done() -> bool:
        info = tm.get_task(cron_id)
        return outcomes(tm, cron_id).count("completed") == 2 and info.status == "pending"

    wait_for(two_runs_done, timeout=10, message=lambda: f"cron parent: {outcomes(tm, cron_id)}")
    info = tm.get_task(cron_id)
    completed = events(tm, cron_id, "task_completed")
    assert len(completed) == 2
    assert all((e.from_status, e.to_status) == ("running", "pending") for e in completed)
    assert info.type == "cron"
    assert info.stage == 0  # reset by the successful run
    assert info.retry_count == 0
    assert info.next_run_time > completed[-1].event_time
    assert outcomes(tm, cron_id) == ["suspended", "completed", "suspended", "completed"]
    assert [a.stage for a in attempts(tm, cron_id)] == [0, 1, 0, 1]

    kids = tm.get_child_tasks(cron_id)
    assert [k.payload for k in kids] == [
        {"run": 1, "i": 0},
        {"run": 1, "i": 1},
        {"run": 2, "i": 0},
        {"run": 2, "i": 1},
    ]
    assert all(k.status == "completed" and k.root_id == cron_id for k in kids)
    assert all(k.type == "async" for k in kids)  # children are always one-off

    assert [r["stage0"] for r in runs] == [0, 0]
    assert [r["stage1"] for r in runs] == [1, 1]
    assert runs[0]["result0"] is None
    assert runs[1]["result0"] == {"run": 1, "leaves": [10, 11]}  # the previous run's result
    # each run's stage 1 sees that run's round only
    assert [c["task_id"] for c in runs[0]["result1"]] == [kids[0].id, kids[1].id]
    assert [c["task_id"] for c in runs[1]["result1"]] == [kids[2].id, kids[3].id]
    assert info.result == {"run": 2, "leaves": [20, 21]}


def test_context_kept_across_stages_and_retry(make_manager: Any) -> None:
    tm = make_manager()
    stage0_calls: list[int] = []
    stage1_calls: list[dict[str, Any]] = []

    def parent(task: Any, next: Any) -> Any:
        if task.stage == 0:
            stage0_calls.append(task.attempt)
            assert task.context is None
            return next(
                [{"name": "leaf", "payload": 1}, {"name": "leaf", "payload": 2}],
                context=b"step1",
            )
        stage1_calls.append({"stage": task.stage, "context": task.context, "result": task.result})
        if len(stage1_calls) == 1:
            raise RuntimeError("stage 1 fails once")
        return {"context": task.context.decode(), "sum": sum(c["result"] for c in task.result)}

    tm.use("parent", parent)
    tm.use("leaf", lambda task: task.payload * 3)
    parent_id = tm.submit("parent", max_retries=3)
    tm.start()

    info = wait_for_status(tm, parent_id, "completed")
    assert info.result == {"context": "step1", "sum": 9}
    assert info.context == b"step1"
    assert info.stage == 1
    assert info.retry_count == 1
    assert stage0_calls == [1]  # stage 0 ran once: it is not redone by the retry
    assert len(stage1_calls) == 2
    first, second = stage1_calls
    assert first["stage"] == second["stage"] == 1
    assert first["context"] == second["context"] == b"step1"
    assert isinstance(second["context"], bytes)
    assert first["result"] == second["result"]
    assert [c["result"] for c in second["result"]] == [3, 6]

    assert len(tm.get_child_tasks(parent_id)) == 2  # no child spawned again
    assert info.total_children == 2
    assert info.completed_children == 2
    assert outcomes(tm, parent_id) == ["suspended", "failed", "completed"]
    assert [a.stage for a in attempts(tm, parent_id)] == [0, 1, 1]
    assert event_types(tm, parent_id)[-8:] == [
        "task_resumed",
        "task_claimed",
        "task_started",
        "task_failed",
        "task_retry_scheduled",
        "task_claimed",
        "task_retry_started",
        "task_completed",
    ]
    # context never propagates to children
    assert all(k.context is None for k in tm.get_child_tasks(parent_id))


def test_child_option_resolution(make_manager: Any) -> None:
    tm = make_manager(max_retries=4, timeout=50, capabilities=["gpu"])

    def parent(task: Any) -> Any:
        if task.stage == 0:
            return task.next(
                [
                    {"name": "plain"},
                    {"name": "plain", "priority": -3, "timeout": 9},
                    {"name": "registered"},
                    {"name": "registered", "max_retries": 1},
                    {"name": "plain", "tag": "own", "requires": ["gpu"]},
                    {"name": "plain", "delay": 0.3},
                ]
            )
        return "ok"

    tm.use("parent", parent)
    tm.use("plain", lambda task: None)
    tm.use("registered", lambda task: None, max_retries=5)
    parent_id = tm.submit(
        "parent",
        priority=7,
        timeout=42,
        max_retries=2,
        retry_interval=3,
        retry_backoff="exponential",
        tag="parent-tag",
        requires=["gpu"],
        delay=0.05,
    )
    tm.start()

    wait_for_status(tm, parent_id, "completed")
    inherited, overridden, reg, reg_spec, own, delayed = tm.get_child_tasks(parent_id)

    # nothing in the spec or the registration: the parent's values
    assert inherited.priority == 7
    assert inherited.timeout == pytest.approx(42)
    assert inherited.max_retries == 2
    assert inherited.retry_interval == pytest.approx(3)
    assert inherited.retry_backoff == "exponential"
    # tag and requires are not inherited
    assert inherited.tag is None
    assert tuple(inherited.requires) == ()

    # the spec wins
    assert overridden.priority == -3
    assert overridden.timeout == pytest.approx(9)
    assert overridden.max_retries == 2

    # the child type's registration comes before the parent
    assert reg.max_retries == 5
    assert reg.priority == 7
    assert reg.timeout == pytest.approx(42)
    assert reg_spec.max_retries == 1

    assert own.tag == "own"
    assert tuple(own.requires) == ("gpu",)
    assert own.priority == 7

    # delay is not inherited: due at creation unless the spec delays it
    for kid in (inherited, overridden, reg, reg_spec, own):
        assert abs((kid.next_run_time - kid.created_at).total_seconds()) < 0.01
    assert (delayed.next_run_time - delayed.created_at).total_seconds() == pytest.approx(
        0.3, abs=0.01
    )
    assert delayed.start_time >= delayed.next_run_time

    assert all(
        k.status == "completed" for k in (inherited, overridden, reg, reg_spec, own, delayed)
    )


@pytest.mark.parametrize(
    ("children", "expected"),
    [
        ([], "empty"),
        ([{"payload": 1}], "name"),
        ([{"name": "leaf", "bogus": 1}], "bogus"),
        ([{"name": "leaf"}, "not-a-dict"], "dict"),
    ],
    ids=["empty-list", "no-name", "unknown-key", "not-a-dict"],
)
def test_bad_next_fails_the_attempt_and_spawns_nothing(
    make_manager: Any, children: Any, expected: str
) -> None:
    tm = make_manager()
    tm.use("parent", lambda task: task.next(children))
    tm.use("leaf", lambda task: None)
    parent_id = tm.submit("parent", max_retries=1)
    tm.start()

    info = wait_for_status(tm, parent_id, "permanently_failed")
    first_line = info.error.splitlines()[0]
    assert expected in first_line, first_line
    assert "Error" in first_line.split(":", 1)[0]
    assert tm.get_child_tasks(parent_id) == []
    assert tm.query_tasks().total == 1
    assert info.total_children == 0
    assert outcomes(tm, parent_id) == ["failed"]
    types = event_types(tm, parent_id)
    assert "task_subtasks_created" not in types
    assert "task_suspended" not in types
    assert types[-2:] == ["task_failed", "task_permanently_failed"]


def test_bad_next_with_attempts_left_is_retried(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("parent", lambda task: task.next([]))
    parent_id = tm.submit("parent", max_retries=2)
    tm.start()
    info = wait_for_status(tm, parent_id, "permanently_failed")
    assert outcomes(tm, parent_id) == ["failed", "failed"]
    assert tm.get_child_tasks(parent_id) == []
    assert "empty" in info.error.splitlines()[0]


# --------------------------------------------------------------------------------------------
# fan-in at scale and under concurrency


def test_thousand_children_resume_exactly_once(
    make_manager: Any, request: pytest.FixtureRequest
) -> None:
    n = 1000
    tm = make_manager(max_concurrent_tasks=20)
    marks: dict[str, float] = {}
    seen: list[Any] = []

    def parent(task: Any) -> Any:
        if task.stage == 0:
            marks["fan_out"] = time.monotonic()
            return task.next([{"name": "noop", "payload": i} for i in range(n)])
        marks["fan_in"] = time.monotonic()
        seen.append(task.result)
        return {"count": len(task.result), "sum": sum(c["result"] for c in task.result)}

    tm.use("parent", parent)
    tm.use("noop", lambda task: task.payload)
    parent_id = tm.submit("parent")
    tm.start()

    info = wait_for_status(tm, parent_id, "completed", timeout=60)
    elapsed = marks["fan_in"] - marks["fan_out"]
    backend = request.node.callspec.id
    print(f"\n[{backend}] fan-out to fan-in of {n} children: {elapsed:.2f}s")

    assert info.result == {"count": n, "sum": n * (n - 1) // 2}
    assert info.total_children == n
    assert info.completed_children == n
    assert len(events(tm, parent_id, "task_resumed")) == 1
    assert outcomes(tm, parent_id) == ["suspended", "completed"]

    (round_,) = seen
    ids = child_ids(tm, parent_id)
    assert len(ids) == n
    assert [c["task_id"] for c in round_] == ids
    assert ids == sorted(ids)
    assert [c["result"] for c in round_] == list(range(n))
    assert all(c["status"] == "completed" for c in round_)


@contextlib.contextmanager
def _managers(db: str, *worker_ids: str, **options: Any) -> Iterator[list[TaskManager]]:
    made = [TaskManager(db, worker_id=w, poll_interval=0.02, **options) for w in worker_ids]
    try:
        yield made
    finally:
        for tm in reversed(made):
            with contextlib.suppress(Exception):
                tm.stop(timeout=5)
            with contextlib.suppress(Exception):
                tm.close()


def test_concurrent_fan_in_by_two_workers_on_one_file(shared_db_url: str) -> None:
    n = 120
    calls: dict[str, int] = {}
    lock = threading.Lock()

    def parent(task: Any) -> Any:
        if task.stage == 0:
            return task.next([{"name": "child", "payload": i} for i in range(n)])
        return [c["result"] for c in task.result]

    def child(task: Any) -> int:
        with lock:
            calls[task.worker_id] = calls.get(task.worker_id, 0) + 1
        time.sleep(0.005)
        return task.payload

    db = shared_db_url
    with _managers(db, "fan-a", "fan-b", max_concurrent_tasks=4) as (a, b):
        a.use({"parent": parent, "child": child})
        b.use("child", child)
        a.setup()
        b.setup()
        b.start()
        parent_id = a.submit("parent")
        a.start()

        info = wait_for_status(a, parent_id, "completed", timeout=30)
        assert info.result == list(range(n))
        assert info.completed_children == n
        assert len(events(a, parent_id, "task_resumed")) == 1
        assert outcomes(a, parent_id) == ["suspended", "completed"]
        # both workers served children; each child ran once
        kids = a.get_child_tasks(parent_id)
        served = {attempts(a, k.id)[0].worker_id for k in kids}
        assert served == {"fan-a", "fan-b"}
        assert sum(calls.values()) == n
        assert all(len(attempts(a, k.id)) == 1 for k in kids)


# --------------------------------------------------------------------------------------------
# cancel


def test_cancel_cascades_to_unfinished_descendants(make_manager: Any) -> None:
    tm = make_manager(allow_unregistered=True)
    release = threading.Event()
    blocker_started = threading.Event()
    blocker_returned = threading.Event()

    def parent(task: Any) -> Any:
        if task.stage == 0:
            return task.next(
                [
                    {"name": "fast"},
                    {"name": "blocker"},
                    {"name": "middle"},
                    {"name": "unserved"},  # no handler here: stays pending
                ]
            )
        return "resumed"  # must never happen

    def middle(task: Any) -> Any:
        if task.stage == 0:
            return task.next({"name": "unserved"})
        return "middle resumed"

    def blocker(task: Any) -> str:
        blocker_started.set()
        release.wait(10)
        blocker_returned.set()
        return "late"

    tm.use({"parent": parent, "fast": lambda task: "quick", "blocker": blocker, "middle": middle})
    parent_id = tm.submit("parent")
    tm.start()

    def settled() -> bool:
        kids = {k.name: k for k in tm.get_child_tasks(parent_id)}
        return (
            len(kids) == 4
            and kids["fast"].status == "completed"
            and kids["middle"].status == "suspended"
            and kids["blocker"].status == "running"
        )

    wait_for(settled, message="the workflow did not reach its waiting state")
    assert blocker_started.is_set()
    fast, blk, mid, unserved = tm.get_child_tasks(parent_id)
    (grandchild,) = tm.get_child_tasks(mid.id)
    assert grandchild.status == "pending"
    fast_events = event_types(tm, fast.id)

    tm.cancel_task(parent_id, reason="operator stop")

    cancelled = [parent_id, blk.id, mid.id, unserved.id, grandchild.id]
    for task_id in cancelled:
        info = tm.get_task(task_id)
        assert info.status == "permanently_failed", (task_id, info.status)
        assert info.error
        assert event_types(tm, task_id)[-1] == "task_cancelled"
    assert tm.get_task(parent_id).error == "operator stop"
    assert outcomes(tm, blk.id) == ["cancelled"]  # the running attempt was fenced off

    # the completed child is untouched
    fast_now = tm.get_task(fast.id)
    assert fast_now.status == "completed"
    assert fast_now.result == "quick"
    assert event_types(tm, fast.id) == fast_events

    # the blocked handler returns late: its write is fenced, nothing resumes
    release.set()
    wait_for(blocker_returned.is_set, message="the blocked handler never returned")
    assert_stays(
        lambda: (
            tm.get_task(blk.id).status == "permanently_failed"
            and tm.get_task(parent_id).status == "permanently_failed"
            and tm.get_task(mid.id).status == "permanently_failed"
        ),
        0.3,
        message="a cancelled task changed after the cancel",
    )
    assert "task_resumed" not in event_types(tm, parent_id)
    assert "task_resumed" not in event_types(tm, mid.id)
    assert tm.get_task(blk.id).result is None
    assert outcomes(tm, parent_id) == ["suspended"]


def test_cancel_parent_whose_children_nobody_serves(make_manager: Any) -> None:
    tm = make_manager(allow_unregistered=True)
    tm.use("parent", lambda task: task.next([{"name": "remote"}, {"name": "remote"}]))
    parent_id = tm.submit("parent")
    tm.start()

    wait_for(
        lambda: tm.get_task(parent_id).status == "suspended",
        message="the parent never suspended",
    )
    kids = tm.get_child_tasks(parent_id)
    assert [k.status for k in kids] == ["pending", "pending"]

    tm.cancel_task(parent_id)
    for task_id in [parent_id, *(k.id for k in kids)]:
        info = tm.get_task(task_id)
        assert info.status == "permanently_failed"
        assert event_types(tm, task_id)[-1] == "task_cancelled"
    assert "task_resumed" not in event_types(tm, parent_id)


class RacingStore:
    """The manager's store, with ``before_apply(changes)`` run before every ``apply``: another
    worker's claim or finish lands between the manager's read and its write, every time the
    test wants it to."""

    def __init__(self, store: Any, before_apply: Any) -> None:
        self._store = store
        self._before_apply = before_apply

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def apply(self, changes: Any) -> Any:
        return self._store.apply(self._before_apply(list(changes)))


def _suspended_parent_with_remote_children(tm: Any, count: int = 2) -> tuple[int, list[int]]:
    tm.use("parent", lambda task: task.next([{"name": "job"} for _ in range(count)]))
    parent_id = tm.submit("parent")
    tm.start()
    wait_for(
        lambda: tm.get_task(parent_id).status == "suspended",
        message="the parent never suspended",
    )
    kids = child_ids(tm, parent_id)
    assert [tm.get_task(k).status for k in kids] == ["pending"] * count
    return parent_id, kids


def test_cancel_retries_a_child_claimed_between_its_read_and_its_write(
    make_manager: Any,
) -> None:
    # "job" has no handler here: only the other worker below claims it, at the worst moment
    tm = make_manager(allow_unregistered=True)
    parent_id, (first, second) = _suspended_parent_with_remote_children(tm)
    raced: list[int] = []

    def claim_first_child_once(changes: list[Any]) -> list[Any]:
        if not raced and any(c.task_id == first for c in changes):
            (row,) = claim(tm, "other-worker", name="job")  # the oldest due job: the first child
            raced.append(row.id)
        return changes

    tm._store = RacingStore(tm._store, claim_first_child_once)
    tm.cancel_task(parent_id, reason="operator stop")

    assert raced == [first]
    for task_id in (parent_id, first, second):
        assert tm.get_task(task_id).status == "permanently_failed", task_id
        assert event_types(tm, task_id)[-1] == "task_cancelled"
    # the claimed child was cancelled on the second read, as a running task: its attempt is
    # fenced off and closed "cancelled"
    assert outcomes(tm, first) == ["cancelled"]
    assert [e.from_status for e in events(tm, first)][-1] == "running"


def test_cancel_names_the_descendants_it_could_not_cancel(make_manager: Any) -> None:
    tm = make_manager(allow_unregistered=True)
    parent_id, (first, second) = _suspended_parent_with_remote_children(tm)
    writes: list[int] = []

    def lose_every_write_about_the_second_child(changes: list[Any]) -> list[Any]:
        # as if the second child changed between every read and write (its guard never held)
        writes.extend(c.task_id for c in changes if c.task_id == second)
        return [c for c in changes if c.task_id != second]

    tm._store = RacingStore(tm._store, lose_every_write_about_the_second_child)
    with pytest.raises(InvalidTransitionError, match=rf"descendant\(s\) {second} ") as info:
        tm.cancel_task(parent_id)
    assert f"task {parent_id} is cancelled" in str(info.value)
    assert "cancel_task" in str(info.value)  # what to do about it
    assert len(writes) > 1  # it tried again before giving up

    assert tm.get_task(parent_id).status == "permanently_failed"
    assert tm.get_task(first).status == "permanently_failed"
    assert tm.get_task(second).status == "pending"
    tm._store = tm._store._store
    tm.cancel_task(second)  # the advice works
    assert tm.get_task(second).status == "permanently_failed"


def test_cancelled_child_is_reported_to_its_parent(make_manager: Any) -> None:
    tm = make_manager(allow_unregistered=True)
    seen: list[Any] = []

    def parent(task: Any) -> Any:
        if task.stage == 0:
            return task.next([{"name": "fast"}, {"name": "remote"}])
        seen.append(task.result)
        return [c["status"] for c in task.result]

    tm.use({"parent": parent, "fast": lambda task: "quick"})
    parent_id = tm.submit("parent")
    tm.start()

    def waiting() -> bool:
        kids = tm.get_child_tasks(parent_id)
        return len(kids) == 2 and kids[0].status == "completed"

    wait_for(waiting, message="the fast child never completed")
    _, remote = tm.get_child_tasks(parent_id)
    assert remote.status == "pending"
    assert tm.get_task(parent_id).status == "suspended"

    tm.cancel_task(remote.id, reason="not needed")

    info = wait_for_status(tm, parent_id, "completed")
    assert info.result == ["completed", "permanently_failed"]
    (round_,) = seen
    assert round_[1]["task_id"] == remote.id
    assert round_[1]["result"] is None
    assert "not needed" in round_[1]["error"]
    assert info.completed_children == 2
    (resumed,) = events(tm, parent_id, "task_resumed")
    assert meta(resumed)["resume_reason"] == "children_completed"
    assert event_types(tm, remote.id)[-1] == "task_cancelled"


def test_retried_child_is_counted_once(make_manager: Any) -> None:
    """A failed child retried by hand while its round is open is uncounted, then counted again;
    a retried child of an old round does not count on the parent's newer round."""
    tm = make_manager()
    gate, gate2 = threading.Event(), threading.Event()
    fixed: set[str] = set()
    runs: list[int] = []

    def parent(task: Any) -> Any:
        runs.append(task.stage)
        if task.stage == 0:
            return task.next(
                [
                    {"name": "flaky", "payload": "a", "max_retries": 1},
                    {"name": "flaky", "payload": "b", "max_retries": 1},
                    {"name": "gated"},
                ]
            )
        if task.stage == 1:
            return task.next([{"name": "gated2"}, {"name": "gated2"}])
        return [c["status"] for c in task.result]

    def flaky(task: Any) -> str:
        if task.payload not in fixed:
            raise RuntimeError("not yet")
        return "fixed"

    tm.use("parent", parent)
    tm.use("flaky", flaky)
    tm.use("gated", lambda task: gate.wait(10))
    tm.use("gated2", lambda task: gate2.wait(10))
    parent_id = tm.submit("parent")
    tm.start()

    wait_for(lambda: len(child_ids(tm, parent_id)) == 3)
    a_id, b_id, _ = child_ids(tm, parent_id)
    wait_for_status(tm, a_id, "permanently_failed")
    wait_for_status(tm, b_id, "permanently_failed")
    assert tm.get_task(parent_id).completed_children == 2
    fixed.add("a")
    tm.retry_task(a_id)
    wait_for_status(tm, a_id, "completed")
    assert tm.get_task(parent_id).completed_children == 2  # -1 on retry, +1 on completion
    assert tm.get_task(parent_id).status == "suspended"

    gate.set()
    wait_for(lambda: len(child_ids(tm, parent_id)) == 5)
    # a child of the finished round, retried now, counts nothing on the open round
    fixed.add("b")
    tm.retry_task(b_id)
    wait_for_status(tm, b_id, "completed")
    info = tm.get_task(parent_id)
    assert (info.status, info.stage, info.completed_children) == ("suspended", 1, 0)

    gate2.set()
    info = wait_for_status(tm, parent_id, "completed")
    assert info.result == ["completed", "completed"]
    assert runs == [0, 1, 2]
    assert event_types(tm, parent_id).count("task_resumed") == 2


def test_children_finishing_in_one_batch_count_once_and_resume_once(make_manager: Any) -> None:
    from tideflow.core import cron, lifecycle

    tm = make_manager(allow_unregistered=True)
    tm.use("parent", lambda task: task.next([{"name": "kid", "payload": i} for i in range(3)]))
    parent_id = tm.submit("parent")
    tm.start()
    wait_for_status(tm, parent_id, "suspended")
    tm.stop(timeout=5)

    kids = claim(tm, "w-batch", "kid", limit=3)
    assert len(kids) == 3
    now = time.time()
    # the three outcomes and a second copy of the first (a stale duplicate) in one batch
    changes = [lifecycle.complete(k, str(k.payload), now, cron.next_tick) for k in kids]
    held = tm._store.apply([*changes, changes[0]])
    assert held == [True, True, True, False]

    info = tm.get_task(parent_id)
    assert (info.status, info.stage) == ("pending", 1)
    resumed = events(tm, parent_id, "task_resumed")
    assert [meta(e).get("resume_reason") for e in resumed] == ["children_completed"]
    row = tm._store.get_task(parent_id)
    assert (row.completed_children, row.total_children) == (3, 3)
