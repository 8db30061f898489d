"""Worker rows and claims written straight to the store, as another machine's worker would
have left them."""

from __future__ import annotations

import time
from typing import Any

from tideflow.core import lifecycle
from tideflow.core.types import ClaimRequest, WorkerRow


def ghost(
    tm: Any,
    worker_id: str,
    *,
    last_seen: float,
    pod_id: str | None = None,
    status: str = "active",
) -> None:
    """Register a worker row that no process keeps alive."""
    tm._store.register_worker(
        WorkerRow(
            worker_id=worker_id,
            pod_id=pod_id,
            host="elsewhere",
            pid=1,
            status=status,
            capabilities="[]",
            handlers='["job"]',
            concurrency=1,
            registered_at=last_seen,
            last_seen_at=last_seen,
            expires_at=last_seen + 30,
        )
    )


def claim(tm: Any, worker_id: str, name: str = "job", limit: int = 1) -> list[Any]:
    """Claim up to ``limit`` due ``name`` tasks in ``worker_id``'s name, straight through the
    store (as that worker's claim would), without running them."""
    now = time.time()
    request = ClaimRequest(
        worker_id=worker_id,
        now=now,
        limit=limit,
        names={name: None},
        capabilities=frozenset(),
        plan=lifecycle.claim(worker_id, now),
    )
    return list(tm._store.claim(request))


def claim_as(tm: Any, worker_id: str, task_id: int) -> None:
    """Claim the task ``task_id`` (the oldest due ``job``) in ``worker_id``'s name."""
    (row,) = claim(tm, worker_id)
    assert (row.id, row.worker_id) == (task_id, worker_id)
