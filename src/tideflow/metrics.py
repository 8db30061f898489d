"""Prometheus metrics of this process's worker (``pip install 'tideflow[metrics]'``).

``tideflow worker APP --metrics-port 9100`` serves them; from Python::

    import tideflow.metrics

    registry = tideflow.metrics.instrument()      # before tm.start()
    tideflow.metrics.serve(9100, registry=registry)

Metrics (all prefixed ``tideflow_worker_``):

- ``attempts_total{name, outcome}``: attempts ended, by task name and outcome (``completed``,
  ``failed``, ``timeout``, ``suspended``, ``interrupted``);
- ``attempt_duration_seconds{name}``: from the handler's start to its outcome (histogram);
- ``claim_lag_seconds{name}``: an attempt's start time minus the time it was due (histogram);
- ``attempts_in_flight{name}``: attempts running now (gauge);
- ``claim_batch_size``: rows each claim brought back, empty claims included (histogram);
- ``store_errors_total{operation}``: store calls of the worker that raised, by operation.

These are the worker's own view; the queue's (counts by status, waiting tasks) are the
dashboard's ``/metrics``, which reads the database.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"tideflow.metrics needs prometheus_client: pip install 'tideflow[metrics]' ({exc})"
    ) from exc

from tideflow.core.types import TaskRow
from tideflow.worker import observe

__all__ = ["instrument", "serve", "uninstrument"]

PREFIX = "tideflow_worker"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
BATCH_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500)


class _Named:
    """The children of one task name (``labels()`` takes a lock and builds a key: look them
    up once per name, not per attempt)."""

    __slots__ = ("attempts", "duration", "in_flight", "lag", "name")

    def __init__(self, metrics: _Metrics, name: str) -> None:
        self.name = name
        self.lag = metrics.lag.labels(name)
        self.in_flight = metrics.in_flight.labels(name)
        self.duration = metrics.duration.labels(name)
        self.attempts: dict[str, Any] = {}


class _Attempt:
    __slots__ = ("_metrics", "_named")

    def __init__(self, metrics: _Metrics, named: _Named) -> None:
        self._metrics = metrics
        self._named = named

    def enter(self) -> None:
        pass

    def end(self, outcome: str, error: BaseException | None, duration: float) -> None:
        named = self._named
        named.in_flight.dec()
        counter = named.attempts.get(outcome)
        if counter is None:
            counter = named.attempts[outcome] = self._metrics.attempts.labels(named.name, outcome)
        counter.inc()
        named.duration.observe(duration)


class _Metrics:
    """The :class:`tideflow.worker.observe.Hooks` of the worker metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._named: dict[str, _Named] = {}
        self.attempts = Counter(
            f"{PREFIX}_attempts",
            "Attempts ended, by task name and outcome",
            ["name", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            f"{PREFIX}_attempt_duration_seconds",
            "Attempt duration from the handler's start to its outcome",
            ["name"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.lag = Histogram(
            f"{PREFIX}_claim_lag_seconds",
            "An attempt's start time minus the time its task was due",
            ["name"],
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_attempts_in_flight",
            "Attempts running in this worker",
            ["name"],
            registry=registry,
        )
        self.batch = Histogram(
            f"{PREFIX}_claim_batch_size",
            "Rows each claim of this worker brought back",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.store_errors = Counter(
            f"{PREFIX}_store_errors",
            "Store calls of this worker that raised, by operation",
            ["operation"],
            registry=registry,
        )

    def publish(self, names: Sequence[str]) -> None:
        return None

    def inject(self) -> Mapping[str, str] | None:
        return None

    def attempt(self, row: TaskRow, worker_id: str) -> _Attempt:
        named = self._named.get(row.name)
        if named is None:
            named = self._named.setdefault(row.name, _Named(self, row.name))
        if row.start_time is not None and row.next_run_time is not None:
            named.lag.observe(max(0.0, row.start_time - row.next_run_time))
        named.in_flight.inc()
        return _Attempt(self, named)

    def claimed(self, count: int) -> None:
        self.batch.observe(count)

    def store_error(self, operation: str, error: BaseException) -> None:
        self.store_errors.labels(operation).inc()


_lock = threading.Lock()
_installed: _Metrics | None = None


def instrument(registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """Count this process's worker in ``registry`` (default: a new one); returns it. Call it
    before ``tm.start()``; calling it again replaces the previous instrumentation."""
    global _installed
    with _lock:
        if _installed is not None:
            observe.uninstall(_installed)
        _installed = _Metrics(registry if registry is not None else CollectorRegistry())
        observe.install(_installed)
        return _installed.registry


def uninstrument() -> None:
    """Stop counting."""
    global _installed
    with _lock:
        if _installed is not None:
            observe.uninstall(_installed)
            _installed = None


def serve(port: int, host: str = "127.0.0.1", *, registry: CollectorRegistry) -> Any:
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread; returns the
    server (``server.server_port`` is the port, useful with ``port=0``; ``shutdown()`` stops
    it)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
