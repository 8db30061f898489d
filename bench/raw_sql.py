"""Raw-SQL baseline: the same claim-and-finish work as bare batched SQL with the plain driver.

One transaction claims a batch (``pending`` -> ``running``, ``SKIP LOCKED`` where the database
has it), a second marks the batch ``done``; the handler is a no-op. This is the ceiling a queue
built on the same database and driver can approach.

Worker: ``python bench/raw_sql.py KIND TARGET --batch B`` (KIND sqlite|postgres|mysql; TARGET a
file path or URL). It prints READY, drains until a claim comes back empty, and exits.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import time
from typing import Any
from urllib.parse import urlsplit

from common import mysql_connect, pg_connect

COUNT_SQL = "SELECT count(*) FROM raw_jobs WHERE status = 'done'"
STARTED_SQL = "SELECT count(*) FROM (SELECT 1 FROM raw_jobs WHERE status <> 'pending' LIMIT 1) x"


def prepare(kind: str, target: str, n: int) -> None:
    """Create the jobs table and insert ``n`` pending rows with bulk SQL."""
    if kind == "sqlite":
        conn = sqlite3.connect(target, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "CREATE TABLE raw_jobs (id INTEGER PRIMARY KEY, status TEXT NOT NULL,"
            " payload TEXT, worker TEXT, updated REAL)"
        )
        conn.execute("CREATE INDEX raw_jobs_due ON raw_jobs (id) WHERE status = 'pending'")
        conn.execute(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?)"
            " INSERT INTO raw_jobs (status, payload, updated) SELECT 'pending', '{}', 0 FROM s",
            (n,),
        )
        conn.close()
    elif kind == "postgres":
        with pg_connect(target) as conn:
            conn.execute(
                "CREATE TABLE raw_jobs (id BIGSERIAL PRIMARY KEY, status TEXT NOT NULL,"
                " payload TEXT, worker TEXT, updated DOUBLE PRECISION)"
            )
            conn.execute("CREATE INDEX raw_jobs_due ON raw_jobs (id) WHERE status = 'pending'")
            conn.execute(
                "INSERT INTO raw_jobs (status, payload, updated)"
                " SELECT 'pending', '{}', 0 FROM generate_series(1, %s)",
                (n,),
            )
            conn.execute("ANALYZE raw_jobs")
    else:
        conn = mysql_connect(target, database=urlsplit(target).path.lstrip("/"))
        with conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE raw_jobs (id BIGINT AUTO_INCREMENT PRIMARY KEY,"
                " status VARCHAR(16) NOT NULL, payload TEXT, worker VARCHAR(64),"
                " updated DOUBLE, KEY raw_jobs_due (status, id)) ENGINE=InnoDB"
            )
            cur.execute(
                "INSERT INTO raw_jobs (status, payload, updated)"
                f" SELECT 'pending', '{{}}', 0 FROM seq_1_to_{int(n)}"
            )
        conn.close()


def _in(ids: list[int], mark: str) -> str:
    return ", ".join([mark] * len(ids))


def run_sqlite(path: str, batch: int, me: str) -> int:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    done = 0
    while True:
        conn.execute("BEGIN IMMEDIATE")
        ids = [
            r[0]
            for r in conn.execute(
                "UPDATE raw_jobs SET status = 'running', worker = ?, updated = ? WHERE id IN"
                " (SELECT id FROM raw_jobs WHERE status = 'pending' ORDER BY id LIMIT ?)"
                " RETURNING id",
                (me, time.time(), batch),
            ).fetchall()
        ]
        conn.execute("COMMIT")
        if not ids:
            return done
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            f"UPDATE raw_jobs SET status = 'done', updated = ? WHERE id IN ({_in(ids, '?')})",
            (time.time(), *ids),
        )
        conn.execute("COMMIT")
        done += len(ids)


def run_postgres(url: str, batch: int, me: str) -> int:
    conn = pg_connect(url, autocommit=False)
    done = 0
    while True:
        ids = [
            r[0]
            for r in conn.execute(
                "UPDATE raw_jobs SET status = 'running', worker = %s, updated = %s WHERE id IN"
                " (SELECT id FROM raw_jobs WHERE status = 'pending' ORDER BY id LIMIT %s"
                " FOR UPDATE SKIP LOCKED) RETURNING id",
                (me, time.time(), batch),
            ).fetchall()
        ]
        conn.commit()
        if not ids:
            conn.close()
            return done
        conn.execute(
            "UPDATE raw_jobs SET status = 'done', updated = %s WHERE id = ANY(%s)",
            (time.time(), ids),
        )
        conn.commit()
        done += len(ids)


def run_mysql(url: str, batch: int, me: str) -> int:
    conn: Any = mysql_connect(url, database=urlsplit(url).path.lstrip("/"), autocommit=False)
    done = 0
    with conn.cursor() as cur:
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        while True:
            cur.execute(
                "SELECT id FROM raw_jobs WHERE status = 'pending' ORDER BY id LIMIT %s"
                " FOR UPDATE SKIP LOCKED",
                (batch,),
            )
            ids = [r[0] for r in cur.fetchall()]
            if not ids:
                conn.commit()
                conn.close()
                return done
            cur.execute(
                "UPDATE raw_jobs SET status = 'running', worker = %s, updated = %s"
                f" WHERE id IN ({_in(ids, '%s')})",
                (me, time.time(), *ids),
            )
            conn.commit()
            cur.execute(
                f"UPDATE raw_jobs SET status = 'done', updated = %s WHERE id IN ({_in(ids, '%s')})",
                (time.time(), *ids),
            )
            conn.commit()
            done += len(ids)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["sqlite", "postgres", "mysql"])
    parser.add_argument("target")
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    me = f"raw-{os.getpid()}"
    print("READY", flush=True)
    run = {"sqlite": run_sqlite, "postgres": run_postgres, "mysql": run_mysql}[args.kind]
    run(args.target, args.batch, me)


if __name__ == "__main__":
    main()
