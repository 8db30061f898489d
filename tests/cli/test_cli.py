"""The ``tideflow`` command line: demo, db migrate, tasks, stats and worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from support.wait import wait_for
from tideflow import TaskManager
from tideflow.cli.main import main

TERMINAL = {"completed", "permanently_failed"}


@pytest.fixture(autouse=True)
def _no_db_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDEFLOW_DB", raising=False)


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A SQLite file with four tasks (ids 1-4) nobody runs."""
    url = f"sqlite:{tmp_path / 'tasks.db'}"
    tm = TaskManager(url, allow_unregistered=True)
    tm.submit("email", {"to": "a@example.com"}, tag="mail")
    tm.submit("email", {"to": "b@example.com"}, tag="mail", priority=5)
    tm.submit("resize", {"path": "cat.png"}, delay=3600)
    tm.submit("report", None, tag="weekly")
    tm.close()
    return url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- demo --------------------------------------------------------------------------------------
def test_demo_runs_every_task_to_the_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:{tmp_path / 'demo.db'}"
    for _ in range(2):  # fresh by default: a second run starts from an empty database
        code, out, err = run(capsys, "demo", "--db", url, "--tasks", "30")
        assert code == 0, err
    assert "Done: 34 tasks in" in out  # 30 submitted + 4 workflow children
    assert "approved order task" in out
    assert "permanently_failed" in out
    assert "ValueError: customers.csv, row 42" in out
    assert f"tasks list --db {url}" in out
    assert "tasks show" in out

    tm = TaskManager(url, allow_unregistered=True)
    try:
        tasks = tm.query_tasks(limit=None).items
        assert len(tasks) == 34
        assert {t.status for t in tasks} <= TERMINAL
        statuses = Counter(t.status for t in tasks)
        assert statuses == {"completed": 33, "permanently_failed": 1}
        (order,) = [t for t in tasks if t.name == "ship_order"]
        assert (order.stage, order.result["approved"]) == (2, True)
        assert order.result["boxes"] == ["box-mug", "box-poster", "box-t-shirt", "box-stickers"]
        kinds = [e.event_type for e in tm.query_task_events(order.id).items]
        assert kinds.count("task_suspended") == 2
        assert kinds.count("task_resumed") == 2
        resumed = tm.query_task_events(order.id, event_type="task_resumed").items
        assert [e.metadata["resume_reason"] for e in resumed] == [
            "children_completed",
            "approved by the demo",
        ]
        (charge,) = [t for t in tasks if t.name == "charge_card"]
        assert charge.attempt == 2
        (failed,) = [t for t in tasks if t.status == "permanently_failed"]
        assert failed.name == "import_rows"
        assert failed.attempt == 2
    finally:
        tm.close()


def test_demo_keeps_earlier_runs_with_no_fresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:{tmp_path / 'demo.db'}"
    assert run(capsys, "demo", "--db", url, "--tasks", "10")[0] == 0
    code, out, _ = run(capsys, "demo", "--db", url, "--tasks", "10", "--no-fresh")
    assert code == 0
    assert "Done: 14 tasks in" in out
    tm = TaskManager(url, allow_unregistered=True)
    try:
        assert tm.query_tasks(limit=0).total == 28
    finally:
        tm.close()


def test_demo_refuses_to_delete_a_database_that_is_not_the_demos(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "demo", "--db", db, "--tasks", "10")
    assert code == 1
    assert "refusing to delete it" in err
    tm = TaskManager(db, allow_unregistered=True)
    try:
        assert tm.query_tasks(limit=0).total == 4
    finally:
        tm.close()


def test_demo_rejects_a_tiny_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "demo", "--db", f"sqlite:{tmp_path / 'd.db'}", "--tasks", "3")
    assert code == 2
    assert "--tasks must be at least" in err


# --- db and tasks ------------------------------------------------------------------------------
def test_db_migrate_creates_the_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "new.db"
    for _ in range(2):  # idempotent
        code, out, err = run(capsys, "db", "migrate", "--db", f"sqlite:{path}")
        assert code == 0, err
        assert "schema is up to date" in out
    assert path.exists()
    code, out, _ = run(capsys, "tasks", "list", "--db", f"sqlite:{path}")
    assert code == 0
    assert "no tasks match" in out


def test_db_comes_from_the_environment(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, "tasks", "list")
    assert code == 2
    assert "TIDEFLOW_DB" in err
    monkeypatch.setenv("TIDEFLOW_DB", db)
    code, out, _ = run(capsys, "tasks", "list")
    assert code == 0
    assert "4 of 4 task(s)" in out


def test_a_missing_database_file_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.db"
    code, _, err = run(capsys, "tasks", "list", "--db", f"sqlite:{missing}")
    assert code == 1
    assert "does not exist" in err
    assert not missing.exists()


