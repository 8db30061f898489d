"""Shared helpers of the benchmark suite: services, databases, counting, processes, stats.

Everything here is used both by ``bench/run.py`` (the orchestrator) and by the worker scripts it
starts as separate processes. Completion is always verified by counting finished rows in the
database with the plain driver (psycopg, sqlite3, pymysql), never by reading logs.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

BENCH_DIR = Path(__file__).resolve().parent
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")


# --- statistics ------------------------------------------------------------------------------
def median(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def percentile(values: Sequence[float], pct: float) -> float:
    data = sorted(values)
    if not data:
        return float("nan")
    k = (len(data) - 1) * pct / 100.0
    lo, hi = int(k), min(int(k) + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


# --- urls ------------------------------------------------------------------------------------
def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database of the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def pg_connect(url: str, autocommit: bool = True) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=autocommit, connect_timeout=3)


def mysql_connect(url: str, database: str | None = None, autocommit: bool = True) -> Any:
    import pymysql

    parts = urlsplit(url)
    return pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        database=database if database is not None else (parts.path.lstrip("/") or None),
        autocommit=autocommit,
        connect_timeout=3,
    )


# --- services --------------------------------------------------------------------------------
def pg_available() -> str | None:
    """None when the PostgreSQL server answers, else why not."""
    try:
        with pg_connect(PG_URL) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:
        return f"PostgreSQL down ({type(exc).__name__})"


def mysql_available() -> str | None:
    try:
        conn = mysql_connect(MYSQL_URL)
        conn.close()
        return None
    except Exception as exc:
        return f"MariaDB down ({type(exc).__name__})"


def tideflow_store_available(kind: str) -> str | None:
    """None when tideflow's store for ``kind`` ('postgres'/'mysql') imports, else why not."""
    try:
        if kind == "postgres":
            import tideflow.store.sql.postgres
        elif kind == "mysql":
            import tideflow.store.sql.mysql  # noqa: F401
    except Exception as exc:
        return f"store not available ({type(exc).__name__})"
    return None


# --- fresh databases -------------------------------------------------------------------------
def fresh_pg_database(name: str) -> str:
    """Drop and create database ``name`` on the bench server; returns its URL."""
    with pg_connect(PG_URL) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_database(PG_URL, name)


def drop_pg_database(name: str) -> None:
    with contextlib.suppress(Exception), pg_connect(PG_URL) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fresh_mysql_database(name: str) -> str:
    conn = mysql_connect(MYSQL_URL)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
    return with_database(MYSQL_URL, name)


def drop_mysql_database(name: str) -> None:
    with contextlib.suppress(Exception):
        conn = mysql_connect(MYSQL_URL)
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()


def fresh_sqlite_file(directory: Path, name: str) -> Path:
    path = directory / f"{name}.db"
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(str(path) + suffix)
    return path


# --- counting finished rows ------------------------------------------------------------------
class Counter:
    """Counts finished rows with one SQL query on its own plain connection."""

    def __init__(self, kind: str, target: str, sql: str, started_sql: str | None = None) -> None:
        self.kind, self.sql, self.started_sql = kind, sql, started_sql
        if kind == "sqlite":
            self.conn: Any = sqlite3.connect(target, timeout=30, isolation_level=None)
        elif kind == "postgres":
            self.conn = pg_connect(target)
        elif kind == "mysql":
            parts = urlsplit(target)
            self.conn = mysql_connect(target, database=parts.path.lstrip("/"))
        else:
            raise ValueError(kind)

    def _scalar(self, sql: str) -> int:
        if self.kind == "mysql":
            with self.conn.cursor() as cur:
                cur.execute(sql)
                return int(cur.fetchone()[0])
        try:
            return int(self.conn.execute(sql).fetchone()[0])
        except sqlite3.OperationalError:  # table not created yet
            return 0

    def count(self) -> int:
        return self._scalar(self.sql)

    def started(self) -> bool:
        """True once a worker claimed something (``started_sql`` > 0) or finished a row."""
        if self.started_sql is not None and self._scalar(self.started_sql) > 0:
            return True
        return self.count() > 0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


@dataclass
class DrainTiming:
    """Rate measured from the first claim (or first finished row) to the last finished row."""

    n: int
    first_seen: float
    done: float
    count_at_first: int

    @property
    def rate(self) -> float:
        span = self.done - self.first_seen
        remaining = self.n - self.count_at_first
        if remaining <= 0 or span <= 0:
            return float("nan")
        return remaining / span


def wait_for_count(
    counter: Counter,
    n: int,
    timeout: float,
    interval: float = 0.01,
    alive: Callable[[], bool] | None = None,
) -> DrainTiming:
    """Poll ``counter`` until it reaches ``n``; time from the first claim to the last finished row.

    With ``counter.started_sql`` the clock starts when the first claim is visible in the database
    (else at the first finished row, and the rows already finished then are left out). Either way
    the worker's start-up (imports, connecting), which differs between systems and would dominate
    short runs, is not timed."""
    deadline = time.perf_counter() + timeout
    first_seen: float | None = None
    count_at_first = 0
    while True:
        now = time.perf_counter()
        if first_seen is None and counter.started_sql is not None:
            if counter.started():
                first_seen = now
            c = 0
        else:
            c = counter.count()
            if c > 0 and first_seen is None:
                first_seen, count_at_first = now, c
        if c >= n:
            assert first_seen is not None
            return DrainTiming(n, first_seen, now, count_at_first)
        if now > deadline:
            raise TimeoutError(f"only {c} of {n} finished after {timeout:.0f}s")
        if alive is not None and not alive() and counter.count() < n:
            raise RuntimeError(f"worker exited early with {c} of {n} finished")
        time.sleep(interval)


# --- processes -------------------------------------------------------------------------------
def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH_DIR), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


class Proc:
    """One worker process (started with ``sys.executable``)."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.args = [sys.executable, *args]
        self.log = open(os.devnull, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.args,
            env=bench_env(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log if not os.environ.get("BENCH_DEBUG") else None,
            cwd=str(BENCH_DIR),
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait for the line READY on stdout (tideflow and raw workers print it)."""
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if not line:
                raise RuntimeError(f"worker exited before READY: {' '.join(self.args[1:])}")
            if line.strip() == b"READY":
                return
        raise TimeoutError("worker not ready")

    def stop(self, timeout: float = 15) -> None:
        if self.alive():
            with contextlib.suppress(Exception):
                assert self.popen.stdin is not None
                self.popen.stdin.close()
            with contextlib.suppress(Exception):
                self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        for stream in (self.popen.stdin, self.popen.stdout):
            with contextlib.suppress(Exception):
                if stream is not None:
                    stream.close()
        self.log.close()


@contextlib.contextmanager
def processes(procs: list[Proc]) -> Iterator[list[Proc]]:
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()


def rss_mb(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB, from /proc/<pid>/status (VmRSS)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


# --- latency probe ---------------------------------------------------------------------------
def udp_listener() -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


_udp_sock: socket.socket | None = None


def report_start(seq: Any) -> None:
    """Called by latency handlers: send ``seq`` and the handler start time to the orchestrator."""
    global _udp_sock
    now = time.time()
    port = os.environ.get("BENCH_UDP_PORT")
    if not port:
        return
    if _udp_sock is None:
        _udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _udp_sock.sendto(f"{seq} {now!r}".encode(), ("127.0.0.1", int(port)))
