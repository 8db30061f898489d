"""A tideflow worker process for the benchmarks.

``python bench/tideflow_worker.py URL [--concurrency 200] [--poll 0.05] [--sync] [--defaults]``

It registers async handlers ``noop`` (returns None), ``lat`` (reports its start time to the
orchestrator over UDP) and ``parent`` (spawns ``payload`` no-op children, then completes with
their count), starts the worker, prints ``READY`` and runs until stdin closes or SIGTERM.
``--sync`` registers ``noop`` as a plain ``def``; ``--defaults`` passes neither the concurrency
nor the poll interval, so the worker runs with the settings a newcomer gets.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from common import report_start

from tideflow import TaskManager


async def noop(task: Any) -> None:
    return None


async def lat(task: Any) -> None:
    report_start(task.payload)


async def parent(task: Any) -> Any:
    if task.stage == 0:
        return task.next([{"name": "noop"}] * int(task.payload))
    return len(task.result)


def sync_noop(task: Any) -> None:
    return None


def instrument(kinds: str) -> None:
    """Turn on the instrumentation named in ``kinds`` (before the worker starts)."""
    for kind in filter(None, kinds.split(",")):
        if kind == "metrics":
            import tideflow.metrics

            tideflow.metrics.instrument()
        elif kind == "logs":
            import tideflow.logs

            tideflow.logs.instrument()
        elif kind == "otel":
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import (
                BatchSpanProcessor,
                SpanExporter,
                SpanExportResult,
            )

            import tideflow.otel

            class Drop(SpanExporter):
                def export(self, spans: Any) -> SpanExportResult:
                    return SpanExportResult.SUCCESS

            provider = TracerProvider()
            provider.add_span_processor(BatchSpanProcessor(Drop()))
            tideflow.otel.instrument(tracer_provider=provider)
        else:
            raise SystemExit(f"unknown instrumentation {kind!r}")


def build_manager(
    url: str, concurrency: int | None, poll: float | None, sync: bool = False
) -> TaskManager:
    options: dict[str, Any] = {}
    if concurrency is not None:
        options["max_concurrent_tasks"] = concurrency
    if poll is not None:
        options["poll_interval"] = poll
    tm = TaskManager(url, **options)
    tm.use("noop", sync_noop if sync else noop)
    tm.use("lat", lat)
    tm.use("parent", parent)
    return tm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--poll", type=float, default=0.05)
    parser.add_argument("--sync", action="store_true", help="a plain def no-op handler")
    parser.add_argument("--defaults", action="store_true", help="default concurrency and poll")
    parser.add_argument(
        "--instrument",
        default="",
        help="comma-separated: metrics, otel (spans to a batch processor that drops them), logs",
    )
    args = parser.parse_args()
    instrument(args.instrument)
    if args.defaults:
        args.concurrency = args.poll = None
    tm = build_manager(args.url, args.concurrency, args.poll, args.sync)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    tm.start()
    print("READY", flush=True)

    def watch_stdin() -> None:
        sys.stdin.read()
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    done.wait()
    tm.stop(5)
    tm.close()


if __name__ == "__main__":
    main()
