"""Procrastinate peer: the app for ``procrastinate worker`` and the enqueue helpers.

Worker: ``python -m procrastinate --app=peer_procrastinate.app worker --concurrency C`` with
``BENCH_PROC_DSN`` set; the connector's pool is sized to the concurrency. Finished jobs are
counted in ``procrastinate_jobs`` (status ``succeeded``).
"""

from __future__ import annotations

import os

import procrastinate
from common import report_start

COUNT_SQL = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
STARTED_SQL = (
    "SELECT count(*) FROM (SELECT 1 FROM procrastinate_jobs WHERE status <> 'todo' LIMIT 1) x"
)
POOL = int(os.environ.get("BENCH_PROC_POOL", "10"))

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(
        conninfo=os.environ.get("BENCH_PROC_DSN", ""), min_size=1, max_size=POOL
    )
)


@app.task(name="noop")
async def noop() -> None:
    return None


@app.task(name="lat")
async def lat(seq: int) -> None:
    report_start(seq)


async def install() -> None:
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


async def enqueue(n: int, batch: bool) -> None:
    async with app.open_async():
        if batch:
            for start in range(0, n, 10_000):
                await noop.batch_defer_async(*[{}] * min(10_000, n - start))
        else:
            for _ in range(n):
                await noop.defer_async()


class Enqueuer:
    async def open(self, dsn: str) -> None:
        self.ctx = app.open_async()
        await self.ctx.__aenter__()

    async def probe(self, seq: int) -> None:
        await lat.defer_async(seq=seq)

    async def close(self) -> None:
        await self.ctx.__aexit__(None, None, None)
