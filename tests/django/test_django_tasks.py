"""Django's task framework on tideflow, through Django's public API (``@task``, ``.enqueue()``,
``get_result()``, ``result.refresh()``), in the small project of tests/django (app ``shop``),
on SQLite and PostgreSQL, with a worker in this process or ``manage.py tideflow_worker``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "django", reason="Django is not installed: pip install -e '.[django]' to run these tests"
)
try:
    from tideflow.contrib.django import compat
except ImportError as exc:  # Django 5.2 without the django-tasks backport
    pytest.skip(str(exc), allow_module_level=True)

import djsupport

djsupport.setup_django()

from shop import tasks  # noqa: E402
from shop.errors import ShopError  # noqa: E402

from tideflow.contrib.django import (  # noqa: E402
    NAME_PREFIX,
    DjangoWorker,
    TideflowBackend,
    database_url,
    django_priority,
    get_backend,
    tideflow_priority,
)
from tideflow.contrib.django.backend import task_error  # noqa: E402
from tideflow.errors import InvalidOptionError, PayloadError  # noqa: E402

Status = compat.TaskResultStatus


@pytest.fixture(params=["sqlite", "postgres"])
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The project on a clean database: a SQLite file, or the session's PostgreSQL schema."""
    if request.param == "postgres":
        database = djsupport.django_database(request.getfixturevalue("postgres_url"))
    else:
        database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "db.sqlite3")}
    with djsupport.project_settings(database, djsupport.tasks_setting()):
        yield database


@pytest.fixture
def start_worker(project: dict[str, Any]) -> Iterator[Callable[..., DjangoWorker]]:
    """``start_worker(**options)``: a DjangoWorker started in this process, stopped at the end."""
    started: list[DjangoWorker] = []

    def start(**options: Any) -> DjangoWorker:
        options.setdefault("scan_interval", 0.1)
        worker = DjangoWorker(**options)
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in reversed(started):
        worker.stop(5)


def tideflow_row(result: Any) -> Any:
    info = get_backend().manager.get_task(int(result.id))
    assert info is not None
    return info


# --- running tasks -----------------------------------------------------------------------------
def test_enqueue_runs_and_get_result_reports_success(start_worker: Any) -> None:
    result = tasks.add.enqueue(2, 3)
    assert result.status == Status.READY
    assert (result.args, result.kwargs, result.backend) == ([2, 3], {}, "default")
    row = tideflow_row(result)
    assert row.name == NAME_PREFIX + "shop.tasks.add"
    assert row.payload["args"] == [2, 3]

    worker = start_worker()
    djsupport.wait_finished(result)
    assert result.status == Status.SUCCESSFUL
    assert result.return_value == 5
    assert result.errors == []
    assert result.worker_ids == [worker.manager.worker_id]
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.last_attempted_at == result.started_at

    again = tasks.add.get_result(result.id)  # Django's own lookup through the task
    assert (again.status, again.return_value, again.task.func) == (
        Status.SUCCESSFUL,
        5,
        tasks.add.func,
    )


def test_a_raised_exception_is_a_task_error_with_its_class_path_and_traceback(
    start_worker: Any,
) -> None:
    result = tasks.fail.enqueue("out of stock")
    start_worker()
    djsupport.wait_finished(result)
    assert result.status == Status.FAILED
    (error,) = result.errors
    assert error.exception_class_path == "shop.errors.ShopError"
    assert error.exception_class is ShopError
    assert error.traceback.startswith("Traceback (most recent call last):")
    assert "raise ShopError(message)" in error.traceback
    assert error.traceback.rstrip().endswith("shop.errors.ShopError: out of stock")
    with pytest.raises(ValueError, match="failed"):
        _ = result.return_value
    assert tideflow_row(result).status == "permanently_failed"  # no retries by default


