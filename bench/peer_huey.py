"""Huey peer: a SqliteHuey on a file (WAL), run by ``huey_consumer`` with threads.

Worker: ``python -m huey.bin.huey_consumer peer_huey.huey -k thread -w W`` with
``BENCH_HUEY_FILE`` set. The no-op task returns True so Huey stores its result: finished tasks
are counted as result rows in Huey's ``kv`` table.
"""

from __future__ import annotations

import os

from common import report_start
from huey import SqliteHuey

COUNT_SQL = "SELECT count(*) FROM kv"


def started_sql(n: int) -> str:
    """1 once the consumer took a message off the queue of ``n``."""
    return f"SELECT CASE WHEN count(*) < {int(n)} THEN 1 ELSE 0 END FROM task"


huey = SqliteHuey(
    "bench", filename=os.environ.get("BENCH_HUEY_FILE", "/tmp/huey-bench.db"), journal_mode="wal"
)


@huey.task()
def noop() -> bool:
    return True


@huey.task()
def lat(seq: int) -> None:
    report_start(seq)


def enqueue(n: int) -> None:
    for _ in range(n):
        noop()