def test_tasks_list_filters_and_pages(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "tasks", "list", "--db", db)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ID", "NAME", "STATUS"]
    assert [line.split()[0] for line in lines[1:5]] == ["4", "3", "2", "1"]  # newest first

    code, out, _ = run(capsys, "tasks", "list", "--db", db, "--tag", "mail", "--limit", "1")
    assert code == 0
    assert "1-1 of 2 task(s) (use --limit/--offset for more)" in out

    code, out, _ = run(capsys, "tasks", "list", "--db", db, "--name", "resize", "--json")
    assert code == 0
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["name"] == "resize"
    assert row["payload"] == {"path": "cat.png"}

    code, _, err = run(capsys, "tasks", "list", "--db", db, "--status", "bogus")
    assert code == 2
    assert "invalid choice" in err


def test_tasks_show_prints_fields_events_and_attempts(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "tasks", "show", "2", "--db", db)
    assert code == 0
    assert "name: email" in out
    assert "priority: 5" in out
    assert '"b@example.com"' in out
    assert "events (1):" in out
    assert "task_created" in out
    assert "attempts (0):" in out

    code, out, _ = run(capsys, "tasks", "show", "2", "--db", db, "--json")
    data = json.loads(out)
    assert data["task"]["id"] == 2
    assert [e["event_type"] for e in data["events"]] == ["task_created"]

    code, _, err = run(capsys, "tasks", "show", "99", "--db", db)
    assert code == 1
    assert "no task with id 99" in err


def test_tasks_cancel_pause_resume_retry(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "tasks", "cancel", "1", "--reason", "not needed", "--db", db)
    assert code == 0
    assert "task 1: cancel done, status is now permanently_failed" in out

    code, out, _ = run(capsys, "tasks", "pause", "2", "--db", db)
    assert code == 0
    assert "status is now paused" in out
    code, out, _ = run(capsys, "tasks", "resume", "2", "--db", db)
    assert code == 0
    assert "status is now pending" in out
    code, out, _ = run(capsys, "tasks", "retry", "1", "--db", db)
    assert code == 0
    assert "status is now pending" in out

    code, out, err = run(capsys, "tasks", "cancel", "3", "99", "--db", db)  # one good, one bad
    assert code == 1
    assert "task 3: cancel done" in out
    assert "task 99: no task with id 99" in err

    tm = TaskManager(db, allow_unregistered=True)
    try:
        info = tm.get_task(3)
        assert info is not None
        assert info.status == "permanently_failed"
        (event,) = tm.query_task_events(1, event_type="task_cancelled").items
        assert event.message == "not needed"
    finally:
        tm.close()


def test_tasks_delete_and_stats(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "stats", "--db", db)
    assert code == 0
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["NAME"] == ["PENDING", "TOTAL"]
    assert rows["email"] == ["2", "2"]
    assert rows["TOTAL"] == ["4", "4"]
    assert "workers: none registered" in out
    assert "2 x email" in out  # nobody can run them

    code, _, err = run(capsys, "tasks", "delete", "--db", db)
    assert code == 2
    assert "needs task ids or at least one of" in err
    code, out, _ = run(capsys, "tasks", "delete", "--tag", "mail", "--db", db)
    assert code == 0
    assert "deleted 2 task(s)" in out
    code, out, _ = run(capsys, "tasks", "delete", "3", "4", "--db", db)
    assert code == 0
    assert "deleted 2 task(s)" in out

    code, out, _ = run(capsys, "stats", "--db", db, "--json")
    assert json.loads(out)["counts"] == []


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys)
    assert code == 2
    assert "tideflow demo" in err
    assert main(["--help"]) == 0


# --- worker ------------------------------------------------------------------------------------
APP = """
import os
from tideflow import TaskManager

tm = TaskManager(os.environ["TIDEFLOW_DB"], poll_interval=0.02)


@tm.task("hello")
def hello(task):
    return {"hello": task.payload}


def make():
    return tm
"""


