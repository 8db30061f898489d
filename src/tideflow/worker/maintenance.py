"""Maintenance: the lease and the sweeps that keep every worker's work moving.

One :class:`Maintenance` per worker. Each round (:meth:`Maintenance.run_once`) is a few bounded
steps, each failing alone (logged once, retried next round):

1. **mark dead**: workers silent for ``worker_heartbeat_timeout`` become ``dead``. Every worker
   does this, even one that is fenced off itself, so a dead successor never keeps a superseded
   worker waiting forever.
2. **lease**: one worker at a time holds the ``maintenance`` lease; a lease whose holder is not
   an ``active`` worker is free at once. Only the holder goes on:
3. **recovery**: running tasks of workers that are not active go back to ``pending``
   (attempt ``interrupted``, no attempt used up);
4. **stalls**: running tasks whose own heartbeat is older than ``task_heartbeat_timeout`` time
   out;
5. **retention**: every ``retention_interval`` (never in the first round) expired workflows are
   deleted on a thread of their own, so a long backlog delays no round.

Steps 1-4 read and mark in one transaction (``Store.sweep``); when that fails, the round runs
again step by step, so each step still fails alone. Every decision about liveness is taken by
the store with the database's clock; ``now`` is only
the time written into the planned changes (events, next run times). Tests drive
:meth:`run_once` with a store of their own and move ``now`` themselves.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from tideflow.core import lifecycle
from tideflow.core.options import ManagerSettings
from tideflow.core.types import Change, SweepRead, SweepRequest, TaskRow
from tideflow.store import retention
from tideflow.store.protocol import Store
from tideflow.worker import observe

T = TypeVar("T")

__all__ = ["MAINTENANCE_LEASE", "Maintenance", "Round"]

log = logging.getLogger("tideflow.maintenance")

#: the lease whose holder runs the sweeps for every worker (recovery, stalls, retention)
MAINTENANCE_LEASE = "maintenance"


@dataclasses.dataclass
class Round:
    """What one maintenance round did."""

    marked_dead: list[str] = dataclasses.field(default_factory=list)
    leader: bool = False
    recovered: list[int] = dataclasses.field(default_factory=list)
    timed_out: list[int] = dataclasses.field(default_factory=list)
    retention_started: bool = False
    failed_steps: list[str] = dataclasses.field(default_factory=list)


class Maintenance:
    """The lease and the sweeps of one worker (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        worker_id: str,
        settings: Callable[[], ManagerSettings],
        *,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        on_recovered: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._worker_id = worker_id
        self._settings = settings
        self._clock = clock
        self._rng = rng or random.Random()
        self._on_recovered = on_recovered
        self._next_retention: float | None = None
        self._retention: concurrent.futures.Future[dict[str, int]] | None = None
        self._retention_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._stopping = False
        self._suspects: set[tuple[int, int]] = set()
        self._logged: dict[str, str] = {}  # step -> the last failure logged for it

    # --- one round -----------------------------------------------------------------------------
    def run_once(self, now: float | None = None, *, fenced: bool = False) -> Round:
        """One maintenance round. ``fenced``: this worker was marked superseded or dead, or
        lost contact: it only marks silent workers dead and leaves the lease to others."""
        now = self._clock() if now is None else now
        settings = self._settings()
        done = Round()
        read = self._sweep_together(settings, fenced)
        if read is None:
            return self._run_steps(done, now, settings, fenced)
        self._report_dead(done, read.dead, settings)
        done.leader = read.leader
        if not read.leader:
            return done
        if read.orphaned:
            done.recovered = self._recover(
                done, "recovery", read.orphaned, now, "worker dead or superseded"
            )
        # read before the recovery was applied: a recovered task is no longer running
        orphaned = {row.id for row in read.orphaned}
        stalled = [row for row in read.stalled if row.id not in orphaned]
        done.timed_out = self._time_out(done, stalled, now, settings)
        done.retention_started = self._start_retention(now, settings)
        return done

    def _sweep_together(self, settings: ManagerSettings, fenced: bool) -> SweepRead | None:
        """Steps 1-4's reads and marks in one transaction; None when it failed."""
        request = SweepRequest(
            worker_id=self._worker_id,
            silent_for=settings.worker_heartbeat_timeout,
            lease=MAINTENANCE_LEASE,
            fenced=fenced,
            recover=settings.recover_running_jobs,
            stalled_after=settings.task_heartbeat_timeout,
        )
        try:
            read = self._store.sweep(request)
        except Exception as exc:
            log.debug("maintenance round in one transaction failed, step by step: %s", exc)
            return None
        for step in ("mark dead", "lease", "recovery", "stall sweep"):
            self._logged.pop(step, None)
        return read

    def _report_dead(self, done: Round, dead: Sequence[str], settings: ManagerSettings) -> None:
        if dead:
            done.marked_dead = list(dead)
            log.warning(
                "worker(s) %s sent no heartbeat for %g s: marked dead",
                ", ".join(dead),
                settings.worker_heartbeat_timeout,
            )

    def _run_steps(self, done: Round, now: float, settings: ManagerSettings, fenced: bool) -> Round:
        """The round step by step, each step failing alone."""
        dead = self._step(
            done,
            "mark dead",
            lambda: self._store.mark_dead_workers(
                settings.worker_heartbeat_timeout, exclude=self._worker_id
            ),
        )
        self._report_dead(done, dead or [], settings)
        if fenced:
            return done
        done.leader = bool(
            self._step(
                done,
                "lease",
                lambda: self._store.acquire_lease(
                    MAINTENANCE_LEASE, self._worker_id, settings.worker_heartbeat_timeout
                ),
            )
        )
        if not done.leader:
            return done  # another worker runs the sweeps for everyone this round
        # before the stall sweep: a dead worker's tasks are recovered, not timed out
        if settings.recover_running_jobs:
            done.recovered = self._recover_orphaned(done, now)
        done.timed_out = self._sweep_stalled(done, now, settings)
        done.retention_started = self._start_retention(now, settings)
        return done

    def _step(self, done: Round, name: str, call: Callable[[], T]) -> T | None:
        """Run one step; a failure is logged once (until the step succeeds again)."""
        try:
            result = call()
        except Exception as exc:
            done.failed_steps.append(name)
            message = f"{type(exc).__name__}: {exc}"
            if self._logged.get(name) != message:
                self._logged[name] = message
                log.warning("maintenance step %r failed (retried next round): %s", name, message)
            return None
        self._logged.pop(name, None)
        return result

    def _apply(self, done: Round, step: str, changes: Sequence[Change]) -> list[int]:
        """Apply changes in one transaction; if that fails, one by one, so one bad task fails
        alone (logged once, with its id). Returns the ids whose change held."""
        held = self._step(done, step, lambda: self._store.apply(changes))
        if held is not None:
            return [c.task_id for c, ok in zip(changes, held, strict=True) if ok]
        applied = []
        for change in changes:
            one = self._step(
                done,
                f"{step} of task {change.task_id}",
                functools.partial(self._store.apply, [change]),
            )
            if one and one[0]:
                applied.append(change.task_id)
        return applied

    # --- the sweeps ----------------------------------------------------------------------------
    def _recover_orphaned(self, done: Round, now: float) -> list[int]:
        """Running tasks of workers that are dead, superseded, stopped or gone: back to
        pending at once, their attempt closed ``interrupted``, no attempt used up."""
        rows = self._step(
            done, "recovery", lambda: self._store.orphaned_tasks(exclude=self._worker_id)
        )
        if not rows:
            return []
        return self._recover(done, "recovery", rows, now, "worker dead or superseded")

    def recover_workers(self, worker_ids: Iterable[str], now: float | None = None) -> list[int]:
        """Recover the running tasks of ``worker_ids`` now, whoever holds the lease: used by a
        worker that has just superseded its pod's predecessors."""
        now = self._clock() if now is None else now
        done = Round()
        recovered = []
        for worker_id in worker_ids:
            rows = self._step(
                done,
                f"recovery of superseded worker {worker_id}",
                functools.partial(self._store.running_tasks, worker_id=worker_id),
            )
            if rows:
                recovered += self._recover(done, "recovery", rows, now, "worker superseded")
        return recovered

    def _recover(
        self, done: Round, step: str, rows: Sequence[TaskRow], now: float, why: str
    ) -> list[int]:
        log.warning(
            "recovering %d running task(s) of %s (%s)",
            len(rows),
            ", ".join(sorted({str(r.worker_id) for r in rows})),
            why,
        )
        changes = [lifecycle.recover(row, now, self._worker_id, why) for row in rows]
        recovered = self._apply(done, step, changes)
        if recovered:
            self._on_recovered()
        return recovered

    def _sweep_stalled(self, done: Round, now: float, settings: ManagerSettings) -> list[int]:
        """Time out running tasks (of any worker) whose heartbeat stopped."""
        limit = settings.task_heartbeat_timeout
        rows = self._step(
            done, "stall sweep", lambda: self._store.running_tasks(heartbeat_older_than=limit)
        )
        return self._time_out(done, rows or [], now, settings)

    def _time_out(
        self, done: Round, rows: Sequence[TaskRow], now: float, settings: ManagerSettings
    ) -> list[int]:
        limit = settings.task_heartbeat_timeout
        if not rows:
            return []
        changes = [
            lifecycle.fail(
                row,
                f"TaskTimeoutError: no heartbeat for over {limit:g} s",
                now,
                self._rng,
                timed_out=True,
                timeout_type="heartbeat",
            )
            for row in rows
        ]
        return self._apply(done, "stall sweep", changes)

    # --- orphaned claims of this worker ---------------------------------------------------------
    def release_orphans(
        self, owned: Mapping[int, int], running: set[tuple[int, int]], now: float | None = None
    ) -> list[int]:
        """Give back rows this worker owns (``owned``: task id -> attempt, as its task heartbeat
        read them) but does not run (``running``), e.g. a claim whose commit succeeded while
        its acknowledgement was lost. A row must look orphaned on two calls in a row, so a
        claim still on its way to being launched is never taken."""
        orphans = {(i, a) for i, a in owned.items() if (i, a) not in running}
        confirmed, self._suspects = orphans & self._suspects, orphans - self._suspects
        if not confirmed:
            return []
        now = self._clock() if now is None else now
        done = Round()
        changes = []
        for task_id, attempt in sorted(confirmed):
            row = self._step(
                done, "orphan release", functools.partial(self._store.get_task, task_id)
            )
            if row is not None and row.status == "running" and row.attempt == attempt:
                log.warning(
                    "task %s attempt %s was claimed but never run; releasing it",
                    task_id,
                    attempt,
                    extra=observe.extra(row, self._worker_id),
                )
                changes.append(lifecycle.recover(row, now, self._worker_id, "orphaned claim"))
        return self._apply(done, "orphan release", changes) if changes else []

    # --- retention -----------------------------------------------------------------------------
    def _start_retention(self, now: float, settings: ManagerSettings) -> bool:
        if self._next_retention is None:  # never at start-up
            self._next_retention = now + settings.retention_interval
            return False
        job = self._retention
        if now < self._next_retention or (job is not None and not job.done()) or self._stopping:
            return False
        self._next_retention = now + settings.retention_interval
        if self._retention_pool is None:
            self._retention_pool = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="tideflow-retention"
            )
        before, statuses = now - settings.expire_time, settings.retention_statuses
        self._retention = self._retention_pool.submit(
            retention.sweep, self._store, before, statuses, None, lambda: self._stopping
        )
        self._retention.add_done_callback(_report_retention)
        return True

    @property
    def retention_job(self) -> concurrent.futures.Future[dict[str, int]] | None:
        """The last automatic retention sweep started (None before the first)."""
        return self._retention

    def close(self) -> None:
        """Stop: a retention sweep stops after its current batch; wait for it."""
        self._stopping = True
        if self._retention_pool is not None:
            self._retention_pool.shutdown(wait=True)


def _report_retention(job: concurrent.futures.Future[dict[str, int]]) -> None:
    exc = job.exception()
    if exc is not None:
        log.warning("retention sweep failed (retried next interval): %s", exc)
        return
    deleted = job.result()
    if deleted["tasks_deleted"]:
        log.info(
            "retention deleted %(tasks_deleted)d task(s), %(events_deleted)d event(s)"
            " and %(attempts_deleted)d attempt(s)",
            deleted,
        )
