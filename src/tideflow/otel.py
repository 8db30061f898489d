"""OpenTelemetry tracing for tideflow (``pip install 'tideflow[otel]'``).

One call turns it on for the process: submits and the manager's worker::

    from opentelemetry.sdk.trace import TracerProvider
    import tideflow.otel

    tideflow.otel.instrument(tracer_provider=TracerProvider())

Spans follow the OpenTelemetry messaging conventions (``messaging.system = "tideflow"``,
``messaging.destination.name`` = the task name, ``messaging.message.id`` = the task id):

- ``publish <name>`` (PRODUCER) around each task's insert by ``submit``, ``submit_many`` and
  ``cron``; its W3C context (``traceparent``, ``tracestate``) is stored with the task;
- ``process <name>`` (CONSUMER) per attempt, a child of the stored context and linked to it,
  current while the handler runs (async handlers and sync ones on handler threads), so spans
  the handler makes nest under it; children spawned by ``task.next(...)`` store the attempt's
  context, so their spans sit under the attempt that spawned them;
- a cron task's rounds each start a trace of their own, linked to the schedule's stored context.

Install it before ``tm.start()``. Without a call to :func:`instrument`, tideflow never imports
OpenTelemetry and its hot path pays one truth test per attempt.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, TracerProvider
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"tideflow.otel needs OpenTelemetry: pip install 'tideflow[otel]' ({exc})"
    ) from exc

from tideflow.core.types import TaskRow
from tideflow.worker import observe

__all__ = ["instrument", "instrumented", "uninstrument"]

log = logging.getLogger("tideflow.otel")

SYSTEM = "tideflow"
_PROPAGATOR = TraceContextTextMapPropagator()
_FAILED = frozenset({"failed", "timeout"})


def _carrier(ctx: otel_context.Context | None) -> dict[str, str]:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=ctx)
    return carrier


class _Published:
    """The producer spans of one insert, one per task."""

    __slots__ = ("headers", "spans")

    def __init__(self, spans: list[Span]) -> None:
        self.spans = spans
        self.headers = [_carrier(trace.set_span_in_context(s)) for s in spans]

    def done(self, ids: Sequence[int]) -> None:
        for span, task_id in zip(self.spans, ids, strict=False):
            span.set_attribute("messaging.message.id", str(task_id))
            span.end()

    def failed(self, error: BaseException) -> None:
        for span in self.spans:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            span.end()


class _Processing:
    """The consumer span of one attempt."""

    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def enter(self) -> None:
        # inside the attempt's own contextvars.Context, which is dropped afterwards
        otel_context.attach(trace.set_span_in_context(self.span))

    def end(self, outcome: str, error: BaseException | None, duration: float) -> None:
        span = self.span
        span.set_attribute("tideflow.outcome", outcome)
        if error is not None:
            span.record_exception(error)
        if outcome in _FAILED:
            text = f"{type(error).__name__}: {error}" if error is not None else outcome
            span.set_status(Status(StatusCode.ERROR, text))
        span.end()


class _Tracing:
    """The :class:`tideflow.worker.observe.Hooks` of tracing."""

    def __init__(self, tracer_provider: TracerProvider | None) -> None:
        from tideflow import __version__

        self.tracer = trace.get_tracer("tideflow", __version__, tracer_provider=tracer_provider)

    def publish(self, names: Sequence[str]) -> _Published:
        start = self.tracer.start_span
        spans = [
            start(
                f"publish {name}",
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": SYSTEM,
                    "messaging.operation.type": "publish",
                    "messaging.operation.name": "publish",
                    "messaging.destination.name": name,
                },
            )
            for name in names
        ]
        return _Published(spans)

    def inject(self) -> Mapping[str, str] | None:
        return _carrier(None) or None

    def attempt(self, row: TaskRow, worker_id: str) -> _Processing:
        stored = _stored(row)
        links = []
        parent = otel_context.Context()  # never the worker loop's own context
        if stored is not None:
            linked = trace.get_current_span(stored).get_span_context()
            if linked.is_valid:
                links.append(Link(linked))
                if row.type != "cron":  # a schedule's rounds start traces of their own
                    parent = stored
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": row.name,
            "messaging.message.id": str(row.id),
            "tideflow.task.attempt": row.attempt,
            "tideflow.task.stage": row.stage,
            "tideflow.task.type": row.type,
            "tideflow.worker.id": worker_id,
        }
        if row.parent_id is not None:
            attributes["tideflow.task.parent_id"] = row.parent_id
        span = self.tracer.start_span(
            f"process {row.name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes=attributes,
        )
        return _Processing(span)

    def claimed(self, count: int) -> None:
        pass

    def store_error(self, operation: str, error: BaseException) -> None:
        pass


def _stored(row: TaskRow) -> otel_context.Context | None:
    if not row.trace_context:
        return None
    try:
        headers = json.loads(row.trace_context)
    except ValueError:
        return None
    if not isinstance(headers, dict):
        return None
    return _PROPAGATOR.extract({str(k): str(v) for k, v in headers.items()})


_installed: _Tracing | None = None


def instrument(tracer_provider: TracerProvider | None = None) -> None:
    """Trace this process's submits and attempts with ``tracer_provider`` (default: the
    global one). Call it before ``tm.start()``; calling it again replaces the provider."""
    global _installed
    uninstrument()
    _installed = _Tracing(tracer_provider)
    observe.install(_installed)


def uninstrument() -> None:
    """Stop tracing (attempts already running finish their spans)."""
    global _installed
    if _installed is not None:
        observe.uninstall(_installed)
        _installed = None


def instrumented() -> bool:
    """Whether :func:`instrument` is in effect."""
    return _installed is not None
