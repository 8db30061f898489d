"""Chaos: real worker processes killed with ``kill -9``, replaced (or not) by their pod, one with
a clock a minute off, one cut off the network by a silent proxy, and a database server restart,
all while a few hundred tasks (``max_retries=1``) run. Afterwards every task is completed, none
ran twice at once, every execution is an audited attempt and no attempt is left open.

Runs on a SQLite file, PostgreSQL and MariaDB/MySQL (servers from the shared conftest). The clock
skew, the cut-off and the restart need a server: a SQLite file is one machine (one clock, no
network), so its run is the kills only. Sizes are small for CI; ``TIDEFLOW_CHAOS_SCALE=10``
(more tasks, more kills) makes a soak to run by hand, ``TIDEFLOW_CHAOS_SEED`` replays a run's
random choices, ``TIDEFLOW_CHAOS_RESTART=0`` leaves the servers alone.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from chaos.conftest import SERVER_STORES, STORES, store_url
from chaos.harness import SCALE, Cluster, Worker, check_run, quietly
from chaos.servers import host_port, restart_server, via_proxy
from support.proxy import TcpProxy
from support.wait import wait_for

pytestmark = pytest.mark.slow

HB_INTERVAL = 0.3
HB_TIMEOUT = 2.5
#: clock skew of the skewed worker: ahead on PostgreSQL, behind on MySQL
SKEW = {"postgres": 60.0, "mysql": -60.0}
#: the least time from one blow to the next
STEP_SPACING = 2.0
FINAL = ("completed", "permanently_failed")
DEFAULT_PORT = {"postgres": 5432, "mysql": 3306}


def _running_on(client: Any, worker: Worker) -> int:
    return quietly(
        lambda: client.query_tasks(status="running", worker_id=worker.worker_id, limit=0).total,
        0,
    )


def _completed(client: Any) -> int:
    return quietly(lambda: client.query_tasks(status="completed", limit=0).total, -1)


def _wait_busy(client: Any, worker: Worker, timeout: float = 8.0) -> bool:
    """Wait (a while) until ``worker`` runs something, so a kill interrupts work."""
    try:
        wait_for(lambda: _running_on(client, worker) > 0, timeout=timeout, interval=0.05)
        return True
    except AssertionError:
        return False


class Chaos:
    """One run: its workers by role, the kills and replacements, the restart."""

    def __init__(self, kind: str, url: str, client: Any, cluster: Cluster, rng: random.Random):
        self.kind, self.url, self.client, self.cluster, self.rng = kind, url, client, cluster, rng
        self.names = itertools.count(1)
        self.restart_note: str | None = None

    def spawn_like(self, old: Worker | None = None, *, pod: bool = True) -> Worker:
        """A fresh worker (of a new pod, or with ``pod=False`` of none); with ``old``, one of
        the same role (skewed, behind the proxy)."""
        n = next(self.names)
        if old is not None and old.skew:
            return self.cluster.spawn(f"skew{n}", skew=old.skew)
        if old is not None and old.via_proxy:
            return self.cluster.spawn(f"cut{n}", via_proxy=True)
        return self.cluster.spawn(f"w{n}", pod=f"pod{n}" if pod else None)

    def normal(self) -> list[Worker]:
        return [w for w in self.cluster.live() if not w.skew and not w.via_proxy]

    def holder(self) -> Worker | None:
        holder = quietly(lambda: self.client._store.lease_holder("maintenance"))
        worker = self.cluster.by_id(holder)
        return worker if worker is not None and worker.alive else None

    def kill(self, victim: Worker, *, replace: bool, why: str) -> Worker:
        busy = _wait_busy(self.client, victim)
        running = _running_on(self.client, victim)
        self.cluster.kill(victim, f"({why}; {running} running{'' if busy else ', idle'})")
        if replace and victim.pod is not None:
            new = self.cluster.spawn(f"{victim.pod}-r{next(self.names)}", pod=victim.pod)
        else:  # capacity comes back, but not as the dead worker's pod
            new = self.spawn_like(victim)
        return new

    def step(self, what: str) -> None:
        if what == "kill-holder":
            victim = quietly(lambda: wait_for(self.holder, timeout=5, interval=0.05))
            why = "maintenance lease holder"
            if victim is None:
                victim, why = self.rng.choice(self.cluster.live()), "lease free: random worker"
            self.kill(victim, replace=False, why=why)
        elif what == "kill-replaced":
            candidates = [w for w in self.normal() if w.pod is not None]
            victim = max(candidates, key=lambda w: (_running_on(self.client, w), self.rng.random()))
            self.kill(victim, replace=True, why="replaced by its pod")
        elif what == "kill-random":
            self.kill(self.rng.choice(self.cluster.live()), replace=False, why="random")
        elif what == "cut":
            cut = [w for w in self.cluster.live() if w.via_proxy]
            if cut:
                _wait_busy(self.client, cut[0])
            proxy: TcpProxy = self.cluster.proxy  # type: ignore[attr-defined]
            proxy.cut()
            cut_at = time.time()
            self.cluster.note(f"network cut for {cut} ({_running_on(self.client, cut[0])} running)")
            # the cut lasts until the cut-off worker has been judged dead by the others
            wait_for(
                lambda: all(
                    quietly(lambda w=w: self.client.get_worker(w.worker_id).status) == "dead"
                    for w in cut
                ),
                timeout=HB_TIMEOUT * 4 + 10,
                interval=0.05,
                message=lambda: f"the cut-off worker was never judged dead\n{self.cluster.tails()}",
            )
            proxy.resume()
            self.cluster.note("network back")
            for w in cut:
                self.cluster.excuse(cut_at, time.time(), w)
        elif what == "restart":
            self.cluster.note(f"restarting the {self.kind} server")
            begin = time.time()
            self.restart_note = restart_server(self.kind, self.url)
            self.cluster.note(f"restart: {self.restart_note or 'done'}")
            self.cluster.excuse(begin, time.time())
        else:  # pragma: no cover
            raise ValueError(what)


def _steps(kind: str) -> list[str]:
    kills = ["kill-holder", "kill-replaced", "kill-random", "kill-holder"]
    rounds = max(1, round(SCALE))
    steps = kills * rounds
    if kind != "sqlite":  # one cut per round, one restart per run (it disturbs the server)
        for r in range(rounds):
            steps.insert(r * 6 + 2, "cut")
        steps.insert(len(steps) // 2 + 1, "restart")
    return steps


@pytest.mark.parametrize("kind", [k for _, k in STORES], ids=[i for i, _ in STORES])
def test_chaos_run(kind: str, tmp_path: Path, clusters: list[Cluster], client_of: Any) -> None:
    url = store_url(kind, tmp_path)
    client = client_of(url)
    seed = int(os.environ.get("TIDEFLOW_CHAOS_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    proxy = None
    if kind != "sqlite":
        proxy = TcpProxy(*host_port(url, DEFAULT_PORT[kind]))
    try:
        cluster = Cluster(
            url,
            tmp_path,
            hb_interval=HB_INTERVAL,
            hb_timeout=HB_TIMEOUT,
            concurrency=3,
            proxy_url=via_proxy(url, proxy.port) if proxy else None,
        )
        cluster.proxy = proxy  # type: ignore[attr-defined]
        clusters.append(cluster)
        cluster.note(f"{kind}: seed {seed}, scale {SCALE}")
        chaos = Chaos(kind, url, client, cluster, rng)
        first = [chaos.spawn_like(), chaos.spawn_like()]
        if proxy is None:
            first.append(chaos.spawn_like(pod=False))
        else:
            # a SQLite file is one machine: one clock, no network; these two need a server
            # (neither has a pod id)
            first.append(cluster.spawn("skew0", skew=SKEW[kind]))
            first.append(cluster.spawn("cut0", via_proxy=True))
        cluster.wait_active(client, first)

        steps = _steps(kind)
        n_tasks = int(240 * SCALE)
        batches = [n_tasks // (len(steps) + 1)] * (len(steps) + 1)
        batches[0] += n_tasks - sum(batches)
        ids: list[int] = []

        def submit(n: int) -> None:
            payloads = [
                {"i": len(ids) + i, "sleep": round(rng.uniform(0.05, 1.0), 3)} for i in range(n)
            ]
            ids.extend(client.submit_many([("chaos", p) for p in payloads], max_retries=1))

        submit(batches[0])
        for step, batch in zip(steps, batches[1:], strict=True):
            done = _completed(client)
            step_started = time.monotonic()
            chaos.step(step)
            submit(batch)
            # let the work go on (and the recoveries happen) before the next blow
            wait_for(
                lambda done=done, since=step_started: (
                    _completed(client) >= done + 8 and time.monotonic() - since > STEP_SPACING
                ),
                timeout=30,
                interval=0.1,
            )

        def all_finished() -> bool:
            counts = quietly(
                lambda: {s: client.query_tasks(status=s, limit=0).total for s in FINAL}
            )
            return bool(counts) and sum(counts.values()) == len(ids)

        wait_for(
            all_finished,
            timeout=120 * SCALE,
            interval=0.2,
            message=lambda: (
                f"{_completed(client)}/{len(ids)} completed;"
                f" statuses {quietly(client.get_task_stats)}\n{cluster.story()}\n{cluster.tails()}"
            ),
        )
        cluster.note("every task finished")
        # every worker still running counts itself active again: the cut-off one registered
        # again, the skewed one was never taken for dead for good
        cluster.wait_active(client, cluster.live(), timeout=30)
        codes = cluster.stop_all()
        assert set(codes.values()) == {0}, f"exit codes {codes}\n{cluster.tails()}"
        summary = check_run(client, ids, cluster)
        print(f"\n{kind} chaos (seed {seed}): {summary}\n{cluster.story()}")
        if proxy is not None:
            assert proxy.bytes_forwarded > 0
        if chaos.restart_note:
            print(f"server restart skipped: {chaos.restart_note}")
    finally:
        if proxy is not None:
            proxy.close()


@pytest.mark.parametrize("kind", [k for _, k in SERVER_STORES], ids=[i for i, _ in SERVER_STORES])
def test_cut_off_worker_stops_before_it_is_judged_dead(
    kind: str, tmp_path: Path, clusters: list[Cluster], client_of: Any
) -> None:
    """A worker cut off silently for longer than ``worker_heartbeat_timeout`` gives its tasks up
    (its async handlers are cancelled) before anyone may take it for dead; the other worker runs
    them; once the network is back the cut-off worker registers again and carries on."""
    timeout, interval, work, cut_for = 3.0, 0.3, 6.0, 8.0
    url = store_url(kind, tmp_path)
    client = client_of(url)
    with TcpProxy(*host_port(url, DEFAULT_PORT[kind])) as proxy:
        cluster = Cluster(
            url,
            tmp_path,
            hb_interval=interval,
            hb_timeout=timeout,
            concurrency=2,
            proxy_url=via_proxy(url, proxy.port),
        )
        clusters.append(cluster)
        cut = cluster.spawn("cut", via_proxy=True)
        cluster.wait_active(client, [cut])
        long_ids = client.submit_many([("chaos", {"sleep": work})] * 2, max_retries=1)
        wait_for(
            lambda: _running_on(client, cut) == 2,
            timeout=30,
            interval=0.05,
            message=lambda: f"the cut-off worker never ran both tasks\n{cluster.tails()}",
        )
        steady = cluster.spawn("steady")
        cluster.wait_active(client, [steady])

        proxy.cut()
        cut_at = time.time()
        cluster.note("network cut")
        # the cut lasts until the other worker has taken both tasks over (a cut-off worker must
        # have stopped them by then), and at least cut_for seconds
        wait_for(
            lambda: all(
                quietly(lambda i=i: client.get_task(i).worker_id) == steady.worker_id
                for i in long_ids
            ),
            timeout=60,
            interval=0.05,
            message=lambda: f"nobody took the cut-off worker's tasks over\n{cluster.tails()}",
        )
        wait_for(lambda: time.time() >= cut_at + cut_for, timeout=cut_for + 1, interval=0.05)
        proxy.resume()
        cluster.note("network back")
        cluster.excuse(cut_at, time.time(), cut)

        wait_for(
            lambda: all(
                quietly(lambda i=i: client.get_task(i).status) == "completed" for i in long_ids
            ),
            timeout=60,
            interval=0.1,
            message=lambda: f"the cut-off worker's tasks did not complete\n{cluster.tails()}",
        )
        cluster.wait_active(client, [cut, steady], timeout=30)
        cluster.note("cut-off worker active again")

        # it carries on: short tasks until one of them runs on the cut-off worker
        ids = list(long_ids)

        def ran_on_cut() -> bool:
            runs, _ = cluster.executions()
            return any(e.worker == cut.worker_id and e.start > cut_at + cut_for for e in runs)

        deadline = time.monotonic() + 40
        while not ran_on_cut():
            assert time.monotonic() < deadline, (
                f"the cut-off worker ran nothing after the network came back\n{cluster.tails()}"
            )
            ids += client.submit_many([("chaos", {"sleep": 0.2})] * 4, max_retries=1)
            total = len(ids)
            wait_for(
                lambda total=total: _completed(client) == total,
                timeout=30,
                interval=0.1,
                message=lambda: f"short tasks did not complete\n{cluster.tails()}",
            )

        codes = cluster.stop_all()
        assert set(codes.values()) == {0}, f"exit codes {codes}\n{cluster.tails()}"
        summary = check_run(client, ids, cluster)

        runs, _ = cluster.executions()
        for task_id in long_ids:
            mine = [e for e in runs if e.task == task_id]
            on_cut = [e for e in mine if e.worker == cut.worker_id]
            on_steady = [e for e in mine if e.worker == steady.worker_id]
            assert [e.how for e in on_cut] == ["cancelled"], (task_id, mine)
            # cancelled before the others may judge it dead: its last heartbeat was before the cut
            assert on_cut[0].end < cut_at + timeout, (task_id, on_cut, cut_at)
            assert [e.how for e in on_steady] == ["ok"], (task_id, mine)
        print(f"\n{kind} cut-off: {summary}\n{cluster.story()}")
