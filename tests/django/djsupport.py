"""Helpers for the Django tests: the project's settings per backend, workers, waiting."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from support.wait import wait_for, wait_for_status

HERE = Path(__file__).resolve().parent
BACKEND = "tideflow.contrib.django.TideflowBackend"


def setup_django() -> None:
    """Configure Django with tests/django's project (once per process)."""
    from django.apps import apps

    import django

    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    os.environ["DJANGO_SETTINGS_MODULE"] = "djproject.settings"
    if not apps.ready:
        django.setup()


def django_database(url: str) -> dict[str, Any]:
    """A Django ``DATABASES`` entry for a tideflow PostgreSQL test URL (its libpq parameters,
    such as the session's ``search_path``, go to OPTIONS)."""
    parts = urlsplit(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "127.0.0.1",
        "PORT": parts.port or 5432,
        "OPTIONS": dict(parse_qsl(parts.query)),
    }


def tasks_setting(**options: Any) -> dict[str, Any]:
    return {
        "default": {
            "BACKEND": BACKEND,
            "QUEUES": ["default", "emails"],
            "OPTIONS": {"MANAGER_OPTIONS": {"poll_interval": 0.02}, **options},
        }
    }


@contextlib.contextmanager
def project_settings(database: dict[str, Any], tasks: dict[str, Any]) -> Iterator[None]:
    """The project with ``DATABASES["default"] = database`` and ``TASKS = tasks``."""
    from django.test import override_settings

    from tideflow.contrib.django import close_managers

    override = override_settings(DATABASES={"default": database}, TASKS=tasks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Overriding setting DATABASES can lead to ..."
        override.enable()
    try:
        yield
    finally:
        close_managers()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            override.disable()


def wait_finished(result: Any, timeout: float = 60.0) -> Any:
    """Refresh a Django TaskResult until it is finished; fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not result.is_finished:
        if time.monotonic() > deadline:
            raise AssertionError(f"task {result.id} not finished after {timeout}s: {result.status}")
        time.sleep(0.02)
        result.refresh()
    return result


def wait_tideflow(manager: Any, task_id: int, timeout: float = 60.0) -> Any:
    """Wait until a tideflow task is completed or permanently_failed."""
    return wait_for_status(manager, task_id, "completed", "permanently_failed", timeout=timeout)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds; fails the test naming ``what`` after ``timeout``."""
    wait_for(condition, timeout=timeout, interval=0.05, message=f"no {what}")
