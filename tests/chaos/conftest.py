"""Fixtures of the chaos suite: the stores it runs on and a cluster of worker processes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chaos.harness import Cluster
from conftest import MYSQL, POSTGRES

#: (id, kind); the servers come from the shared conftest (clean private namespace, skipped
#: when unreachable, failed under CI=true)
STORES = [("sqlite-file", "sqlite"), ("postgres", "postgres"), ("mysql", "mysql")]
SERVER_STORES = [s for s in STORES if s[1] != "sqlite"]


def store_url(kind: str, tmp_path: Path) -> str:
    if kind == "postgres":
        return POSTGRES.url()
    if kind == "mysql":
        return MYSQL.url()
    return f"sqlite:{tmp_path}/chaos.db"


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[list[Cluster]]:
    """Clusters made by a test register here; every process left is killed at teardown."""
    made: list[Cluster] = []
    yield made
    for cluster in made:
        cluster.kill_all()


@pytest.fixture
def client_of() -> Iterator[Any]:
    """``client_of(url)``: a TaskManager that only submits and reads (closed at teardown)."""
    from tideflow import TaskManager

    made: list[TaskManager] = []

    def make(url: str) -> TaskManager:
        tm = TaskManager(url, allow_unregistered=True, poll_interval=0.05)
        tm.setup()
        made.append(tm)
        return tm

    yield make
    for tm in made:
        with contextlib.suppress(Exception):
            tm.close()
