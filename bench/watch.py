"""What watching costs: the dashboard's reads with a large history, and readers beside a drain.

    python bench/watch.py [--stores sqlite,postgres,mysql] [--only latency,drain]
                          [--small 10000] [--rows sqlite=1000000,postgres=10000000,mysql=1000000]
                          [--requests 20] [--readers 20] [-n 20000] [--runs 3]

**latency**: per store, two fresh databases, one with ``--small`` finished tasks and one with
``--rows`` of them (inserted here with one set-based ``INSERT ... SELECT`` of raw SQL:
``generate_series`` on PostgreSQL, a recursive CTE on SQLite, the ``seq_1_to_N`` table on
MariaDB, copying a template row that tideflow wrote; then the kept counts are refilled the way
migration 4 fills them). Both also hold the same recent activity: 1,000 tasks finished within
the last hour and 20 pending. A ``tideflow dashboard`` process serves each; the figures are the
median (and 90th percentile) milliseconds of ``GET /metrics`` and ``GET /`` (the overview, over
HTTP, no live stream open so nothing is cached) and of one SSE tick (``get_change_mark()``, the
one read a tick makes for all open streams, timed in-process), plus the store reads behind them.

**drain**: per store (SQLite file and PostgreSQL), ``-n`` no-op tasks drained by one
``bench/tideflow_worker.py`` process (200 slots, as ``bench/cost.py``), with a dashboard process
on the same database, alone and with ``--readers`` readers (threads here): each keeps an SSE
stream (``/events/stream``) open and fetches the overview once a second, as an open overview page
in a browser does while the database changes. Runs alternate (alone, readers, alone, ...); the
figures are medians of the drain rate (first claim to last completion, counted from the kept
counts) and of the worker's and the dashboard's CPU per task.

Two shared cores and other users' jobs make single runs swing by ±20%: compare the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import Proc, percentile
from cost import cpu_seconds

from tideflow import TaskManager
from tideflow.store.sql.base import INSERT_COLUMNS

DEFAULT_ROWS = {"sqlite": 1_000_000, "postgres": 10_000_000, "mysql": 1_000_000}
RECENT = 1_000  # tasks finished within the last hour, in every database
PENDING = 20
NAMES = 10
COUNTS_TABLE = "tideflow_task_counts"
REFILL = (
    f"INSERT INTO {COUNTS_TABLE} (name, status, shard, n)"
    " SELECT name, status, 0, COUNT(*) FROM tideflow_tasks GROUP BY name, status"
)


# --- raw SQL: filling a database with finished tasks -----------------------------------------
def _concat(kind: str, *parts: str) -> str:
    return f"CONCAT({', '.join(parts)})" if kind == "mysql" else " || ".join(parts)


def _select_list(kind: str, g: str, first_id: int, newest: float, spacing: float) -> str:
    """The columns of a finished copy of the template row ``t`` for series value ``g`` (1..n):
    id ``first_id + g``, its own root, one of :data:`NAMES` names, 1 in 20 permanently failed,
    finished ``spacing`` seconds apart going back from ``newest``."""
    at = f"({newest!r} - {g} * {spacing!r})"
    exprs = {
        "name": _concat(kind, "'job'", f"CAST({g} % {NAMES} AS CHAR)")
        if kind == "mysql"
        else _concat(kind, "'job'", f"CAST({g} % {NAMES} AS TEXT)"),
        "status": f"CASE WHEN {g} % 20 = 0 THEN 'permanently_failed' ELSE 'completed' END",
        "root_id": f"{first_id} + {g}",
        "created_at": f"{at} - 1",
        "next_run_time": f"{at} - 1",
        "start_time": f"{at} - 0.5",
        "last_active_time": at,
        "last_event_time": at,
        "last_event_type": "'task_completed'",
        "attempt": "1",
        "unique_key": "NULL",
    }
    return ", ".join([f"{first_id} + {g}", *(exprs.get(c, f"t.{c}") for c in INSERT_COLUMNS)])


def fill_finished(
    kind: str, target: str, template: int, first_id: int, n: int, newest: float, spacing: float
) -> None:
    """Insert ``n`` finished tasks, ids from ``first_id + 1``, copies of task ``template``."""
    columns = "id, " + ", ".join(INSERT_COLUMNS)
    if kind == "postgres":
        with common.pg_connect(target) as conn:
            conn.execute(
                f"INSERT INTO tideflow_tasks ({columns})"
                f" SELECT {_select_list(kind, 'g', first_id, newest, spacing)}"
                f" FROM tideflow_tasks t CROSS JOIN generate_series(1, {n}) AS g"
                f" WHERE t.id = {template}"
            )
            conn.execute(
                "SELECT setval(pg_get_serial_sequence('tideflow_tasks', 'id'),"
                " (SELECT MAX(id) FROM tideflow_tasks))"
            )
    elif kind == "sqlite":
        conn = sqlite3.connect(target, timeout=60, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                f"WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {n})"
                f" INSERT INTO tideflow_tasks ({columns})"
                f" SELECT {_select_list(kind, 's.g', first_id, newest, spacing)}"
                f" FROM s CROSS JOIN tideflow_tasks t WHERE t.id = {template}"
            )
            conn.execute("COMMIT")
        finally:
            conn.close()
    else:
        conn = common.mysql_connect(target, database=_mysql_db(target))
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f"INSERT INTO tideflow_tasks ({columns})"
                    f" SELECT {_select_list(kind, 's.seq', first_id, newest, spacing)}"
                    f" FROM seq_1_to_{n} s STRAIGHT_JOIN tideflow_tasks t"
                    f" WHERE t.id = {template}"
                )
        finally:
            conn.close()


def _mysql_db(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?")[0]


def raw(kind: str, target: str, *statements: str) -> None:
    """Run ``statements`` in one transaction on a plain connection."""
    if kind == "postgres":
        with common.pg_connect(target, autocommit=False) as conn:
            for s in statements:
                conn.execute(s)
            conn.commit()
    elif kind == "sqlite":
        conn = sqlite3.connect(target, timeout=60, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for s in statements:
                conn.execute(s)
            conn.execute("COMMIT")
        finally:
            conn.close()
    else:
        conn = common.mysql_connect(target, database=_mysql_db(target), autocommit=False)
        try:
            with conn.cursor() as cur:
                for s in statements:
                    cur.execute(s)
            conn.commit()
        finally:
            conn.close()


def has_counts(tm: TaskManager) -> bool:
    """Whether the schema keeps counts (version 4 on)."""
    return int(tm._store.schema_version()) >= 4


def fresh(kind: str, tmp: Path, name: str) -> tuple[str, str]:
    """(tideflow url, plain target) of a fresh database."""
    if kind == "sqlite":
        path = str(common.fresh_sqlite_file(tmp, name))
        return f"sqlite:{path}", path
    url = (
        common.fresh_pg_database(name) if kind == "postgres" else common.fresh_mysql_database(name)
    )
    return url, url


def drop(kind: str, name: str) -> None:
    if kind == "postgres":
        common.drop_pg_database(name)
    elif kind == "mysql":
        common.drop_mysql_database(name)


def history_database(kind: str, tmp: Path, name: str, rows: int) -> str:
    """A database with ``rows`` old finished tasks, :data:`RECENT` finished in the last hour
    and :data:`PENDING` pending ones; returns its tideflow url."""
    url, target = fresh(kind, tmp, name)
    tm = TaskManager(url, allow_unregistered=True)
    tm.setup()
    template = tm.submit("job0")
    now = time.time()
    started = time.perf_counter()
    # old history: finished before the last hour, 0.05 s apart going back
    fill_finished(kind, target, template, 1000, rows, now - 7200, 0.05)
    fill_finished(kind, target, template, 1000 + rows, RECENT, now - 60, 3000 / RECENT)
    if has_counts(tm):
        raw(kind, target, f"DELETE FROM {COUNTS_TABLE}", REFILL)
    tm.delete_tasks(ids=[template])  # through the store: the counts follow
    tm.submit_many([(f"job{i % NAMES}", None) for i in range(PENDING)])
    if kind == "postgres":
        with common.pg_connect(target) as conn:
            conn.execute("VACUUM ANALYZE")
    elif kind == "mysql":
        raw(kind, target, "ANALYZE TABLE tideflow_tasks")
    took = time.perf_counter() - started
    print(f"  {kind}: {rows:,} finished rows inserted in {took:.0f}s", flush=True)
    tm.close()
    return url


# --- a dashboard process ---------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dashboard:
    """``tideflow dashboard --public-read`` on ``url``, in its own process."""

    def __init__(self, url: str) -> None:
        self.port = free_port()
        tideflow = Path(sys.executable).with_name("tideflow")
        self.popen = subprocess.Popen(
            [str(tideflow), "dashboard", "--db", url, "--port", str(self.port), "--public-read"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL if not os.environ.get("BENCH_DEBUG") else None,
        )
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.get("/metrics")[0] == 200:
                    return
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the dashboard did not start")
            time.sleep(0.1)

    def get(self, path: str, conn: http.client.HTTPConnection | None = None) -> tuple[int, float]:
        """(status, seconds) of one GET, the body read."""
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            started = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            return response.status, time.perf_counter() - started
        finally:
            if own:
                conn.close()

    def cpu(self) -> float:
        return cpu_seconds(self.popen.pid)

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


# --- latency ---------------------------------------------------------------------------------
def timed(fn: Any, times: int) -> list[float]:
    out = []
    for _ in range(times):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:7.2f} ms (p90 {percentile(values, 90) * 1e3:7.2f})"


def latency(kind: str, rows: int, small: int, requests: int, tmp: Path) -> None:
    print(f"{kind}: building databases of {small:,} and {rows:,} finished tasks", flush=True)
    results: dict[int, dict[str, list[float]]] = {}
    for size in (small, rows):
        name = f"tideflow_watch_{size}_{os.getpid()}"
        url = history_database(kind, tmp, name, size)
        dash = Dashboard(url)
        tm = TaskManager(url, allow_unregistered=True)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", dash.port, timeout=120)
            for path in ("/metrics", "/"):  # warm up
                assert dash.get(path, conn)[0] == 200
            figures = {
                "/metrics": [dash.get("/metrics", conn)[1] for _ in range(requests)],
                "/ (overview)": [dash.get("/", conn)[1] for _ in range(requests)],
                "SSE tick (change mark)": timed(tm.get_change_mark, requests),
                "  get_task_stats": timed(tm.get_task_stats, requests),
                "  get_throughput(1h)": timed(partial(tm.get_throughput, 3600, 60), requests),
                "  get_unserved_tasks": timed(tm.get_unserved_tasks, requests),
            }
            conn.close()
            results[size] = figures
        finally:
            tm.close()
            dash.stop()
            drop(kind, name)
    for what in results[small]:
        print(
            f"  {what:24} {small:>10,}: {ms(results[small][what])}"
            f"   {rows:>10,}: {ms(results[rows][what])}",
            flush=True,
        )


# --- drain beside readers --------------------------------------------------------------------
class Readers:
    """``count`` readers of a dashboard: each keeps an SSE stream open and fetches the overview
    once a second (at a random phase)."""

    def __init__(self, dash: Dashboard, count: int) -> None:
        self.dash = dash
        self.stop = threading.Event()
        self.pages: list[float] = []
        self.events = 0
        self.errors = 0
        self._lock = threading.Lock()
        self._conns: list[http.client.HTTPConnection] = []
        self.threads = []
        for _ in range(count):
            self.threads.append(threading.Thread(target=self._poll, daemon=True))
            self.threads.append(threading.Thread(target=self._stream, daemon=True))
        for t in self.threads:
            t.start()

    def _poll(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.dash.port, timeout=60)
        due = time.monotonic() + random.random()
        while not self.stop.is_set():
            wait = due - time.monotonic()
            if wait > 0 and self.stop.wait(wait):
                break
            due += 1.0
            try:
                status, took = self.dash.get("/", conn)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.dash.port, timeout=60)
                with self._lock:
                    self.errors += 1
                continue
            with self._lock:
                self.pages.append(took)
                if status != 200:
                    self.errors += 1
        conn.close()

    def _stream(self) -> None:
        while not self.stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.dash.port, timeout=120)
            with self._lock:
                self._conns.append(conn)
            try:
                conn.request("GET", "/events/stream")
                response = conn.getresponse()
                while not self.stop.is_set():
                    line = response.fp.readline()
                    if not line:
                        break  # the stream's max age: reconnect, as EventSource does
                    if line.startswith(b"event:"):
                        with self._lock:
                            self.events += 1
            except (OSError, http.client.HTTPException, ValueError, AttributeError):
                if not self.stop.is_set():
                    with self._lock:
                        self.errors += 1
            finally:
                conn.close()

    def close(self) -> None:
        self.stop.set()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(Exception):
                    assert conn.sock is not None
                    conn.sock.shutdown(socket.SHUT_RDWR)
        for t in self.threads:
            t.join(5)


def completed_sql(tm: TaskManager) -> str:
    if has_counts(tm):
        return f"SELECT COALESCE(SUM(n), 0) FROM {COUNTS_TABLE} WHERE status = 'completed'"
    return "SELECT count(*) FROM tideflow_tasks WHERE status = 'completed'"


def one_drain(kind: str, n: int, readers: int, tmp: Path) -> tuple[float, float, float, str]:
    """(tasks/s, worker µs/task, dashboard µs/task, notes) of one drain of ``n`` no-ops."""
    name = f"tideflow_watch_drain_{os.getpid()}"
    url, target = fresh(kind, tmp, name)
    tm = TaskManager(url, allow_unregistered=True)
    tm.setup()
    tm.submit_many([("noop", None)] * n)
    counter = common.Counter(kind, target, completed_sql(tm))
    tm.close()
    dash = Dashboard(url)
    crowd = Readers(dash, readers) if readers else None
    if crowd is not None:
        time.sleep(2)  # every reader has its stream open and has fetched a page
    proc = Proc(["tideflow_worker.py", url, "--concurrency", "200"])
    try:
        proc.wait_ready()
        w0, d0, t0 = cpu_seconds(proc.pid), dash.cpu(), time.perf_counter()
        r0 = sum(os.times()[:2])
        while counter.count() < n:
            if not proc.alive():
                raise RuntimeError("worker exited early")
            time.sleep(0.02)
        w1, d1, t1 = cpu_seconds(proc.pid), dash.cpu(), time.perf_counter()
        r1 = sum(os.times()[:2])
    finally:
        notes = ""
        if crowd is not None:
            crowd.close()
            pages = crowd.pages
            notes = (
                f"{len(pages)} pages (median {statistics.median(pages) * 1e3:.0f} ms),"
                f" {crowd.events} stream events, {crowd.errors} errors"
                if pages
                else f"no pages, {crowd.errors} errors"
            )
        proc.stop()
        counter.close()
        dash.stop()
        drop(kind, name)
    notes += f"; readers' and counter's own CPU {(r1 - r0) / n * 1e6:.0f} µs/task"
    return n / (t1 - t0), (w1 - w0) / n * 1e6, (d1 - d0) / n * 1e6, notes


def drains(kind: str, n: int, readers: int, runs: int, tmp: Path) -> None:
    alone: list[tuple[float, float, float, str]] = []
    crowded: list[tuple[float, float, float, str]] = []
    for _ in range(runs):
        alone.append(one_drain(kind, n, 0, tmp))
        crowded.append(one_drain(kind, n, readers, tmp))
        print(
            f"  {kind}: alone {alone[-1][0]:7,.0f}/s   with {readers} readers"
            f" {crowded[-1][0]:7,.0f}/s ({crowded[-1][3]})",
            flush=True,
        )
    for label, got in (("alone", alone), (f"{readers} readers", crowded)):
        rate, worker, dash = (statistics.median(r[i] for r in got) for i in range(3))
        print(
            f"{kind:9} {label:11} {rate:7,.0f} tasks/s  worker {worker:5.1f} µs/task"
            f"  dashboard {dash:5.1f} µs/task",
            flush=True,
        )
    a = statistics.median(r[0] for r in alone)
    c = statistics.median(r[0] for r in crowded)
    pairs = statistics.median(1 - x[0] / y[0] for x, y in zip(crowded, alone, strict=True))
    print(
        f"{kind:9} readers slow the drain by {(1 - c / a) * 100:+.1f}% (medians of {runs} runs;"
        f" median of the {runs} back-to-back pairs: {pairs * 100:+.1f}%)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stores", default="sqlite,postgres,mysql")
    parser.add_argument("--only", default="latency,drain")
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument(
        "--rows",
        default=",".join(f"{k}={v}" for k, v in DEFAULT_ROWS.items()),
        help="finished rows of the large database per store, e.g. postgres=10000000",
    )
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--readers", type=int, default=20)
    parser.add_argument("-n", type=int, default=20_000, help="tasks per drain")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows = dict(DEFAULT_ROWS)
    for part in filter(None, args.rows.split(",")):
        key, _, value = part.partition("=")
        rows[key] = int(value)
    stores = args.stores.split(",")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        if "latency" in args.only:
            for kind in stores:
                latency(kind, rows[kind], args.small, args.requests, Path(tmp))
        if "drain" in args.only:
            for kind in stores:
                if kind != "mysql":  # the target names SQLite and PostgreSQL
                    drains(kind, args.n, args.readers, args.runs, Path(tmp))


if __name__ == "__main__":
    main()
