"""The MySQL store bounds its connections in use, not only its idle ones: a caller finding all
of them taken waits for one, and gets a :class:`StoreError` when none comes back in time."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tideflow.errors import StoreError
from tideflow.store.factory import open_store


def mysql_store(db_url: str, options: str) -> Any:
    if not db_url.startswith("mysql"):
        pytest.skip(
            "only the MySQL store keeps its own connection pool"
            " (PostgreSQL uses psycopg_pool, SQLite one connection)"
        )
    store = open_store(f"{db_url}?{options}")
    store.setup()
    return store


def test_a_caller_gets_a_store_error_when_every_connection_stays_in_use(db_url: str) -> None:
    store = mysql_store(db_url, "pool_size=2&pool_timeout=0.05")
    try:
        held = [store._pool.get(), store._pool.get()]
        with pytest.raises(StoreError, match=r"all 2 connections .* stayed in use"):
            store.get_task(1)
        store._pool.put(held.pop())
        assert store.get_task(1) is None
        store._pool.put(held.pop())
    finally:
        store.close()


def test_a_waiting_caller_gets_the_connection_given_back(db_url: str) -> None:
    store = mysql_store(db_url, "pool_size=1&pool_timeout=60")
    try:
        held = store._pool.get()
        found: list[Any] = []
        waiter = threading.Thread(target=lambda: found.append(store.list_workers()))
        waiter.start()
        store._pool.put(held)
        waiter.join()
        assert found == [[]]
    finally:
        store.close()
