"""Two worker processes share one database and drain it without running anything twice.

Runs on every shared backend: a SQLite file, PostgreSQL and MariaDB/MySQL.
"""

from __future__ import annotations

import importlib
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from support.wait import wait_for
from tideflow import TaskManager

SCRIPT = Path(__file__).with_name("worker_script.py")
WORKERS = ("proc-a", "proc-b")


@pytest.mark.slow
def test_two_worker_processes_drain_one_database(shared_db_url: str, tmp_path: Path) -> None:
    n_tasks = 1000 if shared_db_url.startswith("sqlite:") else 5000
    client = TaskManager(shared_db_url, allow_unregistered=True, poll_interval=0.02)
    client.setup()
    log_paths = [tmp_path / f"{worker_id}.log" for worker_id in WORKERS]
    procs: list[subprocess.Popen[bytes]] = []

    def logs() -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in log_paths
            if path.exists()
        )

    try:
        for worker_id, log_path in zip(WORKERS, log_paths, strict=True):
            with log_path.open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, str(SCRIPT), shared_db_url, "--worker-id", worker_id],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )

        def both_active() -> bool:
            for proc in procs:
                assert proc.poll() is None, f"a worker exited early\n{logs()}"
            active = {w.worker_id for w in client.get_workers() if w.status == "active"}
            return active >= set(WORKERS)

        wait_for(both_active, timeout=30, interval=0.05, message=lambda: f"not both up\n{logs()}")

        ids = client.submit_many([("noop", {"i": i}) for i in range(n_tasks)])
        assert len(set(ids)) == n_tasks

        def completed() -> int:
            return client.query_tasks(status="completed", limit=0).total

        wait_for(
            lambda: completed() == n_tasks,
            timeout=120,
            interval=0.1,
            message=lambda: f"only {completed()}/{n_tasks} completed\n{logs()}",
        )
        for proc in procs:
            assert proc.wait(timeout=30) == 0, f"worker exit code {proc.returncode}\n{logs()}"

        # the attempt number counts every claim: 1 means claimed and run exactly once
        tasks = client.query_tasks(limit=None).items
        assert {t.id for t in tasks} == set(ids)
        assert {(t.status, t.attempt) for t in tasks} == {("completed", 1)}
        per_worker = Counter(t.worker_id for t in tasks)
        # both usually share the work, but on a busy machine one process may drain a fast
        # store before the other claims anything: that is allowed, running a task twice is not
        assert set(per_worker) <= set(WORKERS), per_worker
        for task_id in ids[:: n_tasks // 50]:  # the audit rows agree, on a sample
            (attempt,) = client.query_task_attempts(task_id).items
            assert (attempt.outcome, attempt.worker_id) == (
                "completed",
                client.get_task(task_id).worker_id,  # type: ignore[union-attr]
            )
            kinds = [e.event_type for e in client.query_task_events(task_id).items]
            assert kinds.count("task_claimed") == 1

        statuses = {w.worker_id: w.status for w in client.get_workers()}
        assert {statuses[w] for w in WORKERS} == {"stopped"}, statuses
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        client.close()


@pytest.mark.slow
def test_concurrent_setup_from_four_processes(shared_db_url: str) -> None:
    from tideflow.store.factory import open_store

    store = open_store(shared_db_url)
    try:
        assert store.schema_version() == 0
        start_at = time.time() + 2.5  # all four call setup() at the same moment
        procs = [
            subprocess.Popen(
                [sys.executable, str(SCRIPT), shared_db_url, "--setup-at", str(start_at)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for _ in range(4)
        ]
        outputs = [p.communicate(timeout=60)[0].decode(errors="replace") for p in procs]
        codes = [p.returncode for p in procs]
        assert codes == [0, 0, 0, 0], outputs
        latest = importlib.import_module(type(store).__module__).SCHEMA_VERSION
        assert store.schema_version() == latest
        store.setup()  # idempotent
        assert store.schema_version() == latest
    finally:
        store.close()
    tm = TaskManager(shared_db_url, allow_unregistered=True)
    try:
        task_id = tm.submit("anything")
        assert tm.get_task(task_id).status == "pending"  # type: ignore[union-attr]
    finally:
        tm.close()


@pytest.mark.slow
def test_a_killed_workers_task_is_recovered_by_another(shared_db_url: str, tmp_path: Path) -> None:
    """kill -9 a worker in the middle of a task: a live worker gives the task back (not a
    retry, no attempt used up) and runs it; the dead worker's row is marked dead."""
    client = TaskManager(shared_db_url, allow_unregistered=True)
    client.setup()
    log_path = tmp_path / "victim.log"
    with log_path.open("wb") as log:
        victim = subprocess.Popen(
            [
                *(sys.executable, str(SCRIPT), shared_db_url, "--worker-id", "victim"),
                *("--heartbeat", "0.1", "--idle-exit", "600"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    survivor = None
    try:
        task_id = client.submit("block")
        wait_for(
            lambda: (t := client.get_task(task_id)) is not None and t.status == "running",
            timeout=30,
            message=lambda: f"the victim never started the task\n{log_path.read_text()}",
        )
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)

        survivor = TaskManager(
            shared_db_url,
            worker_id="survivor",
            poll_interval=0.05,
            task_heartbeat_interval=0.1,
            worker_heartbeat_interval=0.1,
            worker_heartbeat_timeout=1.0,
        )
        survivor.use("block", lambda task: "survived")
        survivor.start()
        wait_for(
            lambda: client.get_task(task_id).status == "completed",  # type: ignore[union-attr]
            timeout=30,
            message=lambda: f"not recovered: {client.get_task(task_id)}",
        )
        info = client.get_task(task_id)
        assert info is not None
        assert (info.result, info.worker_id, info.retry_count) == ("survived", "survivor", 0)
        attempts = client.query_task_attempts(task_id).items
        assert [(a.worker_id, a.outcome) for a in attempts] == [
            ("victim", "interrupted"),
            ("survivor", "completed"),
        ]
        kinds = [e.event_type for e in client.query_task_events(task_id).items]
        assert "task_recovered" in kinds
        assert "task_timed_out" not in kinds
        statuses = {w.worker_id: w.status for w in client.get_workers()}
        assert statuses["victim"] == "dead"
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(timeout=10)
        if survivor is not None:
            survivor.stop(timeout=5)
            survivor.close()
        client.close()
