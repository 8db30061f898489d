"""PgQueuer peer: the app factory for ``pgqueuer run`` and the enqueue helpers.

Worker: ``python -m pgqueuer run peer_pgqueuer:create --batch-size 100`` with ``BENCH_PGQ_DSN``
set (the asyncpg driver, PgQueuer's recommended and fastest one). Finished jobs are counted in
``pgqueuer_log`` (status ``successful``): PgQueuer deletes a job from its queue table when it
finishes and logs it there.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from common import report_start
from pgqueuer import AsyncpgDriver, Job, PgQueuer, Queries

COUNT_SQL = "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
STARTED_SQL = "SELECT count(*) FROM (SELECT 1 FROM pgqueuer WHERE status <> 'queued' LIMIT 1) x"


@asynccontextmanager
async def create() -> AsyncIterator[PgQueuer]:
    conn = await asyncpg.connect(os.environ["BENCH_PGQ_DSN"])
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        return None

    @pgq.entrypoint("lat")
    async def lat(job: Job) -> None:
        report_start((job.payload or b"").decode())

    try:
        yield pgq
    finally:
        await conn.close()


async def install(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()


async def enqueue(dsn: str, n: int, batch: bool, name: str = "noop") -> None:
    conn = await asyncpg.connect(dsn)
    try:
        q = Queries(AsyncpgDriver(conn))
        if batch:
            for start in range(0, n, 10_000):
                k = min(10_000, n - start)
                await q.enqueue([name] * k, [None] * k, [0] * k)
        else:
            for _ in range(n):
                await q.enqueue(name, None)
    finally:
        await conn.close()


class Enqueuer:
    """One open connection for enqueueing single latency probes."""

    async def open(self, dsn: str) -> None:
        self.conn = await asyncpg.connect(dsn)
        self.q = Queries(AsyncpgDriver(self.conn))

    async def probe(self, seq: int) -> None:
        await self.q.enqueue("lat", str(seq).encode())

    async def close(self) -> None:
        await self.conn.close()
