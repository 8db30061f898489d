"""Polling helpers for tests: wait for a condition instead of sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

Message = str | Callable[[], str]


def _text(message: Message) -> str:
    return message() if callable(message) else message


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 15.0,
    interval: float = 0.01,
    message: Message = "condition was not met",
) -> T:
    """Poll ``predicate`` until it returns a truthy value and return that value.

    Raises ``AssertionError`` with ``message`` (a string, or a callable evaluated at failure so it
    can describe the last state seen) when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{_text(message)} (waited {timeout:.2f}s)")
        time.sleep(interval)


def assert_stays(
    predicate: Callable[[], Any],
    duration: float,
    interval: float = 0.02,
    message: Message = "condition stopped holding",
) -> None:
    """Assert that ``predicate`` stays truthy for the whole of ``duration`` seconds.

    Only for "this must NOT happen" checks; keep ``duration`` short (a few poll intervals).
    """
    deadline = time.monotonic() + duration
    while True:
        if not predicate():
            raise AssertionError(_text(message))
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


def wait_for_status(tm: Any, task_id: int, *statuses: str, timeout: float = 15.0) -> Any:
    """Wait until task ``task_id`` has one of ``statuses``; return its ``TaskInfo``."""
    seen: list[Any] = [None]

    def check() -> Any:
        info = tm.get_task(task_id)
        seen[0] = info
        return info if info is not None and info.status in statuses else None

    def describe() -> str:
        info = seen[0]
        state = "missing" if info is None else f"{info.status} (error={info.error!r})"
        return f"task {task_id} never reached {statuses}; last seen: {state}"

    return wait_for(check, timeout=timeout, message=describe)


def heartbeats_pass(tm: Any, rounds: int = 3) -> None:
    """Wait until ``tm``'s worker has heartbeated ``rounds`` more times: its maintenance rounds
    (recovery, stall and retention sweeps) run at the same interval, so what they would do has
    been done."""
    for _ in range(rounds):
        seen = tm.get_worker(tm.worker_id).last_seen_at
        wait_for(
            lambda seen=seen: tm.get_worker(tm.worker_id).last_seen_at > seen,
            message="the worker did not heartbeat",
        )