class WorkerProcess:
    """``python -m tideflow.cli worker ...`` in ``cwd``, its stderr in a file."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.log = cwd / f"worker-{len(list(cwd.glob('worker-*.log')))}.log"
        env = {k: v for k, v in os.environ.items() if k != "TIDEFLOW_DB"}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tideflow.cli", "worker", *args],
                cwd=cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"worker did not exit\n{self.output()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "myapp.py").write_text(textwrap.dedent(APP))
    return tmp_path


def test_worker_runs_tasks_and_stops_on_sigterm(app_dir: Path) -> None:
    url = f"sqlite:{app_dir / 'w.db'}"
    worker = WorkerProcess(app_dir, "myapp:tm", "--db", url, "--concurrency", "3")
    client = TaskManager(url, allow_unregistered=True)
    try:
        task_id = client.submit("hello", "world")

        def completed() -> bool:
            assert worker.proc.poll() is None, f"worker exited early\n{worker.output()}"
            info = client.get_task(task_id)
            return info is not None and info.status == "completed"

        wait_for(completed, timeout=30, interval=0.05, message=lambda: worker.output())
        info = client.get_task(task_id)
        assert info is not None
        assert info.result == {"hello": "world"}

        worker.proc.send_signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output()
        (row,) = client.get_workers()
        assert row.status == "stopped"
        assert row.concurrency == 3
        assert row.handlers == ("hello",)
        output = worker.output()
        assert f"worker {row.worker_id} started" in output
        assert f"db={url}" in output
        assert "handlers=[hello]" in output
    finally:
        worker.kill()
        client.close()


@pytest.mark.slow
def test_worker_processes_share_the_work_and_all_stop(app_dir: Path) -> None:
    url = f"sqlite:{app_dir / 'w.db'}"
    worker = WorkerProcess(
        app_dir,
        "myapp:make",
        "--db",
        url,
        "--processes",
        "2",
        "--pod-id",
        "node",
        "--capabilities",
        "gpu, big",
    )
    client = TaskManager(url, allow_unregistered=True)
    try:

        def two_active() -> bool:
            assert worker.proc.poll() is None, f"worker exited early\n{worker.output()}"
            return len(client.get_workers(status="active")) == 2

        wait_for(two_active, timeout=30, interval=0.05, message=lambda: worker.output())
        workers = client.get_workers()
        assert sorted(w.pod_id or "" for w in workers) == ["node-0", "node-1"]
        assert len({w.pid for w in workers}) == 2
        assert all(w.capabilities == ("big", "gpu") for w in workers), workers

        worker.proc.send_signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output()
        assert {w.status for w in client.get_workers()} == {"stopped"}
    finally:
        worker.kill()
        client.close()


def test_worker_warns_when_the_app_ignores_the_db(app_dir: Path) -> None:
    (app_dir / "fixed.py").write_text(
        "from tideflow import TaskManager\n"
        "tm = TaskManager('sqlite:fixed.db', poll_interval=0.02)\n"
        "tm.use('noop', lambda task: None)\n"
    )
    worker = WorkerProcess(app_dir, "fixed:tm", "--db", f"sqlite:{app_dir / 'other.db'}")
    try:
        wait_for(
            lambda: "started" in worker.output() or worker.proc.poll() is not None,
            timeout=30,
            interval=0.05,
        )
        worker.proc.send_signal(signal.SIGINT)
        assert worker.wait() == 0, worker.output()
        assert "uses database sqlite:fixed.db" in worker.output()
    finally:
        worker.kill()


def test_worker_never_prints_the_password_of_a_malformed_db(app_dir: Path) -> None:
    # the app opens its own database, so the worker only names --db in its warning; the CLI's
    # own redaction used to give up on this URL (an unclosed "[") and print it whole
    (app_dir / "fixed.py").write_text(
        "from tideflow import TaskManager\n"
        "tm = TaskManager('sqlite:fixed.db', poll_interval=0.02)\n"
        "tm.use('noop', lambda task: None)\n"
    )
    worker = WorkerProcess(app_dir, "fixed:tm", "--db", "mysql://u:secret@[::1/db")
    try:
        wait_for(
            lambda: "started" in worker.output() or worker.proc.poll() is not None,
            timeout=30,
            interval=0.05,
        )
        worker.proc.send_signal(signal.SIGINT)
        assert worker.wait() == 0, worker.output()
        assert "not mysql://u:***@[::1/db given by --db" in worker.output()
        assert "secret" not in worker.output()
    finally:
        worker.kill()


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("myapp", "APP must look like 'module:attribute'"),
        ("nosuchmodule:tm", "cannot import module 'nosuchmodule'"),
        ("myapp:nothing", "module 'myapp' has no attribute 'nothing'"),
        ("myapp:hello", "is a callable that needs arguments"),
        ("myapp:os", "is a module, not a TaskManager"),
    ],
)
def test_worker_with_a_bad_app_exits_2(app_dir: Path, app: str, message: str) -> None:
    worker = WorkerProcess(app_dir, app, "--db", f"sqlite:{app_dir / 'w.db'}")
    try:
        assert worker.wait() == 2
        output = worker.output()
        assert message in output
        assert len(output.strip().splitlines()) == 1, output
    finally:
        worker.kill()


def test_retention_deletes_what_has_expired(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "retention", "--db", db)
    assert code == 0
    assert "deleted 0 task(s), 0 event(s) and 0 attempt(s)" in out  # pending is not retained

    code, _, err = run(capsys, "retention", "--db", db, "--statuses", "running")
    assert code == 1
    assert "InvalidOptionError" in err

    argv = ("retention", "--db", db, "--statuses", "pending", "--expire-time", "0", "--json")
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert json.loads(out) == {"tasks_deleted": 4, "events_deleted": 4, "attempts_deleted": 0}
