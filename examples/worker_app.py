"""A worker application: run it with ``tideflow worker examples.worker_app:tm``.

The handlers live in an importable module; the worker command imports ``tm``, runs until
SIGTERM or Ctrl-C, then stops gracefully. Run this file directly to try it in one process.
"""

import os

from tideflow import TaskManager

# the worker command sets TIDEFLOW_DB from --db before importing this module
tm = TaskManager(os.environ.get("TIDEFLOW_DB", "sqlite:tasks.db"))


@tm.task("send_email", max_retries=5, retry_interval=10, retry_backoff="exponential")
def send_email(task):
    return {"sent_to": task.payload["to"]}


@tm.task("nightly_report", timeout=600)
def nightly_report(task):
    task.progress("collecting", progress_percent=10)
    return {"rows": 42}


if __name__ == "__main__":
    from tideflow.testing import run_until_idle

    tm.submit("send_email", {"to": "ops@example.com"})
    tm.submit("nightly_report")
    print(run_until_idle(tm, timeout=10).counts)  # {'completed': 2}
    tm.close()
