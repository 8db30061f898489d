"""Two worker processes share one SQLite file and drain it without running anything twice."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from support.wait import wait_for
from tideflow import TaskManager

SCRIPT = Path(__file__).with_name("worker_script.py")
WORKERS = ("proc-a", "proc-b")
N_TASKS = 1000


@pytest.mark.slow
def test_two_worker_processes_drain_one_file(db_file: str, tmp_path: Path) -> None:
    client = TaskManager(f"sqlite:{db_file}", allow_unregistered=True, poll_interval=0.02)
    client.setup()
    procs: list[subprocess.Popen[bytes]] = []
    log_paths = [tmp_path / f"{worker_id}.log" for worker_id in WORKERS]

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
                        [
                            sys.executable,
                            str(SCRIPT),
                            f"sqlite:{db_file}",
                            "--worker-id",
                            worker_id,
                        ],
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

        ids = client.submit_many([("noop", {"i": i}) for i in range(N_TASKS)])
        assert len(ids) == N_TASKS
        assert len(set(ids)) == N_TASKS

        def drained() -> bool:
            return client.query_tasks(status="completed", limit=1).total == N_TASKS

        wait_for(
            drained,
            timeout=60,
            interval=0.1,
            message=lambda: (
                f"only {client.query_tasks(status='completed', limit=1).total}/{N_TASKS} "
                f"completed\n{logs()}"
            ),
        )
        for proc in procs:
            assert proc.wait(timeout=30) == 0, f"worker exit code {proc.returncode}\n{logs()}"

        per_worker: Counter[Any] = Counter()
        for task_id in ids:
            attempts = client.query_task_attempts(task_id).items
            assert len(attempts) == 1, f"task {task_id} ran {len(attempts)} times"
            (attempt,) = attempts
            assert attempt.outcome == "completed"
            per_worker[attempt.worker_id] += 1
        assert set(per_worker) == set(WORKERS), per_worker
        assert all(per_worker[w] > 0 for w in WORKERS), per_worker
        assert sum(per_worker.values()) == N_TASKS

        statuses = {w.worker_id: w.status for w in client.get_workers()}
        assert {statuses[w] for w in WORKERS} == {"stopped"}, statuses
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        client.close()
