"""``tideflow worker APP``: run the handlers of an application's TaskManager until signalled."""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import signal
import subprocess
import sys
import threading
from types import FrameType
from typing import Any

from tideflow.cli.common import DB_ENV, CliError, add_db_option, redact, same_database
from tideflow.manager import TaskManager

__all__ = ["add_command", "load_app"]

log = logging.getLogger("tideflow.cli")

# Set in the environment of the extra processes of --processes: they stop when the parent dies.
_CHILD_ENV = "TIDEFLOW_WORKER_PARENT_PID"


def add_command(sub: Any) -> None:
    """Register ``worker`` on the top-level subparsers."""
    p = sub.add_parser(
        "worker",
        help="run the handlers of APP until SIGINT/SIGTERM",
        description=(
            "Run a worker for APP, 'module:attribute' naming a TaskManager or a zero-argument"
            " callable returning one (e.g. myapp.tasks:tm). The current directory is importable."
        ),
    )
    p.add_argument("app", metavar="APP", help="module:attribute of a TaskManager (or a factory)")
    add_db_option(p)
    p.add_argument("--concurrency", type=_positive_int, metavar="N", help="max concurrent tasks")
    p.add_argument(
        "--capabilities", metavar="A,B", help="capabilities this worker offers (comma separated)"
    )
    p.add_argument(
        "--pod-id",
        metavar="ID",
        help="stable node identity; with --processes N each process gets ID-0 .. ID-(N-1)",
    )
    p.add_argument(
        "--processes", type=_positive_int, default=1, metavar="N", help="worker processes to run"
    )
    p.add_argument(
        "--stop-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds running tasks get to finish after a stop signal (default 30)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(default INFO)",
    )
    p.add_argument("--process-index", type=int, default=0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_worker)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def load_app(spec: str) -> TaskManager:
    """Import ``module:attribute`` and return its TaskManager (calling a factory if needed)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"APP must look like 'module:attribute' (e.g. myapp.tasks:tm), got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise CliError(
                f"cannot import module {module_name!r} (looked in {os.getcwd()} and sys.path)"
            ) from None
        raise CliError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    except Exception as exc:
        raise CliError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, TaskManager) and callable(obj):
        if not _takes_no_arguments(obj):
            raise CliError(
                f"{spec} is a callable that needs arguments, not a TaskManager"
                " (or a zero-argument callable returning one)"
            )
        try:
            obj = obj()
        except Exception as exc:
            raise CliError(f"calling {spec} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, TaskManager):
        raise CliError(
            f"{spec} is a {type(obj).__name__}, not a TaskManager"
            " (or a zero-argument callable returning one)"
        )
    return obj


def _takes_no_arguments(fn: Any) -> bool:
    try:
        inspect.signature(fn).bind()
    except TypeError:
        return False
    except ValueError:  # no signature available (some builtins): just try calling it
        return True
    return True


class _Signals:
    """Turns SIGINT/SIGTERM into an event; forwards them to child processes; a second one
    exits at once."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.children: list[subprocess.Popen[bytes]] = []
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        self._previous = {
            signum: signal.signal(signum, self._handle)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signum)
        if self.stop.is_set():
            sys.stderr.write("tideflow worker: second signal, exiting without waiting\n")
            sys.stderr.flush()
            os._exit(1)
        self.received = signum
        self.stop.set()


def _child_command(args: argparse.Namespace, index: int) -> list[str]:
    # The database travels in $TIDEFLOW_DB, not argv, where `ps` would show a password.
    cmd = [sys.executable, "-m", "tideflow.cli", "worker", args.app, "--processes", "1"]
    if args.concurrency is not None:
        cmd += ["--concurrency", str(args.concurrency)]
    if args.capabilities is not None:
        cmd += ["--capabilities", args.capabilities]
    if args.pod_id is not None:
        cmd += ["--pod-id", args.pod_id]
    cmd += ["--stop-timeout", str(args.stop_timeout), "--log-level", args.log_level]
    return [*cmd, "--process-index", str(index)]


def cmd_worker(args: argparse.Namespace) -> int:
    """``tideflow worker APP``."""
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
    db = args.db or os.environ.get(DB_ENV) or None
    if db is not None:
        os.environ[DB_ENV] = db  # before importing APP, so it can read it
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    tm = load_app(args.app)
    if db is not None and not same_database(db, tm._store.safe_url):
        log.warning(
            "%s uses database %s, not %s given by --db/%s: the app ignores %s",
            args.app,
            tm._store.safe_url,
            redact(db),
            DB_ENV,
            DB_ENV,
        )

    capabilities = None
    if args.capabilities is not None:
        capabilities = [c.strip() for c in args.capabilities.split(",") if c.strip()]
    options: dict[str, Any] = {}
    if args.concurrency is not None:
        options["max_concurrency"] = args.concurrency
    if capabilities is not None:
        options["capabilities"] = capabilities
    if args.pod_id is not None:
        suffix = args.process_index if args.processes > 1 or _CHILD_ENV in os.environ else None
        options["pod_id"] = args.pod_id if suffix is None else f"{args.pod_id}-{suffix}"
    if options:
        tm.configure_worker(**options)

    signals = _Signals()
    signals.install()
    try:
        if args.processes > 1:
            env = {**os.environ, _CHILD_ENV: str(os.getpid())}
            for index in range(1, args.processes):
                signals.children.append(
                    subprocess.Popen(
                        _child_command(args, index),
                        env=env,
                        start_new_session=True,  # terminal signals reach only us; we forward them
                    )
                )
        _run(tm, args, signals)
    except BaseException:
        for child in signals.children:
            if child.poll() is None:
                child.terminate()
        raise
    finally:
        tm.close()
        signals.restore()
    codes = [child.wait() for child in signals.children]
    if any(codes):
        log.error("worker process exit codes: %s", codes)
        return 1
    log.info("worker %s stopped", tm.worker_id)
    return 0


def _run(tm: TaskManager, args: argparse.Namespace, signals: _Signals) -> None:
    """Start ``tm``, wait for a signal (or the parent's death), stop gracefully."""
    parent = int(os.environ.get(_CHILD_ENV, "0"))
    tm.start()
    info = tm.get_worker(tm.worker_id)
    log.info(
        "worker %s started: db=%s handlers=[%s] concurrency=%s%s",
        tm.worker_id,
        tm._store.safe_url,
        ", ".join(info.handlers) if info is not None else "?",
        info.concurrency if info is not None else "?",
        f" processes={args.processes}" if args.processes > 1 else "",
    )
    if info is not None and not info.handlers:
        log.warning("%s registers no handlers: this worker will run nothing", args.app)
    reported: set[int] = set()
    while not signals.stop.wait(0.5):
        if parent and os.getppid() != parent:
            log.warning("parent process %d is gone; stopping", parent)
            break
        for child in signals.children:
            code = child.poll()
            if code is not None and child.pid not in reported:
                reported.add(child.pid)
                log.warning("worker process %d exited early with code %d", child.pid, code)
    if signals.received is not None:
        log.info(
            "%s received: stopping (running tasks get %gs to finish)",
            signal.Signals(signals.received).name,
            args.stop_timeout,
        )
    tm.stop(args.stop_timeout)