def test_retries_from_task_options_keep_each_attempts_error(project: dict[str, Any]) -> None:
    tasks_setting = djsupport.tasks_setting(
        TASK_OPTIONS={"max_retries": 3, "retry_interval": 0.05, "retry_backoff": "fixed"}
    )
    with djsupport.project_settings(project, tasks_setting):
        result = tasks.flaky.enqueue(3)
        worker = DjangoWorker(scan_interval=0.1)
        worker.start()
        try:
            djsupport.wait_finished(result)
        finally:
            worker.stop(5)
    assert result.status == Status.SUCCESSFUL
    assert result.return_value == 3
    assert result.attempts == 3
    assert [e.exception_class_path for e in result.errors] == ["shop.errors.ShopError"] * 2
    assert [e.traceback.splitlines()[-1] for e in result.errors] == [
        "shop.errors.ShopError: attempt 1 failed",
        "shop.errors.ShopError: attempt 2 failed",
    ]


def test_context_and_async_tasks(start_worker: Any) -> None:
    with_context = tasks.whoami.enqueue("ctx")
    doubled = tasks.double_later.enqueue(21)
    start_worker()
    djsupport.wait_finished(with_context)
    djsupport.wait_finished(doubled)
    assert with_context.return_value == {
        "label": "ctx",
        "attempt": 1,
        "id": with_context.id,
        "status": "RUNNING",
    }
    assert doubled.return_value == [21, 42]


def test_async_enqueue_and_get_result(start_worker: Any) -> None:
    async def scenario() -> Any:
        result = await tasks.add.aenqueue(20, 22)
        while not result.is_finished:
            await asyncio.sleep(0.02)
            await result.arefresh()
        return await tasks.add.aget_result(result.id)

    start_worker()
    fetched = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert (fetched.status, fetched.return_value) == (Status.SUCCESSFUL, 42)


# --- mapping of Django's options -----------------------------------------------------------------
def test_priority_run_after_and_queue_are_stored_as_tideflow_options(project: Any) -> None:
    run_after = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    result = tasks.send_receipt.using(priority=-37, run_after=run_after).enqueue("a@example.com")
    row = tideflow_row(result)
    assert row.priority == tideflow_priority(-37) == -7
    assert row.next_run_time == run_after
    assert row.requires == ("queue:emails",)
    assert row.tag == "emails"
    fetched = get_backend().get_result(result.id)
    assert (fetched.task.priority, fetched.task.queue_name, fetched.status) == (
        -37,
        "emails",
        Status.READY,
    )
    assert fetched.kwargs == {}
    assert fetched.args == ["a@example.com"]


def test_priority_mapping_keeps_order_and_bounds() -> None:
    mapped = [tideflow_priority(p) for p in range(-100, 101)]
    assert mapped == sorted(mapped)
    assert (mapped[0], tideflow_priority(0), mapped[-1]) == (-20, 0, 20)
    assert [django_priority(p) for p in (-20, 0, 7, 20)] == [-100, 0, 35, 100]


def test_a_worker_runs_only_the_queues_it_serves(start_worker: Any) -> None:
    receipt = tasks.send_receipt.enqueue("b@example.com", order=7)
    total = tasks.add.enqueue(1, 2)
    start_worker(queues=["default"])
    djsupport.wait_finished(total)
    receipt.refresh()
    assert receipt.status == Status.READY  # nobody serves "emails" yet
    start_worker(queues=["emails"])
    djsupport.wait_finished(receipt)
    assert receipt.return_value == {"sent_to": "b@example.com", "order": 7}


def test_a_task_whose_module_cannot_be_imported_fails_permanently(start_worker: Any) -> None:
    backend = get_backend()
    payload = {"args": [], "kwargs": {}, "priority": 0, "queue_name": "default"}
    task_id = backend.manager.submit(
        NAME_PREFIX + "shop.gone.vanished",
        payload,
        requires=["queue:default"],
        max_retries=5,  # fails at once all the same
    )
    start_worker()
    manager = backend.manager
    info = djsupport.wait_tideflow(manager, task_id)
    assert info.status == "permanently_failed"
    assert info.error.startswith("PermanentError: ")
    assert "cannot import Django task 'shop.gone.vanished'" in info.error
    assert "No module named 'shop.gone'" in info.error
    assert len(manager.query_task_attempts(task_id).items) == 1


def test_a_task_cancelled_in_tideflow_reads_as_failed(project: Any) -> None:
    result = tasks.add.enqueue(1, 2)
    get_backend().manager.cancel_task(int(result.id), reason="operator stop")
    result.refresh()
    assert result.status == Status.FAILED
    (error,) = result.errors
    assert (error.exception_class_path, error.traceback) == (
        "tideflow.errors.TideflowError",
        "operator stop",
    )


