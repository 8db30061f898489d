"""``manage.py shop_demo``: enqueue a few Django tasks, run a tideflow worker in this process,
print each task's result as Django's task API reports it."""

import time
from datetime import timedelta

from django.core.management.base import BaseCommand
from django.utils import timezone

from shop import tasks
from tideflow.contrib.django import DjangoWorker, get_backend


class Command(BaseCommand):
    help = "Enqueue example tasks, run them with tideflow in this process, print the results."

    def handle(self, *args, **options):
        backend = get_backend()
        self.stdout.write(f"tideflow database: {backend.manager.db_url}")
        results = {
            "add(2, 3)": tasks.add.enqueue(2, 3),
            "send_receipt('ana@example.com') on queue emails": tasks.send_receipt.enqueue(
                "ana@example.com", order=42
            ),
            "whoami('demo') with context": tasks.whoami.enqueue("demo"),
            "double_later(21), async": tasks.double_later.enqueue(21),
            "add(1, 1) with run_after=+1s, priority -50": tasks.add.using(
                priority=-50, run_after=timezone.now() + timedelta(seconds=1)
            ).enqueue(1, 1),
            "fail('out of stock')": tasks.fail.enqueue("out of stock"),
        }
        with DjangoWorker(scan_interval=0.5) as worker:
            self.stdout.write(f"worker {worker.manager.worker_id} serves {worker.queues}")
            deadline = time.monotonic() + 60
            for label, result in results.items():
                while not result.is_finished and time.monotonic() < deadline:
                    time.sleep(0.05)
                    result.refresh()
                if result.status == "SUCCESSFUL":
                    outcome = repr(result.return_value)
                elif result.errors:
                    error = result.errors[-1]
                    last = error.traceback.strip().splitlines()[-1]
                    outcome = f"{error.exception_class_path} ({last})"
                else:
                    outcome = "not finished"
                self.stdout.write(f"task {result.id}: {label} -> {result.status}: {outcome}")
