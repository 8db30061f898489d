"""The instrumentation seam (``worker/observe.py``) and the structured log pieces, without a
worker: fake hooks record what they are told."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from tideflow.core.types import AttemptClose, Change, NewTask, TaskRow
from tideflow.errors import StoreError
from tideflow.logs import JsonFormatter, TaskFields
from tideflow.worker import observe
from tideflow.worker.task import Task

ROW = TaskRow(
    *[None] * len(TaskRow._fields),
)._replace(
    id=7,
    name="job",
    type="async",
    status="running",
    stage=0,
    attempt=2,
    worker_id="w1",
    start_time=105.0,
    next_run_time=100.0,
)


class Recorder:
    """Hooks that record every call."""

    def __init__(self, headers: Mapping[str, str] | None = None, fail: bool = False) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.headers = headers
        self.fail = fail

    def publish(self, names: Sequence[str]) -> Any:
        recorder = self

        class Pub:
            headers = [recorder.headers] * len(names)

            def done(self, ids: Sequence[int]) -> None:
                recorder.calls.append(("done", list(ids)))

            def failed(self, error: BaseException) -> None:
                recorder.calls.append(("failed", type(error).__name__))

        self.calls.append(("publish", list(names)))
        return Pub()

    def inject(self) -> Mapping[str, str] | None:
        return self.headers

    def attempt(self, row: TaskRow, worker_id: str) -> Any:
        if self.fail:
            raise RuntimeError("hook bug")
        recorder = self

        class Att:
            def enter(self) -> None:
                recorder.calls.append(("enter", observe.current_task()))

            def end(self, outcome: str, error: BaseException | None, duration: float) -> None:
                recorder.calls.append(("end", outcome, error, duration >= 0))

        return Att()

    def claimed(self, count: int) -> None:
        self.calls.append(("claimed", count))

    def store_error(self, operation: str, error: BaseException) -> None:
        self.calls.append(("store_error", operation, type(error).__name__))


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    hooks = Recorder({"traceparent": "00-abc-def-01"})
    observe.install(hooks)
    try:
        yield hooks
    finally:
        observe.uninstall(hooks)


def test_nothing_is_installed_by_default() -> None:
    assert observe.HOOKS == ()
    assert observe.start_attempt(ROW, "w1") is None
    assert observe.inject() is None
    store = object()
    assert observe.observed_store(store) is store


def test_install_is_idempotent_and_uninstall_removes(recorder: Recorder) -> None:
    observe.install(recorder)
    assert (recorder,) == observe.HOOKS


def test_publish_stores_the_headers_and_reports_the_ids(recorder: Recorder) -> None:
    inserted: list[NewTask] = []

    def insert(tasks: list[NewTask]) -> list[int]:
        inserted.extend(tasks)
        return [11, 12]

    tasks = [NewTask({"name": "a"}, ()), NewTask({"name": "b"}, ())]
    assert observe.publish(insert, tasks) == [11, 12]
    assert [json.loads(t.values["trace_context"]) for t in inserted] == [
        {"traceparent": "00-abc-def-01"}
    ] * 2
    assert recorder.calls == [("publish", ["a", "b"]), ("done", [11, 12])]


def test_a_failed_insert_is_reported_and_raised(recorder: Recorder) -> None:
    def insert(tasks: list[NewTask]) -> list[int]:
        raise StoreError("down")

    with pytest.raises(StoreError):
        observe.publish(insert, [NewTask({"name": "a"}, ())])
    assert recorder.calls[-1] == ("failed", "StoreError")


def test_an_attempt_runs_in_a_context_that_knows_it(recorder: Recorder) -> None:
    obs = observe.start_attempt(ROW, "w1")
    assert obs is not None
    assert observe.current_task() is None  # not here: in the attempt's context only
    fields = obs.context.run(observe.current_task)
    assert fields == observe.CurrentAttempt(7, "job", 2, "w1")
    assert recorder.calls == [("enter", fields)]
    closed = Change(7, 7, None, frozenset(), {}, attempt_close=AttemptClose(2, "failed", 1.0))
    error = ValueError("x")
    obs.end(closed, error)
    obs.end(None, None)
    assert recorder.calls[1:] == [
        ("end", "failed", error, True),
        ("end", "interrupted", None, True),
    ]


def test_a_broken_hook_never_breaks_the_attempt(caplog: pytest.LogCaptureFixture) -> None:
    broken, sound = Recorder(fail=True), Recorder()
    observe.install(broken)
    observe.install(sound)
    try:
        with caplog.at_level(logging.WARNING, "tideflow.worker"):
            obs = observe.start_attempt(ROW, "w1")
        assert obs is not None
        obs.end(None, None)
        assert [c[0] for c in sound.calls] == ["enter", "end"]
        assert "instrumentation Recorder failed: RuntimeError: hook bug" in caplog.text
    finally:
        observe.uninstall(broken)
        observe.uninstall(sound)


def test_task_next_carries_the_attempts_context(recorder: Recorder) -> None:
    from tideflow.worker.task import AttemptState

    row = ROW._replace(payload=None, context=None)
    task = Task(row, result=None, state=AttemptState(1e18), write=lambda change: 1)
    assert task.next([{"name": "x"}]).trace_context == '{"traceparent":"00-abc-def-01"}'
    observe.uninstall(recorder)
    assert task.next([{"name": "x"}]).trace_context is None


class FakeStore:
    dialect = "fake"

    def exchange(self, changes: Any, request: Any) -> tuple[list[bool], list[int]]:
        return [], [1, 2, 3]

    def claim(self, request: Any) -> list[int]:
        return [1]

    def heartbeat(self, worker_id: str) -> None:
        raise StoreError("database went away")


def test_the_observed_store_reports_claims_and_errors(recorder: Recorder) -> None:
    store: Any = observe.observed_store(FakeStore())
    assert isinstance(store, observe.ObservedStore)
    assert store.dialect == "fake"
    assert store.exchange([], object()) == ([], [1, 2, 3])
    store.exchange([], None)  # writes only, no claim: no batch size
    store.claim(object())
    with pytest.raises(StoreError):
        store.heartbeat("w1")
    assert recorder.calls == [
        ("claimed", 3),
        ("claimed", 1),
        ("store_error", "heartbeat", "StoreError"),
    ]


def _record(**extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("tideflow.worker", logging.ERROR, __file__, 1, "a %s", ("b",), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_formatter_prints_one_object_with_the_task_fields() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        exc_info = sys.exc_info()
    record = _record(task_id=3, task_name="job", attempt=1, worker_id="w1")
    record.exc_info = exc_info
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "a b"
    assert (data["level"], data["logger"]) == ("ERROR", "tideflow.worker")
    assert (data["task_id"], data["task_name"], data["attempt"], data["worker_id"]) == (
        3,
        "job",
        1,
        "w1",
    )
    assert data["exc_info"].startswith("Traceback")
    assert "ValueError: bad" in data["exc_info"]
    assert data["timestamp"].endswith("+00:00")


def test_task_fields_come_from_the_running_attempt(recorder: Recorder) -> None:
    fields = TaskFields(worker_id="w-default")
    plain = _record()
    fields.filter(plain)
    assert plain.worker_id == "w-default"
    assert not hasattr(plain, "task_id")
    obs = observe.start_attempt(ROW, "w1")
    assert obs is not None
    inside = _record()
    obs.context.run(fields.filter, inside)
    assert (inside.task_id, inside.task_name, inside.attempt, inside.worker_id) == (
        7,
        "job",
        2,
        "w1",
    )
    explicit = _record(task_id=99)  # given by the caller: left alone
    obs.context.run(fields.filter, explicit)
    assert explicit.task_id == 99
    assert not hasattr(explicit, "task_name")


def test_metrics_hooks_count_an_attempt() -> None:
    pytest.importorskip("prometheus_client")
    import tideflow.metrics

    registry = tideflow.metrics.instrument()
    try:
        obs = observe.start_attempt(ROW, "w1")
        assert obs is not None
        assert registry.get_sample_value("tideflow_worker_attempts_in_flight", {"name": "job"}) == 1
        assert (
            registry.get_sample_value("tideflow_worker_claim_lag_seconds_sum", {"name": "job"}) == 5
        )
        obs.end(None, None)
        observe.observed_store(FakeStore()).claim(object())
        with pytest.raises(StoreError):
            observe.observed_store(FakeStore()).heartbeat("w1")
    finally:
        tideflow.metrics.uninstrument()
    get = registry.get_sample_value
    assert get("tideflow_worker_attempts_in_flight", {"name": "job"}) == 0
    assert get("tideflow_worker_attempts_total", {"name": "job", "outcome": "interrupted"}) == 1
    assert get("tideflow_worker_attempt_duration_seconds_count", {"name": "job"}) == 1
    assert get("tideflow_worker_claim_batch_size_sum") == 1
    assert get("tideflow_worker_store_errors_total", {"operation": "heartbeat"}) == 1
    assert observe.HOOKS == ()
