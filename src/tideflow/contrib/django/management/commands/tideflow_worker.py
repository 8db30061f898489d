"""``manage.py tideflow_worker``: run the Django tasks of a TideflowBackend until SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import autoreload

from tideflow.cli.common import CliError
from tideflow.cli.worker import run_with_reload
from tideflow.contrib.django.worker import DjangoWorker
from tideflow.errors import TideflowError

log = logging.getLogger("tideflow.contrib.django")

# set by run_with_reload in the worker process it supervises
_RELOAD_PARENT_ENV = "TIDEFLOW_RELOAD_PARENT_PID"


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


class Command(BaseCommand):
    help = (
        "Run a tideflow worker for the Django tasks of a TideflowBackend (every task of the"
        " installed apps' tasks modules, and any other one waiting in the database) until"
        " SIGINT/SIGTERM, then stop gracefully."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--backend", default="default", help="the TASKS alias to serve (default: default)"
        )
        parser.add_argument(
            "--queues",
            metavar="A,B",
            help="Django queues to serve (default: every queue in the backend's QUEUES)",
        )
        parser.add_argument(
            "--capabilities",
            metavar="A,B",
            help="more tideflow capabilities to offer (queues are the capabilities queue:NAME)",
        )
        parser.add_argument(
            "--concurrency", type=_positive_int, metavar="N", help="max concurrent tasks"
        )
        parser.add_argument("--pod-id", metavar="ID", help="stable node identity (e.g. pod name)")
        parser.add_argument(
            "--stop-timeout",
            type=float,
            default=30.0,
            metavar="S",
            help="seconds running tasks get to finish after a stop signal (default 30)",
        )
        parser.add_argument(
            "--scan-interval",
            type=float,
            default=5.0,
            metavar="S",
            help="seconds between looks for tasks of modules not imported yet (default 5)",
        )
        parser.add_argument(
            "--reload",
            action="store_true",
            help="development: restart when a .py file of the project changes (after running"
            " tasks finish within --stop-timeout); needs pip install 'tideflow[reload]'",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        level = {0: logging.WARNING, 1: logging.INFO}.get(options["verbosity"], logging.DEBUG)
        logging.basicConfig(
            level=level,
            format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
            stream=sys.stderr,
        )
        logging.getLogger("tideflow").setLevel(level)
        if options["reload"]:
            sys.exit(self._supervise(options))
        try:
            worker = DjangoWorker(
                options["backend"],
                queues=_names(options["queues"]),
                capabilities=_names(options["capabilities"]) or (),
                concurrency=options["concurrency"],
                pod_id=options["pod_id"],
                scan_interval=options["scan_interval"],
            )
        except TideflowError as exc:
            raise CommandError(str(exc)) from None
        if worker.backend.db_url == "sqlite::memory:":
            worker.stop(0)
            raise CommandError(
                "the tasks database is an in-memory SQLite database, which no other process"
                " sees: use a SQLite file, PostgreSQL or MySQL (DATABASES or OPTIONS['DB'])"
            )
        stop = threading.Event()
        received: list[int] = []

        def handle_signal(signum: int, frame: FrameType | None) -> None:
            if stop.is_set():
                sys.stderr.write("tideflow_worker: second signal, exiting without waiting\n")
                sys.stderr.flush()
                os._exit(1)
            received.append(signum)
            stop.set()

        previous = {s: signal.signal(s, handle_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        parent = int(os.environ.get(_RELOAD_PARENT_ENV, "0"))
        try:
            try:
                worker.start()
            except TideflowError as exc:  # e.g. the database cannot be reached
                raise CommandError(str(exc)) from None
            while not stop.wait(0.5):
                if parent and os.getppid() != parent:
                    log.warning("parent process %d is gone; stopping", parent)
                    break
            if received:
                log.info(
                    "%s received: stopping (running tasks get %gs to finish)",
                    signal.Signals(received[0]).name,
                    options["stop_timeout"],
                )
        finally:
            worker.stop(options["stop_timeout"])
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        log.info("worker %s stopped", worker.manager.worker_id)

    def _supervise(self, options: dict[str, Any]) -> int:
        if _RELOAD_PARENT_ENV in os.environ:
            raise CommandError("--reload cannot be used inside a worker started with --reload")
        # this command line again (manage.py, django-admin or python -m django), minus --reload
        command = [arg for arg in autoreload.get_child_arguments() if arg != "--reload"]
        try:
            return run_with_reload(command, _watch_paths(), options["stop_timeout"])
        except CliError as exc:
            raise CommandError(str(exc)) from None


def _watch_paths() -> list[str]:
    """The current directory, ``BASE_DIR`` and each installed app's directory that is not an
    installed package; none nested in another."""
    installed = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}

    def inside(path: str, root: str) -> bool:
        return path == root or path.startswith(root.rstrip(os.sep) + os.sep)

    candidates = [os.getcwd()]
    base_dir = getattr(settings, "BASE_DIR", None)
    if base_dir is not None:
        candidates.append(str(base_dir))
    candidates += [config.path for config in apps.get_app_configs()]
    paths: list[str] = []
    for path in sorted({os.path.realpath(c) for c in candidates if os.path.isdir(c)}, key=len):
        if any(inside(path, root) for root in installed) or any(inside(path, p) for p in paths):
            continue
        paths.append(path)
    return paths