def test_task_error_finds_the_class_path_of_stored_errors() -> None:
    builtin = "ValueError: bad\nTraceback (most recent call last):\n  ...\nValueError: bad"
    assert task_error(builtin).exception_class_path == "builtins.ValueError"
    timeout = "TaskTimeoutError: task 3 (x) ran past its timeout of 1 s"
    assert task_error(timeout).exception_class_path == "tideflow.errors.TaskTimeoutError"
    nested = "Inner: a\nb\nTraceback (most recent call last):\n  ...\npkg.mod.Outer.Inner: a\nb"
    error = task_error(nested)
    assert error.exception_class_path == "pkg.mod.Outer.Inner"
    assert error.traceback.startswith("b\nTraceback")


# --- bad input ---------------------------------------------------------------------------------
def test_bad_enqueues_raise_and_write_nothing(project: Any) -> None:
    manager = get_backend().manager
    before = manager.query_tasks(limit=0).total
    with pytest.raises(PayloadError, match=r"shop\.tasks\.add"):
        tasks.add.enqueue(object(), 1)
    with pytest.raises(compat.InvalidTask, match="Queue 'nowhere'"):
        tasks.add.using(queue_name="nowhere").enqueue(1, 2)
    with pytest.raises(compat.InvalidTask, match="priority"):
        tasks.add.using(priority=101).enqueue(1, 2)
    with pytest.raises(compat.InvalidTask, match="aware"):
        tasks.add.using(run_after=datetime(2030, 1, 1)).enqueue(1, 2)
    with pytest.raises(InvalidOptionError, match="run_at"):
        tasks.add.using(run_after=datetime(2300, 1, 1, tzinfo=UTC)).enqueue(1, 2)
    assert manager.query_tasks(limit=0).total == before


def test_get_result_of_an_unknown_id_raises_task_result_does_not_exist(project: Any) -> None:
    backend = get_backend()
    plain = backend.manager.submit("not_django", {"x": 1})  # a tideflow task, not Django's
    for result_id in ("abc", "", "99999", str(plain)):
        with pytest.raises(compat.TaskResultDoesNotExist):
            backend.get_result(result_id)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"NOPE": 1}, "unknown key"),
        ({"TASK_OPTIONS": {"priority": 3}}, "may not set priority"),
        ({"TASK_OPTIONS": {"max_retries": -1}}, "max_retries"),
        ({"TASK_OPTIONS": {"colour": "red"}}, "colour"),
        ({"MANAGER_OPTIONS": []}, "must be a dict"),
        ({"DB": 5}, "tideflow URL"),
    ],
)
def test_bad_options_raise_invalid_option_error(options: Any, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        TideflowBackend("bad", {"OPTIONS": options})


def test_worker_options_are_checked(project: Any) -> None:
    with pytest.raises(InvalidOptionError, match="nowhere"):
        DjangoWorker(queues=["nowhere"])
    with pytest.raises(InvalidOptionError, match="non-empty"):
        DjangoWorker(queues=[])


# --- the database ------------------------------------------------------------------------------
def test_database_url_from_django_settings() -> None:
    sqlite = {"ENGINE": "django.db.backends.sqlite3", "NAME": "/srv/app/db.sqlite3"}
    assert database_url(sqlite) == "sqlite:/srv/app/db.sqlite3"
    assert database_url({**sqlite, "NAME": ":memory:"}) == "sqlite::memory:"
    postgres = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "shop",
        "USER": "app",
        "PASSWORD": "p@ss/word",
        "HOST": "db.internal",
        "PORT": "6432",
        "OPTIONS": {"sslmode": "require", "pool": True},
    }
    assert (
        database_url(postgres)
        == "postgresql://app:p%40ss%2Fword@db.internal:6432/shop?sslmode=require"
    )
    mysql = {"ENGINE": "django.db.backends.mysql", "NAME": "shop", "USER": "root"}
    assert database_url(mysql) == "mysql://root@127.0.0.1/shop"
    with pytest.raises(InvalidOptionError, match="oracle"):
        database_url({"ENGINE": "django.db.backends.oracle", "NAME": "x"})


