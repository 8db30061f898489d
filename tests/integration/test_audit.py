"""The audit API over a real workflow: workflow events and attempts, task and workflow audits,
and the workflow summary (SPEC §9, Appendix A). Runs on every backend."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest

from support.wait import wait_for_status
from tideflow.errors import InvalidOptionError


def run_workflow(make_manager: Any) -> tuple[Any, int, dict[str, int]]:
    """root spawns slow, quick (which checkpoints) and bad (fails for good), then completes."""
    tm = make_manager()

    def root(task: Any) -> Any:
        if task.stage == 0:
            return task.next(
                [
                    {"name": "slow"},
                    {"name": "quick"},
                    {"name": "bad", "max_retries": 1},
                ]
            )
        return "root done"

    def slow(task: Any) -> str:
        time.sleep(0.3)
        return "slow done"

    def quick(task: Any) -> str:
        task.audit("halfway", metadata={"rows": 3})
        return "quick done"

    def bad(task: Any) -> None:
        raise RuntimeError("bad input")

    tm.use({"root": root, "slow": slow, "quick": quick, "bad": bad})
    root_id = tm.submit("root")
    tm.start()
    wait_for_status(tm, root_id, "completed")
    ids = {t.name: t.id for t in tm.query_tasks(workflow_root_id=root_id).items}
    return tm, root_id, ids


def test_workflow_events_attempts_and_audits(make_manager: Any) -> None:
    tm, root_id, ids = run_workflow(make_manager)

    every = tm.query_workflow_events(root_id)
    assert every.total == len(every.items) > 0
    assert {e.root_id for e in every.items} == {root_id}
    assert {e.task_id for e in every.items} == set(ids.values())
    completed = tm.query_workflow_events(root_id, event_type="task_completed")
    assert sorted(e.task_id for e in completed.items) == sorted(
        ids[n] for n in ("root", "slow", "quick")
    )
    newest = tm.query_workflow_events(root_id, limit=2, order="desc")
    assert [e.id for e in newest.items] == [e.id for e in every.items][::-1][:2]
    assert (newest.total, newest.has_more) == (every.total, True)
    assert tm.query_workflow_events(root_id, started_after=time.time() + 60).total == 0

    attempts = tm.query_workflow_attempts(root_id)
    assert sorted((a.task_id, a.outcome) for a in attempts.items) == sorted(
        [
            (ids["root"], "suspended"),
            (ids["root"], "completed"),
            (ids["slow"], "completed"),
            (ids["quick"], "completed"),
            (ids["bad"], "failed"),
        ]
    )
    (failed,) = tm.query_workflow_attempts(root_id, outcome="failed").items
    assert failed.task_id == ids["bad"]
    assert "bad input" in (failed.error or "")
    assert tm.query_workflow_attempts(root_id, open_only=True).total == 0
    assert tm.query_workflow_attempts(root_id, ended_after=time.time() + 60).total == 0
    assert tm.query_task_attempts(ids["slow"], ended_before=time.time() + 60).total == 1

    audit = tm.get_task_audit(
        ids["quick"], events={"event_type": "task_checkpoint"}, attempts={"outcome": "completed"}
    )
    assert audit.task is not None
    assert audit.task.name == "quick"
    (checkpoint,) = audit.events.items
    assert checkpoint.metadata == {"code": "halfway", "rows": 3}
    assert [a.outcome for a in audit.attempts.items] == ["completed"]

    flow = tm.get_workflow_audit(root_id, tasks={"status": "completed"}, events={"limit": 3})
    assert flow.root_task is not None
    assert flow.root_task.id == root_id
    assert sorted(t.name for t in flow.tasks.items) == ["quick", "root", "slow"]
    assert (len(flow.events.items), flow.events.total) == (3, every.total)

    for call in (tm.get_workflow_audit, tm.get_workflow_audit_summary):
        with pytest.raises(InvalidOptionError, match=f"rooted at {root_id}"):
            call(ids["slow"])  # a child, not the root

    missing = tm.get_task_audit(10_000_000)
    assert missing.task is None
    assert (missing.events.total, missing.attempts.total) == (0, 0)
    assert tm.get_workflow_audit(10_000_000).root_task is None


def test_workflow_audit_summary(make_manager: Any) -> None:
    tm, root_id, ids = run_workflow(make_manager)
    summary = tm.get_workflow_audit_summary(root_id)

    assert summary["root_task"]["id"] == root_id
    assert summary["totals"] == {
        "tasks": 4,
        "attempts": 5,
        "events": tm.query_workflow_events(root_id).total,
        "checkpoints": 1,
        "max_attempt": 2,  # the root ran twice: stage 0, then stage 1
    }
    assert summary["statuses"] == {"completed": 3, "permanently_failed": 1}
    assert summary["attempt_outcomes"] == {"completed": 3, "failed": 1, "suspended": 1}
    assert summary["task_names"] == {"bad": 1, "quick": 1, "root": 1, "slow": 1}
    assert summary["stages"] == {0: 3, 1: 1}
    assert summary["workers"] == [tm.worker_id]
    assert summary["failed_tasks"] == [
        {
            "task_id": ids["bad"],
            "name": "bad",
            "status": "permanently_failed",
            "error": tm.get_task(ids["bad"]).error,
        }
    ]

    timing = summary["timing"]
    assert timing["created_at"] == summary["root_task"]["created_at"]
    created = datetime.fromisoformat(timing["created_at"])
    assert datetime.fromisoformat(timing["first_started_at"]) >= created
    assert timing["last_ended_at"] >= timing["first_started_at"]
    assert timing["workflow_duration_seconds"] >= 0.3  # the slow child alone sleeps 0.3 s

    stages = summary["stage_timings"]
    assert [(s["stage"], s["attempt"], s["outcome"]) for s in stages] == [
        (0, 1, "suspended"),
        (1, 2, "completed"),
    ]

    path = summary["critical_path"]
    assert [n["name"] for n in path["nodes"]] == ["root", "slow"]
    slow_node = path["nodes"][1]
    assert slow_node["duration_seconds"] >= 0.3
    assert path["total_duration_seconds"] == pytest.approx(
        sum(n["duration_seconds"] for n in path["nodes"])
    )

    slowest = summary["slowest_attempts"]
    assert len(slowest) == 5
    assert slowest[0]["task_id"] == ids["slow"]
    durations = [a["duration_seconds"] for a in slowest]
    assert durations == sorted(durations, reverse=True)


def test_audit_calls_reject_bad_input(make_manager: Any) -> None:
    tm = make_manager(allow_unregistered=True)
    task_id = tm.submit("anything")
    with pytest.raises(InvalidOptionError, match="unknown events keyword"):
        tm.get_task_audit(task_id, events={"bogus": 1})
    with pytest.raises(InvalidOptionError, match="must be a dict"):
        tm.get_task_audit(task_id, attempts=["outcome"])  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="unknown tasks keyword"):
        tm.get_workflow_audit(task_id, tasks={"workflow_root_id": 3})
    with pytest.raises(InvalidOptionError, match="outcome must be one of"):
        tm.query_workflow_attempts(task_id, outcome="exploded")
    with pytest.raises(InvalidOptionError, match="order"):
        tm.query_workflow_events(task_id, order="sideways")
    with pytest.raises(InvalidOptionError, match="event_types must be a list"):
        tm.query_workflow_events(task_id, event_types="task_created")
    with pytest.raises(InvalidOptionError, match="task id"):
        tm.get_workflow_audit_summary("root")  # type: ignore[arg-type]
    # a task without children is a workflow of one
    summary = tm.get_workflow_audit_summary(task_id)
    assert summary["totals"]["tasks"] == 1
    assert summary["critical_path"]["nodes"][0]["task_id"] == task_id
    assert summary["critical_path"]["nodes"][0]["attempt"] is None  # never ran
    assert summary["stage_timings"] == []


def test_task_stats_and_throughput(make_manager: Any) -> None:
    tm, _, _ = run_workflow(make_manager)
    stats = {(r["name"], r["status"]): r["count"] for r in tm.get_task_stats()}
    assert stats == {
        ("root", "completed"): 1,
        ("slow", "completed"): 1,
        ("quick", "completed"): 1,
        ("bad", "permanently_failed"): 1,
    }
    buckets = tm.get_throughput(window=600, bucket=60)
    assert len(buckets) == 10
    assert [b["start"] for b in buckets] == sorted(b["start"] for b in buckets)
    assert sum(b["completed"] for b in buckets) == 3
    assert sum(b["permanently_failed"] for b in buckets) == 1
    assert buckets[-1]["start"].timestamp() <= time.time() < buckets[-1]["start"].timestamp() + 60
    with pytest.raises(InvalidOptionError, match="window"):
        tm.get_throughput(window=0)
    with pytest.raises(InvalidOptionError, match="10000 buckets"):
        tm.get_throughput(window=86400, bucket=1)


def test_unserved_tasks_say_what_is_missing(make_manager: Any) -> None:
    tm = make_manager(capabilities=["gpu"], allow_unregistered=True)
    tm.use("render", lambda task: "ok")
    tm.pause()  # registered and active, but claiming nothing: everything stays waiting
    tm.start()
    tm.submit("render", requires=["gpu"])  # this worker could run it
    tm.submit("render", requires=["gpu", "big-mem"])
    tm.submit_many([("transcode", None), ("transcode", None)])
    unserved = tm.get_unserved_tasks()
    assert unserved == [
        {
            "name": "render",
            "requires": ["big-mem", "gpu"],
            "count": 1,
            "reason": "no active worker with a handler for it has the capabilities big-mem",
        },
        {
            "name": "transcode",
            "requires": [],
            "count": 2,
            "reason": "no active worker has a handler for 'transcode'",
        },
    ]
    tm.stop()  # no active worker at all now
    assert sum(u["count"] for u in tm.get_unserved_tasks()) == 4
