"""Tracing a workflow with OpenTelemetry (pip install 'tideflow[otel]').

Run it: python examples/tracing.py. It prints the span tree of one checkout:

    checkout
      publish order
        process order              (stage 0: spawns two children)
          process pack
            print label            (the handler's own span)
          process pack
            print label
        process order              (stage 1: the children are done)
"""

from collections import defaultdict

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tideflow.otel
from tideflow import TaskManager

exporter = InMemorySpanExporter()  # in production: an OTLP exporter, a BatchSpanProcessor
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
tideflow.otel.instrument(tracer_provider=provider)  # before tm.start()
tracer = provider.get_tracer("shop")

tm = TaskManager("sqlite:tasks.db", poll_interval=0.05)


@tm.task("order")
def order(task):
    if task.stage == 0:
        return task.next([{"name": "pack", "payload": item} for item in task.payload["items"]])
    return {"packed": [child["result"] for child in task.result]}


@tm.task("pack")
def pack(task):
    with tracer.start_as_current_span("print label"):  # nests under this attempt's span
        return f"box-{task.payload}"


with tm:
    with tracer.start_as_current_span("checkout"):
        order_id = tm.submit("order", {"items": ["mug", "gift"]})
    print(tm.result(order_id, timeout=30))

spans = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time)
children = defaultdict(list)
for span in spans:
    children[span.parent.span_id if span.parent else None].append(span)


def show(span, depth=0):
    print("  " * depth + span.name)
    for child in children[span.context.span_id]:
        show(child, depth + 1)


for root in children[None]:
    show(root)
