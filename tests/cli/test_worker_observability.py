"""``tideflow worker --metrics-port N --log-format json``: a real worker process serves its
Prometheus metrics over HTTP and prints one JSON object per log line."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from support.wait import wait_for
from tideflow import TaskManager
from tideflow.cli.main import main

pytest.importorskip("prometheus_client", reason="needs pip install 'tideflow[metrics]'")

from prometheus_client.parser import text_string_to_metric_families

APP = """
import logging
import os

from tideflow import TaskManager

tm = TaskManager(os.environ["TIDEFLOW_DB"], poll_interval=0.02)
log = logging.getLogger("myapp")


@tm.task("hello")
def hello(task):
    log.info("saying hello to %s", task.payload)
    return {"hello": task.payload}


@tm.task("boom", max_retries=1)
async def boom(task):
    raise RuntimeError("boom")
"""


@pytest.fixture(autouse=True)
def _no_db_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDEFLOW_DB", raising=False)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "obsapp.py").write_text(textwrap.dedent(APP))
    return tmp_path


def _start(cwd: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = cwd / "worker.log"
    env = {k: v for k, v in os.environ.items() if k != "TIDEFLOW_DB"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tideflow.cli", "worker", *args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, log


def _records(log: Path) -> list[dict[str, Any]]:
    """Every line of the worker's output, each one JSON object (a line that is not fails)."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_worker_serves_metrics_and_logs_json_lines(app_dir: Path) -> None:
    url = f"sqlite:{app_dir / 'w.db'}"
    client = TaskManager(url, allow_unregistered=True)
    client.setup()
    hello = [client.submit("hello", n) for n in range(3)]
    boom = client.submit("boom", max_retries=1)  # the submitter's options, not the worker's
    unreadable = client.submit("hello", "x", max_retries=1)
    with sqlite3.connect(app_dir / "w.db") as conn:  # a payload no handler can be given
        conn.execute("UPDATE tideflow_tasks SET payload = '{bad' WHERE id = ?", (unreadable,))
    proc, log = _start(
        app_dir, "obsapp:tm", "--db", url, "--metrics-port", "0", "--log-format", "json"
    )
    try:

        def endpoint() -> str | None:
            assert proc.poll() is None, f"worker exited early\n{log.read_text()}"
            for record in _records(log):
                if record["message"].startswith("metrics at "):
                    return str(record["message"].removeprefix("metrics at "))
            return None

        metrics_url = wait_for(endpoint, timeout=30, message=lambda: log.read_text())
        assert metrics_url.startswith("http://127.0.0.1:")

        def finished() -> bool:
            statuses = {client.get_task(i).status for i in [*hello, boom, unreadable]}
            return statuses <= {"completed", "permanently_failed"}

        wait_for(finished, timeout=30, message=lambda: log.read_text())
        # an attempt is counted when its outcome is decided, before the outcome is written
        samples = _samples(metrics_url)
        boom_failed = (("name", "boom"), ("outcome", "failed"))
        assert samples[("tideflow_worker_attempts_total", boom_failed)] == 1
        hello_done = (("name", "hello"), ("outcome", "completed"))
        assert samples[("tideflow_worker_attempts_total", hello_done)] == 3
        assert (
            samples[("tideflow_worker_attempt_duration_seconds_count", (("name", "hello"),))] == 3
        )
        assert samples[("tideflow_worker_claim_lag_seconds_count", (("name", "hello"),))] == 3
        assert samples[("tideflow_worker_attempts_in_flight", (("name", "hello"),))] == 0
        assert samples[("tideflow_worker_claim_batch_size_count", ())] >= 1
        # 3 hello, 1 boom and the unreadable one (which fails before it starts)
        assert samples[("tideflow_worker_claim_batch_size_sum", ())] == 5
        assert not any(name == "tideflow_worker_store_errors_total" for name, _ in samples)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.close()

    records = _records(log)
    for record in records:
        assert {"timestamp", "level", "logger", "message"} <= record.keys(), record
    worker_id = next(r["worker_id"] for r in records if "worker_id" in r)
    # a handler's own record carries its task's fields
    said = [r for r in records if r["logger"] == "myapp"]
    assert sorted(r["message"] for r in said) == [f"saying hello to {n}" for n in range(3)]
    for r in said:
        assert r["task_id"] in hello
        assert (r["task_name"], r["attempt"], r["worker_id"]) == ("hello", 1, worker_id)
    # and so does the worker's own record about a task, with its traceback as text
    (cannot,) = [r for r in records if "cannot be started" in r["message"]]
    assert (cannot["level"], cannot["task_id"], cannot["task_name"]) == (
        "ERROR",
        unreadable,
        "hello",
    )
    assert cannot["worker_id"] == worker_id


def test_worker_metrics_without_prometheus_client_says_which_extra(
    app_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(app_dir)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    monkeypatch.delitem(sys.modules, "tideflow.metrics", raising=False)
    monkeypatch.delitem(sys.modules, "obsapp", raising=False)
    url = f"sqlite:{app_dir / 'w.db'}"
    code = main(["worker", "obsapp:tm", "--db", url, "--metrics-port", "0"])
    err = capsys.readouterr().err
    assert code == 1
    assert "pip install 'tideflow[metrics]'" in err


def test_worker_rejects_a_port_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "obsapp:tm", "--metrics-port", "70000"]) == 2
    assert "0-65535" in capsys.readouterr().err


def test_extra_processes_get_the_next_ports_and_the_same_log_format() -> None:
    from tideflow.cli.main import build_parser
    from tideflow.cli.worker import _child_command, _reload_child_command

    args = build_parser().parse_args(
        ["worker", "obsapp:tm", "--processes", "3", "--metrics-port", "9100", "--log-format",
         "json", "--metrics-host", "0.0.0.0"]
    )  # fmt: skip
    command = _child_command(args, 2)
    assert command[command.index("--metrics-port") + 1] == "9102"
    assert command[command.index("--metrics-host") + 1] == "0.0.0.0"
    assert command[command.index("--log-format") + 1] == "json"
    reload = _reload_child_command(args)
    assert reload[reload.index("--metrics-port") + 1] == "9100"
