"""tideflow benchmark suite: every scenario for tideflow and its peers in one run (issue 5).

    python bench/run.py [--quick] [--json FILE] [--only SCENARIO[,...]] [--stores STORE[,...]]
                        [--peers PEER[,...]] [--runs N]

Scenarios: drain, submit, latency, claim, workflow, rss, raw. Peers (``pip install -e
'.[bench]'``): PgQueuer and Procrastinate on PostgreSQL, Huey on SQLite. Every worker runs as its
own process started with ``sys.executable``; completion is verified by counting finished rows in
the database; figures are medians of 3 runs (1 with ``--quick``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import math
import os
import platform
import socket
import sqlite3
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import (
    Counter,
    Proc,
    median,
    percentile,
    processes,
    rss_mb,
    wait_for_count,
)

SCENARIOS = ("drain", "submit", "latency", "claim", "workflow", "rss", "raw")
STORES = ("sqlite", "postgres", "mysql")
PEERS = ("pgqueuer", "procrastinate", "huey")
STORE_LABEL = {"sqlite": "SQLite file", "postgres": "PostgreSQL", "mysql": "MariaDB"}
TF_COUNT = "SELECT count(*) FROM tideflow_tasks WHERE status = 'completed' AND name = 'noop'"
TF_STARTED = (
    "SELECT count(*) FROM (SELECT 1 FROM tideflow_tasks WHERE status <> 'pending' LIMIT 1) x"
)

# Settings picked for speed, printed with the results.
TF_CONCURRENCY = 200
# the drains' slots: like PgQueuer's --batch-size 1000, bigger batches spread each transaction's
# fixed cost over more tasks (20-30% less CPU per task than 200 on every store)
DRAIN_CONCURRENCY = 1000
TF_POLL = 0.05
PGQ_BATCH = {1: 100, 2: 1000}
PROC_CONCURRENCY = 10
HUEY_WORKERS = 8
HUEY_DELAY = 0.01


@dataclass
class Sizes:
    drain: int
    submit_loop: int
    submit_many: int
    latency_probes: int
    finished_rows: int
    children: int
    rss_tasks: int
    runs: int

    @classmethod
    def make(cls, quick: bool) -> Sizes:
        if quick:
            return cls(2_000, 300, 2_000, 20, 20_000, 1_000, 2_000, 1)
        return cls(20_000, 2_000, 20_000, 200, 1_000_000, 10_000, 100_000, 3)


@dataclass
class Cell:
    """One measured figure for tideflow and its peers on one store."""

    scenario: str
    store: str
    unit: str
    higher_is_better: bool
    tideflow: float | None = None
    tideflow_note: str | None = None
    peers: dict[str, float | None] = field(default_factory=dict)
    peer_notes: dict[str, str] = field(default_factory=dict)
    target: str = ""
    met: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def ratios(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, value in self.peers.items():
            if self.tideflow is None or value is None or value == 0:
                out[name] = None
            else:
                out[name] = self.tideflow / value
        return out


class Bench:
    def __init__(
        self,
        quick: bool,
        only: set[str],
        stores: set[str] | None = None,
        peers: set[str] | None = None,
        runs: int | None = None,
    ) -> None:
        self.quick = quick
        self.only = only
        self.n = Sizes.make(quick)
        if runs is not None:
            self.n.runs = runs
        self.tmp = Path(tempfile.mkdtemp(prefix="tideflow-bench-"))
        self.cells: list[Cell] = []
        self.skips: list[str] = []
        self.created: set[tuple[str, str]] = set()
        self.services: dict[str, str | None] = {
            "sqlite": None,
            "postgres": common.pg_available(),
            "mysql": common.mysql_available(),
        }
        for store in STORES:
            if stores and store not in stores:
                self.services[store] = "not selected (--stores)"
        self.tf_store: dict[str, str | None] = {
            "sqlite": None,
            "postgres": self.services["postgres"] or common.tideflow_store_available("postgres"),
            "mysql": self.services["mysql"] or common.tideflow_store_available("mysql"),
        }
        self.peers: dict[str, str | None] = {}
        for peer, store, module in (
            ("pgqueuer", "postgres", "pgqueuer"),
            ("procrastinate", "postgres", "procrastinate"),
            ("huey", "sqlite", "huey"),
        ):
            self.peers[peer] = self.services[store]
            if peers is not None and peer not in peers:
                self.peers[peer] = "not selected (--peers)"
            if self.peers[peer] is None:
                try:
                    importlib.import_module(module)
                    importlib.import_module(f"peer_{peer}")
                except Exception as exc:
                    self.peers[peer] = f"not installed ({type(exc).__name__}: {exc})"
        for peer, why in self.peers.items():
            if why:
                self.skip(f"{peer}: skipped, {why}")
        for store in ("postgres", "mysql"):
            if self.tf_store[store]:
                self.skip(f"tideflow on {STORE_LABEL[store]}: n/a ({self.tf_store[store]})")

    def skip(self, line: str) -> None:
        if line not in self.skips:
            self.skips.append(line)
            print(f"  skip: {line}", flush=True)

    def cell(self, scenario: str, store: str, unit: str, higher: bool = True) -> Cell:
        c = Cell(scenario, store, unit, higher)
        self.cells.append(c)
        return c

    # --- fresh targets ---------------------------------------------------------------------
    def fresh(self, store: str, system: str) -> str:
        """A clean database for ``system`` on ``store``: a file path (SQLite) or a URL."""
        name = f"{system}_bench_{os.getpid()}"  # unique: concurrent runs never collide
        if store != "sqlite":
            self.created.add((store, name))
        if store == "sqlite":
            return str(common.fresh_sqlite_file(self.tmp, name))
        if store == "postgres":
            return common.fresh_pg_database(name)
        return common.fresh_mysql_database(name)

    @staticmethod
    def tf_url(store: str, target: str) -> str:
        return f"sqlite:{target}" if store == "sqlite" else target

    def runs(self, fn: Callable[[], float], label: str) -> float | None:
        """Median of ``fn`` over the configured number of runs; None (with a note) on failure."""
        values: list[float] = []
        failures = 0
        while len(values) < self.n.runs:
            try:
                v = fn()
            except Exception as exc:
                print(f"    {label}: failed: {type(exc).__name__}: {exc}", flush=True)
                if os.environ.get("BENCH_DEBUG"):
                    traceback.print_exc()
                failures += 1
                if failures > 1:
                    return None
                continue  # one retry: the services are shared with other work
            if math.isnan(v):
                return None
            values.append(v)
        result = median(values)
        if result is not None:
            print(f"    {label}: {result:,.2f}", flush=True)
        return result

    # --- tideflow helpers ------------------------------------------------------------------
    def tf_client(self, store: str, target: str) -> Any:
        from tideflow import TaskManager

        tm = TaskManager(self.tf_url(store, target), allow_unregistered=True)
        tm.setup()
        return tm

    def tf_worker(
        self,
        store: str,
        target: str,
        poll: float = TF_POLL,
        concurrency: int = TF_CONCURRENCY,
        **env: str,
    ) -> Proc:
        return Proc(
            [
                "tideflow_worker.py",
                self.tf_url(store, target),
                "--concurrency",
                str(concurrency),
                "--poll",
                str(poll),
            ],
            env=env,
        )

    def tf_counter(self, store: str, target: str, sql: str = TF_COUNT) -> Counter:
        return Counter(store, target, sql)

    # --- (a) drain ---------------------------------------------------------------------------
    def drain_once(self, system: str, store: str, nproc: int, n: int) -> float:
        target = self.fresh(store, system)
        timeout = max(60.0, n / 100)
        if system == "tideflow":
            tm = self.tf_client(store, target)
            for start in range(0, n, 20_000):
                tm.submit_many([("noop", None)] * min(20_000, n - start))
            tm.close()
            counter = Counter(store, target, TF_COUNT, TF_STARTED)
            procs = [
                self.tf_worker(store, target, concurrency=DRAIN_CONCURRENCY) for _ in range(nproc)
            ]
        elif system == "pgqueuer":
            import peer_pgqueuer

            asyncio.run(peer_pgqueuer.install(target))
            asyncio.run(peer_pgqueuer.enqueue(target, n, batch=True))
            counter = Counter(store, target, peer_pgqueuer.COUNT_SQL, peer_pgqueuer.STARTED_SQL)
            procs = [
                Proc(
                    [
                        "-m",
                        "pgqueuer",
                        "run",
                        "peer_pgqueuer:create",
                        "--batch-size",
                        str(PGQ_BATCH[nproc]),
                        "--log-level",
                        "WARNING",
                    ],
                    env={"BENCH_PGQ_DSN": target},
                )
                for _ in range(nproc)
            ]
        elif system == "procrastinate":
            procs, counter = self.procrastinate_prepared(target, n, nproc)
        elif system == "huey":
            procs, counter = self.huey_prepared(target, n, nproc)
        else:
            raise ValueError(system)
        with processes(procs):
            timing = wait_for_count(
                counter, n, timeout, alive=lambda: all(p.alive() for p in procs)
            )
        counter.close()
        return timing.rate

    def procrastinate_prepared(self, target: str, n: int, nproc: int) -> tuple[list[Proc], Counter]:
        os.environ["BENCH_PROC_DSN"] = target
        peer = self.reload_peer("peer_procrastinate")
        asyncio.run(peer.install())
        if n:
            asyncio.run(peer.enqueue(n, batch=True))
        procs = [self.procrastinate_worker(target) for _ in range(nproc)]
        return procs, Counter("postgres", target, peer.COUNT_SQL, peer.STARTED_SQL)

    @staticmethod
    def procrastinate_worker(target: str, **env: str) -> Proc:
        return Proc(
            [
                "-m",
                "procrastinate",
                "--app=peer_procrastinate.app",
                "worker",
                "--concurrency",
                str(PROC_CONCURRENCY),
            ],
            env={"BENCH_PROC_DSN": target, "BENCH_PROC_POOL": str(PROC_CONCURRENCY), **env},
        )

    def huey_prepared(self, target: str, n: int, nproc: int) -> tuple[list[Proc], Counter]:
        os.environ["BENCH_HUEY_FILE"] = target
        peer = self.reload_peer("peer_huey")
        peer.enqueue(n)
        peer.huey.storage.close()
        procs = [self.huey_worker(target) for _ in range(nproc)]
        return procs, Counter("sqlite", target, peer.COUNT_SQL, peer.started_sql(n) if n else None)

    @staticmethod
    def huey_worker(target: str, **env: str) -> Proc:
        return Proc(
            [
                "-m",
                "huey.bin.huey_consumer",
                "peer_huey.huey",
                "-k",
                "thread",
                "-w",
                str(HUEY_WORKERS),
                "-d",
                str(HUEY_DELAY),
                "-m",
                "0.1",
                "-C",
                "-q",
            ],
            env={"BENCH_HUEY_FILE": target, **env},
        )

    @staticmethod
    def reload_peer(name: str) -> Any:
        module = sys.modules.get(name)
        return importlib.reload(module) if module is not None else importlib.import_module(name)

    def systems(self, store: str) -> list[str]:
        peers = {"sqlite": ["huey"], "postgres": ["pgqueuer", "procrastinate"], "mysql": []}
        out = []
        if not self.tf_store[store]:
            out.append("tideflow")
        out += [p for p in peers[store] if not self.peers[p]]
        return out

    def scenario_drain(self) -> None:
        n = self.n.drain
        for store in STORES:
            if self.services[store]:
                self.skip(f"{STORE_LABEL[store]}: skipped, {self.services[store]}")
                continue
            for nproc in (1, 2):
                c = self.cell(f"drain_{nproc}proc", store, "tasks/s")
                self.tf_na(c)
                for system in self.systems(store):
                    value = self.runs(
                        lambda s=system, p=nproc, st=store: self.drain_once(s, st, p, n),
                        f"drain {STORE_LABEL[store]} {system} x{nproc} (n={n})",
                    )
                    if system == "tideflow":
                        c.tideflow = value
                    else:
                        c.peers[system] = value
                if store == "postgres":
                    c.target = ">= 1.2x pgqueuer"
                    r = c.ratios().get("pgqueuer")
                    c.met = None if r is None else r >= 1.2
                elif store == "sqlite":
                    c.target = ">= 10x huey"  # issue 12
                    r = c.ratios().get("huey")
                    c.met = None if r is None else r >= 10
                elif store == "mysql" and nproc == 1:
                    c.target = ">= 6,000 tasks/s"  # issue 12
                    c.met = None if c.tideflow is None else c.tideflow >= 6000

    def tf_na(self, c: Cell) -> None:
        if self.tf_store[c.store]:
            c.tideflow_note = "n/a (store not available)"

    # --- (b) submit --------------------------------------------------------------------------
    def submit_once(self, system: str, store: str, batch: bool) -> float:
        target = self.fresh(store, system)
        n = self.n.submit_many if batch else self.n.submit_loop
        if system == "tideflow":
            tm = self.tf_client(store, target)
            t0 = time.perf_counter()
            if batch:
                tm.submit_many([("noop", None)] * n)
            else:
                for _ in range(n):
                    tm.submit("noop")
            dt = time.perf_counter() - t0
            tm.close()
            sql = "SELECT count(*) FROM tideflow_tasks"
        elif system == "pgqueuer":
            import peer_pgqueuer

            asyncio.run(peer_pgqueuer.install(target))
            t0 = time.perf_counter()
            asyncio.run(peer_pgqueuer.enqueue(target, n, batch=batch))
            dt = time.perf_counter() - t0
            sql = "SELECT count(*) FROM pgqueuer"
        elif system == "procrastinate":
            os.environ["BENCH_PROC_DSN"] = target
            peer = self.reload_peer("peer_procrastinate")
            asyncio.run(peer.install())
            t0 = time.perf_counter()
            asyncio.run(peer.enqueue(n, batch=batch))
            dt = time.perf_counter() - t0
            sql = "SELECT count(*) FROM procrastinate_jobs"
        elif system == "huey":
            if batch:
                return float("nan")
            os.environ["BENCH_HUEY_FILE"] = target
            peer = self.reload_peer("peer_huey")
            t0 = time.perf_counter()
            peer.enqueue(n)
            dt = time.perf_counter() - t0
            peer.huey.storage.close()
            sql = "SELECT count(*) FROM task"
        else:
            raise ValueError(system)
        counter = Counter(store, target, sql)
        got = counter.count()
        counter.close()
        if got != n:
            raise RuntimeError(f"{got} rows in the database after submitting {n}")
        return n / dt

    def scenario_submit(self) -> None:
        for store in STORES:
            if self.services[store]:
                continue
            for batch in (False, True):
                name = "submit_many" if batch else "submit_loop"
                c = self.cell(name, store, "tasks/s")
                self.tf_na(c)
                for system in self.systems(store):
                    if system == "huey" and batch:
                        c.peer_notes["huey"] = "no batch enqueue"
                        continue
                    value = self.runs(
                        lambda s=system, b=batch, st=store: self.submit_once(s, st, b),
                        f"{name} {STORE_LABEL[store]} {system}",
                    )
                    if system == "tideflow":
                        c.tideflow = value
                    else:
                        c.peers[system] = value
                if store == "postgres" and batch:
                    c.target = ">= pgqueuer batch enqueue"
                    r = c.ratios().get("pgqueuer")
                    c.met = None if r is None else r >= 1.0

    # --- (c) latency -------------------------------------------------------------------------
    def latency_once(self, system: str, store: str) -> tuple[float, float]:
        target = self.fresh(store, system)
        sock, port = common.udp_listener()
        sock.settimeout(10)
        env = {"BENCH_UDP_PORT": str(port)}
        os.environ["BENCH_UDP_PORT"] = str(port)
        lat: list[float] = []
        procs: list[Proc] = []
        cleanup: list[Callable[[], None]] = []
        loop = asyncio.new_event_loop()
        try:
            if system == "tideflow":
                client = self.tf_client(store, target)
                cleanup.append(client.close)
                if store == "sqlite":
                    # in the same process: submit wakes the local worker
                    from tideflow_worker import build_manager

                    tm = build_manager(self.tf_url(store, target), TF_CONCURRENCY, 1.0)
                    tm.start()
                    cleanup.insert(0, tm.close)
                    client = tm
                else:
                    # PostgreSQL wakes on NOTIFY, so a slow poll shows NOTIFY's latency;
                    # MariaDB has no NOTIFY and relies on polling
                    poll = 1.0 if store == "postgres" else TF_POLL
                    procs.append(self.tf_worker(store, target, poll=poll, **env))
                    procs[0].wait_ready()

                def submit(seq: int) -> None:
                    client.submit("lat", seq)

            elif system in ("pgqueuer", "procrastinate"):
                if system == "pgqueuer":
                    import peer_pgqueuer as peer

                    loop.run_until_complete(peer.install(target))
                    procs.append(
                        Proc(
                            ["-m", "pgqueuer", "run", "peer_pgqueuer:create", "--batch-size", "10"],
                            env={"BENCH_PGQ_DSN": target, **env},
                        )
                    )
                else:
                    os.environ["BENCH_PROC_DSN"] = target
                    peer = self.reload_peer("peer_procrastinate")
                    loop.run_until_complete(peer.install())
                    procs.append(self.procrastinate_worker(target, **env))
                enq = peer.Enqueuer()
                loop.run_until_complete(enq.open(target))
                cleanup.append(lambda: loop.run_until_complete(enq.close()))

                def submit(seq: int) -> None:
                    loop.run_until_complete(enq.probe(seq))

            elif system == "huey":
                os.environ["BENCH_HUEY_FILE"] = target
                hpeer = self.reload_peer("peer_huey")
                procs.append(self.huey_worker(target, **env))

                def submit(seq: int) -> None:
                    hpeer.lat(seq)

            else:
                raise ValueError(system)
            # warm up: the first probe waits for the worker to start
            submit(-1)
            self.recv_probe(sock, -1, timeout=60)
            for seq in range(self.n.latency_probes):
                time.sleep(0.02 + (seq % 7) * 0.005)
                t0 = time.time()
                submit(seq)
                lat.append(self.recv_probe(sock, seq, timeout=10) - t0)
        finally:
            for p in procs:
                p.stop()
            for fn in cleanup:
                with contextlib.suppress(Exception):
                    fn()
            loop.close()
            sock.close()
            os.environ.pop("BENCH_UDP_PORT", None)
        ms = [x * 1000 for x in lat]
        return percentile(ms, 50), percentile(ms, 99)

    @staticmethod
    def recv_probe(sock: socket.socket, seq: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data, _ = sock.recvfrom(256)
            got, ts = data.decode().split()
            if int(got) == seq:
                return float(ts)
        raise TimeoutError(f"probe {seq} not started")

    def scenario_latency(self) -> None:
        plan = {
            "sqlite": ["tideflow", "huey"],
            "postgres": ["tideflow", "pgqueuer", "procrastinate"],
        }
        plan["mysql"] = ["tideflow"]
        for store in STORES:
            if self.services[store]:
                continue
            c50 = self.cell("latency_p50", store, "ms", higher=False)
            c99 = self.cell("latency_p99", store, "ms", higher=False)
            for c in (c50, c99):
                self.tf_na(c)
            for system in plan[store]:
                if system == "tideflow" and self.tf_store[store]:
                    continue
                if system != "tideflow" and self.peers[system]:
                    continue
                p50s: list[float] = []
                p99s: list[float] = []
                for _ in range(self.n.runs):
                    try:
                        p50, p99 = self.latency_once(system, store)
                    except Exception as exc:
                        print(f"    latency {store} {system}: failed: {exc!r}", flush=True)
                        break
                    p50s.append(p50)
                    p99s.append(p99)
                v50, v99 = median(p50s), median(p99s)
                if v50 is not None:
                    print(
                        f"    latency {STORE_LABEL[store]} {system}: p50 {v50:.2f} ms"
                        f" p99 {v99:.2f} ms",
                        flush=True,
                    )
                if system == "tideflow":
                    c50.tideflow, c99.tideflow = v50, v99
                else:
                    c50.peers[system], c99.peers[system] = v50, v99
            if store == "postgres":
                # issue 12: p50 at or below PgQueuer's; p99 within the earlier 50 ms bound
                c50.target, c99.target = "<= pgqueuer", "< 50 ms (NOTIFY)"
                r50 = c50.ratios().get("pgqueuer")
                c50.met = None if r50 is None else r50 <= 1.0
                c99.met = None if c99.tideflow is None else c99.tideflow < 50
            if store == "sqlite":
                c50.extra["how"] = "tideflow worker in the submitting process"

    # --- (d) claim cost ----------------------------------------------------------------------
    def fill_finished(self, store: str, target: str, tm: Any, n: int) -> None:
        """Insert ``n`` completed tasks with one bulk INSERT ... SELECT from a template row."""
        (template,) = tm.submit_many([("noop", None)])
        counter = Counter(store, target, "SELECT 1")
        conn = counter.conn
        if store == "sqlite":
            cols = [r[1] for r in conn.execute("PRAGMA table_info(tideflow_tasks)") if r[1] != "id"]
        elif store == "postgres":
            cols = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name ="
                    " 'tideflow_tasks' AND column_name <> 'id' AND is_generated = 'NEVER'"
                    " AND table_catalog = current_database()"
                )
            ]
        else:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name ="
                    " 'tideflow_tasks' AND table_schema = DATABASE() AND column_name <> 'id'"
                    " AND extra NOT LIKE '%%GENERATED%%'"
                )
                cols = [r[0] for r in cur.fetchall()]
        select = ", ".join(
            "'completed'"
            if c == "status"
            else "NULL"
            if c in ("unique_key", "worker_id")
            else f"t.{c}"
            for c in cols
        )
        names = ", ".join(cols)
        if store == "sqlite":
            conn.execute(
                f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n})"
                f" INSERT INTO tideflow_tasks ({names}) SELECT {select}"
                f" FROM tideflow_tasks t, s WHERE t.id = {template}"
            )
            conn.execute(f"DELETE FROM tideflow_tasks WHERE id = {template}")
            conn.execute("ANALYZE")
        elif store == "postgres":
            conn.execute(
                f"INSERT INTO tideflow_tasks ({names}) SELECT {select}"
                f" FROM tideflow_tasks t, generate_series(1, {n}) WHERE t.id = {template}"
            )
            conn.execute(f"DELETE FROM tideflow_tasks WHERE id = {template}")
            conn.execute("VACUUM ANALYZE tideflow_tasks")
        else:
            with conn.cursor() as cur:
                cur.execute(
                    f"INSERT INTO tideflow_tasks ({names}) SELECT {select}"
                    f" FROM tideflow_tasks t, seq_1_to_{n} WHERE t.id = {template}"
                )
                cur.execute(f"DELETE FROM tideflow_tasks WHERE id = {template}")
                cur.execute("ANALYZE TABLE tideflow_tasks")
                cur.fetchall()
        counter.close()

    def claim_once(self, store: str, finished: int) -> float:
        from tideflow.core import lifecycle
        from tideflow.core.types import ClaimRequest

        target = self.fresh(store, "tideflow")
        tm = self.tf_client(store, target)
        try:
            if finished:
                self.fill_finished(store, target, tm, finished)
            batch, claims = 100, 20
            tm.submit_many([("noop", None)] * (batch * claims))
            store_obj = tm._store
            times: list[float] = []
            for _ in range(claims):
                now = time.time()
                req = ClaimRequest(
                    worker_id="bench-claim",
                    now=now,
                    limit=batch,
                    names={"noop": None},
                    capabilities=frozenset(),
                    plan=lifecycle.claim("bench-claim", now),
                )
                t0 = time.perf_counter()
                rows = store_obj.claim(req)
                times.append(time.perf_counter() - t0)
                if len(rows) != batch:
                    raise RuntimeError(f"claimed {len(rows)} of {batch}")
            return (median(times) or 0.0) * 1000
        finally:
            tm.close()

    def scenario_claim(self) -> None:
        for store in STORES:
            if self.services[store]:
                continue
            c = self.cell("claim_batch100", store, "ms/claim", higher=False)
            self.tf_na(c)
            if self.tf_store[store]:
                continue
            empty = self.runs(
                lambda st=store: self.claim_once(st, 0), f"claim {STORE_LABEL[store]} empty"
            )
            full = self.runs(
                lambda st=store: self.claim_once(st, self.n.finished_rows),
                f"claim {STORE_LABEL[store]} with {self.n.finished_rows:,} finished",
            )
            c.tideflow = full
            c.peers["tideflow (empty table)"] = empty
            c.extra["finished_rows"] = self.n.finished_rows
            c.target = "<= 1.2x empty"
            r = c.ratios().get("tideflow (empty table)")
            c.met = None if r is None else r <= 1.2

    # --- (e) workflow ------------------------------------------------------------------------
    def workflow_once(self, store: str, fan_out: bool) -> float:
        n = self.n.children
        target = self.fresh(store, "tideflow")
        client = self.tf_client(store, target)
        proc = self.tf_worker(store, target)
        try:
            proc.wait_ready()
            if fan_out:
                counter = self.tf_counter(
                    store,
                    target,
                    "SELECT count(*) FROM tideflow_tasks WHERE name = 'parent'"
                    " AND status = 'completed'",
                )
                t0 = time.perf_counter()
                client.submit("parent", n)
                timing = wait_for_count(counter, 1, max(60, n / 50), alive=proc.alive)
                done = self.tf_counter(store, target).count()
                if done != n:
                    raise RuntimeError(f"{done} children completed, expected {n}")
            else:
                counter = self.tf_counter(store, target)
                t0 = time.perf_counter()
                client.submit_many([("noop", None)] * n)
                timing = wait_for_count(counter, n, max(60, n / 50), alive=proc.alive)
            counter.close()
            return timing.done - t0
        finally:
            proc.stop()
            client.close()

    def scenario_workflow(self) -> None:
        for store in STORES:
            if self.services[store]:
                continue
            c = self.cell("workflow_10k_children", store, "s", higher=False)
            self.tf_na(c)
            if self.tf_store[store]:
                continue
            n = self.n.children
            wf = self.runs(
                lambda st=store: self.workflow_once(st, True),
                f"fan-out/in {n} {STORE_LABEL[store]}",
            )
            plain = self.runs(
                lambda st=store: self.workflow_once(st, False), f"plain {n} {STORE_LABEL[store]}"
            )
            c.tideflow = wf
            c.peers["tideflow plain drain"] = plain
            c.extra["children"] = n
            c.target = "<= 1.5x plain"
            r = c.ratios().get("tideflow plain drain")
            c.met = None if r is None else r <= 1.5

    # --- (f) rss -----------------------------------------------------------------------------
    @staticmethod
    def settle_rss(pid: int, limit: float = 8.0) -> float | None:
        """RSS once it stopped changing (start-up imports done)."""
        last = rss_mb(pid)
        deadline = time.monotonic() + limit
        time.sleep(1.0)
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = rss_mb(pid)
            if now is None or last is None or abs(now - last) < 0.2:
                return now
            last = now
        return last

    def rss_once(self, system: str, store: str) -> tuple[float, float, float]:
        """RSS (MiB) at rest before any task, after the first chunk of 20,000, and at the end."""
        n = self.n.rss_tasks
        target = self.fresh(store, system)
        if system == "tideflow":
            client = self.tf_client(store, target)
            proc = self.tf_worker(store, target)
            proc.wait_ready()

            def submit(k: int) -> None:
                client.submit_many([("noop", None)] * k)

            counter = self.tf_counter(store, target)
            closers: list[Callable[[], None]] = [client.close]
        elif system == "pgqueuer":
            import peer_pgqueuer

            asyncio.run(peer_pgqueuer.install(target))
            proc = Proc(
                ["-m", "pgqueuer", "run", "peer_pgqueuer:create", "--batch-size", "100"],
                env={"BENCH_PGQ_DSN": target},
            )

            def submit(k: int) -> None:
                asyncio.run(peer_pgqueuer.enqueue(target, k, batch=True))

            counter = Counter(store, target, peer_pgqueuer.COUNT_SQL)
            closers = []
        elif system == "procrastinate":
            procs, counter = self.procrastinate_prepared(target, 0, 1)
            proc = procs[0]
            peer = sys.modules["peer_procrastinate"]

            def submit(k: int) -> None:
                asyncio.run(peer.enqueue(k, batch=True))

            closers = []
        elif system == "huey":
            procs, counter = self.huey_prepared(target, 0, 1)
            proc = procs[0]
            hpeer = sys.modules["peer_huey"]

            def submit(k: int) -> None:
                hpeer.enqueue(k)

            closers = [hpeer.huey.storage.close]
        else:
            raise ValueError(system)
        try:
            idle = self.settle_rss(proc.pid)
            done = 0
            chunk = 20_000
            first: float | None = None
            while done < n:
                k = min(chunk, n - done)
                submit(k)
                done += k
                wait_for_count(counter, done, max(120, k / 50), alive=proc.alive)
                if first is None:
                    time.sleep(0.5)
                    first = rss_mb(proc.pid)
            time.sleep(0.5)
            after = rss_mb(proc.pid)
            if idle is None or first is None or after is None:
                raise RuntimeError("could not read VmRSS")
            return idle, first, after
        finally:
            proc.stop()
            counter.close()
            for fn in closers:
                fn()

    def scenario_rss(self) -> None:
        for store in ("sqlite", "postgres"):
            if self.services[store]:
                continue
            ci = self.cell("rss_idle", store, "MiB", higher=False)
            cg = self.cell(f"rss_growth_{self.n.rss_tasks // 1000}k", store, "%", higher=False)
            # growth after the first 20,000 tasks: a leak keeps growing, a warm-up does not
            cs = self.cell("rss_growth_after_first_20k", store, "%", higher=False)
            for c in (ci, cg, cs):
                self.tf_na(c)
            for system in self.systems(store):
                idles: list[float] = []
                growths: list[float] = []
                steadies: list[float] = []
                for _ in range(1):  # memory is not noisy; one long run each
                    try:
                        idle, first, after = self.rss_once(system, store)
                    except Exception as exc:
                        print(f"    rss {store} {system}: failed: {exc!r}", flush=True)
                        break
                    idles.append(idle)
                    growths.append((after / idle - 1) * 100)
                    steadies.append((after / first - 1) * 100)
                vi, vg, vs = median(idles), median(growths), median(steadies)
                if vi is not None and vg is not None and vs is not None:
                    print(
                        f"    rss {STORE_LABEL[store]} {system}: idle {vi:.1f} MiB,"
                        f" growth {vg:+.1f}% after {self.n.rss_tasks:,}"
                        f" ({vs:+.1f}% after the first 20,000)",
                        flush=True,
                    )
                if system == "tideflow":
                    ci.tideflow, cg.tideflow, cs.tideflow = vi, vg, vs
                else:
                    ci.peers[system], cg.peers[system], cs.peers[system] = vi, vg, vs
            ci.target, cg.target, cs.target = "< 60 MiB", "< 10%", "< 2%"
            ci.met = None if ci.tideflow is None else ci.tideflow < 60
            cg.met = None if cg.tideflow is None else cg.tideflow < 10
            cs.met = None if cs.tideflow is None else cs.tideflow < 2

    # --- (g) raw SQL baseline ----------------------------------------------------------------
    def raw_once(self, store: str, batch: int) -> float:
        import raw_sql

        n = self.n.drain
        target = self.fresh(store, "raw")
        raw_sql.prepare(store, target, n)
        counter = Counter(store, target, raw_sql.COUNT_SQL, raw_sql.STARTED_SQL)
        proc = Proc(["raw_sql.py", store, target, "--batch", str(batch)])
        with processes([proc]):
            timing = wait_for_count(counter, n, max(60, n / 50))
        counter.close()
        return timing.rate

    def scenario_raw(self) -> None:
        drains = {(c.store): c for c in self.cells if c.scenario == "drain_1proc"}
        for store in STORES:
            if self.services[store]:
                continue
            c = self.cell("raw_sql_drain", store, "tasks/s")
            self.tf_na(c)
            for batch in (1, 10, 100):
                c.peers[f"raw batch {batch}"] = self.runs(
                    lambda b=batch, st=store: self.raw_once(st, b),
                    f"raw SQL {STORE_LABEL[store]} batch {batch} (n={self.n.drain})",
                )
            d = drains.get(store)
            c.tideflow = d.tideflow if d is not None else None
            if d is None and not self.tf_store[store]:
                c.tideflow_note = "run with drain"
            c.target = ">= 40% of raw batch 100"
            r = c.ratios().get("raw batch 100")
            c.met = None if r is None else r >= 0.4

    # --- run ---------------------------------------------------------------------------------
    def run(self) -> None:
        order = [s for s in SCENARIOS if not self.only or s in self.only]
        for scenario in order:
            print(f"== {scenario}", flush=True)
            t0 = time.perf_counter()
            getattr(self, f"scenario_{scenario}")()
            print(f"   ({time.perf_counter() - t0:.1f}s)", flush=True)
        for store, name in sorted(self.created):
            if store == "postgres":
                common.drop_pg_database(name)
            else:
                common.drop_mysql_database(name)


# --- output --------------------------------------------------------------------------------------
def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit in ("tasks/s",):
        return f"{value:,.0f}"
    if unit == "%":
        return f"{value:+.1f}"
    return f"{value:,.2f}"


def table(cells: list[Cell]) -> str:
    header = (
        "scenario",
        "store",
        "unit",
        "tideflow",
        "peers",
        "ratio tideflow/peer",
        "target",
        "met",
    )
    rows = [header]
    for c in cells:
        tf = c.tideflow_note if c.tideflow is None and c.tideflow_note else fmt(c.tideflow, c.unit)
        peers = "; ".join(f"{name} {fmt(v, c.unit)}" for name, v in c.peers.items()) or "; ".join(
            f"{k}: {v}" for k, v in c.peer_notes.items()
        )
        ratios = "; ".join(f"{name} {r:.2f}x" for name, r in c.ratios().items() if r is not None)
        met = "" if not c.target else ("yes" if c.met else "NO" if c.met is False else "?")
        rows.append((c.scenario, STORE_LABEL[c.store], c.unit, tf, peers, ratios, c.target, met))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "load_average_at_start": os.getloadavg(),
    }
    for pkg in ("tideflow", "psycopg", "PyMySQL", "asyncpg", "pgqueuer", "procrastinate", "huey"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            out[pkg] = version(pkg)
    with contextlib.suppress(Exception), common.pg_connect(common.PG_URL) as conn:
        out["postgresql_server"] = conn.execute("SHOW server_version").fetchone()[0]
    with contextlib.suppress(Exception):
        conn = common.mysql_connect(common.MYSQL_URL)
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            out["mariadb_server"] = cur.fetchone()[0]
        conn.close()
    return out


def settings_text() -> dict[str, str]:
    return {
        "tideflow": f"TaskManager(url, max_concurrent_tasks={TF_CONCURRENCY},"
        f" poll_interval={TF_POLL}) ({DRAIN_CONCURRENCY} slots for the drains), async no-op"
        " handler; latency on PostgreSQL and SQLite"
        " uses poll_interval=1.0 (NOTIFY / in-process wake-up), on MariaDB the same 0.05",
        "pgqueuer": "pgqueuer run (asyncpg driver), --batch-size 100 (1 proc) / 1000 (2 procs);"
        " latency --batch-size 10",
        "procrastinate": f"procrastinate worker --concurrency {PROC_CONCURRENCY}, psycopg pool"
        f" max_size {PROC_CONCURRENCY}, LISTEN/NOTIFY on, async no-op task",
        "huey": f"SqliteHuey file (journal_mode=wal), huey_consumer -k thread -w {HUEY_WORKERS}"
        f" -d {HUEY_DELAY} -m 0.1; no-op returns True so its result row counts as finished",
        "raw": "bare SQL, claim txn (SKIP LOCKED where supported) + finish txn per batch",
        "timing": "drain rate = N / (last finished row - first claim), both seen by querying the"
        " database every 10 ms (worker start-up excluded); RSS figures from one run each",
    }


def to_json(bench: Bench) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for c in bench.cells:
        results.setdefault(c.scenario, {})[c.store] = {
            "unit": c.unit,
            "higher_is_better": c.higher_is_better,
            "tideflow": c.tideflow,
            "tideflow_note": c.tideflow_note,
            "peers": c.peers,
            "peer_notes": c.peer_notes,
            "ratios": c.ratios(),
            "target": c.target,
            "met": c.met,
            **({"extra": c.extra} if c.extra else {}),
        }
    return {
        "quick": bench.quick,
        "runs_per_figure": bench.n.runs,
        "sizes": bench.n.__dict__,
        "machine": versions(),
        "settings": settings_text(),
        "skipped": bench.skips,
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one run per figure")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    parser.add_argument(
        "--only", metavar="SCENARIO", help=f"comma-separated subset of {', '.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--stores", metavar="STORE", help=f"comma-separated subset of {', '.join(STORES)}"
    )
    parser.add_argument(
        "--peers", metavar="PEER", help=f"comma-separated subset of {', '.join(PEERS)}, or none"
    )
    parser.add_argument("--runs", type=int, metavar="N", help="runs per figure (median)")
    args = parser.parse_args(argv)
    peers = None
    if args.peers is not None:
        peers = set(filter(None, args.peers.split(","))) - {"none"}
        if peers - set(PEERS):
            parser.error(f"unknown peer(s) {', '.join(sorted(peers - set(PEERS)))}")
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    stores = set(filter(None, (args.stores or "").split(",")))
    if stores - set(STORES):
        parser.error(f"unknown store(s) {', '.join(sorted(stores - set(STORES)))}")
    only = set(filter(None, (args.only or "").split(",")))
    unknown = only - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {SCENARIOS}")
    t0 = time.perf_counter()
    bench = Bench(args.quick, only, stores, peers, args.runs)
    print(
        f"tideflow bench ({'quick' if args.quick else 'full'}), {os.cpu_count()} cores", flush=True
    )
    bench.run()
    data = to_json(bench)
    data["elapsed_s"] = round(time.perf_counter() - t0, 1)
    print()
    print(table(bench.cells))
    print()
    for name, text in data["settings"].items():
        print(f"  {name}: {text}")
    for line in bench.skips:
        print(f"  skipped: {line}")
    print(
        f"  elapsed {data['elapsed_s']}s; ratios are tideflow / peer (for ms and s lower is better)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
