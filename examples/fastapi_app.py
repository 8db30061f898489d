"""tideflow inside a FastAPI service: submit from an endpoint, a worker in the same process.

Run it (one command, from the repository root)::

    .venv/bin/pip install -q -e '.[fastapi]' && .venv/bin/uvicorn examples.fastapi_app:app

then ``curl -X POST localhost:8000/reports -H 'content-type: application/json' -d '{"rows": 3}'``
and ``curl 'localhost:8000/tasks/1?wait=2'``. The database is ``$TIDEFLOW_DB`` (default
``sqlite:tideflow-fastapi.db``; any tideflow URL works, e.g. ``postgresql://...``).

The recipe:

- the ``lifespan`` opens the manager with ``async with``: the schema is set up and the worker
  started on the way in, and on shutdown the worker stops gracefully (running attempts get
  ``stop_timeout`` seconds to finish, the rest are released for another worker) and the
  database is closed. None of it blocks the event loop: the blocking parts run in a thread;
- handlers are registered before the manager starts (here at import, on a module-level
  manager, so ``tideflow worker examples.fastapi_app:tm`` can run the same handlers in a
  separate process too);
- endpoints use the coroutine API (``asubmit``, ``await_task``, ``aget_task``), so a request
  that waits for a result holds no thread while it waits.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from tideflow import Task, TaskInfo, TaskManager
from tideflow.errors import InvalidOptionError, TaskNotFoundError, WaitTimeoutError

tm = TaskManager(os.environ.get("TIDEFLOW_DB", "sqlite:tideflow-fastapi.db"))


@tm.task("build_report", timeout=60, max_retries=3)
async def build_report(task: Task) -> dict[str, Any]:
    """An async handler: it runs on the worker's own event loop, not the web server's."""
    rows = task.payload["rows"]
    await task.aprogress("building", progress_percent=0)
    await asyncio.sleep(0.01 * rows)  # stands in for real work
    return {"rows": rows, "total": sum(range(rows))}


class ReportRequest(BaseModel):
    rows: int = Field(ge=0, le=1000)


class TaskView(BaseModel):
    id: int
    name: str
    status: str
    finished: bool
    result: Any = None
    error: str | None = None
    progress_percent: float | None = None


def _view(info: TaskInfo) -> TaskView:
    return TaskView(
        id=info.id,
        name=info.name,
        status=info.status,
        finished=info.status in ("completed", "permanently_failed"),
        result=info.result,
        # the first line of a failure ("Type: message"); the traceback stays in the database
        error=info.error.splitlines()[0] if info.error else None,
        progress_percent=info.progress_percent,
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with tm:  # setup() + start() on the way in; stop() + close() on shutdown
        yield


app = FastAPI(title="tideflow example", lifespan=lifespan)


@app.post("/reports", status_code=202)
async def submit_report(request: ReportRequest) -> dict[str, int]:
    """Queue a report; the answer names the task to poll (or wait for) at ``/tasks/{id}``."""
    return {"task_id": await tm.asubmit("build_report", {"rows": request.rows})}


@app.get("/tasks/{task_id}")
async def get_task(task_id: int, wait: float = 0.0) -> TaskView:
    """The task's status and, once finished, its result or error. ``?wait=S`` (at most 30)
    waits up to S seconds for it to finish first; on timeout the current state is returned."""
    if not 0 <= wait <= 30:
        raise HTTPException(422, "wait must be between 0 and 30 seconds")
    try:
        info = await tm.await_task(task_id, timeout=wait)
    except WaitTimeoutError:
        current = await tm.aget_task(task_id)
        if current is None:  # deleted meanwhile
            raise HTTPException(404, f"no task {task_id}") from None
        info = current
    except TaskNotFoundError:
        raise HTTPException(404, f"no task {task_id}") from None
    except InvalidOptionError as exc:  # e.g. an id of 0
        raise HTTPException(422, str(exc)) from None
    return _view(info)
