"""tideflow's pytest plugin (the ``pytest11`` entry point ``tideflow``): loaded by pytest on its
own once tideflow is installed; ``-p no:tideflow`` turns it off.

Fixtures:

- ``tideflow_manager``: a :class:`~tideflow.TaskManager` on ``sqlite::memory:`` (a fresh
  database per test), not started; register handlers, submit, then
  :func:`tideflow.testing.run_until_idle`. Stopped and closed after the test.
- ``tideflow_manager_options``: the options it is made with (``{"poll_interval": 0.05}``);
  override this fixture to change them, e.g. ``{"max_retries": 1}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tideflow.manager import TaskManager

__all__ = ["tideflow_manager", "tideflow_manager_options"]


@pytest.fixture
def tideflow_manager_options() -> dict[str, Any]:
    """Options for ``tideflow_manager``; override this fixture to change them."""
    return {"poll_interval": 0.05}


@pytest.fixture
def tideflow_manager(tideflow_manager_options: dict[str, Any]) -> Iterator[TaskManager]:
    """A TaskManager on a fresh ``sqlite::memory:`` database, closed after the test."""
    tm = TaskManager("sqlite::memory:", **tideflow_manager_options)
    try:
        yield tm
    finally:
        tm.stop(timeout=5)
        tm.close()
