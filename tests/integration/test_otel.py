"""Tracing (``tideflow.otel``): spans of real submits and real worker runs, exported to the
SDK's in-memory exporter, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.wait import wait_for, wait_for_status

pytest.importorskip("opentelemetry.sdk", reason="tracing needs pip install 'tideflow[otel]'")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

import tideflow.otel
from tideflow import TaskManager

Spans = Callable[[], list[ReadableSpan]]


@pytest.fixture(params=["sqlite", "postgres"])
def traced_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:{tmp_path / 'traced.db'}"


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    tideflow.otel.instrument(tracer_provider=tp)
    try:
        yield tp, exporter
    finally:
        tideflow.otel.uninstrument()
        tp.shutdown()


@pytest.fixture
def make(traced_url: str) -> Iterator[Callable[[], Any]]:
    """Managers on the traced database, stopped and closed at teardown (not ``make_manager``,
    whose every backend would run each test once more)."""
    made: list[TaskManager] = []

    def factory() -> TaskManager:
        made.append(TaskManager(traced_url, poll_interval=0.02))
        return made[-1]

    yield factory
    for tm in reversed(made):
        tm.stop(timeout=5)
        tm.close()


@pytest.fixture
def manager(provider: Any, make: Callable[[], Any]) -> Any:  # instrumented before it starts
    return make()


def _named(exporter: InMemorySpanExporter, name: str, count: int = 1) -> list[ReadableSpan]:
    """Wait until ``count`` finished spans are called ``name``; return them, oldest first."""

    def found() -> list[ReadableSpan] | None:
        spans = [s for s in exporter.get_finished_spans() if s.name == name]
        return spans if len(spans) >= count else None

    return wait_for(
        found,
        message=lambda: (
            f"no {count} spans {name!r}: "
            + ", ".join(s.name for s in exporter.get_finished_spans())
        ),
    )


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_submit_and_attempt_spans_follow_the_messaging_conventions(
    manager: Any, provider: Any
) -> None:
    tp, exporter = provider
    tracer = tp.get_tracer("app")

    @manager.task("resize")
    def resize(task: Any) -> str:
        with tracer.start_as_current_span("inside sync handler"):
            return "ok"

    @manager.task("notify")
    async def notify(task: Any) -> str:
        with tracer.start_as_current_span("inside async handler"):
            await asyncio.sleep(0)
        return "sent"

    with tracer.start_as_current_span("request") as request:
        first = manager.submit("resize", {"w": 10})
        second, third = manager.submit_many([("notify", 1), ("resize", 2)])
    for task_id in (first, second, third):
        info = manager.get_task(task_id)
        assert set(json.loads(info.trace_context)) == {"traceparent"}
    manager.start()
    for task_id in (first, second, third):
        wait_for_status(manager, task_id, "completed")

    publishes = {
        s.attributes["messaging.message.id"]: s for s in _named(exporter, "publish resize", 2)
    }
    publishes |= {
        s.attributes["messaging.message.id"]: s for s in _named(exporter, "publish notify")
    }
    processes = {
        s.attributes["messaging.message.id"]: s
        for s in _named(exporter, "process resize", 2) + _named(exporter, "process notify")
    }
    for task_id in (first, second, third):
        publish, process = publishes[str(task_id)], processes[str(task_id)]
        assert publish.kind is SpanKind.PRODUCER
        assert _parent_id(publish) == request.get_span_context().span_id
        assert publish.context.trace_id == request.get_span_context().trace_id
        assert publish.attributes["messaging.system"] == "tideflow"
        assert publish.attributes["messaging.operation.type"] == "publish"
        # the attempt is a child of the stored context and linked to it
        assert process.kind is SpanKind.CONSUMER
        assert _parent_id(process) == publish.context.span_id
        assert process.context.trace_id == publish.context.trace_id
        assert [link.context.span_id for link in process.links] == [publish.context.span_id]
        assert process.attributes["messaging.operation.type"] == "process"
        assert (
            process.attributes["messaging.destination.name"]
            == publish.attributes["messaging.destination.name"]
        )
        assert process.attributes["tideflow.task.attempt"] == 1
        assert process.attributes["tideflow.worker.id"] == manager.worker_id
        assert process.attributes["tideflow.outcome"] == "completed"
        assert process.status.status_code is StatusCode.UNSET
    # the handlers' own spans nest under their attempt: on a handler thread and on the loop
    (sync_inner,) = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "inside sync handler"
        and _parent_id(s) == processes[str(first)].context.span_id
    ]
    (async_inner,) = _named(exporter, "inside async handler")
    assert _parent_id(async_inner) == processes[str(second)].context.span_id
    assert sync_inner.context.trace_id == request.get_span_context().trace_id


def test_children_and_child_submits_sit_under_the_spawning_attempt(
    manager: Any, provider: Any
) -> None:
    _tp, exporter = provider
    submitted: list[int] = []

    @manager.task("parent")
    def parent(task: Any) -> Any:
        if task.stage == 0:
            submitted.append(manager.submit("child", "submitted"))
            return task.next([{"name": "child", "payload": i} for i in range(2)])
        return "done"

    @manager.task("child")
    def child(task: Any) -> Any:
        return task.payload

    root = manager.submit("parent")
    manager.start()
    wait_for_status(manager, root, "completed")
    wait_for_status(manager, submitted[0], "completed")

    first_round, second_round = sorted(
        _named(exporter, "process parent", 2), key=lambda s: s.start_time or 0
    )
    assert first_round.attributes["tideflow.outcome"] == "suspended"
    assert second_round.attributes["tideflow.outcome"] == "completed"
    # both rounds of the parent are children of its submit
    assert _parent_id(first_round) == _parent_id(second_round)
    children = _named(exporter, "process child", 3)
    spawned = [s for s in children if s.attributes["messaging.message.id"] != str(submitted[0])]
    assert len(spawned) == 2
    for span in spawned:
        assert _parent_id(span) == first_round.context.span_id
        assert span.context.trace_id == first_round.context.trace_id
        assert span.attributes["tideflow.task.parent_id"] == root
    # a submit inside the handler: its producer span is under the attempt
    (publish,) = [
        s
        for s in _named(exporter, "publish child")
        if s.attributes["messaging.message.id"] == str(submitted[0])
    ]
    assert _parent_id(publish) == first_round.context.span_id
    (submitted_run,) = [
        s for s in children if s.attributes["messaging.message.id"] == str(submitted[0])
    ]
    assert _parent_id(submitted_run) == publish.context.span_id


def test_a_failed_attempt_is_an_error_span_and_its_retry_another(
    manager: Any, provider: Any
) -> None:
    _tp, exporter = provider
    calls: list[int] = []

    @manager.task("flaky", max_retries=2, retry_interval=0)
    def flaky(task: Any) -> str:
        calls.append(task.attempt)
        if len(calls) == 1:
            raise RuntimeError("first try fails")
        return "ok"

    task_id = manager.submit("flaky")
    manager.start()
    wait_for_status(manager, task_id, "completed")
    failed, passed = sorted(_named(exporter, "process flaky", 2), key=lambda s: s.start_time or 0)
    assert failed.status.status_code is StatusCode.ERROR
    assert "RuntimeError: first try fails" in (failed.status.description or "")
    assert failed.attributes["tideflow.outcome"] == "failed"
    assert [e.name for e in failed.events] == ["exception"]
    assert (passed.attributes["tideflow.task.attempt"], passed.attributes["tideflow.outcome"]) == (
        2,
        "completed",
    )
    assert _parent_id(failed) == _parent_id(passed)  # both under the one submit


def test_each_cron_round_starts_a_trace_linked_to_the_schedule(manager: Any, provider: Any) -> None:
    _tp, exporter = provider
    manager.use("tick", lambda task: None)
    cron_id = manager.cron("tick", "* * * * * *")  # every second
    manager.start()
    (publish,) = _named(exporter, "publish tick")
    rounds = _named(exporter, "process tick", 2)[:2]
    assert rounds[0].context.trace_id != rounds[1].context.trace_id
    for span in rounds:
        assert span.parent is None
        assert [link.context.span_id for link in span.links] == [publish.context.span_id]
        assert span.attributes["messaging.message.id"] == str(cron_id)
        assert span.attributes["tideflow.task.type"] == "cron"


def test_uninstrument_stops_tracing(make: Callable[[], Any]) -> None:
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    tideflow.otel.instrument(tracer_provider=tp)
    assert tideflow.otel.instrumented()
    tideflow.otel.uninstrument()
    assert not tideflow.otel.instrumented()
    tm = make()
    tm.use("job", lambda task: 1)
    task_id = tm.submit("job")
    tm.start()
    assert wait_for_status(tm, task_id, "completed").trace_context is None
    assert exporter.get_finished_spans() == ()


def test_a_trace_context_nobody_can_read_runs_untraced(manager: Any, provider: Any) -> None:
    _tp, exporter = provider
    manager.use("job", lambda task: 1)
    task_id = manager.submit("job")
    with manager._store._write() as cur:
        cur.execute(
            manager._store._q("UPDATE tideflow_tasks SET trace_context = ? WHERE id = ?"),
            ("{not json", task_id),
        )
    manager.start()
    wait_for_status(manager, task_id, "completed")
    (span,) = _named(exporter, "process job")
    assert span.parent is None
    assert span.links == ()


def test_without_instrument_opentelemetry_is_never_imported(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from tideflow import TaskManager

        tm = TaskManager("sqlite:{tmp_path / "plain.db"}", poll_interval=0.02)
        tm.use("job", lambda task: 1)
        tm.use("parent", lambda task: task.next([{{"name": "job"}}]) if task.stage == 0 else 2)
        tm.start()
        ids = [tm.submit("job"), tm.submit("parent")]
        assert [tm.wait(i, timeout=30).status for i in ids] == ["completed"] * 2
        assert all(t.trace_context is None for t in tm.get_tasks())
        tm.close()
        loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry", "prometheus")))
        assert not loaded, loaded
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_instrument_uses_the_global_provider_by_default(
    make: Callable[[], Any],
) -> None:
    tideflow.otel.instrument()
    try:
        tm = make()
        tm.use("job", lambda task: 1)
        task_id = tm.submit("job")
        # the default global provider is a no-op: nothing is recorded, nothing breaks
        assert trace.get_tracer_provider() is not None
        tm.start()
        wait_for_status(tm, task_id, "completed")
    finally:
        tideflow.otel.uninstrument()