def test_the_system_check_reports_a_database_tideflow_cannot_use() -> None:
    oracle = {"ENGINE": "django.db.backends.oracle", "NAME": "x"}
    with djsupport.project_settings(oracle, djsupport.tasks_setting()):
        (error,) = get_backend().check()
    assert error.id == "tideflow.E001"
    assert "ENGINE 'django.db.backends.oracle'" in error.msg


def test_the_backend_uses_djangos_default_database(project: dict[str, Any]) -> None:
    backend = get_backend()
    assert backend.check() == []
    assert backend.db_url == database_url(project)
    result = tasks.add.enqueue(1, 1)
    assert backend.manager.get_task(int(result.id)) is not None


# --- the management commands -------------------------------------------------------------------
def _manage(
    database: dict[str, Any], *args: str, cwd: Path = djsupport.HERE, **popen: Any
) -> subprocess.Popen[str]:
    env = {**os.environ, "TIDEFLOW_DJANGO_DATABASE": json.dumps(database)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.Popen(
        [sys.executable, str(djsupport.HERE / "manage.py"), *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )


def test_manage_py_tideflow_worker_runs_tasks_and_stops_on_sigterm(
    project: dict[str, Any], tmp_path: Path
) -> None:
    target = tmp_path / "written.txt"
    written = tasks.write_file.enqueue(str(target), "hello from a worker process")
    receipt = tasks.send_receipt.enqueue("c@example.com")
    proc = _manage(project, "tideflow_worker", "--queues", "default", "--scan-interval", "0.2")
    try:
        djsupport.wait_finished(written)
        receipt.refresh()
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert written.status == Status.SUCCESSFUL, err
    assert written.return_value == len("hello from a worker process")
    assert target.read_text() == "hello from a worker process"
    assert receipt.status == Status.READY  # the emails queue was not served
    assert "queues default" in err
    assert "SIGTERM received: stopping" in err


def test_manage_py_tideflow_worker_refuses_a_queue_not_in_queues(tmp_path: Path) -> None:
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "db.sqlite3")}
    proc = _manage(database, "tideflow_worker", "--queues", "nowhere")
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "queue(s) nowhere not in TASKS['default']['QUEUES']" in err


def test_reload_restarts_the_worker_when_a_file_changes(
    project: dict[str, Any], tmp_path: Path
) -> None:
    pytest.importorskip(
        "watchfiles", reason="--reload needs watchfiles: pip install -e '.[reload]'"
    )
    manager = get_backend().manager
    first = tasks.add.enqueue(1, 2)
    # the current directory is watched: a new .py file there is a change
    proc = _manage(project, "tideflow_worker", "--reload", "--scan-interval", "0.2", cwd=tmp_path)
    try:
        djsupport.wait_finished(first)
        (tmp_path / "changed.py").write_text("VALUE = 1\n")
        djsupport.wait_until(
            lambda: (
                len(manager.get_workers("active")) == 1
                and first.worker_ids[0] not in {w.worker_id for w in manager.get_workers("active")}
            ),
            "a new worker process after the change",
        )
        second = tasks.add.enqueue(3, 4)
        djsupport.wait_finished(second)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert second.return_value == 7
    assert second.worker_ids != first.worker_ids
    assert {w.worker_id: w.status for w in manager.get_workers()} == {
        first.worker_ids[0]: "stopped",
        second.worker_ids[0]: "stopped",
    }
    assert "changed.py changed; restarting the worker" in err


def test_manage_py_tideflow_worker_refuses_an_in_memory_database() -> None:
    proc = _manage({"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}, "tideflow_worker")
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "in-memory SQLite database" in err


def test_the_readme_example_runs(tmp_path: Path) -> None:
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "example.db")}
    proc = _manage(database, "shop_demo")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == f"tideflow database: sqlite:{tmp_path / 'example.db'}"
    assert "add(2, 3) -> SUCCESSFUL: 5" in lines[2]
    assert "double_later(21), async -> SUCCESSFUL: [21, 42]" in out
    assert (
        "fail('out of stock') -> FAILED: shop.errors.ShopError"
        " (shop.errors.ShopError: out of stock)" in out
    )
    assert "not finished" not in out
