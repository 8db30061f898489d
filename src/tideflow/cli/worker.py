"""``tideflow worker APP``: run the handlers of an application's TaskManager until signalled."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Any

from tideflow.cli.common import DB_ENV, CliError, add_db_option, redact, same_database
from tideflow.manager import TaskManager

__all__ = ["add_command", "load_app", "run_with_reload"]

log = logging.getLogger("tideflow.cli")

# Set in the environment of the extra processes of --processes: they stop when the parent dies.
_CHILD_ENV = "TIDEFLOW_WORKER_PARENT_PID"
# Set in the environment of the worker that a --reload supervisor runs: it stops when that dies.
_RELOAD_ENV = "TIDEFLOW_RELOAD_PARENT_PID"
# What --reload watches: Python sources, outside these directories.
_RELOAD_SUFFIXES = (".py", ".pyx", ".pyd")
_RELOAD_IGNORE_DIRS = (
    "__pycache__",
    ".git",
    ".hg",
    ".svn",
    ".venv",
    "venv",
    "site-packages",
    ".tox",
    ".nox",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".idea",
    "node_modules",
)
# Seconds a stopping worker gets beyond --stop-timeout (to release attempts and close) before a
# --reload supervisor kills it.
_RELOAD_KILL_GRACE = 30.0
RELOAD_INSTALL_HINT = "pip install 'tideflow[reload]'"
METRICS_INSTALL_HINT = "pip install 'tideflow[metrics]'"


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
    p.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help=(
            "json: one JSON object per line (timestamp, level, logger, message, task_id,"
            " task_name, attempt, worker_id, exc_info); default text"
        ),
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        metavar="N",
        help=(
            "serve this worker's Prometheus metrics at http://HOST:N/metrics (0: any free port;"
            f" with --processes, process i uses N+i; needs {METRICS_INSTALL_HINT})"
        ),
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address the metrics endpoint binds to (default 127.0.0.1)",
    )
    p.add_argument(
        "--reload",
        action="store_true",
        help=(
            "development: restart the worker when a .py file of the current directory or of"
            f" APP's package changes (needs watchfiles: {RELOAD_INSTALL_HINT})"
        ),
    )
    p.add_argument(
        "--reload-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="with --reload, also watch DIR (repeatable)",
    )
    p.add_argument("--process-index", type=int, default=0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_worker)


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number (0-65535), got {value}")
    return value


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
    cmd += _observability_flags(args, index)
    return [*cmd, "--process-index", str(index)]


def _observability_flags(args: argparse.Namespace, index: int = 0) -> list[str]:
    flags = ["--log-format", args.log_format]
    if args.metrics_port is not None:
        port = args.metrics_port + index if args.metrics_port else 0
        flags += ["--metrics-port", str(port), "--metrics-host", args.metrics_host]
    return flags


def _configure_logging(args: argparse.Namespace) -> Any:
    """Text or JSON lines on stderr; returns the task-fields filter (JSON) to give the worker
    id once known."""
    if args.log_format != "json":
        logging.basicConfig(
            level=args.log_level,
            format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
            stream=sys.stderr,
        )
        return None
    import tideflow.logs

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(tideflow.logs.JsonFormatter())
    fields = tideflow.logs.TaskFields()
    handler.addFilter(fields)
    logging.basicConfig(level=args.log_level, handlers=[handler])
    tideflow.logs.instrument()  # a handler's own records carry its task's fields
    return fields


def _serve_metrics(args: argparse.Namespace) -> Any:
    """Instrument the worker and serve its metrics (``--metrics-port``); returns the server."""
    try:
        import tideflow.metrics
    except ImportError:
        raise CliError(
            f"--metrics-port needs the prometheus_client package: {METRICS_INSTALL_HINT}", code=1
        ) from None
    registry = tideflow.metrics.instrument()
    try:
        server = tideflow.metrics.serve(args.metrics_port, args.metrics_host, registry=registry)
    except OSError as exc:
        raise CliError(
            f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc}", code=1
        ) from None
    host = args.metrics_host if ":" not in args.metrics_host else f"[{args.metrics_host}]"
    log.info("metrics at http://%s:%d/metrics", host, server.server_port)
    return server


def cmd_worker(args: argparse.Namespace) -> int:
    """``tideflow worker APP``."""
    fields = _configure_logging(args)
    db = args.db or os.environ.get(DB_ENV) or None
    if db is not None:
        os.environ[DB_ENV] = db  # before importing APP, so it can read it
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    if args.reload_dir and not args.reload:
        raise CliError("--reload-dir needs --reload")
    if args.reload:
        return _supervise(args)
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
    if fields is not None:
        fields.worker_id = tm.worker_id
    try:
        metrics = _serve_metrics(args) if args.metrics_port is not None else None
    except CliError:
        tm.close()
        raise

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
        if metrics is not None:
            metrics.shutdown()
    codes = [child.wait() for child in signals.children]
    if any(codes):
        log.error("worker process exit codes: %s", codes)
        return 1
    log.info("worker %s stopped", tm.worker_id)
    return 0


def _run(tm: TaskManager, args: argparse.Namespace, signals: _Signals) -> None:
    """Start ``tm``, wait for a signal (or the parent's death), stop gracefully."""
    parent = int(os.environ.get(_CHILD_ENV) or os.environ.get(_RELOAD_ENV) or "0")
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


# --- --reload --------------------------------------------------------------------------------


def _supervise(args: argparse.Namespace) -> int:
    """``tideflow worker APP --reload``: run the worker in a child process, restart it on
    changes."""
    if args.processes > 1:
        raise CliError(
            "--reload runs one worker process: drop --processes (or --reload, in production)"
        )
    if _CHILD_ENV in os.environ or _RELOAD_ENV in os.environ:
        raise CliError("--reload cannot be used inside a worker started by tideflow")
    paths = _watch_paths(args.app, args.reload_dir)
    return run_with_reload(_reload_child_command(args), paths, args.stop_timeout)


def _reload_child_command(args: argparse.Namespace) -> list[str]:
    # The database travels in $TIDEFLOW_DB (set by cmd_worker), not argv.
    cmd = [sys.executable, "-m", "tideflow.cli", "worker", args.app]
    if args.concurrency is not None:
        cmd += ["--concurrency", str(args.concurrency)]
    if args.capabilities is not None:
        cmd += ["--capabilities", args.capabilities]
    if args.pod_id is not None:
        cmd += ["--pod-id", args.pod_id]
    cmd += ["--stop-timeout", str(args.stop_timeout), "--log-level", args.log_level]
    return cmd + _observability_flags(args)


def _watch_paths(app: str, extra: Sequence[str]) -> list[str]:
    """The current directory, the directory of APP's top-level package when it lives elsewhere
    (not among installed packages), and ``extra``; none nested in another."""
    candidates = [os.getcwd()]
    top = app.partition(":")[0].split(".")[0]
    spec = None
    if top:
        try:
            spec = importlib.util.find_spec(top)  # a top-level name: imports nothing
        except (ImportError, ValueError):
            spec = None
    if spec is not None:
        locations = list(spec.submodule_search_locations or [])
        if not locations and spec.origin and os.path.isfile(spec.origin):
            locations = [os.path.dirname(spec.origin)]
        installed = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
        for location in locations:
            real = os.path.realpath(location)
            if not any(_is_within(real, root) for root in installed):
                candidates.append(real)
    for directory in extra:
        if not os.path.isdir(directory):
            raise CliError(f"--reload-dir {directory!r} is not a directory")
        candidates.append(directory)
    paths: list[str] = []
    for path in sorted({os.path.realpath(c) for c in candidates}, key=len):
        if not any(_is_within(path, kept) for kept in paths):
            paths.append(path)
    return paths


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _reload_filter() -> Callable[[Any, str], bool]:
    from watchfiles import DefaultFilter

    base = DefaultFilter(ignore_dirs=_RELOAD_IGNORE_DIRS)

    def accept(change: Any, path: str) -> bool:
        return path.endswith(_RELOAD_SUFFIXES) and base(change, path)

    return accept


def run_with_reload(
    argv: Sequence[str],
    watch_paths: Sequence[str],
    stop_timeout: float,
    *,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run the worker command ``argv`` as a child process; restart it whenever a Python file
    under ``watch_paths`` changes, until SIGINT/SIGTERM. Returns the last child's exit code.

    On a change the child gets SIGTERM, so a tideflow worker stops gracefully: its running
    attempts get ``stop_timeout`` seconds to finish (their outcomes are written) and the rest are
    released to be claimed again; once it has exited a new child starts with the new code. A
    child that does not exit within ``stop_timeout`` + 30 s is killed (its attempts are then
    recovered when their leases expire). A child that exits by itself (say, the application
    failed to import) is restarted on the next change. SIGINT/SIGTERM to this process stop the
    child the same way, then return; a second signal makes the child exit at once.

    The child runs in its own session (a terminal's Ctrl-C reaches only this process, which
    passes it on once) with ``$TIDEFLOW_RELOAD_PARENT_PID`` set, so a tideflow worker stops if
    this process dies. Needs the ``watchfiles`` package (``pip install 'tideflow[reload]'``);
    raises :class:`CliError` without it. Must run in the main thread (it handles signals).
    """
    try:
        from watchfiles import watch
    except ImportError:
        raise CliError(
            f"--reload needs the watchfiles package: {RELOAD_INSTALL_HINT}", code=1
        ) from None
    watch_log = logging.getLogger("watchfiles.main")
    if watch_log.level == logging.NOTSET:
        watch_log.setLevel(logging.WARNING)  # its "N changes detected" repeats our message
    command = list(argv)
    child_env = {**(os.environ if env is None else env), _RELOAD_ENV: str(os.getpid())}
    stop = threading.Event()
    state: dict[str, Any] = {"child": None, "signalled": False}

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():  # second signal: the stopping child exits at once
            child = state["child"]
            if child is not None and child.poll() is None:
                sys.stderr.write("tideflow worker: second signal, stopping the worker at once\n")
                sys.stderr.flush()
                child.send_signal(signal.SIGTERM)
            return
        log.info("%s received: stopping the worker", signal.Signals(signum).name)
        stop.set()

    def start() -> subprocess.Popen[bytes]:
        child = subprocess.Popen(command, env=child_env, start_new_session=True)
        state["child"] = child
        return child

    def stop_child(child: subprocess.Popen[bytes]) -> int:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        try:
            return child.wait(timeout=stop_timeout + _RELOAD_KILL_GRACE)
        except subprocess.TimeoutExpired:
            log.error(
                "worker process %d did not stop within %gs; killing it",
                child.pid,
                stop_timeout + _RELOAD_KILL_GRACE,
            )
            child.kill()
            return child.wait()

    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    child = None
    try:
        log.info(
            "reload: watching %s for changes to Python files", ", ".join(map(str, watch_paths))
        )
        child = start()
        reported = False
        for changes in watch(
            *watch_paths,
            watch_filter=_reload_filter(),
            stop_event=stop,
            rust_timeout=500,
            yield_on_timeout=True,
            raise_interrupt=False,
        ):
            if stop.is_set():
                break
            code = child.poll()
            if code is not None and not reported:
                reported = True
                log.warning(
                    "reload: worker process %d exited with code %d; waiting for a change",
                    child.pid,
                    code,
                )
            if not changes:
                continue
            changed = sorted({os.path.relpath(path) for _, path in changes})
            log.info("reload: %s changed; restarting the worker", ", ".join(changed))
            stop_child(child)
            if stop.is_set():
                break
            child = start()
            reported = False
        return stop_child(child)
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
